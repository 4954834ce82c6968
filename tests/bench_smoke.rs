//! `comfy-broker bench --quick` with tiny numbers runs to completion and reports every figure.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn bench_quick_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_comfy-broker"))
        .args([
            "bench",
            "--quick",
            "--runs",
            "1",
            "--jobs",
            "5",
            "--sockets",
            "20",
        ])
        .args([
            "--idle-sockets",
            "20",
            "--sustain",
            "1500ms",
            "--duration",
            "500ms",
        ])
        .args(["--concurrency", "4", "--json"])
        .arg(&json)
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bench did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "bench failed: {status}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let num = |v: &Value, what: &str| {
        assert!(v.as_f64().is_some(), "{what} missing: {r:#}");
    };
    for k in [
        "submit_rps",
        "submit_p50_ms",
        "submit_p99_ms",
        "healthz_rps",
        "ratio",
        "xadd_rps",
    ] {
        num(&r["submit"][k], k);
    }
    assert!(r["submit"]["submit_rps"].as_f64().unwrap() > 0.0, "{r:#}");
    num(&r["e2e"]["p50_ms"], "e2e p50");
    num(&r["e2e"]["p99_ms"], "e2e p99");
    assert!(r["e2e"]["runs"][0]["jobs"].as_u64().unwrap() > 0, "{r:#}");
    let f = &r["fanout"][0];
    for k in ["p50_ms", "p99_ms", "deliveries_per_s"] {
        num(&f[k], k);
    }
    assert!(
        f["runs"][0]["paced_delivered"].as_u64().unwrap() > 0,
        "{r:#}"
    );
    num(&r["memory"]["rss_mib"], "memory");
    for w in ["start", "end"] {
        num(&r["sustained"][w]["e2e_p99_ms"], "sustained e2e");
        num(&r["sustained"][w]["gateways_rss_mib"], "sustained rss");
    }
    assert!(r["targets"].as_array().unwrap().len() >= 4);
}
