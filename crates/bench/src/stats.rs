//! Percentiles, medians and clocks.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (comparable between processes on one machine).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The `q` quantile (0..=1) of samples in microseconds, in milliseconds; 0 when empty.
pub fn pct_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted_us.len() as f64) as usize).min(sorted_us.len() - 1);
    sorted_us[i] as f64 / 1000.0
}

/// The median of some values (0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Resident size of a process in MiB (from `/proc/<pid>/status`), if readable.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Rounds to 2 decimals for the report.
pub fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
