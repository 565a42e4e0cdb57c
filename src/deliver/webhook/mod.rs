//! A generic JSON webhook, signed with HMAC-SHA256 (`client.rs`).

mod client;

pub(super) use client::Webhook;
