//! Prefetch profiles: the order in which a container's startup first read the image's spans.
//!
//! A profile also carries resume points (`"resume"`): for a gzip span whose reads began far into it, a
//! place near there to start decoding, with the digests of the span's leaves, so a later cold start fetches
//! the span from near where its reads begin, not from its start (see `clip_store`'s resume points; what
//! they give is checked against the index's tree root, so a profile from anywhere cannot change a byte
//! served). They are found when a recording ends, by fetching each such span once more.
//!
//! A [`ProfileRecorder`] watches a mount's reads (it is a [`clip_fs::ReadObserver`]), maps each one to the
//! spans it covers and keeps every span once, in first-touch order, with how far into it the reads
//! reached. [`Profile`] is the small JSON file it writes (`{"manifest_digest": ..., "spans": [[layer,
//! span, upto], ...]}`, span = index into the index's span table, upto = decoded bytes of it read from its
//! start; `[layer, span]`, as older profiles have it, means all of it); a later mount of the same index on
//! a cold node hands those spans to [`clip_store::ContentStore::prefetch_spans`] so they load in order,
//! each only as far as the recorded start read it, while the container starts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clip_format::{Archive, DataRef, Digest, LayerIndex, SpanId};
use clip_store::{ContentStore, Need, Resume, ResumePoint};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use clip_image::{fetch_artifact_layer, push_artifact, Artifact, ImageError, PublishedIndex};

use crate::prefetch::SpanNeeds;
use crate::NodeError;
use clip_source::SourceOptions;

/// `artifactType` of a profile published next to its image.
pub const PROFILE_ARTIFACT_TYPE: &str = "application/vnd.clip.profile.v1";
/// Media type of the layer holding the profile's JSON.
pub const PROFILE_LAYER_MEDIA_TYPE: &str = "application/vnd.clip.profile.v1+json";

/// Spans fetched at once while finding resume points.
const RESUME_SEARCHES: usize = 4;
/// How long finding resume points may take in all; spans not done by then get none.
const RESUME_SEARCH_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest profile file read.
const MAX_PROFILE_BYTES: u64 = 64 << 20;

/// A recorded startup profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The image manifest the index was built from (`None` for an archive of a directory).
    pub manifest_digest: Option<Digest>,
    /// The spans read, in the order they were first read, each once.
    pub spans: Vec<ProfileSpan>,
    /// Resume points of spans whose reads began far into them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resume: Vec<ProfileResume>,
}

/// A resume point as a profile stores it (see [`clip_store::Resume`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileResume {
    pub layer: LayerIndex,
    pub span: SpanId,
    /// Where decoding starts: the layer's decoded offset, compressed offset and bits before it.
    pub out: u64,
    #[serde(rename = "in")]
    pub in_offset: u64,
    pub bits: u8,
    /// Where the compressed bytes to decode end, and the decoded offset they reach.
    pub in_end: u64,
    pub out_end: u64,
    /// The window decoding needs, zstd-compressed, in base64.
    pub window: String,
    /// The digests of the span's leaves, in hex, one after the other.
    pub leaves: String,
}

impl ProfileResume {
    fn of(r: &Resume) -> Result<ProfileResume, clip_format::FormatError> {
        use base64::Engine as _;
        let p = &r.point;
        Ok(ProfileResume {
            layer: r.layer,
            span: r.span,
            out: p.out_offset,
            in_offset: p.in_offset,
            bits: p.bits,
            in_end: p.in_end,
            out_end: r.out_end,
            window: base64::engine::general_purpose::STANDARD.encode(clip_format::encode_window(&p.window)?),
            leaves: r.leaves.iter().map(hex::encode).collect(),
        })
    }

    /// The resume point, or why it cannot be read.
    fn resume(&self) -> Result<Resume, String> {
        use base64::Engine as _;
        let stored = base64::engine::general_purpose::STANDARD.decode(&self.window).map_err(|e| e.to_string())?;
        let window =
            if stored.is_empty() { Vec::new() } else { Archive::decode_window(&stored).map_err(|e| e.to_string())? };
        let raw = hex::decode(&self.leaves).map_err(|e| e.to_string())?;
        if raw.len() % 32 != 0 {
            return Err(format!("{} bytes of leaf digests", raw.len()));
        }
        let leaves = raw.chunks_exact(32).map(|d| d.try_into().unwrap_or_default()).collect();
        let point = ResumePoint {
            out_offset: self.out,
            in_offset: self.in_offset,
            bits: self.bits,
            window,
            in_end: self.in_end,
        };
        Ok(Resume { layer: self.layer, span: self.span, point, out_end: self.out_end, leaves })
    }
}

/// One span a recorded start read: `[layer, span, upto]` in the JSON (its first `upto` decoded bytes), or
/// `[layer, span]` (all of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProfileSpan {
    Upto(LayerIndex, SpanId, u64),
    Whole(LayerIndex, SpanId),
}

impl ProfileSpan {
    /// The span, with how much of it the start read.
    pub fn parts(self) -> (LayerIndex, SpanId, Need) {
        match self {
            ProfileSpan::Upto(layer, span, upto) => (layer, span, Need::Upto(upto)),
            ProfileSpan::Whole(layer, span) => (layer, span, Need::Whole),
        }
    }

    fn of(layer: LayerIndex, span: SpanId, need: Need) -> ProfileSpan {
        match need {
            Need::Upto(upto) => ProfileSpan::Upto(layer, span, upto),
            Need::Whole => ProfileSpan::Whole(layer, span),
        }
    }
}

impl Profile {
    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Profile, NodeError> {
        let bytes = read_profile_file(path)?;
        Profile::from_json(&bytes).map_err(|why| NodeError::BadProfile { path: path.into(), why })
    }

    /// Parses the JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<Profile, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Writes the profile to `path` atomically (see [`clip_image::write_atomically`]).
    pub fn save(&self, path: &Path) -> Result<(), NodeError> {
        let bytes = serde_json::to_vec(self).map_err(|e| NodeError::io(path, "encoding the profile")(e.into()))?;
        Ok(clip_image::write_atomically(path, |f| {
            std::io::Write::write_all(f, &bytes).map_err(ImageError::io(path, "writing the profile"))
        })?)
    }

    /// The spans that exist in `archive` (layer in range, span inside that layer's spans), in order, with
    /// how much of each the start read; a profile recorded on another index of the image may name others.
    pub fn valid_spans(&self, archive: &Archive) -> Vec<(LayerIndex, SpanId, Need)> {
        self.spans
            .iter()
            .map(|s| s.parts())
            .filter(|&(layer, span, _)| archive.layer_spans(layer).is_ok_and(|r| r.contains(span)))
            .collect()
    }

    /// The resume points that can be read, for spans `archive` has and can check them against (an index
    /// without tree roots, from an older clip, uses none; an unreadable one is logged); whether each fits its
    /// span is checked when it is loaded.
    pub fn resumes(&self, archive: &Archive) -> Vec<Resume> {
        let Some(table) = archive.chunk_table() else { return Vec::new() };
        let exists = |r: &ProfileResume| {
            archive.layer_spans(r.layer).is_ok_and(|s| s.contains(r.span)) && table.root(r.span).is_some()
        };
        self.resume
            .iter()
            .filter(|r| exists(r))
            .filter_map(|r| {
                r.resume()
                    .inspect_err(|why| warn!(layer = %r.layer, span = %r.span, why, "a resume point of the profile is unreadable"))
                    .ok()
            })
            .collect()
    }

    /// `Err(why)` unless the profile was recorded for the image manifest `manifest_digest`.
    fn recorded_for(&self, manifest_digest: &Digest) -> Result<(), String> {
        match self.manifest_digest {
            Some(d) if d == *manifest_digest => Ok(()),
            Some(d) => Err(format!("it was recorded for {d}")),
            None => Err("it names no image manifest".into()),
        }
    }
}

/// The bytes of the profile file at `path`: a regular file of at most [`MAX_PROFILE_BYTES`].
fn read_profile_file(path: &Path) -> Result<Vec<u8>, NodeError> {
    let file = clip_format::open_regular(path).map_err(NodeError::io(path, "reading the profile"))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_PROFILE_BYTES + 1), &mut bytes)
        .map_err(NodeError::io(path, "reading the profile"))?;
    if bytes.len() as u64 > MAX_PROFILE_BYTES {
        return Err(NodeError::BadProfile {
            path: path.into(),
            why: format!("over {MAX_PROFILE_BYTES} bytes is too big"),
        });
    }
    Ok(bytes)
}

/// Publishes the profile at `path` as an artifact (`artifactType` [`PROFILE_ARTIFACT_TYPE`]) referring to the
/// image manifest it was recorded for, in `image`'s repository, discoverable like a published index.
pub async fn publish_profile(image: &str, path: &Path, opts: &SourceOptions) -> Result<PublishedIndex, NodeError> {
    let profile = Profile::load(path)?;
    let Some(subject) = profile.manifest_digest else {
        return Err(NodeError::BadProfile {
            path: path.into(),
            why: "it names no image manifest (record it on a mount of an index built from a registry image)".into(),
        });
    };
    let bytes = read_profile_file(path)?;
    let title = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "profile.json".into());
    let artifact = Artifact { artifact_type: PROFILE_ARTIFACT_TYPE, layer_media_type: PROFILE_LAYER_MEDIA_TYPE, title };
    Ok(push_artifact(image, &subject, opts, &artifact, bytes).await?)
}

/// The profile published for the image manifest `manifest_digest` in `image`'s repository, with the digest
/// of its artifact; `Ok(None)` when there is none.
pub async fn fetch_published_profile(
    image: &str,
    manifest_digest: &Digest,
    opts: &SourceOptions,
) -> Result<Option<(Digest, Profile)>, NodeError> {
    let Some((artifact, bytes)) =
        fetch_artifact_layer(image, manifest_digest, opts, PROFILE_ARTIFACT_TYPE, MAX_PROFILE_BYTES).await?
    else {
        return Ok(None);
    };
    let bad = |why: String| ImageError::BadArtifact { image: image.to_owned(), digest: artifact.to_string(), why };
    let profile = Profile::from_json(&bytes).map_err(|e| bad(format!("not a profile: {e}")))?;
    profile.recorded_for(manifest_digest).map_err(bad)?;
    Ok(Some((artifact, profile)))
}

/// When a recording ends: `seconds` after it started, or once it holds `spans` spans (a node records the
/// first cold start of an image, not everything its containers ever read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLimits {
    pub seconds: u64,
    pub spans: usize,
}

impl Default for RecordLimits {
    fn default() -> RecordLimits {
        RecordLimits { seconds: 10, spans: 2048 }
    }
}

/// Publishes the profile at `path` to `url` of the S3 index store (`PREFIX/<digest>.profile.json`).
pub async fn publish_profile_s3(path: &Path, url: &clip_s3::S3Url, opts: &clip_s3::S3Options) -> Result<(), NodeError> {
    let bytes = read_profile_file(path)?;
    Ok(clip_s3::S3Object::open(url, opts)?.put(bytes.into()).await?)
}

/// The profile at `url` of the S3 index store, when there is one recorded for `manifest_digest`.
pub async fn fetch_profile_s3(
    url: &clip_s3::S3Url,
    opts: &clip_s3::S3Options,
    manifest_digest: &Digest,
) -> Result<Option<Profile>, NodeError> {
    let Some(bytes) = clip_s3::S3Object::open(url, opts)?.get(MAX_PROFILE_BYTES).await? else { return Ok(None) };
    let bad = |why: String| NodeError::BadProfile { path: url.to_string().into(), why };
    let profile = Profile::from_json(&bytes).map_err(bad)?;
    profile.recorded_for(manifest_digest).map_err(bad)?;
    Ok(Some(profile))
}

/// Records the spans a mount reads, first touch first.
pub struct ProfileRecorder {
    archive: Arc<Archive>,
    path: PathBuf,
    state: Mutex<Recorded>,
    /// With limits: when the recording started, and its limits.
    limits: Option<(std::time::Instant, RecordLimits)>,
}

#[derive(Default)]
struct Recorded {
    /// The spans read, first touch first, each with how much of it was read.
    spans: SpanNeeds,
    /// Where the first read of each span began (an offset into the span).
    firsts: std::collections::HashMap<SpanId, u64>,
    /// Resume points found when the recording ended.
    resume: Vec<ProfileResume>,
    /// Bumped whenever `spans` changes.
    version: u64,
    /// `version` at the last save.
    saved: Option<u64>,
}

impl ProfileRecorder {
    /// A recorder for mounts of `archive` that [`ProfileRecorder::save`]s to `path`.
    pub fn new(archive: Arc<Archive>, path: PathBuf) -> ProfileRecorder {
        ProfileRecorder { archive, path, state: Mutex::default(), limits: None }
    }

    /// Ends the recording at `limits`, counted from now: reads after that are not recorded.
    pub fn with_limits(mut self, limits: RecordLimits) -> ProfileRecorder {
        self.limits = Some((std::time::Instant::now(), limits));
        self
    }

    /// Whether the recording has reached its limits (never, without limits).
    pub fn finished(&self) -> bool {
        let Some((started, limits)) = self.limits else { return false };
        let full = self.state.lock().unwrap_or_else(|e| e.into_inner()).spans.list().len() >= limits.spans;
        full || started.elapsed().as_secs() >= limits.seconds
    }

    /// Notes the spans covering `len` bytes of the file at `data` from `offset`, and how far into each.
    pub fn record(&self, data: DataRef, offset: u64, len: u64) {
        let end = data.size.min(offset.saturating_add(len));
        if offset >= end {
            return;
        }
        if self.limits.is_some_and(|(started, limits)| started.elapsed().as_secs() >= limits.seconds) {
            return;
        }
        let max = self.limits.map_or(usize::MAX, |(_, limits)| limits.spans);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for slice in self.archive.file_spans(data, offset..end) {
            let Ok(slice) = slice else { return };
            if state.spans.list().len() >= max && !state.spans.contains(data.layer, slice.span) {
                return;
            }
            if state.spans.add(data.layer, slice.span, Need::of_slice(&slice)) {
                state.version += 1;
            }
            let first = state.firsts.entry(slice.span).or_insert(slice.within.start);
            *first = (*first).min(slice.within.start);
        }
    }

    /// What has been recorded so far.
    pub fn profile(&self) -> Profile {
        self.profile_of(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn profile_of(&self, state: &Recorded) -> Profile {
        let spans = state.spans.list().iter().map(|&(layer, span, need)| ProfileSpan::of(layer, span, need)).collect();
        Profile { manifest_digest: self.archive.meta().manifest_digest, spans, resume: state.resume.clone() }
    }

    /// Finds resume points for the recorded spans whose reads began at least [`clip_store::RESUME_MIN`]
    /// into them (fetching each such span once, through `store`), and keeps them for the next save.
    /// A span whose point cannot be found (or not within [`RESUME_SEARCH_TIME`] of the start) is left
    /// without one (logged at debug).
    pub async fn find_resume_points(&self, store: &ContentStore) -> usize {
        use futures::StreamExt as _;
        let wanted: Vec<_> = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let start = |span| state.firsts.get(&span).copied().unwrap_or(0);
            state
                .spans
                .list()
                .iter()
                .filter(|&&(_, span, _)| start(span) >= clip_store::RESUME_MIN)
                .map(|&(layer, span, need)| (layer, span, start(span), need.bytes(u64::MAX)))
                .collect()
        };
        // A registry that stalls must not hold the end of the recording (an unmount waits for it) for long.
        let deadline = tokio::time::Instant::now() + RESUME_SEARCH_TIME;
        let found: Vec<_> = futures::stream::iter(wanted)
            .map(|(layer, span, from, to)| async move {
                match tokio::time::timeout_at(deadline, store.resume_point(layer, span, from, to)).await {
                    Ok(Ok(Some(resume))) => ProfileResume::of(&resume).ok(),
                    Ok(Ok(None)) => None,
                    Ok(Err(error)) => {
                        debug!(%layer, %span, error = &error as &dyn std::error::Error, "no resume point");
                        None
                    }
                    Err(_) => {
                        debug!(%layer, %span, "no resume point: the search ran out of time");
                        None
                    }
                }
            })
            .buffered(RESUME_SEARCHES)
            .filter_map(std::future::ready)
            .collect()
            .await;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let count = found.len();
        state.resume = found;
        state.version += 1;
        count
    }

    /// Writes the profile when it changed since the last save (or was never saved).
    pub fn save(&self) -> Result<(), NodeError> {
        let (profile, version) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.saved == Some(state.version) {
                return Ok(());
            }
            (self.profile_of(&state), state.version)
        };
        profile.save(&self.path)?;
        self.state.lock().unwrap_or_else(|e| e.into_inner()).saved = Some(version);
        debug!(path = %self.path.display(), spans = profile.spans.len(), "profile saved");
        Ok(())
    }
}

impl clip_fs::ReadObserver for ProfileRecorder {
    fn on_read(&self, data: DataRef, offset: u64, len: u64) {
        self.record(data, offset, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_form() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let p = Profile {
            manifest_digest: Some(digest.parse().unwrap()),
            spans: vec![
                ProfileSpan::Whole(LayerIndex(0), SpanId(3)),
                ProfileSpan::Upto(LayerIndex(1), SpanId(0), 4096),
            ],
            resume: Vec::new(),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!(r#"{{"manifest_digest":"{digest}","spans":[[0,3],[1,0,4096]]}}"#));
        assert_eq!(Profile::from_json(json.as_bytes()).unwrap(), p);
        assert!(Profile::from_json(b"{\"spans\": [[1]]}").is_err());
        assert!(Profile::from_json(b"{\"spans\": [[1, 2, 3, 4]]}").is_err());
        assert!(Profile::from_json(b"{\"spans\": [[1, 2, -3]]}").is_err());
        let not_sha256 = Profile::from_json(br#"{"manifest_digest":"sha256:ab","spans":[]}"#).unwrap_err();
        assert!(not_sha256.contains("invalid digest"), "{not_sha256}");
    }

    #[test]
    fn a_limited_recording_stops_at_its_span_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut contents = Vec::new();
        let spans: Vec<clip_format::SpanSpec> = (0..8)
            .map(|i| clip_format::SpanSpec {
                out_offset: i << 20,
                in_offset: i << 20,
                bits: 0,
                digest: clip_format::Digest::default(),
                window: clip_format::WindowRef::default(),
            })
            .collect();
        let layer = clip_format::LayerMeta {
            media_type: String::new(),
            digest: clip_format::Digest::of(b"l"),
            size: 8 << 20,
            diff_id: None,
            uncompressed_size: 8 << 20,
            compression: clip_format::Compression::None,
            first_span: SpanId(0),
            span_count: 8,
        };
        let root = clip_format::NodeSpec {
            mode: clip_format::mode::S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            mtime: clip_format::Timestamp::default(),
            xattrs: vec![],
            content: clip_format::Content::Dir(vec![]),
        };
        let index = clip_format::IndexContents {
            kind: clip_format::ArchiveKind::IndexOnly,
            meta: clip_format::ImageMeta { layers: vec![layer], ..Default::default() },
            nodes: vec![root],
            spans,
            windows: clip_format::Windows::new(),
            chunks: None,
            tree: None,
        };
        clip_format::write_index(&index, &mut contents).unwrap();
        let archive = Arc::new(Archive::from_bytes(contents).unwrap());
        let limits = RecordLimits { seconds: 3600, spans: 3 };
        let rec = ProfileRecorder::new(archive, dir.path().join("p.json")).with_limits(limits);
        let file = DataRef { layer: LayerIndex(0), offset: 0, size: 8 << 20 };
        rec.record(file, 5 << 20, 1);
        assert!(!rec.finished());
        rec.record(file, 0, 8 << 20);
        assert!(rec.finished());
        let spans: Vec<(u32, Need)> = rec.profile().spans.iter().map(|s| (s.parts().1 .0, s.parts().2)).collect();
        assert_eq!(
            spans,
            [(5, Need::Upto(1)), (0, Need::Whole), (1, Need::Whole)],
            "first touch first, cut at the limit"
        );
        // A later read further into a span already recorded reaches further; one into a new span past the
        // limit is not recorded.
        rec.record(file, (5 << 20) + 100, 50);
        rec.record(file, 7 << 20, 1);
        let spans: Vec<ProfileSpan> = rec.profile().spans;
        assert_eq!(spans[0], ProfileSpan::Upto(LayerIndex(0), SpanId(5), 150));
        assert_eq!(spans.len(), 3);
    }

    #[test]
    fn save_is_atomic_and_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let p = Profile {
            manifest_digest: None,
            spans: vec![ProfileSpan::Upto(LayerIndex(2), SpanId(7), 10)],
            resume: Vec::new(),
        };
        p.save(&path).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), p);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
