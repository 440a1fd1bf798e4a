//! Retry policy of queued routes: when the next attempt is due, and when to give up.
//!
//! The schedule lives in the store (a message's `next_attempt_at`), never in a sleeping task, so
//! a restart neither loses nor repeats a wait. The delay sequence is backon's exponential
//! backoff; tilts adds its own bounded jitter (0–20%) and honours `Retry-After`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::types::RetryConfig;

/// A compiled retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial: Duration,
    pub multiplier: f64,
    pub max_delay: Duration,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// The documented default: 10 attempts, 5s, ×2, at most 1h apart, with jitter (about 21
    /// minutes from the first attempt to the last).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_secs(5),
            multiplier: 2.0,
            max_delay: Duration::from_secs(3600),
            jitter: true,
        }
    }
}

/// The longest `Retry-After` tilts honours; a peer asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

impl RetryPolicy {
    /// The policy of a route's `retry:` block, defaults filled in.
    pub fn from_config(c: &RetryConfig) -> Self {
        let d = RetryPolicy::default();
        RetryPolicy {
            max_attempts: c.max_attempts.unwrap_or(d.max_attempts),
            initial: c.initial.map(|x| x.0).unwrap_or(d.initial),
            multiplier: c.multiplier.unwrap_or(d.multiplier),
            max_delay: c.max_delay.map(|x| x.0).unwrap_or(d.max_delay),
            jitter: c.jitter.unwrap_or(d.jitter),
        }
    }

    /// Whether another attempt may follow attempt number `attempt` (1-based).
    pub fn may_retry(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The delay after failed attempt number `attempt` (1-based), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let d = ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_factor(self.multiplier as f32)
            .with_max_delay(self.max_delay)
            .without_max_times()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        // backon multiplies in f32: round away its noise (300.000012ms) to whole microseconds.
        Duration::from_micros((d.as_nanos() as f64 / 1000.0).round() as u64)
    }

    /// The delay after failed attempt `attempt`, with jitter (`unit` in `[0, 1)`, random in
    /// production) and the peer's `Retry-After` honoured when it asks for longer.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let mut d = self.base_delay(attempt);
        if self.jitter {
            d = d.mul_f64(1.0 + 0.2 * unit.clamp(0.0, 1.0));
        }
        match retry_after {
            Some(ra) if ra > d => ra.min(MAX_RETRY_AFTER),
            _ => d,
        }
    }
}

/// A random number in `[0, 1)` for jitter (from a v4 UUID's random bits: no extra RNG crate).
pub fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.base_delay(1), Duration::from_secs(5));
        assert_eq!(p.base_delay(2), Duration::from_secs(10));
        assert_eq!(p.base_delay(3), Duration::from_secs(20));
        assert_eq!(p.base_delay(20), Duration::from_secs(3600));
        assert!(p.may_retry(9) && !p.may_retry(10));
    }

    #[test]
    fn jitter_is_bounded_and_retry_after_wins_when_longer() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None, 0.0), Duration::from_secs(5));
        assert_eq!(
            p.delay(1, None, 0.999_999),
            Duration::from_secs(5).mul_f64(1.0 + 0.2 * 0.999_999)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60)), 0.5),
            Duration::from_secs(60)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(1)), 0.0),
            Duration::from_secs(5)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(10 * 86400)), 0.0),
            MAX_RETRY_AFTER
        );
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn config_overrides_defaults() {
        let c = RetryConfig {
            max_attempts: Some(3),
            initial: Some(crate::config::types::Dur(Duration::from_millis(100))),
            multiplier: Some(3.0),
            max_delay: None,
            jitter: Some(false),
        };
        let p = RetryPolicy::from_config(&c);
        assert_eq!(p.base_delay(2), Duration::from_millis(300));
        assert_eq!(p.delay(2, None, 0.9), Duration::from_millis(300));
        assert!(!p.may_retry(3));
    }
}
