//! Test harness: a real registry on 127.0.0.1, OCI images built from generated tar layers, and tree comparison against umoci unpack.
