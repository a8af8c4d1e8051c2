//! Account side of the product API: deletion erases personal data (checked in the
//! database tables themselves), profile changes (email with re-verification, display
//! name), per-key limits within the plan, usage by day and model from durable records,
//! the purge job on the manual clock, and admin listing with risk flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::sync::Arc;

use api_support::{Backend, Harness, PASSWORD};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{Duration, TimeZone, Utc};
use http_body_util::BodyExt;
use relay_auth::{Email, Notice, Role};
use relay_core::{
    ApiKeyId, Currency, Entitlement, KeyPolicy, KeyProvisioner, Money, PlanId, RequestId, Service,
    Usage, UserId,
};
use relay_server::api::usage_report::RecordUsageReport;
use relay_server::notify::{Channel, Outbox, Rendered};
use relay_usage::sink::{MeterOutcome, UsageEvent, UsageRecordStore};
use serde_json::{json, Value};
use tower::ServiceExt;

const ANN: &str = "ann.erase@example.com";

/// Every table and text column that contains `needle`, as `table.column`.
async fn scan_sqlite(path: &std::path::Path, needle: &str) -> Vec<String> {
    let url = format!("sqlite://{}", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let tables: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut hits = Vec::new();
    for (table,) in tables {
        let cols: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_table_info(?1)")
            .bind(&table)
            .fetch_all(&pool)
            .await
            .unwrap();
        for (col,) in cols {
            let sql =
                format!("SELECT COUNT(*) FROM \"{table}\" WHERE CAST(\"{col}\" AS TEXT) LIKE ?1");
            let (n,): (i64,) = sqlx::query_as(&sql)
                .bind(format!("%{needle}%"))
                .fetch_one(&pool)
                .await
                .unwrap();
            if n > 0 {
                hits.push(format!("{table}.{col}"));
            }
        }
    }
    pool.close().await;
    hits
}

async fn scan_postgres(url: &str, schema: &str, needle: &str) -> Vec<String> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = $1 AND data_type IN ('text', 'character varying', 'jsonb', 'json')",
    )
    .bind(schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut hits = Vec::new();
    for (table, col) in cols {
        let sql = format!(
            "SELECT COUNT(*) FROM \"{schema}\".\"{table}\" WHERE CAST(\"{col}\" AS TEXT) LIKE $1"
        );
        let (n,): (i64,) = sqlx::query_as(&sql)
            .bind(format!("%{needle}%"))
            .fetch_one(&pool)
            .await
            .unwrap();
        if n > 0 {
            hits.push(format!("{table}.{col}"));
        }
    }
    pool.close().await;
    hits
}

async fn deletion_erases_personal_data(backend: Backend) {
    let Some(h) = Harness::with(backend, api_support::test_config()).await else {
        return;
    };
    let (token, ann_id) = h.user(ANN).await;
    let (bob, _) = h.user("bob.keeps@example.com").await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    h.ok(
        "PATCH",
        "/api/user/profile",
        Some(&token),
        Some(json!({"display_name": "Ann Person"})),
    )
    .await;
    h.ok(
        "POST",
        &format!("/api/admin/users/{ann_id}/top-up"),
        Some(&admin),
        Some(json!({"amount": "10", "currency": "USD", "reference": "wire-1"})),
    )
    .await;
    let key = h
        .ok(
            "POST",
            "/api/user/keys",
            Some(&token),
            Some(json!({"name": "Ann's laptop"})),
        )
        .await;
    let key = key["key"].as_str().unwrap().to_owned();
    // Mails queued in the server's outbox (on billing's pool): one to Ann, one to Bob.
    let outbox = Outbox::open(h.state.billing_sql.pool().clone(), h.clock.clone())
        .await
        .unwrap();
    let mail = Rendered {
        subject: format!("Hello {ANN}"),
        text: format!("Dear {ANN}"),
        html: format!("<p>Dear {ANN}</p>"),
    };
    let ann_mail = outbox
        .enqueue(
            Channel::Email,
            ANN,
            "low_balance",
            &mail,
            &json!({"to": ANN}).to_string(),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let bob_mail = outbox
        .enqueue(
            Channel::Email,
            "bob.keeps@example.com",
            "low_balance",
            &Rendered {
                subject: "Your balance".into(),
                text: "is low".into(),
                html: "<p>is low</p>".into(),
            },
            "{}",
            None,
        )
        .await
        .unwrap()
        .unwrap();
    // A mail to someone else that names Ann (an admin notice, say).
    let mentions_ann = outbox
        .enqueue(
            Channel::Email,
            "bob.keeps@example.com",
            "notice",
            &mail,
            "{}",
            None,
        )
        .await
        .unwrap()
        .unwrap();

    // Bad confirmation: 422, nothing changes.
    let (status, v) = h
        .call(
            "DELETE",
            "/api/user/account",
            Some(&token),
            Some(json!({"confirm_email": "x@y.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["field"], "confirm_email");
    assert_eq!(
        h.ok("GET", "/api/user/profile", Some(&token), None).await["email"],
        ANN
    );

    h.ok(
        "DELETE",
        "/api/user/account",
        Some(&token),
        Some(json!({"confirm_email": ANN})),
    )
    .await;

    // Access ends; the address is unknown to login.
    let (status, _) = h.call("GET", "/api/user/profile", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h.keys.authenticate(&key).await.is_err());
    let (status, _) = h
        .call(
            "POST",
            "/api/user/login",
            None,
            Some(json!({"email": ANN, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The account record keeps only the anonymous id.
    let found = h
        .ok(
            "GET",
            &format!("/api/admin/users?id={ann_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        found[0]["email"],
        format!("deleted+{ann_id}@erased.invalid")
    );
    assert_eq!(found[0]["status"], "closed");
    assert_eq!(found[0]["display_name"], Value::Null);
    let by_email = h
        .ok(
            "GET",
            &format!("/api/admin/users?email={ANN}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(by_email, json!([]));
    let listed = h
        .ok("GET", "/api/admin/users?q=ann.erase", Some(&admin), None)
        .await;
    assert_eq!(listed, json!([]));

    // The outbox: Ann's mail is blanked and will not be sent; Bob's is untouched.
    let a = outbox.get(ann_mail).await.unwrap().unwrap();
    assert!(!a.recipient.contains(ANN) && a.payload == "{}");
    assert_eq!(a.status, relay_server::notify::Status::Dead);
    let b = outbox.get(bob_mail).await.unwrap().unwrap();
    assert_eq!(b.recipient, "bob.keeps@example.com");
    assert_eq!(
        b.mail.subject, "Your balance",
        "a mail that does not name Ann is untouched"
    );
    let mentions = outbox.get(mentions_ann).await.unwrap().unwrap();
    assert_eq!(mentions.recipient, "bob.keeps@example.com");
    assert!(!mentions.mail.text.contains(ANN) && !mentions.mail.subject.contains(ANN));

    // The ledger is intact, under the anonymous id.
    let txs = h.billing.store().transactions(Some(&ann_id)).await.unwrap();
    assert_eq!(txs.len(), 1);

    // No table holds the address any more (SQL backends: read every text column).
    match backend {
        Backend::Sqlite => {
            let dir = h.sqlite_dir().unwrap();
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "db") {
                    let hits = scan_sqlite(&path, ANN).await;
                    assert!(
                        hits.is_empty(),
                        "{} still holds it in {hits:?}",
                        path.display()
                    );
                    let hits = scan_sqlite(&path, "Ann Person").await;
                    assert!(hits.is_empty(), "display name in {hits:?}");
                }
            }
        }
        Backend::Postgres => {
            let (url, schema) = h.pg_schema().unwrap();
            let hits = scan_postgres(url, schema, ANN).await;
            assert!(hits.is_empty(), "still in {hits:?}");
            assert!(scan_postgres(url, schema, "Ann Person").await.is_empty());
            // The scan does find what is there.
            assert!(!scan_postgres(url, schema, "bob.keeps@example.com")
                .await
                .is_empty());
        }
        Backend::Memory => {}
    }

    // The address can register again, as a new user with nothing of the old one.
    let (again, again_id) = h.user(ANN).await;
    assert_ne!(again_id, ann_id);
    let export = h.ok("GET", "/api/user/export", Some(&again), None).await;
    assert_eq!(export["user"]["email"], ANN);
    for part in ["keys", "orders", "invoices", "ledger"] {
        assert_eq!(export[part], json!([]), "{part}");
    }
    assert_eq!(
        h.ok("GET", "/api/user/profile", Some(&bob), None).await["email"],
        "bob.keeps@example.com"
    );
    h.finish().await;
}

#[tokio::test]
async fn deletion_erases_personal_data_on_memory() {
    deletion_erases_personal_data(Backend::Memory).await;
}

#[tokio::test]
async fn deletion_erases_personal_data_on_sqlite() {
    deletion_erases_personal_data(Backend::Sqlite).await;
}

#[tokio::test]
async fn deletion_erases_personal_data_on_postgres() {
    deletion_erases_personal_data(Backend::Postgres).await;
}

fn tokens_to(h: &Harness, to: &str) -> Vec<String> {
    let to = Email::parse(to).unwrap();
    h.outbox
        .sent()
        .into_iter()
        .filter(|(e, _)| e == &to)
        .filter_map(|(_, n)| match n {
            Notice::VerifyEmail { token } => Some(token),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn profile_changes_email_after_verification_and_name() {
    let h = Harness::memory().await;
    let (token, _) = h.user("ann@example.com").await;
    h.user("bob@example.com").await;
    let before = h.ok("GET", "/api/user/profile", Some(&token), None).await;
    // Bad input: 4xx naming the field, nothing changed.
    for (body, field, status) in [
        (json!({}), "new_password", StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"display_name": "x".repeat(101)}),
            "display_name",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"display_name": "a\u{7}b"}),
            "display_name",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"email": "not-an-address", "current_password": PASSWORD}),
            "email",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"email": "new@example.com"}),
            "current_password",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"email": "ANN@example.com", "current_password": PASSWORD}),
            "email",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"email": "new@example.com", "current_password": "wrong password!"}),
            "current_password",
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({"new_password": "short", "current_password": PASSWORD}),
            "new_password",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // A bad field next to a good one: nothing at all changes.
        (
            json!({"display_name": "Ann", "email": "bad@", "current_password": PASSWORD}),
            "email",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (s, v) = h
            .call(
                "PATCH",
                "/api/user/profile",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (s, _) = h
        .call(
            "PATCH",
            "/api/user/profile",
            Some(&token),
            Some(json!({"nickname": "x"})),
        )
        .await;
    assert!(s.is_client_error());
    assert_eq!(
        h.ok("GET", "/api/user/profile", Some(&token), None).await,
        before
    );
    assert!(tokens_to(&h, "new@example.com").is_empty());

    // A taken address: the same answer, and its owner gets the "already registered" note.
    let taken = h
        .ok(
            "PATCH",
            "/api/user/profile",
            Some(&token),
            Some(json!({"email": "bob@example.com", "current_password": PASSWORD})),
        )
        .await;
    let fresh = h
        .ok(
            "PATCH",
            "/api/user/profile",
            Some(&token),
            Some(json!({"email": "New@Example.com", "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(taken, fresh, "no enumeration through the answer");
    assert_eq!(
        fresh["email"], "ann@example.com",
        "changes only when verified"
    );
    assert!(matches!(
        h.outbox
            .sent()
            .last()
            .map(|(e, _)| e.as_str().to_owned())
            .as_deref(),
        Some("new@example.com")
    ));
    let bob_notes =
        h.outbox.sent().into_iter().filter(|(e, n)| {
            e.as_str() == "bob@example.com" && matches!(n, Notice::AlreadyRegistered)
        });
    assert_eq!(bob_notes.count(), 1);
    let change = tokens_to(&h, "new@example.com").pop().unwrap();
    h.ok(
        "POST",
        "/api/user/verify-email",
        None,
        Some(json!({"token": change})),
    )
    .await;
    let now = h.ok("GET", "/api/user/profile", Some(&token), None).await;
    assert_eq!(
        (now["email"].as_str(), now["email_verified"].as_bool()),
        (Some("new@example.com"), Some(true))
    );
    let (s, v) = h
        .call(
            "POST",
            "/api/user/verify-email",
            None,
            Some(json!({"token": change})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("token"))
    );
    h.login("new@example.com").await;
    let (s, _) = h
        .call(
            "POST",
            "/api/user/login",
            None,
            Some(json!({"email": "ann@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Display name: set, shown, cleared.
    let v = h
        .ok(
            "PATCH",
            "/api/user/profile",
            Some(&token),
            Some(json!({"display_name": "  Ann  "})),
        )
        .await;
    assert_eq!(v["display_name"], "Ann");
    let v = h
        .ok(
            "PATCH",
            "/api/user/profile",
            Some(&token),
            Some(json!({"display_name": ""})),
        )
        .await;
    assert_eq!(v["display_name"], Value::Null);

    // The password change still works.
    h.ok(
        "PATCH",
        "/api/user/profile",
        Some(&token),
        Some(json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"})),
    )
    .await;
    h.ok(
        "POST",
        "/api/user/login",
        None,
        Some(json!({"email": "new@example.com", "password": "a brand new passphrase"})),
    )
    .await;
}

/// Ann on a paid plan (manual payment): `(session, user id, admin session, plan id)`.
async fn ann_on_a_plan(h: &Harness) -> (String, UserId, String, String) {
    let (ann, ann_id) = h.user("ann@example.com").await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let plan = h.plan(&admin, "Pro", "20", 3).await;
    let co = h
        .ok(
            "POST",
            "/api/user/checkout",
            Some(&ann),
            Some(json!({"provider": "manual", "plan_id": plan})),
        )
        .await;
    let order = co["order"]["id"].as_str().unwrap().to_owned();
    h.ok(
        "POST",
        "/api/admin/payments/manual",
        Some(&admin),
        Some(json!({"order_id": order, "amount": "20", "currency": "USD", "reference": "bank-1"})),
    )
    .await;
    (ann, ann_id, admin, plan)
}

#[tokio::test]
async fn key_limits_narrow_within_the_plan_and_survive_plan_changes() {
    let h = Harness::memory().await;
    let (ann, ann_id, _admin, plan_id) = ann_on_a_plan(&h).await;
    let key = h
        .ok(
            "POST",
            "/api/user/keys",
            Some(&ann),
            Some(json!({"name": "ci"})),
        )
        .await;
    let id = key["record"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/user/keys/{id}");
    let before = h.ok("GET", "/api/user/keys", Some(&ann), None).await;
    // Wider than the plan (concurrency 4, 100 requests a minute, claude-*) or malformed:
    // 422 naming the field, nothing changes.
    for (limits, field) in [
        (json!({"concurrency": 5}), "limits.concurrency"),
        (json!({"concurrency": 0}), "limits.concurrency"),
        (
            json!({"allowed_models": ["gpt-4o"]}),
            "limits.allowed_models[0]",
        ),
        (
            json!({"rate_windows": [{"window_secs": 60, "max_requests": 101}]}),
            "limits.rate_windows[0].max_requests",
        ),
        (
            json!({"rate_windows": [{"window_secs": 0, "max_requests": 1}]}),
            "limits.rate_windows[0].window_secs",
        ),
        (
            json!({"budgets": [{"period": "daily", "cap": {"amount": "1", "currency": "EUR"}}]}),
            "limits.budgets[0].cap",
        ),
    ] {
        let (s, v) = h
            .call("PATCH", &path, Some(&ann), Some(json!({"limits": limits})))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{limits}: {v}");
        assert_eq!(v["error"]["field"], field, "{limits}: {v}");
    }
    for body in [
        json!({"limits": {"colour": "red"}}),
        json!({}),
        json!({"limits": {"concurrency": "two"}}),
    ] {
        let (s, v) = h.call("PATCH", &path, Some(&ann), Some(body.clone())).await;
        assert!(
            s.is_client_error() && v["error"]["code"].is_string(),
            "{body}: {s} {v}"
        );
    }
    let (s, _) = h
        .call(
            "PATCH",
            "/api/user/keys/not-an-id",
            Some(&ann),
            Some(json!({"limits": {}})),
        )
        .await;
    assert!(s.is_client_error());
    assert_eq!(
        h.ok("GET", "/api/user/keys", Some(&ann), None).await,
        before
    );

    // Narrower: applied, and shown.
    let narrowed = h
        .ok(
            "PATCH",
            &path,
            Some(&ann),
            Some(json!({"limits": {
            "concurrency": 2, "allowed_models": ["claude-haiku-*"],
            "rate_windows": [{"window_secs": 60, "max_requests": 10}],
            "budgets": [{"period": "daily", "cap": {"amount": "2.50", "currency": "USD"}}]}})),
        )
        .await;
    assert_eq!(narrowed["policy"]["concurrency"], 2);
    assert_eq!(
        narrowed["policy"]["allowed_models"],
        json!(["claude-haiku-*"])
    );
    assert_eq!(narrowed["policy"]["rate_windows"][0]["max_requests"], 10);
    assert_eq!(narrowed["limits"]["concurrency"], 2);
    let principal = h
        .keys
        .authenticate(key["key"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        principal.policy.concurrency,
        Some(2),
        "the gateway sees the narrowing"
    );

    // A renewal applies the plan's policy again: the narrowing stays.
    let pro = h
        .state
        .billing
        .store()
        .plan(&plan_id.parse::<PlanId>().unwrap())
        .await
        .unwrap()
        .unwrap();
    let renewal = Entitlement {
        plan_id: pro.id.clone(),
        policy: pro.spec.policy(),
        max_keys: 3,
        valid_until: None,
    };
    h.keys.apply_entitlement(&ann_id, &renewal).await.unwrap();
    let k = h
        .state
        .accounts
        .store()
        .key_by_id(&id.parse::<ApiKeyId>().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.policy.concurrency, Some(2));
    assert_eq!(k.policy.rate_windows[0].max_requests, Some(10));
    assert_eq!(k.policy.allowed_models, vec!["claude-haiku-*".to_owned()]);
    // A downgrade to a smaller plan clamps it; the narrowing is kept for later.
    let small = Entitlement {
        policy: KeyPolicy {
            concurrency: Some(1),
            ..pro.spec.policy()
        },
        ..renewal.clone()
    };
    h.keys.apply_entitlement(&ann_id, &small).await.unwrap();
    let k = h
        .state
        .accounts
        .store()
        .key_by_id(&id.parse::<ApiKeyId>().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.policy.concurrency, Some(1));
    assert_eq!(k.own_limits.as_ref().unwrap().concurrency, Some(2));
    h.keys.apply_entitlement(&ann_id, &renewal).await.unwrap();
    let k = h
        .state
        .accounts
        .store()
        .key_by_id(&id.parse::<ApiKeyId>().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.policy.concurrency, Some(2));

    // `{}` removes the narrowing.
    let plain = h
        .ok("PATCH", &path, Some(&ann), Some(json!({"limits": {}})))
        .await;
    assert_eq!(plain["policy"]["concurrency"], 4);
    assert_eq!(plain["limits"], Value::Null);

    // Without a plan there is nothing to narrow.
    let (bob, _) = h.user("bob@example.com").await;
    let k = h
        .ok(
            "POST",
            "/api/user/keys",
            Some(&bob),
            Some(json!({"name": "b"})),
        )
        .await;
    let (s, v) = h
        .call(
            "PATCH",
            &format!("/api/user/keys/{}", k["record"]["id"].as_str().unwrap()),
            Some(&bob),
            Some(json!({"limits": {"concurrency": 1}})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_plan"))
    );
}

fn event(
    user: &UserId,
    key: &ApiKeyId,
    model: &str,
    at: chrono::DateTime<Utc>,
    input: u64,
    cost: &str,
) -> UsageEvent {
    UsageEvent {
        request_id: RequestId::new(),
        user_id: user.clone(),
        key_id: key.clone(),
        service: Service::Anthropic,
        model: model.into(),
        usage: Usage {
            input_tokens: input,
            output_tokens: input / 2,
            requests: 1,
            ..Usage::default()
        },
        cost: Money::parse(cost, Currency::USD).unwrap(),
        outcome: MeterOutcome::Complete,
        status: 200,
        at,
    }
}

async fn get(app: &axum::Router, path: &str, token: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

#[tokio::test]
async fn usage_is_by_day_and_model_from_usage_records_and_private() {
    let h = Harness::memory().await;
    let (ann, ann_id) = h.user("ann@example.com").await;
    let (bob, bob_id) = h.user("bob@example.com").await;
    let dir = tempfile::tempdir().unwrap();
    let opts: sqlx::sqlite::SqliteConnectOptions =
        format!("sqlite://{}", dir.path().join("usage.db").display())
            .parse()
            .unwrap();
    let pool = sqlx::SqlitePool::connect_with(opts.create_if_missing(true))
        .await
        .unwrap();
    relay_usage::sink::sql::sqlite::migrate(&pool)
        .await
        .unwrap();
    let store: Arc<dyn UsageRecordStore> =
        Arc::new(relay_usage::sink::sql::sqlite::SqliteUsageStore::new(pool));
    let (ka, kb) = (ApiKeyId::new(), ApiKeyId::new());
    let d1 = Utc.with_ymd_and_hms(2026, 1, 3, 10, 0, 0).unwrap();
    let d2 = d1 + Duration::days(1);
    store
        .insert_batch(&[
            event(&ann_id, &ka, "claude-haiku-4", d1, 1000, "0.001"),
            event(&ann_id, &ka, "claude-haiku-4", d1, 3000, "0.0025"),
            event(&ann_id, &ka, "claude-sonnet-4", d1, 10, "0.1"),
            event(&ann_id, &ka, "claude-haiku-4", d2, 5, "0.0000001"),
            event(&bob_id, &kb, "gpt-4o", d1, 7, "9"),
        ])
        .await
        .unwrap();
    for d in [d1, d2] {
        store.rollup_day(d.date_naive()).await.unwrap();
    }
    let app = relay_server::api::router(
        h.state
            .clone()
            .with_usage_report(Arc::new(RecordUsageReport(store.clone()))),
    );
    let range = "from=2026-01-01T00:00:00Z&to=2026-01-05T00:00:00Z";
    let (s, body) = get(&app, &format!("/api/user/usage?{range}"), &ann).await;
    assert_eq!(s, StatusCode::OK);
    let rows: Value = serde_json::from_slice(&body).unwrap();
    let brief: Vec<(String, String, u64, String, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap().to_owned(),
                r["model"].as_str().unwrap().to_owned(),
                r["requests"].as_u64().unwrap(),
                r["cost"]["amount"].as_str().unwrap().to_owned(),
                r["tokens"]["input"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        brief,
        vec![
            (
                "2026-01-03".into(),
                "claude-haiku-4".into(),
                2,
                "0.0035".into(),
                4000
            ),
            (
                "2026-01-03".into(),
                "claude-sonnet-4".into(),
                1,
                "0.1".into(),
                10
            ),
            (
                "2026-01-04".into(),
                "claude-haiku-4".into(),
                1,
                "0.0000001".into(),
                5
            ),
        ]
    );
    assert_eq!(rows[0]["tokens"]["output"], 2000);
    // Bob sees only his own.
    let (_, body) = get(&app, &format!("/api/user/usage?{range}"), &bob).await;
    let rows: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["model"], "gpt-4o");
    // CSV, same rows.
    let (s, body) = get(&app, &format!("/api/user/usage?{range}&format=csv"), &ann).await;
    assert_eq!(s, StatusCode::OK);
    let csv = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[1],
        "2026-01-03,\"claude-haiku-4\",2,4000,2000,0,0,0,0.0035,,USD"
    );
    // A range longer than the store answers in one call, and the export, still work.
    let (s, _) = get(
        &app,
        "/api/user/usage?from=2022-01-01T00:00:00Z&to=2026-01-05T00:00:00Z",
        &ann,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Bad input: 422 naming the field.
    for (q, field) in [
        ("format=xml", "format"),
        ("from=2026-01-05T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ] {
        let (s, body) = get(&app, &format!("/api/user/usage?{q}"), &ann).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{q}"
        );
    }
}

#[tokio::test]
async fn purge_job_removes_ended_sessions_and_tokens_on_the_manual_clock() {
    use relay_server::jobs::{AuthPurgeJob, JobScheduler, RunOutcome, SqlRunClaims};
    let h = Harness::memory().await;
    // Registration used a verification token at t0; this session ends at logout.
    let (old, _) = h.user("ann@example.com").await;
    h.ok("POST", "/api/user/logout", Some(&old), None).await;
    let claims = Arc::new(
        SqlRunClaims::open(h.state.billing_sql.pool().clone(), h.clock.clone())
            .await
            .unwrap(),
    );
    let scheduler = JobScheduler::new(claims, h.clock.clone())
        .with_job(
            Arc::new(AuthPurgeJob::new(
                h.state.accounts.clone(),
                Duration::days(7),
            )),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    let changed = |run: Option<relay_server::jobs::JobRun>| match run.unwrap().outcome {
        RunOutcome::Ran(r) => r.changed,
        other => panic!("{other:?}"),
    };
    // Within the retention: nothing goes.
    assert_eq!(changed(scheduler.run_job("auth_purge").await), 0);
    h.clock.advance(Duration::days(8));
    let (live, _) = h.login("ann@example.com").await;
    assert_eq!(
        changed(scheduler.run_job("auth_purge").await),
        2,
        "one token, one session"
    );
    h.clock.advance(Duration::hours(1));
    assert_eq!(changed(scheduler.run_job("auth_purge").await), 0);
    h.ok("GET", "/api/user/profile", Some(&live), None).await;
}

#[tokio::test]
async fn admins_list_users_with_filters_and_flag_them() {
    let h = Harness::memory().await;
    let (admin, admin_id) = h.staff("root@example.com", Role::Admin).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        h.clock.advance(Duration::seconds(1));
        ids.push(h.user(&format!("member{i}@corp.example")).await);
    }
    // Pages of two, newest first, by cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/admin/users?q=corp.example&limit=2&cursor={c}"),
            None => "/api/admin/users?q=corp.example&limit=2".to_owned(),
        };
        let req = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {admin}"))
            .body(Body::empty())
            .unwrap();
        let (s, headers, body) = h.send(req).await;
        assert_eq!(s, StatusCode::OK);
        let page: Value = serde_json::from_slice(&body).unwrap();
        for u in page.as_array().unwrap() {
            seen.push(u["id"].as_str().unwrap().to_owned());
            assert!(u["risk_flags"].is_array(), "admin view shows flags");
        }
        match headers.get("x-next-cursor") {
            Some(c) => cursor = Some(c.to_str().unwrap().to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = ids.iter().rev().map(|(_, id)| id.to_string()).collect();
    assert_eq!(seen, expected);

    // Flags: set with a reason (audited), shown, filterable; block_new_keys blocks keys.
    let (member_token, member) = ids[1].clone();
    let set = h
        .ok(
            "POST",
            &format!("/api/admin/users/{member}/flags"),
            Some(&admin),
            Some(json!({"flag": "block_new_keys", "reason": "card testing"})),
        )
        .await;
    assert_eq!(set["actor"], admin_id.to_string());
    let flagged = h
        .ok("GET", "/api/admin/users?flagged=true", Some(&admin), None)
        .await;
    assert_eq!(flagged.as_array().unwrap().len(), 1);
    assert_eq!(flagged[0]["id"], member.to_string());
    assert_eq!(flagged[0]["risk_flags"][0]["reason"], "card testing");
    let by_flag = h
        .ok(
            "GET",
            "/api/admin/users?flag=block_new_keys",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(by_flag[0]["id"], member.to_string());
    let (s, v) = h
        .call(
            "POST",
            "/api/user/keys",
            Some(&member_token),
            Some(json!({"name": "k"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("key_creation_blocked"))
    );
    let ops = h
        .ok("GET", "/api/admin/users?role=admin", Some(&admin), None)
        .await;
    assert_eq!(ops[0]["id"], admin_id.to_string());
    let active = h
        .ok(
            "GET",
            "/api/admin/users?status=active&q=member4",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(active.as_array().unwrap().len(), 1);

    // Bad input: 4xx naming the field, nothing changes.
    for (path, field) in [
        ("/api/admin/users?limit=0", "limit"),
        ("/api/admin/users?limit=101", "limit"),
        ("/api/admin/users?status=gone", "status"),
        ("/api/admin/users?role=king", "role"),
        ("/api/admin/users?cursor=garbage", "cursor"),
        ("/api/admin/users?flag=Bad%20Flag", "flag"),
        ("/api/admin/users?email=a@b.com&status=active", "email"),
    ] {
        let (s, v) = h.call("GET", path, Some(&admin), None).await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{path}"
        );
    }
    for (body, field) in [
        (json!({"flag": "Nope!", "reason": "x"}), "flag"),
        (json!({"flag": "fraud", "reason": ""}), "reason"),
    ] {
        let (s, v) = h
            .call(
                "POST",
                &format!("/api/admin/users/{member}/flags"),
                Some(&admin),
                Some(body),
            )
            .await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field))
        );
    }
    let (s, _) = h
        .call(
            "POST",
            &format!("/api/admin/users/{}/flags", UserId::new()),
            Some(&admin),
            Some(json!({"flag": "fraud", "reason": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Users cannot flag.
    let (s, _) = h
        .call(
            "POST",
            &format!("/api/admin/users/{member}/flags"),
            Some(&member_token),
            Some(json!({"flag": "fraud", "reason": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(h.state.accounts.risk_flags(&member).await.unwrap().len(), 1);

    // Clearing: with a reason; then keys work again.
    let clear = format!("/api/admin/users/{member}/flags/block_new_keys");
    let (s, v) = h
        .call("DELETE", &clear, Some(&admin), Some(json!({"reason": ""})))
        .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("reason"))
    );
    h.ok(
        "DELETE",
        &clear,
        Some(&admin),
        Some(json!({"reason": "cleared after review"})),
    )
    .await;
    let (s, _) = h
        .call(
            "DELETE",
            &clear,
            Some(&admin),
            Some(json!({"reason": "again"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    h.ok(
        "POST",
        "/api/user/keys",
        Some(&member_token),
        Some(json!({"name": "k"})),
    )
    .await;

    let log =
        relay_server::audit::AuditLog::open(h.state.billing_sql.pool().clone(), h.clock.clone())
            .await
            .unwrap();
    let page = log
        .search(&relay_server::audit::AuditFilter::default().with_action("admin.user.flag.set"))
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    let page = log
        .search(&relay_server::audit::AuditFilter::default().with_action("admin.user.flag.clear"))
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
}

#[tokio::test]
async fn rollup_job_makes_todays_records_visible_to_the_usage_route() {
    use relay_server::jobs::{Job, UsageRollupJob};
    let h = Harness::memory().await;
    let (ann, ann_id) = h.user("ann@example.com").await;
    let dir = tempfile::tempdir().unwrap();
    let opts: sqlx::sqlite::SqliteConnectOptions =
        format!("sqlite://{}", dir.path().join("usage.db").display())
            .parse()
            .unwrap();
    let pool = sqlx::SqlitePool::connect_with(opts.create_if_missing(true))
        .await
        .unwrap();
    relay_usage::sink::sql::sqlite::migrate(&pool)
        .await
        .unwrap();
    let store: Arc<dyn UsageRecordStore> =
        Arc::new(relay_usage::sink::sql::sqlite::SqliteUsageStore::new(pool));
    let now = h.clock_now();
    let key = ApiKeyId::new();
    store
        .insert_batch(&[
            event(
                &ann_id,
                &key,
                "claude-haiku-4",
                now - Duration::days(1),
                10,
                "0.01",
            ),
            event(&ann_id, &key, "claude-haiku-4", now, 20, "0.02"),
        ])
        .await
        .unwrap();
    let app = relay_server::api::router(
        h.state
            .clone()
            .with_usage_report(Arc::new(RecordUsageReport(store.clone()))),
    );
    let rows = |body: Vec<u8>| serde_json::from_slice::<Value>(&body).unwrap();
    let (_, body) = get(&app, "/api/user/usage", &ann).await;
    assert_eq!(rows(body), json!([]), "not rolled up yet");
    let job = UsageRollupJob::new(store.clone(), h.clock.clone());
    let report = job.run().await.unwrap();
    assert!(
        report.errors.is_empty() && report.changed == 2,
        "{report:?}"
    );
    let (_, body) = get(&app, "/api/user/usage", &ann).await;
    let v = rows(body);
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[1]["cost"]["amount"], "0.02");
}
