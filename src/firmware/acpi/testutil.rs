//! Builders for test tables. Every builder computes lengths and checksums, so a test states only
//! the fields it is about.

use super::bytes::{checksum, to_usize, u32_at};

/// A table with signature `sig`, QEMU's OEM fields, and `body` after the header.
pub(super) fn sdt(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = sig.to_vec();
    t.extend_from_slice(&u32::try_from(36 + body.len()).unwrap().to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(b"BOCHS BXPC    ");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"BXPC");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    fix_checksum(&mut t);
    t
}

/// Recomputes the checksum byte over the table's `length` (or all bytes, if fewer).
pub(super) fn fix_checksum(t: &mut [u8]) {
    if t.len() < 10 {
        return;
    }
    t[9] = 0;
    let n = to_usize(u32_at(t, 4)).min(t.len());
    t[9] = checksum(&t[..n]).wrapping_neg();
}

/// A copy of `t` with each `(index % len, value)` edit applied and the checksum fixed, so the
/// mutation gets past the checksum to the structure checks.
pub(super) fn mutate(t: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut m = t.to_vec();
    if !m.is_empty() {
        for &(index, value) in edits {
            let i = index % m.len();
            m[i] = value;
        }
    }
    fix_checksum(&mut m);
    m
}

/// Every single-byte mutation of `t` to a value that tends to hit a boundary (checksum fixed).
pub(super) fn boundary_mutations(t: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    (0..t.len()).flat_map(move |i| {
        [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 0x0f, 0x10, 0x14, 0x20, 0x7f, 0x80, 0xfe, 0xff]
            .into_iter()
            .chain([t[i].wrapping_add(1), t[i].wrapping_sub(1)])
            .map(move |v| mutate(t, &[(i, v)]))
    })
}

/// A proptest strategy for one to four byte edits.
pub(super) fn edits() -> impl proptest::strategy::Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec(proptest::prelude::any::<(usize, u8)>(), 1..5)
}

/// An RSDP; `xsdt: None` builds a revision-0 (20-byte) one.
pub(super) fn rsdp(rsdt: u32, xsdt: Option<u64>) -> Vec<u8> {
    let mut b = b"RSD PTR ".to_vec();
    b.push(0);
    b.extend_from_slice(b"BOCHS ");
    b.push(if xsdt.is_some() { 2 } else { 0 });
    b.extend_from_slice(&rsdt.to_le_bytes());
    b[8] = checksum(&b).wrapping_neg();
    if let Some(xsdt) = xsdt {
        b.extend_from_slice(&36u32.to_le_bytes());
        b.extend_from_slice(&xsdt.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b[32] = checksum(&b).wrapping_neg();
    }
    b
}

/// An XSDT listing `entries`.
pub(super) fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

/// An RSDT listing `entries`.
pub(super) fn rsdt(entries: &[u32]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"RSDT", 1, &body)
}
