//! Capability walkers: the legacy list (PCIe Base 6.0 §7.5.1.1.11) in the first 256 bytes and
//! the extended list (§7.6.3) from 0x100.
//!
//! Configuration space is hostile input: a device (or a function that disappears in the middle
//! of a walk) can present a list that loops, points into the header or past the end, or reads
//! all-ones. Every walk here is bounded twice — by a bitmap of the offsets visited (a loop is an
//! error as soon as an offset comes round again) and by a step count equal to the number of
//! slots the list's space holds — and never panics. An all-ones header makes the walker re-read
//! the vendor ID (and, since a VF's reads 0xffff, the Command/Status dword), to tell a vanished
//! function ([`Error::FunctionVanished`]) from a present one returning garbage
//! ([`Error::CapabilityHeader`]).
//!
//! Each step costs one 32-bit configuration read (every read may trap in a nested setup): the
//! legacy walk reads the Status register and the Capabilities Pointer once, then one dword per
//! capability; the extended walk one dword per capability.

use core::iter::FusedIterator;

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::config::{ConfigAccess, reg};
use crate::pci::topology::{Acs, Capabilities};

/// Capability IDs: [`id::legacy`] for the list at 0x34 (PCI Code and ID Assignment spec §2),
/// [`id::extended`] for the list at 0x100 (§3). The most used ones are re-exported at the top.
pub mod id {
    pub use self::extended::{ACS, AER, ARI, ATS, DOE, PASID, PRI, SRIOV};
    pub use self::legacy::{MSI, MSIX, PCIE, PM};

    /// Legacy capability IDs (8 bits).
    #[allow(missing_docs, reason = "the names are the ID assignment spec's capability names")]
    pub mod legacy {
        pub const PM: u8 = 0x01;
        pub const AGP: u8 = 0x02;
        pub const VPD: u8 = 0x03;
        pub const SLOT_ID: u8 = 0x04;
        pub const MSI: u8 = 0x05;
        pub const COMPACTPCI_HOT_SWAP: u8 = 0x06;
        pub const PCIX: u8 = 0x07;
        pub const HYPERTRANSPORT: u8 = 0x08;
        pub const VENDOR: u8 = 0x09;
        pub const DEBUG_PORT: u8 = 0x0a;
        pub const COMPACTPCI_CRC: u8 = 0x0b;
        pub const HOT_PLUG: u8 = 0x0c;
        pub const BRIDGE_SUBSYSTEM_VENDOR: u8 = 0x0d;
        pub const AGP_8X: u8 = 0x0e;
        pub const SECURE_DEVICE: u8 = 0x0f;
        pub const PCIE: u8 = 0x10;
        pub const MSIX: u8 = 0x11;
        pub const SATA: u8 = 0x12;
        pub const ADVANCED_FEATURES: u8 = 0x13;
        pub const ENHANCED_ALLOCATION: u8 = 0x14;
        pub const FLATTENING_PORTAL_BRIDGE: u8 = 0x15;
    }

    /// Extended capability IDs (16 bits).
    #[allow(missing_docs, reason = "the names are the ID assignment spec's capability names")]
    pub mod extended {
        /// The Null capability: a header with no registers.
        pub const NULL: u16 = 0x0000;
        pub const AER: u16 = 0x0001;
        pub const VC: u16 = 0x0002;
        pub const DSN: u16 = 0x0003;
        pub const POWER_BUDGET: u16 = 0x0004;
        pub const RC_LINK_DECLARATION: u16 = 0x0005;
        pub const RC_INTERNAL_LINK_CONTROL: u16 = 0x0006;
        pub const RCEC_ASSOCIATION: u16 = 0x0007;
        pub const MFVC: u16 = 0x0008;
        pub const VC_9: u16 = 0x0009;
        pub const RCRB_HEADER: u16 = 0x000a;
        pub const VENDOR: u16 = 0x000b;
        pub const CAC: u16 = 0x000c;
        pub const ACS: u16 = 0x000d;
        pub const ARI: u16 = 0x000e;
        pub const ATS: u16 = 0x000f;
        pub const SRIOV: u16 = 0x0010;
        pub const MRIOV: u16 = 0x0011;
        pub const MULTICAST: u16 = 0x0012;
        pub const PRI: u16 = 0x0013;
        pub const RESIZABLE_BAR: u16 = 0x0015;
        pub const DPA: u16 = 0x0016;
        pub const TPH: u16 = 0x0017;
        pub const LTR: u16 = 0x0018;
        pub const SECONDARY_PCIE: u16 = 0x0019;
        pub const PMUX: u16 = 0x001a;
        pub const PASID: u16 = 0x001b;
        pub const LNR: u16 = 0x001c;
        pub const DPC: u16 = 0x001d;
        pub const L1_PM_SUBSTATES: u16 = 0x001e;
        pub const PTM: u16 = 0x001f;
        pub const MPCIE: u16 = 0x0020;
        pub const FRS_QUEUEING: u16 = 0x0021;
        pub const READINESS_TIME_REPORTING: u16 = 0x0022;
        pub const DVSEC: u16 = 0x0023;
        pub const VF_RESIZABLE_BAR: u16 = 0x0024;
        pub const DATA_LINK_FEATURE: u16 = 0x0025;
        pub const PL_16GT: u16 = 0x0026;
        pub const LANE_MARGINING: u16 = 0x0027;
        pub const HIERARCHY_ID: u16 = 0x0028;
        pub const NPEM: u16 = 0x0029;
        pub const PL_32GT: u16 = 0x002a;
        pub const ALTERNATE_PROTOCOL: u16 = 0x002b;
        pub const SFI: u16 = 0x002c;
        pub const SHADOW_FUNCTIONS: u16 = 0x002d;
        pub const DOE: u16 = 0x002e;
        pub const DEVICE_3: u16 = 0x002f;
        pub const IDE: u16 = 0x0030;
        pub const PL_64GT: u16 = 0x0031;
        pub const FLIT_LOGGING: u16 = 0x0032;
        pub const FLIT_PERFORMANCE_MEASUREMENT: u16 = 0x0033;
        pub const FLIT_ERROR_INJECTION: u16 = 0x0034;
    }
}

/// First offset a legacy capability may sit at: the header ends at 0x40.
pub const LEGACY_START: u16 = 0x40;
/// Last offset a legacy capability may sit at (dword-aligned, below 0x100).
pub const LEGACY_END: u16 = 0xfc;
/// Most legacy capabilities a walk visits: the dword slots in 0x40..0x100. A list that is
/// longer must revisit a slot, so the loop check fires first; the bound stands on its own all
/// the same, so the walk stays finite even if the loop check were wrong.
pub const LEGACY_MAX_STEPS: u16 = (0x100 - LEGACY_START) / 4;
/// Most extended capabilities a walk visits: the dword slots in 0x100..0x1000.
pub const EXTENDED_MAX_STEPS: u16 = (0x1000 - reg::EXTENDED_CAPABILITIES) / 4;

/// Whether `bdf` no longer answers: its reads complete as Unsupported Request, all-ones.
///
/// The Vendor ID alone does not tell: a VF's Vendor ID reads 0xffff by definition (PCIe Base
/// 6.0 §9.3.4). So a Vendor ID of 0xffff is confirmed with the Command/Status dword, which a
/// function that answers never returns as all-ones (Command bits 15:11 are reserved, §7.5.1.1.3).
/// Called only after an all-ones read, so a present function costs nothing extra.
pub(crate) fn vanished<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> bool {
    cfg.read16(bdf, reg::VENDOR_ID) == u16::MAX && cfg.read32(bdf, reg::COMMAND) == u32::MAX
}

/// Reads 32 bits of a capability register; all-ones from a function that [vanished] is
/// [`Error::FunctionVanished`] (a register may legitimately hold all-ones). The capability
/// drivers read through this so that a vanished function is never mistaken for one whose
/// every bit is set.
pub(crate) fn read32_present<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    offset: u16,
) -> Result<u32> {
    let value = cfg.read32(bdf, offset);
    if value == u32::MAX && vanished(cfg, bdf) {
        return Err(Error::FunctionVanished { bdf });
    }
    Ok(value)
}

/// Two adjacent 16-bit registers (low half at `offset`, high half at `offset + 2`) in one
/// 32-bit read, with the vanished-function check of [`read32_present`]: capability drivers read
/// Capability/Control or Control/Status pairs this way, one config access instead of two.
pub(crate) fn read_halves<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    offset: u16,
) -> Result<(u16, u16)> {
    let value = read32_present(cfg, bdf, offset)?;
    // CAST: the two halves of the dword.
    Ok((value as u16, (value >> 16) as u16))
}

/// After an all-ones read: [`Error::FunctionVanished`] if the function no longer answers, else
/// `present` (the device is there but returned garbage).
fn vanished_or<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, present: Error) -> Error {
    if vanished(cfg, bdf) { Error::FunctionVanished { bdf } } else { present }
}

#[derive(Clone, Copy, Debug)]
enum LegacyState {
    Start,
    /// The next capability's offset (low bits masked) and where that pointer was read.
    Next {
        pointer: u16,
        from: u16,
    },
    Done,
}

/// Iterator over the legacy capability list: `(id, offset)` of each capability, in list order.
/// After an error it yields nothing more. See [`legacy`].
#[derive(Clone, Debug)]
pub struct LegacyCaps<'a, C: ?Sized> {
    cfg: &'a C,
    bdf: Bdf,
    state: LegacyState,
    /// One bit per dword slot in 0x40..0x100.
    visited: u64,
    steps: u16,
}

/// Walks `bdf`'s legacy capability list (PCIe Base 6.0 §7.5.1.1.11), if Status.Capabilities
/// List is set. Pointers have their reserved low two bits masked, as the spec tells software to.
pub fn legacy<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> LegacyCaps<'_, C> {
    LegacyCaps { cfg, bdf, state: LegacyState::Start, visited: 0, steps: 0 }
}

impl<C: ConfigAccess + ?Sized> LegacyCaps<'_, C> {
    fn step(&mut self) -> Result<Option<(u8, u16)>> {
        let (pointer, from) = match self.state {
            LegacyState::Done => return Ok(None),
            LegacyState::Start => {
                // Command and Status in one read; all-ones there is no valid Command register.
                let command_status = self.cfg.read32(self.bdf, reg::COMMAND);
                if command_status == u32::MAX && vanished(self.cfg, self.bdf) {
                    return Err(Error::FunctionVanished { bdf: self.bdf });
                }
                // CAST: Status is the high half of the dword at 0x04.
                if (command_status >> 16) as u16 & reg::STATUS_CAP_LIST == 0 {
                    return Ok(None);
                }
                let pointer = u16::from(self.cfg.read8(self.bdf, reg::CAPABILITIES_POINTER) & 0xfc);
                (pointer, reg::CAPABILITIES_POINTER)
            }
            LegacyState::Next { pointer, from } => (pointer, from),
        };
        if pointer == 0 {
            return Ok(None);
        }
        if !(LEGACY_START..=LEGACY_END).contains(&pointer) {
            return Err(Error::CapabilityPointer { bdf: self.bdf, offset: from, pointer });
        }
        let bit = 1u64 << ((pointer - LEGACY_START) / 4);
        if self.visited & bit != 0 {
            return Err(Error::CapabilityLoop { bdf: self.bdf, offset: pointer });
        }
        if self.steps >= LEGACY_MAX_STEPS {
            return Err(Error::CapabilityChainTooLong { bdf: self.bdf, limit: LEGACY_MAX_STEPS });
        }
        self.visited |= bit;
        self.steps += 1;
        let header = self.cfg.read32(self.bdf, pointer);
        if header == u32::MAX {
            // ID 0xff is unassigned, so an all-ones dword is never a real capability.
            return Err(vanished_or(
                self.cfg,
                self.bdf,
                Error::CapabilityHeader { bdf: self.bdf, offset: pointer, header },
            ));
        }
        // CAST: ID in bits 7:0, next pointer in bits 15:8.
        let (id, next) = (header as u8, (header >> 8) as u8 & 0xfc);
        self.state = LegacyState::Next { pointer: u16::from(next), from: pointer + 1 };
        Ok(Some((id, pointer)))
    }
}

impl<C: ConfigAccess + ?Sized> Iterator for LegacyCaps<'_, C> {
    type Item = Result<(u8, u16)>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.step();
        if !matches!(item, Ok(Some(_))) {
            self.state = LegacyState::Done;
        }
        item.transpose()
    }
}

impl<C: ConfigAccess + ?Sized> FusedIterator for LegacyCaps<'_, C> {}

/// Iterator over the extended capability list: `(id, version, offset)` of each capability, in
/// list order. After an error it yields nothing more. See [`extended`].
#[derive(Clone, Debug)]
pub struct ExtendedCaps<'a, C: ?Sized> {
    cfg: &'a C,
    bdf: Bdf,
    /// The next header's offset (0: done) and where the pointer to it was read (0 for 0x100).
    pointer: u16,
    from: u16,
    /// One bit per dword slot in 0x100..0x1000.
    visited: [u64; 15],
    steps: u16,
}

/// Walks `bdf`'s extended capability list (PCIe Base 6.0 §7.6.3) from 0x100.
///
/// A header of 0 at 0x100 means no extended capabilities; all-ones there means no extended
/// configuration space (a conventional function, or an access mechanism that does not reach
/// past 0x100) unless the function vanished. Next pointers have their reserved low two bits
/// masked (§7.6.3: "software must mask them"); one below 0x100 is an error.
pub fn extended<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> ExtendedCaps<'_, C> {
    ExtendedCaps {
        cfg,
        bdf,
        pointer: reg::EXTENDED_CAPABILITIES,
        from: 0,
        visited: [0; 15],
        steps: 0,
    }
}

impl<C: ConfigAccess + ?Sized> ExtendedCaps<'_, C> {
    fn step(&mut self) -> Result<Option<(u16, u8, u16)>> {
        let pointer = self.pointer;
        if pointer == 0 {
            return Ok(None);
        }
        if !(reg::EXTENDED_CAPABILITIES..0x1000).contains(&pointer) {
            return Err(Error::CapabilityPointer { bdf: self.bdf, offset: self.from, pointer });
        }
        let slot = usize::from((pointer - reg::EXTENDED_CAPABILITIES) / 4);
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        // `slot` < 960 = 15 * 64, so `word` is in range; `get_mut` keeps that a non-panicking fact.
        let Some(visited) = self.visited.get_mut(word) else {
            return Err(Error::CapabilityPointer { bdf: self.bdf, offset: self.from, pointer });
        };
        if *visited & bit != 0 {
            return Err(Error::CapabilityLoop { bdf: self.bdf, offset: pointer });
        }
        if self.steps >= EXTENDED_MAX_STEPS {
            return Err(Error::CapabilityChainTooLong { bdf: self.bdf, limit: EXTENDED_MAX_STEPS });
        }
        *visited |= bit;
        self.steps += 1;
        let header = self.cfg.read32(self.bdf, pointer);
        let first = pointer == reg::EXTENDED_CAPABILITIES && self.from == 0;
        if header == u32::MAX {
            let garbage = Error::CapabilityHeader { bdf: self.bdf, offset: pointer, header };
            return match vanished_or(self.cfg, self.bdf, garbage) {
                // No extended configuration space: nothing to walk.
                Error::CapabilityHeader { .. } if first => Ok(None),
                e => Err(e),
            };
        }
        if header == 0 {
            // At 0x100: no capabilities (§7.6.3). Elsewhere: a Null capability ending the list.
            return Ok(None);
        }
        // CAST: ID in bits 15:0, version in 19:16, next offset in 31:20.
        let (id, version) = (header as u16, (header >> 16) as u8 & 0xf);
        // CAST: a 12-bit field.
        self.pointer = (header >> 20) as u16 & 0xffc;
        self.from = pointer;
        Ok(Some((id, version, pointer)))
    }
}

impl<C: ConfigAccess + ?Sized> Iterator for ExtendedCaps<'_, C> {
    type Item = Result<(u16, u8, u16)>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.step();
        if !matches!(item, Ok(Some(_))) {
            self.pointer = 0;
        }
        item.transpose()
    }
}

impl<C: ConfigAccess + ?Sized> FusedIterator for ExtendedCaps<'_, C> {}

/// Offset of the first legacy capability with ID `id`, or `None`. Stops at the first match, so
/// a malformed list past it is not seen.
pub fn find<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, id: u8) -> Result<Option<u16>> {
    for cap in legacy(cfg, bdf) {
        let (found, offset) = cap?;
        if found == id {
            return Ok(Some(offset));
        }
    }
    Ok(None)
}

/// Offset of the first extended capability with ID `id`, or `None`. Stops at the first match.
pub fn find_extended<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, id: u16) -> Result<Option<u16>> {
    for cap in extended(cfg, bdf) {
        let (found, _, offset) = cap?;
        if found == id {
            return Ok(Some(offset));
        }
    }
    Ok(None)
}

/// Every capability [`Capabilities`] records, in one pass over each list, and the ACS
/// registers if the function has ACS (one more read).
///
/// The first capability of each ID wins (a duplicate is a device bug; the first is what every
/// other walker, Linux's included, would use). The extended list is walked only for functions
/// with a PCI Express capability: a conventional function has 256 bytes of configuration space
/// (PCIe Base 6.0 §7.2), and behind some bridges offsets above 0xff alias the first 256 bytes
/// (Linux `pci_cfg_space_size` avoids them for the same reason).
pub fn collect<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Result<(Capabilities, Option<Acs>)> {
    let mut caps = Capabilities::default();
    for cap in legacy(cfg, bdf) {
        let (cap_id, offset) = cap?;
        let slot = match cap_id {
            id::PCIE => &mut caps.pcie,
            id::PM => &mut caps.pm,
            id::MSI => &mut caps.msi,
            id::MSIX => &mut caps.msix,
            _ => continue,
        };
        if *slot == 0 {
            *slot = offset;
        }
    }
    if caps.pcie == 0 {
        return Ok((caps, None));
    }
    for cap in extended(cfg, bdf) {
        let (cap_id, _, offset) = cap?;
        let slot = match cap_id {
            id::AER => &mut caps.aer,
            id::ACS => &mut caps.acs,
            id::ARI => &mut caps.ari,
            id::ATS => &mut caps.ats,
            id::SRIOV => &mut caps.sriov,
            id::PRI => &mut caps.pri,
            id::PASID => &mut caps.pasid,
            _ => continue,
        };
        if *slot == 0 {
            *slot = offset;
        }
    }
    let acs = match caps.acs {
        0 => None,
        offset => Some(crate::pci::acs::read_registers(cfg, bdf, offset)?),
    };
    Ok((caps, acs))
}

/// A configuration space for tests: one function, 4 KiB, with bits that ignore writes
/// (read-only) or clear on a written 1 (RW1C), a switch that makes the function vanish after a
/// number of reads, and a read counter. Used by the walker and capability-driver tests.
#[cfg(test)]
pub(crate) mod fake {
    use core::cell::{Cell, RefCell};

    use super::*;

    pub(crate) struct FakeConfig {
        pub(crate) bdf: Bdf,
        space: RefCell<[u8; 4096]>,
        read_only: RefCell<[u8; 4096]>,
        rw1c: RefCell<[u8; 4096]>,
        pub(crate) reads: Cell<u64>,
        vanish_after: Cell<Option<u64>>,
    }

    impl FakeConfig {
        /// A present function (vendor 0x8086) with an empty Status and no capabilities.
        pub(crate) fn new() -> Self {
            let f = Self::from_bytes([0; 4096]);
            f.set32(0, 0x1234_8086);
            f
        }

        pub(crate) fn from_bytes(bytes: [u8; 4096]) -> Self {
            Self {
                bdf: Bdf::new(0, 3, 0, 0).unwrap(),
                space: RefCell::new(bytes),
                read_only: RefCell::new([0; 4096]),
                rw1c: RefCell::new([0; 4096]),
                reads: Cell::new(0),
                vanish_after: Cell::new(None),
            }
        }

        pub(crate) fn set32(&self, offset: u16, value: u32) {
            let o = usize::from(offset);
            self.space.borrow_mut()[o..o + 4].copy_from_slice(&value.to_le_bytes());
        }
        pub(crate) fn set16(&self, offset: u16, value: u16) {
            let o = usize::from(offset);
            self.space.borrow_mut()[o..o + 2].copy_from_slice(&value.to_le_bytes());
        }
        pub(crate) fn set8(&self, offset: u16, value: u8) {
            self.space.borrow_mut()[usize::from(offset)] = value;
        }
        pub(crate) fn get32(&self, offset: u16) -> u32 {
            let o = usize::from(offset);
            u32::from_le_bytes(self.space.borrow()[o..o + 4].try_into().unwrap())
        }
        /// Marks the bits of `mask` in the 32 bits at `offset` read-only.
        pub(crate) fn read_only32(&self, offset: u16, mask: u32) {
            let o = usize::from(offset);
            for (i, b) in mask.to_le_bytes().into_iter().enumerate() {
                self.read_only.borrow_mut()[o + i] |= b;
            }
        }
        /// Marks the bits of `mask` in the 32 bits at `offset` write-1-to-clear.
        pub(crate) fn rw1c32(&self, offset: u16, mask: u32) {
            let o = usize::from(offset);
            for (i, b) in mask.to_le_bytes().into_iter().enumerate() {
                self.rw1c.borrow_mut()[o + i] |= b;
            }
        }
        /// Every read after the next `reads` returns all-ones.
        pub(crate) fn vanish_after(&self, reads: u64) {
            self.vanish_after.set(Some(self.reads.get() + reads));
        }

        /// Sets Status.Capabilities List and the Capabilities Pointer.
        pub(crate) fn cap_list(&self, pointer: u8) {
            self.set16(reg::STATUS, reg::STATUS_CAP_LIST);
            self.set8(reg::CAPABILITIES_POINTER, pointer);
        }
        /// A legacy capability header.
        pub(crate) fn legacy_cap(&self, offset: u16, id: u8, next: u8) {
            self.set16(offset, u16::from(id) | u16::from(next) << 8);
        }
        /// An extended capability header (version 1).
        pub(crate) fn extended_cap(&self, offset: u16, id: u16, next: u16) {
            self.set32(offset, u32::from(id) | 1 << 16 | u32::from(next) << 20);
        }

        fn write(&self, bdf: Bdf, offset: u16, bytes: &[u8]) {
            if bdf != self.bdf || self.gone() {
                return;
            }
            let o = usize::from(offset);
            let (ro, w1c) = (self.read_only.borrow(), self.rw1c.borrow());
            let mut space = self.space.borrow_mut();
            for (i, &v) in bytes.iter().enumerate() {
                let (old, ro, w1c) = (space[o + i], ro[o + i], w1c[o + i]);
                space[o + i] = (old & ro) | (old & w1c & !v) | (v & !ro & !w1c);
            }
        }

        fn gone(&self) -> bool {
            self.vanish_after.get().is_some_and(|n| self.reads.get() > n)
        }
    }

    impl ConfigAccess for FakeConfig {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            self.reads.set(self.reads.get() + 1);
            if bdf != self.bdf || self.gone() || offset >= 4096 || !offset.is_multiple_of(4) {
                return u32::MAX;
            }
            self.get32(offset)
        }
        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            self.write(bdf, offset, &value.to_le_bytes());
        }
        fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
            self.write(bdf, offset, &value.to_le_bytes());
        }
        fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
            self.write(bdf, offset, &[value]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeConfig;
    use super::*;
    use proptest::prelude::*;

    fn legacy_ids(cfg: &FakeConfig) -> Result<std::vec::Vec<(u8, u16)>> {
        legacy(cfg, cfg.bdf).collect()
    }
    fn extended_ids(cfg: &FakeConfig) -> Result<std::vec::Vec<(u16, u8, u16)>> {
        extended(cfg, cfg.bdf).collect()
    }

    /// A PCIe endpoint: PM at 0x40 -> MSI at 0x50 -> PCIe at 0x70; AER at 0x100 -> ACS at 0x148
    /// -> ATS at 0x160.
    fn endpoint() -> FakeConfig {
        let f = FakeConfig::new();
        f.cap_list(0x40);
        f.legacy_cap(0x40, id::PM, 0x50);
        f.legacy_cap(0x50, id::MSI, 0x70);
        f.legacy_cap(0x70, id::PCIE, 0);
        f.extended_cap(0x100, id::AER, 0x148);
        f.extended_cap(0x148, id::ACS, 0x160);
        f.set32(0x14c, 0x0015_001f); // ACS capability 0x1f, control 0x15
        f.extended_cap(0x160, id::ATS, 0);
        f
    }

    #[test]
    fn walks_both_lists_and_collects() {
        let f = endpoint();
        assert_eq!(legacy_ids(&f).unwrap(), [(id::PM, 0x40), (id::MSI, 0x50), (id::PCIE, 0x70)]);
        assert_eq!(
            extended_ids(&f).unwrap(),
            [(id::AER, 1, 0x100), (id::ACS, 1, 0x148), (id::ATS, 1, 0x160)]
        );
        assert_eq!(find(&f, f.bdf, id::MSI), Ok(Some(0x50)));
        assert_eq!(find(&f, f.bdf, id::MSIX), Ok(None));
        assert_eq!(find_extended(&f, f.bdf, id::ATS), Ok(Some(0x160)));
        assert_eq!(find_extended(&f, f.bdf, id::PRI), Ok(None));
        let (caps, acs) = collect(&f, f.bdf).unwrap();
        assert_eq!(
            caps,
            Capabilities {
                pm: 0x40,
                msi: 0x50,
                pcie: 0x70,
                aer: 0x100,
                acs: 0x148,
                ats: 0x160,
                ..Default::default()
            }
        );
        assert_eq!(acs, Some(Acs { capability: 0x1f, control: 0x15 }));
    }

    #[test]
    fn collect_costs_one_read_per_capability() {
        let f = endpoint();
        collect(&f, f.bdf).unwrap();
        // Status, pointer, 3 legacy, 3 extended, ACS registers.
        assert_eq!(f.reads.get(), 2 + 3 + 3 + 1);
    }

    #[test]
    fn no_cap_list_bit_means_no_legacy_list() {
        let f = endpoint();
        f.set16(reg::STATUS, 0);
        assert_eq!(legacy_ids(&f).unwrap(), []);
        // Without a PCI Express capability the extended space is not looked at.
        assert_eq!(collect(&f, f.bdf).unwrap(), (Capabilities::default(), None));
    }

    #[test]
    fn legacy_pointer_low_bits_are_masked() {
        let f = FakeConfig::new();
        f.cap_list(0x43);
        f.legacy_cap(0x40, id::PM, 0x52);
        f.legacy_cap(0x50, id::PCIE, 0x03); // masks to 0: end
        assert_eq!(legacy_ids(&f).unwrap(), [(id::PM, 0x40), (id::PCIE, 0x50)]);
    }

    #[test]
    fn legacy_loop_is_an_error() {
        let f = FakeConfig::new();
        f.cap_list(0x40);
        f.legacy_cap(0x40, id::PM, 0x50);
        f.legacy_cap(0x50, id::MSI, 0x40);
        let mut walk = legacy(&f, f.bdf);
        assert_eq!(walk.next(), Some(Ok((id::PM, 0x40))));
        assert_eq!(walk.next(), Some(Ok((id::MSI, 0x50))));
        assert_eq!(walk.next(), Some(Err(Error::CapabilityLoop { bdf: f.bdf, offset: 0x40 })));
        assert_eq!(walk.next(), None, "fused after an error");
        // A capability pointing at itself.
        f.legacy_cap(0x50, id::MSI, 0x50);
        assert_eq!(legacy_ids(&f), Err(Error::CapabilityLoop { bdf: f.bdf, offset: 0x50 }));
        assert_eq!(
            find(&f, f.bdf, id::MSIX),
            Err(Error::CapabilityLoop { bdf: f.bdf, offset: 0x50 })
        );
    }

    #[test]
    fn legacy_pointer_into_the_header_is_an_error() {
        let f = FakeConfig::new();
        f.cap_list(0x30);
        assert_eq!(
            legacy_ids(&f),
            Err(Error::CapabilityPointer { bdf: f.bdf, offset: 0x34, pointer: 0x30 })
        );
        f.cap_list(0x40);
        f.legacy_cap(0x40, id::PM, 0x04);
        assert_eq!(
            legacy_ids(&f),
            Err(Error::CapabilityPointer { bdf: f.bdf, offset: 0x41, pointer: 0x04 })
        );
    }

    #[test]
    fn longest_legacy_chain_is_walked_and_one_more_step_is_a_loop() {
        let f = FakeConfig::new();
        f.cap_list(0x40);
        for slot in 0..48u16 {
            let offset = 0x40 + slot * 4;
            // CAST: offsets below 0x100.
            let next = if slot == 47 { 0 } else { (offset + 4) as u8 };
            f.legacy_cap(offset, id::legacy::VENDOR, next);
        }
        assert_eq!(legacy_ids(&f).unwrap().len(), usize::from(LEGACY_MAX_STEPS));
        f.legacy_cap(0xfc, id::legacy::VENDOR, 0x80);
        assert_eq!(legacy_ids(&f), Err(Error::CapabilityLoop { bdf: f.bdf, offset: 0x80 }));
        assert!(f.reads.get() < 2 * (2 + 48 + 2));
    }

    #[test]
    fn all_ones_mid_walk_tells_vanished_from_garbage() {
        let f = endpoint();
        // Status, pointer, PM, MSI are read; then the function is gone.
        f.vanish_after(4);
        assert_eq!(legacy_ids(&f), Err(Error::FunctionVanished { bdf: f.bdf }));

        let f = endpoint();
        f.vanish_after(1);
        assert_eq!(extended_ids(&f), Err(Error::FunctionVanished { bdf: f.bdf }));

        let f = endpoint();
        f.vanish_after(0);
        assert_eq!(legacy_ids(&f), Err(Error::FunctionVanished { bdf: f.bdf }));
        assert_eq!(collect(&f, f.bdf), Err(Error::FunctionVanished { bdf: f.bdf }));

        // Present, but a capability reads all-ones.
        let f = endpoint();
        f.set32(0x50, u32::MAX);
        assert_eq!(
            legacy_ids(&f),
            Err(Error::CapabilityHeader { bdf: f.bdf, offset: 0x50, header: u32::MAX })
        );
        f.set32(0x148, u32::MAX);
        assert_eq!(
            extended_ids(&f),
            Err(Error::CapabilityHeader { bdf: f.bdf, offset: 0x148, header: u32::MAX })
        );
    }

    #[test]
    fn no_extended_space_or_empty_list() {
        let f = endpoint();
        f.set32(0x100, u32::MAX);
        assert_eq!(extended_ids(&f).unwrap(), [], "all-ones at 0x100 with the function present");
        f.set32(0x100, 0);
        assert_eq!(extended_ids(&f).unwrap(), []);
        let f = FakeConfig::from_bytes([0xff; 4096]);
        assert_eq!(extended_ids(&f), Err(Error::FunctionVanished { bdf: f.bdf }));
    }

    #[test]
    fn extended_loop_and_bad_pointers() {
        let f = endpoint();
        f.extended_cap(0x160, id::ATS, 0x148);
        assert_eq!(extended_ids(&f), Err(Error::CapabilityLoop { bdf: f.bdf, offset: 0x148 }));
        f.extended_cap(0x160, id::ATS, 0x160);
        assert_eq!(
            find_extended(&f, f.bdf, id::PRI),
            Err(Error::CapabilityLoop { bdf: f.bdf, offset: 0x160 })
        );
        f.extended_cap(0x160, id::ATS, 0x0fc);
        assert_eq!(
            extended_ids(&f),
            Err(Error::CapabilityPointer { bdf: f.bdf, offset: 0x160, pointer: 0xfc })
        );
        f.extended_cap(0x160, id::ATS, 0x40);
        assert_eq!(
            collect(&f, f.bdf),
            Err(Error::CapabilityPointer { bdf: f.bdf, offset: 0x160, pointer: 0x40 })
        );
        // Reserved low bits are masked: 0x16a is 0x168.
        f.extended_cap(0x160, id::ATS, 0x16a);
        f.extended_cap(0x168, id::PRI, 0);
        assert_eq!(find_extended(&f, f.bdf, id::PRI), Ok(Some(0x168)));
        // A header of 0 after the first ends the list.
        f.set32(0x168, 0);
        assert_eq!(extended_ids(&f).unwrap().len(), 3);
    }

    #[test]
    fn longest_extended_chain_is_walked_and_one_more_step_is_a_loop() {
        let f = FakeConfig::new();
        for slot in 0..960u16 {
            let offset = 0x100 + slot * 4;
            let next = if slot == 959 { 0 } else { offset + 4 };
            f.extended_cap(offset, id::extended::VENDOR, next);
        }
        assert_eq!(extended_ids(&f).unwrap().len(), usize::from(EXTENDED_MAX_STEPS));
        f.extended_cap(0xffc, id::extended::VENDOR, 0x800);
        assert_eq!(extended_ids(&f), Err(Error::CapabilityLoop { bdf: f.bdf, offset: 0x800 }));
    }

    #[test]
    fn chain_bound_holds_without_the_loop_check() {
        // The step bound is checked after the loop bit, so reach it directly: a walker that has
        // already taken its maximum number of steps refuses the next one.
        let f = endpoint();
        let mut walk = extended(&f, f.bdf);
        walk.steps = EXTENDED_MAX_STEPS;
        assert_eq!(
            walk.next(),
            Some(Err(Error::CapabilityChainTooLong { bdf: f.bdf, limit: 960 }))
        );
        let mut walk = legacy(&f, f.bdf);
        walk.steps = LEGACY_MAX_STEPS;
        assert_eq!(walk.next(), Some(Err(Error::CapabilityChainTooLong { bdf: f.bdf, limit: 48 })));
    }

    #[test]
    fn errors_display_the_bad_values() {
        let bdf = Bdf::new(0, 3, 0, 0).unwrap();
        let e = Error::CapabilityPointer { bdf, offset: 0x41, pointer: 0x04 };
        assert_eq!(
            e.to_string(),
            "0000:03:00.0: capability pointer at 0x41 points to 0x4, outside the list"
        );
        assert_eq!(
            Error::CapabilityLoop { bdf, offset: 0x50 }.to_string(),
            "0000:03:00.0: capability list loops back to 0x50"
        );
        assert!(Error::CapabilityChainTooLong { bdf, limit: 48 }.to_string().contains("48"));
        assert!(Error::FunctionVanished { bdf }.to_string().contains("0000:03:00.0"));
        let e = Error::PriAllocationExceedsCapacity { bdf, allocation: 33, capacity: 32 };
        assert_eq!(e.to_string(), "0000:03:00.0: PRI allocation 33 exceeds capacity 32");
        let e = Error::SettingNotTaken { bdf, what: "ATS Control", wrote: 0x8003, read: 0 };
        assert_eq!(e.to_string(), "0000:03:00.0: ATS Control: wrote 0x8003, read back 0x0");
    }

    #[test]
    fn duplicates_keep_the_first() {
        let f = endpoint();
        f.extended_cap(0x160, id::ATS, 0x170);
        f.extended_cap(0x170, id::ACS, 0);
        let (caps, _) = collect(&f, f.bdf).unwrap();
        assert_eq!(caps.acs, 0x148);
    }

    mod against_the_sim {
        use super::*;
        use crate::sim::pci::{Capability, Function, SrIov, Topology};

        /// Every function of the rich q35 model: the walker finds exactly the capabilities the
        /// model placed, in one read per capability.
        #[test]
        fn q35_rich_matches_the_model() {
            let t = Topology::qemu_q35_rich();
            t.program_bus_numbers();
            let snapshot = t.snapshot();
            let mut walked = 0;
            for info in snapshot.functions.iter().filter(|f| f.present) {
                let Some(bdf) = info.bdf else { continue };
                let (caps, acs) = collect(&t, bdf).unwrap();
                assert_eq!(
                    Some(caps.pcie).filter(|&o| o != 0),
                    t.legacy_cap(info.id, id::PCIE),
                    "{bdf}"
                );
                assert_eq!(
                    Some(caps.msi).filter(|&o| o != 0),
                    t.legacy_cap(info.id, id::MSI),
                    "{bdf}"
                );
                if caps.pcie != 0 {
                    assert_eq!(
                        Some(caps.acs).filter(|&o| o != 0),
                        t.ext_cap(info.id, id::ACS),
                        "{bdf}"
                    );
                    assert_eq!(
                        Some(caps.sriov).filter(|&o| o != 0),
                        t.ext_cap(info.id, id::SRIOV),
                        "{bdf}"
                    );
                    assert_eq!(acs.is_some(), caps.acs != 0);
                }
                walked += 1;
            }
            assert!(walked > 10, "{walked} functions walked");
            let rp1 = t.bdf(t.find("rp1").unwrap()).unwrap();
            assert_eq!(
                collect(&t, rp1).unwrap().1.map(|a| a.capability),
                Some(crate::sim::pci::ACS_ALL)
            );
        }

        /// A VF's Vendor ID reads 0xffff: that alone must not make it look vanished.
        #[test]
        fn vfs_are_walked_and_vanish_when_disabled() {
            let t = Topology::builder()
                .device(
                    0,
                    0,
                    Function::endpoint(0x8086, 0x1572, 0x02_0000)
                        .name("pf")
                        .sriov(SrIov::new(1).offset_stride(1, 1).vf_cap(Capability::ats(0, false))),
                )
                .build();
            let pf = Bdf::new(0, 0, 0, 0).unwrap();
            let vf = Bdf::new(0, 0, 0, 1).unwrap();
            let sriov = find_extended(&t, pf, id::SRIOV).unwrap().unwrap();
            t.write16(pf, sriov + 0x10, 1);
            t.write16(pf, sriov + 0x08, 1);
            assert_eq!(t.read16(vf, reg::VENDOR_ID), 0xffff);
            let (caps, _) = collect(&t, vf).unwrap();
            assert!(caps.pcie != 0 && caps.ats != 0);
            // Garbage in the VF's list is garbage, not a vanished VF.
            let vf_id = t.find("pf").unwrap().vf(0);
            let header = t.peek32(vf_id, caps.ats) & 0x000f_ffff | 0x200 << 20;
            t.poke(vf_id, caps.ats, &header.to_le_bytes());
            t.poke(vf_id, 0x200, &[0xff; 4]);
            assert_eq!(
                find_extended(&t, vf, id::PRI),
                Err(Error::CapabilityHeader { bdf: vf, offset: 0x200, header: u32::MAX })
            );
            // VF Enable cleared: the VF is gone.
            t.write16(pf, sriov + 0x08, 0);
            assert_eq!(collect(&t, vf), Err(Error::FunctionVanished { bdf: vf }));
        }

        #[test]
        fn hostile_pokes() {
            let t = Topology::builder()
                .device(
                    1,
                    0,
                    Function::endpoint(0x8086, 0x10c9, 0x02_0000).name("ep").msi(1, true).aer(),
                )
                .build();
            let ep = Bdf::new(0, 0, 1, 0).unwrap();
            let id_ = t.find("ep").unwrap();
            let pcie = t.legacy_cap(id_, id::PCIE).unwrap();
            let msi = t.legacy_cap(id_, id::MSI).unwrap();
            let first = if pcie < msi { pcie } else { msi };
            // The last legacy capability points back at the first.
            let last = if pcie < msi { msi } else { pcie };
            // CAST: legacy offsets fit a byte.
            t.poke(id_, last + 1, &[first as u8]);
            assert_eq!(collect(&t, ep), Err(Error::CapabilityLoop { bdf: ep, offset: first }));
            t.poke(id_, last + 1, &[0x3c]);
            assert_eq!(
                collect(&t, ep),
                Err(Error::CapabilityPointer { bdf: ep, offset: last + 1, pointer: 0x3c })
            );
            t.poke(id_, last + 1, &[0]);
            // AER's next pointer into the legacy space.
            let aer = t.ext_cap(id_, id::AER).unwrap();
            let header = t.peek32(id_, aer) & 0x000f_ffff | 0x0f0 << 20;
            t.poke(id_, aer, &header.to_le_bytes());
            assert_eq!(
                collect(&t, ep),
                Err(Error::CapabilityPointer { bdf: ep, offset: aer, pointer: 0xf0 })
            );
            // Surprise removal.
            t.set_present(id_, false);
            assert_eq!(collect(&t, ep), Err(Error::FunctionVanished { bdf: ep }));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Random configuration spaces (biased towards plausible pointers) never panic a walker
        /// and never take it past its step bound.
        #[test]
        fn random_spaces_are_walked_in_bounded_steps(
            words in proptest::collection::vec(any::<u32>(), 1024),
            pointers in proptest::collection::vec((0u16..1024, 0u16..0x1000), 0..64),
            status in any::<u16>(),
            vanish in proptest::option::of(0u64..64),
        ) {
            let mut bytes = [0u8; 4096];
            for (i, w) in words.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            let f = FakeConfig::from_bytes(bytes);
            // Plant next pointers that land inside the lists, so long chains and loops occur.
            for &(word, target) in &pointers {
                let offset = word * 4;
                if offset >= 0x100 {
                    let old = f.get32(offset);
                    f.set32(offset, (old & 0x000f_ffff) | u32::from(target) << 20);
                } else if offset >= 0x40 {
                    // CAST: legacy pointers are 8 bits.
                    f.set8(offset + 1, (target % 0x100) as u8);
                }
            }
            f.set16(reg::STATUS, status);
            if let Some(n) = vanish {
                f.vanish_after(n);
            }
            let start = f.reads.get();
            let n = legacy(&f, f.bdf).count();
            prop_assert!(n <= usize::from(LEGACY_MAX_STEPS) + 1);
            // Command/Status, pointer, one per step, the vanish check's two re-reads.
            prop_assert!(f.reads.get() - start <= 2 + u64::from(LEGACY_MAX_STEPS) + 2);
            let start = f.reads.get();
            let n = extended(&f, f.bdf).count();
            prop_assert!(n <= usize::from(EXTENDED_MAX_STEPS) + 1);
            // One per step, and the vendor ID and Command/Status re-read after an all-ones header.
            prop_assert!(f.reads.get() - start <= u64::from(EXTENDED_MAX_STEPS) + 2);
            let _ = collect(&f, f.bdf);
            for cap in legacy(&f, f.bdf).flatten() {
                prop_assert!((LEGACY_START..=LEGACY_END).contains(&cap.1) && cap.1 % 4 == 0);
            }
            for cap in extended(&f, f.bdf).flatten() {
                prop_assert!((0x100..0x1000).contains(&cap.2) && cap.2 % 4 == 0);
            }
        }

        /// Chains over random distinct slots, ended by 0, by a pointer back into the chain, or
        /// by an arbitrary pointer: the walk yields exactly the chain, then the right verdict.
        #[test]
        fn random_chains_get_the_right_verdict(
            slots in proptest::sample::subsequence((0u16..960).collect::<std::vec::Vec<_>>(), 1..200),
            order in any::<proptest::sample::Index>(),
            end in 0u8..3,
            back in any::<proptest::sample::Index>(),
            wild in 0u16..0x1000,
        ) {
            let mut slots = slots;
            // Shuffle deterministically from `order`, so chains jump back and forth.
            let n = slots.len();
            let k = order.index(n);
            slots.rotate_left(k);
            let offsets: std::vec::Vec<u16> = slots.iter().map(|s| 0x100 + s * 4).collect();
            // The chain must start at 0x100.
            let f = FakeConfig::new();
            let mut chain = std::vec![0x100u16];
            chain.extend(offsets.iter().copied().filter(|&o| o != 0x100));
            let last_next = match end {
                0 => 0,
                1 => chain[back.index(chain.len())],
                _ => wild,
            };
            for (i, &o) in chain.iter().enumerate() {
                let next = chain.get(i + 1).copied().unwrap_or(last_next);
                f.set32(o, 0x0b | 1 << 16 | u32::from(next) << 20);
            }
            let walked: std::vec::Vec<_> = extended(&f, f.bdf).collect();
            let ok: std::vec::Vec<u16> = walked.iter().filter_map(|r| r.as_ref().ok().map(|c| c.2)).collect();
            prop_assert_eq!(&ok[..], &chain[..]);
            let masked = last_next & 0xffc;
            let verdict = *walked.last().unwrap();
            match end {
                0 => prop_assert!(verdict.is_ok()),
                _ if masked == 0 => prop_assert!(verdict.is_ok()),
                _ if masked < 0x100 => prop_assert_eq!(
                    verdict,
                    Err(Error::CapabilityPointer { bdf: f.bdf, offset: *chain.last().unwrap(), pointer: masked })
                ),
                _ if chain.contains(&masked) => prop_assert_eq!(verdict, Err(Error::CapabilityLoop { bdf: f.bdf, offset: masked })),
                // A wild pointer to an unused (zero) slot: a header of 0 ends the list.
                _ => prop_assert!(verdict.is_ok()),
            }
        }
    }
}
