//! The library's `Platform` for QEMU q35 and virt: DMA pages from free RAM, identity mappings,
//! barriers and the clock.
//!
//! Free RAM is what the firmware's memory map calls RAM (PVH e820 on x86, DT `/memory` on Arm)
//! minus everything this run must not overwrite: the first MiB on x86 (start info, command line,
//! BIOS data), the image itself, the device tree, and reserved regions. Pages come from a bump
//! allocator over those ranges; freed runs go on a short list and are reused for requests of
//! the same size. The allocator never hands out a byte twice.

use core::cell::RefCell;
use core::ptr::NonNull;

use pcie_iommu::hal::{DmaPages, Instant, PAGE_SIZE, Platform};
use pcie_iommu::{Error, PhysAddr};

use crate::arch;

const MAX_RANGES: usize = 32;
const MAX_FREED: usize = 32;

/// End (exclusive) of the physical addresses the CPU can reach: the x86 stub identity-maps
/// 4 GiB; on Arm the MMU is off, so every address is reachable.
#[cfg(target_arch = "x86_64")]
const REACHABLE_END: Option<u64> = Some(1 << 32);
#[cfg(target_arch = "aarch64")]
const REACHABLE_END: Option<u64> = None;

/// Half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// A fixed set of disjoint ranges.
#[derive(Clone, Copy)]
pub struct RangeSet {
    ranges: [Range; MAX_RANGES],
    len: usize,
    /// Ranges lost because the set was full (reported, never silently).
    pub dropped: usize,
}

impl RangeSet {
    pub const fn new() -> Self {
        Self { ranges: [Range { start: 0, end: 0 }; MAX_RANGES], len: 0, dropped: 0 }
    }

    pub fn as_slice(&self) -> &[Range] {
        &self.ranges[..self.len]
    }

    pub fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if self.len == MAX_RANGES {
            self.dropped += 1;
            return;
        }
        self.ranges[self.len] = Range { start, end };
        self.len += 1;
    }

    /// Removes `[start, end)` from every range, splitting where needed.
    pub fn remove(&mut self, start: u64, end: u64) {
        let old = *self;
        self.len = 0;
        for r in old.as_slice() {
            if end <= r.start || start >= r.end {
                self.add(r.start, r.end);
            } else {
                self.add(r.start, start.max(r.start).min(r.end));
                self.add(end.min(r.end).max(r.start), r.end);
            }
        }
        self.dropped += old.dropped;
    }

    pub fn total(&self) -> u64 {
        self.as_slice().iter().map(|r| r.end - r.start).sum()
    }
}

struct Pool {
    free: RangeSet,
    /// Index of the range being bumped through, and the next free address in it.
    current: usize,
    next: u64,
    freed: [(u64, usize); MAX_FREED],
    freed_len: usize,
    pages_out: usize,
}

/// The QEMU platform.
pub struct QemuPlatform {
    pool: RefCell<Pool>,
}

impl QemuPlatform {
    /// A platform allocating from `free` (already stripped of everything in use).
    pub fn new(mut free: RangeSet) -> Self {
        if let Some(end) = REACHABLE_END {
            free.remove(end, u64::MAX);
        }
        let next = free.as_slice().first().map_or(0, |r| r.start);
        Self {
            pool: RefCell::new(Pool { free, current: 0, next, freed: [(0, 0); MAX_FREED], freed_len: 0, pages_out: 0 }),
        }
    }

    /// Bytes available for DMA pages at start.
    pub fn free_bytes(&self) -> u64 {
        self.pool.borrow().free.total()
    }

    /// Pages currently handed out.
    pub fn pages_out(&self) -> usize {
        self.pool.borrow().pages_out
    }

    fn zeroed(phys: u64, count: usize) -> DmaPages {
        let len = count * PAGE_SIZE;
        // CAST: identity mapping; `phys` is reachable (the pool excludes what is not).
        let ptr = phys as usize as *mut u8;
        // SAFETY: the range is free RAM that the allocator hands out once, identity-mapped.
        unsafe { core::ptr::write_bytes(ptr, 0, len) };
        // SAFETY: `ptr` is non-null (RAM never starts at 0 here: the first MiB on x86 and
        // everything below 0x4000_0000 on Arm are excluded) and maps `count` zeroed pages.
        unsafe { DmaPages::new(PhysAddr(phys), NonNull::new_unchecked(ptr), count) }
    }
}

// SAFETY: pages are zeroed free RAM, physically contiguous, aligned as asked, identity-mapped and
// handed out once (bump allocation plus an exact-size reuse list); both machines' DMA is
// cache-coherent (q35; virt's SMMU and PCIe are `dma-coherent`). Mappings are identity mappings:
// below 4 GiB on x86 the stub mapped the MMIO hole uncached; on Arm the MMU is off, so every
// access is Device-nGnRnE. Barriers are full-system fences. The clock is the HPET main counter
// (x86) or CNTVCT (Arm), both monotonic.
unsafe impl Platform for QemuPlatform {
    fn alloc_dma_pages(&self, count: usize, align: usize) -> Result<DmaPages, Error> {
        let oom = Error::OutOfMemory { pages: count };
        if count == 0 || !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(oom);
        }
        let bytes = (count as u64).checked_mul(PAGE_SIZE as u64).ok_or(oom)?;
        let mut pool = self.pool.borrow_mut();
        let pool = &mut *pool;
        for i in 0..pool.freed_len {
            let (phys, n) = pool.freed[i];
            if n == count && phys % align as u64 == 0 {
                pool.freed[i] = pool.freed[pool.freed_len - 1];
                pool.freed_len -= 1;
                pool.pages_out += count;
                return Ok(Self::zeroed(phys, count));
            }
        }
        while let Some(range) = pool.free.as_slice().get(pool.current).copied() {
            let start = pool.next.max(range.start).checked_next_multiple_of(align as u64).ok_or(oom)?;
            if let Some(end) = start.checked_add(bytes).filter(|&e| e <= range.end) {
                pool.next = end;
                pool.pages_out += count;
                return Ok(Self::zeroed(start, count));
            }
            pool.current += 1;
            pool.next = pool.free.as_slice().get(pool.current).map_or(0, |r| r.start);
        }
        Err(oom)
    }

    unsafe fn free_dma_pages(&self, pages: DmaPages) {
        let mut pool = self.pool.borrow_mut();
        pool.pages_out -= pages.count();
        if pool.freed_len < MAX_FREED {
            let i = pool.freed_len;
            pool.freed[i] = (pages.phys().0, pages.count());
            pool.freed_len += 1;
        }
        // Else the run is leaked: safe, and visible in `pages_out` accounting of the caller.
    }

    fn map_mmio(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>, Error> {
        let unavailable = Error::MmioUnavailable { base: base.0, size: size as u64 };
        let end = base.0.checked_add(size as u64).ok_or(unavailable)?;
        if REACHABLE_END.is_some_and(|limit| end > limit) || base.0 == 0 {
            return Err(unavailable);
        }
        // CAST: identity mapping of a reachable address, which fits usize on both targets.
        NonNull::new(base.0 as usize as *mut u8).ok_or(unavailable)
    }

    fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>, Error> {
        self.map_mmio(base, size)
    }

    fn write_barrier(&self) {
        full_barrier();
    }

    fn read_barrier(&self) {
        full_barrier();
    }

    fn now(&self) -> Instant {
        Instant(arch::now_ns())
    }
}

fn full_barrier() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `mfence` orders all earlier loads and stores before later ones; no other effect.
    unsafe {
        core::arch::asm!("mfence", options(nostack, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `dsb sy` completes all earlier memory accesses, to any observer, first.
    unsafe {
        core::arch::asm!("dsb sy", options(nostack, preserves_flags));
    }
}
