//! Discovery on virt: the device tree (memory, PCIe ECAM host, SMMUv3, PL011, GIC, PSCI), ECAM,
//! and the SMMUv3 ID registers.

use pcie_iommu::firmware::dt::{DeviceTree, PciSpace};
use pcie_iommu::hal::Platform;
use pcie_iommu::mmio::MmioRegion;
use pcie_iommu::pci::bars::Window;
use pcie_iommu::pci::enumerate::{RootBus, Windows};
use pcie_iommu::pci::{Ecam, EcamWindow};
use pcie_iommu::smmuv3::regs::{offset, IdRegisters};
use pcie_iommu::{Bdf, PhysAddr};

use crate::arch;
use crate::boot_info::{BootInfo, FirmwareTables, RegionKind};
use crate::checks::Checks;

/// Most reserved regions kept out of the DMA allocator (virt has none).
const MAX_RESERVED: usize = 16;

pub struct Machine {
    dt: Option<DeviceTree<'static>>,
    reserved: [(u64, u64); MAX_RESERVED],
    reserved_len: usize,
}

impl Machine {
    /// Reads the device tree: the command line and the memory map come from it.
    pub fn open(info: &mut BootInfo, checks: &mut Checks) -> Self {
        let mut machine = Self { dt: None, reserved: [(0, 0); MAX_RESERVED], reserved_len: 0 };
        let FirmwareTables::DeviceTree { blob } = info.tables else {
            checks.check("a device tree is at the start of RAM", false);
            return machine;
        };
        defmt::info!("device tree at {=usize:#x}, {=usize} bytes", blob.as_ptr() as usize, blob.len());
        let Some(dt) = checks.ok("device tree header and structure are valid", DeviceTree::new(blob)) else {
            return machine;
        };
        match dt.chosen() {
            Ok(chosen) => info.cmdline = chosen.bootargs.unwrap_or(""),
            Err(e) => defmt::warn!("device tree: no usable /chosen ({}); empty command line", e),
        }
        for region in dt.memory() {
            match region {
                Ok(r) => info.memory.push(r.base.0, r.size, RegionKind::Ram),
                Err(e) => defmt::error!("device tree: bad memory region: {}", e),
            }
        }
        for region in dt.memory_reservations().chain(dt.reserved_memory()) {
            match region {
                Ok(r) if machine.reserved_len < MAX_RESERVED => {
                    let end = r.base.0.saturating_add(r.size);
                    machine.reserved[machine.reserved_len] = (r.base.0, end);
                    machine.reserved_len += 1;
                    info.memory.push(r.base.0, r.size, RegionKind::Reserved);
                }
                Ok(r) => defmt::error!("device tree: too many reserved regions; {} not honoured", r.base),
                Err(e) => defmt::error!("device tree: bad reserved region: {}", e),
            }
        }
        machine.dt = Some(dt);
        machine
    }
}

pub fn run(info: &BootInfo, machine: Machine, checks: &mut Checks, extra: super::Extra) {
    if extra == super::Extra::Vtd {
        checks.check("the vtd self-test runs on x86 (VT-d); Arm has an SMMUv3", false);
        return;
    }
    super::log_memory(info);
    let Some(dt) = machine.dt else { return };
    let platform = super::make_platform(info, &machine.reserved[..machine.reserved_len]);
    super::check_platform(&platform, checks);
    super::check_clock(&platform, checks);
    checks.check("FP/SIMD is usable (v0 round trip)", arch::sse_round_trip(0x0123_4567_89ab_cdef) == 0x0123_4567_89ab_cdef);
    checks.check("the device tree describes RAM", info.memory.regions().iter().any(|r| r.kind == RegionKind::Ram));

    // ---- Platform devices ----------------------------------------------------------------------
    match dt.pl011() {
        Ok(uart) => {
            defmt::info!("PL011 from DT: {} size {=u64:#x}", uart.base, uart.size);
            checks.check("the DT's PL011 is the UART this image logs to", uart.base == PhysAddr(arch::PL011_BASE as u64));
        }
        Err(e) => defmt::warn!("device tree: no PL011: {}", e),
    }
    match dt.gic() {
        Ok(gic) => defmt::info!("GIC from DT: {} distributor {} size {=u64:#x}", gic.version, gic.distributor.base, gic.distributor.size),
        Err(e) => defmt::warn!("device tree: no GIC: {}", e),
    }
    match dt.psci_method() {
        Ok(method) => defmt::info!("PSCI conduit from DT: {}", method),
        Err(e) => defmt::warn!("device tree: no PSCI: {}", e),
    }

    // ---- SMMUv3s -------------------------------------------------------------------------------
    let mut smmu_phandles = [0u32; 8];
    let mut smmu_count = 0;
    for smmu in dt.smmus() {
        let Some(smmu) = checks.ok("SMMUv3 node is valid", smmu) else { continue };
        let irq = |i: Option<pcie_iommu::firmware::dt::GicInterrupt>| i.map_or(0, |i| i.intid());
        defmt::info!(
            "SMMUv3 from DT: {} size {=u64:#x} phandle {=u32:#x} coherent {=bool}; INTIDs eventq {=u32} priq {=u32} cmdq-sync {=u32} gerror {=u32} (0 = not wired)",
            smmu.regs.base, smmu.regs.size, smmu.phandle.map_or(0, |p| p.0), smmu.dma_coherent,
            irq(smmu.interrupts.eventq), irq(smmu.interrupts.priq), irq(smmu.interrupts.cmdq_sync), irq(smmu.interrupts.gerror)
        );
        if let (Some(p), Some(slot)) = (smmu.phandle, smmu_phandles.get_mut(smmu_count)) {
            *slot = p.0;
            smmu_count += 1;
        }
        let Some(ptr) = checks.ok("SMMUv3 registers map", platform.map_mmio(smmu.regs.base, offset::FRAME_SIZE)) else { continue };
        // SAFETY: `map_mmio` returned a device mapping of the SMMU's 128 KiB register frame,
        // which the DT node was checked to cover.
        let regs = unsafe { MmioRegion::new(ptr, offset::FRAME_SIZE) };
        let ids = IdRegisters::read(&regs);
        defmt::info!("SMMUv3 {}: {}", smmu.regs.base, ids);
        let cr0 = regs.read32(offset::CR0);
        defmt::info!("SMMUv3 {}: CR0 {=u32:#x} (SMMUEN {=bool}), GBPA {=u32:#x}", smmu.regs.base, cr0, cr0 & 1 != 0, regs.read32(offset::GBPA));
        checks.ok("SMMUv3 ID registers are valid", ids.validate());
    }
    checks.check("the device tree describes an SMMUv3", smmu_count > 0);

    // ---- PCIe host bridges ----------------------------------------------------------------------
    let mut hosts = 0;
    for host in dt.pci_hosts() {
        let Some(host) = checks.ok("PCIe host node is valid", host) else { continue };
        hosts += 1;
        defmt::info!(
            "ECAM from DT: {} size {=u64:#x} buses {=u8}-{=u8} segment {=u16} coherent {=bool}",
            host.ecam.base, host.ecam.size, host.buses.start, host.buses.end, host.segment, host.dma_coherent
        );
        match host.ranges() {
            Ok(ranges) => {
                for r in ranges {
                    match r {
                        Ok(r) => defmt::info!(
                            "  window {=str}{=str}: PCI {=u64:#x} at CPU {} size {=u64:#x}",
                            match r.space {
                                PciSpace::Configuration => "config",
                                PciSpace::Io => "I/O",
                                PciSpace::Memory32 => "32-bit memory",
                                PciSpace::Memory64 => "64-bit memory",
                            },
                            if r.prefetchable { ", prefetchable" } else { "" },
                            r.pci_address, r.cpu_address, r.size
                        ),
                        Err(e) => defmt::error!("  bad ranges entry: {}", e),
                    }
                }
            }
            Err(e) => defmt::error!("  bad ranges: {}", e),
        }
        let mut map_targets_known = true;
        match host.iommu_map() {
            Ok(Some(map)) => {
                for e in map.entries() {
                    defmt::info!(
                        "  iommu-map: RIDs {=u32:#06x}..+{=u32:#x} -> IOMMU phandle {=u32:#x} StreamIDs from {=u32:#x} (mask {=u32:#x})",
                        e.id_base, e.length, e.target.0, e.out_base, map.mask()
                    );
                    map_targets_known &= smmu_phandles[..smmu_count].contains(&e.target.0);
                }
            }
            Ok(None) => defmt::info!("  no iommu-map: DMA from this host bridge is not translated"),
            Err(e) => {
                map_targets_known = false;
                defmt::error!("  bad iommu-map: {}", e);
            }
        }
        checks.check("every iommu-map entry names an SMMUv3 of this tree", map_targets_known);

        let window = EcamWindow { base: host.ecam.base, segment: host.segment, start_bus: host.buses.start, end_bus: host.buses.end };
        let Some(ecam) = checks.ok("ECAM window maps", Ecam::map(&platform, window)) else { continue };
        let root = RootBus::new(host.segment, host.buses.start, host.buses.end).with_windows(windows_from_ranges(&host));
        // No firmware ran: nothing assigned bus numbers, so only the root bus is reachable yet.
        let mut functions = 0;
        for f in ecam.functions_on_bus(host.buses.start) {
            functions += 1;
            match host.stream_id(f.bdf.routing_id()) {
                Ok(Some((iommu, sid))) => defmt::info!("{}, StreamID {=u32:#x} on IOMMU {=u32:#x}", f, sid.0, iommu.0),
                Ok(None) => defmt::info!("{}, not translated", f),
                Err(e) => defmt::error!("{}: iommu-map lookup failed: {}", f, e),
            }
        }
        let root_dev = Bdf { segment: host.segment, bus: host.buses.start, devfn: 0 };
        let id = ecam.read32(root_dev, 0);
        defmt::info!("ECAM {}: vendor:device {=u16:04x}:{=u16:04x}", root_dev, id as u16, (id >> 16) as u16);
        checks.check("the root bus's device 0 answers through ECAM", id as u16 != 0xffff && functions > 0);

        // No firmware ran: enumeration numbers every bus and places every BAR itself.
        let host_check = crate::cmdline::host_check_offered(info.cmdline);
        let pcie = crate::pcie::enumerate(&ecam, &[root], &platform, host_check, checks);
        match (extra, pcie) {
            (super::Extra::Pcie, Some(e)) => {
                crate::pcie::edus_answer(&ecam, e, &platform, checks);
                crate::pcie::sriov_round_trip(&ecam, e, &platform, host_check, checks);
                crate::pcie::attach_guard(e, checks);
                crate::core_test::run_smmu(&ecam, e, &dt, &platform, host.segment, checks);
            }
            (super::Extra::Smmu, Some(e)) => crate::smmu_test::run(&ecam, e, &dt, &platform, checks),
            (super::Extra::Smmu, None) => {
                checks.check("the smmu self-test needs an enumeration", false);
            }
            _ => {}
        }
    }
    checks.check("the device tree describes a PCIe ECAM host bridge", hosts > 0);
}

/// The host bridge's `ranges` as enumeration windows (bus addresses). On virt the memory windows
/// map 1:1 and I/O port 0 sits at CPU 0x3eff_0000.
fn windows_from_ranges(host: &pcie_iommu::firmware::dt::PciHost<'_>) -> Windows {
    let mut w = Windows { memory32: None, memory64: None, io: None };
    let Ok(ranges) = host.ranges() else { return w };
    for r in ranges.flatten() {
        let window = Some(Window::new(r.pci_address, r.size));
        match r.space {
            PciSpace::Memory32 if w.memory32.is_none() => w.memory32 = window,
            PciSpace::Memory64 if w.memory64.is_none() => w.memory64 = window,
            PciSpace::Io if w.io.is_none() => w.io = window,
            _ => {}
        }
    }
    w
}
