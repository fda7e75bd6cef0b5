//! Decisions about a client, and how a refusal reaches it.

use crate::protocol::{Disconnect, Error};

/// Why a client's command is not carried out: an error reply (the connection stays), or a
/// disconnect (the connection ends). Centrifugo's proxy answers the same two ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Reply to the command with this error.
    Error(Error),
    /// Close the connection with this code and reason.
    Disconnect(Disconnect),
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Self {
        Refusal::Error(error)
    }
}

impl From<Disconnect> for Refusal {
    fn from(reason: Disconnect) -> Self {
        Refusal::Disconnect(reason)
    }
}
