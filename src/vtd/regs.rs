//! VT-d register offsets and the decoding of VER, CAP and ECAP (VT-d spec §11.4).
//!
//! Hardware values are validated before they size or locate anything: the fault-recording and
//! IOTLB register offsets must fall inside the register set the DRHD declares.

use crate::error::{Error, Result};

/// Register offsets (VT-d spec §11.4, table "Remapping hardware register map").
#[allow(missing_docs, reason = "the names are the specification's register mnemonics")]
pub mod offset {
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

/// VER_REG (§11.4.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Version(pub u32);

impl Version {
    /// Major version (bits 7:4).
    pub const fn major(self) -> u8 {
        // CAST: a 4-bit field.
        ((self.0 >> 4) & 0xf) as u8
    }
    /// Minor version (bits 3:0).
    pub const fn minor(self) -> u8 {
        // CAST: a 4-bit field.
        (self.0 & 0xf) as u8
    }
}

const fn bit(v: u64, n: u32) -> bool {
    (v >> n) & 1 != 0
}

const fn field(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1 << width) - 1)
}

/// CAP_REG (§11.4.2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Capability(pub u64);

impl Capability {
    /// ND: number of domain IDs supported, `2^(4 + 2*ND)`; encodings above 6 are reserved.
    pub fn domains(self) -> Result<u32> {
        match field(self.0, 0, 3) {
            // CAST: at most 2^16.
            nd @ 0..=6 => Ok(1 << (4 + 2 * nd as u32)),
            nd => Err(Error::Hardware { what: "VT-d CAP.ND", value: nd }),
        }
    }
    /// AFL: advanced fault logging.
    pub const fn afl(self) -> bool {
        bit(self.0, 3)
    }
    /// RWBF: software must flush the write buffer (GCMD.WBF) before invalidations.
    pub const fn rwbf(self) -> bool {
        bit(self.0, 4)
    }
    /// PLMR: protected low-memory region.
    pub const fn plmr(self) -> bool {
        bit(self.0, 5)
    }
    /// PHMR: protected high-memory region.
    pub const fn phmr(self) -> bool {
        bit(self.0, 6)
    }
    /// CM: caching mode (not-present entries may be cached; invalidate on map too).
    pub const fn caching_mode(self) -> bool {
        bit(self.0, 7)
    }
    /// SAGAW: supported second-stage widths, bit 1 = 39-bit 3-level, 2 = 48-bit 4-level,
    /// 3 = 57-bit 5-level.
    pub const fn sagaw(self) -> u8 {
        // CAST: a 5-bit field.
        field(self.0, 8, 5) as u8
    }
    /// MGAW: maximum guest address width in bits (field + 1).
    pub const fn mgaw(self) -> u8 {
        // CAST: a 6-bit field plus one.
        field(self.0, 16, 6) as u8 + 1
    }
    /// ZLR: zero-length DMA reads are honoured.
    pub const fn zlr(self) -> bool {
        bit(self.0, 22)
    }
    /// Byte offset of the first fault recording register (FRO x 16).
    pub const fn fault_recording_offset(self) -> usize {
        // CAST: a 10-bit field.
        field(self.0, 24, 10) as usize * 16
    }
    /// SLLPS: second-stage large pages, bit 0 = 2 MiB, bit 1 = 1 GiB.
    pub const fn sllps(self) -> u8 {
        // CAST: a 4-bit field.
        field(self.0, 34, 4) as u8
    }
    /// PSI: page-selective IOTLB invalidation.
    pub const fn psi(self) -> bool {
        bit(self.0, 39)
    }
    /// Number of fault recording registers (NFR + 1).
    pub const fn fault_recording_count(self) -> usize {
        // CAST: an 8-bit field plus one.
        field(self.0, 40, 8) as usize + 1
    }
    /// MAMV: largest address mask of a page-selective invalidation.
    pub const fn mamv(self) -> u8 {
        // CAST: a 6-bit field.
        field(self.0, 48, 6) as u8
    }
    /// DWD: write draining.
    pub const fn dwd(self) -> bool {
        bit(self.0, 54)
    }
    /// DRD: read draining.
    pub const fn drd(self) -> bool {
        bit(self.0, 55)
    }
    /// FS1GP: first-stage 1 GiB pages.
    pub const fn fs1gp(self) -> bool {
        bit(self.0, 56)
    }
    /// PI: posted interrupts.
    pub const fn pi(self) -> bool {
        bit(self.0, 59)
    }
    /// FS5LP: first-stage 5-level paging.
    pub const fn fs5lp(self) -> bool {
        bit(self.0, 60)
    }
    /// ESIRTPS: SIRTP also invalidates the interrupt-entry cache.
    pub const fn esirtps(self) -> bool {
        bit(self.0, 62)
    }
    /// ESRTPS: SRTP also invalidates context, PASID and IOTLB caches.
    pub const fn esrtps(self) -> bool {
        bit(self.0, 63)
    }

    /// Checks the fields that locate registers or size tables against the register set the
    /// DRHD declares (`register_set_size` bytes).
    pub fn validate(self, register_set_size: usize) -> Result<()> {
        self.domains()?;
        if self.sagaw() & 0b01110 == 0 {
            return Err(Error::Hardware { what: "VT-d CAP.SAGAW (no 3/4/5-level support)", value: u64::from(self.sagaw()) });
        }
        if !(30..=57).contains(&self.mgaw()) {
            return Err(Error::Hardware { what: "VT-d CAP.MGAW", value: u64::from(self.mgaw()) });
        }
        let end = self.fault_recording_offset() + self.fault_recording_count() * 16;
        if self.fault_recording_offset() == 0 || end > register_set_size {
            return Err(Error::Hardware { what: "VT-d CAP.FRO/NFR (outside the register set)", value: self.0 });
        }
        Ok(())
    }
}

/// ECAP_REG (§11.4.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ExtendedCapability(pub u64);

impl ExtendedCapability {
    /// C: page-walk coherency (no cache flushes needed for tables).
    pub const fn coherent(self) -> bool {
        bit(self.0, 0)
    }
    /// QI: queued invalidation.
    pub const fn qi(self) -> bool {
        bit(self.0, 1)
    }
    /// DT: device-TLB (ATS) support.
    pub const fn dt(self) -> bool {
        bit(self.0, 2)
    }
    /// IR: interrupt remapping.
    pub const fn ir(self) -> bool {
        bit(self.0, 3)
    }
    /// EIM: extended (x2APIC) interrupt mode.
    pub const fn eim(self) -> bool {
        bit(self.0, 4)
    }
    /// PT: pass-through translation type.
    pub const fn pt(self) -> bool {
        bit(self.0, 6)
    }
    /// SC: snoop control.
    pub const fn sc(self) -> bool {
        bit(self.0, 7)
    }
    /// Byte offset of the IOTLB registers (IRO x 16).
    pub const fn iotlb_offset(self) -> usize {
        // CAST: a 10-bit field.
        field(self.0, 8, 10) as usize * 16
    }
    /// MHMV: maximum interrupt-entry-cache handle mask.
    pub const fn mhmv(self) -> u8 {
        // CAST: a 4-bit field.
        field(self.0, 20, 4) as u8
    }
    /// NEST: nested translation.
    pub const fn nest(self) -> bool {
        bit(self.0, 26)
    }
    /// PRS: page requests (page request queue).
    pub const fn prs(self) -> bool {
        bit(self.0, 29)
    }
    /// ERS: execute requests.
    pub const fn ers(self) -> bool {
        bit(self.0, 30)
    }
    /// SRS: supervisor requests.
    pub const fn srs(self) -> bool {
        bit(self.0, 31)
    }
    /// NWFS: no write flag.
    pub const fn nwfs(self) -> bool {
        bit(self.0, 33)
    }
    /// EAFS: extended accessed flag.
    pub const fn eafs(self) -> bool {
        bit(self.0, 34)
    }
    /// PASID width in bits (PSS + 1), meaningful when [`pasid`](Self::pasid) is set.
    pub const fn pasid_bits(self) -> u8 {
        // CAST: a 5-bit field plus one.
        field(self.0, 35, 5) as u8 + 1
    }
    /// PASID: PASID support.
    pub const fn pasid(self) -> bool {
        bit(self.0, 40)
    }
    /// DIT: device-TLB invalidation throttling.
    pub const fn dit(self) -> bool {
        bit(self.0, 41)
    }
    /// PDS: page-request drain.
    pub const fn pds(self) -> bool {
        bit(self.0, 42)
    }
    /// SMTS: scalable-mode translation.
    pub const fn smts(self) -> bool {
        bit(self.0, 43)
    }
    /// VCS: virtual command.
    pub const fn vcs(self) -> bool {
        bit(self.0, 44)
    }
    /// SLADS: second-stage accessed/dirty.
    pub const fn slads(self) -> bool {
        bit(self.0, 45)
    }
    /// SLTS: second-stage translation in scalable mode.
    pub const fn slts(self) -> bool {
        bit(self.0, 46)
    }
    /// FLTS: first-stage translation in scalable mode.
    pub const fn flts(self) -> bool {
        bit(self.0, 47)
    }
    /// SMPWC: scalable-mode page-walk coherency.
    pub const fn smpwc(self) -> bool {
        bit(self.0, 48)
    }
    /// RPS: RID_PASID support.
    pub const fn rps(self) -> bool {
        bit(self.0, 49)
    }

    /// Checks that the IOTLB registers (16 bytes at IRO) lie inside the register set.
    pub fn validate(self, register_set_size: usize) -> Result<()> {
        let iro = self.iotlb_offset();
        if iro == 0 || iro + 16 > register_set_size {
            return Err(Error::Hardware { what: "VT-d ECAP.IRO (outside the register set)", value: self.0 });
        }
        Ok(())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Capability {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "{=u64:#018x}: domains {=u32}, SAGAW {=u8:#07b} (3-level {=bool}, 4-level {=bool}, 5-level {=bool}), MGAW {=u8}, SLLPS {=u8:#06b} (2M {=bool}, 1G {=bool}), fault regs {=usize} at {=usize:#x}, PSI {=bool} MAMV {=u8}, CM {=bool} RWBF {=bool} ZLR {=bool} DWD {=bool} DRD {=bool} FS1GP {=bool} FS5LP {=bool} PI {=bool} ESRTPS {=bool} ESIRTPS {=bool}",
            self.0,
            self.domains().unwrap_or(0),
            self.sagaw(),
            self.sagaw() & 2 != 0,
            self.sagaw() & 4 != 0,
            self.sagaw() & 8 != 0,
            self.mgaw(),
            self.sllps(),
            self.sllps() & 1 != 0,
            self.sllps() & 2 != 0,
            self.fault_recording_count(),
            self.fault_recording_offset(),
            self.psi(),
            self.mamv(),
            self.caching_mode(),
            self.rwbf(),
            self.zlr(),
            self.dwd(),
            self.drd(),
            self.fs1gp(),
            self.fs5lp(),
            self.pi(),
            self.esrtps(),
            self.esirtps(),
        )
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for ExtendedCapability {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "{=u64:#018x}: QI {=bool} IR {=bool} EIM {=bool} PT {=bool} C {=bool} SC {=bool} DT {=bool}, IOTLB regs at {=usize:#x}, MHMV {=u8}, scalable mode {=bool} (FLTS {=bool} SLTS {=bool} NEST {=bool} PASID {=bool} of {=u8} bits, RPS {=bool}, SMPWC {=bool}), PRS {=bool} PDS {=bool} ERS {=bool} SRS {=bool}",
            self.0,
            self.qi(),
            self.ir(),
            self.eim(),
            self.pt(),
            self.coherent(),
            self.sc(),
            self.dt(),
            self.iotlb_offset(),
            self.mhmv(),
            self.smts(),
            self.flts(),
            self.slts(),
            self.nest(),
            self.pasid(),
            self.pasid_bits(),
            self.rps(),
            self.smpwc(),
            self.prs(),
            self.pds(),
            self.ers(),
            self.srs(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Independent encodings: the values QEMU 10.0.2 reports (qemu notes §1.2), decoded by hand
    // against the VT-d specification's tables and Linux's include/linux/intel-iommu.h macros
    // (cap_sagaw = (c >> 8) & 0x1f, cap_fault_reg_offset = ((c >> 24) & 0x3ff) * 16, ...).
    #[test]
    fn decodes_qemu_legacy_cap() {
        let cap = Capability(0x00d2_008c_222f_0606);
        assert_eq!(cap.domains(), Ok(65536));
        assert_eq!(cap.sagaw(), 0b00110);
        assert_eq!(cap.mgaw(), 48);
        assert_eq!(cap.fault_recording_offset(), 0x220);
        assert_eq!(cap.fault_recording_count(), 1);
        assert_eq!(cap.sllps(), 0b0011);
        assert!(cap.psi() && cap.dwd() && cap.drd());
        assert_eq!(cap.mamv(), 18);
        assert!(!cap.caching_mode() && !cap.fs1gp() && !cap.rwbf());
        assert_eq!(cap.validate(0x230), Ok(()));
        // aw-bits=39: MGAW 39, SAGAW 3-level only, no 1 GiB pages.
        let cap39 = Capability(0x00d2_008c_2226_0206);
        assert_eq!((cap39.mgaw(), cap39.sagaw(), cap39.sllps()), (39, 0b00010, 0b0011));
        // x-flts=on adds FS1GP (bit 56).
        assert!(Capability(0x01d2_008c_222f_0606).fs1gp());
        // caching-mode=on sets CM (bit 7).
        assert!(Capability(0x00d2_008c_222f_0686).caching_mode());
    }

    #[test]
    fn decodes_qemu_ecaps() {
        let legacy = ExtendedCapability(0x0000_0000_00f0_0f4a);
        assert!(legacy.qi() && legacy.ir() && legacy.pt() && !legacy.eim() && !legacy.smts());
        assert_eq!(legacy.iotlb_offset(), 0xf0);
        assert_eq!(legacy.mhmv(), 15);
        assert_eq!(legacy.validate(0x230), Ok(()));
        let scalable_sl = ExtendedCapability(0x0000_4800_80f0_0f4a);
        assert!(scalable_sl.smts() && scalable_sl.slts() && scalable_sl.srs() && !scalable_sl.flts());
        let scalable_fl = ExtendedCapability(0x0000_8900_00f0_0f4a);
        assert!(scalable_fl.smts() && scalable_fl.flts() && scalable_fl.pasid());
        assert!(!scalable_fl.slts() && !scalable_fl.srs() && !scalable_fl.prs());
        assert_eq!(scalable_fl.pasid_bits(), 1, "QEMU reports PSS=0");
        assert!(ExtendedCapability(0x0000_0000_00f0_0fce).dt(), "device-iotlb=on");
        assert!(ExtendedCapability(0x0000_0000_00f0_0f5a).eim(), "eim=on");
    }

    #[test]
    fn rejects_registers_outside_the_register_set() {
        // FRO = 0x3ff (offset 0x3ff0) in a 4 KiB register set.
        let cap = Capability(0x00d2_008f_ff2f_0606);
        assert!(matches!(cap.validate(0x1000), Err(Error::Hardware { .. })));
        // ND = 7 is reserved.
        assert!(matches!(Capability(0x00d2_008c_222f_0607).domains(), Err(Error::Hardware { value: 7, .. })));
        // No supported second-stage width.
        assert!(Capability(0x00d2_008c_222f_0006).validate(0x1000).is_err());
        // IRO pointing past the register set.
        assert!(ExtendedCapability(0x0000_0000_00f3_ff4a).validate(0x1000).is_err());
    }

    #[test]
    fn version_fields() {
        assert_eq!((Version(0x10).major(), Version(0x10).minor()), (1, 0));
    }
}
