//! Runs one QEMU process: piped stdout (decoded live on a reader thread) and stderr (captured),
//! a timeout, and a guard that kills and reaps QEMU whatever happens to the harness.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::judge::{Exit, Outcome};
use crate::log::{LogLine, StreamEvent, StreamFormat, decode_stream};

/// Owns a child process; dropping it kills and reaps the child, so no QEMU outlives a panic or an
/// early return in the harness.
pub(crate) struct ChildGuard {
    child: Child,
    reaped: Option<ExitStatus>,
}

impl ChildGuard {
    pub(crate) fn new(child: Child) -> ChildGuard {
        ChildGuard { child, reaped: None }
    }

    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait()?;
        }
        Ok(self.reaped)
    }

    pub(crate) fn kill(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            self.reaped = self.child.wait().ok();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Answers the image: called with each new line and all lines so far; returns bytes for its UART.
pub(crate) type Responder<'a> = &'a mut dyn FnMut(&LogLine, &[LogLine]) -> Option<Vec<u8>>;

/// Callbacks for live output (`cargo xtask run`) and for answering the image.
#[derive(Default)]
pub(crate) struct Live<'a> {
    pub(crate) on_line: Option<&'a mut dyn FnMut(&LogLine)>,
    pub(crate) on_stderr: Option<&'a mut dyn FnMut(&str)>,
    /// Called with each new line and all lines so far; bytes it returns are written to the
    /// image's UART (QEMU's stdin), e.g. the answer to a `host-check request`.
    pub(crate) on_request: Option<Responder<'a>>,
}

enum Event {
    Stream(StreamEvent),
    StdoutClosed,
    Stderr(String),
    StderrClosed,
}

/// How often the exit status is polled while waiting for output.
const POLL: Duration = Duration::from_millis(20);
/// After QEMU has ended, how long to wait for the pipes to drain. They close when QEMU's process
/// is gone, so this only matters if something else inherited them.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs `argv` to completion or until `timeout`, decoding its stdout with `format`.
pub(crate) fn run(
    argv: &[OsString],
    format: &StreamFormat<'_>,
    timeout: Option<Duration>,
    live: Live<'_>,
) -> Outcome {
    let start = Instant::now();
    let mut cmd = Command::new(&argv[0]);
    // stdin is a pipe we own (never the terminal: with `-serial stdio` QEMU would put an
    // interactive terminal into raw mode); it carries the harness's answers to the image.
    cmd.args(&argv[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                exit: Exit::Error(format!("{}: {e}", argv[0].to_string_lossy())),
                lines: Vec::new(),
                malformed: 0,
                stderr: String::new(),
                elapsed: start.elapsed(),
            };
        }
    };
    let Live { mut on_line, mut on_stderr, mut on_request } = live;
    thread::scope(|scope| {
        // Created inside the scope: on any unwind it is dropped (QEMU killed, pipes closed) before
        // the scope joins the reader threads, so the join cannot block on a live QEMU.
        let mut guard = ChildGuard::new(child);
        let stdout = guard.child.stdout.take().expect("piped stdout");
        let stderr = guard.child.stderr.take().expect("piped stderr");
        let mut stdin = guard.child.stdin.take();
        let (tx, rx) = mpsc::channel();
        let tx_err = tx.clone();
        scope.spawn(move || {
            decode_stream(format, stdout, &mut |e| {
                let _ = tx.send(Event::Stream(e));
            });
            let _ = tx.send(Event::StdoutClosed);
        });
        scope.spawn(move || {
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                let _ = tx_err
                    .send(Event::Stderr(String::from_utf8_lossy(&line).trim_end().to_string()));
            }
            let _ = tx_err.send(Event::StderrClosed);
        });

        let deadline = timeout.map(|t| start + t);
        let mut exit: Option<Exit> = None;
        let mut drain_until = None;
        let (mut stdout_open, mut stderr_open) = (true, true);
        let mut out = Outcome {
            exit: Exit::Code(-1),
            lines: Vec::new(),
            malformed: 0,
            stderr: String::new(),
            elapsed: Duration::ZERO,
        };
        loop {
            if exit.is_none() {
                match guard.try_wait() {
                    Ok(Some(status)) => exit = Some(exit_of(status)),
                    Ok(None) => {}
                    Err(e) => {
                        guard.kill();
                        exit = Some(Exit::Error(format!("waiting for QEMU: {e}")));
                    }
                }
                if exit.is_none() && deadline.is_some_and(|d| Instant::now() >= d) {
                    guard.kill();
                    exit = Some(Exit::Timeout(timeout.unwrap_or_default()));
                }
                if exit.is_some() {
                    out.elapsed = start.elapsed();
                    drain_until = Some(Instant::now() + DRAIN);
                }
            }
            if exit.is_some()
                && (!stdout_open && !stderr_open
                    || drain_until.is_some_and(|d| Instant::now() >= d))
            {
                break;
            }
            match rx.recv_timeout(POLL) {
                Ok(Event::Stream(StreamEvent::Line(line))) => {
                    if let Some(f) = on_line.as_mut() {
                        f(&line);
                    }
                    let answer = on_request.as_mut().and_then(|f| f(&line, &out.lines));
                    if let (Some(bytes), Some(pipe)) = (answer, stdin.as_mut()) {
                        use std::io::Write;
                        // A closed pipe means QEMU is gone; its exit status tells the rest.
                        let _ = pipe.write_all(&bytes).and_then(|()| pipe.flush());
                    }
                    out.lines.push(line);
                }
                Ok(Event::Stream(StreamEvent::Malformed)) => out.malformed += 1,
                Ok(Event::Stderr(line)) => {
                    if let Some(f) = on_stderr.as_mut() {
                        f(&line);
                    }
                    out.stderr.push_str(&line);
                    out.stderr.push('\n');
                }
                Ok(Event::StdoutClosed) => stdout_open = false,
                Ok(Event::StderrClosed) => stderr_open = false,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    (stdout_open, stderr_open) = (false, false)
                }
            }
        }
        out.exit = exit.expect("loop ends only after exit");
        drop(guard);
        out
    })
}

/// The guard covers panics and early returns; this covers the harness being killed outright
/// (SIGKILL from a CI timeout, say), which runs no destructor. The signal fires when the spawning
/// thread exits, and every spawn happens on the thread that then waits for the child.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Error(format!("unknown exit status {status:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<OsString> {
        ["sh", "-c", script].map(OsString::from).to_vec()
    }

    fn messages(o: &Outcome) -> Vec<&str> {
        o.lines.iter().map(|l| l.message.as_str()).collect()
    }

    #[test]
    fn exit_status_lines_and_stderr() {
        let o = run(
            &sh("echo one; echo oops >&2; echo two; exit 33"),
            &StreamFormat::Text,
            Some(Duration::from_secs(30)),
            Live::default(),
        );
        assert_eq!(o.exit, Exit::Code(33));
        assert_eq!(messages(&o), ["one", "two"]);
        assert_eq!(o.stderr, "oops\n");
    }

    #[test]
    fn signal_is_reported() {
        let o = run(
            &sh("echo before; kill -6 $$"),
            &StreamFormat::Text,
            Some(Duration::from_secs(30)),
            Live::default(),
        );
        assert_eq!(o.exit, Exit::Signal(6));
        assert_eq!(messages(&o), ["before"]);
    }

    #[test]
    fn timeout_kills_and_keeps_what_was_logged() {
        let t = Duration::from_millis(300);
        // `exec` so the shell's pid is sleep's and killing it closes the pipes at once.
        let o =
            run(&sh("echo started; exec sleep 30"), &StreamFormat::Text, Some(t), Live::default());
        assert_eq!(o.exit, Exit::Timeout(t));
        assert_eq!(messages(&o), ["started"]);
        assert!(o.elapsed >= t && o.elapsed < Duration::from_secs(5), "{:?}", o.elapsed);
    }

    #[test]
    fn live_callbacks_see_everything() {
        let (mut lines, mut errs) = (Vec::new(), Vec::new());
        let mut on_line = |l: &LogLine| lines.push(l.message.clone());
        let mut on_stderr = |s: &str| errs.push(s.to_string());
        let live = Live {
            on_line: Some(&mut on_line),
            on_stderr: Some(&mut on_stderr),
            ..Default::default()
        };
        let o = run(&sh("echo a; echo e >&2; echo b; exit 35"), &StreamFormat::Text, None, live);
        assert_eq!(o.exit, Exit::Code(35));
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(errs, ["e"]);
    }

    #[test]
    fn answers_reach_the_child_on_stdin() {
        // The child asks, reads one byte and reports it: the path of the host-check answer.
        let mut asked = 0;
        let mut on_request = |l: &LogLine, all: &[LogLine]| {
            (l.message == "question?").then(|| {
                asked = all.len() + 1;
                b"y".to_vec()
            })
        };
        let live = Live { on_request: Some(&mut on_request), ..Default::default() };
        let script = "echo first; echo 'question?'; a=$(head -c 1); echo \"got $a\"; exit 33";
        let o = run(&sh(script), &StreamFormat::Text, Some(Duration::from_secs(10)), live);
        assert_eq!(o.exit, Exit::Code(33));
        assert_eq!(messages(&o), ["first", "question?", "got y"]);
        assert_eq!(asked, 2);
    }

    #[test]
    fn missing_program_is_an_error() {
        let argv = vec![OsString::from("/nonexistent/qemu-system-none")];
        let o = run(&argv, &StreamFormat::Text, None, Live::default());
        assert!(
            matches!(&o.exit, Exit::Error(e) if e.contains("/nonexistent/qemu-system-none")),
            "{:?}",
            o.exit
        );
    }

    #[test]
    fn guard_kills_and_reaps_on_drop() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let t = Instant::now();
        drop(ChildGuard::new(child));
        assert!(t.elapsed() < Duration::from_secs(5));
        // Reaped, not a zombie: the pid is gone from /proc.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
