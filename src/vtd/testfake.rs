//! A tiny VT-d stand-in for the queue and table tests, used until `sim::vtd` is available: a
//! register file in host memory and DMA "pages" whose physical address is their host address.
//! The unit "runs" whenever the driver reads the clock or relaxes in a poll: it follows GCMD
//! into GSTS, clears FSTS bits written as 1, processes the invalidation queue from IQH to IQT
//! (status writes of wait descriptors, IQE on a bad descriptor, ITE on a chosen device-TLB
//! invalidation). Translation tests use `sim::vtd`, which models the tables and caches.
//!
//! The checks follow the specification and QEMU 10.0.2 (notes §1.6), not the driver.

use std::alloc::{Layout, alloc_zeroed};
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::vec::Vec;

use crate::addr::PhysAddr;
use crate::error::{Error, Result};
use crate::hal::{DmaPages, Instant, PAGE_SIZE, Platform};

use super::descriptor::Descriptor;
use super::regs::offset;

/// QEMU's CAP (notes §1.2): ND 6, SAGAW 3/4-level, PSI, MAMV 18, DRD/DWD, one fault register.
pub(crate) const QEMU_CAP: u64 = 0x00d2_008c_222f_0606;
/// QEMU's legacy ECAP: QI, IR, PT.
pub(crate) const LEGACY_ECAP: u64 = 0x0000_0000_00f0_0f4a;
/// QEMU's scalable second-stage ECAP: SMTS, SLTS, SRS, plus PASID (bit 40).
pub(crate) const SCALABLE_ECAP: u64 = 0x0000_4900_80f0_0f4a;

const GCMD_IDLE: u32 = u32::MAX;
/// FSTS.FRI is read-only: the fake keeps a marker there, so a driver write (which carries only
/// RW1C bits) is told apart from the value the fake left.
const FSTS_MARK: u32 = 0xa5 << 8;

pub(crate) struct FakeVtd {
    regs: *mut u64,
    now: Cell<u64>,
    steps: Cell<u64>,
    slow: Cell<u64>,
    stalled: Cell<bool>,
    fsts: Cell<u32>,
    gsts: Cell<u32>,
    iqt_seen: Cell<u64>,
    iqt_writes: Cell<u64>,
    fail_device_tlb: Cell<Option<u16>>,
    processed: RefCell<Vec<Descriptor>>,
    freed: Cell<usize>,
}

impl FakeVtd {
    pub(crate) fn new(cap: u64, ecap: u64) -> Self {
        let regs: &'static mut [u64] = Box::leak(vec![0u64; 0x230 / 8].into_boxed_slice());
        let regs = regs.as_mut_ptr();
        let f = Self {
            regs,
            now: Cell::new(0),
            steps: Cell::new(0),
            slow: Cell::new(1),
            stalled: Cell::new(false),
            fsts: Cell::new(0),
            gsts: Cell::new(0),
            iqt_seen: Cell::new(0),
            iqt_writes: Cell::new(0),
            fail_device_tlb: Cell::new(None),
            processed: RefCell::new(Vec::new()),
            freed: Cell::new(0),
        };
        f.w64(offset::VER, 0x10);
        f.w64(offset::CAP, cap);
        f.w64(offset::ECAP, ecap);
        f.w32(offset::GCMD, GCMD_IDLE);
        f.w32(offset::FSTS, FSTS_MARK);
        f
    }

    fn r32(&self, off: usize) -> u32 {
        // SAFETY: `off` is a register offset inside the leaked 0x230-byte register file.
        unsafe { self.regs.cast::<u8>().add(off).cast::<u32>().read_volatile() }
    }
    fn w32(&self, off: usize, v: u32) {
        // SAFETY: as in `r32`.
        unsafe { self.regs.cast::<u8>().add(off).cast::<u32>().write_volatile(v) }
    }
    fn r64(&self, off: usize) -> u64 {
        // SAFETY: as in `r32`; 64-bit registers are 8-byte aligned.
        unsafe { self.regs.cast::<u8>().add(off).cast::<u64>().read_volatile() }
    }
    fn w64(&self, off: usize, v: u64) {
        // SAFETY: as in `r64`.
        unsafe { self.regs.cast::<u8>().add(off).cast::<u64>().write_volatile(v) }
    }

    /// Reads physical memory (identity-mapped host memory the fake handed out).
    fn read_phys(&self, addr: u64) -> u64 {
        // SAFETY: tests only give the unit addresses of pages this platform allocated.
        unsafe { (addr as *const u64).read_volatile() }
    }
    fn write_phys32(&self, addr: u64, v: u32) {
        // SAFETY: as in `read_phys`.
        unsafe { (addr as *mut u32).write_volatile(v) }
    }

    pub(crate) fn set_slow(&self, every: u64) {
        self.slow.set(every.max(1));
    }
    pub(crate) fn set_stalled(&self, stalled: bool) {
        self.stalled.set(stalled);
    }
    pub(crate) fn fail_next_device_tlb(&self, sid: u16) {
        self.fail_device_tlb.set(Some(sid));
    }
    pub(crate) fn processed(&self) -> Vec<Descriptor> {
        self.processed.borrow().clone()
    }
    pub(crate) fn clear_processed(&self) {
        self.processed.borrow_mut().clear();
    }
    pub(crate) fn iqt_writes(&self) -> u64 {
        self.iqt_writes.get()
    }
    pub(crate) fn last_iqt(&self) -> u64 {
        self.r64(offset::IQT)
    }
    pub(crate) fn fsts(&self) -> u32 {
        self.step();
        self.fsts.get()
    }
    pub(crate) fn elapsed_us(&self) -> u64 {
        self.now.get() / 1000
    }
    pub(crate) fn freed_pages(&self) -> usize {
        self.freed.get()
    }
    fn step(&self) {
        self.steps.set(self.steps.get() + 1);
        // FSTS: a driver write leaves the RW1C bits to clear in place of the marker.
        let m = self.r32(offset::FSTS);
        if m != self.fsts.get() | FSTS_MARK {
            self.fsts.set(self.fsts.get() & !(m & 0x7d));
        }
        // GCMD -> GSTS.
        let cmd = self.r32(offset::GCMD);
        if cmd != GCMD_IDLE {
            self.w32(offset::GCMD, GCMD_IDLE);
            let mut gsts = self.gsts.get();
            if cmd & (1 << 30) != 0 {
                gsts |= 1 << 30;
            }
            gsts = (gsts & !(1 << 31)) | (cmd & (1 << 31));
            if cmd & (1 << 26) != 0 && gsts & (1 << 26) == 0 {
                self.w64(offset::IQH, 0);
            }
            gsts = (gsts & !(1 << 26)) | (cmd & (1 << 26));
            self.gsts.set(gsts);
            self.w32(offset::GSTS, gsts);
        }
        let iqt = self.r64(offset::IQT);
        if iqt != self.iqt_seen.get() {
            self.iqt_seen.set(iqt);
            self.iqt_writes.set(self.iqt_writes.get() + 1);
        }
        if self.gsts.get() & (1 << 26) != 0
            && !self.stalled.get()
            && self.steps.get().is_multiple_of(self.slow.get())
            && self.fsts.get() & 0x50 == 0
        {
            self.run_queue();
        }
        self.w32(offset::FSTS, self.fsts.get() | FSTS_MARK);
    }

    fn run_queue(&self) {
        let iqa = self.r64(offset::IQA);
        let wide = iqa & (1 << 11) != 0;
        let (shift, size) = if wide { (5, 32) } else { (4, 16) };
        let entries = (1u64 << (iqa & 7)) * 4096 / size;
        let base = iqa & !0xfff;
        let tail = self.r64(offset::IQT) >> shift;
        let mut head = self.r64(offset::IQH) >> shift;
        while head != tail {
            let at = base + head * size;
            let mut words = [0u64; 4];
            for (i, w) in words.iter_mut().take((size / 8) as usize).enumerate() {
                *w = self.read_phys(at + 8 * i as u64);
            }
            let d = Descriptor::from_raw(words);
            let qw0 = words[0];
            let kind = d.kind();
            // IQEI (§11.4.9.9): 3 = invalid type, 4 = reserved field, 5 = invalid width.
            let info = match kind {
                1..=5 => 0,
                6..=8 if !wide => 5,
                6..=8 => 0,
                _ => 3,
            };
            let info = if info == 0 && kind == 5 && (qw0 & 0x30 == 0 || qw0 & 0x80 != 0) {
                4
            } else {
                info
            };
            assert!(!(kind == 5 && qw0 & 0x30 == 0x30), "QEMU would abort: wait with SW and IF");
            if info != 0 {
                self.fsts.set(self.fsts.get() | 0x10);
                self.w64(offset::IQERCD, info);
                break;
            }
            if matches!(kind, 3 | 8)
                && let Some(sid) = self.fail_device_tlb.take()
            {
                self.fsts.set(self.fsts.get() | 0x40);
                self.w64(offset::IQERCD, u64::from(sid) << 32);
                // Pending waits are discarded with the timed-out invalidation.
                head = tail;
                break;
            }
            match kind {
                5 if qw0 & 0x20 != 0 => self.write_phys32(words[1], (qw0 >> 32) as u32),
                _ => {}
            }
            self.processed.borrow_mut().push(d);
            head = (head + 1) % entries;
        }
        self.w64(offset::IQH, head << shift);
    }
}

// SAFETY: test double: DMA pages are zeroed host allocations at their own address, the register
// file is leaked host memory, and the clock only moves forward.
unsafe impl Platform for FakeVtd {
    fn alloc_dma_pages(&self, count: usize, align: usize) -> Result<DmaPages> {
        let layout = Layout::from_size_align(count * PAGE_SIZE, align.max(PAGE_SIZE))
            .map_err(|_| Error::OutOfMemory { pages: count })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let virt = NonNull::new(ptr).ok_or(Error::OutOfMemory { pages: count })?;
        // SAFETY: freshly allocated, zeroed, never freed (leaked on purpose): identity "physical".
        Ok(unsafe { DmaPages::new(PhysAddr(ptr as u64), virt, count) })
    }
    unsafe fn free_dma_pages(&self, pages: DmaPages) {
        self.freed.set(self.freed.get() + pages.count());
    }
    fn map_mmio(&self, _base: PhysAddr, _size: usize) -> Result<NonNull<u8>> {
        Ok(NonNull::new(self.regs.cast()).expect("register file"))
    }
    fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
        self.map_mmio(base, size)
    }
    fn write_barrier(&self) {}
    fn read_barrier(&self) {}
    fn now(&self) -> Instant {
        self.now.set(self.now.get() + 10_000);
        self.step();
        Instant(self.now.get())
    }
    fn relax(&self) {
        self.step();
    }
}
