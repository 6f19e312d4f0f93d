//! `clip-testkit`: the shared test harness. Real parts, not mocks: a real registry on 127.0.0.1, OCI
//! images built in code from generated tar layers, and tree comparison against `umoci unpack`, the
//! correctness oracle (DESIGN.md, "Correctness reference" and "Real parts, not mocks").
//!
//! Used only as a dev-dependency, by the crates' tests and the root end-to-end tests.
//!
//! Main types:
//! - [`Registry`] — Debian's `docker-registry` started on a free port (optionally with basic auth), killed
//!   on drop; panics when it cannot start, so tests fail instead of skipping.
//! - [`S3Server`] — PyPI's `moto_server` on a free port (optionally checking credentials), killed on drop.
//! - [`Containerd`] — Debian's containerd with a private config and socket, remote snapshotters as proxy
//!   plugins, `ctr` / `ctr-remote` bound to it; tasks killed, mounts undone and state removed on drop.
//! - [`reference_rootfs`] — a root filesystem directory on disk with every correctness-reference case.
//! - [`LayerBuilder`] / [`Entry`] — tar layers with control over every header: all entry types, whiteouts,
//!   opaque markers, modes, big uid/gid (PAX or GNU base-256), nanosecond mtimes, xattrs, long names (PAX,
//!   GNU `L`/`K`, ustar prefix). [`compress`], [`gzip_multi_member`], [`zstd_multi_frame`].
//! - [`OciLayoutBuilder`] / [`Image`] / [`Layer`] — OCI image layouts (single images and multi-platform
//!   indexes), and [`push`] to a registry with skopeo, digests preserved.
//! - [`umoci_unpack`] — the oracle's root filesystem.
//! - [`conformance_layers`] / [`conformance_image`] — one image with every edge case of the correctness
//!   reference.
//! - [`snapshot`] / [`compare`] / [`CompareOpts`] — trees recorded with every attribute, and their
//!   differences as lines like `usr/bin/x: mode 0100755 != 0104755`.
//! - [`big_gzip_layer`] — a large layer of many mostly incompressible files.
//! - [`host_programs`] — host programs with the libraries they load, for a shell or `cat` in test images.
//!
//! This is a test harness: functions panic with a message naming what failed (a failure is a test
//! failure); [`try_snapshot`] and [`try_run`] return an [`Error`] instead. The external tools (`docker-registry`,
//! `skopeo`, `umoci`, `containerd`, `ctr`, `ctr-remote`) are installed by `dev/test`; tests run as root.
//!
//! ```no_run
//! use clip_testkit::*;
//!
//! // The conformance image as a gzip OCI layout, pushed to a fresh registry.
//! let registry = Registry::start();
//! let mut layout = OciLayoutBuilder::new();
//! layout.add_image("v1", &conformance_image(Compression::Gzip));
//! registry.push(layout.path(), "v1", "conformance:v1");
//!
//! // ... let clip index registry.image_ref("conformance:v1") and mount or extract it at `mnt` ...
//! # let mnt = std::path::Path::new("/mnt");
//! assert_matches_umoci(layout.path(), "v1", mnt, CompareOpts::conformance());
//! ```

mod compare;
mod compress;
pub mod conformance;
mod containerd;
mod error;
mod fixtures;
mod host;
mod layer;
mod oci;
mod proxy;
mod registry;
mod rootfs;
mod s3;
mod server;
mod tree;
mod umoci;

pub use compare::{assert_matches_umoci, assert_trees_equal, compare, CompareOpts};
pub use compress::{
    compress, decompress, gzip_cli, gzip_multi_member, layer_media_type, zstd_multi_frame, Compression,
};
pub use conformance::{conformance_image, conformance_layers};
pub use containerd::{unmount_under, Containerd, CONTAINERD_BINARY};
pub use error::{run, try_run, Error};
pub use fixtures::{big_gzip_layer, big_layer_tar, pseudo_random_bytes};
pub use host::{host_programs, ld_so_cache, shared_libraries};
pub use layer::{
    capability_v2, BigNumbers, Entry, LayerBuilder, LongNames, BLOCK, CAP_NET_BIND_SERVICE, CAP_NET_RAW, DEFAULT_MTIME,
    OPAQUE_MARKER, WHITEOUT_PREFIX,
};
pub use oci::{
    push, push_with_creds, BuiltImage, BuiltIndex, Descriptor, Digest, Image, ImageConfig, Layer, OciLayoutBuilder,
    Platform, ANNOTATION_REF_NAME, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_ZSTD, MEDIA_TYPE_MANIFEST,
};
pub use proxy::{
    Fault, FaultKind, Proxy, ProxyConfig, ProxyError, ProxyStats, RequestRecord, DEFAULT_CHUNK_SIZE as PROXY_CHUNK_SIZE,
};
pub use registry::{base64, find_free_port, http_get, HttpResponse, Registry, REGISTRY_BINARY};
pub use rootfs::{reference_rootfs, ROOTFS_BIG_FILE, ROOTFS_HARD_LINKS};
pub use s3::{S3Server, MOTO_BINARY};
pub use tree::{show_path, snapshot, try_snapshot, FileKind, Node, Tree};
pub use umoci::{umoci_unpack, Unpacked};
