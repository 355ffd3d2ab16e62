//! The architecture-neutral IOMMU core: I/O page tables, domains, and the invalidations every
//! change owes the hardware.
//!
//! A change to a translation structure returns a [`PendingInvalidation`], which is
//! `#[must_use]`: the caller hands it to the unit's flush, which issues the invalidations and
//! only then releases the page-table pages the change emptied (a page-walk cache may still hold
//! them until the invalidation completes). So no mapping is left without its invalidation and
//! no table page is reused while hardware may still walk it.
//!
//! [`pri`] is the page-request service both architectures feed: routing, grouping, one
//! response per group, with fixed pools.

pub mod domain;
pub mod fault;
pub mod invalidation;
pub mod pagetable;
pub mod pri;

pub use domain::{Backend, Domain, DomainKind, Endpoint, Iommu, Stage, StageFormat, Target};
pub use invalidation::{InvalidationRange, PendingInvalidation};
