//! PCI Express: configuration access through ECAM.
//!
//! Enumeration, capabilities, SR-IOV, ATS/PASID/PRI control and isolation groups build on
//! [`Ecam`].

pub mod acs;
pub mod alias;
pub mod ari;
pub mod ats;
pub mod bars;
pub mod caps;
pub mod config;
pub mod ecam;
pub mod enumerate;
pub mod groups;
pub mod pasid;
pub mod pcie;
pub mod pri;
pub mod pri_share;
pub mod quirks;
pub mod sriov;
pub mod topology;
pub mod vconfig;

pub use alias::{Alias, AliasReason};
pub use config::{AccessCounts, ConfigAccess};
pub use ecam::{Ecam, EcamSet, EcamWindow, FunctionId, class_name};
pub use groups::{DomainId, GroupAttachments, GroupId, Groups};
pub use topology::{Acs, Bar, BarKind, BusRange, Capabilities, Function, FunctionIndex, FunctionKind, Topology};
