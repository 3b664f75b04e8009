//! Codec benchmark (being written).
fn main() {}
