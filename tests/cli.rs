//! The commands the README shows that other tests do not run: `herald standin`,
//! and the sample config files.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn standin_command_serves_fcm_and_twilio_with_credentials_from_the_environment() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["standin", "--listen", "127.0.0.1:0"])
        .env("HERALD_FCM_ACCESS_TOKEN", "tok")
        .env("TWILIO_ACCOUNT_SID", "AC9")
        .env("TWILIO_AUTH_TOKEN", "sec")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first.rsplit(' ').next().unwrap().to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{first}");
    let http = reqwest::Client::new();
    let body = serde_json::json!({"message": {"token": "t-1", "notification": {"body": "hello"}, "data": {"rule": "r"}}});
    let url = format!("{base}/v1/projects/p/messages:send");
    assert_eq!(
        http.post(&url)
            .bearer_auth("nope")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.post(&url)
            .bearer_auth("tok")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let sms = http
        .post(format!("{base}/2010-04-01/Accounts/AC9/Messages.json"))
        .basic_auth("AC9", Some("sec"))
        .form(&[
            ("To", "+14155552671"),
            ("From", "+15005550006"),
            ("Body", "hi"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(sms.status(), 201);
    let printed = lines.next().unwrap().unwrap();
    assert!(
        printed.starts_with("fcm r token:") && printed.ends_with(": hello"),
        "{printed}"
    );
    assert!(!printed.contains("t-1"), "the token is masked: {printed}");
    let printed = lines.next().unwrap().unwrap();
    assert_eq!(printed, "twilio - +141******71: hi");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sample_config_files_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for var in [
        "HERALD_FCM_ACCESS_TOKEN",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
    ] {
        std::env::set_var(var, "x");
    }
    for file in [
        "config/herald.toml",
        "config/console.toml",
        "config/docker.toml",
    ] {
        let config = herald::config::Config::load(&root.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!config.channels.is_empty(), "{file} has channels");
    }
}
