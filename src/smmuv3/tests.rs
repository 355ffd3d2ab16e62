//! Host tests of the SMMUv3 driver against a small register fake.
