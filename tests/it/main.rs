//! herald's integration tests, one binary: a module per area, each test named
//! as the behaviour it specifies, run on a real Apache Kafka broker
//! (`scripts/test.sh` starts one; `HERALD_TEST_BROKERS` points at it).
//! `support` holds what they share: topics, the broker, a provider stand-in
//! that checks request shapes and auth, and herald itself.

mod support;

// The stream: events in, provider requests out, outcomes and dead letters.
mod delivery;
mod outages;
mod pipeline;

// Production channels.
mod apns;
mod fcm_auth;
mod twilio_hooks;

// Delivery policy and feedback.
mod policy;

// Patterns over time.
mod card_numbers;
mod patterns;

// State that survives restarts, kills and a second instance.
mod faults;
mod held;
mod preferences;
mod profiles;
mod restart;
mod state;
mod topics;

// Rules: checking, reloading, the live page.
mod page;
mod reload;
mod rules_check;

// Analyst tools: shadow rules, diff, replay, the simulator.
mod analyst;
mod replay;
mod simulate;

// The house: commands, compose file, docs and layering.
mod cli;
mod compose;
mod docs;
mod layers;
