//! Alipay: RSA2 request signing, signed responses, notifications, query and refund,
//! against a local gateway that checks signatures with an independent RSA implementation.
#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::keys::{keys, TestKey};
use common::{clock, t0, MockServer, Recorded, SimBilling};
use http::HeaderMap;
use relay_core::{Currency, Money, OrderId, SharedClock};
use relay_payments::alipay::{AlipayConfig, AlipayProvider};
use relay_payments::store::memory::MemoryWebhookEventStore;
use relay_payments::{
    CheckoutRequest, HttpOptions, OrderQuery, OrderState, OrderStatus, PaymentError,
    PaymentEventKind, PaymentProvider, Presentation, RefundRequest, WebhookError, WebhookProcessor,
    WebhookService,
};
use serde_json::{json, Value};
use tower::ServiceExt;

const APP_ID: &str = "2021000000000001";

fn cny(s: &str) -> Money {
    Money::parse(s, Currency::CNY).unwrap()
}

fn merchant() -> &'static TestKey {
    &keys().0
}

fn alipay_key() -> &'static TestKey {
    &keys().1
}

/// The signed text, written here independently of the crate: sorted, non-empty, minus
/// the excluded names.
fn content(params: &BTreeMap<String, String>, exclude: &[&str]) -> String {
    params
        .iter()
        .filter(|(k, v)| !v.is_empty() && !exclude.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn provider(gateway: &str) -> AlipayProvider {
    let mut config = AlipayConfig::new(
        APP_ID,
        merchant().private_b64.clone(),
        alipay_key().public_b64.clone(),
        "https://relay.example/webhooks/alipay",
    )
    .with_gateway(gateway)
    .with_http(HttpOptions {
        retry_backoff: std::time::Duration::from_millis(1),
        ..HttpOptions::default()
    });
    config.return_url = Some("https://relay.example/paid".into());
    AlipayProvider::new(config, Arc::new(clock())).unwrap()
}

/// A gateway answer: `node` under `{method}_response`, signed over its exact text.
fn answer(method: &str, node: Value, signer: Option<&TestKey>) -> common::Answer {
    let node_text = node.to_string();
    let name = format!("{}_response", method.replace('.', "_"));
    let body = match signer {
        Some(key) => format!(
            r#"{{"{name}":{node_text},"sign":"{}"}}"#,
            key.sign(node_text.as_bytes())
        ),
        None => format!(r#"{{"{name}":{node_text}}}"#),
    };
    (200, vec![], body)
}

/// Checks the request's RSA2 signature with the merchant's public key, then answers.
fn gateway(r: &Recorded) -> common::Answer {
    let params: BTreeMap<String, String> = r.form().into_iter().collect();
    let sign = params.get("sign").cloned().unwrap_or_default();
    if !merchant().verify(content(&params, &["sign"]).as_bytes(), &sign) {
        return answer(
            "error",
            json!({"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature"}),
            None,
        );
    }
    let method = params["method"].clone();
    let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
    let out_trade_no = biz["out_trade_no"].as_str().unwrap_or_default().to_owned();
    let node = match method.as_str() {
        "alipay.trade.precreate" => json!({"code": "10000", "msg": "Success",
            "out_trade_no": out_trade_no, "qr_code": "https://qr.alipay.com/bax01234"}),
        "alipay.trade.query" => match biz["out_trade_no"].as_str() {
            Some(o) if o.ends_with('0') => json!({"code": "40004", "msg": "Business Failed",
                "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"}),
            _ => json!({"code": "10000", "msg": "Success", "out_trade_no": out_trade_no,
                "trade_no": "2026010122001", "trade_status": "TRADE_SUCCESS",
                "total_amount": "88.80"}),
        },
        "alipay.trade.refund" => json!({"code": "10000", "msg": "Success",
            "out_trade_no": out_trade_no, "trade_no": "2026010122001", "fund_change": "Y",
            "refund_fee": biz["refund_amount"]}),
        _ => json!({"code": "40004", "sub_code": "unknown"}),
    };
    answer(&method, node, Some(alipay_key()))
}

#[tokio::test]
async fn qr_checkout_is_signed_with_rsa2_over_sorted_params() {
    let mock = MockServer::start(gateway).await;
    let alipay = provider(&mock.base);
    let order = OrderId::new();
    let mut req = CheckoutRequest::one_off(order.clone(), cny("12.5"), "relay 充值");
    req.presentation = Presentation::QrCode;
    let checkout = alipay.create_checkout(&req).await.unwrap();
    assert_eq!(
        checkout.qr_code.as_deref(),
        Some("https://qr.alipay.com/bax01234")
    );
    assert_eq!(checkout.provider_reference, order.as_str());

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let params: BTreeMap<String, String> = reqs[0].form().into_iter().collect();
    assert_eq!(params["app_id"], APP_ID);
    assert_eq!(params["method"], "alipay.trade.precreate");
    assert_eq!(params["sign_type"], "RSA2");
    assert_eq!(params["charset"], "utf-8");
    assert_eq!(params["version"], "1.0");
    assert_eq!(params["format"], "JSON");
    // 2026-01-01T00:00:00Z in Beijing time.
    assert_eq!(params["timestamp"], "2026-01-01 08:00:00");
    assert_eq!(
        params["notify_url"],
        "https://relay.example/webhooks/alipay"
    );
    let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
    assert_eq!(biz["out_trade_no"], order.as_str());
    assert_eq!(biz["total_amount"], "12.50");
    assert_eq!(biz["subject"], "relay 充值");
    assert!(merchant().verify(content(&params, &["sign"]).as_bytes(), &params["sign"]));
}

#[tokio::test]
async fn page_checkout_is_a_signed_link() {
    let alipay = provider("https://openapi.alipay.example/gateway.do");
    let order = OrderId::new();
    let checkout = alipay
        .create_checkout(&CheckoutRequest::one_off(order.clone(), cny("1"), "top-up"))
        .await
        .unwrap();
    let url = url::Url::parse(checkout.redirect_url.as_deref().unwrap()).unwrap();
    assert_eq!(url.host_str(), Some("openapi.alipay.example"));
    let params: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(params["method"], "alipay.trade.page.pay");
    assert_eq!(params["return_url"], "https://relay.example/paid");
    let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
    assert_eq!(biz["product_code"], "FAST_INSTANT_TRADE_PAY");
    assert_eq!(biz["total_amount"], "1.00");
    assert!(merchant().verify(content(&params, &["sign"]).as_bytes(), &params["sign"]));
}

#[tokio::test]
async fn responses_must_carry_alipays_signature() {
    let forged = MockServer::start(|_| {
        answer(
            "alipay.trade.precreate",
            json!({"code": "10000", "qr_code": "https://evil.example"}),
            Some(merchant()),
        )
    })
    .await;
    let mut req = CheckoutRequest::one_off(OrderId::new(), cny("1"), "x");
    req.presentation = Presentation::QrCode;
    assert!(matches!(
        provider(&forged.base).create_checkout(&req).await,
        Err(PaymentError::BadResponse(_))
    ));
    let unsigned = MockServer::start(|_| {
        answer(
            "alipay.trade.precreate",
            json!({"code": "10000", "qr_code": "https://evil.example"}),
            None,
        )
    })
    .await;
    assert!(matches!(
        provider(&unsigned.base).create_checkout(&req).await,
        Err(PaymentError::BadResponse(_))
    ));
}

#[tokio::test]
async fn bad_checkout_input_is_refused_before_any_request() {
    let mock = MockServer::start(gateway).await;
    let alipay = provider(&mock.base);
    let usd = Money::parse("1", Currency::USD).unwrap();
    for (amount, want_currency_error) in [(usd, true), (cny("0"), false), (cny("1.001"), false)] {
        let mut req = CheckoutRequest::one_off(OrderId::new(), amount, "x");
        req.presentation = Presentation::QrCode;
        let err = alipay.create_checkout(&req).await.unwrap_err();
        assert_eq!(
            matches!(err, PaymentError::UnsupportedCurrency { .. }),
            want_currency_error,
            "{err:?}"
        );
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn query_and_refund() {
    let mock = MockServer::start(gateway).await;
    let alipay = provider(&mock.base);
    let mut order = OrderId::new();
    while order.as_str().ends_with('0') {
        order = OrderId::new();
    }
    let status = alipay
        .query_order(&OrderQuery {
            order_id: order.clone(),
            provider_reference: None,
        })
        .await
        .unwrap();
    assert_eq!(
        status,
        OrderStatus::Paid {
            amount: cny("88.80"),
            reference: "2026010122001".into()
        }
    );
    let unknown: OrderId = format!("ord_{}0", &"ab".repeat(16)[..31]).parse().unwrap();
    assert_eq!(
        alipay
            .query_order(&OrderQuery {
                order_id: unknown,
                provider_reference: None
            })
            .await
            .unwrap(),
        OrderStatus::NotFound
    );
    let refund = alipay
        .refund(&RefundRequest {
            order_id: order.clone(),
            provider_reference: "2026010122001".into(),
            refund_id: "rf_1".into(),
            amount: Some(cny("8.8")),
            payment_amount: cny("88.80"),
            reason: Some("用户申请".into()),
        })
        .await
        .unwrap();
    assert_eq!(refund.amount, cny("8.8"));
    assert!(refund.completed);
    let last = mock.requests().pop().unwrap();
    let params: BTreeMap<String, String> = last.form().into_iter().collect();
    assert_eq!(params["method"], "alipay.trade.refund");
    let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
    assert_eq!(biz["refund_amount"], "8.80");
    assert_eq!(biz["out_request_no"], "rf_1");
    assert_eq!(biz["out_trade_no"], order.as_str());
    assert_eq!(biz["refund_reason"], "用户申请");
}

#[test]
fn keys_are_accepted_as_pem_or_base64_and_garbage_is_refused() {
    let pem = AlipayConfig::new(
        APP_ID,
        merchant().private_pem.clone(),
        alipay_key().public_pem.clone(),
        "https://relay.example/n",
    );
    assert!(AlipayProvider::new(pem, Arc::new(clock())).is_ok());
    for (private, public) in [
        ("not a key".to_owned(), alipay_key().public_b64.clone()),
        (merchant().private_b64.clone(), "AAAA".to_owned()),
        // A private key where the public one belongs.
        (
            merchant().private_b64.clone(),
            merchant().private_b64.clone(),
        ),
    ] {
        let config = AlipayConfig::new(APP_ID, private, public, "https://relay.example/n");
        assert!(matches!(
            AlipayProvider::new(config, Arc::new(clock())),
            Err(PaymentError::Config(_))
        ));
    }
}

// ---- notifications --------------------------------------------------------------------

fn notify_params(
    order: &OrderId,
    notify_id: &str,
    status: &str,
    total: &str,
) -> BTreeMap<String, String> {
    [
        ("app_id", APP_ID),
        ("auth_app_id", APP_ID),
        ("buyer_id", "2088102177846875"),
        ("charset", "utf-8"),
        ("gmt_create", "2026-01-01 07:59:00"),
        ("gmt_payment", "2026-01-01 07:59:30"),
        ("notify_id", notify_id),
        ("notify_time", "2026-01-01 08:00:00"),
        ("notify_type", "trade_status_sync"),
        ("out_trade_no", order.as_str()),
        ("receipt_amount", total),
        ("seller_id", "2088101117955611"),
        ("subject", "relay 充值"),
        ("total_amount", total),
        ("trade_no", "2026010122001"),
        ("trade_status", status),
        ("version", "1.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn signed_body(mut params: BTreeMap<String, String>, signer: &TestKey) -> Vec<u8> {
    let sign = signer.sign(content(&params, &["sign", "sign_type"]).as_bytes());
    params.insert("sign_type".into(), "RSA2".into());
    params.insert("sign".into(), sign);
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish()
        .into_bytes()
}

struct Harness {
    service: WebhookService,
    billing: Arc<SimBilling>,
    order: OrderId,
}

fn harness() -> Harness {
    let order = OrderId::new();
    let billing = SimBilling::with_order(&order, cny("88.80"));
    let shared: SharedClock = Arc::new(clock());
    let processor = WebhookProcessor::new(
        Arc::new(MemoryWebhookEventStore::new()),
        billing.clone(),
        shared,
    );
    Harness {
        service: WebhookService::new(Arc::new(provider("http://127.0.0.1:1")), processor),
        billing,
        order,
    }
}

async fn post(service: &WebhookService, body: Vec<u8>) -> (http::StatusCode, String) {
    let req = http::Request::post("/webhooks/alipay")
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = service.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verified_notification_is_answered_success_and_credited_once() {
    let h = harness();
    let body = signed_body(
        notify_params(&h.order, "n1", "TRADE_SUCCESS", "88.80"),
        alipay_key(),
    );
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = h.service.clone();
            let b = body.clone();
            tokio::spawn(async move { post(&s, b).await })
        })
        .collect();
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert!(
            text == "success" || (status == 503 && text == "fail"),
            "{status} {text}"
        );
    }
    let (status, text) = post(&h.service, body).await;
    assert_eq!((status, text.as_str()), (http::StatusCode::OK, "success"));
    // TRADE_FINISHED follows TRADE_SUCCESS with its own notify_id: no second credit.
    let finished = signed_body(
        notify_params(&h.order, "n2", "TRADE_FINISHED", "88.80"),
        alipay_key(),
    );
    assert_eq!(post(&h.service, finished).await.1, "success");
    assert_eq!(h.billing.credited(), vec![cny("88.80")]);
    assert_eq!(h.billing.state(&h.order), OrderState::Paid);
}

#[tokio::test]
async fn forged_altered_and_misaddressed_notifications_are_refused() {
    let h = harness();
    let params = notify_params(&h.order, "n1", "TRADE_SUCCESS", "88.80");
    let forged = signed_body(params.clone(), merchant());
    let genuine = signed_body(params.clone(), alipay_key());
    let altered = String::from_utf8(genuine.clone())
        .unwrap()
        .replace("total_amount=88.80", "total_amount=88.81")
        .into_bytes();
    assert_ne!(altered, genuine);
    let mut other_app = params.clone();
    other_app.insert("app_id".into(), "2021999999999999".into());
    let misaddressed = signed_body(other_app, alipay_key());
    let unsigned = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish()
        .into_bytes();
    let rsa1 = String::from_utf8(genuine.clone())
        .unwrap()
        .replace("sign_type=RSA2", "sign_type=RSA")
        .into_bytes();
    for body in [
        forged,
        altered,
        misaddressed,
        unsigned,
        rsa1,
        b"%%%".to_vec(),
    ] {
        let (status, text) = post(&h.service, body).await;
        assert_eq!(
            (status, text.as_str()),
            (http::StatusCode::BAD_REQUEST, "fail")
        );
    }
    assert_eq!(h.billing.calls(), 0);
    assert_eq!(post(&h.service, genuine).await.1, "success");
    assert_eq!(h.billing.credited(), vec![cny("88.80")]);
}

#[tokio::test]
async fn amount_mismatch_refund_before_payment_and_refunds() {
    let h = harness();
    // Paid 0.01 for an 88.80 order: acknowledged (Alipay must stop), held, not credited.
    let short = signed_body(
        notify_params(&h.order, "n-short", "TRADE_SUCCESS", "0.01"),
        alipay_key(),
    );
    assert_eq!(post(&h.service, short).await.1, "success");
    assert!(h.billing.credited().is_empty());
    // A refund for a trade that was never paid here: held.
    let mut early = notify_params(&h.order, "n-early", "TRADE_CLOSED", "88.80");
    early.insert("refund_fee".into(), "88.80".into());
    early.insert("gmt_refund".into(), "2026-01-01 09:00:00.123".into());
    assert_eq!(
        post(&h.service, signed_body(early, alipay_key())).await.1,
        "success"
    );
    assert!(h.billing.reversed.lock().is_empty());
    let held = h.billing.held.lock().clone();
    assert!(held[0].contains("AmountMismatch"), "{held:?}");
    assert!(held[1].contains("RefundBeforePayment"), "{held:?}");

    let paid = signed_body(
        notify_params(&h.order, "n-paid", "TRADE_SUCCESS", "88.80"),
        alipay_key(),
    );
    assert_eq!(post(&h.service, paid).await.1, "success");
    let mut partial = notify_params(&h.order, "n-r1", "TRADE_SUCCESS", "88.80");
    partial.insert("refund_fee".into(), "8.80".into());
    assert_eq!(
        post(&h.service, signed_body(partial, alipay_key())).await.1,
        "success"
    );
    let mut full = notify_params(&h.order, "n-r2", "TRADE_CLOSED", "88.80");
    full.insert("refund_fee".into(), "88.80".into());
    assert_eq!(
        post(&h.service, signed_body(full, alipay_key())).await.1,
        "success"
    );
    assert_eq!(*h.billing.reversed.lock(), vec![cny("8.80"), cny("80.00")]);
}

#[tokio::test]
async fn notification_mapping() {
    let alipay = provider("http://127.0.0.1:1");
    let order = OrderId::new();
    let parse = |params: BTreeMap<String, String>| {
        let body = signed_body(params, alipay_key());
        let alipay = &alipay;
        async move { alipay.parse_webhook(&HeaderMap::new(), &body).await }
    };
    let waiting = parse(notify_params(&order, "a", "WAIT_BUYER_PAY", "1.00")).await;
    assert!(waiting.unwrap().events.is_empty());
    let e = parse(notify_params(&order, "b", "TRADE_SUCCESS", "1.00"))
        .await
        .unwrap()
        .events;
    assert_eq!(e[0].kind, PaymentEventKind::PaymentSucceeded);
    assert_eq!(e[0].event_id, "b");
    assert_eq!(e[0].provider_reference, "2026010122001");
    assert_eq!(e[0].order_id, Some(order.clone()));
    assert_eq!(e[0].occurred_at, Some(t0() - chrono::Duration::seconds(30)));
    let closed = parse(notify_params(&order, "c", "TRADE_CLOSED", "1.00"))
        .await
        .unwrap()
        .events;
    assert_eq!(closed[0].kind, PaymentEventKind::CheckoutExpired);
    let mut not_ours = notify_params(&order, "d", "TRADE_SUCCESS", "1.00");
    not_ours.insert("out_trade_no".into(), "20260101-legacy".into());
    assert!(matches!(
        parse(not_ours).await,
        Err(WebhookError::MalformedBody(_))
    ));
    let mut bad_amount = notify_params(&order, "e", "TRADE_SUCCESS", "1.00");
    bad_amount.insert("total_amount".into(), "one yuan".into());
    assert!(matches!(
        parse(bad_amount).await,
        Err(WebhookError::MalformedBody(_))
    ));
    let odd_status = notify_params(&order, "f", "TRADE_PENDING", "1.00");
    assert!(matches!(
        parse(odd_status).await,
        Err(WebhookError::MalformedBody(_))
    ));
}
