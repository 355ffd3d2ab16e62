//! Command queue entries (SMMUv3 §4: two 64-bit words each).
//!
//! Field positions follow the specification's command layouts (§4.1-§4.7) and were cross-checked
//! with Linux `drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h` (`CMDQ_0_OP`, `CMDQ_CFGI_0_SID`,
//! `CMDQ_TLBI_0_ASID`, `CMDQ_SYNC_0_CS`, ...); the tests restate them independently.

use crate::addr::StreamId;
use crate::error::{Error, Result};

/// Command opcodes (§4.1-§4.7).
#[allow(missing_docs, reason = "the names are the specification's command mnemonics")]
pub mod opcode {
    pub const PREFETCH_CONFIG: u8 = 0x01;
    pub const PREFETCH_ADDR: u8 = 0x02;
    pub const CFGI_STE: u8 = 0x03;
    /// CFGI_STE_RANGE; with Range = 31 it is CFGI_ALL (QEMU implements CFGI_ALL only this way).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    pub const CFGI_CD: u8 = 0x05;
    pub const CFGI_CD_ALL: u8 = 0x06;
    pub const CFGI_VMS_PIDM: u8 = 0x07;
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

/// The mnemonic of an opcode, for logs.
pub const fn opcode_name(op: u8) -> &'static str {
    match op {
        opcode::PREFETCH_CONFIG => "PREFETCH_CONFIG",
        opcode::PREFETCH_ADDR => "PREFETCH_ADDR",
        opcode::CFGI_STE => "CFGI_STE",
        opcode::CFGI_STE_RANGE => "CFGI_STE_RANGE",
        opcode::CFGI_CD => "CFGI_CD",
        opcode::CFGI_CD_ALL => "CFGI_CD_ALL",
        opcode::CFGI_VMS_PIDM => "CFGI_VMS_PIDM",
        opcode::TLBI_NH_ALL => "TLBI_NH_ALL",
        opcode::TLBI_NH_ASID => "TLBI_NH_ASID",
        opcode::TLBI_NH_VA => "TLBI_NH_VA",
        opcode::TLBI_NH_VAA => "TLBI_NH_VAA",
        opcode::TLBI_EL3_ALL => "TLBI_EL3_ALL",
        opcode::TLBI_EL3_VA => "TLBI_EL3_VA",
        opcode::TLBI_EL2_ALL => "TLBI_EL2_ALL",
        opcode::TLBI_EL2_ASID => "TLBI_EL2_ASID",
        opcode::TLBI_EL2_VA => "TLBI_EL2_VA",
        opcode::TLBI_EL2_VAA => "TLBI_EL2_VAA",
        opcode::TLBI_S12_VMALL => "TLBI_S12_VMALL",
        opcode::TLBI_S2_IPA => "TLBI_S2_IPA",
        opcode::TLBI_NSNH_ALL => "TLBI_NSNH_ALL",
        opcode::ATC_INV => "ATC_INV",
        opcode::PRI_RESP => "PRI_RESP",
        opcode::RESUME => "RESUME",
        opcode::STALL_TERM => "STALL_TERM",
        opcode::CMD_SYNC => "CMD_SYNC",
        _ => "unknown",
    }
}

/// CMDQ_CONS.ERR codes (§7.1, Table 7-1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CommandErrorKind {
    /// CERROR_NONE (0): no error.
    None,
    /// CERROR_ILL (1): an unknown opcode or a reserved field set.
    Illegal,
    /// CERROR_ABT (2): the SMMU could not read the command (abort on the queue memory).
    Abort,
    /// CERROR_ATC_INV_SYNC (3): a CMD_SYNC after ATC invalidations that timed out.
    AtcInvalidationSync,
    /// Any other value (implementation defined or reserved).
    Other(u8),
}

impl CommandErrorKind {
    /// Decodes CMDQ_CONS.ERR (bits 30:24).
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => Self::None,
            1 => Self::Illegal,
            2 => Self::Abort,
            3 => Self::AtcInvalidationSync,
            other => Self::Other(other),
        }
    }
}

/// PRI_RESP response codes (§4.7.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PriResponse {
    /// Invalid Request (0b00 Deny).
    Deny = 0,
    /// Response Failure (0b01 Fail).
    Fail = 1,
    /// Success (0b10).
    Success = 2,
}

/// CMD_SYNC completion signal (CS, §4.6.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SyncSignal {
    /// No signal: software polls CMDQ_CONS (the only way under QEMU without MSI or SEV).
    None = 0,
    /// Raise the cmdq-sync interrupt.
    Irq = 1,
    /// Send a WFE wake-up event.
    Sev = 2,
}

/// One command: two little-endian 64-bit words.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Command(pub [u64; 2]);

const fn sid_field(sid: StreamId) -> u64 {
    (sid.0 as u64) << 32
}

/// Largest SubstreamID (20 bits).
const SSID_MAX: u32 = (1 << 20) - 1;

impl Command {
    /// The opcode (bits 7:0).
    pub const fn opcode(&self) -> u8 {
        // CAST: an 8-bit field.
        (self.0[0] & 0xff) as u8
    }

    /// A command from its raw words (tests, and deliberately malformed commands).
    pub const fn from_raw(words: [u64; 2]) -> Self {
        Self(words)
    }

    /// PREFETCH_CONFIG for `sid` (a hint; a no-op in QEMU).
    pub const fn prefetch_config(sid: StreamId) -> Self {
        Self([opcode::PREFETCH_CONFIG as u64 | sid_field(sid), 0])
    }

    /// CFGI_STE: the SMMU drops what it cached of `sid`'s STE (and, with `leaf` clear, of the
    /// level-1 descriptor that leads to it).
    pub const fn cfgi_ste(sid: StreamId, leaf: bool) -> Self {
        Self([opcode::CFGI_STE as u64 | sid_field(sid), leaf as u64])
    }

    /// CFGI_STE_RANGE: STEs of the `2^(range + 1)` StreamIDs aligned around `sid`.
    pub fn cfgi_ste_range(sid: StreamId, range: u8) -> Result<Self> {
        if range > 31 {
            return Err(Error::InvalidField {
                what: "CFGI_STE_RANGE Range",
                value: u64::from(range),
            });
        }
        Ok(Self([opcode::CFGI_STE_RANGE as u64 | sid_field(sid), u64::from(range)]))
    }

    /// CFGI_ALL: every cached STE and CD (CFGI_STE_RANGE with Range = 31, §4.3.3).
    pub const fn cfgi_all() -> Self {
        Self([opcode::CFGI_STE_RANGE as u64, 31])
    }

    /// CFGI_CD: the CD of (`sid`, `ssid`).
    pub fn cfgi_cd(sid: StreamId, ssid: u32, leaf: bool) -> Result<Self> {
        if ssid > SSID_MAX {
            return Err(Error::InvalidField {
                what: "CFGI_CD SubstreamID",
                value: u64::from(ssid),
            });
        }
        Ok(Self([opcode::CFGI_CD as u64 | (u64::from(ssid) << 12) | sid_field(sid), leaf as u64]))
    }

    /// CFGI_CD_ALL: every CD of `sid`.
    pub const fn cfgi_cd_all(sid: StreamId) -> Self {
        Self([opcode::CFGI_CD_ALL as u64 | sid_field(sid), 0])
    }

    /// TLBI_NH_ALL: every non-secure, non-hypervisor stage-1 entry (of VMID 0 when stage 2 is
    /// implemented).
    pub const fn tlbi_nh_all() -> Self {
        Self([opcode::TLBI_NH_ALL as u64, 0])
    }

    /// TLBI_NH_ALL for `vmid`: every stage-1 entry tagged with the VMID, which includes the
    /// combined stage-1+2 entries of nested configurations (a stage-2 change owes it).
    pub const fn tlbi_nh_all_vmid(vmid: u16) -> Self {
        Self([opcode::TLBI_NH_ALL as u64 | ((vmid as u64) << 32), 0])
    }

    /// TLBI_NH_ASID: every stage-1 entry of `asid` (under `vmid`, 0 for stage 1 alone).
    pub const fn tlbi_nh_asid(asid: u16, vmid: u16) -> Self {
        Self([opcode::TLBI_NH_ASID as u64 | ((vmid as u64) << 32) | ((asid as u64) << 48), 0])
    }

    /// TLBI_NH_VA: stage-1 entries of `asid` for the 4 KiB page `va` (`leaf`: only leaf
    /// entries; walk caches stay). TG = 0 (no range).
    pub const fn tlbi_nh_va(asid: u16, vmid: u16, va: u64, leaf: bool) -> Self {
        Self([
            opcode::TLBI_NH_VA as u64 | ((vmid as u64) << 32) | ((asid as u64) << 48),
            (va & !0xfff) | leaf as u64,
        ])
    }

    /// TLBI_S2_IPA: stage-2 entries of `vmid` for the 4 KiB page `ipa` (bits 51:12).
    pub const fn tlbi_s2_ipa(vmid: u16, ipa: u64, leaf: bool) -> Self {
        Self([
            opcode::TLBI_S2_IPA as u64 | ((vmid as u64) << 32),
            (ipa & 0x000f_ffff_ffff_f000) | leaf as u64,
        ])
    }

    /// A range TLBI (SMMUv3.1 IDR3.RIL, §4.4.1): TLBI_NH_VA or TLBI_S2_IPA (`op`) of
    /// `(num + 1) * 2^scale` 4 KiB pages from `addr` (TG = 0b01: 4 KiB, TTL = 0: any level).
    pub fn tlbi_range(
        op: u8,
        asid: u16,
        vmid: u16,
        addr: u64,
        leaf: bool,
        scale: u8,
        num: u8,
    ) -> Result<Self> {
        if !matches!(op, opcode::TLBI_NH_VA | opcode::TLBI_S2_IPA) || scale > 31 || num > 31 {
            return Err(Error::InvalidField {
                what: "range TLBI opcode, SCALE or NUM",
                value: u64::from(op),
            });
        }
        let asid = if op == opcode::TLBI_NH_VA { u64::from(asid) << 48 } else { 0 };
        Ok(Self([
            u64::from(op)
                | (u64::from(num) << 12)
                | (u64::from(scale) << 20)
                | (u64::from(vmid) << 32)
                | asid,
            (addr & 0x000f_ffff_ffff_f000) | (1 << 10) | leaf as u64,
        ]))
    }

    /// TLBI_S12_VMALL: every stage-1 and stage-2 entry of `vmid`.
    pub const fn tlbi_s12_vmall(vmid: u16) -> Self {
        Self([opcode::TLBI_S12_VMALL as u64 | ((vmid as u64) << 32), 0])
    }

    /// TLBI_EL2_ALL: every EL2 (hypervisor) stage-1 entry.
    pub const fn tlbi_el2_all() -> Self {
        Self([opcode::TLBI_EL2_ALL as u64, 0])
    }

    /// TLBI_NSNH_ALL: every non-secure, non-hypervisor entry of every VMID.
    pub const fn tlbi_nsnh_all() -> Self {
        Self([opcode::TLBI_NSNH_ALL as u64, 0])
    }

    /// PRI_RESP: the response to page request group `grpid` of (`sid`, `ssid` when given)
    /// (§4.7.1; the page-request service sends it).
    pub fn pri_resp(
        sid: StreamId,
        ssid: Option<u32>,
        grpid: u16,
        resp: PriResponse,
    ) -> Result<Self> {
        if grpid > 0x1ff {
            return Err(Error::InvalidField {
                what: "PRI_RESP PRG index",
                value: u64::from(grpid),
            });
        }
        let (ssv, ssid) = match ssid {
            Some(s) if s > SSID_MAX => {
                return Err(Error::InvalidField {
                    what: "PRI_RESP SubstreamID",
                    value: u64::from(s),
                });
            }
            Some(s) => (1u64 << 11, u64::from(s) << 12),
            None => (0, 0),
        };
        Ok(Self([
            opcode::PRI_RESP as u64 | ssv | ssid | sid_field(sid),
            u64::from(grpid) | ((resp as u64) << 12),
        ]))
    }

    /// CMD_SYNC with completion signal `cs`, no MSI write (MSH/MSIAttr/MSIAddr zero).
    pub const fn sync(cs: SyncSignal) -> Self {
        Self([opcode::CMD_SYNC as u64 | ((cs as u64) << 12), 0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Positions restated from SMMUv3 §4 and Linux arm-smmu-v3.h: CMDQ_0_OP GENMASK(7,0),
    // CMDQ_0_SSV BIT(11), CMDQ_CFGI_0_SSID GENMASK(31,12), CMDQ_CFGI_0_SID GENMASK(63,32),
    // CMDQ_CFGI_1_LEAF BIT(0), CMDQ_CFGI_1_RANGE GENMASK(4,0), CMDQ_TLBI_0_VMID GENMASK(47,32),
    // CMDQ_TLBI_0_ASID GENMASK(63,48), CMDQ_TLBI_1_LEAF BIT(0), CMDQ_TLBI_1_VA_MASK
    // GENMASK(63,12), CMDQ_TLBI_1_IPA_MASK GENMASK(51,12), CMDQ_PRI_1_GRPID GENMASK(8,0),
    // CMDQ_PRI_1_RESP GENMASK(13,12), CMDQ_SYNC_0_CS GENMASK(13,12).

    #[test]
    fn opcodes_match_linux() {
        // CMDQ_OP_* in arm-smmu-v3.h.
        assert_eq!(Command::prefetch_config(StreamId(0)).opcode(), 0x1);
        assert_eq!(Command::cfgi_ste(StreamId(0), true).opcode(), 0x3);
        assert_eq!(Command::cfgi_all().opcode(), 0x4);
        assert_eq!(Command::cfgi_cd(StreamId(0), 0, true).unwrap().opcode(), 0x5);
        assert_eq!(Command::cfgi_cd_all(StreamId(0)).opcode(), 0x6);
        assert_eq!(Command::tlbi_nh_all().opcode(), 0x10);
        assert_eq!(Command::tlbi_nh_asid(0, 0).opcode(), 0x11);
        assert_eq!(Command::tlbi_nh_va(0, 0, 0, false).opcode(), 0x12);
        assert_eq!(Command::tlbi_el2_all().opcode(), 0x20);
        assert_eq!(Command::tlbi_s12_vmall(0).opcode(), 0x28);
        assert_eq!(Command::tlbi_s2_ipa(0, 0, false).opcode(), 0x2a);
        assert_eq!(Command::tlbi_nsnh_all().opcode(), 0x30);
        assert_eq!(
            Command::pri_resp(StreamId(0), None, 0, PriResponse::Deny).unwrap().opcode(),
            0x41
        );
        assert_eq!(Command::sync(SyncSignal::None).opcode(), 0x46);
    }

    #[test]
    fn cfgi_fields() {
        assert_eq!(Command::cfgi_ste(StreamId(0x0008), true).0, [0x0000_0008_0000_0003, 1]);
        assert_eq!(Command::cfgi_all().0, [0x04, 0x1f]);
        assert_eq!(
            Command::cfgi_ste_range(StreamId(0x100), 7).unwrap().0,
            [0x0000_0100_0000_0004, 7]
        );
        assert!(Command::cfgi_ste_range(StreamId(0), 32).is_err());
        assert_eq!(
            Command::cfgi_cd(StreamId(0x10), 0xabcde, false).unwrap().0,
            [0x0000_0010_abcd_e005, 0]
        );
        assert!(Command::cfgi_cd(StreamId(0), 1 << 20, false).is_err());
    }

    #[test]
    fn tlbi_fields() {
        let c = Command::tlbi_nh_va(0x1234, 0x0056, 0xdead_beef_f123, true);
        assert_eq!(c.0, [0x1234_0056_0000_0012, 0xdead_beef_f000 | 1]);
        assert_eq!(Command::tlbi_nh_asid(0xffff, 0).0, [0xffff_0000_0000_0011, 0]);
        let c = Command::tlbi_s2_ipa(7, 0xfff0_0000_2000_0fff, false);
        assert_eq!(c.0, [0x0000_0007_0000_002a, 0x0000_0000_2000_0000]);
        assert_eq!(Command::tlbi_s12_vmall(0x8001).0, [0x0000_8001_0000_0028, 0]);
        assert_eq!(Command::tlbi_nh_all_vmid(0x8001).0, [0x0000_8001_0000_0010, 0]);
    }

    #[test]
    fn range_tlbi_fields() {
        // CMDQ_TLBI_0_NUM GENMASK(16,12), CMDQ_TLBI_0_SCALE GENMASK(24,20),
        // CMDQ_TLBI_1_TG GENMASK(11,10), CMDQ_TLBI_1_TTL GENMASK(9,8).
        let c = Command::tlbi_range(opcode::TLBI_NH_VA, 0x42, 3, 0x2000_0000, false, 9, 0).unwrap();
        assert_eq!(c.0, [0x0042_0003_0090_0012, 0x2000_0400]);
        let c = Command::tlbi_range(opcode::TLBI_S2_IPA, 0x42, 3, 0x1000, true, 0, 31).unwrap();
        assert_eq!(c.0, [0x0000_0003_0001_f02a, 0x1401]);
        assert!(Command::tlbi_range(opcode::TLBI_NH_ASID, 0, 0, 0, false, 0, 0).is_err());
        assert!(Command::tlbi_range(opcode::TLBI_NH_VA, 0, 0, 0, false, 32, 0).is_err());
    }

    #[test]
    fn pri_resp_and_sync_fields() {
        let c = Command::pri_resp(StreamId(0x42), Some(5), 0x1ff, PriResponse::Success).unwrap();
        assert_eq!(c.0, [0x0000_0042_0000_5841, 0x21ff]);
        let c = Command::pri_resp(StreamId(0x42), None, 3, PriResponse::Fail).unwrap();
        assert_eq!(c.0, [0x0000_0042_0000_0041, 0x1003]);
        assert!(Command::pri_resp(StreamId(0), None, 0x200, PriResponse::Deny).is_err());
        assert_eq!(Command::sync(SyncSignal::None).0, [0x46, 0]);
        assert_eq!(Command::sync(SyncSignal::Irq).0, [0x1046, 0]);
        assert_eq!(Command::sync(SyncSignal::Sev).0, [0x2046, 0]);
    }

    #[test]
    fn error_codes() {
        assert_eq!(CommandErrorKind::from_code(1), CommandErrorKind::Illegal);
        assert_eq!(CommandErrorKind::from_code(2), CommandErrorKind::Abort);
        assert_eq!(CommandErrorKind::from_code(3), CommandErrorKind::AtcInvalidationSync);
        assert_eq!(CommandErrorKind::from_code(0x7f), CommandErrorKind::Other(0x7f));
        assert_eq!(opcode_name(0x46), "CMD_SYNC");
        assert_eq!(opcode_name(0x7f), "unknown");
    }
}
