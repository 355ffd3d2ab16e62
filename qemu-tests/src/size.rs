//! `cargo xtask size`: the firmware image's size by section kind, read from the ELF section
//! headers (parsed here: no binutils needed).
//!
//! Classification, as `size` (Berkeley) does it but with rodata apart from text: allocated and
//! executable is **text**; allocated, read-only, with contents is **rodata**; allocated,
//! writable, with contents is **data**; allocated without contents (SHT_NOBITS, NOLOAD) is
//! **bss**, except the linker script's `.stack`, reported on its own. Sections not allocated
//! (`.defmt`, symbols, debug info) are not part of the loaded image. The `.defmt` section holds
//! one byte per interned log string (the string itself is a symbol name, read by the host
//! decoder), so its size is shown as the number of log strings kept off the target.

use std::path::Path;

const SHT_NOBITS: u32 = 8;
const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;

/// One section header, the fields used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub(crate) name: String,
    pub(crate) kind: u32,
    pub(crate) flags: u64,
    pub(crate) size: u64,
}

/// Bytes per kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizes {
    pub(crate) text: u64,
    pub(crate) rodata: u64,
    pub(crate) data: u64,
    pub(crate) bss: u64,
    pub(crate) stack: u64,
    /// `.defmt` (not loaded): one byte per interned log string.
    pub(crate) defmt: u64,
}

fn slice<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], String> {
    b.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("ELF truncated at offset {at:#x}"))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    slice::<2>(b, at).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    slice::<4>(b, at).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    slice::<8>(b, at).map(u64::from_le_bytes)
}

fn usize_of(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("ELF offset {v:#x} does not fit"))
}

/// The section headers of a 64-bit little-endian ELF (both firmware targets are).
pub(crate) fn sections(elf: &[u8]) -> Result<Vec<Section>, String> {
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let shoff = usize_of(u64_at(elf, 0x28)?)?;
    let shentsize = usize::from(u16_at(elf, 0x3a)?);
    let shnum = usize::from(u16_at(elf, 0x3c)?);
    let shstrndx = usize::from(u16_at(elf, 0x3e)?);
    if shentsize < 0x40 {
        return Err(format!("section header size {shentsize} is too small"));
    }
    let header = |i: usize| shoff + i * shentsize;
    let strtab = header(shstrndx);
    let (str_off, str_size) =
        (usize_of(u64_at(elf, strtab + 24)?)?, usize_of(u64_at(elf, strtab + 32)?)?);
    let names =
        elf.get(str_off..str_off + str_size).ok_or("section name table outside the file")?;
    (0..shnum)
        .map(|i| {
            let h = header(i);
            let name_off = usize_of(u64::from(u32_at(elf, h)?))?;
            let name = names.get(name_off..).unwrap_or_default();
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            Ok(Section {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                kind: u32_at(elf, h + 4)?,
                flags: u64_at(elf, h + 8)?,
                size: u64_at(elf, h + 32)?,
            })
        })
        .collect()
}

/// Sums the sections by kind (see the module documentation).
pub(crate) fn classify(sections: &[Section]) -> Sizes {
    let mut s = Sizes::default();
    for sec in sections {
        if sec.name == ".defmt" {
            s.defmt += sec.size;
        }
        if sec.flags & SHF_ALLOC == 0 {
            continue;
        }
        let slot = if sec.kind == SHT_NOBITS {
            if sec.name == ".stack" { &mut s.stack } else { &mut s.bss }
        } else if sec.flags & SHF_EXECINSTR != 0 {
            &mut s.text
        } else if sec.flags & SHF_WRITE != 0 {
            &mut s.data
        } else {
            &mut s.rodata
        };
        *slot += sec.size;
    }
    s
}

/// Reads and classifies one ELF file.
pub(crate) fn of_file(path: &Path) -> Result<Sizes, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    sections(&bytes).map(|s| classify(&s)).map_err(|e| format!("{}: {e}", path.display()))
}

/// The table `cargo xtask size` prints: a header, then one line per image.
pub(crate) fn table(rows: &[(String, Sizes)]) -> String {
    let mut out = format!(
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>14}\n",
        "image", "text", "rodata", "data", "bss", "text+ro+data", "stack", "defmt strs"
    );
    for (name, s) in rows {
        out += &format!(
            "{name:<24} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>14}\n",
            s.text,
            s.rodata,
            s.data,
            s.bss,
            s.text + s.rodata + s.data,
            s.stack,
            s.defmt
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with the given sections (name, type, flags, size), the name table last.
    fn elf(secs: &[(&str, u32, u64, u64)]) -> Vec<u8> {
        let mut names = vec![0u8];
        let mut name_offs = Vec::new();
        for (n, ..) in secs.iter().chain([&(".shstrtab", 3, 0, 0)]) {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let shoff = 0x40 + names.len() as u64;
        let mut b = vec![0u8; 0x40];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&(secs.len() as u16 + 1).to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&(secs.len() as u16).to_le_bytes());
        b.extend_from_slice(&names);
        let all: Vec<_> =
            secs.iter().copied().chain([(".shstrtab", 3, 0, names.len() as u64)]).collect();
        for (i, (_, kind, flags, size)) in all.iter().enumerate() {
            let mut h = [0u8; 0x40];
            h[..4].copy_from_slice(&name_offs[i].to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&flags.to_le_bytes());
            let off: u64 = if i == secs.len() { 0x40 } else { 0 };
            h[24..32].copy_from_slice(&off.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&h);
        }
        b
    }

    #[test]
    fn sections_are_classified_by_flags_and_type() {
        let bytes = elf(&[
            (".text", 1, SHF_ALLOC | SHF_EXECINSTR, 1000),
            (".rodata", 1, SHF_ALLOC, 300),
            (".data", 1, SHF_ALLOC | SHF_WRITE, 20),
            (".bss", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, 4096),
            (".stack", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, 0x10000),
            (".defmt", 1, 0, 77),
            (".debug_info", 1, 0, 5000),
        ]);
        let secs = sections(&bytes).unwrap();
        assert_eq!(secs.len(), 8);
        assert_eq!(secs[1].name, ".rodata");
        let s = classify(&secs);
        assert_eq!(
            s,
            Sizes { text: 1000, rodata: 300, data: 20, bss: 4096, stack: 0x10000, defmt: 77 }
        );
        assert!(table(&[("x".into(), s)]).contains("1320"), "text+ro+data");
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        assert!(sections(b"not an elf").is_err());
        let mut bytes = elf(&[(".text", 1, SHF_ALLOC | SHF_EXECINSTR, 1)]);
        bytes.truncate(0x50);
        assert!(sections(&bytes).is_err());
        let mut b32 = elf(&[]);
        b32[4] = 1;
        assert!(sections(&b32).unwrap_err().contains("64-bit"));
    }
}
