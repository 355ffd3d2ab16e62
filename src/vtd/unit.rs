//! One VT-d remapping unit: its registers, the global command/status handshake, the root table,
//! and fault recording.

use core::time::Duration;

use crate::addr::PhysAddr;
use crate::error::{Error, Result};
use crate::hal::{poll, DmaPages, Platform, PAGE_SIZE};
use crate::mmio::MmioRegion;

use super::fault::{FaultRecord, FaultStatus};
use super::regs::{offset, Capability, ExtendedCapability, Version};

/// GCMD/GSTS bits (§11.4.4, §11.4.5): the command bit and its status bit share a position.
#[allow(missing_docs, reason = "bit names from the specification")]
pub mod gsts {
    pub const TES: u32 = 1 << 31;
    pub const RTPS: u32 = 1 << 30;
    pub const FLS: u32 = 1 << 29;
    pub const AFLS: u32 = 1 << 28;
    pub const WBFS: u32 = 1 << 27;
    pub const QIES: u32 = 1 << 26;
    pub const IRES: u32 = 1 << 25;
    pub const IRTPS: u32 = 1 << 24;
    pub const CFIS: u32 = 1 << 23;
    /// Status bits that reflect a persistent enable; a GCMD write must repeat them or it turns
    /// the feature off. The one-shot bits (RTPS, FLS, WBFS, IRTPS) must not be echoed back, or
    /// the write would repeat their command (Linux `dmar_readl(GSTS) & 0x96ffffff`).
    pub const PERSISTENT: u32 = TES | AFLS | QIES | IRES | CFIS;
}

/// RTADDR_REG translation table mode (§11.4.6): legacy or scalable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TableMode {
    /// Legacy root and context entries.
    Legacy,
    /// Scalable-mode root and context entries (needs ECAP.SMTS).
    Scalable,
}

/// How long a GCMD command may take to show in GSTS.
///
/// TIMEOUT: the specification does not bound it; hardware completes in microseconds and QEMU
/// immediately. Linux waits up to `DMAR_OPERATION_TIMEOUT`, one second, before declaring the
/// unit broken; so does this driver.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// A remapping unit, mapped and validated, with its root table.
#[derive(Debug)]
pub struct Unit {
    regs: MmioRegion,
    base: PhysAddr,
    version: Version,
    cap: Capability,
    ecap: ExtendedCapability,
    root_table: DmaPages,
    mode: TableMode,
}

impl Unit {
    /// Maps the unit at `base` (a DRHD's register base and set size), reads and validates its
    /// capabilities, and installs an empty root table in `mode`: every request is then blocked
    /// (root entry not present) once translation is enabled.
    ///
    /// A unit already translating (left on by firmware or a previous boot) is first turned
    /// off, so the new root table takes effect through the documented sequence.
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        base: PhysAddr,
        register_set_size: usize,
        mode: TableMode,
    ) -> Result<Self> {
        let ptr = platform.map_mmio(base, register_set_size)?;
        // SAFETY: `Platform::map_mmio` returns a device mapping of exactly this range, valid as
        // long as the platform (its implementation-safety contract).
        let regs = unsafe { MmioRegion::new(ptr, register_set_size) };
        let version = Version(regs.read32(offset::VER));
        if regs.read32(offset::VER) == u32::MAX {
            return Err(Error::Hardware { what: "VT-d VER (all-ones: nothing answers)", value: base.0 });
        }
        let cap = Capability(regs.read64(offset::CAP));
        let ecap = ExtendedCapability(regs.read64(offset::ECAP));
        cap.validate(register_set_size)?;
        ecap.validate(register_set_size)?;
        if mode == TableMode::Scalable && !ecap.smts() {
            return Err(Error::Hardware { what: "VT-d ECAP.SMTS (scalable mode asked, not offered)", value: ecap.0 });
        }
        // One page: 256 root entries of 16 bytes (§9.1), zeroed, so nothing is present.
        let root_table = platform.alloc_dma_pages(1, PAGE_SIZE)?;
        let mut unit = Self { regs, base, version, cap, ecap, root_table, mode };
        if unit.translation_enabled() {
            unit.set_translation(platform, false)?;
        }
        unit.set_root_table(platform)?;
        Ok(unit)
    }

    /// Physical base of the register set.
    pub const fn base(&self) -> PhysAddr {
        self.base
    }
    /// VER_REG.
    pub const fn version(&self) -> Version {
        self.version
    }
    /// CAP_REG, validated.
    pub const fn capability(&self) -> Capability {
        self.cap
    }
    /// ECAP_REG, validated.
    pub const fn extended_capability(&self) -> ExtendedCapability {
        self.ecap
    }
    /// The root table's physical address.
    pub fn root_table(&self) -> PhysAddr {
        self.root_table.phys()
    }
    /// Legacy or scalable.
    pub const fn mode(&self) -> TableMode {
        self.mode
    }

    /// GSTS_REG.
    pub fn status(&self) -> u32 {
        self.regs.read32(offset::GSTS)
    }

    /// Whether DMA remapping is on (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        self.status() & gsts::TES != 0
    }

    /// Issues one GCMD command and waits, bounded, for GSTS to show `expect` under `mask`.
    fn command<P: Platform + ?Sized>(&self, platform: &P, set: u32, clear: u32, what: &'static str, mask: u32, expect: u32) -> Result<()> {
        let gcmd = (self.status() & gsts::PERSISTENT & !clear) | set;
        // GCMD is a 32-bit register: an 8-byte write would also hit GSTS (QEMU aborts on it).
        self.regs.write32(offset::GCMD, gcmd);
        poll(platform, what, COMMAND_TIMEOUT, || (self.status() & mask == expect).then_some(()))
    }

    /// Points the unit at the root table (RTADDR, then GCMD.SRTP and wait for GSTS.RTPS,
    /// §10.4.5). The caller invalidates the context cache and IOTLB globally afterwards when
    /// translation is on (ECAP.ESRTPS says whether hardware does it itself).
    fn set_root_table<P: Platform + ?Sized>(&self, platform: &P) -> Result<()> {
        let smt = match self.mode {
            TableMode::Legacy => 0,
            TableMode::Scalable => 1 << 10,
        };
        // The table's zeroes must be visible to the unit before it may fetch the table.
        platform.sync_for_device(self.root_table.virt(), self.root_table.len());
        self.regs.write64(offset::RTADDR, self.root_table.phys().0 | smt);
        self.command(platform, gsts::RTPS, 0, "VT-d GSTS.RTPS after SRTP", gsts::RTPS, gsts::RTPS)
    }

    /// Turns DMA remapping on or off (GCMD.TE, wait for GSTS.TES, §10.4.4).
    pub fn set_translation<P: Platform + ?Sized>(&mut self, platform: &P, on: bool) -> Result<()> {
        if on {
            self.command(platform, gsts::TES, 0, "VT-d GSTS.TES set after TE", gsts::TES, gsts::TES)
        } else {
            self.command(platform, 0, gsts::TES, "VT-d GSTS.TES clear after TE=0", gsts::TES, 0)
        }
    }

    /// FSTS_REG.
    pub fn fault_status(&self) -> FaultStatus {
        FaultStatus(self.regs.read32(offset::FSTS))
    }

    /// Clears the RW1C fault status bits that are set (PFO, IQE, ...), with a 32-bit write.
    pub fn clear_fault_status(&self, status: FaultStatus) {
        self.regs.write32(offset::FSTS, status.0 & FaultStatus::RW1C);
    }

    /// Number of fault recording registers.
    pub const fn fault_records(&self) -> usize {
        self.cap.fault_recording_count()
    }

    /// Fault recording register `index`, decoded, if it holds a fault.
    pub fn fault_record(&self, index: usize) -> Option<FaultRecord> {
        if index >= self.fault_records() {
            return None;
        }
        let at = self.cap.fault_recording_offset() + index * 16;
        // Read the high half first: F is there, and the low half is valid once F is seen.
        let high = self.regs.read64(at + 8);
        let low = self.regs.read64(at);
        FaultRecord::decode(low, high)
    }

    /// Clears fault recording register `index` by writing 1 to F with a 32-bit write to its top
    /// dword (§11.4.14; an 8-byte write would also rewrite the other fields).
    pub fn clear_fault_record(&self, index: usize) {
        if index < self.fault_records() {
            let at = self.cap.fault_recording_offset() + index * 16 + 12;
            self.regs.write32(at, 1 << 31);
        }
    }

    /// Reads and clears every recorded fault, handing each to `report`, then clears overflow.
    /// Returns the fault status seen before clearing. Bounded by the number of registers.
    pub fn drain_faults(&self, mut report: impl FnMut(usize, FaultRecord)) -> FaultStatus {
        let status = self.fault_status();
        for index in 0..self.fault_records() {
            if let Some(record) = self.fault_record(index) {
                report(index, record);
                self.clear_fault_record(index);
            }
        }
        self.clear_fault_status(status);
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::Instant;
    use core::cell::{Cell, RefCell};
    use core::ptr::NonNull;

    /// A register file that is plain memory: GSTS never follows GCMD, as a dead unit would.
    struct DeadUnit {
        regs: RefCell<Vec<u64>>,
        pages: RefCell<Vec<Box<[u8; 4096]>>>,
        now: Cell<u64>,
    }

    // SAFETY: test double; the register file and pages are host memory that outlive the test.
    unsafe impl Platform for DeadUnit {
        fn alloc_dma_pages(&self, count: usize, _align: usize) -> Result<DmaPages> {
            assert_eq!(count, 1);
            let mut page = Box::new([0u8; 4096]);
            let ptr = NonNull::from(&mut *page).cast::<u8>();
            self.pages.borrow_mut().push(page);
            // SAFETY: the page lives in `self.pages` for the test's duration.
            Ok(unsafe { DmaPages::new(PhysAddr(0x1000), ptr, 1) })
        }
        unsafe fn free_dma_pages(&self, _pages: DmaPages) {}
        fn map_mmio(&self, _base: PhysAddr, _size: usize) -> Result<NonNull<u8>> {
            Ok(NonNull::new(self.regs.borrow_mut().as_mut_ptr()).unwrap().cast())
        }
        fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
            self.map_mmio(base, size)
        }
        fn write_barrier(&self) {}
        fn read_barrier(&self) {}
        fn now(&self) -> Instant {
            self.now.set(self.now.get() + 10_000);
            Instant(self.now.get())
        }
    }

    #[test]
    fn a_unit_that_never_answers_times_out_instead_of_hanging() {
        let mut regs = vec![0u64; 0x230 / 8];
        regs[offset::VER / 8] = 0x10;
        regs[offset::CAP / 8] = 0x00d2_008c_222f_0606;
        regs[offset::ECAP / 8] = 0x0000_0000_00f0_0f4a;
        let p = DeadUnit { regs: RefCell::new(regs), pages: RefCell::new(Vec::new()), now: Cell::new(0) };
        let err = Unit::new(&p, PhysAddr(0xfed9_0000), 0x230, TableMode::Legacy).unwrap_err();
        assert_eq!(err, Error::Timeout { what: "VT-d GSTS.RTPS after SRTP", waited_us: 1_000_000 });
        // The root table address was written before the command, in legacy mode.
        assert_eq!(p.regs.borrow()[offset::RTADDR / 8], 0x1000);
        assert_eq!(p.regs.borrow()[offset::GCMD / 8] as u32, gsts::RTPS);
    }

    #[test]
    fn scalable_mode_needs_smts() {
        let mut regs = vec![0u64; 0x230 / 8];
        regs[offset::VER / 8] = 0x10;
        regs[offset::CAP / 8] = 0x00d2_008c_222f_0606;
        regs[offset::ECAP / 8] = 0x0000_0000_00f0_0f4a;
        let p = DeadUnit { regs: RefCell::new(regs), pages: RefCell::new(Vec::new()), now: Cell::new(0) };
        let err = Unit::new(&p, PhysAddr(0xfed9_0000), 0x230, TableMode::Scalable).unwrap_err();
        assert!(matches!(err, Error::Hardware { what, .. } if what.contains("SMTS")));
    }
}
