//! The stdout table and the target checks.

use serde_json::{json, Value};

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 1000.0 => format!("{:.0}", x),
        Some(x) => format!("{x}"),
        None => "n/a".into(),
    }
}

/// Each DESIGN.md target with the measured figure and whether it is met.
pub fn targets(r: &Value) -> Value {
    let sub = &r["submit"];
    let mut t = vec![
        check("POST /prompt ≥ 20,000/s", &sub["submit_rps"], |x| {
            x >= 20_000.0
        }),
        check("POST /prompt ≥ 30% of /healthz", &sub["ratio"], |x| {
            x >= 0.30
        }),
        check("job overhead p50 < 5 ms", &r["e2e"]["p50_ms"], |x| x < 5.0),
        check("job overhead p99 < 20 ms", &r["e2e"]["p99_ms"], |x| {
            x < 20.0
        }),
    ];
    if let Some(f1k) = r["fanout"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["sockets"] == 1000))
    {
        t.push(check(
            "fan-out p99 < 10 ms at 1,000 sockets",
            &f1k["p99_ms"],
            |x| x < 10.0,
        ));
    }
    if r["memory"]["sockets"].as_u64().unwrap_or(0) >= 10_000 {
        t.push(check(
            "10,000 idle sockets < 100 MiB",
            &r["memory"]["rss_mib"],
            |x| x < 100.0,
        ));
    }
    Value::Array(t)
}

fn check(name: &str, v: &Value, ok: impl Fn(f64) -> bool) -> Value {
    json!({"target": name, "measured": v, "met": v.as_f64().map(ok)})
}

/// The human-readable table (Markdown, so it can be pasted into the README).
pub fn table(r: &Value) -> String {
    let mut o = String::new();
    let mut row = |a: &str, b: String, c: String| o.push_str(&format!("| {a} | {b} | {c} |\n"));
    row("measurement", "result".into(), "p50 / p99 (ms)".into());
    row("---", "---".into(), "---".into());
    let s = &r["submit"];
    let c = &s["concurrency"];
    row(
        &format!("GET /healthz, {c} connections"),
        format!("{} req/s", f(&s["healthz_rps"])),
        format!("{} / {}", f(&s["healthz_p50_ms"]), f(&s["healthz_p99_ms"])),
    );
    row(
        &format!("POST /prompt, {c} connections"),
        format!(
            "{} req/s ({} × /healthz)",
            f(&s["submit_rps"]),
            f(&s["ratio"])
        ),
        format!("{} / {}", f(&s["submit_p50_ms"]), f(&s["submit_p99_ms"])),
    );
    row(
        &format!("raw Redis XADD (redis-benchmark, {c} clients)"),
        format!(
            "{} /s ({} /s pipelined ×16)",
            f(&s["xadd_rps"]),
            f(&s["xadd_pipelined_rps"])
        ),
        format!("{} / {}", f(&s["xadd_p50_ms"]), f(&s["xadd_p99_ms"])),
    );
    let e = &r["e2e"];
    row(
        "job overhead: POST /prompt → executing {node: null}",
        format!("{} jobs/run", r["settings"]["jobs"]),
        format!("{} / {}", f(&e["p50_ms"]), f(&e["p99_ms"])),
    );
    for fo in r["fanout"].as_array().into_iter().flatten() {
        row(
            &format!(
                "fan-out, {} sockets over 2 gateways, paced {} events/s",
                fo["sockets"], fo["paced_rate_per_s"]
            ),
            format!("{} deliveries/s (burst)", f(&fo["deliveries_per_s"])),
            format!(
                "{} / {} (burst p99 {})",
                f(&fo["p50_ms"]),
                f(&fo["p99_ms"]),
                f(&fo["burst_p99_ms"])
            ),
        );
    }
    let m = &r["memory"];
    if !m.is_null() {
        row(
            &format!("gateway RSS with {} idle sockets", m["open"]),
            format!(
                "{} MiB ({} MiB before; {} KiB/socket)",
                f(&m["rss_mib"]),
                f(&m["rss_before_mib"]),
                f(&m["per_socket_kib"])
            ),
            "".into(),
        );
    }
    let su = &r["sustained"];
    for (label, w) in [("start", &su["start"]), ("end", &su["end"])] {
        row(
            &format!("sustained {}s, {label} window", su["secs"]),
            format!(
                "gateways {} MiB, worker {} MiB",
                f(&w["gateways_rss_mib"]),
                f(&w["worker_rss_mib"])
            ),
            format!(
                "job {} / {}; fan-out {} / {}",
                f(&w["e2e_p50_ms"]),
                f(&w["e2e_p99_ms"]),
                f(&w["fanout_p50_ms"]),
                f(&w["fanout_p99_ms"])
            ),
        );
    }
    o.push('\n');
    for t in r["targets"].as_array().into_iter().flatten() {
        let met = match t["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        o.push_str(&format!(
            "{met:>6}  {} (measured {})\n",
            t["target"].as_str().unwrap_or(""),
            f(&t["measured"])
        ));
    }
    o
}
