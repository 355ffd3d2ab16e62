//! What a change to translation structures owes the hardware.

use heapless::Vec;

use crate::hal::{DmaPages, Platform};

/// Most distinct ranges one pending value tracks before it widens to a whole-domain flush.
pub const MAX_RANGES: usize = 8;
/// Most emptied table pages one pending value holds before they are released.
pub const MAX_FREED: usize = 32;

/// A range of IOVAs whose translations changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InvalidationRange {
    /// First IOVA (page-aligned).
    pub start: u64,
    /// Bytes (a multiple of 4 KiB).
    pub len: u64,
    /// Only leaf entries changed (no table page was removed), so paging-structure caches
    /// above the leaves need not be invalidated (VT-d IH hint; SMMUv3 TLBI Leaf).
    pub leaf_only: bool,
}

/// The invalidations a change owes, and the table pages it emptied. Pass it to the owning
/// unit's flush; dropping it unflushed is a bug the compiler warns about, and in debug builds
/// a panic in tests.
#[must_use = "a translation change is not in effect until its invalidation is issued"]
#[derive(Debug, Default)]
pub struct PendingInvalidation {
    /// Domain (VT-d domain ID, SMMUv3 ASID or VMID) whose caches hold the old translations.
    pub domain: u32,
    /// Ranges to invalidate, merged where adjacent.
    pub ranges: Vec<InvalidationRange, MAX_RANGES>,
    /// More ranges than fit: invalidate the whole domain instead.
    pub whole_domain: bool,
    /// Page-table pages the change emptied, released after the invalidation completes.
    pub freed: Vec<DmaPages, MAX_FREED>,
    /// Pages that did not fit `freed` and were leaked rather than released early (counted so
    /// the leak is visible; it cannot happen with the sizes this crate uses for one call).
    pub leaked_pages: usize,
}

impl PendingInvalidation {
    /// Nothing pending yet, for `domain`.
    pub const fn new(domain: u32) -> Self {
        Self { domain, ranges: Vec::new(), whole_domain: false, freed: Vec::new(), leaked_pages: 0 }
    }

    /// Whether there is nothing to invalidate.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && !self.whole_domain && self.freed.is_empty()
    }

    /// Records that `[start, start + len)` changed.
    pub fn add(&mut self, start: u64, len: u64, leaf_only: bool) {
        if len == 0 || self.whole_domain {
            return;
        }
        if let Some(last) = self.ranges.last_mut()
            && last.start + last.len == start
        {
            last.len += len;
            last.leaf_only &= leaf_only;
            return;
        }
        if self.ranges.push(InvalidationRange { start, len, leaf_only }).is_err() {
            self.ranges.clear();
            self.whole_domain = true;
        }
    }

    /// Holds an emptied table page until the invalidation completes.
    pub fn free_after_flush(&mut self, page: DmaPages) {
        if self.freed.push(page).is_err() {
            // Never release early: a page-walk cache may still hold it. `DmaPages` has no
            // `Drop`, so letting it go leaks the pages rather than freeing them.
            self.leaked_pages += 1;
        }
    }

    /// Merges `other` (same domain) into `self`, so one operation's changes share one flush.
    pub fn merge(&mut self, mut other: PendingInvalidation) {
        self.whole_domain |= other.whole_domain;
        for r in other.ranges.iter() {
            self.add(r.start, r.len, r.leaf_only);
        }
        while let Some(page) = other.freed.pop() {
            self.free_after_flush(page);
        }
        self.leaked_pages += other.leaked_pages;
        other.ranges.clear();
        core::mem::forget(other);
    }

    /// Called by a unit's flush once the hardware confirmed the invalidation: releases the
    /// emptied pages. Consumes the value.
    ///
    /// # Safety
    /// The invalidation of every range (and, when pages were freed, of the paging-structure
    /// caches) has completed on every unit that may have cached these tables.
    pub unsafe fn complete<P: Platform + ?Sized>(mut self, platform: &P) {
        while let Some(page) = self.freed.pop() {
            // SAFETY: the caller guarantees no hardware can still walk the page.
            unsafe { platform.free_dma_pages(page) };
        }
        self.ranges.clear();
        core::mem::forget(self);
    }
}

impl Drop for PendingInvalidation {
    fn drop(&mut self) {
        // An unflushed change is a driver bug: in tests make it loud. In production the pages
        // leak (never reused while a walk cache may hold them).
        debug_assert!(
            self.is_empty(),
            "PendingInvalidation dropped without a flush: {:?}",
            self.ranges
        );
        // `freed` drops its `DmaPages` without freeing them (no `Drop`): leaked, never reused.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_ranges_merge_and_overflow_widens() {
        let mut p = PendingInvalidation::new(7);
        p.add(0x1000, 0x1000, true);
        p.add(0x2000, 0x1000, false);
        assert_eq!(
            p.ranges.as_slice(),
            &[InvalidationRange { start: 0x1000, len: 0x2000, leaf_only: false }]
        );
        for i in 0..MAX_RANGES as u64 {
            p.add(0x10_0000 * (i + 2), 0x1000, true);
        }
        assert!(p.whole_domain && p.ranges.is_empty());
        p.whole_domain = false; // settled for the test
    }
}
