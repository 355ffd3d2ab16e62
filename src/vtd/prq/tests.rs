//! The page request queue against independent encodings (the VT-d specification's page
//! request and page group response layouts as Linux and QEMU spell them) and, end to end,
//! against the `sim::vtd` model: injected requests are read, grouped by the service, answered
//! through the invalidation queue, and the model checks every group was answered exactly once.

use core::time::Duration;
use std::collections::BTreeMap;
use std::vec::Vec;

use super::*;
use crate::hal::Platform;
use crate::iommu::pri::{Disposition, Group, Route, Routing};
use crate::sim::vtd::{
    self, Config, InjectOutcome, PageRequestDescriptor, RemappingUnit, ResponseSource, SimPlatform,
};
use crate::vtd::qi::DEFAULT_ENTRIES;
use crate::vtd::{TableMode, Unit};

// ---- Independent encodings ---------------------------------------------------------------
//
// Linux `struct page_req_dsc` (drivers/iommu/intel/prq.c; spec 3.x form with
// `priv_data_present:1` after `pasid_present:1`), QEMU `VTD_PRD_*`
// (hw/i386/intel_iommu_internal.h), written out as shifts here.
const PRD_TYPE: u64 = 1; // type:8 = 1
const fn prd_pp(v: u64) -> u64 {
    v << 8
}
const fn prd_pdp(v: u64) -> u64 {
    v << 9
}
const fn prd_rid(v: u64) -> u64 {
    v << 16
}
const fn prd_pasid(v: u64) -> u64 {
    v << 32
}
const fn prd_exr(v: u64) -> u64 {
    v << 52
}
const fn prd_pmr(v: u64) -> u64 {
    v << 53
}
const fn prd_rdr(v: u64) -> u64 {
    v
}
const fn prd_wrr(v: u64) -> u64 {
    v << 1
}
const fn prd_lpig(v: u64) -> u64 {
    v << 2
}
const fn prd_prgi(v: u64) -> u64 {
    v << 3
}
// Linux QI_PGRP_* (drivers/iommu/intel/iommu.h).
const QI_PGRP_RESP_TYPE: u64 = 0x9;
const fn qi_pgrp_pasid_p(p: u64) -> u64 {
    p << 4
}
const fn qi_pgrp_pdp(p: u64) -> u64 {
    p << 5
}
const fn qi_pgrp_resp_code(r: u64) -> u64 {
    r << 12
}
const fn qi_pgrp_did(rid: u64) -> u64 {
    rid << 16
}
const fn qi_pgrp_pasid(p: u64) -> u64 {
    p << 32
}
const fn qi_pgrp_idx(i: u64) -> u64 {
    i << 3
}

#[test]
fn decodes_the_spec_layout() {
    let words = [
        PRD_TYPE
            | prd_pp(1)
            | prd_pdp(1)
            | prd_rid(0x0310)
            | prd_pasid(0x12345)
            | prd_exr(1)
            | prd_pmr(1),
        prd_rdr(1) | prd_wrr(0) | prd_lpig(1) | prd_prgi(0x1a5) | 0xdead_b000,
        0xaa,
        0xbb,
    ];
    let PageRequestMessage::Request(r) = decode(words).unwrap() else { panic!("stop marker?") };
    assert_eq!(r.rid, RequesterId(0x0310));
    assert_eq!(r.pasid, Some(Pasid::new(0x12345).unwrap()));
    assert_eq!((r.prgi, r.last, r.address), (0x1a5, true, 0xdead_b000));
    assert_eq!(r.access, Access { read: true, write: false, execute: true, privileged: true });
    assert_eq!(r.private_data, Some([0xaa, 0xbb]));
    // Without PP and PDP: no PASID, no private data (qwords 2-3 ignored).
    let words = [PRD_TYPE | prd_rid(0x08), prd_wrr(1) | prd_prgi(3) | 0x5000, 0x1, 0x2];
    let PageRequestMessage::Request(r) = decode(words).unwrap() else { panic!() };
    assert_eq!((r.pasid, r.private_data, r.last, r.access.write), (None, None, false, true));
    // A Stop Marker: Last, neither read nor write.
    let words = [PRD_TYPE | prd_pp(1) | prd_rid(0x08) | prd_pasid(7), prd_lpig(1), 0, 0];
    assert_eq!(
        decode(words).unwrap(),
        PageRequestMessage::StopMarker { rid: RequesterId(8), pasid: Some(Pasid::new(7).unwrap()) }
    );
}

#[test]
fn the_model_encodes_what_the_spec_says() {
    let d = PageRequestDescriptor {
        rid: 0x0310,
        pasid: Some(0x12345),
        prgi: 0x1a5,
        last: true,
        read: true,
        write: true,
        execute: false,
        privileged: true,
        address: 0xdead_b000,
        private: Some([1, 2]),
    };
    assert_eq!(
        d.encode(),
        [
            PRD_TYPE | prd_pp(1) | prd_pdp(1) | prd_rid(0x0310) | prd_pasid(0x12345) | prd_pmr(1),
            prd_rdr(1) | prd_wrr(1) | prd_lpig(1) | prd_prgi(0x1a5) | 0xdead_b000,
            1,
            2
        ]
    );
}

#[test]
fn malformed_descriptors_are_typed_errors_with_their_words() {
    let ok0 = PRD_TYPE | prd_rid(0x08);
    let ok1 = prd_rdr(1) | prd_lpig(1);
    assert!(decode([ok0, ok1, 0, 0]).is_ok());
    for (qw0, qw1) in [
        (0, ok1),                        // type 0
        (ok0 | 2, ok1),                  // type 3
        (ok0 | 1 << 10, ok1),            // reserved qword 0 bit 10
        (ok0 | 1 << 63, ok1),            // reserved qword 0 bit 63
        (ok0 | prd_pasid(5), ok1),       // a PASID without PASID Present
        (ok0 | prd_exr(1), prd_wrr(1)),  // execute without read
        (ok0, prd_prgi(1)),              // nothing asked, not last
        (ok0 | prd_pdp(1), prd_lpig(1)), // "stop marker" with private data
    ] {
        assert_eq!(
            decode([qw0, qw1, 0, 0]),
            Err(Error::InvalidPageRequest { words: [qw0, qw1] }),
            "{qw0:#x} {qw1:#x}"
        );
    }
    // What such an entry is owed: Invalid when it ended a group, nothing otherwise.
    let r =
        invalid_response_for([ok0 | prd_pp(1) | prd_pasid(5) | 1 << 10, ok1 | prd_prgi(9), 0, 0])
            .unwrap();
    assert_eq!(
        (r.rid, r.pasid, r.prgi, r.code),
        (RequesterId(8), Some(Pasid::new(5).unwrap()), 9, ResponseCode::Invalid)
    );
    assert_eq!(invalid_response_for([ok0 | 1 << 10, prd_rdr(1), 0, 0]), None);
}

#[test]
fn responses_encode_as_linux_builds_them() {
    let r = GroupResponse {
        rid: RequesterId(0x0310),
        pasid: Some(Pasid::new(0x77).unwrap()),
        prgi: 0x1a5,
        code: ResponseCode::Invalid,
        private_data: Some([0xaa, 0xbb]),
    };
    assert_eq!(
        response_descriptor(&r).unwrap().words(),
        [
            QI_PGRP_RESP_TYPE
                | qi_pgrp_pasid_p(1)
                | qi_pgrp_pdp(1)
                | qi_pgrp_resp_code(1)
                | qi_pgrp_did(0x0310)
                | qi_pgrp_pasid(0x77),
            qi_pgrp_idx(0x1a5),
            0xaa,
            0xbb
        ]
    );
    let r = GroupResponse { pasid: None, code: ResponseCode::Failure, private_data: None, ..r };
    assert_eq!(
        response_descriptor(&r).unwrap().words(),
        [
            QI_PGRP_RESP_TYPE | qi_pgrp_resp_code(0xf) | qi_pgrp_did(0x0310),
            qi_pgrp_idx(0x1a5),
            0,
            0
        ]
    );
}

// ---- Against the model ---------------------------------------------------------------------

const PRS: u64 = 1 << 29;
const PDS: u64 = 1 << 42;

fn config(extra: u64) -> Config {
    let c = Config::qemu_scalable_first_stage();
    match (extra & PRS != 0, extra & PDS != 0) {
        (false, _) => c,
        (true, drain) => c.with_page_requests(drain),
    }
}

struct Rig {
    p: SimPlatform,
    model: RemappingUnit,
    unit: Unit,
    prq: PageRequestQueue,
}

fn rig(extra: u64, pages: usize) -> Rig {
    let (p, model) = vtd::pair(config(extra));
    let mut unit =
        Unit::new(&p, vtd::DEFAULT_BASE, model.window_size(), TableMode::Scalable).unwrap();
    unit.enable_queued_invalidation(&p, DEFAULT_ENTRIES).unwrap();
    let prq = PageRequestQueue::new(&p, &unit, pages).unwrap();
    Rig { p, model, unit, prq }
}

/// Attachments by (rid, pasid); RIDs >= 0x100 are VFs of the PF 0x0008.
#[derive(Default)]
struct Table(BTreeMap<(u16, Option<u32>), u32>);

impl Router for Table {
    type Attachment = u32;
    fn route(&mut self, rid: RequesterId, pasid: Option<Pasid>) -> Routing<u32> {
        match self.0.get(&(rid.0, pasid.map(Pasid::get))) {
            Some(&attachment) => Routing::Attached(Route {
                attachment,
                pasid_in_response: true,
                is_vf: rid.0 >= 0x100,
                pf: RequesterId(0x0008),
            }),
            None => Routing::Unattached { pasid_in_response: true },
        }
    }
}

type Svc = PageRequestService<u32, 8, 4>;

fn ok(_: &Group<'_, u32>) -> Disposition {
    Disposition::Respond(ResponseCode::Success)
}

fn run<H: Handler<u32>>(r: &mut Rig, svc: &mut Svc, table: &mut Table, handler: &mut H) -> Batch {
    let q = r.unit.queue().unwrap();
    service(&mut r.prq, &r.p, q, svc, table, handler, 64).unwrap()
}

fn assert_all_answered_once(model: &RemappingUnit) {
    assert!(model.response_problems().is_empty(), "{:?}", model.response_problems());
    assert!(model.unanswered_groups().is_empty(), "{:?}", model.unanswered_groups());
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn without_ecap_prs_the_queue_is_refused_and_its_registers_untouched() {
    let (p, model) = vtd::pair(config(0));
    let unit = Unit::new(&p, vtd::DEFAULT_BASE, model.window_size(), TableMode::Scalable).unwrap();
    let e = PageRequestQueue::new(&p, &unit, 1).unwrap_err();
    assert_eq!(
        e,
        Error::Unsupported { what: "VT-d ECAP.PRS (page requests)", value: config(0).ecap }
    );
    model.step();
    assert!(model.errors().is_empty(), "{:?}", model.errors());
    assert_eq!(
        model.inject_page_request(PageRequestDescriptor::default()),
        InjectOutcome::Unsupported
    );
    // With PRS but in legacy mode: refused too (no PRE, no 256-bit responses).
    let (p, model) = vtd::pair(config(PRS));
    let unit = Unit::new(&p, vtd::DEFAULT_BASE, model.window_size(), TableMode::Legacy).unwrap();
    assert!(matches!(
        PageRequestQueue::new(&p, &unit, 1),
        Err(Error::Unsupported { what, .. }) if what.contains("scalable")
    ));
}

#[test]
fn queue_sizes_pqs_cannot_express_are_refused() {
    let (p, model) = vtd::pair(config(PRS));
    let unit = Unit::new(&p, vtd::DEFAULT_BASE, model.window_size(), TableMode::Scalable).unwrap();
    assert!(matches!(
        PageRequestQueue::new(&p, &unit, 3),
        Err(Error::InvalidField { value: 3, .. })
    ));
    assert!(matches!(PageRequestQueue::new(&p, &unit, 256), Err(Error::InvalidField { .. })));
    let q = PageRequestQueue::new(&p, &unit, 128).unwrap();
    assert_eq!(q.entries(), 128 * 128);
    model.step();
    // PQA: base | PQS 7.
    assert_eq!(model.read64(0xd0) & 7, 7);
}

#[test]
fn groups_go_through_the_queue_and_are_answered_once() {
    let mut r = rig(PRS, 1);
    r.prq.enable_event(0x51, 0xfee0_0000);
    let mut table = Table::default();
    table.0.insert((0x0008, Some(3)), 1);
    let mut svc = Svc::new();
    // Two groups interleaved, the first with private data on its Last request.
    let mut a = PageRequestDescriptor::read(0x0008, Some(3), 1, false, 0x1000);
    r.model.inject_page_request(a);
    r.model.inject_page_request(PageRequestDescriptor::read(0x0008, Some(3), 2, false, 0x8000));
    a.address = 0x2000;
    a.last = true;
    a.private = Some([0x11, 0x22]);
    r.model.inject_page_request(a);
    r.model.inject_page_request(PageRequestDescriptor::read(0x0008, Some(3), 2, true, 0x9000));
    let interrupts = r.model.interrupts();
    assert_eq!(interrupts.len(), 1, "one event while PPR stays set: {interrupts:?}");
    assert_eq!(interrupts[0].kind, vtd::InterruptKind::PageRequest);
    assert_eq!(r.model.page_request_status() & 1, 1, "PPR");

    let mut seen = Vec::new();
    let mut handler = |g: &Group<'_, u32>| {
        seen.push((g.prgi, g.requests.iter().map(|q| q.address).collect::<Vec<_>>()));
        Disposition::Respond(ResponseCode::Success)
    };
    let batch = run(&mut r, &mut svc, &mut table, &mut handler);
    assert_eq!(batch, Batch { read: 4, remaining: 0, overflow: false });
    assert_eq!(seen, [(1, std::vec![0x1000, 0x2000]), (2, std::vec![0x8000, 0x9000])]);
    let responses = r.model.page_responses();
    assert_eq!(responses.len(), 2);
    assert!(responses.iter().all(|x| matches!(x.source, ResponseSource::Queue(_)) && x.code == 0));
    assert_eq!((responses[0].pasid, responses[0].private), (Some(3), Some([0x11, 0x22])));
    assert_eq!(r.model.page_request_queue().0, 4 * 32, "PQH moved past what was read");
    assert_eq!(r.model.page_request_status() & 1, 0, "PPR cleared");
    assert_all_answered_once(&r.model);
}

#[test]
fn unattached_pasids_and_vf_failures_are_answered_invalid() {
    let mut r = rig(PRS, 1);
    let mut table = Table::default();
    table.0.insert((0x0108, None), 2);
    let mut svc = Svc::new();
    // PASID 9 of the PF is attached nowhere; the VF's handler fails.
    r.model.inject_page_request(PageRequestDescriptor::read(0x0008, Some(9), 4, true, 0x1000));
    r.model.inject_page_request(PageRequestDescriptor::read(0x0108, None, 4, true, 0x1000));
    let mut fail = |_: &Group<'_, u32>| Disposition::Respond(ResponseCode::Failure);
    run(&mut r, &mut svc, &mut table, &mut fail);
    let got: Vec<_> = r.model.page_responses().iter().map(|x| (x.rid, x.pasid, x.code)).collect();
    assert_eq!(got, [(0x0008, Some(9), 1), (0x0108, None, 1)]);
    assert_eq!(svc.stats().vf_failures_contained, 1);
    assert_all_answered_once(&r.model);
}

#[test]
fn pool_exhaustion_is_answered_not_dropped() {
    let mut r = rig(PRS, 1);
    let mut table = Table::default();
    for rid in 1..=3 {
        table.0.insert((rid, None), u32::from(rid));
    }
    let mut svc = PageRequestService::<u32, 2, 4>::new();
    for rid in 1..=3 {
        r.model.inject_page_request(PageRequestDescriptor::read(rid, None, 7, false, 0x1000));
    }
    for rid in 1..=3 {
        r.model.inject_page_request(PageRequestDescriptor::read(rid, None, 7, true, 0x2000));
    }
    let q = r.unit.queue().unwrap();
    service(&mut r.prq, &r.p, q, &mut svc, &mut table, &mut ok, 64).unwrap();
    let got: Vec<_> = r.model.page_responses().iter().map(|x| (x.rid, x.code)).collect();
    assert_eq!(got, [(1, 0), (2, 0), (3, 1)]);
    assert_all_answered_once(&r.model);
}

#[test]
fn overflow_leaves_no_group_unanswered() {
    // 128 entries (127 usable); 100 groups of two requests from 4 functions.
    let mut r = rig(PRS, 1);
    let mut table = Table::default();
    for rid in 0x10..0x14 {
        table.0.insert((rid, None), u32::from(rid));
    }
    let mut svc = Svc::new();
    let mut dropped = 0;
    for g in 0..100u16 {
        let (rid, prgi) = (0x10 + g % 4, g / 4);
        for last in [false, true] {
            match r
                .model
                .inject_page_request(PageRequestDescriptor::read(rid, None, prgi, last, 0x1000))
            {
                InjectOutcome::Dropped { .. } => dropped += 1,
                InjectOutcome::Queued(_) => {}
                o => panic!("{o:?}"),
            }
        }
    }
    assert_eq!(dropped, 200 - 127);
    assert_eq!(r.model.page_request_status() & 2, 2, "PRO");
    // Service until the queue is empty: PRO is cleared only then.
    let first = run(&mut r, &mut svc, &mut table, &mut ok);
    assert_eq!((first.read, first.remaining, first.overflow), (64, 63, true));
    assert_eq!(r.model.page_request_status() & 2, 2, "PRO stays while entries are unread");
    let second = run(&mut r, &mut svc, &mut table, &mut ok);
    assert_eq!(second.remaining, 0);
    assert_eq!(r.model.page_request_status() & 2, 0, "PRO cleared once empty");
    assert_eq!((svc.stats().overflows, r.prq.stats().overflows), (1, 1));
    // Hardware answered the dropped Lasts, the driver the rest: each group exactly once.
    let hw =
        r.model.page_responses().iter().filter(|x| x.source == ResponseSource::Hardware).count();
    assert_eq!(hw, 200 / 2 - 63);
    assert_all_answered_once(&r.model);
    // The boundary group (its first request queued, its Last dropped) is held stale; the queue
    // takes requests again.
    assert_eq!(svc.pending(), 1);
    r.model.inject_page_request(PageRequestDescriptor::read(0x10, None, 200, true, 0x1000));
    run(&mut r, &mut svc, &mut table, &mut ok);
    assert_all_answered_once(&r.model);
}

#[test]
fn an_invalid_descriptor_that_ends_a_group_is_answered_invalid() {
    let mut r = rig(PRS, 1);
    let mut svc = Svc::new();
    let bad = [PRD_TYPE | prd_rid(0x20) | 1 << 11, prd_rdr(1) | prd_lpig(1) | prd_prgi(5), 0, 0];
    r.model.write_page_request_raw(bad);
    r.model.inject_page_request(PageRequestDescriptor::stop_marker(0x20, 4));
    run(&mut r, &mut svc, &mut Table::default(), &mut ok);
    let got: Vec<_> = r.model.page_responses().iter().map(|x| (x.rid, x.prgi, x.code)).collect();
    assert_eq!(got, [(0x20, 5, 1)], "the stop marker gets none");
    assert_eq!((r.prq.stats().invalid, svc.stats().stop_markers), (1, 1));
    assert_all_answered_once(&r.model);
}

fn drain_setup(extra: u64) -> (Rig, Table, Svc, Vec<crate::iommu::pri::GroupId>) {
    let mut r = rig(extra, 1);
    let mut table = Table::default();
    table.0.insert((0x0008, Some(3)), 1);
    table.0.insert((0x0010, Some(3)), 2);
    let mut svc = Svc::new();
    // Attachment 1: a deferred complete group and a partial one; attachment 2: a deferred one.
    r.model.inject_page_request(PageRequestDescriptor::read(0x0008, Some(3), 1, true, 0x1000));
    r.model.inject_page_request(PageRequestDescriptor::read(0x0008, Some(3), 2, false, 0x2000));
    r.model.inject_page_request(PageRequestDescriptor::read(0x0010, Some(3), 1, true, 0x1000));
    let mut ids = Vec::new();
    let mut defer = |g: &Group<'_, u32>| {
        ids.push(g.id);
        Disposition::Defer
    };
    run(&mut r, &mut svc, &mut table, &mut defer);
    (r, table, svc, ids)
}

#[test]
fn drain_answers_the_attachments_groups_with_fence_and_page_drain() {
    let (mut r, mut table, mut svc, ids) = drain_setup(PRS | PDS);
    // A request of attachment 1 the unit has received but not yet written.
    r.model.post_page_request(PageRequestDescriptor::read(0x0008, Some(3), 3, true, 0x3000));
    let inv =
        teardown_invalidations(5, RequesterId(0x0008), Some(Pasid::new(3).unwrap()), None).unwrap();
    assert_eq!(inv[..], [desc::pasid_iotlb_all(5, Pasid::new(3).unwrap())]);
    let start = r.p.now();
    let q = r.unit.queue().unwrap();
    let answered = drain(&mut r.prq, &r.p, q, &mut svc, &mut table, &mut ok, 1, &inv).unwrap();
    // TIMEOUT check: the model's clock moves per read; a drain is a handful of polls.
    assert!(r.p.now().since(start) < Duration::from_millis(10));
    // The posted request was written by the PD wait and handled (Success); then the deferred
    // group of attachment 1 was answered Invalid and its partial group released.
    assert_eq!((answered, r.model.posted_page_requests()), (1, 0));
    assert_eq!(svc.pending_for(1), 0);
    let got: Vec<_> = r.model.page_responses().iter().map(|x| (x.rid, x.prgi, x.code)).collect();
    assert_eq!(got, [(0x0008, 3, 0), (0x0008, 1, 1)]);
    let waits: Vec<_> = r
        .model
        .descriptors()
        .iter()
        .filter_map(|d| match d.descriptor {
            vtd::Descriptor::Wait { fence, drain, .. } => Some((fence, drain)),
            _ => None,
        })
        .collect();
    assert!(waits.contains(&(true, true)), "a fenced page-drain wait: {waits:?}");
    // Attachment 2 is untouched and completes normally.
    assert_eq!(svc.pending_for(2), 1);
    svc.complete(ids[1], ResponseCode::Success, &mut QueueSink::new(&r.p, r.unit.queue().unwrap()))
        .unwrap();
    // The released partial group's end arrives late (the integrator already unrouted it):
    // answered Invalid, once.
    table.0.remove(&(0x0008, Some(3)));
    r.model.inject_page_request(PageRequestDescriptor::read(0x0008, Some(3), 2, true, 0x2000));
    run(&mut r, &mut svc, &mut table, &mut ok);
    let last = *r.model.page_responses().last().unwrap();
    assert_eq!((last.prgi, last.code), (2, 1));
    assert_all_answered_once(&r.model);
}

#[test]
fn without_ecap_pds_the_drain_uses_a_plain_fenced_wait() {
    let (mut r, mut table, mut svc, _) = drain_setup(PRS);
    let inv = [desc::pasid_iotlb_all(5, Pasid::new(3).unwrap())];
    let q = r.unit.queue().unwrap();
    assert_eq!(drain(&mut r.prq, &r.p, q, &mut svc, &mut table, &mut ok, 1, &inv).unwrap(), 1);
    assert!(
        r.model
            .descriptors()
            .iter()
            .all(|d| !matches!(d.descriptor, vtd::Descriptor::Wait { drain: true, .. }))
    );
    assert!(
        r.model.errors().is_empty(),
        "PD never sent where it is reserved: {:?}",
        r.model.errors()
    );
}

#[test]
fn a_drain_wait_that_never_completes_is_a_timeout_not_a_hang() {
    let (mut r, mut table, mut svc, _) = drain_setup(PRS | PDS);
    let q = r.unit.queue().unwrap();
    q.set_timeout(Duration::from_millis(5));
    r.model.stall_next_wait();
    let start = r.p.now();
    let inv = [desc::pasid_iotlb_all(5, Pasid::new(3).unwrap())];
    let e = drain(&mut r.prq, &r.p, q, &mut svc, &mut table, &mut ok, 1, &inv).unwrap_err();
    assert_eq!(e, Error::Timeout { what: "VT-d invalidation wait status", waited_us: 5000 });
    assert!(r.p.now().since(start) < Duration::from_millis(50));
    // Nothing was answered: the caller forces the attachment to blocking and retries later.
    assert_eq!(svc.pending_for(1), 2);
    assert!(r.model.page_responses().is_empty());
}

proptest::proptest! {
    /// The fuzz target's body on arbitrary queue contents: decoding and servicing never panic,
    /// and never answer more than the groups that ended (its own assertion).
    #[test]
    fn arbitrary_queue_contents_are_handled(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        crate::fuzz::page_request(&data);
    }

    /// Descriptors built field by field decode back to those fields.
    #[test]
    fn decode_inverts_the_model_encoding(
        rid: u16, pasid in proptest::option::of(0u32..(1 << 20)), prgi in 0u16..512,
        last: bool, read: bool, write: bool, privileged: bool, page in 0u64..(1 << 52),
        private in proptest::option::of(proptest::prelude::any::<[u64; 2]>()),
    ) {
        let d = PageRequestDescriptor {
            rid, pasid, prgi, last, read, write, execute: false, privileged,
            address: page << 12, private,
        };
        match decode(d.encode()) {
            Ok(PageRequestMessage::Request(r)) => {
                proptest::prop_assert!(read || write);
                proptest::prop_assert_eq!(r.rid.0, rid);
                proptest::prop_assert_eq!(r.pasid.map(Pasid::get), pasid);
                proptest::prop_assert_eq!((r.prgi, r.last, r.address), (prgi, last, page << 12));
                proptest::prop_assert_eq!((r.access.read, r.access.write, r.access.privileged), (read, write, privileged));
                proptest::prop_assert_eq!(r.private_data, private);
            }
            Ok(PageRequestMessage::StopMarker { rid: r, pasid: p }) => {
                proptest::prop_assert!(last && !read && !write && !privileged && private.is_none());
                proptest::prop_assert_eq!((r.0, p.map(Pasid::get)), (rid, pasid));
            }
            Err(e) => {
                proptest::prop_assert!(!read && !write, "{:?}", e);
            }
        }
    }
}

/// One generated group for the end-to-end property: function, PASID, length, handler code.
#[derive(Clone, Debug)]
struct E2eGroup {
    rid: u16,
    pasid: Option<u32>,
    len: usize,
    code: u8,
}

fn e2e_groups() -> impl proptest::strategy::Strategy<Value = (Vec<E2eGroup>, Vec<u8>)> {
    use proptest::prelude::*;
    let g = (
        prop_oneof![Just(0x0008u16), Just(0x0010), Just(0x0108), Just(0x0109), Just(0x0030)],
        proptest::option::of(1u32..3),
        1usize..=4,
        0u8..3,
    )
        .prop_map(|(rid, pasid, len, code)| E2eGroup { rid, pasid, len, code });
    (proptest::collection::vec(g, 1..120), proptest::collection::vec(any::<u8>(), 256))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Requests of many groups, interleaved within a window of six open groups, injected into
    /// a 128-entry queue that is serviced only now and then (so it overflows): once the queue
    /// is drained, the model saw every group that ended answered exactly once (by the driver,
    /// or by hardware for a Last it dropped), no response it did not owe, no Failure for a VF,
    /// and PRO clear again.
    #[test]
    fn every_injected_group_is_answered_once_through_the_queue((gens, picks) in e2e_groups()) {
        let mut r = rig(PRS, 1);
        let mut table = Table::default();
        for rid in [0x0008u16, 0x0010, 0x0108, 0x0109] {
            for pasid in [None, Some(1)] {
                table.0.insert((rid, pasid), u32::from(rid));
            }
        }
        let mut svc = Svc::new();
        let codes: Vec<u8> = gens.iter().map(|g| g.code).collect();
        let mut handler = |g: &Group<'_, u32>| {
            Disposition::Respond(match codes[usize::from(g.prgi)] {
                0 => ResponseCode::Success,
                1 => ResponseCode::Invalid,
                _ => ResponseCode::Failure,
            })
        };
        let mut next = std::vec![0usize; gens.len()];
        let mut k = 0usize;
        let mut opened = 0usize;
        loop {
            // Open groups: started and not finished, plus new ones up to a window of six.
            let mut open: Vec<usize> =
                (0..opened).filter(|&i| next[i] < gens[i].len).collect();
            while open.len() < 6 && opened < gens.len() {
                open.push(opened);
                opened += 1;
            }
            if open.is_empty() {
                break;
            }
            let pick = usize::from(picks[k % picks.len()]);
            k += 1;
            let i = open[pick % open.len()];
            let g = &gens[i];
            next[i] += 1;
            // CAST: fewer than 120 groups; the PRG index is the group's number.
            let d = PageRequestDescriptor::read(g.rid, g.pasid, i as u16, next[i] == g.len, 0x1000);
            r.model.inject_page_request(d);
            if pick == 0 || pick == 255 {
                run(&mut r, &mut svc, &mut table, &mut handler);
            }
        }
        // Bounded: each pass empties up to 64 entries of a 128-entry queue.
        for _ in 0..4 {
            run(&mut r, &mut svc, &mut table, &mut handler);
        }
        proptest::prop_assert_eq!(r.model.page_request_status() & 3, 0);
        proptest::prop_assert!(r.model.response_problems().is_empty(), "{:?}", r.model.response_problems());
        proptest::prop_assert!(r.model.unanswered_groups().is_empty(), "{:?}", r.model.unanswered_groups());
        proptest::prop_assert!(r.model.errors().is_empty(), "{:?}", r.model.errors());
        for x in r.model.page_responses() {
            if x.rid >= 0x100 {
                proptest::prop_assert_ne!(x.code, 0xf);
            }
        }
        proptest::prop_assert_eq!(svc.stats().early_responses, 0);
    }
}

#[test]
fn teardown_invalidations_are_what_linux_submits_before_a_drain() {
    let p = Pasid::new(0x12).unwrap();
    let v = teardown_invalidations(7, RequesterId(0x0109), Some(p), Some((RequesterId(0x0100), 4)))
        .unwrap();
    // QI_EIOTLB (G=2, non-global for one PASID) and QI_DEIOTLB for the whole address space.
    assert_eq!(v[0].words(), [0x6 | 2 << 4 | 7 << 16 | 0x12 << 32, 0, 0, 0]);
    assert_eq!(v[1].kind(), 0x8);
    assert_eq!(v[1].words()[1] & 1 << 11, 1 << 11, "S: a range");
    let v = teardown_invalidations(7, RequesterId(0x0109), None, None).unwrap();
    assert_eq!(v[..], [desc::iotlb_domain(7, desc::Drain::default())]);
}

#[test]
fn a_dead_invalidation_queue_fails_responses_fast_and_keeps_them() {
    let mut r = rig(PRS, 1);
    let mut table = Table::default();
    table.0.insert((0x10, None), 1);
    let mut svc = Svc::new();
    for prgi in 0..5 {
        r.model.inject_page_request(PageRequestDescriptor::read(0x10, None, prgi, true, 0x1000));
    }
    let q = r.unit.queue().unwrap();
    q.set_timeout(Duration::from_millis(2));
    r.model.stall_next_wait();
    let start = r.p.now();
    let e = service(&mut r.prq, &r.p, q, &mut svc, &mut table, &mut ok, 64).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }));
    // One bound waited, not five. The first response is in the ring behind the stalled wait
    // and counts as sent; the four others were never written and are kept.
    assert!(r.p.now().since(start) < Duration::from_millis(5));
    assert_eq!(svc.unsent(), 4);
    r.model.release_stalled_wait();
    let q = r.unit.queue().unwrap();
    svc.flush_unsent(&mut QueueSink::new(&r.p, q)).unwrap();
    assert_all_answered_once(&r.model);
}
