//! Everything served over plain HTTP: the server API ([`api`]), the embedded web pages ([`web`]),
//! and the helpers they share.

pub mod api;
pub mod web;
