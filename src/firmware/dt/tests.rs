use proptest::prelude::*;

use super::builder::{self, FdtBuilder, ITS, SMMU, SMMU2, field, machine};
use super::*;
use crate::addr::{PhysAddr, RequesterId, StreamId};
use crate::error::Error;

// QEMU 10.0.2 `-M virt,iommu=smmuv3 -cpu max -m 512M -nodefaults` and variants, compacted
// (testdata/README.md says how).
const VIRT: &[u8] = include_bytes!("../testdata/qemu-virt.dtb");
const VIRT_EL2: &[u8] = include_bytes!("../testdata/qemu-virt-el2.dtb");
const VIRT_GICV3: &[u8] = include_bytes!("../testdata/qemu-virt-gicv3.dtb");
const VIRT_HIGHMEM_OFF: &[u8] = include_bytes!("../testdata/qemu-virt-highmem-off.dtb");
const VIRT_BOOTARGS: &[u8] = include_bytes!("../testdata/qemu-virt-bootargs.dtb");
const FIXTURES: [&[u8]; 5] = [VIRT, VIRT_EL2, VIRT_GICV3, VIRT_HIGHMEM_OFF, VIRT_BOOTARGS];

/// QEMU virt's phandles (allocated from 0x8000 in creation order).
const QEMU_GIC: u32 = 0x8002;
const QEMU_V2M: u32 = 0x8003;
const QEMU_SMMU: u32 = 0x8004;

const MIB: u64 = 1 << 20;

fn tree(blob: &[u8]) -> DeviceTree<'_> {
    DeviceTree::new(blob).expect("valid tree")
}

fn host_of(blob: &[u8]) -> Result<PciHost<'_>, Error> {
    let tree = DeviceTree::new(blob)?;
    let mut hosts = tree.pci_hosts();
    let host = hosts.next().expect("one PCI host")?;
    assert!(hosts.next().is_none(), "exactly one PCI host");
    Ok(host)
}

fn region(base: u64, size: u64) -> Region {
    Region { base: PhysAddr(base), size }
}

fn all<T>(iter: impl Iterator<Item = Result<T, Error>>) -> Vec<T> {
    iter.collect::<Result<Vec<_>, _>>().expect("every item decodes")
}

// ---- QEMU fixtures -----------------------------------------------------------------------

#[test]
fn qemu_virt_pci_host() {
    let host = host_of(VIRT).unwrap();
    assert_eq!(host.ecam, region(0x40_1000_0000, 256 * MIB));
    assert_eq!(host.buses, BusRange { start: 0, end: 255 });
    assert_eq!(host.segment, 0);
    assert!(host.dma_coherent);
    assert_eq!(host.node().name(), "pcie@10000000");
    let ranges = all(host.ranges().unwrap());
    assert_eq!(
        ranges,
        [
            PciRange {
                space: PciSpace::Io,
                prefetchable: false,
                pci_address: 0,
                cpu_address: PhysAddr(0x3eff_0000),
                size: 0x1_0000
            },
            PciRange {
                space: PciSpace::Memory32,
                prefetchable: false,
                pci_address: 0x1000_0000,
                cpu_address: PhysAddr(0x1000_0000),
                size: 0x2eff_0000
            },
            PciRange {
                space: PciSpace::Memory64,
                prefetchable: false,
                pci_address: 0x80_0000_0000,
                cpu_address: PhysAddr(0x80_0000_0000),
                size: 0x80_0000_0000
            },
        ]
    );
    let iommu_map = host.iommu_map().unwrap().unwrap();
    assert_eq!(iommu_map.mask(), u32::MAX);
    let entries: Vec<_> = iommu_map.entries().collect();
    assert_eq!(
        entries,
        [IdMapEntry { id_base: 0, target: Phandle(QEMU_SMMU), out_base: 0, length: 0x1_0000 }]
    );
    let msi_map = host.msi_map().unwrap().unwrap();
    assert_eq!(msi_map.map(0x0108).unwrap(), Some((Phandle(QEMU_V2M), 0x0108)));
}

#[test]
fn qemu_virt_maps_requester_ids_to_identical_stream_ids() {
    let host = host_of(VIRT).unwrap();
    for rid in [0x0000, 0x0008, 0x0100, 0x1f07, 0xffff] {
        assert_eq!(
            host.stream_id(RequesterId(rid)).unwrap(),
            Some((Phandle(QEMU_SMMU), StreamId(rid.into())))
        );
    }
    let smmu = tree(VIRT).smmus().next().unwrap().unwrap();
    assert_eq!(smmu.phandle, Some(Phandle(QEMU_SMMU)), "iommu-map names the SMMUv3");
}

#[test]
fn qemu_virt_smmu() {
    let tree = tree(VIRT);
    let mut smmus = tree.smmus();
    let smmu = smmus.next().unwrap().unwrap();
    assert!(smmus.next().is_none());
    assert_eq!(smmu.regs, region(0x0905_0000, 0x2_0000));
    assert!(smmu.dma_coherent);
    assert!(!smmu.msi_parent);
    let spi = |number| Some(GicInterrupt { kind: GicInterruptKind::Spi, number, flags: 1 });
    assert_eq!(
        smmu.interrupts,
        SmmuInterrupts {
            combined: None,
            eventq: spi(0x4a),
            priq: spi(0x4b),
            cmdq_sync: spi(0x4c),
            gerror: spi(0x4d)
        }
    );
    assert_eq!(smmu.interrupts.eventq.unwrap().intid(), 0x4a + 32);
    assert_eq!(smmu.interrupts.gerror.unwrap().intid(), 0x6d);
    assert_eq!(smmu.node().interrupt_parent().unwrap().phandle().unwrap(), Some(Phandle(QEMU_GIC)));
}

#[test]
fn qemu_virt_platform() {
    let tree = tree(VIRT);
    assert_eq!(all(tree.memory()), [region(0x4000_0000, 512 * MIB)]);
    assert_eq!(all(tree.memory_reservations()), []);
    assert_eq!(all(tree.reserved_memory()), []);
    assert_eq!(
        tree.chosen().unwrap(),
        Chosen { bootargs: None, stdout_path: Some("/pl011@9000000") }
    );
    assert_eq!(tree.pl011().unwrap(), region(0x0900_0000, 0x1000));
    let gic = tree.gic().unwrap();
    assert_eq!(gic.version, GicVersion::V2);
    assert_eq!(gic.distributor, region(0x0800_0000, 0x1_0000));
    assert_eq!(gic.cpu_interface, Some(region(0x0801_0000, 0x1_0000)));
    assert_eq!(gic.redistributors().count(), 0);
    assert_eq!(gic.phandle().unwrap(), Some(Phandle(QEMU_GIC)));
    assert_eq!(tree.psci_method().unwrap(), PsciMethod::Hvc);
    assert_eq!(tree.version(), 17);
    assert_eq!(tree.boot_cpuid(), 0);
}

#[test]
fn qemu_virt_highmem_off_has_a_16_bus_ecam_below_4g() {
    let host = host_of(VIRT_HIGHMEM_OFF).unwrap();
    assert_eq!(host.ecam, region(0x3f00_0000, 16 * MIB));
    assert_eq!(host.buses, BusRange { start: 0, end: 15 });
    assert_eq!(host.buses.count(), 16);
    let spaces: Vec<_> = all(host.ranges().unwrap()).iter().map(|r| r.space).collect();
    assert_eq!(spaces, [PciSpace::Io, PciSpace::Memory32]);
}

#[test]
fn qemu_virt_bootargs() {
    let chosen = tree(VIRT_BOOTARGS).chosen().unwrap();
    assert_eq!(chosen.bootargs, Some("test=discover foo"));
}

#[test]
fn qemu_virt_el2_calls_psci_with_smc() {
    let tree = tree(VIRT_EL2);
    assert_eq!(tree.psci_method().unwrap(), PsciMethod::Smc);
    let gic = tree.gic().unwrap();
    assert_eq!(
        (gic.version, gic.cpu_interface),
        (GicVersion::V2, Some(region(0x0801_0000, 0x1_0000)))
    );
}

#[test]
fn qemu_virt_gicv3() {
    let tree = tree(VIRT_GICV3);
    let gic = tree.gic().unwrap();
    assert_eq!(gic.version, GicVersion::V3);
    assert_eq!(gic.distributor, region(0x0800_0000, 0x1_0000));
    assert_eq!(all(gic.redistributors()), [region(0x080a_0000, 0xf6_0000)]);
    assert_eq!(gic.cpu_interface, None);
    // msi-map now names the ITS.
    let its = tree.compatible_nodes("arm,gic-v3-its").next().unwrap().phandle().unwrap().unwrap();
    let host = host_of(VIRT_GICV3).unwrap();
    assert_eq!(host.msi_map().unwrap().unwrap().map(0x10).unwrap(), Some((its, 0x10)));
}

#[test]
fn qemu_fixtures_walk_consistently() {
    fn count_below(node: Node<'_>) -> usize {
        1 + node.children().map(count_below).sum::<usize>()
    }
    for blob in FIXTURES {
        let tree = tree(blob);
        assert_eq!(tree.nodes().count(), 58, "dtc prints 58 nodes");
        assert_eq!(count_below(tree.root()), 58);
        assert_eq!(tree.root().name(), "");
        for node in tree.nodes() {
            for child in node.children() {
                assert_eq!(child.depth(), node.depth() + 1);
            }
        }
        let pcie = tree.find_node("/pcie@10000000").or_else(|| tree.find_node("/pcie")).unwrap();
        assert!(pcie.is_compatible(ECAM_COMPATIBLE));
        assert!(tree.find_node("/intc/v2m").is_some() || tree.find_node("/intc/its").is_some());
        assert_eq!(tree.resolve_path("serial0").map(|n| n.name()), Some("pl011@9000000"));
    }
}

// ---- Synthetic trees ---------------------------------------------------------------------

#[test]
fn synthetic_machine_decodes() {
    let blob = machine(builder::ecam_16_buses);
    let tree = tree(&blob);
    assert_eq!(
        all(tree.memory()),
        [region(0x4000_0000, 0x4000_0000), region(0x1_0000_0000, 0x8000_0000)]
    );
    assert_eq!(all(tree.memory_reservations()), [region(0x4800_0000, 0x1000)]);
    assert_eq!(
        all(tree.reserved_memory()),
        [region(0x4f00_0000, 0x10_0000)],
        "disabled and size-only skipped"
    );
    assert_eq!(tree.pl011().unwrap(), region(0x0900_0000, 0x1000), "stdout-path through the alias");
    assert_eq!(tree.psci_method().unwrap(), PsciMethod::Smc);
    let gic = tree.gic().unwrap();
    assert_eq!(
        all(gic.redistributors()),
        [region(0x080a_0000, 0x10_0000), region(0x0900_0000, 0x10_0000)]
    );
    assert_eq!(gic.cpu_interface, None);
    let smmus = all(tree.smmus());
    assert_eq!(smmus.len(), 2);
    assert!(smmus[0].msi_parent);
    assert_eq!(smmus[0].interrupts.priq, None);
    assert_eq!(smmus[0].interrupts.gerror.map(GicInterrupt::intid), Some(0x4d + 32));
    assert_eq!(smmus[1].interrupts, SmmuInterrupts::default(), "no interrupts: MSI only");
    let host = host_of(&blob).unwrap();
    assert_eq!((host.segment, host.dma_coherent), (0, false));
    assert_eq!(host.iommu_map().unwrap().map(|_| ()), None);
    assert_eq!(host.stream_id(RequesterId(0x100)).unwrap(), None, "no iommu-map: not translated");
}

#[test]
fn multi_entry_iommu_map_with_mask() {
    // Function bits are masked off; buses 0-7 go to the first SMMU with StreamIDs from 0x10000,
    // buses 8-15 to the second from 0.
    let blob = machine(|b| {
        builder::ecam_16_buses(b);
        b.cells("iommu-map", &[0x0000, SMMU, 0x1_0000, 0x800, 0x0800, SMMU2, 0, 0x800]);
        b.cells("iommu-map-mask", &[0xfff8]);
        b.cells("msi-map", &[0, ITS, 0, 0x1_0000]);
        b.cells("linux,pci-domain", &[3]);
    });
    let host = host_of(&blob).unwrap();
    assert_eq!(host.segment, 3);
    let map = host.iommu_map().unwrap().unwrap();
    assert_eq!(map.mask(), 0xfff8);
    assert_eq!(map.entries().count(), 2);
    assert_eq!(
        host.stream_id(RequesterId(0x0107)).unwrap(),
        Some((Phandle(SMMU), StreamId(0x1_0100)))
    );
    assert_eq!(
        host.stream_id(RequesterId(0x0000)).unwrap(),
        Some((Phandle(SMMU), StreamId(0x1_0000)))
    );
    assert_eq!(
        host.stream_id(RequesterId(0x07ff)).unwrap(),
        Some((Phandle(SMMU), StreamId(0x1_07f8)))
    );
    assert_eq!(host.stream_id(RequesterId(0x0805)).unwrap(), Some((Phandle(SMMU2), StreamId(0))));
    assert_eq!(
        host.stream_id(RequesterId(0x0f3a)).unwrap(),
        Some((Phandle(SMMU2), StreamId(0x0738)))
    );
    assert_eq!(host.stream_id(RequesterId(0x1000)).unwrap(), None, "no entry: not translated");
    assert_eq!(host.msi_map().unwrap().unwrap().map(0x0107).unwrap(), Some((Phandle(ITS), 0x0107)));
}

#[test]
fn segment_defaults_to_the_host_index() {
    let mut b = FdtBuilder::new();
    b.begin("").cells("#address-cells", &[2]).cells("#size-cells", &[2]);
    for (i, base) in [0x3000_0000u32, 0x3100_0000, 0x3200_0000].iter().enumerate() {
        b.begin(&format!("pcie@{base:x}")).string("compatible", ECAM_COMPATIBLE);
        b.cells("reg", &[0, *base, 0, 0x10_0000]).cells("bus-range", &[0, 0]);
        if i == 1 {
            b.string("status", "disabled");
        }
        b.end();
    }
    let blob = b.end().finish();
    let segments: Vec<_> =
        all(tree(&blob).pci_hosts()).iter().map(|h| (h.ecam.base, h.segment)).collect();
    assert_eq!(segments, [(PhysAddr(0x3000_0000), 0), (PhysAddr(0x3200_0000), 1)]);
}

#[test]
fn ranges_decode_prefetchable_and_32_bit_cpu_addresses() {
    let mut b = FdtBuilder::new();
    b.begin("").cells("#address-cells", &[1]).cells("#size-cells", &[1]);
    b.begin("pcie")
        .string("compatible", ECAM_COMPATIBLE)
        .cells("#address-cells", &[3])
        .cells("#size-cells", &[2]);
    b.cells("reg", &[0x3f00_0000, 0x10_0000]).cells("bus-range", &[0, 0]);
    b.cells("ranges", &[0x4300_0000, 0x1, 0, 0x8000_0000, 0, 0x1000_0000]);
    let blob = b.end().end().finish();
    let ranges = all(host_of(&blob).unwrap().ranges().unwrap());
    assert_eq!(
        ranges,
        [PciRange {
            space: PciSpace::Memory64,
            prefetchable: true,
            pci_address: 0x1_0000_0000,
            cpu_address: PhysAddr(0x8000_0000),
            size: 0x1000_0000
        }]
    );
}

#[test]
fn a_blob_padded_past_totalsize_is_read_up_to_totalsize() {
    let mut blob = VIRT.to_vec();
    blob.resize(1 << 20, 0);
    assert_eq!(tree(&blob).nodes().count(), 58);
}

// ---- Hostile trees: each gives its typed error --------------------------------------------

fn err(blob: &[u8]) -> Error {
    DeviceTree::new(blob).expect_err("the tree must be rejected")
}

fn minimal() -> FdtBuilder {
    let mut b = FdtBuilder::new();
    b.begin("").cells("#address-cells", &[2]).cells("#size-cells", &[2]);
    b
}

#[test]
fn header_errors() {
    let mut blob = VIRT.to_vec();
    builder::set_header(&mut blob, field::MAGIC, 0xd00d_feee);
    assert_eq!(err(&blob), Error::InvalidField { what: "FDT magic", value: 0xd00d_feee });
    assert_eq!(err(&VIRT[..20]), Error::Truncated { what: "FDT header", len: 20, need: 40 });
    assert_eq!(
        err(&VIRT[..VIRT.len() - 1]),
        Error::Truncated { what: "FDT totalsize", len: VIRT.len() - 1, need: VIRT.len() }
    );
    let mut blob = VIRT.to_vec();
    builder::set_header(&mut blob, field::VERSION, 15);
    assert_eq!(err(&blob), Error::InvalidField { what: "FDT version", value: 15 });
    let mut blob = VIRT.to_vec();
    builder::set_header(&mut blob, field::TOTALSIZE, 12);
    assert_eq!(err(&blob), Error::InvalidField { what: "FDT totalsize", value: 12 });
}

#[test]
fn blocks_out_of_bounds() {
    let mut blob = VIRT.to_vec();
    let size = builder::header(&blob, field::SIZE_DT_STRUCT);
    let off = builder::header(&blob, field::OFF_DT_STRUCT);
    builder::set_header(&mut blob, field::SIZE_DT_STRUCT, size + 0x1_0000);
    assert_eq!(
        err(&blob),
        Error::LengthOverrun {
            what: "FDT structure block",
            offset: off as usize,
            length: size as usize + 0x1_0000,
            available: VIRT.len() - off as usize
        }
    );
    let mut blob = VIRT.to_vec();
    builder::set_header(&mut blob, field::OFF_DT_STRUCT, 0xffff_fffc);
    assert!(matches!(
        err(&blob),
        Error::LengthOverrun { what: "FDT structure block", available: 0, .. }
    ));
    let mut blob = VIRT.to_vec();
    builder::set_header(&mut blob, field::OFF_DT_STRUCT, off + 2);
    assert_eq!(
        err(&blob),
        Error::Misaligned { what: "FDT structure block", value: (off + 2).into(), align: 4 }
    );
    let mut blob = VIRT.to_vec();
    builder::set_header(&mut blob, field::OFF_DT_STRINGS, 0x10_0000);
    assert!(matches!(
        err(&blob),
        Error::LengthOverrun { what: "FDT strings block", offset: 0x10_0000, .. }
    ));
    let mut blob = VIRT.to_vec();
    builder::set_header(&mut blob, field::OFF_MEM_RSVMAP, 8);
    assert_eq!(err(&blob), Error::InvalidField { what: "FDT memory reservation block", value: 8 });
}

#[test]
fn reservation_block_without_terminator() {
    let mut b = minimal();
    b.reserve(0x1000, 0x1000).unterminated_reservations = true;
    // The struct block follows the entry directly, and its first bytes are not all zero.
    let error = err(&b.end().finish());
    assert!(matches!(error, Error::LengthOverrun { what, .. } if what.contains("reservation")));
}

#[test]
fn structure_errors() {
    // Node name without its NUL at the end of the block (8 bytes, so no padding either).
    let mut b = minimal();
    b.token(builder::BEGIN_NODE).raw(b"abcdefgh");
    assert_eq!(
        err(&b.finish_without_end()),
        Error::DeviceTree { what: "node name runs past the structure block" }
    );

    // A property whose length runs past the block.
    let mut b = minimal();
    b.raw_prop(0x100, 0, b"abcd");
    let blob = b.end().finish();
    assert!(matches!(err(&blob), Error::LengthOverrun { what: "FDT property", length: 0x100, .. }));

    // A property whose name offset is outside the strings block.
    let mut b = minimal();
    b.raw_prop(4, 0x9999, b"abcd");
    assert_eq!(
        err(&b.end().finish()),
        Error::BadReference { what: "FDT property name offset", value: 0x9999 }
    );

    // No FDT_END.
    assert_eq!(
        err(&minimal().end().finish_without_end()),
        Error::DeviceTree { what: "structure block ends without FDT_END" }
    );
    // FDT_END inside the root.
    assert_eq!(err(&minimal().finish()), Error::DeviceTree { what: "FDT_END inside an open node" });
    // An unknown token.
    assert_eq!(
        err(&minimal().token(7).end().finish()),
        Error::InvalidField { what: "FDT structure token", value: 7 }
    );
    // Unbalanced FDT_END_NODE, a second root, a property after a subnode, no root at all.
    assert_eq!(
        err(&minimal().end().end().finish()),
        Error::DeviceTree { what: "FDT_END_NODE without FDT_BEGIN_NODE" }
    );
    assert_eq!(
        err(&minimal().end().begin("").end().finish()),
        Error::DeviceTree { what: "more than one root node" }
    );
    assert_eq!(
        err(&minimal().begin("a").end().flag("late").end().finish()),
        Error::DeviceTree { what: "property after a subnode" }
    );
    assert_eq!(
        err(&FdtBuilder::new().token(builder::NOP).finish()),
        Error::DeviceTree { what: "no root node" }
    );
    // NOPs anywhere are fine.
    let blob = minimal()
        .token(builder::NOP)
        .begin("a")
        .token(builder::NOP)
        .end()
        .end()
        .token(builder::NOP)
        .finish();
    assert_eq!(tree(&blob).nodes().count(), 2);
}

#[test]
fn deep_nesting() {
    let build = |depth: usize| {
        let mut b = FdtBuilder::new();
        for _ in 0..depth {
            b.begin("n");
        }
        for _ in 0..depth {
            b.end();
        }
        b.finish()
    };
    assert_eq!(tree(&build(MAX_DEPTH)).nodes().count(), MAX_DEPTH);
    assert_eq!(
        err(&build(MAX_DEPTH + 1)),
        Error::CapacityExceeded { what: "FDT node nesting depth", capacity: 64 }
    );
    assert_eq!(
        err(&build(100_000)),
        Error::CapacityExceeded { what: "FDT node nesting depth", capacity: 64 }
    );
}

#[test]
fn cell_counts_out_of_range() {
    for (cells, expected) in [(0, 0), (5, 5)] {
        let mut b = FdtBuilder::new();
        b.begin("").cells("#address-cells", &[cells]).cells("#size-cells", &[2]);
        b.begin("pcie").string("compatible", ECAM_COMPATIBLE).cells("reg", &[0; 8]).end();
        let blob = b.end().finish();
        assert_eq!(
            host_of(&blob).unwrap_err(),
            Error::InvalidField { what: "#address-cells", value: expected }
        );
    }
    let mut b = FdtBuilder::new();
    b.begin("").cells("#address-cells", &[2]).cells("#size-cells", &[0]);
    b.begin("pcie").string("compatible", ECAM_COMPATIBLE).cells("reg", &[0, 0x3f00_0000]).end();
    assert_eq!(
        host_of(&b.end().finish()).unwrap_err(),
        Error::InvalidField { what: "#size-cells", value: 0 }
    );
    // A cell count of the wrong length.
    let mut b = FdtBuilder::new();
    b.begin("").prop("#address-cells", &[0, 0, 2]);
    b.begin("pcie").string("compatible", ECAM_COMPATIBLE).cells("reg", &[0; 4]).end();
    assert_eq!(
        host_of(&b.end().finish()).unwrap_err(),
        Error::InvalidField { what: "#address-cells length", value: 3 }
    );
    // The PCI host's own cells must be 3/2 for `ranges`.
    let mut b = minimal();
    b.begin("pcie").string("compatible", ECAM_COMPATIBLE).cells("#address-cells", &[2]);
    b.cells("reg", &[0, 0x3f00_0000, 0, 0x10_0000]).cells("bus-range", &[0, 0]).end();
    let host_blob = b.end().finish();
    assert_eq!(
        host_of(&host_blob).unwrap().ranges().unwrap_err(),
        Error::InvalidField { what: "PCI host #address-cells", value: 2 }
    );
}

#[test]
fn reg_errors() {
    // Not a whole number of entries.
    let blob = machine(|b| {
        b.cells("reg", &[0, 0x3f00_0000, 0]);
    });
    assert_eq!(host_of(&blob).unwrap_err(), Error::InvalidField { what: "reg", value: 12 });
    // Absent.
    let blob = machine(|_| {});
    assert_eq!(host_of(&blob).unwrap_err(), Error::NotFound { what: "PCI host ECAM reg" });
    // Wraps the address space.
    let blob = machine(|b| {
        b.cells("reg", &[0xffff_ffff, 0xfff0_0000, 0, 0x100_0000]);
    });
    assert_eq!(
        host_of(&blob).unwrap_err(),
        Error::AddressOverflow { base: 0xffff_ffff_fff0_0000, size: 0x100_0000 }
    );
}

#[test]
fn iommu_map_errors() {
    let with_map = |cells: &[u32]| {
        let cells = cells.to_vec();
        machine(move |b| {
            builder::ecam_16_buses(b);
            b.cells("iommu-map", &cells);
        })
    };
    let what = "iommu-map length (not whole <rid-base iommu iommu-base length> entries)";
    let blob = with_map(&[0, SMMU, 0]);
    assert_eq!(
        host_of(&blob).unwrap().iommu_map().unwrap_err(),
        Error::InvalidField { what, value: 12 }
    );
    assert_eq!(
        host_of(&blob).unwrap().stream_id(RequesterId(0)).unwrap_err(),
        Error::InvalidField { what, value: 12 }
    );
    let blob = with_map(&[0, SMMU, 0, 0x100, 0x100]);
    assert_eq!(
        host_of(&blob).unwrap().stream_id(RequesterId(0)).unwrap_err(),
        Error::InvalidField { what, value: 20 }
    );
    let blob = with_map(&[]);
    assert_eq!(
        host_of(&blob).unwrap().stream_id(RequesterId(0)).unwrap_err(),
        Error::InvalidField { what, value: 0 }
    );

    // A phandle that names nothing: only an error for the RIDs that use it.
    let blob = with_map(&[0, SMMU, 0, 0x100, 0x100, 0x7777, 0, 0x100]);
    let host = host_of(&blob).unwrap();
    assert_eq!(host.stream_id(RequesterId(0x42)).unwrap(), Some((Phandle(SMMU), StreamId(0x42))));
    assert_eq!(
        host.stream_id(RequesterId(0x142)).unwrap_err(),
        Error::BadReference { what: "iommu-map iommu phandle", value: 0x7777 }
    );

    // rid-base with bits outside the mask.
    let blob = machine(|b| {
        builder::ecam_16_buses(b);
        b.cells("iommu-map", &[0x0001, SMMU, 0, 0x100]).cells("iommu-map-mask", &[0xff00]);
    });
    assert_eq!(
        host_of(&blob).unwrap().stream_id(RequesterId(0x0001)).unwrap_err(),
        Error::InvalidField { what: "iommu-map rid-base (bits outside iommu-map-mask)", value: 1 }
    );

    // Output IDs past 32 bits.
    let blob = with_map(&[0, SMMU, 0xffff_ff00, 0x1000]);
    assert_eq!(
        host_of(&blob).unwrap().stream_id(RequesterId(0x100)).unwrap_err(),
        Error::InvalidField { what: "iommu-map output ID (above 32 bits)", value: 0x1_0000_0000 }
    );
}

#[test]
fn bus_range_errors() {
    let with = |reg_size: u32, bus_range: &[u32]| {
        let bus_range = bus_range.to_vec();
        machine(move |b| {
            b.cells("reg", &[0, 0x3f00_0000, 0, reg_size]).cells("bus-range", &bus_range);
        })
    };
    assert_eq!(
        host_of(&with(0x100_0000, &[8, 3])).unwrap_err(),
        Error::InvalidField { what: "bus-range end (below its start)", value: 3 }
    );
    assert_eq!(
        host_of(&with(0x100_0000, &[0, 0x100])).unwrap_err(),
        Error::InvalidField { what: "bus-range bus number", value: 0x100 }
    );
    assert_eq!(
        host_of(&with(0x100_0000, &[0])).unwrap_err(),
        Error::InvalidField { what: "bus-range length", value: 4 }
    );
    assert_eq!(
        host_of(&with(0xff_ffff, &[0, 15])).unwrap_err(),
        Error::InvalidField {
            what: "ECAM size (below 1 MiB per bus of bus-range)",
            value: 0xff_ffff
        }
    );
    // No bus-range means 256 buses, which a 16 MiB window does not cover.
    let blob = machine(|b| {
        b.cells("reg", &[0, 0x3f00_0000, 0, 0x100_0000]);
    });
    assert!(matches!(host_of(&blob).unwrap_err(), Error::InvalidField { value: 0x100_0000, .. }));
    // A window that starts at bus 16 needs only its own buses.
    let blob = with(0x10_0000, &[16, 16]);
    let host = host_of(&blob).unwrap();
    assert_eq!((host.buses, host.buses.count()), (BusRange { start: 16, end: 16 }, 1));
    assert!(host.buses.contains(16) && !host.buses.contains(15));
}

#[test]
fn segment_errors() {
    let blob = machine(|b| {
        builder::ecam_16_buses(b);
        b.cells("linux,pci-domain", &[0x1_0000]);
    });
    assert_eq!(
        host_of(&blob).unwrap_err(),
        Error::InvalidField { what: "linux,pci-domain", value: 0x1_0000 }
    );
}

#[test]
fn interrupt_errors() {
    // An interrupt parent that names nothing.
    let mut b = FdtBuilder::new();
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .cells("interrupt-parent", &[0x55]);
    b.begin("smmu")
        .string("compatible", SMMU_V3_COMPATIBLE)
        .cells("reg", &[0, 0x0905_0000, 0, 0x2_0000]);
    b.cells("interrupts", &[0, 0x4a, 1]).string("interrupt-names", "eventq").end();
    let blob = b.end().finish();
    assert_eq!(
        tree(&blob).smmus().next().unwrap().unwrap_err(),
        Error::BadReference { what: "interrupt-parent", value: 0x55 }
    );

    let smmu_with = |interrupts: &[u32], names: &[&str]| {
        let mut b = FdtBuilder::new();
        b.begin("")
            .cells("#address-cells", &[2])
            .cells("#size-cells", &[2])
            .cells("interrupt-parent", &[1]);
        b.begin("gic")
            .cells("phandle", &[1])
            .cells("#interrupt-cells", &[3])
            .flag("interrupt-controller")
            .end();
        b.begin("smmu")
            .string("compatible", SMMU_V3_COMPATIBLE)
            .cells("reg", &[0, 0x0905_0000, 0, 0x2_0000]);
        b.cells("interrupts", interrupts).strings_prop("interrupt-names", names).end();
        b.end().finish()
    };
    let first =
        |blob: &[u8]| DeviceTree::new(blob).unwrap().smmus().next().unwrap().map(|s| s.interrupts);
    assert_eq!(
        first(&smmu_with(&[0, 1000, 1], &["gerror"])).unwrap_err(),
        Error::InvalidField { what: "GIC SPI number", value: 1000 }
    );
    assert_eq!(
        first(&smmu_with(&[1, 7, 4], &["gerror"])).unwrap_err(),
        Error::InvalidField { what: "SMMUv3 interrupt (a PPI, not an SPI)", value: 7 }
    );
    assert_eq!(
        first(&smmu_with(&[2, 7, 4], &["gerror"])).unwrap_err(),
        Error::InvalidField { what: "GIC interrupt type (0 = SPI, 1 = PPI)", value: 2 }
    );
    assert_eq!(
        first(&smmu_with(&[0, 7, 4, 0], &["gerror"])).unwrap_err(),
        Error::InvalidField { what: "interrupts length", value: 16 }
    );
    assert_eq!(
        first(&smmu_with(&[0, 7, 4], &["gerror", "eventq"])).unwrap_err(),
        Error::InvalidField { what: "SMMUv3 interrupt-names (more than interrupts)", value: 2 }
    );
    let combined = first(&smmu_with(&[0, 7, 4, 0, 8, 1], &["combined", "unknown"])).unwrap();
    assert_eq!(combined.combined.map(GicInterrupt::intid), Some(39));
    assert_eq!(combined.eventq, None);
}

#[test]
fn smmu_register_space_too_small() {
    let mut b = minimal();
    b.begin("smmu")
        .string("compatible", SMMU_V3_COMPATIBLE)
        .cells("reg", &[0, 0x0905_0000, 0, 0x1_0000])
        .end();
    assert_eq!(
        tree(&b.end().finish()).smmus().next().unwrap().unwrap_err(),
        Error::InvalidField {
            what: "SMMUv3 reg size (too small for its register pages)",
            value: 0x1_0000
        }
    );
}

#[test]
fn chosen_string_errors() {
    let chosen = |value: &[u8]| {
        let mut b = minimal();
        b.begin("chosen").prop("bootargs", value).end();
        let blob = b.end().finish();
        DeviceTree::new(&blob).unwrap().chosen().map(|c| c.bootargs.map(str::to_owned))
    };
    assert_eq!(chosen(b"console=hvc0\0").unwrap().as_deref(), Some("console=hvc0"));
    assert_eq!(
        chosen(b"console=hvc0").unwrap_err(),
        Error::Truncated { what: "/chosen bootargs", len: 12, need: 13 }
    );
    assert_eq!(
        chosen(b"").unwrap_err(),
        Error::Truncated { what: "/chosen bootargs", len: 0, need: 1 }
    );
    assert_eq!(
        chosen(b"ab\xffcd\0").unwrap_err(),
        Error::InvalidField { what: "/chosen bootargs", value: 2 }
    );
    assert_eq!(
        chosen(b"ab\0cd\0").unwrap_err(),
        Error::InvalidField { what: "/chosen bootargs", value: 2 }
    );
    assert_eq!(
        tree(&minimal().end().finish()).chosen().unwrap_err(),
        Error::NotFound { what: "/chosen" }
    );
}

#[test]
fn platform_errors() {
    let mut b = minimal();
    b.begin("psci").string("compatible", "arm,psci").string("method", "svc").end();
    let blob = b.end().finish();
    let tree = tree(&blob);
    assert_eq!(
        tree.psci_method().unwrap_err(),
        Error::InvalidField { what: "PSCI method (text as a number)", value: 0x7376_6300 }
    );
    assert_eq!(tree.pl011().unwrap_err(), Error::NotFound { what: "arm,pl011" });
    assert_eq!(tree.gic().unwrap_err(), Error::NotFound { what: "GIC (arm,gic-v3 or a GICv2)" });

    let mut b = minimal();
    b.begin("gic").string("compatible", "arm,gic-v3").cells("#redistributor-regions", &[4]);
    b.cells("reg", &[0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0x10_0000]).end();
    assert_eq!(
        super::DeviceTree::new(&b.end().finish()).unwrap().gic().unwrap_err(),
        Error::InvalidField { what: "GICv3 #redistributor-regions", value: 4 }
    );
    let mut b = minimal();
    b.begin("gic")
        .string("compatible", "arm,cortex-a15-gic")
        .cells("reg", &[0, 0x0800_0000, 0, 0x1_0000])
        .end();
    assert_eq!(
        super::DeviceTree::new(&b.end().finish()).unwrap().gic().unwrap_err(),
        Error::NotFound { what: "GICv2 CPU interface reg" }
    );
}

#[test]
fn phandles_resolve_and_dangling_ones_are_reported() {
    let tree = tree(VIRT);
    assert_eq!(tree.node_by_phandle(Phandle(QEMU_SMMU)).unwrap().name(), "smmuv3@9050000");
    assert!(tree.node_by_phandle(Phandle(0x1234)).is_none());
    // A node whose interrupt-parent is its own phandle resolves once, without a loop.
    let mut b = minimal();
    b.begin("gic")
        .cells("phandle", &[9])
        .cells("interrupt-parent", &[9])
        .cells("#interrupt-cells", &[3]);
    b.cells("interrupts", &[1, 9, 4]).end();
    let blob = b.end().finish();
    let gic = super::DeviceTree::new(&blob).unwrap().find_node("/gic").unwrap();
    assert_eq!(gic.interrupt_parent().unwrap().name(), "gic");
    let ppi = gic.gic_interrupts().unwrap().next().unwrap().unwrap();
    assert_eq!((ppi.kind, ppi.intid()), (GicInterruptKind::Ppi, 25));
}

// ---- Hostile input never panics ------------------------------------------------------------

/// Runs every accessor to the end; returns how many items it saw, so nothing is optimised out.
fn exercise(blob: &[u8]) -> usize {
    let Ok(tree) = DeviceTree::new(blob) else { return 0 };
    let mut seen = 0usize;
    for node in tree.nodes() {
        seen += node.name().len() + node.properties().count() + node.children().count();
        for property in node.properties() {
            let _ = (property.as_u32("x"), property.as_str("x"), property.strings().count());
        }
        let _ = (
            node.address_cells(),
            node.size_cells(),
            node.compatible().count(),
            node.is_available(),
        );
        if let Ok(reg) = node.reg() {
            seen += reg.count();
        }
        if let Ok(Some(phandle)) = node.phandle() {
            seen += usize::from(tree.node_by_phandle(phandle).is_some());
        }
        if let Ok(interrupts) = node.gic_interrupts() {
            seen += interrupts.count();
        }
        let _ = node.interrupt_parent();
    }
    for host in tree.pci_hosts().flatten() {
        if let Ok(ranges) = host.ranges() {
            seen += ranges.count();
        }
        for map in [host.iommu_map(), host.msi_map()].into_iter().flatten().flatten() {
            seen += map.entries().count();
            for id in [0, 1, 0x100, 0x7fff, 0xffff, u32::MAX] {
                let _ = map.map(id);
            }
        }
        for rid in [0, 8, 0x100, 0xffff] {
            let _ = host.stream_id(RequesterId(rid));
        }
    }
    seen += tree.smmus().count() + tree.memory().count() + tree.memory_reservations().count();
    seen += tree.reserved_memory().count();
    if let Ok(gic) = tree.gic() {
        seen += gic.redistributors().count();
    }
    let _ = (tree.chosen(), tree.pl011(), tree.psci_method(), tree.root().name());
    for path in ["/", "/chosen", "/pcie", "/intc/v2m", "serial0:115200", "nothing", "//x//"] {
        let _ = tree.resolve_path(path);
    }
    seen
}

#[test]
fn fixtures_exercise_fully() {
    for blob in FIXTURES {
        assert!(exercise(blob) > 58);
    }
    assert!(exercise(&machine(builder::ecam_16_buses)) > 0);
}

fn any_fixture() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(FIXTURES.to_vec())
}

/// A valid header in front of random bytes, so that the walk itself meets the noise.
fn header_then_noise() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(any::<u8>(), 0..512), 0u32..600, 0u32..600, any::<bool>()).prop_map(
        |(body, off_struct, off_strings, v16)| {
            let total = 40 + body.len() as u32;
            let off_struct = 40 + (off_struct & !3);
            let words = [
                0xd00d_feed,
                total,
                off_struct,
                40 + off_strings,
                40,
                if v16 { 16 } else { 17 },
                16,
                0,
                64,
                256,
            ];
            let mut blob: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            blob.extend_from_slice(&body);
            blob
        },
    )
}

proptest! {
    // PROPTEST_CASES can raise the count for a longer soak.
    #![proptest_config(ProptestConfig {
        cases: ProptestConfig::default().cases.max(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic(blob in prop::collection::vec(any::<u8>(), 0..4096)) {
        exercise(&blob);
    }

    #[test]
    fn header_then_noise_never_panics(blob in header_then_noise()) {
        exercise(&blob);
    }

    #[test]
    fn fixtures_with_overwritten_bytes_never_panic(
        fixture in any_fixture(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
    ) {
        let mut blob = fixture.to_vec();
        for (at, byte) in edits {
            let at = at.index(blob.len());
            blob[at] = byte;
        }
        exercise(&blob);
    }

    #[test]
    fn fixtures_with_overwritten_words_never_panic(
        fixture in any_fixture(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop_oneof![
            Just(0u32), Just(1), Just(2), Just(3), Just(4), Just(9), Just(0x10),
            Just(0x7fff_ffff), Just(u32::MAX), any::<u32>(),
        ]), 1..8),
    ) {
        let mut blob = fixture.to_vec();
        for (at, word) in edits {
            let at = at.index(blob.len() / 4) * 4;
            blob[at..at + 4].copy_from_slice(&word.to_be_bytes());
        }
        exercise(&blob);
    }

    #[test]
    fn fixtures_with_overwritten_property_values_never_panic(
        fixture in any_fixture(),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()),
            1..8,
        ),
    ) {
        // Only value bytes change, so the tree stays valid and every decoder meets the noise.
        let values: Vec<(usize, usize)> = tree(fixture)
            .nodes()
            .flat_map(|node| node.properties())
            .filter(|property| !property.value.is_empty())
            .map(|p| (p.value.as_ptr() as usize - fixture.as_ptr() as usize, p.value.len()))
            .collect();
        let mut blob = fixture.to_vec();
        for (which, at, byte) in edits {
            let (start, len) = values[which.index(values.len())];
            blob[start + at.index(len)] = byte;
        }
        prop_assert!(DeviceTree::new(&blob).is_ok());
        exercise(&blob);
    }

    #[test]
    fn machine_with_random_pcie_properties_never_panics(
        reg in prop::collection::vec(any::<u32>(), 0..6),
        bus_range in prop::collection::vec(0u32..300, 0..3),
        iommu_map in prop::collection::vec(
            prop_oneof![Just(SMMU), 0u32..0x2_0000, any::<u32>()],
            0..10,
        ),
        mask in prop::option::of(any::<u32>()),
    ) {
        let blob = machine(|b| {
            b.cells("reg", &reg).cells("bus-range", &bus_range).cells("iommu-map", &iommu_map);
            if let Some(mask) = mask {
                b.cells("iommu-map-mask", &[mask]);
            }
        });
        exercise(&blob);
    }
}
