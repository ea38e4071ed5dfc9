//! The node's log of refused requests and connections: authorization failures,
//! limits, invalid messages. Each is one `tracing` event with the peer address, the
//! tenant the request names (when it names one) and the error the client was sent.
//!
//! A hostile or broken client can cause refusals as fast as it can send requests, so
//! the log is rate-limited: at most [`REFUSAL_LOG_LINES_PER_S_MAX`] lines per second;
//! the refusals beyond that are counted, and the first line of the next second says how
//! many were not logged. Limits and overload are logged at `warn` (the operator may need
//! to raise a limit); the rest at `info` (a client's mistake).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::{ErrorCode, ErrorReply};

/// Most refusal lines logged per second.
pub(crate) const REFUSAL_LOG_LINES_PER_S_MAX: u32 = 20;

/// What the rate limit decided for one refusal.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    /// Log it; `suppressed` refusals before it were not logged.
    Log { suppressed: u64 },
    /// Count it, do not log it.
    Suppress,
}

/// One-second windows with a line budget. Pure: `now` comes from the caller.
#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Window {
    fn admit(&mut self, now: Instant, lines_max: u32) -> Verdict {
        let expired = self
            .started
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
        if expired {
            self.started = Some(now);
            self.logged = 0;
        }
        if self.logged < lines_max {
            self.logged += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }
}

/// The rate-limited refusal log of one server.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    window: Mutex<Window>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                started: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }
}

impl RefusalLog {
    /// Logs that `peer` was refused with `reply` (rate-limited).
    pub(crate) fn refused(&self, peer: SocketAddr, tenant: Option<&str>, reply: &ErrorReply) {
        let verdict = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(Instant::now(), REFUSAL_LOG_LINES_PER_S_MAX);
        let Verdict::Log { suppressed } = verdict else {
            return;
        };
        if suppressed > 0 {
            tracing::warn!(
                suppressed,
                "{suppressed} refusals were not logged (more than {REFUSAL_LOG_LINES_PER_S_MAX} a second)"
            );
        }
        let tenant = tenant.unwrap_or("-");
        let code = reply.code;
        let message = reply.message.as_str();
        match code {
            ErrorCode::Overloaded | ErrorCode::Unavailable | ErrorCode::Timeout => {
                tracing::warn!(%peer, tenant, ?code, "refused: {message}");
            }
            _ => tracing::info!(%peer, tenant, ?code, "refused: {message}"),
        }
    }
}

/// Whether a reply is a refusal worth logging (not a plain "not found" of a read).
pub(crate) fn is_refusal(code: ErrorCode) -> bool {
    !matches!(code, ErrorCode::NotFound | ErrorCode::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holds_the_budget_and_the_next_reports_what_was_dropped() {
        let mut w = Window {
            started: None,
            logged: 0,
            suppressed: 0,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(w.admit(t0, 3), Verdict::Log { suppressed: 0 });
        }
        assert_eq!(
            w.admit(t0 + Duration::from_millis(500), 3),
            Verdict::Suppress
        );
        assert_eq!(
            w.admit(t0 + Duration::from_millis(999), 3),
            Verdict::Suppress
        );
        assert_eq!(
            w.admit(t0 + Duration::from_millis(1_000), 3),
            Verdict::Log { suppressed: 2 }
        );
        assert_eq!(
            w.admit(t0 + Duration::from_millis(1_001), 3),
            Verdict::Log { suppressed: 0 }
        );
    }
}
