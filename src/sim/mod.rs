//! Software models of the hardware the library drives, for host tests and for hypervisor
//! developers who want to test an integration without hardware (feature `sim`; always on in the
//! library's own tests). The models use `std`.
//!
//! They follow the specifications, not the driver: where a layout is checked, it is checked
//! against an independent encoding (the specification's tables, Linux's definitions).

extern crate std;

pub mod pci;
pub mod smmuv3;
pub mod vtd;

#[cfg(test)]
mod fault_injection;

pub use pci::Topology;
