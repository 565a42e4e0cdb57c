//! Apple Push Notification service: the HTTP/2 client with token-based auth (`client.rs`).

mod client;

pub(super) use client::{Apns, ProviderToken};
