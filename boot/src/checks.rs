//! Self-test bookkeeping: every check is logged; the run passes only if all passed.

use pcie_iommu::Error;

use crate::{arch, ExitCode};

pub struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    pub const fn new() -> Self {
        Self { passed: 0, failed: 0 }
    }

    /// Records and logs one check.
    pub fn check(&mut self, what: &str, ok: bool) -> bool {
        if ok {
            self.passed += 1;
            defmt::info!("check ok: {=str}", what);
        } else {
            self.failed += 1;
            defmt::error!("check FAILED: {=str}", what);
        }
        ok
    }

    /// Records a check that a library call succeeded, and logs the error otherwise.
    pub fn ok<T>(&mut self, what: &str, result: Result<T, Error>) -> Option<T> {
        match result {
            Ok(value) => {
                self.passed += 1;
                defmt::info!("check ok: {=str}", what);
                Some(value)
            }
            Err(e) => {
                self.failed += 1;
                defmt::error!("check FAILED: {=str}: {}", what, e);
                None
            }
        }
    }

    /// Ends the run: status 33 only if at least one check ran and none failed.
    pub fn finish(self, test: &str) -> ! {
        if self.failed == 0 && self.passed > 0 {
            defmt::info!("self-test {=str}: all {=u32} checks passed", test, self.passed);
            arch::exit(ExitCode::Pass)
        }
        defmt::error!(
            "self-test {=str}: {=u32} of {=u32} checks failed",
            test,
            self.failed,
            self.failed + self.passed
        );
        arch::exit(ExitCode::Fail)
    }
}
