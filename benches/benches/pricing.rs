//! Cost of one request from the shared price catalog (lookup plus exact decimal math).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use relay_core::{PriceBook, Usage};

fn pricing(c: &mut Criterion) {
    let path = format!(
        "{}/../../shared/data/model_prices.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let Ok((book, _)) = PriceBook::load_litellm_file(&path) else {
        eprintln!("shared catalog not found at {path}; skipping pricing bench");
        return;
    };
    let usage = Usage {
        input_tokens: 1200,
        output_tokens: 350,
        cache_write_5m_tokens: 2000,
        cache_write_1h_tokens: 0,
        cache_read_tokens: 18_000,
        requests: 1,
    };
    c.bench_function("cost/exact-name", |b| {
        b.iter(|| book.cost(black_box("claude-sonnet-4-5"), black_box(&usage)))
    });
    c.bench_function("cost/dated-prefixed-name", |b| {
        b.iter(|| {
            book.cost(
                black_box("anthropic/claude-sonnet-4-5-20991231"),
                black_box(&usage),
            )
        })
    });
}

criterion_group!(benches, pricing);
criterion_main!(benches);
