//! Criterion benchmarks of relay's hot paths live in `benches/`; run them with
//! `cargo bench -p relay-benches`. This library is empty: it only hosts the bench targets.
