//! Address Translation Services (PCIe Base 6.0 §10.5.1): the capability that lets a function
//! cache translations (its ATC) and ask the IOMMU for them.
//!
//! # The STU rule for PFs and VFs
//!
//! The Smallest Translation Unit tells the function the smallest translation the IOMMU hands
//! out (`2^(STU + 12)` bytes). In a VF the STU field is reserved: the PF's STU applies to the PF
//! and every one of its VFs (§10.5.1.3). So the PF's value is the single source of truth:
//!
//! - [`Ats::enable_pf`] programs the PF's STU and enables the PF. It refuses to change the STU
//!   while any VF has ATS enabled (the caller passes how many VFs it has enabled ATS on; it is
//!   the one that tracks them), since those VFs' ATCs were filled under the old unit.
//! - [`Ats::enable_vf`] enables a VF only if the PF's programmed STU is the one the caller
//!   means to use for the VF (Linux `pci_enable_ats` enforces the same).

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::pci::caps::{self, id};
use crate::pci::config::ConfigAccess;

/// ATS Capability (16 bits at 0x04), ATS Control (16 bits at 0x06).
const CAPABILITY: u16 = 0x04;
const CONTROL: u16 = 0x06;
/// Control: Enable (bit 15), STU (4:0).
const ENABLE: u16 = 1 << 15;
const STU_MASK: u16 = 0x1f;
/// Capability: Invalidate Queue Depth (4:0), Page Aligned Request (5), Global Invalidate
/// Supported (6).
const PAGE_ALIGNED_REQUEST: u16 = 1 << 5;
const GLOBAL_INVALIDATE: u16 = 1 << 6;

/// Largest STU value: the field is 5 bits.
pub const MAX_STU: u8 = 31;

/// What the ATS Capability register offers (§10.5.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AtsCapability {
    /// Invalidate requests the function can queue (1..=32; the field's 0 means 32).
    pub invalidate_queue_depth: u8,
    /// Untranslated addresses in translation requests are page aligned (bits 11:0 are 0).
    pub page_aligned_request: bool,
    /// The function honours the Global bit of invalidations (with PASID).
    pub global_invalidate: bool,
}

/// The ATS Control register (§10.5.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AtsControl {
    /// ATS Enable.
    pub enabled: bool,
    /// Smallest Translation Unit (reads 0 in VFs, where it is reserved).
    pub stu: u8,
}

/// The ATS capability of one function (PF, VF or a function without SR-IOV).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ats {
    bdf: Bdf,
    offset: u16,
}

impl Ats {
    /// Finds `bdf`'s ATS capability (`None` if it has none).
    pub fn find<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Result<Option<Self>> {
        Ok(caps::find_extended(cfg, bdf, id::ATS)?.map(|offset| Self { bdf, offset }))
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

    /// Capability (low half) and Control (high half) in one read.
    fn registers<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<(u16, u16)> {
        caps::read_halves(cfg, self.bdf, self.offset + CAPABILITY)
    }

    /// The ATS Capability register.
    pub fn capability<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<AtsCapability> {
        let (cap, _) = self.registers(cfg)?;
        // CAST: a 5-bit field.
        let depth = (cap & 0x1f) as u8;
        Ok(AtsCapability {
            invalidate_queue_depth: if depth == 0 { 32 } else { depth },
            page_aligned_request: cap & PAGE_ALIGNED_REQUEST != 0,
            global_invalidate: cap & GLOBAL_INVALIDATE != 0,
        })
    }

    /// The ATS Control register.
    pub fn control<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<AtsControl> {
        let (_, control) = self.registers(cfg)?;
        // CAST: a 5-bit field.
        Ok(AtsControl { enabled: control & ENABLE != 0, stu: (control & STU_MASK) as u8 })
    }

    fn check_stu(&self, stu: u8) -> Result<()> {
        if stu > MAX_STU {
            return Err(Error::InvalidField {
                what: "ATS Smallest Translation Unit",
                value: u64::from(stu),
            });
        }
        Ok(())
    }

    /// Programs STU `stu` (translations of at least `2^(stu + 12)` bytes) and enables ATS on a
    /// PF (or a function without SR-IOV).
    ///
    /// `vfs_with_ats` is how many of this PF's VFs have ATS enabled, as the caller tracks it:
    /// while it is non-zero the STU they rely on cannot change, and a different `stu` is
    /// [`Error::AtsStuMismatch`]. Refuses if ATS is already enabled ([`Error::NotWhileEnabled`]:
    /// disable first; the STU must not change under a live ATC). A control that does not read
    /// back as written is [`Error::SettingNotTaken`].
    pub fn enable_pf<C: ConfigAccess + ?Sized>(
        &self,
        cfg: &C,
        stu: u8,
        vfs_with_ats: u16,
    ) -> Result<()> {
        self.check_stu(stu)?;
        let (_, control) = self.registers(cfg)?;
        if control & ENABLE != 0 {
            return Err(Error::NotWhileEnabled { bdf: self.bdf, what: "ATS Control.Enable" });
        }
        // CAST: a 5-bit field.
        let programmed = (control & STU_MASK) as u8;
        if vfs_with_ats > 0 && programmed != stu {
            return Err(Error::AtsStuMismatch { bdf: self.bdf, programmed, requested: stu });
        }
        // Bits 14:5 are RsvdP: written back as read.
        let wanted = (control & !(ENABLE | STU_MASK)) | ENABLE | u16::from(stu);
        self.write_control(cfg, wanted, ENABLE | STU_MASK)
    }

    /// Enables ATS on a VF whose PF's ATS capability is `pf`, for translations of STU `stu`.
    ///
    /// The VF's STU field is reserved (§10.5.1.3); the PF's applies. If the PF's programmed STU
    /// differs from `stu`, this is [`Error::AtsStuMismatch`] carrying both: program the PF
    /// first ([`enable_pf`](Self::enable_pf)). Refuses if the VF's ATS is already enabled.
    pub fn enable_vf<C: ConfigAccess + ?Sized>(&self, cfg: &C, pf: &Ats, stu: u8) -> Result<()> {
        self.check_stu(stu)?;
        let (_, control) = self.registers(cfg)?;
        if control & ENABLE != 0 {
            return Err(Error::NotWhileEnabled { bdf: self.bdf, what: "ATS Control.Enable" });
        }
        let programmed = pf.control(cfg)?.stu;
        if programmed != stu {
            return Err(Error::AtsStuMismatch { bdf: self.bdf, programmed, requested: stu });
        }
        // The STU field is RsvdP in a VF: preserved, like bits 14:5.
        self.write_control(cfg, control | ENABLE, ENABLE)
    }

    /// Clears ATS Enable (nothing to do if it is clear). The caller invalidates the function's
    /// ATC before, since translations cached under this enable are no longer tracked.
    pub fn disable<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<()> {
        let (_, control) = self.registers(cfg)?;
        if control & ENABLE == 0 {
            return Ok(());
        }
        self.write_control(cfg, control & !ENABLE, ENABLE)
    }

    /// Writes Control and checks that the bits of `checked` read back as written.
    fn write_control<C: ConfigAccess + ?Sized>(
        &self,
        cfg: &C,
        value: u16,
        checked: u16,
    ) -> Result<()> {
        cfg.write16(self.bdf, self.offset + CONTROL, value);
        let (_, read) = self.registers(cfg)?;
        if (read ^ value) & checked != 0 {
            return Err(Error::SettingNotTaken {
                bdf: self.bdf,
                what: "ATS Control",
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
    use crate::sim::pci::{Capability, Function, SrIov, Topology};

    const PF: u8 = 0;

    /// A PF at 00:00.0 with ATS and two VFs with ATS at 00:00.1 and 00:00.2 (VF Enable set).
    fn pf_with_vfs() -> (Topology, Ats, Ats, Ats) {
        let t = Topology::builder()
            .device(
                PF,
                0,
                Function::endpoint(0x8086, 0x1572, 0x02_0000).name("pf").ats(4, true).sriov(
                    SrIov::new(2)
                        .offset_stride(1, 1)
                        .settle_reads(0)
                        .vf_cap(Capability::ats(0, false)),
                ),
            )
            .build();
        let pf_bdf = Bdf::new(0, 0, PF, 0).unwrap();
        let sriov = caps::find_extended(&t, pf_bdf, id::SRIOV).unwrap().unwrap();
        t.write16(pf_bdf, sriov + 0x10, 2); // NumVFs
        t.write16(pf_bdf, sriov + 0x08, 1); // VF Enable
        let find = |func| Ats::find(&t, Bdf::new(0, 0, PF, func).unwrap()).unwrap().unwrap();
        let (pf, vf1, vf2) = (find(0), find(1), find(2));
        (t, pf, vf1, vf2)
    }

    #[test]
    fn capability_decodes() {
        let (t, pf, vf, _) = pf_with_vfs();
        assert_eq!(
            pf.capability(&t),
            Ok(AtsCapability {
                invalidate_queue_depth: 4,
                page_aligned_request: true,
                global_invalidate: false
            })
        );
        assert_eq!(vf.capability(&t).unwrap().invalidate_queue_depth, 32);
    }

    #[test]
    fn pf_enable_disable_round_trip() {
        let (t, pf, _, _) = pf_with_vfs();
        assert_eq!(pf.control(&t), Ok(AtsControl { enabled: false, stu: 0 }));
        pf.enable_pf(&t, 9, 0).unwrap();
        assert_eq!(pf.control(&t), Ok(AtsControl { enabled: true, stu: 9 }));
        assert_eq!(
            pf.enable_pf(&t, 9, 0),
            Err(Error::NotWhileEnabled { bdf: pf.bdf(), what: "ATS Control.Enable" })
        );
        pf.disable(&t).unwrap();
        assert_eq!(pf.control(&t), Ok(AtsControl { enabled: false, stu: 9 }));
        pf.disable(&t).unwrap();
        assert!(matches!(pf.enable_pf(&t, 32, 0), Err(Error::InvalidField { value: 32, .. })));
    }

    #[test]
    fn vfs_share_the_pf_stu() {
        let (t, pf, vf1, vf2) = pf_with_vfs();
        // The PF still has the reset STU 0: a VF asking for 2 MiB units is refused.
        assert_eq!(
            vf1.enable_vf(&t, &pf, 9),
            Err(Error::AtsStuMismatch { bdf: vf1.bdf(), programmed: 0, requested: 9 })
        );
        pf.enable_pf(&t, 9, 0).unwrap();
        vf1.enable_vf(&t, &pf, 9).unwrap();
        assert_eq!(vf1.control(&t), Ok(AtsControl { enabled: true, stu: 0 }), "a VF's STU reads 0");
        // The PF's STU is pinned while a VF uses ATS, even with the PF's own ATS off.
        pf.disable(&t).unwrap();
        assert_eq!(
            pf.enable_pf(&t, 0, 1),
            Err(Error::AtsStuMismatch { bdf: pf.bdf(), programmed: 9, requested: 0 })
        );
        pf.enable_pf(&t, 9, 1).unwrap();
        vf2.enable_vf(&t, &pf, 9).unwrap();
        assert_eq!(
            vf2.enable_vf(&t, &pf, 9),
            Err(Error::NotWhileEnabled { bdf: vf2.bdf(), what: "ATS Control.Enable" })
        );
        vf1.disable(&t).unwrap();
        vf2.disable(&t).unwrap();
        pf.disable(&t).unwrap();
        // No VF left with ATS: the STU may change.
        pf.enable_pf(&t, 0, 0).unwrap();
        assert_eq!(pf.control(&t), Ok(AtsControl { enabled: true, stu: 0 }));
    }

    #[test]
    fn a_device_that_ignores_the_enable() {
        // ATS whose registers are read-only: Enable never sticks.
        let t = Topology::builder()
            .device(
                1,
                0,
                Function::endpoint(0x8086, 0x1234, 0x02_0000).cap(Capability::RawExtended {
                    id: id::ATS,
                    version: 1,
                    body: std::vec![0x20, 0, 0, 0],
                }),
            )
            .build();
        let ats = Ats::find(&t, Bdf::new(0, 0, 1, 0).unwrap()).unwrap().unwrap();
        assert_eq!(
            ats.enable_pf(&t, 3, 0),
            Err(Error::SettingNotTaken {
                bdf: ats.bdf(),
                what: "ATS Control",
                wrote: 0x8003,
                read: 0
            })
        );
    }

    #[test]
    fn vanished_function() {
        let (t, pf, _, _) = pf_with_vfs();
        t.set_present(t.find("pf").unwrap(), false);
        assert_eq!(pf.enable_pf(&t, 0, 0), Err(Error::FunctionVanished { bdf: pf.bdf() }));
    }
}
