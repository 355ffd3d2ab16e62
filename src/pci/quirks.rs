//! Device quirks that change requester-ID aliasing or isolation, keyed by vendor:device.
//!
//! Every entry comes from Linux `drivers/pci/quirks.c` (function named in [`Quirk::source`]).
//! The table is deliberately small: it holds the kinds of quirk a snapshot can act on, each with
//! a few real devices, not Linux's whole list. Quirks that need config or MMIO accesses beyond
//! the snapshot (Intel PCH root ports, `pci_quirk_intel_pch_acs`; AMD south bridges, which need
//! the IVRS table, `pci_quirk_amd_sb_acs`) are left to enumeration.
//!
//! A quirk that adds an alias only ever makes groups larger, never splits one, so matching a
//! little too widely (see the Adaptec entry) is the safe direction; a quirk that declares
//! isolation is the opposite, so those entries are exact device IDs only.

/// What a quirk changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum QuirkKind {
    /// The function also issues DMA with function `0..=7` of its own slot (Linux
    /// `quirk_dma_func0_alias`, `quirk_dma_func1_alias`). No alias when the function is that
    /// function itself.
    DmaAliasFunction(u8),
    /// The function also issues DMA with this fixed `devfn` on its own bus, whatever its own
    /// devfn (Linux `quirk_fixed_dma_alias`).
    DmaAliasDevfn(u8),
    /// A bridge without a PCI Express capability that is really a PCIe-to-PCI bridge: requests
    /// from below carry secondary-bus:00.0, not the bridge's own ID (Linux
    /// `quirk_use_pcie_bridge_dma_alias`, which sets `PCI_DEV_FLAG_PCIE_BRIDGE_ALIAS` only when
    /// the bridge is not on a root bus and sits below a PCIe port that is not itself a
    /// PCIe-to-PCI bridge; [`crate::pci::alias`] applies the same test).
    PcieBridgeAlias,
    /// The vendor verified that the function does not do peer-to-peer with other functions (or,
    /// for a root port, that it redirects and validates as ACS would) although it has no
    /// usable ACS capability: it counts as having every ACS control enabled (Linux
    /// `pci_dev_acs_enabled` table).
    AcsEquivalent,
}

/// One quirk table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Quirk {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// What it changes.
    pub kind: QuirkKind,
    /// The device, for the log.
    pub name: &'static str,
    /// The Linux function (in `drivers/pci/quirks.c`) the entry comes from.
    pub source: &'static str,
}

const fn q(
    vendor: u16,
    device: u16,
    kind: QuirkKind,
    name: &'static str,
    source: &'static str,
) -> Quirk {
    Quirk { vendor, device, kind, name, source }
}

const FUNC0: QuirkKind = QuirkKind::DmaAliasFunction(0);
const FUNC1: QuirkKind = QuirkKind::DmaAliasFunction(1);
const F0_SRC: &str = "quirk_dma_func0_alias";
const F1_SRC: &str = "quirk_dma_func1_alias";
const BRIDGE_SRC: &str = "quirk_use_pcie_bridge_dma_alias";
const MF_ACS: &str = "pci_dev_acs_enabled: pci_quirk_mf_endpoint_acs";
const RP_ACS: &str = "pci_dev_acs_enabled: pci_quirk_qcom_rp_acs";

/// The quirk table.
pub const QUIRKS: &[Quirk] = &[
    // Ricoh card readers DMA with function 0 (Red Hat bugzilla 605888).
    q(0x1180, 0xe832, FUNC0, "Ricoh 1180:e832", F0_SRC),
    q(0x1180, 0xe476, FUNC0, "Ricoh 1180:e476", F0_SRC),
    // Marvell SATA controllers DMA with function 1, which may not exist (a "ghost"
    // requester; kernel bugzilla 42679).
    q(0x1b4b, 0x9120, FUNC1, "Marvell SATA 1b4b:9120", F1_SRC),
    q(0x1b4b, 0x9123, FUNC1, "Marvell 88SE9123", F1_SRC),
    q(0x1b4b, 0x9128, FUNC1, "Marvell SATA 1b4b:9128", F1_SRC),
    q(0x1b4b, 0x9130, FUNC1, "Marvell SATA 1b4b:9130", F1_SRC),
    q(0x1b4b, 0x9172, FUNC1, "Marvell SATA 1b4b:9172", F1_SRC),
    q(0x1b4b, 0x9230, FUNC1, "Marvell SATA 1b4b:9230", F1_SRC),
    // Adaptec 3405/3805: the exposed ATU at 0e.0 DMAs through a hidden engine at 01.0. Linux
    // also matches subsystem 9005:02bb/02bc, which the snapshot does not record; matching every
    // 9005:0285 only adds an alias (a larger group), never a split.
    q(
        0x9005,
        0x0285,
        QuirkKind::DmaAliasDevfn(1 << 3),
        "Adaptec 3405/3805",
        "quirk_fixed_dma_alias",
    ),
    // PCIe-to-PCI bridges without a PCI Express capability (kernel bugzilla 44881, 73551).
    q(0x1b21, 0x1080, QuirkKind::PcieBridgeAlias, "ASMedia ASM1083/1085", BRIDGE_SRC),
    q(0x10e3, 0x8113, QuirkKind::PcieBridgeAlias, "Tundra 8113", BRIDGE_SRC),
    q(0x1283, 0x8892, QuirkKind::PcieBridgeAlias, "ITE IT8892", BRIDGE_SRC),
    q(0x1283, 0x8893, QuirkKind::PcieBridgeAlias, "ITE IT8893", BRIDGE_SRC),
    q(0x8086, 0x244e, QuirkKind::PcieBridgeAlias, "Intel 82801 PCI bridge", BRIDGE_SRC),
    // Intel 82576 PFs (QEMU's `igb` is 8086:10c9): no peer-to-peer between functions. Linux
    // lists the PF IDs only; the 82576 VF (8086:10ca) is not in its table. A VF without an ACS
    // capability of its own inherits its PF's isolation (see `groups`), which is how this entry
    // covers the VFs.
    q(0x8086, 0x10c9, QuirkKind::AcsEquivalent, "Intel 82576", MF_ACS),
    q(0x8086, 0x10e6, QuirkKind::AcsEquivalent, "Intel 82576", MF_ACS),
    q(0x8086, 0x10e7, QuirkKind::AcsEquivalent, "Intel 82576", MF_ACS),
    q(0x8086, 0x10e8, QuirkKind::AcsEquivalent, "Intel 82576", MF_ACS),
    q(0x8086, 0x150a, QuirkKind::AcsEquivalent, "Intel 82576", MF_ACS),
    q(0x8086, 0x150d, QuirkKind::AcsEquivalent, "Intel 82576", MF_ACS),
    q(0x8086, 0x1518, QuirkKind::AcsEquivalent, "Intel 82576", MF_ACS),
    q(0x8086, 0x1526, QuirkKind::AcsEquivalent, "Intel 82576", MF_ACS),
    // Intel I350.
    q(0x8086, 0x1521, QuirkKind::AcsEquivalent, "Intel I350", MF_ACS),
    q(0x8086, 0x1522, QuirkKind::AcsEquivalent, "Intel I350", MF_ACS),
    q(0x8086, 0x1523, QuirkKind::AcsEquivalent, "Intel I350", MF_ACS),
    q(0x8086, 0x1524, QuirkKind::AcsEquivalent, "Intel I350", MF_ACS),
    // Qualcomm QDF2xxx root ports: each is its own root complex, no peer-to-peer.
    q(0x17cb, 0x0400, QuirkKind::AcsEquivalent, "Qualcomm QDF2xxx root port", RP_ACS),
    q(0x17cb, 0x0401, QuirkKind::AcsEquivalent, "Qualcomm QDF2xxx root port", RP_ACS),
];

/// The quirks of `vendor:device`, in table order.
pub fn for_device(vendor: u16, device: u16) -> impl Iterator<Item = &'static Quirk> {
    QUIRKS.iter().filter(move |q| q.vendor == vendor && q.device == device)
}

/// The devfns, on the function's own bus, that a function at `devfn` also issues DMA with, each
/// with its quirk. Empty for most devices.
pub fn dma_alias_devfns(
    vendor: u16,
    device: u16,
    devfn: u8,
) -> impl Iterator<Item = (u8, &'static Quirk)> {
    for_device(vendor, device).filter_map(move |q| match q.kind {
        // Linux PCI_DEVFN(PCI_SLOT(devfn), n), skipped when the function is n itself.
        QuirkKind::DmaAliasFunction(func) if devfn & 7 != func & 7 => {
            Some(((devfn & !7) | (func & 7), q))
        }
        QuirkKind::DmaAliasDevfn(alias) if alias != devfn => Some((alias, q)),
        _ => None,
    })
}

/// Whether `vendor:device` isolates its functions as ACS would although it lacks usable ACS.
pub fn acs_equivalent(vendor: u16, device: u16) -> bool {
    for_device(vendor, device).any(|q| q.kind == QuirkKind::AcsEquivalent)
}

/// Whether `vendor:device` is a conventional-looking bridge that aliases like a PCIe-to-PCI
/// bridge.
pub fn pcie_bridge_alias(vendor: u16, device: u16) -> bool {
    for_device(vendor, device).any(|q| q.kind == QuirkKind::PcieBridgeAlias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_aliases_keep_the_slot_and_skip_themselves() {
        // Marvell 88SE9123 at 05.0 also DMAs as 05.1; at 05.1 it has no extra alias.
        let got: Vec<u8> = dma_alias_devfns(0x1b4b, 0x9123, 5 << 3).map(|(d, _)| d).collect();
        assert_eq!(got, [(5 << 3) | 1]);
        assert_eq!(dma_alias_devfns(0x1b4b, 0x9123, (5 << 3) | 1).count(), 0);
        // Ricoh at 03.2 also DMAs as 03.0.
        let got: Vec<u8> = dma_alias_devfns(0x1180, 0xe832, (3 << 3) | 2).map(|(d, _)| d).collect();
        assert_eq!(got, [3 << 3]);
        // Adaptec: 01.0 whatever its own devfn.
        let got: Vec<u8> = dma_alias_devfns(0x9005, 0x0285, 0x0e << 3).map(|(d, _)| d).collect();
        assert_eq!(got, [1 << 3]);
        assert_eq!(dma_alias_devfns(0x1234, 0x11e8, 0).count(), 0);
    }

    #[test]
    fn table_entries_are_unique_and_sourced() {
        for (i, a) in QUIRKS.iter().enumerate() {
            assert!(!a.source.is_empty() && !a.name.is_empty());
            assert!(
                QUIRKS[..i]
                    .iter()
                    .all(|b| (b.vendor, b.device, b.kind) != (a.vendor, a.device, a.kind))
            );
        }
        assert!(acs_equivalent(0x8086, 0x10c9));
        assert!(!acs_equivalent(0x8086, 0x10ca), "Linux lists the 82576 PF, not its VF");
        assert!(pcie_bridge_alias(0x1b21, 0x1080));
        assert!(!pcie_bridge_alias(0x1b36, 0x0001));
    }
}
