//! HPET description table (IA-PC HPET Specification 1.0a §3.2.4).

use core::fmt;

use super::bytes::{u8_at, u16_at, u32_at, u64_at};
use super::sdt::{SdtHeader, checked_table};
use crate::addr::PhysAddr;
use crate::error::{Error, Result};

/// Header, event timer block ID, base address (GAS), HPET number, minimum tick, page protection.
const HPET_LEN: usize = 56;
/// Generic Address Structure address space ID of system memory (ACPI 6.5 §5.2.3.2).
const SYSTEM_MEMORY: u8 = 0;

/// A validated HPET table whose registers are in system memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hpet<'a> {
    header: SdtHeader<'a>,
    table: &'a [u8],
}

impl<'a> Hpet<'a> {
    /// Validates the table. A base address outside system memory (the spec allows only memory)
    /// is [`Error::InvalidField`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let (header, table) = checked_table(bytes, Some(b"HPET"), "HPET")?;
        if table.len() < HPET_LEN {
            return Err(Error::Truncated { what: "HPET", len: table.len(), need: HPET_LEN });
        }
        let space = u8_at(table, 40);
        if space != SYSTEM_MEMORY {
            return Err(Error::InvalidField {
                what: "HPET base address space ID",
                value: u64::from(space),
            });
        }
        Ok(Self { header, table })
    }

    /// The table header.
    pub fn header(&self) -> SdtHeader<'a> {
        self.header
    }

    /// The event timer block ID: a copy of the capabilities register's low half (bits 7:0
    /// revision, 12:8 number of comparators - 1, 13 64-bit counter, 15 legacy replacement
    /// capable, 31:16 PCI vendor ID).
    pub fn event_timer_block_id(&self) -> u32 {
        u32_at(self.table, 36)
    }

    /// Address space ID of the base address: always 0, system memory (checked on parse).
    pub fn address_space_id(&self) -> u8 {
        u8_at(self.table, 40)
    }

    /// Physical address of the 1-KiB register block.
    pub fn base_address(&self) -> PhysAddr {
        PhysAddr(u64_at(self.table, 44))
    }

    /// Sequence number of this timer block.
    pub fn hpet_number(&self) -> u8 {
        u8_at(self.table, 52)
    }

    /// Minimum clock ticks for periodic mode without lost interrupts.
    pub fn minimum_tick(&self) -> u16 {
        u16_at(self.table, 53)
    }

    /// Page protection and OEM attributes.
    pub fn page_protection(&self) -> u8 {
        u8_at(self.table, 55)
    }
}

impl fmt::Debug for Hpet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hpet")
            .field("event_timer_block_id", &format_args!("{:#x}", self.event_timer_block_id()))
            .field("base_address", &self.base_address())
            .field("hpet_number", &self.hpet_number())
            .finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{boundary_mutations, edits, mutate, sdt};
    use super::*;

    fn hpet(block_id: u32, space: u8, base: u64, min_tick: u16) -> Vec<u8> {
        let mut body = block_id.to_le_bytes().to_vec();
        body.extend_from_slice(&[space, 0, 0, 0]);
        body.extend_from_slice(&base.to_le_bytes());
        body.push(0);
        body.extend_from_slice(&min_tick.to_le_bytes());
        body.push(0);
        sdt(b"HPET", 1, &body)
    }

    /// What QEMU 10.0 builds for q35: Intel vendor ID, 3 comparators, at 0xfed00000.
    pub(in super::super) fn qemu_hpet() -> Vec<u8> {
        hpet(0x8086_a201, 0, 0xfed0_0000, 0)
    }

    fn exercise(bytes: &[u8]) {
        if let Ok(h) = Hpet::parse(bytes) {
            let _ =
                (h.event_timer_block_id(), h.address_space_id(), h.base_address(), h.hpet_number());
            let _ = (h.minimum_tick(), h.page_protection(), format!("{h:?} {:?}", h.header()));
        }
    }

    #[test]
    fn qemu() {
        let t = qemu_hpet();
        assert_eq!(t.len(), 56);
        let h = Hpet::parse(&t).unwrap();
        assert_eq!(h.event_timer_block_id(), 0x8086_a201);
        assert_eq!((h.address_space_id(), h.base_address()), (0, PhysAddr(0xfed0_0000)));
        assert_eq!((h.hpet_number(), h.minimum_tick(), h.page_protection()), (0, 0, 0));
        assert_eq!(Hpet::parse(&hpet(0, 0, 0xfed0_0000, 0x80)).unwrap().minimum_tick(), 0x80);
    }

    #[test]
    fn malformed() {
        assert_eq!(
            Hpet::parse(&hpet(0, 1, 0x400, 0)),
            Err(Error::InvalidField { what: "HPET base address space ID", value: 1 })
        );
        assert_eq!(
            Hpet::parse(&sdt(b"HPET", 1, &[0; 16])),
            Err(Error::Truncated { what: "HPET", len: 52, need: 56 })
        );
        let good = qemu_hpet();
        assert!(matches!(Hpet::parse(&good[..50]), Err(Error::LengthOverrun { what: "HPET", .. })));
        let mut bad = good.clone();
        bad[50] ^= 2;
        assert_eq!(Hpet::parse(&bad), Err(Error::BadChecksum { what: "HPET", sum: 2 }));
        assert!(matches!(
            Hpet::parse(&sdt(b"HPEX", 1, &[0; 20])),
            Err(Error::BadSignature { what: "HPET", .. })
        ));
    }

    #[test]
    fn every_byte_mutated_to_boundary_values_never_panics() {
        boundary_mutations(&qemu_hpet()).for_each(|m| exercise(&m));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            exercise(&bytes);
        }

        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..32)) {
            exercise(&sdt(b"HPET", 1, &body));
        }

        #[test]
        fn mutated_tables_never_panic(edits in edits()) {
            exercise(&mutate(&qemu_hpet(), &edits));
        }
    }
}
