//! `pcie-iommu`: a `no_std` library that lets a type-1 hypervisor own the PCIe hierarchy and the
//! IOMMUs (Intel VT-d, Arm SMMUv3).
//!
//! The hypervisor hands the library its firmware tables (ACPI on x86, a flattened device tree on
//! Arm) and an implementation of [`hal::Platform`]; everything the library does to hardware goes
//! through that trait and through the one MMIO module, [`mmio`].
//!
//! The library does not allocate from a heap: structures are sized from the firmware description
//! at init, and pages for hardware tables come from [`hal::Platform::alloc_dma_pages`].
//!
//! Hardware and firmware input is treated as hostile: parsers return [`Error`] values that carry
//! the offending value, every poll of hardware is bounded, and nothing panics on input.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod addr;
pub mod error;
pub mod firmware;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod hal;
pub mod iommu;
pub mod mmio;
pub mod pci;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod smmuv3;
pub mod vtd;

pub use addr::{Bdf, Iova, Pasid, PhysAddr, RequesterId, StreamId, VirtAddr};
pub use error::{Error, Result};
