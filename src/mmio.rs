//! The one place that touches device registers.
//!
//! A [`MmioRegion`] is created once, unsafely, from a mapping the platform made; every access
//! after that is safe and bounds-checked. Accesses use the exact width asked for (hardware such
//! as VT-d rejects 8-byte writes to 32-bit registers) and are volatile, so the compiler neither
//! merges, splits, reorders among themselves, nor drops them.

use core::ptr::NonNull;

use crate::error::{Error, Result};

/// A mapped range of device registers (or of ECAM configuration space).
#[derive(Debug)]
pub struct MmioRegion {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is only a pointer to device memory; the methods are volatile accesses that
// any thread may make. Ordering between CPUs is the caller's business, as for the registers
// themselves.
unsafe impl Send for MmioRegion {}
// SAFETY: as above; `&self` methods only do single volatile accesses.
unsafe impl Sync for MmioRegion {}

macro_rules! accessors {
    ($read:ident, $write:ident, $t:ty) => {
        #[doc = concat!("Reads a `", stringify!($t), "` at `offset`.")]
        ///
        /// An access outside the region or misaligned for its width is a driver bug: it trips a
        /// debug assertion and otherwise reads all-ones, as a PCIe master abort does.
        #[inline]
        pub fn $read(&self, offset: usize) -> $t {
            match self.check::<$t>(offset) {
                Ok(ptr) => {
                    // SAFETY: `check` proved `offset..offset + size_of::<$t>()` lies inside
                    // the mapped region and is aligned; the mapping is valid for as long as
                    // `self` exists (contract of `MmioRegion::new`).
                    unsafe { ptr.cast::<$t>().as_ptr().read_volatile() }
                }
                Err(e) => {
                    debug_assert!(false, "{e}");
                    <$t>::MAX
                }
            }
        }

        #[doc = concat!("Writes a `", stringify!($t), "` at `offset`.")]
        ///
        /// An access outside the region or misaligned for its width is a driver bug: it trips a
        /// debug assertion and is otherwise dropped.
        #[inline]
        pub fn $write(&self, offset: usize, value: $t) {
            match self.check::<$t>(offset) {
                Ok(ptr) => {
                    // SAFETY: as in the read accessor: in bounds, aligned, mapped.
                    unsafe { ptr.cast::<$t>().as_ptr().write_volatile(value) }
                }
                Err(e) => debug_assert!(false, "{e}"),
            }
        }
    };
}

impl MmioRegion {
    /// Wraps a mapping of `len` bytes of registers at `base`.
    ///
    /// # Safety
    /// `base..base + len` must be mapped with device attributes (or be ordinary memory standing
    /// in for registers, as in host tests) for as long as the returned value exists, and no
    /// Rust reference may alias it.
    pub const unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base of the mapping, for diagnostics.
    pub const fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// A window `offset..offset + len` inside this region, or [`Error::MmioOutOfRange`].
    pub fn subregion(&self, offset: usize, len: usize) -> Result<MmioRegion> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                // SAFETY: `offset <= self.len`, so the pointer stays inside (or one past) the
                // mapping and is non-null.
                let base = unsafe { self.base.add(offset) };
                Ok(MmioRegion { base, len })
            }
            _ => Err(Error::MmioOutOfRange { offset, width: len, len: self.len }),
        }
    }

    fn check<T>(&self, offset: usize) -> Result<NonNull<u8>> {
        let width = size_of::<T>();
        let in_bounds = offset.checked_add(width).is_some_and(|end| end <= self.len);
        if !in_bounds || !offset.is_multiple_of(width) || !(self.base.as_ptr() as usize).is_multiple_of(width) {
            return Err(Error::MmioOutOfRange { offset, width, len: self.len });
        }
        // SAFETY: `offset + width <= len`, so the result stays inside the mapping.
        Ok(unsafe { self.base.add(offset) })
    }

    /// Checked 32-bit read for offsets that come from hardware or firmware values.
    pub fn try_read32(&self, offset: usize) -> Result<u32> {
        let ptr = self.check::<u32>(offset)?;
        // SAFETY: in bounds, aligned and mapped, as `check` proved.
        Ok(unsafe { ptr.cast::<u32>().as_ptr().read_volatile() })
    }

    accessors!(read8, write8, u8);
    accessors!(read16, write16, u16);
    accessors!(read32, write32, u32);
    accessors!(read64, write64, u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_hit_the_right_bytes() {
        let mut backing = [0u64; 4];
        // SAFETY: host memory standing in for registers, alive for the whole test.
        let r = unsafe { MmioRegion::new(NonNull::from(&mut backing).cast(), 32) };
        r.write32(4, 0xdead_beef);
        r.write8(8, 0x5a);
        r.write64(16, 0x0123_4567_89ab_cdef);
        assert_eq!(r.read32(4), 0xdead_beef);
        assert_eq!(r.read16(16), 0xcdef);
        assert_eq!(r.read64(0) >> 32, 0xdead_beef);
        let sub = r.subregion(16, 16).unwrap();
        assert_eq!(sub.read64(0), 0x0123_4567_89ab_cdef);
        assert!(r.subregion(24, 9).is_err());
        assert_eq!(r.try_read32(30), Err(Error::MmioOutOfRange { offset: 30, width: 4, len: 32 }));
        assert_eq!(r.try_read32(32), Err(Error::MmioOutOfRange { offset: 32, width: 4, len: 32 }));
    }
}
