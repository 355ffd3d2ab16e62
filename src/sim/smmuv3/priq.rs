//! The PRI queue (§8): page requests injected into the queue the driver set up, overflow with
//! automatic responses (§8.1), and the bookkeeping that checks the driver's CMD_PRI_RESP: every
//! page request group whose Last request was delivered must be answered exactly once.

use std::collections::BTreeMap;
use std::vec::Vec;

use super::cmdq::PriResponseCode;
use super::regs::{cr0, gerror, irq_ctrl, priq, queue};
use super::{Inner, InterruptKind, ModelError, Smmu, q_full, q_inc};
use crate::sim::std;

/// A PCIe page request (PRI Page Request Message), as a device would send it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// StreamID (the requester ID).
    pub sid: u32,
    /// The PASID, if the request carried one (SSV).
    pub ssid: Option<u32>,
    /// Page request group index (9 bits).
    pub prgi: u16,
    /// Last request of its group.
    pub last: bool,
    /// Read access requested.
    pub read: bool,
    /// Write access requested.
    pub write: bool,
    /// Execute access requested (only with a PASID).
    pub exec: bool,
    /// Privileged access requested (only with a PASID).
    pub privileged: bool,
    /// The page address (bits 63:12).
    pub address: u64,
}

impl PageRequest {
    /// The 16-byte PRI queue entry (§8; Linux `PRIQ_0_*`, `PRIQ_1_*`).
    pub fn encode(&self) -> [u64; 2] {
        let mut w0 = u64::from(self.sid);
        if let Some(s) = self.ssid {
            w0 |= priq::SSV | u64::from(s & 0xf_ffff) << priq::SSID_SHIFT;
            // X and Priv exist only with a PASID (§8).
            if self.exec {
                w0 |= priq::EXEC;
            }
            if self.privileged {
                w0 |= priq::PRIV;
            }
        }
        if self.read {
            w0 |= priq::READ;
        }
        if self.write {
            w0 |= priq::WRITE;
        }
        if self.last {
            w0 |= priq::LAST;
        }
        [w0, (self.address & priq::ADDR_MASK) | (u64::from(self.prgi) & priq::PRGI_MASK)]
    }
}

/// Who answered a page request group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriResponder {
    /// The driver, with CMD_PRI_RESP.
    Command,
    /// The SMMU itself, because the group's Last request was discarded (overflow, or the
    /// queue disabled; §8.1).
    Automatic,
}

/// One PRG response sent to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriResponse {
    /// StreamID.
    pub sid: u32,
    /// The PASID on the response, if any.
    pub ssid: Option<u32>,
    /// Page request group index.
    pub prgi: u16,
    /// The response code (an automatic Failure is `Fail`).
    pub code: PriResponseCode,
    /// Who sent it.
    pub responder: PriResponder,
    /// The PASID the group's requests carried (to check the response against).
    pub request_ssid: Option<u32>,
    /// Whether a group was awaiting this response; an unexpected one is also a
    /// [`ModelError::UnexpectedPriResponse`].
    pub expected: bool,
}

/// What happened to an injected page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriOutcome {
    /// Written to the PRI queue at this index (without the wrap bit).
    Queued(u32),
    /// Discarded because the queue was full or an overflow was active (PRIQ_PROD.OVFLG
    /// toggled if none was); a Last request was answered automatically.
    Overflow(Option<PriResponse>),
    /// Discarded because CR0.PRIQEN is clear; a Last request was answered automatically.
    QueueDisabled(Option<PriResponse>),
    /// Writing the entry failed (GERROR.PRIQ_ABT_ERR).
    Aborted,
    /// The SMMU has no PRI (IDR0.PRI clear): the request goes nowhere.
    Unsupported,
}

/// A page request group seen by the model.
#[derive(Clone, Copy, Debug, Default)]
struct Group {
    ssid: Option<u32>,
    requests: u32,
    last_delivered: bool,
}

#[derive(Debug, Default)]
pub(crate) struct PriState {
    groups: BTreeMap<(u32, u16), Group>,
    responses: Vec<PriResponse>,
}

impl Inner {
    fn inject(&mut self, r: PageRequest) -> PriOutcome {
        if !self.cfg.pri() {
            return PriOutcome::Unsupported;
        }
        let r = PageRequest { prgi: r.prgi & 0x1ff, ..r };
        if self.cr0 & cr0::PRIQEN == 0 {
            return PriOutcome::QueueDisabled(self.auto_respond(&r));
        }
        let qs = self.priq.log2size(self.cfg.priqs());
        let (prod, cons) = (self.priq.prod, self.priq.cons);
        let overflow_active = (prod ^ cons) & queue::OVFLG != 0;
        if overflow_active || q_full(prod, cons, qs) {
            if !overflow_active {
                self.priq.prod ^= queue::OVFLG;
            }
            return PriOutcome::Overflow(self.auto_respond(&r));
        }
        let index = prod & ((1 << qs) - 1);
        let at = self.priq.addr() + u64::from(index) * 16;
        let w = r.encode();
        if !(self.mem.write_u64(at, w[0]) && self.mem.write_u64(at + 8, w[1])) {
            self.raise_gerror(gerror::PRIQ_ABT_ERR);
            return PriOutcome::Aborted;
        }
        self.priq.prod = q_inc(prod, qs);
        let g = self.pri.groups.entry((r.sid, r.prgi)).or_default();
        g.ssid = r.ssid;
        g.requests += 1;
        g.last_delivered |= r.last;
        // PRIQ_IRQ_CFG2.LO (bit 31): interrupt only for Last requests.
        let lo = self.cfg.msi() && self.priq_msi.2 & (1 << 31) != 0;
        if self.irq_ctrl & irq_ctrl::PRIQ_IRQEN != 0 && (r.last || !lo) {
            let cfg = self.priq_msi;
            self.interrupt(InterruptKind::Pri, cfg.0, cfg.1);
        }
        PriOutcome::Queued(index)
    }

    /// The automatic PRG response for a discarded request (§8.1): none unless Last; Success,
    /// with the PASID when IDR3.PPS or the STE's PPAR says so; Failure without PASID when a
    /// PASID-tagged request's STE cannot be checked.
    fn auto_respond(&mut self, r: &PageRequest) -> Option<PriResponse> {
        if !r.last {
            return None;
        }
        let (ssid, code) = match r.ssid {
            None => (None, PriResponseCode::Success),
            Some(s) if self.cfg.pps() => (Some(s), PriResponseCode::Success),
            Some(s) => {
                let ste =
                    if self.cr0 & cr0::SMMUEN != 0 { self.fetch_ste(r.sid).ok() } else { None };
                match ste {
                    Some(e) => (e.ppar.then_some(s), PriResponseCode::Success),
                    None => (None, PriResponseCode::Fail),
                }
            }
        };
        let group = self.pri.groups.remove(&(r.sid, r.prgi));
        let resp = PriResponse {
            sid: r.sid,
            ssid,
            prgi: r.prgi,
            code,
            responder: PriResponder::Automatic,
            request_ssid: r.ssid.or(group.and_then(|g| g.ssid)),
            expected: true,
        };
        self.pri.responses.push(resp);
        Some(resp)
    }

    /// A CMD_PRI_RESP from the driver.
    pub(crate) fn pri_response(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
        prgi: u16,
        code: PriResponseCode,
    ) {
        let waiting = self.pri.groups.get(&(sid, prgi)).is_some_and(|g| g.last_delivered);
        let group = if waiting { self.pri.groups.remove(&(sid, prgi)) } else { None };
        if !waiting {
            self.errors.push(ModelError::UnexpectedPriResponse { sid, ssid, prgi });
        }
        // The PASID the endpoint expects on the response (§8.1: STE.PPAR mirrors the
        // function's "PRG Response PASID Required"), checked when the STE can be read.
        if let Some(g) = group
            && !self.cfg.pps()
            && let Ok(ste) = self.fetch_ste(sid)
        {
            let expected = if ste.ppar { g.ssid } else { None };
            if expected != ssid {
                self.errors.push(ModelError::PriResponsePasidMismatch {
                    sid,
                    prgi,
                    expected,
                    got: ssid,
                });
            }
        }
        self.pri.responses.push(PriResponse {
            sid,
            ssid,
            prgi,
            code,
            responder: PriResponder::Command,
            request_ssid: group.and_then(|g| g.ssid),
            expected: waiting,
        });
    }
}

impl Smmu {
    /// Injects a page request as a PRI-capable device would send it: written to the PRI queue
    /// the driver set up (PRIQ_BASE, at PRIQ_PROD), or discarded with an automatic response
    /// on overflow (§8.1). The unit is stepped before and its registers published after.
    pub fn inject_page_request(&self, request: PageRequest) -> PriOutcome {
        let mut i = self.inner.borrow_mut();
        i.step();
        let o = i.inject(request);
        i.publish();
        o
    }

    /// Every PRG response sent so far (by the driver's CMD_PRI_RESP or automatically), oldest
    /// first.
    pub fn pri_responses(&self) -> Vec<PriResponse> {
        self.inner.borrow().pri.responses.clone()
    }

    /// Takes the response list, leaving it empty.
    pub fn take_pri_responses(&self) -> Vec<PriResponse> {
        core::mem::take(&mut self.inner.borrow_mut().pri.responses)
    }

    /// The (StreamID, PRGI) of every group whose Last request was delivered to the queue and
    /// that no response has answered yet.
    pub fn outstanding_page_request_groups(&self) -> Vec<(u32, u16)> {
        let i = self.inner.borrow();
        i.pri.groups.iter().filter(|(_, g)| g.last_delivered).map(|(&k, _)| k).collect()
    }

    /// The (StreamID, PRGI, requests delivered) of every group whose Last request has not
    /// been delivered (yet, or ever: lost on overflow).
    pub fn partial_page_request_groups(&self) -> Vec<(u32, u16, u32)> {
        let i = self.inner.borrow();
        i.pri
            .groups
            .iter()
            .filter(|(_, g)| !g.last_delivered)
            .map(|(&(s, p), g)| (s, p, g.requests))
            .collect()
    }
}
