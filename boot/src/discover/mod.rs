//! The `discover` self-test: report what the firmware description and the hardware say, and
//! check that the two agree. On x86 the description is ACPI; on Arm it is the device tree.

use crate::boot_info::{BootInfo, FirmwareTables, RegionKind};
use crate::checks::Checks;
use crate::platform::{QemuPlatform, RangeSet};

#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "aarch64")]
pub use arm::{Machine, run};

#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
pub use x86::{Machine, run};

/// What a self-test adds to the discovery.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// Nothing: report and check what was found.
    None,
    /// The active PCIe checks (SR-IOV, attach guard, aliases).
    Pcie,
    /// DMA through VT-d translation.
    Vtd,
    /// DMA through the SMMUv3.
    Smmu,
}

/// Where the image itself lies, from the linker script.
fn image_range() -> (u64, u64) {
    unsafe extern "C" {
        static __image_start: u8;
        static __image_end: u8;
    }
    // CAST: addresses of linker symbols; only their addresses are taken, never their contents.
    (&raw const __image_start as u64, &raw const __image_end as u64)
}

/// Builds the platform from the memory map, excluding what this run must not overwrite.
pub fn make_platform(info: &BootInfo, reserved: &[(u64, u64)]) -> QemuPlatform {
    let mut free = RangeSet::new();
    for r in info.memory.regions() {
        if r.kind == RegionKind::Ram {
            free.add(r.base, r.base.saturating_add(r.size));
        }
    }
    for r in info.memory.regions() {
        if r.kind != RegionKind::Ram {
            free.remove(r.base, r.base.saturating_add(r.size));
        }
    }
    // x86: start info, command line, e820 table, BIOS data all live in the first MiB.
    free.remove(0, 0x10_0000);
    let (start, end) = image_range();
    free.remove(start, end);
    if let FirmwareTables::DeviceTree { blob } = info.tables {
        let base = blob.as_ptr() as u64;
        free.remove(base, base + blob.len() as u64);
    }
    for &(base, end) in reserved {
        free.remove(base, end);
    }
    if free.dropped != 0 {
        defmt::warn!("memory: {=usize} free ranges did not fit the allocator's table", free.dropped);
    }
    defmt::info!("image at {=u64:#x}..{=u64:#x}", start, end);
    for r in free.as_slice() {
        defmt::info!("DMA pages from {=u64:#x}..{=u64:#x} ({=u64} KiB)", r.start, r.end, (r.end - r.start) / 1024);
    }
    let platform = QemuPlatform::new(free);
    defmt::info!("DMA memory: {=u64} KiB free for tables and queues", platform.free_bytes() / 1024);
    platform
}

/// Checks the platform hands out zeroed, aligned, distinct pages and takes them back.
pub fn check_platform(platform: &QemuPlatform, checks: &mut Checks) {
    use pcie_iommu::hal::Platform;
    let a = platform.alloc_dma_pages(1, 4096);
    let b = platform.alloc_dma_pages(4, 0x4000);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            // SAFETY: both runs are freshly allocated, identity-mapped RAM of the sizes given.
            let (sa, sb) = unsafe {
                (core::slice::from_raw_parts(a.virt().as_ptr(), a.len()), core::slice::from_raw_parts(b.virt().as_ptr(), b.len()))
            };
            let zeroed = sa.iter().chain(sb.iter()).all(|&x| x == 0);
            let aligned = a.phys().is_aligned(4096) && b.phys().is_aligned(0x4000);
            let disjoint = a.phys().0 + a.len() as u64 <= b.phys().0 || b.phys().0 + b.len() as u64 <= a.phys().0;
            defmt::info!("DMA pages: 1 page at {}, 4 pages at {}", a.phys(), b.phys());
            checks.check("DMA pages are zeroed, aligned as asked and disjoint", zeroed && aligned && disjoint);
            let out = platform.pages_out();
            // SAFETY: no device was given these pages.
            unsafe {
                platform.free_dma_pages(a);
                platform.free_dma_pages(b);
            }
            checks.check("freed DMA pages are accounted for", platform.pages_out() + 5 == out);
        }
        (a, b) => {
            checks.ok("allocate 1 DMA page", a.map(|_| ()));
            checks.ok("allocate 4 DMA pages", b.map(|_| ()));
        }
    }
}

/// Checks that the clock advances across a busy wait.
pub fn check_clock(platform: &QemuPlatform, checks: &mut Checks) {
    use pcie_iommu::hal::Platform;
    let t0 = platform.now();
    let waited = pcie_iommu::hal::poll(platform, "clock self-check", core::time::Duration::from_micros(200), || None::<()>);
    let t1 = platform.now();
    let elapsed = t1.since(t0).as_micros() as u64;
    defmt::info!("clock: a bounded poll of 200 us took {=u64} us and timed out: {=bool}", elapsed, waited.is_err());
    checks.check("the monotonic clock advances and bounds a poll", elapsed >= 200 && waited.is_err());
}

/// Logs the memory map.
pub fn log_memory(info: &BootInfo) {
    for r in info.memory.regions() {
        defmt::info!("memory {=u64:#012x}..{=u64:#012x} {}", r.base, r.base.saturating_add(r.size), r.kind);
    }
    if info.memory.dropped != 0 || info.memmap_dropped != 0 {
        defmt::warn!("memory map: {=usize} entries did not fit and were ignored", info.memory.dropped + info.memmap_dropped);
    }
}
