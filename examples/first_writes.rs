//! The broker's first writes to new partitions, measured with a bare rdkafka producer (no herald): why the load test warms its topics.
//!
//! Creates 2 × TOPICS new topics of PARTITIONS partitions, waits, then
//! writes RATE records a second for 3 s with herald's producer settings
//! (`linger.ms=0`, `acks=all`, idempotent), three times, each with a new
//! producer: to the first set (new partitions), to the second set (new
//! partitions too), and to the first set again (written before). Prints,
//! per 100 ms of sending, how many acknowledgements took over 20 ms and the
//! slowest (BENCHMARKS.md, "the first writes to a new partition").
//!
//! `cargo run --release --example first_writes -- 127.0.0.1:19292 8 6 6000 [WAIT_S]`

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: first_writes BROKERS TOPICS PARTITIONS RATE [WAIT_S]";
    let [_, brokers, topics, partitions, rate, rest @ ..] = args.as_slice() else {
        return Err(usage.into());
    };
    let (topics, partitions): (usize, i32) = (topics.parse()?, partitions.parse()?);
    let rate: u64 = rate.parse()?;
    let wait: u64 = rest.first().map_or(Ok(2), |w| w.parse())?;
    let id = format!("{:08x}", rand::random::<u32>());
    let names: Vec<String> = (0..2 * topics)
        .map(|i| format!("first-writes-{id}-{i}"))
        .collect();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&new, &AdminOptions::new()).await? {
        result.map_err(|(topic, code)| format!("{topic}: {code}"))?;
    }
    tokio::time::sleep(Duration::from_secs(wait)).await;
    for (label, set) in [
        ("new partitions", &names[..topics]),
        ("other new partitions", &names[topics..]),
        ("the first partitions again", &names[..topics]),
    ] {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "0")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()?;
        // Connected, with a producer id, before the clock starts.
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(10))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        let mut acks = Vec::new();
        let payload = [b'x'; 300];
        for i in 0..rate * 3 {
            tokio::time::sleep_until((start + Duration::from_micros(i * 1_000_000 / rate)).into())
                .await;
            let n = i as usize;
            let topic = &set[n % topics];
            let partition = ((n / topics) % partitions as usize) as i32;
            let key = i.to_string();
            let record = FutureRecord::to(topic)
                .partition(partition)
                .key(&key)
                .payload(&payload[..]);
            let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
            let sent = Instant::now();
            acks.push(tokio::spawn(async move {
                let _ = delivery.await;
                (sent - start, sent.elapsed())
            }));
        }
        // Per 100 ms of sending: acknowledgements over 20 ms, and the slowest.
        let mut buckets = vec![(0u32, Duration::ZERO); 30];
        for ack in acks {
            let (at, took) = ack.await?;
            let b = &mut buckets[((at.as_millis() / 100) as usize).min(29)];
            b.0 += u32::from(took > Duration::from_millis(20));
            b.1 = b.1.max(took);
        }
        println!("{label}: per 100 ms, acks over 20 ms / slowest ms");
        let cells: Vec<String> = buckets
            .iter()
            .map(|(over, max)| format!("{over}/{}", max.as_millis()))
            .collect();
        println!("  {}", cells.join(" "));
    }
    Ok(())
}
