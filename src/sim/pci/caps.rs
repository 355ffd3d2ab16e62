//! What a test declares: BARs, capabilities, SR-IOV. The layout code turns these into bytes.

use crate::sim::std;
use std::vec::Vec;

/// Capability IDs the model builds (PCI Code and ID Assignment spec §2 and §3).
pub mod cap_id {
    /// Power Management (legacy).
    pub const PM: u8 = 0x01;
    /// MSI (legacy).
    pub const MSI: u8 = 0x05;
    /// PCI Express (legacy).
    pub const PCIE: u8 = 0x10;
    /// MSI-X (legacy).
    pub const MSIX: u8 = 0x11;
    /// Advanced Error Reporting (extended).
    pub const AER: u16 = 0x0001;
    /// Access Control Services (extended).
    pub const ACS: u16 = 0x000d;
    /// Alternative Routing-ID Interpretation (extended).
    pub const ARI: u16 = 0x000e;
    /// Address Translation Services (extended).
    pub const ATS: u16 = 0x000f;
    /// Single Root I/O Virtualization (extended).
    pub const SRIOV: u16 = 0x0010;
    /// Page Request Interface (extended).
    pub const PRI: u16 = 0x0013;
    /// Process Address Space ID (extended).
    pub const PASID: u16 = 0x001b;
}

/// ACS Capability bits (PCIe Base 6.0 §7.7.11.2); the control register has the same layout.
pub mod acs {
    /// Source Validation.
    pub const SV: u16 = 1 << 0;
    /// Translation Blocking.
    pub const TB: u16 = 1 << 1;
    /// P2P Request Redirect.
    pub const RR: u16 = 1 << 2;
    /// P2P Completion Redirect.
    pub const CR: u16 = 1 << 3;
    /// Upstream Forwarding.
    pub const UF: u16 = 1 << 4;
    /// P2P Egress Control (adds an egress control vector).
    pub const EC: u16 = 1 << 5;
    /// Direct Translated P2P.
    pub const DT: u16 = 1 << 6;
}

/// Every ACS feature except Egress Control: what QEMU's `pcie-root-port` reports (`0x5f`).
pub const ACS_ALL: u16 = acs::SV | acs::TB | acs::RR | acs::CR | acs::UF | acs::DT;

/// What a BAR decodes (PCIe Base 6.0 §7.5.1.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Mem32 {
        /// Prefetchable bit.
        prefetchable: bool,
    },
    /// 64-bit memory: this register and the next one.
    Mem64 {
        /// Prefetchable bit.
        prefetchable: bool,
    },
    /// I/O space.
    Io,
}

/// A BAR: its kind and its power-of-two size. Writing all-ones and reading back gives the size
/// mask with the read-only type bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// What it decodes.
    pub kind: BarKind,
    /// Bytes decoded (a power of two: at least 16 for memory, 4 to 256 for I/O).
    pub size: u64,
}

impl Bar {
    /// 32-bit non-prefetchable memory.
    pub const fn mem32(size: u64) -> Bar {
        Bar { kind: BarKind::Mem32 { prefetchable: false }, size }
    }
    /// 32-bit prefetchable memory.
    pub const fn mem32_prefetchable(size: u64) -> Bar {
        Bar { kind: BarKind::Mem32 { prefetchable: true }, size }
    }
    /// 64-bit memory (takes two BAR registers).
    pub const fn mem64(size: u64, prefetchable: bool) -> Bar {
        Bar { kind: BarKind::Mem64 { prefetchable }, size }
    }
    /// I/O space.
    pub const fn io(size: u64) -> Bar {
        Bar { kind: BarKind::Io, size }
    }
    /// Whether it takes two registers.
    pub const fn is_64(&self) -> bool {
        matches!(self.kind, BarKind::Mem64 { .. })
    }

    /// (value, write mask) of the low and high registers, for an effective `size`.
    pub(super) fn registers(&self, size: u64) -> (u32, u32, u32, u32) {
        let mask = !(size.max(1) - 1);
        match self.kind {
            BarKind::Mem32 { prefetchable } => {
                // CAST: the low 32 bits of the address mask.
                (u32::from(prefetchable) << 3, mask as u32 & !0xf, 0, 0)
            }
            BarKind::Mem64 { prefetchable } => {
                // CAST: the two halves of the 64-bit address mask.
                (0x4 | u32::from(prefetchable) << 3, mask as u32 & !0xf, 0, (mask >> 32) as u32)
            }
            // CAST: the low 32 bits of the address mask.
            BarKind::Io => (0x1, mask as u32 & !0x3, 0, 0),
        }
    }

    pub(super) fn check(&self, what: &str) {
        let ok = self.size.is_power_of_two()
            && match self.kind {
                BarKind::Mem32 { .. } => (16..=1 << 31).contains(&self.size),
                BarKind::Mem64 { .. } => self.size >= 16 && self.size <= 1 << 63,
                // PCIe Base 6.0 §7.5.1.2.1: an I/O BAR decodes at most 256 bytes.
                BarKind::Io => (4..=256).contains(&self.size),
            };
        assert!(
            ok,
            "sim: {what}: BAR size {:#x} is not a valid power of two for {:?}",
            self.size, self.kind
        );
    }
}

/// PCI Express Device/Port Type (PCIe Base 6.0 §7.5.3.2, bits 7:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PortType {
    /// PCI Express Endpoint.
    Endpoint = 0x0,
    /// Legacy PCI Express Endpoint.
    LegacyEndpoint = 0x1,
    /// Root Port of a Root Complex.
    RootPort = 0x4,
    /// Upstream Port of a Switch.
    SwitchUpstream = 0x5,
    /// Downstream Port of a Switch.
    SwitchDownstream = 0x6,
    /// PCI Express to PCI/PCI-X Bridge.
    PcieToPciBridge = 0x7,
    /// PCI/PCI-X to PCI Express Bridge.
    PciToPcieBridge = 0x8,
    /// Root Complex Integrated Endpoint.
    RcIntegratedEndpoint = 0x9,
    /// Root Complex Event Collector.
    RcEventCollector = 0xa,
}

impl PortType {
    /// Whether this is a Downstream Port (Root Port or Switch Downstream Port): the ports that
    /// have a slot, ARI forwarding, and deliver type 0 requests only to Device 0 of their link.
    pub const fn is_downstream_port(self) -> bool {
        matches!(self, PortType::RootPort | PortType::SwitchDownstream)
    }
}

/// The PCI Express capability (PCIe Base 6.0 §7.5.3), version 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieCap {
    /// Device/Port Type.
    pub port_type: PortType,
    /// Slot Implemented (Downstream Ports only); the slot registers exist.
    pub slot: bool,
    /// Hot-Plug Capable and Surprise in Slot Capabilities (with `slot`).
    pub hotplug: bool,
    /// Physical Slot Number in Slot Capabilities.
    pub slot_number: u16,
    /// Device Capabilities 2: ARI Forwarding Supported (Downstream Ports).
    pub ari_forwarding: bool,
    /// Device Capabilities: Function Level Reset capable (writing Initiate FLR resets the
    /// function in the model).
    pub flr: bool,
}

impl PcieCap {
    /// A capability of `port_type`. Downstream ports get a slot (no hot-plug) and ARI
    /// forwarding support, as QEMU's root and downstream ports have.
    pub const fn new(port_type: PortType) -> PcieCap {
        let down = port_type.is_downstream_port();
        PcieCap {
            port_type,
            slot: down,
            hotplug: false,
            slot_number: 0,
            ari_forwarding: down,
            flr: false,
        }
    }
    /// With or without a hot-plug capable slot.
    pub const fn hotplug(mut self, hotplug: bool) -> PcieCap {
        self.slot = self.slot || hotplug;
        self.hotplug = hotplug;
        self
    }
    /// With or without ARI Forwarding Supported.
    pub const fn ari_forwarding(mut self, ari_forwarding: bool) -> PcieCap {
        self.ari_forwarding = ari_forwarding;
        self
    }
    /// With or without FLR.
    pub const fn flr(mut self, flr: bool) -> PcieCap {
        self.flr = flr;
        self
    }
}

/// First VF Offset and VF Stride as the device computes them from NumVFs and ARI Capable
/// Hierarchy (PCIe Base 6.0 §9.3.3.9, §9.3.3.10: they may change when either is written).
pub type VfRouting = fn(num_vfs: u16, ari_capable: bool) -> (u16, u16);

/// The SR-IOV extended capability and the VFs behind it (PCIe Base 6.0 §9.3.3).
#[derive(Clone, Debug)]
pub struct SrIov {
    pub(super) total_vfs: u16,
    pub(super) initial_vfs: u16,
    pub(super) offset: u16,
    pub(super) stride: u16,
    pub(super) routing: Option<VfRouting>,
    pub(super) vf_device: u16,
    pub(super) page_sizes: u32,
    pub(super) vf_bars: [Option<Bar>; 6],
    pub(super) vf_caps: Vec<(Capability, Option<u16>)>,
    pub(super) settle_reads: u32,
    pub(super) function_link: u8,
}

impl SrIov {
    /// `total_vfs` VFs (InitialVFs the same), First VF Offset 1, VF Stride 1, VF Device ID 0,
    /// SupportedPageSizes 0x553 (as igb), no VF BARs, and VFs with a PCIe Endpoint capability
    /// only (every VF has one, PCIe Base 6.0 §9.3.5.1; add others with [`vf_cap`](Self::vf_cap)).
    pub fn new(total_vfs: u16) -> SrIov {
        SrIov {
            total_vfs,
            initial_vfs: total_vfs,
            offset: 1,
            stride: 1,
            routing: None,
            vf_device: 0,
            page_sizes: 0x553,
            vf_bars: [None; 6],
            vf_caps: std::vec![(Capability::Pcie(PcieCap::new(PortType::Endpoint)), None)],
            settle_reads: 0,
            function_link: 0,
        }
    }
    /// InitialVFs.
    pub fn initial_vfs(mut self, n: u16) -> SrIov {
        self.initial_vfs = n;
        self
    }
    /// Fixed First VF Offset and VF Stride.
    pub fn offset_stride(mut self, offset: u16, stride: u16) -> SrIov {
        self.offset = offset;
        self.stride = stride;
        self.routing = None;
        self
    }
    /// Offset and stride recomputed by the device whenever NumVFs or ARI Capable Hierarchy is
    /// written.
    pub fn routing(mut self, routing: VfRouting) -> SrIov {
        self.routing = Some(routing);
        self
    }
    /// VF Device ID (what the SR-IOV capability reports; the VF's own ID registers read 0xffff).
    pub fn vf_device(mut self, device: u16) -> SrIov {
        self.vf_device = device;
        self
    }
    /// Supported Page Sizes (bit n = 4 KiB << n).
    pub fn page_sizes(mut self, mask: u32) -> SrIov {
        self.page_sizes = mask;
        self
    }
    /// VF BAR `index` (one VF's size; the aperture is size x NumVFs).
    pub fn vf_bar(mut self, index: usize, bar: Bar) -> SrIov {
        assert!(index < 6, "sim: VF BAR index {index} > 5");
        self.vf_bars[index] = Some(bar);
        self
    }
    /// Adds a capability to every VF.
    pub fn vf_cap(mut self, cap: Capability) -> SrIov {
        self.vf_caps.push((cap, None));
        self
    }
    /// Adds a capability to every VF at a fixed offset.
    pub fn vf_cap_at(mut self, offset: u16, cap: Capability) -> SrIov {
        self.vf_caps.push((cap, Some(offset)));
        self
    }
    /// VFs without the default PCIe capability (hostile: a spec violation).
    pub fn no_vf_pcie(mut self) -> SrIov {
        self.vf_caps.retain(|(c, _)| !matches!(c, Capability::Pcie(_)));
        self
    }
    /// Configuration reads (of anything in the topology) after VF Enable before the VFs answer,
    /// standing in for the settle time of PCIe Base 6.0 §9.3.3.3.1.
    pub fn settle_reads(mut self, reads: u32) -> SrIov {
        self.settle_reads = reads;
        self
    }
    /// Function Dependency Link.
    pub fn function_link(mut self, link: u8) -> SrIov {
        self.function_link = link;
        self
    }

    /// (offset, stride) for `num_vfs` and ARI Capable Hierarchy.
    pub(super) fn offset_stride_for(&self, num_vfs: u16, ari: bool) -> (u16, u16) {
        self.routing.map_or((self.offset, self.stride), |f| f(num_vfs, ari))
    }
}

/// A capability a test declares on a function; legacy ones go in the chain from the
/// Capabilities Pointer (at 0x40 and up), extended ones in the chain from 0x100.
#[derive(Clone, Debug)]
pub enum Capability {
    /// Power Management (PCI PM 1.2 §3.2), version 3, PMCSR writable.
    Pm,
    /// MSI (PCIe Base 6.0 §7.7.1).
    Msi {
        /// Vectors requestable (1, 2, 4, ... 32).
        vectors: u8,
        /// 64-bit address capable.
        addr64: bool,
        /// Per-vector masking capable.
        per_vector_mask: bool,
    },
    /// MSI-X (PCIe Base 6.0 §7.7.2).
    MsiX {
        /// Entries in the table (1..=2048).
        table_size: u16,
        /// BAR holding the table.
        table_bir: u8,
        /// Offset of the table in that BAR (8-byte aligned).
        table_offset: u32,
        /// BAR holding the PBA.
        pba_bir: u8,
        /// Offset of the PBA in that BAR (8-byte aligned).
        pba_offset: u32,
    },
    /// PCI Express capability.
    Pcie(PcieCap),
    /// Advanced Error Reporting (PCIe Base 6.0 §7.8.4), version 2.
    Aer,
    /// ACS (PCIe Base 6.0 §7.7.11): the capability bits; the control register's matching bits
    /// are writable.
    Acs {
        /// ACS Capability register (see [`acs`]).
        capability: u16,
    },
    /// ARI (PCIe Base 6.0 §7.8.8).
    Ari {
        /// Next Function Number.
        next_function: u8,
    },
    /// ATS (PCIe Base 6.0 §10.5.1): control Enable and STU writable (STU read-only zero in
    /// VFs, which use the PF's).
    Ats {
        /// Invalidate Queue Depth (0 means 32).
        invalidate_queue_depth: u8,
        /// Page Aligned Request.
        page_aligned: bool,
    },
    /// PASID (PCIe Base 6.0 §7.8.9): control Enable and, where supported, Execute and
    /// Privileged Mode Enable writable.
    Pasid {
        /// Execute Permission Supported.
        execute: bool,
        /// Privileged Mode Supported.
        privileged: bool,
        /// Max PASID Width (0..=20).
        max_width: u8,
    },
    /// PRI (PCIe Base 6.0 §10.5.2), with the Stopped/Reset behaviour modelled.
    Pri {
        /// Outstanding Page Request Capacity.
        capacity: u32,
        /// PRG Response PASID Required.
        prg_response_pasid_required: bool,
    },
    /// SR-IOV (physical functions only).
    SrIov(SrIov),
    /// Any legacy capability: `body` follows the ID and next-pointer bytes, read-only.
    RawLegacy {
        /// Capability ID.
        id: u8,
        /// Bytes after the 2-byte header.
        body: Vec<u8>,
    },
    /// Any extended capability: `body` follows the 4-byte header, read-only.
    RawExtended {
        /// Capability ID.
        id: u16,
        /// Capability Version.
        version: u8,
        /// Bytes after the header.
        body: Vec<u8>,
    },
}

impl Capability {
    /// Whether it goes in the extended chain.
    pub const fn is_extended(&self) -> bool {
        !matches!(
            self,
            Capability::Pm
                | Capability::Msi { .. }
                | Capability::MsiX { .. }
                | Capability::Pcie(_)
                | Capability::RawLegacy { .. }
        )
    }

    /// Its capability ID (legacy IDs widened).
    pub fn id(&self) -> u16 {
        match self {
            Capability::Pm => u16::from(cap_id::PM),
            Capability::Msi { .. } => u16::from(cap_id::MSI),
            Capability::MsiX { .. } => u16::from(cap_id::MSIX),
            Capability::Pcie(_) => u16::from(cap_id::PCIE),
            Capability::Aer => cap_id::AER,
            Capability::Acs { .. } => cap_id::ACS,
            Capability::Ari { .. } => cap_id::ARI,
            Capability::Ats { .. } => cap_id::ATS,
            Capability::Pasid { .. } => cap_id::PASID,
            Capability::Pri { .. } => cap_id::PRI,
            Capability::SrIov(_) => cap_id::SRIOV,
            Capability::RawLegacy { id, .. } => u16::from(*id),
            Capability::RawExtended { id, .. } => *id,
        }
    }

    /// Bytes it occupies.
    pub fn len(&self) -> u16 {
        match self {
            Capability::Pm => 8,
            Capability::Msi { addr64, per_vector_mask, .. } => {
                10 + if *addr64 { 4 } else { 0 } + if *per_vector_mask { 10 } else { 0 }
            }
            Capability::MsiX { .. } => 12,
            Capability::Pcie(_) => 0x3c,
            Capability::Aer => 0x48,
            Capability::Acs { capability } => {
                let vector_bits = match capability >> 8 {
                    0 => 256,
                    n => n,
                };
                8 + if capability & acs::EC != 0 { vector_bits.div_ceil(32) * 4 } else { 0 }
            }
            Capability::Ari { .. } | Capability::Ats { .. } | Capability::Pasid { .. } => 8,
            Capability::Pri { .. } => 0x10,
            Capability::SrIov(_) => 0x40,
            // CAST: a body longer than config space is rejected at layout.
            Capability::RawLegacy { body, .. } => 2 + body.len().min(0x1000) as u16,
            // CAST: as above.
            Capability::RawExtended { body, .. } => 4 + body.len().min(0x1000) as u16,
        }
    }

    /// Never empty (the header alone has bytes); present for clippy's `len_without_is_empty`.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// MSI with `vectors` vectors and 64-bit addresses, as edu has.
    pub const fn msi(vectors: u8, addr64: bool) -> Capability {
        Capability::Msi { vectors, addr64, per_vector_mask: false }
    }
    /// MSI-X with `table_size` entries, table at BAR `bir` offset 0 and PBA after it.
    pub const fn msix(table_size: u16, bir: u8) -> Capability {
        let pba = (table_size as u32 * 16 + 0xfff) & !0xfff;
        Capability::MsiX {
            table_size,
            table_bir: bir,
            table_offset: 0,
            pba_bir: bir,
            pba_offset: pba,
        }
    }
    /// ACS with `capability` bits.
    pub const fn acs(capability: u16) -> Capability {
        Capability::Acs { capability }
    }
    /// ARI with Next Function Number `next_function`.
    pub const fn ari(next_function: u8) -> Capability {
        Capability::Ari { next_function }
    }
    /// ATS.
    pub const fn ats(invalidate_queue_depth: u8, page_aligned: bool) -> Capability {
        Capability::Ats { invalidate_queue_depth, page_aligned }
    }
    /// PASID.
    pub const fn pasid(execute: bool, privileged: bool, max_width: u8) -> Capability {
        Capability::Pasid { execute, privileged, max_width }
    }
    /// PRI with `capacity` outstanding requests, PRG Response PASID Required clear.
    pub const fn pri(capacity: u32) -> Capability {
        Capability::Pri { capacity, prg_response_pasid_required: false }
    }
}
