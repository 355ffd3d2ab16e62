//! The library's one error type.
//!
//! Every variant carries the value that was wrong, so a log line is enough to diagnose firmware
//! or hardware that misbehaves. `what` fields name the table, structure or register involved with
//! a short static string (for example `"DMAR DRHD"` or `"GSTS.TES"`).

use core::fmt;

/// Shorthand for `core::result::Result<T, Error>`.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in the library.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    // ---- Firmware tables and descriptions -------------------------------------------------
    /// Fewer bytes are available than the fixed part of a table or structure needs.
    Truncated {
        /// Which table or structure.
        what: &'static str,
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A table's bytes do not sum to zero modulo 256 (ACPI 6.5 §5.2.5.3, §5.2.6).
    BadChecksum {
        /// Which table.
        what: &'static str,
        /// The sum of all bytes (non-zero).
        sum: u8,
    },
    /// A table has the wrong signature.
    BadSignature {
        /// The table that was expected.
        what: &'static str,
        /// The first (up to) eight bytes found, zero-padded.
        found: [u8; 8],
    },
    /// A length field runs past the end of the bytes that contain it.
    LengthOverrun {
        /// Which table or structure.
        what: &'static str,
        /// Offset of the structure inside its container.
        offset: usize,
        /// The length the structure declares.
        length: usize,
        /// Bytes left in the container from `offset`.
        available: usize,
    },
    /// A length field is smaller than the structure's fixed part (zero included), which would
    /// make a walker stall or read a header as data.
    BadLength {
        /// Which table or structure.
        what: &'static str,
        /// Offset of the structure inside its container.
        offset: usize,
        /// The length the structure declares.
        length: usize,
    },
    /// A revision this parser does not understand.
    UnsupportedRevision {
        /// Which table or structure.
        what: &'static str,
        /// The revision found.
        revision: u8,
    },
    /// A field holds a value the specification does not allow.
    InvalidField {
        /// Which table, structure or field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A reference (an offset or a phandle) points at nothing valid.
    BadReference {
        /// Which reference.
        what: &'static str,
        /// The offset or handle found.
        value: u64,
    },
    /// A table, node or property the caller asked for is not present.
    NotFound {
        /// What was looked for.
        what: &'static str,
    },
    /// More entries than a fixed-capacity container holds; the rest were not stored.
    CapacityExceeded {
        /// Which container.
        what: &'static str,
        /// Its capacity.
        capacity: usize,
    },
    /// A device-tree blob is malformed (bad magic, version, block offsets or structure).
    DeviceTree {
        /// What the device-tree reader reported.
        what: &'static str,
    },

    // ---- Addresses and identifiers --------------------------------------------------------
    /// `base + size` wraps around.
    AddressOverflow {
        /// The start.
        base: u64,
        /// The size added to it.
        size: u64,
    },
    /// A device or function number out of range.
    InvalidBdf {
        /// Bus number.
        bus: u8,
        /// Device number (must be <= 31).
        dev: u8,
        /// Function number (must be <= 7).
        func: u8,
    },
    /// A PASID wider than 20 bits.
    InvalidPasid {
        /// The value given.
        value: u32,
    },
    /// An address that must be aligned is not.
    Misaligned {
        /// Which address.
        what: &'static str,
        /// The address.
        value: u64,
        /// The required alignment.
        align: u64,
    },

    // ---- Platform and hardware ------------------------------------------------------------
    /// The platform could not provide DMA-able memory.
    OutOfMemory {
        /// Pages asked for.
        pages: usize,
    },
    /// The platform could not map an MMIO range.
    MmioUnavailable {
        /// Physical base.
        base: u64,
        /// Size in bytes.
        size: u64,
    },
    /// An MMIO access outside the region it was made through.
    MmioOutOfRange {
        /// Offset of the access.
        offset: usize,
        /// Access width in bytes.
        width: usize,
        /// Size of the region.
        len: usize,
    },
    /// A bounded wait on hardware ran out.
    Timeout {
        /// What was waited for (register and bit, or queue).
        what: &'static str,
        /// The bound, in microseconds.
        waited_us: u64,
    },
    /// Hardware reported a state the driver cannot use.
    Hardware {
        /// Which register or structure.
        what: &'static str,
        /// The value read.
        value: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { what, len, need } => {
                write!(f, "{what}: truncated, {len} bytes available, {need} needed")
            }
            Error::BadChecksum { what, sum } => write!(f, "{what}: checksum is {sum:#04x}, not 0"),
            Error::BadSignature { what, found } => {
                write!(f, "{what}: bad signature \"{}\"", found.escape_ascii())
            }
            Error::LengthOverrun { what, offset, length, available } => write!(
                f,
                "{what} at {offset:#x}: length {length:#x} overruns the {available:#x} bytes left"
            ),
            Error::BadLength { what, offset, length } => {
                write!(f, "{what} at {offset:#x}: length {length:#x} is too small")
            }
            Error::UnsupportedRevision { what, revision } => {
                write!(f, "{what}: unsupported revision {revision}")
            }
            Error::InvalidField { what, value } => write!(f, "{what}: invalid value {value:#x}"),
            Error::BadReference { what, value } => {
                write!(f, "{what}: reference {value:#x} points at nothing valid")
            }
            Error::NotFound { what } => write!(f, "{what}: not found"),
            Error::CapacityExceeded { what, capacity } => {
                write!(f, "{what}: more than {capacity} entries")
            }
            Error::DeviceTree { what } => write!(f, "device tree: {what}"),
            Error::AddressOverflow { base, size } => {
                write!(f, "address {base:#x} + {size:#x} overflows")
            }
            Error::InvalidBdf { bus, dev, func } => {
                write!(f, "invalid function address {bus:02x}:{dev:02x}.{func}")
            }
            Error::InvalidPasid { value } => write!(f, "PASID {value:#x} exceeds 20 bits"),
            Error::Misaligned { what, value, align } => {
                write!(f, "{what}: {value:#x} is not {align:#x}-aligned")
            }
            Error::OutOfMemory { pages } => write!(f, "out of DMA memory ({pages} pages asked)"),
            Error::MmioUnavailable { base, size } => {
                write!(f, "cannot map MMIO {base:#x}+{size:#x}")
            }
            Error::MmioOutOfRange { offset, width, len } => {
                write!(f, "MMIO access of {width} bytes at {offset:#x} outside a {len:#x}-byte region")
            }
            Error::Timeout { what, waited_us } => write!(f, "{what}: no answer in {waited_us} us"),
            Error::Hardware { what, value } => write!(f, "{what}: unusable value {value:#x}"),
        }
    }
}

impl core::error::Error for Error {}

/// Pads the first bytes of `bytes` into the 8-byte `found` field of [`Error::BadSignature`].
pub(crate) fn signature_bytes(bytes: &[u8]) -> [u8; 8] {
    let mut found = [0u8; 8];
    let n = bytes.len().min(8);
    found[..n].copy_from_slice(&bytes[..n]);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_carries_the_bad_value() {
        let e = Error::LengthOverrun { what: "DMAR DRHD", offset: 0x30, length: 0x100, available: 0x50 };
        assert_eq!(e.to_string(), "DMAR DRHD at 0x30: length 0x100 overruns the 0x50 bytes left");
        let e = Error::BadSignature { what: "MCFG", found: signature_bytes(b"APIC") };
        assert!(e.to_string().contains("APIC"));
    }
}
