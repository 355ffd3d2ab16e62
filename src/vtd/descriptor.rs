//! Invalidation-queue descriptors (VT-d spec §6.5.2).
//!
//! Every descriptor is built here from typed arguments; nothing else in the driver assembles
//! descriptor bits. A [`Descriptor`] is four quadwords: 128-bit queues use the first two, and a
//! descriptor whose type exists only in scalable mode (PASID-based invalidations, page group
//! responses) needs a 256-bit queue ([`Descriptor::needs_wide_queue`]).
//!
//! Common layout (§6.5.2): type bits 3:0 in bits 3:0 and type bits 6:4 in bits 11:9 of the first
//! quadword; every type this driver builds fits the low four bits, so bits 11:9 stay zero.

use crate::addr::{PhysAddr, RequesterId};
use crate::error::{Error, Result};

use super::regs::{Capability, ExtendedCapability};

/// Descriptor type codes (§6.5.2, Linux `QI_*_TYPE`).
#[allow(missing_docs, reason = "type names from the specification")]
pub mod kind {
    pub const CONTEXT_CACHE: u8 = 0x1;
    pub const IOTLB: u8 = 0x2;
    pub const DEVICE_TLB: u8 = 0x3;
    pub const INTERRUPT_ENTRY_CACHE: u8 = 0x4;
    pub const WAIT: u8 = 0x5;
    pub const PASID_IOTLB: u8 = 0x6;
    pub const PASID_CACHE: u8 = 0x7;
    pub const PASID_DEVICE_TLB: u8 = 0x8;
    pub const PAGE_GROUP_RESPONSE: u8 = 0x9;
}

/// Largest address mask a device-TLB or page-selective invalidation can express: a 64-bit
/// address space in 4 KiB pages.
const MAX_ORDER: u8 = 52;

/// One invalidation descriptor, as the queue stores it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Descriptor([u64; 4]);

impl Descriptor {
    /// A descriptor from raw quadwords, unchecked. Meant for hardware tests that need a
    /// malformed descriptor; the builders below are the way to make correct ones.
    pub const fn from_raw(words: [u64; 4]) -> Self {
        Self(words)
    }

    /// The four quadwords (the last two are zero for 128-bit descriptors).
    pub const fn words(&self) -> [u64; 4] {
        self.0
    }

    /// The descriptor type (bits 3:0 and 11:9 of the first quadword).
    pub const fn kind(&self) -> u8 {
        // CAST: 4 + 3 bits.
        ((self.0[0] & 0xf) | ((self.0[0] >> 9) & 0x7) << 4) as u8
    }

    /// Whether the descriptor needs a 256-bit queue (IQA.DW=1): the scalable-mode types (§6.5.2:
    /// PASID-based IOTLB, PASID-cache, PASID-based device-TLB and page group response are 256-bit
    /// descriptors; QEMU rejects a PASID-based IOTLB descriptor in a 128-bit queue), and any
    /// descriptor carrying data in its upper half.
    pub const fn needs_wide_queue(&self) -> bool {
        self.kind() >= kind::PASID_IOTLB || self.0[2] != 0 || self.0[3] != 0
    }

    const fn new(kind: u8, qw0: u64, qw1: u64) -> Self {
        Self([kind as u64 | qw0, qw1, 0, 0])
    }
}

/// Draining of a whole-IOTLB or domain/page IOTLB invalidation (§6.5.2.3 DR, DW): whether pending
/// DMA reads/writes are drained before completion is reported.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Drain {
    /// DR: drain reads.
    pub reads: bool,
    /// DW: drain writes.
    pub writes: bool,
}

impl Drain {
    /// Drain whatever the unit can drain (CAP.DRD, CAP.DWD), as Linux does.
    pub const fn supported(cap: Capability) -> Self {
        Self { reads: cap.drd(), writes: cap.dwd() }
    }

    const fn bits(self) -> u64 {
        (self.reads as u64) << 7 | (self.writes as u64) << 6
    }
}

/// Context-cache invalidation granularity (§6.5.2.1, G bits 5:4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ContextCacheScope {
    /// Every context entry (G=1).
    Global,
    /// The entries tagged with a domain ID (G=2).
    Domain(u16),
    /// One device's entry (G=3): the domain ID it was tagged with, its source ID and the
    /// function mask (FM, 0..=3: how many low function bits to ignore).
    Device {
        /// Domain ID the entry carried.
        did: u16,
        /// Source ID.
        sid: RequesterId,
        /// Function mask, 0..=3.
        function_mask: u8,
    },
}

/// A context-cache invalidation (§6.5.2.1). Fails if a function mask exceeds 3.
pub fn context_cache(scope: ContextCacheScope) -> Result<Descriptor> {
    let qw0 = match scope {
        ContextCacheScope::Global => 1 << 4,
        ContextCacheScope::Domain(did) => 2 << 4 | u64::from(did) << 16,
        ContextCacheScope::Device { did, sid, function_mask } => {
            if function_mask > 3 {
                return Err(Error::InvalidField {
                    what: "VT-d context-cache FM",
                    value: u64::from(function_mask),
                });
            }
            3 << 4 | u64::from(did) << 16 | u64::from(sid.0) << 32 | u64::from(function_mask) << 48
        }
    };
    Ok(Descriptor::new(kind::CONTEXT_CACHE, qw0, 0))
}

/// Checks a page-selective range: `am` within CAP.MAMV and `addr` aligned to `4 KiB << am`.
fn page_range(addr: u64, am: u8, cap: Capability, what: &'static str) -> Result<()> {
    if !cap.psi() {
        return Err(Error::Hardware {
            what: "VT-d CAP.PSI (no page-selective invalidation)",
            value: cap.0,
        });
    }
    if am > cap.mamv() {
        return Err(Error::InvalidField { what, value: u64::from(am) });
    }
    let align = 0x1000u64 << am;
    if addr & (align - 1) != 0 {
        return Err(Error::Misaligned { what, value: addr, align });
    }
    Ok(())
}

/// A global IOTLB invalidation (§6.5.2.3, G=1).
pub const fn iotlb_global(drain: Drain) -> Descriptor {
    Descriptor::new(kind::IOTLB, 1 << 4 | drain.bits(), 0)
}

/// A domain-selective IOTLB invalidation (§6.5.2.3, G=2).
pub const fn iotlb_domain(did: u16, drain: Drain) -> Descriptor {
    Descriptor::new(kind::IOTLB, 2 << 4 | drain.bits() | (did as u64) << 16, 0)
}

/// A page-selective IOTLB invalidation (§6.5.2.3, G=3) of `2^am` pages at `addr` (aligned to
/// their size, `am <= CAP.MAMV`); `leaf_only` sets IH (only leaf entries changed, the
/// paging-structure caches may be kept).
pub fn iotlb_page(
    did: u16,
    addr: u64,
    am: u8,
    leaf_only: bool,
    drain: Drain,
    cap: Capability,
) -> Result<Descriptor> {
    page_range(addr, am, cap, "VT-d IOTLB page-selective address/AM")?;
    let qw1 = addr | u64::from(leaf_only) << 6 | u64::from(am);
    Ok(Descriptor::new(kind::IOTLB, 3 << 4 | drain.bits() | u64::from(did) << 16, qw1))
}

/// The address field of a device-TLB invalidation of `2^order` pages at `addr` (PCIe ATS
/// §10.3.2 size encoding, VT-d §6.5.2.5): S=0 for one page, otherwise S=1 with the bits below
/// the size's top bit set.
fn ats_range(addr: u64, order: u8) -> Result<u64> {
    if order > MAX_ORDER {
        return Err(Error::InvalidField {
            what: "VT-d device-TLB size order",
            value: u64::from(order),
        });
    }
    if order == MAX_ORDER {
        // Everything: address all-ones below bit 63 (Linux passes addr 0, mask 52).
        return Ok((u64::MAX >> 1) & !0xfff | 1);
    }
    let align = 0x1000u64 << order;
    if addr & (align - 1) != 0 {
        return Err(Error::Misaligned { what: "VT-d device-TLB address", value: addr, align });
    }
    if order == 0 {
        return Ok(addr);
    }
    Ok((addr | ((1u64 << (12 + order - 1)) - 1)) & !0xfff | 1)
}

/// PFSID bits (the physical function's source ID, for VFs; §6.5.2.5): bits 15:12 and 63:52.
const fn pfsid_bits(pfsid: RequesterId) -> u64 {
    ((pfsid.0 as u64) & 0xf) << 12 | ((pfsid.0 as u64) >> 4) << 52
}

/// A device-TLB invalidation (§6.5.2.5) for the function at `sid` (`pfsid`: its PF's source ID,
/// or its own), with `max_pending` its ATS Invalidate Queue Depth (0..=31), of `2^order` pages at
/// `addr` (order 52: everything).
pub fn device_tlb(
    sid: RequesterId,
    pfsid: RequesterId,
    max_pending: u8,
    addr: u64,
    order: u8,
) -> Result<Descriptor> {
    if max_pending > 0x1f {
        return Err(Error::InvalidField {
            what: "VT-d device-TLB MIP",
            value: u64::from(max_pending),
        });
    }
    let qw1 = ats_range(addr, order)?;
    let qw0 = pfsid_bits(pfsid) | u64::from(max_pending) << 16 | u64::from(sid.0) << 32;
    Ok(Descriptor::new(kind::DEVICE_TLB, qw0, qw1))
}

/// A global interrupt-entry-cache invalidation (§6.5.2.6, G=0).
pub const fn iec_global() -> Descriptor {
    Descriptor::new(kind::INTERRUPT_ENTRY_CACHE, 0, 0)
}

/// An index-selective interrupt-entry-cache invalidation (§6.5.2.6, G=1) of `2^mask` entries
/// from `index` (aligned; `mask <= ECAP.MHMV`).
pub fn iec_index(index: u16, mask: u8, ecap: ExtendedCapability) -> Result<Descriptor> {
    if mask > ecap.mhmv() {
        return Err(Error::InvalidField { what: "VT-d IEC index mask", value: u64::from(mask) });
    }
    if u32::from(index) & ((1u32 << mask) - 1) != 0 {
        return Err(Error::Misaligned {
            what: "VT-d IEC index",
            value: u64::from(index),
            align: 1 << mask,
        });
    }
    Ok(Descriptor::new(
        kind::INTERRUPT_ENTRY_CACHE,
        1 << 4 | u64::from(mask) << 27 | u64::from(index) << 32,
        0,
    ))
}

/// How a wait descriptor reports completion (§6.5.2.8). Exactly one of the two: a wait with both
/// SW and IF aborts QEMU 10.0.2, and one with neither is an invalid descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WaitCompletion {
    /// SW: write `data` (32 bits) to `address` (4-byte aligned).
    StatusWrite {
        /// Where the status goes.
        address: PhysAddr,
        /// What is written.
        data: u32,
    },
    /// IF: set ICS.IWC and raise the invalidation completion event.
    Interrupt,
}

/// An invalidation wait descriptor (§6.5.2.8). `fence` (FN) holds later descriptors until this
/// one completes.
pub fn wait(completion: WaitCompletion, fence: bool) -> Result<Descriptor> {
    let fence = u64::from(fence) << 6;
    match completion {
        WaitCompletion::StatusWrite { address, data } => {
            if address.0 & 3 != 0 {
                return Err(Error::Misaligned {
                    what: "VT-d wait status address",
                    value: address.0,
                    align: 4,
                });
            }
            Ok(Descriptor::new(kind::WAIT, 1 << 5 | fence | u64::from(data) << 32, address.0))
        }
        WaitCompletion::Interrupt => Ok(Descriptor::new(kind::WAIT, 1 << 4 | fence, 0)),
    }
}

/// A wait descriptor that also drains page requests (PD, §6.5.2.8): only where ECAP.PDS reports
/// the capability (on QEMU 10.0.2, which has no PDS, PD is an invalid-descriptor error).
pub fn wait_page_drain(
    completion: WaitCompletion,
    fence: bool,
    ecap: ExtendedCapability,
) -> Result<Descriptor> {
    if !ecap.pds() {
        return Err(Error::Hardware {
            what: "VT-d ECAP.PDS (no page-request drain)",
            value: ecap.0,
        });
    }
    let d = wait(completion, fence)?.words();
    Ok(Descriptor([d[0] | 1 << 7, d[1], 0, 0]))
}

/// A PASID-based IOTLB invalidation of everything tagged with (`did`, `pasid`) (§6.5.2.4,
/// G=2, non-globals for one PASID).
pub const fn pasid_iotlb_all(did: u16, pasid: crate::addr::Pasid) -> Descriptor {
    Descriptor::new(kind::PASID_IOTLB, 2 << 4 | (did as u64) << 16 | (pasid.get() as u64) << 32, 0)
}

/// A page-selective PASID-based IOTLB invalidation (§6.5.2.4, G=3) of `2^am` pages at `addr`.
pub fn pasid_iotlb_page(
    did: u16,
    pasid: crate::addr::Pasid,
    addr: u64,
    am: u8,
    leaf_only: bool,
    cap: Capability,
) -> Result<Descriptor> {
    page_range(addr, am, cap, "VT-d PASID-IOTLB page-selective address/AM")?;
    let qw0 = 3 << 4 | u64::from(did) << 16 | u64::from(pasid.get()) << 32;
    Ok(Descriptor::new(kind::PASID_IOTLB, qw0, addr | u64::from(leaf_only) << 6 | u64::from(am)))
}

/// PASID-cache invalidation granularity (§6.5.2.2, G bits 5:4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PasidCacheScope {
    /// Every PASID entry tagged with the domain (G=0).
    Domain(u16),
    /// One PASID's entry within the domain (G=1).
    Pasid(u16, crate::addr::Pasid),
    /// Every PASID entry (G=3).
    Global,
}

/// A PASID-cache invalidation (§6.5.2.2). QEMU 10.0.2 accepts it as a no-op.
pub const fn pasid_cache(scope: PasidCacheScope) -> Descriptor {
    let qw0 = match scope {
        PasidCacheScope::Domain(did) => (did as u64) << 16,
        PasidCacheScope::Pasid(did, pasid) => {
            1 << 4 | (did as u64) << 16 | (pasid.get() as u64) << 32
        }
        PasidCacheScope::Global => 3 << 4,
    };
    Descriptor::new(kind::PASID_CACHE, qw0, 0)
}

/// A PASID-based device-TLB invalidation (§6.5.2.6) for `pasid` at the function `sid`
/// (`pfsid`, `max_pending` as for [`device_tlb`]) of `2^order` pages at `addr`; `global` (G)
/// also invalidates global translations of every PASID.
pub fn pasid_device_tlb(
    sid: RequesterId,
    pfsid: RequesterId,
    max_pending: u8,
    pasid: crate::addr::Pasid,
    addr: u64,
    order: u8,
    global: bool,
) -> Result<Descriptor> {
    if max_pending > 0x1f {
        return Err(Error::InvalidField {
            what: "VT-d PASID device-TLB MIP",
            value: u64::from(max_pending),
        });
    }
    let range = ats_range(addr, order)?;
    // Here the size bit S is bit 11, not bit 0 (Linux `QI_DEV_EIOTLB_SIZE`).
    let qw1 = (range & !0xfff) | (range & 1) << 11 | u64::from(global);
    let qw0 = u64::from(max_pending) << 4
        | pfsid_bits(pfsid)
        | u64::from(sid.0) << 16
        | u64::from(pasid.get()) << 32;
    Ok(Descriptor::new(kind::PASID_DEVICE_TLB, qw0, qw1))
}

/// A page group response code (§6.5.2.7 / PCIe PRG Response).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum ResponseCode {
    /// The pages are mapped; retry the translation.
    Success = 0x0,
    /// The request is invalid; the device treats it as an error.
    InvalidRequest = 0x1,
    /// A catastrophic failure; the device disables PRI.
    ResponseFailure = 0xf,
}

/// A page group response (§6.5.2.7, type 0x9) to the function `rid` for page request group
/// `prg_index` (9 bits), with the PASID of the request if it had one and its private data if
/// it carried some (PDP, which puts the data in the upper quadwords). Bit 66 (LPIG before
/// spec 4.0) is reserved and stays clear.
pub fn page_group_response(
    rid: RequesterId,
    pasid: Option<crate::addr::Pasid>,
    prg_index: u16,
    code: ResponseCode,
    private_data: Option<[u64; 2]>,
) -> Result<Descriptor> {
    if prg_index > 0x1ff {
        return Err(Error::InvalidField {
            what: "VT-d page group response PRG index",
            value: u64::from(prg_index),
        });
    }
    let (pp, pasid) = match pasid {
        Some(p) => (1u64, u64::from(p.get())),
        None => (0, 0),
    };
    let qw0 = u64::from(kind::PAGE_GROUP_RESPONSE)
        | pp << 4
        | u64::from(private_data.is_some()) << 5
        | u64::from(code as u8) << 12
        | u64::from(rid.0) << 16
        | pasid << 32;
    let [qw2, qw3] = private_data.unwrap_or([0, 0]);
    Ok(Descriptor([qw0, u64::from(prg_index) << 3, qw2, qw3]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Pasid;

    // Independent encodings, from Linux drivers/iommu/intel/iommu.h and the VT-d spec §6.5.2
    // figures, written out here as Linux spells them (never derived from the builders above).
    const QI_CC_TYPE: u64 = 0x1;
    const QI_IOTLB_TYPE: u64 = 0x2;
    const QI_DIOTLB_TYPE: u64 = 0x3;
    const QI_IEC_TYPE: u64 = 0x4;
    const QI_IWD_TYPE: u64 = 0x5;
    const QI_EIOTLB_TYPE: u64 = 0x6;
    const QI_PC_TYPE: u64 = 0x7;
    const QI_DEIOTLB_TYPE: u64 = 0x8;
    const QI_PGRP_RESP_TYPE: u64 = 0x9;
    const DMA_TLB_FLUSH_GRANU_OFFSET: u32 = 60;
    const DMA_TLB_GLOBAL_FLUSH: u64 = 1 << 60;
    const DMA_TLB_DSI_FLUSH: u64 = 2 << 60;
    const DMA_TLB_PSI_FLUSH: u64 = 3 << 60;
    const DMA_CCMD_INVL_GRANU_OFFSET: u32 = 61;
    const DMA_CCMD_GLOBAL_INVL: u64 = 1 << 61;
    const DMA_CCMD_DOMAIN_INVL: u64 = 2 << 61;
    const DMA_CCMD_DEVICE_INVL: u64 = 3 << 61;
    const fn qi_iotlb_gran(g: u64) -> u64 {
        g >> (DMA_TLB_FLUSH_GRANU_OFFSET - 4)
    }
    const fn qi_cc_gran(g: u64) -> u64 {
        g >> (DMA_CCMD_INVL_GRANU_OFFSET - 4)
    }
    const fn qi_iotlb_did(d: u64) -> u64 {
        d << 16
    }
    const fn qi_iotlb_dr(d: u64) -> u64 {
        d << 7
    }
    const fn qi_iotlb_dw(d: u64) -> u64 {
        d << 6
    }
    const fn qi_iotlb_ih(i: u64) -> u64 {
        i << 6
    }
    const fn qi_iotlb_am(a: u64) -> u64 {
        a & 0x3f
    }
    const fn qi_cc_fm(f: u64) -> u64 {
        f << 48
    }
    const fn qi_cc_sid(s: u64) -> u64 {
        s << 32
    }
    const fn qi_cc_did(d: u64) -> u64 {
        d << 16
    }
    const fn qi_iwd_status_data(d: u64) -> u64 {
        d << 32
    }
    const QI_IWD_STATUS_WRITE: u64 = 1 << 5;
    const QI_IWD_INTERRUPT: u64 = 1 << 4; // IF, spec Figure 6-x "Invalidation Wait Descriptor"
    const QI_IWD_FENCE: u64 = 1 << 6;
    const QI_IWD_PRQ_DRAIN: u64 = 1 << 7;
    const fn qi_dev_iotlb_sid(s: u64) -> u64 {
        (s & 0xffff) << 32
    }
    const fn qi_dev_iotlb_qdep(q: u64) -> u64 {
        (q & 0x1f) << 16
    }
    const fn qi_dev_iotlb_pfsid(p: u64) -> u64 {
        ((p & 0xf) << 12) | (((p >> 4) & 0xfff) << 52)
    }
    const QI_DEV_IOTLB_SIZE: u64 = 1;
    const QI_IEC_SELECTIVE: u64 = 1 << 4;
    const fn qi_iec_iidex(i: u64) -> u64 {
        (i & 0xffff) << 32
    }
    const fn qi_iec_im(m: u64) -> u64 {
        (m & 0x1f) << 27
    }
    const fn qi_eiotlb_pasid(p: u64) -> u64 {
        p << 32
    }
    const fn qi_eiotlb_did(d: u64) -> u64 {
        d << 16
    }
    const fn qi_eiotlb_gran(g: u64) -> u64 {
        g << 4
    }
    const fn qi_eiotlb_ih(i: u64) -> u64 {
        i << 6
    }
    const QI_GRAN_NONG_PASID: u64 = 2;
    const QI_GRAN_PSI_PASID: u64 = 3;
    const fn qi_pc_pasid(p: u64) -> u64 {
        p << 32
    }
    const fn qi_pc_did(d: u64) -> u64 {
        d << 16
    }
    const fn qi_pc_gran(g: u64) -> u64 {
        g << 4
    }
    const QI_PC_ALL_PASIDS: u64 = 0;
    const QI_PC_PASID_SEL: u64 = 1;
    const QI_PC_GLOBAL: u64 = 3;
    const QI_DEV_EIOTLB_SIZE: u64 = 1 << 11;
    const fn qi_dev_eiotlb_pasid(p: u64) -> u64 {
        (p & 0xfffff) << 32
    }
    const fn qi_dev_eiotlb_sid(s: u64) -> u64 {
        (s & 0xffff) << 16
    }
    const fn qi_dev_eiotlb_qdep(q: u64) -> u64 {
        (q & 0x1f) << 4
    }
    const fn qi_dev_eiotlb_glob(g: u64) -> u64 {
        g
    }
    const fn qi_pgrp_pasid_p(p: u64) -> u64 {
        p << 4
    }
    const fn qi_pgrp_pdp(p: u64) -> u64 {
        p << 5
    }
    const fn qi_pgrp_resp_code(r: u64) -> u64 {
        r << 12
    }
    const fn qi_pgrp_did(rid: u64) -> u64 {
        rid << 16
    }
    const fn qi_pgrp_pasid(p: u64) -> u64 {
        p << 32
    }
    const fn qi_pgrp_idx(i: u64) -> u64 {
        i << 3
    }
    const QI_RESP_INVALID: u64 = 0x1;

    /// QEMU's CAP: PSI, MAMV 18, DRD, DWD.
    const CAP: Capability = Capability(0x00d2_008c_222f_0606);

    fn w(d: Descriptor) -> [u64; 4] {
        d.words()
    }

    #[test]
    fn context_cache_encodings() {
        assert_eq!(
            w(context_cache(ContextCacheScope::Global).unwrap()),
            [QI_CC_TYPE | qi_cc_gran(DMA_CCMD_GLOBAL_INVL), 0, 0, 0]
        );
        assert_eq!(qi_cc_gran(DMA_CCMD_GLOBAL_INVL), 0x10);
        assert_eq!(
            w(context_cache(ContextCacheScope::Domain(42)).unwrap())[0],
            QI_CC_TYPE | qi_cc_gran(DMA_CCMD_DOMAIN_INVL) | qi_cc_did(42)
        );
        let d = context_cache(ContextCacheScope::Device {
            did: 7,
            sid: RequesterId(0x0310),
            function_mask: 2,
        })
        .unwrap();
        assert_eq!(
            w(d)[0],
            QI_CC_TYPE
                | qi_cc_gran(DMA_CCMD_DEVICE_INVL)
                | qi_cc_did(7)
                | qi_cc_sid(0x0310)
                | qi_cc_fm(2)
        );
        assert!(
            context_cache(ContextCacheScope::Device {
                did: 7,
                sid: RequesterId(0),
                function_mask: 4
            })
            .is_err()
        );
    }

    #[test]
    fn iotlb_encodings() {
        let drain = Drain::supported(CAP);
        assert_eq!(
            w(iotlb_global(drain))[0],
            QI_IOTLB_TYPE | qi_iotlb_gran(DMA_TLB_GLOBAL_FLUSH) | qi_iotlb_dr(1) | qi_iotlb_dw(1)
        );
        assert_eq!(
            w(iotlb_domain(0xabcd, Drain::default())),
            [QI_IOTLB_TYPE | qi_iotlb_gran(DMA_TLB_DSI_FLUSH) | qi_iotlb_did(0xabcd), 0, 0, 0]
        );
        let d = iotlb_page(3, 0x20_0000, 9, true, Drain::default(), CAP).unwrap();
        assert_eq!(
            w(d),
            [
                QI_IOTLB_TYPE | qi_iotlb_gran(DMA_TLB_PSI_FLUSH) | qi_iotlb_did(3),
                0x20_0000 | qi_iotlb_ih(1) | qi_iotlb_am(9),
                0,
                0
            ]
        );
        assert_eq!(qi_iotlb_gran(DMA_TLB_PSI_FLUSH), 0x30);
        // AM above MAMV, an address not aligned to the range, and a unit without PSI.
        assert!(iotlb_page(3, 0, 19, false, Drain::default(), CAP).is_err());
        assert!(matches!(
            iotlb_page(3, 0x1000, 1, false, Drain::default(), CAP),
            Err(Error::Misaligned { align: 0x2000, .. })
        ));
        assert!(
            iotlb_page(3, 0, 0, false, Drain::default(), Capability(CAP.0 & !(1 << 39))).is_err()
        );
    }

    #[test]
    fn device_tlb_encodings() {
        // One page.
        let d = device_tlb(RequesterId(0x0108), RequesterId(0x0100), 4, 0x5000, 0).unwrap();
        assert_eq!(
            w(d),
            [
                QI_DIOTLB_TYPE
                    | qi_dev_iotlb_sid(0x0108)
                    | qi_dev_iotlb_qdep(4)
                    | qi_dev_iotlb_pfsid(0x0100),
                0x5000,
                0,
                0
            ]
        );
        // 16 pages at 0x10000: Linux `addr |= (1 << (12 + mask - 1)) - 1` with mask 4.
        let d = device_tlb(RequesterId(0x0108), RequesterId(0x0123), 0, 0x10000, 4).unwrap();
        assert_eq!(w(d)[1], 0x17000 | QI_DEV_IOTLB_SIZE);
        assert_eq!(w(d)[0] & (0xf << 12 | 0xfff << 52), qi_dev_iotlb_pfsid(0x0123));
        // Everything: Linux flushes with addr 0, mask MAX_AGAW_PFN_WIDTH (52).
        assert_eq!(
            w(device_tlb(RequesterId(1), RequesterId(1), 0, 0, 52).unwrap())[1],
            0x7fff_ffff_ffff_f000 | QI_DEV_IOTLB_SIZE
        );
        assert!(device_tlb(RequesterId(1), RequesterId(1), 32, 0, 0).is_err());
    }

    #[test]
    fn iec_and_wait_encodings() {
        assert_eq!(w(iec_global()), [QI_IEC_TYPE, 0, 0, 0]);
        let ecap = ExtendedCapability(0x0000_0000_00f0_0f4a);
        assert_eq!(
            w(iec_index(0x40, 4, ecap).unwrap())[0],
            QI_IEC_TYPE | QI_IEC_SELECTIVE | qi_iec_iidex(0x40) | qi_iec_im(4)
        );
        assert!(iec_index(0x41, 4, ecap).is_err());
        let d = wait(
            WaitCompletion::StatusWrite { address: PhysAddr(0x1234_5678), data: 0xcafe },
            true,
        )
        .unwrap();
        assert_eq!(
            w(d),
            [
                QI_IWD_TYPE | QI_IWD_STATUS_WRITE | QI_IWD_FENCE | qi_iwd_status_data(0xcafe),
                0x1234_5678,
                0,
                0
            ]
        );
        assert_eq!(
            w(wait(WaitCompletion::Interrupt, false).unwrap()),
            [QI_IWD_TYPE | QI_IWD_INTERRUPT, 0, 0, 0]
        );
        assert!(
            wait(WaitCompletion::StatusWrite { address: PhysAddr(0x1002), data: 1 }, false)
                .is_err()
        );
        // PD only with ECAP.PDS (bit 42); QEMU has none.
        assert!(wait_page_drain(WaitCompletion::Interrupt, false, ecap).is_err());
        let pds = ExtendedCapability(ecap.0 | 1 << 42);
        assert_eq!(
            w(wait_page_drain(WaitCompletion::Interrupt, false, pds).unwrap())[0],
            QI_IWD_TYPE | QI_IWD_INTERRUPT | QI_IWD_PRQ_DRAIN
        );
    }

    #[test]
    fn pasid_encodings() {
        let p = Pasid::new(0x12345).unwrap();
        let d = pasid_iotlb_all(9, p);
        assert_eq!(
            w(d),
            [
                QI_EIOTLB_TYPE
                    | qi_eiotlb_gran(QI_GRAN_NONG_PASID)
                    | qi_eiotlb_did(9)
                    | qi_eiotlb_pasid(0x12345),
                0,
                0,
                0
            ]
        );
        assert!(d.needs_wide_queue());
        let d = pasid_iotlb_page(9, p, 0x4000, 2, true, CAP).unwrap();
        assert_eq!(
            w(d),
            [
                QI_EIOTLB_TYPE
                    | qi_eiotlb_gran(QI_GRAN_PSI_PASID)
                    | qi_eiotlb_did(9)
                    | qi_eiotlb_pasid(0x12345),
                0x4000 | qi_eiotlb_ih(1) | 2,
                0,
                0
            ]
        );
        assert_eq!(
            w(pasid_cache(PasidCacheScope::Domain(5)))[0],
            QI_PC_TYPE | qi_pc_gran(QI_PC_ALL_PASIDS) | qi_pc_did(5)
        );
        assert_eq!(
            w(pasid_cache(PasidCacheScope::Pasid(5, p)))[0],
            QI_PC_TYPE | qi_pc_gran(QI_PC_PASID_SEL) | qi_pc_did(5) | qi_pc_pasid(0x12345)
        );
        assert_eq!(
            w(pasid_cache(PasidCacheScope::Global))[0],
            QI_PC_TYPE | qi_pc_gran(QI_PC_GLOBAL)
        );
        let d = pasid_device_tlb(RequesterId(0x0208), RequesterId(0x0200), 3, p, 0x8000, 1, false)
            .unwrap();
        assert_eq!(
            w(d),
            [
                QI_DEIOTLB_TYPE
                    | qi_dev_eiotlb_qdep(3)
                    | qi_dev_iotlb_pfsid(0x0200)
                    | qi_dev_eiotlb_sid(0x0208)
                    | qi_dev_eiotlb_pasid(0x12345),
                0x8000 | QI_DEV_EIOTLB_SIZE | qi_dev_eiotlb_glob(0),
                0,
                0
            ]
        );
        assert_eq!(
            w(pasid_device_tlb(RequesterId(1), RequesterId(1), 0, p, 0x8000, 0, true).unwrap())[1],
            0x8000 | qi_dev_eiotlb_glob(1)
        );
        assert!(!iotlb_global(Drain::default()).needs_wide_queue());
    }

    #[test]
    fn page_group_response_encoding() {
        let p = Pasid::new(0x77).unwrap();
        let d = page_group_response(
            RequesterId(0x0310),
            Some(p),
            0x1a5,
            ResponseCode::InvalidRequest,
            Some([0xaa, 0xbb]),
        )
        .unwrap();
        assert_eq!(
            w(d),
            [
                QI_PGRP_RESP_TYPE
                    | qi_pgrp_pasid_p(1)
                    | qi_pgrp_pdp(1)
                    | qi_pgrp_resp_code(QI_RESP_INVALID)
                    | qi_pgrp_did(0x0310)
                    | qi_pgrp_pasid(0x77),
                qi_pgrp_idx(0x1a5),
                0xaa,
                0xbb
            ]
        );
        assert_eq!(d.kind(), 9);
        let d =
            page_group_response(RequesterId(0x0310), None, 1, ResponseCode::Success, None).unwrap();
        assert_eq!(w(d), [QI_PGRP_RESP_TYPE | qi_pgrp_did(0x0310), qi_pgrp_idx(1), 0, 0]);
        assert!(
            page_group_response(RequesterId(0), None, 0x200, ResponseCode::Success, None).is_err()
        );
    }
}
