//! The platform interface a hypervisor implements for the library.
//!
//! The library never touches memory management, interrupts or time on its own: it asks the
//! [`Platform`] for DMA-able pages, for mappings of MMIO ranges and firmware tables, for the
//! barriers that make its stores visible to devices, and for a monotonic clock with which every
//! wait on hardware is bounded ([`poll`]).

use core::ptr::NonNull;
use core::time::Duration;

use crate::addr::PhysAddr;
use crate::error::{Error, Result};

/// Size of the pages the library asks for: the 4 KiB granule every VT-d and SMMUv3 table uses.
pub const PAGE_SIZE: usize = 4096;

/// A run of physically contiguous, zeroed, DMA-able pages handed out by a [`Platform`].
///
/// The library keeps a `DmaPages` for as long as hardware may read or write the memory, and
/// gives it back with [`Platform::free_dma_pages`] only after the hardware was told to stop.
#[derive(Debug)]
pub struct DmaPages {
    phys: PhysAddr,
    virt: NonNull<u8>,
    count: usize,
}

impl DmaPages {
    /// Wraps pages a platform allocated.
    ///
    /// # Safety
    /// `virt` must map `count * PAGE_SIZE` bytes of zeroed, DMA-able memory starting at the
    /// physical address `phys`, owned by whoever receives this value until it is freed.
    pub const unsafe fn new(phys: PhysAddr, virt: NonNull<u8>, count: usize) -> Self {
        Self { phys, virt, count }
    }

    /// Physical address of the first byte (what the hardware is given).
    pub const fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// Virtual address of the first byte (what the CPU uses).
    pub const fn virt(&self) -> NonNull<u8> {
        self.virt
    }

    /// Number of pages.
    pub const fn count(&self) -> usize {
        self.count
    }

    /// Size in bytes.
    pub const fn len(&self) -> usize {
        self.count * PAGE_SIZE
    }

    /// Whether the run is empty (never true for a run a platform handed out).
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A point on the platform's monotonic clock, in nanoseconds since an arbitrary origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant(pub u64);

impl Instant {
    /// Time from `earlier` to `self`, zero if the clock did not advance.
    pub const fn since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// What the library needs from the machine it runs on.
///
/// # Implementation safety
/// The library trusts an implementation to:
/// - return from [`alloc_dma_pages`](Platform::alloc_dma_pages) only memory that is zeroed,
///   physically contiguous, aligned as asked, not used by anyone else until it is freed, and
///   reachable by devices at the physical address given (coherent with the CPU caches, or made
///   so by [`sync_for_device`](Platform::sync_for_device));
/// - return from [`map_mmio`](Platform::map_mmio) a mapping of exactly the asked physical range
///   with device (uncached, unmerged, unreordered) attributes, valid for the life of the
///   platform value, and from [`map_firmware`](Platform::map_firmware) a readable mapping of
///   the asked range;
/// - implement the barriers so that, after [`write_barrier`](Platform::write_barrier), every
///   earlier store to DMA memory is visible to devices before any later MMIO store;
/// - keep [`now`](Platform::now) monotonic.
///
/// Methods take `&self`: an implementation uses interior mutability for its allocator, so one
/// platform value can serve several drivers.
pub unsafe trait Platform {
    /// Allocates `count` zeroed, physically contiguous pages aligned to `align` bytes (a power
    /// of two, at least [`PAGE_SIZE`]).
    fn alloc_dma_pages(&self, count: usize, align: usize) -> Result<DmaPages>;

    /// Returns pages to the platform.
    ///
    /// # Safety
    /// `pages` came from this platform's [`alloc_dma_pages`](Platform::alloc_dma_pages) and no
    /// device can still access them.
    unsafe fn free_dma_pages(&self, pages: DmaPages);

    /// Maps `size` bytes of MMIO at `base` with device attributes.
    fn map_mmio(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>>;

    /// Maps `size` bytes of firmware-provided memory (ACPI tables, the device tree) for reading.
    fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>>;

    /// Orders all earlier stores (to DMA memory) before all later stores (to MMIO).
    fn write_barrier(&self);

    /// Orders all earlier loads (from MMIO, such as a queue head) before all later loads (from
    /// DMA memory the device wrote).
    fn read_barrier(&self);

    /// Makes CPU stores to `len` bytes at `virt` visible to a non-coherent device. Coherent
    /// platforms need only the barrier the default provides.
    fn sync_for_device(&self, virt: NonNull<u8>, len: usize) {
        let _ = (virt, len);
        self.write_barrier();
    }

    /// The monotonic clock.
    fn now(&self) -> Instant;

    /// Called between polls of hardware; a spin-loop hint by default.
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// Polls `condition` until it yields a value or `timeout` passes on the platform's clock.
///
/// `what` names the register or queue waited on, for the [`Error::Timeout`] it returns.
///
/// The loop is also bounded in iterations, so a clock that stops does not hang the caller: one
/// poll costs at least one MMIO or DMA-memory read and one clock read, far over a nanosecond, so
/// `timeout` in nanoseconds is an upper bound on the polls a working clock would allow.
pub fn poll<P, T>(
    platform: &P,
    what: &'static str,
    timeout: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> Result<T>
where
    P: Platform + ?Sized,
{
    let start = platform.now();
    // CAST: saturate: a timeout beyond 584 years is no bound worth distinguishing.
    let max_polls = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX).max(1);
    let mut polls = 0u64;
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        polls += 1;
        if platform.now().since(start) >= timeout || polls >= max_polls {
            // One last look: the condition may have become true while the clock was read.
            return condition().ok_or(Error::Timeout {
                what,
                // CAST: saturate, as above.
                waited_us: u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX),
            });
        }
        platform.relax();
    }
}

/// Test doubles shared by the library's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use core::cell::Cell;

    /// A platform with only a clock: each read of `now` advances it by `step_ns`, and `relax`
    /// runs an optional hook (the device doing something while a driver polls). It hands out
    /// no memory and maps nothing.
    pub(crate) struct TestClock<'a> {
        now: Cell<u64>,
        step_ns: u64,
        relax: Option<&'a dyn Fn()>,
    }

    impl<'a> TestClock<'a> {
        /// A clock advancing `step_ns` per read (0: a stopped clock).
        pub(crate) fn new(step_ns: u64) -> Self {
            Self { now: Cell::new(0), step_ns, relax: None }
        }

        /// The same, running `relax` between polls.
        pub(crate) fn with_relax(step_ns: u64, relax: &'a dyn Fn()) -> Self {
            Self { now: Cell::new(0), step_ns, relax: Some(relax) }
        }

        /// Time the clock has shown so far.
        pub(crate) fn elapsed(&self) -> Duration {
            Duration::from_nanos(self.now.get())
        }
    }

    // SAFETY: test double; it hands out no memory and maps nothing; its clock is monotonic.
    unsafe impl Platform for TestClock<'_> {
        fn alloc_dma_pages(&self, count: usize, _align: usize) -> Result<DmaPages> {
            Err(Error::OutOfMemory { pages: count })
        }
        unsafe fn free_dma_pages(&self, _pages: DmaPages) {}
        fn map_mmio(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
            Err(Error::MmioUnavailable { base: base.0, size: size as u64 })
        }
        fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
            Err(Error::MmioUnavailable { base: base.0, size: size as u64 })
        }
        fn write_barrier(&self) {}
        fn read_barrier(&self) {}
        fn now(&self) -> Instant {
            let t = self.now.get();
            self.now.set(t + self.step_ns);
            Instant(t)
        }
        fn relax(&self) {
            match self.relax {
                Some(hook) => hook(),
                None => core::hint::spin_loop(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestClock;
    use super::*;

    #[test]
    fn poll_returns_the_value_once_ready() {
        let p = TestClock::new(1000);
        let mut n = 0;
        let got = poll(&p, "test", Duration::from_millis(1), || {
            n += 1;
            (n == 5).then_some(n)
        });
        assert_eq!(got, Ok(5));
    }

    #[test]
    fn poll_times_out_on_the_clock() {
        let p = TestClock::new(1000);
        let mut n = 0u32;
        let got: Result<()> = poll(&p, "GSTS.TES", Duration::from_micros(100), || {
            n += 1;
            None
        });
        assert_eq!(got, Err(Error::Timeout { what: "GSTS.TES", waited_us: 100 }));
        // 100 us at 1 us per clock read: about a hundred polls, not more.
        assert!((99..=102).contains(&n), "{n} polls");
    }

    #[test]
    fn poll_ends_even_if_the_clock_stops() {
        let p = TestClock::new(0);
        let mut n = 0u64;
        let got: Result<()> = poll(&p, "stuck clock", Duration::from_micros(10), || {
            n += 1;
            None
        });
        assert!(matches!(got, Err(Error::Timeout { .. })));
        assert!(n <= 10_001, "{n} polls");
    }
}
