//! Virtual configuration space for an assigned VF: the VF's own registers, read-only, plus a
//! virtual PASID and a virtual PRI capability standing for the PF's (PCIe Base 6.0 §7.8.9,
//! §10.5.2).
//!
//! A VF has no PASID or PRI capability: it uses its PF's (§9.3.7.11, §9.3.7.14), which the
//! hypervisor keeps for itself and shares between the PF and every VF
//! ([`pri_share`](super::pri_share)). A guest driving an assigned VF still needs to see the
//! capabilities to use PASIDs and page requests, so [`VfConfig`] presents them, spec-honest:
//!
//! - the values are the PF's (Max PASID Width, Execute/Privileged Mode Supported, PRG Response
//!   PASID Required); the Outstanding Page Request Capacity is the VF's share of the PF's
//!   allocation;
//! - the control bits are the guest's own, per VF, and change nothing in the hardware: the IOMMU
//!   side enforces them through [`VfConfig::allows`] and [`VfConfig::page_requests_enabled`];
//! - Stopped comes from the firmware's own accounting ([`VfConfig::set_outstanding`]): this
//!   VF's groups not yet answered, not the PF's Stopped bit, which speaks for every sibling.
//!
//! # Where the capabilities go
//!
//! QEMU places its synthesized PASID capability "in the good hope of no conflict". Here the
//! offset is proven free ([`place`]):
//!
//! - outside every real extended capability of the VF: its list is walked once with the bounded
//!   walker and each capability's extent taken from its spec size, or, for one whose size the
//!   header does not give, up to the next capability above it (or the end of the space);
//! - outside the caller's reserved ranges: offsets where the VF (or, mirroring it, its PF) has
//!   registers outside its capability list. No register says where those are; they come from
//!   the device's documentation, as a quirk table entry. Without one, none are assumed.
//!
//! Where both fit, the PF's own PASID and PRI offsets are preferred, as PCI-SIG members advised
//! vendors to keep them unused in VFs for exactly this (the `vfio` thread in the seeds); else
//! the lowest free dword-aligned offset. The last real capability's Next pointer is virtualized
//! to point at the first virtual one; a VF without extended capabilities gets the first one at
//! 0x100 if that is free, else a virtual header at 0x100 with ID 0 (the "hidden capability"
//! vfio uses) pointing at it.
//!
//! Guest writes are accepted only inside the virtual capabilities, and there only to bits the
//! spec makes writable: read-only and reserved bits keep their values (§7.4). Everything else of
//! the view is read-only.

use core::ops::Range;

use heapless::Vec;

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::caps::{self, id};
use crate::pci::config::ConfigAccess;
use crate::pci::pasid::Pasid;
use crate::pci::pri::Pri;

/// Bytes of the PASID capability (Linux `PCI_EXT_CAP_PASID_SIZEOF`).
pub const PASID_LEN: u16 = 8;
/// Bytes of the PRI capability (Linux `PCI_EXT_CAP_PRI_SIZEOF`).
pub const PRI_LEN: u16 = 0x10;
/// Most real extended capabilities of a VF this module places around.
pub const MAX_VF_CAPS: usize = 64;

const EXT_START: u16 = 0x100;
const EXT_END: u16 = 0x1000;

/// PASID: Capability at 0x04 (Execute Permission Supported bit 1, Privileged Mode Supported bit
/// 2, Max PASID Width 12:8, copied from the PF), Control at 0x06 (Enable 0, Execute Permission Enable 1, Privileged
/// Mode Enable 2).
const PASID_EXECUTE: u16 = 1 << 1;
const PASID_PRIVILEGED: u16 = 1 << 2;
const PASID_ENABLE: u16 = 1 << 0;
/// PRI: Control at 0x04 (Enable 0, Reset 1), Status at 0x06 (Response Failure 0 RW1C, UPRGI 1
/// RW1C, Stopped 8, PRG Response PASID Required 15), Capacity 0x08, Allocation 0x0c.
const PRI_ENABLE: u16 = 1 << 0;
const PRI_RESET: u16 = 1 << 1;
const PRI_RESPONSE_FAILURE: u16 = 1 << 0;
const PRI_UPRGI: u16 = 1 << 1;
const PRI_STOPPED: u16 = 1 << 8;
const PRI_PASID_REQUIRED: u16 = 1 << 15;

/// Where the virtual capabilities sit in a VF's configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Placement {
    /// The virtual PASID capability (`None` when the PF has no PASID).
    pub pasid: Option<u16>,
    /// The virtual PRI capability.
    pub pri: u16,
    /// The VF's last real extended capability, whose Next pointer is virtualized; `None` when
    /// the VF has none.
    pub last_real: Option<u16>,
    /// A virtual header (ID 0, version 0) at 0x100 points at the first virtual capability:
    /// the VF has no extended capabilities and 0x100 itself is not free.
    pub null_header: bool,
}

impl Placement {
    /// The first virtual capability in the list.
    pub const fn first(&self) -> u16 {
        match self.pasid {
            Some(p) => p,
            None => self.pri,
        }
    }
}

/// Bytes a real extended capability of ID `cap` spans, where the spec fixes it (PCIe Base 6.0
/// §7.8, §9.3.3, §10.5); `None` for variable-sized or unknown ones.
fn spec_len(cap: u16) -> Option<u16> {
    use id::extended as x;
    Some(match cap {
        // AER with the TLP Prefix Log: the largest version-2 layout.
        x::AER => 0x48,
        x::DSN | x::PTM => 0x0c,
        x::ARI | x::ATS | x::PASID | x::LTR => 8,
        x::SRIOV => 0x40,
        x::PRI | x::L1_PM_SUBSTATES => 0x10,
        _ => return None,
    })
}

fn overlaps(a: &Range<u16>, b: &Range<u16>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Chooses free offsets for a virtual PASID (if `with_pasid`) and PRI capability in VF `vf`'s
/// configuration space; see the [module docs](self#where-the-capabilities-go). `preferred` are
/// the PF's own PASID and PRI offsets, tried first. `reserved` are the ranges the VF uses
/// outside its capability list.
///
/// Refused: the VF has a PASID or PRI capability of its own (a VF must not, §9.3.7.11; this
/// view would hide it) as [`Error::Hardware`] with its offset; more than [`MAX_VF_CAPS`]
/// capabilities ([`Error::CapacityExceeded`]); no room ([`Error::NotFound`]); the walker's
/// errors for a malformed list.
pub fn place<C: ConfigAccess + ?Sized>(
    cfg: &C,
    vf: Bdf,
    with_pasid: bool,
    preferred: (Option<u16>, Option<u16>),
    reserved: &[Range<u16>],
) -> Result<Placement> {
    let mut real: Vec<(u16, u16), MAX_VF_CAPS> = Vec::new();
    let mut last_real = None;
    for cap in caps::extended(cfg, vf) {
        let (cap_id, _, offset) = cap?;
        if cap_id == id::PASID || cap_id == id::PRI {
            return Err(Error::Hardware {
                what: "a VF with a PASID or PRI capability of its own",
                value: u64::from(offset),
            });
        }
        real.push((offset, cap_id)).map_err(|_| Error::CapacityExceeded {
            what: "VF extended capabilities",
            capacity: MAX_VF_CAPS,
        })?;
        last_real = Some(offset);
    }
    real.sort_unstable();
    // Extents of the real capabilities.
    let mut used: Vec<Range<u16>, MAX_VF_CAPS> = Vec::new();
    for (i, &(offset, cap_id)) in real.iter().enumerate() {
        let next = real.get(i + 1).map_or(EXT_END, |n| n.0);
        let end = match spec_len(cap_id) {
            Some(len) => offset.saturating_add(len).min(EXT_END),
            None => next,
        };
        // Never less than the header itself. `used` has the capacity of `real`: never full.
        let _ = used.push(offset..end.max(offset + 4));
    }
    let is_free = |at: u16, len: u16, other: Option<Range<u16>>| {
        let r = at..at.saturating_add(len);
        at.is_multiple_of(4)
            && at >= EXT_START
            && r.end <= EXT_END
            && !used.iter().any(|u| overlaps(u, &r))
            && !reserved.iter().any(|u| overlaps(u, &r))
            && other.as_ref().is_none_or(|o| !overlaps(o, &r))
    };
    let find = |len: u16, prefer: Option<u16>, other: Option<Range<u16>>, first: bool| {
        // A VF without extended capabilities: 0x100 first, so that no null header is needed.
        let head = (first && last_real.is_none()).then_some(EXT_START);
        let scan = (EXT_START..EXT_END).step_by(4);
        head.into_iter().chain(prefer).chain(scan).find(|&at| is_free(at, len, other.clone()))
    };
    let no_room = Error::NotFound { what: "free VF config space for virtual PASID/PRI" };
    let pasid = if with_pasid {
        Some(find(PASID_LEN, preferred.0, None, true).ok_or(no_room)?)
    } else {
        None
    };
    let pri = find(PRI_LEN, preferred.1, pasid.map(|p| p..p + PASID_LEN), pasid.is_none())
        .ok_or(no_room)?;
    let first = pasid.unwrap_or(pri);
    let null_header = last_real.is_none() && first != EXT_START;
    if null_header {
        // The null header takes 0x100..0x104: the capabilities must have kept clear of it.
        let header = EXT_START..EXT_START + 4;
        let clash = |at: u16, len: u16| overlaps(&header, &(at..at + len));
        if pasid.is_some_and(|p| clash(p, PASID_LEN)) || clash(pri, PRI_LEN) {
            return Err(no_room);
        }
        if reserved.iter().any(|r| overlaps(r, &header)) {
            return Err(no_room);
        }
    }
    Ok(Placement { pasid, pri, last_real, null_header })
}

/// What a guest write did, for the caller to act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WriteEffect {
    /// The write fell in the virtual capabilities (else it was ignored: the view is
    /// read-only).
    pub handled: bool,
    /// Virtual PRI Enable changed to this value: enable or release this VF's page requests
    /// ([`PriShare`](super::pri_share::PriShare)).
    pub pri_enable: Option<bool>,
    /// Reset was written with Enable clear: the firmware answers this VF's outstanding groups
    /// (Invalid) and forgets them, as the function would (§10.5.2.2).
    pub pri_reset: bool,
    /// Virtual PASID Control changed.
    pub pasid_control: bool,
}

/// The virtual configuration space of one assigned VF; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfConfig {
    vf: Bdf,
    placement: Placement,
    /// PASID Capability register as the PF reports it (features and width only).
    pasid_capability: u16,
    pri_capacity: u32,
    prg_response_pasid_required: bool,
    pasid_control: u16,
    pri_enable: bool,
    /// Response Failure and UPRGI.
    pri_errors: u16,
    pri_allocation: u32,
    outstanding: u32,
}

impl VfConfig {
    /// The view of VF `vf` of `pf`, with a PRI capacity of `share` (the VF's share, from
    /// [`Grant::share`](super::pri_share::Grant::share)) and `reserved` ranges (see [`place`]).
    ///
    /// Reads the PF's PRI and PASID capabilities (one walk each) and walks the VF's list once.
    /// A PF without PRI is [`Error::PriUnavailable`]; a PF without PASID gets a view with PRI
    /// only.
    pub fn new<C: ConfigAccess + ?Sized>(
        cfg: &C,
        vf: Bdf,
        pf: Bdf,
        share: u32,
        reserved: &[Range<u16>],
    ) -> Result<Self> {
        let pri = Pri::find(cfg, pf)?.ok_or(Error::PriUnavailable { pf })?;
        let status = pri.status(cfg)?;
        let pasid = Pasid::find(cfg, pf)?;
        let pasid_capability = match pasid {
            Some(p) => {
                let c = p.capability(cfg)?;
                (if c.features.execute { PASID_EXECUTE } else { 0 })
                    | (if c.features.privileged { PASID_PRIVILEGED } else { 0 })
                    | u16::from(c.max_width) << 8
            }
            None => 0,
        };
        let preferred = (pasid.map(|p| p.offset()), Some(pri.offset()));
        let placement = place(cfg, vf, pasid.is_some(), preferred, reserved)?;
        Ok(Self {
            vf,
            placement,
            pasid_capability,
            pri_capacity: share,
            prg_response_pasid_required: status.prg_response_pasid_required,
            pasid_control: 0,
            pri_enable: false,
            pri_errors: 0,
            pri_allocation: 0,
            outstanding: 0,
        })
    }

    /// The VF.
    pub const fn vf(&self) -> Bdf {
        self.vf
    }

    /// Where the virtual capabilities are.
    pub const fn placement(&self) -> Placement {
        self.placement
    }

    /// The dword at `offset` (dword-aligned) as the guest sees it.
    fn dword<C: ConfigAccess + ?Sized>(&self, cfg: &C, offset: u16) -> u32 {
        let p = &self.placement;
        if let Some(base) = p.pasid
            && (base..base + PASID_LEN).contains(&offset)
        {
            return match offset - base {
                0 => header(id::PASID, 1, p.pri),
                _ => u32::from(self.pasid_capability) | u32::from(self.pasid_control) << 16,
            };
        }
        if (p.pri..p.pri + PRI_LEN).contains(&offset) {
            return match offset - p.pri {
                0 => header(id::PRI, 1, 0),
                4 => u32::from(u16::from(self.pri_enable)) | u32::from(self.pri_status()) << 16,
                8 => self.pri_capacity,
                _ => self.pri_allocation,
            };
        }
        if p.null_header && offset == EXT_START {
            return header(0, 0, p.first());
        }
        let real = cfg.read32(self.vf, offset);
        if p.last_real == Some(offset) && real != u32::MAX {
            return (real & 0x000f_ffff) | u32::from(p.first()) << 20;
        }
        real
    }

    /// Reads `len` (1, 2 or 4) bytes at `offset` as the guest sees them: the real VF, except the
    /// virtual capabilities and the virtualized Next pointer. An access that is not naturally
    /// aligned is [`Error::Misaligned`] (PCIe configuration requests cannot express one).
    pub fn read<C: ConfigAccess + ?Sized>(&self, cfg: &C, offset: u16, len: u8) -> Result<u32> {
        check_access(offset, len)?;
        let dword = self.dword(cfg, offset & !3);
        Ok(extract(dword, offset, len))
    }

    /// A guest write of `len` bytes at `offset`. Only the writable bits of the virtual
    /// capabilities take it: PASID Enable, and Execute / Privileged Mode Enable where the PF
    /// supports them; PRI Enable, Reset (acted on, reads 0), Response Failure and UPRGI (RW1C),
    /// and the allocation while Enable is clear (changing it while enabled is undefined,
    /// §10.5.2.5: the write is dropped). Everything else is ignored.
    pub fn write(&mut self, offset: u16, len: u8, value: u32) -> Result<WriteEffect> {
        check_access(offset, len)?;
        let aligned = offset & !3;
        let shift = u32::from(offset & 3) * 8;
        let bytes = if len >= 4 { u32::MAX } else { ((1u32 << (8 * u32::from(len))) - 1) << shift };
        let v = value << shift;
        let mut effect = WriteEffect::default();
        let p = self.placement;
        if let Some(base) = p.pasid
            && (base..base + PASID_LEN).contains(&aligned)
        {
            effect.handled = true;
            if aligned == base + 4 {
                let wmask =
                    PASID_ENABLE | (self.pasid_capability & (PASID_EXECUTE | PASID_PRIVILEGED));
                let (wm, val) = (half_hi(bytes) & wmask, half_hi(v));
                let new = (self.pasid_control & !wm) | (val & wm);
                effect.pasid_control = new != self.pasid_control;
                self.pasid_control = new;
            }
            return Ok(effect);
        }
        if (p.pri..p.pri + PRI_LEN).contains(&aligned) {
            effect.handled = true;
            match aligned - p.pri {
                4 => {
                    let (cm, cv) = (half_lo(bytes), half_lo(v));
                    let was = self.pri_enable;
                    if cm & PRI_ENABLE != 0 {
                        self.pri_enable = cv & PRI_ENABLE != 0;
                    }
                    if was != self.pri_enable {
                        effect.pri_enable = Some(self.pri_enable);
                    }
                    if cm & PRI_RESET != 0 && cv & PRI_RESET != 0 && !self.pri_enable {
                        effect.pri_reset = true;
                        self.outstanding = 0;
                    }
                    // RW1C.
                    let clear = half_hi(bytes) & half_hi(v) & (PRI_RESPONSE_FAILURE | PRI_UPRGI);
                    self.pri_errors &= !clear;
                }
                0x0c if !self.pri_enable => {
                    self.pri_allocation = (self.pri_allocation & !bytes) | (v & bytes);
                }
                _ => {}
            }
            return Ok(effect);
        }
        Ok(effect)
    }

    /// The virtual PRI Status register: Stopped from this VF's own outstanding groups.
    fn pri_status(&self) -> u16 {
        let stopped = !self.pri_enable && self.outstanding == 0;
        self.pri_errors
            | if stopped { PRI_STOPPED } else { 0 }
            | if self.prg_response_pasid_required { PRI_PASID_REQUIRED } else { 0 }
    }

    /// The firmware's count of this VF's page request groups not yet answered: Stopped reads
    /// set once the guest has cleared Enable and this is 0.
    pub fn set_outstanding(&mut self, groups: u32) {
        self.outstanding = groups;
    }

    /// The guest answered one of this VF's groups with Response Failure. The firmware sent
    /// Invalid Request instead (the PF's Response Failure would stop every sibling) and records
    /// it here, as the function would (§10.5.2.3): page requests from this VF are not delivered
    /// until the guest clears it.
    pub fn note_response_failure(&mut self) {
        self.pri_errors |= PRI_RESPONSE_FAILURE;
    }

    /// The guest answered a group this VF did not have outstanding (the firmware dropped the
    /// response): UPRGI.
    pub fn note_unexpected_prg_index(&mut self) {
        self.pri_errors |= PRI_UPRGI;
    }

    /// Whether the IOMMU lets through a request of this VF: one without a PASID always (the
    /// PASID capability does not govern it); one with a PASID only while the virtual PASID
    /// Enable is set, with `execute` only under Execute Permission Enable and `privileged` only
    /// under Privileged Mode Enable (§7.8.9.3).
    pub const fn allows(&self, pasid_present: bool, execute: bool, privileged: bool) -> bool {
        let c = self.pasid_control;
        !pasid_present
            || (c & PASID_ENABLE != 0
                && (!execute || c & PASID_EXECUTE != 0)
                && (!privileged || c & PASID_PRIVILEGED != 0))
    }

    /// Whether page requests from this VF are delivered to the guest: virtual PRI Enable set
    /// and no Response Failure pending. Otherwise the firmware answers them itself.
    pub const fn page_requests_enabled(&self) -> bool {
        self.pri_enable && self.pri_errors & PRI_RESPONSE_FAILURE == 0
    }

    /// The guest's Outstanding Page Request Allocation, capped by the capacity it was shown:
    /// more outstanding requests than this from the VF are the device's non-conformance.
    pub fn allocation(&self) -> u32 {
        self.pri_allocation.min(self.pri_capacity)
    }
}

/// An extended capability header (§7.6.3): ID 15:0, version 19:16, next 31:20.
const fn header(cap: u16, version: u8, next: u16) -> u32 {
    cap as u32 | (version as u32 & 0xf) << 16 | (next as u32 & 0xffc) << 20
}

fn check_access(offset: u16, len: u8) -> Result<()> {
    if !matches!(len, 1 | 2 | 4) || !offset.is_multiple_of(u16::from(len)) || offset >= EXT_END {
        return Err(Error::Misaligned {
            what: "VF config access",
            value: u64::from(offset),
            align: u64::from(len),
        });
    }
    Ok(())
}

fn extract(dword: u32, offset: u16, len: u8) -> u32 {
    let v = dword >> (u32::from(offset & 3) * 8);
    if len >= 4 { v } else { v & ((1u32 << (8 * u32::from(len))) - 1) }
}

fn half_lo(v: u32) -> u16 {
    // CAST: the low half of a dword.
    v as u16
}

fn half_hi(v: u32) -> u16 {
    // CAST: the high half of a dword.
    (v >> 16) as u16
}

#[cfg(test)]
#[expect(clippy::single_range_in_vec_init, reason = "reserved ranges: one-range lists are meant")]
mod tests {
    use super::*;
    use crate::pci::pasid::PasidFeatures;
    use crate::sim::pci::{Capability, Function, SrIov, Topology};
    use core::cell::RefCell;
    use std::vec::Vec as StdVec;

    // Independent encodings, typed from PCIe Base 6.0 §7.6.3 (header), §7.8.9 (PASID) and
    // §10.5.2 (PRI), cross-checked with Linux include/uapi/linux/pci_regs.h.
    /// PCI_EXT_CAP_ID_PASID, PCI_EXT_CAP_ID_PRI.
    const ID_PASID: u32 = 0x001b;
    const ID_PRI: u32 = 0x0013;
    /// PCI_PASID_CAP 0x04 (EXEC 0x0002, PRIV 0x0004, WIDTH 0x1f00), PCI_PASID_CTRL 0x06
    /// (ENABLE 0x0001, EXEC 0x0002, PRIV 0x0004).
    const PCI_PASID_CAP: u16 = 0x04;
    const PCI_PASID_CTRL: u16 = 0x06;
    /// PCI_PRI_CTRL 0x04 (ENABLE 0x0001, RESET 0x0002), PCI_PRI_STATUS 0x06 (RF 0x0001, UPRGI
    /// 0x0002, STOPPED 0x0100, PASID 0x8000), PCI_PRI_MAX_REQ 0x08, PCI_PRI_ALLOC_REQ 0x0c.
    const PCI_PRI_CTRL: u16 = 0x04;
    const PCI_PRI_STATUS: u16 = 0x06;
    const PCI_PRI_MAX_REQ: u16 = 0x08;
    const PCI_PRI_ALLOC_REQ: u16 = 0x0c;

    fn pf() -> Bdf {
        Bdf::new(0, 1, 0, 0).unwrap()
    }
    fn vf() -> Bdf {
        Bdf::new(0, 1, 0, 1).unwrap()
    }

    fn enable_vfs(t: &Topology, pf: Bdf, n: u16) {
        let sriov = caps::find_extended(t, pf, id::SRIOV).unwrap().unwrap();
        t.write16(pf, sriov + 0x10, n);
        t.write16(pf, sriov + 0x08, 1);
    }

    /// The preset: PF PASID at 0x160 (exec, priv, width 20), PRI at 0x170 (capacity 512,
    /// PASID required); VF caps 0x100 ARI, 0x108 ATS.
    fn preset() -> Topology {
        let t = Topology::pri_sriov(2, 512);
        enable_vfs(&t, pf(), 2);
        t
    }

    /// The guest's view as a `ConfigAccess`: the VF goes through `VfConfig`, everything else to
    /// the model. Lets the library's own walkers and drivers run against the virtual view.
    struct Guest<'a> {
        t: &'a Topology,
        v: RefCell<VfConfig>,
    }
    impl ConfigAccess for Guest<'_> {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            if bdf == self.v.borrow().vf() {
                self.v.borrow().read(self.t, offset, 4).unwrap()
            } else {
                self.t.read32(bdf, offset)
            }
        }
        fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
            if bdf == self.v.borrow().vf() {
                self.v.borrow().read(self.t, offset, 2).unwrap() as u16
            } else {
                self.t.read16(bdf, offset)
            }
        }
        fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
            if bdf == self.v.borrow().vf() {
                self.v.borrow().read(self.t, offset, 1).unwrap() as u8
            } else {
                self.t.read8(bdf, offset)
            }
        }
        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            assert_eq!(bdf, self.v.borrow().vf(), "the guest writes only its VF");
            self.v.borrow_mut().write(offset, 4, value).unwrap();
        }
        fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
            assert_eq!(bdf, self.v.borrow().vf());
            self.v.borrow_mut().write(offset, 2, u32::from(value)).unwrap();
        }
        fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
            assert_eq!(bdf, self.v.borrow().vf());
            self.v.borrow_mut().write(offset, 1, u32::from(value)).unwrap();
        }
    }

    fn ext_list<C: ConfigAccess>(cfg: &C, bdf: Bdf) -> StdVec<(u16, u8, u16)> {
        caps::extended(cfg, bdf).map(|c| c.unwrap()).collect()
    }

    #[test]
    fn reads_back_as_the_spec_says() {
        let t = preset();
        let v = VfConfig::new(&t, vf(), pf(), 32, &[]).unwrap();
        // The PF's own offsets are free in the VF (its caps end at 0x110): preferred.
        assert_eq!(
            v.placement(),
            Placement {
                pasid: Some(0x160),
                pri: 0x170,
                last_real: Some(0x108),
                null_header: false
            }
        );
        // Headers: ID 15:0, version 19:16, next 31:20.
        assert_eq!(v.read(&t, 0x160, 4), Ok(ID_PASID | 1 << 16 | 0x170 << 20));
        assert_eq!(v.read(&t, 0x170, 4), Ok(ID_PRI | 1 << 16));
        // ATS at 0x108 was last: its Next now points at the PASID; ID and version untouched.
        assert_eq!(t.read32(vf(), 0x108), 0x0001_000f);
        assert_eq!(v.read(&t, 0x108, 4), Ok(0x160 << 20 | 0x0001_000f));
        // PASID Capability: Execute and Privileged supported, width 20; Control 0.
        assert_eq!(v.read(&t, 0x160 + PCI_PASID_CAP, 2), Ok(0x0002 | 0x0004 | 20 << 8));
        assert_eq!(v.read(&t, 0x160 + PCI_PASID_CTRL, 2), Ok(0));
        // PRI: Control 0; Status Stopped and PRG Response PASID Required (the PF's); capacity
        // the share; allocation 0.
        assert_eq!(v.read(&t, 0x170 + PCI_PRI_CTRL, 2), Ok(0));
        assert_eq!(v.read(&t, 0x170 + PCI_PRI_STATUS, 2), Ok(0x0100 | 0x8000));
        assert_eq!(v.read(&t, 0x170 + PCI_PRI_MAX_REQ, 4), Ok(32));
        assert_eq!(v.read(&t, 0x170 + PCI_PRI_ALLOC_REQ, 4), Ok(0));
        // Byte reads of the header.
        assert_eq!(v.read(&t, 0x162, 1), Ok(0x01));
        assert_eq!(v.read(&t, 0x163, 1), Ok(0x17));
        // Everything else is the real VF.
        for off in (0..0x100).step_by(4).chain([0x100, 0x104, 0x10c, 0x200, 0xffc]) {
            assert_eq!(v.read(&t, off, 4), Ok(t.read32(vf(), off)), "{off:#x}");
        }
        assert!(matches!(v.read(&t, 0x161, 2), Err(Error::Misaligned { .. })));
        // The library's own walker and drivers see the spec's capabilities.
        let g = Guest { t: &t, v: RefCell::new(v) };
        assert_eq!(
            ext_list(&g, vf()),
            std::vec![
                (id::ARI, 1, 0x100),
                (id::ATS, 1, 0x108),
                (id::PASID, 1, 0x160),
                (id::PRI, 1, 0x170)
            ]
        );
        let pasid = Pasid::find(&g, vf()).unwrap().unwrap();
        let cap = pasid.capability(&g).unwrap();
        assert_eq!(cap.max_width, 20);
        assert_eq!(cap.features, PasidFeatures { execute: true, privileged: true });
        let pri = Pri::find(&g, vf()).unwrap().unwrap();
        assert_eq!(pri.capacity(&g), Ok(32));
        assert!(pri.status(&g).unwrap().prg_response_pasid_required);
        // Nothing was written to the real VF or PF.
        assert_eq!(t.read16(pf(), 0x166), 0);
        assert_eq!(t.read16(pf(), 0x174), 0);
    }

    #[test]
    fn guest_control_bits_change_what_the_iommu_lets_through() {
        let t = preset();
        let g = Guest { t: &t, v: RefCell::new(VfConfig::new(&t, vf(), pf(), 32, &[]).unwrap()) };
        let allows = |p, x, s| g.v.borrow().allows(p, x, s);
        assert!(allows(false, false, false), "requests without PASID are not PASID's business");
        assert!(!allows(true, false, false), "PASID-tagged blocked while PASID Enable is clear");
        let pasid = Pasid::find(&g, vf()).unwrap().unwrap();
        pasid.enable(&g, PasidFeatures { execute: true, privileged: false }, 0).unwrap();
        assert_eq!(g.read16(vf(), 0x160 + PCI_PASID_CTRL), 0x0001 | 0x0002);
        assert!(allows(true, false, false));
        assert!(allows(true, true, false));
        assert!(!allows(true, false, true), "privileged blocked: Privileged Mode Enable clear");
        assert!(!allows(true, true, true));
        pasid.disable(&g, 0).unwrap();
        assert!(!allows(true, false, false));
        // Read-only parts ignore writes: the Capability half, the headers, reserved bits.
        g.write32(vf(), 0x160, 0);
        g.write32(vf(), 0x160 + PCI_PASID_CAP, 0xffff_0000);
        assert_eq!(g.read32(vf(), 0x160), ID_PASID | 1 << 16 | 0x170 << 20);
        assert_eq!(g.read16(vf(), 0x160 + PCI_PASID_CAP), 0x0006 | 20 << 8);
        assert_eq!(g.read16(vf(), 0x160 + PCI_PASID_CTRL), 0x0007, "only bits 2:0 are RW");
        // Writes outside the virtual capabilities are ignored, the real VF untouched.
        let before = t.read32(vf(), 0x108);
        let effect = g.v.borrow_mut().write(0x108, 4, 0).unwrap();
        assert_eq!(effect, WriteEffect::default());
        assert_eq!(t.read32(vf(), 0x108), before);
    }

    #[test]
    fn a_pf_without_privileged_mode_hardwires_it() {
        let t = Topology::builder()
            .device(
                1,
                0,
                Function::endpoint(0x8086, 1, 0)
                    .ari(0)
                    .pasid(false, false, 8)
                    .pri(64)
                    .sriov(SrIov::new(1).offset_stride(1, 1)),
            )
            .build();
        let pf = Bdf::new(0, 0, 1, 0).unwrap();
        enable_vfs(&t, pf, 1);
        let vf = Bdf::new(0, 0, 1, 1).unwrap();
        let mut v = VfConfig::new(&t, vf, pf, 16, &[]).unwrap();
        let p = v.placement().pasid.unwrap();
        assert_eq!(v.read(&t, p + PCI_PASID_CAP, 2), Ok(8 << 8));
        v.write(p + PCI_PASID_CTRL, 2, 0x0007).unwrap();
        assert_eq!(v.read(&t, p + PCI_PASID_CTRL, 2), Ok(0x0001));
        assert!(v.allows(true, false, false));
        assert!(!v.allows(true, true, false));
    }

    #[test]
    fn pri_bits_follow_the_guest_and_the_firmware_accounting() {
        let t = preset();
        let g = Guest { t: &t, v: RefCell::new(VfConfig::new(&t, vf(), pf(), 32, &[]).unwrap()) };
        let pri = Pri::find(&g, vf()).unwrap().unwrap();
        assert!(!g.v.borrow().page_requests_enabled());
        assert_eq!(
            pri.enable(&g, 33),
            Err(Error::PriAllocationExceedsCapacity { bdf: vf(), allocation: 33, capacity: 32 })
        );
        let effect = g.v.borrow_mut().write(0x170 + PCI_PRI_ALLOC_REQ, 4, 16).unwrap();
        assert!(effect.handled);
        let effect = g.v.borrow_mut().write(0x170 + PCI_PRI_CTRL, 2, 0x0001).unwrap();
        assert_eq!(
            effect,
            WriteEffect { handled: true, pri_enable: Some(true), ..Default::default() }
        );
        assert!(g.v.borrow().page_requests_enabled());
        assert_eq!(g.v.borrow().allocation(), 16);
        // The allocation does not change while enabled.
        g.write32(vf(), 0x170 + PCI_PRI_ALLOC_REQ, 8);
        assert_eq!(g.read32(vf(), 0x170 + PCI_PRI_ALLOC_REQ), 16);
        // Capacity is read-only.
        g.write32(vf(), 0x170 + PCI_PRI_MAX_REQ, 999);
        assert_eq!(pri.capacity(&g), Ok(32));
        // Groups outstanding; the guest disables: not Stopped until the firmware says they
        // are answered.
        g.v.borrow_mut().set_outstanding(3);
        let effect = g.v.borrow_mut().write(0x170 + PCI_PRI_CTRL, 2, 0).unwrap();
        assert_eq!(effect.pri_enable, Some(false));
        assert_eq!(g.read16(vf(), 0x170 + PCI_PRI_STATUS) & 0x0100, 0);
        g.v.borrow_mut().set_outstanding(0);
        assert_eq!(g.read16(vf(), 0x170 + PCI_PRI_STATUS) & 0x0100, 0x0100);
        // Reset with Enable clear is reported (and forgets the VF's accounting).
        g.v.borrow_mut().set_outstanding(2);
        let effect = g.v.borrow_mut().write(0x170 + PCI_PRI_CTRL, 2, 0x0002).unwrap();
        assert!(effect.pri_reset);
        assert_eq!(g.read16(vf(), 0x170 + PCI_PRI_CTRL), 0, "Reset reads 0");
        assert!(pri.status(&g).unwrap().stopped);
        // Reset with Enable set does nothing.
        pri.enable(&g, 16).unwrap();
        let effect = g.v.borrow_mut().write(0x170 + PCI_PRI_CTRL, 2, 0x0003).unwrap();
        assert!(!effect.pri_reset);
        // Response Failure (the firmware contained one) stops delivery until cleared, RW1C.
        g.v.borrow_mut().note_response_failure();
        g.v.borrow_mut().note_unexpected_prg_index();
        assert!(!g.v.borrow().page_requests_enabled());
        let status = pri.status(&g).unwrap();
        assert!(status.response_failure && status.unexpected_prg_index);
        // Writing 0s clears nothing; writing 1 to UPRGI only clears UPRGI.
        g.write16(vf(), 0x170 + PCI_PRI_STATUS, 0);
        assert_eq!(g.read16(vf(), 0x170 + PCI_PRI_STATUS) & 3, 3);
        g.write16(vf(), 0x170 + PCI_PRI_STATUS, 0x0002);
        assert_eq!(g.read16(vf(), 0x170 + PCI_PRI_STATUS) & 3, 1);
        pri.disable(&g, &crate::hal::testing::TestClock::new(1000), crate::pci::pri::STOP_TIMEOUT)
            .unwrap();
        pri.clear_errors(&g).unwrap();
        pri.enable(&g, 16).unwrap();
        assert!(g.v.borrow().page_requests_enabled());
        // None of it reached the PF.
        assert!(!t.pri_enabled(t.find("pri-pf").unwrap()));
    }

    #[test]
    fn the_guest_enabling_virtual_pri_enables_the_pfs_through_the_share() {
        use crate::pci::pri_share::{IommuId, PfPolicy, PriShare, PriUser, STOP_TIMEOUT};
        let t = preset();
        let pf_id = t.find("pri-pf").unwrap();
        let mut share = PriShare::<1, 4, 1>::new();
        share.add_iommu(IommuId(0), 256).unwrap();
        share.add_pf(&t, pf(), PfPolicy { iommu: IommuId(0), share: 32, users: 3 }).unwrap();
        let mut v = VfConfig::new(&t, vf(), pf(), 32, &[]).unwrap();
        let user = PriUser::virtual_function(vf(), pf());
        v.write(0x170 + PCI_PRI_ALLOC_REQ, 4, 32).unwrap();
        for on in [true, false, true, false] {
            let effect = v.write(0x170 + PCI_PRI_CTRL, 2, u32::from(on)).unwrap();
            assert_eq!(effect.pri_enable, Some(on));
            if on {
                let grant = share.enable(&t, user, None, 0).unwrap();
                assert_eq!(grant.share, v.read(&t, 0x170 + PCI_PRI_MAX_REQ, 4).unwrap());
            } else {
                let clock = crate::hal::testing::TestClock::new(1000);
                share.disable(&t, &clock, user, 0, STOP_TIMEOUT).unwrap();
            }
            assert_eq!(t.pri_enabled(pf_id), on);
            assert_eq!(v.page_requests_enabled(), on);
        }
    }

    /// A PF with PASID and PRI at 0x160/0x170 whose VFs have `vf_caps` at fixed offsets.
    fn with_vf_caps(vf_caps: &[(u16, Capability)]) -> Topology {
        let mut sriov = SrIov::new(1).offset_stride(1, 1);
        for (at, cap) in vf_caps {
            sriov = sriov.vf_cap_at(*at, cap.clone());
        }
        let t = Topology::builder()
            .device(
                1,
                0,
                Function::endpoint(0x8086, 1, 0)
                    .cap_at(0x100, Capability::ari(0))
                    .cap_at(0x160, Capability::pasid(true, false, 16))
                    .cap_at(0x170, Capability::pri(64))
                    .sriov_at(0x200, sriov),
            )
            .build();
        enable_vfs(&t, Bdf::new(0, 0, 1, 0).unwrap(), 1);
        t
    }

    fn raw(id: u16, len: usize) -> Capability {
        Capability::RawExtended { id, version: 1, body: std::vec![0; len - 4] }
    }

    #[test]
    fn placement_avoids_every_real_capability_and_reserved_range() {
        let (pf, vf) = (Bdf::new(0, 0, 1, 0).unwrap(), Bdf::new(0, 0, 1, 1).unwrap());
        // The VF uses the PF's PASID offset for a vendor capability of unknown size (it extends
        // to the next header, 0x180), and has AER at 0x100 (0x48 bytes).
        let t = with_vf_caps(&[
            (0x100, Capability::Aer),
            (0x15c, raw(id::extended::VENDOR, 8)),
            (0x180, Capability::ari(0)),
        ]);
        let list = ext_list(&t, vf);
        assert_eq!(list.iter().map(|c| c.2).collect::<StdVec<_>>(), [0x100, 0x15c, 0x180]);
        // 0x148..0x15c is free (20 bytes): PASID fits at 0x148, PRI (16) fits at 0x188 after
        // ARI; with 0x188..0x1a0 reserved by a quirk, PRI moves to 0x1a0.
        let v = VfConfig::new(&t, vf, pf, 8, &[]).unwrap();
        assert_eq!(
            v.placement(),
            Placement {
                pasid: Some(0x148),
                pri: 0x188,
                last_real: Some(0x180),
                null_header: false
            }
        );
        let reserved = [0x188..0x1a0, 0x140..0x14c];
        let v = VfConfig::new(&t, vf, pf, 8, &reserved).unwrap();
        assert_eq!(
            v.placement(),
            Placement {
                pasid: Some(0x14c),
                pri: 0x1a0,
                last_real: Some(0x180),
                null_header: false
            }
        );
        // Proven free: no virtual byte falls in any real extent or reserved range, the list
        // reaches both virtual capabilities and ends.
        let g = Guest { t: &t, v: RefCell::new(v) };
        assert_eq!(
            ext_list(&g, vf).iter().map(|c| (c.0, c.2)).collect::<StdVec<_>>(),
            [
                (id::AER, 0x100),
                (id::extended::VENDOR, 0x15c),
                (id::ARI, 0x180),
                (id::PASID, 0x14c),
                (id::PRI, 0x1a0)
            ]
        );
        let real = [0x100..0x148, 0x15c..0x180, 0x180..0x188];
        let p = g.v.borrow().placement();
        for r in [p.pasid.unwrap()..p.pasid.unwrap() + 8, p.pri..p.pri + 16] {
            for u in real.iter().chain(reserved.iter()) {
                assert!(!overlaps(&r, u), "{r:x?} overlaps {u:x?}");
            }
        }
    }

    #[test]
    fn a_vf_without_extended_capabilities() {
        let (pf, vf) = (Bdf::new(0, 0, 1, 0).unwrap(), Bdf::new(0, 0, 1, 1).unwrap());
        let t = with_vf_caps(&[]);
        assert_eq!(t.read32(vf, 0x100), 0, "no extended capabilities (§7.6.3)");
        // The first capability at 0x100 (no null header needed), PRI at the PF's offset.
        let v = VfConfig::new(&t, vf, pf, 8, &[]).unwrap();
        assert_eq!(
            v.placement(),
            Placement { pasid: Some(0x100), pri: 0x170, last_real: None, null_header: false }
        );
        assert_eq!(v.read(&t, 0x100, 4), Ok(ID_PASID | 1 << 16 | 0x170 << 20));
        // With the PF's PRI offset reserved too, the lowest free one.
        let v = VfConfig::new(&t, vf, pf, 8, &[0x170..0x180]).unwrap();
        assert_eq!(v.placement().pri, 0x108);
        // 0x100 reserved: a null header there points at the capabilities.
        let v = VfConfig::new(&t, vf, pf, 8, &[0x104..0x110]).unwrap();
        assert_eq!(
            v.placement(),
            Placement { pasid: Some(0x160), pri: 0x170, last_real: None, null_header: true }
        );
        assert_eq!(v.read(&t, 0x100, 4), Ok(0x160 << 20));
        let g = Guest { t: &t, v: RefCell::new(v) };
        assert_eq!(
            ext_list(&g, vf).iter().map(|c| (c.0, c.2)).collect::<StdVec<_>>(),
            [(0, 0x100), (id::PASID, 0x160), (id::PRI, 0x170)]
        );
        // 0x100 itself reserved: no header can be placed, so no view.
        assert_eq!(
            VfConfig::new(&t, vf, pf, 8, &[0x100..0x104]),
            Err(Error::NotFound { what: "free VF config space for virtual PASID/PRI" })
        );
    }

    #[test]
    fn refusals() {
        let (pf, vf) = (Bdf::new(0, 0, 1, 0).unwrap(), Bdf::new(0, 0, 1, 1).unwrap());
        // A VF with a PRI capability of its own (a spec violation).
        let t = with_vf_caps(&[(0x100, Capability::pri(8))]);
        assert_eq!(
            VfConfig::new(&t, vf, pf, 8, &[]),
            Err(Error::Hardware {
                what: "a VF with a PASID or PRI capability of its own",
                value: 0x100
            })
        );
        // No room at all.
        let t = with_vf_caps(&[]);
        assert_eq!(
            VfConfig::new(&t, vf, pf, 8, &[0x104..0x1000]),
            Err(Error::NotFound { what: "free VF config space for virtual PASID/PRI" })
        );
        // A PF without PRI (igb).
        let t = Topology::builder()
            .device(
                1,
                0,
                Function::endpoint(0x8086, 0x10c9, 0x02_0000)
                    .ari(0)
                    .sriov(SrIov::new(1).offset_stride(1, 1)),
            )
            .build();
        enable_vfs(&t, pf, 1);
        assert_eq!(VfConfig::new(&t, vf, pf, 8, &[]), Err(Error::PriUnavailable { pf }));
    }
}
