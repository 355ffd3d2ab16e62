//! SR-IOV against the `sim` model: QEMU's igb and nvme PFs from the rich preset, VFs on a later
//! bus, and hostile PFs.

use std::vec::Vec;

use super::*;
use crate::hal::testing::TestClock;
use crate::pci::bars::{BridgeWindows, Window};
use crate::pci::enumerate::{
    AssignBuses, Enumeration, Options, RootBus, Warning, Windows, enumerate,
};
use crate::sim::pci::{
    Bar as SimBar, Bridge, Function as SimFunction, SrIov as SimSrIov, Topology as Sim,
};

/// A platform whose clock advances 1 ms at every read; it has no memory to give.
type Clock = TestClock<'static>;

fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
    Bdf::new(0, bus, dev, func).unwrap()
}

fn root() -> RootBus {
    RootBus::new(0, 0, 255).with_windows(Windows {
        memory32: Some(Window::new(0x1000_0000, 0x2eff_0000)),
        memory64: Some(Window::new(0x80_0000_0000, 0x80_0000_0000)),
        io: Some(Window::new(0, 0x1_0000)),
    })
}

fn enumerated(sim: &Sim) -> Enumeration<64> {
    enumerate(sim, &[root()], &Options::default()).unwrap()
}

fn pf_index(e: &Enumeration<64>, pf: Bdf) -> FunctionIndex {
    e.topology.find(pf).unwrap()
}

fn vf_bdfs(e: &Enumeration<64>, pf: FunctionIndex) -> Vec<Bdf> {
    let s = e.sriov_of(pf).unwrap();
    s.vfs(&e.topology).map(|i| e.topology.get(i).unwrap().bdf()).collect()
}

/// Enables `n` VFs of the PF at `pf`.
fn enable(e: &mut Enumeration<64>, sim: &Sim, clock: &Clock, pf: Bdf, n: u16) -> Result<()> {
    let i = pf_index(e, pf);
    let (s, topology) = e.sriov_mut(i).unwrap();
    s.enable(sim, clock, topology, n)
}

fn disable(e: &mut Enumeration<64>, sim: &Sim, clock: &Clock, pf: Bdf) -> Result<()> {
    let i = pf_index(e, pf);
    let (s, topology) = e.sriov_mut(i).unwrap();
    s.disable(sim, clock, topology)
}

#[test]
fn igb_four_vfs_at_stride_two_with_their_bars() {
    let sim = Sim::qemu_q35_rich();
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    let pf = bdf(1, 0, 0);
    sim.reset_counts();
    enable(&mut e, &sim, &clock, pf, 4).unwrap();
    let cost = sim.counts();
    let igb = pf_index(&e, pf);
    assert_eq!(
        vf_bdfs(&e, igb),
        [bdf(1, 0x10, 0), bdf(1, 0x10, 2), bdf(1, 0x10, 4), bdf(1, 0x10, 6)]
    );
    // The model agrees on where the VFs answer.
    let model = sim.find("igb").unwrap();
    let truth: Vec<Bdf> = sim.vfs(model).iter().map(|&v| sim.bdf(v).unwrap()).collect();
    assert_eq!(truth, vf_bdfs(&e, igb));
    // The 100 ms passed before anything was asked of a VF; the whole enable is cheap.
    assert!(clock.elapsed() >= VF_ENABLE_SETTLE);
    assert!(cost.reads < 60 && cost.writes < 8, "{cost:?}");
    // ARI Capable Hierarchy: rp1 forwards ARI (igb has the capability).
    let s = *e.sriov_of(igb).unwrap();
    assert_ne!(
        sim.peek16(model, s.offset() + reg::CONTROL) & reg::CONTROL_ARI_CAPABLE_HIERARCHY,
        0
    );
    assert_eq!(sim.peek16(model, s.offset() + reg::NUM_VFS), 4);
    assert!(s.is_enabled() && s.enabled_vfs() == 4);

    let pf_fn = *e.topology.get(igb).unwrap();
    let rp1 = BridgeWindows::read(&sim, bdf(0, 1, 0));
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (i, vf) in s.vfs(&e.topology).enumerate() {
        let f = e.topology.get(vf).unwrap();
        assert_eq!(f.physical_function, Some(igb));
        assert_eq!(f.parent, pf_fn.parent);
        assert_eq!((f.id.vendor, f.id.device, f.id.class), (0x8086, 0x10ca, 0x02_0000));
        assert_eq!(f.kind, FunctionKind::PcieEndpoint);
        assert_ne!(f.caps.msix, 0);
        assert_ne!(f.caps.ari, 0);
        for index in [0usize, 3] {
            let bar = f.bars[index].unwrap();
            let aperture = s.vf_bars()[index].unwrap();
            assert_eq!(bar.size, 16 << 10);
            assert_eq!(bar.base, aperture.base + i as u64 * bar.size);
            assert!(
                rp1.prefetchable.unwrap().contains(bar.base, bar.size),
                "{bar:?} outside {rp1:?}"
            );
            ranges.push((bar.base, bar.size));
        }
    }
    // Eight VF BARs, all distinct and disjoint, and apart from the PF's own BARs.
    ranges.extend(
        pf_fn.bars.iter().flatten().filter(|b| b.kind != BarKind::Io).map(|b| (b.base, b.size)),
    );
    for (i, &(a, n)) in ranges.iter().enumerate() {
        for &(b, m) in &ranges[i + 1..] {
            assert!(a + n <= b || b + m <= a, "{a:#x}+{n:#x} overlaps {b:#x}+{m:#x}");
        }
    }
    // The aperture registers hold what the snapshot says.
    let aperture = s.vf_bars()[0].unwrap().base;
    let lo = sim.peek32(model, s.offset() + reg::VF_BAR0) & !0xf;
    let hi = sim.peek32(model, s.offset() + reg::VF_BAR0 + 4);
    assert_eq!(u64::from(hi) << 32 | u64::from(lo), aperture);
}

#[test]
fn nvme_two_vfs_right_after_the_pf() {
    let sim = Sim::qemu_q35_rich();
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    let pf = bdf(2, 0, 0);
    enable(&mut e, &sim, &clock, pf, 2).unwrap();
    let nvme = pf_index(&e, pf);
    assert_eq!(vf_bdfs(&e, nvme), [bdf(2, 0, 1), bdf(2, 0, 2)]);
    let s = *e.sriov_of(nvme).unwrap();
    let rp2 = BridgeWindows::read(&sim, bdf(0, 3, 0));
    for (i, vf) in s.vfs(&e.topology).enumerate() {
        let f = e.topology.get(vf).unwrap();
        assert_eq!(f.id.device, 0x0010);
        let bar = f.bars[0].unwrap();
        assert_eq!(bar.kind, BarKind::Memory64 { prefetchable: false });
        assert_eq!(bar.base, s.vf_bars()[0].unwrap().base + i as u64 * (16 << 10));
        assert!(rp2.memory.unwrap().contains(bar.base, bar.size));
    }
    let model = sim.find("nvme").unwrap();
    assert_eq!(sim.peek16(model, s.offset() + reg::NUM_VFS), 2);
}

/// A root port whose PF puts its VFs on the next bus (First VF Offset 0x100), then a second
/// root port.
fn next_bus_sim() -> Sim {
    let pf = SimFunction::endpoint(0x8086, 0x1234, 0x02_0000)
        .name("pf")
        .bar(0, SimBar::mem32(64 << 10))
        .sriov(
            SimSrIov::new(4)
                .offset_stride(0x100, 1)
                .vf_device(0x1235)
                .vf_bar(0, SimBar::mem64(16 << 10, true)),
        );
    Sim::builder()
        .bridge(1, 0, Bridge::root_port().name("rpa"), |b| b.device(0, 0, pf))
        .bridge(2, 0, Bridge::root_port().name("rpb"), |b| b.device(0, 0, SimFunction::edu()))
        .build()
}

#[test]
fn vfs_on_the_bus_enumeration_reserved() {
    let sim = next_bus_sim();
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    assert_eq!(
        e.topology
            .get(e.topology.find(bdf(0, 1, 0)).unwrap())
            .unwrap()
            .bus_range
            .unwrap()
            .subordinate,
        2
    );
    enable(&mut e, &sim, &clock, bdf(1, 0, 0), 4).unwrap();
    let pf = pf_index(&e, bdf(1, 0, 0));
    assert_eq!(vf_bdfs(&e, pf), [bdf(2, 0, 0), bdf(2, 0, 1), bdf(2, 0, 2), bdf(2, 0, 3)]);
    let truth: Vec<Bdf> =
        sim.vfs(sim.find("pf").unwrap()).iter().map(|&v| sim.bdf(v).unwrap()).collect();
    assert_eq!(truth, vf_bdfs(&e, pf));
    // rpb's edu still answers at its own bus: nothing collided.
    assert!(!sim.overlap_seen());
    assert_ne!(sim.read32(bdf(3, 0, 0), 0), u32::MAX);
}

#[test]
fn vfs_past_the_bridge_subordinate_are_refused() {
    let sim = next_bus_sim();
    // "Firmware" numbered without room for the VFs: consistent, so kept.
    let rpa = sim.find("rpa").unwrap();
    let rpb = sim.find("rpb").unwrap();
    sim.poke(rpa, crate::pci::config::reg::PRIMARY_BUS, &[0, 1, 1]);
    sim.poke(rpb, crate::pci::config::reg::PRIMARY_BUS, &[0, 2, 2]);
    let mut e = enumerated(&sim);
    assert!(e.warnings.contains(&Warning::VfBusesUnavailable {
        pf: bdf(1, 0, 0),
        bus: 2,
        limit: 1
    }));
    let clock = TestClock::new(1_000_000);
    let err = enable(&mut e, &sim, &clock, bdf(1, 0, 0), 1);
    assert_eq!(err, Err(Error::SriovVfBus { pf: bdf(1, 0, 0), bus: 2, limit: 1 }));
    // Refused before VF Enable; NumVFs back to 0.
    let model = sim.find("pf").unwrap();
    let cap = e.sriov[0].offset();
    assert_eq!(sim.peek16(model, cap + reg::CONTROL) & reg::CONTROL_VF_ENABLE, 0);
    assert_eq!(sim.peek16(model, cap + reg::NUM_VFS), 0);
    // Renumbering makes room.
    let options = Options { assign_buses: AssignBuses::Always, ..Options::default() };
    let mut e: Enumeration<64> = enumerate(&sim, &[root()], &options).unwrap();
    enable(&mut e, &sim, &clock, bdf(1, 0, 0), 4).unwrap();
}

#[test]
fn vfs_past_bus_255_are_refused() {
    let pf = SimFunction::endpoint(0x8086, 0x1234, 0x02_0000)
        .sriov(SimSrIov::new(2).offset_stride(0xff00, 1).vf_bar(0, SimBar::mem32(4096)));
    let sim = Sim::builder().bridge(1, 0, Bridge::root_port(), |b| b.device(0, 0, pf)).build();
    let mut e = enumerated(&sim);
    // 01:00.0 + 0xff00 is RID 0x10000: bus 0x100.
    assert!(e.warnings.contains(&Warning::VfBusesUnavailable {
        pf: bdf(1, 0, 0),
        bus: 0x100,
        limit: 255
    }));
    let clock = TestClock::new(1_000_000);
    assert_eq!(
        enable(&mut e, &sim, &clock, bdf(1, 0, 0), 1),
        Err(Error::SriovVfBus { pf: bdf(1, 0, 0), bus: 0x100, limit: 0xff })
    );
}

fn single_pf_sim(sriov: SimSrIov) -> Sim {
    let pf = SimFunction::endpoint(0x8086, 0x1234, 0x02_0000)
        .name("pf")
        .sriov(sriov.vf_bar(0, SimBar::mem32(4096)));
    Sim::builder().bridge(1, 0, Bridge::root_port(), |b| b.device(0, 0, pf)).build()
}

#[test]
fn num_vfs_out_of_range_is_refused() {
    let sim = single_pf_sim(SimSrIov::new(0));
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    let pf = bdf(1, 0, 0);
    assert_eq!(
        enable(&mut e, &sim, &clock, pf, 1),
        Err(Error::SriovNumVfs { pf, requested: 1, total: 0 })
    );

    let sim = Sim::qemu_q35_rich();
    let mut e = enumerated(&sim);
    let igb = bdf(1, 0, 0);
    assert_eq!(
        enable(&mut e, &sim, &clock, igb, 0),
        Err(Error::SriovNumVfs { pf: igb, requested: 0, total: 8 })
    );
    assert_eq!(
        enable(&mut e, &sim, &clock, igb, 9),
        Err(Error::SriovNumVfs { pf: igb, requested: 9, total: 8 })
    );
    assert_eq!(clock.elapsed(), Duration::ZERO, "refused before touching anything");
}

#[test]
fn vf_stride_zero_with_several_vfs_is_refused() {
    let sim = single_pf_sim(SimSrIov::new(4).offset_stride(1, 0));
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    let pf = bdf(1, 0, 0);
    assert_eq!(
        enable(&mut e, &sim, &clock, pf, 2),
        Err(Error::SriovVfRouting { pf, offset: 1, stride: 0, num_vfs: 2 })
    );
    let model = sim.find("pf").unwrap();
    assert_eq!(sim.peek16(model, e.sriov[0].offset() + reg::NUM_VFS), 0);
    assert!(sim.vfs(model).is_empty());
    // One VF needs no stride.
    enable(&mut e, &sim, &clock, pf, 1).unwrap();
    assert_eq!(vf_bdfs(&e, pf_index(&e, pf)), [bdf(1, 0, 1)]);
}

#[test]
fn vf_enable_set_behind_our_back_is_refused() {
    let sim = Sim::qemu_q35_rich();
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    let igb = bdf(1, 0, 0);
    let cap = e.sriov[0].offset();
    // Someone else enabled VFs; the device now ignores NumVFs writes (§9.3.3.7).
    sim.write16(igb, cap + reg::NUM_VFS, 2);
    sim.write16(igb, cap + reg::CONTROL, reg::CONTROL_VF_ENABLE);
    sim.write16(igb, cap + reg::NUM_VFS, 5);
    assert_eq!(sim.read16(igb, cap + reg::NUM_VFS), 2, "the model ignores NumVFs while enabled");
    assert_eq!(
        enable(&mut e, &sim, &clock, igb, 4),
        Err(Error::NotWhileEnabled { bdf: igb, what: "SR-IOV Control.VF Enable" })
    );
    assert_eq!(sim.read16(igb, cap + reg::NUM_VFS), 2, "nothing written");
    // Disabling takes it back.
    disable(&mut e, &sim, &clock, igb).unwrap();
    assert!(clock.elapsed() >= VF_DISABLE_SETTLE);
    enable(&mut e, &sim, &clock, igb, 4).unwrap();
    assert_eq!(vf_bdfs(&e, pf_index(&e, igb)).len(), 4);
}

/// Drops writes to one register of one function: a PF whose NumVFs does not take.
struct DropWrites<'a> {
    sim: &'a Sim,
    bdf: Bdf,
    offset: u16,
}

impl ConfigAccess for DropWrites<'_> {
    fn read32(&self, b: Bdf, offset: u16) -> u32 {
        self.sim.read32(b, offset)
    }
    fn write32(&self, b: Bdf, offset: u16, value: u32) {
        self.sim.write32(b, offset, value)
    }
    fn write16(&self, b: Bdf, offset: u16, value: u16) {
        if (b, offset) != (self.bdf, self.offset) {
            self.sim.write16(b, offset, value)
        }
    }
    fn write8(&self, b: Bdf, offset: u16, value: u8) {
        self.sim.write8(b, offset, value)
    }
}

#[test]
fn num_vfs_that_does_not_take_is_refused() {
    let sim = Sim::qemu_q35_rich();
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    let igb = bdf(1, 0, 0);
    let cfg = DropWrites { sim: &sim, bdf: igb, offset: e.sriov[0].offset() + reg::NUM_VFS };
    let i = pf_index(&e, igb);
    let (s, topology) = e.sriov_mut(i).unwrap();
    let err = s.enable(&cfg, &clock, topology, 3);
    assert_eq!(
        err,
        Err(Error::SettingNotTaken { bdf: igb, what: "SR-IOV NumVFs", wrote: 3, read: 0 })
    );
    assert!(!s.is_enabled());
    assert_eq!(sim.read16(igb, s.offset() + reg::CONTROL) & reg::CONTROL_VF_ENABLE, 0);
}

#[test]
fn disable_then_enable_again() {
    let sim = Sim::qemu_q35_rich();
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    let (igb, nvme) = (bdf(1, 0, 0), bdf(2, 0, 0));
    enable(&mut e, &sim, &clock, igb, 4).unwrap();
    enable(&mut e, &sim, &clock, nvme, 2).unwrap();
    assert_eq!(e.topology.len(), 20 + 6);
    let before = clock.elapsed();
    disable(&mut e, &sim, &clock, igb).unwrap();
    assert!(clock.elapsed() - before >= VF_DISABLE_SETTLE);
    // igb's VFs are gone, nvme's kept (and still point at their PF).
    assert_eq!(e.topology.len(), 20 + 2);
    assert!(vf_bdfs(&e, pf_index(&e, igb)).is_empty());
    assert_eq!(vf_bdfs(&e, pf_index(&e, nvme)), [bdf(2, 0, 1), bdf(2, 0, 2)]);
    assert!(sim.vfs(sim.find("igb").unwrap()).is_empty());
    let s = e.sriov_of(pf_index(&e, igb)).unwrap();
    assert_eq!((s.is_enabled(), s.num_vfs()), (false, 0));
    assert_eq!(sim.read32(bdf(1, 0x10, 0), cfg_reg::REVISION_CLASS), u32::MAX);
    // Again, with a different count.
    enable(&mut e, &sim, &clock, igb, 2).unwrap();
    assert_eq!(vf_bdfs(&e, pf_index(&e, igb)), [bdf(1, 0x10, 0), bdf(1, 0x10, 2)]);
    assert_eq!(sim.vfs(sim.find("igb").unwrap()).len(), 2);
    // Enabling twice is refused.
    assert_eq!(
        enable(&mut e, &sim, &clock, igb, 2),
        Err(Error::NotWhileEnabled { bdf: igb, what: "SR-IOV Control.VF Enable" })
    );
}

#[test]
fn a_locked_pf_refuses_changes() {
    let sim = Sim::qemu_q35_rich();
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    let igb = bdf(1, 0, 0);
    let i = pf_index(&e, igb);
    // Nothing to assign before VFs exist.
    assert_eq!(
        e.sriov_mut(i).unwrap().0.lock(),
        Err(Error::SriovLockCount { pf: igb, assigned: 0, enabled: 0 })
    );
    enable(&mut e, &sim, &clock, igb, 2).unwrap();
    let s = e.sriov_mut(i).unwrap().0;
    s.lock().unwrap();
    s.lock().unwrap();
    assert_eq!(s.lock(), Err(Error::SriovLockCount { pf: igb, assigned: 2, enabled: 2 }));
    assert!(s.is_locked());
    assert_eq!(
        disable(&mut e, &sim, &clock, igb),
        Err(Error::SriovLocked { pf: igb, assigned: 2 })
    );
    assert_eq!(vf_bdfs(&e, i).len(), 2, "VFs untouched");
    assert_eq!(sim.vfs(sim.find("igb").unwrap()).len(), 2);
    let s = e.sriov_mut(i).unwrap().0;
    s.unlock().unwrap();
    assert_eq!(
        disable(&mut e, &sim, &clock, igb),
        Err(Error::SriovLocked { pf: igb, assigned: 1 })
    );
    let s = e.sriov_mut(i).unwrap().0;
    s.unlock().unwrap();
    assert_eq!(s.unlock(), Err(Error::SriovLockCount { pf: igb, assigned: 0, enabled: 2 }));
    disable(&mut e, &sim, &clock, igb).unwrap();
    // Locked with VFs enabled: enable is refused for the lock first.
    enable(&mut e, &sim, &clock, igb, 1).unwrap();
    e.sriov_mut(i).unwrap().0.lock().unwrap();
    assert_eq!(
        enable(&mut e, &sim, &clock, igb, 1),
        Err(Error::SriovLocked { pf: igb, assigned: 1 })
    );
}

#[test]
fn vfs_that_settle_slowly_are_waited_for() {
    let sim = single_pf_sim(SimSrIov::new(2).settle_reads(25));
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    enable(&mut e, &sim, &clock, bdf(1, 0, 0), 2).unwrap();
    assert_eq!(vf_bdfs(&e, pf_index(&e, bdf(1, 0, 0))), [bdf(1, 0, 1), bdf(1, 0, 2)]);
}

#[test]
fn vfs_that_never_answer_time_out_and_are_turned_off() {
    let sim = single_pf_sim(SimSrIov::new(2).settle_reads(u32::MAX));
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    let pf = bdf(1, 0, 0);
    let err = enable(&mut e, &sim, &clock, pf, 2);
    assert_eq!(
        err,
        Err(Error::Timeout { what: "SR-IOV first VF after VF Enable", waited_us: 1_000_000 })
    );
    let model = sim.find("pf").unwrap();
    let cap = e.sriov[0].offset();
    assert_eq!(
        sim.peek16(model, cap + reg::CONTROL) & (reg::CONTROL_VF_ENABLE | reg::CONTROL_VF_MSE),
        0
    );
    assert_eq!(sim.peek16(model, cap + reg::NUM_VFS), 0);
    assert_eq!(e.topology.len(), 2);
    assert!(!e.sriov[0].is_enabled());
}

#[test]
fn unplaced_vf_bars_are_refused() {
    let sim = Sim::qemu_q35_rich();
    let options =
        Options { assign_bars: crate::pci::enumerate::AssignBars::Never, ..Options::default() };
    let mut e: Enumeration<64> = enumerate(&sim, &[root()], &options).unwrap();
    let clock = TestClock::new(1_000_000);
    let igb = bdf(1, 0, 0);
    assert_eq!(
        enable(&mut e, &sim, &clock, igb, 1),
        Err(Error::SriovVfBarUnplaced { pf: igb, index: 0 })
    );
}

#[test]
fn probe_reads_what_enumeration_read() {
    let sim = Sim::qemu_q35_rich();
    let e = enumerated(&sim);
    for s in &e.sriov {
        let p = SrIov::probe(&sim, &e.topology, s.pf_index()).unwrap();
        assert_eq!(&p, s);
    }
    assert_eq!(
        SrIov::probe(&sim, &e.topology, FunctionIndex(0)),
        Err(Error::NotFound { what: "SR-IOV capability" })
    );
    assert!(matches!(
        SrIov::probe(&sim, &e.topology, FunctionIndex(500)),
        Err(Error::BadReference { .. })
    ));
    let igb = &e.sriov[0];
    assert_eq!(
        (igb.total_vfs(), igb.initial_vfs(), igb.first_vf_offset(), igb.vf_stride()),
        (8, 8, 0x80, 2)
    );
    assert_eq!(
        (igb.vf_device_id(), igb.supported_page_sizes(), igb.system_page_size()),
        (0x10ca, 0x553, 1)
    );
    assert_eq!(igb.vf_bdf(7), Some(bdf(1, 0x11, 6)));
}

#[test]
fn last_vf_bus_arithmetic() {
    assert_eq!(last_vf_bus(0x0100, 0x80, 2, 8), 1);
    assert_eq!(last_vf_bus(0x0100, 0x80, 2, 64), 1); // 0x180 + 63 * 2 = 0x1fe
    assert_eq!(last_vf_bus(0x0100, 0x80, 2, 65), 2);
    // The largest inputs stay exact in 64-bit arithmetic: (0xff00 + 0xffff + 0xfffe * 0xffff) >> 8.
    assert_eq!(last_vf_bus(0xff00, 0xffff, 0xffff, 0xffff), 0xfffe_ff01 >> 8);
    assert_eq!(last_vf_bus(0x0100, 1, 1, 0), 1);
}

#[test]
fn snapshot_removal_refuses_to_orphan_and_renumbers() {
    let sim = Sim::qemu_q35_rich();
    let mut e = enumerated(&sim);
    let clock = TestClock::new(1_000_000);
    // Removing a bridge would orphan what sits below it: refused, nothing removed.
    let rp1 = e.topology.find(bdf(0, 1, 0)).unwrap();
    let before = e.topology.len();
    assert!(matches!(
        e.topology.remove_if(|f| f.bdf() == bdf(0, 1, 0)),
        Err(Error::BadReference { .. })
    ));
    assert_eq!(e.topology.len(), before);
    assert_eq!(e.topology.get(rp1).unwrap().bdf(), bdf(0, 1, 0));
    // VFs of two PFs interleaved: removing the first PF's renumbers the second's references.
    enable(&mut e, &sim, &clock, bdf(1, 0, 0), 2).unwrap();
    enable(&mut e, &sim, &clock, bdf(2, 0, 0), 2).unwrap();
    let nvme = pf_index(&e, bdf(2, 0, 0));
    let igb = pf_index(&e, bdf(1, 0, 0));
    assert_eq!(e.topology.remove_if(|f| f.physical_function == Some(igb)), Ok(2));
    for i in e.sriov_of(nvme).unwrap().vfs(&e.topology) {
        let f = e.topology.get(i).unwrap();
        assert_eq!(f.physical_function, Some(nvme));
        assert_eq!(e.topology.get(f.parent.unwrap()).unwrap().bdf(), bdf(0, 3, 0));
    }
}
