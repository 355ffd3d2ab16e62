//! Turns a declared function into its reset configuration image: header registers with their
//! write masks, BARs, and the capability chains.

use crate::sim::std;
use std::vec::Vec;

use super::builder::Function;
use super::caps::{Bar, Capability, PcieCap, PortType, SrIov};
use super::space::Space;
use crate::pci::config::reg;

/// Header layout and, for bridges, which windows exist.
#[derive(Clone, Copy, Debug)]
pub(super) enum Header {
    Type0,
    Type1 {
        /// I/O window: `None` absent, `Some(true)` 32-bit.
        io32: Option<bool>,
        /// Prefetchable window: `None` absent, `Some(true)` 64-bit.
        pref64: Option<bool>,
    },
}

/// Everything the builder decided about one function; immutable after build.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    /// The reset image (FLR and VF Enable go back to it).
    pub(super) image: Space,
    pub(super) legacy: Vec<(u8, u16)>,
    pub(super) extended: Vec<(u16, u16)>,
    pub(super) pcie: Option<(u16, PcieCap)>,
    pub(super) pri: Option<u16>,
    pub(super) sriov: Option<(u16, SrIov)>,
    /// 4 KiB of config space (PCIe) rather than 256 bytes (conventional PCI).
    pub(super) ext_config: bool,
    pub(super) is_bridge: bool,
}

/// Offsets inside the SR-IOV capability (PCIe Base 6.0 §9.3.3).
pub(super) mod sriov_reg {
    pub(crate) const CONTROL: u16 = 0x08;
    pub(crate) const INITIAL_VFS: u16 = 0x0c;
    pub(crate) const TOTAL_VFS: u16 = 0x0e;
    pub(crate) const NUM_VFS: u16 = 0x10;
    pub(crate) const FUNCTION_LINK: u16 = 0x12;
    pub(crate) const FIRST_VF_OFFSET: u16 = 0x14;
    pub(crate) const VF_STRIDE: u16 = 0x16;
    pub(crate) const VF_DEVICE_ID: u16 = 0x1a;
    pub(crate) const SUPPORTED_PAGE_SIZES: u16 = 0x1c;
    pub(crate) const SYSTEM_PAGE_SIZE: u16 = 0x20;
    pub(crate) const VF_BAR0: u16 = 0x24;
    /// Control bits.
    pub(crate) const VF_ENABLE: u16 = 1 << 0;
    pub(crate) const VF_MSE: u16 = 1 << 3;
    pub(crate) const ARI_CAPABLE: u16 = 1 << 4;
}

/// Offsets inside the PRI capability (PCIe Base 6.0 §10.5.2).
pub(super) mod pri_reg {
    pub(crate) const CONTROL: u16 = 0x04;
    pub(crate) const STATUS: u16 = 0x06;
    pub(crate) const CAPACITY: u16 = 0x08;
    pub(crate) const ALLOCATION: u16 = 0x0c;
    pub(crate) const ENABLE: u16 = 1 << 0;
    pub(crate) const RESET: u16 = 1 << 1;
    pub(crate) const RESPONSE_FAILURE: u16 = 1 << 0;
    pub(crate) const UPRGI: u16 = 1 << 1;
    pub(crate) const STOPPED: u16 = 1 << 8;
    pub(crate) const PRG_RESPONSE_PASID_REQUIRED: u16 = 1 << 15;
}

/// Offsets inside the PCI Express capability (PCIe Base 6.0 §7.5.3).
pub(super) mod pcie_reg {
    pub(crate) const DEVCAP: u16 = 0x04;
    pub(crate) const DEVCTL: u16 = 0x08;
    pub(crate) const DEVCTL2: u16 = 0x28;
    pub(crate) const DEVCTL_FLR: u16 = 1 << 15;
    pub(crate) const DEVCTL2_ARI_FORWARDING: u16 = 1 << 5;
}

/// COMMAND bits software may write: I/O, Memory, Bus Master, Parity Error Response, SERR#,
/// Interrupt Disable (PCIe Base 6.0 §7.5.1.1.3).
const COMMAND_WMASK: u32 = 0x0547;
/// STATUS error bits, all RW1C (PCIe Base 6.0 §7.5.1.1.4; the same bits in Secondary Status).
const STATUS_W1C: u32 = 0xf900;

fn align4(v: u16) -> u16 {
    (v + 3) & !3
}

/// The effective size of a VF BAR for a System Page Size: each VF's resources are aligned on
/// (so at least) the system page size (PCIe Base 6.0 §9.3.3.13).
pub(super) fn vf_bar_size(bar: &Bar, page_size: u64) -> u64 {
    bar.size.max(page_size)
}

/// Writes BAR `index` at `base` (`base + 4` holds the upper half of a 64-bit one).
fn emit_bar(s: &mut Space, base: u16, bar: &Bar, size: u64) {
    let (lo, lo_mask, hi, hi_mask) = bar.registers(size);
    s.set(base, 4, lo);
    s.set_wmask(base, 4, lo_mask);
    if bar.is_64() {
        s.set(base + 4, 4, hi);
        s.set_wmask(base + 4, 4, hi_mask);
    }
}

/// Writes the BARs of a header or of an SR-IOV capability.
pub(super) fn emit_bars(
    s: &mut Space,
    base: u16,
    bars: &[Option<Bar>],
    page_size: Option<u64>,
    what: &str,
) {
    for (i, slot) in bars.iter().enumerate() {
        let Some(bar) = slot else { continue };
        bar.check(what);
        assert!(
            !bar.is_64() || i + 1 < bars.len(),
            "sim: {what}: 64-bit BAR {i} has no room for its upper half"
        );
        assert!(
            i == 0 || !bars[i - 1].is_some_and(|b| b.is_64()),
            "sim: {what}: BAR {i} is the upper half of BAR {}",
            i - 1
        );
        let size = page_size.map_or(bar.size, |p| vf_bar_size(bar, p));
        // CAST: at most 6 BARs.
        emit_bar(s, base + 4 * i as u16, bar, size);
    }
}

/// Builds the reset image of `f`.
///
/// `vf`: a VF's image (IDs read 0xffff, BARs zero, Command only Bus Master writable, ATS STU
/// read-only: PCIe Base 6.0 §9.3.4). `multi`: set the multi-function bit. `occupied`: for a
/// downstream port, whether something is attached (Presence Detect, Data Link Layer Active).
pub(super) fn layout(
    f: &Function,
    header: Header,
    vf: bool,
    multi: bool,
    occupied: bool,
) -> Layout {
    let what = f.name.as_deref().unwrap_or("function");
    let mut s = Space::new();
    let (vendor, device) = if vf { (0xffff, 0xffff) } else { (f.vendor, f.device) };
    s.set(reg::VENDOR_ID, 2, u32::from(vendor));
    s.set(reg::DEVICE_ID, 2, u32::from(device));
    s.set_wmask(
        reg::COMMAND,
        2,
        if vf { u32::from(reg::COMMAND_BUS_MASTER) } else { COMMAND_WMASK },
    );
    s.set_w1c(reg::STATUS, 2, STATUS_W1C);
    s.set(reg::REVISION_CLASS, 4, (f.class << 8) | u32::from(f.revision));
    if !vf {
        s.set_wmask(reg::CACHE_LINE, 1, 0xff);
    }
    let layout_bits = match header {
        Header::Type0 => 0,
        Header::Type1 { .. } => 1,
    };
    s.set(
        reg::HEADER_TYPE,
        1,
        layout_bits | if multi { u32::from(reg::HEADER_MULTI_FUNCTION) } else { 0 },
    );
    s.set_wmask(reg::INTERRUPT_LINE, 1, 0xff);
    s.set(reg::INTERRUPT_LINE + 1, 1, u32::from(f.interrupt_pin));

    match header {
        Header::Type0 => {
            if !vf {
                emit_bars(&mut s, reg::BAR0, &f.bars, None, what);
            }
            s.set(reg::SUBSYSTEM_VENDOR_ID, 2, u32::from(f.subsystem.0));
            s.set(reg::SUBSYSTEM_VENDOR_ID + 2, 2, u32::from(f.subsystem.1));
            if let (Some(size), false) = (f.rom, vf) {
                emit_rom(&mut s, reg::EXPANSION_ROM, size, what);
            }
        }
        Header::Type1 { io32, pref64 } => {
            assert!(
                f.bars[2..].iter().all(Option::is_none),
                "sim: {what}: a bridge has only BAR0 and BAR1"
            );
            emit_bars(&mut s, reg::BAR0, &f.bars[..2], None, what);
            // PCI-to-PCI Bridge spec §3.2.5: bus numbers and secondary latency timer are RW.
            s.set_wmask(reg::PRIMARY_BUS, 4, 0xffff_ffff);
            if let Some(io32) = io32 {
                // I/O base/limit: bits 7:4 are address 15:12 (4 KiB granularity);
                // bits 3:0 say 16/32-bit.
                s.set(reg::IO_BASE, 1, u32::from(io32));
                s.set(reg::IO_LIMIT, 1, u32::from(io32));
                s.set_wmask(reg::IO_BASE, 2, 0xf0f0);
                if io32 {
                    s.set_wmask(reg::IO_BASE_UPPER, 4, 0xffff_ffff);
                }
            }
            s.set_w1c(reg::SECONDARY_STATUS, 2, STATUS_W1C);
            // Memory base/limit: bits 15:4 are address 31:20 (1 MiB granularity).
            s.set_wmask(reg::MEMORY_BASE, 4, 0xfff0_fff0);
            if let Some(pref64) = pref64 {
                s.set(reg::PREF_MEMORY_BASE, 2, u32::from(pref64));
                s.set(reg::PREF_MEMORY_LIMIT, 2, u32::from(pref64));
                s.set_wmask(reg::PREF_MEMORY_BASE, 4, 0xfff0_fff0);
                if pref64 {
                    s.set_wmask(reg::PREF_BASE_UPPER, 4, 0xffff_ffff);
                    s.set_wmask(reg::PREF_LIMIT_UPPER, 4, 0xffff_ffff);
                }
            }
            if let Some(size) = f.rom {
                emit_rom(&mut s, reg::BRIDGE_EXPANSION_ROM, size, what);
            }
            // Bridge Control: bits 0-9 and 11 RW, Discard Timer Status (10) RW1C.
            s.set_wmask(reg::BRIDGE_CONTROL, 2, 0x0bff);
            s.set_w1c(reg::BRIDGE_CONTROL, 2, 0x0400);
        }
    }

    let mut out = Layout {
        image: Space::new(),
        legacy: Vec::new(),
        extended: Vec::new(),
        pcie: None,
        pri: None,
        sriov: None,
        ext_config: false,
        is_bridge: matches!(header, Header::Type1 { .. }),
    };
    place_caps(&mut s, &f.caps, &mut out, vf, occupied, what);
    if !out.legacy.is_empty() {
        s.set_bits(reg::STATUS, 2, u32::from(reg::STATUS_CAP_LIST));
    }
    for (off, bytes) in &f.pokes {
        s.poke(*off, bytes);
    }
    out.ext_config = f.ext_config.unwrap_or(out.pcie.is_some());
    out.image = s;
    out
}

fn emit_rom(s: &mut Space, off: u16, size: u64, what: &str) {
    assert!(
        size.is_power_of_two() && (2048..=1 << 24).contains(&size),
        "sim: {what}: ROM size {size:#x}"
    );
    // CAST: size <= 16 MiB. Bit 0 is the ROM enable (PCIe Base 6.0 §7.5.1.2.4).
    s.set_wmask(off, 4, (!(size as u32 - 1) & 0xffff_f800) | 1);
}

fn place_caps(
    s: &mut Space,
    caps: &[(Capability, Option<u16>)],
    out: &mut Layout,
    vf: bool,
    occupied: bool,
    what: &str,
) {
    let mut next_legacy = 0x40u16;
    let mut next_ext = 0x100u16;
    let mut used: Vec<(u16, u16)> = Vec::new();
    let mut legacy: Vec<u16> = Vec::new();
    let mut extended: Vec<u16> = Vec::new();
    for (cap, at) in caps {
        let len = cap.len();
        let ext = cap.is_extended();
        let off = at.unwrap_or(if ext { next_ext } else { next_legacy });
        let (lo, hi) = if ext { (0x100, 0x1000) } else { (0x40, 0x100) };
        assert!(
            off.is_multiple_of(4) && off >= lo && u32::from(off) + u32::from(len) <= hi,
            "sim: {what}: capability {:#x} of {len} bytes does not fit at {off:#x}",
            cap.id()
        );
        assert!(
            used.iter().all(|&(o, l)| off + len <= o || o + l <= off),
            "sim: {what}: capability {:#x} at {off:#x} overlaps another",
            cap.id()
        );
        assert!(
            !(vf && matches!(cap, Capability::SrIov(_))),
            "sim: {what}: a VF cannot have SR-IOV"
        );
        used.push((off, len));
        if ext {
            next_ext = align4(next_ext.max(off + len));
            extended.push(off);
            out.extended.push((cap.id(), off));
        } else {
            next_legacy = align4(next_legacy.max(off + len));
            legacy.push(off);
            // CAST: legacy IDs are 8 bits.
            out.legacy.push((cap.id() as u8, off));
        }
        emit_cap(s, off, cap, out, vf, occupied);
    }
    // Legacy chain: Capabilities Pointer, then each header's next byte
    // (PCIe Base 6.0 §7.5.1.1.11).
    s.set(reg::CAPABILITIES_POINTER, 1, u32::from(legacy.first().copied().unwrap_or(0)));
    for (i, &off) in legacy.iter().enumerate() {
        s.set(off, 1, out.legacy[i].0.into());
        s.set(off + 1, 1, u32::from(legacy.get(i + 1).copied().unwrap_or(0)));
    }
    // Extended chain: starts at 0x100 (PCIe Base 6.0 §7.6.3).
    if let Some(&first) = extended.first() {
        assert!(
            first == 0x100,
            "sim: {what}: the first extended capability must be at 0x100, not {first:#x}"
        );
    }
    for (i, &off) in extended.iter().enumerate() {
        let next = u32::from(extended.get(i + 1).copied().unwrap_or(0));
        let version = match &caps.iter().filter(|(c, _)| c.is_extended()).nth(i) {
            Some((Capability::Aer, _)) => 2,
            Some((Capability::RawExtended { version, .. }, _)) => u32::from(*version & 0xf),
            _ => 1,
        };
        s.set(off, 4, u32::from(out.extended[i].0) | version << 16 | next << 20);
    }
}

fn emit_cap(s: &mut Space, c: u16, cap: &Capability, out: &mut Layout, vf: bool, occupied: bool) {
    match cap {
        Capability::Pm => {
            s.set(c + 2, 2, 0x0003); // PMC: version 3 (PCI PM 1.2 §3.2.3)
            s.set(c + 4, 2, 0x0008); // PMCSR: No_Soft_Reset
            s.set_wmask(c + 4, 2, 0x0103); // PowerState, PME_En
            s.set_w1c(c + 4, 2, 0x8000); // PME_Status
        }
        Capability::Msi { vectors, addr64, per_vector_mask } => {
            let v = (*vectors).clamp(1, 32).next_power_of_two();
            let mmc = v.trailing_zeros();
            s.set(c + 2, 2, mmc << 1 | u32::from(*addr64) << 7 | u32::from(*per_vector_mask) << 8);
            s.set_wmask(c + 2, 2, 0x0071); // MSI Enable, Multiple Message Enable
            s.set_wmask(c + 4, 4, 0xffff_fffc);
            let mut data = c + 8;
            if *addr64 {
                s.set_wmask(c + 8, 4, 0xffff_ffff);
                data = c + 12;
            }
            s.set_wmask(data, 2, 0xffff);
            if *per_vector_mask {
                let bits = if v == 32 { u32::MAX } else { (1u32 << v) - 1 };
                s.set_wmask(data + 4, 4, bits);
            }
        }
        Capability::MsiX { table_size, table_bir, table_offset, pba_bir, pba_offset } => {
            s.set(c + 2, 2, u32::from(table_size.clamp(&1, &2048) - 1));
            s.set_wmask(c + 2, 2, 0xc000); // MSI-X Enable, Function Mask
            s.set(c + 4, 4, (table_offset & !7) | u32::from(table_bir & 7));
            s.set(c + 8, 4, (pba_offset & !7) | u32::from(pba_bir & 7));
        }
        Capability::Pcie(p) => {
            out.pcie = Some((c, *p));
            emit_pcie(s, c, p, occupied);
        }
        Capability::Aer => {
            s.set_w1c(c + 0x04, 4, 0xffff_ffff); // Uncorrectable Error Status
            s.set_wmask(c + 0x08, 4, 0xffff_ffff); // Mask
            s.set_wmask(c + 0x0c, 4, 0xffff_ffff); // Severity
            s.set_w1c(c + 0x10, 4, 0xffff_ffff); // Correctable Error Status
            s.set_wmask(c + 0x14, 4, 0xffff_ffff); // Mask
            s.set_wmask(c + 0x18, 4, 0x0000_0140); // ECRC enables
        }
        Capability::Acs { capability } => {
            s.set(c + 4, 2, u32::from(*capability));
            // A control bit is writable where its capability bit is set (§7.7.11.3).
            s.set_wmask(c + 6, 2, u32::from(capability & 0x7f));
            if capability & super::caps::acs::EC != 0 {
                let len = cap.len();
                for o in (c + 8..c + len).step_by(4) {
                    s.set_wmask(o, 4, 0xffff_ffff);
                }
            }
        }
        Capability::Ari { next_function } => s.set(c + 4, 2, u32::from(*next_function) << 8),
        Capability::Ats { invalidate_queue_depth, page_aligned } => {
            s.set(
                c + 4,
                2,
                u32::from(invalidate_queue_depth & 0x1f) | u32::from(*page_aligned) << 5,
            );
            // Enable; STU is RsvdP in VFs, which use the PF's (PCIe Base 6.0 §10.5.1.3).
            s.set_wmask(c + 6, 2, if vf { 0x8000 } else { 0x801f });
        }
        Capability::Pasid { execute, privileged, max_width } => {
            s.set(
                c + 4,
                2,
                u32::from(*execute) << 1
                    | u32::from(*privileged) << 2
                    | u32::from((*max_width).min(20)) << 8,
            );
            s.set_wmask(c + 6, 2, 1 | u32::from(*execute) << 1 | u32::from(*privileged) << 2);
        }
        Capability::Pri { capacity, prg_response_pasid_required } => {
            out.pri = Some(c);
            s.set_wmask(c + pri_reg::CONTROL, 2, u32::from(pri_reg::ENABLE));
            let status = pri_reg::STOPPED
                | if *prg_response_pasid_required {
                    pri_reg::PRG_RESPONSE_PASID_REQUIRED
                } else {
                    0
                };
            s.set(c + pri_reg::STATUS, 2, u32::from(status));
            s.set_w1c(
                c + pri_reg::STATUS,
                2,
                u32::from(pri_reg::RESPONSE_FAILURE | pri_reg::UPRGI),
            );
            s.set(c + pri_reg::CAPACITY, 4, *capacity);
            s.set_wmask(c + pri_reg::ALLOCATION, 4, 0xffff_ffff);
        }
        Capability::SrIov(v) => {
            out.sriov = Some((c, v.clone()));
            use sriov_reg as r;
            s.set_wmask(c + r::CONTROL, 2, u32::from(r::VF_ENABLE | r::VF_MSE | r::ARI_CAPABLE));
            s.set(c + r::INITIAL_VFS, 2, u32::from(v.initial_vfs));
            s.set(c + r::TOTAL_VFS, 2, u32::from(v.total_vfs));
            s.set_wmask(c + r::NUM_VFS, 2, 0xffff);
            s.set(c + r::FUNCTION_LINK, 1, u32::from(v.function_link));
            let (offset, stride) = v.offset_stride_for(0, false);
            s.set(c + r::FIRST_VF_OFFSET, 2, u32::from(offset));
            s.set(c + r::VF_STRIDE, 2, u32::from(stride));
            s.set(c + r::VF_DEVICE_ID, 2, u32::from(v.vf_device));
            s.set(c + r::SUPPORTED_PAGE_SIZES, 4, v.page_sizes);
            s.set(c + r::SYSTEM_PAGE_SIZE, 4, 1);
            s.set_wmask(c + r::SYSTEM_PAGE_SIZE, 4, 0xffff_ffff);
            emit_bars(s, c + r::VF_BAR0, &v.vf_bars, Some(4096), "VF BAR");
        }
        Capability::RawLegacy { body, .. } | Capability::RawExtended { body, .. } => {
            let start = if cap.is_extended() { c + 4 } else { c + 2 };
            s.poke(start, body);
        }
    }
}

fn emit_pcie(s: &mut Space, c: u16, p: &PcieCap, occupied: bool) {
    let down = p.port_type.is_downstream_port();
    let slot = p.slot && down;
    s.set(c + 2, 2, 2 | u32::from(p.port_type as u8) << 4 | u32::from(slot) << 8);
    // DevCap: Extended Tag, Role-Based Error Reporting, FLR.
    s.set(c + pcie_reg::DEVCAP, 4, 1 << 5 | 1 << 15 | u32::from(p.flr) << 28);
    // DevCtl: Max_Read_Request_Size 512 at reset; bit 15 is Initiate FLR (reads 0) in functions
    // and Bridge Configuration Retry Enable (RW) in bridges.
    s.set(c + pcie_reg::DEVCTL, 2, 0x2000);
    let bridge_like =
        down || matches!(p.port_type, PortType::SwitchUpstream | PortType::PcieToPciBridge);
    s.set_wmask(c + pcie_reg::DEVCTL, 2, if bridge_like { 0xffff } else { 0x7fff });
    s.set_w1c(c + 0x0a, 2, 0x000f); // Device Status error bits
    // Link: 2.5 GT/s x1; Downstream Ports report Data Link Layer Link Active.
    s.set(c + 0x0c, 4, 0x11 | u32::from(down) << 20);
    s.set_wmask(c + 0x10, 2, 0x0ffb);
    s.set(c + 0x12, 2, 0x0011 | u32::from(down && occupied) << 13);
    if down {
        s.set_w1c(c + 0x12, 2, 0xc000);
    }
    if slot {
        let hp = if p.hotplug { 1 << 5 | 1 << 6 } else { 0 };
        s.set(c + 0x14, 4, hp | u32::from(p.slot_number & 0x1fff) << 19);
        s.set_wmask(c + 0x18, 2, 0x1fff);
        s.set(c + 0x1a, 2, u32::from(occupied) << 6); // Presence Detect State
        s.set_w1c(c + 0x1a, 2, 0x011f);
    }
    if p.port_type == PortType::RootPort {
        s.set_wmask(c + 0x1c, 2, 0x001f);
        s.set_w1c(c + 0x20, 4, 1 << 16);
    }
    // DevCap2: completion timeout ranges, ARI Forwarding Supported.
    s.set(c + 0x24, 4, 0xf | u32::from(p.ari_forwarding && down) << 5);
    let ari = if p.ari_forwarding && down { pcie_reg::DEVCTL2_ARI_FORWARDING } else { 0 };
    s.set_wmask(c + pcie_reg::DEVCTL2, 2, 0x001f | u32::from(ari));
    s.set(c + 0x2c, 4, 0x2); // LinkCap2: 2.5 GT/s supported
    s.set(c + 0x30, 2, 0x1);
    s.set_wmask(c + 0x30, 2, 0x000f);
}
