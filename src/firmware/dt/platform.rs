//! The rest of the machine a hypervisor needs before it owns PCIe: RAM and what is reserved in
//! it, `/chosen`, the console UART, the GIC and how to call PSCI.

use crate::error::{Error, Result};

use super::tree::{DeviceTree, Node};
use super::values::{Phandle, RegEntries, Region};

/// `compatible` of an Arm PL011 UART.
pub const PL011_COMPATIBLE: &str = "arm,pl011";
/// `compatible` of a GICv3 (or v4).
pub const GIC_V3_COMPATIBLE: &str = "arm,gic-v3";
/// `compatible` strings of GICv2 implementations (Linux `irq-gic.c`).
pub const GIC_V2_COMPATIBLES: [&str; 5] =
    ["arm,gic-400", "arm,cortex-a15-gic", "arm,cortex-a9-gic", "arm,cortex-a7-gic", "arm,pl390"];
/// `compatible` strings of a PSCI node, newest first.
pub const PSCI_COMPATIBLES: [&str; 3] = ["arm,psci-1.0", "arm,psci-0.2", "arm,psci"];

/// `/chosen`: what the boot loader passes to the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chosen<'a> {
    /// `bootargs`: the command line.
    pub bootargs: Option<&'a str>,
    /// `stdout-path`: the console, a path or alias with optional `:options`.
    pub stdout_path: Option<&'a str>,
}

/// GIC architecture version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GicVersion {
    /// GICv2: memory-mapped CPU interface.
    V2,
    /// GICv3/v4: redistributors and a system-register CPU interface.
    V3,
}

/// The interrupt controller.
#[derive(Clone, Copy, Debug)]
pub struct Gic<'a> {
    node: Node<'a>,
    /// Which architecture.
    pub version: GicVersion,
    /// Distributor (GICD).
    pub distributor: Region,
    /// Memory-mapped CPU interface (GICC): always on GICv2, optional legacy interface on GICv3.
    pub cpu_interface: Option<Region>,
    /// GICv3 redistributor regions in `reg` (`#redistributor-regions`, default 1); 0 on GICv2.
    redistributor_regions: usize,
}

impl<'a> Gic<'a> {
    fn parse(node: Node<'a>, version: GicVersion) -> Result<Self> {
        let entries = node.reg()?;
        let count = entries.remaining();
        let redistributor_regions = match version {
            GicVersion::V2 => 0,
            GicVersion::V3 => match node.property("#redistributor-regions") {
                Some(property) => {
                    let regions = property.as_u32("#redistributor-regions length")?;
                    let regions = super::tree::to_usize(regions);
                    if regions == 0 || regions >= count {
                        return Err(Error::InvalidField {
                            what: "GICv3 #redistributor-regions",
                            value: regions as u64,
                        });
                    }
                    regions
                }
                None => 1,
            },
        };
        let mut entries = entries;
        let distributor =
            entries.next().unwrap_or(Err(Error::NotFound { what: "GIC distributor reg" }))?;
        let cpu_interface = match entries.nth(redistributor_regions) {
            Some(region) => Some(region?),
            None if version == GicVersion::V2 => {
                return Err(Error::NotFound { what: "GICv2 CPU interface reg" });
            }
            None if count < 2 => return Err(Error::NotFound { what: "GICv3 redistributor reg" }),
            None => None,
        };
        Ok(Self { node, version, distributor, cpu_interface, redistributor_regions })
    }

    /// The GIC's node.
    pub fn node(&self) -> Node<'a> {
        self.node
    }

    /// The handle other nodes' `interrupt-parent` uses.
    pub fn phandle(&self) -> Result<Option<Phandle>> {
        self.node.phandle()
    }

    /// GICv3 redistributor regions (GICR frames of consecutive CPUs); empty on GICv2.
    pub fn redistributors(&self) -> impl Iterator<Item = Result<Region>> + use<'a> {
        let entries = self.node.reg().ok().into_iter().flatten();
        entries.skip(1).take(self.redistributor_regions)
    }
}

/// How to call PSCI firmware (the psci node's `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PsciMethod {
    /// `HVC #0`: firmware runs at EL2 (as under QEMU without `virtualization=on`).
    Hvc,
    /// `SMC #0`: firmware runs at EL3 (or is emulated there).
    Smc,
}

/// The first eight bytes of a string property as a big-endian number, for errors about it.
fn text_value(bytes: &[u8]) -> u64 {
    bytes.iter().take(8).fold(0, |value, byte| (value << 8) | u64::from(*byte))
}

impl<'a> DeviceTree<'a> {
    /// Every `reg` entry of every enabled node with `device_type = "memory"`.
    pub fn memory(&self) -> impl Iterator<Item = Result<Region>> + use<'a> {
        let memory_nodes = self
            .nodes()
            .filter(|node| node.property("device_type").is_some_and(|p| p.value == b"memory\0"));
        regions_of(memory_nodes.filter(Node::is_available))
    }

    /// The `/memreserve/` entries of the header's reservation block.
    pub fn memory_reservations(&self) -> impl Iterator<Item = Result<Region>> + use<'a> {
        self.reservation_entries().map(|(base, size)| Region::new(base, size))
    }

    /// Every `reg` entry of the enabled children of `/reserved-memory` (regions the OS must not
    /// use). Children with only `size` ask the OS to place them and have no address yet.
    pub fn reserved_memory(&self) -> impl Iterator<Item = Result<Region>> + use<'a> {
        let children =
            self.find_node("/reserved-memory").into_iter().flat_map(|node| node.children());
        regions_of(children.filter(Node::is_available))
    }

    /// `/chosen`; [`Error::NotFound`] if the node is absent. The strings must be NUL-terminated
    /// UTF-8 (see [`Property::as_str`](super::Property::as_str)).
    pub fn chosen(&self) -> Result<Chosen<'a>> {
        let node = self.find_node("/chosen").ok_or(Error::NotFound { what: "/chosen" })?;
        let bootargs =
            node.property("bootargs").map(|p| p.as_str("/chosen bootargs")).transpose()?;
        let stdout_path = node
            .property("stdout-path")
            .or_else(|| node.property("linux,stdout-path"))
            .map(|p| p.as_str("/chosen stdout-path"))
            .transpose()?;
        Ok(Chosen { bootargs, stdout_path })
    }

    /// The PL011 UART registers: the one `stdout-path` names if it is a PL011, else the first
    /// enabled PL011.
    pub fn pl011(&self) -> Result<Region> {
        let from_stdout = self
            .chosen()
            .ok()
            .and_then(|chosen| chosen.stdout_path)
            .and_then(|path| self.resolve_path(path))
            .filter(|node| node.is_compatible(PL011_COMPATIBLE) && node.is_available());
        let node = match from_stdout {
            Some(node) => node,
            None => self
                .compatible_nodes(PL011_COMPATIBLE)
                .find(Node::is_available)
                .ok_or(Error::NotFound { what: PL011_COMPATIBLE })?,
        };
        node.first_reg("PL011 reg")
    }

    /// The first enabled GIC (v3 or v2).
    pub fn gic(&self) -> Result<Gic<'a>> {
        let found = self.nodes().filter(Node::is_available).find_map(|node| {
            if node.is_compatible(GIC_V3_COMPATIBLE) {
                Some((node, GicVersion::V3))
            } else if GIC_V2_COMPATIBLES.iter().any(|c| node.is_compatible(c)) {
                Some((node, GicVersion::V2))
            } else {
                None
            }
        });
        let (node, version) =
            found.ok_or(Error::NotFound { what: "GIC (arm,gic-v3 or a GICv2)" })?;
        Gic::parse(node, version)
    }

    /// The PSCI conduit. A `method` other than `hvc`/`smc` is [`Error::InvalidField`] carrying
    /// its first eight bytes as a big-endian number.
    pub fn psci_method(&self) -> Result<PsciMethod> {
        let node = self
            .nodes()
            .filter(Node::is_available)
            .find(|node| PSCI_COMPATIBLES.iter().any(|c| node.is_compatible(c)))
            .ok_or(Error::NotFound { what: "PSCI node" })?;
        let method = node.property("method").ok_or(Error::NotFound { what: "PSCI method" })?;
        match method.value {
            b"hvc\0" => Ok(PsciMethod::Hvc),
            b"smc\0" => Ok(PsciMethod::Smc),
            other => Err(Error::InvalidField {
                what: "PSCI method (text as a number)",
                value: text_value(other),
            }),
        }
    }
}

/// Every `reg` entry of `nodes`; a node whose `reg` cannot be read yields that error once.
fn regions_of<'a>(nodes: impl Iterator<Item = Node<'a>>) -> impl Iterator<Item = Result<Region>> {
    nodes.flat_map(|node| {
        let (entries, error): (Option<RegEntries<'a>>, _) = match node.reg() {
            Ok(entries) => (Some(entries), None),
            Err(error) => (None, Some(Err(error))),
        };
        entries.into_iter().flatten().chain(error)
    })
}
