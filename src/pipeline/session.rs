//! The one reconnect loop both workers run: a worker's *session* is one connected stretch (connect,
//! stream, until shutdown or an error); transient errors start a new session after a delay from the
//! backoff policy ([`crate::retry`]), anything else ends the worker.
//!
//! The backoff restarts only after a session that made progress (applied a batch): a lasting outage
//! after hours of streaming is retried with growing delays, not every 100–200 ms forever.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::{retry, telemetry};

use super::RunError;

/// What the reconnect loop needs of a worker.
pub trait Worker {
    /// The direction's name, for logs.
    const NAME: &'static str;

    /// One connected stretch. `Ok` when it ended on shutdown (or, with `run --once`, when done).
    fn session(
        &mut self,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<(), RunError>> + Send;

    /// Batches applied so far: a session that raised it made progress.
    fn progress(&self) -> u64;

    /// Counts a reconnection caused by a transient error.
    fn retried(&mut self);

    /// A chance to take an error as a reason to start the next session at once (the reverse worker's
    /// replay of a group it must receive again staged); returns the error otherwise.
    fn recover(&mut self, error: RunError) -> Result<(), RunError> {
        Err(error)
    }
}

/// Runs `worker`'s sessions until shutdown (`Ok`) or an error retrying cannot fix.
pub async fn reconnecting<W: Worker>(
    worker: &mut W,
    shutdown: &CancellationToken,
    broken_retry: Option<std::time::Duration>,
) -> Result<(), RunError> {
    let mut delays = retry::backoff();
    loop {
        let before = worker.progress();
        let error = match worker.session(shutdown).await {
            Ok(()) => {
                telemetry::down(W::NAME, None);
                return Ok(());
            }
            Err(error) => error,
        };
        let Err(error) = worker.recover(error) else {
            continue;
        };
        telemetry::down(W::NAME, Some(error.to_string()));
        if !error.is_transient() {
            // A direction that cannot run stops alone: the other goes on, and this one tries again
            // on a slow timer (it resumes by itself once `tandem init` repaired what it lacks).
            let Some(wait) = broken_retry else {
                return Err(error);
            };
            tracing::error!(error = %error, retry_in = ?wait, "{}: the direction cannot run; it stops until this is fixed, the other direction goes on", W::NAME);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            delays = retry::backoff();
            continue;
        }
        if worker.progress() > before {
            delays = retry::backoff();
        }
        worker.retried();
        telemetry::retried(W::NAME, error.cause());
        let delay = delays.next().expect("the backoff never ends");
        tracing::warn!(error = %error, retry_in = ?delay, "{}: transient error; reconnecting", W::NAME);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A worker whose first session applies a batch and then fails, and whose later sessions fail at
    /// once: a lasting outage after a productive stretch.
    struct Outage {
        sessions: Vec<tokio::time::Instant>,
        batches: u64,
        retries: u64,
        stop_after: usize,
    }

    impl Worker for Outage {
        const NAME: &'static str = "test";

        async fn session(&mut self, shutdown: &CancellationToken) -> Result<(), RunError> {
            self.sessions.push(tokio::time::Instant::now());
            if self.sessions.len() == 1 {
                self.batches += 1;
            }
            if self.sessions.len() == self.stop_after {
                shutdown.cancel();
            }
            Err(RunError::ListenerLost)
        }

        fn progress(&self) -> u64 {
            self.batches
        }

        fn retried(&mut self) {
            self.retries += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_productive_session_the_delays_grow() {
        let mut worker = Outage {
            sessions: Vec::new(),
            batches: 0,
            retries: 0,
            stop_after: 8,
        };
        let shutdown = CancellationToken::new();
        reconnecting(&mut worker, &shutdown, None).await.unwrap();
        let gaps: Vec<Duration> = worker
            .sessions
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .collect();
        assert_eq!(worker.retries, 8);
        // 100 ms doubling, with jitter up to twice: the n-th wait is at least 100 ms * 2^n.
        for (n, gap) in gaps.iter().enumerate() {
            assert!(
                *gap >= Duration::from_millis(100 << n),
                "wait {n} was {gap:?}: {gaps:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn errors_retrying_cannot_fix_end_the_worker() {
        struct Broken;
        impl Worker for Broken {
            const NAME: &'static str = "test";
            async fn session(&mut self, _: &CancellationToken) -> Result<(), RunError> {
                Err(RunError::Worker("broken".into()))
            }
            fn progress(&self) -> u64 {
                0
            }
            fn retried(&mut self) {
                unreachable!("not retried")
            }
        }
        let result = reconnecting(&mut Broken, &CancellationToken::new(), None).await;
        assert!(matches!(result, Err(RunError::Worker(_))), "{result:?}");
    }
}
