//! The file store against a real S3-compatible server: moto's S3 server (PyPI `moto[server]`),
//! started on a free port. Skipped, with a message, when neither `moto_server` nor
//! `python3 -m moto.server` is available. Run: `cargo test -p files --test s3`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use files::{Backend, FileKey, FileKind, FileStore, FilesConfig, FilesError};
use futures::TryStreamExt;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

async fn start_moto() -> Option<(Server, String)> {
    let port = free_port();
    let attempts: [(&str, Vec<String>); 2] = [
        ("moto_server", vec!["-p".into(), port.to_string()]),
        (
            "python3",
            vec![
                "-m".into(),
                "moto.server".into(),
                "-p".into(),
                port.to_string(),
            ],
        ),
    ];
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    for (cmd, args) in attempts {
        let Ok(child) = Command::new(cmd)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            continue;
        };
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http.get(&url).send().await.is_ok() {
                return Some((server, url));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    None
}

#[tokio::test]
async fn s3_store_puts_streams_ranges_and_sweeps() {
    let Some((_server, endpoint)) = start_moto().await else {
        eprintln!("skipped: no S3-compatible server (pip install 'moto[server]' to run this test)");
        return;
    };
    // moto accepts any credentials; the bucket must exist first.
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{endpoint}/broker-test"))
        .send()
        .await
        .expect("create bucket");
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let config = FilesConfig {
        backend: Backend::S3,
        s3_endpoint: endpoint.clone(),
        s3_bucket: "broker-test".into(),
        s3_region: "us-east-1".into(),
        s3_access_key_id: "test".into(),
        s3_secret_access_key: "test".into(),
        s3_path_style: true,
        s3_allow_http: true,
        output_ttl: Duration::from_millis(1500),
        temp_ttl: Duration::ZERO,
        ..FilesConfig::default()
    };
    let fs = FileStore::from_config(&config).expect("s3 store");

    let k = FileKey::new("u1", FileKind::Output, "p1", "a.png").unwrap();
    fs.put(&k, Bytes::from_static(b"\x89PNG\r\n\x1a\nfake"))
        .await
        .unwrap();
    assert_eq!(fs.read(&k).await.unwrap().len(), 12);
    // Stored with its content type (read back with a signed request).
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_bucket_name("broker-test")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .build()
        .unwrap();
    let got = object_store::ObjectStore::get(&raw, k.path())
        .await
        .unwrap();
    assert_eq!(
        got.attributes
            .get(&object_store::Attribute::ContentType)
            .map(|v| v.as_ref().to_owned()),
        Some("image/png".to_owned())
    );
    let other = FileKey::new("u2", FileKind::Output, "p1", "a.png").unwrap();
    assert!(matches!(fs.read(&other).await, Err(FilesError::NotFound)));

    // A large output streamed as a multipart upload (12 MiB: three 5 MiB parts).
    let big = FileKey::new("u1", FileKind::Output, "p1", "v.mp4").unwrap();
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..12u8)
        .map(|i| Ok(Bytes::from(vec![i; 1 << 20])))
        .collect();
    let n = fs
        .put_stream(&big, futures::stream::iter(chunks))
        .await
        .unwrap();
    assert_eq!(n, 12 << 20);
    assert_eq!(fs.head(&big).await.unwrap().size, 12 << 20);
    let body = fs
        .open_range(&big, Some((5 << 20) - 1..(5 << 20) + 1))
        .await
        .unwrap();
    assert_eq!(body.size, 12 << 20);
    let got: Vec<Bytes> = body.stream.try_collect().await.unwrap();
    assert_eq!(got.concat(), vec![4, 5]);

    // Retention: outputs past the TTL go, uploads stay.
    let upload = FileKey::new("u1", FileKind::Input, "", "in.png").unwrap();
    fs.put(&upload, Bytes::from_static(b"x")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(fs.sweep().await.unwrap(), 2);
    assert!(!fs.exists(&k).await.unwrap());
    assert!(fs.exists(&upload).await.unwrap());
}
