//! Requester-ID aliases: every RID a function's DMA can reach the IOMMU with.
//!
//! The walk is Linux `pci_for_each_dma_alias` (`drivers/pci/search.c`) run on a snapshot:
//!
//! 1. the function's own routing ID;
//! 2. the DMA-alias quirks of [`crate::pci::quirks`], on the function's own bus;
//! 3. then each bridge from the function up to its root bus, nearest first:
//!    - root ports and switch ports forward the ID unchanged (no alias);
//!    - a **PCIe-to-PCI bridge** takes ownership of requests from its conventional side and
//!      issues them as `(secondary bus):00.0` (PCI Express to PCI/PCI-X Bridge Spec r1.0
//!      §2.3; Linux `PCI_DEVID(tmp->subordinate->number, PCI_DEVFN(0, 0))`). Linux adds only
//!      that alias, not the bridge's own ID, and adds it for every device below the bridge, on
//!      its secondary bus or deeper;
//!    - a **PCI-to-PCIe (reverse) bridge** adds its own ID (Linux `PCI_EXP_TYPE_PCIE_BRIDGE`);
//!    - a bridge **without a PCI Express capability** adds its own ID (conventional PCI carries
//!      no requester ID, so the bridge that forwards the request owns it), or
//!      `(secondary bus):00.0` when [`QuirkKind::PcieBridgeAlias`] says it is really a
//!      PCIe-to-PCI bridge.
//!
//! The RID the IOMMU sees is the last alias the walk produces (the topmost rewrite); QEMU does
//! the same (`pci_device_get_iommu_bus_devfn`, notes `qemu-10.0.2.md` §3.6: behind
//! `pcie-pci-bridge` the RID is secondary:00.0, behind `pci-bridge` the bridge's BDF). The
//! earlier aliases still matter: a PCI-X requester's own ID can survive a PCIe-to-PCI bridge,
//! and quirky devices use both IDs, so the IOMMU must map every alias to the same domain.
//!
//! The walk is bounded by [`Topology::upstream`], so a corrupted parent chain cannot loop.

use crate::addr::{Bdf, RequesterId};
use crate::pci::quirks::{self, QuirkKind};
use crate::pci::topology::{FunctionIndex, FunctionKind, Topology};

/// Why a RID is an alias of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AliasReason {
    /// The function's own routing ID.
    Own,
    /// A DMA-alias quirk of the function (Linux `pci_add_dma_alias` callers).
    Quirk(QuirkKind),
    /// A PCIe-to-PCI bridge above issues the function's requests as secondary:00.0.
    PcieToPciBridge(FunctionIndex),
    /// A bridge without a PCI Express capability that a quirk identifies as a PCIe-to-PCI
    /// bridge issues them as secondary:00.0.
    QuirkedPcieToPciBridge(FunctionIndex),
    /// A conventional PCI-to-PCI bridge above issues them with its own ID.
    ConventionalBridge(FunctionIndex),
    /// A PCI-to-PCIe (reverse) bridge above issues them with its own ID.
    PciToPcieBridge(FunctionIndex),
}

impl AliasReason {
    /// The bridge that produced the alias, if a bridge did. Linux hands this device to the
    /// alias callback, and `pci_device_group` puts it in the function's group.
    pub const fn bridge(self) -> Option<FunctionIndex> {
        match self {
            Self::Own | Self::Quirk(_) => None,
            Self::PcieToPciBridge(b)
            | Self::QuirkedPcieToPciBridge(b)
            | Self::ConventionalBridge(b)
            | Self::PciToPcieBridge(b) => Some(b),
        }
    }
}

/// One requester-ID alias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Alias {
    /// PCI segment of the RID.
    pub segment: u16,
    /// The requester ID.
    pub rid: RequesterId,
    /// Why it is an alias.
    pub reason: AliasReason,
}

impl Alias {
    /// The RID as an address (segment, bus, devfn), the form IOMMU context and stream tables
    /// are indexed by.
    pub const fn bdf(&self) -> Bdf {
        Bdf::from_routing_id(self.segment, self.rid.0)
    }

    /// Whether `other` is the same RID (reasons aside).
    pub const fn same_rid(&self, other: &Alias) -> bool {
        self.segment == other.segment && self.rid.0 == other.rid.0
    }
}

/// The alias a bridge puts on requests it forwards from below, if any. It depends on the bridge
/// alone, so every function below it gets the same alias (which isolation groups rely on).
///
/// A PCIe-to-PCI bridge without a recorded bus range cannot have been enumerated below (an
/// inconsistent snapshot); it falls back to its own ID, which still ties whatever claims to be
/// below it to it.
pub fn bridge_alias<const N: usize>(
    topology: &Topology<N>,
    bridge: FunctionIndex,
) -> Option<Alias> {
    let b = topology.get(bridge)?;
    let bdf = b.bdf();
    let secondary_00_0 = |reason| {
        let rid = match b.bus_range {
            Some(range) => RequesterId(u16::from(range.secondary) << 8),
            None => bdf.routing_id(),
        };
        Alias { segment: bdf.segment, rid, reason }
    };
    let own = |reason| Alias { segment: bdf.segment, rid: bdf.routing_id(), reason };
    match b.kind {
        FunctionKind::PcieToPciBridge => Some(secondary_00_0(AliasReason::PcieToPciBridge(bridge))),
        FunctionKind::PciToPcieBridge => Some(own(AliasReason::PciToPcieBridge(bridge))),
        // Linux's `!pci_is_pcie(tmp)` branch: any function without a PCIe capability that a
        // chain passes through (a CardBus bridge, or a corrupted parent link).
        FunctionKind::ConventionalBridge
        | FunctionKind::ConventionalEndpoint
        | FunctionKind::Other => {
            if is_quirked_pcie_bridge(topology, bridge) {
                Some(secondary_00_0(AliasReason::QuirkedPcieToPciBridge(bridge)))
            } else {
                Some(own(AliasReason::ConventionalBridge(bridge)))
            }
        }
        // Ports forward the ID unchanged; other PCIe types cannot forward at all (Linux's switch
        // has no case for them).
        FunctionKind::RootPort
        | FunctionKind::SwitchUpstream
        | FunctionKind::SwitchDownstream
        | FunctionKind::PcieEndpoint
        | FunctionKind::RootComplexEndpoint
        | FunctionKind::RootComplexEventCollector => None,
    }
}

/// Linux `quirk_use_pcie_bridge_dma_alias`: the quirk applies only to a bridge without a PCIe
/// capability, not on a root bus, whose upstream bridge is PCIe and not a PCIe-to-PCI bridge
/// (some of these chips work as forward or reverse bridges).
fn is_quirked_pcie_bridge<const N: usize>(topology: &Topology<N>, bridge: FunctionIndex) -> bool {
    let Some(b) = topology.get(bridge) else { return false };
    if b.kind != FunctionKind::ConventionalBridge
        || !quirks::pcie_bridge_alias(b.id.vendor, b.id.device)
    {
        return false;
    }
    let Some(up) = b.parent.and_then(|p| topology.get(p)) else { return false };
    up.kind.is_pcie() && up.kind != FunctionKind::PcieToPciBridge
}

/// Iterator over a function's aliases; see [`aliases`].
#[derive(Clone, Debug)]
pub struct Aliases<'a, const N: usize> {
    topology: &'a Topology<N>,
    index: FunctionIndex,
    /// 0: own ID; k >= 1: the k-th quirk alias; then the bridge walk.
    step: usize,
    walk: Option<core::iter::Take<Upstream<'a, N>>>,
}

/// [`Topology::upstream`] as a type that can be stored (an `impl Iterator` cannot), with the
/// same bound applied by `take(N)`.
#[derive(Clone, Debug)]
struct Upstream<'a, const N: usize> {
    topology: &'a Topology<N>,
    next: Option<FunctionIndex>,
}

impl<const N: usize> Iterator for Upstream<'_, N> {
    type Item = FunctionIndex;

    fn next(&mut self) -> Option<FunctionIndex> {
        let current = self.next?;
        self.next = self.topology.get(current).and_then(|f| f.parent);
        Some(current)
    }
}

impl<const N: usize> Iterator for Aliases<'_, N> {
    type Item = Alias;

    fn next(&mut self) -> Option<Alias> {
        let topology = self.topology;
        let f = topology.get(self.index)?;
        let bdf = f.bdf();
        if self.step == 0 {
            self.step = 1;
            return Some(Alias {
                segment: bdf.segment,
                rid: bdf.routing_id(),
                reason: AliasReason::Own,
            });
        }
        if self.walk.is_none() {
            // Quirk aliases sit on the function's own bus (Linux `dma_alias_mask`).
            if let Some((devfn, quirk)) =
                quirks::dma_alias_devfns(f.id.vendor, f.id.device, bdf.devfn).nth(self.step - 1)
            {
                self.step += 1;
                let rid = RequesterId(u16::from(bdf.bus) << 8 | u16::from(devfn));
                return Some(Alias {
                    segment: bdf.segment,
                    rid,
                    reason: AliasReason::Quirk(quirk.kind),
                });
            }
            // INVARIANT: a well-formed chain has fewer than N bridges; `take(N)` bounds a
            // corrupted one that loops.
            let next = f.parent;
            self.walk = Some(Upstream { topology, next }.take(N));
        }
        self.walk.as_mut()?.find_map(|bridge| bridge_alias(topology, bridge))
    }
}

/// Every alias of the function at `index`, own ID first, then quirk aliases, then bridge
/// aliases nearest first (empty if `index` is not in the snapshot). Allocation-free and bounded
/// by `1 + quirks + N` items.
pub fn aliases<const N: usize>(topology: &Topology<N>, index: FunctionIndex) -> Aliases<'_, N> {
    Aliases { topology, index, step: 0, walk: None }
}

/// The alias the IOMMU sees: the last one [`aliases`] produces (the topmost bridge's rewrite, or
/// a quirk alias when no bridge rewrites). `None` if `index` is not in the snapshot.
///
/// A quirky device also issues DMA with its own ID; program every alias, not only this one.
pub fn visible<const N: usize>(topology: &Topology<N>, index: FunctionIndex) -> Option<Alias> {
    aliases(topology, index).last()
}

/// The requester ID of [`visible`].
pub fn visible_rid<const N: usize>(
    topology: &Topology<N>,
    index: FunctionIndex,
) -> Option<RequesterId> {
    visible(topology, index).map(|a| a.rid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::groups::testutil::*;

    fn rids<const N: usize>(t: &Topology<N>, i: FunctionIndex) -> Vec<(Bdf, AliasReason)> {
        aliases(t, i).map(|a| (a.bdf(), a.reason)).collect()
    }

    #[test]
    fn pcie_endpoint_is_itself() {
        let mut t = Topology::<8>::new();
        let rp = t.push(root_port(0, 1, 0, 1, Some(ACS_ON))).unwrap();
        let ep = t.push(endpoint(1, 0, 0, Some(rp))).unwrap();
        assert_eq!(rids(&t, ep), [(bdf(1, 0, 0), AliasReason::Own)]);
        assert_eq!(visible_rid(&t, ep), Some(bdf(1, 0, 0).routing_id()));
        assert_eq!(rids(&t, rp), [(bdf(0, 1, 0), AliasReason::Own)]);
    }

    #[test]
    fn behind_pcie_to_pci_bridge_the_iommu_sees_secondary_00_0() {
        // QEMU: edu 02:03.0 behind pcie-pci-bridge 01:00.0 (secondary 2) -> SID 02:00.0.
        let mut t = Topology::<8>::new();
        let rp = t.push(root_port(0, 4, 0, 1, Some(ACS_ON))).unwrap();
        let br = t.push(pcie_to_pci(1, 0, 0, 2, Some(rp))).unwrap();
        let edu = t.push(conventional(2, 3, 0, Some(br))).unwrap();
        let at0 = t.push(conventional(2, 0, 0, Some(br))).unwrap();
        assert_eq!(
            rids(&t, edu),
            [(bdf(2, 3, 0), AliasReason::Own), (bdf(2, 0, 0), AliasReason::PcieToPciBridge(br))]
        );
        assert_eq!(visible_rid(&t, edu), Some(bdf(2, 0, 0).routing_id()));
        // Linux adds only secondary:00.0, never the bridge's own ID; the bridge itself is a
        // PCIe function and is itself.
        assert_eq!(visible_rid(&t, br), Some(bdf(1, 0, 0).routing_id()));
        // A device at secondary:00.0 aliases to itself twice over.
        assert_eq!(visible(&t, at0).map(|a| a.bdf()), Some(bdf(2, 0, 0)));
    }

    #[test]
    fn behind_conventional_bridge_the_iommu_sees_the_bridge() {
        // QEMU: edu 03:04.0 behind pci-bridge 00:04.0 -> SID 00:04.0.
        let mut t = Topology::<8>::new();
        let br = t.push(conventional_bridge(0, 4, 0, 3, None)).unwrap();
        let edu = t.push(conventional(3, 4, 0, Some(br))).unwrap();
        assert_eq!(
            rids(&t, edu),
            [(bdf(3, 4, 0), AliasReason::Own), (bdf(0, 4, 0), AliasReason::ConventionalBridge(br))]
        );
        assert_eq!(visible_rid(&t, edu), Some(bdf(0, 4, 0).routing_id()));
    }

    #[test]
    fn nested_bridges_topmost_wins() {
        // Root port -> PCIe-to-PCI (sec 2) -> conventional bridge 02:01.0 (sec 3) -> 03:05.0.
        let mut t = Topology::<8>::new();
        let rp = t.push(root_port(0, 1, 0, 1, None)).unwrap();
        let p2p = t.push(pcie_to_pci(1, 0, 0, 2, Some(rp))).unwrap();
        let cb = t.push(conventional_bridge(2, 1, 0, 3, Some(p2p))).unwrap();
        let dev = t.push(conventional(3, 5, 0, Some(cb))).unwrap();
        assert_eq!(
            rids(&t, dev),
            [
                (bdf(3, 5, 0), AliasReason::Own),
                (bdf(2, 1, 0), AliasReason::ConventionalBridge(cb)),
                (bdf(2, 0, 0), AliasReason::PcieToPciBridge(p2p)),
            ]
        );
        assert_eq!(visible_rid(&t, dev), Some(bdf(2, 0, 0).routing_id()));

        // Two conventional bridges from the root bus: the outer one owns the request.
        let mut t = Topology::<8>::new();
        let outer = t.push(conventional_bridge(0, 5, 0, 1, None)).unwrap();
        let inner = t.push(conventional_bridge(1, 2, 0, 2, Some(outer))).unwrap();
        let dev = t.push(conventional(2, 0, 0, Some(inner))).unwrap();
        assert_eq!(visible_rid(&t, dev), Some(bdf(0, 5, 0).routing_id()));
        assert_eq!(aliases(&t, dev).count(), 3);
    }

    #[test]
    fn reverse_bridge_adds_its_own_id() {
        // Linux PCI_EXP_TYPE_PCIE_BRIDGE: PCI_DEVID(tmp->bus->number, tmp->devfn).
        let mut t = Topology::<8>::new();
        let cb = t.push(conventional_bridge(0, 2, 0, 1, None)).unwrap();
        let rev =
            t.push(bridge(FunctionKind::PciToPcieBridge, 1, 0, 0, 2, Some(cb), None)).unwrap();
        let ep = t.push(endpoint(2, 0, 0, Some(rev))).unwrap();
        assert_eq!(
            rids(&t, ep),
            [
                (bdf(2, 0, 0), AliasReason::Own),
                (bdf(1, 0, 0), AliasReason::PciToPcieBridge(rev)),
                (bdf(0, 2, 0), AliasReason::ConventionalBridge(cb)),
            ]
        );
    }

    #[test]
    fn quirk_aliases_on_the_own_bus() {
        let mut t = Topology::<8>::new();
        let rp = t.push(root_port(0, 1, 0, 1, Some(ACS_ON))).unwrap();
        let marvell = t.push(with_id(endpoint(1, 0, 0, Some(rp)), 0x1b4b, 0x9123)).unwrap();
        assert_eq!(
            rids(&t, marvell),
            [
                (bdf(1, 0, 0), AliasReason::Own),
                (bdf(1, 0, 1), AliasReason::Quirk(QuirkKind::DmaAliasFunction(1)))
            ]
        );
        // With no bridge rewriting, the quirk alias is what the IOMMU sees.
        assert_eq!(visible_rid(&t, marvell), Some(bdf(1, 0, 1).routing_id()));

        // Behind a PCIe-to-PCI bridge the bridge still wins.
        let br = t.push(pcie_to_pci(0, 2, 0, 2, None)).unwrap();
        let ricoh = t.push(with_id(conventional(2, 3, 2, Some(br)), 0x1180, 0xe832)).unwrap();
        assert_eq!(
            rids(&t, ricoh),
            [
                (bdf(2, 3, 2), AliasReason::Own),
                (bdf(2, 3, 0), AliasReason::Quirk(QuirkKind::DmaAliasFunction(0))),
                (bdf(2, 0, 0), AliasReason::PcieToPciBridge(br)),
            ]
        );
    }

    #[test]
    fn quirked_conventional_bridge_aliases_like_a_pcie_to_pci_bridge() {
        // ASMedia ASM1083 (no PCIe capability) below a root port: secondary:00.0.
        let mut t = Topology::<8>::new();
        let rp = t.push(root_port(0, 1, 0, 1, Some(ACS_ON))).unwrap();
        let asm =
            t.push(with_id(conventional_bridge(1, 0, 0, 2, Some(rp)), 0x1b21, 0x1080)).unwrap();
        let dev = t.push(conventional(2, 4, 0, Some(asm))).unwrap();
        assert_eq!(
            visible(&t, dev).map(|a| (a.bdf(), a.reason)),
            Some((bdf(2, 0, 0), AliasReason::QuirkedPcieToPciBridge(asm)))
        );
        // On a root bus the quirk's condition fails: the bridge's own ID.
        let asm_root =
            t.push(with_id(conventional_bridge(0, 9, 0, 3, None), 0x1b21, 0x1080)).unwrap();
        let dev = t.push(conventional(3, 4, 0, Some(asm_root))).unwrap();
        assert_eq!(visible(&t, dev).map(|a| a.bdf()), Some(bdf(0, 9, 0)));
    }

    #[test]
    fn unknown_index_has_no_alias() {
        let t = Topology::<4>::new();
        assert_eq!(aliases(&t, FunctionIndex(3)).count(), 0);
        assert_eq!(visible_rid(&t, FunctionIndex(0)), None);
    }

    #[test]
    fn looping_parent_chain_is_bounded() {
        let mut t = Topology::<4>::new();
        let a = t.push(conventional_bridge(0, 1, 0, 1, None)).unwrap();
        let b = t.push(conventional_bridge(1, 0, 0, 2, Some(a))).unwrap();
        t.functions_mut()[0].parent = Some(b);
        // Own + at most N bridge steps.
        assert!(aliases(&t, b).count() <= 1 + 4);
        assert!(visible_rid(&t, a).is_some());
        t.functions_mut()[1].parent = Some(FunctionIndex(77));
        assert_eq!(aliases(&t, b).count(), 1);
    }
}
