//! The typed numbers of an index: [`LayerIndex`] (a layer's place in the layer table), [`SpanId`] (a record
//! of the whole span table) and [`SpanIds`] (a layer's slice of it), and [`Digest`] (a sha256 content
//! digest). Each is its own type, so a layer number cannot be passed where a span is meant; on disk and in
//! `META` they are the plain numbers and `sha256:<hex>` strings they always were.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

use crate::FormatError;

/// A layer's position in the image, bottom layer 0 (for data-carrying archives: always 0, the data section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LayerIndex(pub u32);

impl LayerIndex {
    /// The position as a slice index.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The layer at slice index `index` of the layer table.
    pub fn from_index(index: usize) -> LayerIndex {
        LayerIndex(index as u32)
    }
}

impl fmt::Display for LayerIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A record of the span table, which holds all layers' spans one layer after the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpanId(pub u32);

impl SpanId {
    /// The record's position as a slice index.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The record at slice index `index` of the span table.
    pub fn from_index(index: usize) -> SpanId {
        SpanId(index as u32)
    }

    /// The record after this one.
    pub fn next(self) -> SpanId {
        self.saturating_add(1)
    }

    /// The record `n` after this one (the last possible one if that is past it).
    pub fn saturating_add(self, n: usize) -> SpanId {
        SpanId(self.0.saturating_add(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The span records `start..end` of one layer, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanIds {
    pub start: SpanId,
    pub end: SpanId,
}

impl SpanIds {
    /// The records from `first` through `last`, both included.
    pub fn through(first: SpanId, last: SpanId) -> SpanIds {
        SpanIds { start: first, end: last.next() }
    }

    /// Whether `span` is one of these.
    pub fn contains(&self, span: SpanId) -> bool {
        self.start <= span && span < self.end
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.end.0.saturating_sub(self.start.0) as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last record, if any.
    pub fn last(&self) -> Option<SpanId> {
        (!self.is_empty()).then(|| SpanId(self.end.0 - 1))
    }

    /// The records in order.
    pub fn iter(&self) -> <Self as IntoIterator>::IntoIter {
        self.into_iter()
    }
}

impl IntoIterator for SpanIds {
    type Item = SpanId;
    type IntoIter = std::iter::Map<std::ops::Range<u32>, fn(u32) -> SpanId>;

    fn into_iter(self) -> Self::IntoIter {
        (self.start.0..self.end.0).map(SpanId as fn(u32) -> SpanId)
    }
}

/// A sha256 content digest: of a blob (`sha256:<hex>` in manifests and `META`) or of a span's uncompressed
/// bytes (raw in the span table). Displays as `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

const SHA256_PREFIX: &str = "sha256:";

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(sha2::Sha256::digest(data).into())
    }

    /// The digest with the given raw sha256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest(hash)
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits after `sha256:`.
    pub fn hex(&self) -> String {
        use fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// The digest with a dash for the colon, `sha256-<hex>`: as a file name (clip's stores), a part key or
    /// a tag (the referrers tag schema), where `:` is not allowed or awkward.
    pub fn dashed(&self) -> String {
        format!("{}-{}", self.algorithm(), self.hex())
    }

    /// The algorithm name, always `sha256`: the only one clip accepts, so a digest is safe to use as a file
    /// name under `blobs/sha256/`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl FromStr for Digest {
    type Err = FormatError;

    /// Parses `sha256:<64 lowercase hex digits>`; anything else is [`FormatError::InvalidDigest`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || FormatError::InvalidDigest { input: s.to_owned() };
        let hex = s.strip_prefix(SHA256_PREFIX).filter(|h| h.len() == 64).ok_or_else(invalid)?;
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *o = nibble(pair[0]).zip(nibble(pair[1])).map(|(hi, lo)| hi << 4 | lo).ok_or_else(invalid)?;
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_parses_displays_and_round_trips_through_json() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.hex(), HEX);
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(Digest::of(b""), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"sha256:{HEX}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    #[test]
    fn digest_rejects_bad_syntax() {
        for bad in [
            "",
            HEX,
            "sha256:",
            &format!("sha256:{}", &HEX[1..]),
            &format!("sha256:{HEX}0"),
            &format!("sha256:{}", HEX.to_uppercase()),
            &format!("sha512:{HEX}"),
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000",
            &format!("sha256:{}/x", &HEX[2..]),
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert!(matches!(err, FormatError::InvalidDigest { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn span_ids_iterate_and_contain() {
        let ids = SpanIds { start: SpanId(3), end: SpanId(5) };
        assert_eq!(ids.iter().collect::<Vec<_>>(), [SpanId(3), SpanId(4)]);
        assert!(ids.contains(SpanId(4)) && !ids.contains(SpanId(5)));
        assert_eq!(ids.last(), Some(SpanId(4)));
        assert_eq!(SpanIds { start: SpanId(3), end: SpanId(3) }.last(), None);
    }
}
