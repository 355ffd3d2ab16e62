//! Readers for the firmware's description of the machine: ACPI tables on x86 and on ACPI Arm
//! machines, and the flattened device tree on Arm.
//!
//! Every reader is a safe parser over a byte slice. Malformed input (short tables, bad checksums,
//! lengths that overrun, zero-length structures) gives an [`Error`](crate::Error) that carries
//! the bad value; structures of unknown type are skipped by their length.

pub mod acpi;
pub mod dt;
