//! The I/O page-table engine: a multi-level radix table over 4 KiB granule tables (512 8-byte
//! entries per page), generic over the entry [format](PageTableFormat).
//!
//! The engine knows the tree (levels, indices, page sizes, allocation, splitting, freeing, the
//! invalidations a change owes); a format knows only how one entry is encoded. The VT-d formats
//! are in [`vtd`]; the Arm VMSAv8-64 stage 1/2 formats fit the same trait (their page and block
//! descriptors differ by level, which [`PageTableFormat::leaf`] is given).
//!
//! # Levels and sizes
//! Level 1 holds 4 KiB leaves, level 2 covers 2 MiB per entry, level 3 1 GiB, level 4 512 GiB,
//! level 5 256 TiB; the root is at level `levels`. A table of `levels` levels translates
//! `12 + 9 * levels` bits of IOVA (VT-d §3.6/§3.7: 39, 48, 57 bits). [`IoPageTable::map`] uses
//! the largest leaf that the format, the hardware's supported sizes, the IOVA alignment, the
//! physical alignment and the remaining length all allow.
//!
//! # Device-visible memory
//! Entries are written with 64-bit atomic stores; an entry that makes something present is
//! stored with `Release` after everything it points to was written (a new table is filled, or
//! left zero, before its parent entry is stored). On non-coherent units (VT-d ECAP.C = 0 for
//! legacy mode, ECAP.SMPWC = 0 for scalable mode) every changed entry is pushed out with
//! [`Platform::sync_for_device`].
//!
//! Calls take `&mut self`: one caller at a time per table; locking is the hypervisor's.
//!
//! # Shadow pages
//! The [`Platform`] offers no physical-to-virtual translation, so a table at level 2 or above is
//! allocated as two contiguous pages: the hardware table and, after it, a CPU-only page with the
//! virtual address of each child table. Level-1 tables (the bulk of a table tree) are one page.
//!
//! # Freed tables
//! An unmap that empties a table page unlinks it and hands it to the returned
//! [`PendingInvalidation`]; it is released only when the flush completed. A pending value holds
//! at most [`MAX_FREED`] pages, so an unmap stops pruning when it is full: the emptied tables that
//! did not fit stay linked (all entries not present, which is a valid table) and are pruned by a
//! later unmap over their range, reused by a later map, or released by [`IoPageTable::destroy`].
//!
//! # Errors never lose an invalidation
//! When a call fails after it changed entries (the platform ran out of memory in the middle of a
//! map or of a split), the changes already made are undone where possible and what they owe the
//! hardware is kept in the table: the next successful call's pending value includes it, or the
//! caller takes it at once with [`IoPageTable::take_deferred`].

pub mod arm;
pub mod vtd;

#[cfg(test)]
mod tests;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{Iova, PhysAddr};
use crate::error::{Error, Result};
use crate::hal::{DmaPages, PAGE_SIZE, Platform};
use crate::iommu::invalidation::{MAX_FREED, PendingInvalidation};

pub use arm::{Arm64Stage1, Arm64Stage2};
pub use vtd::{VtdSecondStage, X86FirstStage};

/// Entries in one table page.
pub const ENTRIES: usize = 512;
/// The granule: 4 KiB.
pub const GRANULE: u64 = 4096;
/// Bits 51:12: where every format here keeps the output address of an entry.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Access permissions of a mapping.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Perms(u8);

impl Perms {
    /// No access.
    pub const NONE: Self = Self(0);
    /// Device reads.
    pub const READ: Self = Self(1);
    /// Device writes.
    pub const WRITE: Self = Self(2);
    /// Device instruction fetches (execute requests, PCIe PASID prefix Execute Requested).
    pub const EXECUTE: Self = Self(4);
    /// Read and write.
    pub const RW: Self = Self(3);

    /// Both sets of permissions.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every permission of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no permission is granted.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits (1 read, 2 write, 4 execute).
    pub const fn bits(self) -> u8 {
        self.0
    }
}

/// A set of page sizes (a bit per size, like Linux's `pgsize_bitmap`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PageSizes(u64);

impl PageSizes {
    /// 4 KiB pages only.
    pub const SIZE_4K: Self = Self(1 << 12);
    /// 2 MiB pages.
    pub const SIZE_2M: Self = Self(1 << 21);
    /// 1 GiB pages.
    pub const SIZE_1G: Self = Self(1 << 30);
    /// 4 KiB, 2 MiB and 1 GiB.
    pub const ALL: Self = Self((1 << 12) | (1 << 21) | (1 << 30));

    /// Sizes from the raw bit set (bit `n` is a page of `1 << n` bytes).
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The raw bit set.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Both sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Sizes in both sets.
    #[must_use]
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// Whether a page of `size` bytes is in the set.
    pub const fn contains_size(self, size: u64) -> bool {
        size.is_power_of_two() && self.0 & size != 0
    }

    /// Second-stage sizes from VT-d CAP.SLLPS (§11.4.2: bit 0 = 2 MiB, bit 1 = 1 GiB); 4 KiB is
    /// always supported.
    pub const fn from_vtd_sllps(sllps: u8) -> Self {
        let mut bits = 1 << 12;
        if sllps & 1 != 0 {
            bits |= 1 << 21;
        }
        if sllps & 2 != 0 {
            bits |= 1 << 30;
        }
        Self(bits)
    }

    /// First-stage sizes (VT-d §3.6): 4 KiB and 2 MiB always, 1 GiB when CAP.FS1GP is set.
    pub const fn from_vtd_first_stage(fs1gp: bool) -> Self {
        if fs1gp { Self::ALL } else { Self((1 << 12) | (1 << 21)) }
    }
}

/// What one entry means, as a format decodes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pte {
    /// Not present: translations through it fault.
    Absent,
    /// Points to the next-level table.
    Table(PhysAddr),
    /// A leaf: the output address (bits below the page size may hold attribute bits and are
    /// masked by the engine) and its permissions.
    Leaf {
        /// Output address of the page.
        phys: PhysAddr,
        /// Permissions granted.
        perms: Perms,
    },
}

/// An entry format: how one 8-byte entry of a 4 KiB-granule table is encoded.
///
/// A format is a value, so it carries the per-domain choices that shape entries (snoop, execute
/// support, memory attributes); the engine stores it and asks it for every entry.
pub trait PageTableFormat {
    /// Name for logs.
    const NAME: &'static str;
    /// Fewest levels a table of this format may have.
    const MIN_LEVELS: u8;
    /// Most levels a table of this format may have.
    const MAX_LEVELS: u8;
    /// Whether IOVAs are sign-extended from the top translated bit (x86 canonical addresses);
    /// otherwise they must be below `2^iova_bits`.
    const CANONICAL: bool;
    /// Leaf sizes the format can encode at all.
    const LEAF_SIZES: PageSizes;
    /// Whether a large leaf may be replaced in place by a table with the same translations
    /// (a partial unmap). True for VT-d, where the unit may use the old or the new entry until
    /// the invalidation, and both agree on every address that stays mapped. An Arm format sets
    /// it from SMMU_IDR3.BBML: without it a block-to-table change needs break-before-make, and
    /// such a partial unmap is refused.
    const SPLIT_IN_PLACE: bool = true;

    /// Whether this format value allows the in-place split; [`Self::SPLIT_IN_PLACE`] unless the
    /// answer depends on the hardware (the Arm formats carry SMMU_IDR3.BBML).
    fn split_in_place(&self) -> bool {
        Self::SPLIT_IN_PLACE
    }

    /// Checks that `perms` can be expressed (x86 has no write-only page; execute may need a
    /// capability). Called once per map before anything changes.
    fn check_perms(&self, perms: Perms) -> Result<()>;
    /// The entry at `level` (2 or above) pointing to a table at `table`.
    fn table(&self, table: PhysAddr, level: u8) -> u64;
    /// The leaf entry at `level` mapping `phys` (aligned to the level's page size) with `perms`.
    fn leaf(&self, phys: PhysAddr, perms: Perms, level: u8) -> u64;
    /// Decodes an entry read from a table at `level`.
    fn decode(&self, entry: u64, level: u8) -> Pte;
}

/// Counts of what the table did, for benchmarks and leak checks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PageTableStats {
    /// Table pages allocated (the root included; a shadow page is not counted separately).
    pub tables_allocated: u64,
    /// Table pages handed to a pending invalidation to be released after the flush.
    pub tables_freed: u64,
    /// Entries stored to device-visible tables (present or not present).
    pub entries_written: u64,
    /// Large pages split into a next-level table by a partial unmap.
    pub splits: u64,
}

impl PageTableStats {
    fn since(self, before: Self) -> Self {
        Self {
            tables_allocated: self.tables_allocated - before.tables_allocated,
            tables_freed: self.tables_freed - before.tables_freed,
            entries_written: self.entries_written - before.entries_written,
            splits: self.splits - before.splits,
        }
    }
}

/// One table page: the hardware table and, for levels >= 2, the shadow page after it.
#[derive(Clone, Copy)]
struct Node {
    phys: PhysAddr,
    virt: NonNull<u8>,
}

/// Bytes of IOVA one entry at `level` covers.
const fn level_size(level: u8) -> u64 {
    1u64 << (12 + 9 * (level as u32 - 1))
}

/// Index of `iova` in a table at `level`.
const fn index(iova: u64, level: u8) -> usize {
    // CAST: masked to 9 bits.
    ((iova >> (12 + 9 * (level as u32 - 1))) & 0x1ff) as usize
}

/// DMA pages a table at `level` takes: the shadow page only above level 1.
const fn node_pages(level: u8) -> usize {
    if level >= 2 { 2 } else { 1 }
}

/// The span of entries one walk step changed in one table page, `lo..hi`.
#[derive(Clone, Copy)]
struct Dirty {
    lo: usize,
    hi: usize,
}

impl Dirty {
    const NONE: Self = Self { lo: ENTRIES, hi: 0 };
}

/// Bookkeeping of one unmap walk.
struct UnmapState {
    /// First and last byte to invalidate (widened to a split large page).
    inv_first: u64,
    inv_last: u64,
    /// A leaf was cleared, a table was unlinked, or a large page was split.
    changed: bool,
    /// A table was unlinked or a large page split: paging-structure caches must go too.
    structural: bool,
}

/// A multi-level I/O page table in DMA memory.
///
/// The table owns its pages. Dropping it without [`destroy`](Self::destroy) leaks them (never
/// releases memory hardware may still walk).
pub struct IoPageTable<F: PageTableFormat> {
    format: F,
    root: DmaPages,
    levels: u8,
    leaf_sizes: PageSizes,
    iova_bits: u8,
    phys_bits: u8,
    coherent: bool,
    domain: u32,
    live_tables: usize,
    stats: PageTableStats,
    last_op: PageTableStats,
    deferred: PendingInvalidation,
}

impl<F: PageTableFormat> core::fmt::Debug for IoPageTable<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoPageTable")
            .field("format", &F::NAME)
            .field("root", &self.root.phys())
            .field("levels", &self.levels)
            .field("live_tables", &self.live_tables)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<F: PageTableFormat> IoPageTable<F> {
    /// Creates an empty table of `levels` levels and allocates its root.
    ///
    /// `leaf_sizes` are the sizes the hardware supports (for VT-d second stage
    /// [`PageSizes::from_vtd_sllps`]); they are narrowed to what the format encodes and to sizes
    /// reachable by splitting (a 1 GiB size without 2 MiB is dropped: a partial unmap could not
    /// split it). 4 KiB is always used. The table starts non-coherent (see
    /// [`set_coherent`](Self::set_coherent)), with a 52-bit host address width and domain 0.
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        format: F,
        levels: u8,
        leaf_sizes: PageSizes,
    ) -> Result<Self> {
        if !(F::MIN_LEVELS..=F::MAX_LEVELS).contains(&levels) || !(1..=5).contains(&levels) {
            return Err(Error::InvalidField {
                what: "I/O page table levels",
                value: u64::from(levels),
            });
        }
        let mut sizes = leaf_sizes.intersection(F::LEAF_SIZES).union(PageSizes::SIZE_4K);
        if !sizes.contains_size(level_size(2)) {
            sizes = sizes.intersection(PageSizes::from_bits(!PageSizes::SIZE_1G.bits()));
        }
        let root = platform.alloc_dma_pages(node_pages(levels), PAGE_SIZE)?;
        let root = check_page(platform, root)?;
        // Non-coherent until told otherwise: make the zeroes visible before the root is used.
        platform.sync_for_device(root.virt(), PAGE_SIZE);
        let stats = PageTableStats { tables_allocated: 1, ..PageTableStats::default() };
        Ok(Self {
            format,
            root,
            levels,
            leaf_sizes: sizes,
            iova_bits: 12 + 9 * levels,
            phys_bits: 52,
            coherent: false,
            domain: 0,
            live_tables: 1,
            stats,
            last_op: stats,
            deferred: PendingInvalidation::new(0),
        })
    }

    /// Physical address of the root table (for the context, PASID or stream-table entry).
    pub fn root(&self) -> PhysAddr {
        self.root.phys()
    }

    /// Number of levels.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// The leaf sizes in use.
    pub fn leaf_sizes(&self) -> PageSizes {
        self.leaf_sizes
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// Declares whether the unit's table walks snoop the CPU caches (VT-d ECAP.C in legacy
    /// mode, ECAP.SMPWC in scalable mode; SMMUv3 IDR0.COHACC). When false, every changed entry
    /// is pushed out with [`Platform::sync_for_device`].
    pub fn set_coherent(&mut self, coherent: bool) {
        self.coherent = coherent;
    }

    /// Sets the domain stamped on every pending value this table returns.
    pub fn set_domain(&mut self, domain: u32) {
        self.domain = domain;
        self.deferred.domain = domain;
    }

    /// Sets the host address width (CPUID MAXPHYADDR, the HAW the VT-d entries carry): output
    /// addresses must be below `2^bits`. Clamped to 12..=52 (the entries hold bits 51:12).
    pub fn set_phys_bits(&mut self, bits: u8) {
        self.phys_bits = bits.clamp(12, 52);
    }

    /// Narrows the IOVA width below the `12 + 9 * levels` bits the levels translate (VT-d
    /// CAP.MGAW, SMMU T0SZ/IAS). Widening past the levels is ignored.
    pub fn limit_iova_bits(&mut self, bits: u8) {
        self.iova_bits = bits.clamp(12, 12 + 9 * self.levels);
    }

    /// Table pages currently owned (the root included).
    pub fn live_tables(&self) -> usize {
        self.live_tables
    }

    /// Counts since the table was created.
    pub fn stats(&self) -> PageTableStats {
        self.stats
    }

    /// Counts of the last `map`, `unmap` or `destroy` call (failed calls included).
    pub fn last_op(&self) -> PageTableStats {
        self.last_op
    }

    /// What failed calls changed and still owe the hardware (see the module documentation).
    pub fn take_deferred(&mut self) -> PendingInvalidation {
        core::mem::replace(&mut self.deferred, PendingInvalidation::new(self.domain))
    }

    /// Maps `[iova, iova + len)` to `[phys, phys + len)` with `perms`, using the largest pages
    /// that fit.
    ///
    /// Refuses ([`Error::AlreadyMapped`]) without changing anything if any page of the range is
    /// mapped: a valid-to-valid change needs break-before-make, which is `unmap`, flush, then
    /// `map`. The returned value records the range as leaf-only: not-present to present needs no
    /// invalidation except under VT-d Caching Mode (CAP.CM), where it does.
    pub fn map<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        perms: Perms,
    ) -> Result<PendingInvalidation> {
        let before = self.stats;
        let result = self.map_checked(platform, iova.0, phys.0, len, perms);
        self.last_op = self.stats.since(before);
        result
    }

    fn map_checked<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iova: u64,
        phys: u64,
        len: u64,
        perms: Perms,
    ) -> Result<PendingInvalidation> {
        self.check_iova_range(iova, len)?;
        if !phys.is_multiple_of(GRANULE) {
            return Err(Error::Misaligned {
                what: "physical address",
                value: phys,
                align: GRANULE,
            });
        }
        let phys_last =
            phys.checked_add(len - 1).ok_or(Error::AddressOverflow { base: phys, size: len })?;
        if self.phys_bits < 64 && phys_last >> self.phys_bits != 0 {
            return Err(Error::InvalidField {
                what: "physical address past the host address width",
                value: phys_last,
            });
        }
        if perms.is_empty() {
            return Err(Error::InvalidField { what: "mapping permissions (none)", value: 0 });
        }
        self.format.check_perms(perms)?;
        // Both walks start at the deepest existing table whose one entry covers the whole
        // range: above it they would only follow the same table entries, changing nothing.
        let (node, level) = self.descend(iova, iova + (len - 1));
        self.check_free(node, level, iova, len)?;

        let mut done = 0u64;
        match self.map_level(platform, node, level, iova, phys, len, perms, &mut done) {
            Ok(()) => {
                let mut pending = self.pending_for_call();
                pending.add(iova, len, true);
                Ok(pending)
            }
            Err(e) => {
                // Undo what was mapped: the leaves written tile [iova, iova + done) exactly, so
                // the unmap needs no split and cannot fail.
                let mut pending = self.pending_for_call();
                if done != 0 {
                    let undone = self.unmap_walk(platform, iova, done, &mut pending);
                    debug_assert!(undone.is_ok(), "rollback of a map needs no split");
                }
                self.deferred = pending;
                Err(e)
            }
        }
    }

    /// Unmaps `[iova, iova + len)`. Pages of the range that are not mapped are skipped.
    ///
    /// A large page only partly inside the range is split: a next-level table with the
    /// remaining translations (same output addresses and permissions) replaces it, and the whole
    /// large page is recorded for invalidation. This replaces a valid entry by a valid one
    /// without break-before-make, which the format must allow
    /// ([`PageTableFormat::SPLIT_IN_PLACE`]): the old and new translations agree on every
    /// address that stays mapped, and the unmapped part is invalidated anyway. Table pages the
    /// unmap empties are unlinked and handed to the returned value; the recorded range is then
    /// not leaf-only.
    pub fn unmap<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iova: Iova,
        len: u64,
    ) -> Result<PendingInvalidation> {
        let before = self.stats;
        let result = self.check_iova_range(iova.0, len).and_then(|()| {
            let mut pending = self.pending_for_call();
            match self.unmap_walk(platform, iova.0, len, &mut pending) {
                Ok(()) => Ok(pending),
                Err(e) => {
                    self.deferred = pending;
                    Err(e)
                }
            }
        });
        self.last_op = self.stats.since(before);
        result
    }

    /// Software walk: the physical address `iova` translates to, the permissions and the size
    /// of the page that maps it. `None` if it is not mapped or outside the table's IOVA space.
    pub fn translate(&self, iova: Iova) -> Option<(PhysAddr, Perms, u64)> {
        let iova = iova.0;
        if self.check_iova_range(iova & !(GRANULE - 1), GRANULE).is_err() {
            return None;
        }
        let mut node = self.root_node();
        // Bounded by the level count.
        for level in (1..=self.levels).rev() {
            let idx = index(iova, level);
            match self.format.decode(load(node, idx), level) {
                Pte::Absent => return None,
                Pte::Table(_) if level == 1 => return None,
                Pte::Table(phys) => node = child(node, idx, phys)?,
                Pte::Leaf { phys, perms } => {
                    let size = level_size(level);
                    let base = phys.0 & !(size - 1);
                    return Some((PhysAddr(base | (iova & (size - 1))), perms, size));
                }
            }
        }
        None
    }

    /// Tears the table down: clears every entry (so a unit still attached faults instead of
    /// walking released memory) and hands every table page, the root last, to the returned
    /// value, which asks for a whole-domain invalidation.
    ///
    /// A pending value holds [`MAX_FREED`] pages; the pages of a larger tree are counted in its
    /// `leaked_pages` and never released. Unmap the whole space first (each unmap prunes up to
    /// `MAX_FREED` tables) to release a large tree.
    pub fn destroy<P: Platform + ?Sized>(mut self, platform: &P) -> PendingInvalidation {
        let before = self.stats;
        let mut pending = self.take_deferred();
        pending.whole_domain = true;
        pending.ranges.clear();
        let root = self.root_node();
        self.destroy_level(platform, root, self.levels, &mut pending);
        self.stats.tables_freed += 1;
        self.live_tables -= 1;
        self.last_op = self.stats.since(before);
        pending.free_after_flush(self.root);
        pending
    }

    // ---- Internals --------------------------------------------------------------------------

    fn root_node(&self) -> Node {
        Node { phys: self.root.phys(), virt: self.root.virt() }
    }

    /// The pending value a call starts from: what failed calls deferred, if anything, else a
    /// fresh one (without moving the deferred value out and a fresh one in).
    #[inline]
    fn pending_for_call(&mut self) -> PendingInvalidation {
        if self.deferred.is_empty() && self.deferred.leaked_pages == 0 {
            PendingInvalidation::new(self.domain)
        } else {
            self.take_deferred()
        }
    }

    /// The deepest table (and its level) reached from the root through table entries that
    /// each cover all of `[first, last]`. Reads only; stops at anything else (an absent entry,
    /// a leaf, a table whose shadow is missing), which the walks from there handle.
    #[inline]
    fn descend(&self, first: u64, last: u64) -> (Node, u8) {
        let mut node = self.root_node();
        let mut level = self.levels;
        // Bounded by the level count.
        while level > 1 {
            let size = level_size(level);
            if first & !(size - 1) != last & !(size - 1) {
                break;
            }
            let idx = index(first, level);
            let Pte::Table(phys) = self.format.decode(load(node, idx), level) else { break };
            let Some(table) = child(node, idx, phys) else { break };
            node = table;
            level -= 1;
        }
        (node, level)
    }

    /// Validates an IOVA range: page-aligned, non-empty, no wrap, inside the IOVA space.
    fn check_iova_range(&self, iova: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Err(Error::InvalidField { what: "mapping length", value: 0 });
        }
        if !iova.is_multiple_of(GRANULE) {
            return Err(Error::Misaligned { what: "IOVA", value: iova, align: GRANULE });
        }
        if !len.is_multiple_of(GRANULE) {
            return Err(Error::Misaligned { what: "mapping length", value: len, align: GRANULE });
        }
        let last =
            iova.checked_add(len - 1).ok_or(Error::AddressOverflow { base: iova, size: len })?;
        let bits = u32::from(self.iova_bits);
        if F::CANONICAL {
            // x86 canonical: bits 63:bits-1 all equal (SDM Vol. 1 §3.3.7.1); both ends in the
            // same half, so everything between is canonical too.
            // CAST: reinterpreting the bits as signed to sign-extend.
            let sign = |a: u64| (a as i64) >> (bits - 1);
            for a in [iova, last] {
                if sign(a) != 0 && sign(a) != -1 {
                    return Err(Error::InvalidField { what: "IOVA (non-canonical)", value: a });
                }
            }
            if sign(iova) != sign(last) {
                return Err(Error::AddressOverflow { base: iova, size: len });
            }
        } else if last >> bits != 0 {
            return Err(Error::AddressOverflow { base: iova, size: len });
        }
        Ok(())
    }

    /// Fails with [`Error::AlreadyMapped`] if any page of the range is mapped. Reads only.
    fn check_free(&self, node: Node, level: u8, mut iova: u64, mut len: u64) -> Result<()> {
        let size = level_size(level);
        while len > 0 {
            let chunk = (size - (iova & (size - 1))).min(len);
            let idx = index(iova, level);
            match self.format.decode(load(node, idx), level) {
                Pte::Absent => {}
                Pte::Leaf { .. } => return Err(Error::AlreadyMapped { iova }),
                Pte::Table(_) if level == 1 => return Err(Error::AlreadyMapped { iova }),
                Pte::Table(phys) => self.check_free(
                    child(node, idx, phys).ok_or(NO_SHADOW)?,
                    level - 1,
                    iova,
                    chunk,
                )?,
            }
            iova = iova.wrapping_add(chunk);
            len -= chunk;
        }
        Ok(())
    }

    #[expect(clippy::too_many_arguments, reason = "one recursive step of the walk")]
    fn map_level<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        node: Node,
        level: u8,
        mut iova: u64,
        mut phys: u64,
        mut len: u64,
        perms: Perms,
        done: &mut u64,
    ) -> Result<()> {
        let size = level_size(level);
        let mut dirty = Dirty::NONE;
        let result = 'walk: {
            while len > 0 {
                let chunk = (size - (iova & (size - 1))).min(len);
                let idx = index(iova, level);
                let current = self.format.decode(load(node, idx), level);
                let fits =
                    chunk == size && phys & (size - 1) == 0 && self.leaf_sizes.contains_size(size);
                let table = match current {
                    Pte::Absent if fits || level == 1 => {
                        let entry = self.format.leaf(PhysAddr(phys), perms, level);
                        self.store(node, idx, entry, &mut dirty);
                        *done += chunk;
                        None
                    }
                    Pte::Absent => match self.alloc_table(platform, level - 1) {
                        Ok(table) => {
                            // The new table is zero (and synced): link it, then fill it.
                            self.link(node, level, idx, table, &mut dirty);
                            Some(table)
                        }
                        Err(e) => break 'walk Err(e),
                    },
                    // An empty table left by an unmap that could not prune it is reused.
                    Pte::Table(tphys) if level > 1 => match child(node, idx, tphys) {
                        Some(table) => Some(table),
                        None => break 'walk Err(NO_SHADOW),
                    },
                    // check_free ran first; a mapping here means the tree changed under us.
                    _ => break 'walk Err(Error::AlreadyMapped { iova }),
                };
                if let Some(table) = table
                    && let Err(e) =
                        self.map_level(platform, table, level - 1, iova, phys, chunk, perms, done)
                {
                    break 'walk Err(e);
                }
                iova = iova.wrapping_add(chunk);
                phys = phys.wrapping_add(chunk);
                len -= chunk;
            }
            Ok(())
        };
        self.sync(platform, node, dirty);
        result
    }

    fn unmap_walk<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iova: u64,
        len: u64,
        pending: &mut PendingInvalidation,
    ) -> Result<()> {
        let mut st = UnmapState {
            inv_first: iova,
            inv_last: iova + (len - 1),
            changed: false,
            structural: false,
        };
        // Start at the deepest existing table whose one entry covers the whole range (above
        // it the walk would only follow table entries), then prune back up the path the
        // tables the unmap emptied, as `unmap_level` does for the tables it recurses into.
        let last = iova + (len - 1);
        let mut path: heapless::Vec<(Node, usize), 5> = heapless::Vec::new();
        let mut node = self.root_node();
        let mut level = self.levels;
        // Bounded by the level count.
        while level > 1 {
            let size = level_size(level);
            if iova & !(size - 1) != last & !(size - 1) {
                break;
            }
            let idx = index(iova, level);
            let Pte::Table(phys) = self.format.decode(load(node, idx), level) else { break };
            let Some(table) = child(node, idx, phys) else { break };
            if path.push((node, idx)).is_err() {
                break;
            }
            node = table;
            level -= 1;
        }
        let result = self.unmap_level(platform, node, level, iova, len, &mut st, pending);
        if result.is_ok() {
            // A table that stays (not empty, or the pending value is full) keeps its parents.
            while let Some((parent, idx)) = path.pop() {
                if pending.freed.len() >= MAX_FREED || !table_is_empty(node) {
                    break;
                }
                let mut dirty = Dirty::NONE;
                self.store(parent, idx, 0, &mut dirty);
                clear_shadow(parent, idx);
                self.release(node, level, pending);
                st.changed = true;
                st.structural = true;
                self.sync(platform, parent, dirty);
                node = parent;
                level += 1;
            }
        }
        if st.changed {
            pending.add(st.inv_first, st.inv_last - st.inv_first + 1, !st.structural);
        }
        result
    }

    #[expect(clippy::too_many_arguments, reason = "one recursive step of the walk")]
    fn unmap_level<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        node: Node,
        level: u8,
        mut iova: u64,
        mut len: u64,
        st: &mut UnmapState,
        pending: &mut PendingInvalidation,
    ) -> Result<()> {
        let size = level_size(level);
        let mut dirty = Dirty::NONE;
        let result = 'walk: {
            while len > 0 {
                let chunk = (size - (iova & (size - 1))).min(len);
                let idx = index(iova, level);
                let mut current = self.format.decode(load(node, idx), level);
                if let Pte::Leaf { phys, perms } = current {
                    if chunk == size || level == 1 {
                        self.store(node, idx, 0, &mut dirty);
                        st.changed = true;
                        iova = iova.wrapping_add(chunk);
                        len -= chunk;
                        continue;
                    }
                    if !self.format.split_in_place() {
                        break 'walk Err(Error::InvalidField {
                            what: "partial unmap of a large page (needs break-before-make)",
                            value: iova,
                        });
                    }
                    // Split: the whole large page is invalidated, paging-structure caches
                    // included.
                    let base = iova & !(size - 1);
                    let leaf_phys = PhysAddr(phys.0 & !(size - 1));
                    let table = match self
                        .split(platform, node, level, idx, leaf_phys, perms, &mut dirty)
                    {
                        Ok(table) => table,
                        Err(e) => break 'walk Err(e),
                    };
                    st.inv_first = st.inv_first.min(base);
                    st.inv_last = st.inv_last.max(base + (size - 1));
                    st.changed = true;
                    st.structural = true;
                    current = Pte::Table(table.phys);
                }
                if let Pte::Table(tphys) = current
                    && level > 1
                {
                    let Some(table) = child(node, idx, tphys) else { break 'walk Err(NO_SHADOW) };
                    if let Err(e) =
                        self.unmap_level(platform, table, level - 1, iova, chunk, st, pending)
                    {
                        break 'walk Err(e);
                    }
                    // Prune the table if it is now empty and the pending value can hold it.
                    // (Even a table covered whole may keep empty sub-tables that did not fit.)
                    if pending.freed.len() < MAX_FREED && table_is_empty(table) {
                        self.store(node, idx, 0, &mut dirty);
                        clear_shadow(node, idx);
                        self.release(table, level - 1, pending);
                        st.changed = true;
                        st.structural = true;
                    }
                }
                iova = iova.wrapping_add(chunk);
                len -= chunk;
            }
            Ok(())
        };
        // Before returning, so before the caller's flush: a pruned table is released only
        // after the unlinking store reached the device and the invalidation completed.
        self.sync(platform, node, dirty);
        result
    }

    /// Replaces the large leaf at `node[idx]` (at `level`) by a table of the same translations
    /// one level down, filled and synced before it is linked.
    #[expect(clippy::too_many_arguments, reason = "one step of the walk")]
    fn split<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        node: Node,
        level: u8,
        idx: usize,
        phys: PhysAddr,
        perms: Perms,
        dirty: &mut Dirty,
    ) -> Result<Node> {
        let table = self.alloc_table(platform, level - 1)?;
        let sub = level_size(level - 1);
        let mut filled = Dirty::NONE;
        for i in 0..ENTRIES {
            // CAST: i < 512.
            let entry = self.format.leaf(PhysAddr(phys.0 + i as u64 * sub), perms, level - 1);
            self.store(table, i, entry, &mut filled);
        }
        self.sync(platform, table, filled);
        self.link(node, level, idx, table, dirty);
        self.stats.splits += 1;
        Ok(table)
    }

    /// Stores the entry for `table` (a level `level - 1` table) at `node[idx]`.
    fn link(&mut self, node: Node, level: u8, idx: usize, table: Node, dirty: &mut Dirty) {
        // The shadow is CPU-only; set it before the entry so a walk never finds a table whose
        // virtual address is unknown.
        set_shadow(node, idx, table.virt);
        let entry = self.format.table(table.phys, level);
        self.store(node, idx, entry, dirty);
    }

    /// Stores an entry, counting it and noting it for [`sync`](Self::sync).
    fn store(&mut self, node: Node, idx: usize, entry: u64, dirty: &mut Dirty) {
        store_raw(node, idx, entry);
        self.stats.entries_written += 1;
        dirty.lo = dirty.lo.min(idx);
        dirty.hi = dirty.hi.max(idx + 1);
    }

    /// Pushes the entries of `node` changed by one walk step to a non-coherent unit: one
    /// [`Platform::sync_for_device`] per table page and step, over the changed span.
    fn sync<P: Platform + ?Sized>(&self, platform: &P, node: Node, dirty: Dirty) {
        if self.coherent || dirty.lo >= dirty.hi {
            return;
        }
        platform.sync_for_device(entry_ptr(node, dirty.lo).cast(), (dirty.hi - dirty.lo) * 8);
    }

    fn alloc_table<P: Platform + ?Sized>(&mut self, platform: &P, level: u8) -> Result<Node> {
        let pages = platform.alloc_dma_pages(node_pages(level), PAGE_SIZE)?;
        let pages = check_page(platform, pages)?;
        if !self.coherent {
            // The platform zeroed the pages; make the zeroes visible before the table is linked.
            platform.sync_for_device(pages.virt(), PAGE_SIZE);
        }
        self.stats.tables_allocated += 1;
        self.live_tables += 1;
        // INVARIANT: the pages are owned by the tree from here; `release` rebuilds the handle.
        Ok(Node { phys: pages.phys(), virt: pages.virt() })
    }

    fn release(&mut self, node: Node, level: u8, pending: &mut PendingInvalidation) {
        // SAFETY: 1. `node` came from `alloc_table` with `node_pages(level)` pages, or is a
        // table of that level this tree allocated, and is released once: its parent entry and
        // shadow slot were cleared (or the whole tree is being destroyed).
        // 2. Its entries and shadow slots are zero (emptied, or cleared by `destroy_level`).
        let pages = unsafe { DmaPages::new(node.phys, node.virt, node_pages(level)) };
        pending.free_after_flush(pages);
        self.stats.tables_freed += 1;
        self.live_tables -= 1;
    }

    fn destroy_level<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        node: Node,
        level: u8,
        pending: &mut PendingInvalidation,
    ) {
        let mut dirty = Dirty::NONE;
        for idx in 0..ENTRIES {
            let raw = load(node, idx);
            if raw == 0 {
                continue;
            }
            if level > 1
                && let Pte::Table(tphys) = self.format.decode(raw, level)
            {
                // A table without its shadow cannot be walked: its pages are leaked, not freed.
                let table = child(node, idx, tphys);
                if let Some(table) = table {
                    self.destroy_level(platform, table, level - 1, pending);
                }
                clear_shadow(node, idx);
                self.store(node, idx, 0, &mut dirty);
                if let Some(table) = table {
                    self.release(table, level - 1, pending);
                }
            } else {
                self.store(node, idx, 0, &mut dirty);
            }
        }
        self.sync(platform, node, dirty);
    }
}

/// Rejects (and gives back) a platform allocation the hardware could not use as a table.
fn check_page<P: Platform + ?Sized>(platform: &P, pages: DmaPages) -> Result<DmaPages> {
    let phys = pages.phys().0;
    let virt = pages.virt().as_ptr() as usize;
    if !phys.is_multiple_of(GRANULE) || phys & !ADDR_MASK != 0 || !virt.is_multiple_of(PAGE_SIZE) {
        // SAFETY: the pages were just allocated from this platform and never linked.
        unsafe { platform.free_dma_pages(pages) };
        return Err(Error::InvalidField { what: "DMA page for an I/O page table", value: phys });
    }
    Ok(pages)
}

/// Address of entry `idx` of a table page.
fn entry_ptr(node: Node, idx: usize) -> NonNull<u64> {
    assert!(idx < ENTRIES, "entry index {idx} out of a table page");
    // SAFETY: idx < 512 keeps the offset inside the node's first page, so the add stays in
    // bounds of that allocation.
    unsafe { node.virt.cast::<u64>().add(idx) }
}

fn load(node: Node, idx: usize) -> u64 {
    // SAFETY: 1. The entry lies in a table page the tree owns while the node is reachable
    // (`entry_ptr` bounds the index).
    // 2. Table pages are 4 KiB-aligned (`check_page`), so the entry is 8-byte aligned.
    // 3. The CPU accesses table entries only atomically (never through `&`/`&mut u64`); the
    // unit may read them, or set A/D bits (first stage) with atomic updates of its own.
    unsafe { AtomicU64::from_ptr(entry_ptr(node, idx).as_ptr()) }.load(Ordering::Acquire)
}

/// Stores an entry; `Release` so that a present entry is seen after what it points to.
fn store_raw(node: Node, idx: usize, entry: u64) {
    // SAFETY: as in `load`.
    unsafe { AtomicU64::from_ptr(entry_ptr(node, idx).as_ptr()) }.store(entry, Ordering::Release);
}

fn shadow_slot(node: Node, idx: usize) -> *mut usize {
    assert!(idx < ENTRIES, "entry index {idx} out of a table page");
    // SAFETY: only called for tables at level >= 2, allocated as two pages; the shadow page is
    // the second, and `idx < 512` slots of 8 bytes fit it.
    unsafe { node.virt.as_ptr().add(PAGE_SIZE).cast::<usize>().add(idx) }
}

fn set_shadow(node: Node, idx: usize, virt: NonNull<u8>) {
    // SAFETY: the slot is inside the node's CPU-only shadow page (see `shadow_slot`), aligned,
    // and never accessed by hardware.
    unsafe { shadow_slot(node, idx).write(virt.as_ptr() as usize) };
}

fn clear_shadow(node: Node, idx: usize) {
    // SAFETY: as in `set_shadow`.
    unsafe { shadow_slot(node, idx).write(0) };
}

/// The child table linked at `node[idx]` (whose entry holds `phys`).
///
/// `link` stores the shadow of every table entry it writes and the tree is the only writer of
/// table entries, so a table entry always has a shadow; `None` (never expected) is reported by
/// the callers as [`Error::Hardware`] rather than trusted, so corrupted state cannot panic.
fn child(node: Node, idx: usize, phys: PhysAddr) -> Option<Node> {
    // SAFETY: as in `set_shadow`; the slot was written by `link` before the entry.
    let virt = unsafe { shadow_slot(node, idx).read() };
    let virt = NonNull::new(virt as *mut u8)?;
    Some(Node { phys: PhysAddr(phys.0 & ADDR_MASK), virt })
}

/// The error for a table entry whose CPU-side shadow is missing (see [`child`]).
const NO_SHADOW: Error =
    Error::Hardware { what: "I/O page table entry without its table shadow", value: 0 };

fn table_is_empty(node: Node) -> bool {
    (0..ENTRIES).all(|i| load(node, i) == 0)
}

#[cfg(test)]
impl<F: PageTableFormat> IoPageTable<F> {
    /// The raw entries on the walk of `iova`, root first, down to the leaf or the absent entry.
    fn raw_path(&self, iova: u64) -> heapless::Vec<u64, 5> {
        let mut out = heapless::Vec::new();
        let mut node = self.root_node();
        for level in (1..=self.levels).rev() {
            let idx = index(iova, level);
            let raw = load(node, idx);
            out.push(raw).unwrap();
            match self.format.decode(raw, level) {
                Pte::Table(phys) if level > 1 => match child(node, idx, phys) {
                    Some(c) => node = c,
                    None => break,
                },
                _ => break,
            }
        }
        out
    }
}
