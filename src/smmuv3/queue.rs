//! The SMMU's circular queues in DMA memory (§3.5): the command queue the driver produces into,
//! and the event and PRI queues the SMMU produces into.
//!
//! # Indices
//! A PROD or CONS value holds an index of `log2` bits and, just above it, a wrap bit that flips
//! each time the index passes the end (§3.5.1). The queue is empty when both are equal, and full
//! when the indices are equal and the wrap bits differ, so every slot is usable. [`index`] has
//! the arithmetic, property-tested below.
//!
//! # Command queue
//! [`CommandQueue::submit`] writes one batch of commands and **one** CMD_SYNC behind it, writes
//! CMDQ_PROD once, and polls CMDQ_CONS (bounded) until the SMMU consumed the CMD_SYNC: a
//! completed CMD_SYNC means every earlier command completed (§4.6.1). Polling CONS is the
//! completion method that works everywhere; QEMU 10.0.2 has neither MSI nor SEV (notes §2.6).
//!
//! A command the SMMU rejects stops consumption with CONS pointing at it, CMDQ_CONS.ERR set and
//! SMMU_GERROR.CMDQ_ERR toggled (§7.1). The driver records the opcode and error code, replaces
//! the command in place with a CMD_SYNC (as Linux's `arm_smmu_cmdq_skip_err` does), makes it
//! visible and acknowledges through GERRORN, after which the SMMU resumes (QEMU resumes on the
//! GERRORN write). The rest of the batch completes and the submit returns
//! [`Error::SmmuCommand`].

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use crate::error::{Error, Result};
use crate::hal::{DmaPages, PAGE_SIZE, Platform, poll};
use crate::mmio::MmioRegion;

use super::command::{Command, CommandErrorKind, SyncSignal, opcode};
use super::event::Event;
use super::regs::{gerror, offset};

/// How long a CMD_SYNC may take to complete.
///
/// TIMEOUT: the specification gives no bound. QEMU consumes the whole queue synchronously inside
/// the CMDQ_PROD write; hardware completes TLB and configuration invalidations in microseconds.
/// Linux polls CMDQ_CONS for `ARM_SMMU_POLL_TIMEOUT_US`, one second, before declaring the SMMU
/// broken; so does this driver.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(1);

/// What a CMD_SYNC wait that timed out reports in [`Error::Timeout`]: the batch was written
/// and goes out when the SMMU resumes (a timeout waiting for queue space wrote nothing).
pub const SYNC_WAIT: &str = "SMMU CMD_SYNC completion (CMDQ_CONS)";

/// Queue index arithmetic (§3.5.1): `log2` index bits, then the wrap bit.
pub mod index {
    /// Mask of the index and wrap bits.
    pub const fn mask(log2: u8) -> u32 {
        (2u32 << log2) - 1
    }
    /// The slot a PROD/CONS value points at.
    pub const fn slot(value: u32, log2: u8) -> u32 {
        value & ((1u32 << log2) - 1)
    }
    /// The value after `value`, wrapping the index and toggling the wrap bit at the end.
    pub const fn next(value: u32, log2: u8) -> u32 {
        (value & mask(log2)).wrapping_add(1) & mask(log2)
    }
    /// Entries produced and not yet consumed (0 ..= 2^log2).
    pub const fn used(prod: u32, cons: u32, log2: u8) -> u32 {
        (prod & mask(log2)).wrapping_sub(cons & mask(log2)) & mask(log2)
    }
    /// Free slots.
    pub const fn free(prod: u32, cons: u32, log2: u8) -> u32 {
        (1u32 << log2).saturating_sub(used(prod, cons, log2))
    }
    /// Whether the queue is empty.
    pub const fn empty(prod: u32, cons: u32, log2: u8) -> bool {
        used(prod, cons, log2) == 0
    }
    /// Whether the queue is full.
    pub const fn full(prod: u32, cons: u32, log2: u8) -> bool {
        used(prod, cons, log2) == 1u32 << log2
    }
}

/// Bit 31 of EVENTQ_PROD / PRIQ_PROD (OVFLG) and of the CONS registers (OVACKFLG).
pub(crate) const OVERFLOW_FLAG: u32 = 1 << 31;
/// CMDQ_CONS.ERR, bits 30:24.
const CONS_ERR_SHIFT: u32 = 24;

/// A queue's memory: `2^log2` entries of `dwords` 64-bit words, aligned to its size.
#[derive(Debug)]
struct Ring {
    pages: DmaPages,
    log2: u8,
    dwords: usize,
}

impl Ring {
    fn new<P: Platform + ?Sized>(platform: &P, log2: u8, dwords: usize) -> Result<Self> {
        let bytes = (1usize << log2) * dwords * 8;
        let pages = bytes.div_ceil(PAGE_SIZE);
        // The base must be aligned to the queue size (§6.3.24: ADDR bits below the size are 0).
        let run = platform.alloc_dma_pages(pages, (pages * PAGE_SIZE).next_power_of_two())?;
        platform.sync_for_device(run.virt(), run.len());
        Ok(Self { pages: run, log2, dwords })
    }

    /// The Q_BASE register value: RA/WA hint (bit 62), address (51:5), LOG2SIZE (4:0).
    fn base_register(&self) -> u64 {
        (1 << 62) | (self.pages.phys().0 & 0x000f_ffff_ffff_ffe0) | u64::from(self.log2)
    }

    fn word(&self, slot: u32, word: usize) -> &AtomicU64 {
        let at = (slot as usize % (1usize << self.log2)) * self.dwords + word % self.dwords;
        // SAFETY: `at` indexes a 64-bit word inside the ring (slot and word reduced modulo the
        // ring's dimensions), which is DMA memory this ring owns, 8-byte aligned (page-aligned
        // base); the CPU only accesses it atomically, the SMMU by DMA.
        unsafe { AtomicU64::from_ptr(self.pages.virt().as_ptr().cast::<u64>().add(at)) }
    }
}

/// Counters, for diagnostics and tests.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CommandQueueStats {
    /// Batches submitted (each ends in one CMD_SYNC).
    pub batches: u64,
    /// Commands written, CMD_SYNCs included.
    pub commands: u64,
    /// CMDQ_PROD writes.
    pub doorbells: u64,
    /// Commands the SMMU rejected and the driver replaced.
    pub rejected: u64,
}

/// The command queue (§3.5, §4).
#[derive(Debug)]
pub struct CommandQueue {
    regs: MmioRegion,
    ring: Ring,
    /// Software copy of CMDQ_PROD (index and wrap).
    prod: u32,
    timeout: Duration,
    stats: CommandQueueStats,
}

impl CommandQueue {
    /// Allocates a queue of `2^log2` commands; `regs` is the SMMU's register frame. Not enabled.
    pub(crate) fn new<P: Platform + ?Sized>(
        platform: &P,
        regs: MmioRegion,
        log2: u8,
    ) -> Result<Self> {
        if log2 == 0 || log2 > 19 {
            return Err(Error::InvalidField {
                what: "SMMU command queue LOG2SIZE",
                value: u64::from(log2),
            });
        }
        Ok(Self {
            regs,
            ring: Ring::new(platform, log2, 2)?,
            prod: 0,
            timeout: SYNC_TIMEOUT,
            stats: CommandQueueStats::default(),
        })
    }

    /// CMDQ_BASE for this queue.
    pub(crate) fn base_register(&self) -> u64 {
        self.ring.base_register()
    }

    /// Resets the software producer after CMDQ_PROD and CMDQ_CONS were written 0.
    pub(crate) fn reset(&mut self) {
        self.prod = 0;
    }

    /// `log2` of the number of slots.
    pub const fn log2_size(&self) -> u8 {
        self.ring.log2
    }

    /// Counters.
    pub const fn stats(&self) -> CommandQueueStats {
        self.stats
    }

    /// Changes the CMD_SYNC bound (tests shorten it).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn cons(&self) -> u32 {
        self.regs.read32(offset::CMDQ_CONS)
    }

    fn write_slot(&self, slot: u32, c: &Command) {
        self.ring.word(slot, 1).store(c.0[1], Ordering::Relaxed);
        self.ring.word(slot, 0).store(c.0[0], Ordering::Relaxed);
    }

    fn read_slot(&self, slot: u32) -> Command {
        Command([
            self.ring.word(slot, 0).load(Ordering::Relaxed),
            self.ring.word(slot, 1).load(Ordering::Relaxed),
        ])
    }

    /// Submits `commands` and one CMD_SYNC behind them, writes CMDQ_PROD once, and waits
    /// (bounded) for the SMMU to consume the CMD_SYNC. See the module documentation for errors.
    pub fn submit<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        commands: &[Command],
    ) -> Result<()> {
        let log2 = self.ring.log2;
        // CAST: compared against the queue size, at most 2^19.
        let needed = commands.len().saturating_add(1);
        if needed > 1usize << log2 {
            return Err(Error::CapacityExceeded {
                what: "SMMU command queue batch",
                capacity: (1usize << log2) - 1,
            });
        }
        // CAST: needed <= 2^19.
        let needed = needed as u32;
        let mut reported: Option<Error> = None;
        // TIMEOUT: as for the CMD_SYNC itself; space frees up as the SMMU consumes.
        poll(platform, "SMMU command queue space (CMDQ_CONS)", self.timeout, || {
            if let Err(e) = self.recover(platform, &mut reported) {
                return Some(Err(e));
            }
            (index::free(self.prod, self.cons(), log2) >= needed).then_some(Ok(()))
        })??;
        for c in commands {
            self.write_slot(index::slot(self.prod, log2), c);
            self.prod = index::next(self.prod, log2);
        }
        self.write_slot(index::slot(self.prod, log2), &Command::sync(SyncSignal::None));
        self.prod = index::next(self.prod, log2);
        // The commands must be visible to the SMMU before it sees the new producer index.
        platform.sync_for_device(self.ring.pages.virt(), self.ring.pages.len());
        self.regs.write32(offset::CMDQ_PROD, self.prod);
        self.stats.batches += 1;
        self.stats.commands += u64::from(needed);
        self.stats.doorbells += 1;
        let target = self.prod;
        poll(platform, SYNC_WAIT, self.timeout, || {
            if let Err(e) = self.recover(platform, &mut reported) {
                return Some(Err(e));
            }
            // Done when the SMMU consumed everything up to our producer index. Compared with
            // `used` so a value past the target (a later batch) is not mistaken for less.
            (index::empty(target, self.cons(), log2)).then_some(Ok(()))
        })??;
        platform.read_barrier();
        match reported {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// If GERROR.CMDQ_ERR is active (differs from GERRORN), records the rejected command,
    /// replaces it with a CMD_SYNC (unless the CMD_SYNC itself failed, which is simply retried)
    /// and acknowledges the error so the SMMU resumes.
    fn recover<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        reported: &mut Option<Error>,
    ) -> Result<()> {
        let active = self.regs.read32(offset::GERROR) ^ self.regs.read32(offset::GERRORN);
        if active & gerror::CMDQ_ERR == 0 {
            return Ok(());
        }
        let cons = self.cons();
        let slot = index::slot(cons, self.ring.log2);
        // CAST: a 7-bit field.
        let code = ((cons >> CONS_ERR_SHIFT) & 0x7f) as u8;
        let bad = self.read_slot(slot);
        reported.get_or_insert(Error::SmmuCommand { opcode: bad.opcode(), error: code, slot });
        if CommandErrorKind::from_code(code) != CommandErrorKind::AtcInvalidationSync
            || bad.opcode() != opcode::CMD_SYNC
        {
            self.write_slot(slot, &Command::sync(SyncSignal::None));
            platform.sync_for_device(self.ring.pages.virt(), self.ring.pages.len());
        }
        self.stats.rejected += 1;
        // Acknowledge by toggling GERRORN.CMDQ_ERR to GERROR's value (§7.5).
        let gerrorn = self.regs.read32(offset::GERRORN);
        self.regs.write32(offset::GERRORN, gerrorn ^ gerror::CMDQ_ERR);
        Ok(())
    }
}

/// What one [`EventQueue::drain`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Drained {
    /// Events handed to the callback.
    pub events: u32,
    /// EVENTQ_PROD.OVFLG differed from the acknowledged value: events were lost (§7.4). It is
    /// acknowledged by this drain.
    pub overflow: bool,
}

/// A queue the SMMU produces into: the event queue (32-byte records) or the PRI queue
/// (16-byte records).
#[derive(Debug)]
pub struct ProducerQueue {
    regs: MmioRegion,
    ring: Ring,
    prod_reg: usize,
    cons_reg: usize,
    /// Software copy of CONS (index, wrap, OVACKFLG).
    cons: u32,
}

/// The event queue (§7.2, §7.3).
pub type EventQueue = ProducerQueue;

impl ProducerQueue {
    /// Allocates an event queue of `2^log2` records; `regs` is the SMMU's register frame.
    pub(crate) fn new_event<P: Platform + ?Sized>(
        platform: &P,
        regs: MmioRegion,
        log2: u8,
    ) -> Result<Self> {
        Self::new(platform, regs, log2, 4, offset::EVENTQ_PROD, offset::EVENTQ_CONS)
    }

    /// Allocates a PRI queue of `2^log2` page-request records (two dwords each, §8.1). The
    /// page-request service (issue 6) drains it; here it is only set up where IDR0.PRI says
    /// the SMMU has one.
    pub(crate) fn new_pri<P: Platform + ?Sized>(
        platform: &P,
        regs: MmioRegion,
        log2: u8,
    ) -> Result<Self> {
        Self::new(platform, regs, log2, 2, offset::PRIQ_PROD, offset::PRIQ_CONS)
    }

    fn new<P: Platform + ?Sized>(
        platform: &P,
        regs: MmioRegion,
        log2: u8,
        dwords: usize,
        prod_reg: usize,
        cons_reg: usize,
    ) -> Result<Self> {
        if log2 > 19 {
            return Err(Error::InvalidField {
                what: "SMMU queue LOG2SIZE",
                value: u64::from(log2),
            });
        }
        Ok(Self { regs, ring: Ring::new(platform, log2, dwords)?, prod_reg, cons_reg, cons: 0 })
    }

    /// The Q_BASE register value.
    pub(crate) fn base_register(&self) -> u64 {
        self.ring.base_register()
    }

    /// Resets the software consumer after PROD and CONS were written 0.
    pub(crate) fn reset(&mut self) {
        self.cons = 0;
    }

    /// `log2` of the number of slots.
    pub const fn log2_size(&self) -> u8 {
        self.ring.log2
    }

    /// The raw record at the consumer index, if the queue is not empty, without consuming it.
    fn peek(&self, prod: u32) -> Option<[u64; 4]> {
        if index::empty(prod, self.cons, self.ring.log2) {
            return None;
        }
        let slot = index::slot(self.cons, self.ring.log2);
        let mut words = [0u64; 4];
        for (i, w) in words.iter_mut().enumerate().take(self.ring.dwords) {
            *w = self.ring.word(slot, i).load(Ordering::Relaxed);
        }
        Some(words)
    }

    /// Hands every record the SMMU produced to `report` (raw words), consuming them, at most
    /// one queue's worth per call (so a stuck producer cannot keep the caller here), and
    /// acknowledges an overflow.
    pub fn drain_raw<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        mut report: impl FnMut([u64; 4]),
    ) -> Drained {
        let log2 = self.ring.log2;
        let prod_reg = self.regs.read32(self.prod_reg);
        // Records written before PROD moved are visible after this barrier.
        platform.read_barrier();
        let prod = prod_reg & index::mask(log2);
        let overflow = (prod_reg ^ self.cons) & OVERFLOW_FLAG != 0;
        let mut drained = Drained { events: 0, overflow };
        // Bounded by the queue size: a full queue holds 2^log2 records.
        for _ in 0..(1u32 << log2) {
            let Some(words) = self.peek(prod) else { break };
            report(words);
            drained.events += 1;
            self.cons = (self.cons & OVERFLOW_FLAG) | index::next(self.cons, log2);
        }
        // OVACKFLG takes PROD's OVFLG: the overflow is acknowledged (§7.4).
        self.cons = (self.cons & !OVERFLOW_FLAG) | (prod_reg & OVERFLOW_FLAG);
        self.regs.write32(self.cons_reg, self.cons);
        drained
    }

    /// The producer register as the SMMU wrote it (index, wrap and OVFLG; not masked).
    pub(crate) fn read_prod(&self) -> u32 {
        self.regs.read32(self.prod_reg)
    }

    /// The software consumer value (index, wrap and OVACKFLG).
    pub(crate) const fn consumer(&self) -> u32 {
        self.cons
    }

    /// The first two words of the record in `slot` (reduced modulo the queue size).
    pub(crate) fn read_record(&self, slot: u32) -> [u64; 2] {
        [
            self.ring.word(slot, 0).load(Ordering::Relaxed),
            self.ring.word(slot, 1).load(Ordering::Relaxed),
        ]
    }

    /// Sets the consumer value (index, wrap and OVACKFLG) and writes it to the CONS register.
    pub(crate) fn publish_consumer(&mut self, value: u32) {
        self.cons = value & (index::mask(self.ring.log2) | OVERFLOW_FLAG);
        self.regs.write32(self.cons_reg, self.cons);
    }

    /// The SMMU's register frame (for the queue's IRQ configuration registers).
    pub(crate) const fn registers(&self) -> &MmioRegion {
        &self.regs
    }

    /// Decodes and hands every event record to `report` (see [`Self::drain_raw`]).
    pub fn drain<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        mut report: impl FnMut(Event),
    ) -> Drained {
        self.drain_raw(platform, |w| report(Event::decode(w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wrap_arithmetic_by_hand() {
        // 4 slots: values 0..8, wrap bit 4.
        assert_eq!(index::next(3, 2), 4);
        assert_eq!(index::next(7, 2), 0);
        assert!(index::full(4, 0, 2));
        assert!(index::empty(5, 5, 2));
        assert_eq!(index::used(1, 6, 2), 3);
        assert_eq!(index::free(1, 6, 2), 1);
        assert_eq!(index::slot(6, 2), 2);
        // Stray bits above the wrap bit (ERR in CMDQ_CONS) are ignored.
        assert!(index::empty(0x0100_0003, 3, 2));
    }

    proptest! {
        /// Producing `n <= size` entries from any consistent state leaves `used` at the old value
        /// plus `n`, and consuming them brings the queue back to empty; the index stays in range.
        #[test]
        fn produce_consume(log2 in 0u8..=19, start in any::<u32>(), n in 0u32..64, k in 0u32..64) {
            let size = 1u32 << log2;
            let cons0 = start & index::mask(log2);
            let k = k.min(size);
            // Some entries already in the queue.
            let mut prod = cons0;
            for _ in 0..k { prod = index::next(prod, log2); }
            prop_assert_eq!(index::used(prod, cons0, log2), k);
            let n = n.min(size - k);
            for _ in 0..n { prod = index::next(prod, log2); }
            prop_assert_eq!(index::used(prod, cons0, log2), k + n);
            prop_assert_eq!(index::full(prod, cons0, log2), k + n == size);
            prop_assert_eq!(index::free(prod, cons0, log2), size - k - n);
            prop_assert!(index::slot(prod, log2) < size);
            prop_assert!(prod <= index::mask(log2));
            let mut cons = cons0;
            for _ in 0..(k + n) { cons = index::next(cons, log2); }
            prop_assert!(index::empty(prod, cons, log2));
            prop_assert_eq!(prod, cons);
        }

        /// Going around the ring twice returns to the same value; once flips only the wrap bit.
        #[test]
        fn full_circle(log2 in 0u8..=12, v in any::<u32>()) {
            let v = v & index::mask(log2);
            let mut w = v;
            for _ in 0..(1u32 << log2) { w = index::next(w, log2); }
            prop_assert_eq!(w, v ^ (1 << log2));
            for _ in 0..(1u32 << log2) { w = index::next(w, log2); }
            prop_assert_eq!(w, v);
        }
    }
}
