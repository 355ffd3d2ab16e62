//! PCI host bridges described by `pci-host-ecam-generic` nodes (Linux binding
//! `pci/host-generic-pci.yaml`, with the IEEE 1275 PCI bus binding for `ranges`), and the
//! `iommu-map`/`msi-map` ID translation (`pci/pci-iommu.yaml`, `pci/pci-msi.yaml`).

use crate::addr::{PhysAddr, RequesterId, StreamId};
use crate::error::{Error, Result};

use super::tree::{DeviceTree, Node, Nodes};
use super::values::{Cells, Phandle, Region, check_cells, take_cells};

/// `compatible` of a generic host bridge with an ECAM configuration window.
pub const ECAM_COMPATIBLE: &str = "pci-host-ecam-generic";

/// ECAM gives each bus 32 devices x 8 functions x 4 KiB of configuration space.
const ECAM_BYTES_PER_BUS: u64 = 1 << 20;

/// Bus numbers a host bridge decodes (`bus-range`, inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BusRange {
    /// First bus: the one at the start of the ECAM window.
    pub start: u8,
    /// Last bus, `>= start`.
    pub end: u8,
}

impl BusRange {
    /// Every bus, the default when `bus-range` is absent.
    pub const ALL: Self = Self { start: 0, end: 255 };

    /// Number of buses (1..=256).
    pub fn count(self) -> u16 {
        u16::from(self.end).saturating_sub(self.start.into()).saturating_add(1)
    }

    /// Whether `bus` is in the range.
    pub fn contains(self, bus: u8) -> bool {
        (self.start..=self.end).contains(&bus)
    }
}

/// A `pci-host-ecam-generic` host bridge.
#[derive(Clone, Copy, Debug)]
pub struct PciHost<'a> {
    node: Node<'a>,
    /// The ECAM window; its first MiB is bus `buses.start`.
    pub ecam: Region,
    /// Buses behind the bridge; the ECAM window was checked to cover all of them.
    pub buses: BusRange,
    /// PCI segment: `linux,pci-domain`, or the host's index among the enabled ECAM hosts.
    pub segment: u16,
    /// `dma-coherent`: devices below snoop CPU caches.
    pub dma_coherent: bool,
}

impl<'a> PciHost<'a> {
    /// Reads the host bridge at `node`, the `index`-th enabled one in the tree.
    fn parse(node: Node<'a>, index: usize) -> Result<Self> {
        let ecam = node.first_reg("PCI host ECAM reg")?;
        let buses = bus_range(&node)?;
        if ecam.size < u64::from(buses.count()).saturating_mul(ECAM_BYTES_PER_BUS) {
            return Err(Error::InvalidField {
                what: "ECAM size (below 1 MiB per bus of bus-range)",
                value: ecam.size,
            });
        }
        let segment = match node.property("linux,pci-domain") {
            Some(property) => {
                let domain = property.as_u32("linux,pci-domain length")?;
                u16::try_from(domain).map_err(|_| Error::InvalidField {
                    what: "linux,pci-domain",
                    value: domain.into(),
                })?
            }
            None => u16::try_from(index).map_err(|_| Error::InvalidField {
                what: "PCI host index (default segment)",
                value: index as u64,
            })?,
        };
        Ok(Self { node, ecam, buses, segment, dma_coherent: node.has_property("dma-coherent") })
    }

    /// The host bridge's node.
    pub fn node(&self) -> Node<'a> {
        self.node
    }

    /// The `ranges` windows through which the CPU reaches PCI I/O and memory space.
    ///
    /// The host must have `#address-cells = <3>` and `#size-cells = <2>` (PCI bus binding).
    pub fn ranges(&self) -> Result<PciRanges<'a>> {
        let address_cells = self.node.address_cells()?;
        if address_cells != 3 {
            return Err(Error::InvalidField {
                what: "PCI host #address-cells",
                value: address_cells.into(),
            });
        }
        let size_cells = self.node.size_cells()?;
        if size_cells != 2 {
            return Err(Error::InvalidField {
                what: "PCI host #size-cells",
                value: size_cells.into(),
            });
        }
        let cpu_address_cells = check_cells(self.node.parent_address_cells()?, "#address-cells")?;
        let value = self.node.property("ranges").map_or(&[][..], |p| p.value);
        let entry =
            super::tree::to_usize(cpu_address_cells.saturating_add(3 + 2).saturating_mul(4));
        if !value.len().is_multiple_of(entry) {
            return Err(Error::InvalidField {
                what: "PCI host ranges length",
                value: value.len() as u64,
            });
        }
        Ok(PciRanges { rest: value, cpu_address_cells })
    }

    /// The `iommu-map` (with `iommu-map-mask`), or `None` when devices are not behind an IOMMU.
    pub fn iommu_map(&self) -> Result<Option<IdMap<'a>>> {
        IdMap::new(self.node, &IOMMU_MAP)
    }

    /// The `msi-map` (with `msi-map-mask`), or `None` when absent.
    pub fn msi_map(&self) -> Result<Option<IdMap<'a>>> {
        IdMap::new(self.node, &MSI_MAP)
    }

    /// The IOMMU (by phandle) and StreamID that see DMA from requester `rid`, through
    /// `iommu-map`. `None`: no `iommu-map`, or no entry covers the RID, so the requester is
    /// not translated (Linux `of_map_id`).
    pub fn stream_id(&self, rid: RequesterId) -> Result<Option<(Phandle, StreamId)>> {
        let Some(map) = self.iommu_map()? else { return Ok(None) };
        Ok(map.map(rid.0.into())?.map(|(iommu, id)| (iommu, StreamId(id))))
    }
}

/// The host's `bus-range`, [`BusRange::ALL`] when absent.
fn bus_range(node: &Node<'_>) -> Result<BusRange> {
    let Some(property) = node.property("bus-range") else { return Ok(BusRange::ALL) };
    let mut cells = Cells::new(property.value);
    let (Some(start), Some(end), 8) = (cells.next(), cells.next(), property.value.len()) else {
        return Err(Error::InvalidField {
            what: "bus-range length",
            value: property.value.len() as u64,
        });
    };
    let bus = |value: u32| {
        u8::try_from(value)
            .map_err(|_| Error::InvalidField { what: "bus-range bus number", value: value.into() })
    };
    let (start, end) = (bus(start)?, bus(end)?);
    if end < start {
        return Err(Error::InvalidField {
            what: "bus-range end (below its start)",
            value: end.into(),
        });
    }
    Ok(BusRange { start, end })
}

/// Iterator over the enabled `pci-host-ecam-generic` nodes, each read into a [`PciHost`].
#[derive(Clone, Debug)]
pub struct PciHosts<'a> {
    nodes: Nodes<'a>,
    index: usize,
}

impl<'a> Iterator for PciHosts<'a> {
    type Item = Result<PciHost<'a>>;

    fn next(&mut self) -> Option<Result<PciHost<'a>>> {
        let node =
            self.nodes.by_ref().find(|n| n.is_compatible(ECAM_COMPATIBLE) && n.is_available())?;
        let index = self.index;
        self.index = self.index.saturating_add(1);
        Some(PciHost::parse(node, index))
    }
}

impl<'a> DeviceTree<'a> {
    /// The enabled `pci-host-ecam-generic` host bridges in document order.
    pub fn pci_hosts(&self) -> PciHosts<'a> {
        PciHosts { nodes: self.nodes(), index: 0 }
    }
}

/// PCI address space of a `ranges` window (the `ss` bits of the PCI address's high cell).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PciSpace {
    /// Configuration space (`ss = 00`); unusual in `ranges`.
    Configuration,
    /// I/O space (`ss = 01`).
    Io,
    /// 32-bit memory space (`ss = 10`).
    Memory32,
    /// 64-bit memory space (`ss = 11`).
    Memory64,
}

/// One `ranges` window: PCI addresses `pci_address..+size` appear to the CPU at `cpu_address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PciRange {
    /// Which PCI address space the window opens.
    pub space: PciSpace,
    /// The `p` bit: the window is prefetchable memory.
    pub prefetchable: bool,
    /// First PCI bus address.
    pub pci_address: u64,
    /// Where the CPU sees `pci_address`.
    pub cpu_address: PhysAddr,
    /// Window length in bytes.
    pub size: u64,
}

/// Iterator over a host bridge's `ranges`; an entry whose CPU or PCI end wraps is
/// [`Error::AddressOverflow`].
#[derive(Clone, Debug)]
pub struct PciRanges<'a> {
    rest: &'a [u8],
    cpu_address_cells: u32,
}

impl Iterator for PciRanges<'_> {
    type Item = Result<PciRange>;

    fn next(&mut self) -> Option<Result<PciRange>> {
        let high = take_cells(&mut self.rest, 1)?;
        let pci_address = take_cells(&mut self.rest, 2)?;
        let cpu_address = take_cells(&mut self.rest, self.cpu_address_cells)?;
        let size = take_cells(&mut self.rest, 2)?;
        let space = match (high >> 24) & 3 {
            0 => PciSpace::Configuration,
            1 => PciSpace::Io,
            2 => PciSpace::Memory32,
            _ => PciSpace::Memory64,
        };
        let checked =
            Region::new(cpu_address, size).and_then(|_| PhysAddr(pci_address).checked_add(size));
        Some(checked.map(|_| PciRange {
            space,
            prefetchable: high & (1 << 30) != 0,
            pci_address,
            cpu_address: PhysAddr(cpu_address),
            size,
        }))
    }
}

/// Property names and error labels of one kind of ID map.
#[derive(Debug)]
struct IdMapKind {
    map: &'static str,
    mask: &'static str,
    map_length: &'static str,
    mask_length: &'static str,
    base_outside_mask: &'static str,
    target: &'static str,
    output_overflow: &'static str,
}

const IOMMU_MAP: IdMapKind = IdMapKind {
    map: "iommu-map",
    mask: "iommu-map-mask",
    map_length: "iommu-map length (not whole <rid-base iommu iommu-base length> entries)",
    mask_length: "iommu-map-mask length",
    base_outside_mask: "iommu-map rid-base (bits outside iommu-map-mask)",
    target: "iommu-map iommu phandle",
    output_overflow: "iommu-map output ID (above 32 bits)",
};

const MSI_MAP: IdMapKind = IdMapKind {
    map: "msi-map",
    mask: "msi-map-mask",
    map_length: "msi-map length (not whole <rid-base msi-controller msi-base length> entries)",
    mask_length: "msi-map-mask length",
    base_outside_mask: "msi-map rid-base (bits outside msi-map-mask)",
    target: "msi-map msi-controller phandle",
    output_overflow: "msi-map output ID (above 32 bits)",
};

/// One ID map entry: IDs `id_base..id_base + length` map to `out_base..` at `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IdMapEntry {
    /// First input ID (a requester ID after the mask).
    pub id_base: u32,
    /// The IOMMU or MSI controller.
    pub target: Phandle,
    /// The output ID (StreamID, DeviceID) of `id_base`.
    pub out_base: u32,
    /// Number of IDs.
    pub length: u32,
}

impl IdMapEntry {
    /// Whether the (masked) `id` falls in this entry.
    pub fn contains(&self, id: u32) -> bool {
        id >= self.id_base
            && u64::from(id) < u64::from(self.id_base).saturating_add(self.length.into())
    }
}

/// An `iommu-map` or `msi-map`: requester ID to (target, output ID) translation.
#[derive(Clone, Copy, Debug)]
pub struct IdMap<'a> {
    tree: DeviceTree<'a>,
    entries: &'a [u8],
    mask: u32,
    kind: &'static IdMapKind,
}

impl<'a> IdMap<'a> {
    /// The map of `kind` on `node`; its length must be a non-zero multiple of 4 cells.
    fn new(node: Node<'a>, kind: &'static IdMapKind) -> Result<Option<Self>> {
        let Some(map) = node.property(kind.map) else { return Ok(None) };
        if map.value.is_empty() || !map.value.len().is_multiple_of(16) {
            return Err(Error::InvalidField {
                what: kind.map_length,
                value: map.value.len() as u64,
            });
        }
        let mask = match node.property(kind.mask) {
            Some(property) => property.as_u32(kind.mask_length)?,
            None => u32::MAX,
        };
        Ok(Some(Self { tree: node.tree(), entries: map.value, mask, kind }))
    }

    /// The mask applied to an ID before lookup (all ones when the `-mask` property is absent).
    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// The entries in blob order.
    pub fn entries(&self) -> IdMapEntries<'a> {
        IdMapEntries { cells: Cells::new(self.entries) }
    }

    /// Translates `id` as Linux's `of_map_id` does: mask it, take the first entry that contains
    /// it, and check that the entry's target node exists. `None`: no entry contains it.
    ///
    /// An entry met before the match whose `id_base` has bits outside the mask is an error,
    /// as is a target phandle that names no node ([`Error::BadReference`]).
    pub fn map(&self, id: u32) -> Result<Option<(Phandle, u32)>> {
        let masked = id & self.mask;
        for entry in self.entries() {
            if entry.id_base & !self.mask != 0 {
                return Err(Error::InvalidField {
                    what: self.kind.base_outside_mask,
                    value: entry.id_base.into(),
                });
            }
            if !entry.contains(masked) {
                continue;
            }
            if self.tree.node_by_phandle(entry.target).is_none() {
                return Err(Error::BadReference {
                    what: self.kind.target,
                    value: entry.target.0.into(),
                });
            }
            let out = u64::from(entry.out_base)
                .saturating_add(u64::from(masked.saturating_sub(entry.id_base)));
            let out = u32::try_from(out)
                .map_err(|_| Error::InvalidField { what: self.kind.output_overflow, value: out })?;
            return Ok(Some((entry.target, out)));
        }
        Ok(None)
    }
}

/// Iterator over an [`IdMap`]'s entries.
#[derive(Clone, Debug)]
pub struct IdMapEntries<'a> {
    cells: Cells<'a>,
}

impl Iterator for IdMapEntries<'_> {
    type Item = IdMapEntry;

    fn next(&mut self) -> Option<IdMapEntry> {
        Some(IdMapEntry {
            id_base: self.cells.next()?,
            target: Phandle(self.cells.next()?),
            out_base: self.cells.next()?,
            length: self.cells.next()?,
        })
    }
}
