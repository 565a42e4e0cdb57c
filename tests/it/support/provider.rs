//! The provider stand-in the tests use: herald's own (`herald::standin`, the
//! one the demo and the fault suite use), with the test credentials, every
//! request kept as it came, and answers scripted by the test.

use std::net::SocketAddr;
use std::time::Duration;

use herald::standin::{Credentials, StandIn};

use super::{FCM_TOKEN, TWILIO_SID, TWILIO_TOKEN, WEBHOOK_SECRET};

/// One request the stand-in received.
pub type Received = herald::standin::Request;

/// A running stand-in.
#[derive(Clone)]
pub struct Provider {
    pub addr: SocketAddr,
    standin: std::sync::Arc<StandIn>,
}

impl Provider {
    /// Starts the stand-in on a free loopback port.
    pub async fn start() -> Provider {
        let standin = StandIn::start(
            ([127, 0, 0, 1], 0).into(),
            Credentials {
                fcm_token: FCM_TOKEN.into(),
                twilio_sid: TWILIO_SID.into(),
                twilio_token: TWILIO_TOKEN.into(),
            },
        )
        .await
        .expect("the stand-in listens");
        standin.keep_requests();
        standin.accept_webhooks(WEBHOOK_SECRET);
        Provider {
            addr: standin.addr,
            standin: std::sync::Arc::new(standin),
        }
    }

    /// The base URL to configure channels with.
    pub fn base_url(&self) -> String {
        self.standin.base_url()
    }

    /// Answers the next requests with these statuses, then succeeds (see
    /// `StandIn::plan`).
    pub fn plan(&self, statuses: &[u16]) {
        self.standin.plan(statuses);
    }

    /// Waits this long before answering each request.
    pub fn delay(&self, d: Duration) {
        self.standin.delay(d);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.standin.requests()
    }

    /// Requests to one API.
    pub fn received_by(&self, api: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.api == api)
            .collect()
    }
}
