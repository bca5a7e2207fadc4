//! rota-cli (placeholder until its issue lands).
fn main() {}
