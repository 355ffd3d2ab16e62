//! PCIe in the image: enumeration of every root, the tree and the isolation groups, the host's
//! comparison with QEMU, and (self-test `pcie`) unmanaged SR-IOV, the attach guard and the
//! requester-ID alias check against VT-d's fault records.

use pcie_iommu::pci::enumerate::{AssignBars, AssignBuses, Enumeration, Options, RootBus};
use pcie_iommu::pci::groups::{DomainId, GroupAttachments, Groups};
use pcie_iommu::pci::pri_share::{IommuId, PriShare, PriUser};
#[cfg(target_arch = "x86_64")]
use pcie_iommu::pci::alias;
#[cfg(target_arch = "x86_64")]
use pcie_iommu::PhysAddr;
use pcie_iommu::pci::{ConfigAccess, FunctionIndex, Topology};
use pcie_iommu::{Bdf, Error};

use crate::checks::Checks;
use crate::platform::QemuPlatform;
use crate::{edu, host_check, tree};

/// Functions the image can hold: the rich shapes have about 30 with their VFs enabled.
pub const MAX_FUNCTIONS: usize = 96;
/// SR-IOV PFs the image can hold.
pub const MAX_PFS: usize = 8;

pub type Pcie = Enumeration<MAX_FUNCTIONS, MAX_PFS>;

/// The enumeration lives in a static: it is about 30 KiB, too much for the 64 KiB stack.
static mut ENUMERATION: Pcie = Pcie::new();

/// Enumerates `roots` into the image's one enumeration (called once per run), logs what it cost
/// and found, the tree and the groups, and asks the harness to compare the tree with QEMU's when
/// it offers to.
pub fn enumerate(
    cfg: &impl ConfigAccess,
    roots: &[RootBus],
    platform: &QemuPlatform,
    host_check: bool,
    checks: &mut Checks,
) -> Option<&'static mut Pcie> {
    // SAFETY: called once per run, on the one CPU; the returned reference is the only one.
    let e = unsafe { &mut *(&raw mut ENUMERATION) };
    // Assign every BAR afresh: on virt nothing was assigned, and on q35 SeaBIOS places no VF
    // BARs (it does not know SR-IOV), so the VF apertures need the windows re-laid.
    let options = Options { assign_buses: AssignBuses::IfInvalid, assign_bars: AssignBars::Always, ..Options::default() };
    checks.ok("PCIe enumeration of every root", e.run(cfg, roots, &options))?;
    let s = e.stats;
    let present = u64::from(s.functions.max(1));
    let per_function_tenths = (s.accesses.reads.saturating_sub(u64::from(s.absent))) * 10 / present;
    defmt::info!(
        "enumeration: {=usize} functions, {=u32} buses scanned, {=u32} absent slots probed; {=u64} config reads and {=u64} writes ({=u64}.{=u64} reads per present function, 1 per absent slot), {=u32} restarts",
        e.topology.len(), s.buses, s.absent, s.accesses.reads, s.accesses.writes, per_function_tenths / 10, per_function_tenths % 10, s.restarts
    );
    for w in &e.warnings {
        defmt::warn!("enumeration: {}", w);
    }
    if e.warnings_dropped > 0 {
        defmt::warn!("enumeration: {=u32} more warnings not kept", e.warnings_dropped);
    }
    tree::print(&e.topology);
    let groups = Groups::compute(&e.topology);
    tree::print_groups(&e.topology, &groups);
    checks.check("every function is in exactly one isolation group", groups.function_count() == e.topology.len());
    if host_check {
        let n = tree::print_host_check_lines(&e.topology);
        host_check::confirm_pci_tree(platform, n, checks);
    }
    Some(e)
}

fn find(topology: &Topology<MAX_FUNCTIONS>, vendor: u16, device: u16) -> impl Iterator<Item = FunctionIndex> + '_ {
    topology
        .functions()
        .iter()
        .enumerate()
        .filter(move |(_, f)| f.id.vendor == vendor && f.id.device == device && f.physical_function.is_none())
        .map(|(i, _)| FunctionIndex(i as u16))
}

/// Enables VFs on every SR-IOV PF of the rich shapes (4 on igb, 2 on nvme), checks where they
/// answer and their BARs, lets the harness compare again, and disables them.
pub fn sriov_round_trip(cfg: &impl ConfigAccess, e: &mut Pcie, platform: &QemuPlatform, host_check: bool, checks: &mut Checks) {
    const WANT: [((u16, u16), u16, &str); 2] = [((0x8086, 0x10c9), 4, "igb"), ((0x1b36, 0x0010), 2, "nvme")];
    let mut enabled = 0;
    for ((vendor, device), n, name) in WANT {
        let Some(pf) = find(&e.topology, vendor, device).next() else {
            defmt::info!("SR-IOV: no {=str} PF in this shape", name);
            continue;
        };
        let Some((sriov, topology)) = e.sriov_mut(pf) else {
            checks.check("the PF has an SR-IOV capability", false);
            continue;
        };
        defmt::info!(
            "SR-IOV: {=str} PF {}: TotalVFs {=u16}, VF device {=u16:04x}, enabling {=u16}",
            name, sriov.pf(), sriov.total_vfs(), sriov.vf_device_id(), n
        );
        if checks.ok("unmanaged SR-IOV enable", sriov.enable(cfg, platform, topology, n)).is_none() {
            continue;
        }
        enabled += 1;
        let (offset, stride) = (sriov.first_vf_offset(), sriov.vf_stride());
        defmt::info!("SR-IOV: {=str}: First VF Offset {=u16:#x}, VF Stride {=u16}", name, offset, stride);
        let pf_rid = sriov.pf().routing_id().0;
        let mut at_rids = true;
        let mut bars_placed = true;
        let mut count = 0;
        for (i, vf_index) in sriov.vfs(topology).enumerate() {
            let Some(vf) = topology.get(vf_index) else { continue };
            count += 1;
            let expect = Bdf::from_routing_id(sriov.pf().segment, pf_rid + offset + i as u16 * stride);
            at_rids &= vf.bdf() == expect;
            // VFs read 0xffff as Vendor ID (PCIe Base §9.3.4.1.1); the class dword answers.
            let class = cfg.read32(vf.bdf(), 0x08);
            at_rids &= class != u32::MAX;
            let bars = vf.bars.iter().flatten().count();
            bars_placed &= bars > 0 && vf.bars.iter().flatten().all(|b| b.base != 0);
            defmt::info!("  VF {=usize} ({=u16}) at {} class {=u32:06x}, {=usize} BARs", i, vf_index.0, vf.bdf(), class >> 8, bars);
            for bar in vf.bars.iter().flatten() {
                defmt::info!("    VF BAR{=u8} {=u64:#x} size {=u64:#x}", bar.index, bar.base, bar.size);
            }
        }
        checks.check("the VFs answer at PF RID + First VF Offset + i x VF Stride", at_rids && count == usize::from(n));
        checks.check("every VF BAR has an address in the PF's aperture", bars_placed);
        // Page requests for a VF go out through its PF's PRI (PCIe Base §9.3.7.11); QEMU's igb
        // and nvme have none, so asking for them is refused with the PF named.
        if let Some(vf0) = sriov.vfs(topology).next().and_then(|i| PriUser::of(topology, i)) {
            let mut share = PriShare::<1, 1, 1>::new();
            let _ = share.add_iommu(IommuId(0), 0);
            let refused = match share.enable(cfg, vf0, None, 0) {
                Err(e @ Error::PriUnavailable { pf }) => {
                    defmt::info!("page requests for {=str} VF {}: refused: {}", name, vf0.bdf, e);
                    pf == sriov.pf()
                }
                Err(e) => {
                    defmt::error!("page requests for {=str} VF {}: {}", name, vf0.bdf, e);
                    false
                }
                Ok(_) => false,
            };
            checks.check("page requests for a VF whose PF has no PRI are refused, naming the PF", refused);
        }
    }
    if enabled == 0 {
        return;
    }
    tree::print(&e.topology);
    let groups = Groups::compute(&e.topology);
    tree::print_groups(&e.topology, &groups);
    if host_check {
        let n = tree::print_host_check_lines(&e.topology);
        host_check::confirm_pci_tree(platform, n, checks);
    }
    // Disable again: the VFs leave config space and the snapshot.
    for ((vendor, device), _, name) in WANT {
        let Some(pf) = find(&e.topology, vendor, device).next() else { continue };
        let Some((sriov, topology)) = e.sriov_mut(pf) else { continue };
        let first = sriov.vf_bdf(0);
        if checks.ok("SR-IOV disable", sriov.disable(cfg, platform, topology)).is_some() {
            let gone = first.is_none_or(|b| cfg.read32(b, 0x08) == u32::MAX) && sriov.vfs(topology).count() == 0;
            defmt::info!("SR-IOV: {=str}: VFs disabled", name);
            checks.check("disabled VFs no longer answer and left the snapshot", gone);
        }
    }
}

/// Every edu answers at the BAR0 address enumeration gave it (on virt nothing else assigned it),
/// with memory decode on.
pub fn edus_answer(cfg: &impl ConfigAccess, e: &Pcie, platform: &QemuPlatform, checks: &mut Checks) {
    let mut n = 0;
    for index in find(&e.topology, edu::ID.0, edu::ID.1) {
        let Some(f) = e.topology.get(index) else { continue };
        let bar0 = f.bars.iter().flatten().find(|b| b.index == 0).map_or(0, |b| b.base);
        if let Some(dev) = checks.ok("edu answers at the BAR0 address enumeration assigned", edu::Edu::open(platform, cfg, f.bdf(), bar0)) {
            defmt::info!("edu {}: ID register reads 0x010000ed at BAR0 {=u64:#x}", dev.bdf, bar0);
            n += 1;
        }
    }
    defmt::info!("{=usize} edu answered at their assigned BAR0", n);
    dma_round_trip(cfg, e, platform, checks);
}

/// The first edu copies a pattern from RAM into its buffer and back to another place in RAM,
/// with no IOMMU translating (VT-d off, SMMU not enabled): bus mastering, BAR decode and DMA work.
fn dma_round_trip(cfg: &impl ConfigAccess, e: &Pcie, platform: &QemuPlatform, checks: &mut Checks) {
    use pcie_iommu::hal::Platform;
    let Some(f) = find(&e.topology, edu::ID.0, edu::ID.1).next().and_then(|i| e.topology.get(i)) else { return };
    let bar0 = f.bars.iter().flatten().find(|b| b.index == 0).map_or(0, |b| b.base);
    let Some(dev) = checks.ok("edu opens for DMA", edu::Edu::open(platform, cfg, f.bdf(), bar0)) else { return };
    let Some(page) = checks.ok("a DMA page for the round trip", platform.alloc_dma_pages(1, 4096)) else { return };
    let base = page.virt().as_ptr();
    for i in 0..16u8 {
        // SAFETY: `page` is a fresh, zeroed, identity-mapped 4 KiB DMA page owned here; the
        // device reads it only after the stores (the DMA helper issues a write barrier first).
        unsafe { base.add(usize::from(i)).write_volatile(0xa0 + i) };
    }
    let phys = page.phys().0;
    let ok = checks.ok("edu DMA RAM to device", dev.dma(platform, phys, 16, false)).is_some()
        && checks.ok("edu DMA device to RAM", dev.dma(platform, phys + 0x100, 16, true)).is_some();
    if ok {
        platform.read_barrier();
        // SAFETY: as above; the device finished writing (the command bit cleared) before this.
        let copied = (0..16u8).all(|i| unsafe { base.add(0x100 + usize::from(i)).read_volatile() } == 0xa0 + i);
        defmt::info!("edu {}: DMA round trip through RAM at {=u64:#x}: bytes equal {=bool}", f.bdf(), phys, copied);
        checks.check("edu DMA round trip returns the bytes written", copied);
    }
    // SAFETY: the device is idle (both transfers completed) and keeps no pointer to the page.
    unsafe { platform.free_dma_pages(page) };
}

/// Two functions of one group cannot be attached to different domains; two functions of
/// different groups can.
pub fn attach_guard(e: &Pcie, checks: &mut Checks) {
    let groups = Groups::compute(&e.topology);
    let mut attachments = GroupAttachments::<MAX_FUNCTIONS>::new();
    // Two edu behind the PCIe-to-PCI bridge share its alias, so they share a group.
    let edus: heapless::Vec<FunctionIndex, 8> = find(&e.topology, edu::ID.0, edu::ID.1).collect();
    let shared = edus.iter().enumerate().find_map(|(i, &a)| edus[i + 1..].iter().find(|&&b| groups.same_group(a, b)).map(|&b| (a, b)));
    if let Some((a, b)) = shared {
        checks.ok("attach the first member of a group to domain 1", attachments.attach(&groups, a, DomainId(1)));
        let split = attachments.attach(&groups, b, DomainId(2));
        defmt::info!("attach {} to domain 2 while its group is in domain 1: {}", groups.bdf(b).unwrap_or_default(), split);
        checks.check("an attach that would split a group is refused", matches!(split, Err(Error::GroupSplit { .. })));
        checks.ok("the other member may join the same domain", attachments.attach(&groups, b, DomainId(1)));
    } else {
        checks.check("the shape has two edu in one group (behind the PCIe-to-PCI bridge)", false);
    }
    let separate = edus.iter().enumerate().find_map(|(i, &a)| edus[i + 1..].iter().find(|&&b| !groups.same_group(a, b)).map(|&b| (a, b)));
    if let Some((a, b)) = separate {
        let mut attachments = GroupAttachments::<MAX_FUNCTIONS>::new();
        let ok = attachments.attach(&groups, a, DomainId(10)).and_then(|()| attachments.attach(&groups, b, DomainId(11)));
        checks.ok("functions of different groups attach to different domains", ok);
    }
}

/// With VT-d translating through an empty root table, every DMA faults; the source ID in the
/// fault record must be the requester ID the library computes for the edu that made it.
#[cfg(target_arch = "x86_64")]
pub fn alias_check_vtd(cfg: &impl ConfigAccess, e: &Pcie, platform: &QemuPlatform, unit_base: PhysAddr, unit_size: usize, checks: &mut Checks) {
    use pcie_iommu::vtd::{fault::reason_text, TableMode, Unit};
    let Some(mut unit) = checks.ok("VT-d unit bring-up with an empty root table", Unit::new(platform, unit_base, unit_size, TableMode::Legacy)) else {
        return;
    };
    unit.drain_faults(|_, _| {});
    if checks.ok("VT-d translation on", unit.set_translation(platform, true)).is_none() {
        return;
    }
    let mut checked = 0;
    for index in find(&e.topology, edu::ID.0, edu::ID.1) {
        let Some(f) = e.topology.get(index) else { continue };
        let Some(expected) = alias::visible(&e.topology, index) else { continue };
        let Some(bar0) = f.bars.iter().flatten().find(|b| b.index == 0).map(|b| b.base) else {
            checks.check("edu BAR0 has an address", false);
            continue;
        };
        let Some(dev) = checks.ok("edu answers at its BAR0", edu::Edu::open(platform, cfg, f.bdf(), bar0)) else { continue };
        checks.ok("edu DMA completes", dev.dma(platform, 0x1000_0000, 8, false));
        let mut seen = None;
        unit.drain_faults(|_, record| seen = seen.or(Some(record)));
        match seen {
            Some(r) => {
                defmt::info!(
                    "edu {}: VT-d fault from source {} reason {=u8:#04x} ({=str}) at {=u64:#x}; library says {} ({})",
                    f.bdf(), r.source_id, r.reason, reason_text(r.reason), r.address, expected.rid, expected.reason
                );
                checks.check("VT-d's fault source ID is the requester ID the library computed", r.source_id == expected.rid);
                checked += 1;
            }
            None => {
                checks.check("the blocked edu DMA left a fault record", false);
            }
        }
    }
    checks.check("the alias check covered the edu functions", checked >= 4);
    checks.ok("VT-d translation off", unit.set_translation(platform, false));
}
