//! How postgres is stopped, and how it is brought back after a crash: plans
//! and policies only, no signals are sent here.
//!
//! PostgreSQL has three shutdown modes, chosen by the signal the postmaster
//! gets: SIGTERM is *smart* (wait for sessions to end), SIGINT is *fast*
//! (disconnect everyone, checkpoint), SIGQUIT is *immediate* (no checkpoint,
//! crash recovery at the next start). A stop walks these stages in order,
//! each with a timeout, and ends with SIGKILL to the postmaster and to
//! whatever it leaves behind (see [`crate::supervisor`]). The total is bounded by the
//! sum of the stage timeouts plus [`KILL_WAIT`].

use std::fmt;
use std::time::Duration;

/// How long the final SIGKILL to the process group may take to be reaped.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// A PostgreSQL shutdown mode, named by what the postmaster does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SIGTERM: refuse new sessions, wait for existing ones to end.
    Smart,
    /// SIGINT: end every session, write a shutdown checkpoint.
    Fast,
    /// SIGQUIT: exit at once; the next start runs crash recovery.
    Immediate,
}

impl Mode {
    /// The signal that asks the postmaster for this mode.
    pub fn signal(self) -> rustix::process::Signal {
        match self {
            Mode::Smart => rustix::process::Signal::TERM,
            Mode::Fast => rustix::process::Signal::INT,
            Mode::Immediate => rustix::process::Signal::QUIT,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Smart => "smart (SIGTERM)",
            Mode::Fast => "fast (SIGINT)",
            Mode::Immediate => "immediate (SIGQUIT)",
        })
    }
}

/// One step of a stop: send the mode's signal, then wait up to `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub mode: Mode,
    pub timeout: Duration,
}

/// The timeouts of each mode; a stop uses the stages from a starting mode on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownTimeouts {
    pub smart: Duration,
    pub fast: Duration,
    pub immediate: Duration,
}

impl Default for ShutdownTimeouts {
    /// 5 s + 10 s + 5 s, plus [`KILL_WAIT`]: 25 s, inside Kubernetes' default
    /// 30 s termination grace period.
    fn default() -> Self {
        Self { smart: Duration::from_secs(5), fast: Duration::from_secs(10), immediate: Duration::from_secs(5) }
    }
}

impl ShutdownTimeouts {
    /// The stages of a stop that begins with `first`: later modes only.
    ///
    /// A zero timeout skips its stage, except immediate, which is always tried
    /// (briefly) before SIGKILL because it lets postgres remove its shared memory.
    pub fn plan(&self, first: Mode) -> Vec<Stage> {
        let all = [
            Stage { mode: Mode::Smart, timeout: self.smart },
            Stage { mode: Mode::Fast, timeout: self.fast },
            Stage { mode: Mode::Immediate, timeout: self.immediate.max(Duration::from_millis(100)) },
        ];
        let start = match first {
            Mode::Smart => 0,
            Mode::Fast => 1,
            Mode::Immediate => 2,
        };
        all[start..].iter().copied().filter(|stage| !stage.timeout.is_zero()).collect()
    }

    /// The longest a stop beginning with `first` can take.
    pub fn bound(&self, first: Mode) -> Duration {
        self.plan(first).iter().map(|stage| stage.timeout).sum::<Duration>() + KILL_WAIT
    }
}

/// When a postmaster that exited on its own is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart; doubled for each further consecutive failure.
    pub initial_backoff: Duration,
    /// Longest delay between two restarts.
    pub max_backoff: Duration,
    /// Consecutive failures after which the manager gives up (liveness then
    /// fails and the kubelet restarts the container). 0 never gives up.
    pub limit: u32,
    /// A postmaster that ran this long before exiting counts as a fresh failure
    /// (the consecutive count starts again at 1).
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            limit: 10,
            stable_after: Duration::from_secs(60),
        }
    }
}

/// What to do after the postmaster exited unexpectedly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCrash {
    /// Start it again after this delay; `attempt` is the consecutive failure count.
    Restart { attempt: u32, delay: Duration },
    /// Stop trying: `attempts` consecutive failures.
    GiveUp { attempts: u32 },
}

impl RestartPolicy {
    /// The decision after a crash, given the consecutive failures before this
    /// one and how long this postmaster ran.
    pub fn after_crash(&self, previous_failures: u32, ran_for: Duration) -> AfterCrash {
        let attempt = if ran_for >= self.stable_after { 1 } else { previous_failures.saturating_add(1) };
        if self.limit != 0 && attempt > self.limit {
            return AfterCrash::GiveUp { attempts: attempt - 1 };
        }
        let doublings = attempt.saturating_sub(1).min(20);
        let delay = self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff);
        AfterCrash::Restart { attempt, delay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn plans_walk_the_modes_in_order() {
        let t = ShutdownTimeouts { smart: secs(5), fast: secs(10), immediate: secs(3) };
        let rows = [
            (Mode::Smart, vec![(Mode::Smart, 5), (Mode::Fast, 10), (Mode::Immediate, 3)]),
            (Mode::Fast, vec![(Mode::Fast, 10), (Mode::Immediate, 3)]),
            (Mode::Immediate, vec![(Mode::Immediate, 3)]),
        ];
        for (first, expected) in rows {
            let plan: Vec<(Mode, u64)> = t.plan(first).iter().map(|s| (s.mode, s.timeout.as_secs())).collect();
            assert_eq!(plan, expected, "{first}");
        }
        assert_eq!(t.bound(Mode::Smart), secs(18) + KILL_WAIT);
        assert_eq!(t.bound(Mode::Fast), secs(13) + KILL_WAIT);
    }

    #[test]
    fn zero_timeouts_skip_stages_but_immediate_is_always_tried() {
        let t = ShutdownTimeouts { smart: Duration::ZERO, fast: secs(2), immediate: Duration::ZERO };
        let plan = t.plan(Mode::Smart);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].mode, Mode::Fast);
        assert_eq!(plan[1], Stage { mode: Mode::Immediate, timeout: Duration::from_millis(100) });
    }

    #[test]
    fn default_fits_the_kubernetes_grace_period() {
        assert!(ShutdownTimeouts::default().bound(Mode::Smart) <= secs(30));
    }

    #[test]
    fn signals_match_postgres_modes() {
        assert_eq!(Mode::Smart.signal(), rustix::process::Signal::TERM);
        assert_eq!(Mode::Fast.signal(), rustix::process::Signal::INT);
        assert_eq!(Mode::Immediate.signal(), rustix::process::Signal::QUIT);
    }

    #[test]
    fn restart_backoff_doubles_up_to_the_cap_then_gives_up() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: secs(4),
            limit: 5,
            stable_after: secs(60),
        };
        let quick = secs(1);
        let rows = [
            (0, AfterCrash::Restart { attempt: 1, delay: Duration::from_millis(500) }),
            (1, AfterCrash::Restart { attempt: 2, delay: secs(1) }),
            (2, AfterCrash::Restart { attempt: 3, delay: secs(2) }),
            (3, AfterCrash::Restart { attempt: 4, delay: secs(4) }),
            (4, AfterCrash::Restart { attempt: 5, delay: secs(4) }),
            (5, AfterCrash::GiveUp { attempts: 5 }),
        ];
        for (previous, expected) in rows {
            assert_eq!(policy.after_crash(previous, quick), expected, "after {previous} failures");
        }
    }

    #[test]
    fn a_long_run_resets_the_count() {
        let policy = RestartPolicy { limit: 2, ..RestartPolicy::default() };
        assert_eq!(policy.after_crash(2, secs(61)), AfterCrash::Restart { attempt: 1, delay: policy.initial_backoff });
        assert_eq!(policy.after_crash(2, secs(1)), AfterCrash::GiveUp { attempts: 2 });
    }

    #[test]
    fn limit_zero_never_gives_up_and_delays_do_not_overflow() {
        let policy = RestartPolicy { limit: 0, ..RestartPolicy::default() };
        match policy.after_crash(u32::MAX - 1, Duration::ZERO) {
            AfterCrash::Restart { delay, .. } => assert_eq!(delay, policy.max_backoff),
            other @ AfterCrash::GiveUp { .. } => unreachable!("{other:?}"),
        }
    }
}
