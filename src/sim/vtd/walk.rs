//! Translation of DMA requests (§3, §9): legacy root/context entries, scalable-mode root,
//! context, PASID-directory and PASID-table entries, second-stage and first-stage (x86
//! 4/5-level) paging, with the context cache, PASID cache and IOTLB in front.
//!
//! Layouts from §9.1-§9.9 and Linux (`drivers/iommu/intel/iommu.h`, `pasid.h`), written
//! independently of the driver. Only leaf translations are cached (no paging-structure
//! caches): a driver that changes a leaf and skips the invalidation keeps seeing the old
//! translation, as on hardware; one that changes only a non-leaf entry sees the change at the
//! next miss.

use crate::addr::RequesterId;

use super::regs::{gcmd, reason};
use super::{CachedContext, CachedPasid, Fault, FaultOutcome, Inner, IotlbEntry};

/// Which kind of translation produced a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationKind {
    /// Translation disabled (GSTS.TES clear): the address passes unchanged.
    Untranslated,
    /// Legacy TT=2 or PASID-entry PGTT=4.
    PassThrough,
    /// Second-stage tables (legacy TT=0/1, or PGTT=2).
    SecondStage,
    /// First-stage tables (PGTT=1).
    FirstStage,
    /// First stage nested over second stage (PGTT=3).
    Nested,
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The output (host physical) address.
    pub phys: u64,
    /// The size of the page that mapped it.
    pub page_size: u64,
    /// How it was translated.
    pub kind: TranslationKind,
    /// The domain ID the translation is tagged with, if any.
    pub did: Option<u16>,
    /// Whether it came from the IOTLB (no table was read).
    pub cached: bool,
}

/// A leaf translation found by a walk.
struct Leaf {
    /// Output address of the page's first byte.
    base: u64,
    size: u64,
    read: bool,
    write: bool,
}

const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
}

/// Reason and whether fault processing is disabled for it.
type WalkError = (u8, bool);

impl Inner {
    /// Address bits above the host address width, up to bit 51 (§9: reserved in pointers).
    fn above_haw(&self) -> u64 {
        bits(63, 12) & !self.cfg.haw_mask()
    }

    fn read(&self, addr: u64, reason: u8, fpd: bool) -> Result<u64, WalkError> {
        self.mem.read_u64(addr).ok_or((reason, fpd))
    }

    pub(super) fn translate(&mut self, rid: RequesterId, pasid: Option<u32>, iova: u64, write: bool) -> Result<super::Translation, Fault> {
        if self.gsts & gcmd::TE == 0 {
            return Ok(Translation { phys: iova, page_size: 0x1000, kind: TranslationKind::Untranslated, did: None, cached: false });
        }
        self.resolve(rid, pasid, iova, write).map_err(|(r, fpd)| {
            let f = Fault { reason: r, source: rid, pasid, address: iova, write, outcome: FaultOutcome::Suppressed };
            self.record_fault(f, fpd)
        })
    }

    fn resolve(&mut self, rid: RequesterId, pasid: Option<u32>, iova: u64, write: bool) -> Result<Translation, WalkError> {
        let root = self.root.ok_or((reason::ROOT_TABLE_ACCESS, false))?;
        match (root >> super::regs::rtaddr::TTM_SHIFT) & 3 {
            0 => self.legacy(root, rid, pasid, iova, write),
            1 if self.cfg.smts() => self.scalable(root, rid, pasid, iova, write),
            _ => Err((reason::SM_ROOT_TABLE_INVALID, false)),
        }
    }

    fn iotlb_lookup(&self, did: u16, pasid: Option<u32>, iova: u64, write: bool) -> Option<Translation> {
        let e = self.iotlb.iter().find(|e| {
            e.did == did && e.pasid == pasid && iova >= e.iova && iova - e.iova < e.size && if write { e.write } else { e.read }
        })?;
        Some(Translation { phys: e.phys + (iova - e.iova), page_size: e.size, kind: e.kind, did: Some(did), cached: true })
    }

    fn iotlb_insert(&mut self, did: u16, pasid: Option<u32>, kind: TranslationKind, iova: u64, leaf: &Leaf) -> Translation {
        let start = iova & !(leaf.size - 1);
        self.iotlb.retain(|e| !(e.did == did && e.pasid == pasid && e.iova < start + leaf.size && start < e.iova + e.size));
        self.iotlb.push(IotlbEntry { did, pasid, kind, iova: start, size: leaf.size, phys: leaf.base, read: leaf.read, write: leaf.write });
        Translation { phys: leaf.base + (iova - start), page_size: leaf.size, kind, did: Some(did), cached: false }
    }

    /// Legacy mode (§3.4.2, §9.1 root entry, §9.3 context entry).
    fn legacy(&mut self, root: u64, rid: RequesterId, pasid: Option<u32>, iova: u64, write: bool) -> Result<Translation, WalkError> {
        if pasid.is_some() {
            return Err((reason::SM_PASID_IN_LEGACY, false));
        }
        let ctx = match self.ctx_cache.get(&rid.0) {
            Some(c) => *c,
            None => {
                let c = self.legacy_context(root, rid)?;
                self.ctx_cache.insert(rid.0, c);
                c
            }
        };
        let CachedContext::Legacy { did, tt, aw, slptptr, fpd } = ctx else {
            return Err((reason::CONTEXT_INVALID, false));
        };
        if tt == 2 {
            return Ok(Translation { phys: iova, page_size: 0x1000, kind: TranslationKind::PassThrough, did: Some(did), cached: false });
        }
        if let Some(t) = self.iotlb_lookup(did, None, iova, write) {
            return Ok(t);
        }
        let leaf = self.walk_second_stage(slptptr, aw, iova, write, false).map_err(|r| (r, fpd))?;
        Ok(self.iotlb_insert(did, None, TranslationKind::SecondStage, iova, &leaf))
    }

    fn legacy_context(&self, root: u64, rid: RequesterId) -> Result<CachedContext, WalkError> {
        let haw = self.cfg.haw_mask();
        let re = root & haw & !0xfff;
        let at = re + u64::from(rid.bus()) * 16;
        let (lo, hi) = (self.read(at, reason::ROOT_TABLE_ACCESS, false)?, self.read(at + 8, reason::ROOT_TABLE_ACCESS, false)?);
        if lo & 1 == 0 {
            return Err((reason::ROOT_NOT_PRESENT, false));
        }
        if lo & (bits(11, 1) | self.above_haw()) != 0 || hi != 0 {
            return Err((reason::ROOT_RESERVED, false));
        }
        let at = (lo & haw & !0xfff) + u64::from(rid.devfn()) * 16;
        let (lo, hi) =
            (self.read(at, reason::CONTEXT_TABLE_ACCESS, false)?, self.read(at + 8, reason::CONTEXT_TABLE_ACCESS, false)?);
        // FPD (bit 1) applies even to a not-present entry (§9.3).
        let fpd = lo & 2 != 0;
        if lo & 1 == 0 {
            return Err((reason::CONTEXT_NOT_PRESENT, fpd));
        }
        if lo & (bits(11, 4) | self.above_haw()) != 0 || hi & (bits(7, 7) | bits(63, 24)) != 0 {
            return Err((reason::CONTEXT_RESERVED, fpd));
        }
        // CAST: fields masked to their widths.
        let tt = ((lo >> 2) & 3) as u8;
        let aw = (hi & 7) as u8;
        let tt_ok = match tt {
            0 => true,
            1 => self.cfg.dt(),
            2 => self.cfg.pt(),
            _ => false,
        };
        if !tt_ok || (tt != 2 && self.cfg.sagaw() & (1 << aw) == 0) {
            return Err((reason::CONTEXT_INVALID, fpd));
        }
        Ok(CachedContext::Legacy { did: ((hi >> 8) & 0xffff) as u16, tt, aw, slptptr: lo & haw & !0xfff, fpd })
    }

    /// A second-stage walk (§9.8 / §3.7): `aw` 1, 2, 3 for 3, 4, 5 levels; R and W are checked
    /// at every level. `sm` selects the scalable-mode fault reasons.
    fn walk_second_stage(&mut self, table: u64, aw: u8, iova: u64, write: bool, sm: bool) -> Result<Leaf, u8> {
        let levels = u32::from(aw) + 2;
        let width = (12 + 9 * levels).min(self.cfg.mgaw());
        if iova >> width != 0 {
            return Err(if sm { reason::SM_BEYOND_AW } else { reason::BEYOND_AGAW });
        }
        let haw = self.cfg.haw_mask();
        let (access, rsvd, not_present) = if sm {
            (reason::SM_SS_ACCESS, reason::SM_SS_RESERVED, reason::SM_SS_NOT_PRESENT)
        } else {
            (reason::PAGING_ENTRY_ACCESS, reason::PAGING_RESERVED, if write { reason::WRITE } else { reason::READ })
        };
        let denied = match (sm, write) {
            (false, true) => reason::WRITE,
            (false, false) => reason::READ,
            (true, true) => reason::SM_WRITE,
            (true, false) => reason::SM_READ,
        };
        let mut tbl = table & haw & !0xfff;
        let (mut r, mut w) = (true, true);
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let e = self.mem.read_u64(tbl + ((iova >> shift) & 511) * 8).ok_or(access)?;
            let (er, ew) = (e & 1 != 0, e & 2 != 0);
            if !er && !ew {
                return Err(not_present);
            }
            let large = level > 1 && e & (1 << 7) != 0;
            let leaf = level == 1 || large;
            let mut reserved = e & self.above_haw() & bits(51, 12);
            if large {
                let ok = (level == 2 && self.cfg.sllps() & 1 != 0) || (level == 3 && self.cfg.sllps() & 2 != 0);
                if !ok {
                    return Err(rsvd);
                }
                reserved |= e & bits(shift - 1, 12);
            }
            // SNP (bit 11) is reserved in non-leaf entries, and in legacy leaves unless ECAP.SC.
            if !leaf || (!sm && !self.cfg.sc()) {
                reserved |= e & (1 << 11);
            }
            if reserved != 0 {
                return Err(rsvd);
            }
            if (write && !ew) || (!write && !er) {
                return Err(denied);
            }
            r &= er;
            w &= ew;
            if leaf {
                let size = 1u64 << shift;
                return Ok(Leaf { base: e & haw & bits(51, 12) & !(size - 1), size, read: r, write: w });
            }
            tbl = e & haw & bits(51, 12);
        }
        unreachable!("the last level is a leaf")
    }

    /// Scalable mode (§3.4.3; §9.2 root, §9.4 context, §9.5 PASID directory, §9.6 PASID entry).
    fn scalable(&mut self, root: u64, rid: RequesterId, pasid: Option<u32>, iova: u64, write: bool) -> Result<Translation, WalkError> {
        let ctx = match self.ctx_cache.get(&rid.0) {
            Some(c) => *c,
            None => {
                let c = self.scalable_context(root, rid)?;
                self.ctx_cache.insert(rid.0, c);
                c
            }
        };
        let CachedContext::Scalable { pasid_dir, pdts, pasid_enable, rid_pasid, fpd } = ctx else {
            return Err((reason::SM_CONTEXT_INVALID, false));
        };
        let p = match pasid {
            // Without ECAP.PASID or the context's PASIDE, requests with a PASID are blocked.
            Some(_) if !pasid_enable || !self.cfg.pasid() => return Err((reason::SM_PASID_DISABLED, fpd)),
            Some(p) => p,
            // Requests without PASID use the RID_PASID entry (§9.4).
            None => rid_pasid,
        };
        // PDTS: the directory has 2^(PDTS + 7) entries.
        if u64::from(p >> 6) >= 1u64 << (pdts + 7) {
            return Err((reason::SM_PASID_TOO_LARGE, fpd));
        }
        let pe = match self.pasid_cache.get(&(rid.0, p)) {
            Some(e) => *e,
            None => {
                let e = self.pasid_entry(pasid_dir, p, fpd)?;
                self.pasid_cache.insert((rid.0, p), e);
                e
            }
        };
        let fpd = fpd || pe.fpd;
        if pe.pgtt == 4 {
            return Ok(Translation { phys: iova, page_size: 0x1000, kind: TranslationKind::PassThrough, did: Some(pe.did), cached: false });
        }
        if let Some(t) = self.iotlb_lookup(pe.did, Some(p), iova, write) {
            return Ok(t);
        }
        let (kind, leaf) = match pe.pgtt {
            2 => (TranslationKind::SecondStage, self.walk_second_stage(pe.ssptptr, pe.aw, iova, write, true)),
            1 => (TranslationKind::FirstStage, self.walk_first_stage(pe.fsptptr, pe.fspm, iova, write, None)),
            _ => (TranslationKind::Nested, self.walk_first_stage(pe.fsptptr, pe.fspm, iova, write, Some((pe.ssptptr, pe.aw)))),
        };
        let leaf = leaf.map_err(|r| (r, fpd))?;
        Ok(self.iotlb_insert(pe.did, Some(p), kind, iova, &leaf))
    }

    fn scalable_context(&self, root: u64, rid: RequesterId) -> Result<CachedContext, WalkError> {
        let haw = self.cfg.haw_mask();
        let devfn = rid.devfn();
        // Lower half for devfn 0-127, upper half for 128-255 (§9.2).
        let at = (root & haw & !0xfff) + u64::from(rid.bus()) * 16 + if devfn < 128 { 0 } else { 8 };
        let half = self.read(at, reason::SM_ROOT_ACCESS, false)?;
        if half & 1 == 0 {
            return Err((reason::SM_ROOT_NOT_PRESENT, false));
        }
        if half & (bits(11, 1) | self.above_haw()) != 0 {
            return Err((reason::SM_ROOT_RESERVED, false));
        }
        let at = (half & haw & !0xfff) + u64::from(devfn & 0x7f) * 32;
        let mut w = [0u64; 4];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self.read(at + 8 * i as u64, reason::SM_CONTEXT_ACCESS, false)?;
        }
        let fpd = w[0] & 2 != 0;
        if w[0] & 1 == 0 {
            return Err((reason::SM_CONTEXT_NOT_PRESENT, fpd));
        }
        if w[0] & (bits(8, 5) | self.above_haw()) != 0 || w[1] & bits(63, 21) != 0 || w[2] != 0 || w[3] != 0 {
            return Err((reason::SM_CONTEXT_RESERVED, fpd));
        }
        Ok(CachedContext::Scalable {
            pasid_dir: w[0] & haw & !0xfff,
            // CAST: a 3-bit field.
            pdts: ((w[0] >> 9) & 7) as u8,
            pasid_enable: w[0] & (1 << 3) != 0,
            // CAST: a 20-bit field.
            rid_pasid: (w[1] & 0xf_ffff) as u32,
            fpd,
        })
    }

    /// PASID directory entry (index PASID[19:6]) then PASID-table entry (index PASID[5:0]).
    fn pasid_entry(&self, dir: u64, pasid: u32, fpd: bool) -> Result<CachedPasid, WalkError> {
        let haw = self.cfg.haw_mask();
        let de = self.read(dir + u64::from(pasid >> 6) * 8, reason::SM_PASID_DIR_ACCESS, fpd)?;
        let fpd = fpd || de & 2 != 0;
        if de & 1 == 0 {
            return Err((reason::SM_PASID_DIR_NOT_PRESENT, fpd));
        }
        if de & (bits(11, 2) | self.above_haw()) != 0 {
            return Err((reason::SM_PASID_DIR_RESERVED, fpd));
        }
        let at = (de & haw & !0xfff) + u64::from(pasid & 63) * 64;
        let mut w = [0u64; 3];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self.read(at + 8 * i as u64, reason::SM_PASID_ACCESS, fpd)?;
        }
        let fpd = fpd || w[0] & 2 != 0;
        // The specification checks P first (QEMU checks the type first and reports 0x5b for a
        // not-present entry, qemu notes §1.5).
        if w[0] & 1 == 0 {
            return Err((reason::SM_PASID_NOT_PRESENT, fpd));
        }
        if w[0] & (bits(11, 10) | self.above_haw()) != 0 || w[1] & bits(22, 16) != 0 || w[2] & (bits(11, 8) | self.above_haw()) != 0
        {
            return Err((reason::SM_PASID_RESERVED, fpd));
        }
        // CAST: fields masked to their widths.
        let e = CachedPasid {
            did: (w[1] & 0xffff) as u16,
            pgtt: ((w[0] >> 6) & 7) as u8,
            aw: ((w[0] >> 2) & 7) as u8,
            ssptptr: w[0] & haw & !0xfff,
            fsptptr: w[2] & haw & !0xfff,
            fspm: ((w[2] >> 2) & 3) as u8,
            fpd,
        };
        let aw_ok = self.cfg.sagaw() & (1 << e.aw) != 0;
        let fspm_ok = e.fspm == 0 || (e.fspm == 1 && self.cfg.fs5lp());
        let valid = match e.pgtt {
            1 => self.cfg.flts() && fspm_ok,
            2 => self.cfg.slts() && aw_ok,
            3 => self.cfg.nest() && self.cfg.flts() && self.cfg.slts() && aw_ok && fspm_ok,
            4 => self.cfg.pt(),
            _ => false,
        };
        if !valid {
            return Err((reason::SM_PASID_INVALID, fpd));
        }
        Ok(e)
    }

    /// A first-stage walk (§3.6, x86 IA-32e paging, 4 or 5 levels): requests are user-mode
    /// (no privileged requests are modelled, as in QEMU), so P and U/S must be set at every
    /// level and R/W for a write; A is set at every level and D on the leaf of a write.
    /// With `nest`, every table access and the output go through the second stage.
    fn walk_first_stage(&mut self, table: u64, fspm: u8, iova: u64, write: bool, nest: Option<(u64, u8)>) -> Result<Leaf, u8> {
        let levels = 4 + u32::from(fspm);
        let width = 12 + 9 * levels;
        // Canonical: bits 63:width-1 all equal.
        let top = (iova as i64) >> (width - 1);
        if top != 0 && top != -1 {
            return Err(reason::SM_NON_CANONICAL);
        }
        let haw = self.cfg.haw_mask();
        let mut tbl = table & haw & !0xfff;
        let mut w = true;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let gpa = tbl + ((iova >> shift) & 511) * 8;
            let at = match nest {
                Some((ss, aw)) => {
                    let l = self.walk_second_stage(ss, aw, gpa, true, true)?;
                    l.base + (gpa & (l.size - 1))
                }
                None => gpa,
            };
            let mut e = self.mem.read_u64(at).ok_or(reason::SM_FS_ACCESS)?;
            if e & 1 == 0 {
                return Err(reason::SM_FS_NOT_PRESENT);
            }
            let ps = e & (1 << 7) != 0;
            let large = ps && (level == 2 || level == 3);
            let mut reserved = e & self.above_haw() & bits(51, 12);
            if ps && (level >= 4 || (level == 3 && !self.cfg.fs1gp())) {
                return Err(reason::SM_FS_RESERVED);
            }
            if large {
                // Bit 12 is PAT in a large-page entry; bits shift-1:13 are reserved.
                reserved |= e & bits(shift - 1, 13);
            }
            if reserved != 0 {
                return Err(reason::SM_FS_RESERVED);
            }
            if e & 4 == 0 {
                return Err(reason::SM_USER);
            }
            if write && e & 2 == 0 {
                return Err(reason::SM_WRITE);
            }
            w &= e & 2 != 0;
            let leaf = level == 1 || large;
            // Accessed at every level, Dirty on the leaf of a write (§3.6.2).
            let mut ad = 1 << 5;
            if leaf && write {
                ad |= 1 << 6;
            }
            if e & ad != ad {
                e |= ad;
                self.mem.write_u64(at, e);
            }
            if leaf {
                let size = 1u64 << shift;
                let base = e & haw & bits(51, 12) & !(size - 1);
                let pa = base + (iova & (size - 1));
                // A cached entry allows writes only once D is set, so a later write walks again
                // and sets it.
                let write_ok = w && write;
                return match nest {
                    Some((ss, aw)) => {
                        let l = self.walk_second_stage(ss, aw, pa, write, true)?;
                        Ok(Leaf { base: l.base + (pa & (l.size - 1) & !0xfff), size: 0x1000, read: true, write: write_ok && l.write })
                    }
                    None => Ok(Leaf { base, size, read: true, write: write_ok }),
                };
            }
            tbl = e & haw & bits(51, 12);
        }
        unreachable!("the last level is a leaf")
    }
}
