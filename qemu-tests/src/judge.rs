//! The judge: turns how QEMU ended plus the decoded log into a verdict. Pure functions, so every
//! combination of exit status, expected lines and timeout is unit-tested.

use std::time::Duration;

use crate::log::LogLine;
use crate::scenarios::{Expect, PASS_LINE};

/// QEMU's exit status that means "pass" on both architectures: x86 isa-debug-exit with 0x10
/// (`(0x10 << 1) | 1`), arm semihosting SYS_EXIT(33).
pub(crate) const PASS_STATUS: i32 = 33;

/// How the QEMU process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
    /// The harness killed it when the bound ran out.
    Timeout(Duration),
    /// It could not be started or waited for.
    Error(String),
}

/// Everything one QEMU run produced.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) exit: Exit,
    pub(crate) lines: Vec<LogLine>,
    /// Frames skipped by the decoder (it resynchronises at the next frame boundary).
    pub(crate) malformed: usize,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Passed,
    Failed { reason: String },
}

pub(crate) fn describe_exit(exit: &Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exit status {c}"),
        Exit::Signal(s) => format!("killed by signal {s}"),
        Exit::Timeout(t) => format!("timeout after {}", seconds(*t)),
        Exit::Error(e) => format!("could not run QEMU: {e}"),
    }
}

/// "60 s", "5 s", "0.25 s".
pub(crate) fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// `Passed` only on exit status exactly 33 with every `required` string found in some line's
/// message (any order). Anything else fails: 35 (the image's own failure), 0 (x86 triple fault
/// with -no-reboot, or PSCI off), 1 (QEMU refused the command line), a signal or a timeout.
pub(crate) fn judge(outcome: &Outcome, required: &[&str]) -> Verdict {
    if outcome.exit != Exit::Code(PASS_STATUS) {
        return Verdict::Failed { reason: describe_exit(&outcome.exit) };
    }
    let missing = missing_lines(&outcome.lines, required);
    if missing.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed { reason: missing_reason(&missing) }
    }
}

pub(crate) fn missing_lines<'a>(lines: &[LogLine], required: &[&'a str]) -> Vec<&'a str> {
    required
        .iter()
        .copied()
        .filter(|want| !lines.iter().any(|l| l.message.contains(want)))
        .collect()
}

fn missing_reason(missing: &[&str]) -> String {
    let quoted: Vec<String> = missing.iter().map(|m| format!("{m:?}")).collect();
    let s = if missing.len() == 1 { "" } else { "s" };
    format!("missing line{s} {}", quoted.join(", "))
}

/// A scenario's result: `ok` decides the suite; `detail` explains (reason for a failure, or what
/// the harness test saw).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ScenarioResult {
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

pub(crate) fn evaluate(expect: &Expect, outcome: &Outcome) -> ScenarioResult {
    match expect {
        Expect::Pass { lines } => {
            let mut required: Vec<&str> = lines.to_vec();
            required.push(PASS_LINE);
            match judge(outcome, &required) {
                Verdict::Passed => ScenarioResult { ok: true, detail: String::new() },
                Verdict::Failed { reason } => ScenarioResult { ok: false, detail: reason },
            }
        }
        Expect::HarnessMustFail { reason: want, lines } => {
            let got = match judge(outcome, &[PASS_LINE]) {
                Verdict::Passed => {
                    return ScenarioResult {
                        ok: false,
                        detail: format!(
                            "harness test: the judge passed a run that must fail ({want})"
                        ),
                    };
                }
                Verdict::Failed { reason } => reason,
            };
            if !got.contains(want) {
                return ScenarioResult {
                    ok: false,
                    detail: format!(
                        "harness test: judged failed with {got:?}, expected a reason containing {want:?}"
                    ),
                };
            }
            let missing = missing_lines(&outcome.lines, lines);
            if !missing.is_empty() {
                return ScenarioResult {
                    ok: false,
                    detail: format!(
                        "harness test: judged failed ({got}) but {}",
                        missing_reason(&missing)
                    ),
                };
            }
            ScenarioResult { ok: true, detail: format!("judged failed as it must: {got}") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(exit: Exit, messages: &[&str]) -> Outcome {
        Outcome {
            exit,
            lines: messages
                .iter()
                .map(|m| LogLine { message: m.to_string(), ..LogLine::default() })
                .collect(),
            malformed: 0,
            stderr: String::new(),
            elapsed: Duration::from_millis(100),
        }
    }

    fn failed(reason: &str) -> Verdict {
        Verdict::Failed { reason: reason.into() }
    }

    const LOG: &[&str] = &[
        "MCFG: segment 0 ECAM 0xb0000000 buses 0-255",
        "0000:00:00.0 8086:29c0",
        "all 2 checks passed",
    ];

    #[test]
    fn pass_needs_exactly_33_and_every_line() {
        let want = ["0000:00:00.0 8086:29c0", "ECAM 0xb0000000"];
        assert_eq!(judge(&outcome(Exit::Code(33), LOG), &want), Verdict::Passed);
        // Order does not matter.
        assert_eq!(
            judge(&outcome(Exit::Code(33), LOG), &["checks passed", "MCFG"]),
            Verdict::Passed
        );
        assert_eq!(judge(&outcome(Exit::Code(33), &[]), &[]), Verdict::Passed);
    }

    #[test]
    fn exit_statuses_other_than_33_fail_whatever_the_log() {
        for (code, reason) in [
            (35, "exit status 35"),
            (0, "exit status 0"),
            (1, "exit status 1"),
            (67, "exit status 67"),
        ] {
            assert_eq!(judge(&outcome(Exit::Code(code), LOG), &[]), failed(reason));
        }
        assert_eq!(judge(&outcome(Exit::Signal(6), LOG), &[]), failed("killed by signal 6"));
        assert_eq!(
            judge(&outcome(Exit::Timeout(Duration::from_secs(60)), LOG), &[]),
            failed("timeout after 60 s")
        );
        assert_eq!(
            judge(&outcome(Exit::Error("no such file".into()), LOG), &[]),
            failed("could not run QEMU: no such file")
        );
    }

    #[test]
    fn exit_status_is_reported_before_missing_lines() {
        assert_eq!(judge(&outcome(Exit::Code(35), &[]), &["x"]), failed("exit status 35"));
        assert_eq!(
            judge(&outcome(Exit::Timeout(Duration::from_millis(1500)), &[]), &["x"]),
            failed("timeout after 1.50 s")
        );
    }

    #[test]
    fn missing_lines_are_named() {
        assert_eq!(
            judge(&outcome(Exit::Code(33), LOG), &["VT-d unit 0: VER 1.0"]),
            failed("missing line \"VT-d unit 0: VER 1.0\"")
        );
        assert_eq!(
            judge(&outcome(Exit::Code(33), LOG), &["zz", "8086:29c0", "yy"]),
            failed("missing lines \"zz\", \"yy\"")
        );
    }

    #[test]
    fn only_messages_are_searched() {
        let mut o = outcome(Exit::Code(33), &["hello"]);
        o.lines[0].location = Some(("boot/src/main.rs".into(), 1));
        o.lines[0].level = Some("INFO");
        assert_eq!(judge(&o, &["main.rs"]), failed("missing line \"main.rs\""));
        assert_eq!(judge(&o, &["INFO"]), failed("missing line \"INFO\""));
    }

    #[test]
    fn pass_scenarios_also_need_the_final_line() {
        let expect = Expect::Pass { lines: &["8086:29c0"] };
        assert!(evaluate(&expect, &outcome(Exit::Code(33), LOG)).ok);
        let r = evaluate(&expect, &outcome(Exit::Code(33), &["0000:00:00.0 8086:29c0"]));
        assert_eq!(
            r,
            ScenarioResult { ok: false, detail: "missing line \"checks passed\"".into() }
        );
        let r = evaluate(&expect, &outcome(Exit::Code(35), LOG));
        assert_eq!(r, ScenarioResult { ok: false, detail: "exit status 35".into() });
    }

    #[test]
    fn harness_tests() {
        let hang = Expect::HarnessMustFail { reason: "timeout", lines: &["hang"] };
        let five = Exit::Timeout(Duration::from_secs(5));
        let r = evaluate(&hang, &outcome(five.clone(), &["self-test hang: spinning"]));
        assert_eq!(
            r,
            ScenarioResult {
                ok: true,
                detail: "judged failed as it must: timeout after 5 s".into()
            }
        );
        // Failed for the wrong reason.
        let r = evaluate(&hang, &outcome(Exit::Code(35), &["hang"]));
        assert!(!r.ok && r.detail.contains("\"exit status 35\""), "{r:?}");
        // Failed for the right reason, but the image never said it got there.
        let r = evaluate(&hang, &outcome(five, &[]));
        assert!(!r.ok && r.detail.contains("missing line \"hang\""), "{r:?}");
        // Passed although it must fail.
        let fail =
            Expect::HarnessMustFail { reason: "exit status 35", lines: &["deliberate failure"] };
        let r = evaluate(
            &fail,
            &outcome(Exit::Code(33), &["deliberate failure", "all 1 checks passed"]),
        );
        assert!(!r.ok && r.detail.contains("passed a run that must fail"), "{r:?}");
        // Exit 33 without the final line is a failure of the judge, but not the expected reason.
        let r = evaluate(&fail, &outcome(Exit::Code(33), &["deliberate failure"]));
        assert!(!r.ok && r.detail.contains("missing line"), "{r:?}");
        let r = evaluate(&fail, &outcome(Exit::Code(35), &["check 2: deliberate failure"]));
        assert!(r.ok, "{r:?}");
    }
}
