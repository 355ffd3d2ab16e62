//! RSDT and XSDT: the lists of physical addresses of all other tables (ACPI 6.5 §5.2.7, §5.2.8).

use core::fmt;
use core::slice::ChunksExact;

use super::bytes::array_at;
use super::sdt::{SDT_HEADER_LEN, SdtHeader, checked_table};
use crate::addr::PhysAddr;
use crate::error::{Error, Result};

/// A validated RSDT (32-bit entries) or XSDT (64-bit entries).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RootTable<'a> {
    header: SdtHeader<'a>,
    entries: &'a [u8],
    entry_size: usize,
}

impl<'a> RootTable<'a> {
    /// Validates an RSDT. A body that is not a whole number of 4-byte entries is
    /// [`Error::Truncated`] (`what: "RSDT entry"`).
    pub fn parse_rsdt(bytes: &'a [u8]) -> Result<Self> {
        Self::parse(bytes, b"RSDT", "RSDT", "RSDT entry", 4)
    }

    /// Validates an XSDT. A body that is not a whole number of 8-byte entries is
    /// [`Error::Truncated`] (`what: "XSDT entry"`).
    pub fn parse_xsdt(bytes: &'a [u8]) -> Result<Self> {
        Self::parse(bytes, b"XSDT", "XSDT", "XSDT entry", 8)
    }

    fn parse(
        bytes: &'a [u8],
        signature: &[u8; 4],
        what: &'static str,
        entry_what: &'static str,
        entry_size: usize,
    ) -> Result<Self> {
        let (header, table) = checked_table(bytes, Some(signature), what)?;
        let entries = table.get(SDT_HEADER_LEN..).unwrap_or_default();
        let partial = entries.len() % entry_size;
        if partial != 0 {
            return Err(Error::Truncated { what: entry_what, len: partial, need: entry_size });
        }
        Ok(Self { header, entries, entry_size })
    }

    /// The table header.
    pub fn header(&self) -> SdtHeader<'a> {
        self.header
    }

    /// Whether this is the XSDT (64-bit entries).
    pub fn is_xsdt(&self) -> bool {
        self.entry_size == 8
    }

    /// Number of table addresses.
    pub fn entry_count(&self) -> usize {
        self.entries.len() / self.entry_size
    }

    /// The physical addresses of the tables, in table order.
    pub fn entries(&self) -> RootEntries<'a> {
        RootEntries { chunks: self.entries.chunks_exact(self.entry_size) }
    }
}

impl fmt::Debug for RootTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(if self.is_xsdt() { "Xsdt" } else { "Rsdt" })
            .field("header", &self.header)
            .field("entries", &self.entry_count())
            .finish()
    }
}

/// Iterator over the table addresses of an RSDT or XSDT (see [`RootTable::entries`]).
#[derive(Clone, Debug)]
pub struct RootEntries<'a> {
    chunks: ChunksExact<'a, u8>,
}

impl Iterator for RootEntries<'_> {
    type Item = PhysAddr;

    fn next(&mut self) -> Option<PhysAddr> {
        let chunk = self.chunks.next()?;
        Some(PhysAddr(match chunk.len() {
            4 => array_at::<4>(chunk, 0).map_or(0, |b| u64::from(u32::from_le_bytes(b))),
            _ => array_at::<8>(chunk, 0).map_or(0, u64::from_le_bytes),
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for RootEntries<'_> {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{boundary_mutations, edits, mutate, rsdt, sdt, xsdt};
    use super::*;

    fn exercise(bytes: &[u8]) {
        for t in [RootTable::parse_rsdt(bytes), RootTable::parse_xsdt(bytes)].into_iter().flatten()
        {
            let _ = (t.entry_count(), t.is_xsdt(), format!("{t:?}"));
            assert_eq!(t.entries().count(), t.entry_count());
        }
    }

    #[test]
    fn entries() {
        let x = xsdt(&[0x1_0000_1000, 0x2000]);
        let t = RootTable::parse_xsdt(&x).unwrap();
        assert!(t.is_xsdt());
        assert_eq!(t.entries().collect::<Vec<_>>(), [PhysAddr(0x1_0000_1000), PhysAddr(0x2000)]);
        let r = rsdt(&[0x7fe0_0000, 0x1000, 0x3000]);
        let t = RootTable::parse_rsdt(&r).unwrap();
        assert!(!t.is_xsdt());
        assert_eq!(t.entries().len(), 3);
        assert_eq!(t.entries().nth(2), Some(PhysAddr(0x3000)));
        assert_eq!(RootTable::parse_rsdt(&sdt(b"RSDT", 1, &[])).unwrap().entry_count(), 0);
    }

    #[test]
    fn malformed() {
        assert_eq!(
            RootTable::parse_xsdt(&sdt(b"XSDT", 1, &[0; 12])),
            Err(Error::Truncated { what: "XSDT entry", len: 4, need: 8 })
        );
        assert_eq!(
            RootTable::parse_rsdt(&sdt(b"RSDT", 1, &[0; 6])),
            Err(Error::Truncated { what: "RSDT entry", len: 2, need: 4 })
        );
        assert!(matches!(
            RootTable::parse_rsdt(&xsdt(&[1])),
            Err(Error::BadSignature { what: "RSDT", .. })
        ));
        let mut x = xsdt(&[1]);
        x[40] = 1;
        assert!(matches!(RootTable::parse_xsdt(&x), Err(Error::BadChecksum { what: "XSDT", .. })));
        assert!(matches!(
            RootTable::parse_xsdt(&x[..30]),
            Err(Error::Truncated { what: "XSDT", .. })
        ));
    }

    #[test]
    fn every_byte_mutated_to_boundary_values_never_panics() {
        boundary_mutations(&xsdt(&[0x1000, 0x2000])).for_each(|m| exercise(&m));
        boundary_mutations(&rsdt(&[0x1000, 0x2000])).for_each(|m| exercise(&m));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            exercise(&bytes);
        }

        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            exercise(&sdt(b"RSDT", 1, &body));
            exercise(&sdt(b"XSDT", 1, &body));
        }

        #[test]
        fn mutated_tables_never_panic(edits in edits()) {
            exercise(&mutate(&xsdt(&[0x1000, 0x2000]), &edits));
            exercise(&mutate(&rsdt(&[0x1000, 0x2000]), &edits));
        }
    }
}
