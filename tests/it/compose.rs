//! docker-compose.yml cannot run here (no Docker engine), so this checks what
//! can go wrong without running it: it parses, and every service, port, file
//! and topic it names exists and agrees with the config it mounts.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_saphyr::from_str(&text).expect("docker-compose.yml is valid YAML")
}

#[test]
fn services_files_and_ports_exist_and_agree() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["herald", "kafka", "prometheus", "standin", "topics"])
    );

    for (name, s) in services {
        assert!(
            s.get("image").is_some() || s.get("build").is_some(),
            "{name} has an image or a build"
        );
        let context = s.get("build").and_then(|b| {
            b.as_str()
                .or_else(|| b.get("context").and_then(Value::as_str))
        });
        if let Some(build) = context {
            assert!(
                root().join(build).join("Dockerfile").is_file(),
                "{name}: Dockerfile in {build}"
            );
        }
        for dep in s
            .get("depends_on")
            .and_then(Value::as_object)
            .map(|d| d.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            assert!(
                names.contains(dep.as_str()),
                "{name} depends on unknown service {dep}"
            );
        }
        for v in s
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            assert!(root().join(host).exists(), "{name}: mounted {host} exists");
        }
    }

    // Every file the Dockerfile copies is in the repository.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root().join(src).exists(), "Dockerfile copies {src}");
        }
    }

    // herald's mounted config parses and agrees with the compose file.
    let text = std::fs::read_to_string(root().join("config/docker.toml")).unwrap();
    let config = herald::config::Config::parse(&text).expect("config/docker.toml parses");
    let herald = &services["herald"];
    let admin_port = config.admin.listen.port().to_string();
    let ports: Vec<&str> = herald["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        ports.iter().any(|p| p.ends_with(&format!(":{admin_port}"))),
        "admin port {admin_port} published"
    );
    assert!(herald["volumes"].as_array().unwrap().iter().any(|v| v
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}:ro", config.rules.dir.display()))));
    assert_eq!(config.kafka.bootstrap_servers, "kafka:9092");
    for channel in config.channels.values() {
        use herald::config::ChannelConfig;
        let (base, vars): (&str, Vec<&str>) = match channel {
            ChannelConfig::Fcm(c) => (
                &c.base_url,
                c.token_env.iter().map(|v| v.as_str()).collect(),
            ),
            ChannelConfig::Twilio(c) => (&c.base_url, vec![&c.account_sid_env, &c.auth_token_env]),
            other => panic!("the compose file's config has a {} channel", other.kind()),
        };
        assert!(base.starts_with("http://standin:"), "{base}");
        let port = base.rsplit(':').next().unwrap();
        let standin_cmd = services["standin"]["command"].as_array().unwrap();
        assert!(
            standin_cmd
                .iter()
                .any(|a| a.as_str().unwrap().ends_with(&format!(":{port}"))),
            "stand-in listens on {port}"
        );
        for var in vars {
            assert!(
                herald["environment"].get(var).is_some(),
                "herald gets {var}"
            );
        }
    }

    // Every topic herald reads or writes is created by the one-shot step.
    let script = services["topics"]["command"][0].as_str().unwrap();
    let mut wanted: Vec<String> = config.sources.keys().cloned().collect();
    wanted.extend([
        config.topics.profiles.clone(),
        config.topics.outcomes.clone(),
        config.topics.dead_letter.clone(),
        config.topics.feedback.clone(),
        config.topics.consent.clone(),
        config.topics.replies.clone(),
        config.topics.held.clone(),
    ]);
    for topic in wanted {
        assert!(script.contains(&topic), "topic {topic} is created");
    }
    assert!(script.contains("--topic profiles --partitions 1 --config cleanup.policy=compact"));
    assert!(
        script.contains("--topic herald.consent --partitions 1 --config cleanup.policy=compact")
    );

    // Prometheus scrapes herald's admin port.
    let prom = std::fs::read_to_string(root().join("config/prometheus.yml")).unwrap();
    assert!(prom.contains(&format!("herald:{admin_port}")));
}

#[test]
fn rules_mounted_into_compose_pass_the_check() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["rules", "check", "rules", "--config", "config/docker.toml"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
