//! Little-endian field reads that cannot panic.
//!
//! ACPI fields are little-endian and often unaligned (XSDT entries start at offset 36), so they
//! are copied out byte by byte. The `*_at` readers return 0 for a field outside the slice: views
//! only read fields that their constructor checked are present, so that value is never seen, and
//! a bug in this module shows up as a wrong value instead of a panic inside the hypervisor.

use crate::error::{Error, Result};

/// `N` bytes at `offset`, or `None` if they are not all inside `bytes`.
pub(super) fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

/// `len` bytes at `offset`, or `None` if they are not all inside `bytes`.
pub(super) fn sub_slice(bytes: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    bytes.get(offset..offset.checked_add(len)?)
}

/// The byte at `offset` (0 outside the slice).
pub(super) fn u8_at(bytes: &[u8], offset: usize) -> u8 {
    bytes.get(offset).copied().unwrap_or(0)
}

/// The little-endian `u16` at `offset` (0 outside the slice).
pub(super) fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    array_at(bytes, offset).map_or(0, u16::from_le_bytes)
}

/// The little-endian `u32` at `offset` (0 outside the slice).
pub(super) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    array_at(bytes, offset).map_or(0, u32::from_le_bytes)
}

/// The little-endian `u64` at `offset` (0 outside the slice).
pub(super) fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    array_at(bytes, offset).map_or(0, u64::from_le_bytes)
}

/// A 32-bit table field as a length or offset. Saturates on 16-bit targets, where the value then
/// fails the bounds check that always follows.
pub(super) fn to_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// The sum of `bytes` modulo 256; a valid ACPI table sums to 0 (ACPI 6.5 §5.2.6).
pub(super) fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// The bytes of a variable-length record (a DMAR structure or device scope, an IORT node) that
/// declares `length` at `pos` in `container`.
///
/// `length < min_len` (zero included) is [`Error::BadLength`]: such a record would stall a walker
/// or overlap the next one. A record running past `container` is [`Error::LengthOverrun`].
/// Offsets in errors are `base + pos`, so they are relative to the start of the table.
pub(super) fn record<'a>(
    container: &'a [u8],
    pos: usize,
    length: usize,
    min_len: usize,
    what: &'static str,
    base: usize,
) -> Result<&'a [u8]> {
    let offset = base.saturating_add(pos);
    if length < min_len {
        return Err(Error::BadLength { what, offset, length });
    }
    sub_slice(container, pos, length).ok_or(Error::LengthOverrun {
        what,
        offset,
        length,
        available: container.len().saturating_sub(pos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_little_endian_and_bounded() {
        let b = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&b, 1), 0x0302);
        assert_eq!(u32_at(&b, 5), 0x0908_0706);
        assert_eq!(u64_at(&b, 1), 0x0908_0706_0504_0302);
        assert_eq!(u32_at(&b, 6), 0);
        assert_eq!(u8_at(&b, 9), 0);
        assert_eq!(u64_at(&b, usize::MAX), 0);
        assert_eq!(sub_slice(&b, usize::MAX, 2), None);
        assert_eq!(checksum(&[0xff, 0x01, 0x10]), 0x10);
    }

    #[test]
    fn record_checks_small_and_overrunning_lengths() {
        let b = [0u8; 16];
        assert_eq!(record(&b, 4, 8, 4, "x", 100), Ok(&b[4..12]));
        assert_eq!(
            record(&b, 4, 0, 4, "x", 100),
            Err(Error::BadLength { what: "x", offset: 104, length: 0 })
        );
        assert_eq!(
            record(&b, 4, 13, 4, "x", 100),
            Err(Error::LengthOverrun { what: "x", offset: 104, length: 13, available: 12 })
        );
    }
}
