//! Intel VT-d (Intel Virtualization Technology for Directed I/O, rev. 4.x/5.x).
//!
//! [`regs`] decodes and validates the capability registers before anything is sized from them.
//! [`unit`](mod@unit) owns one remapping unit: its registers, the GCMD/GSTS handshake, the
//! translation tables ([`context`] for root and context entries and domain IDs, [`pasid`] for
//! scalable-mode PASID directories and entries) and the invalidation queue ([`qi`]) that issues
//! the [`descriptor`]s every change owes. [`remapping`] brings up every unit a DMAR reports and
//! identity-maps its RMRRs before translation is enabled. [`prq`] reads the page request queue
//! (ECAP.PRS) into the architecture-neutral [`crate::iommu::pri`] service and sends its page
//! group responses.

pub mod backend;
pub mod context;
pub mod descriptor;
pub mod fault;
pub mod pasid;
pub mod prq;
pub mod qi;
pub mod regs;
pub mod remapping;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod testfake;
pub mod unit;

pub use context::{DomainIds, TableInvalidation};
pub use descriptor::Descriptor;
pub use fault::{FaultRecord, FaultStatus};
pub use pasid::PasidTranslation;
pub use qi::{FlushScope, InvalidationQueue};
pub use regs::{Capability, ExtendedCapability, Version};
pub use remapping::{ModePolicy, Remapping, RmrrDevice, RmrrRange};
pub use unit::{TableMode, Unit};
