//! Registry authentication: the credentials a user has ([`RegistryAuth`], from Docker's config), the
//! credentials requests carry ([`RequestAuth`]: basic, or a bearer token from the registry's token
//! service) and the token exchange itself (the `WWW-Authenticate` challenge of `GET /v2/`, then a
//! `GET realm?service=…&scope=repository:REPO:pull[,push]`).
//!
//! Every answer read here is capped ([`MAX_TOKEN_BYTES`]): a token service that sends an endless
//! body fails the exchange with an error naming it, instead of growing memory.

use std::fmt;

use futures::future::BoxFuture;
use futures::FutureExt;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{RequestBuilder, StatusCode};
use serde::Deserialize;
use tracing::debug;

use super::request::{read_capped, Target};
use super::Registry;
use crate::error::SourceError;
use crate::retry::{Failed, Tries};

/// Largest token-service answer clip reads.
pub const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// Credentials for a registry, as found in Docker's config ([`super::registry_auth`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    /// No credentials.
    #[default]
    Anonymous,
    /// A user name and password (or personal access token).
    Basic(String, String),
    /// A registry token to send as is (`registrytoken` in Docker's config).
    Bearer(String),
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegistryAuth::Anonymous => "anonymous",
            RegistryAuth::Basic(..) => "basic (redacted)",
            RegistryAuth::Bearer(_) => "bearer token (redacted)",
        })
    }
}

/// What a connection may do: the scope asked of the token service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read manifests and blobs.
    Pull,
    /// Read, and push blobs, manifests and tags.
    Push,
}

impl Access {
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

/// The credentials requests carry. `Debug` never shows a secret.
#[derive(Clone, Default)]
pub(super) enum RequestAuth {
    #[default]
    Anonymous,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

impl fmt::Debug for RequestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestAuth::Anonymous => "anonymous",
            RequestAuth::Basic { .. } => "basic (redacted)",
            RequestAuth::Bearer(_) => "bearer token (redacted)",
        })
    }
}

impl RequestAuth {
    /// Adds the `Authorization` header (marked sensitive: kept out of reqwest's debug output and
    /// dropped on redirects to other hosts).
    pub(super) fn apply(&self, request: RequestBuilder) -> RequestBuilder {
        match self {
            RequestAuth::Anonymous => request,
            RequestAuth::Basic { user, password } => request.basic_auth(user, Some(password)),
            RequestAuth::Bearer(token) => request.bearer_auth(token),
        }
    }

    fn from_user(auth: &RegistryAuth) -> RequestAuth {
        match auth {
            RegistryAuth::Anonymous => RequestAuth::Anonymous,
            RegistryAuth::Basic(user, password) => {
                RequestAuth::Basic { user: user.clone(), password: password.clone() }
            }
            RegistryAuth::Bearer(token) => RequestAuth::Bearer(token.clone()),
        }
    }
}

/// The current request credentials and their generation, bumped by every refresh so that many readers
/// hitting one expired token refresh it once.
#[derive(Default)]
pub(super) struct AuthState {
    current: std::sync::Mutex<(u64, RequestAuth)>,
    refresh: tokio::sync::Mutex<()>,
}

impl AuthState {
    pub(super) fn generation(&self) -> u64 {
        self.get().0
    }

    pub(super) fn get(&self) -> (u64, RequestAuth) {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, auth: RequestAuth) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = (current.0 + 1, auth);
    }
}

/// A `WWW-Authenticate: Bearer realm="…",service="…"` challenge.
#[derive(Debug, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

/// Parses a `WWW-Authenticate` value; `None` unless it is a Bearer challenge with a realm.
fn parse_bearer(value: &str) -> Option<BearerChallenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service) = (None, None);
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (quoted[..end].to_owned(), &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        match key.as_str() {
            "realm" => realm = Some(val),
            "service" => service = Some(val),
            _ => {}
        }
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some(BearerChallenge { realm: realm?, service })
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
}

impl Registry {
    /// Authenticates for this connection's access: asks `GET /v2/` for a challenge; a Bearer challenge
    /// is answered with a token from its realm (with the user's basic credentials, if any), a Basic one
    /// (or none) with the user's credentials as they are. The result becomes the credentials of every
    /// later request.
    pub(super) async fn authenticate(&self) -> Result<(), SourceError> {
        let auth = match &self.auth {
            // A registry token is used as is.
            RegistryAuth::Bearer(token) => RequestAuth::Bearer(token.clone()),
            user => match self.challenge().await? {
                Some(challenge) => RequestAuth::Bearer(self.fetch_token(&challenge).await?),
                None => RequestAuth::from_user(user),
            },
        };
        debug!(registry = %self.registry, auth = ?auth, "authenticated");
        self.auth_state.set(auth);
        self.answered();
        Ok(())
    }

    /// The credentials requests carry now and their generation; the first call (or whichever comes first,
    /// with [`crate::RegistrySource::connect_lazily`]'s background check) authenticates, the others wait.
    pub(super) async fn authenticated(&self) -> Result<(u64, RequestAuth), SourceError> {
        let current = self.auth_state.get();
        if current.0 > 0 {
            return Ok(current);
        }
        let _one_at_a_time = self.auth_state.refresh.lock().await;
        if self.auth_state.generation() == 0 {
            self.authenticate().await?;
        }
        Ok(self.auth_state.get())
    }

    /// Authenticates again after a 401 to a request made with credentials of `generation`, unless
    /// another request has done so meanwhile.
    /// Boxed: authenticating runs under the retry loop that calls this.
    pub(super) fn reauthenticate(&self, generation: u64) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            debug!(registry = %self.registry, "registry answered 401 Unauthorized; authenticating");
            self.authenticate_after(generation).await
        }
        .boxed()
    }

    /// Makes the user's credentials, as they are, the ones requests carry, before any round trip; returns
    /// their generation. An open registry, or one that takes them as they are, needs nothing else; one that
    /// wants a token answers 401, which authenticates ([`Self::reauthenticate`]).
    pub(super) fn assume_user_credentials(&self) -> u64 {
        self.auth_state.set(RequestAuth::from_user(&self.auth));
        self.auth_state.generation()
    }

    /// Authenticates, unless credentials newer than `generation` have been set meanwhile.
    pub(super) async fn authenticate_after(&self, generation: u64) -> Result<(), SourceError> {
        let _one_at_a_time = self.auth_state.refresh.lock().await;
        if self.auth_state.generation() != generation {
            return Ok(());
        }
        self.authenticate().await
    }

    /// The Bearer challenge of `GET /v2/`, if the registry sends one (`None`: open, or Basic).
    async fn challenge(&self) -> Result<Option<BearerChallenge>, SourceError> {
        let url = format!("{}://{}/v2/", self.scheme, self.host);
        let mut tries = Tries::default();
        loop {
            let failed = match self.http.get(&url).send().await {
                Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                    let challenge = response
                        .headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .find_map(parse_bearer);
                    return Ok(challenge);
                }
                // 200 (open registry), or an answer that is not about auth: later requests tell.
                Ok(response) if !response.status().is_server_error() && response.status() != 429 => {
                    return Ok(None);
                }
                Ok(response) => self.status_failed(response, &Target::Auth).await,
                Err(e) => self.send_failed(e, &Target::Auth),
            };
            self.before_retry(&Target::Auth, failed, &mut tries, None).await?;
        }
    }

    /// A token from the challenge's realm for this repository and access.
    async fn fetch_token(&self, challenge: &BearerChallenge) -> Result<String, SourceError> {
        let scope = format!("repository:{}:{}", self.repository, self.access.actions());
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = &challenge.service {
            query.push(("service", service.as_str()));
        }
        let target = Target::Token(&challenge.realm);
        let mut tries = Tries::default();
        loop {
            let attempt = async {
                let request = RequestAuth::from_user(&self.auth).apply(self.http.get(&challenge.realm).query(&query));
                let response = match request.send().await {
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                        // Wrong credentials: asking again cannot help.
                        let mut f = self.status_failed(r, &target).await;
                        f.verdict = crate::retry::Verdict::Fail;
                        return Err(f);
                    }
                    Ok(r) => return Err(self.status_failed(r, &target).await),
                    Err(e) => return Err(self.send_failed(e, &target)),
                };
                let body = read_capped(response, MAX_TOKEN_BYTES, &target, self).await?;
                let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
                    Failed::fail(self.registry_error(&target, format!("the token service answered no JSON token: {e}")))
                })?;
                answer.token.or(answer.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
                    Failed::fail(self.registry_error(&target, "the token service answered no token".into()))
                })
            };
            match attempt.await {
                Ok(token) => return Ok(token),
                Err(f) => self.before_retry(&target, f, &mut tries, None).await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges() {
        assert_eq!(
            parse_bearer(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#
            ),
            Some(BearerChallenge {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            parse_bearer("bearer realm=http://h/t, service=s"),
            Some(BearerChallenge { realm: "http://h/t".into(), service: Some("s".into()) })
        );
        assert_eq!(parse_bearer(r#"Basic realm="Registry Realm""#), None);
        assert_eq!(parse_bearer(r#"Bearer service="s""#), None, "no realm");
        assert_eq!(parse_bearer(r#"Bearer realm="unterminated"#), None);
        assert_eq!(parse_bearer(""), None);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let text = format!(
            "{:?} {:?}",
            RegistryAuth::Basic("u".into(), "hunter2".into()),
            RequestAuth::Bearer("s3cr3t".into())
        );
        assert!(!text.contains("hunter2") && !text.contains("s3cr3t"), "{text}");
    }
}
