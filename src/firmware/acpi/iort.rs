//! IORT: the IO Remapping Table that describes Arm SMMUs, GIC ITS groups and how device IDs are
//! translated between them (Arm DEN0049E.e and later; table revisions 0 to 7 use the same node
//! header, and fields added later are only read when the node is long and new enough).

use core::fmt;

use super::bytes::{array_at, record, sub_slice, to_usize, u8_at, u16_at, u32_at, u64_at};
use super::sdt::{SdtHeader, checked_table};
use crate::addr::{PhysAddr, RequesterId, StreamId};
use crate::error::{Error, Result};

/// SDT header, node count, node array offset, reserved (DEN0049 Table 2).
const IORT_HEADER_LEN: usize = 48;
/// {type u8, length u16, revision u8, identifier u32, mapping count u32, mapping offset u32}.
const NODE_HEADER_LEN: usize = 16;
/// {input base, number of IDs - 1, output base, output reference, flags}, all u32 (Table 4).
const ID_MAPPING_LEN: usize = 20;
/// {base u64, length u64, reserved u32} (Table 21).
const RMR_DESCRIPTOR_LEN: usize = 20;
/// Longest chain of nodes [`Iort::map_rid`] follows. Real chains have one hop (root complex to
/// SMMU or ITS); the bound stops a table whose references form a loop.
const MAX_MAP_HOPS: usize = 8;

const ITS_GROUP: u8 = 0;
const NAMED_COMPONENT: u8 = 1;
const ROOT_COMPLEX: u8 = 2;
const SMMU_V1_V2: u8 = 3;
const SMMU_V3: u8 = 4;
const PMCG: u8 = 5;
const RMR: u8 = 6;

/// The name (for errors) and the length of the fixed part of each node type; mapping arrays and
/// other variable parts may only start after it.
fn node_layout(kind: u8) -> (&'static str, usize) {
    match kind {
        ITS_GROUP => ("IORT ITS group", 20),
        NAMED_COMPONENT => ("IORT named component", 29),
        // Revision 0 ends after the segment; the memory address size limit came with revision 1.
        ROOT_COMPLEX => ("IORT root complex", 32),
        SMMU_V1_V2 => ("IORT SMMUv1/v2", 60),
        // Revision 0 ends after the sync GSIV; proximity domain and DeviceID index came later.
        SMMU_V3 => ("IORT SMMUv3", 60),
        PMCG => ("IORT PMCG", 40),
        RMR => ("IORT RMR", 28),
        _ => ("IORT node", NODE_HEADER_LEN),
    }
}

/// A validated IORT.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Iort<'a> {
    header: SdtHeader<'a>,
    table: &'a [u8],
}

impl<'a> Iort<'a> {
    /// Validates the table and the position of its node array. Nodes are checked as
    /// [`nodes`](Self::nodes) reaches them; a node array offset inside the header or past the
    /// table is [`Error::BadReference`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let (header, table) = checked_table(bytes, Some(b"IORT"), "IORT")?;
        if table.len() < IORT_HEADER_LEN {
            return Err(Error::Truncated { what: "IORT", len: table.len(), need: IORT_HEADER_LEN });
        }
        let iort = Self { header, table };
        let array = iort.node_array_offset();
        if iort.node_count() > 0 && (array < IORT_HEADER_LEN || array > table.len()) {
            return Err(Error::BadReference {
                what: "IORT node array offset",
                value: u64::from(u32_at(table, 40)),
            });
        }
        Ok(iort)
    }

    /// The table header; its revision tells the spec issue (3 for E.b, 6 for E.e, ...).
    pub fn header(&self) -> SdtHeader<'a> {
        self.header
    }

    /// Number of nodes the table declares.
    pub fn node_count(&self) -> u32 {
        u32_at(self.table, 36)
    }

    fn node_array_offset(&self) -> usize {
        to_usize(u32_at(self.table, 40))
    }

    /// The nodes, in table order.
    pub fn nodes(&self) -> IortNodes<'a> {
        IortNodes {
            iort: *self,
            pos: self.node_array_offset(),
            remaining: self.node_count(),
            done: false,
        }
    }

    /// The node that starts at table offset `reference` (the form of output references and PMCG
    /// node references). An offset where no node starts is [`Error::BadReference`].
    pub fn node_at(&self, reference: u32) -> Result<IortNode<'a>> {
        let target = to_usize(reference);
        for node in self.nodes() {
            let node = node?;
            if node.offset == target {
                return Ok(node);
            }
            if node.offset > target {
                break;
            }
        }
        Err(Error::BadReference { what: "IORT node reference", value: u64::from(reference) })
    }

    /// The SMMUv3 that requester ID `rid` of PCI segment `segment` goes through, and the
    /// StreamID it arrives with.
    ///
    /// Starts at the root complex node of the segment and applies ID mappings, following at most
    /// a few nodes, until an SMMUv3 (the answer) or an ITS group (`Ok(None)`: the device's DMA is
    /// not translated by any SMMU) is reached; `Ok(None)` also when no mapping covers the ID.
    /// Like Linux, a single mapping on a root complex maps every ID to its output base, and an ID
    /// that is the last of one range and the first of a later one takes the later one (firmware
    /// that stored the count instead of count - 1).
    ///
    /// Errors: no root complex for the segment ([`Error::NotFound`]); a path that reaches an
    /// SMMUv1/v2 ([`Error::InvalidField`]: this library does not drive them); a malformed node or
    /// mapping on the way; a chain longer than the bound ([`Error::BadReference`]).
    pub fn map_rid(
        &self,
        segment: u16,
        rid: RequesterId,
    ) -> Result<Option<(SmmuV3<'a>, StreamId)>> {
        let mut root = None;
        for node in self.nodes() {
            if let IortNodeKind::RootComplex(rc) = node?.kind()
                && rc.pci_segment() == u32::from(segment)
            {
                root = Some(rc.node());
                break;
            }
        }
        let mut node =
            root.ok_or(Error::NotFound { what: "IORT root complex node for the PCI segment" })?;
        let mut id = u32::from(rid.0);
        for _ in 0..MAX_MAP_HOPS {
            match node.kind() {
                IortNodeKind::SmmuV3(smmu) => return Ok(Some((smmu, StreamId(id)))),
                IortNodeKind::ItsGroup(_) => return Ok(None),
                IortNodeKind::SmmuV1V2(_) => {
                    return Err(Error::InvalidField {
                        what: "IORT requester ID maps to an SMMUv1/v2 (unsupported) at offset",
                        value: u64::from(node.offset()),
                    });
                }
                _ => {}
            }
            match translate(node, id)? {
                Some((next, out)) => (node, id) = (next, out),
                None => return Ok(None),
            }
        }
        Err(Error::BadReference {
            what: "IORT ID mapping chain (too long or a loop)",
            value: u64::from(node.offset()),
        })
    }

    fn read_node(&self, offset: usize) -> Result<IortNode<'a>> {
        let available = self.table.len().saturating_sub(offset);
        if available < NODE_HEADER_LEN {
            return Err(Error::Truncated {
                what: "IORT node",
                len: available,
                need: NODE_HEADER_LEN,
            });
        }
        let kind = u8_at(self.table, offset);
        let length = usize::from(u16_at(self.table, offset.saturating_add(1)));
        let bytes = record(self.table, offset, length, NODE_HEADER_LEN, "IORT node", 0)?;
        let (what, fixed_len) = node_layout(kind);
        if length < fixed_len {
            return Err(Error::BadLength { what, offset, length });
        }
        let node = IortNode { iort: *self, offset, bytes };
        let mappings = node.id_mapping_count();
        if mappings > 0 {
            let array = to_usize(u32_at(bytes, 12));
            if array < fixed_len {
                return Err(Error::BadReference {
                    what: "IORT node ID array reference",
                    value: u64::from(u32_at(bytes, 12)),
                });
            }
            check_array(bytes, offset, array, mappings, ID_MAPPING_LEN, "IORT ID mappings")?;
        }
        match kind {
            ITS_GROUP => {
                check_array(bytes, offset, 20, u32_at(bytes, 16), 4, "IORT ITS group identifiers")?
            }
            NAMED_COMPONENT => {
                // The name ends before the mapping array, if that follows it.
                let array = to_usize(u32_at(bytes, 12));
                let end = if mappings > 0 && array > 29 { array } else { bytes.len() };
                let name = bytes.get(29..end).unwrap_or_default();
                if !name.contains(&0) {
                    return Err(Error::InvalidField {
                        what: "IORT named component name (no NUL) at offset",
                        // CAST: usize fits u64 on every target.
                        value: offset as u64,
                    });
                }
            }
            RMR => {
                let count = u32_at(bytes, 20);
                let array = to_usize(u32_at(bytes, 24));
                if count > 0 && array < fixed_len {
                    return Err(Error::BadReference {
                        what: "IORT RMR memory range reference",
                        value: u64::from(u32_at(bytes, 24)),
                    });
                }
                check_array(
                    bytes,
                    offset,
                    array,
                    count,
                    RMR_DESCRIPTOR_LEN,
                    "IORT RMR memory ranges",
                )?;
            }
            _ => {}
        }
        Ok(node)
    }
}

/// Checks that `count` entries of `size` bytes at `start` lie inside the node.
fn check_array(
    node: &[u8],
    node_offset: usize,
    start: usize,
    count: u32,
    size: usize,
    what: &'static str,
) -> Result<()> {
    let length = to_usize(count).saturating_mul(size);
    if count == 0 || sub_slice(node, start, length).is_some() {
        return Ok(());
    }
    Err(Error::LengthOverrun {
        what,
        offset: node_offset.saturating_add(start),
        length,
        available: node.len().saturating_sub(start),
    })
}

/// One step of [`Iort::map_rid`]: the output node and ID for `id` entering `node`.
fn translate<'a>(node: IortNode<'a>, id: u32) -> Result<Option<(IortNode<'a>, u32)>> {
    let single_applies = matches!(node.node_type(), NAMED_COMPONENT | ROOT_COMPLEX);
    // A match on the last ID of a multi-ID range, which a later range starting there overrides.
    let mut at_range_end = None;
    for mapping in node.id_mappings() {
        let m = mapping?;
        if m.is_single() {
            if single_applies {
                return Ok(Some((m.output_node(), m.output_base())));
            }
            continue;
        }
        let Some(out) = m.map(id) else { continue };
        if at_range_end.is_some() {
            if id == m.input_base() {
                return Ok(Some((m.output_node(), out)));
            }
            continue;
        }
        if m.id_count() > 1 && u64::from(id) == u64::from(m.input_base()) + m.id_count() - 1 {
            at_range_end = Some((m.output_node(), out));
            continue;
        }
        return Ok(Some((m.output_node(), out)));
    }
    Ok(at_range_end)
}

impl fmt::Debug for Iort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iort")
            .field("revision", &self.header.revision())
            .field("nodes", &self.node_count())
            .finish()
    }
}

/// Iterator over the nodes of an IORT (see [`Iort::nodes`]).
///
/// A node shorter than its fixed part (zero included) is [`Error::BadLength`]; one running past
/// the table, or whose ID mapping, ITS identifier or RMR range array runs past the node, is
/// [`Error::LengthOverrun`]. Iteration stops after the first error.
#[derive(Clone, Debug)]
pub struct IortNodes<'a> {
    iort: Iort<'a>,
    pos: usize,
    remaining: u32,
    done: bool,
}

impl<'a> Iterator for IortNodes<'a> {
    type Item = Result<IortNode<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.remaining == 0 {
            return None;
        }
        let result = self.iort.read_node(self.pos);
        match &result {
            Ok(node) => {
                self.pos = self.pos.saturating_add(node.bytes.len());
                self.remaining -= 1;
            }
            Err(_) => self.done = true,
        }
        Some(result)
    }
}

/// One IORT node: the common header; [`kind`](Self::kind) gives the type-specific view.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IortNode<'a> {
    iort: Iort<'a>,
    offset: usize,
    bytes: &'a [u8],
}

impl<'a> IortNode<'a> {
    /// Offset of the node in the table: the value output references to it hold.
    pub fn offset(&self) -> u32 {
        u32::try_from(self.offset).unwrap_or(u32::MAX)
    }

    /// The raw node type (0 ITS group, 1 named component, 2 root complex, 3 SMMUv1/v2,
    /// 4 SMMUv3, 5 PMCG, 6 RMR).
    pub fn node_type(&self) -> u8 {
        u8_at(self.bytes, 0)
    }

    /// Node length in bytes.
    pub fn length(&self) -> usize {
        self.bytes.len()
    }

    /// Node revision; later revisions append fields.
    pub fn revision(&self) -> u8 {
        u8_at(self.bytes, 3)
    }

    /// Node identifier, unique within the table (reserved, usually 0, in older tables).
    pub fn identifier(&self) -> u32 {
        u32_at(self.bytes, 4)
    }

    /// Number of ID mappings.
    pub fn id_mapping_count(&self) -> u32 {
        u32_at(self.bytes, 8)
    }

    /// The node's ID mappings: how IDs leaving this node become IDs of the output node.
    pub fn id_mappings(&self) -> IdMappings<'a> {
        IdMappings { node: *self, index: 0, done: false }
    }

    /// The type-specific view (its fixed part was checked when the node was read).
    pub fn kind(&self) -> IortNodeKind<'a> {
        match self.node_type() {
            ITS_GROUP => IortNodeKind::ItsGroup(ItsGroup(*self)),
            NAMED_COMPONENT => IortNodeKind::NamedComponent(NamedComponent(*self)),
            ROOT_COMPLEX => IortNodeKind::RootComplex(RootComplex(*self)),
            SMMU_V1_V2 => IortNodeKind::SmmuV1V2(SmmuV1V2(*self)),
            SMMU_V3 => IortNodeKind::SmmuV3(SmmuV3(*self)),
            PMCG => IortNodeKind::Pmcg(Pmcg(*self)),
            RMR => IortNodeKind::Rmr(Rmr(*self)),
            kind => IortNodeKind::Unknown {
                kind,
                length: u16::try_from(self.bytes.len()).unwrap_or(u16::MAX),
            },
        }
    }
}

impl fmt::Debug for IortNode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IortNode")
            .field("offset", &format_args!("{:#x}", self.offset))
            .field("type", &self.node_type())
            .field("revision", &self.revision())
            .field("identifier", &self.identifier())
            .field("id_mappings", &self.id_mapping_count())
            .finish()
    }
}

/// The type-specific views of IORT nodes (DEN0049 Table 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IortNodeKind<'a> {
    /// GIC ITS group (type 0): where MSIs go.
    ItsGroup(ItsGroup<'a>),
    /// Named component (type 1): a non-PCI device named in the ACPI namespace.
    NamedComponent(NamedComponent<'a>),
    /// PCI root complex (type 2): one PCI segment.
    RootComplex(RootComplex<'a>),
    /// SMMUv1 or SMMUv2 (type 3).
    SmmuV1V2(SmmuV1V2<'a>),
    /// SMMUv3 (type 4).
    SmmuV3(SmmuV3<'a>),
    /// Performance monitor counter group of an SMMUv3 (type 5).
    Pmcg(Pmcg<'a>),
    /// Reserved memory ranges (type 6): memory devices DMA to from boot on.
    Rmr(Rmr<'a>),
    /// A type this reader does not know (for example the GICv5 IWB, type 7); skipped by length.
    Unknown {
        /// The node type.
        kind: u8,
        /// Its length in bytes.
        length: u16,
    },
}

/// Memory access properties of a device or root complex (DEN0049 Table 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemoryAccess {
    /// Cache coherency attribute: 1 if the device's accesses are fully coherent.
    pub cache_coherency: u32,
    /// Allocation hints.
    pub allocation_hints: u8,
    /// Memory access flags (bit 0 CPM, bit 1 DACS, bit 2 canonical attributes).
    pub memory_access_flags: u8,
}

impl MemoryAccess {
    fn read(node: &[u8], offset: usize) -> Self {
        Self {
            cache_coherency: u32_at(node, offset),
            allocation_hints: u8_at(node, offset.saturating_add(4)),
            memory_access_flags: u8_at(node, offset.saturating_add(7)),
        }
    }

    /// Whether DMA is coherent with CPU caches, so no cache maintenance is needed.
    pub fn is_coherent(&self) -> bool {
        self.cache_coherency == 1
    }
}

/// GIC ITS group node (DEN0049 §3.1.1.1).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ItsGroup<'a>(IortNode<'a>);

impl<'a> ItsGroup<'a> {
    /// The node header.
    pub fn node(&self) -> IortNode<'a> {
        self.0
    }

    /// Number of ITSs in the group.
    pub fn its_count(&self) -> u32 {
        u32_at(self.0.bytes, 16)
    }

    /// The GIC ITS IDs (as in the MADT GIC ITS structures).
    pub fn its_ids(&self) -> impl Iterator<Item = u32> + 'a {
        let length = to_usize(self.its_count()).saturating_mul(4);
        let ids = sub_slice(self.0.bytes, 20, length).unwrap_or_default();
        ids.chunks_exact(4).map(|id| u32_at(id, 0))
    }
}

impl fmt::Debug for ItsGroup<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItsGroup")
            .field("node", &self.0)
            .field("its_count", &self.its_count())
            .finish()
    }
}

/// Named component node (DEN0049 §3.1.1.2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NamedComponent<'a>(IortNode<'a>);

impl<'a> NamedComponent<'a> {
    /// The node header.
    pub fn node(&self) -> IortNode<'a> {
        self.0
    }

    /// Node flags (bit 0 stall supported, bits 5:1 PASID bits).
    pub fn node_flags(&self) -> u32 {
        u32_at(self.0.bytes, 16)
    }

    /// Memory access properties.
    pub fn memory_access(&self) -> MemoryAccess {
        MemoryAccess::read(self.0.bytes, 20)
    }

    /// Width in bits of the addresses the device can generate.
    pub fn memory_address_size_limit(&self) -> u8 {
        u8_at(self.0.bytes, 28)
    }

    /// The device's full ACPI namespace path (for example `\_SB.SMB0`), without the NUL.
    pub fn device_name(&self) -> &'a [u8] {
        let name = self.0.bytes.get(29..).unwrap_or_default();
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        name.get(..end).unwrap_or_default()
    }
}

impl fmt::Debug for NamedComponent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedComponent")
            .field("node", &self.0)
            .field("device_name", &format_args!("{}", self.device_name().escape_ascii()))
            .finish()
    }
}

/// PCI root complex node (DEN0049 §3.1.1.3).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RootComplex<'a>(IortNode<'a>);

impl<'a> RootComplex<'a> {
    /// The node header.
    pub fn node(&self) -> IortNode<'a> {
        self.0
    }

    /// Memory access properties of the root complex's DMA.
    pub fn memory_access(&self) -> MemoryAccess {
        MemoryAccess::read(self.0.bytes, 16)
    }

    /// The raw ATS attribute (bit 0: the root complex supports ATS; later bits PRI, PASID
    /// forwarding).
    pub fn ats_attribute(&self) -> u32 {
        u32_at(self.0.bytes, 24)
    }

    /// Whether the root complex supports ATS.
    pub fn ats_supported(&self) -> bool {
        self.ats_attribute() & 1 != 0
    }

    /// The PCI segment (as in MCFG) this root complex is.
    pub fn pci_segment(&self) -> u32 {
        u32_at(self.0.bytes, 28)
    }

    /// Width in bits of the addresses the root complex can generate (node revision 1 and later).
    pub fn memory_address_size_limit(&self) -> Option<u8> {
        (self.0.revision() >= 1).then(|| self.0.bytes.get(32).copied()).flatten()
    }
}

impl fmt::Debug for RootComplex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootComplex")
            .field("node", &self.0)
            .field("pci_segment", &self.pci_segment())
            .field("ats_attribute", &self.ats_attribute())
            .field("memory_address_size_limit", &self.memory_address_size_limit())
            .finish()
    }
}

/// SMMUv1 or SMMUv2 node (DEN0049 §3.1.1.4); described so that a caller can report it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SmmuV1V2<'a>(IortNode<'a>);

impl<'a> SmmuV1V2<'a> {
    /// The node header.
    pub fn node(&self) -> IortNode<'a> {
        self.0
    }

    /// Physical address of the registers.
    pub fn base_address(&self) -> PhysAddr {
        PhysAddr(u64_at(self.0.bytes, 16))
    }

    /// Size of the register region in bytes.
    pub fn span(&self) -> u64 {
        u64_at(self.0.bytes, 24)
    }

    /// Implementation (0 generic SMMUv1, 1 generic SMMUv2, 2.. specific parts).
    pub fn model(&self) -> u32 {
        u32_at(self.0.bytes, 32)
    }

    /// Flags (bit 0 DVM supported, bit 1 coherent page table walk).
    pub fn flags(&self) -> u32 {
        u32_at(self.0.bytes, 36)
    }
}

impl fmt::Debug for SmmuV1V2<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmmuV1V2")
            .field("node", &self.0)
            .field("base_address", &self.base_address())
            .field("span", &self.span())
            .field("model", &self.model())
            .finish()
    }
}

/// SMMUv3 node (DEN0049 §3.1.1.5).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SmmuV3<'a>(IortNode<'a>);

impl<'a> SmmuV3<'a> {
    /// Flags bit 0: firmware overrides `IDR0.COHACC` (the SMMU's accesses are coherent).
    pub const COHACC_OVERRIDE: u32 = 1 << 0;
    /// Flags bits 2:1: HTTU override (0 none, 1 HTTU access flag, 2 access and dirty flags).
    pub const HTTU_OVERRIDE: u32 = 3 << 1;
    /// Flags bit 3: [`proximity_domain`](Self::proximity_domain) is valid.
    pub const PROXIMITY_DOMAIN_VALID: u32 = 1 << 3;
    /// Flags bit 4: the DeviceID mapping index is valid (node revision 5, E.e, and later).
    pub const DEVICE_ID_MAPPING_VALID: u32 = 1 << 4;

    /// The node header.
    pub fn node(&self) -> IortNode<'a> {
        self.0
    }

    /// Physical address of the registers (page 0; page 1 follows at +64 KiB).
    pub fn base_address(&self) -> PhysAddr {
        PhysAddr(u64_at(self.0.bytes, 16))
    }

    /// The raw flags (see the associated constants).
    pub fn flags(&self) -> u32 {
        u32_at(self.0.bytes, 24)
    }

    /// Whether the SMMU's own accesses (queues, tables) are cache coherent, overriding
    /// `IDR0.COHACC`.
    pub fn coherent_access_override(&self) -> bool {
        self.flags() & Self::COHACC_OVERRIDE != 0
    }

    /// The 2-bit HTTU override: 0 none, 1 access flag updates, 2 access and dirty flag updates.
    pub fn httu_override(&self) -> u8 {
        // CAST: two bits.
        ((self.flags() & Self::HTTU_OVERRIDE) >> 1) as u8
    }

    /// Implementation (0 generic, 1 HiSilicon Hi161x, 2 Cavium CN99xx); selects errata.
    pub fn model(&self) -> u32 {
        u32_at(self.0.bytes, 40)
    }

    /// GSIV of the event queue interrupt (0: not wired, use MSI).
    pub fn event_gsiv(&self) -> u32 {
        u32_at(self.0.bytes, 44)
    }

    /// GSIV of the PRI queue interrupt (0: not wired).
    pub fn pri_gsiv(&self) -> u32 {
        u32_at(self.0.bytes, 48)
    }

    /// GSIV of the global error interrupt (0: not wired).
    pub fn gerr_gsiv(&self) -> u32 {
        u32_at(self.0.bytes, 52)
    }

    /// GSIV of the CMD_SYNC completion interrupt (0: not wired).
    pub fn sync_gsiv(&self) -> u32 {
        u32_at(self.0.bytes, 56)
    }

    /// ACPI proximity domain of the SMMU, when the flags say it is valid.
    pub fn proximity_domain(&self) -> Option<u32> {
        let valid = self.flags() & Self::PROXIMITY_DOMAIN_VALID != 0;
        array_at::<4>(self.0.bytes, 60).filter(|_| valid).map(u32::from_le_bytes)
    }

    /// Index of the ID mapping that gives the SMMU's own DeviceID for its MSIs, when valid:
    /// from node revision 5 when the flag says so; before that (node revision 1 to 4) unless all
    /// four interrupts are wired GSIVs, as Linux reads it.
    pub fn device_id_mapping_index(&self) -> Option<u32> {
        let valid = match self.0.revision() {
            0 => false,
            1..=4 => [self.event_gsiv(), self.pri_gsiv(), self.gerr_gsiv(), self.sync_gsiv()]
                .contains(&0),
            _ => self.flags() & Self::DEVICE_ID_MAPPING_VALID != 0,
        };
        array_at::<4>(self.0.bytes, 64).filter(|_| valid).map(u32::from_le_bytes)
    }
}

impl fmt::Debug for SmmuV3<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmmuV3")
            .field("node", &self.0)
            .field("base_address", &self.base_address())
            .field("flags", &format_args!("{:#x}", self.flags()))
            .field("model", &self.model())
            .field(
                "gsivs",
                &[self.event_gsiv(), self.pri_gsiv(), self.gerr_gsiv(), self.sync_gsiv()],
            )
            .finish()
    }
}

/// Performance monitor counter group node (DEN0049 §3.1.1.6).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pmcg<'a>(IortNode<'a>);

impl<'a> Pmcg<'a> {
    /// The node header.
    pub fn node(&self) -> IortNode<'a> {
        self.0
    }

    /// Physical address of register page 0.
    pub fn page0_base(&self) -> PhysAddr {
        PhysAddr(u64_at(self.0.bytes, 16))
    }

    /// GSIV of the overflow interrupt (0: MSI).
    pub fn overflow_gsiv(&self) -> u32 {
        u32_at(self.0.bytes, 24)
    }

    /// Offset of the node (SMMUv3, root complex or named component) the counters belong to;
    /// resolve it with [`Iort::node_at`].
    pub fn node_reference(&self) -> u32 {
        u32_at(self.0.bytes, 28)
    }

    /// Physical address of register page 1.
    pub fn page1_base(&self) -> PhysAddr {
        PhysAddr(u64_at(self.0.bytes, 32))
    }
}

impl fmt::Debug for Pmcg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pmcg")
            .field("node", &self.0)
            .field("page0_base", &self.page0_base())
            .field("node_reference", &self.node_reference())
            .finish()
    }
}

/// Reserved memory range node (DEN0049 §3.1.1.7, issue E.c and later): memory that
/// the StreamIDs of its ID mappings access from boot on, so it must stay mapped for them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rmr<'a>(IortNode<'a>);

impl<'a> Rmr<'a> {
    /// The node header.
    pub fn node(&self) -> IortNode<'a> {
        self.0
    }

    /// Flags (bit 0 remapping permitted, bit 1 privileged access, bits 9:2 access attributes).
    pub fn flags(&self) -> u32 {
        u32_at(self.0.bytes, 16)
    }

    /// The memory ranges.
    pub fn memory_ranges(&self) -> RmrRanges<'a> {
        let count = u32_at(self.0.bytes, 20);
        let length = to_usize(count).saturating_mul(RMR_DESCRIPTOR_LEN);
        let descriptors =
            sub_slice(self.0.bytes, to_usize(u32_at(self.0.bytes, 24)), length).unwrap_or_default();
        RmrRanges { descriptors: descriptors.chunks_exact(RMR_DESCRIPTOR_LEN), done: false }
    }
}

impl fmt::Debug for Rmr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rmr").field("node", &self.0).field("flags", &self.flags()).finish()
    }
}

/// One reserved memory range of an [`Rmr`] node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RmrRange {
    /// First byte.
    pub base: PhysAddr,
    /// Size in bytes.
    pub length: u64,
}

/// Iterator over the ranges of an [`Rmr`] node; a range that wraps the address space is
/// [`Error::AddressOverflow`]. Iteration stops after the first error.
#[derive(Clone, Debug)]
pub struct RmrRanges<'a> {
    descriptors: core::slice::ChunksExact<'a, u8>,
    done: bool,
}

impl Iterator for RmrRanges<'_> {
    type Item = Result<RmrRange>;

    fn next(&mut self) -> Option<Result<RmrRange>> {
        if self.done {
            return None;
        }
        let d = self.descriptors.next()?;
        let range = RmrRange { base: PhysAddr(u64_at(d, 0)), length: u64_at(d, 8) };
        let result = range.base.checked_add(range.length).map(|_| range);
        self.done = result.is_err();
        Some(result)
    }
}

/// Iterator over the ID mappings of a node (see [`IortNode::id_mappings`]).
///
/// An output reference that is not the start of a node is [`Error::BadReference`]; an input or
/// output range that wraps 32 bits is [`Error::InvalidField`]. Iteration stops after the first
/// error.
#[derive(Clone, Debug)]
pub struct IdMappings<'a> {
    node: IortNode<'a>,
    index: u32,
    done: bool,
}

impl<'a> IdMappings<'a> {
    fn read(&self) -> Result<IdMapping<'a>> {
        let bytes = self.node.bytes;
        let start = to_usize(self.index)
            .checked_mul(ID_MAPPING_LEN)
            .and_then(|o| o.checked_add(to_usize(u32_at(bytes, 12))))
            .unwrap_or(usize::MAX);
        // The array was checked to lie inside the node when the node was read.
        let m = sub_slice(bytes, start, ID_MAPPING_LEN).unwrap_or_default();
        let (input_base, raw_count, output_base) = (u32_at(m, 0), u32_at(m, 4), u32_at(m, 8));
        let flags = u32_at(m, 16);
        let output = self.node.iort.node_at(u32_at(m, 12))?;
        if flags & IdMapping::SINGLE_MAPPING == 0 {
            for base in [input_base, output_base] {
                if base.checked_add(raw_count).is_none() {
                    return Err(Error::InvalidField {
                        what: "IORT ID mapping range end (wraps 32 bits)",
                        value: u64::from(base) + u64::from(raw_count),
                    });
                }
            }
        }
        Ok(IdMapping { input_base, raw_count, output_base, output, flags })
    }
}

impl<'a> Iterator for IdMappings<'a> {
    type Item = Result<IdMapping<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.index >= self.node.id_mapping_count() {
            return None;
        }
        let result = self.read();
        self.index += 1;
        self.done = result.is_err();
        Some(result)
    }
}

/// One ID mapping: IDs `input_base ..= input_base + id_count - 1` leaving the node become
/// `output_base + (id - input_base)` entering the output node (DEN0049 §3.1.1, Table 4).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdMapping<'a> {
    input_base: u32,
    raw_count: u32,
    output_base: u32,
    output: IortNode<'a>,
    flags: u32,
}

impl<'a> IdMapping<'a> {
    /// Flags bit 0: a single mapping, which gives the node's own ID (`output_base`) and has no
    /// input range; used for an SMMU's or a named component's own MSIs.
    pub const SINGLE_MAPPING: u32 = 1;

    /// Lowest input ID.
    pub fn input_base(&self) -> u32 {
        self.input_base
    }

    /// Number of IDs in the range (the table stores this minus one).
    pub fn id_count(&self) -> u64 {
        u64::from(self.raw_count) + 1
    }

    /// Output ID of `input_base`.
    pub fn output_base(&self) -> u32 {
        self.output_base
    }

    /// The node the IDs go to (checked to be a node start).
    pub fn output_node(&self) -> IortNode<'a> {
        self.output
    }

    /// The raw flags.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Whether this is a single mapping ([`SINGLE_MAPPING`](Self::SINGLE_MAPPING)).
    pub fn is_single(&self) -> bool {
        self.flags & Self::SINGLE_MAPPING != 0
    }

    /// The output ID for input `id`, or `None` if `id` is outside the range or this is a single
    /// mapping.
    pub fn map(&self, id: u32) -> Option<u32> {
        let delta = id.checked_sub(self.input_base)?;
        if self.is_single() || delta > self.raw_count {
            return None;
        }
        self.output_base.checked_add(delta)
    }
}

impl fmt::Debug for IdMapping<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdMapping")
            .field("input_base", &format_args!("{:#x}", self.input_base))
            .field("id_count", &format_args!("{:#x}", self.id_count()))
            .field("output_base", &format_args!("{:#x}", self.output_base))
            .field("output_node", &format_args!("{:#x}", self.output.offset))
            .field("flags", &self.flags)
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{boundary_mutations, edits, fix_checksum, mutate, sdt};
    use super::*;

    type Mapping = (u32, u32, u32, u32, u32);

    /// A node: header, `fixed` type-specific bytes, then the ID mappings.
    fn node(
        kind: u8,
        revision: u8,
        identifier: u32,
        fixed: &[u8],
        mappings: &[Mapping],
    ) -> Vec<u8> {
        let len = 16 + fixed.len() + 20 * mappings.len();
        let mut n = vec![kind];
        n.extend_from_slice(&u16::try_from(len).unwrap().to_le_bytes());
        n.push(revision);
        n.extend_from_slice(&identifier.to_le_bytes());
        n.extend_from_slice(&u32::try_from(mappings.len()).unwrap().to_le_bytes());
        let array = if mappings.is_empty() { 0 } else { 16 + fixed.len() as u32 };
        n.extend_from_slice(&array.to_le_bytes());
        n.extend_from_slice(fixed);
        for &(input, raw_count, output, reference, flags) in mappings {
            for v in [input, raw_count, output, reference, flags] {
                n.extend_from_slice(&v.to_le_bytes());
            }
        }
        n
    }

    fn iort(revision: u8, nodes: &[Vec<u8>]) -> Vec<u8> {
        let mut body = u32::try_from(nodes.len()).unwrap().to_le_bytes().to_vec();
        body.extend_from_slice(&48u32.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        nodes.iter().for_each(|n| body.extend_from_slice(n));
        sdt(b"IORT", revision, &body)
    }

    fn le(values: &[(u64, usize)]) -> Vec<u8> {
        values.iter().flat_map(|&(v, size)| v.to_le_bytes()[..size].to_vec()).collect()
    }

    fn its_group(ids: &[u32]) -> Vec<u8> {
        let mut fixed = le(&[(ids.len() as u64, 4)]);
        ids.iter().for_each(|id| fixed.extend_from_slice(&id.to_le_bytes()));
        node(ITS_GROUP, 1, 0, &fixed, &[])
    }

    fn smmu_v3(
        revision: u8,
        base: u64,
        flags: u32,
        gsivs: [u32; 4],
        mappings: &[Mapping],
    ) -> Vec<u8> {
        let [event, pri, gerr, sync] = gsivs.map(u64::from);
        let fixed = le(&[
            (base, 8),
            (u64::from(flags), 4),
            (0, 4),
            (0, 8),
            (0, 4),
            (event, 4),
            (pri, 4),
            (gerr, 4),
            (sync, 4),
            (2, 4),
            (1, 4),
        ]);
        node(SMMU_V3, revision, 1, &fixed, mappings)
    }

    fn root_complex(segment: u32, mappings: &[Mapping]) -> Vec<u8> {
        let fixed =
            le(&[(1, 4), (0, 1), (0, 2), (3, 1), (0, 4), (u64::from(segment), 4), (64, 1), (0, 3)]);
        node(ROOT_COMPLEX, 3, 2, &fixed, mappings)
    }

    const ITS_OFFSET: u32 = 48;
    const SMMU_OFFSET: u32 = 72;

    /// What QEMU 10.0 builds for `-M virt,iommu=smmuv3` (hw/arm/virt-acpi-build.c, build_iort):
    /// an ITS group at 48, the SMMUv3 at 72 (its own IDs go to the ITS), and the root complex of
    /// segment 0 at 160 sending RIDs 0..=0xffff to the SMMUv3 as StreamIDs 0..=0xffff.
    pub(crate) fn qemu_virt_iort() -> Vec<u8> {
        iort(
            3,
            &[
                its_group(&[0]),
                smmu_v3(4, 0x0905_0000, 1, [106, 107, 109, 108], &[(0, 0xffff, 0, ITS_OFFSET, 0)]),
                root_complex(0, &[(0, 0xffff, 0, SMMU_OFFSET, 0)]),
            ],
        )
    }

    /// One node of every type, plus an unknown one.
    fn every_kind_iort() -> Vec<u8> {
        let mut named = le(&[(1, 4), (1, 4), (0, 1), (0, 2), (0, 1), (48, 1)]);
        named.extend_from_slice(b"\\_SB.SMB0\0\0\0");
        let smmu2 = le(&[
            (0x2b40_0000, 8),
            (0x1_0000, 8),
            (1, 4),
            (3, 4),
            (60, 4),
            (0, 4),
            (0, 4),
            (0, 4),
            (0, 4),
        ]);
        let pmcg = le(&[(0x2b42_0000, 8), (0, 4), (76, 4), (0x2b43_0000, 8)]);
        let mut rmr = le(&[(1, 4), (1, 4), (28, 4)]);
        rmr.extend_from_slice(&le(&[(0x8000_0000, 8), (0x1_0000, 8), (0, 4)]));
        iort(
            5,
            &[
                its_group(&[0, 1]), // 48, 28 bytes
                smmu_v3(
                    5,
                    0x2b00_0000,
                    0b11001,
                    [0, 0, 0, 0],
                    &[(0, 0xffff, 0x1_0000, ITS_OFFSET, 0), (0, 0, 7, ITS_OFFSET, 1)],
                ), // 76
                node(NAMED_COMPONENT, 4, 3, &named, &[(0, 0, 0x20, 76, 1)]),
                root_complex(1, &[(0, 0xffff, 0, 76, 0)]),
                node(SMMU_V1_V2, 3, 4, &smmu2, &[]),
                node(PMCG, 2, 5, &pmcg, &[(0, 0, 0x30, ITS_OFFSET, 1)]),
                node(RMR, 3, 6, &rmr, &[(0x10, 0, 0x10, 76, 0)]),
                node(7, 0, 7, &[0xee; 8], &[]),
                its_group(&[9]),
            ],
        )
    }

    fn exercise(bytes: &[u8]) {
        let Ok(t) = Iort::parse(bytes) else { return };
        let _ = format!("{t:?} {:?}", t.header());
        for n in t.nodes() {
            let Ok(n) = n else { break };
            let _ = (n.offset(), n.length(), n.identifier(), format!("{n:?} {:?}", n.kind()));
            match n.kind() {
                IortNodeKind::ItsGroup(x) => assert!(x.its_ids().count() <= x.its_count() as usize),
                IortNodeKind::NamedComponent(x) => {
                    let _ = (
                        x.node_flags(),
                        x.memory_access().is_coherent(),
                        x.memory_address_size_limit(),
                        x.device_name(),
                    );
                }
                IortNodeKind::RootComplex(x) => {
                    let _ = (
                        x.memory_access(),
                        x.ats_supported(),
                        x.pci_segment(),
                        x.memory_address_size_limit(),
                    );
                }
                IortNodeKind::SmmuV1V2(x) => {
                    let _ = (x.base_address(), x.span(), x.model(), x.flags());
                }
                IortNodeKind::SmmuV3(x) => {
                    let _ = (x.coherent_access_override(), x.httu_override(), x.proximity_domain());
                    let _ = (x.device_id_mapping_index(), x.base_address(), x.model());
                }
                IortNodeKind::Pmcg(x) => {
                    let _ = (
                        x.page0_base(),
                        x.page1_base(),
                        x.overflow_gsiv(),
                        t.node_at(x.node_reference()),
                    );
                }
                IortNodeKind::Rmr(x) => {
                    let _ = (x.flags(), x.memory_ranges().count());
                }
                IortNodeKind::Unknown { .. } => {}
            }
            for m in n.id_mappings() {
                let Ok(m) = m else { break };
                let _ = (
                    m.map(0),
                    m.map(0xffff),
                    m.output_node().kind(),
                    m.is_single(),
                    format!("{m:?}"),
                );
            }
        }
        for segment in [0, 1] {
            for rid in [0, 0x10, 0xffff] {
                let _ = t.map_rid(segment, RequesterId(rid));
            }
        }
    }

    fn nodes(bytes: &[u8]) -> Result<Vec<IortNode<'_>>> {
        Iort::parse(bytes)?.nodes().collect()
    }

    #[test]
    fn qemu_virt() {
        let bytes = qemu_virt_iort();
        assert_eq!(bytes.len(), 216);
        let t = Iort::parse(&bytes).unwrap();
        assert_eq!((t.header().revision(), t.node_count()), (3, 3));
        let n = nodes(&bytes).unwrap();
        assert_eq!(n.iter().map(|n| n.offset()).collect::<Vec<_>>(), [48, 72, 160]);

        let IortNodeKind::ItsGroup(its) = n[0].kind() else { panic!() };
        assert_eq!(its.its_ids().collect::<Vec<_>>(), [0]);
        assert_eq!(n[0].id_mappings().count(), 0);

        let IortNodeKind::SmmuV3(smmu) = n[1].kind() else { panic!() };
        assert_eq!(smmu.base_address(), PhysAddr(0x0905_0000));
        assert!(smmu.coherent_access_override());
        assert_eq!(smmu.httu_override(), 0);
        assert_eq!(
            (smmu.event_gsiv(), smmu.pri_gsiv(), smmu.gerr_gsiv(), smmu.sync_gsiv()),
            (106, 107, 109, 108)
        );
        assert_eq!(smmu.model(), 0);
        assert_eq!(smmu.proximity_domain(), None);
        // Revision 4 with every interrupt a GSIV: no DeviceID mapping.
        assert_eq!(smmu.device_id_mapping_index(), None);
        let m: Vec<_> = n[1].id_mappings().collect::<Result<_>>().unwrap();
        assert_eq!(m[0].output_node(), n[0]);

        let IortNodeKind::RootComplex(rc) = n[2].kind() else { panic!() };
        assert_eq!(
            (rc.pci_segment(), rc.ats_supported(), rc.memory_address_size_limit()),
            (0, false, Some(64))
        );
        assert!(rc.memory_access().is_coherent());
        assert_eq!(rc.memory_access().memory_access_flags, 3);
        let m: Vec<_> = n[2].id_mappings().collect::<Result<_>>().unwrap();
        assert_eq!((m[0].input_base(), m[0].id_count(), m[0].output_base()), (0, 0x10000, 0));
        assert_eq!(m[0].output_node(), n[1]);
        assert_eq!((m[0].map(0xffff), m[0].map(0x1_0000)), (Some(0xffff), None));

        for rid in [0u16, 0x0008, 0x0100, 0xffff] {
            let (s, sid) = t.map_rid(0, RequesterId(rid)).unwrap().unwrap();
            assert_eq!((s, sid), (smmu, StreamId(u32::from(rid))));
        }
        assert_eq!(
            t.map_rid(1, RequesterId(0)),
            Err(Error::NotFound { what: "IORT root complex node for the PCI segment" })
        );
    }

    #[test]
    fn every_node_kind() {
        let bytes = every_kind_iort();
        let t = Iort::parse(&bytes).unwrap();
        let n = nodes(&bytes).unwrap();
        assert_eq!(n.len(), 9);
        let IortNodeKind::ItsGroup(its) = n[0].kind() else { panic!() };
        assert_eq!(its.its_ids().collect::<Vec<_>>(), [0, 1]);

        let IortNodeKind::SmmuV3(smmu) = n[1].kind() else { panic!() };
        assert_eq!(n[1].offset(), 76);
        assert_eq!(smmu.httu_override(), 0);
        assert_eq!(smmu.proximity_domain(), Some(2));
        assert_eq!(smmu.device_id_mapping_index(), Some(1));
        assert!(smmu.coherent_access_override());
        let m: Vec<_> = n[1].id_mappings().collect::<Result<_>>().unwrap();
        assert!(m[1].is_single());
        assert_eq!((m[1].output_base(), m[1].map(0)), (7, None));
        assert_eq!(m[0].map(5), Some(0x1_0005));

        let IortNodeKind::NamedComponent(nc) = n[2].kind() else { panic!() };
        assert_eq!(
            (nc.device_name(), nc.node_flags(), nc.memory_address_size_limit()),
            (&b"\\_SB.SMB0"[..], 1, 48)
        );
        assert!(nc.memory_access().is_coherent());

        let IortNodeKind::RootComplex(rc) = n[3].kind() else { panic!() };
        assert_eq!(rc.pci_segment(), 1);
        assert_eq!(t.map_rid(1, RequesterId(0x0200)), Ok(Some((smmu, StreamId(0x200)))));

        let IortNodeKind::SmmuV1V2(s2) = n[4].kind() else { panic!() };
        assert_eq!(
            (s2.base_address(), s2.span(), s2.model(), s2.flags()),
            (PhysAddr(0x2b40_0000), 0x1_0000, 1, 3)
        );

        let IortNodeKind::Pmcg(pmcg) = n[5].kind() else { panic!() };
        assert_eq!(
            (pmcg.page0_base(), pmcg.page1_base()),
            (PhysAddr(0x2b42_0000), PhysAddr(0x2b43_0000))
        );
        assert_eq!(t.node_at(pmcg.node_reference()), Ok(n[1]));

        let IortNodeKind::Rmr(rmr) = n[6].kind() else { panic!() };
        assert_eq!(rmr.flags(), 1);
        assert_eq!(
            rmr.memory_ranges().collect::<Vec<_>>(),
            [Ok(RmrRange { base: PhysAddr(0x8000_0000), length: 0x1_0000 })]
        );
        assert_eq!(n[6].id_mappings().next().unwrap().unwrap().output_node(), n[1]);

        assert_eq!(n[7].kind(), IortNodeKind::Unknown { kind: 7, length: 24 });
        let IortNodeKind::ItsGroup(last) = n[8].kind() else { panic!("unknown node not skipped") };
        assert_eq!(last.its_ids().collect::<Vec<_>>(), [9]);
        for node in &n {
            assert!(!format!("{:?}", node.kind()).is_empty());
        }
    }

    #[test]
    fn map_rid_follows_the_mappings() {
        // RIDs 0x100..=0x1ff go to the SMMU at StreamID 0x2000 + (rid - 0x100); the rest bypass
        // to the ITS.
        let t = iort(
            3,
            &[
                its_group(&[0]),
                smmu_v3(4, 0x1000, 0, [1, 2, 3, 4], &[]),
                root_complex(
                    0,
                    &[
                        (0, 0xff, 0, ITS_OFFSET, 0),
                        (0x100, 0xff, 0x2000, SMMU_OFFSET, 0),
                        (0x200, 0xfdff, 0x200, ITS_OFFSET, 0),
                    ],
                ),
            ],
        );
        let io = Iort::parse(&t).unwrap();
        assert_eq!(
            io.map_rid(0, RequesterId(0x0180)).unwrap().map(|(_, s)| s),
            Some(StreamId(0x2080))
        );
        assert_eq!(io.map_rid(0, RequesterId(0x00ff)), Ok(None));
        assert_eq!(io.map_rid(0, RequesterId(0x0200)), Ok(None));

        // Off-by-one firmware: the first range stores the count (0x100) instead of count - 1,
        // so RID 0x100 is in both; the range that starts at it wins.
        let t = iort(
            3,
            &[
                its_group(&[0]),
                smmu_v3(4, 0x1000, 0, [1, 2, 3, 4], &[]),
                root_complex(
                    0,
                    &[(0, 0x100, 0, ITS_OFFSET, 0), (0x100, 0xff, 0x5000, SMMU_OFFSET, 0)],
                ),
            ],
        );
        let io = Iort::parse(&t).unwrap();
        assert_eq!(
            io.map_rid(0, RequesterId(0x0100)).unwrap().map(|(_, s)| s),
            Some(StreamId(0x5000))
        );
        assert_eq!(io.map_rid(0, RequesterId(0x00ff)), Ok(None));

        // A single mapping on a root complex sends every RID to one StreamID.
        let t = iort(
            3,
            &[
                its_group(&[0]),
                smmu_v3(4, 0x1000, 0, [1, 2, 3, 4], &[]),
                root_complex(0, &[(0, 0, 9, SMMU_OFFSET, 1)]),
            ],
        );
        assert_eq!(
            Iort::parse(&t).unwrap().map_rid(0, RequesterId(0x1234)).unwrap().map(|(_, s)| s),
            Some(StreamId(9))
        );

        // No mapping covers the RID.
        let t = iort(
            3,
            &[
                its_group(&[0]),
                smmu_v3(4, 0x1000, 0, [1, 2, 3, 4], &[]),
                root_complex(0, &[(0, 0xf, 0, SMMU_OFFSET, 0)]),
            ],
        );
        assert_eq!(Iort::parse(&t).unwrap().map_rid(0, RequesterId(0x10)), Ok(None));
    }

    #[test]
    fn map_rid_is_bounded_and_rejects_smmu_v1() {
        // A root complex whose mapping points at itself: a loop.
        let t = iort(3, &[root_complex(0, &[(0, 0xffff, 0, 48, 0)])]);
        assert_eq!(
            Iort::parse(&t).unwrap().map_rid(0, RequesterId(1)),
            Err(Error::BadReference {
                what: "IORT ID mapping chain (too long or a loop)",
                value: 48
            })
        );
        let smmu2 = le(&[
            (0x2b40_0000, 8),
            (0x1_0000, 8),
            (1, 4),
            (0, 4),
            (60, 4),
            (0, 4),
            (0, 4),
            (0, 4),
            (0, 4),
        ]);
        let t = iort(
            3,
            &[node(SMMU_V1_V2, 0, 0, &smmu2, &[]), root_complex(0, &[(0, 0xffff, 0, 48, 0)])],
        );
        assert!(matches!(
            Iort::parse(&t).unwrap().map_rid(0, RequesterId(1)),
            Err(Error::InvalidField { value: 48, .. })
        ));
    }

    #[test]
    fn malformed_tables() {
        let good = qemu_virt_iort();
        assert!(matches!(
            Iort::parse(&good[..100]),
            Err(Error::LengthOverrun { what: "IORT", .. })
        ));
        assert_eq!(
            Iort::parse(&sdt(b"IORT", 3, &[0; 8])),
            Err(Error::Truncated { what: "IORT", len: 44, need: 48 })
        );
        let mut bad = good.clone();
        bad[100] ^= 0x80;
        assert_eq!(Iort::parse(&bad), Err(Error::BadChecksum { what: "IORT", sum: 0x80 }));
        assert!(matches!(
            Iort::parse(&sdt(b"IORX", 3, &[0; 12])),
            Err(Error::BadSignature { what: "IORT", .. })
        ));
        let mut bad = good.clone();
        bad[40] = 20;
        fix_checksum(&mut bad);
        assert_eq!(
            Iort::parse(&bad),
            Err(Error::BadReference { what: "IORT node array offset", value: 20 })
        );
        let mut bad = good.clone();
        bad[41] = 1;
        fix_checksum(&mut bad);
        assert_eq!(
            Iort::parse(&bad),
            Err(Error::BadReference { what: "IORT node array offset", value: 0x130 })
        );
        // More nodes declared than present.
        let mut bad = good.clone();
        bad[36] = 4;
        fix_checksum(&mut bad);
        assert_eq!(nodes(&bad), Err(Error::Truncated { what: "IORT node", len: 0, need: 16 }));
    }

    #[test]
    fn malformed_nodes() {
        // Zero length.
        let mut n = its_group(&[0]);
        n[1] = 0;
        assert_eq!(
            nodes(&iort(3, &[n])),
            Err(Error::BadLength { what: "IORT node", offset: 48, length: 0 })
        );
        // Overrun.
        let mut n = its_group(&[0]);
        n[1] = 0x40;
        assert_eq!(
            nodes(&iort(3, &[n])),
            Err(Error::LengthOverrun {
                what: "IORT node",
                offset: 48,
                length: 0x40,
                available: 24
            })
        );
        // Too small for an SMMUv3.
        let n = node(SMMU_V3, 0, 0, &[0; 40], &[]);
        assert_eq!(
            nodes(&iort(3, &[n])),
            Err(Error::BadLength { what: "IORT SMMUv3", offset: 48, length: 56 })
        );
        // ITS identifiers past the node.
        let mut n = its_group(&[0]);
        n[16] = 2;
        assert_eq!(
            nodes(&iort(3, &[n])),
            Err(Error::LengthOverrun {
                what: "IORT ITS group identifiers",
                offset: 68,
                length: 8,
                available: 4
            })
        );
        // ID mapping array past the node.
        let mut n = root_complex(0, &[(0, 0xffff, 0, 48, 0)]);
        n[8] = 2;
        assert_eq!(
            nodes(&iort(3, &[n])),
            Err(Error::LengthOverrun {
                what: "IORT ID mappings",
                offset: 84,
                length: 40,
                available: 20
            })
        );
        // ID mapping array inside the fixed part.
        let mut n = root_complex(0, &[(0, 0xffff, 0, 48, 0)]);
        n[12] = 16;
        assert_eq!(
            nodes(&iort(3, &[n])),
            Err(Error::BadReference { what: "IORT node ID array reference", value: 16 })
        );
        // RMR ranges past the node.
        let rmr = le(&[(0, 4), (3, 4), (28, 4), (0, 8), (0, 8), (0, 4)]);
        assert!(matches!(
            nodes(&iort(5, &[node(RMR, 3, 0, &rmr, &[])])),
            Err(Error::LengthOverrun { what: "IORT RMR memory ranges", .. })
        ));
        // Named component name without a terminating NUL.
        let named = le(&[(0, 4), (0, 8), (0, 1), (u64::from_le_bytes(*b"\\_SB.X\x01\x01"), 8)]);
        assert!(matches!(
            nodes(&iort(3, &[node(NAMED_COMPONENT, 4, 0, &named, &[])])),
            Err(Error::InvalidField {
                what: "IORT named component name (no NUL) at offset",
                value: 48
            })
        ));
    }

    #[test]
    fn bad_references_and_ranges() {
        // Output reference into the middle of the ITS group node.
        let t = iort(3, &[its_group(&[0]), root_complex(0, &[(0, 0xffff, 0, 52, 0)])]);
        let n = nodes(&t).unwrap();
        assert_eq!(
            n[1].id_mappings().next(),
            Some(Err(Error::BadReference { what: "IORT node reference", value: 52 }))
        );
        assert_eq!(
            Iort::parse(&t).unwrap().map_rid(0, RequesterId(0)),
            Err(Error::BadReference { what: "IORT node reference", value: 52 })
        );
        // Past the last node and to offset 0.
        let t = iort(
            3,
            &[its_group(&[0]), root_complex(0, &[(0, 0xffff, 0, 0x1000, 0), (0, 0, 0, 0, 0)])],
        );
        let io = Iort::parse(&t).unwrap();
        assert_eq!(
            io.node_at(0),
            Err(Error::BadReference { what: "IORT node reference", value: 0 })
        );
        assert_eq!(
            io.node_at(0x1000),
            Err(Error::BadReference { what: "IORT node reference", value: 0x1000 })
        );
        let mut it = nodes(&t).unwrap()[1].id_mappings();
        assert!(matches!(it.next(), Some(Err(Error::BadReference { .. }))));
        assert_eq!(it.next(), None, "iteration stops after an error");
        // Output range that wraps 32 bits.
        let t = iort(3, &[its_group(&[0]), root_complex(0, &[(0, 0xffff, 0xffff_ff00, 48, 0)])]);
        assert_eq!(
            nodes(&t).unwrap()[1].id_mappings().next(),
            Some(Err(Error::InvalidField {
                what: "IORT ID mapping range end (wraps 32 bits)",
                value: 0x1_0000_feff
            }))
        );
        // RMR range that wraps the address space.
        let rmr = le(&[(0, 4), (1, 4), (28, 4), (u64::MAX, 8), (2, 8), (0, 4)]);
        let t = iort(5, &[node(RMR, 3, 0, &rmr, &[])]);
        let IortNodeKind::Rmr(r) = nodes(&t).unwrap()[0].kind() else { panic!() };
        assert!(matches!(r.memory_ranges().next(), Some(Err(Error::AddressOverflow { .. }))));
    }

    #[test]
    fn every_byte_mutated_to_boundary_values_never_panics() {
        boundary_mutations(&qemu_virt_iort()).for_each(|m| exercise(&m));
        boundary_mutations(&every_kind_iort()).for_each(|m| exercise(&m));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            exercise(&bytes);
        }

        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 12..320)) {
            exercise(&sdt(b"IORT", 5, &body));
        }

        #[test]
        fn random_nodes_never_panic(nodes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..96), 0..5)) {
            // Valid table framing around random node bytes, so the node checks get exercised.
            exercise(&iort(5, &nodes));
        }

        #[test]
        fn mutated_tables_never_panic(edits in edits()) {
            exercise(&mutate(&qemu_virt_iort(), &edits));
            exercise(&mutate(&every_kind_iort(), &edits));
        }
    }
}
