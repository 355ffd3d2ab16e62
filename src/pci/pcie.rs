//! The PCI Express capability (PCIe Base 6.0 §7.5.3): what a function is, whether its slot can
//! hot-plug, FLR, ARI forwarding, and the link it trained.

use core::fmt;

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::caps::{self, id, read32_present};
use crate::pci::config::ConfigAccess;
use crate::pci::topology::FunctionKind;

/// Register offsets inside the capability (§7.5.3).
mod reg {
    /// PCI Express Capabilities (16 bits, after the 16-bit header).
    pub(super) const CAPABILITIES: u16 = 0x00;
    pub(super) const DEVCAP: u16 = 0x04;
    pub(super) const LINK_STATUS: u16 = 0x10; // dword: Link Control, Link Status (0x12)
    pub(super) const SLOTCAP: u16 = 0x14;
    pub(super) const DEVCAP2: u16 = 0x24;
    pub(super) const DEVCTL2: u16 = 0x28;
}

/// Device/Port Type values (§7.5.3.2, bits 7:4 of the PCI Express Capabilities register).
#[allow(missing_docs, reason = "the names are the specification's")]
pub mod port_type {
    pub const ENDPOINT: u8 = 0b0000;
    pub const LEGACY_ENDPOINT: u8 = 0b0001;
    pub const ROOT_PORT: u8 = 0b0100;
    pub const SWITCH_UPSTREAM: u8 = 0b0101;
    pub const SWITCH_DOWNSTREAM: u8 = 0b0110;
    pub const PCIE_TO_PCI_BRIDGE: u8 = 0b0111;
    pub const PCI_TO_PCIE_BRIDGE: u8 = 0b1000;
    pub const RC_INTEGRATED_ENDPOINT: u8 = 0b1001;
    pub const RC_EVENT_COLLECTOR: u8 = 0b1010;
}

/// PCI Express Capabilities: Slot Implemented (§7.5.3.2).
const SLOT_IMPLEMENTED: u16 = 1 << 8;
/// Device Capabilities: Function Level Reset Capability (§7.5.3.3).
const DEVCAP_FLR: u32 = 1 << 28;
/// Slot Capabilities: Hot-Plug Capable (§7.5.3.9).
const SLOTCAP_HOT_PLUG_CAPABLE: u32 = 1 << 6;
/// Device Capabilities 2: ARI Forwarding Supported (§7.5.3.15).
const DEVCAP2_ARI_FORWARDING: u32 = 1 << 5;
/// Device Control 2: ARI Forwarding Enable (§7.5.3.16).
const DEVCTL2_ARI_FORWARDING: u16 = 1 << 5;

/// What a function is, from its header layout (Header Type bits 6:0) and, if it has a PCI
/// Express capability, its Device/Port Type.
///
/// A Device/Port Type that contradicts the header layout (a type 0 header claiming to be a
/// root port, a type 1 header claiming to be an endpoint, or a reserved type) is
/// [`FunctionKind::Other`]: enumeration records it and does not go below it, since nothing
/// about how it routes or aliases requests can be trusted.
pub const fn function_kind(header_layout: u8, port_type: Option<u8>) -> FunctionKind {
    use port_type::*;
    match (header_layout & 0x7f, port_type) {
        (0, None) => FunctionKind::ConventionalEndpoint,
        (1, None) => FunctionKind::ConventionalBridge,
        (0, Some(ENDPOINT | LEGACY_ENDPOINT)) => FunctionKind::PcieEndpoint,
        (0, Some(RC_INTEGRATED_ENDPOINT)) => FunctionKind::RootComplexEndpoint,
        (0, Some(RC_EVENT_COLLECTOR)) => FunctionKind::RootComplexEventCollector,
        (1, Some(ROOT_PORT)) => FunctionKind::RootPort,
        (1, Some(SWITCH_UPSTREAM)) => FunctionKind::SwitchUpstream,
        (1, Some(SWITCH_DOWNSTREAM)) => FunctionKind::SwitchDownstream,
        (1, Some(PCIE_TO_PCI_BRIDGE)) => FunctionKind::PcieToPciBridge,
        (1, Some(PCI_TO_PCIE_BRIDGE)) => FunctionKind::PciToPcieBridge,
        _ => FunctionKind::Other,
    }
}

/// A link's current speed (Link Status, Current Link Speed, §7.5.3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LinkSpeed {
    /// 2.5 GT/s.
    Gt2_5,
    /// 5.0 GT/s.
    Gt5,
    /// 8.0 GT/s.
    Gt8,
    /// 16.0 GT/s.
    Gt16,
    /// 32.0 GT/s.
    Gt32,
    /// 64.0 GT/s.
    Gt64,
    /// A value this driver does not know (the raw field).
    Other(u8),
}

impl LinkSpeed {
    /// Decodes Current Link Speed. The field indexes the Supported Link Speeds Vector of Link
    /// Capabilities 2; every implementation's vector is contiguous from 2.5 GT/s, so value `n`
    /// is the `n`th speed.
    pub const fn from_field(field: u8) -> Self {
        match field {
            1 => Self::Gt2_5,
            2 => Self::Gt5,
            3 => Self::Gt8,
            4 => Self::Gt16,
            5 => Self::Gt32,
            6 => Self::Gt64,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for LinkSpeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gt2_5 => f.write_str("2.5 GT/s"),
            Self::Gt5 => f.write_str("5 GT/s"),
            Self::Gt8 => f.write_str("8 GT/s"),
            Self::Gt16 => f.write_str("16 GT/s"),
            Self::Gt32 => f.write_str("32 GT/s"),
            Self::Gt64 => f.write_str("64 GT/s"),
            Self::Other(v) => write!(f, "speed {v}"),
        }
    }
}

/// What Link Status says (§7.5.3.8), for the tree print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinkStatus {
    /// Current Link Speed.
    pub speed: LinkSpeed,
    /// Negotiated Link Width (lanes; 0 when the link is down).
    pub width: u8,
    /// Link Training (downstream ports: training in progress).
    pub training: bool,
    /// Data Link Layer Link Active (downstream ports that report it).
    pub dll_active: bool,
}

impl fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} x{}", self.speed, self.width)?;
        if self.training {
            f.write_str(" (training)")?;
        }
        Ok(())
    }
}

/// The PCI Express capability of one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pcie {
    bdf: Bdf,
    offset: u16,
}

impl Pcie {
    /// Finds `bdf`'s PCI Express capability (`None` for a conventional function).
    pub fn find<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Result<Option<Self>> {
        Ok(caps::find(cfg, bdf, id::PCIE)?.map(|offset| Self { bdf, offset }))
    }

    /// The capability at a known `offset` (from [`caps::collect`]).
    pub const fn at(bdf: Bdf, offset: u16) -> Self {
        Self { bdf, offset }
    }

    /// The function.
    pub const fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Offset of the capability header.
    pub const fn offset(&self) -> u16 {
        self.offset
    }

    fn read32(&self, cfg: &(impl ConfigAccess + ?Sized), register: u16) -> Result<u32> {
        read32_present(cfg, self.bdf, self.offset + register)
    }

    /// The PCI Express Capabilities register (§7.5.3.2).
    pub fn capabilities<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<u16> {
        // CAST: the register is the high half of the capability's first dword.
        Ok((self.read32(cfg, reg::CAPABILITIES)? >> 16) as u16)
    }

    /// Capability Version (1 or 2; version 1 capabilities end at Slot Status, so the "2"
    /// registers read as zero or garbage there).
    pub fn version<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<u8> {
        // CAST: bits 3:0.
        Ok((self.capabilities(cfg)? & 0xf) as u8)
    }

    /// Device/Port Type (see [`port_type`]).
    pub fn port_type<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<u8> {
        // CAST: bits 7:4.
        Ok(((self.capabilities(cfg)? >> 4) & 0xf) as u8)
    }

    /// What the function is, given its Header Type's layout (bits 6:0).
    pub fn function_kind<C: ConfigAccess + ?Sized>(
        &self,
        cfg: &C,
        header_layout: u8,
    ) -> Result<FunctionKind> {
        Ok(function_kind(header_layout, Some(self.port_type(cfg)?)))
    }

    /// Slot Implemented: the port connects to a slot (root and switch downstream ports only).
    pub fn slot_implemented<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<bool> {
        Ok(self.capabilities(cfg)? & SLOT_IMPLEMENTED != 0)
    }

    /// Whether the port's slot is hot-plug capable (Slot Capabilities Hot-Plug Capable; the slot
    /// registers exist only with Slot Implemented). Bus numbering leaves room below such ports.
    pub fn hot_plug_capable<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<bool> {
        Ok(self.slot_implemented(cfg)?
            && self.read32(cfg, reg::SLOTCAP)? & SLOTCAP_HOT_PLUG_CAPABLE != 0)
    }

    /// Device Capabilities: Function Level Reset Capability.
    pub fn flr_capable<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<bool> {
        Ok(self.read32(cfg, reg::DEVCAP)? & DEVCAP_FLR != 0)
    }

    /// Device Capabilities 2: ARI Forwarding Supported (downstream ports; a version 1
    /// capability has no Device Capabilities 2, so it answers `false`).
    pub fn ari_forwarding_supported<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<bool> {
        Ok(self.version(cfg)? >= 2 && self.read32(cfg, reg::DEVCAP2)? & DEVCAP2_ARI_FORWARDING != 0)
    }

    /// Device Control 2: ARI Forwarding Enable.
    pub fn ari_forwarding_enabled<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<bool> {
        Ok(self.version(cfg)? >= 2 && self.devctl2(cfg)? & DEVCTL2_ARI_FORWARDING != 0)
    }

    fn devctl2<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<u16> {
        // CAST: Device Control 2 is the low half of its dword.
        Ok(self.read32(cfg, reg::DEVCTL2)? as u16)
    }

    /// Sets or clears ARI Forwarding Enable (§7.5.3.16): with it set, a downstream port lets
    /// type 0 configuration requests reach device numbers other than 0 on its link, which is how
    /// ARI functions 8-255 become reachable. Setting it on a port without ARI Forwarding
    /// Supported is [`Error::FeatureUnsupported`]; a bit that does not read back is
    /// [`Error::SettingNotTaken`].
    pub fn set_ari_forwarding<C: ConfigAccess + ?Sized>(
        &self,
        cfg: &C,
        enable: bool,
    ) -> Result<()> {
        if enable && !self.ari_forwarding_supported(cfg)? {
            return Err(Error::FeatureUnsupported {
                bdf: self.bdf,
                what: "DevCap2 ARI Forwarding Supported",
                requested: u32::from(DEVCTL2_ARI_FORWARDING),
                supported: 0,
            });
        }
        let before = self.devctl2(cfg)?;
        let wanted =
            if enable { before | DEVCTL2_ARI_FORWARDING } else { before & !DEVCTL2_ARI_FORWARDING };
        if wanted == before {
            return Ok(());
        }
        cfg.write16(self.bdf, self.offset + reg::DEVCTL2, wanted);
        let read = self.devctl2(cfg)?;
        if (read ^ wanted) & DEVCTL2_ARI_FORWARDING != 0 {
            return Err(Error::SettingNotTaken {
                bdf: self.bdf,
                what: "DevCtl2 ARI Forwarding Enable",
                wrote: u32::from(wanted),
                read: u32::from(read),
            });
        }
        Ok(())
    }

    /// The link's status, or `None` for functions without a link (root complex integrated
    /// endpoints and event collectors, whose link registers are reserved).
    pub fn link_status<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<Option<LinkStatus>> {
        let kind = self.port_type(cfg)?;
        if matches!(kind, port_type::RC_INTEGRATED_ENDPOINT | port_type::RC_EVENT_COLLECTOR) {
            return Ok(None);
        }
        // CAST: Link Status is the high half of the Link Control dword.
        let status = (self.read32(cfg, reg::LINK_STATUS)? >> 16) as u16;
        Ok(Some(LinkStatus {
            // CAST: 4- and 6-bit fields.
            speed: LinkSpeed::from_field((status & 0xf) as u8),
            width: ((status >> 4) & 0x3f) as u8,
            training: status & (1 << 11) != 0,
            dll_active: status & (1 << 13) != 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::pci::{Bridge, Function, PcieCap, PortType, Topology};

    fn bdf(dev: u8) -> Bdf {
        Bdf::new(0, 0, dev, 0).unwrap()
    }

    #[test]
    fn kinds_from_header_and_port_type() {
        assert_eq!(function_kind(0, None), FunctionKind::ConventionalEndpoint);
        assert_eq!(function_kind(0x81, None), FunctionKind::ConventionalBridge);
        assert_eq!(function_kind(0, Some(port_type::LEGACY_ENDPOINT)), FunctionKind::PcieEndpoint);
        assert_eq!(
            function_kind(1, Some(port_type::SWITCH_DOWNSTREAM)),
            FunctionKind::SwitchDownstream
        );
        assert_eq!(
            function_kind(1, Some(port_type::PCIE_TO_PCI_BRIDGE)),
            FunctionKind::PcieToPciBridge
        );
        assert_eq!(
            function_kind(0, Some(port_type::RC_EVENT_COLLECTOR)),
            FunctionKind::RootComplexEventCollector
        );
        // Contradictions and reserved values.
        assert_eq!(function_kind(0, Some(port_type::ROOT_PORT)), FunctionKind::Other);
        assert_eq!(function_kind(1, Some(port_type::ENDPOINT)), FunctionKind::Other);
        assert_eq!(function_kind(1, Some(0xf)), FunctionKind::Other);
        assert_eq!(function_kind(2, None), FunctionKind::Other);
    }

    #[test]
    fn reads_a_root_port_and_an_endpoint() {
        let t = Topology::builder()
            .bridge(1, 0, Bridge::root_port().name("rp"), |b| b)
            .device(2, 0, Function::endpoint(0x8086, 0x10c9, 0x02_0000).flr())
            .device(3, 0, Function::rc_integrated(0x8086, 0x1234, 0x08_0600))
            .build();
        let rp = Pcie::find(&t, bdf(1)).unwrap().unwrap();
        assert_eq!(rp.function_kind(&t, 1), Ok(FunctionKind::RootPort));
        assert_eq!(rp.version(&t), Ok(2));
        assert_eq!(rp.slot_implemented(&t), Ok(true));
        assert_eq!(rp.hot_plug_capable(&t), Ok(false));
        assert_eq!(rp.ari_forwarding_supported(&t), Ok(true));
        let link = rp.link_status(&t).unwrap().unwrap();
        assert_eq!((link.speed, link.width), (LinkSpeed::Gt2_5, 1));
        assert_eq!(link.to_string(), "2.5 GT/s x1");

        let ep = Pcie::find(&t, bdf(2)).unwrap().unwrap();
        assert_eq!(ep.function_kind(&t, 0), Ok(FunctionKind::PcieEndpoint));
        assert_eq!(ep.flr_capable(&t), Ok(true));
        assert_eq!(ep.slot_implemented(&t), Ok(false));
        assert_eq!(ep.hot_plug_capable(&t), Ok(false));
        assert_eq!(rp.flr_capable(&t), Ok(false));

        let rciep = Pcie::find(&t, bdf(3)).unwrap().unwrap();
        assert_eq!(rciep.function_kind(&t, 0), Ok(FunctionKind::RootComplexEndpoint));
        assert_eq!(rciep.link_status(&t), Ok(None));
    }

    #[test]
    fn hot_plug_slot() {
        let port = Bridge::switch_downstream()
            .pcie(PcieCap::new(PortType::SwitchDownstream).hotplug(true));
        let t = Topology::builder().bridge(1, 0, port, |b| b).build();
        let p = Pcie::find(&t, bdf(1)).unwrap().unwrap();
        assert_eq!(p.hot_plug_capable(&t), Ok(true));
    }

    #[test]
    fn ari_forwarding_round_trip_and_refusals() {
        let t = Topology::builder()
            .bridge(1, 0, Bridge::root_port(), |b| b)
            .bridge(
                2,
                0,
                Bridge::root_port().pcie(PcieCap::new(PortType::RootPort).ari_forwarding(false)),
                |b| b,
            )
            .build();
        let rp = Pcie::find(&t, bdf(1)).unwrap().unwrap();
        assert_eq!(rp.ari_forwarding_enabled(&t), Ok(false));
        rp.set_ari_forwarding(&t, true).unwrap();
        assert_eq!(rp.ari_forwarding_enabled(&t), Ok(true));
        rp.set_ari_forwarding(&t, false).unwrap();
        assert_eq!(rp.ari_forwarding_enabled(&t), Ok(false));

        let no_ari = Pcie::find(&t, bdf(2)).unwrap().unwrap();
        assert!(matches!(
            no_ari.set_ari_forwarding(&t, true),
            Err(Error::FeatureUnsupported { .. })
        ));
        assert_eq!(no_ari.set_ari_forwarding(&t, false), Ok(()));

        // A port that claims support but whose enable bit is hard-wired to 0.
        let liar = Topology::builder()
            .bridge(
                1,
                0,
                Bridge::root_port().pcie(PcieCap::new(PortType::RootPort).ari_forwarding(false)),
                |b| b,
            )
            .build();
        let p = Pcie::find(&liar, bdf(1)).unwrap().unwrap();
        let id = liar.route_of(bdf(1)).unwrap();
        let devcap2 = liar.peek32(id, p.offset() + reg::DEVCAP2) | DEVCAP2_ARI_FORWARDING;
        liar.poke(id, p.offset() + reg::DEVCAP2, &devcap2.to_le_bytes());
        assert!(matches!(
            p.set_ari_forwarding(&liar, true),
            Err(Error::SettingNotTaken { what: "DevCtl2 ARI Forwarding Enable", read, .. }) if read & 0x20 == 0
        ));
    }

    #[test]
    fn version_1_has_no_devcap2() {
        let t = Topology::builder().bridge(1, 0, Bridge::root_port(), |b| b).build();
        let p = Pcie::find(&t, bdf(1)).unwrap().unwrap();
        let id = t.route_of(bdf(1)).unwrap();
        let caps = t.peek16(id, p.offset() + 2) & !0xf | 1;
        t.poke(id, p.offset() + 2, &caps.to_le_bytes());
        assert_eq!(p.version(&t), Ok(1));
        assert_eq!(p.ari_forwarding_supported(&t), Ok(false));
    }

    #[test]
    fn vanished_function() {
        let t = Topology::builder()
            .device(2, 0, Function::endpoint(0x8086, 0x10c9, 0x02_0000).name("ep"))
            .build();
        let p = Pcie::find(&t, bdf(2)).unwrap().unwrap();
        t.set_present(t.find("ep").unwrap(), false);
        assert_eq!(p.flr_capable(&t), Err(Error::FunctionVanished { bdf: bdf(2) }));
        assert_eq!(p.link_status(&t), Err(Error::FunctionVanished { bdf: bdf(2) }));
    }
}
