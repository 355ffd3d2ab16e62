//! The header every system description table starts with (ACPI 6.5 §5.2.6) and whole-table
//! validation.

use core::fmt;

use super::bytes::{array_at, checksum, to_usize, u8_at, u32_at};
use crate::error::{Error, Result, signature_bytes};

/// Size of the common header (ACPI 6.5 Table 5.4); every table is at least this long.
pub const SDT_HEADER_LEN: usize = 36;

/// A view of the 36-byte common header of a system description table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SdtHeader<'a> {
    bytes: &'a [u8],
}

impl<'a> SdtHeader<'a> {
    /// Callers pass at least [`SDT_HEADER_LEN`] bytes.
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The four-character signature (`b"DMAR"`, ...).
    pub fn signature(&self) -> [u8; 4] {
        array_at(self.bytes, 0).unwrap_or_default()
    }

    /// Length of the whole table, header included.
    pub fn length(&self) -> u32 {
        u32_at(self.bytes, 4)
    }

    /// Table revision; its meaning depends on the signature.
    pub fn revision(&self) -> u8 {
        u8_at(self.bytes, 8)
    }

    /// The byte that makes the table sum to zero.
    pub fn checksum(&self) -> u8 {
        u8_at(self.bytes, 9)
    }

    /// OEM ID (ASCII, space padded).
    pub fn oem_id(&self) -> [u8; 6] {
        array_at(self.bytes, 10).unwrap_or_default()
    }

    /// OEM table ID (ASCII, space padded).
    pub fn oem_table_id(&self) -> [u8; 8] {
        array_at(self.bytes, 16).unwrap_or_default()
    }

    /// OEM revision of this table.
    pub fn oem_revision(&self) -> u32 {
        u32_at(self.bytes, 24)
    }

    /// Vendor ID of the tool that built the table (ASCII).
    pub fn creator_id(&self) -> [u8; 4] {
        array_at(self.bytes, 28).unwrap_or_default()
    }

    /// Revision of the tool that built the table.
    pub fn creator_revision(&self) -> u32 {
        u32_at(self.bytes, 32)
    }
}

impl fmt::Debug for SdtHeader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SdtHeader")
            .field("signature", &format_args!("{}", self.signature().escape_ascii()))
            .field("length", &self.length())
            .field("revision", &self.revision())
            .field("oem_id", &format_args!("{}", self.oem_id().escape_ascii()))
            .field("oem_table_id", &format_args!("{}", self.oem_table_id().escape_ascii()))
            .field("oem_revision", &self.oem_revision())
            .finish()
    }
}

/// A static name for a signature, for the `what` of errors (`"ACPI table"` if not one we read).
pub(super) fn table_name(signature: &[u8]) -> &'static str {
    match signature {
        b"RSDT" => "RSDT",
        b"XSDT" => "XSDT",
        b"MCFG" => "MCFG",
        b"DMAR" => "DMAR",
        b"IORT" => "IORT",
        b"HPET" => "HPET",
        b"APIC" => "MADT",
        b"FACP" => "FADT",
        b"SRAT" => "SRAT",
        b"SSDT" => "SSDT",
        _ => "ACPI table",
    }
}

/// Reads the table length from the first [`SDT_HEADER_LEN`] bytes of a table, so that a caller can
/// map exactly the whole table. Checks neither signature nor checksum.
///
/// Errors: fewer than 36 bytes ([`Error::Truncated`]); a length field below 36
/// ([`Error::BadLength`]).
pub fn table_length(header: &[u8]) -> Result<usize> {
    let what = table_name(header.get(..4).unwrap_or_default());
    if header.len() < SDT_HEADER_LEN {
        return Err(Error::Truncated { what, len: header.len(), need: SDT_HEADER_LEN });
    }
    let length = to_usize(u32_at(header, 4));
    if length < SDT_HEADER_LEN {
        return Err(Error::BadLength { what, offset: 0, length });
    }
    Ok(length)
}

/// Validates a whole table and splits it into its header and body (the bytes after the header,
/// up to the table's `length`; bytes of `bytes` past `length` are ignored).
///
/// Checks, in order: at least 36 bytes, the signature if `expected` is given, a `length` field
/// of at least 36 that fits `bytes`, and the checksum over `length` bytes.
pub fn validate_table<'a>(
    bytes: &'a [u8],
    expected: Option<&[u8; 4]>,
) -> Result<(SdtHeader<'a>, &'a [u8])> {
    let what = table_name(match expected {
        Some(signature) => signature,
        None => bytes.get(..4).unwrap_or_default(),
    });
    let (header, table) = checked_table(bytes, expected, what)?;
    Ok((header, table.get(SDT_HEADER_LEN..).unwrap_or_default()))
}

/// [`validate_table`] for the typed readers: returns the whole table (exactly `length` bytes) so
/// that their offsets, and the offsets in their errors, are relative to the table start.
pub(super) fn checked_table<'a>(
    bytes: &'a [u8],
    expected: Option<&[u8; 4]>,
    what: &'static str,
) -> Result<(SdtHeader<'a>, &'a [u8])> {
    if bytes.len() < SDT_HEADER_LEN {
        return Err(Error::Truncated { what, len: bytes.len(), need: SDT_HEADER_LEN });
    }
    if let Some(signature) = expected
        && bytes.get(..4) != Some(signature.as_slice())
    {
        let found = signature_bytes(bytes.get(..4).unwrap_or_default());
        return Err(Error::BadSignature { what, found });
    }
    let length = to_usize(u32_at(bytes, 4));
    if length < SDT_HEADER_LEN {
        return Err(Error::BadLength { what, offset: 0, length });
    }
    let Some(table) = bytes.get(..length) else {
        return Err(Error::LengthOverrun { what, offset: 0, length, available: bytes.len() });
    };
    let sum = checksum(table);
    if sum != 0 {
        return Err(Error::BadChecksum { what, sum });
    }
    Ok((SdtHeader::new(table), table))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{fix_checksum, sdt};
    use super::*;

    #[test]
    fn header_fields_and_body() {
        let t = sdt(b"TEST", 3, &[1, 2, 3]);
        let (h, body) = validate_table(&t, Some(b"TEST")).unwrap();
        assert_eq!(h.signature(), *b"TEST");
        assert_eq!(h.length(), 39);
        assert_eq!(h.revision(), 3);
        assert_eq!(&h.oem_id(), b"BOCHS ");
        assert_eq!(&h.oem_table_id(), b"BXPC    ");
        assert_eq!(h.oem_revision(), 1);
        assert_eq!(&h.creator_id(), b"BXPC");
        assert_eq!(h.creator_revision(), 1);
        assert_eq!(body, &[1, 2, 3]);
        assert_eq!(table_length(&t[..36]), Ok(39));
        assert!(format!("{h:?}").contains("TEST"));
        // Without an expected signature any valid table passes; trailing bytes are ignored.
        let mut longer = t.clone();
        longer.extend_from_slice(&[0xaa; 5]);
        assert_eq!(validate_table(&longer, None).map(|(_, b)| b.len()), Ok(3));
    }

    #[test]
    fn malformed_tables() {
        let t = sdt(b"DMAR", 1, &[0; 12]);
        assert_eq!(
            validate_table(&t[..35], None),
            Err(Error::Truncated { what: "DMAR", len: 35, need: 36 })
        );
        assert_eq!(
            table_length(&t[..20]),
            Err(Error::Truncated { what: "DMAR", len: 20, need: 36 })
        );
        assert_eq!(
            validate_table(&t, Some(b"MCFG")),
            Err(Error::BadSignature { what: "MCFG", found: *b"DMAR\0\0\0\0" })
        );
        assert_eq!(
            validate_table(&t[..40], None),
            Err(Error::LengthOverrun { what: "DMAR", offset: 0, length: 48, available: 40 })
        );
        let mut bad = t.clone();
        bad[40] ^= 0x20;
        assert_eq!(validate_table(&bad, None), Err(Error::BadChecksum { what: "DMAR", sum: 0x20 }));
        let mut short = t.clone();
        short[4..8].copy_from_slice(&35u32.to_le_bytes());
        fix_checksum(&mut short);
        assert_eq!(
            validate_table(&short, None),
            Err(Error::BadLength { what: "DMAR", offset: 0, length: 35 })
        );
        assert_eq!(
            table_length(&short),
            Err(Error::BadLength { what: "DMAR", offset: 0, length: 35 })
        );
        let zero = [0u8; 36];
        assert_eq!(
            validate_table(&zero, None),
            Err(Error::BadLength { what: "ACPI table", offset: 0, length: 0 })
        );
    }
}
