//! Host tests of the page-table engine and the VT-d formats.

use super::*;
use crate::hal::Instant;
use crate::iommu::InvalidationRange;
use crate::iommu::invalidation::FreedPage;

use core::cell::{Cell, RefCell};
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::{BTreeMap, BTreeSet};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;

/// Host memory as DMA memory: 4 KiB-aligned zeroed pages from `std::alloc`, phys = virt.
#[derive(Default)]
struct HostPlatform {
    live: RefCell<BTreeMap<usize, usize>>,
    /// Allocations that succeed before the platform reports out of memory.
    budget: Cell<Option<usize>>,
    syncs: Cell<usize>,
}

impl HostPlatform {
    fn live_runs(&self) -> usize {
        self.live.borrow().len()
    }
}

// SAFETY: the pages are zeroed, 4 KiB-aligned, owned by the caller until freed, and "DMA" is
// the CPU itself (phys = virt), so they are coherent.
unsafe impl Platform for HostPlatform {
    fn alloc_dma_pages(&self, count: usize, align: usize) -> Result<DmaPages> {
        if let Some(n) = self.budget.get() {
            if n == 0 {
                return Err(Error::OutOfMemory { pages: count });
            }
            self.budget.set(Some(n - 1));
        }
        let layout = Layout::from_size_align(count * PAGE_SIZE, align.max(PAGE_SIZE)).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let virt = NonNull::new(ptr).unwrap();
        self.live.borrow_mut().insert(ptr as usize, count);
        // SAFETY: fresh zeroed memory of `count` pages, phys = virt on the host.
        Ok(unsafe { DmaPages::new(PhysAddr(ptr as u64), virt, count) })
    }

    unsafe fn free_dma_pages(&self, pages: DmaPages) {
        let addr = pages.virt().as_ptr() as usize;
        let count = self.live.borrow_mut().remove(&addr).expect("freeing a page never allocated");
        assert_eq!(count, pages.count(), "freed with another page count");
        assert_eq!(pages.phys().0, addr as u64);
        let layout = Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: allocated above with this layout (align was PAGE_SIZE for every table).
        unsafe { dealloc(pages.virt().as_ptr(), layout) };
    }

    fn map_mmio(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
        Err(Error::MmioUnavailable { base: base.0, size: size as u64 })
    }
    fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
        Err(Error::MmioUnavailable { base: base.0, size: size as u64 })
    }
    fn write_barrier(&self) {}
    fn read_barrier(&self) {}
    fn sync_for_device(&self, _virt: NonNull<u8>, _len: usize) {
        self.syncs.set(self.syncs.get() + 1);
    }
    fn now(&self) -> Instant {
        Instant(0)
    }
}

/// What a flush saw.
#[derive(Debug)]
struct Flushed {
    ranges: Vec<InvalidationRange>,
    whole_domain: bool,
    freed: usize,
    leaked: usize,
}

/// Plays the unit's flush: records what was asked and releases the pages.
fn flush(p: &HostPlatform, pending: PendingInvalidation) -> Flushed {
    let f = Flushed {
        ranges: pending.ranges.iter().copied().collect(),
        whole_domain: pending.whole_domain,
        freed: pending.freed.len(),
        leaked: pending.leaked_pages,
    };
    // SAFETY: nothing walks these tables but the test.
    unsafe { pending.complete(p) };
    f
}

fn range(start: u64, len: u64, leaf_only: bool) -> InvalidationRange {
    InvalidationRange { start, len, leaf_only }
}

fn table<F: PageTableFormat>(p: &HostPlatform, f: F, levels: u8) -> IoPageTable<F> {
    let mut t = IoPageTable::new(p, f, levels, PageSizes::ALL).unwrap();
    t.set_coherent(true);
    t
}

/// Destroys the table and checks every page went back.
fn teardown<F: PageTableFormat>(p: &HostPlatform, t: IoPageTable<F>) {
    let live = t.live_tables();
    let f = flush(p, t.destroy(p));
    assert!(f.whole_domain);
    assert_eq!((f.freed, f.leaked), (live, 0));
    assert_eq!(p.live_runs(), 0, "pages leaked");
}

/// Runs a generic test body for both formats and every level count.
macro_rules! for_all_configs {
    ($body:ident) => {
        $body(VtdSecondStage::new(), 3);
        $body(VtdSecondStage::new(), 4);
        $body(VtdSecondStage::new(), 5);
        $body(X86FirstStage::new(), 4);
        $body(X86FirstStage::new(), 5);
        $body(Arm64Stage1::new(2), 3);
        $body(Arm64Stage1::new(2), 4);
        $body(Arm64Stage2::new(2), 3);
        $body(Arm64Stage2::new(2), 4);
    };
}

// ---- Map, translate, unmap ---------------------------------------------------------------------

fn map_one_4k<F: PageTableFormat>(f: F, levels: u8) {
    let p = HostPlatform::default();
    let mut t = table(&p, f, levels);
    let iova = 0x1234_5000;
    let pend = t.map(&p, Iova(iova), PhysAddr(0x8765_4000), K4, Perms::RW).unwrap();
    assert_eq!(flush(&p, pend).ranges, [range(iova, K4, true)]);
    // One table per level below the root, one entry per table plus the leaf.
    let l = u64::from(levels);
    assert_eq!(
        t.last_op(),
        PageTableStats { tables_allocated: l - 1, tables_freed: 0, entries_written: l, splits: 0 }
    );
    assert_eq!(t.translate(Iova(iova + 0x10)), Some((PhysAddr(0x8765_4010), Perms::RW, K4)));
    assert_eq!(t.translate(Iova(iova + K4)), None);
    assert_eq!(t.translate(Iova(iova - K4)), None);

    let pend = t.unmap(&p, Iova(iova), K4).unwrap();
    let fl = flush(&p, pend);
    // Every table below the root emptied and freed: not leaf-only.
    assert_eq!(fl.ranges, [range(iova, K4, false)]);
    assert_eq!(fl.freed, levels as usize - 1);
    assert_eq!(t.last_op().entries_written, l); // the leaf, then one parent entry per table
    assert_eq!(t.translate(Iova(iova)), None);
    assert_eq!(t.live_tables(), 1);
    teardown(&p, t);
}

#[test]
fn map_translate_unmap_4k() {
    for_all_configs!(map_one_4k);
}

fn map_256_pages<F: PageTableFormat>(f: F, levels: u8) {
    let p = HostPlatform::default();
    let mut t = table(&p, f, levels);
    // 1 MiB straddling the 256 GiB line (so two paths from the level-3 table down).
    let (iova, phys) = (0x40_0000_0000 - 0x8_0000, 0x2_0000_0000);
    let len = 256 * K4;
    let pend = t.map(&p, Iova(iova), PhysAddr(phys), len, Perms::READ).unwrap();
    assert_eq!(flush(&p, pend).ranges, [range(iova, len, true)]);
    for i in 0..256 {
        assert_eq!(
            t.translate(Iova(iova + i * K4)),
            Some((PhysAddr(phys + i * K4), Perms::READ, K4))
        );
    }
    // Every table allocated is linked by one entry; the rest are the 256 leaves.
    let st = t.last_op();
    assert_eq!(st.entries_written - (st.tables_allocated), 256);
    let pend = t.unmap(&p, Iova(iova), len).unwrap();
    let fl = flush(&p, pend);
    assert_eq!(fl.ranges, [range(iova, len, false)]);
    assert_eq!(fl.freed as u64, st.tables_allocated);
    assert_eq!(t.live_tables(), 1);
    teardown(&p, t);
}

#[test]
fn map_256_contiguous_pages() {
    for_all_configs!(map_256_pages);
}

fn map_large<F: PageTableFormat>(f: F, levels: u8) {
    let p = HostPlatform::default();
    let mut t = table(&p, f, levels);
    // 2 MiB.
    let pend = t.map(&p, Iova(0x4020_0000), PhysAddr(0x1_0020_0000), M2, Perms::RW).unwrap();
    assert_eq!(flush(&p, pend).ranges, [range(0x4020_0000, M2, true)]);
    assert_eq!(t.last_op().entries_written, u64::from(levels) - 1);
    assert_eq!(
        t.translate(Iova(0x4020_0000 + 0x1_2345)),
        Some((PhysAddr(0x1_0021_2345), Perms::RW, M2))
    );
    // 1 GiB.
    let pend = t.map(&p, Iova(3 * G1), PhysAddr(5 * G1), G1, Perms::RW).unwrap();
    assert_eq!(flush(&p, pend).ranges, [range(3 * G1, G1, true)]);
    // It shares the tables above level 3 with the 2 MiB page (same 512 GiB).
    assert_eq!(t.last_op().tables_allocated, 0);
    assert_eq!(
        t.translate(Iova(3 * G1 + 0x1234_5678)),
        Some((PhysAddr(5 * G1 + 0x1234_5678), Perms::RW, G1))
    );
    // Whole unmaps: no split.
    let fl = flush(&p, t.unmap(&p, Iova(3 * G1), G1).unwrap());
    // The table holding it still holds the 2 MiB page's table: nothing freed.
    assert_eq!(fl.ranges, [range(3 * G1, G1, true)]);
    let fl = flush(&p, t.unmap(&p, Iova(0x4020_0000), M2).unwrap());
    assert_eq!(fl.ranges, [range(0x4020_0000, M2, false)]);
    assert_eq!(t.stats().splits, 0);
    assert_eq!(t.live_tables(), 1);
    teardown(&p, t);
}

#[test]
fn map_2m_and_1g_pages() {
    for_all_configs!(map_large);
}

/// The page sizes translate reports for every 4 KiB page of a range, run-length encoded.
fn sizes<F: PageTableFormat>(t: &IoPageTable<F>, iova: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut a = iova;
    while a < iova + len {
        let (_, _, size) = t.translate(Iova(a)).expect("mapped");
        match out.last_mut() {
            Some((s, n)) if *s == size => *n += 1,
            _ => out.push((size, 1)),
        }
        a += size - (a & (size - 1));
    }
    out
}

fn mixed_alignment<F: PageTableFormat>(f: F, levels: u8) {
    let p = HostPlatform::default();
    let mut t = table(&p, f, levels);
    // From 8 KiB below a 1 GiB line to 12 KiB past 1 GiB + 4 MiB, phys congruent mod 1 GiB.
    let iova = G1 - 2 * K4;
    let len = 2 * K4 + G1 + 2 * M2 + 3 * K4;
    let phys = 7 * G1 + iova % G1;
    flush(&p, t.map(&p, Iova(iova), PhysAddr(phys), len, Perms::RW).unwrap());
    assert_eq!(sizes(&t, iova, len), [(K4, 2), (G1, 1), (M2, 2), (K4, 3)]);
    // Same IOVAs, phys only 2 MiB-congruent: no 1 GiB page.
    let iova2 = 8 * G1 - 2 * K4;
    let phys2 = 3 * G1 + M2 + iova2 % M2;
    flush(&p, t.map(&p, Iova(iova2), PhysAddr(phys2), len, Perms::RW).unwrap());
    assert_eq!(sizes(&t, iova2, len), [(K4, 2), (M2, 514), (K4, 3)]);
    // Phys congruent only mod 4 KiB: 4 KiB pages throughout (first 4 MiB checked).
    let iova3 = 16 * G1;
    flush(&p, t.map(&p, Iova(iova3), PhysAddr(G1 + K4), 2 * M2, Perms::RW).unwrap());
    assert_eq!(sizes(&t, iova3, 2 * M2), [(K4, 1024)]);
    for a in [iova, iova + K4, G1, G1 + 0x123_4000, iova + len - K4] {
        assert_eq!(t.translate(Iova(a)).unwrap().0, PhysAddr(phys + (a - iova)));
    }
    for (i, l) in [(iova, len), (iova2, len), (iova3, 2 * M2)] {
        flush(&p, t.unmap(&p, Iova(i), l).unwrap());
    }
    assert_eq!(t.live_tables(), 1);
    teardown(&p, t);
}

#[test]
fn mixed_alignments_choose_the_largest_sizes() {
    for_all_configs!(mixed_alignment);
}

#[test]
fn hardware_sizes_limit_the_leaves() {
    let p = HostPlatform::default();
    // SLLPS = 0b01: 2 MiB only.
    let mut t =
        IoPageTable::new(&p, VtdSecondStage::new(), 4, PageSizes::from_vtd_sllps(1)).unwrap();
    flush(&p, t.map(&p, Iova(G1), PhysAddr(G1), G1, Perms::RW).unwrap());
    assert_eq!(sizes(&t, G1, G1), [(M2, 512)]);
    flush(&p, t.unmap(&p, Iova(G1), G1).unwrap());
    teardown(&p, t);
    // SLLPS = 0b10 (1 GiB without 2 MiB) cannot be split: 4 KiB only.
    let mut t =
        IoPageTable::new(&p, VtdSecondStage::new(), 4, PageSizes::from_vtd_sllps(2)).unwrap();
    assert_eq!(t.leaf_sizes(), PageSizes::SIZE_4K);
    flush(&p, t.map(&p, Iova(0), PhysAddr(0), 2 * M2, Perms::RW).unwrap());
    assert_eq!(sizes(&t, 0, 2 * M2), [(K4, 1024)]);
    flush(&p, t.unmap(&p, Iova(0), 2 * M2).unwrap());
    teardown(&p, t);
}

// ---- Splits ------------------------------------------------------------------------------------

fn split_2m<F: PageTableFormat>(f: F, levels: u8) {
    let p = HostPlatform::default();
    let mut t = table(&p, f, levels);
    let (iova, phys) = (0x60_0000, 0x1234_0000_0000 & !(M2 - 1));
    flush(&p, t.map(&p, Iova(iova), PhysAddr(phys), M2, Perms::READ).unwrap());
    let hole = iova + 0x5000;
    let fl = flush(&p, t.unmap(&p, Iova(hole), K4).unwrap());
    // The whole large page is invalidated, paging-structure caches included.
    assert_eq!(fl.ranges, [range(iova, M2, false)]);
    assert_eq!(fl.freed, 0);
    // A new table (512 entries written), its parent entry, the cleared leaf.
    assert_eq!(
        t.last_op(),
        PageTableStats { tables_allocated: 1, tables_freed: 0, entries_written: 514, splits: 1 }
    );
    for i in 0..512 {
        let a = iova + i * K4;
        let want = (a != hole).then_some((PhysAddr(phys + i * K4), Perms::READ, K4));
        assert_eq!(t.translate(Iova(a)), want, "page {i}");
    }
    flush(&p, t.unmap(&p, Iova(iova), M2).unwrap());
    assert_eq!(t.live_tables(), 1);
    teardown(&p, t);
}

#[test]
fn unmapping_4k_inside_2m_splits() {
    for_all_configs!(split_2m);
}

fn split_1g<F: PageTableFormat>(f: F, levels: u8) {
    let p = HostPlatform::default();
    let mut t = table(&p, f, levels);
    let (iova, phys) = (2 * G1, 9 * G1);
    flush(&p, t.map(&p, Iova(iova), PhysAddr(phys), G1, Perms::RW).unwrap());
    let hole = iova + 37 * M2 + 0x3000;
    let fl = flush(&p, t.unmap(&p, Iova(hole), K4).unwrap());
    assert_eq!(fl.ranges, [range(iova, G1, false)]);
    // 1 GiB -> 512 x 2 MiB, then the hole's 2 MiB -> 512 x 4 KiB.
    assert_eq!(
        t.last_op(),
        PageTableStats { tables_allocated: 2, tables_freed: 0, entries_written: 1027, splits: 2 }
    );
    for i in 0..512 {
        let a = iova + i * M2;
        if i == 37 {
            continue;
        }
        assert_eq!(
            t.translate(Iova(a + 0x1000)),
            Some((PhysAddr(phys + i * M2 + 0x1000), Perms::RW, M2))
        );
    }
    for i in 0..512 {
        let a = iova + 37 * M2 + i * K4;
        let want = (a != hole).then_some((PhysAddr(phys + 37 * M2 + i * K4), Perms::RW, K4));
        assert_eq!(t.translate(Iova(a)), want, "page {i}");
    }
    // Unmapping the rest frees the two split tables (and the ones above when levels allow).
    let fl = flush(&p, t.unmap(&p, Iova(iova), G1).unwrap());
    assert_eq!(fl.freed as u64, t.stats().tables_allocated - 1);
    assert_eq!(t.live_tables(), 1);
    teardown(&p, t);
}

#[test]
fn unmapping_4k_inside_1g_splits() {
    for_all_configs!(split_1g);
}

#[test]
fn unmap_straddling_two_large_pages_widens_to_both() {
    let p = HostPlatform::default();
    let mut t = table(&p, VtdSecondStage::new(), 4);
    flush(&p, t.map(&p, Iova(0), PhysAddr(0), 2 * M2, Perms::RW).unwrap());
    let fl = flush(&p, t.unmap(&p, Iova(M2 - K4), 2 * K4).unwrap());
    assert_eq!(fl.ranges, [range(0, 2 * M2, false)]);
    assert_eq!(t.stats().splits, 2);
    assert_eq!(t.translate(Iova(M2 - 2 * K4)).map(|x| x.0), Some(PhysAddr(M2 - 2 * K4)));
    assert_eq!(t.translate(Iova(M2 + K4)).map(|x| x.0), Some(PhysAddr(M2 + K4)));
    assert_eq!(t.translate(Iova(M2)), None);
    flush(&p, t.unmap(&p, Iova(0), 2 * M2).unwrap());
    teardown(&p, t);
}

// ---- Freeing, refusing, errors --------------------------------------------------------------------

fn unmap_all_frees<F: PageTableFormat>(f: F, levels: u8) {
    let p = HostPlatform::default();
    let mut t = table(&p, f, levels);
    let maps = [
        (0x1000, 0x10_0000, 3 * K4),
        (0x20_0000, 0x40_0000, M2),
        (G1, 2 * G1, G1),
        (0x7f_c000_0000, K4, 5 * K4),
    ];
    for (i, ph, l) in maps {
        flush(&p, t.map(&p, Iova(i), PhysAddr(ph), l, Perms::RW).unwrap());
    }
    let allocated = t.stats().tables_allocated;
    assert_eq!(t.live_tables() as u64, allocated);
    // Unmap piecewise, page by page for the small ones: the last unmap in a table frees it.
    let mut freed = 0;
    for (i, _, l) in maps {
        let mut a = i;
        while a < i + l {
            let step = if l >= M2 { l } else { K4 };
            freed += flush(&p, t.unmap(&p, Iova(a), step).unwrap()).freed;
            a += step;
        }
    }
    assert_eq!(t.live_tables(), 1);
    assert_eq!(freed as u64, allocated - 1);
    assert_eq!(t.stats().tables_freed, allocated - 1);
    assert_eq!(p.live_runs(), 1);
    teardown(&p, t);
}

#[test]
fn unmapping_everything_frees_every_table_but_the_root() {
    for_all_configs!(unmap_all_frees);
}

fn double_map<F: PageTableFormat>(f: F, levels: u8) {
    let p = HostPlatform::default();
    let mut t = table(&p, f, levels);
    flush(&p, t.map(&p, Iova(0x40_3000), PhysAddr(0x9000), K4, Perms::RW).unwrap());
    let before = t.stats();
    // Overlapping at the end of a 2 MiB map.
    assert_eq!(
        t.map(&p, Iova(0x20_0000), PhysAddr(0), 2 * M2, Perms::RW).unwrap_err(),
        Error::AlreadyMapped { iova: 0x40_3000 }
    );
    assert_eq!(
        t.map(&p, Iova(0x40_3000), PhysAddr(0x9000), K4, Perms::RW).unwrap_err(),
        Error::AlreadyMapped { iova: 0x40_3000 }
    );
    // Nothing changed, nothing deferred.
    assert_eq!(t.stats(), before);
    assert!(t.take_deferred().is_empty());
    // A large page is refused too.
    flush(&p, t.map(&p, Iova(G1), PhysAddr(G1), G1, Perms::RW).unwrap());
    assert_eq!(
        t.map(&p, Iova(G1 + M2), PhysAddr(0), K4, Perms::RW).unwrap_err(),
        Error::AlreadyMapped { iova: G1 + M2 }
    );
    flush(&p, t.unmap(&p, Iova(0), 2 * G1).unwrap());
    assert_eq!(t.live_tables(), 1);
    teardown(&p, t);
}

#[test]
fn double_map_is_refused() {
    for_all_configs!(double_map);
}

#[test]
fn hostile_inputs_are_typed_errors() {
    let p = HostPlatform::default();
    let mut t = table(&p, VtdSecondStage::new(), 3);
    t.set_phys_bits(39);
    let rw = Perms::RW;
    let e = |r: Result<PendingInvalidation>| r.unwrap_err();
    assert_eq!(
        e(t.map(&p, Iova(0), PhysAddr(0), 0, rw)),
        Error::InvalidField { what: "mapping length", value: 0 }
    );
    assert_eq!(
        e(t.map(&p, Iova(0x10), PhysAddr(0), K4, rw)),
        Error::Misaligned { what: "IOVA", value: 0x10, align: K4 }
    );
    assert_eq!(
        e(t.map(&p, Iova(0), PhysAddr(0x10), K4, rw)),
        Error::Misaligned { what: "physical address", value: 0x10, align: K4 }
    );
    assert_eq!(
        e(t.map(&p, Iova(0), PhysAddr(0), 0x1800, rw)),
        Error::Misaligned { what: "mapping length", value: 0x1800, align: K4 }
    );
    // Past the 39-bit IOVA space of 3 levels, and wrapping.
    assert_eq!(
        e(t.map(&p, Iova(1 << 39), PhysAddr(0), K4, rw)),
        Error::AddressOverflow { base: 1 << 39, size: K4 }
    );
    assert_eq!(
        e(t.map(&p, Iova((1 << 39) - K4), PhysAddr(0), 2 * K4, rw)),
        Error::AddressOverflow { base: (1 << 39) - K4, size: 2 * K4 }
    );
    assert_eq!(
        e(t.map(&p, Iova(u64::MAX - 0xfff), PhysAddr(0), 2 * K4, rw)),
        Error::AddressOverflow { base: u64::MAX - 0xfff, size: 2 * K4 }
    );
    assert_eq!(
        e(t.map(&p, Iova(0), PhysAddr(u64::MAX - 0xfff), 2 * K4, rw)),
        Error::AddressOverflow { base: u64::MAX - 0xfff, size: 2 * K4 }
    );
    // Past the host address width.
    assert_eq!(
        e(t.map(&p, Iova(0), PhysAddr((1 << 39) - K4), 2 * K4, rw)),
        Error::InvalidField {
            what: "physical address past the host address width",
            value: (1 << 39) + K4 - 1
        }
    );
    assert!(matches!(
        e(t.map(&p, Iova(0), PhysAddr(0), K4, Perms::NONE)),
        Error::InvalidField { .. }
    ));
    // Execute without the capability, execute-only.
    assert!(matches!(
        e(t.map(&p, Iova(0), PhysAddr(0), K4, Perms::READ.union(Perms::EXECUTE))),
        Error::InvalidField { .. }
    ));
    assert!(matches!(e(t.unmap(&p, Iova(0x10), K4)), Error::Misaligned { .. }));
    assert!(matches!(e(t.unmap(&p, Iova(0), 0)), Error::InvalidField { .. }));
    assert!(matches!(e(t.unmap(&p, Iova(1 << 39), K4)), Error::AddressOverflow { .. }));
    assert_eq!(t.translate(Iova(1 << 39)), None);
    assert_eq!(t.translate(Iova(u64::MAX)), None);
    // Levels the format does not have.
    assert!(IoPageTable::new(&p, VtdSecondStage::new(), 2, PageSizes::ALL).is_err());
    assert!(IoPageTable::new(&p, VtdSecondStage::new(), 6, PageSizes::ALL).is_err());
    assert!(IoPageTable::new(&p, X86FirstStage::new(), 3, PageSizes::ALL).is_err());
    assert_eq!(t.stats().entries_written, 0);
    teardown(&p, t);
}

#[test]
fn first_stage_needs_canonical_iovas_and_readable_pages() {
    let p = HostPlatform::default();
    let mut t = table(&p, X86FirstStage::new(), 4);
    let e = |r: Result<PendingInvalidation>| r.unwrap_err();
    // Bit 47 set without bits 63:48: non-canonical.
    assert_eq!(
        e(t.map(&p, Iova(1 << 47), PhysAddr(0), K4, Perms::RW)),
        Error::InvalidField { what: "IOVA (non-canonical)", value: 1 << 47 }
    );
    // Across the canonical hole.
    assert!(matches!(
        e(t.map(&p, Iova((1 << 47) - K4), PhysAddr(0), 2 * K4, Perms::RW)),
        Error::InvalidField { .. }
    ));
    // Write-only cannot be expressed.
    assert!(matches!(
        e(t.map(&p, Iova(0), PhysAddr(0), K4, Perms::WRITE)),
        Error::InvalidField { .. }
    ));
    // The upper half works, up to the last page (whose end is 2^64).
    let top = u64::MAX - 0xfff;
    flush(&p, t.map(&p, Iova(top), PhysAddr(0x5000), K4, Perms::READ).unwrap());
    flush(&p, t.map(&p, Iova(0xffff_8000_0000_0000), PhysAddr(G1), G1, Perms::RW).unwrap());
    assert_eq!(t.translate(Iova(top + 8)), Some((PhysAddr(0x5008), Perms::READ, K4)));
    assert_eq!(
        t.translate(Iova(0xffff_8000_0000_1000)),
        Some((PhysAddr(G1 + 0x1000), Perms::RW, G1))
    );
    assert_eq!(t.translate(Iova(0x0000_8000_0000_1000)), None);
    // The two halves use different root entries.
    assert_eq!(t.translate(Iova(0x1000)), None);
    flush(&p, t.unmap(&p, Iova(0xffff_8000_0000_0000), 1 << 47).unwrap());
    assert_eq!(t.live_tables(), 1);
    teardown(&p, t);
}

#[test]
fn out_of_memory_midway_rolls_back_and_defers_the_invalidation() {
    let p = HostPlatform::default();
    let mut t = table(&p, VtdSecondStage::new(), 4);
    // 4 MiB at 4 KiB granularity needs a level-3, a level-2 and two level-1 tables: allow three.
    p.budget.set(Some(3));
    let err = t.map(&p, Iova(0), PhysAddr(K4), 2 * M2, Perms::RW).unwrap_err();
    assert_eq!(err, Error::OutOfMemory { pages: 1 });
    assert_eq!(t.last_op().tables_allocated, 3);
    for a in (0..2 * M2).step_by(K4 as usize) {
        assert_eq!(t.translate(Iova(a)), None);
    }
    // The first 2 MiB were mapped then cleared: that is owed, and the emptied tables with it.
    let fl = flush(&p, t.take_deferred());
    assert_eq!(fl.ranges, [range(0, M2, false)]);
    assert_eq!(fl.freed, 3);
    assert_eq!(t.live_tables(), 1);
    // A split that cannot allocate leaves the large page whole and owes nothing.
    p.budget.set(None);
    flush(&p, t.map(&p, Iova(G1), PhysAddr(G1), M2, Perms::RW).unwrap());
    p.budget.set(Some(0));
    assert!(matches!(t.unmap(&p, Iova(G1), K4), Err(Error::OutOfMemory { .. })));
    assert_eq!(t.translate(Iova(G1)).map(|x| x.2), Some(M2));
    assert!(t.take_deferred().is_empty());
    p.budget.set(None);
    flush(&p, t.unmap(&p, Iova(G1), M2).unwrap());
    teardown(&p, t);
}

#[test]
fn a_full_pending_value_keeps_empty_tables_for_a_later_unmap() {
    let p = HostPlatform::default();
    let mut t = table(&p, VtdSecondStage::new(), 4);
    // 40 pages, each in its own 2 MiB region: 40 level-1 tables under one level-2 table.
    for i in 0..40 {
        flush(&p, t.map(&p, Iova(i * M2), PhysAddr(i * K4), K4, Perms::RW).unwrap());
    }
    assert_eq!(t.live_tables(), 43);
    let fl = flush(&p, t.unmap(&p, Iova(0), 40 * M2).unwrap());
    assert_eq!((fl.freed, fl.leaked), (MAX_FREED, 0));
    assert_eq!(fl.ranges, [range(0, 40 * M2, false)]);
    for i in 0..40 {
        assert_eq!(t.translate(Iova(i * M2)), None);
    }
    // An unmap over the range prunes what is left (nothing to invalidate but the tables).
    let fl = flush(&p, t.unmap(&p, Iova(0), G1).unwrap());
    assert_eq!(fl.freed, 43 - 1 - MAX_FREED);
    assert_eq!(t.live_tables(), 1);
    // A kept empty table is reused by a map.
    for i in 0..40 {
        flush(&p, t.map(&p, Iova(i * M2), PhysAddr(i * K4), K4, Perms::RW).unwrap());
    }
    flush(&p, t.unmap(&p, Iova(0), 40 * M2).unwrap());
    flush(&p, t.map(&p, Iova(39 * M2), PhysAddr(0), K4, Perms::READ).unwrap());
    assert_eq!(t.last_op().tables_allocated, 0);
    teardown(&p, t);
}

#[test]
fn destroy_hands_back_every_page() {
    let p = HostPlatform::default();
    let mut t = table(&p, X86FirstStage::new(), 5);
    flush(&p, t.map(&p, Iova(0), PhysAddr(0), 3 * M2 + 5 * K4, Perms::RW).unwrap());
    flush(&p, t.map(&p, Iova(1 << 50), PhysAddr(G1), G1, Perms::READ).unwrap());
    let live = t.live_tables();
    // Root; levels 4, 3, 2 and one level-1 table (the 20 KiB tail) below entry 0; levels 4 and
    // 3 below entry 4 (bit 50), where the 1 GiB leaf sits.
    assert_eq!(live, 1 + 4 + 2);
    teardown(&p, t);
}

#[test]
fn non_coherent_tables_sync_every_change() {
    let p = HostPlatform::default();
    let mut t = IoPageTable::new(&p, VtdSecondStage::new(), 3, PageSizes::ALL).unwrap();
    // The root's zeroes.
    assert_eq!(p.syncs.get(), 1);
    flush(&p, t.map(&p, Iova(0), PhysAddr(0), 2 * K4, Perms::RW).unwrap());
    // Two new tables (their zeroes), then one span per changed table: the two leaves, and
    // one parent entry in each of the two tables above.
    assert_eq!(p.syncs.get(), 6);
    // 256 leaves in a new table: its zeroes, its leaves, its parent entry.
    flush(&p, t.map(&p, Iova(M2), PhysAddr(0), 256 * K4, Perms::RW).unwrap());
    assert_eq!(p.syncs.get(), 9);
    t.set_coherent(true);
    flush(&p, t.unmap(&p, Iova(0), 2 * K4).unwrap());
    flush(&p, t.unmap(&p, Iova(M2), 256 * K4).unwrap());
    assert_eq!(p.syncs.get(), 9);
    teardown(&p, t);
}

#[test]
fn pending_values_carry_the_domain() {
    let p = HostPlatform::default();
    let mut t = table(&p, VtdSecondStage::new(), 3);
    t.set_domain(42);
    let pend = t.map(&p, Iova(0), PhysAddr(0), K4, Perms::RW).unwrap();
    assert_eq!(pend.domain, 42);
    flush(&p, pend);
    let pend = t.unmap(&p, Iova(0), K4).unwrap();
    assert_eq!(pend.domain, 42);
    flush(&p, pend);
    let pend = t.destroy(&p);
    assert_eq!(pend.domain, 42);
    flush(&p, pend);
}

/// A VMSAv8-64 stage-2-like format (valid bit 0, table/page bit 1, S2AP bits 7:6, AF bit 10),
/// enough to show a format with level-dependent leaf encodings and without in-place splits
/// runs on the unchanged engine.
#[derive(Clone, Copy)]
struct ArmLikeStage2;

impl PageTableFormat for ArmLikeStage2 {
    const NAME: &'static str = "test VMSAv8-64 stage 2";
    const MIN_LEVELS: u8 = 2;
    const MAX_LEVELS: u8 = 4;
    const CANONICAL: bool = false;
    const LEAF_SIZES: PageSizes = PageSizes::ALL;
    const SPLIT_IN_PLACE: bool = false;

    fn check_perms(&self, perms: Perms) -> Result<()> {
        if perms.contains(Perms::EXECUTE) {
            return Err(Error::InvalidField { what: "test", value: 4 });
        }
        Ok(())
    }
    fn table(&self, table: PhysAddr, _level: u8) -> u64 {
        table.0 | 0b11
    }
    fn leaf(&self, phys: PhysAddr, perms: Perms, level: u8) -> u64 {
        let kind = if level == 1 { 0b11 } else { 0b01 };
        let r = if perms.contains(Perms::READ) { 1 << 6 } else { 0 };
        let w = if perms.contains(Perms::WRITE) { 1 << 7 } else { 0 };
        phys.0 | kind | r | w | 1 << 10
    }
    fn decode(&self, entry: u64, level: u8) -> Pte {
        let phys = PhysAddr(entry & ADDR_MASK);
        let mut perms = Perms::NONE;
        if entry & 1 << 6 != 0 {
            perms = perms.union(Perms::READ);
        }
        if entry & 1 << 7 != 0 {
            perms = perms.union(Perms::WRITE);
        }
        match (entry & 0b11, level) {
            (0b11, 1) | (0b01, 2..) => Pte::Leaf { phys, perms },
            (0b11, _) => Pte::Table(phys),
            _ => Pte::Absent,
        }
    }
}

#[test]
fn another_format_runs_on_the_same_engine() {
    let p = HostPlatform::default();
    let mut t = table(&p, ArmLikeStage2, 3);
    flush(&p, t.map(&p, Iova(M2), PhysAddr(3 * M2), M2 + K4, Perms::WRITE).unwrap());
    assert_eq!(t.translate(Iova(M2 + 8)), Some((PhysAddr(3 * M2 + 8), Perms::WRITE, M2)));
    assert_eq!(t.translate(Iova(2 * M2)), Some((PhysAddr(4 * M2), Perms::WRITE, K4)));
    assert_eq!(*t.raw_path(2 * M2).last().unwrap(), (4 * M2) | 0b11 | 1 << 7 | 1 << 10);
    // No in-place split: a partial unmap of the block is refused and changes nothing.
    let before = t.stats();
    assert!(matches!(t.unmap(&p, Iova(M2), K4), Err(Error::InvalidField { .. })));
    assert_eq!(t.stats(), before);
    assert!(t.take_deferred().is_empty());
    flush(&p, t.unmap(&p, Iova(M2), M2 + K4).unwrap());
    assert_eq!(t.live_tables(), 1);
    teardown(&p, t);
}

// ---- Independent encoding check ------------------------------------------------------------------

// Written from the VT-d specification (§9.7, §9.8) and Linux (`drivers/iommu/intel/iommu.h`,
// `arch/x86/include/asm/pgtable_types.h`), not from the driver's constants.
const DMA_PTE_READ: u64 = 1;
const DMA_PTE_WRITE: u64 = 2;
const DMA_PTE_LARGE_PAGE: u64 = 1 << 7;
const DMA_PTE_SNP: u64 = 1 << 11;
const PAGE_PRESENT: u64 = 0x001;
const PAGE_RW: u64 = 0x002;
const PAGE_USER: u64 = 0x004;
const PAGE_ACCESSED: u64 = 0x020;
const PAGE_DIRTY: u64 = 0x040;
const PAGE_PSE: u64 = 0x080;
const PAGE_NX: u64 = 1 << 63;

#[test]
fn second_stage_entries_match_the_specification() {
    let p = HostPlatform::default();
    let mut t = table(&p, VtdSecondStage::new(), 4);
    flush(&p, t.map(&p, Iova(0x1000), PhysAddr(0xabc_d000), K4, Perms::RW).unwrap());
    flush(&p, t.map(&p, Iova(0x2000), PhysAddr(0xabc_e000), K4, Perms::READ).unwrap());
    flush(&p, t.map(&p, Iova(0x40_0000), PhysAddr(0x1_0040_0000), M2, Perms::READ).unwrap());
    flush(&p, t.map(&p, Iova(G1), PhysAddr(4 * G1), G1, Perms::RW).unwrap());
    let path = t.raw_path(0x1000);
    assert_eq!(path.len(), 4);
    for table_entry in &path[..3] {
        // Non-leaf: R and W, nothing else but the address.
        assert_eq!(table_entry & 0xfff, DMA_PTE_READ | DMA_PTE_WRITE);
        assert_eq!(table_entry >> 52, 0);
    }
    assert_eq!(path[3], 0xabc_d000 | DMA_PTE_READ | DMA_PTE_WRITE);
    assert_eq!(*t.raw_path(0x2000).last().unwrap(), 0xabc_e000 | DMA_PTE_READ, "read-only: W = 0");
    assert_eq!(
        *t.raw_path(0x40_0000).last().unwrap(),
        0x1_0040_0000 | DMA_PTE_READ | DMA_PTE_LARGE_PAGE
    );
    assert_eq!(
        *t.raw_path(G1).last().unwrap(),
        (4 * G1) | DMA_PTE_READ | DMA_PTE_WRITE | DMA_PTE_LARGE_PAGE
    );
    assert_eq!(t.raw_path(G1).len(), 2);
    flush(&p, t.unmap(&p, Iova(0), 2 * G1).unwrap());
    teardown(&p, t);

    // Snoop and execute when asked for.
    let f = VtdSecondStage { snoop: true, execute: true };
    let mut t = table(&p, f, 3);
    flush(&p, t.map(&p, Iova(0), PhysAddr(0x5000), K4, Perms::READ.union(Perms::EXECUTE)).unwrap());
    assert_eq!(*t.raw_path(0).last().unwrap(), 0x5000 | DMA_PTE_READ | (1 << 2) | DMA_PTE_SNP);
    assert_eq!(t.translate(Iova(0)).unwrap().1, Perms::READ.union(Perms::EXECUTE));
    flush(&p, t.unmap(&p, Iova(0), K4).unwrap());
    teardown(&p, t);
}

#[test]
fn first_stage_entries_match_the_specification() {
    let p = HostPlatform::default();
    let mut t = table(&p, X86FirstStage::new(), 4);
    flush(&p, t.map(&p, Iova(0x1000), PhysAddr(0xabc_d000), K4, Perms::RW).unwrap());
    flush(
        &p,
        t.map(&p, Iova(0x2000), PhysAddr(0xabc_e000), K4, Perms::READ.union(Perms::EXECUTE))
            .unwrap(),
    );
    flush(&p, t.map(&p, Iova(0x40_0000), PhysAddr(0x1_0040_0000), M2, Perms::READ).unwrap());
    flush(&p, t.map(&p, Iova(G1), PhysAddr(4 * G1), G1, Perms::RW).unwrap());
    let path = t.raw_path(0x1000);
    for table_entry in &path[..3] {
        // P, R/W, U/S at every level (QEMU faults without U/S), A set, XD clear.
        assert_eq!(table_entry & 0xfff, PAGE_PRESENT | PAGE_RW | PAGE_USER | PAGE_ACCESSED);
        assert_eq!(table_entry >> 52, 0);
    }
    let user = PAGE_PRESENT | PAGE_USER | PAGE_ACCESSED;
    assert_eq!(path[3], 0xabc_d000 | user | PAGE_RW | PAGE_DIRTY | PAGE_NX);
    assert_eq!(*t.raw_path(0x2000).last().unwrap(), 0xabc_e000 | user);
    assert_eq!(*t.raw_path(0x40_0000).last().unwrap(), 0x1_0040_0000 | user | PAGE_PSE | PAGE_NX);
    assert_eq!(
        *t.raw_path(G1).last().unwrap(),
        (4 * G1) | user | PAGE_RW | PAGE_DIRTY | PAGE_PSE | PAGE_NX
    );
    assert_eq!(t.translate(Iova(0x2000)).unwrap().1, Perms::READ.union(Perms::EXECUTE));
    flush(&p, t.unmap(&p, Iova(0), 2 * G1).unwrap());
    teardown(&p, t);
}

// ---- Counts for the benchmark cases --------------------------------------------------------------

#[test]
fn operation_counts() {
    let p = HostPlatform::default();
    let mut report = Vec::new();
    for levels in [3u8, 4, 5] {
        let mut t = table(&p, VtdSecondStage::new(), levels);
        let mut op = |name: &str,
                      t: &mut IoPageTable<VtdSecondStage>,
                      pend: PendingInvalidation| {
            let fl = flush(&p, pend);
            report.push(format!("L{levels} {name}: {:?} ranges {}", t.last_op(), fl.ranges.len()));
        };
        let r = t.map(&p, Iova(G1), PhysAddr(G1), K4, Perms::RW).unwrap();
        op("map 4K", &mut t, r);
        let r = t.unmap(&p, Iova(G1), K4).unwrap();
        op("unmap 4K", &mut t, r);
        let r = t.map(&p, Iova(G1), PhysAddr(G1), 256 * K4, Perms::RW).unwrap();
        op("map 256x4K", &mut t, r);
        let r = t.unmap(&p, Iova(G1), 256 * K4).unwrap();
        op("unmap 256x4K", &mut t, r);
        let r = t.map(&p, Iova(G1), PhysAddr(G1), M2, Perms::RW).unwrap();
        op("map 2M", &mut t, r);
        let r = t.unmap(&p, Iova(G1 + K4), K4).unwrap();
        op("split 2M", &mut t, r);
        let r = t.unmap(&p, Iova(G1), M2).unwrap();
        op("unmap rest of 2M", &mut t, r);
        let r = t.map(&p, Iova(G1), PhysAddr(G1), G1, Perms::RW).unwrap();
        op("map 1G", &mut t, r);
        let r = t.unmap(&p, Iova(G1 + K4), K4).unwrap();
        op("split 1G", &mut t, r);
        let r = t.unmap(&p, Iova(G1), G1).unwrap();
        op("unmap rest of 1G", &mut t, r);
        assert_eq!(t.live_tables(), 1);
        teardown(&p, t);
    }
    for line in &report {
        std::println!("{line}");
    }
}

// ---- Property test against a reference model -----------------------------------------------------

mod model {
    use super::*;
    use proptest::prelude::*;

    /// A window of 32 MiB at 1 GiB - 16 MiB, so ranges cross a 1 GiB line.
    const BASE: u64 = G1 - 16 * M2 / 2;
    const PAGES: u64 = 8192;

    #[derive(Clone, Debug)]
    enum Op {
        /// Map pages [first, first + count) to phys page `phys_page + i`.
        Map {
            first: u64,
            count: u64,
            phys_page: u64,
            write: bool,
        },
        Unmap {
            first: u64,
            count: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        // Starts and lengths at 4 KiB and 2 MiB granularity, so large pages and splits happen.
        let start = prop_oneof![0..PAGES, (0..PAGES / 512).prop_map(|i| i * 512)];
        let count = prop_oneof![1..64u64, (1..4u64).prop_map(|n| n * 512), 1..1100u64];
        let phys = prop_oneof![(0..1u64 << 20), (0..1u64 << 11).prop_map(|i| i * 512)];
        prop_oneof![
            (start.clone(), count.clone(), phys, any::<bool>()).prop_map(
                |(first, count, phys_page, write)| Op::Map { first, count, phys_page, write }
            ),
            (start, count).prop_map(|(first, count)| Op::Unmap { first, count }),
        ]
    }

    /// An op, and sometimes an allocation budget after which the platform runs out of memory.
    fn step() -> impl Strategy<Value = (Op, Option<usize>)> {
        (op(), prop_oneof![8 => Just(None), 1 => (0..3usize).prop_map(Some)])
    }

    fn run<F: PageTableFormat + Copy>(
        f: F,
        levels: u8,
        ops: &[(Op, Option<usize>)],
    ) -> Result<(), TestCaseError> {
        let p = HostPlatform::default();
        let mut t = table(&p, f, levels);
        let mut model: BTreeMap<u64, (u64, Perms)> = BTreeMap::new();
        for (op, budget) in ops {
            p.budget.set(*budget);
            match *op {
                Op::Map { first, count, phys_page, write } => {
                    let count = count.min(PAGES - first);
                    let perms = if write { Perms::RW } else { Perms::READ };
                    let iova = BASE + first * K4;
                    let r = t.map(&p, Iova(iova), PhysAddr(phys_page * K4), count * K4, perms);
                    let taken: BTreeSet<u64> =
                        model.range(first..first + count).map(|(k, _)| *k).collect();
                    match r {
                        Ok(pend) => {
                            prop_assert!(taken.is_empty());
                            let fl = flush(&p, pend);
                            prop_assert_eq!(fl.ranges, vec![range(iova, count * K4, true)]);
                            for i in 0..count {
                                model.insert(first + i, ((phys_page + i) * K4, perms));
                            }
                        }
                        Err(Error::AlreadyMapped { iova: at }) => {
                            prop_assert_eq!(Some(&((at - BASE) / K4)), taken.iter().next());
                        }
                        Err(Error::OutOfMemory { .. }) => {
                            // Rolled back: the model is unchanged; what it owes is deferred.
                            prop_assert!(budget.is_some());
                            prop_assert_eq!(flush(&p, t.take_deferred()).leaked, 0);
                        }
                        Err(e) => prop_assert!(false, "map failed: {e}"),
                    }
                }
                Op::Unmap { first, count } => {
                    let count = count.min(PAGES - first);
                    let iova = BASE + first * K4;
                    let fl = match t.unmap(&p, Iova(iova), count * K4) {
                        Ok(pend) => flush(&p, pend),
                        Err(Error::OutOfMemory { .. }) => {
                            // A split could not allocate: the pages before it are unmapped,
                            // the rest unchanged.
                            prop_assert!(budget.is_some());
                            prop_assert_eq!(flush(&p, t.take_deferred()).leaked, 0);
                            for i in first..first + count {
                                let got = t
                                    .translate(Iova(BASE + i * K4))
                                    .map(|(ph, perms, _)| (ph.0, perms));
                                prop_assert!(got.is_none() || got == model.get(&i).copied());
                                if got.is_none() {
                                    model.remove(&i);
                                }
                            }
                            p.budget.set(None);
                            continue;
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("unmap failed: {e}"))),
                    };
                    prop_assert_eq!(fl.leaked, 0);
                    let had = model.range(first..first + count).next().is_some();
                    prop_assert!(
                        !had || fl
                            .ranges
                            .iter()
                            .any(|r| r.start <= iova && r.start + r.len >= iova + count * K4)
                    );
                    for i in first..first + count {
                        model.remove(&i);
                    }
                }
            }
            p.budget.set(None);
            for page in 0..PAGES {
                let got = t.translate(Iova(BASE + page * K4)).map(|(ph, perms, _)| (ph.0, perms));
                prop_assert_eq!(got, model.get(&page).copied(), "page {}", page);
            }
        }
        // Unmap everything: only the root remains.
        flush(&p, t.unmap(&p, Iova(BASE), PAGES * K4).unwrap());
        while t.live_tables() > 1 {
            // Only when one unmap emptied more tables than a pending value holds.
            let fl = flush(&p, t.unmap(&p, Iova(BASE), PAGES * K4).unwrap());
            prop_assert!(fl.freed > 0);
        }
        prop_assert_eq!(t.stats().tables_freed + 1, t.stats().tables_allocated);
        prop_assert_eq!(t.live_tables(), 1);
        prop_assert_eq!(p.live_runs(), 1);
        teardown(&p, t);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn second_stage_agrees_with_the_model(levels in 3u8..=5, ops in proptest::collection::vec(step(), 1..24)) {
            run(VtdSecondStage::new(), levels, &ops)?;
        }

        #[test]
        fn first_stage_agrees_with_the_model(levels in 4u8..=5, ops in proptest::collection::vec(step(), 1..24)) {
            run(X86FirstStage::new(), levels, &ops)?;
        }
    }
}

#[test]
fn arm_split_needs_bbml_2() {
    // SMMU_IDR3.BBML < 2: replacing a block by a table needs break-before-make, so a partial
    // unmap of a block is refused and changes nothing.
    let p = HostPlatform::default();
    let mut t = table(&p, Arm64Stage1::new(1), 4);
    flush(&p, t.map(&p, Iova(M2), PhysAddr(4 * M2), M2, Perms::RW).unwrap());
    let err = t.unmap(&p, Iova(M2 + K4), K4).unwrap_err();
    assert!(matches!(err, Error::InvalidField { value, .. } if value == M2 + K4), "{err:?}");
    assert_eq!(t.translate(Iova(M2 + K4)), Some((PhysAddr(4 * M2 + K4), Perms::RW, M2)));
    flush(&p, t.take_deferred());
    // The whole block can still go.
    flush(&p, t.unmap(&p, Iova(M2), M2).unwrap());
    assert_eq!(t.translate(Iova(M2)), None);
    teardown(&p, t);
    // With BBML 2 the same unmap splits.
    let mut t = table(&p, Arm64Stage2::new(2), 4);
    flush(&p, t.map(&p, Iova(M2), PhysAddr(4 * M2), M2, Perms::RW).unwrap());
    flush(&p, t.unmap(&p, Iova(M2 + K4), K4).unwrap());
    assert_eq!(t.translate(Iova(M2 + 2 * K4)), Some((PhysAddr(4 * M2 + 2 * K4), Perms::RW, K4)));
    teardown(&p, t);
}

// ---- Freed tables held through the pages themselves --------------------------------------------

/// The link words a held table page carries until its flush read as not-present entries in
/// every format at every level (a stale walk-cache walk finds nothing, as with the zeroes the
/// emptied table held), and are zero again when the page goes back to the platform.
fn freed_links_are_not_present<F: PageTableFormat>(f: F, levels: u8) {
    let p = HostPlatform::default();
    let mut t = table(&p, f, levels);
    // Two regions in different top-level entries: two chains of tables, all emptied.
    let top = level_size(levels);
    for iova in [0x20_0000, top + 0x20_0000] {
        let pend = t.map(&p, Iova(iova), PhysAddr(0x4000_0000), K4, Perms::RW).unwrap();
        flush(&p, pend);
    }
    let mut pend = t.unmap(&p, Iova(0), 2 * top).unwrap();
    let held: Vec<FreedPage> = pend.freed.iter().collect();
    assert_eq!(held.len(), 2 * (levels as usize - 1));
    assert_eq!(held.len(), pend.freed.len());
    let formats: [&dyn Fn(u64, u8) -> Pte; 4] = [
        &|w, l| VtdSecondStage::new().decode(w, l),
        &|w, l| X86FirstStage::new().decode(w, l),
        &|w, l| Arm64Stage1::new(2).decode(w, l),
        &|w, l| Arm64Stage2::new(2).decode(w, l),
    ];
    let mut links = 0;
    for page in &held {
        // Host platform: phys = virt. Read the whole table as the hardware would.
        let words = page.phys().0 as *const u64;
        for i in 0..ENTRIES {
            // SAFETY: a held table page (4 KiB, still allocated), read-only here.
            let w = unsafe { words.add(i).read_volatile() };
            links += usize::from(w != 0);
            for decode in &formats {
                for level in 1..=5 {
                    assert_eq!(decode(w, level), Pte::Absent, "word {i} = {w:#x} at level {level}");
                }
            }
        }
    }
    // Every page but the first held links to the one held before it (virtual, physical and
    // count words, none zero on the host); the rest of every page is zero.
    assert_eq!(links, 3 * (held.len() - 1));
    // Popped pages are whole again (all zero) before they go back.
    let mut popped = 0;
    while let Some(page) = pend.freed.pop() {
        let words = page.virt().as_ptr().cast::<u64>();
        // SAFETY: as above; the page is now ours alone.
        assert!((0..ENTRIES).all(|i| unsafe { words.add(i).read_volatile() } == 0));
        assert_eq!(page.phys(), held[popped].phys());
        assert_eq!(page.count(), held[popped].count());
        popped += 1;
        // SAFETY: unlinked by the unmap, nothing walks it (host test).
        unsafe { p.free_dma_pages(page) };
    }
    assert_eq!(popped, held.len());
    pend.ranges.clear();
    teardown(&p, t);
}

#[test]
fn freed_table_links_are_not_present_entries_in_every_format() {
    for_all_configs!(freed_links_are_not_present);
}

#[test]
fn pending_invalidation_stays_small() {
    // It is returned by value from every map and unmap: the freed pages are chained through
    // the pages, not held inline (992 bytes before).
    assert!(size_of::<PendingInvalidation>() <= 256, "{}", size_of::<PendingInvalidation>());
}
