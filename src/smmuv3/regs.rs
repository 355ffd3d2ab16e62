//! SMMUv3 register offsets and the ID registers IDR0..IDR5 (IHI 0070 §6.3).

use crate::error::{Error, Result};
use crate::mmio::MmioRegion;

/// Register offsets in the SMMU's 128 KiB register frame (page 0, and page 1 at +0x10000).
#[allow(missing_docs, reason = "the names are the specification's register mnemonics")]
pub mod offset {
    pub const IDR0: usize = 0x00;
    pub const IDR1: usize = 0x04;
    pub const IDR2: usize = 0x08;
    pub const IDR3: usize = 0x0c;
    pub const IDR4: usize = 0x10;
    pub const IDR5: usize = 0x14;
    pub const IIDR: usize = 0x18;
    pub const AIDR: usize = 0x1c;
    pub const CR0: usize = 0x20;
    pub const CR0ACK: usize = 0x24;
    pub const CR1: usize = 0x28;
    pub const CR2: usize = 0x2c;
    pub const STATUSR: usize = 0x40;
    pub const GBPA: usize = 0x44;
    pub const IRQ_CTRL: usize = 0x50;
    pub const IRQ_CTRLACK: usize = 0x54;
    pub const GERROR: usize = 0x60;
    pub const GERRORN: usize = 0x64;
    pub const STRTAB_BASE: usize = 0x80;
    pub const STRTAB_BASE_CFG: usize = 0x88;
    pub const CMDQ_BASE: usize = 0x90;
    pub const CMDQ_PROD: usize = 0x98;
    pub const CMDQ_CONS: usize = 0x9c;
    pub const EVENTQ_BASE: usize = 0xa0;
    pub const EVENTQ_PROD: usize = 0x100a8;
    pub const EVENTQ_CONS: usize = 0x100ac;
    pub const PRIQ_BASE: usize = 0xc0;
    pub const PRIQ_PROD: usize = 0x100c8;
    pub const PRIQ_CONS: usize = 0x100cc;
    /// Size of the register frame (pages 0 and 1).
    pub const FRAME_SIZE: usize = 0x20000;
}

/// SMMU_CR0 / CR0ACK bits (§6.3.9).
#[allow(missing_docs, reason = "bit names from the specification")]
pub mod cr0 {
    pub const SMMUEN: u32 = 1 << 0;
    pub const PRIQEN: u32 = 1 << 1;
    pub const EVENTQEN: u32 = 1 << 2;
    pub const CMDQEN: u32 = 1 << 3;
    pub const ATSCHK: u32 = 1 << 4;
}

/// SMMU_CR1 fields (§6.3.10): cacheability and shareability of table walks and queue accesses.
#[allow(missing_docs, reason = "field names from the specification")]
pub mod cr1 {
    pub const QUEUE_IC_SHIFT: u32 = 0;
    pub const QUEUE_OC_SHIFT: u32 = 2;
    pub const QUEUE_SH_SHIFT: u32 = 4;
    pub const TABLE_IC_SHIFT: u32 = 6;
    pub const TABLE_OC_SHIFT: u32 = 8;
    pub const TABLE_SH_SHIFT: u32 = 10;
    /// Write-back cacheable (IC/OC = 0b01).
    pub const CACHE_WB: u32 = 1;
    /// Inner shareable (SH = 0b11).
    pub const SH_ISH: u32 = 3;
}

/// SMMU_CR2 bits (§6.3.11).
#[allow(missing_docs, reason = "bit names from the specification")]
pub mod cr2 {
    pub const E2H: u32 = 1 << 0;
    /// Record C_BAD_STREAMID events for StreamIDs beyond the table.
    pub const RECINVSID: u32 = 1 << 1;
    /// Private TLB maintenance: ignore broadcast TLB invalidations.
    pub const PTM: u32 = 1 << 2;
}

/// SMMU_GERROR / GERRORN bits (§6.3.17): an error is active while the two registers differ.
#[allow(missing_docs, reason = "bit names from the specification")]
pub mod gerror {
    pub const CMDQ_ERR: u32 = 1 << 0;
    pub const EVENTQ_ABT_ERR: u32 = 1 << 2;
    pub const PRIQ_ABT_ERR: u32 = 1 << 3;
    pub const MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
    pub const MSI_EVENTQ_ABT_ERR: u32 = 1 << 5;
    pub const MSI_PRIQ_ABT_ERR: u32 = 1 << 6;
    pub const MSI_GERROR_ABT_ERR: u32 = 1 << 7;
    pub const SFM_ERR: u32 = 1 << 8;
    /// Every defined bit.
    pub const ALL: u32 = 0x1fd;
}

/// SMMU_IRQ_CTRL / IRQ_CTRLACK bits (§6.3.14).
#[allow(missing_docs, reason = "bit names from the specification")]
pub mod irq_ctrl {
    pub const GERROR_IRQEN: u32 = 1 << 0;
    pub const PRIQ_IRQEN: u32 = 1 << 1;
    pub const EVENTQ_IRQEN: u32 = 1 << 2;
}

/// SMMU_GBPA bits (§6.3.13).
#[allow(missing_docs, reason = "bit names from the specification")]
pub mod gbpa {
    pub const ABORT: u32 = 1 << 20;
    pub const UPDATE: u32 = 1 << 31;
}

/// SMMU_STRTAB_BASE_CFG fields (§6.3.25).
#[allow(missing_docs, reason = "field names from the specification")]
pub mod strtab_cfg {
    pub const LOG2SIZE_SHIFT: u32 = 0;
    pub const SPLIT_SHIFT: u32 = 6;
    pub const FMT_SHIFT: u32 = 16;
    pub const FMT_LINEAR: u32 = 0;
    pub const FMT_2LEVEL: u32 = 1;
}

const fn bit(v: u32, n: u32) -> bool {
    (v >> n) & 1 != 0
}

const fn field(v: u32, lo: u32, width: u32) -> u32 {
    (v >> lo) & ((1 << width) - 1)
}

/// SMMU_IDR0 (§6.3.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Idr0(pub u32);

/// Stream table formats the SMMU supports (IDR0.ST_LEVEL).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamTableLevels {
    /// Linear only.
    Linear,
    /// Linear and 2-level.
    TwoLevel,
}

impl Idr0 {
    /// S2P: stage 2 translation.
    pub const fn s2p(self) -> bool {
        bit(self.0, 0)
    }
    /// S1P: stage 1 translation.
    pub const fn s1p(self) -> bool {
        bit(self.0, 1)
    }
    /// TTF: translation table formats, 0b10 = AArch64 only, 0b11 = both, 0b01 = AArch32.
    pub const fn ttf(self) -> u8 {
        // CAST: a 2-bit field.
        field(self.0, 2, 2) as u8
    }
    /// COHACC: coherent access to tables and queues.
    pub const fn cohacc(self) -> bool {
        bit(self.0, 4)
    }
    /// BTM: broadcast TLB maintenance.
    pub const fn btm(self) -> bool {
        bit(self.0, 5)
    }
    /// HTTU: hardware access/dirty flag updates (0 none, 1 access, 2 access and dirty).
    pub const fn httu(self) -> u8 {
        // CAST: a 2-bit field.
        field(self.0, 6, 2) as u8
    }
    /// HYP: EL2 (hypervisor) stage-1 contexts.
    pub const fn hyp(self) -> bool {
        bit(self.0, 9)
    }
    /// ATS: PCIe ATS.
    pub const fn ats(self) -> bool {
        bit(self.0, 10)
    }
    /// ASID16: 16-bit ASIDs.
    pub const fn asid16(self) -> bool {
        bit(self.0, 12)
    }
    /// MSI: MSI completion of CMD_SYNC and MSI interrupts.
    pub const fn msi(self) -> bool {
        bit(self.0, 13)
    }
    /// SEV: the SMMU can send WFE wake-up events.
    pub const fn sev(self) -> bool {
        bit(self.0, 14)
    }
    /// ATOS: address translation operations.
    pub const fn atos(self) -> bool {
        bit(self.0, 15)
    }
    /// PRI: page request interface (PRI queue).
    pub const fn pri(self) -> bool {
        bit(self.0, 16)
    }
    /// VMW: VMID wildcard matching.
    pub const fn vmw(self) -> bool {
        bit(self.0, 17)
    }
    /// VMID16: 16-bit VMIDs.
    pub const fn vmid16(self) -> bool {
        bit(self.0, 18)
    }
    /// CD2L: 2-level context descriptor tables.
    pub const fn cd2l(self) -> bool {
        bit(self.0, 19)
    }
    /// TTENDIAN: 0b00 mixed, 0b10 little, 0b11 big endian (0b01 reserved).
    pub const fn ttendian(self) -> u8 {
        // CAST: a 2-bit field.
        field(self.0, 21, 2) as u8
    }
    /// STALL_MODEL: 0 stall and terminate, 1 terminate only, 2 stall forced.
    pub const fn stall_model(self) -> u8 {
        // CAST: a 2-bit field.
        field(self.0, 24, 2) as u8
    }
    /// TERM_MODEL: 1 means a terminated transaction always aborts (no RAZ/WI option).
    pub const fn term_model(self) -> bool {
        bit(self.0, 26)
    }
    /// ST_LEVEL: multi-level stream table support (0b11 reserved).
    pub fn stream_table_levels(self) -> Result<StreamTableLevels> {
        match field(self.0, 27, 2) {
            0 => Ok(StreamTableLevels::Linear),
            1 => Ok(StreamTableLevels::TwoLevel),
            v => Err(Error::Hardware { what: "SMMU IDR0.ST_LEVEL", value: u64::from(v) }),
        }
    }
}

/// SMMU_IDR1 (§6.3.2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Idr1(pub u32);

impl Idr1 {
    /// SIDSIZE: StreamID width in bits (at most 32).
    pub const fn sid_bits(self) -> u8 {
        // CAST: a 6-bit field.
        field(self.0, 0, 6) as u8
    }
    /// SSIDSIZE: SubstreamID width in bits (at most 20; 0 = no substreams).
    pub const fn ssid_bits(self) -> u8 {
        // CAST: a 5-bit field.
        field(self.0, 6, 5) as u8
    }
    /// PRIQS: log2 of the largest PRI queue (at most 19).
    pub const fn priq_log2(self) -> u8 {
        // CAST: a 5-bit field.
        field(self.0, 11, 5) as u8
    }
    /// EVENTQS: log2 of the largest event queue (at most 19).
    pub const fn eventq_log2(self) -> u8 {
        // CAST: a 5-bit field.
        field(self.0, 16, 5) as u8
    }
    /// CMDQS: log2 of the largest command queue (at most 19).
    pub const fn cmdq_log2(self) -> u8 {
        // CAST: a 5-bit field.
        field(self.0, 21, 5) as u8
    }
    /// REL: base addresses are relative (embedded implementations); unsupported here.
    pub const fn rel(self) -> bool {
        bit(self.0, 28)
    }
    /// QUEUES_PRESET: queue bases are fixed by the implementation.
    pub const fn queues_preset(self) -> bool {
        bit(self.0, 29)
    }
    /// TABLES_PRESET: stream table base is fixed by the implementation.
    pub const fn tables_preset(self) -> bool {
        bit(self.0, 30)
    }
}

/// SMMU_IDR3 (§6.3.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Idr3(pub u32);

impl Idr3 {
    /// HAD: hierarchical attribute disables.
    pub const fn had(self) -> bool {
        bit(self.0, 2)
    }
    /// XNX: EL0/EL1 execute-never distinction at stage 2.
    pub const fn xnx(self) -> bool {
        bit(self.0, 4)
    }
    /// FWB: stage-2 forced write-back.
    pub const fn fwb(self) -> bool {
        bit(self.0, 8)
    }
    /// RIL: range invalidation.
    pub const fn ril(self) -> bool {
        bit(self.0, 10)
    }
    /// BBML: break-before-make level (0, 1 or 2).
    pub const fn bbml(self) -> u8 {
        // CAST: a 2-bit field.
        field(self.0, 11, 2) as u8
    }
}

/// SMMU_IDR5 (§6.3.6).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Idr5(pub u32);

impl Idr5 {
    /// OAS: output address size in bits.
    pub fn output_address_bits(self) -> Result<u8> {
        match field(self.0, 0, 3) {
            0 => Ok(32),
            1 => Ok(36),
            2 => Ok(40),
            3 => Ok(42),
            4 => Ok(44),
            5 => Ok(48),
            6 => Ok(52),
            v => Err(Error::Hardware { what: "SMMU IDR5.OAS", value: u64::from(v) }),
        }
    }
    /// GRAN4K: 4 KiB translation granule.
    pub const fn gran4k(self) -> bool {
        bit(self.0, 4)
    }
    /// GRAN16K: 16 KiB translation granule.
    pub const fn gran16k(self) -> bool {
        bit(self.0, 5)
    }
    /// GRAN64K: 64 KiB translation granule.
    pub const fn gran64k(self) -> bool {
        bit(self.0, 6)
    }
    /// VAX: virtual address extension (0 = 48-bit, 1 = 52-bit VAs).
    pub const fn vax(self) -> u8 {
        // CAST: a 2-bit field.
        field(self.0, 10, 2) as u8
    }
    /// STALL_MAX: most stalled transactions outstanding.
    pub const fn stall_max(self) -> u16 {
        // CAST: a 16-bit field.
        field(self.0, 16, 16) as u16
    }
}

/// All ID registers of one SMMU, read once and validated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IdRegisters {
    /// IDR0.
    pub idr0: Idr0,
    /// IDR1.
    pub idr1: Idr1,
    /// IDR2 (VATOS; informational).
    pub idr2: u32,
    /// IDR3.
    pub idr3: Idr3,
    /// IDR4 (implementation defined).
    pub idr4: u32,
    /// IDR5.
    pub idr5: Idr5,
    /// IIDR (implementer and revision).
    pub iidr: u32,
    /// AIDR: architecture minor revision (0 = SMMUv3.0, 1 = v3.1, ...).
    pub aidr: u32,
}

impl IdRegisters {
    /// Reads IDR0..IDR5, IIDR and AIDR from the register frame.
    pub fn read(regs: &MmioRegion) -> Self {
        Self {
            idr0: Idr0(regs.read32(offset::IDR0)),
            idr1: Idr1(regs.read32(offset::IDR1)),
            idr2: regs.read32(offset::IDR2),
            idr3: Idr3(regs.read32(offset::IDR3)),
            idr4: regs.read32(offset::IDR4),
            idr5: Idr5(regs.read32(offset::IDR5)),
            iidr: regs.read32(offset::IIDR),
            aidr: regs.read32(offset::AIDR),
        }
    }

    /// Checks what this driver relies on before it sizes a table or queue from these values:
    /// AArch64 tables, little-endian walks, at least one stage, a 4 KiB granule, in-range queue
    /// and ID sizes, and absolute (not preset or relative) bases.
    pub fn validate(&self) -> Result<()> {
        let (i0, i1, i5) = (self.idr0, self.idr1, self.idr5);
        let fail = |what, value: u32| Err(Error::Hardware { what, value: u64::from(value) });
        if self.idr0.0 == u32::MAX {
            return fail("SMMU IDR0 (all-ones: nothing answers at this address)", self.idr0.0);
        }
        if !i0.s1p() && !i0.s2p() {
            return fail("SMMU IDR0 (neither stage 1 nor stage 2)", i0.0);
        }
        if i0.ttf() & 0b10 == 0 {
            return fail("SMMU IDR0.TTF (no AArch64 tables)", i0.0);
        }
        if i0.ttendian() == 0b01 || i0.ttendian() == 0b11 {
            return fail("SMMU IDR0.TTENDIAN (no little-endian walks)", i0.0);
        }
        i0.stream_table_levels()?;
        if i1.sid_bits() > 32 || i1.ssid_bits() > 20 {
            return fail("SMMU IDR1.SIDSIZE/SSIDSIZE", i1.0);
        }
        if i1.cmdq_log2() > 19 || i1.eventq_log2() > 19 || i1.priq_log2() > 19 {
            return fail("SMMU IDR1 queue sizes", i1.0);
        }
        if i1.rel() || i1.queues_preset() || i1.tables_preset() {
            return fail("SMMU IDR1 (preset or relative bases are not supported)", i1.0);
        }
        i5.output_address_bits()?;
        if !i5.gran4k() {
            return fail("SMMU IDR5 (no 4 KiB granule)", i5.0);
        }
        Ok(())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for IdRegisters {
    fn format(&self, f: defmt::Formatter<'_>) {
        let (i0, i1, i3, i5) = (self.idr0, self.idr1, self.idr3, self.idr5);
        defmt::write!(
            f,
            "IDR0 {=u32:#010x} IDR1 {=u32:#010x} IDR3 {=u32:#010x} IDR5 {=u32:#010x} AIDR {=u32} (SMMUv3.{=u32}): S1P {=bool} S2P {=bool} TTF {=u8:#04b} COHACC {=bool} BTM {=bool} HTTU {=u8} HYP {=bool} ATS {=bool} PRI {=bool} MSI {=bool} SEV {=bool} ASID16 {=bool} VMID16 {=bool} CD2L {=bool} stall model {=u8} 2-level stream table {=bool}; SIDSIZE {=u8} SSIDSIZE {=u8} CMDQS {=u8} EVENTQS {=u8} PRIQS {=u8}; RIL {=bool} BBML {=u8}; OAS {=u8} bits, granules 4K {=bool} 16K {=bool} 64K {=bool}",
            i0.0, i1.0, i3.0, i5.0, self.aidr, self.aidr & 0xf,
            i0.s1p(), i0.s2p(), i0.ttf(), i0.cohacc(), i0.btm(), i0.httu(), i0.hyp(), i0.ats(), i0.pri(), i0.msi(), i0.sev(), i0.asid16(), i0.vmid16(), i0.cd2l(), i0.stall_model(), i0.stream_table_levels() == Ok(StreamTableLevels::TwoLevel),
            i1.sid_bits(), i1.ssid_bits(), i1.cmdq_log2(), i1.eventq_log2(), i1.priq_log2(),
            i3.ril(), i3.bbml(),
            i5.output_address_bits().unwrap_or(0), i5.gran4k(), i5.gran16k(), i5.gran64k(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 10.0.2 virt (qemu notes §2.2), decoded by hand against IHI 0070 §6.3 and Linux's
    /// drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h (IDR0_ST_LVL = GENMASK(28, 27), ...).
    fn qemu() -> IdRegisters {
        IdRegisters {
            idr0: Idr0(0x0d44_101b),
            idr1: Idr1(0x0273_0010),
            idr2: 0,
            idr3: Idr3(0x1414),
            idr4: 0,
            idr5: Idr5(0x74),
            iidr: 0,
            aidr: 1,
        }
    }

    #[test]
    fn decodes_qemu_idrs() {
        let r = qemu();
        assert!(
            r.idr0.s1p() && r.idr0.s2p() && r.idr0.cohacc() && r.idr0.asid16() && r.idr0.vmid16()
        );
        assert_eq!(r.idr0.ttf(), 0b10);
        assert_eq!(r.idr0.ttendian(), 0b10);
        assert_eq!(r.idr0.stall_model(), 1);
        assert!(r.idr0.term_model());
        assert_eq!(r.idr0.stream_table_levels(), Ok(StreamTableLevels::TwoLevel));
        assert!(
            !r.idr0.ats()
                && !r.idr0.pri()
                && !r.idr0.msi()
                && !r.idr0.sev()
                && !r.idr0.cd2l()
                && !r.idr0.btm()
        );
        assert_eq!((r.idr1.sid_bits(), r.idr1.ssid_bits()), (16, 0));
        assert_eq!((r.idr1.cmdq_log2(), r.idr1.eventq_log2(), r.idr1.priq_log2()), (19, 19, 0));
        assert!(r.idr3.had() && r.idr3.xnx() && r.idr3.ril());
        assert_eq!(r.idr3.bbml(), 2);
        assert_eq!(r.idr5.output_address_bits(), Ok(44));
        assert!(r.idr5.gran4k() && r.idr5.gran16k() && r.idr5.gran64k());
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn rejects_unusable_idrs() {
        let mut r = qemu();
        r.idr0 = Idr0(u32::MAX);
        assert!(r.validate().is_err(), "all-ones");
        let mut r = qemu();
        r.idr0 = Idr0(0x0d44_1018); // no stage at all
        assert!(r.validate().is_err());
        let mut r = qemu();
        r.idr0 = Idr0(0x1d44_101b); // ST_LEVEL = 0b11
        assert_eq!(r.validate(), Err(Error::Hardware { what: "SMMU IDR0.ST_LEVEL", value: 3 }));
        let mut r = qemu();
        r.idr1 = Idr1(0x0293_0010); // CMDQS 20
        assert!(r.validate().is_err());
        let mut r = qemu();
        r.idr5 = Idr5(0x77); // OAS 7 is reserved
        assert!(r.validate().is_err());
        let mut r = qemu();
        r.idr5 = Idr5(0x64); // no 4K granule
        assert!(r.validate().is_err());
    }
}
