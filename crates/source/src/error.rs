//! The one error type of this crate, [`SourceError`].
//!
//! Messages name the registry, reference, digest or path involved and, where the user can fix the
//! problem, end with the fix. They never contain credentials: registry answers are quoted, request
//! headers and config file contents are not.

use std::path::PathBuf;

/// Everything that can go wrong while resolving an image or reading its blobs.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The image reference does not parse.
    #[error(
        "invalid image reference {input:?}: {reason} (expected [REGISTRY/]REPO[:TAG][@sha256:DIGEST] or oci:DIR[:TAG])"
    )]
    InvalidReference {
        /// What the user typed.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The platform string does not parse.
    #[error("invalid platform {input:?}: {reason} (expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8)")]
    InvalidPlatform {
        /// What the user typed.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {input:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest {
        /// The rejected text.
        input: String,
    },

    /// The registry does not know the tag (or the repository).
    #[error("image {reference} not found in {registry}: tag {tag} does not exist")]
    TagNotFound {
        /// The image reference as given.
        reference: String,
        /// Registry host.
        registry: String,
        /// The missing tag.
        tag: String,
    },

    /// The registry does not know a manifest asked for by digest.
    #[error("image {reference} not found in {registry}: manifest {digest} does not exist")]
    ManifestNotFound {
        /// The image reference as given.
        reference: String,
        /// Registry host.
        registry: String,
        /// The missing manifest digest.
        digest: String,
    },

    /// A blob is missing from the registry or the layout.
    #[error("blob {digest} not found in {location}")]
    BlobNotFound {
        /// The blob digest.
        digest: String,
        /// Registry/repository or layout directory.
        location: String,
    },

    /// The registry refused our credentials, or we had none and it wants some.
    #[error("authentication to {registry} failed (check `docker login {registry}` or DOCKER_CONFIG): {detail}")]
    Auth {
        /// Registry host.
        registry: String,
        /// What the registry answered (never our credentials).
        detail: String,
    },

    /// No TCP/TLS connection to the registry could be made.
    #[error("cannot connect to registry {registry}: {detail} ({})", connect_hint(registry, detail))]
    Connect {
        /// Registry host.
        registry: String,
        /// The transport error.
        detail: String,
    },

    /// Any other answer of the registry we cannot use.
    #[error("registry {registry} failed on {what}: {detail}")]
    Registry {
        /// Registry host.
        registry: String,
        /// The operation, e.g. "manifest latest" or "blob sha256:…".
        what: String,
        /// What the registry answered.
        detail: String,
    },

    /// A blob transfer broke off or its bytes did not match what was asked for.
    #[error("reading blob {digest} from {location} failed: {detail}")]
    Transfer {
        /// The blob digest.
        digest: String,
        /// Registry/repository or layout directory.
        location: String,
        /// What went wrong.
        detail: String,
    },

    /// A manifest, index, config or layer has a media type clip cannot use.
    #[error("unsupported media type {media_type} for {what} {digest} (clip indexes container images with tar, tar+gzip or tar+zstd layers)")]
    UnsupportedMediaType {
        /// The media type.
        media_type: String,
        /// "layer", "config", "manifest".
        what: &'static str,
        /// The digest of the object.
        digest: String,
    },

    /// No manifest in an image index matches the requested platform.
    #[error(
        "image {reference} has no manifest for platform {wanted}; available: {available} (choose one with --platform)"
    )]
    PlatformNotFound {
        /// The image reference.
        reference: String,
        /// The requested platform.
        wanted: String,
        /// The platforms that exist, comma separated.
        available: String,
    },

    /// A manifest, index or config does not parse or contradicts itself.
    #[error("invalid {what} {digest} of {reference}: {reason}")]
    InvalidManifest {
        /// "manifest", "image index", "image config", "index.json".
        what: &'static str,
        /// Its digest (or path for index.json).
        digest: String,
        /// The image reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },

    /// A manifest or config is larger than we are willing to hold in memory.
    #[error("{what} {digest} is {size} bytes, more than the {limit} bytes clip accepts")]
    TooLarge {
        /// "manifest", "image config", "index.json".
        what: &'static str,
        /// Its digest or path.
        digest: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// An answer clip reads into memory (manifest, token, referrers, artifact) is larger than it accepts.
    #[error("{what}: the answer from {url} is larger than the {limit} bytes clip accepts (is this an OCI registry?)")]
    AnswerTooLarge {
        /// What was asked for.
        what: String,
        /// Where from, without its query.
        url: String,
        /// The cap.
        limit: u64,
    },

    /// Small metadata (manifest or config) whose bytes do not hash to their digest.
    #[error("{what} from {location} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// "manifest", "image config".
        what: &'static str,
        /// Registry/repository or layout directory.
        location: String,
        /// The digest we asked for.
        expected: String,
        /// The digest of the bytes we got.
        actual: String,
    },

    /// A byte range does not fit in the blob.
    #[error("range {start}..{end} is outside blob {digest} of {size} bytes")]
    InvalidRange {
        /// The blob digest.
        digest: String,
        /// Range start.
        start: u64,
        /// Range end (exclusive).
        end: u64,
        /// Blob size from its descriptor.
        size: u64,
    },

    /// The OCI layout has no image with the requested tag.
    #[error("OCI layout {dir} has no image tagged {tag:?}; tags present: {available}", dir = .dir.display())]
    LayoutTagNotFound {
        /// The layout directory.
        dir: PathBuf,
        /// The requested tag.
        tag: String,
        /// Tags in index.json, comma separated.
        available: String,
    },

    /// The OCI layout holds several images and no tag was given.
    #[error("OCI layout {dir} holds {count} images and none is tagged \"latest\"; name one as oci:{dir}:TAG (tags present: {available})", dir = .dir.display())]
    LayoutAmbiguous {
        /// The layout directory.
        dir: PathBuf,
        /// Number of manifests in index.json.
        count: usize,
        /// Tags in index.json, comma separated.
        available: String,
    },

    /// A local file (layout blob, index.json, docker config) could not be read.
    #[error("reading {path}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The docker config file is malformed.
    #[error("docker config {path}: {reason} (fix the file or point DOCKER_CONFIG elsewhere)", path = .path.display())]
    DockerConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong (never a credential).
        reason: String,
    },

    /// A docker credential helper could not be run or answered nonsense.
    #[error("credential helper docker-credential-{helper} failed for {registry}: {reason}")]
    CredentialHelper {
        /// Helper name (the part after `docker-credential-`).
        helper: String,
        /// Registry host.
        registry: String,
        /// What went wrong (never a credential).
        reason: String,
    },
}

/// What to check when no connection to `registry` could be made, from what the transport said.
fn connect_hint(registry: &str, detail: &str) -> String {
    let detail = detail.to_ascii_lowercase();
    if detail.contains("connection refused") {
        format!("is the registry running at {registry}?")
    } else if ["tls", "certificate", "corrupt message", "handshake"].iter().any(|w| detail.contains(w)) {
        if crate::is_local_registry(registry) {
            format!("does {registry} serve HTTP? clip talks plain HTTP to localhost and 127.0.0.0/8")
        } else {
            format!("does {registry} serve HTTPS? a registry without TLS needs --plain-http")
        }
    } else if detail.contains("dns") || detail.contains("lookup") {
        format!("is the host name {registry} right?")
    } else {
        format!("is the registry running and reachable at {registry}?")
    }
}

impl SourceError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SourceError::Io { path: path.into(), source }
    }
}

/// An error and its causes as one line, `error: cause: cause…` (a cause whose text is already there is
/// left out), so that "connection refused" deep in the chain is visible where only text can go.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

#[cfg(test)]
mod tests {
    use super::connect_hint;

    #[test]
    fn the_connect_hint_fits_the_failure() {
        let refused = "tcp connect error: Connection refused (os error 111)";
        assert_eq!(connect_hint("127.0.0.1:1", refused), "is the registry running at 127.0.0.1:1?");
        let tls = "client error (Connect): received corrupt message of type InvalidContentType";
        assert!(connect_hint("registry.example:5000", tls).contains("--plain-http"));
        assert!(!connect_hint("localhost:5000", tls).contains("--plain-http"));
        assert!(connect_hint("nohost.invalid", "dns error: failed to lookup address").contains("host name"));
    }
}
