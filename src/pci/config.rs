//! Configuration-space access, and the register layout every PCI function shares.
//!
//! [`ConfigAccess`] is what enumeration, the capability walkers and the capability drivers use:
//! [`Ecam`](super::Ecam) implements it over MMIO, [`EcamSet`](super::EcamSet) over several
//! segments, and `sim::Topology` over a software model for host tests.

use crate::addr::Bdf;

/// Reads and writes of configuration space (PCIe Base 6.0 §7.2).
///
/// Accesses are naturally aligned; `offset` is below 4096. A read nobody claims (an absent
/// function, a bus outside every window) returns all-ones, as a PCIe read completed with
/// Unsupported Request does; a write nobody claims is dropped. Writes have the exact width asked
/// for: status registers hold RW1C bits, so a 16-bit write must not be done as a
/// read-modify-write of 32 bits.
pub trait ConfigAccess {
    /// Reads 32 bits at a 4-byte-aligned `offset`.
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    /// Writes 32 bits at a 4-byte-aligned `offset`.
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);
    /// Writes 16 bits at a 2-byte-aligned `offset`.
    fn write16(&self, bdf: Bdf, offset: u16, value: u16);
    /// Writes 8 bits.
    fn write8(&self, bdf: Bdf, offset: u16, value: u8);

    /// Reads 16 bits at a 2-byte-aligned `offset` (one 32-bit read).
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        // CAST: the selected half of the dword.
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    /// Reads 8 bits (one 32-bit read).
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        // CAST: the selected byte of the dword.
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }
}

impl<T: ConfigAccess + ?Sized> ConfigAccess for &T {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        (**self).read32(bdf, offset)
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        (**self).write32(bdf, offset, value)
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        (**self).write16(bdf, offset, value)
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        (**self).write8(bdf, offset, value)
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (**self).read16(bdf, offset)
    }
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (**self).read8(bdf, offset)
    }
}

/// Counts of configuration accesses, for the cost of enumeration (each one traps in a nested or
/// emulated setup, so fewer is better).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AccessCounts {
    /// Reads of any width.
    pub reads: u64,
    /// Writes of any width.
    pub writes: u64,
}

impl core::ops::Sub for AccessCounts {
    type Output = AccessCounts;
    fn sub(self, earlier: AccessCounts) -> AccessCounts {
        AccessCounts {
            reads: self.reads.saturating_sub(earlier.reads),
            writes: self.writes.saturating_sub(earlier.writes),
        }
    }
}

/// Register offsets of the common header and of type 0 and type 1 headers (PCIe Base 6.0
/// §7.5.1).
#[allow(missing_docs, reason = "the names are the specification's register names")]
pub mod reg {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION_CLASS: u16 = 0x08;
    pub const CACHE_LINE: u16 = 0x0c;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BAR0: u16 = 0x10;
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    pub const INTERRUPT_LINE: u16 = 0x3c;
    // Type 0.
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    pub const EXPANSION_ROM: u16 = 0x30;
    // Type 1 (bridges).
    pub const PRIMARY_BUS: u16 = 0x18;
    pub const SECONDARY_BUS: u16 = 0x19;
    pub const SUBORDINATE_BUS: u16 = 0x1a;
    pub const IO_BASE: u16 = 0x1c;
    pub const IO_LIMIT: u16 = 0x1d;
    pub const SECONDARY_STATUS: u16 = 0x1e;
    pub const MEMORY_BASE: u16 = 0x20;
    pub const MEMORY_LIMIT: u16 = 0x22;
    pub const PREF_MEMORY_BASE: u16 = 0x24;
    pub const PREF_MEMORY_LIMIT: u16 = 0x26;
    pub const PREF_BASE_UPPER: u16 = 0x28;
    pub const PREF_LIMIT_UPPER: u16 = 0x2c;
    pub const IO_BASE_UPPER: u16 = 0x30;
    pub const IO_LIMIT_UPPER: u16 = 0x32;
    pub const BRIDGE_EXPANSION_ROM: u16 = 0x38;
    pub const BRIDGE_CONTROL: u16 = 0x3e;

    /// COMMAND bits.
    pub const COMMAND_IO: u16 = 1 << 0;
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// STATUS bit: a capability list exists.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// HEADER_TYPE: layout in bits 6:0, multi-function in bit 7.
    pub const HEADER_MULTI_FUNCTION: u8 = 0x80;
    pub const HEADER_LAYOUT_MASK: u8 = 0x7f;
    /// Extended configuration space starts here (PCIe Base 6.0 §7.6).
    pub const EXTENDED_CAPABILITIES: u16 = 0x100;
}
