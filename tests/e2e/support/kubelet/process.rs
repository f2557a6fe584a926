//! A container as local processes: started through `setpriv` as the host
//! user that stands for the pod's `runAsUser`, in a process group of its
//! own, with output appended to a log file; and found again by where its
//! processes live, since there is no cgroup or PID namespace to kill:
//! every process whose working directory or executable lies under one of
//! the pod's directories belongs to it. (PostgreSQL's processes work in
//! PGDATA, on the pod's claim; the instance manager runs from the pod's
//! `emptyDir`; anything they start without a `chdir` works in the pod's
//! directory.)

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal};

/// The uid of the `postgres` user in the official images, which stead's pods run as.
pub const IMAGE_POSTGRES_UID: i64 = 999;
/// The `PATH` a container starts with (the official images' default).
pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Rounds of SIGKILL before giving up on processes that keep appearing.
const KILL_ROUNDS: usize = 50;

/// A host account, from `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Finds `name` in `/etc/passwd` text.
pub fn find_user(passwd: &str, name: &str) -> Option<HostUser> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [user, _, uid, gid, ..] if *user == name => {
                Some(HostUser { name: name.to_owned(), uid: uid.parse().ok()?, gid: gid.parse().ok()? })
            }
            _ => None,
        }
    })
}

/// The host user `name`, or why there is none.
pub fn host_user(name: &str) -> anyhow::Result<HostUser> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    find_user(&passwd, name).with_context(|| format!("there is no user {name:?} in /etc/passwd"))
}

/// Everything one start of a container needs.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Program first.
    pub words: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub user: HostUser,
    pub log: PathBuf,
    /// First line written to the log for this start.
    pub banner: String,
}

/// `setpriv`'s command line for `launch`: the user's ids and groups, and
/// SIGKILL when the thread that started it goes (so a crashed suite does
/// not leave instance managers behind).
pub fn setpriv_args(launch: &Launch) -> Vec<String> {
    let mut args = vec![
        format!("--reuid={}", launch.user.name),
        format!("--regid={}", launch.user.name),
        "--init-groups".to_owned(),
        "--pdeathsig=KILL".to_owned(),
        "--".to_owned(),
    ];
    args.extend(launch.words.iter().cloned());
    args
}

/// Starts the container's first process.
pub fn spawn(launch: &Launch) -> anyhow::Result<Child> {
    if let Some(parent) = launch.log.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .with_context(|| format!("opening {}", launch.log.display()))?;
    writeln!(out, "{}", launch.banner).with_context(|| format!("writing {}", launch.log.display()))?;
    let err = out.try_clone().with_context(|| format!("duplicating the handle of {}", launch.log.display()))?;
    if launch.words.is_empty() {
        bail!("no program to run");
    }
    Command::new("setpriv")
        .args(setpriv_args(launch))
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting setpriv for {}", launch.words[0]))
}

/// Sends `signal` to one process; an exited one is not an error.
pub fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The process's exit, as (exit code, signal).
pub fn exit_parts(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    (status.code(), status.signal())
}

/// Whether `path` (a link's target as /proc shows it) lies under one of `roots`.
pub fn under(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| path.starts_with(root))
}

/// Every live process whose working directory or executable lies under
/// `roots` (zombies have neither, and are not counted).
pub fn processes_under(roots: &[PathBuf]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let base = PathBuf::from(format!("/proc/{pid}"));
            ["cwd", "exe"].iter().any(|link| fs::read_link(base.join(link)).is_ok_and(|target| under(&target, roots)))
        })
        .collect()
}

/// SIGKILLs every process under `roots` until none is left; returns how many were killed.
pub fn kill_under(roots: &[PathBuf]) -> usize {
    let mut killed = 0;
    for _ in 0..KILL_ROUNDS {
        let found = processes_under(roots);
        if found.is_empty() {
            break;
        }
        for pid in &found {
            signal(*pid, Signal::KILL);
        }
        killed += found.len();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

/// `VmHWM` of a live process, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    crate::support::process::vm_hwm_bytes(&status)
}

/// Whether this machine can run pods: root (to switch users), `setpriv`, and
/// the `postgres` user that stands for uid 999.
pub fn availability() -> Result<HostUser, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("the stand-in kubelet runs pods as the postgres user, which needs root".to_owned());
    }
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !setpriv.is_ok_and(|out| out.status.success()) {
        return Err("setpriv (util-linux) is not installed; the stand-in kubelet needs it".to_owned());
    }
    host_user("postgres").map_err(|e| format!("{e:#}; install PostgreSQL (it creates the postgres user)"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn users_are_read_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(find_user(passwd, "postgres"), Some(HostUser { name: "postgres".to_owned(), uid: 101, gid: 104 }));
        assert_eq!(find_user(passwd, "nobody"), None);
    }

    #[test]
    fn setpriv_switches_user_and_stops_parsing_options() {
        let launch = Launch {
            words: vec!["/bin/prog".to_owned(), "--flag".to_owned()],
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            user: HostUser { name: "postgres".to_owned(), uid: 101, gid: 104 },
            log: PathBuf::from("/dev/null"),
            banner: String::new(),
        };
        assert_eq!(
            setpriv_args(&launch),
            ["--reuid=postgres", "--regid=postgres", "--init-groups", "--pdeathsig=KILL", "--", "/bin/prog", "--flag"]
        );
    }

    #[test]
    fn processes_are_found_by_their_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("600").current_dir(dir.path()).spawn().unwrap();
        let roots = [dir.path().to_path_buf()];
        assert!(processes_under(&roots).contains(&child.id()));
        assert!(under(&dir.path().join("x"), &roots) && !under(Path::new("/elsewhere"), &roots));
        assert_eq!(kill_under(&roots), 1);
        assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(processes_under(&roots).is_empty());
    }
}
