//! Transaction handling (§3.2-§3.4): the stream table (linear and 2-level, §3.3), STE and CD
//! decoding and checks (§5.2, §5.4), CD tables (linear and 2-level, substreams), stage 1 and
//! stage 2 walks of VMSAv8-64 tables with the 4 KiB granule (Arm ARM D8), the TLB and
//! configuration caches in front, and the event records a failure produces (§7.3).
//!
//! Only valid structures are cached (an ILLEGAL STE or CD is read again next time). Only leaf
//! translations are cached, tagged by VMID (when stage 2 is implemented), ASID (stage 1; a
//! global page matches every ASID) and the EL2 regime: a driver that changes a leaf and skips
//! the TLBI keeps seeing the old translation, as on hardware and QEMU.

use super::regs::{cd, cr0, event, field, gbpa, pa_bits, ste, strtab};
use super::{Event, EventOutcome, Inner, ModelError, q_full, q_inc};

/// The attributes of a transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// A write (else a read).
    pub write: bool,
    /// Privileged (PnU = 1).
    pub privileged: bool,
    /// An instruction fetch (InD = 1); reads only.
    pub instruction: bool,
}

impl Access {
    /// An unprivileged data read.
    pub const READ: Self = Self { write: false, privileged: false, instruction: false };
    /// An unprivileged data write.
    pub const WRITE: Self = Self { write: true, privileged: false, instruction: false };
}

/// Which stages translated an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// SMMUEN clear with GBPA bypass, or STE.Config bypass, or S1DSS bypass with stage 2 off.
    Bypass,
    /// Stage 1 only.
    Stage1,
    /// Stage 2 only (including stage 1 bypassed through S1DSS).
    Stage2,
    /// Stage 1 then stage 2.
    Nested,
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The output (physical) address.
    pub phys: u64,
    /// Size of the page or block that mapped it (4 KiB for bypass).
    pub page_size: u64,
    /// Which stages applied.
    pub stage: Stage,
    /// The ASID the translation is tagged with (stage 1).
    pub asid: Option<u16>,
    /// The VMID it is tagged with (when stage 2 is implemented).
    pub vmid: Option<u16>,
    /// Whether it came from the TLB (no table was read).
    pub cached: bool,
}

/// Why a transaction was terminated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// SMMUEN clear and GBPA.ABORT set: aborted, no event (§6.3.14).
    GlobalAbort,
    /// STE.Config = abort: aborted, no event (§5.2).
    StreamAbort,
    /// A configuration error or translation fault, with its event (recorded or not, see
    /// [`Event::outcome`]).
    Fault(Event),
}

/// A decoded, valid STE (§5.2).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ste {
    pub(crate) raw: [u64; 8],
    pub(crate) config: u64,
    pub(crate) s1fmt: u64,
    pub(crate) s1ctxptr: u64,
    pub(crate) s1cdmax: u32,
    pub(crate) s1dss: u64,
    pub(crate) ppar: bool,
    pub(crate) el2: bool,
    pub(crate) vmid: u16,
    pub(crate) s2: Option<S2Cfg>,
}

/// Stage-2 parameters of an STE.
#[derive(Clone, Copy, Debug)]
pub(crate) struct S2Cfg {
    pub(crate) ttb: u64,
    pub(crate) ias: u32,
    pub(crate) start_level: u32,
    pub(crate) ps: u32,
    pub(crate) affd: bool,
    pub(crate) ha: bool,
    pub(crate) record: bool,
}

/// A decoded, valid CD (§5.4).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cd {
    pub(crate) raw: [u64; 8],
    pub(crate) asid: u16,
    /// TTB0 (or None if EPD0) and its input size in bits.
    pub(crate) ttb0: Option<(u64, u32)>,
    pub(crate) ttb1: Option<(u64, u32)>,
    pub(crate) ips: u32,
    pub(crate) affd: bool,
    pub(crate) wxn: bool,
    pub(crate) ha: bool,
    pub(crate) had0: bool,
    pub(crate) had1: bool,
    pub(crate) record: bool,
}

/// Permissions of a stage-1 leaf, hierarchical bits folded in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct S1Perm {
    /// AP[2]: read-only.
    ro: bool,
    /// AP[1]: unprivileged access allowed.
    user: bool,
    pxn: bool,
    uxn: bool,
}

/// Permissions of a stage-2 leaf.
#[derive(Clone, Copy, Debug)]
pub(crate) struct S2Perm {
    r: bool,
    w: bool,
    /// XN[1:0] (without IDR3.XNX only XN[1] exists).
    xn: u8,
}

/// One cached leaf translation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TlbEntry {
    pub(crate) vmid: Option<u16>,
    pub(crate) asid: Option<u16>,
    /// Not-global (nG): matches only its ASID.
    pub(crate) ng: bool,
    pub(crate) el2: bool,
    pub(crate) stage: Stage,
    /// Input address of the page.
    pub(crate) iova: u64,
    pub(crate) size: u64,
    pub(crate) phys: u64,
    /// For stage 2 only: the IPA range it covers is (iova, size); for nested: the IPA of the
    /// page, for TLBI_S2_IPA matching of stage-2-only entries.
    pub(crate) s1: Option<S1Perm>,
    pub(crate) s2: Option<S2Perm>,
    /// CD.R / STE.S2R at insertion, for permission faults on hits.
    pub(crate) record_s1: bool,
    pub(crate) record_s2: bool,
    pub(crate) ipa: u64,
}

/// A fault found while translating, before it becomes an event.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fault {
    code: u8,
    stage2: bool,
    class: u8,
    /// IPA (stage-2 faults) or fetch address (fetch faults).
    extra: u64,
}

impl Fault {
    fn s1(code: u8) -> Self {
        Self { code, stage2: false, class: event::CLASS_IN, extra: 0 }
    }
    fn cfg(code: u8) -> Self {
        Self { code, stage2: false, class: 0, extra: 0 }
    }
    fn fetch(code: u8, address: u64) -> Self {
        Self { code, stage2: false, class: 0, extra: address }
    }
}

/// A leaf found by a walk.
struct Leaf {
    base: u64,
    size: u64,
    ng: bool,
}

const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
}

/// Output address bits of a 4 KiB-granule descriptor (47:12; 52-bit OA is not modelled).
const OA: u64 = bits(47, 12);

impl Inner {
    /// Translates one transaction, producing an event on failure.
    pub(crate) fn translate(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<super::Translation, Termination> {
        match self.translate_inner(sid, ssid, iova, access) {
            Ok(t) => Ok(t),
            Err(Err(t)) => Err(t),
            Err(Ok((f, record))) => {
                Err(Termination::Fault(self.record_event(f, sid, ssid, iova, access, record)))
            }
        }
    }

    /// `Err(Ok((fault, record)))` is a fault to report; `Err(Err(t))` a silent termination.
    #[allow(clippy::type_complexity, reason = "a private two-level result")]
    fn translate_inner(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<Translation, Result<(Fault, bool), Termination>> {
        if self.cr0 & cr0::SMMUEN == 0 {
            if self.gbpa & gbpa::ABORT != 0 {
                return Err(Err(Termination::GlobalAbort));
            }
            return Ok(bypass(iova));
        }
        let s = match self.ste_cache.get(&sid) {
            Some(s) => *s,
            None => {
                // C_BAD_STREAMID is recorded only with CR2.RECINVSID (§6.3.12).
                let recinvsid = self.cr2 & super::regs::cr2::RECINVSID != 0;
                let s = self
                    .fetch_ste(sid)
                    .map_err(|f| Ok((f, f.code != event::C_BAD_STREAMID || recinvsid)))?;
                self.ste_cache.insert(sid, s);
                s
            }
        };
        let s1_on = s.config & 1 != 0;
        let s2_on = s.config & 2 != 0;
        match s.config {
            ste::CFG_ABORT => return Err(Err(Termination::StreamAbort)),
            ste::CFG_BYPASS => {
                if ssid.is_some() {
                    return Err(Ok((Fault::cfg(event::C_BAD_SUBSTREAMID), true)));
                }
                return Ok(bypass(iova));
            }
            _ => {}
        }
        let vmid = self.cfg.s2p().then_some(s.vmid);
        // Which CD, if stage 1 applies (§5.2 S1CDMax, S1DSS).
        let cd_index = if !s1_on {
            if ssid.is_some() {
                return Err(Ok((Fault::cfg(event::C_BAD_SUBSTREAMID), true)));
            }
            None
        } else if s.s1cdmax == 0 {
            if ssid.is_some() {
                return Err(Ok((Fault::cfg(event::C_BAD_SUBSTREAMID), true)));
            }
            Some(0)
        } else {
            match ssid {
                None => match s.s1dss {
                    ste::S1DSS_BYPASS => None,
                    ste::S1DSS_SSID0 => Some(0),
                    // Terminate, and the reserved 0b11 which behaves as it.
                    _ => return Err(Ok((Fault::cfg(event::F_STREAM_DISABLED), true))),
                },
                Some(x) if u64::from(x) >> s.s1cdmax != 0 => {
                    return Err(Ok((Fault::cfg(event::C_BAD_SUBSTREAMID), true)));
                }
                // With S1DSS = SSID0, substream 0 belongs to traffic without a substream.
                Some(0) if s.s1dss == ste::S1DSS_SSID0 => {
                    return Err(Ok((Fault::cfg(event::F_STREAM_DISABLED), true)));
                }
                Some(x) => Some(x),
            }
        };
        let s2 = if s2_on { s.s2 } else { None };
        let record_s2 = s2.is_some_and(|c| c.record);
        let cd = match cd_index {
            None => None,
            Some(idx) => Some(match self.cd_cache.get(&(sid, idx)) {
                Some(c) => *c,
                None => {
                    let c = self
                        .fetch_cd(sid, &s, idx, s2)
                        .map_err(|f| Ok((f, !f.stage2 || record_s2)))?;
                    self.cd_cache.insert((sid, idx), c);
                    c
                }
            }),
        };
        let stage = match (cd.is_some(), s2.is_some()) {
            (true, true) => Stage::Nested,
            (true, false) => Stage::Stage1,
            (false, true) => Stage::Stage2,
            (false, false) => return Ok(bypass(iova)),
        };
        let asid = cd.map(|c| c.asid);
        let el2 = s.el2;
        // The TLB.
        if let Some(e) = self.tlb.iter().find(|e| {
            e.vmid == vmid
                && e.el2 == el2
                && e.stage == stage
                && (e.asid == asid || (!e.ng && asid.is_some() && e.asid.is_some()))
                && iova.wrapping_sub(e.iova) < e.size
        }) {
            let e = *e;
            check_perms(e.s1, e.s2, access, cd.is_some_and(|c| c.wxn), self.cfg.xnx()).map_err(
                |s2f| {
                    let f = if s2f {
                        Fault {
                            code: event::F_PERMISSION,
                            stage2: true,
                            class: event::CLASS_IN,
                            extra: e.ipa + (iova - e.iova),
                        }
                    } else {
                        Fault::s1(event::F_PERMISSION)
                    };
                    Ok((f, if s2f { e.record_s2 } else { e.record_s1 }))
                },
            )?;
            return Ok(Translation {
                phys: e.phys + (iova - e.iova),
                page_size: e.size,
                stage,
                asid,
                vmid,
                cached: true,
            });
        }
        // Stage 1.
        let (ipa, s1leaf, s1perm) = match cd {
            Some(c) => {
                let record = c.record;
                let (leaf, perm) = self
                    .walk_s1(&c, s2, iova)
                    .map_err(|f| Ok((f, if f.stage2 { record_s2 } else { record })))?;
                (leaf.base + (iova & (leaf.size - 1)), Some(leaf), Some(perm))
            }
            None => (iova, None, None),
        };
        // Stage 2.
        let (pa, s2leaf, s2perm) = match s2 {
            Some(c) => {
                let (leaf, perm) =
                    self.walk_s2(&c, ipa, event::CLASS_IN).map_err(|f| Ok((f, record_s2)))?;
                (leaf.base + (ipa & (leaf.size - 1)), Some(leaf), Some(perm))
            }
            None => (ipa, None, None),
        };
        check_perms(s1perm, s2perm, access, cd.is_some_and(|c| c.wxn), self.cfg.xnx()).map_err(
            |s2f| {
                let f = if s2f {
                    Fault {
                        code: event::F_PERMISSION,
                        stage2: true,
                        class: event::CLASS_IN,
                        extra: ipa,
                    }
                } else {
                    Fault::s1(event::F_PERMISSION)
                };
                Ok((f, if s2f { record_s2 } else { cd.is_some_and(|c| c.record) }))
            },
        )?;
        // The cached page is the smaller of the two leaves.
        let size = match (s1leaf.as_ref(), s2leaf.as_ref()) {
            (Some(a), Some(b)) => a.size.min(b.size),
            (Some(a), None) => a.size,
            (None, Some(b)) => b.size,
            (None, None) => 0x1000,
        };
        let page = iova & !(size - 1);
        self.tlb.push(TlbEntry {
            vmid,
            asid,
            ng: s1leaf.as_ref().is_some_and(|l| l.ng),
            el2,
            stage,
            iova: page,
            size,
            phys: pa - (iova - page),
            s1: s1perm,
            s2: s2perm,
            record_s1: cd.is_some_and(|c| c.record),
            record_s2,
            ipa: ipa - (iova - page),
        });
        Ok(Translation { phys: pa, page_size: size, stage, asid, vmid, cached: false })
    }

    fn read_words(&self, at: u64) -> Option<[u64; 8]> {
        let mut w = [0u64; 8];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self.mem.read_u64(at + 8 * i as u64)?;
        }
        Some(w)
    }

    /// Locates and decodes the STE for `sid` (§3.3).
    pub(crate) fn fetch_ste(&mut self, sid: u32) -> Result<Ste, Fault> {
        let at = self.ste_address(sid)?;
        let w = self.read_words(at).ok_or(Fault::fetch(event::F_STE_FETCH, at))?;
        self.decode_ste(sid, w)
    }

    /// The address of `sid`'s STE, or the fault that prevents finding it.
    pub(crate) fn ste_address(&self, sid: u32) -> Result<u64, Fault> {
        let base = self.strtab_base & strtab::ADDR_MASK;
        let log2size = (self.strtab_cfg & strtab::LOG2SIZE_MASK).min(self.cfg.sidsize());
        if u64::from(sid) >> log2size != 0 {
            return Err(Fault::cfg(event::C_BAD_STREAMID));
        }
        let fmt = (self.strtab_cfg >> strtab::FMT_SHIFT) & 3;
        if fmt == strtab::FMT_2LVL && self.cfg.two_level_strtab() {
            // SPLIT: 6, 8 or 10 (others reserved; the model uses 8 for them, as Linux does).
            let split = match (self.strtab_cfg >> strtab::SPLIT_SHIFT) & 0x1f {
                s @ (6 | 8 | 10) => s,
                _ => 8,
            };
            let l1 = base + u64::from(sid >> split) * 8;
            let d = self.mem.read_u64(l1).ok_or(Fault::fetch(event::F_STE_FETCH, l1))?;
            let span = d & strtab::L1_SPAN_MASK;
            // SPAN 0 marks an invalid L2 table; SPAN n gives 2^(n-1) STEs (§5.1).
            if span == 0 || span > u64::from(split) + 1 {
                return Err(Fault::cfg(event::C_BAD_STREAMID));
            }
            let low = u64::from(sid) & ((1 << split) - 1);
            if low >> (span - 1) != 0 {
                return Err(Fault::cfg(event::C_BAD_STREAMID));
            }
            Ok((d & strtab::ADDR_MASK) + low * 64)
        } else {
            Ok(base + u64::from(sid) * 64)
        }
    }

    fn decode_ste(&mut self, sid: u32, w: [u64; 8]) -> Result<Ste, Fault> {
        let bad = Fault::cfg(event::C_BAD_STE);
        if field(&w, ste::V) == 0 {
            return Err(bad);
        }
        let config = field(&w, ste::CONFIG);
        if config != ste::CFG_ABORT && config & 0b100 == 0 {
            return Err(bad);
        }
        let s1_on = config & 0b101 == 0b101;
        let s2_on = config & 0b110 == 0b110;
        if (s1_on && !self.cfg.s1p()) || (s2_on && !self.cfg.s2p()) {
            return Err(bad);
        }
        let s1cdmax = field(&w, ste::S1CDMAX) as u32;
        let s1fmt = field(&w, ste::S1FMT);
        if s1_on {
            if s1cdmax > self.cfg.ssidsize() {
                return Err(bad);
            }
            if s1cdmax != 0 && (s1fmt == 3 || (s1fmt != cd::FMT_LINEAR && !self.cfg.cd2l())) {
                return Err(bad);
            }
            if field(&w, ste::S1STALLD) != 0 && !self.cfg.stalls() {
                return Err(bad);
            }
        }
        let el2 = self.cfg.hyp() && field(&w, ste::STRW) == ste::STRW_EL2;
        let s2 = if s2_on {
            if field(&w, ste::S2AA64) == 0 {
                self.errors.push(ModelError::Stage2AArch32 { sid });
                return Err(bad);
            }
            if field(&w, ste::S2TG) != 0 || !self.cfg.gran4k() {
                self.errors.push(ModelError::UnmodelledGranule { sid });
                return Err(bad);
            }
            if field(&w, ste::S2ENDI) != 0 || (field(&w, ste::S2S) != 0 && !self.cfg.stalls()) {
                return Err(bad);
            }
            if field(&w, ste::S2HA) != 0 && self.cfg.httu() == 0 {
                return Err(bad);
            }
            let t0sz = field(&w, ste::S2T0SZ) as u32;
            let sl0 = field(&w, ste::S2SL0) as u32;
            if !(16..=39).contains(&t0sz) || sl0 == 3 {
                return Err(bad);
            }
            let ias = 64 - t0sz;
            let start_level = 2 - sl0;
            // The start level resolves ias - (12 + 9 * (3 - level)) bits: at least 1, at most 9
            // plus 4 for up to 16 concatenated tables.
            let top_bits = i64::from(ias) - i64::from(12 + 9 * (3 - start_level));
            if !(1..=13).contains(&top_bits) {
                return Err(bad);
            }
            Some(S2Cfg {
                ttb: w[3] & ste::S2TTB_MASK,
                ias,
                start_level,
                ps: pa_bits(field(&w, ste::S2PS)).min(self.cfg.oas_bits()),
                affd: field(&w, ste::S2AFFD) != 0,
                ha: field(&w, ste::S2HA) != 0,
                record: field(&w, ste::S2R) != 0,
            })
        } else {
            None
        };
        Ok(Ste {
            raw: w,
            config,
            s1fmt,
            s1ctxptr: w[0] & ste::S1CTXPTR_MASK,
            s1cdmax,
            s1dss: field(&w, ste::S1DSS),
            ppar: field(&w, ste::PPAR) != 0,
            el2,
            // CAST: a 16-bit field.
            vmid: field(&w, ste::S2VMID) as u16,
            s2,
        })
    }

    /// Reads 8 bytes at `addr`, an IPA when `s2` is given (nested: the CD and the stage-1
    /// tables live in the guest's IPA space, §3.4.1).
    fn read_ipa_at(
        &mut self,
        addr: u64,
        s2: Option<S2Cfg>,
        class: u8,
        code_on_abort: u8,
    ) -> Result<(u64, u64), Fault> {
        let pa = match s2 {
            Some(c) => {
                let (leaf, perm) = self.walk_s2(&c, addr, class)?;
                if !perm.r {
                    return Err(Fault {
                        code: event::F_PERMISSION,
                        stage2: true,
                        class,
                        extra: addr,
                    });
                }
                leaf.base + (addr & (leaf.size - 1))
            }
            None => addr,
        };
        self.mem.read_u64(pa).map(|v| (v, pa)).ok_or(Fault::fetch(code_on_abort, pa))
    }

    fn read_ipa(
        &mut self,
        addr: u64,
        s2: Option<S2Cfg>,
        class: u8,
        code_on_abort: u8,
    ) -> Result<u64, Fault> {
        self.read_ipa_at(addr, s2, class, code_on_abort).map(|(v, _)| v)
    }

    /// Locates and decodes CD `idx` for `sid` (§3.4.2, §5.4).
    fn fetch_cd(&mut self, sid: u32, s: &Ste, idx: u32, s2: Option<S2Cfg>) -> Result<Cd, Fault> {
        let base = s.s1ctxptr;
        let at = if s.s1cdmax == 0 || s.s1fmt == cd::FMT_LINEAR {
            base + u64::from(idx) * 64
        } else {
            // 2-level: each L2 table holds 64 (4 KiB) or 1024 (64 KiB) CDs.
            let l2bits = if s.s1fmt == cd::FMT_2LVL_4K { 6 } else { 10 };
            let l1 = base + u64::from(idx >> l2bits) * 8;
            let d = self.read_ipa(l1, s2, event::CLASS_CD, event::F_CD_FETCH)?;
            if d & cd::L1_V == 0 {
                return Err(Fault::cfg(event::C_BAD_SUBSTREAMID));
            }
            (d & cd::L1_L2PTR_MASK) + u64::from(idx & ((1 << l2bits) - 1)) * 64
        };
        let mut w = [0u64; 8];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self.read_ipa(at + 8 * i as u64, s2, event::CLASS_CD, event::F_CD_FETCH)?;
        }
        self.decode_cd(sid, idx, w)
    }

    fn decode_cd(&mut self, sid: u32, idx: u32, w: [u64; 8]) -> Result<Cd, Fault> {
        let bad = Fault::cfg(event::C_BAD_CD);
        if field(&w, cd::V) == 0 || field(&w, cd::AA64) == 0 || field(&w, cd::ENDI) != 0 {
            return Err(bad);
        }
        if (field(&w, cd::HA) != 0 || field(&w, cd::HD) != 0) && self.cfg.httu() == 0 {
            return Err(bad);
        }
        if field(&w, cd::S) != 0 && !self.cfg.stalls() {
            return Err(bad);
        }
        if field(&w, cd::A) == 0 && self.cfg.idr0(super::regs::idr0::TERM_MODEL) {
            self.errors.push(ModelError::CdAbortClear { sid, ssid: idx });
        }
        let half =
            |epd: (usize, u32, u32), tsz: (usize, u32, u32), tg: (usize, u32, u32), ttb: u64| {
                if field(&w, epd) != 0 {
                    return Ok(None);
                }
                let t = field(&w, tsz) as u32;
                if !(16..=39).contains(&t) {
                    return Err(false);
                }
                // TG0: 0b00 is 4 KiB; TG1: 0b10 is 4 KiB.
                let four_k = if tg == cd::TG0 { field(&w, tg) == 0 } else { field(&w, tg) == 2 };
                if !four_k {
                    return Err(true);
                }
                Ok(Some((ttb & cd::TTB_MASK, 64 - t)))
            };
        let ttb0 = half(cd::EPD0, cd::T0SZ, cd::TG0, w[1]);
        let ttb1 = half(cd::EPD1, cd::T1SZ, cd::TG1, w[2]);
        let (ttb0, ttb1) = match (ttb0, ttb1) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(true), _) | (_, Err(true)) => {
                self.errors.push(ModelError::UnmodelledGranule { sid });
                return Err(bad);
            }
            _ => return Err(bad),
        };
        let had = self.cfg.had();
        Ok(Cd {
            raw: w,
            // CAST: a 16-bit field (8 bits without ASID16; the upper bits are then ignored).
            asid: field(&w, cd::ASID) as u16
                & if self.cfg.idr0(super::regs::idr0::ASID16) { 0xffff } else { 0xff },
            ttb0,
            ttb1,
            ips: pa_bits(field(&w, cd::IPS)).min(self.cfg.oas_bits()),
            affd: field(&w, cd::AFFD) != 0,
            wxn: field(&w, cd::WXN) != 0,
            ha: field(&w, cd::HA) != 0,
            had0: had && field(&w, cd::HAD0) != 0,
            had1: had && field(&w, cd::HAD1) != 0,
            record: field(&w, cd::R) != 0,
        })
    }

    /// A stage-1 walk (4 KiB granule): TTB0 for addresses below 2^ias0, TTB1 for those whose
    /// bits above 2^ias1 are all ones. Table addresses go through stage 2 when nested.
    fn walk_s1(&mut self, c: &Cd, s2: Option<S2Cfg>, va: u64) -> Result<(Leaf, S1Perm), Fault> {
        let (ttb, ias, had) = if let Some((t, ias)) = c.ttb0.filter(|&(_, ias)| va >> ias == 0) {
            (t, ias, c.had0)
        } else if let Some((t, ias)) = c.ttb1.filter(|&(_, ias)| !va >> ias == 0) {
            (t, ias, c.had1)
        } else {
            return Err(Fault::s1(event::F_TRANSLATION));
        };
        let levels = (ias - 12).div_ceil(9);
        let start = 4 - levels;
        let oa_limit = 1u64 << c.ips;
        if ttb >= oa_limit {
            return Err(Fault::s1(event::F_ADDR_SIZE));
        }
        let mut table = ttb & !0xfff & OA;
        let mut perm = S1Perm { ro: false, user: true, pxn: false, uxn: false };
        for level in start..=3 {
            let shift = 12 + 9 * (3 - level);
            let index =
                (va >> shift) & if level == start { (1u64 << (ias - shift)) - 1 } else { 511 };
            let at = table + index * 8;
            let (d, at_pa) = self.read_ipa_at(at, s2, event::CLASS_TT, event::F_WALK_EABT)?;
            if d & 1 == 0 {
                return Err(Fault::s1(event::F_TRANSLATION));
            }
            let is_table = d & 2 != 0 && level < 3;
            // A block at level 0, or a level-3 entry with bit 1 clear, is invalid (4 KiB).
            if d & 2 == 0 && (level == 0 || level == 3) {
                return Err(Fault::s1(event::F_TRANSLATION));
            }
            if d & OA >= oa_limit {
                return Err(Fault::s1(event::F_ADDR_SIZE));
            }
            if is_table {
                if !had {
                    // APTable[1] (bit 62) removes write, APTable[0] (61) unprivileged access;
                    // UXNTable (60), PXNTable (59).
                    perm.ro |= d & (1 << 62) != 0;
                    perm.user &= d & (1 << 61) == 0;
                    perm.uxn |= d & (1 << 60) != 0;
                    perm.pxn |= d & (1 << 59) != 0;
                }
                table = d & OA;
                continue;
            }
            let size = 1u64 << shift;
            if d & 0x400 == 0 {
                if c.ha && self.cfg.httu() != 0 {
                    // Hardware access-flag update: write AF back (at the descriptor's PA).
                    let _ = self.mem.write_u64(at_pa, d | 0x400);
                } else if !c.affd {
                    return Err(Fault::s1(event::F_ACCESS));
                }
            }
            perm.ro |= d & (1 << 7) != 0;
            perm.user &= d & (1 << 6) != 0;
            perm.pxn |= d & (1 << 53) != 0;
            perm.uxn |= d & (1 << 54) != 0;
            return Ok((Leaf { base: d & OA & !(size - 1), size, ng: d & (1 << 11) != 0 }, perm));
        }
        Err(Fault::s1(event::F_TRANSLATION))
    }

    /// A stage-2 walk (4 KiB granule) of `ipa`; `class` says what the IPA was for.
    fn walk_s2(&mut self, c: &S2Cfg, ipa: u64, class: u8) -> Result<(Leaf, S2Perm), Fault> {
        let fault = |code| Fault { code, stage2: true, class, extra: ipa };
        if ipa >> c.ias != 0 {
            return Err(fault(event::F_TRANSLATION));
        }
        let oa_limit = 1u64 << c.ps;
        if c.ttb >= oa_limit {
            return Err(fault(event::F_ADDR_SIZE));
        }
        let mut table = c.ttb & !0xfff & OA;
        for level in c.start_level..=3 {
            let shift = 12 + 9 * (3 - level);
            // The start level may index up to 16 concatenated tables.
            let index = (ipa >> shift)
                & if level == c.start_level { (1u64 << (c.ias - shift)) - 1 } else { 511 };
            let at = table + index * 8;
            let d = self.mem.read_u64(at).ok_or(Fault {
                code: event::F_WALK_EABT,
                stage2: true,
                class,
                extra: at,
            })?;
            if d & 1 == 0 || (level == 3 && d & 2 == 0) {
                return Err(fault(event::F_TRANSLATION));
            }
            if d & OA >= oa_limit {
                return Err(fault(event::F_ADDR_SIZE));
            }
            if d & 2 != 0 && level < 3 {
                table = d & OA;
                continue;
            }
            let size = 1u64 << shift;
            if d & 0x400 == 0 {
                if c.ha && self.cfg.httu() != 0 {
                    let _ = self.mem.write_u64(at, d | 0x400);
                } else if !c.affd {
                    return Err(fault(event::F_ACCESS));
                }
            }
            // CAST: a 2-bit field.
            let xn = ((d >> 53) & 3) as u8;
            let perm = S2Perm { r: d & (1 << 6) != 0, w: d & (1 << 7) != 0, xn };
            return Ok((Leaf { base: d & OA & !(size - 1), size, ng: false }, perm));
        }
        Err(fault(event::F_TRANSLATION))
    }

    /// Builds the event record for a fault and writes it to the event queue (§7.3, §7.4).
    fn record_event(
        &mut self,
        f: Fault,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
        record: bool,
    ) -> Event {
        let translation_related = matches!(
            f.code,
            event::F_TRANSLATION | event::F_ADDR_SIZE | event::F_ACCESS | event::F_PERMISSION
        );
        let mut raw = [0u64; 4];
        raw[0] = u64::from(f.code) | u64::from(sid) << event::SID_SHIFT;
        if let Some(s) = ssid {
            raw[0] |= event::SSV | u64::from(s & 0xf_ffff) << event::SSID_SHIFT;
        }
        let with_address = translation_related
            || f.code == event::F_WALK_EABT
            || (f.code == event::F_CD_FETCH && f.stage2);
        if with_address {
            raw[1] = if access.privileged { event::PNU } else { 0 }
                | if access.instruction { event::IND } else { 0 }
                | if access.write { 0 } else { event::RNW };
            if f.stage2 {
                raw[1] |= event::S2 | u64::from(f.class) << event::CLASS_SHIFT;
                if f.class != event::CLASS_IN {
                    raw[1] |= event::TT_READ;
                }
            }
            raw[2] = iova;
        }
        match f.code {
            event::F_STE_FETCH | event::F_CD_FETCH | event::F_WALK_EABT => {
                raw[3] = f.extra & bits(51, 3)
            }
            _ if f.stage2 => raw[3] = f.extra & bits(51, 12),
            _ => {}
        }
        let outcome = if !record { EventOutcome::Suppressed } else { self.write_event(raw) };
        let e = Event {
            code: f.code,
            sid,
            ssid,
            address: if with_address { iova } else { 0 },
            ipa_or_fetch: raw[3],
            read: !access.write,
            privileged: access.privileged,
            instruction: access.instruction,
            stage2: f.stage2,
            class: if f.stage2 { f.class } else { 0 },
            raw,
            outcome,
        };
        self.events.push(e);
        e
    }

    /// Writes a record at EVENTQ_PROD (§7.4): discarded when the queue is disabled or full (an
    /// overflow toggles OVFLG unless one is already active).
    pub(crate) fn write_event(&mut self, raw: [u64; 4]) -> EventOutcome {
        if self.cr0 & cr0::EVENTQEN == 0 {
            return EventOutcome::QueueDisabled;
        }
        let qs = self.evtq.log2size(self.cfg.eventqs());
        let (prod, cons) = (self.evtq.prod, self.evtq.cons);
        if q_full(prod, cons, qs) {
            if (prod ^ cons) & super::regs::queue::OVFLG == 0 {
                self.evtq.prod ^= super::regs::queue::OVFLG;
            }
            return EventOutcome::Overflow;
        }
        let index = prod & ((1 << qs) - 1);
        let at = self.evtq.addr() + u64::from(index) * 32;
        for (i, w) in raw.iter().enumerate() {
            if !self.mem.write_u64(at + 8 * i as u64, *w) {
                self.raise_gerror(super::regs::gerror::EVENTQ_ABT_ERR);
                return EventOutcome::Aborted;
            }
        }
        self.evtq.prod = q_inc(prod, qs);
        self.event_irq_pending = true;
        EventOutcome::Recorded(index)
    }
}

fn bypass(iova: u64) -> Translation {
    Translation {
        phys: iova,
        page_size: 0x1000,
        stage: Stage::Bypass,
        asid: None,
        vmid: None,
        cached: false,
    }
}

/// Checks a transaction against the stage-1 and stage-2 permissions; `Err(true)` is a
/// stage-2 permission fault, `Err(false)` a stage-1 one.
fn check_perms(
    s1: Option<S1Perm>,
    s2: Option<S2Perm>,
    a: Access,
    wxn: bool,
    xnx: bool,
) -> Result<(), bool> {
    if let Some(p) = s1 {
        let priv_ = a.privileged;
        if !priv_ && !p.user {
            return Err(false);
        }
        if a.write && p.ro {
            return Err(false);
        }
        if a.instruction {
            let writable = !p.ro;
            // Unprivileged-writable memory is never privileged-executable (Arm ARM D8.4).
            let xn = if priv_ { p.pxn || (p.user && writable) } else { p.uxn };
            if xn || (wxn && writable) {
                return Err(false);
            }
        }
    }
    if let Some(p) = s2 {
        if (a.write && !p.w) || (!a.write && !p.r) {
            return Err(true);
        }
        if a.instruction {
            let xn = if xnx {
                // XN[1:0]: 0b00 executable, 0b01 not at EL1, 0b10 not at all, 0b11 not at EL0.
                match p.xn {
                    0 => false,
                    1 => a.privileged,
                    2 => true,
                    _ => !a.privileged,
                }
            } else {
                p.xn & 2 != 0
            };
            if xn {
                return Err(true);
            }
        }
    }
    Ok(())
}
