//! Fault-capable domains: attach, detach and replace of endpoints to domains that receive page
//! requests (seed `iommufd-fault-capable-attach-detach-replace.txt`), joined to PCIe PRI shared
//! by a PF and its VFs ([`PriShare`]) and to the page-request service ([`PageRequestService`])
//! fed by the unit's hardware queue ([`FaultQueue`]; VT-d: [`crate::vtd::prq`], SMMUv3:
//! [`crate::smmuv3::priq::SmmuPriQueue`]).
//!
//! [`PageRequests`] owns the hardware queue, the service and the routing table of fault-capable
//! attachments (it is the service's [`Router`]: (requester ID, PASID) to a [`FaultId`]). Its
//! [`attach`](PageRequests::attach), [`detach`](PageRequests::detach) and
//! [`replace`](PageRequests::replace) wrap the [`Iommu`]'s and do for a fault-capable domain
//! what the seed's `iommufd_fault_domain_*_dev` do:
//!
//! - **Enable on first use**: the first fault-capable attachment of a function makes it a user
//!   of its PF's PRI ([`PriShare::enable`]: through the PF for a VF, with PASID when the
//!   attachment has one), then attaches, then lets the unit accept its page requests (VT-d: PRE
//!   in the context entry). Any refusal ([`Error::PriUnavailable`] for a function whose PF has
//!   no PRI, [`Error::PriBudgetExceeded`], ...) changes nothing.
//! - **Disable on last use**: the last detach (or replace to a non-fault-capable domain) of a
//!   function ends its use of the PF's PRI ([`PriShare::disable`]), after the drain. Its
//!   record (PF's "PRG Response PASID Required") stays while there is room, so that requests
//!   it still sends (an SMMUv3 has no per-stream refusal and queues them) are answered Invalid
//!   with the PASID as it wants.
//! - **Drain before return**: on detach, and on replace away from a fault-capable domain, the
//!   entry is first blocked or switched and invalidated (the [`Iommu`] call), the attachment
//!   leaves the routing table (so requests of it still in the queue are answered Invalid), the
//!   unit stops accepting the function's page requests if it was its last fault-capable
//!   attachment, and then [`FaultQueue::drain`] pushes out what is in flight (VT-d §7.10: the
//!   teardown invalidations with a fenced page-drain wait), services the queue to its tail and
//!   answers every group still held for the attachment Invalid. The drain is bounded by the
//!   invalidation queue's timeout.
//! - **Never silently**: a drain that does not finish in its bound forces the endpoint to
//!   blocking (again), answers what the service holds for it as far as the queue allows, keeps
//!   the function a user of its PF's PRI (groups may still be outstanding; [`PageRequests::stuck`]
//!   lists it) and returns [`Error::PageRequestDrain`] with the BDF and PASID.
//!
//! A function's attachments with and without PASIDs share one PRI user. The PASID features
//! given at the first enable hold until the last user leaves: a PASID attachment of a function
//! whose page requests were enabled without PASID is [`Error::PriPinned`]. A fault-capable
//! attachment needs an isolation group of one function ([`Error::SharedGroup`]): page requests
//! are per function and a replace of a larger group would move members whose PRI it does not
//! manage.
//!
//! # Locking
//!
//! Every call takes `&mut self` and `&mut Iommu`: one caller at a time. An integrator with
//! several CPUs keeps the unit, its [`PageRequests`] and the [`PriShare`] behind one lock (the
//! drain services the same hardware queue its page-request interrupt handler does), and calls
//! [`PageRequests::process`] from the interrupt handler under that lock.
//!
//! ```text
//! let prq = PageRequestQueue::new(&p, core.backend(), 1)?; // where ECAP.PRS
//! let mut faults = PageRequests::<_, 32, 8, 16>::new(prq);
//! let mut domain = core.new_fault_domain(&p, X86FirstStage::new())?;
//! let mut pri = PriContext::new(&mut share, &config_space);
//! faults.attach(&mut core, &p, &iso, &mut domain, vf_endpoint, &mut pri)?; // PRI on the PF
//! faults.process(&mut core, &p, &mut handler, 64)?;                      // from the PRQ interrupt
//! faults.detach(&mut core, &p, &iso, &mut domain, vf_endpoint, &mut pri, &mut handler)?;
//! ```

use core::time::Duration;

use heapless::Vec;

use crate::addr::{Pasid, RequesterId};
use crate::error::{Error, Result};
use crate::hal::Platform;
use crate::iommu::domain::{Backend, Domain, Endpoint, Iommu, Isolation};
use crate::iommu::pagetable::PageTableFormat;
use crate::iommu::pri::{
    GroupId, Handler, PageRequestService, ResponseCode, ResponseSink, Route, Router, Routing,
};
use crate::pci::config::ConfigAccess;
use crate::pci::pasid::PasidFeatures;
use crate::pci::pri_share::{PriShare, PriUser, STOP_TIMEOUT};
use crate::pci::topology::FunctionIndex;

/// A fault-capable attachment, as page-request groups name it. Never reused while the
/// [`PageRequests`] lives (a 32-bit counter; it refuses to wrap).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FaultId(pub u32);

/// The unit's hardware page request queue, as fault-capable attach, detach and replace drive
/// it (implemented for [`crate::vtd::prq::PageRequestQueue`] on [`crate::vtd::Unit`] and for
/// [`crate::smmuv3::priq::SmmuPriQueue`] on [`crate::smmuv3::SmmuBackend`]).
pub trait FaultQueue<B: Backend> {
    /// Reads up to `budget` entries into `service`; returns how many were read.
    #[allow(clippy::too_many_arguments, reason = "the queue, its service and the three parties")]
    fn service<P, R, H, const G: usize, const PG: usize>(
        &mut self,
        backend: &mut B,
        platform: &P,
        service: &mut PageRequestService<R::Attachment, G, PG>,
        router: &mut R,
        handler: &mut H,
        budget: usize,
    ) -> Result<usize>
    where
        P: Platform + ?Sized,
        R: Router,
        H: Handler<R::Attachment>;

    /// Drains the page requests of `attachment` (whose entry for `endpoint`, tagged `tag`, is
    /// already blocked or switched) and answers its held groups Invalid, in bounded time;
    /// returns how many were answered.
    #[allow(clippy::too_many_arguments, reason = "the queue, its service and the three parties")]
    fn drain<P, R, H, const G: usize, const PG: usize>(
        &mut self,
        backend: &mut B,
        platform: &P,
        service: &mut PageRequestService<R::Attachment, G, PG>,
        router: &mut R,
        handler: &mut H,
        attachment: R::Attachment,
        endpoint: &Endpoint,
        tag: u32,
    ) -> Result<()>
    where
        P: Platform + ?Sized,
        R: Router,
        H: Handler<R::Attachment>;

    /// Runs `f` with the unit's response path (VT-d: page group responses through the
    /// invalidation queue).
    fn with_sink<P: Platform + ?Sized, T>(
        &mut self,
        backend: &mut B,
        platform: &P,
        f: impl FnOnce(&mut dyn ResponseSink) -> Result<T>,
    ) -> Result<T>;
}

/// What the PRI side of a fault-capable attach, detach or replace needs: the PF-shared PRI
/// manager and the config space it programs, with the knobs [`PriShare`] asks for.
pub struct PriContext<
    'a,
    C: ConfigAccess + ?Sized,
    const PFS: usize,
    const USERS: usize,
    const IOMMUS: usize,
> {
    /// The PF-shared PRI/PASID manager (one for the system: its budgets are per IOMMU).
    pub share: &'a mut PriShare<PFS, USERS, IOMMUS>,
    /// Config space of the functions.
    pub cfg: &'a C,
    /// PASID features asked for when a PASID attachment is a function's first user.
    pub pasid: PasidFeatures,
    /// VFs of the PF with ATS enabled (see [`PriShare::enable`]).
    pub vfs_with_ats: u16,
    /// Bound for PRI Stopped when the last user leaves.
    pub stop_timeout: Duration,
}

impl<'a, C: ConfigAccess + ?Sized, const PFS: usize, const USERS: usize, const IOMMUS: usize>
    PriContext<'a, C, PFS, USERS, IOMMUS>
{
    /// `share` over `cfg`, no PASID features, no VF with ATS, [`STOP_TIMEOUT`].
    pub fn new(share: &'a mut PriShare<PFS, USERS, IOMMUS>, cfg: &'a C) -> Self {
        Self {
            share,
            cfg,
            pasid: PasidFeatures::default(),
            vfs_with_ats: 0,
            stop_timeout: STOP_TIMEOUT,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct FaultRoute {
    id: FaultId,
    endpoint: Endpoint,
}

/// A function using page requests.
#[derive(Clone, Copy, Debug)]
struct FunctionRecord {
    function: FunctionIndex,
    rid: RequesterId,
    user: PriUser,
    pasid_in_response: bool,
    /// Fault-capable attachments. 0 and not stuck: the function left (kept, while there is
    /// room, so that its late page requests, which an SMMUv3 still queues, are answered with
    /// the PASID as it wants; evicted when the room is needed).
    count: usize,
    /// A drain failed: it stays a PRI user (its groups may be outstanding); a later
    /// fault-capable attach of the function reuses that use. Nothing releases it yet.
    stuck: bool,
}

/// The routing table of fault-capable attachments: the [`Router`] the page-request service
/// uses.
#[derive(Debug)]
pub struct FaultRoutes<const FA: usize> {
    routes: Vec<FaultRoute, FA>,
    functions: Vec<FunctionRecord, FA>,
}

impl<const FA: usize> FaultRoutes<FA> {
    const fn new() -> Self {
        Self { routes: Vec::new(), functions: Vec::new() }
    }

    fn record(&self, function: FunctionIndex) -> Option<&FunctionRecord> {
        self.functions.iter().find(|f| f.function == function)
    }

    fn record_mut(&mut self, function: FunctionIndex) -> Option<&mut FunctionRecord> {
        self.functions.iter_mut().find(|f| f.function == function)
    }

    /// Room for a new function record, evicting one of a function that left if needed.
    fn make_room(&mut self) -> bool {
        if !self.functions.is_full() {
            return true;
        }
        match self.functions.iter().position(|f| f.count == 0 && !f.stuck) {
            Some(at) => {
                self.functions.swap_remove(at);
                true
            }
            None => false,
        }
    }

    fn id_of(&self, endpoint: &Endpoint) -> Option<FaultId> {
        self.routes
            .iter()
            .find(|r| {
                r.endpoint.function == endpoint.function && r.endpoint.pasid == endpoint.pasid
            })
            .map(|r| r.id)
    }

    fn remove(&mut self, id: FaultId) {
        if let Some(i) = self.routes.iter().position(|r| r.id == id) {
            self.routes.swap_remove(i);
        }
    }
}

impl<const FA: usize> Router for FaultRoutes<FA> {
    type Attachment = FaultId;

    fn route(&mut self, rid: RequesterId, pasid: Option<Pasid>) -> Routing<FaultId> {
        let Some(f) = self.functions.iter().find(|f| f.rid == rid) else {
            return Routing::Unattached { pasid_in_response: false };
        };
        let found = self
            .routes
            .iter()
            .find(|r| r.endpoint.bdf.routing_id() == rid && r.endpoint.pasid == pasid);
        match found {
            Some(r) => Routing::Attached(Route {
                attachment: r.id,
                pasid_in_response: f.pasid_in_response,
                is_vf: f.user.is_vf(),
                pf: f.user.owner().routing_id(),
            }),
            None => Routing::Unattached { pasid_in_response: f.pasid_in_response },
        }
    }
}

/// Page requests of one unit: its hardware queue `Q`, the service (`G` groups of `PG`
/// requests) and up to `FA` fault-capable attachments. See the [module docs](self).
#[derive(Debug)]
pub struct PageRequests<Q, const G: usize, const PG: usize, const FA: usize> {
    queue: Q,
    service: PageRequestService<FaultId, G, PG>,
    routes: FaultRoutes<FA>,
    next_id: u32,
}

/// The `what` of an error, for [`Error::PageRequestDrain`].
fn cause(e: &Error) -> &'static str {
    match *e {
        Error::Timeout { what, .. } | Error::Hardware { what, .. } => what,
        Error::Unsupported { what, .. } | Error::InvalidField { what, .. } => what,
        _ => "page-request drain",
    }
}

impl<Q, const G: usize, const PG: usize, const FA: usize> PageRequests<Q, G, PG, FA> {
    /// Page requests through `queue` (already set up; VT-d:
    /// [`crate::vtd::prq::PageRequestQueue::new`]).
    pub const fn new(queue: Q) -> Self {
        Self { queue, service: PageRequestService::new(), routes: FaultRoutes::new(), next_id: 1 }
    }

    /// The hardware queue.
    pub const fn queue(&self) -> &Q {
        &self.queue
    }

    /// The hardware queue, mutably (event routing, status).
    pub const fn queue_mut(&mut self) -> &mut Q {
        &mut self.queue
    }

    /// The page-request service (counters, pending groups).
    pub const fn service(&self) -> &PageRequestService<FaultId, G, PG> {
        &self.service
    }

    /// The fault-capable attachment `id`, if it is still attached.
    pub fn endpoint_of(&self, id: FaultId) -> Option<Endpoint> {
        self.routes.routes.iter().find(|r| r.id == id).map(|r| r.endpoint)
    }

    /// The fault-capable attachment of `endpoint`, if any.
    pub fn fault_id(&self, endpoint: &Endpoint) -> Option<FaultId> {
        self.routes.id_of(endpoint)
    }

    /// Fault-capable attachments of the function at `function`.
    pub fn fault_attachments(&self, function: FunctionIndex) -> usize {
        self.routes.record(function).map_or(0, |f| f.count)
    }

    /// Functions kept as PRI users after a drain that did not finish.
    pub fn stuck(&self) -> impl Iterator<Item = PriUser> + '_ {
        self.routes.functions.iter().filter(|f| f.stuck).map(|f| f.user)
    }

    fn next_id(&mut self) -> Result<FaultId> {
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(Error::CapacityExceeded {
            what: "fault-capable attachment identities",
            capacity: u32::MAX as usize,
        })?;
        Ok(FaultId(id))
    }

    /// Services the hardware queue: up to `budget` entries routed, grouped, handed to
    /// `handler` and answered. Call from the page-request interrupt, under the unit's lock.
    pub fn process<B, P, H, const N: usize, const A: usize>(
        &mut self,
        iommu: &mut Iommu<B, N, A>,
        platform: &P,
        handler: &mut H,
        budget: usize,
    ) -> Result<usize>
    where
        B: Backend,
        Q: FaultQueue<B>,
        P: Platform + ?Sized,
        H: Handler<FaultId>,
    {
        let Self { queue, service, routes, .. } = self;
        queue.service(iommu.backend_mut(), platform, service, routes, handler, budget)
    }

    /// Answers a group the handler deferred.
    pub fn complete<B, P, const N: usize, const A: usize>(
        &mut self,
        iommu: &mut Iommu<B, N, A>,
        platform: &P,
        group: GroupId,
        code: ResponseCode,
    ) -> Result<()>
    where
        B: Backend,
        Q: FaultQueue<B>,
        P: Platform + ?Sized,
    {
        let Self { queue, service, .. } = self;
        queue.with_sink(iommu.backend_mut(), platform, |sink| {
            let mut sink = DynSink(sink);
            service.complete(group, code, &mut sink)
        })
    }

    /// Attaches `endpoint` to `domain`. For a fault-capable domain, the function's first
    /// fault-capable attachment enables page requests for it first (see the
    /// [module docs](self)); every refusal leaves everything as it was.
    #[allow(clippy::too_many_arguments, reason = "the unit, the snapshot and the PRI side")]
    pub fn attach<
        B,
        F,
        P,
        C,
        const N: usize,
        const A: usize,
        const PFS: usize,
        const USERS: usize,
        const IOMMUS: usize,
    >(
        &mut self,
        iommu: &mut Iommu<B, N, A>,
        platform: &P,
        iso: &Isolation<'_, N>,
        domain: &mut Domain<F>,
        endpoint: Endpoint,
        pri: &mut PriContext<'_, C, PFS, USERS, IOMMUS>,
    ) -> Result<()>
    where
        B: Backend,
        F: PageTableFormat,
        P: Platform + ?Sized,
        C: ConfigAccess + ?Sized,
    {
        if !domain.fault_capable() {
            return iommu.attach(platform, iso, domain, endpoint);
        }
        if iommu.domain_of(&endpoint) == Some(domain.id()) {
            return Ok(());
        }
        let user = self.prepare(iso, &endpoint)?;
        let enabled = self.enable(&endpoint, user, pri)?;
        if let Err(e) = iommu.attach(platform, iso, domain, endpoint) {
            self.undo_enable(platform, enabled, user, pri);
            return Err(e);
        }
        if let Err(e) = start(iommu, platform, &endpoint, enabled.pasid_in_response) {
            let _ = iommu.detach(platform, iso, domain, endpoint);
            self.undo_enable(platform, enabled, user, pri);
            return Err(e);
        }
        self.add_route(endpoint, user, enabled)
    }

    /// Detaches `endpoint` from `domain`. For a fault-capable domain: the entry is blocked and
    /// invalidated, the attachment unrouted, its page requests drained and its pending groups
    /// answered Invalid before this returns; the function's last fault-capable attachment then
    /// ends its use of its PF's PRI. A drain that does not finish in its bound is
    /// [`Error::PageRequestDrain`] (the endpoint is blocked all the same).
    #[allow(clippy::too_many_arguments, reason = "the unit, the snapshot, PRI and the handler")]
    pub fn detach<
        B,
        F,
        P,
        C,
        H,
        const N: usize,
        const A: usize,
        const PFS: usize,
        const USERS: usize,
        const IOMMUS: usize,
    >(
        &mut self,
        iommu: &mut Iommu<B, N, A>,
        platform: &P,
        iso: &Isolation<'_, N>,
        domain: &mut Domain<F>,
        endpoint: Endpoint,
        pri: &mut PriContext<'_, C, PFS, USERS, IOMMUS>,
        handler: &mut H,
    ) -> Result<()>
    where
        B: Backend,
        Q: FaultQueue<B>,
        F: PageTableFormat,
        P: Platform + ?Sized,
        C: ConfigAccess + ?Sized,
        H: Handler<FaultId>,
    {
        let id = match self.routes.id_of(&endpoint) {
            Some(id) if domain.fault_capable() => id,
            _ => return iommu.detach(platform, iso, domain, endpoint),
        };
        let detached = iommu.detach(platform, iso, domain, endpoint);
        if detached.is_err() && iommu.domain_of(&endpoint) == Some(domain.id()) {
            // Refused before anything changed (reserved, not attached there).
            return detached;
        }
        self.leave(iommu, platform, endpoint, id, domain.tag(), pri, handler, detached)
    }

    /// Moves `endpoint` from `old` to `new` (see [`Iommu::replace`]). Into a fault-capable
    /// domain from another kind: page requests enabled before the switch. Away from a
    /// fault-capable domain: after the switch, the old attachment's page requests drained and
    /// its pending groups answered Invalid, then (for the function's last) PRI use ended.
    /// Between two fault-capable domains: the new attachment gets the routes, the old one is
    /// drained.
    #[allow(clippy::too_many_arguments, reason = "the unit, the snapshot, PRI and the handler")]
    pub fn replace<
        B,
        F,
        G2,
        P,
        C,
        H,
        const N: usize,
        const A: usize,
        const PFS: usize,
        const USERS: usize,
        const IOMMUS: usize,
    >(
        &mut self,
        iommu: &mut Iommu<B, N, A>,
        platform: &P,
        iso: &Isolation<'_, N>,
        old: &mut Domain<F>,
        new: &mut Domain<G2>,
        endpoint: Endpoint,
        pri: &mut PriContext<'_, C, PFS, USERS, IOMMUS>,
        handler: &mut H,
    ) -> Result<()>
    where
        B: Backend,
        Q: FaultQueue<B>,
        F: PageTableFormat,
        G2: PageTableFormat,
        P: Platform + ?Sized,
        C: ConfigAccess + ?Sized,
        H: Handler<FaultId>,
    {
        let old_id = self.routes.id_of(&endpoint).filter(|_| old.fault_capable());
        if old_id.is_none() && !new.fault_capable() {
            return iommu.replace(platform, iso, old, new, endpoint);
        }
        if iommu.domain_of(&endpoint) != Some(old.id()) || old.id() == new.id() {
            // Not attached there (the core's error) or nothing to do.
            return iommu.replace(platform, iso, old, new, endpoint);
        }
        let user = match old_id.and_then(|_| self.routes.record(endpoint.function)) {
            Some(rec) => rec.user,
            None => self.prepare(iso, &endpoint)?,
        };
        let (enabled, new_id) = if new.fault_capable() {
            let enabled = if old_id.is_some() {
                Enabled { now: false, pasid_in_response: false }
            } else {
                self.enable(&endpoint, user, pri)?
            };
            (enabled, Some(self.next_id()?))
        } else {
            (Enabled { now: false, pasid_in_response: false }, None)
        };
        if let Err(e) = iommu.replace(platform, iso, old, new, endpoint) {
            self.undo_enable(platform, enabled, user, pri);
            return Err(e);
        }
        // The PF's answer: from this enable, else from the function's record.
        let pasid_in_response = match self.routes.record(endpoint.function) {
            Some(r) if !enabled.now => r.pasid_in_response,
            _ => enabled.pasid_in_response,
        };
        if new_id.is_some()
            && let Err(e) = start(iommu, platform, &endpoint, pasid_in_response)
        {
            // Back to where it was (best effort), then undo the enable.
            let _ = iommu.replace(platform, iso, new, old, endpoint);
            self.undo_enable(platform, enabled, user, pri);
            return Err(e);
        }
        if let Some(id) = new_id {
            if old_id.is_none() {
                self.add_route(endpoint, user, enabled)?;
            } else {
                // The function keeps its count: swap the old route for the new one.
                if let Some(r) = self.routes.routes.iter_mut().find(|r| Some(r.id) == old_id) {
                    r.id = id;
                }
            }
        }
        match old_id {
            Some(old_id) if new_id.is_some() => {
                // Both fault-capable: drain the old attachment's groups; PRI use continues.
                let Self { queue, service, routes, .. } = self;
                let drained = queue.drain(
                    iommu.backend_mut(),
                    platform,
                    service,
                    routes,
                    handler,
                    old_id,
                    &endpoint,
                    old.tag(),
                );
                drained.map_err(|e| Error::PageRequestDrain {
                    function: endpoint.bdf,
                    pasid: endpoint.pasid_value(),
                    cause: cause(&e),
                })
            }
            Some(old_id) => {
                self.leave(iommu, platform, endpoint, old_id, old.tag(), pri, handler, Ok(()))
            }
            None => Ok(()),
        }
    }

    /// Checks shared by attach and replace into a fault-capable domain.
    fn prepare<const N: usize>(
        &self,
        iso: &Isolation<'_, N>,
        endpoint: &Endpoint,
    ) -> Result<PriUser> {
        let group = iso.groups.group_of(endpoint.function).ok_or(Error::BadReference {
            what: "function index",
            value: u64::from(endpoint.function.0),
        })?;
        let members = iso.groups.members(group).count();
        if members != 1 {
            return Err(Error::SharedGroup { function: endpoint.bdf, members });
        }
        let user = PriUser::of(iso.topology, endpoint.function).ok_or(Error::BadReference {
            what: "function index (not in the topology snapshot)",
            value: u64::from(endpoint.function.0),
        })?;
        if user.bdf != endpoint.bdf {
            return Err(Error::BadReference {
                what: "endpoint (function index and BDF disagree with the snapshot)",
                value: u64::from(endpoint.function.0),
            });
        }
        if self.routes.routes.is_full() {
            return Err(Error::CapacityExceeded {
                what: "fault-capable attachments",
                capacity: FA,
            });
        }
        Ok(user)
    }

    /// Makes the function a PRI user if this is its first fault-capable attachment; returns
    /// whether it did, and the PF's PRG Response PASID Required.
    fn enable<C, const PFS: usize, const USERS: usize, const IOMMUS: usize>(
        &self,
        endpoint: &Endpoint,
        user: PriUser,
        pri: &mut PriContext<'_, C, PFS, USERS, IOMMUS>,
    ) -> Result<Enabled>
    where
        C: ConfigAccess + ?Sized,
    {
        let record = self.routes.record(endpoint.function);
        if !record.is_some_and(|f| f.count > 0 || f.stuck) {
            let room = !self.routes.functions.is_full()
                || self.routes.functions.iter().any(|f| f.count == 0 && !f.stuck);
            if record.is_none() && !room {
                return Err(Error::CapacityExceeded {
                    what: "fault-capable functions",
                    capacity: FA,
                });
            }
            let features = endpoint.pasid.map(|_| pri.pasid);
            let grant = pri.share.enable(pri.cfg, user, features, pri.vfs_with_ats)?;
            return Ok(Enabled { now: true, pasid_in_response: grant.prg_response_pasid_required });
        }
        let grant = pri.share.grant(&user).ok_or(Error::NotFound {
            what: "PRI share: a function with fault-capable attachments is not a user",
        })?;
        if endpoint.pasid.is_some() && grant.pasid.is_none() {
            return Err(Error::PriPinned {
                pf: grant.pf,
                users: pri.share.users(grant.pf),
                what: "PASID Enable (page requests were enabled without PASID)",
            });
        }
        Ok(Enabled { now: false, pasid_in_response: grant.prg_response_pasid_required })
    }

    fn undo_enable<P, C, const PFS: usize, const USERS: usize, const IOMMUS: usize>(
        &self,
        platform: &P,
        enabled: Enabled,
        user: PriUser,
        pri: &mut PriContext<'_, C, PFS, USERS, IOMMUS>,
    ) where
        P: Platform + ?Sized,
        C: ConfigAccess + ?Sized,
    {
        if enabled.now {
            // Nothing was attached: no request can be outstanding.
            let _ = pri.share.disable(pri.cfg, platform, user, pri.vfs_with_ats, pri.stop_timeout);
        }
    }

    fn add_route(&mut self, endpoint: Endpoint, user: PriUser, enabled: Enabled) -> Result<()> {
        let id = self.next_id()?;
        if self.routes.record(endpoint.function).is_none() && !self.routes.make_room() {
            return Err(Error::CapacityExceeded { what: "fault-capable functions", capacity: FA });
        }
        let rec = match self.routes.record_mut(endpoint.function) {
            Some(r) => {
                if enabled.now {
                    // A function that left and came back: what this enable granted.
                    r.user = user;
                    r.pasid_in_response = enabled.pasid_in_response;
                }
                r
            }
            None => {
                // Room was checked by `enable` (or a record exists).
                let rec = FunctionRecord {
                    function: endpoint.function,
                    rid: endpoint.bdf.routing_id(),
                    user,
                    pasid_in_response: enabled.pasid_in_response,
                    count: 0,
                    stuck: false,
                };
                self.routes.functions.push(rec).map_err(|_| Error::CapacityExceeded {
                    what: "fault-capable functions",
                    capacity: FA,
                })?;
                self.routes
                    .record_mut(endpoint.function)
                    .ok_or(Error::NotFound { what: "fault-capable function record" })?
            }
        };
        rec.count += 1;
        self.routes.routes.push(FaultRoute { id, endpoint }).map_err(|_| Error::CapacityExceeded {
            what: "fault-capable attachments",
            capacity: FA,
        })
    }

    /// The way out of a fault-capable attachment, once its entry no longer points at the
    /// fault-capable domain: unroute, stop PRE for the last, drain, end PRI use for the last.
    #[allow(clippy::too_many_arguments, reason = "the unit, PRI, the handler and the outcome")]
    fn leave<
        B,
        P,
        C,
        H,
        const N: usize,
        const A: usize,
        const PFS: usize,
        const USERS: usize,
        const IOMMUS: usize,
    >(
        &mut self,
        iommu: &mut Iommu<B, N, A>,
        platform: &P,
        endpoint: Endpoint,
        id: FaultId,
        tag: u32,
        pri: &mut PriContext<'_, C, PFS, USERS, IOMMUS>,
        handler: &mut H,
        mut result: Result<()>,
    ) -> Result<()>
    where
        B: Backend,
        Q: FaultQueue<B>,
        P: Platform + ?Sized,
        C: ConfigAccess + ?Sized,
        H: Handler<FaultId>,
    {
        self.routes.remove(id);
        let last = match self.routes.record_mut(endpoint.function) {
            Some(rec) => {
                rec.count = rec.count.saturating_sub(1);
                rec.count == 0
            }
            None => false,
        };
        if last {
            // The unit answers later requests of the function itself (VT-d: PRE clear).
            let stopped = iommu.backend_mut().set_page_requests(platform, &endpoint, false);
            if result.is_ok() {
                result = stopped;
            }
        }
        let Self { queue, service, routes, .. } = self;
        let drained = queue.drain(
            iommu.backend_mut(),
            platform,
            service,
            routes,
            handler,
            id,
            &endpoint,
            tag,
        );
        if let Err(e) = drained {
            // Forced to blocking (the detach or replace already moved it; make sure), the
            // groups held for it answered as far as the queue allows, and reported.
            let _ = iommu.backend_mut().remove(platform, &endpoint);
            let _ = queue.with_sink(iommu.backend_mut(), platform, |sink| {
                service.abort_attachment(id, &mut DynSink(sink))
            });
            if let Some(rec) = routes.record_mut(endpoint.function) {
                rec.stuck = true;
            }
            return Err(Error::PageRequestDrain {
                function: endpoint.bdf,
                pasid: endpoint.pasid_value(),
                cause: cause(&e),
            });
        }
        if last {
            // The record stays (count 0) for the function's late requests; see `count`.
            let user = routes.record(endpoint.function).map(|r| r.user);
            if let Some(user) = user {
                let disabled =
                    pri.share.disable(pri.cfg, platform, user, pri.vfs_with_ats, pri.stop_timeout);
                if result.is_ok() {
                    result = disabled;
                }
            }
        }
        result
    }
}

/// Lets the unit accept `endpoint`'s page requests, answering them itself (overflow) with the
/// PASID exactly when the function wants it.
fn start<B: Backend, P: Platform + ?Sized, const N: usize, const A: usize>(
    iommu: &mut Iommu<B, N, A>,
    platform: &P,
    endpoint: &Endpoint,
    pasid_in_response: bool,
) -> Result<()> {
    let backend = iommu.backend_mut();
    backend.set_page_requests(platform, endpoint, true)?;
    backend.set_page_response_pasid(platform, endpoint, pasid_in_response)
}

/// A `&mut dyn ResponseSink` as a sized sink.
struct DynSink<'a>(&'a mut dyn ResponseSink);

impl ResponseSink for DynSink<'_> {
    fn respond(&mut self, response: &crate::iommu::pri::GroupResponse) -> Result<()> {
        self.0.respond(response)
    }
}

/// What [`PageRequests::enable`] did.
#[derive(Clone, Copy, Debug)]
struct Enabled {
    /// The function became a PRI user now (undo on failure).
    now: bool,
    /// The PF's PRG Response PASID Required.
    pasid_in_response: bool,
}

#[cfg(test)]
mod tests;
