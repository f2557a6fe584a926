//! Bounded polling: every wait in the suite ends, and says what it waited for.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::bail;

/// How often a condition is probed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// One probe's answer.
#[derive(Debug)]
pub enum Poll<T> {
    /// The condition holds; the wait returns this value.
    Ready(T),
    /// Not yet; the text describes what was seen, for the timeout message.
    Pending(String),
}

/// Probes until it answers [`Poll::Ready`], an error (returned at once: a
/// crashed process will not recover), or `timeout` passes.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> anyhow::Result<Poll<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let observed = match probe()? {
            Poll::Ready(value) => return Ok(value),
            Poll::Pending(observed) => observed,
        };
        if Instant::now() >= deadline {
            bail!("timed out after {}s waiting for {what}; last observation: {observed}", timeout.as_secs());
        }
        thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn returns_the_value_once_ready() {
        let mut calls = 0;
        let value = until("three calls", Duration::from_secs(30), || {
            calls += 1;
            Ok(if calls == 3 { Poll::Ready(calls) } else { Poll::Pending(format!("{calls} calls")) })
        })
        .unwrap();
        assert_eq!(value, 3);
    }

    #[test]
    fn timeout_names_the_wait_and_the_last_observation() {
        let err = until::<()>("a miracle", Duration::ZERO, || Ok(Poll::Pending("still mundane".to_owned())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("waiting for a miracle"), "{err}");
        assert!(err.contains("last observation: still mundane"), "{err}");
    }

    #[test]
    fn probe_errors_end_the_wait_at_once() {
        let mut calls = 0;
        let err = until::<()>("anything", Duration::from_secs(30), || {
            calls += 1;
            anyhow::bail!("process exited")
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(err.to_string(), "process exited");
    }
}
