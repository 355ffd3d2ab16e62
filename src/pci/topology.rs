//! The topology snapshot: every function enumeration found, with what isolation groups,
//! aliases, SR-IOV and the IOMMU drivers need to know about it.
//!
//! A snapshot is plain data with a fixed capacity `N` (the library has no heap). Functions refer
//! to their upstream bridge by index, so the snapshot is a tree stored depth-first: a bridge
//! always comes before everything below it. Isolation groups and requester-ID aliases are pure
//! functions of a snapshot.

use heapless::Vec;

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::ecam::FunctionId;

/// Index of a function in a [`Topology`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FunctionIndex(pub u16);

/// What a function is, from its header type and PCI Express capability (PCIe Base 6.0
/// §7.5.3.2, Device/Port Type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FunctionKind {
    /// PCIe endpoint (type 0000b) or legacy endpoint (0001b).
    PcieEndpoint,
    /// Root complex integrated endpoint (1001b).
    RootComplexEndpoint,
    /// Root complex event collector (1010b).
    RootComplexEventCollector,
    /// Root port (0100b).
    RootPort,
    /// Switch upstream port (0101b).
    SwitchUpstream,
    /// Switch downstream port (0110b).
    SwitchDownstream,
    /// PCIe-to-PCI/PCI-X bridge (0111b): requests from below carry secondary-bus:00.0 or the
    /// requester's own ID depending on the transaction; treated as aliasing to sec:00.0.
    PcieToPciBridge,
    /// PCI/PCI-X-to-PCIe bridge (1000b).
    PciToPcieBridge,
    /// A type 0 function without a PCI Express capability (conventional PCI).
    ConventionalEndpoint,
    /// A type 1 function without a PCI Express capability (conventional PCI-to-PCI bridge):
    /// requests from below carry the bridge's own ID.
    ConventionalBridge,
    /// A header type enumeration does not handle (CardBus, reserved); recorded, not entered.
    Other,
}

impl FunctionKind {
    /// Whether the function has a type 1 header with a secondary bus.
    pub const fn is_bridge(self) -> bool {
        matches!(
            self,
            Self::RootPort
                | Self::SwitchUpstream
                | Self::SwitchDownstream
                | Self::PcieToPciBridge
                | Self::PciToPcieBridge
                | Self::ConventionalBridge
        )
    }

    /// Whether the function is PCI Express (has a PCI Express capability).
    pub const fn is_pcie(self) -> bool {
        !matches!(self, Self::ConventionalEndpoint | Self::ConventionalBridge | Self::Other)
    }
}

/// Configuration-space offsets of the capabilities found (0 = absent). Legacy capabilities are
/// in 0x40..0x100, extended ones at 0x100 and above.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Capabilities {
    /// PCI Express (legacy ID 0x10).
    pub pcie: u16,
    /// Power management (0x01).
    pub pm: u16,
    /// MSI (0x05).
    pub msi: u16,
    /// MSI-X (0x11).
    pub msix: u16,
    /// Advanced error reporting (extended 0x0001).
    pub aer: u16,
    /// Access control services (extended 0x000d).
    pub acs: u16,
    /// Alternative routing-ID interpretation (extended 0x000e).
    pub ari: u16,
    /// Address translation services (extended 0x000f).
    pub ats: u16,
    /// Single-root I/O virtualization (extended 0x0010).
    pub sriov: u16,
    /// Page request interface (extended 0x0013).
    pub pri: u16,
    /// Process address space ID (extended 0x001b).
    pub pasid: u16,
}

/// ACS capability and control bits (PCIe Base 6.0 §7.7.11); both halves use the same bit
/// positions for SV, TB, RR, CR, UF, EC, DT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Acs {
    /// ACS Capability register.
    pub capability: u16,
    /// ACS Control register, as found.
    pub control: u16,
}

#[allow(missing_docs, reason = "bit names from the specification")]
impl Acs {
    pub const SOURCE_VALIDATION: u16 = 1 << 0;
    pub const TRANSLATION_BLOCKING: u16 = 1 << 1;
    pub const REQUEST_REDIRECT: u16 = 1 << 2;
    pub const COMPLETION_REDIRECT: u16 = 1 << 3;
    pub const UPSTREAM_FORWARDING: u16 = 1 << 4;
    pub const EGRESS_CONTROL: u16 = 1 << 5;
    pub const DIRECT_TRANSLATED_P2P: u16 = 1 << 6;
}

/// Kind of a BAR (PCIe Base 6.0 §7.5.1.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory.
    Memory32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit memory (occupies this BAR and the next).
    Memory64 {
        /// Prefetchable.
        prefetchable: bool,
    },
}

/// One implemented BAR: where it is and how large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Bar {
    /// BAR register index (0..=5; for SR-IOV VF BARs, the VF BAR index).
    pub index: u8,
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes (a power of two). For a VF BAR: one VF's size.
    pub size: u64,
    /// Address assigned (bus address; 0 if unassigned).
    pub base: u64,
}

/// A bridge's secondary side: the bus numbers it forwards (PCI-to-PCI Bridge spec §3.2.5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BusRange {
    /// Secondary bus.
    pub secondary: u8,
    /// Subordinate bus (highest bus below), `>= secondary`.
    pub subordinate: u8,
}

/// A function of the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Function {
    /// Identity and address.
    pub id: FunctionId,
    /// What it is.
    pub kind: FunctionKind,
    /// The bridge it sits behind; `None` on a root bus.
    pub parent: Option<FunctionIndex>,
    /// For bridges: the bus numbers it forwards.
    pub bus_range: Option<BusRange>,
    /// Capabilities found.
    pub caps: Capabilities,
    /// ACS, if the function has the capability.
    pub acs: Option<Acs>,
    /// Whether function 0 of its device sets the multi-function bit.
    pub multi_function: bool,
    /// Whether the downstream port forwards ARI (DevCap2 ARI Forwarding Supported, §7.5.3.15).
    pub ari_forwarding: bool,
    /// For a VF: its PF. Set by SR-IOV enumeration.
    pub physical_function: Option<FunctionIndex>,
    /// BARs with their sizes and assigned addresses, by register index (a 64-bit BAR fills its
    /// own slot and leaves the next `None`). VFs list their VF BARs.
    pub bars: [Option<Bar>; 6],
}

impl Function {
    /// The function's address.
    pub const fn bdf(&self) -> Bdf {
        self.id.bdf
    }
}

/// Every function found, depth-first, with room for `N`.
#[derive(Clone, Debug, Default)]
pub struct Topology<const N: usize> {
    functions: Vec<Function, N>,
}

impl<const N: usize> Topology<N> {
    /// An empty snapshot.
    pub const fn new() -> Self {
        Self { functions: Vec::new() }
    }

    /// Appends a function; its parent, if any, must already be present (depth-first order).
    pub fn push(&mut self, function: Function) -> Result<FunctionIndex> {
        if let Some(parent) = function.parent
            && usize::from(parent.0) >= self.functions.len()
        {
            return Err(Error::BadReference {
                what: "topology parent index",
                value: u64::from(parent.0),
            });
        }
        let index = u16::try_from(self.functions.len())
            .map_err(|_| Error::CapacityExceeded { what: "topology functions", capacity: N })?;
        self.functions
            .push(function)
            .map_err(|_| Error::CapacityExceeded { what: "topology functions", capacity: N })?;
        Ok(FunctionIndex(index))
    }

    /// The functions, in depth-first order.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// Mutable access, for enumeration and SR-IOV updates.
    pub fn functions_mut(&mut self) -> &mut [Function] {
        &mut self.functions
    }

    /// The function at `index`.
    pub fn get(&self, index: FunctionIndex) -> Option<&Function> {
        self.functions.get(usize::from(index.0))
    }

    /// The function at `bdf`.
    pub fn find(&self, bdf: Bdf) -> Option<FunctionIndex> {
        self.functions
            .iter()
            .position(|f| f.bdf() == bdf)
            .and_then(|i| u16::try_from(i).ok())
            .map(FunctionIndex)
    }

    /// The chain of bridges from `index` up to its root bus, nearest first (bounded by `N`
    /// steps, so a corrupted parent chain cannot loop).
    pub fn upstream(&self, index: FunctionIndex) -> impl Iterator<Item = FunctionIndex> + '_ {
        let mut next = self.get(index).and_then(|f| f.parent);
        let mut steps = 0;
        core::iter::from_fn(move || {
            let current = next?;
            steps += 1;
            if steps > N {
                return None;
            }
            next = self.get(current).and_then(|f| f.parent);
            Some(current)
        })
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// Whether the snapshot is empty.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// Keeps the first `len` functions (enumeration drops a hierarchy it numbers again).
    /// References from the kept ones point only backwards, so they stay valid.
    pub fn truncate(&mut self, len: usize) {
        self.functions.truncate(len);
    }

    /// Removes every function `remove` selects (SR-IOV disable removes a PF's VFs), keeping the
    /// order of the rest and renumbering their `parent` and `physical_function` references.
    /// Returns how many were removed. If a kept function refers to a removed one, nothing is
    /// removed and the answer is [`Error::BadReference`]. Indices held outside the snapshot go
    /// stale for the functions that move down.
    pub fn remove_if(&mut self, mut remove: impl FnMut(&Function) -> bool) -> Result<usize> {
        let mut gone: Vec<bool, N> = Vec::new();
        for f in &self.functions {
            // Same length as `functions`, so it cannot be full.
            let _ = gone.push(remove(f));
        }
        let is_gone = |i: FunctionIndex| gone.get(usize::from(i.0)).copied().unwrap_or(false);
        for (f, _) in self.functions.iter().zip(gone.iter()).filter(|(_, g)| !**g) {
            let refs = [f.parent, f.physical_function];
            if let Some(r) = refs.into_iter().flatten().find(|&r| is_gone(r)) {
                return Err(Error::BadReference {
                    what: "topology reference to a removed function",
                    value: u64::from(r.0),
                });
            }
        }
        // New index of old index i: i minus the removed ones before it.
        let mut new_index: Vec<u16, N> = Vec::new();
        let mut removed = 0u16;
        for (i, &g) in gone.iter().enumerate() {
            // Indices fit u16: `push` refuses a function past u16::MAX. Same length as `gone`.
            let _ = new_index.push(u16::try_from(i).unwrap_or(u16::MAX).saturating_sub(removed));
            removed = removed.saturating_add(u16::from(g));
        }
        let renumber = |r: Option<FunctionIndex>| {
            r.map(|r| FunctionIndex(new_index.get(usize::from(r.0)).copied().unwrap_or(r.0)))
        };
        let mut kept = 0;
        for i in 0..self.functions.len() {
            if gone.get(i).copied().unwrap_or(false) {
                continue;
            }
            let mut f = self.functions[i];
            f.parent = renumber(f.parent);
            f.physical_function = renumber(f.physical_function);
            self.functions[kept] = f;
            kept += 1;
        }
        let count = self.functions.len() - kept;
        self.functions.truncate(kept);
        Ok(count)
    }
}
