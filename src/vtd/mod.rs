//! Intel VT-d (Intel Virtualization Technology for Directed I/O, rev. 4.x/5.x).
//!
//! [`regs`] decodes and validates the capability registers before anything is sized from them.

pub mod fault;
pub mod regs;
pub mod unit;

pub use fault::{FaultRecord, FaultStatus};
pub use regs::{Capability, ExtendedCapability, Version};
pub use unit::{TableMode, Unit};
