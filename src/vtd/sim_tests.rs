//! The queue and the context/PASID tables against the VT-d model in `sim::vtd`, which follows the
//! specification independently of the driver: translations through the driver's tables equal
//! the page table's mapping, a changed entry stays invisible until its flush, and the queue's
//! error handling recovers from what the model injects.

use core::time::Duration;

use crate::addr::{Bdf, Iova, Pasid, PhysAddr, RequesterId};
use crate::error::Error;
use crate::iommu::pagetable::{IoPageTable, PageSizes, Perms, VtdSecondStage, X86FirstStage};
use crate::sim::vtd::{self, Config, RemappingUnit, SimPlatform, TranslationKind};

use super::descriptor::{self as desc, Descriptor, Drain};
use super::qi::{DEFAULT_ENTRIES, FlushScope};
use super::{PasidTranslation, TableMode, Unit};

const EDU: Bdf = Bdf { segment: 0, bus: 0, devfn: 2 << 3 };
const IOVA: u64 = 0x40_0000;
const TARGET: u64 = 0x8000_0000;

fn setup(config: Config, mode: TableMode) -> (SimPlatform, RemappingUnit, Unit) {
    let (p, model) = vtd::pair(config);
    let mut unit = Unit::new(&p, vtd::DEFAULT_BASE, model.window_size(), mode).unwrap();
    unit.enable_queued_invalidation(&p, DEFAULT_ENTRIES).unwrap();
    (p, model, unit)
}

fn second_stage(p: &SimPlatform, unit: &mut Unit, did: u16) -> IoPageTable<VtdSecondStage> {
    let mut t = IoPageTable::new(
        p,
        VtdSecondStage::new(),
        4,
        PageSizes::from_vtd_sllps(unit.capability().sllps()),
    )
    .unwrap();
    t.set_domain(u32::from(did));
    let pending = t.map(p, Iova(IOVA), PhysAddr(TARGET), 0x20_0000 + 0x3000, Perms::RW).unwrap();
    unit.flush(p, pending, FlushScope::Iotlb).unwrap();
    t
}

fn rid() -> RequesterId {
    EDU.routing_id()
}

#[test]
fn legacy_translation_matches_the_page_table_and_detach_needs_the_flush() {
    let (p, model, mut unit) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let did = unit.allocate_domain_id().unwrap();
    let table = second_stage(&p, &mut unit, did);
    let owed = unit.attach_legacy(&p, EDU, did, table.root(), 4).unwrap();
    assert!(owed.is_empty(), "CM=0: a new entry owes nothing");
    unit.set_translation(&p, true).unwrap();
    for offset in [0u64, 0x1234, 0x1f_f008, 0x20_2ff0] {
        let t = model.translate(rid(), None, IOVA + offset, true).unwrap();
        let (phys, perms, _) = table.translate(Iova(IOVA + offset)).unwrap();
        assert_eq!(t.phys, phys.0, "IOVA {:#x}", IOVA + offset);
        assert_eq!((t.kind, t.did), (TranslationKind::SecondStage, Some(did)));
        assert!(perms.contains(Perms::RW));
    }

    // Detach: the unit keeps the cached context entry (and IOTLB) until the flush.
    let owed = unit.detach(&p, EDU).unwrap();
    assert_eq!(owed.descriptors().len(), 2);
    assert!(model.translate(rid(), None, IOVA, false).is_ok(), "stale until flushed");
    unit.flush_tables(&p, owed).unwrap();
    let fault = model.translate(rid(), None, IOVA, false).unwrap_err();
    assert_eq!(fault.reason, 0x02, "context entry not present");
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn replacing_a_present_context_entry_invalidates_before_writing() {
    let (p, model, mut unit) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let a = unit.allocate_domain_id().unwrap();
    let b = unit.allocate_domain_id().unwrap();
    let table = second_stage(&p, &mut unit, a);
    let owed = unit.attach_legacy(&p, EDU, a, table.root(), 4).unwrap();
    unit.flush_tables(&p, owed).unwrap();
    unit.set_translation(&p, true).unwrap();
    assert_eq!(model.translate(rid(), None, IOVA, true).unwrap().did, Some(a));
    model.take_descriptors();
    // Pass-through in domain b: the old entry is cleared and flushed inside the call.
    let owed = unit.attach_legacy_pass_through(&p, EDU, b).unwrap();
    unit.flush_tables(&p, owed).unwrap();
    let log = model.take_descriptors();
    assert_eq!(log.len(), 3, "context-cache device, IOTLB domain, wait: {log:?}");
    let t = model.translate(rid(), None, IOVA, true).unwrap();
    assert_eq!((t.kind, t.phys), (TranslationKind::PassThrough, IOVA));
    // Unknown or unallocated domains are refused.
    assert!(matches!(
        unit.attach_legacy(&p, EDU, 99, table.root(), 4),
        Err(Error::InvalidDomainId { did: 99, .. })
    ));
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn an_unmap_is_seen_only_after_the_flush() {
    let (p, model, mut unit) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let did = unit.allocate_domain_id().unwrap();
    let mut table = second_stage(&p, &mut unit, did);
    let owed = unit.attach_legacy(&p, EDU, did, table.root(), 4).unwrap();
    unit.flush_tables(&p, owed).unwrap();
    unit.set_translation(&p, true).unwrap();
    let last = IOVA + 0x20_2000;
    assert_eq!(model.translate(rid(), None, last, false).unwrap().phys, TARGET + 0x20_2000);
    let pending = table.unmap(&p, Iova(last), 0x1000).unwrap();
    assert!(model.translate(rid(), None, last, false).unwrap().cached, "IOTLB still holds it");
    unit.flush(&p, pending, FlushScope::Iotlb).unwrap();
    assert!(model.translate(rid(), None, last, false).is_err());
    assert_eq!(model.translate(rid(), None, IOVA, false).unwrap().phys, TARGET);
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn scalable_second_stage_and_pass_through_through_rid_pasid() {
    let (p, model, mut unit) = setup(Config::qemu_scalable_second_stage(), TableMode::Scalable);
    let did = unit.allocate_domain_id().unwrap();
    let table = second_stage(&p, &mut unit, did);
    let pasid0 = Pasid::new(0).unwrap();
    let owed = unit
        .attach_pasid(
            &p,
            EDU,
            pasid0,
            did,
            PasidTranslation::SecondStage { root: table.root(), levels: 4 },
        )
        .unwrap();
    unit.flush_tables(&p, owed).unwrap();
    unit.set_translation(&p, true).unwrap();
    for offset in [0u64, 0x1_0010, 0x20_2abc] {
        let t = model.translate(rid(), None, IOVA + offset, true).unwrap();
        assert_eq!(t.phys, table.translate(Iova(IOVA + offset)).unwrap().0.0);
        assert_eq!((t.kind, t.did), (TranslationKind::SecondStage, Some(did)));
    }
    // Replace the RID_PASID entry with pass-through in another domain.
    let pt = unit.allocate_domain_id().unwrap();
    let owed = unit.attach_pasid(&p, EDU, pasid0, pt, PasidTranslation::PassThrough).unwrap();
    unit.flush_tables(&p, owed).unwrap();
    let t = model.translate(rid(), None, IOVA, true).unwrap();
    assert_eq!((t.kind, t.phys), (TranslationKind::PassThrough, IOVA));
    // First-stage is refused on a unit that only offers second-stage.
    let e = unit.attach_pasid(
        &p,
        EDU,
        pasid0,
        pt,
        PasidTranslation::FirstStage { root: table.root(), levels: 4 },
    );
    assert!(matches!(e, Err(Error::Unsupported { .. })));

    // Detaching the PASID entry: stale until flushed.
    let owed = unit.detach_pasid(&p, EDU, pasid0).unwrap();
    assert!(model.translate(rid(), None, IOVA, true).is_ok());
    unit.flush_tables(&p, owed).unwrap();
    assert!(model.translate(rid(), None, IOVA, true).is_err());
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn scalable_first_stage_matches_the_page_table() {
    let (p, model, mut unit) = setup(Config::qemu_scalable_first_stage(), TableMode::Scalable);
    let did = unit.allocate_domain_id().unwrap();
    let mut table = IoPageTable::new(
        &p,
        X86FirstStage::new(),
        4,
        PageSizes::from_vtd_first_stage(unit.capability().fs1gp()),
    )
    .unwrap();
    table.set_domain(u32::from(did));
    let pasid0 = Pasid::new(0).unwrap();
    let pending = table.map(&p, Iova(IOVA), PhysAddr(TARGET), 0x20_0000, Perms::RW).unwrap();
    unit.flush(&p, pending, FlushScope::PasidIotlb(pasid0)).unwrap();
    let owed = unit
        .attach_pasid(
            &p,
            EDU,
            pasid0,
            did,
            PasidTranslation::FirstStage { root: table.root(), levels: 4 },
        )
        .unwrap();
    unit.flush_tables(&p, owed).unwrap();
    unit.set_translation(&p, true).unwrap();
    let t = model.translate(rid(), None, IOVA + 0x5678, true).unwrap();
    assert_eq!(t.phys, table.translate(Iova(IOVA + 0x5678)).unwrap().0.0);
    assert_eq!(t.kind, TranslationKind::FirstStage);
    // An unmap flushed with the PASID-based IOTLB invalidation.
    let pending = table.unmap(&p, Iova(IOVA), 0x20_0000).unwrap();
    assert!(model.translate(rid(), None, IOVA + 0x5678, true).is_ok(), "stale until flushed");
    unit.flush(&p, pending, FlushScope::PasidIotlb(pasid0)).unwrap();
    assert!(model.translate(rid(), None, IOVA + 0x5678, true).is_err());
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn the_model_rejects_a_descriptor_and_the_queue_recovers() {
    let (p, model, mut unit) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let q = unit.queue().unwrap();
    // A context-cache descriptor with a reserved bit set in its upper quadword.
    let bad = Descriptor::from_raw([0x11, 1 << 63, 0, 0]);
    let e =
        q.submit(&p, &[desc::iec_global(), bad, desc::iotlb_global(Drain::default())]).unwrap_err();
    // Slots 0-2 hold the enable's batch.
    assert_eq!(e, Error::InvalidDescriptor { slot: 4, position: 1, kind: 1, info: 3 });
    model.step();
    assert_eq!(model.fsts() & 0x10, 0, "IQE cleared");
    q.submit(&p, &[desc::iotlb_global(Drain::default())]).unwrap();
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn a_stalled_wait_times_out_within_its_bound_and_the_queue_is_usable_after() {
    let (p, model, mut unit) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let q = unit.queue().unwrap();
    q.set_timeout(Duration::from_millis(2));
    model.stall_next_wait();
    let e = q.submit(&p, &[desc::iec_global()]).unwrap_err();
    assert_eq!(e, Error::Timeout { what: "VT-d invalidation wait status", waited_us: 2000 });
    assert!(model.is_stalled());
    model.release_stalled_wait();
    q.submit(&p, &[desc::iotlb_global(Drain::default())]).unwrap();
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn ite_and_ice_from_the_model_are_reported_and_cleared() {
    let ecap_dt = Config::qemu_legacy().ecap | 1 << 2;
    let (p, model, mut unit) = setup(Config::qemu_legacy().with_ecap(ecap_dt), TableMode::Legacy);
    let q = unit.queue().unwrap();
    let sid = RequesterId(0x0010);
    // ITESID is IQERCD bits 47:32 and ICESID 63:48 (Linux DMAR_IQER_REG_ITESID/ICESID,
    // VT-d §11.4.9.9), in the model and in the driver.
    model.inject_ite(0x0010);
    let e = q.device_tlb(&p, sid, sid, 0, 0, 52).unwrap_err();
    assert!(matches!(e, Error::DeviceTlbInvalidation { what: "ITE", sid: 0x0010 }), "{e:?}");
    model.inject_ice(0x0012);
    let e = q.device_tlb(&p, sid, sid, 0, 0, 52).unwrap_err();
    assert!(matches!(e, Error::DeviceTlbInvalidation { what: "ICE", sid: 0x0012 }), "{e:?}");
    model.step();
    assert_eq!(model.fsts() & 0x60, 0, "ITE and ICE cleared");
    q.device_tlb(&p, sid, sid, 0, 0x1000, 0).unwrap();
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn enabling_the_queue_invalidates_globally_with_one_wait() {
    let (_p, model, _unit) = setup(Config::qemu_scalable_second_stage(), TableMode::Scalable);
    let log = model.descriptors();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn caching_mode_makes_a_new_entry_owe_invalidations() {
    let cm = Config::qemu_legacy().cap | 1 << 7;
    let (p, model, mut unit) = setup(Config::qemu_legacy().with_cap(cm), TableMode::Legacy);
    let did = unit.allocate_domain_id().unwrap();
    let table = second_stage(&p, &mut unit, did);
    let owed = unit.attach_legacy(&p, EDU, did, table.root(), 4).unwrap();
    // Context-cache device-selective for DID 0, then domain-selective IOTLB (Linux does the same).
    let words: std::vec::Vec<u64> = owed.descriptors().iter().map(|d| d.words()[0]).collect();
    assert_eq!(
        words,
        [0x1 | 3 << 4 | u64::from(rid().0) << 32, 0x2 | 2 << 4 | 3 << 6 | u64::from(did) << 16]
    );
    unit.flush_tables(&p, owed).unwrap();
    unit.set_translation(&p, true).unwrap();
    assert_eq!(model.translate(rid(), None, IOVA, true).unwrap().phys, TARGET);
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn a_flush_for_a_domain_the_unit_did_not_allocate_is_refused() {
    let (p, _model, mut unit) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let mut t = IoPageTable::new(
        &p,
        VtdSecondStage::new(),
        4,
        PageSizes::from_vtd_sllps(unit.capability().sllps()),
    )
    .unwrap();
    // set_domain forgotten: the pending value names DID 0.
    let pending = t.map(&p, Iova(IOVA), PhysAddr(TARGET), 0x1000, Perms::RW).unwrap();
    assert!(matches!(
        unit.flush(&p, pending, FlushScope::Iotlb),
        Err(Error::InvalidDomainId { did: 0, .. })
    ));
}

#[test]
fn pasid_directory_and_tables_are_indexed_by_pasid_bits() {
    let (p, _model, mut unit) = setup(Config::qemu_scalable_second_stage(), TableMode::Scalable);
    let did = unit.allocate_domain_id().unwrap();
    let mem = p.memory().clone();
    for pasid in [0u32, 100, 0x7fff] {
        let owed = unit
            .attach_pasid(&p, EDU, Pasid::new(pasid).unwrap(), did, PasidTranslation::PassThrough)
            .unwrap();
        unit.flush_tables(&p, owed).unwrap();
    }
    // Independently of the driver: context entry -> directory (8-byte entries, pasid[19:6]) ->
    // PASID table (64-byte entries, pasid[5:0]) (§9.4-§9.6).
    let ce = unit.context_tables().entry(rid());
    assert_eq!(ce[0] & 0xfff, 2 << 9 | 1, "P and PDTS 2 (512 directory entries)");
    assert_eq!(ce[1], 0, "RID_PASID 0");
    let dir = ce[0] & !0xfff;
    let mut tables = std::vec::Vec::new();
    for (pasid, dir_index) in [(0u32, 0u64), (100, 1), (0x7fff, 511)] {
        let de = mem.read_u64(dir + 8 * dir_index).unwrap();
        assert_eq!(de & 0xfff, 1, "PASID {pasid}: directory entry present");
        let pe = mem.read_u64((de & !0xfff) + 64 * u64::from(pasid & 0x3f)).unwrap();
        assert_eq!(pe & 0x1ff, 4 << 6 | 2 << 2 | 1, "PASID {pasid}: PGTT 4, AW 2, P");
        assert_eq!(
            mem.read_u64((de & !0xfff) + 64 * u64::from(pasid & 0x3f) + 8),
            Some(u64::from(did))
        );
        tables.push(de & !0xfff);
    }
    tables.dedup();
    assert_eq!(tables.len(), 3, "one PASID table per 64 PASIDs, allocated on first use");
    assert_eq!(mem.read_u64(dir + 8 * 2), Some(0), "unused directory entries stay empty");
    // Beyond the one-page directory.
    let e =
        unit.attach_pasid(&p, EDU, Pasid::new(0x8000).unwrap(), did, PasidTranslation::PassThrough);
    assert!(matches!(e, Err(Error::InvalidField { .. })));
}

#[test]
fn nested_entry_translates_through_both_of_the_drivers_tables() {
    // Scalable with FLTS, SLTS and NEST (ECAP bits 47, 46, 26), which QEMU 10.0.2 lacks.
    let ecap = 0x0000_8900_00f0_0f4a | 1 << 46 | 1 << 26;
    let (p, model, mut unit) =
        setup(Config::qemu_scalable_first_stage().with_ecap(ecap), TableMode::Scalable);
    let did = unit.allocate_domain_id().unwrap();
    // The guest's first stage maps IOVA to guest-physical 0x4000_0000; its tables live in the
    // model's memory, which the second stage maps 1:1 (guest-physical = host-physical there).
    const GPA: u64 = 0x4000_0000;
    let mut first = IoPageTable::new(&p, X86FirstStage::new(), 4, PageSizes::SIZE_4K).unwrap();
    first.set_domain(u32::from(did));
    let pending = first.map(&p, Iova(IOVA), PhysAddr(GPA), 0x1000, Perms::RW).unwrap();
    unit.flush(&p, pending, FlushScope::PasidIotlb(Pasid::new(0).unwrap())).unwrap();
    let mut second = IoPageTable::new(&p, VtdSecondStage::new(), 4, PageSizes::ALL).unwrap();
    second.set_domain(u32::from(did));
    let ram = crate::sim::vtd::Memory::DEFAULT_BASE;
    for (iova, phys) in [(ram, ram), (GPA, TARGET)] {
        let pending = second.map(&p, Iova(iova), PhysAddr(phys), 0x400_0000, Perms::RW).unwrap();
        unit.flush(&p, pending, FlushScope::Iotlb).unwrap();
    }
    let nested = PasidTranslation::Nested {
        first_root: first.root().0,
        first_levels: 4,
        second_root: second.root(),
        second_levels: 4,
    };
    let owed = unit.attach_pasid(&p, EDU, Pasid::new(0).unwrap(), did, nested).unwrap();
    unit.flush_tables(&p, owed).unwrap();
    unit.set_translation(&p, true).unwrap();
    let t = model.translate(rid(), None, IOVA + 0x10, true).unwrap();
    assert_eq!((t.phys, t.kind, t.did), (TARGET + 0x10, TranslationKind::Nested, Some(did)));
    assert!(model.errors().is_empty(), "{:?}", model.errors());

    // Without NEST the entry is refused before anything is written.
    let (p, _model, mut unit) = setup(Config::qemu_scalable_first_stage(), TableMode::Scalable);
    let did = unit.allocate_domain_id().unwrap();
    let e = unit.attach_pasid(&p, EDU, Pasid::new(0).unwrap(), did, nested).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
}
