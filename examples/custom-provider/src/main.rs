//! Wire the epay provider into relay's webhook pipeline and walk one payment through it,
//! offline: a checkout link, then the gateway's signed notification, delivered twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use custom_provider::{epay_sign, EpayConfig, EpayProvider};
use relay_core::{Currency, Money, OrderId, SystemClock};
use relay_payments::store::memory::MemoryWebhookEventStore;
use relay_payments::{
    CheckoutRequest, HandleOutcome, HandlerError, PaymentEvent, PaymentEventHandler,
    PaymentProvider, WebhookProcessor,
};

/// Stands in for billing: prints what it would credit.
#[derive(Debug)]
struct PrintingBilling;

#[async_trait]
impl PaymentEventHandler for PrintingBilling {
    async fn handle(&self, event: &PaymentEvent) -> Result<HandleOutcome, HandlerError> {
        println!(
            "billing: {} {} for {:?} (ref {})",
            event.kind.name(),
            event.amount,
            event.order_id,
            event.provider_reference
        );
        Ok(HandleOutcome::Applied)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = EpayConfig {
        gateway: "https://pay.example.com".into(),
        pid: "1001".into(),
        key: "merchant-secret".into(),
        channel: "alipay".into(),
        notify_url: "https://relay.example/webhooks/epay".into(),
        return_url: "https://relay.example/paid".into(),
    };
    let provider = EpayProvider::new(config)?;
    let order = OrderId::new();
    let amount = Money::parse("12.50", Currency::CNY)?;
    let checkout = provider
        .create_checkout(&CheckoutRequest::one_off(
            order.clone(),
            amount,
            "relay top-up",
        ))
        .await?;
    println!(
        "send the payer to: {}",
        checkout.redirect_url.unwrap_or_default()
    );

    // What the gateway would send once the payer has paid.
    let mut params = BTreeMap::from([
        ("pid".to_owned(), "1001".to_owned()),
        ("trade_no".to_owned(), "2026010100001".to_owned()),
        ("out_trade_no".to_owned(), order.to_string()),
        ("type".to_owned(), "alipay".to_owned()),
        ("name".to_owned(), "relay top-up".to_owned()),
        ("money".to_owned(), "12.50".to_owned()),
        ("trade_status".to_owned(), "TRADE_SUCCESS".to_owned()),
    ]);
    let sign = epay_sign(&params, "merchant-secret");
    params.insert("sign".into(), sign);
    params.insert("sign_type".into(), "MD5".into());
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();

    let processor = WebhookProcessor::new(
        Arc::new(MemoryWebhookEventStore::new()),
        Arc::new(PrintingBilling),
        Arc::new(SystemClock),
    );
    for attempt in 1..=2 {
        let receipt = processor
            .receive(&provider, &http::HeaderMap::new(), body.as_bytes())
            .await;
        println!(
            "delivery {attempt}: answered {} {:?} ({:?})",
            receipt.reply.status,
            String::from_utf8_lossy(&receipt.reply.body),
            receipt.deliveries
        );
    }
    Ok(())
}
