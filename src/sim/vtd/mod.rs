//! A model of one Intel VT-d remapping unit, [`RemappingUnit`], for host tests of the driver
//! and for integrators: registers and the GCMD/GSTS handshake (§11.4), queued invalidation
//! (§6.5.2), legacy and scalable-mode translation with an IOTLB and context/PASID caches (§3,
//! §9), fault recording and fault events (§7.2, §7.4), and the page request queue with page
//! group responses ([`prq`], §7.5).
//!
//! It follows the specification (rev. 4.x/5.x); where QEMU 10.0.2 differs in a way a driver
//! could come to rely on (qemu notes §1), the model behaves like hardware and records a
//! [`ModelError`] that tests assert on (8-byte writes to 32-bit registers, a wait descriptor
//! with both SW and IF or with neither).
//!
//! # Driving it from the driver under test
//!
//! The driver maps registers with [`Platform::map_mmio`](crate::hal::Platform::map_mmio) and
//! uses plain volatile loads and stores, with no callback into the model. So the model keeps
//! its register window in host memory and **processes what was written when it is stepped**
//! ([`RemappingUnit::step`]): it compares the window with what it last published, applies
//! every changed dword (plain registers first, then GCMD, then register-based invalidation,
//! then the invalidation queue), and publishes the new register values. [`SimPlatform`] steps
//! every attached unit from [`relax`](crate::hal::Platform::relax), which
//! [`crate::hal::poll`] calls between polls, so the driver's bounded waits (GSTS after a
//! command, a wait descriptor's status) see the model progress, single-threaded:
//!
//! ```
//! use pcie_iommu::sim::vtd::{self, Config};
//! use pcie_iommu::vtd::{TableMode, Unit};
//!
//! let (platform, model) = vtd::pair(Config::qemu_legacy());
//! // The driver writes RTADDR and GCMD.SRTP, then polls GSTS.RTPS: each poll relaxes the
//! // platform, which steps the model, which latches the root table and sets RTPS.
//! let unit = Unit::new(&platform, vtd::DEFAULT_BASE, 0x1000, TableMode::Legacy).unwrap();
//! assert_eq!(model.root_table(), Some(unit.root_table().0));
//! assert!(model.errors().is_empty(), "{:?}", model.errors());
//! ```
//!
//! A test can also write registers itself ([`RemappingUnit::write32`]) and call `step`.
//!
//! # What a plain-memory window can and cannot see
//!
//! A store is visible only if it changes the dword. So the model makes the values software is
//! expected to write differ from what it reads: GCMD (write-only) reads as [`regs::gcmd::IDLE`]
//! (all reserved bits set), and with [`Config::write_markers`] on, FSTS and ICS read with their
//! reserved bit 31 set, so a write-1-to-clear of exactly the bits read is seen. A driver must
//! mask what it writes back (as `vtd::FaultStatus::RW1C` does). An 8-byte write to a 32-bit
//! register is seen when the upper dword it also hits is read-only (GCMD/GSTS) and recorded as
//! [`ModelError::WideWrite`]; two writable 32-bit registers written by one 8-byte store
//! (FECTL/FEDATA) look like two 32-bit writes and cannot be told apart. Several writes to one
//! register between two steps look like the last one only: the driver must wait for GSTS
//! between commands anyway (§11.4.4).
//!
//! # Not modelled
//!
//! Page requests ([`prq`], ECAP.PRS) are modelled from the unit's side only: a test injects
//! what a device would send (no device model issues them, and the PRE bit of the context entry
//! is not checked before a request is queued). Also absent: interrupt remapping
//! (SIRTP latches IRTA, IEC descriptors are logged), advanced fault logging, protected memory
//! regions, caching mode's caching of not-present entries, paging-structure caches (only leaf
//! translations are cached), second-stage A/D bits, first-stage XD/NXE and privileged or
//! execute requests (all requests are user-mode reads or writes, as in QEMU), and nested
//! fault reasons (a second-stage fault while walking first-stage tables reports the
//! second-stage reason).

use crate::sim::std;
mod memory;
pub mod prq;
mod qi;
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

pub use memory::{Memory, SimPlatform, SimUnit};
pub use qi::{
    CcGranularity, Descriptor, IotlbGranularity, LoggedDescriptor, PasidCacheGranularity,
    PasidIotlbGranularity, Source,
};
pub use prq::{InjectOutcome, PageRequestDescriptor, PageResponse, ResponseProblem, ResponseSource};
pub use regs::Config;
pub use walk::{Translation, TranslationKind};

use crate::addr::{PhysAddr, RequesterId};
use regs::{ccmd, ectl, fsts, gcmd, iotlb, off};

/// Where [`pair`] places the register window: QEMU's q35 `intel-iommu` base.
pub const DEFAULT_BASE: PhysAddr = PhysAddr(0xfed9_0000);

/// A [`SimPlatform`] and a [`RemappingUnit`] sharing one [`Memory`], the unit's registers at
/// [`DEFAULT_BASE`].
pub fn pair(config: Config) -> (SimPlatform, RemappingUnit) {
    let memory = Memory::new();
    let platform = SimPlatform::new(&memory);
    let unit = RemappingUnit::new(&memory, config);
    platform.attach(DEFAULT_BASE, &unit);
    (platform, unit)
}

/// A driver mistake or a use of a QEMU quirk the model detected. Hardware would misbehave or
/// behave undefinedly; the model records the error and carries on as documented per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelError {
    /// An 8-byte write to the 32-bit register at `offset`, seen through the read-only or
    /// reserved dword it shares a quadword with (QEMU aborts on it, qemu notes §1.3). The
    /// register's own dword is applied as if written alone.
    WideWrite {
        /// The 32-bit register.
        offset: usize,
        /// The whole value written.
        value: u64,
    },
    /// A write to a read-only or reserved dword; it is discarded.
    ReadOnlyWrite {
        /// Offset of the dword.
        offset: usize,
        /// The value written.
        value: u32,
    },
    /// GCMD written with reserved bits (22:0) set, for example by a read-modify-write of the
    /// write-only GCMD; the reserved bits are ignored.
    GcmdReservedBits {
        /// The value written.
        value: u32,
    },
    /// One GCMD write changed more than one thing; §11.4.4 asks software to serialize. All of
    /// them are applied.
    GcmdMultipleCommands {
        /// The value written.
        value: u32,
    },
    /// A GCMD command for a feature ECAP/CAP does not report; ignored.
    GcmdUnsupported {
        /// The command bit.
        bit: u32,
    },
    /// TE set before any SRTP latched a root table; requests then fault on the root table.
    TranslationWithoutRootTable,
    /// SRTP latched a translation table mode that is reserved or not supported.
    InvalidTableMode {
        /// The RTADDR value latched.
        rtaddr: u64,
    },
    /// IRE set before SIRTP latched an interrupt remapping table.
    InterruptRemappingWithoutTable,
    /// QIE cleared while descriptors were pending (§6.5.2: software must drain first).
    QueueDisabledWhileBusy {
        /// IQH then.
        head: u64,
        /// IQT then.
        tail: u64,
    },
    /// IQA written while queued invalidation is enabled; the write is discarded.
    IqaWrittenWhileEnabled,
    /// IQA.DW (256-bit descriptors) set on a unit without ECAP.SMTS; the queue runs with
    /// 128-bit descriptors. Reported once.
    WideQueueWithoutSmts,
    /// CCMD or IOTLB register invalidation while queued invalidation is enabled (§6.5.2); not
    /// performed.
    RegisterInvalidationWithQueue {
        /// Offset of the register.
        offset: usize,
    },
    /// A wait descriptor with both SW and IF: valid per the specification (the model writes
    /// the status and raises the interrupt) but it crashes QEMU 10.0.2 (qemu notes §1.6).
    WaitSwAndIf {
        /// Queue index of the descriptor.
        index: u32,
    },
    /// A wait descriptor with neither SW nor IF: a valid fence per the specification, an IQE
    /// on QEMU 10.0.2.
    WaitNeither {
        /// Queue index of the descriptor.
        index: u32,
    },
    /// A wait descriptor's status address is not in [`Memory`]; nothing was written.
    WaitStatusUnmapped {
        /// The status address.
        address: u64,
    },
    /// A page-selective invalidation whose address is not aligned to its 2^AM pages; the
    /// model invalidates the aligned range that contains it, as hardware ignores the low bits.
    UnalignedInvalidation {
        /// The address.
        address: u64,
        /// The address mask.
        am: u8,
    },
}

/// Which interrupt a [`RemappingUnit`] sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// The fault event (FECTL/FEDATA/FEADDR, §7.4).
    Fault,
    /// The invalidation completion event (IECTL/IEDATA/IEADDR, §6.5.2.8).
    InvalidationCompletion,
    /// The page request event (PECTL/PEDATA/PEADDR, §7.5).
    PageRequest,
}

/// An interrupt message the unit sent (an MSI write the test can look at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// Which event.
    pub kind: InterruptKind,
    /// The message address (xEADDR | xEUADDR << 32).
    pub address: u64,
    /// The message data.
    pub data: u32,
}

/// What happened to a fault in the recording registers (§7.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// Recorded in fault recording register `0`.
    Recorded(usize),
    /// Dropped because a fault from the same source is recorded and pending (compression).
    Compressed,
    /// Dropped and FSTS.PFO set: the next recording register was still full.
    Overflow,
    /// Not recorded: fault processing disabled (FPD) in the context, PASID-directory or PASID
    /// entry.
    Suppressed,
}

/// A non-recoverable translation fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Fault reason (Appendix A), see [`regs::reason`].
    pub reason: u8,
    /// Requester ID of the request.
    pub source: RequesterId,
    /// The PASID the request carried (requests translated through RID_PASID carry none).
    pub pasid: Option<u32>,
    /// The input address.
    pub address: u64,
    /// A write (else a read).
    pub write: bool,
    /// What the recording registers did with it.
    pub outcome: FaultOutcome,
}

/// The register window: host memory the driver reads and writes with volatile accesses.
#[derive(Debug)]
struct Window {
    ptr: NonNull<u32>,
    dwords: usize,
    layout: Layout,
}

impl Window {
    fn new(bytes: usize) -> Self {
        let dwords = bytes.max(0x1000).next_multiple_of(8) / 4;
        let layout = Layout::from_size_align(dwords * 4, 4096).expect("window layout");
        // SAFETY: non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        Self { ptr: NonNull::new(raw.cast()).expect("host out of memory"), dwords, layout }
    }
    fn read(&self, index: usize) -> u32 {
        assert!(index < self.dwords);
        // SAFETY: in bounds; volatile because the driver accesses the same memory through a raw
        // pointer.
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

/// A cached context entry (§6.2.1), keyed by requester ID.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CachedContext {
    Legacy { did: u16, tt: u8, aw: u8, slptptr: u64, fpd: bool },
    Scalable { pasid_dir: u64, pdts: u8, pasid_enable: bool, rid_pasid: u32, fpd: bool },
}

/// A cached PASID entry (§6.2.2), keyed by (requester ID, PASID).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CachedPasid {
    pub(crate) did: u16,
    pub(crate) pgtt: u8,
    pub(crate) aw: u8,
    pub(crate) ssptptr: u64,
    pub(crate) fsptptr: u64,
    pub(crate) fspm: u8,
    pub(crate) fpd: bool,
}

/// One cached leaf translation (§6.2.3).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IotlbEntry {
    pub(crate) did: u16,
    /// PASID the entry is tagged with (RID_PASID for requests without one); `None` in
    /// legacy mode.
    pub(crate) pasid: Option<u32>,
    pub(crate) kind: TranslationKind,
    pub(crate) iova: u64,
    pub(crate) size: u64,
    pub(crate) phys: u64,
    pub(crate) read: bool,
    pub(crate) write: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) mem: Memory,
    window: Window,
    /// Dwords below this are registers; the rest of the window is reserved and not scanned.
    active: usize,
    shadow: Vec<u32>,
    pub(crate) gsts: u32,
    rtaddr: u64,
    /// RTADDR latched by the last SRTP.
    pub(crate) root: Option<u64>,
    ccmd: u64,
    /// FSTS without FRI and markers; PPF follows the fault records.
    pub(crate) fsts: u32,
    fri: u32,
    fectl: u32,
    fedata: u32,
    feaddr: u32,
    feuaddr: u32,
    pmen: u32,
    pub(crate) iqh: u64,
    pub(crate) iqt: u64,
    pub(crate) iqa: u64,
    pub(crate) ics: u32,
    pub(crate) iectl: u32,
    iedata: u32,
    ieaddr: u32,
    ieuaddr: u32,
    pub(crate) iqercd: u64,
    irta: u64,
    irta_latched: Option<u64>,
    /// Page request queue (0xc0..0xf0).
    pub(crate) prq: prq::PrqState,
    iva: u64,
    iotlb_reg: u64,
    frcd: Vec<[u32; 4]>,
    fault_next: usize,
    pub(crate) ctx_cache: BTreeMap<u16, CachedContext>,
    pub(crate) pasid_cache: BTreeMap<(u16, u32), CachedPasid>,
    pub(crate) iotlb: Vec<IotlbEntry>,
    pub(crate) log: Vec<LoggedDescriptor>,
    pub(crate) errors: Vec<ModelError>,
    interrupts: Vec<Interrupt>,
    faults: Vec<Fault>,
    pub(crate) stall_next_wait: bool,
    pub(crate) stalled: bool,
    pub(crate) inject_ite: Option<u16>,
    pub(crate) inject_ice: Option<u16>,
    steps: u64,
}

/// A model of one VT-d remapping unit. A cheap-to-clone handle: clones (such as the one a
/// [`SimPlatform`] keeps to step it) share the unit.
#[derive(Clone, Debug)]
pub struct RemappingUnit {
    inner: Rc<RefCell<Inner>>,
}

impl RemappingUnit {
    /// A unit in its reset state (translation, QI and interrupt remapping off; FECTL.IM and
    /// IECTL.IM set), reading tables from `memory`.
    ///
    /// # Panics
    /// If the fault recording or IOTLB registers CAP/ECAP place lie outside
    /// [`Config::register_size`] (a test configuration error).
    pub fn new(memory: &Memory, config: Config) -> Self {
        let window = Window::new(config.register_size);
        let size = window.dwords * 4;
        assert!(config.fro() >= 0xf0 && config.fro() + config.nfr() * 16 <= size, "CAP.FRO/NFR outside the window");
        assert!(config.iro() >= 0xf0 && config.iro() + 16 <= size, "ECAP.IRO outside the window");
        let nfr = config.nfr();
        let active = (config.fro() + nfr * 16).max(config.iro() + 16).max(0x100).next_multiple_of(8) / 4;
        let mut inner = Inner {
            active,
            mem: memory.clone(),
            shadow: std::vec![0; window.dwords],
            window,
            gsts: 0,
            rtaddr: 0,
            root: None,
            ccmd: 0,
            fsts: 0,
            fri: 0,
            fectl: ectl::IM,
            fedata: 0,
            feaddr: 0,
            feuaddr: 0,
            pmen: 0,
            iqh: 0,
            iqt: 0,
            iqa: 0,
            ics: 0,
            iectl: ectl::IM,
            iedata: 0,
            ieaddr: 0,
            ieuaddr: 0,
            iqercd: 0,
            irta: 0,
            irta_latched: None,
            prq: prq::PrqState::new(),
            iva: 0,
            iotlb_reg: 0,
            frcd: std::vec![[0; 4]; nfr],
            fault_next: 0,
            ctx_cache: BTreeMap::new(),
            pasid_cache: BTreeMap::new(),
            iotlb: Vec::new(),
            log: Vec::new(),
            errors: Vec::new(),
            interrupts: Vec::new(),
            faults: Vec::new(),
            stall_next_wait: false,
            stalled: false,
            inject_ite: None,
            inject_ice: None,
            steps: 0,
            cfg: config,
        };
        inner.publish();
        Self { inner: Rc::new(RefCell::new(inner)) }
    }

    /// Processes everything written to the registers since the last step, runs the
    /// invalidation queue as far as it goes, and publishes the registers.
    pub fn step(&self) {
        self.inner.borrow_mut().step();
    }

    /// Host address of the register window (what [`SimPlatform`] maps).
    pub fn window(&self) -> NonNull<u8> {
        self.inner.borrow().window.ptr.cast()
    }

    /// Size of the register window in bytes.
    pub fn window_size(&self) -> usize {
        self.inner.borrow().window.dwords * 4
    }

    /// The configuration.
    pub fn config(&self) -> Config {
        self.inner.borrow().cfg.clone()
    }

    /// The memory the unit reads tables from.
    pub fn memory(&self) -> Memory {
        self.inner.borrow().mem.clone()
    }

    /// A 32-bit store to the window, as the driver would do; takes effect at the next
    /// [`step`](Self::step).
    pub fn write32(&self, offset: usize, value: u32) {
        self.inner.borrow().window.write(offset / 4, value);
    }

    /// A 64-bit store to the window (both dwords at once, as an 8-byte MMIO write).
    pub fn write64(&self, offset: usize, value: u64) {
        let i = self.inner.borrow();
        // CAST: the two halves.
        i.window.write(offset / 4, value as u32);
        i.window.write(offset / 4 + 1, (value >> 32) as u32);
    }

    /// A 32-bit load from the window (what the driver would read now).
    pub fn read32(&self, offset: usize) -> u32 {
        self.inner.borrow().window.read(offset / 4)
    }

    /// A 64-bit load from the window.
    pub fn read64(&self, offset: usize) -> u64 {
        let i = self.inner.borrow();
        u64::from(i.window.read(offset / 4)) | u64::from(i.window.read(offset / 4 + 1)) << 32
    }

    /// GSTS_REG.
    pub fn gsts(&self) -> u32 {
        self.inner.borrow().gsts
    }

    /// FSTS_REG as hardware holds it (no write marker), FRI included.
    pub fn fsts(&self) -> u32 {
        let i = self.inner.borrow();
        i.fsts | i.fri << fsts::FRI_SHIFT
    }

    /// The RTADDR value latched by the last SRTP, with its TTM bits.
    pub fn root_table(&self) -> Option<u64> {
        self.inner.borrow().root
    }

    /// The IRTA value latched by the last SIRTP.
    pub fn interrupt_table(&self) -> Option<u64> {
        self.inner.borrow().irta_latched
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.inner.borrow().steps
    }

    /// Every descriptor processed (queued or register-based invalidations), oldest first.
    pub fn descriptors(&self) -> Vec<LoggedDescriptor> {
        self.inner.borrow().log.clone()
    }

    /// Takes the descriptor log, leaving it empty.
    pub fn take_descriptors(&self) -> Vec<LoggedDescriptor> {
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

    /// Every fault a translation produced (recorded or not), oldest first.
    pub fn faults(&self) -> Vec<Fault> {
        self.inner.borrow().faults.clone()
    }

    /// The fault recording registers as 128-bit values (low, high), whether F is set or not.
    pub fn fault_records(&self) -> Vec<(u64, u64)> {
        self.inner
            .borrow()
            .frcd
            .iter()
            .map(|d| (u64::from(d[0]) | u64::from(d[1]) << 32, u64::from(d[2]) | u64::from(d[3]) << 32))
            .collect()
    }

    /// Number of cached leaf translations (IOTLB entries).
    pub fn iotlb_len(&self) -> usize {
        self.inner.borrow().iotlb.len()
    }

    /// Number of cached context entries.
    pub fn context_cache_len(&self) -> usize {
        self.inner.borrow().ctx_cache.len()
    }

    /// Number of cached PASID entries.
    pub fn pasid_cache_len(&self) -> usize {
        self.inner.borrow().pasid_cache.len()
    }

    /// Fault injection: the next wait descriptor never completes. The queue stalls on it (IQH
    /// stays there, its status is not written, later descriptors wait) until
    /// [`release_stalled_wait`](Self::release_stalled_wait); a driver's bounded wait must
    /// time out.
    pub fn stall_next_wait(&self) {
        self.inner.borrow_mut().stall_next_wait = true;
    }

    /// Lets a stalled wait descriptor complete at the next step.
    pub fn release_stalled_wait(&self) {
        let mut i = self.inner.borrow_mut();
        i.stalled = false;
        i.stall_next_wait = false;
    }

    /// Whether the queue is stalled on a wait descriptor.
    pub fn is_stalled(&self) -> bool {
        self.inner.borrow().stalled
    }

    /// Fault injection: the next device-TLB invalidation (0x3 or 0x8) times out: FSTS.ITE is
    /// set, IQERCD.ITESID names `sid`, and the queue stops after that descriptor until ITE is
    /// cleared (§6.5.2.10).
    pub fn inject_ite(&self, sid: u16) {
        self.inner.borrow_mut().inject_ite = Some(sid);
    }

    /// Fault injection: the next device-TLB invalidation gets an invalid completion: FSTS.ICE
    /// is set and IQERCD.ICESID names `sid`; processing continues (§6.5.2.10).
    pub fn inject_ice(&self, sid: u16) {
        self.inner.borrow_mut().inject_ice = Some(sid);
    }

    /// Translates a DMA request from `rid` (with `pasid`, if the request carries one) to
    /// `iova`, as the unit would now: through the caches, walking the tables on a miss, and
    /// recording a fault on failure. With translation disabled (GSTS.TES clear) requests pass
    /// through untranslated.
    ///
    /// The unit is stepped first (so register writes not yet processed take effect before the
    /// request, and are not lost) and its registers are published after, so a fault is
    /// visible in FSTS and the recording registers at once.
    pub fn translate(&self, rid: RequesterId, pasid: Option<u32>, iova: u64, write: bool) -> Result<Translation, Fault> {
        let mut i = self.inner.borrow_mut();
        i.step();
        let t = i.translate(rid, pasid, iova, write);
        i.publish();
        t
    }

    /// A device's DMA write of `data` at `iova`, page by page through [`translate`](Self::translate),
    /// into [`Memory`]. Stops at the first fault. A translated address outside `Memory` is
    /// reported as `Ok(false)` (the bytes go nowhere, as to unbacked memory).
    pub fn dma_write(&self, rid: RequesterId, pasid: Option<u32>, iova: u64, data: &[u8]) -> Result<bool, Fault> {
        self.dma(rid, pasid, iova, data.len(), true, |mem, phys, range| mem.write(phys, &data[range]))
    }

    /// A device's DMA read into `buf` from `iova`; see [`dma_write`](Self::dma_write).
    pub fn dma_read(&self, rid: RequesterId, pasid: Option<u32>, iova: u64, buf: &mut [u8]) -> Result<bool, Fault> {
        let len = buf.len();
        self.dma(rid, pasid, iova, len, false, |mem, phys, range| mem.read(phys, &mut buf[range]))
    }

    fn dma(
        &self,
        rid: RequesterId,
        pasid: Option<u32>,
        iova: u64,
        len: usize,
        write: bool,
        mut access: impl FnMut(&Memory, u64, core::ops::Range<usize>) -> bool,
    ) -> Result<bool, Fault> {
        let mem = self.memory();
        let mut done = 0usize;
        let mut all = true;
        while done < len {
            let at = iova + done as u64;
            // CAST: less than a page.
            let chunk = ((0x1000 - (at & 0xfff)) as usize).min(len - done);
            let t = self.translate(rid, pasid, at, write)?;
            all &= access(&mem, t.phys, done..done + chunk);
            done += chunk;
        }
        Ok(all)
    }
}

impl Inner {
    fn fro(&self) -> usize {
        self.cfg.fro()
    }

    /// Registers at 32-bit granularity that take writes (§11.4: RW and RW1C fields).
    fn is_writable(&self, o: usize) -> bool {
        let (fro, iro) = (self.fro(), self.cfg.iro());
        if (fro..fro + self.frcd.len() * 16).contains(&o) {
            return (o - fro) % 16 == 12;
        }
        if (iro..iro + 16).contains(&o) {
            return true;
        }
        matches!(
            o,
            off::GCMD
                | off::RTADDR
                | 0x24
                | off::CCMD
                | 0x2c
                | off::FSTS
                | off::FECTL
                | off::FEDATA
                | off::FEADDR
                | off::FEUADDR
                | off::PMEN
                | off::IQT
                | off::IQA
                | 0x94
                | off::ICS
                | off::IECTL
                | off::IEDATA
                | off::IEADDR
                | off::IEUADDR
                | off::IRTA
                | 0xbc
                | 0xc0..=0xef
        )
    }

    /// The 32-bit registers (as opposed to halves of 64-bit ones).
    fn is_register32(o: usize) -> bool {
        matches!(
            o,
            off::GCMD
                | off::FSTS
                | off::FECTL
                | off::FEDATA
                | off::FEADDR
                | off::FEUADDR
                | off::PMEN
                | off::ICS
                | off::IECTL
                | off::IEDATA
                | off::IEADDR
                | off::IEUADDR
                | off::PRS
                | off::PECTL
                | off::PEDATA
                | off::PEADDR
                | off::PEUADDR
        )
    }

    /// What the dword at `o` reads as.
    fn render(&self, o: usize) -> u32 {
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        let (fro, iro) = (self.fro(), self.cfg.iro());
        if (fro..fro + self.frcd.len() * 16).contains(&o) {
            return self.frcd[(o - fro) / 16][(o - fro) % 16 / 4];
        }
        if (iro..iro + 16).contains(&o) {
            let v = if o - iro < 8 { self.iva } else { self.iotlb_reg };
            return if o.is_multiple_of(8) { lo(v) } else { hi(v) };
        }
        let marker = |m: u32| if self.cfg.write_markers { m } else { 0 };
        match o {
            off::VER => self.cfg.version,
            off::CAP => lo(self.cfg.cap),
            0x0c => hi(self.cfg.cap),
            off::ECAP => lo(self.cfg.ecap),
            0x14 => hi(self.cfg.ecap),
            off::GCMD => gcmd::IDLE,
            off::GSTS => self.gsts,
            off::RTADDR => lo(self.rtaddr),
            0x24 => hi(self.rtaddr),
            off::CCMD => lo(self.ccmd),
            0x2c => hi(self.ccmd),
            off::FSTS => self.fsts | self.fri << fsts::FRI_SHIFT | marker(fsts::MARKER),
            off::FECTL => self.fectl,
            off::FEDATA => self.fedata,
            off::FEADDR => self.feaddr,
            off::FEUADDR => self.feuaddr,
            // EPM (31) and its status PRS (0): no protected regions (CAP.PLMR/PHMR clear).
            off::PMEN => self.pmen | self.pmen >> 31,
            off::IQH => lo(self.iqh),
            0x84 => hi(self.iqh),
            off::IQT => lo(self.iqt),
            0x8c => hi(self.iqt),
            off::IQA => lo(self.iqa),
            0x94 => hi(self.iqa),
            off::ICS => self.ics | marker(regs::ics::MARKER),
            off::IECTL => self.iectl,
            off::IEDATA => self.iedata,
            off::IEADDR => self.ieaddr,
            off::IEUADDR => self.ieuaddr,
            off::IQERCD => lo(self.iqercd),
            0xb4 => hi(self.iqercd),
            off::IRTA => lo(self.irta),
            0xbc => hi(self.irta),
            0xc0..=0xef => self.render_prq(o),
            _ => 0,
        }
    }

    fn publish(&mut self) {
        for i in 0..self.active {
            let v = self.render(i * 4);
            self.window.write(i, v);
            self.shadow[i] = v;
        }
    }

    fn step(&mut self) {
        self.steps += 1;
        let mut command = None;
        let changed: Vec<(usize, u32)> = (0..self.active)
            .filter_map(|i| {
                let w = self.window.read(i);
                (w != self.shadow[i]).then_some((i * 4, w))
            })
            .collect();
        for &(o, v) in &changed {
            if o == off::GCMD {
                command = Some(v);
            } else if self.is_writable(o) {
                self.write_dword(o, v);
            } else if o % 8 == 4 && Self::is_register32(o - 4) {
                // GCMD/GSTS: the 32-bit register is the low half, its read-only neighbour high.
                let low = self.window.read((o - 4) / 4);
                self.errors.push(ModelError::WideWrite { offset: o - 4, value: u64::from(low) | u64::from(v) << 32 });
            } else if o.is_multiple_of(8) && Self::is_register32(o + 4) {
                // FSTS, PMEN, ICS: a reserved dword below the 32-bit register (0x30, 0x60,
                // 0x98); the register's own dword was applied as a 32-bit write.
                let high = self.window.read((o + 4) / 4);
                self.errors.push(ModelError::WideWrite { offset: o + 4, value: u64::from(v) | u64::from(high) << 32 });
            } else {
                self.errors.push(ModelError::ReadOnlyWrite { offset: o, value: v });
            }
        }
        if let Some(v) = command {
            self.command(v);
        }
        self.register_invalidation();
        self.process_queue();
        self.deliver_pending();
        self.publish();
    }

    fn set_lo(r: &mut u64, v: u32) {
        *r = (*r & !0xffff_ffff) | u64::from(v);
    }
    fn set_hi(r: &mut u64, v: u32) {
        *r = (*r & 0xffff_ffff) | u64::from(v) << 32;
    }

    fn write_dword(&mut self, o: usize, v: u32) {
        let (fro, iro) = (self.fro(), self.cfg.iro());
        if o >= fro && o < fro + self.frcd.len() * 16 {
            // Dword 3 of a record: F is write-1-to-clear (§11.4.14).
            if v & regs::frcd::F != 0 {
                self.frcd[(o - fro) / 16][3] &= !regs::frcd::F;
                self.update_ppf();
            }
            return;
        }
        if o >= iro && o < iro + 16 {
            match o - iro {
                0 => Self::set_lo(&mut self.iva, v),
                4 => Self::set_hi(&mut self.iva, v),
                8 => Self::set_lo(&mut self.iotlb_reg, v),
                _ => Self::set_hi(&mut self.iotlb_reg, v),
            }
            return;
        }
        match o {
            off::RTADDR => Self::set_lo(&mut self.rtaddr, v & !0x3ff),
            0x24 => Self::set_hi(&mut self.rtaddr, v),
            off::CCMD => Self::set_lo(&mut self.ccmd, v),
            0x2c => Self::set_hi(&mut self.ccmd, v),
            off::FSTS => {
                self.fsts &= !(v & fsts::RW1C);
                self.update_ppf();
            }
            off::FECTL => self.fectl = (self.fectl & ectl::IP) | (v & ectl::IM),
            off::FEDATA => self.fedata = v,
            off::FEADDR => self.feaddr = v & !3,
            off::FEUADDR => self.feuaddr = v,
            off::PMEN => self.pmen = v & (1 << 31),
            // QT is bits 18:4 (§11.4.17).
            off::IQT => self.iqt = u64::from(v & 0x7fff0),
            off::IQA | 0x94 => {
                if self.gsts & gcmd::QIE != 0 {
                    self.errors.push(ModelError::IqaWrittenWhileEnabled);
                } else if o == off::IQA {
                    Self::set_lo(&mut self.iqa, v & 0xffff_f807);
                } else {
                    Self::set_hi(&mut self.iqa, v);
                }
            }
            // §6.5.2.8: clearing IWC clears a pending (masked) completion interrupt.
            off::ICS if v & regs::ics::IWC != 0 => {
                self.ics &= !regs::ics::IWC;
                self.iectl &= !ectl::IP;
            }
            off::IECTL => self.iectl = (self.iectl & ectl::IP) | (v & ectl::IM),
            off::IEDATA => self.iedata = v,
            off::IEADDR => self.ieaddr = v & !3,
            off::IEUADDR => self.ieuaddr = v,
            off::IRTA => Self::set_lo(&mut self.irta, v),
            0xbc => Self::set_hi(&mut self.irta, v),
            0xc0..=0xef => self.write_prq(o, v),
            _ => {}
        }
    }

    /// PPF follows the records (§11.4.9); once nothing is pending the fault event's IP clears.
    fn update_ppf(&mut self) {
        if self.frcd.iter().any(|r| r[3] & regs::frcd::F != 0) {
            self.fsts |= fsts::PPF;
        } else {
            self.fsts &= !fsts::PPF;
        }
        if self.fsts & fsts::EVENT == 0 {
            self.fectl &= !ectl::IP;
        }
    }

    /// A GCMD write (§11.4.4): one-shot commands act when written as 1, persistent enables act
    /// when they differ from GSTS; completion is immediate, so GSTS shows the result at once.
    fn command(&mut self, v: u32) {
        if v & gcmd::RESERVED != 0 {
            self.errors.push(ModelError::GcmdReservedBits { value: v });
        }
        let persistent = gcmd::TE | gcmd::QIE | gcmd::IRE | gcmd::CFI | gcmd::EAFL;
        let oneshot = gcmd::SRTP | gcmd::SFL | gcmd::WBF | gcmd::SIRTP;
        let toggled = (v ^ self.gsts) & persistent;
        if (toggled | (v & oneshot)).count_ones() > 1 {
            self.errors.push(ModelError::GcmdMultipleCommands { value: v });
        }
        if v & gcmd::SRTP != 0 {
            let ttm = (self.rtaddr >> regs::rtaddr::TTM_SHIFT) & 3;
            let ok = ttm == regs::rtaddr::TTM_LEGACY || (ttm == regs::rtaddr::TTM_SCALABLE && self.cfg.smts());
            if !ok {
                self.errors.push(ModelError::InvalidTableMode { rtaddr: self.rtaddr });
            }
            self.root = Some(self.rtaddr);
            self.gsts |= gcmd::SRTP;
            // §11.4.4: with ESRTPS the root-table switch also invalidates the caches.
            if self.cfg.esrtps() {
                self.ctx_cache.clear();
                self.pasid_cache.clear();
                self.iotlb.clear();
            }
        }
        if v & gcmd::SIRTP != 0 {
            self.irta_latched = Some(self.irta);
            self.gsts |= gcmd::SIRTP;
        }
        if v & gcmd::WBF != 0 && !self.cfg.rwbf() {
            // Without CAP.RWBF the bit is ignored; WBFS stays clear either way since the flush
            // completes at once.
        }
        if v & (gcmd::SFL | gcmd::EAFL) & !self.gsts != 0 && !self.cfg.cap_bit(3) {
            self.errors.push(ModelError::GcmdUnsupported { bit: v & (gcmd::SFL | gcmd::EAFL) });
        }
        if toggled & gcmd::QIE != 0 {
            if v & gcmd::QIE != 0 {
                if self.cfg.qi() {
                    self.gsts |= gcmd::QIE;
                } else {
                    self.errors.push(ModelError::GcmdUnsupported { bit: gcmd::QIE });
                }
            } else {
                if self.iqh != self.iqt {
                    self.errors.push(ModelError::QueueDisabledWhileBusy { head: self.iqh, tail: self.iqt });
                }
                self.gsts &= !gcmd::QIE;
                // §11.4.16: IQH resets to 0 when queued invalidation is disabled.
                self.iqh = 0;
                self.stalled = false;
            }
        }
        if toggled & gcmd::IRE != 0 {
            if v & gcmd::IRE == 0 {
                self.gsts &= !gcmd::IRE;
            } else if !self.cfg.ecap_bit(3) {
                self.errors.push(ModelError::GcmdUnsupported { bit: gcmd::IRE });
            } else {
                if self.irta_latched.is_none() {
                    self.errors.push(ModelError::InterruptRemappingWithoutTable);
                }
                self.gsts |= gcmd::IRE;
            }
        }
        if toggled & gcmd::CFI != 0 {
            self.gsts ^= gcmd::CFI;
        }
        if toggled & gcmd::TE != 0 {
            if v & gcmd::TE != 0 {
                if self.root.is_none() {
                    self.errors.push(ModelError::TranslationWithoutRootTable);
                }
                self.gsts |= gcmd::TE;
            } else {
                self.gsts &= !gcmd::TE;
            }
        }
    }

    /// Register-based invalidation (§6.5.1): CCMD.ICC and IOTLB.IVT.
    fn register_invalidation(&mut self) {
        let qi_on = self.gsts & gcmd::QIE != 0;
        if self.ccmd & ccmd::ICC != 0 {
            if qi_on {
                self.errors.push(ModelError::RegisterInvalidationWithQueue { offset: off::CCMD });
            } else {
                let cirg = (self.ccmd >> ccmd::CIRG_SHIFT) & 3;
                // CAST: fields masked to their widths.
                let d = Descriptor::ContextCache {
                    granularity: CcGranularity::from_bits(cirg),
                    did: self.ccmd as u16,
                    sid: (self.ccmd >> 16) as u16,
                    fm: ((self.ccmd >> 32) & 3) as u8,
                };
                self.execute(&d);
                self.log.push(LoggedDescriptor { source: Source::Register, raw: [self.ccmd, 0, 0, 0], descriptor: d });
                self.ccmd = (self.ccmd & !(3 << ccmd::CAIG_SHIFT)) | cirg << ccmd::CAIG_SHIFT;
            }
            self.ccmd &= !ccmd::ICC;
        }
        if self.iotlb_reg & iotlb::IVT != 0 {
            if qi_on {
                self.errors.push(ModelError::RegisterInvalidationWithQueue { offset: self.cfg.iro() + 8 });
            } else {
                let iirg = (self.iotlb_reg >> iotlb::IIRG_SHIFT) & 3;
                // CAST: fields masked to their widths.
                let d = Descriptor::Iotlb {
                    granularity: IotlbGranularity::from_bits(iirg),
                    did: (self.iotlb_reg >> 32) as u16,
                    address: self.iva & !0xfff,
                    am: (self.iva & 0x3f) as u8,
                    ih: self.iva & (1 << 6) != 0,
                    drain_reads: self.iotlb_reg & (1 << 49) != 0,
                    drain_writes: self.iotlb_reg & (1 << 48) != 0,
                };
                self.execute(&d);
                self.log.push(LoggedDescriptor { source: Source::Register, raw: [self.iotlb_reg, self.iva, 0, 0], descriptor: d });
                self.iotlb_reg = (self.iotlb_reg & !(3 << iotlb::IAIG_SHIFT)) | iirg << iotlb::IAIG_SHIFT;
            }
            self.iotlb_reg &= !iotlb::IVT;
        }
    }

    /// Sets FSTS bits and raises the fault event unless an event-causing status was already
    /// set (§7.4.1).
    pub(crate) fn set_fault_status(&mut self, bits: u32) {
        let before = self.fsts;
        self.fsts |= bits;
        if before & fsts::EVENT == 0 && self.fsts & fsts::EVENT != 0 {
            self.fectl |= ectl::IP;
        }
        self.deliver_pending();
    }

    /// Raises the invalidation completion event (§6.5.2.8): ICS.IWC, and IECTL.IP unless IWC
    /// was already set.
    pub(crate) fn completion_event(&mut self) {
        if self.ics & regs::ics::IWC == 0 {
            self.ics |= regs::ics::IWC;
            self.iectl |= ectl::IP;
        }
        self.deliver_pending();
    }

    /// Sends pending interrupts whose mask is clear (IP then clears, §7.4.1).
    pub(crate) fn deliver_pending(&mut self) {
        if self.fectl & (ectl::IP | ectl::IM) == ectl::IP {
            self.fectl &= !ectl::IP;
            self.interrupts.push(Interrupt {
                kind: InterruptKind::Fault,
                address: u64::from(self.feaddr) | u64::from(self.feuaddr) << 32,
                data: self.fedata,
            });
        }
        if self.prq_event_pending() {
            self.prq.pectl &= !ectl::IP;
            self.interrupts.push(Interrupt {
                kind: InterruptKind::PageRequest,
                address: u64::from(self.prq.peaddr) | u64::from(self.prq.peuaddr) << 32,
                data: self.prq.pedata,
            });
        }
        if self.iectl & (ectl::IP | ectl::IM) == ectl::IP {
            self.iectl &= !ectl::IP;
            self.interrupts.push(Interrupt {
                kind: InterruptKind::InvalidationCompletion,
                address: u64::from(self.ieaddr) | u64::from(self.ieuaddr) << 32,
                data: self.iedata,
            });
        }
    }

    /// Records a fault (§7.2.1) and returns it with its outcome.
    pub(crate) fn record_fault(&mut self, mut f: Fault, fpd: bool) -> Fault {
        let sid = f.source.0;
        f.outcome = if fpd {
            FaultOutcome::Suppressed
        } else if self.cfg.compress_faults
            && self.frcd.iter().any(|r| r[3] & regs::frcd::F != 0 && (r[2] & 0xffff) as u16 == sid)
        {
            FaultOutcome::Compressed
        } else if self.frcd[self.fault_next][3] & regs::frcd::F != 0 {
            self.set_fault_status(fsts::PFO);
            FaultOutcome::Overflow
        } else {
            let i = self.fault_next;
            let (pp, pv) = match f.pasid {
                Some(p) => (regs::frcd::PP, p & 0xf_ffff),
                None => (0, 0),
            };
            // CAST: the address halves.
            self.frcd[i] = [
                (f.address & !0xfff) as u32,
                (f.address >> 32) as u32,
                pp | u32::from(sid),
                regs::frcd::F | if f.write { 0 } else { regs::frcd::T1 } | pv << regs::frcd::PV_SHIFT | u32::from(f.reason),
            ];
            self.fault_next = (i + 1) % self.frcd.len();
            if self.fsts & fsts::PPF == 0 {
                // CAST: at most 255.
                self.fri = i as u32;
            }
            self.set_fault_status(fsts::PPF);
            FaultOutcome::Recorded(i)
        };
        self.faults.push(f);
        f
    }
}
