//! Arm SMMUv3 nodes (Linux binding `iommu/arm,smmu-v3.yaml`) and the GIC interrupt specifiers
//! they use (`interrupt-controller/arm,gic.yaml`, `arm,gic-v3.yaml`).

use crate::error::{Error, Result};

use super::tree::{DeviceTree, Node, Nodes};
use super::values::{Phandle, Region, take_cells};

/// `compatible` of an SMMUv3.
pub const SMMU_V3_COMPATIBLE: &str = "arm,smmu-v3";

/// Register space the driver uses: page 0 and page 1, 64 KiB each (SMMUv3 §6.1).
const SMMU_V3_MMIO_SIZE: u64 = 0x2_0000;
/// Cavium CN99xx erratum: page 1 is not implemented and its registers live in page 0.
const SMMU_V3_PAGE0_ONLY_SIZE: u64 = 0x1_0000;
/// Highest SPI number a GIC specifier can carry (INTID 1019).
const MAX_SPI: u32 = 987;
/// Highest PPI number (INTID 31).
const MAX_PPI: u32 = 15;

/// Kind of a GIC interrupt, from the first cell of its specifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GicInterruptKind {
    /// Shared peripheral interrupt (cell value 0): INTID = number + 32.
    Spi,
    /// Private peripheral interrupt (cell value 1): INTID = number + 16.
    Ppi,
}

/// A decoded 3-cell GIC interrupt specifier `<kind number flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GicInterrupt {
    /// SPI or PPI.
    pub kind: GicInterruptKind,
    /// SPI number (0..=987) or PPI number (0..=15), as written in the tree.
    pub number: u32,
    /// Trigger flags: 1 = edge rising, 4 = level high (plus a CPU mask for GICv2 PPIs).
    pub flags: u32,
}

impl GicInterrupt {
    /// The GIC interrupt ID the distributor uses.
    pub fn intid(self) -> u32 {
        match self.kind {
            GicInterruptKind::Spi => self.number.saturating_add(32),
            GicInterruptKind::Ppi => self.number.saturating_add(16),
        }
    }
}

/// Iterator over a node's `interrupts`, decoded as GIC specifiers.
#[derive(Clone, Debug)]
pub struct GicInterrupts<'a> {
    rest: &'a [u8],
    /// `#interrupt-cells` of the GIC: 3, or 4 with GICv3 PPI partitions (the 4th is skipped).
    cells: u32,
}

impl Iterator for GicInterrupts<'_> {
    type Item = Result<GicInterrupt>;

    fn next(&mut self) -> Option<Result<GicInterrupt>> {
        let kind = take_cells(&mut self.rest, 1)?;
        let number = take_cells(&mut self.rest, 1)?;
        let flags = take_cells(&mut self.rest, 1)?;
        if self.cells == 4 {
            take_cells(&mut self.rest, 1)?;
        }
        // Each came from one cell, so the casts keep every bit.
        let (number, flags) = (number as u32, flags as u32);
        let decoded = match kind {
            0 if number <= MAX_SPI => Ok(GicInterruptKind::Spi),
            0 => Err(Error::InvalidField { what: "GIC SPI number", value: number.into() }),
            1 if number <= MAX_PPI => Ok(GicInterruptKind::Ppi),
            1 => Err(Error::InvalidField { what: "GIC PPI number", value: number.into() }),
            other => Err(Error::InvalidField {
                what: "GIC interrupt type (0 = SPI, 1 = PPI)",
                value: other,
            }),
        };
        Some(decoded.map(|kind| GicInterrupt { kind, number, flags }))
    }
}

impl<'a> Node<'a> {
    /// The `interrupts` property decoded as GIC specifiers; the interrupt parent must have
    /// `#interrupt-cells` of 3 or 4. Empty when `interrupts` is absent.
    pub fn gic_interrupts(&self) -> Result<GicInterrupts<'a>> {
        let Some(interrupts) = self.property("interrupts") else {
            return Ok(GicInterrupts { rest: &[], cells: 3 });
        };
        let parent = self.interrupt_parent()?;
        let cells = parent
            .property("#interrupt-cells")
            .ok_or(Error::NotFound { what: "#interrupt-cells of the interrupt parent" })?
            .as_u32("#interrupt-cells length")?;
        if !(3..=4).contains(&cells) {
            return Err(Error::InvalidField { what: "GIC #interrupt-cells", value: cells.into() });
        }
        if !interrupts.value.len().is_multiple_of(super::tree::to_usize(cells.saturating_mul(4))) {
            return Err(Error::InvalidField {
                what: "interrupts length",
                value: interrupts.value.len() as u64,
            });
        }
        Ok(GicInterrupts { rest: interrupts.value, cells })
    }
}

/// The SMMUv3's wired interrupts by `interrupt-names`; `None` for each one not wired (the SMMU
/// may signal through MSIs instead, see [`SmmuV3::msi_parent`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SmmuInterrupts {
    /// `combined`: one line for every source.
    pub combined: Option<GicInterrupt>,
    /// `eventq`: event queue not empty.
    pub eventq: Option<GicInterrupt>,
    /// `priq`: PRI queue not empty.
    pub priq: Option<GicInterrupt>,
    /// `cmdq-sync`: CMD_SYNC completion.
    pub cmdq_sync: Option<GicInterrupt>,
    /// `gerror`: global error.
    pub gerror: Option<GicInterrupt>,
}

/// An `arm,smmu-v3` node.
#[derive(Clone, Copy, Debug)]
pub struct SmmuV3<'a> {
    node: Node<'a>,
    /// Register space (at least pages 0 and 1, 128 KiB).
    pub regs: Region,
    /// The handle PCI hosts' `iommu-map` entries use to name this SMMU.
    pub phandle: Option<Phandle>,
    /// `dma-coherent`: the SMMU's table walks and queue accesses snoop CPU caches.
    pub dma_coherent: bool,
    /// `msi-parent` is present: the SMMU can signal its interrupts as MSIs.
    pub msi_parent: bool,
    /// Wired interrupts named by `interrupt-names`.
    pub interrupts: SmmuInterrupts,
}

impl<'a> SmmuV3<'a> {
    fn parse(node: Node<'a>) -> Result<Self> {
        let regs = node.first_reg("SMMUv3 reg")?;
        let need = if node.has_property("cavium,cn9900-broken-page1-regspace") {
            SMMU_V3_PAGE0_ONLY_SIZE
        } else {
            SMMU_V3_MMIO_SIZE
        };
        if regs.size < need {
            return Err(Error::InvalidField {
                what: "SMMUv3 reg size (too small for its register pages)",
                value: regs.size,
            });
        }
        Ok(Self {
            node,
            regs,
            phandle: node.phandle()?,
            dma_coherent: node.has_property("dma-coherent"),
            msi_parent: node.has_property("msi-parent"),
            interrupts: Self::interrupts(node)?,
        })
    }

    /// Pairs `interrupts` with `interrupt-names`. Without names no line is identified (as in
    /// Linux, which looks each one up by name); unknown names are skipped.
    fn interrupts(node: Node<'a>) -> Result<SmmuInterrupts> {
        let mut found = SmmuInterrupts::default();
        let Some(names) = node.property("interrupt-names") else { return Ok(found) };
        let mut specifiers = node.gic_interrupts()?;
        let mut count = 0u64;
        for name in names.strings().raw() {
            count = count.saturating_add(1);
            let Some(specifier) = specifiers.next() else {
                return Err(Error::InvalidField {
                    what: "SMMUv3 interrupt-names (more than interrupts)",
                    value: count,
                });
            };
            let specifier = specifier?;
            if specifier.kind != GicInterruptKind::Spi {
                return Err(Error::InvalidField {
                    what: "SMMUv3 interrupt (a PPI, not an SPI)",
                    value: specifier.number.into(),
                });
            }
            let slot = match name {
                b"combined" => &mut found.combined,
                b"eventq" => &mut found.eventq,
                b"priq" => &mut found.priq,
                b"cmdq-sync" => &mut found.cmdq_sync,
                b"gerror" => &mut found.gerror,
                _ => continue,
            };
            *slot = Some(specifier);
        }
        Ok(found)
    }

    /// The SMMU's node.
    pub fn node(&self) -> Node<'a> {
        self.node
    }
}

/// Iterator over the enabled `arm,smmu-v3` nodes, each read into an [`SmmuV3`].
#[derive(Clone, Debug)]
pub struct SmmuV3s<'a> {
    nodes: Nodes<'a>,
}

impl<'a> Iterator for SmmuV3s<'a> {
    type Item = Result<SmmuV3<'a>>;

    fn next(&mut self) -> Option<Result<SmmuV3<'a>>> {
        let node = self
            .nodes
            .by_ref()
            .find(|n| n.is_compatible(SMMU_V3_COMPATIBLE) && n.is_available())?;
        Some(SmmuV3::parse(node))
    }
}

impl<'a> DeviceTree<'a> {
    /// The enabled SMMUv3s in document order.
    pub fn smmus(&self) -> SmmuV3s<'a> {
        SmmuV3s { nodes: self.nodes() }
    }
}
