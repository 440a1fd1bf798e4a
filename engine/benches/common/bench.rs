//! Helpers the benchmarks share (included with `#[path]`): settings from the environment, the
//! machine's description, failed requests counted with the first few texts, verdicts.

// Each benchmark uses some of these.
#![allow(dead_code)]

use anyhow::anyhow;

/// A number from the environment; unset or blank gives `default`.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid number")),
        _ => Ok(default),
    }
}

/// Whether a flag is on in the environment (`1`, `true`, `yes`, `on`).
pub fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref().map(str::trim),
        Ok("1" | "true" | "yes" | "on")
    )
}

/// How a target reads in the report.
pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS  <<<<<<<<<<" }
}

/// The load averages (1, 5, 15 minutes).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// The CPU's model name.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "CPU model unknown".into())
}

/// An error with its causes, on one line.
pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Failed requests: how many, and the first few different texts.
#[derive(Default)]
pub struct Errors {
    pub count: u64,
    pub first: Vec<String>,
}

impl Errors {
    pub fn add(&mut self, e: String) {
        self.count += 1;
        if self.first.len() < 3 && !self.first.contains(&e) {
            self.first.push(e);
        }
    }
    pub fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for e in other.first {
            if self.first.len() < 3 && !self.first.contains(&e) {
                self.first.push(e);
            }
        }
    }
}

/// How late the machine wakes a thread that sleeps 100 us, over `samples` sleeps on an
/// otherwise idle process: (p50, p99, p99.9, max) in microseconds. A virtual machine whose
/// vCPUs the host deschedules shows it here before any benchmark runs; the timer slack of the
/// calling thread is narrowed first (Linux), so the default 50 us slack is not counted.
pub fn sleep_lateness_us(samples: usize) -> (f64, f64, f64, f64) {
    narrow_timer_slack();
    let nap = std::time::Duration::from_micros(100);
    let mut late: Vec<u64> = (0..samples.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            std::thread::sleep(nap);
            t.elapsed().saturating_sub(nap).as_nanos() as u64
        })
        .collect();
    late.sort_unstable();
    let us = |p: f64| nearest_rank(&late, p).map_or(f64::NAN, |ns| ns as f64 / 1000.0);
    (us(50.0), us(99.0), us(99.9), us(100.0))
}

/// The nearest-rank `p`th percentile (0 to 100) of sorted values; none of no values.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()).checked_sub(1)?).copied()
}

/// This thread's id (Linux: `/proc/thread-self` links to `<pid>/task/<tid>`).
pub fn thread_id() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
}

/// Narrows the calling thread's timer slack from the default 50 us to 1 ns, so that its sleeps
/// end when asked (`/proc/<tid>/timerslack_ns`; there is no such file under thread-self).
/// Returns whether it could.
pub fn narrow_timer_slack() -> bool {
    thread_id().is_some_and(|tid| std::fs::write(format!("/proc/{tid}/timerslack_ns"), "1").is_ok())
}
