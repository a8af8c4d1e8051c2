//! Every `/api` route answers malformed input with a 4xx JSON error, never a 5xx; the
//! router and the OpenAPI document list the same routes; security headers and CORS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use api_support::Harness;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use relay_auth::Role;
use relay_server::api::ROUTES;
use serde_json::{json, Value};

/// Concrete path for a route template, with `{…}` replaced by `seg`.
fn path(template: &str, seg: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}').unwrap() + i;
        out.push_str(seg);
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

fn assert_json_4xx(status: StatusCode, body: &[u8], what: &str) {
    assert!(
        status.is_client_error(),
        "{what}: expected 4xx, got {status}: {}",
        String::from_utf8_lossy(body)
    );
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|_| {
        panic!(
            "{what}: body is not JSON: {}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(
        v["error"]["code"].is_string(),
        "{what}: no error.code in {v}"
    );
    assert!(
        v["error"]["message"].is_string(),
        "{what}: no error.message in {v}"
    );
}

fn request(
    method: &str,
    uri: &str,
    token: Option<&str>,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    if let Some(c) = ctype {
        r = r.header("content-type", c);
    }
    r.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn every_route_answers_malformed_input_with_a_4xx_json_error() {
    let h = Harness::memory().await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let (user, _) = h.user("ann@example.com").await;
    let bad_bodies: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("truncated JSON", Some("application/json"), b"{\"email\":".to_vec()),
        ("not an object", Some("application/json"), b"[1,2,3]".to_vec()),
        ("wrong types", Some("application/json"), br#"{"email":5,"password":[],"token":{},"name":7,"code":false,"amount":1.5,"currency":9,"provider":null,"plan_id":3,"status":1,"role":2,"reason":[],"count":"x","when":1,"order_id":2,"reference":3,"confirm_email":4,"current_password":1,"new_password":2,"grace_seconds":"x","at_period_end":"x","price":1}"#.to_vec()),
        ("unknown field only", Some("application/json"), br#"{"zzz":1}"#.to_vec()),
        ("empty body", Some("application/json"), Vec::new()),
        ("form body", Some("application/x-www-form-urlencoded"), b"a=b".to_vec()),
        ("no content type", None, b"{}".to_vec()),
        ("invalid UTF-8", Some("application/json"), vec![0xff, 0xfe, b'{']),
        ("oversized", Some("application/json"), {
            let mut b = b"{\"name\":\"".to_vec();
            b.extend(std::iter::repeat_n(b'a', 200 * 1024));
            b.extend(b"\"}");
            b
        }),
    ];
    let segments = [
        "not-an-id",
        "usr_zz",
        "%00",
        "ord_00000000000000000000000000000000",
    ];
    let queries = [
        "",
        "?from=yesterday",
        "?format=xml",
        "?limit=-1&zzz=1",
        "?email=5&id=6",
    ];
    let mut checked = 0;
    for (method, template) in ROUTES {
        for token in [None, Some(user.as_str()), Some(admin.as_str())] {
            if *template == "/api/user/logout" && token.is_some() {
                continue; // would end the sessions the rest of the table uses
            }
            for seg in segments {
                let uri = path(template, seg);
                if *method == "GET" || *method == "DELETE" && !template.ends_with("/account") {
                    for q in queries {
                        let (status, _, body) = h
                            .send(request(
                                method,
                                &format!("{uri}{q}"),
                                token,
                                None,
                                Vec::new(),
                            ))
                            .await;
                        assert!(!status.is_server_error(), "{method} {uri}{q}: {status}");
                        if status.is_client_error() {
                            assert_json_4xx(status, &body, &format!("{method} {uri}{q}"));
                        }
                        checked += 1;
                    }
                    continue;
                }
                for (what, ctype, body) in &bad_bodies {
                    let (status, _, resp) = h
                        .send(request(method, &uri, token, *ctype, body.clone()))
                        .await;
                    let label = format!(
                        "{method} {uri} [{what}] as {}",
                        token.map_or("anonymous", |t| if t == admin { "admin" } else { "user" })
                    );
                    // Logout and a few no-body actions ignore the body; anything else
                    // must refuse it with a JSON 4xx.
                    assert!(
                        !status.is_server_error(),
                        "{label}: {status} {}",
                        String::from_utf8_lossy(&resp)
                    );
                    if status.is_client_error() {
                        assert_json_4xx(status, &resp, &label);
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1000, "only {checked} requests checked");
    // The sessions survived the whole table, so authenticated handlers were reached.
    h.ok("GET", "/api/user/profile", Some(&user), None).await;
    h.ok("GET", "/api/user/profile", Some(&admin), None).await;
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let h = Harness::memory().await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let (user, _) = h.user("ann@example.com").await;
    let cases: Vec<(&str, &str, Option<&str>, Value, &str)> = vec![
        (
            "POST",
            "/api/user/register",
            None,
            json!({"email": "nope", "password": "long enough password"}),
            "email",
        ),
        (
            "POST",
            "/api/user/register",
            None,
            json!({"email": "a@example.com", "password": "short"}),
            "password",
        ),
        (
            "POST",
            "/api/user/register",
            None,
            json!({"email": "a@example.com"}),
            "password",
        ),
        (
            "POST",
            "/api/user/register",
            None,
            json!({"email": 5, "password": "long enough password"}),
            "email",
        ),
        (
            "POST",
            "/api/user/top-up",
            Some(&user),
            json!({"provider": "stripe", "amount": "abc", "currency": "USD"}),
            "amount",
        ),
        (
            "POST",
            "/api/user/top-up",
            Some(&user),
            json!({"provider": "stripe", "amount": "5", "currency": "XXX"}),
            "currency",
        ),
        (
            "POST",
            "/api/user/top-up",
            Some(&user),
            json!({"provider": "stripe", "amount": "-5", "currency": "USD"}),
            "amount",
        ),
        (
            "POST",
            "/api/user/top-up",
            Some(&user),
            json!({"provider": "stripe", "amount": "5.001", "currency": "USD"}),
            "amount",
        ),
        (
            "POST",
            "/api/user/top-up",
            Some(&user),
            json!({"provider": "paypal", "amount": "5", "currency": "USD"}),
            "provider",
        ),
        (
            "POST",
            "/api/user/checkout",
            Some(&user),
            json!({"provider": "stripe", "plan_id": "x"}),
            "plan_id",
        ),
        (
            "POST",
            "/api/user/redeem",
            Some(&user),
            json!({"code": "0000"}),
            "code",
        ),
        (
            "POST",
            "/api/user/keys",
            Some(&user),
            json!({"name": ""}),
            "name",
        ),
        (
            "POST",
            "/api/user/keys",
            Some(&user),
            json!({"name": "k", "tags": ["BAD TAG"]}),
            "tags",
        ),
        (
            "POST",
            "/api/user/keys",
            Some(&user),
            json!({"name": "k", "policy": {"concurrency": "x"}}),
            "policy.concurrency",
        ),
        (
            "GET",
            "/api/user/orders/nope",
            Some(&user),
            Value::Null,
            "id",
        ),
        (
            "POST",
            "/api/admin/plans",
            Some(&admin),
            json!({"name": ""}),
            "price",
        ),
        (
            "POST",
            "/api/admin/plans",
            Some(&admin),
            {
                let mut s = api_support::plan_spec("P", "10", 2);
                s["max_keys"] = json!(0);
                s
            },
            "max_keys",
        ),
        (
            "POST",
            "/api/admin/codes",
            Some(&admin),
            json!({"count": 0, "amount": "5", "currency": "USD"}),
            "count",
        ),
        (
            "POST",
            "/api/admin/users/usr_00000000000000000000000000000000/status",
            Some(&admin),
            json!({"status": "happy", "reason": "x"}),
            "status",
        ),
        (
            "POST",
            "/api/admin/users/usr_00000000000000000000000000000000/role",
            Some(&admin),
            json!({"role": "root"}),
            "role",
        ),
        (
            "GET",
            "/api/admin/reports/revenue?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            Some(&admin),
            Value::Null,
            "from",
        ),
        (
            "PATCH",
            "/api/user/profile",
            Some(&user),
            json!({"display_name": "x".repeat(101)}),
            "display_name",
        ),
        (
            "PATCH",
            "/api/user/profile",
            Some(&user),
            json!({"email": "new@example.com"}),
            "current_password",
        ),
        (
            "PATCH",
            "/api/user/profile",
            Some(&user),
            json!({"email": "nope", "current_password": api_support::PASSWORD}),
            "email",
        ),
        (
            "PATCH",
            "/api/user/keys/not-a-key",
            Some(&user),
            json!({"limits": {}}),
            "id",
        ),
        (
            "GET",
            "/api/admin/users?limit=0",
            Some(&admin),
            Value::Null,
            "limit",
        ),
        (
            "GET",
            "/api/admin/users?cursor=xyz",
            Some(&admin),
            Value::Null,
            "cursor",
        ),
        (
            "GET",
            "/api/admin/users?status=gone",
            Some(&admin),
            Value::Null,
            "status",
        ),
        (
            "POST",
            "/api/admin/users/usr_00000000000000000000000000000000/flags",
            Some(&admin),
            json!({"flag": "NOT OK", "reason": "x"}),
            "flag",
        ),
        (
            "DELETE",
            "/api/admin/users/usr_00000000000000000000000000000000/flags/fraud",
            Some(&admin),
            json!({"reason": ""}),
            "reason",
        ),
    ];
    for (method, uri, token, body, field) in cases {
        let body = if body.is_null() { None } else { Some(body) };
        let (status, v) = h.call(method, uri, token, body.clone()).await;
        assert!(
            status.is_client_error(),
            "{method} {uri} {body:?}: {status} {v}"
        );
        assert_eq!(v["error"]["field"], field, "{method} {uri} {body:?}: {v}");
    }
    // Nothing was created by the refused requests.
    let keys = h.ok("GET", "/api/user/keys", Some(&user), None).await;
    assert_eq!(keys.as_array().unwrap().len(), 0);
    let orders = h.ok("GET", "/api/user/orders", Some(&user), None).await;
    assert_eq!(orders.as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn router_and_openapi_list_the_same_routes() {
    let h = Harness::memory().await;
    let (status, spec) = h.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = spec["paths"].as_object().unwrap();
    let mut documented = 0;
    for (method, template) in ROUTES {
        let op = &paths[*template][method.to_lowercase()];
        assert!(
            op.is_object(),
            "{method} {template} missing from the OpenAPI document"
        );
        assert!(
            op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| k.starts_with('4')),
            "{method} {template} documents no error response"
        );
        documented += 1;
        // And the router has it: an unknown route answers "no such route".
        let uri = path(template, "x");
        let (_, v) = h.call(method, &uri, None, None).await;
        assert_ne!(
            v["error"]["message"], "no such route",
            "{method} {uri} is not routed"
        );
    }
    let total: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        total, documented,
        "the document has routes the router does not"
    );
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    let (status, v) = h.call("GET", "/api/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    let (status, v) = h.call("PUT", "/api/user/register", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(v["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn security_headers_and_cors() {
    let h = Harness::memory().await;
    let (_, headers, _) = h
        .send(request("GET", "/api/user/profile", None, None, Vec::new()))
        .await;
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/api/user/login")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-csrf-token",
        )
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = h.send(preflight).await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let foreign = Request::builder()
        .method("OPTIONS")
        .uri("/api/user/login")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = h.send(foreign).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}
