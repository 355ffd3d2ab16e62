//! Machine shapes: the QEMU machines the firmware image is booted on, as data.
//!
//! Adding a shape is one entry in [`SHAPES`]. Every device line here was checked to realize in
//! QEMU 10.0.2 (`/work/shared/notes/qemu-10.0.2.md` §1.1, §3, §5).

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub(crate) const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The bare-metal Rust target the firmware image is built for.
    pub(crate) fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none",
        }
    }

    pub(crate) fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// Arguments every shape of this architecture gets after `-M`.
    ///
    /// `-nodefaults -display none` keeps firmware text and GUI out of the way, so the serial port
    /// carries nothing but the image's defmt frames (bringup.md pitfalls 8, 9). Exit status: x86
    /// `isa-debug-exit` gives `(v << 1) | 1`; arm semihosting passes SYS_EXIT's code through. x86
    /// `-no-reboot` turns a triple fault into an exit (status 0, a failure) instead of a reboot loop.
    #[rustfmt::skip]
    pub(crate) fn base_args(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[
                "-m", "256M", "-nodefaults", "-display", "none", "-no-reboot",
                "-serial", "stdio",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            ],
            Arch::Aarch64 => &[
                "-cpu", "max", "-m", "512M", "-nodefaults", "-display", "none",
                "-serial", "stdio", "-semihosting",
            ],
        }
    }

    /// The shape `cargo xtask run` boots when no `--machine` is given: the richest one.
    pub(crate) fn default_shape(self) -> &'static str {
        match self {
            Arch::X86_64 => "q35-rich",
            Arch::Aarch64 => "virt-rich",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug)]
pub(crate) struct Shape {
    pub(crate) name: &'static str,
    pub(crate) arch: Arch,
    pub(crate) description: &'static str,
    /// The `-M` value.
    pub(crate) machine: &'static str,
    /// Devices and options on top of [`Arch::base_args`], in groups that are concatenated (so a
    /// shape can reuse a shared list such as [`RICH_TOPOLOGY`]).
    pub(crate) args: &'static [&'static [&'static str]],
}

/// Scalable-mode VT-d with first-stage tables and the PASID bit: the configuration QEMU accepts
/// with `x-flts` (aw-bits must be 48 then; notes §1.1).
/// The DMA master: edu with a full 64-bit DMA mask (its default is 28 bits, notes §3.1).
const EDU: &str = "edu,dma_mask=0xffffffffffffffff";

const VTD_SCALABLE: &str = "intel-iommu,x-scalable-mode=on,x-pasid-mode=on,x-flts=on,aw-bits=48";

/// Every topology case the enumerator must handle: a DMA master on the root bus (full 64-bit DMA
/// mask, notes §3.1) and one directly on a root port, SR-IOV PFs behind root ports (igb: 8 VFs,
/// offset 0x80, stride 2; nvme: offset 1, stride 1; notes §3.3), a PCIe switch (x3130 upstream
/// port with two xio3130 downstream ports, a DMA master below one), and requester-ID aliasing
/// behind a PCIe-to-PCI bridge (two edu sharing one alias) and behind a conventional PCI bridge
/// (notes §3.6). Chassis/slot pairs are unique, as QEMU requires. igb without a netdev makes
/// QEMU warn "nic igb.0 has no peer" on stderr; harmless, and any netdev would be network
/// plumbing the tests do not need. QEMU 10.0.2 accepts all of it on virt too.
#[rustfmt::skip]
const RICH_TOPOLOGY: &[&str] = &[
    "-device", "edu,dma_mask=0xffffffffffffffff",
    "-device", "pcie-root-port,id=rp1,chassis=1,slot=1",
    "-device", "igb,bus=rp1",
    "-device", "nvme-subsys,id=subsys0",
    "-device", "pcie-root-port,id=rp2,chassis=2,slot=2",
    "-device", "nvme,serial=deadbeef,subsys=subsys0,bus=rp2,sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2",
    "-device", "pcie-root-port,id=rp3,chassis=3,slot=3",
    "-device", "pcie-pci-bridge,bus=rp3,id=pb1",
    "-device", "edu,bus=pb1,addr=3,dma_mask=0xffffffffffffffff",
    "-device", "edu,bus=pb1,addr=4,dma_mask=0xffffffffffffffff",
    "-device", "pci-bridge,id=b2,chassis_nr=5",
    "-device", "edu,bus=b2,addr=4,dma_mask=0xffffffffffffffff",
    "-device", "pcie-root-port,id=rp4,chassis=4,slot=4",
    "-device", "x3130-upstream,id=up1,bus=rp4",
    "-device", "xio3130-downstream,id=dn1,bus=up1,chassis=11,slot=0",
    "-device", "xio3130-downstream,id=dn2,bus=up1,chassis=12,slot=1",
    "-device", "edu,bus=dn1,dma_mask=0xffffffffffffffff",
    "-device", "pcie-root-port,id=rp6,chassis=6,slot=6",
    "-device", "edu,bus=rp6,dma_mask=0xffffffffffffffff",
];

#[rustfmt::skip]
pub(crate) const SHAPES: &[Shape] = &[
    Shape { name: "q35", arch: Arch::X86_64, machine: "q35", args: &[],
        description: "q35, no IOMMU: ECAM from ACPI MCFG" },
    Shape { name: "q35-vtd", arch: Arch::X86_64, machine: "q35", args: &[&["-device", "intel-iommu"]],
        description: "q35 + legacy-mode VT-d (DMAR in ACPI, registers at 0xfed90000)" },
    Shape { name: "q35-vtd-scalable", arch: Arch::X86_64, machine: "q35", args: &[&["-device", VTD_SCALABLE]],
        description: "q35 + scalable-mode VT-d, first-stage tables, PASID capability" },
    Shape { name: "q35-vtd-dma", arch: Arch::X86_64, machine: "q35", args: &[&["-device", "intel-iommu", "-device", EDU, "-device", EDU]],
        description: "legacy VT-d (48-bit, 4-level) + two edu on the root bus as DMA masters (two groups)" },
    Shape { name: "q35-vtd39-dma", arch: Arch::X86_64, machine: "q35", args: &[&["-device", "intel-iommu,aw-bits=39", "-device", EDU, "-device", EDU]],
        description: "legacy VT-d (39-bit, 3-level) + edu" },
    Shape { name: "q35-vtd-sl-dma", arch: Arch::X86_64, machine: "q35", args: &[&["-device", "intel-iommu,x-scalable-mode=on", "-device", EDU, "-device", EDU]],
        description: "scalable-mode VT-d, second-stage only + edu" },
    Shape { name: "q35-vtd-fl-dma", arch: Arch::X86_64, machine: "q35", args: &[&["-device", VTD_SCALABLE, "-device", EDU, "-device", EDU]],
        description: "scalable-mode VT-d, first-stage only + edu" },
    Shape { name: "q35-rich", arch: Arch::X86_64, machine: "q35", args: &[&["-device", VTD_SCALABLE], RICH_TOPOLOGY],
        description: "scalable VT-d + edu, igb and nvme SR-IOV PFs behind root ports, edu behind a PCIe-to-PCI and a PCI bridge" },
    Shape { name: "virt-smmuv3", arch: Arch::Aarch64, machine: "virt,iommu=smmuv3", args: &[],
        description: "arm virt + SMMUv3 (nested-capable), entered at EL1; ECAM and SMMU from the DT" },
    Shape { name: "virt-smmuv3-el2", arch: Arch::Aarch64, machine: "virt,iommu=smmuv3,virtualization=on", args: &[],
        description: "arm virt + SMMUv3, entered at EL2 (virtualization=on)" },
    Shape { name: "virt-smmuv3-dma", arch: Arch::Aarch64, machine: "virt,iommu=smmuv3", args: &[&["-device", EDU]],
        description: "arm virt + SMMUv3 at EL1 (GICv2, virt's default) + edu on the root bus as DMA master (StreamID 8)" },
    Shape { name: "virt-smmuv3-el2-dma", arch: Arch::Aarch64, machine: "virt,iommu=smmuv3,virtualization=on,gic-version=3", args: &[&["-device", EDU]],
        description: "arm virt + SMMUv3 at EL2 with a GICv3 + edu on the root bus as DMA master (StreamID 8)" },
    Shape { name: "virt-rich", arch: Arch::Aarch64, machine: "virt,iommu=smmuv3,virtualization=on", args: &[RICH_TOPOLOGY],
        description: "EL2 + SMMUv3 + the same topology as q35-rich (BARs unassigned: no firmware runs)" },
];

pub(crate) fn find(name: &str) -> Option<&'static Shape> {
    SHAPES.iter().find(|s| s.name == name)
}

impl Shape {
    /// The full QEMU command line (program first) that boots `kernel` with `test=<self_test>`.
    /// With `qmp`, QEMU also serves QMP on that Unix socket and the image is told so
    /// (`host-check=qmp`), for the enumeration check in `qmp.rs`.
    ///
    /// Always TCG: under nested KVM here a boot is ~13x slower and guest SSE fails (bringup.md
    /// pitfall 11), and TCG behaves the same on every machine. `extra` goes last so it can add or
    /// override options.
    pub(crate) fn command_line(
        &self,
        kernel: &Path,
        self_test: &str,
        qmp: Option<&Path>,
        extra: &[String],
    ) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![self.arch.qemu().into(), "-M".into(), self.machine.into()];
        v.extend(self.arch.base_args().iter().map(OsString::from));
        v.extend(["-accel", "tcg"].map(OsString::from));
        v.extend(self.args.iter().flat_map(|g| g.iter()).map(OsString::from));
        v.push("-kernel".into());
        v.push(kernel.into());
        let mut append = format!("test={self_test}");
        if let Some(socket) = qmp {
            v.push("-qmp".into());
            v.push(format!("unix:{},server=on,wait=off", socket.display()).into());
            append.push_str(" host-check=qmp");
        }
        v.push("-append".into());
        v.push(append.into());
        v.extend(extra.iter().map(OsString::from));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn line(shape: &str, extra: &[String]) -> Vec<String> {
        find(shape)
            .unwrap()
            .command_line(Path::new("/fw.elf"), "discover", None, extra)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    fn has_pair(v: &[String], a: &str, b: &str) -> bool {
        v.windows(2).any(|w| w[0] == a && w[1] == b)
    }

    #[test]
    fn names_unique_and_default_shapes_exist() {
        let mut seen = HashSet::new();
        for s in SHAPES {
            assert!(seen.insert(s.name), "duplicate shape {}", s.name);
            assert!(!s.description.is_empty());
        }
        for a in Arch::ALL {
            assert_eq!(find(a.default_shape()).unwrap().arch, a);
        }
    }

    #[test]
    fn every_shape_is_tcg_headless_with_serial_on_stdio() {
        for s in SHAPES {
            let v = line(s.name, &[]);
            assert_eq!(v[0], s.arch.qemu());
            assert!(has_pair(&v, "-accel", "tcg"), "{}", s.name);
            assert!(!v.iter().any(|a| a.contains("kvm")), "{}", s.name);
            assert!(has_pair(&v, "-serial", "stdio"), "{}", s.name);
            assert!(has_pair(&v, "-display", "none"), "{}", s.name);
            assert!(v.iter().any(|a| a == "-nodefaults"), "{}", s.name);
            assert!(has_pair(&v, "-kernel", "/fw.elf"), "{}", s.name);
            assert!(has_pair(&v, "-append", "test=discover"), "{}", s.name);
            assert_eq!(v.iter().filter(|a| *a == "-M").count(), 1, "{}", s.name);
            // Every group ends with a value (no dangling "-device" at the end of a list).
            for g in s.args {
                assert!(!g.last().is_some_and(|a| a.starts_with('-')), "{}", s.name);
            }
        }
    }

    #[test]
    fn exit_devices_per_arch() {
        let x = line("q35", &[]);
        assert!(has_pair(&x, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(x.iter().any(|a| a == "-no-reboot"));
        let a = line("virt-smmuv3", &[]);
        assert!(a.iter().any(|a| a == "-semihosting"));
        assert!(has_pair(&a, "-cpu", "max"));
    }

    #[test]
    fn exact_q35_and_vtd_lines() {
        assert_eq!(
            line("q35-vtd", &[]).join(" "),
            "qemu-system-x86_64 -M q35 -m 256M -nodefaults -display none -no-reboot -serial stdio \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -accel tcg -device intel-iommu \
             -kernel /fw.elf -append test=discover"
        );
        assert!(has_pair(&line("q35-vtd-scalable", &[]), "-device", VTD_SCALABLE));
    }

    #[test]
    fn arm_machines_and_exception_levels() {
        assert!(has_pair(&line("virt-smmuv3", &[]), "-M", "virt,iommu=smmuv3"));
        for s in ["virt-smmuv3-el2", "virt-rich"] {
            assert!(has_pair(&line(s, &[]), "-M", "virt,iommu=smmuv3,virtualization=on"), "{s}");
        }
    }

    #[test]
    fn rich_shapes() {
        let q = line("q35-rich", &[]);
        assert!(has_pair(&q, "-device", VTD_SCALABLE));
        for v in [&q, &line("virt-rich", &[])] {
            assert!(has_pair(v, "-device", "edu,dma_mask=0xffffffffffffffff"));
            assert!(has_pair(v, "-device", "igb,bus=rp1"));
            assert!(has_pair(v, "-device", "pcie-pci-bridge,bus=rp3,id=pb1"));
            assert!(has_pair(v, "-device", "edu,bus=b2,addr=4,dma_mask=0xffffffffffffffff"));
            assert!(has_pair(v, "-device", "x3130-upstream,id=up1,bus=rp4"));
            assert!(has_pair(v, "-device", "edu,bus=rp6,dma_mask=0xffffffffffffffff"));
            assert!(v.iter().any(|a| a.starts_with("nvme,") && a.contains("sriov_max_vfs=2")));
        }
    }

    #[test]
    fn extra_args_go_last() {
        let extra = vec!["-d".to_string(), "int".to_string()];
        let v = line("q35", &extra);
        assert_eq!(&v[v.len() - 2..], &extra[..]);
    }

    #[test]
    fn arch_names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.name()), Some(a));
        }
        assert_eq!(Arch::parse("arm"), None);
    }
}
