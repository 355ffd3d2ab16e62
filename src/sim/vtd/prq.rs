//! The page request queue (VT-d §7.5 with ECAP.PRS): PQH/PQT/PQA, PRS (PPR, PRO), the page
//! request event (PECTL/PEDATA/PEADDR/PEUADDR), page requests injected by a test into the queue
//! the driver set up, and the page group responses the driver sends through the invalidation
//! queue, checked against what was injected.
//!
//! Layouts are written from the specification and cross-checked with QEMU's
//! `hw/i386/intel_iommu_internal.h` (`VTD_PRD_*`, 32-byte entries) and Linux's
//! `struct page_req_dsc` (`drivers/iommu/intel/prq.c`; `priv_data_present` at qword 0 bit 9 in
//! its spec-3.x form), never with the driver's decoder:
//!
//! - qword 0: type 7:0 (1 = page request), PASID Present 8, Private Data Present 9, requester ID
//!   31:16, PASID 51:32, Execute Requested 52, Privileged Mode Requested 53; 15:10 and 63:54
//!   reserved.
//! - qword 1: Read Requested 0, Write Requested 1, Last Page In Group 2, PRG index 11:3, page
//!   address 63:12.
//! - qwords 2-3: private data (spec 3.x; removed in 4.0).
//!
//! Modelled behaviour:
//!
//! - PQA holds the base (63:12) and PQS (2:0): 2^PQS pages of 128 32-byte entries. PQH and PQT
//!   hold byte offsets (bits 18:5). The queue is full when PQT + 1 == PQH.
//! - A request arriving while the queue is full or PRS.PRO is set is dropped and PRO set
//!   (QEMU and Linux commit "Clear Page Request Overflow fault bit" agree: while PRO is set every
//!   request is dropped). A dropped request that needed a response (Last in group, or private
//!   data present) and is not a Stop Marker is answered by hardware with a Success page group
//!   response (§7.5.1: the function retries its translation and asks again; the RISC-V IOMMU,
//!   written after VT-d, does the same). This is the modelling choice that most needs checking
//!   against the specification text before relying on it.
//! - Writing a request sets PPR; the page request event (PECTL.IP, then an interrupt unless IM)
//!   is raised only when neither PPR nor PRO was set before (QEMU `vtd_generate_page_request_event`).
//!   Clearing both PPR and PRO clears PECTL.IP.
//! - Requests can also be *posted* ([`RemappingUnit::post_page_request`]): received by the unit
//!   but not yet written. They are written when a wait descriptor with PD (page-request drain,
//!   ECAP.PDS) executes, before its status write (§7.10), or on
//!   [`RemappingUnit::deliver_posted`].
//! - Each page group response (0x9) is recorded with the queue slot it came from and matched
//!   against the groups owed a response, keyed by (requester ID, PRG index) as PCIe keys them:
//!   a response nobody is owed, or whose private data differs from the request's, is a
//!   [`ResponseProblem`].

use std::collections::{BTreeMap, VecDeque};
use std::vec::Vec;

use super::regs::{ectl, off};
use super::{Inner, RemappingUnit};
use crate::sim::std;

/// PRS_REG bits (§11.4.27; Linux `DMA_PRS_PPR`, `DMA_PRS_PRO`).
pub mod prs {
    /// Pending page request.
    pub const PPR: u32 = 1 << 0;
    /// Page request overflow.
    pub const PRO: u32 = 1 << 1;
    /// Reserved bit shown set with write markers, as FSTS's.
    pub const MARKER: u32 = 1 << 31;
}

/// Size of one page request descriptor in the queue.
pub const ENTRY_BYTES: u64 = 32;

/// A page request as a device sends it, encoded by the model (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PageRequestDescriptor {
    /// Requester ID.
    pub rid: u16,
    /// PASID, if the request carries one.
    pub pasid: Option<u32>,
    /// PRG index (9 bits).
    pub prgi: u16,
    /// Last page in group.
    pub last: bool,
    /// Read requested.
    pub read: bool,
    /// Write requested.
    pub write: bool,
    /// Execute requested.
    pub execute: bool,
    /// Privileged mode requested.
    pub privileged: bool,
    /// Page address.
    pub address: u64,
    /// Private data (PDP set when present).
    pub private: Option<[u64; 2]>,
}

impl PageRequestDescriptor {
    /// A read request for `address` from `rid`.
    pub fn read(rid: u16, pasid: Option<u32>, prgi: u16, last: bool, address: u64) -> Self {
        Self { rid, pasid, prgi, last, read: true, address, ..Self::default() }
    }

    /// A PASID Stop Marker: Last set, nothing requested.
    pub fn stop_marker(rid: u16, pasid: u32) -> Self {
        Self { rid, pasid: Some(pasid), last: true, ..Self::default() }
    }

    /// Whether this is a Stop Marker (no response is due).
    pub fn is_stop_marker(&self) -> bool {
        self.last && !self.read && !self.write
    }

    /// Whether a page group response is due for it: Last, or private data (§7.7 in 3.x).
    pub fn needs_response(&self) -> bool {
        (self.last && !self.is_stop_marker()) || self.private.is_some()
    }

    /// The four quadwords the unit writes into the queue.
    pub fn encode(&self) -> [u64; 4] {
        let b = |v: bool, at: u32| u64::from(v) << at;
        let qw0 = 1
            | b(self.pasid.is_some(), 8)
            | b(self.private.is_some(), 9)
            | u64::from(self.rid) << 16
            | u64::from(self.pasid.unwrap_or(0) & 0xf_ffff) << 32
            | b(self.execute, 52)
            | b(self.privileged, 53);
        let qw1 = b(self.read, 0)
            | b(self.write, 1)
            | b(self.last, 2)
            | u64::from(self.prgi & 0x1ff) << 3
            | (self.address & !0xfff);
        let [qw2, qw3] = self.private.unwrap_or([0, 0]);
        [qw0, qw1, qw2, qw3]
    }
}

/// What the unit did with an injected request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectOutcome {
    /// Written into the queue at this entry index.
    Queued(u32),
    /// Dropped: queue full or PRO set (or no queue configured); `auto_response` says whether
    /// hardware answered it (Success).
    Dropped {
        /// A hardware-generated response was sent.
        auto_response: bool,
    },
    /// Held as posted (received, not yet written).
    Posted,
    /// The unit has no page request support (ECAP.PRS clear).
    Unsupported,
    /// Refused by the context entry (not present, or PRE clear): the fault was recorded with
    /// `reason`, and the unit answered Invalid if the request needed a response.
    Refused {
        /// Fault reason (47h: PRE clear).
        reason: u8,
    },
}

/// Who sent a page group response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseSource {
    /// Software, through the invalidation queue at this index.
    Queue(u32),
    /// The unit itself, for a request dropped on overflow.
    Hardware,
}

/// One page group response the unit sent to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageResponse {
    /// Who sent it.
    pub source: ResponseSource,
    /// Requester ID.
    pub rid: u16,
    /// PASID, if PASID-present.
    pub pasid: Option<u32>,
    /// PRG index.
    pub prgi: u16,
    /// Response code (0 Success, 1 Invalid, 0xf Failure).
    pub code: u8,
    /// Private data, if PDP.
    pub private: Option<[u64; 2]>,
}

/// A response that does not match what devices asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseProblem {
    /// No group of (rid, prgi) was owed a response (a duplicate, or an index never used: the
    /// device would set UPRGI).
    Unexpected {
        /// The response.
        response: PageResponse,
    },
    /// The response's private data differs from the request's (§7.6).
    PrivateData {
        /// The response.
        response: PageResponse,
        /// What the request carried.
        expected: Option<[u64; 2]>,
    },
}

/// Page request queue state.
#[derive(Debug, Default)]
pub(crate) struct PrqState {
    pqh: u64,
    pqt: u64,
    pqa: u64,
    prs: u32,
    pub(crate) pectl: u32,
    pub(crate) pedata: u32,
    pub(crate) peaddr: u32,
    pub(crate) peuaddr: u32,
    posted: VecDeque<PageRequestDescriptor>,
    responses: Vec<PageResponse>,
    /// Responses owed per (rid, prgi): the private data each must echo.
    owed: BTreeMap<(u16, u16), VecDeque<Option<[u64; 2]>>>,
    problems: Vec<ResponseProblem>,
    injected: u64,
}

impl PrqState {
    pub(crate) fn new() -> Self {
        Self { pectl: ectl::IM, ..Self::default() }
    }
}

impl Inner {
    fn prs_supported(&self) -> bool {
        self.cfg.ecap_bit(29)
    }

    /// What a page-request register dword reads as.
    pub(super) fn render_prq(&self, o: usize) -> u32 {
        if !self.prs_supported() {
            return 0;
        }
        let p = &self.prq;
        // CAST (throughout): register halves.
        match o {
            off::PQH => p.pqh as u32,
            off::PQT => p.pqt as u32,
            off::PQA => p.pqa as u32,
            0xd4 => (p.pqa >> 32) as u32,
            off::PRS => p.prs | if self.cfg.write_markers { prs::MARKER } else { 0 },
            off::PECTL => p.pectl,
            off::PEDATA => p.pedata,
            off::PEADDR => p.peaddr,
            off::PEUADDR => p.peuaddr,
            _ => 0,
        }
    }

    /// A write to a page-request register dword (0xc0..0xf0).
    pub(super) fn write_prq(&mut self, o: usize, v: u32) {
        if !self.prs_supported() {
            // Reserved without ECAP.PRS (§11.4.24).
            self.errors.push(super::ModelError::ReadOnlyWrite { offset: o, value: v });
            return;
        }
        let p = &mut self.prq;
        match o {
            // PQH/PQT: bits 18:5 (32-byte entries); the upper halves are reserved.
            off::PQH => p.pqh = u64::from(v & 0x7_ffe0),
            off::PQT => p.pqt = u64::from(v & 0x7_ffe0),
            off::PQA => p.pqa = (p.pqa & !0xffff_ffff) | u64::from(v & 0xffff_f007),
            0xd4 => p.pqa = (p.pqa & 0xffff_ffff) | u64::from(v) << 32,
            off::PRS => {
                p.prs &= !(v & (prs::PPR | prs::PRO));
                if p.prs & (prs::PPR | prs::PRO) == 0 {
                    p.pectl &= !ectl::IP;
                }
            }
            off::PECTL => p.pectl = (p.pectl & ectl::IP) | (v & ectl::IM),
            off::PEDATA => p.pedata = v,
            off::PEADDR => p.peaddr = v & !3,
            off::PEUADDR => p.peuaddr = v,
            _ => {}
        }
    }

    fn prq_entries(&self) -> u64 {
        128 << (self.prq.pqa & 7)
    }

    /// Raises the page request event if neither PPR nor PRO was set in `old`.
    fn page_request_event(&mut self, old: u32) {
        if old & (prs::PPR | prs::PRO) == 0 {
            self.prq.pectl |= ectl::IP;
        }
        self.deliver_pending();
    }

    /// A request arrives from a device.
    pub(super) fn receive_page_request(&mut self, d: PageRequestDescriptor) -> InjectOutcome {
        if !self.prs_supported() {
            return InjectOutcome::Unsupported;
        }
        self.prq.injected += 1;
        if d.needs_response() {
            self.prq.owed.entry((d.rid, d.prgi)).or_default().push_back(d.private);
        }
        let rid = crate::addr::RequesterId(d.rid);
        if let Err(f) = self.page_request_allowed(rid, d.pasid, d.address, d.write) {
            if d.needs_response() && !d.is_stop_marker() {
                self.record_response(PageResponse {
                    source: ResponseSource::Hardware,
                    rid: d.rid,
                    pasid: d.pasid,
                    prgi: d.prgi,
                    code: 1,
                    private: d.private,
                });
            }
            return InjectOutcome::Refused { reason: f.reason };
        }
        self.write_page_request(d)
    }

    fn write_page_request(&mut self, d: PageRequestDescriptor) -> InjectOutcome {
        let entries = self.prq_entries();
        let tail = (self.prq.pqt / ENTRY_BYTES) % entries;
        let head = (self.prq.pqh / ENTRY_BYTES) % entries;
        let full = (tail + 1) % entries == head;
        let at = (self.prq.pqa & !0xfff) + tail * ENTRY_BYTES;
        let words = d.encode();
        let mapped = self.mem.is_mapped(at, ENTRY_BYTES as usize);
        if full || self.prq.prs & prs::PRO != 0 || !mapped {
            let old = self.prq.prs;
            if self.prq.prs & prs::PRO == 0 {
                self.prq.prs |= prs::PRO;
                self.page_request_event(old);
            }
            let auto_response = d.needs_response() && !d.is_stop_marker();
            if auto_response {
                self.record_response(PageResponse {
                    source: ResponseSource::Hardware,
                    rid: d.rid,
                    pasid: d.pasid,
                    prgi: d.prgi,
                    code: 0,
                    private: d.private,
                });
            }
            return InjectOutcome::Dropped { auto_response };
        }
        for (i, w) in words.iter().enumerate() {
            self.mem.write_u64(at + 8 * i as u64, *w);
        }
        self.prq.pqt = ((tail + 1) % entries) * ENTRY_BYTES;
        let old = self.prq.prs;
        if old & prs::PPR == 0 {
            self.prq.prs |= prs::PPR;
            self.page_request_event(old);
        }
        // CAST: below 2^14 entries.
        InjectOutcome::Queued(tail as u32)
    }

    /// Writes every posted request into the queue (a PD wait, §7.10).
    pub(super) fn deliver_posted(&mut self) {
        // Bounded by the posted list, which only the test fills.
        while let Some(d) = self.prq.posted.pop_front() {
            self.write_page_request(d);
        }
    }

    /// A page group response descriptor (0x9) reached the head of the invalidation queue.
    pub(super) fn page_group_response(
        &mut self,
        index: u32,
        rid: u16,
        pasid: Option<u32>,
        code: u8,
        prgi: u16,
        private: Option<[u64; 2]>,
    ) {
        self.record_response(PageResponse {
            source: ResponseSource::Queue(index),
            rid,
            pasid,
            prgi,
            code,
            private,
        });
    }

    fn record_response(&mut self, response: PageResponse) {
        self.prq.responses.push(response);
        let owed =
            self.prq.owed.get_mut(&(response.rid, response.prgi)).and_then(VecDeque::pop_front);
        match owed {
            None => self.prq.problems.push(ResponseProblem::Unexpected { response }),
            Some(expected) if expected != response.private => {
                self.prq.problems.push(ResponseProblem::PrivateData { response, expected })
            }
            Some(_) => {}
        }
        self.prq.owed.retain(|_, v| !v.is_empty());
    }

    pub(super) fn prq_event_pending(&self) -> bool {
        self.prq.pectl & (ectl::IP | ectl::IM) == ectl::IP
    }
}

impl RemappingUnit {
    /// A device sends a page request: the unit is stepped (register writes not yet processed
    /// take effect first), the request is written into the queue or dropped, and the registers
    /// are published.
    pub fn inject_page_request(&self, d: PageRequestDescriptor) -> InjectOutcome {
        let mut i = self.inner.borrow_mut();
        i.step();
        let o = i.receive_page_request(d);
        i.publish();
        o
    }

    /// A request the unit has received but not yet written to the queue: it is written by the
    /// next wait descriptor with PD, or by [`deliver_posted`](Self::deliver_posted). The
    /// context entry's PRE is not checked for it: it stands for a request accepted earlier.
    pub fn post_page_request(&self, d: PageRequestDescriptor) -> InjectOutcome {
        let mut i = self.inner.borrow_mut();
        if !i.prs_supported() {
            return InjectOutcome::Unsupported;
        }
        i.prq.injected += 1;
        if d.needs_response() {
            i.prq.owed.entry((d.rid, d.prgi)).or_default().push_back(d.private);
        }
        i.prq.posted.push_back(d);
        InjectOutcome::Posted
    }

    /// Writes the posted requests now.
    pub fn deliver_posted(&self) {
        let mut i = self.inner.borrow_mut();
        i.step();
        i.deliver_posted();
        i.publish();
    }

    /// Posted requests not yet written.
    pub fn posted_page_requests(&self) -> usize {
        self.inner.borrow().prq.posted.len()
    }

    /// Writes `words` as the next queue entry, as a unit with a bug (or a corrupted entry)
    /// would; for tests of the driver's decoder. Ignores PRO and a full queue.
    pub fn write_page_request_raw(&self, words: [u64; 4]) -> InjectOutcome {
        let mut i = self.inner.borrow_mut();
        i.step();
        // Decode the bookkeeping fields with the model's own layout.
        let d = PageRequestDescriptor {
            rid: (words[0] >> 16) as u16,
            prgi: ((words[1] >> 3) & 0x1ff) as u16,
            last: words[1] & 4 != 0,
            read: words[1] & 1 != 0,
            write: words[1] & 2 != 0,
            ..PageRequestDescriptor::default()
        };
        if d.needs_response() {
            i.prq.owed.entry((d.rid, d.prgi)).or_default().push_back(None);
        }
        let entries = i.prq_entries();
        let tail = (i.prq.pqt / ENTRY_BYTES) % entries;
        let at = (i.prq.pqa & !0xfff) + tail * ENTRY_BYTES;
        for (n, w) in words.iter().enumerate() {
            i.mem.write_u64(at + 8 * n as u64, *w);
        }
        i.prq.pqt = ((tail + 1) % entries) * ENTRY_BYTES;
        let old = i.prq.prs;
        i.prq.prs |= prs::PPR;
        i.page_request_event(old);
        i.publish();
        // CAST: below 2^14 entries.
        InjectOutcome::Queued(tail as u32)
    }

    /// PRS_REG (PPR, PRO), once register writes not yet processed took effect (the unit is
    /// stepped).
    pub fn page_request_status(&self) -> u32 {
        self.step();
        self.inner.borrow().prq.prs
    }

    /// (PQH, PQT) as byte offsets, once register writes not yet processed took effect.
    pub fn page_request_queue(&self) -> (u64, u64) {
        self.step();
        let i = self.inner.borrow();
        (i.prq.pqh, i.prq.pqt)
    }

    /// Every page group response sent so far (by software or by the unit), oldest first.
    pub fn page_responses(&self) -> Vec<PageResponse> {
        self.inner.borrow().prq.responses.clone()
    }

    /// Responses that match no request.
    pub fn response_problems(&self) -> Vec<ResponseProblem> {
        self.inner.borrow().prq.problems.clone()
    }

    /// Groups (rid, prgi) owed a response that none answered yet, with how many.
    pub fn unanswered_groups(&self) -> Vec<((u16, u16), usize)> {
        self.inner.borrow().prq.owed.iter().map(|(k, v)| (*k, v.len())).collect()
    }

    /// Page requests received (queued, dropped or posted).
    pub fn page_requests_received(&self) -> u64 {
        self.inner.borrow().prq.injected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::vtd::{self, Config, Interrupt, InterruptKind, ModelError};

    const PRS_ECAP: u64 = 1 << 29;

    /// A unit with page requests and a one-page queue set up through the registers.
    fn unit() -> RemappingUnit {
        let c = Config::qemu_scalable_first_stage();
        let (_, u) = vtd::pair(c.clone().with_ecap(c.ecap | PRS_ECAP));
        let base = u.memory().alloc_page().0;
        u.write64(off::PQA, base);
        u.write32(off::PEDATA, 0x77);
        u.write32(off::PEADDR, 0xfee0_0000);
        u.step();
        u
    }

    fn req(prgi: u16) -> PageRequestDescriptor {
        PageRequestDescriptor::read(0x10, None, prgi, true, 0x1000)
    }

    #[test]
    fn the_event_follows_ppr_and_the_mask() {
        let u = unit();
        assert_eq!(u.read32(off::PECTL), ectl::IM, "reset: masked");
        u.inject_page_request(req(1));
        assert_eq!(u.read32(off::PECTL), ectl::IM | ectl::IP, "pending while masked");
        assert!(u.interrupts().is_empty());
        // Unmasking delivers the pending event and clears IP.
        u.write32(off::PECTL, 0);
        u.step();
        let sent = Interrupt { kind: InterruptKind::PageRequest, address: 0xfee0_0000, data: 0x77 };
        assert_eq!(u.interrupts(), [sent]);
        assert_eq!(u.read32(off::PECTL), 0);
        // PPR still set: no new event.
        u.inject_page_request(req(2));
        assert_eq!(u.interrupts().len(), 1);
        // Software clears PPR: the next request raises one.
        u.write32(off::PRS, prs::PPR);
        u.step();
        u.inject_page_request(req(3));
        assert_eq!(u.interrupts().len(), 2);
        assert_eq!(u.page_request_queue(), (0, 3 * ENTRY_BYTES));
        assert!(u.errors().is_empty(), "{:?}", u.errors());
    }

    #[test]
    fn a_full_queue_sets_pro_drops_and_answers_dropped_lasts() {
        let u = unit();
        for i in 0..127 {
            assert_eq!(u.inject_page_request(req(i)), InjectOutcome::Queued(u32::from(i)));
        }
        // 128 entries, one kept empty: the 128th is dropped, a partial one silently.
        assert_eq!(u.inject_page_request(req(200)), InjectOutcome::Dropped { auto_response: true });
        let mut partial = req(201);
        partial.last = false;
        assert_eq!(u.inject_page_request(partial), InjectOutcome::Dropped { auto_response: false });
        assert_eq!(
            u.inject_page_request(PageRequestDescriptor::stop_marker(0x10, 1)),
            InjectOutcome::Dropped { auto_response: false }
        );
        assert_eq!(u.page_request_status(), prs::PPR | prs::PRO);
        let r = u.page_responses();
        assert_eq!(
            (r.len(), r[0].source, r[0].prgi, r[0].code),
            (1, ResponseSource::Hardware, 200, 0)
        );
        // Software makes room but PRO stays: requests are still dropped until it is cleared.
        u.write64(off::PQH, 64 * ENTRY_BYTES);
        u.step();
        assert_eq!(u.inject_page_request(req(202)), InjectOutcome::Dropped { auto_response: true });
        u.write32(off::PRS, prs::PRO | prs::PPR);
        u.step();
        assert_eq!(u.read32(off::PECTL) & ectl::IP, 0, "both clear: IP clears");
        assert_eq!(u.inject_page_request(req(203)), InjectOutcome::Queued(127));
    }

    #[test]
    fn without_ecap_prs_the_registers_are_reserved() {
        let (_, u) = vtd::pair(Config::qemu_scalable_first_stage());
        u.write32(off::PQA, 0x1000);
        u.step();
        assert_eq!(u.read32(off::PQA), 0);
        assert_eq!(u.errors(), [ModelError::ReadOnlyWrite { offset: off::PQA, value: 0x1000 }]);
        assert_eq!(u.inject_page_request(req(1)), InjectOutcome::Unsupported);
    }

    #[test]
    fn responses_nobody_is_owed_are_problems() {
        let u = unit();
        u.inject_page_request(PageRequestDescriptor { private: Some([1, 2]), ..req(1) });
        let mut i = u.inner.borrow_mut();
        i.page_group_response(0, 0x10, None, 0, 1, Some([1, 3]));
        i.page_group_response(1, 0x10, None, 0, 1, None);
        let problems = i.prq.problems.clone();
        assert!(matches!(problems[0], ResponseProblem::PrivateData { expected: Some([1, 2]), .. }));
        assert!(matches!(problems[1], ResponseProblem::Unexpected { .. }));
    }
}
