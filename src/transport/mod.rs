//! Transports: how a client's bytes reach its [`Session`](crate::session::Session) and back.
//! A transport knows framing, not commands.

pub mod websocket;
