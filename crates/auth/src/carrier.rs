//! Finding the token a request carries, in MSS-Login's order: `Authorization: Bearer`, cookie
//! `jwt_token`, query `token`, query `access_token` (shared/mss-login-api.md §1).

use percent_encoding::percent_decode_str;

/// Where a token was found (decides e.g. the Origin check for cookie-only WebSocket upgrades).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// Cookie `jwt_token`.
    Cookie,
    /// `?token=` or `?access_token=`.
    Query,
}

/// Longest token accepted; anything longer is refused before any work is done on it.
const MAX_TOKEN_LEN: usize = 4096;

fn bounded(t: &str) -> Option<String> {
    let t = t.trim();
    (!t.is_empty() && t.len() <= MAX_TOKEN_LEN).then(|| t.to_owned())
}

/// The first token present among the four carriers. Inputs are the raw `Authorization` and
/// `Cookie` header values and the raw query string.
pub fn find_token(
    authorization: Option<&str>,
    cookie: Option<&str>,
    query: Option<&str>,
) -> Option<(String, Carrier)> {
    if let Some(t) = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .and_then(bounded)
    {
        return Some((t, Carrier::Bearer));
    }
    if let Some(t) = cookie.and_then(|c| {
        c.split(';').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k.trim() == "jwt_token").then(|| bounded(v)).flatten()
        })
    }) {
        return Some((t, Carrier::Cookie));
    }
    let q = query?;
    for wanted in ["token", "access_token"] {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == wanted {
                let v = v.replace('+', " ");
                if let Some(t) = percent_decode_str(&v)
                    .decode_utf8()
                    .ok()
                    .and_then(|s| bounded(&s))
                {
                    return Some((t, Carrier::Query));
                }
            }
        }
    }
    None
}

/// A session JWT has two dots; an API token has none (so they are never confused).
pub fn is_jwt_shaped(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_of_carriers() {
        assert_eq!(
            find_token(Some("Bearer a.b.c"), Some("jwt_token=x"), Some("token=y")),
            Some(("a.b.c".into(), Carrier::Bearer))
        );
        assert_eq!(
            find_token(Some("Basic zzz"), Some("a=1; jwt_token=x"), None),
            Some(("x".into(), Carrier::Cookie))
        );
        assert_eq!(
            find_token(None, None, Some("clientId=1&access_token=q%2Bq")),
            Some(("q+q".into(), Carrier::Query))
        );
        assert_eq!(
            find_token(None, None, Some("access_token=b&token=a")),
            Some(("a".into(), Carrier::Query))
        );
        assert_eq!(
            find_token(Some("Bearer "), Some("jwt_token="), Some("token=")),
            None
        );
        let huge = format!("Bearer {}", "a".repeat(5000));
        assert_eq!(find_token(Some(&huge), None, None), None);
    }

    #[test]
    fn jwt_shape() {
        assert!(is_jwt_shaped("a.b.c"));
        assert!(!is_jwt_shaped(
            "q3Zr0x-7M2aV9_kLp1sT4uWbYcD8eF6gHiJkLmNoPqR"
        ));
    }
}
