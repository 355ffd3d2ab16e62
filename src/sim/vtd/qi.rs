//! Queued invalidation (§6.5.2): the queue registers, descriptor decoding with reserved-bit
//! checks, and what each descriptor does to the model's caches.
//!
//! Descriptor layouts follow §6.5.2.1-§6.5.2.9 and Linux's `QI_*` macros
//! (`drivers/iommu/intel/iommu.h`): the type is bits 3:0 with bits 11:9 as type[6:4].

use super::regs::{fsts, gcmd, iqa, iqei};
use super::{Inner, ModelError, TranslationKind};

/// Context-cache invalidation granularity (§6.5.2.1, CCMD.CIRG §11.4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcGranularity {
    /// Encoding 0: reserved.
    Reserved,
    /// Every context entry.
    Global,
    /// The entries of one domain.
    Domain,
    /// One device (source-id under function mask).
    Device,
}

impl CcGranularity {
    pub(super) fn from_bits(v: u64) -> Self {
        match v & 3 {
            1 => Self::Global,
            2 => Self::Domain,
            3 => Self::Device,
            _ => Self::Reserved,
        }
    }
}

/// IOTLB invalidation granularity (§6.5.2.3, IOTLB_REG.IIRG §11.4.8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbGranularity {
    /// Encoding 0: reserved.
    Reserved,
    /// Every entry.
    Global,
    /// One domain.
    Domain,
    /// Pages of one domain (address and mask).
    Page,
}

impl IotlbGranularity {
    pub(super) fn from_bits(v: u64) -> Self {
        match v & 3 {
            1 => Self::Global,
            2 => Self::Domain,
            3 => Self::Page,
            _ => Self::Reserved,
        }
    }
}

/// PASID-based IOTLB invalidation granularity (§6.5.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidIotlbGranularity {
    /// Every mapping of a PASID in a domain (encoding 2).
    Pasid,
    /// Pages of a PASID in a domain (encoding 3).
    Page,
}

/// PASID-cache invalidation granularity (§6.5.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidCacheGranularity {
    /// Every PASID entry of a domain (encoding 0).
    Domain,
    /// One PASID of a domain (encoding 1).
    Pasid,
    /// Every PASID entry (encoding 3).
    Global,
}

/// A decoded invalidation descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// 0x1, or a CCMD register write.
    ContextCache {
        /// Granularity.
        granularity: CcGranularity,
        /// Domain ID.
        did: u16,
        /// Source-id (device-selective).
        sid: u16,
        /// Function mask: the low 0-3 bits of the SID ignored.
        fm: u8,
    },
    /// 0x2, or an IOTLB register write.
    Iotlb {
        /// Granularity.
        granularity: IotlbGranularity,
        /// Domain ID.
        did: u16,
        /// Page address (page-selective).
        address: u64,
        /// Address mask: 2^am pages.
        am: u8,
        /// Invalidation hint (leaf entries only changed).
        ih: bool,
        /// Drain reads.
        drain_reads: bool,
        /// Drain writes.
        drain_writes: bool,
    },
    /// 0x3: device-TLB (ATS) invalidation.
    DeviceTlb {
        /// Source-id of the device.
        sid: u16,
        /// Physical function's source-id (for a VF).
        pfsid: u16,
        /// Invalidate-queue depth.
        qdep: u8,
        /// Address, with the size encoding in its low bits when `size`.
        address: u64,
        /// S: the address encodes a range.
        size: bool,
    },
    /// 0x4: interrupt entry cache.
    InterruptEntryCache {
        /// Index-selective (else global).
        selective: bool,
        /// Interrupt index.
        index: u16,
        /// Index mask.
        im: u8,
    },
    /// 0x5: invalidation wait.
    Wait {
        /// SW: the status write, as (address, data).
        status: Option<(u64, u32)>,
        /// IF: raise the completion interrupt.
        interrupt: bool,
        /// FN: fence.
        fence: bool,
        /// PD: page-request drain.
        drain: bool,
    },
    /// 0x6: PASID-based IOTLB invalidation.
    PasidIotlb {
        /// Granularity.
        granularity: PasidIotlbGranularity,
        /// Domain ID.
        did: u16,
        /// PASID.
        pasid: u32,
        /// Page address.
        address: u64,
        /// Address mask.
        am: u8,
        /// Invalidation hint.
        ih: bool,
    },
    /// 0x7: PASID-cache invalidation.
    PasidCache {
        /// Granularity.
        granularity: PasidCacheGranularity,
        /// Domain ID.
        did: u16,
        /// PASID.
        pasid: u32,
    },
    /// 0x8: PASID-based device-TLB invalidation.
    PasidDeviceTlb {
        /// Source-id of the device.
        sid: u16,
        /// Physical function's source-id.
        pfsid: u16,
        /// Invalidate-queue depth.
        qdep: u8,
        /// PASID.
        pasid: u32,
        /// Global (all PASIDs' global mappings).
        global: bool,
        /// Address.
        address: u64,
        /// S: the address encodes a range.
        size: bool,
    },
    /// 0x9: page group response (recorded for page-request tests).
    PageGroupResponse {
        /// Requester ID the response goes to.
        rid: u16,
        /// The PASID, if PASID-present.
        pasid: Option<u32>,
        /// Private data present.
        private_present: bool,
        /// Response code.
        response: u8,
        /// Last page in group.
        last: bool,
        /// Page request group index.
        index: u16,
        /// Private data (the upper 128 bits of a 256-bit descriptor).
        private: [u64; 2],
    },
}

/// Where a logged invalidation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The invalidation queue, at this descriptor index.
    Queue(u32),
    /// CCMD or IOTLB register-based invalidation.
    Register,
}

/// One processed invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedDescriptor {
    /// Where it came from.
    pub source: Source,
    /// The raw words (two for 128-bit descriptors; for registers, the register values).
    pub raw: [u64; 4],
    /// Decoded.
    pub descriptor: Descriptor,
}

/// Why a descriptor stopped the queue.
enum Bad {
    /// IQERCD.IQEI code.
    Iqe(u64),
}

const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
}

fn field(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1 << width) - 1)
}

/// The PFSID split over bits 15:12 and 63:52 of the device-TLB descriptors.
fn pfsid(lo: u64) -> u16 {
    // CAST: 16 bits assembled from 4 + 12.
    (field(lo, 12, 4) | field(lo, 52, 12) << 4) as u16
}

impl Inner {
    fn check_reserved(lo: u64, lo_rsvd: u64, hi: u64, hi_rsvd: u64) -> Result<(), Bad> {
        if lo & lo_rsvd != 0 || hi & hi_rsvd != 0 {
            return Err(Bad::Iqe(iqei::DESCRIPTOR));
        }
        Ok(())
    }

    /// Decodes one descriptor; `wide` is IQA.DW. Reserved bits set, unknown types and types
    /// the unit does not support are invalidation queue errors (§6.5.2.10).
    fn decode(&mut self, w: [u64; 4], wide: bool, index: u32) -> Result<Descriptor, Bad> {
        let (lo, hi) = (w[0], w[1]);
        let ty = field(lo, 0, 4) | field(lo, 9, 3) << 4;
        // Types 0x6 and up exist for scalable mode only and need 256-bit descriptors (their
        // layouts assume the wide queue Linux uses in scalable mode; QEMU agrees).
        if (0x6..=0x9).contains(&ty) {
            if !self.cfg.smts() {
                return Err(Bad::Iqe(iqei::DESCRIPTOR));
            }
            if !wide {
                return Err(Bad::Iqe(iqei::WIDTH));
            }
        }
        // The upper 128 bits of a 256-bit descriptor are reserved except for the page group
        // response's private data.
        if wide && ty != 0x9 && (w[2] | w[3]) != 0 {
            return Err(Bad::Iqe(iqei::DESCRIPTOR));
        }
        // CAST (throughout): fields are masked to their widths first.
        let d = match ty {
            0x1 => {
                Self::check_reserved(lo, bits(8, 6) | bits(15, 12) | bits(63, 50), hi, u64::MAX)?;
                let granularity = CcGranularity::from_bits(field(lo, 4, 2));
                if granularity == CcGranularity::Reserved {
                    return Err(Bad::Iqe(iqei::DESCRIPTOR));
                }
                Descriptor::ContextCache {
                    granularity,
                    did: field(lo, 16, 16) as u16,
                    sid: field(lo, 32, 16) as u16,
                    fm: field(lo, 48, 2) as u8,
                }
            }
            0x2 => {
                Self::check_reserved(lo, bits(8, 8) | bits(15, 12) | bits(63, 32), hi, bits(11, 7))?;
                let granularity = IotlbGranularity::from_bits(field(lo, 4, 2));
                let am = field(hi, 0, 6) as u8;
                if granularity == IotlbGranularity::Reserved
                    || (granularity == IotlbGranularity::Page && (!self.cfg.psi() || u64::from(am) > self.cfg.mamv()))
                {
                    return Err(Bad::Iqe(iqei::DESCRIPTOR));
                }
                Descriptor::Iotlb {
                    granularity,
                    did: field(lo, 16, 16) as u16,
                    address: hi & !0xfff,
                    am,
                    ih: hi & (1 << 6) != 0,
                    drain_reads: lo & (1 << 7) != 0,
                    drain_writes: lo & (1 << 6) != 0,
                }
            }
            0x3 => {
                if !self.cfg.dt() {
                    return Err(Bad::Iqe(iqei::DESCRIPTOR));
                }
                Self::check_reserved(lo, bits(8, 4) | bits(31, 21) | bits(51, 48), hi, bits(11, 1))?;
                Descriptor::DeviceTlb {
                    sid: field(lo, 32, 16) as u16,
                    pfsid: pfsid(lo),
                    qdep: field(lo, 16, 5) as u8,
                    address: hi & !0xfff,
                    size: hi & 1 != 0,
                }
            }
            0x4 => {
                Self::check_reserved(lo, bits(8, 5) | bits(26, 12) | bits(63, 48), hi, u64::MAX)?;
                Descriptor::InterruptEntryCache {
                    selective: lo & (1 << 4) != 0,
                    index: field(lo, 32, 16) as u16,
                    im: field(lo, 27, 5) as u8,
                }
            }
            0x5 => {
                // PD (bit 7) exists only with ECAP.PDS; QEMU treats it as reserved always.
                let pd_rsvd = if self.cfg.pds() { 0 } else { 1 << 7 };
                Self::check_reserved(lo, pd_rsvd | bits(8, 8) | bits(31, 12), hi, bits(1, 0))?;
                let sw = lo & (1 << 5) != 0;
                let interrupt = lo & (1 << 4) != 0;
                match (sw, interrupt) {
                    (true, true) => self.errors.push(ModelError::WaitSwAndIf { index }),
                    (false, false) => self.errors.push(ModelError::WaitNeither { index }),
                    _ => {}
                }
                Descriptor::Wait {
                    status: sw.then_some((hi & !3, (lo >> 32) as u32)),
                    interrupt,
                    fence: lo & (1 << 6) != 0,
                    drain: lo & (1 << 7) != 0,
                }
            }
            0x6 => {
                Self::check_reserved(lo, bits(8, 6) | bits(15, 12) | bits(63, 52), hi, bits(11, 7))?;
                let granularity = match field(lo, 4, 2) {
                    2 => PasidIotlbGranularity::Pasid,
                    3 => PasidIotlbGranularity::Page,
                    _ => return Err(Bad::Iqe(iqei::DESCRIPTOR)),
                };
                let am = field(hi, 0, 6) as u8;
                if u64::from(am) > self.cfg.mamv() {
                    return Err(Bad::Iqe(iqei::DESCRIPTOR));
                }
                Descriptor::PasidIotlb {
                    granularity,
                    did: field(lo, 16, 16) as u16,
                    pasid: field(lo, 32, 20) as u32,
                    address: hi & !0xfff,
                    am,
                    ih: hi & (1 << 6) != 0,
                }
            }
            0x7 => {
                Self::check_reserved(lo, bits(8, 6) | bits(15, 12) | bits(63, 52), hi, u64::MAX)?;
                let granularity = match field(lo, 4, 2) {
                    0 => PasidCacheGranularity::Domain,
                    1 => PasidCacheGranularity::Pasid,
                    3 => PasidCacheGranularity::Global,
                    _ => return Err(Bad::Iqe(iqei::DESCRIPTOR)),
                };
                Descriptor::PasidCache {
                    granularity,
                    did: field(lo, 16, 16) as u16,
                    pasid: field(lo, 32, 20) as u32,
                }
            }
            0x8 => {
                if !self.cfg.dt() {
                    return Err(Bad::Iqe(iqei::DESCRIPTOR));
                }
                Self::check_reserved(lo, 0, hi, bits(10, 1))?;
                Descriptor::PasidDeviceTlb {
                    sid: field(lo, 16, 16) as u16,
                    pfsid: pfsid(lo),
                    qdep: field(lo, 4, 5) as u8,
                    pasid: field(lo, 32, 20) as u32,
                    global: hi & 1 != 0,
                    address: hi & !0xfff,
                    size: hi & (1 << 11) != 0,
                }
            }
            0x9 => {
                Self::check_reserved(lo, bits(8, 6) | bits(63, 52), hi, bits(1, 0) | bits(63, 12))?;
                Descriptor::PageGroupResponse {
                    rid: field(lo, 16, 16) as u16,
                    pasid: (lo & (1 << 4) != 0).then_some(field(lo, 32, 20) as u32),
                    private_present: lo & (1 << 5) != 0,
                    response: field(lo, 12, 4) as u8,
                    last: hi & (1 << 2) != 0,
                    index: field(hi, 3, 9) as u16,
                    private: [w[2], w[3]],
                }
            }
            _ => return Err(Bad::Iqe(iqei::DESCRIPTOR)),
        };
        Ok(d)
    }

    /// Stops the queue with FSTS.IQE and IQERCD.IQEI (§6.5.2.10); IQH stays at the descriptor.
    fn queue_error(&mut self, code: u64) {
        self.iqercd = (self.iqercd & !0xf) | code;
        self.set_fault_status(fsts::IQE);
    }

    /// Runs the queue from IQH to IQT, unless QI is off, the queue is stopped by IQE or ITE,
    /// or a wait is stalled (fault injection).
    pub(super) fn process_queue(&mut self) {
        if self.gsts & gcmd::QIE == 0 || self.fsts & (fsts::IQE | fsts::ITE) != 0 || self.stalled {
            return;
        }
        // DW is reserved without ECAP.SMTS (§11.4.18): such a queue runs with 128-bit
        // descriptors, and the write is reported.
        if self.iqa & iqa::DW != 0 && !self.cfg.smts() && !self.errors.contains(&ModelError::WideQueueWithoutSmts) {
            self.errors.push(ModelError::WideQueueWithoutSmts);
        }
        let wide = self.iqa & iqa::DW != 0 && self.cfg.smts();
        let shift = if wide { 5 } else { 4 };
        let entries = 1u64 << (8 + (self.iqa & iqa::QS_MASK) - u64::from(wide));
        let base = self.iqa & !0xfff;
        // §11.4.17: with 256-bit descriptors QT bit 4 must be 0; a tail beyond the queue is
        // invalid too.
        if (wide && self.iqt & 0x10 != 0) || self.iqt >> shift >= entries {
            self.queue_error(iqei::TAIL);
            return;
        }
        let tail = self.iqt >> shift;
        let mut head = (self.iqh >> shift) % entries;
        // Bounded by the queue length: each iteration consumes one descriptor.
        for _ in 0..entries {
            if head == tail {
                break;
            }
            let at = base + head * (16 << u64::from(wide));
            let mut w = [0u64; 4];
            let n = if wide { 4 } else { 2 };
            let mut fetched = true;
            for (i, word) in w.iter_mut().take(n).enumerate() {
                match self.mem.read_u64(at + 8 * i as u64) {
                    Some(v) => *word = v,
                    None => fetched = false,
                }
            }
            if !fetched {
                self.queue_error(iqei::FETCH);
                return;
            }
            // CAST: the index is below 2^15.
            let index = head as u32;
            let d = match self.decode(w, wide, index) {
                Ok(d) => d,
                Err(Bad::Iqe(code)) => {
                    self.queue_error(code);
                    return;
                }
            };
            if let Descriptor::Wait { .. } = d
                && self.stall_next_wait
            {
                self.stall_next_wait = false;
                self.stalled = true;
                return;
            }
            if let Descriptor::PageGroupResponse { rid, pasid, private_present, response, index: prgi, private, .. } = d {
                self.page_group_response(index, rid, pasid, response, prgi, private_present.then_some(private));
            }
            let stop = self.execute(&d);
            self.log.push(LoggedDescriptor { source: super::Source::Queue(index), raw: w, descriptor: d });
            head = (head + 1) % entries;
            self.iqh = head << shift;
            if stop {
                return;
            }
        }
    }

    /// Applies one invalidation to the caches. Returns true when the queue must stop after it
    /// (an injected device-TLB time-out).
    pub(super) fn execute(&mut self, d: &Descriptor) -> bool {
        match *d {
            Descriptor::ContextCache { granularity, did, sid, fm } => match granularity {
                // A reserved granularity (reachable through CCMD only) invalidates nothing; CAIG
                // then reads 0, "not performed" (§11.4.7).
                CcGranularity::Reserved => {}
                CcGranularity::Global => self.ctx_cache.clear(),
                CcGranularity::Domain => self.ctx_cache.retain(|_, c| match c {
                    super::CachedContext::Legacy { did: d, .. } => *d != did,
                    // Scalable-mode context entries carry no DID: drop them all (hardware may
                    // invalidate more than asked).
                    super::CachedContext::Scalable { .. } => false,
                }),
                CcGranularity::Device => {
                    // FM masks 0, 1, 2 or 3 low bits of the function number (§6.5.2.1).
                    let mask = match fm {
                        0 => 0xffff,
                        1 => 0xfffe,
                        2 => 0xfffc,
                        _ => 0xfff8,
                    };
                    self.ctx_cache.retain(|&rid, _| rid & mask != sid & mask);
                }
            },
            Descriptor::Iotlb { granularity, did, address, am, .. } => {
                let range = self.page_range(address, am);
                self.iotlb.retain(|e| match granularity {
                    // Reserved (IOTLB_REG only): nothing; IAIG reads 0 (§11.4.8.1).
                    IotlbGranularity::Reserved => true,
                    IotlbGranularity::Global => false,
                    // §6.5.2.3: in scalable mode the IOTLB descriptor covers second-stage and
                    // pass-through mappings; first-stage ones need PASID-based invalidation.
                    IotlbGranularity::Domain => e.did != did || e.kind == TranslationKind::FirstStage,
                    IotlbGranularity::Page => {
                        e.did != did || e.kind == TranslationKind::FirstStage || !overlaps(e, range)
                    }
                });
            }
            Descriptor::PasidIotlb { granularity, did, pasid, address, am, .. } => {
                let range = self.page_range(address, am);
                self.iotlb.retain(|e| {
                    let hit = e.did == did && e.pasid == Some(pasid);
                    match granularity {
                        PasidIotlbGranularity::Pasid => !hit,
                        PasidIotlbGranularity::Page => !(hit && overlaps(e, range)),
                    }
                });
            }
            Descriptor::PasidCache { granularity, did, pasid } => self.pasid_cache.retain(|&(_, p), e| match granularity {
                PasidCacheGranularity::Global => false,
                PasidCacheGranularity::Domain => e.did != did,
                PasidCacheGranularity::Pasid => e.did != did || p != pasid,
            }),
            Descriptor::DeviceTlb { .. } | Descriptor::PasidDeviceTlb { .. } => {
                // IQERCD: ICESID is bits 63:48, ITESID bits 47:32 (VT-d §11.4.9.9; Linux
                // DMAR_IQER_REG_ICESID / DMAR_IQER_REG_ITESID).
                if let Some(sid) = self.inject_ice.take() {
                    self.iqercd = (self.iqercd & !(0xffff << 48)) | u64::from(sid) << 48;
                    self.set_fault_status(fsts::ICE);
                }
                if let Some(sid) = self.inject_ite.take() {
                    self.iqercd = (self.iqercd & !(0xffff << 32)) | u64::from(sid) << 32;
                    self.set_fault_status(fsts::ITE);
                    return true;
                }
            }
            Descriptor::InterruptEntryCache { .. } | Descriptor::PageGroupResponse { .. } => {}
            Descriptor::Wait { status, interrupt, drain, .. } => {
                // PD (§7.10): page requests received before the wait are in the page request
                // queue before its status is written.
                if drain {
                    self.deliver_posted();
                }
                if let Some((address, data)) = status
                    && !self.mem.write_u32(address, data)
                {
                    self.errors.push(ModelError::WaitStatusUnmapped { address });
                }
                if interrupt {
                    self.completion_event();
                }
            }
        }
        false
    }

    /// The input-address range a page-selective invalidation covers: 2^am pages, aligned.
    fn page_range(&mut self, address: u64, am: u8) -> (u64, u64) {
        let size = 0x1000u64 << am.min(52);
        if address & (size - 1) & !0xfff != 0 {
            self.errors.push(ModelError::UnalignedInvalidation { address, am });
        }
        let start = address & !(size - 1);
        (start, start + size)
    }
}

fn overlaps(e: &super::IotlbEntry, (start, end): (u64, u64)) -> bool {
    e.iova < end && start < e.iova + e.size
}
