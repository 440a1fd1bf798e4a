//! CPU accounting per part of a benchmark process (threads are named per runtime), shared by
//! the benchmarks through `#[path]`.

use std::collections::BTreeMap;

/// What the threads of one part of the process used: on-CPU time and context switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub ns: u64,
    pub switches: u64,
}

/// Usage per part, summed over the process' threads; `part` names a thread's part from its
/// name (`/proc/<tid>/comm`).
pub fn thread_usage(part: fn(&str) -> &'static str) -> BTreeMap<&'static str, Usage> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let p = task.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        // schedstat: on-CPU time in ns; stat: utime + stime in clock ticks (100 Hz) otherwise.
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .or_else(|| {
                let stat = std::fs::read_to_string(p.join("stat")).ok()?;
                let rest = &stat[stat.rfind(')')? + 1..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(ticks * 10_000_000)
            });
        let switches: u64 = std::fs::read_to_string(p.join("status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let u: &mut Usage = out.entry(part(comm.trim())).or_default();
        u.ns += ns.unwrap_or(0);
        u.switches += switches;
    }
    out
}

/// What each part used between two snapshots.
pub fn usage_delta(
    a: &BTreeMap<&'static str, Usage>,
    b: &BTreeMap<&'static str, Usage>,
) -> BTreeMap<&'static str, Usage> {
    b.iter()
        .map(|(k, v)| {
            let before = a.get(k).copied().unwrap_or_default();
            let d = Usage {
                ns: v.ns.saturating_sub(before.ns),
                switches: v.switches.saturating_sub(before.switches),
            };
            (*k, d)
        })
        .collect()
}
