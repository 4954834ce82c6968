//! `/metrics` of real gateway and worker processes after a job: counted, histograms with
//! buckets, route templates as labels, and no token anywhere in a scrape.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{basic_prompt, Stack, StackOptions, Ws};
use serde_json::json;

/// One sample of the text exposition: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (enough of it for our own output: no escapes in label
/// values other than `\"` and `\\`).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                (name.to_owned(), parse_labels(body))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label value is quoted in {body:?}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().unwrap_or('\\')),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// Samples named `name` whose labels include every pair of `want`.
fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    find(samples, name, want).iter().map(|s| s.value).sum()
}

async fn scrape(s: &Stack, process: &str) -> String {
    let r = s.http.get(s.metrics_url(process)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    r.text().await.unwrap()
}

/// Scrapes until `ready` holds for the parsed samples (counters are bumped right after the
/// events a client sees, so a scrape may come a moment early).
async fn scrape_until(s: &Stack, process: &str, ready: impl Fn(&[Sample]) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(s, process).await;
        if ready(&parse(&text)) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_counted_by_gateway_and_worker_without_leaking_tokens() {
    let s = Stack::with(StackOptions {
        gateways: 1,
        backends: 1,
        metrics: true,
        ..StackOptions::default()
    })
    .await;
    let token = s.token("metrics-user");
    let bad_token = "definitely-not-a-valid-token-0123456789abcdef";

    // A refused token is counted as `invalid`.
    let r = s
        .http
        .get(format!("{}/queue", s.gateways[0]))
        .bearer_auth(bad_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A socket (token in the query string) follows the job.
    let mut ws = Ws::connect(&s.ws_url(0, "metrics-client", &token)).await;
    let first = ws.next(Duration::from_secs(10)).await;
    assert!(matches!(first, Some(common::Frame::Json(_))), "{first:?}");

    let r = s
        .http
        .post(format!("{}/prompt", s.gateways[0]))
        .bearer_auth(&token)
        .header("x-request-id", "metrics-trace-0001")
        .json(&json!({"prompt": basic_prompt(8, 8), "client_id": "metrics-client"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("x-request-id").unwrap(),
        "metrics-trace-0001",
        "a sane client request id is kept"
    );
    let pid = r.json::<serde_json::Value>().await.unwrap()["prompt_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.until_done(&pid).await;
    s.wait_history(0, &token, &pid).await;

    let gw_text = scrape_until(&s, "gateway0", |m| {
        value(m, "comfy_broker_queue_running_jobs", &[("pool", "default")]) == 0.0
            && value(
                m,
                "comfy_broker_http_requests_total",
                &[("route", "/history/{prompt_id}")],
            ) >= 1.0
    })
    .await;
    let wk_text = scrape_until(&s, "w1", |m| {
        value(
            m,
            "comfy_broker_jobs_finished_total",
            &[("outcome", "success")],
        ) >= 1.0
    })
    .await;
    let gw = parse(&gw_text);
    let wk = parse(&wk_text);

    // The gateway counted the submit, the request by its route template, and the refusal.
    assert_eq!(
        value(
            &gw,
            "comfy_broker_jobs_submitted_total",
            &[("pool", "default")]
        ),
        1.0,
        "{gw_text}"
    );
    assert!(
        value(
            &gw,
            "comfy_broker_http_requests_total",
            &[("route", "/prompt"), ("method", "POST"), ("status", "200")]
        ) >= 1.0,
        "{gw_text}"
    );
    assert!(
        value(
            &gw,
            "comfy_broker_http_requests_total",
            &[("route", "/history/{prompt_id}"), ("method", "GET")]
        ) >= 1.0,
        "{gw_text}"
    );
    let buckets = find(
        &gw,
        "comfy_broker_http_request_duration_seconds_bucket",
        &[("route", "/prompt"), ("method", "POST")],
    );
    assert!(buckets.len() >= 13, "{gw_text}");
    assert!(buckets.iter().all(|b| b.labels.contains_key("le")));
    assert_eq!(
        value(
            &gw,
            "comfy_broker_http_request_duration_seconds_bucket",
            &[("route", "/prompt"), ("method", "POST"), ("le", "+Inf")]
        ),
        1.0,
        "{gw_text}"
    );
    assert!(
        value(
            &gw,
            "comfy_broker_auth_failures_total",
            &[("reason", "invalid")]
        ) >= 1.0,
        "{gw_text}"
    );
    // Series of fixed label sets exist before they first move (absent() alerts, dashboards).
    assert_eq!(
        find(
            &gw,
            "comfy_broker_auth_failures_total",
            &[("reason", "throttled")]
        )
        .len(),
        1,
        "{gw_text}"
    );
    assert_eq!(
        find(
            &gw,
            "comfy_broker_submit_rejected_total",
            &[("pool", "default"), ("reason", "quota")]
        )
        .len(),
        1,
        "{gw_text}"
    );
    assert!(
        value(
            &gw,
            "comfy_broker_events_delivered_total",
            &[("kind", "json")]
        ) >= 3.0,
        "{gw_text}"
    );
    assert_eq!(
        value(&gw, "comfy_broker_websocket_connections", &[]),
        1.0,
        "{gw_text}"
    );
    assert_eq!(
        value(
            &gw,
            "comfy_broker_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Route labels are templates: no raw path (with the prompt id) and no query string.
    for sample in &gw {
        for v in sample.labels.values() {
            assert!(!v.contains(&pid), "raw path in a label: {sample:?}");
            assert!(!v.contains('?'), "query string in a label: {sample:?}");
        }
    }

    // The worker counted the start, the success and the run time.
    let backend_id = s.backends[0].trim_start_matches("http://");
    assert_eq!(
        value(
            &wk,
            "comfy_broker_jobs_started_total",
            &[("pool", "default"), ("backend", backend_id)]
        ),
        1.0,
        "{wk_text}"
    );
    assert_eq!(
        value(
            &wk,
            "comfy_broker_jobs_finished_total",
            &[("pool", "default"), ("outcome", "success")]
        ),
        1.0,
        "{wk_text}"
    );
    let run_buckets = find(
        &wk,
        "comfy_broker_job_run_seconds_bucket",
        &[("pool", "default")],
    );
    assert!(run_buckets.len() >= 14, "{wk_text}");
    assert_eq!(
        value(
            &wk,
            "comfy_broker_job_run_seconds_bucket",
            &[("pool", "default"), ("le", "+Inf")]
        ),
        1.0,
        "{wk_text}"
    );
    assert_eq!(
        value(
            &wk,
            "comfy_broker_job_wait_seconds_count",
            &[("pool", "default")]
        ),
        1.0,
        "{wk_text}"
    );
    assert!(
        value(
            &wk,
            "comfy_broker_events_published_total",
            &[("pool", "default")]
        ) >= 1.0,
        "{wk_text}"
    );
    assert_eq!(
        value(
            &wk,
            "comfy_broker_backend_up",
            &[("backend", backend_id), ("state", "healthy")]
        ),
        1.0,
        "{wk_text}"
    );
    assert_eq!(
        value(
            &wk,
            "comfy_broker_backend_up",
            &[("backend", backend_id), ("state", "unhealthy")]
        ),
        0.0,
        "{wk_text}"
    );

    // No token material in any scrape.
    for text in [&gw_text, &wk_text] {
        assert!(!text.contains(&token), "the JWT leaked into /metrics");
        for part in token.split('.') {
            assert!(!text.contains(part), "a JWT segment leaked into /metrics");
        }
        assert!(
            !text.contains(bad_token),
            "a refused token leaked into /metrics"
        );
    }
    drop(ws);
}

#[tokio::test]
async fn unusable_client_request_ids_are_replaced() {
    let s = Stack::with(StackOptions {
        gateways: 1,
        ..StackOptions::default()
    })
    .await;
    let long = "x".repeat(129);
    for bad in ["has space", long.as_str()] {
        let r = s
            .http
            .get(format!("{}/healthz", s.gateways[0]))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let got = r.headers().get("x-request-id").unwrap().to_str().unwrap();
        assert_ne!(got, bad);
        assert!(
            uuid::Uuid::parse_str(got).is_ok(),
            "replaced by a fresh id: {got}"
        );
    }
}

#[test]
fn the_parser_reads_labels_and_values() {
    let m = parse(
        "# TYPE x counter\nx_total{a=\"1\",route=\"/h/{id}\"} 3\ny 0.5\nz_bucket{le=\"+Inf\"} 2\n",
    );
    assert_eq!(m.len(), 3);
    assert_eq!(m[0].labels["route"], "/h/{id}");
    assert_eq!(m[0].labels["a"], "1");
    assert_eq!(m[0].value, 3.0);
    assert_eq!(m[1].value, 0.5);
    assert_eq!(m[2].labels["le"], "+Inf");
}
