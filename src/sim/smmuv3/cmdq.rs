//! The command queue (§4): decoding with the checks that make a command ILLEGAL, what each
//! command does to the model's caches, CMD_SYNC completion, and command errors (§4.5: CONS
//! stays on the bad command, CMDQ_CONS.ERR says why, GERROR.CMDQ_ERR is toggled, and the queue
//! stays stopped until software acknowledges through GERRORN).
//!
//! Layouts from §4.1-§4.7 and Linux's `CMDQ_*` definitions (see [`super::regs`]).

use super::regs::{cr0, gerror, idr5, op, queue};
use super::walk::Stage;
use super::{Inner, InterruptKind, q_empty, q_inc};

/// CMD_SYNC completion signal (§4.7.3 CS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncSignal {
    /// 0b00: none; software polls CONS.
    None,
    /// 0b01: an interrupt (MSI of MSIData to MSIAddress with IDR0.MSI, else the wired line).
    Irq,
    /// 0b10: send event.
    Sev,
}

/// The range of a TLBI by address (§4.4: Address, Leaf, TTL, and with IDR3.RIL the range
/// fields TG, NUM, SCALE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiRange {
    /// The address (VA or IPA), bits 63:12.
    pub address: u64,
    /// Leaf: only last-level entries changed.
    pub leaf: bool,
    /// TTL hint.
    pub ttl: u8,
    /// Translation granule of a range invalidation (0: not a range).
    pub tg: u8,
    /// NUM: (NUM + 1) * 2^SCALE granules.
    pub num: u8,
    /// SCALE.
    pub scale: u8,
}

impl TlbiRange {
    /// The input-address range covered: one page (any entry containing the address) without
    /// TG, else (NUM + 1) * 2^SCALE granules from the address.
    pub fn bytes(&self) -> (u64, u64) {
        if self.tg == 0 {
            return (self.address, 1);
        }
        let granule = match self.tg {
            1 => 12,
            2 => 14,
            _ => 16,
        };
        (self.address, (u64::from(self.num) + 1) << (u32::from(self.scale) + granule))
    }
}

/// A CMD_PRI_RESP response code (§4.7.1 Resp; Linux `enum pri_resp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriResponseCode {
    /// 0b00 Deny: the PCIe "Invalid Request" response.
    Deny,
    /// 0b01 Fail: "Response Failure" (stops the function's PRI).
    Fail,
    /// 0b10 Success.
    Success,
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// CMD_PREFETCH_CONFIG: the model loads the STE into its cache.
    PrefetchConfig {
        /// StreamID.
        sid: u32,
        /// SubstreamID, if SSV.
        ssid: Option<u32>,
    },
    /// CMD_PREFETCH_ADDR: no effect.
    PrefetchAddr {
        /// StreamID.
        sid: u32,
        /// SubstreamID, if SSV.
        ssid: Option<u32>,
        /// Address.
        address: u64,
    },
    /// CMD_CFGI_STE.
    CfgiSte {
        /// StreamID.
        sid: u32,
        /// Leaf.
        leaf: bool,
    },
    /// CMD_CFGI_STE_RANGE: 2^(range + 1) StreamIDs; range 31 is CMD_CFGI_ALL.
    CfgiSteRange {
        /// StreamID (its low range + 1 bits ignored).
        sid: u32,
        /// Range.
        range: u8,
    },
    /// CMD_CFGI_CD.
    CfgiCd {
        /// StreamID.
        sid: u32,
        /// SubstreamID (the CD index).
        ssid: u32,
        /// Leaf.
        leaf: bool,
    },
    /// CMD_CFGI_CD_ALL.
    CfgiCdAll {
        /// StreamID.
        sid: u32,
    },
    /// CMD_TLBI_NH_ALL: every non-Hyp stage-1 entry of a VMID.
    TlbiNhAll {
        /// VMID.
        vmid: u16,
    },
    /// CMD_TLBI_NH_ASID.
    TlbiNhAsid {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
    },
    /// CMD_TLBI_NH_VA.
    TlbiNhVa {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
        /// Address and range.
        range: TlbiRange,
    },
    /// CMD_TLBI_NH_VAA: any ASID.
    TlbiNhVaa {
        /// VMID.
        vmid: u16,
        /// Address and range.
        range: TlbiRange,
    },
    /// CMD_TLBI_EL2_ALL.
    TlbiEl2All,
    /// CMD_TLBI_EL2_ASID.
    TlbiEl2Asid {
        /// ASID.
        asid: u16,
    },
    /// CMD_TLBI_EL2_VA.
    TlbiEl2Va {
        /// ASID.
        asid: u16,
        /// Address and range.
        range: TlbiRange,
    },
    /// CMD_TLBI_EL2_VAA.
    TlbiEl2Vaa {
        /// Address and range.
        range: TlbiRange,
    },
    /// CMD_TLBI_S12_VMALL: every entry of a VMID, both stages.
    TlbiS12Vmall {
        /// VMID.
        vmid: u16,
    },
    /// CMD_TLBI_S2_IPA: stage-2 entries for an IPA range (not combined stage 1+2 entries,
    /// which need TLBI_NH_ALL or TLBI_S12_VMALL, §4.4.3).
    TlbiS2Ipa {
        /// VMID.
        vmid: u16,
        /// IPA and range.
        range: TlbiRange,
    },
    /// CMD_TLBI_NSNH_ALL: every non-Hyp entry.
    TlbiNsnhAll,
    /// CMD_ATC_INV: logged only.
    AtcInv {
        /// StreamID.
        sid: u32,
        /// SubstreamID, if SSV.
        ssid: Option<u32>,
        /// Global.
        global: bool,
        /// Address.
        address: u64,
        /// Size (log2 of 4 KiB pages).
        size: u8,
    },
    /// CMD_PRI_RESP.
    PriResp {
        /// StreamID.
        sid: u32,
        /// SubstreamID, if SSV (the response carries a PASID).
        ssid: Option<u32>,
        /// Page request group index.
        prgi: u16,
        /// The response.
        response: PriResponseCode,
    },
    /// CMD_RESUME: logged only (no stalls are modelled).
    Resume {
        /// StreamID.
        sid: u32,
        /// STAG.
        stag: u16,
        /// Action (Ac/Ab bits 13:12).
        action: u8,
    },
    /// CMD_STALL_TERM: logged only.
    StallTerm {
        /// StreamID.
        sid: u32,
    },
    /// CMD_SYNC.
    Sync {
        /// Completion signal.
        signal: SyncSignal,
        /// MSIData.
        msi_data: u32,
        /// MSIAddress (bits 51:2).
        msi_address: u64,
    },
}

/// One command as the model processed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedCommand {
    /// Queue index (without the wrap bit).
    pub index: u32,
    /// The two words.
    pub raw: [u64; 2],
    /// Decoded, or the CERROR code (CERROR_ILL, CERROR_ABT) it raised.
    pub command: Result<Command, u32>,
    /// For CFGI_STE and CFGI_CD: the structure in memory when the command was processed
    /// (`None` if it could not be located), so a test can check it was written first.
    pub snapshot: Option<[u64; 8]>,
}

fn field(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1u64 << width) - 1)
}

impl Inner {
    /// Decodes a command; `Err(CERROR_ILL)` for unknown opcodes and invalid fields (§4.1.4).
    fn decode(&self, w: [u64; 2]) -> Result<Command, u32> {
        let ill = Err(queue::CERROR_ILL);
        let (lo, hi) = (w[0], w[1]);
        // CAST (throughout): fields masked to their widths.
        let opcode = field(lo, 0, 8) as u8;
        let sid = field(lo, 32, 32) as u32;
        let ssec = lo & (1 << 10) != 0;
        let ssv = lo & (1 << 11) != 0;
        let ssid = field(lo, 12, 20) as u32;
        let s1 = self.cfg.s1p();
        let s2 = self.cfg.s2p();
        let tlbi_range = |c: &Self| -> Result<TlbiRange, u32> {
            let r = TlbiRange {
                address: hi & !0xfff,
                leaf: hi & 1 != 0,
                ttl: field(hi, 8, 2) as u8,
                tg: field(hi, 10, 2) as u8,
                num: field(lo, 12, 5) as u8,
                scale: field(lo, 20, 5) as u8,
            };
            // Without IDR3.RIL the range fields are RES0; the model treats a non-zero one as
            // ILLEGAL, the strict choice of the CONSTRAINED UNPREDICTABLE outcomes (§4.1.4).
            let granule_ok = match r.tg {
                0 => true,
                1 => c.cfg.idr[5] & idr5::GRAN4K != 0,
                2 => c.cfg.idr[5] & idr5::GRAN16K != 0,
                _ => c.cfg.idr[5] & idr5::GRAN64K != 0,
            };
            if (!c.cfg.ril() && (r.tg != 0 || r.num != 0 || r.scale != 0)) || !granule_ok {
                return Err(queue::CERROR_ILL);
            }
            Ok(r)
        };
        let vmid = field(lo, 32, 16) as u16;
        let asid = field(lo, 48, 16) as u16;
        let opt_ssid = |ok: bool| if ok && ssv { Some(ssid) } else { None };
        let cmd = match opcode {
            op::PREFETCH_CONFIG if !ssec => Command::PrefetchConfig { sid, ssid: opt_ssid(true) },
            op::PREFETCH_ADDR if !ssec => {
                Command::PrefetchAddr { sid, ssid: opt_ssid(true), address: hi & !0xfff }
            }
            op::CFGI_STE if !ssec => Command::CfgiSte { sid, leaf: hi & 1 != 0 },
            op::CFGI_STE_RANGE if !ssec => {
                Command::CfgiSteRange { sid, range: field(hi, 0, 5) as u8 }
            }
            op::CFGI_CD if !ssec && s1 => Command::CfgiCd { sid, ssid, leaf: hi & 1 != 0 },
            op::CFGI_CD_ALL if !ssec && s1 => Command::CfgiCdAll { sid },
            op::TLBI_NH_ALL if s1 => Command::TlbiNhAll { vmid },
            op::TLBI_NH_ASID if s1 => Command::TlbiNhAsid { vmid, asid },
            op::TLBI_NH_VA if s1 => Command::TlbiNhVa { vmid, asid, range: tlbi_range(self)? },
            op::TLBI_NH_VAA if s1 => Command::TlbiNhVaa { vmid, range: tlbi_range(self)? },
            op::TLBI_EL2_ALL if self.cfg.hyp() => Command::TlbiEl2All,
            op::TLBI_EL2_ASID if self.cfg.hyp() => Command::TlbiEl2Asid { asid },
            op::TLBI_EL2_VA if self.cfg.hyp() => {
                Command::TlbiEl2Va { asid, range: tlbi_range(self)? }
            }
            op::TLBI_EL2_VAA if self.cfg.hyp() => Command::TlbiEl2Vaa { range: tlbi_range(self)? },
            op::TLBI_S12_VMALL if s2 => Command::TlbiS12Vmall { vmid },
            op::TLBI_S2_IPA if s2 => Command::TlbiS2Ipa { vmid, range: tlbi_range(self)? },
            op::TLBI_NSNH_ALL => Command::TlbiNsnhAll,
            op::ATC_INV if self.cfg.ats() => Command::AtcInv {
                sid,
                ssid: opt_ssid(true),
                global: lo & (1 << 9) != 0,
                address: hi & !0xfff,
                size: field(hi, 0, 6) as u8,
            },
            op::PRI_RESP if self.cfg.pri() => {
                let response = match field(hi, 12, 2) {
                    0 => PriResponseCode::Deny,
                    1 => PriResponseCode::Fail,
                    2 => PriResponseCode::Success,
                    _ => return ill,
                };
                if ssv && self.cfg.ssidsize() == 0 {
                    return ill;
                }
                Command::PriResp {
                    sid,
                    ssid: opt_ssid(true),
                    prgi: field(hi, 0, 9) as u16,
                    response,
                }
            }
            op::RESUME => Command::Resume {
                sid,
                stag: field(hi, 0, 16) as u16,
                action: field(lo, 12, 2) as u8,
            },
            op::STALL_TERM => Command::StallTerm { sid },
            op::CMD_SYNC => {
                let signal = match field(lo, 12, 2) {
                    0 => SyncSignal::None,
                    1 => SyncSignal::Irq,
                    2 => SyncSignal::Sev,
                    _ => return ill,
                };
                Command::Sync {
                    signal,
                    msi_data: field(lo, 32, 32) as u32,
                    msi_address: hi & 0x000f_ffff_ffff_fffc,
                }
            }
            // Everything else, including the Secure-only EL3 invalidations, CFGI_VMS_PIDM
            // (0x07) and commands for features the configuration lacks.
            _ => return ill,
        };
        Ok(cmd)
    }

    /// Runs the command queue from CONS towards PROD, unless it is disabled, stopped by an
    /// unacknowledged command error, or stalled (fault injection).
    pub(crate) fn process_cmdq(&mut self) {
        if self.cr0 & cr0::CMDQEN == 0
            || self.gerror_active(gerror::CMDQ_ERR)
            || self.sync_stalled
            || self.cmdq_stalled
        {
            return;
        }
        let qs = self.cmdq.log2size(self.cfg.cmdqs());
        let entries = 1u64 << qs;
        // Bounded by the queue length: each iteration consumes one command.
        for _ in 0..entries {
            let (prod, cons) = (self.cmdq.prod, self.cmdq.cons);
            if q_empty(prod, cons, qs) {
                break;
            }
            let index = cons & ((1 << qs) - 1);
            let at = self.cmdq.addr() + u64::from(index) * 16;
            let w = match (self.mem.read_u64(at), self.mem.read_u64(at + 8)) {
                (Some(a), Some(b)) => [a, b],
                _ => {
                    self.command_error(index, [0, 0], queue::CERROR_ABT);
                    return;
                }
            };
            let cmd = match self.decode(w) {
                Ok(c) => c,
                Err(code) => {
                    self.command_error(index, w, code);
                    return;
                }
            };
            if let Command::Sync { .. } = cmd
                && self.stall_next_sync
            {
                self.stall_next_sync = false;
                self.sync_stalled = true;
                return;
            }
            let snapshot = self.execute(&cmd);
            self.log.push(LoggedCommand { index, raw: w, command: Ok(cmd), snapshot });
            self.cmdq.cons = q_inc(self.cmdq.cons, qs);
        }
    }

    /// Stops the queue on the command at `index` (§4.5).
    fn command_error(&mut self, index: u32, raw: [u64; 2], code: u32) {
        self.cmdq.cons = (self.cmdq.cons & !queue::ERR_MASK) | code << queue::ERR_SHIFT;
        self.log.push(LoggedCommand { index, raw, command: Err(code), snapshot: None });
        self.raise_gerror(gerror::CMDQ_ERR);
    }

    /// Applies one command. Returns the structure snapshot for CFGI_STE / CFGI_CD.
    fn execute(&mut self, c: &Command) -> Option<[u64; 8]> {
        match *c {
            Command::PrefetchConfig { sid, .. } => {
                // A prefetch may load the configuration into the cache (§4.2.1): a driver that
                // prefetches before writing the STE then needs its CFGI.
                if !self.ste_cache.contains_key(&sid)
                    && let Ok(s) = self.fetch_ste(sid)
                {
                    self.ste_cache.insert(sid, s);
                }
            }
            Command::CfgiSte { sid, .. } => {
                // Invalidates the STE and every CD cached through it (§4.3.1).
                self.ste_cache.remove(&sid);
                self.cd_cache.retain(|&(s, _), _| s != sid);
                return self.ste_snapshot(sid);
            }
            Command::CfgiSteRange { sid, range } => {
                if range >= 31 {
                    self.ste_cache.clear();
                    self.cd_cache.clear();
                } else {
                    let mask = !((2u64 << range) - 1);
                    let hit = |s: u32| (u64::from(s) ^ u64::from(sid)) & mask == 0;
                    self.ste_cache.retain(|&s, _| !hit(s));
                    self.cd_cache.retain(|&(s, _), _| !hit(s));
                }
            }
            Command::CfgiCd { sid, ssid, .. } => {
                self.cd_cache.remove(&(sid, ssid));
                return self.cd_snapshot(sid, ssid);
            }
            Command::CfgiCdAll { sid } => self.cd_cache.retain(|&(s, _), _| s != sid),
            Command::TlbiNhAll { vmid } => {
                let v = self.vmid_tag(vmid);
                self.tlb.retain(|e| e.el2 || e.stage == Stage::Stage2 || e.vmid != v);
            }
            Command::TlbiNhAsid { vmid, asid } => {
                let v = self.vmid_tag(vmid);
                self.tlb.retain(|e| {
                    e.el2 || e.stage == Stage::Stage2 || e.vmid != v || e.asid != Some(asid)
                });
            }
            Command::TlbiNhVa { vmid, asid, range } => {
                let v = self.vmid_tag(vmid);
                let r = self.range(&range);
                self.tlb.retain(|e| {
                    let asid_hit = e.asid == Some(asid) || !e.ng;
                    e.el2
                        || e.stage == Stage::Stage2
                        || e.vmid != v
                        || !asid_hit
                        || !overlaps(e.iova, e.size, r)
                });
            }
            Command::TlbiNhVaa { vmid, range } => {
                let v = self.vmid_tag(vmid);
                let r = self.range(&range);
                self.tlb.retain(|e| {
                    e.el2 || e.stage == Stage::Stage2 || e.vmid != v || !overlaps(e.iova, e.size, r)
                });
            }
            Command::TlbiEl2All => self.tlb.retain(|e| !e.el2),
            Command::TlbiEl2Asid { asid } => self.tlb.retain(|e| !e.el2 || e.asid != Some(asid)),
            Command::TlbiEl2Va { asid, range } => {
                let r = self.range(&range);
                self.tlb.retain(|e| {
                    !e.el2 || (e.asid != Some(asid) && e.ng) || !overlaps(e.iova, e.size, r)
                });
            }
            Command::TlbiEl2Vaa { range } => {
                let r = self.range(&range);
                self.tlb.retain(|e| !e.el2 || !overlaps(e.iova, e.size, r));
            }
            Command::TlbiS12Vmall { vmid } => {
                let v = self.vmid_tag(vmid);
                self.tlb.retain(|e| e.el2 || e.vmid != v);
            }
            Command::TlbiS2Ipa { vmid, range } => {
                let v = self.vmid_tag(vmid);
                let r = self.range(&range);
                self.tlb.retain(|e| {
                    e.stage != Stage::Stage2 || e.vmid != v || !overlaps(e.ipa, e.size, r)
                });
            }
            Command::TlbiNsnhAll => self.tlb.retain(|e| e.el2),
            Command::PriResp { sid, ssid, prgi, response } => {
                self.pri_response(sid, ssid, prgi, response)
            }
            Command::Sync { signal, msi_data, msi_address } => match signal {
                SyncSignal::None => {}
                SyncSignal::Irq => self.interrupt(InterruptKind::CmdSync, msi_address, msi_data),
                SyncSignal::Sev => {
                    if self.cfg.sev() {
                        self.interrupts
                            .push(super::Interrupt { kind: InterruptKind::Sev, msi: None });
                    }
                }
            },
            Command::PrefetchAddr { .. }
            | Command::AtcInv { .. }
            | Command::Resume { .. }
            | Command::StallTerm { .. } => {}
        }
        None
    }

    /// The VMID tag TLB entries carry for `vmid` (none without stage 2).
    fn vmid_tag(&self, vmid: u16) -> Option<u16> {
        self.cfg.s2p().then_some(vmid)
    }

    /// The input-address range an invalidation covers.
    fn range(&self, r: &TlbiRange) -> (u64, u64) {
        let (start, len) = r.bytes();
        (start, start.saturating_add(len))
    }

    fn ste_snapshot(&self, sid: u32) -> Option<[u64; 8]> {
        let at = self.ste_address(sid).ok()?;
        let mut w = [0u64; 8];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self.mem.read_u64(at + 8 * i as u64)?;
        }
        Some(w)
    }

    /// The CD at index `ssid` of `sid`'s CD table, read directly (not through stage 2).
    fn cd_snapshot(&self, sid: u32, ssid: u32) -> Option<[u64; 8]> {
        let ste = self.ste_snapshot(sid)?;
        let ptr = ste[0] & super::regs::ste::S1CTXPTR_MASK;
        let cdmax = (ste[0] >> 59) & 0x1f;
        let fmt = (ste[0] >> 4) & 3;
        let at = if cdmax == 0 || fmt == 0 {
            ptr + u64::from(ssid) * 64
        } else {
            let l2bits = if fmt == 1 { 6 } else { 10 };
            let d = self.mem.read_u64(ptr + u64::from(ssid >> l2bits) * 8)?;
            (d & super::regs::cd::L1_L2PTR_MASK) + u64::from(ssid & ((1 << l2bits) - 1)) * 64
        };
        let mut w = [0u64; 8];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self.mem.read_u64(at + 8 * i as u64)?;
        }
        Some(w)
    }
}

fn overlaps(start: u64, size: u64, (s, e): (u64, u64)) -> bool {
    start < e && s < start.saturating_add(size)
}
