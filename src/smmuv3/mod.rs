//! Arm SMMUv3 (Arm IHI 0070, SMMU architecture version 3).
//!
//! [`regs`] decodes and validates the ID registers before anything is sized from them.
//! [`unit`](mod@unit) brings one SMMU up and configures StreamIDs ([`ste`]: stream table
//! entries, context descriptors, the linear or 2-level stream table), issues [`command`]s
//! through the command queue and decodes [`event`]s from the event queue ([`queue`]).
//! [`backend`] drives a unit for the architecture-neutral domain core ([`crate::iommu::domain`]).
//! [`priq`] services the PRI queue for the page-request service (`CMD_PRI_RESP`, overflow, drain)
//! and, as [`priq::SmmuPriQueue`], feeds fault-capable domains ([`crate::iommu::fault`]).
//! [`discovery`] describes an SMMU and its RID-to-StreamID mapping from a device tree or IORT.

pub mod backend;
pub mod command;
pub mod discovery;
pub mod event;
pub mod priq;
pub mod queue;
pub mod regs;
#[cfg(test)]
mod sim_tests;
pub mod ste;
#[cfg(test)]
mod tests;
pub mod unit;

pub use backend::{SidMap, SmmuBackend};
pub use command::Command;
pub use discovery::{SmmuDescription, StreamIdMap};
pub use event::{Event, EventKind};
pub use priq::SmmuPriQueue;
pub use regs::{IdRegisters, Idr0, Idr1, Idr3, Idr5};
pub use ste::{Stage1, Stage2, StreamConfig, StreamTableFormat};
pub use unit::{TlbScope, Unit, UnitConfig};
