//! The architecture-neutral core's [`Backend`] for a VT-d unit: the domain tag is the domain
//! ID, an endpoint is a context entry (legacy mode) or a PASID entry (scalable mode; requests
//! without a PASID use RID_PASID 0), and every change is flushed before the call returns.

use crate::addr::Pasid;
use crate::error::{Error, Result};
use crate::hal::Platform;
use crate::iommu::domain::{Backend, DomainKind, Endpoint, Stage, TableLayout, Target};
use crate::iommu::invalidation::PendingInvalidation;
use crate::iommu::pagetable::PageSizes;
use crate::vtd::pasid::PasidTranslation;
use crate::vtd::qi::FlushScope;
use crate::vtd::unit::{TableMode, Unit};

/// RID_PASID: the PASID entry requests without a PASID use (the driver's scalable-mode
/// context entries set RID_PASID 0).
const RID_PASID: u32 = 0;

fn rid_pasid(endpoint: &Endpoint) -> Result<Pasid> {
    match endpoint.pasid {
        Some(p) => Ok(p),
        None => Pasid::new(RID_PASID),
    }
}

impl Unit {
    /// Second-stage levels: 4 where CAP.SAGAW offers 48 bits, else 3 (39 bits), else 5 (57
    /// bits): 4 levels cover any guest-physical space a hypervisor hands out without the
    /// extra walk step of 5.
    fn second_stage_levels(&self) -> Result<u8> {
        let sagaw = self.capability().sagaw();
        [(0b0100, 4), (0b0010, 3), (0b1000, 5)]
            .into_iter()
            .find(|&(bit, _)| sagaw & bit != 0)
            .map(|(_, levels)| levels)
            .ok_or(Error::Unsupported {
                what: "VT-d CAP.SAGAW (no 3-, 4- or 5-level second-stage table)",
                value: self.capability().0,
            })
    }

    fn coherent_walks(&self) -> bool {
        match self.mode() {
            TableMode::Legacy => self.extended_capability().coherent(),
            TableMode::Scalable => self.extended_capability().smpwc(),
        }
    }
}

impl Backend for Unit {
    fn table_layout(&self, stage: Stage) -> Result<TableLayout> {
        self.supports(DomainKind::Translated(stage), false)?;
        let cap = self.capability();
        let (levels, sizes) = match stage {
            Stage::Second => (self.second_stage_levels()?, PageSizes::from_vtd_sllps(cap.sllps())),
            // 4-level paging; 5-level (CAP.FS5LP) is not asked for: a 48-bit IOVA space is
            // what x86 guests' page tables cover.
            Stage::First => (4, PageSizes::from_vtd_first_stage(cap.fs1gp())),
        };
        Ok(TableLayout {
            levels,
            sizes,
            coherent: self.coherent_walks(),
            // CAP.MGAW is the widest input address the unit translates (§11.4.2).
            iova_bits: cap.mgaw(),
            phys_bits: 52,
        })
    }

    fn supports(&self, kind: DomainKind, with_pasid: bool) -> Result<()> {
        let ecap = self.extended_capability();
        let missing = |what| Err(Error::Unsupported { what, value: ecap.0 });
        match (self.mode(), kind) {
            (TableMode::Legacy, _) if with_pasid => missing("VT-d PASID attachment (legacy mode)"),
            (TableMode::Scalable, _) if with_pasid && !ecap.pasid() => {
                missing("VT-d ECAP.PASID (PASID-tagged requests)")
            }
            (TableMode::Legacy, DomainKind::Translated(Stage::First)) => {
                missing("VT-d first-stage translation (legacy mode)")
            }
            (TableMode::Scalable, DomainKind::Translated(Stage::First)) if !ecap.flts() => {
                missing("VT-d ECAP.FLTS (first-stage translation)")
            }
            (TableMode::Scalable, DomainKind::Translated(Stage::Second)) if !ecap.slts() => {
                missing("VT-d ECAP.SLTS (second-stage translation)")
            }
            (_, DomainKind::Identity) if !ecap.pt() => missing("VT-d ECAP.PT (pass-through)"),
            _ => Ok(()),
        }
    }

    fn allocate_tag(&mut self, _kind: DomainKind) -> Result<u32> {
        self.allocate_domain_id().map(u32::from)
    }

    fn release_tag(&mut self, tag: u32) -> Result<()> {
        let did = u16::try_from(tag).map_err(|_| Error::InvalidDomainId {
            did: tag,
            supported: self.domain_ids().count(),
        })?;
        self.release_domain_id(did)
    }

    fn install<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
        tag: u32,
        target: Target,
    ) -> Result<()> {
        let did = u16::try_from(tag).map_err(|_| Error::InvalidDomainId {
            did: tag,
            supported: self.domain_ids().count(),
        })?;
        let owed = match (self.mode(), target) {
            (_, Target::Blocking) => return Backend::remove(self, platform, endpoint),
            (TableMode::Legacy, _) if endpoint.pasid.is_some() => {
                return self.supports(DomainKind::Blocking, true);
            }
            (TableMode::Legacy, Target::Translated { stage: Stage::Second, root, levels }) => {
                self.attach_legacy(platform, endpoint.bdf, did, root, levels)?
            }
            (TableMode::Legacy, Target::Translated { stage: Stage::First, .. }) => {
                return self.supports(DomainKind::Translated(Stage::First), false);
            }
            (TableMode::Legacy, Target::Identity) => {
                self.attach_legacy_pass_through(platform, endpoint.bdf, did)?
            }
            (TableMode::Scalable, target) => {
                let translation = match target {
                    Target::Translated { stage: Stage::First, root, levels } => {
                        PasidTranslation::FirstStage { root, levels }
                    }
                    Target::Translated { stage: Stage::Second, root, levels } => {
                        PasidTranslation::SecondStage { root, levels }
                    }
                    _ => PasidTranslation::PassThrough,
                };
                self.attach_pasid(platform, endpoint.bdf, rid_pasid(endpoint)?, did, translation)?
            }
        };
        self.flush_tables(platform, owed)
    }

    fn remove<P: Platform + ?Sized>(&mut self, platform: &P, endpoint: &Endpoint) -> Result<()> {
        let owed = match self.mode() {
            TableMode::Legacy => self.detach(platform, endpoint.bdf)?,
            TableMode::Scalable => {
                self.detach_pasid(platform, endpoint.bdf, rid_pasid(endpoint)?)?
            }
        };
        self.flush_tables(platform, owed)
    }

    fn remove_requester<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
    ) -> Result<()> {
        if self.mode() == TableMode::Scalable {
            // RID_PASID first: a context entry re-created by a later PASID attachment must not
            // bring the old translation back.
            let owed = self.detach_pasid(platform, endpoint.bdf, Pasid::new(RID_PASID)?)?;
            self.flush_tables(platform, owed)?;
        }
        let owed = self.detach(platform, endpoint.bdf)?;
        self.flush_tables(platform, owed)
    }

    fn page_requests(&self) -> Result<()> {
        let ecap = self.extended_capability();
        if !ecap.prs() {
            return Err(Error::Unsupported {
                what: "VT-d ECAP.PRS (page requests)",
                value: ecap.0,
            });
        }
        // PRE lives in scalable-mode context entries only.
        if self.mode() != TableMode::Scalable {
            return Err(Error::Unsupported {
                what: "VT-d page requests need scalable mode (RTADDR.TTM)",
                value: ecap.0,
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
        if on {
            Backend::page_requests(self)?;
        } else if self.mode() != TableMode::Scalable {
            // Legacy context entries have no PRE: nothing to clear.
            return Ok(());
        }
        Unit::set_page_requests(self, platform, endpoint.bdf, on)
    }

    fn flush<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        pending: PendingInvalidation,
        stage: Stage,
        pasids: &[Option<Pasid>],
    ) -> Result<()> {
        match stage {
            // Second-stage translations are tagged by domain ID alone.
            Stage::Second => Unit::flush(self, platform, pending, FlushScope::Iotlb),
            Stage::First => {
                let allocated = u16::try_from(pending.domain)
                    .is_ok_and(|did| self.domain_ids().is_allocated(did));
                if !allocated && !pending.is_empty() {
                    let did = pending.domain;
                    crate::vtd::qi::leak(pending);
                    return Err(Error::InvalidDomainId {
                        did,
                        supported: self.domain_ids().count(),
                    });
                }
                let rid_pasid = Pasid::new(RID_PASID)?;
                let scopes = pasids.iter().map(|p| FlushScope::PasidIotlb(p.unwrap_or(rid_pasid)));
                match self.queue() {
                    Ok(queue) => queue.flush_scopes(platform, pending, scopes),
                    Err(e) => {
                        crate::vtd::qi::leak(pending);
                        Err(e)
                    }
                }
            }
        }
    }
}
