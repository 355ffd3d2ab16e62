//! The architecture-neutral domain core (`pcie_iommu::iommu::Iommu`) with real DMA (self-test
//! `pcie`), over VT-d (q35-rich) and over the SMMUv3 (virt-rich, stage-1 domains): edu behind
//! the PCIe-to-PCI bridge reach the unit with the bridge's alias (q35: 04:00.0; virt: the
//! StreamID of 08:00.0), so the core must program every alias; the two edu there share a
//! group, so attaching them to different domains is refused, and replacing one's domain moves
//! both; an edu in another group keeps its own domain throughout.

use pcie_iommu::hal::{DmaPages, Platform};
use pcie_iommu::iommu::domain::{Backend, Domain, Endpoint, Isolation, StageFormat};
use pcie_iommu::iommu::pagetable::Perms;
use pcie_iommu::iommu::Iommu;
use pcie_iommu::pci::groups::Groups;
use pcie_iommu::pci::{ConfigAccess, FunctionIndex};
use pcie_iommu::{Error, Iova, PhysAddr};

use crate::checks::Checks;
use crate::edu::{self, Edu};
use crate::pcie::{MAX_FUNCTIONS, Pcie};
use crate::platform::QemuPlatform;

type Core<B> = Iommu<B, MAX_FUNCTIONS, 16>;

/// What the test needs of a unit beyond the core's [`Backend`].
pub trait CoreUnit: Backend {
    /// Whether a detached (blocked) endpoint's DMA is recorded as a fault (VT-d: context entry
    /// not present) or aborted silently (SMMUv3: abort STE).
    const DETACH_FAULTS: bool;
    /// Drains the recorded faults or events; the first one's reason or event code.
    fn faults(&mut self, platform: &QemuPlatform) -> Option<u32>;
    /// Turns DMA remapping on or off (the SMMU translates from bring-up on).
    fn translation(&mut self, platform: &QemuPlatform, on: bool) -> Result<(), Error>;
}

#[cfg(target_arch = "x86_64")]
impl CoreUnit for pcie_iommu::vtd::Unit {
    const DETACH_FAULTS: bool = true;
    fn faults(&mut self, _platform: &QemuPlatform) -> Option<u32> {
        let mut first = None;
        self.drain_faults(|_, r| first = first.or(Some(u32::from(r.reason))));
        first
    }
    fn translation(&mut self, platform: &QemuPlatform, on: bool) -> Result<(), Error> {
        self.set_translation(platform, on)
    }
}

#[cfg(target_arch = "aarch64")]
impl CoreUnit for pcie_iommu::smmuv3::SmmuBackend<'_> {
    const DETACH_FAULTS: bool = false;
    fn faults(&mut self, platform: &QemuPlatform) -> Option<u32> {
        let mut first = None;
        self.unit_mut().drain_events(platform, |e| {
            if first.is_none() {
                defmt::info!("core: SMMUv3 event {=str} StreamID {=u32:#x} address {=u64:#x}", e.kind.name(), e.stream.0, e.address);
            }
            first = first.or(Some(u32::from(e.code)));
        });
        first
    }
    fn translation(&mut self, _platform: &QemuPlatform, _on: bool) -> Result<(), Error> {
        Ok(())
    }
}

const SRC: u64 = 0x3000_0000;
const DST: u64 = 0x3000_1000;
const LEN: u32 = 64;

fn fill(pages: &DmaPages, offset: usize, byte: u8) {
    for i in 0..LEN as usize {
        // SAFETY: inside a DMA run this test owns; no DMA is in flight while the CPU writes.
        unsafe { pages.virt().as_ptr().add(offset + i).write_volatile(byte ^ i as u8) };
    }
}

fn holds(pages: &DmaPages, offset: usize, byte: u8) -> bool {
    // SAFETY: as in `fill`; edu finished (its command bit cleared) before this read.
    (0..LEN as usize).all(|i| unsafe { pages.virt().as_ptr().add(offset + i).read_volatile() } == byte ^ i as u8)
}

#[cfg(target_arch = "x86_64")]
pub fn run(cfg: &impl ConfigAccess, e: &Pcie, platform: &QemuPlatform, base: PhysAddr, size: usize, checks: &mut Checks) {
    use pcie_iommu::iommu::pagetable::{VtdSecondStage, X86FirstStage};
    use pcie_iommu::vtd::{TableMode, Unit};
    let Some((_, _, ecap)) = checks.ok("VT-d capabilities", Unit::probe(platform, base, size)) else { return };
    let mode = if ecap.smts() { TableMode::Scalable } else { TableMode::Legacy };
    let Some(mut unit) = checks.ok("VT-d unit for the domain core", Unit::new(platform, base, size, mode)) else { return };
    if checks.ok("queued invalidation on", unit.enable_queued_invalidation(platform, 256)).is_none() {
        return;
    }
    let mut core: Core<Unit> = Iommu::new(unit, 1);
    if mode == TableMode::Scalable && !ecap.slts() {
        with_format(cfg, e, platform, &mut core, X86FirstStage::new(), checks);
    } else {
        with_format(cfg, e, platform, &mut core, VtdSecondStage::new(), checks);
    }
    checks.ok("VT-d translation off", core.backend_mut().set_translation(platform, false));
}

/// The core over the SMMUv3 the device tree describes, with the `iommu-map` of the host's
/// segment for requester IDs; stage-1 domains (ASID tags).
#[cfg(target_arch = "aarch64")]
pub fn run_smmu(cfg: &impl ConfigAccess, e: &Pcie, dt: &pcie_iommu::firmware::dt::DeviceTree<'_>, platform: &QemuPlatform, segment: u16, checks: &mut Checks) {
    use pcie_iommu::iommu::pagetable::Arm64Stage1;
    use pcie_iommu::smmuv3::discovery::{self, Firmware};
    use pcie_iommu::smmuv3::{SidMap, SmmuBackend, Unit, UnitConfig};
    let fw = Firmware::DeviceTree(dt);
    let Some(Some(desc)) = checks.ok("core: SMMUv3 from the device tree", discovery::describe(fw, 0)) else { return };
    let Some(map) = checks.ok("core: RID to StreamID map", discovery::stream_id_map(fw, &desc, segment)) else { return };
    let Some(unit) = checks.ok("SMMUv3 unit for the domain core", Unit::new(platform, desc.base, UnitConfig::default())) else { return };
    let bbml = unit.ids().idr3.bbml();
    let mut core: Core<SmmuBackend<'_>> = Iommu::new(SmmuBackend::new(unit, SidMap::Firmware(map)), 1);
    with_format(cfg, e, platform, &mut core, Arm64Stage1::new(bbml), checks);
}

struct Device {
    edu: Edu,
    endpoint: Endpoint,
}

fn open(cfg: &impl ConfigAccess, e: &Pcie, platform: &QemuPlatform, index: FunctionIndex, checks: &mut Checks) -> Option<Device> {
    let f = e.topology.get(index)?;
    let bar0 = f.bars.iter().flatten().find(|b| b.index == 0).map_or(0, |b| b.base);
    let edu = checks.ok("edu opens", Edu::open(platform, cfg, f.bdf(), bar0))?;
    Some(Device { edu, endpoint: Endpoint::function(index, f.bdf()) })
}

fn map<B: CoreUnit, F: StageFormat>(core: &mut Core<B>, platform: &QemuPlatform, d: &mut Domain<F>, iova: u64, phys: u64, perms: Perms, checks: &mut Checks) -> bool {
    let done = d.map(platform, Iova(iova), PhysAddr(phys), 4096, perms).and_then(|p| core.flush(platform, d, p));
    checks.ok("core: map and flush", done).is_some()
}

/// Lets `dev` copy SRC to DST at `offset` (edu reads 64 bytes, then writes them back).
fn copy(dev: &Device, platform: &QemuPlatform, offset: u64, checks: &mut Checks) {
    checks.ok("edu reads SRC", dev.edu.dma(platform, SRC + offset, LEN, false));
    checks.ok("edu writes DST", dev.edu.dma(platform, DST + offset, LEN, true));
    platform.read_barrier();
}

fn with_format<B: CoreUnit, F: StageFormat + Copy>(cfg: &impl ConfigAccess, e: &Pcie, platform: &QemuPlatform, core: &mut Core<B>, format: F, checks: &mut Checks) {
    let groups = Groups::compute(&e.topology);
    let iso = Isolation::new(&e.topology, &groups);
    // Two edu sharing a group (behind the PCIe-to-PCI bridge) and one in a group of its own.
    let edus: heapless::Vec<FunctionIndex, 8> = e.topology.functions().iter().enumerate()
        .filter(|(_, f)| (f.id.vendor, f.id.device) == edu::ID)
        .filter_map(|(i, _)| u16::try_from(i).ok().map(FunctionIndex))
        .collect();
    let pair = edus.iter().enumerate().find_map(|(i, &a)| edus[i + 1..].iter().find(|&&b| groups.same_group(a, b)).map(|&b| (a, b)));
    let Some((ia, ib)) = pair else {
        checks.check("core: two edu in one group", false);
        return;
    };
    let Some(&ic) = edus.iter().find(|&&c| !groups.same_group(c, ia) && groups.group_of(c).and_then(|g| groups.get(g)).is_some_and(|g| g.len() == 1)) else {
        checks.check("core: an edu alone in its group", false);
        return;
    };
    let (Some(a), Some(b), Some(c)) = (open(cfg, e, platform, ia, checks), open(cfg, e, platform, ib, checks), open(cfg, e, platform, ic, checks)) else { return };

    let Some(mut one) = checks.ok("core: domain one", core.new_domain(platform, format)) else { return };
    let Some(mut two) = checks.ok("core: domain two", core.new_domain(platform, format)) else { return };
    defmt::info!("core: domains {} (tag {=u32}) and {} (tag {=u32}), {=str} tables", one.id(), one.tag(), two.id(), two.tag(), F::NAME);

    // Pages: per domain a source and a destination page.
    let Some(pages) = checks.ok("four DMA pages", platform.alloc_dma_pages(4, 4096)) else { return };
    let page = |i: u64| pages.phys().0 + i * 4096;
    fill(&pages, 0, 0x11);
    fill(&pages, 0x200, 0x22);
    fill(&pages, 0x400, 0x33);
    fill(&pages, 2 * 4096, 0x99);
    fill(&pages, 2 * 4096 + 0x200, 0x98);
    fill(&pages, 2 * 4096 + 0x400, 0x97);
    let ok = map(core, platform, &mut one, SRC, page(0), Perms::READ, checks)
        && map(core, platform, &mut one, DST, page(1), Perms::RW, checks)
        && map(core, platform, &mut two, SRC, page(2), Perms::READ, checks)
        && map(core, platform, &mut two, DST, page(3), Perms::RW, checks);
    if !ok {
        return;
    }

    // Attach: the group in one, the lone edu in two; a split is refused.
    checks.ok("core: attach the first member of the group to domain one", core.attach(platform, &iso, &mut one, a.endpoint));
    let split = core.attach(platform, &iso, &mut two, b.endpoint);
    defmt::info!("core: attach {} to domain two while its group is in domain one: {}", b.endpoint.bdf, split);
    checks.check("core: an attach that would split a group is refused", matches!(split, Err(Error::GroupSplit { .. })));
    checks.ok("core: the other member joins domain one", core.attach(platform, &iso, &mut one, b.endpoint));
    checks.ok("core: the lone edu attaches to domain two", core.attach(platform, &iso, &mut two, c.endpoint));
    core.backend_mut().faults(platform);
    if checks.ok("translation on", core.backend_mut().translation(platform, true)).is_none() {
        return;
    }

    copy(&a, platform, 0, checks);
    copy(&b, platform, 0x200, checks);
    copy(&c, platform, 0x400, checks);
    let fault = core.backend_mut().faults(platform);
    let (ga, gb, gc) = (holds(&pages, 4096, 0x11), holds(&pages, 4096 + 0x200, 0x22), holds(&pages, 3 * 4096 + 0x400, 0x97));
    defmt::info!("core: {} and {} copied in domain one: {=bool} {=bool}; {} in domain two: {=bool}; fault {}", a.endpoint.bdf, b.endpoint.bdf, ga, gb, c.endpoint.bdf, gc, fault);
    checks.check("core: each group's DMA reaches its own domain, through the bridge alias too", ga && gb && gc && fault.is_none());

    // Replace: the whole group moves to domain two; QEMU cached domain one's translations.
    checks.ok("core: replace the group's domain", core.replace(platform, &iso, &mut one, &mut two, a.endpoint));
    let moved = core.domain_of(&b.endpoint) == Some(two.id());
    fill(&pages, 3 * 4096, 0);
    fill(&pages, 3 * 4096 + 0x200, 0);
    fill(&pages, 4096 + 0x800, 0x5a);
    copy(&a, platform, 0, checks);
    copy(&b, platform, 0x200, checks);
    let (ra, rb) = (holds(&pages, 3 * 4096, 0x99), holds(&pages, 3 * 4096 + 0x200, 0x98));
    defmt::info!("core: after replace {} is in domain two too: {=bool}; both copy in domain two: {=bool} {=bool}", b.endpoint.bdf, moved, ra, rb);
    checks.check("core: replace moved the whole group and its DMA follows", moved && ra && rb);

    // Detach everything; the group's DMA is then blocked (VT-d: faults with the alias as source;
    // SMMUv3: abort STE, silently).
    for dev in [&a, &b] {
        checks.ok("core: detach a group member", core.detach(platform, &iso, &mut two, dev.endpoint));
    }
    checks.ok("core: detach the lone edu", core.detach(platform, &iso, &mut two, c.endpoint));
    core.backend_mut().faults(platform);
    fill(&pages, 3 * 4096, 0);
    checks.ok("edu DMA after detach", a.edu.dma(platform, DST, LEN, true));
    let fault = core.backend_mut().faults(platform);
    let blocked = holds(&pages, 3 * 4096, 0) && fault.is_some() == B::DETACH_FAULTS;
    defmt::info!("core: after detach {} is blocked: {=bool} (fault {})", a.endpoint.bdf, blocked, fault);
    checks.check("core: a detached group is blocked", blocked);
    for (what, d) in [("core: destroy domain one", one), ("core: destroy domain two", two)] {
        checks.ok(what, core.destroy_domain(platform, d).map_err(|(_, e)| e));
    }
}
