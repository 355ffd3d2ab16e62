//! PRI queue entry and CMD_PRI_RESP layouts against encodings typed from the specification
//! (§8, §4.7.1) and Linux's definitions, and the service, overflow recovery and drain against
//! the `sim` SMMUv3 model (`Config::full()`, which has a PRI queue).

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::addr::StreamId;
use crate::iommu::pri::{Disposition, Group, Route};
use crate::sim::smmuv3::{
    self as model, Config, ModelError, PriOutcome, PriResponder, PriResponseCode, Smmu,
};
use crate::sim::vtd::SimPlatform;
use crate::smmuv3::ste::StreamConfig;
use crate::smmuv3::unit::UnitConfig;

// ---- Layouts ----------------------------------------------------------------------------------

// Linux arm-smmu-v3.h, typed out: PRIQ_0_SID GENMASK_ULL(31, 0), PRIQ_0_SSID
// GENMASK_ULL(51, 32), PRIQ_0_PERM_PRIV (1UL << 58), PRIQ_0_PERM_EXEC (1UL << 59),
// PRIQ_0_PERM_READ (1UL << 60), PRIQ_0_PERM_WRITE (1UL << 61), PRIQ_0_PRG_LAST (1UL << 62),
// PRIQ_0_SSID_V (1UL << 63); PRIQ_1_PRG_IDX GENMASK_ULL(8, 0), PRIQ_1_ADDR_MASK
// GENMASK_ULL(63, 12).
const L_SID: u64 = 0x0000_0000_ffff_ffff;
const L_SSID: u64 = 0x000f_ffff_0000_0000;
const L_PRIV: u64 = 0x0400_0000_0000_0000;
const L_EXEC: u64 = 0x0800_0000_0000_0000;
const L_READ: u64 = 0x1000_0000_0000_0000;
const L_WRITE: u64 = 0x2000_0000_0000_0000;
const L_LAST: u64 = 0x4000_0000_0000_0000;
const L_SSV: u64 = 0x8000_0000_0000_0000;
const L_PRG_IDX: u64 = 0x1ff;
const L_ADDR: u64 = 0xffff_ffff_ffff_f000;

#[test]
fn field_constants_match_linux() {
    assert_eq!(field::SID_MASK, L_SID);
    assert_eq!(field::SSID_MASK << field::SSID_SHIFT, L_SSID);
    assert_eq!(
        (field::PRIV, field::EXEC, field::READ, field::WRITE, field::LAST, field::SSV),
        (L_PRIV, L_EXEC, L_READ, L_WRITE, L_LAST, L_SSV)
    );
    assert_eq!((field::PRGI_MASK, field::ADDR_MASK), (L_PRG_IDX, L_ADDR));
    // Every word-0 bit is a field or reserved, once.
    let all = [L_SID, L_SSID, L_PRIV, L_EXEC, L_READ, L_WRITE, L_LAST, L_SSV, field::RESERVED0];
    assert_eq!(all.iter().fold(0, |a, b| a ^ b), u64::MAX);
    assert_eq!(L_PRG_IDX ^ L_ADDR ^ field::RESERVED1, u64::MAX);
}

#[test]
fn decode_request_with_pasid() {
    // SID 0x0001_0230 (root complex 1, RID 02:06.0), SSID 0xabcde, R + W + Exec + Priv, Last,
    // PRGI 0x1a5, page 0x0000_7fff_1234_5000.
    let w0 = 0x0001_0230 | 0xabcde << 32 | L_READ | L_WRITE | L_EXEC | L_PRIV | L_LAST | L_SSV;
    let w1 = 0x0000_7fff_1234_5000 | 0x1a5;
    let e = decode([w0, w1]).unwrap();
    assert_eq!(e.sid, StreamId(0x0001_0230));
    let PageRequestMessage::Request(r) = e.message else { panic!("{e:?}") };
    assert_eq!(r.rid, RequesterId(0x0230), "StreamID[15:0] is the requester ID (§8)");
    assert_eq!(r.pasid.map(Pasid::get), Some(0xabcde));
    assert_eq!(r.prgi, 0x1a5);
    assert!(r.last);
    assert_eq!(r.access, Access { read: true, write: true, execute: true, privileged: true });
    assert_eq!(r.address, 0x0000_7fff_1234_5000);
    assert_eq!(r.private_data, None);
}

#[test]
fn decode_request_without_pasid_ignores_the_unknown_ssid() {
    // SSV clear: SubstreamID is UNKNOWN (§8), so whatever it holds is no PASID.
    let e = decode([0x10 | 0x55 << 32 | L_WRITE, 0x2000 | 7]).unwrap();
    let PageRequestMessage::Request(r) = e.message else { panic!() };
    assert_eq!((r.pasid, r.prgi, r.last, r.address), (None, 7, false, 0x2000));
    assert_eq!(r.access, Access { write: true, ..Access::default() });
}

#[test]
fn stop_marker_needs_a_pasid() {
    // LWR = 0b100 with SSV: a Stop Marker.
    let e = decode([0x11 | 3 << 32 | L_LAST | L_SSV, 0]).unwrap();
    assert_eq!(
        e.message,
        PageRequestMessage::StopMarker {
            rid: RequesterId(0x11),
            pasid: Some(Pasid::new(3).unwrap())
        }
    );
    // Without SSV it is a page request that asks for nothing (§8), answered like any other.
    let e = decode([0x11 | L_LAST, 0x5000 | 9]).unwrap();
    let PageRequestMessage::Request(r) = e.message else { panic!() };
    assert_eq!((r.last, r.prgi, r.access), (true, 9, Access::default()));
}

#[test]
fn malformed_entries_carry_their_words() {
    let bad = [
        // Exec or Priv without a PASID.
        [0x10 | L_READ | L_EXEC, 0],
        [0x10 | L_READ | L_PRIV, 0],
        // Exec without Read.
        [0x10 | L_WRITE | L_EXEC | L_SSV, 0],
        // No access without Last.
        [0x10 | L_SSV, 0],
        // A Stop Marker asking for privilege.
        [0x10 | L_LAST | L_SSV | L_PRIV, 0],
    ];
    for words in bad {
        assert_eq!(decode(words), Err(Error::InvalidPageRequest { words }), "{words:x?}");
    }
    // Only those with Last are owed an answer.
    assert_eq!(invalid_response_for([0x10 | L_READ | L_EXEC, 0]), None);
    // Reserved bits (RES0) are ignored: the request is the one without them.
    let clean = decode([0x10 | L_READ, 0x3000 | 5]).unwrap();
    let noisy = decode([0x10 | L_READ | field::RESERVED0, 0x3000 | 5 | field::RESERVED1]);
    assert_eq!(noisy, Ok(clean));
    let (sid, r) =
        invalid_response_for([0x3_0010 | 4 << 32 | L_SSV | L_LAST | L_PRIV, 0x1ff]).unwrap();
    assert_eq!(sid, StreamId(0x3_0010));
    assert_eq!((r.rid, r.pasid.map(Pasid::get), r.prgi), (RequesterId(0x10), Some(4), 0x1ff));
    assert_eq!(r.code, ResponseCode::Invalid);
}

#[test]
fn pri_resp_layout_matches_linux() {
    // CMDQ_0_OP GENMASK(7, 0) = 0x41, CMDQ_0_SSV (1 << 11), CMDQ_PRI_0_SSID GENMASK(31, 12),
    // CMDQ_PRI_0_SID GENMASK(63, 32), CMDQ_PRI_1_GRPID GENMASK(8, 0), CMDQ_PRI_1_RESP
    // GENMASK(13, 12) with PRI_RESP_DENY 0, PRI_RESP_FAIL 1, PRI_RESP_SUCC 2.
    let r = |pasid: Option<u32>, code| GroupResponse {
        rid: RequesterId(0x230),
        pasid: pasid.map(|p| Pasid::new(p).unwrap()),
        prgi: 0x1a5,
        code,
        private_data: None,
    };
    let c = response_command(StreamId(0x0001_0230), &r(Some(0xabcde), ResponseCode::Success));
    assert_eq!(c.unwrap().0, [0x0001_0230_abcd_e841, 0x21a5]);
    let c = response_command(StreamId(0x230), &r(None, ResponseCode::Invalid));
    assert_eq!(c.unwrap().0, [0x0000_0230_0000_0041, 0x01a5]);
    let c = response_command(StreamId(0x230), &r(None, ResponseCode::Failure));
    assert_eq!(c.unwrap().0, [0x0000_0230_0000_0041, 0x11a5]);
}

// ---- Against the model ------------------------------------------------------------------------

/// (rid, pasid) -> attachment; per-rid PRG Response PASID Required and VF-ness.
#[derive(Default)]
struct Table {
    attached: BTreeMap<(u16, Option<u32>), u32>,
    pasid_required: BTreeMap<u16, bool>,
    vfs: BTreeMap<u16, u16>,
}

impl Router for Table {
    type Attachment = u32;
    fn route(&mut self, rid: RequesterId, pasid: Option<Pasid>) -> Routing<u32> {
        let pasid_in_response = self.pasid_required.get(&rid.0).copied().unwrap_or(false);
        match self.attached.get(&(rid.0, pasid.map(Pasid::get))) {
            Some(&attachment) => Routing::Attached(Route {
                attachment,
                pasid_in_response,
                is_vf: self.vfs.contains_key(&rid.0),
                pf: RequesterId(self.vfs.get(&rid.0).copied().unwrap_or(rid.0)),
            }),
            None => Routing::Unattached { pasid_in_response },
        }
    }
}

type Service = PageRequestService<u32, 16, 8>;

struct Bench {
    p: SimPlatform,
    smmu: Smmu,
    unit: Unit,
    table: Table,
    service: Service,
}

impl Bench {
    fn new(priq_log2: u8) -> Self {
        let (p, smmu) = model::pair(Config::full());
        let cfg = UnitConfig { priq_log2, sid_bits: Some(16), ..UnitConfig::default() };
        let unit = Unit::new(&p, model::DEFAULT_BASE, cfg).unwrap();
        Self { p, smmu, unit, table: Table::default(), service: Service::new() }
    }

    /// A bypassing STE for `sid` with PPAR = `pasid_required`, and the router told the same.
    fn function(&mut self, sid: u16, pasid_required: bool) {
        let s = StreamId(u32::from(sid));
        self.unit.set_stream(&self.p, s, StreamConfig::Bypass).unwrap();
        self.unit.set_page_response_pasid_required(&self.p, s, pasid_required).unwrap();
        self.table.pasid_required.insert(sid, pasid_required);
    }

    fn attach(&mut self, sid: u16, pasid: Option<u32>, attachment: u32) {
        self.table.attached.insert((sid, pasid), attachment);
    }

    fn inject(&self, sid: u16, ssid: Option<u32>, prgi: u16, last: bool, page: u64) -> PriOutcome {
        self.smmu.inject_page_request(model::PageRequest {
            sid: u32::from(sid),
            ssid,
            prgi,
            last,
            read: true,
            write: page.is_multiple_of(2),
            address: page << 12,
            ..model::PageRequest::default()
        })
    }

    fn service(&mut self, handler: &mut impl Handler<u32>) -> Result<Pass> {
        service(
            &mut self.unit,
            &self.p,
            &SameAsRequesterId,
            &mut self.service,
            &mut self.table,
            handler,
        )
    }

    /// (sid, prgi) -> every response for it.
    fn responses(&self) -> BTreeMap<(u32, u16), Vec<model::PriResponse>> {
        let mut m: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for r in self.smmu.pri_responses() {
            m.entry((r.sid, r.prgi)).or_default().push(r);
        }
        m
    }
}

/// Success for everything, recording the groups seen.
fn recording(seen: &mut Vec<(u16, Option<u32>, u16, Vec<u64>)>) -> impl Handler<u32> + '_ {
    move |g: &Group<'_, u32>| {
        seen.push((
            g.rid.0,
            g.pasid.map(Pasid::get),
            g.prgi,
            g.requests.iter().map(|r| r.address >> 12).collect(),
        ));
        Disposition::Respond(ResponseCode::Success)
    }
}

#[test]
fn groups_are_answered_once_with_the_handlers_code_and_pasid_as_required() {
    let mut b = Bench::new(6);
    b.function(0x10, true);
    b.function(0x20, false);
    b.attach(0x10, Some(5), 1);
    b.attach(0x20, None, 2);
    b.attach(0x20, Some(6), 3);
    // Interleaved groups: (0x10, PASID 5, PRGI 1) of three requests, (0x20, no PASID, PRGI 2)
    // of two, (0x20, PASID 6, PRGI 3) of one.
    for (sid, ssid, prgi, last, page) in [
        (0x10, Some(5), 1, false, 0x100),
        (0x20, None, 2, false, 0x200),
        (0x10, Some(5), 1, false, 0x101),
        (0x20, Some(6), 3, true, 0x300),
        (0x20, None, 2, true, 0x201),
        (0x10, Some(5), 1, true, 0x102),
    ] {
        assert!(matches!(b.inject(sid, ssid, prgi, last, page), PriOutcome::Queued(_)));
    }
    b.smmu.take_commands();
    let mut seen = Vec::new();
    let pass = b.service(&mut recording(&mut seen)).unwrap();
    assert_eq!((pass.read, pass.invalid, pass.overflow, pass.responses), (6, 0, false, 3));
    assert_eq!(
        seen,
        [
            (0x20, Some(6), 3, std::vec![0x300]),
            (0x20, None, 2, std::vec![0x200, 0x201]),
            (0x10, Some(5), 1, std::vec![0x100, 0x101, 0x102]),
        ]
    );
    let rs = b.responses();
    assert_eq!(rs.len(), 3);
    for (key, ssid) in [((0x10, 1), Some(5)), ((0x20, 2), None), ((0x20, 3), None)] {
        let r = &rs[&key];
        assert_eq!(r.len(), 1, "{key:x?} answered once");
        assert_eq!((r[0].code, r[0].responder), (PriResponseCode::Success, PriResponder::Command));
        // PASID on the response exactly when the function requires it (0x20 does not).
        assert_eq!(r[0].ssid, ssid, "{key:x?}");
    }
    assert!(b.smmu.outstanding_page_request_groups().is_empty());
    assert!(b.smmu.errors().is_empty(), "{:?}", b.smmu.errors());
    // One CMD_SYNC for the three responses, and CONS caught up with PROD.
    let cmds = b.smmu.take_commands();
    let syncs =
        cmds.iter().filter(|c| matches!(c.command, Ok(model::Command::Sync { .. }))).count();
    assert_eq!(syncs, 1, "{cmds:?}");
    assert_eq!(b.smmu.read32(0x100c8) & 0xff, b.smmu.read32(0x100cc) & 0xff);
}

#[test]
fn unattached_requests_and_vf_failures_are_invalid() {
    let mut b = Bench::new(6);
    b.function(0x10, true);
    b.function(0x11, true);
    b.function(0x30, false);
    b.attach(0x10, Some(1), 1);
    b.attach(0x11, Some(1), 2);
    b.table.vfs.insert(0x11, 0x10);
    // 0x10 PASID 1 and VF 0x11 PASID 1 attached; 0x10 PASID 2, 0x30 and 0x40 (no STE, not a
    // known function) not.
    b.inject(0x10, Some(1), 1, true, 1);
    b.inject(0x11, Some(1), 2, true, 2);
    b.inject(0x10, Some(2), 3, false, 3);
    b.inject(0x10, Some(2), 3, true, 4);
    b.inject(0x30, None, 4, true, 5);
    b.inject(0x40, None, 5, true, 6);
    let mut calls = 0;
    let mut fail = |_: &Group<'_, u32>| {
        calls += 1;
        Disposition::Respond(ResponseCode::Failure)
    };
    b.service(&mut fail).unwrap();
    assert_eq!(calls, 2, "the handler sees only attached groups");
    let rs = b.responses();
    let code = |k: (u32, u16)| (rs[&k].len(), rs[&k][0].code, rs[&k][0].ssid);
    assert_eq!(code((0x10, 1)), (1, PriResponseCode::Fail, Some(1)), "a PF may fail");
    assert_eq!(code((0x11, 2)), (1, PriResponseCode::Deny, Some(1)), "a VF's Failure is Invalid");
    assert_eq!(code((0x10, 3)), (1, PriResponseCode::Deny, Some(2)));
    assert_eq!(code((0x30, 4)), (1, PriResponseCode::Deny, None));
    assert_eq!(code((0x40, 5)), (1, PriResponseCode::Deny, None));
    assert_eq!(b.service.stats().vf_failures_contained, 1);
    assert!(b.smmu.outstanding_page_request_groups().is_empty());
    assert!(b.smmu.errors().is_empty(), "{:?}", b.smmu.errors());
}

#[test]
fn overflow_is_acknowledged_and_leaves_no_group_unanswered() {
    // A queue of 4 entries.
    let mut b = Bench::new(2);
    b.function(0x10, true);
    b.attach(0x10, Some(1), 1);
    b.attach(0x10, None, 2);
    // Group A (PRGI 1): two requests queued, its Last dropped in the overflow. Group B (PRGI 2):
    // complete in the queue. Group C (PRGI 3): entirely dropped, Last answered by the SMMU.
    assert!(matches!(b.inject(0x10, Some(1), 1, false, 1), PriOutcome::Queued(_)));
    assert!(matches!(b.inject(0x10, Some(1), 1, false, 2), PriOutcome::Queued(_)));
    assert!(matches!(b.inject(0x10, None, 2, false, 3), PriOutcome::Queued(_)));
    assert!(matches!(b.inject(0x10, None, 2, true, 4), PriOutcome::Queued(_)));
    assert!(matches!(b.inject(0x10, Some(1), 1, true, 5), PriOutcome::Overflow(Some(_))));
    assert!(matches!(b.inject(0x10, None, 3, false, 6), PriOutcome::Overflow(None)));
    assert!(matches!(b.inject(0x10, None, 3, true, 7), PriOutcome::Overflow(Some(_))));
    let mut seen = Vec::new();
    let pass = b.service(&mut recording(&mut seen)).unwrap();
    assert!(pass.overflow);
    assert_eq!((pass.read, pass.responses), (4, 1));
    assert_eq!(seen, [(0x10, None, 2, std::vec![3, 4])]);
    // OVACKFLG now equals OVFLG: the queue takes entries again.
    assert_eq!(b.smmu.read32(0x100c8) >> 31, b.smmu.read32(0x100cc) >> 31);
    assert!(matches!(b.inject(0x10, Some(1), 1, true, 8), PriOutcome::Queued(_)));
    // The device reused PRGI 1 after the automatic answer: one new group, answered once.
    seen.clear();
    b.service(&mut recording(&mut seen)).unwrap();
    assert_eq!(seen.len(), 1);
    let rs = b.responses();
    let by = |k: (u32, u16)| rs[&k].iter().map(|r| r.responder).collect::<Vec<_>>();
    assert_eq!(by((0x10, 1)), [PriResponder::Automatic, PriResponder::Command]);
    assert_eq!(by((0x10, 2)), [PriResponder::Command]);
    assert_eq!(by((0x10, 3)), [PriResponder::Automatic]);
    assert!(b.smmu.outstanding_page_request_groups().is_empty());
    assert!(b.smmu.errors().is_empty(), "{:?}", b.smmu.errors());
    assert_eq!(b.service.stats().overflows, 1);
}

#[test]
fn drain_answers_the_attachments_groups_invalid() {
    let mut b = Bench::new(6);
    b.function(0x10, true);
    b.attach(0x10, Some(1), 1);
    b.attach(0x10, Some(2), 2);
    // PASID 1: one group deferred by the handler, one complete group still in the queue, one
    // partial group. PASID 2: a deferred group that must survive.
    b.inject(0x10, Some(1), 1, true, 1);
    b.inject(0x10, Some(2), 2, true, 2);
    let mut defer = |_: &Group<'_, u32>| Disposition::Defer;
    b.service(&mut defer).unwrap();
    b.inject(0x10, Some(1), 3, true, 3);
    b.inject(0x10, Some(1), 4, false, 4);
    assert_eq!(b.smmu.outstanding_page_request_groups().len(), 3);
    let answered =
        drain(&mut b.unit, &b.p, &SameAsRequesterId, &mut b.service, &mut b.table, &mut defer, 1)
            .unwrap();
    assert_eq!(answered, 2, "the deferred group and the one found in the queue");
    assert_eq!(b.service.pending_for(1), 0);
    assert_eq!(b.service.pending_for(2), 1);
    assert_eq!(b.smmu.outstanding_page_request_groups(), [(0x10, 2)]);
    // The partial group's end, if it still comes, is answered Invalid without the handler.
    b.inject(0x10, Some(1), 4, true, 5);
    let mut never = |_: &Group<'_, u32>| -> Disposition { panic!("handler called") };
    b.service(&mut never).unwrap();
    let rs = b.responses();
    for prgi in [1, 3, 4] {
        assert_eq!(rs[&(0x10, prgi)].len(), 1);
        assert_eq!(rs[&(0x10, prgi)][0].code, PriResponseCode::Deny, "PRGI {prgi}");
    }
    assert!(!rs.contains_key(&(0x10, 2)));
    assert!(b.smmu.errors().is_empty(), "{:?}", b.smmu.errors());
}

#[test]
fn drain_with_a_stalled_sync_times_out() {
    let mut b = Bench::new(6);
    b.function(0x10, false);
    b.attach(0x10, None, 1);
    b.inject(0x10, None, 1, true, 1);
    b.unit.command_queue().set_timeout(core::time::Duration::from_millis(5));
    b.smmu.stall_next_sync();
    let mut ok = |_: &Group<'_, u32>| Disposition::Respond(ResponseCode::Success);
    let r = drain(&mut b.unit, &b.p, &SameAsRequesterId, &mut b.service, &mut b.table, &mut ok, 1);
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    b.smmu.release_stalled_sync();
}

#[test]
fn interrupt_enable_sets_priq_irqen_and_the_msi() {
    let mut b = Bench::new(4);
    enable_interrupt(&mut b.unit, &b.p, Some((0x4000_0040, 0x77)), true).unwrap();
    assert_eq!(b.smmu.read32(0x54) & irq_ctrl::PRIQ_IRQEN, irq_ctrl::PRIQ_IRQEN);
    assert_eq!(b.smmu.read64(0xd0), 0x4000_0040);
    assert_eq!(b.smmu.read32(0xd8), 0x77);
    assert_eq!(b.smmu.read32(0xdc) >> 31, 1);
    // A PRI-less SMMU (QEMU) has no queue to service.
    let (p, _smmu) = model::pair(Config::qemu_virt());
    let mut unit = Unit::new(&p, model::DEFAULT_BASE, UnitConfig::default()).unwrap();
    assert!(matches!(enable_interrupt(&mut unit, &p, None, false), Err(Error::Unsupported { .. })));
    let mut t = Table::default();
    let mut s = Service::new();
    let mut ok = |_: &Group<'_, u32>| Disposition::Respond(ResponseCode::Success);
    let r = service(&mut unit, &p, &SameAsRequesterId, &mut s, &mut t, &mut ok);
    assert!(matches!(r, Err(Error::Unsupported { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random groups from a few functions, interleaved, with service passes at random points
    /// and a small queue that overflows: every group whose Last reached the SMMU is answered
    /// exactly once, by the driver or by the hardware, and the model saw no wrong response.
    #[test]
    fn every_group_answered_exactly_once(
        ops in proptest::collection::vec((0u8..4, 0u16..6, any::<bool>(), 0u8..8), 1..80),
        log2 in 2u8..5,
    ) {
        let mut b = Bench::new(log2);
        for sid in [0x10u16, 0x11, 0x12] {
            b.function(sid, sid != 0x12);
        }
        b.attach(0x10, Some(1), 1);
        b.attach(0x10, None, 2);
        b.attach(0x11, Some(7), 3);
        b.table.vfs.insert(0x11, 0x10);
        let mut handler = |g: &Group<'_, u32>| {
            Disposition::Respond(match g.prgi % 3 {
                0 => ResponseCode::Success,
                1 => ResponseCode::Invalid,
                _ => ResponseCode::Failure,
            })
        };
        for (who, prgi, last, action) in ops {
            let (sid, ssid) = match who {
                0 => (0x10, Some(1)),
                1 => (0x10, None),
                2 => (0x11, Some(7)),
                _ => (0x12, Some(3)),
            };
            // PRGIs distinct per function and PASID, as a device uses them.
            let prgi = prgi + 8 * u16::from(who);
            // A device does not reuse a group index until the group was answered.
            if !b.smmu.outstanding_page_request_groups().contains(&(u32::from(sid), prgi)) {
                b.inject(sid, ssid, prgi, last, u64::from(action));
            }
            if action == 0 {
                let _ = b.service(&mut handler);
            }
        }
        // The devices finish every group, then the queue is serviced until empty.
        b.service(&mut handler).unwrap();
        let all = [(0x10, Some(1), 0), (0x10, None, 8), (0x11, Some(7), 16), (0x12, Some(3), 24)];
        for (sid, ssid, base) in all {
            for prgi in base..base + 6 {
                b.inject(sid, ssid, prgi, true, 0);
                b.service(&mut handler).unwrap();
            }
        }
        for _ in 0..3 {
            b.service(&mut handler).unwrap();
        }
        prop_assert!(b.smmu.errors().is_empty(), "{:?}", b.smmu.errors());
        prop_assert!(b.smmu.outstanding_page_request_groups().is_empty());
        prop_assert!(b.smmu.partial_page_request_groups().is_empty());
        for r in b.smmu.pri_responses() {
            prop_assert!(r.expected, "{r:?}");
            // A VF (0x11) is never sent Failure by the driver.
            let driver_fail =
                r.responder == PriResponder::Command && r.code == PriResponseCode::Fail;
            prop_assert!(!(r.sid == 0x11 && driver_fail), "{r:?}");
        }
    }
}

#[test]
fn model_errors_are_reported_for_a_wrong_pasid() {
    // The check the tests above rely on is live: a response carrying a PASID to a function
    // whose STE says it does not want one is flagged by the model.
    let mut b = Bench::new(4);
    b.function(0x10, false);
    b.attach(0x10, Some(1), 1);
    b.table.pasid_required.insert(0x10, true);
    b.inject(0x10, Some(1), 1, true, 1);
    let mut ok = |_: &Group<'_, u32>| Disposition::Respond(ResponseCode::Success);
    b.service(&mut ok).unwrap();
    assert!(matches!(
        b.smmu.errors().as_slice(),
        [ModelError::PriResponsePasidMismatch { sid: 0x10, prgi: 1, .. }]
    ));
}
