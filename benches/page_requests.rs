//! Page-request service throughput: requests per second on one core through the whole software
//! path of a VT-d page request, with no hardware and no model:
//!
//! 1. **decode**: `vtd::prq::decode` of a 256-bit page request descriptor (§7.5.1.1), read from
//!    a ring of descriptors encoded here from the specification's bit positions;
//! 2. **route**: a [`Router`] over an attachment table (256 functions on bus 1 x 8 PASIDs,
//!    direct-indexed, as a hypervisor's table would be);
//! 3. **group**: `PageRequestService::receive` (the service built with the `const fn new`)
//!    collects the requests of each page request group until Last-in-group and hands the whole
//!    group to the handler (which answers Success);
//! 4. **respond**: a [`ResponseSink`] that encodes the page group response descriptor
//!    (`vtd::prq::response_descriptor`, §6.5.2.7) and writes its four quadwords with volatile
//!    stores into a 256-entry descriptor ring, advancing a tail, as the VT-d `QueueSink` does
//!    into the invalidation queue (without the tail register write and the wait, which are the
//!    hardware's time).
//!
//! Two streams of 1024 requests each: 1024 one-request groups (every request Last), and 256
//! four-request groups, 16 in flight at a time with their requests interleaved (so the service
//! holds 16 partial groups). A counting global allocator proves the path allocates nothing.
//!
//! Run: `cargo bench -p pcie-iommu --features sim --bench page_requests`
//! (`-- --summary-only` prints only the summary).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use pcie_iommu::iommu::pri::{
    Disposition, Group, GroupResponse, PageRequestService, ResponseCode, ResponseSink, Route,
    Router, Routing,
};
use pcie_iommu::vtd::prq;
use pcie_iommu::{Pasid, RequesterId};

use common::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

/// Requests per stream.
const REQUESTS: usize = 1024;
/// Groups in flight at once in the multi-request stream.
const IN_FLIGHT: usize = 16;
/// PASIDs per function in the attachment table.
const PASIDS: usize = 8;
/// Descriptors in the response ring.
const RING: usize = 256;

type Service = PageRequestService<u32, 64, 8>;

/// A VT-d page request descriptor (§7.5.1.1), from the specification's field positions:
/// qword 0: Type 7:0 (= 1), PASID Present 8, RID 31:16, PASID 51:32; qword 1: Read Requested 0,
/// Write Requested 1, Last Page In Group 2, PRGI 11:3, Address 63:12.
fn request_descriptor(
    rid: u16,
    pasid: u32,
    prgi: u16,
    last: bool,
    write: bool,
    address: u64,
) -> [u64; 4] {
    let qw0 = 0x01 | 1 << 8 | u64::from(rid) << 16 | u64::from(pasid) << 32;
    let qw1 = 1 | u64::from(write) << 1 | u64::from(last) << 2 | u64::from(prgi) << 3 | address;
    [qw0, qw1, 0, 0]
}

/// Requester ID of function `f` (0..256) on bus 1.
fn rid_of(f: usize) -> u16 {
    0x0100 | (f as u16 & 0xff)
}

/// The stream of descriptors: `REQUESTS / per_group` groups of `per_group` requests. Groups run
/// `IN_FLIGHT` at a time (one function each) with their requests interleaved; each group's last
/// request has Last set.
fn stream(per_group: usize) -> Vec<[u64; 4]> {
    let groups = REQUESTS / per_group;
    let mut out = Vec::with_capacity(REQUESTS);
    for batch in 0..groups.div_ceil(IN_FLIGHT) {
        let first = batch * IN_FLIGHT;
        let last = (first + IN_FLIGHT).min(groups);
        for r in 0..per_group {
            for g in first..last {
                let function = g % 256;
                let pasid = 1 + (g % (PASIDS - 1)) as u32;
                let prgi = (g % 512) as u16;
                let address = 0x7f00_0000_0000 + ((g * per_group + r) as u64) * 4096;
                out.push(request_descriptor(
                    rid_of(function),
                    pasid,
                    prgi,
                    r + 1 == per_group,
                    r % 2 == 1,
                    address,
                ));
            }
        }
    }
    out
}

/// The attachment table: (function on bus 1, PASID) -> attachment handle; PASID 0 unattached.
struct Attachments {
    table: Vec<Option<u32>>,
}

impl Attachments {
    fn new() -> Self {
        let table = (0..256 * PASIDS)
            .map(|i| if i % PASIDS == 0 { None } else { Some(i as u32) })
            .collect();
        Self { table }
    }
}

impl Router for Attachments {
    type Attachment = u32;

    fn route(&mut self, rid: RequesterId, pasid: Option<Pasid>) -> Routing<u32> {
        let found = match pasid {
            Some(p) if rid.0 >> 8 == 1 && (p.get() as usize) < PASIDS => {
                self.table.get(usize::from(rid.0 & 0xff) * PASIDS + p.get() as usize).copied()
            }
            _ => None,
        };
        match found.flatten() {
            Some(attachment) => Routing::Attached(Route {
                attachment,
                pasid_in_response: true,
                is_vf: false,
                pf: rid,
            }),
            None => Routing::Unattached { pasid_in_response: false },
        }
    }
}

/// Page group response descriptors written into a ring, as the VT-d `QueueSink` writes them
/// into the invalidation queue.
struct RingSink {
    ring: Box<[[u64; 4]]>,
    tail: usize,
    sent: u64,
    success: u64,
}

impl RingSink {
    fn new() -> Self {
        Self { ring: vec![[0; 4]; RING].into_boxed_slice(), tail: 0, sent: 0, success: 0 }
    }
}

impl ResponseSink for RingSink {
    fn respond(&mut self, response: &GroupResponse) -> pcie_iommu::Result<()> {
        let d = prq::response_descriptor(response)?;
        let slot = &mut self.ring[self.tail];
        for (i, w) in d.words().into_iter().enumerate() {
            // SAFETY: `slot` is a valid, aligned `[u64; 4]` of the ring; volatile as a store to
            // device-read memory would be.
            unsafe { std::ptr::write_volatile(&mut slot[i], w) };
        }
        self.tail = (self.tail + 1) % RING;
        self.sent += 1;
        self.success += u64::from(response.code == ResponseCode::Success);
        Ok(())
    }
}

/// Everything one stream runs through.
struct Path {
    service: Box<Service>,
    router: Attachments,
    sink: RingSink,
    handled: u64,
}

impl Path {
    fn new() -> Self {
        Self {
            service: Box::new(Service::new()),
            router: Attachments::new(),
            sink: RingSink::new(),
            handled: 0,
        }
    }

    /// Decode, route, group and respond for every descriptor of `ring`.
    fn run(&mut self, ring: &[[u64; 4]]) {
        let mut handled = 0u64;
        let mut handler = |g: &Group<'_, u32>| {
            handled += g.requests.len() as u64;
            Disposition::Respond(ResponseCode::Success)
        };
        for words in ring {
            let message = prq::decode(black_box(*words)).expect("descriptor decodes");
            self.service
                .receive(message, &mut self.router, &mut handler, &mut self.sink)
                .expect("the ring sink never refuses");
        }
        self.handled += handled;
    }
}

fn page_requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("page-requests");
    g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(REQUESTS as u64));
    for per_group in [1, 4] {
        let ring = stream(per_group);
        let mut path = Path::new();
        g.bench_function(
            BenchmarkId::new("decode-route-group-respond", format!("{per_group}-request groups")),
            |b| b.iter(|| path.run(&ring)),
        );
    }
    g.finish();
}

fn summary() {
    println!(
        "\npage-request service summary ({}), median of 51 rounds of {REQUESTS} requests, one thread:",
        common::machine()
    );
    println!("{:<18} {:>12} {:>14} {:>12}", "stream", "ns/request", "requests/s", "responses");
    for per_group in [1, 4] {
        let ring = stream(per_group);
        let mut path = Path::new();
        for _ in 0..5 {
            path.run(&ring);
        }
        let mut v: Vec<f64> = (0..51)
            .map(|_| {
                let t = Instant::now();
                path.run(&ring);
                t.elapsed().as_nanos() as f64 / REQUESTS as f64
            })
            .collect();
        v.sort_by(f64::total_cmp);
        let ns = v[v.len() / 2];

        // One more stream under the counting allocator, on a fresh path: nothing allocates, and
        // every group was handled and answered once, Success.
        let mut fresh = Path::new();
        let ((), heap) = ALLOC.measure(|| fresh.run(&ring));
        assert!(heap.is_zero(), "the page-request path allocated: {heap:?}");
        let groups = (REQUESTS / per_group) as u64;
        assert_eq!((fresh.sink.sent, fresh.sink.success), (groups, groups));
        assert_eq!(fresh.handled, REQUESTS as u64);
        assert_eq!(fresh.service.pending(), 0);
        let stats = fresh.service.stats();
        assert_eq!(
            (stats.requests, stats.responses, stats.groups_handled),
            (REQUESTS as u64, groups, groups)
        );

        let name = format!("{per_group}-request groups");
        println!("{name:<18} {ns:>12.1} {:>14.0} {:>12}", 1e9 / ns, fresh.sink.sent);
        println!("  heap use of one stream (decode, route, group, respond): {heap:?}");
    }
}

criterion_group!(benches, page_requests);

fn main() {
    let only_summary = std::env::args().any(|a| a == "--summary-only");
    if !only_summary {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    // `cargo test --benches` runs bench binaries without `--bench`: keep that quick.
    if std::env::args().any(|a| a == "--bench") || only_summary {
        summary();
    }
}
