//! Realistic, repeatable events and profiles from a seeded random source.
//!
//! Transactions are keyed by card, sensor readings and location pings by
//! device, as DESIGN.md says; every event carries `ts` (event time) and
//! `produced_ms` (when it was handed to Kafka), which the latency bench reads.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Merchants: (name, category, typical amount in USD).
const MERCHANTS: &[(&str, &str, f64)] = &[
    ("Blue Bottle", "coffee", 5.5),
    ("Whole Foods", "grocery", 62.0),
    ("Shell", "fuel", 48.0),
    ("Apple Store", "electronics", 899.0),
    ("Uber", "transport", 23.0),
    ("Amazon", "online", 41.0),
    ("Chez Panisse", "restaurant", 140.0),
    ("Walgreens", "pharmacy", 18.0),
];
const FIRST_NAMES: &[&str] = &["Ada", "Grace", "Alan", "Edsger", "Barbara"];
const TIME_ZONES: &[&str] = &[
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Europe/Paris",
    "America/New_York",
    "Europe/Zurich",
    "America/Chicago",
    "Asia/Tokyo",
];

/// A cardholder's home by time zone: locale, country, currency, and the
/// currency's units per US dollar (amounts are generated in dollars).
fn home(tz: &str) -> (&'static str, &'static str, &'static str, f64) {
    match tz {
        "Europe/Paris" => ("fr-FR", "FR", "EUR", 0.92),
        "Europe/Zurich" => ("de-CH", "CH", "CHF", 0.88),
        "Asia/Tokyo" => ("ja-JP", "JP", "JPY", 150.0),
        _ => ("en-US", "US", "USD", 1.0),
    }
}
/// Stores with a geofence-worthy location (lat, lon) in San Francisco.
const STORES: &[(&str, f64, f64)] = &[
    ("store-42", 37.7849, -122.4075),
    ("store-7", 37.7609, -122.4350),
    ("store-19", 37.8002, -122.4368),
];

/// One generated record, ready to publish.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: &'static str,
    pub key: String,
    pub value: Value,
}

/// Which stream a record belongs to.
pub const TRANSACTIONS: &str = "transactions";
pub const SENSORS: &str = "sensors";
pub const LOCATIONS: &str = "locations";

/// A seeded generator over a fixed population of users, cards and devices.
pub struct Generator {
    rng: StdRng,
    users: usize,
    sites: usize,
    balances: Vec<f64>,
    seq: u64,
}

impl Generator {
    /// `users` cardholders and `sites` cold-chain sites with four freezers each.
    pub fn new(seed: u64, users: usize, sites: usize) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let balances = (0..users)
            .map(|_| rng.random_range(150.0..4000.0))
            .collect();
        Generator {
            rng,
            users: users.max(1),
            sites: sites.max(1),
            balances,
            seq: 0,
        }
    }

    /// The user id of cardholder `i`.
    pub fn user_id(i: usize) -> String {
        format!("u-{i:05}")
    }

    /// The user id of the owner of site `i`.
    pub fn site_id(i: usize) -> String {
        format!("site-{i:03}")
    }

    /// Profiles for every cardholder and site owner, keyed by user id.
    pub fn profiles(&mut self) -> Vec<(String, Value)> {
        (0..self.profile_count()).map(|n| self.profile(n)).collect()
    }

    /// How many profiles the population has: its users, then its sites.
    pub fn profile_count(&self) -> usize {
        self.users + self.sites
    }

    /// The `n`th profile of [`Generator::profiles`], one at a time (ten
    /// million profiles are ten gigabytes as JSON values). Call in order
    /// 0, 1, …: the random draws follow that order.
    pub fn profile(&mut self, n: usize) -> (String, Value) {
        if n < self.users {
            let i = n;
            let user = Self::user_id(i);
            let tz = TIME_ZONES[i % TIME_ZONES.len()];
            let platform = if i % 3 == 0 { "ios" } else { "android" };
            let profile = json!({
                "user_id": user,
                "push_tokens": [{"token": format!("fcm:{}:{:016x}", user, self.rng.random::<u64>()), "platform": platform}],
                "phone": format!("+1415555{:04}", 2000 + i % 8000),
                "time_zone": tz,
                "locale": home(tz).0,
                "consent": {"push": self.rng.random_bool(0.9), "sms": self.rng.random_bool(0.7)},
                "preferences": {"marketing": self.rng.random_bool(0.3)},
                "attributes": {"first_name": FIRST_NAMES[i % FIRST_NAMES.len()]},
            });
            (user, profile)
        } else {
            let i = n - self.users;
            let site = Self::site_id(i);
            let profile = json!({
                "user_id": site,
                "phone": format!("+1312555{:04}", 2000 + i % 8000),
                "time_zone": "America/Chicago",
                "consent": {"sms": true, "push": false},
            });
            (site, profile)
        }
    }

    /// The next event: about 70% card transactions, 20% sensor readings, 10% location pings.
    pub fn next(&mut self, now_ms: i64) -> Record {
        self.seq += 1;
        let roll: f64 = self.rng.random();
        if roll < 0.7 {
            self.card_swipe(now_ms)
        } else if roll < 0.9 {
            self.sensor(now_ms)
        } else {
            self.location(now_ms)
        }
    }

    /// The next card transaction only.
    pub fn transaction(&mut self, now_ms: i64) -> Record {
        self.seq += 1;
        self.card_swipe(now_ms)
    }

    fn card_swipe(&mut self, now_ms: i64) -> Record {
        let i = self.rng.random_range(0..self.users);
        let user = Self::user_id(i);
        let last4 = format!("{:04}", (i * 7919) % 10_000);
        let (merchant, category, typical) = MERCHANTS[self.rng.random_range(0..MERCHANTS.len())];
        let amount = (typical * self.rng.random_range(0.4..1.8) * 100.0).round() / 100.0;
        let (_, home_country, currency, rate) = home(TIME_ZONES[i % TIME_ZONES.len()]);
        let abroad = self.rng.random_bool(0.05);
        let elsewhere: Vec<&str> = ["US", "FR", "MX", "GB", "JP"]
            .into_iter()
            .filter(|c| *c != home_country)
            .collect();
        let country = if abroad {
            elsewhere[self.rng.random_range(0..4)]
        } else {
            home_country
        };
        // Amounts in the cardholder's currency (whole yen).
        let local = |usd: f64| match currency {
            "JPY" => (usd * rate).round(),
            _ => (usd * rate * 100.0).round() / 100.0,
        };
        let declined = self.rng.random_bool(0.08);
        if !declined {
            self.balances[i] -= amount;
            if self.balances[i] < 20.0 {
                self.balances[i] += self.rng.random_range(500.0..3000.0);
            }
        }
        Record {
            topic: TRANSACTIONS,
            key: format!("card-{last4}-{i}"),
            value: json!({
                "seq": self.seq,
                "user_id": user,
                "ts": now_ms,
                "produced_ms": now_ms,
                "card_last4": last4,
                "merchant": merchant,
                "category": category,
                "amount": local(amount),
                "currency": currency,
                "country": country,
                "home_country": home_country,
                "status": if declined { "declined" } else { "approved" },
                "balance_after": local(self.balances[i]),
            }),
        }
    }

    fn sensor(&mut self, now_ms: i64) -> Record {
        let site = self.rng.random_range(0..self.sites);
        let device = format!("freezer-{site:03}-{}", self.rng.random_range(0..4));
        let excursion = self.rng.random_bool(0.03);
        let value = if excursion {
            self.rng.random_range(-9.0..-2.0)
        } else {
            self.rng.random_range(-21.0..-15.0)
        };
        Record {
            topic: SENSORS,
            key: device.clone(),
            value: json!({
                "seq": self.seq,
                "device_id": device,
                "owner_id": Self::site_id(site),
                "ts": now_ms,
                "produced_ms": now_ms,
                "metric": "temperature",
                "value": (value * 10.0f64).round() / 10.0,
                "unit": "C",
                "limit": -10.0,
            }),
        }
    }

    fn location(&mut self, now_ms: i64) -> Record {
        let i = self.rng.random_range(0..self.users);
        let (_, lat, lon) = STORES[self.rng.random_range(0..STORES.len())];
        let jitter = || 0.002;
        let (dlat, dlon) = (
            self.rng.random_range(-jitter()..jitter()),
            self.rng.random_range(-jitter()..jitter()),
        );
        Record {
            topic: LOCATIONS,
            key: format!("phone-{i}"),
            value: json!({
                "seq": self.seq,
                "user_id": Self::user_id(i),
                "device_id": format!("phone-{i}"),
                "ts": now_ms,
                "produced_ms": now_ms,
                "lat": lat + dlat,
                "lon": lon + dlon,
                "accuracy_m": self.rng.random_range(3.0..40.0),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<Value> = {
            let mut g = Generator::new(7, 100, 5);
            (0..50).map(|_| g.next(1).value).collect()
        };
        let mut g = Generator::new(7, 100, 5);
        let b: Vec<Value> = (0..50).map(|_| g.next(1).value).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn profiles_are_valid() {
        let mut g = Generator::new(1, 200, 10);
        for (user, p) in g.profiles() {
            Profile::parse(&user, &serde_json::to_vec(&p).unwrap())
                .map(|(_, problems)| assert!(problems.is_empty(), "{problems:?}"))
                .unwrap_or_else(|e| panic!("{user}: {e}"));
        }
    }
}
