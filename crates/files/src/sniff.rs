//! What a file is, from its first bytes (never from its name or a client's claim).

/// The MIME type of `data` from its magic bytes, for the image, video and audio formats stock
/// ComfyUI clients upload; `None` for anything else.
pub fn sniff(data: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| {
        data.len() >= off + magic.len() && &data[off..off + magic.len()] == magic
    };
    if at(0, b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if at(0, b"\xff\xd8\xff") {
        return Some("image/jpeg");
    }
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return Some("image/gif");
    }
    if at(0, b"BM") && data.len() >= 26 {
        return Some("image/bmp");
    }
    if at(0, b"II*\0") || at(0, b"MM\0*") {
        return Some("image/tiff");
    }
    if at(0, b"RIFF") {
        if at(8, b"WEBP") {
            return Some("image/webp");
        }
        if at(8, b"WAVE") {
            return Some("audio/wav");
        }
        return None;
    }
    if at(4, b"ftyp") {
        // ISO base media: the major brand tells QuickTime and audio-only files apart.
        if at(8, b"qt  ") {
            return Some("video/quicktime");
        }
        if at(8, b"M4A ") || at(8, b"M4B ") {
            return Some("audio/mp4");
        }
        return Some("video/mp4");
    }
    if at(0, b"\x1a\x45\xdf\xa3") {
        // EBML: Matroska or its WebM profile.
        let head = &data[..data.len().min(64)];
        if head.windows(4).any(|w| w == b"webm") {
            return Some("video/webm");
        }
        return Some("video/x-matroska");
    }
    if at(0, b"ID3") || (data.len() >= 2 && data[0] == 0xff && (data[1] & 0xe0) == 0xe0) {
        return Some("audio/mpeg");
    }
    if at(0, b"fLaC") {
        return Some("audio/flac");
    }
    if at(0, b"OggS") {
        return Some("audio/ogg");
    }
    None
}

/// The Content-Type served for a file name (ComfyUI derives it from the extension too).
pub fn content_type(filename: &str) -> &'static str {
    mime_guess::from_path(filename)
        .first_raw()
        .unwrap_or("application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_content() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), Some("image/jpeg"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), Some("audio/wav"));
        assert_eq!(sniff(b"\0\0\0\x18ftypisom"), Some("video/mp4"));
        assert_eq!(
            sniff(b"\x1a\x45\xdf\xa3\x9f\x42\x82\x84webm"),
            Some("video/webm")
        );
        assert_eq!(sniff(b"ID3\x04"), Some("audio/mpeg"));
        assert_eq!(sniff(b"OggS\0"), Some("audio/ogg"));
        assert_eq!(sniff(b"fLaC"), Some("audio/flac"));
        assert_eq!(sniff(b"<html><script>"), None);
        assert_eq!(sniff(b"MZ\x90\0"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(content_type("a.png"), "image/png");
        assert_eq!(content_type("a.unknownext"), "application/octet-stream");
    }
}
