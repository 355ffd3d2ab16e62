//! Prints an enumerated PCIe topology as a tree, and the lines the harness's host check reads.

use pcie_iommu::pci::{BarKind, Capabilities, Function, FunctionKind, Topology};

/// Indentation by depth (two spaces a level); deeper trees print at the last level.
const INDENT: [&str; 9] = ["", "  ", "    ", "      ", "        ", "          ", "            ", "              ", "                "];

fn depth<const N: usize>(topology: &Topology<N>, f: &Function) -> usize {
    let Some(index) = topology.find(f.bdf()) else { return 0 };
    topology.upstream(index).count()
}

pub fn kind_name(kind: FunctionKind) -> &'static str {
    match kind {
        FunctionKind::PcieEndpoint => "PCIe endpoint",
        FunctionKind::RootComplexEndpoint => "root complex integrated endpoint",
        FunctionKind::RootComplexEventCollector => "root complex event collector",
        FunctionKind::RootPort => "root port",
        FunctionKind::SwitchUpstream => "switch upstream port",
        FunctionKind::SwitchDownstream => "switch downstream port",
        FunctionKind::PcieToPciBridge => "PCIe-to-PCI bridge",
        FunctionKind::PciToPcieBridge => "PCI-to-PCIe bridge",
        FunctionKind::ConventionalEndpoint => "conventional PCI",
        FunctionKind::ConventionalBridge => "conventional PCI-to-PCI bridge",
        FunctionKind::Other => "other header type",
    }
}

/// Capability names present, as one string (fixed buffer; no heap).
struct CapList {
    buf: [u8; 96],
    len: usize,
}

impl CapList {
    fn new(caps: &Capabilities) -> Self {
        let mut list = Self { buf: [0; 96], len: 0 };
        for (present, name) in [
            (caps.pcie, "PCIe"),
            (caps.pm, "PM"),
            (caps.msi, "MSI"),
            (caps.msix, "MSI-X"),
            (caps.aer, "AER"),
            (caps.acs, "ACS"),
            (caps.ari, "ARI"),
            (caps.ats, "ATS"),
            (caps.pasid, "PASID"),
            (caps.pri, "PRI"),
            (caps.sriov, "SR-IOV"),
        ] {
            if present != 0 {
                list.push(name);
            }
        }
        if list.len == 0 {
            list.push("none");
        }
        list
    }

    fn push(&mut self, name: &str) {
        let sep = usize::from(self.len != 0);
        if self.len + sep + name.len() > self.buf.len() {
            return;
        }
        if sep == 1 {
            self.buf[self.len] = b' ';
        }
        self.buf[self.len + sep..self.len + sep + name.len()].copy_from_slice(name.as_bytes());
        self.len += sep + name.len();
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

/// Logs the topology as a tree: one line per function, indented under its bridge, each PF's
/// enabled VFs right under it.
pub fn print<const N: usize>(topology: &Topology<N>) {
    for (i, f) in topology.functions().iter().enumerate() {
        if f.physical_function.is_some() {
            continue;
        }
        print_function(topology, f);
        for vf in topology.functions().iter().filter(|v| v.physical_function.is_some_and(|pf| usize::from(pf.0) == i)) {
            print_function(topology, vf);
        }
    }
}

fn print_function<const N: usize>(topology: &Topology<N>, f: &Function) {
    let level = depth(topology, f) + usize::from(f.physical_function.is_some());
    let indent = INDENT[level.min(INDENT.len() - 1)];
    let caps = CapList::new(&f.caps);
    let vf = if f.physical_function.is_some() { "VF " } else { "" };
    match f.bus_range {
        Some(r) => defmt::info!(
            "{=str}{=str}{} {=u16:04x}:{=u16:04x} {=str} [{=str}] buses {=u8:02x}-{=u8:02x}; caps: {=str}",
            indent, vf, f.bdf(), f.id.vendor, f.id.device, f.id.class_name(), kind_name(f.kind), r.secondary, r.subordinate, caps.as_str()
        ),
        None => defmt::info!(
            "{=str}{=str}{} {=u16:04x}:{=u16:04x} {=str} [{=str}]; caps: {=str}",
            indent, vf, f.bdf(), f.id.vendor, f.id.device, f.id.class_name(), kind_name(f.kind), caps.as_str()
        ),
    }
    for bar in f.bars.iter().flatten() {
        let (kind, pref) = match bar.kind {
            BarKind::Io => ("I/O", false),
            BarKind::Memory32 { prefetchable } => ("mem32", prefetchable),
            BarKind::Memory64 { prefetchable } => ("mem64", prefetchable),
        };
        defmt::info!(
            "{=str}    BAR{=u8} {=str}{=str} {=u64:#x} size {=u64:#x}",
            indent, bar.index, kind, if pref { " prefetchable" } else { "" }, bar.base, bar.size
        );
    }
}

/// The lines `qemu-tests/src/qmp.rs` parses: `host-check pci BDF VID:DID class CCCCCC fn|vf
/// [buses SS-EE]`.
pub fn print_host_check_lines<const N: usize>(topology: &Topology<N>) -> usize {
    for f in topology.functions() {
        let kind = if f.physical_function.is_some() { "vf" } else { "fn" };
        match f.bus_range {
            Some(r) => defmt::info!(
                "host-check pci {} {=u16:04x}:{=u16:04x} class {=u32:06x} {=str} buses {=u8:02x}-{=u8:02x}",
                f.bdf(), f.id.vendor, f.id.device, f.id.class, kind, r.secondary, r.subordinate
            ),
            None => defmt::info!(
                "host-check pci {} {=u16:04x}:{=u16:04x} class {=u32:06x} {=str}",
                f.bdf(), f.id.vendor, f.id.device, f.id.class, kind
            ),
        }
    }
    topology.len()
}

/// Logs the isolation groups: members, the rules that joined them, and every requester ID an
/// IOMMU must map to the group's domain (own IDs and bridge or quirk aliases).
pub fn print_groups<const N: usize>(topology: &Topology<N>, groups: &pcie_iommu::pci::Groups<N>) {
    use pcie_iommu::pci::groups::Causes;
    defmt::info!("isolation groups: {=usize} for {=usize} functions", groups.len(), topology.len());
    for group in groups.iter() {
        let c = group.causes();
        defmt::info!(
            "group {}: {=usize} function(s){=str}{=str}{=str}{=str}",
            group.id().0,
            group.len(),
            if c.contains(Causes::SHARED_RID) { ", shared requester ID" } else { "" },
            if c.contains(Causes::MULTI_FUNCTION) { ", functions of one device without ACS" } else { "" },
            if c.contains(Causes::BRIDGE) { ", bridge without ACS isolation above" } else { "" },
            if c.contains(Causes::SWITCH) { ", switch bus without ACS" } else { "" },
        );
        for member in group.members() {
            if let Some(f) = topology.get(member) {
                defmt::info!("  member {} {=u16:04x}:{=u16:04x} {=str}", f.bdf(), f.id.vendor, f.id.device, f.id.class_name());
            }
        }
        for alias in group.aliases(topology) {
            defmt::info!("  requester ID {} ({})", alias.bdf(), alias.reason);
        }
    }
}
