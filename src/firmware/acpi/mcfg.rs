//! MCFG: where the ECAM (PCIe enhanced configuration) windows are (PCI Firmware Specification
//! 3.3 §4.1.2).

use core::fmt;

use super::bytes::{u8_at, u16_at, u64_at};
use super::sdt::{SdtHeader, checked_table};
use crate::addr::PhysAddr;
use crate::error::{Error, Result};

/// Header plus 8 reserved bytes; the allocation entries follow.
const MCFG_HEADER_LEN: usize = 44;
/// Size of one configuration space base address allocation entry.
const ENTRY_LEN: usize = 16;
/// ECAM gives each bus 32 devices x 8 functions x 4 KiB (PCIe Base 6.0 §7.2.2).
const ECAM_BYTES_PER_BUS: u64 = 1 << 20;

/// A validated MCFG table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mcfg<'a> {
    header: SdtHeader<'a>,
    entries: &'a [u8],
}

impl<'a> Mcfg<'a> {
    /// Validates the table. A body after the 8 reserved bytes that is not a whole number of
    /// 16-byte entries is [`Error::Truncated`] (`what: "MCFG entry"`).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let (header, table) = checked_table(bytes, Some(b"MCFG"), "MCFG")?;
        let Some(entries) = table.get(MCFG_HEADER_LEN..) else {
            return Err(Error::Truncated { what: "MCFG", len: table.len(), need: MCFG_HEADER_LEN });
        };
        let partial = entries.len() % ENTRY_LEN;
        if partial != 0 {
            return Err(Error::Truncated { what: "MCFG entry", len: partial, need: ENTRY_LEN });
        }
        Ok(Self { header, entries })
    }

    /// The table header.
    pub fn header(&self) -> SdtHeader<'a> {
        self.header
    }

    /// The ECAM windows, one per segment group and bus range.
    pub fn entries(&self) -> McfgEntries<'a> {
        McfgEntries { chunks: self.entries.chunks_exact(ENTRY_LEN), done: false }
    }
}

impl fmt::Debug for Mcfg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mcfg").field("entries", &(self.entries.len() / ENTRY_LEN)).finish()
    }
}

/// One ECAM window: the configuration space of buses `start_bus..=end_bus` of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct McfgEntry {
    base: PhysAddr,
    segment: u16,
    start_bus: u8,
    end_bus: u8,
}

impl McfgEntry {
    /// The base address from the table, which is where bus **0** of the segment would be, even
    /// when `start_bus` is not 0; see [`ecam_start`](Self::ecam_start).
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// PCI segment group number.
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// First bus decoded by this window.
    pub fn start_bus(&self) -> u8 {
        self.start_bus
    }

    /// Last bus decoded by this window (inclusive).
    pub fn end_bus(&self) -> u8 {
        self.end_bus
    }

    /// Physical address of the configuration space of `start_bus`: the first byte to map.
    pub fn ecam_start(&self) -> PhysAddr {
        // Validated on parse: the whole window, from bus 0, does not wrap.
        PhysAddr(self.base.0.saturating_add(u64::from(self.start_bus) * ECAM_BYTES_PER_BUS))
    }

    /// Bytes of configuration space from [`ecam_start`](Self::ecam_start): 1 MiB per bus.
    pub fn ecam_size(&self) -> u64 {
        // `start_bus <= end_bus` was checked on parse.
        (u64::from(self.end_bus) - u64::from(self.start_bus) + 1) * ECAM_BYTES_PER_BUS
    }
}

/// Iterator over [`McfgEntry`] values (see [`Mcfg::entries`]).
///
/// An entry with `start_bus > end_bus` is [`Error::InvalidField`]; one whose window wraps the
/// address space is [`Error::AddressOverflow`]. Iteration stops after the first error.
#[derive(Clone, Debug)]
pub struct McfgEntries<'a> {
    chunks: core::slice::ChunksExact<'a, u8>,
    done: bool,
}

impl Iterator for McfgEntries<'_> {
    type Item = Result<McfgEntry>;

    fn next(&mut self) -> Option<Result<McfgEntry>> {
        if self.done {
            return None;
        }
        let e = self.chunks.next()?;
        let entry = McfgEntry {
            base: PhysAddr(u64_at(e, 0)),
            segment: u16_at(e, 8),
            start_bus: u8_at(e, 10),
            end_bus: u8_at(e, 11),
        };
        let result = if entry.start_bus > entry.end_bus {
            Err(Error::InvalidField {
                what: "MCFG bus range (start << 8 | end)",
                value: u64::from(entry.start_bus) << 8 | u64::from(entry.end_bus),
            })
        } else {
            let size = (u64::from(entry.end_bus) + 1) * ECAM_BYTES_PER_BUS;
            entry.base.checked_add(size).map(|_| entry)
        };
        self.done = result.is_err();
        Some(result)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{boundary_mutations, edits, mutate, sdt};
    use super::*;

    fn mcfg(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
        let mut body = vec![0u8; 8];
        for &(base, segment, start, end) in entries {
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&segment.to_le_bytes());
            body.extend_from_slice(&[start, end, 0, 0, 0, 0]);
        }
        sdt(b"MCFG", 1, &body)
    }

    /// What QEMU 10.0 builds for q35: one window for segment 0, buses 0-255.
    pub(in super::super) fn qemu_q35_mcfg() -> Vec<u8> {
        mcfg(&[(0xb000_0000, 0, 0, 255)])
    }

    fn exercise(bytes: &[u8]) {
        if let Ok(m) = Mcfg::parse(bytes) {
            let _ = format!("{m:?} {:?}", m.header());
            for e in m.entries().flatten() {
                let _ = (
                    e.base(),
                    e.segment(),
                    e.ecam_start(),
                    e.ecam_size(),
                    e.start_bus(),
                    e.end_bus(),
                );
            }
        }
    }

    #[test]
    fn qemu_q35() {
        let t = qemu_q35_mcfg();
        assert_eq!(t.len(), 60);
        let m = Mcfg::parse(&t).unwrap();
        let entries: Vec<_> = m.entries().collect::<Result<_>>().unwrap();
        assert_eq!(entries.len(), 1);
        let e = entries[0];
        assert_eq!(
            (e.base(), e.segment(), e.start_bus(), e.end_bus()),
            (PhysAddr(0xb000_0000), 0, 0, 255)
        );
        assert_eq!(e.ecam_start(), PhysAddr(0xb000_0000));
        assert_eq!(e.ecam_size(), 256 << 20);
    }

    #[test]
    fn window_starting_above_bus_0() {
        let t = mcfg(&[(0x8000_0000, 1, 0x40, 0x7f), (0xe000_0000, 2, 5, 5)]);
        let e: Vec<_> = Mcfg::parse(&t).unwrap().entries().collect::<Result<_>>().unwrap();
        assert_eq!(e[0].ecam_start(), PhysAddr(0x8000_0000 + (0x40 << 20)));
        assert_eq!(e[0].ecam_size(), 0x40 << 20);
        assert_eq!((e[1].segment(), e[1].ecam_size()), (2, 1 << 20));
    }

    #[test]
    fn malformed() {
        let t = mcfg(&[(0xb000_0000, 0, 9, 8), (0xc000_0000, 0, 0, 1)]);
        let mut it = Mcfg::parse(&t).unwrap().entries();
        assert_eq!(
            it.next(),
            Some(Err(Error::InvalidField {
                what: "MCFG bus range (start << 8 | end)",
                value: 0x908
            }))
        );
        assert_eq!(it.next(), None, "iteration stops after an error");
        let t = mcfg(&[(u64::MAX - (1 << 20), 0, 0, 1)]);
        assert!(matches!(
            Mcfg::parse(&t).unwrap().entries().next(),
            Some(Err(Error::AddressOverflow { .. }))
        ));
        assert_eq!(
            Mcfg::parse(&sdt(b"MCFG", 1, &[0; 4])),
            Err(Error::Truncated { what: "MCFG", len: 40, need: 44 })
        );
        assert_eq!(
            Mcfg::parse(&sdt(b"MCFG", 1, &[0; 8 + 20])),
            Err(Error::Truncated { what: "MCFG entry", len: 4, need: 16 })
        );
        let good = qemu_q35_mcfg();
        assert!(matches!(Mcfg::parse(&good[..50]), Err(Error::LengthOverrun { what: "MCFG", .. })));
        let mut bad = good.clone();
        bad[50] ^= 0xff;
        assert!(matches!(Mcfg::parse(&bad), Err(Error::BadChecksum { what: "MCFG", .. })));
        assert!(matches!(
            Mcfg::parse(&sdt(b"MCFX", 1, &[0; 8])),
            Err(Error::BadSignature { what: "MCFG", .. })
        ));
        // No entries at all is valid.
        assert_eq!(Mcfg::parse(&mcfg(&[])).unwrap().entries().count(), 0);
    }

    #[test]
    fn every_byte_mutated_to_boundary_values_never_panics() {
        boundary_mutations(&mcfg(&[(0xb000_0000, 0, 0, 255), (0xc000_0000, 1, 3, 9)]))
            .for_each(|m| exercise(&m));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            exercise(&bytes);
        }

        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..96)) {
            exercise(&sdt(b"MCFG", 1, &body));
        }

        #[test]
        fn mutated_tables_never_panic(edits in edits()) {
            exercise(&mutate(&mcfg(&[(0xb000_0000, 0, 0, 255), (0xc000_0000, 1, 3, 9)]), &edits));
        }
    }
}
