//! A real Redis for tests: `REDIS_URL` when set (each handle gets its own key prefix), else a
//! throwaway `redis-server` on a free port, stopped when the handle drops.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Redis server reserved for one test.
pub struct TestRedis {
    /// URL to connect to.
    pub url: String,
    /// Key prefix unique to this handle.
    pub prefix: String,
    /// Port of the server this handle started (`None` when using `REDIS_URL`).
    pub port: Option<u16>,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    aof: bool,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

impl TestRedis {
    /// `REDIS_URL` if set, else a fresh `redis-server` (panics with a clear message if neither
    /// is possible: tests need a real Redis).
    pub fn start() -> Self {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => TestRedis {
                url,
                prefix: unique_prefix(),
                port: None,
                dir: None,
                child: None,
                aof: false,
            },
            _ => Self::own(false),
        }
    }

    /// Always a private `redis-server`, with AOF (`appendfsync always`) when `aof` is true, for
    /// tests that stop and restart Redis.
    pub fn own(aof: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut me = TestRedis {
            url: String::new(),
            prefix: unique_prefix(),
            port: None,
            dir: Some(dir),
            child: None,
            aof,
        };
        me.launch(None);
        me
    }

    fn launch(&mut self, port: Option<u16>) {
        let port = match port {
            Some(p) => p,
            None => free_port().expect("free port"),
        };
        let dir = self.dir.as_ref().expect("own server has a dir").path();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(dir)
            .arg("--daemonize")
            .arg("no")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .spawn()
            .expect("tests need redis-server on PATH (or REDIS_URL set)");
        self.child = Some(child);
        self.port = Some(port);
        self.url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the private server (SHUTDOWN, so AOF is flushed) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(client) = redis::Client::open(self.url.as_str()) {
                if let Ok(mut c) = client.get_connection() {
                    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut c);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the private server again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.launch(port);
    }

    /// A store configuration pointing at this server with this handle's prefix.
    pub fn store_config(&self) -> crate::StoreConfig {
        crate::StoreConfig {
            url: self.url.clone(),
            key_prefix: self.prefix.clone(),
            secrets_key: "test-only extra_data sealing key".into(),
            ..crate::StoreConfig::default()
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal job of user `uid` with prompt id `pid` in pool `default` (no client id, not
/// `front`, any class, default limits), for tests to adjust with struct update syntax.
pub fn sample_job(uid: &str, pid: &str) -> crate::NewJob {
    crate::NewJob {
        pool: "default".into(),
        owner: crate::Owner {
            user_id: uid.into(),
            username: format!("name-{uid}"),
        },
        prompt_id: pid.into(),
        client_id: None,
        front: false,
        number: None,
        prompt_json: r#"{"1":{"class_type":"EmptyImage","inputs":{}}}"#.into(),
        extra_data_json: "{}".into(),
        outputs_to_execute: vec!["1".into()],
        sensitive_json: None,
        idempotency_key: None,
        body_hash: "h".into(),
        request_id: None,
        class: Default::default(),
        limits: Default::default(),
    }
}
