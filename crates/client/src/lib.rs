//! The image client: pull, index, publish, mount, overlay and run images.
