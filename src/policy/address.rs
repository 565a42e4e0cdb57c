//! Policy step: the user can be reached on the channel (a live push token, a valid phone number).

use super::step::{Context, Draft, Step, Verdict};
use super::Suppression;
use crate::deliver::{Address, Channel, ChannelKind, NoAddress};
use crate::profile::{Profile, ProfileTable};

/// Finds the draft's address, which the send then uses.
pub struct Reachable;

impl Step for Reachable {
    fn name(&self) -> &'static str {
        "address"
    }

    fn check(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict {
        let Some(profile) = draft.profile else {
            return Verdict::Suppress(Suppression::NoProfile);
        };
        match address(profile, draft.channel, cx.profiles) {
            Ok(a) => {
                draft.address = Some(a);
                Verdict::Continue
            }
            Err(s) => Verdict::Suppress(s),
        }
    }
}

/// The address to use for `profile` on `channel`, or why there is none.
pub fn address(
    profile: &Profile,
    channel: &Channel,
    table: &ProfileTable,
) -> Result<Address, Suppression> {
    channel.address(profile, table).map_err(|e| match e {
        NoAddress::Missing if profile.phone_invalid && channel.kind() == ChannelKind::Sms => {
            Suppression::InvalidPhone {
                channel: channel.name.clone(),
            }
        }
        NoAddress::Missing => Suppression::NoAddress {
            channel: channel.name.clone(),
        },
        NoAddress::AllTokensDead => Suppression::DeadTokens {
            channel: channel.name.clone(),
        },
    })
}
