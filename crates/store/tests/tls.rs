//! `rediss://` against a real redis-server speaking TLS only, with a private CA announced
//! through `SSL_CERT_FILE` (what the Helm chart's external-Redis-with-TLS setting does).
//! Skipped, loudly, where `openssl` is missing or the redis-server was built without TLS.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) -> bool {
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .is_ok()
        && openssl(
            dir,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
                "ca.pem", "-days", "2", "-subj", "/CN=test-ca",
            ],
        )
        && openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
                "-subj", "/CN=127.0.0.1",
            ],
        )
        && openssl(
            dir,
            &[
                "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "leaf.ext",
            ],
        )
}

#[test]
fn rediss_url_connects_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    if !make_certs(dir.path()) {
        eprintln!("SKIPPED: openssl could not make test certificates");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let mut child = match Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string()])
        .args([
            "--tls-cert-file",
            &p("srv.pem"),
            "--tls-key-file",
            &p("srv.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &p("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("redis-server is needed for tests: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            eprintln!("SKIPPED: this redis-server does not serve TLS");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Before any runtime thread exists: the CA bundle is read from SSL_CERT_FILE.
    // SAFETY: single-threaded at this point (the runtime is built below).
    unsafe { std::env::set_var("SSL_CERT_FILE", p("ca.pem")) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let config = store::StoreConfig {
            url: format!("rediss://127.0.0.1:{port}"),
            command_timeout: Duration::from_secs(5),
            ..store::StoreConfig::default()
        };
        let s = store::Store::connect(config).await?;
        s.ping().await?;
        // The same port without TLS is refused: the ping above really went over TLS.
        let plain = store::StoreConfig {
            url: format!("redis://127.0.0.1:{port}"),
            command_timeout: Duration::from_secs(2),
            ..store::StoreConfig::default()
        };
        let attempt = async {
            let s = store::Store::connect(plain).await?;
            s.ping().await
        };
        let refused = !matches!(
            tokio::time::timeout(Duration::from_secs(3), attempt).await,
            Ok(Ok(()))
        );
        Ok::<bool, store::StoreError>(refused)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(result.as_ref().is_ok_and(|refused| *refused), "{result:?}");
}
