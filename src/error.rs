//! The library's one error type.
//!
//! Every variant carries the value that was wrong, so a log line is enough to diagnose firmware
//! or hardware that misbehaves. `what` fields name the table, structure or register involved with
//! a short static string (for example `"DMAR DRHD"` or `"GSTS.TES"`).

use core::fmt;

/// Shorthand for `core::result::Result<T, Error>`.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in the library.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    // ---- Firmware tables and descriptions -------------------------------------------------
    /// Fewer bytes are available than the fixed part of a table or structure needs.
    Truncated {
        /// Which table or structure.
        what: &'static str,
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A table's bytes do not sum to zero modulo 256 (ACPI 6.5 §5.2.5.3, §5.2.6).
    BadChecksum {
        /// Which table.
        what: &'static str,
        /// The sum of all bytes (non-zero).
        sum: u8,
    },
    /// A table has the wrong signature.
    BadSignature {
        /// The table that was expected.
        what: &'static str,
        /// The first (up to) eight bytes found, zero-padded.
        found: [u8; 8],
    },
    /// A length field runs past the end of the bytes that contain it.
    LengthOverrun {
        /// Which table or structure.
        what: &'static str,
        /// Offset of the structure inside its container.
        offset: usize,
        /// The length the structure declares.
        length: usize,
        /// Bytes left in the container from `offset`.
        available: usize,
    },
    /// A length field is smaller than the structure's fixed part (zero included), which would
    /// make a walker stall or read a header as data.
    BadLength {
        /// Which table or structure.
        what: &'static str,
        /// Offset of the structure inside its container.
        offset: usize,
        /// The length the structure declares.
        length: usize,
    },
    /// A revision this parser does not understand.
    UnsupportedRevision {
        /// Which table or structure.
        what: &'static str,
        /// The revision found.
        revision: u8,
    },
    /// A field holds a value the specification does not allow.
    InvalidField {
        /// Which table, structure or field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A reference (an offset or a phandle) points at nothing valid.
    BadReference {
        /// Which reference.
        what: &'static str,
        /// The offset or handle found.
        value: u64,
    },
    /// A table, node or property the caller asked for is not present.
    NotFound {
        /// What was looked for.
        what: &'static str,
    },
    /// More entries than a fixed-capacity container holds; the rest were not stored.
    CapacityExceeded {
        /// Which container.
        what: &'static str,
        /// Its capacity.
        capacity: usize,
    },
    /// A device-tree blob is malformed (bad magic, version, block offsets or structure).
    DeviceTree {
        /// What the device-tree reader reported.
        what: &'static str,
    },

    // ---- Addresses and identifiers --------------------------------------------------------
    /// `base + size` wraps around.
    AddressOverflow {
        /// The start.
        base: u64,
        /// The size added to it.
        size: u64,
    },
    /// A device or function number out of range.
    InvalidBdf {
        /// Bus number.
        bus: u8,
        /// Device number (must be <= 31).
        dev: u8,
        /// Function number (must be <= 7).
        func: u8,
    },
    /// A PASID wider than 20 bits.
    InvalidPasid {
        /// The value given.
        value: u32,
    },
    /// An address that must be aligned is not.
    Misaligned {
        /// Which address.
        what: &'static str,
        /// The address.
        value: u64,
        /// The required alignment.
        align: u64,
    },

    // ---- Platform and hardware ------------------------------------------------------------
    /// The platform could not provide DMA-able memory.
    OutOfMemory {
        /// Pages asked for.
        pages: usize,
    },
    /// The platform could not map an MMIO range.
    MmioUnavailable {
        /// Physical base.
        base: u64,
        /// Size in bytes.
        size: u64,
    },
    /// An MMIO access outside the region it was made through.
    MmioOutOfRange {
        /// Offset of the access.
        offset: usize,
        /// Access width in bytes.
        width: usize,
        /// Size of the region.
        len: usize,
    },
    /// A bounded wait on hardware ran out.
    Timeout {
        /// What was waited for (register and bit, or queue).
        what: &'static str,
        /// The bound, in microseconds.
        waited_us: u64,
    },
    /// Hardware reported a state the driver cannot use.
    Hardware {
        /// Which register or structure.
        what: &'static str,
        /// The value read.
        value: u64,
    },

    // ---- PCI capabilities ----------------------------------------------------------------
    /// A capability list visits the same offset twice (PCIe Base 6.0 §7.5.1.1.11, §7.6.3).
    CapabilityLoop {
        /// The function.
        bdf: crate::addr::Bdf,
        /// The offset reached a second time.
        offset: u16,
    },
    /// A capability pointer points outside its list's range (legacy 0x40..=0xfc, extended
    /// 0x100..=0xffc).
    CapabilityPointer {
        /// The function.
        bdf: crate::addr::Bdf,
        /// Where the pointer was read (0x34 for the head of the legacy list).
        offset: u16,
        /// The pointer, with its reserved low two bits masked.
        pointer: u16,
    },
    /// A capability list is longer than its space allows.
    CapabilityChainTooLong {
        /// The function.
        bdf: crate::addr::Bdf,
        /// The step bound that was reached.
        limit: u16,
    },
    /// A capability header reads all-ones while the function still answers (a device that
    /// returns garbage for part of its configuration space).
    CapabilityHeader {
        /// The function.
        bdf: crate::addr::Bdf,
        /// Offset of the header.
        offset: u16,
        /// The header read.
        header: u32,
    },
    /// A function stopped answering configuration reads (its vendor ID reads all-ones): it was
    /// removed, reset or failed in the middle of an operation.
    FunctionVanished {
        /// The function.
        bdf: crate::addr::Bdf,
    },
    /// A capability register did not take a value written to it.
    SettingNotTaken {
        /// The function.
        bdf: crate::addr::Bdf,
        /// The register (and field).
        what: &'static str,
        /// The value written.
        wrote: u32,
        /// The value read back.
        read: u32,
    },
    /// A capability feature was asked for that the function does not offer.
    FeatureUnsupported {
        /// The function.
        bdf: crate::addr::Bdf,
        /// The register or feature.
        what: &'static str,
        /// The bits asked for.
        requested: u32,
        /// The bits the capability offers.
        supported: u32,
    },
    /// An operation that needs a capability disabled (or another one off) found it enabled.
    NotWhileEnabled {
        /// The function.
        bdf: crate::addr::Bdf,
        /// The enable bit that is set (for example `"PRI Control.Enable"`).
        what: &'static str,
    },
    /// A PRI Outstanding Page Request Allocation larger than the function's capacity
    /// (PCIe Base 6.0 §10.5.2.5).
    PriAllocationExceedsCapacity {
        /// The function.
        bdf: crate::addr::Bdf,
        /// The allocation asked for.
        allocation: u32,
        /// Outstanding Page Request Capacity.
        capacity: u32,
    },
    /// PRI cannot be enabled: Stopped is clear, so page requests from an earlier enable are
    /// still outstanding (PCIe Base 6.0 §10.5.2.3).
    PriNotStopped {
        /// The function.
        bdf: crate::addr::Bdf,
        /// The PRI Status register read.
        status: u16,
    },
    /// A VF's ATS Smallest Translation Unit must equal its PF's, which applies to all its VFs
    /// (PCIe Base 6.0 §10.5.1.3); or a PF's STU change while VFs use ATS.
    AtsStuMismatch {
        /// The function refused (the VF, or the PF whose STU would change).
        bdf: crate::addr::Bdf,
        /// The STU the PF has programmed.
        programmed: u8,
        /// The STU asked for.
        requested: u8,
    },

    // ---- Enumeration and SR-IOV -------------------------------------------------------------
    /// Bus numbering needs a bus number past the last one the host bridge decodes.
    BusNumbersExhausted {
        /// The bridge that needed a secondary bus.
        bridge: crate::addr::Bdf,
        /// The last bus the host decodes.
        last: u8,
    },
    /// NumVFs out of range: 0, above TotalVFs, or TotalVFs is 0 (PCIe Base 6.0 §9.3.3.7).
    SriovNumVfs {
        /// The PF.
        pf: crate::addr::Bdf,
        /// The number of VFs asked for.
        requested: u16,
        /// TotalVFs.
        total: u16,
    },
    /// First VF Offset and VF Stride cannot place the VFs: an offset of 0 (the PF's own routing
    /// ID) or a stride of 0 with more than one VF (every VF at one routing ID), §9.3.3.9-10.
    SriovVfRouting {
        /// The PF.
        pf: crate::addr::Bdf,
        /// First VF Offset.
        offset: u16,
        /// VF Stride.
        stride: u16,
        /// NumVFs they were read for.
        num_vfs: u16,
    },
    /// VFs would land on a bus past `limit`: 255, or the subordinate bus of the bridge above
    /// the PF, which would not forward their configuration requests.
    SriovVfBus {
        /// The PF.
        pf: crate::addr::Bdf,
        /// Bus of the last VF (may exceed 255).
        bus: u32,
        /// Highest bus the VFs may use.
        limit: u8,
    },
    /// A VF's routing ID is already another function's.
    SriovVfCollision {
        /// The PF.
        pf: crate::addr::Bdf,
        /// The routing ID both would answer at.
        vf: crate::addr::Bdf,
    },
    /// The PF is locked: VFs of it are assigned, so its SR-IOV configuration (VF Enable,
    /// NumVFs) must not change under them.
    SriovLocked {
        /// The PF.
        pf: crate::addr::Bdf,
        /// VFs assigned.
        assigned: u16,
    },
    /// A lock beyond the number of enabled VFs, or an unlock without a lock.
    SriovLockCount {
        /// The PF.
        pf: crate::addr::Bdf,
        /// VFs assigned.
        assigned: u16,
        /// VFs enabled.
        enabled: u16,
    },
    /// A VF BAR has no aperture placed (enumeration did not assign it), so enabling VF MSE
    /// would decode VF BARs at address 0.
    SriovVfBarUnplaced {
        /// The PF.
        pf: crate::addr::Bdf,
        /// The VF BAR index.
        index: u8,
    },

    // ---- Isolation groups -----------------------------------------------------------------
    /// An attach that would put two members of one isolation group (or one function) in
    /// different domains, which the IOMMU cannot keep apart.
    GroupSplit {
        /// The function being attached.
        function: crate::addr::Bdf,
        /// The domain asked for.
        domain: u32,
        /// A member of its group (possibly the function itself) already attached elsewhere.
        member: crate::addr::Bdf,
        /// The domain that member is attached to.
        member_domain: u32,
    },

    // ---- I/O page tables ------------------------------------------------------------------
    /// A map over an IOVA that is already mapped (a valid-to-valid change needs
    /// break-before-make: unmap, flush, map).
    AlreadyMapped {
        /// The first mapped IOVA found in the range.
        iova: u64,
    },

    // ---- VT-d invalidation and translation tables -------------------------------------------
    /// The unit lacks a capability the operation needs (for example ECAP.QI for queued
    /// invalidation, ECAP.PT for pass-through).
    Unsupported {
        /// The capability register and field.
        what: &'static str,
        /// The register value read.
        value: u64,
    },
    /// The invalidation queue rejected a descriptor (FSTS.IQE, VT-d §6.5.2.10). The driver
    /// replaced it with a no-op and the queue went on: the rest of the batch completed.
    InvalidDescriptor {
        /// Queue slot of the rejected descriptor (what IQH pointed at).
        slot: u32,
        /// Its position in the submitted batch.
        position: u32,
        /// Its descriptor type.
        kind: u8,
        /// IQERCD.IQEI, the hardware's reason (0: not reported).
        info: u8,
    },
    /// A device-TLB invalidation timed out in hardware (FSTS.ITE) or received a bad completion
    /// (FSTS.ICE); the device may still hold stale translations.
    DeviceTlbInvalidation {
        /// `"ITE"` or `"ICE"`.
        what: &'static str,
        /// The source ID the hardware reported (IQERCD ITESID/ICESID; 0 if not reported).
        sid: u16,
    },
    /// A domain ID outside the unit's range, reserved, or not allocated.
    InvalidDomainId {
        /// The domain ID.
        did: u32,
        /// How many the unit supports (CAP.ND).
        supported: u32,
    },
    /// A translation structure entry is present where the operation needs it absent, or absent
    /// where it must be present.
    EntryState {
        /// Which entry (context, PASID).
        what: &'static str,
        /// The requester ID it belongs to.
        rid: u16,
        /// Whether it was found present.
        present: bool,
    },
    /// DMA remapping was to be enabled while the DMAR reports Reserved Memory Regions that were
    /// not identity-mapped first (VT-d §8.4): the devices they name would fault on their
    /// firmware-owned DMA as soon as translation is on.
    RmrrNotPrepared {
        /// RMRR structures the DMAR reports.
        rmrrs: usize,
    },
    // ---- Domains and attachments (iommu::domain) -------------------------------------------
    /// An endpoint is not in the attachment state the call needs.
    Attachment {
        /// The function.
        function: crate::addr::Bdf,
        /// Its PASID (`u32::MAX`: requests without a PASID).
        pasid: u32,
        /// The domain concerned (the one it is attached to, or the one named in the call).
        domain: u32,
        /// What is wrong: "attached to another domain", "not attached to it".
        state: &'static str,
    },
    /// A PASID attachment for a function whose isolation group has other members, which could
    /// reach its DMA targets without the IOMMU.
    SharedGroup {
        /// The function.
        function: crate::addr::Bdf,
        /// Members of its group.
        members: usize,
    },
    /// A function whose firmware-owned DMA (RMRR, RMR) needs its current attachment.
    Reserved {
        /// The function.
        function: crate::addr::Bdf,
    },
    /// A domain that still has users (or a detach that could not be confirmed) was to be
    /// destroyed.
    DomainInUse {
        /// The domain.
        domain: u32,
        /// Its users.
        users: usize,
    },
    /// Page requests were asked for a function whose PF (or the function itself, without
    /// SR-IOV) has no PRI capability, such as QEMU's igb and its VFs: a VF has none of its own
    /// and can only use its PF's (PCIe Base 6.0 §9.3.7.11).
    PriUnavailable {
        /// The function whose PRI was looked for (the PF of a VF).
        pf: crate::addr::Bdf,
    },
    /// The PF's PRI/PASID configuration is pinned by its current users (the PF itself and its
    /// VFs): it cannot be changed until the last of them lets go.
    PriPinned {
        /// The PF.
        pf: crate::addr::Bdf,
        /// Users holding it.
        users: u16,
        /// What could not change (for example `"PASID Control"`).
        what: &'static str,
    },
    /// A PRI allocation would overrun an IOMMU's page request queue: the allocations of all
    /// PRI functions under one IOMMU sum to at most the queue's capacity.
    PriBudgetExceeded {
        /// The IOMMU, as the caller identified it.
        iommu: u32,
        /// Outstanding page requests asked for.
        requested: u32,
        /// What is left of the queue's capacity.
        available: u32,
    },
    /// A hardware page request queue entry that is not a valid page request (VT-d page request
    /// descriptor, §7.5.1.1: wrong type, reserved bits set, or an access combination PCIe does
    /// not allow). The raw words are kept for the log.
    InvalidPageRequest {
        /// The first two quadwords as the hardware wrote them.
        words: [u64; 2],
    },
    /// The SMMUv3 rejected a command (CMDQ_CONS.ERR with GERROR.CMDQ_ERR, SMMUv3 §7.1); it was
    /// replaced with a CMD_SYNC and the queue resumed.
    SmmuCommand {
        /// Opcode of the rejected command.
        opcode: u8,
        /// CMDQ_CONS.ERR: 1 illegal, 2 abort on the queue read, 3 ATC invalidation sync.
        error: u8,
        /// Queue slot of the command.
        slot: u32,
    },
    /// The page-request drain of a fault-capable attachment's detach or replace did not finish
    /// in its bound: the attachment was forced to blocking, its function stays a user of its
    /// PF's PRI (groups may still be outstanding) and is reported here.
    PageRequestDrain {
        /// The function.
        function: crate::addr::Bdf,
        /// Its PASID (`u32::MAX`: requests without a PASID).
        pasid: u32,
        /// What failed (the error's own `what`).
        cause: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { what, len, need } => {
                write!(f, "{what}: truncated, {len} bytes available, {need} needed")
            }
            Error::BadChecksum { what, sum } => write!(f, "{what}: checksum is {sum:#04x}, not 0"),
            Error::BadSignature { what, found } => {
                write!(f, "{what}: bad signature \"{}\"", found.escape_ascii())
            }
            Error::LengthOverrun { what, offset, length, available } => write!(
                f,
                "{what} at {offset:#x}: length {length:#x} overruns the {available:#x} bytes left"
            ),
            Error::BadLength { what, offset, length } => {
                write!(f, "{what} at {offset:#x}: length {length:#x} is too small")
            }
            Error::UnsupportedRevision { what, revision } => {
                write!(f, "{what}: unsupported revision {revision}")
            }
            Error::InvalidField { what, value } => write!(f, "{what}: invalid value {value:#x}"),
            Error::BadReference { what, value } => {
                write!(f, "{what}: reference {value:#x} points at nothing valid")
            }
            Error::NotFound { what } => write!(f, "{what}: not found"),
            Error::CapacityExceeded { what, capacity } => {
                write!(f, "{what}: more than {capacity} entries")
            }
            Error::DeviceTree { what } => write!(f, "device tree: {what}"),
            Error::AddressOverflow { base, size } => {
                write!(f, "address {base:#x} + {size:#x} overflows")
            }
            Error::InvalidBdf { bus, dev, func } => {
                write!(f, "invalid function address {bus:02x}:{dev:02x}.{func}")
            }
            Error::InvalidPasid { value } => write!(f, "PASID {value:#x} exceeds 20 bits"),
            Error::Misaligned { what, value, align } => {
                write!(f, "{what}: {value:#x} is not {align:#x}-aligned")
            }
            Error::OutOfMemory { pages } => write!(f, "out of DMA memory ({pages} pages asked)"),
            Error::MmioUnavailable { base, size } => {
                write!(f, "cannot map MMIO {base:#x}+{size:#x}")
            }
            Error::MmioOutOfRange { offset, width, len } => {
                write!(
                    f,
                    "MMIO access of {width} bytes at {offset:#x} outside a {len:#x}-byte region"
                )
            }
            Error::Timeout { what, waited_us } => write!(f, "{what}: no answer in {waited_us} us"),
            Error::Hardware { what, value } => write!(f, "{what}: unusable value {value:#x}"),
            Error::CapabilityLoop { bdf, offset } => {
                write!(f, "{bdf}: capability list loops back to {offset:#x}")
            }
            Error::CapabilityPointer { bdf, offset, pointer } => {
                write!(
                    f,
                    "{bdf}: capability pointer at {offset:#x} points to {pointer:#x}, outside the list"
                )
            }
            Error::CapabilityChainTooLong { bdf, limit } => {
                write!(f, "{bdf}: capability list longer than {limit} entries")
            }
            Error::CapabilityHeader { bdf, offset, header } => {
                write!(f, "{bdf}: capability header at {offset:#x} reads {header:#010x}")
            }
            Error::FunctionVanished { bdf } => write!(f, "{bdf}: function no longer answers"),
            Error::SettingNotTaken { bdf, what, wrote, read } => {
                write!(f, "{bdf}: {what}: wrote {wrote:#x}, read back {read:#x}")
            }
            Error::FeatureUnsupported { bdf, what, requested, supported } => {
                write!(f, "{bdf}: {what}: asked for {requested:#x}, offers {supported:#x}")
            }
            Error::NotWhileEnabled { bdf, what } => {
                write!(f, "{bdf}: not allowed while {what} is set")
            }
            Error::PriAllocationExceedsCapacity { bdf, allocation, capacity } => {
                write!(f, "{bdf}: PRI allocation {allocation} exceeds capacity {capacity}")
            }
            Error::PriNotStopped { bdf, status } => {
                write!(f, "{bdf}: PRI not stopped (status {status:#06x}), requests outstanding")
            }
            Error::AtsStuMismatch { bdf, programmed, requested } => {
                write!(f, "{bdf}: ATS STU {requested} asked, PF has {programmed}")
            }
            Error::BusNumbersExhausted { bridge, last } => {
                write!(
                    f,
                    "{bridge}: no bus number left for its secondary bus (last bus {last:#04x})"
                )
            }
            Error::SriovNumVfs { pf, requested, total } => {
                write!(f, "{pf}: SR-IOV: {requested} VFs asked, TotalVFs is {total}")
            }
            Error::SriovVfRouting { pf, offset, stride, num_vfs } => write!(
                f,
                "{pf}: SR-IOV: First VF Offset {offset:#x}, VF Stride {stride:#x} cannot place {num_vfs} VFs"
            ),
            Error::SriovVfBus { pf, bus, limit } => {
                write!(f, "{pf}: SR-IOV: VFs would reach bus {bus:#x}, past {limit:#04x}")
            }
            Error::SriovVfCollision { pf, vf } => {
                write!(f, "{pf}: SR-IOV: a VF would answer at {vf}, which another function has")
            }
            Error::SriovLocked { pf, assigned } => {
                write!(f, "{pf}: SR-IOV configuration locked, {assigned} VFs assigned")
            }
            Error::SriovLockCount { pf, assigned, enabled } => {
                write!(
                    f,
                    "{pf}: SR-IOV lock count {assigned} out of range for {enabled} enabled VFs"
                )
            }
            Error::SriovVfBarUnplaced { pf, index } => {
                write!(f, "{pf}: SR-IOV VF BAR {index} has no aperture assigned")
            }
            Error::GroupSplit { function, domain, member, member_domain } => write!(
                f,
                "{function}: attaching to domain {domain} would split its isolation group: \
                 {member} is in domain {member_domain}"
            ),
            Error::AlreadyMapped { iova } => write!(f, "IOVA {iova:#x} is already mapped"),
            Error::Unsupported { what, value } => {
                write!(f, "{what}: not supported by the unit ({value:#x})")
            }
            Error::InvalidDescriptor { slot, position, kind, info } => write!(
                f,
                "VT-d invalidation queue rejected descriptor type {kind:#x} at slot {slot} \
                 (batch position {position}, IQEI {info}); replaced with a no-op"
            ),
            Error::DeviceTlbInvalidation { what, sid } => {
                write!(f, "VT-d device-TLB invalidation error {what} for source ID {sid:#06x}")
            }
            Error::InvalidDomainId { did, supported } => {
                write!(f, "VT-d domain ID {did} invalid (unit supports {supported})")
            }
            Error::EntryState { what, rid, present } => {
                let state = if present { "present" } else { "not present" };
                write!(f, "{what} for requester {rid:#06x} is {state}")
            }
            Error::RmrrNotPrepared { rmrrs } => write!(
                f,
                "VT-d: {rmrrs} RMRR(s) not identity-mapped before enabling translation (VT-d §8.4)"
            ),
            Error::Attachment { function, pasid, domain, state } => {
                if pasid == u32::MAX {
                    write!(f, "{function}: {state} (domain {domain})")
                } else {
                    write!(f, "{function} PASID {pasid:#x}: {state} (domain {domain})")
                }
            }
            Error::SharedGroup { function, members } => write!(
                f,
                "{function}: PASID attachment refused, its isolation group has {members} members"
            ),
            Error::Reserved { function } => {
                write!(f, "{function}: reserved for firmware-owned DMA (RMRR/RMR), cannot move")
            }
            Error::DomainInUse { domain, users } => {
                write!(f, "domain {domain} still has {users} user(s)")
            }
            Error::PriUnavailable { pf } => {
                write!(f, "{pf}: no PRI capability (a VF can only use its PF's)")
            }
            Error::PriPinned { pf, users, what } => {
                write!(f, "{pf}: {what} is pinned by {users} user(s) of its PRI/PASID")
            }
            Error::PriBudgetExceeded { iommu, requested, available } => write!(
                f,
                "IOMMU {iommu}: PRI allocation of {requested} exceeds the {available} page \
                 request queue entries left"
            ),
            Error::InvalidPageRequest { words } => {
                write!(f, "invalid page request descriptor {:#018x} {:#018x}", words[0], words[1])
            }
            Error::SmmuCommand { opcode, error, slot } => write!(
                f,
                "SMMUv3 rejected command opcode {opcode:#04x} at queue slot {slot} with \
                 CMDQ_CONS.ERR {error}; replaced with CMD_SYNC"
            ),
            Error::PageRequestDrain { function, pasid, cause } => write!(
                f,
                "{function} PASID {pasid:#x}: page-request drain did not finish ({cause}); \
                 forced to blocking, PRI kept for its outstanding groups"
            ),
        }
    }
}

impl core::error::Error for Error {}

/// Pads the first bytes of `bytes` into the 8-byte `found` field of [`Error::BadSignature`].
pub(crate) fn signature_bytes(bytes: &[u8]) -> [u8; 8] {
    let mut found = [0u8; 8];
    let n = bytes.len().min(8);
    found[..n].copy_from_slice(&bytes[..n]);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_carries_the_bad_value() {
        let e = Error::LengthOverrun {
            what: "DMAR DRHD",
            offset: 0x30,
            length: 0x100,
            available: 0x50,
        };
        assert_eq!(e.to_string(), "DMAR DRHD at 0x30: length 0x100 overruns the 0x50 bytes left");
        let e = Error::BadSignature { what: "MCFG", found: signature_bytes(b"APIC") };
        assert!(e.to_string().contains("APIC"));
    }
}
