//! Tests of the VT-d model. Tables and descriptors are built by hand from the specification's
//! layouts, independently of the driver; a few tests drive the model with the driver itself.

use super::regs::{fsts, gcmd, off, reason};
use super::*;
use crate::sim::std;
use std::vec;
use std::vec::Vec;

const R: u64 = 1;
const W: u64 = 2;
const RW: u64 = R | W;
/// First-stage P | R/W | U/S.
const FS_PRW_US: u64 = 1 | 2 | 4;

fn rid(bus: u8, dev: u8, func: u8) -> RequesterId {
    RequesterId(u16::from(bus) << 8 | u16::from(dev) << 3 | u16::from(func))
}

struct Fix {
    unit: RemappingUnit,
    mem: Memory,
    queue: Option<(u64, bool)>,
}

impl Fix {
    fn new(cfg: Config) -> Self {
        let mem = Memory::new();
        let unit = RemappingUnit::new(&mem, cfg);
        Fix { unit, mem, queue: None }
    }

    fn gcmd(&self, v: u32) {
        self.unit.write32(off::GCMD, v);
        self.unit.step();
    }

    /// The Linux pattern: persistent status bits plus one command.
    fn command(&self, bit: u32) {
        let persistent = self.unit.gsts() & (gcmd::TE | gcmd::QIE | gcmd::IRE | gcmd::CFI);
        self.gcmd(persistent | bit);
    }

    fn set_root(&self, rtaddr: u64) {
        self.unit.write64(off::RTADDR, rtaddr);
        self.command(gcmd::SRTP);
    }

    fn enable(&self, rtaddr: u64) {
        self.set_root(rtaddr);
        self.command(gcmd::TE);
    }

    fn enable_qi(&mut self, wide: bool) {
        let q = self.mem.alloc_page().0;
        self.unit.write64(off::IQA, q | if wide { 1 << 11 } else { 0 });
        self.unit.write64(off::IQT, 0);
        self.command(gcmd::QIE);
        assert_ne!(self.unit.gsts() & gcmd::QIE, 0);
        self.queue = Some((q, wide));
    }

    /// Writes descriptors at the tail, moves IQT past them and steps.
    fn submit(&self, descs: &[[u64; 4]]) {
        let (q, wide) = self.queue.unwrap();
        let shift = if wide { 5 } else { 4 };
        let mut tail = self.unit.read64(off::IQT) >> shift;
        for d in descs {
            let at = q + (tail << shift);
            for (i, w) in d.iter().take(if wide { 4 } else { 2 }).enumerate() {
                self.mem.write_u64(at + 8 * i as u64, *w);
            }
            tail += 1;
        }
        self.unit.write64(off::IQT, tail << shift);
        self.unit.step();
    }

    fn head(&self) -> u64 {
        self.unit.read64(off::IQH)
    }
}

fn d2(lo: u64, hi: u64) -> [u64; 4] {
    [lo, hi, 0, 0]
}

fn wait_sw(addr: u64, data: u32) -> [u64; 4] {
    d2(0x5 | 1 << 5 | u64::from(data) << 32, addr)
}

/// Maps `iova` to `phys` in a second-stage table rooted at `root` with `levels` levels, the leaf
/// at `leaf_level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB) with permissions `perm`; intermediate
/// entries get `RW` unless already present.
fn ss_map(mem: &Memory, root: u64, levels: u32, iova: u64, phys: u64, perm: u64, leaf_level: u32) {
    let mut tbl = root;
    for level in (leaf_level..=levels).rev() {
        let at = tbl + ((iova >> (12 + 9 * (level - 1))) & 511) * 8;
        if level == leaf_level {
            let ps = if level > 1 { 1 << 7 } else { 0 };
            mem.write_u64(at, phys | perm | ps);
            return;
        }
        let e = mem.read_u64(at).unwrap();
        tbl = if e & RW != 0 {
            e & !0xfff
        } else {
            let t = mem.alloc_page().0;
            mem.write_u64(at, t | RW);
            t
        };
    }
}

/// Same for first-stage tables (4 levels); `flags` on the leaf, P|R/W|U/S above.
fn fs_map(mem: &Memory, root: u64, iova: u64, phys: u64, flags: u64) -> u64 {
    let mut tbl = root;
    for level in (1..=4u32).rev() {
        let at = tbl + ((iova >> (12 + 9 * (level - 1))) & 511) * 8;
        if level == 1 {
            mem.write_u64(at, phys | flags);
            return at;
        }
        let e = mem.read_u64(at).unwrap();
        tbl = if e & 1 != 0 {
            e & 0x000f_ffff_ffff_f000
        } else {
            let t = mem.alloc_page().0;
            mem.write_u64(at, t | FS_PRW_US);
            t
        };
    }
    unreachable!()
}

/// Legacy root and context tables for one device: returns (root table, second-stage root).
fn legacy_tables(mem: &Memory, r: RequesterId, did: u16, aw: u64, tt: u64) -> (u64, u64) {
    let root = mem.alloc_page().0;
    let ctx = mem.alloc_page().0;
    let sl = mem.alloc_page().0;
    mem.write_u64(root + u64::from(r.bus()) * 16, ctx | 1);
    let ce = ctx + u64::from(r.devfn()) * 16;
    mem.write_u64(ce, sl | tt << 2 | 1);
    mem.write_u64(ce + 8, u64::from(did) << 8 | aw);
    (root, sl)
}

/// Scalable-mode tables: root, context (RID_PASID `rid_pasid`, PASIDE set), PASID directory and
/// one PASID table. Returns (root, PASID table).
fn scalable_tables(mem: &Memory, r: RequesterId, rid_pasid: u32) -> (u64, u64) {
    let root = mem.alloc_page().0;
    let ctx = mem.alloc_page().0;
    let dir = mem.alloc_page().0;
    let table = mem.alloc_page().0;
    let half = if r.devfn() < 128 { 0 } else { 8 };
    mem.write_u64(root + u64::from(r.bus()) * 16 + half, ctx | 1);
    let ce = ctx + u64::from(r.devfn() & 0x7f) * 32;
    mem.write_u64(ce, dir | 1 << 3 | 1);
    mem.write_u64(ce + 8, u64::from(rid_pasid));
    mem.write_u64(dir + u64::from(rid_pasid >> 6) * 8, table | 1);
    (root | 1 << 10, table)
}

/// Writes PASID entry `pasid` in `table`: (val0, val1, val2).
fn pasid_entry(mem: &Memory, table: u64, pasid: u32, v: [u64; 3]) {
    let at = table + u64::from(pasid & 63) * 64;
    for (i, w) in v.iter().enumerate() {
        mem.write_u64(at + 8 * i as u64, *w);
    }
}

// ---------------------------------------------------------------------------------------------
// Registers and the GCMD/GSTS handshake.

#[test]
fn reset_state_and_identification() {
    let f = Fix::new(Config::qemu_legacy());
    assert_eq!(f.unit.read32(off::VER), 0x10);
    assert_eq!(f.unit.read64(off::CAP), 0x00d2_008c_222f_0606);
    assert_eq!(f.unit.read64(off::ECAP), 0x0000_0000_00f0_0f4a);
    assert_eq!(f.unit.read32(off::GSTS), 0);
    assert_eq!(f.unit.read32(off::FECTL), 1 << 31, "IM set at reset");
    assert_eq!(f.unit.read32(off::IECTL), 1 << 31);
    assert_eq!(f.unit.read32(off::GCMD), gcmd::IDLE);
    assert_eq!(f.unit.read32(off::FSTS), fsts::MARKER);
    assert_eq!(f.unit.fsts(), 0);
}

#[test]
fn srtp_latches_rtaddr_and_sets_rtps() {
    let f = Fix::new(Config::qemu_legacy());
    f.unit.write64(off::RTADDR, 0x1234_5000);
    f.unit.step();
    assert_eq!(f.unit.root_table(), None, "RTADDR alone does nothing");
    f.gcmd(gcmd::SRTP);
    assert_eq!(f.unit.root_table(), Some(0x1234_5000));
    assert_eq!(f.unit.read32(off::GSTS), gcmd::SRTP);
    // A later RTADDR write is not used until the next SRTP.
    f.unit.write64(off::RTADDR, 0x5555_5000);
    f.unit.step();
    assert_eq!(f.unit.root_table(), Some(0x1234_5000));
    f.gcmd(gcmd::SRTP);
    assert_eq!(f.unit.root_table(), Some(0x5555_5000));
    assert!(f.unit.errors().is_empty(), "{:?}", f.unit.errors());
}

#[test]
fn persistent_enables_follow_gcmd() {
    let mut f = Fix::new(Config::qemu_legacy());
    f.set_root(0x1000_0000);
    f.command(gcmd::TE);
    assert_eq!(f.unit.gsts() & gcmd::TE, gcmd::TE);
    f.enable_qi(false);
    assert_eq!(f.unit.gsts() & (gcmd::TE | gcmd::QIE), gcmd::TE | gcmd::QIE);
    // TE=0 with QIE repeated: only translation turns off.
    f.gcmd(gcmd::QIE);
    assert_eq!(f.unit.gsts() & (gcmd::TE | gcmd::QIE), gcmd::QIE);
    // Writing 0 (seen thanks to GCMD's idle value) turns QI off too.
    f.gcmd(0);
    assert_eq!(f.unit.gsts() & gcmd::QIE, 0);
    assert!(f.unit.errors().is_empty(), "{:?}", f.unit.errors());
}

#[test]
fn gcmd_misuse_is_recorded() {
    let f = Fix::new(Config::qemu_legacy());
    f.gcmd(gcmd::TE);
    assert_eq!(f.unit.take_errors(), vec![ModelError::TranslationWithoutRootTable]);
    // Two commands in one write, and a read-modify-write of GCMD (reserved bits).
    f.gcmd(gcmd::SRTP | gcmd::IRE | gcmd::TE);
    let errs = f.unit.take_errors();
    assert!(errs.contains(&ModelError::GcmdMultipleCommands { value: gcmd::SRTP | gcmd::IRE | gcmd::TE }), "{errs:?}");
    let rmw = f.unit.read32(off::GCMD) | gcmd::QIE;
    f.gcmd(rmw);
    assert!(f.unit.take_errors().contains(&ModelError::GcmdReservedBits { value: rmw }));
}

#[test]
fn eight_byte_write_to_gcmd_is_detected() {
    let f = Fix::new(Config::qemu_legacy());
    f.unit.write64(off::RTADDR, 0x2000_0000);
    f.unit.step();
    // A 64-bit store at GCMD also writes GSTS: what QEMU asserts on.
    let v = u64::from(gcmd::SRTP) | 0xdead << 32;
    f.unit.write64(off::GCMD, v);
    f.unit.step();
    assert_eq!(f.unit.take_errors(), vec![ModelError::WideWrite { offset: off::GCMD, value: v }]);
    assert_eq!(f.unit.root_table(), Some(0x2000_0000), "the low dword still acts");
    assert_eq!(f.unit.read32(off::GSTS), gcmd::SRTP, "GSTS is restored");
    // An 8-byte write at 0x30 puts its high half in FSTS.
    f.unit.write64(0x30, 0);
    f.unit.write64(0x30, 1 << 63 | 1);
    f.unit.step();
    assert_eq!(f.unit.take_errors(), vec![ModelError::WideWrite { offset: off::FSTS, value: 1 << 63 | 1 }]);
    // A plain write to a read-only register.
    f.unit.write32(off::VER, 0x20);
    f.unit.step();
    assert_eq!(f.unit.take_errors(), vec![ModelError::ReadOnlyWrite { offset: off::VER, value: 0x20 }]);
    assert_eq!(f.unit.read32(off::VER), 0x10);
}

#[test]
fn the_driver_brings_the_unit_up_through_the_platform() {
    use crate::vtd::{TableMode, Unit};
    let (platform, model) = pair(Config::qemu_legacy());
    let mut unit = Unit::new(&platform, DEFAULT_BASE, 0x230, TableMode::Legacy).unwrap();
    assert_eq!(model.root_table(), Some(unit.root_table().0));
    unit.set_translation(&platform, true).unwrap();
    assert_eq!(model.gsts() & gcmd::TE, gcmd::TE);
    assert!(platform.relax_count() > 0);
    // Every request now faults on the empty root table (FR 1), and the driver drains it.
    let e = model.translate(rid(0, 2, 0), None, 0x1000, true).unwrap_err();
    assert_eq!((e.reason, e.outcome), (reason::ROOT_NOT_PRESENT, FaultOutcome::Recorded(0)));
    let mut seen = Vec::new();
    let status = unit.drain_faults(|i, r| seen.push((i, r.reason, r.source_id, r.read, r.address)));
    assert!(status.pending());
    assert_eq!(seen, vec![(0, 1, rid(0, 2, 0), false, 0x1000)]);
    platform.step_all();
    assert_eq!(model.fsts(), 0, "record and PPF cleared");
    unit.set_translation(&platform, false).unwrap();
    assert_eq!(model.gsts() & gcmd::TE, 0);
    assert!(model.errors().is_empty(), "{:?}", model.errors());
    // A dead unit (no stepping) makes the driver time out instead.
    platform.set_auto_step(false);
    assert!(unit.set_translation(&platform, true).is_err());
    let _ = platform.memory().allocations();
}

#[test]
fn scalable_root_table_mode_needs_smts() {
    let f = Fix::new(Config::qemu_legacy());
    f.set_root(0x1000_0000 | 1 << 10);
    assert_eq!(f.unit.take_errors(), vec![ModelError::InvalidTableMode { rtaddr: 0x1000_0000 | 1 << 10 }]);
}

// ---------------------------------------------------------------------------------------------
// Queued invalidation.

#[test]
fn every_descriptor_type_is_processed_and_logged() {
    // Scalable first-stage preset plus DT, so all types are valid; 256-bit descriptors.
    let mut f = Fix::new(Config::qemu_scalable_first_stage().with_ecap(0x0000_8900_00f0_0f4e));
    f.enable_qi(true);
    let status = f.mem.alloc_page().0;
    let descs = [
        [0x1 | 2 << 4 | 7 << 16, 0, 0, 0],
        [0x2 | 3 << 4 | 7 << 16, 0x20_0000 | 1, 0, 0],
        [0x3 | 0x10 << 32 | 4 << 16, 0x4000, 0, 0],
        [0x4 | 1 << 4 | 5 << 32, 0, 0, 0],
        [0x6 | 2 << 4 | 7 << 16 | 5 << 32, 0, 0, 0],
        [0x7 | 1 << 4 | 7 << 16 | 5 << 32, 0, 0, 0],
        [0x8 | 0x10 << 16 | 5 << 32, 0x8000 | 1, 0, 0],
        [0x9 | 1 << 4 | 0x10 << 16 | 5 << 32, 1 << 2 | 3 << 3, 0xaa, 0xbb],
        wait_sw(status, 0x600d),
    ];
    f.submit(&descs);
    let log = f.unit.descriptors();
    assert_eq!(log.len(), 9, "{log:?}");
    assert_eq!(f.head(), 9 << 5);
    assert_eq!(log[0].descriptor, Descriptor::ContextCache { granularity: CcGranularity::Domain, did: 7, sid: 0, fm: 0 });
    assert_eq!(
        log[1].descriptor,
        Descriptor::Iotlb {
            granularity: IotlbGranularity::Page,
            did: 7,
            address: 0x20_0000,
            am: 1,
            ih: false,
            drain_reads: false,
            drain_writes: false
        }
    );
    assert_eq!(log[2].descriptor, Descriptor::DeviceTlb { sid: 0x10, pfsid: 0, qdep: 4, address: 0x4000, size: false });
    assert_eq!(log[3].descriptor, Descriptor::InterruptEntryCache { selective: true, index: 5, im: 0 });
    assert_eq!(
        log[4].descriptor,
        Descriptor::PasidIotlb { granularity: PasidIotlbGranularity::Pasid, did: 7, pasid: 5, address: 0, am: 0, ih: false }
    );
    assert_eq!(log[5].descriptor, Descriptor::PasidCache { granularity: PasidCacheGranularity::Pasid, did: 7, pasid: 5 });
    assert_eq!(
        log[6].descriptor,
        Descriptor::PasidDeviceTlb { sid: 0x10, pfsid: 0, qdep: 0, pasid: 5, global: true, address: 0x8000, size: false }
    );
    assert_eq!(
        log[7].descriptor,
        Descriptor::PageGroupResponse {
            rid: 0x10,
            pasid: Some(5),
            private_present: false,
            response: 0,
            last: true,
            index: 3,
            private: [0xaa, 0xbb]
        }
    );
    assert_eq!(log[8].source, Source::Queue(8));
    assert_eq!(f.mem.read_u32(status), Some(0x600d));
    assert!(f.unit.errors().is_empty(), "{:?}", f.unit.errors());
}

#[test]
fn wait_writes_its_status_at_the_address_with_the_data() {
    let mut f = Fix::new(Config::qemu_legacy());
    f.enable_qi(false);
    let page = f.mem.alloc_page().0;
    f.mem.write_u64(page + 0x40, u64::MAX);
    f.submit(&[d2(0x1 | 1 << 4, 0), wait_sw(page + 0x44, 0x1234_5678)]);
    assert_eq!(f.mem.read_u64(page + 0x40), Some(0x1234_5678_ffff_ffff), "32 bits at +0x44 only");
    assert_eq!(f.head(), 2 << 4);
    assert_eq!(f.unit.read64(off::IQT), 2 << 4);
    assert!(f.unit.interrupts().is_empty());
}

#[test]
fn wait_with_if_raises_the_completion_event() {
    let mut f = Fix::new(Config::qemu_legacy());
    f.enable_qi(false);
    f.unit.write32(off::IEDATA, 0x41);
    f.unit.write32(off::IEADDR, 0xfee0_0000);
    f.submit(&[d2(0x5 | 1 << 4, 0)]);
    // IM is set at reset: pending, not sent.
    assert_eq!(f.unit.read32(off::ICS) & 1, 1);
    assert_eq!(f.unit.read32(off::IECTL), (1 << 31) | (1 << 30));
    assert!(f.unit.interrupts().is_empty());
    f.unit.write32(off::IECTL, 0);
    f.unit.step();
    assert_eq!(
        f.unit.interrupts(),
        vec![Interrupt { kind: InterruptKind::InvalidationCompletion, address: 0xfee0_0000, data: 0x41 }]
    );
    // While IWC is set no new event is generated; clearing IWC (RW1C) re-arms it.
    f.submit(&[d2(0x5 | 1 << 4, 0)]);
    assert_eq!(f.unit.interrupts().len(), 1);
    f.unit.write32(off::ICS, 1);
    f.unit.step();
    assert_eq!(f.unit.read32(off::ICS) & 1, 0);
    f.submit(&[d2(0x5 | 1 << 4, 0)]);
    assert_eq!(f.unit.interrupts().len(), 2);
    assert!(f.unit.errors().is_empty(), "{:?}", f.unit.errors());
}

#[test]
fn wait_with_sw_and_if_or_neither_is_flagged_as_a_qemu_trap() {
    let mut f = Fix::new(Config::qemu_legacy());
    f.enable_qi(false);
    let page = f.mem.alloc_page().0;
    f.submit(&[d2(0x5 | 1 << 4 | 1 << 5 | 9 << 32, page), d2(0x5 | 1 << 6, 0)]);
    assert_eq!(f.unit.take_errors(), vec![ModelError::WaitSwAndIf { index: 0 }, ModelError::WaitNeither { index: 1 }]);
    // Both are valid per the specification: the status was written and the queue went on.
    assert_eq!(f.mem.read_u32(page), Some(9));
    assert_eq!(f.head(), 2 << 4);
    assert_eq!(f.unit.fsts() & fsts::IQE, 0);
}

#[test]
fn reserved_bit_sets_iqe_and_the_queue_recovers_when_fixed() {
    let mut f = Fix::new(Config::qemu_legacy());
    f.enable_qi(false);
    let (q, _) = f.queue.unwrap();
    let page = f.mem.alloc_page().0;
    // A wait with PD (bit 7) set: reserved without ECAP.PDS (QEMU agrees).
    f.submit(&[d2(0x1 | 1 << 4, 0), d2(0x5 | 1 << 5 | 1 << 7, page), wait_sw(page + 8, 2)]);
    assert_eq!(f.unit.fsts() & fsts::IQE, fsts::IQE);
    assert_eq!(f.head(), 1 << 4, "IQH stays at the bad descriptor");
    assert_eq!(f.unit.read64(off::IQERCD) & 0xf, 3);
    assert_eq!(f.mem.read_u32(page + 8), Some(0), "nothing after it ran");
    // Nothing runs while IQE is set, even if the descriptor is fixed.
    f.mem.write_u64(q + 16, 0x5 | 1 << 5 | 1 << 32);
    f.unit.step();
    assert_eq!(f.head(), 1 << 4);
    // Clearing IQE with exactly the value read (masked to the RW1C bits) restarts it.
    let v = f.unit.read32(off::FSTS) & fsts::RW1C;
    f.unit.write32(off::FSTS, v);
    f.unit.step();
    assert_eq!(f.unit.fsts() & fsts::IQE, 0);
    assert_eq!(f.head(), 3 << 4);
    assert_eq!((f.mem.read_u32(page), f.mem.read_u32(page + 8)), (Some(1), Some(2)));
}

#[test]
fn unknown_types_and_width_mismatches_are_queue_errors() {
    let mut f = Fix::new(Config::qemu_scalable_second_stage());
    f.enable_qi(false);
    // PASID-IOTLB in a 128-bit queue.
    f.submit(&[d2(0x6 | 2 << 4, 0)]);
    assert_eq!(f.unit.fsts() & fsts::IQE, fsts::IQE);
    assert_eq!(f.unit.read64(off::IQERCD) & 0xf, 5);
    let mut f = Fix::new(Config::qemu_legacy());
    f.enable_qi(false);
    f.submit(&[d2(0xf, 0)]);
    assert_eq!(f.unit.fsts() & fsts::IQE, fsts::IQE);
    assert_eq!(f.head(), 0);
    // PASID-cache in legacy mode (no SMTS): invalid type.
    let mut f = Fix::new(Config::qemu_legacy());
    f.enable_qi(false);
    f.submit(&[d2(0x7, 0)]);
    assert_eq!(f.unit.fsts() & fsts::IQE, fsts::IQE);
}

#[test]
fn iqe_raises_one_fault_event() {
    let mut f = Fix::new(Config::qemu_legacy());
    f.unit.write32(off::FEDATA, 0x55);
    f.unit.write32(off::FECTL, 0);
    f.enable_qi(false);
    f.submit(&[d2(0xf, 0)]);
    assert_eq!(f.unit.interrupts(), vec![Interrupt { kind: InterruptKind::Fault, address: 0, data: 0x55 }]);
}

#[test]
fn a_stalled_wait_never_writes_its_status_until_released() {
    use crate::hal::poll;
    use core::time::Duration;
    let (platform, unit) = pair(Config::qemu_legacy());
    let mut f = Fix { unit: unit.clone(), mem: platform.memory().clone(), queue: None };
    f.enable_qi(false);
    let page = f.mem.alloc_page().0;
    unit.stall_next_wait();
    f.submit(&[wait_sw(page, 1), wait_sw(page + 4, 2)]);
    assert!(unit.is_stalled());
    // A driver's bounded wait on the status times out though the platform keeps stepping.
    let got = poll(&platform, "wait status", Duration::from_micros(50), || (f.mem.read_u32(page) == Some(1)).then_some(()));
    assert!(got.is_err());
    assert_eq!(f.head(), 0);
    unit.release_stalled_wait();
    unit.step();
    assert_eq!((f.mem.read_u32(page), f.mem.read_u32(page + 4)), (Some(1), Some(2)));
    assert_eq!(f.head(), 2 << 4);
}

#[test]
fn injected_ite_stops_the_queue_and_ice_does_not() {
    let mut f = Fix::new(Config::qemu_legacy().with_ecap(0x0000_0000_00f0_0fce));
    f.enable_qi(false);
    let page = f.mem.alloc_page().0;
    f.unit.inject_ice(0x11);
    f.submit(&[d2(0x3 | 0x11 << 32, 0), wait_sw(page, 1)]);
    assert_eq!(f.unit.fsts() & fsts::ICE, fsts::ICE);
    // ICESID: IQERCD bits 63:48 (Linux DMAR_IQER_REG_ICESID).
    assert_eq!(f.unit.read64(off::IQERCD) >> 48, 0x11);
    assert_eq!(f.mem.read_u32(page), Some(1));
    f.unit.inject_ite(0x22);
    f.submit(&[d2(0x3 | 0x22 << 32, 0), wait_sw(page + 4, 2)]);
    assert_eq!(f.unit.fsts() & fsts::ITE, fsts::ITE);
    // ITESID: IQERCD bits 47:32 (Linux DMAR_IQER_REG_ITESID).
    assert_eq!(f.unit.read64(off::IQERCD) >> 32 & 0xffff, 0x22);
    assert_eq!(f.head(), 3 << 4, "stopped after the timed-out descriptor");
    assert_eq!(f.mem.read_u32(page + 4), Some(0));
    f.unit.write32(off::FSTS, fsts::ITE | fsts::ICE);
    f.unit.step();
    assert_eq!(f.mem.read_u32(page + 4), Some(2));
}

#[test]
fn queue_tail_beyond_the_queue_is_an_error_and_disable_resets_head() {
    let mut f = Fix::new(Config::qemu_legacy());
    f.enable_qi(false);
    f.unit.write64(off::IQT, 256 << 4); // QS=0: 256 entries
    f.unit.step();
    assert_eq!(f.unit.read64(off::IQERCD) & 0xf, 1);
    f.unit.write64(off::IQT, 0);
    f.unit.write32(off::FSTS, fsts::IQE);
    f.unit.step();
    f.submit(&[d2(0x5 | 1 << 6 | 1 << 4, 0)]);
    assert_eq!(f.head(), 1 << 4);
    f.gcmd(0);
    assert_eq!(f.head(), 0);
    assert!(!f.unit.errors().contains(&ModelError::QueueDisabledWhileBusy { head: 16, tail: 16 }));
}

// ---------------------------------------------------------------------------------------------
// Translation.

#[test]
fn legacy_three_and_four_level_walks() {
    for (aw, levels) in [(1u64, 3u32), (2, 4)] {
        let f = Fix::new(Config::qemu_legacy());
        let dev = rid(0, 2, 0);
        let (root, sl) = legacy_tables(&f.mem, dev, 42, aw, 0);
        ss_map(&f.mem, sl, levels, 0x234_5000, 0x7_7000, RW, 1);
        ss_map(&f.mem, sl, levels, 0x234_7000, 0x7_8000, R, 1);
        ss_map(&f.mem, sl, levels, 0x4000_0000, 0x20_0000, RW, 2);
        f.enable(root);
        let t = f.unit.translate(dev, None, 0x234_5678, true).unwrap();
        assert_eq!((t.phys, t.page_size, t.kind, t.did), (0x7_7678, 0x1000, TranslationKind::SecondStage, Some(42)));
        let t = f.unit.translate(dev, None, 0x4012_3456, false).unwrap();
        assert_eq!((t.phys, t.page_size), (0x32_3456, 0x20_0000));
        assert_eq!(f.unit.translate(dev, None, 0x234_7000, false).unwrap().phys, 0x7_8000);
        let e = f.unit.translate(dev, None, 0x234_7000, true).unwrap_err();
        assert_eq!((e.reason, e.write, e.address), (reason::WRITE, true, 0x234_7000));
        // Unmapped: R=W=0 reads as a permission fault, as QEMU reports too.
        f.unit.write32(0x22c, 1 << 31);
        f.unit.step();
        assert_eq!(f.unit.translate(rid(0, 2, 0), None, 0x900_0000, false).unwrap_err().reason, reason::READ);
    }
}

#[test]
fn legacy_permissions_are_checked_at_every_level_and_width_is_bounded() {
    let f = Fix::new(Config::qemu_legacy().with_fault_compression(false).with_fault_records(8));
    let dev = rid(0, 3, 0);
    let (root, sl) = legacy_tables(&f.mem, dev, 1, 1, 0);
    ss_map(&f.mem, sl, 3, 0x1000, 0x5000, RW, 1);
    // Make the level-3 entry read-only: writes fault though the leaf allows them.
    let l3 = f.mem.read_u64(sl).unwrap();
    f.mem.write_u64(sl, l3 & !W);
    f.enable(root);
    assert_eq!(f.unit.translate(dev, None, 0x1000, false).unwrap().phys, 0x5000);
    assert_eq!(f.unit.translate(dev, None, 0x1000, true).unwrap_err().reason, reason::WRITE);
    // 3-level tables translate 39 bits.
    assert_eq!(f.unit.translate(dev, None, 1 << 39, false).unwrap_err().reason, reason::BEYOND_AGAW);
    // A reserved bit (SNP without ECAP.SC) in the leaf.
    ss_map(&f.mem, sl, 3, 0x2000, 0x6000 | 1 << 11, R, 1);
    assert_eq!(f.unit.translate(dev, None, 0x2000, false).unwrap_err().reason, reason::PAGING_RESERVED);
    // Context and root faults.
    assert_eq!(f.unit.translate(rid(0, 4, 0), None, 0, false).unwrap_err().reason, reason::CONTEXT_NOT_PRESENT);
    assert_eq!(f.unit.translate(rid(1, 0, 0), None, 0, false).unwrap_err().reason, reason::ROOT_NOT_PRESENT);
    assert_eq!(f.unit.translate(dev, Some(1), 0, false).unwrap_err().reason, reason::SM_PASID_IN_LEGACY);
}

#[test]
fn legacy_context_checks_and_pass_through() {
    let f = Fix::new(Config::qemu_legacy());
    let dev = rid(0, 5, 0);
    let (root, _) = legacy_tables(&f.mem, dev, 9, 1, 2);
    // AW=3 (5-level) is not in SAGAW: invalid context, for another device.
    let ce = f.mem.read_u64(root).unwrap() & !0xfff;
    let other = rid(0, 6, 0);
    f.mem.write_u64(ce + u64::from(other.devfn()) * 16, 0x1000 | 1);
    f.mem.write_u64(ce + u64::from(other.devfn()) * 16 + 8, 3);
    f.enable(root);
    let t = f.unit.translate(dev, None, 0xabc_d000, true).unwrap();
    assert_eq!((t.phys, t.kind), (0xabc_d000, TranslationKind::PassThrough));
    assert_eq!(f.unit.translate(other, None, 0, false).unwrap_err().reason, reason::CONTEXT_INVALID);
}

#[test]
fn translation_off_passes_through() {
    let f = Fix::new(Config::qemu_legacy());
    let t = f.unit.translate(rid(0, 1, 0), None, 0x1234, true).unwrap();
    assert_eq!((t.phys, t.kind), (0x1234, TranslationKind::Untranslated));
}

#[test]
fn scalable_second_stage_through_rid_pasid() {
    let f = Fix::new(Config::qemu_scalable_second_stage());
    let dev = rid(0, 2, 0);
    let (root, table) = scalable_tables(&f.mem, dev, 5);
    let ss = f.mem.alloc_page().0;
    ss_map(&f.mem, ss, 4, 0x234_5000, 0x9_9000, R, 1);
    // P, AW=2 (4-level), PGTT=2; DID 7.
    pasid_entry(&f.mem, table, 5, [ss | 2 << 6 | 2 << 2 | 1, 7, 0]);
    f.enable(root);
    let t = f.unit.translate(dev, None, 0x234_5010, false).unwrap();
    assert_eq!((t.phys, t.kind, t.did), (0x9_9010, TranslationKind::SecondStage, Some(7)));
    let e = f.unit.translate(dev, None, 0x234_5010, true).unwrap_err();
    assert_eq!((e.reason, e.pasid), (reason::SM_WRITE, None));
    let e = f.unit.translate(dev, None, 0x888_8000, false).unwrap_err();
    assert_eq!(e.reason, reason::SM_SS_NOT_PRESENT);
    // Requests with a PASID: ECAP.PASID is clear in this preset, so they are blocked.
    assert_eq!(f.unit.translate(dev, Some(5), 0x234_5000, false).unwrap_err().reason, reason::SM_PASID_DISABLED);
}

#[test]
fn scalable_upper_half_pass_through_and_pasid_entry_faults() {
    let f = Fix::new(Config::qemu_scalable_second_stage().with_fault_compression(false).with_fault_records(4));
    let hi_dev = rid(0, 0x11, 2); // devfn 0x8a >= 128: the root entry's upper half
    let (root, table) = scalable_tables(&f.mem, hi_dev, 3);
    pasid_entry(&f.mem, table, 3, [4 << 6 | 1, 9, 0]);
    f.enable(root);
    assert_eq!(f.unit.translate(hi_dev, None, 0x5000, true).unwrap().kind, TranslationKind::PassThrough);
    // The lower half of that root entry is not present.
    assert_eq!(f.unit.translate(rid(0, 1, 0), None, 0, false).unwrap_err().reason, reason::SM_ROOT_NOT_PRESENT);
    // Not-present PASID entry: 0x59 per the specification (QEMU says 0x5b).
    let f2 = Fix::new(Config::qemu_scalable_second_stage());
    let (root2, table2) = scalable_tables(&f2.mem, hi_dev, 3);
    pasid_entry(&f2.mem, table2, 3, [0, 0, 0]);
    f2.enable(root2);
    assert_eq!(f2.unit.translate(hi_dev, None, 0, false).unwrap_err().reason, reason::SM_PASID_NOT_PRESENT);
    // First-stage PGTT on a unit without FLTS: invalid entry.
    let f3 = Fix::new(Config::qemu_scalable_second_stage());
    let (root3, table3) = scalable_tables(&f3.mem, hi_dev, 3);
    pasid_entry(&f3.mem, table3, 3, [1 << 6 | 1, 9, 0]);
    f3.enable(root3);
    assert_eq!(f3.unit.translate(hi_dev, None, 0, false).unwrap_err().reason, reason::SM_PASID_INVALID);
}

#[test]
fn first_stage_walk_sets_accessed_and_dirty_and_checks_user() {
    let f = Fix::new(Config::qemu_scalable_first_stage().with_fault_compression(false).with_fault_records(8));
    let dev = rid(0, 2, 0);
    let (root, table) = scalable_tables(&f.mem, dev, 5);
    let fs = f.mem.alloc_page().0;
    let pte = fs_map(&f.mem, fs, 0x234_5000, 0x10_7000, FS_PRW_US);
    let pte_ro = fs_map(&f.mem, fs, 0x234_6000, 0x10_8000, 1 | 4);
    fs_map(&f.mem, fs, 0x234_7000, 0x10_9000, 1 | 2);
    // P, PGTT=1, DID 7, FSPTPTR (4-level).
    pasid_entry(&f.mem, table, 5, [1 << 6 | 1, 7, fs]);
    f.enable(root);
    let t = f.unit.translate(dev, None, 0x234_5abc, false).unwrap();
    assert_eq!((t.phys, t.kind), (0x10_7abc, TranslationKind::FirstStage));
    assert_eq!(f.mem.read_u64(pte).unwrap() & 0x60, 0x20, "A set, D not yet");
    f.unit.translate(dev, None, 0x234_5abc, true).unwrap();
    assert_eq!(f.mem.read_u64(pte), Some(0x10_7067), "A and D set, as QEMU shows");
    assert_eq!(f.unit.translate(dev, None, 0x234_6000, true).unwrap_err().reason, reason::SM_WRITE);
    assert_eq!(f.mem.read_u64(pte_ro).unwrap() & 0x40, 0);
    assert_eq!(f.unit.translate(dev, None, 0x234_7000, false).unwrap_err().reason, reason::SM_USER);
    assert_eq!(f.unit.translate(dev, None, 0x334_5000, false).unwrap_err().reason, reason::SM_FS_NOT_PRESENT);
    assert_eq!(f.unit.translate(dev, None, 1 << 50, false).unwrap_err().reason, reason::SM_NON_CANONICAL);
    // Requests with PASID 5 (ECAP.PASID and PASIDE set) use the same entry; faults carry it.
    assert_eq!(f.unit.translate(dev, Some(5), 0x234_5000, false).unwrap().phys, 0x10_7000);
    let e = f.unit.translate(dev, Some(5), 0x234_7000, false).unwrap_err();
    assert_eq!(e.pasid, Some(5));
    let (_, hi) = f.unit.fault_records()[match e.outcome {
        FaultOutcome::Recorded(i) => i,
        o => panic!("{o:?}"),
    }];
    assert_eq!(hi >> 31 & 1, 1, "PP");
    assert_eq!(hi >> 40 & 0xf_ffff, 5, "PV");
    assert_eq!(hi >> 32 & 0xff, u64::from(reason::SM_USER));
}

#[test]
fn nested_translation_goes_through_both_stages() {
    // Scalable with FLTS, SLTS and NEST.
    let ecap = 0x0000_8900_00f0_0f4a | 1 << 46 | 1 << 26;
    let f = Fix::new(Config::qemu_scalable_first_stage().with_ecap(ecap));
    let dev = rid(0, 2, 0);
    let (root, table) = scalable_tables(&f.mem, dev, 1);
    // Guest tables live at guest-physical addresses 0x100000.. mapped 1:1 by the second stage
    // onto where they really are; the guest page 0x40_0000 maps to host 0x7_7000.
    let ss = f.mem.alloc_page().0;
    let fs_host = f.mem.alloc_page().0;
    let gfs = 0x10_0000u64;
    ss_map(&f.mem, ss, 4, gfs, fs_host, RW, 1);
    // Build the guest's first-stage tables by hand: each level's table at gfs + n*0x1000.
    let mut host_of = vec![(gfs, fs_host)];
    let iova = 0x8000_1000u64;
    for level in (2..=4u32).rev() {
        let (g, h) = *host_of.last().unwrap();
        let next_h = f.mem.alloc_page().0;
        let next_g = g + 0x1000;
        ss_map(&f.mem, ss, 4, next_g, next_h, RW, 1);
        f.mem.write_u64(h + ((iova >> (12 + 9 * (level - 1))) & 511) * 8, next_g | FS_PRW_US);
        host_of.push((next_g, next_h));
    }
    let (_, l1) = *host_of.last().unwrap();
    f.mem.write_u64(l1 + ((iova >> 12) & 511) * 8, 0x40_0000 | FS_PRW_US);
    ss_map(&f.mem, ss, 4, 0x40_0000, 0x7_7000, RW, 1);
    pasid_entry(&f.mem, table, 1, [ss | 3 << 6 | 2 << 2 | 1, 3, gfs]);
    f.enable(root);
    let t = f.unit.translate(dev, None, iova + 0x10, true).unwrap();
    assert_eq!((t.phys, t.kind), (0x7_7010, TranslationKind::Nested));
}

#[test]
fn stale_iotlb_until_invalidated() {
    let mut f = Fix::new(Config::qemu_legacy());
    let dev = rid(0, 2, 0);
    let (root, sl) = legacy_tables(&f.mem, dev, 42, 1, 0);
    ss_map(&f.mem, sl, 3, 0x10_0000, 0xa000, RW, 1);
    ss_map(&f.mem, sl, 3, 0x20_0000, 0xb000, RW, 1);
    f.enable(root);
    f.enable_qi(false);
    assert!(!f.unit.translate(dev, None, 0x10_0000, true).unwrap().cached);
    assert!(f.unit.translate(dev, None, 0x10_0000, true).unwrap().cached);
    f.unit.translate(dev, None, 0x20_0000, true).unwrap();
    // Unmap both leaves without invalidating: the IOTLB still translates.
    ss_map(&f.mem, sl, 3, 0x10_0000, 0, 0, 1);
    ss_map(&f.mem, sl, 3, 0x20_0000, 0, 0, 1);
    assert_eq!(f.unit.translate(dev, None, 0x10_0000, true).unwrap().phys, 0xa000);
    // Another domain's invalidation does not help.
    f.submit(&[d2(0x2 | 2 << 4 | 41 << 16, 0)]);
    assert!(f.unit.translate(dev, None, 0x10_0000, true).is_ok());
    // Page-selective for the first page only.
    f.submit(&[d2(0x2 | 3 << 4 | 42 << 16, 0x10_0000)]);
    assert_eq!(f.unit.translate(dev, None, 0x10_0000, true).unwrap_err().reason, reason::WRITE);
    assert_eq!(f.unit.translate(dev, None, 0x20_0000, true).unwrap().phys, 0xb000);
    f.submit(&[d2(0x2 | 1 << 4, 0)]);
    assert!(f.unit.translate(dev, None, 0x20_0000, true).is_err());
    assert_eq!(f.unit.iotlb_len(), 0);
}

#[test]
fn stale_context_until_context_cache_invalidation() {
    let mut f = Fix::new(Config::qemu_legacy());
    let dev = rid(0, 2, 0);
    let (root, _) = legacy_tables(&f.mem, dev, 42, 1, 2);
    f.enable(root);
    f.enable_qi(false);
    assert!(f.unit.translate(dev, None, 0x1000, false).is_ok());
    // Clear the context entry: the cached one still passes requests through.
    let ce = (f.mem.read_u64(root).unwrap() & !0xfff) + u64::from(dev.devfn()) * 16;
    f.mem.write_u64(ce, 0);
    assert!(f.unit.translate(dev, None, 0x1000, false).is_ok());
    // A device-selective invalidation for a sibling function (FM=0) leaves it.
    f.submit(&[d2(0x1 | 3 << 4 | u64::from(dev.0 + 1) << 32, 0)]);
    assert!(f.unit.translate(dev, None, 0x1000, false).is_ok());
    // With FM=3 (function bits ignored) it covers the device.
    f.submit(&[d2(0x1 | 3 << 4 | u64::from(dev.0 + 1) << 32 | 3 << 48, 0)]);
    assert_eq!(f.unit.translate(dev, None, 0x1000, false).unwrap_err().reason, reason::CONTEXT_NOT_PRESENT);
}

#[test]
fn scalable_caches_need_pasid_cache_and_pasid_iotlb_invalidation() {
    let mut f = Fix::new(Config::qemu_scalable_first_stage());
    let dev = rid(0, 2, 0);
    let (root, table) = scalable_tables(&f.mem, dev, 5);
    let fs = f.mem.alloc_page().0;
    fs_map(&f.mem, fs, 0x1000, 0xa000, FS_PRW_US);
    pasid_entry(&f.mem, table, 5, [1 << 6 | 1, 7, fs]);
    f.enable(root);
    f.enable_qi(true);
    f.unit.translate(dev, None, 0x1000, false).unwrap();
    fs_map(&f.mem, fs, 0x1000, 0xc000, FS_PRW_US);
    // IOTLB (0x2) invalidation does not cover first-stage mappings.
    f.submit(&[[0x2 | 2 << 4 | 7 << 16, 0, 0, 0]]);
    assert_eq!(f.unit.translate(dev, None, 0x1000, false).unwrap().phys, 0xa000);
    f.submit(&[[0x6 | 2 << 4 | 7 << 16 | 5 << 32, 0, 0, 0]]);
    assert_eq!(f.unit.translate(dev, None, 0x1000, false).unwrap().phys, 0xc000);
    // Switch the PASID entry to pass-through: the PASID cache keeps the old one until a
    // PASID-cache invalidation.
    pasid_entry(&f.mem, table, 5, [4 << 6 | 1, 7, 0]);
    f.submit(&[[0x6 | 2 << 4 | 7 << 16 | 5 << 32, 0, 0, 0]]);
    assert_eq!(f.unit.translate(dev, None, 0x1000, false).unwrap().kind, TranslationKind::FirstStage);
    f.submit(&[[0x7 | 1 << 4 | 7 << 16 | 5 << 32, 0, 0, 0]]);
    assert_eq!(f.unit.translate(dev, None, 0x1000, false).unwrap().kind, TranslationKind::PassThrough);
    assert_eq!(f.unit.pasid_cache_len(), 1);
    assert_eq!(f.unit.context_cache_len(), 1);
}

#[test]
fn register_based_invalidation() {
    let mut f = Fix::new(Config::qemu_legacy());
    let dev = rid(0, 2, 0);
    let (root, sl) = legacy_tables(&f.mem, dev, 42, 1, 0);
    ss_map(&f.mem, sl, 3, 0x1000, 0xa000, RW, 1);
    f.enable(root);
    f.unit.translate(dev, None, 0x1000, false).unwrap();
    // CCMD global, then IOTLB domain-selective for DID 42 (IRO 0xf0: IOTLB_REG at 0xf8).
    f.unit.write64(off::CCMD, 1 << 63 | 1 << 61);
    f.unit.write64(0xf8, 1 << 63 | 2 << 60 | 42 << 32);
    f.unit.step();
    assert_eq!(f.unit.read64(off::CCMD) >> 59 & 3, 1, "CAIG");
    assert_eq!(f.unit.read64(off::CCMD) >> 63, 0, "ICC clear");
    assert_eq!(f.unit.read64(0xf8) >> 57 & 3, 2, "IAIG");
    assert_eq!((f.unit.context_cache_len(), f.unit.iotlb_len()), (0, 0));
    assert!(f.unit.descriptors().iter().all(|d| d.source == Source::Register));
    f.enable_qi(false);
    f.unit.write64(off::CCMD, 1 << 63 | 1 << 61);
    f.unit.step();
    assert_eq!(f.unit.take_errors(), vec![ModelError::RegisterInvalidationWithQueue { offset: off::CCMD }]);
}

// ---------------------------------------------------------------------------------------------
// Fault recording.

#[test]
fn faults_are_compressed_per_source_and_overflow_sets_pfo() {
    let f = Fix::new(Config::qemu_legacy());
    f.enable(f.mem.alloc_page().0);
    let a = f.unit.translate(rid(0, 2, 0), None, 0x1000, true).unwrap_err();
    assert_eq!(a.outcome, FaultOutcome::Recorded(0));
    // Same source while pending: compressed (QEMU behaves so).
    let b = f.unit.translate(rid(0, 2, 0), None, 0x2000, false).unwrap_err();
    assert_eq!(b.outcome, FaultOutcome::Compressed);
    // Another source with the single register full: overflow.
    let c = f.unit.translate(rid(0, 3, 0), None, 0x3000, false).unwrap_err();
    assert_eq!(c.outcome, FaultOutcome::Overflow);
    f.unit.step();
    assert_eq!(f.unit.fsts(), fsts::PFO | fsts::PPF);
    assert_eq!(f.unit.read32(off::FSTS), fsts::MARKER | fsts::PFO | fsts::PPF);
    // The record is as Linux decodes it: FI, SID, FR, T (0 = write).
    assert_eq!(f.unit.read64(0x220), 0x1000);
    assert_eq!(f.unit.read32(0x228), 0x0010);
    assert_eq!(f.unit.read32(0x22c), 0x8000_0001);
    // Clear F (32-bit write of F to the top dword) and PFO.
    f.unit.write32(0x22c, 1 << 31);
    f.unit.write32(off::FSTS, fsts::PFO);
    f.unit.step();
    assert_eq!(f.unit.fsts(), 0);
    assert_eq!(f.unit.translate(rid(0, 3, 0), None, 0x3000, false).unwrap_err().outcome, FaultOutcome::Recorded(0));
}

#[test]
fn records_rotate_without_compression_and_fri_names_the_first() {
    let f = Fix::new(Config::qemu_legacy().with_fault_records(4).with_fault_compression(false));
    f.enable(f.mem.alloc_page().0);
    let outcomes: Vec<_> = (0..6).map(|i| f.unit.translate(rid(0, 2, 0), None, i << 12, false).unwrap_err().outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            FaultOutcome::Recorded(0),
            FaultOutcome::Recorded(1),
            FaultOutcome::Recorded(2),
            FaultOutcome::Recorded(3),
            FaultOutcome::Overflow,
            FaultOutcome::Overflow
        ]
    );
    // Free records 0 and 1: the next fault goes to the next index in turn (0).
    f.unit.write32(0x22c, 1 << 31);
    f.unit.write32(0x23c, 1 << 31);
    f.unit.step();
    assert_eq!(f.unit.translate(rid(0, 2, 0), None, 0x9000, false).unwrap_err().outcome, FaultOutcome::Recorded(0));
    assert_eq!(f.unit.fsts() >> 8 & 0xff, 0, "FRI");
    assert_eq!(f.unit.fault_records()[0].1 >> 62 & 1, 1, "T1: a read");
}

#[test]
fn fault_event_interrupt_once_while_pending() {
    let f = Fix::new(Config::qemu_legacy().with_fault_records(2).with_fault_compression(false));
    f.unit.write32(off::FEDATA, 0x30);
    f.unit.write32(off::FEADDR, 0xfee0_1000);
    f.unit.step();
    f.enable(f.mem.alloc_page().0);
    // Masked: IP set, nothing sent; unmasking sends it.
    f.unit.translate(rid(0, 2, 0), None, 0, false).unwrap_err();
    f.unit.step();
    assert_eq!(f.unit.read32(off::FECTL), (1 << 31) | (1 << 30));
    f.unit.write32(off::FECTL, 0);
    f.unit.step();
    let sent = Interrupt { kind: InterruptKind::Fault, address: 0xfee0_1000, data: 0x30 };
    assert_eq!(f.unit.interrupts(), vec![sent]);
    // A second fault while PPF is set: no new event.
    f.unit.translate(rid(0, 2, 0), None, 0x1000, false).unwrap_err();
    assert_eq!(f.unit.interrupts().len(), 1);
    // Service everything; the next fault interrupts again.
    f.unit.write32(0x22c, 1 << 31);
    f.unit.write32(0x23c, 1 << 31);
    f.unit.step();
    f.unit.translate(rid(0, 2, 0), None, 0x2000, false).unwrap_err();
    assert_eq!(f.unit.interrupts(), vec![sent, sent]);
}

#[test]
fn fpd_suppresses_recording() {
    let f = Fix::new(Config::qemu_legacy());
    let dev = rid(0, 2, 0);
    let (root, _) = legacy_tables(&f.mem, dev, 1, 1, 0);
    let ce = (f.mem.read_u64(root).unwrap() & !0xfff) + u64::from(dev.devfn()) * 16;
    f.mem.write_u64(ce, f.mem.read_u64(ce).unwrap() | 2);
    f.enable(root);
    assert_eq!(f.unit.translate(dev, None, 0, false).unwrap_err().outcome, FaultOutcome::Suppressed);
    assert_eq!(f.unit.fsts(), 0);
    assert_eq!(f.unit.faults().len(), 1);
}

#[test]
fn dma_through_the_unit() {
    let f = Fix::new(Config::qemu_legacy());
    let dev = rid(0, 2, 0);
    let (root, sl) = legacy_tables(&f.mem, dev, 1, 1, 0);
    let a = f.mem.alloc_page().0;
    let b = f.mem.alloc_page().0;
    ss_map(&f.mem, sl, 3, 0x10_0000, a, RW, 1);
    ss_map(&f.mem, sl, 3, 0x10_1000, b, R, 1);
    f.enable(root);
    assert_eq!(f.unit.dma_write(dev, None, 0x10_0ff0, &[7; 16]), Ok(true));
    assert_eq!(f.mem.read_u64(a + 0xff8), Some(0x0707_0707_0707_0707));
    let mut buf = [0u8; 32];
    assert_eq!(f.unit.dma_read(dev, None, 0x10_0ff0, &mut buf), Ok(true));
    assert_eq!(&buf[..16], &[7; 16]);
    assert_eq!(f.unit.dma_write(dev, None, 0x10_1000, &[1]).unwrap_err().reason, reason::WRITE);
}

#[test]
fn esrtps_makes_srtp_drop_the_caches() {
    // CAP.ESRTPS (bit 63): SRTP also invalidates the context cache, PASID cache and IOTLB.
    for (cap, kept) in [(0x00d2_008c_222f_0606u64, 1usize), (0x80d2_008c_222f_0606, 0)] {
        let f = Fix::new(Config::qemu_legacy().with_cap(cap));
        let dev = rid(0, 2, 0);
        let (root, sl) = legacy_tables(&f.mem, dev, 1, 1, 0);
        ss_map(&f.mem, sl, 3, 0x1000, 0xa000, RW, 1);
        f.enable(root);
        f.unit.translate(dev, None, 0x1000, false).unwrap();
        f.command(gcmd::SRTP);
        assert_eq!((f.unit.context_cache_len(), f.unit.iotlb_len()), (kept, kept));
    }
}
