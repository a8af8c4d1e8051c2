//! The cached API-key verification path of relay-auth, in ns per request: what every
//! gateway request pays before admission. Measured three ways in one run: the HMAC alone
//! (what a cache miss pays before the store lookup, and what a hit paid before the cache
//! was keyed by a SipHash tag), `authenticate_cached` (tag + cache lookup + checks +
//! building the `Principal` + recording the use), and a full `ApiKeyAuthLayer` call
//! around a no-op service (adds header parsing and the future).

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use relay_auth::store::memory::MemoryStore;
use relay_auth::{ApiKeyAuthLayer, ApiKeyService, KeyHasher, NewKey, UserStore};
use relay_core::{KeyPolicy, SystemClock};
use tower::{Layer, Service, ServiceExt};

const PEPPER: &[u8] = b"benchmark pepper, at least 32 bytes long";

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = Arc::new(MemoryStore::new());
    let keys = Arc::new(
        ApiKeyService::new(store.clone(), PEPPER, Arc::new(SystemClock)).expect("key service"),
    );
    let key = rt.block_on(async {
        let user = relay_auth::test_utils::sample_user("bench");
        store.insert_user(&user).await.expect("user");
        let issued = keys
            .issue(
                &user.id,
                NewKey {
                    name: "bench".into(),
                    tags: vec![],
                    policy: KeyPolicy::default(),
                },
            )
            .await
            .expect("issue");
        keys.authenticate(&issued.key)
            .await
            .expect("warm the cache");
        issued.key
    });

    let mut g = c.benchmark_group("key_verify");
    let hasher = KeyHasher::new(PEPPER).expect("hasher");
    g.bench_function("hmac_only", |b| b.iter(|| hasher.hash(black_box(&key))));
    g.bench_function("authenticate_cached", |b| {
        b.iter(|| {
            let p = keys.authenticate_cached(black_box(&key));
            assert!(matches!(p, Some(Ok(_))));
            p
        })
    });
    let svc = ApiKeyAuthLayer::new(keys.clone()).layer(tower::service_fn(
        |_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        },
    ));
    g.bench_function("layer_call_cached", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            let req = Request::builder()
                .uri("/v1/messages")
                .header("x-api-key", key.as_str())
                .body(Full::new(Bytes::new()))
                .expect("request");
            async move {
                let res = svc
                    .ready()
                    .await
                    .expect("ready")
                    .call(req)
                    .await
                    .expect("call");
                assert_eq!(res.status(), 200);
                res
            }
        })
    });
    g.finish();
    // Keep the use buffer from growing across runs (it holds one entry per key anyway).
    rt.block_on(async { keys.flush_uses().await.expect("flush") });
}

criterion_group!(benches, bench);
criterion_main!(benches);
