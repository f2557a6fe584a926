//! Child processes the suite owns: spawned with their output in a log file,
//! stopped by pid (SIGTERM, then SIGKILL) when dropped, even while a failed
//! scenario unwinds.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use super::wait::{self, Poll};

/// How long a process gets to exit after SIGTERM before it is killed.
const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Lines of a log shown when a process fails.
pub const LOG_TAIL_LINES: usize = 40;
/// Proxy settings removed from every child's environment.
pub const PROXY_VARIABLES: [&str; 6] =
    ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

/// A running child that is stopped when this value is dropped.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `program` with `env` added and any `STEAD_*` and proxy
    /// variables removed; stdout and stderr go to `<log_dir>/<name>.log`,
    /// whose first line is the command line.
    pub fn spawn<I, K, V>(name: &str, program: &Path, args: &[String], env: I, log_dir: &Path) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        fs::create_dir_all(log_dir).with_context(|| format!("creating the log directory {}", log_dir.display()))?;
        let log = log_dir.join(format!("{name}.log"));
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening the log file {}", log.display()))?;
        writeln!(out, "$ {} {}", program.display(), args.join(" "))
            .with_context(|| format!("writing to {}", log.display()))?;
        let err = out.try_clone().with_context(|| format!("duplicating the handle of {}", log.display()))?;
        let mut command = Command::new(program);
        for key in scrubbed(std::env::vars_os().map(|(key, _)| key)) {
            command.env_remove(key);
        }
        let child = command
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self { name: name.to_owned(), child, log, reaped: None })
    }

    /// The name the process was started under (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating system's id of the process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails, with the end of its log, when the process has already exited:
    /// waits call this so a crash is reported at once instead of as a timeout.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exit_status()? {
            bail!(
                "{} (pid {}) exited with {status}; the last lines of {}:\n{}",
                self.name,
                self.pid(),
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// Waits until `probe` is ready, failing at once (with the log's end)
    /// if the process exits, and adding the log's end to a timeout.
    pub fn wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> anyhow::Result<Poll<()>>,
    ) -> anyhow::Result<()> {
        let mut exited = false;
        let result = wait::until(what, timeout, || {
            if let Err(err) = self.ensure_running() {
                exited = true;
                return Err(err);
            }
            probe()
        });
        result.map_err(|err| {
            if exited {
                err
            } else {
                anyhow!("{err:#}\nthe last lines of {}:\n{}", self.log.display(), self.log_tail(LOG_TAIL_LINES))
            }
        })
    }

    /// The last `lines` lines of the log (empty when unreadable).
    pub fn log_tail(&self, lines: usize) -> String {
        fs::read_to_string(&self.log).map(|text| tail(&text, lines)).unwrap_or_default()
    }

    /// Peak resident set size (VmHWM), in bytes, while the process still runs.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path} of {}", self.name))?;
        vm_hwm_bytes(&status).with_context(|| format!("{path} has no VmHWM line"))
    }

    /// Resident memory now, anonymous (heap, stacks) and file-backed (the
    /// mapped binary and libraries), in bytes, while the process still runs.
    pub fn rss_split_bytes(&self) -> anyhow::Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path} of {}", self.name))?;
        let field = |name: &str| status_bytes(&status, name).with_context(|| format!("{path} has no {name} line"));
        Ok((field("RssAnon:")?, field("RssFile:")?))
    }

    /// CPU time used so far, user plus system, of all its threads, in seconds
    /// (`utime` + `stime` of `/proc/<pid>/stat`), while the process still runs.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = fs::read_to_string(&path).with_context(|| format!("reading {path} of {}", self.name))?;
        let ticks = cpu_ticks(&stat).with_context(|| format!("{path} has no utime and stime fields"))?;
        Ok(ticks as f64 / USER_HZ as f64)
    }

    /// Sends `signal` (`TERM`, `KILL`, …) by pid, without waiting; fails when it is not running.
    pub fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        if let Some(status) = self.exit_status()? {
            bail!("{} exited already ({status}); cannot send SIG{signal}", self.name);
        }
        // Until it is reaped the pid cannot be reused, so this signals our child.
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid.clone()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("running kill -{signal} {pid}"))?;
        anyhow::ensure!(sent.success(), "kill -{signal} {pid} ({}) failed: {sent}", self.name);
        Ok(())
    }

    /// Stops the process: SIGTERM by pid, up to [`GRACE_PERIOD`] to exit,
    /// then SIGKILL; always reaps it.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exit_status()? {
            return Ok(status);
        }
        // Until it is reaped the pid cannot be reused, so this signals our child.
        let pid = self.pid().to_string();
        let term =
            Command::new("kill").args(["-TERM", pid.as_str()]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if term.is_ok_and(|status| status.success()) {
            let deadline = Instant::now() + GRACE_PERIOD;
            while Instant::now() < deadline {
                if let Some(status) = self.exit_status()? {
                    return Ok(status);
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        // SIGKILL; an error here means it exited in the meantime.
        let _ = self.child.kill();
        let status = self.child.wait().with_context(|| format!("waiting for {} (pid {pid}) to exit", self.name))?;
        self.reaped = Some(status);
        Ok(status)
    }

    fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            self.reaped =
                self.child.try_wait().with_context(|| format!("checking whether {} is still running", self.name))?;
        }
        Ok(self.reaped)
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            let _ = writeln!(std::io::stderr(), "e2e: could not stop {} (pid {}): {err:#}", self.name, self.pid());
        }
    }
}

/// The inherited variables a child must not see, out of `names`:
///
/// - `STEAD_*`: stead's binaries read settings from them; the suite sets
///   everything it relies on with flags, so a developer's shell cannot
///   change what is tested.
/// - proxies: everything the suite starts talks only to 127.0.0.1. Go
///   programs never proxy loopback, but kube-rs takes `HTTPS_PROXY` as the
///   proxy of a kubeconfig cluster (and, built without its proxy features,
///   refuses to start), so a CI runner's proxy must not reach the controller.
pub fn scrubbed(names: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    names
        .into_iter()
        .filter(|name| {
            let text = name.to_string_lossy();
            text.starts_with("STEAD_") || PROXY_VARIABLES.contains(&text.as_ref())
        })
        .collect()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `VmHWM` (peak resident set size) from `/proc/<pid>/status`, in bytes.
pub fn vm_hwm_bytes(proc_status: &str) -> Option<u64> {
    status_bytes(proc_status, "VmHWM:")
}

/// A `kB` line of `/proc/<pid>/status` (`field` with its colon), in bytes.
pub fn status_bytes(proc_status: &str, field: &str) -> Option<u64> {
    let line = proc_status.lines().find_map(|line| line.strip_prefix(field))?;
    let mut parts = line.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times: the kernel reports
/// them in `USER_HZ`, which is 100 on every architecture Linux runs stead on.
pub const USER_HZ: u64 = 100;

/// `utime` + `stime` (fields 14 and 15) from `/proc/<pid>/stat`, in clock
/// ticks. The command name (field 2) is parenthesised and may hold spaces or
/// parentheses itself, so fields are counted after its last `)`.
pub fn cpu_ticks(proc_stat: &str) -> Option<u64> {
    let (_, rest) = proc_stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state): utime and stime are its 12th and 13th.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn stead_settings_and_proxies_are_not_inherited() {
        let names = ["PATH", "STEAD_LISTEN", "HTTPS_PROXY", "no_proxy", "https_proxy", "ALL_PROXY", "RUST_LOG"];
        let removed = scrubbed(names.map(OsString::from));
        assert_eq!(removed, ["STEAD_LISTEN", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"].map(OsString::from));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tstead-controller\nVmPeak:\t  123456 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(vm_hwm_bytes(status), Some(20480 * 1024));
        assert_eq!(vm_hwm_bytes("VmRSS:\t 1 kB\n"), None);
        assert_eq!(vm_hwm_bytes("VmHWM:\t 1 MB\n"), None);
        let split = "RssAnon:\t    2556 kB\nRssFile:\t   15428 kB\n";
        assert_eq!(status_bytes(split, "RssAnon:"), Some(2556 * 1024));
        assert_eq!(status_bytes(split, "RssFile:"), Some(15428 * 1024));
    }

    #[test]
    fn cpu_ticks_add_utime_and_stime_after_the_command_name() {
        let stat = "4242 (stead (ctl) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 37 0 0 20 0 9 0 1234 0 0\n";
        assert_eq!(cpu_ticks(stat), Some(287));
        assert_eq!(cpu_ticks("4242 (short) S 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn cpu_seconds_of_a_running_process_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = ManagedProcess::spawn(
            "idler",
            Path::new("/bin/sh"),
            &["-c".to_owned(), "exec sleep 600".to_owned()],
            std::iter::empty::<(&str, &str)>(),
            dir.path(),
        )
        .unwrap();
        let seconds = process.cpu_seconds().unwrap();
        assert!((0.0..5.0).contains(&seconds), "{seconds}");
        process.stop().unwrap();
    }

    #[test]
    fn spawned_process_logs_its_command_line_and_is_stopped_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = ManagedProcess::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c".to_owned(), "echo started; exec sleep 600".to_owned()],
            [("E2E_MARKER", "1")],
            dir.path(),
        )
        .unwrap();
        process.ensure_running().unwrap();
        let status = process.stop().unwrap();
        assert!(!status.success(), "sleep 600 ended by a signal, not by itself");
        let log = fs::read_to_string(process.log_path()).unwrap();
        assert!(log.starts_with("$ /bin/sh -c echo started; exec sleep 600\n"), "{log}");
        // A second stop is a no-op that reports the same exit.
        assert_eq!(process.stop().unwrap(), status);
    }

    #[test]
    fn ensure_running_reports_an_early_exit_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = ManagedProcess::spawn(
            "crasher",
            Path::new("/bin/sh"),
            &["-c".to_owned(), "echo 'bad flag --nope'; exit 3".to_owned()],
            std::iter::empty::<(&str, &str)>(),
            dir.path(),
        )
        .unwrap();
        let err = wait_for_exit(&mut process);
        assert!(err.contains("crasher"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("bad flag --nope"), "{err}");
    }

    fn wait_for_exit(process: &mut ManagedProcess) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Err(err) = process.ensure_running() {
                return err.to_string();
            }
            thread::sleep(Duration::from_millis(20));
        }
        "the process did not exit within 30s".to_owned()
    }
}
