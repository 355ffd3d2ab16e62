//! Root System Description Pointer (ACPI 6.5 §5.2.5.3).

use core::fmt;

use super::bytes::{array_at, checksum, to_usize, u8_at, u32_at, u64_at};
use crate::addr::PhysAddr;
use crate::error::{Error, Result, signature_bytes};

/// Size of the ACPI 1.0 RSDP, which its checksum covers.
pub const RSDP_V1_LEN: usize = 20;
/// Size of the ACPI 2.0+ RSDP (the smallest valid `length` field).
pub const RSDP_V2_LEN: usize = 36;

/// A validated RSDP: the firmware's pointer to the RSDT and (ACPI 2.0+) the XSDT.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rsdp<'a> {
    bytes: &'a [u8],
}

impl<'a> Rsdp<'a> {
    /// The signature every RSDP starts with.
    pub const SIGNATURE: [u8; 8] = *b"RSD PTR ";

    /// How many bytes the RSDP starting with `bytes` occupies: 20 for revision 0/1, else its
    /// `length` field (36 if `bytes` is too short to hold it yet). Lets a caller that mapped 20
    /// bytes map the rest. Checks the signature but no checksum.
    pub fn required_len(bytes: &[u8]) -> Result<usize> {
        check_v1_prefix(bytes)?;
        if u8_at(bytes, 15) < 2 {
            return Ok(RSDP_V1_LEN);
        }
        match array_at::<4>(bytes, 20) {
            None => Ok(RSDP_V2_LEN),
            Some(raw) => {
                let length = to_usize(u32::from_le_bytes(raw));
                if length < RSDP_V2_LEN {
                    return Err(Error::BadLength { what: "RSDP", offset: 0, length });
                }
                Ok(length)
            }
        }
    }

    /// Validates an RSDP: signature and the checksum over the first 20 bytes; for revision 2 and
    /// later also the `length` field (at least 36, within `bytes`) and the extended checksum over
    /// `length` bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        check_v1_prefix(bytes)?;
        let v1 = bytes.get(..RSDP_V1_LEN).unwrap_or_default();
        let sum = checksum(v1);
        if sum != 0 {
            return Err(Error::BadChecksum { what: "RSDP", sum });
        }
        if u8_at(bytes, 15) < 2 {
            return Ok(Self { bytes: v1 });
        }
        if bytes.len() < RSDP_V2_LEN {
            return Err(Error::Truncated { what: "RSDP", len: bytes.len(), need: RSDP_V2_LEN });
        }
        let length = to_usize(u32_at(bytes, 20));
        if length < RSDP_V2_LEN {
            return Err(Error::BadLength { what: "RSDP", offset: 0, length });
        }
        let Some(whole) = bytes.get(..length) else {
            return Err(Error::LengthOverrun {
                what: "RSDP",
                offset: 0,
                length,
                available: bytes.len(),
            });
        };
        let sum = checksum(whole);
        if sum != 0 {
            return Err(Error::BadChecksum { what: "RSDP (extended)", sum });
        }
        Ok(Self { bytes: whole })
    }

    /// 0 for ACPI 1.0 (no XSDT), 2 for ACPI 2.0 and later.
    pub fn revision(&self) -> u8 {
        u8_at(self.bytes, 15)
    }

    /// OEM ID (ASCII, space padded).
    pub fn oem_id(&self) -> [u8; 6] {
        array_at(self.bytes, 9).unwrap_or_default()
    }

    /// Physical address of the RSDT (32-bit entries).
    pub fn rsdt_address(&self) -> PhysAddr {
        PhysAddr(u64::from(u32_at(self.bytes, 16)))
    }

    /// Physical address of the XSDT (64-bit entries), if the revision has one and it is not 0.
    pub fn xsdt_address(&self) -> Option<PhysAddr> {
        match u64_at(self.bytes, 24) {
            0 => None,
            _ if self.revision() < 2 => None,
            address => Some(PhysAddr(address)),
        }
    }

    /// Bytes the RSDP occupies (20 for revision 0).
    pub fn length(&self) -> usize {
        self.bytes.len()
    }
}

impl fmt::Debug for Rsdp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rsdp")
            .field("revision", &self.revision())
            .field("oem_id", &format_args!("{}", self.oem_id().escape_ascii()))
            .field("rsdt", &self.rsdt_address())
            .field("xsdt", &self.xsdt_address())
            .finish()
    }
}

fn check_v1_prefix(bytes: &[u8]) -> Result<()> {
    if bytes.len() < RSDP_V1_LEN {
        return Err(Error::Truncated { what: "RSDP", len: bytes.len(), need: RSDP_V1_LEN });
    }
    let signature = bytes.get(..8).unwrap_or_default();
    if signature != Rsdp::SIGNATURE {
        return Err(Error::BadSignature { what: "RSDP", found: signature_bytes(signature) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::rsdp;
    use super::*;

    #[test]
    fn v1_and_v2() {
        let v1 = rsdp(0x7fe1_0000, None);
        let r = Rsdp::parse(&v1).unwrap();
        assert_eq!((r.revision(), r.length()), (0, 20));
        assert_eq!(r.rsdt_address(), PhysAddr(0x7fe1_0000));
        assert_eq!(r.xsdt_address(), None);
        assert_eq!(&r.oem_id(), b"BOCHS ");
        assert_eq!(Rsdp::required_len(&v1), Ok(20));

        let v2 = rsdp(0x7fe1_0000, Some(0x1_7fe2_0000));
        let r = Rsdp::parse(&v2).unwrap();
        assert_eq!((r.revision(), r.length()), (2, 36));
        assert_eq!(r.xsdt_address(), Some(PhysAddr(0x1_7fe2_0000)));
        assert_eq!(Rsdp::required_len(&v2[..20]), Ok(36));
        assert_eq!(Rsdp::required_len(&v2), Ok(36));
        assert!(format!("{r:?}").contains("BOCHS"));
        // Revision 2 with a zero XSDT address falls back to the RSDT.
        assert_eq!(Rsdp::parse(&rsdp(1, Some(0))).unwrap().xsdt_address(), None);
    }

    #[test]
    fn malformed() {
        let v2 = rsdp(0x1000, Some(0x2000));
        assert_eq!(
            Rsdp::parse(&v2[..19]),
            Err(Error::Truncated { what: "RSDP", len: 19, need: 20 })
        );
        assert_eq!(
            Rsdp::parse(&v2[..30]),
            Err(Error::Truncated { what: "RSDP", len: 30, need: 36 })
        );
        let mut bad = v2.clone();
        bad[0] = b'X';
        assert_eq!(
            Rsdp::parse(&bad),
            Err(Error::BadSignature { what: "RSDP", found: *b"XSD PTR " })
        );
        let mut bad = v2.clone();
        bad[16] ^= 1;
        assert_eq!(Rsdp::parse(&bad), Err(Error::BadChecksum { what: "RSDP", sum: 1 }));
        let mut bad = v2.clone();
        bad[25] ^= 4;
        assert_eq!(Rsdp::parse(&bad), Err(Error::BadChecksum { what: "RSDP (extended)", sum: 4 }));
        let mut bad = v2.clone();
        bad[20] = 40;
        assert_eq!(
            Rsdp::parse(&bad),
            Err(Error::LengthOverrun { what: "RSDP", offset: 0, length: 40, available: 36 })
        );
        assert_eq!(Rsdp::required_len(&bad), Ok(40));
        bad[20] = 8;
        assert_eq!(Rsdp::parse(&bad), Err(Error::BadLength { what: "RSDP", offset: 0, length: 8 }));
        assert_eq!(
            Rsdp::required_len(&bad),
            Err(Error::BadLength { what: "RSDP", offset: 0, length: 8 })
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Rsdp::required_len(&bytes);
            if let Ok(r) = Rsdp::parse(&bytes) {
                let _ = (r.revision(), r.oem_id(), r.rsdt_address(), r.xsdt_address(), format!("{r:?}"));
            }
        }

        #[test]
        fn mutated_rsdp_never_panics(index in any::<usize>(), value in any::<u8>(), v2 in any::<bool>()) {
            let mut b = rsdp(0x1000, v2.then_some(0x2000));
            let i = index % b.len();
            b[i] = value;
            // Re-fix both checksums so the mutation reaches the field checks.
            b[8] = 0;
            b[8] = checksum(&b[..20]).wrapping_neg();
            if b.len() > 32 {
                b[32] = 0;
                b[32] = checksum(&b).wrapping_neg();
            }
            let _ = Rsdp::required_len(&b);
            if let Ok(r) = Rsdp::parse(&b) {
                let _ = (r.rsdt_address(), r.xsdt_address(), r.length());
            }
        }
    }
}
