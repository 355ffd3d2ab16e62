//! One description of an SMMUv3 and of how requester IDs reach it, from either firmware
//! language: a device tree (`arm,smmu-v3` node, PCIe host `iommu-map`) or ACPI IORT (SMMUv3 node,
//! root-complex ID mappings). The driver takes the same [`SmmuDescription`] either way.

use crate::addr::{PhysAddr, RequesterId, StreamId};
use crate::error::{Error, Result};
use crate::firmware::acpi::{Iort, IortNodeKind};
use crate::firmware::dt::{DeviceTree, GicInterrupt, PciHost, Phandle};

/// Where an SMMU description came from, and what identifies it there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Origin {
    /// A device-tree node with this phandle (`None`: no phandle, so no `iommu-map` can name it).
    DeviceTree(Option<u32>),
    /// An IORT SMMUv3 node at this offset in the table.
    Iort(u32),
}

/// An SMMUv3 as the firmware describes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SmmuDescription {
    /// Register frame base (pages 0 and 1).
    pub base: PhysAddr,
    /// Table walks and queue accesses are coherent (DT `dma-coherent`, IORT COHACC override).
    pub coherent: bool,
    /// GIC interrupt IDs of the wired lines (0 = not wired): event queue, PRI queue, CMD_SYNC,
    /// global errors. A DT `combined` line is reported as all four.
    pub event_irq: u32,
    /// PRI queue interrupt.
    pub priq_irq: u32,
    /// CMD_SYNC interrupt.
    pub sync_irq: u32,
    /// Global error interrupt.
    pub gerror_irq: u32,
    /// Where the description came from.
    pub origin: Origin,
}

/// The firmware description to read.
#[derive(Clone, Copy, Debug)]
pub enum Firmware<'a, 'b> {
    /// A device tree.
    DeviceTree(&'b DeviceTree<'a>),
    /// An IORT table.
    Iort(&'b Iort<'a>),
}

fn intid(i: Option<GicInterrupt>) -> u32 {
    i.map_or(0, GicInterrupt::intid)
}

/// The `index`-th SMMUv3 of `fw` (in firmware order), `None` past the last.
pub fn describe(fw: Firmware<'_, '_>, index: usize) -> Result<Option<SmmuDescription>> {
    match fw {
        Firmware::DeviceTree(dt) => {
            let Some(smmu) = dt.smmus().nth(index) else { return Ok(None) };
            let smmu = smmu?;
            let irq = smmu.interrupts;
            let combined = intid(irq.combined);
            let pick = |i: Option<GicInterrupt>| if i.is_some() { intid(i) } else { combined };
            Ok(Some(SmmuDescription {
                base: smmu.regs.base,
                coherent: smmu.dma_coherent,
                event_irq: pick(irq.eventq),
                priq_irq: pick(irq.priq),
                sync_irq: pick(irq.cmdq_sync),
                gerror_irq: pick(irq.gerror),
                origin: Origin::DeviceTree(smmu.phandle.map(|p| p.0)),
            }))
        }
        Firmware::Iort(iort) => {
            let mut seen = 0;
            for node in iort.nodes() {
                let node = node?;
                if let IortNodeKind::SmmuV3(s) = node.kind() {
                    if seen == index {
                        return Ok(Some(SmmuDescription {
                            base: s.base_address(),
                            coherent: s.coherent_access_override(),
                            event_irq: s.event_gsiv(),
                            priq_irq: s.pri_gsiv(),
                            sync_irq: s.sync_gsiv(),
                            gerror_irq: s.gerr_gsiv(),
                            origin: Origin::Iort(node.offset()),
                        }));
                    }
                    seen += 1;
                }
            }
            Ok(None)
        }
    }
}

/// How the requester IDs of one PCI segment reach one SMMU.
#[derive(Clone, Copy, Debug)]
pub enum StreamIdMap<'a> {
    /// Through a PCIe host's `iommu-map` entries that name the SMMU's phandle.
    DeviceTree {
        /// The host bridge.
        host: PciHost<'a>,
        /// The SMMU's phandle.
        smmu: Phandle,
    },
    /// Through IORT root-complex ID mappings that end at the SMMU node.
    Iort {
        /// The table.
        iort: Iort<'a>,
        /// The PCI segment.
        segment: u16,
        /// Offset of the SMMUv3 node.
        smmu: u32,
    },
}

impl StreamIdMap<'_> {
    /// The StreamID this SMMU sees for `rid`; `None` when the requester's DMA does not go
    /// through this SMMU (no mapping, another IOMMU, or straight to the ITS).
    pub fn stream_id(&self, rid: RequesterId) -> Result<Option<StreamId>> {
        match self {
            StreamIdMap::DeviceTree { host, smmu } => {
                Ok(host.stream_id(rid)?.and_then(|(target, sid)| (target == *smmu).then_some(sid)))
            }
            StreamIdMap::Iort { iort, segment, smmu } => Ok(iort
                .map_rid(*segment, rid)?
                .and_then(|(node, sid)| (node.node().offset() == *smmu).then_some(sid))),
        }
    }
}

/// The RID-to-StreamID map of PCI `segment` for `smmu`, from the same firmware description.
pub fn stream_id_map<'a>(
    fw: Firmware<'a, '_>,
    smmu: &SmmuDescription,
    segment: u16,
) -> Result<StreamIdMap<'a>> {
    match (fw, smmu.origin) {
        (Firmware::DeviceTree(dt), Origin::DeviceTree(Some(phandle))) => {
            for host in dt.pci_hosts() {
                let host = host?;
                if host.segment == segment {
                    return Ok(StreamIdMap::DeviceTree { host, smmu: Phandle(phandle) });
                }
            }
            Err(Error::NotFound { what: "PCIe host bridge of the segment in the device tree" })
        }
        (Firmware::DeviceTree(_), Origin::DeviceTree(None)) => {
            Err(Error::NotFound { what: "SMMUv3 phandle (no iommu-map can name the SMMU)" })
        }
        (Firmware::Iort(iort), Origin::Iort(offset)) => {
            Ok(StreamIdMap::Iort { iort: *iort, segment, smmu: offset })
        }
        _ => Err(Error::InvalidField {
            what: "SMMU description from another firmware description",
            value: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_virt_device_tree() {
        let blob = include_bytes!("../firmware/testdata/qemu-virt.dtb");
        let dt = DeviceTree::new(blob).unwrap();
        let d = describe(Firmware::DeviceTree(&dt), 0).unwrap().unwrap();
        // notes §2.8: 0x09050000, SPIs 74..77 = INTIDs 106..109, dma-coherent.
        assert_eq!(d.base, PhysAddr(0x0905_0000));
        assert!(d.coherent);
        assert_eq!((d.event_irq, d.priq_irq, d.sync_irq, d.gerror_irq), (106, 107, 108, 109));
        assert!(describe(Firmware::DeviceTree(&dt), 1).unwrap().is_none());
        let map = stream_id_map(Firmware::DeviceTree(&dt), &d, 0).unwrap();
        // iommu-map = <0 &smmu 0 0x10000>: StreamID = RID.
        assert_eq!(map.stream_id(RequesterId(0x0008)).unwrap(), Some(StreamId(8)));
        assert_eq!(map.stream_id(RequesterId(0x0300)).unwrap(), Some(StreamId(0x300)));
        assert!(stream_id_map(Firmware::DeviceTree(&dt), &d, 1).is_err());
    }

    #[test]
    fn qemu_virt_iort() {
        let bytes = crate::firmware::acpi::iort::tests::qemu_virt_iort();
        let iort = Iort::parse(&bytes).unwrap();
        let d = describe(Firmware::Iort(&iort), 0).unwrap().unwrap();
        // notes §2.8: base 0x09050000, COHACC override, GSIVs event 106, PRI 107, gerror 109,
        // sync 108; the node sits at offset 72.
        assert_eq!(d.base, PhysAddr(0x0905_0000));
        assert!(d.coherent);
        assert_eq!((d.event_irq, d.priq_irq, d.sync_irq, d.gerror_irq), (106, 107, 108, 109));
        assert_eq!(d.origin, Origin::Iort(72));
        assert!(describe(Firmware::Iort(&iort), 1).unwrap().is_none());
        let map = stream_id_map(Firmware::Iort(&iort), &d, 0).unwrap();
        assert_eq!(map.stream_id(RequesterId(0x0008)).unwrap(), Some(StreamId(8)));
        // The same SMMU seen from the device tree gives the same StreamIDs.
        let dt = DeviceTree::new(include_bytes!("../firmware/testdata/qemu-virt.dtb")).unwrap();
        let dd = describe(Firmware::DeviceTree(&dt), 0).unwrap().unwrap();
        let dmap = stream_id_map(Firmware::DeviceTree(&dt), &dd, 0).unwrap();
        for rid in [0u16, 8, 0x100, 0xffff] {
            assert_eq!(
                map.stream_id(RequesterId(rid)).unwrap(),
                dmap.stream_id(RequesterId(rid)).unwrap()
            );
        }
        assert_eq!((dd.base, dd.event_irq, dd.gerror_irq), (d.base, d.event_irq, d.gerror_irq));
        // A description from one firmware language does not index the other.
        assert!(stream_id_map(Firmware::Iort(&iort), &dd, 0).is_err());
    }
}
