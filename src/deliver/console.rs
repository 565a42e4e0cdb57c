//! The console channel: prints each rendered message on standard output (demo and development).

use std::io::Write;

use super::{Address, Delivered, Message, Provider, SendFuture};
use crate::config::ProviderKind;

/// Prints one line per message; the recipient is masked.
pub struct Console;

impl Provider for Console {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Console
    }

    fn send<'a>(&'a self, message: &'a Message, to: &'a Address) -> SendFuture<'a> {
        Box::pin(async move {
            let text = match &message.title {
                Some(title) => format!("{title} — {}", message.body),
                None => message.body.clone(),
            };
            let line = format!(
                "[{}] {} → {}: {}\n",
                message.category,
                message.rule_id,
                to.masked(),
                text
            );
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
            Ok(Delivered {
                delivery: None,
                provider_message_id: Some(format!(
                    "console-{}",
                    &message.idempotency_key[..12.min(message.idempotency_key.len())]
                )),
            })
        })
    }
}
