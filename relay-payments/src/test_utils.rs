//! The conformance suite every [`WebhookEventStore`] backend passes. Each function panics
//! on a violation; backends' tests call them all (see `tests/store_conformance.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use relay_core::{Currency, ManualClock, Money, OrderId};

use crate::store::{Claim, ClaimToken, WebhookEventStore};
use crate::{
    Delivery, DeliveryError, HandleOutcome, HandlerError, PaymentEvent, PaymentEventHandler,
    PaymentEventKind, WebhookProcessor,
};

/// Counts calls; fails the first `fail_first` of them.
#[derive(Debug, Default)]
struct CountingHandler {
    calls: AtomicUsize,
    fail_first: usize,
}

#[async_trait]
impl PaymentEventHandler for CountingHandler {
    async fn handle(&self, _event: &PaymentEvent) -> Result<HandleOutcome, HandlerError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        // Give concurrent deliveries a chance to run while this one is "in the database".
        tokio::task::yield_now().await;
        if n < self.fail_first {
            Err(HandlerError("transient".into()))
        } else {
            Ok(HandleOutcome::Applied)
        }
    }
}

fn sample_event() -> PaymentEvent {
    PaymentEvent {
        provider: "stripe".into(),
        event_id: unique("evt"),
        kind: PaymentEventKind::PaymentSucceeded,
        order_id: Some(OrderId::new()),
        amount: Money::from_minor(1250, Currency::USD),
        provider_reference: "pi_1".into(),
        subscription_reference: None,
        occurred_at: None,
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("valid time")
}

fn unique(name: &str) -> String {
    format!("{name}-{}", ClaimToken::new().0)
}

/// A first claim wins; once completed, the event is a duplicate forever.
pub async fn claim_complete_then_duplicate<S: WebhookEventStore>(store: &S) {
    let id = unique("evt");
    assert_eq!(store.get("stripe", &id).await.unwrap(), None);
    let Claim::Claimed(token) = store
        .claim("stripe", &id, t0(), Duration::minutes(5))
        .await
        .unwrap()
    else {
        panic!("first claim must win")
    };
    assert_eq!(
        store
            .claim("stripe", &id, t0(), Duration::minutes(5))
            .await
            .unwrap(),
        Claim::InProgress
    );
    assert!(store
        .complete("stripe", &id, &token, "applied", t0())
        .await
        .unwrap());
    let record = store.get("stripe", &id).await.unwrap().unwrap();
    assert!(record.processed);
    assert_eq!(record.outcome.as_deref(), Some("applied"));
    assert_eq!(record.attempts, 1);
    // Even long after, with the lease long gone, it stays processed.
    let later = t0() + Duration::days(30);
    assert_eq!(
        store
            .claim("stripe", &id, later, Duration::minutes(5))
            .await
            .unwrap(),
        Claim::AlreadyProcessed
    );
    // Completing or releasing again changes nothing.
    assert!(!store
        .complete("stripe", &id, &token, "other", later)
        .await
        .unwrap());
    assert!(!store.release("stripe", &id, &token).await.unwrap());
    let record = store.get("stripe", &id).await.unwrap().unwrap();
    assert_eq!(record.outcome.as_deref(), Some("applied"));
}

/// A released claim (the handler failed) can be claimed again by the next delivery.
pub async fn release_lets_a_retry_claim<S: WebhookEventStore>(store: &S) {
    let id = unique("evt");
    let Claim::Claimed(first) = store
        .claim("alipay", &id, t0(), Duration::minutes(5))
        .await
        .unwrap()
    else {
        panic!("first claim must win")
    };
    assert!(!store
        .release("alipay", &id, &ClaimToken::new())
        .await
        .unwrap());
    assert!(store.release("alipay", &id, &first).await.unwrap());
    let record = store.get("alipay", &id).await.unwrap().unwrap();
    assert!(!record.processed);
    let Claim::Claimed(second) = store
        .claim("alipay", &id, t0(), Duration::minutes(5))
        .await
        .unwrap()
    else {
        panic!("a released event must be claimable")
    };
    // The first token is dead now.
    assert!(!store
        .complete("alipay", &id, &first, "applied", t0())
        .await
        .unwrap());
    assert!(store
        .complete("alipay", &id, &second, "applied", t0())
        .await
        .unwrap());
    assert_eq!(store.get("alipay", &id).await.unwrap().unwrap().attempts, 2);
}

/// A crashed holder's claim is taken over after its lease; the old holder cannot complete.
pub async fn expired_claim_is_taken_over<S: WebhookEventStore>(store: &S) {
    let id = unique("evt");
    let Claim::Claimed(stale) = store
        .claim("wechat", &id, t0(), Duration::seconds(60))
        .await
        .unwrap()
    else {
        panic!("first claim must win")
    };
    assert_eq!(
        store
            .claim(
                "wechat",
                &id,
                t0() + Duration::seconds(59),
                Duration::seconds(60)
            )
            .await
            .unwrap(),
        Claim::InProgress
    );
    let Claim::Claimed(fresh) = store
        .claim(
            "wechat",
            &id,
            t0() + Duration::seconds(61),
            Duration::seconds(60),
        )
        .await
        .unwrap()
    else {
        panic!("an expired claim must be taken over")
    };
    assert!(!store
        .complete("wechat", &id, &stale, "applied", t0())
        .await
        .unwrap());
    assert!(store
        .complete("wechat", &id, &fresh, "held_for_review", t0())
        .await
        .unwrap());
    let record = store.get("wechat", &id).await.unwrap().unwrap();
    assert_eq!(record.outcome.as_deref(), Some("held_for_review"));
}

/// The same event id from two providers is two events.
pub async fn providers_are_separate<S: WebhookEventStore>(store: &S) {
    let id = unique("same-id");
    for provider in ["stripe", "alipay"] {
        let claim = store
            .claim(provider, &id, t0(), Duration::minutes(5))
            .await
            .unwrap();
        assert!(matches!(claim, Claim::Claimed(_)), "{provider}");
    }
}

/// 100 concurrent claims of one event: exactly one wins.
pub async fn concurrent_claims_have_one_winner<S: WebhookEventStore>(store: Arc<S>) {
    let id = unique("evt");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let store = Arc::clone(&store);
            let id = id.clone();
            tokio::spawn(async move {
                store
                    .claim("stripe", &id, t0(), Duration::minutes(5))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Claim::Claimed(_) => won += 1,
            Claim::InProgress => {}
            Claim::AlreadyProcessed => panic!("nothing completed it"),
        }
    }
    assert_eq!(won, 1);
}

/// One event delivered 100 times concurrently through a [`WebhookProcessor`], then 100
/// times more: the handler runs once.
pub async fn concurrent_deliveries_reach_the_handler_once<S: WebhookEventStore>(store: Arc<S>) {
    let handler = Arc::new(CountingHandler::default());
    let processor = WebhookProcessor::new(store, handler.clone(), Arc::new(ManualClock::new(t0())));
    let event = sample_event();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let processor = processor.clone();
            let event = event.clone();
            tokio::spawn(async move { processor.deliver(&event).await.unwrap() })
        })
        .collect();
    let mut handled = 0;
    for task in tasks {
        match task.await.unwrap() {
            Delivery::Handled(HandleOutcome::Applied) => handled += 1,
            Delivery::Duplicate | Delivery::InProgress => {}
            other @ Delivery::Handled(_) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(handled, 1);
    for _ in 0..100 {
        assert_eq!(
            processor.deliver(&event).await.unwrap(),
            Delivery::Duplicate
        );
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
}

/// A failing handler does not mark the event processed: the next delivery runs it again.
pub async fn a_failed_handler_is_retried<S: WebhookEventStore>(store: Arc<S>) {
    let handler = Arc::new(CountingHandler {
        calls: AtomicUsize::new(0),
        fail_first: 2,
    });
    let processor = WebhookProcessor::new(
        store.clone(),
        handler.clone(),
        Arc::new(ManualClock::new(t0())),
    );
    let event = sample_event();
    for _ in 0..2 {
        assert!(matches!(
            processor.deliver(&event).await,
            Err(DeliveryError::Handler(_))
        ));
        let record = store
            .get(&event.provider, &event.event_id)
            .await
            .unwrap()
            .unwrap();
        assert!(!record.processed);
    }
    assert_eq!(
        processor.deliver(&event).await.unwrap(),
        Delivery::Handled(HandleOutcome::Applied)
    );
    assert_eq!(
        processor.deliver(&event).await.unwrap(),
        Delivery::Duplicate
    );
    let record = store
        .get(&event.provider, &event.event_id)
        .await
        .unwrap()
        .unwrap();
    assert!(record.processed);
    assert_eq!(record.attempts, 3);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
}

/// Old processed records are pruned; recent ones and open claims stay.
pub async fn prune_keeps_recent_and_open_records<S: WebhookEventStore>(store: &S) {
    let old = unique("evt-old");
    let recent = unique("evt-recent");
    let open = unique("evt-open");
    for (id, at) in [(&old, t0()), (&recent, t0() + Duration::days(10))] {
        let Claim::Claimed(token) = store
            .claim("prune", id, at, Duration::minutes(5))
            .await
            .unwrap()
        else {
            panic!("claim must win")
        };
        assert!(store
            .complete("prune", id, &token, "applied", at)
            .await
            .unwrap());
    }
    store
        .claim("prune", &open, t0(), Duration::minutes(5))
        .await
        .unwrap();
    let pruned = store
        .prune_processed_before(t0() + Duration::days(5))
        .await
        .unwrap();
    assert!(pruned >= 1);
    assert_eq!(store.get("prune", &old).await.unwrap(), None);
    assert!(store.get("prune", &recent).await.unwrap().is_some());
    assert!(store.get("prune", &open).await.unwrap().is_some());
}

/// Run every conformance test against `store`.
pub async fn run_all<S: WebhookEventStore>(store: Arc<S>) {
    concurrent_deliveries_reach_the_handler_once(Arc::clone(&store)).await;
    a_failed_handler_is_retried(Arc::clone(&store)).await;
    claim_complete_then_duplicate(store.as_ref()).await;
    release_lets_a_retry_claim(store.as_ref()).await;
    expired_claim_is_taken_over(store.as_ref()).await;
    providers_are_separate(store.as_ref()).await;
    prune_keeps_recent_and_open_records(store.as_ref()).await;
    concurrent_claims_have_one_winner(store).await;
}
