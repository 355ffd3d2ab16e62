//! Access Control Services (PCIe Base 6.0 §7.7.11): the capability that keeps peer-to-peer
//! requests from bypassing the IOMMU, which isolation groups depend on.
//!
//! The register values are [`crate::pci::Acs`] (capability and control, same bit positions);
//! this module reads them and enables controls.

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::caps::{self, id};
use crate::pci::config::ConfigAccess;
use crate::pci::topology::Acs;

/// ACS Capability register (16 bits), then ACS Control (16 bits).
const CAPABILITY: u16 = 0x04;
const CONTROL: u16 = 0x06;

/// The controls that isolate a function or port without changing where legitimate traffic
/// goes: Source Validation, P2P Request Redirect, P2P Completion Redirect, Upstream Forwarding
/// (what Linux `pci_std_enable_acs` enables). Egress Control needs an egress vector and Direct
/// Translated P2P lets translated requests bypass the redirect; neither is enabled unless asked.
pub const ISOLATION: u16 = Acs::SOURCE_VALIDATION
    | Acs::REQUEST_REDIRECT
    | Acs::COMPLETION_REDIRECT
    | Acs::UPSTREAM_FORWARDING;

/// Every control bit this driver knows (bits 6:0; the Egress Control Vector Size in the
/// capability's high byte is not a control).
const KNOWN: u16 = 0x7f;

/// Reads the ACS Capability and Control registers of the capability at `offset` (one 32-bit
/// read). All-ones with the function gone is [`Error::FunctionVanished`].
pub(crate) fn read_registers<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    offset: u16,
) -> Result<Acs> {
    let value = caps::read32_present(cfg, bdf, offset + CAPABILITY)?;
    // CAST: Capability is the low half, Control the high half.
    Ok(Acs { capability: value as u16, control: (value >> 16) as u16 })
}

/// The ACS capability of one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AcsCap {
    bdf: Bdf,
    offset: u16,
}

impl AcsCap {
    /// Finds `bdf`'s ACS capability (`None` if it has none).
    pub fn find<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Result<Option<Self>> {
        Ok(caps::find_extended(cfg, bdf, id::ACS)?.map(|offset| Self { bdf, offset }))
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

    /// The Capability and Control registers.
    pub fn read<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<Acs> {
        read_registers(cfg, self.bdf, self.offset)
    }

    /// Enables the controls of `flags` that the capability offers (bits it does not offer are
    /// left alone: a function need not implement a control that does not apply to it, §7.7.11),
    /// leaves every other control as it is, and returns the Control register read back.
    ///
    /// [`ISOLATION`] is what isolation groups want. A control the capability offers that does
    /// not read back set is [`Error::SettingNotTaken`].
    pub fn enable<C: ConfigAccess + ?Sized>(&self, cfg: &C, flags: u16) -> Result<u16> {
        let acs = self.read(cfg)?;
        let wanted = flags & acs.capability & KNOWN;
        if acs.control & wanted == wanted {
            return Ok(acs.control);
        }
        let control = acs.control | wanted;
        cfg.write16(self.bdf, self.offset + CONTROL, control);
        let read = self.read(cfg)?.control;
        if read & wanted != wanted {
            return Err(Error::SettingNotTaken {
                bdf: self.bdf,
                what: "ACS Control",
                wrote: u32::from(control),
                read: u32::from(read),
            });
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::caps::fake::FakeConfig;

    fn with_acs(capability: u16, control: u16) -> (FakeConfig, AcsCap) {
        let f = FakeConfig::new();
        f.cap_list(0x40);
        f.legacy_cap(0x40, id::PCIE, 0);
        f.extended_cap(0x100, id::ACS, 0);
        f.set32(0x104, u32::from(capability) | u32::from(control) << 16);
        let acs = AcsCap::find(&f, f.bdf).unwrap().unwrap();
        (f, acs)
    }

    #[test]
    fn enables_only_what_is_offered_and_asked() {
        // Offers SV, RR, CR, UF, EC, DT; TB not offered.
        let (f, acs) = with_acs(0x7d, 0);
        assert_eq!(acs.offset(), 0x100);
        assert_eq!(acs.enable(&f, ISOLATION | Acs::TRANSLATION_BLOCKING), Ok(ISOLATION));
        assert_eq!(acs.read(&f).unwrap(), Acs { capability: 0x7d, control: ISOLATION });
        // Egress control and direct translated P2P only when asked.
        assert_eq!(acs.enable(&f, Acs::EGRESS_CONTROL), Ok(ISOLATION | Acs::EGRESS_CONTROL));
        assert_eq!(f.get32(0x104) >> 16, u32::from(ISOLATION | Acs::EGRESS_CONTROL));
    }

    #[test]
    fn keeps_controls_already_set() {
        let (f, acs) = with_acs(0x1f, Acs::TRANSLATION_BLOCKING);
        assert_eq!(acs.enable(&f, Acs::SOURCE_VALIDATION), Ok(0x3));
    }

    #[test]
    fn a_control_that_does_not_stick_is_an_error() {
        let (f, acs) = with_acs(0x1f, 0);
        f.read_only32(0x104, u32::from(Acs::REQUEST_REDIRECT) << 16);
        let err = acs.enable(&f, ISOLATION).unwrap_err();
        assert_eq!(
            err,
            Error::SettingNotTaken {
                bdf: f.bdf,
                what: "ACS Control",
                wrote: u32::from(ISOLATION),
                read: u32::from(ISOLATION & !Acs::REQUEST_REDIRECT)
            }
        );
    }

    #[test]
    fn vanished_function() {
        let (f, acs) = with_acs(0x1f, 0);
        f.vanish_after(0);
        assert_eq!(acs.enable(&f, ISOLATION), Err(Error::FunctionVanished { bdf: f.bdf }));
    }
}
