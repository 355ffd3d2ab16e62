//! Self-test `smmu` (Arm virt with `iommu=smmuv3`): real DMA from QEMU's edu through the
//! driver's SMMUv3 stream table, context descriptors and page tables.
//!
//! The edu on the root bus is attached to a stage-1 domain; pages are mapped, edu copies through
//! them and the bytes are checked; a read-only page must raise F_PERMISSION and an unmapped page
//! (after unmap + TLBI) F_TRANSLATION, with edu's StreamID and the address, and leave memory
//! unchanged; a 2 MiB block must translate and split. Then an abort STE blocks silently, an
//! invalid STE raises C_BAD_STE, an illegal command is reported through GERROR.CMDQ_ERR and the
//! queue recovers, and the same DMA checks run through a stage-2 domain. A second bring-up with
//! a 3-bit stream table makes edu's StreamID (8) raise C_BAD_STREAMID, and a third with the
//! 2-level stream table repeats the stage-1 checks. QEMU caches configurations and translations,
//! so a skipped CFGI or TLBI fails these checks. Linear tables come first: QEMU keeps the 2-level
//! format once it was programmed (notes §2.4).

use pcie_iommu::firmware::dt::DeviceTree;
use pcie_iommu::hal::{DmaPages, Platform};
use pcie_iommu::iommu::pagetable::{Arm64Stage1, Arm64Stage2, IoPageTable, PageSizes, PageTableFormat, Perms};
use pcie_iommu::pci::ConfigAccess;
use pcie_iommu::smmuv3::command::Command;
use pcie_iommu::smmuv3::discovery::{self, Firmware};
use pcie_iommu::smmuv3::{Event, EventKind, Stage1, Stage2, StreamConfig, StreamTableFormat, TlbScope, Unit, UnitConfig};
use pcie_iommu::{Error, Iova, PhysAddr, StreamId};

use crate::checks::Checks;
use crate::edu::Edu;
use crate::pcie::Pcie;
use crate::platform::QemuPlatform;

const IOVA_SMALL: u64 = 0x1000_0000;
const IOVA_2M: u64 = 0x2000_0000;
const PAGE: u64 = 4096;

fn fill(page: &DmaPages, offset: usize, byte: u8, len: usize) {
    for i in 0..len {
        // SAFETY: inside a DMA run this test owns; no DMA is in flight while the CPU writes.
        unsafe { page.virt().as_ptr().add(offset + i).write_volatile(byte.wrapping_add(i as u8)) };
    }
}

fn equals(page: &DmaPages, offset: usize, byte: u8, len: usize) -> bool {
    // SAFETY: as in `fill`; edu finished (its command bit cleared) before this read.
    (0..len).all(|i| unsafe { page.virt().as_ptr().add(offset + i).read_volatile() } == byte.wrapping_add(i as u8))
}

/// How many IRQs of `intid` the handler took, waiting up to 10 ms for the first: QEMU raises
/// the line as it writes the event or the error, so it is already pending when the DMA
/// returns; the bound only covers the exception entry.
fn irq_taken(platform: &QemuPlatform, intid: u32) -> u32 {
    let _ = pcie_iommu::hal::poll(platform, "GIC IRQ", core::time::Duration::from_millis(10), || {
        (crate::arch::gic::count(intid) > 0).then_some(())
    });
    crate::arch::gic::count(intid)
}

/// Everything the checks share.
struct Ctx<'a> {
    platform: &'a QemuPlatform,
    edu: &'a Edu,
    sid: StreamId,
    base: PhysAddr,
}

/// Drains the event queue; logs every event; returns (events, first matching `kind`).
fn drain(unit: &mut Unit, ctx: &Ctx<'_>, kind: Option<EventKind>) -> (u32, Option<Event>) {
    let mut found = None;
    let mut logged = 0;
    let d = unit.drain_events(ctx.platform, |e| {
        if logged < 4 {
            defmt::info!(
                "SMMUv3 event {=str} ({=u8:#04x}) StreamID {=u32:#x} SSID {} address {=u64:#x} ipa/fetch {=u64:#x} {=str} stage2 {=bool}",
                e.kind.name(), e.code, e.stream.0, e.substream, e.address, e.address2, if e.read { "read" } else { "write" }, e.stage2
            );
            logged += 1;
        }
        if Some(e.kind) == kind && found.is_none() {
            found = Some(e);
        }
    });
    if d.overflow {
        defmt::warn!("SMMUv3 event queue overflowed");
    }
    (d.events, found)
}

fn expect_event(unit: &mut Unit, ctx: &Ctx<'_>, checks: &mut Checks, what: &str, kind: EventKind, address: Option<u64>) -> Option<Event> {
    let (n, e) = drain(unit, ctx, Some(kind));
    let ok = e.is_some_and(|e| e.stream == ctx.sid && address.is_none_or(|a| e.address == a));
    defmt::info!("SMMUv3: {=u32} event(s) for {=str}; {=str} from StreamID {=u32:#x} found {=bool}", n, what, kind.name(), ctx.sid.0, ok);
    checks.check(what, ok);
    e
}

/// The page table of a domain in either stage's format.
enum Table {
    S1(IoPageTable<Arm64Stage1>, u16),
    S2(IoPageTable<Arm64Stage2>, u16),
}

impl Table {
    fn new(unit: &mut Unit, ctx: &Ctx<'_>, stage2: bool, checks: &mut Checks) -> Option<Self> {
        let bbml = unit.ids().idr3.bbml();
        if stage2 {
            let vmid = checks.ok("a VMID", unit.allocate_vmid())?;
            let mut t = checks.ok("stage-2 page table", IoPageTable::new(ctx.platform, Arm64Stage2::new(bbml), 4, PageSizes::ALL))?;
            configure(&mut t, unit, u32::from(vmid));
            // The IPA size is capped to the OAS (S2T0SZ, see `Stage2`).
            t.limit_iova_bits(unit.output_address_bits());
            Some(Table::S2(t, vmid))
        } else {
            let asid = checks.ok("an ASID", unit.allocate_asid())?;
            let mut t = checks.ok("stage-1 page table", IoPageTable::new(ctx.platform, Arm64Stage1::new(bbml), 4, PageSizes::ALL))?;
            configure(&mut t, unit, u32::from(asid));
            Some(Table::S1(t, asid))
        }
    }

    fn config(&self) -> StreamConfig {
        match self {
            Table::S1(t, asid) => StreamConfig::Stage1(Stage1 { root: t.root(), levels: t.levels(), asid: *asid }),
            Table::S2(t, vmid) => StreamConfig::Stage2(Stage2 { root: t.root(), levels: t.levels(), vmid: *vmid }),
        }
    }

    fn scope(&self) -> TlbScope {
        match self {
            Table::S1(_, asid) => TlbScope::Stage1 { asid: *asid, vmid: 0 },
            Table::S2(_, vmid) => TlbScope::Stage2 { vmid: *vmid },
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Table::S1(..) => "stage 1",
            Table::S2(..) => "stage 2",
        }
    }

    fn map(&mut self, unit: &mut Unit, p: &QemuPlatform, iova: u64, phys: u64, len: u64, perms: Perms) -> Result<(), Error> {
        let scope = self.scope();
        let pending = match self {
            Table::S1(t, _) => t.map(p, Iova(iova), PhysAddr(phys), len, perms),
            Table::S2(t, _) => t.map(p, Iova(iova), PhysAddr(phys), len, perms),
        }?;
        unit.flush(p, pending, scope)
    }

    fn unmap(&mut self, unit: &mut Unit, p: &QemuPlatform, iova: u64, len: u64, skip_tlbi: bool) -> Result<(), Error> {
        let scope = self.scope();
        let pending = match self {
            Table::S1(t, _) => t.unmap(p, Iova(iova), len),
            Table::S2(t, _) => t.unmap(p, Iova(iova), len),
        }?;
        if skip_tlbi {
            // Mutation check only (never in a passing run): drop the TLBI; the pages are leaked.
            core::mem::forget(pending);
            return Ok(());
        }
        unit.flush(p, pending, scope)
    }

    fn page_size(&self, iova: u64) -> u64 {
        match self {
            Table::S1(t, _) => t.translate(Iova(iova)).map_or(0, |(_, _, s)| s),
            Table::S2(t, _) => t.translate(Iova(iova)).map_or(0, |(_, _, s)| s),
        }
    }
}

fn configure<F: PageTableFormat>(t: &mut IoPageTable<F>, unit: &Unit, domain: u32) {
    t.set_domain(domain);
    t.set_coherent(unit.coherent());
    t.set_phys_bits(unit.output_address_bits());
}

pub fn run(cfg: &impl ConfigAccess, e: &Pcie, dt: &DeviceTree<'_>, platform: &QemuPlatform, checks: &mut Checks) {
    let fw = Firmware::DeviceTree(dt);
    let Some(Some(desc)) = checks.ok("SMMUv3 described by the device tree", discovery::describe(fw, 0)) else {
        checks.check("an SMMUv3 in the device tree", false);
        return;
    };
    defmt::info!(
        "SMMUv3 description: base {} coherent {=bool} INTIDs eventq {=u32} priq {=u32} cmdq-sync {=u32} gerror {=u32}",
        desc.base, desc.coherent, desc.event_irq, desc.priq_irq, desc.sync_irq, desc.gerror_irq
    );
    let Some(f) = e.topology.functions().iter().find(|f| (f.id.vendor, f.id.device) == crate::edu::ID && f.bdf().bus == 0) else {
        checks.check("an edu on the root bus", false);
        return;
    };
    let bdf = f.bdf();
    let Some(map) = checks.ok("RID to StreamID map", discovery::stream_id_map(fw, &desc, bdf.segment)) else { return };
    let Some(Some(sid)) = checks.ok("edu's StreamID", map.stream_id(bdf.routing_id())) else {
        checks.check("edu's DMA goes through the SMMU", false);
        return;
    };
    let bar0 = f.bars.iter().flatten().find(|b| b.index == 0).map_or(0, |b| b.base);
    let Some(edu) = checks.ok("edu opens", Edu::open(platform, cfg, bdf, bar0)) else { return };
    defmt::info!("SMMUv3: edu {} has StreamID {=u32:#x}", bdf, sid.0);
    let ctx = Ctx { platform, edu: &edu, sid, base: desc.base };

    // ---- Linear stream table: stage 1, blocks, abort, invalid, illegal command, stage 2 ----------
    let linear = UnitConfig { sid_bits: Some(8), format: Some(StreamTableFormat::Linear), ..UnitConfig::default() };
    let Some(mut unit) = checks.ok("SMMUv3 up with a linear stream table (8 StreamID bits)", Unit::new(platform, ctx.base, linear)) else { return };
    defmt::info!("SMMUv3: CR0 {=u32:#x}, stream table {} with {=u8} StreamID bits", unit.control(), unit.stream_table().format(), unit.stream_table().sid_bits());
    let skip_tlbi = false;
    let gic = checks.ok("GIC up, IRQs unmasked", crate::arch::gic::init(dt, platform)).is_some()
        && checks.ok("GIC: SMMU eventq SPI enabled", crate::arch::gic::enable_edge_spi(desc.event_irq)).is_some()
        && checks.ok("GIC: SMMU gerror SPI enabled", crate::arch::gic::enable_edge_spi(desc.gerror_irq)).is_some();
    if gic {
        checks.ok("SMMU event queue and global error interrupts enabled", unit.enable_interrupts(platform));
    }
    if let Some(mut s1) = Table::new(&mut unit, &ctx, false, checks) {
        dma_checks(&mut unit, &ctx, &mut s1, "linear", skip_tlbi, checks);
        if gic {
            let taken = irq_taken(platform, desc.event_irq);
            defmt::info!("GIC: SMMU eventq SPI (INTID {=u32}) taken by the IRQ handler {=u32} time(s) after the faults", desc.event_irq, taken);
            checks.check("the event queue's wired interrupt was taken as an IRQ", taken > 0);
        }
        blocks(&mut unit, &ctx, &mut s1, checks);
        abort_and_invalid(&mut unit, &ctx, &s1, checks);
    }
    illegal_command(&mut unit, &ctx, checks);
    if gic {
        let taken = irq_taken(platform, desc.gerror_irq);
        defmt::info!("GIC: SMMU gerror SPI (INTID {=u32}) taken by the IRQ handler {=u32} time(s) after the illegal command ({=u32} spurious)", desc.gerror_irq, taken, crate::arch::gic::spurious());
        checks.check("the global error's wired interrupt was taken as an IRQ", taken > 0);
    }
    if let Some(mut s2) = Table::new(&mut unit, &ctx, true, checks) {
        dma_checks(&mut unit, &ctx, &mut s2, "linear", skip_tlbi, checks);
    }
    nested(&mut unit, &ctx, checks);
    checks.ok("SMMUv3 disabled", unit.disable(platform));

    // ---- A stream table too small for edu's StreamID ------------------------------------------
    let tiny = UnitConfig { sid_bits: Some(3), format: Some(StreamTableFormat::Linear), ..UnitConfig::default() };
    if let Some(mut unit) = checks.ok("SMMUv3 up with a 3-bit linear stream table", Unit::new(platform, ctx.base, tiny)) {
        let _ = drain(&mut unit, &ctx, None);
        if let Some(page) = checks.ok("a DMA page", platform.alloc_dma_pages(1, 4096)) {
            fill(&page, 0, 0x00, 16);
            checks.ok("edu DMA with a StreamID beyond the table", edu.dma(platform, page.phys().0, 16, true));
            let _ = expect_event(&mut unit, &ctx, checks, "a StreamID beyond the stream table raises C_BAD_STREAMID", EventKind::BadStreamId, None);
            checks.check("DMA from a StreamID beyond the table leaves memory unchanged", equals(&page, 0, 0x00, 16));
        }
        checks.ok("SMMUv3 disabled", unit.disable(platform));
    }

    // ---- Event queue overflow: two slots, four events per faulting 16-byte DMA -----------------
    let small = UnitConfig { evtq_log2: 1, ..tiny };
    if let Some(mut unit) = checks.ok("SMMUv3 up with a 2-entry event queue", Unit::new(platform, ctx.base, small)) {
        let _ = drain(&mut unit, &ctx, None);
        let _ = unit.handle_global_errors();
        if let Some(page) = checks.ok("a DMA page", platform.alloc_dma_pages(1, 4096)) {
            checks.ok("edu DMA making four events", edu.dma(platform, page.phys().0, 16, true));
            let g = unit.handle_global_errors();
            let (n, _) = drain(&mut unit, &ctx, None);
            defmt::info!("SMMUv3 event queue of 2: {=u32} event(s) delivered, GERROR active {=u32:#x} (EVENTQ_ABT_ERR {=bool})", n, g.0, g.event_queue_abort());
            // QEMU reports a full event queue as EVENTQ_ABT_ERR (notes §2.7); the architecture
            // lets an SMMU set EVENTQ_PROD.OVFLG instead, which `drain` reports.
            checks.check("an event queue overflow is detected and acknowledged", n == 2 && g.event_queue_abort());
            checks.ok("edu DMA after the overflow", edu.dma(platform, page.phys().0, 4, true));
            let (again, _) = drain(&mut unit, &ctx, Some(EventKind::BadStreamId));
            checks.check("events are delivered again after the overflow", again == 1 && unit.handle_global_errors().is_empty());
        }
        checks.ok("SMMUv3 disabled", unit.disable(platform));
    }

    // ---- 2-level stream table ------------------------------------------------------------------
    let two = UnitConfig { sid_bits: Some(16), format: Some(StreamTableFormat::TwoLevel { split: 8 }), ..UnitConfig::default() };
    if let Some(mut unit) = checks.ok("SMMUv3 up with a 2-level stream table (16 StreamID bits, split 8)", Unit::new(platform, ctx.base, two)) {
        if let Some(mut s1) = Table::new(&mut unit, &ctx, false, checks) {
            dma_checks(&mut unit, &ctx, &mut s1, "2-level", skip_tlbi, checks);
            defmt::info!("SMMUv3: 2-level stream table has {=usize} level-2 table(s)", unit.stream_table().l2_tables());
            checks.check("the 2-level table allocated one level-2 table, lazily", unit.stream_table().l2_tables() == 1);
        }
        let g = unit.handle_global_errors();
        checks.check("no global error is left active", g.is_empty());
        checks.ok("SMMUv3 disabled", unit.disable(platform));
    }
}

/// Attach, round trip, read-only fault, unmap + TLBI fault.
fn dma_checks(unit: &mut Unit, ctx: &Ctx<'_>, table: &mut Table, layout: &str, skip_tlbi: bool, checks: &mut Checks) {
    let p = ctx.platform;
    let name = table.name();
    if checks.ok("StreamID attached to the domain", unit.set_stream(p, ctx.sid, table.config())).is_none() {
        return;
    }
    defmt::info!("SMMUv3 {=str} stream table: edu StreamID {=u32:#x} attached to a {=str} domain", layout, ctx.sid.0, name);
    let Some(pages) = checks.ok("three DMA pages", p.alloc_dma_pages(3, 4096)) else { return };
    let page = |i: u64| pages.phys().0 + i * PAGE;
    fill(&pages, 0, 0xa0, 64);
    fill(&pages, 4096, 0x00, 64);
    fill(&pages, 8192, 0x5a, 64);
    let mapped = table.map(unit, p, IOVA_SMALL, page(0), PAGE, Perms::RW).and_then(|()| table.map(unit, p, IOVA_SMALL + PAGE, page(1), PAGE, Perms::RW)).and_then(|()| table.map(unit, p, IOVA_SMALL + 2 * PAGE, page(2), PAGE, Perms::READ));
    if checks.ok("three pages mapped and flushed", mapped).is_none() {
        return;
    }
    let _ = drain(unit, ctx, None);

    checks.ok("edu reads IOVA page 0", ctx.edu.dma(p, IOVA_SMALL, 64, false));
    checks.ok("edu writes IOVA page 1", ctx.edu.dma(p, IOVA_SMALL + PAGE, 64, true));
    let copied = equals(&pages, 4096, 0xa0, 64);
    let (events, _) = drain(unit, ctx, None);
    defmt::info!("SMMUv3 {=str}: edu copied IOVA {=u64:#x} -> {=u64:#x}: bytes equal {=bool}, {=u32} event(s)", name, IOVA_SMALL, IOVA_SMALL + PAGE, copied, events);
    checks.check("DMA through mapped pages returns the bytes written", copied && events == 0);

    checks.ok("edu writes the read-only page", ctx.edu.dma(p, IOVA_SMALL + 2 * PAGE, 16, true));
    let e = expect_event(unit, ctx, checks, "a write to a read-only page raises F_PERMISSION at its address", EventKind::Permission, Some(IOVA_SMALL + 2 * PAGE));
    let stage2 = matches!(table, Table::S2(..));
    checks.check("the fault is reported at the domain's stage, as a write", e.is_some_and(|e| e.stage2 == stage2 && !e.read));
    checks.check("the read-only page is unchanged", equals(&pages, 8192, 0x5a, 64));

    checks.ok("unmap + TLBI", table.unmap(unit, p, IOVA_SMALL + PAGE, PAGE, skip_tlbi));
    fill(&pages, 4096, 0x00, 64);
    checks.ok("edu writes the unmapped page", ctx.edu.dma(p, IOVA_SMALL + PAGE, 16, true));
    let _ = expect_event(unit, ctx, checks, "a write to an unmapped page after unmap + TLBI raises F_TRANSLATION at its address", EventKind::Translation, Some(IOVA_SMALL + PAGE));
    checks.check("the unmapped page is unchanged", equals(&pages, 4096, 0x00, 64));
}

/// A 2 MiB block translates, and unmapping 4 KiB inside splits it.
fn blocks(unit: &mut Unit, ctx: &Ctx<'_>, table: &mut Table, checks: &mut Checks) {
    let p = ctx.platform;
    let Some(run) = checks.ok("a 2 MiB-aligned DMA run", p.alloc_dma_pages(512, 2 << 20)) else { return };
    if checks.ok("2 MiB mapping", table.map(unit, p, IOVA_2M, run.phys().0, 2 << 20, Perms::RW)).is_none() {
        return;
    }
    let size = table.page_size(IOVA_2M);
    defmt::info!("SMMUv3: {=u64:#x} maps with a {=u64} KiB block", IOVA_2M, size / 1024);
    checks.check("the 2 MiB range uses one 2 MiB block", size == 2 << 20);
    for off in [0x1000u64, 0x1f_f000] {
        checks.ok("edu DMA through the 2 MiB block", ctx.edu.dma(p, IOVA_2M + off, 64, true));
    }
    checks.check("DMA at both ends of the 2 MiB block landed", equals(&run, 0x1000, 0xa0, 64) && equals(&run, 0x1f_f000, 0xa0, 64));
    fill(&run, 0x1000, 0, 64);
    fill(&run, 0x2000, 0, 64);
    checks.ok("unmap 4 KiB inside the 2 MiB block (split)", table.unmap(unit, p, IOVA_2M + 0x1000, PAGE, false));
    checks.check("the rest of the 2 MiB range is now mapped with 4 KiB pages", table.page_size(IOVA_2M + 0x2000) == 4096);
    checks.ok("edu DMA to the hole", ctx.edu.dma(p, IOVA_2M + 0x1000, 16, true));
    let _ = expect_event(unit, ctx, checks, "a write to the 4 KiB hole in a split 2 MiB block raises F_TRANSLATION", EventKind::Translation, Some(IOVA_2M + 0x1000));
    checks.ok("edu DMA next to the hole", ctx.edu.dma(p, IOVA_2M + 0x2000, 64, true));
    checks.check("the split 2 MiB block still maps its neighbours", equals(&run, 0x2000, 0xa0, 64) && equals(&run, 0x1000, 0, 64));
}

/// An abort STE blocks silently; an invalid STE raises C_BAD_STE; re-attaching restores DMA.
fn abort_and_invalid(unit: &mut Unit, ctx: &Ctx<'_>, table: &Table, checks: &mut Checks) {
    let p = ctx.platform;
    let Some(page) = checks.ok("a DMA page", p.alloc_dma_pages(1, 4096)) else { return };
    fill(&page, 0, 0x00, 64);
    let _ = drain(unit, ctx, None);
    // IOVA_SMALL is mapped RW to page 0 of `dma_checks`; with abort, nothing may reach it, and
    // the physical address of this page must not be reached either (abort is not bypass).
    checks.ok("STE set to abort", unit.set_stream(p, ctx.sid, StreamConfig::Abort));
    checks.ok("edu DMA with an abort STE", ctx.edu.dma(p, page.phys().0, 64, true));
    let (n, _) = drain(unit, ctx, None);
    defmt::info!("SMMUv3: abort STE: {=u32} event(s), memory unchanged {=bool}", n, equals(&page, 0, 0x00, 64));
    checks.check("an abort STE blocks DMA silently (no event, memory unchanged)", n == 0 && equals(&page, 0, 0x00, 64));

    checks.ok("STE set invalid", unit.set_stream(p, ctx.sid, StreamConfig::Invalid));
    checks.ok("edu DMA with an invalid STE", ctx.edu.dma(p, page.phys().0, 16, true));
    let _ = expect_event(unit, ctx, checks, "an invalid STE raises C_BAD_STE", EventKind::BadSte, None);
    checks.check("DMA with an invalid STE leaves memory unchanged", equals(&page, 0, 0x00, 64));

    checks.ok("StreamID re-attached", unit.set_stream(p, ctx.sid, table.config()));
}

/// An unknown opcode is reported through GERROR.CMDQ_ERR / CMDQ_CONS.ERR, skipped, and later
/// commands complete.
fn illegal_command(unit: &mut Unit, ctx: &Ctx<'_>, checks: &mut Checks) {
    let p = ctx.platform;
    let bad = Command::from_raw([0x7f, 0]);
    let result = unit.command_queue().submit(p, &[Command::tlbi_nsnh_all(), bad, Command::cfgi_all()]);
    defmt::info!("SMMUv3: illegal command submitted: {}", result);
    checks.check("an illegal command is reported with its opcode and CMDQ_CONS.ERR = ILL", matches!(result, Err(Error::SmmuCommand { opcode: 0x7f, error: 1, .. })));
    let later = unit.command_queue().submit(p, &[Command::tlbi_nsnh_all()]);
    checks.ok("commands and CMD_SYNC after the illegal command complete", later);
    let g = unit.handle_global_errors();
    defmt::info!("SMMUv3: global errors active after recovery: {=u32:#x}; queue stats {}", g.0, unit.command_queue().stats());
    checks.check("GERROR.CMDQ_ERR is acknowledged after recovery", !g.command_queue());
}

/// Nested translation: stage 2 maps the first GiB of RAM (IPA 0x4000_0000) onto itself with one
/// 1 GiB block, so the CD table, the stage-1 tables and the data pages, whose IPAs are their
/// physical addresses, are reachable; stage 1 maps IOVAs to those IPAs. A stage-1 hole then
/// faults at stage 1.
fn nested(unit: &mut Unit, ctx: &Ctx<'_>, checks: &mut Checks) {
    let p = ctx.platform;
    let (Some(Table::S1(mut s1, asid)), Some(Table::S2(mut s2, vmid))) = (Table::new(unit, ctx, false, checks), Table::new(unit, ctx, true, checks)) else { return };
    const RAM_GIB: u64 = 0x4000_0000;
    let mapped = s2.map(p, Iova(RAM_GIB), PhysAddr(RAM_GIB), 1 << 30, Perms::RW).and_then(|pending| unit.flush(p, pending, TlbScope::Stage2 { vmid }));
    if checks.ok("stage 2 maps the first GiB of RAM onto itself", mapped).is_none() {
        return;
    }
    defmt::info!("SMMUv3 nested: stage 2 maps IPA {=u64:#x} with a {=u64} MiB block", RAM_GIB, s2.translate(Iova(RAM_GIB)).map_or(0, |(_, _, sz)| sz >> 20));
    let config = StreamConfig::Nested(Stage1 { root: s1.root(), levels: s1.levels(), asid }, Stage2 { root: s2.root(), levels: s2.levels(), vmid });
    if checks.ok("StreamID attached to a nested (stage 1 + stage 2) configuration", unit.set_stream(p, ctx.sid, config)).is_none() {
        return;
    }
    let Some(pages) = checks.ok("two DMA pages", p.alloc_dma_pages(2, 4096)) else { return };
    if pages.phys().0 + 2 * PAGE > RAM_GIB + (1 << 30) {
        checks.check("the DMA pages lie in the GiB stage 2 maps", false);
        return;
    }
    fill(&pages, 0, 0xc0, 64);
    fill(&pages, 4096, 0x00, 64);
    // Nested stage-1 TLB entries are tagged with the VMID too: the TLBIs must carry it.
    let scope = TlbScope::Stage1 { asid, vmid };
    let mapped = s1
        .map(p, Iova(IOVA_SMALL), pages.phys(), 2 * PAGE, Perms::RW)
        .and_then(|pending| unit.flush(p, pending, scope));
    if checks.ok("stage 1 maps two pages", mapped).is_none() {
        return;
    }
    let _ = drain(unit, ctx, None);
    checks.ok("edu reads through both stages", ctx.edu.dma(p, IOVA_SMALL, 64, false));
    checks.ok("edu writes through both stages", ctx.edu.dma(p, IOVA_SMALL + PAGE, 64, true));
    let copied = equals(&pages, 4096, 0xc0, 64);
    let (events, _) = drain(unit, ctx, None);
    defmt::info!("SMMUv3 nested: edu copied IOVA {=u64:#x} -> {=u64:#x}: bytes equal {=bool}, {=u32} event(s)", IOVA_SMALL, IOVA_SMALL + PAGE, copied, events);
    checks.check("nested DMA returns the bytes written", copied && events == 0);
    let unmapped = s1.unmap(p, Iova(IOVA_SMALL + PAGE), PAGE).and_then(|pending| unit.flush(p, pending, scope));
    checks.ok("stage-1 unmap + TLBI", unmapped);
    fill(&pages, 4096, 0x00, 64);
    checks.ok("edu writes the stage-1 hole", ctx.edu.dma(p, IOVA_SMALL + PAGE, 16, true));
    let e = expect_event(unit, ctx, checks, "a stage-1 hole under nesting raises F_TRANSLATION at its address", EventKind::Translation, Some(IOVA_SMALL + PAGE));
    checks.check("the nested fault is reported at stage 1 and memory is unchanged", e.is_some_and(|e| !e.stage2) && equals(&pages, 4096, 0x00, 64));
    checks.ok("StreamID detached (abort)", unit.detach(p, ctx.sid));
}
