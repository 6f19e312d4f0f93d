//! The FUSE filesystem over a .clip index and a content store.
