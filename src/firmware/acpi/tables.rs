//! Finding tables from the RSDP, through a caller-supplied mapping of physical memory.

use core::fmt;

use super::bytes::{array_at, to_usize, u32_at};
use super::rsdp::{RSDP_V1_LEN, Rsdp};
use super::rsdt::{RootEntries, RootTable};
use super::sdt::{SDT_HEADER_LEN, checked_table, table_length, table_name};
use crate::addr::PhysAddr;
use crate::error::{Error, Result};

/// The firmware's tables, reached from the RSDP.
///
/// `map(phys, len)` returns at least `len` bytes of physical memory at `phys` (the boot code
/// wraps its unsafe mapping in it); it should fail rather than map an absurd length, since
/// lengths come from the tables. Every table is validated (signature, length, checksum) before
/// its bytes are returned, and every walk is bounded by the RSDT/XSDT entry count. Null entries
/// in the RSDT/XSDT are skipped, as ACPICA does.
pub struct AcpiTables<'a, F> {
    map: F,
    rsdp: Rsdp<'a>,
    root: RootTable<'a>,
}

impl<'a, F> AcpiTables<'a, F>
where
    F: Fn(PhysAddr, usize) -> Result<&'a [u8]>,
{
    /// Reads and validates the RSDP at `rsdp_phys` and the XSDT (revision 2 and later with a
    /// non-zero XSDT address) or else the RSDT. An invalid XSDT is an error, not a reason to fall
    /// back to the RSDT.
    pub fn new(rsdp_phys: PhysAddr, map: F) -> Result<Self> {
        let mut bytes = map(rsdp_phys, RSDP_V1_LEN)?;
        // 20 bytes give the revision, 36 the length of a revision 2 RSDP: at most two remaps.
        for _ in 0..2 {
            let need = Rsdp::required_len(bytes)?;
            if need <= bytes.len() {
                break;
            }
            bytes = map(rsdp_phys, need)?;
        }
        let rsdp = Rsdp::parse(bytes)?;
        let root = match rsdp.xsdt_address() {
            Some(xsdt) => RootTable::parse_xsdt(load(&map, xsdt)?)?,
            None => match rsdp.rsdt_address() {
                PhysAddr(0) => {
                    return Err(Error::BadReference { what: "RSDP RSDT address", value: 0 });
                }
                rsdt => RootTable::parse_rsdt(load(&map, rsdt)?)?,
            },
        };
        Ok(Self { map, rsdp, root })
    }

    /// The RSDP.
    pub fn rsdp(&self) -> Rsdp<'a> {
        self.rsdp
    }

    /// The XSDT, or the RSDT on ACPI 1.0 firmware.
    pub fn root(&self) -> RootTable<'a> {
        self.root
    }

    /// The first table with `signature`, validated, exactly `length` bytes long.
    ///
    /// Reads the header of each listed table until one matches; an error reading any of them is
    /// returned (the missing table could have been that one). [`Error::NotFound`] if none matches.
    pub fn find(&self, signature: &[u8; 4]) -> Result<&'a [u8]> {
        for phys in self.root.entries().filter(|p| p.0 != 0) {
            let header = (self.map)(phys, SDT_HEADER_LEN)?;
            if header.get(..4) == Some(signature.as_slice()) {
                let bytes = load(&self.map, phys)?;
                return checked_table(bytes, Some(signature), table_name(signature))
                    .map(|(_, table)| table);
            }
        }
        Err(Error::NotFound { what: table_name(signature) })
    }

    /// Every listed table, each mapped and validated. Stops after the first error.
    pub fn tables(&self) -> Tables<'_, 'a, F> {
        Tables { tables: self, entries: self.root.entries(), done: false }
    }
}

/// Maps the header at `phys`, then the whole table.
fn load<'a, F>(map: &F, phys: PhysAddr) -> Result<&'a [u8]>
where
    F: Fn(PhysAddr, usize) -> Result<&'a [u8]>,
{
    let length = table_length(map(phys, SDT_HEADER_LEN)?)?;
    map(phys, length)
}

impl<F> fmt::Debug for AcpiTables<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcpiTables").field("rsdp", &self.rsdp).field("root", &self.root).finish()
    }
}

/// Where one table is (see [`AcpiTables::tables`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TableInfo {
    /// The table's signature.
    pub signature: [u8; 4],
    /// Its physical address.
    pub phys: PhysAddr,
    /// Its length in bytes.
    pub length: usize,
}

/// Iterator over the tables listed in the RSDT/XSDT (see [`AcpiTables::tables`]).
pub struct Tables<'t, 'a, F> {
    tables: &'t AcpiTables<'a, F>,
    entries: RootEntries<'a>,
    done: bool,
}

impl<F> fmt::Debug for Tables<'_, '_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tables").field("remaining", &self.entries.len()).finish()
    }
}

impl<'a, F> Iterator for Tables<'_, 'a, F>
where
    F: Fn(PhysAddr, usize) -> Result<&'a [u8]>,
{
    type Item = Result<TableInfo>;

    fn next(&mut self) -> Option<Result<TableInfo>> {
        if self.done {
            return None;
        }
        let phys = self.entries.by_ref().find(|p| p.0 != 0)?;
        let result = load(&self.tables.map, phys).and_then(|bytes| {
            let (_, table) =
                checked_table(bytes, None, table_name(bytes.get(..4).unwrap_or_default()))?;
            Ok(TableInfo {
                signature: array_at(table, 0).unwrap_or_default(),
                phys,
                length: to_usize(u32_at(table, 4)),
            })
        });
        self.done = result.is_err();
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{edits, mutate, rsdp, rsdt, xsdt};
    use super::super::{Dmar, Hpet, Iort, Mcfg};
    use super::*;

    const RSDP_AT: u64 = 0x100;
    const RSDT_AT: u64 = 0x800;
    const XSDT_AT: u64 = 0x1000;
    const TABLES_AT: [u64; 4] = [0x2000, 0x3000, 0x4000, 0x5000];

    fn tables() -> [Vec<u8>; 4] {
        [
            super::super::dmar::tests::qemu_q35_dmar(),
            super::super::mcfg::tests::qemu_q35_mcfg(),
            super::super::hpet::tests::qemu_hpet(),
            super::super::iort::tests::qemu_virt_iort(),
        ]
    }

    /// A fake physical memory holding an RSDP (v2 when `v2`), RSDT, XSDT (with a null entry) and
    /// the four test tables.
    fn memory(v2: bool, tables: &[Vec<u8>]) -> Vec<u8> {
        let mut mem = vec![0u8; 0x6000];
        let mut put =
            |at: u64, bytes: &[u8]| mem[at as usize..][..bytes.len()].copy_from_slice(bytes);
        put(RSDP_AT, &rsdp(RSDT_AT as u32, v2.then_some(XSDT_AT)));
        put(RSDT_AT, &rsdt(&TABLES_AT.map(|a| a as u32)[..2]));
        put(XSDT_AT, &xsdt(&[TABLES_AT[0], 0, TABLES_AT[1], TABLES_AT[2], TABLES_AT[3]]));
        for (at, t) in TABLES_AT.iter().zip(tables) {
            put(*at, t);
        }
        mem
    }

    fn mapper<'m>(mem: &'m [u8]) -> impl Fn(PhysAddr, usize) -> Result<&'m [u8]> + 'm {
        move |phys, len| {
            usize::try_from(phys.0)
                .ok()
                .and_then(|start| mem.get(start..)?.get(..len))
                .ok_or(Error::MmioUnavailable { base: phys.0, size: len as u64 })
        }
    }

    fn exercise(mem: &[u8], rsdp_at: u64) {
        let Ok(t) = AcpiTables::new(PhysAddr(rsdp_at), mapper(mem)) else { return };
        let _ = format!("{t:?} {:?}", t.tables());
        let _ = t.tables().count();
        for sig in [b"DMAR", b"MCFG", b"HPET", b"IORT", b"APIC"] {
            let _ = t.find(sig);
        }
    }

    #[test]
    fn finds_tables_through_the_xsdt() {
        let mem = memory(true, &tables());
        let t = AcpiTables::new(PhysAddr(RSDP_AT), mapper(&mem)).unwrap();
        assert_eq!(t.rsdp().revision(), 2);
        assert!(t.root().is_xsdt());
        assert_eq!(t.root().entry_count(), 5);
        let dmar = t.find(b"DMAR").unwrap();
        assert_eq!(dmar, tables()[0].as_slice());
        assert_eq!(Dmar::parse(dmar).unwrap().host_address_width(), 48);
        assert_eq!(Mcfg::parse(t.find(b"MCFG").unwrap()).unwrap().entries().count(), 1);
        assert_eq!(
            Hpet::parse(t.find(b"HPET").unwrap()).unwrap().base_address(),
            PhysAddr(0xfed0_0000)
        );
        assert_eq!(Iort::parse(t.find(b"IORT").unwrap()).unwrap().node_count(), 3);
        assert_eq!(t.find(b"SRAT"), Err(Error::NotFound { what: "SRAT" }));
        assert_eq!(t.find(b"WXYZ"), Err(Error::NotFound { what: "ACPI table" }));
        let all: Vec<_> = t.tables().collect::<Result<_>>().unwrap();
        let expected: Vec<_> = tables()
            .iter()
            .zip(TABLES_AT)
            .map(|(b, at)| TableInfo {
                signature: b[..4].try_into().unwrap(),
                phys: PhysAddr(at),
                length: b.len(),
            })
            .collect();
        assert_eq!(all, expected);
        assert!(format!("{t:?}").contains("Xsdt"));
    }

    #[test]
    fn acpi_1_uses_the_rsdt() {
        let mem = memory(false, &tables());
        let t = AcpiTables::new(PhysAddr(RSDP_AT), mapper(&mem)).unwrap();
        assert_eq!((t.rsdp().revision(), t.root().is_xsdt()), (0, false));
        assert_eq!(t.tables().count(), 2);
        assert!(t.find(b"MCFG").is_ok());
        assert_eq!(t.find(b"IORT"), Err(Error::NotFound { what: "IORT" }));
    }

    #[test]
    fn errors_are_reported() {
        // No RSDP there.
        let mem = memory(true, &tables());
        assert!(matches!(
            AcpiTables::new(PhysAddr(0x200), mapper(&mem)),
            Err(Error::BadSignature { what: "RSDP", .. })
        ));
        // RSDP outside memory.
        assert_eq!(
            AcpiTables::new(PhysAddr(0x10_0000), mapper(&mem)).map(|_| ()),
            Err(Error::MmioUnavailable { base: 0x10_0000, size: 20 })
        );
        // An ACPI 1.0 RSDP with no RSDT.
        let mut mem0 = memory(false, &tables());
        mem0[RSDP_AT as usize..][..20].copy_from_slice(&rsdp(0, None));
        assert_eq!(
            AcpiTables::new(PhysAddr(RSDP_AT), mapper(&mem0)).map(|_| ()),
            Err(Error::BadReference { what: "RSDP RSDT address", value: 0 })
        );
        // A corrupt table: find fails on it, iteration reports it and stops.
        let mut t = tables();
        t[1][50] ^= 1;
        let mem = memory(true, &t);
        let acpi = AcpiTables::new(PhysAddr(RSDP_AT), mapper(&mem)).unwrap();
        assert_eq!(acpi.find(b"MCFG"), Err(Error::BadChecksum { what: "MCFG", sum: 1 }));
        assert!(acpi.find(b"DMAR").is_ok());
        let got: Vec<_> = acpi.tables().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], Err(Error::BadChecksum { what: "MCFG", sum: 1 }));
        // A table whose length runs past memory: the map fails.
        let mut t = tables();
        t[0][4..8].copy_from_slice(&0x10_0000u32.to_le_bytes());
        let mem = memory(true, &t);
        let acpi = AcpiTables::new(PhysAddr(RSDP_AT), mapper(&mem)).unwrap();
        assert_eq!(
            acpi.find(b"DMAR"),
            Err(Error::MmioUnavailable { base: 0x2000, size: 0x10_0000 })
        );
        // Other tables are still found: only the header of a non-matching table is read.
        assert!(acpi.find(b"HPET").is_ok());
    }

    /// Mutates the RSDT (0), the XSDT (1), both with checksums fixed, or the RSDP (2), whose
    /// checksums are left broken.
    fn mutate_root(mem: &mut [u8], which: usize, edits: &[(usize, u8)]) {
        let (at, len) = [(RSDT_AT, 44), (XSDT_AT, 76), (RSDP_AT, 36)][which];
        let region = &mut mem[at as usize..][..len];
        let mutated = if which < 2 {
            mutate(region, edits)
        } else {
            let mut r = region.to_vec();
            edits.iter().for_each(|&(i, v)| r[i % len] = v);
            r
        };
        region.copy_from_slice(&mutated);
    }

    #[test]
    fn every_root_byte_mutated_never_panics() {
        for v2 in [false, true] {
            for which in 0..3 {
                for i in 0..76 {
                    for v in [0, 1, 0x10, 0x20, 0x24, 0x7f, 0x80, 0xff] {
                        let mut mem = memory(v2, &tables());
                        mutate_root(&mut mem, which, &[(i, v)]);
                        exercise(&mem, RSDP_AT);
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn random_memory_never_panics(mem in proptest::collection::vec(any::<u8>(), 0..512), at in 0u64..512) {
            exercise(&mem, at);
        }

        #[test]
        fn mutated_tables_never_panic(which in 0usize..7, edits in edits(), v2 in any::<bool>()) {
            let mut t = tables();
            if which < 4 {
                t[which] = mutate(&t[which], &edits);
                exercise(&memory(v2, &t), RSDP_AT);
            } else {
                let mut mem = memory(v2, &t);
                mutate_root(&mut mem, which - 4, &edits);
                exercise(&mem, RSDP_AT);
            }
        }
    }
}
