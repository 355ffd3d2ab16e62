//! DMAR: the DMA Remapping Reporting table that describes Intel VT-d hardware (Intel VT-d
//! specification 4.x/5.x chapter 8, "BIOS Considerations").

use core::fmt;

use super::bytes::{record, u8_at, u16_at, u32_at, u64_at};
use super::sdt::{SdtHeader, checked_table};
use crate::addr::{Bdf, PhysAddr};
use crate::error::{Error, Result};

/// SDT header, host address width, flags, 10 reserved bytes (VT-d §8.1).
const DMAR_HEADER_LEN: usize = 48;
/// Every remapping structure starts with {type u16, length u16} (VT-d §8.2).
const STRUCTURE_HEADER_LEN: usize = 4;
/// {type, length, flags, reserved, enumeration ID, start bus}; the path follows (VT-d §8.3.1).
const SCOPE_HEADER_LEN: usize = 6;

/// A validated DMAR table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dmar<'a> {
    header: SdtHeader<'a>,
    table: &'a [u8],
}

impl<'a> Dmar<'a> {
    /// Flags bit 0: the platform supports interrupt remapping.
    pub const INTR_REMAP: u8 = 1 << 0;
    /// Flags bit 1: firmware asks the OS not to enable x2APIC mode.
    pub const X2APIC_OPT_OUT: u8 = 1 << 1;
    /// Flags bit 2: firmware initialized DMA protection and the platform opts in to keeping it
    /// on across the hand-off (VT-d §8.1, Kernel DMA protection).
    pub const DMA_CTRL_PLATFORM_OPT_IN: u8 = 1 << 2;

    /// Validates the table (header, checksum, and the 12 DMAR-specific header bytes). The
    /// remapping structures are checked as [`structures`](Self::structures) reaches them.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let (header, table) = checked_table(bytes, Some(b"DMAR"), "DMAR")?;
        if table.len() < DMAR_HEADER_LEN {
            return Err(Error::Truncated { what: "DMAR", len: table.len(), need: DMAR_HEADER_LEN });
        }
        Ok(Self { header, table })
    }

    /// The table header.
    pub fn header(&self) -> SdtHeader<'a> {
        self.header
    }

    /// Maximum DMA physical address width in bits (the table stores width - 1).
    pub fn host_address_width(&self) -> u32 {
        u32::from(u8_at(self.table, 36)) + 1
    }

    /// The raw flags byte (see the associated constants).
    pub fn flags(&self) -> u8 {
        u8_at(self.table, 37)
    }

    /// Whether the platform supports interrupt remapping ([`INTR_REMAP`](Self::INTR_REMAP)).
    pub fn interrupt_remapping(&self) -> bool {
        self.flags() & Self::INTR_REMAP != 0
    }

    /// Whether firmware asks not to enable x2APIC ([`X2APIC_OPT_OUT`](Self::X2APIC_OPT_OUT)).
    pub fn x2apic_opt_out(&self) -> bool {
        self.flags() & Self::X2APIC_OPT_OUT != 0
    }

    /// Whether DMA protection must stay on across the hand-off
    /// ([`DMA_CTRL_PLATFORM_OPT_IN`](Self::DMA_CTRL_PLATFORM_OPT_IN)).
    pub fn dma_ctrl_platform_opt_in(&self) -> bool {
        self.flags() & Self::DMA_CTRL_PLATFORM_OPT_IN != 0
    }

    /// The remapping structures, in table order.
    pub fn structures(&self) -> RemappingStructures<'a> {
        RemappingStructures { table: self.table, pos: DMAR_HEADER_LEN, done: false }
    }
}

impl fmt::Debug for Dmar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dmar")
            .field("host_address_width", &self.host_address_width())
            .field("flags", &format_args!("{:#x}", self.flags()))
            .finish()
    }
}

/// One remapping structure of the DMAR (VT-d §8.2, Table 8-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemappingStructure<'a> {
    /// DMA Remapping Hardware Unit Definition (type 0): one VT-d unit.
    Drhd(Drhd<'a>),
    /// Reserved Memory Region Reporting (type 1): memory some devices DMA to from boot on.
    Rmrr(Rmrr<'a>),
    /// Root Port ATS Capability Reporting (type 2).
    Atsr(Atsr<'a>),
    /// Remapping Hardware Static Affinity (type 3): the NUMA node of a VT-d unit.
    Rhsa(Rhsa<'a>),
    /// ACPI Name-space Device Declaration (type 4).
    Andd(Andd<'a>),
    /// SoC Integrated Address Translation Cache reporting (type 5).
    Satc(Satc<'a>),
    /// SoC Integrated Device Property reporting (type 6, VT-d 4.1 and later).
    Sidp(Sidp<'a>),
    /// A type this reader does not know; skipped by its length.
    Unknown {
        /// The structure type.
        kind: u16,
        /// Its length in bytes.
        length: u16,
    },
}

/// Iterator over the remapping structures of a DMAR (see [`Dmar::structures`]).
///
/// A structure shorter than its fixed part (zero included) is [`Error::BadLength`]; one that runs
/// past the table is [`Error::LengthOverrun`]. Iteration stops after the first error.
#[derive(Clone, Debug)]
pub struct RemappingStructures<'a> {
    table: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> RemappingStructures<'a> {
    fn read(&self) -> Result<RemappingStructure<'a>> {
        let available = self.table.len().saturating_sub(self.pos);
        if available < STRUCTURE_HEADER_LEN {
            return Err(Error::Truncated {
                what: "DMAR remapping structure",
                len: available,
                need: STRUCTURE_HEADER_LEN,
            });
        }
        let kind = u16_at(self.table, self.pos);
        let length = u16_at(self.table, self.pos.saturating_add(2));
        let bytes = record(
            self.table,
            self.pos,
            usize::from(length),
            STRUCTURE_HEADER_LEN,
            "DMAR remapping structure",
            0,
        )?;
        let (what, min_len) = match kind {
            0 => ("DMAR DRHD", 16),
            1 => ("DMAR RMRR", 24),
            2 => ("DMAR ATSR", 8),
            3 => ("DMAR RHSA", 20),
            4 => ("DMAR ANDD", 8),
            5 => ("DMAR SATC", 8),
            6 => ("DMAR SIDP", 8),
            _ => return Ok(RemappingStructure::Unknown { kind, length }),
        };
        if bytes.len() < min_len {
            return Err(Error::BadLength { what, offset: self.pos, length: bytes.len() });
        }
        let body = Body { bytes, offset: self.pos };
        Ok(match kind {
            0 => RemappingStructure::Drhd(Drhd(body)),
            1 => {
                let rmrr = Rmrr(body);
                if rmrr.limit() < rmrr.base() {
                    return Err(Error::InvalidField {
                        what: "DMAR RMRR limit (below base)",
                        value: rmrr.limit().0,
                    });
                }
                RemappingStructure::Rmrr(rmrr)
            }
            2 => RemappingStructure::Atsr(Atsr(body)),
            3 => RemappingStructure::Rhsa(Rhsa(body)),
            4 => RemappingStructure::Andd(Andd(body)),
            5 => RemappingStructure::Satc(Satc(body)),
            _ => RemappingStructure::Sidp(Sidp(body)),
        })
    }
}

impl<'a> Iterator for RemappingStructures<'a> {
    type Item = Result<RemappingStructure<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.table.len() {
            return None;
        }
        let result = self.read();
        match &result {
            // `read` checked the length is at least the 4-byte header and inside the table.
            Ok(_) => {
                self.pos = self
                    .pos
                    .saturating_add(usize::from(u16_at(self.table, self.pos.saturating_add(2))))
            }
            Err(_) => self.done = true,
        }
        Some(result)
    }
}

/// The bytes of one remapping structure (at least its fixed part) and its offset in the table.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Body<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Body<'a> {
    fn scopes(&self, first: usize, segment: u16) -> DeviceScopes<'a> {
        DeviceScopes { structure: *self, pos: first, segment, done: false }
    }
}

impl fmt::Debug for Body<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes at {:#x}", self.bytes.len(), self.offset)
    }
}

/// DMA Remapping Hardware Unit Definition: one VT-d remapping unit (VT-d §8.3).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Drhd<'a>(Body<'a>);

impl<'a> Drhd<'a> {
    /// Flags bit 0: the unit covers every PCI device of its segment not listed under another
    /// unit; its device scopes then list only IOAPICs and HPETs.
    pub const INCLUDE_PCI_ALL: u8 = 1 << 0;

    /// The raw flags byte.
    pub fn flags(&self) -> u8 {
        u8_at(self.0.bytes, 4)
    }

    /// Whether the unit covers all remaining devices ([`INCLUDE_PCI_ALL`](Self::INCLUDE_PCI_ALL)).
    pub fn include_pci_all(&self) -> bool {
        self.flags() & Self::INCLUDE_PCI_ALL != 0
    }

    /// The raw 4-bit size field: the register set is 2^size 4-KiB pages.
    pub fn size_field(&self) -> u8 {
        u8_at(self.0.bytes, 5) & 0xf
    }

    /// Bytes of the register set to map (`4 KiB << size_field`; 4 KiB on tables that predate the
    /// field, which left it 0).
    pub fn register_set_size(&self) -> u64 {
        1 << (u32::from(self.size_field()) + 12)
    }

    /// PCI segment of the devices the unit covers.
    pub fn segment(&self) -> u16 {
        u16_at(self.0.bytes, 6)
    }

    /// Physical address of the unit's registers.
    pub fn register_base(&self) -> PhysAddr {
        PhysAddr(u64_at(self.0.bytes, 8))
    }

    /// The devices (or IOAPICs and HPETs) behind this unit.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.0.scopes(16, self.segment())
    }
}

impl fmt::Debug for Drhd<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drhd")
            .field("flags", &self.flags())
            .field("segment", &self.segment())
            .field("register_base", &self.register_base())
            .field("register_set_size", &self.register_set_size())
            .finish()
    }
}

/// Reserved Memory Region Reporting: memory that the listed devices may DMA to at any time, so it
/// must stay identity-mapped for them (VT-d §8.4).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rmrr<'a>(Body<'a>);

impl<'a> Rmrr<'a> {
    /// PCI segment of the listed devices.
    pub fn segment(&self) -> u16 {
        u16_at(self.0.bytes, 6)
    }

    /// First byte of the region (the spec requires 4-KiB alignment; not enforced here, as
    /// shipped firmware gets it wrong).
    pub fn base(&self) -> PhysAddr {
        PhysAddr(u64_at(self.0.bytes, 8))
    }

    /// Last byte of the region (inclusive; at least [`base`](Self::base), checked on parse).
    pub fn limit(&self) -> PhysAddr {
        PhysAddr(u64_at(self.0.bytes, 16))
    }

    /// The devices that use the region.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.0.scopes(24, self.segment())
    }
}

impl fmt::Debug for Rmrr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rmrr")
            .field("segment", &self.segment())
            .field("base", &self.base())
            .field("limit", &self.limit())
            .finish()
    }
}

/// Root Port ATS Capability Reporting: root ports that support Address Translation Services
/// (VT-d §8.5).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Atsr<'a>(Body<'a>);

impl<'a> Atsr<'a> {
    /// Flags bit 0: every root port of the segment supports ATS; the scopes are then empty.
    pub const ALL_PORTS: u8 = 1 << 0;

    /// The raw flags byte.
    pub fn flags(&self) -> u8 {
        u8_at(self.0.bytes, 4)
    }

    /// Whether all root ports of the segment support ATS ([`ALL_PORTS`](Self::ALL_PORTS)).
    pub fn all_ports(&self) -> bool {
        self.flags() & Self::ALL_PORTS != 0
    }

    /// PCI segment.
    pub fn segment(&self) -> u16 {
        u16_at(self.0.bytes, 6)
    }

    /// The root ports (bridge scopes) that support ATS.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.0.scopes(8, self.segment())
    }
}

impl fmt::Debug for Atsr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Atsr")
            .field("flags", &self.flags())
            .field("segment", &self.segment())
            .finish()
    }
}

/// Remapping Hardware Static Affinity: the proximity domain of a VT-d unit (VT-d §8.6).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rhsa<'a>(Body<'a>);

impl Rhsa<'_> {
    /// Register base of the [`Drhd`] this applies to.
    pub fn register_base(&self) -> PhysAddr {
        PhysAddr(u64_at(self.0.bytes, 8))
    }

    /// ACPI proximity domain (as in SRAT) of that unit.
    pub fn proximity_domain(&self) -> u32 {
        u32_at(self.0.bytes, 16)
    }
}

impl fmt::Debug for Rhsa<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rhsa")
            .field("register_base", &self.register_base())
            .field("proximity_domain", &self.proximity_domain())
            .finish()
    }
}

/// ACPI Name-space Device Declaration: names an ACPI device that a namespace-device scope
/// (type 5) refers to by its device number (VT-d §8.7).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Andd<'a>(Body<'a>);

impl<'a> Andd<'a> {
    /// The number that device scopes use as enumeration ID.
    pub fn acpi_device_number(&self) -> u8 {
        u8_at(self.0.bytes, 7)
    }

    /// The device's full ACPI namespace path (ASCII, for example `\_SB.PCI0.I2C0`), without the
    /// terminating NUL.
    pub fn object_name(&self) -> &'a [u8] {
        let name = self.0.bytes.get(8..).unwrap_or_default();
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        name.get(..end).unwrap_or_default()
    }
}

impl fmt::Debug for Andd<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Andd")
            .field("acpi_device_number", &self.acpi_device_number())
            .field("object_name", &format_args!("{}", self.object_name().escape_ascii()))
            .finish()
    }
}

/// SoC Integrated Address Translation Cache: SoC devices with an ATC (VT-d §8.8).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Satc<'a>(Body<'a>);

impl<'a> Satc<'a> {
    /// Flags bit 0: the listed devices only work correctly with ATS enabled.
    pub const ATC_REQUIRED: u8 = 1 << 0;

    /// The raw flags byte.
    pub fn flags(&self) -> u8 {
        u8_at(self.0.bytes, 4)
    }

    /// Whether the devices need ATS enabled ([`ATC_REQUIRED`](Self::ATC_REQUIRED)).
    pub fn atc_required(&self) -> bool {
        self.flags() & Self::ATC_REQUIRED != 0
    }

    /// PCI segment.
    pub fn segment(&self) -> u16 {
        u16_at(self.0.bytes, 6)
    }

    /// The devices.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.0.scopes(8, self.segment())
    }
}

impl fmt::Debug for Satc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Satc")
            .field("flags", &self.flags())
            .field("segment", &self.segment())
            .finish()
    }
}

/// SoC Integrated Device Property reporting: SoC devices whose properties are in the flags of
/// their device scopes (VT-d 4.1 §8.9).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sidp<'a>(Body<'a>);

impl<'a> Sidp<'a> {
    /// PCI segment.
    pub fn segment(&self) -> u16 {
        u16_at(self.0.bytes, 6)
    }

    /// The devices; their properties are in [`DeviceScope::flags`].
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.0.scopes(8, self.segment())
    }
}

impl fmt::Debug for Sidp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sidp").field("segment", &self.segment()).finish()
    }
}

/// What a device scope names (VT-d §8.3.1, Table 8-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DeviceScopeKind {
    /// A PCI endpoint (type 1).
    Endpoint,
    /// A PCI-PCI bridge and everything below it (type 2).
    Bridge,
    /// An I/O APIC (type 3); the enumeration ID is its APIC ID.
    IoApic,
    /// An MSI-capable HPET (type 4); the enumeration ID is its HPET number.
    Hpet,
    /// An ACPI namespace device (type 5); the enumeration ID is an [`Andd`] device number.
    AcpiNamespace,
    /// A reserved type, kept so the caller can log it.
    Unknown(u8),
}

impl DeviceScopeKind {
    fn from_raw(kind: u8) -> Self {
        match kind {
            1 => Self::Endpoint,
            2 => Self::Bridge,
            3 => Self::IoApic,
            4 => Self::Hpet,
            5 => Self::AcpiNamespace,
            other => Self::Unknown(other),
        }
    }
}

/// Iterator over the device scopes of one remapping structure.
///
/// A scope shorter than its 6-byte header (zero included) or, for a known type, with an empty
/// path is [`Error::BadLength`]; one running past its structure is [`Error::LengthOverrun`]; an
/// odd path length is [`Error::InvalidField`]; a path element with device > 31 or function > 7
/// is [`Error::InvalidBdf`]. Scopes of reserved types are yielded without path checks.
/// Iteration stops after the first error.
#[derive(Clone, Debug)]
pub struct DeviceScopes<'a> {
    structure: Body<'a>,
    pos: usize,
    segment: u16,
    done: bool,
}

impl<'a> DeviceScopes<'a> {
    fn read(&self) -> Result<DeviceScope<'a>> {
        let bytes = self.structure.bytes;
        let available = bytes.len().saturating_sub(self.pos);
        if available < 2 {
            return Err(Error::Truncated { what: "DMAR device scope", len: available, need: 2 });
        }
        let kind = DeviceScopeKind::from_raw(u8_at(bytes, self.pos));
        let length = usize::from(u8_at(bytes, self.pos.saturating_add(1)));
        let scope = record(
            bytes,
            self.pos,
            length,
            SCOPE_HEADER_LEN,
            "DMAR device scope",
            self.structure.offset,
        )?;
        let scope = DeviceScope { bytes: scope, segment: self.segment };
        if !matches!(kind, DeviceScopeKind::Unknown(_)) {
            let offset = self.structure.offset.saturating_add(self.pos);
            let path_len = length.saturating_sub(SCOPE_HEADER_LEN);
            if path_len == 0 {
                return Err(Error::BadLength {
                    what: "DMAR device scope (empty path)",
                    offset,
                    length,
                });
            }
            if path_len % 2 != 0 {
                // CAST: a u8 length minus 6.
                return Err(Error::InvalidField {
                    what: "DMAR device scope path length",
                    value: path_len as u64,
                });
            }
            for (dev, func) in scope.path() {
                Bdf::new(self.segment, scope.start_bus(), dev, func)?;
            }
        }
        Ok(scope)
    }
}

impl<'a> Iterator for DeviceScopes<'a> {
    type Item = Result<DeviceScope<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.structure.bytes.len() {
            return None;
        }
        let result = self.read();
        match &result {
            Ok(scope) => self.pos = self.pos.saturating_add(scope.bytes.len()),
            Err(_) => self.done = true,
        }
        Some(result)
    }
}

/// One device scope: a device named by a start bus and a path of (device, function) hops through
/// PCI-PCI bridges (VT-d §8.3.1).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceScope<'a> {
    bytes: &'a [u8],
    segment: u16,
}

impl<'a> DeviceScope<'a> {
    /// What the scope names.
    pub fn kind(&self) -> DeviceScopeKind {
        DeviceScopeKind::from_raw(u8_at(self.bytes, 0))
    }

    /// The flags byte (reserved before VT-d 4.0; device properties in [`Sidp`] scopes).
    pub fn flags(&self) -> u8 {
        u8_at(self.bytes, 2)
    }

    /// IOAPIC ID, HPET number or ANDD device number, by [`kind`](Self::kind); 0 for PCI devices.
    pub fn enumeration_id(&self) -> u8 {
        u8_at(self.bytes, 4)
    }

    /// The bus the path starts on.
    pub fn start_bus(&self) -> u8 {
        u8_at(self.bytes, 5)
    }

    /// PCI segment, from the structure that holds the scope.
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// The (device, function) hops: every hop but the last is a bridge.
    pub fn path(&self) -> impl Iterator<Item = (u8, u8)> + 'a {
        let path = self.bytes.get(SCOPE_HEADER_LEN..).unwrap_or_default();
        path.chunks_exact(2).map(|hop| (u8_at(hop, 0), u8_at(hop, 1)))
    }

    /// The function the scope names, following the path from the start bus.
    ///
    /// `secondary_bus` returns the secondary bus number of a bridge (read from its config space
    /// by the caller, as firmware left it); it is called for every hop but the last, so not at
    /// all for a one-hop path. A bridge it returns `None` for is [`Error::BadReference`] with
    /// value `segment << 16 | bus << 8 | devfn`. An empty path is [`Error::InvalidField`].
    pub fn resolve(&self, mut secondary_bus: impl FnMut(Bdf) -> Option<u8>) -> Result<Bdf> {
        let mut bus = self.start_bus();
        let mut last: Option<(u8, u8)> = None;
        for hop in self.path() {
            if let Some((dev, func)) = last {
                let bridge = Bdf::new(self.segment, bus, dev, func)?;
                bus = secondary_bus(bridge).ok_or(Error::BadReference {
                    what: "DMAR device scope path bridge",
                    value: u64::from(bridge.segment) << 16 | u64::from(bridge.routing_id().0),
                })?;
            }
            last = Some(hop);
        }
        let (dev, func) =
            last.ok_or(Error::InvalidField { what: "DMAR device scope path length", value: 0 })?;
        Bdf::new(self.segment, bus, dev, func)
    }
}

impl fmt::Debug for DeviceScope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DeviceScope");
        d.field("kind", &self.kind())
            .field("enumeration_id", &self.enumeration_id())
            .field("start_bus", &format_args!("{:#04x}", self.start_bus()));
        let mut path = [(0u8, 0u8); 4];
        let n = path.iter_mut().zip(self.path()).map(|(slot, hop)| *slot = hop).count();
        d.field("path", &path.get(..n).unwrap_or_default()).finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{boundary_mutations, edits, mutate, sdt};
    use super::*;

    fn structure(kind: u16, fixed: &[u8], scopes: &[Vec<u8>]) -> Vec<u8> {
        let len = 4 + fixed.len() + scopes.iter().map(Vec::len).sum::<usize>();
        let mut s = kind.to_le_bytes().to_vec();
        s.extend_from_slice(&u16::try_from(len).unwrap().to_le_bytes());
        s.extend_from_slice(fixed);
        scopes.iter().for_each(|sc| s.extend_from_slice(sc));
        s
    }

    fn scope(kind: u8, enum_id: u8, start_bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
        let mut s = vec![kind, 6 + 2 * path.len() as u8, 0, 0, enum_id, start_bus];
        path.iter().for_each(|&(d, f)| s.extend_from_slice(&[d, f]));
        s
    }

    fn drhd(flags: u8, size: u8, segment: u16, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let mut fixed = vec![flags, size];
        fixed.extend_from_slice(&segment.to_le_bytes());
        fixed.extend_from_slice(&base.to_le_bytes());
        structure(0, &fixed, scopes)
    }

    fn dmar(haw_field: u8, flags: u8, structures: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![haw_field, flags];
        body.extend_from_slice(&[0; 10]);
        structures.iter().for_each(|s| body.extend_from_slice(s));
        sdt(b"DMAR", 1, &body)
    }

    /// What QEMU 10.0.2 builds for q35 with `-device intel-iommu` (hw/i386/acpi-build.c,
    /// build_dmar_q35): 48-bit DMA, interrupt remapping, one DRHD at 0xfed90000 listing the
    /// IOAPIC (on the pseudo bus 0xff) and the devices of bus 0.
    pub(in super::super) fn qemu_q35_dmar() -> Vec<u8> {
        let mut scopes = vec![scope(3, 0, 0xff, &[(0, 0)])];
        for (d, f) in [(0, 0), (1, 0), (2, 0), (3, 0), (0x1f, 0), (0x1f, 2), (0x1f, 3)] {
            scopes.push(scope(1, 0, 0, &[(d, f)]));
        }
        dmar(47, 0x1, &[drhd(0, 0, 0, 0xfed9_0000, &scopes)])
    }

    /// One of every structure kind, plus an unknown one, with nested paths.
    fn every_kind_dmar() -> Vec<u8> {
        let mut rmrr = vec![0, 0];
        rmrr.extend_from_slice(&1u16.to_le_bytes());
        rmrr.extend_from_slice(&0x7d00_0000u64.to_le_bytes());
        rmrr.extend_from_slice(&0x7d0f_ffffu64.to_le_bytes());
        let mut rhsa = vec![0; 4];
        rhsa.extend_from_slice(&0xfed9_1000u64.to_le_bytes());
        rhsa.extend_from_slice(&3u32.to_le_bytes());
        let mut andd = vec![0, 0, 0, 7];
        andd.extend_from_slice(b"\\_SB.PCI0.I2C0\0");
        dmar(
            38,
            Dmar::INTR_REMAP | Dmar::X2APIC_OPT_OUT | Dmar::DMA_CTRL_PLATFORM_OPT_IN,
            &[
                drhd(
                    1,
                    2,
                    1,
                    0xfed9_1000,
                    &[scope(4, 0, 0, &[(0x1f, 0)]), scope(5, 7, 0, &[(0x15, 0)])],
                ),
                structure(
                    1,
                    &rmrr,
                    &[scope(1, 0, 0, &[(0x1c, 0), (0, 0)]), scope(2, 0, 0, &[(0x1c, 4)])],
                ),
                structure(2, &[1, 0, 1, 0], &[]),
                structure(3, &rhsa, &[]),
                structure(4, &andd, &[]),
                structure(5, &[1, 0, 0, 0], &[scope(1, 0, 0, &[(0x0b, 0)])]),
                structure(6, &[0, 0, 0, 0], &[scope(1, 0, 0, &[(0x0d, 0)])]),
                structure(0x40, &[0xaa; 6], &[]),
                drhd(0, 0, 0, 0xfed9_0000, &[]),
            ],
        )
    }

    fn exercise(bytes: &[u8]) {
        let Ok(d) = Dmar::parse(bytes) else { return };
        let _ = (
            d.host_address_width(),
            d.interrupt_remapping(),
            d.x2apic_opt_out(),
            d.dma_ctrl_platform_opt_in(),
        );
        let _ = format!("{d:?} {:?}", d.header());
        for s in d.structures() {
            let Ok(s) = s else { break };
            let _ = format!("{s:?}");
            let scopes = match s {
                RemappingStructure::Drhd(x) => {
                    let _ = (
                        x.include_pci_all(),
                        x.register_set_size(),
                        x.register_base(),
                        x.size_field(),
                    );
                    Some(x.scopes())
                }
                RemappingStructure::Rmrr(x) => Some(x.scopes()),
                RemappingStructure::Atsr(x) => {
                    let _ = x.all_ports();
                    Some(x.scopes())
                }
                RemappingStructure::Satc(x) => {
                    let _ = x.atc_required();
                    Some(x.scopes())
                }
                RemappingStructure::Sidp(x) => Some(x.scopes()),
                RemappingStructure::Rhsa(x) => {
                    let _ = (x.register_base(), x.proximity_domain());
                    None
                }
                RemappingStructure::Andd(x) => {
                    let _ = (x.acpi_device_number(), x.object_name());
                    None
                }
                RemappingStructure::Unknown { .. } => None,
            };
            for sc in scopes.into_iter().flatten() {
                let Ok(sc) = sc else { break };
                let _ =
                    (sc.kind(), sc.flags(), sc.enumeration_id(), sc.segment(), format!("{sc:?}"));
                let _ = sc.resolve(|b| Some(b.bus.wrapping_add(1)));
                let _ = sc.resolve(|_| None);
            }
        }
    }

    fn collect(bytes: &[u8]) -> Result<Vec<RemappingStructure<'_>>> {
        Dmar::parse(bytes)?.structures().collect()
    }

    fn scopes_of<'a>(s: &RemappingStructure<'a>) -> DeviceScopes<'a> {
        match s {
            RemappingStructure::Drhd(x) => x.scopes(),
            RemappingStructure::Rmrr(x) => x.scopes(),
            RemappingStructure::Atsr(x) => x.scopes(),
            RemappingStructure::Satc(x) => x.scopes(),
            RemappingStructure::Sidp(x) => x.scopes(),
            other => panic!("no scopes in {other:?}"),
        }
    }

    #[test]
    fn qemu_q35() {
        let t = qemu_q35_dmar();
        assert_eq!(t.len(), 48 + 16 + 8 * 8);
        let d = Dmar::parse(&t).unwrap();
        assert_eq!(d.host_address_width(), 48);
        assert!(d.interrupt_remapping() && !d.x2apic_opt_out() && !d.dma_ctrl_platform_opt_in());
        let s = collect(&t).unwrap();
        let [RemappingStructure::Drhd(drhd)] = s[..] else { panic!("{s:?}") };
        assert_eq!(drhd.flags(), 0);
        assert!(!drhd.include_pci_all());
        assert_eq!((drhd.segment(), drhd.register_base()), (0, PhysAddr(0xfed9_0000)));
        assert_eq!((drhd.size_field(), drhd.register_set_size()), (0, 4096));
        let scopes: Vec<_> = drhd.scopes().collect::<Result<_>>().unwrap();
        assert_eq!(scopes.len(), 8);
        let ioapic = scopes[0];
        assert_eq!(
            (ioapic.kind(), ioapic.enumeration_id(), ioapic.start_bus()),
            (DeviceScopeKind::IoApic, 0, 0xff)
        );
        assert_eq!(ioapic.resolve(|_| unreachable!()), Ok(Bdf::new(0, 0xff, 0, 0).unwrap()));
        let endpoints: Vec<_> = scopes[1..]
            .iter()
            .inspect(|s| assert_eq!(s.kind(), DeviceScopeKind::Endpoint))
            .map(|s| s.resolve(|_| unreachable!()).unwrap().to_string())
            .collect();
        assert_eq!(
            endpoints,
            [
                "0000:00:00.0",
                "0000:00:01.0",
                "0000:00:02.0",
                "0000:00:03.0",
                "0000:00:1f.0",
                "0000:00:1f.2",
                "0000:00:1f.3"
            ]
        );
    }

    #[test]
    fn every_structure_kind() {
        let t = every_kind_dmar();
        let d = Dmar::parse(&t).unwrap();
        assert_eq!(d.host_address_width(), 39);
        assert!(d.interrupt_remapping() && d.x2apic_opt_out() && d.dma_ctrl_platform_opt_in());
        let s = collect(&t).unwrap();
        assert_eq!(s.len(), 9);

        let RemappingStructure::Drhd(drhd) = s[0] else { panic!() };
        assert!(drhd.include_pci_all());
        assert_eq!((drhd.segment(), drhd.size_field(), drhd.register_set_size()), (1, 2, 16384));
        let sc: Vec<_> = drhd.scopes().collect::<Result<_>>().unwrap();
        assert_eq!((sc[0].kind(), sc[0].segment()), (DeviceScopeKind::Hpet, 1));
        assert_eq!((sc[1].kind(), sc[1].enumeration_id()), (DeviceScopeKind::AcpiNamespace, 7));

        let RemappingStructure::Rmrr(rmrr) = s[1] else { panic!() };
        assert_eq!(
            (rmrr.segment(), rmrr.base(), rmrr.limit()),
            (1, PhysAddr(0x7d00_0000), PhysAddr(0x7d0f_ffff))
        );
        let sc: Vec<_> = rmrr.scopes().collect::<Result<_>>().unwrap();
        assert_eq!(sc[0].path().collect::<Vec<_>>(), [(0x1c, 0), (0, 0)]);
        // Behind the root port 00:1c.0, whose secondary bus is 3.
        let mut asked = Vec::new();
        let bdf = sc[0].resolve(|b| {
            asked.push(b);
            Some(3)
        });
        assert_eq!(bdf, Ok(Bdf::new(1, 3, 0, 0).unwrap()));
        assert_eq!(asked, [Bdf::new(1, 0, 0x1c, 0).unwrap()]);
        assert_eq!(
            sc[0].resolve(|_| None),
            Err(Error::BadReference { what: "DMAR device scope path bridge", value: 0x1_00e0 })
        );
        assert_eq!(sc[1].kind(), DeviceScopeKind::Bridge);

        let RemappingStructure::Atsr(atsr) = s[2] else { panic!() };
        assert!(atsr.all_ports());
        assert_eq!((atsr.segment(), atsr.scopes().count()), (1, 0));
        let RemappingStructure::Rhsa(rhsa) = s[3] else { panic!() };
        assert_eq!((rhsa.register_base(), rhsa.proximity_domain()), (PhysAddr(0xfed9_1000), 3));
        let RemappingStructure::Andd(andd) = s[4] else { panic!() };
        assert_eq!((andd.acpi_device_number(), andd.object_name()), (7, &b"\\_SB.PCI0.I2C0"[..]));
        let RemappingStructure::Satc(satc) = s[5] else { panic!() };
        assert!(satc.atc_required());
        assert_eq!(
            satc.scopes().next().unwrap().unwrap().resolve(|_| None),
            Ok(Bdf::new(0, 0, 0x0b, 0).unwrap())
        );
        let RemappingStructure::Sidp(sidp) = s[6] else { panic!() };
        assert_eq!((sidp.segment(), sidp.scopes().count()), (0, 1));
        assert_eq!(s[7], RemappingStructure::Unknown { kind: 0x40, length: 10 });
        let RemappingStructure::Drhd(last) = s[8] else {
            panic!("unknown type not skipped: {:?}", s[8])
        };
        assert_eq!(last.register_base(), PhysAddr(0xfed9_0000));
        for x in &s {
            assert!(!format!("{x:?}").is_empty());
        }
    }

    #[test]
    fn malformed_tables() {
        let good = qemu_q35_dmar();
        assert!(matches!(
            Dmar::parse(&good[..100]),
            Err(Error::LengthOverrun { what: "DMAR", .. })
        ));
        assert_eq!(
            Dmar::parse(&sdt(b"DMAR", 1, &[47, 1])),
            Err(Error::Truncated { what: "DMAR", len: 38, need: 48 })
        );
        let mut bad = good.clone();
        bad[60] ^= 1;
        assert_eq!(Dmar::parse(&bad), Err(Error::BadChecksum { what: "DMAR", sum: 1 }));
        assert!(matches!(
            Dmar::parse(&sdt(b"DMAX", 1, &[0; 12])),
            Err(Error::BadSignature { what: "DMAR", .. })
        ));
    }

    #[test]
    fn malformed_structures() {
        // Zero length: a walker that trusted it would never advance.
        let t = dmar(47, 0, &[vec![0, 0, 0, 0]]);
        assert_eq!(
            collect(&t),
            Err(Error::BadLength { what: "DMAR remapping structure", offset: 48, length: 0 })
        );
        // Overrun: claims 0x40 bytes, 16 left.
        let mut s = drhd(0, 0, 0, 0xfed9_0000, &[]);
        s[2] = 0x40;
        assert_eq!(
            collect(&dmar(47, 0, &[s])),
            Err(Error::LengthOverrun {
                what: "DMAR remapping structure",
                offset: 48,
                length: 0x40,
                available: 16
            })
        );
        // Too small for a DRHD's fixed part.
        let t = dmar(47, 0, &[structure(0, &[0; 8], &[])]);
        assert_eq!(
            collect(&t),
            Err(Error::BadLength { what: "DMAR DRHD", offset: 48, length: 12 })
        );
        let t = dmar(47, 0, &[structure(3, &[0; 8], &[])]);
        assert_eq!(
            collect(&t),
            Err(Error::BadLength { what: "DMAR RHSA", offset: 48, length: 12 })
        );
        // Trailing bytes too short for a structure header.
        let mut t = dmar(47, 0, &[drhd(0, 0, 0, 1, &[])]);
        t.extend_from_slice(&[0, 0]);
        t[4] += 2;
        super::super::testutil::fix_checksum(&mut t);
        let mut it = Dmar::parse(&t).unwrap().structures();
        assert!(matches!(it.next(), Some(Ok(RemappingStructure::Drhd(_)))));
        assert_eq!(
            it.next(),
            Some(Err(Error::Truncated { what: "DMAR remapping structure", len: 2, need: 4 }))
        );
        assert_eq!(it.next(), None);
        // RMRR with limit below base.
        let mut rmrr = vec![0; 4];
        rmrr.extend_from_slice(&0x2000u64.to_le_bytes());
        rmrr.extend_from_slice(&0x1fffu64.to_le_bytes());
        let t = dmar(47, 0, &[structure(1, &rmrr, &[])]);
        assert_eq!(
            collect(&t),
            Err(Error::InvalidField { what: "DMAR RMRR limit (below base)", value: 0x1fff })
        );
    }

    fn first_scope_error(scope_bytes: Vec<u8>) -> Error {
        let t = dmar(47, 0, &[drhd(0, 0, 0, 0xfed9_0000, &[scope_bytes])]);
        let s = collect(&t).unwrap();
        scopes_of(&s[0]).find_map(Result::err).expect("an error")
    }

    #[test]
    fn malformed_scopes() {
        assert_eq!(
            first_scope_error(vec![1, 0, 0, 0, 0, 0, 0, 0]),
            Error::BadLength { what: "DMAR device scope", offset: 64, length: 0 }
        );
        assert_eq!(
            first_scope_error(vec![1, 4, 0, 0]),
            Error::BadLength { what: "DMAR device scope", offset: 64, length: 4 }
        );
        assert_eq!(
            first_scope_error(vec![1, 10, 0, 0, 0, 0, 0, 0]),
            Error::LengthOverrun {
                what: "DMAR device scope",
                offset: 64,
                length: 10,
                available: 8
            }
        );
        assert_eq!(
            first_scope_error(vec![1, 6, 0, 0, 0, 0]),
            Error::BadLength { what: "DMAR device scope (empty path)", offset: 64, length: 6 }
        );
        assert_eq!(
            first_scope_error(vec![1, 9, 0, 0, 0, 0, 1, 0, 0]),
            Error::InvalidField { what: "DMAR device scope path length", value: 3 }
        );
        assert_eq!(
            first_scope_error(scope(1, 0, 5, &[(32, 0)])),
            Error::InvalidBdf { bus: 5, dev: 32, func: 0 }
        );
        assert_eq!(
            first_scope_error(scope(2, 0, 0, &[(1, 0), (0, 8)])),
            Error::InvalidBdf { bus: 0, dev: 0, func: 8 }
        );
        assert_eq!(
            first_scope_error(vec![1]),
            Error::Truncated { what: "DMAR device scope", len: 1, need: 2 }
        );
    }

    #[test]
    fn unknown_scope_kind_is_yielded_and_skipped() {
        let t = dmar(
            47,
            0,
            &[drhd(0, 0, 0, 1, &[vec![9, 7, 0, 0, 0, 0, 0xff], scope(1, 0, 0, &[(2, 0)])])],
        );
        let s = collect(&t).unwrap();
        let sc: Vec<_> = scopes_of(&s[0]).collect::<Result<_>>().unwrap();
        assert_eq!(sc[0].kind(), DeviceScopeKind::Unknown(9));
        assert_eq!(
            sc[0].resolve(|_| None),
            Err(Error::InvalidField { what: "DMAR device scope path length", value: 0 })
        );
        assert_eq!(sc[1].resolve(|_| None), Ok(Bdf::new(0, 0, 2, 0).unwrap()));
    }

    #[test]
    fn iteration_stops_after_an_error() {
        let t = dmar(47, 0, &[structure(0, &[0; 8], &[]), drhd(0, 0, 0, 1, &[])]);
        let mut it = Dmar::parse(&t).unwrap().structures();
        assert!(matches!(it.next(), Some(Err(_))));
        assert!(it.next().is_none());
        let t = dmar(47, 0, &[drhd(0, 0, 0, 1, &[vec![1, 0], scope(1, 0, 0, &[(1, 0)])])]);
        let s = collect(&t).unwrap();
        let mut it = scopes_of(&s[0]);
        assert!(matches!(it.next(), Some(Err(_))));
        assert!(it.next().is_none());
    }

    #[test]
    fn every_byte_mutated_to_boundary_values_never_panics() {
        boundary_mutations(&qemu_q35_dmar()).for_each(|m| exercise(&m));
        boundary_mutations(&every_kind_dmar()).for_each(|m| exercise(&m));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            exercise(&bytes);
        }

        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 12..256)) {
            exercise(&sdt(b"DMAR", 1, &body));
        }

        #[test]
        fn mutated_tables_never_panic(edits in edits()) {
            exercise(&mutate(&qemu_q35_dmar(), &edits));
            exercise(&mutate(&every_kind_dmar(), &edits));
        }
    }
}
