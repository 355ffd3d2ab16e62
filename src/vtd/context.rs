//! Root and context tables, legacy and scalable mode (VT-d spec §9.1-§9.4), and the domain IDs
//! a unit hands out.
//!
//! # Layout
//! - Legacy root entry (§9.1): 16 bytes per bus, `lo` = context-table pointer | P.
//! - Scalable root entry (§9.2): `lo` points at the context table for devfn 0-127, `hi` at the
//!   one for devfn 128-255, each with its own present bit.
//! - Legacy context entry (§9.3): 16 bytes per devfn; `lo` = SLPTPTR | TT | FPD | P,
//!   `hi` = DID (23:8) | AW (2:0).
//! - Scalable context entry (§9.4): 32 bytes per devfn (128 per table); `val[0]` = PASID
//!   directory pointer | PDTS (11:9) | PRE | PASIDE | DTE | FPD | P, `val[1]` = RID_PASID (19:0).
//!
//! # Shadow pages
//! [`Platform`] has no physical-to-virtual translation, so the root table and every context
//! table are allocated as two contiguous pages: the table the unit walks, then a CPU-only page
//! holding the virtual address of each child (context tables under the root, PASID directories
//! under scalable context entries). The unit never reads the shadow page. Tables live as long as
//! the unit: a detach clears entries, it does not release tables.
//!
//! # Write rules (style notes §8, VT-d §6.5.3)
//! Device-visible entries are written with atomic stores: a child table is zeroed (the platform
//! hands out zeroed pages) and synced before the entry that links it, every word but the one
//! holding Present first, then that word with `Release`, then the entry is synced for
//! non-coherent units. A present entry is never rewritten in place: Present is cleared, the
//! caches are invalidated, and only then is the new entry written.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use heapless::Vec;

use crate::addr::{Pasid, PhysAddr, RequesterId};
use crate::error::{Error, Result};
use crate::hal::{PAGE_SIZE, Platform};

use super::descriptor::{self as desc, ContextCacheScope, Descriptor, Drain, PasidCacheScope};
use super::regs::{Capability, ExtendedCapability};
use super::unit::TableMode;

/// Most descriptors one table change owes.
pub const MAX_TABLE_INVALIDATIONS: usize = 4;

/// The invalidations a change to a context or PASID entry owes, in order. Hand it to
/// [`Unit::flush_tables`](super::Unit::flush_tables); until then the unit may keep using the
/// old entry from its caches. Dropping it unflushed trips a debug assertion.
#[must_use = "a context or PASID entry change is not in effect until its invalidation is issued"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableInvalidation {
    descriptors: Vec<Descriptor, MAX_TABLE_INVALIDATIONS>,
}

impl TableInvalidation {
    /// Nothing owed.
    pub const fn none() -> Self {
        Self { descriptors: Vec::new() }
    }

    pub(crate) fn push(&mut self, d: Descriptor) {
        // INVARIANT: callers push at most MAX_TABLE_INVALIDATIONS descriptors.
        let pushed = self.descriptors.push(d);
        debug_assert!(pushed.is_ok(), "TableInvalidation overflow");
    }

    /// The descriptors owed.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.descriptors.is_empty()
    }

    /// Takes the descriptors out, leaving nothing owed (the caller now owes their submission).
    pub fn take(mut self) -> Vec<Descriptor, MAX_TABLE_INVALIDATIONS> {
        core::mem::take(&mut self.descriptors)
    }
}

impl Drop for TableInvalidation {
    fn drop(&mut self) {
        debug_assert!(
            self.descriptors.is_empty(),
            "TableInvalidation dropped without a flush: {:?}",
            self.descriptors
        );
    }
}

/// The AW field for a table of `levels` levels (§9.3: 1 = 39-bit 3-level, 2 = 48-bit 4-level,
/// 3 = 57-bit 5-level), checked against CAP.SAGAW (bit `AW` set when supported).
pub fn address_width(levels: u8, cap: Capability) -> Result<u8> {
    if !(3..=5).contains(&levels) {
        return Err(Error::InvalidField {
            what: "VT-d page-table levels",
            value: u64::from(levels),
        });
    }
    let aw = levels - 2;
    if cap.sagaw() & (1 << aw) == 0 {
        return Err(Error::Unsupported {
            what: "VT-d CAP.SAGAW (page-table levels)",
            value: u64::from(cap.sagaw()),
        });
    }
    Ok(aw)
}

/// The largest AW CAP.SAGAW supports (what pass-through entries carry, as in Linux).
pub fn widest_address_width(cap: Capability) -> u8 {
    (1..=3).rev().find(|aw| cap.sagaw() & (1 << aw) != 0).unwrap_or(1)
}

fn check_table_address(addr: PhysAddr, what: &'static str) -> Result<()> {
    if !addr.is_aligned(PAGE_SIZE as u64) {
        return Err(Error::Misaligned { what, value: addr.0, align: PAGE_SIZE as u64 });
    }
    Ok(())
}

/// A legacy-mode context entry (§9.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LegacyContextEntry {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl LegacyContextEntry {
    /// Multi-level translation (TT=0) through the second-stage table at `root` with `levels`
    /// levels, tagged with domain `did`; faults are recorded (FPD=0).
    pub fn translated(root: PhysAddr, levels: u8, did: u16, cap: Capability) -> Result<Self> {
        check_table_address(root, "VT-d second-stage table root")?;
        let aw = address_width(levels, cap)?;
        Ok(Self { lo: root.0 | 1, hi: u64::from(did) << 8 | u64::from(aw) })
    }

    /// Pass-through (TT=2, needs ECAP.PT), tagged with domain `did`.
    pub fn pass_through(did: u16, cap: Capability, ecap: ExtendedCapability) -> Result<Self> {
        if !ecap.pt() {
            return Err(Error::Unsupported { what: "VT-d ECAP.PT (pass-through)", value: ecap.0 });
        }
        Ok(Self { lo: 2 << 2 | 1, hi: u64::from(did) << 8 | u64::from(widest_address_width(cap)) })
    }

    /// P.
    pub const fn present(&self) -> bool {
        self.lo & 1 != 0
    }

    /// DID.
    pub const fn did(&self) -> u16 {
        // CAST: bits 23:8.
        (self.hi >> 8) as u16
    }
}

/// A scalable-mode context entry (§9.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ScalableContextEntry(pub [u64; 4]);

impl ScalableContextEntry {
    /// Points requests from the function at the PASID directory `directory` of `2^(pdts + 7)`
    /// entries; requests without a PASID use PASID `rid_pasid` (must be 0 unless ECAP.RPS).
    /// PASIDE (PASID-tagged requests allowed) is set where the unit supports PASIDs
    /// (ECAP.PASID): whether a PASID reaches a translation is then up to its PASID entry. DTE
    /// and PRE (device-TLB, page requests) stay off, and faults are recorded (FPD=0).
    pub fn new(
        directory: PhysAddr,
        pdts: u8,
        rid_pasid: Pasid,
        ecap: ExtendedCapability,
    ) -> Result<Self> {
        check_table_address(directory, "VT-d PASID directory")?;
        if pdts > 7 {
            return Err(Error::InvalidField { what: "VT-d context PDTS", value: u64::from(pdts) });
        }
        if rid_pasid.get() != 0 && !ecap.rps() {
            return Err(Error::Unsupported {
                what: "VT-d ECAP.RPS (RID_PASID other than 0)",
                value: ecap.0,
            });
        }
        let paside = if ecap.pasid() { 1 << 3 } else { 0 };
        Ok(Self([directory.0 | u64::from(pdts) << 9 | paside | 1, u64::from(rid_pasid.get()), 0, 0]))
    }

    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

/// A table page with its CPU-only shadow page after it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shadowed {
    pub(crate) phys: PhysAddr,
    pub(crate) virt: NonNull<u8>,
}

impl Shadowed {
    pub(crate) fn alloc<P: Platform + ?Sized>(platform: &P, table_pages: usize) -> Result<Self> {
        let pages = platform.alloc_dma_pages(2 * table_pages, PAGE_SIZE)?;
        // INVARIANT: the pages stay allocated for the life of the unit (tables are never
        // released): only their addresses are kept, and `DmaPages` frees nothing when dropped.
        Ok(Self { phys: pages.phys(), virt: pages.virt() })
    }

    /// Word `i` of the hardware table.
    pub(crate) fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: callers index inside the table (bounded by the table format: at most one page
        // of 8-byte words, or the directory's pages); the memory is DMA memory owned by the unit
        // for its whole life, 8-byte aligned, and only accessed atomically by the CPU.
        unsafe { AtomicU64::from_ptr(self.virt.as_ptr().cast::<u64>().add(i)) }
    }

    /// Word `i` of the shadow page, which starts `table_pages` pages after the table.
    pub(crate) fn shadow(&self, table_pages: usize, i: usize) -> &AtomicU64 {
        // SAFETY: as in `word`: the shadow half of the same allocation, CPU-only.
        unsafe {
            AtomicU64::from_ptr(
                self.virt.as_ptr().add(table_pages * PAGE_SIZE).cast::<u64>().add(i),
            )
        }
    }

    pub(crate) fn child(&self, table_pages: usize, i: usize) -> Option<NonNull<u8>> {
        // CAST: a virtual address stored as u64.
        NonNull::new(self.shadow(table_pages, i).load(Ordering::Acquire) as usize as *mut u8)
    }

    pub(crate) fn set_child(&self, table_pages: usize, i: usize, child: NonNull<u8>) {
        // CAST: a pointer as u64 (usize is at most 64 bits on every supported target).
        self.shadow(table_pages, i).store(child.as_ptr() as usize as u64, Ordering::Release);
    }

    /// Writes `words` at word `first`: all but the first, then the first (the one holding
    /// Present) with `Release`; then makes them visible to the unit.
    pub(crate) fn write_entry<P: Platform + ?Sized>(
        &self,
        platform: &P,
        first: usize,
        words: &[u64],
    ) {
        for (i, w) in words.iter().enumerate().skip(1) {
            self.word(first + i).store(*w, Ordering::Relaxed);
        }
        self.word(first).store(words[0], Ordering::Release);
        self.sync(platform, first, words.len());
    }

    pub(crate) fn sync<P: Platform + ?Sized>(&self, platform: &P, first: usize, words: usize) {
        // SAFETY: inside the table, as `word` requires of its callers.
        let at = unsafe { self.virt.add(first * 8) };
        platform.sync_for_device(at, words * 8);
    }

    pub(crate) fn read(&self, first: usize, out: &mut [u64]) {
        for (i, w) in out.iter_mut().enumerate() {
            *w = self.word(first + i).load(Ordering::Acquire);
        }
    }
}

/// The root table and the context tables under it, in one mode.
#[derive(Debug)]
pub struct ContextTables {
    mode: TableMode,
    root: Shadowed,
}

/// Slots per context table: 256 legacy entries of 16 bytes, 128 scalable entries of 32 bytes.
const fn words_per_entry(mode: TableMode) -> usize {
    match mode {
        TableMode::Legacy => 2,
        TableMode::Scalable => 4,
    }
}

impl ContextTables {
    /// An empty root table (nothing present).
    pub(crate) fn new<P: Platform + ?Sized>(platform: &P, mode: TableMode) -> Result<Self> {
        let root = Shadowed::alloc(platform, 1)?;
        // The zeroes must be visible to the unit before RTADDR points at the table.
        platform.sync_for_device(root.virt, PAGE_SIZE);
        Ok(Self { mode, root })
    }

    /// The root table's physical address (what RTADDR gets).
    pub fn root(&self) -> PhysAddr {
        self.root.phys
    }

    /// Legacy or scalable.
    pub const fn mode(&self) -> TableMode {
        self.mode
    }

    /// Root-table word and context-table slot for `rid`.
    fn locate(&self, rid: RequesterId) -> (usize, usize) {
        let bus = usize::from(rid.bus());
        let devfn = usize::from(rid.devfn());
        match self.mode {
            TableMode::Legacy => (bus * 2, devfn),
            TableMode::Scalable => (bus * 2 + devfn / 128, devfn % 128),
        }
    }

    /// The context table for `rid`, if one is linked.
    fn table(&self, rid: RequesterId) -> Option<Shadowed> {
        let (root_word, _) = self.locate(rid);
        let virt = self.root.child(1, root_word)?;
        let phys = PhysAddr(self.root.word(root_word).load(Ordering::Acquire) & !0xfff);
        Some(Shadowed { phys, virt })
    }

    /// The context table for `rid`, allocated, zeroed and linked from the root entry if needed.
    /// A root entry going from not present to present owes no invalidation (Linux issues none
    /// either): the unit walks it on the next context-cache miss.
    fn table_or_alloc<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        rid: RequesterId,
    ) -> Result<Shadowed> {
        if let Some(t) = self.table(rid) {
            return Ok(t);
        }
        let (root_word, _) = self.locate(rid);
        let t = Shadowed::alloc(platform, 1)?;
        // The zeroed table must be visible before the entry linking it.
        platform.sync_for_device(t.virt, PAGE_SIZE);
        self.root.set_child(1, root_word, t.virt);
        self.root.word(root_word).store(t.phys.0 | 1, Ordering::Release);
        self.root.sync(platform, root_word, 1);
        Ok(t)
    }

    /// The raw context entry for `rid` (two or four words; zero if no table).
    pub fn entry(&self, rid: RequesterId) -> [u64; 4] {
        let mut out = [0u64; 4];
        if let Some(t) = self.table(rid) {
            let (_, slot) = self.locate(rid);
            let n = words_per_entry(self.mode);
            t.read(slot * n, &mut out[..n]);
        }
        out
    }

    /// Writes a context entry that is not present now. Errors with [`Error::EntryState`] if it
    /// is (the caller must clear and invalidate first).
    fn write<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        rid: RequesterId,
        words: &[u64],
    ) -> Result<()> {
        debug_assert_eq!(words.len(), words_per_entry(self.mode));
        if self.entry(rid)[0] & 1 != 0 {
            return Err(Error::EntryState {
                what: "VT-d context entry",
                rid: rid.0,
                present: true,
            });
        }
        let t = self.table_or_alloc(platform, rid)?;
        let (_, slot) = self.locate(rid);
        t.write_entry(platform, slot * words.len(), words);
        Ok(())
    }

    /// Writes a legacy context entry (not present now).
    pub(crate) fn write_legacy<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        rid: RequesterId,
        e: LegacyContextEntry,
    ) -> Result<()> {
        self.write(platform, rid, &[e.lo, e.hi])
    }

    /// Writes a scalable context entry (not present now).
    pub(crate) fn write_scalable<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        rid: RequesterId,
        e: ScalableContextEntry,
    ) -> Result<()> {
        self.write(platform, rid, &e.0)
    }

    /// Clears Present of `rid`'s context entry (the rest stays until the entry is rewritten),
    /// returning the entry as it was, or `None` if it was not present.
    pub(crate) fn clear<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        rid: RequesterId,
    ) -> Option<[u64; 4]> {
        let old = self.entry(rid);
        if old[0] & 1 == 0 {
            return None;
        }
        let t = self.table(rid)?;
        let (_, slot) = self.locate(rid);
        let first = slot * words_per_entry(self.mode);
        t.word(first).store(old[0] & !1, Ordering::Release);
        t.sync(platform, first, 1);
        Some(old)
    }

    /// The CPU-side address of the PASID directory recorded for `rid` (scalable mode).
    pub(crate) fn directory(&self, rid: RequesterId) -> Option<NonNull<u8>> {
        let t = self.table(rid)?;
        let (_, slot) = self.locate(rid);
        t.child(1, slot)
    }

    /// Records the CPU-side address of `rid`'s PASID directory (scalable mode), allocating the
    /// context table if needed.
    pub(crate) fn set_directory<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        rid: RequesterId,
        dir: NonNull<u8>,
    ) -> Result<()> {
        let t = self.table_or_alloc(platform, rid)?;
        let (_, slot) = self.locate(rid);
        t.set_child(1, slot, dir);
        Ok(())
    }
}

/// What a legacy context entry change owes (§6.5.3.3, Table "Guidance to software for
/// invalidations", context-entry rows): context-cache device-selective with the old DID, then a
/// domain-selective IOTLB invalidation of the old DID (the paging-structure caches with it).
/// Device-TLBs are not enabled by this driver yet (DTE/TT=1 never set).
pub(crate) fn legacy_context_invalidation(
    old_did: u16,
    rid: RequesterId,
    cap: Capability,
) -> Result<TableInvalidation> {
    let mut inv = TableInvalidation::none();
    inv.push(desc::context_cache(ContextCacheScope::Device {
        did: old_did,
        sid: rid,
        function_mask: 0,
    })?);
    inv.push(desc::iotlb_domain(old_did, Drain::supported(cap)));
    Ok(inv)
}

/// What a scalable context entry change owes (§6.5.3.3, scalable-mode context-entry rows):
/// context-cache device-selective, then the PASID cache and IOTLB of every domain the device's
/// PASID entries used. This driver does not track those DIDs per device, so the PASID-cache and
/// IOTLB invalidations are global: correct, and detach is rare.
pub(crate) fn scalable_context_invalidation(
    rid: RequesterId,
    cap: Capability,
) -> Result<TableInvalidation> {
    let mut inv = TableInvalidation::none();
    inv.push(desc::context_cache(ContextCacheScope::Device {
        did: 0,
        sid: rid,
        function_mask: 0,
    })?);
    inv.push(desc::pasid_cache(PasidCacheScope::Global));
    inv.push(desc::iotlb_global(Drain::supported(cap)));
    Ok(inv)
}

/// Domain IDs of one unit: a fixed-size bitmap over the CAP.ND count.
///
/// The bitmap (up to 65536 bits, 8 KiB) lives in a page run from the platform rather than in
/// the [`Unit`](super::Unit), so that a unit stays small enough to move on a hypervisor stack.
///
/// DID 0 is never handed out. With CAP.CM set the unit tags cached not-present entries with
/// DID 0, so the specification reserves it (§6.2.2.1, and the DID field descriptions in §9.3
/// and §9.6); Linux reserves it on every unit and uses 0 as "no DID", as this driver does. In
/// scalable mode §6.2.3.1 asks that first-stage and pass-through PASID entries use DIDs
/// different from second-stage ones; the caller chooses which DIDs go where.
#[derive(Debug)]
pub struct DomainIds {
    bits: NonNull<u64>,
    count: u32,
}

impl DomainIds {
    /// Every DID below `count` (clamped to 16..=65536) free but 0.
    pub fn new<P: Platform + ?Sized>(platform: &P, count: u32) -> Result<Self> {
        let count = count.clamp(16, 65536);
        let bytes = (count as usize).div_ceil(8);
        let pages = platform.alloc_dma_pages(bytes.div_ceil(PAGE_SIZE), PAGE_SIZE)?;
        // INVARIANT: the pages (zeroed) belong to this value for the life of the unit; only the
        // pointer is kept (`DmaPages` frees nothing when dropped).
        let ids = Self { bits: pages.virt().cast(), count };
        ids.word(0).fetch_or(1, Ordering::Relaxed);
        Ok(ids)
    }

    fn words(&self) -> usize {
        (self.count as usize).div_ceil(64)
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < self.words());
        // SAFETY: `i < words()`, so the word lies inside the pages allocated in `new` (at least
        // count/8 bytes), which are 8-byte aligned, owned by this value, and CPU-only.
        unsafe { AtomicU64::from_ptr(self.bits.as_ptr().add(i)) }
    }

    /// How many DIDs the unit supports.
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The lowest free DID, now allocated.
    pub fn allocate(&mut self) -> Result<u16> {
        for i in 0..self.words() {
            let w = self.word(i).load(Ordering::Relaxed);
            if w != u64::MAX {
                let bit = w.trailing_ones();
                // CAST: i < 1024, bit < 64.
                let did = i as u32 * 64 + bit;
                if did >= self.count {
                    break;
                }
                self.word(i).store(w | 1 << bit, Ordering::Relaxed);
                // CAST: did < count <= 65536.
                return Ok(did as u16);
            }
        }
        Err(Error::CapacityExceeded { what: "VT-d domain IDs", capacity: self.count as usize })
    }

    /// Whether `did` is allocated (DID 0, reserved, is not).
    pub fn is_allocated(&self, did: u16) -> bool {
        did != 0
            && u32::from(did) < self.count
            && self.word(usize::from(did) / 64).load(Ordering::Relaxed) & (1 << (did % 64)) != 0
    }

    /// Checks that `did` is allocated.
    pub fn check(&self, did: u16) -> Result<()> {
        if self.is_allocated(did) {
            Ok(())
        } else {
            Err(Error::InvalidDomainId { did: u32::from(did), supported: self.count })
        }
    }

    /// Returns `did` to the pool. The caller has detached everything tagged with it and
    /// invalidated its caches.
    pub fn release(&mut self, did: u16) -> Result<()> {
        self.check(did)?;
        self.word(usize::from(did) / 64).fetch_and(!(1 << (did % 64)), Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Capability = Capability(0x00d2_008c_222f_0606);
    const ECAP: ExtendedCapability = ExtendedCapability(0x0000_4900_80f0_0f4a);

    // Independent encodings: VT-d §9.3/§9.4 figures and Linux drivers/iommu/intel/iommu.h
    // (context_set_present: lo |= 1; context_set_translation_type: lo |= (tt & 3) << 2;
    // context_set_address_width: hi |= aw & 7; context_set_domain_id: hi |= (did & 0xffff) << 8;
    // CONTEXT_TT_MULTI_LEVEL 0, CONTEXT_TT_PASS_THROUGH 2; context_pdts(pds) ((pds & 7) << 9)).
    const CONTEXT_TT_PASS_THROUGH: u64 = 2;
    const fn context_tt(tt: u64) -> u64 {
        (tt & 3) << 2
    }
    const fn context_aw(aw: u64) -> u64 {
        aw & 7
    }
    const fn context_did(did: u64) -> u64 {
        (did & 0xffff) << 8
    }
    const fn context_pdts(pds: u64) -> u64 {
        (pds & 7) << 9
    }

    #[test]
    fn legacy_context_entry_encoding() {
        let e = LegacyContextEntry::translated(PhysAddr(0x1234_5000), 4, 42, CAP).unwrap();
        assert_eq!((e.lo, e.hi), (0x1234_5000 | 1, context_did(42) | context_aw(2)));
        assert_eq!(e.did(), 42);
        let e = LegacyContextEntry::translated(PhysAddr(0x8000), 3, 1, CAP).unwrap();
        assert_eq!(e.hi, context_did(1) | context_aw(1));
        // 5-level: SAGAW bit 3 is clear on QEMU.
        assert!(matches!(
            LegacyContextEntry::translated(PhysAddr(0x8000), 5, 1, CAP),
            Err(Error::Unsupported { .. })
        ));
        assert!(LegacyContextEntry::translated(PhysAddr(0x8800), 4, 1, CAP).is_err());
        let e = LegacyContextEntry::pass_through(7, CAP, ExtendedCapability(0x0f4a)).unwrap();
        assert_eq!(
            (e.lo, e.hi),
            (1 | context_tt(CONTEXT_TT_PASS_THROUGH), context_did(7) | context_aw(2))
        );
        assert!(LegacyContextEntry::pass_through(7, CAP, ExtendedCapability(0x0f0a)).is_err());
    }

    #[test]
    fn scalable_context_entry_encoding() {
        // ECAP has PASID (bit 40), so PASIDE (bit 3) is set.
        let e =
            ScalableContextEntry::new(PhysAddr(0x7000), 2, Pasid::new(0).unwrap(), ECAP).unwrap();
        assert_eq!(e.0, [0x7000 | context_pdts(2) | 1 << 3 | 1, 0, 0, 0]);
        // RID_PASID other than 0 needs ECAP.RPS (bit 49).
        assert!(
            ScalableContextEntry::new(PhysAddr(0x7000), 2, Pasid::new(5).unwrap(), ECAP).is_err()
        );
        let rps = ExtendedCapability(ECAP.0 | 1 << 49);
        assert_eq!(
            ScalableContextEntry::new(PhysAddr(0x7000), 0, Pasid::new(5).unwrap(), rps).unwrap().0
                [1],
            5
        );
        // PASIDE (bit 3, §9.4) follows ECAP.PASID (bit 40).
        let no_pasid = ExtendedCapability(ECAP.0 & !(1 << 40));
        let e = ScalableContextEntry::new(PhysAddr(0x7000), 2, Pasid::new(0).unwrap(), no_pasid);
        assert_eq!(e.unwrap().0[0], 0x7000 | context_pdts(2) | 1);
    }

    #[test]
    fn domain_ids() {
        let p = crate::vtd::testfake::FakeVtd::new(0, 0);
        let mut d = DomainIds::new(&p, 16).unwrap();
        assert!(!d.is_allocated(0));
        let got: std::vec::Vec<u16> = (0..15).map(|_| d.allocate().unwrap()).collect();
        assert_eq!(got, (1..16).collect::<std::vec::Vec<u16>>());
        assert!(matches!(d.allocate(), Err(Error::CapacityExceeded { capacity: 16, .. })));
        d.release(7).unwrap();
        assert_eq!(d.allocate(), Ok(7));
        assert!(d.release(0).is_err());
        assert!(d.check(16).is_err());
        let mut big = DomainIds::new(&p, 65536).unwrap();
        assert_eq!(big.count(), 65536);
        for _ in 0..65535 {
            big.allocate().unwrap();
        }
        assert!(big.is_allocated(65535) && big.allocate().is_err());
    }
}
