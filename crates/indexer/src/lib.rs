//! The indexer: streams each layer once, records checkpoints and span digests, parses tar and merges layers.
