//! A configuration-space model of a PCIe hierarchy, [`Topology`], that answers
//! [`ConfigAccess`] like hardware seen through ECAM.
//!
//! Routing follows PCIe Base 6.0 §7.3.1 and the PCI-to-PCI Bridge spec: an access to the root
//! bus reaches the root bus's slots; any other bus number goes down through the bridge whose
//! *programmed* `[secondary, subordinate]` range holds it and becomes a type 0 access on the
//! bridge whose secondary bus it is. Devices behind a bridge whose bus numbers are not
//! programmed are unreachable, and move when software reprograms them. SR-IOV VFs appear at
//! `PF RID + First VF Offset + i * VF Stride` once VF Enable is set.
//!
//! ```
//! use pcie_iommu::pci::ConfigAccess;
//! use pcie_iommu::sim::pci::{Bar, Bridge, Function, SrIov, Topology, ACS_ALL};
//! use pcie_iommu::Bdf;
//!
//! let t = Topology::builder()
//!     .device(0, 0, Function::host_bridge(0x8086, 0x29c0))
//!     .bridge(2, 0, Bridge::root_port().acs(ACS_ALL).name("rp"), |b| {
//!         b.device(0, 0, Function::endpoint(0x8086, 0x10c9, 0x02_0000).name("igb")
//!             .bar(0, Bar::mem32(128 << 10))
//!             .sriov(SrIov::new(8).offset_stride(0x80, 2).vf_device(0x10ca)
//!                 .vf_bar(0, Bar::mem64(16 << 10, true))))
//!     })
//!     .build();
//! let igb = Bdf::new(0, 1, 0, 0).unwrap();
//! assert_eq!(t.read32(igb, 0), u32::MAX); // bus 1 is not routed yet
//! t.program_bus_numbers();
//! assert_eq!(t.read32(igb, 0), 0x10c9_8086);
//! ```

use crate::sim::std;
mod builder;
mod caps;
mod layout;
mod presets;
mod space;
#[cfg(test)]
mod tests;

use core::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

pub use builder::{Bridge, BusBuilder, Function, TopologyBuilder};
pub use caps::{
    ACS_ALL, Bar, BarKind, Capability, PcieCap, PortType, SrIov, VfRouting, acs, cap_id,
};

use builder::{Item, Slot};
use layout::{Header, Layout, pcie_reg, pri_reg, sriov_reg};
use space::Space;

use crate::addr::Bdf;
use crate::pci::config::{AccessCounts, ConfigAccess, reg};

/// Identifies a function of the model: a physical function (a node of the tree) or VF `index`
/// (0-based) of a PF. Stable for the topology's lifetime, whatever bus numbers are programmed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FnId {
    node: usize,
    vf: Option<u16>,
}

impl FnId {
    /// The physical function: itself, or a VF's PF.
    pub const fn pf(self) -> FnId {
        FnId { node: self.node, vf: None }
    }
    /// VF `index` of this PF.
    pub const fn vf(self, index: u16) -> FnId {
        FnId { node: self.node, vf: Some(index) }
    }
    /// The VF index, if a VF.
    pub const fn vf_index(self) -> Option<u16> {
        self.vf
    }
    /// Whether it is a VF.
    pub const fn is_vf(self) -> bool {
        self.vf.is_some()
    }
}

/// The model's truth about one function, for comparing a driver's enumeration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Identity in the model.
    pub id: FnId,
    /// The name given at build (presets name everything).
    pub name: Option<String>,
    /// Segment.
    pub segment: u16,
    /// Where a configuration access reaches it now; `None` when no route leads there (bus
    /// numbers unprogrammed, a VF past bus 255, shadowed by an overlap, not present).
    pub bdf: Option<Bdf>,
    /// The bridge on whose secondary side it sits (`None`: the root bus). A VF's is its PF's.
    pub parent: Option<FnId>,
    /// Its device/function on its bus; for a VF, the low byte of its RID.
    pub devfn: u8,
    /// Vendor ID as built (a VF: the PF's, though its register reads 0xffff).
    pub vendor: u16,
    /// Device ID as built (a VF: the SR-IOV VF Device ID).
    pub device: u16,
    /// Class code.
    pub class: u32,
    /// Type 1 header.
    pub is_bridge: bool,
    /// Device/Port Type of its PCIe capability, if it has one.
    pub port_type: Option<PortType>,
    /// Present (see [`Topology::set_present`]).
    pub present: bool,
}

/// Every function the model holds, depth-first in slot order, each VF after its PF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Physical functions (present or not) and the VFs enabled now.
    pub functions: Vec<FunctionInfo>,
}

impl Snapshot {
    /// The entry of `id`.
    pub fn get(&self, id: FnId) -> Option<&FunctionInfo> {
        self.functions.iter().find(|f| f.id == id)
    }
    /// The first entry named `name`.
    pub fn by_name(&self, name: &str) -> Option<&FunctionInfo> {
        self.functions.iter().find(|f| f.name.as_deref() == Some(name))
    }
    /// The functions a configuration access reaches now.
    pub fn reachable(&self) -> impl Iterator<Item = &FunctionInfo> {
        self.functions.iter().filter(|f| f.bdf.is_some())
    }
    /// Their addresses, sorted: what a correct enumeration finds.
    pub fn reachable_bdfs(&self) -> Vec<Bdf> {
        let mut v: Vec<Bdf> = self.reachable().filter_map(|f| f.bdf).collect();
        v.sort();
        v
    }
    /// The functions directly below `parent` (`None`: a root bus).
    pub fn children(&self, parent: Option<FnId>) -> impl Iterator<Item = &FunctionInfo> {
        self.functions.iter().filter(move |f| f.parent == parent)
    }
}

/// A function's mutable state: its config image and the model of its PRI.
#[derive(Clone, Debug)]
struct FuncState {
    space: Space,
    /// Page requests issued and not yet answered (PCIe Base 6.0 §10.4).
    pri_outstanding: u32,
    /// A hostile device: Stopped never comes (see [`Topology::pri_never_stop`]).
    pri_never_stop: bool,
}

impl FuncState {
    fn new(layout: &Layout) -> FuncState {
        FuncState { space: layout.image.clone(), pri_outstanding: 0, pri_never_stop: false }
    }
}

/// The VFs of a PF: their shared layout and the state of those that have been touched.
#[derive(Clone, Debug)]
struct VfSet {
    layout: Layout,
    states: BTreeMap<u16, FuncState>,
    settle_left: u32,
}

#[derive(Clone, Debug)]
struct Node {
    name: Option<String>,
    segment: u16,
    parent: Option<usize>,
    devfn: u8,
    children: Vec<usize>,
    layout: Layout,
    state: FuncState,
    present: bool,
    vfs: Option<VfSet>,
    vendor: u16,
    device: u16,
    class: u32,
}

impl Node {
    fn sec_sub(&self) -> (u8, u8) {
        let s = &self.state.space;
        // CAST: one byte each.
        (s.get(reg::SECONDARY_BUS, 1) as u8, s.get(reg::SUBORDINATE_BUS, 1) as u8)
    }

    /// Whether the bus below is conventional PCI (no extended config space crosses it).
    fn secondary_conventional(&self) -> bool {
        self.layout.pcie.is_none_or(|(_, p)| p.port_type == PortType::PcieToPciBridge)
    }

    /// A Downstream Port with ARI forwarding off delivers type 0 requests only to device 0
    /// (PCIe Base 6.0 §7.3.1).
    fn blocks_device(&self, dev: u8) -> bool {
        match self.layout.pcie {
            Some((c, p)) if p.port_type.is_downstream_port() && dev != 0 => {
                self.state.space.get(c + pcie_reg::DEVCTL2, 2)
                    & u32::from(pcie_reg::DEVCTL2_ARI_FORWARDING)
                    == 0
            }
            _ => false,
        }
    }

    /// VFs answering now.
    fn visible_vfs(&self) -> u16 {
        let (Some((c, sr)), Some(vs)) = (&self.layout.sriov, &self.vfs) else { return 0 };
        let s = &self.state.space;
        if !self.present
            || vs.settle_left > 0
            || s.get(c + sriov_reg::CONTROL, 2) & u32::from(sriov_reg::VF_ENABLE) == 0
        {
            return 0;
        }
        // CAST: a 16-bit register. NumVFs above TotalVFs is undefined (§9.3.3.7); the model
        // creates at most TotalVFs.
        (s.get(c + sriov_reg::NUM_VFS, 2) as u16).min(sr.total_vfs)
    }

    /// The RID of VF `i` when this PF sits on bus `bus`; `None` past 0xffff.
    fn vf_rid(&self, bus: u8, i: u16) -> Option<u16> {
        let (c, _) = self.layout.sriov.as_ref()?;
        let s = &self.state.space;
        let base = u32::from(bus) << 8 | u32::from(self.devfn);
        let rid = base
            + s.get(c + sriov_reg::FIRST_VF_OFFSET, 2)
            + u32::from(i) * s.get(c + sriov_reg::VF_STRIDE, 2);
        u16::try_from(rid).ok()
    }

    /// Which VF (if any) has RID `rid` when this PF sits on bus `bus`; also whether several do
    /// (VF Stride 0).
    fn vf_at(&self, bus: u8, rid: u16) -> Option<(u16, bool)> {
        let n = self.visible_vfs();
        let (c, _) = self.layout.sriov.as_ref()?;
        if n == 0 {
            return None;
        }
        let s = &self.state.space;
        let base = u32::from(bus) << 8 | u32::from(self.devfn);
        let delta = u32::from(rid).checked_sub(base + s.get(c + sriov_reg::FIRST_VF_OFFSET, 2))?;
        let stride = s.get(c + sriov_reg::VF_STRIDE, 2);
        if stride == 0 {
            return (delta == 0).then_some((0, n > 1));
        }
        let i = delta / stride;
        // CAST: i < n <= u16::MAX.
        (delta % stride == 0 && i < u32::from(n)).then_some((i as u16, false))
    }
}

/// Where an access lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hit {
    Pf(usize),
    Vf(usize, u16),
}

#[derive(Clone, Copy, Debug)]
struct Routed {
    hit: Hit,
    /// The path crossed a conventional PCI bus: only 256 bytes of config space are reachable.
    conventional: bool,
}

#[derive(Clone, Debug)]
struct Segment {
    number: u16,
    root_bus: u8,
    bus_range: (u8, u8),
    roots: Vec<usize>,
}

/// A PCIe hierarchy (one or more segments) answering configuration accesses; see the module
/// documentation. Build one with [`Topology::builder`] or a preset
/// ([`qemu_q35_rich`](Topology::qemu_q35_rich), [`qemu_virt`](Topology::qemu_virt)).
///
/// It works through `&self` (interior mutability), is not `Sync`, and never panics on what a
/// driver writes.
#[derive(Debug)]
pub struct Topology {
    segments: Vec<Segment>,
    nodes: RefCell<Vec<Node>>,
    counts: Cell<AccessCounts>,
    absent: Cell<AccessCounts>,
    overlap: Cell<bool>,
    ari_rule: bool,
    /// Fault injection: the function removed once it answered this many more reads.
    vanish: Cell<Option<(FnId, u64)>>,
}

/// The bits of `value` (written at `off`, `len` bytes) that land in the `n`-byte register at
/// `at`, as that register's value (zero where the write did not reach).
fn written(off: u16, len: u8, value: u32, at: u16, n: u8) -> u32 {
    (0..u16::from(n)).fold(0, |acc, i| {
        let abs = at + i;
        if abs >= off && abs < off + u16::from(len) {
            acc | ((value >> (8 * (abs - off))) & 0xff) << (8 * i)
        } else {
            acc
        }
    })
}

fn touches(off: u16, len: u8, at: u16, n: u16) -> bool {
    off < at + n && at < off + u16::from(len)
}

fn ones(len: u8) -> u32 {
    if len >= 4 { u32::MAX } else { (1u32 << (8 * u32::from(len))) - 1 }
}

/// A software write to one function, with the side effects hardware has.
fn write_func(layout: &Layout, st: &mut FuncState, off: u16, len: u8, value: u32) {
    let pri_before = layout.pri.map(|p| st.space.get(p + pri_reg::CONTROL, 2));
    st.space.write(off, len, value);
    // Initiate FLR (PCIe Base 6.0 §6.6.2): the function returns to its reset state.
    if let Some((c, p)) = layout.pcie
        && p.flr
        && !layout.is_bridge
        && written(off, len, value, c + pcie_reg::DEVCTL, 2) & u32::from(pcie_reg::DEVCTL_FLR) != 0
    {
        *st = FuncState::new(layout);
        return;
    }
    if let (Some(p), Some(before)) = (layout.pri, pri_before)
        && touches(off, len, p + pri_reg::CONTROL, 2)
    {
        let now = st.space.get(p + pri_reg::CONTROL, 2);
        let enable = u32::from(pri_reg::ENABLE);
        // Reset, written with Enable clear or being cleared, drops every outstanding request
        // (§10.5.2.2); with Enable set its effect is undefined and the model ignores it.
        if written(off, len, value, p + pri_reg::CONTROL, 2) & u32::from(pri_reg::RESET) != 0
            && now & enable == 0
        {
            st.pri_outstanding = 0;
        }
        if now & enable != 0 && before & enable == 0 {
            st.space.clear_bits(p + pri_reg::STATUS, 2, u32::from(pri_reg::STOPPED));
        }
        pri_update_stopped(layout, st);
    }
}

/// Stopped: Enable clear and every issued request completed (PCIe Base 6.0 §10.5.2.3).
fn pri_update_stopped(layout: &Layout, st: &mut FuncState) {
    let Some(p) = layout.pri else { return };
    let enabled = st.space.get(p + pri_reg::CONTROL, 2) & u32::from(pri_reg::ENABLE) != 0;
    if !enabled && st.pri_outstanding == 0 && !st.pri_never_stop {
        st.space.set_bits(p + pri_reg::STATUS, 2, u32::from(pri_reg::STOPPED));
    }
}

/// SR-IOV side effects of a write to the PF (PCIe Base 6.0 §9.3.3.3).
fn sriov_after_write(node: &mut Node, off: u16, len: u8, old_control: u32) {
    let (Some((c, sr)), Some(vs)) = (&node.layout.sriov, &mut node.vfs) else { return };
    let c = *c;
    let s = &mut node.state.space;
    let control = s.get(c + sriov_reg::CONTROL, 2);
    let enable = u32::from(sriov_reg::VF_ENABLE);
    if (control ^ old_control) & enable != 0 {
        // VFs come and go with VF Enable, and come up in their reset state.
        vs.states.clear();
        vs.settle_left = if control & enable != 0 { sr.settle_reads } else { 0 };
    }
    // NumVFs may only change while VF Enable is clear; the model ignores writes otherwise.
    s.set_wmask(c + sriov_reg::NUM_VFS, 2, if control & enable != 0 { 0 } else { 0xffff });
    if touches(off, len, c + sriov_reg::CONTROL, 2) || touches(off, len, c + sriov_reg::NUM_VFS, 2)
    {
        // First VF Offset and VF Stride follow NumVFs and ARI Capable Hierarchy (§9.3.3.9-10).
        // CAST: a 16-bit register.
        let num = s.get(c + sriov_reg::NUM_VFS, 2) as u16;
        let (o, st) = sr.offset_stride_for(num, control & u32::from(sriov_reg::ARI_CAPABLE) != 0);
        s.set(c + sriov_reg::FIRST_VF_OFFSET, 2, u32::from(o));
        s.set(c + sriov_reg::VF_STRIDE, 2, u32::from(st));
    }
    if touches(off, len, c + sriov_reg::SYSTEM_PAGE_SIZE, 4) {
        let page = s.get(c + sriov_reg::SYSTEM_PAGE_SIZE, 4);
        if page.is_power_of_two() {
            let bytes = 4096u64 << page.trailing_zeros();
            for (i, bar) in sr.vf_bars.iter().enumerate() {
                let Some(bar) = bar else { continue };
                // CAST: at most 6 BARs.
                let at = c + sriov_reg::VF_BAR0 + 4 * i as u16;
                let (lo, lo_mask, _, hi_mask) = bar.registers(layout::vf_bar_size(bar, bytes));
                s.set_wmask(at, 4, lo_mask);
                let v = (s.get(at, 4) & lo_mask) | lo;
                s.set(at, 4, v);
                if bar.is_64() {
                    s.set_wmask(at + 4, 4, hi_mask);
                    let v = s.get(at + 4, 4) & hi_mask;
                    s.set(at + 4, 4, v);
                }
            }
        }
    }
}

fn build(b: TopologyBuilder) -> Topology {
    let mut nodes = Vec::new();
    let mut segments = Vec::new();
    for seg in b.segments {
        assert!(
            seg.bus_range.0 <= seg.bus_range.1,
            "sim: segment {}: bus range {:?}",
            seg.number,
            seg.bus_range
        );
        let roots = add_bus(&mut nodes, seg.number, None, seg.bus.slots);
        segments.push(Segment {
            number: seg.number,
            root_bus: seg.root_bus,
            bus_range: seg.bus_range,
            roots,
        });
    }
    Topology {
        segments,
        nodes: RefCell::new(nodes),
        counts: Cell::new(AccessCounts::default()),
        absent: Cell::new(AccessCounts::default()),
        overlap: Cell::new(false),
        ari_rule: b.ari_rule,
        vanish: Cell::new(None),
    }
}

/// Adds one bus's slots (and everything below them) to `nodes`; returns their indices in
/// slot order.
fn add_bus(
    nodes: &mut Vec<Node>,
    segment: u16,
    parent: Option<usize>,
    mut slots: Vec<Slot>,
) -> Vec<usize> {
    for s in &slots {
        assert!(s.dev < 32 && s.func < 8, "sim: slot {}.{} does not exist", s.dev, s.func);
    }
    slots.sort_by_key(|s| (s.dev, s.func));
    for w in slots.windows(2) {
        assert!(
            (w[0].dev, w[0].func) != (w[1].dev, w[1].func),
            "sim: two functions at {}.{}",
            w[0].dev,
            w[0].func
        );
    }
    let per_dev = |dev: u8| slots.iter().filter(|s| s.dev == dev).count();
    let multis: Vec<bool> = slots.iter().map(|s| per_dev(s.dev) > 1).collect();
    let mut out = Vec::new();
    for (slot, auto_multi) in slots.into_iter().zip(multis) {
        let devfn = slot.dev << 3 | slot.func;
        let (f, header, below) = match slot.item {
            Item::Function(f) => (f, Header::Type0, None),
            Item::Bridge(br, bus) => {
                (br.f, Header::Type1 { io32: br.io32, pref64: br.pref64 }, Some(bus))
            }
        };
        let occupied = below.as_ref().is_some_and(|b| b.slots.iter().any(slot_present));
        let multi = f.multi_function.unwrap_or(auto_multi);
        let layout = layout::layout(&f, header, false, multi, occupied);
        let vfs = layout.sriov.as_ref().map(|(_, sr)| {
            let vf = Function {
                caps: sr.vf_caps.clone(),
                pokes: Vec::new(),
                name: None,
                multi_function: None,
                interrupt_pin: 0,
                ext_config: None,
                bars: [None; 6],
                rom: None,
                ..f.clone()
            };
            VfSet {
                layout: layout::layout(&vf, Header::Type0, true, false, false),
                states: BTreeMap::new(),
                settle_left: 0,
            }
        });
        let i = nodes.len();
        nodes.push(Node {
            name: f.name.clone(),
            segment,
            parent,
            devfn,
            children: Vec::new(),
            state: FuncState::new(&layout),
            layout,
            present: f.present,
            vfs,
            vendor: f.vendor,
            device: f.device,
            class: f.class,
        });
        if let Some(bus) = below {
            let children = add_bus(nodes, segment, Some(i), bus.slots);
            nodes[i].children = children;
        }
        out.push(i);
    }
    out
}

fn slot_present(s: &Slot) -> bool {
    match &s.item {
        Item::Function(f) => f.present,
        Item::Bridge(b, _) => b.f.present,
    }
}

impl Topology {
    /// Starts a topology: segment 0, root bus 0, buses 0-255, ARI forwarding rule enforced.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// Routes `bdf` through the programmed bus numbers. Returns the hit and whether an
    /// inconsistency (two bridges claiming one bus, a VF colliding with a function) was met.
    fn route(&self, nodes: &[Node], bdf: Bdf) -> (Option<Routed>, bool) {
        let Some(seg) = self.segments.iter().find(|s| s.number == bdf.segment) else {
            return (None, false);
        };
        if bdf.bus < seg.bus_range.0 || bdf.bus > seg.bus_range.1 {
            return (None, false);
        }
        let rid = bdf.routing_id().0;
        let mut list: &[usize] = &seg.roots;
        let mut bus = seg.root_bus;
        let mut via: Option<usize> = None;
        let mut conventional = false;
        let mut overlap = false;
        loop {
            // Devices consume configuration requests for their VFs' RIDs, on their own bus and
            // on the further buses their VFs use (PCIe Base 6.0 §9.2.1.2).
            let mut vf = None;
            for &i in list {
                if let Some((k, several)) = nodes[i].vf_at(bus, rid) {
                    overlap |= several || vf.is_some();
                    vf.get_or_insert(Hit::Vf(i, k));
                }
            }
            if bdf.bus == bus {
                if self.ari_rule && via.is_some_and(|v| nodes[v].blocks_device(bdf.dev())) {
                    return (None, overlap);
                }
                let pf =
                    list.iter().copied().find(|&i| nodes[i].present && nodes[i].devfn == bdf.devfn);
                if pf.is_some() && vf.is_some() {
                    overlap = true;
                }
                let hit = pf.map(Hit::Pf).or(vf);
                return (hit.map(|hit| Routed { hit, conventional }), overlap);
            }
            let mut bridges = list.iter().copied().filter(|&i| {
                let n = &nodes[i];
                let (sec, sub) = n.sec_sub();
                // A bridge with secondary 0 forwards nothing (its reset state).
                n.present && n.layout.is_bridge && sec != 0 && sec <= bdf.bus && bdf.bus <= sub
            });
            let Some(b) = bridges.next() else {
                return (vf.map(|hit| Routed { hit, conventional }), overlap);
            };
            if bridges.next().is_some() || vf.is_some() {
                overlap = true;
            }
            conventional |= nodes[b].secondary_conventional();
            bus = nodes[b].sec_sub().0;
            via = Some(b);
            list = &nodes[b].children;
        }
    }

    /// The bus number `node` currently sits on (its parent's secondary bus, or the root bus).
    fn bus_of(&self, nodes: &[Node], node: usize) -> u8 {
        match nodes[node].parent {
            Some(p) => nodes[p].sec_sub().0,
            None => self
                .segments
                .iter()
                .find(|s| s.number == nodes[node].segment)
                .map_or(0, |s| s.root_bus),
        }
    }

    fn count(&self, write: bool, absent: bool) {
        let bump = |c: &Cell<AccessCounts>| {
            let mut v = c.get();
            if write {
                v.writes += 1;
            } else {
                v.reads += 1;
            }
            c.set(v);
        };
        bump(&self.counts);
        if absent {
            bump(&self.absent);
        }
    }

    fn read(&self, bdf: Bdf, off: u16, len: u8) -> u32 {
        if let Some((id, left)) = self.vanish.get()
            && self.route_of(bdf) == Some(id)
        {
            if left == 0 {
                self.vanish.set(None);
                self.set_present(id, false);
            } else {
                self.vanish.set(Some((id, left - 1)));
            }
        }
        let value = {
            let nodes = self.nodes.borrow();
            let (r, overlap) = self.route(&nodes, bdf);
            if overlap {
                self.overlap.set(true);
            }
            r.map(|r| {
                let limit = if r.conventional { 0x100 } else { 0x1000 };
                let (layout, space) = match r.hit {
                    Hit::Pf(i) => (&nodes[i].layout, &nodes[i].state.space),
                    Hit::Vf(i, k) => {
                        // The VF exists, so the node has a VF set.
                        let Some(vs) = nodes[i].vfs.as_ref() else { return u32::MAX };
                        (&vs.layout, vs.states.get(&k).map_or(&vs.layout.image, |s| &s.space))
                    }
                };
                let limit = if layout.ext_config { limit } else { 0x100 };
                if !off.is_multiple_of(u16::from(len)) || off >= limit {
                    ones(len)
                } else {
                    space.get(off, len)
                }
            })
        };
        self.count(false, value.is_none());
        // VFs settle after a number of reads (the stand-in for time, §9.3.3.3.1).
        for n in self.nodes.borrow_mut().iter_mut() {
            if let Some(vs) = &mut n.vfs {
                vs.settle_left = vs.settle_left.saturating_sub(1);
            }
        }
        value.unwrap_or(ones(len))
    }

    fn write(&self, bdf: Bdf, off: u16, len: u8, value: u32) {
        let mut nodes = self.nodes.borrow_mut();
        let (r, overlap) = self.route(&nodes, bdf);
        if overlap {
            self.overlap.set(true);
        }
        self.count(true, r.is_none());
        let Some(r) = r else { return };
        if !off.is_multiple_of(u16::from(len)) || off >= 0x1000 || (r.conventional && off >= 0x100)
        {
            return;
        }
        match r.hit {
            Hit::Pf(i) => {
                let node = &mut nodes[i];
                if !node.layout.ext_config && off >= 0x100 {
                    return;
                }
                let old_control = node
                    .layout
                    .sriov
                    .as_ref()
                    .map_or(0, |(c, _)| node.state.space.get(c + sriov_reg::CONTROL, 2));
                write_func(&node.layout, &mut node.state, off, len, value);
                sriov_after_write(node, off, len, old_control);
            }
            Hit::Vf(i, k) => {
                let Some(vs) = nodes[i].vfs.as_mut() else { return };
                if !vs.layout.ext_config && off >= 0x100 {
                    return;
                }
                let layout = &vs.layout;
                let st = vs.states.entry(k).or_insert_with(|| FuncState::new(layout));
                write_func(layout, st, off, len, value);
            }
        }
    }

    /// Configuration accesses so far (reads and writes of any width).
    pub fn counts(&self) -> AccessCounts {
        self.counts.get()
    }

    /// Those of them that no function claimed (they read all-ones or were dropped).
    pub fn absent_counts(&self) -> AccessCounts {
        self.absent.get()
    }

    /// Zeroes both counters.
    pub fn reset_counts(&self) {
        self.counts.set(AccessCounts::default());
        self.absent.set(AccessCounts::default());
    }

    /// Whether any access met inconsistent routing: two bridges on one bus claiming the same
    /// bus number (the first in slot order won), or a VF colliding with another function.
    pub fn overlap_seen(&self) -> bool {
        self.overlap.get()
    }

    /// Clears [`overlap_seen`](Self::overlap_seen).
    pub fn clear_overlap(&self) {
        self.overlap.set(false);
    }

    /// The first physical function named `name`.
    pub fn find(&self, name: &str) -> Option<FnId> {
        self.nodes
            .borrow()
            .iter()
            .position(|n| n.name.as_deref() == Some(name))
            .map(|node| FnId { node, vf: None })
    }

    /// Where `id` is reached now (see [`FunctionInfo::bdf`]).
    pub fn bdf(&self, id: FnId) -> Option<Bdf> {
        let nodes = self.nodes.borrow();
        self.bdf_in(&nodes, id)
    }

    fn bdf_in(&self, nodes: &[Node], id: FnId) -> Option<Bdf> {
        let node = nodes.get(id.node)?;
        let bus = self.bus_of(nodes, id.node);
        let rid = match id.vf {
            None => u16::from(bus) << 8 | u16::from(node.devfn),
            Some(k) => {
                if k >= node.visible_vfs() {
                    return None;
                }
                node.vf_rid(bus, k)?
            }
        };
        let bdf = Bdf::from_routing_id(node.segment, rid);
        let want = match id.vf {
            None => Hit::Pf(id.node),
            Some(k) => Hit::Vf(id.node, k),
        };
        (self.route(nodes, bdf).0.map(|r| r.hit) == Some(want)).then_some(bdf)
    }

    /// What an access to `bdf` reaches now, without counting it or flagging overlaps.
    pub fn route_of(&self, bdf: Bdf) -> Option<FnId> {
        let nodes = self.nodes.borrow();
        self.route(&nodes, bdf).0.map(|r| match r.hit {
            Hit::Pf(node) => FnId { node, vf: None },
            Hit::Vf(node, k) => FnId { node, vf: Some(k) },
        })
    }

    /// The VFs of `pf` answering now.
    pub fn vfs(&self, pf: FnId) -> Vec<FnId> {
        let n = self.nodes.borrow().get(pf.node).map_or(0, Node::visible_vfs);
        (0..n).map(|k| pf.pf().vf(k)).collect()
    }

    /// Every function with its current address and its place in the tree.
    pub fn snapshot(&self) -> Snapshot {
        let nodes = self.nodes.borrow();
        let mut functions = Vec::new();
        for seg in &self.segments {
            self.snapshot_bus(&nodes, &seg.roots, &mut functions);
        }
        Snapshot { functions }
    }

    fn snapshot_bus(&self, nodes: &[Node], list: &[usize], out: &mut Vec<FunctionInfo>) {
        for &i in list {
            let n = &nodes[i];
            let id = FnId { node: i, vf: None };
            let parent = n.parent.map(|p| FnId { node: p, vf: None });
            out.push(FunctionInfo {
                id,
                name: n.name.clone(),
                segment: n.segment,
                bdf: self.bdf_in(nodes, id),
                parent,
                devfn: n.devfn,
                vendor: n.vendor,
                device: n.device,
                class: n.class,
                is_bridge: n.layout.is_bridge,
                port_type: n.layout.pcie.map(|(_, p)| p.port_type),
                present: n.present,
            });
            let bus = self.bus_of(nodes, i);
            for k in 0..n.visible_vfs() {
                let vid = id.vf(k);
                let vf_layout = n.vfs.as_ref().map(|v| &v.layout);
                out.push(FunctionInfo {
                    id: vid,
                    name: n.name.as_ref().map(|s| std::format!("{s}-vf{k}")),
                    segment: n.segment,
                    bdf: self.bdf_in(nodes, vid),
                    parent,
                    // CAST: the low byte of the RID.
                    devfn: n.vf_rid(bus, k).map_or(0, |r| r as u8),
                    vendor: n.vendor,
                    device: n.layout.sriov.as_ref().map_or(0, |(_, s)| s.vf_device),
                    class: n.class,
                    is_bridge: false,
                    port_type: vf_layout.and_then(|l| l.pcie).map(|(_, p)| p.port_type),
                    present: true,
                });
            }
            self.snapshot_bus(nodes, &n.children, out);
        }
    }

    /// Runs `f` on the state of `id` (a VF's is created if it is enabled); `None` if it does
    /// not exist.
    fn with_state<R>(&self, id: FnId, f: impl FnOnce(&Layout, &mut FuncState) -> R) -> Option<R> {
        let mut nodes = self.nodes.borrow_mut();
        let node = nodes.get_mut(id.node)?;
        match id.vf {
            None => Some(f(&node.layout, &mut node.state)),
            Some(k) => {
                if k >= node.visible_vfs() {
                    return None;
                }
                let vs = node.vfs.as_mut()?;
                let layout = &vs.layout;
                let st = vs.states.entry(k).or_insert_with(|| FuncState::new(layout));
                Some(f(layout, st))
            }
        }
    }

    /// Reads `id`'s config space directly (no routing, not counted); all-ones if it does not
    /// exist.
    pub fn peek32(&self, id: FnId, offset: u16) -> u32 {
        self.with_state(id, |_, st| st.space.get(offset, 4)).unwrap_or(u32::MAX)
    }

    /// 16-bit [`peek32`](Self::peek32).
    pub fn peek16(&self, id: FnId, offset: u16) -> u16 {
        // CAST: a 2-byte read.
        self.with_state(id, |_, st| st.space.get(offset, 2) as u16).unwrap_or(u16::MAX)
    }

    /// 8-bit [`peek32`](Self::peek32).
    pub fn peek8(&self, id: FnId, offset: u16) -> u8 {
        // CAST: a 1-byte read.
        self.with_state(id, |_, st| st.space.get(offset, 1) as u8).unwrap_or(u8::MAX)
    }

    /// Writes raw bytes into `id`'s config space, bypassing write masks and side effects (a
    /// hostile layout, or hardware changing under the driver). Not counted. Bus-number
    /// registers poked into a bridge take effect on routing at once.
    pub fn poke(&self, id: FnId, offset: u16, bytes: &[u8]) {
        self.with_state(id, |_, st| st.space.poke(offset, bytes));
    }

    /// Makes a physical function (and everything below it) appear or vanish: surprise removal
    /// and hot-add. A removed function reads all-ones.
    pub fn set_present(&self, id: FnId, present: bool) {
        if let (Some(n), None) = (self.nodes.borrow_mut().get_mut(id.node), id.vf) {
            n.present = present;
        }
    }

    /// Fault injection: physical function `id` answers `reads` more configuration reads (of any
    /// width), then vanishes (as [`set_present`](Self::set_present) with false): from the next
    /// read on, it and everything below it read all-ones, mid-way through whatever the driver
    /// was doing.
    pub fn vanish_after_reads(&self, id: FnId, reads: u64) {
        self.vanish.set(Some((id, reads)));
    }

    /// Offset where the model placed `id`'s legacy capability `cap_id` (first of that ID).
    pub fn legacy_cap(&self, id: FnId, cap_id: u8) -> Option<u16> {
        self.with_layout(id, |l| l.legacy.iter().find(|c| c.0 == cap_id).map(|c| c.1))?
    }

    /// Offset where the model placed `id`'s extended capability `cap_id` (first of that ID).
    pub fn ext_cap(&self, id: FnId, cap_id: u16) -> Option<u16> {
        self.with_layout(id, |l| l.extended.iter().find(|c| c.0 == cap_id).map(|c| c.1))?
    }

    fn with_layout<R>(&self, id: FnId, f: impl FnOnce(&Layout) -> R) -> Option<R> {
        let nodes = self.nodes.borrow();
        let node = nodes.get(id.node)?;
        match id.vf {
            None => Some(f(&node.layout)),
            Some(_) => node.vfs.as_ref().map(|v| f(&v.layout)),
        }
    }

    /// The function whose PRI carries `id`'s page requests: a VF without a PRI capability of its
    /// own uses its PF's (PCIe Base 6.0 §9.3.7.11), with the PF's allocation, Stopped and error
    /// state.
    fn pri_owner(&self, id: FnId) -> FnId {
        let own = self.with_layout(id, |l| l.pri.is_some()).unwrap_or(false);
        if id.is_vf() && !own { id.pf() } else { id }
    }

    /// The function issues up to `n` page requests (PCIe Base 6.0 §10.4.1): only while PRI is
    /// enabled, no Response Failure is pending, and within its Outstanding Page Request
    /// Allocation. Returns how many it issued. A VF issues through its PF's PRI (its requests
    /// count against the PF's allocation).
    pub fn pri_issue(&self, id: FnId, n: u32) -> u32 {
        self.with_state(self.pri_owner(id), |l, st| {
            let Some(p) = l.pri else { return 0 };
            let s = &st.space;
            let enabled = s.get(p + pri_reg::CONTROL, 2) & u32::from(pri_reg::ENABLE) != 0;
            let failed = s.get(p + pri_reg::STATUS, 2) & u32::from(pri_reg::RESPONSE_FAILURE) != 0;
            if !enabled || failed {
                return 0;
            }
            let room = s.get(p + pri_reg::ALLOCATION, 4).saturating_sub(st.pri_outstanding);
            let issued = n.min(room);
            st.pri_outstanding += issued;
            issued
        })
        .unwrap_or(0)
    }

    /// `n` outstanding page requests are answered (Success or Invalid Request). With Enable
    /// clear, Stopped is set once none remain. A VF's go to its PF's PRI.
    pub fn pri_complete(&self, id: FnId, n: u32) {
        self.with_state(self.pri_owner(id), |l, st| {
            st.pri_outstanding = st.pri_outstanding.saturating_sub(n);
            pri_update_stopped(l, st);
        });
    }

    /// A PRG Response with Response Failure arrives: the status bit is set and the function
    /// expects no further responses, so its outstanding requests are abandoned (§10.5.2.3).
    /// For a VF it lands in the PF's PRI: the PF and every sibling stop issuing.
    pub fn pri_response_failure(&self, id: FnId) {
        self.with_state(self.pri_owner(id), |l, st| {
            let Some(p) = l.pri else { return };
            st.space.set_bits(p + pri_reg::STATUS, 2, u32::from(pri_reg::RESPONSE_FAILURE));
            st.pri_outstanding = 0;
            pri_update_stopped(l, st);
        });
    }

    /// A PRG Response with an index that matches no outstanding group arrives: UPRGI is set (in
    /// the PF's PRI for a VF).
    pub fn pri_unexpected_response(&self, id: FnId) {
        self.with_state(self.pri_owner(id), |l, st| {
            if let Some(p) = l.pri {
                st.space.set_bits(p + pri_reg::STATUS, 2, u32::from(pri_reg::UPRGI));
            }
        });
    }

    /// A hostile or broken device: with `never` set, Stopped stays clear whatever happens
    /// (answers, Reset), so every wait for it runs into its bound; cleared, Stopped follows
    /// the outstanding requests again.
    pub fn pri_never_stop(&self, id: FnId, never: bool) {
        self.with_state(self.pri_owner(id), |l, st| {
            st.pri_never_stop = never;
            if let (Some(p), true) = (l.pri, never) {
                st.space.clear_bits(p + pri_reg::STATUS, 2, u32::from(pri_reg::STOPPED));
            }
            pri_update_stopped(l, st);
        });
    }

    /// Page requests issued and not answered (a VF's: its PF's, which they share).
    pub fn pri_outstanding(&self, id: FnId) -> u32 {
        self.with_state(self.pri_owner(id), |_, st| st.pri_outstanding).unwrap_or(0)
    }

    /// Whether PRI Enable is set in the capability carrying `id`'s page requests (the PF's for
    /// a VF): the model's truth, read without a counted access.
    pub fn pri_enabled(&self, id: FnId) -> bool {
        self.with_state(self.pri_owner(id), |l, st| {
            l.pri.is_some_and(|p| {
                st.space.get(p + pri_reg::CONTROL, 2) & u32::from(pri_reg::ENABLE) != 0
            })
        })
        .unwrap_or(false)
    }
}

impl ConfigAccess for Topology {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.read(bdf, offset, 4)
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        self.write(bdf, offset, 4, value);
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        self.write(bdf, offset, 2, u32::from(value));
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        self.write(bdf, offset, 1, u32::from(value));
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        // CAST: a 2-byte read.
        self.read(bdf, offset, 2) as u16
    }
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        // CAST: a 1-byte read.
        self.read(bdf, offset, 1) as u8
    }
}
