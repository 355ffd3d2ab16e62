//! Isolation groups: the smallest sets of functions the IOMMU can tell apart and keep from
//! reaching each other, computed as a pure function of a [`Topology`] snapshot.
//!
//! Linux `pci_device_group` (`drivers/iommu/iommu.c`) builds groups one device at a time as
//! devices are probed and reuses whatever group an alias or bridge already has, so its answer
//! depends on probe order (the seed `virtio-iommu-aliasing-groups.txt`: a device behind a
//! PCIe-to-PCI bridge probed before the bridge ends up alone). Here every rule is a relation
//! between functions of the snapshot, applied to all of them at once with a union-find; the
//! partition, the group IDs (smallest member BDF) and the member order (by BDF) therefore do not
//! depend on the order functions appear in the snapshot, nor on any attach order.
//!
//! The rules, each a union of two functions:
//!
//! - **(a) shared requester IDs.** A function joins every bridge that rewrites its requester ID
//!   ([`alias::aliases`]; Linux `get_pci_alias_or_group` puts the alias's device in the group),
//!   and functions whose alias sets share any RID are joined (Linux `get_pci_alias_group`):
//!   the IOMMU cannot tell their DMA apart.
//! - **(b) functions of one device.** A function that does not isolate itself from the other
//!   functions of its device joins all of them (Linux `get_pci_function_alias_group`). A
//!   function isolates itself if it has ACS with the [`REQUIRED_ACS`] controls enabled, or an
//!   [`QuirkKind::AcsEquivalent`](crate::pci::quirks::QuirkKind::AcsEquivalent) quirk. VFs
//!   count as functions of their PF's device, and a VF without an ACS capability of its own is
//!   judged by its PF's. Functions are of one device if they share segment, bus and device
//!   number, except below a root or downstream port (a link carries one device: with ARI its
//!   functions use all 8 bits of devfn), where the whole bus is one device.
//! - **(c) bridges that let peer-to-peer through.** A bridge that is not ACS-isolated by Linux
//!   `pci_acs_enabled` joins everything below it: a root or downstream port without the
//!   [`REQUIRED_ACS`] controls enabled; a PCIe-to-PCI, PCI-to-PCIe or conventional bridge
//!   (conventional PCI has no isolation at all); a multi-function upstream port that does not
//!   isolate its functions. This is Linux's climb with `pci_acs_path_enabled(bus->self, NULL,
//!   REQ_ACS_FLAGS)` to the highest bridge whose path fails, stated per bridge.
//! - **(c') a switch's internal bus.** A downstream port without ACS can send a request coming
//!   up from its device back down through any other downstream port of the same switch, so it
//!   spoils the whole switch: the upstream port joins everything below it. Likewise for any
//!   function on the internal bus that is not a downstream port. Linux `pci_device_group` missed
//!   this (peer devices under two downstream ports of one switch got separate groups); Jason
//!   Gunthorpe's 2025 series "Fix incorrect iommu_groups with PCIe switches" adds it as
//!   `pcie_switch_isolated` in `drivers/pci/search.c` ("any non-permissive DSP spoils the whole
//!   bus"). The upstream port is included because the snapshot does not say whether its own
//!   MMIO is protected (ACS Enhanced), which is the conservative side.
//!
//! Multi-function isolation is symmetric here: Linux joins a function without ACS only with the
//! other functions that also lack it, although it can reach the ones that have it.
//!
//! ACS is judged by the **Control** register as found in the snapshot (Linux
//! `pci_acs_flags_enabled`: controls the Capability register does not offer are taken as
//! hard-wired on). Enumeration enables [`crate::pci::acs::ISOLATION`] on every function that
//! offers it before the snapshot is taken, so a port whose firmware left ACS off is not
//! penalised; a snapshot taken before that gives larger groups, never smaller ones.
//!
//! The root bus is treated as isolating, as Linux does: root ports and root-complex integrated
//! endpoints in different devices are separate unless a rule above joins them.
//!
//! Nothing here touches configuration space. Computing uses about `8 * N` bytes of stack besides
//! the result (`11 * N` bytes); the pairwise rules cost O(N²) steps.

use core::fmt;

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::alias::{self, Alias};
use crate::pci::quirks;
use crate::pci::topology::{Acs, FunctionIndex, FunctionKind, Topology};

/// The ACS controls a port or function needs enabled to count as isolating: Source Validation,
/// P2P Request Redirect, P2P Completion Redirect, Upstream Forwarding (Linux `REQ_ACS_FLAGS`,
/// `drivers/iommu/iommu.c`).
pub const REQUIRED_ACS: u16 = Acs::SOURCE_VALIDATION
    | Acs::REQUEST_REDIRECT
    | Acs::COMPLETION_REDIRECT
    | Acs::UPSTREAM_FORWARDING;

/// Whether `acs` has every [`REQUIRED_ACS`] control that its Capability register offers
/// enabled (Linux `pci_acs_flags_enabled`: a control that is not offered is either not
/// applicable to the function or hard-wired on, PCIe Base 6.0 §6.12.1).
pub const fn acs_isolates(acs: Acs) -> bool {
    let required = REQUIRED_ACS & acs.capability;
    acs.control & required == required
}

/// A group's identity: its smallest member address (segment, bus, devfn). The same topology
/// gives the same IDs whatever order its functions were found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GroupId(pub Bdf);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {}", self.0)
    }
}

/// Which rules joined a group's members (empty for a group of one), for the log.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Causes(u8);

impl Causes {
    /// Rule (a): a shared or bridge-rewritten requester ID.
    pub const SHARED_RID: Self = Self(1 << 0);
    /// Rule (b): functions of one device (or a PF and its VFs) without ACS isolation.
    pub const MULTI_FUNCTION: Self = Self(1 << 1);
    /// Rule (c): a bridge above that lets peer-to-peer through.
    pub const BRIDGE: Self = Self(1 << 2);
    /// Rule (c'): a downstream port (or other function) that spoils a switch's internal bus.
    pub const SWITCH: Self = Self(1 << 3);

    const NAMES: [(Self, &'static str); 4] = [
        (Self::SHARED_RID, "shared-rid"),
        (Self::MULTI_FUNCTION, "multi-function"),
        (Self::BRIDGE, "bridge"),
        (Self::SWITCH, "switch"),
    ];

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every cause in `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no rule joined anything.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Causes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut set = f.debug_set();
        for (cause, name) in Self::NAMES {
            if self.contains(cause) {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}

/// Union-find over function indices, with the causes of the unions kept at each root.
struct UnionFind<const N: usize> {
    parent: [u16; N],
    causes: [u8; N],
}

impl<const N: usize> UnionFind<N> {
    fn new(len: usize) -> Self {
        let mut parent = [0u16; N];
        for (i, p) in parent.iter_mut().enumerate().take(len) {
            // CAST: len <= N and indices of a Topology fit u16 (Topology::push checks).
            *p = i as u16;
        }
        Self { parent, causes: [0; N] }
    }

    fn find(&mut self, mut i: usize) -> usize {
        while usize::from(self.parent[i]) != i {
            // Path halving: every visited node skips to its grandparent.
            let grandparent = self.parent[usize::from(self.parent[i])];
            self.parent[i] = grandparent;
            i = usize::from(grandparent);
        }
        i
    }

    fn union(&mut self, a: usize, b: usize, cause: Causes) {
        if a == b {
            return;
        }
        let (ra, rb) = (self.find(a), self.find(b));
        // The smaller index stays root: any fixed rule works, the partition is the same.
        let (root, child) = if ra <= rb { (ra, rb) } else { (rb, ra) };
        if root != child {
            // CAST: root < len <= u16::MAX + 1.
            self.parent[child] = root as u16;
            self.causes[root] |= self.causes[child];
        }
        self.causes[root] |= cause.0;
    }
}

/// Per-function facts the rules need more than once.
const HAS_EXTRA_RID: u8 = 1 << 0;
const HAS_PEER: u8 = 1 << 1;
const SPOILS_BELOW: u8 = 1 << 2;
const SPOILS_SWITCH: u8 = 1 << 3;

/// The isolation groups of a snapshot; see the [module documentation](self) for the rules.
#[derive(Clone, Debug)]
pub struct Groups<const N: usize> {
    functions: usize,
    count: usize,
    /// Per function: its address (so the attach guard can name functions without the snapshot).
    bdfs: [Bdf; N],
    /// Per function: the position of its group in ID order.
    group_of: [u16; N],
    /// Function indices ordered by (group ID, BDF, index).
    members: [u16; N],
    /// Per group position: where its members start in `members`.
    start: [u16; N],
    /// Per group position: what joined it.
    causes: [Causes; N],
}

impl<const N: usize> Groups<N> {
    /// Computes the groups of `topology`.
    pub fn compute(topology: &Topology<N>) -> Self {
        let len = topology.len();
        let mut uf = UnionFind::<N>::new(len);
        let mut facts = [0u8; N];
        let index = |i: usize| {
            // CAST: i < len, and Topology indices fit u16.
            FunctionIndex(i as u16)
        };
        let valid = |f: FunctionIndex| usize::from(f.0) < len;

        // Rule (a), part 1: each bridge that rewrites a function's RID joins it.
        for i in 0..len {
            for a in alias::aliases(topology, index(i)) {
                if let Some(b) = a.reason.bridge().filter(|&b| valid(b)) {
                    uf.union(i, usize::from(b.0), Causes::SHARED_RID);
                }
            }
        }

        // Rule (a), part 2: equal RIDs. Every alias of a function is its own ID, one of its
        // quirk aliases, or the bridge alias of a bridge it is now joined to, so comparing
        // these "claims" of each function covers every alias of every function.
        let mut own = [0u32; N];
        for (i, key) in own.iter_mut().enumerate().take(len) {
            let bdf = topology.functions()[i].bdf();
            *key = rid_key(bdf.segment, bdf.routing_id().0);
            if extra_claims(topology, index(i)).next().is_some() {
                facts[i] |= HAS_EXTRA_RID;
            }
        }
        for i in 1..len {
            if let Some(j) = (0..i).find(|&j| own[j] == own[i]) {
                uf.union(i, j, Causes::SHARED_RID);
            }
        }
        for i in (0..len).filter(|&i| facts[i] & HAS_EXTRA_RID != 0) {
            for key in extra_claims(topology, index(i)) {
                for j in (0..len).filter(|&j| j != i) {
                    let claims = own[j] == key
                        || (facts[j] & HAS_EXTRA_RID != 0
                            && extra_claims(topology, index(j)).any(|k| k == key));
                    if claims {
                        uf.union(i, j, Causes::SHARED_RID);
                    }
                }
            }
        }

        // Rule (b): functions of one device.
        for (i, fact) in facts.iter_mut().enumerate().take(len) {
            let key = device_key(topology, index(i));
            if (0..len).any(|j| j != i && device_key(topology, index(j)) == key) {
                *fact |= HAS_PEER;
            }
        }
        for i in (0..len).filter(|&i| facts[i] & HAS_PEER != 0) {
            if acs_enabled(topology, index(i), true) {
                continue;
            }
            let key = device_key(topology, index(i));
            for j in (0..len).filter(|&j| device_key(topology, index(j)) == key) {
                uf.union(i, j, Causes::MULTI_FUNCTION);
            }
        }

        // Rules (c) and (c'): what each bridge lets through, then every function joins the
        // bridges above it that spoil their subtree.
        for i in 0..len {
            let f = &topology.functions()[i];
            // A function that is not a bridge has nothing below it in a consistent snapshot; if
            // something claims to be, how it forwards is unknown, so it is not trusted.
            if !f.kind.is_bridge() || !acs_enabled(topology, index(i), facts[i] & HAS_PEER != 0) {
                facts[i] |= SPOILS_BELOW;
            }
            let Some(p) = f.parent.filter(|&p| valid(p)) else { continue };
            let on_switch_bus =
                topology.functions()[usize::from(p.0)].kind == FunctionKind::SwitchUpstream;
            let isolated_port =
                f.kind == FunctionKind::SwitchDownstream && acs_enabled(topology, index(i), false);
            if on_switch_bus && !isolated_port {
                facts[usize::from(p.0)] |= SPOILS_SWITCH;
            }
        }
        for i in 0..len {
            for a in topology.upstream(index(i)).filter(|&a| valid(a)) {
                let a = usize::from(a.0);
                if facts[a] & SPOILS_BELOW != 0 {
                    uf.union(i, a, Causes::BRIDGE);
                }
                if facts[a] & SPOILS_SWITCH != 0 {
                    uf.union(i, a, Causes::SWITCH);
                }
            }
        }

        Self::from_partition(topology, &mut uf)
    }

    /// Numbers the groups in ID order and lays out their members.
    fn from_partition(topology: &Topology<N>, uf: &mut UnionFind<N>) -> Self {
        let len = topology.len();
        let mut groups = Self {
            functions: len,
            count: 0,
            bdfs: [Bdf { segment: 0, bus: 0, devfn: 0 }; N],
            group_of: [0; N],
            members: [0; N],
            start: [0; N],
            causes: [Causes::default(); N],
        };
        for i in 0..len {
            groups.bdfs[i] = topology.functions()[i].bdf();
            let root = uf.find(i);
            // CAST: root < len (see UnionFind::new).
            uf.parent[i] = root as u16;
            // CAST: as above.
            groups.members[i] = i as u16;
        }
        // `group_of` first holds, per root, its smallest member by (BDF, index). A root is the
        // smallest index of its set (UnionFind::union), so it is visited first and sets the slot.
        let key = |bdfs: &[Bdf; N], i: u16| (bdfs[usize::from(i)], i);
        for i in 0..len {
            let root = usize::from(uf.parent[i]);
            // CAST: i < len.
            let i = i as u16;
            if usize::from(i) == root
                || key(&groups.bdfs, i) < key(&groups.bdfs, groups.group_of[root])
            {
                groups.group_of[root] = i;
            }
        }
        let (bdfs, smallest, roots) = (&groups.bdfs, &groups.group_of, &uf.parent);
        groups.members[..len].sort_unstable_by(|&a, &b| {
            let group = |i: u16| key(bdfs, smallest[usize::from(roots[usize::from(i)])]);
            (group(a), key(bdfs, a)).cmp(&(group(b), key(bdfs, b)))
        });
        let mut previous_root = None;
        for pos in 0..len {
            let i = usize::from(groups.members[pos]);
            let root = uf.parent[i];
            if previous_root != Some(root) {
                previous_root = Some(root);
                // CAST: pos < len.
                groups.start[groups.count] = pos as u16;
                groups.causes[groups.count] = Causes(uf.causes[usize::from(root)]);
                groups.count += 1;
            }
        }
        // Now `group_of` becomes what it says; walking `members` keeps it consistent.
        for g in 0..groups.count {
            for pos in groups.range(g) {
                // CAST: g < count <= len.
                groups.group_of[usize::from(groups.members[pos])] = g as u16;
            }
        }
        groups
    }

    fn range(&self, g: usize) -> core::ops::Range<usize> {
        let end = if g + 1 < self.count { usize::from(self.start[g + 1]) } else { self.functions };
        usize::from(self.start[g])..end
    }

    fn id_at(&self, g: usize) -> GroupId {
        GroupId(self.bdfs[usize::from(self.members[usize::from(self.start[g])])])
    }

    fn position(&self, id: GroupId) -> Option<usize> {
        // Positions are in ID order.
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.id_at(mid).cmp(&id) {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
                core::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no groups (an empty snapshot).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of functions covered (the snapshot's length when computed).
    pub fn function_count(&self) -> usize {
        self.functions
    }

    /// The address of the function at `index`, as it was when the groups were computed.
    pub fn bdf(&self, index: FunctionIndex) -> Option<Bdf> {
        (usize::from(index.0) < self.functions).then(|| self.bdfs[usize::from(index.0)])
    }

    /// The group of the function at `index`.
    pub fn group_of(&self, index: FunctionIndex) -> Option<GroupId> {
        let i = usize::from(index.0);
        (i < self.functions).then(|| self.id_at(usize::from(self.group_of[i])))
    }

    /// Whether `a` and `b` are in one group.
    pub fn same_group(&self, a: FunctionIndex, b: FunctionIndex) -> bool {
        matches!((self.group_of(a), self.group_of(b)), (Some(x), Some(y)) if x == y)
    }

    /// The group `id`, if there is one.
    pub fn get(&self, id: GroupId) -> Option<Group<'_, N>> {
        self.position(id).map(|position| Group { groups: self, position })
    }

    /// Every group, in ID order.
    pub fn iter(&self) -> impl Iterator<Item = Group<'_, N>> + '_ {
        (0..self.count).map(|position| Group { groups: self, position })
    }

    /// The members of group `id` in BDF order (empty if there is no such group).
    pub fn members(&self, id: GroupId) -> impl Iterator<Item = FunctionIndex> + '_ {
        let range = self.position(id).map_or(0..0, |g| self.range(g));
        self.members[range].iter().map(|&i| FunctionIndex(i))
    }

    /// Every RID that must map to the domain group `id` is attached to: the aliases of all its
    /// members, each once (the first member and reason that produce it), in member order.
    /// `topology` must be the snapshot the groups were computed from.
    pub fn aliases<'a>(
        &'a self,
        topology: &'a Topology<N>,
        id: GroupId,
    ) -> impl Iterator<Item = Alias> + 'a {
        let all = move || self.members(id).flat_map(move |m| alias::aliases(topology, m));
        all()
            .enumerate()
            .filter(move |(k, a)| !all().take(*k).any(|b| b.same_rid(a)))
            .map(|(_, a)| a)
    }
}

/// One group, borrowed from [`Groups`].
#[derive(Clone, Copy, Debug)]
pub struct Group<'a, const N: usize> {
    groups: &'a Groups<N>,
    position: usize,
}

impl<'a, const N: usize> Group<'a, N> {
    /// Its ID (smallest member BDF).
    pub fn id(&self) -> GroupId {
        self.groups.id_at(self.position)
    }

    /// Its members, in BDF order.
    pub fn members(&self) -> impl Iterator<Item = FunctionIndex> + 'a {
        self.groups.members[self.groups.range(self.position)].iter().map(|&i| FunctionIndex(i))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.groups.range(self.position).len()
    }

    /// Whether it has no members (never true for a group of [`Groups`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rules that joined its members.
    pub fn causes(&self) -> Causes {
        self.groups.causes[self.position]
    }

    /// Every RID that must map to its domain; see [`Groups::aliases`].
    pub fn aliases(&self, topology: &'a Topology<N>) -> impl Iterator<Item = Alias> + 'a {
        self.groups.aliases(topology, self.id())
    }
}

/// A RID with its segment, as one comparable number.
const fn rid_key(segment: u16, rid: u16) -> u32 {
    (segment as u32) << 16 | rid as u32
}

/// The RIDs a function claims besides its own: its quirk aliases, and, for a bridge, the alias
/// it puts on what it forwards (which depends on the bridge alone, see
/// [`alias::bridge_alias`]).
fn extra_claims<const N: usize>(
    topology: &Topology<N>,
    index: FunctionIndex,
) -> impl Iterator<Item = u32> + '_ {
    let f = topology.get(index);
    let quirk = f.into_iter().flat_map(|f| {
        let bdf = f.bdf();
        quirks::dma_alias_devfns(f.id.vendor, f.id.device, bdf.devfn)
            .map(move |(devfn, _)| rid_key(bdf.segment, u16::from(bdf.bus) << 8 | u16::from(devfn)))
    });
    quirk.chain(alias::bridge_alias(topology, index).map(|a| rid_key(a.segment, a.rid.0)))
}

/// The PF of a VF, if `index` is a VF whose PF is a valid, non-VF function.
fn physical_function<const N: usize>(
    topology: &Topology<N>,
    index: FunctionIndex,
) -> Option<FunctionIndex> {
    let pf = topology.get(index)?.physical_function.filter(|&pf| pf != index)?;
    topology.get(pf).filter(|p| p.physical_function.is_none()).map(|_| pf)
}

/// Which device a function belongs to, for rule (b): segment, bus and device number, or the
/// whole bus below a link (marked with 0xff, which no device number takes). A VF belongs to its
/// PF's device.
fn device_key<const N: usize>(topology: &Topology<N>, index: FunctionIndex) -> u32 {
    let base = physical_function(topology, index).unwrap_or(index);
    let Some(f) = topology.get(base) else { return u32::MAX };
    let on_link = f.parent.and_then(|p| topology.get(p)).is_some_and(|p| {
        matches!(
            p.kind,
            FunctionKind::RootPort | FunctionKind::SwitchDownstream | FunctionKind::PciToPcieBridge
        )
    });
    let bdf = f.bdf();
    let dev = if on_link { 0xff } else { u32::from(bdf.dev()) };
    u32::from(bdf.segment) << 16 | u32::from(bdf.bus) << 8 | dev
}

/// Linux `pci_acs_enabled(pdev, REQ_ACS_FLAGS)`: whether the function keeps peer-to-peer from
/// bypassing the IOMMU, as a port on the path (root and downstream ports) or towards the other
/// functions of its device (`has_peer`; a function alone in its device has no peer to reach).
fn acs_enabled<const N: usize>(
    topology: &Topology<N>,
    index: FunctionIndex,
    has_peer: bool,
) -> bool {
    let Some(f) = topology.get(index) else { return false };
    // Linux `pci_dev_specific_acs_enabled` comes first, whatever the type.
    if quirks::acs_equivalent(f.id.vendor, f.id.device) {
        return true;
    }
    match f.kind {
        // PCIe 6.0 §6.12.1 never applies ACS to bridges to or from PCI, nor to event collectors;
        // conventional PCI shares its bus. Linux returns false for all of these.
        FunctionKind::PcieToPciBridge
        | FunctionKind::PciToPcieBridge
        | FunctionKind::RootComplexEventCollector
        | FunctionKind::ConventionalEndpoint
        | FunctionKind::ConventionalBridge
        | FunctionKind::Other => false,
        FunctionKind::RootPort | FunctionKind::SwitchDownstream => f.acs.is_some_and(acs_isolates),
        FunctionKind::PcieEndpoint
        | FunctionKind::RootComplexEndpoint
        | FunctionKind::SwitchUpstream => !has_peer || function_isolated(topology, index),
    }
}

/// Whether a function of a multi-function device (or a VF) isolates itself from its peers.
fn function_isolated<const N: usize>(topology: &Topology<N>, index: FunctionIndex) -> bool {
    let Some(f) = topology.get(index) else { return false };
    if let Some(acs) = f.acs {
        return acs_isolates(acs);
    }
    // A VF without an ACS capability of its own: what its PF enforces for the device.
    physical_function(topology, index).and_then(|pf| topology.get(pf)).is_some_and(|p| {
        quirks::acs_equivalent(p.id.vendor, p.id.device) || p.acs.is_some_and(acs_isolates)
    })
}

/// An IOMMU domain, as the attach guard sees it (opaque).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DomainId(pub u32);

/// Which domain each function is attached to, refusing any attach that would put two members
/// of one group in different domains (the IOMMU cannot keep them apart, so they must share an
/// address space).
///
/// A function is attached to at most one domain; moving it needs a detach first, so the state
/// after any set of successful attaches does not depend on their order.
#[derive(Clone, Debug)]
pub struct GroupAttachments<const N: usize> {
    domains: [Option<DomainId>; N],
}

impl<const N: usize> Default for GroupAttachments<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> GroupAttachments<N> {
    /// Nothing attached.
    pub const fn new() -> Self {
        Self { domains: [None; N] }
    }

    /// Attaches the function at `index` to `domain`.
    ///
    /// Attaching again to the same domain is a no-op. [`Error::GroupSplit`] if the function or
    /// another member of its group is attached to a different domain (the member named is the
    /// first in BDF order); [`Error::BadReference`] if `index` is not a function of `groups`.
    pub fn attach(
        &mut self,
        groups: &Groups<N>,
        index: FunctionIndex,
        domain: DomainId,
    ) -> Result<()> {
        let i = usize::from(index.0);
        let (Some(bdf), Some(group)) = (groups.bdf(index), groups.group_of(index)) else {
            return Err(Error::BadReference { what: "function index", value: u64::from(index.0) });
        };
        let split = |member: usize, member_domain: DomainId| Error::GroupSplit {
            function: bdf,
            domain: domain.0,
            member: groups.bdfs[member],
            member_domain: member_domain.0,
        };
        if let Some(current) = self.domains[i].filter(|&d| d != domain) {
            return Err(split(i, current));
        }
        for m in groups.members(group).map(|m| usize::from(m.0)) {
            if let Some(other) = self.domains[m].filter(|&d| d != domain) {
                return Err(split(m, other));
            }
        }
        self.domains[i] = Some(domain);
        Ok(())
    }

    /// Detaches the function at `index`, returning the domain it was attached to.
    pub fn detach(&mut self, index: FunctionIndex) -> Option<DomainId> {
        self.domains.get_mut(usize::from(index.0)).and_then(Option::take)
    }

    /// The domain the function at `index` is attached to.
    pub fn domain_of(&self, index: FunctionIndex) -> Option<DomainId> {
        self.domains.get(usize::from(index.0)).copied().flatten()
    }

    /// The domain group `id` is attached to, through any of its members.
    pub fn group_domain(&self, groups: &Groups<N>, id: GroupId) -> Option<DomainId> {
        groups.members(id).find_map(|m| self.domain_of(m))
    }

    /// Checks the attachments against `groups` (for example groups recomputed after a hot-plug
    /// event): [`Error::GroupSplit`] names the first group, in ID order, whose attached members
    /// are in different domains.
    pub fn check(&self, groups: &Groups<N>) -> Result<()> {
        for group in groups.iter() {
            let mut first: Option<(FunctionIndex, DomainId)> = None;
            for m in group.members() {
                let Some(d) = self.domain_of(m) else { continue };
                match first {
                    None => first = Some((m, d)),
                    Some((f, fd)) if fd != d => {
                        let bdf = |i: FunctionIndex| groups.bdfs[usize::from(i.0)];
                        return Err(Error::GroupSplit {
                            function: bdf(m),
                            domain: d.0,
                            member: bdf(f),
                            member_domain: fd.0,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

/// Builders of snapshot functions for the tests of this module and of [`alias`].
#[cfg(test)]
pub(crate) mod testutil {
    use crate::addr::Bdf;
    use crate::pci::ecam::FunctionId;
    use crate::pci::topology::{
        Acs, BusRange, Capabilities, Function, FunctionIndex, FunctionKind,
    };

    /// QEMU `pcie-root-port`'s ACS Capability (notes §3.5), with the isolation controls on (as
    /// enumeration leaves them) or off (as reset leaves them).
    pub(crate) const ACS_ON: Acs = Acs { capability: 0x5f, control: super::REQUIRED_ACS };
    pub(crate) const ACS_OFF: Acs = Acs { capability: 0x5f, control: 0 };

    pub(crate) fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
        Bdf::new(0, bus, dev, func).unwrap()
    }

    pub(crate) fn function(
        kind: FunctionKind,
        bus: u8,
        dev: u8,
        func: u8,
        parent: Option<FunctionIndex>,
    ) -> Function {
        let header_type = u8::from(kind.is_bridge());
        Function {
            id: FunctionId {
                bdf: bdf(bus, dev, func),
                vendor: 0x1234,
                device: 0x11e8,
                class: 0xff_0000,
                revision: 0,
                header_type,
            },
            kind,
            parent,
            bus_range: None,
            caps: Capabilities::default(),
            acs: None,
            multi_function: false,
            ari_forwarding: false,
            physical_function: None,
            bars: [None; 6],
        }
    }

    pub(crate) fn endpoint(bus: u8, dev: u8, func: u8, parent: Option<FunctionIndex>) -> Function {
        function(FunctionKind::PcieEndpoint, bus, dev, func, parent)
    }

    pub(crate) fn conventional(
        bus: u8,
        dev: u8,
        func: u8,
        parent: Option<FunctionIndex>,
    ) -> Function {
        function(FunctionKind::ConventionalEndpoint, bus, dev, func, parent)
    }

    pub(crate) fn bridge(
        kind: FunctionKind,
        bus: u8,
        dev: u8,
        func: u8,
        secondary: u8,
        parent: Option<FunctionIndex>,
        acs: Option<Acs>,
    ) -> Function {
        let mut f = function(kind, bus, dev, func, parent);
        f.bus_range = Some(BusRange { secondary, subordinate: secondary });
        f.acs = acs;
        f
    }

    pub(crate) fn root_port(
        bus: u8,
        dev: u8,
        func: u8,
        secondary: u8,
        acs: Option<Acs>,
    ) -> Function {
        bridge(FunctionKind::RootPort, bus, dev, func, secondary, None, acs)
    }

    pub(crate) fn pcie_to_pci(
        bus: u8,
        dev: u8,
        func: u8,
        secondary: u8,
        parent: Option<FunctionIndex>,
    ) -> Function {
        bridge(FunctionKind::PcieToPciBridge, bus, dev, func, secondary, parent, None)
    }

    pub(crate) fn conventional_bridge(
        bus: u8,
        dev: u8,
        func: u8,
        secondary: u8,
        parent: Option<FunctionIndex>,
    ) -> Function {
        bridge(FunctionKind::ConventionalBridge, bus, dev, func, secondary, parent, None)
    }

    pub(crate) fn with_id(mut f: Function, vendor: u16, device: u16) -> Function {
        f.id.vendor = vendor;
        f.id.device = device;
        f
    }

    pub(crate) fn with_acs(mut f: Function, acs: Acs) -> Function {
        f.acs = Some(acs);
        f
    }

    pub(crate) fn vf(
        bus: u8,
        dev: u8,
        func: u8,
        parent: Option<FunctionIndex>,
        pf: FunctionIndex,
    ) -> Function {
        let mut f = endpoint(bus, dev, func, parent);
        f.physical_function = Some(pf);
        f
    }
}

#[cfg(test)]
mod tests;
