//! Bulk test data: deterministic pseudo-random bytes and a big layer of many files for random-access,
//! span and cache tests.

use crate::compress::Compression;
use crate::layer::{Entry, LayerBuilder};
use crate::oci::Layer;

/// `len` deterministic pseudo-random (incompressible) bytes from `seed` (splitmix64).
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Size of the `i`-th file of [`big_layer_tar`]: mostly small (under 16 KiB, with empty, 1-byte and
/// block-boundary sizes among them), some of 200–250 KB, one of just over 1 MiB and one of 3 MiB + 511
/// every 50 files, and file 7 of 8 MiB + 3 (crossing several 4 MiB spans).
fn file_size(i: usize) -> usize {
    match (i, i % 50) {
        (7, _) => (8 << 20) + 3,
        (_, 0) => (3 << 20) + 511,
        (_, 25) => (1 << 20) + 17,
        (_, n) if n % 10 == 3 => 200_000 + n * 1000,
        (_, 1) => 0,
        (_, 2) => 1,
        (_, 4) => 512,
        (_, n) => (n * 997) % 16_384,
    }
}

/// An uncompressed tar of many files under `big/dNN/` (about 500 for 50 MiB: mostly small, some of
/// 200 KB to 3 MiB, one of 8 MiB + 3) holding `size_mib` MiB of pseudo-random (incompressible) contents,
/// plus every 8th file as text (which compresses to little), so that any compression of it is about
/// `size_mib` MiB. Deterministic.
pub fn big_layer_tar(size_mib: usize) -> Vec<u8> {
    let target = size_mib << 20;
    let mut l = LayerBuilder::new();
    l.dir("big");
    let mut random = 0usize;
    let mut i = 0usize;
    while random < target {
        let dir = format!("big/d{:02}", i / 64);
        if i % 64 == 0 {
            l.dir(dir.clone());
        }
        let mut size = file_size(i);
        let contents = if i % 8 == 6 {
            format!("line {i}\n").repeat(size / 7 + 1).into_bytes()[..size].to_vec()
        } else {
            size = size.min(target - random);
            random += size.max(1);
            pseudo_random_bytes(i as u64, size)
        };
        l.entry(Entry::file(format!("{dir}/f{i:05}"), contents).mode(0o644));
        i += 1;
    }
    l.finish()
}

/// A gzip layer from [`big_layer_tar`]: about `size_mib` MiB compressed (the content is mostly
/// incompressible). Compressed by the `gzip` binary at its default level (fast even in debug builds).
pub fn big_gzip_layer(size_mib: usize) -> Layer {
    let tar = big_layer_tar(size_mib);
    let blob = crate::compress::gzip_cli(&tar, 6);
    Layer::from_blob_unchecked(tar, blob, Compression::Gzip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_deterministic_and_distinct() {
        assert_eq!(pseudo_random_bytes(1, 100), pseudo_random_bytes(1, 100));
        assert_ne!(pseudo_random_bytes(1, 100), pseudo_random_bytes(2, 100));
        assert_eq!(pseudo_random_bytes(3, 13).len(), 13);
    }

    #[test]
    fn big_tar_holds_about_the_requested_size() {
        let tar = big_layer_tar(4);
        assert!(tar.len() >= 4 << 20, "{}", tar.len());
        assert!(tar.len() < 6 << 20, "{}", tar.len());
        let zstd = crate::compress(&tar, crate::Compression::Zstd);
        assert!(zstd.len() >= 4 << 20, "{}", zstd.len());
        assert!(zstd.len() < (4 << 20) + (1 << 19), "{}", zstd.len());
    }
}
