//! The builder: functions, bridges and buses declared the way a topology diagram reads.

use crate::sim::std;
use std::string::String;
use std::vec::Vec;

use super::caps::{Bar, Capability, PcieCap, PortType, SrIov};
use super::{Topology, build};

/// A function with a type 0 header, as declared by a test.
#[derive(Clone, Debug)]
pub struct Function {
    pub(super) vendor: u16,
    pub(super) device: u16,
    pub(super) class: u32,
    pub(super) revision: u8,
    pub(super) subsystem: (u16, u16),
    pub(super) bars: [Option<Bar>; 6],
    pub(super) rom: Option<u64>,
    pub(super) caps: Vec<(Capability, Option<u16>)>,
    pub(super) pokes: Vec<(u16, Vec<u8>)>,
    pub(super) name: Option<String>,
    pub(super) multi_function: Option<bool>,
    pub(super) interrupt_pin: u8,
    pub(super) ext_config: Option<bool>,
    pub(super) present: bool,
}

/// A PCI-to-PCI bridge (type 1 header): a root port, a switch port, a PCIe-to-PCI bridge or a
/// conventional PCI bridge. Its secondary side is declared with a closure on
/// [`TopologyBuilder::bridge`] or [`BusBuilder::bridge`].
#[derive(Clone, Debug)]
pub struct Bridge {
    pub(super) f: Function,
    pub(super) io32: Option<bool>,
    pub(super) pref64: Option<bool>,
}

macro_rules! common_methods {
    () => {
        /// Names the function, for [`Topology::find`] and the [`Snapshot`](super::Snapshot).
        pub fn name(mut self, name: &str) -> Self {
            self.f_mut().name = Some(name.into());
            self
        }
        /// Vendor and Device ID.
        pub fn id(mut self, vendor: u16, device: u16) -> Self {
            self.f_mut().vendor = vendor;
            self.f_mut().device = device;
            self
        }
        /// Revision ID.
        pub fn revision(mut self, revision: u8) -> Self {
            self.f_mut().revision = revision;
            self
        }
        /// Subsystem Vendor ID and Subsystem ID (type 0 only).
        pub fn subsystem(mut self, vendor: u16, device: u16) -> Self {
            self.f_mut().subsystem = (vendor, device);
            self
        }
        /// BAR `index` (0-5 for functions, 0-1 for bridges; a 64-bit BAR also takes `index + 1`).
        pub fn bar(mut self, index: usize, bar: Bar) -> Self {
            assert!(index < 6, "sim: BAR index {index} > 5");
            self.f_mut().bars[index] = Some(bar);
            self
        }
        /// An Expansion ROM BAR of `size` bytes (a power of two, at least 2 KiB).
        pub fn rom(mut self, size: u64) -> Self {
            self.f_mut().rom = Some(size);
            self
        }
        /// Appends a capability to its chain, placed after the previous one.
        pub fn cap(mut self, cap: Capability) -> Self {
            self.f_mut().caps.push((cap, None));
            self
        }
        /// Appends a capability at a fixed offset (4-byte aligned; the first extended one
        /// must be at 0x100).
        pub fn cap_at(mut self, offset: u16, cap: Capability) -> Self {
            self.f_mut().caps.push((cap, Some(offset)));
            self
        }
        /// Replaces the PCI Express capability (or adds one, first in the chain).
        pub fn pcie(mut self, pcie: PcieCap) -> Self {
            let caps = &mut self.f_mut().caps;
            match caps.iter_mut().find(|(c, _)| matches!(c, Capability::Pcie(_))) {
                Some(slot) => slot.0 = Capability::Pcie(pcie),
                None => caps.insert(0, (Capability::Pcie(pcie), None)),
            }
            self
        }
        /// Removes the PCI Express capability: a conventional PCI function (256-byte config
        /// space) or bridge.
        pub fn no_pcie(mut self) -> Self {
            self.f_mut().caps.retain(|(c, _)| !matches!(c, Capability::Pcie(_)));
            self
        }
        /// Adds Power Management.
        pub fn pm(self) -> Self {
            self.cap(Capability::Pm)
        }
        /// Adds MSI.
        pub fn msi(self, vectors: u8, addr64: bool) -> Self {
            self.cap(Capability::msi(vectors, addr64))
        }
        /// Adds MSI-X with `table_size` entries in BAR `bir`.
        pub fn msix(self, table_size: u16, bir: u8) -> Self {
            self.cap(Capability::msix(table_size, bir))
        }
        /// Adds AER.
        pub fn aer(self) -> Self {
            self.cap(Capability::Aer)
        }
        /// Adds ACS with these capability bits (see [`acs`](super::acs)).
        pub fn acs(self, capability: u16) -> Self {
            self.cap(Capability::acs(capability))
        }
        /// Adds ARI with Next Function Number `next_function`.
        pub fn ari(self, next_function: u8) -> Self {
            self.cap(Capability::ari(next_function))
        }
        /// Adds ATS.
        pub fn ats(self, invalidate_queue_depth: u8, page_aligned: bool) -> Self {
            self.cap(Capability::ats(invalidate_queue_depth, page_aligned))
        }
        /// Adds PASID.
        pub fn pasid(self, execute: bool, privileged: bool, max_width: u8) -> Self {
            self.cap(Capability::pasid(execute, privileged, max_width))
        }
        /// Adds PRI with `capacity` outstanding page requests.
        pub fn pri(self, capacity: u32) -> Self {
            self.cap(Capability::pri(capacity))
        }
        /// Raw bytes written over the built image (and its reset image): hostile layouts.
        pub fn poke(mut self, offset: u16, bytes: &[u8]) -> Self {
            self.f_mut().pokes.push((offset, bytes.into()));
            self
        }
        /// Forces the multi-function bit (by default it is set on every function of a device
        /// that has more than one).
        pub fn multi_function(mut self, multi: bool) -> Self {
            self.f_mut().multi_function = Some(multi);
            self
        }
        /// Interrupt Pin (0 none, 1 INTA ... 4 INTD).
        pub fn interrupt_pin(mut self, pin: u8) -> Self {
            self.f_mut().interrupt_pin = pin;
            self
        }
        /// Forces 4 KiB (true) or 256 bytes (false) of config space; by default 4 KiB exactly
        /// when the function has a PCI Express capability.
        pub fn ext_config(mut self, ext: bool) -> Self {
            self.f_mut().ext_config = Some(ext);
            self
        }
        /// Whether the function is present at start (an empty hot-plug slot: `false`; see
        /// [`Topology::set_present`]).
        pub fn present(mut self, present: bool) -> Self {
            self.f_mut().present = present;
            self
        }
    };
}

impl Function {
    fn f_mut(&mut self) -> &mut Function {
        self
    }

    fn new(vendor: u16, device: u16, class: u32) -> Function {
        Function {
            vendor,
            device,
            class,
            revision: 0,
            subsystem: (0, 0),
            bars: [None; 6],
            rom: None,
            caps: Vec::new(),
            pokes: Vec::new(),
            name: None,
            multi_function: None,
            interrupt_pin: 1,
            ext_config: None,
            present: true,
        }
    }

    /// A PCI Express Endpoint (with a PCIe capability) of `class` (base, sub-class, prog-if).
    pub fn endpoint(vendor: u16, device: u16, class: u32) -> Function {
        Function::new(vendor, device, class).pcie(PcieCap::new(PortType::Endpoint))
    }

    /// A Root Complex Integrated Endpoint.
    pub fn rc_integrated(vendor: u16, device: u16, class: u32) -> Function {
        Function::new(vendor, device, class).pcie(PcieCap::new(PortType::RcIntegratedEndpoint))
    }

    /// A conventional PCI function: no PCIe capability, 256 bytes of config space (QEMU's edu).
    pub fn pci(vendor: u16, device: u16, class: u32) -> Function {
        Function::new(vendor, device, class)
    }

    /// A host bridge (class 060000), conventional, no interrupt pin (QEMU's q35 MCH, 8086:29c0).
    pub fn host_bridge(vendor: u16, device: u16) -> Function {
        Function::new(vendor, device, 0x06_0000).interrupt_pin(0)
    }

    /// QEMU's `edu` (1234:11e8 rev 0x10, class 00ff00, BAR0 1 MiB 32-bit, MSI with one vector
    /// and 64-bit addresses, conventional PCI).
    pub fn edu() -> Function {
        Function::pci(0x1234, 0x11e8, 0x00_ff00)
            .revision(0x10)
            .bar(0, Bar::mem32(1 << 20))
            .msi(1, true)
            .name("edu")
    }

    /// Adds SR-IOV to the extended chain.
    pub fn sriov(self, sriov: SrIov) -> Function {
        self.cap(Capability::SrIov(sriov))
    }

    /// Adds SR-IOV at a fixed offset.
    pub fn sriov_at(self, offset: u16, sriov: SrIov) -> Function {
        self.cap_at(offset, Capability::SrIov(sriov))
    }

    /// Sets FLR capable in the PCIe capability (writing Initiate FLR then resets the function).
    pub fn flr(mut self) -> Function {
        for (c, _) in &mut self.caps {
            if let Capability::Pcie(p) = c {
                p.flr = true;
            }
        }
        self
    }

    common_methods!();
}

impl Bridge {
    fn f_mut(&mut self) -> &mut Function {
        &mut self.f
    }

    fn pcie_mut(&mut self) -> Option<&mut PcieCap> {
        self.f.caps.iter_mut().find_map(|(c, _)| match c {
            Capability::Pcie(p) => Some(p),
            _ => None,
        })
    }

    fn new(vendor: u16, device: u16, pcie: Option<PortType>) -> Bridge {
        let mut f = Function::new(vendor, device, 0x06_0400).interrupt_pin(0);
        if let Some(t) = pcie {
            f = f.pcie(PcieCap::new(t));
        }
        // QEMU's bridges: 16-bit I/O window, 64-bit prefetchable window.
        Bridge { f, io32: Some(false), pref64: Some(true) }
    }

    /// A PCIe Root Port as QEMU's `pcie-root-port` (1b36:000c): a slot, ARI forwarding, AER at
    /// 0x100; add ACS with [`acs`](Self::acs) (QEMU's lands at 0x148 with value 0x5f).
    pub fn root_port() -> Bridge {
        Bridge::new(0x1b36, 0x000c, Some(PortType::RootPort)).aer()
    }

    /// A Switch Upstream Port (QEMU's `x3130-upstream`, 104c:8232).
    pub fn switch_upstream() -> Bridge {
        Bridge::new(0x104c, 0x8232, Some(PortType::SwitchUpstream)).msi(1, true).aer()
    }

    /// A Switch Downstream Port (QEMU's `xio3130-downstream`, 104c:8233): a slot, ARI
    /// forwarding, AER, no ACS.
    pub fn switch_downstream() -> Bridge {
        Bridge::new(0x104c, 0x8233, Some(PortType::SwitchDownstream)).msi(1, true).aer()
    }

    /// A PCIe-to-PCI bridge (QEMU's `pcie-pci-bridge`, 1b36:000e): conventional PCI below, so
    /// requests from below carry the alias secondary-bus:00.0; no ACS.
    pub fn pcie_to_pci() -> Bridge {
        Bridge::new(0x1b36, 0x000e, Some(PortType::PcieToPciBridge)).msi(1, true).aer()
    }

    /// A conventional PCI-to-PCI bridge without a PCIe capability (QEMU's `pci-bridge`,
    /// 1b36:0001): requests from below carry the bridge's own ID.
    pub fn pci() -> Bridge {
        Bridge::new(0x1b36, 0x0001, None).msi(1, true)
    }

    /// I/O window: `None` none (registers read 0), `Some(false)` 16-bit, `Some(true)` 32-bit.
    pub fn io_window(mut self, window: Option<bool>) -> Bridge {
        self.io32 = window;
        self
    }

    /// Prefetchable window: `None` none, `Some(false)` 32-bit, `Some(true)` 64-bit.
    pub fn prefetchable_window(mut self, window: Option<bool>) -> Bridge {
        self.pref64 = window;
        self
    }

    /// Whether the port's slot is hot-plug capable.
    pub fn hotplug(mut self, hotplug: bool) -> Bridge {
        if let Some(p) = self.pcie_mut() {
            p.slot |= hotplug;
            p.hotplug = hotplug;
        }
        self
    }

    /// Physical Slot Number in the port's Slot Capabilities (QEMU's `slot=` property).
    pub fn slot_number(mut self, slot: u16) -> Bridge {
        if let Some(p) = self.pcie_mut() {
            p.slot_number = slot;
        }
        self
    }

    /// Whether the port supports ARI forwarding (DevCap2).
    pub fn ari_forwarding(mut self, supported: bool) -> Bridge {
        if let Some(p) = self.pcie_mut() {
            p.ari_forwarding = supported;
        }
        self
    }

    common_methods!();
}

/// What sits at one device/function slot of a bus.
#[derive(Clone, Debug)]
pub(super) enum Item {
    Function(Function),
    Bridge(Bridge, BusBuilder),
}

/// One slot of a bus.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) dev: u8,
    pub(super) func: u8,
    pub(super) item: Item,
}

/// The devices on one bus (a bridge's secondary side).
#[derive(Clone, Debug, Default)]
pub struct BusBuilder {
    pub(super) slots: Vec<Slot>,
}

impl BusBuilder {
    /// Puts `function` at `dev.func` of this bus.
    pub fn device(mut self, dev: u8, func: u8, function: Function) -> BusBuilder {
        self.slots.push(Slot { dev, func, item: Item::Function(function) });
        self
    }

    /// Puts `bridge` at `dev.func` of this bus, with `below` declaring its secondary bus.
    pub fn bridge(
        mut self,
        dev: u8,
        func: u8,
        bridge: Bridge,
        below: impl FnOnce(BusBuilder) -> BusBuilder,
    ) -> BusBuilder {
        let bus = below(BusBuilder::default());
        self.slots.push(Slot { dev, func, item: Item::Bridge(bridge, bus) });
        self
    }
}

/// One segment (PCI domain) being declared.
#[derive(Clone, Debug)]
pub(super) struct SegmentSpec {
    pub(super) number: u16,
    pub(super) root_bus: u8,
    pub(super) bus_range: (u8, u8),
    pub(super) bus: BusBuilder,
}

/// Builds a [`Topology`]; see [`Topology::builder`].
#[derive(Clone, Debug)]
pub struct TopologyBuilder {
    pub(super) segments: Vec<SegmentSpec>,
    pub(super) current: usize,
    pub(super) ari_rule: bool,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            segments: std::vec![SegmentSpec {
                number: 0,
                root_bus: 0,
                bus_range: (0, 255),
                bus: BusBuilder::default()
            }],
            current: 0,
            ari_rule: true,
        }
    }
}

impl TopologyBuilder {
    fn seg(&mut self) -> &mut SegmentSpec {
        &mut self.segments[self.current]
    }

    /// Selects segment `number` (created on first use, root bus 0); later calls declare into it.
    pub fn segment(mut self, number: u16) -> TopologyBuilder {
        match self.segments.iter().position(|s| s.number == number) {
            Some(i) => self.current = i,
            None => {
                self.segments.push(SegmentSpec {
                    number,
                    root_bus: 0,
                    bus_range: (0, 255),
                    bus: BusBuilder::default(),
                });
                self.current = self.segments.len() - 1;
            }
        }
        self
    }

    /// The root bus number of the current segment (default 0).
    pub fn root_bus(mut self, bus: u8) -> TopologyBuilder {
        self.seg().root_bus = bus;
        self
    }

    /// The buses the current segment's ECAM decodes (default 0-255); accesses outside read
    /// all-ones (QEMU virt with `highmem-ecam=off` decodes 0-15).
    pub fn bus_range(mut self, start: u8, end: u8) -> TopologyBuilder {
        self.seg().bus_range = (start, end);
        self
    }

    /// Puts `function` at `dev.func` of the current segment's root bus.
    pub fn device(mut self, dev: u8, func: u8, function: Function) -> TopologyBuilder {
        let bus = core::mem::take(&mut self.seg().bus);
        self.seg().bus = bus.device(dev, func, function);
        self
    }

    /// Puts `bridge` at `dev.func` of the current segment's root bus, with `below` declaring
    /// its secondary bus.
    pub fn bridge(
        mut self,
        dev: u8,
        func: u8,
        bridge: Bridge,
        below: impl FnOnce(BusBuilder) -> BusBuilder,
    ) -> TopologyBuilder {
        let bus = core::mem::take(&mut self.seg().bus);
        self.seg().bus = bus.bridge(dev, func, bridge, below);
        self
    }

    /// Whether a Root Port or Switch Downstream Port with ARI Forwarding Enable clear answers
    /// type 0 requests to device numbers other than 0 with Unsupported Request (PCIe Base 6.0
    /// §7.3.1; default true, as hardware does). QEMU does not enforce it: pass false to mimic.
    pub fn ari_forwarding_rule(mut self, enforce: bool) -> TopologyBuilder {
        self.ari_rule = enforce;
        self
    }

    /// The topology. Panics on a declaration that cannot exist (two functions in one slot, a
    /// capability that does not fit); hostile layouts are made with `poke`.
    pub fn build(self) -> Topology {
        build(self)
    }
}
