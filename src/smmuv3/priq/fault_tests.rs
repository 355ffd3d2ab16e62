//! Fault-capable domains on an SMMUv3 ([`SmmuPriQueue`] under [`PageRequests`]) against the
//! `sim` SMMUv3 model (`Config::full()`: PRI queue, CMD_PRI_RESP checked against the groups
//! delivered and against STE.PPAR) and the PCI model's PRI PF with SR-IOV VFs (PRI Enable read
//! from the model's own register state; PRG Response PASID Required set). The mirror of
//! `iommu::fault::tests` for VT-d.

use core::time::Duration;
use std::vec::Vec as StdVec;

use super::*;
use crate::addr::{Bdf, Iova, PhysAddr};
use crate::iommu::domain::{Backend, Endpoint, Iommu, Isolation};
use crate::iommu::fault::{FaultId, PageRequests, PriContext};
use crate::iommu::pagetable::{Arm64Stage1, Perms};
use crate::iommu::pri::{Disposition, Group};
use crate::pci::caps::{find_extended, id};
use crate::pci::config::ConfigAccess;
use crate::pci::groups::Groups;
use crate::pci::groups::testutil::{ACS_ON, endpoint, root_port, vf, with_acs};
use crate::pci::pri_share::{IommuId, PfPolicy, PriShare};
use crate::pci::topology::Topology as Snapshot;
use crate::sim::pci::{FnId, Topology as PciModel};
use crate::sim::smmuv3::{
    self as model, Access, Config, PageRequest as Injected, PriOutcome, PriResponder,
    PriResponseCode, Smmu,
};
use crate::sim::vtd::SimPlatform;
use crate::smmuv3::backend::{SidMap, SmmuBackend};
use crate::smmuv3::unit::UnitConfig;

type Core = Iommu<SmmuBackend<'static>, 8, 16>;
type Faults = PageRequests<SmmuPriQueue, 8, 4, 8>;
type Share = PriShare<4, 8, 2>;
const IOMMU: IommuId = IommuId(0);
const IOVA: u64 = 0x40_0000;
/// STE.PPAR (§5.2, word 1 bit 18), typed from the specification.
const PPAR: u64 = 1 << 18;

fn pf_bdf() -> Bdf {
    Bdf::new(0, 1, 0, 0).unwrap()
}

/// The PCI model's PRI PF at 01:00.0 (capacity 512, PRG Response PASID Required) with 3 VFs
/// enabled, and the snapshot the core checks: root port 00:01.0 (ACS) -> PF (ACS) and VFs
/// 01:00.1-3, each its own group. Endpoints are requester IDs (no PASID): an SMMU PASID
/// attachment needs the StreamID on stage 1 first.
struct Pci {
    model: PciModel,
    pf_id: FnId,
    snapshot: Snapshot<8>,
    groups: Groups<8>,
    pf: Endpoint,
    vfs: [Endpoint; 3],
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
    let groups = Groups::compute(&s);
    let ep = |i| Endpoint::function(i, s.get(i).unwrap().bdf());
    let (pf, vfs) = (ep(pf), [ep(v[0]), ep(v[1]), ep(v[2])]);
    Pci { model, pf_id, snapshot: s, groups, pf, vfs }
}

impl Pci {
    fn iso(&self) -> Isolation<'_, 8> {
        Isolation::new(&self.snapshot, &self.groups)
    }
    fn pri_on(&self) -> bool {
        self.model.pri_enabled(self.pf_id)
    }
}

struct Smmuv3 {
    p: SimPlatform,
    model: Smmu,
    core: Core,
    faults: Faults,
}

fn smmu() -> Smmuv3 {
    let (p, model) = model::pair(Config::full());
    let unit = Unit::new(&p, model::DEFAULT_BASE, UnitConfig::default()).unwrap();
    let core = Iommu::new(SmmuBackend::new(unit, SidMap::Identity), 1);
    Smmuv3 { p, model, core, faults: Faults::new(SmmuPriQueue) }
}

impl Smmuv3 {
    fn ste(&mut self, e: &Endpoint) -> [u64; 8] {
        let sid = StreamId(u32::from(rid(e)));
        self.core.backend_mut().unit_mut().stream_entry(&self.p, sid).unwrap().unwrap()
    }
    fn ppar(&mut self, e: &Endpoint) -> bool {
        self.ste(e)[1] & PPAR != 0
    }
    /// Model-side checks: no PPAR mismatch, no unexpected response, nothing outstanding.
    fn assert_all_answered_once(&self) {
        assert!(self.model.errors().is_empty(), "{:?}", self.model.errors());
        assert!(self.model.pri_responses().iter().all(|r| r.expected));
        let out = self.model.outstanding_page_request_groups();
        assert!(out.is_empty(), "{out:?}");
    }
    fn inject(&self, e: &Endpoint, ssid: Option<u32>, prgi: u16, last: bool) -> PriOutcome {
        self.model.inject_page_request(Injected {
            sid: u32::from(rid(e)),
            ssid,
            prgi,
            last,
            read: true,
            address: IOVA,
            ..Injected::default()
        })
    }
    fn reaches(&self, e: &Endpoint) -> bool {
        self.model.translate(u32::from(rid(e)), None, IOVA, Access::WRITE).is_ok()
    }
}

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

fn s1() -> Arm64Stage1 {
    Arm64Stage1::new(0)
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

/// (sid, prgi, code) of the driver's responses, sorted.
fn responses(m: &Smmu) -> StdVec<(u32, u16, PriResponseCode)> {
    let mut r: StdVec<_> = m
        .pri_responses()
        .iter()
        .inspect(|r| assert_eq!(r.responder, PriResponder::Command))
        .map(|r| (r.sid, r.prgi, r.code))
        .collect();
    r.sort_unstable_by_key(|&(s, p, c)| (s, p, c as u8));
    r
}

#[test]
fn vf_first_then_pf_then_detach_in_every_order() {
    let orders = permutations(&[0, 1, 2]);
    assert_eq!(orders.len(), 6);
    for order in orders {
        let pci = pci();
        let iso = pci.iso();
        let mut v = smmu();
        let mut s = share(&pci, 256);
        let mut pri = PriContext::new(&mut s, &pci.model);
        let mut d = v.core.new_fault_domain(&v.p, s1()).unwrap();
        assert!(d.fault_capable());
        let eps = [pci.vfs[0], pci.pf, pci.vfs[1]];
        for (n, e) in eps.iter().enumerate() {
            assert_eq!(pci.pri_on(), n > 0, "PRI on the PF exactly while users remain");
            v.faults.attach(&mut v.core, &v.p, &iso, &mut d, *e, &mut pri).unwrap();
            assert!(pci.pri_on());
            // STE.PPAR mirrors the PF's PRG Response PASID Required.
            assert!(v.ppar(e));
            assert!(matches!(v.inject(e, None, 1, true), PriOutcome::Queued(_)));
        }
        assert_eq!(pri.share.users(pf_bdf()), 3);
        assert_eq!(v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap(), 3);
        let sids: StdVec<_> = eps.iter().map(|e| u32::from(rid(e))).collect();
        let mut want: StdVec<_> = sids.iter().map(|&s| (s, 1, PriResponseCode::Success)).collect();
        want.sort_unstable_by_key(|&(s, p, c)| (s, p, c as u8));
        assert_eq!(responses(&v.model), want);
        for (k, &i) in order.iter().enumerate() {
            let e = eps[i];
            v.faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap();
            let left = eps.len() - k - 1;
            assert_eq!(pci.pri_on(), left > 0, "order {order:?}, after detaching {k}");
            assert_eq!(pri.share.users(pf_bdf()), u16::try_from(left).unwrap());
            assert_eq!(v.core.domain_of(&e), None);
            assert!(!v.reaches(&e));
        }
        assert_eq!(pri.share.budget(IOMMU).unwrap().used, 0);
        v.assert_all_answered_once();
        v.core.destroy_domain(&v.p, d).unwrap();
    }
}

#[test]
fn detach_answers_every_pending_group_deny_within_its_bound() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = smmu();
    let mut s = share(&pci, 256);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, s1()).unwrap();
    let (a, b) = (pci.vfs[0], pci.pf);
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, a, &mut pri).unwrap();
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, b, &mut pri).unwrap();
    // VF: two deferred groups and a partial one; PF: one deferred group.
    v.inject(&a, None, 1, true);
    v.inject(&a, None, 2, true);
    v.inject(&a, None, 3, false);
    v.inject(&b, None, 1, true);
    let mut defer = |_: &Group<'_, FaultId>| Disposition::Defer;
    v.faults.process(&mut v.core, &v.p, &mut defer, 64).unwrap();
    assert_eq!(v.faults.service().pending(), 4);
    assert!(v.model.pri_responses().is_empty());
    // One more of the VF still in the queue when the detach comes: the drain reads it and
    // answers it Deny (its attachment is no longer routed).
    v.inject(&a, None, 4, true);

    let start = v.p.now();
    v.faults.detach(&mut v.core, &v.p, &iso, &mut d, a, &mut pri, &mut ok).unwrap();
    // TIMEOUT check: the model's clock moves per register read; a drain is a few polls.
    assert!(v.p.now().since(start) < Duration::from_millis(10));
    let sa = u32::from(rid(&a));
    let deny = PriResponseCode::Deny;
    assert_eq!(responses(&v.model), [(sa, 1, deny), (sa, 2, deny), (sa, 4, deny)]);
    // The PF's group is untouched, PRI stays on for it; nothing of the VF outstanding.
    assert_eq!(v.faults.service().pending(), 1);
    assert_eq!(v.model.outstanding_page_request_groups(), [(u32::from(rid(&b)), 1)]);
    assert!(pci.pri_on());
    // The VF's partial group ends late: answered Deny by the next service pass.
    v.inject(&a, None, 3, true);
    v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
    assert!(responses(&v.model).contains(&(sa, 3, deny)));
    v.faults.detach(&mut v.core, &v.p, &iso, &mut d, b, &mut pri, &mut ok).unwrap();
    assert!(!pci.pri_on());
    assert!(responses(&v.model).contains(&(u32::from(rid(&b)), 1, deny)));
    assert_eq!(v.faults.service().pending(), 0);
    v.assert_all_answered_once();
}

#[test]
fn replace_fault_capable_to_plain_and_back() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = smmu();
    let mut s = share(&pci, 256);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut fault = v.core.new_fault_domain(&v.p, s1()).unwrap();
    let mut plain = v.core.new_domain(&v.p, s1()).unwrap();
    assert!(!plain.fault_capable());
    let e = pci.vfs[2];
    v.faults.attach(&mut v.core, &v.p, &iso, &mut fault, e, &mut pri).unwrap();
    assert!(pci.pri_on());
    v.inject(&e, None, 7, true);
    let mut defer = |_: &Group<'_, FaultId>| Disposition::Defer;
    v.faults.process(&mut v.core, &v.p, &mut defer, 64).unwrap();
    assert_eq!(v.faults.service().pending(), 1);

    v.faults
        .replace(&mut v.core, &v.p, &iso, &mut fault, &mut plain, e, &mut pri, &mut ok)
        .unwrap();
    assert!(!pci.pri_on(), "the last fault-capable attachment left");
    assert_eq!(v.core.domain_of(&e), Some(plain.id()));
    assert_eq!(v.faults.fault_id(&e), None);
    let sid = u32::from(rid(&e));
    assert_eq!(responses(&v.model), [(sid, 7, PriResponseCode::Deny)]);
    // The translation moved: the plain domain's mapping is reached.
    let pending = plain.map(&v.p, Iova(IOVA), PhysAddr(0x9000_0000), 0x1000, Perms::RW).unwrap();
    v.core.flush(&v.p, &plain, pending).unwrap();
    let t = v.model.translate(sid, None, IOVA, Access::WRITE).unwrap();
    assert_eq!(t.phys, 0x9000_0000);

    v.faults
        .replace(&mut v.core, &v.p, &iso, &mut plain, &mut fault, e, &mut pri, &mut ok)
        .unwrap();
    assert!(pci.pri_on());
    assert!(v.ppar(&e), "STE.PPAR set again after the STE was rewritten");
    assert!(matches!(v.inject(&e, None, 9, true), PriOutcome::Queued(_)));
    v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
    let last = *v.model.pri_responses().last().unwrap();
    assert_eq!((last.prgi, last.code), (9, PriResponseCode::Success));
    v.assert_all_answered_once();
}

#[test]
fn a_drain_whose_cmd_sync_never_completes_forces_blocking_and_reports() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = smmu();
    let mut s = share(&pci, 256);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, s1()).unwrap();
    let e = pci.vfs[1];
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap();
    let pending = d.map(&v.p, Iova(IOVA), PhysAddr(0x8000_0000), 0x1000, Perms::RW).unwrap();
    v.core.flush(&v.p, &d, pending).unwrap();
    assert!(v.reaches(&e));
    v.inject(&e, None, 5, true);
    let mut defer = |_: &Group<'_, FaultId>| Disposition::Defer;
    v.faults.process(&mut v.core, &v.p, &mut defer, 64).unwrap();

    v.core.backend_mut().unit_mut().command_queue().set_timeout(Duration::from_millis(5));
    // Block the StreamID first (the abort STE the detach writes, already confirmed): the
    // detach then changes nothing, and the CMD_SYNC that stalls is the drain's own.
    v.core.backend_mut().remove(&v.p, &e).unwrap();
    v.model.stall_next_sync();
    let start = v.p.now();
    let mut handler = |_: &Group<'_, FaultId>| Disposition::Respond(ResponseCode::Success);
    let err =
        v.faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut handler).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PageRequestDrain { function, pasid: u32::MAX, cause: super::super::queue::SYNC_WAIT }
                if function == e.bdf
        ),
        "{err:?}"
    );
    assert!(v.p.now().since(start) < Duration::from_millis(100), "bounded");
    // Blocked: the endpoint reaches nothing; no longer attached.
    assert!(!v.reaches(&e));
    assert_eq!(v.core.domain_of(&e), None);
    // Reported and kept a PRI user: its group is still outstanding.
    assert_eq!(v.faults.stuck().map(|u| u.bdf).collect::<StdVec<_>>(), [e.bdf]);
    assert!(pci.pri_on());
    // The group's Deny is in the command ring behind the stalled CMD_SYNC: not answered yet.
    let sid = u32::from(rid(&e));
    assert_eq!(v.model.outstanding_page_request_groups(), [(sid, 5)]);
    // Once the SMMU resumes, it goes out, exactly once.
    v.model.release_stalled_sync();
    v.p.step_all();
    assert_eq!(responses(&v.model), [(sid, 5, PriResponseCode::Deny)]);
    v.assert_all_answered_once();
}

#[test]
fn unattached_pasid_is_answered_deny_and_vf_failure_becomes_deny() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = smmu();
    let mut s = share(&pci, 256);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, s1()).unwrap();
    let (vf0, pf) = (pci.vfs[0], pci.pf);
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, vf0, &mut pri).unwrap();
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, pf, &mut pri).unwrap();
    // PASID 4 of the VF: only its requester ID is attached.
    assert!(matches!(v.inject(&vf0, Some(4), 1, true), PriOutcome::Queued(_)));
    v.inject(&vf0, None, 2, true);
    v.inject(&pf, None, 2, true);
    let mut calls = 0;
    let mut fail = |_: &Group<'_, FaultId>| {
        calls += 1;
        Disposition::Respond(ResponseCode::Failure)
    };
    v.faults.process(&mut v.core, &v.p, &mut fail, 64).unwrap();
    assert_eq!(calls, 2, "the unattached PASID never reaches the handler");
    let got: StdVec<_> =
        v.model.pri_responses().iter().map(|r| (r.sid, r.ssid, r.prgi, r.code)).collect();
    let (svf, spf) = (u32::from(rid(&vf0)), u32::from(rid(&pf)));
    assert_eq!(
        got,
        [
            // With the PASID: STE.PPAR is set, and the model checks the two agree.
            (svf, Some(4), 1, PriResponseCode::Deny),
            (svf, None, 2, PriResponseCode::Deny), // the VF's Failure contained
            (spf, None, 2, PriResponseCode::Fail),
        ]
    );
    assert_eq!(v.faults.service().stats().vf_failures_contained, 1);
    v.assert_all_answered_once();
}

#[test]
fn a_unit_without_pri_cannot_make_a_fault_capable_domain() {
    let (p, _model) = model::pair(Config::qemu_virt());
    let unit = Unit::new(&p, model::DEFAULT_BASE, UnitConfig::default()).unwrap();
    let mut core = Core::new(SmmuBackend::new(unit, SidMap::Identity), 1);
    assert!(matches!(
        core.new_fault_domain(&p, s1()),
        Err(Error::Unsupported { what: "SMMU IDR0.PRI (PRI queue)", .. })
    ));
}

#[test]
fn a_pasid_attachment_answers_with_the_pasid_and_ppar_outlives_ste_rewrites() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = smmu();
    let mut s = share(&pci, 256);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut fault = v.core.new_fault_domain(&v.p, s1()).unwrap();
    let mut plain = v.core.new_domain(&v.p, s1()).unwrap();
    let whole = pci.vfs[0];
    let e = Endpoint::with_pasid(whole.function, whole.bdf, crate::addr::Pasid::new(3).unwrap());
    // The StreamID on stage 1 first (a substream needs it), then PASID 3 fault-capable.
    v.core.attach(&v.p, &iso, &mut plain, whole).unwrap();
    assert!(!v.ppar(&whole));
    v.faults.attach(&mut v.core, &v.p, &iso, &mut fault, e, &mut pri).unwrap();
    assert!(pci.pri_on());
    assert!(v.ppar(&whole));
    v.inject(&e, Some(3), 1, true);
    v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
    // The requester ID moves to another domain (its CD 0 changes), PPAR kept.
    let mut other = v.core.new_domain(&v.p, s1()).unwrap();
    v.core.replace(&v.p, &iso, &mut plain, &mut other, whole).unwrap();
    assert!(v.ppar(&whole), "STE.PPAR is the function's, not the domain's");
    v.inject(&e, Some(3), 2, true);
    v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
    let got: StdVec<_> = v.model.pri_responses().iter().map(|r| (r.ssid, r.prgi, r.code)).collect();
    let success = PriResponseCode::Success;
    assert_eq!(got, [(Some(3), 1, success), (Some(3), 2, success)]);
    v.faults.detach(&mut v.core, &v.p, &iso, &mut fault, e, &mut pri, &mut ok).unwrap();
    assert!(!pci.pri_on());
    v.core.detach(&v.p, &iso, &mut other, whole).unwrap();
    v.assert_all_answered_once();
}

#[test]
fn ste_rewrites_keep_ppar() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = smmu();
    let mut s = share(&pci, 256);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut fault = v.core.new_fault_domain(&v.p, s1()).unwrap();
    let e = pci.vfs[0];
    v.faults.attach(&mut v.core, &v.p, &iso, &mut fault, e, &mut pri).unwrap();
    let translating = v.ste(&e);
    assert!(v.ppar(&e));
    // Made abort (as a forced block does) and back: the STE changes, PPAR stays.
    v.core.backend_mut().remove(&v.p, &e).unwrap();
    assert_ne!(v.ste(&e)[0], translating[0]);
    assert!(v.ppar(&e));
    // A PASID-tagged request of the function is answered with its PASID, as PPAR says.
    v.inject(&e, Some(9), 1, true);
    v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
    let r = v.model.pri_responses();
    assert_eq!((r[0].ssid, r[0].prgi, r[0].code), (Some(9), 1, PriResponseCode::Deny));
    v.assert_all_answered_once();
}

#[test]
fn a_late_pasid_request_after_the_last_detach_is_answered_as_the_function_wants() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = smmu();
    let mut s = share(&pci, 256);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, s1()).unwrap();
    let e = pci.vfs[1];
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap();
    v.faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap();
    assert!(!pci.pri_on());
    // The SMMU has no per-stream PRI refusal: a request the function sent late still reaches
    // the queue, and its Deny carries the PASID (the function's PRG Response PASID Required,
    // which STE.PPAR still says).
    assert!(matches!(v.inject(&e, Some(5), 3, true), PriOutcome::Queued(_)));
    v.faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
    let r = v.model.pri_responses();
    assert_eq!((r[0].ssid, r[0].prgi, r[0].code), (Some(5), 3, PriResponseCode::Deny));
    v.assert_all_answered_once();
    // Attached again later: a fresh enable, the same answer.
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap();
    assert!(pci.pri_on() && v.ppar(&e));
    v.faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap();
    assert!(!pci.pri_on());
}

#[test]
fn functions_that_left_make_room_for_new_ones() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = smmu();
    // Room for two fault-capable attachments (and two function records).
    let mut faults = PageRequests::<SmmuPriQueue, 8, 4, 2>::new(SmmuPriQueue);
    let mut s = share(&pci, 256);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, s1()).unwrap();
    for e in [pci.vfs[0], pci.vfs[1]] {
        faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap();
        faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap();
    }
    // Both records are of functions that left: each new function evicts one.
    for e in [pci.pf, pci.vfs[2]] {
        faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap();
        assert_eq!(faults.fault_attachments(e.function), 1);
    }
    assert_eq!(pri.share.users(pf_bdf()), 2);
    let err = faults.attach(&mut v.core, &v.p, &iso, &mut d, pci.vfs[0], &mut pri).unwrap_err();
    assert!(matches!(err, Error::CapacityExceeded { capacity: 2, .. }), "{err:?}");
    assert_eq!(pri.share.users(pf_bdf()), 2, "the refusal changed nothing");
    for e in [pci.pf, pci.vfs[2]] {
        v.inject(&e, None, 1, true);
    }
    faults.process(&mut v.core, &v.p, &mut ok, 64).unwrap();
    for e in [pci.pf, pci.vfs[2]] {
        faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap();
    }
    assert!(!pci.pri_on());
    v.assert_all_answered_once();
}

#[test]
fn a_detach_whose_ste_change_is_never_confirmed_still_blocks_and_reports() {
    let pci = pci();
    let iso = pci.iso();
    let mut v = smmu();
    let mut s = share(&pci, 256);
    let mut pri = PriContext::new(&mut s, &pci.model);
    let mut d = v.core.new_fault_domain(&v.p, s1()).unwrap();
    let e = pci.vfs[2];
    v.faults.attach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri).unwrap();
    let pending = d.map(&v.p, Iova(IOVA), PhysAddr(0x8000_0000), 0x1000, Perms::RW).unwrap();
    v.core.flush(&v.p, &d, pending).unwrap();
    v.inject(&e, None, 6, true);
    let mut defer = |_: &Group<'_, FaultId>| Disposition::Defer;
    v.faults.process(&mut v.core, &v.p, &mut defer, 64).unwrap();
    v.core.backend_mut().unit_mut().command_queue().set_timeout(Duration::from_millis(5));
    // The CMD_SYNC behind the detach's CFGI_STE stalls, and every later one waits behind it.
    v.model.stall_next_sync();
    let start = v.p.now();
    let err = v.faults.detach(&mut v.core, &v.p, &iso, &mut d, e, &mut pri, &mut ok).unwrap_err();
    assert!(
        matches!(err, Error::PageRequestDrain { function, .. } if function == e.bdf),
        "{err:?}"
    );
    assert!(v.p.now().since(start) < Duration::from_millis(100), "bounded");
    // The CFGI_STE ahead of the stalled CMD_SYNC was processed: blocked.
    assert!(!v.reaches(&e));
    assert_eq!(v.core.domain_of(&e), None);
    assert_eq!(v.faults.stuck().map(|u| u.bdf).collect::<StdVec<_>>(), [e.bdf]);
    assert!(pci.pri_on());
    assert_eq!(d.unconfirmed_detaches(), 1, "the domain can never be destroyed");
    v.model.release_stalled_sync();
    v.p.step_all();
    let sid = u32::from(rid(&e));
    assert_eq!(responses(&v.model), [(sid, 6, PriResponseCode::Deny)]);
    v.assert_all_answered_once();
}
