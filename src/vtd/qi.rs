//! The invalidation queue (VT-d spec §6.5.2): a ring of descriptors in DMA memory that software
//! fills at the tail (IQT) and the unit consumes from the head (IQH).
//!
//! Every [`submit`](InvalidationQueue::submit) appends its batch plus **one** wait descriptor
//! whose status write lands in a status slot in DMA memory, rings IQT once, and polls that slot
//! with a bound, checking FSTS.IQE/ITE/ICE on every poll as Linux's `qi_submit_sync` does:
//!
//! - **IQE** (a malformed descriptor, §6.5.2.10): the unit stops at the bad descriptor with IQH
//!   pointing at it. The driver records its slot, batch position, type and IQERCD.IQEI, replaces
//!   it in place with a harmless wait (status write to a scratch slot), clears IQE and rewrites
//!   IQT (QEMU resumes only on an IQT write), and the unit restarts from IQH; the rest of the
//!   batch completes and the submit returns [`Error::InvalidDescriptor`]. Later submissions
//!   complete normally. (Linux instead copies the batch's wait over the bad descriptor and
//!   resubmits the whole batch.)
//! - **ITE** (a device-TLB invalidation timed out in hardware): the unit may discard the wait
//!   descriptors pending behind it; the driver clears ITE, submits a fresh wait if the unit's
//!   head reached the tail without writing the status, and, once the wait completes, reports
//!   [`Error::DeviceTlbInvalidation`] with IQERCD.ITESID (bits 47:32). The device-TLB
//!   invalidation itself is not retried: the caller decides (the device may be gone).
//! - **ICE** (bad device-TLB completion): cleared and reported with IQERCD.ICESID (bits 63:48)
//!   once the batch's wait completes.
//!
//! A batch that times out leaves its descriptors queued: later submissions wait (bounded) for
//! space behind them, and their own status values (a sequence number per batch) are never
//! confused with the late one.
//!
//! All of FSTS, ICS and the other 32-bit registers are written with 32-bit accesses (QEMU aborts
//! on 8-byte writes to them).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use heapless::Vec;

use crate::addr::{Pasid, PhysAddr, RequesterId};
use crate::error::{Error, Result};
use crate::hal::{DmaPages, PAGE_SIZE, Platform, poll};
use crate::iommu::PendingInvalidation;
use crate::mmio::MmioRegion;

use super::descriptor::{
    self as desc, ContextCacheScope, Descriptor, Drain, PasidCacheScope, WaitCompletion,
};
use super::fault::FaultStatus;
use super::regs::{Capability, ExtendedCapability, offset};

/// Queue length used when the caller has no reason to pick another: 256 descriptors, one page
/// of 128-bit or two pages of 256-bit descriptors.
pub const DEFAULT_ENTRIES: usize = 256;

/// How long a batch of IOTLB, context-cache, PASID-cache and interrupt-entry-cache
/// invalidations may take.
///
/// TIMEOUT: the specification gives no bound. QEMU completes every descriptor synchronously
/// inside the IQT write; hardware finishes such invalidations in microseconds. Linux's
/// `qi_submit_sync` waits without a bound (checking IQE/ITE/ICE on every loop, as this driver
/// does); a unit that has not written the status after a second is broken, the same bound the
/// GCMD handshake uses ([`super::unit::COMMAND_TIMEOUT`]).
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a batch that contains device-TLB invalidations may take.
///
/// TIMEOUT: an ATS invalidation waits for the device's Invalidation Completion, which PCIe Base
/// 6.0 §10.3.1 lets take up to one minute (+50%/-0%); the unit itself reports a device that
/// overruns its own timer as FSTS.ITE, which this driver handles. So the software bound is
/// 90 seconds, past the latest completion a conforming device may send.
pub const DEVICE_TLB_TIMEOUT: Duration = Duration::from_secs(90);

/// Most descriptors one [`InvalidationQueue::flush`] issues before it widens to a
/// domain-selective invalidation (each range splits into naturally aligned power-of-two blocks).
pub const MAX_FLUSH_DESCRIPTORS: usize = 32;

/// What [`Error::Timeout`] names when a batch was written and the doorbell rung but its wait
/// status never came: the batch stays queued and runs if the unit resumes (unlike a timeout
/// waiting for space, when nothing was written).
pub const WAIT_STATUS: &str = "VT-d invalidation wait status";

/// Descriptor width of the queue (IQA.DW, §11.4.7.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DescriptorWidth {
    /// 128-bit descriptors (legacy mode).
    Bits128,
    /// 256-bit descriptors (needs ECAP.SMTS; required for PASID-based descriptors).
    Bits256,
}

impl DescriptorWidth {
    const fn bytes(self) -> usize {
        match self {
            DescriptorWidth::Bits128 => 16,
            DescriptorWidth::Bits256 => 32,
        }
    }
    /// Shift from a slot index to the IQH/IQT register value (index << 4 or << 5).
    const fn shift(self) -> u32 {
        match self {
            DescriptorWidth::Bits128 => 4,
            DescriptorWidth::Bits256 => 5,
        }
    }
}

/// Which IOTLB a [`PendingInvalidation`] is flushed from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FlushScope {
    /// Second-stage translations tagged with the domain ID (legacy mode, and scalable-mode
    /// PASID entries with PGTT second-stage): IOTLB descriptors (§6.5.2.3), as Linux does for
    /// second-stage domains.
    Iotlb,
    /// First-stage translations of one PASID in the domain (scalable mode, PGTT first-stage):
    /// PASID-based IOTLB descriptors (§6.5.2.4), which need a 256-bit queue.
    PasidIotlb(Pasid),
}

/// Counters, for diagnostics and tests.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QueueStats {
    /// Batches submitted.
    pub batches: u64,
    /// Descriptors written, waits included.
    pub descriptors: u64,
    /// Wait descriptors written (one per batch, plus resubmissions after ITE).
    pub waits: u64,
    /// Descriptors the unit rejected (IQE) and the driver replaced.
    pub rejected: u64,
    /// IQT writes.
    pub doorbells: u64,
}

/// Status slot the batch waits write (offset in the status page).
const STATUS_SLOT: usize = 0;
/// Scratch slot the no-op replacing a rejected descriptor writes.
const SCRATCH_SLOT: usize = 1;

/// An invalidation queue in DMA memory, with its status page.
///
/// Created and enabled by [`Unit::enable_queued_invalidation`](super::Unit::enable_queued_invalidation);
/// it then stays enabled for the life of the unit.
#[derive(Debug)]
pub struct InvalidationQueue {
    regs: MmioRegion,
    ring: DmaPages,
    status: DmaPages,
    width: DescriptorWidth,
    entries: u32,
    /// Software copy of IQT, as a slot index.
    tail: u32,
    /// Status value of the last wait written.
    sequence: u32,
    cap: Capability,
    ecap: ExtendedCapability,
    timeout: Duration,
    stats: QueueStats,
}

impl InvalidationQueue {
    /// Allocates a queue of `entries` descriptors of `width` (a power of two, one to 128 pages)
    /// and its status page. `regs` is the unit's register set. The queue is not yet enabled.
    pub(crate) fn new<P: Platform + ?Sized>(
        platform: &P,
        regs: MmioRegion,
        cap: Capability,
        ecap: ExtendedCapability,
        entries: usize,
        width: DescriptorWidth,
    ) -> Result<Self> {
        if !ecap.qi() {
            return Err(Error::Unsupported {
                what: "VT-d ECAP.QI (queued invalidation)",
                value: ecap.0,
            });
        }
        if width == DescriptorWidth::Bits256 && !ecap.smts() {
            return Err(Error::Unsupported {
                what: "VT-d ECAP.SMTS (256-bit descriptors)",
                value: ecap.0,
            });
        }
        let bytes = entries.saturating_mul(width.bytes());
        let pages = bytes / PAGE_SIZE;
        // IQA.QS is 3 bits: 2^0..2^7 pages.
        if !entries.is_power_of_two()
            || !bytes.is_multiple_of(PAGE_SIZE)
            || !(1..=128).contains(&pages)
        {
            // CAST: usize fits u64 on every target this crate supports.
            return Err(Error::InvalidField {
                what: "VT-d invalidation queue entries",
                value: entries as u64,
            });
        }
        let ring = platform.alloc_dma_pages(pages, pages * PAGE_SIZE)?;
        let status = match platform.alloc_dma_pages(1, PAGE_SIZE) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: the ring was never given to the unit.
                unsafe { platform.free_dma_pages(ring) };
                return Err(e);
            }
        };
        Ok(Self {
            regs,
            ring,
            status,
            width,
            // CAST: at most 128 pages * 256 = 32768 entries.
            entries: entries as u32,
            tail: 0,
            sequence: 0,
            cap,
            ecap,
            timeout: QUEUE_TIMEOUT,
            stats: QueueStats::default(),
        })
    }

    /// The IQA value for this queue: base, DW, QS (§11.4.7.3).
    pub(crate) fn iqa(&self) -> u64 {
        let pages = self.ring.len() / PAGE_SIZE;
        let qs = u64::from(pages.trailing_zeros());
        let dw = match self.width {
            DescriptorWidth::Bits128 => 0,
            DescriptorWidth::Bits256 => 1 << 11,
        };
        self.ring.phys().0 | dw | qs
    }

    /// Resets the software tail after the unit (re-)enabled the queue, which zeroes IQH; the
    /// caller has written IQT = 0.
    pub(crate) fn reset_tail(&mut self) {
        self.tail = 0;
    }

    /// Number of slots.
    pub const fn entries(&self) -> usize {
        self.entries as usize
    }

    /// Descriptor width.
    pub const fn width(&self) -> DescriptorWidth {
        self.width
    }

    /// Counters.
    pub const fn stats(&self) -> QueueStats {
        self.stats
    }

    /// The bound for batches without device-TLB descriptors (default [`QUEUE_TIMEOUT`]).
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the bound for batches without device-TLB descriptors (a hypervisor that knows its
    /// hardware may shorten it; tests do).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Physical address of the queue ring.
    pub fn ring_address(&self) -> PhysAddr {
        self.ring.phys()
    }

    fn words(&self) -> usize {
        self.width.bytes() / 8
    }

    fn slot(&self, index: u32, word: usize) -> &AtomicU64 {
        debug_assert!(index < self.entries && word < self.words());
        let at = index as usize * self.words() + word;
        // SAFETY: `at * 8` lies inside the ring (index < entries, word < words per slot), which is
        // DMA memory this queue owns, 8-byte aligned (page-aligned base), and only ever accessed
        // atomically by the CPU; the unit reads it by DMA, which atomics tolerate.
        unsafe { AtomicU64::from_ptr(self.ring.virt().as_ptr().cast::<u64>().add(at)) }
    }

    fn status_slot(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: slot 0 or 1 of the 4 KiB status page this queue owns; 4-byte aligned; the
        // unit writes it by DMA and the CPU only reads it atomically (hvisor's stack-local status
        // word, read non-volatile, is the bug this avoids).
        unsafe { AtomicU32::from_ptr(self.status.virt().as_ptr().cast::<u32>().add(slot)) }
    }

    fn status_address(&self, slot: usize) -> PhysAddr {
        // CAST: slot is 0 or 1.
        PhysAddr(self.status.phys().0 + 4 * slot as u64)
    }

    fn write_slot(&self, index: u32, descriptor: &Descriptor) {
        let words = descriptor.words();
        for (i, w) in words.iter().take(self.words()).enumerate() {
            self.slot(index, i).store(*w, Ordering::Relaxed);
        }
    }

    fn read_slot(&self, index: u32) -> Descriptor {
        let mut words = [0u64; 4];
        for (i, w) in words.iter_mut().take(self.words()).enumerate() {
            *w = self.slot(index, i).load(Ordering::Relaxed);
        }
        Descriptor::from_raw(words)
    }

    fn head(&self) -> u32 {
        // CAST: IQH bits 18:4 (or 18:5) hold the index; reduced modulo the size in case the
        // unit reports something past the end.
        ((self.regs.read64(offset::IQH) >> self.width.shift()) as u32) % self.entries
    }

    fn free_slots(&self, head: u32) -> u32 {
        // One slot stays empty so that a full queue (tail + 1 == head) differs from an empty one.
        (head + self.entries - self.tail - 1) % self.entries
    }

    fn ring_doorbell<P: Platform + ?Sized>(&mut self, platform: &P) {
        // The descriptors must be visible to the unit before it sees the new tail.
        platform.sync_for_device(self.ring.virt(), self.ring.len());
        self.regs.write64(offset::IQT, u64::from(self.tail) << self.width.shift());
        self.stats.doorbells += 1;
    }

    fn next_sequence(&mut self) -> u32 {
        // Never 0, the status page's initial value.
        self.sequence = self.sequence.wrapping_add(1).max(1);
        self.sequence
    }

    fn check(&self, d: &Descriptor) -> Result<()> {
        if d.needs_wide_queue() && self.width == DescriptorWidth::Bits128 {
            return Err(Error::Unsupported {
                what: "VT-d descriptor needs a 256-bit queue (IQA.DW)",
                value: u64::from(d.kind()),
            });
        }
        // A wait with both SW and IF aborts QEMU; the builders cannot make one, from_raw can.
        if d.kind() == desc::kind::WAIT && d.words()[0] & 0x30 == 0x30 {
            return Err(Error::InvalidField {
                what: "VT-d wait descriptor with both SW and IF",
                value: d.words()[0],
            });
        }
        Ok(())
    }

    /// Submits `descriptors` as one batch followed by one wait descriptor, rings IQT once, and
    /// waits (bounded) for the wait's status write.
    ///
    /// Fails with [`Error::InvalidDescriptor`] if the unit rejected one of the descriptors (it
    /// was replaced by a no-op and the rest of the batch completed), with
    /// [`Error::DeviceTlbInvalidation`] on ITE/ICE, and with [`Error::Timeout`] if the status
    /// never came; in every case the queue stays usable for later submissions.
    pub fn submit<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        descriptors: &[Descriptor],
    ) -> Result<()> {
        self.submit_batch(platform, descriptors, false)
    }

    /// As [`Self::submit`], but the batch's wait descriptor also drains page requests (PD,
    /// §6.5.2.8 and §7.10): when its status is written, every page request the unit received
    /// before it is in the page request queue. Needs ECAP.PDS ([`Error::Unsupported`] otherwise).
    pub fn submit_with_page_drain<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        descriptors: &[Descriptor],
    ) -> Result<()> {
        if !self.ecap.pds() {
            return Err(Error::Unsupported {
                what: "VT-d ECAP.PDS (page-request drain)",
                value: self.ecap.0,
            });
        }
        self.submit_batch(platform, descriptors, true)
    }

    fn submit_batch<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        descriptors: &[Descriptor],
        page_drain: bool,
    ) -> Result<()> {
        for d in descriptors {
            self.check(d)?;
        }
        // CAST: checked against the queue size just below.
        let needed = descriptors.len() as u64 + 1;
        if needed > u64::from(self.entries - 1) {
            return Err(Error::CapacityExceeded {
                what: "VT-d invalidation queue batch",
                capacity: self.entries as usize - 2,
            });
        }
        // CAST: bounded by entries above.
        let needed = needed as u32;
        self.wait_for_space(platform, needed)?;

        let start = self.tail;
        for d in descriptors {
            self.write_slot(self.tail, d);
            self.tail = (self.tail + 1) % self.entries;
        }
        let sequence = self.next_sequence();
        let wait_index = self.tail;
        self.write_wait(sequence, page_drain)?;
        self.ring_doorbell(platform);
        self.stats.batches += 1;
        // CAST: usize to u64.
        self.stats.descriptors += descriptors.len() as u64 + 1;

        let device_tlb = descriptors
            .iter()
            .any(|d| matches!(d.kind(), desc::kind::DEVICE_TLB | desc::kind::PASID_DEVICE_TLB));
        let timeout = if device_tlb { DEVICE_TLB_TIMEOUT.max(self.timeout) } else { self.timeout };
        self.complete(platform, sequence, start, wait_index, timeout)
    }

    fn write_wait(&mut self, sequence: u32, page_drain: bool) -> Result<()> {
        // FN: later batches wait for this one, so a status write also orders page group
        // responses and invalidations across batches.
        let completion = WaitCompletion::StatusWrite {
            address: self.status_address(STATUS_SLOT),
            data: sequence,
        };
        let wait = if page_drain {
            desc::wait_page_drain(completion, true, self.ecap)?
        } else {
            desc::wait(completion, true)?
        };
        self.write_slot(self.tail, &wait);
        self.tail = (self.tail + 1) % self.entries;
        self.stats.waits += 1;
        Ok(())
    }

    /// Waits, bounded, until `needed` slots are free. A full queue drains as the unit works; an
    /// IQE left over from an earlier, timed-out batch is handled as in [`Self::complete`].
    fn wait_for_space<P: Platform + ?Sized>(&mut self, platform: &P, needed: u32) -> Result<()> {
        if self.free_slots(self.head()) >= needed {
            return Ok(());
        }
        let timeout = self.timeout;
        poll(platform, "VT-d invalidation queue space (IQH)", timeout, || {
            if self.free_slots(self.head()) >= needed {
                return Some(Ok(()));
            }
            let fsts = FaultStatus(self.regs.read32(offset::FSTS));
            if fsts.iqe() {
                // A descriptor from a batch that already returned: reject it and move on.
                let head = self.head();
                if let Err(e) = self.replace_rejected(platform, head) {
                    return Some(Err(e));
                }
            }
            None
        })?
    }

    /// Replaces the descriptor at `head` (which the unit rejected) with a no-op wait, clears IQE,
    /// and returns the descriptor that was there.
    fn replace_rejected<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        head: u32,
    ) -> Result<Descriptor> {
        let bad = self.read_slot(head);
        // §6.5.2.10: software fixes the descriptor at IQH and clears IQE; hardware then restarts
        // fetching from IQH. A status write to the scratch slot is harmless everywhere.
        let noop = desc::wait(
            WaitCompletion::StatusWrite { address: self.status_address(SCRATCH_SLOT), data: 0 },
            false,
        )?;
        self.write_slot(head, &noop);
        platform.sync_for_device(self.ring.virt(), self.ring.len());
        self.regs.write32(offset::FSTS, FaultStatus::IQE);
        // QEMU 10.0.2 does not restart on the IQE clear (`vtd_handle_fsts_write` leaves it as a
        // FIXME); it processes the queue on IQT writes. Writing the same tail again is harmless
        // on hardware, which has restarted from IQH already.
        self.regs.write64(offset::IQT, u64::from(self.tail) << self.width.shift());
        self.stats.rejected += 1;
        Ok(bad)
    }

    /// Polls the batch's status slot until it reads `sequence`, handling IQE, ITE and ICE on the
    /// way (see the module documentation).
    fn complete<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        sequence: u32,
        start: u32,
        wait_index: u32,
        timeout: Duration,
    ) -> Result<()> {
        let mut awaited = sequence;
        let mut wait_slot = wait_index;
        let mut reported: Option<Error> = None;
        poll(platform, WAIT_STATUS, timeout, || {
            // Acquire: what the unit wrote before the status (nothing the CPU reads today, but a
            // page-request drain relies on it) is visible after it.
            if self.status_slot(STATUS_SLOT).load(Ordering::Acquire) == awaited {
                platform.read_barrier();
                return Some(Ok(()));
            }
            let fsts = FaultStatus(self.regs.read32(offset::FSTS));
            if fsts.iqe() {
                let head = self.head();
                let position = (head + self.entries - start) % self.entries;
                let batch_len = (wait_slot + self.entries - start) % self.entries;
                if head == wait_slot || position > batch_len {
                    // Not a descriptor of this batch (for example IQEI 1/6: a bad tail): nothing
                    // software can fix in place.
                    // CAST: u32 to u64.
                    return Some(Err(Error::Hardware {
                        what: "VT-d FSTS.IQE outside the submitted batch (IQH)",
                        value: u64::from(head),
                    }));
                }
                let info = (self.regs.read64(offset::IQERCD) & 0xf) as u8;
                match self.replace_rejected(platform, head) {
                    Ok(bad) => {
                        reported.get_or_insert(Error::InvalidDescriptor {
                            slot: head,
                            position,
                            kind: bad.kind(),
                            info,
                        });
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            if fsts.ite() {
                // CAST: ITESID is bits 47:32.
                let sid = (self.regs.read64(offset::IQERCD) >> 32) as u16;
                reported.get_or_insert(Error::DeviceTlbInvalidation { what: "ITE", sid });
                self.regs.write32(offset::FSTS, FaultStatus::ITE);
                // The unit discarded the pending waits; if it went past ours, add a fresh one.
                if self.head() == self.tail {
                    awaited = self.next_sequence();
                    wait_slot = self.tail;
                    if let Err(e) = self.write_wait(awaited, false) {
                        return Some(Err(e));
                    }
                    self.stats.descriptors += 1;
                    self.ring_doorbell(platform);
                }
            }
            if fsts.ice() {
                // CAST: ICESID is bits 63:48.
                let sid = (self.regs.read64(offset::IQERCD) >> 48) as u16;
                reported.get_or_insert(Error::DeviceTlbInvalidation { what: "ICE", sid });
                self.regs.write32(offset::FSTS, FaultStatus::ICE);
            }
            None
        })??;
        // An ICE (or ITE) raised while the batch finished is seen only now: the status check
        // comes first in each poll.
        let fsts = FaultStatus(self.regs.read32(offset::FSTS));
        if fsts.ice() {
            // CAST: ICESID is bits 63:48.
            let sid = (self.regs.read64(offset::IQERCD) >> 48) as u16;
            reported.get_or_insert(Error::DeviceTlbInvalidation { what: "ICE", sid });
            self.regs.write32(offset::FSTS, FaultStatus::ICE);
        }
        if fsts.ite() {
            // CAST: ITESID is bits 47:32.
            let sid = (self.regs.read64(offset::IQERCD) >> 32) as u16;
            reported.get_or_insert(Error::DeviceTlbInvalidation { what: "ITE", sid });
            self.regs.write32(offset::FSTS, FaultStatus::ITE);
        }
        match reported {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Turns `pending` into invalidations of `scope`, submits them as one batch, and once the
    /// unit confirmed them releases the table pages the change emptied.
    ///
    /// Each range becomes page-selective descriptors over naturally aligned power-of-two blocks
    /// (AM <= CAP.MAMV), with IH set when only leaf entries changed; a whole-domain change, more
    /// than [`MAX_FLUSH_DESCRIPTORS`] blocks, or a unit without CAP.PSI gets one
    /// domain-selective (or all-in-PASID) descriptor instead.
    ///
    /// If the flush fails the pages are leaked, never released: a walk cache may still hold them.
    pub fn flush<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        pending: PendingInvalidation,
        scope: FlushScope,
    ) -> Result<()> {
        let result = self.flush_descriptors(platform, &pending, scope);
        match result {
            Ok(()) => {
                // SAFETY: `submit` returned Ok, so the unit wrote the status of a wait that
                // followed every invalidation of these ranges (or the whole domain) including the
                // paging-structure caches (IH clear wherever a table was removed, since such a
                // range is not leaf-only); so no walk of this unit can reach the freed pages.
                // The caller owns the only unit that translates with these tables.
                unsafe { pending.complete(platform) };
                Ok(())
            }
            Err(e) => {
                leak(pending);
                Err(e)
            }
        }
    }

    /// [`flush`](Self::flush) for a change reachable under several scopes (a first-stage
    /// table attached at several PASIDs): the invalidations of every scope are issued, and
    /// only when all completed are the emptied pages released. No scope: nothing is issued
    /// and the pages are released at once, which is only right when no entry of this unit
    /// points at the table (every attachment's removal already invalidated its translations).
    pub fn flush_scopes<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        pending: PendingInvalidation,
        scopes: impl IntoIterator<Item = FlushScope>,
    ) -> Result<()> {
        for scope in scopes {
            if let Err(e) = self.flush_descriptors(platform, &pending, scope) {
                leak(pending);
                return Err(e);
            }
        }
        // SAFETY: every scope under which this unit may have cached the table's translations
        // was invalidated and waited for (as in `flush`), or there is none (see above).
        unsafe { pending.complete(platform) };
        Ok(())
    }

    fn flush_descriptors<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        pending: &PendingInvalidation,
        scope: FlushScope,
    ) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let did = u16::try_from(pending.domain).map_err(|_| Error::InvalidDomainId {
            did: pending.domain,
            supported: self.cap.domains().unwrap_or(0),
        })?;
        let drain = Drain::supported(self.cap);
        let mut batch: Vec<Descriptor, MAX_FLUSH_DESCRIPTORS> = Vec::new();
        let mut whole = pending.whole_domain
            || !self.cap.psi()
            || (pending.ranges.is_empty() && !pending.freed.is_empty());
        if !whole {
            'ranges: for r in pending.ranges.iter() {
                for (addr, am) in blocks(r.start, r.len, self.cap.mamv()) {
                    let d = match scope {
                        FlushScope::Iotlb => {
                            desc::iotlb_page(did, addr, am, r.leaf_only, drain, self.cap)?
                        }
                        FlushScope::PasidIotlb(pasid) => {
                            desc::pasid_iotlb_page(did, pasid, addr, am, r.leaf_only, self.cap)?
                        }
                    };
                    if batch.push(d).is_err() {
                        whole = true;
                        break 'ranges;
                    }
                }
            }
        }
        if whole {
            batch.clear();
            let d = match scope {
                FlushScope::Iotlb => desc::iotlb_domain(did, drain),
                FlushScope::PasidIotlb(pasid) => desc::pasid_iotlb_all(did, pasid),
            };
            // Cannot fail: the vector was just emptied.
            let _ = batch.push(d);
        }
        self.submit(platform, &batch)
    }

    /// Invalidates context-cache entries (§6.5.2.1).
    pub fn context_cache<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        scope: ContextCacheScope,
    ) -> Result<()> {
        let d = desc::context_cache(scope)?;
        self.submit(platform, &[d])
    }

    /// Invalidates PASID-cache entries (§6.5.2.2; a no-op in QEMU 10.0.2).
    pub fn pasid_cache<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        scope: PasidCacheScope,
    ) -> Result<()> {
        self.submit(platform, &[desc::pasid_cache(scope)])
    }

    /// Invalidates the whole IOTLB (and paging-structure caches) and the context cache, as
    /// needed after the root table changed (§6.5.3.1 / ESRTPS).
    pub fn global<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<()> {
        let cc = desc::context_cache(ContextCacheScope::Global)?;
        let mut batch: Vec<Descriptor, 3> = Vec::new();
        let _ = batch.push(cc);
        if self.ecap.smts() && self.width == DescriptorWidth::Bits256 {
            let _ = batch.push(desc::pasid_cache(PasidCacheScope::Global));
        }
        let _ = batch.push(desc::iotlb_global(Drain::supported(self.cap)));
        self.submit(platform, &batch)
    }

    /// Invalidates a device's TLB (ATS, §6.5.2.5): `2^order` pages at `addr` (order 52:
    /// everything) for the function `sid` whose PF is `pfsid`, with its ATS Invalidate Queue
    /// Depth. Needs ECAP.DT.
    pub fn device_tlb<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        sid: RequesterId,
        pfsid: RequesterId,
        queue_depth: u8,
        addr: u64,
        order: u8,
    ) -> Result<()> {
        if !self.ecap.dt() {
            return Err(Error::Unsupported {
                what: "VT-d ECAP.DT (device-TLB)",
                value: self.ecap.0,
            });
        }
        let d = desc::device_tlb(sid, pfsid, queue_depth, addr, order)?;
        self.submit(platform, &[d])
    }

    /// Invalidates a device's TLB entries for one PASID (§6.5.2.6); see [`Self::device_tlb`].
    #[allow(clippy::too_many_arguments, reason = "one argument per descriptor field")]
    pub fn pasid_device_tlb<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        sid: RequesterId,
        pfsid: RequesterId,
        queue_depth: u8,
        pasid: Pasid,
        addr: u64,
        order: u8,
    ) -> Result<()> {
        if !self.ecap.dt() {
            return Err(Error::Unsupported {
                what: "VT-d ECAP.DT (device-TLB)",
                value: self.ecap.0,
            });
        }
        let d = desc::pasid_device_tlb(sid, pfsid, queue_depth, pasid, addr, order, false)?;
        self.submit(platform, &[d])
    }
}

/// Drops a pending invalidation whose flush failed without releasing its pages.
pub(crate) fn leak(mut pending: PendingInvalidation) {
    pending.ranges.clear();
    pending.whole_domain = false;
    // Never released: the invalidation did not complete, a walk cache may hold the pages.
    // Dropping a `DmaPages` does not return it to the platform.
    while pending.freed.pop().is_some() {
        pending.leaked_pages += 1;
    }
}

/// Splits `[start, start + len)` (4 KiB aligned) into naturally aligned power-of-two blocks of at
/// most `2^max_am` pages: `(address, am)` pairs.
fn blocks(start: u64, len: u64, max_am: u8) -> impl Iterator<Item = (u64, u8)> {
    let mut addr = start & !0xfff;
    let end = start.saturating_add(len).saturating_add(0xfff) & !0xfff;
    core::iter::from_fn(move || {
        if addr >= end {
            return None;
        }
        let mut am = 0u8;
        while am < max_am && am < 51 {
            let size = 0x1000u64 << (am + 1);
            if addr & (size - 1) != 0 || addr + size > end {
                break;
            }
            am += 1;
        }
        let block = (addr, am);
        addr += 0x1000u64 << am;
        Some(block)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhysAddr;
    use crate::vtd::testfake::{FakeVtd, LEGACY_ECAP, QEMU_CAP, SCALABLE_ECAP};
    use crate::vtd::{TableMode, Unit};

    fn unit(p: &FakeVtd, mode: TableMode) -> Unit {
        let mut u = Unit::new(p, PhysAddr(0xfed9_0000), 0x230, mode).unwrap();
        u.enable_queued_invalidation(p, DEFAULT_ENTRIES).unwrap();
        // Enabling invalidated the context cache and IOTLB globally (one batch of three).
        let kinds: std::vec::Vec<u8> = p.processed().iter().map(|d| d.kind()).collect();
        match mode {
            TableMode::Legacy => assert_eq!(kinds, [1, 2, 5]),
            TableMode::Scalable => assert_eq!(kinds, [1, 7, 2, 5]),
        }
        p.clear_processed();
        u
    }

    #[test]
    fn blocks_are_aligned_and_cover_the_range() {
        let v: std::vec::Vec<_> = blocks(0x3000, 0x1d000, 18).collect();
        assert_eq!(v, [(0x3000, 0), (0x4000, 2), (0x8000, 3), (0x10000, 4)]);
        let v: std::vec::Vec<_> = blocks(0, 0x40_0000, 2).collect();
        assert_eq!(v.len(), 256);
        assert!(v.iter().all(|&(a, am)| am == 2 && a % 0x4000 == 0));
    }

    #[test]
    fn refuses_without_ecap_qi() {
        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP & !(1 << 1));
        let mut u = Unit::new(&p, PhysAddr(0xfed9_0000), 0x230, TableMode::Legacy).unwrap();
        let e = u.enable_queued_invalidation(&p, DEFAULT_ENTRIES).unwrap_err();
        assert!(matches!(e, Error::Unsupported { what, .. } if what.contains("ECAP.QI")));
    }

    #[test]
    fn one_wait_per_batch_and_one_doorbell() {
        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP);
        let mut u = unit(&p, TableMode::Legacy);
        let q = u.queue().unwrap();
        let s0 = q.stats();
        let iqt0 = p.iqt_writes();
        let batch = [
            desc::iotlb_domain(1, Drain::default()),
            desc::iotlb_domain(2, Drain::default()),
            desc::iec_global(),
        ];
        q.submit(&p, &batch).unwrap();
        q.submit(&p, &[]).unwrap();
        let s = q.stats();
        assert_eq!(
            (
                s.batches - s0.batches,
                s.waits - s0.waits,
                s.descriptors - s0.descriptors,
                s.doorbells - s0.doorbells
            ),
            (2, 2, 5, 2)
        );
        let seen = p.processed();
        // Every descriptor the unit processed, in order: IOTLB, IOTLB, IEC, wait, wait.
        let kinds: std::vec::Vec<u8> = seen.iter().map(|d| d.kind()).collect();
        assert_eq!(kinds, [2, 2, 4, 5, 5]);
        assert_eq!(p.iqt_writes() - iqt0, 2);
        // The wait asks for a status write and never for an interrupt too.
        assert!(seen.iter().filter(|d| d.kind() == 5).all(|d| d.words()[0] & 0x30 == 0x20));
    }

    #[test]
    fn the_queue_wraps() {
        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP);
        let mut u = unit(&p, TableMode::Legacy);
        let q = u.queue().unwrap();
        let batch = [desc::iotlb_global(Drain::default()); 9];
        // 10 slots per batch in a 256-slot ring (3 used by the enable): 60 batches go round
        // more than twice.
        for _ in 0..60 {
            q.submit(&p, &batch).unwrap();
        }
        assert_eq!(p.processed().len(), 600);
        assert_eq!(q.tail, (603 % 256) as u32);
        // A batch that cannot fit at all is refused before anything is written.
        let big = [desc::iec_global(); 255];
        assert!(matches!(q.submit(&p, &big), Err(Error::CapacityExceeded { capacity: 254, .. })));
        q.submit(&p, &big[..254]).unwrap();
    }

    #[test]
    fn a_full_queue_waits_for_space() {
        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP);
        let mut u = unit(&p, TableMode::Legacy);
        let q = u.queue().unwrap();
        // The unit works only every 3000th step (a poll round is two steps, 10 us apart).
        p.set_slow(3000);
        q.set_timeout(Duration::from_millis(5));
        let err = q.submit(&p, &[desc::iec_global(); 200]).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }));
        // 201 of 255 usable slots are still queued: the next batch of 101 must wait for the
        // unit to make room, and does so within its bound.
        q.set_timeout(Duration::from_millis(50));
        let before = p.processed().len();
        q.submit(&p, &[desc::iotlb_global(Drain::default()); 100]).unwrap();
        assert_eq!(before, 0, "nothing ran before the space wait");
        assert_eq!(p.processed().len(), 302);
        // Both batches ended with one wait each.
        assert_eq!(p.processed().iter().filter(|d| d.kind() == 5).count(), 2);
    }

    #[test]
    fn a_rejected_descriptor_is_reported_skipped_and_the_queue_goes_on() {
        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP);
        let mut u = unit(&p, TableMode::Legacy);
        let q = u.queue().unwrap();
        q.submit(&p, &[desc::iec_global()]).unwrap();
        // A wait with neither SW nor IF is invalid (QEMU: IQE, notes §1.6): IQH stops at it.
        let bad = Descriptor::from_raw([0x5, 0, 0, 0]);
        let e = q
            .submit(&p, &[desc::iotlb_global(Drain::default()), bad, desc::iec_global()])
            .unwrap_err();
        // Slots 0-2: the enable's batch; 3-4 the first submission; 5 the IOTLB, 6 the bad one.
        assert_eq!(e, Error::InvalidDescriptor { slot: 6, position: 1, kind: 0x5, info: 4 });
        assert_eq!(
            e.to_string(),
            "VT-d invalidation queue rejected descriptor type 0x5 at slot 6 (batch position 1, IQEI 4); replaced with a no-op"
        );
        // The descriptor after it and the batch's wait still ran.
        let kinds: std::vec::Vec<u8> = p.processed().iter().map(|d| d.kind()).collect();
        assert_eq!(kinds, [4, 5, 2, 5, 4, 5]);
        assert_eq!(p.fsts() & FaultStatus::IQE, 0);
        q.submit(&p, &[desc::iec_global()]).unwrap();
        assert_eq!(q.stats().rejected, 1);
    }

    #[test]
    fn a_wait_that_never_completes_times_out_and_the_queue_recovers() {
        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP);
        let mut u = unit(&p, TableMode::Legacy);
        let q = u.queue().unwrap();
        q.set_timeout(Duration::from_millis(5));
        p.set_stalled(true);
        let e = q.submit(&p, &[desc::iec_global()]).unwrap_err();
        assert_eq!(e, Error::Timeout { what: "VT-d invalidation wait status", waited_us: 5000 });
        // The fake clock advanced 10 us per read: the bound held (a few hundred polls, not more).
        assert!(p.elapsed_us() < 6_000, "{} us", p.elapsed_us());
        // The unit resumes: the stale batch completes first, then the new one.
        p.set_stalled(false);
        q.submit(&p, &[desc::iotlb_global(Drain::default())]).unwrap();
        let kinds: std::vec::Vec<u8> = p.processed().iter().map(|d| d.kind()).collect();
        assert_eq!(kinds, [4, 5, 2, 5]);
    }

    #[test]
    fn ite_is_cleared_the_wait_resubmitted_and_reported() {
        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP | 1 << 2);
        let mut u = unit(&p, TableMode::Legacy);
        let q = u.queue().unwrap();
        p.fail_next_device_tlb(0x0108);
        let e = q.device_tlb(&p, RequesterId(0x0108), RequesterId(0x0108), 0, 0, 52).unwrap_err();
        assert_eq!(e, Error::DeviceTlbInvalidation { what: "ITE", sid: 0x0108 });
        // The enable's wait, the batch's, and the one resubmitted after ITE.
        assert_eq!(q.stats().waits, 3);
        assert_eq!(p.fsts() & FaultStatus::ITE, 0);
        q.device_tlb(&p, RequesterId(0x0108), RequesterId(0x0108), 0, 0, 52).unwrap();
    }

    #[test]
    fn flush_turns_ranges_into_page_selective_invalidations() {
        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP);
        let mut u = unit(&p, TableMode::Legacy);
        let q = u.queue().unwrap();
        let mut pending = PendingInvalidation::new(5);
        pending.add(0x20_0000, 0x20_0000, true);
        pending.add(0x1000_0000, 0x3000, false);
        let page = p.alloc_dma_pages(1, PAGE_SIZE).unwrap();
        pending.free_after_flush(page);
        q.flush(&p, pending, FlushScope::Iotlb).unwrap();
        let got: std::vec::Vec<[u64; 4]> = p.processed().iter().map(|d| d.words()).collect();
        // 2 MiB at 2 MiB: one descriptor with AM 9 and IH; 12 KiB: AM 1 then AM 0, IH clear.
        let qw0 = 0x2 | 3 << 4 | 3 << 6 | 5 << 16;
        assert_eq!(got[0], [qw0, 0x20_0000 | 1 << 6 | 9, 0, 0]);
        assert_eq!(got[1], [qw0, 0x1000_0000 | 1, 0, 0]);
        assert_eq!(got[2], [qw0, 0x1000_2000, 0, 0]);
        assert_eq!(got[3][0] & 0xf, 5);
        assert_eq!(p.freed_pages(), 1, "the emptied page is released after the wait");

        // Too many blocks: one domain-selective descriptor.
        let mut pending = PendingInvalidation::new(5);
        for i in 0..4u64 {
            pending.add(0x1000 + i * 0x100_0000, 0x7f_f000, true);
        }
        q.flush(&p, pending, FlushScope::Iotlb).unwrap();
        let got = p.processed();
        assert_eq!(got[4].words()[0], 0x2 | 2 << 4 | 3 << 6 | 5 << 16);
        assert_eq!(got[5].kind(), 5);
    }

    #[test]
    fn flush_failure_keeps_the_pages() {
        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP);
        let mut u = unit(&p, TableMode::Legacy);
        let q = u.queue().unwrap();
        q.set_timeout(Duration::from_millis(1));
        p.set_stalled(true);
        let mut pending = PendingInvalidation::new(5);
        pending.add(0, 0x1000, false);
        pending.free_after_flush(p.alloc_dma_pages(1, PAGE_SIZE).unwrap());
        assert!(matches!(q.flush(&p, pending, FlushScope::Iotlb), Err(Error::Timeout { .. })));
        assert_eq!(p.freed_pages(), 0);
    }

    #[test]
    fn pasid_flush_needs_and_uses_the_wide_queue() {
        let p = FakeVtd::new(QEMU_CAP, SCALABLE_ECAP);
        let mut u = unit(&p, TableMode::Scalable);
        let q = u.queue().unwrap();
        assert_eq!(q.width(), DescriptorWidth::Bits256);
        let pasid = Pasid::new(3).unwrap();
        let mut pending = PendingInvalidation::new(9);
        pending.add(0x4000, 0x4000, true);
        q.flush(&p, pending, FlushScope::PasidIotlb(pasid)).unwrap();
        let d = p.processed()[0].words();
        assert_eq!(d, [0x6 | 3 << 4 | 9 << 16 | 3 << 32, 0x4000 | 1 << 6 | 2, 0, 0]);
        // IQT counts 32-byte slots: index << 5 (4 slots used by the enable, 2 here).
        assert_eq!(p.last_iqt(), 6 << 5);

        let p = FakeVtd::new(QEMU_CAP, LEGACY_ECAP);
        let mut u = unit(&p, TableMode::Legacy);
        let e = u.queue().unwrap().submit(&p, &[desc::pasid_iotlb_all(1, pasid)]).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }));
    }
}
