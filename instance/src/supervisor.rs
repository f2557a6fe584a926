//! The postmaster as a supervised child: started on request, stopped in
//! stages, restarted with backoff when it exits on its own.
//!
//! One task owns the child; everything else talks to it through
//! [`Supervisor`] and reads its [`Snapshot`]. Because start and stop go
//! through the same task, a crash restart can never race an intentional
//! stop. The postmaster runs in its own process group; after it exits, that
//! group and every orphan it left (backends lead their own groups, and come
//! to the manager as PID 1 or child subreaper) get SIGKILL, so no backend
//! outlives it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::process::{Child, Exit, Reaper};
use crate::shutdown::{AfterCrash, KILL_WAIT, Mode, RestartPolicy, ShutdownTimeouts};

/// Builds the postmaster's command line, writing whatever files it needs
/// first. Called before every start, so a restart picks up the current role.
pub type Launch = Arc<dyn Fn() -> Result<std::process::Command, String> + Send + Sync>;

/// What the postmaster is doing, as the supervisor knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not running, on purpose (never started, or stopped by the manager).
    Stopped,
    /// The process is alive (it may not accept connections yet).
    Running { pid: u32 },
    /// It exited on its own; it is started again after a backoff.
    Restarting { attempt: u32, last_exit: String },
    /// It exited on its own too often; the manager stopped restarting it.
    GaveUp { attempts: u32, last_exit: String },
}

/// The supervisor's published state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub phase: Phase,
    /// Restarts after crashes since the manager started.
    pub restarts: u32,
    /// Increases with every postmaster started.
    pub generation: u64,
}

enum Request {
    Start(oneshot::Sender<Result<u32, String>>),
    Stop(Mode, oneshot::Sender<()>),
}

/// Handle to the supervising task.
#[derive(Clone)]
pub struct Supervisor {
    requests: mpsc::Sender<Request>,
    snapshot: watch::Receiver<Snapshot>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("snapshot", &*self.snapshot.borrow()).finish()
    }
}

/// The supervising task is gone (only during process exit).
pub const GONE: &str = "the postmaster supervisor is not running";

impl Supervisor {
    /// Spawns the supervising task on the current runtime. Nothing is started yet.
    pub fn spawn(reaper: Reaper, launch: Launch, policy: RestartPolicy, timeouts: ShutdownTimeouts) -> Self {
        let (requests, inbox) = mpsc::channel(8);
        let (publish, snapshot) = watch::channel(Snapshot { phase: Phase::Stopped, restarts: 0, generation: 0 });
        let task = Task { reaper, launch, policy, timeouts, publish, failures: 0 };
        tokio::spawn(task.run(inbox));
        Supervisor { requests, snapshot }
    }

    /// The current state.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    /// Starts the postmaster (a no-op when it runs); returns its pid.
    pub async fn start(&self) -> Result<u32, String> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Start(reply)).await.map_err(|_| GONE.to_owned())?;
        answer.await.map_err(|_| GONE.to_owned())?
    }

    /// Stops the postmaster, beginning with `first` and escalating; returns
    /// once it has exited (at most [`ShutdownTimeouts::bound`]).
    pub async fn stop(&self, first: Mode) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Stop(first, reply)).await.map_err(|_| GONE.to_owned())?;
        answer.await.map_err(|_| GONE.to_owned())
    }
}

struct Task {
    reaper: Reaper,
    launch: Launch,
    policy: RestartPolicy,
    timeouts: ShutdownTimeouts,
    publish: watch::Sender<Snapshot>,
    /// Consecutive crashes (or failed restarts) without a stable run.
    failures: u32,
}

struct Running {
    child: Child,
    since: Instant,
}

impl Task {
    async fn run(mut self, mut inbox: mpsc::Receiver<Request>) {
        let mut running: Option<Running> = None;
        let mut restart_at: Option<tokio::time::Instant> = None;
        loop {
            let wake = restart_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                request = inbox.recv() => match request {
                    Some(Request::Start(reply)) => {
                        restart_at = None;
                        let result = match &running {
                            Some(current) => Ok(current.child.pid()),
                            None => {
                                self.failures = 0;
                                self.spawn().map(|child| {
                                    let pid = child.pid();
                                    running = Some(Running { child, since: Instant::now() });
                                    pid
                                })
                            }
                        };
                        if result.is_err() {
                            self.set_phase(Phase::Stopped);
                        }
                        let _ = reply.send(result);
                    }
                    Some(Request::Stop(first, reply)) => {
                        restart_at = None;
                        if let Some(current) = running.take() {
                            self.stop(current.child, first).await;
                        }
                        self.set_phase(Phase::Stopped);
                        let _ = reply.send(());
                    }
                    None => {
                        // Every handle is gone: the manager is exiting.
                        if let Some(current) = running.take() {
                            self.stop(current.child, Mode::Fast).await;
                        }
                        return;
                    }
                },
                exit = wait_running(&mut running) => {
                    if let Some(dead) = &running {
                        self.kill_leftovers(&dead.child);
                    }
                    let ran_for = running.take().map(|r| r.since.elapsed()).unwrap_or_default();
                    restart_at = self.after_failure(exit.to_string(), ran_for);
                },
                () = tokio::time::sleep_until(wake), if restart_at.is_some() => {
                    restart_at = None;
                    match self.spawn() {
                        Ok(child) => {
                            self.publish.send_modify(|s| s.restarts = s.restarts.saturating_add(1));
                            running = Some(Running { child, since: Instant::now() });
                        }
                        Err(message) => restart_at = self.after_failure(message, Duration::ZERO),
                    }
                }
            }
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.publish.send_if_modified(|s| {
            let changed = s.phase != phase;
            s.phase = phase;
            changed
        });
    }

    fn spawn(&mut self) -> Result<Child, String> {
        use std::os::unix::process::CommandExt;

        let mut command = (self.launch)()?;
        // Its own group: terminal signals do not reach it, and the group can be killed as one.
        command.process_group(0).stdin(std::process::Stdio::null());
        let child = self
            .reaper
            .spawn(&mut command)
            .map_err(|err| format!("cannot start {}: {err}", command.get_program().to_string_lossy()))?;
        let pid = child.pid();
        info!(pid, "postmaster started");
        self.publish.send_modify(|s| {
            s.phase = Phase::Running { pid };
            s.generation += 1;
        });
        Ok(child)
    }

    /// Decides what follows an unexpected exit (or a failed restart).
    fn after_failure(&mut self, last_exit: String, ran_for: Duration) -> Option<tokio::time::Instant> {
        match self.policy.after_crash(self.failures, ran_for) {
            AfterCrash::Restart { attempt, delay } => {
                self.failures = attempt;
                warn!(%last_exit, attempt, delay_ms = delay.as_millis(), "postmaster exited unexpectedly; restarting");
                self.set_phase(Phase::Restarting { attempt, last_exit });
                Some(tokio::time::Instant::now() + delay)
            }
            AfterCrash::GiveUp { attempts } => {
                error!(%last_exit, attempts, "postmaster keeps exiting; giving up (liveness now fails)");
                self.set_phase(Phase::GaveUp { attempts, last_exit });
                None
            }
        }
    }

    /// Walks the shutdown stages, then kills the process group.
    async fn stop(&self, mut child: Child, first: Mode) {
        let pid = child.pid();
        for stage in self.timeouts.plan(first) {
            info!(pid, mode = %stage.mode, timeout_s = stage.timeout.as_secs_f32(), "stopping postmaster");
            if let Err(err) = child.signal(stage.mode.signal()) {
                warn!(pid, error = %err, "cannot signal the postmaster");
            }
            if let Some(exit) = child.wait_timeout(stage.timeout).await {
                info!(pid, %exit, "postmaster stopped");
                self.kill_leftovers(&child);
                return;
            }
        }
        warn!(pid, "postmaster ignored every shutdown mode; killing it");
        self.kill_leftovers(&child);
        if child.wait_timeout(KILL_WAIT).await.is_none() {
            error!(pid, "postmaster survived SIGKILL");
        }
        self.kill_leftovers(&child);
    }

    /// SIGKILL to the postmaster, its process group and the orphans it left
    /// (its children once it is gone); nothing of it may outlive it.
    fn kill_leftovers(&self, child: &Child) {
        if let Err(err) = child.signal_group(Signal::KILL) {
            warn!(pid = child.pid(), error = %err, "cannot kill the postmaster's process group");
        }
        let killed = self.reaper.kill_orphans();
        if killed > 0 {
            warn!(killed, "killed processes the postmaster left behind");
        }
    }
}

async fn wait_running(running: &mut Option<Running>) -> Exit {
    match running {
        Some(current) => current.child.wait().await,
        None => std::future::pending().await,
    }
}
