//! Command-line parsing (plain std; a parser crate would cost more compile time than it saves).

use std::path::PathBuf;
use std::time::Duration;

use crate::shapes::{self, Arch};

pub(crate) const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  run    build the firmware, boot it on one QEMU shape and stream its decoded log
         --arch x86_64|aarch64   architecture (default x86_64; implied by --machine)
         --machine NAME          shape (default q35-rich, or virt-rich for aarch64)
         --test NAME             the image's self-test, passed as -append test=NAME (default discover)
         --timeout SECS          kill QEMU after SECS seconds (default 60; 0 = never)
         --elf PATH              boot this ELF instead of building the firmware
         --list                  list shapes, self-tests and scenarios
         -- ARGS...              extra QEMU arguments, appended last
         exit status: 0 when QEMU exited with 33 (pass), 1 otherwise
  test   host tests (cargo test), then every QEMU scenario on both architectures;
         ends with `N passed, M failed[, K skipped]`
         --filter SUBSTR         only the scenarios whose name contains SUBSTR
         --no-host               skip the host tests
  size   build the firmware for both architectures and print text/rodata/data/bss from
         the ELF section headers
         --arch x86_64|aarch64   only this architecture
         --elf PATH              measure this ELF instead of building
  list   same as run --list
  help   this text

Both run qemu-tests/setup.sh first (installs the Rust targets and QEMU 10 when missing).";

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RunOpts {
    pub(crate) arch: Arch,
    pub(crate) machine: &'static str,
    pub(crate) self_test: String,
    /// `None`: no bound.
    pub(crate) timeout: Option<Duration>,
    pub(crate) qemu_args: Vec<String>,
    /// A prebuilt image to boot instead of building the firmware.
    pub(crate) elf: Option<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TestOpts {
    pub(crate) filter: Option<String>,
    pub(crate) host: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SizeOpts {
    /// Only this architecture (default both).
    pub(crate) arch: Option<Arch>,
    /// Measure this ELF instead of building.
    pub(crate) elf: Option<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cmd {
    Run(RunOpts),
    Test(TestOpts),
    Size(SizeOpts),
    List,
    Help,
}

/// Splits `--opt=value` and takes `--opt value` from the iterator.
fn value(
    flag: &str,
    inline: Option<&str>,
    rest: &mut impl Iterator<Item = String>,
) -> Result<String, String> {
    match inline {
        Some(v) => Ok(v.to_string()),
        None => rest.next().ok_or_else(|| format!("{flag} needs a value")),
    }
}

/// Parses the arguments after the program name.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Cmd, String> {
    let mut args = args.into_iter();
    let Some(command) = args.next() else {
        return Ok(Cmd::Help);
    };
    match command.as_str() {
        "run" => parse_run(args),
        "test" => parse_test(args),
        "size" => parse_size(args),
        "list" | "--list" => Ok(Cmd::List),
        "help" | "--help" | "-h" => Ok(Cmd::Help),
        other => Err(format!("unknown command {other:?}")),
    }
}

fn parse_run(mut args: impl Iterator<Item = String>) -> Result<Cmd, String> {
    let (mut arch, mut machine, mut self_test, mut timeout) =
        (None, None, None, Some(crate::scenarios::DEFAULT_TIMEOUT));
    let (mut qemu_args, mut elf) = (Vec::new(), None);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v)),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "--arch" => {
                let v = value(&flag, inline, &mut args)?;
                arch = Some(
                    Arch::parse(&v)
                        .ok_or_else(|| format!("unknown arch {v:?} (x86_64 or aarch64)"))?,
                );
            }
            "--machine" => {
                let v = value(&flag, inline, &mut args)?;
                let shape = shapes::find(&v)
                    .ok_or_else(|| format!("unknown machine {v:?} (see --list)"))?;
                machine = Some(shape);
            }
            "--test" => self_test = Some(value(&flag, inline, &mut args)?),
            "--timeout" => {
                let v = value(&flag, inline, &mut args)?;
                let secs: u64 =
                    v.parse().map_err(|_| format!("--timeout wants whole seconds, not {v:?}"))?;
                timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "--elf" => elf = Some(PathBuf::from(value(&flag, inline, &mut args)?)),
            "--list" => return Ok(Cmd::List),
            "-h" | "--help" => return Ok(Cmd::Help),
            "--" => {
                qemu_args.extend(args.by_ref());
                break;
            }
            _ => return Err(format!("unknown option {arg:?} for run")),
        }
    }
    let shape = match (arch, machine) {
        (Some(a), Some(m)) if m.arch != a => {
            return Err(format!("machine {} is {}, not {a}", m.name, m.arch));
        }
        (_, Some(m)) => m,
        (a, None) => {
            shapes::find(a.unwrap_or(Arch::X86_64).default_shape()).expect("default shapes exist")
        }
    };
    Ok(Cmd::Run(RunOpts {
        arch: shape.arch,
        machine: shape.name,
        self_test: self_test.unwrap_or_else(|| "discover".into()),
        timeout,
        qemu_args,
        elf,
    }))
}

fn parse_test(mut args: impl Iterator<Item = String>) -> Result<Cmd, String> {
    let mut opts = TestOpts { filter: None, host: true };
    while let Some(arg) = args.next() {
        match arg.split_once('=') {
            Some(("--filter", v)) => opts.filter = Some(v.to_string()),
            _ => match arg.as_str() {
                "--filter" => opts.filter = Some(value("--filter", None, &mut args)?),
                "--no-host" => opts.host = false,
                "-h" | "--help" => return Ok(Cmd::Help),
                _ => return Err(format!("unknown option {arg:?} for test")),
            },
        }
    }
    Ok(Cmd::Test(opts))
}

fn parse_size(mut args: impl Iterator<Item = String>) -> Result<Cmd, String> {
    let mut opts = SizeOpts { arch: None, elf: None };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v)),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "--arch" => {
                let v = value(&flag, inline, &mut args)?;
                opts.arch = Some(
                    Arch::parse(&v)
                        .ok_or_else(|| format!("unknown arch {v:?} (x86_64 or aarch64)"))?,
                );
            }
            "--elf" => opts.elf = Some(PathBuf::from(value(&flag, inline, &mut args)?)),
            "-h" | "--help" => return Ok(Cmd::Help),
            _ => return Err(format!("unknown option {arg:?} for size")),
        }
    }
    Ok(Cmd::Size(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cmd, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn run(args: &[&str]) -> RunOpts {
        match p(args) {
            Ok(Cmd::Run(o)) => o,
            other => panic!("{args:?} -> {other:?}"),
        }
    }

    #[test]
    fn run_defaults() {
        let o = run(&["run"]);
        assert_eq!(
            o,
            RunOpts {
                arch: Arch::X86_64,
                machine: "q35-rich",
                self_test: "discover".into(),
                timeout: Some(Duration::from_secs(60)),
                qemu_args: vec![],
                elf: None,
            }
        );
        let a = run(&["run", "--arch", "aarch64"]);
        assert_eq!((a.arch, a.machine), (Arch::Aarch64, "virt-rich"));
    }

    #[test]
    fn run_options() {
        let o = run(&[
            "run",
            "--machine",
            "virt-smmuv3-el2",
            "--test=panic",
            "--timeout",
            "0",
            "--",
            "-d",
            "int",
            "--arch",
        ]);
        assert_eq!(o.arch, Arch::Aarch64, "machine implies arch");
        assert_eq!(o.machine, "virt-smmuv3-el2");
        assert_eq!(o.self_test, "panic");
        assert_eq!(o.timeout, None);
        assert_eq!(o.qemu_args, ["-d", "int", "--arch"], "everything after -- goes to QEMU");
        let o = run(&[
            "run",
            "--arch=x86_64",
            "--machine=q35-vtd",
            "--timeout=5",
            "--elf",
            "/tmp/x.elf",
        ]);
        assert_eq!((o.machine, o.timeout), ("q35-vtd", Some(Duration::from_secs(5))));
        assert_eq!(o.elf.as_deref(), Some(std::path::Path::new("/tmp/x.elf")));
    }

    #[test]
    fn run_errors() {
        assert!(p(&["run", "--arch", "riscv64"]).unwrap_err().contains("unknown arch"));
        assert!(p(&["run", "--machine", "nope"]).unwrap_err().contains("unknown machine"));
        assert!(
            p(&["run", "--arch", "aarch64", "--machine", "q35"])
                .unwrap_err()
                .contains("q35 is x86_64")
        );
        assert!(p(&["run", "--test"]).unwrap_err().contains("needs a value"));
        assert!(p(&["run", "--timeout", "1.5"]).unwrap_err().contains("whole seconds"));
        assert!(p(&["run", "-d"]).unwrap_err().contains("unknown option"));
        assert!(p(&["frobnicate"]).unwrap_err().contains("unknown command"));
    }

    #[test]
    fn test_options() {
        assert_eq!(p(&["test"]), Ok(Cmd::Test(TestOpts { filter: None, host: true })));
        assert_eq!(
            p(&["test", "--filter", "q35", "--no-host"]),
            Ok(Cmd::Test(TestOpts { filter: Some("q35".into()), host: false }))
        );
        assert_eq!(
            p(&["test", "--filter=hang"]),
            Ok(Cmd::Test(TestOpts { filter: Some("hang".into()), host: true }))
        );
        assert!(p(&["test", "--arch", "x86_64"]).is_err());
    }

    #[test]
    fn list_and_help() {
        assert_eq!(p(&[]), Ok(Cmd::Help));
        assert_eq!(p(&["help"]), Ok(Cmd::Help));
        assert_eq!(p(&["list"]), Ok(Cmd::List));
        assert_eq!(p(&["run", "--list"]), Ok(Cmd::List));
        assert_eq!(p(&["size"]), Ok(Cmd::Size(SizeOpts { arch: None, elf: None })));
        assert_eq!(
            p(&["size", "--arch=aarch64", "--elf", "/x"]),
            Ok(Cmd::Size(SizeOpts { arch: Some(Arch::Aarch64), elf: Some("/x".into()) }))
        );
        assert!(p(&["size", "--timeout", "3"]).unwrap_err().contains("unknown option"));
        assert_eq!(p(&["run", "--help"]), Ok(Cmd::Help));
    }
}
