//! The image's command line: space-separated `key=value` words; `test=NAME` picks the self-test.

/// Word the harness adds when it can answer host checks (QEMU runs with a QMP socket).
pub const HOST_CHECK_QMP: &str = "host-check=qmp";

/// Whether the harness offers host checks on this run.
pub fn host_check_offered(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == HOST_CHECK_QMP)
}

/// The self-tests one image offers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    /// Report what the firmware tables and hardware describe, and check it is consistent.
    Discover,
    /// `discover`, then the active PCIe checks: unmanaged SR-IOV enable/disable, the group
    /// attach guard, and (x86 with VT-d) requester-ID aliases against VT-d fault records.
    Pcie,
    /// `discover`, then DMA through VT-d translation (x86 with `intel-iommu`).
    Vtd,
    /// `discover`, then DMA through the SMMUv3 (Arm virt with `iommu=smmuv3`).
    Smmu,
    /// A check that fails on purpose (tests the harness).
    Fail,
    /// A panic (tests the harness).
    Panic,
    /// A CPU exception (tests the harness and the exception vectors).
    Exception,
    /// Never exits (tests the harness's timeout).
    Hang,
    /// A name the image does not know.
    Unknown(&'static str),
}

impl SelfTest {
    pub const KNOWN: &'static str = "discover, pcie, vtd, smmu, fail, panic, exception, hang";

    /// The self-test named by the last `test=` word, `discover` when there is none.
    pub fn from_cmdline(cmdline: &'static str) -> Self {
        let mut test = SelfTest::Discover;
        for word in cmdline.split_ascii_whitespace() {
            if word == HOST_CHECK_QMP {
                continue;
            }
            if let Some(name) = word.strip_prefix("test=") {
                test = match name {
                    "discover" => SelfTest::Discover,
                    "pcie" => SelfTest::Pcie,
                    "vtd" => SelfTest::Vtd,
                    "smmu" => SelfTest::Smmu,
                    "fail" => SelfTest::Fail,
                    "panic" => SelfTest::Panic,
                    "exception" => SelfTest::Exception,
                    "hang" => SelfTest::Hang,
                    other => SelfTest::Unknown(other),
                };
            } else {
                defmt::warn!("command line: ignoring \"{=str}\"", word);
            }
        }
        test
    }

    pub fn name(self) -> &'static str {
        match self {
            SelfTest::Discover => "discover",
            SelfTest::Pcie => "pcie",
            SelfTest::Vtd => "vtd",
            SelfTest::Smmu => "smmu",
            SelfTest::Fail => "fail",
            SelfTest::Panic => "panic",
            SelfTest::Exception => "exception",
            SelfTest::Hang => "hang",
            SelfTest::Unknown(name) => name,
        }
    }
}
