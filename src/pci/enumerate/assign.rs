//! BAR and bridge-window assignment for one root hierarchy, once its bus numbers are final.
//!
//! Three address spaces: I/O, non-prefetchable memory (the root's 32-bit window; bridges
//! forward it only below 4 GiB) and prefetchable memory (the root's 64-bit window, through
//! bridges' 64-bit prefetchable windows). 64-bit prefetchable BARs go to the last when every
//! bridge above implements a 64-bit prefetchable window and the root has one; every other
//! memory BAR (prefetchable 32-bit ones included: a prefetchable BAR may always live in
//! non-prefetchable space) goes to the first.
//!
//! Bottom-up, each bridge's window need is worked out from what sits on its secondary bus:
//! BARs, SR-IOV VF BAR apertures (VF BAR size x TotalVFs, aligned to the VF BAR size: VF `i`'s
//! BAR is at `aperture + i * size`, each naturally aligned, PCIe Base 6.0 §9.3.3.14), and the
//! child bridges' windows. Items are packed largest alignment first, so sizes that are
//! multiples of their alignments pack without gaps; a window is rounded up to its granule (1 MiB
//! memory, 4 KiB I/O) and aligned to the larger of the granule and its largest item's
//! alignment. Top-down, the root's windows are carved the same way, bus by bus, in snapshot
//! order (a bridge's window is known before its bus is reached).

use crate::error::Result;
use crate::pci::bars::{self, IO_WINDOW_GRANULE, MEMORY_WINDOW_GRANULE, Window, WindowSupport};
use crate::pci::config::{ConfigAccess, reg};
use crate::pci::sriov;
use crate::pci::topology::{BarKind, FunctionIndex, FunctionKind};

use super::{AssignBars, Counted, Enumeration, Options, RootBus, Warning};

/// The address spaces, as indices.
const IO: usize = 0;
const MEM: usize = 1;
const PREF: usize = 2;
const SPACES: usize = 3;

const fn granule(space: usize) -> u64 {
    if space == IO { IO_WINDOW_GRANULE } else { MEMORY_WINDOW_GRANULE }
}

/// Which spaces reach a bus: the root has the window and every bridge on the way implements
/// one (a 64-bit one for prefetchable; a 32-bit I/O window unless the root's I/O space ends
/// below 64 KiB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Allow {
    io: bool,
    mem: bool,
    pref: bool,
}

/// A bridge's assignment state (kept small: the enumeration holds one per function).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BridgeState {
    /// What reaches its secondary bus.
    allow: Allow,
    /// Which windows it implements.
    support: WindowSupport,
    /// Bytes each window must hold (0: nothing below needs it).
    need_size: [u64; SPACES],
    /// Alignment each window needs, as log2.
    need_align: [u8; SPACES],
    /// Where each window was placed (0: not placed; the allocator never hands out 0).
    window: [u64; SPACES],
}

impl BridgeState {
    fn window(&self, space: usize) -> Option<Window> {
        (self.window[space] != 0).then(|| Window::new(self.window[space], self.need_size[space]))
    }
}

/// Whether some BAR of a function's memory or I/O space went without an address (its decode
/// then stays off).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Placed {
    mem_missing: bool,
    io_missing: bool,
}

/// Something to place.
#[derive(Clone, Copy, Debug)]
enum Target {
    Bar { function: usize, index: u8, kind: BarKind },
    VfBar { sriov: usize, index: u8, kind: BarKind },
    Window { bridge: usize },
}

#[derive(Clone, Copy, Debug)]
struct Item {
    target: Target,
    size: u64,
    align: u64,
}

/// Slots per function: 6 BARs, 6 VF BARs, the bridge window.
const SLOTS: usize = 13;

fn space_of(kind: BarKind, allow: Allow) -> Option<usize> {
    match kind {
        BarKind::Io => allow.io.then_some(IO),
        BarKind::Memory64 { prefetchable: true } if allow.pref => Some(PREF),
        _ => allow.mem.then_some(MEM),
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

impl<const N: usize, const P: usize> Enumeration<N, P> {
    /// The item in `slot` of function `i` if it belongs to `space` (`None`: any item whose
    /// space is unreachable) on a bus where `allow` holds.
    fn item(&self, i: usize, slot: usize, space: Option<usize>, allow: Allow) -> Option<Item> {
        let f = self.topology.functions().get(i)?;
        let (target, kind, size, align) = match slot {
            0..6 => {
                let bar = f.bars[slot]?;
                (
                    Target::Bar { function: i, index: bar.index, kind: bar.kind },
                    bar.kind,
                    bar.size,
                    bar.size,
                )
            }
            6..12 => {
                let k = usize::from(self.scratch.get(i)?.sriov?);
                let s = self.sriov.get(k)?;
                let bar = s.vf_bars()[slot - 6]?;
                // An aperture too large to express never fits any window.
                let size = bar.size.saturating_mul(u64::from(s.total_vfs()));
                if size == 0 {
                    return None;
                }
                (
                    Target::VfBar { sriov: k, index: bar.index, kind: bar.kind },
                    bar.kind,
                    size,
                    bar.size,
                )
            }
            _ => {
                let space = space?;
                if !f.kind.is_bridge() {
                    return None;
                }
                let a = &self.scratch.get(i)?.assign;
                let (size, align) = (a.need_size[space], 1u64 << a.need_align[space]);
                return (size > 0).then_some(Item {
                    target: Target::Window { bridge: i },
                    size,
                    align,
                });
            }
        };
        (space_of(kind, allow) == space).then_some(Item { target, size, align })
    }

    /// What reaches the bus below `parent` (`None`: the root bus).
    fn allow_below(&self, parent: Option<FunctionIndex>, root: Allow) -> Allow {
        parent.and_then(|p| self.scratch.get(usize::from(p.0))).map_or(root, |s| s.assign.allow)
    }

    fn warn_unplaced(&mut self, item: &Item) {
        let w = match item.target {
            Target::Bar { function, index, .. } => {
                let bdf = self.topology.functions()[function].bdf();
                Warning::BarUnassigned { bdf, index, vf: false, size: item.size }
            }
            Target::VfBar { sriov, index, .. } => Warning::BarUnassigned {
                bdf: self.sriov[sriov].pf(),
                index,
                vf: true,
                size: item.size,
            },
            Target::Window { bridge } => Warning::WindowUnassigned {
                bridge: self.topology.functions()[bridge].bdf(),
                size: item.size,
            },
        };
        self.warn(w);
    }
}

/// Assigns the hierarchy of `root`, whose functions are the snapshot's from `start` on, if the
/// policy says so; otherwise reports BARs left without an address.
pub(super) fn run<C: ConfigAccess + ?Sized, const N: usize, const P: usize>(
    cfg: &Counted<'_, C>,
    e: &mut Enumeration<N, P>,
    root: &RootBus,
    options: &Options,
    start: usize,
) -> Result<()> {
    let end = e.topology.len();
    if start >= end {
        return Ok(());
    }
    let assign = match options.assign_bars {
        AssignBars::Never => false,
        AssignBars::Always => true,
        AssignBars::IfUnassigned => !any_assigned(e, start, end),
    };
    if !assign {
        if options.assign_bars != AssignBars::Never {
            report_unassigned(e, start, end);
        }
        return Ok(());
    }
    let w = root.windows;
    let root_allow =
        Allow { io: w.io.is_some(), mem: w.memory32.is_some(), pref: w.memory64.is_some() };

    // Top-down: which windows each bridge implements, and so what reaches each bus.
    for i in start..end {
        let f = e.topology.functions()[i];
        if !f.kind.is_bridge() {
            continue;
        }
        let above = e.allow_below(f.parent, root_allow);
        // Probed whether or not the space is used, so that unused windows can be turned off.
        let support = WindowSupport::probe(cfg, f.bdf(), true, true);
        let io_fits = support.io32 || w.io.is_some_and(|io| io.end() <= 0x1_0000);
        let s = &mut e.scratch[i].assign;
        s.support = support;
        s.allow = Allow {
            io: above.io && support.io && io_fits,
            mem: above.mem,
            pref: above.pref && support.pref64,
        };
    }

    // Bottom-up: each bridge's window needs, bus by bus from the last.
    let mut group_end = end;
    while group_end > start {
        let group_start = group_begin(e, start, group_end);
        if let Some(b) = e.topology.functions()[group_start].parent {
            let b = usize::from(b.0);
            let allow = e.scratch[b].assign.allow;
            for space in 0..SPACES {
                let (size, align) = pack(e, group_start, group_end, space, allow);
                if size > 0 {
                    let g = granule(space);
                    let a = &mut e.scratch[b].assign;
                    a.need_size[space] = align_up(size, g).unwrap_or(u64::MAX);
                    // CAST: log2 of a u64 power of two, below 64.
                    a.need_align[space] = align.max(g).trailing_zeros() as u8;
                }
            }
        }
        group_end = group_start;
    }

    // Top-down: carve the root's windows, then each bridge's.
    let mut group_start = start;
    while group_start < end {
        let parent = e.topology.functions()[group_start].parent;
        let mut group_end = group_start + 1;
        while group_end < end && e.topology.functions()[group_end].parent == parent {
            group_end += 1;
        }
        let allow = e.allow_below(parent, root_allow);
        for space in 0..SPACES {
            let region = match parent {
                Some(b) => e.scratch[usize::from(b.0)].assign.window(space),
                None => {
                    let window = match space {
                        IO => w.io,
                        MEM => w.memory32,
                        _ => w.memory64,
                    };
                    // Never address 0 (it reads as "unassigned"), and keep bridge windows on
                    // their granule.
                    window.map(|r| {
                        let base = r.base.max(granule(space));
                        Window::new(base, r.end().saturating_sub(base))
                    })
                }
            };
            place(cfg, e, group_start, group_end, Some(space), allow, region);
        }
        // Whatever no space reaches (an I/O BAR with no I/O window on the way).
        place(cfg, e, group_start, group_end, None, allow, None);
        group_start = group_end;
    }

    // Program the bridges' windows, then enable decoding.
    for i in start..end {
        let f = e.topology.functions()[i];
        let bdf = f.bdf();
        let scratch = e.scratch[i];
        let mut command = scratch.command;
        if f.kind.is_bridge() {
            let s = scratch.assign;
            bars::write_memory_window(cfg, bdf, s.window(MEM));
            if s.support.pref {
                bars::write_prefetchable_window(cfg, bdf, s.window(PREF), s.support.pref64);
            }
            if s.support.io {
                bars::write_io_window(cfg, bdf, s.window(IO), s.support.io32);
            }
            command &= !(reg::COMMAND_MEMORY | reg::COMMAND_IO);
            if s.window(MEM).is_some() || s.window(PREF).is_some() {
                command |= reg::COMMAND_MEMORY;
            }
            if s.window(IO).is_some() {
                command |= reg::COMMAND_IO;
            }
            // A bridge forwards requests from below upstream only with Bus Master Enable set.
            command |= reg::COMMAND_BUS_MASTER;
        } else if f.kind != FunctionKind::Other {
            let has = |io: bool| f.bars.iter().flatten().any(|b| (b.kind == BarKind::Io) == io);
            if has(false) && !scratch.placed.mem_missing {
                command |= reg::COMMAND_MEMORY;
            }
            if has(true) && !scratch.placed.io_missing {
                command |= reg::COMMAND_IO;
            }
        }
        if command != scratch.command {
            cfg.write16(bdf, reg::COMMAND, command);
            e.scratch[i].command = command;
        }
    }
    Ok(())
}

/// Start of the run of functions with the same parent that ends at `end` (one bus).
fn group_begin<const N: usize, const P: usize>(
    e: &Enumeration<N, P>,
    start: usize,
    end: usize,
) -> usize {
    let fs = e.topology.functions();
    let parent = fs[end - 1].parent;
    let mut s = end - 1;
    while s > start && fs[s - 1].parent == parent {
        s -= 1;
    }
    s
}

/// Alignments (as a bitmask of log2) present among the items of `space` on a bus.
fn alignments<const N: usize, const P: usize>(
    e: &Enumeration<N, P>,
    s: usize,
    end: usize,
    space: Option<usize>,
    allow: Allow,
) -> u64 {
    let mut mask = 0u64;
    for i in s..end {
        for slot in 0..SLOTS {
            if let Some(item) = e.item(i, slot, space, allow) {
                mask |= 1 << item.align.trailing_zeros();
            }
        }
    }
    mask
}

/// Bytes and alignment the items of `space` on a bus need, packed largest alignment first from
/// an address aligned to the largest.
fn pack<const N: usize, const P: usize>(
    e: &Enumeration<N, P>,
    s: usize,
    end: usize,
    space: usize,
    allow: Allow,
) -> (u64, u64) {
    let mut aligns = alignments(e, s, end, Some(space), allow);
    let largest = if aligns == 0 { 0 } else { 1u64 << (63 - aligns.leading_zeros()) };
    let mut cursor = 0u64;
    while aligns != 0 {
        let shift = 63 - aligns.leading_zeros();
        aligns &= !(1 << shift);
        for i in s..end {
            for slot in 0..SLOTS {
                if let Some(item) = e.item(i, slot, Some(space), allow)
                    && item.align.trailing_zeros() == shift
                {
                    cursor = align_up(cursor, item.align)
                        .and_then(|c| c.checked_add(item.size))
                        .unwrap_or(u64::MAX);
                }
            }
        }
    }
    (cursor, largest)
}

/// Places the items of `space` on a bus inside `region`, largest alignment first; what does
/// not fit (or has no region) is reported and left without an address.
fn place<C: ConfigAccess + ?Sized, const N: usize, const P: usize>(
    cfg: &Counted<'_, C>,
    e: &mut Enumeration<N, P>,
    s: usize,
    end: usize,
    space: Option<usize>,
    allow: Allow,
    region: Option<Window>,
) {
    let mut aligns = alignments(e, s, end, space, allow);
    let mut cursor = region.map_or(0, |r| r.base);
    while aligns != 0 {
        let shift = 63 - aligns.leading_zeros();
        aligns &= !(1 << shift);
        for i in s..end {
            for slot in 0..SLOTS {
                let Some(item) = e.item(i, slot, space, allow) else { continue };
                if item.align.trailing_zeros() != shift {
                    continue;
                }
                let at = region.and_then(|r| {
                    let at = align_up(cursor, item.align)?;
                    r.contains(at, item.size).then_some(at)
                });
                match at {
                    Some(at) => {
                        cursor = at + item.size;
                        apply(cfg, e, &item, space.unwrap_or(MEM), Some(at));
                    }
                    None => {
                        e.warn_unplaced(&item);
                        apply(cfg, e, &item, space.unwrap_or(MEM), None);
                    }
                }
            }
        }
    }
}

/// Programs an item at `at`, or records it as having no address (BAR registers written 0, so
/// no stale address is left; decoding stays off for it).
fn apply<C: ConfigAccess + ?Sized, const N: usize, const P: usize>(
    cfg: &Counted<'_, C>,
    e: &mut Enumeration<N, P>,
    item: &Item,
    space: usize,
    at: Option<u64>,
) {
    let base = at.unwrap_or(0);
    match item.target {
        Target::Bar { function, index, kind } => {
            let bdf = e.topology.functions()[function].bdf();
            bars::write_bar(cfg, bdf, reg::BAR0 + 4 * u16::from(index), kind, base);
            if let Some(Some(bar)) =
                e.topology.functions_mut()[function].bars.get_mut(usize::from(index))
            {
                bar.base = base;
            }
            if at.is_none() {
                let placed = &mut e.scratch[function].placed;
                if kind == BarKind::Io {
                    placed.io_missing = true;
                } else {
                    placed.mem_missing = true;
                }
            }
        }
        Target::VfBar { sriov: k, index, kind } => {
            let s = &mut e.sriov[k];
            bars::write_bar(
                cfg,
                s.pf(),
                s.offset() + sriov::reg::VF_BAR0 + 4 * u16::from(index),
                kind,
                base,
            );
            s.set_vf_bar_base(index, base);
        }
        Target::Window { bridge } => {
            e.scratch[bridge].assign.window[space] = base;
        }
    }
}

/// Whether firmware gave any BAR (or VF BAR) below the root an address.
fn any_assigned<const N: usize, const P: usize>(
    e: &Enumeration<N, P>,
    start: usize,
    end: usize,
) -> bool {
    let bars = e.topology.functions()[start..end].iter().flat_map(|f| f.bars.iter().flatten());
    let vf_bars = e
        .sriov
        .iter()
        .filter(|s| usize::from(s.pf_index().0) >= start)
        .flat_map(|s| s.vf_bars().iter().flatten());
    bars.chain(vf_bars).any(|b| b.base != 0)
}

/// Keeping firmware's addresses: reports BARs and VF BAR apertures it left at 0.
fn report_unassigned<const N: usize, const P: usize>(
    e: &mut Enumeration<N, P>,
    start: usize,
    end: usize,
) {
    for i in start..end {
        let f = e.topology.functions()[i];
        for bar in f.bars.iter().flatten().filter(|b| b.base == 0) {
            e.warn(Warning::BarUnassigned {
                bdf: f.bdf(),
                index: bar.index,
                vf: false,
                size: bar.size,
            });
        }
    }
    for k in 0..e.sriov.len() {
        let s = e.sriov[k];
        if usize::from(s.pf_index().0) < start {
            continue;
        }
        for bar in s.vf_bars().iter().flatten().filter(|b| b.base == 0) {
            let size = bar.size.saturating_mul(u64::from(s.total_vfs()));
            e.warn(Warning::BarUnassigned { bdf: s.pf(), index: bar.index, vf: true, size });
        }
    }
}
