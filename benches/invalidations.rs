//! Invalidations issued per map and unmap: a count table, not timing.
//!
//! Each row is one page-table operation on a 4-level table whose `PendingInvalidation` is then
//! given to `Unit::flush`; the VT-d model (`sim::vtd`, QEMU 10.0.2's CAP/ECAP) logs every
//! descriptor it processes. Columns: the descriptors one flush puts through the queue
//! (invalidations + the wait that confirms them), for
//! - legacy mode, second-stage table, IOTLB page-selective invalidation (CAP.PSI, MAMV 18);
//! - the same unit without CAP.PSI (every flush is domain-selective);
//! - scalable mode, first-stage table, PASID-based IOTLB invalidation.
//!
//! A map (not present to present) owes nothing unless the unit is in caching mode (CAP.CM, as
//! QEMU's is with `caching-mode=on`): the "map" rows are what a flush costs when it is owed.
//!
//! Run: `cargo bench -p pcie-iommu --features sim --bench invalidations`.

mod common;

use pcie_iommu::addr::{Iova, Pasid, PhysAddr};
use pcie_iommu::iommu::invalidation::PendingInvalidation;
use pcie_iommu::iommu::pagetable::{
    IoPageTable, PageSizes, PageTableFormat, Perms, VtdSecondStage, X86FirstStage,
};
use pcie_iommu::sim::vtd::{
    self, Config, Descriptor, IotlbGranularity, PasidIotlbGranularity, RemappingUnit, SimPlatform,
};
use pcie_iommu::vtd::{FlushScope, TableMode, Unit};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const BASE: u64 = 0x80_0000_0000;
const TARGET: u64 = 0x1_0000_0000;

/// One column: a unit and a table of one format.
struct Column<F: PageTableFormat> {
    platform: SimPlatform,
    model: RemappingUnit,
    unit: Unit,
    table: IoPageTable<F>,
    scope: FlushScope,
    did: u16,
}

impl<F: PageTableFormat> Column<F> {
    fn new(
        config: Config,
        mode: TableMode,
        format: F,
        sizes: PageSizes,
        scope: FlushScope,
    ) -> Self {
        let (platform, model) = vtd::pair(config);
        let mut unit = Unit::new(&platform, vtd::DEFAULT_BASE, model.window_size(), mode).unwrap();
        unit.enable_queued_invalidation(&platform, pcie_iommu::vtd::qi::DEFAULT_ENTRIES).unwrap();
        let did = unit.allocate_domain_id().unwrap();
        let mut table = IoPageTable::new(&platform, format, 4, sizes).unwrap();
        table.set_domain(u32::from(did));
        model.take_descriptors();
        Self { platform, model, unit, table, scope, did }
    }

    /// Flushes `pending` and counts what the model processed.
    fn flush(&mut self, pending: PendingInvalidation) -> Cell {
        self.unit.flush(&self.platform, pending, self.scope).unwrap();
        let log = self.model.take_descriptors();
        assert!(self.model.errors().is_empty(), "{:?}", self.model.errors());
        let mut c = Cell::default();
        for d in &log {
            match d.descriptor {
                Descriptor::Wait { .. } => c.waits += 1,
                Descriptor::Iotlb { granularity: IotlbGranularity::Page, .. }
                | Descriptor::PasidIotlb { granularity: PasidIotlbGranularity::Page, .. } => {
                    c.pages += 1
                }
                _ => c.wide += 1,
            }
        }
        c
    }

    fn map(&mut self, iova: u64, len: u64) -> Cell {
        let p = self.table.map(
            &self.platform,
            Iova(iova),
            PhysAddr(TARGET + (iova - BASE)),
            len,
            Perms::RW,
        );
        let p = p.unwrap();
        self.flush(p)
    }

    fn unmap(&mut self, iova: u64, len: u64) -> Cell {
        let p = self.table.unmap(&self.platform, Iova(iova), len).unwrap();
        self.flush(p)
    }

    /// Runs the scenario and returns one cell per row.
    fn run(&mut self) -> Vec<Cell> {
        // Rows, in order (see ROWS).
        let mut cells = vec![
            self.map(BASE, K4),
            self.unmap(BASE, K4),
            self.map(BASE, 256 * K4),
            self.unmap(BASE, 256 * K4),
            self.map(BASE + K4, 256 * K4),
            self.unmap(BASE + K4, 256 * K4),
            self.map(BASE + M2, M2),
            self.unmap(BASE + M2, K4),
            self.unmap(BASE + M2, M2),
            self.map(BASE + G1, G1),
            self.unmap(BASE + G1, G1),
        ];
        // 4 scattered 4 KiB maps merged into one pending value (4 ranges), then one flush.
        let mut merged = PendingInvalidation::new(u32::from(self.did));
        for i in 0..4u64 {
            let iova = BASE + 6 * M2 + i * 2 * K4;
            let p = self
                .table
                .map(&self.platform, Iova(iova), PhysAddr(TARGET), K4, Perms::RW)
                .unwrap();
            merged.merge(p);
        }
        cells.push(self.flush(merged));
        // 16 scattered 4 KiB maps merged into one pending value, then one flush.
        let mut merged = PendingInvalidation::new(u32::from(self.did));
        for i in 0..16u64 {
            let iova = BASE + 4 * M2 + i * 2 * K4;
            let p = self
                .table
                .map(&self.platform, Iova(iova), PhysAddr(TARGET), K4, Perms::RW)
                .unwrap();
            merged.merge(p);
        }
        cells.push(self.flush(merged));
        // Unmapping everything: every table below the root freed.
        cells.push(self.unmap(BASE, 2 * G1));
        cells
    }
}

/// Descriptors of one flush.
#[derive(Default)]
struct Cell {
    /// Page-selective (IOTLB PSI or PASID-based page granularity).
    pages: usize,
    /// Domain-selective or all-in-PASID.
    wide: usize,
    /// Invalidation waits.
    waits: usize,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.pages > 0 {
            parts.push(format!("{}P", self.pages));
        }
        if self.wide > 0 {
            parts.push(format!("{}D", self.wide));
        }
        parts.push(format!("{}W", self.waits));
        f.pad(&parts.join(" + "))
    }
}

const ROWS: [&str; 14] = [
    "map 4 KiB",
    "unmap 4 KiB (table emptied and freed)",
    "map 256 x 4 KiB, 1 MiB aligned",
    "unmap 256 x 4 KiB, 1 MiB aligned",
    "map 256 x 4 KiB, 4 KiB aligned",
    "unmap 256 x 4 KiB, 4 KiB aligned",
    "map 2 MiB",
    "unmap 4 KiB of a 2 MiB page (split)",
    "unmap the rest of the split 2 MiB",
    "map 1 GiB",
    "unmap 1 GiB",
    "4 scattered 4 KiB maps, merged, one flush",
    "16 scattered 4 KiB maps, merged, one flush",
    "unmap 2 GiB (everything)",
];

fn main() {
    let legacy = Config::qemu_legacy();
    let no_psi = Config::qemu_legacy().with_cap(legacy.cap & !(1 << 39));
    let ss_sizes = PageSizes::ALL;
    let pasid = Pasid::new(0).unwrap();
    let columns = [
        Column::new(legacy, TableMode::Legacy, VtdSecondStage::new(), ss_sizes, FlushScope::Iotlb)
            .run(),
        Column::new(no_psi, TableMode::Legacy, VtdSecondStage::new(), ss_sizes, FlushScope::Iotlb)
            .run(),
        Column::new(
            Config::qemu_scalable_first_stage(),
            TableMode::Scalable,
            X86FirstStage::new(),
            PageSizes::ALL,
            FlushScope::PasidIotlb(pasid),
        )
        .run(),
    ];
    println!("P = page-selective, D = domain-selective (or all-in-PASID), W = wait descriptors");
    println!(
        "descriptors per flush, invalidations + waits, from the VT-d model ({})",
        common::machine()
    );
    println!(
        "{:<44} {:>16} {:>16} {:>18}",
        "operation", "legacy IOTLB PSI", "legacy, no PSI", "scalable PASID FS"
    );
    for (r, name) in ROWS.iter().enumerate() {
        println!("{name:<44} {:>16} {:>16} {:>18}", columns[0][r], columns[1][r], columns[2][r]);
    }
}
