//! What the entry code hands the common firmware: command line, firmware tables, memory map.

/// Where the firmware's description of the machine is.
#[derive(Clone, Copy)]
pub enum FirmwareTables {
    /// Nothing was found.
    None,
    /// ACPI, from the RSDP at this physical address (x86 PVH `rsdp_paddr`).
    Acpi { rsdp: u64 },
    /// A flattened device tree (Arm virt: at the start of RAM).
    DeviceTree { blob: &'static [u8] },
}

/// Kinds of memory the firmware reports.
#[derive(Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum RegionKind {
    /// Usable RAM.
    Ram,
    /// ACPI tables (reclaimable once parsed; this firmware keeps them).
    AcpiReclaimable,
    /// Anything else.
    Reserved,
}

/// One memory map entry.
#[derive(Clone, Copy, defmt::Format)]
pub struct Region {
    pub base: u64,
    pub size: u64,
    pub kind: RegionKind,
}

/// Capacity of [`MemoryMap`]; q35's e820 has about ten entries and virt's DT one or two.
pub const MAX_REGIONS: usize = 64;

/// A fixed-capacity memory map (no heap in the firmware).
#[derive(Clone, Copy)]
pub struct MemoryMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
    /// Entries that did not fit.
    pub dropped: usize,
}

impl MemoryMap {
    pub const fn new() -> Self {
        Self { regions: [Region { base: 0, size: 0, kind: RegionKind::Reserved }; MAX_REGIONS], len: 0, dropped: 0 }
    }

    pub fn push(&mut self, base: u64, size: u64, kind: RegionKind) {
        if self.len < MAX_REGIONS {
            self.regions[self.len] = Region { base, size, kind };
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }
}

/// Everything the entry code found.
pub struct BootInfo {
    pub cmdline: &'static str,
    pub cmdline_truncated: bool,
    pub tables: FirmwareTables,
    pub memory: MemoryMap,
    pub memmap_dropped: usize,
    /// aarch64: the exception level at entry (1 or 2); x86: 0.
    pub exception_level: u8,
    /// A problem the entry code met, reported once the logger runs.
    pub boot_error: Option<(&'static str, u64)>,
}

impl BootInfo {
    pub const fn empty() -> Self {
        Self {
            cmdline: "",
            cmdline_truncated: false,
            tables: FirmwareTables::None,
            memory: MemoryMap::new(),
            memmap_dropped: 0,
            exception_level: 0,
            boot_error: None,
        }
    }
}
