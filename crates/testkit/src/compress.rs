//! Layer compression: gzip (flate2), zstd, or none, plus the awkward shapes real images have (gzip with
//! several members, zstd with several frames).

use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// How a layer blob is compressed: the workspace's one type, from the format crate.
pub use clip_format::Compression;

/// The OCI layer media type of a blob compressed with `compression`.
pub fn layer_media_type(compression: Compression) -> &'static str {
    match compression {
        Compression::None => crate::oci::MEDIA_TYPE_LAYER_TAR,
        Compression::Gzip => crate::oci::MEDIA_TYPE_LAYER_GZIP,
        Compression::Zstd => crate::oci::MEDIA_TYPE_LAYER_ZSTD,
    }
}

/// Compresses a whole tar as one gzip member or one zstd frame (level 3), or copies it for
/// [`Compression::None`].
pub fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => gzip(tar, flate2::Compression::default()),
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd compression of an in-memory buffer"),
    }
}

/// Decompresses a blob made by [`compress`], [`gzip_multi_member`] or [`zstd_multi_frame`] (every gzip
/// member and every zstd frame is read).
///
/// # Panics
/// If the blob is not valid for `compression`.
pub fn decompress(blob: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => blob.to_vec(),
        Compression::Gzip => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap_or_else(|e| panic!("gunzip of a {}-byte blob: {e}", blob.len()));
            out
        }
        Compression::Zstd => {
            zstd::decode_all(blob).unwrap_or_else(|e| panic!("zstd decode of a {}-byte blob: {e}", blob.len()))
        }
    }
}

/// gzip with the given level, one member.
pub(crate) fn gzip(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2 + 64), level);
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// gzip made by the GNU `gzip` binary (`gzip -LEVEL -n -c`), much faster than flate2 in debug builds and
/// the exact shape `gzip`-based tooling produces.
///
/// # Panics
/// When `gzip` cannot be run or fails.
pub fn gzip_cli(data: &[u8], level: u32) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg(format!("-{}", level.clamp(1, 9)))
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run gzip: {e} (apt-get install gzip)"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let output = std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(data).unwrap_or_else(|e| panic!("writing to gzip: {e}")));
        child.wait_with_output().unwrap_or_else(|e| panic!("waiting for gzip: {e}"))
    });
    assert!(output.status.success(), "gzip failed: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// gzip as `members` concatenated gzip members (as `pigz` or `cat a.gz b.gz` produce). The tar is cut into
/// `members` byte ranges of near-equal size at arbitrary offsets, not at entry boundaries, so a tar header
/// or file may straddle two members. A valid gzip stream: `gzip -d` and OCI tools read all members.
pub fn gzip_multi_member(tar: &[u8], members: usize) -> Vec<u8> {
    split(tar, members).flat_map(|part| gzip(part, flate2::Compression::default())).collect()
}

/// zstd (level 3) as consecutive frames, each holding at most `frame_size` bytes of the tar, cut at
/// arbitrary offsets (every frame boundary is a free random-access point).
pub fn zstd_multi_frame(tar: &[u8], frame_size: usize) -> Vec<u8> {
    let frame_size = frame_size.max(1);
    let mut out = Vec::new();
    for part in tar.chunks(frame_size) {
        out.extend(zstd::encode_all(part, 3).expect("zstd compression of an in-memory buffer"));
    }
    if tar.is_empty() {
        out = zstd::encode_all(tar, 3).expect("zstd compression of an in-memory buffer");
    }
    out
}

fn split(data: &[u8], parts: usize) -> impl Iterator<Item = &[u8]> {
    let parts = parts.max(1);
    let step = data.len().div_ceil(parts).max(1);
    let mut chunks: Vec<&[u8]> = data.chunks(step).collect();
    while chunks.len() < parts {
        chunks.push(&[]);
    }
    chunks.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in Compression::ALL {
            assert_eq!(decompress(&compress(&data, c), c), data, "{c:?}");
        }
        let multi = gzip_multi_member(&data, 4);
        assert_eq!(decompress(&multi, Compression::Gzip), data);
        // Four members: four gzip magic headers at member starts (the first at offset 0).
        let members = multi.windows(3).filter(|w| w == &[0x1f, 0x8b, 0x08]).count();
        assert!(members >= 4, "only {members} gzip headers found");
        assert_eq!(decompress(&gzip_cli(&data, 6), Compression::Gzip), data);
        let frames = zstd_multi_frame(&data, 30_000);
        assert_eq!(decompress(&frames, Compression::Zstd), data);
        let magic = frames.windows(4).filter(|w| w == &[0x28, 0xb5, 0x2f, 0xfd]).count();
        assert!(magic >= 4, "only {magic} zstd frames found");
    }

    #[test]
    fn media_types() {
        assert_eq!(layer_media_type(Compression::Gzip), "application/vnd.oci.image.layer.v1.tar+gzip");
        assert_eq!(layer_media_type(Compression::Zstd), "application/vnd.oci.image.layer.v1.tar+zstd");
        assert_eq!(layer_media_type(Compression::None), "application/vnd.oci.image.layer.v1.tar");
    }
}
