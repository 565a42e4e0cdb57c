//! The fault suite's world: Apache Kafka (one node or three, through
//! `scripts/broker.sh`), fresh topics, and herald processes to start, kill and stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio::process::{Child, Command};

/// A broker this run started; stopped when dropped.
pub struct Broker {
    root: PathBuf,
    pub bootstrap: String,
    cluster: bool,
    port: u16,
}

impl Broker {
    /// One node on a free loopback port.
    pub fn single(root: &Path) -> Result<Broker, String> {
        let port = script(root, &[], &["free-port"])?
            .trim()
            .parse::<u16>()
            .map_err(|e| format!("free-port: {e}"))?;
        let broker = Broker {
            root: root.to_path_buf(),
            bootstrap: format!("127.0.0.1:{port}"),
            cluster: false,
            port,
        };
        broker.run(&["start"])?;
        Ok(broker)
    }

    /// Three nodes (replication factor 3, min.insync.replicas 2).
    pub fn cluster(root: &Path) -> Result<Broker, String> {
        let port = 29092;
        let mut broker = Broker {
            root: root.to_path_buf(),
            bootstrap: String::new(),
            cluster: true,
            port,
        };
        broker.run(&["cluster", "start"])?;
        broker.bootstrap = broker.run(&["cluster", "bootstrap"])?.trim().to_string();
        Ok(broker)
    }

    /// Replicas per topic.
    pub fn replication(&self) -> i32 {
        if self.cluster {
            3
        } else {
            1
        }
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let port = self.port.to_string();
        let env = if self.cluster {
            [("HERALD_CLUSTER_PORT", port.as_str())]
        } else {
            [("HERALD_BROKER_PORT", port.as_str())]
        };
        script(&self.root, &env, args)
    }

    /// SIGSTOP of the (single) node.
    pub fn freeze(&self) -> Result<(), String> {
        self.run(&["freeze"]).map(drop)
    }

    /// SIGCONT of the (single) node.
    pub fn thaw(&self) -> Result<(), String> {
        self.run(&["thaw"]).map(drop)
    }

    /// kill -9 of cluster node `n` (1–3).
    pub fn kill_node(&self, n: i32) -> Result<(), String> {
        self.run(&["cluster", "kill", &n.to_string()]).map(drop)
    }

    /// Restarts cluster node `n` on its own data and waits until it serves.
    pub fn restart_node(&self, n: i32) -> Result<(), String> {
        self.run(&["cluster", "restart", &n.to_string()]).map(drop)
    }

    /// The cluster node (1–3) that leads most partitions of `topic`.
    pub fn busiest_leader(&self, topic: &str) -> Result<i32, String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let mut led = [0usize; 4];
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            if (1..=3).contains(&p.leader()) {
                led[p.leader() as usize] += 1;
            }
        }
        (1..=3)
            .max_by_key(|&n| led[n as usize])
            .ok_or_else(|| "no leader".to_string())
    }

    /// Deletes topics, and waits until the broker no longer lists them.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<(), String> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .map_err(|e| e.to_string())?;
        for result in admin
            .delete_topics(names, &AdminOptions::new())
            .await
            .map_err(|e| e.to_string())?
        {
            result.map_err(|(topic, e)| format!("deleting {topic}: {e}"))?;
        }
        for _ in 0..100 {
            let metadata = admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            if !metadata.topics().iter().any(|t| names.contains(&t.name())) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("{names:?} still listed 20 s after their deletion"))
    }

    /// Creates topics: name, partitions, compacted.
    pub async fn create_topics(&self, names: &[(&str, i32, bool)]) -> Result<(), String> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .map_err(|e| e.to_string())?;
        let replication = self.replication();
        let new: Vec<NewTopic> = names
            .iter()
            .map(|(name, p, compact)| {
                let topic = NewTopic::new(name, *p, TopicReplication::Fixed(replication));
                if *compact {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        for result in admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .map_err(|e| e.to_string())?
        {
            result.map_err(|(topic, e)| format!("creating {topic}: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let stop: &[&str] = if self.cluster {
            &["cluster", "stop"]
        } else {
            &["stop"]
        };
        let _ = self.run(stop);
    }
}

/// Runs `scripts/broker.sh` with `args`; its output, or why it failed.
fn script(root: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/broker.sh"))
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("broker.sh {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("broker.sh {args:?} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One herald process.
pub struct Herald {
    pub name: String,
    pub admin: SocketAddr,
    child: Child,
    /// How it was started, to start it again.
    command: (PathBuf, PathBuf, PathBuf),
    /// Stopped by the suite (kill -9, SIGTERM), not on its own.
    stopped: bool,
}

impl Herald {
    /// Starts `herald run` with `config`, its log in `log`.
    pub fn spawn(
        bin: &Path,
        name: &str,
        config: &Path,
        admin: SocketAddr,
        log: &Path,
    ) -> Result<Herald, String> {
        let log_path = log;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("HERALD_FAULTS_FCM_TOKEN", super::FCM_TOKEN)
            .env("HERALD_FAULTS_TWILIO_SID", super::TWILIO_SID)
            .env("HERALD_FAULTS_TWILIO_TOKEN", super::TWILIO_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        Ok(Herald {
            name: name.to_string(),
            admin,
            child,
            command: (
                bin.to_path_buf(),
                config.to_path_buf(),
                log_path.to_path_buf(),
            ),
            stopped: false,
        })
    }

    /// What a supervisor does (systemd's `Restart=on-failure`, a Kubernetes
    /// pod's restart): a process that exited on its own is started again, with
    /// the same config. Its exit code when it did.
    pub fn restart_if_exited(&mut self) -> Result<Option<i32>, String> {
        if self.stopped {
            return Ok(None);
        }
        let Ok(Some(status)) = self.child.try_wait() else {
            return Ok(None);
        };
        let (bin, config, log) = self.command.clone();
        *self = Herald::spawn(&bin, &self.name, &config, self.admin, &log)?;
        Ok(Some(status.code().unwrap_or(-1)))
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        self.stopped = true;
        let _ = self.child.start_kill();
    }

    /// SIGTERM: the orchestrator's polite stop.
    pub fn sigterm(&mut self) {
        self.stopped = true;
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Waits up to `limit` for the process to exit; its exit code (-1: by a signal).
    pub async fn exited(&mut self, limit: Duration) -> Option<i32> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => Some(status.code().unwrap_or(-1)),
            _ => None,
        }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.command.2).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `/readyz`: status and body (0 when it does not answer).
    pub async fn readyz(&self, http: &reqwest::Client) -> (u16, String) {
        match http
            .get(format!("http://{}/readyz", self.admin))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Waits until `/readyz` answers 200, up to `limit`; how long it took.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        limit: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if !self.alive() {
                return Err(format!("{} exited while starting", self.name));
            }
            if self.readyz(http).await.0 == 200 {
                return Ok(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{} not ready within {limit:?}", self.name))
    }
}

/// A loopback address with a port nothing listens on now.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}
