//! The flattened-device-tree container (DTSpec v0.4 ch. 5): header, structure-block tokens,
//! nodes and properties.
//!
//! [`DeviceTree::new`] checks the header and walks the whole structure block once, so every
//! later walk reads tokens that are known to be well formed. The walkers still go through the
//! same fallible [`DeviceTree::token_at`] and stop at an error instead of trusting that check:
//! a bug here ends an iteration early, it never panics. Every walk moves a cursor strictly
//! forward through a finite block, so none can loop.

use core::fmt;
use core::num::NonZeroU32;

use crate::error::{Error, Result};

use super::values::{Phandle, RegEntries, Region, StringList, be32, be64, property_u32};

/// The FDT magic number (DTSpec §5.2).
const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of the version-17 header; version 16 lacks `size_dt_struct` but still has this much room.
const HEADER_LEN: usize = 40;
/// Oldest version whose layout this reader knows (DTSpec §5.2: 16 and 17 are in use).
const FIRST_VERSION: u32 = 16;
/// Newest version this reader is backwards compatible with.
const LAST_COMPATIBLE_VERSION: u32 = 17;

const TOKEN_BEGIN_NODE: u32 = 1;
const TOKEN_END_NODE: u32 = 2;
const TOKEN_PROP: u32 = 3;
const TOKEN_NOP: u32 = 4;
const TOKEN_END: u32 = 9;

/// Deepest node nesting accepted (Linux's `FDT_MAX_DEPTH`). Bounds the walker's ancestor stack;
/// real trees are under 10 deep.
pub const MAX_DEPTH: usize = 64;

/// A validated flattened device tree blob: a `Copy` view that borrows it.
#[derive(Clone, Copy)]
pub struct DeviceTree<'a> {
    structure: &'a [u8],
    strings: &'a [u8],
    reservations: &'a [u8],
    version: u32,
    boot_cpuid: u32,
}

/// One structure-block token with what it carries.
#[derive(Clone, Copy)]
pub(super) enum Token<'a> {
    BeginNode(&'a str),
    EndNode,
    Prop(Property<'a>),
    Nop,
    End,
}

impl<'a> DeviceTree<'a> {
    /// Checks the header and the structure block of `blob` and returns a view of it.
    ///
    /// Bytes past the header's `totalsize` are ignored (QEMU's dump pads to 1 MiB).
    pub fn new(blob: &'a [u8]) -> Result<Self> {
        let field = |index: usize| be32(blob, index.saturating_mul(4)).unwrap_or(0);
        if blob.len() < HEADER_LEN {
            return Err(Error::Truncated { what: "FDT header", len: blob.len(), need: HEADER_LEN });
        }
        let magic = field(0);
        if magic != FDT_MAGIC {
            return Err(Error::InvalidField { what: "FDT magic", value: magic.into() });
        }
        let (totalsize, off_struct, off_strings, off_rsvmap) =
            (field(1), field(2), field(3), field(4));
        let (version, last_compatible, boot_cpuid) = (field(5), field(6), field(7));
        let (size_strings, size_struct) = (field(8), field(9));
        if version < FIRST_VERSION {
            return Err(Error::InvalidField { what: "FDT version", value: version.into() });
        }
        if last_compatible > LAST_COMPATIBLE_VERSION {
            return Err(Error::InvalidField {
                what: "FDT last_comp_version",
                value: last_compatible.into(),
            });
        }
        let total = to_usize(totalsize);
        if total < HEADER_LEN {
            return Err(Error::InvalidField { what: "FDT totalsize", value: totalsize.into() });
        }
        let blob = blob.get(..total).ok_or(Error::Truncated {
            what: "FDT totalsize",
            len: blob.len(),
            need: total,
        })?;
        // Version 16 has no size_dt_struct: the block then runs to the end of the blob.
        let struct_len = if version >= 17 {
            to_usize(size_struct)
        } else {
            total.saturating_sub(to_usize(off_struct))
        };
        let structure = block(blob, off_struct, struct_len, 4, "FDT structure block")?;
        let strings = block(blob, off_strings, to_usize(size_strings), 1, "FDT strings block")?;
        // The reservation block's length is found by walking it to its terminator.
        block(blob, off_rsvmap, 0, 8, "FDT memory reservation block")?;
        let reservations = blob.get(to_usize(off_rsvmap)..).unwrap_or_default();
        let tree = Self { structure, strings, reservations, version, boot_cpuid };
        tree.check_reservations(off_rsvmap)?;
        tree.check_structure()?;
        Ok(tree)
    }

    /// The header's version (16 or later).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The header's `boot_cpuid_phys`: the physical ID (MPIDR affinity on Arm) of the boot CPU.
    pub fn boot_cpuid(&self) -> u32 {
        self.boot_cpuid
    }

    /// The root node `/`.
    pub fn root(&self) -> Node<'a> {
        // new() checked that the block starts (after NOPs) with the root's FDT_BEGIN_NODE.
        self.nodes().next().unwrap_or(Node {
            tree: *self,
            name: "",
            props: self.structure.len(),
            parent_props: None,
            irq_holder: None,
            depth: 0,
        })
    }

    /// Every node in document order (depth first, parents before children).
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes {
            tree: *self,
            offset: 0,
            depth: 0,
            stack: [Ancestor::default(); MAX_DEPTH],
            done: false,
        }
    }

    /// Every node whose `compatible` list contains `compatible`, in document order.
    pub fn compatible_nodes<'c>(
        &self,
        compatible: &'c str,
    ) -> impl Iterator<Item = Node<'a>> + use<'a, 'c> {
        self.nodes().filter(move |node| node.is_compatible(compatible))
    }

    /// The node at an absolute `path` such as `/chosen` or `/soc/serial@1000`.
    ///
    /// A component without a unit address (`serial`) also matches the first child whose name
    /// before `@` is equal (`serial@1000`), as Linux's `of_find_node_by_path` does.
    pub fn find_node(&self, path: &str) -> Option<Node<'a>> {
        let rest = path.strip_prefix('/')?;
        let mut node = self.root();
        for component in rest.split('/').filter(|c| !c.is_empty()) {
            node = node.children().find(|child| node_name_matches(child.name, component))?;
        }
        Some(node)
    }

    /// The node whose `phandle` (or legacy `linux,phandle`) property is `phandle`.
    pub fn node_by_phandle(&self, phandle: Phandle) -> Option<Node<'a>> {
        self.nodes().find(|node| matches!(node.phandle(), Ok(Some(p)) if p == phandle))
    }

    /// Resolves a `stdout-path`-style reference: an absolute path or an `/aliases` name, with
    /// any `:options` suffix dropped. Alias values are not followed further than one level.
    pub fn resolve_path(&self, path: &str) -> Option<Node<'a>> {
        let path = path.split(':').next().unwrap_or(path);
        if path.starts_with('/') {
            return self.find_node(path);
        }
        let alias = self.find_node("/aliases")?.property(path)?.as_str("alias").ok()?;
        if alias.starts_with('/') { self.find_node(alias) } else { None }
    }

    /// The string at `offset` in the strings block.
    fn string_at(&self, offset: u32) -> Result<&'a str> {
        let bad = Error::BadReference { what: "FDT property name offset", value: offset.into() };
        let tail = self.strings.get(to_usize(offset)..).ok_or(bad)?;
        let len = tail.iter().position(|b| *b == 0).ok_or(bad)?;
        let bytes = tail.get(..len).ok_or(bad)?;
        core::str::from_utf8(bytes)
            .map_err(|_| Error::DeviceTree { what: "property name is not UTF-8" })
    }

    /// The token at `offset` in the structure block and the offset of the one after it.
    pub(super) fn token_at(&self, offset: usize) -> Result<(Token<'a>, usize)> {
        let tag = be32(self.structure, offset)
            .ok_or(Error::DeviceTree { what: "structure block ends without FDT_END" })?;
        let body = offset.saturating_add(4);
        let (token, end) = match tag {
            TOKEN_BEGIN_NODE => {
                let tail = self.structure.get(body..).unwrap_or_default();
                let overrun = Error::DeviceTree { what: "node name runs past the structure block" };
                let len = tail.iter().position(|b| *b == 0).ok_or(overrun)?;
                let name = core::str::from_utf8(tail.get(..len).ok_or(overrun)?)
                    .map_err(|_| Error::DeviceTree { what: "node name is not UTF-8" })?;
                (Token::BeginNode(name), body.saturating_add(len).saturating_add(1))
            }
            TOKEN_END_NODE => (Token::EndNode, body),
            TOKEN_PROP => {
                let (Some(len), Some(name_offset)) =
                    (be32(self.structure, body), be32(self.structure, body.saturating_add(4)))
                else {
                    let len = self.structure.len().saturating_sub(body);
                    return Err(Error::Truncated { what: "FDT property header", len, need: 8 });
                };
                let start = body.saturating_add(8);
                let length = to_usize(len);
                let value = start
                    .checked_add(length)
                    .and_then(|end| self.structure.get(start..end))
                    .ok_or(Error::LengthOverrun {
                        what: "FDT property",
                        offset: start,
                        length,
                        available: self.structure.len().saturating_sub(start),
                    })?;
                let name = self.string_at(name_offset)?;
                (Token::Prop(Property { name, value }), start.saturating_add(length))
            }
            TOKEN_NOP => (Token::Nop, body),
            TOKEN_END => (Token::End, body),
            other => {
                return Err(Error::InvalidField {
                    what: "FDT structure token",
                    value: other.into(),
                });
            }
        };
        // Tokens are 4-byte aligned; saturation only happens past the block, where the next
        // read fails.
        Ok((token, end.saturating_add(3) & !3))
    }

    /// Walks the whole structure block once: balanced nodes, one root, properties before
    /// subnodes, nesting within [`MAX_DEPTH`], and a final FDT_END.
    fn check_structure(&self) -> Result<()> {
        let (mut offset, mut depth, mut seen_root, mut in_properties) =
            (0usize, 0usize, false, false);
        // Each pass moves `offset` forward by at least one 4-byte token.
        loop {
            let (token, next) = self.token_at(offset)?;
            match token {
                Token::BeginNode(_) => {
                    if depth == 0 && seen_root {
                        return Err(Error::DeviceTree { what: "more than one root node" });
                    }
                    if depth >= MAX_DEPTH {
                        return Err(Error::CapacityExceeded {
                            what: "FDT node nesting depth",
                            capacity: MAX_DEPTH,
                        });
                    }
                    depth = depth.saturating_add(1);
                    seen_root = true;
                    in_properties = true;
                }
                Token::EndNode => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or(Error::DeviceTree { what: "FDT_END_NODE without FDT_BEGIN_NODE" })?;
                    in_properties = false;
                }
                Token::Prop(_) if depth == 0 => {
                    return Err(Error::DeviceTree { what: "property outside any node" });
                }
                Token::Prop(_) if !in_properties => {
                    return Err(Error::DeviceTree { what: "property after a subnode" });
                }
                Token::Prop(_) | Token::Nop => {}
                Token::End if depth != 0 => {
                    return Err(Error::DeviceTree { what: "FDT_END inside an open node" });
                }
                Token::End if !seen_root => return Err(Error::DeviceTree { what: "no root node" }),
                Token::End => return Ok(()),
            }
            offset = next;
        }
    }

    /// Checks that the reservation block ends with its all-zero entry inside the blob.
    fn check_reservations(&self, offset: u32) -> Result<()> {
        let mut entries = self.reservations.chunks_exact(16);
        // At most len/16 iterations; each consumes one entry.
        loop {
            let Some(entry) = entries.next() else {
                return Err(Error::LengthOverrun {
                    what: "FDT memory reservation block (no terminating entry)",
                    offset: to_usize(offset),
                    length: self.reservations.len().saturating_add(16),
                    available: self.reservations.len(),
                });
            };
            if entry.iter().all(|b| *b == 0) {
                return Ok(());
            }
        }
    }

    /// The raw `/memreserve/` entries (each 16 bytes), up to the terminating one excluded.
    pub(super) fn reservation_entries(&self) -> impl Iterator<Item = (u64, u64)> + use<'a> {
        self.reservations
            .chunks_exact(16)
            .map(|entry| (be64(entry, 0).unwrap_or(0), be64(entry, 8).unwrap_or(0)))
            .take_while(|entry| *entry != (0, 0))
    }

    /// Properties of the node whose first property token is at `props`.
    fn properties_at(&self, props: usize) -> Properties<'a> {
        Properties { tree: *self, offset: props, done: false }
    }

    /// Property `name` of the node whose properties start at `props`.
    pub(super) fn property_at(&self, props: usize, name: &str) -> Option<Property<'a>> {
        self.properties_at(props).find(|p| p.name == name)
    }
}

impl fmt::Debug for DeviceTree<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTree")
            .field("version", &self.version)
            .field("structure_len", &self.structure.len())
            .field("strings_len", &self.strings.len())
            .finish_non_exhaustive()
    }
}

/// A header field as a length or offset; saturates on 16-bit targets, where the bounds check
/// that follows then fails.
pub(super) fn to_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// The block of `len` bytes at `offset` in `blob`, after the header and `align`-aligned.
fn block<'a>(
    blob: &'a [u8],
    offset: u32,
    len: usize,
    align: u64,
    what: &'static str,
) -> Result<&'a [u8]> {
    let start = to_usize(offset);
    if start < HEADER_LEN {
        return Err(Error::InvalidField { what, value: offset.into() });
    }
    if !u64::from(offset).is_multiple_of(align) {
        return Err(Error::Misaligned { what, value: offset.into(), align });
    }
    start.checked_add(len).and_then(|end| blob.get(start..end)).ok_or(Error::LengthOverrun {
        what,
        offset: start,
        length: len,
        available: blob.len().saturating_sub(start),
    })
}

/// Whether node `name` is what the path component `component` asks for.
fn node_name_matches(name: &str, component: &str) -> bool {
    name == component || (!component.contains('@') && name.split('@').next() == Some(component))
}

/// One property: a name from the strings block and the raw value bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Property<'a> {
    /// The property name, e.g. `reg`.
    pub name: &'a str,
    /// The value, big-endian cells or NUL-terminated strings depending on the property.
    pub value: &'a [u8],
}

impl<'a> Property<'a> {
    /// The value as one 32-bit cell. Any other length is [`Error::InvalidField`] carrying the
    /// length, so `what` should say so (`"linux,pci-domain length"`).
    pub fn as_u32(&self, what: &'static str) -> Result<u32> {
        property_u32(self.value, what)
    }

    /// The value as one NUL-terminated UTF-8 string.
    ///
    /// A missing terminator is [`Error::Truncated`]; a NUL before the end (a string list where
    /// one string is expected) or invalid UTF-8 is [`Error::InvalidField`] carrying the offset of
    /// the offending byte.
    pub fn as_str(&self, what: &'static str) -> Result<&'a str> {
        let len = self.value.len();
        let Some((0, text)) = self.value.split_last().map(|(last, text)| (*last, text)) else {
            return Err(Error::Truncated { what, len, need: len.saturating_add(1) });
        };
        if let Some(nul) = text.iter().position(|b| *b == 0) {
            return Err(Error::InvalidField { what, value: nul as u64 });
        }
        core::str::from_utf8(text)
            .map_err(|e| Error::InvalidField { what, value: e.valid_up_to() as u64 })
    }

    /// The value as a list of NUL-terminated strings (`compatible`, `interrupt-names`).
    pub fn strings(&self) -> StringList<'a> {
        StringList::new(self.value)
    }
}

/// A node of the tree: a `Copy` view that borrows the blob.
///
/// It knows where its parent's properties are (for `#address-cells`/`#size-cells`) and which
/// ancestor last set `interrupt-parent`, so no lookup walks back up the tree.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    tree: DeviceTree<'a>,
    name: &'a str,
    /// Offset of the token after FDT_BEGIN_NODE and the name: the first property, if any.
    props: usize,
    /// The parent's `props`; `None` for the root.
    parent_props: Option<usize>,
    /// `props` of the nearest strict ancestor that has `interrupt-parent`.
    irq_holder: Option<usize>,
    depth: usize,
}

impl<'a> Node<'a> {
    /// The tree this node belongs to.
    pub fn tree(&self) -> DeviceTree<'a> {
        self.tree
    }

    /// The node name with its unit address (`pcie@10000000`); empty for the root.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// How many ancestors the node has (0 for the root).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The node's properties in blob order.
    pub fn properties(&self) -> Properties<'a> {
        self.tree.properties_at(self.props)
    }

    /// The property called `name`.
    pub fn property(&self, name: &str) -> Option<Property<'a>> {
        self.tree.property_at(self.props, name)
    }

    /// Whether the node has a property called `name` (for flags like `dma-coherent`).
    pub fn has_property(&self, name: &str) -> bool {
        self.property(name).is_some()
    }

    /// The direct children in blob order.
    pub fn children(&self) -> Children<'a> {
        Children { parent: *self, offset: self.props, depth: 0, done: false }
    }

    /// The `compatible` strings (empty when the property is absent).
    pub fn compatible(&self) -> StringList<'a> {
        StringList::new(self.property("compatible").map_or(&[], |p| p.value))
    }

    /// Whether `compatible` lists exactly `compatible`.
    pub fn is_compatible(&self, compatible: &str) -> bool {
        self.compatible().raw().any(|s| s == compatible.as_bytes())
    }

    /// Whether `status` is absent, `"okay"` or `"ok"` (DTSpec §2.3.4); disabled nodes describe
    /// hardware that must not be used.
    pub fn is_available(&self) -> bool {
        self.property("status")
            .is_none_or(|p| matches!(p.value, b"okay\0" | b"ok\0" | b"okay" | b"ok"))
    }

    /// The node's own phandle (`phandle`, or the legacy `linux,phandle`).
    pub fn phandle(&self) -> Result<Option<Phandle>> {
        let Some(property) = self.property("phandle").or_else(|| self.property("linux,phandle"))
        else {
            return Ok(None);
        };
        property.as_u32("phandle length").map(|value| Some(Phandle(value)))
    }

    /// The node's own `#address-cells` (DTSpec default 2): the address width of its children.
    pub fn address_cells(&self) -> Result<u32> {
        cells_at(&self.tree, Some(self.props), "#address-cells", "#address-cells length", 2)
    }

    /// The node's own `#size-cells` (DTSpec default 1): the size width of its children.
    pub fn size_cells(&self) -> Result<u32> {
        cells_at(&self.tree, Some(self.props), "#size-cells", "#size-cells length", 1)
    }

    /// The parent's `#address-cells`, which sizes this node's `reg` addresses.
    pub fn parent_address_cells(&self) -> Result<u32> {
        cells_at(&self.tree, self.parent_props, "#address-cells", "#address-cells length", 2)
    }

    /// The parent's `#size-cells`, which sizes this node's `reg` sizes.
    pub fn parent_size_cells(&self) -> Result<u32> {
        cells_at(&self.tree, self.parent_props, "#size-cells", "#size-cells length", 1)
    }

    /// The `reg` entries as address ranges, decoded with the parent's cell counts, which must
    /// be 1 or 2 each (so not for CPU nodes, whose `#size-cells` is 0). Empty when `reg` is
    /// absent.
    pub fn reg(&self) -> Result<RegEntries<'a>> {
        let Some(reg) = self.property("reg") else { return Ok(RegEntries::empty()) };
        RegEntries::new(reg.value, self.parent_address_cells()?, self.parent_size_cells()?, "reg")
    }

    /// The first `reg` entry, or [`Error::NotFound`] naming `what`.
    pub fn first_reg(&self, what: &'static str) -> Result<Region> {
        self.reg()?.next().unwrap_or(Err(Error::NotFound { what }))
    }

    /// The interrupt parent: the node named by this node's or the nearest ancestor's
    /// `interrupt-parent`.
    ///
    /// Simpler than Linux's `of_irq_find_parent`: a tree parent that is itself an interrupt
    /// controller without any `interrupt-parent` above it is not found, and the phandle is
    /// followed once (no chains through nexus nodes), so a cycle cannot make it loop.
    pub fn interrupt_parent(&self) -> Result<Node<'a>> {
        let holder =
            if self.has_property("interrupt-parent") { Some(self.props) } else { self.irq_holder };
        let not_found = Error::NotFound { what: "interrupt-parent" };
        let property = holder
            .and_then(|props| self.tree.property_at(props, "interrupt-parent"))
            .ok_or(not_found)?;
        let phandle = property.as_u32("interrupt-parent length")?;
        self.tree
            .node_by_phandle(Phandle(phandle))
            .ok_or(Error::BadReference { what: "interrupt-parent", value: phandle.into() })
    }

    /// The child built from the FDT_BEGIN_NODE named `name` whose properties start at `props`.
    fn child(&self, name: &'a str, props: usize) -> Node<'a> {
        let irq_holder =
            if self.has_property("interrupt-parent") { Some(self.props) } else { self.irq_holder };
        Node {
            tree: self.tree,
            name,
            props,
            parent_props: Some(self.props),
            irq_holder,
            depth: self.depth.saturating_add(1),
        }
    }
}

impl fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

/// A `#…-cells` property of the node whose properties start at `props`, or `default`.
fn cells_at(
    tree: &DeviceTree<'_>,
    props: Option<usize>,
    name: &str,
    length_what: &'static str,
    default: u32,
) -> Result<u32> {
    match props.and_then(|props| tree.property_at(props, name)) {
        Some(property) => property.as_u32(length_what),
        None => Ok(default),
    }
}

/// Iterator over a node's properties.
#[derive(Clone, Debug)]
pub struct Properties<'a> {
    tree: DeviceTree<'a>,
    offset: usize,
    done: bool,
}

impl<'a> Iterator for Properties<'a> {
    type Item = Property<'a>;

    fn next(&mut self) -> Option<Property<'a>> {
        // Each pass moves `offset` forward by at least one token.
        while !self.done {
            match self.tree.token_at(self.offset) {
                Ok((Token::Prop(property), next)) => {
                    self.offset = next;
                    return Some(property);
                }
                Ok((Token::Nop, next)) => self.offset = next,
                _ => self.done = true,
            }
        }
        None
    }
}

/// Iterator over a node's direct children.
#[derive(Clone, Debug)]
pub struct Children<'a> {
    parent: Node<'a>,
    offset: usize,
    /// Nesting below `parent` at `offset`: 0 between direct children.
    depth: usize,
    done: bool,
}

impl<'a> Iterator for Children<'a> {
    type Item = Node<'a>;

    fn next(&mut self) -> Option<Node<'a>> {
        // Each pass moves `offset` forward by at least one token.
        while !self.done {
            let Ok((token, next)) = self.parent.tree.token_at(self.offset) else {
                self.done = true;
                break;
            };
            self.offset = next;
            match token {
                Token::BeginNode(name) => {
                    self.depth = self.depth.saturating_add(1);
                    if self.depth == 1 {
                        return Some(self.parent.child(name, next));
                    }
                }
                Token::EndNode => match self.depth.checked_sub(1) {
                    Some(depth) => self.depth = depth,
                    None => self.done = true,
                },
                Token::End => self.done = true,
                Token::Prop(_) | Token::Nop => {}
            }
        }
        None
    }
}

/// What [`Nodes`] remembers about each open node, in 8 bytes so the stack stays small.
/// Offsets fit `u32` because the blob's `totalsize` does; a property offset is never 0.
#[derive(Clone, Copy, Debug, Default)]
struct Ancestor {
    /// The node's `props`.
    props: u32,
    /// `props` of the node its children inherit `interrupt-parent` from.
    irq_holder_for_children: Option<NonZeroU32>,
}

/// Iterator over every node in document order.
#[derive(Clone, Debug)]
pub struct Nodes<'a> {
    tree: DeviceTree<'a>,
    offset: usize,
    /// Number of open nodes; `stack[..depth]` describes them.
    depth: usize,
    stack: [Ancestor; MAX_DEPTH],
    done: bool,
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Node<'a>;

    fn next(&mut self) -> Option<Node<'a>> {
        // Each pass moves `offset` forward by at least one token.
        while !self.done {
            let Ok((token, next)) = self.tree.token_at(self.offset) else {
                self.done = true;
                break;
            };
            self.offset = next;
            match token {
                Token::BeginNode(name) => {
                    let parent = self.depth.checked_sub(1).and_then(|i| self.stack.get(i)).copied();
                    let node = Node {
                        tree: self.tree,
                        name,
                        props: next,
                        parent_props: parent.map(|p| to_usize(p.props)),
                        irq_holder: parent
                            .and_then(|p| p.irq_holder_for_children)
                            .map(|h| to_usize(h.get())),
                        depth: self.depth,
                    };
                    let own_holder = if node.has_property("interrupt-parent") {
                        Some(next)
                    } else {
                        node.irq_holder
                    };
                    let (Some(slot), Ok(props)) =
                        (self.stack.get_mut(self.depth), u32::try_from(next))
                    else {
                        self.done = true;
                        break;
                    };
                    *slot = Ancestor {
                        props,
                        irq_holder_for_children: own_holder
                            .and_then(|h| NonZeroU32::new(u32::try_from(h).ok()?)),
                    };
                    self.depth = self.depth.saturating_add(1);
                    return Some(node);
                }
                Token::EndNode => match self.depth.checked_sub(1) {
                    Some(depth) => self.depth = depth,
                    None => self.done = true,
                },
                Token::End => self.done = true,
                Token::Prop(_) | Token::Nop => {}
            }
        }
        None
    }
}
