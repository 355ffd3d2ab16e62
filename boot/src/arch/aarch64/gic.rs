//! The GIC on QEMU virt, enough to take wired SPIs (the SMMU's event queue and global error
//! lines) as real IRQs: GICv2 (virt's default) with its memory-mapped CPU interface, GICv3
//! (`gic-version=3`) with redistributor wake-up and the system-register CPU interface.
//!
//! QEMU virt runs without EL3, so the GIC has one security state (GICv2 without Security
//! Extensions; GICv3 with GICD_CTLR.DS = 1): GICv2 SPIs stay in Group 0 and are signalled as
//! IRQ (GICC_CTLR.FIQEn = 0); GICv3 SPIs go to Group 1, routed to affinity 0.0.0.0.
//!
//! The handler only counts: it acknowledges, bumps the INTID's counter and signals end of
//! interrupt. The SMMU's lines are edge-triggered, so nothing needs silencing at the source.
//! The MMU is off, so MMIO is reached at its physical address.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use core::time::Duration;

use pcie_iommu::firmware::dt::{DeviceTree, GicVersion};
use pcie_iommu::hal::{poll, Platform};
use pcie_iommu::Error;

/// INTIDs 0..1019 are real interrupts; 1020..1023 are special (1023: spurious).
const INTIDS: usize = 1020;

static VERSION: AtomicU8 = AtomicU8::new(0);
static GICD: AtomicUsize = AtomicUsize::new(0);
static GICC: AtomicUsize = AtomicUsize::new(0);
static COUNTS: [AtomicU32; INTIDS] = [const { AtomicU32::new(0) }; INTIDS];
static SPURIOUS: AtomicU32 = AtomicU32::new(0);

const V2: u8 = 2;
const V3: u8 = 3;

// Distributor (GICv2 and GICv3 alike unless noted).
const GICD_CTLR: usize = 0x000;
const GICD_IGROUPR: usize = 0x080;
const GICD_ISENABLER: usize = 0x100;
const GICD_ICPENDR: usize = 0x280;
const GICD_IPRIORITYR: usize = 0x400;
const GICD_ITARGETSR: usize = 0x800; // GICv2
const GICD_ICFGR: usize = 0xc00;
const GICD_IROUTER: usize = 0x6000; // GICv3, 64-bit per SPI
const GICD_CTLR_RWP: u32 = 1 << 31; // GICv3
// GICv2 CPU interface.
const GICC_CTLR: usize = 0x00;
const GICC_PMR: usize = 0x04;
const GICC_IAR: usize = 0x0c;
const GICC_EOIR: usize = 0x10;
// GICv3 redistributor (RD_base frame).
const GICR_WAKER: usize = 0x14;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// A GIC register write: no side effect on memory; the distributor's and CPU interface's
/// frames are device memory mapped 1:1 (MMU off).
fn write32(base: usize, offset: usize, value: u32) {
    // SAFETY: `base` is a GIC frame from the device tree that `init` mapped; offsets are
    // architectural registers inside it.
    unsafe { ((base + offset) as *mut u32).write_volatile(value) }
}

fn read32(base: usize, offset: usize) -> u32 {
    // SAFETY: as in `write32`.
    unsafe { ((base + offset) as *const u32).read_volatile() }
}

/// Brings the GIC up for CPU 0 and unmasks IRQs at this EL. Idempotent.
pub fn init(dt: &DeviceTree<'_>, platform: &impl Platform) -> Result<(), Error> {
    if VERSION.load(Ordering::Relaxed) != 0 {
        return Ok(());
    }
    let gic = dt.gic()?;
    let gicd = platform.map_mmio(gic.distributor.base, 0x1_0000)?.as_ptr() as usize;
    match gic.version {
        GicVersion::V2 => {
            let cpu = gic.cpu_interface.ok_or(Error::NotFound { what: "GICv2 CPU interface" })?;
            let gicc = platform.map_mmio(cpu.base, 0x2000)?.as_ptr() as usize;
            write32(gicd, GICD_CTLR, 1);
            write32(gicc, GICC_PMR, 0xff);
            write32(gicc, GICC_CTLR, 1);
            GICC.store(gicc, Ordering::Relaxed);
        }
        GicVersion::V3 => {
            // ARE (bit 4), EnableGrp1 (bit 1), EnableGrp0 (bit 0); DS is fixed at 1 here.
            write32(gicd, GICD_CTLR, 0x13);
            // RWP clears once the distributor took the write: QEMU completes it at once, real
            // GICs in microseconds; 10 ms is ample.
            poll(platform, "GICD_CTLR.RWP", Duration::from_millis(10), || (read32(gicd, GICD_CTLR) & GICD_CTLR_RWP == 0).then_some(()))?;
            let rd = gic.redistributors().next().ok_or(Error::NotFound { what: "GICv3 redistributor" })??;
            let gicr = platform.map_mmio(rd.base, 0x2_0000)?.as_ptr() as usize;
            write32(gicr, GICR_WAKER, read32(gicr, GICR_WAKER) & !WAKER_PROCESSOR_SLEEP);
            // ChildrenAsleep clears once the redistributor is awake (GICv3 §11.2): as above.
            poll(platform, "GICR_WAKER.ChildrenAsleep", Duration::from_millis(10), || (read32(gicr, GICR_WAKER) & WAKER_CHILDREN_ASLEEP == 0).then_some(()))?;
            // SAFETY: enabling the system-register CPU interface at the EL we run at, then
            // opening its priority mask and Group 1; no memory is touched.
            unsafe {
                if super::current_el() >= 2 {
                    // ICC_SRE_EL2: SRE (bit 0) and Enable (bit 3, EL1 may use it too).
                    asm!("mrs {t}, S3_4_C12_C9_5", "orr {t}, {t}, {m}", "msr S3_4_C12_C9_5, {t}", "isb", t = out(reg) _, m = in(reg) 9u64, options(nostack));
                } else {
                    asm!("mrs {t}, S3_0_C12_C12_5", "orr {t}, {t}, #1", "msr S3_0_C12_C12_5, {t}", "isb", t = out(reg) _, options(nostack));
                }
                // ICC_PMR_EL1 = 0xff, ICC_IGRPEN1_EL1 = 1.
                asm!("msr S3_0_C4_C6_0, {p}", "msr S3_0_C12_C12_7, {e}", "isb", p = in(reg) 0xffu64, e = in(reg) 1u64, options(nostack));
            }
        }
    }
    GICD.store(gicd, Ordering::Relaxed);
    VERSION.store(if gic.version == GicVersion::V2 { V2 } else { V3 }, Ordering::Release);
    // SAFETY: at EL2, physical IRQs reach this EL only with HCR_EL2.IMO set (otherwise they
    // target EL1 and stay pending); then IRQs are unmasked. The vector table's IRQ entry
    // saves every caller-saved register and returns with `eret`.
    unsafe {
        if super::current_el() >= 2 {
            asm!("mrs {t}, hcr_el2", "orr {t}, {t}, #(1 << 4)", "msr hcr_el2, {t}", "isb", t = out(reg) _, options(nostack));
        }
        asm!("msr daifclr, #2", "isb", options(nostack));
    }
    Ok(())
}

/// Enables SPI `intid` as edge-triggered, to CPU 0, with its pending state cleared.
pub fn enable_edge_spi(intid: u32) -> Result<(), Error> {
    let gicd = GICD.load(Ordering::Relaxed);
    let version = VERSION.load(Ordering::Acquire);
    let n = intid as usize;
    if version == 0 || !(32..INTIDS).contains(&n) {
        return Err(Error::InvalidField { what: "GIC SPI (or GIC not initialized)", value: u64::from(intid) });
    }
    let word = |base: usize, bits: usize| base + 4 * (n / (32 / bits));
    let cfg = word(GICD_ICFGR, 2);
    write32(gicd, cfg, read32(gicd, cfg) | 2 << (2 * (n % 16)));
    let prio = GICD_IPRIORITYR + (n & !3);
    write32(gicd, prio, read32(gicd, prio) & !(0xff << (8 * (n % 4))) | 0x80 << (8 * (n % 4)));
    if version == V2 {
        let target = GICD_ITARGETSR + (n & !3);
        write32(gicd, target, read32(gicd, target) & !(0xff << (8 * (n % 4))) | 1 << (8 * (n % 4)));
    } else {
        let group = word(GICD_IGROUPR, 1);
        write32(gicd, group, read32(gicd, group) | 1 << (n % 32));
        // Affinity 0.0.0.0, Interrupt_Routing_Mode 0 (the named PE).
        write32(gicd, GICD_IROUTER + 8 * n, 0);
        write32(gicd, GICD_IROUTER + 8 * n + 4, 0);
    }
    write32(gicd, word(GICD_ICPENDR, 1), 1 << (n % 32));
    write32(gicd, word(GICD_ISENABLER, 1), 1 << (n % 32));
    Ok(())
}

/// IRQs of `intid` taken so far.
pub fn count(intid: u32) -> u32 {
    COUNTS.get(intid as usize).map_or(0, |c| c.load(Ordering::Acquire))
}

/// Spurious acknowledgements (INTID 1023) so far.
pub fn spurious() -> u32 {
    SPURIOUS.load(Ordering::Relaxed)
}

/// The IRQ handler, entered from the vector table with caller-saved registers saved.
#[unsafe(no_mangle)]
extern "C" fn aarch64_irq() {
    let iar: u64 = match VERSION.load(Ordering::Acquire) {
        V2 => u64::from(read32(GICC.load(Ordering::Relaxed), GICC_IAR)),
        V3 => {
            let iar: u64;
            // SAFETY: ICC_IAR1_EL1 acknowledges the highest-priority pending Group 1 IRQ.
            unsafe { asm!("mrs {}, S3_0_C12_C12_0", out(reg) iar, options(nomem, nostack)) };
            iar
        }
        _ => return,
    };
    let intid = (iar & 0xff_ffff) as usize;
    match COUNTS.get(intid) {
        Some(c) => {
            c.fetch_add(1, Ordering::AcqRel);
        }
        None => {
            SPURIOUS.fetch_add(1, Ordering::Relaxed);
            return; // 1020..1023: no end of interrupt for a spurious acknowledge.
        }
    }
    if VERSION.load(Ordering::Relaxed) == V2 {
        // CAST: the IAR value read above, written back as is.
        write32(GICC.load(Ordering::Relaxed), GICC_EOIR, iar as u32);
    } else {
        // SAFETY: ICC_EOIR1_EL1 ends the interrupt just acknowledged.
        unsafe { asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) iar, options(nomem, nostack)) };
    }
}
