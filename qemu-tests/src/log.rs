//! Decoding the image's serial output into log lines, and printing them.
//!
//! The image writes defmt 1.x rzCOBS frames (each ends in 0x00) to its first serial port. The
//! table comes from the ELF's `.defmt` section and the file:line locations from its DWARF.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use defmt_decoder::{DecodeError, Locations, Table};

/// One decoded log statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogLine {
    /// Microseconds since the image's clock started (HPET on x86, CNTVCT on arm).
    pub(crate) timestamp_us: Option<u64>,
    /// The timestamp as defmt formatted it, for a format [`parse_timestamp_us`] does not know.
    pub(crate) timestamp_raw: Option<String>,
    /// `TRACE`..`ERROR`; `None` for `println!`-style frames and plain-text streams.
    pub(crate) level: Option<&'static str>,
    pub(crate) message: String,
    pub(crate) location: Option<(String, u64)>,
}

/// A firmware image with its defmt table, loaded once and shared (borrowed) by every run.
pub(crate) struct Firmware {
    pub(crate) elf: PathBuf,
    pub(crate) table: Table,
    /// Empty when the DWARF could not be read; lines then have no file:line.
    pub(crate) locations: Locations,
    /// Paths in locations are shown relative to this (the workspace root).
    pub(crate) root: PathBuf,
}

impl Firmware {
    pub(crate) fn load(elf: &Path, root: &Path) -> Result<Firmware, String> {
        let bytes =
            std::fs::read(elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
        let table = Table::parse(&bytes)
            .map_err(|e| format!("{}: bad defmt table: {e}", elf.display()))?
            // bringup.md pitfall 6: without -Tdefmt.x the link succeeds but there is no table.
            .ok_or_else(|| {
                format!("{}: no .defmt section (was it linked with -Tdefmt.x?)", elf.display())
            })?;
        let locations = table.get_locations(&bytes).unwrap_or_default();
        Ok(Firmware { elf: elf.to_owned(), table, locations, root: root.to_owned() })
    }
}

/// What a reader thread reports about the serial stream.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    Line(LogLine),
    /// A frame that did not decode; the decoder resynchronises at the next 0x00.
    Malformed,
}

/// Turns serial bytes into [`StreamEvent`]s. `Defmt` for the firmware; `Text` (one line per
/// `\n`) for the harness's own tests and for anything that is not a defmt image.
pub(crate) enum StreamFormat<'f> {
    Defmt(&'f Firmware),
    #[cfg_attr(not(test), expect(dead_code, reason = "the runner's own tests use shell scripts"))]
    Text,
}

/// Reads `input` to its end, calling `emit` for each event as soon as it is decoded.
pub(crate) fn decode_stream(
    format: &StreamFormat<'_>,
    mut input: impl std::io::Read,
    emit: &mut dyn FnMut(StreamEvent),
) {
    let mut buf = [0u8; 4096];
    match format {
        StreamFormat::Defmt(fw) => {
            let mut decoder = fw.table.new_stream_decoder();
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                decoder.received(&buf[..n]);
                loop {
                    match decoder.decode() {
                        Ok(frame) => {
                            let timestamp_raw = frame.display_timestamp().map(|t| t.to_string());
                            let location = fw.locations.get(&frame.index()).map(|l| {
                                let file = l.file.strip_prefix(&fw.root).unwrap_or(&l.file);
                                (file.display().to_string(), l.line)
                            });
                            emit(StreamEvent::Line(LogLine {
                                timestamp_us: timestamp_raw.as_deref().and_then(parse_timestamp_us),
                                timestamp_raw,
                                level: frame.level().map(|l| level_name(l.as_str())),
                                message: frame.display_message().to_string(),
                                location,
                            }));
                        }
                        Err(DecodeError::UnexpectedEof) => break,
                        Err(DecodeError::Malformed) => emit(StreamEvent::Malformed),
                    }
                }
            }
        }
        StreamFormat::Text => {
            let mut pending = Vec::new();
            let flush = |bytes: &[u8], emit: &mut dyn FnMut(StreamEvent)| {
                let text = String::from_utf8_lossy(bytes);
                let message = text.trim_end_matches('\r').to_string();
                emit(StreamEvent::Line(LogLine { message, ..LogLine::default() }));
            };
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let rest = pending.split_off(i + 1);
                    flush(&pending[..i], emit);
                    pending = rest;
                }
            }
            if !pending.is_empty() {
                flush(&pending, emit);
            }
        }
    }
}

fn level_name(level: &str) -> &'static str {
    match level {
        "trace" => "TRACE",
        "debug" => "DEBUG",
        "info" => "INFO",
        "warn" => "WARN",
        _ => "ERROR",
    }
}

/// The image logs `{=u64:us}`, which defmt shows as seconds with six decimals ("1.234567"); a plain
/// integer is taken as microseconds.
pub(crate) fn parse_timestamp_us(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.split_once('.') {
        Some((secs, frac)) if frac.len() == 6 && frac.bytes().all(|b| b.is_ascii_digit()) => {
            secs.parse::<u64>().ok()?.checked_mul(1_000_000)?.checked_add(frac.parse().ok()?)
        }
        Some(_) => None,
        None => s.parse().ok(),
    }
}

/// `[   0.001234 INFO ] message  (file:line)`; ANSI colour only when `color`.
pub(crate) fn format_line(line: &LogLine, color: bool) -> String {
    let ts = match (line.timestamp_us, &line.timestamp_raw) {
        (Some(us), _) => format!("{:>4}.{:06}", us / 1_000_000, us % 1_000_000),
        (None, Some(raw)) => raw.clone(),
        (None, None) => String::new(),
    };
    let level = line.level.unwrap_or("");
    let (on, off) = if color { (level_color(level), "\x1b[0m") } else { ("", "") };
    let (dim, undim) = if color { ("\x1b[2m", "\x1b[0m") } else { ("", "") };
    let mut out =
        format!("{dim}[{ts:>11}{undim} {on}{level:<5}{off}{dim}]{undim} {}", line.message);
    if let Some((file, l)) = &line.location {
        let _ = write!(out, "  {dim}({file}:{l}){undim}");
    }
    out
}

fn level_color(level: &str) -> &'static str {
    match level {
        "ERROR" => "\x1b[1;31m",
        "WARN" => "\x1b[33m",
        "INFO" => "\x1b[32m",
        "DEBUG" => "\x1b[34m",
        "TRACE" => "\x1b[2m",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp_us("0.001234"), Some(1234));
        assert_eq!(parse_timestamp_us("12.000001"), Some(12_000_001));
        assert_eq!(parse_timestamp_us("42"), Some(42));
        assert_eq!(parse_timestamp_us("00:00:01.000000"), None);
        assert_eq!(parse_timestamp_us("1.5"), None);
    }

    #[test]
    fn line_format() {
        let line = LogLine {
            timestamp_us: Some(1234),
            timestamp_raw: Some("0.001234".into()),
            level: Some("INFO"),
            message: "all 3 checks passed".into(),
            location: Some(("boot/src/main.rs".into(), 42)),
        };
        assert_eq!(
            format_line(&line, false),
            "[   0.001234 INFO ] all 3 checks passed  (boot/src/main.rs:42)"
        );
        let colored = format_line(&line, true);
        assert!(
            colored.contains("\x1b[32mINFO \x1b[0m") && colored.contains("all 3 checks passed")
        );
        let text = LogLine { message: "hello".into(), ..LogLine::default() };
        assert_eq!(format_line(&text, false), "[                 ] hello");
    }

    #[test]
    fn text_stream_splits_lines() {
        let mut got = Vec::new();
        decode_stream(&StreamFormat::Text, &b"one\r\ntwo\nthree"[..], &mut |e| {
            if let StreamEvent::Line(l) = e {
                got.push(l.message);
            }
        });
        assert_eq!(got, ["one", "two", "three"]);
    }

    #[test]
    fn missing_elf_is_an_error() {
        let err = Firmware::load(Path::new("/nonexistent/fw.elf"), Path::new("/")).err().unwrap();
        assert!(err.contains("cannot read"), "{err}");
    }
}
