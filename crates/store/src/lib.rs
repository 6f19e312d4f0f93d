//! The content store: maps file reads to verified spans, fetched once and kept in a bounded disk cache.
