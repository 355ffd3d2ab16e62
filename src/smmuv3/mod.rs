//! Arm SMMUv3 (Arm IHI 0070, SMMU architecture version 3).
//!
//! [`regs`] decodes and validates the ID registers before anything is sized from them.

pub mod regs;

pub use regs::{IdRegisters, Idr0, Idr1, Idr3, Idr5};
