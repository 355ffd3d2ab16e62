//! PCI Express: configuration access through ECAM.
//!
//! Enumeration, capabilities, SR-IOV, ATS/PASID/PRI control and isolation groups build on
//! [`Ecam`].

pub mod config;
pub mod ecam;
pub mod topology;

pub use config::{AccessCounts, ConfigAccess};
pub use ecam::{Ecam, EcamSet, EcamWindow, FunctionId, class_name};
pub use topology::{Acs, Bar, BarKind, BusRange, Capabilities, Function, FunctionIndex, FunctionKind, Topology};
