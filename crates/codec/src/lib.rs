//! Random access into compressed layer streams: gzip (zran checkpoints), zstd (frames) and raw tar.
