//! The VT-d page request queue (§7.5, ECAP.PRS): the ring the unit writes page request
//! descriptors into, read from PQH to PQT; the decoding of those descriptors into the
//! architecture-neutral [`PageRequestMessage`]; page group responses through the invalidation
//! queue ([`QueueSink`]); overflow (PRS.PRO) recovery; and the page-request drain of §7.10.
//!
//! # Layout (§7.5.1.1; Linux `struct page_req_dsc`, QEMU `VTD_PRD_*`)
//!
//! 32-byte descriptors. Qword 0: type 7:0 (1), PASID Present 8, Private Data Present 9 (spec
//! 3.x; reserved from 4.0), requester ID 31:16, PASID 51:32, Execute Requested 52, Privileged
//! Mode Requested 53. Qword 1: Read 0, Write 1, Last Page In Group 2, PRG index 11:3, page
//! address 63:12. Qwords 2-3: private data.
//!
//! # Servicing
//!
//! [`PageRequestQueue::process`] clears PPR first if set (so a request written meanwhile
//! raises a new event, as Linux's `prq_event_thread` does), reads at most `budget` entries from PQH towards
//! PQT, hands each to the caller, and writes PQH once. [`service`] feeds them to a
//! [`PageRequestService`] and sends its responses as page group response descriptors; an entry
//! that does not decode is answered Invalid if it ended a group (Linux `handle_bad_prq_event`).
//!
//! # Overflow (PRS.PRO)
//!
//! While PRO is set the unit drops every request (and answers a dropped Last itself). Recovery,
//! in [`service`]: read everything up to PQT and answer it (the responses are on the
//! invalidation queue and waited for), and only once PQH == PQT tell the service
//! ([`PageRequestService::overflow`]) and clear PRO. Clearing it earlier would let new requests
//! in behind ones not yet read; Linux clears it under the same condition.
//!
//! # Drain (§7.10)
//!
//! [`drain`] is what detach and replace need before the attachment's pending groups can be
//! answered for good: with the PASID entry already blocked, it submits the caller's IOTLB and
//! device-TLB invalidations followed by a fenced wait with PD (where ECAP.PDS exists): the
//! device-TLB invalidation completion pushes every earlier page request of the device into the
//! unit, and PD makes the unit write them into the queue before the wait's status. Then the queue
//! is serviced to its tail, PRO is checked (an overflow during the drain means requests were
//! dropped and hardware answered them; the drain is retried, bounded), and every group still
//! held for the attachment is answered Invalid. Every wait is bounded by the invalidation
//! queue's timeout: a wait that never completes is an [`Error::Timeout`], and the caller then
//! forces the attachment to blocking (issue 6).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{Pasid, RequesterId};
use crate::error::{Error, Result};
use crate::hal::{DmaPages, PAGE_SIZE, Platform};
use crate::iommu::pri::{
    Access, GroupResponse, Handler, PageRequest, PageRequestMessage, PageRequestService,
    ResponseCode, ResponseSink, Router,
};
use crate::mmio::MmioRegion;

use super::descriptor::{self as desc, Descriptor};
use super::qi::InvalidationQueue;
use super::regs::{ExtendedCapability, offset};
use super::unit::Unit;

/// Bytes per page request descriptor.
pub const ENTRY_BYTES: usize = 32;

/// Entries per 4 KiB page of the queue.
const ENTRIES_PER_PAGE: usize = PAGE_SIZE / ENTRY_BYTES;

/// PRS_REG bits (§11.4.27; Linux `DMA_PRS_*`).
pub mod prs {
    /// Pending page request (RW1C).
    pub const PPR: u32 = 1 << 0;
    /// Page request overflow (RW1C).
    pub const PRO: u32 = 1 << 1;
}

/// How many times [`drain`] resubmits its drain when the queue overflowed meanwhile.
///
/// Each round services the whole queue, so a second overflow needs a device that keeps
/// flooding the queue while its own PASID is being torn down (it is blocked by then); four
/// rounds is generous, and then the drain fails instead of looping.
pub const DRAIN_ROUNDS: usize = 4;

/// Counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QueueStats {
    /// Descriptors read.
    pub read: u64,
    /// Descriptors that did not decode.
    pub invalid: u64,
    /// Overflows recovered (PRO cleared).
    pub overflows: u64,
}

/// What one [`PageRequestQueue::process`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Batch {
    /// Entries read.
    pub read: usize,
    /// Entries left between PQH and PQT (the budget ran out).
    pub remaining: usize,
    /// PRS.PRO was set when the batch ended.
    pub overflow: bool,
}

/// The page request queue of one unit.
#[derive(Debug)]
pub struct PageRequestQueue {
    regs: MmioRegion,
    ring: DmaPages,
    entries: u32,
    ecap: ExtendedCapability,
    stats: QueueStats,
}

impl PageRequestQueue {
    /// Allocates a queue of `pages` 4 KiB pages (a power of two, 1 to 128: PQA.PQS is 3 bits;
    /// 128 entries per page) for `unit` and points PQA at it, with PQH = PQT = 0 (the order
    /// Linux uses). Fails with [`Error::Unsupported`] carrying ECAP when the unit has no page
    /// requests (ECAP.PRS clear: the registers are reserved then, §11.4.24, and are not
    /// touched) or runs in legacy mode.
    ///
    /// Page requests also need the page request event routed ([`Self::enable_event`]) and
    /// PRE set in the context entries of the functions that may send them.
    pub fn new<P: Platform + ?Sized>(platform: &P, unit: &Unit, pages: usize) -> Result<Self> {
        let ecap = unit.extended_capability();
        if !ecap.prs() {
            return Err(Error::Unsupported {
                what: "VT-d ECAP.PRS (page requests)",
                value: ecap.0,
            });
        }
        // Page requests are enabled per function in scalable-mode context entries (PRE) and
        // answered with 256-bit page group response descriptors: legacy mode has neither.
        if unit.mode() != super::unit::TableMode::Scalable {
            return Err(Error::Unsupported {
                what: "VT-d page requests need scalable mode (RTADDR.TTM)",
                value: ecap.0,
            });
        }
        if !pages.is_power_of_two() || pages > 128 {
            // CAST: usize fits u64.
            return Err(Error::InvalidField {
                what: "VT-d page request queue pages",
                value: pages as u64,
            });
        }
        let regs = unit.registers()?;
        let ring = platform.alloc_dma_pages(pages, pages * PAGE_SIZE)?;
        regs.write64(offset::PQH, 0);
        regs.write64(offset::PQT, 0);
        // The zeroed ring was made visible when it was allocated; PQS = log2(pages).
        regs.write64(offset::PQA, ring.phys().0 | u64::from(pages.trailing_zeros()));
        Ok(Self {
            regs,
            ring,
            // CAST: at most 128 * 128.
            entries: (pages * ENTRIES_PER_PAGE) as u32,
            ecap,
            stats: QueueStats::default(),
        })
    }

    /// Number of entries.
    pub const fn entries(&self) -> usize {
        self.entries as usize
    }

    /// Counters.
    pub const fn stats(&self) -> QueueStats {
        self.stats
    }

    /// The unit's ECAP.
    pub const fn extended_capability(&self) -> ExtendedCapability {
        self.ecap
    }

    /// Points the page request event (§7.5, PECTL/PEDATA/PEADDR/PEUADDR, 32-bit registers
    /// written with 32-bit accesses) at an MSI `address` with `data` and unmasks it.
    pub fn enable_event(&self, data: u32, address: u64) {
        self.regs.write32(offset::PEDATA, data);
        // CAST: the two halves of the MSI address.
        self.regs.write32(offset::PEADDR, address as u32);
        self.regs.write32(offset::PEUADDR, (address >> 32) as u32);
        self.regs.write32(offset::PECTL, 0);
    }

    /// Masks the page request event (PECTL.IM); requests are still queued.
    pub fn mask_event(&self) {
        self.regs.write32(offset::PECTL, 1 << 31);
    }

    /// PRS_REG.
    pub fn status(&self) -> u32 {
        self.regs.read32(offset::PRS)
    }

    fn index(&self, register: usize) -> u32 {
        // CAST: bits 18:5 hold the byte offset of a 32-byte entry; reduced modulo the size in
        // case the unit reports something past the end.
        ((self.regs.read64(register) & 0x7_ffe0) as u32 / ENTRY_BYTES as u32) % self.entries
    }

    /// Entries between PQH and PQT.
    pub fn queued(&self) -> usize {
        let (head, tail) = (self.index(offset::PQH), self.index(offset::PQT));
        ((tail + self.entries - head) % self.entries) as usize
    }

    fn read_entry(&self, index: u32) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (i, w) in words.iter_mut().enumerate() {
            let at = index as usize * (ENTRY_BYTES / 8) + i;
            // SAFETY: `index < entries` and `i < 4`, so `at * 8` lies inside the ring this
            // queue owns (DMA memory, page aligned, so 8-byte aligned); the unit writes it by
            // DMA and the CPU only reads it atomically.
            let word =
                unsafe { AtomicU64::from_ptr(self.ring.virt().as_ptr().cast::<u64>().add(at)) };
            *w = word.load(Ordering::Relaxed);
        }
        words
    }

    /// Reads at most `budget` descriptors from PQH towards PQT, handing each (decoded, and its
    /// raw words) to `f`, then moves PQH past them. PPR is cleared first.
    pub fn process<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        budget: usize,
        mut f: impl FnMut(Result<PageRequestMessage>, [u64; 4]),
    ) -> Batch {
        // Clearing PPR before reading PQT means a request written after the read raises a new
        // event. Written only when set: a clear PPR needs nothing, and skipping the write keeps
        // an earlier PRO clear from being the write a plain-memory model merges away.
        if self.status() & prs::PPR != 0 {
            self.regs.write32(offset::PRS, prs::PPR);
        }
        let tail = self.index(offset::PQT);
        let mut head = self.index(offset::PQH);
        // The descriptors before PQT were written before PQT was updated.
        platform.read_barrier();
        let mut read = 0;
        // Bounded by the budget and by the queue size.
        while head != tail && read < budget.min(self.entries()) {
            let words = self.read_entry(head);
            let decoded = decode(words);
            if decoded.is_err() {
                self.stats.invalid += 1;
            }
            f(decoded, words);
            head = (head + 1) % self.entries;
            read += 1;
        }
        self.stats.read += read as u64;
        if read > 0 {
            self.regs.write64(offset::PQH, u64::from(head) * ENTRY_BYTES as u64);
        }
        let remaining = ((tail + self.entries - head) % self.entries) as usize;
        Batch { read, remaining, overflow: self.status() & prs::PRO != 0 }
    }

    /// Clears PRO if the queue is empty (PQH == PQT); returns whether it did.
    pub fn clear_overflow(&mut self) -> bool {
        if self.status() & prs::PRO == 0 || self.queued() != 0 {
            return false;
        }
        self.regs.write32(offset::PRS, prs::PRO);
        self.stats.overflows += 1;
        true
    }
}

/// Decodes one page request descriptor. A Stop Marker (Last, neither read nor write) is
/// [`PageRequestMessage::StopMarker`]. Fails with [`Error::InvalidPageRequest`] carrying the
/// raw words for a wrong type, reserved bits set (qword 0 bits 15:10 and 63:54, a PASID value
/// without PASID Present), execute without read, or no access asked outside a Stop Marker.
pub fn decode(words: [u64; 4]) -> Result<PageRequestMessage> {
    let [qw0, qw1, qw2, qw3] = words;
    let bad = Err(Error::InvalidPageRequest { words: [qw0, qw1] });
    let bit = |v: u64, n: u32| (v >> n) & 1 != 0;
    const RESERVED0: u64 = 0x3f << 10 | 0x3ff << 54;
    let pasid_present = bit(qw0, 8);
    // CAST (throughout): fields masked to their widths.
    let pasid_value = ((qw0 >> 32) & 0xf_ffff) as u32;
    if qw0 & 0xff != 1 || qw0 & RESERVED0 != 0 || (!pasid_present && pasid_value != 0) {
        return bad;
    }
    let rid = RequesterId((qw0 >> 16) as u16);
    let pasid = if pasid_present { Pasid::new(pasid_value).ok() } else { None };
    let access = Access {
        read: bit(qw1, 0),
        write: bit(qw1, 1),
        execute: bit(qw0, 52),
        privileged: bit(qw0, 53),
    };
    let last = bit(qw1, 2);
    if !access.read && !access.write {
        if last && !access.execute && !access.privileged && !bit(qw0, 9) {
            return Ok(PageRequestMessage::StopMarker { rid, pasid });
        }
        return bad;
    }
    // PCIe §10.4.1: Execute Requested is valid only with Read Requested.
    if access.execute && !access.read {
        return bad;
    }
    Ok(PageRequestMessage::Request(PageRequest {
        rid,
        pasid,
        prgi: ((qw1 >> 3) & 0x1ff) as u16,
        last,
        access,
        address: qw1 & !0xfff,
        private_data: bit(qw0, 9).then_some([qw2, qw3]),
    }))
}

/// The page group response descriptor (§6.5.2.7) for `response`.
pub fn response_descriptor(response: &GroupResponse) -> Result<Descriptor> {
    let code = match response.code {
        ResponseCode::Success => desc::ResponseCode::Success,
        ResponseCode::Invalid => desc::ResponseCode::InvalidRequest,
        ResponseCode::Failure => desc::ResponseCode::ResponseFailure,
    };
    desc::page_group_response(
        response.rid,
        response.pasid,
        response.prgi,
        code,
        response.private_data,
    )
}

/// The Invalid response an undecodable descriptor is owed: only if it ended a group (Last or
/// private data present), with its PASID if it had one (Linux `handle_bad_prq_event`).
pub fn invalid_response_for(words: [u64; 4]) -> Option<GroupResponse> {
    let (qw0, qw1) = (words[0], words[1]);
    let pdp = (qw0 >> 9) & 1 != 0;
    if (qw1 >> 2) & 1 == 0 && !pdp {
        return None;
    }
    let pasid =
        if (qw0 >> 8) & 1 != 0 { Pasid::new(((qw0 >> 32) & 0xf_ffff) as u32).ok() } else { None };
    Some(GroupResponse {
        // CAST: fields masked to their widths.
        rid: RequesterId((qw0 >> 16) as u16),
        pasid,
        prgi: ((qw1 >> 3) & 0x1ff) as u16,
        code: ResponseCode::Invalid,
        private_data: pdp.then_some([words[2], words[3]]),
    })
}

/// Sends responses as page group response descriptors through the invalidation queue, one
/// batch (and one wait) each, so a response is known sent when `respond` returns.
///
/// A response whose batch was written but whose wait timed out ([`super::qi::WAIT_STATUS`]) is
/// reported sent: it is in the ring and goes out when the unit resumes, so the service must not
/// send it again. The timeout is kept ([`Self::error`]) and every later response through the
/// same sink fails at once with it (not written, so the service keeps it for
/// [`PageRequestService::flush_unsent`]) instead of waiting out the bound again.
pub struct QueueSink<'a, P: Platform + ?Sized> {
    platform: &'a P,
    queue: &'a mut InvalidationQueue,
    failed: Option<Error>,
}

impl<'a, P: Platform + ?Sized> QueueSink<'a, P> {
    /// A sink on `queue` (256-bit: page group responses are scalable-mode descriptors).
    pub fn new(platform: &'a P, queue: &'a mut InvalidationQueue) -> Self {
        Self { platform, queue, failed: None }
    }

    /// The invalidation queue timeout this sink met, if any.
    pub const fn error(&self) -> Option<Error> {
        self.failed
    }
}

impl<P: Platform + ?Sized> ResponseSink for QueueSink<'_, P> {
    fn respond(&mut self, response: &GroupResponse) -> Result<()> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let d = response_descriptor(response)?;
        match self.queue.submit(self.platform, &[d]) {
            Err(e @ Error::Timeout { what, .. }) if what == super::qi::WAIT_STATUS => {
                self.failed = Some(e);
                Ok(())
            }
            Err(e @ Error::Timeout { .. }) => {
                self.failed = Some(e);
                Err(e)
            }
            other => other,
        }
    }
}

/// The invalidations that tear down what a function's PASID (or, with `pasid` None, its
/// requests without PASID) may have cached, as Linux's `intel_iommu_drain_pasid_prq` submits
/// them before its drain: the PASID-based IOTLB (or the domain's IOTLB), and, if the function
/// has ATS (`device_tlb`: its PF's source ID and its Invalidate Queue Depth), everything in its
/// device TLB.
pub fn teardown_invalidations(
    did: u16,
    rid: RequesterId,
    pasid: Option<Pasid>,
    device_tlb: Option<(RequesterId, u8)>,
) -> Result<heapless::Vec<Descriptor, 2>> {
    let mut v = heapless::Vec::new();
    let iotlb = match pasid {
        Some(p) => desc::pasid_iotlb_all(did, p),
        None => desc::iotlb_domain(did, desc::Drain::default()),
    };
    // Two pushes into a vector of two cannot fail.
    let _ = v.push(iotlb);
    if let Some((pfsid, qdep)) = device_tlb {
        let d = match pasid {
            Some(p) => desc::pasid_device_tlb(rid, pfsid, qdep, p, 0, 52, false)?,
            None => desc::device_tlb(rid, pfsid, qdep, 0, 52)?,
        };
        let _ = v.push(d);
    }
    Ok(v)
}

/// One pass over the queue: up to `budget` descriptors fed to `service` (undecodable ones
/// answered Invalid when they ended a group), then overflow recovery if PRO is set and the
/// queue is empty. Returns the batch; the first response error, if any, after the whole batch
/// was read (the service keeps what it could not send, see
/// [`PageRequestService::flush_unsent`]).
#[allow(clippy::too_many_arguments, reason = "the queue, its service and the three parties")]
pub fn service<P, R, H, const GROUPS: usize, const PER_GROUP: usize>(
    prq: &mut PageRequestQueue,
    platform: &P,
    queue: &mut InvalidationQueue,
    service: &mut PageRequestService<R::Attachment, GROUPS, PER_GROUP>,
    router: &mut R,
    handler: &mut H,
    budget: usize,
) -> Result<Batch>
where
    P: Platform + ?Sized,
    R: Router,
    H: Handler<R::Attachment>,
{
    let mut sink = QueueSink::new(platform, queue);
    let mut first_error = None;
    let batch = prq.process(platform, budget, |decoded, words| {
        let result = match decoded {
            Ok(message) => service.receive(message, router, handler, &mut sink),
            Err(_) => match invalid_response_for(words) {
                Some(r) => sink.respond(&r),
                None => Ok(()),
            },
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    });
    if let Some(e) = sink.error() {
        first_error.get_or_insert(e);
    }
    if batch.overflow && batch.remaining == 0 && first_error.is_none() {
        // Every entry read has been answered (or is held awaiting its end): resynchronise,
        // then let requests in again.
        service.overflow();
        prq.clear_overflow();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(batch),
    }
}

/// The page-request drain of §7.10 for one attachment, then its pending groups answered
/// Invalid; returns how many were answered.
///
/// The caller has already blocked the PASID entry (so no new request of the attachment can be
/// queued) and passes the IOTLB and device-TLB invalidations that tear it down; they go in one
/// batch whose wait carries FN and, where ECAP.PDS exists, PD. Then the queue is serviced to its
/// tail, in budget-sized passes bounded by the queue size, and the drain repeats (at most
/// [`DRAIN_ROUNDS`]) while PRO shows that requests were dropped meanwhile. A wait that never
/// completes fails with [`Error::Timeout`] within the invalidation queue's bound.
///
/// Requests of the attachment found in the queue go through `router` like any other: a caller
/// that already removed the attachment from its table gets them answered Invalid at once; one
/// that still routes them lets `handler` see them before the abort.
///
/// A request is never answered before its group ends: a partial group of the attachment is
/// released, and its end, if it still comes, is answered Invalid
/// ([`PageRequestService::abort_attachment`]).
#[allow(clippy::too_many_arguments, reason = "the queue, its service and the three parties")]
pub fn drain<P, R, H, const GROUPS: usize, const PER_GROUP: usize>(
    prq: &mut PageRequestQueue,
    platform: &P,
    queue: &mut InvalidationQueue,
    service_: &mut PageRequestService<R::Attachment, GROUPS, PER_GROUP>,
    router: &mut R,
    handler: &mut H,
    attachment: R::Attachment,
    invalidations: &[Descriptor],
) -> Result<usize>
where
    P: Platform + ?Sized,
    R: Router,
    H: Handler<R::Attachment>,
{
    let budget = prq.entries();
    let mut clean = false;
    for _ in 0..DRAIN_ROUNDS {
        if prq.extended_capability().pds() {
            queue.submit_with_page_drain(platform, invalidations)?;
        } else {
            queue.submit(platform, invalidations)?;
        }
        // One pass reads up to the tail seen at its start; a second catches what was written
        // meanwhile. More than that needs a device still sending, which is bounded by the
        // rounds.
        let mut overflowed = false;
        for _ in 0..2 {
            let batch = service(prq, platform, queue, service_, router, handler, budget)?;
            overflowed |= batch.overflow;
            if batch.remaining == 0 && prq.queued() == 0 {
                break;
            }
        }
        // An overflow during the drain dropped requests (hardware answered the Last ones):
        // drain again on a clean queue, as Linux's `intel_iommu_drain_pasid_prq` does.
        if !overflowed && prq.status() & prs::PRO == 0 {
            clean = true;
            break;
        }
    }
    if !clean {
        return Err(Error::Hardware {
            what: "VT-d page request drain: PRS.PRO still set after every round",
            value: u64::from(prq.status()),
        });
    }
    let mut sink = QueueSink::new(platform, queue);
    let answered = service_.abort_attachment(attachment, &mut sink)?;
    match sink.error() {
        Some(e) => Err(e),
        None => Ok(answered),
    }
}

impl crate::iommu::fault::FaultQueue<Unit> for PageRequestQueue {
    fn service<P, R, H, const G: usize, const PG: usize>(
        &mut self,
        backend: &mut Unit,
        platform: &P,
        service_: &mut PageRequestService<R::Attachment, G, PG>,
        router: &mut R,
        handler: &mut H,
        budget: usize,
    ) -> Result<usize>
    where
        P: Platform + ?Sized,
        R: Router,
        H: Handler<R::Attachment>,
    {
        let queue = backend.queue()?;
        service(self, platform, queue, service_, router, handler, budget).map(|b| b.read)
    }

    fn drain<P, R, H, const G: usize, const PG: usize>(
        &mut self,
        backend: &mut Unit,
        platform: &P,
        service_: &mut PageRequestService<R::Attachment, G, PG>,
        router: &mut R,
        handler: &mut H,
        attachment: R::Attachment,
        endpoint: &crate::iommu::domain::Endpoint,
        tag: u32,
    ) -> Result<()>
    where
        P: Platform + ?Sized,
        R: Router,
        H: Handler<R::Attachment>,
    {
        let did = u16::try_from(tag).map_err(|_| Error::InvalidDomainId {
            did: tag,
            supported: backend.domain_ids().count(),
        })?;
        // No device-TLB invalidation: the core does not enable ATS (a caller that does adds
        // it through `teardown_invalidations` and `drain` directly).
        let invalidations =
            teardown_invalidations(did, endpoint.bdf.routing_id(), endpoint.pasid, None)?;
        let queue = backend.queue()?;
        drain(self, platform, queue, service_, router, handler, attachment, &invalidations)
            .map(|_| ())
    }

    fn with_sink<P: Platform + ?Sized, T>(
        &mut self,
        backend: &mut Unit,
        platform: &P,
        f: impl FnOnce(&mut dyn ResponseSink) -> Result<T>,
    ) -> Result<T> {
        let queue = backend.queue()?;
        let mut sink = QueueSink::new(platform, queue);
        let out = f(&mut sink)?;
        match sink.error() {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests;
