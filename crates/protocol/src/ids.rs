//! Identifier rules: prompt ids and WebSocket client ids are client-controlled strings.

use uuid::Uuid;

/// Longest client id accepted on `/ws?clientId=` and in `client_id` (ComfyUI has no limit; we bound it).
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// True when `s` is a canonical lowercase hyphenated UUID: parsing it and printing it back gives
/// the same string (the rule newer ComfyUI applies to a client `prompt_id`).
pub fn is_canonical_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

/// A new random prompt id (uuid4, lowercase, hyphenated), as ComfyUI mints them.
pub fn new_prompt_id() -> String {
    Uuid::new_v4().hyphenated().to_string()
}

/// A new socket id as ComfyUI makes one for `/ws` without `clientId`: uuid4 hex without dashes.
pub fn new_sid() -> String {
    Uuid::new_v4().simple().to_string()
}

/// True when a client id is acceptable: non-empty, bounded, printable ASCII without spaces.
/// (It is echoed in `sid` and used as a routing key on the event bus.)
pub fn is_valid_client_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_CLIENT_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuid_rules() {
        assert!(is_canonical_uuid("8d7994e5-5357-44ea-b604-91a54f408052"));
        assert!(!is_canonical_uuid("8D7994E5-5357-44EA-B604-91A54F408052"));
        assert!(!is_canonical_uuid("8d7994e5535744eab60491a54f408052"));
        assert!(!is_canonical_uuid("{8d7994e5-5357-44ea-b604-91a54f408052}"));
        assert!(!is_canonical_uuid("not-a-uuid"));
        assert!(!is_canonical_uuid("8d7994e5-5357-44ea-b604-91a54f40805g"));
        assert!(!is_canonical_uuid("8d7994e5-5357-44ea-b604+91a54f408052"));
        assert!(is_canonical_uuid(&new_prompt_id()));
    }

    #[test]
    fn client_id_rules() {
        assert!(is_valid_client_id("c3bdcd477faf453bbb864204fa3bd83f"));
        assert!(!is_valid_client_id(""));
        assert!(!is_valid_client_id("has space"));
        assert!(!is_valid_client_id("new\nline"));
        assert!(!is_valid_client_id(&"x".repeat(MAX_CLIENT_ID_LEN + 1)));
        assert_eq!(new_sid().len(), 32);
    }
}
