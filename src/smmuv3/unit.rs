//! One SMMUv3: bring-up, stream configuration, invalidation, events and global errors.
//!
//! # Bring-up (§6.3.9, the order Linux's `arm_smmu_device_reset` uses)
//! A unit left enabled is first made to abort incoming traffic (GBPA.ABORT) and disabled
//! (CR0 = 0, CR0ACK handshake). Then CR1/CR2, the stream table (STRTAB_BASE, STRTAB_BASE_CFG),
//! the command queue (enabled alone so configuration and TLB caches can be invalidated: CFGI_ALL,
//! TLBI_EL2_ALL where there is an EL2 context, TLBI_NSNH_ALL, CMD_SYNC), the event queue, the
//! PRI queue where IDR0.PRI says there is one, and finally SMMUEN. Every CR0 change waits,
//! bounded, for CR0ACK to match.
//!
//! # Changing a StreamID's configuration (§3.21)
//! [`Unit::set_stream`] writes the CD (if any) and the STE with V (word 0) last and makes them
//! visible, then issues CFGI_STE (and CFGI_CD), the TLB invalidation of whatever the old entry
//! translated with (its ASID or VMID), and one CMD_SYNC. A valid STE that translated or bypassed
//! is changed in place only when a single 64-bit word changes (single-copy atomic, so the SMMU
//! sees the old or the new entry, never a mix); otherwise the STE is first switched to abort
//! (one word), invalidated and synced, and only then rewritten: DMA in that window is aborted,
//! never translated through a half-written entry.

use core::time::Duration;

use heapless::Vec;

use crate::addr::{PhysAddr, StreamId};
use crate::error::{Error, Result};
use crate::hal::{Platform, poll};
use crate::iommu::PendingInvalidation;
use crate::mmio::MmioRegion;

use super::command::{Command, opcode};
use super::event::Event;
use super::queue::{CommandQueue, Drained, EventQueue, ProducerQueue};
use super::regs::{IdRegisters, StreamTableLevels, cr0, cr1, cr2, gbpa, gerror, irq_ctrl, offset};
use super::ste::{
    CdLayout, DEFAULT_SPLIT, ENTRY_BYTES, MAX_CD_BITS, MAX_LINEAR_CD_BITS, MAX_LINEAR_SID_BITS,
    Stage1, StreamConfig, StreamTable, StreamTableFormat, config as ste_config, encode_cd,
    encode_ste,
};

/// How long a CR0, GBPA or IRQ_CTRL change may take to be acknowledged.
///
/// TIMEOUT: the specification gives no bound; QEMU acknowledges immediately. Linux waits
/// `ARM_SMMU_POLL_TIMEOUT_US`, one second; so does this driver.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Most commands one [`Unit::flush`] issues before it widens to a whole-ASID or VMID
/// invalidation.
pub const MAX_FLUSH_COMMANDS: usize = 32;

/// Choices for [`Unit::new`]; [`UnitConfig::default`] suits most machines.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UnitConfig {
    /// StreamID bits the stream table covers: at most IDR1.SIDSIZE (`None`: SIDSIZE). A StreamID
    /// beyond raises C_BAD_STREAMID.
    pub sid_bits: Option<u8>,
    /// Table format (`None`: 2-level with [`DEFAULT_SPLIT`] when IDR0.ST_LEVEL offers it and the
    /// StreamIDs are wider than the split, linear otherwise).
    pub format: Option<StreamTableFormat>,
    /// log2 of the command queue's slots (clamped to IDR1.CMDQS).
    pub cmdq_log2: u8,
    /// log2 of the event queue's slots (clamped to IDR1.EVENTQS).
    pub evtq_log2: u8,
    /// log2 of the PRI queue's slots (clamped to IDR1.PRIQS; used only where IDR0.PRI).
    pub priq_log2: u8,
    /// SubstreamID bits each StreamID's CD table serves (`None`: IDR1.SSIDSIZE), capped to
    /// [`MAX_LINEAR_CD_BITS`] and to SSIDSIZE. 0 means one CD per StreamID (QEMU).
    pub ssid_bits: Option<u8>,
}

impl Default for UnitConfig {
    fn default() -> Self {
        // 256 commands (4 KiB), 128 events (4 KiB), 256 page requests (4 KiB).
        Self {
            sid_bits: None,
            format: None,
            cmdq_log2: 8,
            evtq_log2: 7,
            priq_log2: 8,
            ssid_bits: None,
        }
    }
}

/// A pool of ASIDs or VMIDs (1..=255 and within the hardware's width); 0 is never handed out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IdPool {
    bits: [u64; 4],
    limit: u16,
}

impl IdPool {
    /// A pool of IDs below `limit` (at most 256).
    pub const fn new(limit: u16) -> Self {
        Self { bits: [1, 0, 0, 0], limit: if limit > 256 { 256 } else { limit } }
    }

    /// Takes the lowest free ID.
    pub fn allocate(&mut self, what: &'static str) -> Result<u16> {
        for id in 1..self.limit {
            let (w, b) = (usize::from(id / 64), id % 64);
            if let Some(word) = self.bits.get_mut(w)
                && *word & (1 << b) == 0
            {
                *word |= 1 << b;
                return Ok(id);
            }
        }
        Err(Error::CapacityExceeded { what, capacity: usize::from(self.limit.saturating_sub(1)) })
    }

    /// Returns an ID (the caller detached everything tagged with it and flushed).
    pub fn release(&mut self, id: u16, what: &'static str) -> Result<()> {
        if !self.is_allocated(id) || id == 0 {
            return Err(Error::InvalidField { what, value: u64::from(id) });
        }
        if let Some(word) = self.bits.get_mut(usize::from(id / 64)) {
            *word &= !(1 << (id % 64));
        }
        Ok(())
    }

    /// Whether `id` is handed out.
    pub fn is_allocated(&self, id: u16) -> bool {
        id != 0
            && id < self.limit
            && self.bits.get(usize::from(id / 64)).is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// Which TLB entries a [`PendingInvalidation`] is flushed from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlbScope {
    /// Stage-1 entries of an ASID (TLBI_NH_VA / TLBI_NH_ASID). Under nesting the entries are
    /// also tagged with the STE's VMID, which the commands must carry; 0 for stage 1 alone.
    Stage1 {
        /// The ASID the table's pending values are tagged with.
        asid: u16,
        /// The VMID of the nested configuration, 0 for stage 1 alone.
        vmid: u16,
    },
    /// Stage-2 entries of a VMID (TLBI_S2_IPA then TLBI_NH_ALL of the VMID, for nested
    /// configurations; or TLBI_S12_VMALL).
    Stage2 {
        /// The VMID.
        vmid: u16,
    },
}

/// Global errors seen and acknowledged by [`Unit::handle_global_errors`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GlobalErrors(pub u32);

impl GlobalErrors {
    /// Whether none was active.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// EVENTQ_ABT_ERR: events were lost (QEMU raises it when the event queue overflows).
    pub const fn event_queue_abort(self) -> bool {
        self.0 & gerror::EVENTQ_ABT_ERR != 0
    }
    /// CMDQ_ERR (normally handled by the command queue itself).
    pub const fn command_queue(self) -> bool {
        self.0 & gerror::CMDQ_ERR != 0
    }
}

/// A brought-up SMMUv3.
///
/// The unit owns the tables and queues it points the SMMU at (STRTAB_BASE, CMDQ_BASE,
/// EVENTQ_BASE and PRIQ_BASE are written only from them). Its memory is never freed while the
/// unit exists; dropping it leaks the memory rather than releasing tables the SMMU may walk.
#[derive(Debug)]
pub struct Unit {
    regs: MmioRegion,
    base: PhysAddr,
    ids: IdRegisters,
    oas: u8,
    streams: StreamTable,
    cmdq: CommandQueue,
    evtq: EventQueue,
    priq: Option<ProducerQueue>,
    asids: IdPool,
    vmids: IdPool,
    coherent: bool,
    /// How every StreamID's CD table is laid out (S1CDMax, S1Fmt).
    cd_layout: CdLayout,
}

impl Unit {
    /// Maps the SMMU at `base` (128 KiB, pages 0 and 1), validates its ID registers, and brings
    /// it up with every StreamID's STE invalid (so DMA raises C_BAD_STE until configured).
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        base: PhysAddr,
        cfg: UnitConfig,
    ) -> Result<Self> {
        let ptr = platform.map_mmio(base, offset::FRAME_SIZE)?;
        // SAFETY: `Platform::map_mmio` returns a device mapping of exactly this range, valid as
        // long as the platform (its implementation-safety contract).
        let regs = unsafe { MmioRegion::new(ptr, offset::FRAME_SIZE) };
        let ids = IdRegisters::read(&regs);
        ids.validate()?;
        let oas = ids.idr5.output_address_bits()?;
        let sid_bits = cfg.sid_bits.unwrap_or(ids.idr1.sid_bits()).min(ids.idr1.sid_bits());
        let two_level = ids.idr0.stream_table_levels()? == StreamTableLevels::TwoLevel;
        let format = match cfg.format {
            Some(StreamTableFormat::TwoLevel { .. }) if !two_level => {
                return Err(Error::Unsupported {
                    what: "SMMU IDR0.ST_LEVEL (2-level stream table)",
                    value: u64::from(ids.idr0.0),
                });
            }
            Some(f) => f,
            None if two_level && sid_bits > DEFAULT_SPLIT => {
                StreamTableFormat::TwoLevel { split: DEFAULT_SPLIT }
            }
            None => StreamTableFormat::Linear,
        };
        if format == StreamTableFormat::Linear && sid_bits > MAX_LINEAR_SID_BITS {
            return Err(Error::Unsupported {
                what: "SMMU StreamIDs too wide for a linear stream table",
                value: u64::from(sid_bits),
            });
        }
        let streams = StreamTable::new(platform, format, sid_bits)?;
        let sub = |r: &MmioRegion| r.subregion(0, r.len());
        let cmdq = CommandQueue::new(
            platform,
            sub(&regs)?,
            cfg.cmdq_log2.clamp(1, ids.idr1.cmdq_log2().max(1)),
        )?;
        let evtq = ProducerQueue::new_event(
            platform,
            sub(&regs)?,
            cfg.evtq_log2.min(ids.idr1.eventq_log2()),
        )?;
        let priq = if ids.idr0.pri() {
            Some(ProducerQueue::new_pri(
                platform,
                sub(&regs)?,
                cfg.priq_log2.min(ids.idr1.priq_log2()),
            )?)
        } else {
            None
        };
        // 8-bit ASIDs and VMIDs fit every SMMU (16-bit ones are optional, IDR0.ASID16/VMID16).
        let asids = IdPool::new(256);
        let vmids = IdPool::new(256);
        // SubstreamIDs: linear CD tables up to 1024 CDs; wider ones need IDR0.CD2L (2-level
        // tables with 64-CD leaves, as Linux chooses past 1024 CDs), or are capped.
        let ssid_bits = cfg
            .ssid_bits
            .unwrap_or(ids.idr1.ssid_bits())
            .min(ids.idr1.ssid_bits())
            .min(MAX_CD_BITS);
        let cd_layout = if ssid_bits > MAX_LINEAR_CD_BITS && ids.idr0.cd2l() {
            CdLayout { bits: ssid_bits, two_level: true }
        } else {
            CdLayout::linear(ssid_bits.min(MAX_LINEAR_CD_BITS))
        };
        let mut unit = Self {
            cd_layout,
            regs,
            base,
            ids,
            oas,
            streams,
            cmdq,
            evtq,
            priq,
            asids,
            vmids,
            coherent: ids.idr0.cohacc(),
        };
        unit.reset(platform)?;
        Ok(unit)
    }

    fn write_cr0<P: Platform + ?Sized>(&self, platform: &P, value: u32) -> Result<()> {
        self.regs.write32(offset::CR0, value);
        poll(platform, "SMMU CR0ACK", ACK_TIMEOUT, || {
            (self.regs.read32(offset::CR0ACK) == value).then_some(())
        })
    }

    fn reset<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<()> {
        let r = &self.regs;
        if r.read32(offset::CR0) & cr0::SMMUEN != 0 {
            // Abort incoming traffic while the SMMU is off, instead of letting it bypass.
            let g = r.read32(offset::GBPA);
            r.write32(offset::GBPA, g | gbpa::ABORT | gbpa::UPDATE);
            poll(platform, "SMMU GBPA.UPDATE", ACK_TIMEOUT, || {
                (r.read32(offset::GBPA) & gbpa::UPDATE == 0).then_some(())
            })?;
        }
        self.write_cr0(platform, 0)?;
        // Interrupts off until asked for (polling works without them).
        r.write32(offset::IRQ_CTRL, 0);
        poll(platform, "SMMU IRQ_CTRLACK", ACK_TIMEOUT, || {
            (r.read32(offset::IRQ_CTRLACK) == 0).then_some(())
        })?;
        // Acknowledge global errors left over from a previous owner.
        r.write32(offset::GERRORN, r.read32(offset::GERROR));
        let share = |ic: u32, oc: u32, sh: u32| {
            (cr1::CACHE_WB << ic) | (cr1::CACHE_WB << oc) | (cr1::SH_ISH << sh)
        };
        r.write32(
            offset::CR1,
            share(cr1::QUEUE_IC_SHIFT, cr1::QUEUE_OC_SHIFT, cr1::QUEUE_SH_SHIFT)
                | share(cr1::TABLE_IC_SHIFT, cr1::TABLE_OC_SHIFT, cr1::TABLE_SH_SHIFT),
        );
        // Record invalid StreamIDs; private TLB maintenance unless broadcast TLBI is supported.
        let ptm = if self.ids.idr0.btm() { 0 } else { cr2::PTM };
        r.write32(offset::CR2, cr2::RECINVSID | ptm);
        // The tables' zeroes were made visible when they were allocated.
        r.write64(offset::STRTAB_BASE, self.streams.base_register());
        r.write32(offset::STRTAB_BASE_CFG, self.streams.base_cfg_register());
        r.write64(offset::CMDQ_BASE, self.cmdq.base_register());
        r.write32(offset::CMDQ_PROD, 0);
        r.write32(offset::CMDQ_CONS, 0);
        self.cmdq.reset();
        let mut enabled = cr0::CMDQEN;
        self.write_cr0(platform, enabled)?;
        let mut batch: Vec<Command, 3> = Vec::new();
        let _ = batch.push(Command::cfgi_all());
        if self.ids.idr0.hyp() {
            let _ = batch.push(Command::tlbi_el2_all());
        }
        let _ = batch.push(Command::tlbi_nsnh_all());
        self.cmdq.submit(platform, &batch)?;
        r.write64(offset::EVENTQ_BASE, self.evtq.base_register());
        r.write32(offset::EVENTQ_PROD, 0);
        r.write32(offset::EVENTQ_CONS, 0);
        self.evtq.reset();
        enabled |= cr0::EVENTQEN;
        self.write_cr0(platform, enabled)?;
        if let Some(priq) = self.priq.as_mut() {
            r.write64(offset::PRIQ_BASE, priq.base_register());
            r.write32(offset::PRIQ_PROD, 0);
            r.write32(offset::PRIQ_CONS, 0);
            priq.reset();
            enabled |= cr0::PRIQEN;
            self.write_cr0(platform, enabled)?;
        }
        self.write_cr0(platform, enabled | cr0::SMMUEN)
    }

    /// Disables translation (CR0 = 0) with incoming traffic aborted (GBPA.ABORT). The unit's
    /// memory stays allocated (leaked if the unit is then dropped).
    pub fn disable<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<()> {
        let r = &self.regs;
        r.write32(offset::GBPA, r.read32(offset::GBPA) | gbpa::ABORT | gbpa::UPDATE);
        poll(platform, "SMMU GBPA.UPDATE", ACK_TIMEOUT, || {
            (r.read32(offset::GBPA) & gbpa::UPDATE == 0).then_some(())
        })?;
        self.write_cr0(platform, 0)
    }

    /// Physical base of the register frame.
    pub const fn base(&self) -> PhysAddr {
        self.base
    }
    /// The validated ID registers.
    pub const fn ids(&self) -> &IdRegisters {
        &self.ids
    }
    /// Output address size in bits (IDR5.OAS).
    pub const fn output_address_bits(&self) -> u8 {
        self.oas
    }
    /// Whether table walks and queue accesses snoop CPU caches (IDR0.COHACC): page tables
    /// for this unit can be [`set_coherent`](crate::iommu::pagetable::IoPageTable::set_coherent).
    pub const fn coherent(&self) -> bool {
        self.coherent
    }
    /// The stream table.
    pub const fn stream_table(&self) -> &StreamTable {
        &self.streams
    }
    /// The command queue, to submit commands directly (each batch ends in one CMD_SYNC).
    pub fn command_queue(&mut self) -> &mut CommandQueue {
        &mut self.cmdq
    }
    /// The PRI queue where IDR0.PRI says there is one (for the page-request service).
    pub fn pri_queue(&mut self) -> Option<&mut ProducerQueue> {
        self.priq.as_mut()
    }
    /// The PRI queue and the command queue together (the page-request service reads one and
    /// answers through the other); `None` without IDR0.PRI.
    pub fn pri_and_command_queues(&mut self) -> Option<(&mut ProducerQueue, &mut CommandQueue)> {
        let priq = self.priq.as_mut()?;
        Some((priq, &mut self.cmdq))
    }
    /// SMMU_CR0.
    pub fn control(&self) -> u32 {
        self.regs.read32(offset::CR0)
    }

    // ---- ASIDs and VMIDs -------------------------------------------------------------------

    /// Allocates an ASID (never 0).
    pub fn allocate_asid(&mut self) -> Result<u16> {
        self.asids.allocate("SMMU ASIDs")
    }
    /// Returns an ASID whose users were detached and flushed.
    pub fn release_asid(&mut self, asid: u16) -> Result<()> {
        self.asids.release(asid, "SMMU ASID not allocated")
    }
    /// Allocates a VMID (never 0: VMID 0 tags stage-1-only translations).
    pub fn allocate_vmid(&mut self) -> Result<u16> {
        if !self.ids.idr0.s2p() {
            return Err(Error::Unsupported {
                what: "SMMU IDR0.S2P (stage 2)",
                value: u64::from(self.ids.idr0.0),
            });
        }
        self.vmids.allocate("SMMU VMIDs")
    }
    /// Returns a VMID whose users were detached and flushed.
    pub fn release_vmid(&mut self, vmid: u16) -> Result<()> {
        self.vmids.release(vmid, "SMMU VMID not allocated")
    }

    // ---- Stream configuration --------------------------------------------------------------

    /// Points StreamID `sid` at `config` (see the module documentation for the order), and
    /// returns once the SMMU confirmed with a CMD_SYNC. ASIDs and VMIDs must come from this
    /// unit's allocators. A stage-1 configuration is CD 0 of the StreamID's CD table (requests
    /// without a PASID); other SubstreamIDs are set with [`set_substream`](Self::set_substream).
    pub fn set_stream<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        sid: StreamId,
        config: StreamConfig,
    ) -> Result<()> {
        match config {
            StreamConfig::Stage1(s1) => self.check_asid(s1.asid)?,
            StreamConfig::Stage2(s2) => self.check_vmid(s2.vmid)?,
            StreamConfig::Nested(s1, s2) => {
                self.check_asid(s1.asid)?;
                self.check_vmid(s2.vmid)?;
            }
            _ => {}
        }
        if matches!(config, StreamConfig::Stage1(_) | StreamConfig::Nested(..))
            && !self.ids.idr0.s1p()
        {
            return Err(Error::Unsupported {
                what: "SMMU IDR0.S1P (stage 1)",
                value: u64::from(self.ids.idr0.0),
            });
        }
        let slot =
            self.streams.slot(platform, sid, true)?.ok_or(Error::NotFound { what: "SMMU STE" })?;
        let old = slot.entry.read();
        let old_cfg = if old[0] & 1 == 0 { None } else { Some((old[0] >> 1) & 7) };
        let cd_table = slot.cd_table();
        let layout = self.cd_layout;
        let cd_entry = match cd_table {
            Some((v, _)) => layout.entry(platform, v, 0, true)?.map(|(e, _)| e),
            None => None,
        };
        let old_cd = cd_entry.map(|e| e.read());

        // The new CD, in the StreamID's CD table (allocated on first use, kept afterwards).
        let s1 = match config {
            StreamConfig::Stage1(s) | StreamConfig::Nested(s, _) => Some(s),
            _ => None,
        };
        let (cd_phys, new_cd, cd_entry) = match s1 {
            Some(s) => {
                let cd = encode_cd(&s, self.oas)?;
                match (cd_table, cd_entry) {
                    (Some((_, phys)), Some(entry)) => (phys, Some(cd), Some(entry)),
                    _ => {
                        let (virt, phys) = layout.alloc(platform)?;
                        slot.set_cd_table(virt, phys);
                        let (entry, _) = layout
                            .entry(platform, virt, 0, true)?
                            .ok_or(Error::NotFound { what: "SMMU CD 0" })?;
                        (phys, Some(cd), Some(entry))
                    }
                }
            }
            None => (PhysAddr(0), None, None),
        };
        let new = encode_ste(config, cd_phys, self.cd_layout, self.oas)?;
        let cd_changes = new_cd.is_some() && new_cd != old_cd;
        if new == old && !cd_changes {
            return Ok(());
        }

        let live = matches!(old_cfg, Some(c) if c != ste_config::ABORT);
        let differing = old.iter().zip(new.iter()).filter(|(a, b)| a != b).count();
        let mut owed: Vec<Command, 4> = Vec::new();
        // What the old entry may have left in the TLBs.
        match old_cfg {
            Some(ste_config::S1_TRANS) | Some(ste_config::NESTED) => {
                if let Some(cd) = old_cd {
                    // CAST: ASID is CD word 0 bits 63:48; S2VMID word 2 bits 15:0.
                    let _ = owed.push(Command::tlbi_nh_asid(
                        (cd[0] >> 48) as u16,
                        (old[2] & 0xffff) as u16,
                    ));
                }
            }
            _ => {}
        }
        if matches!(old_cfg, Some(ste_config::S2_TRANS) | Some(ste_config::NESTED)) {
            // CAST: S2VMID, bits 15:0.
            let _ = owed.push(Command::tlbi_s12_vmall((old[2] & 0xffff) as u16));
        }
        if live && (differing > 1 || cd_changes) {
            // Break: abort in between, so no transaction sees a mix of old and new words; the
            // old tags' TLB entries go in that window too, so a reused ASID or VMID never meets
            // them under the new entry.
            slot.entry.write_word(0, 1 | (ste_config::ABORT << 1));
            platform.sync_for_device(slot.entry.virt(), ENTRY_BYTES);
            let mut batch: Vec<Command, 5> = Vec::new();
            let _ = batch.push(Command::cfgi_ste(sid, false));
            for c in core::mem::take(&mut owed) {
                let _ = batch.push(c);
            }
            self.cmdq.submit(platform, &batch)?;
        }
        if let (Some(cd), Some(entry)) = (new_cd, cd_entry) {
            entry.write(&cd);
            platform.sync_for_device(entry.virt(), ENTRY_BYTES);
        }
        if new[0] & 1 == 0 || (new[0] >> 1) & 7 == ste_config::ABORT {
            // Towards invalid or abort: word 0 first, the rest is then ignored.
            slot.entry.write_word(0, new[0]);
            for (i, w) in new.iter().enumerate().skip(1) {
                slot.entry.write_word(i, *w);
            }
        } else {
            slot.entry.write(&new);
        }
        platform.sync_for_device(slot.entry.virt(), ENTRY_BYTES);
        let mut batch: Vec<Command, 8> = Vec::new();
        let _ = batch.push(Command::cfgi_ste(sid, false));
        if new_cd.is_some() {
            let _ = batch.push(Command::cfgi_cd(sid, 0, true)?);
        }
        for c in owed {
            let _ = batch.push(c);
        }
        self.cmdq.submit(platform, &batch)
    }

    /// SubstreamIDs each StreamID's CD table serves: `2^bits` (0: only the CD of requests
    /// without a SubstreamID).
    pub const fn substream_bits(&self) -> u8 {
        self.cd_layout.bits
    }

    /// How CD tables are laid out (linear, or 2-level where IDR0.CD2L and wide SubstreamIDs).
    pub const fn cd_layout(&self) -> CdLayout {
        self.cd_layout
    }

    /// Sets (`Some`) or clears (`None`) the CD of SubstreamID `ssid` (1 ..
    /// 2^[`substream_bits`](Self::substream_bits)) of `sid`, whose STE must already translate
    /// with stage 1 (or nested) through [`set_stream`](Self::set_stream): requests tagged with
    /// that PASID then translate through `s1`. The CD is written with V last; a valid CD that
    /// changes in more than one word is first made invalid (CFGI_CD, CMD_SYNC), so requests in
    /// that window fault rather than see a mix. Then CFGI_CD, the old ASID's TLBI (with the
    /// STE's VMID) and one CMD_SYNC.
    pub fn set_substream<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        sid: StreamId,
        ssid: u32,
        s1: Option<Stage1>,
    ) -> Result<()> {
        if ssid == 0 || u64::from(ssid) >> self.cd_layout.bits != 0 {
            return Err(Error::InvalidField {
                what: "SubstreamID outside the CD table (0 is the STE's own CD)",
                value: u64::from(ssid),
            });
        }
        if let Some(s) = &s1 {
            self.check_asid(s.asid)?;
        }
        let not_s1 = Error::InvalidField {
            what: "SMMU substream on a StreamID without stage 1",
            value: u64::from(sid.0),
        };
        let slot = match self.streams.slot(platform, sid, false)? {
            Some(slot) => slot,
            None if s1.is_none() => return Ok(()),
            None => return Err(not_s1),
        };
        let ste = slot.entry.read();
        let cfg = (ste[0] >> 1) & 7;
        let on_stage1 = ste[0] & 1 != 0 && matches!(cfg, ste_config::S1_TRANS | ste_config::NESTED);
        if !on_stage1 && s1.is_some() {
            return Err(not_s1);
        }
        // Clearing while the STE is not on stage 1 (the function was blocked first): the CD
        // table stays with the StreamID and is live again with its next stage-1 STE, so the CD
        // is cleared all the same, or the substream would come back with it.
        let Some((virt, _)) = slot.cd_table() else {
            return if s1.is_none() { Ok(()) } else { Err(not_s1) };
        };
        let (entry, new_leaf) = match self.cd_layout.entry(platform, virt, ssid, s1.is_some())? {
            Some(found) => found,
            // Clearing a CD whose 2-level leaf was never allocated: nothing to do.
            None if s1.is_none() => return Ok(()),
            None => return Err(Error::NotFound { what: "SMMU CD of the SubstreamID" }),
        };
        let old = entry.read();
        let new = match &s1 {
            Some(s) => encode_cd(s, self.oas)?,
            None => [0; 8],
        };
        if old == new && !new_leaf {
            return Ok(());
        }
        const CD_V: u64 = 1 << 31;
        let old_valid = old[0] & CD_V != 0;
        let differing = old.iter().zip(new.iter()).filter(|(a, b)| a != b).count();
        if old_valid && (new[0] & CD_V == 0 || differing > 1) {
            // Invalidate first: clear V alone, then make the SMMU drop its cached copy.
            entry.write_word(0, old[0] & !CD_V);
            platform.sync_for_device(entry.virt(), ENTRY_BYTES);
            self.cmdq.submit(platform, &[Command::cfgi_cd(sid, ssid, true)?])?;
        }
        if new[0] & CD_V != 0 {
            entry.write(&new);
        } else {
            for (i, w) in new.iter().enumerate() {
                entry.write_word(i, *w);
            }
        }
        platform.sync_for_device(entry.virt(), ENTRY_BYTES);
        let mut batch: Vec<Command, 2> = Vec::new();
        // Not leaf-only when a new leaf table was linked: the L1 descriptor changed too.
        let _ = batch.push(Command::cfgi_cd(sid, ssid, !new_leaf)?);
        if old_valid {
            // CAST: the old CD's ASID (63:48) and the STE's S2VMID (15:0).
            let _ =
                batch.push(Command::tlbi_nh_asid((old[0] >> 48) as u16, (ste[2] & 0xffff) as u16));
        }
        self.cmdq.submit(platform, &batch)
    }

    /// Blocks StreamID `sid` silently (STE Config = abort): its DMA is aborted without events.
    pub fn detach<P: Platform + ?Sized>(&mut self, platform: &P, sid: StreamId) -> Result<()> {
        self.set_stream(platform, sid, StreamConfig::Abort)
    }

    /// Sets or clears STE.PPAR of `sid` (§5.2, word 1 bit 18; Linux `STRTAB_STE_1_PPAR`): whether
    /// the function's PRI capability says "PRG Response PASID Required", so that the SMMU's own
    /// PRG responses (PRI queue overflow, §8.1) carry the PASID exactly when the function
    /// expects it. A one-word change made in place (single-copy atomic), then CFGI_STE and
    /// CMD_SYNC. [`set_stream`](Self::set_stream) rewrites the STE without it: call this after.
    pub fn set_page_response_pasid_required<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        sid: StreamId,
        required: bool,
    ) -> Result<()> {
        const PPAR: u64 = 1 << 18;
        let slot =
            self.streams.slot(platform, sid, false)?.ok_or(Error::NotFound { what: "SMMU STE" })?;
        let old = slot.entry.read()[1];
        let new = if required { old | PPAR } else { old & !PPAR };
        if new == old {
            return Ok(());
        }
        slot.entry.write_word(1, new);
        platform.sync_for_device(slot.entry.virt(), ENTRY_BYTES);
        self.cmdq.submit(platform, &[Command::cfgi_ste(sid, false)])
    }

    /// The STE words of `sid` as the SMMU sees them (`None`: no level-2 table yet).
    pub fn stream_entry<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        sid: StreamId,
    ) -> Result<Option<[u64; 8]>> {
        Ok(self.streams.slot(platform, sid, false)?.map(|s| s.entry.read()))
    }

    fn check_asid(&self, asid: u16) -> Result<()> {
        if !self.asids.is_allocated(asid) {
            return Err(Error::InvalidField {
                what: "SMMU ASID not allocated",
                value: u64::from(asid),
            });
        }
        Ok(())
    }

    fn check_vmid(&self, vmid: u16) -> Result<()> {
        if !self.vmids.is_allocated(vmid) {
            return Err(Error::InvalidField {
                what: "SMMU VMID not allocated",
                value: u64::from(vmid),
            });
        }
        Ok(())
    }

    // ---- Invalidation ----------------------------------------------------------------------

    /// Issues the TLB invalidations `pending` owes in `scope`, with one CMD_SYNC, and once the
    /// SMMU confirmed them releases the table pages the change emptied.
    ///
    /// Each range becomes range TLBIs where IDR3.RIL offers them (a few per range), else one
    /// TLBI by address per 4 KiB page (Leaf set when only leaves changed); a whole-domain
    /// change, or more than [`MAX_FLUSH_COMMANDS`] commands, becomes one TLBI_NH_ASID or
    /// TLBI_S12_VMALL. The pending value's domain must be the scope's ASID or
    /// VMID (a table whose `set_domain` was forgotten would otherwise flush the wrong tag); on
    /// any failure the pages are leaked, never released.
    pub fn flush<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        pending: PendingInvalidation,
        scope: TlbScope,
    ) -> Result<()> {
        if pending.is_empty() {
            // SAFETY: nothing changed, so nothing can be cached and no page was emptied.
            unsafe { pending.complete(platform) };
            return Ok(());
        }
        let (tag, allocated) = match scope {
            TlbScope::Stage1 { asid, vmid } => (
                asid,
                self.asids.is_allocated(asid) && (vmid == 0 || self.vmids.is_allocated(vmid)),
            ),
            TlbScope::Stage2 { vmid } => (vmid, self.vmids.is_allocated(vmid)),
        };
        if pending.domain != u32::from(tag) || !allocated {
            let domain = pending.domain;
            leak(pending);
            return Err(Error::InvalidField {
                what: "SMMU flush: pending domain is not the scope's allocated ASID/VMID",
                value: u64::from(domain),
            });
        }
        let mut batch: Vec<Command, MAX_FLUSH_COMMANDS> = Vec::new();
        let mut whole =
            pending.whole_domain || (pending.ranges.is_empty() && !pending.freed.is_empty());
        let (op, asid, vmid) = match scope {
            TlbScope::Stage1 { asid, vmid } => (opcode::TLBI_NH_VA, asid, vmid),
            TlbScope::Stage2 { vmid } => (opcode::TLBI_S2_IPA, 0, vmid),
        };
        if !whole {
            'ranges: for r in pending.ranges.iter() {
                if self.ids.idr3.ril() {
                    // Range TLBIs: each covers (NUM + 1) * 2^SCALE pages at the lowest set bit
                    // of the remaining page count, as Linux's `__arm_smmu_tlb_inv_range`.
                    let mut pages = r.len >> 12;
                    let mut at = r.start;
                    while pages > 0 {
                        let scale = pages.trailing_zeros();
                        let num = (pages >> scale) & 31;
                        // CAST: scale < 64 and 1 <= num < 32; a SCALE beyond 31 (a range of
                        // 2^44 bytes or more) is refused and widens to the whole domain.
                        let c = Command::tlbi_range(
                            op,
                            asid,
                            vmid,
                            at,
                            r.leaf_only,
                            scale as u8,
                            (num - 1) as u8,
                        );
                        if c.map(|c| batch.push(c).is_err()).unwrap_or(true) {
                            whole = true;
                            break 'ranges;
                        }
                        at += num << (scale + 12);
                        pages -= num << scale;
                    }
                    continue;
                }
                let mut at = r.start;
                while at < r.start.saturating_add(r.len) {
                    let c = match scope {
                        TlbScope::Stage1 { .. } => Command::tlbi_nh_va(asid, vmid, at, r.leaf_only),
                        TlbScope::Stage2 { .. } => Command::tlbi_s2_ipa(vmid, at, r.leaf_only),
                    };
                    if batch.push(c).is_err() {
                        whole = true;
                        break 'ranges;
                    }
                    at += 4096;
                }
            }
        }
        if let (false, TlbScope::Stage2 { vmid }) = (whole, scope) {
            // TLBI_S2_IPA leaves combined stage-1+2 entries of nested configurations using the
            // VMID (§4.4.3); Linux follows a nesting parent's stage-2 change with TLBI_NH_ALL.
            whole = batch.push(Command::tlbi_nh_all_vmid(vmid)).is_err();
        }
        if whole {
            batch.clear();
            let _ = batch.push(match scope {
                TlbScope::Stage1 { asid, vmid } => Command::tlbi_nh_asid(asid, vmid),
                TlbScope::Stage2 { vmid } => Command::tlbi_s12_vmall(vmid),
            });
        }
        match self.cmdq.submit(platform, &batch) {
            Ok(()) => {
                // SAFETY: the CMD_SYNC after every TLBI of these ranges (non-leaf wherever a
                // table was removed, or the whole ASID/VMID) completed, so no walk cache of this
                // SMMU still holds the freed tables.
                unsafe { pending.complete(platform) };
                Ok(())
            }
            Err(e) => {
                leak(pending);
                Err(e)
            }
        }
    }

    // ---- Events and global errors ----------------------------------------------------------

    /// Hands every recorded event to `report`, decoded, and acknowledges an overflow.
    pub fn drain_events<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        report: impl FnMut(Event),
    ) -> Drained {
        self.evtq.drain(platform, report)
    }

    /// The global errors active now (GERROR ^ GERRORN), acknowledged. A command-queue error is
    /// left to the command queue (it must replace the command first) and not acknowledged here.
    pub fn handle_global_errors(&mut self) -> GlobalErrors {
        let g = self.regs.read32(offset::GERROR);
        let n = self.regs.read32(offset::GERRORN);
        let active = (g ^ n) & gerror::ALL;
        let ack = active & !gerror::CMDQ_ERR;
        if ack != 0 {
            self.regs.write32(offset::GERRORN, n ^ ack);
        }
        GlobalErrors(active)
    }

    /// Enables the wired interrupts: event queue and global errors (and the PRI queue where
    /// there is one), with the IRQ_CTRL / IRQ_CTRLACK handshake.
    pub fn enable_interrupts<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<()> {
        let mut v = irq_ctrl::GERROR_IRQEN | irq_ctrl::EVENTQ_IRQEN;
        if self.priq.is_some() {
            v |= irq_ctrl::PRIQ_IRQEN;
        }
        self.regs.write32(offset::IRQ_CTRL, v);
        poll(platform, "SMMU IRQ_CTRLACK", ACK_TIMEOUT, || {
            (self.regs.read32(offset::IRQ_CTRLACK) == v).then_some(())
        })
    }
}

/// Gives up on a pending value without releasing its pages (a walk cache may hold them).
fn leak(mut pending: PendingInvalidation) {
    pending.ranges.clear();
    pending.whole_domain = false;
    // `DmaPages` has no `Drop`: popping the handles leaks the pages, never frees them.
    while pending.freed.pop().is_some() {
        pending.leaked_pages += 1;
    }
    core::mem::forget(pending);
}
