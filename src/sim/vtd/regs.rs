//! Register layout of the model, written from the VT-d specification (§11.4, "Register
//! Descriptions") and Linux's `include/linux/intel-iommu.h` / `drivers/iommu/intel/iommu.h`
//! (`DMAR_*_REG`, `DMA_GSTS_*`, `DMA_FSTS_*`), independently of the driver's `vtd::regs`.

#![allow(missing_docs, reason = "the names are the specification's register and field mnemonics")]

/// Register offsets (§11.4, register map; Linux `DMAR_*_REG`).
pub mod off {
    pub const VER: usize = 0x00;
    pub const CAP: usize = 0x08;
    pub const ECAP: usize = 0x10;
    pub const GCMD: usize = 0x18;
    pub const GSTS: usize = 0x1c;
    pub const RTADDR: usize = 0x20;
    pub const CCMD: usize = 0x28;
    pub const FSTS: usize = 0x34;
    pub const FECTL: usize = 0x38;
    pub const FEDATA: usize = 0x3c;
    pub const FEADDR: usize = 0x40;
    pub const FEUADDR: usize = 0x44;
    pub const AFLOG: usize = 0x58;
    pub const PMEN: usize = 0x64;
    pub const PLMBASE: usize = 0x68;
    pub const PLMLIMIT: usize = 0x6c;
    pub const PHMBASE: usize = 0x70;
    pub const PHMLIMIT: usize = 0x78;
    pub const IQH: usize = 0x80;
    pub const IQT: usize = 0x88;
    pub const IQA: usize = 0x90;
    pub const ICS: usize = 0x9c;
    pub const IECTL: usize = 0xa0;
    pub const IEDATA: usize = 0xa4;
    pub const IEADDR: usize = 0xa8;
    pub const IEUADDR: usize = 0xac;
    pub const IQERCD: usize = 0xb0;
    pub const IRTA: usize = 0xb8;
    pub const PQH: usize = 0xc0;
    pub const PQT: usize = 0xc8;
    pub const PQA: usize = 0xd0;
    pub const PRS: usize = 0xdc;
    pub const PECTL: usize = 0xe0;
    pub const PEDATA: usize = 0xe4;
    pub const PEADDR: usize = 0xe8;
    pub const PEUADDR: usize = 0xec;
}

/// GCMD_REG command bits (§11.4.4); GSTS_REG status bits share the positions (§11.4.5).
pub mod gcmd {
    pub const TE: u32 = 1 << 31;
    pub const SRTP: u32 = 1 << 30;
    pub const SFL: u32 = 1 << 29;
    pub const EAFL: u32 = 1 << 28;
    pub const WBF: u32 = 1 << 27;
    pub const QIE: u32 = 1 << 26;
    pub const IRE: u32 = 1 << 25;
    pub const SIRTP: u32 = 1 << 24;
    pub const CFI: u32 = 1 << 23;
    /// Bits 22:0 are reserved.
    pub const RESERVED: u32 = (1 << 23) - 1;
    /// What the write-only GCMD reads as in the model: every reserved bit set. A driver that
    /// read-modify-writes GCMD (instead of building the value from GSTS, §11.4.4) thus writes
    /// reserved bits and is caught; and any real command differs from this value, so the model
    /// sees the write even when its value is 0 (see the module docs on write detection).
    pub const IDLE: u32 = RESERVED;
}

/// FSTS_REG (§11.4.9; Linux `DMA_FSTS_*`).
pub mod fsts {
    pub const PFO: u32 = 1 << 0;
    pub const PPF: u32 = 1 << 1;
    pub const AFO: u32 = 1 << 2;
    pub const APF: u32 = 1 << 3;
    pub const IQE: u32 = 1 << 4;
    pub const ICE: u32 = 1 << 5;
    pub const ITE: u32 = 1 << 6;
    pub const FRI_SHIFT: u32 = 8;
    /// Write-1-to-clear bits.
    pub const RW1C: u32 = PFO | AFO | APF | IQE | ICE | ITE;
    /// Bits whose setting raises a fault event unless one of them was already set (§7.4.1).
    pub const EVENT: u32 = PFO | PPF | AFO | APF | IQE | ICE | ITE;
    /// Reserved bit the model sets in what FSTS reads as, when write markers are on, so that a
    /// driver writing back the value it read is seen (see the module docs).
    pub const MARKER: u32 = 1 << 31;
}

/// FECTL/IECTL/PECTL (§11.4.10, §11.4.20, §11.4.28).
pub mod ectl {
    pub const IM: u32 = 1 << 31;
    pub const IP: u32 = 1 << 30;
}

/// ICS_REG (§11.4.19).
pub mod ics {
    pub const IWC: u32 = 1 << 0;
    /// Reserved bit used as a write marker, as [`super::fsts::MARKER`].
    pub const MARKER: u32 = 1 << 31;
}

/// RTADDR_REG (§11.4.6): bits 11:10 are the translation table mode.
pub mod rtaddr {
    pub const TTM_SHIFT: u32 = 10;
    pub const TTM_LEGACY: u64 = 0;
    pub const TTM_SCALABLE: u64 = 1;
}

/// IQA_REG (§11.4.18).
pub mod iqa {
    /// Descriptor width: 256-bit descriptors (needs ECAP.SMTS).
    pub const DW: u64 = 1 << 11;
    /// Queue size: 2^QS 4 KiB pages.
    pub const QS_MASK: u64 = 0x7;
}

/// CCMD_REG (§11.4.7).
pub mod ccmd {
    pub const ICC: u64 = 1 << 63;
    pub const CIRG_SHIFT: u32 = 61;
    pub const CAIG_SHIFT: u32 = 59;
}

/// IOTLB_REG (§11.4.8.1), at ECAP.IRO * 16 + 8; IVA_REG (§11.4.8.2) at ECAP.IRO * 16.
pub mod iotlb {
    pub const IVT: u64 = 1 << 63;
    pub const IIRG_SHIFT: u32 = 60;
    pub const IAIG_SHIFT: u32 = 57;
}

/// IQERCD_REG.IQEI codes (§11.4.22): why FSTS.IQE was set.
pub mod iqei {
    /// Invalid tail pointer (beyond the queue, or bit 4 set with 256-bit descriptors).
    pub const TAIL: u64 = 1;
    /// Reading the descriptor failed.
    pub const FETCH: u64 = 2;
    /// Invalid or unsupported descriptor type, or reserved fields set.
    pub const DESCRIPTOR: u64 = 3;
    /// A type that needs 256-bit descriptors in a 128-bit queue.
    pub const WIDTH: u64 = 5;
}

/// Fault recording register layout (§11.4.14): dword 3 holds F (bit 31, RW1C), T1 (30),
/// PV (27:8) and FR (7:0); dword 2 holds PP (31), EXE (30), PRIV (29), T2 (28) and SID (15:0).
/// The same split as Linux `dmar_fault` (`DMA_FRCD_F`, `dma_frcd_type`, `dma_frcd_pasid_value`).
pub mod frcd {
    pub const F: u32 = 1 << 31;
    pub const T1: u32 = 1 << 30;
    pub const PV_SHIFT: u32 = 8;
    pub const PP: u32 = 1 << 31;
}

/// Fault reasons (Appendix A; Linux `dma_remap_fault_reasons` and `dma_remap_sm_fault_reasons`).
///
/// Scalable-mode codes follow Linux's table: an access error, a not-present entry and a
/// reserved field per structure, 0x80/0x81 for a non-canonical input and a user request to a
/// supervisor page. Which code a second-stage permission failure reports in scalable mode is
/// the least certain choice: the model reports an entry with R=W=0 as 0x79 and a present entry
/// lacking the permission as the generic 0x85 (write) / 0x86 (read), whereas QEMU 10.0.2
/// reports the legacy 0x05/0x06 (qemu notes §1.5). Check against the specification's
/// Appendix A table before asserting on these two in driver tests.
pub mod reason {
    // Legacy mode (root/context/second-stage).
    pub const ROOT_NOT_PRESENT: u8 = 0x01;
    pub const CONTEXT_NOT_PRESENT: u8 = 0x02;
    pub const CONTEXT_INVALID: u8 = 0x03;
    pub const BEYOND_AGAW: u8 = 0x04;
    pub const WRITE: u8 = 0x05;
    pub const READ: u8 = 0x06;
    pub const PAGING_ENTRY_ACCESS: u8 = 0x07;
    pub const ROOT_TABLE_ACCESS: u8 = 0x08;
    pub const CONTEXT_TABLE_ACCESS: u8 = 0x09;
    pub const ROOT_RESERVED: u8 = 0x0a;
    pub const CONTEXT_RESERVED: u8 = 0x0b;
    pub const PAGING_RESERVED: u8 = 0x0c;
    // Scalable mode.
    pub const SM_ROOT_TABLE_INVALID: u8 = 0x30;
    pub const SM_PASID_IN_LEGACY: u8 = 0x31;
    pub const SM_ROOT_ACCESS: u8 = 0x38;
    pub const SM_ROOT_NOT_PRESENT: u8 = 0x39;
    pub const SM_ROOT_RESERVED: u8 = 0x3a;
    pub const SM_CONTEXT_ACCESS: u8 = 0x40;
    pub const SM_CONTEXT_NOT_PRESENT: u8 = 0x41;
    pub const SM_CONTEXT_RESERVED: u8 = 0x42;
    pub const SM_CONTEXT_INVALID: u8 = 0x43;
    /// A page request from a function whose scalable-mode context entry has PRE clear (QEMU
    /// `VTD_FR_SM_PRE_ABS`, "SCT.8").
    pub const SM_PRE_ABSENT: u8 = 0x47;
    pub const SM_PASID_DISABLED: u8 = 0x45;
    pub const SM_PASID_TOO_LARGE: u8 = 0x46;
    pub const SM_PASID_DIR_ACCESS: u8 = 0x50;
    pub const SM_PASID_DIR_NOT_PRESENT: u8 = 0x51;
    pub const SM_PASID_DIR_RESERVED: u8 = 0x52;
    pub const SM_PASID_ACCESS: u8 = 0x58;
    pub const SM_PASID_NOT_PRESENT: u8 = 0x59;
    pub const SM_PASID_RESERVED: u8 = 0x5a;
    pub const SM_PASID_INVALID: u8 = 0x5b;
    pub const SM_FS_ACCESS: u8 = 0x70;
    pub const SM_FS_NOT_PRESENT: u8 = 0x71;
    pub const SM_FS_RESERVED: u8 = 0x72;
    pub const SM_SS_ACCESS: u8 = 0x78;
    pub const SM_SS_NOT_PRESENT: u8 = 0x79;
    pub const SM_SS_RESERVED: u8 = 0x7a;
    pub const SM_NON_CANONICAL: u8 = 0x80;
    pub const SM_USER: u8 = 0x81;
    pub const SM_BEYOND_AW: u8 = 0x83;
    pub const SM_WRITE: u8 = 0x85;
    pub const SM_READ: u8 = 0x86;
}

/// Configuration of one modelled remapping unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// VER_REG.
    pub version: u32,
    /// CAP_REG.
    pub cap: u64,
    /// ECAP_REG.
    pub ecap: u64,
    /// Size of the register window in bytes (the DRHD's register set size); at least one page.
    pub register_size: usize,
    /// Host address width (the DMAR table's HAW): address bits above it are reserved in
    /// table pointers and paging entries.
    pub host_address_width: u8,
    /// Drop a fault whose source already has one recorded and pending (QEMU does; the
    /// specification allows it, §7.2.1). On by default.
    pub compress_faults: bool,
    /// Show a reserved bit (31) set in FSTS and ICS so that a write-1-to-clear of exactly the
    /// value read is visible to the model (see the module docs). On by default.
    pub write_markers: bool,
}

impl Config {
    /// `-device intel-iommu` in QEMU 10.0.2 (qemu notes §1.2): legacy mode, 48-bit, one fault
    /// recording register at 0x220, IOTLB registers at 0xf0, QI, IR, PT.
    pub fn qemu_legacy() -> Self {
        Self {
            version: 0x10,
            cap: 0x00d2_008c_222f_0606,
            ecap: 0x0000_0000_00f0_0f4a,
            register_size: 0x1000,
            host_address_width: 48,
            compress_faults: true,
            write_markers: true,
        }
    }

    /// `-device intel-iommu,x-scalable-mode=on`: scalable mode with second-stage tables only.
    pub fn qemu_scalable_second_stage() -> Self {
        Self { ecap: 0x0000_4800_80f0_0f4a, ..Self::qemu_legacy() }
    }

    /// `-device intel-iommu,x-scalable-mode=on,x-pasid-mode=on,x-flts=on,aw-bits=48`: scalable
    /// mode with first-stage tables only (and FS1GP).
    pub fn qemu_scalable_first_stage() -> Self {
        Self { cap: 0x01d2_008c_222f_0606, ecap: 0x0000_8900_00f0_0f4a, ..Self::qemu_legacy() }
    }

    /// Replaces CAP_REG.
    pub fn with_cap(mut self, cap: u64) -> Self {
        self.cap = cap;
        self
    }

    /// Replaces ECAP_REG.
    pub fn with_ecap(mut self, ecap: u64) -> Self {
        self.ecap = ecap;
        self
    }

    /// Sets CAP.NFR so that the unit has `count` (1..=256) fault recording registers.
    pub fn with_fault_records(mut self, count: usize) -> Self {
        let nfr = count.clamp(1, 256) as u64 - 1;
        self.cap = (self.cap & !(0xff << 40)) | (nfr << 40);
        self
    }

    /// Adds page requests (ECAP.PRS, bit 29) and, with `drain`, page-request drain in wait
    /// descriptors (ECAP.PDS, bit 42). QEMU 10.0.2 offers neither.
    pub fn with_page_requests(mut self, drain: bool) -> Self {
        self.ecap |= 1 << 29 | u64::from(drain) << 42;
        self
    }

    /// Enables or disables fault compression.
    pub fn with_fault_compression(mut self, on: bool) -> Self {
        self.compress_faults = on;
        self
    }

    pub(super) fn cap_bit(&self, n: u32) -> bool {
        (self.cap >> n) & 1 != 0
    }
    pub(super) fn ecap_bit(&self, n: u32) -> bool {
        (self.ecap >> n) & 1 != 0
    }
    /// CAP.FRO * 16 (§11.4.2, bits 33:24).
    pub(super) fn fro(&self) -> usize {
        ((self.cap >> 24) & 0x3ff) as usize * 16
    }
    /// CAP.NFR + 1 (bits 47:40).
    pub(super) fn nfr(&self) -> usize {
        ((self.cap >> 40) & 0xff) as usize + 1
    }
    /// ECAP.IRO * 16 (§11.4.3, bits 17:8).
    pub(super) fn iro(&self) -> usize {
        ((self.ecap >> 8) & 0x3ff) as usize * 16
    }
    /// CAP.SAGAW (bits 12:8).
    pub(super) fn sagaw(&self) -> u64 {
        (self.cap >> 8) & 0x1f
    }
    /// CAP.MGAW + 1 (bits 21:16).
    pub(super) fn mgaw(&self) -> u32 {
        ((self.cap >> 16) & 0x3f) as u32 + 1
    }
    /// CAP.SLLPS (bits 37:34).
    pub(super) fn sllps(&self) -> u64 {
        (self.cap >> 34) & 0xf
    }
    /// CAP.MAMV (bits 53:48).
    pub(super) fn mamv(&self) -> u64 {
        (self.cap >> 48) & 0x3f
    }
    pub(super) fn psi(&self) -> bool {
        self.cap_bit(39)
    }
    pub(super) fn rwbf(&self) -> bool {
        self.cap_bit(4)
    }
    pub(super) fn fs1gp(&self) -> bool {
        self.cap_bit(56)
    }
    pub(super) fn fs5lp(&self) -> bool {
        self.cap_bit(60)
    }
    pub(super) fn esrtps(&self) -> bool {
        self.cap_bit(63)
    }
    pub(super) fn qi(&self) -> bool {
        self.ecap_bit(1)
    }
    pub(super) fn dt(&self) -> bool {
        self.ecap_bit(2)
    }
    pub(super) fn pt(&self) -> bool {
        self.ecap_bit(6)
    }
    pub(super) fn sc(&self) -> bool {
        self.ecap_bit(7)
    }
    pub(super) fn nest(&self) -> bool {
        self.ecap_bit(26)
    }
    pub(super) fn pasid(&self) -> bool {
        self.ecap_bit(40)
    }
    pub(super) fn pds(&self) -> bool {
        self.ecap_bit(42)
    }
    pub(super) fn smts(&self) -> bool {
        self.ecap_bit(43)
    }
    pub(super) fn slts(&self) -> bool {
        self.ecap_bit(46)
    }
    pub(super) fn flts(&self) -> bool {
        self.ecap_bit(47)
    }
    /// Mask of the address bits below the host address width.
    pub(super) fn haw_mask(&self) -> u64 {
        (1u64 << self.host_address_width.clamp(32, 63)) - 1
    }
}
