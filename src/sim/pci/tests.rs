//! Unit tests of the PCIe model. Expected values come from the specifications' register
//! layouts and from what QEMU 10.0.2 showed a guest (notes §3), not from the model's code.

use crate::sim::std;
use std::vec::Vec;

use super::*;
use crate::pci::config::reg;

fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
    Bdf::new(0, bus, dev, func).unwrap()
}

fn program(t: &Topology, bridge: Bdf, primary: u8, sec: u8, sub: u8) {
    t.write8(bridge, reg::PRIMARY_BUS, primary);
    t.write8(bridge, reg::SECONDARY_BUS, sec);
    t.write8(bridge, reg::SUBORDINATE_BUS, sub);
}

/// Root port at 00:01.0 with one endpoint below; a second root port at 00:02.0 with a switch.
fn small() -> Topology {
    Topology::builder()
        .device(0, 0, Function::host_bridge(0x8086, 0x29c0).name("host"))
        .bridge(1, 0, Bridge::root_port().name("rp1"), |b| {
            b.device(0, 0, Function::endpoint(0xaaaa, 0x0001, 0x02_0000).name("ep1"))
        })
        .bridge(2, 0, Bridge::root_port().name("rp2"), |b| {
            b.bridge(0, 0, Bridge::switch_upstream().name("up"), |b| {
                b.bridge(0, 0, Bridge::switch_downstream().name("down"), |b| {
                    b.device(0, 0, Function::endpoint(0xbbbb, 2, 0x01_0802).name("ep2"))
                })
            })
        })
        .build()
}

#[test]
fn doc_example() {
    let t = Topology::builder()
        .device(0, 0, Function::host_bridge(0x8086, 0x29c0))
        .bridge(2, 0, Bridge::root_port().acs(ACS_ALL).name("rp"), |b| {
            b.device(
                0,
                0,
                Function::endpoint(0x8086, 0x10c9, 0x02_0000)
                    .name("igb")
                    .bar(0, Bar::mem32(128 << 10))
                    .sriov(
                        SrIov::new(8)
                            .offset_stride(0x80, 2)
                            .vf_device(0x10ca)
                            .vf_bar(0, Bar::mem64(16 << 10, true)),
                    ),
            )
        })
        .build();
    let igb = bdf(1, 0, 0);
    assert_eq!(t.read32(igb, 0), u32::MAX);
    t.program_bus_numbers();
    assert_eq!(t.read32(igb, 0), 0x10c9_8086);
}

#[test]
fn root_bus_reads_and_absent_slots_read_all_ones() {
    let t = small();
    assert_eq!(t.read32(bdf(0, 0, 0), 0), 0x29c0_8086);
    assert_eq!(t.read16(bdf(0, 1, 0), reg::VENDOR_ID), 0x1b36);
    assert_eq!(t.read8(bdf(0, 1, 0), reg::HEADER_TYPE), 0x01);
    assert_eq!(t.read32(bdf(0, 3, 0), 0), u32::MAX);
    assert_eq!(t.read16(bdf(0, 3, 0), 2), u16::MAX);
    assert_eq!(t.read8(bdf(0, 0, 1), 0), u8::MAX);
    // Other segments and buses nobody routes.
    assert_eq!(t.read32(Bdf { segment: 1, bus: 0, devfn: 0 }, 0), u32::MAX);
    assert_eq!(t.read32(bdf(7, 0, 0), 0), u32::MAX);
    // Writes to absent functions are dropped and counted as absent.
    let before = t.absent_counts();
    t.write32(bdf(0, 3, 0), reg::COMMAND, 0x7);
    assert_eq!(t.read32(bdf(0, 3, 0), reg::COMMAND), u32::MAX);
    assert_eq!(t.absent_counts() - before, AccessCounts { reads: 1, writes: 1 });
}

#[test]
fn devices_behind_bridges_appear_only_when_bus_numbers_are_programmed() {
    let t = small();
    for bus in 1..=255u8 {
        assert_eq!(t.read32(bdf(bus, 0, 0), 0), u32::MAX, "bus {bus} answered before programming");
    }
    program(&t, bdf(0, 1, 0), 0, 1, 1);
    assert_eq!(t.read32(bdf(1, 0, 0), 0), 0x0001_aaaa);
    // Secondary set, subordinate not covering the deeper buses: the switch is reachable, its
    // own children are not.
    program(&t, bdf(0, 2, 0), 0, 2, 2);
    assert_eq!(t.read16(bdf(2, 0, 0), 2), 0x8232);
    program(&t, bdf(2, 0, 0), 2, 3, 4);
    assert_eq!(t.read16(bdf(3, 0, 0), 2), u16::MAX, "rp2's subordinate 2 does not forward bus 3");
    t.write8(bdf(0, 2, 0), reg::SUBORDINATE_BUS, 4);
    assert_eq!(t.read16(bdf(3, 0, 0), 2), 0x8233);
    assert_eq!(t.read16(bdf(4, 0, 0), 2), u16::MAX, "downstream port not programmed");
    program(&t, bdf(3, 0, 0), 3, 4, 4);
    assert_eq!(t.read32(bdf(4, 0, 0), 0), 0x0002_bbbb);
    assert!(!t.overlap_seen());
}

#[test]
fn secondary_zero_forwards_nothing() {
    let t = small();
    // Subordinate alone does not open the bridge.
    t.write8(bdf(0, 1, 0), reg::SUBORDINATE_BUS, 5);
    for bus in 1..=5 {
        assert_eq!(t.read32(bdf(bus, 0, 0), 0), u32::MAX);
    }
}

#[test]
fn reprogramming_moves_devices() {
    let t = small();
    let ep = t.find("ep1").unwrap();
    program(&t, bdf(0, 1, 0), 0, 1, 1);
    assert_eq!(t.bdf(ep), Some(bdf(1, 0, 0)));
    program(&t, bdf(0, 1, 0), 0, 9, 9);
    assert_eq!(t.read32(bdf(1, 0, 0), 0), u32::MAX);
    assert_eq!(t.read32(bdf(9, 0, 0), 0), 0x0001_aaaa);
    assert_eq!(t.bdf(ep), Some(bdf(9, 0, 0)));
    assert_eq!(t.route_of(bdf(9, 0, 0)), Some(ep));
}

#[test]
fn overlapping_ranges_pick_the_first_bridge_and_flag_it() {
    let t = small();
    program(&t, bdf(0, 1, 0), 0, 1, 3);
    program(&t, bdf(0, 2, 0), 0, 1, 3);
    assert!(!t.overlap_seen());
    // Both claim bus 1: rp1 (slot 1) wins.
    assert_eq!(t.read32(bdf(1, 0, 0), 0), 0x0001_aaaa);
    assert!(t.overlap_seen());
    t.clear_overlap();
    assert!(!t.overlap_seen());
    // A bridge claiming its own bus below itself, loops of numbers: still no panic.
    program(&t, bdf(0, 2, 0), 0, 2, 255);
    program(&t, bdf(2, 0, 0), 2, 2, 255);
    for bus in 0..=255 {
        let _ = t.read32(bdf(bus, 0, 0), 0);
    }
}

#[test]
fn functions_appear_without_the_multi_function_bit() {
    let t = Topology::builder()
        .device(3, 0, Function::pci(0x1111, 1, 0xff_0000).multi_function(false))
        .device(3, 5, Function::pci(0x1111, 2, 0xff_0000))
        .device(4, 0, Function::pci(0x1111, 3, 0xff_0000))
        .device(4, 1, Function::pci(0x1111, 4, 0xff_0000))
        .device(5, 6, Function::pci(0x1111, 5, 0xff_0000))
        .build();
    assert_eq!(t.read8(bdf(0, 3, 0), reg::HEADER_TYPE), 0x00);
    assert_eq!(t.read16(bdf(0, 3, 5), 2), 2, "function 5 answers without the bit on function 0");
    assert_eq!(
        t.read8(bdf(0, 4, 0), reg::HEADER_TYPE),
        0x80,
        "multi-function bit set automatically"
    );
    assert_eq!(t.read8(bdf(0, 4, 1), reg::HEADER_TYPE), 0x80);
    assert_eq!(t.read16(bdf(0, 5, 6), 2), 5, "function 6 without function 0");
    assert_eq!(t.read16(bdf(0, 5, 0), 0), 0xffff);
}

#[test]
fn header_registers_have_the_spec_write_masks() {
    let t = small();
    let ep = bdf(0, 0, 0);
    t.write32(ep, 0, 0x1234_5678);
    assert_eq!(t.read32(ep, 0), 0x29c0_8086, "IDs are read-only");
    t.write32(ep, reg::REVISION_CLASS, 0);
    assert_eq!(t.read32(ep, reg::REVISION_CLASS), 0x0600_0000);
    t.write8(ep, reg::HEADER_TYPE, 0x81);
    assert_eq!(t.read8(ep, reg::HEADER_TYPE), 0);
    t.write16(ep, reg::COMMAND, 0xffff);
    assert_eq!(t.read16(ep, reg::COMMAND), 0x0547);
    t.write16(ep, reg::COMMAND, 0);
    assert_eq!(t.read16(ep, reg::COMMAND), 0);
    t.write8(ep, reg::CAPABILITIES_POINTER, 0x80);
    assert_eq!(t.read8(ep, reg::CAPABILITIES_POINTER), 0);
    t.write8(ep, reg::INTERRUPT_LINE, 0x0b);
    assert_eq!(t.read8(ep, reg::INTERRUPT_LINE), 0x0b);
}

#[test]
fn status_error_bits_are_rw1c_and_exact_width_writes_keep_them() {
    let t = small();
    let host = t.find("host").unwrap();
    let b = bdf(0, 0, 0);
    // Received Master Abort (13) and Detected Parity Error (15), set by "hardware".
    t.poke(host, reg::STATUS, &[0x00, 0xa0]);
    // A 16-bit write of COMMAND leaves STATUS alone.
    t.write16(b, reg::COMMAND, 0x0006);
    assert_eq!(t.read16(b, reg::STATUS), 0xa000);
    // Writing 0 to STATUS changes nothing; writing 1 clears exactly that bit.
    t.write16(b, reg::STATUS, 0);
    assert_eq!(t.read16(b, reg::STATUS), 0xa000);
    t.write16(b, reg::STATUS, 0x2000);
    assert_eq!(t.read16(b, reg::STATUS), 0x8000);
    // A 32-bit read-modify-write of COMMAND clears what it reads back as set: the hazard the
    // trait's exact-width rule exists for.
    let v = t.read32(b, reg::COMMAND);
    t.write32(b, reg::COMMAND, v);
    assert_eq!(t.read16(b, reg::STATUS), 0);
    assert_eq!(t.read16(b, reg::COMMAND), 0x0006);
    // The Capabilities List bit is read-only.
    let rp = bdf(0, 1, 0);
    t.write16(rp, reg::STATUS, 0xffff);
    assert_eq!(t.read16(rp, reg::STATUS), reg::STATUS_CAP_LIST);
}

#[test]
fn bridge_registers_and_window_granularity() {
    let t = Topology::builder()
        .bridge(1, 0, Bridge::root_port().io_window(Some(true)), |b| b)
        .bridge(2, 0, Bridge::pci().io_window(None).prefetchable_window(Some(false)), |b| b)
        .build();
    let rp = bdf(0, 1, 0);
    t.write32(rp, reg::PRIMARY_BUS, 0xffff_ffff);
    assert_eq!(
        t.read32(rp, reg::PRIMARY_BUS),
        0xffff_ffff,
        "primary, secondary, subordinate, latency"
    );
    // I/O: 4 KiB granularity, low nibble says 32-bit (1) and is read-only.
    t.write16(rp, reg::IO_BASE, 0xffff);
    assert_eq!(t.read16(rp, reg::IO_BASE), 0xf1f1);
    t.write32(rp, reg::IO_BASE_UPPER, 0xffff_ffff);
    assert_eq!(t.read32(rp, reg::IO_BASE_UPPER), 0xffff_ffff);
    // Memory: 1 MiB granularity.
    t.write32(rp, reg::MEMORY_BASE, 0xffff_ffff);
    assert_eq!(t.read32(rp, reg::MEMORY_BASE), 0xfff0_fff0);
    // Prefetchable: 64-bit (low nibble 1), upper halves writable.
    t.write32(rp, reg::PREF_MEMORY_BASE, 0xffff_ffff);
    assert_eq!(t.read32(rp, reg::PREF_MEMORY_BASE), 0xfff1_fff1);
    t.write32(rp, reg::PREF_BASE_UPPER, 0x1234_5678);
    t.write32(rp, reg::PREF_LIMIT_UPPER, 0x9abc_def0);
    assert_eq!(t.read32(rp, reg::PREF_BASE_UPPER), 0x1234_5678);
    assert_eq!(t.read32(rp, reg::PREF_LIMIT_UPPER), 0x9abc_def0);
    t.write16(rp, reg::BRIDGE_CONTROL, 0xffff);
    assert_eq!(t.read16(rp, reg::BRIDGE_CONTROL), 0x0bff);

    // No I/O window: read-only zero; 32-bit prefetchable: no upper halves.
    let pb = bdf(0, 2, 0);
    t.write16(pb, reg::IO_BASE, 0xffff);
    assert_eq!(t.read16(pb, reg::IO_BASE), 0);
    t.write32(pb, reg::IO_BASE_UPPER, 0xffff_ffff);
    assert_eq!(t.read32(pb, reg::IO_BASE_UPPER), 0);
    t.write32(pb, reg::PREF_MEMORY_BASE, 0xffff_ffff);
    assert_eq!(t.read32(pb, reg::PREF_MEMORY_BASE), 0xfff0_fff0);
    t.write32(pb, reg::PREF_BASE_UPPER, 0xffff_ffff);
    assert_eq!(t.read32(pb, reg::PREF_BASE_UPPER), 0);
    // Secondary status error bits are RW1C.
    t.poke(t.route_of(pb).unwrap(), reg::SECONDARY_STATUS, &[0, 0x40]);
    t.write16(pb, reg::SECONDARY_STATUS, 0x4000);
    assert_eq!(t.read16(pb, reg::SECONDARY_STATUS), 0);
}

#[test]
fn bar_sizing_for_every_kind() {
    let t = Topology::builder()
        .device(
            1,
            0,
            Function::endpoint(0x1111, 1, 0x02_0000)
                .bar(0, Bar::mem32(128 << 10))
                .bar(1, Bar::mem32_prefetchable(4096))
                .bar(2, Bar::mem64(16 << 10, true))
                .bar(4, Bar::io(32))
                .rom(64 << 10),
        )
        .device(
            2,
            0,
            Function::endpoint(0x1111, 2, 0x03_0000)
                .bar(0, Bar::mem64(8 << 30, false))
                .bar(2, Bar::mem64(1 << 20, false)),
        )
        .build();
    let f = bdf(0, 1, 0);
    let size = |off: u16| {
        t.write32(f, off, u32::MAX);
        t.read32(f, off)
    };
    assert_eq!(t.read32(f, reg::BAR0), 0);
    assert_eq!(size(reg::BAR0), 0xfffe_0000);
    assert_eq!(size(reg::BAR0 + 4), 0xffff_f008);
    assert_eq!(size(reg::BAR0 + 8), 0xffff_c00c, "64-bit prefetchable, low half");
    assert_eq!(size(reg::BAR0 + 12), 0xffff_ffff, "upper half: all address bits");
    assert_eq!(size(reg::BAR0 + 16), 0xffff_ffe1, "I/O");
    assert_eq!(size(reg::BAR0 + 20), 0, "unimplemented");
    assert_eq!(size(reg::EXPANSION_ROM), 0xffff_0001);
    // The type bits survive a write of zero; an address sticks.
    t.write32(f, reg::BAR0 + 8, 0);
    assert_eq!(t.read32(f, reg::BAR0 + 8), 0x0000_000c);
    t.write32(f, reg::BAR0, 0x8123_4567);
    assert_eq!(t.read32(f, reg::BAR0), 0x8122_0000);

    // An 8 GiB BAR: the low half has no writable address bits.
    let g = bdf(0, 2, 0);
    t.write32(g, reg::BAR0, u32::MAX);
    t.write32(g, reg::BAR0 + 4, u32::MAX);
    assert_eq!(t.read32(g, reg::BAR0), 0x0000_0004);
    assert_eq!(t.read32(g, reg::BAR0 + 4), 0xffff_fffe);
    t.write32(g, reg::BAR0 + 8, u32::MAX);
    assert_eq!(t.read32(g, reg::BAR0 + 8), 0xfff0_0004);
}

/// An independent walk of the legacy list (bounded), giving (id, offset) pairs.
fn walk_legacy(t: &Topology, f: Bdf) -> Vec<(u8, u16)> {
    let mut out = Vec::new();
    let mut p = u16::from(t.read8(f, reg::CAPABILITIES_POINTER));
    while p != 0 && out.len() < 48 {
        out.push((t.read8(f, p), p));
        p = u16::from(t.read8(f, p + 1));
    }
    out
}

fn walk_ext(t: &Topology, f: Bdf) -> Vec<(u16, u8, u16)> {
    let mut out = Vec::new();
    let mut p = 0x100u16;
    while p != 0 && out.len() < 960 {
        let h = t.read32(f, p);
        if h == 0 || h == u32::MAX {
            break;
        }
        // CAST: the header's fields.
        out.push((h as u16, (h >> 16 & 0xf) as u8, p));
        p = (h >> 20) as u16;
    }
    out
}

#[test]
fn capability_lists_are_built_in_declaration_order() {
    let t = Topology::builder()
        .device(
            0,
            0,
            Function::endpoint(0x1111, 1, 0x02_0000)
                .pm()
                .msi(4, true)
                .msix(16, 0)
                .aer()
                .acs(acs::SV | acs::RR)
                .ari(4)
                .ats(0, true)
                .pasid(true, false, 20)
                .pri(32)
                .cap(Capability::RawLegacy { id: 0x09, body: std::vec![0xde, 0xad] })
                .cap(Capability::RawExtended { id: 0x0b, version: 1, body: std::vec![1, 2, 3, 4] }),
        )
        .build();
    let f = bdf(0, 0, 0);
    let id = t.route_of(f).unwrap();
    assert_ne!(t.read16(f, reg::STATUS) & reg::STATUS_CAP_LIST, 0);
    let legacy = walk_legacy(&t, f);
    let ids: Vec<u8> = legacy.iter().map(|c| c.0).collect();
    assert_eq!(ids, [0x10, 0x01, 0x05, 0x11, 0x09]);
    assert_eq!(legacy[0].1, 0x40);
    assert_eq!(legacy[1].1, 0x7c, "PCIe capability is 0x3c bytes");
    assert!(legacy.iter().all(|c| c.1 >= 0x40 && c.1 % 4 == 0));
    for (cid, off) in &legacy {
        assert_eq!(t.legacy_cap(id, *cid), Some(*off));
    }
    assert_eq!(t.read16(f, legacy[4].1 + 2), 0xadde);
    let ext = walk_ext(&t, f);
    let ids: Vec<(u16, u8)> = ext.iter().map(|c| (c.0, c.1)).collect();
    assert_eq!(ids, [(0x01, 2), (0x0d, 1), (0x0e, 1), (0x0f, 1), (0x1b, 1), (0x13, 1), (0x0b, 1)]);
    assert_eq!(ext[0].2, 0x100);
    assert_eq!(ext[1].2, 0x148, "AER is 0x48 bytes");
    for (cid, _, off) in &ext {
        assert_eq!(t.ext_cap(id, *cid), Some(*off));
    }
    // ARI next function, ATS page aligned, PASID fields.
    assert_eq!(t.read16(f, ext[2].2 + 4), 0x0400);
    assert_eq!(t.read16(f, ext[3].2 + 4), 0x0020);
    assert_eq!(t.read16(f, ext[4].2 + 4), 0x1402);
    assert_eq!(t.read32(f, ext[6].2 + 4), 0x0403_0201);
    // MSI: 4 vectors (MMC 2), 64-bit; enable and MME writable, MMC read-only.
    let msi = t.legacy_cap(id, cap_id::MSI).unwrap();
    assert_eq!(t.read16(f, msi + 2), 0x0084);
    t.write16(f, msi + 2, 0xffff);
    assert_eq!(t.read16(f, msi + 2), 0x00f5);
    // MSI-X: table size 16 reads 15, enable and mask writable.
    let msix = t.legacy_cap(id, cap_id::MSIX).unwrap();
    t.write16(f, msix + 2, 0xffff);
    assert_eq!(t.read16(f, msix + 2), 0xc00f);
}

#[test]
fn explicit_offsets_and_qemu_root_port_acs_at_0x148() {
    let t = Topology::qemu_q35_rich();
    let rp = bdf(0, 1, 0);
    let ext = walk_ext(&t, rp);
    assert_eq!(ext.iter().map(|c| (c.0, c.2)).collect::<Vec<_>>(), [(0x01, 0x100), (0x0d, 0x148)]);
    assert_eq!(t.read16(rp, 0x14c), 0x005f, "QEMU's ACSCap");
    // ACS control: only the bits the capability has.
    t.write16(rp, 0x14e, 0xffff);
    assert_eq!(t.read16(rp, 0x14e), 0x005f);
    t.program_bus_numbers();
    let igb = bdf(1, 0, 0);
    let ext = walk_ext(&t, igb);
    assert_eq!(
        ext.iter().map(|c| (c.0, c.2)).collect::<Vec<_>>(),
        [(0x01, 0x100), (0x0e, 0x150), (0x10, 0x160)]
    );
    let legacy = walk_legacy(&t, igb);
    assert_eq!(legacy, [(0x01, 0x40), (0x05, 0x50), (0x11, 0x70), (0x10, 0xa0)]);
}

#[test]
#[should_panic(expected = "first extended capability must be at 0x100")]
fn extended_chain_must_start_at_0x100() {
    let _ = Topology::builder()
        .device(0, 0, Function::endpoint(1, 1, 0).cap_at(0x148, Capability::acs(ACS_ALL)))
        .build();
}

#[test]
#[should_panic(expected = "overlaps")]
fn overlapping_capabilities_are_refused_at_build() {
    let _ = Topology::builder()
        .device(
            0,
            0,
            Function::pci(1, 1, 0).cap_at(0x40, Capability::Pm).cap_at(0x44, Capability::Pm),
        )
        .build();
}

#[test]
fn hostile_pokes_shape_any_layout() {
    let t = Topology::builder()
        .device(0, 0, Function::endpoint(0x1111, 1, 0).pm().msi(1, false).aer().acs(0))
        // A pointer into the header, built in.
        .device(1, 0, Function::pci(0x1111, 2, 0).pm().poke(0x41, &[0x10]))
        .build();
    let f = bdf(0, 0, 0);
    let id = t.route_of(f).unwrap();
    let pm = t.legacy_cap(id, cap_id::PM).unwrap();
    let msi = t.legacy_cap(id, cap_id::MSI).unwrap();
    // A loop: MSI's next points back at PM.
    // CAST: a legacy offset fits a byte.
    t.poke(id, msi + 1, &[pm as u8]);
    assert_eq!(t.read8(f, msi + 1), pm as u8);
    // Misaligned pointer.
    t.poke(id, reg::CAPABILITIES_POINTER, &[0x43]);
    assert_eq!(t.read8(f, reg::CAPABILITIES_POINTER), 0x43);
    // Extended loop: ACS points back to 0x100.
    let acs_off = t.ext_cap(id, cap_id::ACS).unwrap();
    let h = t.read32(f, acs_off);
    t.poke(id, acs_off, &((h & 0xf_ffff) | 0x100 << 20).to_le_bytes());
    let w = walk_ext(&t, f);
    assert_eq!(w.len(), 960, "the chain loops");
    assert_eq!(t.read8(bdf(0, 1, 0), 0x41), 0x10);
    // A chain of 4-byte capabilities filling 0x40..0x100 and then looping: longer than any
    // real list.
    let g = t.route_of(bdf(0, 1, 0)).unwrap();
    for off in (0x40u16..0x100).step_by(4) {
        // CAST: offsets below 0x100.
        let next = if off == 0xfc { 0x40 } else { off as u8 + 4 };
        t.poke(g, off, &[0x09, next, 0, 0]);
    }
    t.poke(g, reg::CAPABILITIES_POINTER, &[0x40]);
    assert_eq!(walk_legacy(&t, bdf(0, 1, 0)).len(), 48);
    // Pokes are not writes: nothing counted.
    let c = t.counts();
    t.poke(g, 0, &[0xff, 0xff]);
    assert_eq!(t.counts(), c);
    assert_eq!(t.read16(bdf(0, 1, 0), 0), 0xffff);
}

#[test]
fn conventional_functions_and_paths_have_256_bytes() {
    let t = Topology::builder()
        .device(1, 0, Function::edu())
        .device(2, 0, Function::endpoint(0x1111, 1, 0).aer())
        .bridge(3, 0, Bridge::pcie_to_pci(), |b| {
            b.device(0, 0, Function::endpoint(0x1111, 2, 0).aer())
        })
        .bridge(4, 0, Bridge::pci(), |b| b.device(0, 0, Function::endpoint(0x1111, 3, 0).aer()))
        .build();
    t.program_bus_numbers();
    assert_eq!(t.read32(bdf(0, 1, 0), 0x100), u32::MAX, "edu is conventional PCI");
    assert_eq!(t.read32(bdf(0, 1, 0), 0), 0x11e8_1234);
    assert_eq!(t.read32(bdf(0, 2, 0), 0x100) & 0xffff, 0x0001);
    // A PCIe function below a PCIe-to-PCI or a PCI bridge: no extended config crosses PCI.
    assert_eq!(t.read16(bdf(1, 0, 0), 0), 0x1111);
    assert_eq!(t.read32(bdf(1, 0, 0), 0x100), u32::MAX);
    assert_eq!(t.read32(bdf(2, 0, 0), 0x100), u32::MAX);
    // The bridges themselves: the PCIe-to-PCI bridge has 4 KiB, the PCI bridge 256 bytes.
    assert_eq!(t.read32(bdf(0, 3, 0), 0x100) & 0xffff, 0x0001);
    assert_eq!(t.read32(bdf(0, 4, 0), 0x100), u32::MAX);
}

#[test]
fn acs_ats_pasid_control_masks() {
    let t = Topology::builder()
        .device(0, 0, Function::endpoint(1, 1, 0).ats(4, false).pasid(true, false, 16).acs(acs::SV))
        .device(1, 0, Function::endpoint(1, 2, 0).pasid(false, true, 8))
        .build();
    let f = bdf(0, 0, 0);
    let id = t.route_of(f).unwrap();
    let ats = t.ext_cap(id, cap_id::ATS).unwrap();
    assert_eq!(t.read16(f, ats + 4), 0x0004);
    t.write16(f, ats + 6, 0xffff);
    assert_eq!(t.read16(f, ats + 6), 0x801f, "Enable and STU");
    let pasid = t.ext_cap(id, cap_id::PASID).unwrap();
    t.write16(f, pasid + 6, 0xffff);
    assert_eq!(t.read16(f, pasid + 6), 0x0003, "Enable, Execute; no Privileged");
    let acs_off = t.ext_cap(id, cap_id::ACS).unwrap();
    t.write16(f, acs_off + 6, 0xffff);
    assert_eq!(t.read16(f, acs_off + 6), 0x0001);
    let g = bdf(0, 1, 0);
    let pasid = t.ext_cap(t.route_of(g).unwrap(), cap_id::PASID).unwrap();
    t.write16(g, pasid + 6, 0xffff);
    assert_eq!(t.read16(g, pasid + 6), 0x0005);
}

#[test]
fn pri_stopped_reset_and_status() {
    let t = Topology::builder()
        .device(0, 0, Function::endpoint(1, 1, 0).pasid(false, false, 20).pri(16))
        .build();
    let f = bdf(0, 0, 0);
    let id = t.route_of(f).unwrap();
    let p = t.ext_cap(id, cap_id::PRI).unwrap();
    let (ctl, status, cap, alloc) = (p + 4, p + 6, p + 8, p + 12);
    assert_eq!(t.read16(f, status), 0x0100, "Stopped at reset");
    assert_eq!(t.read32(f, cap), 16);
    t.write32(f, cap, 0);
    assert_eq!(t.read32(f, cap), 16, "capacity is read-only");
    t.write32(f, alloc, 8);
    assert_eq!(t.read32(f, alloc), 8);
    assert_eq!(t.pri_issue(id, 1), 0, "disabled: no requests");
    t.write16(f, ctl, 0x0001);
    assert_eq!(t.read16(f, ctl), 0x0001);
    assert_eq!(t.read16(f, status) & 0x0100, 0, "enabling clears Stopped");
    assert_eq!(t.pri_issue(id, 10), 8, "bounded by the allocation");
    t.pri_complete(id, 5);
    assert_eq!(t.pri_outstanding(id), 3);
    // Disabling with requests outstanding: not stopped until they complete (§10.5.2.3).
    t.write16(f, ctl, 0);
    assert_eq!(t.read16(f, status) & 0x0100, 0);
    t.pri_complete(id, 2);
    assert_eq!(t.read16(f, status) & 0x0100, 0);
    t.pri_complete(id, 1);
    assert_eq!(t.read16(f, status) & 0x0100, 0x0100);
    // Reset with Enable clear drops outstanding requests at once; it reads back 0.
    t.write16(f, ctl, 1);
    assert_eq!(t.pri_issue(id, 4), 4);
    t.write16(f, ctl, 0x0002); // clear Enable and Reset in one write
    assert_eq!(t.read16(f, ctl), 0);
    assert_eq!(t.pri_outstanding(id), 0);
    assert_eq!(t.read16(f, status) & 0x0100, 0x0100);
    // Response Failure and UPRGI are RW1C.
    t.write16(f, ctl, 1);
    t.pri_issue(id, 2);
    t.pri_response_failure(id);
    t.pri_unexpected_response(id);
    assert_eq!(t.read16(f, status), 0x0003);
    assert_eq!(t.pri_issue(id, 1), 0, "no requests after a Response Failure");
    t.write16(f, status, 0x0001);
    assert_eq!(t.read16(f, status), 0x0002);
    t.write16(f, status, 0x0002);
    assert_eq!(t.read16(f, status), 0);
    t.write16(f, ctl, 0);
    assert_eq!(t.read16(f, status), 0x0100);
}

#[test]
fn prg_response_pasid_required_is_reported() {
    let t = Topology::builder()
        .device(
            0,
            0,
            Function::endpoint(1, 1, 0)
                .cap(Capability::Pri { capacity: 4, prg_response_pasid_required: true }),
        )
        .build();
    let p = t.ext_cap(t.route_of(bdf(0, 0, 0)).unwrap(), cap_id::PRI).unwrap();
    assert_eq!(t.read16(bdf(0, 0, 0), p + 6), 0x8100);
    t.write16(bdf(0, 0, 0), p + 6, 0xffff);
    assert_eq!(t.read16(bdf(0, 0, 0), p + 6), 0x8100);
}

/// q35 rich with buses programmed and ARI forwarding enabled on `port`.
fn q35_ari(port: &str) -> Topology {
    let t = Topology::qemu_q35_rich();
    t.program_bus_numbers();
    let rp = t.find(port).unwrap();
    let pcie = t.legacy_cap(rp, cap_id::PCIE).unwrap();
    t.write16(t.bdf(rp).unwrap(), pcie + 0x28, 1 << 5);
    t
}

fn enable_vfs(t: &Topology, pf: Bdf, num: u16) -> u16 {
    let c = t.ext_cap(t.route_of(pf).unwrap(), cap_id::SRIOV).unwrap();
    t.write16(pf, c + 0x10, num);
    t.write16(pf, c + 0x08, 0x0009);
    c
}

#[test]
fn igb_vfs_appear_at_offset_and_stride() {
    let t = q35_ari("rp1");
    let pf = bdf(1, 0, 0);
    assert_eq!(t.read32(pf, 0), 0x10c9_8086);
    let c = t.ext_cap(t.route_of(pf).unwrap(), cap_id::SRIOV).unwrap();
    assert_eq!(c, 0x160);
    assert_eq!(t.read16(pf, c + 0x0c), 8, "InitialVFs");
    assert_eq!(t.read16(pf, c + 0x0e), 8, "TotalVFs");
    assert_eq!(t.read16(pf, c + 0x14), 0x80);
    assert_eq!(t.read16(pf, c + 0x16), 2);
    assert_eq!(t.read16(pf, c + 0x1a), 0x10ca);
    assert_eq!(t.read32(pf, c + 0x1c), 0x553);
    assert_eq!(t.read32(bdf(1, 0x10, 0), 0), u32::MAX, "no VFs before VF Enable");
    enable_vfs(&t, pf, 3);
    // Notes §3.3: VF0 01:10.0, VF1 01:10.2; ID ffffffff, class/rev 02000001, ext@100 AER.
    for (i, (dev, func)) in [(0x10, 0), (0x10, 2), (0x10, 4)].into_iter().enumerate() {
        let vf = bdf(1, dev, func);
        assert_eq!(t.read32(vf, 0), u32::MAX, "VF{i} Vendor/Device read 0xffff");
        assert_eq!(t.read32(vf, reg::REVISION_CLASS), 0x0200_0001);
        assert_eq!(t.read8(vf, reg::HEADER_TYPE), 0);
        assert_eq!(t.read32(vf, 0x100) & 0xffff, 0x0001);
        assert_eq!(t.read32(vf, 0x150) & 0xffff, 0x000e);
        assert_eq!(t.route_of(vf), Some(t.find("igb").unwrap().vf(i as u16)));
        // VF BARs read zero and ignore writes; VF Command has only Bus Master.
        t.write32(vf, reg::BAR0, u32::MAX);
        assert_eq!(t.read32(vf, reg::BAR0), 0);
        t.write16(vf, reg::COMMAND, 0xffff);
        assert_eq!(t.read16(vf, reg::COMMAND), reg::COMMAND_BUS_MASTER);
    }
    assert_eq!(t.read32(bdf(1, 0x10, 6), 0), u32::MAX, "beyond NumVFs");
    assert_eq!(t.read32(bdf(1, 0x10, 1), 0), u32::MAX, "between strides");
    // NumVFs is ignored while VF Enable is set.
    t.write16(pf, c + 0x10, 8);
    assert_eq!(t.read16(pf, c + 0x10), 3);
    assert_eq!(t.vfs(t.find("igb").unwrap()).len(), 3);
    // Disabling removes them; NumVFs is writable again.
    t.write16(pf, c + 0x08, 0);
    assert_eq!(t.read32(bdf(1, 0x10, 0), reg::REVISION_CLASS), u32::MAX);
    t.write16(pf, c + 0x10, 8);
    assert_eq!(t.read16(pf, c + 0x10), 8);
    t.write16(pf, c + 0x08, 1);
    assert_eq!(t.read32(bdf(1, 0x11, 6), reg::REVISION_CLASS), 0x0200_0001, "VF7 at 01:11.6");
    assert!(!t.overlap_seen());
}

#[test]
fn vf_state_resets_when_vfs_are_re_enabled() {
    let t = q35_ari("rp1");
    let pf = bdf(1, 0, 0);
    let c = enable_vfs(&t, pf, 1);
    let vf = bdf(1, 0x10, 0);
    t.write16(vf, reg::COMMAND, reg::COMMAND_BUS_MASTER);
    assert_eq!(t.read16(vf, reg::COMMAND), reg::COMMAND_BUS_MASTER);
    t.write16(pf, c + 8, 0);
    t.write16(pf, c + 8, 1);
    assert_eq!(t.read16(vf, reg::COMMAND), 0);
}

#[test]
fn ari_forwarding_rule_hides_devices_other_than_0_below_a_port() {
    let t = Topology::qemu_q35_rich();
    t.program_bus_numbers();
    enable_vfs(&t, bdf(1, 0, 0), 2);
    assert_eq!(t.read32(bdf(1, 0x10, 0), 8), u32::MAX, "root port without ARI Forwarding Enable");
    assert_eq!(t.bdf(t.find("igb").unwrap().vf(0)), None);
    let rp = t.find("rp1").unwrap();
    let pcie = t.legacy_cap(rp, cap_id::PCIE).unwrap();
    assert_eq!(t.read32(bdf(0, 1, 0), pcie + 0x24) & (1 << 5), 1 << 5, "ARI Forwarding Supported");
    t.write16(bdf(0, 1, 0), pcie + 0x28, 1 << 5);
    assert_eq!(t.read32(bdf(1, 0x10, 0), 8), 0x0200_0001);

    // With the rule off (as QEMU), the VFs answer at once.
    let t = Topology::builder()
        .ari_forwarding_rule(false)
        .bridge(1, 0, Bridge::root_port(), |b| {
            b.device(
                0,
                0,
                Function::endpoint(0x8086, 0x10c9, 0x02_0000)
                    .sriov(SrIov::new(8).offset_stride(0x80, 2)),
            )
        })
        .build();
    t.program_bus_numbers();
    enable_vfs(&t, bdf(1, 0, 0), 1);
    assert_eq!(t.read32(bdf(1, 0x10, 0), 8), 0x0200_0000);
}

#[test]
fn nvme_vfs_follow_the_pf() {
    let t = Topology::qemu_q35_rich();
    t.program_bus_numbers();
    let pf = bdf(2, 0, 0);
    assert_eq!(t.read32(pf, 0), 0x0010_1b36);
    let c = enable_vfs(&t, pf, 2);
    assert_eq!(c, 0x120);
    assert_eq!(t.read32(bdf(2, 0, 1), 0), u32::MAX, "VF Vendor/Device read 0xffff");
    assert_eq!(t.read32(bdf(2, 0, 1), 8) >> 8, 0x01_0802);
    assert_eq!(t.read32(bdf(2, 0, 2), 8) >> 8, 0x01_0802);
    assert_eq!(t.read32(bdf(2, 0, 3), 8), u32::MAX);
    assert_eq!(t.read32(bdf(2, 0, 1), 0x100) & 0xffff, 0x000e, "VF ARI at 0x100");
    let nvme = t.find("nvme").unwrap();
    assert_eq!(t.bdf(nvme.vf(1)), Some(bdf(2, 0, 2)));
    // NumVFs above TotalVFs: only TotalVFs appear.
    t.write16(pf, c + 8, 0);
    t.write16(pf, c + 0x10, 7);
    t.write16(pf, c + 8, 1);
    assert_eq!(t.vfs(nvme).len(), 2);
}

/// A root port with an SR-IOV PF below, VFs at `offset`/`stride`.
fn sriov_behind_port(sriov: SrIov) -> Topology {
    Topology::builder()
        .ari_forwarding_rule(false)
        .bridge(1, 0, Bridge::root_port().name("rp"), |b| {
            b.device(0, 0, Function::endpoint(0x1111, 0x1, 0x02_0000).name("pf").sriov(sriov))
        })
        .build()
}

#[test]
fn vfs_on_later_buses_need_routing() {
    let t = sriov_behind_port(SrIov::new(4).offset_stride(0x100, 0x80));
    program(&t, bdf(0, 1, 0), 0, 1, 1);
    enable_vfs(&t, bdf(1, 0, 0), 4);
    let pf = t.find("pf").unwrap();
    // VF0 at 02:00.0, VF1 02:10.0, VF2 03:00.0, VF3 03:10.0; bus 2 and 3 not routed yet.
    assert_eq!(t.read32(bdf(2, 0, 0), 8), u32::MAX);
    assert_eq!(t.bdf(pf.vf(0)), None);
    t.write8(bdf(0, 1, 0), reg::SUBORDINATE_BUS, 3);
    assert_eq!(t.read32(bdf(2, 0, 0), 8), 0x0200_0000);
    assert_eq!(t.read32(bdf(3, 0x10, 0), 8), 0x0200_0000);
    assert_eq!(t.bdf(pf.vf(3)), Some(bdf(3, 0x10, 0)));
    // program_bus_numbers reserves them.
    let t = sriov_behind_port(SrIov::new(4).offset_stride(0x100, 0x80));
    t.program_bus_numbers();
    assert_eq!(t.read8(bdf(0, 1, 0), reg::SUBORDINATE_BUS), 3);
}

#[test]
fn vfs_past_bus_255_do_not_exist() {
    let t = sriov_behind_port(SrIov::new(4).offset_stride(0x80, 0x80));
    program(&t, bdf(0, 1, 0), 0, 255, 255);
    enable_vfs(&t, bdf(255, 0, 0), 4);
    let pf = t.find("pf").unwrap();
    assert_eq!(t.read32(bdf(255, 0x10, 0), 8), 0x0200_0000, "VF0 at ff:10.0");
    assert_eq!(t.bdf(pf.vf(0)), Some(bdf(255, 0x10, 0)));
    for k in 1..4 {
        assert_eq!(t.bdf(pf.vf(k)), None, "VF{k} past bus 255");
    }
    for bus in 0..=255u8 {
        for devfn in 0..=255u8 {
            let b = Bdf { segment: 0, bus, devfn };
            if let Some(id) = t.route_of(b) {
                assert!(id.vf_index().is_none_or(|k| k == 0), "{b} routed to {id:?}");
            }
        }
    }
    let snap = t.snapshot();
    assert_eq!(snap.functions.iter().filter(|f| f.id.is_vf()).count(), 4);
    assert_eq!(snap.reachable().filter(|f| f.id.is_vf()).count(), 1);
}

#[test]
fn hostile_sriov_layouts() {
    // TotalVFs 0: enabling creates nothing.
    let t = sriov_behind_port(SrIov::new(0));
    t.program_bus_numbers();
    enable_vfs(&t, bdf(1, 0, 0), 4);
    assert!(t.vfs(t.find("pf").unwrap()).is_empty());
    for f in 1..8 {
        assert_eq!(t.read32(bdf(1, 0, f), 0), u32::MAX);
    }

    // Offset 0: VF0 lands on the PF itself; the PF keeps answering and the clash is flagged.
    let t = sriov_behind_port(SrIov::new(2).offset_stride(0, 1));
    t.program_bus_numbers();
    enable_vfs(&t, bdf(1, 0, 0), 2);
    assert_eq!(t.read32(bdf(1, 0, 0), 0), 0x0001_1111);
    assert!(t.overlap_seen());
    assert_eq!(t.read32(bdf(1, 0, 1), 8), 0x0200_0000, "VF1 at 01:00.1");
    let pf = t.find("pf").unwrap();
    assert_eq!(t.bdf(pf.vf(0)), None, "shadowed by the PF");

    // Stride 0: every VF on one RID; the first answers, the clash is flagged.
    let t = sriov_behind_port(SrIov::new(4).offset_stride(1, 0));
    t.program_bus_numbers();
    enable_vfs(&t, bdf(1, 0, 0), 4);
    t.clear_overlap();
    assert_eq!(t.read32(bdf(1, 0, 1), 8), 0x0200_0000);
    assert!(t.overlap_seen());
    assert_eq!(t.route_of(bdf(1, 0, 1)), Some(t.find("pf").unwrap().vf(0)));
}

#[test]
fn offset_and_stride_follow_num_vfs_and_ari() {
    fn routing(num_vfs: u16, ari: bool) -> (u16, u16) {
        match (ari, num_vfs > 4) {
            (true, _) => (0x10, 1),
            (false, false) => (1, 1),
            (false, true) => (8, 8),
        }
    }
    let t = sriov_behind_port(SrIov::new(16).routing(routing));
    t.program_bus_numbers();
    let pf = bdf(1, 0, 0);
    let c = t.ext_cap(t.route_of(pf).unwrap(), cap_id::SRIOV).unwrap();
    assert_eq!((t.read16(pf, c + 0x14), t.read16(pf, c + 0x16)), (1, 1));
    t.write16(pf, c + 0x10, 6);
    assert_eq!((t.read16(pf, c + 0x14), t.read16(pf, c + 0x16)), (8, 8));
    t.write16(pf, c + 8, 1 << 4);
    assert_eq!((t.read16(pf, c + 0x14), t.read16(pf, c + 0x16)), (0x10, 1));
    t.write16(pf, c + 8, 1 << 4 | 1);
    assert_eq!(t.read32(bdf(1, 2, 0), 8), 0x0200_0000, "VF0 at RID +0x10");
    assert_eq!(t.read32(bdf(1, 2, 5), 8), 0x0200_0000, "VF5");
    assert_eq!(t.read32(bdf(1, 2, 6), 8), u32::MAX);
}

#[test]
fn vf_bars_size_per_vf_and_follow_the_system_page_size() {
    let t = q35_ari("rp1");
    let pf = bdf(1, 0, 0);
    let c = 0x160;
    let vf_bar = |i: u16| c + 0x24 + 4 * i;
    t.write32(pf, vf_bar(0), u32::MAX);
    t.write32(pf, vf_bar(1), u32::MAX);
    assert_eq!(t.read32(pf, vf_bar(0)), 0xffff_c00c, "16 KiB, 64-bit prefetchable");
    assert_eq!(t.read32(pf, vf_bar(1)), 0xffff_ffff);
    t.write32(pf, vf_bar(2), u32::MAX);
    assert_eq!(t.read32(pf, vf_bar(2)), 0, "VF BAR2 unimplemented");
    // System Page Size 64 KiB (bit 4): each VF's BAR grows to a page.
    t.write32(pf, c + 0x20, 1 << 4);
    assert_eq!(t.read32(pf, c + 0x20), 1 << 4);
    t.write32(pf, vf_bar(0), u32::MAX);
    assert_eq!(t.read32(pf, vf_bar(0)), 0xffff_000c);
}

#[test]
fn vfs_settle_after_some_reads() {
    let t = sriov_behind_port(SrIov::new(2).settle_reads(3));
    t.program_bus_numbers();
    enable_vfs(&t, bdf(1, 0, 0), 2);
    let vf = bdf(1, 0, 1);
    assert_eq!(t.read32(vf, 8), u32::MAX);
    assert_eq!(t.read32(vf, 8), u32::MAX);
    assert_eq!(t.read32(vf, 8), u32::MAX);
    assert_eq!(t.read32(vf, 8), 0x0200_0000);
}

#[test]
fn vf_declared_capabilities_and_ats_stu_in_vfs() {
    let sr = SrIov::new(2).vf_cap(Capability::ari(0)).vf_cap(Capability::ats(0, false));
    let t = Topology::builder()
        .ari_forwarding_rule(false)
        .bridge(1, 0, Bridge::root_port(), |b| {
            b.device(
                0,
                0,
                Function::endpoint(1, 1, 0x02_0000)
                    .ats(0, false)
                    .pasid(true, true, 20)
                    .pri(8)
                    .sriov(sr),
            )
        })
        .build();
    t.program_bus_numbers();
    enable_vfs(&t, bdf(1, 0, 0), 1);
    let vf = bdf(1, 0, 1);
    let ids: Vec<u16> = walk_ext(&t, vf).iter().map(|c| c.0).collect();
    assert_eq!(ids, [cap_id::ARI, cap_id::ATS], "no PASID or PRI in the VF");
    assert_eq!(walk_legacy(&t, vf), [(cap_id::PCIE, 0x40)]);
    let id = t.route_of(vf).unwrap();
    let ats = t.ext_cap(id, cap_id::ATS).unwrap();
    t.write16(vf, ats + 6, 0xffff);
    assert_eq!(t.read16(vf, ats + 6), 0x8000, "STU is the PF's");
}

#[test]
fn flr_resets_the_function_and_pf_flr_removes_vfs() {
    let t = q35_ari("rp1");
    let pf = bdf(1, 0, 0);
    enable_vfs(&t, pf, 2);
    t.write16(pf, reg::COMMAND, 0x0006);
    assert_eq!(t.read32(bdf(1, 0x10, 2), 8), 0x0200_0001);
    t.write16(pf, 0xa0 + 0x08, 1 << 15);
    assert_eq!(t.read16(pf, reg::COMMAND), 0);
    assert_eq!(t.read16(pf, 0xa8), 0x2000, "Initiate FLR reads 0");
    assert_eq!(t.read32(bdf(1, 0x10, 2), 8), u32::MAX, "VF Enable cleared by the PF's FLR");
}

#[test]
fn surprise_removal_and_hot_add() {
    let t = Topology::qemu_q35_rich();
    t.program_bus_numbers();
    let e1000e = t.find("e1000e").unwrap();
    let at = t.bdf(e1000e).unwrap();
    assert_eq!(at, bdf(8, 0, 0));
    let down0 = t.find("switch-down0").unwrap();
    t.set_present(down0, false);
    assert_eq!(t.read32(at, 0), u32::MAX);
    assert_eq!(t.bdf(e1000e), None);
    t.set_present(down0, true);
    assert_eq!(t.read16(at, 2), 0x10d3);
    // The empty hot-plug slot reports no presence; its port is hot-plug capable.
    let down1 = bdf(7, 1, 0);
    let pcie = t.legacy_cap(t.find("switch-down1").unwrap(), cap_id::PCIE).unwrap();
    assert_eq!(t.read32(down1, pcie + 0x14) & 0x60, 0x60);
    assert_eq!(t.read16(down1, pcie + 0x1a) & 0x40, 0);
    assert_eq!(t.read16(down1, pcie + 2) & 0x1f0, 0x160, "slot implemented, downstream port");
    let rp4 = t.legacy_cap(t.find("rp4").unwrap(), cap_id::PCIE).unwrap();
    assert_eq!(t.read32(bdf(0, 5, 0), rp4 + 0x14) >> 19, 4, "physical slot number");
}

#[test]
fn hot_plug_slot_with_an_absent_device() {
    let t = Topology::builder()
        .bridge(1, 0, Bridge::root_port().hotplug(true), |b| {
            b.device(0, 0, Function::endpoint(7, 7, 0).name("late").present(false))
        })
        .build();
    t.program_bus_numbers();
    assert_eq!(t.read32(bdf(1, 0, 0), 0), u32::MAX);
    t.set_present(t.find("late").unwrap(), true);
    assert_eq!(t.read32(bdf(1, 0, 0), 0), 0x0007_0007);
}

#[test]
fn counts_every_access_and_absent_ones_separately() {
    let t = small();
    t.reset_counts();
    t.read32(bdf(0, 0, 0), 0);
    t.read16(bdf(0, 0, 0), 2);
    t.read8(bdf(0, 0, 0), 0xe);
    t.write16(bdf(0, 0, 0), reg::COMMAND, 0);
    t.read32(bdf(0, 9, 0), 0);
    t.write8(bdf(3, 0, 0), 0, 0);
    assert_eq!(t.counts(), AccessCounts { reads: 4, writes: 2 });
    assert_eq!(t.absent_counts(), AccessCounts { reads: 1, writes: 1 });
    // Helpers that look without touching are not counted.
    let _ = t.snapshot();
    let _ = t.route_of(bdf(0, 0, 0));
    let _ = t.peek32(t.find("host").unwrap(), 0);
    assert_eq!(t.counts(), AccessCounts { reads: 4, writes: 2 });
    // Misaligned or out-of-range offsets of a present function read all-ones.
    assert_eq!(t.read32(bdf(0, 0, 0), 2), u32::MAX);
    assert_eq!(t.read16(bdf(0, 1, 0), 0x1000), u16::MAX);
}

#[test]
fn snapshot_is_the_truth_tree() {
    let t = Topology::qemu_q35_rich();
    let before = t.snapshot();
    let names = |s: &Snapshot| s.reachable().filter_map(|f| f.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&before),
        ["host", "rp1", "edu", "rp2", "pci-bridge", "rp4", "rp5", "lpc", "sata", "smbus"],
        "only the root bus answers before bus numbers are programmed"
    );
    t.program_bus_numbers();
    let s = t.snapshot();
    let at = |name: &str| s.by_name(name).unwrap().bdf;
    assert_eq!(at("igb"), Some(bdf(1, 0, 0)));
    assert_eq!(at("nvme"), Some(bdf(2, 0, 0)));
    assert_eq!(at("edu-pci-bridge"), Some(bdf(3, 4, 0)));
    assert_eq!(at("pcie-pci-bridge"), Some(bdf(4, 0, 0)));
    assert_eq!(at("edu-pcie-pci-0"), Some(bdf(5, 3, 0)));
    assert_eq!(at("edu-pcie-pci-1"), Some(bdf(5, 4, 0)));
    assert_eq!(at("switch-up"), Some(bdf(6, 0, 0)));
    assert_eq!(at("switch-down1"), Some(bdf(7, 1, 0)));
    assert_eq!(at("e1000e"), Some(bdf(8, 0, 0)));
    assert_eq!(at("sata"), Some(bdf(0, 0x1f, 2)));
    assert_eq!(s.functions.len(), 20);
    let parent = |name: &str| {
        s.by_name(name).unwrap().parent.and_then(|p| s.get(p)).and_then(|p| p.name.clone())
    };
    assert_eq!(parent("edu-pcie-pci-0").as_deref(), Some("pcie-pci-bridge"));
    assert_eq!(parent("pcie-pci-bridge").as_deref(), Some("rp4"));
    assert_eq!(parent("e1000e").as_deref(), Some("switch-down0"));
    assert_eq!(parent("edu"), None);
    assert_eq!(s.by_name("pcie-pci-bridge").unwrap().port_type, Some(PortType::PcieToPciBridge));
    assert_eq!(s.by_name("pci-bridge").unwrap().port_type, None);
    assert_eq!(s.children(t.find("switch-up")).count(), 2);
    // Bus numbers as firmware programs them.
    let rp5 = bdf(0, 6, 0);
    assert_eq!(
        (
            t.read8(rp5, reg::PRIMARY_BUS),
            t.read8(rp5, reg::SECONDARY_BUS),
            t.read8(rp5, reg::SUBORDINATE_BUS)
        ),
        (0, 6, 9)
    );
    // Every reachable function answers at its snapshot address with the snapshot's IDs.
    for f in s.reachable() {
        let b = f.bdf.unwrap();
        assert_eq!(t.read16(b, 0), f.vendor, "{b}");
        assert_eq!(t.read16(b, 2), f.device, "{b}");
        assert_eq!(t.route_of(b), Some(f.id));
    }
    // VFs join the snapshot when enabled, under the PF's parent.
    let t = q35_ari("rp1");
    enable_vfs(&t, bdf(1, 0, 0), 2);
    let s = t.snapshot();
    let vf1 = s.by_name("igb-vf1").unwrap();
    assert_eq!(vf1.bdf, Some(bdf(1, 0x10, 2)));
    assert_eq!((vf1.vendor, vf1.device), (0x8086, 0x10ca));
    assert_eq!(vf1.parent, t.find("rp1"));
    assert_eq!(vf1.id, t.find("igb").unwrap().vf(1));
}

#[test]
fn segments_root_bus_and_bus_range() {
    let t = Topology::builder()
        .device(0, 0, Function::host_bridge(1, 1))
        .segment(1)
        .root_bus(0x80)
        .bus_range(0x80, 0x8f)
        .device(0, 0, Function::host_bridge(2, 2))
        .bridge(1, 0, Bridge::root_port(), |b| {
            b.device(0, 0, Function::endpoint(3, 3, 0).name("seg1-ep"))
        })
        .build();
    let s1 = |bus, dev| Bdf::new(1, bus, dev, 0).unwrap();
    assert_eq!(t.read16(s1(0x80, 0), 0), 2);
    assert_eq!(t.read16(s1(0, 0), 0), 0xffff, "segment 1's root bus is 0x80");
    assert_eq!(t.read16(bdf(0, 0, 0), 0), 1);
    t.program_bus_numbers();
    assert_eq!(t.bdf(t.find("seg1-ep").unwrap()), Some(s1(0x81, 0)));
    assert_eq!(t.read8(s1(0x80, 1), reg::SUBORDINATE_BUS), 0x81);
    // Outside the ECAM bus range nothing answers, even if routed.
    program(&t, s1(0x80, 1), 0x80, 0x90, 0x90);
    assert_eq!(t.read16(s1(0x90, 0), 0), 0xffff);
}

#[test]
fn qemu_virt_has_edu_at_00_01_0() {
    let t = Topology::qemu_virt();
    assert_eq!(t.read32(bdf(0, 0, 0), 0), 0x0008_1b36);
    assert_eq!(t.read32(bdf(0, 1, 0), 0), 0x11e8_1234);
    assert_eq!(t.read32(bdf(0, 1, 0), 8), 0x00ff_0010);
    t.write32(bdf(0, 1, 0), reg::BAR0, u32::MAX);
    assert_eq!(t.read32(bdf(0, 1, 0), reg::BAR0), 0xfff0_0000, "edu BAR0: 1 MiB, 32-bit");
    let msi = walk_legacy(&t, bdf(0, 1, 0));
    assert_eq!(msi.iter().map(|c| c.0).collect::<Vec<_>>(), [cap_id::MSI]);
    assert_eq!(t.read16(bdf(0, 1, 0), msi[0].1 + 2), 0x0080, "1 vector, 64-bit");
}

#[test]
fn a_driver_writing_garbage_everywhere_cannot_panic_the_model() {
    let t = Topology::qemu_q35_rich();
    t.program_bus_numbers();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..200_000 {
        let r = next();
        // CAST: random fields.
        let b =
            Bdf { segment: (r >> 60) as u16 & 1, bus: (r >> 8) as u8 % 12, devfn: (r >> 16) as u8 };
        let off = (r >> 24) as u16 & 0xfff;
        let v = (r >> 32) as u32;
        match r & 7 {
            0 => t.write32(b, off & !3, v),
            1 => t.write16(b, off & !1, v as u16),
            2 => t.write8(b, off, v as u8),
            3 => {
                let _ = t.read16(b, off);
            }
            _ => {
                let _ = t.read32(b, off & !3);
            }
        }
    }
    let _ = t.snapshot();
}
