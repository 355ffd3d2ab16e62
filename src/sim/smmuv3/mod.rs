//! A model of one Arm SMMUv3 unit, [`Smmu`], for host tests of the driver and for
//! integrators: the programming interface (IHI 0070 §6: ID registers, CR0/CR0ACK, GBPA,
//! IRQ_CTRL, GERROR/GERRORN, the stream table and queue registers), the stream table (linear
//! and 2-level) and context descriptors (linear and 2-level, substreams), stage 1, stage 2 and
//! nested translation of 4 KiB-granule VMSAv8-64 tables with a TLB and configuration caches,
//! the command queue (§4), the event queue (§7) and the PRI queue (§8).
//!
//! It follows the specification, written independently of the driver in `crate::smmuv3` (see
//! [`regs`] for where each layout comes from). Where QEMU 10.0.2 differs in a way a driver
//! could come to rely on (qemu notes §2), the model behaves like hardware and, where QEMU
//! would crash or refuse, records a [`ModelError`] that tests assert on.
//!
//! # Driving it from the driver under test
//!
//! As with the VT-d model (`sim::vtd`), the driver maps the registers with
//! [`Platform::map_mmio`](crate::hal::Platform::map_mmio) and uses plain volatile loads and
//! stores. The model keeps its 128 KiB register frame (page 0 and page 1) in host memory and
//! **processes what was written when it is stepped** ([`Smmu::step`]): it compares the
//! registers with what it last published, applies every changed dword (plain registers first,
//! then GBPA, then CR0), runs the command queue from CONS to PROD, and publishes the new
//! values (CR0ACK, CONS, GERROR, ...). [`SimPlatform`] steps every attached unit from
//! [`relax`](crate::hal::Platform::relax), so the driver's bounded polls (CR0ACK, CMDQ_CONS
//! after a CMD_SYNC, GBPA.Update) see the model progress, single-threaded:
//!
//! ```
//! use pcie_iommu::sim::smmuv3::{self, regs::{cr0, off}, Config};
//!
//! let (platform, smmu) = smmuv3::pair(Config::qemu_virt());
//! // A driver would map the frame through the platform and write CR0; so does this test.
//! smmu.write32(off::CR0, cr0::CMDQEN);
//! platform.step_all(); // what the driver's poll of CR0ACK does through `relax`
//! assert_eq!(smmu.read32(off::CR0ACK), cr0::CMDQEN);
//! assert!(smmu.errors().is_empty());
//! ```
//!
//! Devices are simulated by calling [`Smmu::dma_read`] / [`Smmu::dma_write`] (or
//! [`Smmu::translate`]) with a StreamID and an optional SubstreamID: the model translates
//! through the tables the driver built in [`Memory`], and either accesses memory or terminates
//! the transaction and writes an event record to the event queue the driver set up. Page
//! requests are injected with [`Smmu::inject_page_request`] into the driver's PRI queue; the
//! driver's CMD_PRI_RESP commands are checked against them ([`Smmu::pri_responses`],
//! [`Smmu::outstanding_page_request_groups`]).
//!
//! Every processed command is logged in order ([`Smmu::commands`]) with, for configuration
//! invalidations, a snapshot of the STE or CD as the model read it when it processed the
//! command: a test can assert that the entry was written before its CFGI, the CFGI came before
//! the TLBI, and both before the CMD_SYNC the driver waited for.
//!
//! The caches behave like hardware's, so the order of a driver's updates is observable:
//! STEs and CDs are cached per StreamID (and CD index) until a CFGI covers them (a CMD_PREFETCH
//! may cache an STE early); leaf translations are cached until a TLBI covers them, tagged by
//! VMID (STE.S2VMID, also for stage-1-only streams when stage 2 is implemented), ASID (a page
//! without nG matches every ASID) and the EL2 regime, not by StreamID: two streams that share
//! an ASID and VMID share translations, as they would on hardware.
//!
//! # What a plain-memory window can and cannot see
//!
//! A store is visible only if it changes the dword. For the SMMUv3 interface that is enough:
//! the registers software writes (CR0, IRQ_CTRL, GERRORN, queue PROD/CONS, GBPA with Update)
//! either read back what was last written or change in every meaningful write, so a write of
//! the value already there has no effect on hardware either. Several writes to one register
//! between two steps look like the last one only: a driver must wait for CR0ACK, IRQ_CTRLACK
//! and GBPA.Update anyway, and queue PROD writes only move forward. A 64-bit register may be
//! written as two 32-bit halves or one 64-bit store; both are seen the same way. An 8-byte
//! store that also hits a read-only neighbour (CR0 with CR0ACK) is seen as a write to the
//! read-only dword and recorded as [`ModelError::ReadOnlyWrite`].
//!
//! # Choices where the specification leaves room, and QEMU differences
//!
//! - Range fields (TG, NUM, SCALE) in a TLBI without IDR3.RIL, and commands for features the
//!   configuration lacks (EL2 without HYP, PRI_RESP without PRI, ATC_INV without ATS,
//!   CFGI_CD / TLBI_NH_* without stage 1, S2 TLBIs without stage 2), are CERROR_ILL. So are
//!   the Secure-only EL3 TLBIs and CFGI_VMS_PIDM (0x07). CMDQ_CONS.ERR keeps the last error
//!   code after the queue restarts; read it only while GERROR.CMDQ_ERR is active.
//! - CFGI_STE also drops the CDs cached through the StreamID (§4.3.1); TLBI_S2_IPA drops only
//!   stage-2-only entries, so combined stage 1+2 entries need TLBI_NH_ALL or TLBI_S12_VMALL.
//! - C_BAD_STREAMID is recorded only with CR2.RECINVSID (§6.3.12; Linux sets it).
//! - An STE with stage 2 and S2AA64 = 0 is C_BAD_STE and [`ModelError::Stage2AArch32`] (QEMU
//!   10.0.2 aborts). A CD with A = 0 translates (TERM_MODEL = 1 ignores A) and is recorded as
//!   [`ModelError::CdAbortClear`] (QEMU reports C_BAD_CD). Translation-related faults follow CD.R
//!   and STE.S2R as in QEMU. QEMU's CMD_SYNC never writes an MSI (its IDR0.MSI is 0), which
//!   [`Config::qemu_virt`] reproduces: CS = SIG_IRQ pulses the wired line. An event queue
//!   overflow toggles EVENTQ_PROD.OVFLG (§7.4) where QEMU raises GERROR.EVENTQ_ABT_ERR, and
//!   STRTAB_BASE_CFG.FMT takes effect as written (QEMU keeps 2-level once set).
//! - PRI: an automatic response (overflow, or the queue disabled) follows §8.1; a driver
//!   CMD_PRI_RESP is checked against the groups delivered ([`ModelError::UnexpectedPriResponse`])
//!   and against STE.PPAR ([`ModelError::PriResponsePasidMismatch`]).
//!
//! # Not modelled
//!
//! 16 KiB and 64 KiB granules (STEs and CDs using them are treated as ILLEGAL and recorded as
//! [`ModelError::UnmodelledGranule`]), AArch32 tables, big-endian tables, TBI, stalls (the
//! presets have STALL_MODEL = no stall; CMD_RESUME and CMD_STALL_TERM are logged and do
//! nothing), hardware dirty-state updates (HTTU is 0 in the presets; with HTTU and CD.HA or
//! STE.S2HA the access flag is set), BTM, memory attributes (MAIR, S2MemAttr, CR1), ATS translation requests (CMD_ATC_INV is logged), the walk
//! cache (only leaf translations are cached; the Leaf hint of invalidations is logged),
//! Secure and Realm state, MPAM, the VMS, and event merging. One DMA call makes at most one
//! event (QEMU makes one per faulting 4-byte chunk, qemu notes §2.7). TLB entries are never
//! evicted, so every stale translation a driver leaves is visible.

use crate::sim::std;
mod cmdq;
mod priq;
pub mod regs;
#[cfg(test)]
mod tests;
mod walk;

use core::cell::RefCell;
use core::ptr::NonNull;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::vec::Vec;

pub use crate::sim::vtd::{Memory, SimPlatform, SimUnit};
pub use cmdq::{Command, LoggedCommand, PriResponseCode, SyncSignal, TlbiRange};
pub use priq::{PageRequest, PriOutcome, PriResponder, PriResponse};
pub use regs::Config;
pub use walk::{Access, Stage, Termination, Translation};

use crate::addr::PhysAddr;
use regs::{cr0, gbpa, gerror, irq_ctrl, off, queue};

/// Where [`pair`] places the register frame: QEMU's virt SMMUv3 base (qemu notes §2.1).
pub const DEFAULT_BASE: PhysAddr = PhysAddr(0x0905_0000);

/// Size of the register frame: pages 0 and 1.
pub const FRAME_SIZE: usize = 0x2_0000;

/// A [`SimPlatform`] and an [`Smmu`] sharing one [`Memory`], the registers at
/// [`DEFAULT_BASE`].
pub fn pair(config: Config) -> (SimPlatform, Smmu) {
    let memory = Memory::new();
    let platform = SimPlatform::new(&memory);
    let smmu = Smmu::new(&memory, config);
    platform.attach(DEFAULT_BASE, &smmu);
    (platform, smmu)
}

/// A driver mistake, or a use of a QEMU quirk, the model detected. Hardware would misbehave
/// or behave unpredictably; the model records the error and carries on as documented per
/// variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelError {
    /// A write to a read-only or reserved dword (including registers of features the
    /// configuration lacks, such as the PRI queue without IDR0.PRI); discarded.
    ReadOnlyWrite {
        /// Offset of the dword in the frame.
        offset: usize,
        /// The value written.
        value: u32,
    },
    /// STRTAB_BASE or STRTAB_BASE_CFG written while SMMUEN is set (§6.3.23: the registers are
    /// then read-only); discarded.
    StreamTableWrittenWhileEnabled {
        /// Offset of the dword.
        offset: usize,
    },
    /// A queue's BASE, a command queue's CONS or an output queue's PROD written while the
    /// queue is enabled (§6.3.25 ff.: only the other index belongs to software then);
    /// discarded.
    QueueRegisterWrittenWhileEnabled {
        /// Offset of the dword.
        offset: usize,
        /// The value written.
        value: u32,
    },
    /// CR0 or IRQ_CTRL written with bits for features the configuration lacks (PRIQEN without
    /// PRI, ATSCHK without ATS, reserved bits); those bits are ignored.
    UnsupportedBits {
        /// The register.
        offset: usize,
        /// The bits ignored.
        bits: u32,
    },
    /// GBPA written without Update (§6.3.14: the write has no effect).
    GbpaWithoutUpdate {
        /// The value written.
        value: u32,
    },
    /// An STE with stage 2 and S2AA64 = 0: ILLEGAL here (AArch64 tables only, C_BAD_STE), and
    /// QEMU 10.0.2 aborts on it (qemu notes §2.3).
    Stage2AArch32 {
        /// The StreamID.
        sid: u32,
    },
    /// A CD with A = 0 on an SMMU with IDR0.TERM_MODEL = 1: the specification ignores A then
    /// (terminated transactions abort), QEMU 10.0.2 reports C_BAD_CD (qemu notes §2.5).
    CdAbortClear {
        /// The StreamID.
        sid: u32,
        /// The CD index.
        ssid: u32,
    },
    /// An STE or CD uses a 16 KiB or 64 KiB granule, which the model does not implement; it
    /// is treated as ILLEGAL.
    UnmodelledGranule {
        /// The StreamID.
        sid: u32,
    },
    /// A CMD_SYNC completion MSI to an address outside [`Memory`]: the write aborts
    /// (GERROR.MSI_CMDQ_ABT_ERR); the interrupt is still logged in [`Smmu::interrupts`].
    MsiUnmapped {
        /// The address.
        address: u64,
    },
    /// STRTAB_BASE_CFG.FMT selects a format the SMMU lacks (2-level without IDR0.ST_LEVEL, or
    /// a reserved value); the model walks a linear table.
    StreamTableFormatUnsupported {
        /// The value written.
        value: u32,
    },
    /// CMD_PRI_RESP whose PASID does not match what the device expects (§8.1, STE.PPAR with
    /// IDR3.PPS clear): the group's PASID when the request had one and STE.PPAR is set, none
    /// otherwise. The response is still recorded.
    PriResponsePasidMismatch {
        /// StreamID.
        sid: u32,
        /// Page request group index.
        prgi: u16,
        /// The PASID the response should carry.
        expected: Option<u32>,
        /// The PASID it carried.
        got: Option<u32>,
    },
    /// CMD_PRI_RESP for a (StreamID, PRGI) with no page request group awaiting a response:
    /// never injected, already answered, answered automatically on overflow, or its Last
    /// request not yet delivered.
    UnexpectedPriResponse {
        /// StreamID.
        sid: u32,
        /// SubstreamID, if SSV.
        ssid: Option<u32>,
        /// Page request group index.
        prgi: u16,
    },
}

/// Which interrupt an [`Smmu`] sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// Event queue (IRQ_CTRL.EVENTQ_IRQEN, EVENTQ_IRQ_CFG*).
    Event,
    /// PRI queue (IRQ_CTRL.PRIQ_IRQEN, PRIQ_IRQ_CFG*).
    Pri,
    /// Global error (IRQ_CTRL.GERROR_IRQEN, GERROR_IRQ_CFG*).
    Gerror,
    /// CMD_SYNC with CS = SIG_IRQ.
    CmdSync,
    /// CMD_SYNC with CS = SIG_SEV: a send-event to the PEs.
    Sev,
}

/// An interrupt the unit sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// Which.
    pub kind: InterruptKind,
    /// The MSI (address, data) written, or `None` for the wired interrupt (no IDR0.MSI, or an
    /// MSI address of 0) or a SEV.
    pub msi: Option<(u64, u32)>,
}

/// What happened to an event record (§7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Written to the event queue at this index (without the wrap bit).
    Recorded(u32),
    /// Not recorded: a translation-related fault with CD.R (stage 1) or STE.S2R (stage 2)
    /// clear, or C_BAD_STREAMID with CR2.RECINVSID clear; the transaction was terminated
    /// silently.
    Suppressed,
    /// Discarded: the queue was full (EVENTQ_PROD.OVFLG toggled if no overflow was active).
    Overflow,
    /// Discarded: the event queue is disabled (CR0.EVENTQEN clear).
    QueueDisabled,
    /// Discarded: writing the record failed (GERROR.EVENTQ_ABT_ERR).
    Aborted,
}

/// An event (§7.3), as laid out in the event queue record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event type, see [`regs::event`].
    pub code: u8,
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, if the transaction had one (SSV).
    pub ssid: Option<u32>,
    /// Input address of the transaction.
    pub address: u64,
    /// For a stage-2 fault: the IPA; for a fetch fault: the fetch address.
    pub ipa_or_fetch: u64,
    /// A read (RnW = 1), else a write.
    pub read: bool,
    /// Privileged (PnU).
    pub privileged: bool,
    /// Instruction fetch (InD).
    pub instruction: bool,
    /// The fault came from stage 2 (S2).
    pub stage2: bool,
    /// For a stage-2 fault: what was being translated, see `regs::event::CLASS_*`.
    pub class: u8,
    /// The 32-byte record, as written to the queue.
    pub raw: [u64; 4],
    /// What happened to it.
    pub outcome: EventOutcome,
}

/// The register frame: host memory the driver reads and writes with volatile accesses.
#[derive(Debug)]
struct Window {
    ptr: NonNull<u32>,
    dwords: usize,
    layout: Layout,
}

impl Window {
    fn new() -> Self {
        let dwords = FRAME_SIZE / 4;
        let layout = Layout::from_size_align(FRAME_SIZE, 4096).expect("frame layout");
        // SAFETY: non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        Self { ptr: NonNull::new(raw.cast()).expect("host out of memory"), dwords, layout }
    }
    fn read(&self, index: usize) -> u32 {
        assert!(index < self.dwords);
        // SAFETY: in bounds; volatile because the driver accesses the same memory through a
        // raw pointer.
        unsafe { self.ptr.add(index).as_ptr().read_volatile() }
    }
    fn write(&self, index: usize, v: u32) {
        assert!(index < self.dwords);
        // SAFETY: as in `read`.
        unsafe { self.ptr.add(index).as_ptr().write_volatile(v) }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr().cast(), self.layout) }
    }
}

/// A queue's BASE, PROD and CONS registers (§3.5).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Queue {
    pub(crate) base: u64,
    pub(crate) prod: u32,
    pub(crate) cons: u32,
}

impl Queue {
    /// log2 of the entries: BASE.LOG2SIZE capped at the IDR1 maximum (§6.3.25), which is at
    /// most 19 (a configuration claiming more is capped too).
    pub(crate) fn log2size(&self, max: u32) -> u32 {
        // CAST: a 5-bit field.
        ((self.base & queue::BASE_LOG2SIZE_MASK) as u32).min(max).min(19)
    }
    pub(crate) fn addr(&self) -> u64 {
        self.base & queue::BASE_ADDR_MASK
    }
}

/// Index and wrap bits of a PROD/CONS value for a queue of 2^qs entries.
pub(crate) fn wrap_mask(qs: u32) -> u32 {
    (2u32 << qs) - 1
}

/// The next PROD/CONS value: index + 1 with wrap, other bits (OVFLG, ERR) kept.
pub(crate) fn q_inc(p: u32, qs: u32) -> u32 {
    let m = wrap_mask(qs);
    (p & !m) | ((p & m) + 1) & m
}

pub(crate) fn q_empty(prod: u32, cons: u32, qs: u32) -> bool {
    (prod ^ cons) & wrap_mask(qs) == 0
}

pub(crate) fn q_full(prod: u32, cons: u32, qs: u32) -> bool {
    let idx = (1u32 << qs) - 1;
    (prod ^ cons) & idx == 0 && (prod ^ cons) & (1 << qs) != 0
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) mem: Memory,
    window: Window,
    shadow: Vec<u32>,
    pub(crate) cr0: u32,
    cr1: u32,
    pub(crate) cr2: u32,
    pub(crate) gbpa: u32,
    pub(crate) irq_ctrl: u32,
    pub(crate) gerror: u32,
    pub(crate) gerrorn: u32,
    /// (CFG0 address, CFG1 data, CFG2 attributes) of the GERROR, event and PRI MSIs.
    pub(crate) gerror_msi: (u64, u32, u32),
    pub(crate) evtq_msi: (u64, u32, u32),
    pub(crate) priq_msi: (u64, u32, u32),
    pub(crate) strtab_base: u64,
    pub(crate) strtab_cfg: u32,
    pub(crate) cmdq: Queue,
    pub(crate) evtq: Queue,
    pub(crate) priq: Queue,
    pub(crate) ste_cache: BTreeMap<u32, walk::Ste>,
    pub(crate) cd_cache: BTreeMap<(u32, u32), walk::Cd>,
    pub(crate) tlb: Vec<walk::TlbEntry>,
    pub(crate) log: Vec<LoggedCommand>,
    pub(crate) errors: Vec<ModelError>,
    pub(crate) interrupts: Vec<Interrupt>,
    pub(crate) events: Vec<Event>,
    pub(crate) event_irq_pending: bool,
    pub(crate) pri: priq::PriState,
    pub(crate) stall_next_sync: bool,
    pub(crate) sync_stalled: bool,
    pub(crate) cmdq_stalled: bool,
    steps: u64,
}

/// A model of one SMMUv3. A cheap-to-clone handle: clones (such as the one a [`SimPlatform`]
/// keeps to step it) share the unit.
#[derive(Clone, Debug)]
pub struct Smmu {
    inner: Rc<RefCell<Inner>>,
}

impl SimUnit for Smmu {
    fn step(&self) {
        Smmu::step(self);
    }
    fn window(&self) -> NonNull<u8> {
        Smmu::window(self)
    }
    fn window_size(&self) -> usize {
        FRAME_SIZE
    }
}

impl Smmu {
    /// A unit in its reset state (everything disabled, GBPA from the configuration), reading
    /// tables and queues from `memory`.
    pub fn new(memory: &Memory, config: Config) -> Self {
        let window = Window::new();
        let mut inner = Inner {
            mem: memory.clone(),
            shadow: std::vec![0; window.dwords],
            window,
            cr0: 0,
            cr1: 0,
            cr2: 0,
            gbpa: config.gbpa & gbpa::FIELDS,
            irq_ctrl: 0,
            gerror: 0,
            gerrorn: 0,
            gerror_msi: (0, 0, 0),
            evtq_msi: (0, 0, 0),
            priq_msi: (0, 0, 0),
            strtab_base: 0,
            strtab_cfg: 0,
            cmdq: Queue::default(),
            evtq: Queue::default(),
            priq: Queue::default(),
            ste_cache: BTreeMap::new(),
            cd_cache: BTreeMap::new(),
            tlb: Vec::new(),
            log: Vec::new(),
            errors: Vec::new(),
            interrupts: Vec::new(),
            events: Vec::new(),
            event_irq_pending: false,
            pri: priq::PriState::default(),
            stall_next_sync: false,
            sync_stalled: false,
            cmdq_stalled: false,
            steps: 0,
            cfg: config,
        };
        inner.publish();
        Self { inner: Rc::new(RefCell::new(inner)) }
    }

    /// Processes everything written to the registers since the last step, runs the command
    /// queue as far as it goes, and publishes the registers.
    pub fn step(&self) {
        self.inner.borrow_mut().step();
    }

    /// Host address of the register frame (what [`SimPlatform`] maps).
    pub fn window(&self) -> NonNull<u8> {
        self.inner.borrow().window.ptr.cast()
    }

    /// The configuration.
    pub fn config(&self) -> Config {
        self.inner.borrow().cfg.clone()
    }

    /// The memory the unit reads tables from.
    pub fn memory(&self) -> Memory {
        self.inner.borrow().mem.clone()
    }

    /// A 32-bit store to the frame, as the driver would do; takes effect at the next
    /// [`step`](Self::step).
    pub fn write32(&self, offset: usize, value: u32) {
        self.inner.borrow().window.write(offset / 4, value);
    }

    /// A 64-bit store to the frame (both dwords at once).
    pub fn write64(&self, offset: usize, value: u64) {
        let i = self.inner.borrow();
        // CAST: the two halves.
        i.window.write(offset / 4, value as u32);
        i.window.write(offset / 4 + 1, (value >> 32) as u32);
    }

    /// A 32-bit load from the frame (what the driver would read now).
    pub fn read32(&self, offset: usize) -> u32 {
        self.inner.borrow().window.read(offset / 4)
    }

    /// A 64-bit load from the frame.
    pub fn read64(&self, offset: usize) -> u64 {
        let i = self.inner.borrow();
        u64::from(i.window.read(offset / 4)) | u64::from(i.window.read(offset / 4 + 1)) << 32
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.inner.borrow().steps
    }

    /// Every command processed (or rejected with CERROR), oldest first.
    pub fn commands(&self) -> Vec<LoggedCommand> {
        self.inner.borrow().log.clone()
    }

    /// Takes the command log, leaving it empty.
    pub fn take_commands(&self) -> Vec<LoggedCommand> {
        core::mem::take(&mut self.inner.borrow_mut().log)
    }

    /// Errors detected so far.
    pub fn errors(&self) -> Vec<ModelError> {
        self.inner.borrow().errors.clone()
    }

    /// Takes the error list, leaving it empty.
    pub fn take_errors(&self) -> Vec<ModelError> {
        core::mem::take(&mut self.inner.borrow_mut().errors)
    }

    /// Interrupts sent so far.
    pub fn interrupts(&self) -> Vec<Interrupt> {
        self.inner.borrow().interrupts.clone()
    }

    /// Every event the unit produced (recorded or not), oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.inner.borrow().events.clone()
    }

    /// Takes the event list, leaving it empty.
    pub fn take_events(&self) -> Vec<Event> {
        core::mem::take(&mut self.inner.borrow_mut().events)
    }

    /// Number of cached translations (TLB entries).
    pub fn tlb_len(&self) -> usize {
        self.inner.borrow().tlb.len()
    }

    /// The STE cached for `sid`, as it was read from memory.
    pub fn cached_ste(&self, sid: u32) -> Option<[u64; 8]> {
        self.inner.borrow().ste_cache.get(&sid).map(|s| s.raw)
    }

    /// The CD cached for (`sid`, CD index `ssid`), as it was read (MAIR in dword 3; memory
    /// attributes are not modelled).
    pub fn cached_cd(&self, sid: u32, ssid: u32) -> Option<[u64; 8]> {
        self.inner.borrow().cd_cache.get(&(sid, ssid)).map(|c| c.raw)
    }

    /// Number of cached STEs.
    pub fn ste_cache_len(&self) -> usize {
        self.inner.borrow().ste_cache.len()
    }

    /// Number of cached CDs.
    pub fn cd_cache_len(&self) -> usize {
        self.inner.borrow().cd_cache.len()
    }

    /// Fault injection: the next CMD_SYNC never completes. The command queue stops on it
    /// (CONS stays there, no completion signal, later commands wait) until
    /// [`release_stalled_sync`](Self::release_stalled_sync); a driver's bounded wait must time
    /// out.
    pub fn stall_next_sync(&self) {
        self.inner.borrow_mut().stall_next_sync = true;
    }

    /// Lets a stalled CMD_SYNC complete at the next step.
    pub fn release_stalled_sync(&self) {
        let mut i = self.inner.borrow_mut();
        i.sync_stalled = false;
        i.stall_next_sync = false;
    }

    /// Whether the command queue is stopped on a stalled CMD_SYNC.
    pub fn is_sync_stalled(&self) -> bool {
        self.inner.borrow().sync_stalled
    }

    /// Fault injection: the command queue stops consuming commands altogether (as a hung
    /// SMMU would) while `on`; registers still work.
    pub fn stall_command_queue(&self, on: bool) {
        self.inner.borrow_mut().cmdq_stalled = on;
    }

    /// Translates a transaction from `sid` (with `ssid`, if it carries a SubstreamID) to
    /// `iova`, as the unit would now: through the caches, walking the tables on a miss, and
    /// producing an event on failure.
    ///
    /// The unit is stepped first (so register writes not yet processed take effect before the
    /// transaction) and its registers are published after, so an event's EVENTQ_PROD update
    /// is visible at once.
    pub fn translate(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<Translation, Termination> {
        let mut i = self.inner.borrow_mut();
        i.step();
        let t = i.translate(sid, ssid, iova, access);
        i.deliver_event_irq();
        i.publish();
        t
    }

    /// A device's DMA write of `data` at `iova` (an unprivileged data write), page by page
    /// through [`translate`](Self::translate), into [`Memory`]. Stops at the first
    /// termination, so one call makes at most one event. A translated address outside
    /// `Memory` is reported as `Ok(false)` (the bytes go nowhere).
    pub fn dma_write(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        data: &[u8],
    ) -> Result<bool, Termination> {
        self.dma_write_as(sid, ssid, iova, data, Access::WRITE)
    }

    /// A device's DMA read into `buf` from `iova` (an unprivileged data read); see
    /// [`dma_write`](Self::dma_write).
    pub fn dma_read(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        buf: &mut [u8],
    ) -> Result<bool, Termination> {
        self.dma_read_as(sid, ssid, iova, buf, Access::READ)
    }

    /// [`dma_write`](Self::dma_write) with explicit attributes (privileged); `access.write`
    /// is forced on.
    pub fn dma_write_as(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        data: &[u8],
        access: Access,
    ) -> Result<bool, Termination> {
        let access = Access { write: true, instruction: false, ..access };
        self.dma(sid, ssid, iova, data.len(), access, |mem, phys, range| {
            mem.write(phys, &data[range])
        })
    }

    /// [`dma_read`](Self::dma_read) with explicit attributes (privileged, instruction fetch);
    /// `access.write` is forced off.
    pub fn dma_read_as(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        buf: &mut [u8],
        access: Access,
    ) -> Result<bool, Termination> {
        let access = Access { write: false, ..access };
        let len = buf.len();
        self.dma(sid, ssid, iova, len, access, |mem, phys, range| mem.read(phys, &mut buf[range]))
    }

    fn dma(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        len: usize,
        access: Access,
        mut op: impl FnMut(&Memory, u64, core::ops::Range<usize>) -> bool,
    ) -> Result<bool, Termination> {
        let mem = self.memory();
        let mut done = 0usize;
        let mut all = true;
        while done < len {
            let at = iova.wrapping_add(done as u64);
            // CAST: less than a page.
            let chunk = ((0x1000 - (at & 0xfff)) as usize).min(len - done);
            let t = self.translate(sid, ssid, at, access)?;
            all &= op(&mem, t.phys, done..done + chunk);
            done += chunk;
        }
        Ok(all)
    }
}

/// Which register a dword of the frame belongs to, with page-1 registers as `PAGE1 + x`.
fn canonical(o: usize, alias: bool) -> usize {
    let page1 = matches!(o & 0xffff, 0xa8 | 0xac | 0xc8 | 0xcc);
    match (o >= off::PAGE1, alias) {
        (true, true) if page1 => o,
        (true, true) => o - off::PAGE1,
        (true, false) => o,
        (false, true) if page1 => o + off::PAGE1,
        (false, _) => o,
    }
}

impl Inner {
    /// What the register at canonical offset `o` reads as.
    fn render(&self, o: usize) -> u32 {
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        let pri = self.cfg.pri();
        let msi = self.cfg.msi();
        match o {
            off::IDR0..=off::IDR5 => self.cfg.idr[o / 4],
            off::IIDR => self.cfg.iidr,
            off::AIDR => self.cfg.aidr,
            off::CR0 => self.cr0,
            off::CR0ACK => self.cr0,
            off::CR1 => self.cr1,
            off::CR2 => self.cr2,
            off::GBPA => self.gbpa,
            off::IRQ_CTRL | off::IRQ_CTRLACK => self.irq_ctrl,
            off::GERROR => self.gerror,
            off::GERRORN => self.gerrorn,
            off::GERROR_IRQ_CFG0 if msi => lo(self.gerror_msi.0),
            0x6c if msi => hi(self.gerror_msi.0),
            off::GERROR_IRQ_CFG1 if msi => self.gerror_msi.1,
            off::GERROR_IRQ_CFG2 if msi => self.gerror_msi.2,
            off::STRTAB_BASE => lo(self.strtab_base),
            0x84 => hi(self.strtab_base),
            off::STRTAB_BASE_CFG => self.strtab_cfg,
            off::CMDQ_BASE => lo(self.cmdq.base),
            0x94 => hi(self.cmdq.base),
            off::CMDQ_PROD => self.cmdq.prod,
            off::CMDQ_CONS => self.cmdq.cons,
            off::EVENTQ_BASE => lo(self.evtq.base),
            0xa4 => hi(self.evtq.base),
            off::EVENTQ_PROD => self.evtq.prod,
            off::EVENTQ_CONS => self.evtq.cons,
            off::EVENTQ_IRQ_CFG0 if msi => lo(self.evtq_msi.0),
            0xb4 if msi => hi(self.evtq_msi.0),
            off::EVENTQ_IRQ_CFG1 if msi => self.evtq_msi.1,
            off::EVENTQ_IRQ_CFG2 if msi => self.evtq_msi.2,
            off::PRIQ_BASE if pri => lo(self.priq.base),
            0xc4 if pri => hi(self.priq.base),
            off::PRIQ_PROD if pri => self.priq.prod,
            off::PRIQ_CONS if pri => self.priq.cons,
            off::PRIQ_IRQ_CFG0 if pri && msi => lo(self.priq_msi.0),
            0xd4 if pri && msi => hi(self.priq_msi.0),
            off::PRIQ_IRQ_CFG1 if pri && msi => self.priq_msi.1,
            off::PRIQ_IRQ_CFG2 if pri && msi => self.priq_msi.2,
            _ => 0,
        }
    }

    /// The dwords the model scans: the low part of page 0 and of page 1.
    fn scanned() -> impl Iterator<Item = usize> {
        (0..off::SCANNED / 4).chain((off::PAGE1 / 4)..(off::PAGE1 + off::SCANNED) / 4)
    }

    fn publish(&mut self) {
        let alias = self.cfg.page1_alias;
        for i in Self::scanned() {
            let v = self.render(canonical(i * 4, alias));
            self.window.write(i, v);
            self.shadow[i] = v;
        }
    }

    fn step(&mut self) {
        self.steps += 1;
        let alias = self.cfg.page1_alias;
        let changed: Vec<(usize, usize, u32)> = Self::scanned()
            .filter_map(|i| {
                let w = self.window.read(i);
                (w != self.shadow[i]).then_some((i * 4, canonical(i * 4, alias), w))
            })
            .collect();
        let mut cr0_write = None;
        let mut gbpa_write = None;
        for &(at, o, v) in &changed {
            match o {
                off::CR0 => cr0_write = Some(v),
                off::GBPA => gbpa_write = Some(v),
                _ => self.write_dword(at, o, v),
            }
        }
        if let Some(v) = gbpa_write {
            if v & gbpa::UPDATE == 0 {
                self.errors.push(ModelError::GbpaWithoutUpdate { value: v });
            } else {
                // The update completes at once: Update reads as 0 again.
                self.gbpa = v & gbpa::FIELDS;
            }
        }
        if let Some(v) = cr0_write {
            self.write_cr0(v);
        }
        self.process_cmdq();
        self.deliver_event_irq();
        self.publish();
    }

    fn set_lo(r: &mut u64, v: u32) {
        *r = (*r & !0xffff_ffff) | u64::from(v);
    }
    fn set_hi(r: &mut u64, v: u32) {
        *r = (*r & 0xffff_ffff) | u64::from(v) << 32;
    }

    fn write_cr0(&mut self, v: u32) {
        let mut valid = cr0::SMMUEN | cr0::EVENTQEN | cr0::CMDQEN;
        if self.cfg.pri() {
            valid |= cr0::PRIQEN;
        }
        if self.cfg.ats() {
            valid |= cr0::ATSCHK;
        }
        if v & !valid != 0 {
            self.errors.push(ModelError::UnsupportedBits { offset: off::CR0, bits: v & !valid });
        }
        // CR0ACK follows at once (the model completes every update within the step).
        self.cr0 = v & valid;
    }

    /// A write of `v` to the dword at frame offset `at`, register `o` (canonical).
    fn write_dword(&mut self, at: usize, o: usize, v: u32) {
        let enabled = |bit: u32| self.cr0 & bit != 0;
        let msi = self.cfg.msi();
        let pri = self.cfg.pri();
        let qerr = |e: &mut Vec<ModelError>| {
            e.push(ModelError::QueueRegisterWrittenWhileEnabled { offset: at, value: v })
        };
        match o {
            off::CR1 => self.cr1 = v & 0xfff,
            off::CR2 => self.cr2 = v & 0x7,
            off::IRQ_CTRL => {
                let mut valid = irq_ctrl::GERROR_IRQEN | irq_ctrl::EVENTQ_IRQEN;
                if pri {
                    valid |= irq_ctrl::PRIQ_IRQEN;
                }
                if v & !valid != 0 {
                    self.errors.push(ModelError::UnsupportedBits {
                        offset: off::IRQ_CTRL,
                        bits: v & !valid,
                    });
                }
                self.irq_ctrl = v & valid;
            }
            // Acknowledging errors: the command queue may resume (processed later this step).
            off::GERRORN => self.gerrorn = v & gerror::MASK,
            off::GERROR_IRQ_CFG0 if msi => Self::set_lo(&mut self.gerror_msi.0, v & !3),
            0x6c if msi => Self::set_hi(&mut self.gerror_msi.0, v & 0xf_ffff),
            off::GERROR_IRQ_CFG1 if msi => self.gerror_msi.1 = v,
            off::GERROR_IRQ_CFG2 if msi => self.gerror_msi.2 = v & 0x3f,
            off::EVENTQ_IRQ_CFG0 if msi => Self::set_lo(&mut self.evtq_msi.0, v & !3),
            0xb4 if msi => Self::set_hi(&mut self.evtq_msi.0, v & 0xf_ffff),
            off::EVENTQ_IRQ_CFG1 if msi => self.evtq_msi.1 = v,
            off::EVENTQ_IRQ_CFG2 if msi => self.evtq_msi.2 = v & 0x3f,
            off::PRIQ_IRQ_CFG0 if msi && pri => Self::set_lo(&mut self.priq_msi.0, v & !3),
            0xd4 if msi && pri => Self::set_hi(&mut self.priq_msi.0, v & 0xf_ffff),
            off::PRIQ_IRQ_CFG1 if msi && pri => self.priq_msi.1 = v,
            // PRIQ_IRQ_CFG2 also holds LO (bit 31): interrupt only on Last.
            off::PRIQ_IRQ_CFG2 if msi && pri => self.priq_msi.2 = v & 0x8000_003f,
            off::STRTAB_BASE | 0x84 | off::STRTAB_BASE_CFG if enabled(cr0::SMMUEN) => {
                self.errors.push(ModelError::StreamTableWrittenWhileEnabled { offset: at });
            }
            off::STRTAB_BASE => Self::set_lo(&mut self.strtab_base, v & 0xffff_ffc0),
            0x84 => Self::set_hi(&mut self.strtab_base, v & (0x000f_ffff | 1 << 30)),
            off::STRTAB_BASE_CFG => {
                let fmt = (v >> regs::strtab::FMT_SHIFT) & 3;
                if fmt > regs::strtab::FMT_2LVL
                    || (fmt == regs::strtab::FMT_2LVL && !self.cfg.two_level_strtab())
                {
                    // The model then walks a linear table.
                    self.errors.push(ModelError::StreamTableFormatUnsupported { value: v });
                }
                self.strtab_cfg = v & 0x3_07ff;
            }
            off::CMDQ_BASE | 0x94 | off::CMDQ_CONS if enabled(cr0::CMDQEN) => {
                qerr(&mut self.errors)
            }
            off::CMDQ_BASE => Self::set_lo(&mut self.cmdq.base, v),
            0x94 => Self::set_hi(&mut self.cmdq.base, v & (0x000f_ffff | 1 << 30)),
            off::CMDQ_PROD => self.cmdq.prod = v & 0xf_ffff,
            off::CMDQ_CONS => self.cmdq.cons = v & (0xf_ffff | queue::ERR_MASK),
            off::EVENTQ_BASE | 0xa4 | off::EVENTQ_PROD if enabled(cr0::EVENTQEN) => {
                qerr(&mut self.errors)
            }
            off::EVENTQ_BASE => Self::set_lo(&mut self.evtq.base, v),
            0xa4 => Self::set_hi(&mut self.evtq.base, v & (0x000f_ffff | 1 << 30)),
            off::EVENTQ_PROD => self.evtq.prod = v & (0xf_ffff | queue::OVFLG),
            off::EVENTQ_CONS => self.evtq.cons = v & (0xf_ffff | queue::OVFLG),
            off::PRIQ_BASE | 0xc4 | off::PRIQ_PROD if pri && enabled(cr0::PRIQEN) => {
                qerr(&mut self.errors)
            }
            off::PRIQ_BASE if pri => Self::set_lo(&mut self.priq.base, v),
            0xc4 if pri => Self::set_hi(&mut self.priq.base, v & (0x000f_ffff | 1 << 30)),
            off::PRIQ_PROD if pri => self.priq.prod = v & (0xf_ffff | queue::OVFLG),
            off::PRIQ_CONS if pri => self.priq.cons = v & (0xf_ffff | queue::OVFLG),
            _ => self.errors.push(ModelError::ReadOnlyWrite { offset: at, value: v }),
        }
    }

    /// Sets GERROR bits (toggles them where they are not already active, §7.5) and raises the
    /// GERROR interrupt for newly active errors.
    pub(crate) fn raise_gerror(&mut self, bits: u32) {
        let active = self.gerror ^ self.gerrorn;
        let new = bits & !active;
        if new == 0 {
            return;
        }
        self.gerror ^= new;
        if self.irq_ctrl & irq_ctrl::GERROR_IRQEN != 0 {
            let cfg = self.gerror_msi;
            self.interrupt(InterruptKind::Gerror, cfg.0, cfg.1);
        }
    }

    /// Whether a GERROR bit is active (differs from GERRORN).
    pub(crate) fn gerror_active(&self, bit: u32) -> bool {
        (self.gerror ^ self.gerrorn) & bit != 0
    }

    /// Sends an interrupt: an MSI of `data` to `address` when the unit has MSIs and the
    /// address is non-zero (written to [`Memory`] if it lies there), else the wired line.
    pub(crate) fn interrupt(&mut self, kind: InterruptKind, address: u64, data: u32) {
        let msi = (self.cfg.msi() && address != 0).then_some((address, data));
        // An MSI doorbell outside memory (an interrupt controller) is normal; only a CMD_SYNC's
        // MSI, which software polls in memory, is expected to land there.
        if let Some((a, d)) = msi
            && !self.mem.write_u32(a, d)
            && kind == InterruptKind::CmdSync
        {
            self.errors.push(ModelError::MsiUnmapped { address: a });
            self.raise_gerror(gerror::MSI_CMDQ_ABT_ERR);
        }
        self.interrupts.push(Interrupt { kind, msi });
    }

    /// Raises the event queue interrupt once for the events recorded since the last call,
    /// if IRQ_CTRL.EVENTQ_IRQEN is set (the interrupt is an edge: one per batch).
    pub(crate) fn deliver_event_irq(&mut self) {
        if core::mem::take(&mut self.event_irq_pending)
            && self.irq_ctrl & irq_ctrl::EVENTQ_IRQEN != 0
        {
            let cfg = self.evtq_msi;
            self.interrupt(InterruptKind::Event, cfg.0, cfg.1);
        }
    }
}
