//! Firebase Cloud Messaging: the HTTP v1 client (`client.rs`) and its OAuth 2.0 tokens from a service-account key (`auth.rs`).

pub(super) mod auth;
mod client;

pub(super) use client::Fcm;
