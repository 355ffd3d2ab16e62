//! The domain core over a VT-d unit driven against the `sim::vtd` model: what a request of an
//! endpoint reaches after each attach, detach and replace is read from the model's own walk,
//! not from the driver's bookkeeping.

use crate::addr::{Iova, Pasid, PhysAddr, RequesterId};
use crate::error::Error;
use crate::iommu::domain::{DomainKind, Endpoint, Iommu, Isolation};
use crate::iommu::pagetable::{Perms, VtdSecondStage, X86FirstStage};
use crate::pci::groups::Groups;
use crate::pci::groups::testutil::{ACS_ON, bdf, conventional, endpoint, pcie_to_pci, root_port};
use crate::pci::topology::{FunctionIndex, Topology};
use crate::sim::vtd::{self, Config, RemappingUnit, SimPlatform, TranslationKind};
use crate::vtd::qi::DEFAULT_ENTRIES;
use crate::vtd::{TableMode, Unit};

const IOVA: u64 = 0x40_0000;
const TARGET_A: u64 = 0x8000_0000;
const TARGET_B: u64 = 0x9000_0000;

/// 00:01.0 root port (ACS) -> 01:00.0 alone; 00:02.0 root port (ACS) -> 02:00.0 PCIe-to-PCI
/// bridge -> 03:01.0 and 03:02.0, one group with the bridge (the bridge takes their requester
/// IDs).
struct Fixture {
    topology: Topology<8>,
    groups: Groups<8>,
    lone: Endpoint,
    left: Endpoint,
    right: Endpoint,
}

fn fixture() -> Fixture {
    let mut t = Topology::<8>::new();
    let rp1 = t.push(root_port(0, 1, 0, 1, Some(ACS_ON))).unwrap();
    let lone = t.push(endpoint(1, 0, 0, Some(rp1))).unwrap();
    let rp2 = t.push(root_port(0, 2, 0, 2, Some(ACS_ON))).unwrap();
    let bridge = t.push(pcie_to_pci(2, 0, 0, 3, Some(rp2))).unwrap();
    let left = t.push(conventional(3, 1, 0, Some(bridge))).unwrap();
    let right = t.push(conventional(3, 2, 0, Some(bridge))).unwrap();
    let groups = Groups::compute(&t);
    assert!(groups.same_group(left, right) && !groups.same_group(lone, left));
    let ep = |i: FunctionIndex| Endpoint::function(i, t.get(i).unwrap().bdf());
    Fixture { lone: ep(lone), left: ep(left), right: ep(right), topology: t, groups }
}

impl Fixture {
    fn iso(&self) -> Isolation<'_, 8> {
        Isolation::new(&self.topology, &self.groups)
    }
}

type Core = Iommu<Unit, 8, 16>;

fn setup(config: Config, mode: TableMode) -> (SimPlatform, RemappingUnit, Core) {
    let (p, model) = vtd::pair(config);
    let mut unit = Unit::new(&p, vtd::DEFAULT_BASE, model.window_size(), mode).unwrap();
    unit.enable_queued_invalidation(&p, DEFAULT_ENTRIES).unwrap();
    unit.set_translation(&p, true).unwrap();
    (p, model, Iommu::new(unit, 1))
}

fn rid(e: &Endpoint) -> RequesterId {
    e.bdf.routing_id()
}

/// Where the model sends a write of `e` to `iova`: the output address, or the fault reason.
fn reach(model: &RemappingUnit, e: &Endpoint, iova: u64) -> Result<u64, u8> {
    let pasid = e.pasid.map(Pasid::get);
    model.translate(rid(e), pasid, iova, true).map(|t| t.phys).map_err(|f| f.reason)
}

#[test]
fn attach_map_flush_translates_and_unmap_flush_faults() {
    for mode in [TableMode::Legacy, TableMode::Scalable] {
        let config = match mode {
            TableMode::Legacy => Config::qemu_legacy(),
            TableMode::Scalable => Config::qemu_scalable_second_stage(),
        };
        let (p, model, mut core) = setup(config, mode);
        let f = fixture();
        let iso = f.iso();
        let mut d = core.new_domain(&p, VtdSecondStage::new()).unwrap();
        assert_eq!(d.kind(), DomainKind::Translated(crate::iommu::Stage::Second));
        core.attach(&p, &iso, &mut d, f.lone).unwrap();
        let pending = d.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
        core.flush(&p, &d, pending).unwrap();
        assert_eq!(reach(&model, &f.lone, IOVA + 0x10), Ok(TARGET_A + 0x10), "{mode:?}");
        let t = model.translate(rid(&f.lone), None, IOVA, true).unwrap();
        assert_eq!((t.kind, t.did), (TranslationKind::SecondStage, u16::try_from(d.tag()).ok()));

        let pending = d.unmap(&p, Iova(IOVA), 0x1000).unwrap();
        core.flush(&p, &d, pending).unwrap();
        assert!(reach(&model, &f.lone, IOVA).is_err(), "{mode:?}: unmapped after the flush");
        assert!(model.errors().is_empty(), "{:?}", model.errors());
    }
}

#[test]
fn a_group_shares_one_domain_and_separate_groups_reach_only_their_own() {
    group_rules(Config::qemu_legacy(), TableMode::Legacy);
    group_rules(Config::qemu_scalable_second_stage(), TableMode::Scalable);
}

fn group_rules(config: Config, mode: TableMode) {
    let (p, model, mut core) = setup(config, mode);
    let f = fixture();
    let iso = f.iso();
    let mut a = core.new_domain(&p, VtdSecondStage::new()).unwrap();
    let mut b = core.new_domain(&p, VtdSecondStage::new()).unwrap();
    for (d, target) in [(&mut a, TARGET_A), (&mut b, TARGET_B)] {
        let pending = d.map(&p, Iova(IOVA), PhysAddr(target), 0x1000, Perms::RW).unwrap();
        core.flush(&p, d, pending).unwrap();
    }
    core.attach(&p, &iso, &mut a, f.left).unwrap();
    let split = core.attach(&p, &iso, &mut b, f.right).unwrap_err();
    assert!(
        matches!(split, Error::GroupSplit { function, member, .. } if function == f.right.bdf && member == f.left.bdf),
        "{split:?}"
    );
    assert_eq!(core.domain_of(&f.right), None, "the refused attach left nothing behind");
    core.attach(&p, &iso, &mut a, f.right).unwrap();
    core.attach(&p, &iso, &mut b, f.lone).unwrap();
    // Conventional devices behind the PCIe-to-PCI bridge reach the unit as secondary:00.0
    // (03:00.0, qemu notes §3.6): that alias must reach `a` too.
    let alias = Endpoint::function(f.left.function, bdf(3, 0, 0));
    assert_eq!(reach(&model, &alias, IOVA), Ok(TARGET_A));
    assert_eq!(reach(&model, &f.left, IOVA), Ok(TARGET_A));
    assert_eq!(reach(&model, &f.right, IOVA), Ok(TARGET_A));
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_B));
    assert_eq!((a.users(), b.users()), (2, 1));
    assert_eq!(core.attachment_count(), 3);

    // The shared alias stays while one member still needs it, and goes with the last.
    core.detach(&p, &iso, &mut a, f.left).unwrap();
    assert!(reach(&model, &f.left, IOVA).is_err());
    assert_eq!(reach(&model, &alias, IOVA), Ok(TARGET_A), "03:02.0 still needs 03:00.0");
    core.detach(&p, &iso, &mut a, f.right).unwrap();
    assert!(reach(&model, &alias, IOVA).is_err());
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_B), "the other group is untouched");
}

#[test]
fn replace_moves_the_whole_group_and_never_reaches_the_old_domain_after() {
    let (p, model, mut core) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let f = fixture();
    let iso = f.iso();
    let mut a = core.new_domain(&p, VtdSecondStage::new()).unwrap();
    let mut b = core.new_domain(&p, VtdSecondStage::new()).unwrap();
    for (d, target) in [(&mut a, TARGET_A), (&mut b, TARGET_B)] {
        let pending = d.map(&p, Iova(IOVA), PhysAddr(target), 0x1000, Perms::RW).unwrap();
        core.flush(&p, d, pending).unwrap();
    }
    core.attach(&p, &iso, &mut a, f.left).unwrap();
    core.attach(&p, &iso, &mut a, f.right).unwrap();
    // Warm the model's caches with the old translation: a replace that skipped the
    // invalidation would leave them in use.
    assert_eq!(reach(&model, &f.left, IOVA), Ok(TARGET_A));

    // Attaching an attached endpoint elsewhere is refused; replace is the way.
    let e = core.attach(&p, &iso, &mut b, f.left).unwrap_err();
    assert!(matches!(e, Error::Attachment { state: "attached to another domain", .. }), "{e:?}");
    core.replace(&p, &iso, &mut a, &mut b, f.left).unwrap();
    assert_eq!(core.domain_of(&f.left), Some(b.id()));
    assert_eq!(core.domain_of(&f.right), Some(b.id()), "the group moved together");
    assert_eq!(reach(&model, &f.left, IOVA), Ok(TARGET_B));
    assert_eq!(reach(&model, &f.right, IOVA), Ok(TARGET_B));
    assert_eq!((a.users(), b.users()), (0, 2));

    // The old domain is unused now: it can go, and its tag is released.
    let a_tag = a.tag();
    core.destroy_domain(&p, a).unwrap();
    assert!(!core.backend().domain_ids().is_allocated(u16::try_from(a_tag).unwrap()));
    // One in use cannot.
    let (b, e) = core.destroy_domain(&p, b).unwrap_err();
    assert!(matches!(e, Error::DomainInUse { users: 2, .. }), "{e:?}");
    assert!(model.errors().is_empty(), "{:?}", model.errors());
    drop(b);
}

#[test]
fn detach_blocks_and_is_checked_against_the_domain() {
    let (p, model, mut core) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let f = fixture();
    let iso = f.iso();
    let mut a = core.new_domain(&p, VtdSecondStage::new()).unwrap();
    let mut other = core.new_domain(&p, VtdSecondStage::new()).unwrap();
    let pending = a.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &a, pending).unwrap();
    core.attach(&p, &iso, &mut a, f.lone).unwrap();
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_A));
    let e = core.detach(&p, &iso, &mut other, f.lone).unwrap_err();
    assert!(matches!(e, Error::Attachment { state: "not attached to it", .. }), "{e:?}");
    core.detach(&p, &iso, &mut a, f.lone).unwrap();
    assert_eq!(reach(&model, &f.lone, IOVA), Err(0x02), "context entry not present: blocked");
    assert_eq!(a.users(), 0);
    // Detached, the group is free to go elsewhere.
    core.attach(&p, &iso, &mut other, f.lone).unwrap();
}

#[test]
fn pasid_attachments_need_a_lone_function_and_flush_per_pasid() {
    let (p, model, mut core) = setup(Config::qemu_scalable_first_stage(), TableMode::Scalable);
    let f = fixture();
    let iso = f.iso();
    let mut d = core.new_domain(&p, X86FirstStage::new()).unwrap();
    let pasid = Pasid::new(5).unwrap();
    let shared = Endpoint::with_pasid(f.left.function, f.left.bdf, pasid);
    let e = core.attach(&p, &iso, &mut d, shared).unwrap_err();
    assert!(matches!(e, Error::SharedGroup { members: 3, .. }), "{e:?}");

    let with_pasid = Endpoint::with_pasid(f.lone.function, f.lone.bdf, pasid);
    core.attach(&p, &iso, &mut d, with_pasid).unwrap();
    core.attach(&p, &iso, &mut d, f.lone).unwrap();
    let pending = d.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &d, pending).unwrap();
    assert_eq!(reach(&model, &with_pasid, IOVA), Ok(TARGET_A));
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_A));

    // Unmap: both PASIDs' cached translations go, or one would still reach the page.
    let pending = d.unmap(&p, Iova(IOVA), 0x1000).unwrap();
    core.flush(&p, &d, pending).unwrap();
    assert!(reach(&model, &with_pasid, IOVA).is_err());
    assert!(reach(&model, &f.lone, IOVA).is_err());
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn reserved_functions_keep_their_attachment() {
    let (p, _model, mut core) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let f = fixture();
    let iso = f.iso();
    let mut identity = core.new_identity_domain::<VtdSecondStage>().unwrap();
    let mut other = core.new_domain(&p, VtdSecondStage::new()).unwrap();
    core.attach(&p, &iso, &mut identity, f.lone).unwrap();
    core.reserve(f.lone.function).unwrap();
    let e = core.replace(&p, &iso, &mut identity, &mut other, f.lone).unwrap_err();
    assert_eq!(e, Error::Reserved { function: f.lone.bdf });
    let e = core.detach(&p, &iso, &mut identity, f.lone).unwrap_err();
    assert_eq!(e, Error::Reserved { function: f.lone.bdf });
    assert_eq!(core.domain_of(&f.lone), Some(identity.id()));
}

#[test]
fn identity_and_unsupported_kinds() {
    let (p, model, mut core) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let f = fixture();
    let iso = f.iso();
    let mut identity = core.new_identity_domain::<VtdSecondStage>().unwrap();
    core.attach(&p, &iso, &mut identity, f.lone).unwrap();
    assert_eq!(reach(&model, &f.lone, 0x1234_5000), Ok(0x1234_5000), "pass-through");
    let e = identity.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    // Legacy mode has no first stage and no PASID entries.
    assert!(matches!(core.new_domain(&p, X86FirstStage::new()), Err(Error::Unsupported { .. })));
    let mut d = core.new_domain(&p, VtdSecondStage::new()).unwrap();
    let with_pasid = Endpoint::with_pasid(f.left.function, f.left.bdf, Pasid::new(1).unwrap());
    let e = core.attach(&p, &iso, &mut d, with_pasid).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
}

#[test]
fn replace_then_detach_blocks_the_shared_alias() {
    for (config, mode) in [
        (Config::qemu_legacy(), TableMode::Legacy),
        (Config::qemu_scalable_second_stage(), TableMode::Scalable),
    ] {
        let (p, model, mut core) = setup(config, mode);
        let f = fixture();
        let iso = f.iso();
        let mut one = core.new_domain(&p, VtdSecondStage::new()).unwrap();
        let mut two = core.new_domain(&p, VtdSecondStage::new()).unwrap();
        for (d, target) in [(&mut one, TARGET_A), (&mut two, TARGET_B)] {
            let pending = d.map(&p, Iova(IOVA), PhysAddr(target), 0x1000, Perms::RW).unwrap();
            core.flush(&p, d, pending).unwrap();
        }
        core.attach(&p, &iso, &mut one, f.left).unwrap();
        core.attach(&p, &iso, &mut one, f.right).unwrap();
        core.attach(&p, &iso, &mut two, f.lone).unwrap();
        let alias = Endpoint::function(f.left.function, bdf(3, 0, 0));
        assert_eq!(reach(&model, &alias, IOVA), Ok(TARGET_A));
        core.replace(&p, &iso, &mut one, &mut two, f.left).unwrap();
        assert_eq!(reach(&model, &alias, IOVA), Ok(TARGET_B), "{mode:?}");
        core.detach(&p, &iso, &mut two, f.left).unwrap();
        assert_eq!(reach(&model, &alias, IOVA), Ok(TARGET_B), "{mode:?}: 03:02.0 still needs it");
        core.detach(&p, &iso, &mut two, f.right).unwrap();
        assert!(reach(&model, &alias, IOVA).is_err(), "{mode:?}: the last user took the alias");
        core.detach(&p, &iso, &mut two, f.lone).unwrap();
        assert!(model.errors().is_empty(), "{:?}", model.errors());
    }
}
