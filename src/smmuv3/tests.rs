//! Host tests of the SMMUv3 driver against a small register fake.
//!
//! The fake is not an SMMU model (the `sim` SMMUv3 model is written separately): it mirrors CR0
//! into CR0ACK and IRQ_CTRL into IRQ_CTRLACK, clears GBPA.UPDATE, and consumes the command queue
//! in host memory between polls, recording every command and a snapshot of the STE each CFGI_STE
//! names (linear tables only). An opcode it does not know stops consumption with
//! CMDQ_CONS.ERR = ILL and GERROR.CMDQ_ERR, as §7.1 says; GERRORN acknowledges. It can be told
//! never to consume, to test bounded waits.

use core::cell::{Cell, RefCell};
use core::ptr::NonNull;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeMap;

use super::command::{Command, opcode};
use super::event::EventKind;
use super::regs::{cr0, cr2, gerror, offset};
use super::ste::{Stage1, Stage2, StreamConfig, StreamTableFormat};
use super::unit::{TlbScope, Unit, UnitConfig};
use crate::addr::{Iova, PhysAddr, StreamId};
use crate::error::{Error, Result};
use crate::hal::{DmaPages, Instant, PAGE_SIZE, Platform};
use crate::iommu::pagetable::{Arm64Stage1, IoPageTable, PageSizes, Perms};

const REG_WORDS: usize = offset::FRAME_SIZE / 8;

struct Fake {
    regs: *mut u64,
    live: RefCell<BTreeMap<usize, (usize, usize)>>,
    now: Cell<u64>,
    /// Consume commands between polls.
    consume: Cell<bool>,
    commands: RefCell<Vec<Command>>,
    /// (SID, STE words) at each CFGI_STE.
    snapshots: RefCell<Vec<(u32, [u64; 8])>>,
}

impl Fake {
    fn new() -> Self {
        let regs = Box::leak(vec![0u64; REG_WORDS].into_boxed_slice()).as_mut_ptr();
        let f = Self {
            regs,
            live: RefCell::new(BTreeMap::new()),
            now: Cell::new(0),
            consume: Cell::new(true),
            commands: RefCell::new(Vec::new()),
            snapshots: RefCell::new(Vec::new()),
        };
        // QEMU 10.0.2's ID registers (notes §2.2).
        for (off, v) in [
            (offset::IDR0, 0x0d44_101bu32),
            (offset::IDR1, 0x0273_0010),
            (offset::IDR3, 0x1414),
            (offset::IDR5, 0x74),
            (offset::AIDR, 1),
        ] {
            f.w32(off, v);
        }
        f
    }

    fn r32(&self, off: usize) -> u32 {
        // SAFETY: `off` is a register offset inside the 128 KiB frame this fake leaked.
        unsafe { self.regs.cast::<u32>().add(off / 4).read_volatile() }
    }
    fn w32(&self, off: usize, v: u32) {
        // SAFETY: as in `r32`.
        unsafe { self.regs.cast::<u32>().add(off / 4).write_volatile(v) }
    }
    fn r64(&self, off: usize) -> u64 {
        // SAFETY: as in `r32`, 8-byte aligned.
        unsafe { self.regs.add(off / 8).read_volatile() }
    }
    fn mem(addr: u64, word: usize) -> u64 {
        // SAFETY: host "physical" addresses are the virtual addresses of pages this fake handed
        // out (phys = virt), alive for the test.
        unsafe { (addr as *const u64).add(word).read_volatile() }
    }

    /// What the SMMU does between two polls.
    fn step(&self) {
        self.w32(offset::CR0ACK, self.r32(offset::CR0));
        self.w32(offset::IRQ_CTRLACK, self.r32(offset::IRQ_CTRL));
        self.w32(offset::GBPA, self.r32(offset::GBPA) & !(1 << 31));
        if !self.consume.get() || self.r32(offset::CR0) & cr0::CMDQEN == 0 {
            return;
        }
        let base = self.r64(offset::CMDQ_BASE);
        let log2 = (base & 0x1f) as u32;
        let ring = base & 0x000f_ffff_ffff_ffe0;
        let mask = (2u32 << log2) - 1;
        loop {
            if (self.r32(offset::GERROR) ^ self.r32(offset::GERRORN)) & gerror::CMDQ_ERR != 0 {
                return;
            }
            let prod = self.r32(offset::CMDQ_PROD) & mask;
            let cons_reg = self.r32(offset::CMDQ_CONS);
            let cons = cons_reg & mask;
            if prod == cons {
                return;
            }
            let slot = (cons & ((1 << log2) - 1)) as usize;
            let c = Command([Self::mem(ring, slot * 2), Self::mem(ring, slot * 2 + 1)]);
            match c.opcode() {
                0x01..=0x06 | 0x10..=0x13 | 0x20..=0x23 | 0x28 | 0x2a | 0x30 | 0x41 | 0x46 => {}
                _ => {
                    // CERROR_ILL: stop at the command.
                    self.w32(offset::CMDQ_CONS, (cons_reg & !(0x7f << 24)) | (1 << 24));
                    self.w32(offset::GERROR, self.r32(offset::GERROR) ^ gerror::CMDQ_ERR);
                    return;
                }
            }
            if c.opcode() == opcode::CFGI_STE && self.r32(offset::STRTAB_BASE_CFG) >> 16 == 0 {
                let sid = (c.0[0] >> 32) as u32;
                let st = self.r64(offset::STRTAB_BASE) & 0x000f_ffff_ffff_ffc0;
                let words = core::array::from_fn(|i| Self::mem(st + u64::from(sid) * 64, i));
                self.snapshots.borrow_mut().push((sid, words));
            }
            self.commands.borrow_mut().push(c);
            self.w32(offset::CMDQ_CONS, (cons + 1) & mask);
        }
    }

    fn ops(&self) -> Vec<u8> {
        self.commands.borrow().iter().map(Command::opcode).collect()
    }
}

// SAFETY: test double: pages are zeroed, aligned as asked, phys = virt on the host (so
// "DMA" is the fake reading them), the register frame is leaked memory; the clock is monotonic.
unsafe impl Platform for Fake {
    fn alloc_dma_pages(&self, count: usize, align: usize) -> Result<DmaPages> {
        let layout = Layout::from_size_align(count * PAGE_SIZE, align.max(PAGE_SIZE)).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        self.live.borrow_mut().insert(ptr as usize, (count, layout.align()));
        // SAFETY: fresh zeroed memory of `count` pages.
        Ok(unsafe { DmaPages::new(PhysAddr(ptr as u64), NonNull::new(ptr).unwrap(), count) })
    }
    unsafe fn free_dma_pages(&self, pages: DmaPages) {
        let (count, align) =
            self.live.borrow_mut().remove(&(pages.virt().as_ptr() as usize)).unwrap();
        assert_eq!(count, pages.count());
        // SAFETY: allocated above with this layout.
        unsafe {
            dealloc(
                pages.virt().as_ptr(),
                Layout::from_size_align(count * PAGE_SIZE, align).unwrap(),
            )
        };
    }
    fn map_mmio(&self, _base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
        assert_eq!(size, offset::FRAME_SIZE);
        Ok(NonNull::new(self.regs.cast()).unwrap())
    }
    fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
        Err(Error::MmioUnavailable { base: base.0, size: size as u64 })
    }
    fn write_barrier(&self) {}
    fn read_barrier(&self) {}
    fn now(&self) -> Instant {
        self.now.set(self.now.get() + 1000);
        Instant(self.now.get())
    }
    fn relax(&self) {
        self.step();
    }
}

fn linear(sid_bits: u8) -> UnitConfig {
    UnitConfig {
        sid_bits: Some(sid_bits),
        format: Some(StreamTableFormat::Linear),
        ..UnitConfig::default()
    }
}

#[test]
fn bring_up_programs_tables_queues_and_invalidates_caches() {
    let f = Fake::new();
    let unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(8)).unwrap();
    assert_eq!(
        f.r32(offset::CR0),
        cr0::SMMUEN | cr0::CMDQEN | cr0::EVENTQEN,
        "no PRIQ: IDR0.PRI = 0"
    );
    assert_ne!(f.r32(offset::CR2) & cr2::RECINVSID, 0);
    // Linear, LOG2SIZE 8 (STRTAB_BASE_CFG.FMT 17:16 = 0).
    assert_eq!(f.r32(offset::STRTAB_BASE_CFG), 8);
    assert_eq!(
        f.r64(offset::STRTAB_BASE) & 0x000f_ffff_ffff_ffc0,
        unit.stream_table().base_register() & 0x000f_ffff_ffff_ffc0
    );
    assert_eq!(f.r64(offset::CMDQ_BASE) & 0x1f, 8);
    assert_eq!(f.r64(offset::EVENTQ_BASE) & 0x1f, 7);
    assert_eq!(f.ops(), [opcode::CFGI_STE_RANGE, opcode::TLBI_NSNH_ALL, opcode::CMD_SYNC]);
    assert_eq!(f.commands.borrow()[0].0[1], 31, "CFGI_ALL");

    let f = Fake::new();
    let two = UnitConfig { sid_bits: Some(16), ..UnitConfig::default() };
    let unit = Unit::new(&f, PhysAddr(0x0905_0000), two).unwrap();
    assert_eq!(unit.stream_table().format(), StreamTableFormat::TwoLevel { split: 8 });
    // FMT 1, SPLIT 8 (10:6), LOG2SIZE 16.
    assert_eq!(f.r32(offset::STRTAB_BASE_CFG), (1 << 16) | (8 << 6) | 16);
}

#[test]
fn a_cmd_sync_that_never_completes_is_a_typed_timeout() {
    let f = Fake::new();
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(8)).unwrap();
    f.consume.set(false);
    let start = f.now.get();
    let err = unit.command_queue().submit(&f, &[Command::tlbi_nsnh_all()]).unwrap_err();
    assert_eq!(
        err,
        Error::Timeout { what: "SMMU CMD_SYNC completion (CMDQ_CONS)", waited_us: 1_000_000 }
    );
    assert!(f.now.get() - start <= 1_100_000_000, "bounded by the clock");
    // The hardware comes back: the next submission completes both batches.
    f.consume.set(true);
    unit.command_queue().submit(&f, &[Command::cfgi_all()]).unwrap();
    assert_eq!(
        &f.ops()[3..],
        [opcode::TLBI_NSNH_ALL, opcode::CMD_SYNC, opcode::CFGI_STE_RANGE, opcode::CMD_SYNC]
    );
}

#[test]
fn an_illegal_command_is_reported_skipped_and_acknowledged() {
    let f = Fake::new();
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(8)).unwrap();
    let before = f.commands.borrow().len();
    let err = unit
        .command_queue()
        .submit(&f, &[Command::tlbi_nsnh_all(), Command::from_raw([0x7f, 0]), Command::cfgi_all()])
        .unwrap_err();
    assert_eq!(err, Error::SmmuCommand { opcode: 0x7f, error: 1, slot: 4 });
    // The bad command became a CMD_SYNC; the rest of the batch ran.
    assert_eq!(
        &f.ops()[before..],
        [opcode::TLBI_NSNH_ALL, opcode::CMD_SYNC, opcode::CFGI_STE_RANGE, opcode::CMD_SYNC]
    );
    assert_eq!(f.r32(offset::GERROR), f.r32(offset::GERRORN), "acknowledged");
    assert_eq!(unit.command_queue().stats().rejected, 1);
    unit.command_queue().submit(&f, &[Command::tlbi_nsnh_all()]).unwrap();
    assert!(unit.handle_global_errors().is_empty());
}

#[test]
fn the_command_queue_wraps() {
    let f = Fake::new();
    let cfg = UnitConfig { cmdq_log2: 2, ..linear(4) };
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), cfg).unwrap();
    assert_eq!(unit.command_queue().log2_size(), 2);
    for i in 0..50u32 {
        unit.command_queue().submit(&f, &[Command::cfgi_ste(StreamId(i % 16), true)]).unwrap();
    }
    // Three commands at bring-up, then 50 pairs, through a 4-slot ring.
    let ops = f.ops();
    assert_eq!(ops.len(), 3 + 100);
    assert!(ops[3..].chunks(2).all(|c| c == [opcode::CFGI_STE, opcode::CMD_SYNC]));
    // A batch that cannot fit is refused up front.
    let big = [Command::tlbi_nsnh_all(); 4];
    assert!(matches!(unit.command_queue().submit(&f, &big), Err(Error::CapacityExceeded { .. })));
}

#[test]
fn a_valid_to_valid_change_passes_through_abort() {
    let f = Fake::new();
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(8)).unwrap();
    let asid = unit.allocate_asid().unwrap();
    let vmid = unit.allocate_vmid().unwrap();
    let sid = StreamId(8);
    let s1 = StreamConfig::Stage1(Stage1 { root: PhysAddr(0x1000), levels: 4, asid });
    unit.set_stream(&f, sid, s1).unwrap();
    let snaps = f.snapshots.borrow().clone();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].1[0] & 0xf, 0xb, "V and Config = S1_TRANS when first invalidated");
    let n = f.commands.borrow().len();
    // Stage 1 -> stage 2 changes words 0, 1, 2 and 3: abort in between.
    let s2 = StreamConfig::Stage2(Stage2 { root: PhysAddr(0x2000), levels: 4, vmid });
    unit.set_stream(&f, sid, s2).unwrap();
    let snaps = f.snapshots.borrow().clone();
    assert_eq!(snaps.len(), 3);
    assert_eq!(snaps[1].1[0], 1, "abort (V = 1, Config = 0) first");
    assert_eq!(snaps[2].1[0] & 0xf, 0xd, "then S2_TRANS");
    assert_eq!(snaps[2].1[3], 0x2000);
    // The old ASID's TLB entries go while the STE aborts; then the new STE is invalidated.
    let ops = f.ops();
    assert_eq!(
        &ops[n..],
        [
            opcode::CFGI_STE,
            opcode::TLBI_NH_ASID,
            opcode::CMD_SYNC,
            opcode::CFGI_STE,
            opcode::CMD_SYNC
        ]
    );
    assert_eq!(f.commands.borrow()[n + 1].0[0] >> 48, u64::from(asid));
    // A VMID change alters one word: changed in place, no abort step.
    let vmid2 = unit.allocate_vmid().unwrap();
    let n = f.commands.borrow().len();
    let s2b = StreamConfig::Stage2(Stage2 { root: PhysAddr(0x2000), levels: 4, vmid: vmid2 });
    unit.set_stream(&f, sid, s2b).unwrap();
    assert_eq!(&f.ops()[n..], [opcode::CFGI_STE, opcode::TLBI_S12_VMALL, opcode::CMD_SYNC]);
    assert_eq!(f.snapshots.borrow().last().unwrap().1[2] & 0xffff, u64::from(vmid2));
    // The same configuration again costs nothing.
    let n = f.commands.borrow().len();
    unit.set_stream(&f, sid, s2b).unwrap();
    assert_eq!(f.commands.borrow().len(), n);
    // Unallocated tags are refused before anything changes.
    let bad = StreamConfig::Stage1(Stage1 { root: PhysAddr(0x1000), levels: 4, asid: 77 });
    assert!(unit.set_stream(&f, sid, bad).is_err());
    assert!(unit.set_stream(&f, StreamId(256), StreamConfig::Abort).is_err(), "beyond the table");
}

#[test]
fn flush_issues_one_tlbi_per_page_then_frees_emptied_tables() {
    let f = Fake::new();
    // Without range invalidation (IDR3.RIL clear).
    f.w32(offset::IDR3, 0x1014);
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(8)).unwrap();
    let asid = unit.allocate_asid().unwrap();
    let mut t = IoPageTable::new(&f, Arm64Stage1::new(2), 4, PageSizes::ALL).unwrap();
    t.set_domain(u32::from(asid));
    let scope = TlbScope::Stage1 { asid, vmid: 0 };
    unit.flush(
        &f,
        t.map(&f, Iova(0x1000_0000), PhysAddr(0x4000_0000), 0x2000, Perms::RW).unwrap(),
        scope,
    )
    .unwrap();
    let n = f.commands.borrow().len();
    let live = f.live.borrow().len();
    unit.flush(&f, t.unmap(&f, Iova(0x1000_0000), 0x2000).unwrap(), scope).unwrap();
    let cmds = f.commands.borrow()[n..].to_vec();
    // Two pages, not leaf-only (the emptied tables were unlinked), then CMD_SYNC.
    assert_eq!(cmds.len(), 3);
    for (c, va) in cmds.iter().zip([0x1000_0000u64, 0x1000_1000]) {
        assert_eq!(c.opcode(), opcode::TLBI_NH_VA);
        assert_eq!(c.0[0] >> 48, u64::from(asid));
        assert_eq!(c.0[1], va, "VA, Leaf clear");
    }
    assert_eq!(f.live.borrow().len(), live - 3, "three emptied tables released after the sync");
    // A pending value for another tag is refused (and leaked, not freed).
    let p = t.map(&f, Iova(0x1000_0000), PhysAddr(0x4000_0000), 0x1000, Perms::RW).unwrap();
    assert!(unit.flush(&f, p, TlbScope::Stage1 { asid: asid + 1, vmid: 0 }).is_err());
    // A whole-domain change is one TLBI_NH_ASID.
    let n = f.commands.borrow().len();
    unit.flush(&f, t.destroy(&f), scope).unwrap();
    assert_eq!(&f.ops()[n..], [opcode::TLBI_NH_ASID, opcode::CMD_SYNC]);
}

#[test]
fn events_are_decoded_and_overflow_acknowledged() {
    let f = Fake::new();
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(8)).unwrap();
    let q = f.r64(offset::EVENTQ_BASE) & 0x000f_ffff_ffff_ffe0;
    let records: [[u64; 4]; 2] =
        [[0x13 | (8 << 32), 2 << 40, 0x1000_2000, 0], [0x02 | (0xf8 << 32), 0, 0, 0]];
    for (i, r) in records.iter().enumerate() {
        for (j, w) in r.iter().enumerate() {
            // SAFETY: slot `i` of the event queue ring the unit allocated (phys = virt).
            unsafe { (q as *mut u64).add(i * 4 + j).write_volatile(*w) };
        }
    }
    f.w32(offset::EVENTQ_PROD, 2 | (1 << 31));
    let mut seen = Vec::new();
    let d = unit.drain_events(&f, |e| seen.push(e));
    assert_eq!((d.events, d.overflow), (2, true));
    assert_eq!(seen[0].kind, EventKind::Permission);
    assert_eq!((seen[0].stream, seen[0].address), (StreamId(8), 0x1000_2000));
    assert_eq!((seen[1].kind, seen[1].stream), (EventKind::BadStreamId, StreamId(0xf8)));
    assert_eq!(f.r32(offset::EVENTQ_CONS), 2 | (1 << 31), "consumed, overflow acknowledged");
    let d = unit.drain_events(&f, |_| panic!("no more events"));
    assert_eq!((d.events, d.overflow), (0, false));
}

#[test]
fn two_level_tables_are_allocated_lazily() {
    let f = Fake::new();
    let cfg = UnitConfig { sid_bits: Some(16), ..UnitConfig::default() };
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), cfg).unwrap();
    assert_eq!(unit.stream_table().l2_tables(), 0);
    assert_eq!(unit.stream_entry(&f, StreamId(0x1234)).unwrap(), None);
    unit.set_stream(&f, StreamId(0x1234), StreamConfig::Bypass).unwrap();
    unit.set_stream(&f, StreamId(0x12ff), StreamConfig::Abort).unwrap();
    assert_eq!(unit.stream_table().l2_tables(), 1, "same level-2 table");
    assert_eq!(unit.stream_entry(&f, StreamId(0x1234)).unwrap().unwrap()[0], 0x9);
    assert_eq!(unit.stream_entry(&f, StreamId(0x12ff)).unwrap().unwrap()[0], 0x1);
    // The L1 descriptor: Span = SPLIT + 1 = 9, L2Ptr aligned.
    let st = f.r64(offset::STRTAB_BASE) & 0x000f_ffff_ffff_ffc0;
    let l1 = Fake::mem(st, 0x12);
    assert_eq!(l1 & 0x1f, 9);
    assert_eq!(
        Fake::mem(l1 & 0x000f_ffff_ffff_ffc0, 0x34 * 8),
        0x9,
        "STE 0x1234 in the level-2 table"
    );
    unit.set_stream(&f, StreamId(0x2000), StreamConfig::Abort).unwrap();
    assert_eq!(unit.stream_table().l2_tables(), 2);
}

#[test]
fn substreams_get_their_own_cds() {
    let f = Fake::new();
    // SSIDSIZE 4 (IDR1 bits 10:6).
    f.w32(offset::IDR1, 0x0273_0010 | (4 << 6));
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(8)).unwrap();
    assert_eq!(unit.substream_bits(), 4);
    let (a, b) = (unit.allocate_asid().unwrap(), unit.allocate_asid().unwrap());
    let sid = StreamId(3);
    let s1 = |asid| Stage1 { root: PhysAddr(0x1000 * u64::from(asid)), levels: 4, asid };
    // No stage-1 STE yet: refused.
    assert!(unit.set_substream(&f, sid, 1, Some(s1(a))).is_err());
    unit.set_stream(&f, sid, StreamConfig::Stage1(s1(a))).unwrap();
    let ste = unit.stream_entry(&f, sid).unwrap().unwrap();
    assert_eq!((ste[0] >> 59, ste[1] & 3), (4, 2), "S1CDMax 4, S1DSS = SSID0");
    let cds = ste[0] & 0x000f_ffff_ffff_ffc0;
    let n = f.commands.borrow().len();
    unit.set_substream(&f, sid, 5, Some(s1(b))).unwrap();
    assert_eq!(&f.ops()[n..], [opcode::CFGI_CD, opcode::CMD_SYNC]);
    assert_eq!((f.commands.borrow()[n].0[0] >> 12) & 0xf_ffff, 5, "CFGI_CD SubstreamID");
    let cd5 = Fake::mem(cds + 5 * 64, 0);
    assert_eq!((cd5 >> 31 & 1, cd5 >> 48), (1, u64::from(b)), "CD 5: V, ASID");
    assert_eq!(Fake::mem(cds + 5 * 64, 1), 0x1000 * u64::from(b));
    // Replacing a valid CD by one that differs in two words: invalid in between.
    let n = f.commands.borrow().len();
    unit.set_substream(&f, sid, 5, Some(s1(a))).unwrap();
    assert_eq!(
        &f.ops()[n..],
        [
            opcode::CFGI_CD,
            opcode::CMD_SYNC,
            opcode::CFGI_CD,
            opcode::TLBI_NH_ASID,
            opcode::CMD_SYNC
        ]
    );
    assert_eq!(f.commands.borrow()[n + 3].0[0] >> 48, u64::from(b), "the old ASID");
    // Clearing: V off, the old ASID invalidated.
    let n = f.commands.borrow().len();
    unit.set_substream(&f, sid, 5, None).unwrap();
    assert_eq!(Fake::mem(cds + 5 * 64, 0) >> 31 & 1, 0);
    assert_eq!(
        &f.ops()[n..],
        [
            opcode::CFGI_CD,
            opcode::CMD_SYNC,
            opcode::CFGI_CD,
            opcode::TLBI_NH_ASID,
            opcode::CMD_SYNC
        ]
    );
    assert!(unit.set_substream(&f, sid, 16, Some(s1(a))).is_err(), "beyond 2^4 CDs");
    assert!(unit.set_substream(&f, sid, 0, Some(s1(a))).is_err(), "SubstreamID 0 is the STE's CD");
}

#[test]
fn a_unit_left_enabled_aborts_traffic_before_it_is_reprogrammed() {
    let f = Fake::new();
    f.w32(offset::CR0, cr0::SMMUEN | cr0::CMDQEN);
    f.w32(offset::CR0ACK, cr0::SMMUEN | cr0::CMDQEN);
    f.w32(offset::GBPA, 1 << 12);
    let unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(4)).unwrap();
    // GBPA.ABORT (bit 20) set through the UPDATE handshake, SHCFG kept.
    assert_eq!(f.r32(offset::GBPA), (1 << 20) | (1 << 12));
    assert_eq!(unit.control(), cr0::SMMUEN | cr0::CMDQEN | cr0::EVENTQEN);
}

#[test]
fn a_unit_that_never_acknowledges_cr0_times_out() {
    struct Dead(Fake);
    // SAFETY: delegates to `Fake`, except that nothing happens between polls.
    unsafe impl Platform for Dead {
        fn alloc_dma_pages(&self, count: usize, align: usize) -> Result<DmaPages> {
            self.0.alloc_dma_pages(count, align)
        }
        unsafe fn free_dma_pages(&self, pages: DmaPages) {
            // SAFETY: forwarded contract.
            unsafe { self.0.free_dma_pages(pages) }
        }
        fn map_mmio(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
            self.0.map_mmio(base, size)
        }
        fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
            self.0.map_firmware(base, size)
        }
        fn write_barrier(&self) {}
        fn read_barrier(&self) {}
        fn now(&self) -> Instant {
            self.0.now()
        }
    }
    let d = Dead(Fake::new());
    // CR0 = 0 is acknowledged trivially (CR0ACK reads 0); enabling the command queue is not.
    let err = Unit::new(&d, PhysAddr(0x0905_0000), linear(4)).unwrap_err();
    assert_eq!(err, Error::Timeout { what: "SMMU CR0ACK", waited_us: 1_000_000 });
}

#[test]
fn range_tlbis_cover_each_range_with_few_commands() {
    let f = Fake::new();
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(8)).unwrap();
    assert!(unit.ids().idr3.ril());
    let vmid = unit.allocate_vmid().unwrap();
    let scope = TlbScope::Stage2 { vmid };
    let mut t =
        IoPageTable::new(&f, crate::iommu::pagetable::Arm64Stage2::new(2), 4, PageSizes::ALL)
            .unwrap();
    t.set_domain(u32::from(vmid));
    // 2 MiB block then a 4 KiB hole: the whole block is invalidated, non-leaf (a split).
    unit.flush(
        &f,
        t.map(&f, Iova(0x20_0000), PhysAddr(0x4020_0000), 0x20_0000, Perms::RW).unwrap(),
        scope,
    )
    .unwrap();
    let n = f.commands.borrow().len();
    unit.flush(&f, t.unmap(&f, Iova(0x20_1000), 0x1000).unwrap(), scope).unwrap();
    let cmds = f.commands.borrow()[n..].to_vec();
    assert_eq!(cmds.len(), 3, "{cmds:x?}");
    // Then TLBI_NH_ALL of the VMID (nested entries), then CMD_SYNC.
    assert_eq!(cmds[1].0, [u64::from(opcode::TLBI_NH_ALL) | (u64::from(vmid) << 32), 0]);
    // 512 pages = (0 + 1) * 2^9: NUM 0, SCALE 9, TG 4 KiB, Leaf clear, VMID.
    assert_eq!(cmds[0].opcode(), opcode::TLBI_S2_IPA);
    assert_eq!((cmds[0].0[0] >> 12) & 0x1f, 0);
    assert_eq!((cmds[0].0[0] >> 20) & 0x1f, 9);
    assert_eq!((cmds[0].0[0] >> 32) & 0xffff, u64::from(vmid));
    assert_eq!(cmds[0].0[1], 0x20_0000 | (1 << 10));
    // 7 pages at an odd start: 7 = 0b111 -> one command of (6 + 1) * 2^0.
    let n = f.commands.borrow().len();
    unit.flush(&f, t.unmap(&f, Iova(0x20_3000), 0x7000).unwrap(), scope).unwrap();
    let cmds = f.commands.borrow()[n..].to_vec();
    assert_eq!(cmds.len(), 3);
    assert_eq!(((cmds[0].0[0] >> 12) & 0x1f, (cmds[0].0[0] >> 20) & 0x1f), (6, 0));
    assert_eq!(cmds[0].0[1] & !0xfff, 0x20_3000);
    assert_eq!(cmds[0].0[1] & 1, 1, "leaf only");
    // 40 pages = 0b101000: (4 + 1) * 2^3 in one command.
    unit.flush(
        &f,
        t.map(&f, Iova(0x40_0000), PhysAddr(0x4040_0000), 0x28000, Perms::RW).unwrap(),
        scope,
    )
    .unwrap();
    let n = f.commands.borrow().len();
    unit.flush(&f, t.unmap(&f, Iova(0x40_0000), 0x28000).unwrap(), scope).unwrap();
    let cmds = f.commands.borrow()[n..].to_vec();
    assert_eq!(cmds.len(), 3);
    assert_eq!(((cmds[0].0[0] >> 12) & 0x1f, (cmds[0].0[0] >> 20) & 0x1f), (4, 3));
    assert_eq!(cmds[0].0[1], 0x40_0000 | (1 << 10), "not leaf-only: the emptied table went");
    unit.flush(&f, t.destroy(&f), scope).unwrap();
}

#[test]
fn wide_substreams_use_two_level_cd_tables() {
    let f = Fake::new();
    // CD2L (IDR0 bit 19) and SSIDSIZE 12.
    f.w32(offset::IDR0, 0x0d44_101b | (1 << 19));
    f.w32(offset::IDR1, 0x0273_0010 | (12 << 6));
    let mut unit = Unit::new(&f, PhysAddr(0x0905_0000), linear(8)).unwrap();
    assert_eq!(unit.cd_layout(), super::ste::CdLayout { bits: 12, two_level: true });
    let asid = unit.allocate_asid().unwrap();
    let sid = StreamId(9);
    let s1 = Stage1 { root: PhysAddr(0x7000), levels: 4, asid };
    unit.set_stream(&f, sid, StreamConfig::Stage1(s1)).unwrap();
    let ste = unit.stream_entry(&f, sid).unwrap().unwrap();
    // S1Fmt 0b01 (5:4), S1CDMax 12.
    assert_eq!(((ste[0] >> 4) & 3, ste[0] >> 59), (1, 12));
    let l1 = ste[0] & 0x000f_ffff_ffff_ffc0;
    // L1CD 0: V, L2Ptr 51:12; CD 0 in that leaf is valid with the ASID.
    let d0 = Fake::mem(l1, 0);
    assert_eq!(d0 & 1, 1);
    let cd0 = Fake::mem(d0 & 0x000f_ffff_ffff_f000, 0);
    assert_eq!((cd0 >> 31 & 1, cd0 >> 48), (1, u64::from(asid)));
    assert_eq!(Fake::mem(l1, 13), 0, "no leaf for SubstreamIDs 0x340..0x37f yet");
    let n = f.commands.borrow().len();
    unit.set_substream(&f, sid, 0x345, Some(s1)).unwrap();
    let d13 = Fake::mem(l1, 13);
    assert_eq!(d13 & 1, 1, "leaf allocated on first use");
    assert_eq!(Fake::mem(d13 & 0x000f_ffff_ffff_f000, 5 * 8) >> 48, u64::from(asid));
    // CFGI_CD for the SubstreamID, not leaf-only (the L1 descriptor changed).
    let c = f.commands.borrow()[n];
    assert_eq!((c.opcode(), (c.0[0] >> 12) & 0xf_ffff, c.0[1] & 1), (opcode::CFGI_CD, 0x345, 0));
    let n = f.commands.borrow().len();
    unit.set_substream(&f, sid, 0x346, Some(s1)).unwrap();
    assert_eq!(f.commands.borrow()[n].0[1] & 1, 1, "same leaf: leaf-only");
    // Clearing a CD in a leaf that does not exist is a no-op.
    let n = f.commands.borrow().len();
    unit.set_substream(&f, sid, 0xfff, None).unwrap();
    assert_eq!(f.commands.borrow().len(), n);
    assert!(unit.set_substream(&f, sid, 0x1000, Some(s1)).is_err(), "beyond 2^12");
}

#[test]
fn a_unit_is_small_enough_to_move_on_a_stack() {
    // Tables and queues live in platform pages; the unit holds handles and two ID pools.
    assert!(size_of::<Unit>() <= 512, "{} bytes", size_of::<Unit>());
}
