//! herald: Kafka events in, analyst rules from files, push notifications and SMS out — within milliseconds.
//!
//! # Layout
//!
//! The modules follow the pipeline, in order:
//!
//! - [`config`] — the one TOML file: Kafka, sources, topics, rules, channels, admin.
//! - [`ingest`] — the consumer group, lanes that keep each key in order, offsets
//!   stored only when a message's decisions are final; [`ingest::decode`] turns a
//!   message into an event or a dead-letter reason.
//! - [`profile`] — the profile table, filled from the compacted profiles topic.
//! - [`expr`] — CEL conditions compiled to herald's evaluator over the event's
//!   JSON (the cel crate parses them, and runs what the evaluator leaves to it).
//! - [`rules`] — YAML rule files compiled into an indexed, immutable set with CEL
//!   conditions, swapped atomically on reload.
//! - [`patterns`] — windows, runs, sequences, absences, crossings and geofences per rule and key.
//! - [`policy`] — consent, preferences, freshness, quiet hours, caps: may this user get this message here, now?
//! - [`feedback`] — engagement, SMS keywords (STOP/START/HELP), replies and push actions coming back.
//! - [`render`] — minijinja templates with money, masking and local-time filters.
//! - [`deliver`] — FCM, Twilio, webhook and console adapters; bounded, retried.
//! - [`outcome`] — one record per decision on the outcomes topic; dead letters.
//! - [`state`] — what promises depend on, kept in Kafka: intents between stage 1
//!   (decode, match, patterns; per source partition) and stage 2 (policy,
//!   render, deliver; per user), changelog topics restored on assignment, and
//!   the send ledger that makes sends effectively once.
//! - [`engine`] — the per-event path that ties the stages together.
//! - [`admin`] — `/metrics`, `/healthz`, `/readyz`, `/rules`.
//! - [`analyst`] — the pipeline offline on a virtual clock, for rule tests.
//! - [`kafka`] — client settings shared by every Kafka client.
//! - [`simulate`] — a seeded generator of realistic events and profiles.
//! - [`standin`] — a local FCM/Twilio stand-in for the demo and the load bench.
//! - [`demo`] — `herald demo`: the product end to end, with a live feed and a summary.
//! - [`loadtest`] — `herald loadtest`: herald against a bare consumer, same broker, same run.

pub mod admin;
pub mod analyst;
pub mod config;
pub mod deliver;
pub mod demo;
pub mod engine;
pub mod expr;
pub mod feedback;
pub mod ingest;
pub mod kafka;
pub mod loadtest;
pub mod metrics;
pub mod outcome;
pub mod patterns;
pub mod policy;
pub mod profile;
pub mod render;
pub mod rules;
pub mod simulate;
pub mod standin;
pub mod state;
pub mod util;

mod service;
pub use service::{run, start, Error, Running};
