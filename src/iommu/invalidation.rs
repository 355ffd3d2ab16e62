//! What a change to translation structures owes the hardware.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use heapless::Vec;

use crate::addr::PhysAddr;
use crate::hal::{DmaPages, PAGE_SIZE, Platform};

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
    /// Page-table pages the change emptied, released after the invalidation completes
    /// (chained through the pages, so the value stays small; see [`FreedPages`]).
    pub freed: FreedPages,
    /// Pages that did not fit `freed` and were leaked rather than released early (counted so
    /// the leak is visible; it cannot happen with the sizes this crate uses for one call).
    pub leaked_pages: usize,
}

impl PendingInvalidation {
    /// Nothing pending yet, for `domain`.
    pub const fn new(domain: u32) -> Self {
        Self {
            domain,
            ranges: Vec::new(),
            whole_domain: false,
            freed: FreedPages::new(),
            leaked_pages: 0,
        }
    }

    /// Whether there is nothing to invalidate.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && !self.whole_domain && self.freed.is_empty()
    }

    /// Records that `[start, start + len)` changed.
    #[inline]
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

    /// Holds an emptied table page until the invalidation completes. The first 24 bytes of
    /// the page carry the link to the next held page meanwhile (a not-present entry in every
    /// table format; see [`FreedPages`]) and are zero again when the page is released.
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
    #[inline]
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
        // `freed` lets its pages go without freeing them (no `Drop`): leaked, never reused.
    }
}

/// A page held by a [`FreedPages`] list, as its iterator shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreedPage {
    phys: PhysAddr,
    virt: NonNull<u8>,
    count: usize,
}

impl FreedPage {
    /// Physical address of the first page.
    pub const fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// Number of pages in the run.
    pub const fn count(&self) -> usize {
        self.count
    }
}

/// Words of a held page that carry the link to the next one: its virtual address, its
/// physical address and its page count shifted left by 12.
const LINK_WORDS: usize = 3;

/// The emptied pages a pending value holds until its flush completed, chained through the
/// pages themselves, so the pending value stays a few words long however many it holds.
///
/// The first [`LINK_WORDS`] 64-bit words of each held page carry the link to the next page,
/// every word with bits 11:0 clear. Until the flush completes, the hardware may still walk a
/// held table page through a stale paging-structure cache entry; a word with bits 11:0 clear
/// is a not-present entry in every format here (x86 first stage: P, bit 0, SDM Vol. 3 §4.5;
/// VT-d second stage: R and W, bits 1:0, §9.8; Arm VMSAv8-64: Valid, bit 0, D8.3), so such a
/// walk still finds nothing present, exactly as with the zeroes the emptied table held. The
/// words are stored atomically (device-visible memory) and cleared again before the page goes
/// back to the platform, which gets it as zeroed as it was handed out.
pub struct FreedPages {
    head: Option<FreedPage>,
    len: usize,
}

impl FreedPages {
    /// No page held.
    pub const fn new() -> Self {
        Self { head: None, len: 0 }
    }

    /// Pages (runs) held.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether no page is held.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Holds `pages`, or gives them back if the list is full ([`MAX_FREED`]) or they cannot
    /// carry a link (not 4 KiB-aligned, physically or virtually).
    pub fn push(&mut self, pages: DmaPages) -> Result<(), DmaPages> {
        let phys = pages.phys().0;
        let virt = pages.virt().as_ptr() as usize;
        if self.len >= MAX_FREED
            || pages.is_empty()
            || !phys.is_multiple_of(PAGE_SIZE as u64)
            || !virt.is_multiple_of(PAGE_SIZE)
        {
            return Err(pages);
        }
        // CAST: usize is 64 bits or less on every target of this crate; `count` is shifted
        // into bits 63:12 and a run never has 2^52 pages.
        let words = match self.head {
            Some(next) => [next.virt.as_ptr() as u64, next.phys.0, (next.count as u64) << 12],
            None => [0; LINK_WORDS],
        };
        for (i, w) in words.into_iter().enumerate() {
            store_link(pages.virt(), i, w);
        }
        self.head =
            Some(FreedPage { phys: pages.phys(), virt: pages.virt(), count: pages.count() });
        self.len += 1;
        Ok(())
    }

    /// Takes the page held last, its link words cleared.
    pub fn pop(&mut self) -> Option<DmaPages> {
        if self.len == 0 {
            return None;
        }
        let page = self.head?;
        self.head = read_link(page);
        for i in 0..LINK_WORDS {
            store_link(page.virt, i, 0);
        }
        self.len -= 1;
        // SAFETY: `page` was built by `push` from a `DmaPages` whose contract (the pages are
        // mapped at `virt`, DMA-able, owned by the holder) moved to this list; it is handed
        // out once, as the list no longer reaches it.
        Some(unsafe { DmaPages::new(page.phys, page.virt, page.count) })
    }

    /// The pages held, last held first.
    pub fn iter(&self) -> impl Iterator<Item = FreedPage> + '_ {
        // Bounded: `len` links at most.
        let mut next = self.head;
        (0..self.len).map_while(move |_| {
            let page = next?;
            next = read_link(page);
            Some(page)
        })
    }
}

impl Default for FreedPages {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for FreedPages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter().map(|p| p.phys)).finish()
    }
}

/// Stores link word `i` of a held page.
fn store_link(virt: NonNull<u8>, i: usize, word: u64) {
    // SAFETY: see `link_ptr`; the CPU touches these words only atomically, the device only
    // reads them.
    unsafe { AtomicU64::from_ptr(link_ptr(virt, i)) }.store(word, Ordering::Relaxed);
}

/// Loads link word `i` of a held page.
fn load_link(virt: NonNull<u8>, i: usize) -> u64 {
    // SAFETY: as in `store_link`.
    unsafe { AtomicU64::from_ptr(link_ptr(virt, i)) }.load(Ordering::Relaxed)
}

/// Address of link word `i` (taken modulo [`LINK_WORDS`]) of a held page.
fn link_ptr(virt: NonNull<u8>, i: usize) -> *mut u64 {
    // SAFETY: `virt` is the 4 KiB-aligned start of a run of at least one page the list holds
    // (checked in `push`; the memory stays valid while it is held, by the `DmaPages`
    // contract), so words 0..LINK_WORDS are in bounds and 8-byte aligned.
    unsafe { virt.as_ptr().cast::<u64>().add(i % LINK_WORDS) }
}

/// The page held after `page`, from its link words.
fn read_link(page: FreedPage) -> Option<FreedPage> {
    let virt = load_link(page.virt, 0);
    let phys = load_link(page.virt, 1);
    let count = load_link(page.virt, 2) >> 12;
    // CAST: the words were written by `push` from a pointer and a `usize`.
    let virt = NonNull::new(virt as usize as *mut u8)?;
    Some(FreedPage { phys: PhysAddr(phys), virt, count: count as usize })
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
