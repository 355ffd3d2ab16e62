//! The domain core over an SMMUv3 driven against the `sim::smmuv3` model: what a request of an
//! endpoint reaches after each attach, detach and replace is read from the model's own walk,
//! not from the driver's bookkeeping (as `iommu::domain::tests` does for VT-d).

use crate::addr::{Iova, Pasid, PhysAddr};
use crate::error::Error;
use crate::iommu::domain::{DomainKind, Endpoint, Iommu, Isolation, Stage};
use crate::iommu::pagetable::{Arm64Stage1, Arm64Stage2, Perms};
use crate::pci::groups::Groups;
use crate::pci::groups::testutil::{ACS_ON, bdf, conventional, endpoint, pcie_to_pci, root_port};
use crate::pci::topology::{FunctionIndex, Topology};
use crate::sim::smmuv3::regs::event as ev;
use crate::sim::smmuv3::{self, Access, Command as Logged, Config, SimPlatform, Smmu, Termination};
use crate::smmuv3::unit::{Unit, UnitConfig};

use super::{NO_TAG, SidMap, SmmuBackend, VMID_TAG};

const IOVA: u64 = 0x40_0000;
const TARGET_A: u64 = 0x8000_0000;
const TARGET_B: u64 = 0x9000_0000;

/// 00:01.0 root port (ACS) -> 01:00.0 alone; 00:02.0 root port (ACS) -> 02:00.0 PCIe-to-PCI
/// bridge -> 03:01.0 and 03:02.0, one group with the bridge (the bridge takes their requester
/// IDs: StreamID 0x300 under the identity map).
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

type Core = Iommu<SmmuBackend<'static>, 8, 16>;

fn setup(config: Config) -> (SimPlatform, Smmu, Core) {
    let (p, model) = smmuv3::pair(config);
    let unit = Unit::new(&p, smmuv3::DEFAULT_BASE, UnitConfig::default()).unwrap();
    (p, model, Iommu::new(SmmuBackend::new(unit, SidMap::Identity), 1))
}

fn sid(e: &Endpoint) -> u32 {
    u32::from(e.bdf.routing_id().0)
}

/// Where the model sends a write of `e` to `iova`: the output address, or the event code
/// (0 for a silent abort).
fn reach(model: &Smmu, e: &Endpoint, iova: u64) -> Result<u64, u8> {
    let ssid = e.pasid.map(Pasid::get);
    model.translate(sid(e), ssid, iova, Access::WRITE).map(|t| t.phys).map_err(|t| match t {
        Termination::Fault(f) => f.code,
        _ => 0,
    })
}

const ABORT: Result<u64, u8> = Err(0);

fn s1() -> Arm64Stage1 {
    Arm64Stage1::new(0)
}

fn s2() -> Arm64Stage2 {
    Arm64Stage2::new(0)
}

fn no_config_errors(model: &Smmu) {
    assert!(model.errors().is_empty(), "{:?}", model.errors());
    let bad: Vec<_> = model
        .events()
        .iter()
        .filter(|e| matches!(e.code, ev::C_BAD_STE | ev::C_BAD_STREAMID | ev::C_BAD_CD))
        .copied()
        .collect();
    assert!(bad.is_empty(), "configuration errors: {bad:?}");
}

#[test]
fn table_layouts_follow_the_units_idrs() {
    for (config, oas) in [(Config::qemu_virt(), 44), (Config::full(), 48)] {
        let (_p, _model, core) = setup(config);
        let b = core.backend();
        let l1 = crate::iommu::domain::Backend::table_layout(b, Stage::First).unwrap();
        assert_eq!((l1.levels, l1.iova_bits, l1.phys_bits), (4, 48, oas));
        let l2 = crate::iommu::domain::Backend::table_layout(b, Stage::Second).unwrap();
        assert_eq!((l2.levels, l2.iova_bits, l2.phys_bits), (4, oas, oas), "S2T0SZ capped to OAS");
    }
    // Without stage 2 (IDR0.S2P clear) there is no stage-2 domain.
    let idr0 = Config::qemu_virt().idr[0] & !1;
    let (p, _model, mut core) = setup(Config::qemu_virt().with_idr(0, idr0));
    assert!(matches!(core.new_domain(&p, s2()), Err(Error::Unsupported { .. })));
    core.new_domain(&p, s1()).unwrap();
}

#[test]
fn attach_map_flush_translates_and_unmap_flush_faults_at_both_stages() {
    for stage2 in [false, true] {
        let (p, model, mut core) = setup(Config::qemu_virt());
        let f = fixture();
        let iso = f.iso();
        if stage2 {
            let mut d = core.new_domain(&p, s2()).unwrap();
            assert_eq!(d.kind(), DomainKind::Translated(Stage::Second));
            assert_eq!(d.tag() & VMID_TAG, VMID_TAG);
            core.attach(&p, &iso, &mut d, f.lone).unwrap();
            let pending = d.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
            core.flush(&p, &d, pending).unwrap();
            let t = model.translate(sid(&f.lone), None, IOVA, Access::READ).unwrap();
            assert_eq!(t.vmid, Some(u16::try_from(d.tag() & !VMID_TAG).unwrap()));
            assert_eq!(reach(&model, &f.lone, IOVA + 0x10), Ok(TARGET_A + 0x10));
            let pending = d.unmap(&p, Iova(IOVA), 0x1000).unwrap();
            core.flush(&p, &d, pending).unwrap();
        } else {
            let mut d = core.new_domain(&p, s1()).unwrap();
            core.attach(&p, &iso, &mut d, f.lone).unwrap();
            let pending = d.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
            core.flush(&p, &d, pending).unwrap();
            let t = model.translate(sid(&f.lone), None, IOVA, Access::READ).unwrap();
            assert_eq!(t.asid, u16::try_from(d.tag()).ok());
            assert_eq!(reach(&model, &f.lone, IOVA + 0x10), Ok(TARGET_A + 0x10));
            let pending = d.unmap(&p, Iova(IOVA), 0x1000).unwrap();
            core.flush(&p, &d, pending).unwrap();
        }
        // Cached before the unmap: only the flush's TLBI makes it fault.
        assert_eq!(reach(&model, &f.lone, IOVA), Err(ev::F_TRANSLATION), "stage2={stage2}");
        no_config_errors(&model);
    }
}

#[test]
fn a_group_shares_one_domain_and_separate_groups_reach_only_their_own() {
    let (p, model, mut core) = setup(Config::qemu_virt());
    let f = fixture();
    let iso = f.iso();
    let mut a = core.new_domain(&p, s2()).unwrap();
    let mut b = core.new_domain(&p, s1()).unwrap();
    let pending = a.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &a, pending).unwrap();
    let pending = b.map(&p, Iova(IOVA), PhysAddr(TARGET_B), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &b, pending).unwrap();
    core.attach(&p, &iso, &mut a, f.left).unwrap();
    let split = core.attach(&p, &iso, &mut b, f.right).unwrap_err();
    assert!(
        matches!(split, Error::GroupSplit { function, member, .. } if function == f.right.bdf && member == f.left.bdf),
        "{split:?}"
    );
    assert_eq!(core.domain_of(&f.right), None);
    assert_eq!(reach(&model, &f.right, IOVA), Err(ev::C_BAD_STE), "the refusal wrote nothing");
    model.take_events();
    core.attach(&p, &iso, &mut a, f.right).unwrap();
    core.attach(&p, &iso, &mut b, f.lone).unwrap();
    // The PCIe-to-PCI bridge's requester ID (secondary:00.0) is the group's alias StreamID.
    let alias = Endpoint::function(f.left.function, bdf(3, 0, 0));
    assert_eq!(reach(&model, &alias, IOVA), Ok(TARGET_A));
    assert_eq!(reach(&model, &f.left, IOVA), Ok(TARGET_A));
    assert_eq!(reach(&model, &f.right, IOVA), Ok(TARGET_A));
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_B));
    assert_eq!((a.users(), b.users()), (2, 1));

    // The shared alias stays while one member needs it; detached StreamIDs abort silently.
    core.detach(&p, &iso, &mut a, f.left).unwrap();
    assert_eq!(reach(&model, &f.left, IOVA), ABORT);
    assert_eq!(reach(&model, &alias, IOVA), Ok(TARGET_A), "03:02.0 still needs 03:00.0");
    core.detach(&p, &iso, &mut a, f.right).unwrap();
    assert_eq!(reach(&model, &alias, IOVA), ABORT);
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_B), "the other group is untouched");
    no_config_errors(&model);
}

#[test]
fn replace_moves_the_whole_group_and_destroy_releases_the_tag() {
    let (p, model, mut core) = setup(Config::qemu_virt());
    let f = fixture();
    let iso = f.iso();
    let mut a = core.new_domain(&p, s1()).unwrap();
    let mut b = core.new_domain(&p, s2()).unwrap();
    let pending = a.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &a, pending).unwrap();
    let pending = b.map(&p, Iova(IOVA), PhysAddr(TARGET_B), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &b, pending).unwrap();
    core.attach(&p, &iso, &mut a, f.left).unwrap();
    core.attach(&p, &iso, &mut a, f.right).unwrap();
    let alias = Endpoint::function(f.left.function, bdf(3, 0, 0));
    // Warm the model's TLB and STE cache with the old translation.
    assert_eq!(reach(&model, &alias, IOVA), Ok(TARGET_A));
    assert_eq!(reach(&model, &f.left, IOVA), Ok(TARGET_A));

    let e = core.attach(&p, &iso, &mut b, f.left).unwrap_err();
    assert!(matches!(e, Error::Attachment { state: "attached to another domain", .. }), "{e:?}");
    model.take_commands();
    core.replace(&p, &iso, &mut a, &mut b, f.left).unwrap();
    assert_eq!(core.domain_of(&f.right), Some(b.id()), "the group moved together");
    for e in [f.left, f.right, alias] {
        assert_eq!(reach(&model, &e, IOVA), Ok(TARGET_B));
    }
    assert_eq!((a.users(), b.users()), (0, 2));
    // Stage 1 to stage 2 changes more than one STE word: through abort, the old ASID's TLB
    // entries dropped, for each of the three StreamIDs.
    let log = model.take_commands();
    let a_asid = u16::try_from(a.tag()).unwrap();
    let tlbis = log
        .iter()
        .filter(|c| matches!(c.command, Ok(Logged::TlbiNhAsid { asid, .. }) if asid == a_asid))
        .count();
    assert_eq!(tlbis, 3, "{log:?}");

    let a_tag = a.tag();
    core.destroy_domain(&p, a).unwrap();
    let again = core.new_domain(&p, s1()).unwrap();
    assert_eq!(again.tag(), a_tag, "the ASID was released");
    let (b, e) = core.destroy_domain(&p, b).unwrap_err();
    assert!(matches!(e, Error::DomainInUse { users: 2, .. }), "{e:?}");
    drop(b);
    no_config_errors(&model);
}

#[test]
fn destroy_invalidates_the_whole_tag_before_freeing() {
    let (p, model, mut core) = setup(Config::qemu_virt());
    let mut d = core.new_domain(&p, s2()).unwrap();
    let pending = d.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &d, pending).unwrap();
    let vmid = u16::try_from(d.tag() & !VMID_TAG).unwrap();
    model.take_commands();
    core.destroy_domain(&p, d).unwrap();
    let log = model.take_commands();
    assert!(matches!(log[0].command, Ok(Logged::TlbiS12Vmall { vmid: v }) if v == vmid), "{log:?}");
    assert!(matches!(log[1].command, Ok(Logged::Sync { .. })));
    let again = core.new_domain(&p, s2()).unwrap();
    assert_eq!(again.tag(), VMID_TAG | u32::from(vmid), "the VMID was released");
}

#[test]
fn detach_blocks_with_abort_and_is_checked_against_the_domain() {
    let (p, model, mut core) = setup(Config::qemu_virt());
    let f = fixture();
    let iso = f.iso();
    let mut a = core.new_domain(&p, s1()).unwrap();
    let mut other = core.new_domain(&p, s1()).unwrap();
    let pending = a.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &a, pending).unwrap();
    core.attach(&p, &iso, &mut a, f.lone).unwrap();
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_A));
    let e = core.detach(&p, &iso, &mut other, f.lone).unwrap_err();
    assert!(matches!(e, Error::Attachment { state: "not attached to it", .. }), "{e:?}");
    core.detach(&p, &iso, &mut a, f.lone).unwrap();
    assert_eq!(reach(&model, &f.lone, IOVA), ABORT, "abort STE: blocked, no event");
    assert_eq!(a.users(), 0);
    core.attach(&p, &iso, &mut other, f.lone).unwrap();
    no_config_errors(&model);
}

#[test]
fn identity_bypasses_and_blocking_aborts() {
    let (p, model, mut core) = setup(Config::qemu_virt());
    let f = fixture();
    let iso = f.iso();
    let mut identity = core.new_identity_domain::<Arm64Stage1>().unwrap();
    let mut blocking = core.new_blocking_domain::<Arm64Stage1>().unwrap();
    assert_eq!((identity.tag(), blocking.tag()), (NO_TAG, NO_TAG));
    core.attach(&p, &iso, &mut identity, f.lone).unwrap();
    assert_eq!(reach(&model, &f.lone, 0x1234_5000), Ok(0x1234_5000), "bypass");
    let e = identity.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    core.replace(&p, &iso, &mut identity, &mut blocking, f.lone).unwrap();
    assert_eq!(reach(&model, &f.lone, 0x1234_5000), ABORT, "the cached bypass STE is gone");
    core.destroy_domain(&p, identity).unwrap();
    no_config_errors(&model);
}

#[test]
fn pasid_attachments_are_substreams_of_a_lone_function() {
    let (p, model, mut core) = setup(Config::full());
    let f = fixture();
    let iso = f.iso();
    let mut rid_domain = core.new_domain(&p, s1()).unwrap();
    let mut pasid_domain = core.new_domain(&p, s1()).unwrap();
    let pending = rid_domain.map(&p, Iova(IOVA), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &rid_domain, pending).unwrap();
    let pending = pasid_domain.map(&p, Iova(IOVA), PhysAddr(TARGET_B), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &pasid_domain, pending).unwrap();
    let pasid = Pasid::new(5).unwrap();
    let shared = Endpoint::with_pasid(f.left.function, f.left.bdf, pasid);
    let e = core.attach(&p, &iso, &mut pasid_domain, shared).unwrap_err();
    assert!(matches!(e, Error::SharedGroup { members: 3, .. }), "{e:?}");

    let with_pasid = Endpoint::with_pasid(f.lone.function, f.lone.bdf, pasid);
    // A SubstreamID's CD hangs off the StreamID's stage-1 STE: the function first.
    let e = core.attach(&p, &iso, &mut pasid_domain, with_pasid).unwrap_err();
    assert!(matches!(e, Error::InvalidField { .. }), "{e:?}");
    assert_eq!(core.domain_of(&with_pasid), None);
    core.attach(&p, &iso, &mut rid_domain, f.lone).unwrap();
    core.attach(&p, &iso, &mut pasid_domain, with_pasid).unwrap();
    assert_eq!(reach(&model, &with_pasid, IOVA), Ok(TARGET_B));
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_A));
    // A stage-2 domain cannot serve a PASID.
    let mut s2d = core.new_domain(&p, s2()).unwrap();
    let other = Endpoint::with_pasid(f.lone.function, f.lone.bdf, Pasid::new(6).unwrap());
    let e = core.attach(&p, &iso, &mut s2d, other).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");

    // Unmap in the PASID's domain: its ASID's TLB entries go.
    let pending = pasid_domain.unmap(&p, Iova(IOVA), 0x1000).unwrap();
    core.flush(&p, &pasid_domain, pending).unwrap();
    assert_eq!(reach(&model, &with_pasid, IOVA), Err(ev::F_TRANSLATION));
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_A));

    // Detaching the function while the PASID stays: the abort STE blocks both; moving the
    // function to a stage-1 domain again brings the substream back.
    core.detach(&p, &iso, &mut rid_domain, f.lone).unwrap();
    assert_eq!(reach(&model, &f.lone, IOVA), ABORT);
    assert_eq!(reach(&model, &with_pasid, IOVA + 0x1000), ABORT);
    core.attach(&p, &iso, &mut rid_domain, f.lone).unwrap();
    let pending = pasid_domain.map(&p, Iova(IOVA), PhysAddr(TARGET_B), 0x1000, Perms::RW).unwrap();
    core.flush(&p, &pasid_domain, pending).unwrap();
    assert_eq!(reach(&model, &with_pasid, IOVA), Ok(TARGET_B));
    core.detach(&p, &iso, &mut pasid_domain, with_pasid).unwrap();
    assert_eq!(reach(&model, &with_pasid, IOVA), Err(ev::C_BAD_CD), "the CD is invalid");
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_A));
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn a_pasid_detached_while_its_function_is_blocked_stays_detached() {
    let (p, model, mut core) = setup(Config::full());
    let f = fixture();
    let iso = f.iso();
    let mut rid_domain = core.new_domain(&p, s1()).unwrap();
    let mut pasid_domain = core.new_domain(&p, s1()).unwrap();
    for (d, target) in [(&mut rid_domain, TARGET_A), (&mut pasid_domain, TARGET_B)] {
        let pending = d.map(&p, Iova(IOVA), PhysAddr(target), 0x1000, Perms::RW).unwrap();
        core.flush(&p, d, pending).unwrap();
    }
    let with_pasid = Endpoint::with_pasid(f.lone.function, f.lone.bdf, Pasid::new(5).unwrap());
    core.attach(&p, &iso, &mut rid_domain, f.lone).unwrap();
    core.attach(&p, &iso, &mut pasid_domain, with_pasid).unwrap();
    assert_eq!(reach(&model, &with_pasid, IOVA), Ok(TARGET_B));
    // The function first, then its PASID: the second detach must still clear the CD.
    core.detach(&p, &iso, &mut rid_domain, f.lone).unwrap();
    core.detach(&p, &iso, &mut pasid_domain, with_pasid).unwrap();
    assert_eq!(pasid_domain.unconfirmed_detaches(), 0);
    // Back on stage 1, the function's own requests translate and the PASID's do not.
    core.attach(&p, &iso, &mut rid_domain, f.lone).unwrap();
    assert_eq!(reach(&model, &f.lone, IOVA), Ok(TARGET_A));
    assert_eq!(reach(&model, &with_pasid, IOVA), Err(ev::C_BAD_CD), "the CD stayed cleared");
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn pasids_need_substreams() {
    let (p, _model, mut core) = setup(Config::qemu_virt());
    let f = fixture();
    let iso = f.iso();
    let mut d = core.new_domain(&p, s1()).unwrap();
    core.attach(&p, &iso, &mut d, f.lone).unwrap();
    let with_pasid = Endpoint::with_pasid(f.lone.function, f.lone.bdf, Pasid::new(1).unwrap());
    let e = core.attach(&p, &iso, &mut d, with_pasid).unwrap_err();
    assert!(matches!(e, Error::Unsupported { what, .. } if what.contains("SSIDSIZE")), "{e:?}");
}
