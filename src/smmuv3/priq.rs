//! The SMMUv3 PRI queue (§8): decoding its page request entries into the architecture-neutral
//! [`PageRequestMessage`], answering page request groups with `CMD_PRI_RESP` through the command
//! queue ([`CommandSink`]), one bounded [`service`] pass with overflow recovery (§8.1), and the
//! [`drain`] that detach and replace need. The mirror of [`crate::vtd::prq`].
//!
//! # Layout (§8; Linux `PRIQ_0_*`, `PRIQ_1_*`)
//!
//! 16-byte entries. Word 0: StreamID 31:0, SubstreamID 51:32, Priv 58, Exec 59, Read 60,
//! Write 61, Last 62, SSV 63; bits 57:52 are reserved (RES0, ignored). Word 1: PRG index 8:0,
//! page address 63:12; bits 11:9 are reserved (ignored). With PRI, StreamID\[15:0\] is the PCIe
//! requester ID (§8: higher StreamID bits may name the root complex), so the requester ID of a
//! request is
//! the low half of its StreamID, and the StreamID of a response is the entry's own or comes
//! from the RID-to-StreamID map ([`StreamIds`], e.g. [`StreamIdMap`] from discovery).
//!
//! # Responses
//!
//! `CMD_PRI_RESP` (§4.7.1) carries SID, the group index, the response code and, exactly when
//! the service says the function requires it ([`GroupResponse::pasid`]), SSV with the PASID. A
//! [`service`] pass batches its responses behind one CMD_SYNC (more only if the batch fills),
//! and writes PRIQ_CONS before each CMD_SYNC: §8 requires a request to be consumed before the
//! response that returns its credit, or a device granted the whole queue could overrun it.
//!
//! # Overflow (§8.1)
//!
//! A full queue toggles PRIQ_PROD.OVFLG; while PRIQ_CONS.OVACKFLG differs the SMMU writes no
//! entry, silently drops requests without Last, and answers each dropped Last request itself
//! (Success, with the PASID where IDR3.PPS or STE.PPAR says so, §8.1, §8.2). Recovery as §8.1.1
//! suggests: read the whole queue up to the PROD seen at the start of the pass, answer the
//! groups that ended, then one PRIQ_CONS write moves CONS and copies OVFLG into OVACKFLG. The
//! groups still collecting lost their Last to hardware, which answered it: the service is told
//! ([`PageRequestService::overflow`]) and never answers them again (it reclaims them, or hands
//! a later group reusing the index to the handler marked stale); it must not call
//! [`PageRequestService::answer_stale`], which is for hardware that does not answer. (§8.1.1
//! says such groups "must be ignored"; keeping them stale instead still answers every group
//! exactly once, and only changes which requests a handler sees, flagged [`Group::stale`].)
//! [`Unit::set_page_response_pasid_required`] keeps STE.PPAR equal to the function's "PRG
//! Response PASID Required", so the hardware's answers carry the PASID as the device expects.
//!
//! # Drain
//!
//! Before detach or replace answers an attachment's pending groups for good, every request the
//! device sent before it was blocked must have been read from the queue. The caller has made
//! the STE or CD abort, invalidated it and, for an ATS function, its ATC (`CMD_ATC_INV`) and
//! waited for a CMD_SYNC: PCIe orders an invalidation completion behind the page requests the
//! function sent earlier, and CMD_SYNC completes only after the ATC invalidation completed
//! (§4.6.1), so those requests have reached the SMMU. [`drain`] then issues its own CMD_SYNC,
//! reads PRIQ_PROD after it, services the queue up to it (one pass: the queue holds at most
//! its size), and answers Invalid every group still held for the attachment
//! ([`PageRequestService::abort_attachment`]). Every wait is the command queue's bounded
//! CMD_SYNC wait: a CMD_SYNC that never completes is an [`Error::Timeout`], and the caller then
//! keeps the attachment blocked and reports it (issue 6).

use heapless::Vec;

use crate::addr::{Pasid, RequesterId, StreamId};
use crate::error::{Error, Result};
use crate::hal::{Platform, poll};
#[cfg(doc)]
use crate::iommu::pri::Group;
use crate::iommu::pri::{
    Access, GroupResponse, Handler, PageRequest, PageRequestMessage, PageRequestService,
    ResponseCode, ResponseSink, Router, Routing,
};

use super::backend::SmmuBackend;
use super::command::{Command, PriResponse};
use super::discovery::StreamIdMap;
use super::queue::{CommandQueue, OVERFLOW_FLAG, index};
use super::regs::{irq_ctrl, offset};
use super::unit::{ACK_TIMEOUT, Unit};

/// Bytes of one PRI queue entry.
pub const ENTRY_BYTES: usize = 16;

/// Most `CMD_PRI_RESP` commands behind one CMD_SYNC (fewer if the command queue is smaller).
pub const BATCH: usize = 32;

/// PRI queue entry fields (§8; Linux `PRIQ_0_*`, `PRIQ_1_*`).
#[allow(missing_docs, reason = "field names from the specification")]
pub mod field {
    pub const SID_MASK: u64 = 0xffff_ffff;
    pub const SSID_SHIFT: u32 = 32;
    pub const SSID_MASK: u64 = 0xf_ffff;
    pub const PRIV: u64 = 1 << 58;
    pub const EXEC: u64 = 1 << 59;
    pub const READ: u64 = 1 << 60;
    pub const WRITE: u64 = 1 << 61;
    pub const LAST: u64 = 1 << 62;
    pub const SSV: u64 = 1 << 63;
    /// Word 0 bits 57:52 (RES0: ignored when read).
    pub const RESERVED0: u64 = 0x3f << 52;
    pub const PRGI_MASK: u64 = 0x1ff;
    pub const ADDR_MASK: u64 = !0xfff;
    /// Word 1 bits 11:9 (RES0: ignored when read).
    pub const RESERVED1: u64 = 0x7 << 9;
}

/// SMMU_PRIQ_IRQ_CFG0..2 (§6.3.33-35; Linux `ARM_SMMU_PRIQ_IRQ_CFG*`), present with IDR0.MSI.
mod irq_cfg {
    pub(super) const CFG0: usize = 0xd0;
    pub(super) const CFG1: usize = 0xd8;
    pub(super) const CFG2: usize = 0xdc;
    /// MemAttr Device-nGnRE, as Linux writes it.
    pub(super) const DEVICE_NGNRE: u32 = 0x1;
}

/// One decoded PRI queue entry: the StreamID it came from and what it says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Entry {
    /// The StreamID (its low 16 bits are the requester ID in the message).
    pub sid: StreamId,
    /// The request or Stop Marker.
    pub message: PageRequestMessage,
}

/// Decodes one PRI queue entry. A PASID Stop Marker (§8: Last, neither Read nor Write, with a
/// PASID) is [`PageRequestMessage::StopMarker`]; Last without Read or Write and without a PASID
/// is no Stop Marker and stays a page request (§8). Fails with [`Error::InvalidPageRequest`]
/// carrying the raw words for Exec or Priv without a PASID (§8: both are 0 when SSV is 0), Exec
/// without Read (PCIe §10.4.1), no access asked without Last, or a Stop Marker asking for
/// privilege. Reserved bits are ignored, not refused: Arm's RES0 on a value hardware writes
/// means software must not rely on it reading 0 (a later version may define it), and refusing
/// would turn a good request into an Invalid answer.
pub fn decode(words: [u64; 2]) -> Result<Entry> {
    use field::*;
    let [w0, w1] = words;
    let bad = Err(Error::InvalidPageRequest { words });
    let ssv = w0 & SSV != 0;
    let access = Access {
        read: w0 & READ != 0,
        write: w0 & WRITE != 0,
        execute: w0 & EXEC != 0,
        privileged: w0 & PRIV != 0,
    };
    let last = w0 & LAST != 0;
    if (!ssv && (access.execute || access.privileged)) || (access.execute && !access.read) {
        return bad;
    }
    // CAST: masked to 32 bits.
    let sid = StreamId((w0 & SID_MASK) as u32);
    // CAST: StreamID[15:0] is the requester ID (§8).
    let rid = RequesterId(sid.0 as u16);
    // CAST: masked to 20 bits, so `Pasid::new` cannot fail.
    let pasid = if ssv { Pasid::new(((w0 >> SSID_SHIFT) & SSID_MASK) as u32).ok() } else { None };
    if !access.read && !access.write {
        if !last || access.privileged {
            return bad;
        }
        if ssv {
            return Ok(Entry { sid, message: PageRequestMessage::StopMarker { rid, pasid } });
        }
    }
    let request = PageRequest {
        rid,
        pasid,
        // CAST: masked to 9 bits.
        prgi: (w1 & PRGI_MASK) as u16,
        last,
        access,
        address: w1 & ADDR_MASK,
        private_data: None,
    };
    Ok(Entry { sid, message: PageRequestMessage::Request(request) })
}

/// The Invalid response an undecodable entry is owed: only if it has Last (it may end a
/// group the device waits on), for its StreamID and group index, with its PASID if it had one
/// (the caller drops the PASID where the function does not want it).
pub fn invalid_response_for(words: [u64; 2]) -> Option<(StreamId, GroupResponse)> {
    use field::*;
    let [w0, w1] = words;
    if w0 & LAST == 0 {
        return None;
    }
    // CAST (throughout): fields masked to their widths.
    let sid = StreamId((w0 & SID_MASK) as u32);
    let pasid =
        if w0 & SSV != 0 { Pasid::new(((w0 >> SSID_SHIFT) & SSID_MASK) as u32).ok() } else { None };
    Some((
        sid,
        GroupResponse {
            rid: RequesterId(sid.0 as u16),
            pasid,
            prgi: (w1 & PRGI_MASK) as u16,
            code: ResponseCode::Invalid,
            private_data: None,
        },
    ))
}

/// The `CMD_PRI_RESP` for `response`, sent to StreamID `sid`: Invalid is Deny, Failure is
/// Fail (§4.7.1, Linux `enum pri_resp`); SSV and the PASID exactly when the response has one.
pub fn response_command(sid: StreamId, response: &GroupResponse) -> Result<Command> {
    let code = match response.code {
        ResponseCode::Success => PriResponse::Success,
        ResponseCode::Invalid => PriResponse::Deny,
        ResponseCode::Failure => PriResponse::Fail,
    };
    Command::pri_resp(sid, response.pasid.map(Pasid::get), response.prgi, code)
}

/// Where the StreamID of a requester ID comes from when a response is sent outside the
/// servicing of that function's own entry (deferred groups, aborts, resent responses).
pub trait StreamIds {
    /// The StreamID this SMMU sees for `rid`, if any.
    fn stream_id(&self, rid: RequesterId) -> Option<StreamId>;
}

/// StreamID = requester ID: a root complex whose `iommu-map` or IORT mapping is the identity
/// (QEMU virt: `iommu-map = <0 &smmu 0 0x10000>`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SameAsRequesterId;

impl StreamIds for SameAsRequesterId {
    fn stream_id(&self, rid: RequesterId) -> Option<StreamId> {
        Some(StreamId(u32::from(rid.0)))
    }
}

impl StreamIds for StreamIdMap<'_> {
    fn stream_id(&self, rid: RequesterId) -> Option<StreamId> {
        StreamIdMap::stream_id(self, rid).ok().flatten()
    }
}

/// Sends group responses as `CMD_PRI_RESP` through the command queue, batched: up to
/// [`BATCH`] (or the command queue's size less one) commands behind one CMD_SYNC, sent by
/// [`flush`](Self::flush), when the batch is full, or when the sink is dropped (errors are then
/// lost: call `flush` to see them).
///
/// The StreamID of a response is the one of the entry being serviced when it belongs to the
/// same requester ID, else what the [`StreamIds`] map says. A batch whose CMD_SYNC timed out is
/// in the ring and goes out when the SMMU resumes, so it counts as sent; the timeout is kept
/// ([`Self::error`]) and every later response fails at once with it (not queued, so the service
/// keeps it for [`PageRequestService::flush_unsent`]) instead of waiting out the bound again.
pub struct CommandSink<'a, P: Platform + ?Sized, M: StreamIds + ?Sized> {
    platform: &'a P,
    queue: &'a mut CommandQueue,
    streams: &'a M,
    batch: Vec<Command, BATCH>,
    limit: usize,
    current: Option<StreamId>,
    failed: Option<Error>,
    sent: usize,
    lost: usize,
}

impl<'a, P: Platform + ?Sized, M: StreamIds + ?Sized> CommandSink<'a, P, M> {
    /// A sink on `queue`, finding StreamIDs through `streams`.
    pub fn new(platform: &'a P, queue: &'a mut CommandQueue, streams: &'a M) -> Self {
        let slots = (1usize << queue.log2_size()).saturating_sub(1);
        Self {
            platform,
            queue,
            streams,
            batch: Vec::new(),
            limit: slots.clamp(1, BATCH),
            current: None,
            failed: None,
            sent: 0,
            lost: 0,
        }
    }

    /// The StreamID of the entry being serviced (responses to its requester ID go there).
    pub fn set_current(&mut self, sid: Option<StreamId>) {
        self.current = sid;
    }

    /// The first command queue error this sink met, if any.
    pub const fn error(&self) -> Option<Error> {
        self.failed
    }

    /// Responses handed to the SMMU (in a batch whose CMD_SYNC was issued).
    pub const fn sent(&self) -> usize {
        self.sent
    }

    /// Responses batched but never written to the command queue (it had no room in its
    /// bound, or rejected the batch).
    pub const fn lost(&self) -> usize {
        self.lost
    }

    /// Whether the next response would need a flush first.
    pub fn is_full(&self) -> bool {
        self.batch.len() >= self.limit
    }

    fn sid_for(&self, rid: RequesterId) -> Option<StreamId> {
        match self.current {
            // CAST: StreamID[15:0] is the requester ID (§8).
            Some(s) if s.0 as u16 == rid.0 => Some(s),
            _ => self.streams.stream_id(rid),
        }
    }

    /// Sends the batch behind one CMD_SYNC and waits for it (bounded).
    pub fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return self.failed.map_or(Ok(()), Err);
        }
        let n = self.batch.len();
        let result = self.queue.submit(self.platform, &self.batch);
        self.batch.clear();
        match result {
            Ok(()) => {
                self.sent += n;
                Ok(())
            }
            // The commands and the CMD_SYNC are in the ring: they go out when the SMMU resumes.
            Err(e @ Error::Timeout { what, .. }) if what == super::queue::SYNC_WAIT => {
                self.sent += n;
                self.failed.get_or_insert(e);
                Err(e)
            }
            Err(e) => {
                // No room in the bound (nothing written), or a command rejected (replaced by a
                // CMD_SYNC): those responses did not go out.
                self.lost += n;
                self.failed.get_or_insert(e);
                Err(e)
            }
        }
    }
}

impl<P: Platform + ?Sized, M: StreamIds + ?Sized> ResponseSink for CommandSink<'_, P, M> {
    fn respond(&mut self, response: &GroupResponse) -> Result<()> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let sid = self
            .sid_for(response.rid)
            .ok_or(Error::NotFound { what: "StreamID of the requester ID (SMMU PRI response)" })?;
        let command = response_command(sid, response)?;
        if self.is_full() {
            self.flush()?;
        }
        // Cannot fail: the batch was flushed if full.
        let _ = self.batch.push(command);
        Ok(())
    }
}

impl<P: Platform + ?Sized, M: StreamIds + ?Sized> Drop for CommandSink<'_, P, M> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// What one [`service`] pass did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pass {
    /// Entries read.
    pub read: usize,
    /// Entries that did not decode.
    pub invalid: usize,
    /// PRIQ_PROD.OVFLG was set (differed from OVACKFLG) and has been acknowledged.
    pub overflow: bool,
    /// Responses sent.
    pub responses: usize,
}

fn unsupported(unit: &Unit) -> Error {
    Error::Unsupported { what: "SMMU IDR0.PRI (PRI queue)", value: u64::from(unit.ids().idr0.0) }
}

/// One pass over the PRI queue: resends what the service could not send before, reads every
/// entry from PRIQ_CONS to the PRIQ_PROD seen at the start (at most the queue's size), feeds
/// them to `service_` (an undecodable entry with Last is answered Invalid), acknowledges an
/// overflow (see the module documentation), and sends the responses behind one CMD_SYNC.
///
/// `streams` gives the StreamID of responses not sent while servicing the function's own
/// entry. The first error (command queue, or a response without a StreamID) is returned after
/// the whole pass; PRIQ_CONS is written in any case, and responses the sink refused stay in the
/// service for the next pass.
pub fn service<P, M, R, H, const GROUPS: usize, const PER_GROUP: usize>(
    unit: &mut Unit,
    platform: &P,
    streams: &M,
    service_: &mut PageRequestService<R::Attachment, GROUPS, PER_GROUP>,
    router: &mut R,
    handler: &mut H,
) -> Result<Pass>
where
    P: Platform + ?Sized,
    M: StreamIds + ?Sized,
    R: Router,
    H: Handler<R::Attachment>,
{
    let missing = unsupported(unit);
    let (priq, cmdq) = unit.pri_and_command_queues().ok_or(missing)?;
    let log2 = priq.log2_size();
    let mut sink = CommandSink::new(platform, cmdq, streams);
    let mut first_error = service_.flush_unsent(&mut sink).err();

    let prod_reg = priq.read_prod();
    // Entries written before PROD moved are visible after this barrier.
    platform.read_barrier();
    let prod = prod_reg & index::mask(log2);
    let acked = priq.consumer() & OVERFLOW_FLAG;
    let overflow = (prod_reg & OVERFLOW_FLAG) != acked;
    let mut cons = priq.consumer() & index::mask(log2);
    let mut pass = Pass { overflow, ..Pass::default() };
    // Bounded by the queue size: a full queue holds 2^log2 entries, and PROD is not re-read.
    for _ in 0..(1u32 << log2) {
        if index::empty(prod, cons, log2) {
            break;
        }
        let words = priq.read_record(index::slot(cons, log2));
        cons = index::next(cons, log2);
        pass.read += 1;
        if sink.is_full() {
            // §8: consume before answering, so a returned credit never finds the queue full.
            priq.publish_consumer(cons | acked);
            if let Err(e) = sink.flush() {
                first_error.get_or_insert(e);
            }
        }
        let result = match decode(words) {
            Ok(entry) => {
                sink.set_current(Some(entry.sid));
                service_.receive(entry.message, router, handler, &mut sink)
            }
            Err(_) => {
                pass.invalid += 1;
                match invalid_response_for(words) {
                    Some((sid, mut r)) => {
                        let wants_pasid = match router.route(r.rid, r.pasid) {
                            Routing::Attached(route) => route.pasid_in_response,
                            Routing::Unattached { pasid_in_response } => pasid_in_response,
                        };
                        if !wants_pasid {
                            r.pasid = None;
                        }
                        sink.set_current(Some(sid));
                        sink.respond(&r)
                    }
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    sink.set_current(None);
    if overflow {
        // Every entry written before the overflow has been read: the groups still collecting
        // lost their Last, which the SMMU answered (§8.1.1).
        service_.overflow();
    }
    // One write moves CONS and, after an overflow, copies OVFLG into OVACKFLG (§8.1).
    let ack = if overflow { prod_reg & OVERFLOW_FLAG } else { acked };
    priq.publish_consumer(cons | ack);
    if let Err(e) = sink.flush() {
        first_error.get_or_insert(e);
    }
    pass.responses = sink.sent();
    match first_error {
        Some(e) => Err(e),
        None => Ok(pass),
    }
}

/// The PRI queue drain for one attachment (see the module documentation), then its pending
/// groups answered Invalid; returns how many were answered.
///
/// The caller has already made the attachment's STE or CD abort, invalidated it (and the
/// function's ATC) and synced. Requests of the attachment found in the queue go through
/// `router` like any other: a caller that already removed the attachment from its table gets
/// them answered Invalid at once; one that still routes them lets `handler` see them before
/// the abort. A partial group of the attachment is released, and its end, if it still comes, is
/// answered Invalid ([`PageRequestService::abort_attachment`]). Fails with
/// [`Error::Timeout`] when a CMD_SYNC does not complete within the command queue's bound.
#[allow(clippy::too_many_arguments, reason = "the unit, its service and the three parties")]
pub fn drain<P, M, R, H, const GROUPS: usize, const PER_GROUP: usize>(
    unit: &mut Unit,
    platform: &P,
    streams: &M,
    service_: &mut PageRequestService<R::Attachment, GROUPS, PER_GROUP>,
    router: &mut R,
    handler: &mut H,
    attachment: R::Attachment,
) -> Result<usize>
where
    P: Platform + ?Sized,
    M: StreamIds + ?Sized,
    R: Router,
    H: Handler<R::Attachment>,
{
    if unit.pri_and_command_queues().is_none() {
        return Err(unsupported(unit));
    }
    // A CMD_SYNC alone: once it completes, every page request that reached the SMMU before it
    // is in the queue, below the PROD read next.
    unit.command_queue().submit(platform, &[])?;
    let (priq, _) = unit.pri_and_command_queues().ok_or(Error::NotFound { what: "PRI queue" })?;
    let log2 = priq.log2_size();
    let target = priq.read_prod() & index::mask(log2);
    let behind = index::used(target, priq.consumer(), log2);
    // One pass reads up to a PROD read after `target`, and never less than the queue holds
    // (the SMMU cannot overrun unconsumed entries), so it reaches `target`; checked.
    let pass = service(unit, platform, streams, service_, router, handler)?;
    if pass.read < behind as usize {
        return Err(Error::Hardware {
            what: "SMMU PRI queue drain: fewer entries read than PROD showed after CMD_SYNC",
            value: u64::from(target),
        });
    }
    let (_, cmdq) = unit.pri_and_command_queues().ok_or(Error::NotFound { what: "PRI queue" })?;
    let mut sink = CommandSink::new(platform, cmdq, streams);
    let answered = service_.abort_attachment(attachment, &mut sink)?;
    sink.flush()?;
    Ok(answered)
}

/// The PRI queue of an [`SmmuBackend`] as fault-capable domains drive it
/// ([`crate::iommu::fault::PageRequests`]): [`service`], [`drain`] and [`CommandSink`] with the
/// backend's RID-to-StreamID map. The queue itself lives in the [`Unit`]; this holds nothing.
///
/// The core's detach or replace has already made the STE abort (or cleared the CD) with its
/// CFGI and CMD_SYNC before the drain; it does not enable ATS, so no ATC invalidation is owed
/// (a caller that enables ATS invalidates the ATC and syncs before detaching).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SmmuPriQueue;

impl<'a> crate::iommu::fault::FaultQueue<SmmuBackend<'a>> for SmmuPriQueue {
    /// One [`service`] pass: everything up to the PROD it reads (at most the queue's size),
    /// whatever `budget` says, because §8.1.1 overflow recovery needs the whole queue read.
    fn service<P, R, H, const G: usize, const PG: usize>(
        &mut self,
        backend: &mut SmmuBackend<'a>,
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
        let _ = budget;
        let map = backend.sid_map();
        service(backend.unit_mut(), platform, &map, service_, router, handler).map(|p| p.read)
    }

    fn drain<P, R, H, const G: usize, const PG: usize>(
        &mut self,
        backend: &mut SmmuBackend<'a>,
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
        // The entry change was invalidated by StreamID (CFGI_STE or CFGI_CD) and synced by the
        // core; nothing is tagged by `tag` that the drain needs.
        let _ = tag;
        backend.stream_id(endpoint.bdf)?;
        let map = backend.sid_map();
        drain(backend.unit_mut(), platform, &map, service_, router, handler, attachment).map(|_| ())
    }

    fn with_sink<P: Platform + ?Sized, T>(
        &mut self,
        backend: &mut SmmuBackend<'a>,
        platform: &P,
        f: impl FnOnce(&mut dyn ResponseSink) -> Result<T>,
    ) -> Result<T> {
        let map = backend.sid_map();
        let unit = backend.unit_mut();
        if unit.pri_and_command_queues().is_none() {
            return Err(unsupported(unit));
        }
        let mut sink = CommandSink::new(platform, unit.command_queue(), &map);
        let out = f(&mut sink)?;
        sink.flush()?;
        Ok(out)
    }
}

/// Points the PRI queue interrupt at an MSI (`address`, `data`) where IDR0.MSI (`None` keeps the
/// wired interrupt, or disables the MSI with address 0) and sets IRQ_CTRL.PRIQ_IRQEN with the
/// IRQ_CTRLACK handshake, keeping the other enables. With `last_only` (PRIQ_IRQ_CFG2.LO, an MSI
/// field) only Last requests raise it.
pub fn enable_interrupt<P: Platform + ?Sized>(
    unit: &mut Unit,
    platform: &P,
    msi: Option<(u64, u32)>,
    last_only: bool,
) -> Result<()> {
    let has_msi = unit.ids().idr0.msi();
    let missing = unsupported(unit);
    let (priq, _) = unit.pri_and_command_queues().ok_or(missing)?;
    let regs = priq.registers();
    if has_msi {
        let (address, data) = msi.unwrap_or((0, 0));
        // ADDR is bits 51:2.
        regs.write64(irq_cfg::CFG0, address & 0x000f_ffff_ffff_fffc);
        regs.write32(irq_cfg::CFG1, data);
        let lo = if last_only { 1 << 31 } else { 0 };
        regs.write32(irq_cfg::CFG2, lo | irq_cfg::DEVICE_NGNRE);
    } else if msi.is_some() {
        return Err(Error::Unsupported {
            what: "SMMU IDR0.MSI (PRI queue MSI)",
            value: u64::from(unit.ids().idr0.0),
        });
    }
    let v = regs.read32(offset::IRQ_CTRL) | irq_ctrl::PRIQ_IRQEN;
    regs.write32(offset::IRQ_CTRL, v);
    // TIMEOUT: as every IRQ_CTRL change (`ACK_TIMEOUT`).
    poll(platform, "SMMU IRQ_CTRLACK (PRIQ_IRQEN)", ACK_TIMEOUT, || {
        (regs.read32(offset::IRQ_CTRLACK) == v).then_some(())
    })
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
