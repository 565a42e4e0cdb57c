//! `herald standin`: a local FCM v1 and Twilio stand-in that prints each request, masked.

use std::process::ExitCode;

use super::{runtime, Failure, Outcome};

/// Arguments of `herald standin`.
#[derive(clap::Args)]
pub struct StandinArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: std::net::SocketAddr,
}

/// `herald standin`: credentials from HERALD_FCM_ACCESS_TOKEN, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN.
pub fn standin(args: &StandinArgs) -> Outcome {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let credentials = herald::standin::Credentials {
        fcm_token: var("HERALD_FCM_ACCESS_TOKEN"),
        twilio_sid: var("TWILIO_ACCOUNT_SID"),
        twilio_token: var("TWILIO_AUTH_TOKEN"),
    };
    runtime()?.block_on(async {
        let standin = herald::standin::StandIn::start(args.listen, credentials)
            .await
            .map_err(|e| Failure::run(format!("cannot listen on {}: {e}", args.listen)))?;
        println!("provider stand-in (FCM v1, Twilio) on {}", standin.base_url());
        let mut arrivals = standin.arrivals();
        loop {
            tokio::select! {
                a = arrivals.recv() => if let Ok(a) = a {
                    let late = a.event_ms.map(|e| format!(" {} ms after the event", a.at_ms - e)).unwrap_or_default();
                    println!("{} {} {}{}: {}", a.api, a.rule.as_deref().unwrap_or("-"), a.recipient, late, a.text);
                },
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}
