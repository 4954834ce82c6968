//! The orchestrator: starts the stack and the load-generator processes, runs every
//! measurement (each bounded in count and time) and assembles the results.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::envelope::{Envelope, Target};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::holder::{event_json, merge, PhaseReport};
use crate::http::{closed_loop, request, Conn, LoadResult};
use crate::stack::{wait_catalog, Stack, StackSpec};
use crate::stats::{median, now_ns, pct_ms, r2, rss_mib};
use crate::{jwt_keys, secret, token, user_id, BenchArgs, BenchError};

/// Effective sizes of every measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    runs: usize,
    concurrency: usize,
    duration_s: f64,
    jobs: usize,
    sockets: Vec<usize>,
    idle_sockets: usize,
    sustain_s: f64,
    node_time_ms: u128,
    fanout_paced_s: f64,
    fanout_burst_per_socket: usize,
}

impl Settings {
    fn new(a: &BenchArgs) -> Settings {
        let q = a.quick;
        Settings {
            runs: a.runs.unwrap_or(if q { 1 } else { 3 }).max(1),
            concurrency: a.concurrency.max(1),
            duration_s: a
                .duration
                .unwrap_or(Duration::from_secs(if q { 1 } else { 5 }))
                .as_secs_f64(),
            jobs: a.jobs.unwrap_or(if q { 20 } else { 300 }).max(1),
            sockets: a
                .sockets
                .clone()
                .unwrap_or(if q { vec![100] } else { vec![1000, 10_000] }),
            idle_sockets: a.idle_sockets.unwrap_or(if q { 200 } else { 10_000 }),
            sustain_s: a
                .sustain
                .unwrap_or(Duration::from_secs(if q { 6 } else { 120 }))
                .as_secs_f64(),
            node_time_ms: a.node_time.as_millis(),
            fanout_paced_s: if q { 1.0 } else { 3.0 },
            fanout_burst_per_socket: 5,
        }
    }
}

/// The reference prompt (trace 01) with a client id.
fn prompt_body(client_id: &str) -> Vec<u8> {
    json!({
        "prompt": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}}
        },
        "client_id": client_id
    })
    .to_string()
    .into_bytes()
}

/// Internal role: one closed-loop HTTP load run, result as one JSON line on stdout.
pub async fn http_load_role(a: &BenchArgs) -> Result<(), BenchError> {
    let addr = a
        .addr
        .clone()
        .ok_or_else(|| BenchError::Msg("--addr required".into()))?;
    let dur = a.duration.unwrap_or(Duration::from_secs(5));
    let req = match a.what.as_str() {
        "prompt" => {
            let t = token(&jwt_keys(&secret())?, 0)?;
            request(
                "POST",
                "/prompt",
                Some(&t),
                Some(&prompt_body("bench-load")),
            )
        }
        _ => request("GET", "/healthz", None, None),
    };
    let r = closed_loop(&addr, req, a.concurrency, dur).await?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn bench_cmd() -> Result<Command, BenchError> {
    let mut c = Command::new(std::env::current_exe()?);
    c.arg("bench")
        .env("COMFY_BROKER__AUTH__SECRET", secret())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    Ok(c)
}

async fn http_load(
    addr: &str,
    what: &str,
    concurrency: usize,
    secs: f64,
) -> Result<LoadResult, BenchError> {
    let mut c = bench_cmd()?;
    c.args(["--role", "http-load", "--addr", addr, "--what", what])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--duration", &format!("{}ms", (secs * 1000.0) as u64)])
        .stdout(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs_f64(secs + 60.0), c.output())
        .await
        .map_err(|_| BenchError::Msg("http load generator hung".into()))??;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next_back()
        .ok_or_else(|| BenchError::Msg(format!("http load generator failed: {}", out.status)))?;
    Ok(serde_json::from_str(line)?)
}

/// A socket-holder process.
struct Holder {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Holder {
    async fn start(addr: &str, first: usize, count: usize) -> Result<(Holder, u64), BenchError> {
        let mut c = bench_cmd()?;
        c.args(["--role", "socket-client", "--addr", addr])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = c.spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| BenchError::Msg("holder stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Msg("holder stdout".into()))?;
        let mut h = Holder {
            _child: child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let ready = h.line(Duration::from_secs(120)).await?;
        let mut parts = ready.split_whitespace().skip(1);
        let open: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((h, open))
    }

    async fn line(&mut self, wait: Duration) -> Result<String, BenchError> {
        match tokio::time::timeout(wait, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            _ => Err(BenchError::Msg("socket holder did not answer".into())),
        }
    }

    async fn ask(&mut self, cmd: &str) -> Result<String, BenchError> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        self.line(Duration::from_secs(30)).await
    }
}

async fn start_holders(
    gateways: &[String],
    first: usize,
    total: usize,
) -> Result<(Vec<Holder>, u64), BenchError> {
    let per = total.div_ceil(gateways.len().max(1));
    let mut hs = Vec::new();
    let mut open = 0;
    let mut next = first;
    for g in gateways {
        let n = per.min(first + total - next);
        if n == 0 {
            break;
        }
        let (h, o) = Holder::start(g, next, n).await?;
        hs.push(h);
        open += o;
        next += n;
    }
    Ok((hs, open))
}

/// Waits until the holders together saw `expected` deliveries (or progress stalls for 2 s).
async fn wait_delivered(hs: &mut [Holder], expected: u64) -> Result<u64, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let mut n = 0;
        for h in hs.iter_mut() {
            let l = h.ask("count").await?;
            n += l
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if n >= expected || Instant::now() > deadline {
            return Ok(n);
        }
        if n != last {
            (last, since) = (n, Instant::now());
        } else if since.elapsed() > Duration::from_secs(2) {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reports(hs: &mut [Holder]) -> Result<Vec<HashMap<String, PhaseReport>>, BenchError> {
    let mut out = Vec::new();
    for h in hs.iter_mut() {
        out.push(serde_json::from_str(&h.ask("report").await?)?);
    }
    Ok(out)
}

fn phase_stats(reps: &[HashMap<String, PhaseReport>], phase: &str) -> (u64, f64, f64, u64) {
    let rs: Vec<&PhaseReport> = reps.iter().filter_map(|r| r.get(phase)).collect();
    merge(&rs)
}

/// Publishes bench events to users `first..first+n` round robin.
struct Publisher {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl Publisher {
    async fn batch(
        &mut self,
        first: usize,
        n: usize,
        from: usize,
        to: usize,
        phase: &str,
    ) -> Result<(), BenchError> {
        let mut p = redis::pipe();
        for k in from..to {
            let ch = format!("{}:ev:{}", self.prefix, user_id(first + k % n));
            let env = Envelope::text(Target::AllSockets, event_json(phase)).encode();
            p.cmd("PUBLISH").arg(ch).arg(env.as_ref()).ignore();
        }
        p.query_async::<()>(&mut self.conn).await?;
        Ok(())
    }

    /// `rate` events/s for `secs`; returns events published.
    async fn paced(
        &mut self,
        first: usize,
        n: usize,
        rate: f64,
        secs: f64,
        phase: &str,
    ) -> Result<u64, BenchError> {
        let total = (rate * secs) as usize;
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0;
        while sent < total && start.elapsed().as_secs_f64() < secs + 5.0 {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate) as usize).min(total);
            if due > sent {
                self.batch(first, n, sent, due, phase).await?;
                sent = due;
            }
        }
        Ok(sent as u64)
    }

    /// `total` events as fast as possible; returns the first publish time (ns).
    async fn burst(
        &mut self,
        first: usize,
        n: usize,
        total: usize,
        phase: &str,
    ) -> Result<u64, BenchError> {
        let t0 = now_ns();
        let mut sent = 0;
        while sent < total {
            let to = (sent + 500).min(total);
            self.batch(first, n, sent, to, phase).await?;
            sent = to;
        }
        Ok(t0)
    }
}

/// One socket plus one keep-alive connection of the end-to-end probe.
struct E2e {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    conn: Conn,
    req: Vec<u8>,
}

impl E2e {
    async fn connect(addr: &str, tok: &str, cid: &str) -> Result<E2e, BenchError> {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?clientId={cid}&token={tok}"))
                .await
                .map_err(|e| BenchError::Msg(format!("websocket: {e}")))?;
        let mut ws = ws;
        wait_status(&mut ws).await?;
        Ok(E2e {
            ws,
            conn: Conn::connect(addr).await?,
            req: request("POST", "/prompt", Some(tok), Some(&prompt_body(cid))),
        })
    }

    /// One job: µs from POST to `executing {node: null}` of that prompt, or `None` on failure.
    async fn job(&mut self) -> Result<Option<u32>, BenchError> {
        let t = Instant::now();
        let (s, body) = self.conn.send(&self.req).await?;
        if s != 200 {
            return Ok(None);
        }
        let v: Value = serde_json::from_slice(&body)?;
        let Some(id) = v["prompt_id"].as_str().map(str::to_owned) else {
            return Ok(None);
        };
        let deadline = t + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(_) => return Err(BenchError::Msg("probe socket closed".into())),
                Err(_) => return Ok(None),
            };
            let Message::Text(txt) = msg else { continue };
            if !txt.as_str().contains("\"executing\"") {
                continue;
            }
            let v: Value = serde_json::from_str(txt.as_str())?;
            if v["data"]["node"].is_null() && v["data"]["prompt_id"] == id.as_str() {
                return Ok(Some(t.elapsed().as_micros().min(u32::MAX as u128) as u32));
            }
        }
    }
}

/// Waits for the first `status` message: the gateway sends it once the user's events are
/// subscribed (a client that submits before it may miss its job's events, as with ComfyUI).
async fn wait_status<S>(ws: &mut S) -> Result<(), BenchError>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"status\"") => return Ok(()),
            Ok(Some(Ok(_))) => continue,
            _ => return Err(BenchError::Msg("no status message on the socket".into())),
        }
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = mem
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_gib": r2(mem_kib / 1024.0 / 1024.0),
    })
}

fn sum_rss(pids: &[u32]) -> Option<f64> {
    let v: Option<Vec<f64>> = pids.iter().map(|p| rss_mib(*p)).collect();
    v.map(|v| r2(v.iter().sum()))
}

fn log(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// Runs every measurement and reports.
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let started = Instant::now();
    let s = Settings::new(&args);
    let secret = secret();
    let keys = jwt_keys(&secret)?;
    let mut stack = if args.urls.is_empty() {
        log("starting redis, 2 simulated backends, 1 worker, 2 gateways");
        Stack::start(StackSpec {
            redis: args.redis.as_deref(),
            gateways: 2,
            backends: 2,
            node_time: args.node_time,
            secret: &secret,
        })
        .await?
    } else {
        let redis_url = args
            .redis
            .clone()
            .ok_or_else(|| BenchError::Msg("--url needs --redis".into()))?;
        Stack {
            redis_url,
            prefix: args.key_prefix.clone(),
            gateways: args
                .urls
                .iter()
                .map(|u| {
                    u.trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_owned()
                })
                .collect(),
            gateway_pids: Vec::new(),
            worker: None,
            procs: Vec::new(),
            dir: None,
        }
    };
    let gws = stack.gateways.clone();
    wait_catalog(&gws[0], &token(&keys, 0)?).await?;
    let mut publisher = Publisher {
        conn: redis::Client::open(stack.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?,
        prefix: stack.prefix.clone(),
    };

    // 2. End-to-end overhead per job.
    log(&format!("end-to-end: {} runs of {} jobs", s.runs, s.jobs));
    let mut e2e_runs = Vec::new();
    {
        let tok = token(&keys, 1)?;
        let mut probe = E2e::connect(&gws[0], &tok, "bench-e2e").await?;
        for _ in 0..3 {
            let _ = probe.job().await?; // warm-up
        }
        for _ in 0..s.runs {
            let mut lat = Vec::new();
            let mut failed = 0;
            let t = Instant::now();
            for _ in 0..s.jobs {
                match probe.job().await? {
                    Some(us) => lat.push(us),
                    None => failed += 1,
                }
                if t.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            lat.sort_unstable();
            e2e_runs.push(json!({"jobs": lat.len(), "failed": failed,
                "p50_ms": r2(pct_ms(&lat, 0.5)), "p99_ms": r2(pct_ms(&lat, 0.99))}));
        }
    }
    let med =
        |runs: &[Value], k: &str| r2(median(runs.iter().filter_map(|r| r[k].as_f64()).collect()));
    let e2e = json!({"runs": e2e_runs, "p50_ms": med(&e2e_runs, "p50_ms"), "p99_ms": med(&e2e_runs, "p99_ms")});

    // 4. Memory of a gateway holding idle sockets (before the fan-out bursts, whose peak the
    // allocator keeps).
    let memory = if let Some(&pid) = stack.gateway_pids.first() {
        let n = s.idle_sockets;
        log(&format!("memory: {n} idle sockets on one gateway"));
        let before = rss_mib(pid).unwrap_or(0.0);
        let one = vec![gws[0].clone(), gws[0].clone()];
        let (hs, open) = start_holders(&one, 1_000_000, n).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_mib(pid).unwrap_or(0.0);
        drop(hs);
        json!({"sockets": n, "open": open, "rss_before_mib": r2(before), "rss_mib": r2(after),
            "per_socket_kib": if open > 0 { r2((after - before) * 1024.0 / open as f64) } else { 0.0 }})
    } else {
        json!(null)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. Fan-out.
    let mut fanout = Vec::new();
    for (k, &n) in s.sockets.iter().enumerate() {
        let first = 100_000 * (k + 1);
        log(&format!(
            "fan-out: opening {n} sockets over {} gateways",
            gws.len()
        ));
        let (mut hs, open) = start_holders(&gws, first, n).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rate = ((n * 10) as f64).min(20_000.0);
        let mut runs = Vec::new();
        let mut expected = 0u64;
        for r in 0..s.runs {
            let paced = format!("f{n}-r{r}-paced");
            let sent = publisher
                .paced(first, n, rate, s.fanout_paced_s, &paced)
                .await?;
            expected += sent * open / n as u64;
            wait_delivered(&mut hs, expected).await?;
            let burst = format!("f{n}-r{r}-burst");
            let total = n * s.fanout_burst_per_socket;
            let t0 = publisher.burst(first, n, total, &burst).await?;
            expected += total as u64 * open / n as u64;
            wait_delivered(&mut hs, expected).await?;
            let reps = reports(&mut hs).await?;
            let (pd, p50, p99, _) = phase_stats(&reps, &paced);
            let (bd, b50, b99, last) = phase_stats(&reps, &burst);
            let secs = (last.saturating_sub(t0)) as f64 / 1e9;
            runs.push(json!({
                "paced_published": sent, "paced_delivered": pd, "p50_ms": p50, "p99_ms": p99,
                "burst_published": total, "burst_delivered": bd, "burst_p50_ms": b50, "burst_p99_ms": b99,
                "deliveries_per_s": if secs > 0.0 { r2(bd as f64 / secs) } else { 0.0 },
            }));
        }
        drop(hs);
        fanout.push(json!({
            "sockets": n, "open": open, "paced_rate_per_s": rate, "runs": runs,
            "p50_ms": med(&runs, "p50_ms"), "p99_ms": med(&runs, "p99_ms"),
            "deliveries_per_s": med(&runs, "deliveries_per_s"),
            "burst_p99_ms": med(&runs, "burst_p99_ms"),
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // 5. Sustained run.
    let sustained = sustained(&s, &mut stack, &mut publisher, &keys).await?;

    // 1. Submit throughput (last: its jobs pile up; the worker is stopped first so the
    // backlog does not compete for the CPU).
    let mut submit_runs = Vec::new();
    if stack.worker.is_some() {
        stack.kill_worker().await;
    }
    let (host, port) = redis_host_port(&stack.redis_url);
    for r in 0..s.runs {
        log(&format!("submit: run {}/{}", r + 1, s.runs));
        let h = http_load(&gws[0], "healthz", s.concurrency, s.duration_s).await?;
        let p = http_load(&gws[0], "prompt", s.concurrency, s.duration_s).await?;
        let n = if args.quick { 20_000 } else { 100_000 };
        // An entry the size of a prompt (without commas: redis-benchmark's CSV names the test
        // by its command line).
        let payload = vec![b'x'; prompt_body("x").len()];
        let x = xadd(&host, port, s.concurrency, 1, n, &payload).await;
        let xp = xadd(&host, port, s.concurrency, 16, n, &payload).await;
        submit_runs.push(json!({
            "healthz_rps": h.rps, "healthz_p50_ms": h.p50_ms, "healthz_p99_ms": h.p99_ms, "healthz_errors": h.errors,
            "submit_rps": p.rps, "submit_p50_ms": p.p50_ms, "submit_p99_ms": p.p99_ms, "submit_errors": p.errors,
            "ratio": if h.rps > 0.0 { r2(p.rps / h.rps) } else { 0.0 },
            "xadd_rps": x.as_ref().map(|x| x.0), "xadd_p50_ms": x.as_ref().map(|x| x.1), "xadd_p99_ms": x.as_ref().map(|x| x.2),
            "xadd_pipelined_rps": xp.as_ref().map(|x| x.0),
        }));
    }
    let keys_ = [
        "healthz_rps",
        "healthz_p50_ms",
        "healthz_p99_ms",
        "submit_rps",
        "submit_p50_ms",
        "submit_p99_ms",
        "ratio",
        "xadd_rps",
        "xadd_p50_ms",
        "xadd_p99_ms",
        "xadd_pipelined_rps",
    ];
    let mut submit = json!({"concurrency": s.concurrency, "runs": submit_runs});
    for k in keys_ {
        submit[k] = json!(med(&submit_runs, k));
    }

    let mut result = json!({
        "machine": machine(),
        "settings": s,
        "submit": submit,
        "e2e": e2e,
        "fanout": fanout,
        "memory": memory,
        "sustained": sustained,
    });
    result["targets"] = crate::report::targets(&result);
    result["elapsed_s"] = json!(r2(started.elapsed().as_secs_f64()));
    println!("{}", crate::report::table(&result));
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&result)?)?;
    }
    drop(stack);
    Ok(())
}

fn redis_host_port(url: &str) -> (String, u16) {
    let rest = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("");
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let (h, p) = rest.rsplit_once(':').unwrap_or((rest, "6379"));
    (h.to_owned(), p.parse().unwrap_or(6379))
}

/// Raw `XADD` of a prompt-sized entry with `redis-benchmark`: (rps, p50 ms, p99 ms).
async fn xadd(
    host: &str,
    port: u16,
    clients: usize,
    pipeline: usize,
    requests: usize,
    payload: &[u8],
) -> Option<(f64, f64, f64)> {
    let n = requests.to_string();
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            host,
            "-p",
            &port.to_string(),
            "-c",
            &clients.to_string(),
        ])
        .args(["-n", &n, "-P", &pipeline.to_string(), "--csv"])
        .args(["XADD", "bench:xadd", "MAXLEN", "~", "100000", "*", "prompt"])
        .arg(String::from_utf8_lossy(payload).into_owned())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rfind(|l| !l.trim().is_empty())?;
    let f: Vec<f64> = line
        .split("\",\"")
        .map(|c| c.trim_matches('"').parse().unwrap_or(0.0))
        .collect();
    Some((r2(*f.get(1)?), *f.get(4)?, *f.get(6)?))
}

/// Sustained run: end-to-end probes back to back plus paced fan-out to idle sockets, in
/// windows; latency and resident memory per window.
async fn sustained(
    s: &Settings,
    stack: &mut Stack,
    publisher: &mut Publisher,
    keys: &auth::JwtKeys,
) -> Result<Value, BenchError> {
    let gws = stack.gateways.clone();
    let n = s.sockets.first().copied().unwrap_or(1000).min(1000);
    let windows: usize = if s.sustain_s >= 12.0 { 6 } else { 3 };
    let win = (s.sustain_s / windows as f64).max(0.5);
    log(&format!(
        "sustained: {}s with {n} sockets",
        r2(win * windows as f64)
    ));
    let first = 2_000_000;
    let (mut hs, open) = start_holders(&gws, first, n).await?;
    let tok = token(keys, 2)?;
    let mut probe = E2e::connect(&gws[0], &tok, "bench-sustain").await?;
    let rate = 2000.0;
    let pids = stack.gateway_pids.clone();
    let worker_pid = stack.worker.as_ref().map(|w| w.pid());
    let mut per = Vec::new();
    let mut expected = 0u64;
    let t0 = Instant::now();
    for w in 0..windows {
        let phase = format!("s{w}");
        let mut pubc = Publisher {
            conn: publisher.conn.clone(),
            prefix: publisher.prefix.clone(),
        };
        let ph = phase.clone();
        let pub_task = tokio::spawn(async move { pubc.paced(first, n, rate, win, &ph).await });
        let end = Instant::now() + Duration::from_secs_f64(win);
        let mut lat = Vec::new();
        let mut failed = 0;
        while Instant::now() < end {
            match probe.job().await? {
                Some(us) => lat.push(us),
                None => failed += 1,
            }
        }
        let sent = pub_task
            .await
            .map_err(|e| BenchError::Msg(format!("publisher: {e}")))??;
        expected += sent * open / n as u64;
        lat.sort_unstable();
        per.push(json!({
            "t_s": r2(t0.elapsed().as_secs_f64()), "jobs": lat.len(), "failed": failed,
            "e2e_p50_ms": r2(pct_ms(&lat, 0.5)), "e2e_p99_ms": r2(pct_ms(&lat, 0.99)),
            "gateways_rss_mib": sum_rss(&pids),
            "worker_rss_mib": worker_pid.and_then(rss_mib).map(r2),
        }));
    }
    wait_delivered(&mut hs, expected).await?;
    let reps = reports(&mut hs).await?;
    for (w, p) in per.iter_mut().enumerate() {
        let (d, p50, p99, _) = phase_stats(&reps, &format!("s{w}"));
        p["fanout_delivered"] = json!(d);
        p["fanout_p50_ms"] = json!(p50);
        p["fanout_p99_ms"] = json!(p99);
    }
    let first_w = per.first().cloned().unwrap_or(Value::Null);
    let last_w = per.last().cloned().unwrap_or(Value::Null);
    Ok(
        json!({"secs": r2(win * windows as f64), "sockets": n, "fanout_rate_per_s": rate,
        "windows": per, "start": first_w, "end": last_w}),
    )
}
