//! The pluggable NSFW classifier: every output image is classified before the `executed` event
//! naming it is published (MSS-Login's policy). `none` classifies nothing; `http` POSTs the
//! image bytes to a service and reads `{"score": <0..1>}`.

use std::time::Duration;

use bytes::Bytes;

use crate::config::{NsfwClassifier, WorkerConfig};
use crate::WorkerError;

/// A verdict on one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    /// Flagged.
    pub nsfw: bool,
    /// The classifier's score (`None` when it could not be asked).
    pub score: Option<f64>,
}

/// The configured classifier.
pub(crate) enum Classifier {
    None,
    Http {
        http: reqwest::Client,
        url: String,
        threshold: f64,
        fail_closed: bool,
    },
}

impl Classifier {
    /// Builds the classifier the configuration names.
    pub(crate) fn new(config: &WorkerConfig) -> Result<Self, WorkerError> {
        Ok(match config.nsfw_classifier {
            NsfwClassifier::None => Classifier::None,
            NsfwClassifier::Http => Classifier::Http {
                http: reqwest::Client::builder()
                    .timeout(config.nsfw_timeout)
                    .connect_timeout(config.nsfw_timeout.min(Duration::from_secs(5)))
                    .build()
                    .map_err(|e| WorkerError::Config(format!("nsfw classifier client: {e}")))?,
                url: config.nsfw_url.clone(),
                threshold: config.nsfw_threshold,
                fail_closed: config.nsfw_fail_closed,
            },
        })
    }

    /// True when a classifier is configured (previews of `sfw_check` users are then withheld).
    pub(crate) fn enabled(&self) -> bool {
        !matches!(self, Classifier::None)
    }

    /// Classifies one image (`content_type` e.g. `image/png`); `None` when nothing is configured.
    pub(crate) async fn classify(&self, content_type: &str, image: Bytes) -> Option<Verdict> {
        let Classifier::Http {
            http,
            url,
            threshold,
            fail_closed,
        } = self
        else {
            return None;
        };
        let outage = |why: String| {
            tracing::warn!(error = %why, fail_closed = *fail_closed, "nsfw classifier unavailable");
            Some(Verdict {
                nsfw: *fail_closed,
                score: None,
            })
        };
        let resp = match http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(image)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return outage(format!("status {}", r.status())),
            Err(e) => return outage(e.without_url().to_string()),
        };
        let score = match resp.json::<serde_json::Value>().await {
            Ok(v) => v.get("score").and_then(serde_json::Value::as_f64),
            Err(e) => return outage(e.without_url().to_string()),
        };
        match score {
            Some(s) if s.is_finite() => Some(Verdict {
                nsfw: s >= *threshold,
                score: Some(s),
            }),
            _ => outage("answer without a numeric score".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: String, fail_closed: bool) -> WorkerConfig {
        WorkerConfig {
            nsfw_classifier: NsfwClassifier::Http,
            nsfw_url: url,
            nsfw_timeout: Duration::from_secs(2),
            nsfw_fail_closed: fail_closed,
            ..WorkerConfig::default()
        }
    }

    /// A port nothing listens on.
    fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        format!("http://127.0.0.1:{port}/classify")
    }

    #[tokio::test]
    async fn an_outage_fails_open_or_closed_as_configured() {
        let img = Bytes::from_static(b"\x89PNG");
        let open = Classifier::new(&config(dead_url(), false)).expect("classifier");
        assert_eq!(
            open.classify("image/png", img.clone()).await,
            Some(Verdict {
                nsfw: false,
                score: None
            })
        );
        let closed = Classifier::new(&config(dead_url(), true)).expect("classifier");
        assert_eq!(
            closed.classify("image/png", img.clone()).await,
            Some(Verdict {
                nsfw: true,
                score: None
            })
        );
        let none = Classifier::new(&WorkerConfig::default()).expect("classifier");
        assert!(!none.enabled());
        assert_eq!(none.classify("image/png", img).await, None);
    }
}
