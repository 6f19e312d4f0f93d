//! The .clip file format: header, section table, node/dirent/span tables; written deterministically, read by mmap.
