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
use pcie_iommu::vtd::qi::FlushScope;
use pcie_iommu::vtd::{FaultRecord, TableMode, Unit};
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
    let Some(did) = checks.ok("domain ID allocated", unit.allocate_domain_id()) else { return };
    let levels = if cap.sagaw() & 0b100 != 0 { 4 } else { 3 };
    let (mut table, scope, translation_name) = if first_stage {
        let sizes = PageSizes::from_vtd_first_stage(cap.fs1gp());
        let Some(t) = checks.ok("first-stage page table", IoPageTable::new(platform, X86FirstStage::new(), 4, sizes)) else { return };
        (Table::First(t), FlushScope::PasidIotlb(Pasid::default()), "scalable first-stage")
    } else {
        let sizes = PageSizes::from_vtd_sllps(cap.sllps());
        let Some(t) = checks.ok("second-stage page table", IoPageTable::new(platform, VtdSecondStage::new(), levels, sizes)) else { return };
        (Table::Second(t), FlushScope::Iotlb, if mode == TableMode::Scalable { "scalable second-stage" } else { "legacy" })
    };
    let root = match &mut table {
        Table::Second(t) => {
            t.set_domain(u32::from(did));
            t.root()
        }
        Table::First(t) => {
            t.set_domain(u32::from(did));
            t.root()
        }
    };
    defmt::info!("VT-d: {=str} translation, domain {=u16}, {=u8}-level table at {} for edu {}", translation_name, did, if first_stage { 4 } else { levels }, root, bdf);
    let attached = match (mode, first_stage) {
        (TableMode::Legacy, _) => unit.attach_legacy(platform, bdf, did, root, levels),
        (TableMode::Scalable, true) => unit.attach_pasid(platform, bdf, Pasid::default(), did, PasidTranslation::FirstStage { root, levels: 4 }),
        (TableMode::Scalable, false) => unit.attach_pasid(platform, bdf, Pasid::default(), did, PasidTranslation::SecondStage { root, levels }),
    };
    let Some(inv) = checks.ok("edu attached to the domain", attached) else { return };
    checks.ok("attach invalidations", unit.flush_tables(platform, inv));

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
    checks.ok("VT-d translation off", unit.set_translation(platform, false));
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
