//! Fault injection through the `sim` models (issue 7): hardware that stops answering or lies,
//! met by the drivers. Each case must end in a typed error within its bound, with no panic, no
//! hang, and nothing lost: no table page released while a walk cache may hold it, no
//! invalidation skipped, the queue or the enumeration usable afterwards.

use core::time::Duration;
use std::vec::Vec;

use crate::addr::{Bdf, Iova, Pasid, PhysAddr, RequesterId};
use crate::error::Error;
use crate::hal::testing::TestClock;
use crate::iommu::pagetable::{IoPageTable, PageSizes, Perms, VtdSecondStage, X86FirstStage};
use crate::pci::bars::Window;
use crate::pci::enumerate::{Enumeration, Options, RootBus, Warning, Windows, enumerate};
use crate::sim::pci::Topology as Sim;
use crate::sim::vtd::{self, Config, RemappingUnit, SimPlatform, regs::reason};
use crate::vtd::descriptor::{self as desc, Drain};
use crate::vtd::qi::{DEFAULT_ENTRIES, FlushScope};
use crate::vtd::{PasidTranslation, TableMode, Unit};

const EDU: Bdf = Bdf { segment: 0, bus: 0, devfn: 2 << 3 };
const IOVA: u64 = 0x40_0000;
const TARGET: u64 = 0x8000_0000;
/// The queue timeout these tests set: 2 ms, 200 polls of the sim platform's 10 µs clock.
const TIMEOUT: Duration = Duration::from_millis(2);
/// Polls a 2 ms bounded wait may take on the sim clock (each poll reads the clock at least
/// once, 10 µs a read), with slack for the reads around it.
const MAX_POLLS: u64 = 2_000 / 10 + 10;

fn setup(config: Config, mode: TableMode) -> (SimPlatform, RemappingUnit, Unit) {
    let (p, model) = vtd::pair(config);
    let mut unit = Unit::new(&p, vtd::DEFAULT_BASE, model.window_size(), mode).unwrap();
    unit.enable_queued_invalidation(&p, DEFAULT_ENTRIES).unwrap();
    unit.queue().unwrap().set_timeout(TIMEOUT);
    (p, model, unit)
}

fn rid() -> RequesterId {
    EDU.routing_id()
}

/// A legacy unit translating EDU through a second-stage table with 2 MiB + 12 KiB mapped.
fn legacy_with_edu() -> (SimPlatform, RemappingUnit, Unit, IoPageTable<VtdSecondStage>, u16) {
    let (p, model, mut unit) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let did = unit.allocate_domain_id().unwrap();
    let mut table = IoPageTable::new(&p, VtdSecondStage::new(), 4, PageSizes::SIZE_4K).unwrap();
    table.set_domain(u32::from(did));
    let pending = table.map(&p, Iova(IOVA), PhysAddr(TARGET), 0x20_3000, Perms::RW).unwrap();
    unit.flush(&p, pending, FlushScope::Iotlb).unwrap();
    let owed = unit.attach_legacy(&p, EDU, did, table.root(), 4).unwrap();
    unit.flush_tables(&p, owed).unwrap();
    unit.set_translation(&p, true).unwrap();
    assert_eq!(model.translate(rid(), None, IOVA, true).unwrap().phys, TARGET);
    (p, model, unit, table, did)
}

#[test]
fn a_wait_that_never_completes_times_out_and_never_frees_tables_early() {
    let (p, model, mut unit, mut table, _) = legacy_with_edu();
    // Unmapping everything empties every table below the root (two level-1 tables, the
    // level-2 and the level-3 table), which the pending value carries.
    let pending = table.unmap(&p, Iova(IOVA), 0x20_3000).unwrap();
    let freed: Vec<u64> = pending.freed.iter().map(|pg| pg.phys().0).collect();
    assert_eq!(freed.len(), 4, "every table below the root emptied");
    model.stall_next_wait();
    let polls = p.relax_count();
    let e = unit.flush(&p, pending, FlushScope::Iotlb).unwrap_err();
    assert_eq!(e, Error::Timeout { what: "VT-d invalidation wait status", waited_us: 2000 });
    assert!(p.relax_count() - polls <= MAX_POLLS, "bounded: {} polls", p.relax_count() - polls);
    // Not confirmed, so not released: the pages are still allocated (leaked, never reused).
    let live: Vec<u64> = p.memory().allocations().iter().map(|a| a.0.0).collect();
    assert!(freed.iter().all(|f| live.contains(f)), "tables released before a confirmed flush");
    // The invalidation itself was processed before the stalled wait: nothing stale remains.
    let f = model.translate(rid(), None, IOVA, false).unwrap_err();
    assert!(f.reason == reason::PAGING_ENTRY_ACCESS || f.reason == reason::READ, "{f:?}");
    // Once the unit moves again, the queue works.
    model.release_stalled_wait();
    let pending = table.map(&p, Iova(IOVA), PhysAddr(TARGET), 0x1000, Perms::RW).unwrap();
    unit.flush(&p, pending, FlushScope::Iotlb).unwrap();
    assert_eq!(model.translate(rid(), None, IOVA, false).unwrap().phys, TARGET);
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn a_queue_the_unit_stopped_draining_is_a_timeout_on_space_then_recovers() {
    let (p, model, mut unit) = setup(Config::qemu_legacy(), TableMode::Legacy);
    let q = unit.queue().unwrap();
    let inv = desc::iotlb_global(Drain::default());
    // The unit stops: nothing the driver writes takes effect.
    p.set_auto_step(false);
    let polls = p.relax_count();
    let e = q.submit(&p, &[inv; 200]).unwrap_err();
    assert_eq!(e, Error::Timeout { what: "VT-d invalidation wait status", waited_us: 2000 });
    // 201 of 256 slots are taken: the next batch cannot fit, and waiting for space is bounded.
    let e = q.submit(&p, &[inv; 100]).unwrap_err();
    assert_eq!(e, Error::Timeout { what: "VT-d invalidation queue space (IQH)", waited_us: 2000 });
    assert!(p.relax_count() - polls <= 2 * MAX_POLLS, "bounded");
    // A batch larger than the queue is refused before anything is written.
    let e = q.submit(&p, &[inv; 255]).unwrap_err();
    assert_eq!(e, Error::CapacityExceeded { what: "VT-d invalidation queue batch", capacity: 254 });
    // The unit resumes: the backlog drains and a new batch completes.
    p.set_auto_step(true);
    q.submit(&p, &[inv; 100]).unwrap();
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn more_faults_than_recording_registers_report_overflow_and_recording_resumes() {
    let config = Config::qemu_legacy().with_fault_records(2).with_fault_compression(false);
    let (p, model, mut unit) = setup(config, TableMode::Legacy);
    unit.set_translation(&p, true).unwrap();
    // Empty root table: every request faults (root entry not present).
    for dev in 1..=5u16 {
        assert!(model.translate(RequesterId(dev << 3), None, 0x1000, false).is_err());
    }
    let mut seen = Vec::new();
    let status = unit.drain_faults(|i, r| seen.push((i, r.source_id.0, r.reason)));
    assert!(status.overflow() && status.pending(), "{status:?}");
    assert_eq!(
        seen,
        [(0, 1 << 3, reason::ROOT_NOT_PRESENT), (1, 2 << 3, reason::ROOT_NOT_PRESENT)]
    );
    model.step();
    assert_eq!(unit.fault_status().0 & 0x3, 0, "PFO and PPF clear after the drain");
    // Recording works again.
    assert!(model.translate(RequesterId(6 << 3), None, 0x1000, false).is_err());
    let mut seen = Vec::new();
    let status = unit.drain_faults(|_, r| seen.push(r.source_id.0));
    assert!(!status.overflow());
    assert_eq!(seen, [6 << 3]);
}

/// Physical address of the 16-byte legacy context entry of `bdf` under `unit`'s root table.
fn legacy_context_entry(p: &SimPlatform, unit: &Unit, bdf: Bdf) -> u64 {
    let root = p.memory().read_u64(unit.root_table().0 + u64::from(bdf.bus) * 16).unwrap();
    assert_eq!(root & 1, 1, "root entry present");
    (root & !0xfff) + u64::from(bdf.devfn) * 16
}

#[test]
fn a_garbage_context_entry_faults_with_a_typed_record_and_attach_replaces_it() {
    let (p, model, mut unit, table, did) = legacy_with_edu();
    let at = legacy_context_entry(&p, &unit, EDU);
    // Present, translation type 3 (reserved), reserved bits set in both halves; an address
    // width the unit does not support.
    assert!(p.memory().write_u64(at, 0xdead_beef_0000_0f0d));
    assert!(p.memory().write_u64(at + 8, 0xffff_ffff_ffff_ff07));
    unit.queue().unwrap().global(&p).unwrap();
    let f = model.translate(rid(), None, IOVA, false).unwrap_err();
    assert!(
        [reason::CONTEXT_RESERVED, reason::CONTEXT_INVALID].contains(&f.reason),
        "{:#x}",
        f.reason
    );
    let mut seen = Vec::new();
    unit.drain_faults(|_, r| seen.push((r.source_id, r.reason)));
    assert_eq!(seen, [(rid(), f.reason)], "the driver decodes what the unit recorded");
    // Attaching again replaces the garbage (a present entry: cleared and invalidated first).
    let owed = unit.attach_legacy(&p, EDU, did, table.root(), 4).unwrap();
    unit.flush_tables(&p, owed).unwrap();
    assert_eq!(model.translate(rid(), None, IOVA, true).unwrap().phys, TARGET);
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn a_garbage_pasid_entry_faults_with_a_typed_record_and_attach_replaces_it() {
    let (p, model, mut unit) = setup(Config::qemu_scalable_first_stage(), TableMode::Scalable);
    let did = unit.allocate_domain_id().unwrap();
    let fs1gp = unit.capability().fs1gp();
    let mut table =
        IoPageTable::new(&p, X86FirstStage::new(), 4, PageSizes::from_vtd_first_stage(fs1gp))
            .unwrap();
    table.set_domain(u32::from(did));
    let pasid0 = Pasid::new(0).unwrap();
    let pending = table.map(&p, Iova(IOVA), PhysAddr(TARGET), 0x1000, Perms::RW).unwrap();
    unit.flush(&p, pending, FlushScope::PasidIotlb(pasid0)).unwrap();
    let translation = PasidTranslation::FirstStage { root: table.root(), levels: 4 };
    let owed = unit.attach_pasid(&p, EDU, pasid0, did, translation).unwrap();
    unit.flush_tables(&p, owed).unwrap();
    unit.set_translation(&p, true).unwrap();
    assert_eq!(model.translate(rid(), None, IOVA, true).unwrap().phys, TARGET);

    // Scalable root entry (lower context table for devfn < 128), 32-byte context entry, PASID
    // directory entry 0, PASID table entry 0 (64 bytes): VT-d §9.2, §9.4, §9.5, §9.6.
    let mem = p.memory();
    let root = mem.read_u64(unit.root_table().0).unwrap();
    let context = (root & !0xfff) + u64::from(EDU.devfn) * 32;
    let dir = mem.read_u64(context).unwrap() & !0xfff;
    let pasid_table = mem.read_u64(dir).unwrap() & !0xfff;
    // Present, PGTT 7 (reserved), reserved bits set.
    assert!(mem.write_u64(pasid_table, 0xffff_ffff_ffff_ffc1 | 7 << 6));
    assert!(mem.write_u64(pasid_table + 8, u64::MAX));
    unit.queue().unwrap().global(&p).unwrap();
    let f = model.translate(rid(), None, IOVA, false).unwrap_err();
    assert!(
        [reason::SM_PASID_RESERVED, reason::SM_PASID_INVALID].contains(&f.reason),
        "{:#x}",
        f.reason
    );
    let mut seen = Vec::new();
    unit.drain_faults(|_, r| seen.push((r.source_id, r.reason)));
    assert_eq!(seen, [(rid(), f.reason)]);
    let owed = unit.attach_pasid(&p, EDU, pasid0, did, translation).unwrap();
    unit.flush_tables(&p, owed).unwrap();
    assert_eq!(model.translate(rid(), None, IOVA, true).unwrap().phys, TARGET);
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

fn root() -> RootBus {
    RootBus::new(0, 0, 255).with_windows(Windows {
        memory32: Some(Window::new(0x1000_0000, 0x2eff_0000)),
        memory64: Some(Window::new(0x80_0000_0000, 0x80_0000_0000)),
        io: Some(Window::new(0, 0x1_0000)),
    })
}

fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
    Bdf::new(0, bus, dev, func).unwrap()
}

#[test]
fn a_function_turning_all_ones_at_any_read_of_enumeration_is_dropped_or_kept_whole() {
    // igb: a PF with SR-IOV, ARI and MSI-X at 01:00.0; switch-up: a bridge with a subtree.
    for (name, at) in [("igb", bdf(1, 0, 0)), ("switch-up", bdf(6, 0, 0))] {
        let mut vanished = 0;
        for reads in 0..80 {
            let sim = Sim::qemu_q35_rich();
            let id = sim.find(name).unwrap();
            sim.vanish_after_reads(id, reads);
            let e: Enumeration<64> = enumerate(&sim, &[root()], &Options::default()).unwrap();
            let found = e.topology.find(at).is_some();
            let warned = e.warnings.contains(&Warning::FunctionVanished { bdf: at });
            assert!(!(found && warned), "{name} after {reads} reads: found and warned");
            if !found {
                vanished += 1;
                // Nothing below a vanished bridge is kept.
                assert!(e.topology.find(bdf(7, 0, 0)).is_none() || name != "switch-up");
                assert!(e.sriov.iter().all(|s| e.topology.get(s.pf_index()).is_some()));
            }
        }
        assert!(vanished > 10, "{name} vanished part-way in {vanished} runs");
    }
}

#[test]
fn a_pf_vanishing_while_its_vfs_are_enabled_is_a_typed_error_and_adds_no_vf() {
    let clock = TestClock::new(1_000_000);
    let mut outcomes = [0usize; 2];
    // Enabling reads the PF a handful of times (SR-IOV Control, NumVFs read-back, VF Enable):
    // vanishing at each of them, and after all of them.
    for reads in 0..12 {
        let sim = Sim::qemu_q35_rich();
        let mut e: Enumeration<64> = enumerate(&sim, &[root()], &Options::default()).unwrap();
        let before = e.topology.len();
        let pf = e.topology.find(bdf(1, 0, 0)).unwrap();
        sim.vanish_after_reads(sim.find("igb").unwrap(), reads);
        let (s, topology) = e.sriov_mut(pf).unwrap();
        match s.enable(&sim, &clock, topology, 4) {
            Ok(()) => {
                outcomes[0] += 1;
                assert_eq!(e.topology.len(), before + 4);
            }
            Err(err) => {
                outcomes[1] += 1;
                assert!(
                    matches!(
                        err,
                        Error::FunctionVanished { .. }
                            | Error::Timeout { .. }
                            | Error::SettingNotTaken { .. }
                    ),
                    "after {reads} reads: {err:?}"
                );
                assert_eq!(e.topology.len(), before, "after {reads} reads: VFs left behind");
            }
        }
    }
    assert!(outcomes[1] >= 2 && outcomes[0] > 0, "{outcomes:?}");
}
