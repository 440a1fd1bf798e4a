//! Timer sources (`from: { timer: { cron, timezone, catch_up } }`): each run of the schedule is
//! a message `{"scheduledAt": "<RFC 3339, UTC>"}` through its (queued) route.
//!
//! Neither skipped nor doubled, across restarts and processes:
//! - the next run time of each timer is kept in the store (`timers` table). A process starting
//!   picks it up; a timer seen for the first time (or whose schedule changed) starts at the
//!   next occurrence after now, so adding a timer never fires past runs;
//! - a run is fired by storing its message with the idempotency key
//!   `timer:<route id>:<scheduled time>` (through the same ingress code as HTTP requests), so
//!   two processes firing the same run, or a process that fired a run and died before it moved
//!   the next run time on, store it once;
//! - then the next run time moves on (compare-and-set: the process that loses re-reads it);
//! - runs missed while no tilts was running are fired at start, the most recent `catch_up` of
//!   them (default 10), each with its own `scheduledAt`.
//!
//! A run whose message cannot be stored (the store is down) is tried again after a pause and
//! the next run time does not move until it is stored.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::plan::{Ingress, Plan, Route, TimerSchedule};
use crate::server::AppState;
use crate::store::Store;

/// Longest sleep between checks (the clock may jump; another process may move a timer).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Pause after a failure to reach the store.
const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// Most occurrences looked at when catching up (a per-second timer down for days).
const MAX_SCAN: usize = 100_000;

/// Starts one task per timer route; they stop when `stop` turns true.
pub fn spawn(
    plan: &Arc<Plan>,
    state: Arc<AppState>,
    store: Store,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    plan.routes
        .iter()
        .filter(|r| matches!(r.ingress, Ingress::Timer(_)))
        .map(|r| tokio::spawn(run(r.clone(), state.clone(), store.clone(), stop.clone())))
        .collect()
}

/// The first occurrence strictly after `t`.
pub fn next_after(s: &TimerSchedule, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    s.cron
        .find_next_occurrence(&t.with_timezone(&s.timezone), false)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// The runs due at `now` from `next` on, and the first run after `now`: at most `catch_up` of
/// the due ones, the most recent.
pub fn due_runs(
    s: &TimerSchedule,
    next: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Vec<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let mut due = Vec::new();
    let mut t = Some(next);
    while let Some(at) = t {
        if at > now || due.len() >= MAX_SCAN {
            break;
        }
        due.push(at);
        t = next_after(s, at);
    }
    let keep = s.catch_up.max(1) as usize;
    if due.len() > keep {
        due.drain(..due.len() - keep);
    }
    (due, t)
}

async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

async fn run(
    route: Arc<Route>,
    state: Arc<AppState>,
    store: Store,
    mut stop: watch::Receiver<bool>,
) {
    let Ingress::Timer(sched) = &route.ingress else {
        return;
    };
    let key = format!("{} @ {}", sched.expression, sched.timezone);
    let Some(first) = next_after(sched, Utc::now()) else {
        tracing::error!(route = %route.id, schedule = %key, "the schedule has no future run");
        return;
    };
    let mut next = loop {
        match store.timer_start(&route.id, &key, first, Utc::now()).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(route = %route.id, error = %e, "timer: the store is unavailable");
                if !pause(RETRY_PAUSE, &mut stop).await {
                    return;
                }
            }
        }
    };
    tracing::info!(route = %route.id, schedule = %key, next_run = %next, "timer started");
    loop {
        let now = Utc::now();
        if next > now {
            let wait = (next - now).to_std().unwrap_or_default().min(MAX_SLEEP);
            if !pause(wait, &mut stop).await {
                return;
            }
            continue;
        }
        let (due, following) = due_runs(sched, next, now);
        let Some(following) = following else {
            tracing::warn!(route = %route.id, "the schedule has no further run: timer stops");
            return;
        };
        let mut fired = true;
        for at in &due {
            if !fire(&state, &route, *at).await {
                fired = false;
                break;
            }
        }
        if !fired {
            if !pause(RETRY_PAUSE, &mut stop).await {
                return;
            }
            continue;
        }
        match store
            .timer_advance(&route.id, next, following, Utc::now())
            .await
        {
            Ok(true) => next = following,
            // Another process moved it on: take its value.
            Ok(false) => match store
                .timer_start(&route.id, &key, following, Utc::now())
                .await
            {
                Ok(n) => next = n,
                Err(_) => {
                    if !pause(RETRY_PAUSE, &mut stop).await {
                        return;
                    }
                }
            },
            Err(e) => {
                tracing::warn!(route = %route.id, error = %e, "timer: cannot record the next run; retrying");
                if !pause(RETRY_PAUSE, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Stores one run's message. True when it is stored (or was already, by another process or
/// before a restart) or refused for good (the route rejects it: logged, not retried).
async fn fire(state: &Arc<AppState>, route: &Arc<Route>, at: DateTime<Utc>) -> bool {
    let scheduled = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = serde_json::json!({"scheduledAt": scheduled}).to_string();
    let req = Request::builder()
        .method(http::Method::POST)
        .uri("/")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", format!("timer:{}:{scheduled}", route.id))
        .body(Body::from(body));
    let Ok(req) = req else { return true };
    let resp = crate::server::handle(state.clone(), route.clone(), req).await;
    let status = resp.status();
    if status.is_success() {
        tracing::info!(route = %route.id, scheduled_at = %scheduled, "timer fired");
        true
    } else if status.is_client_error() {
        tracing::error!(route = %route.id, scheduled_at = %scheduled, status = status.as_u16(), "timer run refused by its route; not retried");
        true
    } else {
        tracing::warn!(route = %route.id, scheduled_at = %scheduled, status = status.as_u16(), "timer run not stored; retrying");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(expr: &str, catch_up: u32) -> TimerSchedule {
        TimerSchedule {
            expression: expr.into(),
            cron: croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Optional)
                .build()
                .parse(expr)
                .unwrap(),
            timezone: chrono_tz::Europe::Riga,
            catch_up,
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn next_run_follows_riga_time_across_dst() {
        // 06:00 in Riga is 03:00 UTC in summer (EEST, +3) and 04:00 UTC in winter (EET, +2).
        let s = sched("0 0 6 * * *", 10);
        assert_eq!(
            next_after(&s, t("2026-07-01T00:00:00Z")).unwrap(),
            t("2026-07-01T03:00:00Z")
        );
        assert_eq!(
            next_after(&s, t("2026-11-28T00:00:00Z")).unwrap(),
            t("2026-11-28T04:00:00Z")
        );
    }

    #[test]
    fn due_runs_keep_the_most_recent_catch_up() {
        let s = sched("0 */15 * * * *", 3);
        let (due, following) = due_runs(&s, t("2026-11-28T08:00:00Z"), t("2026-11-28T09:07:00Z"));
        // 08:00, 08:15, ..., 09:00 are due (5 runs); the last 3 are fired.
        assert_eq!(
            due,
            vec![
                t("2026-11-28T08:30:00Z"),
                t("2026-11-28T08:45:00Z"),
                t("2026-11-28T09:00:00Z")
            ]
        );
        assert_eq!(following, Some(t("2026-11-28T09:15:00Z")));
        // Nothing due yet.
        let (due, following) = due_runs(&s, t("2026-11-28T09:15:00Z"), t("2026-11-28T09:07:00Z"));
        assert!(due.is_empty());
        assert_eq!(following, Some(t("2026-11-28T09:15:00Z")));
        // catch_up 0 still fires the run that is due now.
        let s = sched("0 */15 * * * *", 0);
        let (due, _) = due_runs(&s, t("2026-11-28T08:00:00Z"), t("2026-11-28T09:07:00Z"));
        assert_eq!(due, vec![t("2026-11-28T09:00:00Z")]);
    }
}
