//! [`MeteredBody`]: a response body that meters usage as it streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use relay_core::{Money, Usage};
use rust_decimal::Decimal;

use super::{Context_, Pending};
use crate::limiter::Permit;
use crate::meter::UsageParser;
use crate::sink::{MeterOutcome, UsageEvent};

struct Meter {
    parser: UsageParser,
    ctx: Context_,
    status: StatusCode,
    /// Prompt and output tokens last reported mid-stream, to raise the permit's floor only
    /// when they change.
    floor_tokens: u64,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Passes every frame of `B` through unchanged while reading usage from it; when the
    /// body ends, errors or is dropped, settles the permit and records the usage event.
    #[derive(Debug)]
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        meter: Option<Meter>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(meter) = this.project().meter.take() {
                // A client that closes right after the stream's own end marker (the
                // openai SDK does, after `[DONE]`) received the whole response.
                let ended = if meter.parser.saw_end() {
                    MeterOutcome::Complete
                } else {
                    MeterOutcome::ClientDisconnected
                };
                meter.finish(ended);
            }
        }
    }
}

impl<B> MeteredBody<B> {
    pub(super) fn new(inner: B, ctx: Option<Context_>, status: StatusCode) -> Self {
        let meter = ctx.map(|ctx| Meter {
            parser: UsageParser::new(ctx.facts.flavor, ctx.facts.framing),
            ctx,
            status,
            floor_tokens: 0,
        });
        Self { inner, meter }
    }
}

impl Meter {
    fn cost(&self, usage: &Usage) -> Decimal {
        let facts = &self.ctx.facts;
        let multiplier = self.ctx.principal.policy.multiplier(facts.flavor.service());
        match self.ctx.shared.prices.cost(&facts.model, usage) {
            Ok(m) => m.amount() * multiplier,
            // The model was priced at admission; if the book changed since, charge the
            // estimate rather than nothing.
            Err(_) => facts.estimated_cost,
        }
    }

    fn estimate(&self, with_output: bool) -> Usage {
        let facts = &self.ctx.facts;
        Usage {
            input_tokens: facts.estimated_prompt_tokens,
            output_tokens: if with_output {
                facts.max_output_tokens
            } else {
                0
            },
            requests: 1,
            ..Usage::default()
        }
    }

    fn observe(&mut self, chunk: &[u8]) {
        if !self.ctx.facts.billable {
            return;
        }
        self.parser.feed(chunk);
        if let (Some(permit), Some(partial)) = (&self.ctx.permit, self.parser.partial()) {
            let tokens = partial.total_tokens();
            if tokens != self.floor_tokens {
                self.floor_tokens = tokens;
                permit.raise_floor(tokens, self.cost(&partial));
            }
        }
    }

    /// Price what was consumed, settle, record. `ended` is how the body ended. A request
    /// that is not billable (token counting) settles at zero and records no event.
    fn finish(mut self, ended: MeterOutcome) {
        if !self.ctx.facts.billable {
            if let Some(permit) = self.ctx.permit {
                spawn_settle(permit, 0, Decimal::ZERO, &self.ctx.shared.pending);
            }
            return;
        }
        let (usage, outcome) = if !self.status.is_success() {
            (
                Usage {
                    requests: 1,
                    ..Usage::default()
                },
                MeterOutcome::UpstreamStatus,
            )
        } else if ended == MeterOutcome::Complete {
            match self.parser.finish() {
                (Some(u), outcome) => (u, outcome),
                (None, outcome) => (self.estimate(true), outcome),
            }
        } else {
            // Gone mid-way: what was seen, and at least the prompt.
            let seen = self
                .parser
                .partial()
                .unwrap_or_else(|| self.estimate(false));
            (seen, ended)
        };
        let cost = if outcome == MeterOutcome::UpstreamStatus {
            Decimal::ZERO
        } else {
            self.cost(&usage)
        };
        let ctx = self.ctx;
        let event = UsageEvent {
            request_id: ctx.request_id,
            user_id: ctx.principal.user_id.clone(),
            key_id: ctx.principal.key_id.clone(),
            service: ctx.facts.flavor.service(),
            model: ctx.facts.model,
            usage,
            cost: Money::new(cost, ctx.principal.policy.currency),
            outcome,
            status: self.status.as_u16(),
            at: ctx.shared.clock.now(),
        };
        let permit = ctx.permit;
        let sink = ctx.shared.sink.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(request_id = %event.request_id, "no runtime to record usage on; the permit's lease will expire");
            return;
        };
        let work = Box::pin(async move {
            if let Some(permit) = permit {
                if let Err(e) = permit.settle(usage.total_tokens(), cost).await {
                    tracing::warn!(error = %e, "settling a permit failed; its lease will expire");
                }
            }
            sink.record(event).await;
        });
        run_here_or_spawn(&handle, &ctx.shared.pending, work);
    }
}

/// Poll `work` once here and spawn it only if it must wait, counted in `pending` until it
/// ends (see [`MeteringLayer::settled`](super::MeteringLayer::settled)). Settling on the
/// memory limiter and queueing the usage event are done in that one poll, so a client
/// that has read the whole body finds its lease released; a task spawned for them cost a
/// task allocation and a wake-up of another worker thread on every request. A backend
/// that waits (Redis, a full queue) finishes in the task, which polls it again with a real
/// waker.
fn run_here_or_spawn(
    handle: &tokio::runtime::Handle,
    pending: &Arc<Pending>,
    mut work: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if work.as_mut().poll(&mut cx).is_pending() {
        let settlement = pending.start();
        handle.spawn(async move {
            work.await;
            drop(settlement);
        });
    }
}

/// Settle `permit` in a task of its own (the body is polled in synchronous code).
fn spawn_settle(permit: Permit, tokens: u64, cost: Decimal, pending: &Arc<Pending>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        // Dropped here, the permit settles its floor when a runtime runs, or its lease
        // expires.
        return;
    };
    run_here_or_spawn(
        &handle,
        pending,
        Box::pin(async move {
            if let Err(e) = permit.settle(tokens, cost).await {
                tracing::warn!(error = %e, "settling a permit failed; its lease will expire");
            }
        }),
    );
}

impl<B> Body for MeteredBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let (Some(meter), Some(data)) = (this.meter.as_mut(), frame.data_ref()) {
                    meter.observe(data.chunk());
                }
                // With a known length the server stops polling after the last byte, so
                // `None` never comes: the body is complete when the inner one says so.
                if this.inner.is_end_stream() {
                    if let Some(meter) = this.meter.take() {
                        meter.finish(MeterOutcome::Complete);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(meter) = this.meter.take() {
                    meter.finish(MeterOutcome::UpstreamError);
                }
            }
            None => {
                if let Some(meter) = this.meter.take() {
                    meter.finish(MeterOutcome::Complete);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
