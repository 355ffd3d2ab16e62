//! The architecture-neutral core's [`Backend`] for an SMMUv3: [`SmmuBackend`] owns the
//! [`Unit`] and the RID-to-StreamID map of the PCI segment (from discovery).
//!
//! - **Tags**: a stage-1 domain's tag is its ASID, a stage-2 domain's its VMID (marked with
//!   [`VMID_TAG`] so `release_tag` knows the pool; the page table's pending invalidations carry
//!   the same value). Identity and blocking domains need no tag ([`NO_TAG`]).
//! - **Entries**: requests without a PASID are the StreamID's STE: stage 1 (CD 0 of the
//!   StreamID's CD table), stage 2, bypass (identity) or abort (blocking). A PASID is the
//!   SubstreamID of a CD in that table (IDR1.SSIDSIZE must allow it) and needs the StreamID's
//!   STE on stage 1 first (S1DSS = 0b10: requests without a SubstreamID use CD 0); a PASID
//!   domain is a stage-1 domain.
//! - **Removal** sets abort, never an invalid STE (which raises C_BAD_STE for every DMA) and
//!   never bypass. The CD table is kept: substreams still attached are blocked with the STE and
//!   translate again once the StreamID is attached to a stage-1 domain.
//! - **Page requests** (fault-capable domains, [`crate::iommu::fault`]): need IDR0.PRI and the
//!   PRI queue; the STE has no per-stream enable (the PRI queue takes every StreamID's), so
//!   [`Backend::set_page_requests`] only checks. STE.PPAR mirrors the function's "PRG Response
//!   PASID Required" ([`Backend::set_page_response_pasid`]), so the SMMU's own responses
//!   (overflow, §8.1) carry the PASID exactly when [`super::priq::CommandSink`]'s do; a
//!   property of the function, it is kept across every STE rewrite of the StreamID.
//! - **Flush**: TLBI by range of the ASID (stage 1: one ASID covers every SubstreamID using
//!   it) or VMID, one CMD_SYNC, then the emptied tables are freed (leaked if the SMMU did not
//!   confirm).

use crate::addr::{Bdf, Pasid, StreamId};
use crate::error::{Error, Result};
use crate::hal::Platform;
use crate::iommu::domain::{Backend, DomainKind, Endpoint, Stage, TableLayout, Target};
use crate::iommu::invalidation::PendingInvalidation;
use crate::iommu::pagetable::PageSizes;

use super::discovery::StreamIdMap;
use super::ste::{Stage1, Stage2, StreamConfig};
use super::unit::{TlbScope, Unit};

/// Marks a stage-2 domain's tag: `VMID_TAG | vmid`.
pub const VMID_TAG: u32 = 1 << 16;

/// The tag of identity and blocking domains (no ASID or VMID: nothing is cached for them).
pub const NO_TAG: u32 = 0;

/// Stage-1 input size: 4 levels of the 4 KiB granule, T0SZ 16 (VMSAv8-64 without LVA).
const STAGE1_IOVA_BITS: u8 = 48;

/// How requester IDs become StreamIDs.
#[derive(Clone, Copy, Debug)]
pub enum SidMap<'a> {
    /// StreamID = requester ID (QEMU virt's `iommu-map = <0 &smmu 0 0x10000>`; tests).
    Identity,
    /// The firmware's map (device tree `iommu-map` or IORT ID mappings).
    Firmware(StreamIdMap<'a>),
}

/// An SMMUv3 as the domain core drives it: the unit and how requester IDs reach it.
#[derive(Debug)]
pub struct SmmuBackend<'a> {
    unit: Unit,
    map: SidMap<'a>,
}

impl<'a> SmmuBackend<'a> {
    /// The backend over a brought-up `unit` whose requesters arrive as `map` says.
    pub const fn new(unit: Unit, map: SidMap<'a>) -> Self {
        Self { unit, map }
    }

    /// The unit (events, global errors, interrupts).
    pub const fn unit(&self) -> &Unit {
        &self.unit
    }

    /// The unit, mutably. Changing STEs behind the core's back breaks its bookkeeping.
    pub const fn unit_mut(&mut self) -> &mut Unit {
        &mut self.unit
    }

    /// How requester IDs become StreamIDs here.
    pub const fn sid_map(&self) -> SidMap<'a> {
        self.map
    }

    /// `set_stream`, keeping STE.PPAR (a property of the function, not of the domain).
    fn set_stream_keeping_ppar<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        sid: StreamId,
        config: StreamConfig,
    ) -> Result<()> {
        let ppar = self
            .unit
            .stream_entry(platform, sid)?
            .is_some_and(|ste| ste[0] & STE_V != 0 && ste[1] & STE_PPAR != 0);
        self.unit.set_stream(platform, sid, config)?;
        if ppar { self.unit.set_page_response_pasid_required(platform, sid, true) } else { Ok(()) }
    }

    /// The StreamID requests of `bdf` arrive with; [`Error::BadReference`] if they do not go
    /// through this SMMU.
    pub fn stream_id(&self, bdf: Bdf) -> Result<StreamId> {
        let rid = bdf.routing_id();
        let sid = match &self.map {
            SidMap::Identity => Some(StreamId(u32::from(rid.0))),
            SidMap::Firmware(map) => map.stream_id(rid)?,
        };
        sid.ok_or(Error::BadReference {
            what: "requester ID without a StreamID on this SMMU",
            value: u64::from(rid.0),
        })
    }

    /// The SubstreamID of `pasid`: 1 .. 2^SSIDSIZE (0 is the STE's own CD, S1DSS = 0b10).
    fn substream(&self, pasid: Pasid) -> Result<u32> {
        let ssid = pasid.get();
        if ssid == 0 || u64::from(ssid) >> self.unit.substream_bits() != 0 {
            return Err(Error::Unsupported {
                what: "SMMU SubstreamID for the PASID (0, or beyond IDR1.SSIDSIZE)",
                value: u64::from(ssid),
            });
        }
        Ok(ssid)
    }
}

/// STE.V (§5.2, word 0 bit 0; Linux `STRTAB_STE_0_V`).
const STE_V: u64 = 1;
/// STE.PPAR (§5.2, word 1 bit 18; Linux `STRTAB_STE_1_PPAR`).
const STE_PPAR: u64 = 1 << 18;

impl super::priq::StreamIds for SidMap<'_> {
    fn stream_id(&self, rid: crate::addr::RequesterId) -> Option<StreamId> {
        match self {
            Self::Identity => Some(StreamId(u32::from(rid.0))),
            Self::Firmware(map) => map.stream_id(rid).ok().flatten(),
        }
    }
}

fn asid(tag: u32) -> Result<u16> {
    u16::try_from(tag)
        .ok()
        .filter(|&a| a != 0)
        .ok_or(Error::InvalidField { what: "SMMU ASID tag", value: u64::from(tag) })
}

fn vmid(tag: u32) -> Result<u16> {
    if tag & VMID_TAG == 0 {
        return Err(Error::InvalidField { what: "SMMU VMID tag", value: u64::from(tag) });
    }
    u16::try_from(tag & !VMID_TAG)
        .ok()
        .filter(|&v| v != 0)
        .ok_or(Error::InvalidField { what: "SMMU VMID tag", value: u64::from(tag) })
}

impl Backend for SmmuBackend<'_> {
    fn table_layout(&self, stage: Stage) -> Result<TableLayout> {
        self.supports(DomainKind::Translated(stage), false)?;
        let oas = self.unit.output_address_bits();
        let (levels, iova_bits) = match stage {
            Stage::First => (4, STAGE1_IOVA_BITS),
            // The IPA size is capped to the OAS (the driver's S2T0SZ); 3 levels where that
            // leaves 39 bits or fewer (SL0 = 1).
            Stage::Second => {
                let bits = oas.min(48);
                (if bits > 39 { 4 } else { 3 }, bits)
            }
        };
        Ok(TableLayout {
            levels,
            // VMSAv8-64 with the 4 KiB granule: 4 KiB pages, 2 MiB and 1 GiB blocks.
            sizes: PageSizes::ALL,
            coherent: self.unit.coherent(),
            iova_bits,
            phys_bits: oas,
        })
    }

    fn supports(&self, kind: DomainKind, with_pasid: bool) -> Result<()> {
        let idr0 = self.unit.ids().idr0;
        let missing = |what| Err(Error::Unsupported { what, value: u64::from(idr0.0) });
        match kind {
            _ if with_pasid && self.unit.substream_bits() == 0 => {
                missing("SMMU substreams (IDR1.SSIDSIZE 0)")
            }
            DomainKind::Translated(Stage::Second) | DomainKind::Identity if with_pasid => {
                missing("SMMU PASID attachment of a stage-2 or identity domain (CDs are stage 1)")
            }
            DomainKind::Translated(Stage::First) if !idr0.s1p() => missing("SMMU IDR0.S1P"),
            DomainKind::Translated(Stage::Second) if !idr0.s2p() => missing("SMMU IDR0.S2P"),
            _ => Ok(()),
        }
    }

    fn allocate_tag(&mut self, kind: DomainKind) -> Result<u32> {
        match kind {
            DomainKind::Translated(Stage::First) => self.unit.allocate_asid().map(u32::from),
            DomainKind::Translated(Stage::Second) => {
                self.unit.allocate_vmid().map(|v| VMID_TAG | u32::from(v))
            }
            DomainKind::Identity | DomainKind::Blocking => Ok(NO_TAG),
        }
    }

    fn release_tag(&mut self, tag: u32) -> Result<()> {
        match tag {
            NO_TAG => Ok(()),
            t if t & VMID_TAG != 0 => self.unit.release_vmid(vmid(t)?),
            t => self.unit.release_asid(asid(t)?),
        }
    }

    fn install<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
        tag: u32,
        target: Target,
    ) -> Result<()> {
        let sid = self.stream_id(endpoint.bdf)?;
        if let Some(pasid) = endpoint.pasid {
            let ssid = self.substream(pasid)?;
            let cd = match target {
                Target::Translated { stage: Stage::First, root, levels } => {
                    Some(Stage1 { root, levels, asid: asid(tag)? })
                }
                Target::Blocking => None,
                Target::Translated { stage: Stage::Second, .. } | Target::Identity => {
                    return self.supports(DomainKind::Identity, true);
                }
            };
            return self.unit.set_substream(platform, sid, ssid, cd);
        }
        let config = match target {
            Target::Translated { stage: Stage::First, root, levels } => {
                StreamConfig::Stage1(Stage1 { root, levels, asid: asid(tag)? })
            }
            Target::Translated { stage: Stage::Second, root, levels } => {
                StreamConfig::Stage2(Stage2 { root, levels, vmid: vmid(tag)? })
            }
            Target::Identity => StreamConfig::Bypass,
            Target::Blocking => StreamConfig::Abort,
        };
        self.set_stream_keeping_ppar(platform, sid, config)
    }

    fn remove<P: Platform + ?Sized>(&mut self, platform: &P, endpoint: &Endpoint) -> Result<()> {
        let sid = self.stream_id(endpoint.bdf)?;
        match endpoint.pasid {
            Some(pasid) => {
                let ssid = self.substream(pasid)?;
                self.unit.set_substream(platform, sid, ssid, None)
            }
            // Abort, not invalid: an invalid STE raises C_BAD_STE for every DMA.
            None => self.set_stream_keeping_ppar(platform, sid, StreamConfig::Abort),
        }
    }

    fn remove_requester<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
    ) -> Result<()> {
        let sid = self.stream_id(endpoint.bdf)?;
        self.set_stream_keeping_ppar(platform, sid, StreamConfig::Abort)
    }

    fn page_requests(&self) -> Result<()> {
        let idr0 = self.unit.ids().idr0;
        // The unit sets its PRI queue up exactly where IDR0.PRI.
        if !idr0.pri() {
            return Err(Error::Unsupported {
                what: "SMMU IDR0.PRI (PRI queue)",
                value: u64::from(idr0.0),
            });
        }
        Ok(())
    }

    fn set_page_requests<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
        on: bool,
    ) -> Result<()> {
        let _ = platform;
        // No per-stream enable: the PRI queue takes every StreamID's requests; the STE (abort
        // after a detach) decides nothing about them. STE.PPAR stays: the function still
        // wants the PASID on any response to what it already sent.
        self.stream_id(endpoint.bdf)?;
        if on { Backend::page_requests(self) } else { Ok(()) }
    }

    fn set_page_response_pasid<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
        required: bool,
    ) -> Result<()> {
        let sid = self.stream_id(endpoint.bdf)?;
        self.unit.set_page_response_pasid_required(platform, sid, required)
    }

    fn flush<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        mut pending: PendingInvalidation,
        stage: Stage,
        _pasids: &[Option<Pasid>],
    ) -> Result<()> {
        if pending.is_empty() {
            return self.unit.flush(platform, pending, TlbScope::Stage2 { vmid: 0 });
        }
        let tag = pending.domain;
        let scope = match stage {
            // Stage-1 TLB entries are tagged by ASID, whichever SubstreamID walked them.
            Stage::First => asid(tag).map(|asid| TlbScope::Stage1 { asid, vmid: 0 }),
            Stage::Second => vmid(tag).map(|vmid| TlbScope::Stage2 { vmid }),
        };
        match scope {
            Ok(scope) => {
                if let TlbScope::Stage2 { vmid } = scope {
                    // The unit checks the pending value against the bare VMID.
                    pending.domain = u32::from(vmid);
                }
                self.unit.flush(platform, pending, scope)
            }
            Err(e) => {
                // Let the unit leak the pages: an out-of-pool tag never matches.
                let _ = self.unit.flush(platform, pending, TlbScope::Stage2 { vmid: 0 });
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
