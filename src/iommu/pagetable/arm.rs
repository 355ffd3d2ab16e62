//! The Arm VMSAv8-64 entry formats with the 4 KiB granule: stage 1 (Arm ARM D8.3, the
//! descriptors an SMMUv3 context descriptor's TTB0 points at) and stage 2 (the descriptors an
//! STE's S2TTB points at).
//!
//! Engine level 1 is Arm level 3 (page descriptors, bits 1:0 = 0b11); engine levels 2 and 3 are
//! Arm levels 2 and 1, where a leaf is a block descriptor (bits 1:0 = 0b01) of 2 MiB or 1 GiB
//! and a table descriptor has bits 1:0 = 0b11. A 4-level table starts at Arm level 0 (48-bit
//! input), a 3-level one at Arm level 1 (39-bit input).
//!
//! Bit positions cross-checked with Linux `drivers/iommu/io-pgtable-arm.c`
//! (`ARM_LPAE_PTE_*`, `ARM_LPAE_MAIR_ATTR_*`).

use super::{ADDR_MASK, PageSizes, PageTableFormat, Perms, Pte};
use crate::addr::PhysAddr;
use crate::error::{Error, Result};

/// Descriptor bits common to both stages (Arm ARM D8.3.1, D8.3.2).
mod bits {
    /// Valid (bit 0).
    pub(super) const VALID: u64 = 1 << 0;
    /// Bit 1: table (levels 0-2) or page (level 3) when set; block when clear at levels 1-2.
    pub(super) const TABLE_OR_PAGE: u64 = 1 << 1;
    /// AF, access flag (bit 10). Set up front: QEMU has no HTTU and faults on AF = 0 (notes §2.3).
    pub(super) const AF: u64 = 1 << 10;
    /// SH[1:0] (bits 9:8) = 0b11, inner shareable.
    pub(super) const SH_INNER: u64 = 3 << 8;
    /// Stage 1 AP[1] (bit 6): EL0 (unprivileged) access allowed. Device requests are
    /// unprivileged unless they say otherwise, so every leaf sets it (Linux: `ARM_LPAE_PTE_AP_UNPRIV`).
    pub(super) const S1_AP_UNPRIV: u64 = 1 << 6;
    /// Stage 1 AP[2] (bit 7): read-only.
    pub(super) const S1_AP_RDONLY: u64 = 1 << 7;
    /// Stage 1 nG (bit 11): not global, the translation is tagged with the ASID.
    pub(super) const S1_NG: u64 = 1 << 11;
    /// Stage 1 AttrIndx[2:0] (bits 4:2).
    pub(super) const S1_ATTRINDX_SHIFT: u32 = 2;
    /// Stage 1 PXN (bit 53) and UXN/XN (bit 54).
    pub(super) const S1_PXN: u64 = 1 << 53;
    pub(super) const S1_UXN: u64 = 1 << 54;
    /// Stage 2 S2AP[0] (bit 6): reads allowed.
    pub(super) const S2AP_READ: u64 = 1 << 6;
    /// Stage 2 S2AP[1] (bit 7): writes allowed.
    pub(super) const S2AP_WRITE: u64 = 1 << 7;
    /// Stage 2 MemAttr[3:0] (bits 5:2) = 0b1111: Normal, outer and inner write-back.
    pub(super) const S2_MEMATTR_WB: u64 = 0xf << 2;
    /// Stage 2 XN[1:0] (bits 54:53) = 0b10: execute never at EL0 and EL1.
    pub(super) const S2_XN: u64 = 2 << 53;
}

/// MAIR attribute index of Normal write-back memory, read/write allocate: the layout Linux's
/// io-pgtable uses (index 0 non-cacheable, 1 cacheable, 2 device, 3 inner-cacheable).
pub const MAIR_IDX_CACHEABLE: u8 = 1;
/// The MAIR value that goes with [`Arm64Stage1`] leaves: index 0 Normal non-cacheable (0x44),
/// index 1 Normal write-back RW-allocate (0xff), index 2 Device-nGnRE (0x04).
pub const MAIR: u64 = 0x44 | (0xff << 8) | (0x04 << 16);

/// Whether a block may be replaced by a table with the same translations without a
/// break-before-make sequence, from SMMU_IDR3.BBML (SMMUv3 §3.21.1): level 2 promises that
/// neither TLB conflict aborts nor wrong translations result.
pub const fn split_in_place_from_bbml(bbml: u8) -> bool {
    bbml >= 2
}

fn decode(entry: u64, level: u8, perms: impl Fn(u64) -> Perms) -> Pte {
    if entry & bits::VALID == 0 {
        return Pte::Absent;
    }
    let phys = PhysAddr(entry & ADDR_MASK);
    let page_or_table = entry & bits::TABLE_OR_PAGE != 0;
    match (level, page_or_table) {
        (1, true) => Pte::Leaf { phys, perms: perms(entry) },
        // A block at Arm level 3 is reserved (treated as invalid by the walk).
        (1, false) => Pte::Absent,
        (_, true) => Pte::Table(phys),
        // No blocks at Arm level 0 with the 4 KiB granule (without FEAT_LPA2).
        (4.., false) => Pte::Absent,
        (_, false) => Pte::Leaf { phys, perms: perms(entry) },
    }
}

fn check_common(perms: Perms, what: &'static str) -> Result<()> {
    // Both stages cannot express a writable page that is not readable (stage 1 AP has no
    // write-only encoding; stage 2 could, but a device read of it would fault anyway).
    if perms.bits() & !7 != 0 || !perms.contains(Perms::READ) {
        return Err(Error::InvalidField { what, value: u64::from(perms.bits()) });
    }
    Ok(())
}

/// Arm VMSAv8-64 stage-1 descriptors, 4 KiB granule, for SMMUv3 context descriptors (TTB0).
///
/// Leaves are Normal write-back memory ([`MAIR_IDX_CACHEABLE`] of [`MAIR`]), inner shareable,
/// AF set, unprivileged access allowed (AP[1]), read-only through AP[2], execute-never (UXN and
/// PXN) unless [`Perms::EXECUTE`]. With `not_global` every leaf has nG set so its TLB entries
/// are tagged with the context descriptor's ASID (what an SMMU domain wants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Arm64Stage1 {
    /// Set nG on leaves.
    pub not_global: bool,
    /// Whether a block may be split in place (SMMU_IDR3.BBML = 2, see [`split_in_place_from_bbml`]).
    pub split_in_place: bool,
}

impl Arm64Stage1 {
    /// nG leaves; splits in place only when `bbml` (SMMU_IDR3.BBML) allows it.
    pub const fn new(bbml: u8) -> Self {
        Self { not_global: true, split_in_place: split_in_place_from_bbml(bbml) }
    }
}

impl PageTableFormat for Arm64Stage1 {
    const NAME: &'static str = "Arm VMSAv8-64 stage 1";
    const MIN_LEVELS: u8 = 3;
    const MAX_LEVELS: u8 = 4;
    const CANONICAL: bool = false;
    const LEAF_SIZES: PageSizes = PageSizes::ALL;
    const SPLIT_IN_PLACE: bool = false;

    fn split_in_place(&self) -> bool {
        self.split_in_place
    }

    fn check_perms(&self, perms: Perms) -> Result<()> {
        check_common(perms, "Arm stage-1 permissions")
    }

    fn table(&self, table: PhysAddr, _level: u8) -> u64 {
        // APTable/XNTable/PXNTable zero: the table grants everything, the leaf decides.
        (table.0 & ADDR_MASK) | bits::VALID | bits::TABLE_OR_PAGE
    }

    fn leaf(&self, phys: PhysAddr, perms: Perms, level: u8) -> u64 {
        let mut e = (phys.0 & ADDR_MASK)
            | bits::VALID
            | bits::AF
            | bits::SH_INNER
            | bits::S1_AP_UNPRIV
            | (u64::from(MAIR_IDX_CACHEABLE) << bits::S1_ATTRINDX_SHIFT);
        if level == 1 {
            e |= bits::TABLE_OR_PAGE;
        }
        if !perms.contains(Perms::WRITE) {
            e |= bits::S1_AP_RDONLY;
        }
        if !perms.contains(Perms::EXECUTE) {
            e |= bits::S1_UXN | bits::S1_PXN;
        }
        if self.not_global {
            e |= bits::S1_NG;
        }
        e
    }

    fn decode(&self, entry: u64, level: u8) -> Pte {
        decode(entry, level, |e| {
            let mut p = Perms::READ;
            if e & bits::S1_AP_RDONLY == 0 {
                p = p.union(Perms::WRITE);
            }
            if e & bits::S1_UXN == 0 {
                p = p.union(Perms::EXECUTE);
            }
            p
        })
    }
}

/// Arm VMSAv8-64 stage-2 descriptors, 4 KiB granule, for SMMUv3 STEs (S2TTB).
///
/// Leaves are Normal write-back (MemAttr 0b1111), inner shareable, AF set, S2AP from the
/// permissions, XN = 0b10 unless [`Perms::EXECUTE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Arm64Stage2 {
    /// Whether a block may be split in place (SMMU_IDR3.BBML = 2).
    pub split_in_place: bool,
}

impl Arm64Stage2 {
    /// Splits in place only when `bbml` (SMMU_IDR3.BBML) allows it.
    pub const fn new(bbml: u8) -> Self {
        Self { split_in_place: split_in_place_from_bbml(bbml) }
    }
}

impl PageTableFormat for Arm64Stage2 {
    const NAME: &'static str = "Arm VMSAv8-64 stage 2";
    const MIN_LEVELS: u8 = 3;
    const MAX_LEVELS: u8 = 4;
    const CANONICAL: bool = false;
    const LEAF_SIZES: PageSizes = PageSizes::ALL;
    const SPLIT_IN_PLACE: bool = false;

    fn split_in_place(&self) -> bool {
        self.split_in_place
    }

    fn check_perms(&self, perms: Perms) -> Result<()> {
        check_common(perms, "Arm stage-2 permissions")
    }

    fn table(&self, table: PhysAddr, _level: u8) -> u64 {
        (table.0 & ADDR_MASK) | bits::VALID | bits::TABLE_OR_PAGE
    }

    fn leaf(&self, phys: PhysAddr, perms: Perms, level: u8) -> u64 {
        let mut e =
            (phys.0 & ADDR_MASK) | bits::VALID | bits::AF | bits::SH_INNER | bits::S2_MEMATTR_WB;
        if level == 1 {
            e |= bits::TABLE_OR_PAGE;
        }
        if perms.contains(Perms::READ) {
            e |= bits::S2AP_READ;
        }
        if perms.contains(Perms::WRITE) {
            e |= bits::S2AP_WRITE;
        }
        if !perms.contains(Perms::EXECUTE) {
            e |= bits::S2_XN;
        }
        e
    }

    fn decode(&self, entry: u64, level: u8) -> Pte {
        decode(entry, level, |e| {
            let mut p = Perms::NONE;
            if e & bits::S2AP_READ != 0 {
                p = p.union(Perms::READ);
            }
            if e & bits::S2AP_WRITE != 0 {
                p = p.union(Perms::WRITE);
            }
            if e & (3 << 53) == 0 {
                p = p.union(Perms::EXECUTE);
            }
            p
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Independent encodings, typed from the Arm ARM (D8.3) and Linux io-pgtable-arm.c:
    // ARM_LPAE_PTE_TYPE_PAGE 3, ARM_LPAE_PTE_TYPE_BLOCK 1, ARM_LPAE_PTE_TYPE_TABLE 3,
    // ARM_LPAE_PTE_AF BIT(10), ARM_LPAE_PTE_SH_IS (3 << 8), ARM_LPAE_PTE_nG BIT(11),
    // ARM_LPAE_PTE_AP_UNPRIV (1 << 6), ARM_LPAE_PTE_AP_RDONLY (2 << 6),
    // ARM_LPAE_PTE_ATTRINDX_SHIFT 2, ARM_LPAE_PTE_XN (3 << 53) (UXN | PXN),
    // ARM_LPAE_PTE_HAP_READ (1 << 6), ARM_LPAE_PTE_HAP_WRITE (2 << 6),
    // ARM_LPAE_PTE_MEMATTR_OIWB (0xf << 2).
    const PAGE: u64 = 3;
    const BLOCK: u64 = 1;
    const AF: u64 = 0x400;
    const SH_IS: u64 = 0x300;
    const NG: u64 = 0x800;
    const AP_UNPRIV: u64 = 0x40;
    const AP_RDONLY: u64 = 0x80;
    const ATTR1: u64 = 1 << 2;
    const XN_BOTH: u64 = 0x0060_0000_0000_0000;
    const HAP_R: u64 = 0x40;
    const HAP_W: u64 = 0x80;
    const OIWB: u64 = 0x3c;
    const S2_XN_EL1: u64 = 0x0040_0000_0000_0000;

    #[test]
    fn stage1_leaves_match_the_spec() {
        let f = Arm64Stage1::new(2);
        let rw = f.leaf(PhysAddr(0x4012_3000), Perms::RW, 1);
        assert_eq!(rw, 0x4012_3000 | PAGE | AF | SH_IS | NG | AP_UNPRIV | ATTR1 | XN_BOTH);
        let ro = f.leaf(PhysAddr(0x4012_3000), Perms::READ, 1);
        assert_eq!(
            ro,
            0x4012_3000 | PAGE | AF | SH_IS | NG | AP_UNPRIV | AP_RDONLY | ATTR1 | XN_BOTH
        );
        let block = f.leaf(PhysAddr(0x4020_0000), Perms::RW.union(Perms::EXECUTE), 2);
        assert_eq!(block, 0x4020_0000 | BLOCK | AF | SH_IS | NG | AP_UNPRIV | ATTR1);
        let g1 = f.leaf(PhysAddr(0x8000_0000), Perms::RW, 3);
        assert_eq!(g1 & 3, BLOCK);
        assert_eq!(f.table(PhysAddr(0x4444_5000), 2), 0x4444_5000 | 3);
        // MAIR: index 1 write-back RW-allocate (Linux ARM_LPAE_MAIR_ATTR_WBRWA 0xff).
        assert_eq!((MAIR >> 8) & 0xff, 0xff);
        assert_eq!(MAIR & 0xff, 0x44);
    }

    #[test]
    fn stage2_leaves_match_the_spec() {
        let f = Arm64Stage2::new(0);
        let rw = f.leaf(PhysAddr(0x4012_3000), Perms::RW, 1);
        assert_eq!(rw, 0x4012_3000 | PAGE | AF | SH_IS | HAP_R | HAP_W | OIWB | S2_XN_EL1);
        let ro = f.leaf(PhysAddr(0x4012_3000), Perms::READ, 1);
        assert_eq!(ro, 0x4012_3000 | PAGE | AF | SH_IS | HAP_R | OIWB | S2_XN_EL1);
        let block = f.leaf(PhysAddr(0x4020_0000), Perms::RW, 2);
        assert_eq!(block, 0x4020_0000 | BLOCK | AF | SH_IS | HAP_R | HAP_W | OIWB | S2_XN_EL1);
        assert!(!f.split_in_place());
    }

    #[test]
    fn decode_round_trips_and_rejects_reserved_shapes() {
        let f = Arm64Stage1::new(2);
        for (perms, level) in
            [(Perms::RW, 1), (Perms::READ, 2), (Perms::RW.union(Perms::EXECUTE), 3)]
        {
            let e = f.leaf(PhysAddr(0x4000_0000), perms, level);
            assert_eq!(f.decode(e, level), Pte::Leaf { phys: PhysAddr(0x4000_0000), perms });
        }
        assert_eq!(f.decode(0x4000_0000 | 3, 2), Pte::Table(PhysAddr(0x4000_0000)));
        assert_eq!(
            f.decode(0x4000_0000 | BLOCK, 1),
            Pte::Absent,
            "a block at Arm level 3 is reserved"
        );
        assert_eq!(f.decode(0x4000_0000 | BLOCK, 4), Pte::Absent, "no level-0 blocks with 4K");
        assert_eq!(f.decode(0x4000_0002, 2), Pte::Absent, "not valid");
        let s2 = Arm64Stage2::new(2);
        let e = s2.leaf(PhysAddr(0x4000_0000), Perms::READ, 1);
        assert_eq!(s2.decode(e, 1), Pte::Leaf { phys: PhysAddr(0x4000_0000), perms: Perms::READ });
    }

    #[test]
    fn write_only_pages_are_refused() {
        assert!(Arm64Stage1::new(0).check_perms(Perms::WRITE).is_err());
        assert!(Arm64Stage2::new(0).check_perms(Perms::WRITE).is_err());
        assert!(Arm64Stage2::new(0).check_perms(Perms::READ).is_ok());
    }

    #[test]
    fn bbml_decides_splits() {
        assert!(!split_in_place_from_bbml(0));
        assert!(!split_in_place_from_bbml(1));
        assert!(split_in_place_from_bbml(2));
    }
}
