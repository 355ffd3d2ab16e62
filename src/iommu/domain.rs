//! Domains and attachments, the same for every IOMMU architecture.
//!
//! A [`Domain`] is an I/O address space: a page table (or identity, or blocking) with the tag
//! the unit caches its translations under (VT-d domain ID; SMMUv3 ASID or VMID). An
//! [`Iommu`] is one translation unit seen through its [`Backend`], plus the record of which
//! [`Endpoint`] (function, optionally with a PASID / substream ID) is attached to which domain.
//!
//! # Rules it keeps
//! - **Isolation groups** (see [`crate::pci::groups`]): requests without a PASID of every
//!   member of a group reach the same domain. Attaching a function whose group has a member
//!   in another domain is [`Error::GroupSplit`]; [`Iommu::replace`] moves every attached member
//!   of the group together. A PASID attachment needs a group of one function
//!   ([`Error::SharedGroup`]): members of a larger group can reach each other's DMA targets
//!   without the IOMMU (no ACS, or a bridge that takes their requester IDs and drops their
//!   PASID prefixes), so per-PASID address spaces would be a promise the hardware cannot keep.
//! - **Every requester ID a function's requests arrive with** (its own, DMA-alias quirks, the
//!   RID a PCIe-to-PCI or conventional bridge above puts on them; see [`crate::pci::alias`])
//!   gets the entry of its domain; an alias shared by several attached members of a group is
//!   removed only when the last of them detaches.
//! - **One domain per endpoint**: attaching an attached endpoint elsewhere is
//!   [`Error::Attachment`]; moving it is [`Iommu::replace`], which goes from the old
//!   translation to the new without a window in which the endpoint's requests are translated
//!   by a half-invalidated entry (the backend writes the new entry in the order its
//!   specification requires).
//! - **Reserved functions** (firmware-owned DMA such as VT-d RMRRs or IORT RMRs): a function
//!   [reserved](Iommu::reserve) keeps its current attachment; attach, replace and detach of
//!   its requests without a PASID are [`Error::Reserved`].
//! - **Nothing uninvalidated**: map and unmap return a [`PendingInvalidation`] that only
//!   [`Iommu::flush`] consumes; attach, replace and detach flush what the entry change owes
//!   before they return. A detach whose flush fails leaves the endpoint blocked (its entry is
//!   cleared first) but keeps the domain counted as in use: the hardware may still cache its
//!   tables, so it can never be destroyed and its pages are never reused.
//!
//! Calls take `&mut self`: one caller at a time per unit; locking is the hypervisor's.

use heapless::Vec;

use crate::addr::{Bdf, Iova, Pasid, PhysAddr};
use crate::error::{Error, Result};
use crate::hal::Platform;
use crate::iommu::invalidation::PendingInvalidation;
use crate::iommu::pagetable::{IoPageTable, PageSizes, PageTableFormat, Perms};
use crate::pci::alias;
use crate::pci::groups::{DomainId, GroupAttachments, Groups};
use crate::pci::topology::{FunctionIndex, Topology};

/// Which translation stage a page table is for. VT-d: first-stage (x86 format, PASID
/// granular) or second-stage; SMMUv3: stage 1 (CD, ASID) or stage 2 (STE, VMID).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Stage {
    /// VT-d first-stage, SMMUv3 stage 1.
    First,
    /// VT-d second-stage, SMMUv3 stage 2.
    Second,
}

/// A page-table format tied to the stage it serves.
pub trait StageFormat: PageTableFormat {
    /// The stage.
    const STAGE: Stage;
}

impl StageFormat for crate::iommu::pagetable::VtdSecondStage {
    const STAGE: Stage = Stage::Second;
}

impl StageFormat for crate::iommu::pagetable::X86FirstStage {
    const STAGE: Stage = Stage::First;
}

impl StageFormat for crate::iommu::pagetable::Arm64Stage1 {
    const STAGE: Stage = Stage::First;
}

impl StageFormat for crate::iommu::pagetable::Arm64Stage2 {
    const STAGE: Stage = Stage::Second;
}

/// Where a request comes from: a function, and the PASID (SMMUv3: substream ID) it carries.
/// `pasid: None` is requests without a PASID (VT-d scalable mode: RID_PASID; SMMUv3: SSID 0
/// or no substream).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Endpoint {
    /// The function's index in the topology snapshot the [`Groups`] were computed from.
    pub function: FunctionIndex,
    /// The function's address (its requester ID).
    pub bdf: Bdf,
    /// The PASID, if the requests carry one.
    pub pasid: Option<Pasid>,
}

impl Endpoint {
    /// Requests without a PASID from the function at `function` / `bdf`.
    pub const fn function(function: FunctionIndex, bdf: Bdf) -> Self {
        Self { function, bdf, pasid: None }
    }

    /// Requests with `pasid` from the function.
    pub const fn with_pasid(function: FunctionIndex, bdf: Bdf, pasid: Pasid) -> Self {
        Self { function, bdf, pasid: Some(pasid) }
    }

    /// The PASID as a number for errors and logs (`u32::MAX`: no PASID).
    pub fn pasid_value(&self) -> u32 {
        self.pasid.map_or(u32::MAX, Pasid::get)
    }
}

/// The snapshot the core checks attachments against: the topology (for requester-ID aliases)
/// and the isolation groups computed from it.
#[derive(Clone, Copy, Debug)]
pub struct Isolation<'a, const N: usize> {
    /// The topology snapshot.
    pub topology: &'a Topology<N>,
    /// [`Groups::compute`] of it.
    pub groups: &'a Groups<N>,
}

impl<'a, const N: usize> Isolation<'a, N> {
    /// Bundles a snapshot and its groups.
    pub const fn new(topology: &'a Topology<N>, groups: &'a Groups<N>) -> Self {
        Self { topology, groups }
    }
}

/// At most this many requester IDs per function (own, quirks, one per bridge level).
const MAX_ALIASES: usize = 16;

/// What a domain translates with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DomainKind {
    /// Through its page table.
    Translated(Stage),
    /// Untranslated (VT-d pass-through; SMMUv3 bypass STE).
    Identity,
    /// Every request blocked (VT-d: entry not present; SMMUv3: abort STE).
    Blocking,
}

/// What an endpoint's entry points at, as a backend writes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Target {
    /// A page table of `levels` levels rooted at `root`, for `stage`.
    Translated {
        /// The stage.
        stage: Stage,
        /// Root table.
        root: PhysAddr,
        /// Levels of the table.
        levels: u8,
    },
    /// Untranslated.
    Identity,
    /// Blocked.
    Blocking,
}

/// How a unit wants the page tables of one stage built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TableLayout {
    /// Levels of the table.
    pub levels: u8,
    /// Leaf sizes the unit supports for this stage.
    pub sizes: PageSizes,
    /// Whether the unit snoops table walks (no cache maintenance needed).
    pub coherent: bool,
    /// IOVA bits the unit translates (may be fewer than the levels cover).
    pub iova_bits: u8,
    /// Output address bits.
    pub phys_bits: u8,
}

/// One translation unit as the core drives it (implemented for [`crate::vtd::Unit`] and
/// [`crate::smmuv3::SmmuBackend`]).
///
/// Each method completes what it changes: an entry written by `install` or cleared by
/// `remove` has been invalidated (and the invalidation waited for) when it returns `Ok`.
pub trait Backend {
    /// How a page table for `stage` must be built on this unit; [`Error::Unsupported`] if the
    /// unit or its mode has no such stage.
    fn table_layout(&self, stage: Stage) -> Result<TableLayout>;
    /// Whether the unit can translate `kind` for `endpoint`s of this shape (`with_pasid`).
    fn supports(&self, kind: DomainKind, with_pasid: bool) -> Result<()>;
    /// Allocates the tag a new domain's translations are cached under.
    fn allocate_tag(&mut self, kind: DomainKind) -> Result<u32>;
    /// Returns a tag; every entry using it was removed and flushed.
    fn release_tag(&mut self, tag: u32) -> Result<()>;
    /// Points `endpoint` at `target`, tagged `tag`, replacing whatever it pointed at, and
    /// flushes what the change owes.
    fn install<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
        tag: u32,
        target: Target,
    ) -> Result<()>;
    /// Blocks `endpoint` (entry cleared) and flushes what the change owes.
    fn remove<P: Platform + ?Sized>(&mut self, platform: &P, endpoint: &Endpoint) -> Result<()>;
    /// Blocks every request of `endpoint`'s requester ID, with or without a PASID, and flushes
    /// what that owes (VT-d: the RID_PASID entry and then the context entry cleared). Used when
    /// the last attachment of a requester ID goes.
    fn remove_requester<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
    ) -> Result<()>;
    /// Issues the invalidations `pending` owes for a `stage` table tagged `pending.domain`
    /// that is reachable through `pasids` (the PASIDs of its attachments: VT-d first-stage
    /// translations are cached per PASID), then releases the pages it emptied.
    fn flush<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        pending: PendingInvalidation,
        stage: Stage,
        pasids: &[Option<Pasid>],
    ) -> Result<()>;
    /// Whether the unit can deliver page requests (VT-d: ECAP.PRS in scalable mode; SMMUv3: a
    /// PRI queue): [`Error::Unsupported`] with the capability otherwise. Needed by
    /// fault-capable domains ([`Iommu::new_fault_domain`]).
    fn page_requests(&self) -> Result<()> {
        Err(Error::Unsupported { what: "page requests on this IOMMU backend", value: 0 })
    }
    /// Makes the unit accept (`on`) or refuse page requests from `endpoint`'s requester ID
    /// (VT-d: PRE in its scalable-mode context entry, which must exist when turning it on), and
    /// flushes what that owes.
    fn set_page_requests<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
        on: bool,
    ) -> Result<()> {
        let _ = (platform, endpoint, on);
        self.page_requests()
    }
    /// Tells the unit whether `endpoint`'s function wants the PASID on page group responses
    /// (its PF's PRI "PRG Response PASID Required"), for the responses the unit sends itself
    /// (SMMUv3: STE.PPAR, §8.1); called after `set_page_requests(.., true)`. Default: nothing
    /// to keep (VT-d's own responses follow the request).
    fn set_page_response_pasid<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        endpoint: &Endpoint,
        required: bool,
    ) -> Result<()> {
        let _ = (platform, endpoint, required);
        Ok(())
    }
}

/// An I/O address space. Created by [`Iommu::new_domain`] (and the identity and blocking
/// variants), changed with [`map`](Self::map) / [`unmap`](Self::unmap), whose pending
/// invalidations go to [`Iommu::flush`], destroyed by [`Iommu::destroy_domain`].
#[derive(Debug)]
pub struct Domain<F: PageTableFormat> {
    id: DomainId,
    kind: DomainKind,
    tag: u32,
    table: Option<IoPageTable<F>>,
    users: usize,
    stuck: usize,
    fault_capable: bool,
}

impl<F: PageTableFormat> Domain<F> {
    /// The identity the isolation-group bookkeeping knows it by.
    pub const fn id(&self) -> DomainId {
        self.id
    }

    /// What it translates with.
    pub const fn kind(&self) -> DomainKind {
        self.kind
    }

    /// The hardware tag (VT-d domain ID, SMMUv3 ASID/VMID).
    pub const fn tag(&self) -> u32 {
        self.tag
    }

    /// Endpoints attached, plus detaches that could not be confirmed.
    pub const fn users(&self) -> usize {
        self.users
    }

    /// Detaches whose invalidation could not be confirmed: the domain can never be destroyed.
    pub const fn unconfirmed_detaches(&self) -> usize {
        self.stuck
    }

    /// Whether page requests of its attachments are delivered (see [`crate::iommu::fault`]).
    pub const fn fault_capable(&self) -> bool {
        self.fault_capable
    }

    /// The page table, if the domain translates.
    pub const fn table(&self) -> Option<&IoPageTable<F>> {
        self.table.as_ref()
    }

    fn table_mut(&mut self) -> Result<&mut IoPageTable<F>> {
        let kind = self.kind;
        self.table.as_mut().ok_or(Error::Unsupported {
            what: match kind {
                DomainKind::Identity => "map/unmap on an identity domain",
                _ => "map/unmap on a blocking domain",
            },
            value: u64::from(self.id.0),
        })
    }

    /// Maps `[iova, iova + len)` to `phys` with the largest pages that fit (see
    /// [`IoPageTable::map`]). The returned value must be given to [`Iommu::flush`].
    pub fn map<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        perms: Perms,
    ) -> Result<PendingInvalidation> {
        self.table_mut()?.map(platform, iova, phys, len, perms)
    }

    /// Unmaps `[iova, iova + len)`, splitting large pages and freeing emptied tables after the
    /// flush (see [`IoPageTable::unmap`]). The returned value must be given to
    /// [`Iommu::flush`].
    pub fn unmap<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iova: Iova,
        len: u64,
    ) -> Result<PendingInvalidation> {
        self.table_mut()?.unmap(platform, iova, len)
    }

    /// Software walk of the domain's table (`None` for identity and blocking domains).
    pub fn translate(&self, iova: Iova) -> Option<(PhysAddr, Perms, u64)> {
        self.table.as_ref().and_then(|t| t.translate(iova))
    }

    fn target(&self) -> Target {
        match (&self.table, self.kind) {
            (Some(t), DomainKind::Translated(stage)) => {
                Target::Translated { stage, root: t.root(), levels: t.levels() }
            }
            (_, DomainKind::Identity) => Target::Identity,
            _ => Target::Blocking,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Attachment {
    endpoint: Endpoint,
    domain: DomainId,
}

/// One translation unit, its attachments (at most `A`) and the group rules for the `N`
/// functions of the topology snapshot.
#[derive(Debug)]
pub struct Iommu<B: Backend, const N: usize, const A: usize> {
    backend: B,
    groups: GroupAttachments<N>,
    attachments: Vec<Attachment, A>,
    reserved: Vec<FunctionIndex, 16>,
    next_domain: u32,
}

impl<B: Backend, const N: usize, const A: usize> Iommu<B, N, A> {
    /// The core over `backend` with nothing attached. `first_domain` is the first
    /// [`DomainId`] handed out: give each unit a disjoint range when several share one
    /// topology, so group errors name domains unambiguously.
    pub const fn new(backend: B, first_domain: u32) -> Self {
        Self {
            backend,
            groups: GroupAttachments::new(),
            attachments: Vec::new(),
            reserved: Vec::new(),
            next_domain: first_domain,
        }
    }

    /// The backend (the unit), for what the core does not cover (faults, translation on/off).
    pub const fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably. Changing entries behind the core's back breaks its bookkeeping.
    pub const fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn next_id(&mut self) -> Result<DomainId> {
        let id = self.next_domain;
        self.next_domain = id.checked_add(1).ok_or(Error::CapacityExceeded {
            what: "IOMMU domain identities",
            capacity: u32::MAX as usize,
        })?;
        Ok(DomainId(id))
    }

    /// A translated domain with an empty page table of `format`, laid out as the unit asks
    /// for the format's stage.
    pub fn new_domain<F: StageFormat, P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        format: F,
    ) -> Result<Domain<F>> {
        let kind = DomainKind::Translated(F::STAGE);
        let layout = self.backend.table_layout(F::STAGE)?;
        let mut table = IoPageTable::new(platform, format, layout.levels, layout.sizes)?;
        table.set_coherent(layout.coherent);
        table.limit_iova_bits(layout.iova_bits);
        table.set_phys_bits(layout.phys_bits);
        let tag = match self.backend.allocate_tag(kind) {
            Ok(tag) => tag,
            Err(e) => {
                let pending = table.destroy(platform);
                // SAFETY: the table was never installed in any entry, so no unit walked it.
                unsafe { pending.complete(platform) };
                return Err(e);
            }
        };
        table.set_domain(tag);
        let id = self.next_id()?;
        Ok(Domain { id, kind, tag, table: Some(table), users: 0, stuck: 0, fault_capable: false })
    }

    /// A translated domain like [`new_domain`](Self::new_domain) whose attachments receive
    /// page requests: attached, detached and replaced through [`crate::iommu::fault`]'s
    /// [`PageRequests`](crate::iommu::fault::PageRequests), which enables PRI for the function and
    /// drains its page requests on the way out. [`Error::Unsupported`] if the unit cannot
    /// deliver page requests ([`Backend::page_requests`]).
    pub fn new_fault_domain<F: StageFormat, P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        format: F,
    ) -> Result<Domain<F>> {
        self.backend.page_requests()?;
        let mut domain = self.new_domain(platform, format)?;
        domain.fault_capable = true;
        Ok(domain)
    }

    /// An identity (untranslated) domain.
    pub fn new_identity_domain<F: PageTableFormat>(&mut self) -> Result<Domain<F>> {
        self.untranslated(DomainKind::Identity)
    }

    /// A blocking domain: endpoints attached to it reach nothing.
    pub fn new_blocking_domain<F: PageTableFormat>(&mut self) -> Result<Domain<F>> {
        self.untranslated(DomainKind::Blocking)
    }

    fn untranslated<F: PageTableFormat>(&mut self, kind: DomainKind) -> Result<Domain<F>> {
        let tag = self.backend.allocate_tag(kind)?;
        let id = self.next_id()?;
        Ok(Domain { id, kind, tag, table: None, users: 0, stuck: 0, fault_capable: false })
    }

    /// Destroys an unused domain: its tables are freed (after an invalidation of its tag) and
    /// the tag returned. A domain with users, or one whose detach could not be confirmed, is
    /// handed back with [`Error::DomainInUse`].
    #[allow(
        clippy::result_large_err,
        reason = "no heap to box into; the caller gets its domain back"
    )]
    pub fn destroy_domain<F: PageTableFormat, P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        mut domain: Domain<F>,
    ) -> core::result::Result<(), (Domain<F>, Error)> {
        if domain.users != 0 {
            let e = Error::DomainInUse { domain: domain.id.0, users: domain.users };
            return Err((domain, e));
        }
        if let (Some(table), DomainKind::Translated(stage)) = (domain.table.take(), domain.kind) {
            let mut pending = table.destroy(platform);
            // Everything goes: invalidate the whole tag, not the (empty) list of ranges.
            pending.whole_domain = true;
            if let Err(e) = self.backend.flush(platform, pending, stage, &[]) {
                // The pages were leaked by the failed flush; the tag stays allocated.
                return Err((domain, e));
            }
        }
        self.backend.release_tag(domain.tag).map_err(|e| (domain, e))
    }

    /// Marks the function at `function` reserved: its requests without a PASID keep their
    /// current attachment (firmware-owned DMA such as an RMRR or RMR depends on it).
    pub fn reserve(&mut self, function: FunctionIndex) -> Result<()> {
        if !self.reserved.contains(&function) {
            self.reserved.push(function).map_err(|_| Error::CapacityExceeded {
                what: "reserved functions",
                capacity: self.reserved.capacity(),
            })?;
        }
        Ok(())
    }

    fn check_not_reserved(&self, endpoint: &Endpoint) -> Result<()> {
        if endpoint.pasid.is_none() && self.reserved.contains(&endpoint.function) {
            return Err(Error::Reserved { function: endpoint.bdf });
        }
        Ok(())
    }

    fn position(&self, endpoint: &Endpoint) -> Option<usize> {
        self.attachments.iter().position(|a| {
            a.endpoint.function == endpoint.function && a.endpoint.pasid == endpoint.pasid
        })
    }

    /// The domain `endpoint` is attached to.
    pub fn domain_of(&self, endpoint: &Endpoint) -> Option<DomainId> {
        self.position(endpoint).and_then(|i| self.attachments.get(i)).map(|a| a.domain)
    }

    /// The endpoints attached to `domain`.
    pub fn attached(&self, domain: DomainId) -> impl Iterator<Item = Endpoint> + '_ {
        self.attachments.iter().filter(move |a| a.domain == domain).map(|a| a.endpoint)
    }

    /// Number of attachments.
    pub fn attachment_count(&self) -> usize {
        self.attachments.len()
    }

    fn attachment_error(endpoint: &Endpoint, domain: DomainId, state: &'static str) -> Error {
        Error::Attachment {
            function: endpoint.bdf,
            pasid: endpoint.pasid_value(),
            domain: domain.0,
            state,
        }
    }

    fn check_pasid_group(groups: &Groups<N>, endpoint: &Endpoint) -> Result<()> {
        if endpoint.pasid.is_none() {
            return Ok(());
        }
        let group = groups.group_of(endpoint.function).ok_or(Error::BadReference {
            what: "function index",
            value: u64::from(endpoint.function.0),
        })?;
        let members = groups.members(group).count();
        if members != 1 {
            return Err(Error::SharedGroup { function: endpoint.bdf, members });
        }
        Ok(())
    }

    fn check_endpoint(iso: &Isolation<'_, N>, endpoint: &Endpoint) -> Result<()> {
        let known = iso.topology.get(endpoint.function).map(|f| f.bdf());
        if known != Some(endpoint.bdf) || iso.groups.bdf(endpoint.function) != known {
            return Err(Error::BadReference {
                what: "endpoint (function index and BDF disagree with the snapshot)",
                value: u64::from(endpoint.function.0),
            });
        }
        Ok(())
    }

    /// The entries `endpoint` needs: with a PASID its own; without, one per requester-ID alias
    /// (its own first), each once.
    fn entries(iso: &Isolation<'_, N>, endpoint: &Endpoint) -> Vec<Endpoint, MAX_ALIASES> {
        let mut out: Vec<Endpoint, MAX_ALIASES> = Vec::new();
        let _ = out.push(*endpoint);
        if endpoint.pasid.is_some() {
            return out;
        }
        for a in alias::aliases(iso.topology, endpoint.function) {
            let bdf = a.bdf();
            if out.iter().any(|e| e.bdf == bdf) {
                continue;
            }
            // Bounded by the bridge depth; a full vector keeps the first aliases (the own ID
            // and the nearest rewrites), which is what hardware sees below the topmost one.
            if out.push(Endpoint { function: endpoint.function, bdf, pasid: None }).is_err() {
                break;
            }
        }
        out
    }

    /// Whether an attachment other than `except` still needs the entry of `bdf` (a shared
    /// alias of another member of the group).
    fn alias_in_use(&self, iso: &Isolation<'_, N>, bdf: Bdf, except: &Endpoint) -> bool {
        self.attachments.iter().any(|a| {
            a.endpoint.pasid.is_none()
                && a.endpoint.function != except.function
                && Self::entries(iso, &a.endpoint).iter().any(|e| e.bdf == bdf)
        })
    }

    /// Attaches `endpoint` to `domain`: checks the group rules, writes its entries (every
    /// requester-ID alias of the function for requests without a PASID) and flushes what they
    /// owe. Attaching again to the same domain does nothing; an endpoint attached elsewhere is
    /// [`Error::Attachment`] (use [`replace`](Self::replace)).
    ///
    /// If writing an entry fails, the entries written for this call are removed again (an
    /// alias another attachment shares is left as it was) and the error returned.
    pub fn attach<F: PageTableFormat, P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iso: &Isolation<'_, N>,
        domain: &mut Domain<F>,
        endpoint: Endpoint,
    ) -> Result<()> {
        if let Some(current) = self.domain_of(&endpoint) {
            if current == domain.id {
                return Ok(());
            }
            return Err(Self::attachment_error(&endpoint, current, "attached to another domain"));
        }
        Self::check_endpoint(iso, &endpoint)?;
        self.check_not_reserved(&endpoint)?;
        self.backend.supports(domain.kind, endpoint.pasid.is_some())?;
        Self::check_pasid_group(iso.groups, &endpoint)?;
        if self.attachments.is_full() {
            return Err(Self::full(&self.attachments));
        }
        if endpoint.pasid.is_none() {
            self.groups.attach(iso.groups, endpoint.function, domain.id)?;
        }
        let entries = Self::entries(iso, &endpoint);
        for (done, e) in entries.iter().enumerate() {
            if let Err(err) = self.backend.install(platform, e, domain.tag, domain.target()) {
                for undo in entries.iter().take(done + 1) {
                    if !self.alias_in_use(iso, undo.bdf, &endpoint) {
                        let _ = self.backend.remove(platform, undo);
                    }
                }
                if endpoint.pasid.is_none() {
                    self.groups.detach(endpoint.function);
                }
                return Err(err);
            }
        }
        // Cannot fail: checked not full above, and nothing was pushed since.
        let _ = self.attachments.push(Attachment { endpoint, domain: domain.id });
        domain.users += 1;
        Ok(())
    }

    fn full(attachments: &Vec<Attachment, A>) -> Error {
        Error::CapacityExceeded { what: "IOMMU attachments", capacity: attachments.capacity() }
    }

    /// Detaches `endpoint` from `domain`, leaving it blocked, and flushes what that owes. An
    /// alias entry another attached member of the group shares stays.
    ///
    /// If a flush fails the endpoint is still blocked (its entries are cleared before they are
    /// invalidated) and no longer attached, but `domain` stays counted as in use and cannot be
    /// destroyed: the hardware may still cache its tables. The first error is returned.
    pub fn detach<F: PageTableFormat, P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iso: &Isolation<'_, N>,
        domain: &mut Domain<F>,
        endpoint: Endpoint,
    ) -> Result<()> {
        let index = match self.position(&endpoint) {
            Some(i) if self.attachments.get(i).is_some_and(|a| a.domain == domain.id) => i,
            _ => return Err(Self::attachment_error(&endpoint, domain.id, "not attached to it")),
        };
        self.check_not_reserved(&endpoint)?;
        let mut result = Ok(());
        for e in Self::entries(iso, &endpoint) {
            if e.bdf != endpoint.bdf && self.alias_in_use(iso, e.bdf, &endpoint) {
                continue;
            }
            // The requester ID's last attachment takes its whole entry: nothing stays reachable
            // through a table a later PASID attachment would re-enable (and QEMU 10.0.2 only
            // stops using a cleared RID_PASID entry after a context-cache invalidation).
            let last = e.pasid.is_none()
                && !self
                    .attachments
                    .iter()
                    .any(|a| a.endpoint.pasid.is_some() && a.endpoint.bdf == e.bdf);
            let removed = if last {
                self.backend.remove_requester(platform, &e)
            } else {
                self.backend.remove(platform, &e)
            };
            if result.is_ok() {
                result = removed;
            }
        }
        self.attachments.swap_remove(index);
        if endpoint.pasid.is_none() {
            self.groups.detach(endpoint.function);
        }
        match result {
            Ok(()) => domain.users -= 1,
            Err(_) => domain.stuck += 1,
        }
        result
    }

    /// Moves `endpoint` from `old` to `new`. For requests without a PASID every member of the
    /// endpoint's group attached to `old` moves with it (a group is one address space), each
    /// with all its alias entries. Each entry goes from the old translation to the new as the
    /// backend's specification requires (VT-d: cleared, invalidated, rewritten; never
    /// translated through a stale entry).
    ///
    /// If moving an entry fails, entries already moved are moved back (best effort) and the
    /// error is returned.
    pub fn replace<F: PageTableFormat, G: PageTableFormat, P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iso: &Isolation<'_, N>,
        old: &mut Domain<F>,
        new: &mut Domain<G>,
        endpoint: Endpoint,
    ) -> Result<()> {
        if self.domain_of(&endpoint) != Some(old.id) {
            return Err(Self::attachment_error(&endpoint, old.id, "not attached to it"));
        }
        if old.id == new.id {
            return Ok(());
        }
        self.backend.supports(new.kind, endpoint.pasid.is_some())?;
        Self::check_pasid_group(iso.groups, &endpoint)?;

        // The attachments that move: this one, or every member of its group attached to `old`.
        let mut moving: Vec<usize, A> = Vec::new();
        for (i, a) in self.attachments.iter().enumerate() {
            let same =
                a.endpoint.function == endpoint.function && a.endpoint.pasid == endpoint.pasid;
            let member = endpoint.pasid.is_none()
                && a.endpoint.pasid.is_none()
                && a.domain == old.id
                && iso.groups.same_group(a.endpoint.function, endpoint.function);
            if same || member {
                self.check_not_reserved(&a.endpoint)?;
                // Cannot overflow: at most one per attachment.
                let _ = moving.push(i);
            }
        }

        // Every entry of every moving attachment, each once.
        let mut entries: Vec<Endpoint, A> = Vec::new();
        for a in moving.iter().filter_map(|&i| self.attachments.get(i)) {
            for e in Self::entries(iso, &a.endpoint) {
                if !entries.iter().any(|x| x.bdf == e.bdf && x.pasid == e.pasid) {
                    entries.push(e).map_err(|_| Self::full(&self.attachments))?;
                }
            }
        }
        for (done, e) in entries.iter().enumerate() {
            if let Err(err) = self.backend.install(platform, e, new.tag, new.target()) {
                for back in entries.iter().take(done + 1) {
                    let _ = self.backend.install(platform, back, old.tag, old.target());
                }
                return Err(err);
            }
        }
        for &i in &moving {
            if let Some(a) = self.attachments.get_mut(i) {
                a.domain = new.id;
                if a.endpoint.pasid.is_none() {
                    self.groups.detach(a.endpoint.function);
                }
            }
        }
        for &i in &moving {
            if let Some(a) = self.attachments.get(i).filter(|a| a.endpoint.pasid.is_none()) {
                // Cannot split: every attached member of the group moved together.
                let _ = self.groups.attach(iso.groups, a.endpoint.function, new.id);
            }
        }
        old.users -= moving.len();
        new.users += moving.len();
        Ok(())
    }

    /// Issues the invalidations `pending` (from `domain`'s map or unmap) owes on this unit,
    /// then frees the table pages it emptied.
    pub fn flush<F: PageTableFormat, P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        domain: &Domain<F>,
        pending: PendingInvalidation,
    ) -> Result<()> {
        let DomainKind::Translated(stage) = domain.kind else {
            // Identity and blocking domains have no table, so nothing can be pending for them.
            return self.backend.flush(platform, pending, Stage::Second, &[]);
        };
        let mut pasids: Vec<Option<Pasid>, A> = Vec::new();
        for endpoint in self.attached(domain.id) {
            if !pasids.contains(&endpoint.pasid) {
                // Cannot overflow: at most one per attachment.
                let _ = pasids.push(endpoint.pasid);
            }
        }
        self.backend.flush(platform, pending, stage, &pasids)
    }
}

#[cfg(test)]
mod tests;
