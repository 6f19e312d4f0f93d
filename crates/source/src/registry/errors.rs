//! Turning `oci-client` errors into [`SourceError`]s that say what was missing, who refused, or
//! which registry could not be reached.

use oci_client::errors::{OciDistributionError, OciErrorCode};

use super::Registry;
use crate::digest::Digest;
use crate::error::SourceError;
use crate::reference::ImageRef;

/// What a failed registry call was after.
#[derive(Clone)]
pub(super) enum Target<'a> {
    /// The token exchange / first contact.
    Auth,
    /// A tag of the user's reference.
    Tag(&'a ImageRef, String),
    /// A manifest digest of the user's reference.
    Manifest(&'a ImageRef, Digest),
    /// A manifest reached through an image index.
    ChildManifest(Digest),
}

/// `error: cause: cause…`, so that "connection refused" deep in the chain is visible.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() > 300 {
        let cut: String = text.chars().take(300).collect();
        format!("{cut}…")
    } else {
        text.to_owned()
    }
}

impl Registry {
    pub(super) fn classify(&self, e: OciDistributionError, target: Target<'_>) -> SourceError {
        use OciDistributionError as E;
        let registry = self.registry.clone();
        let auth = |detail: String| SourceError::Auth { registry: registry.clone(), detail: shorten(&detail) };
        let not_found = |target: Target<'_>| match target {
            Target::Tag(reference, tag) => {
                SourceError::TagNotFound { reference: reference.to_string(), registry: registry.clone(), tag }
            }
            Target::Manifest(reference, digest) => SourceError::ManifestNotFound {
                reference: reference.to_string(),
                registry: registry.clone(),
                digest: digest.to_string(),
            },
            Target::ChildManifest(digest) => SourceError::ManifestNotFound {
                reference: format!("{}/{}", self.registry, self.repository),
                registry: registry.clone(),
                digest: digest.to_string(),
            },
            Target::Auth => SourceError::Registry {
                registry: registry.clone(),
                what: "the /v2/ endpoint".into(),
                detail: "not found (is this an OCI registry?)".into(),
            },
        };
        let what = match &target {
            Target::Auth => "authentication".to_owned(),
            Target::Tag(_, tag) => format!("manifest {tag}"),
            Target::Manifest(_, d) | Target::ChildManifest(d) => format!("manifest {d}"),
        };
        match &e {
            E::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                    auth(envelope.to_string())
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    not_found(target)
                } else {
                    SourceError::Registry { registry, what, detail: shorten(&envelope.to_string()) }
                }
            }
            E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => not_found(target),
            E::ServerError { code: 401 | 403, message, .. } => auth(message.clone()),
            E::UnauthorizedError { .. } => auth("the registry answered 401 Unauthorized".into()),
            E::AuthenticationFailure(reason) => auth(reason.clone()),
            E::RequestError(r) if r.is_connect() || r.is_timeout() => {
                SourceError::Connect { registry, detail: error_chain(&e) }
            }
            E::DigestError(_) => SourceError::Registry { registry, what, detail: error_chain(&e) },
            _ => SourceError::Registry { registry, what, detail: shorten(&error_chain(&e)) },
        }
    }
}
