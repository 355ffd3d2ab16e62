//! Enhanced Configuration Access Mechanism (PCIe Base 6.0 §7.2.2): each function's 4 KiB of
//! configuration space at `base + (bus - start_bus) << 20 | dev << 15 | fn << 12`.

use core::cell::Cell;
use core::fmt;

use super::config::{AccessCounts, ConfigAccess};

use crate::addr::{Bdf, PhysAddr};
use crate::error::{Error, Result};
use crate::hal::Platform;
use crate::mmio::MmioRegion;

/// Bytes of configuration space per bus (32 devices x 8 functions x 4 KiB).
pub const BUS_SIZE: u64 = 1 << 20;

/// One ECAM window as firmware describes it (an MCFG entry, or a DT `pci-host-ecam-generic`
/// node's `reg` and `bus-range`). `base` is the address of `start_bus`'s configuration space.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EcamWindow {
    /// Physical address of the configuration space of `start_bus`, device 0, function 0.
    pub base: PhysAddr,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded (inclusive).
    pub end_bus: u8,
}

impl EcamWindow {
    /// Bytes the window spans, or [`Error::InvalidField`] if `end_bus < start_bus`.
    pub fn size(&self) -> Result<u64> {
        if self.end_bus < self.start_bus {
            return Err(Error::InvalidField {
                what: "ECAM bus range end",
                value: u64::from(self.end_bus),
            });
        }
        Ok((u64::from(self.end_bus) - u64::from(self.start_bus) + 1) * BUS_SIZE)
    }
}

/// Configuration space of one segment's bus range, mapped.
///
/// It counts its accesses (a `Cell`, so an `Ecam` is not `Sync`: a hypervisor that shares one
/// between CPUs wraps it in its own lock, as it must anyway to keep read-modify-write sequences
/// on one function atomic).
#[derive(Debug)]
pub struct Ecam {
    region: MmioRegion,
    window: EcamWindow,
    counts: Cell<AccessCounts>,
}

/// Vendor ID a read of an absent function returns (PCIe Base 6.0 §2.3.2: a configuration read
/// that no function claims completes with UR and reads all-ones).
pub const ABSENT: u16 = 0xffff;

impl Ecam {
    /// Maps `window` through the platform.
    pub fn map<P: Platform + ?Sized>(platform: &P, window: EcamWindow) -> Result<Self> {
        let size = window.size()?;
        window.base.checked_add(size)?;
        if !window.base.is_aligned(BUS_SIZE) {
            return Err(Error::Misaligned {
                what: "ECAM base",
                value: window.base.0,
                align: BUS_SIZE,
            });
        }
        let len = usize::try_from(size)
            .map_err(|_| Error::MmioUnavailable { base: window.base.0, size })?;
        let ptr = platform.map_mmio(window.base, len)?;
        // SAFETY: `Platform::map_mmio` returns a device mapping of exactly `len` bytes at
        // `window.base`, valid for the platform's lifetime (its implementation-safety contract).
        let region = unsafe { MmioRegion::new(ptr, len) };
        Ok(Self { region, window, counts: Cell::new(AccessCounts::default()) })
    }

    /// The window this accessor covers.
    pub const fn window(&self) -> EcamWindow {
        self.window
    }

    /// Accesses made so far through this window (including those outside it, which cost a
    /// trap on real hardware too).
    pub fn counts(&self) -> AccessCounts {
        self.counts.get()
    }

    fn count(&self, write: bool) {
        let mut c = self.counts.get();
        if write {
            c.writes += 1;
        } else {
            c.reads += 1;
        }
        self.counts.set(c);
    }

    fn offset(&self, bdf: Bdf, offset: u16, width: u16) -> Option<usize> {
        if bdf.segment != self.window.segment
            || bdf.bus < self.window.start_bus
            || bdf.bus > self.window.end_bus
            || !offset.is_multiple_of(width)
            || offset >= 4096
        {
            return None;
        }
        let bus = usize::from(bdf.bus - self.window.start_bus);
        Some((bus << 20) | (usize::from(bdf.devfn) << 12) | usize::from(offset))
    }

    /// Reads 32 bits of `bdf`'s configuration space; all-ones outside the window, past 4 KiB
    /// or misaligned, as a read that no function claims.
    pub fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.count(false);
        self.offset(bdf, offset, 4).map_or(u32::MAX, |o| self.region.read32(o))
    }

    /// Reads 16 bits (see [`read32`](Self::read32)).
    pub fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        self.count(false);
        self.offset(bdf, offset, 2).map_or(u16::MAX, |o| self.region.read16(o))
    }

    /// Reads 8 bits (see [`read32`](Self::read32)).
    pub fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        self.count(false);
        self.offset(bdf, offset, 1).map_or(u8::MAX, |o| self.region.read8(o))
    }

    /// Writes 32 bits; dropped outside the window, as no function would claim it.
    pub fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        self.count(true);
        if let Some(o) = self.offset(bdf, offset, 4) {
            self.region.write32(o, value);
        }
    }

    /// Writes 16 bits (see [`write32`](Self::write32)).
    pub fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        self.count(true);
        if let Some(o) = self.offset(bdf, offset, 2) {
            self.region.write16(o, value);
        }
    }

    /// Writes 8 bits (see [`write32`](Self::write32)).
    pub fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        self.count(true);
        if let Some(o) = self.offset(bdf, offset, 1) {
            self.region.write8(o, value);
        }
    }

    /// Whether `bdf` lies in this window.
    pub fn covers(&self, bdf: Bdf) -> bool {
        bdf.segment == self.window.segment
            && (self.window.start_bus..=self.window.end_bus).contains(&bdf.bus)
    }

    /// Identity of the function at `bdf`, or `None` if nothing answers there.
    pub fn identify(&self, bdf: Bdf) -> Option<FunctionId> {
        let id = self.read32(bdf, 0x00);
        // CAST: the low and high halves of the ID register.
        let (vendor, device) = (id as u16, (id >> 16) as u16);
        if vendor == ABSENT || vendor == 0 {
            return None;
        }
        let class_rev = self.read32(bdf, 0x08);
        let header = self.read8(bdf, 0x0e);
        Some(FunctionId {
            bdf,
            vendor,
            device,
            class: class_rev >> 8,
            revision: class_rev as u8,
            header_type: header,
        })
    }

    /// The functions present on `bus`: function 0 of every device, and functions 1-7 of
    /// devices whose function 0 sets the multi-function bit (PCIe Base 6.0 §7.5.1.1.9).
    pub fn functions_on_bus(&self, bus: u8) -> impl Iterator<Item = FunctionId> + '_ {
        let segment = self.window.segment;
        (0u8..32).flat_map(move |dev| {
            let f0 = Bdf { segment, bus, devfn: dev << 3 };
            let first = self.identify(f0);
            let multi = first.is_some_and(|f| f.header_type & 0x80 != 0);
            let rest = (1u8..8).filter(move |_| multi).filter_map(move |func| {
                self.identify(Bdf { segment, bus, devfn: (dev << 3) | func })
            });
            first.into_iter().chain(rest)
        })
    }
}

impl ConfigAccess for Ecam {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        Ecam::read32(self, bdf, offset)
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        Ecam::write32(self, bdf, offset, value)
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        Ecam::write16(self, bdf, offset, value)
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        Ecam::write8(self, bdf, offset, value)
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        Ecam::read16(self, bdf, offset)
    }
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        Ecam::read8(self, bdf, offset)
    }
}

/// Every ECAM window of the machine (several segments, or several bus ranges of one), routing
/// each access to the window that covers it.
#[derive(Debug)]
pub struct EcamSet<const N: usize> {
    windows: [Option<Ecam>; N],
}

impl<const N: usize> Default for EcamSet<N> {
    fn default() -> Self {
        Self { windows: [const { None }; N] }
    }
}

impl<const N: usize> EcamSet<N> {
    /// Adds a window, or [`Error::CapacityExceeded`] when `N` are already held, or
    /// [`Error::InvalidField`] when it overlaps one already held (same segment, shared buses).
    pub fn insert(&mut self, ecam: Ecam) -> Result<()> {
        let w = ecam.window();
        for held in self.windows.iter().flatten() {
            let h = held.window();
            if h.segment == w.segment && w.start_bus <= h.end_bus && h.start_bus <= w.end_bus {
                return Err(Error::InvalidField {
                    what: "ECAM window overlapping another (bus)",
                    value: u64::from(w.start_bus),
                });
            }
        }
        let slot = self
            .windows
            .iter_mut()
            .find(|s| s.is_none())
            .ok_or(Error::CapacityExceeded { what: "ECAM windows", capacity: N })?;
        *slot = Some(ecam);
        Ok(())
    }

    /// The windows held.
    pub fn windows(&self) -> impl Iterator<Item = &Ecam> {
        self.windows.iter().flatten()
    }

    /// The window covering `bdf`.
    pub fn window_for(&self, bdf: Bdf) -> Option<&Ecam> {
        self.windows().find(|e| e.covers(bdf))
    }

    /// Accesses made through all windows.
    pub fn counts(&self) -> AccessCounts {
        self.windows().fold(AccessCounts::default(), |a, e| {
            let c = e.counts();
            AccessCounts { reads: a.reads + c.reads, writes: a.writes + c.writes }
        })
    }
}

impl<const N: usize> ConfigAccess for EcamSet<N> {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.window_for(bdf).map_or(u32::MAX, |e| e.read32(bdf, offset))
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(e) = self.window_for(bdf) {
            e.write32(bdf, offset, value);
        }
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        if let Some(e) = self.window_for(bdf) {
            e.write16(bdf, offset, value);
        }
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        if let Some(e) = self.window_for(bdf) {
            e.write8(bdf, offset, value);
        }
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        self.window_for(bdf).map_or(u16::MAX, |e| e.read16(bdf, offset))
    }
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        self.window_for(bdf).map_or(u8::MAX, |e| e.read8(bdf, offset))
    }
}

/// What identifies a function: its address, IDs, class and header type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FunctionId {
    /// Where it is.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code: base class, sub-class, programming interface.
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Header type, bit 7 = multi-function.
    pub header_type: u8,
}

impl FunctionId {
    /// Whether the header is a PCI-to-PCI bridge's (type 1).
    pub const fn is_bridge(&self) -> bool {
        self.header_type & 0x7f == 1
    }

    /// A short name of the class code (PCI Code and ID Assignment spec §1).
    pub const fn class_name(&self) -> &'static str {
        class_name(self.class)
    }
}

/// A short name for a class code (base class, sub-class, programming interface).
pub const fn class_name(class: u32) -> &'static str {
    match (class >> 16, (class >> 8) & 0xff, class & 0xff) {
        (0x00, _, _) => "unclassified",
        (0x01, 0x01, _) => "IDE controller",
        (0x01, 0x06, _) => "SATA controller",
        (0x01, 0x08, 0x02) => "NVMe controller",
        (0x01, _, _) => "storage controller",
        (0x02, 0x00, _) => "Ethernet controller",
        (0x02, _, _) => "network controller",
        (0x03, _, _) => "display controller",
        (0x04, _, _) => "multimedia controller",
        (0x05, _, _) => "memory controller",
        (0x06, 0x00, _) => "host bridge",
        (0x06, 0x01, _) => "ISA bridge",
        (0x06, 0x04, _) => "PCI bridge",
        (0x06, 0x09, _) => "PCI bridge (semi-transparent)",
        (0x06, _, _) => "bridge",
        (0x07, _, _) => "communication controller",
        (0x08, 0x06, _) => "IOMMU",
        (0x08, _, _) => "system peripheral",
        (0x0c, 0x03, _) => "USB controller",
        (0x0c, 0x05, _) => "SMBus controller",
        (0x0c, _, _) => "serial bus controller",
        (0xff, _, _) => "vendor-specific",
        _ => "other",
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for FunctionId {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "{} {=u16:04x}:{=u16:04x} rev {=u8:#04x} class {=u32:06x} ({=str}){=str}",
            self.bdf,
            self.vendor,
            self.device,
            self.revision,
            self.class,
            self.class_name(),
            if self.header_type & 0x80 != 0 { ", multi-function" } else { "" }
        )
    }
}

impl fmt::Display for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:04x}:{:04x} class {:06x}", self.bdf, self.vendor, self.device, self.class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::{DmaPages, Instant};
    use core::ptr::NonNull;

    /// A platform whose "MMIO" is a host buffer standing in for two buses of ECAM.
    struct FakeEcam {
        mem: std::cell::UnsafeCell<Vec<u32>>,
    }

    // SAFETY: test double; map_mmio returns the host buffer, which outlives every use.
    unsafe impl Platform for FakeEcam {
        fn alloc_dma_pages(&self, count: usize, _align: usize) -> Result<DmaPages> {
            Err(Error::OutOfMemory { pages: count })
        }
        unsafe fn free_dma_pages(&self, _pages: DmaPages) {}
        fn map_mmio(&self, _base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
            // SAFETY: the test holds the only reference to the buffer.
            let v = unsafe { &mut *self.mem.get() };
            assert!(size <= v.len() * 4);
            Ok(NonNull::new(v.as_mut_ptr()).unwrap().cast())
        }
        fn map_firmware(&self, base: PhysAddr, size: usize) -> Result<NonNull<u8>> {
            self.map_mmio(base, size)
        }
        fn write_barrier(&self) {}
        fn read_barrier(&self) {}
        fn now(&self) -> Instant {
            Instant(0)
        }
    }

    fn fake(functions: &[(u8, u8, u8, u32, u8)]) -> FakeEcam {
        let mut mem = vec![u32::MAX; 2 << 18];
        for &(bus, dev, func, id, header) in functions {
            let base =
                ((usize::from(bus) << 20) | (usize::from(dev) << 15) | (usize::from(func) << 12))
                    / 4;
            mem[base] = id;
            mem[base + 2] = 0x0600_0002;
            mem[base + 3] = u32::from(header) << 16;
        }
        FakeEcam { mem: std::cell::UnsafeCell::new(mem) }
    }

    #[test]
    fn scans_multi_function_devices_only_when_flagged() {
        let p = fake(&[
            (0, 0, 0, 0x29c0_8086, 0x00),
            (0, 0, 1, 0x1111_8086, 0x00), // ignored: device 0 is not multi-function
            (0, 0x1f, 0, 0x2918_8086, 0x80),
            (0, 0x1f, 3, 0x2930_8086, 0x00),
            (1, 0, 0, 0x10c9_8086, 0x00),
        ]);
        let window =
            EcamWindow { base: PhysAddr(0xb000_0000), segment: 0, start_bus: 0, end_bus: 1 };
        let ecam = Ecam::map(&p, window).unwrap();
        let found: Vec<_> =
            ecam.functions_on_bus(0).map(|f| (f.bdf.dev(), f.bdf.func(), f.device)).collect();
        assert_eq!(found, [(0, 0, 0x29c0), (0x1f, 0, 0x2918), (0x1f, 3, 0x2930)]);
        assert_eq!(ecam.functions_on_bus(1).count(), 1);
        assert_eq!(ecam.identify(Bdf::new(0, 0, 0, 0).unwrap()).unwrap().class, 0x06_0000);
    }

    #[test]
    fn outside_the_window_reads_all_ones() {
        let p = fake(&[(0, 0, 0, 0x29c0_8086, 0)]);
        let window = EcamWindow { base: PhysAddr(0), segment: 0, start_bus: 0, end_bus: 1 };
        let ecam = Ecam::map(&p, window).unwrap();
        assert_eq!(ecam.read32(Bdf::new(0, 2, 0, 0).unwrap(), 0), u32::MAX);
        assert_eq!(ecam.read32(Bdf::new(1, 0, 0, 0).unwrap(), 0), u32::MAX, "other segment");
        assert_eq!(ecam.read32(Bdf::new(0, 0, 0, 0).unwrap(), 4096), u32::MAX);
        assert_eq!(ecam.read32(Bdf::new(0, 0, 0, 0).unwrap(), 2), u32::MAX, "misaligned");
        assert_eq!(ecam.read16(Bdf::new(0, 0, 0, 0).unwrap(), 2), 0x29c0);
    }

    #[test]
    fn rejects_bad_windows() {
        let p = fake(&[]);
        let bad = EcamWindow { base: PhysAddr(0x1000), segment: 0, start_bus: 0, end_bus: 0 };
        assert!(matches!(Ecam::map(&p, bad), Err(Error::Misaligned { .. })));
        let bad = EcamWindow { base: PhysAddr(0), segment: 0, start_bus: 2, end_bus: 1 };
        assert!(matches!(Ecam::map(&p, bad), Err(Error::InvalidField { .. })));
    }
}
