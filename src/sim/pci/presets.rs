//! Topologies shaped like QEMU's, and the bus numbering firmware would do.

use super::caps::{ACS_ALL, Bar, Capability, PcieCap, PortType, SrIov};
use super::layout::sriov_reg;
use super::{Bridge, Function, Node, Topology};
use crate::pci::config::reg;

impl Topology {
    /// A q35 machine with most of what QEMU 10.0.2 can show a driver, every bridge's bus
    /// numbers **unprogrammed** (as on aarch64 virt, where no firmware runs). Slots, and the
    /// buses [`program_bus_numbers`](Self::program_bus_numbers) gives them (names in quotes):
    ///
    /// ```text
    /// 00:00.0 "host"   8086:29c0 host bridge
    /// 00:01.0 "rp1"    root port, ACS 0x5f
    ///         -> 01:00.0 "igb" 8086:10c9 PF, SR-IOV TotalVFs 8, offset 0x80 stride 2,
    ///            VF device 10ca (VFs 01:10.0, 01:10.2, ... 01:11.6)
    /// 00:02.0 "edu"    1234:11e8 on the root bus
    /// 00:03.0 "rp2"    root port, ACS 0x5f
    ///         -> 02:00.0 "nvme" 1b36:0010 PF, SR-IOV TotalVFs 2, offset 1 stride 1
    ///            (VFs 02:00.1, 02:00.2)
    /// 00:04.0 "pci-bridge" 1b36:0001 (conventional)
    ///         -> 03:04.0 "edu-pci-bridge"
    /// 00:05.0 "rp4"    root port, ACS 0x5f
    ///         -> 04:00.0 "pcie-pci-bridge" 1b36:000e
    ///            -> 05:03.0 "edu-pcie-pci-0", 05:04.0 "edu-pcie-pci-1"
    /// 00:06.0 "rp5"    root port, ACS 0x5f
    ///         -> 06:00.0 "switch-up" 104c:8232
    ///            -> 07:00.0 "switch-down0" 104c:8233 -> 08:00.0 "e1000e" 8086:10d3
    ///            -> 07:01.0 "switch-down1" (hot-plug slot, empty; bus 9)
    /// 00:1f.0 "lpc", 00:1f.2 "sata", 00:1f.3 "smbus" (ICH9: one multi-function device, no ACS)
    /// ```
    ///
    /// The ARI forwarding rule is enforced (see
    /// [`ari_forwarding_rule`](super::TopologyBuilder::ari_forwarding_rule)): igb's VFs at
    /// device 16 answer only once ARI Forwarding Enable is set in "rp1".
    pub fn qemu_q35_rich() -> Topology {
        let edu = |name: &str| Function::edu().name(name);
        let root_port =
            |name: &str, slot: u16| Bridge::root_port().acs(ACS_ALL).name(name).slot_number(slot);
        Topology::builder()
            .device(0, 0, Function::host_bridge(0x8086, 0x29c0).name("host"))
            .bridge(1, 0, root_port("rp1", 1), |b| b.device(0, 0, igb()))
            .device(2, 0, edu("edu"))
            .bridge(3, 0, root_port("rp2", 2), |b| b.device(0, 0, nvme()))
            .bridge(4, 0, Bridge::pci().name("pci-bridge"), |b| {
                b.device(4, 0, edu("edu-pci-bridge"))
            })
            .bridge(5, 0, root_port("rp4", 4), |b| {
                b.bridge(0, 0, Bridge::pcie_to_pci().name("pcie-pci-bridge"), |b| {
                    b.device(3, 0, edu("edu-pcie-pci-0")).device(4, 0, edu("edu-pcie-pci-1"))
                })
            })
            .bridge(6, 0, root_port("rp5", 5), |b| {
                b.bridge(0, 0, Bridge::switch_upstream().name("switch-up"), |b| {
                    b.bridge(0, 0, Bridge::switch_downstream().name("switch-down0"), |b| {
                        b.device(
                            0,
                            0,
                            Function::endpoint(0x8086, 0x10d3, 0x02_0000)
                                .name("e1000e")
                                .bar(0, Bar::mem32(128 << 10))
                                .bar(2, Bar::io(32))
                                .bar(3, Bar::mem32(16 << 10))
                                .pm()
                                .msi(1, true)
                                .msix(5, 3)
                                .aer(),
                        )
                    })
                    .bridge(
                        1,
                        0,
                        Bridge::switch_downstream().name("switch-down1").hotplug(true),
                        |b| b,
                    )
                })
            })
            .device(0x1f, 0, Function::pci(0x8086, 0x2918, 0x06_0100).name("lpc").interrupt_pin(0))
            .device(
                0x1f,
                2,
                Function::pci(0x8086, 0x2922, 0x01_0601)
                    .name("sata")
                    .bar(5, Bar::mem32(4096))
                    .msi(1, true),
            )
            .device(
                0x1f,
                3,
                Function::pci(0x8086, 0x2930, 0x0c_0500).name("smbus").bar(4, Bar::io(64)),
            )
            .build()
    }

    /// A root port with one PRI-capable PF below it, the shape page requests from VFs need
    /// (QEMU 10.0.2 has no such device), bus numbers programmed:
    ///
    /// ```text
    /// 00:00.0 "host"   8086:29c0 host bridge
    /// 00:01.0 "rp"     root port, ACS 0x5f
    ///         -> 01:00.0 "pri-pf" (see [`Function::pri_pf`]), VFs at 01:00.1 ...
    /// ```
    pub fn pri_sriov(total_vfs: u16, capacity: u32) -> Topology {
        let t = Topology::builder()
            .device(0, 0, Function::host_bridge(0x8086, 0x29c0).name("host"))
            .bridge(1, 0, Bridge::root_port().acs(ACS_ALL).name("rp").slot_number(1), |b| {
                b.device(0, 0, Function::pri_pf(total_vfs, capacity))
            })
            .build();
        t.program_bus_numbers();
        t
    }

    /// aarch64 `-M virt` with `-device edu,addr=1`: the generic PCIe host bridge (1b36:0008) at
    /// 00:00.0 and "edu" at 00:01.0, ECAM decoding buses 0-255.
    pub fn qemu_virt() -> Topology {
        Topology::builder()
            .device(0, 0, Function::host_bridge(0x1b36, 0x0008).name("host"))
            .device(1, 0, Function::edu())
            .build()
    }

    /// Numbers every bridge's buses depth-first as firmware would (primary, secondary,
    /// subordinate), reserving the buses that VFs would use with NumVFs = TotalVFs (as Linux's
    /// `pci_iov_bus_range`), so tests of code other than enumeration start from a programmed
    /// tree. Writes the registers directly: the accesses are not counted. Bridges beyond the
    /// segment's last bus are left unprogrammed.
    pub fn program_bus_numbers(&self) {
        let mut nodes = self.nodes.borrow_mut();
        for seg in &self.segments {
            let mut next = u32::from(seg.root_bus) + 1;
            number_bus(&mut nodes, &seg.roots, seg.root_bus, &mut next, seg.bus_range.1);
        }
    }
}

/// Numbers the bridges below `list` (on bus `bus`); returns the highest bus used below it.
fn number_bus(nodes: &mut [Node], list: &[usize], bus: u8, next: &mut u32, last: u8) -> u8 {
    let mut high = bus;
    for &i in list {
        let n = &nodes[i];
        let (Some((c, sr)), true) = (&n.layout.sriov, n.present) else { continue };
        if sr.total_vfs == 0 {
            continue;
        }
        let ari =
            n.state.space.get(c + sriov_reg::CONTROL, 2) & u32::from(sriov_reg::ARI_CAPABLE) != 0;
        let (offset, stride) = sr.offset_stride_for(sr.total_vfs, ari);
        let last_rid = (u32::from(bus) << 8 | u32::from(n.devfn))
            + u32::from(offset)
            + u32::from(sr.total_vfs - 1) * u32::from(stride);
        // CAST: clamped to a bus number.
        high = high.max((last_rid >> 8).min(u32::from(last)) as u8);
    }
    *next = (*next).max(u32::from(high) + 1);
    for &i in list {
        if !(nodes[i].present && nodes[i].layout.is_bridge) || *next > u32::from(last) {
            continue;
        }
        // CAST: checked against `last` above.
        let sec = *next as u8;
        *next += 1;
        let s = &mut nodes[i].state.space;
        s.set(reg::PRIMARY_BUS, 1, u32::from(bus));
        s.set(reg::SECONDARY_BUS, 1, u32::from(sec));
        s.set(reg::SUBORDINATE_BUS, 1, u32::from(last));
        let children = nodes[i].children.clone();
        let sub = number_bus(nodes, &children, sec, next, last);
        nodes[i].state.space.set(reg::SUBORDINATE_BUS, 1, u32::from(sub));
        high = high.max(sub);
    }
    high
}

/// QEMU's igb PF (`hw/net/igb.c`; notes §3.3).
fn igb() -> Function {
    let vf = SrIov::new(8)
        .offset_stride(0x80, 2)
        .vf_device(0x10ca)
        .page_sizes(0x553)
        .vf_bar(0, Bar::mem64(16 << 10, true))
        .vf_bar(3, Bar::mem64(16 << 10, true))
        .no_vf_pcie()
        .vf_cap_at(0x70, Capability::msix(3, 3))
        .vf_cap_at(0xa0, Capability::Pcie(PcieCap::new(PortType::Endpoint).flr(true)))
        .vf_cap_at(0x100, Capability::Aer)
        .vf_cap_at(0x150, Capability::ari(0));
    Function::pci(0x8086, 0x10c9, 0x02_0000)
        .name("igb")
        .revision(0x01)
        .subsystem(0x8086, 0x0000)
        .bar(0, Bar::mem32(128 << 10))
        .bar(1, Bar::mem32(128 << 10))
        .bar(2, Bar::io(32))
        .bar(3, Bar::mem32(16 << 10))
        .cap_at(0x40, Capability::Pm)
        .cap_at(0x50, Capability::msi(1, true))
        .cap_at(0x70, Capability::msix(10, 3))
        .cap_at(0xa0, Capability::Pcie(PcieCap::new(PortType::Endpoint).flr(true)))
        .cap_at(0x100, Capability::Aer)
        .cap_at(0x150, Capability::ari(0))
        .sriov_at(0x160, vf)
}

/// QEMU's nvme PF with `sriov_max_vfs=2` (`hw/nvme/ctrl.c`; notes §3.3).
fn nvme() -> Function {
    let vf = SrIov::new(2)
        .offset_stride(1, 1)
        .vf_device(0x0010)
        .vf_bar(0, Bar::mem64(16 << 10, false))
        .vf_cap(Capability::msix(1, 0))
        .vf_cap_at(0x100, Capability::ari(0));
    Function::endpoint(0x1b36, 0x0010, 0x01_0802)
        .name("nvme")
        .revision(0x02)
        .bar(0, Bar::mem64(16 << 10, false))
        .pm()
        .msix(65, 0)
        .cap_at(0x100, Capability::ari(0))
        .sriov_at(0x120, vf)
}

impl Function {
    /// A PF with PRI and PASID, whose VFs have neither (they use the PF's, PCIe Base 6.0
    /// §9.3.7.11 and §9.3.7.14) but each have ATS (§9.3.7.10), named "pri-pf" (8086:0b25, class
    /// 088000). `total_vfs` VFs at First VF Offset 1, VF Stride 1, VF Device ID 0x0b26;
    /// Outstanding Page Request Capacity `capacity`, PRG Response PASID Required set; PASID
    /// with Execute and Privileged Mode supported, Max PASID Width 20. Fixed layout:
    ///
    /// ```text
    /// PF: 0x100 AER, 0x148 ARI, 0x150 ATS, 0x160 PASID, 0x170 PRI, 0x180 SR-IOV
    /// VF: 0x100 ARI, 0x108 ATS
    /// ```
    pub fn pri_pf(total_vfs: u16, capacity: u32) -> Function {
        let vf = SrIov::new(total_vfs)
            .offset_stride(1, 1)
            .vf_device(0x0b26)
            .vf_bar(0, Bar::mem64(16 << 10, false))
            .vf_cap(Capability::msix(2, 0))
            .vf_cap_at(0x100, Capability::ari(0))
            .vf_cap_at(0x108, Capability::ats(0, true));
        Function::endpoint(0x8086, 0x0b25, 0x08_8000)
            .name("pri-pf")
            .bar(0, Bar::mem64(64 << 10, false))
            .msix(9, 0)
            .cap_at(0x100, Capability::Aer)
            .cap_at(0x148, Capability::ari(0))
            .cap_at(0x150, Capability::ats(0, true))
            .cap_at(0x160, Capability::pasid(true, true, 20))
            .cap_at(0x170, Capability::Pri { capacity, prg_response_pasid_required: true })
            .sriov_at(0x180, vf)
    }
}
