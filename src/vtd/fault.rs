//! Fault status and primary fault records (VT-d spec §7.2.1, §11.4.9, §11.4.14).

use crate::addr::RequesterId;

/// FSTS_REG (§11.4.9).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FaultStatus(pub u32);

#[allow(missing_docs, reason = "bit names from the specification")]
impl FaultStatus {
    pub const PFO: u32 = 1 << 0;
    pub const PPF: u32 = 1 << 1;
    pub const AFO: u32 = 1 << 2;
    pub const APF: u32 = 1 << 3;
    pub const IQE: u32 = 1 << 4;
    pub const ICE: u32 = 1 << 5;
    pub const ITE: u32 = 1 << 6;
    /// The bits software clears by writing 1 (everything but PPF and FRI, which follow the
    /// fault recording registers).
    pub const RW1C: u32 = Self::PFO | Self::AFO | Self::APF | Self::IQE | Self::ICE | Self::ITE;

    /// Primary fault overflow: a fault arrived while every recording register was full.
    pub const fn overflow(self) -> bool {
        self.0 & Self::PFO != 0
    }
    /// Primary pending fault: at least one recording register holds a fault.
    pub const fn pending(self) -> bool {
        self.0 & Self::PPF != 0
    }
    /// Invalidation queue error.
    pub const fn iqe(self) -> bool {
        self.0 & Self::IQE != 0
    }
    /// Invalidation completion error.
    pub const fn ice(self) -> bool {
        self.0 & Self::ICE != 0
    }
    /// Invalidation time-out error.
    pub const fn ite(self) -> bool {
        self.0 & Self::ITE != 0
    }
    /// Fault record index: where hardware looks for the next free recording register.
    pub const fn fault_record_index(self) -> u8 {
        // CAST: an 8-bit field.
        (self.0 >> 8) as u8
    }
}

/// One primary fault record (128 bits, §11.4.14), decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FaultRecord {
    /// The requester ID of the faulting request (bits 79:64).
    pub source_id: RequesterId,
    /// Fault reason (bits 103:96), see [`reason_text`].
    pub reason: u8,
    /// The page of the faulting address (bits 63:12).
    pub address: u64,
    /// Type (bit 126): true for a read request, false for a write (legacy and second-stage
    /// requests; first-stage records combine it with T2).
    pub read: bool,
    /// PASID value (bits 123:104), meaningful when `pasid_present`.
    pub pasid: u32,
    /// PASID present (bit 95).
    pub pasid_present: bool,
    /// Execute requested (bit 94).
    pub execute: bool,
    /// Privileged (supervisor) request (bit 93).
    pub privileged: bool,
}

impl FaultRecord {
    /// Bit 127 (F) of the high half: the record holds a fault.
    pub const FAULT: u64 = 1 << 63;

    /// Decodes a record from its low and high 64-bit halves, or `None` if F is clear.
    pub const fn decode(low: u64, high: u64) -> Option<Self> {
        if high & Self::FAULT == 0 {
            return None;
        }
        Some(Self {
            // CAST: each field is masked to its width first.
            source_id: RequesterId((high & 0xffff) as u16),
            reason: ((high >> 32) & 0xff) as u8,
            address: low & !0xfff,
            read: (high >> 62) & 1 != 0,
            pasid: ((high >> 40) & 0xf_ffff) as u32,
            pasid_present: (high >> 31) & 1 != 0,
            execute: (high >> 30) & 1 != 0,
            privileged: (high >> 29) & 1 != 0,
        })
    }
}

/// What a fault reason code means (VT-d spec Appendix A, "Non-recoverable Fault Reason
/// Codes"; the texts follow Linux's `dma_remap_fault_reasons`, `irq_remap_fault_reasons` and
/// `dma_remap_sm_fault_reasons` in drivers/iommu/intel/dmar.c, where the scalable-mode table
/// starts at 0x30).
pub const fn reason_text(reason: u8) -> &'static str {
    match reason {
        0x00 => "software-reported",
        0x01 => "root entry not present",
        0x02 => "context entry not present",
        0x03 => "context entry invalid",
        0x04 => "address beyond the guest address width",
        0x05 => "write to a page without write permission",
        0x06 => "read from a page without read permission",
        0x07 => "next page-table pointer invalid",
        0x08 => "root table address invalid",
        0x09 => "context table pointer invalid",
        0x0a => "reserved bit set in a root entry",
        0x0b => "reserved bit set in a context entry",
        0x0c => "reserved bit set in a paging entry",
        0x0d => "translation request blocked by the context entry",
        0x20 => "interrupt request with reserved fields",
        0x21 => "interrupt index beyond the remapping table",
        0x22 => "interrupt remapping entry not present",
        0x23 => "interrupt remapping table unreachable",
        0x24 => "reserved bit set in an interrupt remapping entry",
        0x25 => "compatibility-format interrupt blocked",
        0x26 => "interrupt blocked by source-ID verification",
        0x30 => "scalable mode: root table address invalid",
        0x31 => "scalable mode: TTM 0 for a request with PASID",
        0x32 => "scalable mode: TTM 0 for a page group request",
        0x38 => "scalable mode: root entry unreachable",
        0x39 => "scalable mode: root entry not present",
        0x3a => "scalable mode: reserved bit set in a root entry",
        0x40 => "scalable mode: context entry unreachable",
        0x41 => "scalable mode: context entry not present",
        0x42 => "scalable mode: reserved bit set in a context entry",
        0x43 => "scalable mode: context entry invalid",
        0x44 => "scalable mode: DTE clear in the context entry",
        0x45 => "scalable mode: PASID Enable clear in the context entry",
        0x46 => "scalable mode: PASID beyond the context entry's PASID directory size",
        0x47 => "scalable mode: PRE clear in the context entry",
        0x48 => "scalable mode: RID_PASID error in the context entry",
        0x50 => "scalable mode: PASID directory entry unreachable",
        0x51 => "scalable mode: PASID directory entry not present",
        0x52 => "scalable mode: reserved bit set in a PASID directory entry",
        0x58 => "scalable mode: PASID table entry unreachable",
        0x59 => "scalable mode: PASID table entry not present",
        0x5a => "scalable mode: reserved bit set in a PASID table entry",
        0x5b => "scalable mode: PASID table entry invalid",
        0x5c => "scalable mode: ERE clear in the PASID table entry",
        0x5d => "scalable mode: SRE clear in the PASID table entry",
        0x70 => "scalable mode: first-stage paging entry unreachable",
        0x71 => "scalable mode: first-stage paging entry not present",
        0x72 => "scalable mode: reserved bit set in a first-stage paging entry",
        0x73 => "scalable mode: FL-PML4 entry unreachable",
        0x74 => "scalable mode: nested first-stage entry address beyond MGAW",
        0x75 => "scalable mode: nested read permission error in the FL-PML4 entry",
        0x76 => "scalable mode: nested read permission error in a first-stage entry",
        0x77 => "scalable mode: nested write permission error in a first-stage entry",
        0x78 => "scalable mode: second-stage paging entry unreachable",
        0x79 => "scalable mode: read/write permission error in a second-stage entry",
        0x7a => "scalable mode: reserved bit set in a second-stage paging entry",
        0x7b => "scalable mode: second-stage page-table pointer invalid",
        0x7c => "scalable mode: A/D update needed in a second-stage entry set up no-snoop",
        0x80 => "scalable mode: first-stage address not canonical",
        0x81 => "scalable mode: U/S clear for a first-stage user request",
        0x82 => "scalable mode: no execute permission for a request with PASID and ER",
        0x83 => "scalable mode: address beyond the hardware's maximum",
        0x84 => "scalable mode: second-stage entry address beyond the maximum",
        0x85 => "scalable mode: no write permission for a write or atomic request",
        0x86 => "scalable mode: no read permission for a read or atomic request",
        0x87 => "scalable mode: invalid address-interrupt address",
        0x90 => "scalable mode: A/D update needed in a first-stage entry set up no-snoop",
        _ => "unknown fault reason",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layouts checked against Linux's definitions (drivers/iommu/intel/dmar.c `dmar_fault`,
    /// include/linux/dmar.h / iommu.h): the dword at +12 carries F (bit 31), T (bit 30),
    /// PV (bits 27:8) and FR (bits 7:0); the dword at +8 carries PP (bit 31) and SID (15:0).
    fn from_dwords(d0: u32, d1: u32, d2: u32, d3: u32) -> Option<FaultRecord> {
        FaultRecord::decode(u64::from(d0) | u64::from(d1) << 32, u64::from(d2) | u64::from(d3) << 32)
    }

    #[test]
    fn decodes_like_linux() {
        // QEMU's record for edu at 00:02.0 writing to read-only IOVA 0x2347000 (notes §1.4):
        // SID 0x0010, FR 5, T 0.
        let r = from_dwords(0x0234_7000, 0, 0x0000_0010, 0x8000_0005).unwrap();
        assert_eq!(r.source_id, RequesterId(0x0010));
        assert_eq!((r.reason, r.read, r.address), (5, false, 0x234_7000));
        assert!(!r.pasid_present);
        // Scalable mode, RID_PASID 5 (PP=1, PV=5), FR 0x81, a read.
        let r = from_dwords(0x1000, 0, 0x8000_0010, 0x8000_0000 | 1 << 30 | 5 << 8 | 0x81).unwrap();
        assert!(r.pasid_present && r.read);
        assert_eq!((r.pasid, r.reason), (5, 0x81));
        assert_eq!(from_dwords(0xffff_f000, 0, 0x10, 0x0000_0005), None, "F clear");
    }

    #[test]
    fn status_bits() {
        let s = FaultStatus(0x0000_0213);
        assert!(s.overflow() && s.pending() && s.iqe());
        assert_eq!(s.fault_record_index(), 2);
        // Linux dma_remap_sm_fault_reasons[0x5b - 0x30]: "SM: Invalid Scalable-Mode PASID Table
        // Entry" (what QEMU reports for a non-present entry, notes §1.5).
        assert_eq!(reason_text(0x5b), "scalable mode: PASID table entry invalid");
        assert_eq!(reason_text(0x81), "scalable mode: U/S clear for a first-stage user request");
        assert_eq!(reason_text(0x59), "scalable mode: PASID table entry not present");
    }
}
