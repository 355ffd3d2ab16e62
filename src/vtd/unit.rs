//! One VT-d remapping unit: its registers, the global command/status handshake, the root table,
//! and fault recording.

use core::time::Duration;

use crate::addr::{Bdf, Pasid, PhysAddr};
use crate::error::{Error, Result};
use crate::hal::{poll, Platform};
use crate::iommu::PendingInvalidation;
use crate::mmio::MmioRegion;

use super::context::{
    legacy_context_invalidation, scalable_context_invalidation, ContextTables, DomainIds, LegacyContextEntry,
    ScalableContextEntry, TableInvalidation,
};
use super::descriptor::{self as desc, ContextCacheScope, Drain, PasidCacheScope};
use super::fault::{FaultRecord, FaultStatus};
use super::pasid::{check_pasid, pasid_entry_invalidation, pgtt, Directory, PasidEntry, PasidTranslation, DIRECTORY_PDTS};
use super::qi::{leak, DescriptorWidth, FlushScope, InvalidationQueue};
use super::regs::{offset, Capability, ExtendedCapability, Version};

/// GCMD/GSTS bits (§11.4.4, §11.4.5): the command bit and its status bit share a position.
#[allow(missing_docs, reason = "bit names from the specification")]
pub mod gsts {
    pub const TES: u32 = 1 << 31;
    pub const RTPS: u32 = 1 << 30;
    pub const FLS: u32 = 1 << 29;
    pub const AFLS: u32 = 1 << 28;
    pub const WBFS: u32 = 1 << 27;
    pub const QIES: u32 = 1 << 26;
    pub const IRES: u32 = 1 << 25;
    pub const IRTPS: u32 = 1 << 24;
    pub const CFIS: u32 = 1 << 23;
    /// Status bits that reflect a persistent enable; a GCMD write must repeat them or it turns
    /// the feature off. The one-shot bits (RTPS, FLS, WBFS, IRTPS) must not be echoed back, or
    /// the write would repeat their command (Linux `dmar_readl(GSTS) & 0x96ffffff`).
    pub const PERSISTENT: u32 = TES | AFLS | QIES | IRES | CFIS;
}

/// RTADDR_REG translation table mode (§11.4.6): legacy or scalable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TableMode {
    /// Legacy root and context entries.
    Legacy,
    /// Scalable-mode root and context entries (needs ECAP.SMTS).
    Scalable,
}

/// How long a GCMD command may take to show in GSTS.
///
/// TIMEOUT: the specification does not bound it; hardware completes in microseconds and QEMU
/// immediately. Linux waits up to `DMAR_OPERATION_TIMEOUT`, one second, before declaring the
/// unit broken; so does this driver.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// A remapping unit, mapped and validated, with its root and context tables, PASID tables,
/// domain IDs and (once enabled) its invalidation queue.
///
/// The unit owns the tables it points the hardware at (RTADDR, IQA are written only from them,
/// style notes §8.1); changes to them return a [`TableInvalidation`] (entries) or take a
/// [`PendingInvalidation`] (page tables) that [`Unit::flush_tables`] / [`Unit::flush`] issue.
#[derive(Debug)]
pub struct Unit {
    regs: MmioRegion,
    base: PhysAddr,
    version: Version,
    cap: Capability,
    ecap: ExtendedCapability,
    tables: ContextTables,
    mode: TableMode,
    queue: Option<InvalidationQueue>,
    domains: DomainIds,
}

impl Unit {
    /// Maps the unit at `base` (a DRHD's register base and set size), reads and validates its
    /// capabilities, and installs an empty root table in `mode`: every request is then blocked
    /// (root entry not present) once translation is enabled.
    ///
    /// A unit already translating (left on by firmware or a previous boot) is first turned
    /// off, so the new root table takes effect through the documented sequence.
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        base: PhysAddr,
        register_set_size: usize,
        mode: TableMode,
    ) -> Result<Self> {
        let ptr = platform.map_mmio(base, register_set_size)?;
        // SAFETY: `Platform::map_mmio` returns a device mapping of exactly this range, valid as
        // long as the platform (its implementation-safety contract).
        let regs = unsafe { MmioRegion::new(ptr, register_set_size) };
        let version = Version(regs.read32(offset::VER));
        if regs.read32(offset::VER) == u32::MAX {
            return Err(Error::Hardware { what: "VT-d VER (all-ones: nothing answers)", value: base.0 });
        }
        let cap = Capability(regs.read64(offset::CAP));
        let ecap = ExtendedCapability(regs.read64(offset::ECAP));
        cap.validate(register_set_size)?;
        ecap.validate(register_set_size)?;
        if mode == TableMode::Scalable && !ecap.smts() {
            return Err(Error::Hardware { what: "VT-d ECAP.SMTS (scalable mode asked, not offered)", value: ecap.0 });
        }
        // One page: 256 root entries of 16 bytes (§9.1), zeroed, so nothing is present (and
        // its CPU-only shadow page, see `context`).
        let tables = ContextTables::new(platform, mode)?;
        let domains = DomainIds::new(platform, cap.domains()?)?;
        let mut unit = Self { regs, base, version, cap, ecap, tables, mode, queue: None, domains };
        if unit.translation_enabled() {
            unit.set_translation(platform, false)?;
        }
        unit.set_root_table(platform)?;
        Ok(unit)
    }

    /// Reads and validates VER, CAP and ECAP without touching anything else, so a caller can
    /// choose the table mode (and check features) before [`Unit::new`] installs a root table.
    pub fn probe<P: Platform + ?Sized>(
        platform: &P,
        base: PhysAddr,
        register_set_size: usize,
    ) -> Result<(Version, Capability, ExtendedCapability)> {
        let ptr = platform.map_mmio(base, register_set_size)?;
        // SAFETY: `Platform::map_mmio` returns a device mapping of exactly this range.
        let regs = unsafe { MmioRegion::new(ptr, register_set_size) };
        if regs.read32(offset::VER) == u32::MAX {
            return Err(Error::Hardware { what: "VT-d VER (all-ones: nothing answers)", value: base.0 });
        }
        let cap = Capability(regs.read64(offset::CAP));
        let ecap = ExtendedCapability(regs.read64(offset::ECAP));
        cap.validate(register_set_size)?;
        ecap.validate(register_set_size)?;
        Ok((Version(regs.read32(offset::VER)), cap, ecap))
    }

    /// Physical base of the register set.
    pub const fn base(&self) -> PhysAddr {
        self.base
    }
    /// VER_REG.
    pub const fn version(&self) -> Version {
        self.version
    }
    /// CAP_REG, validated.
    pub const fn capability(&self) -> Capability {
        self.cap
    }
    /// ECAP_REG, validated.
    pub const fn extended_capability(&self) -> ExtendedCapability {
        self.ecap
    }
    /// The root table's physical address.
    pub fn root_table(&self) -> PhysAddr {
        self.tables.root()
    }
    /// Legacy or scalable.
    pub const fn mode(&self) -> TableMode {
        self.mode
    }

    /// GSTS_REG.
    pub fn status(&self) -> u32 {
        self.regs.read32(offset::GSTS)
    }

    /// Whether DMA remapping is on (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        self.status() & gsts::TES != 0
    }

    /// Issues one GCMD command and waits, bounded, for GSTS to show `expect` under `mask`.
    fn command<P: Platform + ?Sized>(&self, platform: &P, set: u32, clear: u32, what: &'static str, mask: u32, expect: u32) -> Result<()> {
        let gcmd = (self.status() & gsts::PERSISTENT & !clear) | set;
        // GCMD is a 32-bit register: an 8-byte write would also hit GSTS (QEMU aborts on it).
        self.regs.write32(offset::GCMD, gcmd);
        poll(platform, what, COMMAND_TIMEOUT, || (self.status() & mask == expect).then_some(()))
    }

    /// Points the unit at the root table (RTADDR, then GCMD.SRTP and wait for GSTS.RTPS,
    /// §10.4.5). The context cache and IOTLB are then invalidated globally by
    /// [`Unit::enable_queued_invalidation`] (ECAP.ESRTPS says whether hardware does it itself).
    fn set_root_table<P: Platform + ?Sized>(&self, platform: &P) -> Result<()> {
        let smt = match self.mode {
            TableMode::Legacy => 0,
            TableMode::Scalable => 1 << 10,
        };
        // The table's zeroes were made visible to the unit when it was allocated.
        self.regs.write64(offset::RTADDR, self.tables.root().0 | smt);
        self.command(platform, gsts::RTPS, 0, "VT-d GSTS.RTPS after SRTP", gsts::RTPS, gsts::RTPS)
    }

    /// Turns DMA remapping on or off (GCMD.TE, wait for GSTS.TES, §10.4.4).
    pub fn set_translation<P: Platform + ?Sized>(&mut self, platform: &P, on: bool) -> Result<()> {
        if on {
            self.command(platform, gsts::TES, 0, "VT-d GSTS.TES set after TE", gsts::TES, gsts::TES)
        } else {
            self.command(platform, 0, gsts::TES, "VT-d GSTS.TES clear after TE=0", gsts::TES, 0)
        }
    }

    // ---- Queued invalidation (§6.5.2) ------------------------------------------------------

    /// Allocates an invalidation queue of `entries` descriptors ([`super::qi::DEFAULT_ENTRIES`]
    /// unless there is a reason), 256-bit in scalable mode and 128-bit in legacy mode, enables it
    /// (IQT = 0, IQA, GCMD.QIE and a bounded wait for GSTS.QIES, §10.4.4/§6.5.2), and then
    /// invalidates the context cache and the IOTLB globally, which the root-table pointer set by
    /// [`Unit::new`] owes. Refuses with [`Error::Unsupported`] when ECAP.QI is clear (register-
    /// based invalidation is not implemented). Enabling an enabled queue does nothing.
    ///
    /// A queue left enabled by firmware is first drained (bounded) and disabled.
    pub fn enable_queued_invalidation<P: Platform + ?Sized>(&mut self, platform: &P, entries: usize) -> Result<()> {
        if self.queue.is_some() {
            return Ok(());
        }
        if !self.ecap.qi() {
            return Err(Error::Unsupported { what: "VT-d ECAP.QI (queued invalidation)", value: self.ecap.0 });
        }
        if self.status() & gsts::QIES != 0 {
            // Disabling QIE needs an idle queue (QEMU: head == tail after a wait).
            poll(platform, "VT-d IQH == IQT before disabling firmware's queue", COMMAND_TIMEOUT, || {
                (self.regs.read64(offset::IQH) == self.regs.read64(offset::IQT)).then_some(())
            })?;
            self.command(platform, 0, gsts::QIES, "VT-d GSTS.QIES clear after QIE=0", gsts::QIES, 0)?;
        }
        let width = match self.mode {
            TableMode::Legacy => DescriptorWidth::Bits128,
            TableMode::Scalable => DescriptorWidth::Bits256,
        };
        let regs = self.regs.subregion(0, self.regs.len())?;
        let mut queue = InvalidationQueue::new(platform, regs, self.cap, self.ecap, entries, width)?;
        self.regs.write64(offset::IQT, 0);
        self.regs.write64(offset::IQA, queue.iqa());
        // On a timeout the unit may still take the queue up later: the queue's pages are then
        // leaked, never freed (dropping the queue does not return them to the platform).
        self.command(platform, gsts::QIES, 0, "VT-d GSTS.QIES after QIE", gsts::QIES, gsts::QIES)?;
        queue.reset_tail();
        queue.global(platform)?;
        self.queue = Some(queue);
        Ok(())
    }

    /// A second handle on the unit's registers, for the page request queue (which owns the
    /// PQ* and PE* registers while the unit owns the rest).
    pub(crate) fn registers(&self) -> Result<MmioRegion> {
        self.regs.subregion(0, self.regs.len())
    }

    /// The invalidation queue, once [enabled](Self::enable_queued_invalidation).
    pub fn queue(&mut self) -> Result<&mut InvalidationQueue> {
        self.queue.as_mut().ok_or(Error::NotFound { what: "VT-d invalidation queue (not enabled)" })
    }

    /// Issues the invalidations `pending` owes on this unit (see [`InvalidationQueue::flush`]),
    /// then releases the table pages it emptied. Without an enabled queue, or when the pending
    /// value names a domain ID this unit did not allocate (a page table whose
    /// `set_domain` was forgotten would otherwise flush DID 0), the pages are leaked and the
    /// call fails.
    pub fn flush<P: Platform + ?Sized>(&mut self, platform: &P, pending: PendingInvalidation, scope: FlushScope) -> Result<()> {
        let allocated = u16::try_from(pending.domain).is_ok_and(|did| self.domains.is_allocated(did));
        if !allocated && !pending.is_empty() {
            let did = pending.domain;
            leak(pending);
            return Err(Error::InvalidDomainId { did, supported: self.domains.count() });
        }
        match self.queue.as_mut() {
            Some(q) => q.flush(platform, pending, scope),
            None => {
                leak(pending);
                Err(Error::NotFound { what: "VT-d invalidation queue (not enabled)" })
            }
        }
    }

    /// Issues the invalidations a context or PASID entry change owes, as one batch.
    pub fn flush_tables<P: Platform + ?Sized>(&mut self, platform: &P, invalidation: TableInvalidation) -> Result<()> {
        let descriptors = invalidation.take();
        if descriptors.is_empty() {
            return Ok(());
        }
        self.queue()?.submit(platform, &descriptors)
    }

    // ---- Domain IDs ------------------------------------------------------------------------

    /// Allocates a domain ID (never 0, see [`DomainIds`]).
    pub fn allocate_domain_id(&mut self) -> Result<u16> {
        self.domains.allocate()
    }

    /// Returns a domain ID. The caller detached every entry tagged with it and flushed.
    pub fn release_domain_id(&mut self, did: u16) -> Result<()> {
        self.domains.release(did)
    }

    /// The domain-ID pool.
    pub const fn domain_ids(&self) -> &DomainIds {
        &self.domains
    }

    // ---- Context and PASID entries (§9.1-§9.6) ---------------------------------------------

    /// The root and context tables.
    pub const fn context_tables(&self) -> &ContextTables {
        &self.tables
    }

    fn require_mode(&self, mode: TableMode, what: &'static str) -> Result<()> {
        if self.mode != mode {
            return Err(Error::Unsupported { what, value: self.ecap.0 });
        }
        Ok(())
    }

    /// Points the function `bdf` (legacy mode) at the second-stage table `root` with `levels`
    /// levels, tagged with the allocated domain `did`.
    ///
    /// A present entry is replaced in the documented order (§6.5.3.3): Present cleared, the
    /// context cache (device-selective) and the old domain's IOTLB invalidated and waited for,
    /// then the new entry written. The returned value is what the new entry owes: nothing,
    /// unless the unit caches not-present entries (CAP.CM), when it is a device-selective
    /// context-cache invalidation for DID 0 and a domain-selective IOTLB invalidation (as Linux
    /// does).
    pub fn attach_legacy<P: Platform + ?Sized>(&mut self, platform: &P, bdf: Bdf, did: u16, root: PhysAddr, levels: u8) -> Result<TableInvalidation> {
        self.require_mode(TableMode::Legacy, "VT-d legacy context entry on a scalable-mode unit")?;
        self.domains.check(did)?;
        let entry = LegacyContextEntry::translated(root, levels, did, self.cap)?;
        self.install_legacy(platform, bdf, entry)
    }

    /// Pass-through (legacy TT=2) for `bdf`, tagged with `did`; see [`Self::attach_legacy`].
    pub fn attach_legacy_pass_through<P: Platform + ?Sized>(&mut self, platform: &P, bdf: Bdf, did: u16) -> Result<TableInvalidation> {
        self.require_mode(TableMode::Legacy, "VT-d legacy context entry on a scalable-mode unit")?;
        self.domains.check(did)?;
        let entry = LegacyContextEntry::pass_through(did, self.cap, self.ecap)?;
        self.install_legacy(platform, bdf, entry)
    }

    fn install_legacy<P: Platform + ?Sized>(&mut self, platform: &P, bdf: Bdf, entry: LegacyContextEntry) -> Result<TableInvalidation> {
        let rid = bdf.routing_id();
        let current = self.tables.entry(rid);
        if current[0] == entry.lo && current[1] == entry.hi {
            return Ok(TableInvalidation::none());
        }
        if self.tables.entry(rid)[0] & 1 != 0 {
            // Replacing a present entry needs the queue; check before touching anything.
            self.queue()?;
            if let Some(old) = self.tables.clear(platform, rid) {
                let old = LegacyContextEntry { lo: old[0], hi: old[1] };
                let inv = legacy_context_invalidation(old.did(), rid, self.cap)?;
                // On failure the entry stays not present: the device is blocked, never
                // translated through a half-invalidated entry.
                self.flush_tables(platform, inv)?;
            }
        }
        self.tables.write_legacy(platform, rid, entry)?;
        let mut owed = TableInvalidation::none();
        if self.cap.caching_mode() {
            owed.push(desc::context_cache(ContextCacheScope::Device { did: 0, sid: rid, function_mask: 0 })?);
            owed.push(desc::iotlb_domain(entry.did(), Drain::supported(self.cap)));
        }
        Ok(owed)
    }

    /// Sets the PASID entry `pasid` of the function `bdf` (scalable mode) to `translation`,
    /// tagged with the allocated domain `did`. The PASID directory, PASID table and the
    /// scalable-mode context entry (RID_PASID 0: requests without a PASID use PASID 0's entry)
    /// are created on first use.
    ///
    /// A present PASID entry is replaced as the specification guides (§6.5.3.3): Present
    /// cleared, PASID cache (PASID-selective) and the old translations (PASID-IOTLB, or IOTLB
    /// for second-stage) invalidated and waited for, then the new entry written. The returned
    /// value is what the new entries owe: nothing unless CAP.CM is set.
    pub fn attach_pasid<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        bdf: Bdf,
        pasid: Pasid,
        did: u16,
        translation: PasidTranslation,
    ) -> Result<TableInvalidation> {
        self.require_mode(TableMode::Scalable, "VT-d PASID entry on a legacy-mode unit")?;
        self.domains.check(did)?;
        check_pasid(pasid)?;
        let entry = PasidEntry::new(translation, did, self.cap, self.ecap)?;
        let rid = bdf.routing_id();
        let dir = match self.tables.directory(rid) {
            Some(virt) => Directory::from_parts(PhysAddr(self.tables.entry(rid)[0] & !0xfff), virt),
            None => {
                let d = Directory::alloc(platform)?;
                self.tables.set_directory(platform, rid, d.virt())?;
                d
            }
        };
        let current = dir.entry(pasid);
        if current == entry {
            // Same entry: nothing changes, but the context entry may have been detached.
        } else {
            if current.present() {
                self.queue()?;
                if let Some(old) = dir.clear(platform, pasid) {
                    let inv = pasid_entry_invalidation(&old, pasid, self.cap);
                    self.flush_tables(platform, inv)?;
                }
            }
            dir.write(platform, pasid, &entry, rid.0)?;
        }
        let mut owed = TableInvalidation::none();
        if self.tables.entry(rid)[0] & 1 == 0 {
            let ce = ScalableContextEntry::new(dir.phys(), DIRECTORY_PDTS, Pasid::new(0)?, self.ecap)?;
            self.tables.write_scalable(platform, rid, ce)?;
            if self.cap.caching_mode() {
                owed.push(desc::context_cache(ContextCacheScope::Device { did: 0, sid: rid, function_mask: 0 })?);
            }
        }
        if self.cap.caching_mode() && current != entry {
            owed.push(desc::pasid_cache(PasidCacheScope::Pasid(did, pasid)));
            owed.push(match entry.pgtt() {
                pgtt::SECOND_STAGE => desc::iotlb_domain(did, Drain::supported(self.cap)),
                _ => desc::pasid_iotlb_all(did, pasid),
            });
        }
        Ok(owed)
    }

    /// Clears the PASID entry `pasid` of `bdf` (scalable mode). The returned value (PASID-cache,
    /// then PASID-IOTLB or IOTLB invalidation of the old DID) must be flushed before the old
    /// translation is known to be gone.
    pub fn detach_pasid<P: Platform + ?Sized>(&mut self, platform: &P, bdf: Bdf, pasid: Pasid) -> Result<TableInvalidation> {
        self.require_mode(TableMode::Scalable, "VT-d PASID entry on a legacy-mode unit")?;
        check_pasid(pasid)?;
        let rid = bdf.routing_id();
        let Some(virt) = self.tables.directory(rid) else {
            return Ok(TableInvalidation::none());
        };
        let dir = Directory::from_parts(PhysAddr(self.tables.entry(rid)[0] & !0xfff), virt);
        Ok(match dir.clear(platform, pasid) {
            Some(old) => pasid_entry_invalidation(&old, pasid, self.cap),
            None => TableInvalidation::none(),
        })
    }

    /// Blocks the function `bdf`: clears its context entry's Present bit. The returned value
    /// must be flushed before the unit is known to stop using the old entry: legacy mode owes
    /// a device-selective context-cache and a domain-selective IOTLB invalidation of the old
    /// DID; scalable mode a device-selective context-cache, a global PASID-cache and a global
    /// IOTLB invalidation (the driver does not track every DID the PASID entries used). PASID
    /// entries stay as they are, for a later [`Self::attach_pasid`].
    pub fn detach<P: Platform + ?Sized>(&mut self, platform: &P, bdf: Bdf) -> Result<TableInvalidation> {
        let rid = bdf.routing_id();
        let Some(old) = self.tables.clear(platform, rid) else {
            return Ok(TableInvalidation::none());
        };
        match self.mode {
            TableMode::Legacy => legacy_context_invalidation(LegacyContextEntry { lo: old[0], hi: old[1] }.did(), rid, self.cap),
            TableMode::Scalable => scalable_context_invalidation(rid, self.cap),
        }
    }

    /// Points the fault event interrupt (§7.4, §11.4.10-11.4.13) at an MSI `address` with `data`
    /// and unmasks it (FECTL.IM = 0). Every register is written with a 32-bit access: they are
    /// 32-bit registers, and QEMU aborts on 8-byte writes to them. Once unmasked, a fault
    /// (PPF), an overflow (PFO) or an invalidation-queue error raises the interrupt if none was
    /// pending; a pending one (FECTL.IP) is delivered now.
    pub fn enable_fault_event(&self, data: u32, address: u64) {
        self.regs.write32(offset::FEDATA, data);
        // CAST: the two halves of the MSI address.
        self.regs.write32(offset::FEADDR, address as u32);
        self.regs.write32(offset::FEUADDR, (address >> 32) as u32);
        self.regs.write32(offset::FECTL, 0);
    }

    /// Masks the fault event interrupt (FECTL.IM = 1); faults are still recorded.
    pub fn mask_fault_event(&self) {
        self.regs.write32(offset::FECTL, 1 << 31);
    }

    /// FECTL: bit 31 IM (masked), bit 30 IP (an interrupt is pending).
    pub fn fault_event_control(&self) -> u32 {
        self.regs.read32(offset::FECTL)
    }

    /// FSTS_REG.
    pub fn fault_status(&self) -> FaultStatus {
        FaultStatus(self.regs.read32(offset::FSTS))
    }

    /// Clears the RW1C fault status bits that are set (PFO, IQE, ...), with a 32-bit write.
    pub fn clear_fault_status(&self, status: FaultStatus) {
        self.regs.write32(offset::FSTS, status.0 & FaultStatus::RW1C);
    }

    /// Number of fault recording registers.
    pub const fn fault_records(&self) -> usize {
        self.cap.fault_recording_count()
    }

    /// Fault recording register `index`, decoded, if it holds a fault.
    pub fn fault_record(&self, index: usize) -> Option<FaultRecord> {
        if index >= self.fault_records() {
            return None;
        }
        let at = self.cap.fault_recording_offset() + index * 16;
        // Read the high half first: F is there, and the low half is valid once F is seen.
        let high = self.regs.read64(at + 8);
        let low = self.regs.read64(at);
        FaultRecord::decode(low, high)
    }

    /// Clears fault recording register `index` by writing 1 to F with a 32-bit write to its top
    /// dword (§11.4.14; an 8-byte write would also rewrite the other fields).
    pub fn clear_fault_record(&self, index: usize) {
        if index < self.fault_records() {
            let at = self.cap.fault_recording_offset() + index * 16 + 12;
            self.regs.write32(at, 1 << 31);
        }
    }

    /// Reads and clears every recorded fault, handing each to `report`, then clears overflow.
    /// Returns the fault status seen before clearing. Bounded by the number of registers.
    pub fn drain_faults(&self, mut report: impl FnMut(usize, FaultRecord)) -> FaultStatus {
        let status = self.fault_status();
        for index in 0..self.fault_records() {
            if let Some(record) = self.fault_record(index) {
                report(index, record);
                self.clear_fault_record(index);
            }
        }
        self.clear_fault_status(status);
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::{DmaPages, Instant};
    use core::cell::{Cell, RefCell};
    use core::ptr::NonNull;

    /// A register file that is plain memory: GSTS never follows GCMD, as a dead unit would.
    struct DeadUnit {
        regs: RefCell<Vec<u64>>,
        pages: RefCell<Vec<Box<[u8; 8192]>>>,
        now: Cell<u64>,
    }

    // SAFETY: test double; the register file and pages are host memory that outlive the test.
    unsafe impl Platform for DeadUnit {
        fn alloc_dma_pages(&self, count: usize, _align: usize) -> Result<DmaPages> {
            // The root table and its shadow page, or the 8 KiB domain-ID bitmap (CAP.ND 6).
            assert_eq!(count, 2);
            let mut page = Box::new([0u8; 8192]);
            let ptr = NonNull::from(&mut *page).cast::<u8>();
            self.pages.borrow_mut().push(page);
            // SAFETY: the pages live in `self.pages` for the test's duration.
            Ok(unsafe { DmaPages::new(PhysAddr(0x1000), ptr, 2) })
        }
        unsafe fn free_dma_pages(&self, _pages: DmaPages) {}
        fn map_mmio(&self, _base: PhysAddr, _size: usize) -> Result<NonNull<u8>> {
            Ok(NonNull::new(self.regs.borrow_mut().as_mut_ptr()).unwrap().cast())
        }
        fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
            self.map_mmio(base, size)
        }
        fn write_barrier(&self) {}
        fn read_barrier(&self) {}
        fn now(&self) -> Instant {
            self.now.set(self.now.get() + 10_000);
            Instant(self.now.get())
        }
    }

    #[test]
    fn a_unit_that_never_answers_times_out_instead_of_hanging() {
        let mut regs = vec![0u64; 0x230 / 8];
        regs[offset::VER / 8] = 0x10;
        regs[offset::CAP / 8] = 0x00d2_008c_222f_0606;
        regs[offset::ECAP / 8] = 0x0000_0000_00f0_0f4a;
        let p = DeadUnit { regs: RefCell::new(regs), pages: RefCell::new(Vec::new()), now: Cell::new(0) };
        let err = Unit::new(&p, PhysAddr(0xfed9_0000), 0x230, TableMode::Legacy).unwrap_err();
        assert_eq!(err, Error::Timeout { what: "VT-d GSTS.RTPS after SRTP", waited_us: 1_000_000 });
        // The root table address was written before the command, in legacy mode.
        assert_eq!(p.regs.borrow()[offset::RTADDR / 8], 0x1000);
        assert_eq!(p.regs.borrow()[offset::GCMD / 8] as u32, gsts::RTPS);
    }

    #[test]
    fn a_unit_is_small_enough_to_move_on_a_stack() {
        // Tables, the queue and the domain-ID bitmap live in platform pages.
        assert!(size_of::<Unit>() <= 256, "{} bytes", size_of::<Unit>());
    }

    #[test]
    fn scalable_mode_needs_smts() {
        let mut regs = vec![0u64; 0x230 / 8];
        regs[offset::VER / 8] = 0x10;
        regs[offset::CAP / 8] = 0x00d2_008c_222f_0606;
        regs[offset::ECAP / 8] = 0x0000_0000_00f0_0f4a;
        let p = DeadUnit { regs: RefCell::new(regs), pages: RefCell::new(Vec::new()), now: Cell::new(0) };
        let err = Unit::new(&p, PhysAddr(0xfed9_0000), 0x230, TableMode::Scalable).unwrap_err();
        assert!(matches!(err, Error::Hardware { what, .. } if what.contains("SMTS")));
    }
}
