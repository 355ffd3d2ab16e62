//! One function's 4 KiB configuration-space image with per-bit write behaviour, the way QEMU and
//! real hardware both model it: a value, a write mask (RW bits) and a write-1-to-clear mask.

use crate::sim::std;
use std::boxed::Box;
use std::vec;

/// Bytes of configuration space per function (PCIe Base 6.0 §7.2.2).
pub(super) const SIZE: usize = 4096;

/// The image and its masks. Bits in neither mask are read-only.
#[derive(Clone)]
pub(super) struct Space {
    cfg: Box<[u8]>,
    wmask: Box<[u8]>,
    w1c: Box<[u8]>,
}

impl core::fmt::Debug for Space {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Space({:04x}:{:04x})", self.get(0, 2), self.get(2, 2))
    }
}

impl Space {
    pub(super) fn new() -> Self {
        Self {
            cfg: vec![0u8; SIZE].into_boxed_slice(),
            wmask: vec![0u8; SIZE].into_boxed_slice(),
            w1c: vec![0u8; SIZE].into_boxed_slice(),
        }
    }

    fn range(off: u16, len: u8) -> core::ops::Range<usize> {
        let start = usize::from(off).min(SIZE);
        start..(start + usize::from(len)).min(SIZE)
    }

    fn load(bytes: &[u8], off: u16, len: u8) -> u32 {
        bytes[Self::range(off, len)].iter().rev().fold(0, |a, &b| (a << 8) | u32::from(b))
    }

    fn store(bytes: &mut [u8], off: u16, len: u8, v: u32) {
        for (i, b) in bytes[Self::range(off, len)].iter_mut().enumerate() {
            // CAST: byte `i` of the little-endian value.
            *b = (v >> (8 * i)) as u8;
        }
    }

    /// The current value (little-endian, `len` of 1, 2 or 4).
    pub(super) fn get(&self, off: u16, len: u8) -> u32 {
        Self::load(&self.cfg, off, len)
    }

    /// Sets the value, bypassing the masks (hardware-side state change or a test's poke).
    pub(super) fn set(&mut self, off: u16, len: u8, v: u32) {
        Self::store(&mut self.cfg, off, len, v);
    }

    /// Sets bits in the value (hardware-side).
    pub(super) fn set_bits(&mut self, off: u16, len: u8, bits: u32) {
        let v = self.get(off, len) | bits;
        self.set(off, len, v);
    }

    /// Clears bits in the value (hardware-side).
    pub(super) fn clear_bits(&mut self, off: u16, len: u8, bits: u32) {
        let v = self.get(off, len) & !bits;
        self.set(off, len, v);
    }

    /// Which bits software may write.
    pub(super) fn set_wmask(&mut self, off: u16, len: u8, mask: u32) {
        Self::store(&mut self.wmask, off, len, mask);
    }

    /// Which bits are write-1-to-clear.
    pub(super) fn set_w1c(&mut self, off: u16, len: u8, mask: u32) {
        Self::store(&mut self.w1c, off, len, mask);
    }

    /// Raw bytes (for pokes).
    pub(super) fn poke(&mut self, off: u16, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(slot) = self.cfg.get_mut(usize::from(off) + i) {
                *slot = b;
            }
        }
    }

    /// A software write of exactly `len` bytes: RW bits take the value, RW1C bits written as 1
    /// clear, everything else is kept. Done per byte, so a 16-bit write never touches the
    /// neighbouring register's RW1C bits (PCIe Base 6.0 §7.4, "RW1C").
    pub(super) fn write(&mut self, off: u16, len: u8, v: u32) {
        for (i, o) in Self::range(off, len).enumerate() {
            // CAST: byte `i` of the written value.
            let b = (v >> (8 * i)) as u8;
            let (wm, c) = (self.wmask[o], self.w1c[o]);
            self.cfg[o] = ((self.cfg[o] & !wm) | (b & wm)) & !(b & c);
        }
    }
}
