//! OAuth 2.0 access tokens for FCM from a Google service-account key: a JWT
//! signed with the key (RS256) is exchanged at the key's `token_uri` for a
//! bearer token, which is cached and replaced before it expires.
//!
//! The exchange is Google's documented "JWT bearer" grant (RFC 7523): one
//! form POST. The signing is `jsonwebtoken`'s; the key's `token_uri` is
//! honoured, so tests (and private deployments) can point it elsewhere. The
//! key never appears in a log line, an error or an outcome.

use std::path::Path;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::deliver::SendError;

/// The scope FCM HTTP v1 needs.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// How long before its expiry a token is replaced.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// The fields herald reads from a service-account key file.
#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

/// The claims of the signed assertion.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct Granted {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A token and when to replace it.
struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// Mints and caches FCM access tokens for one service account.
pub struct ServiceAccount {
    client_email: String,
    token_uri: String,
    key_id: Option<String>,
    key: jsonwebtoken::EncodingKey,
    http: reqwest::Client,
    timeout: Duration,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl ServiceAccount {
    /// Reads a key file (the JSON Google's console downloads). Errors name the
    /// file and what is wrong with it, never the key.
    pub fn from_file(
        path: &Path,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<ServiceAccount, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("service-account key {shown}: {e}"))?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| {
            format!("service-account key {shown}: not a Google service-account key file ({e})")
        })?;
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(file.private_key.as_bytes()).map_err(|_| {
                format!("service-account key {shown}: `private_key` is not an RSA key in PEM")
            })?;
        if !(file.token_uri.starts_with("https://") || file.token_uri.starts_with("http://")) {
            return Err(format!(
                "service-account key {shown}: `token_uri` must be a URL, e.g. `https://oauth2.googleapis.com/token`"
            ));
        }
        Ok(ServiceAccount {
            client_email: file.client_email,
            token_uri: file.token_uri,
            key_id: file.private_key_id,
            key,
            http,
            timeout,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a new one when it is due.
    /// Concurrent callers share one exchange.
    pub async fn token(&self) -> Result<SecretString, SendError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.mint().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets the cached token (FCM refused it): the next send mints anew.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn mint(&self) -> Result<Cached, SendError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid.clone_from(&self.key_id);
        let assertion =
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| SendError::Auth {
                detail: format!("cannot sign the token request: {e}"),
            })?;
        let asked = Instant::now();
        let response = self
            .http
            .post(&self.token_uri)
            .timeout(self.timeout)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(crate::deliver::transport)?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let error = body["error"].as_str().unwrap_or("error");
            let detail = format!(
                "token endpoint {}: {error}{}",
                status.as_u16(),
                body["error_description"]
                    .as_str()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            );
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                crate::deliver::classify(status, &headers, detail)
            } else {
                SendError::Auth { detail }
            });
        }
        let granted: Granted = response.json().await.map_err(|_| SendError::Auth {
            detail: "token endpoint answered without an access_token".into(),
        })?;
        let lifetime = Duration::from_secs(granted.expires_in.unwrap_or(3600));
        let ahead = REFRESH_AHEAD.min(lifetime / 2);
        Ok(Cached {
            token: SecretString::from(granted.access_token),
            refresh_at: asked + lifetime - ahead,
        })
    }
}

/// How an FCM channel authenticates.
pub enum FcmAuth {
    /// An access token from the environment, refreshed by the platform.
    Static(SecretString),
    /// Tokens minted from a service-account key.
    ServiceAccount(ServiceAccount),
}

impl FcmAuth {
    /// The bearer token for the next request.
    pub async fn bearer(&self) -> Result<SecretString, SendError> {
        match self {
            FcmAuth::Static(t) => Ok(t.clone()),
            FcmAuth::ServiceAccount(sa) => sa.token().await,
        }
    }

    /// FCM answered 401 to `bearer`: a minted token is dropped so the retry
    /// gets a new one. Returns whether a retry can help.
    pub async fn refused(&self) -> bool {
        match self {
            FcmAuth::Static(_) => false,
            FcmAuth::ServiceAccount(sa) => {
                sa.invalidate().await;
                true
            }
        }
    }
}

impl std::fmt::Debug for FcmAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FcmAuth::Static(_) => f.write_str("FcmAuth::Static(..)"),
            FcmAuth::ServiceAccount(sa) => {
                write!(f, "FcmAuth::ServiceAccount({})", sa.client_email)
            }
        }
    }
}
