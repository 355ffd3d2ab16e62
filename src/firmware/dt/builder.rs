//! Test-only FDT writer, able to write malformed trees on purpose.

/// Offsets of the header fields, in 32-bit words (DTSpec §5.2).
pub(super) mod field {
    pub(crate) const MAGIC: usize = 0;
    pub(crate) const TOTALSIZE: usize = 1;
    pub(crate) const OFF_DT_STRUCT: usize = 2;
    pub(crate) const OFF_DT_STRINGS: usize = 3;
    pub(crate) const OFF_MEM_RSVMAP: usize = 4;
    pub(crate) const VERSION: usize = 5;
    pub(crate) const SIZE_DT_STRUCT: usize = 9;
}

pub(super) const BEGIN_NODE: u32 = 1;
pub(super) const END_NODE: u32 = 2;
pub(super) const PROP: u32 = 3;
pub(super) const NOP: u32 = 4;
pub(super) const END: u32 = 9;

/// Appends structure tokens and strings, then lays out a version-17 blob:
/// header, reservation block, structure block, strings block.
#[derive(Default)]
pub(super) struct FdtBuilder {
    structure: Vec<u8>,
    strings: Vec<u8>,
    reservations: Vec<(u64, u64)>,
    /// Leave the terminating entry out of the reservation block.
    pub(super) unterminated_reservations: bool,
}

impl FdtBuilder {
    pub(super) fn new() -> Self {
        Self::default()
    }

    fn pad(&mut self) {
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
    }

    pub(super) fn token(&mut self, token: u32) -> &mut Self {
        self.structure.extend_from_slice(&token.to_be_bytes());
        self
    }

    /// Raw bytes in the structure block (padded to 4 afterwards).
    pub(super) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.structure.extend_from_slice(bytes);
        self.pad();
        self
    }

    pub(super) fn begin(&mut self, name: &str) -> &mut Self {
        self.token(BEGIN_NODE);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad();
        self
    }

    pub(super) fn end(&mut self) -> &mut Self {
        self.token(END_NODE)
    }

    fn name_offset(&mut self, name: &str) -> u32 {
        let offset = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        offset
    }

    /// A property with an explicit (possibly lying) length and name offset.
    pub(super) fn raw_prop(&mut self, len: u32, name_offset: u32, value: &[u8]) -> &mut Self {
        self.token(PROP);
        self.structure.extend_from_slice(&len.to_be_bytes());
        self.structure.extend_from_slice(&name_offset.to_be_bytes());
        self.raw(value)
    }

    pub(super) fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let offset = self.name_offset(name);
        self.raw_prop(value.len() as u32, offset, value)
    }

    pub(super) fn cells(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let value: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &value)
    }

    pub(super) fn string(&mut self, name: &str, value: &str) -> &mut Self {
        self.strings_prop(name, &[value])
    }

    pub(super) fn strings_prop(&mut self, name: &str, values: &[&str]) -> &mut Self {
        let value: Vec<u8> = values.iter().flat_map(|s| s.bytes().chain([0])).collect();
        self.prop(name, &value)
    }

    pub(super) fn flag(&mut self, name: &str) -> &mut Self {
        self.prop(name, &[])
    }

    pub(super) fn reserve(&mut self, base: u64, size: u64) -> &mut Self {
        self.reservations.push((base, size));
        self
    }

    /// The blob with a final FDT_END token.
    pub(super) fn finish(&mut self) -> Vec<u8> {
        self.token(END);
        self.finish_without_end()
    }

    /// The blob exactly as the tokens were written.
    pub(super) fn finish_without_end(&self) -> Vec<u8> {
        let mut rsvmap: Vec<u8> = Vec::new();
        for (base, size) in &self.reservations {
            rsvmap.extend_from_slice(&base.to_be_bytes());
            rsvmap.extend_from_slice(&size.to_be_bytes());
        }
        if !self.unterminated_reservations {
            rsvmap.extend_from_slice(&[0; 16]);
        }
        let off_rsvmap = 40;
        let off_struct = off_rsvmap + rsvmap.len();
        let off_strings = off_struct + self.structure.len();
        let total = off_strings + self.strings.len();
        let header = [
            0xd00d_feed,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsvmap as u32,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structure.len() as u32,
        ];
        let mut blob: Vec<u8> = header.iter().flat_map(|w| w.to_be_bytes()).collect();
        blob.extend_from_slice(&rsvmap);
        blob.extend_from_slice(&self.structure);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

/// Overwrites header word `index` of `blob`.
pub(super) fn set_header(blob: &mut [u8], index: usize, value: u32) {
    blob[index * 4..index * 4 + 4].copy_from_slice(&value.to_be_bytes());
}

/// Reads header word `index` of `blob`.
pub(super) fn header(blob: &[u8], index: usize) -> u32 {
    u32::from_be_bytes(blob[index * 4..index * 4 + 4].try_into().unwrap())
}

/// Phandles of the synthetic machine.
pub(super) const GIC: u32 = 1;
pub(super) const SMMU: u32 = 2;
pub(super) const SMMU2: u32 = 3;
pub(super) const ITS: u32 = 4;

/// A small QEMU-`virt`-like machine: root cells 2/2, a GICv3 (phandle [`GIC`]), two SMMUv3s
/// ([`SMMU`], [`SMMU2`]), an ITS, and one `pcie` node whose properties `pcie` writes (after
/// `compatible` and the PCI cell counts).
pub(super) fn machine(pcie: impl FnOnce(&mut FdtBuilder)) -> Vec<u8> {
    let mut b = FdtBuilder::new();
    b.reserve(0x4800_0000, 0x1000);
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .cells("interrupt-parent", &[GIC]);
    b.begin("chosen")
        .string("bootargs", "console=ttyAMA0")
        .string("stdout-path", "serial0:115200n8")
        .end();
    b.begin("aliases").string("serial0", "/pl011@9000000").end();
    b.begin("memory@40000000").string("device_type", "memory");
    b.cells("reg", &[0, 0x4000_0000, 0, 0x4000_0000, 0x1, 0, 0, 0x8000_0000]).end();
    b.begin("reserved-memory")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1])
        .flag("ranges");
    b.begin("tz@4f000000").cells("reg", &[0x4f00_0000, 0x10_0000]).flag("no-map").end();
    b.begin("off@4e000000").cells("reg", &[0x4e00_0000, 0x1000]).string("status", "disabled").end();
    b.begin("pool").cells("size", &[0x10_0000]).end();
    b.end();
    b.begin("psci")
        .strings_prop("compatible", &["arm,psci-1.0", "arm,psci-0.2"])
        .string("method", "smc")
        .end();
    b.begin("pl011@9000000").strings_prop("compatible", &["arm,pl011", "arm,primecell"]);
    b.cells("reg", &[0, 0x0900_0000, 0, 0x1000]).end();
    b.begin("intc@8000000").string("compatible", "arm,gic-v3").cells("phandle", &[GIC]);
    b.cells("#interrupt-cells", &[3])
        .flag("interrupt-controller")
        .cells("#redistributor-regions", &[2]);
    b.cells(
        "reg",
        &[0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0x10_0000, 0, 0x0900_0000, 0, 0x10_0000],
    );
    b.cells("#address-cells", &[2]).cells("#size-cells", &[2]);
    b.begin("its@8080000")
        .string("compatible", "arm,gic-v3-its")
        .cells("phandle", &[ITS])
        .flag("msi-controller");
    b.cells("reg", &[0, 0x0808_0000, 0, 0x2_0000]).end();
    b.end();
    b.begin("smmu@9050000").string("compatible", "arm,smmu-v3").cells("phandle", &[SMMU]);
    b.cells("reg", &[0, 0x0905_0000, 0, 0x2_0000]).cells("#iommu-cells", &[1]);
    b.cells("interrupts", &[0, 0x4a, 1, 0, 0x4d, 1])
        .strings_prop("interrupt-names", &["eventq", "gerror"]);
    b.cells("msi-parent", &[ITS]).end();
    b.begin("smmu@9070000").string("compatible", "arm,smmu-v3").cells("phandle", &[SMMU2]);
    b.cells("reg", &[0, 0x0907_0000, 0, 0x2_0000]).cells("#iommu-cells", &[1]).end();
    b.begin("pcie@10000000")
        .string("compatible", "pci-host-ecam-generic")
        .string("device_type", "pci");
    b.cells("#address-cells", &[3]).cells("#size-cells", &[2]);
    pcie(&mut b);
    b.end();
    b.end();
    b.finish()
}

/// The default `pcie` properties of [`machine`]: ECAM at 0x3f000000 for buses 0-15.
pub(super) fn ecam_16_buses(b: &mut FdtBuilder) {
    b.cells("reg", &[0, 0x3f00_0000, 0, 0x100_0000]).cells("bus-range", &[0, 15]);
}
