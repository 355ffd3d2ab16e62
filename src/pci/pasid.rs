//! Process Address Space ID (PCIe Base 6.0 §7.8.9): lets a function tag its requests with a
//! PASID, and with execute and privileged-mode permissions.
//!
//! VFs have no PASID capability: the PF's governs the PF and all its VFs (§9.3.7), so
//! [`Pasid`] is only ever found on a PF or a function without SR-IOV, and enabling PASID for a
//! VF means enabling it on the PF.
//!
//! PASID Enable, Execute Permission Enable and Privileged Mode Enable must not change while ATS
//! is enabled: the function's ATC holds translations obtained under the old setting, and the
//! spec leaves the behaviour undefined (§7.8.9.3). [`Pasid::enable`] and [`Pasid::disable`]
//! check the function's own ATS Enable in hardware and, for a PF, take the number of its VFs
//! with ATS enabled (which the caller tracks, as for [`Ats::enable_pf`](super::ats::Ats::enable_pf)),
//! and refuse with [`Error::NotWhileEnabled`].

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::ats::Ats;
use crate::pci::caps::{self, id};
use crate::pci::config::ConfigAccess;

/// PASID Capability (16 bits at 0x04), PASID Control (16 bits at 0x06).
const CAPABILITY: u16 = 0x04;
const CONTROL: u16 = 0x06;
/// Capability: Execute Permission Supported (1), Privileged Mode Supported (2), Max PASID Width
/// (12:8). Control: PASID Enable (0), Execute Permission Enable (1), Privileged Mode Enable (2).
const ENABLE: u16 = 1 << 0;
const EXECUTE: u16 = 1 << 1;
const PRIVILEGED: u16 = 1 << 2;
const CONTROL_BITS: u16 = ENABLE | EXECUTE | PRIVILEGED;
/// Largest Max PASID Width the spec allows (PASIDs are 20 bits).
pub const MAX_WIDTH: u8 = 20;

/// Optional PASID features, for [`Pasid::enable`] and in [`PasidCapability`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PasidFeatures {
    /// Execute permission on requests with a PASID.
    pub execute: bool,
    /// Privileged-mode requests with a PASID.
    pub privileged: bool,
}

impl PasidFeatures {
    const fn bits(self) -> u16 {
        (if self.execute { EXECUTE } else { 0 }) | (if self.privileged { PRIVILEGED } else { 0 })
    }
    const fn from_bits(bits: u16) -> Self {
        Self { execute: bits & EXECUTE != 0, privileged: bits & PRIVILEGED != 0 }
    }
}

/// What the PASID Capability register offers (§7.8.9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PasidCapability {
    /// Execute Permission Supported and Privileged Mode Supported.
    pub features: PasidFeatures,
    /// Max PASID Width: the function supports PASIDs below `1 << max_width` (0..=20).
    pub max_width: u8,
}

/// The PASID Control register (§7.8.9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PasidControl {
    /// PASID Enable.
    pub enabled: bool,
    /// Execute Permission Enable and Privileged Mode Enable.
    pub features: PasidFeatures,
}

/// The PASID capability of one function, with its ATS capability if it has one (checked
/// before every change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pasid {
    bdf: Bdf,
    offset: u16,
    ats: Option<Ats>,
}

impl Pasid {
    /// Finds `bdf`'s PASID capability and its ATS capability, in one walk of the extended list
    /// (`None` without PASID).
    pub fn find<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Result<Option<Self>> {
        let (mut pasid, mut ats) = (None, None);
        for cap in caps::extended(cfg, bdf) {
            match cap? {
                (id::PASID, _, offset) if pasid.is_none() => pasid = Some(offset),
                (id::ATS, _, offset) if ats.is_none() => ats = Some(Ats::at(bdf, offset)),
                _ => {}
            }
        }
        Ok(pasid.map(|offset| Self { bdf, offset, ats }))
    }

    /// The capability at a known `offset`, with the function's ATS capability offset if any
    /// (both from [`caps::collect`]; 0 there means absent).
    pub const fn at(bdf: Bdf, offset: u16, ats_offset: Option<u16>) -> Self {
        let ats = match ats_offset {
            Some(o) => Some(Ats::at(bdf, o)),
            None => None,
        };
        Self { bdf, offset, ats }
    }

    /// The function.
    pub const fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Offset of the capability header.
    pub const fn offset(&self) -> u16 {
        self.offset
    }

    fn registers<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<(u16, u16)> {
        caps::read_halves(cfg, self.bdf, self.offset + CAPABILITY)
    }

    /// The PASID Capability register. A Max PASID Width above 20 is [`Error::Hardware`].
    pub fn capability<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<PasidCapability> {
        let (cap, _) = self.registers(cfg)?;
        // CAST: a 5-bit field.
        let max_width = ((cap >> 8) & 0x1f) as u8;
        if max_width > MAX_WIDTH {
            return Err(Error::Hardware {
                what: "PASID Max PASID Width",
                value: u64::from(max_width),
            });
        }
        Ok(PasidCapability { features: PasidFeatures::from_bits(cap), max_width })
    }

    /// The PASID Control register.
    pub fn control<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<PasidControl> {
        let (_, control) = self.registers(cfg)?;
        Ok(PasidControl {
            enabled: control & ENABLE != 0,
            features: PasidFeatures::from_bits(control),
        })
    }

    /// Refuses while ATS is on in this function or (for a PF) any of its VFs.
    fn check_ats_off<C: ConfigAccess + ?Sized>(&self, cfg: &C, vfs_with_ats: u16) -> Result<()> {
        let own = match self.ats {
            Some(ats) => ats.control(cfg)?.enabled,
            None => false,
        };
        if own || vfs_with_ats > 0 {
            return Err(Error::NotWhileEnabled { bdf: self.bdf, what: "ATS Control.Enable" });
        }
        Ok(())
    }

    /// Sets PASID Enable with the optional `features`, while PASID is disabled and ATS is off
    /// (in this function and, as `vfs_with_ats` says, in its VFs).
    ///
    /// A feature the capability does not offer is [`Error::FeatureUnsupported`] (carrying the
    /// bits asked for and offered); PASID already enabled is [`Error::NotWhileEnabled`]
    /// (disable first: features cannot change while enabled, as no request tagged under the
    /// old ones may still be in flight); control bits that do not read back are
    /// [`Error::SettingNotTaken`].
    pub fn enable<C: ConfigAccess + ?Sized>(
        &self,
        cfg: &C,
        features: PasidFeatures,
        vfs_with_ats: u16,
    ) -> Result<()> {
        let (cap, control) = self.registers(cfg)?;
        let (requested, supported) = (features.bits(), cap & (EXECUTE | PRIVILEGED));
        if requested & !supported != 0 {
            return Err(Error::FeatureUnsupported {
                bdf: self.bdf,
                what: "PASID Capability",
                requested: u32::from(requested),
                supported: u32::from(supported),
            });
        }
        if control & ENABLE != 0 {
            return Err(Error::NotWhileEnabled {
                bdf: self.bdf,
                what: "PASID Control.PASID Enable",
            });
        }
        self.check_ats_off(cfg, vfs_with_ats)?;
        // Bits 15:3 are RsvdP: written back as read.
        self.write_control(cfg, (control & !CONTROL_BITS) | ENABLE | requested)
    }

    /// Clears PASID Enable and the feature enables, while ATS is off (see
    /// [`enable`](Self::enable)). Nothing to do if PASID is disabled.
    pub fn disable<C: ConfigAccess + ?Sized>(&self, cfg: &C, vfs_with_ats: u16) -> Result<()> {
        let (_, control) = self.registers(cfg)?;
        if control & CONTROL_BITS == 0 {
            return Ok(());
        }
        self.check_ats_off(cfg, vfs_with_ats)?;
        self.write_control(cfg, control & !CONTROL_BITS)
    }

    fn write_control<C: ConfigAccess + ?Sized>(&self, cfg: &C, value: u16) -> Result<()> {
        cfg.write16(self.bdf, self.offset + CONTROL, value);
        let (_, read) = self.registers(cfg)?;
        if (read ^ value) & CONTROL_BITS != 0 {
            return Err(Error::SettingNotTaken {
                bdf: self.bdf,
                what: "PASID Control",
                wrote: u32::from(value),
                read: u32::from(read),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::pci::{Capability, Function, Topology};

    fn bdf() -> Bdf {
        Bdf::new(0, 0, 1, 0).unwrap()
    }

    fn device(execute: bool, privileged: bool) -> (Topology, Pasid, Ats) {
        let t = Topology::builder()
            .device(
                1,
                0,
                Function::endpoint(0x8086, 0x0b25, 0x08_8000)
                    .name("dsa")
                    .ats(0, true)
                    .pasid(execute, privileged, 20),
            )
            .build();
        let pasid = Pasid::find(&t, bdf()).unwrap().unwrap();
        let ats = Ats::find(&t, bdf()).unwrap().unwrap();
        (t, pasid, ats)
    }

    const ALL: PasidFeatures = PasidFeatures { execute: true, privileged: true };

    #[test]
    fn capability_and_round_trip() {
        let (t, pasid, _) = device(true, true);
        assert_eq!(pasid.capability(&t), Ok(PasidCapability { features: ALL, max_width: 20 }));
        pasid.enable(&t, ALL, 0).unwrap();
        assert_eq!(pasid.control(&t), Ok(PasidControl { enabled: true, features: ALL }));
        pasid.disable(&t, 0).unwrap();
        assert_eq!(
            pasid.control(&t),
            Ok(PasidControl { enabled: false, features: PasidFeatures::default() })
        );
        pasid.enable(&t, PasidFeatures { execute: true, privileged: false }, 0).unwrap();
        assert_eq!(
            pasid.control(&t).unwrap().features,
            PasidFeatures { execute: true, privileged: false }
        );
    }

    #[test]
    fn refuses_features_not_offered() {
        let (t, pasid, _) = device(true, false);
        assert_eq!(
            pasid.enable(&t, ALL, 0),
            Err(Error::FeatureUnsupported {
                bdf: bdf(),
                what: "PASID Capability",
                requested: 6,
                supported: 2
            })
        );
        assert!(!pasid.control(&t).unwrap().enabled);
    }

    #[test]
    fn refuses_changes_while_ats_is_on() {
        let (t, pasid, ats) = device(false, false);
        ats.enable_pf(&t, 0, 0).unwrap();
        let refused = Err(Error::NotWhileEnabled { bdf: bdf(), what: "ATS Control.Enable" });
        assert_eq!(pasid.enable(&t, PasidFeatures::default(), 0), refused);
        ats.disable(&t).unwrap();
        // A VF with ATS on pins the PF's PASID too.
        assert_eq!(pasid.enable(&t, PasidFeatures::default(), 1), refused);
        pasid.enable(&t, PasidFeatures::default(), 0).unwrap();
        ats.enable_pf(&t, 0, 0).unwrap();
        assert_eq!(pasid.disable(&t, 0), refused);
        assert_eq!(
            pasid.enable(&t, PasidFeatures::default(), 0),
            Err(Error::NotWhileEnabled { bdf: bdf(), what: "PASID Control.PASID Enable" })
        );
        ats.disable(&t).unwrap();
        pasid.disable(&t, 0).unwrap();
    }

    #[test]
    fn a_device_that_ignores_the_enable() {
        // Read-only PASID registers: Execute and Privileged offered, Max Width 16.
        let t = Topology::builder()
            .device(
                1,
                0,
                Function::endpoint(0x8086, 0x1234, 0x02_0000).cap(Capability::RawExtended {
                    id: id::PASID,
                    version: 1,
                    body: std::vec![0x06, 0x10, 0, 0],
                }),
            )
            .build();
        let pasid = Pasid::find(&t, bdf()).unwrap().unwrap();
        assert_eq!(pasid.capability(&t).unwrap().max_width, 16);
        assert_eq!(
            pasid.enable(&t, PasidFeatures::default(), 0),
            Err(Error::SettingNotTaken { bdf: bdf(), what: "PASID Control", wrote: 1, read: 0 })
        );
    }

    #[test]
    fn hostile_width_and_vanished() {
        let (t, pasid, _) = device(false, false);
        let id = t.find("dsa").unwrap();
        t.poke(id, pasid.offset() + 5, &[21]);
        assert!(matches!(pasid.capability(&t), Err(Error::Hardware { value: 21, .. })));
        t.set_present(id, false);
        assert_eq!(
            pasid.enable(&t, PasidFeatures::default(), 0),
            Err(Error::FunctionVanished { bdf: bdf() })
        );
    }
}
