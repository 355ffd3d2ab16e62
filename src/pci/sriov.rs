//! Single Root I/O Virtualization (PCIe Base 6.0 §9.3.3): reading a PF's SR-IOV capability,
//! enabling VFs on a PF that no driver manages, and the lock that keeps the configuration fixed
//! while VFs are assigned.
//!
//! "Unmanaged" (the seed thread `pci-iov-unmanaged-sriov.txt`) means no PF driver negotiates
//! with the VFs: the hypervisor turns VFs on for guests and the device's own firmware (or
//! nobody) runs the PF. The hazard that thread ends on is the SR-IOV configuration changing
//! under VFs that guests own (a PF reset or a NumVFs change makes them fall off the bus), so a
//! PF with assigned VFs is locked: [`SrIov::lock`] counts assignments, and while the count is
//! non-zero [`SrIov::enable`] and [`SrIov::disable`] refuse with [`Error::SriovLocked`].
//!
//! The sequence [`SrIov::enable`] follows, with the spec's reasons:
//! 1. NumVFs is written only while VF Enable is clear (§9.3.3.7: NumVFs is fixed while VFs are
//!    enabled), and read back.
//! 2. First VF Offset and VF Stride are read *after* NumVFs and ARI Capable Hierarchy are
//!    written, since they may depend on both (§9.3.3.9-10), and checked: every VF must land on
//!    a bus the PF's bridge forwards, at a routing ID no other function has.
//! 3. The VF BAR apertures (one VF's BAR size x TotalVFs, placed by enumeration) must be
//!    assigned before VF MSE is set.
//! 4. VF Enable and VF MSE are set together; no configuration request goes to a VF for 100 ms
//!    (§9.3.3.3.1), then the first VF is polled until it answers, bounded by one second.
//! 5. The VFs are read (class, capabilities) and added to the snapshot with
//!    `physical_function` set and their VF BARs at `aperture + i * size`.

use core::time::Duration;

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::hal::{self, Platform};
use crate::pci::bars;
use crate::pci::caps::{self, read32_present};
use crate::pci::config::{ConfigAccess, reg as cfg_reg};
use crate::pci::ecam::FunctionId;
use crate::pci::pcie::Pcie;
use crate::pci::topology::{Bar, BarKind, Function, FunctionIndex, FunctionKind, Topology};

/// Register offsets inside the SR-IOV capability (PCIe Base 6.0 §9.3.3).
#[allow(missing_docs, reason = "the names are the specification's register names")]
pub mod reg {
    pub const CAPABILITIES: u16 = 0x04;
    pub const CONTROL: u16 = 0x08;
    pub const STATUS: u16 = 0x0a;
    pub const INITIAL_VFS: u16 = 0x0c;
    pub const TOTAL_VFS: u16 = 0x0e;
    pub const NUM_VFS: u16 = 0x10;
    pub const FUNCTION_DEPENDENCY_LINK: u16 = 0x12;
    pub const FIRST_VF_OFFSET: u16 = 0x14;
    pub const VF_STRIDE: u16 = 0x16;
    pub const VF_DEVICE_ID: u16 = 0x1a;
    pub const SUPPORTED_PAGE_SIZES: u16 = 0x1c;
    pub const SYSTEM_PAGE_SIZE: u16 = 0x20;
    pub const VF_BAR0: u16 = 0x24;

    /// SR-IOV Control bits (§9.3.3.3).
    pub const CONTROL_VF_ENABLE: u16 = 1 << 0;
    pub const CONTROL_VF_MIGRATION_ENABLE: u16 = 1 << 1;
    pub const CONTROL_VF_MIGRATION_INTERRUPT_ENABLE: u16 = 1 << 2;
    pub const CONTROL_VF_MSE: u16 = 1 << 3;
    pub const CONTROL_ARI_CAPABLE_HIERARCHY: u16 = 1 << 4;
}

/// Time after setting VF Enable before configuration requests may go to the VFs (PCIe Base 6.0
/// §9.3.3.3.1; a device could report readiness sooner through FRS or DRS, which this driver
/// does not use).
pub const VF_ENABLE_SETTLE: Duration = Duration::from_millis(100);

/// Bound on waiting for the first VF to answer after VF Enable: the 100 ms the spec requires
/// plus 900 ms for a device that is late. A compliant device answers as soon as the 100 ms are
/// over; one that has not answered after ten times that is broken, and the VFs are turned off
/// again.
pub const VF_ENABLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Time after clearing VF Enable before the SR-IOV capability may be read or VFs enabled again
/// (PCIe Base 6.0 §9.3.3.3.1).
pub const VF_DISABLE_SETTLE: Duration = Duration::from_secs(1);

/// The SR-IOV capability of one PF and what this driver did with it.
///
/// Made by enumeration (which also sized and placed the VF BAR apertures and reserved bus
/// numbers for the VFs) or by [`SrIov::probe`]. The hypervisor keeps one per PF it manages and
/// passes the same configuration accessor and snapshot to every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SrIov {
    pf: Bdf,
    pf_index: FunctionIndex,
    offset: u16,
    control: u16,
    initial_vfs: u16,
    total_vfs: u16,
    num_vfs: u16,
    function_link: u8,
    first_vf_offset: u16,
    vf_stride: u16,
    vf_device: u16,
    supported_page_sizes: u32,
    system_page_size: u32,
    vf_bars: [Option<Bar>; 6],
    bus_limit: u8,
    enabled: bool,
    assigned: u16,
}

/// Highest bus a VF reaches: that of `pf_rid + offset + (n - 1) * stride` (PCIe Base 6.0
/// §9.3.3.9-10), which may exceed 255.
pub(crate) fn last_vf_bus(pf_rid: u16, offset: u16, stride: u16, n: u16) -> u32 {
    let rid =
        u64::from(pf_rid) + u64::from(offset) + u64::from(n.saturating_sub(1)) * u64::from(stride);
    // CAST: saturate; a bus past u32::MAX is as unusable as one past 255.
    u32::try_from(rid >> 8).unwrap_or(u32::MAX)
}

impl SrIov {
    /// Reads the SR-IOV capability of the PF at `pf` in `topology` and sizes its VF BARs
    /// (clearing VF MSE for the sizing if it was set, then restoring it). The VF BAR bases are
    /// the apertures as programmed. The highest bus the VFs may use is the subordinate bus of
    /// the bridge above the PF, or 255 on a root bus.
    ///
    /// [`Error::BadReference`] if `pf` is not in the snapshot or is a VF, [`Error::NotFound`]
    /// if it has no SR-IOV capability.
    pub fn probe<C: ConfigAccess + ?Sized, const N: usize>(
        cfg: &C,
        topology: &Topology<N>,
        pf: FunctionIndex,
    ) -> Result<Self> {
        let f = topology
            .get(pf)
            .ok_or(Error::BadReference { what: "SR-IOV PF index", value: u64::from(pf.0) })?;
        if f.physical_function.is_some() {
            return Err(Error::BadReference {
                what: "SR-IOV PF index (a VF)",
                value: u64::from(pf.0),
            });
        }
        if f.caps.sriov == 0 {
            return Err(Error::NotFound { what: "SR-IOV capability" });
        }
        let limit = f
            .parent
            .and_then(|p| topology.get(p))
            .and_then(|p| p.bus_range)
            .map_or(u8::MAX, |r| r.subordinate);
        let (s, _) = Self::read_at(cfg, f.bdf(), pf, f.caps.sriov, limit)?;
        Ok(s)
    }

    /// Reads the capability at `offset` of `pf` (snapshot index `pf_index`); also returns the
    /// first VF BAR register holding garbage, if any (left out).
    pub(crate) fn read_at<C: ConfigAccess + ?Sized>(
        cfg: &C,
        pf: Bdf,
        pf_index: FunctionIndex,
        offset: u16,
        bus_limit: u8,
    ) -> Result<(Self, Option<(u16, u32)>)> {
        // Eight dwords: Control/Status, InitialVFs/TotalVFs, NumVFs/Link, Offset/Stride,
        // VF Device ID, page sizes (the SR-IOV Capabilities dword is not needed).
        let control_status = read32_present(cfg, pf, offset + reg::CONTROL)?;
        // CAST (all below): the 16-bit halves and bytes of the dwords read.
        let control = control_status as u16;
        let vfs = cfg.read32(pf, offset + reg::INITIAL_VFS);
        let num = cfg.read32(pf, offset + reg::NUM_VFS);
        let routing = cfg.read32(pf, offset + reg::FIRST_VF_OFFSET);
        let device = cfg.read32(pf, offset + reg::VF_DEVICE_ID - 2);
        let supported_page_sizes = cfg.read32(pf, offset + reg::SUPPORTED_PAGE_SIZES);
        let system_page_size = cfg.read32(pf, offset + reg::SYSTEM_PAGE_SIZE);
        // VF BARs are sized like BARs, with VF MSE clear so the all-ones pattern is never
        // decoded (§9.3.3.14).
        let mse = control & reg::CONTROL_VF_MSE != 0;
        if mse {
            cfg.write16(pf, offset + reg::CONTROL, control & !reg::CONTROL_VF_MSE);
        }
        let sized = bars::size_registers(cfg, pf, offset + reg::VF_BAR0, 6);
        if mse {
            cfg.write16(pf, offset + reg::CONTROL, control);
        }
        let mut sized = sized?;
        // VF BARs are memory BARs only (§9.3.3.14); an I/O one is garbage.
        for slot in &mut sized.bars {
            if let Some(bar) = slot
                && bar.kind == BarKind::Io
            {
                sized.invalid.get_or_insert((offset + reg::VF_BAR0 + 4 * u16::from(bar.index), 0));
                *slot = None;
            }
        }
        let s = Self {
            pf,
            pf_index,
            offset,
            control,
            initial_vfs: vfs as u16,
            total_vfs: (vfs >> 16) as u16,
            num_vfs: num as u16,
            function_link: (num >> 16) as u8,
            first_vf_offset: routing as u16,
            vf_stride: (routing >> 16) as u16,
            vf_device: (device >> 16) as u16,
            supported_page_sizes,
            system_page_size,
            vf_bars: sized.bars,
            bus_limit,
            enabled: false,
            assigned: 0,
        };
        Ok((s, sized.invalid))
    }

    /// The PF.
    pub const fn pf(&self) -> Bdf {
        self.pf
    }
    /// The PF's index in the snapshot.
    pub const fn pf_index(&self) -> FunctionIndex {
        self.pf_index
    }
    /// Offset of the SR-IOV capability.
    pub const fn offset(&self) -> u16 {
        self.offset
    }
    /// InitialVFs.
    pub const fn initial_vfs(&self) -> u16 {
        self.initial_vfs
    }
    /// TotalVFs.
    pub const fn total_vfs(&self) -> u16 {
        self.total_vfs
    }
    /// NumVFs as last read or written.
    pub const fn num_vfs(&self) -> u16 {
        self.num_vfs
    }
    /// Function Dependency Link.
    pub const fn function_link(&self) -> u8 {
        self.function_link
    }
    /// First VF Offset as last read (it follows NumVFs and ARI Capable Hierarchy).
    pub const fn first_vf_offset(&self) -> u16 {
        self.first_vf_offset
    }
    /// VF Stride as last read.
    pub const fn vf_stride(&self) -> u16 {
        self.vf_stride
    }
    /// VF Device ID (the VFs' own Device ID registers read 0xffff, §9.3.4.1.2).
    pub const fn vf_device_id(&self) -> u16 {
        self.vf_device
    }
    /// Supported Page Sizes (bit n: 4 KiB << n).
    pub const fn supported_page_sizes(&self) -> u32 {
        self.supported_page_sizes
    }
    /// System Page Size (left at its reset value, 4 KiB, by this driver; VF BAR sizes and
    /// alignments follow it, §9.3.3.13).
    pub const fn system_page_size(&self) -> u32 {
        self.system_page_size
    }
    /// The VF BARs: one VF's size each, and the base of the aperture holding all of them
    /// (0: not placed). VF `i`'s BAR is at `base + i * size`.
    pub const fn vf_bars(&self) -> &[Option<Bar>; 6] {
        &self.vf_bars
    }
    /// Highest bus the VFs may use (the subordinate bus of the PF's bridge, or the root's).
    pub const fn bus_limit(&self) -> u8 {
        self.bus_limit
    }
    /// Whether VFs are enabled (by [`enable`](Self::enable)).
    pub const fn is_enabled(&self) -> bool {
        self.enabled
    }
    /// VFs enabled now (0 when disabled).
    pub const fn enabled_vfs(&self) -> u16 {
        if self.enabled { self.num_vfs } else { 0 }
    }
    /// VFs assigned (the lock count).
    pub const fn assigned(&self) -> u16 {
        self.assigned
    }
    /// Whether the configuration is locked (some VF is assigned).
    pub const fn is_locked(&self) -> bool {
        self.assigned > 0
    }

    /// Routing ID of VF `i` with the offset and stride last read, or `None` past 0xffff.
    pub fn vf_bdf(&self, i: u16) -> Option<Bdf> {
        let rid = u32::from(self.pf.routing_id().0)
            + u32::from(self.first_vf_offset)
            + u32::from(i) * u32::from(self.vf_stride);
        u16::try_from(rid).ok().map(|rid| Bdf::from_routing_id(self.pf.segment, rid))
    }

    /// The VFs of this PF in `topology`, in VF order.
    pub fn vfs<'a, const N: usize>(
        &self,
        topology: &'a Topology<N>,
    ) -> impl Iterator<Item = FunctionIndex> + 'a {
        let pf = self.pf_index;
        topology
            .functions()
            .iter()
            .enumerate()
            .filter(move |(_, f)| f.physical_function == Some(pf))
            .filter_map(|(i, _)| u16::try_from(i).ok().map(FunctionIndex))
    }

    /// Records the highest bus the VFs may use, once enumeration has numbered the buses.
    pub(crate) fn set_bus_limit(&mut self, limit: u8) {
        self.bus_limit = limit;
    }

    /// Records where enumeration placed VF BAR `index`'s aperture.
    pub(crate) fn set_vf_bar_base(&mut self, index: u8, base: u64) {
        if let Some(Some(bar)) = self.vf_bars.get_mut(usize::from(index)) {
            bar.base = base;
        }
    }

    /// Highest bus the VFs can need at NumVFs = TotalVFs, with ARI Capable Hierarchy as it is
    /// and flipped (First VF Offset and VF Stride may depend on both, §9.3.3.9-10): NumVFs and
    /// the ARI bit are written while VF Enable is clear, offset and stride read, and both
    /// restored. With VF Enable set nothing is written and the current offset and stride are
    /// used. `None` with TotalVFs 0. At most four writes and two reads.
    ///
    /// Only TotalVFs is tried, not every NumVFs (Linux tries each, which costs two accesses per
    /// value); [`enable`](Self::enable) checks the real placement anyway.
    pub(crate) fn max_vf_bus<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Option<u32> {
        let total = self.total_vfs;
        if total == 0 {
            return None;
        }
        let rid = self.pf.routing_id().0;
        let last = |routing: u32| {
            // CAST: the two halves of the offset/stride dword.
            (routing != u32::MAX)
                .then(|| last_vf_bus(rid, routing as u16, (routing >> 16) as u16, total))
        };
        let current = (u32::from(self.vf_stride) << 16) | u32::from(self.first_vf_offset);
        if self.control & reg::CONTROL_VF_ENABLE != 0 {
            return last(current);
        }
        let (pf, cap) = (self.pf, self.offset);
        if self.num_vfs != total {
            cfg.write16(pf, cap + reg::NUM_VFS, total);
        }
        let as_is = cfg.read32(pf, cap + reg::FIRST_VF_OFFSET);
        cfg.write16(pf, cap + reg::CONTROL, self.control ^ reg::CONTROL_ARI_CAPABLE_HIERARCHY);
        let flipped = cfg.read32(pf, cap + reg::FIRST_VF_OFFSET);
        cfg.write16(pf, cap + reg::CONTROL, self.control);
        if self.num_vfs != total {
            cfg.write16(pf, cap + reg::NUM_VFS, self.num_vfs);
        }
        match (last(as_is), last(flipped)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counts one more assigned VF: from now on VF Enable and NumVFs cannot change until every
    /// assignment is undone with [`unlock`](Self::unlock). More locks than enabled VFs is
    /// [`Error::SriovLockCount`].
    pub fn lock(&mut self) -> Result<()> {
        if self.assigned >= self.enabled_vfs() {
            return Err(Error::SriovLockCount {
                pf: self.pf,
                assigned: self.assigned,
                enabled: self.enabled_vfs(),
            });
        }
        self.assigned += 1;
        Ok(())
    }

    /// Undoes one [`lock`](Self::lock); without one it is [`Error::SriovLockCount`].
    pub fn unlock(&mut self) -> Result<()> {
        if self.assigned == 0 {
            return Err(Error::SriovLockCount {
                pf: self.pf,
                assigned: 0,
                enabled: self.enabled_vfs(),
            });
        }
        self.assigned -= 1;
        Ok(())
    }

    fn check_pf<const N: usize>(&self, topology: &Topology<N>) -> Result<Function> {
        match topology.get(self.pf_index) {
            Some(f) if f.bdf() == self.pf && f.physical_function.is_none() => Ok(*f),
            _ => Err(Error::BadReference {
                what: "SR-IOV PF not at its snapshot index",
                value: u64::from(self.pf_index.0),
            }),
        }
    }

    /// Enables `num_vfs` VFs and adds them to `topology` (see the module documentation for the
    /// sequence). On any failure after VF Enable was set, VF Enable is cleared again (with the
    /// one-second wait) and no VF stays in the snapshot.
    ///
    /// Refused with: [`Error::SriovLocked`] while locked; [`Error::NotWhileEnabled`] if VF
    /// Enable is already set; [`Error::SriovNumVfs`] for 0, more than TotalVFs, or TotalVFs 0;
    /// [`Error::SriovVfBarUnplaced`] if a VF BAR has no aperture; [`Error::SettingNotTaken`] if
    /// NumVFs does not read back; [`Error::SriovVfRouting`] for First VF Offset 0 or VF Stride 0
    /// with more than one VF; [`Error::SriovVfBus`] if a VF would land past bus 255 or past the
    /// bridge's subordinate bus; [`Error::SriovVfCollision`] if a VF would answer at another
    /// function's address; [`Error::Timeout`] if the first VF never answers;
    /// [`Error::FunctionVanished`] if the PF or a VF stops answering; and
    /// [`Error::CapacityExceeded`] if the snapshot is full.
    pub fn enable<C, P, const N: usize>(
        &mut self,
        cfg: &C,
        platform: &P,
        topology: &mut Topology<N>,
        num_vfs: u16,
    ) -> Result<()>
    where
        C: ConfigAccess + ?Sized,
        P: Platform + ?Sized,
    {
        let pf_fn = self.check_pf(topology)?;
        if self.assigned > 0 {
            return Err(Error::SriovLocked { pf: self.pf, assigned: self.assigned });
        }
        if self.enabled {
            return Err(Error::NotWhileEnabled { bdf: self.pf, what: "SR-IOV Control.VF Enable" });
        }
        if self.total_vfs == 0 || num_vfs == 0 || num_vfs > self.total_vfs {
            return Err(Error::SriovNumVfs {
                pf: self.pf,
                requested: num_vfs,
                total: self.total_vfs,
            });
        }
        if let Some(bar) = self.vf_bars.iter().flatten().find(|b| b.base == 0) {
            return Err(Error::SriovVfBarUnplaced { pf: self.pf, index: bar.index });
        }
        let (pf, cap) = (self.pf, self.offset);
        // CAST: Control is the low half of its dword.
        let control = read32_present(cfg, pf, cap + reg::CONTROL)? as u16;
        self.control = control;
        if control & reg::CONTROL_VF_ENABLE != 0 {
            return Err(Error::NotWhileEnabled { bdf: pf, what: "SR-IOV Control.VF Enable" });
        }

        // ARI Capable Hierarchy (§9.3.3.3.5) lets VFs use function numbers 8-255 of their bus;
        // set it when the port above forwards ARI. It is RW only in the lowest-numbered PF of
        // the device and applies to all of its PFs.
        let ari = self.parent_forwards_ari(cfg, topology, &pf_fn)?;
        let mut control = control & !reg::CONTROL_VF_MSE;
        match self.lowest_pf(topology, &pf_fn, ari) {
            Some((index, _, _)) if index == self.pf_index => {
                let want = if ari {
                    control | reg::CONTROL_ARI_CAPABLE_HIERARCHY
                } else {
                    control & !reg::CONTROL_ARI_CAPABLE_HIERARCHY
                };
                if want != control {
                    cfg.write16(pf, cap + reg::CONTROL, want);
                    control = want;
                }
            }
            Some((_, lowest, lowest_cap)) if ari => {
                // CAST: Control is the low half of its dword.
                let theirs = read32_present(cfg, lowest, lowest_cap + reg::CONTROL)? as u16;
                // Changing it while that PF's VFs are enabled would move them; leave it.
                if theirs & reg::CONTROL_VF_ENABLE == 0
                    && theirs & reg::CONTROL_ARI_CAPABLE_HIERARCHY == 0
                {
                    cfg.write16(
                        lowest,
                        lowest_cap + reg::CONTROL,
                        theirs | reg::CONTROL_ARI_CAPABLE_HIERARCHY,
                    );
                }
            }
            _ => {}
        }
        self.control = control;

        // NumVFs only while VF Enable is clear (§9.3.3.7), then offset and stride, which
        // depend on it (§9.3.3.9-10).
        cfg.write16(pf, cap + reg::NUM_VFS, num_vfs);
        // CAST: NumVFs is the low half of its dword.
        let read = read32_present(cfg, pf, cap + reg::NUM_VFS)? as u16;
        self.num_vfs = read;
        if read != num_vfs {
            self.reset_num_vfs(cfg);
            return Err(Error::SettingNotTaken {
                bdf: pf,
                what: "SR-IOV NumVFs",
                wrote: u32::from(num_vfs),
                read: u32::from(read),
            });
        }
        let routing = read32_present(cfg, pf, cap + reg::FIRST_VF_OFFSET)?;
        // CAST: the two halves of the dword.
        let (offset, stride) = (routing as u16, (routing >> 16) as u16);
        self.first_vf_offset = offset;
        self.vf_stride = stride;
        if let Err(e) = self.check_placement(topology, num_vfs) {
            self.reset_num_vfs(cfg);
            return Err(e);
        }

        cfg.write16(pf, cap + reg::CONTROL, control | reg::CONTROL_VF_ENABLE | reg::CONTROL_VF_MSE);
        self.control = control | reg::CONTROL_VF_ENABLE | reg::CONTROL_VF_MSE;
        self.enabled = true;
        match self.add_vfs(cfg, platform, topology, &pf_fn, num_vfs) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Nothing refers to a VF, so removing them cannot fail.
                let _ = topology.remove_if(|f| f.physical_function == Some(self.pf_index));
                let _ = self.turn_off(cfg, platform);
                Err(e)
            }
        }
    }

    /// Writes NumVFs = 0 after a refused enable (VF Enable still clear).
    fn reset_num_vfs<C: ConfigAccess + ?Sized>(&mut self, cfg: &C) {
        cfg.write16(self.pf, self.offset + reg::NUM_VFS, 0);
        self.num_vfs = 0;
    }

    /// Every VF on a bus the bridge forwards (and at most 255), at a routing ID no function of
    /// the snapshot has.
    fn check_placement<const N: usize>(&self, topology: &Topology<N>, n: u16) -> Result<()> {
        let (offset, stride) = (self.first_vf_offset, self.vf_stride);
        if offset == 0 || (stride == 0 && n > 1) {
            return Err(Error::SriovVfRouting { pf: self.pf, offset, stride, num_vfs: n });
        }
        let bus = last_vf_bus(self.pf.routing_id().0, offset, stride, n);
        if bus > 0xff {
            return Err(Error::SriovVfBus { pf: self.pf, bus, limit: 0xff });
        }
        if bus > u32::from(self.bus_limit) {
            return Err(Error::SriovVfBus { pf: self.pf, bus, limit: self.bus_limit });
        }
        for i in 0..n {
            // In range: the last VF's bus was checked above.
            let Some(vf) = self.vf_bdf(i) else {
                return Err(Error::SriovVfBus { pf: self.pf, bus, limit: 0xff });
            };
            if topology.find(vf).is_some() {
                return Err(Error::SriovVfCollision { pf: self.pf, vf });
            }
        }
        Ok(())
    }

    /// Waits for the VFs, reads them and pushes them into the snapshot.
    fn add_vfs<C, P, const N: usize>(
        &self,
        cfg: &C,
        platform: &P,
        topology: &mut Topology<N>,
        pf_fn: &Function,
        n: u16,
    ) -> Result<()>
    where
        C: ConfigAccess + ?Sized,
        P: Platform + ?Sized,
    {
        let first =
            self.vf_bdf(0).ok_or(Error::SriovVfBus { pf: self.pf, bus: 0x100, limit: 0xff })?;
        // VFs read Vendor and Device ID as 0xffff (§9.3.4.1.1-2), so readiness is seen in the
        // Class Code/Revision dword, which a VF implements. No request before the 100 ms.
        let start = platform.now();
        // TIMEOUT: VF_ENABLE_TIMEOUT, justified at its definition.
        let first_class =
            hal::poll(platform, "SR-IOV first VF after VF Enable", VF_ENABLE_TIMEOUT, || {
                if platform.now().since(start) < VF_ENABLE_SETTLE {
                    return None;
                }
                let v = cfg.read32(first, cfg_reg::REVISION_CLASS);
                (v != u32::MAX).then_some(v)
            })?;
        for i in 0..n {
            let bdf =
                self.vf_bdf(i).ok_or(Error::SriovVfBus { pf: self.pf, bus: 0x100, limit: 0xff })?;
            let class_rev =
                if i == 0 { first_class } else { cfg.read32(bdf, cfg_reg::REVISION_CLASS) };
            if class_rev == u32::MAX {
                return Err(Error::FunctionVanished { bdf });
            }
            let (caps, acs) = match caps::collect(cfg, bdf) {
                Ok(c) => c,
                Err(Error::FunctionVanished { bdf }) => {
                    return Err(Error::FunctionVanished { bdf });
                }
                // A VF with a broken capability list is kept without capabilities: nothing
                // that needs one (ATS, PRI) will be used on it.
                Err(_) => Default::default(),
            };
            let mut vf_bars = [None; 6];
            for (slot, bar) in vf_bars.iter_mut().zip(self.vf_bars.iter()) {
                *slot = bar.map(|b| Bar { base: b.base + u64::from(i) * b.size, ..b });
            }
            topology.push(Function {
                id: FunctionId {
                    bdf,
                    vendor: pf_fn.id.vendor,
                    device: self.vf_device,
                    class: class_rev >> 8,
                    // CAST: the low byte.
                    revision: class_rev as u8,
                    header_type: 0,
                },
                kind: match pf_fn.kind {
                    FunctionKind::RootComplexEndpoint => FunctionKind::RootComplexEndpoint,
                    _ => FunctionKind::PcieEndpoint,
                },
                parent: pf_fn.parent,
                bus_range: None,
                caps,
                acs,
                multi_function: false,
                ari_forwarding: false,
                physical_function: Some(self.pf_index),
                bars: vf_bars,
            })?;
        }
        Ok(())
    }

    /// Clears VF Enable and VF MSE, waits the settle time, and writes NumVFs = 0.
    fn turn_off<C, P>(&mut self, cfg: &C, platform: &P) -> Result<()>
    where
        C: ConfigAccess + ?Sized,
        P: Platform + ?Sized,
    {
        let (pf, cap) = (self.pf, self.offset);
        // The VFs are out of the snapshot already; whatever happens next, none is enabled here.
        self.enabled = false;
        // CAST: Control is the low half of its dword.
        let control = read32_present(cfg, pf, cap + reg::CONTROL)? as u16;
        let off = control & !(reg::CONTROL_VF_ENABLE | reg::CONTROL_VF_MSE);
        self.control = off;
        if control != off {
            cfg.write16(pf, cap + reg::CONTROL, off);
            // Nothing in the capability may be read for a second (§9.3.3.3.1); the wait reads
            // only the clock.
            let start = platform.now();
            // TIMEOUT: twice the settle time; the condition is the clock itself, so only a
            // clock that stops reaches the bound.
            hal::poll(platform, "SR-IOV VF Enable clear settle", 2 * VF_DISABLE_SETTLE, || {
                (platform.now().since(start) >= VF_DISABLE_SETTLE).then_some(())
            })?;
        }
        cfg.write16(pf, cap + reg::NUM_VFS, 0);
        self.num_vfs = 0;
        Ok(())
    }

    /// Disables the VFs: clears VF Enable and VF MSE, waits one second (§9.3.3.3.1), writes
    /// NumVFs = 0, and removes the VFs from `topology` (indices of functions after them — other
    /// PFs' VFs — move down; recompute isolation groups). [`Error::SriovLocked`] while locked.
    /// Disabling a PF without enabled VFs still clears VF Enable if someone set it.
    pub fn disable<C, P, const N: usize>(
        &mut self,
        cfg: &C,
        platform: &P,
        topology: &mut Topology<N>,
    ) -> Result<()>
    where
        C: ConfigAccess + ?Sized,
        P: Platform + ?Sized,
    {
        self.check_pf(topology)?;
        if self.assigned > 0 {
            return Err(Error::SriovLocked { pf: self.pf, assigned: self.assigned });
        }
        // Remove the VFs from the snapshot even if the PF no longer answers.
        let pf_index = self.pf_index;
        topology.remove_if(|f| f.physical_function == Some(pf_index))?;
        self.turn_off(cfg, platform)
    }

    /// Whether the port above the PF has ARI Forwarding Enable set (a PF on a root bus has no
    /// port above).
    fn parent_forwards_ari<C: ConfigAccess + ?Sized, const N: usize>(
        &self,
        cfg: &C,
        topology: &Topology<N>,
        pf_fn: &Function,
    ) -> Result<bool> {
        let Some(parent) = pf_fn.parent.and_then(|p| topology.get(p)) else { return Ok(false) };
        if !matches!(parent.kind, FunctionKind::RootPort | FunctionKind::SwitchDownstream)
            || parent.caps.pcie == 0
        {
            return Ok(false);
        }
        Pcie::at(parent.bdf(), parent.caps.pcie).ari_forwarding_enabled(cfg)
    }

    /// The lowest-numbered PF of the PF's device: same bus and parent, same device number
    /// unless ARI is in use (then the whole bus is one device).
    fn lowest_pf<const N: usize>(
        &self,
        topology: &Topology<N>,
        pf_fn: &Function,
        ari: bool,
    ) -> Option<(FunctionIndex, Bdf, u16)> {
        let me = self.pf;
        topology
            .functions()
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                let b = f.bdf();
                f.physical_function.is_none()
                    && f.caps.sriov != 0
                    && f.parent == pf_fn.parent
                    && b.segment == me.segment
                    && b.bus == me.bus
                    && (ari || b.dev() == me.dev())
            })
            .min_by_key(|(_, f)| f.bdf().devfn)
            .and_then(|(i, f)| {
                u16::try_from(i).ok().map(|i| (FunctionIndex(i), f.bdf(), f.caps.sriov))
            })
    }
}

#[cfg(test)]
mod tests;
