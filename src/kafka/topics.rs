//! kafka::topics: every topic herald reads or writes, checked before anything
//! is consumed — it exists, has the partitions herald's state needs, keeps
//! what herald reads whole (compaction), and herald may read or write it —
//! with the exact fix for each problem; herald creates the topics it owns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;

use super::describe::{describe_by_metadata, describe_topics, Described};
use crate::config::Config;

/// Who creates a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creator {
    /// The operator (or the system that writes it): herald refuses to start
    /// without it.
    Operator,
    /// herald, at start, when missing: only herald reads it.
    Herald,
}

/// One topic herald needs, and what it needs of it.
#[derive(Debug, Clone)]
pub struct Need {
    pub name: String,
    /// What it is for herald, for messages and the docs' table.
    pub role: String,
    pub creator: Creator,
    pub read: bool,
    pub write: bool,
    /// The exact partition count herald's state needs (a changelog has its
    /// stage's partitions), if any.
    pub partitions: Option<i32>,
    /// herald reads the topic whole at start as current state: it must be
    /// compacted (or keep everything), or state older than its retention
    /// would be lost.
    pub kept_whole: bool,
    /// When herald creates it: partitions and topic configs.
    pub create_partitions: i32,
    pub create_configs: Vec<(&'static str, String)>,
}

/// A changelog a stage's state table needs.
#[derive(Debug, Clone)]
pub struct Changelog {
    pub topic: String,
    /// The state table it keeps, for messages.
    pub table: String,
    /// The topic whose partitions it has (a source, or the intents topic);
    /// `None`: one partition.
    pub partitioned_by: Option<String>,
    pub cleanup: &'static str,
    pub retention_ms: Option<i64>,
}

/// One thing wrong with a topic, and its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub topic: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic {}: {}.\n  fix: {}",
            self.topic, self.problem, self.fix
        )
    }
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct Checked {
    pub problems: Vec<Problem>,
    /// Worth saying, not a reason to refuse (a topic kept by unlimited
    /// retention rather than compaction, permissions the broker does not report).
    pub warnings: Vec<String>,
    /// herald's own topics that do not exist yet.
    pub to_create: Vec<Need>,
    /// Source topics whose pattern state has a changelog.
    pub with_changelog: BTreeSet<String>,
}

/// Checks every topic `config` names and the stages' `changelogs`, and sets
/// the intents partition count from the existing intents topic (it wins over
/// `topics.intents_partitions`). `Err` only when the brokers cannot be asked
/// at all.
pub async fn check(config: &mut Config, changelogs: &[Changelog]) -> Result<Checked, String> {
    let client = super::client_config(&config.kafka, super::Role::Admin, &[]);
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|e| format!("admin client: {e}"))?;
    let bootstrap = config.kafka.bootstrap_servers.clone();
    let timeout = Duration::from_secs(10);
    let describe = |names: Vec<String>| {
        tokio::task::block_in_place(|| {
            describe_topics(admin.inner(), &names, timeout).or_else(|e| {
                tracing::warn!(error = %e, "the brokers do not answer DescribeTopics; topics checked from metadata, permissions not checked");
                describe_by_metadata(admin.inner(), &names, timeout)
            })
        })
        .map_err(|e| format!("cannot describe topics on {bootstrap}: {e}"))
    };
    // The sources and the intents topic first: changelogs take their counts.
    let mut first: Vec<String> = config.source_topics();
    first.push(config.intents_topic());
    let described = describe(first)?;
    let partitions = |topic: &str| match described.get(topic) {
        Some(Described::Found { partitions, .. }) => Some(*partitions),
        _ => None,
    };
    if let Some(n) = partitions(&config.intents_topic()) {
        config.topics.intents_partitions = n;
    }
    let mut checked = Checked::default();
    let needs = needs(config, changelogs, &partitions, &mut checked.with_changelog);
    let described = describe(needs.iter().map(|n| n.name.clone()).collect())?;
    let fix = Fixes::new(&config.kafka.bootstrap_servers);
    let mut existing = Vec::new();
    for need in &needs {
        match described.get(&need.name) {
            Some(Described::Found {
                partitions,
                allowed,
            }) => {
                if let Some(want) = need.partitions.filter(|w| w != partitions) {
                    checked.problems.push(Problem {
                        topic: need.name.clone(),
                        problem: format!("has {partitions} partitions; herald needs {want} ({}: a changelog has as many partitions as the topic its state is partitioned by)", need.role),
                        fix: format!("delete it ({}) and let herald create it again; its state is rebuilt from what follows, so do it when nothing is held or counted", fix.delete(&need.name)),
                    });
                }
                match allowed {
                    Some(a) => {
                        for (needed, has, operation) in
                            [(need.read, a.read, "Read"), (need.write, a.write, "Write")]
                        {
                            if needed && !has {
                                checked.problems.push(Problem {
                                    topic: need.name.clone(),
                                    problem: format!(
                                        "herald may not {} it ({})",
                                        operation.to_lowercase(),
                                        need.role
                                    ),
                                    fix: fix.grant(&need.name, operation),
                                });
                            }
                        }
                    }
                    None => checked.warnings.push(format!(
                        "topic {}: the broker does not say what herald may do with it (older than Kafka 2.3); permissions not checked",
                        need.name
                    )),
                }
                if need.kept_whole {
                    existing.push(need);
                }
            }
            Some(Described::Denied) => checked.problems.push(Problem {
                topic: need.name.clone(),
                problem: format!("herald may not describe it ({})", need.role),
                fix: fix.grant(&need.name, "Describe"),
            }),
            Some(Described::Failed(e)) => checked.problems.push(Problem {
                topic: need.name.clone(),
                problem: format!("the broker could not describe it: {e}"),
                fix: "see the broker's log for this topic".into(),
            }),
            Some(Described::Missing) | None => match need.creator {
                Creator::Herald => checked.to_create.push(need.clone()),
                Creator::Operator => checked.problems.push(Problem {
                    topic: need.name.clone(),
                    problem: format!("does not exist ({})", need.role),
                    fix: format!(
                        "create it: {} (or correct the name in the config)",
                        fix.create(need)
                    ),
                }),
            },
        }
    }
    check_retention(&admin, &existing, &fix, &mut checked).await;
    Ok(checked)
}

impl Need {
    /// A compacted topic of herald's own, read and written (benches and
    /// tools that make a changelog by hand).
    pub fn compacted(name: &str, partitions: i32) -> Need {
        Need {
            name: name.to_string(),
            role: "a compacted topic".into(),
            creator: Creator::Herald,
            read: true,
            write: true,
            partitions: Some(partitions),
            kept_whole: true,
            create_partitions: partitions,
            create_configs: vec![("cleanup.policy", "compact".to_string())],
        }
    }
}

/// Creates herald's own missing topics, logging each.
pub async fn create(config: &Config, needs: &[Need]) -> Result<(), String> {
    let client = super::client_config(&config.kafka, super::Role::Admin, &[]);
    create_with(&client, needs).await
}

/// Creates `needs` through `client` (replication: the broker's default); a
/// topic that already exists is left as it is.
pub async fn create_with(client: &rdkafka::ClientConfig, needs: &[Need]) -> Result<(), String> {
    if needs.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|e| format!("admin client: {e}"))?;
    let new: Vec<NewTopic<'_>> = needs
        .iter()
        .map(|n| {
            n.create_configs.iter().fold(
                NewTopic::new(&n.name, n.create_partitions, TopicReplication::Fixed(-1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(|e| format!("cannot create topics: {e}"))?;
    let fix = Fixes::new(client.get("bootstrap.servers").unwrap_or("<brokers>"));
    for (r, need) in results.into_iter().zip(needs) {
        match r {
            Ok(_) => tracing::info!(
                topic = %need.name,
                partitions = need.create_partitions,
                configs = ?need.create_configs,
                role = %need.role,
                "created topic"
            ),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(format!(
                    "cannot create topic {name} ({}): {code}.\n  fix: create it yourself: {}, or allow herald Create on the cluster",
                    need.role,
                    fix.create(need)
                ))
            }
        }
    }
    Ok(())
}

/// Every topic `config` names, merged by name (the replies topic can also
/// be a source).
fn needs(
    config: &Config,
    changelogs: &[Changelog],
    partitions: &dyn Fn(&str) -> Option<i32>,
    with_changelog: &mut BTreeSet<String>,
) -> Vec<Need> {
    let t = &config.topics;
    let n = t.intents_partitions;
    let operator = |name: &str, role: &str, read: bool, write: bool, kept_whole: bool| Need {
        name: name.to_string(),
        role: role.to_string(),
        creator: Creator::Operator,
        read,
        write,
        partitions: None,
        kept_whole,
        create_partitions: 6,
        create_configs: if kept_whole {
            vec![("cleanup.policy", "compact".to_string())]
        } else {
            Vec::new()
        },
    };
    let mut needs: Vec<Need> = config
        .source_topics()
        .iter()
        .map(|s| operator(s, "a source of events", true, false, false))
        .collect();
    needs.extend([
        operator(
            &t.profiles,
            "profiles, read whole at start",
            true,
            false,
            true,
        ),
        operator(
            &t.outcomes,
            "one record per decision; its tail is read back at start",
            true,
            true,
            false,
        ),
        operator(&t.dead_letter, "dead letters", false, true, false),
        operator(
            &t.feedback,
            "engagement, inbound SMS and herald's own sent records",
            true,
            true,
            false,
        ),
        operator(
            &t.consent,
            "consent changes, read whole at start",
            true,
            true,
            true,
        ),
        operator(&t.replies, "replies as events", false, true, false),
    ]);
    let own = |name: String,
               role: &str,
               partitions: Option<i32>,
               make: i32,
               configs: Vec<(&'static str, String)>| Need {
        name,
        role: role.to_string(),
        creator: Creator::Herald,
        read: true,
        write: true,
        partitions,
        kept_whole: configs
            .iter()
            .any(|(k, v)| *k == "cleanup.policy" && v.contains("compact")),
        create_partitions: make,
        create_configs: configs,
    };
    let compact = || vec![("cleanup.policy", "compact".to_string())];
    let mut owned = vec![
        own(
            config.intents_topic(),
            "between stage 1 and stage 2",
            None,
            n,
            Vec::new(),
        ),
        own(
            t.held.clone(),
            "held messages, read whole at start",
            None,
            n,
            compact(),
        ),
        own(
            t.preferences.clone(),
            "users' preferences, read whole by every instance",
            None,
            3,
            compact(),
        ),
        own(
            t.conversions.clone(),
            "experiments' conversions, read by `herald experiment report`",
            None,
            3,
            Vec::new(),
        ),
    ];
    let intents = config.intents_topic();
    for changelog in changelogs {
        let count = match &changelog.partitioned_by {
            None => 1,
            Some(topic) if *topic == intents => n,
            Some(source) => match partitions(source) {
                Some(p) => {
                    with_changelog.insert(source.clone());
                    p
                }
                // The missing source is the problem reported.
                None => continue,
            },
        };
        let mut configs = vec![("cleanup.policy", changelog.cleanup.to_string())];
        configs.extend(
            changelog
                .retention_ms
                .map(|ms| ("retention.ms", ms.to_string())),
        );
        owned.push(own(
            changelog.topic.clone(),
            &format!("changelog of the {}", changelog.table),
            Some(count),
            count,
            configs,
        ));
    }
    needs.extend(owned);
    let mut merged: BTreeMap<String, Need> = BTreeMap::new();
    let mut order = Vec::new();
    for need in needs {
        match merged.get_mut(&need.name) {
            Some(m) => {
                m.read |= need.read;
                m.write |= need.write;
                m.kept_whole |= need.kept_whole;
                m.partitions = m.partitions.or(need.partitions);
                if need.creator == Creator::Operator {
                    m.creator = Creator::Operator;
                }
                m.role = format!("{}; {}", m.role, need.role);
            }
            None => {
                order.push(need.name.clone());
                merged.insert(need.name.clone(), need);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|name| merged.remove(&name))
        .collect()
}

/// Topics read whole must be compacted, or keep everything.
async fn check_retention(
    admin: &AdminClient<DefaultClientContext>,
    needs: &[&Need],
    fix: &Fixes,
    checked: &mut Checked,
) {
    if needs.is_empty() {
        return;
    }
    let specifiers: Vec<ResourceSpecifier<'_>> = needs
        .iter()
        .map(|n| ResourceSpecifier::Topic(&n.name))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = match admin.describe_configs(&specifiers, &options).await {
        Ok(r) => r,
        Err(e) => {
            checked.warnings.push(format!(
                "topic configs could not be read ({e}); cleanup policies not checked"
            ));
            return;
        }
    };
    for (need, result) in needs.iter().zip(results) {
        let resource = match result {
            Ok(r) => r,
            Err(code) => {
                checked.warnings.push(format!(
                    "topic {}: its configs could not be read ({code}); its cleanup policy is not checked (allow herald DescribeConfigs on it)",
                    need.name
                ));
                continue;
            }
        };
        let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
        let policy = value("cleanup.policy").unwrap_or_else(|| "delete".into());
        if policy.contains("compact") {
            continue;
        }
        let retention_ms = value("retention.ms").and_then(|v| v.parse::<i64>().ok());
        let retention_bytes = value("retention.bytes").and_then(|v| v.parse::<i64>().ok());
        if retention_ms == Some(-1) && retention_bytes.is_none_or(|b| b < 0) {
            checked.warnings.push(format!(
                "topic {} is not compacted but keeps every record (retention.ms=-1); it grows for ever and each start reads all of it: {}",
                need.name,
                fix.compact(&need.name)
            ));
            continue;
        }
        let kept = match retention_ms {
            Some(ms) if ms > 0 => format!("retention.ms={ms} (about {} days)", ms / 86_400_000),
            _ => format!("retention.bytes={}", retention_bytes.unwrap_or(-1)),
        };
        checked.problems.push(Problem {
            topic: need.name.clone(),
            problem: format!(
                "cleanup.policy={policy} with {kept}: herald reads it whole as current state ({}), so anything older would be lost",
                need.role
            ),
            fix: fix.compact(&need.name),
        });
    }
}

/// The commands that fix a problem, for this cluster.
struct Fixes {
    bootstrap: String,
}

impl Fixes {
    fn new(bootstrap_servers: &str) -> Fixes {
        Fixes {
            bootstrap: bootstrap_servers
                .split(',')
                .next()
                .unwrap_or(bootstrap_servers)
                .trim()
                .to_string(),
        }
    }

    fn create(&self, need: &Need) -> String {
        let configs: String = need
            .create_configs
            .iter()
            .map(|(k, v)| format!(" --config {k}={v}"))
            .collect();
        format!(
            "kafka-topics.sh --bootstrap-server {} --create --topic {} --partitions {}{configs}",
            self.bootstrap, need.name, need.create_partitions
        )
    }

    fn delete(&self, topic: &str) -> String {
        format!(
            "kafka-topics.sh --bootstrap-server {} --delete --topic {topic}",
            self.bootstrap
        )
    }

    fn compact(&self, topic: &str) -> String {
        format!(
            "kafka-configs.sh --bootstrap-server {} --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact",
            self.bootstrap
        )
    }

    fn grant(&self, topic: &str, operation: &str) -> String {
        format!(
            "kafka-acls.sh --bootstrap-server {} --add --allow-principal User:<herald's principal> --operation {operation} --topic {topic}",
            self.bootstrap
        )
    }
}
