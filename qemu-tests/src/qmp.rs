//! The host-side check of the firmware's PCI enumeration against QEMU's own view.
//!
//! Protocol (both `run` and `test` use it; the image opts in per self-test): QEMU is started with
//! a QMP socket and the image gets `host-check=qmp` on its command line. After enumerating, the
//! image logs one `host-check pci ...` line per function and then
//! `host-check request: query-pci`, and waits (bounded) for one byte on its UART. The harness
//! asks QEMU for `query-pci` (what QEMU's buses hold, by the bus numbers the guest programmed),
//! compares, and answers `y` (equal) or `n`. The image turns the answer into a check, so the
//! comparison decides the exit status like any other check.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// The marker line after which the image waits for the answer.
pub(crate) const REQUEST: &str = "host-check request: query-pci";
/// Prefix of the image's per-function lines.
pub(crate) const ENTRY: &str = "host-check pci ";

/// One function as seen by either side. `class` is base class and sub-class (QMP's
/// `class_info.class`); the programming interface is not in QMP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PciEntry {
    pub(crate) bus: u8,
    pub(crate) dev: u8,
    pub(crate) func: u8,
    pub(crate) vendor: u16,
    pub(crate) device: u16,
    pub(crate) class: u16,
    /// Secondary and subordinate bus, for bridges.
    pub(crate) buses: Option<(u8, u8)>,
    /// The image says this is an enabled SR-IOV VF.
    pub(crate) vf: bool,
}

impl PciEntry {
    fn bdf(&self) -> String {
        format!("{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// Parses `host-check pci 0000:01:00.0 8086:10c9 class 020000 fn [buses 01-01]` (or `vf`).
pub(crate) fn parse_entry(message: &str) -> Option<PciEntry> {
    let rest = message.strip_prefix(ENTRY)?;
    let mut w = rest.split_whitespace();
    let bdf = w.next()?;
    let (seg, rest) = bdf.split_once(':')?;
    if seg != "0000" {
        return None;
    }
    let (bus, devfn) = rest.split_once(':')?;
    let (dev, func) = devfn.split_once('.')?;
    let (vendor, device) = w.next()?.split_once(':')?;
    if w.next()? != "class" {
        return None;
    }
    let class = u32::from_str_radix(w.next()?, 16).ok()?;
    let vf = match w.next()? {
        "fn" => false,
        "vf" => true,
        _ => return None,
    };
    let buses = match (w.next(), w.next()) {
        (Some("buses"), Some(range)) => {
            let (s, e) = range.split_once('-')?;
            Some((u8::from_str_radix(s, 16).ok()?, u8::from_str_radix(e, 16).ok()?))
        }
        (None, _) => None,
        _ => return None,
    };
    Some(PciEntry {
        bus: u8::from_str_radix(bus, 16).ok()?,
        dev: u8::from_str_radix(dev, 16).ok()?,
        func: func.parse().ok()?,
        vendor: u16::from_str_radix(vendor, 16).ok()?,
        device: u16::from_str_radix(device, 16).ok()?,
        class: u16::try_from(class >> 8).ok()?,
        buses,
        vf,
    })
}

/// Flattens QMP `query-pci`'s nested buses into entries.
pub(crate) fn flatten(result: &Value) -> Result<Vec<PciEntry>, String> {
    fn walk(devices: &Value, out: &mut Vec<PciEntry>, depth: usize) -> Result<(), String> {
        if depth > 256 {
            return Err("query-pci nests deeper than 256 buses".into());
        }
        for d in devices.as_array().ok_or("query-pci: devices is not a list")? {
            let num = |v: &Value, what: &str| {
                v.as_u64().ok_or_else(|| format!("query-pci: {what} is not a number: {v}"))
            };
            let bridge = d.get("pci_bridge");
            let buses = match bridge.and_then(|b| b.get("bus")) {
                Some(b) => Some((
                    num(&b["secondary"], "secondary")? as u8,
                    num(&b["subordinate"], "subordinate")? as u8,
                )),
                None => None,
            };
            out.push(PciEntry {
                bus: num(&d["bus"], "bus")? as u8,
                dev: num(&d["slot"], "slot")? as u8,
                func: num(&d["function"], "function")? as u8,
                vendor: num(&d["id"]["vendor"], "vendor")? as u16,
                device: num(&d["id"]["device"], "device")? as u16,
                class: num(&d["class_info"]["class"], "class")? as u16,
                buses,
                vf: false,
            });
            if let Some(children) = bridge.and_then(|b| b.get("devices")) {
                walk(children, out, depth + 1)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for bus in result.as_array().ok_or("query-pci: result is not a list")? {
        walk(&bus["devices"], &mut out, 0)?;
    }
    Ok(out)
}

/// Compares the image's functions with QEMU's. QEMU lists every VF slot of an SR-IOV PF, enabled
/// or not, with ID ffff:ffff (a VF's Vendor and Device ID registers read all-ones, PCIe Base
/// §9.3.4.1.1), so those entries are optional and match the image's `vf` entries by address and
/// class. Everything else must match exactly: address, IDs, class and bridge bus range.
pub(crate) fn compare(image: &[PciEntry], qemu: &[PciEntry]) -> Result<String, Vec<String>> {
    let key = |e: &PciEntry| (e.bus, e.dev, e.func);
    let q: BTreeMap<_, _> = qemu.iter().map(|e| (key(e), e)).collect();
    let i: BTreeMap<_, _> = image.iter().map(|e| (key(e), e)).collect();
    let mut problems = Vec::new();
    for e in image {
        match q.get(&key(e)) {
            None => problems.push(format!("{}: the image found {:04x}:{:04x}, QEMU has nothing there", e.bdf(), e.vendor, e.device)),
            Some(qe) if e.vf => {
                if qe.vendor != 0xffff || qe.class != e.class {
                    problems.push(format!("{}: the image found a VF (class {:04x}); QEMU has {:04x}:{:04x} class {:04x}", e.bdf(), e.class, qe.vendor, qe.device, qe.class));
                }
            }
            Some(qe) => {
                if (qe.vendor, qe.device, qe.class) != (e.vendor, e.device, e.class) {
                    problems.push(format!("{}: the image found {:04x}:{:04x} class {:04x}, QEMU has {:04x}:{:04x} class {:04x}", e.bdf(), e.vendor, e.device, e.class, qe.vendor, qe.device, qe.class));
                }
                if qe.buses != e.buses {
                    problems.push(format!("{}: bridge buses {:?} in the image, {:?} in QEMU", e.bdf(), e.buses, qe.buses));
                }
            }
        }
    }
    let mut vf_slots = 0;
    for qe in qemu {
        if qe.vendor == 0xffff {
            vf_slots += 1;
        } else if !i.contains_key(&key(qe)) {
            problems.push(format!("{}: QEMU has {:04x}:{:04x}, the image did not find it", qe.bdf(), qe.vendor, qe.device));
        }
    }
    if problems.is_empty() {
        let vfs = image.iter().filter(|e| e.vf).count();
        Ok(format!(
            "{} functions equal QEMU's query-pci ({} enabled VFs among {} VF slots)",
            image.len(),
            vfs,
            vf_slots
        ))
    } else {
        Err(problems)
    }
}

/// Runs `query-pci` on the QMP socket at `path`.
pub(crate) fn query_pci(path: &Path, timeout: Duration) -> Result<Vec<PciEntry>, String> {
    let stream = UnixStream::connect(path).map_err(|e| format!("QMP connect {}: {e}", path.display()))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut read = || -> Result<Value, String> {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("QMP read: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("QMP reply {line:?}: {e}"))
    };
    read()?; // greeting
    let mut execute = |cmd: &str| -> Result<Value, String> {
        writeln!(writer, "{{\"execute\":\"{cmd}\"}}").map_err(|e| format!("QMP write: {e}"))?;
        // Skip asynchronous events until the command's reply (bounded by the read timeout and
        // by a count, so a chatty QEMU cannot keep us here).
        for _ in 0..1000 {
            let v = read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {cmd}: {e}"));
            }
        }
        Err(format!("QMP {cmd}: no reply among 1000 messages"))
    };
    execute("qmp_capabilities")?;
    flatten(&execute("query-pci")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(bus: u8, dev: u8, func: u8, vendor: u16, device: u16, class: u16) -> PciEntry {
        PciEntry { bus, dev, func, vendor, device, class, buses: None, vf: false }
    }

    #[test]
    fn parses_image_lines() {
        let p = parse_entry("host-check pci 0000:00:04.0 1b36:000c class 060400 fn buses 03-04").unwrap();
        assert_eq!(p, PciEntry { buses: Some((3, 4)), ..e(0, 4, 0, 0x1b36, 0x000c, 0x0604) });
        let vf = parse_entry("host-check pci 0000:01:10.2 8086:10ca class 020000 vf").unwrap();
        assert!(vf.vf && vf.dev == 0x10 && vf.func == 2);
        assert_eq!(parse_entry("host-check pci 0001:00:00.0 8086:29c0 class 060000 fn"), None, "other segment");
        assert_eq!(parse_entry("host-check pci 0000:00:00.0 8086:29c0 class 060000 xx"), None);
        assert_eq!(parse_entry("something else"), None);
    }

    #[test]
    fn flattens_nested_query_pci() {
        let v: Value = serde_json::from_str(r#"[{"bus":0,"devices":[
            {"bus":0,"slot":4,"function":0,"id":{"vendor":6966,"device":12},"class_info":{"class":1540},
             "pci_bridge":{"bus":{"number":0,"secondary":3,"subordinate":4},"devices":[
                {"bus":3,"slot":0,"function":0,"id":{"vendor":6966,"device":14},"class_info":{"class":1540},
                 "pci_bridge":{"bus":{"number":3,"secondary":4,"subordinate":4},"devices":[
                    {"bus":4,"slot":3,"function":0,"id":{"vendor":4660,"device":4584},"class_info":{"class":255}}]}}]}}]}]"#).unwrap();
        let f = flatten(&v).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].buses, Some((3, 4)));
        assert_eq!(f[2], e(4, 3, 0, 0x1234, 0x11e8, 0x00ff));
        assert!(flatten(&serde_json::json!({"not": "a list"})).is_err());
    }

    #[test]
    fn compare_accepts_equal_trees_and_optional_vf_slots() {
        let mut pf = e(1, 0, 0, 0x8086, 0x10c9, 0x0200);
        let qemu = vec![pf.clone(), e(1, 0x10, 0, 0xffff, 0xffff, 0x0200), e(1, 0x10, 2, 0xffff, 0xffff, 0x0200)];
        assert!(compare(std::slice::from_ref(&pf), &qemu).is_ok(), "disabled VF slots are optional");
        let vf = PciEntry { vf: true, ..e(1, 0x10, 0, 0x8086, 0x10ca, 0x0200) };
        assert!(compare(&[pf.clone(), vf], &qemu).is_ok());
        let stray_vf = PciEntry { vf: true, ..e(1, 0x11, 0, 0x8086, 0x10ca, 0x0200) };
        assert!(compare(&[pf.clone(), stray_vf], &qemu).is_err(), "a VF where QEMU has no slot");
        pf.device = 0x10ca;
        assert!(compare(&[pf], &qemu).is_err(), "wrong device ID");
    }

    #[test]
    fn compare_reports_missing_and_extra_functions_and_bad_bridge_ranges() {
        let bridge = PciEntry { buses: Some((1, 1)), ..e(0, 2, 0, 0x1b36, 0x000c, 0x0604) };
        let qemu = vec![bridge.clone(), e(0, 0, 0, 0x8086, 0x29c0, 0x0600)];
        let problems = compare(std::slice::from_ref(&bridge), &qemu).unwrap_err();
        assert!(problems[0].contains("did not find"), "{problems:?}");
        let wrong = PciEntry { buses: Some((1, 2)), ..bridge.clone() };
        let problems = compare(&[wrong, e(0, 0, 0, 0x8086, 0x29c0, 0x0600)], &qemu).unwrap_err();
        assert!(problems[0].contains("bridge buses"), "{problems:?}");
        let extra = e(0, 3, 0, 0x1234, 0x11e8, 0x00ff);
        let problems = compare(&[bridge, e(0, 0, 0, 0x8086, 0x29c0, 0x0600), extra], &qemu).unwrap_err();
        assert!(problems[0].contains("QEMU has nothing there"), "{problems:?}");
    }
}
