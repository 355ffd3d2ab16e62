//! Every remapping unit of a DMAR, brought up together, and the Reserved Memory Regions (RMRRs)
//! identity-mapped before any of them translates.
//!
//! # Units (VT-d §8.3)
//! [`Remapping::new`] walks the DMAR and brings up **every** DRHD (a platform with several
//! units has devices behind each of them; driving only the first or last one leaves the others
//! untranslated or, once firmware's protection is dropped, unprotected): [`Unit::probe`], the
//! table mode (scalable when ECAP.SMTS, unless the caller forces legacy), [`Unit::new`] and
//! [`Unit::enable_queued_invalidation`]. Translation stays off.
//!
//! [`Remapping::unit_for`] finds the unit of a function: the DRHD of its segment whose device
//! scopes name it, else the segment's INCLUDE_PCI_ALL DRHD, which covers every function of the
//! segment no other DRHD of that segment claims (§8.3).
//!
//! # RMRRs (VT-d §8.4)
//! An RMRR is memory that the devices it names may DMA to at any time (USB legacy emulation,
//! integrated graphics stolen memory): it must be identity-mapped for them before translation
//! is enabled. [`Remapping::prepare_rmrr`] maps it and attaches the devices;
//! [`Remapping::enable_translation`] refuses ([`Error::RmrrNotPrepared`]) while the DMAR has
//! RMRRs that were not prepared, so an RMRR cannot be parsed and then forgotten.
//!
//! **One RMRR domain per unit.** Every RMRR device of a unit is attached to one domain of that
//! unit (one domain ID, one second-stage table, or a first-stage table when the unit offers
//! only first-stage translation) holding the identity map of every RMRR range that names a
//! device of that unit. Linux either puts RMRR devices in its static identity domain (all of
//! memory identity-mapped) or maps the RMRR into each device's DMA domain; a per-device domain
//! here would cost a domain ID and a table tree per device with no heap to keep them in, and the
//! static identity domain maps far more than the RMRRs. The cost of sharing: a device of the
//! domain can reach the RMRR ranges of the unit's other RMRR devices (not only its own), which
//! are firmware-reserved memory, never memory the hypervisor hands out.
//!
//! An RMRR device must keep the mapping for as long as firmware may use it: a hypervisor that
//! moves it to another domain must map the range there too (or not move it).
//! [`Remapping::rmrr_devices`] and [`Remapping::requires_rmrr`] say which functions are bound.

use heapless::Vec;

use crate::addr::{Bdf, Iova, Pasid, PhysAddr};
use crate::error::{Error, Result};
use crate::firmware::acpi::{DeviceScopeKind, DeviceScopes, Dmar, RemappingStructure};
use crate::hal::Platform;
use crate::iommu::pagetable::{
    GRANULE, IoPageTable, PageSizes, PageTableFormat, Perms, VtdSecondStage, X86FirstStage,
};

use super::pasid::PasidTranslation;
use super::qi::{DEFAULT_ENTRIES, FlushScope};
use super::unit::{TableMode, Unit};

/// How many (function, RMRR) bindings a [`Remapping`] records.
pub const MAX_RMRR_DEVICES: usize = 32;

/// Which translation table mode the units use.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ModePolicy {
    /// Scalable mode on units that report ECAP.SMTS, legacy mode on the others.
    #[default]
    Auto,
    /// Legacy mode on every unit.
    ForceLegacy,
}

/// The physical range an RMRR reserves, as identity-mapped: rounded out to 4 KiB pages,
/// `first..=last` (VT-d §8.4: RMRR limit is inclusive).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RmrrRange {
    /// First byte (4 KiB aligned).
    pub first: PhysAddr,
    /// Last byte (one below a 4 KiB boundary).
    pub last: PhysAddr,
}

impl RmrrRange {
    /// The range an RMRR with `base` and inclusive `limit` needs, rounded out to 4 KiB pages.
    pub fn from_rmrr(base: PhysAddr, limit: PhysAddr) -> Result<Self> {
        if limit.0 < base.0 {
            return Err(Error::InvalidField {
                what: "DMAR RMRR limit (below base)",
                value: limit.0,
            });
        }
        Ok(Self {
            first: PhysAddr(base.0 & !(GRANULE - 1)),
            last: PhysAddr(limit.0 | (GRANULE - 1)),
        })
    }

    /// Whether `addr` is inside the range.
    pub const fn contains(&self, addr: u64) -> bool {
        self.first.0 <= addr && addr <= self.last.0
    }

    /// Length in bytes, or `None` for a range that spans the whole 64-bit space.
    pub const fn len(&self) -> Option<u64> {
        (self.last.0 - self.first.0).checked_add(1)
    }

    /// Always false: a range holds at least one page.
    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// A function bound to its unit's RMRR domain by [`Remapping::prepare_rmrr`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RmrrDevice {
    /// The function an RMRR scope names.
    pub bdf: Bdf,
    /// Index of its unit (see [`Remapping::unit`]).
    pub unit: usize,
    /// The domain ID of the unit's RMRR domain it is attached to.
    pub did: u16,
    /// The identity-mapped range it needs.
    pub range: RmrrRange,
}

/// The identity-map table of one unit's RMRR domain.
#[derive(Debug)]
enum RmrrTable {
    /// Second-stage (legacy mode, or scalable PGTT second-stage).
    Second(IoPageTable<VtdSecondStage>),
    /// First-stage (scalable mode on a unit without ECAP.SLTS), 4 levels.
    First(IoPageTable<X86FirstStage>),
}

/// A unit's RMRR domain.
#[derive(Debug)]
struct RmrrDomain {
    did: u16,
    table: RmrrTable,
}

/// One DRHD: the unit and what the DMAR says it covers.
#[derive(Debug)]
struct Slot {
    unit: Unit,
    segment: u16,
    include_pci_all: bool,
    rmrr: Option<RmrrDomain>,
}

/// Every remapping unit of a DMAR (at most `U`), with the RMRR bookkeeping.
#[derive(Debug)]
pub struct Remapping<const U: usize> {
    slots: Vec<Slot, U>,
    rmrrs: usize,
    prepared: bool,
    bound: Vec<RmrrDevice, MAX_RMRR_DEVICES>,
}

impl<const U: usize> Remapping<U> {
    /// Brings up every DRHD of `dmar`, in table order (unit index = DRHD order): probe, choose
    /// the table mode by `policy` (scalable needs ECAP.SMTS, VT-d §11.4.3), install an empty
    /// root table, enable queued invalidation ([`DEFAULT_ENTRIES`] descriptors). Translation
    /// stays off until [`enable_translation`](Self::enable_translation).
    ///
    /// More than `U` DRHDs is [`Error::CapacityExceeded`]; a DMAR structure error, a register
    /// set size that does not fit `usize`, or any unit failing to come up is returned as is
    /// (units already brought up are dropped with translation off; their table pages are
    /// leaked, never freed).
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        dmar: &Dmar<'_>,
        policy: ModePolicy,
    ) -> Result<Self> {
        let mut slots: Vec<Slot, U> = Vec::new();
        let mut rmrrs = 0;
        for structure in dmar.structures() {
            match structure? {
                RemappingStructure::Drhd(drhd) => {
                    if slots.is_full() {
                        return Err(Error::CapacityExceeded {
                            what: "VT-d remapping units (DMAR DRHDs)",
                            capacity: U,
                        });
                    }
                    let size = drhd.register_set_size();
                    let size = usize::try_from(size).map_err(|_| Error::InvalidField {
                        what: "DMAR DRHD register set size",
                        value: size,
                    })?;
                    let base = drhd.register_base();
                    let (_, _, ecap) = Unit::probe(platform, base, size)?;
                    let mode = match policy {
                        ModePolicy::Auto if ecap.smts() => TableMode::Scalable,
                        _ => TableMode::Legacy,
                    };
                    let mut unit = Unit::new(platform, base, size, mode)?;
                    unit.enable_queued_invalidation(platform, DEFAULT_ENTRIES)?;
                    let slot = Slot {
                        unit,
                        segment: drhd.segment(),
                        include_pci_all: drhd.include_pci_all(),
                        rmrr: None,
                    };
                    slots.push(slot).map_err(|_| Error::CapacityExceeded {
                        what: "VT-d remapping units (DMAR DRHDs)",
                        capacity: U,
                    })?;
                }
                RemappingStructure::Rmrr(_) => rmrrs += 1,
                _ => {}
            }
        }
        Ok(Self { slots, rmrrs, prepared: false, bound: Vec::new() })
    }

    /// Number of units.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the DMAR had no DRHD.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Unit `index` (DRHD order).
    pub fn unit(&self, index: usize) -> Option<&Unit> {
        self.slots.get(index).map(|s| &s.unit)
    }

    /// Unit `index`, to attach devices, flush and handle faults. Changing the context entry of
    /// an [RMRR-bound](Self::requires_rmrr) function to a domain without the RMRR range breaks
    /// firmware's DMA (VT-d §8.4).
    pub fn unit_mut(&mut self, index: usize) -> Option<&mut Unit> {
        self.slots.get_mut(index).map(|s| &mut s.unit)
    }

    /// The units, in DRHD order.
    pub fn units(&self) -> impl Iterator<Item = &Unit> {
        self.slots.iter().map(|s| &s.unit)
    }

    /// The PCI segment of unit `index`'s DRHD.
    pub fn segment(&self, index: usize) -> Option<u16> {
        self.slots.get(index).map(|s| s.segment)
    }

    /// Whether unit `index`'s DRHD has INCLUDE_PCI_ALL.
    pub fn include_pci_all(&self, index: usize) -> Option<bool> {
        self.slots.get(index).map(|s| s.include_pci_all)
    }

    /// The domain ID of unit `index`'s RMRR domain, once [`prepare_rmrr`](Self::prepare_rmrr)
    /// created one (only units with RMRR devices have one).
    pub fn rmrr_domain(&self, index: usize) -> Option<u16> {
        self.slots.get(index).and_then(|s| s.rmrr.as_ref()).map(|d| d.did)
    }

    /// Number of RMRR structures in the DMAR.
    pub const fn rmrr_count(&self) -> usize {
        self.rmrrs
    }

    fn index_of(&self, base: PhysAddr) -> Option<usize> {
        self.slots.iter().position(|s| s.unit.base() == base)
    }

    /// The unit that translates requests of `bdf` (VT-d §8.3): the DRHD of `bdf`'s segment
    /// whose device scopes name it (an endpoint scope resolving to it, or a bridge scope
    /// resolving to it or to the bridge whose secondary bus it is on), else the segment's
    /// INCLUDE_PCI_ALL DRHD. `None` when no DRHD covers it (the function is not translated).
    ///
    /// `dmar` must be the table [`new`](Self::new) was given (units are matched by register
    /// base). `secondary_bus` gives a bridge's secondary bus number, as for
    /// [`DeviceScope::resolve`](crate::firmware::acpi::DeviceScope::resolve); scopes it cannot
    /// resolve name nothing.
    ///
    /// A bridge scope covers everything below the bridge; only the bridge's secondary bus is
    /// matched here (a function two bridges further down needs its subordinate range, which
    /// `secondary_bus` does not give).
    pub fn unit_for(
        &self,
        dmar: &Dmar<'_>,
        bdf: Bdf,
        mut secondary_bus: impl FnMut(Bdf) -> Option<u8>,
    ) -> Option<usize> {
        let mut catch_all = None;
        for structure in dmar.structures() {
            let Ok(RemappingStructure::Drhd(drhd)) = structure else { continue };
            if drhd.segment() != bdf.segment {
                continue;
            }
            let Some(index) = self.index_of(drhd.register_base()) else { continue };
            if drhd.include_pci_all() {
                // Its scopes list only IOAPICs and HPETs; it covers what the others leave.
                catch_all.get_or_insert(index);
            } else if scopes_name(drhd.scopes(), bdf, &mut secondary_bus) {
                return Some(index);
            }
        }
        catch_all
    }

    /// Identity-maps every RMRR of `dmar` (VT-d §8.4) for every function its scopes name, in
    /// the RMRR domain of that function's unit (see the module documentation), and attaches the
    /// function to it: legacy context entry, or scalable-mode PASID entry for PASID 0
    /// (RID_PASID) with second-stage translation, first-stage when the unit offers only that.
    /// The range is rounded out to 4 KiB and mapped read/write with the largest pages the unit
    /// supports; overlapping RMRRs share their pages. Every change is flushed before the call
    /// returns.
    ///
    /// Call it after [`new`](Self::new) and before [`enable_translation`](Self::enable_translation).
    /// Returns how many endpoint or bridge scopes were skipped because `secondary_bus` could not
    /// resolve their path (a device firmware lists that is not present). A named function that
    /// no unit covers is [`Error::NotFound`]; more than [`MAX_RMRR_DEVICES`] bindings is
    /// [`Error::CapacityExceeded`]. On error nothing counts as prepared.
    pub fn prepare_rmrr<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        dmar: &Dmar<'_>,
        mut secondary_bus: impl FnMut(Bdf) -> Option<u8>,
    ) -> Result<usize> {
        let rmrrs =
            dmar.structures().filter(|s| matches!(s, Ok(RemappingStructure::Rmrr(_)))).count();
        if rmrrs != self.rmrrs {
            // CAST: a count of structures in a table of at most 4 GiB.
            return Err(Error::InvalidField {
                what: "DMAR given to prepare_rmrr (RMRR count differs)",
                value: rmrrs as u64,
            });
        }
        self.prepared = false;
        let haw = dmar.host_address_width();
        let mut skipped = 0;
        for structure in dmar.structures() {
            let RemappingStructure::Rmrr(rmrr) = structure? else { continue };
            let range = RmrrRange::from_rmrr(rmrr.base(), rmrr.limit())?;
            if range.len().is_none() {
                return Err(Error::AddressOverflow { base: range.first.0, size: u64::MAX });
            }
            for scope in rmrr.scopes() {
                let scope = scope?;
                if !matches!(scope.kind(), DeviceScopeKind::Endpoint | DeviceScopeKind::Bridge) {
                    continue;
                }
                let Ok(bdf) = scope.resolve(&mut secondary_bus) else {
                    skipped += 1;
                    continue;
                };
                let index =
                    self.unit_for(dmar, bdf, &mut secondary_bus).ok_or(Error::NotFound {
                        what: "VT-d unit for an RMRR device (no DRHD covers it)",
                    })?;
                self.bind(platform, index, bdf, range, haw)?;
            }
        }
        self.prepared = true;
        Ok(skipped)
    }

    /// Maps `range` in unit `index`'s RMRR domain (creating it) and attaches `bdf` to it.
    fn bind<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        index: usize,
        bdf: Bdf,
        range: RmrrRange,
        haw: u32,
    ) -> Result<()> {
        if self.bound.iter().any(|d| d.bdf == bdf && d.range == range) {
            return Ok(());
        }
        if self.bound.is_full() {
            return Err(Error::CapacityExceeded {
                what: "VT-d RMRR device bindings",
                capacity: MAX_RMRR_DEVICES,
            });
        }
        let slot = self.slots.get_mut(index).ok_or(Error::NotFound { what: "VT-d unit index" })?;
        if slot.rmrr.is_none() {
            slot.rmrr = Some(RmrrDomain::new(platform, &mut slot.unit, haw)?);
        }
        let Some(domain) = slot.rmrr.as_mut() else {
            return Err(Error::NotFound { what: "VT-d RMRR domain" });
        };
        let did = domain.did;
        let pasid0 = Pasid::new(0)?;
        let unit = &mut slot.unit;
        let translation = match &mut domain.table {
            RmrrTable::Second(table) => {
                map_identity(platform, unit, table, range, FlushScope::Iotlb)?;
                PasidTranslation::SecondStage { root: table.root(), levels: table.levels() }
            }
            RmrrTable::First(table) => {
                map_identity(platform, unit, table, range, FlushScope::PasidIotlb(pasid0))?;
                PasidTranslation::FirstStage { root: table.root(), levels: table.levels() }
            }
        };
        let owed = match (unit.mode(), translation) {
            (TableMode::Legacy, PasidTranslation::SecondStage { root, levels }) => {
                unit.attach_legacy(platform, bdf, did, root, levels)?
            }
            (TableMode::Scalable, translation) => {
                unit.attach_pasid(platform, bdf, pasid0, did, translation)?
            }
            (TableMode::Legacy, _) => {
                return Err(Error::Unsupported {
                    what: "VT-d first-stage table on a legacy-mode unit",
                    value: 0,
                });
            }
        };
        unit.flush_tables(platform, owed)?;
        self.bound.push(RmrrDevice { bdf, unit: index, did, range }).map_err(|_| {
            Error::CapacityExceeded {
                what: "VT-d RMRR device bindings",
                capacity: MAX_RMRR_DEVICES,
            }
        })
    }

    /// Every (function, RMRR) binding [`prepare_rmrr`](Self::prepare_rmrr) made, in DMAR order.
    /// A function named by several RMRRs appears once per range.
    pub fn rmrr_devices(&self) -> &[RmrrDevice] {
        &self.bound
    }

    /// The first RMRR range `bdf` is bound to, if any: such a function must not be moved to a
    /// domain that lacks the identity map of every range [`rmrr_devices`](Self::rmrr_devices)
    /// lists for it (VT-d §8.4).
    pub fn requires_rmrr(&self, bdf: Bdf) -> Option<RmrrRange> {
        self.bound.iter().find(|d| d.bdf == bdf).map(|d| d.range)
    }

    /// Whether [`prepare_rmrr`](Self::prepare_rmrr) completed.
    pub const fn rmrr_prepared(&self) -> bool {
        self.prepared
    }

    /// Turns DMA remapping on in every unit (GCMD.TE, VT-d §10.4.4), in DRHD order.
    ///
    /// Refuses with [`Error::RmrrNotPrepared`], changing nothing, when the DMAR has RMRRs and
    /// [`prepare_rmrr`](Self::prepare_rmrr) did not complete: their devices would fault on the
    /// DMA firmware keeps doing (VT-d §8.4). A unit that fails stops the loop; the units before
    /// it translate.
    pub fn enable_translation<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<()> {
        if self.rmrrs > 0 && !self.prepared {
            return Err(Error::RmrrNotPrepared { rmrrs: self.rmrrs });
        }
        for slot in &mut self.slots {
            slot.unit.set_translation(platform, true)?;
        }
        Ok(())
    }
}

/// Whether one of `scopes` names `bdf` (see [`Remapping::unit_for`]).
fn scopes_name(
    scopes: DeviceScopes<'_>,
    bdf: Bdf,
    secondary_bus: &mut impl FnMut(Bdf) -> Option<u8>,
) -> bool {
    for scope in scopes {
        let Ok(scope) = scope else { return false };
        let Ok(named) = scope.resolve(&mut *secondary_bus) else { continue };
        let hit = match scope.kind() {
            DeviceScopeKind::Endpoint => named == bdf,
            DeviceScopeKind::Bridge => named == bdf || secondary_bus(named) == Some(bdf.bus),
            _ => false,
        };
        if hit {
            return true;
        }
    }
    false
}

impl RmrrDomain {
    /// Allocates a domain ID on `unit` and an empty table in the format its mode and
    /// capabilities allow.
    fn new<P: Platform + ?Sized>(platform: &P, unit: &mut Unit, haw: u32) -> Result<Self> {
        let (cap, ecap) = (unit.capability(), unit.extended_capability());
        let did = unit.allocate_domain_id()?;
        let table = match unit.mode() {
            TableMode::Scalable if !ecap.slts() && ecap.flts() => {
                // 4 levels: 5 would need CAP.FS5LP and an RMRR above 2^48 is not seen.
                IoPageTable::new(
                    platform,
                    X86FirstStage::new(),
                    4,
                    PageSizes::from_vtd_first_stage(cap.fs1gp()),
                )
                .map(RmrrTable::First)
            }
            TableMode::Scalable if !ecap.slts() => Err(Error::Unsupported {
                what: "VT-d ECAP.SLTS/FLTS (no translation for an RMRR domain)",
                value: ecap.0,
            }),
            _ => second_stage_levels(cap.sagaw()).and_then(|levels| {
                IoPageTable::new(
                    platform,
                    VtdSecondStage::new(),
                    levels,
                    PageSizes::from_vtd_sllps(cap.sllps()),
                )
                .map(RmrrTable::Second)
            }),
        };
        let mut table = match table {
            Ok(t) => t,
            Err(e) => {
                // Nothing refers to the ID yet.
                let _ = unit.release_domain_id(did);
                return Err(e);
            }
        };
        let coherent = match unit.mode() {
            TableMode::Legacy => ecap.coherent(),
            TableMode::Scalable => ecap.smpwc(),
        };
        let phys_bits = u8::try_from(haw).unwrap_or(u8::MAX);
        match &mut table {
            RmrrTable::Second(t) => configure(t, did, coherent, phys_bits),
            RmrrTable::First(t) => configure(t, did, coherent, phys_bits),
        }
        Ok(Self { did, table })
    }
}

fn configure<F: PageTableFormat>(
    table: &mut IoPageTable<F>,
    did: u16,
    coherent: bool,
    phys_bits: u8,
) {
    table.set_domain(u32::from(did));
    table.set_coherent(coherent);
    table.set_phys_bits(phys_bits);
}

/// Second-stage levels from CAP.SAGAW (§11.4.2: bit 1 39-bit/3-level, bit 2 48-bit/4-level,
/// bit 3 57-bit/5-level): 4 when offered, else 5, else 3.
fn second_stage_levels(sagaw: u8) -> Result<u8> {
    [(2, 4), (3, 5), (1, 3)]
        .into_iter()
        .find(|&(bit, _)| sagaw & (1 << bit) != 0)
        .map(|(_, levels)| levels)
        .ok_or(Error::Unsupported {
            what: "VT-d CAP.SAGAW (no 3-, 4- or 5-level second stage)",
            value: u64::from(sagaw),
        })
}

/// Identity-maps `range` (IOVA == physical, read/write) in `table`, skipping the pages already
/// mapped (an overlapping RMRR of the same domain), and flushes what each map owes on `unit`.
/// A page already mapped elsewhere than to itself is [`Error::AlreadyMapped`].
fn map_identity<P: Platform + ?Sized, F: PageTableFormat>(
    platform: &P,
    unit: &mut Unit,
    table: &mut IoPageTable<F>,
    range: RmrrRange,
    scope: FlushScope,
) -> Result<()> {
    let mut at = range.first.0;
    let last = range.last.0;
    loop {
        if let Some((phys, _, _)) = table.translate(Iova(at)) {
            if phys.0 != at {
                return Err(Error::AlreadyMapped { iova: at });
            }
        } else {
            // The run of unmapped pages from `at`; `map` picks the largest pages in it.
            let mut end = at;
            while let Some(next) = end.checked_add(GRANULE).filter(|&n| n <= last) {
                if table.translate(Iova(next)).is_some() {
                    break;
                }
                end = next;
            }
            let pending =
                table.map(platform, Iova(at), PhysAddr(at), end - at + GRANULE, Perms::RW)?;
            unit.flush(platform, pending, scope)?;
            at = end;
        }
        if at.saturating_add(GRANULE - 1) >= last {
            return Ok(());
        }
        at += GRANULE;
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec as StdVec;

    use super::*;
    use crate::addr::RequesterId;
    use crate::sim::vtd::{self, Config, Memory, RemappingUnit, SimPlatform, TranslationKind};

    const GFX: Bdf = Bdf { segment: 0, bus: 0, devfn: 2 << 3 };
    const NIC: Bdf = Bdf { segment: 0, bus: 0, devfn: 3 << 3 };
    const USB: Bdf = Bdf { segment: 0, bus: 0, devfn: 4 << 3 };
    const RMRR_BASE: u64 = 0x000e_0000;
    const RMRR_LIMIT: u64 = 0x000f_ffff;
    const SECOND_BASE: PhysAddr = PhysAddr(0xfed9_1000);

    fn rid(bdf: Bdf) -> RequesterId {
        bdf.routing_id()
    }

    fn structure(kind: u16, fixed: &[u8], scopes: &[StdVec<u8>]) -> StdVec<u8> {
        let len = 4 + fixed.len() + scopes.iter().map(StdVec::len).sum::<usize>();
        let mut s = kind.to_le_bytes().to_vec();
        s.extend_from_slice(&u16::try_from(len).unwrap().to_le_bytes());
        s.extend_from_slice(fixed);
        scopes.iter().for_each(|sc| s.extend_from_slice(sc));
        s
    }

    /// A device scope: 1 endpoint, 2 bridge, 3 IOAPIC.
    fn scope(kind: u8, start_bus: u8, path: &[(u8, u8)]) -> StdVec<u8> {
        let mut s = vec![kind, u8::try_from(6 + 2 * path.len()).unwrap(), 0, 0, 0, start_bus];
        path.iter().for_each(|&(d, f)| s.extend_from_slice(&[d, f]));
        s
    }

    fn endpoint(bdf: Bdf) -> StdVec<u8> {
        scope(1, bdf.bus, &[(bdf.dev(), bdf.func())])
    }

    fn drhd(include_all: bool, segment: u16, base: PhysAddr, scopes: &[StdVec<u8>]) -> StdVec<u8> {
        let mut fixed = vec![u8::from(include_all), 0];
        fixed.extend_from_slice(&segment.to_le_bytes());
        fixed.extend_from_slice(&base.0.to_le_bytes());
        structure(0, &fixed, scopes)
    }

    fn rmrr(base: u64, limit: u64, scopes: &[StdVec<u8>]) -> StdVec<u8> {
        let mut fixed = vec![0, 0, 0, 0];
        fixed.extend_from_slice(&base.to_le_bytes());
        fixed.extend_from_slice(&limit.to_le_bytes());
        structure(1, &fixed, scopes)
    }

    /// A DMAR (48-bit HAW) holding `structures`, checksum fixed.
    fn dmar(structures: &[StdVec<u8>]) -> StdVec<u8> {
        let mut body = vec![47, 0];
        body.extend_from_slice(&[0; 10]);
        structures.iter().for_each(|s| body.extend_from_slice(s));
        let mut t = b"DMAR".to_vec();
        t.extend_from_slice(&u32::try_from(36 + body.len()).unwrap().to_le_bytes());
        t.push(1);
        t.push(0);
        t.extend_from_slice(b"BOCHS BXPC    ");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"BXPC");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&body);
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = sum.wrapping_neg();
        t
    }

    /// One INCLUDE_PCI_ALL unit at the sim's base and one RMRR for 00:02.0.
    fn one_unit_dmar() -> StdVec<u8> {
        dmar(&[
            drhd(true, 0, vtd::DEFAULT_BASE, &[scope(3, 0xff, &[(0, 0)])]),
            rmrr(RMRR_BASE, RMRR_LIMIT, &[endpoint(GFX)]),
        ])
    }

    fn no_bridges(_: Bdf) -> Option<u8> {
        None
    }

    /// Every page of the RMRR translates to itself for `bdf`, writes included; the pages just
    /// outside fault.
    fn assert_identity(model: &RemappingUnit, bdf: Bdf, first: u64, last: u64) {
        assert_pages(model, bdf, first, last);
        assert!(model.translate(rid(bdf), None, first - 0x1000, false).is_err(), "below the RMRR");
        assert!(model.translate(rid(bdf), None, last + 1, false).is_err(), "above the RMRR");
    }

    /// Every page of `first..=last` translates to itself for `bdf`, writes included.
    fn assert_pages(model: &RemappingUnit, bdf: Bdf, first: u64, last: u64) {
        let mut page = first;
        while page < last {
            for offset in [0u64, 0x8, 0xff8] {
                let t = model.translate(rid(bdf), None, page + offset, true).unwrap();
                assert_eq!(t.phys, page + offset, "IOVA {:#x}", page + offset);
            }
            page += 0x1000;
        }
    }

    fn rmrr_maps_identity(config: Config, policy: ModePolicy, kind: TranslationKind) {
        let (p, model) = vtd::pair(config);
        let bytes = one_unit_dmar();
        let table = Dmar::parse(&bytes).unwrap();
        let mut r = Remapping::<2>::new(&p, &table, policy).unwrap();
        assert_eq!((r.len(), r.rmrr_count()), (1, 1));
        assert_eq!(r.prepare_rmrr(&p, &table, no_bridges).unwrap(), 0);
        assert!(model.gsts() & (1 << 31) == 0, "translation still off after prepare_rmrr");
        r.enable_translation(&p).unwrap();
        assert!(r.unit(0).unwrap().translation_enabled());
        assert_identity(&model, GFX, RMRR_BASE, RMRR_LIMIT);
        let t = model.translate(rid(GFX), None, RMRR_BASE, false).unwrap();
        assert_eq!((t.kind, t.did), (kind, r.rmrr_domain(0)));
        // A device the RMRR does not name has no mapping there.
        assert!(model.translate(rid(NIC), None, RMRR_BASE, true).is_err());
        let range = RmrrRange { first: PhysAddr(RMRR_BASE), last: PhysAddr(RMRR_LIMIT) };
        assert_eq!(r.requires_rmrr(GFX), Some(range));
        assert_eq!(r.requires_rmrr(NIC), None);
        assert_eq!(
            r.rmrr_devices(),
            &[RmrrDevice { bdf: GFX, unit: 0, did: r.rmrr_domain(0).unwrap(), range }]
        );
        assert!(model.errors().is_empty(), "{:?}", model.errors());
    }

    #[test]
    fn legacy_rmrr_is_identity_mapped_for_its_device_only() {
        rmrr_maps_identity(Config::qemu_legacy(), ModePolicy::Auto, TranslationKind::SecondStage);
    }

    #[test]
    fn scalable_second_stage_rmrr_is_identity_mapped() {
        rmrr_maps_identity(
            Config::qemu_scalable_second_stage(),
            ModePolicy::Auto,
            TranslationKind::SecondStage,
        );
    }

    #[test]
    fn scalable_first_stage_only_unit_maps_the_rmrr_first_stage() {
        rmrr_maps_identity(
            Config::qemu_scalable_first_stage(),
            ModePolicy::Auto,
            TranslationKind::FirstStage,
        );
    }

    #[test]
    fn forcing_legacy_on_a_scalable_unit() {
        let (p, _model) = vtd::pair(Config::qemu_scalable_second_stage());
        let bytes = one_unit_dmar();
        let table = Dmar::parse(&bytes).unwrap();
        let r = Remapping::<1>::new(&p, &table, ModePolicy::ForceLegacy).unwrap();
        assert_eq!(r.unit(0).unwrap().mode(), TableMode::Legacy);
        let r2 = {
            let (p, _m) = vtd::pair(Config::qemu_scalable_second_stage());
            Remapping::<1>::new(&p, &table, ModePolicy::Auto).unwrap().unit(0).unwrap().mode()
        };
        assert_eq!(r2, TableMode::Scalable);
    }

    #[test]
    fn enabling_without_prepare_rmrr_is_refused() {
        let (p, model) = vtd::pair(Config::qemu_legacy());
        let bytes = one_unit_dmar();
        let table = Dmar::parse(&bytes).unwrap();
        let mut r = Remapping::<1>::new(&p, &table, ModePolicy::Auto).unwrap();
        assert_eq!(r.enable_translation(&p), Err(Error::RmrrNotPrepared { rmrrs: 1 }));
        assert!(!r.unit(0).unwrap().translation_enabled());
        assert_eq!(model.gsts() & (1 << 31), 0);
        // A DMAR that is not the one brought up (no RMRR) does not count as prepared.
        let other = dmar(&[drhd(true, 0, vtd::DEFAULT_BASE, &[])]);
        let other = Dmar::parse(&other).unwrap();
        assert!(r.prepare_rmrr(&p, &other, no_bridges).is_err());
        assert_eq!(r.enable_translation(&p), Err(Error::RmrrNotPrepared { rmrrs: 1 }));
        // Without RMRRs there is nothing to prepare.
        let (p, model) = vtd::pair(Config::qemu_legacy());
        let mut r = Remapping::<1>::new(&p, &other, ModePolicy::Auto).unwrap();
        r.enable_translation(&p).unwrap();
        assert!(r.unit(0).unwrap().translation_enabled());
        assert!(
            model.translate(rid(GFX), None, RMRR_BASE, false).is_err(),
            "blocked: no context entry"
        );
        assert!(model.errors().is_empty(), "{:?}", model.errors());
    }

    /// A platform with a legacy unit at the default base and a scalable one at [`SECOND_BASE`].
    fn two_units() -> (SimPlatform, RemappingUnit, RemappingUnit) {
        let memory = Memory::new();
        let p = SimPlatform::new(&memory);
        let a = RemappingUnit::new(&memory, Config::qemu_legacy());
        let b = RemappingUnit::new(&memory, Config::qemu_scalable_second_stage());
        p.attach(vtd::DEFAULT_BASE, &a);
        p.attach(SECOND_BASE, &b);
        (p, a, b)
    }

    #[test]
    fn more_drhds_than_capacity_is_a_typed_error() {
        let (p, _, _) = two_units();
        let bytes = dmar(&[
            drhd(false, 0, vtd::DEFAULT_BASE, &[endpoint(GFX)]),
            drhd(true, 0, SECOND_BASE, &[]),
        ]);
        let table = Dmar::parse(&bytes).unwrap();
        assert_eq!(
            Remapping::<1>::new(&p, &table, ModePolicy::Auto).unwrap_err(),
            Error::CapacityExceeded { what: "VT-d remapping units (DMAR DRHDs)", capacity: 1 }
        );
    }

    #[test]
    fn every_drhd_comes_up_and_scoped_units_win_over_include_pci_all() {
        let (p, a, b) = two_units();
        // Unit 0 names 00:02.0 and the bridge 00:1c.0 (secondary bus 3); unit 1 takes the rest
        // of segment 0. One RMRR names a device of each unit, a second overlaps the first for
        // 00:02.0 and 03:00.0 (behind the bridge, a two-hop path).
        let bytes = dmar(&[
            drhd(false, 0, vtd::DEFAULT_BASE, &[endpoint(GFX), scope(2, 0, &[(0x1c, 0)])]),
            drhd(true, 0, SECOND_BASE, &[scope(3, 0xff, &[(0, 0)])]),
            rmrr(RMRR_BASE, RMRR_LIMIT, &[endpoint(GFX), endpoint(USB)]),
            rmrr(0x000f_0000, 0x0010_ffff, &[scope(1, 0, &[(0x1c, 0), (0, 0)])]),
        ]);
        let table = Dmar::parse(&bytes).unwrap();
        let bridge = Bdf { segment: 0, bus: 0, devfn: 0x1c << 3 };
        let behind = Bdf { segment: 0, bus: 3, devfn: 0 };
        let secondary = |b: Bdf| (b == bridge).then_some(3);

        let mut r = Remapping::<4>::new(&p, &table, ModePolicy::Auto).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.unit(0).unwrap().mode(), TableMode::Legacy);
        assert_eq!(r.unit(1).unwrap().mode(), TableMode::Scalable);
        assert_eq!(a.root_table(), Some(r.unit(0).unwrap().root_table().0));
        assert_eq!(b.root_table(), Some(r.unit(1).unwrap().root_table().0 | 1 << 10));
        assert_eq!((r.include_pci_all(0), r.include_pci_all(1)), (Some(false), Some(true)));

        assert_eq!(r.unit_for(&table, GFX, secondary), Some(0));
        assert_eq!(r.unit_for(&table, bridge, secondary), Some(0));
        assert_eq!(r.unit_for(&table, behind, secondary), Some(0));
        assert_eq!(r.unit_for(&table, USB, secondary), Some(1));
        assert_eq!(r.unit_for(&table, NIC, secondary), Some(1));
        // Without the bridge's bus number, bus 3 belongs to the catch-all unit.
        assert_eq!(r.unit_for(&table, behind, no_bridges), Some(1));
        assert_eq!(r.unit_for(&table, Bdf { segment: 1, ..GFX }, secondary), None);

        assert_eq!(r.prepare_rmrr(&p, &table, secondary).unwrap(), 0);
        r.enable_translation(&p).unwrap();
        assert!(r.units().all(Unit::translation_enabled));
        assert_eq!(r.rmrr_devices().len(), 3);
        assert_eq!(
            r.rmrr_devices().iter().map(|d| (d.bdf, d.unit)).collect::<StdVec<_>>(),
            [(GFX, 0), (USB, 1), (behind, 0)]
        );

        // Each RMRR device is translated by its own unit only.
        assert_identity(&b, USB, RMRR_BASE, RMRR_LIMIT);
        // 03:00.0 shares unit 0's RMRR domain with 00:02.0, so it reaches both ranges.
        assert_pages(&a, behind, RMRR_BASE, 0x10_ffff);
        assert!(a.translate(rid(behind), None, RMRR_BASE - 0x1000, false).is_err());
        assert!(a.translate(rid(behind), None, 0x11_0000, false).is_err());
        assert!(
            b.translate(rid(GFX), None, RMRR_BASE, false).is_err(),
            "unit 1 has no entry for 00:02.0"
        );
        assert!(
            a.translate(rid(USB), None, RMRR_BASE, false).is_err(),
            "unit 0 has no entry for 00:04.0"
        );
        // The shared RMRR domain of unit 0 holds both (overlapping) ranges: 00:02.0 reaches the
        // union, as documented.
        for addr in [RMRR_BASE, 0xf_f000, 0x10_0000, 0x10_f000] {
            assert_eq!(a.translate(rid(GFX), None, addr, true).unwrap().phys, addr);
        }
        assert!(a.translate(rid(GFX), None, 0x11_0000, false).is_err());
        assert_eq!(r.requires_rmrr(behind).map(|x| x.first), Some(PhysAddr(0xf_0000)));
        assert!(a.errors().is_empty(), "{:?}", a.errors());
        assert!(b.errors().is_empty(), "{:?}", b.errors());
    }

    #[test]
    fn large_rmrrs_use_large_pages_and_absent_devices_are_skipped() {
        let (p, model) = vtd::pair(Config::qemu_legacy());
        // 4 KiB below and above two 2 MiB pages; the second scope's bridge
        // (00:1c.0) is not present, so its path does not resolve.
        let (first, last) = (0x1f_f000, 0x60_0fff);
        let bytes = dmar(&[
            drhd(true, 0, vtd::DEFAULT_BASE, &[]),
            rmrr(first, last, &[endpoint(GFX), scope(1, 0, &[(0x1c, 0), (0, 0)])]),
        ]);
        let table = Dmar::parse(&bytes).unwrap();
        let mut r = Remapping::<1>::new(&p, &table, ModePolicy::Auto).unwrap();
        assert_eq!(r.prepare_rmrr(&p, &table, no_bridges).unwrap(), 1, "one scope skipped");
        r.enable_translation(&p).unwrap();
        for (addr, size) in
            [(first, 0x1000), (0x20_0000, 0x20_0000), (0x5f_f000, 0x20_0000), (0x60_0000, 0x1000)]
        {
            let t = model.translate(rid(GFX), None, addr, true).unwrap();
            assert_eq!((t.phys, t.page_size), (addr, size), "IOVA {addr:#x}");
        }
        assert_identity(&model, GFX, first, last);
        assert_eq!(r.rmrr_devices().len(), 1);
        assert!(model.errors().is_empty(), "{:?}", model.errors());
    }

    #[test]
    fn rmrr_ranges_round_out_to_pages() {
        let r = RmrrRange::from_rmrr(PhysAddr(0x1_2345), PhysAddr(0x1_5000)).unwrap();
        assert_eq!((r.first, r.last), (PhysAddr(0x1_2000), PhysAddr(0x1_5fff)));
        assert_eq!(r.len(), Some(0x4000));
        assert!(r.contains(0x1_2000) && r.contains(0x1_5fff) && !r.contains(0x1_6000));
        assert!(RmrrRange::from_rmrr(PhysAddr(0x2000), PhysAddr(0x1fff)).is_err());
        assert_eq!(RmrrRange::from_rmrr(PhysAddr(0), PhysAddr(u64::MAX)).unwrap().len(), None);
        assert_eq!(second_stage_levels(0b0110).unwrap(), 4);
        assert_eq!(second_stage_levels(0b0010).unwrap(), 3);
        assert_eq!(second_stage_levels(0b1000).unwrap(), 5);
        assert!(second_stage_levels(0).is_err());
    }
}
