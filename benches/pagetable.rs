//! I/O page-table map and unmap: the library's `IoPageTable<X86FirstStage>` side by side with
//! the `x86_64` crate's `OffsetPageTable` doing the same work over the same kind of memory.
//!
//! What each side includes (per operation):
//! - **ours**: `IoPageTable::map` / `unmap` (range checks, the walk, 64-bit atomic entry
//!   stores, the `PendingInvalidation` it returns), then `PendingInvalidation::complete` on the
//!   pool platform, which releases emptied table pages and issues no hardware invalidation.
//!   The table is coherent (`set_coherent(true)`): no `sync_for_device` per entry.
//! - **x86_64**: `Mapper::map_to` / `Mapper::unmap` with the `MapperFlush` dropped through
//!   `.ignore()` (its flush is a CPU `invlpg`, meaningless for an I/O table on the host). The
//!   256-page case is 256 `map_to` calls (the crate has no range map). In the cold case, the
//!   unmap is followed by `CleanUp::clean_up_addr_range` over the same range, which frees the
//!   emptied tables as the library's unmap does.
//! - Both: 4 levels, a pool of preallocated host pages with LIFO free lists; new tables are
//!   zeroed once (by the platform for ours, 8 KiB for tables at level >= 2 which carry a
//!   shadow page; by the mapper for x86_64, 4 KiB).
//!
//! Cases: **warm** (every table already exists: a 4 KiB "sentinel" mapping next to each
//! region keeps them alive, so map and unmap only write leaf entries) and **cold** (each region
//! in its own 512 GiB slot: the map allocates every table below the root, the unmap frees them).
//! Each measured round maps (or unmaps) 64 disjoint regions; the figure is per region.
//!
//! Run: `cargo bench -p pcie-iommu --features sim --bench pagetable`. After criterion, a
//! summary table with the ratios (median of 51 rounds each, measured the same way) is printed.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use pcie_iommu::iommu::pagetable::{IoPageTable, PageSizes, Perms, X86FirstStage};
use pcie_iommu::{Iova, PhysAddr};
use x86_64::VirtAddr;
use x86_64::structures::paging::mapper::CleanUp;
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags as F, PhysFrame, Size1GiB,
    Size2MiB, Size4KiB,
};

use common::{CountingAllocator, PoolFrames, PoolPlatform};

/// Counts heap use, to show that map and unmap never touch the heap (the library has none; the
/// pool platform hands out preallocated pages).
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

/// Regions per measured round.
const REGIONS: u64 = 64;
const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const SLOT_512G: u64 = 512 * G1;
/// Output addresses of the mappings (never touched; 1 GiB aligned).
const TARGET: u64 = 0x40_0000_0000;

#[derive(Clone, Copy, Debug)]
enum Case {
    Page4K,
    Pages256,
    Page2M,
    Page1G,
}

impl Case {
    const ALL: [Case; 4] = [Case::Page4K, Case::Pages256, Case::Page2M, Case::Page1G];

    fn name(self) -> &'static str {
        match self {
            Case::Page4K => "4KiB",
            Case::Pages256 => "256x4KiB",
            Case::Page2M => "2MiB",
            Case::Page1G => "1GiB",
        }
    }

    fn len(self) -> u64 {
        match self {
            Case::Page4K => K4,
            Case::Pages256 => 256 * K4,
            Case::Page2M => M2,
            Case::Page1G => G1,
        }
    }

    /// IOVA of region `i`, and of its sentinel page in the warm case. Warm regions share the
    /// tables of one 512 GiB slot (slot 1), each next to its own sentinel; cold regions each
    /// get their own 512 GiB slot (2 + i).
    fn region(self, i: u64, warm: bool) -> (u64, u64) {
        let base = if warm { SLOT_512G } else { (2 + i) * SLOT_512G };
        let j = if warm { i } else { 0 };
        let iova = match self {
            // Odd 4 KiB slots of one level-1 table; the sentinel is the even slot before.
            Case::Page4K => base + (2 * j + 1) * K4,
            // One level-1 table each (pages 1..=256); the sentinel is page 0.
            Case::Pages256 => base + j * M2 + K4,
            // Odd 2 MiB slots of one level-2 table; the sentinel in the even slot before.
            Case::Page2M => base + (2 * j + 1) * M2,
            // Odd 1 GiB slots of one level-3 table.
            Case::Page1G => base + (2 * j + 1) * G1,
        };
        (iova, iova - K4)
    }
}

/// One side of the comparison.
trait Side {
    fn map(&mut self, case: Case, iova: u64, phys: u64);
    fn unmap(&mut self, case: Case, iova: u64, cold: bool);
    fn map_sentinel(&mut self, iova: u64);
}

/// Pages in each side's pool: the largest case (cold 4 KiB: 64 regions x 5 table pages, plus
/// the root) needs about 330.
const POOL_PAGES: usize = 1024;

struct Ours {
    platform: PoolPlatform,
    table: IoPageTable<X86FirstStage>,
}

impl Ours {
    fn new() -> Self {
        let platform = PoolPlatform::new(POOL_PAGES);
        let mut table =
            IoPageTable::new(&platform, X86FirstStage::new(), 4, PageSizes::ALL).unwrap();
        table.set_coherent(true);
        Self { platform, table }
    }
}

impl Side for Ours {
    fn map(&mut self, case: Case, iova: u64, phys: u64) {
        let pending = self
            .table
            .map(&self.platform, Iova(iova), PhysAddr(phys), case.len(), Perms::RW)
            .unwrap();
        // SAFETY: no hardware walks this table; completing only releases emptied pages.
        unsafe { pending.complete(&self.platform) };
    }

    fn unmap(&mut self, case: Case, iova: u64, _cold: bool) {
        let pending = self.table.unmap(&self.platform, Iova(iova), case.len()).unwrap();
        // SAFETY: as in `map`.
        unsafe { pending.complete(&self.platform) };
    }

    fn map_sentinel(&mut self, iova: u64) {
        self.map(Case::Page4K, iova, TARGET);
    }
}

struct Theirs {
    table: OffsetPageTable<'static>,
    frames: PoolFrames,
}

impl Theirs {
    fn new() -> Self {
        let frames = PoolFrames::new(POOL_PAGES);
        let root = frames.pool.take(1).unwrap();
        let root_ptr = frames.pool.virt(root).cast::<PageTable>().as_ptr();
        // SAFETY: a zeroed page of the pool (an empty table), used by nothing else; the pool
        // lives in the same value as the table, which never outlives it (`'static` is only what
        // `OffsetPageTable` asks for).
        let root: &'static mut PageTable = unsafe { &mut *root_ptr };
        // SAFETY: every table frame comes from the pool, mapped at `phys + phys_offset`.
        let table = unsafe { OffsetPageTable::new(root, VirtAddr::new(frames.pool.phys_offset())) };
        Self { table, frames }
    }

    fn flags() -> F {
        // What the library's first-stage leaves carry for RW (P, R/W, U/S; it also presets A/D).
        F::PRESENT | F::WRITABLE | F::USER_ACCESSIBLE
    }

    fn map_one<S: PageSize>(&mut self, iova: u64, phys: u64)
    where
        OffsetPageTable<'static>: Mapper<S>,
    {
        let page = Page::<S>::from_start_address(VirtAddr::new(iova)).unwrap();
        let frame = PhysFrame::<S>::from_start_address(x86_64::PhysAddr::new(phys)).unwrap();
        // SAFETY: the page is an I/O address of this table only; nothing on the host uses it.
        let mapped = unsafe { self.table.map_to(page, frame, Self::flags(), &mut self.frames) };
        mapped.map_err(|_| "x86_64 map_to failed").unwrap().ignore();
    }

    fn unmap_one<S: PageSize>(&mut self, iova: u64)
    where
        OffsetPageTable<'static>: Mapper<S>,
    {
        let page = Page::<S>::from_start_address(VirtAddr::new(iova)).unwrap();
        self.table.unmap(page).unwrap().1.ignore();
    }
}

impl Side for Theirs {
    fn map(&mut self, case: Case, iova: u64, phys: u64) {
        match case {
            Case::Page4K => self.map_one::<Size4KiB>(iova, phys),
            Case::Pages256 => {
                for k in 0..256 {
                    self.map_one::<Size4KiB>(iova + k * K4, phys + k * K4);
                }
            }
            Case::Page2M => self.map_one::<Size2MiB>(iova, phys),
            Case::Page1G => self.map_one::<Size1GiB>(iova, phys),
        }
    }

    fn unmap(&mut self, case: Case, iova: u64, cold: bool) {
        match case {
            Case::Page4K => self.unmap_one::<Size4KiB>(iova),
            Case::Pages256 => {
                for k in 0..256 {
                    self.unmap_one::<Size4KiB>(iova + k * K4);
                }
            }
            Case::Page2M => self.unmap_one::<Size2MiB>(iova),
            Case::Page1G => self.unmap_one::<Size1GiB>(iova),
        }
        if cold {
            let first = Page::<Size4KiB>::containing_address(VirtAddr::new(iova));
            let last = Page::<Size4KiB>::containing_address(VirtAddr::new(iova + case.len() - 1));
            // SAFETY: the tables freed are this table's own, no longer referenced.
            unsafe {
                self.table.clean_up_addr_range(Page::range_inclusive(first, last), &mut self.frames)
            };
        }
    }

    fn map_sentinel(&mut self, iova: u64) {
        self.map_one::<Size4KiB>(iova, TARGET);
    }
}

fn prepare(side: &mut impl Side, case: Case, warm: bool) {
    if warm {
        for i in 0..REGIONS {
            side.map_sentinel(case.region(i, true).1);
        }
    }
}

/// Output address of region `i`: aligned to the region's page size, disjoint from the others.
fn phys_of(case: Case, i: u64) -> u64 {
    TARGET + G1 + i * 2 * case.len()
}

/// One round: maps every region (timed if `time_map`), then unmaps them (timed otherwise).
/// Returns the time per region of the timed half.
fn round(side: &mut impl Side, case: Case, warm: bool, time_map: bool) -> Duration {
    let t0 = Instant::now();
    for i in 0..REGIONS {
        let (iova, _) = case.region(i, warm);
        side.map(case, black_box(iova), phys_of(case, i));
    }
    let t1 = Instant::now();
    for i in 0..REGIONS {
        side.unmap(case, black_box(case.region(i, warm).0), !warm);
    }
    let t2 = Instant::now();
    let d = if time_map { t1 - t0 } else { t2 - t1 };
    d / REGIONS as u32
}

fn bench_side(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut side: impl Side,
    case: Case,
    warm: bool,
    time_map: bool,
) {
    prepare(&mut side, case, warm);
    g.bench_function(BenchmarkId::new(name, case.name()), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| round(&mut side, case, warm, time_map)).sum())
    });
}

fn pagetable(c: &mut Criterion) {
    for warm in [true, false] {
        for (op, time_map) in [("map", true), ("unmap", false)] {
            let heat = if warm { "warm" } else { "cold" };
            let mut g = c.benchmark_group(format!("pagetable-{op}-{heat}"));
            g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
            for case in Case::ALL {
                bench_side(&mut g, "ours", Ours::new(), case, warm, time_map);
                bench_side(&mut g, "x86_64", Theirs::new(), case, warm, time_map);
            }
            g.finish();
        }
    }
}

/// Median per-region time of `rounds` rounds.
fn median(side: &mut impl Side, case: Case, warm: bool, time_map: bool, rounds: usize) -> f64 {
    for _ in 0..5 {
        round(side, case, warm, time_map);
    }
    let mut v: Vec<f64> =
        (0..rounds).map(|_| round(side, case, warm, time_map).as_nanos() as f64).collect();
    v.sort_by(f64::total_cmp);
    v[rounds / 2]
}

fn summary() {
    println!(
        "\npage-table summary ({}), median ns per operation over 51 rounds of {REGIONS}:",
        common::machine()
    );
    println!(
        "{:<6} {:<5} {:<9} {:>10} {:>10} {:>8}",
        "op", "heat", "size", "ours", "x86_64", "ratio"
    );
    for warm in [true, false] {
        for (op, time_map) in [("map", true), ("unmap", false)] {
            for case in Case::ALL {
                let mut ours = Ours::new();
                let mut theirs = Theirs::new();
                prepare(&mut ours, case, warm);
                prepare(&mut theirs, case, warm);
                let a = median(&mut ours, case, warm, time_map, 51);
                let b = median(&mut theirs, case, warm, time_map, 51);
                let heat = if warm { "warm" } else { "cold" };
                println!("{op:<6} {heat:<5} {:<9} {a:>10.1} {b:>10.1} {:>8.2}", case.name(), a / b);
            }
        }
    }
    let mut ours = Ours::new();
    let mut theirs = Theirs::new();
    let ((), heap) = ALLOC.measure(|| {
        for case in Case::ALL {
            round(&mut ours, case, false, true);
        }
    });
    let ((), heap_theirs) = ALLOC.measure(|| {
        for case in Case::ALL {
            round(&mut theirs, case, false, true);
        }
    });
    println!(
        "heap use of {} cold map+unmap rounds (every case): ours {heap:?}, x86_64 {heap_theirs:?}",
        Case::ALL.len()
    );
    assert!(heap.is_zero(), "the page table allocated from the heap: {heap:?}");
    println!(
        "size_of::<PendingInvalidation>() = {} bytes (returned by value from every map and unmap)",
        size_of::<pcie_iommu::iommu::invalidation::PendingInvalidation>()
    );
    println!(
        "ratio = ours / x86_64 (below 1: ours is faster). Reference, not a peer: Linux generic_pt ~71 ns per 4 KiB map, 392 ns per 256 x 4 KiB map."
    );
}

criterion_group!(benches, pagetable);

fn main() {
    let only_summary = std::env::args().any(|a| a == "--summary-only");
    if !only_summary {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    // `cargo test --benches` runs bench binaries with `--bench` absent: keep that quick.
    if std::env::args().any(|a| a == "--bench") || only_summary {
        summary();
    }
}
