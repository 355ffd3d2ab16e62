//! Simulated physical memory shared by a test [`SimPlatform`] (which hands DMA pages to the
//! driver) and the unit models (which read tables and queues from it and write wait statuses,
//! event records and A/D bits into it). The SMMUv3 model (`sim::smmuv3`) uses the same memory
//! and platform: any [`SimUnit`] can be attached.
//!
//! Each allocation is a separate host buffer at a made-up physical address, with an unmapped
//! guard page after it: an access the model makes outside every allocation fails, which the
//! model reports as the specification's "address invalid" faults, as a bus error would be on
//! hardware.

use crate::sim::std;
use core::cell::{Cell, RefCell};
use core::ptr::NonNull;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::vec::Vec;

use crate::addr::PhysAddr;
use crate::error::{Error, Result};
use crate::hal::{DmaPages, Instant, PAGE_SIZE, Platform};

use super::RemappingUnit;

/// A modelled unit whose registers live in a host-memory window: [`SimPlatform`] maps the
/// window for the driver and steps the unit while the driver polls.
pub trait SimUnit: core::fmt::Debug {
    /// Processes what the driver wrote since the last step and publishes the registers.
    fn step(&self);
    /// Host address of the register window.
    fn window(&self) -> NonNull<u8>;
    /// Size of the register window in bytes.
    fn window_size(&self) -> usize;
}

impl SimUnit for RemappingUnit {
    fn step(&self) {
        RemappingUnit::step(self);
    }
    fn window(&self) -> NonNull<u8> {
        RemappingUnit::window(self)
    }
    fn window_size(&self) -> usize {
        RemappingUnit::window_size(self)
    }
}

/// One host buffer standing in for a physically contiguous range.
#[derive(Debug)]
struct Region {
    len: usize,
    ptr: NonNull<u8>,
    layout: Layout,
}

#[derive(Debug)]
struct Inner {
    /// Regions by physical base.
    regions: BTreeMap<u64, Region>,
    /// Next free physical address of the bump allocator.
    next: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for r in self.regions.values() {
            // SAFETY: `ptr` came from `alloc_zeroed(layout)` and is freed once, here or in
            // `Memory::free` (which removes it from the map first).
            unsafe { dealloc(r.ptr.as_ptr(), r.layout) };
        }
    }
}

/// Simulated physical memory: a cheap-to-clone handle; clones share the same memory.
///
/// Accesses by physical address never alias a Rust reference: the driver reaches the buffers
/// through the raw pointers [`DmaPages`] carry, and the model through volatile reads and
/// writes here, so both may be used in any order on one thread.
#[derive(Clone, Debug)]
pub struct Memory {
    inner: Rc<RefCell<Inner>>,
}

impl Default for Memory {
    fn default() -> Self {
        Self::new()
    }
}

impl Memory {
    /// Where allocations start by default: 256 MiB, far from the register windows.
    pub const DEFAULT_BASE: u64 = 0x1000_0000;

    /// Empty memory whose allocations start at [`Memory::DEFAULT_BASE`].
    pub fn new() -> Self {
        Self::with_base(Self::DEFAULT_BASE)
    }

    /// Empty memory whose allocations start at `base` (page aligned).
    pub fn with_base(base: u64) -> Self {
        Self { inner: Rc::new(RefCell::new(Inner { regions: BTreeMap::new(), next: base & !0xfff })) }
    }

    /// Allocates `len` zeroed bytes (rounded up to pages) at a physical address aligned to
    /// `align` (a power of two, at least a page). Returns the physical and host addresses.
    pub fn alloc(&self, len: usize, align: usize) -> (PhysAddr, NonNull<u8>) {
        let len = len.max(1).next_multiple_of(PAGE_SIZE);
        let align = align.max(PAGE_SIZE).next_power_of_two() as u64;
        let layout = Layout::from_size_align(len, PAGE_SIZE).expect("allocation size");
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("host out of memory");
        let mut inner = self.inner.borrow_mut();
        let phys = inner.next.next_multiple_of(align);
        // One unmapped guard page after each allocation catches overruns.
        inner.next = phys + len as u64 + PAGE_SIZE as u64;
        inner.regions.insert(phys, Region { len, ptr, layout });
        (PhysAddr(phys), ptr)
    }

    /// Allocates one zeroed page; for tests that build tables by hand.
    pub fn alloc_page(&self) -> PhysAddr {
        self.alloc(PAGE_SIZE, PAGE_SIZE).0
    }

    /// Frees the allocation that starts at `phys`; later accesses to it fail. Returns whether
    /// there was one.
    pub fn free(&self, phys: PhysAddr) -> bool {
        let region = self.inner.borrow_mut().regions.remove(&phys.0);
        match region {
            Some(r) => {
                // SAFETY: allocated with this layout in `alloc`, removed from the map above, so
                // freed exactly once.
                unsafe { dealloc(r.ptr.as_ptr(), r.layout) };
                true
            }
            None => false,
        }
    }

    /// Host pointer to `len` bytes at `phys`, if they lie inside one allocation.
    pub fn host_ptr(&self, phys: u64, len: usize) -> Option<NonNull<u8>> {
        let inner = self.inner.borrow();
        let (&base, r) = inner.regions.range(..=phys).next_back()?;
        let off = usize::try_from(phys - base).ok()?;
        if off.checked_add(len)? > r.len {
            return None;
        }
        // SAFETY: `off + len <= r.len`, inside the allocation.
        Some(unsafe { r.ptr.add(off) })
    }

    /// Whether `len` bytes at `phys` are mapped.
    pub fn is_mapped(&self, phys: u64, len: usize) -> bool {
        self.host_ptr(phys, len).is_some()
    }

    /// Reads `buf.len()` bytes at `phys`; false if not mapped.
    pub fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
        let Some(p) = self.host_ptr(phys, buf.len()) else { return false };
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `host_ptr` checked the whole range; volatile because the driver may hold a
            // raw pointer to the same bytes.
            *b = unsafe { p.add(i).as_ptr().read_volatile() };
        }
        true
    }

    /// Writes `data` at `phys`; false if not mapped.
    pub fn write(&self, phys: u64, data: &[u8]) -> bool {
        let Some(p) = self.host_ptr(phys, data.len()) else { return false };
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as in `read`.
            unsafe { p.add(i).as_ptr().write_volatile(b) };
        }
        true
    }

    /// Reads a little-endian `u64` at `phys`.
    pub fn read_u64(&self, phys: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(phys, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u64` at `phys`; false if not mapped.
    pub fn write_u64(&self, phys: u64, value: u64) -> bool {
        self.write(phys, &value.to_le_bytes())
    }

    /// Reads a little-endian `u32` at `phys`.
    pub fn read_u32(&self, phys: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(phys, &mut b).then(|| u32::from_le_bytes(b))
    }

    /// Writes a little-endian `u32` at `phys`; false if not mapped.
    pub fn write_u32(&self, phys: u64, value: u32) -> bool {
        self.write(phys, &value.to_le_bytes())
    }

    /// Physical bases and lengths of the live allocations.
    pub fn allocations(&self) -> Vec<(PhysAddr, usize)> {
        self.inner.borrow().regions.iter().map(|(&p, r)| (PhysAddr(p), r.len)).collect()
    }
}

/// A [`Platform`] for host tests: DMA pages come from a [`Memory`], `map_mmio` returns the
/// register window of an attached unit ([`RemappingUnit`], the SMMUv3 model, any [`SimUnit`]),
/// and [`relax`](Platform::relax) (called by [`crate::hal::poll`] between polls) steps every
/// attached unit, so the driver's bounded waits make the model progress without threads.
///
/// The clock advances by a fixed tick on every [`now`](Platform::now) read.
#[derive(Debug)]
pub struct SimPlatform {
    memory: Memory,
    units: RefCell<Vec<(PhysAddr, Rc<dyn SimUnit>)>>,
    clock: Cell<u64>,
    tick_ns: Cell<u64>,
    auto_step: Cell<bool>,
    relaxes: Cell<u64>,
}

impl SimPlatform {
    /// A platform allocating from `memory`, with no unit attached and a 10 µs clock tick: a
    /// bounded wait of one second that never succeeds costs 100 000 polls (and steps).
    pub fn new(memory: &Memory) -> Self {
        Self {
            memory: memory.clone(),
            units: RefCell::new(Vec::new()),
            clock: Cell::new(0),
            tick_ns: Cell::new(10_000),
            auto_step: Cell::new(true),
            relaxes: Cell::new(0),
        }
    }

    /// Places `unit`'s register window at physical `base` for [`Platform::map_mmio`]; the
    /// platform keeps a clone of the handle and steps it from `relax`.
    pub fn attach<U: SimUnit + Clone + 'static>(&self, base: PhysAddr, unit: &U) {
        self.units.borrow_mut().push((base, Rc::new(unit.clone())));
    }

    /// The memory DMA pages come from.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Nanoseconds the clock advances per read.
    pub fn set_tick_ns(&self, ns: u64) {
        self.tick_ns.set(ns);
    }

    /// Whether `relax` steps the attached units (on by default). Off, the units look dead to
    /// the driver: nothing it writes takes effect, so its bounded waits time out.
    pub fn set_auto_step(&self, on: bool) {
        self.auto_step.set(on);
    }

    /// Steps every attached unit once (what `relax` does).
    pub fn step_all(&self) {
        for (_, u) in self.units.borrow().iter() {
            u.step();
        }
    }

    /// How many times the driver relaxed (polled) so far.
    pub fn relax_count(&self) -> u64 {
        self.relaxes.get()
    }
}

// SAFETY: `alloc_dma_pages` returns zeroed, page-aligned host buffers owned by `memory` until
// freed, at distinct physical addresses aligned as asked; `map_mmio` returns a unit's window,
// which lives as long as the unit handle this platform keeps; the host is coherent, so the
// barriers need only be compiler fences; the clock only moves forward.
unsafe impl Platform for SimPlatform {
    fn alloc_dma_pages(&self, count: usize, align: usize) -> Result<DmaPages> {
        if count == 0 {
            return Err(Error::OutOfMemory { pages: 0 });
        }
        let (phys, virt) = self.memory.alloc(count * PAGE_SIZE, align);
        // SAFETY: `virt` maps `count` zeroed pages at `phys`, owned by the caller until freed.
        Ok(unsafe { DmaPages::new(phys, virt, count) })
    }

    unsafe fn free_dma_pages(&self, pages: DmaPages) {
        self.memory.free(pages.phys());
    }

    fn map_mmio(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
        for (b, unit) in self.units.borrow().iter() {
            let off = base.0.wrapping_sub(b.0);
            if base.0 >= b.0 && off.saturating_add(size as u64) <= unit.window_size() as u64 {
                // CAST: `off` is below the window size.
                // SAFETY: `off + size` lies inside the window.
                return Ok(unsafe { unit.window().add(off as usize) });
            }
        }
        Err(Error::MmioUnavailable { base: base.0, size: size as u64 })
    }

    fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
        self.memory.host_ptr(base.0, size).ok_or(Error::MmioUnavailable { base: base.0, size: size as u64 })
    }

    fn write_barrier(&self) {
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }

    fn read_barrier(&self) {
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }

    fn now(&self) -> Instant {
        let t = self.clock.get() + self.tick_ns.get();
        self.clock.set(t);
        Instant(t)
    }

    fn relax(&self) {
        self.relaxes.set(self.relaxes.get() + 1);
        if self.auto_step.get() {
            self.step_all();
        }
    }
}
