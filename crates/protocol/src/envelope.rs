//! The envelope that carries one event over a user's Redis pub/sub channel from a worker (or a
//! store script) to every gateway holding one of that user's sockets.
//!
//! Layout (compact, binary-safe, also written by the Lua scripts in `store`):
//! ```text
//! byte 0      kind: b'T' JSON text, b'B' binary frame, b'P' preview
//! byte 1      target: b'*' every socket of the owner, b'C' only sockets with the client id
//! bytes 2..4  u16 BE length L of the client id (0 for b'*')
//! L bytes     client id
//! rest        kind T: the exact JSON text to send
//!             kind B: the exact binary frame to send
//!             kind P: u32 BE image format (1 JPEG, 2 PNG), u32 BE metadata length M,
//!                     M bytes JSON metadata (type-4 fields), then the image bytes
//! ```
//! Previews travel with their metadata so each gateway can send type 4 to sockets that
//! negotiated `supports_preview_metadata` and type 1 to the others.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::frames::{BinaryFrame, ImageFormat};

/// Which of the owner's sockets receive an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every socket of the owner.
    AllSockets,
    /// Only the owner's sockets opened with this `clientId`.
    Client(String),
}

/// What is delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON message, already serialised.
    Text(Bytes),
    /// A binary frame, already encoded.
    Binary(Bytes),
    /// A preview image with type-4 metadata.
    Preview {
        /// Encoding of the image.
        format: ImageFormat,
        /// JSON metadata (`node_id`, `prompt_id`, `display_node_id`, ...).
        metadata: Bytes,
        /// The encoded image.
        image: Bytes,
    },
}

/// One event on the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Recipients among the owner's sockets.
    pub target: Target,
    /// The content.
    pub payload: Payload,
}

/// Why bytes from the bus could not be read as an envelope.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Too short for the layout.
    #[error("envelope truncated")]
    Truncated,
    /// Unknown kind or target byte.
    #[error("unknown envelope tag {0}")]
    UnknownTag(u8),
    /// Client id not UTF-8.
    #[error("envelope client id is not UTF-8")]
    NotUtf8,
    /// Unknown preview image format.
    #[error("unknown preview format {0}")]
    UnknownFormat(u32),
}

impl Envelope {
    /// A JSON message for the given target.
    pub fn text(target: Target, json: impl Into<Bytes>) -> Self {
        Envelope {
            target,
            payload: Payload::Text(json.into()),
        }
    }

    /// Encodes for PUBLISH.
    pub fn encode(&self) -> Bytes {
        let (kind, body_len) = match &self.payload {
            Payload::Text(b) => (b'T', b.len()),
            Payload::Binary(b) => (b'B', b.len()),
            Payload::Preview {
                metadata, image, ..
            } => (b'P', 8 + metadata.len() + image.len()),
        };
        let cid: &[u8] = match &self.target {
            Target::AllSockets => b"",
            Target::Client(c) => c.as_bytes(),
        };
        let mut out = BytesMut::with_capacity(4 + cid.len() + body_len);
        out.put_u8(kind);
        out.put_u8(match self.target {
            Target::AllSockets => b'*',
            Target::Client(_) => b'C',
        });
        out.put_u16(cid.len().min(u16::MAX as usize) as u16);
        out.put_slice(&cid[..cid.len().min(u16::MAX as usize)]);
        match &self.payload {
            Payload::Text(b) | Payload::Binary(b) => out.put_slice(b),
            Payload::Preview {
                format,
                metadata,
                image,
            } => {
                out.put_u32(format.code());
                out.put_u32(metadata.len() as u32);
                out.put_slice(metadata);
                out.put_slice(image);
            }
        }
        out.freeze()
    }

    /// Decodes bytes received from the bus (zero-copy slices of `buf`).
    pub fn decode(buf: &Bytes) -> Result<Self, EnvelopeError> {
        if buf.len() < 4 {
            return Err(EnvelopeError::Truncated);
        }
        let kind = buf[0];
        let target_tag = buf[1];
        let cid_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let rest_at = 4 + cid_len;
        if buf.len() < rest_at {
            return Err(EnvelopeError::Truncated);
        }
        let target = match target_tag {
            b'*' => Target::AllSockets,
            b'C' => Target::Client(
                std::str::from_utf8(&buf[4..rest_at])
                    .map_err(|_| EnvelopeError::NotUtf8)?
                    .to_owned(),
            ),
            other => return Err(EnvelopeError::UnknownTag(other)),
        };
        let rest = buf.slice(rest_at..);
        let payload = match kind {
            b'T' => Payload::Text(rest),
            b'B' => Payload::Binary(rest),
            b'P' => {
                if rest.len() < 8 {
                    return Err(EnvelopeError::Truncated);
                }
                let code = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let format =
                    ImageFormat::from_code(code).ok_or(EnvelopeError::UnknownFormat(code))?;
                let mlen = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
                let end = 8usize.checked_add(mlen).ok_or(EnvelopeError::Truncated)?;
                if rest.len() < end {
                    return Err(EnvelopeError::Truncated);
                }
                Payload::Preview {
                    format,
                    metadata: rest.slice(8..end),
                    image: rest.slice(end..),
                }
            }
            other => return Err(EnvelopeError::UnknownTag(other)),
        };
        Ok(Envelope { target, payload })
    }
}

impl Payload {
    /// The frame for a socket: previews become type 4 for sockets that negotiated
    /// `supports_preview_metadata`, type 1 for the others. `None` for text payloads.
    pub fn binary_for(&self, supports_metadata: bool) -> Option<Bytes> {
        match self {
            Payload::Text(_) => None,
            Payload::Binary(b) => Some(b.clone()),
            Payload::Preview {
                format,
                metadata,
                image,
            } => Some(if supports_metadata {
                BinaryFrame::PreviewWithMetadata {
                    metadata: metadata.clone(),
                    image: image.clone(),
                }
                .encode()
            } else {
                BinaryFrame::Preview {
                    format: *format,
                    image: image.clone(),
                }
                .encode()
            }),
        }
    }

    /// True for previews (dropped first when a socket's send queue is full).
    pub fn is_preview(&self) -> bool {
        matches!(self, Payload::Preview { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let cases = [
            Envelope::text(Target::AllSockets, &b"{\"type\":\"status\"}"[..]),
            Envelope::text(Target::Client("abc".into()), &b"{}"[..]),
            Envelope {
                target: Target::Client("x".into()),
                payload: Payload::Binary(Bytes::from_static(&[0, 0, 0, 3, 0, 0, 0, 0])),
            },
            Envelope {
                target: Target::AllSockets,
                payload: Payload::Preview {
                    format: ImageFormat::Png,
                    metadata: Bytes::from_static(b"{\"node_id\":\"3\"}"),
                    image: Bytes::from_static(&[1, 2, 3]),
                },
            },
        ];
        for e in cases {
            assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn lua_written_status_envelope_decodes() {
        // What the store's scripts write: 'T', '*', u16 0, JSON.
        let raw = Bytes::from_static(b"T*\x00\x00{\"type\":\"status\"}");
        let e = Envelope::decode(&raw).unwrap();
        assert_eq!(e.target, Target::AllSockets);
        assert_eq!(
            e.payload,
            Payload::Text(Bytes::from_static(b"{\"type\":\"status\"}"))
        );
    }

    #[test]
    fn previews_become_type_4_or_type_1() {
        let p = Payload::Preview {
            format: ImageFormat::Jpeg,
            metadata: Bytes::from_static(b"{}"),
            image: Bytes::from_static(&[0xff, 0xd8]),
        };
        assert_eq!(&p.binary_for(true).unwrap()[..4], &[0, 0, 0, 4]);
        assert_eq!(
            &p.binary_for(false).unwrap()[..],
            &[0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xd8]
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Envelope::decode(&Bytes::from_static(b"T")).is_err());
        assert!(Envelope::decode(&Bytes::from_static(b"TC\x00\x09ab")).is_err());
        assert!(Envelope::decode(&Bytes::from_static(b"X*\x00\x00")).is_err());
        assert!(Envelope::decode(&Bytes::from_static(
            b"P*\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff"
        ))
        .is_err());
    }
}
