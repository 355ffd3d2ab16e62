//! PRI and PASID shared by a PF and its VFs, and the PRI credit budget of each IOMMU.
//!
//! VFs have no PRI and no PASID capability: their page requests go out through the PF's PRI,
//! under the PF's Outstanding Page Request Allocation, Stopped and error state, and their
//! PASID-tagged requests are governed by the PF's PASID Control (PCIe Base 6.0 §9.3.7.11,
//! §9.3.7.14). So page requests for any function are enabled on its PF, and the PF's
//! capabilities are shared by several *users*: the PF itself and each VF that wants page
//! requests. [`PriShare`] keeps that count:
//!
//! - the first user, whoever it is (PF or VF: the order does not matter), reserves the PF's
//!   allocation from its IOMMU's budget and enables PASID (if asked for) and PRI on the PF;
//! - later users join without touching the hardware (beyond one read checking that PRI is still
//!   on);
//! - the last user to leave disables PRI (waiting, bounded, for Stopped) and PASID, and gives the
//!   allocation back to the budget;
//! - while any user remains the PF's configuration is *pinned*: a user asking for PASID features
//!   the PF was not enabled with is refused ([`Error::PriPinned`]), and code that would change
//!   the PF's PRI or PASID by another route (an FLR of the PF, a PF driver's own use) asks
//!   [`PriShare::ensure_unpinned`] first.
//!
//! # The credit budget
//!
//! A page request queue that overflows loses requests; the functions that issued them wait for
//! answers that never come. The allocations given to all PRI functions under one IOMMU therefore
//! sum to no more than that IOMMU's queue capacity ([`PriShare::add_iommu`]), so with
//! conforming devices the queue cannot overflow. The policy, per PF ([`PfPolicy`]): every user
//! gets the same fixed `share` of outstanding requests, and the PF is programmed once, at its
//! first user, with `share * users` where `users` is the number of users it may ever have (the
//! PF plus the VFs that may be assigned). Fixed, because the allocation can only be written
//! while PRI is disabled (§10.5.2.5): growing it for each new VF would mean stopping page
//! requests for every sibling. The budget is reserved while the PF has users, and until its PRI
//! is seen stopped after the last one left (requests still outstanding may still arrive).
//! [`PriShare::budget`] reports it.
//!
//! # Failure containment
//!
//! A Response Failure stops PRI for the PF and every sibling (§10.4.2.1), so it is never sent
//! for a VF's request: [`PrgResponseCode::contained`] turns it into Invalid Request. When the
//! PF's PRI has to be reset, [`PriShare::reset_pri`] does it as one step that first has every
//! outstanding group of every user answered.
//!
//! # Exclusion
//!
//! [`PriShare`] takes `&mut self` for every change: the count and the hardware change together,
//! and the borrow checker proves nobody else is in between. A hypervisor with several CPUs puts
//! it behind its own lock and implements [`PriLock`] for that lock: the library has no
//! scheduler and no interrupt masking of its own, so it does not spin on a lock it cannot know
//! how to wait for, and needs no `unsafe`. The config accesses happen with the lock held, so
//! "PRI enabled on the PF" equals "the PF has users" at every point another CPU can see.

use core::time::Duration;

use heapless::Vec;

use crate::addr::Bdf;
use crate::error::{Error, Result};
use crate::hal::Platform;
use crate::pci::config::ConfigAccess;
use crate::pci::pasid::{Pasid, PasidFeatures};
use crate::pci::pri::Pri;
/// A sound bound for [`PriShare::disable`]'s wait for Stopped (the register driver's).
pub use crate::pci::pri::STOP_TIMEOUT;
use crate::pci::topology::{FunctionIndex, Topology};

/// Identifies one IOMMU (one page request queue), as the caller numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IommuId(pub u32);

/// One IOMMU's PRI credit budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PriBudget {
    /// The IOMMU.
    pub iommu: IommuId,
    /// Entries of its page request queue.
    pub capacity: u32,
    /// Allocations reserved by its PFs.
    pub used: u32,
}

impl PriBudget {
    /// What is left.
    pub const fn available(&self) -> u32 {
        self.capacity.saturating_sub(self.used)
    }
}

/// How a PF's PRI is shared (see the [module docs](self#the-credit-budget)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PfPolicy {
    /// The IOMMU whose page request queue receives this PF's (and its VFs') requests.
    pub iommu: IommuId,
    /// Outstanding page requests each user may have: a VF's virtual PRI capacity.
    pub share: u32,
    /// Most users at once (the PF and the VFs that may be assigned); the PF's allocation is
    /// `share * users`.
    pub users: u16,
}

impl PfPolicy {
    /// The PF's Outstanding Page Request Allocation under this policy.
    pub fn allocation(&self) -> Result<u32> {
        match self.share.checked_mul(u32::from(self.users)) {
            Some(a) if a > 0 => Ok(a),
            _ => Err(Error::InvalidField {
                what: "PRI share policy (share * users)",
                value: u64::from(self.share) * u64::from(self.users),
            }),
        }
    }
}

/// A function asking for page requests: a PF (or a function without SR-IOV) or a VF with its
/// PF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PriUser {
    /// The function.
    pub bdf: Bdf,
    /// Its PF, if it is a VF.
    pub pf: Option<Bdf>,
}

impl PriUser {
    /// A PF, or a function without SR-IOV: its own PRI.
    pub const fn physical(bdf: Bdf) -> Self {
        Self { bdf, pf: None }
    }
    /// VF `vf` of `pf`.
    pub const fn virtual_function(vf: Bdf, pf: Bdf) -> Self {
        Self { bdf: vf, pf: Some(pf) }
    }
    /// The user for function `index` of an enumerated topology: a VF (with
    /// [`physical_function`](crate::pci::topology::Function::physical_function) set by SR-IOV
    /// enumeration) with its PF, any other function as itself. `None` for an index not in the
    /// snapshot.
    pub fn of<const N: usize>(topology: &Topology<N>, index: FunctionIndex) -> Option<Self> {
        let f = topology.get(index)?;
        match f.physical_function {
            Some(pf) => Some(Self::virtual_function(f.bdf(), topology.get(pf)?.bdf())),
            None => Some(Self::physical(f.bdf())),
        }
    }

    /// The PF owning the PRI capability this user shares.
    pub const fn owner(&self) -> Bdf {
        match self.pf {
            Some(pf) => pf,
            None => self.bdf,
        }
    }
    /// Whether it is a VF.
    pub const fn is_vf(&self) -> bool {
        self.pf.is_some()
    }
}

/// What a user got from [`PriShare::enable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Grant {
    /// The PF whose PRI carries the user's page requests.
    pub pf: Bdf,
    /// Outstanding page requests this user may have (its share of the PF's allocation).
    pub share: u32,
    /// The PF's PRG Response PASID Required: responses to requests with a PASID carry it.
    pub prg_response_pasid_required: bool,
    /// The PASID features enabled on the PF (`None`: PASID not enabled).
    pub pasid: Option<PasidFeatures>,
}

/// PRG Response codes (PCIe Base 6.0 §10.4.2.1, Table 10-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum PrgResponseCode {
    /// 0000b: every page of the group is resident.
    Success = 0b0000,
    /// 0001b: a page could not be made resident; the function carries on.
    InvalidRequest = 0b0001,
    /// 1111b: a catastrophic error; the function stops all page requests (sets Response
    /// Failure) until software clears it.
    ResponseFailure = 0b1111,
}

impl PrgResponseCode {
    /// The code to send for `user`'s group: Response Failure would stop PRI for the PF and
    /// every sibling VF (the Response Failure bit is the PF's), so a VF gets Invalid Request
    /// instead; a PF (whose failure stops only what it owns) gets the code as given.
    pub const fn contained(self, user: &PriUser) -> Self {
        match (self, user.is_vf()) {
            (Self::ResponseFailure, true) => Self::InvalidRequest,
            (code, _) => code,
        }
    }
}

/// Exclusion for a [`PriShare`] reached from several CPUs: the hypervisor implements it for its
/// own lock (a ticket lock with interrupts masked, a mutex of its scheduler) and calls the
/// manager inside [`with`](Self::with).
pub trait PriLock<T> {
    /// Runs `f` with exclusive access to the value.
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R;
}

#[derive(Clone, Debug)]
struct PfEntry<const USERS: usize> {
    pf: Bdf,
    policy: PfPolicy,
    /// The policy's allocation (checked against the capacity when added).
    allocation: u32,
    pri: Pri,
    pasid: Option<Pasid>,
    prg_response_pasid_required: bool,
    users: Vec<Bdf, USERS>,
    /// PASID features enabled on the PF by this manager.
    pasid_on: Option<PasidFeatures>,
    /// Allocation held in the IOMMU's budget: from the first user until PRI is seen stopped
    /// after the last.
    reserved: u32,
}

/// The PF-shared PRI/PASID manager and the per-IOMMU credit budget; see the
/// [module docs](self). Holds up to `PFS` PFs with up to `USERS` users each, under up to
/// `IOMMUS` IOMMUs, with no heap.
#[derive(Clone, Debug)]
pub struct PriShare<const PFS: usize, const USERS: usize, const IOMMUS: usize> {
    pfs: Vec<PfEntry<USERS>, PFS>,
    budgets: Vec<PriBudget, IOMMUS>,
}

impl<const PFS: usize, const USERS: usize, const IOMMUS: usize> Default
    for PriShare<PFS, USERS, IOMMUS>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<const PFS: usize, const USERS: usize, const IOMMUS: usize> PriShare<PFS, USERS, IOMMUS> {
    /// No IOMMU, no PF.
    pub const fn new() -> Self {
        Self { pfs: Vec::new(), budgets: Vec::new() }
    }

    /// Adds an IOMMU whose page request queue holds `queue_capacity` requests. Added twice is
    /// [`Error::InvalidField`] with the id.
    pub fn add_iommu(&mut self, iommu: IommuId, queue_capacity: u32) -> Result<()> {
        if self.budgets.iter().any(|b| b.iommu == iommu) {
            return Err(Error::InvalidField {
                what: "PRI budget: IOMMU added twice",
                value: u64::from(iommu.0),
            });
        }
        self.budgets
            .push(PriBudget { iommu, capacity: queue_capacity, used: 0 })
            .map_err(|_| Error::CapacityExceeded { what: "PRI budget: IOMMUs", capacity: IOMMUS })
    }

    /// The budget of `iommu`.
    pub fn budget(&self, iommu: IommuId) -> Option<PriBudget> {
        self.budgets.iter().find(|b| b.iommu == iommu).copied()
    }

    /// Every IOMMU's budget.
    pub fn budgets(&self) -> &[PriBudget] {
        &self.budgets
    }

    /// Adds PF `pf` to be shared under `policy`: finds its PRI and PASID capabilities (one
    /// walk each) and checks the policy's allocation against the PF's Outstanding Page Request
    /// Capacity. Reserves nothing yet.
    ///
    /// Refused: no PRI capability ([`Error::PriUnavailable`] with `pf`: QEMU's igb, for one);
    /// a policy with more users than `USERS` ([`Error::CapacityExceeded`]);
    /// PRI already enabled by someone else ([`Error::NotWhileEnabled`]: this manager must own
    /// it); the allocation above the capacity ([`Error::PriAllocationExceedsCapacity`]); an
    /// IOMMU not added ([`Error::NotFound`]); `pf` already added ([`Error::PriPinned`] if it has
    /// users, else it is re-read under the new policy).
    pub fn add_pf<C: ConfigAccess + ?Sized>(
        &mut self,
        cfg: &C,
        pf: Bdf,
        policy: PfPolicy,
    ) -> Result<()> {
        if self.budget(policy.iommu).is_none() {
            return Err(Error::NotFound { what: "PRI budget: IOMMU of the PF's policy" });
        }
        let allocation = policy.allocation()?;
        // Every user the policy allows must fit the fixed table, so that a user is never
        // refused after the hardware was changed for it.
        if usize::from(policy.users) > USERS {
            return Err(Error::CapacityExceeded {
                what: "PRI share: users of one PF",
                capacity: USERS,
            });
        }
        if let Some(i) = self.index(pf) {
            let (users, reserved) = self.pfs.get(i).map_or((0, 0), |e| (e.users.len(), e.reserved));
            if users > 0 {
                return Err(Error::PriPinned { pf, users: count(users), what: "PRI share policy" });
            }
            // The last user left but PRI did not stop: requests may still land in the queue
            // under the old allocation, so neither the budget nor the policy may change yet.
            if reserved > 0 {
                return Err(Error::PriPinned {
                    pf,
                    users: 0,
                    what: "PRI share policy (PRI not yet stopped)",
                });
            }
            self.pfs.swap_remove(i);
        }
        let pri = Pri::find(cfg, pf)?.ok_or(Error::PriUnavailable { pf })?;
        if pri.is_enabled(cfg)? {
            return Err(Error::NotWhileEnabled { bdf: pf, what: "PRI Control.Enable" });
        }
        let capacity = pri.capacity(cfg)?;
        if allocation > capacity {
            return Err(Error::PriAllocationExceedsCapacity { bdf: pf, allocation, capacity });
        }
        let status = pri.status(cfg)?;
        let pasid = Pasid::find(cfg, pf)?;
        let entry = PfEntry {
            pf,
            policy,
            allocation,
            pri,
            pasid,
            prg_response_pasid_required: status.prg_response_pasid_required,
            users: Vec::new(),
            pasid_on: None,
            reserved: 0,
        };
        self.pfs
            .push(entry)
            .map_err(|_| Error::CapacityExceeded { what: "PRI share: PFs", capacity: PFS })
    }

    /// Forgets `pf` (after its hot-removal, or to change its policy). Refused while it has
    /// users ([`Error::PriPinned`]). Gives back any allocation still reserved: the caller knows
    /// no request of the PF can still arrive (it is gone, or its PRI was reset).
    pub fn remove_pf(&mut self, pf: Bdf) -> Result<()> {
        let i = self.index(pf).ok_or(Error::NotFound { what: "PRI share: PF" })?;
        let (users, reserved, iommu) = self
            .pfs
            .get(i)
            .map_or((0, 0, IommuId(0)), |e| (e.users.len(), e.reserved, e.policy.iommu));
        if users > 0 {
            return Err(Error::PriPinned { pf, users: count(users), what: "PRI share" });
        }
        self.release(iommu, reserved);
        self.pfs.swap_remove(i);
        Ok(())
    }

    fn index(&self, pf: Bdf) -> Option<usize> {
        self.pfs.iter().position(|e| e.pf == pf)
    }

    fn budget_mut(&mut self, iommu: IommuId) -> Option<&mut PriBudget> {
        self.budgets.iter_mut().find(|b| b.iommu == iommu)
    }

    fn release(&mut self, iommu: IommuId, amount: u32) {
        if let Some(b) = self.budget_mut(iommu) {
            b.used = b.used.saturating_sub(amount);
        }
    }

    /// Users of `pf`'s PRI now (0 for a PF not added).
    pub fn users(&self, pf: Bdf) -> u16 {
        self.index(pf).and_then(|i| self.pfs.get(i)).map_or(0, |e| count(e.users.len()))
    }

    /// Whether `pf`'s PRI/PASID configuration is pinned (it has users).
    pub fn is_pinned(&self, pf: Bdf) -> bool {
        self.users(pf) > 0
    }

    /// For code about to change `pf`'s PRI or PASID by another route (an FLR or reset of the
    /// PF, SR-IOV reconfiguration, a PF driver's own use): [`Error::PriPinned`] while users
    /// hold it.
    pub fn ensure_unpinned(&self, pf: Bdf) -> Result<()> {
        match self.users(pf) {
            0 => Ok(()),
            users => Err(Error::PriPinned { pf, users, what: "PRI/PASID configuration" }),
        }
    }

    /// What `user` was granted, if it is a user.
    pub fn grant(&self, user: &PriUser) -> Option<Grant> {
        let e = self.pfs.iter().find(|e| e.pf == user.owner())?;
        e.users.contains(&user.bdf).then(|| Self::grant_of(e))
    }

    fn grant_of(e: &PfEntry<USERS>) -> Grant {
        Grant {
            pf: e.pf,
            share: e.policy.share,
            prg_response_pasid_required: e.prg_response_pasid_required,
            pasid: e.pasid_on,
        }
    }

    /// Makes `user` a user of its PF's PRI, with PASID and the `pasid` features if asked for.
    /// `vfs_with_ats` is how many of the PF's VFs have ATS enabled (PASID cannot be enabled
    /// under them, see [`Pasid::enable`]; enable page requests before ATS).
    ///
    /// The first user reserves the PF's allocation from its IOMMU's budget and enables PASID
    /// (if asked for) and PRI; a later user asking for PASID when it is off enables it then.
    /// Refused, with nothing changed: the PF has no PRI ([`Error::PriUnavailable`] with the
    /// PF's BDF) or was not [added](Self::add_pf) ([`Error::NotFound`]); PASID asked for and
    /// the PF has none ([`Error::FeatureUnsupported`]); PASID features beyond what the PF was
    /// enabled with while others use it ([`Error::PriPinned`]); the budget cannot hold the PF's
    /// allocation ([`Error::PriBudgetExceeded`] with the amounts); `user` already a user
    /// ([`Error::NotWhileEnabled`]); more users than the policy allows
    /// ([`Error::CapacityExceeded`]); and the drivers' own refusals.
    pub fn enable<C: ConfigAccess + ?Sized>(
        &mut self,
        cfg: &C,
        user: PriUser,
        pasid: Option<PasidFeatures>,
        vfs_with_ats: u16,
    ) -> Result<Grant> {
        let pf = user.owner();
        let Some(i) = self.index(pf) else {
            // Tell a PF without PRI (igb) from one nobody added.
            return Err(match Pri::find(cfg, pf)? {
                None => Error::PriUnavailable { pf },
                Some(_) => Error::NotFound { what: "PRI share: PF not added" },
            });
        };
        let (policy, reserved, first) = {
            let e = self.pfs.get(i).ok_or(Error::NotFound { what: "PRI share: PF" })?;
            if e.users.contains(&user.bdf) {
                return Err(Error::NotWhileEnabled {
                    bdf: user.bdf,
                    what: "page requests (already a user of the PF's PRI)",
                });
            }
            if e.users.len() >= usize::from(e.policy.users) || e.users.is_full() {
                return Err(Error::CapacityExceeded {
                    what: "PRI share: users of one PF (policy)",
                    capacity: usize::from(e.policy.users),
                });
            }
            if let Some(want) = pasid {
                let Some(_) = e.pasid else {
                    return Err(Error::FeatureUnsupported {
                        bdf: pf,
                        what: "PASID capability (absent on the PF)",
                        requested: features_bits(want) | 1,
                        supported: 0,
                    });
                };
                if let Some(on) = e.pasid_on
                    && !covers(on, want)
                {
                    return Err(Error::PriPinned {
                        pf,
                        users: count(e.users.len()),
                        what: "PASID Control (Execute/Privileged Mode Enable)",
                    });
                }
            }
            (e.policy, e.reserved, e.users.is_empty())
        };
        // Reserve the PF's allocation (unless still held from an earlier round whose PRI did
        // not stop in time).
        let reserve = if first && reserved == 0 { self.reserve(policy.iommu, policy)? } else { 0 };
        let result = self.enable_hw(cfg, i, pasid, vfs_with_ats, first);
        let e = self.pfs.get_mut(i).ok_or(Error::NotFound { what: "PRI share: PF" })?;
        match result {
            Ok(()) => {
                e.reserved += reserve;
                e.users.push(user.bdf).map_err(|_| Error::CapacityExceeded {
                    what: "PRI share: users of one PF",
                    capacity: USERS,
                })?;
                Ok(Self::grant_of(e))
            }
            Err(err) => {
                self.release(policy.iommu, reserve);
                Err(err)
            }
        }
    }

    fn reserve(&mut self, iommu: IommuId, policy: PfPolicy) -> Result<u32> {
        let requested = policy.allocation()?;
        let b = self
            .budget_mut(iommu)
            .ok_or(Error::NotFound { what: "PRI budget: IOMMU of the PF's policy" })?;
        let available = b.available();
        if requested > available {
            return Err(Error::PriBudgetExceeded { iommu: iommu.0, requested, available });
        }
        b.used += requested;
        Ok(requested)
    }

    /// The hardware side of [`enable`](Self::enable): undoes what it did if a later step fails.
    fn enable_hw<C: ConfigAccess + ?Sized>(
        &mut self,
        cfg: &C,
        i: usize,
        pasid: Option<PasidFeatures>,
        vfs_with_ats: u16,
        first: bool,
    ) -> Result<()> {
        let e = self.pfs.get_mut(i).ok_or(Error::NotFound { what: "PRI share: PF" })?;
        let mut enabled_pasid = false;
        if let (Some(want), None, Some(cap)) = (pasid, e.pasid_on, e.pasid) {
            cap.enable(cfg, want, vfs_with_ats)?;
            e.pasid_on = Some(want);
            enabled_pasid = true;
        }
        let pri_result = if first {
            e.pri.enable(cfg, e.allocation)
        } else if e.pri.is_enabled(cfg)? {
            Ok(())
        } else {
            // Someone (an FLR, a surprise reset) turned PRI off under its users.
            Err(Error::Hardware { what: "PRI Control.Enable cleared under its users", value: 0 })
        };
        if let Err(err) = pri_result {
            if let (true, Some(cap)) = (enabled_pasid, e.pasid) {
                // Best effort: the error that matters is the PRI one.
                let _ = cap.disable(cfg, vfs_with_ats);
                e.pasid_on = None;
            }
            return Err(err);
        }
        Ok(())
    }

    /// Ends `user`'s use of its PF's PRI. The last user disables PRI on the PF, waiting at most
    /// `timeout` ([`STOP_TIMEOUT`] is a sound default) for Stopped, then PASID, then
    /// gives the allocation back. The caller has answered `user`'s outstanding groups (and, for
    /// the last user, turned ATS off: `vfs_with_ats` as for [`enable`](Self::enable)).
    ///
    /// The user is removed whatever the hardware does. If Stopped does not come in time
    /// ([`Error::Timeout`]), PRI is left disabled and the allocation stays reserved until a
    /// later [`enable`](Self::enable) or [`reset_pri`](Self::reset_pri) sees it stopped, since
    /// requests still in flight can still land in the queue. Not a user:
    /// [`Error::NotFound`].
    pub fn disable<C, P>(
        &mut self,
        cfg: &C,
        platform: &P,
        user: PriUser,
        vfs_with_ats: u16,
        timeout: Duration,
    ) -> Result<()>
    where
        C: ConfigAccess + ?Sized,
        P: Platform + ?Sized,
    {
        let i = self.index(user.owner()).ok_or(Error::NotFound { what: "PRI share: PF" })?;
        let e = self.pfs.get_mut(i).ok_or(Error::NotFound { what: "PRI share: PF" })?;
        let at = e
            .users
            .iter()
            .position(|u| *u == user.bdf)
            .ok_or(Error::NotFound { what: "PRI share: not a user of the PF's PRI" })?;
        e.users.swap_remove(at);
        if !e.users.is_empty() {
            return Ok(());
        }
        let stopped = e.pri.disable(cfg, platform, timeout);
        // PASID stays recorded as on if it could not be turned off (ATS still on): the record
        // follows the hardware.
        let pasid_off = match (e.pasid_on, e.pasid) {
            (Some(_), Some(cap)) => cap.disable(cfg, vfs_with_ats).map(|()| e.pasid_on = None),
            _ => Ok(()),
        };
        if stopped.is_ok() {
            let (iommu, reserved) = (e.policy.iommu, core::mem::take(&mut e.reserved));
            self.release(iommu, reserved);
        }
        stopped.and(pasid_off)
    }

    /// Resets the PF's PRI as one coordinated step (after a Response Failure or UPRGI on the PF,
    /// or an overflow that lost requests): calls `answer_all(user)` for every current user
    /// first, which answers (never with Response Failure) every outstanding group of that user,
    /// then disables PRI (waiting up to `timeout` for Stopped; a device that does not stop is
    /// reset all the same), writes Reset, clears Response Failure and UPRGI, and, if users
    /// remain, re-enables PRI with the PF's allocation. Users and PASID are untouched.
    ///
    /// Errors of the register drivers are returned; Response Failure or UPRGI that do not clear
    /// is [`Error::Hardware`] with the status, with PRI left disabled.
    pub fn reset_pri<C, P>(
        &mut self,
        cfg: &C,
        platform: &P,
        pf: Bdf,
        timeout: Duration,
        mut answer_all: impl FnMut(Bdf),
    ) -> Result<()>
    where
        C: ConfigAccess + ?Sized,
        P: Platform + ?Sized,
    {
        let i = self.index(pf).ok_or(Error::NotFound { what: "PRI share: PF" })?;
        let e = self.pfs.get_mut(i).ok_or(Error::NotFound { what: "PRI share: PF" })?;
        for user in &e.users {
            answer_all(*user);
        }
        match e.pri.disable(cfg, platform, timeout) {
            Ok(()) | Err(Error::Timeout { .. }) => {}
            Err(err) => return Err(err),
        }
        e.pri.reset(cfg)?;
        let status = e.pri.clear_errors(cfg)?;
        if status.response_failure || status.unexpected_prg_index {
            return Err(Error::Hardware {
                what: "PRI Status (Response Failure or UPRGI did not clear)",
                value: u64::from(status.response_failure)
                    | u64::from(status.unexpected_prg_index) << 1,
            });
        }
        if e.users.is_empty() {
            let (iommu, reserved) = (e.policy.iommu, core::mem::take(&mut e.reserved));
            self.release(iommu, reserved);
            return Ok(());
        }
        e.pri.enable(cfg, e.allocation)
    }

    /// The current users of `pf`'s PRI (empty for a PF not added).
    pub fn users_of(&self, pf: Bdf) -> &[Bdf] {
        self.pfs.iter().find(|e| e.pf == pf).map_or(&[], |e| e.users.as_slice())
    }
}

fn count(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// PASID Control bits of `f` (Execute Permission Enable bit 1, Privileged Mode Enable bit 2;
/// PCIe Base 6.0 §7.8.9.3).
fn features_bits(f: PasidFeatures) -> u32 {
    u32::from(f.execute) << 1 | u32::from(f.privileged) << 2
}

/// Whether features `on` include everything `want` asks for.
fn covers(on: PasidFeatures, want: PasidFeatures) -> bool {
    (!want.execute || on.execute) && (!want.privileged || on.privileged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::testing::TestClock;
    use crate::pci::caps::{find_extended, id};
    use crate::sim::pci::{FnId, Function, SrIov, Topology};
    use std::vec::Vec as StdVec;

    type Share = PriShare<4, 8, 2>;
    const IOMMU: IommuId = IommuId(7);

    fn pf() -> Bdf {
        Bdf::new(0, 1, 0, 0).unwrap()
    }
    fn vf(i: u8) -> Bdf {
        Bdf::new(0, 1, 0, i + 1).unwrap()
    }
    fn clock() -> TestClock<'static> {
        TestClock::new(1000)
    }

    /// Sets NumVFs and VF Enable on the PF at 01:00.0 (settle time 0 in the presets).
    fn enable_vfs(t: &Topology, n: u16) {
        let sriov = find_extended(t, pf(), id::SRIOV).unwrap().unwrap();
        t.write16(pf(), sriov + 0x10, n);
        t.write16(pf(), sriov + 0x08, 1);
    }

    /// The preset PRI PF (capacity 512) with 3 VFs enabled, a manager with one IOMMU of
    /// `queue` entries and the PF added with a share of 32 for 4 users (allocation 128).
    fn setup(queue: u32) -> (Topology, FnId, Share) {
        let t = Topology::pri_sriov(3, 512);
        enable_vfs(&t, 3);
        let id = t.find("pri-pf").unwrap();
        let mut s = Share::new();
        s.add_iommu(IOMMU, queue).unwrap();
        s.add_pf(&t, pf(), PfPolicy { iommu: IOMMU, share: 32, users: 4 }).unwrap();
        (t, id, s)
    }

    fn user(k: usize) -> PriUser {
        match k {
            0 => PriUser::physical(pf()),
            // CAST: test indices are small.
            k => PriUser::virtual_function(vf(k as u8 - 1), pf()),
        }
    }

    /// PRI Enable in the model's PF, read without going through any driver.
    fn assert_invariant(t: &Topology, id: FnId, s: &Share) {
        let users = s.users(pf());
        assert_eq!(t.pri_enabled(id), users > 0, "PRI Enable on the PF == users > 0 ({users})");
        let used = s.budget(IOMMU).unwrap().used;
        assert_eq!(used, if users > 0 { 128 } else { 0 }, "budget holds the PF's allocation");
    }

    fn permutations(items: &[usize]) -> StdVec<StdVec<usize>> {
        if items.len() <= 1 {
            return std::vec![items.to_vec()];
        }
        let mut out = StdVec::new();
        for (i, &x) in items.iter().enumerate() {
            let mut rest = items.to_vec();
            rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, x);
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn vf_first_then_pf_then_detach_in_every_order() {
        let all = permutations(&[0, 1, 2, 3]);
        assert_eq!(all.len(), 24);
        for enable in &all {
            for disable in &all {
                let (t, id, mut s) = setup(1024);
                for &k in enable {
                    let g = s.enable(&t, user(k), None, 0).unwrap();
                    assert_eq!(
                        g,
                        Grant {
                            pf: pf(),
                            share: 32,
                            prg_response_pasid_required: true,
                            pasid: None
                        }
                    );
                    assert_invariant(&t, id, &s);
                }
                assert_eq!(t.peek32(id, 0x170 + 0x0c), 128, "allocation programmed once");
                for &k in disable {
                    s.disable(&t, &clock(), user(k), 0, STOP_TIMEOUT).unwrap();
                    assert_invariant(&t, id, &s);
                }
            }
        }
    }

    #[test]
    fn vf_first_and_its_requests_count_against_the_pf() {
        let (t, id, mut s) = setup(1024);
        let vf0 = id.vf(0);
        assert_eq!(t.pri_issue(vf0, 1), 0, "no page requests before enable");
        s.enable(&t, user(1), None, 0).unwrap();
        assert!(t.pri_enabled(id));
        assert_eq!(t.pri_issue(vf0, 500), 128, "the VF draws on the PF's allocation");
        s.enable(&t, user(0), None, 0).unwrap();
        // The PF's own leave does not stop the VF.
        s.disable(&t, &clock(), user(0), 0, STOP_TIMEOUT).unwrap();
        assert!(t.pri_enabled(id));
        // The last leave waits for Stopped: the outstanding requests get answered meanwhile.
        let answer = || t.pri_complete(vf0, 16);
        s.disable(&t, &TestClock::with_relax(1000, &answer), user(1), 0, STOP_TIMEOUT).unwrap();
        assert!(!t.pri_enabled(id));
        assert_eq!(t.pri_outstanding(vf0), 0);
    }

    #[test]
    fn refusals_are_typed_and_change_nothing() {
        let (t, id, mut s) = setup(1024);
        s.enable(&t, user(1), None, 0).unwrap();
        assert_eq!(
            s.enable(&t, user(1), None, 0),
            Err(Error::NotWhileEnabled {
                bdf: vf(0),
                what: "page requests (already a user of the PF's PRI)"
            })
        );
        assert_eq!(
            s.disable(&t, &clock(), user(2), 0, STOP_TIMEOUT),
            Err(Error::NotFound { what: "PRI share: not a user of the PF's PRI" })
        );
        assert_eq!(
            s.ensure_unpinned(pf()),
            Err(Error::PriPinned { pf: pf(), users: 1, what: "PRI/PASID configuration" })
        );
        assert_eq!(
            s.add_pf(&t, pf(), PfPolicy { iommu: IOMMU, share: 8, users: 4 }),
            Err(Error::PriPinned { pf: pf(), users: 1, what: "PRI share policy" })
        );
        assert_eq!(
            s.remove_pf(pf()),
            Err(Error::PriPinned { pf: pf(), users: 1, what: "PRI share" })
        );
        assert_invariant(&t, id, &s);
        s.disable(&t, &clock(), user(1), 0, STOP_TIMEOUT).unwrap();
        assert_eq!(s.ensure_unpinned(pf()), Ok(()));
        // A policy above the capacity.
        assert_eq!(
            s.add_pf(&t, pf(), PfPolicy { iommu: IOMMU, share: 200, users: 4 }),
            Err(Error::PriAllocationExceedsCapacity { bdf: pf(), allocation: 800, capacity: 512 })
        );
        // A policy the fixed user table cannot hold.
        assert_eq!(
            s.add_pf(&t, pf(), PfPolicy { iommu: IOMMU, share: 8, users: 9 }),
            Err(Error::CapacityExceeded { what: "PRI share: users of one PF", capacity: 8 })
        );
        // More users than the policy has shares for.
        let mut s = Share::new();
        s.add_iommu(IOMMU, 1024).unwrap();
        s.add_pf(&t, pf(), PfPolicy { iommu: IOMMU, share: 32, users: 2 }).unwrap();
        s.enable(&t, user(0), None, 0).unwrap();
        s.enable(&t, user(1), None, 0).unwrap();
        assert_eq!(
            s.enable(&t, user(2), None, 0),
            Err(Error::CapacityExceeded {
                what: "PRI share: users of one PF (policy)",
                capacity: 2
            })
        );
    }

    #[test]
    fn over_budget_is_refused_with_requested_and_available() {
        let (t, id, mut s) = setup(100);
        assert_eq!(
            s.enable(&t, user(2), None, 0),
            Err(Error::PriBudgetExceeded { iommu: 7, requested: 128, available: 100 })
        );
        assert!(!t.pri_enabled(id));
        assert_eq!(s.budget(IOMMU), Some(PriBudget { iommu: IOMMU, capacity: 100, used: 0 }));
        assert_eq!(s.users(pf()), 0);
    }

    #[test]
    fn two_pfs_share_one_queue() {
        // Two PRI PFs under one IOMMU whose queue holds 200: 128 + 128 does not fit.
        let t = Topology::builder()
            .device(1, 0, Function::pri_pf(2, 512).name("a"))
            .device(2, 0, Function::pri_pf(2, 512).name("b"))
            .build();
        let (a, b) = (Bdf::new(0, 0, 1, 0).unwrap(), Bdf::new(0, 0, 2, 0).unwrap());
        let mut s = Share::new();
        s.add_iommu(IOMMU, 200).unwrap();
        s.add_iommu(IommuId(8), 64).unwrap();
        s.add_pf(&t, a, PfPolicy { iommu: IOMMU, share: 32, users: 4 }).unwrap();
        s.add_pf(&t, b, PfPolicy { iommu: IOMMU, share: 32, users: 4 }).unwrap();
        s.enable(&t, PriUser::physical(a), None, 0).unwrap();
        assert_eq!(
            s.enable(&t, PriUser::physical(b), None, 0),
            Err(Error::PriBudgetExceeded { iommu: 7, requested: 128, available: 72 })
        );
        assert_eq!(
            s.budgets(),
            &[
                PriBudget { iommu: IOMMU, capacity: 200, used: 128 },
                PriBudget { iommu: IommuId(8), capacity: 64, used: 0 }
            ]
        );
        // Smaller shares fit: 128 + 4 * 16 = 192 <= 200.
        s.add_pf(&t, b, PfPolicy { iommu: IOMMU, share: 16, users: 4 }).unwrap();
        s.enable(&t, PriUser::physical(b), None, 0).unwrap();
        assert_eq!(s.budget(IOMMU).unwrap().available(), 8);
    }

    #[test]
    fn igb_like_pf_without_pri_is_refused_with_the_pf() {
        // igb: SR-IOV, no PRI, no PASID.
        let t = Topology::builder()
            .device(
                1,
                0,
                Function::endpoint(0x8086, 0x10c9, 0x02_0000)
                    .ari(0)
                    .sriov(SrIov::new(2).offset_stride(1, 1).vf_device(0x10ca)),
            )
            .build();
        let igb = Bdf::new(0, 0, 1, 0).unwrap();
        let sriov = find_extended(&t, igb, id::SRIOV).unwrap().unwrap();
        t.write16(igb, sriov + 0x10, 2);
        t.write16(igb, sriov + 0x08, 1);
        let igb_vf = Bdf::new(0, 0, 1, 1).unwrap();
        let mut s = Share::new();
        s.add_iommu(IOMMU, 64).unwrap();
        assert_eq!(
            s.enable(&t, PriUser::virtual_function(igb_vf, igb), None, 0),
            Err(Error::PriUnavailable { pf: igb })
        );
        assert_eq!(
            s.add_pf(&t, igb, PfPolicy { iommu: IOMMU, share: 8, users: 3 }),
            Err(Error::PriUnavailable { pf: igb })
        );
        assert_eq!(
            Error::PriUnavailable { pf: igb }.to_string(),
            "0000:00:01.0: no PRI capability (a VF can only use its PF's)"
        );
        // A PRI PF that nobody added is a different error.
        let (t, _, _) = setup(64);
        let mut s = Share::new();
        s.add_iommu(IOMMU, 64).unwrap();
        assert_eq!(
            s.enable(&t, user(1), None, 0),
            Err(Error::NotFound { what: "PRI share: PF not added" })
        );
    }

    /// PASID Control of the PF (the preset's PASID at 0x160; Control is the high half).
    fn pasid_control(t: &Topology, id: FnId) -> u16 {
        t.peek16(id, 0x166)
    }

    #[test]
    fn pasid_is_enabled_on_the_pf_and_pinned() {
        let (t, id, mut s) = setup(1024);
        let exec = PasidFeatures { execute: true, privileged: false };
        let g = s.enable(&t, user(2), Some(exec), 0).unwrap();
        assert_eq!(g.pasid, Some(exec));
        // PASID Enable (bit 0) and Execute Permission Enable (bit 1), PCIe Base 6.0 §7.8.9.3.
        assert_eq!(pasid_control(&t, id), 0b011);
        // A user without PASID, and one asking for less, join; one asking for more is refused.
        s.enable(&t, user(0), None, 0).unwrap();
        s.enable(&t, user(1), Some(PasidFeatures::default()), 0).unwrap();
        assert_eq!(
            s.enable(&t, user(3), Some(PasidFeatures { execute: true, privileged: true }), 0),
            Err(Error::PriPinned {
                pf: pf(),
                users: 3,
                what: "PASID Control (Execute/Privileged Mode Enable)"
            })
        );
        assert_eq!(pasid_control(&t, id), 0b011);
        for k in [0, 2, 1] {
            s.disable(&t, &clock(), user(k), 0, STOP_TIMEOUT).unwrap();
            assert_eq!(pasid_control(&t, id) != 0, s.users(pf()) > 0);
        }
        // PASID asked for on a PRI PF without PASID.
        let t2 = Topology::builder().device(1, 0, Function::endpoint(0x8086, 1, 0).pri(64)).build();
        let p = Bdf::new(0, 0, 1, 0).unwrap();
        let mut s = Share::new();
        s.add_iommu(IOMMU, 64).unwrap();
        s.add_pf(&t2, p, PfPolicy { iommu: IOMMU, share: 16, users: 1 }).unwrap();
        assert_eq!(
            s.enable(&t2, PriUser::physical(p), Some(PasidFeatures::default()), 0),
            Err(Error::FeatureUnsupported {
                bdf: p,
                what: "PASID capability (absent on the PF)",
                requested: 1,
                supported: 0
            })
        );
        assert_eq!(s.budget(IOMMU).unwrap().used, 0);
    }

    #[test]
    fn pasid_under_ats_is_refused_and_rolled_back() {
        let (t, id, mut s) = setup(1024);
        // PASID cannot be enabled while a VF has ATS on (§7.8.9.3).
        assert_eq!(
            s.enable(&t, user(1), Some(PasidFeatures::default()), 1),
            Err(Error::NotWhileEnabled { bdf: pf(), what: "ATS Control.Enable" })
        );
        assert_invariant(&t, id, &s);
        assert_eq!(pasid_control(&t, id), 0);
    }

    #[test]
    fn users_from_an_enumerated_snapshot() {
        use crate::pci::ecam::FunctionId;
        use crate::pci::topology::{Capabilities, Function as Snap, FunctionKind};
        let f = |bdf: Bdf, physical_function| Snap {
            id: FunctionId {
                bdf,
                vendor: 0x8086,
                device: 0x0b25,
                class: 0,
                revision: 0,
                header_type: 0,
            },
            kind: FunctionKind::PcieEndpoint,
            parent: None,
            bus_range: None,
            caps: Capabilities::default(),
            acs: None,
            multi_function: false,
            ari_forwarding: false,
            physical_function,
            bars: [None; 6],
        };
        let mut topo = crate::pci::topology::Topology::<4>::new();
        let pf_index = topo.push(f(pf(), None)).unwrap();
        let vf_index = topo.push(f(vf(1), Some(pf_index))).unwrap();
        assert_eq!(PriUser::of(&topo, pf_index), Some(PriUser::physical(pf())));
        assert_eq!(PriUser::of(&topo, vf_index), Some(PriUser::virtual_function(vf(1), pf())));
        assert_eq!(PriUser::of(&topo, FunctionIndex(3)), None);
    }

    #[test]
    fn a_pf_that_vanishes() {
        // Gone before the first enable: refused, nothing reserved.
        let (t, id, mut s) = setup(1024);
        t.set_present(id, false);
        assert_eq!(s.enable(&t, user(0), None, 0), Err(Error::FunctionVanished { bdf: pf() }));
        assert_eq!((s.users(pf()), s.budget(IOMMU).unwrap().used), (0, 0));
        // Gone while the last user waits for Stopped: the user is gone, the budget stays held
        // (nothing says the requests are answered) until the PF is removed.
        let (t, id, mut s) = setup(1024);
        s.enable(&t, user(1), None, 0).unwrap();
        t.pri_issue(id.vf(0), 4);
        let vanish = || t.set_present(id, false);
        assert_eq!(
            s.disable(&t, &TestClock::with_relax(1000, &vanish), user(1), 0, STOP_TIMEOUT),
            Err(Error::FunctionVanished { bdf: pf() })
        );
        assert_eq!((s.users(pf()), s.budget(IOMMU).unwrap().used), (0, 128));
        s.remove_pf(pf()).unwrap();
        assert_eq!(s.budget(IOMMU).unwrap().used, 0);
    }

    #[test]
    fn pasid_left_on_under_ats_stays_recorded() {
        let (t, id, mut s) = setup(1024);
        s.enable(&t, user(1), Some(PasidFeatures::default()), 0).unwrap();
        // The caller left a VF's ATS on: PRI goes off, PASID cannot (§7.8.9.3) and says so.
        assert_eq!(
            s.disable(&t, &clock(), user(1), 1, STOP_TIMEOUT),
            Err(Error::NotWhileEnabled { bdf: pf(), what: "ATS Control.Enable" })
        );
        assert_invariant(&t, id, &s);
        assert_eq!(pasid_control(&t, id), 0b001);
        // The record follows the hardware: the next user finds PASID on, the last one with ATS
        // off turns it off.
        assert_eq!(
            s.enable(&t, user(2), Some(PasidFeatures::default()), 0).unwrap().pasid,
            Some(PasidFeatures::default())
        );
        s.disable(&t, &clock(), user(2), 0, STOP_TIMEOUT).unwrap();
        assert_eq!(pasid_control(&t, id), 0);
    }

    #[test]
    fn a_pri_that_does_not_stop_keeps_its_budget_until_it_does() {
        let (t, id, mut s) = setup(1024);
        s.enable(&t, user(1), None, 0).unwrap();
        t.pri_never_stop(id, true);
        assert!(matches!(
            s.disable(&t, &clock(), user(1), 0, Duration::from_micros(50)),
            Err(Error::Timeout { what: "PRI Status.Stopped", .. })
        ));
        assert!(!t.pri_enabled(id), "Enable is clear: no new requests");
        assert_eq!(s.users(pf()), 0);
        assert_eq!(s.budget(IOMMU).unwrap().used, 128, "requests may still be in flight");
        assert_eq!(
            s.add_pf(&t, pf(), PfPolicy { iommu: IOMMU, share: 8, users: 4 }),
            Err(Error::PriPinned {
                pf: pf(),
                users: 0,
                what: "PRI share policy (PRI not yet stopped)"
            })
        );
        // Not stopped: the next user cannot enable PRI; nothing is reserved twice.
        assert!(matches!(s.enable(&t, user(0), None, 0), Err(Error::PriNotStopped { .. })));
        assert_eq!(s.budget(IOMMU).unwrap().used, 128);
        t.pri_never_stop(id, false);
        s.enable(&t, user(0), None, 0).unwrap();
        assert_invariant(&t, id, &s);
        s.disable(&t, &clock(), user(0), 0, STOP_TIMEOUT).unwrap();
        assert_invariant(&t, id, &s);
    }

    #[test]
    fn coordinated_reset_answers_every_user_first() {
        let (t, id, mut s) = setup(1024);
        for k in [1, 0, 3] {
            s.enable(&t, user(k), None, 0).unwrap();
        }
        assert_eq!(t.pri_issue(id.vf(0), 10), 10);
        assert_eq!(t.pri_issue(id.vf(2), 10), 10);
        // A VF's group got a failure anyway (a non-conforming path): the PF stops for all.
        t.pri_response_failure(id.vf(0));
        assert_eq!(t.pri_issue(id.vf(2), 1), 0, "every sibling is stopped");
        assert_eq!(
            PrgResponseCode::ResponseFailure.contained(&user(1)),
            PrgResponseCode::InvalidRequest
        );
        assert_eq!(
            PrgResponseCode::ResponseFailure.contained(&user(0)),
            PrgResponseCode::ResponseFailure
        );
        assert_eq!(PrgResponseCode::Success.contained(&user(2)), PrgResponseCode::Success);
        let answered = core::cell::RefCell::new(StdVec::new());
        let enabled_when_answered = core::cell::Cell::new(true);
        s.reset_pri(&t, &clock(), pf(), STOP_TIMEOUT, |u| {
            answered.borrow_mut().push(u);
            // Answered before PRI is touched.
            enabled_when_answered.set(enabled_when_answered.get() && t.pri_enabled(id));
        })
        .unwrap();
        let mut got = answered.into_inner();
        got.sort();
        assert_eq!(got, std::vec![pf(), vf(0), vf(2)]);
        assert!(enabled_when_answered.get());
        assert_invariant(&t, id, &s);
        assert_eq!(t.peek16(id, 0x176) & 0b11, 0, "Response Failure and UPRGI cleared");
        assert_eq!(t.peek32(id, 0x17c), 128);
        assert_eq!(t.pri_issue(id.vf(2), 1), 1, "page requests flow again");
    }

    #[test]
    fn the_preset_has_pri_and_pasid_on_the_pf_only_and_ats_everywhere() {
        let (t, id, _) = setup(1024);
        let ids =
            |b: Bdf| crate::pci::caps::extended(&t, b).map(|c| c.unwrap().0).collect::<StdVec<_>>();
        assert_eq!(
            ids(pf()),
            [id::AER, id::ARI, id::ATS, id::PASID, id::PRI, id::SRIOV],
            "PF: PRI and PASID (PCIe Base 6.0 §10.5.2, §7.8.9)"
        );
        for k in 0..3 {
            assert_eq!(ids(vf(k)), [id::ARI, id::ATS], "VF {k}: ATS, no PRI or PASID (§9.3.7)");
        }
        // PRI header (0x0013, version 1, next 0x180) and registers, at the PF's 0x170: Control
        // 0, Status Stopped (0x0100) | PRG Response PASID Required (0x8000), capacity 512.
        assert_eq!(t.read32(pf(), 0x170), 0x0013 | 1 << 16 | 0x180 << 20);
        assert_eq!(t.read32(pf(), 0x174), (0x0100 | 0x8000) << 16);
        assert_eq!(t.read32(pf(), 0x178), 512);
        // PASID Capability: Execute (0x0002), Privileged (0x0004), width 20 (12:8).
        assert_eq!(t.read16(pf(), 0x164), 0x0002 | 0x0004 | 20 << 8);
        // Response Failure and UPRGI are RW1C; Stopped and PASID Required are read-only.
        s_enable(&t);
        t.pri_response_failure(id.vf(1));
        t.pri_unexpected_response(id.vf(2));
        assert_eq!(t.read16(pf(), 0x176) & 0x0003, 0x0003, "a VF's failure lands in the PF");
        t.write16(pf(), 0x176, 0x8102);
        assert_eq!(t.read16(pf(), 0x176), 0x8001);
        t.write16(pf(), 0x176, 0x0001);
        assert_eq!(t.read16(pf(), 0x176), 0x8000);
    }

    /// Enables PRI on the preset PF directly (allocation 8).
    fn s_enable(t: &Topology) {
        Pri::find(t, pf()).unwrap().unwrap().enable(t, 8).unwrap();
    }

    #[test]
    fn unsupported_pasid_features_are_refused_and_nothing_is_held() {
        let t = Topology::builder()
            .device(1, 0, Function::endpoint(0x8086, 1, 0).pasid(false, false, 8).pri(64))
            .build();
        let p = Bdf::new(0, 0, 1, 0).unwrap();
        let mut s = Share::new();
        s.add_iommu(IOMMU, 64).unwrap();
        s.add_pf(&t, p, PfPolicy { iommu: IOMMU, share: 16, users: 1 }).unwrap();
        assert_eq!(
            s.enable(
                &t,
                PriUser::physical(p),
                Some(PasidFeatures { execute: true, privileged: false }),
                0
            ),
            Err(Error::FeatureUnsupported {
                bdf: p,
                what: "PASID Capability",
                requested: 2,
                supported: 0
            })
        );
        assert_eq!((s.users(p), s.budget(IOMMU).unwrap().used), (0, 0));
        assert!(!Pri::find(&t, p).unwrap().unwrap().is_enabled(&t).unwrap());
        s.enable(&t, PriUser::physical(p), Some(PasidFeatures::default()), 0).unwrap();
    }

    /// `Topology` (a `RefCell` model) behind a mutex, so threads can share it.
    struct SyncTopo(std::sync::Mutex<Topology>);
    impl ConfigAccess for SyncTopo {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            self.0.lock().unwrap().read32(bdf, offset)
        }
        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            self.0.lock().unwrap().write32(bdf, offset, value)
        }
        fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
            self.0.lock().unwrap().write16(bdf, offset, value)
        }
        fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
            self.0.lock().unwrap().write8(bdf, offset, value)
        }
        fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
            self.0.lock().unwrap().read16(bdf, offset)
        }
        fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
            self.0.lock().unwrap().read8(bdf, offset)
        }
    }

    /// The hypervisor's lock, here a std mutex.
    struct MutexLock<T>(std::sync::Mutex<T>);
    impl<T> PriLock<T> for MutexLock<T> {
        fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
            f(&mut self.0.lock().unwrap())
        }
    }

    #[test]
    fn threads_keep_pri_enabled_exactly_while_users_remain() {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let (t, id, s) = setup(1024);
        let cfg = SyncTopo(std::sync::Mutex::new(t));
        let lock = MutexLock(std::sync::Mutex::new(s));
        let done = AtomicBool::new(false);
        let checks = AtomicU32::new(0);
        std::thread::scope(|scope| {
            // One thread per user, each attaching and detaching many times with its own
            // interleaving.
            let workers: StdVec<_> = (0..4)
                .map(|k| {
                    let (cfg, lock, checks) = (&cfg, &lock, &checks);
                    scope.spawn(move || {
                        // Start once the observer is running, so its checks interleave with
                        // the changes however the host schedules the threads.
                        while checks.load(Ordering::Acquire) == 0 {
                            std::thread::yield_now();
                        }
                        let clock = clock();
                        let mut rng = 0x9e37_79b9u32.wrapping_mul(k as u32 + 1);
                        for _ in 0..300 {
                            rng ^= rng << 13;
                            rng ^= rng >> 17;
                            rng ^= rng << 5;
                            let pasid = (rng & 1 == 1).then(PasidFeatures::default);
                            lock.with(|s| s.enable(cfg, user(k), pasid, 0)).unwrap();
                            for _ in 0..(rng >> 8) % 4 {
                                std::thread::yield_now();
                            }
                            lock.with(|s| s.disable(cfg, &clock, user(k), 0, STOP_TIMEOUT))
                                .unwrap();
                            if rng & 2 == 0 {
                                std::thread::yield_now();
                            }
                        }
                    })
                })
                .collect();
            // An observer checking the invariant at every point it can see.
            scope.spawn(|| {
                loop {
                    let last = done.load(Ordering::Acquire);
                    lock.with(|s| {
                        let users = s.users(pf());
                        let enabled = cfg.0.lock().unwrap().pri_enabled(id);
                        assert_eq!(enabled, users > 0, "PRI enabled == users > 0");
                        let used = s.budget(IOMMU).unwrap().used;
                        assert_eq!(used, if users > 0 { 128 } else { 0 });
                    });
                    checks.fetch_add(1, Ordering::Release);
                    if last {
                        break;
                    }
                    std::thread::yield_now();
                }
            });
            for w in workers {
                w.join().unwrap();
            }
            done.store(true, Ordering::Release);
        });
        assert!(checks.load(Ordering::Relaxed) > 0);
        let t = cfg.0.into_inner().unwrap();
        let s = lock.0.into_inner().unwrap();
        assert_eq!(s.users(pf()), 0);
        assert!(!t.pri_enabled(id));
        assert_eq!(t.peek16(id, 0x166), 0, "PASID off with the last user");
    }

    /// The lock protocol under loom: every interleaving of two users attaching and detaching
    /// while a third thread observes. Run with
    /// `RUSTFLAGS="--cfg loom" cargo test -p pcie-iommu --features sim --release loom`.
    #[cfg(loom)]
    mod loom_model {
        use super::*;
        use loom::sync::{Arc, Mutex};

        struct LoomLock<T>(Mutex<T>);
        impl<T> PriLock<T> for LoomLock<T> {
            fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
                f(&mut self.0.lock().unwrap())
            }
        }

        struct LoomTopo(Mutex<Topology>);
        impl ConfigAccess for LoomTopo {
            fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
                self.0.lock().unwrap().read32(bdf, offset)
            }
            fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
                self.0.lock().unwrap().write32(bdf, offset, value)
            }
            fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
                self.0.lock().unwrap().write16(bdf, offset, value)
            }
            fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
                self.0.lock().unwrap().write8(bdf, offset, value)
            }
        }

        fn observe(lock: &LoomLock<Share>, cfg: &LoomTopo, id: FnId) -> u16 {
            lock.with(|s| {
                let users = s.users(pf());
                assert_eq!(cfg.0.lock().unwrap().pri_enabled(id), users > 0);
                assert_eq!(s.budget(IOMMU).unwrap().used, if users > 0 { 128 } else { 0 });
                users
            })
        }

        #[test]
        fn loom_pri_enabled_exactly_while_users_remain() {
            let mut model = loom::model::Builder::new();
            model.preemption_bound = Some(3);
            model.check(|| {
                let (t, id, s) = setup(1024);
                let cfg = Arc::new(LoomTopo(Mutex::new(t)));
                let lock = Arc::new(LoomLock(Mutex::new(s)));
                let workers: StdVec<_> = [0usize, 2]
                    .into_iter()
                    .map(|k| {
                        let (cfg, lock) = (cfg.clone(), lock.clone());
                        loom::thread::spawn(move || {
                            let clock = clock();
                            lock.with(|s| s.enable(&*cfg, user(k), None, 0)).unwrap();
                            assert!(observe(&lock, &cfg, id) >= 1, "a user sees itself");
                            lock.with(|s| s.disable(&*cfg, &clock, user(k), 0, STOP_TIMEOUT))
                                .unwrap();
                        })
                    })
                    .collect();
                observe(&lock, &cfg, id);
                for w in workers {
                    w.join().unwrap();
                }
                assert_eq!(observe(&lock, &cfg, id), 0);
            });
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// Random enable/disable sequences over the PF and 3 VFs agree with a model set
            /// of users, and PRI/PASID/budget follow "some user remains" after every step.
            #[test]
            fn random_sequences_keep_the_invariant(
                ops in proptest::collection::vec((0usize..4, any::<bool>(), any::<bool>()), 1..40)
            ) {
                let (t, id, mut s) = setup(1024);
                let mut model = [false; 4];
                for (k, on, pasid) in ops {
                    let want = pasid.then(PasidFeatures::default);
                    let r = if on {
                        s.enable(&t, user(k), want, 0).map(|_| ())
                    } else {
                        s.disable(&t, &clock(), user(k), 0, STOP_TIMEOUT)
                    };
                    prop_assert_eq!(r.is_ok(), model[k] != on, "op {} {} on {:?}", k, on, model);
                    if r.is_ok() {
                        model[k] = on;
                    }
                    let users = model.iter().filter(|u| **u).count();
                    prop_assert_eq!(usize::from(s.users(pf())), users);
                    prop_assert_eq!(t.pri_enabled(id), users > 0);
                    prop_assert_eq!(s.budget(IOMMU).unwrap().used, if users > 0 { 128 } else { 0 });
                    if users == 0 {
                        prop_assert_eq!(pasid_control(&t, id), 0);
                    }
                }
            }
        }
    }
}
