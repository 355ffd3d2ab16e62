//! Register layout and structure field positions of the model, written from the SMMUv3
//! specification (IHI 0070, §6 registers, §5 STE/CD, §4 commands, §7 events, §8 PRI queue) and
//! cross-checked with Linux's `drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h` (`ARM_SMMU_*`,
//! `IDR0_*`, `STRTAB_STE_*`, `CTXDESC_CD_*`, `CMDQ_*`, `EVTQ_*`, `PRIQ_*`), independently of the
//! driver's `smmuv3::regs`.

#![allow(missing_docs, reason = "the names are the specification's register and field mnemonics")]

/// Register offsets (§6.2, register map; Linux `ARM_SMMU_*`). The event and PRI queue
/// PROD/CONS registers live in page 1 (+0x10000); Linux's `ARM_SMMU_EVTQ_PROD` (0xa8) is the
/// page-relative offset.
pub mod off {
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
    pub const AGBPA: usize = 0x48;
    pub const IRQ_CTRL: usize = 0x50;
    pub const IRQ_CTRLACK: usize = 0x54;
    pub const GERROR: usize = 0x60;
    pub const GERRORN: usize = 0x64;
    pub const GERROR_IRQ_CFG0: usize = 0x68;
    pub const GERROR_IRQ_CFG1: usize = 0x70;
    pub const GERROR_IRQ_CFG2: usize = 0x74;
    pub const STRTAB_BASE: usize = 0x80;
    pub const STRTAB_BASE_CFG: usize = 0x88;
    pub const CMDQ_BASE: usize = 0x90;
    pub const CMDQ_PROD: usize = 0x98;
    pub const CMDQ_CONS: usize = 0x9c;
    pub const EVENTQ_BASE: usize = 0xa0;
    pub const EVENTQ_IRQ_CFG0: usize = 0xb0;
    pub const EVENTQ_IRQ_CFG1: usize = 0xb8;
    pub const EVENTQ_IRQ_CFG2: usize = 0xbc;
    pub const PRIQ_BASE: usize = 0xc0;
    pub const PRIQ_IRQ_CFG0: usize = 0xd0;
    pub const PRIQ_IRQ_CFG1: usize = 0xd8;
    pub const PRIQ_IRQ_CFG2: usize = 0xdc;
    /// Start of page 1.
    pub const PAGE1: usize = 0x1_0000;
    pub const EVENTQ_PROD: usize = PAGE1 + 0xa8;
    pub const EVENTQ_CONS: usize = PAGE1 + 0xac;
    pub const PRIQ_PROD: usize = PAGE1 + 0xc8;
    pub const PRIQ_CONS: usize = PAGE1 + 0xcc;
    /// Bytes of each page the model scans for writes (Linux `ARM_SMMU_REG_SZ` is 0xe00; the
    /// registers the model implements all lie below 0x100).
    pub const SCANNED: usize = 0x100;
}

/// SMMU_IDR0 (§6.3.1; Linux `IDR0_*`).
pub mod idr0 {
    pub const S2P: u32 = 1 << 0;
    pub const S1P: u32 = 1 << 1;
    pub const TTF_SHIFT: u32 = 2;
    pub const TTF_AARCH64: u32 = 2;
    pub const COHACC: u32 = 1 << 4;
    pub const BTM: u32 = 1 << 5;
    pub const HTTU_SHIFT: u32 = 6;
    pub const HYP: u32 = 1 << 9;
    pub const ATS: u32 = 1 << 10;
    pub const ASID16: u32 = 1 << 12;
    pub const MSI: u32 = 1 << 13;
    pub const SEV: u32 = 1 << 14;
    pub const PRI: u32 = 1 << 16;
    pub const VMID16: u32 = 1 << 18;
    pub const CD2L: u32 = 1 << 19;
    pub const TTENDIAN_SHIFT: u32 = 21;
    pub const TTENDIAN_LE: u32 = 2;
    pub const STALL_MODEL_SHIFT: u32 = 24;
    /// STALL_MODEL == 0b01: stalling not supported.
    pub const STALL_NONE: u32 = 1;
    pub const TERM_MODEL: u32 = 1 << 26;
    pub const ST_LEVEL_SHIFT: u32 = 27;
    pub const ST_LEVEL_2LVL: u32 = 1;
}

/// SMMU_IDR1 (§6.3.2; Linux `IDR1_*`).
pub mod idr1 {
    pub const SIDSIZE_SHIFT: u32 = 0;
    pub const SSIDSIZE_SHIFT: u32 = 6;
    pub const PRIQS_SHIFT: u32 = 11;
    pub const EVENTQS_SHIFT: u32 = 16;
    pub const CMDQS_SHIFT: u32 = 21;
}

/// SMMU_IDR3 (§6.3.4; Linux `IDR3_*`).
pub mod idr3 {
    pub const HAD: u32 = 1 << 2;
    pub const XNX: u32 = 1 << 4;
    pub const PPS: u32 = 1 << 5;
    pub const RIL: u32 = 1 << 10;
}

/// SMMU_IDR5 (§6.3.6; Linux `IDR5_*`).
pub mod idr5 {
    pub const OAS_MASK: u32 = 0x7;
    pub const GRAN4K: u32 = 1 << 4;
    pub const GRAN16K: u32 = 1 << 5;
    pub const GRAN64K: u32 = 1 << 6;
}

/// SMMU_CR0 / CR0ACK (§6.3.9; Linux `CR0_*`).
pub mod cr0 {
    pub const SMMUEN: u32 = 1 << 0;
    pub const PRIQEN: u32 = 1 << 1;
    pub const EVENTQEN: u32 = 1 << 2;
    pub const CMDQEN: u32 = 1 << 3;
    pub const ATSCHK: u32 = 1 << 4;
    /// VMW, bits 8:6.
    pub const VMW: u32 = 0x7 << 6;
}

/// SMMU_CR2 (§6.3.12; Linux `CR2_*`).
pub mod cr2 {
    pub const E2H: u32 = 1 << 0;
    /// Record C_BAD_STREAMID for StreamIDs outside the stream table.
    pub const RECINVSID: u32 = 1 << 1;
    pub const PTM: u32 = 1 << 2;
}

/// SMMU_GBPA (§6.3.14; Linux `GBPA_*`).
pub mod gbpa {
    pub const UPDATE: u32 = 1 << 31;
    pub const ABORT: u32 = 1 << 20;
    /// The writable attribute fields (INSTCFG, PRIVCFG, SHCFG, ALLOCCFG, MTCFG, MEMATTR) and
    /// ABORT.
    pub const FIELDS: u32 = ABORT | 0xf_3f1f;
}

/// SMMU_IRQ_CTRL / IRQ_CTRLACK (§6.3.16; Linux `IRQ_CTRL_*`).
pub mod irq_ctrl {
    pub const GERROR_IRQEN: u32 = 1 << 0;
    pub const PRIQ_IRQEN: u32 = 1 << 1;
    pub const EVENTQ_IRQEN: u32 = 1 << 2;
}

/// SMMU_GERROR / GERRORN (§6.3.18; Linux `GERROR_*`): an error is active while its bit
/// differs between the two.
pub mod gerror {
    pub const CMDQ_ERR: u32 = 1 << 0;
    pub const EVENTQ_ABT_ERR: u32 = 1 << 2;
    pub const PRIQ_ABT_ERR: u32 = 1 << 3;
    pub const MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
    pub const MSI_EVENTQ_ABT_ERR: u32 = 1 << 5;
    pub const MSI_PRIQ_ABT_ERR: u32 = 1 << 6;
    pub const MSI_GERROR_ABT_ERR: u32 = 1 << 7;
    pub const SFM_ERR: u32 = 1 << 8;
    /// Linux `GERROR_ERR_MASK`.
    pub const MASK: u32 = 0x1fd;
}

/// SMMU_STRTAB_BASE / _CFG (§6.3.23-24; Linux `STRTAB_BASE_*`).
pub mod strtab {
    pub const RA: u64 = 1 << 62;
    /// ADDR, bits 51:6.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
    pub const LOG2SIZE_MASK: u32 = 0x3f;
    pub const SPLIT_SHIFT: u32 = 6;
    pub const FMT_SHIFT: u32 = 16;
    pub const FMT_LINEAR: u32 = 0;
    pub const FMT_2LVL: u32 = 1;
    /// L1STD: SPAN 4:0, L2Ptr 51:6 (§5.1; Linux `STRTAB_L1_DESC_*`).
    pub const L1_SPAN_MASK: u64 = 0x1f;
}

/// Queue base registers and PROD/CONS (§6.3.25-§6.3.36; Linux `Q_BASE_*`, `Q_OVERFLOW_FLAG`,
/// `CMDQ_CONS_ERR`).
pub mod queue {
    pub const BASE_RWA: u64 = 1 << 62;
    /// ADDR, bits 51:5.
    pub const BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_ffe0;
    pub const BASE_LOG2SIZE_MASK: u64 = 0x1f;
    /// EVENTQ/PRIQ PROD.OVFLG and CONS.OVACKFLG.
    pub const OVFLG: u32 = 1 << 31;
    /// CMDQ_CONS.ERR, bits 30:24.
    pub const ERR_SHIFT: u32 = 24;
    pub const ERR_MASK: u32 = 0x7f << ERR_SHIFT;
    /// CERROR codes (§4.5).
    pub const CERROR_NONE: u32 = 0;
    pub const CERROR_ILL: u32 = 1;
    pub const CERROR_ABT: u32 = 2;
    pub const CERROR_ATC_INV_SYNC: u32 = 3;
}

/// *_IRQ_CFG0/1/2 (§6.3.19-21): address 51:2, data, and attributes.
pub mod msi {
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_fffc;
}

/// Stream table entry fields (§5.2; Linux `STRTAB_STE_*`), as (dword, shift, width).
pub mod ste {
    pub const V: (usize, u32, u32) = (0, 0, 1);
    pub const CONFIG: (usize, u32, u32) = (0, 1, 3);
    pub const S1FMT: (usize, u32, u32) = (0, 4, 2);
    /// S1ContextPtr, bits 51:6 of dword 0.
    pub const S1CTXPTR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
    pub const S1CDMAX: (usize, u32, u32) = (0, 59, 5);
    pub const S1DSS: (usize, u32, u32) = (1, 0, 2);
    pub const PPAR: (usize, u32, u32) = (1, 18, 1);
    pub const S1STALLD: (usize, u32, u32) = (1, 27, 1);
    pub const EATS: (usize, u32, u32) = (1, 28, 2);
    pub const STRW: (usize, u32, u32) = (1, 30, 2);
    pub const S2VMID: (usize, u32, u32) = (2, 0, 16);
    pub const S2T0SZ: (usize, u32, u32) = (2, 32, 6);
    pub const S2SL0: (usize, u32, u32) = (2, 38, 2);
    pub const S2TG: (usize, u32, u32) = (2, 46, 2);
    pub const S2PS: (usize, u32, u32) = (2, 48, 3);
    pub const S2AA64: (usize, u32, u32) = (2, 51, 1);
    pub const S2ENDI: (usize, u32, u32) = (2, 52, 1);
    pub const S2AFFD: (usize, u32, u32) = (2, 53, 1);
    pub const S2HA: (usize, u32, u32) = (2, 56, 1);
    pub const S2S: (usize, u32, u32) = (2, 57, 1);
    pub const S2R: (usize, u32, u32) = (2, 58, 1);
    /// S2TTB, bits 51:4 of dword 3.
    pub const S2TTB_MASK: u64 = 0x000f_ffff_ffff_fff0;
    /// STE.Config values.
    pub const CFG_ABORT: u64 = 0b000;
    pub const CFG_BYPASS: u64 = 0b100;
    pub const CFG_S1: u64 = 0b101;
    pub const CFG_S2: u64 = 0b110;
    pub const CFG_NESTED: u64 = 0b111;
    /// STE.S1DSS values.
    pub const S1DSS_TERMINATE: u64 = 0;
    pub const S1DSS_BYPASS: u64 = 1;
    pub const S1DSS_SSID0: u64 = 2;
    /// STE.STRW == EL2 (with E2H).
    pub const STRW_EL2: u64 = 2;
}

/// Context descriptor fields (§5.4; Linux `CTXDESC_CD_*`), as (dword, shift, width).
pub mod cd {
    pub const T0SZ: (usize, u32, u32) = (0, 0, 6);
    pub const TG0: (usize, u32, u32) = (0, 6, 2);
    pub const EPD0: (usize, u32, u32) = (0, 14, 1);
    pub const ENDI: (usize, u32, u32) = (0, 15, 1);
    pub const T1SZ: (usize, u32, u32) = (0, 16, 6);
    pub const TG1: (usize, u32, u32) = (0, 22, 2);
    pub const EPD1: (usize, u32, u32) = (0, 30, 1);
    pub const V: (usize, u32, u32) = (0, 31, 1);
    pub const IPS: (usize, u32, u32) = (0, 32, 3);
    pub const AFFD: (usize, u32, u32) = (0, 35, 1);
    pub const WXN: (usize, u32, u32) = (0, 36, 1);
    pub const AA64: (usize, u32, u32) = (0, 41, 1);
    pub const HD: (usize, u32, u32) = (0, 42, 1);
    pub const HA: (usize, u32, u32) = (0, 43, 1);
    pub const S: (usize, u32, u32) = (0, 44, 1);
    pub const R: (usize, u32, u32) = (0, 45, 1);
    pub const A: (usize, u32, u32) = (0, 46, 1);
    pub const ASET: (usize, u32, u32) = (0, 47, 1);
    pub const ASID: (usize, u32, u32) = (0, 48, 16);
    pub const HAD0: (usize, u32, u32) = (1, 1, 1);
    pub const HAD1: (usize, u32, u32) = (2, 1, 1);
    /// TTB0 (dword 1) and TTB1 (dword 2), bits 51:4.
    pub const TTB_MASK: u64 = 0x000f_ffff_ffff_fff0;
    /// L1CD: V bit 0, L2Ptr 51:12 (Linux `CTXDESC_L1_DESC_*`).
    pub const L1_V: u64 = 1;
    pub const L1_L2PTR_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// STE.S1Fmt values.
    pub const FMT_LINEAR: u64 = 0;
    pub const FMT_2LVL_4K: u64 = 1;
    pub const FMT_2LVL_64K: u64 = 2;
}

/// Command opcodes (§4.1.1; Linux `CMDQ_OP_*`).
pub mod op {
    pub const PREFETCH_CONFIG: u8 = 0x01;
    pub const PREFETCH_ADDR: u8 = 0x02;
    pub const CFGI_STE: u8 = 0x03;
    /// CFGI_STE_RANGE; with Range == 31 it is CFGI_ALL.
    pub const CFGI_STE_RANGE: u8 = 0x04;
    pub const CFGI_CD: u8 = 0x05;
    pub const CFGI_CD_ALL: u8 = 0x06;
    pub const TLBI_NH_ALL: u8 = 0x10;
    pub const TLBI_NH_ASID: u8 = 0x11;
    pub const TLBI_NH_VA: u8 = 0x12;
    pub const TLBI_NH_VAA: u8 = 0x13;
    pub const TLBI_EL3_ALL: u8 = 0x18;
    pub const TLBI_EL3_VA: u8 = 0x1a;
    pub const TLBI_EL2_ALL: u8 = 0x20;
    pub const TLBI_EL2_ASID: u8 = 0x21;
    pub const TLBI_EL2_VA: u8 = 0x22;
    pub const TLBI_EL2_VAA: u8 = 0x23;
    pub const TLBI_S12_VMALL: u8 = 0x28;
    pub const TLBI_S2_IPA: u8 = 0x2a;
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    pub const ATC_INV: u8 = 0x40;
    pub const PRI_RESP: u8 = 0x41;
    pub const RESUME: u8 = 0x44;
    pub const STALL_TERM: u8 = 0x45;
    pub const CMD_SYNC: u8 = 0x46;
}

/// Event record type codes (§7.3; Linux `EVT_ID_*`).
pub mod event {
    pub const C_BAD_STREAMID: u8 = 0x02;
    pub const F_STE_FETCH: u8 = 0x03;
    pub const C_BAD_STE: u8 = 0x04;
    pub const F_STREAM_DISABLED: u8 = 0x06;
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    pub const F_CD_FETCH: u8 = 0x09;
    pub const C_BAD_CD: u8 = 0x0a;
    pub const F_WALK_EABT: u8 = 0x0b;
    pub const F_TRANSLATION: u8 = 0x10;
    pub const F_ADDR_SIZE: u8 = 0x11;
    pub const F_ACCESS: u8 = 0x12;
    pub const F_PERMISSION: u8 = 0x13;
    /// Record dword 0: SSV bit 11, SubstreamID 31:12, StreamID 63:32 (Linux `EVTQ_0_*`).
    pub const SSV: u64 = 1 << 11;
    pub const SSID_SHIFT: u32 = 12;
    pub const SID_SHIFT: u32 = 32;
    /// Record dword 1: PnU 33, InD 34, RnW 35, S2 39, CLASS 41:40, TTRnW 44 (Linux `EVTQ_1_*`).
    pub const PNU: u64 = 1 << 33;
    pub const IND: u64 = 1 << 34;
    pub const RNW: u64 = 1 << 35;
    pub const S2: u64 = 1 << 39;
    pub const CLASS_SHIFT: u32 = 40;
    pub const TT_READ: u64 = 1 << 44;
    /// CLASS values: what the faulting stage-2 access was for.
    pub const CLASS_CD: u8 = 0;
    pub const CLASS_TT: u8 = 1;
    pub const CLASS_IN: u8 = 2;
}

/// PRI queue entry (§8; Linux `PRIQ_*`): dword 0 StreamID 31:0, SubstreamID 51:32, Priv 58,
/// Exec 59, Read 60, Write 61, Last 62, SSV 63; dword 1 PRGIndex 8:0, page address 63:12.
pub mod priq {
    pub const SSID_SHIFT: u32 = 32;
    pub const PRIV: u64 = 1 << 58;
    pub const EXEC: u64 = 1 << 59;
    pub const READ: u64 = 1 << 60;
    pub const WRITE: u64 = 1 << 61;
    pub const LAST: u64 = 1 << 62;
    pub const SSV: u64 = 1 << 63;
    pub const PRGI_MASK: u64 = 0x1ff;
    pub const ADDR_MASK: u64 = !0xfff;
}

/// Configuration of one modelled SMMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// SMMU_IDR0..IDR5.
    pub idr: [u32; 6],
    /// SMMU_IIDR.
    pub iidr: u32,
    /// SMMU_AIDR.
    pub aidr: u32,
    /// SMMU_GBPA at reset.
    pub gbpa: u32,
    /// Page 1 is an alias of page 0 (QEMU, qemu notes §2.1; Linux `ARM_SMMU_OPT_PAGE0_REGS_ONLY`
    /// hardware): the event and PRI queue PROD/CONS registers are then also at 0xa8/0xac/0xc8/
    /// 0xcc. Without it those page-0 offsets are reserved.
    pub page1_alias: bool,
}

impl Config {
    /// `-M virt,iommu=smmuv3` in QEMU 10.0.2 (qemu notes §2.2): stage 1 and 2, AArch64 tables,
    /// 2-level stream table, 16-bit StreamIDs, no substreams, no PRI, no MSI or SEV, no ATS,
    /// range invalidation, 44-bit OAS, page 1 aliasing page 0, GBPA bypass.
    pub fn qemu_virt() -> Self {
        Self {
            idr: [0x0d44_101b, 0x0273_0010, 0, 0x0000_1414, 0, 0x0000_0074],
            iidr: 0,
            aidr: 1,
            gbpa: 0x1000,
            page1_alias: true,
        }
    }

    /// A full-featured SMMUv3.1 for what QEMU lacks: everything of [`qemu_virt`](Self::qemu_virt)
    /// plus 20-bit substreams with 2-level CD tables, PRI, ATS, MSIs, SEV and HYP (EL2
    /// invalidations); BTM and HTTU off, no stalls; 48-bit OAS and the 4 KiB granule only;
    /// separate page 1 as the specification lays it out.
    pub fn full() -> Self {
        let idr0 = idr0::S2P
            | idr0::S1P
            | idr0::TTF_AARCH64 << idr0::TTF_SHIFT
            | idr0::COHACC
            | idr0::HYP
            | idr0::ATS
            | idr0::ASID16
            | idr0::MSI
            | idr0::SEV
            | idr0::PRI
            | idr0::VMID16
            | idr0::CD2L
            | idr0::TTENDIAN_LE << idr0::TTENDIAN_SHIFT
            | idr0::STALL_NONE << idr0::STALL_MODEL_SHIFT
            | idr0::TERM_MODEL
            | idr0::ST_LEVEL_2LVL << idr0::ST_LEVEL_SHIFT;
        let idr1 = 16 << idr1::SIDSIZE_SHIFT
            | 20 << idr1::SSIDSIZE_SHIFT
            | 19 << idr1::PRIQS_SHIFT
            | 19 << idr1::EVENTQS_SHIFT
            | 19 << idr1::CMDQS_SHIFT;
        Self {
            idr: [idr0, idr1, 0, idr3::HAD | idr3::XNX | idr3::RIL, 0, idr5::GRAN4K | 5],
            iidr: 0,
            aidr: 1,
            gbpa: 0x1000,
            page1_alias: false,
        }
    }

    /// Replaces IDRn.
    pub fn with_idr(mut self, n: usize, value: u32) -> Self {
        if let Some(r) = self.idr.get_mut(n) {
            *r = value;
        }
        self
    }

    /// Sets IDR1.CMDQS, EVENTQS and PRIQS (log2 of the largest queues), for overflow tests.
    pub fn with_queue_sizes(mut self, cmdqs: u32, eventqs: u32, priqs: u32) -> Self {
        let keep = self.idr[1] & !(0x7fff << idr1::PRIQS_SHIFT);
        self.idr[1] = keep
            | (cmdqs.min(19) << idr1::CMDQS_SHIFT)
            | (eventqs.min(19) << idr1::EVENTQS_SHIFT)
            | (priqs.min(19) << idr1::PRIQS_SHIFT);
        self
    }

    pub(super) fn idr0(&self, bit: u32) -> bool {
        self.idr[0] & bit != 0
    }
    pub(super) fn s1p(&self) -> bool {
        self.idr0(idr0::S1P)
    }
    pub(super) fn s2p(&self) -> bool {
        self.idr0(idr0::S2P)
    }
    pub(super) fn pri(&self) -> bool {
        self.idr0(idr0::PRI)
    }
    pub(super) fn msi(&self) -> bool {
        self.idr0(idr0::MSI)
    }
    pub(super) fn ats(&self) -> bool {
        self.idr0(idr0::ATS)
    }
    pub(super) fn hyp(&self) -> bool {
        self.idr0(idr0::HYP)
    }
    pub(super) fn sev(&self) -> bool {
        self.idr0(idr0::SEV)
    }
    pub(super) fn cd2l(&self) -> bool {
        self.idr0(idr0::CD2L)
    }
    pub(super) fn httu(&self) -> u32 {
        (self.idr[0] >> idr0::HTTU_SHIFT) & 3
    }
    /// Stalls supported (STALL_MODEL 0b00 or 0b10).
    pub(super) fn stalls(&self) -> bool {
        (self.idr[0] >> idr0::STALL_MODEL_SHIFT) & 3 != idr0::STALL_NONE
    }
    pub(super) fn two_level_strtab(&self) -> bool {
        (self.idr[0] >> idr0::ST_LEVEL_SHIFT) & 3 == idr0::ST_LEVEL_2LVL
    }
    pub(super) fn sidsize(&self) -> u32 {
        self.idr[1] & 0x3f
    }
    pub(super) fn ssidsize(&self) -> u32 {
        (self.idr[1] >> idr1::SSIDSIZE_SHIFT) & 0x1f
    }
    pub(super) fn cmdqs(&self) -> u32 {
        (self.idr[1] >> idr1::CMDQS_SHIFT) & 0x1f
    }
    pub(super) fn eventqs(&self) -> u32 {
        (self.idr[1] >> idr1::EVENTQS_SHIFT) & 0x1f
    }
    pub(super) fn priqs(&self) -> u32 {
        (self.idr[1] >> idr1::PRIQS_SHIFT) & 0x1f
    }
    pub(super) fn ril(&self) -> bool {
        self.idr[3] & idr3::RIL != 0
    }
    pub(super) fn xnx(&self) -> bool {
        self.idr[3] & idr3::XNX != 0
    }
    pub(super) fn had(&self) -> bool {
        self.idr[3] & idr3::HAD != 0
    }
    pub(super) fn pps(&self) -> bool {
        self.idr[3] & idr3::PPS != 0
    }
    pub(super) fn gran4k(&self) -> bool {
        self.idr[5] & idr5::GRAN4K != 0
    }
    /// IDR5.OAS in bits.
    pub(super) fn oas_bits(&self) -> u32 {
        pa_bits(u64::from(self.idr[5] & idr5::OAS_MASK))
    }
}

/// The physical address size an OAS/IPS/S2PS encoding gives (§6.3.6: 32, 36, 40, 42, 44, 48,
/// 52 bits; reserved encodings read as 48).
pub(super) fn pa_bits(enc: u64) -> u32 {
    match enc {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        6 => 52,
        _ => 48,
    }
}

/// Extracts a (dword, shift, width) field from an STE or CD.
pub(super) fn field(words: &[u64; 8], (dword, shift, width): (usize, u32, u32)) -> u64 {
    words.get(dword).map_or(0, |w| (w >> shift) & ((1u64 << width) - 1))
}
