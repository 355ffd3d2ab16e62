//! The VT-d entry formats: second-stage (VT-d spec §9.8) and first-stage (§9.7, x86-64 paging).

use super::{ADDR_MASK, PageSizes, PageTableFormat, Perms, Pte};
use crate::addr::PhysAddr;
use crate::error::{Error, Result};

/// Second-stage entry bits (VT-d §9.8, "Format for Second-Stage Paging Entries").
mod ss {
    /// R: read permission (bit 0). An entry with R = W = 0 is not present.
    pub(super) const R: u64 = 1 << 0;
    /// W: write permission (bit 1).
    pub(super) const W: u64 = 1 << 1;
    /// X: execute permission (bit 2), used only where the unit checks execute permission on
    /// second-stage translations (scalable mode, PASID-entry controlled); ignored otherwise.
    pub(super) const X: u64 = 1 << 2;
    /// PS: the entry at level 2 or 3 maps a 2 MiB or 1 GiB page (bit 7).
    pub(super) const PS: u64 = 1 << 7;
    /// SNP: snoop (bit 11): force snooping of the access. Reserved in legacy mode unless
    /// ECAP.SC is set (QEMU faults on it, notes §1.4).
    pub(super) const SNP: u64 = 1 << 11;
}

/// First-stage entry bits (VT-d §9.7; the x86-64 paging-structure formats, SDM Vol. 3 §4.5).
mod fs {
    /// P: present (bit 0).
    pub(super) const P: u64 = 1 << 0;
    /// R/W: writes allowed (bit 1).
    pub(super) const RW: u64 = 1 << 1;
    /// U/S: user accesses allowed (bit 2). Set at every level: QEMU treats device DMA as user
    /// requests and faults (FR 0x81) without it (notes §1.5).
    pub(super) const US: u64 = 1 << 2;
    /// A: accessed (bit 5). Set up front so the walker need not write it back.
    pub(super) const A: u64 = 1 << 5;
    /// D: dirty (bit 6, leaves). Set up front on writable leaves, as Linux does.
    pub(super) const D: u64 = 1 << 6;
    /// PS: page size (bit 7) in a PDE or PDPE: the entry maps a 2 MiB or 1 GiB page.
    pub(super) const PS: u64 = 1 << 7;
    /// XD: execute disable (bit 63).
    pub(super) const XD: u64 = 1 << 63;
}

/// VT-d second-stage paging entries (VT-d §9.8): the format of legacy-mode domains and of
/// scalable-mode PGTT = 2 PASID entries. 3, 4 or 5 levels (CAP.SAGAW bits 1, 2, 3).
///
/// EMT (bits 5:3) and IPAT (bit 6) are left 0: they take effect only when the unit supports
/// memory types (ECAP.MTS) and the context/PASID entry enables them; 0 there would mean UC, so
/// a caller that enables memory types needs a format option for WB (EMT = 6) first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VtdSecondStage {
    /// Set SNP on leaves (only if ECAP.SC is set or in scalable mode).
    pub snoop: bool,
    /// The unit honours execute permission: allow [`Perms::EXECUTE`] and encode X.
    pub execute: bool,
}

impl VtdSecondStage {
    /// The legacy-mode format: no snoop bit, no execute.
    pub const fn new() -> Self {
        Self { snoop: false, execute: false }
    }
}

impl PageTableFormat for VtdSecondStage {
    const NAME: &'static str = "VT-d second-stage";
    const MIN_LEVELS: u8 = 3;
    const MAX_LEVELS: u8 = 5;
    const CANONICAL: bool = false;
    const LEAF_SIZES: PageSizes = PageSizes::ALL;

    fn check_perms(&self, perms: Perms) -> Result<()> {
        // Bits other than R/W/X, execute without the capability, or execute-only (R = W = 0 is
        // a not-present entry).
        let bad = perms.bits() & !7 != 0
            || (perms.contains(Perms::EXECUTE) && (!self.execute || !perms.contains(Perms::READ)));
        if bad {
            return Err(Error::InvalidField {
                what: "VT-d second-stage permissions",
                value: u64::from(perms.bits()),
            });
        }
        Ok(())
    }

    fn table(&self, table: PhysAddr, _level: u8) -> u64 {
        // R and W at every level: the walk ANDs permissions down the levels (QEMU checks both at
        // every level, notes §1.4). X too when execute is in use, for the same reason.
        let x = if self.execute { ss::X } else { 0 };
        (table.0 & ADDR_MASK) | ss::R | ss::W | x
    }

    fn leaf(&self, phys: PhysAddr, perms: Perms, level: u8) -> u64 {
        let mut e = phys.0 & ADDR_MASK;
        if perms.contains(Perms::READ) {
            e |= ss::R;
        }
        if perms.contains(Perms::WRITE) {
            e |= ss::W;
        }
        if self.execute && perms.contains(Perms::EXECUTE) {
            e |= ss::X;
        }
        if level >= 2 {
            e |= ss::PS;
        }
        if self.snoop {
            e |= ss::SNP;
        }
        e
    }

    fn decode(&self, entry: u64, level: u8) -> Pte {
        if entry & (ss::R | ss::W) == 0 {
            return Pte::Absent;
        }
        let phys = PhysAddr(entry & ADDR_MASK);
        if level == 1 || entry & ss::PS != 0 {
            let mut perms = Perms::NONE;
            if entry & ss::R != 0 {
                perms = perms.union(Perms::READ);
            }
            if entry & ss::W != 0 {
                perms = perms.union(Perms::WRITE);
            }
            if self.execute && entry & ss::X != 0 {
                perms = perms.union(Perms::EXECUTE);
            }
            Pte::Leaf { phys, perms }
        } else {
            Pte::Table(phys)
        }
    }
}

/// VT-d first-stage paging entries (VT-d §9.7): x86-64 4-level (or, with CAP.FS5LP, 5-level)
/// paging, for scalable-mode PGTT = 1 PASID entries. IOVAs must be canonical.
///
/// PWT/PCD are 0 (write-back through PAT entry 0). Every entry has U/S set (see the bit's
/// comment); A is set everywhere and D on writable leaves so the walker never has to write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct X86FirstStage {
    /// Set XD on leaves without [`Perms::EXECUTE`]. When false, every leaf is executable (use
    /// where execute requests are not enabled and XD is reserved).
    pub execute_disable: bool,
}

impl X86FirstStage {
    /// XD on non-executable leaves.
    pub const fn new() -> Self {
        Self { execute_disable: true }
    }
}

impl Default for X86FirstStage {
    fn default() -> Self {
        Self::new()
    }
}

impl PageTableFormat for X86FirstStage {
    const NAME: &'static str = "VT-d first-stage";
    const MIN_LEVELS: u8 = 4;
    const MAX_LEVELS: u8 = 5;
    const CANONICAL: bool = true;
    const LEAF_SIZES: PageSizes = PageSizes::ALL;

    fn check_perms(&self, perms: Perms) -> Result<()> {
        // x86 paging cannot express a page that is writable or executable but not readable.
        if perms.bits() & !7 != 0 || !perms.contains(Perms::READ) {
            return Err(Error::InvalidField {
                what: "x86 first-stage permissions",
                value: u64::from(perms.bits()),
            });
        }
        Ok(())
    }

    fn table(&self, table: PhysAddr, _level: u8) -> u64 {
        // Permissions are the AND of all levels: tables grant everything, XD clear.
        (table.0 & ADDR_MASK) | fs::P | fs::RW | fs::US | fs::A
    }

    fn leaf(&self, phys: PhysAddr, perms: Perms, level: u8) -> u64 {
        let mut e = (phys.0 & ADDR_MASK) | fs::P | fs::US | fs::A;
        if perms.contains(Perms::WRITE) {
            e |= fs::RW | fs::D;
        }
        if level >= 2 {
            e |= fs::PS;
        }
        if self.execute_disable && !perms.contains(Perms::EXECUTE) {
            e |= fs::XD;
        }
        e
    }

    fn decode(&self, entry: u64, level: u8) -> Pte {
        if entry & fs::P == 0 {
            return Pte::Absent;
        }
        let phys = PhysAddr(entry & ADDR_MASK);
        if level == 1 || entry & fs::PS != 0 {
            let mut perms = Perms::READ;
            if entry & fs::RW != 0 {
                perms = perms.union(Perms::WRITE);
            }
            if entry & fs::XD == 0 {
                perms = perms.union(Perms::EXECUTE);
            }
            Pte::Leaf { phys, perms }
        } else {
            Pte::Table(phys)
        }
    }
}
