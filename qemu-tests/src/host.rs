//! The host-test phase: `cargo test` at the workspace root, its output streamed through, and its
//! `test result:` lines summed.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::image::cargo;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) passed: usize,
    pub(crate) failed: usize,
    pub(crate) skipped: usize,
}

impl Counts {
    pub(crate) fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

/// Parses `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`
/// (libtest's summary, one per test binary and one for doc tests). Ignored counts as skipped.
pub(crate) fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_status, fields) = rest.split_once(". ")?;
    let mut counts = Counts::default();
    let mut seen = false;
    for field in fields.split(';') {
        let mut words = field.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        match what {
            "passed" => (counts.passed, seen) = (n, true),
            "failed" => counts.failed = n,
            "ignored" => counts.skipped = n,
            _ => {}
        }
    }
    seen.then_some(counts)
}

/// Sums every result line. A cargo that failed without any failing test behind it (a compile
/// error, a crashed test binary) counts as one failure, so it can never read as green.
pub(crate) fn summarize<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    cargo_succeeded: bool,
) -> Counts {
    let mut total = Counts::default();
    for line in lines {
        if let Some(c) = parse_result_line(line) {
            total.add(c);
        }
    }
    if !cargo_succeeded && total.failed == 0 {
        total.failed = 1;
    }
    total
}

/// The host-test command. Plain `cargo test` runs the workspace's default members (the library
/// and this harness); `--workspace` would also pull in `boot`, which only builds for the
/// bare-metal targets. `--no-fail-fast` so one failing binary does not hide the others' counts.
pub(crate) fn command(root: &Path) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root).args(["test", "--no-fail-fast"]).stdin(Stdio::null());
    cmd
}

/// Runs the host tests, streaming cargo's stdout to ours as it comes, and returns the counts.
pub(crate) fn run(root: &Path) -> Counts {
    let mut child = match command(root).stdout(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xtask: cannot run cargo test: {e}");
            return Counts { failed: 1, ..Counts::default() };
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = Vec::new();
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(out, "{line}");
        if line.starts_with("test result:") {
            lines.push(line);
        }
    }
    let ok = child.wait().is_ok_and(|s| s.success());
    summarize(lines.iter().map(String::as_str), ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let ok = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.03s";
        assert_eq!(parse_result_line(ok), Some(Counts { passed: 12, failed: 0, skipped: 1 }));
        let bad = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 5 filtered out; finished in 1.20s";
        assert_eq!(parse_result_line(bad), Some(Counts { passed: 3, failed: 2, skipped: 0 }));
        assert_eq!(parse_result_line("running 12 tests"), None);
        assert_eq!(parse_result_line("test foo::test_result ... ok"), None);
        assert_eq!(parse_result_line("test result: garbage"), None);
    }

    #[test]
    fn sums_every_binary_and_doc_tests() {
        let out = "\
running 2 tests
test a ... ok
test b ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running unittests src/main.rs (target/debug/deps/xtask-123)
test result: FAILED. 40 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.50s

   Doc-tests pcie_iommu
test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.20s
";
        assert_eq!(summarize(out.lines(), false), Counts { passed: 47, failed: 1, skipped: 3 });
    }

    #[test]
    fn a_failed_cargo_without_failing_tests_is_a_failure() {
        // Compile error: no result line at all.
        assert_eq!(summarize([].into_iter(), false), Counts { passed: 0, failed: 1, skipped: 0 });
        // One crate's tests ran, then another failed to build.
        let ran = [
            "test result: ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        ];
        assert_eq!(summarize(ran, false), Counts { passed: 7, failed: 1, skipped: 0 });
        assert_eq!(summarize(ran, true), Counts { passed: 7, failed: 0, skipped: 0 });
    }

    #[test]
    fn command_runs_default_members() {
        let cmd = command(Path::new("/w"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["test", "--no-fail-fast"]);
    }
}
