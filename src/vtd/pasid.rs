//! Scalable-mode PASID directories, PASID tables and PASID entries (VT-d spec §9.5, §9.6).
//!
//! - A PASID directory entry (§9.5) is 8 bytes, indexed by PASID bits 19:6: PASID-table pointer
//!   (63:12) | FPD (1) | P (0).
//! - A PASID table holds 64 entries of 64 bytes, indexed by PASID bits 5:0 (§9.6):
//!   `val[0]` = SSPTPTR (63:12) | PGTT (8:6) | AW (4:2) | FPD (1) | P (0);
//!   `val[1]` = DID (15:0) and memory-type/snoop controls (left 0);
//!   `val[2]` = FSPTPTR (63:12) | FSPM (3:2) | SRE (0) and other first-stage controls (left 0).
//!
//! Directories are one page (512 entries, PDTS = 2: PASIDs below 2^15, [`MAX_PASID_BITS`]) with
//! a CPU-only shadow page after it holding each PASID table's virtual address (see
//! [`super::context`]); both are allocated the first time a function gets a PASID entry, PASID
//! tables the first time a PASID in their 64 is used. The write rules are those of
//! [`super::context`].

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::addr::{Pasid, PhysAddr};
use crate::error::{Error, Result};
use crate::hal::{PAGE_SIZE, Platform};

use super::context::{Shadowed, TableInvalidation, address_width, widest_address_width};
use super::descriptor::{self as desc, Drain, PasidCacheScope};
use super::regs::{Capability, ExtendedCapability};

/// PASIDs a directory covers: 2^15, one page of 512 directory entries. A full 20-bit space
/// would need a 128 KiB directory per function; no emulated device sends PASID-tagged requests
/// at all (QEMU 10.0.2, notes §1.5), and real SVA users rarely exceed 15 bits.
pub const MAX_PASID_BITS: u8 = 15;
/// PDTS for a one-page directory: `2^(PDTS + 7)` = 512 entries.
pub const DIRECTORY_PDTS: u8 = 2;

/// PGTT values (§9.6).
#[allow(missing_docs, reason = "names from the specification")]
pub mod pgtt {
    pub const FIRST_STAGE: u64 = 1;
    pub const SECOND_STAGE: u64 = 2;
    pub const NESTED: u64 = 3;
    pub const PASS_THROUGH: u64 = 4;
}

/// What a PASID entry translates with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PasidTranslation {
    /// First-stage (PGTT 1, needs ECAP.FLTS): the x86-style table at `root` with 4 levels
    /// (FSPM 0) or 5 (FSPM 1, needs CAP.FS5LP). SRE, WPE, NXE, EAFE stay off: requests are
    /// user-mode only.
    FirstStage {
        /// Root (PML4/PML5) table.
        root: PhysAddr,
        /// 4 or 5.
        levels: u8,
    },
    /// Second-stage (PGTT 2, needs ECAP.SLTS): the table at `root` with `levels` levels
    /// (AW per CAP.SAGAW).
    SecondStage {
        /// Root table.
        root: PhysAddr,
        /// 3, 4 or 5.
        levels: u8,
    },
    /// Pass-through (PGTT 4, needs ECAP.PT).
    PassThrough,
    /// Nested (PGTT 3, needs ECAP.NEST with FLTS and SLTS): a guest's first-stage table at
    /// guest-physical `first_root` (4 or 5 levels), every access of which, and every output,
    /// goes through the hypervisor's second-stage table at `second_root` (`second_levels`
    /// levels, AW per CAP.SAGAW). QEMU 10.0.2 offers no nesting (ECAP.NEST = 0).
    Nested {
        /// The guest's first-stage root, a guest-physical address.
        first_root: u64,
        /// 4 or 5.
        first_levels: u8,
        /// The second-stage root.
        second_root: PhysAddr,
        /// 3, 4 or 5.
        second_levels: u8,
    },
}

/// A PASID-table entry (§9.6), 512 bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PasidEntry(pub [u64; 8]);

impl PasidEntry {
    /// An entry translating with `translation`, tagged with domain `did`, faults recorded.
    pub fn new(
        translation: PasidTranslation,
        did: u16,
        cap: Capability,
        ecap: ExtendedCapability,
    ) -> Result<Self> {
        let mut e = [0u64; 8];
        e[1] = u64::from(did);
        match translation {
            PasidTranslation::FirstStage { root, levels } => {
                if !ecap.flts() {
                    return Err(Error::Unsupported {
                        what: "VT-d ECAP.FLTS (first-stage)",
                        value: ecap.0,
                    });
                }
                let fspm = first_stage_paging_mode(levels, cap)?;
                if !root.is_aligned(PAGE_SIZE as u64) {
                    return Err(Error::Misaligned {
                        what: "VT-d first-stage root",
                        value: root.0,
                        align: PAGE_SIZE as u64,
                    });
                }
                // AW as Linux sets it for first-stage entries: the unit's widest.
                e[0] = pgtt::FIRST_STAGE << 6 | u64::from(widest_address_width(cap)) << 2 | 1;
                e[2] = root.0 | fspm << 2;
            }
            PasidTranslation::SecondStage { root, levels } => {
                if !ecap.slts() {
                    return Err(Error::Unsupported {
                        what: "VT-d ECAP.SLTS (second-stage)",
                        value: ecap.0,
                    });
                }
                let aw = address_width(levels, cap)?;
                if !root.is_aligned(PAGE_SIZE as u64) {
                    return Err(Error::Misaligned {
                        what: "VT-d second-stage root",
                        value: root.0,
                        align: PAGE_SIZE as u64,
                    });
                }
                e[0] = root.0 | pgtt::SECOND_STAGE << 6 | u64::from(aw) << 2 | 1;
            }
            PasidTranslation::Nested { first_root, first_levels, second_root, second_levels } => {
                if !(ecap.nest() && ecap.flts() && ecap.slts()) {
                    return Err(Error::Unsupported {
                        what: "VT-d ECAP.NEST with FLTS and SLTS (nested translation)",
                        value: ecap.0,
                    });
                }
                let fspm = first_stage_paging_mode(first_levels, cap)?;
                let aw = address_width(second_levels, cap)?;
                for (what, addr) in [
                    ("VT-d nested first-stage root", first_root),
                    ("VT-d nested second-stage root", second_root.0),
                ] {
                    if addr % PAGE_SIZE as u64 != 0 || addr >> 52 != 0 {
                        return Err(Error::Misaligned {
                            what,
                            value: addr,
                            align: PAGE_SIZE as u64,
                        });
                    }
                }
                e[0] = second_root.0 | pgtt::NESTED << 6 | u64::from(aw) << 2 | 1;
                e[2] = first_root | fspm << 2;
            }
            PasidTranslation::PassThrough => {
                if !ecap.pt() {
                    return Err(Error::Unsupported {
                        what: "VT-d ECAP.PT (pass-through)",
                        value: ecap.0,
                    });
                }
                e[0] = pgtt::PASS_THROUGH << 6 | u64::from(widest_address_width(cap)) << 2 | 1;
            }
        }
        Ok(Self(e))
    }

    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// DID.
    pub const fn did(&self) -> u16 {
        // CAST: bits 15:0.
        self.0[1] as u16
    }

    /// PGTT.
    pub const fn pgtt(&self) -> u64 {
        (self.0[0] >> 6) & 7
    }
}

/// FSPM for a first-stage table of `levels` levels: 0 for 4-level paging, 1 for 5-level
/// (needs CAP.FS5LP).
fn first_stage_paging_mode(levels: u8, cap: Capability) -> Result<u64> {
    match levels {
        4 => Ok(0),
        5 if cap.fs5lp() => Ok(1),
        5 => Err(Error::Unsupported { what: "VT-d CAP.FS5LP (5-level first stage)", value: cap.0 }),
        _ => Err(Error::InvalidField { what: "VT-d first-stage levels", value: u64::from(levels) }),
    }
}

/// What removing (or replacing) a present PASID entry owes (§6.5.3.3 / Table "Guidance to
/// software for invalidations", PASID-entry rows; Linux `intel_pasid_tear_down_entry`):
/// PASID-cache PASID-selective with the old DID, then the translations: PASID-based IOTLB
/// (all of the PASID) for first-stage and pass-through entries, domain-selective IOTLB for
/// second-stage ones. Device-TLBs are not enabled by this driver yet (DTE off).
pub(crate) fn pasid_entry_invalidation(
    old: &PasidEntry,
    pasid: Pasid,
    cap: Capability,
) -> TableInvalidation {
    let mut inv = TableInvalidation::none();
    let did = old.did();
    inv.push(desc::pasid_cache(PasidCacheScope::Pasid(did, pasid)));
    match old.pgtt() {
        pgtt::SECOND_STAGE | pgtt::NESTED => {
            inv.push(desc::iotlb_domain(did, Drain::supported(cap)))
        }
        _ => inv.push(desc::pasid_iotlb_all(did, pasid)),
    }
    inv
}

/// Checks that `pasid` fits a directory ([`MAX_PASID_BITS`]). ECAP.PSS is not used as the
/// bound: QEMU 10.0.2 reports PSS = 0 (one bit) yet walks any RID_PASID (notes §1.2), and a
/// device never sends a PASID wider than its own PASID capability allows.
pub(crate) fn check_pasid(pasid: Pasid) -> Result<()> {
    if pasid.get() >> MAX_PASID_BITS != 0 {
        return Err(Error::InvalidField {
            what: "VT-d PASID beyond the PASID directory",
            value: u64::from(pasid.get()),
        });
    }
    Ok(())
}

/// A function's PASID directory (one table page and its shadow page).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Directory(Shadowed);

impl Directory {
    /// Allocates a zeroed directory.
    pub(crate) fn alloc<P: Platform + ?Sized>(platform: &P) -> Result<Self> {
        let d = Shadowed::alloc(platform, 1)?;
        platform.sync_for_device(d.virt, PAGE_SIZE);
        Ok(Self(d))
    }

    /// The directory at `phys`/`virt` (from a context entry and its shadow slot).
    pub(crate) fn from_parts(phys: PhysAddr, virt: NonNull<u8>) -> Self {
        Self(Shadowed { phys, virt })
    }

    pub(crate) fn phys(&self) -> PhysAddr {
        self.0.phys
    }

    pub(crate) fn virt(&self) -> NonNull<u8> {
        self.0.virt
    }

    fn index(pasid: Pasid) -> usize {
        // CAST: bits 19:6 of a 20-bit value.
        (pasid.get() >> 6) as usize
    }

    fn table(&self, pasid: Pasid) -> Option<Shadowed> {
        let i = Self::index(pasid);
        let virt = self.0.child(1, i)?;
        let phys = PhysAddr(self.0.word(i).load(Ordering::Acquire) & !0xfff);
        Some(Shadowed { phys, virt })
    }

    fn table_or_alloc<P: Platform + ?Sized>(&self, platform: &P, pasid: Pasid) -> Result<Shadowed> {
        if let Some(t) = self.table(pasid) {
            return Ok(t);
        }
        let i = Self::index(pasid);
        // A PASID table has no children: its shadow page stays unused (one allocation routine).
        let t = Shadowed::alloc(platform, 1)?;
        platform.sync_for_device(t.virt, PAGE_SIZE);
        self.0.set_child(1, i, t.virt);
        self.0.word(i).store(t.phys.0 | 1, Ordering::Release);
        self.0.sync(platform, i, 1);
        Ok(t)
    }

    fn slot(pasid: Pasid) -> usize {
        // CAST: bits 5:0, 8 words per entry.
        (pasid.get() & 0x3f) as usize * 8
    }

    /// The entry for `pasid` (all zero if its table does not exist).
    pub(crate) fn entry(&self, pasid: Pasid) -> PasidEntry {
        let mut e = [0u64; 8];
        if let Some(t) = self.table(pasid) {
            t.read(Self::slot(pasid), &mut e);
        }
        PasidEntry(e)
    }

    /// Writes an entry that is not present now.
    pub(crate) fn write<P: Platform + ?Sized>(
        &self,
        platform: &P,
        pasid: Pasid,
        e: &PasidEntry,
        rid: u16,
    ) -> Result<()> {
        if self.entry(pasid).present() {
            return Err(Error::EntryState { what: "VT-d PASID entry", rid, present: true });
        }
        let t = self.table_or_alloc(platform, pasid)?;
        t.write_entry(platform, Self::slot(pasid), &e.0);
        Ok(())
    }

    /// Clears Present of the entry for `pasid`; returns the old entry if it was present.
    pub(crate) fn clear<P: Platform + ?Sized>(
        &self,
        platform: &P,
        pasid: Pasid,
    ) -> Option<PasidEntry> {
        let old = self.entry(pasid);
        if !old.present() {
            return None;
        }
        let t = self.table(pasid)?;
        let at = Self::slot(pasid);
        t.word(at).store(old.0[0] & !1, Ordering::Release);
        t.sync(platform, at, 1);
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Independent encodings: VT-d §9.6 and Linux drivers/iommu/intel/pasid.h/.c
    // (pasid_set_present: val[0] bit 0; pasid_set_address_width: val[0] bits 4:2;
    // pasid_set_pgtt: val[0] bits 8:6; pasid_set_slptr: val[0] 63:12; pasid_set_domain_id:
    // val[1] 15:0; pasid_set_flptr: val[2] 63:12; pasid_set_flpm: val[2] bits 3:2;
    // PASID_ENTRY_PGTT_FL_ONLY 1, _SL_ONLY 2, _NESTED 3, _PT 4).
    const PASID_ENTRY_PGTT_FL_ONLY: u64 = 1;
    const PASID_ENTRY_PGTT_SL_ONLY: u64 = 2;
    const PASID_ENTRY_PGTT_PT: u64 = 4;
    const fn pgtt_bits(p: u64) -> u64 {
        p << 6
    }
    const fn aw_bits(aw: u64) -> u64 {
        aw << 2
    }
    const fn flpm_bits(m: u64) -> u64 {
        m << 2
    }

    const CAP: Capability = Capability(0x00d2_008c_222f_0606);
    const SL_ECAP: ExtendedCapability = ExtendedCapability(0x0000_4800_80f0_0f4a);
    const FL_ECAP: ExtendedCapability = ExtendedCapability(0x0000_8900_00f0_0f4a);

    #[test]
    fn pasid_entry_encodings() {
        let e = PasidEntry::new(
            PasidTranslation::SecondStage { root: PhysAddr(0x10_3000), levels: 4 },
            7,
            CAP,
            SL_ECAP,
        )
        .unwrap();
        assert_eq!(
            e.0,
            [0x10_3000 | pgtt_bits(PASID_ENTRY_PGTT_SL_ONLY) | aw_bits(2) | 1, 7, 0, 0, 0, 0, 0, 0]
        );
        let e = PasidEntry::new(
            PasidTranslation::FirstStage { root: PhysAddr(0x20_0000), levels: 4 },
            9,
            CAP,
            FL_ECAP,
        )
        .unwrap();
        assert_eq!(
            e.0,
            [
                pgtt_bits(PASID_ENTRY_PGTT_FL_ONLY) | aw_bits(2) | 1,
                9,
                0x20_0000 | flpm_bits(0),
                0,
                0,
                0,
                0,
                0
            ]
        );
        let e = PasidEntry::new(PasidTranslation::PassThrough, 3, CAP, SL_ECAP).unwrap();
        assert_eq!(e.0[..2], [pgtt_bits(PASID_ENTRY_PGTT_PT) | aw_bits(2) | 1, 3]);
        assert_eq!((e.did(), e.pgtt()), (3, 4));
        // What QEMU offers decides: first-stage only with x-flts, second-stage only without.
        assert!(
            PasidEntry::new(
                PasidTranslation::FirstStage { root: PhysAddr(0), levels: 4 },
                1,
                CAP,
                SL_ECAP
            )
            .is_err()
        );
        assert!(
            PasidEntry::new(
                PasidTranslation::SecondStage { root: PhysAddr(0), levels: 4 },
                1,
                CAP,
                FL_ECAP
            )
            .is_err()
        );
        assert!(
            PasidEntry::new(
                PasidTranslation::FirstStage { root: PhysAddr(0), levels: 5 },
                1,
                CAP,
                FL_ECAP
            )
            .is_err()
        );
        let fs5 = Capability(CAP.0 | 1 << 60);
        let e = PasidEntry::new(
            PasidTranslation::FirstStage { root: PhysAddr(0x1000), levels: 5 },
            1,
            fs5,
            FL_ECAP,
        )
        .unwrap();
        assert_eq!(e.0[2], 0x1000 | flpm_bits(1));
    }

    #[test]
    fn nested_pasid_entry_encoding() {
        const PASID_ENTRY_PGTT_NESTED: u64 = 3;
        // ECAP.NEST is bit 26, SLTS bit 46, FLTS bit 47.
        let nest = ExtendedCapability(FL_ECAP.0 | 1 << 46 | 1 << 26);
        let nested = PasidTranslation::Nested {
            first_root: 0x4_5000,
            first_levels: 4,
            second_root: PhysAddr(0x10_3000),
            second_levels: 4,
        };
        let e = PasidEntry::new(nested, 11, CAP, nest).unwrap();
        assert_eq!(
            e.0[..3],
            [
                0x10_3000 | pgtt_bits(PASID_ENTRY_PGTT_NESTED) | aw_bits(2) | 1,
                11,
                0x4_5000 | flpm_bits(0)
            ]
        );
        // Each capability is needed.
        for ecap in [FL_ECAP.0 | 1 << 46, FL_ECAP.0 | 1 << 26, SL_ECAP.0 | 1 << 26] {
            let e = PasidEntry::new(nested, 11, CAP, ExtendedCapability(ecap)).unwrap_err();
            assert!(matches!(e, Error::Unsupported { .. }), "{ecap:#x}: {e:?}");
        }
        let misaligned = PasidTranslation::Nested {
            first_root: 0x4_5008,
            first_levels: 4,
            second_root: PhysAddr(0x10_3000),
            second_levels: 4,
        };
        let e = PasidEntry::new(misaligned, 11, CAP, nest).unwrap_err();
        assert!(matches!(e, Error::Misaligned { value: 0x4_5008, .. }), "{e:?}");
    }

    #[test]
    fn teardown_invalidations_follow_the_entry_type() {
        let p = Pasid::new(5).unwrap();
        let sl = PasidEntry::new(
            PasidTranslation::SecondStage { root: PhysAddr(0x1000), levels: 4 },
            7,
            CAP,
            SL_ECAP,
        )
        .unwrap();
        let d = pasid_entry_invalidation(&sl, p, CAP).take();
        assert_eq!(d[0].words()[0], 0x7 | 1 << 4 | 7 << 16 | 5 << 32);
        assert_eq!(d[1].words()[0] & 0x3f, 0x2 | 2 << 4);
        let pt = PasidEntry::new(PasidTranslation::PassThrough, 7, CAP, SL_ECAP).unwrap();
        let d = pasid_entry_invalidation(&pt, p, CAP).take();
        assert_eq!(d[1].words()[0], 0x6 | 2 << 4 | 7 << 16 | 5 << 32);
    }
}
