//! Stream table entries (§5.2), context descriptors (§5.4), and the stream table itself (linear
//! or 2-level, §3.3) with each StreamID's context-descriptor table.
//!
//! Field positions follow the specification and were cross-checked with Linux
//! `arm-smmu-v3.h` (`STRTAB_STE_0_V`, `STRTAB_STE_0_CFG`, `STRTAB_STE_0_S1CTXPTR_MASK`,
//! `STRTAB_STE_1_S1C*`, `STRTAB_STE_1_SHCFG`, `STRTAB_STE_2_S2VMID`, `STRTAB_STE_2_VTCR`,
//! `STRTAB_STE_2_S2AA64`, `STRTAB_STE_2_S2R`, `STRTAB_STE_3_S2TTB_MASK`, `CTXDESC_CD_0_*`,
//! `CTXDESC_CD_1_TTB0_MASK`, `CTXDESC_CD_3_MAIR`, `STRTAB_L1_DESC_*`); the tests restate them.
//!
//! # Memory the SMMU reads
//! STEs and CDs are eight 64-bit words written with atomic stores: the words other than word 0
//! first, then (after a `Release` fence) word 0, which holds V. A table the SMMU may walk is
//! never left with V set over half-written words.
//!
//! # CPU-side shadows
//! The [`Platform`] offers no physical-to-virtual translation, so every STE array (the linear
//! table, or each level-2 table) is followed by a CPU-only array of one 16-byte slot per STE: the
//! virtual and physical address of that StreamID's CD table. The 2-level table's L1 array is likewise followed
//! by the virtual address of each level-2 table.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use crate::addr::{PhysAddr, StreamId};
use crate::error::{Error, Result};
use crate::hal::{DmaPages, PAGE_SIZE, Platform};

/// Bytes of one STE or CD.
pub const ENTRY_BYTES: usize = 64;
/// Bytes of one STE's CPU-only shadow slot (CD table virtual and physical address).
const SHADOW_BYTES: usize = 16;
/// Words of one STE or CD.
pub const ENTRY_WORDS: usize = 8;
/// Bits 51:4 / 51:6: where table addresses go.
const ADDR_51_4: u64 = 0x000f_ffff_ffff_fff0;
const ADDR_51_6: u64 = 0x000f_ffff_ffff_ffc0;

/// STE.Config values (bits 3:1 of word 0).
#[allow(missing_docs, reason = "the specification's encodings")]
pub mod config {
    pub const ABORT: u64 = 0b000;
    pub const BYPASS: u64 = 0b100;
    pub const S1_TRANS: u64 = 0b101;
    pub const S2_TRANS: u64 = 0b110;
    pub const NESTED: u64 = 0b111;
}

/// A stage-1 configuration: one context descriptor's worth.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stage1 {
    /// The stage-1 table root (TTB0), a [`crate::iommu::pagetable::Arm64Stage1`] table.
    pub root: PhysAddr,
    /// Its level count: 4 (48-bit input) or 3 (39-bit).
    pub levels: u8,
    /// The ASID its TLB entries are tagged with.
    pub asid: u16,
}

/// A stage-2 configuration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stage2 {
    /// The stage-2 table root (S2TTB), a [`crate::iommu::pagetable::Arm64Stage2`] table.
    pub root: PhysAddr,
    /// Its level count: 4 (SL0 = 2, IPA up to 48 bits) or 3 (SL0 = 1, 39 bits); the IPA size
    /// is capped to the SMMU's output size, so the table's IOVA width must be limited to it
    /// ([`crate::iommu::pagetable::IoPageTable::limit_iova_bits`]).
    pub levels: u8,
    /// The VMID its TLB entries are tagged with.
    pub vmid: u16,
}

/// What a StreamID's STE says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamConfig {
    /// V = 0: any transaction raises C_BAD_STE (and is aborted).
    Invalid,
    /// Config = abort: transactions are aborted silently (no event).
    Abort,
    /// Config = bypass: transactions pass untranslated.
    Bypass,
    /// Stage 1 only, through the StreamID's CD table.
    Stage1(Stage1),
    /// Stage 2 only.
    Stage2(Stage2),
    /// Stage 1 then stage 2: the CD table and stage-1 tables are IPAs translated by stage 2.
    Nested(Stage1, Stage2),
}

/// Input address bits of a table of `levels` levels with the 4 KiB granule.
const fn input_bits(levels: u8) -> u8 {
    12 + 9 * levels
}

/// The SMMU's OAS / a CD's IPS / an STE's S2PS encoding of an address size (§6.3.6).
pub fn size_encoding(bits: u8) -> Result<u64> {
    Ok(match bits {
        32 => 0,
        36 => 1,
        40 => 2,
        42 => 3,
        44 => 4,
        48 => 5,
        52 => 6,
        _ => return Err(Error::InvalidField { what: "SMMU address size", value: u64::from(bits) }),
    })
}

fn check_levels(levels: u8, what: &'static str) -> Result<()> {
    if !(3..=4).contains(&levels) {
        return Err(Error::InvalidField { what, value: u64::from(levels) });
    }
    Ok(())
}

/// Builds the eight words of an STE (§5.2).
///
/// `cd_table` is the physical address of the StreamID's CD table (stage 1 and nested), laid out
/// as `cd` says (S1CDMax = log2 of its CD count, 0 for one CD: QEMU accepts nothing else;
/// S1Fmt linear or 2-level); `oas` the SMMU's output address size in bits (for S2PS).
pub fn encode_ste(
    config: StreamConfig,
    cd_table: PhysAddr,
    cd: CdLayout,
    oas: u8,
) -> Result<[u64; 8]> {
    let s1_cd_max = cd.bits;
    let mut w = [0u64; 8];
    // Word 1 for every translating or bypassing STE: SHCFG = 0b01 (use incoming
    // shareability), as Linux does.
    const SHCFG_INCOMING: u64 = 1 << 44;
    let s1 = |w: &mut [u64; 8], s: &Stage1| -> Result<()> {
        check_levels(s.levels, "SMMU stage-1 table levels")?;
        if s1_cd_max > 20 {
            return Err(Error::InvalidField { what: "STE S1CDMax", value: u64::from(s1_cd_max) });
        }
        // S1Fmt 5:4 (0 linear, 1 2-level with 4 KiB leaf tables of 64 CDs), S1ContextPtr 51:6,
        // S1CDMax 63:59.
        let s1fmt: u64 = if cd.two_level { 1 } else { 0 };
        w[0] |= (s1fmt << 4) | (cd_table.0 & ADDR_51_6) | (u64::from(s1_cd_max) << 59);
        if s1_cd_max > 0 {
            // S1DSS (word 1 bits 1:0) = 0b10: transactions without a SubstreamID use CD 0
            // (and SubstreamID 0 itself is then illegal), as Linux does with PASIDs.
            w[1] |= 2;
        }
        // S1CIR = S1COR = 0b01 (write-back, read-allocate), S1CSH = 0b11 (inner shareable):
        // how the SMMU reads the CD table. S1STALLD 0 (QEMU refuses 1, notes §2.5).
        w[1] |= (1 << 2) | (1 << 4) | (3 << 6) | SHCFG_INCOMING;
        Ok(())
    };
    let s2 = |w: &mut [u64; 8], s: &Stage2| -> Result<()> {
        check_levels(s.levels, "SMMU stage-2 table levels")?;
        // The IPA size is what the levels translate, capped to the output size: S2T0SZ may not
        // describe more IPA bits than the SMMU's OAS (Arm ARM; QEMU answers C_BAD_STE).
        let t0sz = u64::from(64 - input_bits(s.levels).min(oas));
        // SL0 with the 4 KiB granule: 1 = start at level 1 (3 levels), 2 = level 0 (4 levels).
        let sl0: u64 = if s.levels == 4 { 2 } else { 1 };
        let ps = size_encoding(oas)?;
        // VTCR (word 2 bits 50:32): S2T0SZ 5:0, S2SL0 7:6, S2IR0 9:8 = WB, S2OR0 11:10 = WB,
        // S2SH0 13:12 = inner, S2TG 15:14 = 0 (4 KiB), S2PS 18:16.
        let vtcr = t0sz | (sl0 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (ps << 16);
        // S2AA64 (51): AArch64 tables; never 0, which QEMU 10.0.2 aborts on (notes §2.3).
        // S2R (58): record faults. S2PTW (54) only for nested: stage-1 walks to device memory
        // fault instead of being performed.
        w[2] |= u64::from(s.vmid) | (vtcr << 32) | (1 << 51) | (1 << 58);
        w[3] = s.root.0 & ADDR_51_4;
        w[1] |= SHCFG_INCOMING;
        Ok(())
    };
    let cfg = match &config {
        StreamConfig::Invalid => return Ok(w),
        StreamConfig::Abort => config::ABORT,
        StreamConfig::Bypass => {
            w[1] |= SHCFG_INCOMING;
            config::BYPASS
        }
        StreamConfig::Stage1(a) => {
            s1(&mut w, a)?;
            config::S1_TRANS
        }
        StreamConfig::Stage2(b) => {
            s2(&mut w, b)?;
            config::S2_TRANS
        }
        StreamConfig::Nested(a, b) => {
            s1(&mut w, a)?;
            s2(&mut w, b)?;
            w[2] |= 1 << 54;
            config::NESTED
        }
    };
    w[0] |= 1 | (cfg << 1);
    Ok(w)
}

/// Builds the eight words of a stage-1 context descriptor (§5.4) for `s` with the MAIR of
/// [`crate::iommu::pagetable::arm::MAIR`]; `ias` is the SMMU's output size for IPS (stage 1
/// alone) and must hold every physical address the table maps.
pub fn encode_cd(s: &Stage1, oas: u8) -> Result<[u64; 8]> {
    check_levels(s.levels, "SMMU stage-1 table levels")?;
    let mut w = [0u64; 8];
    let t0sz = u64::from(64 - input_bits(s.levels));
    let ips = size_encoding(oas)?;
    // T0SZ 5:0, TG0 7:6 = 0 (4 KiB), IR0 9:8 = WB, OR0 11:10 = WB, SH0 13:12 = inner, EPD1 30
    // (no TTB1 walks), V 31, IPS 34:32, AA64 41, R 45 (record faults: without it QEMU records
    // no translation faults, notes §2.7), A 46 (abort faulting transactions; QEMU requires it),
    // ASID 63:48.
    w[0] = t0sz
        | (1 << 8)
        | (1 << 10)
        | (3 << 12)
        | (1 << 30)
        | (1 << 31)
        | (ips << 32)
        | (1 << 41)
        | (1 << 45)
        | (1 << 46)
        | (u64::from(s.asid) << 48);
    w[1] = s.root.0 & ADDR_51_4;
    w[3] = crate::iommu::pagetable::arm::MAIR;
    Ok(w)
}

/// One STE's or CD's eight words in DMA memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry(NonNull<u64>);

impl Entry {
    fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: an `Entry` is only made (by the tables below) for 64 bytes of a table page the
        // table owns, 64-byte aligned; `i % 8` stays inside; the CPU accesses them only
        // atomically and the SMMU by DMA.
        unsafe { AtomicU64::from_ptr(self.0.as_ptr().add(i % ENTRY_WORDS)) }
    }

    /// The current words.
    pub(crate) fn read(&self) -> [u64; 8] {
        core::array::from_fn(|i| self.word(i).load(Ordering::Acquire))
    }

    /// Writes the words other than word 0, then word 0 (which holds V) after a release fence.
    pub(crate) fn write(&self, w: &[u64; 8]) {
        for (i, v) in w.iter().enumerate().skip(1) {
            self.word(i).store(*v, Ordering::Relaxed);
        }
        fence(Ordering::Release);
        self.word(0).store(w[0], Ordering::Release);
    }

    /// Writes one word alone (a single-copy-atomic 64-bit store, §3.21.3).
    pub(crate) fn write_word(&self, i: usize, v: u64) {
        self.word(i).store(v, Ordering::Release);
    }

    /// The CPU address (for `sync_for_device`).
    pub(crate) fn virt(&self) -> NonNull<u8> {
        self.0.cast()
    }
}

/// Where one StreamID's STE lives, and its CD-table shadow slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SteSlot {
    pub(crate) entry: Entry,
    shadow: NonNull<usize>,
}

impl SteSlot {
    fn shadow(&self, i: usize) -> &AtomicUsize {
        // SAFETY: the 16-byte slot lies in the CPU-only shadow array after the STE array this
        // slot came from, 8-byte aligned, never accessed by hardware; `i % 2` stays inside it.
        unsafe { AtomicUsize::from_ptr(self.shadow.as_ptr().add(i % 2)) }
    }

    /// The CD table recorded for this StreamID (virtual and physical address), if any.
    pub(crate) fn cd_table(&self) -> Option<(NonNull<u8>, PhysAddr)> {
        let virt = NonNull::new(self.shadow(0).load(Ordering::Relaxed) as *mut u8)?;
        // CAST: a physical address stored from a u64 on a 64-bit target.
        Some((virt, PhysAddr(self.shadow(1).load(Ordering::Relaxed) as u64)))
    }

    /// Records the StreamID's CD table.
    pub(crate) fn set_cd_table(&self, virt: NonNull<u8>, phys: PhysAddr) {
        // CAST: usize is 64 bits on every target this crate supports.
        self.shadow(1).store(phys.0 as usize, Ordering::Relaxed);
        self.shadow(0).store(virt.as_ptr() as usize, Ordering::Relaxed);
    }
}

/// The stream table format (STRTAB_BASE_CFG.FMT).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamTableFormat {
    /// One array of `2^sid_bits` STEs.
    Linear,
    /// An L1 array of descriptors, each pointing at a level-2 array of `2^split` STEs allocated
    /// when the first StreamID in its range is configured.
    TwoLevel {
        /// log2 of the STEs per level-2 table (SPLIT: 6, 8 or 10).
        split: u8,
    },
}

/// Largest linear table this driver allocates: 2^12 STEs (256 KiB). Wider StreamIDs need the
/// 2-level format.
pub const MAX_LINEAR_SID_BITS: u8 = 12;
/// Most L1 descriptors: 2^16, as Linux's `STRTAB_MAX_L1_ENTRIES` (512 KiB of L1 and shadow).
pub const MAX_L1_BITS: u8 = 16;
/// The split this driver uses: 256 STEs (16 KiB) per level-2 table, as Linux's `STRTAB_SPLIT`.
pub const DEFAULT_SPLIT: u8 = 8;

/// The stream table.
#[derive(Debug)]
pub struct StreamTable {
    format: StreamTableFormat,
    sid_bits: u8,
    /// The linear STE array (with its shadow), or the L1 array (with its shadow).
    base: DmaPages,
    /// Level-2 tables allocated (2-level only).
    l2_tables: usize,
}

const fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE)
}

impl StreamTable {
    /// Allocates a table for StreamIDs of `sid_bits` bits in `format`, every STE invalid.
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        format: StreamTableFormat,
        sid_bits: u8,
    ) -> Result<Self> {
        let bytes = match format {
            StreamTableFormat::Linear => {
                if sid_bits > MAX_LINEAR_SID_BITS {
                    return Err(Error::InvalidField {
                        what: "linear stream table StreamID bits",
                        value: u64::from(sid_bits),
                    });
                }
                // STEs, then one shadow slot per STE.
                (ENTRY_BYTES + SHADOW_BYTES) << sid_bits
            }
            StreamTableFormat::TwoLevel { split } => {
                if !matches!(split, 6 | 8 | 10) || sid_bits > split + MAX_L1_BITS {
                    return Err(Error::InvalidField {
                        what: "2-level stream table split or StreamID bits",
                        value: u64::from(sid_bits),
                    });
                }
                // L1 descriptors, then one shadow slot per descriptor.
                16usize << sid_bits.saturating_sub(split)
            }
        };
        // STRTAB_BASE holds address bits 51:6 and the table must be aligned to its size, at
        // least 64 bytes (§6.3.24); a power-of-two page count aligned to itself is both.
        let pages = pages_for(bytes).next_power_of_two();
        let base = platform.alloc_dma_pages(pages, pages * PAGE_SIZE)?;
        platform.sync_for_device(base.virt(), base.len());
        Ok(Self { format, sid_bits, base, l2_tables: 0 })
    }

    /// The format.
    pub const fn format(&self) -> StreamTableFormat {
        self.format
    }

    /// StreamID bits the table covers.
    pub const fn sid_bits(&self) -> u8 {
        self.sid_bits
    }

    /// Level-2 tables allocated so far.
    pub const fn l2_tables(&self) -> usize {
        self.l2_tables
    }

    /// STRTAB_BASE: RA (bit 62) and the address.
    pub fn base_register(&self) -> u64 {
        (1 << 62) | (self.base.phys().0 & ADDR_51_6)
    }

    /// STRTAB_BASE_CFG: FMT, SPLIT, LOG2SIZE.
    pub fn base_cfg_register(&self) -> u32 {
        use super::regs::strtab_cfg as c;
        match self.format {
            StreamTableFormat::Linear => (c::FMT_LINEAR << c::FMT_SHIFT) | u32::from(self.sid_bits),
            StreamTableFormat::TwoLevel { split } => {
                (c::FMT_2LEVEL << c::FMT_SHIFT)
                    | (u32::from(split) << c::SPLIT_SHIFT)
                    | u32::from(self.sid_bits)
            }
        }
    }

    fn check_sid(&self, sid: StreamId) -> Result<()> {
        if u64::from(sid.0) >> self.sid_bits != 0 {
            return Err(Error::InvalidField {
                what: "StreamID beyond the stream table",
                value: u64::from(sid.0),
            });
        }
        Ok(())
    }

    fn word_ptr(pages: &DmaPages, byte: usize) -> NonNull<u64> {
        debug_assert!(byte + 8 <= pages.len());
        // SAFETY: callers pass offsets inside the run (bounded by the table geometry the run was
        // sized for), so the pointer stays inside the allocation.
        unsafe { pages.virt().add(byte % pages.len()).cast::<u64>() }
    }

    /// The STE of `sid`; with `allocate`, a missing level-2 table is allocated (all STEs
    /// invalid), made visible, and linked; otherwise `None` when there is none.
    pub(crate) fn slot<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        sid: StreamId,
        allocate: bool,
    ) -> Result<Option<SteSlot>> {
        self.check_sid(sid)?;
        let sid_n = sid.0 as usize;
        match self.format {
            StreamTableFormat::Linear => {
                let count = 1usize << self.sid_bits;
                let entry = Entry(Self::word_ptr(&self.base, sid_n * ENTRY_BYTES));
                let shadow =
                    Self::word_ptr(&self.base, count * ENTRY_BYTES + sid_n * SHADOW_BYTES).cast();
                Ok(Some(SteSlot { entry, shadow }))
            }
            StreamTableFormat::TwoLevel { split } => {
                let l1_index = sid_n >> split;
                let l1_count = 1usize << self.sid_bits.saturating_sub(split);
                let l1 = Self::word_ptr(&self.base, l1_index * 8);
                let l1_shadow = Self::word_ptr(&self.base, l1_count * 8 + l1_index * 8);
                // SAFETY: both words lie in the L1 run this table owns (index < l1_count); the
                // L1 word is read by the SMMU and accessed atomically by the CPU, the shadow is
                // CPU-only.
                let (l1, l1_shadow) = unsafe {
                    (
                        AtomicU64::from_ptr(l1.as_ptr()),
                        AtomicUsize::from_ptr(l1_shadow.cast().as_ptr()),
                    )
                };
                let l2_count = 1usize << split;
                let mut virt = l1_shadow.load(Ordering::Relaxed);
                if virt == 0 {
                    if !allocate {
                        return Ok(None);
                    }
                    let bytes = (ENTRY_BYTES + SHADOW_BYTES) * l2_count;
                    let pages = pages_for(bytes).next_power_of_two();
                    // Level-2 tables are aligned to their size (L2Ptr bits below it are 0).
                    let l2 = platform.alloc_dma_pages(pages, pages * PAGE_SIZE)?;
                    platform.sync_for_device(l2.virt(), l2.len());
                    virt = l2.virt().as_ptr() as usize;
                    l1_shadow.store(virt, Ordering::Relaxed);
                    // L1STD: Span (4:0) = split + 1 (2^(Span-1) STEs), L2Ptr 51:6 (§5.1).
                    let desc = (l2.phys().0 & ADDR_51_6) | u64::from(split + 1);
                    l1.store(desc, Ordering::Release);
                    platform.sync_for_device(NonNull::from(l1).cast(), 8);
                    self.l2_tables += 1;
                    // INVARIANT: the level-2 run is owned by the table from here, reached
                    // through the L1 shadow; `DmaPages` has no `Drop`, so letting the handle go
                    // never frees it while the SMMU may walk it.
                }
                let within = sid_n & (l2_count - 1);
                let base = virt as *mut u8;
                // SAFETY: `virt` is the start of a level-2 run of `(64 + 16) * l2_count` bytes
                // this table allocated; `within < l2_count` keeps both offsets inside it.
                let (entry, shadow) = unsafe {
                    (
                        NonNull::new_unchecked(base.add(within * ENTRY_BYTES).cast::<u64>()),
                        NonNull::new_unchecked(
                            base.add(l2_count * ENTRY_BYTES + within * SHADOW_BYTES)
                                .cast::<usize>(),
                        ),
                    )
                };
                Ok(Some(SteSlot { entry: Entry(entry), shadow }))
            }
        }
    }
}

/// Most SubstreamID bits a linear CD table serves here (1024 CDs, 64 KiB); the 2-level CD format
/// (IDR0.CD2L) that wider SubstreamIDs need is not implemented.
pub const MAX_LINEAR_CD_BITS: u8 = 10;

/// log2 of the CDs in one 2-level leaf table (4 KiB, S1Fmt 0b01).
const CD_LEAF_BITS: u8 = 6;
/// Most SubstreamID bits (SMMU_IDR1.SSIDSIZE is at most 20).
pub const MAX_CD_BITS: u8 = 20;

/// How every StreamID's CD table is laid out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CdLayout {
    /// log2 of the CDs (S1CDMax).
    pub bits: u8,
    /// 2-level (S1Fmt 0b01): an L1 array of descriptors, each pointing at a 4 KiB leaf table of
    /// 64 CDs allocated on first use (needs IDR0.CD2L); otherwise one linear array.
    pub two_level: bool,
}

impl CdLayout {
    /// One linear table of `2^bits` CDs.
    pub const fn linear(bits: u8) -> Self {
        Self { bits, two_level: false }
    }

    fn l1_count(&self) -> usize {
        1usize << self.bits.saturating_sub(CD_LEAF_BITS)
    }

    /// Allocates an empty table (every CD invalid; for 2-level, no leaf yet), made visible.
    /// Returns its CPU and physical address.
    pub(crate) fn alloc<P: Platform + ?Sized>(
        &self,
        platform: &P,
    ) -> Result<(NonNull<u8>, PhysAddr)> {
        let bytes = if self.two_level {
            if self.bits <= CD_LEAF_BITS || self.bits > MAX_CD_BITS {
                return Err(Error::InvalidField {
                    what: "2-level CD table SubstreamID bits",
                    value: u64::from(self.bits),
                });
            }
            // L1 descriptors, then one CPU-only slot per descriptor with the leaf's address.
            16 * self.l1_count()
        } else {
            if self.bits > MAX_LINEAR_CD_BITS {
                return Err(Error::Unsupported {
                    what: "linear CD table beyond 1024 CDs (needs IDR0.CD2L)",
                    value: u64::from(self.bits),
                });
            }
            ENTRY_BYTES << self.bits
        };
        let pages = pages_for(bytes).next_power_of_two();
        let run = platform.alloc_dma_pages(pages, pages * PAGE_SIZE)?;
        platform.sync_for_device(run.virt(), run.len());
        // INVARIANT: the run belongs to the StreamID's STE shadow from here; `DmaPages` has no
        // `Drop`, so it is never freed while the SMMU may read it.
        Ok((run.virt(), run.phys()))
    }

    /// The CD of `ssid` in the table at `virt`; for 2-level tables with `allocate`, a missing
    /// leaf table is allocated, made visible and linked (the bool says so: the L1 descriptor
    /// changed and the caller's CFGI_CD must not be leaf-only). `None` outside the table or
    /// without a leaf.
    pub(crate) fn entry<P: Platform + ?Sized>(
        &self,
        platform: &P,
        virt: NonNull<u8>,
        ssid: u32,
        allocate: bool,
    ) -> Result<Option<(Entry, bool)>> {
        if u64::from(ssid) >> self.bits != 0 {
            return Ok(None);
        }
        let ssid = ssid as usize;
        if !self.two_level {
            // SAFETY: ssid < 2^bits, so the 64 bytes lie inside the linear table run.
            return Ok(Some((Entry(unsafe { virt.add(ssid * ENTRY_BYTES).cast() }), false)));
        }
        let l1 = ssid >> CD_LEAF_BITS;
        // SAFETY: l1 < l1_count: the descriptor and its shadow slot lie in the L1 run; the
        // descriptor is read by the SMMU and accessed atomically by the CPU, the shadow is
        // CPU-only.
        let (desc, shadow) = unsafe {
            (
                AtomicU64::from_ptr(virt.as_ptr().cast::<u64>().add(l1)),
                AtomicUsize::from_ptr(virt.as_ptr().cast::<usize>().add(self.l1_count() + l1)),
            )
        };
        let mut leaf = shadow.load(Ordering::Relaxed);
        let mut allocated = false;
        if leaf == 0 {
            if !allocate {
                return Ok(None);
            }
            let run = platform.alloc_dma_pages(1, PAGE_SIZE)?;
            platform.sync_for_device(run.virt(), run.len());
            leaf = run.virt().as_ptr() as usize;
            shadow.store(leaf, Ordering::Relaxed);
            // L1CD: V (bit 0), L2Ptr 51:12 (§5.4.1); the zeroed leaf is visible first.
            desc.store((run.phys().0 & 0x000f_ffff_ffff_f000) | 1, Ordering::Release);
            platform.sync_for_device(NonNull::from(desc).cast(), 8);
            allocated = true;
        }
        let within = ssid & ((1 << CD_LEAF_BITS) - 1);
        // SAFETY: `leaf` is a 4 KiB leaf run this table allocated; within < 64 CDs of 64 bytes.
        let entry =
            unsafe { NonNull::new_unchecked((leaf as *mut u8).add(within * ENTRY_BYTES).cast()) };
        Ok(Some((Entry(entry), allocated)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Independent encodings from SMMUv3 §5.2 / §5.4 and Linux arm-smmu-v3.h:
    // STRTAB_STE_0_V BIT(0), STRTAB_STE_0_CFG GENMASK(3,1) (ABORT 0, BYPASS 4, S1_TRANS 5,
    // S2_TRANS 6, NESTED 7), STRTAB_STE_0_S1CTXPTR_MASK GENMASK(51,6), STRTAB_STE_0_S1CDMAX
    // GENMASK(63,59), STRTAB_STE_1_S1CIR GENMASK(3,2), S1COR GENMASK(5,4), S1CSH GENMASK(7,6),
    // STRTAB_STE_1_SHCFG GENMASK(45,44), STRTAB_STE_2_S2VMID GENMASK(15,0), STRTAB_STE_2_VTCR
    // GENMASK(50,32), STRTAB_STE_2_S2AA64 BIT(51), S2PTW BIT(54), S2R BIT(58),
    // STRTAB_STE_3_S2TTB_MASK GENMASK(51,4).

    #[test]
    fn abort_bypass_invalid() {
        assert_eq!(
            encode_ste(StreamConfig::Invalid, PhysAddr(0), CdLayout::linear(0), 44).unwrap(),
            [0; 8]
        );
        assert_eq!(
            encode_ste(StreamConfig::Abort, PhysAddr(0), CdLayout::linear(0), 44).unwrap(),
            [0x1, 0, 0, 0, 0, 0, 0, 0]
        );
        let b = encode_ste(StreamConfig::Bypass, PhysAddr(0), CdLayout::linear(0), 44).unwrap();
        assert_eq!(b[0], 0x9);
        assert_eq!(b[1], 0x0000_1000_0000_0000);
    }

    #[test]
    fn stage1_ste_and_cd() {
        let s1 = Stage1 { root: PhysAddr(0x4123_4000), levels: 4, asid: 0x42 };
        let w =
            encode_ste(StreamConfig::Stage1(s1), PhysAddr(0x4555_0000), CdLayout::linear(0), 44)
                .unwrap();
        assert_eq!(w[0], 0x4555_0000 | (5 << 1) | 1);
        assert_eq!(w[1], (1 << 2) | (1 << 4) | (3 << 6) | (1 << 44));
        assert_eq!(w[2..], [0; 6]);
        let w =
            encode_ste(StreamConfig::Stage1(s1), PhysAddr(0x4555_0000), CdLayout::linear(3), 44)
                .unwrap();
        assert_eq!(w[0] >> 59, 3);
        // STRTAB_STE_1_S1DSS GENMASK(1,0) = STRTAB_STE_1_S1DSS_SSID0 (2) with substreams.
        assert_eq!(w[1] & 3, 2);
        // STRTAB_STE_0_S1FMT GENMASK(5,4): 0b01 = 2-level with 4 KiB leaf tables.
        let two = CdLayout { bits: 12, two_level: true };
        let w = encode_ste(StreamConfig::Stage1(s1), PhysAddr(0x4555_0000), two, 44).unwrap();
        assert_eq!(w[0], 0x4555_0000 | (1 << 4) | (5 << 1) | 1 | (12 << 59));

        // CTXDESC_CD_0_TCR_T0SZ GENMASK(5,0), TG0 GENMASK(7,6), IRGN0 GENMASK(9,8), ORGN0
        // GENMASK(11,10), SH0 GENMASK(13,12), EPD1 BIT(30), V BIT(31), IPS GENMASK(34,32),
        // AA64 BIT(41), R BIT(45), A BIT(46), ASID GENMASK(63,48); CTXDESC_CD_1_TTB0_MASK
        // GENMASK(51,4); MAIR in word 3.
        let cd = encode_cd(&s1, 44).unwrap();
        assert_eq!(cd[0], 0x0042_6000_c000_3510 | (4 << 32) | (1 << 41));
        assert_eq!(cd[1], 0x4123_4000);
        assert_eq!(cd[3], 0x04ff44);
        let cd3 = encode_cd(&Stage1 { levels: 3, ..s1 }, 48).unwrap();
        assert_eq!(cd3[0] & 0x3f, 25);
        assert_eq!((cd3[0] >> 32) & 7, 5);
    }

    #[test]
    fn stage2_and_nested_ste() {
        let s2 = Stage2 { root: PhysAddr(0x4777_8000), levels: 4, vmid: 0x0102 };
        let w = encode_ste(StreamConfig::Stage2(s2), PhysAddr(0), CdLayout::linear(0), 44).unwrap();
        assert_eq!(w[0], (6 << 1) | 1);
        // VTCR: T0SZ 20 (44-bit IPA: capped to the OAS), SL0 2, IR0 1, OR0 1, SH0 3, TG 0,
        // PS 4 (44 bits).
        let vtcr: u64 = 20 | (2 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (4 << 16);
        assert_eq!(w[2], 0x0102 | (vtcr << 32) | (1 << 51) | (1 << 58));
        assert_eq!(w[3], 0x4777_8000);
        let w48 =
            encode_ste(StreamConfig::Stage2(s2), PhysAddr(0), CdLayout::linear(0), 48).unwrap();
        assert_eq!((w48[2] >> 32) & 0x3f, 16, "48-bit IPA with a 48-bit OAS");
        let w3 = encode_ste(
            StreamConfig::Stage2(Stage2 { levels: 3, ..s2 }),
            PhysAddr(0),
            CdLayout::linear(0),
            40,
        )
        .unwrap();
        assert_eq!((w3[2] >> 32) & 0x3f, 25);
        assert_eq!((w3[2] >> 38) & 3, 1);
        assert_eq!((w3[2] >> 48) & 7, 2);
        let s1 = Stage1 { root: PhysAddr(0x1000), levels: 4, asid: 1 };
        let n = encode_ste(StreamConfig::Nested(s1, s2), PhysAddr(0x2000), CdLayout::linear(0), 44)
            .unwrap();
        assert_eq!(n[0], 0x2000 | (7 << 1) | 1);
        assert_ne!(n[2] & (1 << 54), 0, "S2PTW for nested");
        assert_ne!(n[2] & (1 << 51), 0, "S2AA64 always");
    }

    #[test]
    fn bad_inputs() {
        let s2 = Stage2 { root: PhysAddr(0), levels: 5, vmid: 0 };
        assert!(
            encode_ste(StreamConfig::Stage2(s2), PhysAddr(0), CdLayout::linear(0), 44).is_err()
        );
        let s2 = Stage2 { root: PhysAddr(0), levels: 4, vmid: 0 };
        assert!(
            encode_ste(StreamConfig::Stage2(s2), PhysAddr(0), CdLayout::linear(0), 45).is_err()
        );
        let s1 = Stage1 { root: PhysAddr(0), levels: 4, asid: 0 };
        assert!(
            encode_ste(StreamConfig::Stage1(s1), PhysAddr(0), CdLayout::linear(21), 44).is_err()
        );
        assert_eq!(size_encoding(52), Ok(6));
    }
}
