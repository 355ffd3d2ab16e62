use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::vec::Vec as StdVec;

/// Records every response; can be told to refuse.
#[derive(Default)]
struct Sink {
    sent: StdVec<GroupResponse>,
    refuse: bool,
}

impl ResponseSink for Sink {
    fn respond(&mut self, r: &GroupResponse) -> Result<()> {
        if self.refuse {
            return Err(Error::Timeout { what: "test sink", waited_us: 0 });
        }
        self.sent.push(*r);
        Ok(())
    }
}

/// Routes (rid, pasid) pairs from a table; RIDs >= 0x100 are VFs of PF 0x0008.
#[derive(Default)]
struct Table {
    attached: BTreeMap<(u16, Option<u32>), u32>,
    pasid_required: bool,
}

impl Router for Table {
    type Attachment = u32;
    fn route(&mut self, rid: RequesterId, pasid: Option<Pasid>) -> Routing<u32> {
        match self.attached.get(&(rid.0, pasid.map(Pasid::get))) {
            Some(&attachment) => Routing::Attached(Route {
                attachment,
                pasid_in_response: self.pasid_required,
                is_vf: rid.0 >= 0x100,
                pf: RequesterId(0x0008),
            }),
            None => Routing::Unattached { pasid_in_response: self.pasid_required },
        }
    }
}

fn req(rid: u16, pasid: Option<u32>, prgi: u16, last: bool) -> PageRequestMessage {
    PageRequestMessage::Request(PageRequest {
        rid: RequesterId(rid),
        pasid: pasid.map(|p| Pasid::new(p).unwrap()),
        prgi,
        last,
        access: Access { read: true, ..Access::default() },
        address: 0x1000 * u64::from(prgi),
        private_data: None,
    })
}

type Svc = PageRequestService<u32, 4, 3>;

fn respond_with(code: ResponseCode) -> impl FnMut(&Group<'_, u32>) -> Disposition {
    move |_| Disposition::Respond(code)
}

#[test]
fn a_group_is_handed_over_whole_and_answered_once() {
    let mut svc = Svc::new();
    let mut table = Table { pasid_required: true, ..Table::default() };
    table.attached.insert((0x10, Some(5)), 7);
    let mut sink = Sink::default();
    let mut seen = StdVec::new();
    let mut handler = |g: &Group<'_, u32>| {
        seen.push((g.attachment, g.requests.len(), g.prgi));
        Disposition::Respond(ResponseCode::Success)
    };
    svc.receive(req(0x10, Some(5), 3, false), &mut table, &mut handler, &mut sink).unwrap();
    svc.receive(req(0x10, Some(5), 3, false), &mut table, &mut handler, &mut sink).unwrap();
    assert!(sink.sent.is_empty(), "no response before Last");
    assert_eq!(svc.pending(), 1);
    svc.receive(req(0x10, Some(5), 3, true), &mut table, &mut handler, &mut sink).unwrap();
    assert_eq!(seen, [(7, 3, 3)]);
    let p5 = Some(Pasid::new(5).unwrap());
    assert_eq!(
        sink.sent,
        [GroupResponse {
            rid: RequesterId(0x10),
            pasid: p5,
            prgi: 3,
            code: ResponseCode::Success,
            private_data: None
        }]
    );
    assert_eq!(svc.pending(), 0);
}

#[test]
fn pasid_is_in_the_response_only_when_required() {
    let mut svc = Svc::new();
    let mut table = Table::default();
    table.attached.insert((0x10, Some(5)), 7);
    let mut sink = Sink::default();
    svc.receive(
        req(0x10, Some(5), 1, true),
        &mut table,
        &mut respond_with(ResponseCode::Success),
        &mut sink,
    )
    .unwrap();
    assert_eq!(sink.sent[0].pasid, None);
}

#[test]
fn an_unattached_pasid_is_answered_invalid_without_the_handler() {
    let mut svc = Svc::new();
    let mut table = Table { pasid_required: true, ..Table::default() };
    table.attached.insert((0x10, Some(5)), 7);
    let mut sink = Sink::default();
    let mut called = false;
    let mut handler = |_: &Group<'_, u32>| {
        called = true;
        Disposition::Respond(ResponseCode::Success)
    };
    svc.receive(req(0x10, Some(6), 2, false), &mut table, &mut handler, &mut sink).unwrap();
    // The partial request is not held, only its group remembered.
    assert_eq!(svc.pending(), 0);
    // Attaching meanwhile does not turn the rest of the group into a handled group.
    table.attached.insert((0x10, Some(6)), 8);
    svc.receive(req(0x10, Some(6), 2, true), &mut table, &mut handler, &mut sink).unwrap();
    assert!(!called);
    assert_eq!(sink.sent.len(), 1);
    assert_eq!(sink.sent[0].code, ResponseCode::Invalid);
    assert_eq!(sink.sent[0].pasid, Some(Pasid::new(6).unwrap()));
    assert_eq!(svc.stats().unattached, 1);
}

#[test]
fn a_vf_failure_becomes_invalid_and_a_pf_failure_stays() {
    let mut svc = Svc::new();
    let mut table = Table::default();
    table.attached.insert((0x108, None), 1);
    table.attached.insert((0x0008, None), 2);
    let mut sink = Sink::default();
    let mut fail = respond_with(ResponseCode::Failure);
    svc.receive(req(0x108, None, 1, true), &mut table, &mut fail, &mut sink).unwrap();
    svc.receive(req(0x0008, None, 1, true), &mut table, &mut fail, &mut sink).unwrap();
    let codes: StdVec<_> = sink.sent.iter().map(|r| (r.rid.0, r.code)).collect();
    assert_eq!(codes, [(0x108, ResponseCode::Invalid), (0x0008, ResponseCode::Failure)]);
    assert_eq!(svc.stats().vf_failures_contained, 1);
}

#[test]
fn a_group_that_cannot_be_held_is_answered_not_dropped() {
    let mut svc = Svc::new();
    let mut table = Table::default();
    for rid in 1..=6 {
        table.attached.insert((rid, None), u32::from(rid));
    }
    let mut sink = Sink::default();
    let mut ok = respond_with(ResponseCode::Success);
    // Four partial groups fill the four slots.
    for rid in 1..=4 {
        svc.receive(req(rid, None, 9, false), &mut table, &mut ok, &mut sink).unwrap();
    }
    // A fifth group's partial request is not held, its later requests neither...
    svc.receive(req(5, None, 9, false), &mut table, &mut ok, &mut sink).unwrap();
    svc.receive(req(5, None, 9, false), &mut table, &mut ok, &mut sink).unwrap();
    assert!(sink.sent.is_empty());
    // ...even when a slot frees up in between...
    svc.receive(req(1, None, 9, true), &mut table, &mut ok, &mut sink).unwrap();
    svc.receive(req(5, None, 9, true), &mut table, &mut ok, &mut sink).unwrap();
    // ...and its end gets Invalid. A sixth group's Last alone: Invalid at once.
    // A new group of function 1 takes the slot group 1 freed.
    svc.receive(req(1, None, 10, false), &mut table, &mut ok, &mut sink).unwrap();
    svc.receive(req(6, None, 9, false), &mut table, &mut ok, &mut sink).unwrap();
    svc.receive(req(6, None, 9, true), &mut table, &mut ok, &mut sink).unwrap();
    let got: StdVec<_> = sink.sent.iter().map(|r| (r.rid.0, r.code)).collect();
    assert_eq!(
        got,
        [(1, ResponseCode::Success), (5, ResponseCode::Invalid), (6, ResponseCode::Invalid)]
    );
    // A group longer than a slot holds: Invalid, without the handler.
    let mut svc = Svc::new();
    let mut sink = Sink::default();
    for _ in 0..3 {
        svc.receive(req(1, None, 4, false), &mut table, &mut ok, &mut sink).unwrap();
    }
    svc.receive(req(1, None, 4, true), &mut table, &mut ok, &mut sink).unwrap();
    assert_eq!(sink.sent[0].code, ResponseCode::Invalid);
    assert_eq!(svc.stats().groups_handled, 0);
}

#[test]
fn detach_answers_every_pending_group_of_the_attachment() {
    let mut svc = Svc::new();
    let mut table = Table::default();
    table.attached.insert((1, None), 1);
    table.attached.insert((2, None), 2);
    let mut sink = Sink::default();
    let mut defer = |_: &Group<'_, u32>| Disposition::Defer;
    svc.receive(req(1, None, 1, true), &mut table, &mut defer, &mut sink).unwrap();
    svc.receive(req(1, None, 2, false), &mut table, &mut defer, &mut sink).unwrap();
    svc.receive(req(2, None, 1, true), &mut table, &mut defer, &mut sink).unwrap();
    assert_eq!((svc.pending_for(1), svc.pending_for(2)), (2, 1));
    // The complete group is answered now; the partial one is released, not answered before
    // its end.
    assert_eq!(svc.abort_attachment(1, &mut sink).unwrap(), 1);
    assert_eq!((svc.pending_for(1), svc.stats().partial_aborted), (0, 1));
    assert_eq!(sink.sent.len(), 1);
    assert_eq!((sink.sent[0].prgi, sink.sent[0].code), (1, ResponseCode::Invalid));
    // Its end, arriving after the detach (the router still routing to 1 is a race the
    // service must not trust), is answered Invalid without the handler.
    svc.receive(req(1, None, 2, false), &mut table, &mut defer, &mut sink).unwrap();
    svc.receive(req(1, None, 2, true), &mut table, &mut defer, &mut sink).unwrap();
    assert_eq!(sink.sent.len(), 2);
    assert_eq!((sink.sent[1].prgi, sink.sent[1].code), (2, ResponseCode::Invalid));
    assert_eq!(svc.pending(), 1);
    assert_eq!(svc.pending_for(2), 1);
}

#[test]
fn deferred_groups_complete_once_and_a_pf_reset_answers_its_vfs() {
    let mut svc = Svc::new();
    let mut table = Table::default();
    table.attached.insert((0x0008, None), 1);
    table.attached.insert((0x0108, None), 2);
    table.attached.insert((0x0020, None), 3);
    let mut sink = Sink::default();
    let mut ids = StdVec::new();
    let mut defer = |g: &Group<'_, u32>| {
        ids.push(g.id);
        Disposition::Defer
    };
    for rid in [0x0008, 0x0108, 0x0020] {
        svc.receive(req(rid, None, 1, true), &mut table, &mut defer, &mut sink).unwrap();
    }
    // PF 0x0020 is not in the family of PF 0x0008 (the test router says every RID's PF is
    // 0x0008, so answer 0x0020 first).
    svc.complete(ids[2], ResponseCode::Failure, &mut sink).unwrap();
    assert_eq!(
        svc.complete(ids[2], ResponseCode::Success, &mut sink),
        Err(Error::NotFound { what: "deferred page request group" })
    );
    assert_eq!(svc.abort_function(RequesterId(0x0008), &mut sink).unwrap(), 2);
    let got: StdVec<_> = sink.sent.iter().map(|r| (r.rid.0, r.code)).collect();
    assert_eq!(
        got,
        [
            (0x0020, ResponseCode::Failure),
            (0x0008, ResponseCode::Invalid),
            (0x0108, ResponseCode::Invalid)
        ]
    );
    assert!(svc.complete(ids[0], ResponseCode::Success, &mut sink).is_err());
}

#[test]
fn refused_responses_are_kept_and_resent() {
    let mut svc = Svc::new();
    let mut table = Table::default();
    table.attached.insert((1, None), 1);
    let mut sink = Sink { refuse: true, ..Sink::default() };
    let e = svc.receive(
        req(1, None, 1, true),
        &mut table,
        &mut respond_with(ResponseCode::Success),
        &mut sink,
    );
    assert!(matches!(e, Err(Error::Timeout { .. })));
    assert_eq!((svc.unsent(), svc.pending()), (1, 0));
    sink.refuse = false;
    svc.flush_unsent(&mut sink).unwrap();
    assert_eq!((svc.unsent(), sink.sent.len()), (0, 1));
}

#[test]
fn stale_groups_complete_or_are_reclaimed_oldest_first() {
    let mut svc = Svc::new();
    let mut table = Table::default();
    for rid in 1..=6 {
        table.attached.insert((rid, None), u32::from(rid));
    }
    let mut sink = Sink::default();
    let mut ok = respond_with(ResponseCode::Success);
    for rid in 1..=4 {
        svc.receive(req(rid, None, 1, false), &mut table, &mut ok, &mut sink).unwrap();
    }
    svc.overflow();
    // Group 1's end arrives after the overflow: handled with what it collected.
    let mut sizes = StdVec::new();
    let mut h = |g: &Group<'_, u32>| {
        sizes.push((g.rid.0, g.requests.len(), g.stale));
        Disposition::Respond(ResponseCode::Success)
    };
    svc.receive(req(1, None, 1, true), &mut table, &mut h, &mut sink).unwrap();
    assert_eq!(sizes, [(1, 2, true)]);
    // Two new groups: one takes the free slot, the next reclaims stale group 2 (the oldest).
    svc.receive(req(5, None, 1, false), &mut table, &mut ok, &mut sink).unwrap();
    svc.receive(req(6, None, 1, false), &mut table, &mut ok, &mut sink).unwrap();
    assert_eq!(svc.stats().stale_reclaimed, 1);
    // The others can still be answered explicitly.
    assert_eq!(svc.answer_stale(&mut sink).unwrap(), 2);
    let got: StdVec<_> = sink.sent.iter().map(|r| r.rid.0).collect();
    assert_eq!(got, [1, 3, 4]);
}

#[test]
fn stop_markers_get_no_response() {
    let mut svc = Svc::new();
    let mut sink = Sink::default();
    let m = PageRequestMessage::StopMarker { rid: RequesterId(1), pasid: None };
    svc.receive(m, &mut Table::default(), &mut respond_with(ResponseCode::Success), &mut sink)
        .unwrap();
    assert!(sink.sent.is_empty());
    assert_eq!(svc.stats().stop_markers, 1);
}

/// One generated group: function, PASID, attached?, number of requests, handler's answer.
#[derive(Clone, Debug)]
struct Gen {
    rid: u16,
    pasid: Option<u32>,
    attached: bool,
    len: usize,
    code: u8,
}

fn groups(max: usize) -> impl Strategy<Value = (StdVec<Gen>, StdVec<u8>, bool)> {
    let g = (
        prop_oneof![Just(0x10u16), Just(0x11), Just(0x108), Just(0x109)],
        prop::option::of(0u32..3),
        any::<bool>(),
        1usize..=5,
        0u8..4,
    )
        .prop_map(|(rid, pasid, attached, len, code)| Gen { rid, pasid, attached, len, code });
    (prop::collection::vec(g, 1..=max), prop::collection::vec(any::<u8>(), 64), any::<bool>())
}

/// Feeds the groups' requests interleaved as `picks` says (order kept within a group), with
/// the handler answering per group (code 3: defer, completed at the end). Returns the
/// responses per group and the service's stats.
fn run(
    gens: &[Gen],
    picks: &[u8],
    required: bool,
) -> (StdVec<StdVec<GroupResponse>>, Stats, StdVec<bool>) {
    let mut table = Table { pasid_required: required, ..Table::default() };
    for (i, g) in gens.iter().enumerate() {
        if g.attached {
            // CAST: test indices.
            table.attached.insert((g.rid, g.pasid), i as u32);
        }
    }
    let mut svc = Svc::new();
    let mut sink = Sink::default();
    let mut next = vec![0usize; gens.len()];
    let mut deferred = StdVec::new();
    let codes: StdVec<u8> = gens.iter().map(|g| g.code).collect();
    let mut handler = |grp: &Group<'_, u32>| match codes[usize::from(grp.prgi)] {
        0 => Disposition::Respond(ResponseCode::Success),
        1 => Disposition::Respond(ResponseCode::Invalid),
        2 => Disposition::Respond(ResponseCode::Failure),
        _ => {
            deferred.push(grp.id);
            Disposition::Defer
        }
    };
    let mut k = 0;
    loop {
        let open: StdVec<usize> = (0..gens.len()).filter(|&i| next[i] < gens[i].len).collect();
        if open.is_empty() {
            break;
        }
        let i = open[usize::from(picks[k % picks.len()]) % open.len()];
        k += 1;
        let g = &gens[i];
        next[i] += 1;
        // PRGI: the group's index, unique per function among outstanding groups.
        // CAST: small test indices.
        let m = req(g.rid, g.pasid, i as u16, next[i] == g.len);
        svc.receive(m, &mut table, &mut handler, &mut sink).unwrap();
    }
    for id in deferred {
        svc.complete(id, ResponseCode::Success, &mut sink).unwrap();
    }
    assert_eq!(svc.pending(), 0, "every group ended, nothing held");
    let mut per_group = vec![StdVec::new(); gens.len()];
    for r in &sink.sent {
        per_group[usize::from(r.prgi)].push(*r);
    }
    let attached = gens.iter().map(|g| table.attached.contains_key(&(g.rid, g.pasid))).collect();
    (per_group, svc.stats(), attached)
}

proptest! {
    /// With at most twice as many groups open as there are slots (slots plus remembered keys),
    /// every group gets exactly one response, with the right function, PASID rule and code.
    #[test]
    fn every_group_is_answered_exactly_once((gens, picks, required) in groups(8)) {
        let (per_group, stats, attached) = run(&gens, &picks, required);
        prop_assert_eq!(stats.early_responses, 0);
        for ((g, responses), attached) in gens.iter().zip(&per_group).zip(attached) {
            prop_assert_eq!(responses.len(), 1, "{:?}: {:?}", g, responses);
            let r = responses[0];
            prop_assert_eq!(r.rid.0, g.rid);
            let pasid = if required { g.pasid } else { None };
            prop_assert_eq!(r.pasid.map(Pasid::get), pasid);
            if r.rid.0 >= 0x100 {
                prop_assert_ne!(r.code, ResponseCode::Failure);
            }
            if !attached {
                prop_assert_eq!(r.code, ResponseCode::Invalid);
            }
        }
    }

    /// Far more open groups than the pools hold: no group is ever left unanswered.
    #[test]
    fn no_group_is_left_unanswered_under_pressure((gens, picks, required) in groups(24)) {
        let (per_group, stats, _) = run(&gens, &picks, required);
        for responses in &per_group {
            prop_assert!(!responses.is_empty());
            if stats.early_responses == 0 {
                prop_assert_eq!(responses.len(), 1);
            }
        }
    }
}
