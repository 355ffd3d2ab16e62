//! Base Address Registers and bridge forwarding windows: sizing a BAR (PCI Local Bus 3.0
//! §6.2.5.1, PCIe Base 6.0 §7.5.1.2.1), programming one, and the memory, prefetchable and I/O
//! base/limit registers of a type 1 header (PCIe Base 6.0 §7.5.1.3.6-9; PCI-to-PCI Bridge 1.2
//! §3.2.5.6-10).
//!
//! Enumeration sizes every function's BARs and SR-IOV VF BARs here and programs BARs and
//! windows; the hypervisor can read what a bridge forwards with [`BridgeWindows::read`].

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::config::{ConfigAccess, reg};
use crate::pci::topology::{Bar, BarKind};

/// An address range a bridge forwards or a host bridge decodes, in bus addresses (what BARs and
/// bridge registers hold; on QEMU virt and q35 they equal CPU physical addresses, except I/O,
/// whose bus addresses start at 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Window {
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Window {
    /// `size` bytes from `base`.
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last address, saturating (a window that reaches the top of the address
    /// space ends there).
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Whether `[base, base + size)` lies inside the window.
    pub const fn contains(&self, base: u64, size: u64) -> bool {
        match base.checked_add(size) {
            Some(end) => base >= self.base && end <= self.end(),
            None => false,
        }
    }
}

/// Result of sizing a run of BAR registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SizedBars {
    /// The implemented BARs by register index (a 64-bit BAR fills its own slot and leaves the
    /// next `None`), with the address each held (`base`).
    pub(crate) bars: [Option<Bar>; 6],
    /// The first register that held an encoding no BAR can have: (offset, value read back
    /// after writing all-ones). It is left out of `bars`.
    pub(crate) invalid: Option<(u16, u32)>,
}

/// BAR register bits (PCIe Base 6.0 §7.5.1.2.1).
const BAR_IO: u32 = 1 << 0;
const BAR_MEM_TYPE_MASK: u32 = 0b11 << 1;
const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
const BAR_MEM_TYPE_RESERVED: u32 = 0b11 << 1;
const BAR_PREFETCHABLE: u32 = 1 << 3;

/// Sizes `count` (at most 6) BAR registers starting at `first` — 0x10 for a header's BARs,
/// SR-IOV capability + 0x24 for VF BARs — the way PCI Local Bus 3.0 §6.2.5.1 describes: write
/// all-ones, read back, and restore the original value. The caller has turned decoding off
/// (COMMAND Memory/I/O Space, or VF MSE), so the all-ones address is never decoded.
///
/// A register that reads back 0 is unimplemented. A register whose original value reads
/// all-ones, or whose read-only type bits change between the two reads, belongs to a function
/// that vanished ([`Error::FunctionVanished`], checked with one read of the vendor ID) or is
/// garbage (reported in [`SizedBars::invalid`]). Accesses: two reads and one write per
/// unimplemented register, two reads and two writes per implemented 32-bit register.
pub(crate) fn size_registers<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    first: u16,
    count: u8,
) -> Result<SizedBars> {
    let mut out = SizedBars::default();
    let count = count.min(6);
    let mut i = 0u8;
    while i < count {
        let off = first + 4 * u16::from(i);
        let (orig, mask) = probe_register(cfg, bdf, off);
        let index = i;
        i += 1;
        if mask == 0 && orig == 0 {
            continue;
        }
        // Type bits are read-only, so they must survive the all-ones write; no valid BAR reads
        // all-ones (bit 1 of an I/O BAR is reserved, memory type 11b is reserved).
        let type_bits = if orig & BAR_IO != 0 { 0b11 } else { 0b1111 };
        if orig == u32::MAX || mask == u32::MAX || (orig ^ mask) & type_bits != 0 {
            if cfg.read16(bdf, reg::VENDOR_ID) == u16::MAX {
                return Err(Error::FunctionVanished { bdf });
            }
            out.invalid.get_or_insert((off, mask));
            continue;
        }
        let decoded = if mask & BAR_IO != 0 {
            // A 16-bit I/O decoder may hardwire the upper 16 address bits to 0 (PCI Local Bus
            // 3.0 §6.2.5.1); they still count as "don't care" for the size.
            let mut address_mask = mask & !0x3;
            if address_mask & 0xffff_0000 == 0 {
                address_mask |= 0xffff_0000;
            }
            let size = u64::from((!address_mask).wrapping_add(1));
            Some(Bar { index, kind: BarKind::Io, size, base: u64::from(orig & !0x3) })
        } else {
            let prefetchable = mask & BAR_PREFETCHABLE != 0;
            match mask & BAR_MEM_TYPE_MASK {
                BAR_MEM_TYPE_RESERVED => None,
                BAR_MEM_TYPE_64 => {
                    if i >= count {
                        // The upper half would be past the last register.
                        None
                    } else {
                        let (hi_orig, hi_mask) = probe_register(cfg, bdf, off + 4);
                        i += 1;
                        if hi_orig == u32::MAX && cfg.read16(bdf, reg::VENDOR_ID) == u16::MAX {
                            return Err(Error::FunctionVanished { bdf });
                        }
                        let address_mask = (u64::from(hi_mask) << 32) | u64::from(mask & !0xf);
                        let size = (!address_mask).wrapping_add(1);
                        let base = (u64::from(hi_orig) << 32) | u64::from(orig & !0xf);
                        Some(Bar { index, kind: BarKind::Memory64 { prefetchable }, size, base })
                    }
                }
                // 32-bit, or "below 1 MiB" (00b/01b; the latter is obsolete and treated alike).
                _ => {
                    let size = u64::from((!(mask & !0xf)).wrapping_add(1));
                    Some(Bar {
                        index,
                        kind: BarKind::Memory32 { prefetchable },
                        size,
                        base: u64::from(orig & !0xf),
                    })
                }
            }
        };
        // A size that is not a power of two comes from a mask with holes: garbage.
        match decoded {
            Some(bar) if bar.size.is_power_of_two() => {
                if let Some(slot) = out.bars.get_mut(usize::from(index)) {
                    *slot = Some(bar);
                }
            }
            _ => {
                out.invalid.get_or_insert((off, mask));
            }
        }
    }
    Ok(out)
}

/// Writes all-ones to the register at `off`, reads the mask back and restores the original
/// value if the write changed it. Returns (original, mask).
fn probe_register<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, off: u16) -> (u32, u32) {
    let orig = cfg.read32(bdf, off);
    cfg.write32(bdf, off, u32::MAX);
    let mask = cfg.read32(bdf, off);
    // An unimplemented (hardwired) register reads back what it held: nothing to restore.
    if mask != orig {
        cfg.write32(bdf, off, orig);
    }
    (orig, mask)
}

/// Programs the BAR whose low register is at `off` with `base` (the type bits are read-only,
/// so writing the bare address keeps them): one write, two for a 64-bit BAR.
pub(crate) fn write_bar<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    off: u16,
    kind: BarKind,
    base: u64,
) {
    // CAST: the low and high halves of the address.
    cfg.write32(bdf, off, base as u32);
    if matches!(kind, BarKind::Memory64 { .. }) {
        cfg.write32(bdf, off + 4, (base >> 32) as u32);
    }
}

/// Bridge window granularity: memory and prefetchable windows are 1 MiB granular (address bits
/// 31:20 in the base/limit registers), I/O windows 4 KiB (bits 15:12), PCIe Base 6.0
/// §7.5.1.3.6-9.
pub const MEMORY_WINDOW_GRANULE: u64 = 1 << 20;
/// See [`MEMORY_WINDOW_GRANULE`].
pub const IO_WINDOW_GRANULE: u64 = 1 << 12;

/// The low nibble of I/O Base / Prefetchable Base: 1 = 32-bit I/O / 64-bit prefetchable.
const WINDOW_WIDE: u32 = 0x1;

/// What a bridge forwards downstream, as its registers say (PCI-to-PCI Bridge 1.2 §3.2.5.6-10).
/// A window whose base is above its limit is off (`None`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BridgeWindows {
    /// I/O window.
    pub io: Option<Window>,
    /// Non-prefetchable memory window (32-bit).
    pub memory: Option<Window>,
    /// Prefetchable memory window (64-bit when the bridge supports it).
    pub prefetchable: Option<Window>,
}

impl BridgeWindows {
    /// Reads the windows of the bridge at `bdf`: four reads, five when the prefetchable window
    /// is 64-bit, six when the I/O window is 32-bit.
    pub fn read<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Self {
        let io = cfg.read32(bdf, reg::IO_BASE);
        let (io_base_reg, io_limit_reg) = (io & 0xff, (io >> 8) & 0xff);
        let (mut io_base, mut io_limit) =
            (u64::from(io_base_reg & 0xf0) << 8, (u64::from(io_limit_reg & 0xf0) << 8) | 0xfff);
        if io_base_reg & 0xf == WINDOW_WIDE {
            let upper = cfg.read32(bdf, reg::IO_BASE_UPPER);
            io_base |= u64::from(upper & 0xffff) << 16;
            io_limit |= u64::from(upper >> 16) << 16;
        }
        let memory = cfg.read32(bdf, reg::MEMORY_BASE);
        let memory_base = u64::from(memory & 0xfff0) << 16;
        let memory_limit = (u64::from((memory >> 16) & 0xfff0) << 16) | 0xf_ffff;
        let pref = cfg.read32(bdf, reg::PREF_MEMORY_BASE);
        let mut pref_base = u64::from(pref & 0xfff0) << 16;
        let mut pref_limit = (u64::from((pref >> 16) & 0xfff0) << 16) | 0xf_ffff;
        if pref & 0xf == WINDOW_WIDE {
            pref_base |= u64::from(cfg.read32(bdf, reg::PREF_BASE_UPPER)) << 32;
            pref_limit |= u64::from(cfg.read32(bdf, reg::PREF_LIMIT_UPPER)) << 32;
        }
        let window =
            |base: u64, limit: u64| (base <= limit).then(|| Window::new(base, limit - base + 1));
        // A bridge without an I/O window reads 0 in both registers: that decodes as base 0,
        // limit 0xfff, so a zero register pair is reported as no window.
        let io = if io & 0xffff == 0 { None } else { window(io_base, io_limit) };
        Self {
            io,
            memory: window(memory_base, memory_limit),
            prefetchable: window(pref_base, pref_limit),
        }
    }
}

/// Programs the non-prefetchable memory window (`None`: off, base above limit). One write.
pub(crate) fn write_memory_window<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    window: Option<Window>,
) {
    let value = match window {
        // CAST: address bits 31:20 of base and limit; the window is below 4 GiB.
        Some(w) => {
            ((((w.end() - 1) >> 16) as u32 & 0xfff0) << 16) | ((w.base >> 16) as u32 & 0xfff0)
        }
        None => 0x0000_fff0,
    };
    cfg.write32(bdf, reg::MEMORY_BASE, value);
}

/// Programs the prefetchable window; the upper registers only when the window is 64-bit
/// (`wide`). Off is base 0xfff0_0000 above limit 0x000f_ffff with zero upper halves. One write,
/// three when `wide`.
pub(crate) fn write_prefetchable_window<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    window: Option<Window>,
    wide: bool,
) {
    let (base, limit) = match window {
        Some(w) => (w.base, w.end() - 1),
        None => (0xfff0_0000, 0x000f_ffff),
    };
    // CAST: address bits 31:20 into bits 15:4 of each half.
    let low = ((((limit >> 16) as u32) & 0xfff0) << 16) | (((base >> 16) as u32) & 0xfff0);
    cfg.write32(bdf, reg::PREF_MEMORY_BASE, low);
    if wide {
        // CAST: address bits 63:32.
        cfg.write32(bdf, reg::PREF_BASE_UPPER, (base >> 32) as u32);
        cfg.write32(bdf, reg::PREF_LIMIT_UPPER, (limit >> 32) as u32);
    }
}

/// Programs the I/O window; the upper registers only when it is 32-bit (`wide`). A 16-bit write
/// to I/O Base/Limit: the dword also holds Secondary Status, whose error bits are RW1C. One
/// write, two when `wide`.
pub(crate) fn write_io_window<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    window: Option<Window>,
    wide: bool,
) {
    let (base, limit) = match window {
        Some(w) => (w.base, w.end() - 1),
        None => (0xf000, 0x0fff),
    };
    // CAST: address bits 15:12 into bits 7:4 of each byte.
    let low = ((((limit >> 8) as u16) & 0xf0) << 8) | (((base >> 8) as u16) & 0xf0);
    cfg.write16(bdf, reg::IO_BASE, low);
    if wide {
        // CAST: address bits 31:16.
        cfg.write32(
            bdf,
            reg::IO_BASE_UPPER,
            (((limit >> 16) as u32 & 0xffff) << 16) | ((base >> 16) as u32 & 0xffff),
        );
    }
}

/// Which windows a bridge implements, found the way Linux `pci_read_bridge_windows` does: a
/// base register that reads 0 is written with a pattern and read back (a missing window stays
/// 0). The pattern is not restored: the caller programs the window (or turns it off) next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowSupport {
    /// I/O window present.
    pub(crate) io: bool,
    /// I/O window is 32-bit.
    pub(crate) io32: bool,
    /// Prefetchable window present.
    pub(crate) pref: bool,
    /// Prefetchable window is 64-bit.
    pub(crate) pref64: bool,
}

impl WindowSupport {
    /// Probes the bridge at `bdf`; `io` and `pref` say which windows the caller will use (the
    /// others are not probed). Two reads, and a write and a read per window that reads 0.
    pub(crate) fn probe<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, io: bool, pref: bool) -> Self {
        let mut s = Self::default();
        if io {
            // CAST: I/O Base and I/O Limit, the low half of the dword (Secondary Status above).
            let mut v = cfg.read32(bdf, reg::IO_BASE) as u16;
            if v == 0 {
                cfg.write16(bdf, reg::IO_BASE, 0xf0f0);
                // CAST: as above.
                v = cfg.read32(bdf, reg::IO_BASE) as u16;
            }
            s.io = v != 0 && v != u16::MAX;
            s.io32 = s.io && u32::from(v) & 0xf == WINDOW_WIDE;
        }
        if pref {
            let mut v = cfg.read32(bdf, reg::PREF_MEMORY_BASE);
            if v == 0 {
                cfg.write32(bdf, reg::PREF_MEMORY_BASE, 0xfff0_fff0);
                v = cfg.read32(bdf, reg::PREF_MEMORY_BASE);
            }
            s.pref = v != 0 && v != u32::MAX;
            s.pref64 = s.pref && v & 0xf == WINDOW_WIDE;
        }
        s
    }
}
