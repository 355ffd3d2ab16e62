use super::testutil::*;
use super::*;
use crate::addr::RequesterId;
use crate::pci::alias::{AliasReason, aliases, visible, visible_rid};
use crate::pci::topology::Function;

mod props;

/// Every group as (ID, member BDFs in order, causes).
fn layout<const N: usize>(g: &Groups<N>) -> Vec<(Bdf, Vec<Bdf>, Causes)> {
    g.iter()
        .map(|gr| (gr.id().0, gr.members().map(|m| g.bdf(m).unwrap()).collect(), gr.causes()))
        .collect()
}

/// The member BDFs of the group of `i`.
fn group_of<const N: usize>(g: &Groups<N>, i: FunctionIndex) -> Vec<Bdf> {
    g.members(g.group_of(i).unwrap()).map(|m| g.bdf(m).unwrap()).collect()
}

fn push<const N: usize>(t: &mut Topology<N>, f: Function) -> FunctionIndex {
    t.push(f).unwrap()
}

/// ACS of a multi-function endpoint: only RR and CR apply (PCIe 6.0 §6.12.1.2).
const MF_ACS_ON: Acs =
    Acs { capability: Acs::REQUEST_REDIRECT | Acs::COMPLETION_REDIRECT, control: 0x0c };
const MF_ACS_OFF: Acs =
    Acs { capability: Acs::REQUEST_REDIRECT | Acs::COMPLETION_REDIRECT, control: 0 };

#[test]
fn pcie_endpoint_below_an_acs_root_port_is_alone() {
    let mut t = Topology::<8>::new();
    let rp = push(&mut t, root_port(0, 1, 0, 1, Some(ACS_ON)));
    let ep = push(&mut t, endpoint(1, 0, 0, Some(rp)));
    let g = Groups::compute(&t);
    assert_eq!(g.len(), 2);
    assert_eq!(group_of(&g, ep), [bdf(1, 0, 0)]);
    assert_eq!(g.get(g.group_of(ep).unwrap()).unwrap().causes(), Causes::default());
    assert!(!g.same_group(rp, ep));
}

#[test]
fn root_port_without_acs_takes_its_subtree() {
    for acs in [
        None,
        Some(ACS_OFF),
        Some(Acs { capability: 0x5f, control: REQUIRED_ACS & !Acs::SOURCE_VALIDATION }),
    ] {
        let mut t = Topology::<8>::new();
        let rp = push(&mut t, root_port(0, 1, 0, 1, acs));
        let ep = push(&mut t, endpoint(1, 0, 0, Some(rp)));
        let g = Groups::compute(&t);
        assert_eq!(
            layout(&g),
            [(bdf(0, 1, 0), vec![bdf(0, 1, 0), bdf(1, 0, 0)], Causes::BRIDGE)],
            "{acs:?}"
        );
        assert!(g.same_group(rp, ep));
    }
}

#[test]
fn acs_controls_the_port_does_not_offer_are_not_required() {
    // Linux pci_acs_flags_enabled: required &= capability. A port without Upstream Forwarding
    // in its Capability register is isolated with SV, RR and CR on.
    let svrrcr = Acs::SOURCE_VALIDATION | Acs::REQUEST_REDIRECT | Acs::COMPLETION_REDIRECT;
    assert!(acs_isolates(Acs { capability: svrrcr, control: svrrcr }));
    assert!(!acs_isolates(Acs { capability: svrrcr | Acs::UPSTREAM_FORWARDING, control: svrrcr }));
    // Translation Blocking, Egress Control and Direct Translated P2P are not required.
    assert!(acs_isolates(Acs { capability: 0x7f, control: REQUIRED_ACS }));
}

#[test]
fn pcie_to_pci_bridge_groups_its_whole_secondary_side() {
    let mut t = Topology::<16>::new();
    let rp = push(&mut t, root_port(0, 4, 0, 1, Some(ACS_ON)));
    let br = push(&mut t, pcie_to_pci(1, 0, 0, 2, Some(rp)));
    let d0 = push(&mut t, conventional(2, 0, 0, Some(br)));
    let d3 = push(&mut t, conventional(2, 3, 0, Some(br)));
    let cb = push(&mut t, conventional_bridge(2, 5, 0, 3, Some(br)));
    let deep = push(&mut t, conventional(3, 1, 0, Some(cb)));
    let g = Groups::compute(&t);
    let id = g.group_of(d3).unwrap();
    assert_eq!(id, GroupId(bdf(1, 0, 0)), "the bridge is the smallest member");
    assert_eq!(
        group_of(&g, deep),
        [bdf(1, 0, 0), bdf(2, 0, 0), bdf(2, 3, 0), bdf(2, 5, 0), bdf(3, 1, 0)]
    );
    assert!(g.same_group(d0, deep) && !g.same_group(rp, br));
    let causes = g.get(id).unwrap().causes();
    assert!(causes.contains(Causes::SHARED_RID) && causes.contains(Causes::BRIDGE), "{causes:?}");
    // Every RID that must map to the domain, each once: the members' own IDs and 02:00.0.
    let rids: Vec<(Bdf, AliasReason)> = g.aliases(&t, id).map(|a| (a.bdf(), a.reason)).collect();
    assert_eq!(
        rids,
        [
            (bdf(1, 0, 0), AliasReason::Own),
            (bdf(2, 0, 0), AliasReason::Own),
            (bdf(2, 3, 0), AliasReason::Own),
            (bdf(2, 5, 0), AliasReason::Own),
            (bdf(3, 1, 0), AliasReason::Own),
        ]
    );
    assert_eq!(visible_rid(&t, deep), Some(bdf(2, 0, 0).routing_id()));
}

#[test]
fn secondary_00_0_alias_without_a_device_there_is_still_a_group_rid() {
    let mut t = Topology::<8>::new();
    let rp = push(&mut t, root_port(0, 4, 0, 1, Some(ACS_ON)));
    let br = push(&mut t, pcie_to_pci(1, 0, 0, 2, Some(rp)));
    let edu = push(&mut t, conventional(2, 3, 0, Some(br)));
    let g = Groups::compute(&t);
    let rids: Vec<Bdf> = g.aliases(&t, g.group_of(edu).unwrap()).map(|a| a.bdf()).collect();
    assert_eq!(rids, [bdf(1, 0, 0), bdf(2, 3, 0), bdf(2, 0, 0)]);
}

#[test]
fn conventional_bridge_on_the_root_bus_owns_its_devices() {
    // QEMU pci-bridge at 00:04.0, edu at 03:04.0 behind it: SID 00:04.0.
    let mut t = Topology::<8>::new();
    let br = push(&mut t, conventional_bridge(0, 4, 0, 3, None));
    let edu = push(&mut t, conventional(3, 4, 0, Some(br)));
    let other = push(&mut t, conventional(0, 2, 0, None));
    let g = Groups::compute(&t);
    assert_eq!(group_of(&g, edu), [bdf(0, 4, 0), bdf(3, 4, 0)]);
    assert_eq!(group_of(&g, other), [bdf(0, 2, 0)]);
    assert_eq!(visible_rid(&t, edu), Some(bdf(0, 4, 0).routing_id()));
}

/// Root port 00:06.0 -> switch upstream 06:00.0 -> downstream 07:00.0 and 07:01.0 -> endpoints
/// 08:00.0 and 09:00.0.
fn switch(
    rp_acs: Option<Acs>,
    dsp0: Option<Acs>,
    dsp1: Option<Acs>,
) -> (Topology<16>, [FunctionIndex; 6]) {
    let mut t = Topology::<16>::new();
    let rp = push(&mut t, root_port(0, 6, 0, 6, rp_acs));
    let usp = push(&mut t, bridge(FunctionKind::SwitchUpstream, 6, 0, 0, 7, Some(rp), None));
    let d0 = push(&mut t, bridge(FunctionKind::SwitchDownstream, 7, 0, 0, 8, Some(usp), dsp0));
    let e0 = push(&mut t, endpoint(8, 0, 0, Some(d0)));
    let d1 = push(&mut t, bridge(FunctionKind::SwitchDownstream, 7, 1, 0, 9, Some(usp), dsp1));
    let e1 = push(&mut t, endpoint(9, 0, 0, Some(d1)));
    (t, [rp, usp, d0, e0, d1, e1])
}

#[test]
fn switch_with_acs_on_every_downstream_port_isolates_each_endpoint() {
    // The upstream port is single-function: it needs no ACS (Linux pci_acs_enabled).
    let (t, [_, _, _, e0, _, e1]) = switch(Some(ACS_ON), Some(ACS_ON), Some(ACS_ON));
    let g = Groups::compute(&t);
    assert_eq!(g.len(), 6);
    assert_eq!(group_of(&g, e0), [bdf(8, 0, 0)]);
    assert_eq!(group_of(&g, e1), [bdf(9, 0, 0)]);
}

#[test]
fn a_downstream_port_without_acs_spoils_the_whole_switch() {
    // 08:00.0 can send to 09:00.0's BARs through the switch, and without Source Validation
    // below 07:00.0 it can claim any RID of the root port's range: one group. (Linux before the
    // 2025 switch series gave {07:00.0, 08:00.0} and left 09:00.0 alone.)
    let (t, [rp, usp, _, e0, _, e1]) = switch(Some(ACS_ON), Some(ACS_OFF), Some(ACS_ON));
    let g = Groups::compute(&t);
    let all = [bdf(6, 0, 0), bdf(7, 0, 0), bdf(7, 1, 0), bdf(8, 0, 0), bdf(9, 0, 0)];
    assert_eq!(group_of(&g, e1), all);
    assert!(g.same_group(e0, usp) && !g.same_group(rp, usp));
    let causes = g.get(g.group_of(e0).unwrap()).unwrap().causes();
    assert!(causes.contains(Causes::SWITCH) && causes.contains(Causes::BRIDGE), "{causes:?}");
    // A downstream port with no ACS capability at all: the same.
    let (t, [.., e1]) = switch(Some(ACS_ON), Some(ACS_ON), None);
    assert_eq!(group_of(&Groups::compute(&t), e1), all);
}

#[test]
fn a_root_port_without_acs_above_a_switch_takes_everything() {
    let (t, [rp, .., e1]) = switch(Some(ACS_OFF), Some(ACS_ON), Some(ACS_ON));
    let g = Groups::compute(&t);
    assert_eq!(g.len(), 1);
    assert_eq!(g.iter().next().unwrap().id(), GroupId(bdf(0, 6, 0)));
    assert!(g.same_group(rp, e1));
}

#[test]
fn an_endpoint_on_a_switch_internal_bus_spoils_it() {
    // Some switches expose a DMA engine next to their downstream ports.
    let (mut t, [_, usp, _, e0, _, e1]) = switch(Some(ACS_ON), Some(ACS_ON), Some(ACS_ON));
    let dma = push(&mut t, endpoint(7, 2, 0, Some(usp)));
    let g = Groups::compute(&t);
    assert!(g.same_group(dma, e0) && g.same_group(dma, e1));
}

#[test]
fn multi_function_endpoint_without_acs_is_one_group() {
    let mf = |acs: [Option<Acs>; 3]| {
        let mut t = Topology::<8>::new();
        let rp = push(&mut t, root_port(0, 1, 0, 1, Some(ACS_ON)));
        let f: Vec<FunctionIndex> = (0..3u8)
            .map(|func| {
                let mut f = endpoint(1, 0, func, Some(rp));
                f.acs = acs[usize::from(func)];
                f.multi_function = true;
                push(&mut t, f)
            })
            .collect();
        let g = Groups::compute(&t);
        (g.len(), g.same_group(f[0], f[1]), g.same_group(f[1], f[2]), layout(&g))
    };
    let (n, ..) = mf([None; 3]);
    assert_eq!(n, 2, "root port + one group of three");
    let (n, ..) = mf([Some(MF_ACS_OFF); 3]);
    assert_eq!(n, 2);
    let (n, a, b, _) = mf([Some(MF_ACS_ON); 3]);
    assert_eq!((n, a, b), (4, false, false));
    // One function without ACS can reach the other two, which cannot stop it: all three join
    // (Linux joins only the functions that lack ACS; see the module documentation).
    let (n, a, b, l) = mf([Some(MF_ACS_ON), None, Some(MF_ACS_ON)]);
    assert_eq!((n, a, b), (2, true, true));
    assert_eq!(l[1].2, Causes::MULTI_FUNCTION);
}

#[test]
fn root_bus_devices_are_separate_unless_one_multi_function_device() {
    // QEMU q35: ICH9 LPC, SATA and SMBus at 00:1f.{0,2,3} (no PCIe capability), edu at 00:02.0.
    let mut t = Topology::<8>::new();
    let lpc = push(&mut t, conventional(0, 0x1f, 0, None));
    let sata = push(&mut t, conventional(0, 0x1f, 2, None));
    let smbus = push(&mut t, conventional(0, 0x1f, 3, None));
    let edu = push(&mut t, conventional(0, 2, 0, None));
    let rciep = push(&mut t, function(FunctionKind::RootComplexEndpoint, 0, 3, 0, None));
    let g = Groups::compute(&t);
    assert!(g.same_group(lpc, sata) && g.same_group(sata, smbus));
    assert_eq!(group_of(&g, edu), [bdf(0, 2, 0)]);
    assert_eq!(group_of(&g, rciep), [bdf(0, 3, 0)]);
    assert_eq!(g.len(), 3);
}

#[test]
fn multi_function_root_ports_without_acs_share_their_subtrees() {
    // Intel PCH root ports 00:1c.0 and 00:1c.1 (no ACS capability; Linux needs a quirk there).
    let build = |acs: Option<Acs>| {
        let mut t = Topology::<8>::new();
        let rp0 = push(&mut t, root_port(0, 0x1c, 0, 1, acs));
        let e0 = push(&mut t, endpoint(1, 0, 0, Some(rp0)));
        let rp1 = push(&mut t, root_port(0, 0x1c, 1, 2, acs));
        let e1 = push(&mut t, endpoint(2, 0, 0, Some(rp1)));
        (Groups::compute(&t), e0, e1)
    };
    let (g, e0, e1) = build(None);
    assert_eq!(g.len(), 1);
    assert!(g.same_group(e0, e1));
    let (g, e0, e1) = build(Some(ACS_ON));
    assert_eq!(g.len(), 4);
    assert!(!g.same_group(e0, e1));
}

#[test]
fn a_quirk_can_stand_in_for_root_port_acs() {
    // Qualcomm QDF2xxx root ports (Linux pci_quirk_qcom_rp_acs).
    let mut t = Topology::<8>::new();
    let rp = push(&mut t, with_id(root_port(0, 0, 0, 1, None), 0x17cb, 0x0400));
    let ep = push(&mut t, endpoint(1, 0, 0, Some(rp)));
    assert!(!Groups::compute(&t).same_group(rp, ep));
}

/// A PF at 01:00.0 below a root port with ACS, and two VFs.
fn sriov(pf: Function, vfs: [(u8, u8, Option<Acs>); 2]) -> (Groups<8>, [FunctionIndex; 3]) {
    let mut t = Topology::<8>::new();
    let rp = push(&mut t, root_port(0, 1, 0, 1, Some(ACS_ON)));
    let mut pf = pf;
    pf.parent = Some(rp);
    let (vendor, vf_device) = (pf.id.vendor, pf.id.device.wrapping_add(1));
    let pf = push(&mut t, pf);
    let [a, b] = vfs.map(|(dev, func, acs)| {
        let mut v = with_id(vf(1, dev, func, Some(rp), pf), vendor, vf_device);
        v.acs = acs;
        push(&mut t, v)
    });
    (Groups::compute(&t), [pf, a, b])
}

#[test]
fn vfs_share_their_pf_group_unless_acs_isolates_them() {
    // QEMU nvme (1b36:0010): VFs at 01:00.1 and 01:00.2, no ACS anywhere.
    let nvme = with_id(endpoint(1, 0, 0, None), 0x1b36, 0x0010);
    let (g, [pf, a, b]) = sriov(nvme, [(0, 1, None), (0, 2, None)]);
    assert!(g.same_group(pf, a) && g.same_group(a, b));
    assert_eq!(g.get(g.group_of(pf).unwrap()).unwrap().causes(), Causes::MULTI_FUNCTION);

    // The PF enforces isolation for the device; VFs without ACS of their own follow it.
    let (g, [pf, a, b]) = sriov(with_acs(nvme, MF_ACS_ON), [(0, 1, None), (0, 2, None)]);
    assert!(!g.same_group(pf, a) && !g.same_group(a, b));
    // A VF whose own ACS is off can reach the others: the whole device is one group.
    let (g, [pf, a, b]) =
        sriov(with_acs(nvme, MF_ACS_ON), [(0, 1, Some(MF_ACS_OFF)), (0, 2, None)]);
    assert!(g.same_group(pf, a) && g.same_group(a, b));
    // A VF whose own ACS is on, below a PF without: the PF (and the other VF) can still reach
    // it.
    let (g, [pf, a, b]) = sriov(nvme, [(0, 1, Some(MF_ACS_ON)), (0, 2, None)]);
    assert!(g.same_group(pf, a) && g.same_group(a, b));
}

#[test]
fn the_82576_quirk_isolates_the_pf_and_its_vfs() {
    // QEMU igb: 8086:10c9, ARI, VFs 8086:10ca at devfn 0x80 and 0x82 (offset 0x80, stride 2),
    // no ACS. The VFs' device numbers differ from the PF's, but below a link it is one device.
    let igb = with_id(endpoint(1, 0, 0, None), 0x8086, 0x10c9);
    let (g, [pf, a, b]) = sriov(igb, [(0x10, 0, None), (0x10, 2, None)]);
    assert!(!g.same_group(pf, a) && !g.same_group(pf, b) && !g.same_group(a, b));
    assert_eq!(g.len(), 4);
    // The same silicon without the quirk (another device ID): one group.
    let other = with_id(endpoint(1, 0, 0, None), 0x8086, 0x1533);
    let (g, [pf, a, b]) = sriov(other, [(0x10, 0, None), (0x10, 2, None)]);
    assert!(g.same_group(pf, a) && g.same_group(pf, b));
}

#[test]
fn quirk_alias_joins_the_function_it_borrows() {
    // Marvell 88SE9123 at 01:00.0 DMAs as 01:00.1, the IDE function of the same chip. Both have
    // ACS (so rule (b) does not join them): the shared RID does.
    let mut t = Topology::<8>::new();
    let rp = push(&mut t, root_port(0, 1, 0, 1, Some(ACS_ON)));
    let sata =
        push(&mut t, with_acs(with_id(endpoint(1, 0, 0, Some(rp)), 0x1b4b, 0x9123), MF_ACS_ON));
    let ide = push(&mut t, with_acs(endpoint(1, 0, 1, Some(rp)), MF_ACS_ON));
    let g = Groups::compute(&t);
    assert!(g.same_group(sata, ide));
    assert_eq!(g.get(g.group_of(ide).unwrap()).unwrap().causes(), Causes::SHARED_RID);

    // Without function 1 the alias is a ghost: a group of one that still maps 01:00.1.
    let mut t = Topology::<8>::new();
    let rp = push(&mut t, root_port(0, 1, 0, 1, Some(ACS_ON)));
    let sata = push(&mut t, with_id(endpoint(1, 0, 0, Some(rp)), 0x1b4b, 0x9123));
    let g = Groups::compute(&t);
    let rids: Vec<Bdf> = g.aliases(&t, g.group_of(sata).unwrap()).map(|a| a.bdf()).collect();
    assert_eq!(rids, [bdf(1, 0, 0), bdf(1, 0, 1)]);
}

#[test]
fn two_devices_borrowing_the_same_ghost_rid_are_one_group() {
    // Two Adaptec controllers on the root bus both DMA as 00:01.0, which no function owns.
    let mut t = Topology::<8>::new();
    let a = push(&mut t, with_id(endpoint(0, 0x0e, 0, None), 0x9005, 0x0285));
    let b = push(&mut t, with_id(endpoint(0, 0x0f, 0, None), 0x9005, 0x0285));
    let c = push(&mut t, endpoint(0, 0x10, 0, None));
    let g = Groups::compute(&t);
    assert!(g.same_group(a, b) && !g.same_group(a, c));
    let rids: Vec<Bdf> = g.aliases(&t, g.group_of(a).unwrap()).map(|a| a.bdf()).collect();
    assert_eq!(rids, [bdf(0, 0x0e, 0), bdf(0, 1, 0), bdf(0, 0x0f, 0)]);
}

#[test]
fn quirked_conventional_bridge_groups_like_a_pcie_to_pci_bridge() {
    let mut t = Topology::<8>::new();
    let rp = push(&mut t, root_port(0, 1, 0, 1, Some(ACS_ON)));
    let asm = push(&mut t, with_id(conventional_bridge(1, 0, 0, 2, Some(rp)), 0x1b21, 0x1080));
    let a = push(&mut t, conventional(2, 1, 0, Some(asm)));
    let b = push(&mut t, conventional(2, 2, 0, Some(asm)));
    let g = Groups::compute(&t);
    assert_eq!(group_of(&g, a), [bdf(1, 0, 0), bdf(2, 1, 0), bdf(2, 2, 0)]);
    assert!(g.same_group(a, b) && !g.same_group(rp, a));
    assert_eq!(visible(&t, b).map(|x| x.reason), Some(AliasReason::QuirkedPcieToPciBridge(asm)));
}

/// The QEMU q35 machine of `sim::pci::Topology::qemu_q35_rich` (and notes §3.5-3.6), as
/// enumeration would snapshot it, with the root ports' ACS controls as given.
fn qemu_q35_rich(rp_acs: Acs) -> Topology<32> {
    let mut t = Topology::<32>::new();
    let _host = push(&mut t, with_id(conventional(0, 0, 0, None), 0x8086, 0x29c0));
    let rp1 = push(&mut t, root_port(0, 1, 0, 1, Some(rp_acs)));
    let igb = push(&mut t, with_id(endpoint(1, 0, 0, Some(rp1)), 0x8086, 0x10c9));
    for k in 0..3u8 {
        push(&mut t, with_id(vf(1, 0x10, 2 * k, Some(rp1), igb), 0x8086, 0x10ca));
    }
    push(&mut t, conventional(0, 2, 0, None));
    let rp2 = push(&mut t, root_port(0, 3, 0, 2, Some(rp_acs)));
    let nvme = push(&mut t, with_id(endpoint(2, 0, 0, Some(rp2)), 0x1b36, 0x0010));
    for func in 1..3u8 {
        push(&mut t, with_id(vf(2, 0, func, Some(rp2), nvme), 0x1b36, 0x0010));
    }
    let pb = push(&mut t, with_id(conventional_bridge(0, 4, 0, 3, None), 0x1b36, 0x0001));
    push(&mut t, conventional(3, 4, 0, Some(pb)));
    let rp4 = push(&mut t, root_port(0, 5, 0, 4, Some(rp_acs)));
    let ppb = push(&mut t, with_id(pcie_to_pci(4, 0, 0, 5, Some(rp4)), 0x1b36, 0x000e));
    push(&mut t, conventional(5, 3, 0, Some(ppb)));
    push(&mut t, conventional(5, 4, 0, Some(ppb)));
    let rp5 = push(&mut t, root_port(0, 6, 0, 6, Some(rp_acs)));
    // TI XIO3130 switch ports: no ACS capability in the model.
    let up = push(
        &mut t,
        with_id(bridge(FunctionKind::SwitchUpstream, 6, 0, 0, 7, Some(rp5), None), 0x104c, 0x8232),
    );
    let down0 = push(
        &mut t,
        with_id(bridge(FunctionKind::SwitchDownstream, 7, 0, 0, 8, Some(up), None), 0x104c, 0x8233),
    );
    push(&mut t, with_id(endpoint(8, 0, 0, Some(down0)), 0x8086, 0x10d3));
    push(
        &mut t,
        with_id(bridge(FunctionKind::SwitchDownstream, 7, 1, 0, 9, Some(up), None), 0x104c, 0x8233),
    );
    for func in [0, 2, 3] {
        push(&mut t, conventional(0, 0x1f, func, None));
    }
    t
}

#[test]
fn qemu_q35_rich_shape() {
    let t = qemu_q35_rich(ACS_ON);
    let g = Groups::compute(&t);
    let b = |s: &str| {
        let p: Vec<u8> = s.split([':', '.']).map(|x| u8::from_str_radix(x, 16).unwrap()).collect();
        bdf(p[0], p[1], p[2])
    };
    let expect: Vec<Vec<Bdf>> = [
        &["00:00.0"][..],
        &["00:01.0"],
        &["00:02.0"],
        &["00:03.0"],
        &["00:04.0", "03:04.0"],
        &["00:05.0"],
        &["00:06.0"],
        &["00:1f.0", "00:1f.2", "00:1f.3"],
        &["01:00.0"],
        &["01:10.0"],
        &["01:10.2"],
        &["01:10.4"],
        &["02:00.0", "02:00.1", "02:00.2"],
        &["04:00.0", "05:03.0", "05:04.0"],
        &["06:00.0", "07:00.0", "07:01.0", "08:00.0"],
    ]
    .iter()
    .map(|g| g.iter().map(|s| b(s)).collect())
    .collect();
    let got: Vec<Vec<Bdf>> = layout(&g).into_iter().map(|(_, m, _)| m).collect();
    assert_eq!(got, expect);

    // The RIDs QEMU's IOMMUs see (notes §3.6).
    let rid = |s: &str| visible_rid(&t, t.find(b(s)).unwrap()).unwrap();
    assert_eq!(rid("00:02.0"), b("00:02.0").routing_id());
    assert_eq!(rid("05:03.0"), b("05:00.0").routing_id());
    assert_eq!(rid("03:04.0"), b("00:04.0").routing_id());
    assert_eq!(rid("08:00.0"), b("08:00.0").routing_id());
    assert_eq!(rid("01:10.2"), RequesterId(0x0182));

    // Before enumeration enables the root ports' ACS, each root port takes its subtree.
    let g = Groups::compute(&qemu_q35_rich(ACS_OFF));
    let got: Vec<Vec<Bdf>> = layout(&g).into_iter().map(|(_, m, _)| m).collect();
    assert_eq!(got.len(), 8);
    assert_eq!(got[1], ["00:01.0", "01:00.0", "01:10.0", "01:10.2", "01:10.4"].map(b));
}

#[test]
fn ids_and_iteration_follow_bdf_order() {
    let t = qemu_q35_rich(ACS_ON);
    let g = Groups::compute(&t);
    let ids: Vec<GroupId> = g.iter().map(|gr| gr.id()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    for gr in g.iter() {
        let m: Vec<Bdf> = gr.members().map(|m| g.bdf(m).unwrap()).collect();
        assert!(m.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(gr.id().0, m[0]);
        assert_eq!(gr.len(), m.len());
        assert!(gr.members().all(|i| g.group_of(i) == Some(gr.id())));
    }
    assert_eq!(g.iter().map(|gr| gr.len()).sum::<usize>(), t.len());
    assert!(g.get(GroupId(bdf(0x42, 0, 0))).is_none());
    assert_eq!(g.members(GroupId(bdf(0x42, 0, 0))).count(), 0);
    assert_eq!(g.group_of(FunctionIndex(31)), None);
    assert_eq!(GroupId(bdf(0, 4, 0)).to_string(), "group 0000:00:04.0");
    assert_eq!(
        format!("{:?}", Causes(Causes::SHARED_RID.0 | Causes::BRIDGE.0)),
        "{shared-rid, bridge}"
    );
    let empty = Groups::compute(&Topology::<4>::new());
    assert!(empty.is_empty() && empty.iter().next().is_none());
}

#[test]
fn attach_guard_keeps_each_group_in_one_domain() {
    let t = qemu_q35_rich(ACS_ON);
    let g = Groups::compute(&t);
    let at = |s: (u8, u8, u8)| t.find(bdf(s.0, s.1, s.2)).unwrap();
    let (e0, e1, bridge) = (at((5, 3, 0)), at((5, 4, 0)), at((4, 0, 0)));
    let (vf0, vf1) = (at((1, 0x10, 0)), at((1, 0x10, 2)));
    let mut a = GroupAttachments::<32>::new();
    let (d1, d2) = (DomainId(1), DomainId(2));

    // Members of one group: same domain is fine, another is refused with both sides named.
    assert_eq!(a.attach(&g, e0, d1), Ok(()));
    assert_eq!(a.attach(&g, e1, d1), Ok(()));
    assert_eq!(
        a.attach(&g, bridge, d2),
        Err(Error::GroupSplit {
            function: bdf(4, 0, 0),
            domain: 2,
            member: bdf(5, 3, 0),
            member_domain: 1
        })
    );
    assert_eq!(a.domain_of(bridge), None);
    assert_eq!(a.group_domain(&g, g.group_of(bridge).unwrap()), Some(d1));
    // Idempotent; moving a function needs a detach first.
    assert_eq!(a.attach(&g, e0, d1), Ok(()));
    assert_eq!(
        a.attach(&g, e0, d2),
        Err(Error::GroupSplit {
            function: bdf(5, 3, 0),
            domain: 2,
            member: bdf(5, 3, 0),
            member_domain: 1
        })
    );
    // Different groups go to different domains.
    assert_eq!(a.attach(&g, vf0, d1), Ok(()));
    assert_eq!(a.attach(&g, vf1, d2), Ok(()));
    // Once every member is detached the group may move.
    assert_eq!(a.detach(e0), Some(d1));
    assert_eq!(
        a.attach(&g, bridge, d2),
        Err(Error::GroupSplit {
            function: bdf(4, 0, 0),
            domain: 2,
            member: bdf(5, 4, 0),
            member_domain: 1
        })
    );
    assert_eq!(a.detach(e1), Some(d1));
    assert_eq!(a.detach(e1), None);
    assert_eq!(a.attach(&g, bridge, d2), Ok(()));
    assert_eq!(a.check(&g), Ok(()));
    // Out of range.
    assert_eq!(
        a.attach(&g, FunctionIndex(31), d1),
        Err(Error::BadReference { what: "function index", value: 31 })
    );
    assert_eq!(a.detach(FunctionIndex(999)), None);

    // Groups recomputed with the root ports' ACS off: 01:10.0 and 01:10.2 now share a group in
    // two domains.
    let coarse = Groups::compute(&qemu_q35_rich(ACS_OFF));
    assert_eq!(
        a.check(&coarse),
        Err(Error::GroupSplit {
            function: bdf(1, 0x10, 2),
            domain: 2,
            member: bdf(1, 0x10, 0),
            member_domain: 1
        })
    );
    let e = a.check(&coarse).unwrap_err().to_string();
    assert_eq!(
        e,
        "0000:01:10.2: attaching to domain 2 would split its isolation group: 0000:01:10.0 is in domain 1"
    );
}

#[test]
fn hostile_snapshots_neither_panic_nor_loop() {
    let mut t = Topology::<10>::new();
    let a = push(&mut t, conventional_bridge(0, 1, 0, 1, None));
    let b = push(&mut t, pcie_to_pci(1, 0, 0, 2, Some(a)));
    let c = push(&mut t, conventional(2, 0, 0, Some(b)));
    let d = push(&mut t, vf(2, 0, 1, Some(b), c));
    let e = push(&mut t, endpoint(3, 0, 0, Some(c)));
    let f = push(&mut t, bridge(FunctionKind::SwitchUpstream, 4, 0, 0, 5, None, None));
    let h = push(&mut t, endpoint(4, 0, 0, Some(f)));
    let x = push(&mut t, endpoint(6, 0, 0, None));
    let y = push(&mut t, endpoint(7, 0, 0, Some(x))); // below an endpoint
    {
        let fs = t.functions_mut();
        fs[usize::from(a.0)].parent = Some(c); // a -> c -> b -> a
        fs[usize::from(b.0)].bus_range = None;
        fs[usize::from(d.0)].physical_function = Some(d); // a VF that is its own PF
        fs[usize::from(c.0)].physical_function = Some(d); // and a PF that is a VF of a VF
        fs[usize::from(e.0)].parent = Some(FunctionIndex(200));
        fs[usize::from(f.0)].parent = Some(f); // its own parent
        fs[usize::from(h.0)].id.bdf = fs[usize::from(e.0)].id.bdf; // duplicate address
    }
    let g = Groups::compute(&t);
    assert_eq!(g.iter().map(|gr| gr.len()).sum::<usize>(), t.len());
    for i in 0..t.len() {
        let i = FunctionIndex(i as u16);
        assert!(aliases(&t, i).count() <= 1 + 2 + 10);
        assert!(visible_rid(&t, i).is_some());
        assert!(g.group_of(i).is_some());
    }
    // The loop is one group (every member is below a conventional bridge of the loop), and two
    // functions with one address share a RID, so a group.
    assert!(g.same_group(a, c) && g.same_group(b, d));
    assert!(g.same_group(e, h));
    // Something below a function that is not a bridge is not trusted to be isolated from it.
    assert!(g.same_group(x, y));
    for gr in g.iter() {
        assert!(g.aliases(&t, gr.id()).count() >= 1);
    }
}
