//! QEMU scenarios as data: which shape, which self-test, what the log must show.
//!
//! Adding a scenario is one entry in [`SCENARIOS`]. The expected strings are provisional until they
//! are aligned with the image; they all live in this file.
//!
//! Matching rule: every expected string must be a substring of the message of at least one decoded
//! line (timestamp, level and location are not searched). Order does not matter, so the image may
//! reorder its checks without touching this table; one substring per fact keeps the failure report
//! precise ("missing line ...").

use std::time::Duration;

/// The per-scenario bound. A TCG boot-to-exit takes 0.06-0.15 s here (bringup.md, step 4) and an
/// edu DMA waits 100 ms of virtual time (notes §3.1), so a whole self-test is a few seconds at
/// worst even on a loaded 2-core CI machine; 60 s is a >10x margin that still fails a hung
/// image within a minute instead of CI's 90-minute limit.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// For the `hang` harness tests: long enough for the image to boot and log (well under a second),
/// short enough not to dominate the suite.
const HANG_TIMEOUT: Duration = Duration::from_secs(5);

/// The image's last line on success is `all N checks passed`; every `Pass` scenario requires it on
/// top of its own lines, so an image that exits 33 without finishing its checks still fails.
pub(crate) const PASS_LINE: &str = "checks passed";

/// The self-tests the image selects with `-append test=NAME` (for `--list` and `run` help; `run`
/// passes any name through).
pub(crate) const SELF_TESTS: &[(&str, &str)] = &[
    ("discover", "report what was found and check it (default)"),
    ("pcie", "discover, then enable/disable SR-IOV VFs, the group attach guard, aliases against VT-d faults"),
    ("vtd", "discover, then edu DMA through VT-d tables: round trip, read-only and unmapped faults, 2M/1G pages"),
    ("smmu", "discover, then edu DMA through SMMUv3 stage 1/2, linear and 2-level stream tables: faults, events, CMDQ_ERR, 2M blocks"),
    ("fail", "a check that deliberately fails"),
    ("panic", "panics"),
    ("exception", "a CPU exception (x86 ud2, arm udf)"),
    ("hang", "never exits (tests the harness's timeout)"),
];

#[derive(Debug)]
pub(crate) enum Expect {
    /// Exit status exactly 33, [`PASS_LINE`] and every line found.
    Pass { lines: &'static [&'static str] },
    /// A test of the harness: the normal judge must call the run failed, with a reason containing
    /// `reason` (e.g. "timeout", "exit status 35"), and the log must still contain `lines`. The
    /// suite counts it as passed then.
    HarnessMustFail { reason: &'static str, lines: &'static [&'static str] },
}

#[derive(Debug)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) shape: &'static str,
    /// Passed to the image as `-append test=<self_test>`.
    pub(crate) self_test: &'static str,
    pub(crate) expect: Expect,
    pub(crate) timeout: Duration,
}

use Expect::{HarnessMustFail, Pass};

/// What every second-stage DMA run must show (legacy 48-bit shape).
const VTD_SECOND_STAGE_LINES: [&str; 14] = [
    "VT-d: legacy translation, domain 1, 4-level table",
    "check ok: DMA through mapped pages returns the bytes written",
    "source 00:01.0 reason 0x05 (write to a page without write permission) address 0x10002000 write",
    "check ok: the read-only page is unchanged",
    "source 00:01.0 reason 0x05 (write to a page without write permission) address 0x10001000 write",
    "check ok: the unmapped page is unchanged",
    "VT-d: 0x20000000 maps with a 2048 KiB page",
    "VT-d: 0x40000000 maps with a 1024 MiB page",
    "check ok: the split 1 GiB page still maps its neighbours",
    "check ok: a malformed descriptor is reported as IQE with its slot",
    "check ok: every fault of the flood raised the fault event and was serviced",
    "check ok: a fault flood past the recording registers sets PFO",
    "check ok: each function's DMA reaches only its own domain",
    "check ok: pass-through DMA reaches physical memory",
];

/// What every SMMUv3 DMA run must show (edu on the root bus: StreamID 8 through `iommu-map`).
const SMMU_DMA_LINES: [&str; 29] = [
    "SMMUv3: edu 0000:00:01.0 has StreamID 0x8",
    "SMMUv3 linear stream table: edu StreamID 0x8 attached to a stage 1 domain",
    "SMMUv3 stage 1: edu copied IOVA 0x10000000 -> 0x10001000: bytes equal true, 0 event(s)",
    "SMMUv3 event F_PERMISSION (0x13) StreamID 0x8 SSID None address 0x10002000",
    "SMMUv3 event F_TRANSLATION (0x10) StreamID 0x8 SSID None address 0x10001000",
    "check ok: the unmapped page is unchanged",
    "SMMUv3: 0x20000000 maps with a 2048 KiB block",
    "check ok: the split 2 MiB block still maps its neighbours",
    "SMMUv3 event F_TRANSLATION (0x10) StreamID 0x8 SSID None address 0x20001000",
    "check ok: an abort STE blocks DMA silently (no event, memory unchanged)",
    "SMMUv3 event C_BAD_STE (0x04) StreamID 0x8",
    "check ok: an illegal command is reported with its opcode and CMDQ_CONS.ERR = ILL",
    "check ok: commands and CMD_SYNC after the illegal command complete",
    "SMMUv3 linear stream table: edu StreamID 0x8 attached to a stage 2 domain",
    "SMMUv3 stage 2: edu copied IOVA 0x10000000 -> 0x10001000: bytes equal true, 0 event(s)",
    "SMMUv3 event F_PERMISSION (0x13) StreamID 0x8 SSID None address 0x10002000 ipa/fetch 0x10002000 write stage2 true",
    "SMMUv3 event F_TRANSLATION (0x10) StreamID 0x8 SSID None address 0x10001000 ipa/fetch 0x10001000 write stage2 true",
    "SMMUv3 event C_BAD_STREAMID (0x02) StreamID 0x8",
    "SMMUv3 2-level stream table: edu StreamID 0x8 attached to a stage 1 domain",
    "check ok: the 2-level table allocated one level-2 table, lazily",
    "check ok: the fault is reported at the domain's stage, as a write",
    "check ok: no global error is left active",
    "SMMUv3 nested: edu copied IOVA 0x10000000 -> 0x10001000: bytes equal true, 0 event(s)",
    "check ok: the nested fault is reported at stage 1 and memory is unchanged",
    "SMMUv3 nested: stage 2 maps IPA 0x40000000 with a 1024 MiB block",
    "check ok: the event queue's wired interrupt was taken as an IRQ",
    "check ok: the global error's wired interrupt was taken as an IRQ",
    "check ok: an event queue overflow is detected and acknowledged",
    "check ok: events are delivered again after the overflow",
];

#[rustfmt::skip]
pub(crate) const SCENARIOS: &[Scenario] = &[
    // ---- x86_64 (q35, PVH) ----
    Scenario { name: "q35-ecam", shape: "q35", self_test: "discover", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "MCFG: segment 0 ECAM 0xb0000000 buses 0-255",
            "0000:00:00.0 8086:29c0",
        ] } },
    Scenario { name: "q35-vtd-dmar", shape: "q35-vtd", self_test: "discover", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "DRHD 0: register base 0xfed90000",
            "device scopes match the functions on bus 0",
            "VT-d unit 0: VER 1.0",
        ] } },
    Scenario { name: "q35-vtd-scalable", shape: "q35-vtd-scalable", self_test: "discover", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "VT-d unit 0: VER 1.0",
            // notes §1.2: the values QEMU 10.0.2 reports for this exact -device line.
            "CAP 0x01d2008c222f0606",
            "ECAP 0x0000890000f00f4a",
            "scalable mode true",
        ] } },
    Scenario { name: "q35-rich", shape: "q35-rich", self_test: "discover", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "DRHD 0: register base 0xfed90000",
            "device scopes match the functions on bus 0",
            "0000:00:01.0 1234:11e8", // edu on the root bus (first free slot with -nodefaults)
            "1b36:000c", // pcie-root-port
            "1b36:0001", // pci-bridge
        ] } },
    // Issue 3: the whole hierarchy, compared with QEMU's own view over QMP (before and after
    // enabling VFs), unmanaged SR-IOV at the RIDs QEMU uses, the attach guard, and each edu's
    // requester ID as VT-d records it in a fault (behind the PCIe-to-PCI bridge: 04:00.0;
    // behind the conventional bridge: the bridge, 00:05.0; on a switch port, a root port and
    // the root bus: itself). Then the domain core (issue 4) with real DMA: the two edu behind
    // the PCIe-to-PCI bridge share a group and its alias, an edu on the root bus is alone.
    Scenario { name: "q35-pcie", shape: "q35-rich", self_test: "pcie", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "enumeration: 22 functions",
            "0000:06:00.0 104c:8232 PCI bridge [switch upstream port] buses 07-09",
            "0000:03:00.0 1b36:000e PCI bridge [PCIe-to-PCI bridge] buses 04-04",
            "group 0000:03:00.0: 3 function(s)",
            "check ok: the harness confirms the PCI tree equals QEMU's query-pci",
            "SR-IOV: igb: First VF Offset 0x80, VF Stride 2",
            "VF 3 (25) at 0000:01:10.6 class 020000, 2 BARs",
            "SR-IOV: nvme: First VF Offset 0x1, VF Stride 1",
            "VF 1 (27) at 0000:02:00.2 class 010802, 1 BARs",
            "check ok: every VF BAR has an address in the PF's aperture",
            // Issue 6: igb has no PRI, so its VFs cannot have page requests.
            "page requests for igb VF 0000:01:10.0: refused: PriUnavailable { pf: 0000:01:00.0 }",
            "check ok: page requests for a VF whose PF has no PRI are refused, naming the PF",
            "check ok: disabled VFs no longer answer and left the snapshot",
            "check ok: an attach that would split a group is refused",
            "edu 0000:00:01.0: VT-d fault from source 00:01.0",
            "edu 0000:04:03.0: VT-d fault from source 04:00.0",
            "edu 0000:04:04.0: VT-d fault from source 04:00.0",
            "edu 0000:05:04.0: VT-d fault from source 00:05.0",
            "edu 0000:08:00.0: VT-d fault from source 08:00.0",
            "edu 0000:0a:00.0: VT-d fault from source 0a:00.0",
            // Issue 4: the domain core over VT-d, with the bridge alias programmed for both edu.
            "check ok: core: an attach that would split a group is refused",
            "core: 0000:04:03.0 and 0000:04:04.0 copied in domain one: true true; 0000:00:01.0 in domain two: true; fault None",
            "core: after replace 0000:04:04.0 is in domain two too: true; both copy in domain two: true true",
            "core: after detach 0000:04:03.0 is blocked: true",
        ] } },
    // Issue 4: DMA from edu through the driver's own tables, in every table mode QEMU offers.
    // The unmap check fails if the invalidation is skipped (QEMU caches translations; tried);
    // the 2 MiB and 1 GiB checks fail if a split loses a neighbour. Then IQE recovery, the fault
    // event MSI serviced by an IDT handler through a 16-fault flood, PFO with the event masked,
    // two domains isolating two groups, and pass-through.
    Scenario { name: "q35-vtd-legacy48-dma", shape: "q35-vtd-dma", self_test: "vtd", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &VTD_SECOND_STAGE_LINES } },
    Scenario { name: "q35-vtd-legacy39-dma", shape: "q35-vtd39-dma", self_test: "vtd", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "VT-d: legacy translation, domain 1, 3-level table",
            "check ok: DMA through mapped pages returns the bytes written",
            "source 00:01.0 reason 0x05 (write to a page without write permission) address 0x10002000 write",
            "check ok: the unmapped page is unchanged",
            "VT-d: 0x20000000 maps with a 2048 KiB page",
            "VT-d: 0x40000000 maps with a 1024 MiB page",
            "check ok: the split 1 GiB page still maps its neighbours",
        ] } },
    Scenario { name: "q35-vtd-scalable-sl-dma", shape: "q35-vtd-sl-dma", self_test: "vtd", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "VT-d: scalable second-stage translation, domain 1, 4-level table",
            "check ok: DMA through mapped pages returns the bytes written",
            "source 00:01.0 reason 0x05 (write to a page without write permission) address 0x10002000 write",
            "check ok: the unmapped page is unchanged",
            "check ok: the split 2 MiB page still maps its neighbours",
            "check ok: the split 1 GiB page still maps its neighbours",
        ] } },
    Scenario { name: "q35-vtd-scalable-fl-dma", shape: "q35-vtd-fl-dma", self_test: "vtd", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "VT-d: ECAP.PRS clear: no page request queue (QEMU 10.0.2)",
            "check ok: no page request queue without ECAP.PRS",
            "VT-d: scalable first-stage translation, domain 1, 4-level table",
            "check ok: DMA through mapped pages returns the bytes written",
            "source 00:01.0 reason 0x85 (scalable mode: no write permission for a write or atomic request) address 0x10002000 write",
            "source 00:01.0 reason 0x71 (scalable mode: first-stage paging entry not present) address 0x10001000 write",
            "check ok: the unmapped page is unchanged",
            "check ok: a malformed descriptor is reported as IQE with its slot",
            "check ok: every fault of the flood raised the fault event and was serviced",
            "check ok: a fault flood past the recording registers sets PFO",
            "check ok: each function's DMA reaches only its own domain",
            "check ok: pass-through DMA reaches physical memory",
            "check ok: the split 2 MiB page still maps its neighbours",
            "check ok: the split 1 GiB page still maps its neighbours",
        ] } },
    Scenario { name: "q35-fail", shape: "q35", self_test: "fail", timeout: DEFAULT_TIMEOUT,
        expect: HarnessMustFail { reason: "exit status 35", lines: &["deliberate failure"] } },
    Scenario { name: "q35-panic", shape: "q35", self_test: "panic", timeout: DEFAULT_TIMEOUT,
        expect: HarnessMustFail { reason: "exit status 35", lines: &["panicked"] } },
    Scenario { name: "q35-exception", shape: "q35", self_test: "exception", timeout: DEFAULT_TIMEOUT,
        expect: HarnessMustFail { reason: "exit status 35", lines: &["CPU exception"] } },
    Scenario { name: "q35-hang", shape: "q35", self_test: "hang", timeout: HANG_TIMEOUT,
        expect: HarnessMustFail { reason: "timeout", lines: &["hang"] } },

    // ---- aarch64 (virt, DT) ----
    Scenario { name: "virt-smmuv3-el1", shape: "virt-smmuv3", self_test: "discover", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "ECAM from DT: 0x4010000000",
            "SMMUv3 from DT: 0x9050000",
            "0000:00:00.0 1b36:0008",
            "IDR0 0x0d44101b IDR1 0x02730010",
            "stream table true; SIDSIZE 16",
        ] } },
    Scenario { name: "virt-smmuv3-el2", shape: "virt-smmuv3-el2", self_test: "discover", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "ECAM from DT: 0x4010000000",
            "SMMUv3 from DT: 0x9050000",
            "0000:00:00.0 1b36:0008",
            "IDR0 0x0d44101b IDR1 0x02730010",
            "running at EL2",
        ] } },
    Scenario { name: "virt-rich", shape: "virt-rich", self_test: "discover", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "SMMUv3 from DT: 0x9050000",
            "1234:11e8", // edu on the root bus
            "1b36:000c", // pcie-root-port
            "1b36:0001", // pci-bridge
            "running at EL2",
        ] } },
    // Issue 3 on virt: no firmware ran, so the image numbers every bus and places every BAR;
    // the tree must still equal QEMU's view, and every edu must answer where it was placed.
    Scenario { name: "virt-pcie", shape: "virt-rich", self_test: "pcie", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &[
            "enumeration: 19 functions",
            "[switch upstream port]",
            "[PCIe-to-PCI bridge]",
            "check ok: the harness confirms the PCI tree equals QEMU's query-pci",
            "6 edu answered at their assigned BAR0",
            "SR-IOV: igb: First VF Offset 0x80, VF Stride 2",
            "at 0000:01:10.6 class 020000, 2 BARs",
            "SR-IOV: nvme: First VF Offset 0x1, VF Stride 1",
            "check ok: every VF BAR has an address in the PF's aperture",
            "page requests for igb VF 0000:01:10.0: refused: PriUnavailable { pf: 0000:01:00.0 }",
            "check ok: page requests for a VF whose PF has no PRI are refused, naming the PF",
            "check ok: disabled VFs no longer answer and left the snapshot",
            "check ok: an attach that would split a group is refused",
            // The domain core over the SMMUv3 (stage-1 domains, ASID tags) with edu DMA: the two
            // edu behind the PCIe-to-PCI bridge (08:00.0 alias StreamID) share a domain.
            "Arm VMSAv8-64 stage 1 tables",
            "check ok: core: an attach that would split a group is refused",
            "core: 0000:08:03.0 and 0000:08:04.0 copied in domain one: true true; 0000:00:01.0 in domain two: true; fault None",
            "core: after replace 0000:08:04.0 is in domain two too: true; both copy in domain two: true true",
            "core: after detach 0000:08:03.0 is blocked: true (fault None)",
            "check ok: core: destroy domain two",
            "running at EL2",
        ] } },
    // Issue 5: edu DMA through the driver's SMMUv3 stream table, CDs and page tables (stage 1,
    // stage 2, nested; linear and 2-level stream tables), at EL1 (GICv2) and EL2 (GICv3); the
    // event queue and global error SPIs are taken as IRQs through the GIC (v2 at EL1, v3 at EL2). The unmap
    // checks fail if the TLBI is skipped (QEMU caches translations; tried), the nested one if
    // the TLBI lacks the VMID (found that way), the GIC ones without IRQ_CTRL (tried).
    Scenario { name: "virt-smmuv3-el1-dma", shape: "virt-smmuv3-dma", self_test: "smmu", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &SMMU_DMA_LINES } },
    Scenario { name: "virt-smmuv3-el2-dma", shape: "virt-smmuv3-el2-dma", self_test: "smmu", timeout: DEFAULT_TIMEOUT,
        expect: Pass { lines: &SMMU_DMA_LINES } },
    Scenario { name: "virt-fail", shape: "virt-smmuv3", self_test: "fail", timeout: DEFAULT_TIMEOUT,
        expect: HarnessMustFail { reason: "exit status 35", lines: &["deliberate failure"] } },
    Scenario { name: "virt-panic", shape: "virt-smmuv3", self_test: "panic", timeout: DEFAULT_TIMEOUT,
        expect: HarnessMustFail { reason: "exit status 35", lines: &["panicked"] } },
    Scenario { name: "virt-exception", shape: "virt-smmuv3", self_test: "exception", timeout: DEFAULT_TIMEOUT,
        expect: HarnessMustFail { reason: "exit status 35", lines: &["CPU exception"] } },
    Scenario { name: "virt-hang", shape: "virt-smmuv3", self_test: "hang", timeout: HANG_TIMEOUT,
        expect: HarnessMustFail { reason: "timeout", lines: &["hang"] } },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes;
    use std::collections::HashSet;

    #[test]
    fn every_scenario_names_an_existing_shape() {
        for s in SCENARIOS {
            assert!(shapes::find(s.shape).is_some(), "{} names unknown shape {}", s.name, s.shape);
        }
    }

    #[test]
    fn names_unique_and_self_tests_known() {
        let mut seen = HashSet::new();
        for s in SCENARIOS {
            assert!(seen.insert(s.name), "duplicate scenario {}", s.name);
            assert!(SELF_TESTS.iter().any(|(t, _)| *t == s.self_test), "{}", s.name);
            assert!(s.timeout > Duration::ZERO && s.timeout <= DEFAULT_TIMEOUT, "{}", s.name);
        }
    }

    #[test]
    fn both_arches_have_every_harness_test() {
        for arch in shapes::Arch::ALL {
            for test in ["fail", "panic", "exception", "hang"] {
                let n = SCENARIOS
                    .iter()
                    .filter(|s| shapes::find(s.shape).unwrap().arch == arch && s.self_test == test)
                    .filter(|s| matches!(s.expect, HarnessMustFail { .. }))
                    .count();
                assert_eq!(n, 1, "{arch} {test}");
            }
        }
    }

    #[test]
    fn hang_tests_expect_a_short_timeout() {
        for s in SCENARIOS.iter().filter(|s| s.self_test == "hang") {
            assert!(matches!(s.expect, HarnessMustFail { reason: "timeout", .. }), "{}", s.name);
            assert!(s.timeout < DEFAULT_TIMEOUT, "{}", s.name);
        }
    }

    #[test]
    fn passing_scenarios_run_discover_and_expect_something() {
        for s in SCENARIOS {
            if let Pass { lines } = s.expect {
                assert!(matches!(s.self_test, "discover" | "pcie" | "vtd" | "smmu"), "{}", s.name);
                assert!(!lines.is_empty(), "{}", s.name);
            }
        }
    }
}
