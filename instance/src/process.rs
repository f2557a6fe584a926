//! Child processes, the way PID 1 must handle them.
//!
//! As PID 1 of a container the manager inherits every orphan (postgres
//! backends whose postmaster died, for example) and must reap them, or they
//! stay zombies. Reaping "any child" with `waitpid(-1)` would steal the exit
//! status of the children we wait for ourselves, so *every* child is started
//! through [`Reaper::spawn`] and every exit is collected by the one reaper,
//! which hands each status to whoever registered that pid and drops the
//! rest. Outside a container the manager makes itself a child subreaper, so
//! the same holds for the grandchildren it leaves behind.
//!
//! Spawning and reaping take the same lock, so a child that exits before its
//! registration (or whose `exec` fails, which std reaps itself) can never be
//! reaped by the wrong party.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How an exited child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(sig) => {
                write!(f, "signal {sig}{}", signal_name(*sig).map(|n| format!(" ({n})")).unwrap_or_default())
            }
        }
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// Collects the exit of every child of this process.
#[derive(Clone)]
pub struct Reaper {
    waiting: Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>,
}

impl fmt::Debug for Reaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

/// A child started by [`Reaper::spawn`].
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    exit: Option<oneshot::Receiver<Exit>>,
    exited: Option<Exit>,
    pub stdout: Option<std::process::ChildStdout>,
    pub stderr: Option<std::process::ChildStderr>,
}

impl Reaper {
    /// Starts reaping on the current runtime: at every SIGCHLD, and once a
    /// second in case a signal was coalesced away.
    pub fn start() -> io::Result<Self> {
        let reaper = Reaper { waiting: Arc::new(Mutex::new(HashMap::new())) };
        let mut sigchld = signal(SignalKind::child())?;
        let task = reaper.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                task.reap();
            }
        });
        // Orphaned grandchildren (backends of a killed postmaster) come to us, not to init.
        if !rustix::process::getpid().is_init()
            && let Err(err) = rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        {
            debug!(error = %err, "cannot become a child subreaper; orphans go to init");
        }
        Ok(reaper)
    }

    /// Collects every exited child now.
    pub fn reap(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let exit = match (status.exit_status(), status.terminating_signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(sig)) => Exit::Signal(sig),
                        // Stopped/continued are not reported without WUNTRACED/WCONTINUED.
                        (None, None) => continue,
                    };
                    match waiting.remove(&pid.as_raw_nonzero().get()) {
                        Some(sender) => {
                            let _ = sender.send(exit);
                        }
                        None => debug!(pid = pid.as_raw_nonzero().get(), %exit, "reaped an orphaned process"),
                    }
                }
                Ok(None) => return,
                Err(err) if err == rustix::io::Errno::INTR => {}
                // ECHILD: no children at all.
                Err(_) => return,
            }
        }
    }

    /// SIGKILL to every child of this process that nobody waits for: the
    /// orphans a dead postmaster left (PostgreSQL backends are their own
    /// process group leaders, so a group kill does not reach them). They are
    /// ours because the manager is PID 1 or a child subreaper. Returns how
    /// many were killed.
    pub fn kill_orphans(&self) -> usize {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
        let mut killed = 0;
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
            if waiting.contains_key(&pid) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if parent_pid(&stat) == Some(me)
                && let Some(pid) = Pid::from_raw(pid)
                && rustix::process::kill_process(pid, Signal::KILL).is_ok()
            {
                killed += 1;
            }
        }
        if killed > 0 {
            debug!(killed, "killed orphaned processes");
        }
        killed
    }

    /// Spawns `command` and registers it for its exit status.
    pub fn spawn(&self, command: &mut Command) -> io::Result<Child> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut child = command.spawn()?;
        let raw = i32::try_from(child.id()).map_err(io::Error::other)?;
        let pid = Pid::from_raw(raw).ok_or_else(|| io::Error::other("spawned a child with pid 0"))?;
        let (sender, receiver) = oneshot::channel();
        waiting.insert(raw, sender);
        Ok(Child { pid, exit: Some(receiver), exited: None, stdout: child.stdout.take(), stderr: child.stderr.take() })
    }
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    /// Waits for the exit. Cancel-safe: it can be polled again after a timeout.
    pub async fn wait(&mut self) -> Exit {
        if let Some(exit) = self.exited {
            return exit;
        }
        let exit = match self.exit.as_mut() {
            Some(receiver) => receiver.await.unwrap_or(Exit::Signal(0)),
            None => Exit::Signal(0),
        };
        self.exit = None;
        self.exited = Some(exit);
        exit
    }

    /// Waits at most `timeout`; `None` if it is still running.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<Exit> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// The exit, if it is already known.
    pub fn try_exit(&mut self) -> Option<Exit> {
        if self.exited.is_none()
            && let Some(receiver) = self.exit.as_mut()
            && let Ok(exit) = receiver.try_recv()
        {
            self.exit = None;
            self.exited = Some(exit);
        }
        self.exited
    }

    /// Sends `signal` to the child; a child that already exited is not an error.
    pub fn signal(&mut self, signal: Signal) -> io::Result<()> {
        if self.try_exit().is_some() {
            return Ok(());
        }
        match rustix::process::kill_process(self.pid, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Sends `signal` to the child's process group (the child was started as
    /// its group leader); processes already gone are not an error.
    pub fn signal_group(&self, signal: Signal) -> io::Result<()> {
        match rustix::process::kill_process_group(self.pid, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

/// The parent pid in a `/proc/<pid>/stat` line: `pid (comm) state ppid …`,
/// where comm may itself hold spaces and parentheses.
pub fn parent_pid(stat: &str) -> Option<i32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Keep at most this much of a tool's stdout and of its stderr.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// What a finished tool printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub exit: Exit,
    pub stdout: String,
    pub stderr: String,
}

/// Why running a tool failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} did not finish within {}s and was killed", timeout.as_secs())]
    Timeout { program: String, timeout: Duration },
    #[error("{program} was stopped because the instance manager is shutting down")]
    Cancelled { program: String },
}

/// Runs `command` in its own process group with stdin closed, capturing
/// (the last [`OUTPUT_CAP`] bytes of) stdout and stderr. On timeout or
/// cancellation the whole group is killed and reaped before returning.
pub async fn run(
    reaper: &Reaper,
    mut command: Command,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Output, RunError> {
    use std::os::unix::process::CommandExt;

    let program = command.get_program().to_string_lossy().into_owned();
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child =
        reaper.spawn(&mut command).map_err(|source| RunError::Spawn { program: program.clone(), source })?;
    let stdout = child.stdout.take().map(|pipe| tokio::task::spawn_blocking(move || read_capped(pipe)));
    let stderr = child.stderr.take().map(|pipe| tokio::task::spawn_blocking(move || read_capped(pipe)));

    let outcome = tokio::select! {
        exit = child.wait() => Ok(exit),
        () = tokio::time::sleep(timeout) => Err(RunError::Timeout { program: program.clone(), timeout }),
        () = cancel.cancelled() => Err(RunError::Cancelled { program: program.clone() }),
    };
    if outcome.is_err() {
        if let Err(err) = child.signal_group(Signal::KILL) {
            warn!(%program, error = %err, "cannot kill the process group");
        }
        let _ = child.wait_timeout(Duration::from_secs(10)).await;
    }
    let exit = outcome?;
    let collect = |task: Option<tokio::task::JoinHandle<String>>| async move {
        match task {
            // The pipe closes when the child (and anything it started) exits.
            Some(task) => {
                tokio::time::timeout(Duration::from_secs(5), task).await.ok().and_then(Result::ok).unwrap_or_default()
            }
            None => String::new(),
        }
    };
    Ok(Output { exit, stdout: collect(stdout).await, stderr: collect(stderr).await })
}

fn read_capped(mut pipe: impl Read) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > OUTPUT_CAP {
                    let excess = kept.len() - OUTPUT_CAP;
                    kept.drain(..excess);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The last `lines` non-empty lines of a tool's output, for error messages.
pub fn tail(text: &str, lines: usize) -> String {
    let kept: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    kept[kept.len().saturating_sub(lines)..].join("; ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn exit_display() {
        assert_eq!(Exit::Code(1).to_string(), "exit code 1");
        assert_eq!(Exit::Signal(9).to_string(), "signal 9 (SIGKILL)");
        assert_eq!(Exit::Signal(64).to_string(), "signal 64");
        assert!(Exit::Code(0).success() && !Exit::Signal(0).success());
    }

    #[test]
    fn parent_pid_table() {
        let rows = [
            ("31250 (postgres) S 31035 31250 31250 0 -1", Some(31035)),
            ("7 (a (weird) name) R 1 7 7", Some(1)),
            ("7 (x) Z 0", Some(0)),
            ("7 (x)", None),
            ("garbage", None),
        ];
        for (stat, expected) in rows {
            assert_eq!(parent_pid(stat), expected, "{stat}");
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b; c");
        assert_eq!(tail("", 3), "");
        assert_eq!(tail("only", 3), "only");
    }

    #[test]
    fn capped_reads_keep_the_end() {
        let mut tail_marked = vec![b'x'; OUTPUT_CAP * 2];
        tail_marked.extend_from_slice(b"END");
        let kept = read_capped(&tail_marked[..]);
        assert_eq!(kept.len(), OUTPUT_CAP);
        assert!(kept.ends_with("END"));
    }

    #[tokio::test]
    async fn runs_reaps_and_times_out() {
        let reaper = Reaper::start().unwrap();
        let cancel = CancellationToken::new();
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo out; echo err >&2; exit 3"]);
        let output = run(&reaper, ok, Duration::from_secs(10), &cancel).await.unwrap();
        assert_eq!(output.exit, Exit::Code(3));
        assert_eq!(output.stdout, "out\n");
        assert_eq!(output.stderr, "err\n");

        let mut slow = Command::new("sleep");
        slow.arg("30");
        let started = std::time::Instant::now();
        let err = run(&reaper, slow, Duration::from_millis(200), &cancel).await.unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let mut missing = Command::new("/nonexistent/stead-test-binary");
        missing.arg("x");
        let err = run(&reaper, missing, Duration::from_secs(1), &cancel).await.unwrap_err();
        assert!(err.to_string().starts_with("cannot start /nonexistent/stead-test-binary"), "{err}");

        cancel.cancel();
        let mut slow = Command::new("sleep");
        slow.arg("30");
        let err = run(&reaper, slow, Duration::from_secs(30), &cancel).await.unwrap_err();
        assert!(matches!(err, RunError::Cancelled { .. }), "{err}");
    }
}
