//! Shared pieces of the benchmarks: a pool of host pages standing in for physical memory (one
//! [`Platform`] for the library, one `FrameAllocator` for the `x86_64` crate, so both sides map
//! over the same kind of memory), a counting global allocator, and the machine description
//! `BENCHMARKS.md` records next to every figure.
//!
//! Each bench binary includes this module (`mod common;`) and uses only part of it.
#![allow(dead_code, reason = "each bench binary uses a different part of the shared module")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use pcie_iommu::PhysAddr;
use pcie_iommu::hal::{DmaPages, Instant, PAGE_SIZE, Platform};

/// Where the pool's pages pretend to live physically (past 4 GiB, like most DMA memory).
pub(crate) const POOL_PHYS: u64 = 0x1_0000_0000;

/// A preallocated run of zero-initialised host pages, handed out one or two at a time from
/// per-size free lists (LIFO, so a freed table page is the next one reused, as a slab would).
/// Physical address = [`POOL_PHYS`] + offset into the run, so `virt = phys + offset` holds for
/// the `x86_64` crate's `OffsetPageTable`.
pub(crate) struct Pool {
    base: NonNull<u8>,
    layout: Layout,
    pages: usize,
    next: Cell<usize>,
    free1: RefCell<Vec<usize>>,
    free2: RefCell<Vec<usize>>,
    in_use: Cell<usize>,
}

impl Pool {
    /// A pool of `pages` pages.
    pub(crate) fn new(pages: usize) -> Self {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).unwrap();
        Self {
            base,
            layout,
            pages,
            next: Cell::new(0),
            free1: RefCell::new(Vec::with_capacity(pages)),
            free2: RefCell::new(Vec::with_capacity(pages)),
            in_use: Cell::new(0),
        }
    }

    /// Index of the first of `count` (1 or 2) free pages.
    pub(crate) fn take(&self, count: usize) -> Option<usize> {
        let list = if count == 1 { &self.free1 } else { &self.free2 };
        let index = match list.borrow_mut().pop() {
            Some(i) => i,
            None => {
                let i = self.next.get();
                if i + count > self.pages {
                    return None;
                }
                self.next.set(i + count);
                i
            }
        };
        self.in_use.set(self.in_use.get() + count);
        Some(index)
    }

    /// Returns `count` pages starting at `index`.
    pub(crate) fn give_back(&self, index: usize, count: usize) {
        let list = if count == 1 { &self.free1 } else { &self.free2 };
        list.borrow_mut().push(index);
        self.in_use.set(self.in_use.get() - count);
    }

    /// Host address of page `index`.
    pub(crate) fn virt(&self, index: usize) -> NonNull<u8> {
        assert!(index < self.pages);
        // SAFETY: inside the allocation (checked above).
        unsafe { self.base.add(index * PAGE_SIZE) }
    }

    /// Physical address of page `index`.
    pub(crate) fn phys(&self, index: usize) -> u64 {
        POOL_PHYS + (index * PAGE_SIZE) as u64
    }

    /// Page index of a physical address inside the pool.
    pub(crate) fn index_of(&self, phys: u64) -> usize {
        usize::try_from((phys - POOL_PHYS) / PAGE_SIZE as u64).unwrap()
    }

    /// `virt - phys` for every page of the pool (the `OffsetPageTable` offset).
    pub(crate) fn phys_offset(&self) -> u64 {
        (self.base.as_ptr() as u64).wrapping_sub(POOL_PHYS)
    }

    /// Pages currently handed out.
    pub(crate) fn in_use(&self) -> usize {
        self.in_use.get()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// The library's [`Platform`] over a [`Pool`]: pages are zeroed when handed out (the
/// `Platform` contract), the host is coherent (barriers are compiler fences), the clock is a
/// counter (nothing here waits), MMIO is unavailable (nothing here touches registers).
pub(crate) struct PoolPlatform {
    pub(crate) pool: Pool,
    clock: Cell<u64>,
}

impl PoolPlatform {
    pub(crate) fn new(pages: usize) -> Self {
        Self { pool: Pool::new(pages), clock: Cell::new(0) }
    }
}

// SAFETY: pages are zeroed host memory owned by the pool, handed out once until given back,
// at distinct made-up physical addresses aligned to a page (the only alignment the page table
// asks for); nothing maps MMIO; the host is coherent; the clock only moves forward.
unsafe impl Platform for PoolPlatform {
    fn alloc_dma_pages(&self, count: usize, align: usize) -> pcie_iommu::Result<DmaPages> {
        assert!(
            align <= PAGE_SIZE && (1..=2).contains(&count),
            "pool: {count} pages, align {align}"
        );
        let index = self.pool.take(count).ok_or(pcie_iommu::Error::OutOfMemory { pages: count })?;
        let virt = self.pool.virt(index);
        // SAFETY: `count` pages of the pool at `virt`, owned by no one else until given back.
        unsafe { virt.as_ptr().write_bytes(0, count * PAGE_SIZE) };
        // SAFETY: zeroed, contiguous, page-aligned pages at the physical address given.
        Ok(unsafe { DmaPages::new(PhysAddr(self.pool.phys(index)), virt, count) })
    }

    unsafe fn free_dma_pages(&self, pages: DmaPages) {
        self.pool.give_back(self.pool.index_of(pages.phys().0), pages.count());
    }

    fn map_mmio(&self, base: PhysAddr, size: usize) -> pcie_iommu::Result<NonNull<u8>> {
        Err(pcie_iommu::Error::MmioUnavailable { base: base.0, size: size as u64 })
    }

    fn map_firmware(&self, base: PhysAddr, size: usize) -> pcie_iommu::Result<NonNull<u8>> {
        Err(pcie_iommu::Error::MmioUnavailable { base: base.0, size: size as u64 })
    }

    fn write_barrier(&self) {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    }

    fn read_barrier(&self) {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    }

    fn now(&self) -> Instant {
        self.clock.set(self.clock.get() + 1);
        Instant(self.clock.get())
    }
}

/// The `x86_64` crate's frame allocator over a [`Pool`]. Frames are not zeroed here: the
/// crate's mapper zeroes every page table it creates (`create_next_table`), as the library's
/// `Platform` contract has the platform do.
pub(crate) struct PoolFrames {
    pub(crate) pool: Pool,
}

impl PoolFrames {
    pub(crate) fn new(pages: usize) -> Self {
        Self { pool: Pool::new(pages) }
    }
}

// SAFETY: every frame handed out is a distinct, unused page of the pool until deallocated.
unsafe impl x86_64::structures::paging::FrameAllocator<x86_64::structures::paging::Size4KiB>
    for PoolFrames
{
    fn allocate_frame(&mut self) -> Option<x86_64::structures::paging::PhysFrame> {
        let index = self.pool.take(1)?;
        Some(x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(
            self.pool.phys(index),
        )))
    }
}

impl x86_64::structures::paging::FrameDeallocator<x86_64::structures::paging::Size4KiB>
    for PoolFrames
{
    unsafe fn deallocate_frame(&mut self, frame: x86_64::structures::paging::PhysFrame) {
        self.pool.give_back(self.pool.index_of(frame.start_address().as_u64()), 1);
    }
}

/// A global allocator that counts allocations, reallocations and bytes, passing everything to
/// the system allocator. A bench binary installs it with
/// `#[global_allocator] static ALLOC: common::CountingAllocator = common::CountingAllocator::new();`
/// and wraps the code under test in [`CountingAllocator::measure`] to prove it allocates nothing.
pub(crate) struct CountingAllocator {
    allocations: AtomicU64,
    reallocations: AtomicU64,
    deallocations: AtomicU64,
    bytes: AtomicU64,
}

/// What a closure allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AllocCounts {
    pub(crate) allocations: u64,
    pub(crate) reallocations: u64,
    pub(crate) deallocations: u64,
    pub(crate) bytes: u64,
}

impl AllocCounts {
    /// Whether nothing was allocated, reallocated or freed.
    pub(crate) fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl CountingAllocator {
    pub(crate) const fn new() -> Self {
        Self {
            allocations: AtomicU64::new(0),
            reallocations: AtomicU64::new(0),
            deallocations: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Counts so far (all threads).
    pub(crate) fn counts(&self) -> AllocCounts {
        AllocCounts {
            allocations: self.allocations.load(Ordering::Relaxed),
            reallocations: self.reallocations.load(Ordering::Relaxed),
            deallocations: self.deallocations.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` and returns its result with what it allocated. Run it on a quiet thread: the
    /// counters are global (criterion's own threads must not be measuring at the same time).
    pub(crate) fn measure<T>(&self, f: impl FnOnce() -> T) -> (T, AllocCounts) {
        let before = self.counts();
        let value = f();
        let after = self.counts();
        let counts = AllocCounts {
            allocations: after.allocations - before.allocations,
            reallocations: after.reallocations - before.reallocations,
            deallocations: after.deallocations - before.deallocations,
            bytes: after.bytes - before.bytes,
        };
        (value, counts)
    }
}

impl Default for CountingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counters have no effect on memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.deallocations.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.reallocations.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// One line naming the machine: CPU model and count, rustc version.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "rustc unknown".into());
    format!("{cpu}, {cpus} CPUs, {rustc}")
}
