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
        for rid in [0u16, 1, 0x100, 0xffff] {
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

    #[test]
    fn acpi_table() {
        replay("acpi_table", super::acpi_table);
    }

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
        let dt = std::fs::read(dir.join("device_tree/qemu-virt.dtb")).unwrap();
        assert_eq!(crate::firmware::dt::DeviceTree::new(&dt).unwrap().pci_hosts().count(), 1);
    }

    #[test]
    fn acpi_walk() {
        replay("acpi_walk", super::acpi_walk);
    }

    #[test]
    fn device_tree() {
        replay("device_tree", super::device_tree);
    }

    #[test]
    fn capabilities() {
        replay("capabilities", super::capabilities);
    }

    #[test]
    fn enumeration() {
        replay("enumeration", super::enumeration);
    }

    #[test]
    fn page_request() {
        replay("page_request", super::page_request);
    }
}
