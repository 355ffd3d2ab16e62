//! The driver against the SMMUv3 model in `sim::smmuv3`, which was written from the
//! specification independently of it: translations through the driver's stream tables, CDs and
//! page tables equal the page table's own walk, the model's command log shows every entry
//! written before its CFGI and every CFGI before its TLBI and CMD_SYNC, a changed translation
//! stays cached until its flush, and the events and errors the model produces are decoded and
//! recovered from.

use core::time::Duration;

use crate::addr::{Iova, PhysAddr, StreamId};
use crate::error::Error;
use crate::hal::Platform;
use crate::iommu::pagetable::{Arm64Stage1, Arm64Stage2, IoPageTable, PageSizes, Perms};
use crate::sim::smmuv3::regs::{cr0, cr2, event as ev, off, queue as q};
use crate::sim::smmuv3::{
    self, Access, Command as Logged, Config, EventOutcome, LoggedCommand, SimPlatform, Smmu, Stage,
    Termination,
};

use super::command::Command;
use super::event::{Event, EventKind};
use super::ste::{Stage1, Stage2, StreamConfig, StreamTableFormat};
use super::unit::{TlbScope, Unit, UnitConfig};

/// The edu at 00:02.0 under QEMU's identity `iommu-map`.
const SID: u32 = 0x10;
/// A StreamID in another level-2 table of a 2-level stream table.
const FAR_SID: u32 = 0x1234;
const IOVA: u64 = 0x40_0000;
const LEN: u64 = 0x20_0000 + 0x3000;
const TARGET_A: u64 = 0x8000_0000;
const TARGET_B: u64 = 0x9000_0000;

fn setup(config: Config, cfg: UnitConfig) -> (SimPlatform, Smmu, Unit) {
    let (p, model) = smmuv3::pair(config);
    let unit = Unit::new(&p, smmuv3::DEFAULT_BASE, cfg).unwrap();
    assert!(model.errors().is_empty(), "bring-up: {:?}", model.errors());
    (p, model, unit)
}

fn linear() -> UnitConfig {
    UnitConfig { sid_bits: Some(8), format: Some(StreamTableFormat::Linear), ..Default::default() }
}

fn s1_table(p: &SimPlatform, unit: &mut Unit, asid: u16, target: u64) -> IoPageTable<Arm64Stage1> {
    let bbml = unit.ids().idr3.bbml();
    let mut t = IoPageTable::new(p, Arm64Stage1::new(bbml), 4, PageSizes::ALL).unwrap();
    t.set_domain(u32::from(asid));
    let pending = t.map(p, Iova(IOVA), PhysAddr(target), LEN, Perms::RW).unwrap();
    unit.flush(p, pending, TlbScope::Stage1 { asid, vmid: 0 }).unwrap();
    t
}

fn s2_table(p: &SimPlatform, unit: &mut Unit, vmid: u16) -> IoPageTable<Arm64Stage2> {
    let bbml = unit.ids().idr3.bbml();
    let mut t = IoPageTable::new(p, Arm64Stage2::new(bbml), 4, PageSizes::ALL).unwrap();
    t.limit_iova_bits(unit.output_address_bits());
    t.set_domain(u32::from(vmid));
    t
}

fn s1(t: &IoPageTable<Arm64Stage1>, asid: u16) -> Stage1 {
    Stage1 { root: t.root(), levels: t.levels(), asid }
}

fn s2(t: &IoPageTable<Arm64Stage2>, vmid: u16) -> Stage2 {
    Stage2 { root: t.root(), levels: t.levels(), vmid }
}

/// Where the model sends a write of `sid`/`ssid` to `iova`.
fn reach(model: &Smmu, sid: u32, ssid: Option<u32>, iova: u64) -> Result<u64, Termination> {
    model.translate(sid, ssid, iova, Access::WRITE).map(|t| t.phys)
}

fn fault_code(t: Result<u64, Termination>) -> u8 {
    match t {
        Err(Termination::Fault(e)) => e.code,
        other => panic!("expected a fault, got {other:?}"),
    }
}

fn drain(p: &SimPlatform, unit: &mut Unit) -> Vec<Event> {
    let mut out = Vec::new();
    unit.drain_events(p, |e| out.push(e));
    out
}

fn position(log: &[LoggedCommand], pred: impl Fn(&Logged) -> bool) -> Option<usize> {
    log.iter().position(|c| c.command.as_ref().is_ok_and(&pred))
}

#[test]
fn bring_up_enables_the_queues_records_invalid_stream_ids_and_invalidates_everything() {
    for (config, el2) in [(Config::qemu_virt(), false), (Config::full(), true)] {
        let (_p, model, unit) = setup(config, UnitConfig::default());
        let want = cr0::SMMUEN | cr0::CMDQEN | cr0::EVENTQEN;
        assert_eq!(model.read32(off::CR0ACK) & want, want);
        // C_BAD_STREAMID is recorded only with CR2.RECINVSID (§6.3.12), as Linux sets it.
        assert_ne!(model.read32(off::CR2) & cr2::RECINVSID, 0);
        assert_eq!(unit.control() & want, want);
        let log = model.commands();
        let cfgi_all = position(&log, |c| matches!(c, Logged::CfgiSteRange { range: 31, .. }));
        let nsnh = position(&log, |c| matches!(c, Logged::TlbiNsnhAll));
        let el2_all = position(&log, |c| matches!(c, Logged::TlbiEl2All));
        let sync = position(&log, |c| matches!(c, Logged::Sync { .. }));
        assert!(cfgi_all.is_some() && nsnh.is_some(), "{log:?}");
        assert_eq!(el2_all.is_some(), el2, "EL2 TLBs only where IDR0.HYP");
        assert!(sync > nsnh && nsnh > cfgi_all);
        assert!(log.iter().all(|c| c.command.is_ok()), "{log:?}");
        assert!(model.errors().is_empty(), "{:?}", model.errors());
    }
}

#[test]
fn stage_1_and_stage_2_translate_as_the_page_table_in_linear_and_2_level_stream_tables() {
    for (cfg, sids) in [(linear(), [SID, 0xff]), (UnitConfig::default(), [SID, FAR_SID])] {
        let (p, model, mut unit) = setup(Config::qemu_virt(), cfg);
        let asid = unit.allocate_asid().unwrap();
        let vmid = unit.allocate_vmid().unwrap();
        let t1 = s1_table(&p, &mut unit, asid, TARGET_A);
        let mut t2 = s2_table(&p, &mut unit, vmid);
        let pending = t2.map(&p, Iova(IOVA), PhysAddr(TARGET_B), LEN, Perms::RW).unwrap();
        unit.flush(&p, pending, TlbScope::Stage2 { vmid }).unwrap();
        unit.set_stream(&p, StreamId(sids[0]), StreamConfig::Stage1(s1(&t1, asid))).unwrap();
        unit.set_stream(&p, StreamId(sids[1]), StreamConfig::Stage2(s2(&t2, vmid))).unwrap();
        for offset in [0u64, 0x1234, 0x1f_f008, 0x20_2ff0] {
            let iova = IOVA + offset;
            let t = model.translate(sids[0], None, iova, Access::WRITE).unwrap();
            assert_eq!(t.phys, t1.translate(Iova(iova)).unwrap().0.0, "stage 1 {iova:#x}");
            assert_eq!((t.stage, t.asid), (Stage::Stage1, Some(asid)));
            let t = model.translate(sids[1], None, iova, Access::WRITE).unwrap();
            assert_eq!(t.phys, t2.translate(Iova(iova)).unwrap().0.0, "stage 2 {iova:#x}");
            assert_eq!((t.stage, t.vmid), (Stage::Stage2, Some(vmid)));
        }
        // Outside the mapping: a translation fault, recorded (CD.R / STE.S2R) and decoded.
        assert_eq!(fault_code(reach(&model, sids[1], None, IOVA + LEN)), ev::F_TRANSLATION);
        let events = drain(&p, &mut unit);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, EventKind::Translation);
        assert_eq!((events[0].stream, events[0].address), (StreamId(sids[1]), IOVA + LEN));
        assert!(events[0].stage2);
        assert!(model.errors().is_empty(), "{:?}", model.errors());
    }
}

#[test]
fn nested_translation_is_stage_2_of_stage_1() {
    let (p, model, mut unit) = setup(Config::qemu_virt(), UnitConfig::default());
    let asid = unit.allocate_asid().unwrap();
    let vmid = unit.allocate_vmid().unwrap();
    // Stage 1 maps the IOVA to an IPA above 4 GiB; stage 2 maps that IPA to TARGET_B and the
    // low 4 GiB (CD table, stage-1 tables: the model's memory) to themselves.
    const IPA: u64 = 0x1_0000_0000;
    let bbml = unit.ids().idr3.bbml();
    let mut t1 = IoPageTable::new(&p, Arm64Stage1::new(bbml), 4, PageSizes::ALL).unwrap();
    t1.set_domain(u32::from(asid));
    let pending = t1.map(&p, Iova(IOVA), PhysAddr(IPA), LEN, Perms::RW).unwrap();
    unit.flush(&p, pending, TlbScope::Stage1 { asid, vmid: 0 }).unwrap();
    let mut t2 = s2_table(&p, &mut unit, vmid);
    for (ipa, pa, len) in [(0, 0, 1 << 32), (IPA, TARGET_B, LEN)] {
        let pending = t2.map(&p, Iova(ipa), PhysAddr(pa), len, Perms::RW).unwrap();
        unit.flush(&p, pending, TlbScope::Stage2 { vmid }).unwrap();
    }
    unit.set_stream(&p, StreamId(SID), StreamConfig::Nested(s1(&t1, asid), s2(&t2, vmid))).unwrap();
    for offset in [0u64, 0x1234, 0x20_2ff0] {
        let iova = IOVA + offset;
        let ipa = t1.translate(Iova(iova)).unwrap().0.0;
        let pa = t2.translate(Iova(ipa)).unwrap().0.0;
        let t = model.translate(SID, None, iova, Access::READ).unwrap();
        assert_eq!((t.phys, t.stage), (pa, Stage::Nested), "{iova:#x}");
        assert_eq!((t.asid, t.vmid), (Some(asid), Some(vmid)));
    }
    // Back to stage 1 alone: the nested entries of (ASID, VMID) go with the change.
    unit.set_stream(&p, StreamId(SID), StreamConfig::Stage1(s1(&t1, asid))).unwrap();
    assert_eq!(reach(&model, SID, None, IOVA), Ok(IPA));
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn substreams_reach_their_own_cd_in_linear_and_2_level_cd_tables() {
    // 4 SubstreamID bits: a linear table of 16 CDs; the full 20: 2-level (IDR0.CD2L).
    for (ssid_bits, ssid, two_level) in [(Some(4), 3u32, false), (None, 0x1_2345, true)] {
        let cfg = UnitConfig { ssid_bits, ..Default::default() };
        let (p, model, mut unit) = setup(Config::full(), cfg);
        assert_eq!(unit.cd_layout().two_level, two_level);
        let a = unit.allocate_asid().unwrap();
        let b = unit.allocate_asid().unwrap();
        let ta = s1_table(&p, &mut unit, a, TARGET_A);
        let tb = s1_table(&p, &mut unit, b, TARGET_B);
        // A substream needs its StreamID on stage 1 first (S1DSS = 0b10 uses CD 0).
        let e = unit.set_substream(&p, StreamId(SID), ssid, Some(s1(&tb, b))).unwrap_err();
        assert!(matches!(e, Error::InvalidField { .. }), "{e:?}");
        unit.set_stream(&p, StreamId(SID), StreamConfig::Stage1(s1(&ta, a))).unwrap();
        model.take_commands();
        unit.set_substream(&p, StreamId(SID), ssid, Some(s1(&tb, b))).unwrap();
        let log = model.take_commands();
        let cfgi =
            position(&log, |c| matches!(c, Logged::CfgiCd { sid: SID, ssid: s, .. } if *s == ssid))
                .unwrap();
        let snapshot = log[cfgi].snapshot.expect("the model found the CD");
        assert_eq!(snapshot[0] >> 48, u64::from(b), "CD written (ASID {b}) before its CFGI_CD");
        assert_eq!(snapshot[0] & (1 << 31), 1 << 31, "and valid");
        assert!(matches!(log.last().unwrap().command, Ok(Logged::Sync { .. })));

        assert_eq!(reach(&model, SID, Some(ssid), IOVA + 8), Ok(TARGET_B + 8));
        assert_eq!(reach(&model, SID, None, IOVA + 8), Ok(TARGET_A + 8));
        let t = model.translate(SID, Some(ssid), IOVA, Access::READ).unwrap();
        assert_eq!(t.asid, Some(b));
        // A SubstreamID without a CD, and (linear: 16 CDs) one beyond S1CDMax.
        assert_eq!(fault_code(reach(&model, SID, Some(ssid + 1), IOVA)), ev::C_BAD_CD);
        let mut want = vec![(EventKind::BadCd, Some(ssid + 1))];
        if !two_level {
            let beyond = 1u32 << unit.substream_bits();
            let code = fault_code(reach(&model, SID, Some(beyond), IOVA));
            assert_eq!(code, ev::C_BAD_SUBSTREAMID);
            want.push((EventKind::BadSubstreamId, Some(beyond)));
        }
        // A fault of the substream carries its SSID.
        assert_eq!(fault_code(reach(&model, SID, Some(ssid), IOVA + LEN)), ev::F_TRANSLATION);
        want.push((EventKind::Translation, Some(ssid)));
        let events = drain(&p, &mut unit);
        let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.substream)).collect();
        assert_eq!(kinds, want);
        assert_eq!(events.last().unwrap().address, IOVA + LEN);

        // Cleared: the CD goes invalid, its ASID's TLB entries go too.
        unit.set_substream(&p, StreamId(SID), ssid, None).unwrap();
        assert_eq!(fault_code(reach(&model, SID, Some(ssid), IOVA)), ev::C_BAD_CD);
        assert_eq!(reach(&model, SID, None, IOVA), Ok(TARGET_A));
        assert!(model.errors().is_empty(), "{:?}", model.errors());
    }
}

#[test]
fn entries_are_written_before_their_cfgi_and_cfgi_comes_before_tlbi_and_sync() {
    let (p, model, mut unit) = setup(Config::qemu_virt(), UnitConfig::default());
    let a = unit.allocate_asid().unwrap();
    let b = unit.allocate_asid().unwrap();
    let ta = s1_table(&p, &mut unit, a, TARGET_A);
    let tb = s1_table(&p, &mut unit, b, TARGET_B);
    model.take_commands();
    unit.set_stream(&p, StreamId(SID), StreamConfig::Stage1(s1(&ta, a))).unwrap();
    let log = model.take_commands();
    let ste = unit.stream_entry(&p, StreamId(SID)).unwrap().unwrap();
    let cfgi_ste = position(&log, |c| matches!(c, Logged::CfgiSte { sid: SID, .. })).unwrap();
    assert_eq!(log[cfgi_ste].snapshot, Some(ste), "the STE was complete at its CFGI_STE");
    let cfgi_cd =
        position(&log, |c| matches!(c, Logged::CfgiCd { sid: SID, ssid: 0, .. })).unwrap();
    assert_eq!(log[cfgi_cd].snapshot.unwrap()[0] >> 48, u64::from(a));
    assert!(matches!(log.last().unwrap().command, Ok(Logged::Sync { .. })));
    assert_eq!(reach(&model, SID, None, IOVA), Ok(TARGET_A));

    // Valid to valid with another ASID: abort in between (break), then the new CD and STE,
    // their CFGIs, the old ASID's TLBI, and the CMD_SYNC after all of them.
    unit.set_stream(&p, StreamId(SID), StreamConfig::Stage1(s1(&tb, b))).unwrap();
    let log = model.take_commands();
    let cfgis: Vec<_> = log
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.command, Ok(Logged::CfgiSte { sid: SID, .. })))
        .map(|(i, _)| i)
        .collect();
    let tlbi = position(&log, |c| matches!(c, Logged::TlbiNhAsid { asid, .. } if *asid == a))
        .expect("the old ASID is invalidated");
    let last_sync = log.len() - 1;
    assert!(matches!(log[last_sync].command, Ok(Logged::Sync { .. })));
    let first = log[cfgis[0]].snapshot.unwrap();
    assert_eq!((first[0] & 1, (first[0] >> 1) & 7), (1, 0), "first CFGI_STE sees abort");
    let last_cfgi_ste = *cfgis.last().unwrap();
    assert_eq!(log[last_cfgi_ste].snapshot, unit.stream_entry(&p, StreamId(SID)).unwrap());
    let cfgi_cd =
        position(&log, |c| matches!(c, Logged::CfgiCd { sid: SID, ssid: 0, .. })).unwrap();
    assert_eq!(log[cfgi_cd].snapshot.unwrap()[0] >> 48, u64::from(b), "new CD before its CFGI");
    assert!(cfgi_cd > cfgis[0] && tlbi < last_sync);
    // Every CFGI of the final entry precedes the CMD_SYNC the driver waited for.
    assert!(last_cfgi_ste < last_sync && cfgi_cd < last_sync);
    assert_eq!(reach(&model, SID, None, IOVA), Ok(TARGET_B));

    // A map owes a TLBI of the ASID by range (IDR3.RIL) and one CMD_SYNC after it.
    let mut tb = tb;
    let pending = tb.map(&p, Iova(0x100_0000), PhysAddr(TARGET_A), 0x1000, Perms::RW).unwrap();
    unit.flush(&p, pending, TlbScope::Stage1 { asid: b, vmid: 0 }).unwrap();
    let log = model.take_commands();
    assert!(matches!(log[0].command, Ok(Logged::TlbiNhVa { asid, .. }) if asid == b), "{log:?}");
    assert!(matches!(log[1].command, Ok(Logged::Sync { .. })));
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn an_unmap_stays_cached_until_its_flush_then_faults_with_the_models_event() {
    for stage2 in [false, true] {
        let (p, model, mut unit) = setup(Config::qemu_virt(), UnitConfig::default());
        let (tag, scope) = if stage2 {
            let vmid = unit.allocate_vmid().unwrap();
            (vmid, TlbScope::Stage2 { vmid })
        } else {
            let asid = unit.allocate_asid().unwrap();
            (asid, TlbScope::Stage1 { asid, vmid: 0 })
        };
        let mut t1 = None;
        let mut t2 = None;
        if stage2 {
            let mut t = s2_table(&p, &mut unit, tag);
            let pending = t.map(&p, Iova(IOVA), PhysAddr(TARGET_A), LEN, Perms::RW).unwrap();
            unit.flush(&p, pending, scope).unwrap();
            unit.set_stream(&p, StreamId(SID), StreamConfig::Stage2(s2(&t, tag))).unwrap();
            t2 = Some(t);
        } else {
            let t = s1_table(&p, &mut unit, tag, TARGET_A);
            unit.set_stream(&p, StreamId(SID), StreamConfig::Stage1(s1(&t, tag))).unwrap();
            t1 = Some(t);
        }
        let page = IOVA + 0x20_1000;
        assert_eq!(reach(&model, SID, None, page), Ok(TARGET_A + 0x20_1000), "warms the TLB");
        let pending = match (&mut t1, &mut t2) {
            (Some(t), _) => t.unmap(&p, Iova(page), 0x1000).unwrap(),
            (_, Some(t)) => t.unmap(&p, Iova(page), 0x1000).unwrap(),
            _ => unreachable!(),
        };
        let t = model.translate(SID, None, page, Access::WRITE).unwrap();
        assert!(t.cached, "stage2={stage2}: the model's TLB still holds the unmapped page");
        unit.flush(&p, pending, scope).unwrap();
        let Err(Termination::Fault(model_event)) = reach(&model, SID, None, page + 0x10) else {
            panic!("stage2={stage2}: the flushed page still translates");
        };
        assert_eq!(model_event.code, ev::F_TRANSLATION);
        assert_eq!(model_event.outcome, EventOutcome::Recorded(0));
        let events = drain(&p, &mut unit);
        assert_eq!(events.len(), 1, "{events:?}");
        let e = events[0];
        assert_eq!(e.kind, EventKind::Translation);
        assert_eq!(e.stream.0, model_event.sid);
        assert_eq!(e.substream, model_event.ssid);
        assert_eq!(e.address, model_event.address);
        assert_eq!(e.address, page + 0x10);
        assert_eq!((e.stage2, e.read), (stage2, false));
        // The neighbours still translate.
        assert_eq!(reach(&model, SID, None, page - 0x1000), Ok(TARGET_A + 0x20_0000));
        assert!(model.errors().is_empty(), "{:?}", model.errors());
    }
}

#[test]
fn abort_is_silent_invalid_is_c_bad_ste_and_beyond_the_table_is_c_bad_streamid() {
    let (p, model, mut unit) = setup(Config::qemu_virt(), linear());
    unit.set_stream(&p, StreamId(SID), StreamConfig::Abort).unwrap();
    assert_eq!(reach(&model, SID, None, IOVA), Err(Termination::StreamAbort));
    unit.set_stream(&p, StreamId(SID), StreamConfig::Bypass).unwrap();
    assert_eq!(reach(&model, SID, None, IOVA + 4), Ok(IOVA + 4));
    unit.detach(&p, StreamId(SID)).unwrap();
    assert_eq!(reach(&model, SID, None, IOVA), Err(Termination::StreamAbort), "cached bypass gone");
    assert!(drain(&p, &mut unit).is_empty(), "abort records nothing");

    // Never configured: V = 0.
    assert_eq!(fault_code(reach(&model, SID + 1, None, IOVA)), ev::C_BAD_STE);
    // Beyond the 256 StreamIDs of the linear table.
    assert_eq!(fault_code(reach(&model, 0x100, None, IOVA)), ev::C_BAD_STREAMID);
    let events = drain(&p, &mut unit);
    let got: Vec<_> = events.iter().map(|e| (e.kind, e.stream.0)).collect();
    assert_eq!(got, [(EventKind::BadSte, SID + 1), (EventKind::BadStreamId, 0x100)]);
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn an_illegal_command_is_reported_replaced_and_the_queue_recovers() {
    let (p, model, mut unit) = setup(Config::qemu_virt(), UnitConfig::default());
    model.take_commands();
    // Opcode 0x07 (CFGI_VMS_PIDM, Secure only) and 0xff (unallocated).
    for bad in [0x07u64, 0xff] {
        let e = unit.command_queue().submit(&p, &[Command([bad, 0])]).unwrap_err();
        assert!(
            matches!(e, Error::SmmuCommand { opcode, error: 1, .. } if u64::from(opcode) == bad),
            "{e:?}"
        );
        let g = model.read32(off::GERROR) ^ model.read32(off::GERRORN);
        assert_eq!(g, 0, "CMDQ_ERR acknowledged");
        assert!(unit.handle_global_errors().is_empty());
    }
    let log = model.take_commands();
    assert_eq!(log.iter().filter(|c| c.command == Err(q::CERROR_ILL)).count(), 2, "{log:?}");
    // The queue runs again: a configuration change goes through and takes effect.
    unit.set_stream(&p, StreamId(SID), StreamConfig::Bypass).unwrap();
    assert_eq!(reach(&model, SID, None, IOVA), Ok(IOVA));
    assert_eq!(unit.command_queue().stats().rejected, 2);
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn a_cmd_sync_that_never_completes_times_out_and_leaks_the_tables_it_owed() {
    let (p, model, mut unit) = setup(Config::qemu_virt(), UnitConfig::default());
    let asid = unit.allocate_asid().unwrap();
    let mut t = s1_table(&p, &mut unit, asid, TARGET_A);
    unit.set_stream(&p, StreamId(SID), StreamConfig::Stage1(s1(&t, asid))).unwrap();
    // The tail page's leaf table empties: freed only after its flush.
    let pending = t.unmap(&p, Iova(IOVA + 0x20_0000), 0x3000).unwrap();
    let freed: Vec<PhysAddr> = pending.freed.iter().map(|d| d.phys()).collect();
    assert!(!freed.is_empty());
    let bound = Duration::from_millis(2);
    unit.command_queue().set_timeout(bound);
    model.stall_next_sync();
    let e = unit.flush(&p, pending, TlbScope::Stage1 { asid, vmid: 0 }).unwrap_err();
    let Error::Timeout { what, waited_us } = e else { panic!("{e:?}") };
    assert_eq!(what, "SMMU CMD_SYNC completion (CMDQ_CONS)");
    assert!((2000..=2100).contains(&waited_us), "{waited_us} us for a 2 ms bound");
    assert!(model.is_sync_stalled());
    let allocated = p.memory().allocations();
    for page in &freed {
        assert!(allocated.iter().any(|(a, _)| a == page), "{page:?} was freed unconfirmed");
    }
    // Once the SMMU moves again the queue is usable, and a confirmed flush frees its pages.
    model.release_stalled_sync();
    let pending = t.unmap(&p, Iova(IOVA), 0x20_0000).unwrap();
    unit.flush(&p, pending, TlbScope::Stage1 { asid, vmid: 0 }).unwrap();
    assert_eq!(fault_code(reach(&model, SID, None, IOVA)), ev::F_TRANSLATION);
    for page in &freed {
        assert!(p.memory().allocations().iter().any(|(a, _)| a == page), "still leaked");
    }
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn a_confirmed_flush_frees_the_emptied_tables() {
    let (p, model, mut unit) = setup(Config::qemu_virt(), UnitConfig::default());
    let asid = unit.allocate_asid().unwrap();
    let mut t = s1_table(&p, &mut unit, asid, TARGET_A);
    let pending = t.unmap(&p, Iova(IOVA + 0x20_0000), 0x3000).unwrap();
    let freed: Vec<PhysAddr> = pending.freed.iter().map(|d| d.phys()).collect();
    assert!(!freed.is_empty());
    unit.flush(&p, pending, TlbScope::Stage1 { asid, vmid: 0 }).unwrap();
    let allocated = p.memory().allocations();
    assert!(freed.iter().all(|page| !allocated.iter().any(|(a, _)| a == page)));
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn a_hung_command_queue_is_a_timeout_not_a_hang() {
    let (p, model, mut unit) = setup(Config::qemu_virt(), UnitConfig::default());
    unit.command_queue().set_timeout(Duration::from_millis(1));
    model.stall_command_queue(true);
    let e = unit.set_stream(&p, StreamId(SID), StreamConfig::Bypass).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    model.stall_command_queue(false);
    p.step_all();
    unit.command_queue().submit(&p, &[]).unwrap();
    assert_eq!(reach(&model, SID, None, IOVA), Ok(IOVA), "the bypass went through after all");
}

#[test]
fn event_queue_overflow_is_seen_through_ovflg_and_acknowledged() {
    // A 2-record event queue.
    let config = Config::qemu_virt().with_queue_sizes(8, 1, 0);
    let (p, model, mut unit) = setup(config, linear());
    // C_BAD_STE records carry no address (§7.3.5): tell them apart by StreamID.
    for i in 0..4u32 {
        assert_eq!(fault_code(reach(&model, SID + i, None, IOVA)), ev::C_BAD_STE);
    }
    let outcomes: Vec<_> = model.events().iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [
            EventOutcome::Recorded(0),
            EventOutcome::Recorded(1),
            EventOutcome::Overflow,
            EventOutcome::Overflow
        ]
    );
    let mut events = Vec::new();
    let drained = unit.drain_events(&p, |e| events.push(e));
    assert!(drained.overflow && drained.events == 2, "{drained:?}");
    let sids: Vec<_> = events.iter().map(|e| (e.kind, e.stream.0)).collect();
    assert_eq!(sids, [(EventKind::BadSte, SID), (EventKind::BadSte, SID + 1)]);
    // Acknowledged: the next event is recorded and no overflow is reported again.
    assert_eq!(fault_code(reach(&model, SID, None, IOVA)), ev::C_BAD_STE);
    assert!(matches!(model.events().last().unwrap().outcome, EventOutcome::Recorded(_)));
    let drained = unit.drain_events(&p, |_| {});
    assert!(!drained.overflow && drained.events == 1, "{drained:?}");
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn dma_through_the_driver_reaches_memory_and_read_only_pages_refuse_writes() {
    let (p, model, mut unit) = setup(Config::qemu_virt(), UnitConfig::default());
    let asid = unit.allocate_asid().unwrap();
    let buf = p.alloc_dma_pages(2, 4096).unwrap();
    let bbml = unit.ids().idr3.bbml();
    let mut t = IoPageTable::new(&p, Arm64Stage1::new(bbml), 4, PageSizes::ALL).unwrap();
    t.set_domain(u32::from(asid));
    let pending = t.map(&p, Iova(IOVA), buf.phys(), 0x1000, Perms::RW).unwrap();
    unit.flush(&p, pending, TlbScope::Stage1 { asid, vmid: 0 }).unwrap();
    let ro = PhysAddr(buf.phys().0 + 0x1000);
    let pending = t.map(&p, Iova(IOVA + 0x1000), ro, 0x1000, Perms::READ).unwrap();
    unit.flush(&p, pending, TlbScope::Stage1 { asid, vmid: 0 }).unwrap();
    unit.set_stream(&p, StreamId(SID), StreamConfig::Stage1(s1(&t, asid))).unwrap();
    assert_eq!(model.dma_write(SID, None, IOVA + 0x10, b"edu!"), Ok(true));
    let mut back = [0u8; 4];
    assert!(p.memory().read(buf.phys().0 + 0x10, &mut back));
    assert_eq!(&back, b"edu!");
    let Err(Termination::Fault(f)) = model.dma_write(SID, None, IOVA + 0x1008, b"nope") else {
        panic!("a write to a read-only page went through");
    };
    assert_eq!(f.code, ev::F_PERMISSION);
    assert!(p.memory().read(ro.0 + 8, &mut back));
    assert_eq!(back, [0; 4], "memory unchanged");
    let events = drain(&p, &mut unit);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].kind, events[0].address), (EventKind::Permission, IOVA + 0x1008));
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn nested_unmaps_at_either_stage_are_flushed_from_the_combined_entries() {
    let (p, model, mut unit) = setup(Config::qemu_virt(), UnitConfig::default());
    let asid = unit.allocate_asid().unwrap();
    let vmid = unit.allocate_vmid().unwrap();
    const IPA: u64 = 0x1_0000_0000;
    let bbml = unit.ids().idr3.bbml();
    let mut t1 = IoPageTable::new(&p, Arm64Stage1::new(bbml), 4, PageSizes::ALL).unwrap();
    t1.set_domain(u32::from(asid));
    let pending = t1.map(&p, Iova(IOVA), PhysAddr(IPA), 0x2000, Perms::RW).unwrap();
    unit.flush(&p, pending, TlbScope::Stage1 { asid, vmid }).unwrap();
    let mut t2 = s2_table(&p, &mut unit, vmid);
    for (ipa, pa, len) in [(0, 0, 1 << 32), (IPA, TARGET_B, 0x2000)] {
        let pending = t2.map(&p, Iova(ipa), PhysAddr(pa), len, Perms::RW).unwrap();
        unit.flush(&p, pending, TlbScope::Stage2 { vmid }).unwrap();
    }
    unit.set_stream(&p, StreamId(SID), StreamConfig::Nested(s1(&t1, asid), s2(&t2, vmid))).unwrap();
    assert_eq!(reach(&model, SID, None, IOVA), Ok(TARGET_B));
    assert_eq!(reach(&model, SID, None, IOVA + 0x1000), Ok(TARGET_B + 0x1000));

    // Stage 2 takes the IPA of the first page away: TLBI_S2_IPA alone would leave the combined
    // stage 1+2 entry (§4.4.3), so the flush must also drop the VMID's stage-1 entries.
    let pending = t2.unmap(&p, Iova(IPA), 0x1000).unwrap();
    assert!(model.translate(SID, None, IOVA, Access::READ).unwrap().cached, "stale until flushed");
    unit.flush(&p, pending, TlbScope::Stage2 { vmid }).unwrap();
    let Err(Termination::Fault(f)) = reach(&model, SID, None, IOVA) else { panic!("still mapped") };
    assert_eq!((f.code, f.stage2, f.ipa_or_fetch), (ev::F_TRANSLATION, true, IPA));
    let events = drain(&p, &mut unit);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].stage2 && events[0].kind == EventKind::Translation);
    assert_eq!((events[0].address, events[0].address2), (IOVA, IPA));

    // Stage 1 unmaps the second page: the TLBI must carry the STE's VMID, or it misses the
    // nested entry (tagged with ASID and VMID).
    assert_eq!(reach(&model, SID, None, IOVA + 0x1000), Ok(TARGET_B + 0x1000));
    let pending = t1.unmap(&p, Iova(IOVA + 0x1000), 0x1000).unwrap();
    unit.flush(&p, pending, TlbScope::Stage1 { asid, vmid }).unwrap();
    let Err(Termination::Fault(f)) = reach(&model, SID, None, IOVA + 0x1000) else {
        panic!("stage-1 unmap not flushed from the nested entry");
    };
    assert_eq!((f.code, f.stage2), (ev::F_TRANSLATION, false));
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

#[test]
fn without_range_invalidation_each_page_gets_its_own_tlbi() {
    // QEMU's IDR3 without RIL (bit 10).
    let config = Config::qemu_virt().with_idr(3, 0x1414 & !(1 << 10));
    let (p, model, mut unit) = setup(config, UnitConfig::default());
    assert!(!unit.ids().idr3.ril());
    let asid = unit.allocate_asid().unwrap();
    let mut t = s1_table(&p, &mut unit, asid, TARGET_A);
    unit.set_stream(&p, StreamId(SID), StreamConfig::Stage1(s1(&t, asid))).unwrap();
    for page in 0..3u64 {
        let iova = IOVA + 0x20_0000 + page * 0x1000;
        assert_eq!(reach(&model, SID, None, iova), Ok(TARGET_A + 0x20_0000 + page * 0x1000));
    }
    model.take_commands();
    let pending = t.unmap(&p, Iova(IOVA + 0x20_0000), 0x3000).unwrap();
    unit.flush(&p, pending, TlbScope::Stage1 { asid, vmid: 0 }).unwrap();
    let log = model.take_commands();
    let vas = log.iter().filter(|c| matches!(c.command, Ok(Logged::TlbiNhVa { .. }))).count();
    assert_eq!(vas, 3, "{log:?}");
    assert!(log.iter().all(|c| c.command.is_ok()), "no range fields without RIL: {log:?}");
    for page in 0..3u64 {
        let code = fault_code(reach(&model, SID, None, IOVA + 0x20_0000 + page * 0x1000));
        assert_eq!(code, ev::F_TRANSLATION);
    }
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}
