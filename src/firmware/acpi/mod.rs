//! ACPI table readers: the tables a hypervisor needs to own PCIe and the IOMMUs.
//!
//! - [`AcpiTables`] walks from the RSDP (ACPI 6.5 §5.2.5) through the XSDT or RSDT to any table,
//!   mapping physical memory through a closure the caller supplies.
//! - [`validate_table`] and [`table_length`] check the common header of any table (§5.2.6).
//! - [`Mcfg`] (ECAM windows), [`Dmar`] (Intel VT-d units, reserved regions, device scopes),
//!   [`Iort`] (Arm SMMUs, ITS groups, ID mappings) and [`Hpet`] read specific tables.
//!
//! Each reader is a `Copy` view over the table's bytes: `parse` validates the header, length,
//! checksum and fixed fields once, and accessors read fields in place. Variable-length parts are
//! walked by iterators that validate each record when they reach it, yield `Result`, and stop
//! after the first error. Records of unknown type are skipped by their length and yielded as
//! `Unknown` so the caller can log them. Nothing here allocates, uses `unsafe`, or panics on any
//! input: every malformed table gives an [`Error`](crate::Error) carrying the bad value, with
//! offsets relative to the start of the table.

mod bytes;
mod dmar;
mod hpet;
pub(crate) mod iort;
mod mcfg;
mod rsdp;
mod rsdt;
mod sdt;
mod tables;
#[cfg(test)]
mod testutil;

pub use dmar::{
    Andd, Atsr, DeviceScope, DeviceScopeKind, DeviceScopes, Dmar, Drhd, RemappingStructure,
    RemappingStructures, Rhsa, Rmrr, Satc, Sidp,
};
pub use hpet::Hpet;
pub use iort::{
    IdMapping, IdMappings, Iort, IortNode, IortNodeKind, IortNodes, ItsGroup, MemoryAccess,
    NamedComponent, Pmcg, Rmr, RmrRange, RmrRanges, RootComplex, SmmuV1V2, SmmuV3,
};
pub use mcfg::{Mcfg, McfgEntries, McfgEntry};
pub use rsdp::{RSDP_V1_LEN, RSDP_V2_LEN, Rsdp};
pub use rsdt::{RootEntries, RootTable};
pub use sdt::{SDT_HEADER_LEN, SdtHeader, table_length, validate_table};
pub use tables::{AcpiTables, TableInfo, Tables};
