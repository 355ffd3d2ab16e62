//! Flattened device tree reader: what an Arm hypervisor needs to own PCIe and the SMMU.
//!
//! [`DeviceTree::new`] checks a blob (DTSpec v0.4 ch. 5) once; after that every accessor is a
//! lazy walk or decoder over the borrowed bytes: PCI host bridges ([`DeviceTree::pci_hosts`],
//! with `ranges`, `bus-range` and `iommu-map` RID-to-StreamID translation), SMMUv3s
//! ([`DeviceTree::smmus`]), RAM and reservations, `/chosen`, the PL011, the GIC and the PSCI
//! conduit. Nothing allocates, nothing panics and every loop is bounded by the blob's size;
//! malformed input is an [`Error`](crate::Error) that carries the bad value. Finders skip nodes
//! whose `status` is not `okay`. Without an index (that would need allocation) a phandle lookup
//! scans the tree, so it costs one walk.
//!
//! Why hand-written: fuzzed with random bytes and QEMU `virt` blobs with 1-8 bytes overwritten,
//! `fdt` 0.1.5 panicked on 79 % of the blobs, `fdt` 0.2.0-alpha3's fallible parser overflowed on
//! 71 % of random headers and spun for minutes on 2 of ~6 000 blobs, and `flat_device_tree` 3.1.1
//! panicked on 0.3 % (unchecked `off_mem_rsvmap`, ancestor-stack underflow). Guarding them needs
//! the structure block checked first, which is the walker itself, and none decodes `iommu-map`,
//! `bus-range` or GIC specifiers; here lints deny indexing, unchecked arithmetic and panics.

// Hostile firmware input: make every possible panic a build error outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

mod pci;
mod platform;
mod smmu;
mod tree;
mod values;

#[cfg(test)]
mod builder;
#[cfg(test)]
mod tests;

pub use pci::{
    BusRange, ECAM_COMPATIBLE, IdMap, IdMapEntries, IdMapEntry, PciHost, PciHosts, PciRange,
    PciRanges, PciSpace,
};
pub use platform::{
    Chosen, GIC_V2_COMPATIBLES, GIC_V3_COMPATIBLE, Gic, GicVersion, PL011_COMPATIBLE,
    PSCI_COMPATIBLES, PsciMethod,
};
pub use smmu::{
    GicInterrupt, GicInterruptKind, GicInterrupts, SMMU_V3_COMPATIBLE, SmmuInterrupts, SmmuV3,
    SmmuV3s,
};
pub use tree::{Children, DeviceTree, MAX_DEPTH, Node, Nodes, Properties, Property};
pub use values::{Cells, Phandle, RegEntries, Region, StringList};
