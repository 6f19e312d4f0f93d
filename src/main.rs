//! `clip`: the command-line front end. Parses arguments and dispatches to the library crates.
fn main() {}
