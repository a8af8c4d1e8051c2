use super::*;
use rust_decimal_macros::dec;

fn shared_catalog() -> (PriceBook, Vec<SkippedEntry>) {
    let path = std::env::var("RELAY_PRICE_CATALOG").unwrap_or_else(|_| {
        format!(
            "{}/../../shared/data/model_prices.json",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    PriceBook::load_litellm_file(&path).expect("the shared catalog loads")
}

fn usage(input: u64, output: u64, w5: u64, w1h: u64, read: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_write_5m_tokens: w5,
        cache_write_1h_tokens: w1h,
        cache_read_tokens: read,
        requests: 1,
    }
}

#[test]
fn the_whole_shared_catalog_loads_or_is_reported() {
    let (book, skipped) = shared_catalog();
    assert_eq!(book.len() + skipped.len(), 4878);
    assert!(book.len() > 3800, "only {} entries loaded", book.len());
    for s in &skipped {
        assert!(!s.reason.is_empty(), "{} skipped without a reason", s.model);
    }
    assert!(skipped
        .iter()
        .any(|s| s.model == "sample_spec" && s.reason.contains("documentation")));
    // Image and audio models have no per-token price and must be named, not dropped.
    assert!(skipped
        .iter()
        .any(|s| s.reason.contains("no per-token price")));
}

#[test]
fn catalog_numbers_are_exact_decimals() {
    let (book, _) = shared_catalog();
    let sonnet = book.lookup("claude-sonnet-4-5").unwrap();
    assert_eq!(sonnet.base.input, dec!(0.000003));
    assert_eq!(sonnet.base.output, dec!(0.000015));
    assert_eq!(sonnet.base.cache_write_5m, dec!(0.00000375));
    assert_eq!(sonnet.base.cache_write_1h, dec!(0.000006));
    assert_eq!(sonnet.base.cache_read, dec!(0.0000003));
}

#[test]
fn claude_cost_with_cache_tokens_is_exact() {
    let (book, _) = shared_catalog();
    // 1000*3e-6 + 500*1.5e-5 + 2000*3.75e-6 + 1000*6e-6 + 10000*3e-7
    // = 0.003 + 0.0075 + 0.0075 + 0.006 + 0.003
    let cost = book
        .cost(
            "claude-sonnet-4-5-20250929",
            &usage(1000, 500, 2000, 1000, 10_000),
        )
        .unwrap();
    assert_eq!(cost, Money::new(dec!(0.027), Currency::USD));
}

#[test]
fn claude_200k_tier_prices_every_token_of_the_request() {
    let (book, _) = shared_catalog();
    let model = "claude-sonnet-4-5-20250929-v1:0";
    // Prompt = 150000 + 30000 + 10000 + 20000 = 210000 > 200000: tier prices.
    // 150000*6e-6 + 1000*2.25e-5 + 30000*7.5e-6 + 10000*1.2e-5 + 20000*6e-7
    // = 0.9 + 0.0225 + 0.225 + 0.12 + 0.012
    let cost = book
        .cost(model, &usage(150_000, 1000, 30_000, 10_000, 20_000))
        .unwrap();
    assert_eq!(cost.amount(), dec!(1.2795));
    // Exactly 200000 prompt tokens is not above the threshold: base prices.
    // 200000*3e-6 + 1000*1.5e-5 = 0.6 + 0.015
    let cost = book.cost(model, &usage(200_000, 1000, 0, 0, 0)).unwrap();
    assert_eq!(cost.amount(), dec!(0.615));
}

#[test]
fn gpt_cost_uses_catalog_cache_read_and_fallback_cache_write() {
    let (book, _) = shared_catalog();
    // 1000*2.5e-6 + 200*1e-5 + 5000*1.25e-6 = 0.0025 + 0.002 + 0.00625
    let cost = book.cost("gpt-4o", &usage(1000, 200, 0, 0, 5000)).unwrap();
    assert_eq!(cost.amount(), dec!(0.01075));
    // No cache-write price in the catalog: 1.25x input = 3.125e-6 per token.
    let cost = book.cost("gpt-4o", &usage(0, 0, 100, 0, 0)).unwrap();
    assert_eq!(cost.amount(), dec!(0.0003125));
    // 1-hour write fallback: 2x input.
    let cost = book.cost("gpt-4o", &usage(0, 0, 0, 100, 0)).unwrap();
    assert_eq!(cost.amount(), dec!(0.0005));
}

#[test]
fn gemini_200k_tier() {
    let (book, _) = shared_catalog();
    // Below: 100000*1.25e-6 + 1000*1e-5 + 10000*1.25e-7 = 0.125 + 0.01 + 0.00125
    let below = book
        .cost("gemini/gemini-2.5-pro", &usage(100_000, 1000, 0, 0, 10_000))
        .unwrap();
    assert_eq!(below.amount(), dec!(0.13625));
    // Above: 250000*2.5e-6 + 1000*1.5e-5 + 10000*2.5e-7 = 0.625 + 0.015 + 0.0025
    let above = book
        .cost("gemini/gemini-2.5-pro", &usage(250_000, 1000, 0, 0, 10_000))
        .unwrap();
    assert_eq!(above.amount(), dec!(0.6425));
}

#[test]
fn lookup_finds_dated_prefixed_and_cased_names() {
    let (book, _) = shared_catalog();
    let base = book.lookup("claude-sonnet-4-5").unwrap().clone();
    for name in [
        "claude-sonnet-4-5-20250929",
        "anthropic/claude-sonnet-4-5",
        "CLAUDE-SONNET-4-5",
        "claude-sonnet-4-5@20250929",
    ] {
        assert_eq!(book.lookup(name).unwrap().base, base.base, "{name}");
    }
    let gpt = book.lookup("gpt-4o").unwrap().base;
    assert_eq!(book.lookup("gpt-4o-2099-01-01").unwrap().base, gpt);
    assert_eq!(book.lookup("openai/gpt-4o").unwrap().base, gpt);
    assert!(book.lookup("models/gemini-2.5-pro").is_ok());
}

#[test]
fn unknown_model_is_an_error_unless_a_default_is_configured() {
    let (book, _) = shared_catalog();
    let err = book
        .cost("no-such-model-xyz", &usage(10, 10, 0, 0, 0))
        .unwrap_err();
    assert_eq!(err, PriceError::UnknownModel("no-such-model-xyz".into()));
    let book = book
        .with_default_price(ModelPrice::new(TokenPrices::per_million(dec!(1), dec!(2))))
        .unwrap();
    let cost = book
        .cost("no-such-model-xyz", &usage(1_000_000, 1_000_000, 0, 0, 0))
        .unwrap();
    assert_eq!(cost.amount(), dec!(3));
}

#[test]
fn overrides_and_multipliers_layer_over_the_catalog() {
    let (book, _) = shared_catalog();
    let book = book
        .with_override(
            "gpt-4o",
            ModelPrice::new(TokenPrices::per_million(dec!(10), dec!(20))),
        )
        .unwrap()
        .with_model_multiplier("claude-*", dec!(1.5))
        .unwrap()
        .with_multiplier(dec!(2))
        .unwrap();
    let u = usage(1_000_000, 0, 0, 0, 0);
    assert_eq!(book.cost("gpt-4o", &u).unwrap().amount(), dec!(20));
    // 1e6 * 3e-6 = 3, times 1.5 times 2.
    assert_eq!(
        book.cost("claude-sonnet-4-5", &u).unwrap().amount(),
        dec!(9)
    );
    assert!(PriceBook::default().with_multiplier(dec!(-1)).is_err());
    assert!(PriceBook::default()
        .with_override(
            "x",
            ModelPrice::new(TokenPrices::per_token(dec!(-1), dec!(0)))
        )
        .is_err());
}

#[test]
fn malformed_catalogs_and_entries() {
    assert!(matches!(
        PriceBook::from_litellm_json("[1,2]"),
        Err(PriceError::Catalog(_))
    ));
    assert!(matches!(
        PriceBook::from_litellm_json("{not json"),
        Err(PriceError::Catalog(_))
    ));
    let json = r#"{
        "ok": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2E-6},
        "text": {"input_cost_per_token": "cheap", "output_cost_per_token": 1e-06},
        "negative": {"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06},
        "no-output": {"input_cost_per_token": 1e-06, "mode": "chat"},
        "embed": {"input_cost_per_token": 1e-07, "mode": "embedding"},
        "scalar": 5
    }"#;
    let (book, skipped) = PriceBook::from_litellm_json(json).unwrap();
    assert_eq!(book.len(), 2);
    assert_eq!(book.lookup("ok").unwrap().base.output, dec!(0.000002));
    assert_eq!(book.lookup("embed").unwrap().base.output, Decimal::ZERO);
    let reason = |m: &str| {
        skipped
            .iter()
            .find(|s| s.model == m)
            .map(|s| s.reason.clone())
            .unwrap_or_default()
    };
    assert!(reason("text").contains("not a number"));
    assert!(reason("negative").contains("negative"));
    assert!(reason("no-output").contains("output_cost_per_token missing"));
    assert!(reason("scalar").contains("not a JSON object"));
}

#[test]
fn missing_file_is_a_clear_error() {
    let err = PriceBook::load_litellm_file("/nonexistent/prices.json").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/prices.json"));
}

#[test]
fn live_overrides_apply_at_once_to_every_clone() {
    let mut book = PriceBook::empty(Currency::USD);
    book.insert(
        "claude-sonnet-4-5-20250929",
        ModelPrice::new(TokenPrices::per_million(dec!(3), dec!(15))),
    )
    .unwrap();
    book.index_aliases();
    let held = Arc::new(book.clone());
    let u = usage(1_000_000, 0, 0, 0, 0);
    assert_eq!(
        held.cost("claude-sonnet-4-5", &u).unwrap().amount(),
        dec!(3)
    );
    book.live()
        .set(
            "claude-sonnet-4-5",
            ModelPrice::new(TokenPrices::per_million(dec!(2.5), dec!(10))),
        )
        .unwrap();
    // The clone held elsewhere sees it, under every name of the model.
    assert_eq!(
        held.cost("claude-sonnet-4-5", &u).unwrap().amount(),
        dec!(2.5)
    );
    assert_eq!(
        held.cost("anthropic/Claude-Sonnet-4-5-20250929", &u)
            .unwrap()
            .amount(),
        dec!(2.5)
    );
    // lookup keeps showing the configured price.
    assert_eq!(
        held.lookup("claude-sonnet-4-5").unwrap().base.input,
        dec!(3) / dec!(1000000)
    );
    // Negative prices are refused and change nothing.
    let bad = ModelPrice::new(TokenPrices::per_million(dec!(-1), dec!(10)));
    assert!(matches!(
        book.live().set("claude-sonnet-4-5", bad),
        Err(PriceError::Negative(_))
    ));
    assert_eq!(
        held.cost("claude-sonnet-4-5", &u).unwrap().amount(),
        dec!(2.5)
    );
    assert_eq!(book.live().list().len(), 1);
    assert!(book.live().clear("claude-sonnet-4-5"));
    assert!(!book.live().clear("claude-sonnet-4-5"));
    assert_eq!(
        held.cost("claude-sonnet-4-5", &u).unwrap().amount(),
        dec!(3)
    );
}
