//! Enumeration cost: configuration reads and writes per present function and per absent slot
//! (counted by the `sim` PCIe model, which sees every access), for QEMU's rich q35 shape and
//! for a large simulated topology, then criterion timing of the same runs.
//!
//! The large topology (built with the sim PCI builder): a host bridge and 10 root ports on
//! bus 0; below each, a switch (upstream port, 4 downstream ports) with one 8-function
//! endpoint per downstream port; the first endpoint function below each of 8 root ports is an
//! SR-IOV PF with TotalVFs 16 (First VF Offset 8, stride 1: VFs on the PF's bus). 381
//! functions on 61 buses before VFs, 509 with every VF enabled.
//!
//! Timing includes the model's own cost per access (routing through its tree), which on the
//! host is most of it: the counts are the figures that carry over to hardware, where each
//! access is an ECAM load or store (and a trap under a nested hypervisor).
//!
//! Run: `cargo bench -p pcie-iommu --features sim --bench enumeration`.

mod common;

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group};
use pcie_iommu::pci::bars::Window;
use pcie_iommu::pci::enumerate::{Enumeration, Options, RootBus, Stats, Windows};
use pcie_iommu::sim::pci::{Bar, Bridge, Function, SrIov, Topology};
use pcie_iommu::sim::vtd::{Memory, SimPlatform};

/// Enough for the large topology with every VF.
const N: usize = 640;

fn root() -> RootBus {
    RootBus::new(0, 0, 255).with_windows(Windows {
        memory32: Some(Window::new(0x1000_0000, 0x2eff_0000)),
        memory64: Some(Window::new(0x80_0000_0000, 0x80_0000_0000)),
        io: Some(Window::new(0, 0x1_0000)),
    })
}

fn endpoint(func: u8) -> Function {
    Function::endpoint(0x8086, 0x1000 + u16::from(func), 0x02_0000)
        .bar(0, Bar::mem64(64 << 10, false))
        .bar(2, Bar::mem32(16 << 10))
        .msix(8, 2)
        .multi_function(true)
}

fn pf() -> Function {
    let vfs =
        SrIov::new(16).offset_stride(8, 1).vf_device(0x154c).vf_bar(0, Bar::mem64(16 << 10, true));
    endpoint(0).sriov(vfs)
}

/// The large topology (see the module documentation).
fn large() -> Topology {
    let mut b = Topology::builder().ari_forwarding_rule(false).device(
        0,
        0,
        Function::host_bridge(0x8086, 0x29c0),
    );
    for rp in 1..=10u8 {
        let with_pf = rp <= 8;
        b = b.bridge(rp, 0, Bridge::root_port().slot_number(u16::from(rp)), |bus| {
            bus.bridge(0, 0, Bridge::switch_upstream(), |bus| {
                let mut bus = bus;
                for d in 0..4u8 {
                    bus = bus.bridge(d, 0, Bridge::switch_downstream(), |bus| {
                        let mut bus = bus;
                        for f in 0..8u8 {
                            let func = if f == 0 && d == 0 && with_pf { pf() } else { endpoint(f) };
                            bus = bus.device(0, f, func);
                        }
                        bus
                    })
                }
                bus
            })
        });
    }
    b.build()
}

fn enumerate(sim: &Topology) -> Box<Enumeration<N>> {
    let mut e = Box::new(Enumeration::<N>::new());
    e.run(sim, &[root()], &Options::default()).unwrap();
    e
}

/// Enables every PF's VFs; returns the accesses it took and the VFs added.
fn enable_all(sim: &Topology, e: &mut Enumeration<N>) -> (u64, u64, usize) {
    let memory = Memory::new();
    let clock = SimPlatform::new(&memory);
    let before = sim.counts();
    let pfs: Vec<_> = e.sriov.iter().map(|s| s.pf_index()).collect();
    let mut vfs = 0;
    for pf in pfs {
        let (s, topology) = e.sriov_mut(pf).unwrap();
        let total = s.total_vfs();
        s.enable(sim, &clock, topology, total).unwrap();
        vfs += usize::from(total);
    }
    let after = sim.counts();
    (after.reads - before.reads, after.writes - before.writes, vfs)
}

fn report(name: &str, s: Stats, absent_reads: u64) {
    let present_reads = s.accesses.reads - absent_reads;
    println!(
        "{name:<28} {:>5} fns {:>5} absent {:>4} buses | {:>6} reads {:>6} writes | \
         {:>5.1} reads + {:>4.1} writes per present fn | {:.2} reads per absent slot",
        s.functions,
        s.absent,
        s.buses,
        s.accesses.reads,
        s.accesses.writes,
        present_reads as f64 / f64::from(s.functions),
        s.accesses.writes as f64 / f64::from(s.functions),
        absent_reads as f64 / f64::from(s.absent.max(1)),
    );
}

fn counts() {
    println!("enumeration config accesses, from the sim model's counters ({})", common::machine());
    for (name, sim) in [("q35-rich (unprogrammed)", Topology::qemu_q35_rich()), ("large", large())]
    {
        sim.reset_counts();
        let mut e = enumerate(&sim);
        assert_eq!(e.stats.accesses, sim.counts(), "every access went through the counter");
        report(name, e.stats, sim.absent_counts().reads);
        let (reads, writes, vfs) = enable_all(&sim, &mut e);
        if vfs > 0 {
            println!(
                "{:<28} SR-IOV enable of {vfs} VFs on {} PFs: {reads} reads + {writes} writes \
                 ({:.1} reads + {:.1} writes per VF)",
                "",
                e.sriov.len(),
                reads as f64 / vfs as f64,
                writes as f64 / vfs as f64
            );
        }
    }
    let sim = Topology::qemu_q35_rich();
    sim.program_bus_numbers();
    sim.reset_counts();
    let e = enumerate(&sim);
    report("q35-rich (firmware-numbered)", e.stats, sim.absent_counts().reads);
}

fn timing(c: &mut Criterion) {
    let mut g = c.benchmark_group("enumeration");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    g.bench_function("q35-rich", |b| {
        b.iter_batched(Topology::qemu_q35_rich, |sim| enumerate(&sim), BatchSize::LargeInput)
    });
    g.bench_function("large", |b| {
        b.iter_batched(large, |sim| enumerate(&sim), BatchSize::LargeInput)
    });
    g.finish();
}

criterion_group!(benches, timing);

fn main() {
    counts();
    if !std::env::args().any(|a| a == "--counts-only") {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
