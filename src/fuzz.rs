//! Entry points of the fuzz targets (`fuzz/fuzz_targets/*.rs`, run with `cargo fuzz`), shared
//! with the unit tests below that replay every target's corpus, so the corpus is exercised on
//! every `cargo test`, on stable.
//!
//! Each entry point feeds the bytes to a parser or walker and drives every accessor and
//! iterator to its end. A panic, an overflow (debug builds) or a hang is the bug a target finds;
//! results are ignored.

extern crate std;

use core::cell::RefCell;
use std::vec::Vec;

use crate::addr::{Bdf, PhysAddr, RequesterId};
use crate::firmware::acpi::{
    AcpiTables, Dmar, Hpet, Iort, IortNodeKind, Mcfg, RemappingStructure, RootTable, Rsdp,
    validate_table,
};
use crate::firmware::dt::DeviceTree;
use crate::pci::config::ConfigAccess;

fn drain<T, E>(it: impl Iterator<Item = Result<T, E>>) {
    // Iterators are bounded by the input's size; the cap only guards the fuzzer's time.
    for _ in it.take(1 << 16) {}
}

/// One ACPI table of any kind: every reader tries the bytes.
pub fn acpi_table(data: &[u8]) {
    let _ = validate_table(data, None);
    let _ = Rsdp::parse(data);
    if let Ok(t) = RootTable::parse_rsdt(data) {
        for _ in t.entries() {}
    }
    if let Ok(t) = RootTable::parse_xsdt(data) {
        for _ in t.entries() {}
    }
    if let Ok(m) = Mcfg::parse(data) {
        for e in m.entries().flatten() {
            let _ = (e.ecam_start(), e.ecam_size());
        }
    }
    if let Ok(h) = Hpet::parse(data) {
        let _ = h.base_address();
    }
    if let Ok(d) = Dmar::parse(data) {
        for s in d.structures().take(1 << 12).flatten() {
            let scopes = match s {
                RemappingStructure::Drhd(x) => Some(x.scopes()),
                RemappingStructure::Rmrr(x) => Some(x.scopes()),
                RemappingStructure::Atsr(x) => Some(x.scopes()),
                RemappingStructure::Satc(x) => Some(x.scopes()),
                RemappingStructure::Sidp(x) => Some(x.scopes()),
                _ => None,
            };
            for scope in scopes.into_iter().flatten().take(1 << 12).flatten() {
                let _ = scope.resolve(|b| Some(b.bus.wrapping_add(1)));
                for _ in scope.path() {}
            }
        }
    }
    if let Ok(iort) = Iort::parse(data) {
        for node in iort.nodes().take(1 << 12).flatten() {
            drain(node.id_mappings());
            if let IortNodeKind::Rmr(rmr) = node.kind() {
                drain(rmr.memory_ranges());
            }
        }
        let from_data = u16::from_le_bytes([data.last().copied().unwrap_or(0), data.len() as u8]);
        for rid in [0u16, 1, 0x100, 0xffff, from_data] {
            let _ = iort.map_rid(0, RequesterId(rid));
        }
    }
}

/// The bytes as physical memory from address 0x1000, with the RSDP at its start: the table
/// walker follows whatever pointers they hold.
pub fn acpi_walk(data: &[u8]) {
    const BASE: u64 = 0x1000;
    let map = |phys: PhysAddr, len: usize| {
        let start = phys.0.checked_sub(BASE).and_then(|o| usize::try_from(o).ok());
        start
            .and_then(|s| data.get(s..s.checked_add(len)?))
            .ok_or(crate::Error::MmioUnavailable { base: phys.0, size: len as u64 })
    };
    if let Ok(tables) = AcpiTables::new(PhysAddr(BASE), map) {
        drain(tables.tables());
        for sig in [b"MCFG", b"DMAR", b"IORT", b"HPET", b"APIC"] {
            if let Ok(t) = tables.find(sig) {
                acpi_table(t);
            }
        }
    }
}

/// A flattened device tree: every accessor.
pub fn device_tree(data: &[u8]) {
    let Ok(dt) = DeviceTree::new(data) else { return };
    for node in dt.nodes().take(1 << 14) {
        for p in node.properties().take(1 << 10) {
            let _ = (p.as_u32("fuzz"), p.as_str("fuzz"));
        }
        let _ = (node.reg().map(|r| r.count()), node.phandle(), node.interrupt_parent());
    }
    for host in dt.pci_hosts().take(64).flatten() {
        if let Ok(ranges) = host.ranges() {
            drain(ranges);
        }
        if let Ok(Some(map)) = host.iommu_map() {
            for _ in map.entries() {}
        }
        if let Ok(Some(map)) = host.msi_map() {
            for _ in map.entries() {}
        }
        for rid in [0u16, 0x8, 0xff, 0xffff] {
            let _ = host.stream_id(RequesterId(rid));
        }
    }
    for smmu in dt.smmus().take(64).flatten() {
        let _ = smmu.node().gic_interrupts().map(|i| i.count());
    }
    drain(dt.memory());
    drain(dt.memory_reservations());
    drain(dt.reserved_memory());
    let _ = (dt.chosen(), dt.pl011(), dt.psci_method());
    if let Ok(gic) = dt.gic() {
        drain(gic.redistributors());
    }
}

/// A configuration space read from fuzz bytes: function (bus, devfn) answers with the 4 KiB
/// chunk its index selects; writes land in a private copy so walkers see them.
pub struct FuzzConfig {
    space: RefCell<Vec<u8>>,
    functions: u16,
}

impl FuzzConfig {
    /// `data[0]` says how many functions answer (bus 0 and 1, devfn in order); the rest is their
    /// configuration spaces, repeated to fill 4 KiB each.
    pub fn new(data: &[u8]) -> Self {
        let functions = u16::from(data.first().copied().unwrap_or(0) % 17);
        let body = data.get(1..).unwrap_or_default();
        let mut space = std::vec![0xffu8; usize::from(functions) * 4096];
        if !body.is_empty() {
            for (i, b) in space.iter_mut().enumerate() {
                *b = body[i % body.len()];
            }
        }
        Self { space: RefCell::new(space), functions }
    }

    fn index(&self, bdf: Bdf, offset: u16) -> Option<usize> {
        let n = usize::from(bdf.bus) * 256 + usize::from(bdf.devfn);
        (bdf.segment == 0 && n < usize::from(self.functions) && offset < 4096)
            .then(|| n * 4096 + usize::from(offset))
    }
}

impl ConfigAccess for FuzzConfig {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        let space = self.space.borrow();
        self.index(bdf, offset & !3)
            .and_then(|i| space.get(i..i + 4))
            .map_or(u32::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(i) = self.index(bdf, offset & !3)
            && let Some(b) = self.space.borrow_mut().get_mut(i..i + 4)
        {
            b.copy_from_slice(&value.to_le_bytes());
        }
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        if let Some(i) = self.index(bdf, offset & !1)
            && let Some(b) = self.space.borrow_mut().get_mut(i..i + 2)
        {
            b.copy_from_slice(&value.to_le_bytes());
        }
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        if let Some(i) = self.index(bdf, offset)
            && let Some(b) = self.space.borrow_mut().get_mut(i)
        {
            *b = value;
        }
    }
}

/// The capability walkers and `collect` over one fuzzed configuration space.
pub fn capabilities(data: &[u8]) {
    let mut bytes = std::vec![1u8];
    bytes.extend_from_slice(data);
    let cfg = FuzzConfig::new(&bytes);
    let bdf = Bdf::default();
    drain(crate::pci::caps::legacy(&cfg, bdf));
    drain(crate::pci::caps::extended(&cfg, bdf));
    let _ = crate::pci::caps::collect(&cfg, bdf);
}

/// Enumeration of a fuzzed topology (up to 16 functions on buses 0 and 1), then isolation
/// groups over what it found.
pub fn enumeration(data: &[u8]) {
    use crate::pci::bars::Window;
    use crate::pci::enumerate::{Enumeration, Options, RootBus, Windows};
    let cfg = FuzzConfig::new(data);
    let root = RootBus::new(0, 0, 3).with_windows(Windows {
        memory32: Some(Window::new(0x1000_0000, 0x1000_0000)),
        memory64: Some(Window::new(0x80_0000_0000, 0x10_0000_0000)),
        io: Some(Window::new(0x1000, 0xf000)),
    });
    let mut e = std::boxed::Box::new(Enumeration::<32, 4>::new());
    if e.run(&cfg, &[root], &Options::default()).is_ok() {
        let groups = crate::pci::groups::Groups::compute(&e.topology);
        for g in groups.iter() {
            for _ in g.aliases(&e.topology) {}
        }
    }
}

/// VT-d page request descriptors (32 bytes each, as the unit writes them into the queue):
/// each is decoded, what decodes goes through the page-request service (functions with an even
/// bus number attached, odd devfn a VF, a handler whose answer the address picks), and every
/// response is encoded as a page group response descriptor.
pub fn page_request(data: &[u8]) {
    use crate::addr::{Pasid, RequesterId};
    use crate::iommu::pri::{
        Disposition, Group, GroupResponse, PageRequestService, ResponseCode, ResponseSink, Route,
        Router, Routing,
    };
    use crate::vtd::prq::{decode, invalid_response_for, response_descriptor};

    struct Table;
    impl Router for Table {
        type Attachment = u16;
        fn route(&mut self, rid: RequesterId, _: Option<Pasid>) -> Routing<u16> {
            if rid.bus().is_multiple_of(2) {
                let is_vf = rid.devfn() % 2 == 1;
                let pf = RequesterId(rid.0 & !1);
                Routing::Attached(Route { attachment: rid.0, pasid_in_response: is_vf, is_vf, pf })
            } else {
                Routing::Unattached { pasid_in_response: false }
            }
        }
    }
    struct Sink(usize);
    impl ResponseSink for Sink {
        fn respond(&mut self, r: &GroupResponse) -> crate::Result<()> {
            let _ = response_descriptor(r);
            self.0 += 1;
            Ok(())
        }
    }
    let mut svc = std::boxed::Box::new(PageRequestService::<u16, 8, 4>::new());
    let mut sink = Sink(0);
    let mut handler = |g: &Group<'_, u16>| {
        let a = g.requests.first().map_or(0, |r| r.address >> 12);
        match a % 4 {
            0 => Disposition::Respond(ResponseCode::Success),
            1 => Disposition::Respond(ResponseCode::Invalid),
            2 => Disposition::Respond(ResponseCode::Failure),
            _ => Disposition::Defer,
        }
    };
    let mut ends = 0usize;
    for chunk in data.chunks_exact(32).take(1 << 12) {
        let mut words = [0u64; 4];
        for (w, b) in words.iter_mut().zip(chunk.chunks_exact(8)) {
            let mut q = [0u8; 8];
            q.copy_from_slice(b);
            *w = u64::from_le_bytes(q);
        }
        match decode(words) {
            Ok(m) => {
                if let crate::iommu::pri::PageRequestMessage::Request(r) = m
                    && r.ends_group()
                {
                    ends += 1;
                }
                let _ = svc.receive(m, &mut Table, &mut handler, &mut sink);
            }
            Err(_) => {
                if let Some(r) = invalid_response_for(words) {
                    let _ = sink.respond(&r);
                    ends += 1;
                }
            }
        }
        if words[0] & (1 << 63) != 0 {
            svc.overflow();
        }
    }
    // Never more responses than group ends (an early response needs more open groups than
    // the service remembers: 8 slots and 8 keys; this input has at most 4096).
    let early = usize::try_from(svc.stats().early_responses).unwrap_or(usize::MAX);
    assert!(sink.0 <= ends + early, "{} responses for {ends} group ends", sink.0);
    let _ = svc.abort_function(RequesterId(0), &mut sink);
    let _ = svc.answer_stale(&mut sink);
}

/// VT-d fault reporting: the bytes as primary fault records (16 bytes each) and fault status
/// values, then as a register window behind a [`crate::vtd::Unit`]: `probe` and `new` validate
/// CAP/ECAP (NFR, FRO, IRO, the domain count are hardware input that sizes register accesses),
/// and, where the window lets `new` through, `drain_faults` walks the recording registers the
/// fuzzed CAP names.
pub fn vtd_fault(data: &[u8]) {
    use crate::vtd::fault::{FaultRecord, FaultStatus, reason_text};
    for chunk in data.chunks_exact(16) {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&chunk[i..i + 8]);
            u64::from_le_bytes(b)
        };
        if let Some(r) = FaultRecord::decode(word(0), word(8)) {
            let _ = (reason_text(r.reason), r.source_id, r.pasid);
        }
        // CAST: the low 32 bits as a status register value.
        let status = FaultStatus(word(0) as u32);
        let _ = (status.overflow(), status.pending(), status.iqe(), status.fault_record_index());
    }
    let platform = FuzzPlatform::new(data);
    let base = PhysAddr(FuzzPlatform::BASE);
    let size = FuzzPlatform::WINDOW;
    let _ = crate::vtd::Unit::probe(&platform, base, size);
    for mode in [crate::vtd::TableMode::Legacy, crate::vtd::TableMode::Scalable] {
        if let Ok(unit) = crate::vtd::Unit::new(&platform, base, size, mode) {
            let mut seen = 0usize;
            let _ = unit.drain_faults(|_, r| {
                seen += 1;
                let _ = reason_text(r.reason);
            });
            for i in [0, 1, 255, 256, usize::MAX] {
                let _ = unit.fault_record(i);
            }
        }
    }
}

/// SMMUv3 ID registers: the first 32 bytes are IDR0..IDR5, IIDR and AIDR; every field
/// accessor and the validation that gates sizing tables and queues from them.
pub fn smmu_idr(data: &[u8]) {
    use crate::smmuv3::regs::{IdRegisters, Idr0, Idr1, Idr3, Idr5};
    let mut words = [0u32; 8];
    for (w, chunk) in words.iter_mut().zip(data.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u32::from_le_bytes(b);
    }
    let ids = IdRegisters {
        idr0: Idr0(words[0]),
        idr1: Idr1(words[1]),
        idr2: words[2],
        idr3: Idr3(words[3]),
        idr4: words[4],
        idr5: Idr5(words[5]),
        iidr: words[6],
        aidr: words[7],
    };
    let valid = ids.validate().is_ok();
    let (i0, i1, i3, i5) = (ids.idr0, ids.idr1, ids.idr3, ids.idr5);
    let _ = (i0.s1p(), i0.s2p(), i0.ttf(), i0.cohacc(), i0.httu(), i0.ats(), i0.pri());
    let _ = (i0.ttendian(), i0.stall_model(), i0.term_model(), i0.stream_table_levels());
    let _ = (i1.sid_bits(), i1.ssid_bits(), i1.cmdq_log2(), i1.eventq_log2(), i1.priq_log2());
    let _ = (i3.bbml(), i3.ril(), i5.gran4k(), i5.vax(), i5.stall_max());
    let oas = i5.output_address_bits();
    if valid {
        // What the driver sizes from validated values stays in range.
        debug_assert!(i1.sid_bits() <= 32 && i1.cmdq_log2() <= 19);
        debug_assert!(oas.is_ok_and(|b| (32..=52).contains(&b)), "{oas:?}");
    }
}

/// VT-d invalidation descriptors as hardware sees them: the bytes (32 per descriptor) are
/// submitted raw through the driver's queue to the `sim` unit model, which decodes them as
/// the specification says (its decoder, `sim::vtd::qi`) and rejects what is malformed (IQE);
/// the driver must report each rejection as a typed error and keep the queue usable.
#[cfg(any(test, feature = "sim"))]
pub fn vtd_queue(data: &[u8]) {
    use crate::vtd::descriptor::Descriptor;
    use crate::vtd::qi::DEFAULT_ENTRIES;
    let config = match data.first().map(|b| b % 3) {
        Some(0) => crate::sim::vtd::Config::qemu_legacy(),
        Some(1) => crate::sim::vtd::Config::qemu_scalable_second_stage(),
        _ => crate::sim::vtd::Config::qemu_scalable_first_stage(),
    };
    let mode = if config.ecap & (1 << 43) != 0 {
        crate::vtd::TableMode::Scalable
    } else {
        crate::vtd::TableMode::Legacy
    };
    let (p, model) = crate::sim::vtd::pair(config);
    let Ok(mut unit) =
        crate::vtd::Unit::new(&p, crate::sim::vtd::DEFAULT_BASE, model.window_size(), mode)
    else {
        return;
    };
    if unit.enable_queued_invalidation(&p, DEFAULT_ENTRIES).is_err() {
        return;
    }
    let Ok(queue) = unit.queue() else { return };
    queue.set_timeout(core::time::Duration::from_millis(2));
    let body = data.get(1..).unwrap_or_default();
    // Batches of up to 4 descriptors, so rejections land in different queue positions.
    for batch in body.chunks(4 * 32).take(64) {
        let descriptors: Vec<Descriptor> = batch
            .chunks_exact(32)
            .map(|c| {
                let mut words = [0u64; 4];
                for (w, b) in words.iter_mut().zip(c.chunks_exact(8)) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    *w = u64::from_le_bytes(a);
                }
                Descriptor::from_raw(words)
            })
            .collect();
        let _ = queue.submit(&p, &descriptors);
    }
    // Whatever came before, a well-formed batch still completes.
    let _ = queue.global(&p);
}

fn le_words<const N: usize>(chunk: &[u8]) -> [u64; N] {
    let mut words = [0u64; N];
    for (w, b) in words.iter_mut().zip(chunk.chunks_exact(8)) {
        let mut q = [0u8; 8];
        q.copy_from_slice(b);
        *w = u64::from_le_bytes(q);
    }
    words
}

/// SMMUv3 PRI queue entries (16 bytes each) through the driver's decoding, the page-request
/// service and the `CMD_PRI_RESP` encoding of every response; then (with `sim`) the first
/// bytes as page requests a device injects into the model's PRI queue, serviced by
/// [`crate::smmuv3::priq::service`] with overflow, and checked: the model must see no response
/// it did not expect.
pub fn smmu_priq(data: &[u8]) {
    use crate::addr::{Pasid, StreamId};
    use crate::iommu::pri::{
        Disposition, Group, GroupResponse, PageRequestMessage, PageRequestService, ResponseCode,
        ResponseSink, Route, Router, Routing,
    };
    use crate::smmuv3::priq::{decode, invalid_response_for, response_command};

    struct Table;
    impl Router for Table {
        type Attachment = u16;
        fn route(&mut self, rid: RequesterId, pasid: Option<Pasid>) -> Routing<u16> {
            let pasid_in_response = rid.0.is_multiple_of(3);
            if rid.0.is_multiple_of(2) || pasid.is_some_and(|p| p.get() % 2 == 1) {
                let is_vf = rid.devfn() % 4 == 2;
                let pf = RequesterId(rid.0 & !3);
                Routing::Attached(Route { attachment: rid.0, pasid_in_response, is_vf, pf })
            } else {
                Routing::Unattached { pasid_in_response }
            }
        }
    }
    /// Encodes every response for the StreamID of the entry being serviced.
    struct Sink {
        sid: StreamId,
        sent: usize,
    }
    impl ResponseSink for Sink {
        fn respond(&mut self, r: &GroupResponse) -> crate::Result<()> {
            let c = response_command(self.sid, r)?;
            // The command says what the response says (§4.7.1).
            assert_eq!(c.0[1] & 0x1ff, u64::from(r.prgi));
            assert_eq!(c.0[0] & (1 << 11) != 0, r.pasid.is_some());
            self.sent += 1;
            Ok(())
        }
    }
    let mut svc = std::boxed::Box::new(PageRequestService::<u16, 8, 4>::new());
    let mut sink = Sink { sid: StreamId(0), sent: 0 };
    let mut handler = |g: &Group<'_, u16>| {
        let a = g.requests.first().map_or(0, |r| r.address >> 12);
        match a % 4 {
            0 => Disposition::Respond(ResponseCode::Success),
            1 => Disposition::Respond(ResponseCode::Invalid),
            2 => Disposition::Respond(ResponseCode::Failure),
            _ => Disposition::Defer,
        }
    };
    let mut ends = 0usize;
    for chunk in data.chunks_exact(16).take(1 << 12) {
        let words = le_words::<2>(chunk);
        match decode(words) {
            Ok(e) => {
                // StreamID[15:0] is the requester ID (§8).
                if let PageRequestMessage::Request(r) = e.message {
                    assert_eq!(u32::from(r.rid.0), e.sid.0 & 0xffff);
                    ends += usize::from(r.last);
                }
                sink.sid = e.sid;
                let _ = svc.receive(e.message, &mut Table, &mut handler, &mut sink);
            }
            Err(_) => {
                if let Some((sid, r)) = invalid_response_for(words) {
                    sink.sid = sid;
                    let _ = sink.respond(&r);
                    ends += 1;
                }
            }
        }
        if words[1] & (1 << 10) != 0 {
            svc.overflow();
        }
    }
    let early = usize::try_from(svc.stats().early_responses).unwrap_or(usize::MAX);
    assert!(sink.sent <= ends + early, "{} responses for {ends} group ends", sink.sent);
    let _ = svc.abort_function(RequesterId(0), &mut sink);
    #[cfg(any(test, feature = "sim"))]
    smmu_priq_model(data);
}

/// The model half of [`smmu_priq`]: each 2-byte pair is one page request (or, for one value
/// in eight, a service pass) from four functions, into a queue of 4 or 8 entries.
#[cfg(any(test, feature = "sim"))]
fn smmu_priq_model(data: &[u8]) {
    use crate::iommu::pri::{Disposition, Group, PageRequestService, ResponseCode, Route, Routing};
    use crate::sim::smmuv3::{self as model, Config};
    use crate::smmuv3::priq::{SameAsRequesterId, service};
    use crate::smmuv3::{StreamConfig, Unit, UnitConfig};

    struct Table;
    impl crate::iommu::pri::Router for Table {
        type Attachment = u16;
        fn route(&mut self, rid: RequesterId, pasid: Option<crate::Pasid>) -> Routing<u16> {
            // 0x10 with PASID 1 and 0x11 (a VF of 0x10) are attached; all want the PASID.
            let attached = matches!((rid.0, pasid.map(|p| p.get())), (0x10, Some(1)) | (0x11, _));
            if attached {
                let is_vf = rid.0 == 0x11;
                let pf = RequesterId(0x10);
                Routing::Attached(Route { attachment: rid.0, pasid_in_response: true, is_vf, pf })
            } else {
                Routing::Unattached { pasid_in_response: true }
            }
        }
    }
    let (p, smmu) = model::pair(Config::full());
    let log2 = 2 + data.first().map_or(0, |b| b & 1);
    let cfg = UnitConfig { priq_log2: log2, sid_bits: Some(8), ..UnitConfig::default() };
    let Ok(mut unit) = Unit::new(&p, model::DEFAULT_BASE, cfg) else { return };
    for sid in 0x10..0x14u32 {
        let s = crate::StreamId(sid);
        if unit.set_stream(&p, s, StreamConfig::Bypass).is_err()
            || unit.set_page_response_pasid_required(&p, s, true).is_err()
        {
            return;
        }
    }
    let mut svc = std::boxed::Box::new(PageRequestService::<u16, 8, 4>::new());
    let mut handler = |g: &Group<'_, u16>| {
        Disposition::Respond(match g.prgi % 3 {
            0 => ResponseCode::Success,
            1 => ResponseCode::Invalid,
            _ => ResponseCode::Failure,
        })
    };
    for pair in data.chunks_exact(2).take(256) {
        let (a, b) = (pair[0], pair[1]);
        if a & 7 == 7 {
            let _ = service(&mut unit, &p, &SameAsRequesterId, &mut svc, &mut Table, &mut handler);
            continue;
        }
        let sid = 0x10 + u32::from(a >> 6);
        let prgi = u16::from(b & 0x1f);
        // A device does not reuse a group index before its answer.
        if smmu.outstanding_page_request_groups().contains(&(sid, prgi)) {
            continue;
        }
        smmu.inject_page_request(model::PageRequest {
            sid,
            ssid: (a & 8 != 0).then_some(u32::from(a & 3)),
            prgi,
            last: b & 0x80 != 0,
            read: true,
            write: b & 0x40 != 0,
            address: u64::from(b) << 12,
            ..model::PageRequest::default()
        });
    }
    for _ in 0..2 {
        let _ = service(&mut unit, &p, &SameAsRequesterId, &mut svc, &mut Table, &mut handler);
    }
    // Every group whose Last reached the queue is answered, each response was expected, and the
    // PASID on each matched STE.PPAR.
    assert!(smmu.outstanding_page_request_groups().is_empty());
    assert!(smmu.errors().is_empty(), "{:?}", smmu.errors());
}

/// SMMUv3 event records (32 bytes each) through [`crate::smmuv3::Event::decode`] and every
/// accessor of what it decoded.
pub fn smmu_event(data: &[u8]) {
    use crate::smmuv3::event::{Event, EventKind};
    for chunk in data.chunks_exact(32).take(1 << 12) {
        let words = le_words::<4>(chunk);
        let e = Event::decode(words);
        let k = e.kind;
        let _ = (k.name(), k.has_input_address(), k.has_attributes(), k.has_fetch_address());
        // CAST: the type code is word 0 bits 7:0.
        assert_eq!(e.code, words[0] as u8);
        assert_eq!(EventKind::from_code(e.code), k);
        assert_eq!(u64::from(e.stream.0), words[0] >> 32);
        if !k.has_input_address() {
            assert_eq!(e.address, 0);
        }
        let _ = std::format!("{e:?}");
    }
}

/// A platform for the register-window targets: `map_mmio` returns a window of the fuzz bytes
/// (plain memory: registers that never react, as a dead or hostile unit), DMA pages come from
/// the host heap (released when the platform drops, since a driver object that goes away
/// keeps its pages by design), and the clock jumps 1 ms per read so bounded waits end after
/// few polls.
pub struct FuzzPlatform {
    window: RefCell<Vec<u8>>,
    clock: core::cell::Cell<u64>,
    pages: RefCell<Vec<(usize, usize)>>,
}

impl FuzzPlatform {
    /// Where the window pretends to be.
    pub const BASE: u64 = 0xfed9_0000;
    /// Window size: one page of VT-d registers.
    pub const WINDOW: usize = 4096;

    /// The window is `data` repeated to fill it (all-ones if empty).
    pub fn new(data: &[u8]) -> Self {
        let window = if data.is_empty() {
            std::vec![0xff; Self::WINDOW]
        } else {
            (0..Self::WINDOW).map(|i| data[i % data.len()]).collect()
        };
        Self {
            window: RefCell::new(window),
            clock: core::cell::Cell::new(0),
            pages: RefCell::new(Vec::new()),
        }
    }
}

impl Drop for FuzzPlatform {
    fn drop(&mut self) {
        for (addr, count) in self.pages.borrow_mut().drain(..) {
            if let Some(layout) = dma_layout(count) {
                // SAFETY: allocated in `alloc_dma_pages` with this layout and not freed since
                // (freeing removes the entry).
                unsafe { std::alloc::dealloc(addr as *mut u8, layout) };
            }
        }
    }
}

fn dma_layout(count: usize) -> Option<std::alloc::Layout> {
    std::alloc::Layout::from_size_align(
        count.checked_mul(crate::hal::PAGE_SIZE)?,
        crate::hal::PAGE_SIZE,
    )
    .ok()
}

// SAFETY: DMA pages are zeroed, page-aligned host allocations (their host address doubles as
// the physical address: nothing here is a real device), freed once in `free_dma_pages`; the
// window lives as long as the platform and is never resized; the clock only moves forward.
unsafe impl crate::hal::Platform for FuzzPlatform {
    fn alloc_dma_pages(&self, count: usize, align: usize) -> crate::Result<crate::hal::DmaPages> {
        let layout = dma_layout(count)
            .filter(|_| count > 0 && align <= crate::hal::PAGE_SIZE)
            .ok_or(crate::Error::OutOfMemory { pages: count })?;
        // SAFETY: non-zero size (count > 0).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let virt =
            core::ptr::NonNull::new(ptr).ok_or(crate::Error::OutOfMemory { pages: count })?;
        self.pages.borrow_mut().push((ptr as usize, count));
        // SAFETY: `count` zeroed pages at `virt`, owned by the caller until freed.
        Ok(unsafe { crate::hal::DmaPages::new(PhysAddr(ptr as u64), virt, count) })
    }

    unsafe fn free_dma_pages(&self, pages: crate::hal::DmaPages) {
        let addr = pages.virt().as_ptr() as usize;
        let mut live = self.pages.borrow_mut();
        let Some(i) = live.iter().position(|&(a, _)| a == addr) else { return };
        live.swap_remove(i);
        if let Some(layout) = dma_layout(pages.count()) {
            // SAFETY: allocated in `alloc_dma_pages` with this layout; the caller frees once.
            unsafe { std::alloc::dealloc(pages.virt().as_ptr(), layout) };
        }
    }

    fn map_mmio(&self, base: PhysAddr, size: usize) -> crate::Result<core::ptr::NonNull<u8>> {
        if base.0 != Self::BASE || size > Self::WINDOW {
            return Err(crate::Error::MmioUnavailable { base: base.0, size: size as u64 });
        }
        // The Vec is never resized, so the pointer stays valid for the platform's life.
        core::ptr::NonNull::new(self.window.borrow_mut().as_mut_ptr())
            .ok_or(crate::Error::MmioUnavailable { base: base.0, size: size as u64 })
    }

    fn map_firmware(&self, base: PhysAddr, size: usize) -> crate::Result<core::ptr::NonNull<u8>> {
        Err(crate::Error::MmioUnavailable { base: base.0, size: size as u64 })
    }

    fn write_barrier(&self) {}

    fn read_barrier(&self) {}

    fn now(&self) -> crate::hal::Instant {
        self.clock.set(self.clock.get() + 1_000_000);
        crate::hal::Instant(self.clock.get())
    }
}

#[cfg(test)]
mod corpus {
    use std::path::Path;

    /// Replays `fuzz/corpus/TARGET/*`: the seeds and every input the fuzzer kept. A panic names
    /// the file.
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        let mut inputs: std::vec::Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{} has no corpus", dir.display());
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panic!("fuzz target {target} panics on {}", input.display());
            }
        }
        std::println!("{target}: {} corpus inputs replayed", inputs.len());
    }

    /// One test per target, named after it, replaying its corpus.
    macro_rules! replay_tests {
        ($($target:ident),* $(,)?) => {$(
            #[test]
            fn $target() {
                replay(stringify!($target), super::$target);
            }
        )*};
    }

    replay_tests!(
        acpi_table,
        acpi_walk,
        device_tree,
        capabilities,
        enumeration,
        page_request,
        vtd_fault,
        smmu_idr,
        smmu_priq,
        smmu_event,
        vtd_queue,
    );

    /// The seeds reach deep paths: real QEMU tables and config spaces that parse completely.
    #[test]
    fn seeds_are_real_inputs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let walk = std::fs::read(dir.join("acpi_walk/qemu-q35-intel-iommu")).unwrap();
        let map = |phys: crate::PhysAddr, len: usize| {
            let s = usize::try_from(phys.0 - 0x1000).unwrap();
            walk.get(s..s + len).ok_or(crate::Error::MmioUnavailable { base: phys.0, size: len as u64 })
        };
        let tables = crate::firmware::acpi::AcpiTables::new(crate::PhysAddr(0x1000), map).unwrap();
        let dmar = crate::firmware::acpi::Dmar::parse(tables.find(b"DMAR").unwrap()).unwrap();
        assert!(dmar.structures().all(|s| s.is_ok()));
        let cfg = super::FuzzConfig::new(&[&[1u8][..], &std::fs::read(dir.join("capabilities/qemu-igb")).unwrap()].concat());
        let (caps, _) = crate::pci::caps::collect(&cfg, crate::Bdf::default()).unwrap();
        assert!(caps.sriov != 0 && caps.ari != 0 && caps.pcie != 0, "{caps:?}");
        // The VT-d register window gets through `Unit::new` and its one fault is drained.
        let window = std::fs::read(dir.join("vtd_fault/qemu-legacy-one-fault")).unwrap();
        let platform = super::FuzzPlatform::new(&window);
        let base = crate::PhysAddr(super::FuzzPlatform::BASE);
        let unit =
            crate::vtd::Unit::new(&platform, base, 4096, crate::vtd::TableMode::Legacy).unwrap();
        let mut faults = std::vec::Vec::new();
        unit.drain_faults(|i, r| faults.push((i, r.source_id.0, r.reason)));
        assert_eq!(faults, [(0, 0x10, 5)]);
        let dt = std::fs::read(dir.join("device_tree/qemu-virt.dtb")).unwrap();
        assert_eq!(crate::firmware::dt::DeviceTree::new(&dt).unwrap().pci_hosts().count(), 1);
    }
}
