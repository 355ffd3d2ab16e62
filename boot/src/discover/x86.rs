//! Discovery on q35: ACPI (RSDP from PVH, RSDT/XSDT, MCFG, DMAR, HPET), ECAM, VT-d registers.

use pcie_iommu::firmware::acpi::{
    AcpiTables, DeviceScopeKind, Dmar, Drhd, Hpet, Mcfg, RemappingStructure,
};
use pcie_iommu::hal::Platform;
use pcie_iommu::mmio::MmioRegion;
use pcie_iommu::pci::bars::Window;
use pcie_iommu::pci::enumerate::{RootBus, Windows};
use pcie_iommu::pci::{Ecam, EcamWindow};
use pcie_iommu::vtd::regs::{offset, Capability, ExtendedCapability, Version};
use pcie_iommu::{Bdf, Error, PhysAddr};

use crate::arch;
use crate::boot_info::{BootInfo, FirmwareTables};
use crate::checks::Checks;
use crate::platform::QemuPlatform;

type MapFn = fn(PhysAddr, usize) -> Result<&'static [u8], Error>;

/// Most ECAM windows and bus-0 functions the report keeps (q35 has 1 and about 8).
const MAX_WINDOWS: usize = 8;
const MAX_FUNCTIONS: usize = 256;

/// ACPI tables live in RAM or ROM below 4 GiB on q35, which the boot stub identity-mapped.
fn map_acpi(phys: PhysAddr, len: usize) -> Result<&'static [u8], Error> {
    let end = phys.0.checked_add(len as u64).ok_or(Error::AddressOverflow { base: phys.0, size: len as u64 })?;
    // A length from a hostile table must not reach past the identity map (a page fault) or
    // make an absurd slice; ACPI tables are kilobytes, DSDTs at most a few MiB.
    if phys.0 == 0 || end > 1 << 32 || len > 16 << 20 {
        return Err(Error::MmioUnavailable { base: phys.0, size: len as u64 });
    }
    // SAFETY: identity-mapped memory below 4 GiB that firmware filled with ACPI tables and that
    // nothing writes during the run (the allocator hands out only e820 RAM, and ACPI tables are
    // in reserved or ACPI regions). A table pointer into MMIO would read device registers, which
    // on q35 have no read side effects in that range.
    Ok(unsafe { core::slice::from_raw_parts(phys.0 as usize as *const u8, len) })
}

pub struct Machine {
    acpi: Option<AcpiTables<'static, MapFn>>,
}

impl Machine {
    /// Opens ACPI and starts the HPET, so timestamps run from here on.
    pub fn open(info: &mut BootInfo, checks: &mut Checks) -> Self {
        let FirmwareTables::Acpi { rsdp } = info.tables else {
            checks.check("the PVH start info gives an RSDP", false);
            return Self { acpi: None };
        };
        let acpi = checks.ok("ACPI RSDP and root table are valid", AcpiTables::new(PhysAddr(rsdp), map_acpi as MapFn));
        if let Some(acpi) = &acpi {
            match acpi.find(b"HPET").and_then(Hpet::parse) {
                Ok(hpet) => match arch::start_clock(hpet.base_address().0) {
                    Ok(period) => defmt::info!("clock: HPET at {} counting every {=u64} fs", hpet.base_address(), period),
                    Err(e) => defmt::error!("clock: HPET unusable: {}", e),
                },
                Err(e) => defmt::warn!("clock: no usable HPET table ({}); timestamps stay 0", e),
            }
        }
        Self { acpi }
    }
}

pub fn run(info: &BootInfo, machine: Machine, checks: &mut Checks, extra: super::Extra) {
    if extra == super::Extra::Smmu {
        checks.check("the smmu self-test runs on Arm (SMMUv3); x86 has VT-d", false);
        return;
    }
    super::log_memory(info);
    let platform = super::make_platform(info, &[]);
    super::check_platform(&platform, checks);
    super::check_clock(&platform, checks);
    checks.check("SSE is usable (xmm round trip)", arch::sse_round_trip(0x0123_4567_89ab_cdef) == 0x0123_4567_89ab_cdef);
    check_interrupts(&platform, checks);

    let Some(acpi) = machine.acpi else { return };
    let rsdp = acpi.rsdp();
    defmt::info!(
        "ACPI: RSDP revision {=u8}, OEM \"{=str}\", {=str} with {=usize} entries",
        rsdp.revision(),
        ascii(&rsdp.oem_id()),
        if acpi.root().is_xsdt() { "XSDT" } else { "RSDT" },
        acpi.root().entry_count()
    );
    let mut bad_tables = 0;
    for table in acpi.tables() {
        match table {
            Ok(t) => defmt::info!("ACPI table {=str} at {} length {=usize}", ascii(&t.signature), t.phys, t.length),
            Err(e) => {
                bad_tables += 1;
                defmt::error!("ACPI table unreadable: {}", e);
            }
        }
    }
    checks.check("every ACPI table listed in the root table is valid", bad_tables == 0);

    // ---- ECAM windows from MCFG ---------------------------------------------------------------
    let mut windows = [None; MAX_WINDOWS];
    match acpi.find(b"MCFG").and_then(Mcfg::parse) {
        Ok(mcfg) => {
            for (i, entry) in mcfg.entries().enumerate() {
                match entry {
                    Ok(e) => {
                        defmt::info!(
                            "MCFG: segment {=u16} ECAM {} buses {=u8}-{=u8} ({=u64} MiB)",
                            e.segment(), e.base(), e.start_bus(), e.end_bus(), e.ecam_size() >> 20
                        );
                        if let Some(slot) = windows.get_mut(i) {
                            *slot = Some(EcamWindow { base: e.ecam_start(), segment: e.segment(), start_bus: e.start_bus(), end_bus: e.end_bus() });
                        } else {
                            defmt::warn!("MCFG: more than {=usize} windows; the rest are not scanned", MAX_WINDOWS);
                        }
                    }
                    Err(e) => {
                        checks.ok("MCFG entry is valid", Err::<(), _>(e));
                    }
                }
            }
        }
        Err(e) => {
            checks.ok("MCFG table present and valid", Err::<(), _>(e));
        }
    }
    checks.check("MCFG describes at least one ECAM window", windows[0].is_some());

    let mut ecam0: Option<Ecam> = None;
    for window in windows.iter().flatten() {
        let Some(ecam) = checks.ok("ECAM window maps", Ecam::map(&platform, *window)) else { continue };
        if window.segment == 0 && window.start_bus == 0 && ecam0.is_none() {
            ecam0 = Some(ecam);
        }
    }
    let Some(ecam) = ecam0 else {
        checks.check("an ECAM window covers segment 0 bus 0", false);
        return;
    };

    // ---- Bus 0, cross-checked against CF8/CFC ----------------------------------------------------
    let mut bus0 = [Bdf::default(); MAX_FUNCTIONS];
    let mut bus0_len = 0;
    let mut mismatches = 0;
    for f in ecam.functions_on_bus(0) {
        defmt::info!("{}", f);
        let legacy = arch::legacy_config_read32(0, f.bdf.dev(), f.bdf.func(), 0);
        if legacy != ecam.read32(f.bdf, 0) {
            mismatches += 1;
            defmt::error!("{}: ECAM reads {=u32:#010x} but CF8/CFC reads {=u32:#010x}", f.bdf, ecam.read32(f.bdf, 0), legacy);
        }
        if bus0_len < MAX_FUNCTIONS {
            bus0[bus0_len] = f.bdf;
            bus0_len += 1;
        }
    }
    let host = Bdf { segment: 0, bus: 0, devfn: 0 };
    let id = ecam.read32(host, 0);
    defmt::info!("ECAM {}: vendor:device {=u16:04x}:{=u16:04x}", host, id as u16, (id >> 16) as u16);
    checks.check("00:00.0 answers through ECAM", id as u16 != 0xffff);
    checks.check("ECAM and CF8/CFC agree on every function of bus 0", bus0_len > 0 && mismatches == 0);
    let bus0 = &bus0[..bus0_len];

    // ---- The whole hierarchy ------------------------------------------------------------------
    // q35's PCI hole: 32-bit MMIO from 0xC000_0000 (above ECAM at 0xB000_0000) up to the IOAPIC
    // at 0xFEC0_0000, and I/O ports from 0xC000 (below are legacy ISA devices and ACPI PM).
    let w = ecam.window();
    let root = RootBus::new(w.segment, w.start_bus, w.end_bus).with_windows(Windows {
        memory32: Some(Window::new(0xc000_0000, 0xfec0_0000 - 0xc000_0000)),
        memory64: None,
        io: Some(Window::new(0xc000, 0x4000)),
    });
    let host_check = crate::cmdline::host_check_offered(info.cmdline);
    let pcie = crate::pcie::enumerate(&ecam, &[root], &platform, host_check, checks);

    // ---- DMAR and the VT-d units -----------------------------------------------------------------
    let dmar = match acpi.find(b"DMAR") {
        Ok(bytes) => checks.ok("DMAR table is valid", Dmar::parse(bytes)),
        Err(Error::NotFound { .. }) => {
            defmt::info!("no DMAR table: this machine has no VT-d remapping hardware");
            if extra == super::Extra::Vtd {
                checks.check("the vtd self-test needs a VT-d unit (intel-iommu)", false);
            }
            if let (super::Extra::Pcie, Some(e)) = (extra, pcie) {
                crate::pcie::edus_answer(&ecam, e, &platform, checks);
            crate::pcie::sriov_round_trip(&ecam, e, &platform, host_check, checks);
                crate::pcie::attach_guard(e, checks);
            }
            return;
        }
        Err(e) => {
            checks.ok("DMAR table readable", Err::<(), _>(e));
            return;
        }
    };
    let Some(dmar) = dmar else { return };
    defmt::info!(
        "DMAR: host address width {=u32} bits, flags {=u8:#x} (interrupt remapping {=bool}, x2APIC opt-out {=bool}, DMA control opt-in {=bool})",
        dmar.host_address_width(), dmar.flags(), dmar.interrupt_remapping(), dmar.x2apic_opt_out(), dmar.dma_ctrl_platform_opt_in()
    );
    let mut drhd_index = 0u32;
    let mut first_unit: Option<(PhysAddr, usize)> = None;
    let mut structure_errors = 0;
    for structure in dmar.structures() {
        match structure {
            Ok(RemappingStructure::Drhd(drhd)) => {
                if first_unit.is_none() {
                    first_unit = usize::try_from(drhd.register_set_size()).ok().map(|size| (drhd.register_base(), size));
                }
                report_drhd(drhd_index, &drhd, &ecam, bus0, &platform, checks);
                drhd_index += 1;
            }
            Ok(RemappingStructure::Rmrr(rmrr)) => {
                defmt::info!("RMRR: segment {=u16} {}..={} (must stay identity-mapped)", rmrr.segment(), rmrr.base(), rmrr.limit());
                log_scopes(rmrr.scopes(), &ecam);
            }
            Ok(RemappingStructure::Atsr(atsr)) => {
                defmt::info!("ATSR: segment {=u16} all ports {=bool}", atsr.segment(), atsr.all_ports());
                log_scopes(atsr.scopes(), &ecam);
            }
            Ok(RemappingStructure::Rhsa(rhsa)) => {
                defmt::info!("RHSA: unit {} in proximity domain {=u32}", rhsa.register_base(), rhsa.proximity_domain());
            }
            Ok(RemappingStructure::Andd(andd)) => {
                defmt::info!("ANDD: device {=u8} \"{=str}\"", andd.acpi_device_number(), ascii(andd.object_name()));
            }
            Ok(RemappingStructure::Satc(satc)) => {
                defmt::info!("SATC: segment {=u16} ATC required {=bool}", satc.segment(), satc.atc_required());
                log_scopes(satc.scopes(), &ecam);
            }
            Ok(RemappingStructure::Sidp(sidp)) => {
                defmt::info!("SIDP: segment {=u16}", sidp.segment());
                log_scopes(sidp.scopes(), &ecam);
            }
            Ok(RemappingStructure::Unknown { kind, length }) => {
                defmt::info!("DMAR structure of unknown type {=u16} ({=u16} bytes) skipped", kind, length);
            }
            Err(e) => {
                structure_errors += 1;
                defmt::error!("DMAR structure unreadable: {}", e);
            }
        }
    }
    checks.check("every DMAR remapping structure is valid", structure_errors == 0);
    checks.check("DMAR describes at least one remapping unit", drhd_index > 0);

    match (extra, pcie, first_unit) {
        (super::Extra::Pcie, Some(e), _) => {
            crate::pcie::edus_answer(&ecam, e, &platform, checks);
            crate::pcie::sriov_round_trip(&ecam, e, &platform, host_check, checks);
            crate::pcie::attach_guard(e, checks);
            if let Some((base, size)) = first_unit {
                crate::pcie::alias_check_vtd(&ecam, e, &platform, base, size, checks);
                crate::core_test::run(&ecam, e, &platform, base, size, checks);
            }
        }
        (super::Extra::Vtd, Some(e), Some((base, size))) => crate::vtd_test::run(&ecam, e, &platform, base, size, checks),
        (super::Extra::Vtd, _, _) => {
            checks.check("the vtd self-test needs a VT-d unit (intel-iommu) and an enumeration", false);
        }
        _ => {}
    }
}

/// The secondary bus of a bridge, from its type 1 header (offset 0x19).
fn secondary_bus(ecam: &Ecam, bridge: Bdf) -> Option<u8> {
    let id = ecam.read32(bridge, 0);
    (id as u16 != 0xffff && ecam.read8(bridge, 0x0e) & 0x7f == 1).then(|| ecam.read8(bridge, 0x19))
}

fn log_scopes(scopes: pcie_iommu::firmware::acpi::DeviceScopes<'_>, ecam: &Ecam) -> (u32, u32) {
    let (mut ok, mut bad) = (0, 0);
    for scope in scopes {
        match scope {
            Ok(s) => {
                ok += 1;
                match s.kind() {
                    DeviceScopeKind::Endpoint | DeviceScopeKind::Bridge => match s.resolve(|b| secondary_bus(ecam, b)) {
                        Ok(bdf) => defmt::info!("  scope {} {}", s.kind(), bdf),
                        Err(e) => {
                            bad += 1;
                            defmt::error!("  scope {} does not resolve: {}", s.kind(), e);
                        }
                    },
                    kind => defmt::info!("  scope {} enumeration id {=u8} start bus {=u8:#04x}", kind, s.enumeration_id(), s.start_bus()),
                }
            }
            Err(e) => {
                bad += 1;
                defmt::error!("  device scope unreadable: {}", e);
            }
        }
    }
    (ok, bad)
}

fn report_drhd(index: u32, drhd: &Drhd<'_>, ecam: &Ecam, bus0: &[Bdf], platform: &QemuPlatform, checks: &mut Checks) {
    defmt::info!(
        "DRHD {=u32}: register base {} segment {=u16} flags {=u8:#x} (INCLUDE_PCI_ALL {=bool}), register set {=u64} bytes",
        index, drhd.register_base(), drhd.segment(), drhd.flags(), drhd.include_pci_all(), drhd.register_set_size()
    );
    let (_, bad) = log_scopes(drhd.scopes(), ecam);
    checks.check("every DRHD device scope is valid and resolves", bad == 0);

    if !drhd.include_pci_all() && drhd.segment() == ecam.window().segment {
        // The scopes on bus 0 (endpoints and bridges, after resolving paths) must be exactly the
        // functions found on bus 0: no scope for an absent function, no function left out.
        let mut scoped = [Bdf::default(); MAX_FUNCTIONS];
        let mut scoped_len = 0;
        for scope in drhd.scopes().flatten() {
            if !matches!(scope.kind(), DeviceScopeKind::Endpoint | DeviceScopeKind::Bridge) {
                continue;
            }
            if let Ok(bdf) = scope.resolve(|b| secondary_bus(ecam, b))
                && bdf.bus == 0
                && scoped_len < MAX_FUNCTIONS
            {
                scoped[scoped_len] = bdf;
                scoped_len += 1;
            }
        }
        let scoped = &scoped[..scoped_len];
        let stray = scoped.iter().filter(|b| !bus0.contains(b)).count();
        let uncovered = bus0.iter().filter(|b| !scoped.contains(b)).count();
        for bdf in scoped.iter().filter(|b| !bus0.contains(b)) {
            defmt::error!("DRHD {=u32}: a scope names {} but nothing answers there", index, bdf);
        }
        for bdf in bus0.iter().filter(|b| !scoped.contains(b)) {
            defmt::error!("DRHD {=u32}: function {} on bus 0 has no device scope", index, bdf);
        }
        let matched = stray == 0 && uncovered == 0 && !bus0.is_empty();
        if matched {
            defmt::info!("DRHD {=u32}: device scopes match the functions on bus 0 ({=usize} functions)", index, bus0.len());
        }
        checks.check("DRHD device scopes match the functions on bus 0", matched);
    }

    // ---- The unit's registers ----------------------------------------------------------------
    let size = usize::try_from(drhd.register_set_size()).unwrap_or(usize::MAX);
    let Some(ptr) = checks.ok("VT-d register set maps", platform.map_mmio(drhd.register_base(), size)) else { return };
    // SAFETY: `map_mmio` returned a device mapping of the DRHD's register set.
    let regs = unsafe { MmioRegion::new(ptr, size) };
    let ver = Version(regs.read32(offset::VER));
    let cap = Capability(regs.read64(offset::CAP));
    let ecap = ExtendedCapability(regs.read64(offset::ECAP));
    let gsts = regs.read32(offset::GSTS);
    defmt::info!("VT-d unit {=u32}: VER {=u8}.{=u8} GSTS {=u32:#010x} (translation {=bool})", index, ver.major(), ver.minor(), gsts, gsts & (1 << 31) != 0);
    defmt::info!("VT-d unit {=u32}: CAP {}", index, cap);
    defmt::info!("VT-d unit {=u32}: ECAP {}", index, ecap);
    checks.ok("VT-d CAP is valid for the register set", cap.validate(size));
    checks.ok("VT-d ECAP is valid for the register set", ecap.validate(size));
}

/// Printable form of an ASCII identifier from firmware (signatures, OEM IDs, names): the bytes
/// up to the first NUL if they are UTF-8, else a placeholder.
fn ascii(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("(not ASCII)").trim_end()
}


/// The interrupt path the VT-d fault event uses: local APIC on, a self-IPI on the first IRQ
/// vector reaches its IDT handler and returns.
fn check_interrupts(platform: &QemuPlatform, checks: &mut Checks) {
    let Some((base, id)) = checks.ok("local APIC enabled", arch::lapic_init()) else { return };
    defmt::info!("local APIC at {=u64:#x}, ID {=u8}; interrupt vectors {=u8:#x}..{=u8:#x} have handlers", base, id, arch::IRQ_BASE, arch::IRQ_BASE + 15);
    static HANDLED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    fn on_self_ipi() {
        HANDLED.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    let vector = arch::IRQ_BASE;
    checks.check("the handler is installed for the first IRQ vector", arch::set_irq_handler(vector, on_self_ipi));
    let before = arch::irq_count(vector);
    arch::send_self_ipi(vector);
    // TIMEOUT: a self-IPI is delivered within microseconds; 100 ms is generous under TCG.
    let taken = pcie_iommu::hal::poll(platform, "self-IPI delivery", core::time::Duration::from_millis(100), || {
        arch::interrupt_window();
        (arch::irq_count(vector) > before && HANDLED.load(core::sync::atomic::Ordering::Relaxed)).then_some(())
    });
    checks.ok("a self-IPI reaches its IDT handler and returns", taken);
}
