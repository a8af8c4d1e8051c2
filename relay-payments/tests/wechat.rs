//! WeChat Pay v3: request signatures, signed responses, encrypted notifications, query and
//! refund, against a local API that checks signatures with an independent RSA library.
#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use common::keys::{keys, TestKey};
use common::{clock, t0, MockServer, Recorded, SimBilling};
use http::HeaderMap;
use relay_core::{Currency, Money, OrderId, SharedClock};
use relay_payments::store::memory::MemoryWebhookEventStore;
use relay_payments::wechat::{aes_256_gcm_open, WechatPayConfig, WechatPayProvider};
use relay_payments::{
    CheckoutRequest, HttpOptions, OrderQuery, OrderState, OrderStatus, PaymentError,
    PaymentEventKind, PaymentProvider, RefundRequest, WebhookError, WebhookProcessor,
    WebhookService,
};
use serde_json::{json, Value};
use tower::ServiceExt;

const MCHID: &str = "1900000109";
const APPID: &str = "wxd678efh567hg6787";
const APIV3_KEY: &str = "0123456789abcdef0123456789abcdef";
const PLATFORM_SERIAL: &str = "PUB_KEY_ID_0000000001";

fn cny(s: &str) -> Money {
    Money::parse(s, Currency::CNY).unwrap()
}

fn merchant() -> &'static TestKey {
    &keys().0
}

fn platform() -> &'static TestKey {
    &keys().1
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn aes_gcm_known_vectors() {
    // NIST GCM test case 14: zero key, zero IV, one zero block.
    let ct =
        hex::decode("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919").unwrap();
    assert_eq!(
        aes_256_gcm_open(&[0; 32], &[0; 12], b"", &ct).unwrap(),
        vec![0u8; 16]
    );
    // WeChat-shaped: ASCII APIv3 key and nonce, computed with Python's `cryptography`:
    // AESGCM(b"0123456789abcdef0123456789abcdef").encrypt(b"abcdefghijkl",
    //     b'{"out_trade_no":"x"}', b"transaction").hex()
    let ct =
        hex::decode("12eea6cabfba19a10278974e64f67a057e4999620aec815c1d07d33cd196159c1815a496")
            .unwrap();
    let plain =
        aes_256_gcm_open(APIV3_KEY.as_bytes(), b"abcdefghijkl", b"transaction", &ct).unwrap();
    assert_eq!(plain, br#"{"out_trade_no":"x"}"#);
    // Wrong associated data, a flipped bit, a short nonce: all refused.
    assert_eq!(
        aes_256_gcm_open(APIV3_KEY.as_bytes(), b"abcdefghijkl", b"refund", &ct),
        Err(WebhookError::Decrypt)
    );
    let mut flipped = ct.clone();
    flipped[0] ^= 1;
    assert!(aes_256_gcm_open(
        APIV3_KEY.as_bytes(),
        b"abcdefghijkl",
        b"transaction",
        &flipped
    )
    .is_err());
    assert!(aes_256_gcm_open(APIV3_KEY.as_bytes(), b"short", b"transaction", &ct).is_err());
}

fn provider(base: &str) -> WechatPayProvider {
    let config = WechatPayConfig::new(
        MCHID,
        APPID,
        "MERCHANT_SERIAL_1",
        merchant().private_pem.clone(),
        platform().public_pem.clone(),
        PLATFORM_SERIAL,
        APIV3_KEY,
        "https://relay.example/webhooks/wechat",
    )
    .with_api_base(base)
    .with_http(HttpOptions {
        retry_backoff: std::time::Duration::from_millis(1),
        ..HttpOptions::default()
    });
    WechatPayProvider::new(config, Arc::new(clock())).unwrap()
}

/// Headers WeChat Pay signs a response or notification with.
fn signed_headers(
    body: &[u8],
    timestamp: i64,
    signer: &TestKey,
    serial: &str,
) -> Vec<(String, String)> {
    let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
    let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    vec![
        ("wechatpay-timestamp".into(), timestamp.to_string()),
        ("wechatpay-nonce".into(), nonce.into()),
        ("wechatpay-signature".into(), signer.sign(&message)),
        ("wechatpay-serial".into(), serial.into()),
    ]
}

/// Parse `WECHATPAY2-SHA256-RSA2048 k="v",...` and check it with the merchant public key.
fn authorization_is_valid(r: &Recorded) -> bool {
    let Some(auth) = r.header("authorization") else {
        return false;
    };
    let Some(rest) = auth.strip_prefix("WECHATPAY2-SHA256-RSA2048 ") else {
        return false;
    };
    let fields: HashMap<&str, &str> = rest
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('"')))
        .collect();
    if fields.get("mchid") != Some(&MCHID) || fields.get("serial_no") != Some(&"MERCHANT_SERIAL_1")
    {
        return false;
    }
    let message = format!(
        "{}\n{}\n{}\n{}\n{}\n",
        r.method,
        r.uri,
        fields["timestamp"],
        fields["nonce_str"],
        String::from_utf8_lossy(&r.body)
    );
    fields["timestamp"] == t0().timestamp().to_string()
        && merchant().verify(message.as_bytes(), fields["signature"])
}

fn api(r: &Recorded) -> common::Answer {
    if !authorization_is_valid(r) {
        return (
            401,
            vec![],
            json!({"code": "SIGN_ERROR", "message": "签名错误"}).to_string(),
        );
    }
    let (status, body) = if r.uri == "/v3/pay/transactions/native" {
        (
            200,
            json!({"code_url": "weixin://wxpay/bizpayurl?pr=p4lpSuKzz"}),
        )
    } else if r.uri == "/v3/refund/domestic/refunds" {
        let req = r.json();
        (
            200,
            json!({"refund_id": "50000000382019052709732678859", "out_refund_no": req["out_refund_no"],
                   "status": "PROCESSING", "amount": req["amount"]}),
        )
    } else if let Some(rest) = r.uri.strip_prefix("/v3/pay/transactions/out-trade-no/") {
        let (no, _) = rest.split_once('?').unwrap();
        let state = match &no[..1] {
            "0" => {
                return (
                    404,
                    vec![],
                    json!({"code": "ORDER_NOT_EXIST", "message": "订单不存在"}).to_string(),
                )
            }
            "1" | "2" | "3" => "SUCCESS",
            "4" | "5" | "6" => "NOTPAY",
            _ => "CLOSED",
        };
        (
            200,
            json!({"appid": APPID, "mchid": MCHID, "out_trade_no": no, "trade_state": state,
                   "transaction_id": "4200000000202601010000000001",
                   "amount": {"total": 8880, "currency": "CNY"}}),
        )
    } else {
        return (404, vec![], "{}".into());
    };
    let text = body.to_string();
    (
        status,
        signed_headers(
            text.as_bytes(),
            t0().timestamp(),
            platform(),
            PLATFORM_SERIAL,
        ),
        text,
    )
}

#[tokio::test]
async fn native_order_is_signed_and_answers_are_verified() {
    let mock = MockServer::start(api).await;
    let wechat = provider(&mock.base);
    let order = OrderId::new();
    let checkout = wechat
        .create_checkout(&CheckoutRequest::one_off(
            order.clone(),
            cny("12.50"),
            "relay 充值",
        ))
        .await
        .unwrap();
    assert_eq!(
        checkout.qr_code.as_deref(),
        Some("weixin://wxpay/bizpayurl?pr=p4lpSuKzz")
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert!(authorization_is_valid(&reqs[0]));
    let body = reqs[0].json();
    assert_eq!(body["appid"], APPID);
    assert_eq!(body["mchid"], MCHID);
    assert_eq!(body["description"], "relay 充值");
    assert_eq!(body["out_trade_no"], &order.as_str()[4..]);
    assert_eq!(body["out_trade_no"].as_str().unwrap().len(), 32);
    assert_eq!(body["notify_url"], "https://relay.example/webhooks/wechat");
    assert_eq!(body["amount"], json!({"total": 1250, "currency": "CNY"}));
}

#[tokio::test]
async fn untrusted_answers_are_refused() {
    let order = OrderId::new();
    let req = CheckoutRequest::one_off(order, cny("1"), "x");
    for (signer, serial) in [
        (merchant(), PLATFORM_SERIAL),
        (platform(), "SOME_OTHER_SERIAL"),
    ] {
        let mock = MockServer::start(move |_| {
            let text = json!({"code_url": "weixin://evil"}).to_string();
            (
                200,
                signed_headers(text.as_bytes(), t0().timestamp(), signer, serial),
                text,
            )
        })
        .await;
        assert!(matches!(
            provider(&mock.base).create_checkout(&req).await,
            Err(PaymentError::BadResponse(_))
        ));
    }
    let unsigned =
        MockServer::start(|_| (200, vec![], json!({"code_url": "weixin://x"}).to_string())).await;
    assert!(matches!(
        provider(&unsigned.base).create_checkout(&req).await,
        Err(PaymentError::BadResponse(_))
    ));
}

fn order_starting_with(c: char) -> OrderId {
    format!("ord_{c}{}", "a".repeat(31)).parse().unwrap()
}

#[tokio::test]
async fn query_maps_trade_states() {
    let mock = MockServer::start(api).await;
    let wechat = provider(&mock.base);
    let q = |c| OrderQuery {
        order_id: order_starting_with(c),
        provider_reference: None,
    };
    assert_eq!(
        wechat.query_order(&q('1')).await.unwrap(),
        OrderStatus::Paid {
            amount: cny("88.80"),
            reference: "4200000000202601010000000001".into()
        }
    );
    assert_eq!(
        wechat.query_order(&q('4')).await.unwrap(),
        OrderStatus::Pending
    );
    assert_eq!(
        wechat.query_order(&q('9')).await.unwrap(),
        OrderStatus::Closed
    );
    assert_eq!(
        wechat.query_order(&q('0')).await.unwrap(),
        OrderStatus::NotFound
    );
    let uri = &mock.requests()[0].uri;
    assert_eq!(
        uri,
        &format!(
            "/v3/pay/transactions/out-trade-no/1{}?mchid={MCHID}",
            "a".repeat(31)
        )
    );
}

#[tokio::test]
async fn refund_posts_amounts_in_fen_and_validates_first() {
    let mock = MockServer::start(api).await;
    let wechat = provider(&mock.base);
    let order = OrderId::new();
    let mut req = RefundRequest {
        order_id: order.clone(),
        provider_reference: "4200000000202601010000000001".into(),
        refund_id: "rf_1".into(),
        amount: Some(cny("8.80")),
        payment_amount: cny("88.80"),
        reason: Some("用户申请".into()),
    };
    let result = wechat.refund(&req).await.unwrap();
    assert_eq!(result.refund_reference, "50000000382019052709732678859");
    assert_eq!(result.amount, cny("8.80"));
    assert!(!result.completed, "PROCESSING is not done yet");
    let body = mock.requests()[0].json();
    assert_eq!(body["out_trade_no"], &order.as_str()[4..]);
    assert_eq!(body["out_refund_no"], "rf_1");
    assert_eq!(
        body["amount"],
        json!({"refund": 880, "total": 8880, "currency": "CNY"})
    );
    assert_eq!(body["reason"], "用户申请");
    req.refund_id = "bad id with spaces".into();
    assert!(matches!(
        wechat.refund(&req).await,
        Err(PaymentError::InvalidRequest(_))
    ));
    req.refund_id = "rf_2".into();
    req.amount = Some(Money::parse("1", Currency::USD).unwrap());
    assert!(matches!(
        wechat.refund(&req).await,
        Err(PaymentError::UnsupportedCurrency { .. })
    ));
    assert_eq!(mock.requests().len(), 1);
}

// ---- notifications --------------------------------------------------------------------

fn encrypt(key: &str, plain: &Value, aad: &str) -> Value {
    use ring::aead;
    let nonce = "fdasflkja484";
    let key =
        aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, key.as_bytes()).unwrap());
    let mut buf = plain.to_string().into_bytes();
    key.seal_in_place_append_tag(
        aead::Nonce::try_assume_unique_for_key(nonce.as_bytes()).unwrap(),
        aead::Aad::from(aad.as_bytes()),
        &mut buf,
    )
    .unwrap();
    json!({"algorithm": "AEAD_AES_256_GCM", "ciphertext": b64(&buf), "associated_data": aad,
           "original_type": "transaction", "nonce": nonce})
}

fn transaction(order: &OrderId, total: i64) -> Value {
    json!({"mchid": MCHID, "appid": APPID, "out_trade_no": &order.as_str()[4..],
           "transaction_id": "4200000000202601010000000001", "trade_type": "NATIVE",
           "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
           "success_time": "2026-01-01T07:59:30+08:00",
           "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
           "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"}})
}

fn refund_resource(order: &OrderId, refund: i64, total: i64) -> Value {
    json!({"mchid": MCHID, "out_trade_no": &order.as_str()[4..],
           "transaction_id": "4200000000202601010000000001", "out_refund_no": "rf_1",
           "refund_id": "50000000382019052709732678859", "refund_status": "SUCCESS",
           "success_time": "2026-01-01T09:00:00+08:00",
           "amount": {"total": total, "refund": refund, "payer_total": total, "payer_refund": refund}})
}

fn notification(id: &str, event_type: &str, resource: Value) -> Vec<u8> {
    json!({"id": id, "create_time": "2026-01-01T08:00:00+08:00", "resource_type": "encrypt-resource",
           "event_type": event_type, "summary": "支付成功", "resource": resource})
    .to_string()
    .into_bytes()
}

fn headers_for(body: &[u8], timestamp: i64, signer: &TestKey) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in signed_headers(body, timestamp, signer, PLATFORM_SERIAL) {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
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

async fn post(
    service: &WebhookService,
    headers: HeaderMap,
    body: Vec<u8>,
) -> (http::StatusCode, String) {
    let mut req = http::Request::post("/webhooks/wechat")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    *req.headers_mut() = headers;
    let resp = service.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

const OK: &str = r#"{"code":"SUCCESS","message":"成功"}"#;
const FAIL: &str = r#"{"code":"FAIL","message":"失败"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verified_notification_is_credited_once_even_100_times_concurrently() {
    let h = harness();
    let body = notification(
        "n-1",
        "TRANSACTION.SUCCESS",
        encrypt(APIV3_KEY, &transaction(&h.order, 8880), "transaction"),
    );
    let headers = headers_for(&body, t0().timestamp(), platform());
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (s, hd, b) = (h.service.clone(), headers.clone(), body.clone());
            tokio::spawn(async move { post(&s, hd, b).await })
        })
        .collect();
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert!(
            text == OK || (status == 503 && text == FAIL),
            "{status} {text}"
        );
    }
    assert_eq!(
        post(&h.service, headers, body).await,
        (http::StatusCode::OK, OK.to_owned())
    );
    assert_eq!(h.billing.calls(), 1);
    assert_eq!(h.billing.credited(), vec![cny("88.80")]);
    assert_eq!(h.billing.state(&h.order), OrderState::Paid);
}

#[tokio::test]
async fn forged_stale_altered_misaddressed_and_undecryptable_notifications_are_refused() {
    let h = harness();
    let resource = encrypt(APIV3_KEY, &transaction(&h.order, 8880), "transaction");
    let body = notification("n-1", "TRANSACTION.SUCCESS", resource);
    let now = t0().timestamp();
    let mut altered = body.clone();
    let pos = altered.windows(6).position(|w| w == b"\"n-1\",").unwrap();
    altered[pos + 1] = b'm';
    let mut other_merchant = transaction(&h.order, 8880);
    other_merchant["mchid"] = json!("1900000999");
    let misaddressed = notification(
        "n-2",
        "TRANSACTION.SUCCESS",
        encrypt(APIV3_KEY, &other_merchant, "transaction"),
    );
    let wrong_key = notification(
        "n-3",
        "TRANSACTION.SUCCESS",
        encrypt(
            "ffffffffffffffffffffffffffffffff",
            &transaction(&h.order, 8880),
            "transaction",
        ),
    );
    let mut wrong_serial = headers_for(&body, now, platform());
    wrong_serial.insert("wechatpay-serial", "OTHER".parse().unwrap());
    let cases: Vec<(HeaderMap, Vec<u8>)> = vec![
        (headers_for(&body, now, merchant()), body.clone()),
        (headers_for(&body, now - 301, platform()), body.clone()),
        (headers_for(&body, now + 301, platform()), body.clone()),
        (headers_for(&body, now, platform()), altered),
        (wrong_serial, body.clone()),
        (HeaderMap::new(), body.clone()),
        (headers_for(&misaddressed, now, platform()), misaddressed),
        (headers_for(&wrong_key, now, platform()), wrong_key),
    ];
    for (headers, body) in cases {
        assert_eq!(
            post(&h.service, headers, body).await,
            (http::StatusCode::BAD_REQUEST, FAIL.to_owned())
        );
    }
    assert_eq!(h.billing.calls(), 0);
    // A delivery at the edge of the window is accepted.
    let edge = headers_for(&body, now - 300, platform());
    assert_eq!(post(&h.service, edge, body).await.1, OK);
    assert_eq!(h.billing.credited(), vec![cny("88.80")]);
}

#[tokio::test]
async fn a_rotated_platform_key_is_trusted_under_its_own_serial_only() {
    let config = WechatPayConfig::new(
        MCHID,
        APPID,
        "MERCHANT_SERIAL_1",
        merchant().private_pem.clone(),
        platform().public_pem.clone(),
        PLATFORM_SERIAL,
        APIV3_KEY,
        "https://relay.example/webhooks/wechat",
    )
    // The "new" platform key here is the merchant test key, under serial NEW.
    .with_additional_platform_key("NEW", merchant().public_b64.clone());
    let wechat = WechatPayProvider::new(config, Arc::new(clock())).unwrap();
    let order = OrderId::new();
    let body = notification(
        "n-rot",
        "TRANSACTION.SUCCESS",
        encrypt(APIV3_KEY, &transaction(&order, 8880), "transaction"),
    );
    let with = |signer: &TestKey, serial: &str| {
        let mut h = HeaderMap::new();
        for (k, v) in signed_headers(&body, t0().timestamp(), signer, serial) {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    };
    assert!(wechat
        .parse_webhook(&with(platform(), PLATFORM_SERIAL), &body)
        .await
        .is_ok());
    assert!(wechat
        .parse_webhook(&with(merchant(), "NEW"), &body)
        .await
        .is_ok());
    assert_eq!(
        wechat
            .parse_webhook(&with(merchant(), PLATFORM_SERIAL), &body)
            .await,
        Err(WebhookError::BadSignature)
    );
    assert_eq!(
        wechat.parse_webhook(&with(platform(), "NEW"), &body).await,
        Err(WebhookError::BadSignature)
    );
}

#[tokio::test]
async fn amount_mismatch_refund_before_payment_and_refund_after() {
    let h = harness();
    let now = t0().timestamp();
    let send = |id: &str, event_type: &str, resource: Value| {
        let body = notification(id, event_type, resource);
        (headers_for(&body, now, platform()), body)
    };
    let (hd, b) = send(
        "n-short",
        "TRANSACTION.SUCCESS",
        encrypt(APIV3_KEY, &transaction(&h.order, 1), "transaction"),
    );
    assert_eq!(post(&h.service, hd, b).await.1, OK);
    let (hd, b) = send(
        "n-early",
        "REFUND.SUCCESS",
        encrypt(APIV3_KEY, &refund_resource(&h.order, 880, 8880), "refund"),
    );
    assert_eq!(post(&h.service, hd, b).await.1, OK);
    assert!(h.billing.credited().is_empty());
    assert!(h.billing.reversed.lock().is_empty());
    let held = h.billing.held.lock().clone();
    assert!(
        held[0].contains("AmountMismatch") && held[1].contains("RefundBeforePayment"),
        "{held:?}"
    );

    let (hd, b) = send(
        "n-paid",
        "TRANSACTION.SUCCESS",
        encrypt(APIV3_KEY, &transaction(&h.order, 8880), "transaction"),
    );
    assert_eq!(post(&h.service, hd, b).await.1, OK);
    let (hd, b) = send(
        "n-refund",
        "REFUND.SUCCESS",
        encrypt(APIV3_KEY, &refund_resource(&h.order, 880, 8880), "refund"),
    );
    assert_eq!(post(&h.service, hd, b).await.1, OK);
    assert_eq!(*h.billing.reversed.lock(), vec![cny("8.80")]);
}

#[tokio::test]
async fn notification_mapping() {
    let wechat = provider("http://127.0.0.1:1");
    let order = OrderId::new();
    let parse = |body: Vec<u8>| {
        let headers = headers_for(&body, t0().timestamp(), platform());
        let wechat = &wechat;
        async move { wechat.parse_webhook(&headers, &body).await }
    };
    let e = parse(notification(
        "n",
        "TRANSACTION.SUCCESS",
        encrypt(APIV3_KEY, &transaction(&order, 8880), "transaction"),
    ))
    .await
    .unwrap()
    .events;
    assert_eq!(e[0].kind, PaymentEventKind::PaymentSucceeded);
    assert_eq!(e[0].order_id, Some(order.clone()));
    assert_eq!(e[0].event_id, "n");
    assert_eq!(e[0].provider_reference, "4200000000202601010000000001");
    assert_eq!(e[0].occurred_at, Some(t0() - chrono::Duration::seconds(30)));
    let full = parse(notification(
        "r",
        "REFUND.SUCCESS",
        encrypt(APIV3_KEY, &refund_resource(&order, 8880, 8880), "refund"),
    ))
    .await
    .unwrap()
    .events;
    assert_eq!(
        full[0].kind,
        PaymentEventKind::Refunded {
            cumulative: false,
            full: true
        }
    );
    let abnormal = parse(notification(
        "a",
        "REFUND.ABNORMAL",
        encrypt(APIV3_KEY, &refund_resource(&order, 1, 8880), "refund"),
    ))
    .await
    .unwrap();
    assert!(abnormal.events.is_empty());
    let mut foreign = transaction(&order, 1);
    foreign["out_trade_no"] = json!("legacy-123");
    assert!(matches!(
        parse(notification(
            "f",
            "TRANSACTION.SUCCESS",
            encrypt(APIV3_KEY, &foreign, "transaction")
        ))
        .await,
        Err(WebhookError::MalformedBody(_))
    ));
}
