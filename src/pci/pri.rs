//! Page Request Interface (PCIe Base 6.0 §10.5.2; the protocol in §10.4): the capability with
//! which a function asks the IOMMU to make pages resident, in page request groups it expects
//! answered.
//!
//! This is the register driver. VFs have no PRI capability: a VF's page requests go out
//! through its PF's interface, with the PF's allocation and the PF's Stopped and error state
//! (§9.3.7), so there is no per-VF driver; whoever shares the PF's PRI between the PF and its VFs
//! (counting users, dividing the allocation) does it above a single [`Pri`] of the PF.
//!
//! The register rules it keeps (§10.5.2.2-5):
//! - Outstanding Page Request Allocation is written only while Enable is clear, and never above
//!   Outstanding Page Request Capacity.
//! - Enable is set only when Stopped says no request of an earlier enable is still outstanding
//!   and no Response Failure or UPRGI is left over (with Response Failure set the function makes
//!   no requests, so enabling would look like success and do nothing).
//! - Reset is written only with Enable clear (with Enable set it has no effect).
//! - Stopped means something only while Enable is clear; [`Pri::status`] reports it clear while
//!   enabled.

use core::time::Duration;

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::hal::{self, Platform};
use crate::pci::caps::{self, id, read32_present};
use crate::pci::config::ConfigAccess;

/// Control (16 bits at 0x04), Status (16 bits at 0x06), Outstanding Page Request Capacity
/// (0x08), Outstanding Page Request Allocation (0x0c).
const CONTROL: u16 = 0x04;
const STATUS: u16 = 0x06;
const CAPACITY: u16 = 0x08;
const ALLOCATION: u16 = 0x0c;
/// Control bits.
const ENABLE: u16 = 1 << 0;
const RESET: u16 = 1 << 1;
/// Status bits: Response Failure and Unexpected Page Request Group Index are RW1C, Stopped and
/// PRG Response PASID Required read-only.
const RESPONSE_FAILURE: u16 = 1 << 0;
const UPRGI: u16 = 1 << 1;
const STOPPED: u16 = 1 << 8;
const PRG_RESPONSE_PASID_REQUIRED: u16 = 1 << 15;
const ERRORS: u16 = RESPONSE_FAILURE | UPRGI;

/// A suggested bound for [`Pri::disable`]'s wait for Stopped.
///
/// The spec sets no time: Stopped comes once every page request the function issued has been
/// answered, which is up to the IOMMU side. The caller is expected to have answered (or
/// drained) every outstanding group of this function before disabling, so what is left is the
/// response messages' flight and the function's own bookkeeping, microseconds. 100 ms is the
/// budget PCIe gives a function to become ready after a reset (§6.6.1), used here as a bound
/// generous enough for slow devices and short enough not to stall a detach path for long.
pub const STOP_TIMEOUT: Duration = Duration::from_millis(100);

/// The PRI Status register, decoded (§10.5.2.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PriStatus {
    /// Response Failure: a PRG Response with Response Failure arrived; the function makes no
    /// more requests until this is cleared.
    pub response_failure: bool,
    /// Unexpected Page Request Group Index: a response named a group the function did not have
    /// outstanding.
    pub unexpected_prg_index: bool,
    /// Stopped: with Enable clear, every issued request has completed. Reported clear while
    /// Enable is set (the bit is undefined then).
    pub stopped: bool,
    /// PRG Response PASID Required: responses to requests that carried a PASID must carry it.
    pub prg_response_pasid_required: bool,
}

impl PriStatus {
    /// Decodes Status, given whether Enable is set.
    pub const fn from_bits(status: u16, enabled: bool) -> Self {
        Self {
            response_failure: status & RESPONSE_FAILURE != 0,
            unexpected_prg_index: status & UPRGI != 0,
            stopped: !enabled && status & STOPPED != 0,
            prg_response_pasid_required: status & PRG_RESPONSE_PASID_REQUIRED != 0,
        }
    }
}

/// The PRI capability of one function (a PF, or a function without SR-IOV).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pri {
    bdf: Bdf,
    offset: u16,
}

impl Pri {
    /// Finds `bdf`'s PRI capability (`None` if it has none, as every VF).
    pub fn find<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Result<Option<Self>> {
        Ok(caps::find_extended(cfg, bdf, id::PRI)?.map(|offset| Self { bdf, offset }))
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

    /// Control (low half) and Status (high half) in one read.
    fn control_status<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<(u16, u16)> {
        caps::read_halves(cfg, self.bdf, self.offset + CONTROL)
    }

    /// Whether Enable is set.
    pub fn is_enabled<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<bool> {
        Ok(self.control_status(cfg)?.0 & ENABLE != 0)
    }

    /// The Status register, decoded.
    pub fn status<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<PriStatus> {
        let (control, status) = self.control_status(cfg)?;
        Ok(PriStatus::from_bits(status, control & ENABLE != 0))
    }

    /// Outstanding Page Request Capacity: the most requests the function can have outstanding.
    pub fn capacity<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<u32> {
        read32_present(cfg, self.bdf, self.offset + CAPACITY)
    }

    /// Outstanding Page Request Allocation: the most requests it is allowed to have outstanding.
    pub fn allocation<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<u32> {
        read32_present(cfg, self.bdf, self.offset + ALLOCATION)
    }

    /// Writes Outstanding Page Request Allocation `allocation` and sets Enable.
    ///
    /// Refused, changing nothing: PRI already enabled ([`Error::NotWhileEnabled`]); Stopped
    /// clear, so requests of an earlier enable are outstanding ([`Error::PriNotStopped`]:
    /// answer them, or [`reset`](Self::reset)); a Response Failure or UPRGI left set
    /// ([`Error::Hardware`] with the status: [`clear_errors`](Self::clear_errors) first);
    /// `allocation` above the capacity ([`Error::PriAllocationExceedsCapacity`]). A register
    /// that does not read back as written is [`Error::SettingNotTaken`].
    pub fn enable<C: ConfigAccess + ?Sized>(&self, cfg: &C, allocation: u32) -> Result<()> {
        let (control, status) = self.control_status(cfg)?;
        if control & ENABLE != 0 {
            return Err(Error::NotWhileEnabled { bdf: self.bdf, what: "PRI Control.Enable" });
        }
        if status & STOPPED == 0 {
            return Err(Error::PriNotStopped { bdf: self.bdf, status });
        }
        if status & ERRORS != 0 {
            return Err(Error::Hardware {
                what: "PRI Status (Response Failure or UPRGI set)",
                value: u64::from(status),
            });
        }
        let capacity = self.capacity(cfg)?;
        if allocation > capacity {
            return Err(Error::PriAllocationExceedsCapacity {
                bdf: self.bdf,
                allocation,
                capacity,
            });
        }
        cfg.write32(self.bdf, self.offset + ALLOCATION, allocation);
        let read = self.allocation(cfg)?;
        if read != allocation {
            return Err(Error::SettingNotTaken {
                bdf: self.bdf,
                what: "PRI Outstanding Page Request Allocation",
                wrote: allocation,
                read,
            });
        }
        // Bits 15:2 are RsvdP; Reset is written 0.
        let wanted = (control & !(ENABLE | RESET)) | ENABLE;
        self.write_control(cfg, wanted)
    }

    /// Clears Enable, then waits (bounded by `timeout`, see [`STOP_TIMEOUT`]) for Stopped: every
    /// page request the function issued has been answered.
    ///
    /// Enable that does not clear is [`Error::SettingNotTaken`]; Stopped not coming in time is
    /// [`Error::Timeout`], with Enable left clear (the function makes no new requests; the
    /// caller answers what is outstanding, or [`reset`](Self::reset)s the interface).
    pub fn disable<C, P>(&self, cfg: &C, platform: &P, timeout: Duration) -> Result<()>
    where
        C: ConfigAccess + ?Sized,
        P: Platform + ?Sized,
    {
        let (control, _) = self.control_status(cfg)?;
        if control & ENABLE != 0 {
            self.write_control(cfg, control & !(ENABLE | RESET))?;
        }
        hal::poll(platform, "PRI Status.Stopped", timeout, || match self.control_status(cfg) {
            Ok((_, status)) if status & STOPPED != 0 => Some(Ok(())),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })?
    }

    /// Writes Reset (with Enable clear): the function forgets its outstanding requests and
    /// credits, and will not expect responses to them (§10.5.2.2). Only while disabled
    /// ([`Error::NotWhileEnabled`]); Reset always reads 0, so there is nothing to read back.
    pub fn reset<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<()> {
        let (control, _) = self.control_status(cfg)?;
        if control & ENABLE != 0 {
            return Err(Error::NotWhileEnabled { bdf: self.bdf, what: "PRI Control.Enable" });
        }
        cfg.write16(self.bdf, self.offset + CONTROL, (control & !ENABLE) | RESET);
        Ok(())
    }

    /// Clears Response Failure and UPRGI (RW1C: only the bits found set are written, so one
    /// set in between is kept for the next look) and returns the status read afterwards, in
    /// which a device that ignored the write still shows them.
    pub fn clear_errors<C: ConfigAccess + ?Sized>(&self, cfg: &C) -> Result<PriStatus> {
        let (_, status) = self.control_status(cfg)?;
        if status & ERRORS != 0 {
            // A 16-bit write: the Control half must not be rewritten.
            cfg.write16(self.bdf, self.offset + STATUS, status & ERRORS);
        }
        self.status(cfg)
    }

    fn write_control<C: ConfigAccess + ?Sized>(&self, cfg: &C, value: u16) -> Result<()> {
        cfg.write16(self.bdf, self.offset + CONTROL, value);
        let (read, _) = self.control_status(cfg)?;
        if (read ^ value) & ENABLE != 0 {
            return Err(Error::SettingNotTaken {
                bdf: self.bdf,
                what: "PRI Control.Enable",
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
    use crate::hal::testing::TestClock;
    use crate::sim::pci::{Capability, FnId, Function, Topology};
    use core::cell::Cell;

    /// A clock advancing 1 us per read, with `relax` run between polls.
    fn clock(relax: &dyn Fn()) -> TestClock<'_> {
        TestClock::with_relax(1000, relax)
    }

    fn bdf() -> Bdf {
        Bdf::new(0, 0, 1, 0).unwrap()
    }

    fn device(capacity: u32) -> (Topology, FnId, Pri) {
        let t = Topology::builder()
            .device(1, 0, Function::endpoint(0x8086, 0x0b25, 0x08_8000).name("dev").pri(capacity))
            .build();
        let id = t.find("dev").unwrap();
        let pri = Pri::find(&t, bdf()).unwrap().unwrap();
        (t, id, pri)
    }

    #[test]
    fn enable_disable_round_trip() {
        let (t, id, pri) = device(512);
        assert_eq!(pri.capacity(&t), Ok(512));
        assert_eq!(pri.status(&t).unwrap(), PriStatus { stopped: true, ..Default::default() });
        pri.enable(&t, 64).unwrap();
        assert_eq!((pri.is_enabled(&t), pri.allocation(&t)), (Ok(true), Ok(64)));
        assert!(!pri.status(&t).unwrap().stopped, "Stopped is not reported while enabled");
        assert_eq!(t.pri_issue(id, 100), 64, "the device keeps to its allocation");
        // Disable waits until the outstanding requests are answered.
        let answered = Cell::new(0);
        let answer = || {
            if answered.get() < 64 {
                t.pri_complete(id, 8);
                answered.set(answered.get() + 8);
            }
        };
        pri.disable(&t, &clock(&answer), STOP_TIMEOUT).unwrap();
        assert_eq!(answered.get(), 64);
        assert_eq!(pri.is_enabled(&t), Ok(false));
        assert!(pri.status(&t).unwrap().stopped);
        // Disabling again is a no-op.
        pri.disable(&t, &clock(&|| {}), STOP_TIMEOUT).unwrap();
        pri.enable(&t, 512).unwrap();
    }

    #[test]
    fn refusals() {
        let (t, id, pri) = device(32);
        assert_eq!(
            pri.enable(&t, 33),
            Err(Error::PriAllocationExceedsCapacity { bdf: bdf(), allocation: 33, capacity: 32 })
        );
        assert_eq!(pri.allocation(&t), Ok(0), "nothing written");
        pri.enable(&t, 32).unwrap();
        let enabled = Err(Error::NotWhileEnabled { bdf: bdf(), what: "PRI Control.Enable" });
        assert_eq!(pri.enable(&t, 16), enabled);
        assert_eq!(pri.reset(&t), enabled);
        assert_eq!(pri.allocation(&t), Ok(32));
        // Disabled with requests outstanding: not stopped, so no re-enable until answered.
        t.pri_issue(id, 4);
        assert!(matches!(
            pri.disable(&t, &clock(&|| {}), Duration::from_micros(50)),
            Err(Error::Timeout { what: "PRI Status.Stopped", .. })
        ));
        assert_eq!(pri.is_enabled(&t), Ok(false));
        assert!(
            matches!(pri.enable(&t, 32), Err(Error::PriNotStopped { status, .. }) if status & STOPPED == 0)
        );
        // Reset drops them.
        pri.reset(&t).unwrap();
        assert_eq!(t.pri_outstanding(id), 0);
        assert!(pri.status(&t).unwrap().stopped);
        pri.enable(&t, 32).unwrap();
    }

    #[test]
    fn errors_are_reported_and_cleared() {
        let (t, id, pri) = device(32);
        pri.enable(&t, 8).unwrap();
        t.pri_issue(id, 2);
        t.pri_unexpected_response(id);
        t.pri_response_failure(id);
        let status = pri.status(&t).unwrap();
        assert!(status.response_failure && status.unexpected_prg_index);
        assert_eq!(t.pri_issue(id, 1), 0, "silent after a Response Failure");
        pri.disable(&t, &clock(&|| {}), STOP_TIMEOUT).unwrap();
        assert!(matches!(pri.enable(&t, 8), Err(Error::Hardware { value, .. }) if value & 3 == 3));
        assert_eq!(pri.clear_errors(&t), Ok(PriStatus { stopped: true, ..Default::default() }));
        pri.enable(&t, 8).unwrap();
        assert_eq!(t.pri_issue(id, 1), 1);
    }

    #[test]
    fn a_device_that_ignores_the_writes() {
        // Read-only PRI: Stopped set, capacity 16; neither allocation nor Enable stick.
        let mut body = std::vec![0, 0, 0x00, 0x01];
        body.extend_from_slice(&16u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        let t = Topology::builder()
            .device(
                1,
                0,
                Function::endpoint(0x8086, 0x1234, 0x02_0000).cap(Capability::RawExtended {
                    id: id::PRI,
                    version: 1,
                    body,
                }),
            )
            .build();
        let pri = Pri::find(&t, bdf()).unwrap().unwrap();
        assert_eq!(
            pri.enable(&t, 8),
            Err(Error::SettingNotTaken {
                bdf: bdf(),
                what: "PRI Outstanding Page Request Allocation",
                wrote: 8,
                read: 0
            })
        );
        assert_eq!(
            pri.enable(&t, 0),
            Err(Error::SettingNotTaken {
                bdf: bdf(),
                what: "PRI Control.Enable",
                wrote: 1,
                read: 0
            })
        );
    }

    #[test]
    fn enable_and_errors_that_do_not_clear() {
        use crate::pci::caps::fake::FakeConfig;
        let f = FakeConfig::new();
        f.cap_list(0x40);
        f.legacy_cap(0x40, id::PCIE, 0);
        f.extended_cap(0x100, id::PRI, 0);
        // Enable set and stuck; Response Failure set and not clearable.
        f.set32(0x104, 1 | u32::from(RESPONSE_FAILURE) << 16);
        f.read_only32(0x104, 1 | u32::from(RESPONSE_FAILURE) << 16);
        let pri = Pri::find(&f, f.bdf).unwrap().unwrap();
        assert_eq!(
            pri.disable(&f, &clock(&|| {}), STOP_TIMEOUT),
            Err(Error::SettingNotTaken {
                bdf: f.bdf,
                what: "PRI Control.Enable",
                wrote: 0,
                read: 1
            })
        );
        assert!(pri.clear_errors(&f).unwrap().response_failure);
        // A well-behaved RW1C bit: only the bits found set are written.
        let f2 = FakeConfig::new();
        f2.cap_list(0x40);
        f2.legacy_cap(0x40, id::PCIE, 0);
        f2.extended_cap(0x100, id::PRI, 0);
        f2.set32(0x104, u32::from(UPRGI | STOPPED) << 16);
        f2.rw1c32(0x104, u32::from(ERRORS) << 16);
        f2.read_only32(0x104, u32::from(STOPPED) << 16);
        let pri = Pri::find(&f2, f2.bdf).unwrap().unwrap();
        assert_eq!(pri.clear_errors(&f2), Ok(PriStatus { stopped: true, ..Default::default() }));
    }

    #[test]
    fn vanished_function_during_the_wait() {
        let (t, id, pri) = device(32);
        pri.enable(&t, 8).unwrap();
        t.pri_issue(id, 1);
        let vanish = || t.set_present(id, false);
        assert_eq!(
            pri.disable(&t, &clock(&vanish), STOP_TIMEOUT),
            Err(Error::FunctionVanished { bdf: bdf() })
        );
    }

    #[test]
    fn vfs_have_no_pri() {
        let t = Topology::builder()
            .device(
                1,
                0,
                Function::endpoint(0x8086, 0x1572, 0x02_0000)
                    .pri(64)
                    .sriov(crate::sim::pci::SrIov::new(1).offset_stride(1, 1).settle_reads(0)),
            )
            .build();
        let pf = bdf();
        let sriov = caps::find_extended(&t, pf, id::SRIOV).unwrap().unwrap();
        t.write16(pf, sriov + 0x10, 1);
        t.write16(pf, sriov + 0x08, 1);
        let vf = Bdf::new(0, 0, 1, 1).unwrap();
        // A VF's Vendor ID reads 0xffff (§9.3.4); its PCI Express capability shows it answers.
        assert!(crate::pci::pcie::Pcie::find(&t, vf).unwrap().is_some(), "the VF answers");
        assert_eq!(Pri::find(&t, vf), Ok(None));
        assert!(Pri::find(&t, pf).unwrap().is_some());
    }
}
