//! Fault-capable domains against the models: the VT-d model (page request queue, PRE checked,
//! responses matched against what was injected) and the PCI model's PRI PF with SR-IOV VFs
//! (PRI Enable read from the model's own register state).

use core::time::Duration;
use std::sync::{Arc, Mutex};
use std::vec::Vec as StdVec;

use super::*;
use crate::addr::{Bdf, Iova, PhysAddr};
use crate::iommu::domain::Isolation;
use crate::iommu::pagetable::{Perms, X86FirstStage};
use crate::iommu::pri::{Disposition, Group};
use crate::pci::caps::{find_extended, id};
use crate::pci::groups::Groups;
use crate::pci::groups::testutil::{ACS_ON, endpoint, root_port, vf, with_acs};
use crate::pci::pri_share::{IommuId, PfPolicy};
use crate::pci::topology::Topology as Snapshot;
use crate::sim::pci::{FnId, Topology as PciModel};
use crate::sim::vtd::{
    self, Config, InjectOutcome, PageRequestDescriptor, RemappingUnit, ResponseSource, SimPlatform,
};
use crate::vtd::prq::PageRequestQueue;
use crate::vtd::qi::DEFAULT_ENTRIES;
use crate::vtd::{TableMode, Unit};

type Core = Iommu<Unit, 8, 16>;
type Faults = PageRequests<PageRequestQueue, 8, 4, 8>;
type Share = PriShare<4, 8, 2>;
const IOMMU: IommuId = IommuId(0);
const PASID: u32 = 3;
const IOVA: u64 = 0x40_0000;

fn pf_bdf() -> Bdf {
    Bdf::new(0, 1, 0, 0).unwrap()
}

/// The PCI model's PRI PF at 01:00.0 (capacity 512) with 3 VFs enabled, and the snapshot the
/// core checks against: root port 00:01.0 (ACS) -> PF 01:00.0 (ACS) and VFs 01:00.1-3, each
/// its own group; plus 00:00.0 standing for a function without PRI (the host bridge in the
/// model has no PRI capability).
struct Pci {
    model: PciModel,
    pf_id: FnId,
    snapshot: Snapshot<8>,
    groups: Groups<8>,
    pf: Endpoint,
    vfs: [Endpoint; 3],
    no_pri: Endpoint,
}

fn pci() -> Pci {
    let model = PciModel::pri_sriov(3, 512);
    let sriov = find_extended(&model, pf_bdf(), id::SRIOV).unwrap().unwrap();
    model.write16(pf_bdf(), sriov + 0x10, 3);
    model.write16(pf_bdf(), sriov + 0x08, 1);
    let pf_id = model.find("pri-pf").unwrap();
    let mut s = Snapshot::<8>::new();
    let rp = s.push(root_port(0, 1, 0, 1, Some(ACS_ON))).unwrap();
    let pf = s.push(with_acs(endpoint(1, 0, 0, Some(rp)), ACS_ON)).unwrap();
    let v: StdVec<_> = (1..=3).map(|f| s.push(vf(1, 0, f, Some(rp), pf)).unwrap()).collect();
    let hb = s.push(endpoint(0, 0, 0, None)).unwrap();
    let groups = Groups::compute(&s);
    let ep = |i| Endpoint::with_pasid(i, s.get(i).unwrap().bdf(), Pasid::new(PASID).unwrap());
    for i in [pf, v[0], v[1], v[2], hb] {
        let g = groups.group_of(i).unwrap();
        assert_eq!(groups.members(g).count(), 1, "function {i:?} isolated");
    }
    let (pf, vfs, no_pri) = (ep(pf), [ep(v[0]), ep(v[1]), ep(v[2])], ep(hb));
    Pci { model, pf_id, snapshot: s, groups, pf, vfs, no_pri }
}

impl Pci {
    fn iso(&self) -> Isolation<'_, 8> {
        Isolation::new(&self.snapshot, &self.groups)
    }
    fn pri_on(&self) -> bool {
        self.model.pri_enabled(self.pf_id)
    }
}

struct Vtd {
    p: SimPlatform,
    model: RemappingUnit,
    core: Core,
    faults: Faults,
}

fn vtd() -> Vtd {
    let (p, model) = vtd::pair(Config::qemu_scalable_first_stage().with_page_requests(true));
    let mut unit =
        Unit::new(&p, vtd::DEFAULT_BASE, model.window_size(), TableMode::Scalable).unwrap();
    unit.enable_queued_invalidation(&p, DEFAULT_ENTRIES).unwrap();
    unit.set_translation(&p, true).unwrap();
    let prq = PageRequestQueue::new(&p, &unit, 1).unwrap();
    Vtd { p, model, core: Iommu::new(unit, 1), faults: Faults::new(prq) }
}

/// A share with the PF added: 32 outstanding requests for each of 4 users (allocation 128,
/// the whole 128-entry queue).
fn share(pci: &Pci, queue: u32) -> Share {
    let mut s = Share::new();
    s.add_iommu(IOMMU, queue).unwrap();
    s.add_pf(&pci.model, pf_bdf(), PfPolicy { iommu: IOMMU, share: 32, users: 4 }).unwrap();
    s
}

fn ok(_: &Group<'_, FaultId>) -> Disposition {
    Disposition::Respond(ResponseCode::Success)
}

fn rid(e: &Endpoint) -> u16 {
    e.bdf.routing_id().0
}

fn request(e: &Endpoint, prgi: u16, last: bool) -> PageRequestDescriptor {
    PageRequestDescriptor::read(rid(e), e.pasid.map(Pasid::get), prgi, last, IOVA)
}

fn assert_all_answered_once(model: &RemappingUnit) {
    assert!(model.response_problems().is_empty(), "{:?}", model.response_problems());
    assert!(model.unanswered_groups().is_empty(), "{:?}", model.unanswered_groups());
}

fn permutations(items: &[usize]) -> StdVec<StdVec<usize>> {
    if items.len() <= 1 {
        return std::vec![items.to_vec()];
    }
    let mut out = StdVec::new();
    for (i, &x) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, x);
            out.push(p);
        }
    }
    out
}

#[test]
fn vf_first_then_pf_then_detach_in_every_order() {
    let orders = permutations(&[0, 1, 2]);
    assert_eq!(orders.len(), 6);
    for order in orders {
        let pci = pci();
        let iso = pci.iso();
        let mut v = vtd();
        let mut s = share(&pci, 128);
        let mut pri = PriContext::new(&mut s, &pci.model);
        let mut d = v.core.new_fault_domain(&v.p, X86FirstStage::new()).unwrap();
        assert!(d.fault_capable());
        // VF first, then the PF, then a second VF.
        let eps = [pci.vfs[0], pci.pf, pci.vfs[1]];
        for (n, e) in eps.iter().enumerate() {
            assert_eq!(pci.pri_on(), n > 0, "PRI on the PF exactly while users remain");
            v.faults.attach(&mut v.core, &v.p, &iso, &mut d, *e, &mut pri).unwrap();
            assert!(pci.pri_on());
            // The unit now queues its page requests (PRE set).
            assert!(matches!(
                v.model.inject_page_request(request(e, 1, true)),
                InjectOutcome::Queued(_)
            ));
        }
        assert_eq!(pri.share.users(pf_bdf()), 3);
        v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
        assert_all_answered_once(&v.model);
        for (k, &i) in order.iter().enumerate() {
            let e = eps[i];
            v.faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap();
            let left = eps.len() - k - 1;
            assert_eq!(pci.pri_on(), left > 0, "order {order:?}, after detaching {k}");
            assert_eq!(pri.share.users(pf_bdf()), u16::try_from(left).unwrap());
            // The detached function's requests no longer reach the queue: the unit refuses and
            // answers them itself (its context entry is gone).
            let o = v.model.inject_page_request(request(&e, 2, true));
            assert!(matches!(o, InjectOutcome::Refused { .. }), "{o:?}");
        }
        assert_eq!(pri.share.budget(IOMMU).unwrap().used, 0);
        assert_all_answered_once(&v.model);
        v.core.destroy_domain(&v.p, d).unwrap();
    }
}

#[test]
fn replace_fault_capable_to_plain_and_back() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = vtd();
    let mut s = share(&pci, 128);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut fault = v.core.new_fault_domain(&v.p, X86FirstStage::new()).unwrap();
    let mut plain = v.core.new_domain(&v.p, X86FirstStage::new()).unwrap();
    assert!(!plain.fault_capable());
    let e = pci.vfs[2];
    v.faults.attach(&mut v.core, &v.p, &iso, &mut fault, e, &mut pri).unwrap();
    assert!(pci.pri_on());
    // A group left pending (deferred) when the replace comes.
    v.model.inject_page_request(request(&e, 7, true));
    let mut defer = |_: &Group<'_, FaultId>| Disposition::Defer;
    v.faults.process(&mut v.core, &v.p, &mut defer, 64).unwrap();
    assert_eq!(v.faults.service().pending(), 1);

    v.faults
        .replace(&mut v.core, &v.p, &iso, &mut fault, &mut plain, e, &mut pri, &mut ok)
        .unwrap();
    assert!(!pci.pri_on(), "the last fault-capable attachment left");
    assert_eq!(v.core.domain_of(&e), Some(plain.id()));
    assert_eq!(v.faults.fault_id(&e), None);
    let r = v.model.page_responses();
    assert_eq!((r.len(), r[0].prgi, r[0].code), (1, 7, 1), "the pending group answered Invalid");
    // PRE cleared (the context entry stays for the plain domain): the unit refuses.
    let o = v.model.inject_page_request(request(&e, 8, true));
    assert_eq!(o, InjectOutcome::Refused { reason: vtd::regs::reason::SM_PRE_ABSENT });
    // The translation moved: the plain domain's mapping is reached.
    let pending = plain.map(&v.p, Iova(IOVA), PhysAddr(0x9000_0000), 0x1000, Perms::RW).unwrap();
    v.core.flush(&v.p, &plain, pending).unwrap();
    let t = v.model.translate(e.bdf.routing_id(), Some(PASID), IOVA, true).unwrap();
    assert_eq!(t.phys, 0x9000_0000);

    v.faults
        .replace(&mut v.core, &v.p, &iso, &mut plain, &mut fault, e, &mut pri, &mut ok)
        .unwrap();
    assert!(pci.pri_on());
    assert!(matches!(v.model.inject_page_request(request(&e, 9, true)), InjectOutcome::Queued(_)));
    v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
    let last = *v.model.page_responses().last().unwrap();
    assert_eq!((last.prgi, last.code, last.source), (9, 0, ResponseSource::Queue(last_index(&v))));
    assert_all_answered_once(&v.model);
}

fn last_index(v: &Vtd) -> u32 {
    match v.model.page_responses().last().unwrap().source {
        ResponseSource::Queue(i) => i,
        ResponseSource::Hardware => panic!("answered by hardware"),
    }
}

#[test]
fn detach_answers_every_pending_group_invalid_within_its_bound() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = vtd();
    let mut s = share(&pci, 128);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, X86FirstStage::new()).unwrap();
    let (a, b) = (pci.vfs[0], pci.pf);
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, a, &mut pri).unwrap();
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, b, &mut pri).unwrap();
    // VF: two deferred groups and a partial one; PF: one deferred group.
    for r in
        [request(&a, 1, true), request(&a, 2, true), request(&a, 3, false), request(&b, 1, true)]
    {
        v.model.inject_page_request(r);
    }
    let mut defer = |_: &Group<'_, FaultId>| Disposition::Defer;
    v.faults.process(&mut v.core, &v.p, &mut defer, 64).unwrap();
    assert_eq!(v.faults.service().pending(), 4);
    // One more of the VF received by the unit but not yet written: the drain's PD wait
    // writes it, and it is answered Invalid (its attachment is no longer routed).
    v.model.post_page_request(request(&a, 4, true));

    let start = v.p.now();
    v.faults.detach(&mut v.core, &v.p, &iso, &mut d, a, &mut pri, &mut ok).unwrap();
    // TIMEOUT check: the model's clock moves per register read; a drain is a few polls.
    assert!(v.p.now().since(start) < Duration::from_millis(10));
    let mut got: StdVec<_> =
        v.model.page_responses().iter().map(|r| (r.rid, r.prgi, r.code)).collect();
    got.sort_unstable();
    assert_eq!(got, [(rid(&a), 1, 1), (rid(&a), 2, 1), (rid(&a), 4, 1)]);
    assert_eq!(v.model.posted_page_requests(), 0);
    // The PF's group is untouched; PRI stays on for it.
    assert_eq!(v.faults.service().pending(), 1);
    assert!(pci.pri_on());
    // The VF's partial group ends late: the unit refuses it and answers Invalid itself.
    let o = v.model.inject_page_request(request(&a, 3, true));
    assert!(matches!(o, InjectOutcome::Refused { .. }));
    v.faults.detach(&mut v.core, &v.p, &iso, &mut d, b, &mut pri, &mut ok).unwrap();
    assert!(!pci.pri_on());
    assert_all_answered_once(&v.model);
}

#[test]
fn a_drain_that_never_completes_forces_blocking_and_reports() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = vtd();
    let mut s = share(&pci, 128);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, X86FirstStage::new()).unwrap();
    let e = pci.vfs[1];
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap();
    let pending = d.map(&v.p, Iova(IOVA), PhysAddr(0x8000_0000), 0x1000, Perms::RW).unwrap();
    v.core.flush(&v.p, &d, pending).unwrap();
    v.model.inject_page_request(request(&e, 5, true));
    let mut defer = |_: &Group<'_, FaultId>| Disposition::Defer;
    v.faults.process(&mut v.core, &v.p, &mut defer, 64).unwrap();

    v.core.backend_mut().queue().unwrap().set_timeout(Duration::from_millis(5));
    v.model.stall_next_wait();
    let start = v.p.now();
    let err = v.faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap_err();
    assert!(
        matches!(err, Error::PageRequestDrain { function, pasid: PASID, .. } if function == e.bdf),
        "{err:?}"
    );
    assert!(v.p.now().since(start) < Duration::from_millis(100), "bounded");
    // Blocked: the endpoint reaches nothing; no longer attached.
    assert!(v.model.translate(e.bdf.routing_id(), Some(PASID), IOVA, true).is_err());
    assert_eq!(v.core.domain_of(&e), None);
    // Reported and kept a PRI user: its group may still be outstanding.
    assert_eq!(v.faults.stuck().map(|u| u.bdf).collect::<StdVec<_>>(), [e.bdf]);
    assert!(pci.pri_on());
    assert_eq!(d.unconfirmed_detaches(), 1, "the domain can never be destroyed");
}

#[test]
fn unattached_pasid_is_answered_invalid_and_vf_failure_becomes_invalid() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = vtd();
    let mut s = share(&pci, 128);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, X86FirstStage::new()).unwrap();
    let (vf0, pf) = (pci.vfs[0], pci.pf);
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, vf0, &mut pri).unwrap();
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, pf, &mut pri).unwrap();
    // PASID 4 of the VF: its context entry has PRE (PASID 3 is attached), PASID 4 nothing.
    let other = PageRequestDescriptor::read(rid(&vf0), Some(4), 1, true, IOVA);
    assert!(matches!(v.model.inject_page_request(other), InjectOutcome::Queued(_)));
    v.model.inject_page_request(request(&vf0, 2, true));
    v.model.inject_page_request(request(&pf, 2, true));
    let mut calls = 0;
    let mut fail = |_: &Group<'_, FaultId>| {
        calls += 1;
        Disposition::Respond(ResponseCode::Failure)
    };
    v.faults.process(&mut v.core, &v.p, &mut fail, 64).unwrap();
    assert_eq!(calls, 2, "the unattached PASID never reaches the handler");
    let got: StdVec<_> =
        v.model.page_responses().iter().map(|r| (r.rid, r.pasid, r.prgi, r.code)).collect();
    assert_eq!(
        got,
        [
            (rid(&vf0), Some(4), 1, 1),
            (rid(&vf0), Some(PASID), 2, 1), // the VF's Failure contained
            (rid(&pf), Some(PASID), 2, 0xf),
        ]
    );
    assert_eq!(v.faults.service().stats().vf_failures_contained, 1);
    assert_all_answered_once(&v.model);
}

#[test]
fn refusals_change_nothing() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = vtd();
    // The PF's allocation (128) does not fit a 64-entry budget.
    let mut s = share(&pci, 64);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, X86FirstStage::new()).unwrap();
    let e = pci.vfs[0];
    let err = v.faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap_err();
    assert_eq!(err, Error::PriBudgetExceeded { iommu: 0, requested: 128, available: 64 });
    assert!(!pci.pri_on());
    assert_eq!((v.core.domain_of(&e), d.users(), v.faults.fault_id(&e)), (None, 0, None));
    assert!(v.model.translate(e.bdf.routing_id(), Some(PASID), IOVA, false).is_err());

    // A function without PRI (and not added): PriUnavailable with its BDF.
    let err = v.faults.attach(&mut v.core, &v.p, &iso, &mut d, pci.no_pri, &mut pri).unwrap_err();
    assert_eq!(err, Error::PriUnavailable { pf: pci.no_pri.bdf });
    assert_eq!((v.core.attachment_count(), d.users()), (0, 0));

    // A unit without ECAP.PRS cannot make a fault-capable domain.
    let (p, model) = vtd::pair(Config::qemu_scalable_first_stage());
    let unit = Unit::new(&p, vtd::DEFAULT_BASE, model.window_size(), TableMode::Scalable).unwrap();
    let mut core = Core::new(unit, 1);
    assert!(matches!(
        core.new_fault_domain(&p, X86FirstStage::new()),
        Err(Error::Unsupported { what: "VT-d ECAP.PRS (page requests)", .. })
    ));
}

/// Everything one unit's lock covers: the model and platform are single-threaded (`Rc`), so
/// they are reached only with the lock held, as an integrator's unit would be.
struct World {
    v: Vtd,
    pci: Pci,
    share: Share,
    domain: Option<Domain<X86FirstStage>>,
    injected: usize,
}

// SAFETY: every `Rc` inside `World` (model, platform, their memory) is created with it and
// never cloned out; `World` is only reached through the `Mutex`, so no two threads touch those
// reference counts or `RefCell`s at once.
unsafe impl Send for World {}

#[test]
fn threads_detach_while_requests_arrive_and_no_group_is_lost_or_answered_twice() {
    for round in 0..8u16 {
        let pci = pci();
        let mut v = vtd();
        let mut share = share(&pci, 128);
        let mut d = v.core.new_fault_domain(&v.p, X86FirstStage::new()).unwrap();
        {
            let iso = pci.iso();
            let mut pri = PriContext::new(&mut share, &pci.model);
            for e in [pci.vfs[0], pci.vfs[1]] {
                v.faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap();
            }
        }
        let world = Arc::new(Mutex::new(World { v, pci, share, domain: Some(d), injected: 0 }));
        // Injects groups of two requests for both VFs, as devices would, until told to stop.
        let injector = {
            let world = Arc::clone(&world);
            std::thread::spawn(move || {
                for prgi in 0..40u16 {
                    let mut w = world.lock().unwrap();
                    let (a, b) = (w.pci.vfs[0], w.pci.vfs[1]);
                    for e in [a, b] {
                        w.v.model.inject_page_request(request(&e, prgi, false));
                        w.v.model.inject_page_request(request(&e, prgi, true));
                    }
                    w.injected += 4;
                    drop(w);
                    std::thread::yield_now();
                }
            })
        };
        // The page-request interrupt: services the queue, deferring every other group.
        let servicer = {
            let world = Arc::clone(&world);
            std::thread::spawn(move || {
                for n in 0..60 {
                    let mut w = world.lock().unwrap();
                    let w = &mut *w;
                    let mut handler = |_: &Group<'_, FaultId>| {
                        if n % 2 == 0 {
                            Disposition::Defer
                        } else {
                            Disposition::Respond(ResponseCode::Success)
                        }
                    };
                    w.v.faults.process(&mut w.v.core, &w.v.p, &mut handler, 16).unwrap();
                    std::thread::yield_now();
                }
            })
        };
        // Detaches VF 0 part-way (after `round` yields), while both others run.
        for _ in 0..round {
            std::thread::yield_now();
        }
        {
            let mut w = world.lock().unwrap();
            let w = &mut *w;
            let iso = w.pci.iso();
            let mut pri = PriContext::new(&mut w.share, &w.pci.model);
            let mut d = w.domain.take().unwrap();
            let e = w.pci.vfs[0];
            w.v.faults.detach(&mut w.v.core, &w.v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap();
            assert_eq!(w.v.faults.fault_id(&e), None);
            w.domain = Some(d);
        }
        injector.join().unwrap();
        servicer.join().unwrap();
        let mut w = world.lock().unwrap();
        let w = &mut *w;
        // Finish: service what is left, answer deferred groups of VF 1 by detaching it.
        w.v.faults.process(&mut w.v.core, &w.v.p, &mut ok, 256).unwrap();
        let iso = w.pci.iso();
        let mut pri = PriContext::new(&mut w.share, &w.pci.model);
        let mut d = w.domain.take().unwrap();
        let e = w.pci.vfs[1];
        w.v.faults.detach(&mut w.v.core, &w.v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap();
        assert!(!w.pci.pri_on());
        assert_eq!(w.v.faults.service().pending(), 0);
        assert_eq!(w.injected, 160);
        // Every group that ended was answered exactly once (by software, or by the unit for
        // requests it refused after PRE went off), none twice.
        assert_all_answered_once(&w.v.model);
        let answered = w.v.model.page_responses().len();
        assert_eq!(answered, 80, "round {round}: one response per group");
    }
}

#[test]
fn requests_without_pasid_and_a_pasid_the_enable_did_not_cover() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = vtd();
    let mut s = share(&pci, 128);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, X86FirstStage::new()).unwrap();
    let with_pasid = pci.vfs[0];
    let e = Endpoint::function(with_pasid.function, with_pasid.bdf);
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap();
    assert!(pci.pri_on());
    assert!(matches!(v.model.inject_page_request(request(&e, 1, true)), InjectOutcome::Queued(_)));
    v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
    let r = v.model.page_responses();
    assert_eq!((r[0].pasid, r[0].prgi, r[0].code), (None, 1, 0));
    // Page requests of the function were enabled without PASID: a PASID attachment would need
    // PASID Enable changed under its user.
    let err = v.faults.attach(&mut v.core, &v.p, &iso, &mut d, with_pasid, &mut pri).unwrap_err();
    assert!(matches!(err, Error::PriPinned { pf, users: 1, .. } if pf == pf_bdf()), "{err:?}");
    assert_eq!((v.core.domain_of(&with_pasid), v.faults.fault_attachments(e.function)), (None, 1));
    v.faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap();
    assert!(!pci.pri_on());
    let o = v.model.inject_page_request(request(&e, 2, true));
    assert!(matches!(o, InjectOutcome::Refused { .. }), "{o:?}");
    assert_all_answered_once(&v.model);
}
