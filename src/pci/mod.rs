//! PCI Express: configuration access through ECAM.
//!
//! Enumeration, capabilities, SR-IOV, ATS/PASID/PRI control and isolation groups build on
//! [`Ecam`].

pub mod config;
pub mod ecam;

pub use config::{AccessCounts, ConfigAccess};
pub use ecam::{Ecam, EcamSet, EcamWindow, FunctionId, class_name};
