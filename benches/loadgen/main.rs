//! Placeholder for the load generator.
fn main() {}
