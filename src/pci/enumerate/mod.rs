//! Enumeration: every function below every root bus, bus numbers, BARs and bridge windows, the
//! SR-IOV capabilities, and ACS on the ports — recorded in a [`Topology`] snapshot.
//!
//! What [`enumerate`] does, per root bus (in the order given):
//! 1. **Scan a bus** (every device 0-31; only device 0 below a root or switch downstream port,
//!    which forwards type 0 requests to device 0 alone unless ARI forwarding is on, PCIe Base
//!    6.0 §7.3.1). An absent slot costs one 32-bit read of the ID. Function 0, then 1-7 when
//!    function 0 sets the multi-function bit (§7.5.1.1.9) — or, for an ARI device below a port
//!    that supports ARI forwarding, ARI forwarding is enabled and the Next Function Number
//!    chain is followed instead (§6.13, §7.8.8), strictly increasing, so at most 255 steps.
//!    Each function found: header dwords read once, capabilities collected ([`caps::collect`]),
//!    classified from header layout and Device/Port Type, BARs sized with decoding off and
//!    restored, SR-IOV read (VF BARs sized, the buses the VFs can need at TotalVFs worked out),
//!    ACS enabled on root and downstream ports (`options.enable_acs`).
//! 2. **Bus numbers**, depth-first: a bridge gets the next free bus as secondary and a
//!    temporary subordinate of the last bus, its secondary bus is scanned and everything below
//!    numbered, then its subordinate is set to the highest bus used below, raised to leave room
//!    for the VFs of PFs below (First VF Offset and VF Stride can put VFs on later buses,
//!    §9.3.3.9-10) and, on hot-plug capable ports, `hotplug_bus_reserve` more. Firmware's
//!    numbers are kept when they are consistent (see [`AssignBuses`]).
//! 3. **BARs and windows** (see [`AssignBars`]): per bus, largest alignment first, from the
//!    root's windows; bridge windows sized to hold everything below (1 MiB / 4 KiB granular),
//!    SR-IOV VF BAR apertures (VF BAR size x TotalVFs) placed next to the PF's BARs; decode and
//!    bus mastering enabled on bridges, decode on endpoints whose BARs were all placed, bus
//!    mastering left off on endpoints (the hypervisor decides who may DMA).
//!
//! The snapshot holds each bus's functions together, followed by the subtrees of that bus's
//! bridges in slot order, so a bridge always comes before everything below it (the order
//! Linux lists devices in). Every step is bounded: bus numbers strictly increase along a path,
//! device and function loops are fixed, the ARI chain strictly increases, capability walks are
//! bounded by [`caps`]. A function that starts reading all-ones is dropped with a
//! [`Warning::FunctionVanished`]; a full snapshot is [`Error::CapacityExceeded`].

mod assign;
#[cfg(test)]
mod tests;

use core::cell::Cell;

use heapless::Vec;

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::acs::{self, AcsCap};
use crate::pci::ari::Ari;
use crate::pci::bars::{self, SizedBars};
use crate::pci::caps;
use crate::pci::config::{AccessCounts, ConfigAccess, reg};
use crate::pci::ecam::FunctionId;
use crate::pci::pcie::{self, Pcie};
use crate::pci::sriov::SrIov;
use crate::pci::topology::{
    BusRange, Capabilities, Function, FunctionIndex, FunctionKind, Topology,
};

pub use crate::pci::bars::Window;

/// The address windows a host bridge decodes for one root bus, in bus addresses (see
/// [`Window`]). BARs are assigned from them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Windows {
    /// 32-bit non-prefetchable memory (QEMU virt: 0x1000_0000-0x3efe_ffff). Bridges forward
    /// non-prefetchable memory only below 4 GiB.
    pub memory32: Option<Window>,
    /// 64-bit prefetchable memory (QEMU virt: 512 GiB at 0x80_0000_0000). 64-bit prefetchable
    /// BARs go here; without it they share the 32-bit window.
    pub memory64: Option<Window>,
    /// I/O space (QEMU virt: 64 KiB, bus addresses 0-0xffff at CPU 0x3eff_0000; the allocator
    /// never hands out the first 4 KiB).
    pub io: Option<Window>,
}

/// A root bus: the bus numbers its host bridge decodes, and its address windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RootBus {
    /// PCI segment group.
    pub segment: u16,
    /// The root bus number (the first bus decoded).
    pub first_bus: u8,
    /// The last bus decoded (ECAM `bus-range` end); bus numbering never goes past it.
    pub last_bus: u8,
    /// Where BARs may be placed.
    pub windows: Windows,
}

impl RootBus {
    /// Buses `first_bus..=last_bus` of `segment`, with no windows.
    pub const fn new(segment: u16, first_bus: u8, last_bus: u8) -> Self {
        Self {
            segment,
            first_bus,
            last_bus,
            windows: Windows { memory32: None, memory64: None, io: None },
        }
    }

    /// The same root with `windows`.
    pub const fn with_windows(mut self, windows: Windows) -> Self {
        self.windows = windows;
        self
    }
}

/// When enumeration programs bridges' bus numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AssignBuses {
    /// Never: firmware's numbers are used as found. A bridge with unprogrammed or inconsistent
    /// numbers is reported ([`Warning::BusRangeInvalid`]) and nothing below it is scanned.
    Never,
    /// Keep firmware's numbers when every bridge is consistent (secondary above primary,
    /// subordinate at least secondary, nested in the parent's range, disjoint from its
    /// siblings', primary equal to the bus the bridge sits on); number the whole root
    /// hierarchy afresh when any bridge has none (as on QEMU virt, where no firmware runs) or
    /// inconsistent ones (reported).
    #[default]
    IfInvalid,
    /// Always number afresh.
    Always,
}

/// When enumeration assigns BAR addresses and bridge windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AssignBars {
    /// Never: BARs are only sized (and their original values restored).
    Never,
    /// Assign a root's hierarchy when no BAR under it holds an address (nothing was assigned,
    /// as on QEMU virt); otherwise keep firmware's addresses and report BARs left at 0
    /// ([`Warning::BarUnassigned`], VF BARs included: SeaBIOS does not place them).
    #[default]
    IfUnassigned,
    /// Always assign afresh.
    Always,
}

/// What enumeration may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Options {
    /// Bus numbering policy.
    pub assign_buses: AssignBuses,
    /// BAR assignment policy.
    pub assign_bars: AssignBars,
    /// Enable ACS Source Validation, P2P Request Redirect, P2P Completion Redirect and Upstream
    /// Forwarding ([`acs::ISOLATION`]) on root and downstream ports that offer them, so that
    /// isolation groups can rely on them.
    pub enable_acs: bool,
    /// Buses left free beyond the secondary bus of every hot-plug capable root or downstream
    /// port, for a switch added later, when enumeration numbers buses. If the hierarchy does
    /// not fit with them, it is numbered again without them ([`Warning::ReservationsDropped`]).
    pub hotplug_bus_reserve: u8,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            assign_buses: AssignBuses::IfInvalid,
            assign_bars: AssignBars::IfUnassigned,
            enable_acs: true,
            hotplug_bus_reserve: 2,
        }
    }
}

/// Something enumeration met and worked around; the snapshot is usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Warning {
    /// A function started reading all-ones while it was being read (surprise removal, a
    /// reset, or a broken device); it is not in the snapshot.
    FunctionVanished {
        /// Where it was.
        bdf: Bdf,
    },
    /// A capability list could not be walked; the function is recorded without capabilities
    /// (so as conventional PCI, which isolation groups treat conservatively).
    Capabilities {
        /// The function.
        bdf: Bdf,
        /// What the walker reported.
        error: Error,
    },
    /// A BAR register holds an encoding no BAR can have (reserved type, size not a power of
    /// two, type bits that change, a 64-bit BAR in the last register, an I/O VF BAR); ignored.
    BarInvalid {
        /// The function.
        bdf: Bdf,
        /// Offset of the register (0x10-0x24, or inside the SR-IOV capability).
        register: u16,
        /// What it read back after writing all-ones.
        value: u32,
    },
    /// A control did not take (ACS, ARI forwarding); the snapshot records what reads back.
    Setting {
        /// The error the capability driver reported.
        error: Error,
    },
    /// An ARI Next Function Number chain that goes backwards, loops or leads to a function
    /// that does not answer; the walk stopped there.
    AriChain {
        /// The function whose Next Function Number it is.
        bdf: Bdf,
        /// The number.
        next: u8,
    },
    /// A bridge's bus numbers are unprogrammed or inconsistent (see [`AssignBuses`]). With
    /// [`AssignBuses::Never`] nothing below it was scanned; otherwise the hierarchy was
    /// numbered afresh ([`Warning::Renumbered`]).
    BusRangeInvalid {
        /// The bridge.
        bridge: Bdf,
        /// Primary Bus Number.
        primary: u8,
        /// Secondary Bus Number.
        secondary: u8,
        /// Subordinate Bus Number.
        subordinate: u8,
    },
    /// Firmware's bus numbers below this root were discarded and the hierarchy numbered
    /// afresh.
    Renumbered {
        /// Segment.
        segment: u16,
        /// Root bus.
        bus: u8,
    },
    /// The hierarchy did not fit the root's buses with the reservations, so it was numbered
    /// again without hot-plug reservations (`hotplug`) or without VF reservations (`vfs`).
    ReservationsDropped {
        /// Segment.
        segment: u16,
        /// Root bus.
        bus: u8,
        /// Hot-plug reservations dropped.
        hotplug: bool,
        /// VF bus reservations dropped.
        vfs: bool,
    },
    /// The VFs of a PF at TotalVFs would need buses up to `bus`, past what its bridge forwards
    /// (`limit`); enabling that many will be refused.
    VfBusesUnavailable {
        /// The PF.
        pf: Bdf,
        /// The last VF's bus.
        bus: u32,
        /// The last bus available.
        limit: u8,
    },
    /// A BAR (or a VF BAR aperture, `vf`) has no address: no window of its kind reaches it, or
    /// the window is full, or firmware left it at 0. Its decoding is not enabled.
    BarUnassigned {
        /// The function.
        bdf: Bdf,
        /// BAR (or VF BAR) index.
        index: u8,
        /// Whether it is a VF BAR aperture.
        vf: bool,
        /// Bytes it needs (an aperture: VF BAR size x TotalVFs).
        size: u64,
    },
    /// A bridge window did not fit its parent's window: nothing of that kind below the bridge
    /// has an address.
    WindowUnassigned {
        /// The bridge.
        bridge: Bdf,
        /// Bytes it needed.
        size: u64,
    },
}

/// Most warnings kept; the rest are counted in [`Enumeration::warnings_dropped`].
pub const MAX_WARNINGS: usize = 32;

/// What enumeration cost and found, for reporting reads per present function and per absent
/// slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    /// Configuration reads and writes made, of any width, restarts included.
    pub accesses: AccessCounts,
    /// Functions that answered their ID read (restarts included).
    pub functions: u32,
    /// Slots probed that nothing answered (one read each).
    pub absent: u32,
    /// Buses scanned.
    pub buses: u32,
    /// Times a root hierarchy was scanned again (renumbering, dropped reservations).
    pub restarts: u32,
}

/// What enumeration found: the snapshot, every SR-IOV capability (VFs not yet enabled), and
/// warnings. `P` bounds the SR-IOV PFs held.
#[derive(Clone, Debug)]
pub struct Enumeration<const N: usize, const P: usize = 16> {
    /// Every function found (no VFs until [`SrIov::enable`] adds them).
    pub topology: Topology<N>,
    /// The SR-IOV capability of every PF, with VF BAR apertures and bus limits filled in.
    pub sriov: Vec<SrIov, P>,
    /// What was worked around, in the order met.
    pub warnings: Vec<Warning, MAX_WARNINGS>,
    /// Warnings past [`MAX_WARNINGS`].
    pub warnings_dropped: u32,
    /// Cost and counts.
    pub stats: Stats,
    /// Per-function working state, parallel to `topology` (kept here rather than on the stack,
    /// so a caller that places the enumeration in a static needs no large stack).
    scratch: Vec<Scratch, N>,
}

impl<const N: usize, const P: usize> Default for Enumeration<N, P> {
    fn default() -> Self {
        Self::new()
    }
}

/// Enumerates every root in `roots` (see the module documentation) and returns what it found.
/// The result is large (it holds `N` functions); [`Enumeration::run`] fills one in place.
///
/// Errors: [`Error::InvalidField`] for a root whose last bus is below its first or that
/// overlaps another root of its segment; [`Error::CapacityExceeded`] when more than `N`
/// functions or `P` SR-IOV PFs are found; [`Error::BusNumbersExhausted`] when bus numbering
/// needs a bus past a root's last bus.
pub fn enumerate<const N: usize, const P: usize>(
    cfg: &(impl ConfigAccess + ?Sized),
    roots: &[RootBus],
    options: &Options,
) -> Result<Enumeration<N, P>> {
    let mut e = Enumeration::new();
    e.run(cfg, roots, options)?;
    Ok(e)
}

impl<const N: usize, const P: usize> Enumeration<N, P> {
    /// An empty result.
    pub const fn new() -> Self {
        Self {
            topology: Topology::new(),
            sriov: Vec::new(),
            warnings: Vec::new(),
            warnings_dropped: 0,
            stats: Stats {
                accesses: AccessCounts { reads: 0, writes: 0 },
                functions: 0,
                absent: 0,
                buses: 0,
                restarts: 0,
            },
            scratch: Vec::new(),
        }
    }

    /// Clears `self` and enumerates into it (see [`enumerate`]). On error the contents are
    /// what was found up to the failure.
    pub fn run(
        &mut self,
        cfg: &(impl ConfigAccess + ?Sized),
        roots: &[RootBus],
        options: &Options,
    ) -> Result<()> {
        *self = Self::new();
        for (i, r) in roots.iter().enumerate() {
            if r.last_bus < r.first_bus {
                return Err(Error::InvalidField {
                    what: "root bus range end",
                    value: u64::from(r.last_bus),
                });
            }
            let overlaps = roots[..i].iter().any(|o| {
                o.segment == r.segment && o.first_bus <= r.last_bus && r.first_bus <= o.last_bus
            });
            if overlaps {
                return Err(Error::InvalidField {
                    what: "root bus range overlapping another",
                    value: u64::from(r.first_bus),
                });
            }
        }
        let counted = Counted { inner: cfg, counts: Cell::new(AccessCounts::default()) };
        let result = roots.iter().try_for_each(|root| self.run_root(&counted, root, options));
        self.stats.accesses = counted.counts.get();
        result
    }

    /// The SR-IOV capability of the PF at `pf`.
    pub fn sriov_of(&self, pf: FunctionIndex) -> Option<&SrIov> {
        self.sriov.iter().find(|s| s.pf_index() == pf)
    }

    /// The SR-IOV capability of the PF at `pf` and the snapshot, both mutable, as
    /// [`SrIov::enable`] needs them.
    pub fn sriov_mut(&mut self, pf: FunctionIndex) -> Option<(&mut SrIov, &mut Topology<N>)> {
        let s = self.sriov.iter_mut().find(|s| s.pf_index() == pf)?;
        Some((s, &mut self.topology))
    }

    fn warn(&mut self, w: Warning) {
        if self.warnings.push(w).is_err() {
            self.warnings_dropped = self.warnings_dropped.saturating_add(1);
        }
    }

    /// Enumerates one root, restarting it when firmware's bus numbers turn out inconsistent
    /// below the root bus or when reservations do not fit.
    fn run_root<C: ConfigAccess + ?Sized>(
        &mut self,
        cfg: &Counted<'_, C>,
        root: &RootBus,
        options: &Options,
    ) -> Result<()> {
        let start = (
            self.topology.len(),
            self.scratch.len(),
            self.sriov.len(),
            self.warnings.len(),
            self.warnings_dropped,
        );
        let mut plan = Plan {
            renumber: options.assign_buses == AssignBuses::Always,
            hotplug: options.hotplug_bus_reserve,
            vfs: true,
        };
        loop {
            let mut walk = Walk {
                cfg,
                e: self,
                options,
                root,
                program: plan.renumber,
                next_free: 0,
                plan,
                claimed: [0; 4],
            };
            let outcome = walk.walk();
            let restart_warning = match outcome {
                Ok(()) => break,
                Err(Abort::Renumber(w)) => {
                    plan.renumber = true;
                    [
                        Some(w),
                        Some(Warning::Renumbered { segment: root.segment, bus: root.first_bus }),
                    ]
                }
                // Exhaustion happens only while numbering afresh, so the retry numbers afresh.
                Err(Abort::Exhausted(_)) if plan.hotplug > 0 || plan.vfs => {
                    let hotplug = plan.hotplug > 0;
                    if hotplug {
                        plan.hotplug = 0;
                    } else {
                        plan.vfs = false;
                    }
                    plan.renumber = true;
                    let w = Warning::ReservationsDropped {
                        segment: root.segment,
                        bus: root.first_bus,
                        hotplug,
                        vfs: !hotplug,
                    };
                    [Some(w), None]
                }
                Err(Abort::Exhausted(e) | Abort::Error(e)) => return Err(e),
            };
            // Forget everything found below this root and scan it again.
            self.topology.truncate(start.0);
            self.scratch.truncate(start.1);
            self.sriov.truncate(start.2);
            self.warnings.truncate(start.3);
            self.warnings_dropped = start.4;
            self.stats.restarts += 1;
            for w in restart_warning.into_iter().flatten() {
                self.warn(w);
            }
        }
        // The VFs may use buses up to the subordinate bus of the PF's bridge (final now).
        for s in &mut self.sriov[start.2..] {
            let pf = s.pf_index();
            let limit = self
                .topology
                .get(pf)
                .and_then(|f| f.parent)
                .and_then(|p| self.topology.get(p))
                .and_then(|p| p.bus_range)
                .map_or(root.last_bus, |r| r.subordinate);
            s.set_bus_limit(limit);
        }
        assign::run(cfg, self, root, options, start.0)
    }
}

/// Reservations and numbering policy for one attempt at a root.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Number afresh (else keep firmware's numbers).
    renumber: bool,
    /// Hot-plug reservation per port.
    hotplug: u8,
    /// Reserve buses for VFs.
    vfs: bool,
}

/// Why a walk of a root stopped early.
#[derive(Debug)]
enum Abort {
    /// Firmware's numbers are inconsistent below the root bus: number afresh.
    Renumber(Warning),
    /// Out of bus numbers.
    Exhausted(Error),
    /// Anything else.
    Error(Error),
}

impl From<Error> for Abort {
    fn from(e: Error) -> Self {
        Abort::Error(e)
    }
}

/// Per-function working state.
#[derive(Clone, Copy, Debug, Default)]
struct Scratch {
    /// COMMAND as found (restored after sizing).
    command: u16,
    /// Bridges: the dword at 0x18 (primary, secondary, subordinate, secondary latency timer)
    /// as last read or written.
    bus_regs: u32,
    /// A root or downstream port with a hot-plug capable slot.
    hotplug: bool,
    /// Index into `Enumeration::sriov`.
    sriov: Option<u16>,
    /// PFs: the highest bus the VFs can need at TotalVFs (saturated at u16::MAX: anything
    /// past 255 is out of reach anyway).
    vf_last_bus: Option<u16>,
    /// BAR assignment state (bridges).
    assign: assign::BridgeState,
    /// Which BAR spaces assignment placed completely (endpoints' decode is enabled for them).
    placed: assign::Placed,
}

/// A configuration accessor that counts what goes through it, so the enumeration reports its
/// own cost whatever `cfg` is.
struct Counted<'a, C: ?Sized> {
    inner: &'a C,
    counts: Cell<AccessCounts>,
}

impl<C: ?Sized> Counted<'_, C> {
    fn bump(&self, write: bool) {
        let mut c = self.counts.get();
        if write {
            c.writes += 1;
        } else {
            c.reads += 1;
        }
        self.counts.set(c);
    }
}

impl<C: ConfigAccess + ?Sized> ConfigAccess for Counted<'_, C> {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.bump(false);
        self.inner.read32(bdf, offset)
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        self.bump(true);
        self.inner.write32(bdf, offset, value)
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        self.bump(true);
        self.inner.write16(bdf, offset, value)
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        self.bump(true);
        self.inner.write8(bdf, offset, value)
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        self.bump(false);
        self.inner.read16(bdf, offset)
    }
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        self.bump(false);
        self.inner.read8(bdf, offset)
    }
}

/// A bus being scanned for bridges to descend into (8 bytes: 256 of them live on the stack).
#[derive(Clone, Copy, Debug)]
struct Frame {
    bus: u8,
    /// Highest bus a bridge on this bus may use.
    limit: u8,
    /// Snapshot index of the bridge whose secondary bus it is (`NO_BRIDGE`: the root bus).
    bridge: u16,
    /// Next snapshot index of the bus's functions to look at, and the end of them.
    next: u16,
    end: u16,
}

const NO_BRIDGE: u16 = u16::MAX;

/// A snapshot index as stored in a frame (indices fit u16: `Topology::push` refuses more).
fn index16(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}

/// Path depth bound: bus numbers strictly increase along a path, so at most 256 buses.
const MAX_DEPTH: usize = 256;

/// One attempt at enumerating a root.
struct Walk<'a, 'c, C: ?Sized, const N: usize, const P: usize> {
    cfg: &'a Counted<'c, C>,
    e: &'a mut Enumeration<N, P>,
    options: &'a Options,
    root: &'a RootBus,
    /// Numbering afresh (else keeping firmware's numbers).
    program: bool,
    /// Numbering afresh: the next bus number to hand out (256 = none left).
    next_free: u16,
    plan: Plan,
    /// Keeping firmware's numbers: buses claimed by bridges whose subtrees are done (a new
    /// bridge's range must avoid them: siblings may not overlap).
    claimed: [u64; 4],
}

/// (primary, secondary, subordinate) of a bus-number dword.
const fn bus_numbers(regs: u32) -> (u8, u8, u8) {
    // CAST: the three low bytes.
    (regs as u8, (regs >> 8) as u8, (regs >> 16) as u8)
}

/// PCIe capability registers read during enumeration (PCIe Base 6.0 §7.5.3).
const PCIE_SLOT_CAPABILITIES: u16 = 0x14;
const PCIE_DEVICE_CAPABILITIES_2: u16 = 0x24;
const PCIE_FLAGS_SLOT_IMPLEMENTED: u16 = 1 << 8;
const SLOTCAP_HOT_PLUG_CAPABLE: u32 = 1 << 6;
const DEVCAP2_ARI_FORWARDING: u32 = 1 << 5;

impl<C: ConfigAccess + ?Sized, const N: usize, const P: usize> Walk<'_, '_, C, N, P> {
    fn walk(&mut self) -> Result<(), Abort> {
        let root = *self.root;
        let (s, e) = self.scan_bus(root.first_bus, None)?;
        if !self.program && self.options.assign_buses == AssignBuses::IfInvalid {
            // Decide for the whole root from its bus's bridges: none programmed (no firmware
            // ran) or any inconsistent means numbering afresh.
            let mut claimed = [0u64; 4];
            let mut invalid = false;
            for i in s..e {
                if !self.e.topology.functions()[i].kind.is_bridge() {
                    continue;
                }
                let regs = self.e.scratch[i].bus_regs;
                let (p, sec, sub) = bus_numbers(regs);
                if Self::consistent(regs, root.first_bus, root.last_bus)
                    && !range_claimed(&claimed, sec, sub)
                {
                    claim(&mut claimed, sec, sub);
                } else {
                    invalid = true;
                    if sec != 0 || sub != 0 {
                        let bridge = self.e.topology.functions()[i].bdf();
                        self.e.warn(Warning::BusRangeInvalid {
                            bridge,
                            primary: p,
                            secondary: sec,
                            subordinate: sub,
                        });
                    }
                }
            }
            if invalid {
                self.program = true;
                self.plan.renumber = true;
                let any_programmed = (s..e).any(|i| {
                    self.e.topology.functions()[i].kind.is_bridge()
                        && self.e.scratch[i].bus_regs & 0x00ff_ff00 != 0
                });
                if any_programmed {
                    self.e.warn(Warning::Renumbered { segment: root.segment, bus: root.first_bus });
                }
            }
        }
        if self.program {
            self.next_free = u16::from(root.first_bus) + 1;
            self.prepare_bus(s, e);
        } else {
            self.check_vf_room(s, e, root.last_bus);
        }
        let mut stack: Vec<Frame, MAX_DEPTH> = Vec::new();
        let _ = stack.push(Frame {
            bus: root.first_bus,
            limit: root.last_bus,
            bridge: NO_BRIDGE,
            next: index16(s),
            end: index16(e),
        });
        while let Some(top) = stack.last_mut() {
            let found = (usize::from(top.next)..usize::from(top.end))
                .find(|&i| self.e.topology.functions()[i].kind.is_bridge());
            let Some(i) = found else {
                let done = *top;
                stack.pop();
                if done.bridge != NO_BRIDGE {
                    self.finish_bridge(usize::from(done.bridge));
                }
                continue;
            };
            top.next = index16(i + 1);
            let (bus, limit) = (top.bus, top.limit);
            let Some((sec, child_limit)) = self.open_bridge(i, bus, limit)? else { continue };
            let (s, e) = self.scan_bus(sec, Some(FunctionIndex(index16(i))))?;
            if self.program {
                self.prepare_bus(s, e);
            } else {
                self.check_vf_room(s, e, child_limit);
            }
            stack
                .push(Frame {
                    bus: sec,
                    limit: child_limit,
                    bridge: index16(i),
                    next: index16(s),
                    end: index16(e),
                })
                .map_err(|_| Error::CapacityExceeded {
                    what: "bus nesting depth",
                    capacity: MAX_DEPTH,
                })?;
        }
        Ok(())
    }

    /// Firmware's numbers for a bridge on `bus` whose parent forwards up to `limit`.
    fn consistent(regs: u32, bus: u8, limit: u8) -> bool {
        let (p, sec, sub) = bus_numbers(regs);
        p == bus && sec > bus && sec <= sub && sub <= limit
    }

    /// Gives bridge `i` (on `bus`, whose range ends at `limit`) its secondary bus, or checks
    /// firmware's. Returns the secondary bus and the highest bus below it, or `None` when the
    /// bridge is not entered.
    fn open_bridge(&mut self, i: usize, bus: u8, limit: u8) -> Result<Option<(u8, u8)>, Abort> {
        let f = self.e.topology.functions()[i];
        let regs = self.e.scratch[i].bus_regs;
        let last = self.root.last_bus;
        if self.program {
            let Ok(sec) = u8::try_from(self.next_free) else {
                return Err(Abort::Exhausted(Error::BusNumbersExhausted { bridge: f.bdf(), last }));
            };
            if sec > last {
                return Err(Abort::Exhausted(Error::BusNumbersExhausted { bridge: f.bdf(), last }));
            }
            self.next_free += 1;
            // Subordinate = last for now, so requests reach every bus numbered below; it is
            // lowered once the subtree is done.
            let value = (regs & 0xff00_0000)
                | (u32::from(last) << 16)
                | (u32::from(sec) << 8)
                | u32::from(bus);
            self.cfg.write32(f.bdf(), reg::PRIMARY_BUS, value);
            self.e.scratch[i].bus_regs = value;
            self.e.topology.functions_mut()[i].bus_range =
                Some(BusRange { secondary: sec, subordinate: last });
            return Ok(Some((sec, last)));
        }
        let (p, sec, sub) = bus_numbers(regs);
        if Self::consistent(regs, bus, limit) && !range_claimed(&self.claimed, sec, sub) {
            return Ok(Some((sec, sub)));
        }
        let w = Warning::BusRangeInvalid {
            bridge: f.bdf(),
            primary: p,
            secondary: sec,
            subordinate: sub,
        };
        if self.options.assign_buses == AssignBuses::IfInvalid {
            return Err(Abort::Renumber(w));
        }
        self.e.warn(w);
        Ok(None)
    }

    /// Finishes bridge `i` after its subtree: numbering afresh, sets its subordinate bus to the
    /// highest bus used below, at least secondary + the hot-plug reservation; keeping, claims
    /// its range.
    fn finish_bridge(&mut self, i: usize) {
        let Some(range) = self.e.topology.functions()[i].bus_range else { return };
        if !self.program {
            claim(&mut self.claimed, range.secondary, range.subordinate);
            return;
        }
        let last = u16::from(self.root.last_bus);
        let mut sub = self.next_free.saturating_sub(1).max(u16::from(range.secondary));
        if self.e.scratch[i].hotplug {
            sub = sub.max(u16::from(range.secondary) + u16::from(self.plan.hotplug));
        }
        // CAST: clamped to the last bus, a u8.
        let sub = sub.min(last) as u8;
        let bdf = self.e.topology.functions()[i].bdf();
        self.cfg.write8(bdf, reg::SUBORDINATE_BUS, sub);
        let regs = (self.e.scratch[i].bus_regs & !0x00ff_0000) | (u32::from(sub) << 16);
        self.e.scratch[i].bus_regs = regs;
        self.e.topology.functions_mut()[i].bus_range =
            Some(BusRange { secondary: range.secondary, subordinate: sub });
        self.next_free = u16::from(sub) + 1;
    }

    /// Numbering afresh, before any bridge of a freshly scanned bus gets numbers: clears stale
    /// numbers on its bridges (a stale range would claim requests meant for a sibling's new
    /// buses; Linux `pci_scan_bridge_extend` does the same), and keeps the buses the VFs of
    /// its PFs can use out of the secondary numbers handed out next.
    fn prepare_bus(&mut self, s: usize, e: usize) {
        for i in s..e {
            let f = self.e.topology.functions()[i];
            let regs = self.e.scratch[i].bus_regs;
            if f.kind.is_bridge() && regs & 0x00ff_ffff != 0 {
                self.cfg.write32(f.bdf(), reg::PRIMARY_BUS, regs & 0xff00_0000);
                self.e.scratch[i].bus_regs = regs & 0xff00_0000;
                self.e.topology.functions_mut()[i].bus_range = None;
            }
        }
        let last = self.root.last_bus;
        for i in s..e {
            let Some(bus) = self.e.scratch[i].vf_last_bus else { continue };
            if bus > u16::from(last) {
                let pf = self.e.topology.functions()[i].bdf();
                self.e.warn(Warning::VfBusesUnavailable { pf, bus: u32::from(bus), limit: last });
            } else if self.plan.vfs {
                self.next_free = self.next_free.max(bus + 1);
            }
        }
    }

    /// Keeping firmware's numbers: reports PFs whose VFs need buses past `limit`.
    fn check_vf_room(&mut self, s: usize, e: usize, limit: u8) {
        for i in s..e {
            if let Some(bus) = self.e.scratch[i].vf_last_bus
                && bus > u16::from(limit)
            {
                let pf = self.e.topology.functions()[i].bdf();
                self.e.warn(Warning::VfBusesUnavailable { pf, bus: u32::from(bus), limit });
            }
        }
    }

    /// Scans `bus` and appends its functions; returns their snapshot index range.
    fn scan_bus(
        &mut self,
        bus: u8,
        parent: Option<FunctionIndex>,
    ) -> Result<(usize, usize), Abort> {
        self.e.stats.buses += 1;
        let start = self.e.topology.len();
        let segment = self.root.segment;
        let port = parent.and_then(|p| self.e.topology.get(p)).copied();
        // A root or switch downstream port delivers type 0 requests to device 0 only, unless
        // ARI forwarding is enabled (PCIe Base 6.0 §7.3.1); probing 1-31 there costs 31 reads
        // for nothing.
        let below_port = port.is_some_and(|p| {
            matches!(p.kind, FunctionKind::RootPort | FunctionKind::SwitchDownstream)
        });
        let devices = if below_port { 1 } else { 32 };
        for dev in 0..devices {
            let f0_bdf = Bdf { segment, bus, devfn: dev << 3 };
            let Some(f0) = self.probe(f0_bdf, parent, None)? else { continue };
            let f0_fn = self.e.topology.functions()[usize::from(f0.0)];
            let multi = f0_fn.multi_function;
            if let Some(port) =
                port.filter(|p| dev == 0 && below_port && p.ari_forwarding && f0_fn.caps.ari != 0)
            {
                match Pcie::at(port.bdf(), port.caps.pcie).set_ari_forwarding(self.cfg, true) {
                    Ok(()) => {
                        self.walk_ari(f0, parent, multi)?;
                        continue;
                    }
                    Err(error) => self.e.warn(Warning::Setting { error }),
                }
            }
            if multi {
                for func in 1..8 {
                    self.probe(
                        Bdf { segment, bus, devfn: (dev << 3) | func },
                        parent,
                        Some(multi),
                    )?;
                }
            }
        }
        Ok((start, self.e.topology.len()))
    }

    /// Follows an ARI device's Next Function Number chain from function 0 (PCIe Base 6.0
    /// §7.8.8.2). Numbers must strictly increase, so the walk ends within 255 steps.
    fn walk_ari(
        &mut self,
        f0: FunctionIndex,
        parent: Option<FunctionIndex>,
        multi: bool,
    ) -> Result<(), Abort> {
        let mut current = f0;
        loop {
            let f = self.e.topology.functions()[usize::from(current.0)];
            let bdf = f.bdf();
            if f.caps.ari == 0 {
                // A function of an ARI device without the capability ends the chain.
                self.e.warn(Warning::AriChain { bdf, next: 0 });
                return Ok(());
            }
            let next = match Ari::at(bdf, f.caps.ari).next_function(self.cfg) {
                Ok(n) => n,
                Err(Error::FunctionVanished { .. }) => return Ok(()),
                Err(error) => {
                    self.e.warn(Warning::Setting { error });
                    return Ok(());
                }
            };
            if next == 0 {
                return Ok(());
            }
            if next <= bdf.devfn {
                self.e.warn(Warning::AriChain { bdf, next });
                return Ok(());
            }
            match self.probe(Bdf { devfn: next, ..bdf }, parent, Some(multi))? {
                Some(i) => current = i,
                None => {
                    self.e.warn(Warning::AriChain { bdf, next });
                    return Ok(());
                }
            }
        }
    }

    /// Probes `bdf`: one read if nothing answers; otherwise reads the function and appends it.
    /// `multi`: the multi-function bit of function 0 (`None`: this is function 0).
    fn probe(
        &mut self,
        bdf: Bdf,
        parent: Option<FunctionIndex>,
        multi: Option<bool>,
    ) -> Result<Option<FunctionIndex>, Abort> {
        let id = self.cfg.read32(bdf, reg::VENDOR_ID);
        // CAST: Vendor ID is the low half.
        let vendor = id as u16;
        // 0xffff: nothing answered (UR reads all-ones, §2.3.2); 0 is no valid vendor either.
        if vendor == u16::MAX || vendor == 0 {
            self.e.stats.absent += 1;
            return Ok(None);
        }
        self.e.stats.functions += 1;
        match self.read_function(bdf, id, parent, multi) {
            Ok(i) => Ok(Some(i)),
            Err(Abort::Error(Error::FunctionVanished { .. })) => {
                self.e.warn(Warning::FunctionVanished { bdf });
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn read_function(
        &mut self,
        bdf: Bdf,
        id: u32,
        parent: Option<FunctionIndex>,
        multi: Option<bool>,
    ) -> Result<FunctionIndex, Abort> {
        let cfg = self.cfg;
        let command_status = cfg.read32(bdf, reg::COMMAND);
        let class_rev = cfg.read32(bdf, reg::REVISION_CLASS);
        let header = cfg.read32(bdf, reg::CACHE_LINE);
        // None of these dwords reads all-ones on a live function (reserved Status bits, header
        // type 0x7f); one more read of the ID tells whether it went away.
        if (command_status == u32::MAX || class_rev == u32::MAX || header == u32::MAX)
            && cfg.read16(bdf, reg::VENDOR_ID) == u16::MAX
        {
            return Err(Error::FunctionVanished { bdf }.into());
        }
        // CAST (below): bytes and halves of the dwords read.
        let command = command_status as u16;
        let header_type = (header >> 16) as u8;
        let layout = header_type & reg::HEADER_LAYOUT_MASK;
        let (caps, mut acs) = match caps::collect(cfg, bdf) {
            Ok(c) => c,
            Err(Error::FunctionVanished { bdf }) => {
                return Err(Error::FunctionVanished { bdf }.into());
            }
            Err(error) => {
                self.e.warn(Warning::Capabilities { bdf, error });
                (Capabilities::default(), None)
            }
        };
        let mut flags = 0u16;
        if caps.pcie != 0 {
            flags = (caps::read32_present(cfg, bdf, caps.pcie)? >> 16) as u16;
        }
        let port_type = (caps.pcie != 0).then_some(((flags >> 4) & 0xf) as u8);
        let kind = pcie::function_kind(layout, port_type);
        let is_port = matches!(kind, FunctionKind::RootPort | FunctionKind::SwitchDownstream);
        // Device Capabilities 2 exists from capability version 2 (§7.5.3.15).
        let ari_forwarding = is_port
            && flags & 0xf >= 2
            && cfg.read32(bdf, caps.pcie + PCIE_DEVICE_CAPABILITIES_2) & DEVCAP2_ARI_FORWARDING
                != 0;
        let hotplug = is_port
            && self.options.hotplug_bus_reserve > 0
            && flags & PCIE_FLAGS_SLOT_IMPLEMENTED != 0
            && cfg.read32(bdf, caps.pcie + PCIE_SLOT_CAPABILITIES) & SLOTCAP_HOT_PLUG_CAPABLE != 0;
        let bus_regs = if kind.is_bridge() { cfg.read32(bdf, reg::PRIMARY_BUS) } else { 0 };

        // BARs, with Memory and I/O decoding off while they hold all-ones (PCI 3.0 §6.2.5.1).
        let bar_count = match (layout, kind) {
            (_, FunctionKind::Other) => 0,
            (0, _) => 6,
            _ => 2,
        };
        let sized = if bar_count == 0 {
            SizedBars::default()
        } else {
            size_bars(cfg, bdf, command, bar_count)?
        };
        if let Some((register, value)) = sized.invalid {
            self.e.warn(Warning::BarInvalid { bdf, register, value });
        }

        // SR-IOV: the capability, VF BARs, and the buses the VFs can need.
        let index = self.e.topology.len();
        let mut sriov = None;
        let mut vf_last_bus = None;
        if layout == 0 && kind != FunctionKind::Other && caps.sriov != 0 {
            let (s, invalid) = SrIov::read_at(
                cfg,
                bdf,
                FunctionIndex(index16(index)),
                caps.sriov,
                self.root.last_bus,
            )?;
            if let Some((register, value)) = invalid {
                self.e.warn(Warning::BarInvalid { bdf, register, value });
            }
            vf_last_bus = s.max_vf_bus(cfg).map(|b| u16::try_from(b).unwrap_or(u16::MAX));
            sriov = Some(s);
        }

        // ACS on the ports, so that isolation groups can rely on it.
        if let (true, true, Some(found)) = (self.options.enable_acs, is_port, acs.as_mut()) {
            match AcsCap::at(bdf, caps.acs).enable(cfg, acs::ISOLATION) {
                Ok(control) => found.control = control,
                Err(error @ Error::SettingNotTaken { read, .. }) => {
                    // CAST: ACS Control is 16 bits. Groups see what the port really does.
                    found.control = read as u16;
                    self.e.warn(Warning::Setting { error });
                }
                Err(e) => return Err(e.into()),
            }
        }

        let (_, sec, sub) = bus_numbers(bus_regs);
        let function = Function {
            id: FunctionId {
                bdf,
                vendor: id as u16,
                device: (id >> 16) as u16,
                class: class_rev >> 8,
                revision: class_rev as u8,
                header_type,
            },
            kind,
            parent,
            bus_range: (kind.is_bridge() && sec != 0)
                .then_some(BusRange { secondary: sec, subordinate: sub }),
            caps,
            acs,
            multi_function: multi.unwrap_or(header_type & reg::HEADER_MULTI_FUNCTION != 0),
            ari_forwarding,
            physical_function: None,
            bars: sized.bars,
        };
        let at = self.e.topology.push(function)?;
        let sriov_index = match sriov {
            Some(s) => {
                let k = self.e.sriov.len();
                self.e
                    .sriov
                    .push(s)
                    .map_err(|_| Error::CapacityExceeded { what: "SR-IOV PFs", capacity: P })?;
                Some(index16(k))
            }
            None => None,
        };
        let scratch = Scratch {
            command,
            bus_regs,
            hotplug,
            sriov: sriov_index,
            vf_last_bus,
            ..Scratch::default()
        };
        self.e
            .scratch
            .push(scratch)
            .map_err(|_| Error::CapacityExceeded { what: "topology functions", capacity: N })?;
        Ok(at)
    }
}

/// Sizes a header's `count` BARs with COMMAND Memory and I/O Space cleared meanwhile, and
/// COMMAND restored after.
fn size_bars<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    command: u16,
    count: u8,
) -> Result<SizedBars> {
    let decode = command & (reg::COMMAND_IO | reg::COMMAND_MEMORY);
    if decode != 0 {
        cfg.write16(bdf, reg::COMMAND, command & !decode);
    }
    let sized = bars::size_registers(cfg, bdf, reg::BAR0, count);
    if decode != 0 {
        cfg.write16(bdf, reg::COMMAND, command);
    }
    sized
}

fn range_claimed(claimed: &[u64; 4], sec: u8, sub: u8) -> bool {
    (sec..=sub).any(|b| claimed[usize::from(b >> 6)] & (1 << (b & 63)) != 0)
}

fn claim(claimed: &mut [u64; 4], sec: u8, sub: u8) {
    for b in sec..=sub {
        claimed[usize::from(b >> 6)] |= 1 << (b & 63);
    }
}
