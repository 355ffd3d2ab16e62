//! Enumeration against the `sim` model: the QEMU-shaped presets compared with the model's own
//! truth, bus numbering and BAR assignment checked against what the registers hold, and
//! hostile hardware and firmware.

use core::cell::Cell;
use std::vec::Vec;

use super::*;
use crate::pci::bars::BridgeWindows;
use crate::pci::topology::{Bar, BarKind};
use crate::sim::pci::{
    Bar as SimBar, Bridge, FnId, Function as SimFunction, PortType, SrIov as SimSrIov,
    Topology as Sim,
};

fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
    Bdf::new(0, bus, dev, func).unwrap()
}

const MEM32: Window = Window::new(0x1000_0000, 0x2eff_0000);
const MEM64: Window = Window::new(0x80_0000_0000, 0x80_0000_0000);
const IO: Window = Window::new(0, 0x1_0000);

/// QEMU virt's host bridge: buses 0-255 and the windows of notes §4.4 (I/O in bus addresses).
fn virt_root() -> RootBus {
    RootBus::new(0, 0, 255).with_windows(Windows {
        memory32: Some(MEM32),
        memory64: Some(MEM64),
        io: Some(IO),
    })
}

fn run<const N: usize>(sim: &Sim, options: &Options) -> Enumeration<N> {
    match enumerate(sim, &[virt_root()], options) {
        Ok(e) => e,
        Err(err) => panic!("enumeration failed: {err}"),
    }
}

fn by_bdf<const N: usize>(e: &Enumeration<N>, b: Bdf) -> Function {
    *e.topology.get(e.topology.find(b).unwrap_or_else(|| panic!("{b} not found"))).unwrap()
}

fn kind_of(port: Option<PortType>, is_bridge: bool) -> FunctionKind {
    match (port, is_bridge) {
        (None, false) => FunctionKind::ConventionalEndpoint,
        (None, true) => FunctionKind::ConventionalBridge,
        (Some(PortType::Endpoint | PortType::LegacyEndpoint), _) => FunctionKind::PcieEndpoint,
        (Some(PortType::RcIntegratedEndpoint), _) => FunctionKind::RootComplexEndpoint,
        (Some(PortType::RcEventCollector), _) => FunctionKind::RootComplexEventCollector,
        (Some(PortType::RootPort), _) => FunctionKind::RootPort,
        (Some(PortType::SwitchUpstream), _) => FunctionKind::SwitchUpstream,
        (Some(PortType::SwitchDownstream), _) => FunctionKind::SwitchDownstream,
        (Some(PortType::PcieToPciBridge), _) => FunctionKind::PcieToPciBridge,
        (Some(PortType::PciToPcieBridge), _) => FunctionKind::PciToPcieBridge,
    }
}

/// The snapshot holds exactly what the model says a configuration access reaches, with the
/// same identities, kinds and parents, and bridge ranges equal to the registers.
fn assert_matches_truth<const N: usize>(sim: &Sim, e: &Enumeration<N>) {
    let truth = sim.snapshot();
    let mut ours: Vec<Bdf> = e.topology.functions().iter().map(Function::bdf).collect();
    ours.sort();
    assert_eq!(ours, truth.reachable_bdfs());
    for info in truth.reachable() {
        let b = info.bdf.unwrap();
        let f = by_bdf(e, b);
        assert_eq!(
            (f.id.vendor, f.id.device, f.id.class),
            (info.vendor, info.device, info.class),
            "{b}"
        );
        assert_eq!(f.kind, kind_of(info.port_type, info.is_bridge), "{b}");
        let parent = info.parent.and_then(|p| truth.get(p)).and_then(|p| p.bdf);
        assert_eq!(f.parent.map(|p| e.topology.get(p).unwrap().bdf()), parent, "{b} parent");
        if f.kind.is_bridge() {
            let range = f.bus_range.unwrap();
            assert_eq!(sim.peek8(info.id, reg::PRIMARY_BUS), b.bus, "{b} primary");
            assert_eq!(sim.peek8(info.id, reg::SECONDARY_BUS), range.secondary, "{b} secondary");
            assert_eq!(
                sim.peek8(info.id, reg::SUBORDINATE_BUS),
                range.subordinate,
                "{b} subordinate"
            );
        }
    }
    // Depth-first: a bridge before everything below it, each bus's functions together, every
    // child inside its bridge's bus range.
    for (i, f) in e.topology.functions().iter().enumerate() {
        if let Some(p) = f.parent {
            assert!(usize::from(p.0) < i);
            let range = e.topology.get(p).unwrap().bus_range.unwrap();
            assert_eq!(f.bdf().bus, range.secondary);
        }
    }
    assert!(!sim.overlap_seen(), "two bridges claimed one bus at some point");
}

fn range<const N: usize>(e: &Enumeration<N>, b: Bdf) -> (u8, u8) {
    let r = by_bdf(e, b).bus_range.unwrap();
    (r.secondary, r.subordinate)
}

#[test]
fn rich_unprogrammed_numbers_depth_first_with_room_for_hotplug() {
    let sim = Sim::qemu_q35_rich();
    let e: Enumeration<64> = run(&sim, &Options { hotplug_bus_reserve: 2, ..Options::default() });
    assert_matches_truth(&sim, &e);
    assert_eq!(e.topology.len(), 20);
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    assert_eq!(range(&e, bdf(0, 1, 0)), (1, 1)); // rp1 -> igb (VFs on bus 1 with ARI)
    assert_eq!(range(&e, bdf(0, 3, 0)), (2, 2)); // rp2 -> nvme
    assert_eq!(range(&e, bdf(0, 4, 0)), (3, 3)); // conventional pci-bridge
    assert_eq!(range(&e, bdf(0, 5, 0)), (4, 5)); // rp4 -> pcie-pci-bridge
    assert_eq!(range(&e, bdf(4, 0, 0)), (5, 5));
    assert_eq!(range(&e, bdf(0, 6, 0)), (6, 11)); // rp5 -> switch
    assert_eq!(range(&e, bdf(6, 0, 0)), (7, 11));
    assert_eq!(range(&e, bdf(7, 0, 0)), (8, 8));
    assert_eq!(range(&e, bdf(7, 1, 0)), (9, 11)); // hot-plug slot: 9 + 2 reserved
    // Kinds the model does not name directly.
    assert_eq!(by_bdf(&e, bdf(0, 4, 0)).kind, FunctionKind::ConventionalBridge);
    assert_eq!(by_bdf(&e, bdf(4, 0, 0)).kind, FunctionKind::PcieToPciBridge);
    assert_eq!(by_bdf(&e, bdf(6, 0, 0)).kind, FunctionKind::SwitchUpstream);
    // ACS isolation controls on the root ports (0x5f offered, SV|RR|CR|UF enabled).
    for dev in [1, 3, 5, 6] {
        let acs = by_bdf(&e, bdf(0, dev, 0)).acs.unwrap();
        assert_eq!(acs.control, acs::ISOLATION, "00:{dev:02x}.0");
        let rp = sim.route_of(bdf(0, dev, 0)).unwrap();
        let offset = sim.ext_cap(rp, caps::id::ACS).unwrap();
        assert_eq!(sim.peek16(rp, offset + 6), acs::ISOLATION);
    }
    // Both SR-IOV PFs, with their bus limits.
    assert_eq!(e.sriov.len(), 2);
    assert_eq!((e.sriov[0].pf(), e.sriov[0].bus_limit()), (bdf(1, 0, 0), 1));
    assert_eq!((e.sriov[1].pf(), e.sriov[1].bus_limit()), (bdf(2, 0, 0), 2));
}

#[test]
fn rich_with_firmware_numbers_keeps_them() {
    let sim = Sim::qemu_q35_rich();
    sim.program_bus_numbers();
    let before: Vec<(FnId, u32)> = sim
        .snapshot()
        .functions
        .iter()
        .filter(|f| f.is_bridge)
        .map(|f| (f.id, sim.peek32(f.id, reg::PRIMARY_BUS)))
        .collect();
    let e: Enumeration<64> = run(&sim, &Options::default());
    assert_matches_truth(&sim, &e);
    assert_eq!(e.stats.restarts, 0);
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    for (id, regs) in before {
        assert_eq!(sim.peek32(id, reg::PRIMARY_BUS), regs, "{:?} renumbered", sim.bdf(id));
    }
    // No hot-plug room where firmware left none: kept as found.
    assert_eq!(range(&e, bdf(7, 1, 0)), (9, 9));
}

#[test]
fn rich_firmware_numbers_renumbered_when_always() {
    let sim = Sim::qemu_q35_rich();
    sim.program_bus_numbers();
    let options =
        Options { assign_buses: AssignBuses::Always, hotplug_bus_reserve: 3, ..Options::default() };
    let e: Enumeration<64> = run(&sim, &options);
    assert_matches_truth(&sim, &e);
    assert_eq!(range(&e, bdf(7, 1, 0)), (9, 12));
}

/// Every BAR and VF BAR aperture of the snapshot: (function, BAR, is an aperture).
fn all_bars<const N: usize>(e: &Enumeration<N>) -> Vec<(Bdf, Bar, bool)> {
    let mut out: Vec<(Bdf, Bar, bool)> = e
        .topology
        .functions()
        .iter()
        .flat_map(|f| f.bars.iter().flatten().map(move |b| (f.bdf(), *b, false)))
        .collect();
    for s in &e.sriov {
        for b in s.vf_bars().iter().flatten() {
            out.push((s.pf(), Bar { size: b.size * u64::from(s.total_vfs()), ..*b }, true));
        }
    }
    out
}

fn contains(w: Option<Window>, base: u64, size: u64) -> bool {
    w.is_some_and(|w| w.contains(base, size))
}

#[test]
fn bars_assigned_aligned_disjoint_inside_root_and_bridge_windows() {
    let sim = Sim::qemu_q35_rich();
    let e: Enumeration<64> = run(&sim, &Options::default());
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    let bars = all_bars(&e);
    assert_eq!(bars.len(), 17);
    for &(b, bar, aperture) in &bars {
        let align = if aperture {
            e.sriov.iter().find(|s| s.pf() == b).unwrap().vf_bars()[usize::from(bar.index)]
                .unwrap()
                .size
        } else {
            bar.size
        };
        assert!(
            bar.base != 0 && bar.base % align == 0,
            "{b} BAR{} {:#x} not aligned to {align:#x}",
            bar.index,
            bar.base
        );
        let root_window = match bar.kind {
            BarKind::Io => IO,
            BarKind::Memory64 { prefetchable: true } => MEM64,
            _ => MEM32,
        };
        assert!(
            root_window.contains(bar.base, bar.size),
            "{b} BAR{} {:#x}+{:#x} outside {root_window:?}",
            bar.index,
            bar.base,
            bar.size
        );
        // The registers hold it.
        let id = sim.route_of(b).unwrap();
        let off = if aperture {
            e.sriov.iter().find(|s| s.pf() == b).unwrap().offset()
                + crate::pci::sriov::reg::VF_BAR0
                + 4 * u16::from(bar.index)
        } else {
            reg::BAR0 + 4 * u16::from(bar.index)
        };
        let mut value = u64::from(sim.peek32(id, off) & !0xf);
        if matches!(bar.kind, BarKind::Memory64 { .. }) {
            value |= u64::from(sim.peek32(id, off + 4)) << 32;
        } else if bar.kind == BarKind::Io {
            value = u64::from(sim.peek32(id, off) & !0x3);
        }
        assert_eq!(value, bar.base, "{b} register at {off:#x}");
        // Every bridge above forwards it.
        let mut parent = e.topology.get(e.topology.find(b).unwrap()).unwrap().parent;
        while let Some(p) = parent {
            let bridge = e.topology.get(p).unwrap();
            let w = BridgeWindows::read(&sim, bridge.bdf());
            let inside = match bar.kind {
                BarKind::Io => contains(w.io, bar.base, bar.size),
                BarKind::Memory64 { prefetchable: true } => {
                    contains(w.prefetchable, bar.base, bar.size)
                }
                _ => contains(w.memory, bar.base, bar.size),
            };
            assert!(
                inside,
                "{b} BAR{} {:#x}+{:#x} outside {}'s windows {w:?}",
                bar.index,
                bar.base,
                bar.size,
                bridge.bdf()
            );
            parent = bridge.parent;
        }
    }
    // Disjoint within each space (I/O apart from memory).
    for (i, &(b1, x, _)) in bars.iter().enumerate() {
        for &(b2, y, _) in &bars[i + 1..] {
            if (x.kind == BarKind::Io) == (y.kind == BarKind::Io) {
                assert!(
                    x.base + x.size <= y.base || y.base + y.size <= x.base,
                    "{b1} BAR{} overlaps {b2} BAR{}",
                    x.index,
                    y.index
                );
            }
        }
    }
    // Sibling bridge windows are disjoint too.
    let bridges: Vec<Function> =
        e.topology.functions().iter().filter(|f| f.kind.is_bridge()).copied().collect();
    for (i, a) in bridges.iter().enumerate() {
        for b in &bridges[i + 1..] {
            if a.parent != b.parent {
                continue;
            }
            let (wa, wb) = (BridgeWindows::read(&sim, a.bdf()), BridgeWindows::read(&sim, b.bdf()));
            for (x, y) in
                [(wa.io, wb.io), (wa.memory, wb.memory), (wa.prefetchable, wb.prefetchable)]
            {
                if let (Some(x), Some(y)) = (x, y) {
                    assert!(
                        x.end() <= y.base || y.end() <= x.base,
                        "{} and {} windows overlap",
                        a.bdf(),
                        b.bdf()
                    );
                }
            }
        }
    }
    // Decoding: bridges decode and master; endpoints decode their BARs, never master.
    for f in e.topology.functions() {
        let id = sim.route_of(f.bdf()).unwrap();
        let command = sim.peek16(id, reg::COMMAND);
        if f.kind.is_bridge() {
            assert_eq!(command & reg::COMMAND_BUS_MASTER, reg::COMMAND_BUS_MASTER, "{}", f.bdf());
        } else {
            assert_eq!(command & reg::COMMAND_BUS_MASTER, 0, "{}", f.bdf());
            let mem = f.bars.iter().flatten().any(|b| b.kind != BarKind::Io);
            assert_eq!(command & reg::COMMAND_MEMORY != 0, mem, "{}", f.bdf());
        }
    }
    // An empty hot-plug port forwards nothing.
    let empty = BridgeWindows::read(&sim, bdf(7, 1, 0));
    assert_eq!(empty, BridgeWindows::default());
}

#[test]
fn sizing_only_restores_every_register() {
    let sim = Sim::qemu_q35_rich();
    sim.program_bus_numbers();
    // "Firmware" placed edu's BAR0 and enabled its decode.
    let edu = sim.find("edu").unwrap();
    sim.poke(edu, reg::BAR0, &0x1230_0000u32.to_le_bytes());
    sim.poke(edu, reg::COMMAND, &[0x02, 0x00]);
    let dump = |sim: &Sim| -> Vec<(FnId, Vec<u32>)> {
        sim.snapshot()
            .functions
            .iter()
            .map(|f| (f.id, (0..0x400).step_by(4).map(|o| sim.peek32(f.id, o)).collect()))
            .collect()
    };
    let before = dump(&sim);
    let options =
        Options { assign_bars: AssignBars::Never, enable_acs: false, ..Options::default() };
    let e: Enumeration<64> = run(&sim, &options);
    let after = dump(&sim);
    for ((id, a), (_, b)) in before.iter().zip(&after) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            // ARI Forwarding Enable in rp1's Device Control 2 is the one intended change.
            let devctl2 = sim.legacy_cap(*id, caps::id::PCIE).map(|c| c + 0x28);
            if Some(4 * i as u16) == devctl2 {
                continue;
            }
            assert_eq!(x, y, "{:?} dword {:#x}", sim.bdf(*id), 4 * i);
        }
    }
    let f = by_bdf(&e, bdf(0, 2, 0));
    assert_eq!(
        f.bars[0],
        Some(Bar {
            index: 0,
            kind: BarKind::Memory32 { prefetchable: false },
            size: 1 << 20,
            base: 0x1230_0000
        })
    );
    let igb = by_bdf(&e, bdf(1, 0, 0));
    let sizes: Vec<(u8, u64)> = igb.bars.iter().flatten().map(|b| (b.index, b.size)).collect();
    assert_eq!(sizes, [(0, 128 << 10), (1, 128 << 10), (2, 32), (3, 16 << 10)]);
    let vf_bars: Vec<(u8, u64)> =
        e.sriov[0].vf_bars().iter().flatten().map(|b| (b.index, b.size)).collect();
    assert_eq!(vf_bars, [(0, 16 << 10), (3, 16 << 10)]);
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
}

#[test]
fn firmware_addresses_are_kept_and_holes_reported() {
    let sim = Sim::qemu_q35_rich();
    sim.program_bus_numbers();
    let edu = sim.find("edu").unwrap();
    sim.poke(edu, reg::BAR0, &0x1230_0000u32.to_le_bytes());
    let e: Enumeration<64> = run(&sim, &Options::default());
    assert_eq!(by_bdf(&e, bdf(0, 2, 0)).bars[0].unwrap().base, 0x1230_0000);
    assert_eq!(sim.peek32(edu, reg::BAR0), 0x1230_0000);
    // Everything else was left at 0 by "firmware": reported, VF apertures included.
    assert!(e.warnings.contains(&Warning::BarUnassigned {
        bdf: bdf(1, 0, 0),
        index: 0,
        vf: true,
        size: 8 * (16 << 10)
    }));
    assert!(e.warnings.contains(&Warning::BarUnassigned {
        bdf: bdf(8, 0, 0),
        index: 2,
        vf: false,
        size: 32
    }));
}

#[test]
fn multi_function_bit_decides_functions_1_to_7() {
    let sim = Sim::builder()
        .device(0x1f, 0, SimFunction::pci(0x8086, 0x2918, 0x06_0100))
        .device(0x1f, 3, SimFunction::pci(0x8086, 0x2930, 0x0c_0500))
        // Function 1 exists but function 0 does not set the multi-function bit: not scanned.
        .device(2, 0, SimFunction::pci(0x1234, 0x0001, 0xff_0000).multi_function(false))
        .device(2, 1, SimFunction::pci(0x1234, 0x0002, 0xff_0000).multi_function(false))
        .build();
    let e: Enumeration<8> = run(&sim, &Options::default());
    let found: Vec<Bdf> = e.topology.functions().iter().map(Function::bdf).collect();
    assert_eq!(found, [bdf(0, 2, 0), bdf(0, 0x1f, 0), bdf(0, 0x1f, 3)]);
    assert!(by_bdf(&e, bdf(0, 0x1f, 3)).multi_function);
    assert!(!by_bdf(&e, bdf(0, 2, 0)).multi_function);
    // 30 absent devices, and 0x1f's six absent functions.
    assert_eq!(e.stats.absent, 30 + 6);
}

fn ari_device(next: u8) -> SimFunction {
    SimFunction::endpoint(0x8086, 0x1572, 0x02_0000).ari(next)
}

#[test]
fn ari_device_below_a_forwarding_port_follows_next_function() {
    let sim = Sim::builder()
        .bridge(1, 0, Bridge::root_port(), |b| {
            b.device(0, 0, ari_device(1))
                .device(0, 1, ari_device(9))
                .device(1, 1, ari_device(200))
                .device(25, 0, ari_device(0))
        })
        .build();
    let e: Enumeration<8> = run(&sim, &Options::default());
    assert_matches_truth(&sim, &e);
    let found: Vec<u8> = e.topology.functions()[1..].iter().map(|f| f.bdf().devfn).collect();
    assert_eq!(found, [0, 1, 9, 200]);
    let port = by_bdf(&e, bdf(0, 1, 0));
    assert!(port.ari_forwarding);
    let rp = sim.route_of(bdf(0, 1, 0)).unwrap();
    let pcie = sim.legacy_cap(rp, caps::id::PCIE).unwrap();
    assert_ne!(sim.peek16(rp, pcie + 0x28) & (1 << 5), 0, "ARI Forwarding Enable");
    // 31 empty root-bus slots; below the port only device 0 is probed, and the ARI chain
    // probes nothing that is absent.
    assert_eq!(e.stats.absent, 31);
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
}

#[test]
fn ari_chain_that_goes_backwards_or_nowhere_stops() {
    let sim = Sim::builder()
        .bridge(1, 0, Bridge::root_port(), |b| {
            b.device(0, 0, ari_device(5)).device(0, 5, ari_device(3)).device(0, 3, ari_device(0))
        })
        .bridge(2, 0, Bridge::root_port(), |b| b.device(0, 0, ari_device(7)))
        .build();
    let e: Enumeration<8> = run(&sim, &Options::default());
    assert!(e.topology.find(bdf(1, 0, 5)).is_some());
    assert!(e.topology.find(bdf(1, 0, 3)).is_none());
    assert!(e.warnings.contains(&Warning::AriChain { bdf: bdf(1, 0, 5), next: 3 }));
    assert!(e.warnings.contains(&Warning::AriChain { bdf: bdf(2, 0, 0), next: 7 }));
}

#[test]
fn port_without_ari_forwarding_scans_device_0_functions() {
    let sim = Sim::builder()
        .bridge(1, 0, Bridge::root_port().ari_forwarding(false), |b| {
            b.device(0, 0, ari_device(1)).device(0, 1, ari_device(0))
        })
        .build();
    let e: Enumeration<8> = run(&sim, &Options::default());
    assert_matches_truth(&sim, &e);
    assert!(!by_bdf(&e, bdf(0, 1, 0)).ari_forwarding);
    assert_eq!(e.topology.len(), 3);
}

#[test]
fn vf_buses_are_reserved_before_the_next_bridge() {
    // VFs at First VF Offset 0x100: the bus after the PF's.
    let pf = SimFunction::endpoint(0x8086, 0x1234, 0x02_0000)
        .sriov(SimSrIov::new(4).offset_stride(0x100, 1).vf_bar(0, SimBar::mem64(16 << 10, true)));
    let sim = Sim::builder()
        .bridge(1, 0, Bridge::root_port(), |b| b.device(0, 0, pf))
        .bridge(2, 0, Bridge::root_port(), |b| b.device(0, 0, SimFunction::edu()))
        .build();
    let e: Enumeration<8> = run(&sim, &Options::default());
    assert_matches_truth(&sim, &e);
    assert_eq!(range(&e, bdf(0, 1, 0)), (1, 2));
    assert_eq!(range(&e, bdf(0, 2, 0)), (3, 3));
    assert_eq!(e.sriov[0].bus_limit(), 2);
}

#[test]
fn vf_buses_follow_ari_capable_hierarchy_either_way() {
    // A device that puts VFs on the next bus only with ARI Capable Hierarchy set.
    let routing: crate::sim::pci::VfRouting = |_, ari| if ari { (0x100, 1) } else { (1, 1) };
    let pf =
        SimFunction::endpoint(0x8086, 0x1234, 0x02_0000).sriov(SimSrIov::new(4).routing(routing));
    let sim = Sim::builder().bridge(1, 0, Bridge::root_port(), |b| b.device(0, 0, pf)).build();
    let e: Enumeration<8> = run(&sim, &Options::default());
    assert_eq!(range(&e, bdf(0, 1, 0)), (1, 2));
    // Probing left NumVFs and ARI Capable Hierarchy as they were.
    let id = sim.route_of(bdf(1, 0, 0)).unwrap();
    let cap = e.sriov[0].offset();
    assert_eq!(sim.peek16(id, cap + 0x08), 0);
    assert_eq!(sim.peek16(id, cap + 0x10), 0);
}

#[test]
fn overlapping_firmware_ranges_are_reported_and_renumbered() {
    // Root level: rp2 claims rp1's bus.
    let sim = Sim::qemu_q35_rich();
    sim.program_bus_numbers();
    let rp2 = sim.find("rp2").unwrap();
    sim.poke(rp2, reg::SECONDARY_BUS, &[1, 1]);
    let e: Enumeration<64> = run(&sim, &Options::default());
    assert_matches_truth(&sim, &e);
    assert!(e.warnings.contains(&Warning::BusRangeInvalid {
        bridge: bdf(0, 3, 0),
        primary: 0,
        secondary: 1,
        subordinate: 1
    }));
    assert!(e.warnings.contains(&Warning::Renumbered { segment: 0, bus: 0 }));
    assert_eq!(e.stats.restarts, 0, "decided at the root bus: no rescan");

    // Deeper: the two switch downstream ports overlap.
    let sim = Sim::qemu_q35_rich();
    sim.program_bus_numbers();
    let down0 = sim.find("switch-down0").unwrap();
    let down1 = sim.find("switch-down1").unwrap();
    let (sec0, sub0) =
        (sim.peek8(down0, reg::SECONDARY_BUS), sim.peek8(down0, reg::SUBORDINATE_BUS));
    sim.poke(down1, reg::SECONDARY_BUS, &[sec0, sub0 + 1]);
    let e: Enumeration<64> = run(&sim, &Options::default());
    // The first pass met firmware's overlap (that is how it was found); after renumbering,
    // every function is reached without one.
    sim.clear_overlap();
    for f in e.topology.functions() {
        assert_ne!(sim.read32(f.bdf(), 0), u32::MAX);
    }
    assert_matches_truth(&sim, &e);
    assert!(e.warnings.contains(&Warning::BusRangeInvalid {
        bridge: bdf(7, 1, 0),
        primary: 7,
        secondary: sec0,
        subordinate: sub0 + 1
    }));
    assert!(e.warnings.contains(&Warning::Renumbered { segment: 0, bus: 0 }));
    assert_eq!(e.stats.restarts, 1);
    assert_eq!(e.topology.len(), 20);

    // Never renumber: the bad bridge is reported and not entered; the rest is kept.
    let sim = Sim::qemu_q35_rich();
    sim.program_bus_numbers();
    sim.poke(sim.find("switch-down1").unwrap(), reg::SECONDARY_BUS, &[sec0, sub0 + 1]);
    let options = Options { assign_buses: AssignBuses::Never, ..Options::default() };
    let e: Enumeration<64> = run(&sim, &options);
    assert!(e.warnings.contains(&Warning::BusRangeInvalid {
        bridge: bdf(7, 1, 0),
        primary: 7,
        secondary: sec0,
        subordinate: sub0 + 1
    }));
    assert!(e.topology.find(bdf(8, 0, 0)).is_some(), "e1000e below the good port");
    assert_eq!(e.topology.len(), 20);
}

#[test]
fn never_numbering_an_unprogrammed_tree_scans_only_the_root_bus() {
    let sim = Sim::qemu_q35_rich();
    let options = Options { assign_buses: AssignBuses::Never, ..Options::default() };
    let e: Enumeration<64> = run(&sim, &options);
    assert_eq!(e.topology.len(), 10);
    assert!(e.warnings.contains(&Warning::BusRangeInvalid {
        bridge: bdf(0, 1, 0),
        primary: 0,
        secondary: 0,
        subordinate: 0
    }));
}

/// Wraps the model and removes one function after it answered `reads` reads.
struct Vanishing<'a> {
    sim: &'a Sim,
    target: FnId,
    reads: Cell<u32>,
}

impl Vanishing<'_> {
    fn tick(&self, b: Bdf) {
        if self.sim.route_of(b) == Some(self.target) {
            match self.reads.get() {
                0 => self.sim.set_present(self.target, false),
                n => self.reads.set(n - 1),
            }
        }
    }
}

impl ConfigAccess for Vanishing<'_> {
    fn read32(&self, b: Bdf, offset: u16) -> u32 {
        self.tick(b);
        self.sim.read32(b, offset)
    }
    fn write32(&self, b: Bdf, offset: u16, value: u32) {
        self.sim.write32(b, offset, value)
    }
    fn write16(&self, b: Bdf, offset: u16, value: u16) {
        self.sim.write16(b, offset, value)
    }
    fn write8(&self, b: Bdf, offset: u16, value: u8) {
        self.sim.write8(b, offset, value)
    }
    fn read16(&self, b: Bdf, offset: u16) -> u16 {
        self.tick(b);
        self.sim.read16(b, offset)
    }
    fn read8(&self, b: Bdf, offset: u16) -> u8 {
        self.tick(b);
        self.sim.read8(b, offset)
    }
}

#[test]
fn a_function_vanishing_mid_enumeration_is_dropped_with_a_warning() {
    let mut dropped = 0;
    for reads in 0..40 {
        let sim = Sim::qemu_q35_rich();
        let target = sim.find("e1000e").unwrap();
        let cfg = Vanishing { sim: &sim, target, reads: Cell::new(reads) };
        let e: Enumeration<64> = enumerate(&cfg, &[virt_root()], &Options::default()).unwrap();
        let present = e.topology.find(bdf(8, 0, 0)).is_some();
        let warned = e.warnings.contains(&Warning::FunctionVanished { bdf: bdf(8, 0, 0) });
        match reads {
            // Gone before its ID read: an empty slot.
            0 => assert!(!present && !warned),
            _ => assert!(
                present != warned,
                "reads {reads}: present {present}, warned {warned}, {:?}",
                e.warnings
            ),
        }
        dropped += usize::from(warned);
        assert_eq!(e.topology.len(), 19 + usize::from(present), "reads {reads}");
    }
    assert!(dropped > 10, "the function vanished part-way in many runs ({dropped})");

    // A bridge vanishing takes its subtree along, wherever it happens.
    for reads in 0..30 {
        let sim = Sim::qemu_q35_rich();
        let target = sim.find("switch-down0").unwrap();
        let cfg = Vanishing { sim: &sim, target, reads: Cell::new(reads) };
        let e: Enumeration<64> = enumerate(&cfg, &[virt_root()], &Options::default()).unwrap();
        assert!(e.topology.find(bdf(8, 0, 0)).is_none() || e.topology.find(bdf(7, 0, 0)).is_some());
    }
}

#[test]
fn capacity_exceeded_is_an_error() {
    let sim = Sim::qemu_q35_rich();
    let r: Result<Enumeration<8>> = enumerate(&sim, &[virt_root()], &Options::default());
    assert_eq!(r.err(), Some(Error::CapacityExceeded { what: "topology functions", capacity: 8 }));
    let sim = Sim::qemu_q35_rich();
    let r: Result<Enumeration<64, 1>> = enumerate(&sim, &[virt_root()], &Options::default());
    assert_eq!(r.err(), Some(Error::CapacityExceeded { what: "SR-IOV PFs", capacity: 1 }));
}

#[test]
fn bus_numbers_exhausted_is_an_error_carrying_the_bridge() {
    let sim = Sim::qemu_q35_rich();
    let root = RootBus { last_bus: 5, ..virt_root() };
    let mut e: Enumeration<64> = Enumeration::new();
    let r = e.run(&sim, &[root], &Options::default());
    // rp1..pcie-pci-bridge take buses 1-5; rp5 at 00:06.0 finds none left.
    assert_eq!(r, Err(Error::BusNumbersExhausted { bridge: bdf(0, 6, 0), last: 5 }));
    // Tried again without hot-plug and then without VF reservations first.
    assert_eq!(e.stats.restarts, 2);
}

#[test]
fn reservations_are_dropped_when_the_hierarchy_does_not_fit_with_them() {
    let sim = Sim::builder()
        .bridge(1, 0, Bridge::root_port().hotplug(true), |b| b)
        .bridge(2, 0, Bridge::root_port(), |b| b.device(0, 0, SimFunction::edu()))
        .build();
    let root = RootBus { last_bus: 2, ..virt_root() };
    let e: Enumeration<8> =
        enumerate(&sim, &[root], &Options { hotplug_bus_reserve: 2, ..Options::default() })
            .unwrap();
    assert_eq!(
        e.warnings.as_slice(),
        [Warning::ReservationsDropped { segment: 0, bus: 0, hotplug: true, vfs: false }]
    );
    assert_eq!(range(&e, bdf(0, 1, 0)), (1, 1));
    assert_eq!(range(&e, bdf(0, 2, 0)), (2, 2));
    assert!(e.topology.find(bdf(2, 0, 0)).is_some());
}

#[test]
fn roots_must_be_sane() {
    let sim = Sim::qemu_virt();
    let bad = RootBus::new(0, 5, 4);
    let r: Result<Enumeration<8>> = enumerate(&sim, &[bad], &Options::default());
    assert!(matches!(r, Err(Error::InvalidField { .. })));
    let r: Result<Enumeration<8>> =
        enumerate(&sim, &[RootBus::new(0, 0, 15), RootBus::new(0, 10, 20)], &Options::default());
    assert!(matches!(r, Err(Error::InvalidField { .. })));
}

#[test]
fn two_segments() {
    let sim = Sim::builder()
        .device(1, 0, SimFunction::edu())
        .segment(1)
        .bridge(0, 0, Bridge::root_port(), |b| b.device(0, 0, SimFunction::edu()))
        .build();
    let roots = [virt_root(), RootBus { segment: 1, ..virt_root() }];
    let e: Enumeration<8> = enumerate(&sim, &roots, &Options::default()).unwrap();
    let found: Vec<Bdf> = e.topology.functions().iter().map(Function::bdf).collect();
    assert_eq!(found, [bdf(0, 1, 0), Bdf::new(1, 0, 0, 0).unwrap(), Bdf::new(1, 1, 0, 0).unwrap()]);
    // Each segment has its own windows: both edus got the first MiB of the 32-bit window.
    assert_eq!(e.topology.functions()[0].bars[0].unwrap().base, MEM32.base);
}

#[test]
fn virt_preset_assigns_edu() {
    let sim = Sim::qemu_virt();
    let e: Enumeration<8> = run(&sim, &Options::default());
    let edu = by_bdf(&e, bdf(0, 1, 0));
    assert_eq!(edu.bars[0].unwrap().base, MEM32.base);
    assert_eq!(
        sim.peek16(sim.route_of(bdf(0, 1, 0)).unwrap(), reg::COMMAND) & 0x7,
        reg::COMMAND_MEMORY
    );
}

#[test]
fn hostile_bars_are_reported_and_ignored() {
    // BAR0 with the reserved memory type, BAR5 claiming to be the low half of a 64-bit BAR.
    let f = SimFunction::pci(0x1234, 0x5678, 0xff_0000)
        .bar(1, SimBar::mem32(4096))
        .poke(0x10, &[0x06, 0, 0, 0])
        .poke(0x24, &[0x04, 0, 0, 0]);
    let sim = Sim::builder().device(0, 0, f).build();
    let e: Enumeration<8> = run(&sim, &Options::default());
    let found = by_bdf(&e, bdf(0, 0, 0));
    assert_eq!(found.bars.iter().flatten().map(|b| b.index).collect::<Vec<_>>(), [1]);
    assert!(e.warnings.iter().any(|w| matches!(w, Warning::BarInvalid { register: 0x10, .. })));
}

/// The cost on the rich preset, printed for the firmware's report and bounded: one read per
/// absent slot, and per present function at most 25 reads and 14 writes (header, capability
/// walk, six BARs sized with two reads and up to two writes each, bridge windows, SR-IOV).
#[test]
fn config_access_counts_on_the_rich_preset() {
    for (name, programmed) in
        [("unprogrammed (virt-like)", false), ("firmware-numbered (q35-like)", true)]
    {
        let sim = Sim::qemu_q35_rich();
        if programmed {
            sim.program_bus_numbers();
        }
        sim.reset_counts();
        let e: Enumeration<64> = run(&sim, &Options::default());
        let s = e.stats;
        std::println!(
            "rich preset, {name}: {} reads + {} writes for {} present functions, \
             {} absent slots, {} buses ({:.1} reads and {:.1} writes per present function, \
             1 read per absent slot)",
            s.accesses.reads,
            s.accesses.writes,
            s.functions,
            s.absent,
            s.buses,
            (s.accesses.reads - u64::from(s.absent)) as f64 / f64::from(s.functions),
            s.accesses.writes as f64 / f64::from(s.functions),
        );
        assert_eq!(s.accesses, sim.counts(), "every access went through the counter");
        // Absent slots cost exactly their one ID read.
        assert_eq!(sim.absent_counts().reads, u64::from(s.absent));
        assert_eq!(sim.absent_counts().writes, 0);
        assert_eq!((s.functions, s.absent), (20, 121));
        assert!(s.accesses.reads <= u64::from(s.absent) + 25 * u64::from(s.functions), "{s:?}");
        assert!(s.accesses.writes <= 14 * u64::from(s.functions), "{s:?}");
    }
}

/// The enumeration keeps one working-state entry per function and walks with a stack of 256
/// frames: both stay small, for a bare-metal stack and a static `Enumeration`.
#[test]
fn working_state_stays_small() {
    let (f, s, frame) = (size_of::<Function>(), size_of::<Scratch>(), size_of::<Frame>());
    std::println!("Function {f} B, per-function scratch {s} B, frame {frame} B");
    assert!(s <= 96 && s < f, "scratch {s} B");
    assert_eq!(frame, 8);
}
