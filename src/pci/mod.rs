//! PCI Express: configuration access through ECAM.
//!
//! Enumeration, capabilities, SR-IOV, ATS/PASID/PRI control and isolation groups build on
//! [`Ecam`].

pub mod ecam;

pub use ecam::{Ecam, EcamWindow, FunctionId, class_name};
