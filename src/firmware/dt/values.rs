//! Property value decoding: big-endian cells, `reg` entries, string lists, phandles.

use core::fmt;

use crate::addr::PhysAddr;
use crate::error::{Error, Result};

/// The big-endian `u32` at `offset`, or `None` if it is not all inside `bytes`.
pub(super) fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_be_bytes(*bytes.get(offset..)?.first_chunk::<4>()?))
}

/// The big-endian `u64` at `offset`, or `None` if it is not all inside `bytes`.
pub(super) fn be64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_be_bytes(*bytes.get(offset..)?.first_chunk::<8>()?))
}

/// A property that must be exactly one cell; any other length is [`Error::InvalidField`] with
/// `what` and the length.
pub(super) fn property_u32(value: &[u8], what: &'static str) -> Result<u32> {
    match value.first_chunk::<4>() {
        Some(cell) if value.len() == 4 => Ok(u32::from_be_bytes(*cell)),
        _ => Err(Error::InvalidField { what, value: value.len() as u64 }),
    }
}

/// Splits `count` cells (1 or 2, checked by the caller) off the front of `bytes` as one number.
pub(super) fn take_cells(bytes: &mut &[u8], count: u32) -> Option<u64> {
    let mut value = 0u64;
    for _ in 0..count {
        let (cell, rest) = bytes.split_first_chunk::<4>()?;
        value = (value << 32) | u64::from(u32::from_be_bytes(*cell));
        *bytes = rest;
    }
    Some(value)
}

/// Checks that a cell count can be decoded into a `u64` (1 or 2 cells).
pub(super) fn check_cells(count: u32, what: &'static str) -> Result<u32> {
    if (1..=2).contains(&count) {
        Ok(count)
    } else {
        Err(Error::InvalidField { what, value: count.into() })
    }
}

/// A node's handle, the value other nodes use to refer to it (`phandle` property).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct Phandle(pub u32);

impl fmt::Debug for Phandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phandle({:#x})", self.0)
    }
}

/// A physical address range from a `reg` or reservation entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Region {
    /// First byte.
    pub base: PhysAddr,
    /// Length in bytes.
    pub size: u64,
}

impl Region {
    /// A region, or [`Error::AddressOverflow`] if it would wrap past the end of the address space.
    pub fn new(base: u64, size: u64) -> Result<Self> {
        PhysAddr(base).checked_add(size)?;
        Ok(Self { base: PhysAddr(base), size })
    }
}

/// Iterator over `reg` entries, each `<address size>` in the parent's cell counts.
#[derive(Clone, Debug)]
pub struct RegEntries<'a> {
    rest: &'a [u8],
    address_cells: u32,
    size_cells: u32,
}

impl<'a> RegEntries<'a> {
    /// Entries of `value`, checking that both cell counts fit a `u64` (1 or 2) and that the
    /// value is a whole number of entries. `what` names the property in the length error.
    pub(super) fn new(
        value: &'a [u8],
        address_cells: u32,
        size_cells: u32,
        what: &'static str,
    ) -> Result<Self> {
        let address_cells = check_cells(address_cells, "#address-cells")?;
        let size_cells = check_cells(size_cells, "#size-cells")?;
        let entry = address_cells.saturating_add(size_cells).saturating_mul(4);
        if !value.len().is_multiple_of(super::tree::to_usize(entry)) {
            return Err(Error::InvalidField { what, value: value.len() as u64 });
        }
        Ok(Self { rest: value, address_cells, size_cells })
    }

    /// No entries.
    pub(super) fn empty() -> Self {
        Self { rest: &[], address_cells: 1, size_cells: 1 }
    }

    /// The number of entries left.
    pub fn remaining(&self) -> usize {
        let entry = super::tree::to_usize(
            self.address_cells.saturating_add(self.size_cells).saturating_mul(4),
        );
        self.rest.len().checked_div(entry).unwrap_or(0)
    }
}

impl Iterator for RegEntries<'_> {
    type Item = Result<Region>;

    fn next(&mut self) -> Option<Result<Region>> {
        let base = take_cells(&mut self.rest, self.address_cells)?;
        let size = take_cells(&mut self.rest, self.size_cells)?;
        Some(Region::new(base, size))
    }
}

/// Iterator over a string-list property (`compatible`, `interrupt-names`): NUL-separated UTF-8.
///
/// A last string without its NUL is still returned; an item that is not UTF-8 is
/// [`Error::InvalidField`] carrying its index.
#[derive(Clone, Debug)]
pub struct StringList<'a> {
    rest: &'a [u8],
    index: u64,
}

impl<'a> StringList<'a> {
    pub(super) fn new(value: &'a [u8]) -> Self {
        Self { rest: value, index: 0 }
    }

    /// The strings as raw bytes, for comparisons that do not need UTF-8.
    pub(super) fn raw(self) -> impl Iterator<Item = &'a [u8]> {
        let body = self.rest.strip_suffix(&[0]).unwrap_or(self.rest);
        // `split` yields one empty item for an empty slice; an absent list has no items.
        (!self.rest.is_empty()).then_some(body).into_iter().flat_map(|body| body.split(|b| *b == 0))
    }
}

impl<'a> Iterator for StringList<'a> {
    type Item = Result<&'a str>;

    fn next(&mut self) -> Option<Result<&'a str>> {
        if self.rest.is_empty() {
            return None;
        }
        let (item, rest) = match self.rest.iter().position(|b| *b == 0) {
            Some(nul) => self
                .rest
                .split_at_checked(nul)
                .map(|(item, rest)| (item, rest.get(1..).unwrap_or_default()))?,
            None => (self.rest, &[][..]),
        };
        self.rest = rest;
        let index = self.index;
        self.index = self.index.saturating_add(1);
        Some(core::str::from_utf8(item).map_err(|_| Error::InvalidField {
            what: "string list item (not UTF-8)",
            value: index,
        }))
    }
}

/// Iterator over a property's big-endian 32-bit cells; a trailing partial cell is dropped.
#[derive(Clone, Debug)]
pub struct Cells<'a> {
    chunks: core::slice::ChunksExact<'a, u8>,
}

impl<'a> Cells<'a> {
    pub(super) fn new(value: &'a [u8]) -> Self {
        Self { chunks: value.chunks_exact(4) }
    }
}

impl Iterator for Cells<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        self.chunks.next().and_then(|cell| be32(cell, 0))
    }
}
