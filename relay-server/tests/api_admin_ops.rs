//! Admin operations: every mutating admin request lands in the audit log; upstream
//! accounts are managed without ever showing a secret and the running pools follow;
//! subscriptions are extended; roles are checked and bad input is refused unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::sync::Arc;

use api_support::{session_completed, Harness};
use axum::http::StatusCode;
use relay_auth::Role;
use relay_core::Service;
use relay_server::api;
use relay_server::api::admin::upstreams::UpstreamAdmin;
use relay_server::audit::AuditLog;
use relay_server::config::DatabaseUrl;
use relay_server::db::Database;
use relay_server::upstream::{store, CredentialCipher, Pools};
use serde_json::{json, Value};

/// The harness with the server's audit log (on billing's database) wired in.
async fn audited() -> Harness {
    let mut h = Harness::memory().await;
    let audit = AuditLog::open(h.state.billing_sql.pool().clone(), h.state.clock.clone())
        .await
        .unwrap();
    h.state = h.state.clone().with_audit(audit);
    h.app = api::router(h.state.clone());
    h
}

async fn entries(h: &Harness, admin: &str, query: &str) -> Vec<Value> {
    h.ok(
        "GET",
        &format!("/api/admin/audit?{query}"),
        Some(admin),
        None,
    )
    .await
    .as_array()
    .unwrap()
    .clone()
}

#[tokio::test]
async fn every_mutating_admin_request_is_audited() {
    let h = audited().await;
    let (_, user_id) = h.user("ann@example.com").await;
    let (admin, admin_id) = h.staff("root@example.com", Role::Admin).await;
    let (operator, operator_id) = h.staff("op@example.com", Role::Operator).await;
    let (user, _) = h.login("ann@example.com").await;
    let actor = format!("admin:{admin_id}");

    // Three different admin actions.
    h.ok(
        "POST",
        &format!("/api/admin/users/{user_id}/adjust"),
        Some(&admin),
        Some(json!({"amount": "3.00", "currency": "USD", "reason": "goodwill 42"})),
    )
    .await;
    let plan = h.plan(&admin, "Pro", "20", 3).await;
    h.ok(
        "POST",
        "/api/admin/codes",
        Some(&operator),
        Some(json!({"count": 1, "amount": "5", "currency": "USD"})),
    )
    .await;
    // Reads are not recorded.
    h.ok("GET", "/api/admin/plans", Some(&admin), None).await;

    let mine = entries(&h, &admin, &format!("actor={actor}")).await;
    let actions: Vec<&str> = mine.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["admin.plans.create", "admin.users.adjust"],
        "{mine:?}"
    );
    let adjust = &mine[1];
    assert_eq!(adjust["target"], user_id.as_str());
    assert_eq!(adjust["details"]["reason"], "goodwill 42");
    assert_eq!(adjust["details"]["outcome"], "ok");
    assert_eq!(adjust["details"]["status"], 200);
    assert!(!adjust["details"]["request_id"].as_str().unwrap().is_empty());
    assert_eq!(adjust["source"], "server.audit");
    // A created record is the target of its creation.
    assert_eq!(mine[0]["target"], plan.as_str());
    let ops = entries(&h, &admin, &format!("actor=admin:{operator_id}")).await;
    assert_eq!(ops[0]["action"], "admin.codes.create");

    // Refused and rejected attempts by logged-in users are recorded with their outcome;
    // nothing else changes.
    let (status, _) = h
        .call(
            "POST",
            &format!("/api/admin/users/{user_id}/adjust"),
            Some(&user),
            Some(json!({"amount": "900", "currency": "USD", "reason": "me"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/admin/users/{user_id}/adjust"),
            Some(&admin),
            Some(json!({"amount": "lots", "currency": "USD", "reason": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["field"], "amount");
    let about_user = entries(
        &h,
        &admin,
        &format!("action=admin.users.adjust&target={user_id}"),
    )
    .await;
    let outcomes: Vec<&str> = about_user
        .iter()
        .map(|e| e["details"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["rejected", "refused", "ok"]);
    let balance = h
        .state
        .billing
        .store()
        .wallet(&user_id, relay_core::Currency::USD)
        .await
        .unwrap()
        .balance;
    assert_eq!(balance.amount(), rust_decimal::Decimal::new(300, 2));

    // A subject search includes the admin requests about it, besides billing's records.
    let subject = entries(&h, &admin, &format!("subject={user_id}")).await;
    assert!(subject.iter().any(|e| e["source"] == "server.audit"));

    // Paging: one at a time, newest first.
    let first = entries(&h, &admin, "action=admin.users.adjust&limit=1").await;
    let next = entries(
        &h,
        &admin,
        &format!(
            "action=admin.users.adjust&limit=1&before={}",
            first[0]["id"]
        ),
    )
    .await;
    assert!(next[0]["id"].as_i64().unwrap() < first[0]["id"].as_i64().unwrap());

    // Only admins read the trail; bad filters name the field.
    let (status, _) = h
        .call("GET", "/api/admin/audit?action=x", Some(&operator), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = h
        .call("GET", "/api/admin/audit?action=x", Some(&user), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = h
        .call(
            "GET",
            "/api/admin/audit?action=Bad%20Action",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "action");
    let (status, v) = h
        .call(
            "GET",
            "/api/admin/audit?action=a.b&q=zz",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, v) = h
        .call("GET", "/api/admin/audit?before=abc", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "before");
}

#[tokio::test]
async fn subscriptions_are_extended_and_audited() {
    let h = audited().await;
    let (user, user_id) = h.user("ann@example.com").await;
    let (admin, admin_id) = h.staff("root@example.com", Role::Admin).await;
    let (operator, _) = h.staff("op@example.com", Role::Operator).await;
    let plan = h.plan(&admin, "Pro", "20", 3).await;
    let v = h
        .ok(
            "POST",
            "/api/user/checkout",
            Some(&user),
            Some(json!({"plan_id": plan, "provider": "stripe"})),
        )
        .await;
    let order = v["order"]["id"].as_str().unwrap().to_owned();
    let status = h
        .stripe_event(
            "evt_1",
            "checkout.session.completed",
            session_completed(&order, "cs_1", 2000, "pi_1"),
        )
        .await;
    assert!(status.is_success());
    let sub = h
        .ok(
            "GET",
            &format!("/api/admin/users/{user_id}/subscription"),
            Some(&admin),
            None,
        )
        .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let end: chrono::DateTime<chrono::Utc> = sub["period_end"].as_str().unwrap().parse().unwrap();
    let path = format!("/api/admin/subscriptions/{sub_id}/extend");

    // Bad input: the field is named and nothing changes.
    for (body, field) in [
        (json!({"days": 0, "reason": "x"}), "days"),
        (json!({"days": -3, "reason": "x"}), "days"),
        (json!({"days": 100000, "reason": "x"}), "days"),
        (json!({"days": "7", "reason": "x"}), "days"),
        (json!({"days": 7, "reason": ""}), "reason"),
        (json!({"days": 7}), "reason"),
    ] {
        let (status, v) = h.call("POST", &path, Some(&admin), Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let (status, v) = h
        .call(
            "POST",
            "/api/admin/subscriptions/not-an-id/extend",
            Some(&admin),
            Some(json!({"days": 7, "reason": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "id");
    let (status, _) = h
        .call(
            "POST",
            &path,
            Some(&user),
            Some(json!({"days": 7, "reason": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let unchanged = h
        .ok(
            "GET",
            &format!("/api/admin/users/{user_id}/subscription"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(unchanged["period_end"], sub["period_end"]);

    // Operators may extend (they manage users).
    let v = h
        .ok(
            "POST",
            &path,
            Some(&operator),
            Some(json!({"days": 7, "reason": "outage credit"})),
        )
        .await;
    let new_end: chrono::DateTime<chrono::Utc> = v["period_end"].as_str().unwrap().parse().unwrap();
    assert_eq!(new_end - end, chrono::Duration::days(7));
    // Billing's own audit has the domain entry; the request log has the request.
    let trail = entries(&h, &admin, &format!("subject={sub_id}")).await;
    assert!(trail
        .iter()
        .any(|e| e["source"] == "billing.audit" && e["action"] == "subscription.extended"));
    assert!(trail.iter().any(|e| e["source"] == "server.audit"
        && e["action"] == "admin.subscriptions.extend"
        && e["details"]["reason"] == "outage credit"));
    let _ = admin_id;

    // A canceled subscription cannot be extended.
    h.ok(
        "POST",
        &format!("/api/admin/subscriptions/{sub_id}/cancel"),
        Some(&admin),
        Some(json!({})),
    )
    .await;
    let (status, v) = h
        .call(
            "POST",
            &path,
            Some(&admin),
            Some(json!({"days": 7, "reason": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
}

#[tokio::test]
async fn upstream_accounts_are_managed_and_the_pools_follow() {
    let mut h = audited().await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let (operator, _) = h.staff("op@example.com", Role::Operator).await;
    let (user, _) = h.user("ann@example.com").await;
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(format!("sqlite://{}", dir.path().join("r.db").display()));
    let db = Database::connect(&url).await.unwrap();
    let cipher = Arc::new(CredentialCipher::new(&[9u8; 32]).unwrap());
    let pools = Arc::new(Pools::new(&[]));
    h.state = h.state.clone().with_upstreams(UpstreamAdmin::new(
        db.clone(),
        cipher.clone(),
        pools.clone(),
    ));
    h.app = api::router(h.state.clone());

    // Users may not even list; operators manage the service.
    let (status, _) = h
        .call("GET", "/api/admin/upstreams", Some(&user), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = h
        .call(
            "POST",
            "/api/admin/upstreams",
            Some(&user),
            Some(json!({"name": "a", "service": "anthropic", "key": "sk-x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let secret = "sk-ant-super-secret-123";
    let v = h
        .ok(
            "POST",
            "/api/admin/upstreams",
            Some(&operator),
            Some(
                json!({"name": "primary", "service": "anthropic", "key": secret,
                "base_url": "http://127.0.0.1:9/", "weight": 3}),
            ),
        )
        .await;
    assert_eq!(v["name"], "primary");
    assert_eq!(v["weight"], 3);
    assert_eq!(v["enabled"], true);
    assert_eq!(v["base_url"], "http://127.0.0.1:9");
    assert!(!v.to_string().contains(secret));
    // Sealed at rest, live in the pool.
    let sealed = store::sealed_bytes(&db, "primary").await.unwrap().unwrap();
    assert!(!sealed.windows(6).any(|w| w == b"secret"));
    let pool = pools.pool(Service::Anthropic);
    assert_eq!(pool.accounts().len(), 1);
    assert_eq!(pool.accounts()[0].credential.expose(), secret);
    assert_eq!(pool.accounts()[0].weight, 3);
    h.ok(
        "POST",
        "/api/admin/upstreams",
        Some(&admin),
        Some(json!({"name": "backup", "service": "openai", "key": "sk-openai-2"})),
    )
    .await;
    let listed = h
        .ok("GET", "/api/admin/upstreams", Some(&operator), None)
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains("sk-"));

    // Bad input names the field and changes nothing.
    for (body, field, code) in [
        (
            json!({"name": "bad name", "service": "anthropic", "key": "k"}),
            "name",
            422,
        ),
        (
            json!({"name": "x", "service": "bard", "key": "k"}),
            "service",
            422,
        ),
        (
            json!({"name": "x", "service": "openai", "key": ""}),
            "key",
            422,
        ),
        (
            json!({"name": "x", "service": "openai", "key": "k", "weight": 0}),
            "weight",
            422,
        ),
        (
            json!({"name": "x", "service": "openai", "key": "k", "weight": 5000}),
            "weight",
            422,
        ),
        (
            json!({"name": "x", "service": "openai", "key": "k", "base_url": "ftp://h"}),
            "base_url",
            422,
        ),
        (
            json!({"name": "x", "service": "openai", "key": "k", "base_url": "not a url"}),
            "base_url",
            422,
        ),
        (
            json!({"name": "primary", "service": "openai", "key": "k"}),
            "name",
            409,
        ),
        (json!({"service": "openai", "key": "k"}), "name", 422),
    ] {
        let (status, v) = h
            .call("POST", "/api/admin/upstreams", Some(&admin), Some(body))
            .await;
        assert_eq!(status.as_u16(), code, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let again = h
        .ok("GET", "/api/admin/upstreams", Some(&admin), None)
        .await;
    assert_eq!(again, listed);
    assert_eq!(
        pools.pool(Service::Anthropic).accounts()[0]
            .credential
            .expose(),
        secret
    );

    // Weight and enabled; the pool follows.
    h.ok(
        "PATCH",
        "/api/admin/upstreams/primary",
        Some(&admin),
        Some(json!({"weight": 7})),
    )
    .await;
    assert_eq!(pools.pool(Service::Anthropic).accounts()[0].weight, 7);
    let v = h
        .ok(
            "PATCH",
            "/api/admin/upstreams/primary",
            Some(&admin),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(
        (v["enabled"].clone(), v["weight"].clone()),
        (json!(false), json!(7))
    );
    assert!(pools.pool(Service::Anthropic).accounts().is_empty());
    assert_eq!(pools.pool(Service::Openai).accounts().len(), 1);
    h.ok(
        "PATCH",
        "/api/admin/upstreams/primary",
        Some(&admin),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(pools.pool(Service::Anthropic).accounts().len(), 1);
    for (path, body, field, code) in [
        ("/api/admin/upstreams/primary", json!({}), "weight", 422),
        (
            "/api/admin/upstreams/primary",
            json!({"weight": -1}),
            "weight",
            422,
        ),
        (
            "/api/admin/upstreams/primary",
            json!({"enabled": "yes"}),
            "enabled",
            422,
        ),
        ("/api/admin/upstreams/ghost", json!({"weight": 2}), "", 404),
        (
            "/api/admin/upstreams/b%20ad",
            json!({"weight": 2}),
            "name",
            422,
        ),
    ] {
        let (status, v) = h.call("PATCH", path, Some(&admin), Some(body)).await;
        assert_eq!(status.as_u16(), code, "{path}: {v}");
        if !field.is_empty() {
            assert_eq!(v["error"]["field"], field, "{v}");
        }
    }
    assert_eq!(pools.pool(Service::Anthropic).accounts()[0].weight, 7);

    // Delete.
    let (status, _) = h
        .call("DELETE", "/api/admin/upstreams/primary", Some(&user), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = h
        .call("DELETE", "/api/admin/upstreams/primary", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(pools.pool(Service::Anthropic).accounts().is_empty());
    let (status, _) = h
        .call("DELETE", "/api/admin/upstreams/primary", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let listed = h
        .ok("GET", "/api/admin/upstreams", Some(&admin), None)
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Each change is in the trail, never with the secret.
    let trail = entries(&h, &admin, "target=primary&limit=50").await;
    let actions: Vec<&str> = trail
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"admin.upstreams.create"), "{actions:?}");
    assert!(actions.contains(&"admin.upstreams.update"));
    assert!(actions.contains(&"admin.upstreams.delete"));
    assert!(!serde_json::to_string(&trail).unwrap().contains(secret));
}

#[tokio::test]
async fn price_overrides_apply_at_once_and_survive_a_restart() {
    use relay_core::price::TokenPrices;
    use relay_core::{ModelPrice, PriceBook, Usage};
    use relay_server::api::admin::prices::PriceAdmin;
    use rust_decimal::Decimal;

    let mut h = audited().await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let (operator, _) = h.staff("op@example.com", Role::Operator).await;
    let (user, _) = h.user("ann@example.com").await;
    let mut book = PriceBook::empty(relay_core::Currency::USD);
    book.insert(
        "claude-sonnet-4-5",
        ModelPrice::new(TokenPrices::per_million(
            Decimal::from(3),
            Decimal::from(15),
        )),
    )
    .unwrap();
    // The layers hold the book behind an Arc; the admin holds its live overrides.
    let held = Arc::new(book);
    let pool = h.state.billing_sql.pool().clone();
    let admin_prices = PriceAdmin::open(pool.clone(), held.live().clone())
        .await
        .unwrap();
    h.state = h.state.clone().with_prices(admin_prices);
    h.app = api::router(h.state.clone());
    let million = Usage {
        input_tokens: 1_000_000,
        output_tokens: 1_000_000,
        cache_write_5m_tokens: 0,
        cache_write_1h_tokens: 0,
        cache_read_tokens: 0,
        requests: 1,
    };
    let cost = |b: &PriceBook| b.cost("claude-sonnet-4-5", &million).unwrap().amount();
    assert_eq!(cost(&held), Decimal::from(18));

    let path = "/api/admin/prices/claude-sonnet-4-5";
    let (status, _) = h
        .call(
            "PUT",
            path,
            Some(&user),
            Some(json!({"input": "1", "output": "2"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Bad input names the field and changes nothing.
    for (body, field) in [
        (json!({"input": "-1", "output": "2"}), "input"),
        (json!({"input": "1", "output": "abc"}), "output"),
        (
            json!({"input": "1", "output": "2", "cache_read": "-0.1"}),
            "cache_read",
        ),
        (json!({"input": 1, "output": "2"}), "input"),
        (json!({"output": "2"}), "input"),
        (json!({"input": "", "output": "2"}), "input"),
    ] {
        let (status, v) = h.call("PUT", path, Some(&admin), Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let (status, v) = h
        .call(
            "PUT",
            "/api/admin/prices/bad%20model",
            Some(&admin),
            Some(json!({"input": "1", "output": "2"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "model");
    assert_eq!(cost(&held), Decimal::from(18));
    assert_eq!(
        h.ok("GET", "/api/admin/prices", Some(&admin), None).await,
        json!([])
    );

    // Exact decimals, applied to the next cost at once.
    let v = h
        .ok(
            "PUT",
            path,
            Some(&operator),
            Some(json!({"input": "2.125", "output": "10.5"})),
        )
        .await;
    assert_eq!(v["per_million"]["input"], "2.125");
    assert_eq!(v["per_million"]["output"], "10.5");
    assert_eq!(cost(&held), "12.625".parse::<Decimal>().unwrap());
    let listed = h.ok("GET", "/api/admin/prices", Some(&admin), None).await;
    assert_eq!(listed[0]["model"], "claude-sonnet-4-5");

    // A restart (a fresh book over the same database) keeps it.
    let fresh = PriceBook::empty(relay_core::Currency::USD);
    PriceAdmin::open(pool.clone(), fresh.live().clone())
        .await
        .unwrap();
    assert_eq!(
        fresh.cost("claude-sonnet-4-5", &million).unwrap().amount(),
        "12.625".parse::<Decimal>().unwrap()
    );

    // Cleared: the catalog price again; twice is 404.
    let (status, _) = h.call("DELETE", path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(cost(&held), Decimal::from(18));
    let (status, _) = h.call("DELETE", path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let trail = entries(&h, &admin, "target=claude-sonnet-4-5").await;
    let actions: Vec<&str> = trail
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"admin.prices.update"), "{actions:?}");
    assert!(actions.contains(&"admin.prices.delete"), "{actions:?}");
}
