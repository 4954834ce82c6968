//! ComfyUI wire types shared by every part of comfy-broker: prompt requests and answers, queue and
//! history shapes, WebSocket messages, the binary frame codec, graph validation against a node
//! catalogue, and the envelope that carries events over the Redis bus. Pure: no I/O.

pub mod catalog;
pub mod envelope;
pub mod error;
pub mod frames;
pub mod ids;
pub mod messages;
pub mod pyrepr;
pub mod validate;
