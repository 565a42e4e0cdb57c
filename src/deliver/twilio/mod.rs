//! Twilio Programmable Messaging: the client that sends SMS and maps Twilio's error codes (`client.rs`), and its webhooks — inbound SMS and status callbacks, signed with `X-Twilio-Signature` (`inbound.rs`).

mod client;
pub mod inbound;

pub(super) use client::Twilio;
