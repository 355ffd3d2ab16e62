//! `cargo xtask run|test`: the host side of pcie-iommu's QEMU testing. See `cli::USAGE`.

mod cli;
mod host;
mod image;
mod judge;
mod log;
mod qmp;
mod runner;
mod scenarios;
mod shapes;
mod size;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use cli::{Cmd, RunOpts, SizeOpts, TestOpts};
use host::Counts;
use judge::{Outcome, Verdict, seconds};
use log::{Firmware, LogLine, StreamFormat, format_line};
use scenarios::{Expect, SCENARIOS, Scenario};
use shapes::{Arch, SHAPES};

/// Decoded lines shown with a failed scenario.
const TAIL_LINES: usize = 30;

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Cmd::Help) => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Cmd::List) => {
            print_list();
            ExitCode::SUCCESS
        }
        Ok(Cmd::Run(opts)) => cmd_run(&opts),
        Ok(Cmd::Test(opts)) => cmd_test(&opts),
        Ok(Cmd::Size(opts)) => cmd_size(&opts),
        Err(e) => {
            eprintln!("xtask: {e}\n\n{}", cli::USAGE);
            ExitCode::from(2)
        }
    }
}

fn print_list() {
    println!("shapes:");
    for s in SHAPES {
        println!("  {:<18} {:<8} -M {}", s.name, s.arch, s.machine);
        println!("  {:<18} {}", "", s.description);
    }
    println!("\nself-tests (--test NAME):");
    for (name, what) in scenarios::SELF_TESTS {
        println!("  {name:<18} {what}");
    }
    println!("\nscenarios (cargo xtask test):");
    for s in SCENARIOS {
        let expect = match s.expect {
            Expect::Pass { lines } => format!("pass, {} lines", lines.len()),
            Expect::HarnessMustFail { reason, .. } => format!("must fail: {reason}"),
        };
        println!("  {:<18} {:<18} test={:<10} {expect}", s.name, s.shape, s.self_test);
    }
}

fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A command line as one copy-pasteable string.
fn shell_line(argv: &[OsString]) -> String {
    let quote = |a: &OsString| {
        let s = a.to_string_lossy();
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_=.,/:+@".contains(c))
        {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

fn load_firmware(root: &Path, arch: Arch) -> Result<Firmware, String> {
    let elf = image::build_firmware(root, arch)?;
    Firmware::load(&elf, root)
}

/// `cargo xtask size`: builds the image for each architecture (or takes `--elf`) and prints
/// its sections by kind.
fn cmd_size(opts: &SizeOpts) -> ExitCode {
    let root = image::workspace_root();
    let mut rows = Vec::new();
    if let Some(elf) = &opts.elf {
        match size::of_file(elf) {
            Ok(s) => rows.push((elf.display().to_string(), s)),
            Err(e) => {
                eprintln!("xtask: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        if let Err(e) = image::run_setup(&root) {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
        let arches = match opts.arch {
            Some(a) => vec![a],
            None => vec![Arch::X86_64, Arch::Aarch64],
        };
        for arch in arches {
            match image::build_firmware(&root, arch).and_then(|elf| size::of_file(&elf)) {
                Ok(s) => rows.push((arch.triple().to_string(), s)),
                Err(e) => {
                    eprintln!("xtask: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    print!("{}", size::table(&rows));
    println!("bytes; text+ro+data is what the image loads, bss and stack are zero-filled at boot; defmt strs = log strings interned on the host side");
    ExitCode::SUCCESS
}

fn cmd_run(opts: &RunOpts) -> ExitCode {
    let root = image::workspace_root();
    if let Err(e) = image::run_setup(&root) {
        eprintln!("xtask: {e}");
        return ExitCode::from(2);
    }
    let fw = match &opts.elf {
        Some(elf) => Firmware::load(elf, &root),
        None => load_firmware(&root, opts.arch),
    };
    let fw = match fw {
        Ok(fw) => fw,
        Err(e) => {
            println!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shape = shapes::find(opts.machine).expect("cli validated the machine");
    let socket = HostCheck::socket_path();
    let argv = shape.command_line(&fw.elf, &opts.self_test, Some(&socket), &opts.qemu_args);
    eprintln!("xtask: {} ({}), test={}", shape.name, shape.description, opts.self_test);
    eprintln!("xtask: {}", shell_line(&argv));

    let color = color_stdout();
    let mut stdout = std::io::stdout();
    let mut on_line = |l: &LogLine| {
        let _ = writeln!(stdout, "{}", format_line(l, color));
        let _ = stdout.flush();
    };
    let mut on_stderr = |l: &str| eprintln!("qemu: {l}");
    let mut host = HostCheck::new(socket);
    let mut on_request = |l: &LogLine, all: &[LogLine]| {
        let answer = host.answer(l, all);
        if let Some(report) = host.reports.last().filter(|_| answer.is_some()) {
            eprintln!("xtask: {report}");
        }
        answer
    };
    let live = runner::Live {
        on_line: Some(&mut on_line),
        on_stderr: Some(&mut on_stderr),
        on_request: Some(&mut on_request),
    };
    let outcome = runner::run(&argv, &StreamFormat::Defmt(&fw), opts.timeout, live);

    let what = format!("{} test={}", shape.name, opts.self_test);
    let malformed = match outcome.malformed {
        0 => String::new(),
        n => format!(", {n} malformed frame(s) skipped"),
    };
    // `run` judges the exit status alone; the scenario table's expected lines are for `test`.
    match judge::judge(&outcome, &[]) {
        Verdict::Passed => {
            println!("PASS: {what}: exit status 33 in {}{malformed}", seconds(outcome.elapsed));
            ExitCode::SUCCESS
        }
        Verdict::Failed { reason } => {
            let after = match outcome.exit {
                judge::Exit::Timeout(_) => String::new(),
                _ => format!(" after {}", seconds(outcome.elapsed)),
            };
            println!("FAIL: {what}: {reason}{after}{malformed}");
            ExitCode::FAILURE
        }
    }
}

struct Phase {
    name: String,
    counts: Counts,
    secs: f64,
}

fn cmd_test(opts: &TestOpts) -> ExitCode {
    let started = Instant::now();
    let root = image::workspace_root();
    let mut phases = Vec::new();
    if let Err(e) = image::run_setup(&root) {
        eprintln!("xtask: {e}");
        println!("0 passed, 1 failed");
        return ExitCode::FAILURE;
    }

    if opts.host {
        println!("==> host tests: cargo test (workspace default members)");
        let t = Instant::now();
        let counts = host::run(&root);
        phases.push(Phase { name: "host tests".into(), counts, secs: t.elapsed().as_secs_f64() });
    }

    let selected: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| opts.filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    let mut by_arch: BTreeMap<Arch, Vec<&Scenario>> = BTreeMap::new();
    for s in &selected {
        let arch = shapes::find(s.shape).expect("scenarios name existing shapes").arch;
        by_arch.entry(arch).or_default().push(s);
    }
    let mut failed_names = Vec::new();
    for (arch, list) in &by_arch {
        println!("\n==> QEMU scenarios, {arch}");
        let t = Instant::now();
        let mut counts = Counts::default();
        // One build per arch per invocation; a broken build fails every scenario of the arch.
        match load_firmware(&root, *arch) {
            Ok(fw) => {
                for s in list {
                    if run_scenario(&fw, s) {
                        counts.passed += 1;
                    } else {
                        counts.failed += 1;
                        failed_names.push(s.name);
                    }
                }
            }
            Err(e) => {
                for s in list {
                    println!("test qemu::{} ... FAILED\n    {e}", s.name);
                    counts.failed += 1;
                    failed_names.push(s.name);
                }
            }
        }
        phases.push(Phase {
            name: format!("qemu {arch}"),
            counts,
            secs: t.elapsed().as_secs_f64(),
        });
    }
    if by_arch.is_empty() {
        println!("\nno QEMU scenario matches {:?}", opts.filter.as_deref().unwrap_or(""));
    }

    let mut total = Counts::default();
    println!("\nsummary ({:.1} s):", started.elapsed().as_secs_f64());
    for p in &phases {
        let c = p.counts;
        let skipped =
            if c.skipped > 0 { format!(", {} skipped", c.skipped) } else { String::new() };
        println!(
            "  {:<14} {} passed, {} failed{skipped} ({:.1} s)",
            p.name, c.passed, c.failed, p.secs
        );
        total.add(c);
    }
    if !failed_names.is_empty() {
        println!("  failed scenarios: {}", failed_names.join(", "));
    }
    let skipped =
        if total.skipped > 0 { format!(", {} skipped", total.skipped) } else { String::new() };
    println!("{} passed, {} failed{skipped}", total.passed, total.failed);
    if total.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Runs one scenario and prints its report; true when it met its expectation.
fn run_scenario(fw: &Firmware, s: &Scenario) -> bool {
    let shape = shapes::find(s.shape).expect("scenarios name existing shapes");
    let socket = HostCheck::socket_path();
    let argv = shape.command_line(&fw.elf, s.self_test, Some(&socket), &[]);
    print!("test qemu::{} ... ", s.name);
    let _ = std::io::stdout().flush();
    let mut host = HostCheck::new(socket);
    let mut on_request = |l: &LogLine, all: &[LogLine]| host.answer(l, all);
    let live = runner::Live { on_request: Some(&mut on_request), ..Default::default() };
    let outcome = runner::run(&argv, &StreamFormat::Defmt(fw), Some(s.timeout), live);
    let host_reports = std::mem::take(&mut host.reports);
    let result = judge::evaluate(&s.expect, &outcome);
    let time = seconds(outcome.elapsed);
    if result.ok {
        match s.expect {
            Expect::Pass { .. } => println!("ok ({time})"),
            Expect::HarnessMustFail { .. } => {
                println!("ok ({time}; harness test, {})", result.detail)
            }
        }
    } else {
        println!("FAILED ({time})");
        print_failure(&result.detail, &argv, s, &outcome);
    }
    for report in &host_reports {
        println!("    {report}");
    }
    result.ok
}

/// Answers the image's `host-check request` lines (see `qmp.rs`), keeping a report of each.
struct HostCheck {
    socket: std::path::PathBuf,
    reports: Vec<String>,
    /// Lines before this index were compared by an earlier request.
    compared_up_to: usize,
}

impl HostCheck {
    /// A fresh socket path per QEMU run, in the system's temporary directory.
    fn socket_path() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("pcie-iommu-qmp-{}-{n}.sock", std::process::id()))
    }

    fn new(socket: std::path::PathBuf) -> Self {
        Self { socket, reports: Vec::new(), compared_up_to: 0 }
    }

    fn answer(&mut self, line: &LogLine, all: &[LogLine]) -> Option<Vec<u8>> {
        if !line.message.starts_with(qmp::REQUEST) {
            return None;
        }
        // Each request covers the entries logged since the previous one, so the image can ask
        // again after changing the topology (enabling VFs, say).
        let since = all.get(self.compared_up_to..).unwrap_or_default();
        let image: Vec<_> = since.iter().filter_map(|l| qmp::parse_entry(&l.message)).collect();
        self.compared_up_to = all.len();
        // TIMEOUT: QEMU answers query-pci from its main loop in milliseconds; 10 s covers a
        // loaded CI machine and still ends well inside the scenario's own bound.
        let verdict = qmp::query_pci(&self.socket, std::time::Duration::from_secs(10))
            .map_err(|e| vec![e])
            .and_then(|qemu| qmp::compare(&image, &qemu));
        let (byte, report) = match verdict {
            Ok(summary) => (b'y', format!("host check: {summary}")),
            Err(problems) => (b'n', format!("host check FAILED: {}", problems.join("; "))),
        };
        self.reports.push(report);
        Some(vec![byte])
    }
}

impl Drop for HostCheck {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn print_failure(reason: &str, argv: &[OsString], s: &Scenario, o: &Outcome) {
    println!("    reason: {reason}");
    println!("    rerun:  cargo xtask run --machine {} --test {}", s.shape, s.self_test);
    println!("    qemu:   {}", shell_line(argv));
    if o.malformed > 0 {
        println!("    {} malformed frame(s) skipped by the decoder", o.malformed);
    }
    let skip = o.lines.len().saturating_sub(TAIL_LINES);
    println!(
        "    --- decoded log ({} lines{}) ---",
        o.lines.len(),
        if skip > 0 { format!(", last {TAIL_LINES}") } else { String::new() }
    );
    for l in &o.lines[skip..] {
        // Panic messages span lines; keep the block indented.
        println!("    {}", format_line(l, false).replace('\n', "\n    "));
    }
    if !o.stderr.trim().is_empty() {
        println!("    --- QEMU stderr ---");
        for l in o.stderr.lines() {
            println!("    {l}");
        }
    }
}
