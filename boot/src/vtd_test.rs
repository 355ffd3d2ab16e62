//! Self-test `vtd` (x86 with VT-d): real DMA from QEMU's edu through the driver's tables.
//!
//! One edu on the root bus is attached to a domain; pages are mapped, edu copies through them
//! and the bytes are checked; a read-only page and an unmapped page must fault with the right
//! reason, source ID and address and leave memory unchanged; 2 MiB and 1 GiB mappings must
//! translate and split. QEMU caches translations, so a skipped invalidation fails these checks.
//! The table mode follows the unit: legacy, scalable second-stage, or scalable first-stage.

use pcie_iommu::hal::{DmaPages, Platform};
use pcie_iommu::iommu::pagetable::{IoPageTable, PageSizes, Perms, VtdSecondStage, X86FirstStage};
use pcie_iommu::iommu::PendingInvalidation;
use pcie_iommu::vtd::fault::reason_text;
use pcie_iommu::vtd::pasid::PasidTranslation;
use pcie_iommu::vtd::prq::PageRequestQueue;
use pcie_iommu::vtd::qi::FlushScope;
use pcie_iommu::vtd::descriptor::{self, Descriptor, Drain};
use pcie_iommu::vtd::{FaultRecord, TableMode, Unit};
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use pcie_iommu::{Error, Iova, Pasid, PhysAddr};

use crate::checks::Checks;
use crate::edu::Edu;
use crate::pcie::Pcie;
use crate::platform::QemuPlatform;

/// The page table of the domain, in the format the unit's mode uses.
enum Table {
    Second(IoPageTable<VtdSecondStage>),
    First(IoPageTable<X86FirstStage>),
}

impl Table {
    fn map(&mut self, p: &QemuPlatform, iova: u64, phys: u64, len: u64, perms: Perms) -> Result<PendingInvalidation, Error> {
        match self {
            Table::Second(t) => t.map(p, Iova(iova), PhysAddr(phys), len, perms),
            Table::First(t) => t.map(p, Iova(iova), PhysAddr(phys), len, perms),
        }
    }
    fn unmap(&mut self, p: &QemuPlatform, iova: u64, len: u64) -> Result<PendingInvalidation, Error> {
        match self {
            Table::Second(t) => t.unmap(p, Iova(iova), len),
            Table::First(t) => t.unmap(p, Iova(iova), len),
        }
    }
    fn page_size(&self, iova: u64) -> u64 {
        match self {
            Table::Second(t) => t.translate(Iova(iova)).map_or(0, |(_, _, s)| s),
            Table::First(t) => t.translate(Iova(iova)).map_or(0, |(_, _, s)| s),
        }
    }
}

/// The page request queue exists only where ECAP.PRS says so (its registers are reserved
/// otherwise, §11.4.24): set it up there; elsewhere (QEMU 10.0.2) the driver must refuse it
/// without touching the registers, and the log says why there is none.
fn page_request_queue(unit: &Unit, platform: &QemuPlatform, ecap: pcie_iommu::vtd::ExtendedCapability, checks: &mut Checks) {
    let queue = PageRequestQueue::new(platform, unit, 1);
    if ecap.prs() {
        if let Some(q) = checks.ok("VT-d page request queue set up (ECAP.PRS)", queue) {
            defmt::info!("VT-d: page request queue of {=usize} entries", q.entries());
        }
        return;
    }
    defmt::info!("VT-d: ECAP.PRS clear: no page request queue (QEMU 10.0.2)");
    checks.check(
        "no page request queue without ECAP.PRS",
        matches!(queue, Err(Error::Unsupported { what: "VT-d ECAP.PRS (page requests)", .. })),
    );
}

const IOVA_SMALL: u64 = 0x1000_0000;
const IOVA_2M: u64 = 0x2000_0000;
const IOVA_1G: u64 = 0x4000_0000;

fn fill(page: &DmaPages, offset: usize, byte: u8, len: usize) {
    for i in 0..len {
        // SAFETY: inside a DMA run this test owns; no DMA is in flight while the CPU writes.
        unsafe { page.virt().as_ptr().add(offset + i).write_volatile(byte.wrapping_add(i as u8)) };
    }
}

fn equals(page: &DmaPages, offset: usize, byte: u8, len: usize) -> bool {
    // SAFETY: as in `fill`; edu finished (its command bit cleared) before this read.
    (0..len).all(|i| unsafe { page.virt().as_ptr().add(offset + i).read_volatile() } == byte.wrapping_add(i as u8))
}

pub fn run(cfg: &impl pcie_iommu::pci::ConfigAccess, e: &Pcie, platform: &QemuPlatform, base: PhysAddr, size: usize, checks: &mut Checks) {
    let Some(f) = e.topology.functions().iter().find(|f| (f.id.vendor, f.id.device) == crate::edu::ID && f.bdf().bus == 0) else {
        checks.check("an edu on the root bus", false);
        return;
    };
    let bdf = f.bdf();
    let bar0 = f.bars.iter().flatten().find(|b| b.index == 0).map_or(0, |b| b.base);
    let Some(edu) = checks.ok("edu opens", Edu::open(platform, cfg, bdf, bar0)) else { return };

    // ---- Unit, queue, domain, table, attach --------------------------------------------------
    let Some((_, cap, ecap)) = checks.ok("VT-d capabilities", Unit::probe(platform, base, size)) else { return };
    let mode = if ecap.smts() { TableMode::Scalable } else { TableMode::Legacy };
    let first_stage = ecap.smts() && ecap.flts() && !ecap.slts();
    let Some(mut unit) = checks.ok("VT-d unit in its best table mode", Unit::new(platform, base, size, mode)) else { return };
    if checks.ok("queued invalidation on", unit.enable_queued_invalidation(platform, 256)).is_none() {
        return;
    }
    page_request_queue(&unit, platform, ecap, checks);
    let Some(did) = checks.ok("domain ID allocated", unit.allocate_domain_id()) else { return };
    let levels = if cap.sagaw() & 0b100 != 0 { 4 } else { 3 };
    let scope = if first_stage { FlushScope::PasidIotlb(Pasid::default()) } else { FlushScope::Iotlb };
    let translation_name = match (mode, first_stage) {
        (TableMode::Legacy, _) => "legacy",
        (_, true) => "scalable first-stage",
        (_, false) => "scalable second-stage",
    };
    let Some((mut table, root)) = new_table(platform, first_stage, cap, levels, did, checks) else { return };
    defmt::info!("VT-d: {=str} translation, domain {=u16}, {=u8}-level table at {} for edu {}", translation_name, did, if first_stage { 4 } else { levels }, root, bdf);
    if !attach(&mut unit, platform, mode, first_stage, bdf, did, root, levels, checks) {
        return;
    }

    // ---- Pages, mappings, translation on ------------------------------------------------------
    let pages = platform.alloc_dma_pages(3, 4096);
    let Some(pages) = checks.ok("three DMA pages", pages) else { return };
    let page = |i: u64| pages.phys().0 + i * 4096;
    fill(&pages, 0, 0xa0, 64);
    fill(&pages, 4096, 0x00, 0);
    for i in 0..64 {
        // SAFETY: page 2 of the run; sets a marker the read-only test must find unchanged.
        unsafe { pages.virt().as_ptr().add(2 * 4096 + i).write_volatile(0x5a) };
    }
    let mut ok = true;
    for (iova, phys, perms) in [(IOVA_SMALL, page(0), Perms::RW), (IOVA_SMALL + 0x1000, page(1), Perms::RW), (IOVA_SMALL + 0x2000, page(2), Perms::READ)] {
        match table.map(platform, iova, phys, 4096, perms) {
            Ok(pending) => ok &= checks.ok("map flushed", unit.flush(platform, pending, scope)).is_some(),
            Err(e) => ok &= checks.ok("map a 4 KiB page", Err::<(), _>(e)).is_some(),
        }
    }
    if !ok {
        return;
    }
    unit.drain_faults(|_, _| {});
    if checks.ok("VT-d translation on", unit.set_translation(platform, true)).is_none() {
        return;
    }

    // ---- Round trip through mapped pages -------------------------------------------------------
    checks.ok("edu reads IOVA page 0", edu.dma(platform, IOVA_SMALL, 64, false));
    checks.ok("edu writes IOVA page 1", edu.dma(platform, IOVA_SMALL + 0x1000, 64, true));
    platform.read_barrier();
    let copied = equals(&pages, 4096, 0xa0, 64);
    let mut fault = None;
    unit.drain_faults(|_, r| fault = fault.or(Some(r)));
    defmt::info!("VT-d: edu copied IOVA {=u64:#x} -> {=u64:#x} through the domain: bytes equal {=bool}, fault {}", IOVA_SMALL, IOVA_SMALL + 0x1000, copied, fault);
    checks.check("DMA through mapped pages returns the bytes written", copied && fault.is_none());

    // ---- Read-only page ----------------------------------------------------------------------
    checks.ok("edu DMA to the read-only page", edu.dma(platform, IOVA_SMALL + 0x2000, 64, true));
    expect_fault(&unit, checks, "a write to a read-only page", bdf.routing_id(), IOVA_SMALL + 0x2000, &[0x05, 0x79, 0x85]);
    // SAFETY: page 2 of the run; the blocked DMA must not have changed it.
    let untouched = (0..64).all(|i| unsafe { pages.virt().as_ptr().add(2 * 4096 + i).read_volatile() } == 0x5a);
    checks.check("the read-only page is unchanged", untouched);

    // ---- Unmap, flush, fault -------------------------------------------------------------------
    fill(&pages, 4096, 0x00, 64);
    match table.unmap(platform, IOVA_SMALL + 0x1000, 4096) {
        Ok(pending) => {
            checks.ok("unmap flushed", unit.flush(platform, pending, scope));
        }
        Err(e) => {
            checks.ok("unmap", Err::<(), _>(e));
        }
    }
    checks.ok("edu DMA to the unmapped page", edu.dma(platform, IOVA_SMALL + 0x1000, 64, true));
    expect_fault(&unit, checks, "a write to an unmapped page after unmap + invalidation", bdf.routing_id(), IOVA_SMALL + 0x1000, &[0x05, 0x71, 0x78, 0x79, 0x85]);
    checks.check("the unmapped page is unchanged", equals(&pages, 4096, 0x00, 64));

    large_pages(&edu, &mut table, &mut unit, platform, scope, bdf, checks);
    iqe_recovery(&mut unit, platform, checks);
    let second = e.topology.functions().iter().find(|g| (g.id.vendor, g.id.device) == crate::edu::ID && g.bdf().bus == 0 && g.bdf() != bdf);
    match second {
        Some(g) => {
            let bar0 = g.bars.iter().flatten().find(|b| b.index == 0).map_or(0, |b| b.base);
            if let Some(edu_b) = checks.ok("second edu opens", Edu::open(platform, cfg, g.bdf(), bar0)) {
                fault_event(&edu, &edu_b, &unit, platform, checks);
                let ctx = Ctx { mode, first_stage, cap, levels, scope };
                isolation(e, &edu, &edu_b, &mut table, &mut unit, platform, &ctx, checks);
                pass_through(&edu_b, &mut unit, platform, &ctx, checks);
            }
        }
        None => {
            checks.check("a second edu on the root bus for the isolation check", false);
        }
    }
    checks.ok("VT-d translation off", unit.set_translation(platform, false));
}

/// What the checks after the first need to know about the unit's mode.
struct Ctx {
    mode: TableMode,
    first_stage: bool,
    cap: pcie_iommu::vtd::Capability,
    levels: u8,
    scope: FlushScope,
}

fn new_table(platform: &QemuPlatform, first_stage: bool, cap: pcie_iommu::vtd::Capability, levels: u8, did: u16, checks: &mut Checks) -> Option<(Table, PhysAddr)> {
    if first_stage {
        let sizes = PageSizes::from_vtd_first_stage(cap.fs1gp());
        let mut t = checks.ok("first-stage page table", IoPageTable::new(platform, X86FirstStage::new(), 4, sizes))?;
        t.set_domain(u32::from(did));
        let root = t.root();
        Some((Table::First(t), root))
    } else {
        let sizes = PageSizes::from_vtd_sllps(cap.sllps());
        let mut t = checks.ok("second-stage page table", IoPageTable::new(platform, VtdSecondStage::new(), levels, sizes))?;
        t.set_domain(u32::from(did));
        let root = t.root();
        Some((Table::Second(t), root))
    }
}

#[allow(clippy::too_many_arguments, reason = "a test helper mirroring the unit's attach calls")]
fn attach(unit: &mut Unit, platform: &QemuPlatform, mode: TableMode, first_stage: bool, bdf: pcie_iommu::Bdf, did: u16, root: PhysAddr, levels: u8, checks: &mut Checks) -> bool {
    let attached = match (mode, first_stage) {
        (TableMode::Legacy, _) => unit.attach_legacy(platform, bdf, did, root, levels),
        (TableMode::Scalable, true) => unit.attach_pasid(platform, bdf, Pasid::default(), did, PasidTranslation::FirstStage { root, levels: 4 }),
        (TableMode::Scalable, false) => unit.attach_pasid(platform, bdf, Pasid::default(), did, PasidTranslation::SecondStage { root, levels }),
    };
    match checks.ok("function attached to its domain", attached) {
        Some(inv) => checks.ok("attach invalidations", unit.flush_tables(platform, inv)).is_some(),
        None => false,
    }
}

#[allow(clippy::too_many_arguments, reason = "a test helper: one mapping and its flush")]
fn map_flush(table: &mut Table, unit: &mut Unit, platform: &QemuPlatform, scope: FlushScope, iova: u64, phys: u64, perms: Perms, checks: &mut Checks) -> bool {
    let done = table.map(platform, iova, phys, 4096, perms).and_then(|p| unit.flush(platform, p, scope));
    checks.ok("map and flush", done).is_some()
}

/// A malformed descriptor raises IQE; the driver reports it, skips it, and later invalidations
/// complete.
fn iqe_recovery(unit: &mut Unit, platform: &QemuPlatform, checks: &mut Checks) {
    let Some(queue) = checks.ok("the invalidation queue", unit.queue()) else { return };
    // A global IOTLB invalidation (type 2, granularity 01) with reserved bit 8 set (VT-d
    // §6.5.2.3): well-formed enough for the driver's queue, rejected by the unit with IQE.
    let bad = Descriptor::from_raw([0x2 | 1 << 4 | 1 << 8, 0, 0, 0]);
    let result = queue.submit(platform, &[bad]);
    defmt::info!("VT-d: malformed descriptor submitted: {}", result);
    checks.check("a malformed descriptor is reported as IQE with its slot", matches!(result, Err(Error::InvalidDescriptor { kind: 0x2, .. })));
    let later = queue.submit(platform, &[descriptor::iotlb_global(Drain::default())]);
    checks.ok("invalidations after the IQE complete", later);
    let status = unit.fault_status();
    checks.check("IQE is cleared after recovery", !status.iqe());
}

static FAULT_UNIT: AtomicPtr<Unit> = AtomicPtr::new(core::ptr::null_mut());
static SERVICED: AtomicU32 = AtomicU32::new(0);
static LAST_SOURCE: AtomicU32 = AtomicU32::new(0);

/// The fault event handler: reads and clears every fault record, as a hypervisor's would.
fn on_fault_event() {
    let unit = FAULT_UNIT.load(Ordering::Acquire);
    if unit.is_null() {
        return;
    }
    // SAFETY: `fault_event` publishes a pointer to a `Unit` that outlives the window in which
    // interrupts are taken, and withdraws it before the unit goes away; only shared references
    // exist meanwhile (single CPU, interrupts only inside `interrupt_window`).
    let unit = unsafe { &*unit };
    unit.drain_faults(|_, r| {
        SERVICED.fetch_add(1, Ordering::Relaxed);
        LAST_SOURCE.store(u32::from(r.source_id.0), Ordering::Relaxed);
    });
}

/// The fault event MSI reaches the IDT handler, which services each fault; a flood of faulting
/// DMAs is serviced one by one; with the event masked and the one recording register full, a
/// second source's fault sets PFO, which is reported and cleared, and faults are recorded again.
fn fault_event(edu: &Edu, other: &Edu, unit: &Unit, platform: &QemuPlatform, checks: &mut Checks) {
    let vector = crate::arch::IRQ_BASE + 1;
    let Some((apic, id)) = checks.ok("local APIC", crate::arch::lapic_init()) else { return };
    checks.check("fault handler installed", crate::arch::set_irq_handler(vector, on_fault_event));
    unit.drain_faults(|_, _| {});
    FAULT_UNIT.store(core::ptr::from_ref(unit).cast_mut(), Ordering::Release);
    // MSI address: the APIC's base with the destination APIC ID in bits 19:12 (SDM §11.11.1);
    // data: fixed delivery, edge, the vector.
    unit.enable_fault_event(u32::from(vector), apic | (u64::from(id) << 12));
    let before_irqs = crate::arch::irq_count(vector);
    let before = SERVICED.load(Ordering::Relaxed);
    const FLOOD: u32 = 16;
    let mut delivered = 0;
    for _ in 0..FLOOD {
        let seen = SERVICED.load(Ordering::Relaxed);
        let _ = edu.dma(platform, IOVA_SMALL + 0x1000, 8, true);
        // TIMEOUT: the MSI is raised as the fault is recorded; 100 ms is far beyond that.
        if pcie_iommu::hal::poll(platform, "fault event interrupt", core::time::Duration::from_millis(100), || {
            crate::arch::interrupt_window();
            (SERVICED.load(Ordering::Relaxed) > seen).then_some(())
        })
        .is_ok()
        {
            delivered += 1;
        }
    }
    let irqs = crate::arch::irq_count(vector) - before_irqs;
    let serviced = SERVICED.load(Ordering::Relaxed) - before;
    defmt::info!(
        "VT-d fault event: {=u32} faulting DMAs, {=u64} interrupts on vector {=u8:#x}, {=u32} faults serviced by the handler, last source {=u32:#06x}",
        FLOOD, irqs, vector, serviced, LAST_SOURCE.load(Ordering::Relaxed)
    );
    checks.check("every fault of the flood raised the fault event and was serviced", delivered == FLOOD && serviced == FLOOD && irqs >= u64::from(FLOOD));

    // Overflow: with the event masked nobody services the records; a fault from a second
    // source finds every recording register full (QEMU has one) and sets PFO (§7.2.1).
    unit.mask_fault_event();
    FAULT_UNIT.store(core::ptr::null_mut(), Ordering::Release);
    let records = unit.fault_records();
    let _ = edu.dma(platform, IOVA_SMALL + 0x1000, 8, true);
    for _ in 0..records {
        // The second edu is attached to nothing yet: its requests fault too, with its own ID.
        let _ = other.dma(platform, IOVA_SMALL + 0x1000, 8, true);
    }
    let status = unit.fault_status();
    defmt::info!(
        "VT-d with the fault event masked, {=usize} recording register(s) and faults from {} and {}: FSTS {=u32:#x} (pending {=bool}, overflow {=bool})",
        records, edu.bdf, other.bdf, status.0, status.pending(), status.overflow()
    );
    checks.check("a fault flood past the recording registers sets PFO", status.pending() && status.overflow());
    let mut drained = 0;
    let seen = unit.drain_faults(|_, _| drained += 1);
    let after = unit.fault_status();
    defmt::info!("VT-d: {=usize} fault record(s) read and cleared, overflow reported {=bool}, FSTS now {=u32:#x}", drained, seen.overflow(), after.0);
    checks.check("recorded faults are read and cleared, and the overflow reported and cleared", drained == records && seen.overflow() && !after.pending() && !after.overflow());
    let _ = edu.dma(platform, IOVA_SMALL + 0x1000, 8, true);
    let mut again = None;
    unit.drain_faults(|_, r| again = again.or(Some(r)));
    checks.check("later faults are recorded again", again.is_some_and(|r| r.source_id == edu.bdf.routing_id()));
}

/// Two functions in different isolation groups, attached to different domains: the same IOVA
/// reaches each one's own page.
#[allow(clippy::too_many_arguments, reason = "the test's state, passed down")]
fn isolation(e: &Pcie, a: &Edu, b: &Edu, table_a: &mut Table, unit: &mut Unit, platform: &QemuPlatform, ctx: &Ctx, checks: &mut Checks) {
    use pcie_iommu::pci::groups::{DomainId, GroupAttachments, Groups};
    let groups = Groups::compute(&e.topology);
    let (Some(ia), Some(ib)) = (e.topology.find(a.bdf), e.topology.find(b.bdf)) else { return };
    checks.check("the two edu are in different isolation groups", !groups.same_group(ia, ib));
    let Some(did_b) = checks.ok("a second domain ID", unit.allocate_domain_id()) else { return };
    let mut attachments = GroupAttachments::<{ crate::pcie::MAX_FUNCTIONS }>::new();
    checks.ok("group guard: edu A to domain 1", attachments.attach(&groups, ia, DomainId(1)));
    checks.ok("group guard: edu B to its own domain", attachments.attach(&groups, ib, DomainId(u32::from(did_b))));
    let Some((mut table_b, root_b)) = new_table(platform, ctx.first_stage, ctx.cap, ctx.levels, did_b, checks) else { return };
    if !attach(unit, platform, ctx.mode, ctx.first_stage, b.bdf, did_b, root_b, ctx.levels, checks) {
        return;
    }
    let Some(pages) = checks.ok("four DMA pages", platform.alloc_dma_pages(4, 4096)) else { return };
    let page = |i: u64| pages.phys().0 + i * 4096;
    fill(&pages, 0, 0x11, 64); // A's source
    fill(&pages, 4096, 0x77, 64); // B's source
    const SRC: u64 = 0x3000_0000;
    const DST: u64 = 0x3000_1000;
    let ok = map_flush(table_a, unit, platform, ctx.scope, SRC, page(0), Perms::READ, checks)
        && map_flush(table_a, unit, platform, ctx.scope, DST, page(2), Perms::RW, checks)
        && map_flush(&mut table_b, unit, platform, ctx.scope, SRC, page(1), Perms::READ, checks)
        && map_flush(&mut table_b, unit, platform, ctx.scope, DST, page(3), Perms::RW, checks);
    if !ok {
        return;
    }
    for edu in [a, b] {
        checks.ok("edu copies SRC into its buffer", edu.dma(platform, SRC, 64, false));
        checks.ok("edu writes its buffer to DST", edu.dma(platform, DST, 64, true));
    }
    let (got_a, got_b) = (equals(&pages, 2 * 4096, 0x11, 64), equals(&pages, 3 * 4096, 0x77, 64));
    defmt::info!("VT-d isolation: the same IOVAs in domain {=u16} and {=u16}: edu {} wrote its own page {=bool}, edu {} wrote its own page {=bool}", 1u16, did_b, a.bdf, got_a, b.bdf, got_b);
    checks.check("each function's DMA reaches only its own domain", got_a && got_b);
    if let Some(inv) = checks.ok("detach the second edu", unit.detach(platform, b.bdf)) {
        checks.ok("detach invalidations", unit.flush_tables(platform, inv));
    }
}

/// Pass-through: the function's DMA addresses are physical addresses.
fn pass_through(edu: &Edu, unit: &mut Unit, platform: &QemuPlatform, ctx: &Ctx, checks: &mut Checks) {
    let Some(did) = checks.ok("a pass-through domain ID", unit.allocate_domain_id()) else { return };
    let attached = match ctx.mode {
        TableMode::Legacy => unit.attach_legacy_pass_through(platform, edu.bdf, did),
        TableMode::Scalable => unit.attach_pasid(platform, edu.bdf, Pasid::default(), did, PasidTranslation::PassThrough),
    };
    let Some(inv) = checks.ok("pass-through attach", attached) else { return };
    checks.ok("pass-through invalidations", unit.flush_tables(platform, inv));
    let Some(page) = checks.ok("a DMA page", platform.alloc_dma_pages(1, 4096)) else { return };
    fill(&page, 0, 0x3c, 64);
    checks.ok("edu reads the physical address", edu.dma(platform, page.phys().0, 64, false));
    checks.ok("edu writes the physical address + 0x800", edu.dma(platform, page.phys().0 + 0x800, 64, true));
    let ok = equals(&page, 0x800, 0x3c, 64);
    let mut fault = None;
    unit.drain_faults(|_, r| fault = fault.or(Some(r)));
    defmt::info!("VT-d pass-through: edu {} copied {} -> +0x800: bytes equal {=bool}, fault {}", edu.bdf, page.phys(), ok, fault);
    checks.check("pass-through DMA reaches physical memory", ok && fault.is_none());
}

fn expect_fault(unit: &Unit, checks: &mut Checks, what: &'static str, rid: pcie_iommu::RequesterId, address: u64, reasons: &[u8]) {
    let mut seen: Option<FaultRecord> = None;
    unit.drain_faults(|_, r| seen = seen.or(Some(r)));
    match seen {
        Some(r) => {
            defmt::info!(
                "VT-d fault for {=str}: source {} reason {=u8:#04x} ({=str}) address {=u64:#x} {=str}",
                what, r.source_id, r.reason, reason_text(r.reason), r.address, if r.read { "read" } else { "write" }
            );
            checks.check(what, r.source_id == rid && r.address == address && !r.read && reasons.contains(&r.reason));
        }
        None => {
            defmt::error!("no VT-d fault for {=str}", what);
            checks.check(what, false);
        }
    }
}

fn large_pages(edu: &Edu, table: &mut Table, unit: &mut Unit, platform: &QemuPlatform, scope: FlushScope, bdf: pcie_iommu::Bdf, checks: &mut Checks) {
    // 2 MiB: a 2 MiB-aligned run mapped with one leaf, then split by unmapping one 4 KiB page.
    if let Some(run) = checks.ok("a 2 MiB-aligned DMA run", platform.alloc_dma_pages(512, 2 << 20)) {
        let flushed = table.map(platform, IOVA_2M, run.phys().0, 2 << 20, Perms::RW).map(|p| unit.flush(platform, p, scope));
        checks.ok("2 MiB mapping", flushed.and_then(|r| r));
        let size = table.page_size(IOVA_2M);
        defmt::info!("VT-d: {=u64:#x} maps with a {=u64} KiB page", IOVA_2M, size / 1024);
        checks.check("the 2 MiB range uses one 2 MiB leaf", size == 2 << 20);
        for off in [0x1000u64, 0x1f_f000] {
            checks.ok("edu DMA through the 2 MiB page", edu.dma(platform, IOVA_2M + off, 64, true));
        }
        checks.check("DMA at both ends of the 2 MiB page landed", equals(&run, 0x1000, 0xa0, 64) && equals(&run, 0x1f_f000, 0xa0, 64));
        fill(&run, 0x1000, 0, 64);
        fill(&run, 0x2000, 0, 64);
        let split = table.unmap(platform, IOVA_2M + 0x1000, 4096).map(|p| unit.flush(platform, p, scope));
        checks.ok("unmap 4 KiB inside the 2 MiB page (split)", split.and_then(|r| r));
        checks.check("the rest of the 2 MiB range is now mapped with 4 KiB pages", table.page_size(IOVA_2M + 0x2000) == 4096);
        checks.ok("edu DMA to the hole", edu.dma(platform, IOVA_2M + 0x1000, 64, true));
        expect_fault(unit, checks, "a write to the 4 KiB hole in a split 2 MiB page", bdf.routing_id(), IOVA_2M + 0x1000, &[0x05, 0x71, 0x78, 0x79, 0x85]);
        checks.ok("edu DMA next to the hole", edu.dma(platform, IOVA_2M + 0x2000, 64, true));
        checks.check("the split 2 MiB page still maps its neighbours", equals(&run, 0x2000, 0xa0, 64) && equals(&run, 0x1000, 0, 64));
    }
    // 1 GiB: physical 0..1 GiB with one leaf (RAM is below 256 MiB), so IOVA 1 GiB + P reaches P.
    let Some(pages) = checks.ok("two DMA pages for the 1 GiB test", platform.alloc_dma_pages(2, 4096)) else { return };
    let (p0, p1) = (pages.phys().0, pages.phys().0 + 4096);
    fill(&pages, 0, 0, 128);
    fill(&pages, 4096, 0, 64);
    let mapped = table.map(platform, IOVA_1G, 0, 1 << 30, Perms::RW).map(|p| unit.flush(platform, p, scope));
    checks.ok("1 GiB mapping", mapped.and_then(|r| r));
    let size = table.page_size(IOVA_1G);
    defmt::info!("VT-d: {=u64:#x} maps with a {=u64} MiB page", IOVA_1G, size >> 20);
    checks.check("the 1 GiB range uses one 1 GiB leaf", size == 1 << 30);
    checks.ok("edu DMA through the 1 GiB page", edu.dma(platform, IOVA_1G + p0, 64, true));
    checks.check("DMA through the 1 GiB page landed at its physical address", equals(&pages, 0, 0xa0, 64));
    let split = table.unmap(platform, IOVA_1G + p1, 4096).map(|p| unit.flush(platform, p, scope));
    checks.ok("unmap 4 KiB inside the 1 GiB page (split)", split.and_then(|r| r));
    fill(&pages, 0, 0, 64);
    checks.ok("edu DMA to the hole in the 1 GiB page", edu.dma(platform, IOVA_1G + p1, 64, true));
    expect_fault(unit, checks, "a write to the 4 KiB hole in a split 1 GiB page", bdf.routing_id(), IOVA_1G + p1, &[0x05, 0x71, 0x78, 0x79, 0x85]);
    checks.ok("edu DMA next to the hole", edu.dma(platform, IOVA_1G + p0, 64, true));
    checks.check("the split 1 GiB page still maps its neighbours", equals(&pages, 0, 0xa0, 64) && equals(&pages, 4096, 0, 64));
}
