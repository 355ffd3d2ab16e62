//! QEMU's `edu` test device as a DMA master (hw/misc/edu.c; notes §3.1). Its DMA goes through
//! the IOMMU, so the self-tests use it to make translated requests from a known requester ID.

use core::time::Duration;

use pcie_iommu::hal::{poll, Platform};
use pcie_iommu::mmio::MmioRegion;
use pcie_iommu::pci::config::reg;
use pcie_iommu::pci::ConfigAccess;
use pcie_iommu::{Bdf, Error, PhysAddr};

/// Vendor and device ID.
pub const ID: (u16, u16) = (0x1234, 0x11e8);
/// The device-side buffer's bus address inside edu (4 KiB).
const BUFFER: u64 = 0x4_0000;
const BAR0_SIZE: usize = 1 << 20;
const REG_ID: usize = 0x00;
const REG_DMA_SRC: usize = 0x80;
const REG_DMA_DST: usize = 0x88;
const REG_DMA_COUNT: usize = 0x90;
const REG_DMA_CMD: usize = 0x98;
const CMD_START: u64 = 1 << 0;
const CMD_TO_RAM: u64 = 1 << 1;

/// How long one edu DMA may take.
///
/// TIMEOUT: edu starts the transfer from a timer 100 ms of virtual time after the command
/// (edu.c `edu_dma_timer`); under TCG virtual time follows the host clock, so 2 s leaves a
/// 20x margin on a loaded machine.
const DMA_TIMEOUT: Duration = Duration::from_secs(2);

/// One edu function with its BAR0 mapped, memory decode and bus mastering on.
pub struct Edu {
    regs: MmioRegion,
    /// Where it is.
    pub bdf: Bdf,
}

impl Edu {
    /// Opens the edu at `bdf` whose BAR0 is at `bar0` (assigned by firmware or enumeration).
    pub fn open<P: Platform + ?Sized>(platform: &P, cfg: &impl ConfigAccess, bdf: Bdf, bar0: u64) -> Result<Self, Error> {
        let command = cfg.read16(bdf, reg::COMMAND);
        cfg.write16(bdf, reg::COMMAND, command | reg::COMMAND_MEMORY | reg::COMMAND_BUS_MASTER);
        let ptr = platform.map_mmio(PhysAddr(bar0), BAR0_SIZE)?;
        // SAFETY: `map_mmio` mapped edu's 1 MiB BAR0 with device attributes.
        let regs = unsafe { MmioRegion::new(ptr, BAR0_SIZE) };
        let id = regs.read32(REG_ID);
        if id != 0x0100_00ed {
            return Err(Error::Hardware { what: "edu ID register (expected 0x010000ed)", value: u64::from(id) });
        }
        Ok(Self { regs, bdf })
    }

    /// Copies `len` bytes between RAM at bus address `ram` and edu's buffer, in the direction
    /// given, and waits for the device to finish. A request the IOMMU blocks fails silently on
    /// edu's side; the caller looks at the IOMMU's fault records.
    pub fn dma<P: Platform + ?Sized>(&self, platform: &P, ram: u64, len: u32, to_ram: bool) -> Result<(), Error> {
        let (src, dst, dir) = if to_ram { (BUFFER, ram, CMD_TO_RAM) } else { (ram, BUFFER, 0) };
        self.regs.write64(REG_DMA_SRC, src);
        self.regs.write64(REG_DMA_DST, dst);
        self.regs.write64(REG_DMA_COUNT, u64::from(len));
        platform.write_barrier();
        self.regs.write64(REG_DMA_CMD, CMD_START | dir);
        poll(platform, "edu DMA command bit 0", DMA_TIMEOUT, || (self.regs.read64(REG_DMA_CMD) & CMD_START == 0).then_some(()))
    }
}
