//! ComfyUI's binary WebSocket frames: a 4-byte big-endian event type, then a per-type layout
//! (comfyui-api.md §3).

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Event type of a legacy preview: `u32 format` then the encoded image.
pub const PREVIEW_IMAGE: u32 = 1;
/// Event type of a progress text frame: `u32 len`, node id, then UTF-8 text.
pub const TEXT: u32 = 3;
/// Event type of a preview with metadata: `u32 len`, JSON metadata, then the encoded image.
pub const PREVIEW_IMAGE_WITH_METADATA: u32 = 4;

/// Image format code inside a type-1 preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// `1`
    Jpeg,
    /// `2`
    Png,
}

impl ImageFormat {
    /// The u32 code ComfyUI writes.
    pub fn code(self) -> u32 {
        match self {
            ImageFormat::Jpeg => 1,
            ImageFormat::Png => 2,
        }
    }

    /// Parses the u32 code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(ImageFormat::Jpeg),
            2 => Some(ImageFormat::Png),
            _ => None,
        }
    }

    /// The MIME type used in type-4 metadata (`image_type`).
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
        }
    }

    /// Parses a MIME type (`image/jpeg`, `image/png`).
    pub fn from_mime(mime: &str) -> Option<Self> {
        match mime {
            "image/jpeg" | "image/jpg" => Some(ImageFormat::Jpeg),
            "image/png" => Some(ImageFormat::Png),
            _ => None,
        }
    }
}

/// A decoded binary frame.
#[derive(Debug, Clone, PartialEq)]
pub enum BinaryFrame {
    /// Type 1: a preview without metadata.
    Preview {
        /// Encoding of `image`.
        format: ImageFormat,
        /// The encoded image.
        image: Bytes,
    },
    /// Type 3: progress text for a node.
    Text {
        /// Node the text belongs to.
        node_id: String,
        /// The text.
        text: String,
    },
    /// Type 4: a preview with a JSON metadata block (`node_id`, `prompt_id`, `image_type` ...).
    PreviewWithMetadata {
        /// The metadata as raw JSON bytes.
        metadata: Bytes,
        /// The encoded image.
        image: Bytes,
    },
    /// Any other event type, passed through untouched.
    Other {
        /// The event type.
        event_type: u32,
        /// Everything after the 4-byte type.
        payload: Bytes,
    },
}

/// Why a binary frame could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the layout needs.
    #[error("binary frame truncated")]
    Truncated,
    /// A type-1 image format other than 1 or 2.
    #[error("unknown preview image format {0}")]
    UnknownFormat(u32),
    /// A text field that is not UTF-8.
    #[error("binary frame text is not UTF-8")]
    NotUtf8,
}

fn read_u32(buf: &[u8], at: usize) -> Result<u32, FrameError> {
    let b = buf.get(at..at + 4).ok_or(FrameError::Truncated)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl BinaryFrame {
    /// Decodes a frame as ComfyUI sends it.
    pub fn decode(frame: &Bytes) -> Result<Self, FrameError> {
        let event_type = read_u32(frame, 0)?;
        match event_type {
            PREVIEW_IMAGE => {
                let code = read_u32(frame, 4)?;
                let format = ImageFormat::from_code(code).ok_or(FrameError::UnknownFormat(code))?;
                Ok(BinaryFrame::Preview {
                    format,
                    image: frame.slice(8..),
                })
            }
            TEXT => {
                let len = read_u32(frame, 4)? as usize;
                let end = 8usize.checked_add(len).ok_or(FrameError::Truncated)?;
                let node = frame.get(8..end).ok_or(FrameError::Truncated)?;
                let node_id = std::str::from_utf8(node)
                    .map_err(|_| FrameError::NotUtf8)?
                    .to_owned();
                let text = std::str::from_utf8(&frame[end..])
                    .map_err(|_| FrameError::NotUtf8)?
                    .to_owned();
                Ok(BinaryFrame::Text { node_id, text })
            }
            PREVIEW_IMAGE_WITH_METADATA => {
                let len = read_u32(frame, 4)? as usize;
                let end = 8usize.checked_add(len).ok_or(FrameError::Truncated)?;
                if frame.len() < end {
                    return Err(FrameError::Truncated);
                }
                Ok(BinaryFrame::PreviewWithMetadata {
                    metadata: frame.slice(8..end),
                    image: frame.slice(end..),
                })
            }
            _ => Ok(BinaryFrame::Other {
                event_type,
                payload: frame.slice(4..),
            }),
        }
    }

    /// Encodes the frame for the wire.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            BinaryFrame::Preview { format, image } => {
                out.reserve(8 + image.len());
                out.put_u32(PREVIEW_IMAGE);
                out.put_u32(format.code());
                out.put_slice(image);
            }
            BinaryFrame::Text { node_id, text } => {
                out.reserve(8 + node_id.len() + text.len());
                out.put_u32(TEXT);
                out.put_u32(node_id.len() as u32);
                out.put_slice(node_id.as_bytes());
                out.put_slice(text.as_bytes());
            }
            BinaryFrame::PreviewWithMetadata { metadata, image } => {
                out.reserve(8 + metadata.len() + image.len());
                out.put_u32(PREVIEW_IMAGE_WITH_METADATA);
                out.put_u32(metadata.len() as u32);
                out.put_slice(metadata);
                out.put_slice(image);
            }
            BinaryFrame::Other {
                event_type,
                payload,
            } => {
                out.reserve(4 + payload.len());
                out.put_u32(*event_type);
                out.put_slice(payload);
            }
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frame_matches_trace_03() {
        // Trace 03: event 3, node "5", 46 bytes in all.
        let f = BinaryFrame::Text {
            node_id: "5".into(),
            text: "width: 128, height: 96\n batch size: 1".into(),
        };
        let bytes = f.encode();
        assert_eq!(bytes.len(), 46);
        assert_eq!(&bytes[..8], &[0, 0, 0, 3, 0, 0, 0, 1]);
        assert_eq!(BinaryFrame::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn previews_round_trip() {
        let p = BinaryFrame::Preview {
            format: ImageFormat::Jpeg,
            image: Bytes::from_static(&[0xff, 0xd8, 0xff]),
        };
        assert_eq!(&p.encode()[..8], &[0, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(BinaryFrame::decode(&p.encode()).unwrap(), p);
        let m = BinaryFrame::PreviewWithMetadata {
            metadata: Bytes::from_static(br#"{"node_id":"3"}"#),
            image: Bytes::from_static(&[0x89, 0x50]),
        };
        assert_eq!(BinaryFrame::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn hostile_frames_are_refused_not_panicking() {
        assert_eq!(
            BinaryFrame::decode(&Bytes::from_static(&[0, 0])),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            BinaryFrame::decode(&Bytes::from_static(&[0, 0, 0, 3, 255, 255, 255, 255])),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            BinaryFrame::decode(&Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 9])),
            Err(FrameError::UnknownFormat(9))
        );
        assert_eq!(
            BinaryFrame::decode(&Bytes::from_static(&[0, 0, 0, 4, 0, 0, 0, 9, 1])),
            Err(FrameError::Truncated)
        );
    }
}
