//! herald: Kafka events in, analyst rules from files, push notifications and SMS out — within milliseconds.
//!
//! # Layout
//!
//! Folders follow the pipeline's stages, and layers point one way: a module
//! uses only modules of its own layer or of the layers before it in this list,
//! and no two modules, nor two files of one module, use each other
//! (`tests/it/layers.rs` checks both). Ingest hands records to a handler trait
//! ([`ingest::Handler`]), which the engine implements.
//!
//! 1. [`util`] — small helpers: durations, masks, fast hashing, JSON bytes;
//!    [`allocator`], the `herald` binary's allocator (mimalloc).
//! 2. [`metrics`], [`outcome`], [`config`] — shared vocabulary below the
//!    stages: the Prometheus handles every stage counts into; outcome,
//!    dead-letter and delivery records and the producer that writes them
//!    (card numbers masked at rest); the one TOML file, with the delivery-policy
//!    settings that rule files and profiles share.
//! 3. [`kafka`], [`store`] — client settings shared by every client, and the
//!    follower that reads a whole topic on every instance; the embedded
//!    key-value store on local disk, each table with the topic offsets it holds.
//! 4. [`ingest`] — the consumer group, lanes that keep each key in order,
//!    offsets stored only when a message's decisions are final;
//!    [`ingest::decode`] turns a message into an event or a dead-letter reason.
//! 5. [`profile`] — the profile table, filled from the compacted profiles topic.
//! 6. [`expr`], [`feedback`], [`render`], [`deliver`], [`state`] — CEL
//!    conditions compiled to herald's evaluator over the event's JSON;
//!    engagement, STOP/START/HELP, replies and push actions coming back;
//!    minijinja templates with money, masking and local-time filters; FCM,
//!    APNs, Twilio, webhook and console adapters, retried, behind a breaker;
//!    the intents between stage 1 and stage 2, changelogs restored on
//!    assignment, and the send ledger that makes sends effectively once.
//! 7. [`policy`], [`patterns`] — consent, preferences, freshness, quiet
//!    hours, caps: may this user get this message here, now?; windows, runs,
//!    sequences, absences, crossings and geofences per rule and key.
//! 8. [`rules`] — YAML rule files compiled into an indexed, immutable set,
//!    swapped atomically on reload.
//! 9. [`engine`] — the per-event path that ties the stages together: stage 1
//!    (decode, match, patterns; per source partition) and stage 2 (policy,
//!    render, deliver; per user).
//! 10. [`analyst`] — the pipeline offline on a virtual clock: rule tests,
//!     replay, evaluate, diff.
//! 11. [`admin`] — `/metrics`, `/healthz`, `/readyz`, `/rules`, the live page,
//!     Twilio's webhooks.
//! 12. `service` ([`run`], [`start`]), and the tools: [`simulate`] (seeded
//!     realistic events and profiles), [`standin`] (a local FCM/Twilio
//!     stand-in), [`demo`] (the product end to end, with a live feed) and
//!     [`loadtest`] (herald against a bare consumer, same broker, same run).

pub mod admin;
pub mod allocator;
pub mod analyst;
pub mod config;
pub mod deliver;
#[cfg(feature = "tools")]
pub mod demo;
pub mod engine;
pub mod expr;
pub mod feedback;
pub mod ingest;
pub mod kafka;
#[cfg(feature = "tools")]
pub mod loadtest;
pub mod metrics;
pub mod outcome;
pub mod patterns;
pub mod policy;
pub mod profile;
pub mod render;
pub mod rules;
#[cfg(feature = "tools")]
pub mod simulate;
#[cfg(feature = "tools")]
pub mod standin;
pub mod state;
pub mod store;
pub mod util;

mod service;
pub use service::{run, start, topic_check, Error, Running};
