//! The example provider: its signature, its checkout link, notifications through relay's
//! webhook service, and its API calls against a local gateway.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{Query, State};
use custom_provider::{epay_sign, EpayConfig, EpayProvider};
use parking_lot::Mutex;
use relay_core::{Currency, Money, OrderId, SystemClock};
use relay_payments::store::memory::MemoryWebhookEventStore;
use relay_payments::{
    decide, CheckoutRequest, Decision, HandleOutcome, HandlerError, OrderQuery, OrderSnapshot,
    OrderState, OrderStatus, PaymentEvent, PaymentEventHandler, PaymentProvider, RefundRequest,
    WebhookProcessor, WebhookService,
};
use tower::ServiceExt;

const KEY: &str = "epaykey123";

fn cny(s: &str) -> Money {
    Money::parse(s, Currency::CNY).unwrap()
}

fn config(gateway: &str) -> EpayConfig {
    EpayConfig {
        gateway: gateway.into(),
        pid: "1001".into(),
        key: KEY.into(),
        channel: "alipay".into(),
        notify_url: "https://relay.example/webhooks/epay".into(),
        return_url: "https://relay.example/paid".into(),
    }
}

#[test]
fn signature_matches_an_independent_md5() {
    // python3: hashlib.md5(("money=12.50&name=relay top-up&notify_url=...&type=alipay"
    //   + "epaykey123").encode()).hexdigest()
    let params: BTreeMap<String, String> = [
        ("pid", "1001"),
        ("type", "alipay"),
        ("out_trade_no", "ord_0123456789abcdef0123456789abcdef"),
        ("notify_url", "https://relay.example/webhooks/epay"),
        ("return_url", "https://relay.example/paid"),
        ("name", "relay top-up"),
        ("money", "12.50"),
        ("sign_type", "MD5"),
        ("sitename", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(epay_sign(&params, KEY), "04f9eb93721c4aa6b0a8c1f357ce2fcd");
}

#[tokio::test]
async fn checkout_is_a_signed_link() {
    let provider = EpayProvider::new(config("https://pay.example.com")).unwrap();
    let order = OrderId::new();
    let checkout = provider
        .create_checkout(&CheckoutRequest::one_off(
            order.clone(),
            cny("12.5"),
            "relay top-up",
        ))
        .await
        .unwrap();
    let url = url::Url::parse(&checkout.redirect_url.unwrap()).unwrap();
    assert_eq!(url.path(), "/submit.php");
    let params: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(params["money"], "12.50");
    assert_eq!(params["out_trade_no"], order.as_str());
    assert_eq!(params["sign_type"], "MD5");
    assert_eq!(params["sign"], epay_sign(&params, KEY));
    let usd = Money::parse("1", Currency::USD).unwrap();
    assert!(provider
        .create_checkout(&CheckoutRequest::one_off(order, usd, "x"))
        .await
        .is_err());
}

#[derive(Debug, Default)]
struct Billing {
    orders: Mutex<HashMap<OrderId, OrderSnapshot>>,
    credited: Mutex<Vec<Money>>,
    held: Mutex<usize>,
}

#[async_trait]
impl PaymentEventHandler for Billing {
    async fn handle(&self, event: &PaymentEvent) -> Result<HandleOutcome, HandlerError> {
        let mut orders = self.orders.lock();
        let order = event.order_id.as_ref().and_then(|id| orders.get_mut(id));
        match (decide(order.as_deref(), event), order) {
            (Decision::Credit(m), Some(o)) => {
                o.state = OrderState::Paid;
                self.credited.lock().push(m);
                Ok(HandleOutcome::Applied)
            }
            (Decision::Hold(r), _) => {
                *self.held.lock() += 1;
                Ok(HandleOutcome::HeldForReview(format!("{r:?}")))
            }
            _ => Ok(HandleOutcome::Ignored),
        }
    }
}

fn notification(order: &OrderId, trade_no: &str, money: &str, key: &str) -> String {
    let mut params: BTreeMap<String, String> = [
        ("pid", "1001"),
        ("trade_no", trade_no),
        ("out_trade_no", order.as_str()),
        ("type", "alipay"),
        ("name", "relay top-up"),
        ("money", money),
        ("trade_status", "TRADE_SUCCESS"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let sign = epay_sign(&params, key);
    params.insert("sign".into(), sign);
    params.insert("sign_type".into(), "MD5".into());
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish()
}

async fn call(service: &WebhookService, req: http::Request<String>) -> (u16, String) {
    let resp = service.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn notifications_by_get_or_post_are_verified_and_credited_once() {
    let order = OrderId::new();
    let billing = Arc::new(Billing::default());
    billing.orders.lock().insert(
        order.clone(),
        OrderSnapshot {
            state: OrderState::Pending,
            amount: cny("12.50"),
            refunded: cny("0"),
        },
    );
    let processor = WebhookProcessor::new(
        Arc::new(MemoryWebhookEventStore::new()),
        billing.clone(),
        Arc::new(SystemClock),
    );
    let provider = Arc::new(EpayProvider::new(config("https://pay.example.com")).unwrap());
    let service = WebhookService::new(provider, processor).with_query_notifications(true);

    let forged = notification(&order, "T1", "12.50", "guessed-key");
    let get = |q: &str| {
        http::Request::get(format!("/webhooks/epay?{q}"))
            .body(String::new())
            .unwrap()
    };
    assert_eq!(call(&service, get(&forged)).await, (400, "fail".into()));
    let short = notification(&order, "T0", "0.01", KEY);
    assert_eq!(call(&service, get(&short)).await, (200, "success".into()));
    assert_eq!(*billing.held.lock(), 1);

    let genuine = notification(&order, "T1", "12.50", KEY);
    for _ in 0..5 {
        assert_eq!(call(&service, get(&genuine)).await, (200, "success".into()));
        let post = http::Request::post("/webhooks/epay")
            .body(genuine.clone())
            .unwrap();
        assert_eq!(call(&service, post).await, (200, "success".into()));
    }
    assert_eq!(*billing.credited.lock(), vec![cny("12.50")]);
}

/// (act, form fields) of each API call.
type Seen = Vec<(String, HashMap<String, String>)>;

#[derive(Clone, Default)]
struct Gateway {
    seen: Arc<Mutex<Seen>>,
}

async fn api(
    State(g): State<Gateway>,
    Query(q): Query<HashMap<String, String>>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    let act = q.get("act").cloned().unwrap_or_default();
    g.seen.lock().push((act.clone(), form.clone()));
    if form.get("key").map(String::as_str) != Some(KEY) {
        return axum::Json(serde_json::json!({"code": -2, "msg": "KEY校验失败"}));
    }
    axum::Json(match act.as_str() {
        "order" if form["out_trade_no"].ends_with('0') => {
            serde_json::json!({"code": -1, "msg": "订单号不存在"})
        }
        "order" => {
            serde_json::json!({"code": 1, "msg": "查询订单号成功！", "trade_no": "2026010100001",
            "out_trade_no": form["out_trade_no"], "money": "12.50", "status": 1})
        }
        "refund" => serde_json::json!({"code": 1, "msg": "退款成功"}),
        _ => serde_json::json!({"code": -5, "msg": "unknown act"}),
    })
}

#[tokio::test]
async fn query_and_refund_against_a_local_gateway() {
    let gateway = Gateway::default();
    let app = axum::Router::new()
        .route("/api.php", axum::routing::post(api))
        .with_state(gateway.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let provider = EpayProvider::new(config(&base)).unwrap();
    let mut paid = OrderId::new();
    while paid.as_str().ends_with('0') {
        paid = OrderId::new();
    }
    let status = provider
        .query_order(&OrderQuery {
            order_id: paid.clone(),
            provider_reference: None,
        })
        .await
        .unwrap();
    assert_eq!(
        status,
        OrderStatus::Paid {
            amount: cny("12.50"),
            reference: "2026010100001".into()
        }
    );
    let unknown: OrderId = "ord_0123456789abcdef0123456789abcde0".parse().unwrap();
    let status = provider
        .query_order(&OrderQuery {
            order_id: unknown,
            provider_reference: None,
        })
        .await
        .unwrap();
    assert_eq!(status, OrderStatus::NotFound);
    let refund = provider
        .refund(&RefundRequest {
            order_id: paid,
            provider_reference: "2026010100001".into(),
            refund_id: "rf1".into(),
            amount: Some(cny("2")),
            payment_amount: cny("12.50"),
            reason: None,
        })
        .await
        .unwrap();
    assert_eq!(refund.amount, cny("2"));
    let seen = gateway.seen.lock().clone();
    assert_eq!(seen[2].0, "refund");
    assert_eq!(seen[2].1["money"], "2.00");
    assert_eq!(seen[2].1["trade_no"], "2026010100001");
    assert_eq!(seen[2].1["pid"], "1001");
    server.abort();
}
