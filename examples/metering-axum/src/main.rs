//! Run the example: `cargo run -p metering-axum`, then
//! `curl -s localhost:3000/v1/messages -H 'x-api-key: sk-demo' -d '{"model":"claude-sonnet-4-5","max_tokens":64}'`.

use std::sync::Arc;

use relay_core::price::TokenPrices;
use relay_core::{ModelPrice, PriceBook};
use relay_usage::sink::MemoryUsageSink;
use rust_decimal::Decimal;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The shared LiteLLM catalog when it is there, else one price for every model.
    let prices = match PriceBook::load_litellm_file("../shared/data/model_prices.json") {
        Ok((book, _skipped)) => book,
        Err(_) => PriceBook::default().with_default_price(ModelPrice::new(
            TokenPrices::per_million(Decimal::from(3), Decimal::from(15)),
        ))?,
    };
    let sink = Arc::new(MemoryUsageSink::new(1000));
    let app = metering_axum::app(Arc::new(prices), sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on http://127.0.0.1:3000 (key: {})",
        metering_axum::DEMO_KEY
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            for e in sink.recent() {
                println!(
                    "{} {} {:?} cost {}",
                    e.request_id, e.model, e.outcome, e.cost
                );
            }
        }
    });
    axum::serve(listener, app).await?;
    Ok(())
}
