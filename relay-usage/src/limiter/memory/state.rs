//! One tracked key's state: every counter in one allocation sized by its policy's [`Plan`].
//!
//! The words are, in order: per window the bucket number and `(previous, current)` for each
//! capped kind; per budget `start_ms, end_ms, spent`; then the inline lease slots
//! (`lease id, expiry ms`, an expiry of [`FREE`] marking a free slot). Times are stored as
//! the bits of an `i64`. Leases beyond the inline slots (a concurrency limit above two, or
//! none) go to a vector allocated only then.

use std::sync::Arc;
use std::time::Duration;

use relay_core::KeyPolicy;

use super::super::window::{apply_delta, estimate, retry_after};
use super::super::{Counts, Denial, WindowCap};
use super::plan::Plan;

/// Expiry of a free lease slot.
const FREE: i64 = i64::MIN;

/// A lease: its id and when it expires (ms).
pub(super) type Lease = (u64, i64);

fn get_i(words: &[u64], i: usize) -> i64 {
    words[i] as i64
}

fn set_i(words: &mut [u64], i: usize, v: i64) {
    words[i] = v as u64;
}

/// A tracked key.
#[derive(Debug)]
pub(super) struct KeyState {
    pub(super) plan: Arc<Plan>,
    pub(super) last_seen_ms: i64,
    words: Box<[u64]>,
    /// Boxed: 8 bytes per key instead of a vector header's 24, for a vector that exists
    /// only while a key holds more leases than its inline slots.
    #[allow(clippy::box_collection)]
    spill: Option<Box<Vec<Lease>>>,
}

impl KeyState {
    /// A key that has counted nothing yet.
    pub(super) fn new(plan: Arc<Plan>, now: i64) -> Self {
        let mut words = vec![0u64; plan.words].into_boxed_slice();
        for b in &plan.budgets {
            // An empty period that contains no time: the first admission looks it up.
            set_i(&mut words, b.at, i64::MAX);
            set_i(&mut words, b.at + 1, i64::MIN);
        }
        for l in 0..plan.inline_leases {
            set_i(&mut words, plan.leases_at + 2 * l + 1, FREE);
        }
        KeyState {
            plan,
            last_seen_ms: now,
            words,
            spill: None,
        }
    }

    /// Move to `plan` (the key's policy changed): a window of the same length keeps the
    /// counts of the kinds both plans cap, a budget of the same period keeps its spend,
    /// live leases are kept; anything new starts empty.
    pub(super) fn replan(&mut self, plan: &Arc<Plan>, now: i64) {
        let mut next = KeyState::new(Arc::clone(plan), now);
        next.last_seen_ms = self.last_seen_ms;
        for w in &plan.windows {
            let Some(old) = self.plan.windows.iter().find(|o| o.len_ms == w.len_ms) else {
                continue;
            };
            next.words[w.at] = self.words[old.at];
            for (j, (kind, _)) in w.caps.iter().enumerate() {
                if let Some(k) = old.caps.iter().position(|(o, _)| o == kind) {
                    next.words[w.at + 1 + 2 * j] = self.words[old.at + 1 + 2 * k];
                    next.words[w.at + 2 + 2 * j] = self.words[old.at + 2 + 2 * k];
                }
            }
        }
        for b in &plan.budgets {
            if let Some(old) = self.plan.budgets.iter().find(|o| o.period == b.period) {
                next.words[b.at..b.at + 3].copy_from_slice(&self.words[old.at..old.at + 3]);
            }
        }
        for lease in self.live_leases(now) {
            next.push_lease(lease, now);
        }
        *self = next;
    }

    fn inline_lease(&self, l: usize) -> Lease {
        let at = self.plan.leases_at + 2 * l;
        (self.words[at], get_i(&self.words, at + 1))
    }

    fn live_leases(&self, now: i64) -> Vec<Lease> {
        (0..self.plan.inline_leases)
            .map(|l| self.inline_lease(l))
            .chain(self.spill.iter().flat_map(|s| s.iter().copied()))
            .filter(|&(_, exp)| exp > now)
            .collect()
    }

    /// Forget expired spilled leases; returns the number of live leases and the soonest
    /// expiry among them.
    pub(super) fn count_leases(&mut self, now: i64) -> (usize, i64) {
        let mut live = 0;
        let mut soonest = i64::MAX;
        for l in 0..self.plan.inline_leases {
            let (_, exp) = self.inline_lease(l);
            if exp > now {
                live += 1;
                soonest = soonest.min(exp);
            }
        }
        if let Some(spill) = &mut self.spill {
            spill.retain(|&(_, exp)| exp > now);
            for &(_, exp) in spill.iter() {
                live += 1;
                soonest = soonest.min(exp);
            }
            if spill.is_empty() {
                self.spill = None;
            }
        }
        (live, soonest)
    }

    /// Take a lease: the first inline slot that is free or expired, else the spill vector.
    pub(super) fn push_lease(&mut self, (id, expiry): Lease, now: i64) {
        let at = self.plan.leases_at;
        for l in 0..self.plan.inline_leases {
            if get_i(&self.words, at + 2 * l + 1) <= now {
                self.words[at + 2 * l] = id;
                set_i(&mut self.words, at + 2 * l + 1, expiry);
                return;
            }
        }
        self.spill
            .get_or_insert_with(Default::default)
            .push((id, expiry));
    }

    /// Release lease `id`, returning its expiry (`None` if it is not held).
    pub(super) fn take_lease(&mut self, id: u64) -> Option<i64> {
        let at = self.plan.leases_at;
        for l in 0..self.plan.inline_leases {
            let exp = get_i(&self.words, at + 2 * l + 1);
            if self.words[at + 2 * l] == id && exp != FREE {
                set_i(&mut self.words, at + 2 * l + 1, FREE);
                return Some(exp);
            }
        }
        let spill = self.spill.as_mut()?;
        let pos = spill.iter().position(|&(l, _)| l == id)?;
        let (_, exp) = spill.swap_remove(pos);
        if spill.is_empty() {
            self.spill = None;
        }
        Some(exp)
    }

    /// Extend live lease `id` to `expiry`; `false` when it is not held or has expired.
    pub(super) fn extend_lease(&mut self, id: u64, now: i64, expiry: i64) -> bool {
        let at = self.plan.leases_at;
        for l in 0..self.plan.inline_leases {
            if self.words[at + 2 * l] == id && get_i(&self.words, at + 2 * l + 1) > now {
                set_i(&mut self.words, at + 2 * l + 1, expiry);
                return true;
            }
        }
        match self
            .spill
            .as_mut()
            .and_then(|s| s.iter_mut().find(|(l, exp)| *l == id && *exp > now))
        {
            Some((_, exp)) => {
                *exp = expiry;
                true
            }
            None => false,
        }
    }

    /// Check adding `add` against every window and budget at `now` and, if it fits, count
    /// it. Budget periods that ended are looked up (in the plan's shared cache) first.
    pub(super) fn try_add(
        &mut self,
        policy: &KeyPolicy,
        now: i64,
        add: &Counts,
    ) -> Result<(), Denial> {
        let plan = &*self.plan;
        let words = &mut *self.words;
        for w in &plan.windows {
            roll(&mut words[w.at..w.at + 1 + 2 * w.caps.len()], w.len_ms, now);
            let elapsed = now - get_i(words, w.at) * w.len_ms;
            for (j, &(kind, cap)) in w.caps.iter().enumerate() {
                let (prev, cur) = (words[w.at + 1 + 2 * j], words[w.at + 2 + 2 * j]);
                let add = amount(kind, add);
                if estimate(prev, cur, elapsed, w.len_ms).saturating_add(add) > cap {
                    return Err(Denial::RateLimited {
                        window_secs: w.secs,
                        cap: kind,
                        retry_after: retry_after(cap, prev, cur, add, elapsed, w.len_ms),
                    });
                }
            }
        }
        for (i, b) in plan.budgets.iter().enumerate() {
            let (start, end) = (get_i(words, b.at), get_i(words, b.at + 1));
            if now >= end || now < start {
                let (s, e) = plan.period(i, now, policy);
                if s != start {
                    words[b.at + 2] = 0;
                }
                set_i(words, b.at, s);
                set_i(words, b.at + 1, e);
            }
            if words[b.at + 2].saturating_add(add.cost) > b.cap {
                let end = get_i(words, b.at + 1);
                return Err(Denial::Budget {
                    period: b.period,
                    retry_after: (end != i64::MAX)
                        .then(|| Duration::from_millis(u64::try_from(end - now).unwrap_or(0))),
                });
            }
        }
        for w in &plan.windows {
            for (j, &(kind, _)) in w.caps.iter().enumerate() {
                let cur = &mut words[w.at + 2 + 2 * j];
                *cur = cur.saturating_add(amount(kind, add));
            }
        }
        for b in &plan.budgets {
            words[b.at + 2] = words[b.at + 2].saturating_add(add.cost);
        }
        Ok(())
    }

    /// Correct what a request admitted at `admitted` reserved by signed deltas. A window
    /// that has not rolled since holds the reservation in its current bucket (where a later
    /// roll finds it), one that rolled once in its previous bucket; older ones have
    /// forgotten it. A budget is corrected only within the period it was charged in.
    pub(super) fn adjust(&mut self, admitted: i64, d_tokens: i64, d_cost: i64) {
        let words = &mut *self.words;
        for w in &self.plan.windows {
            let bucket = get_i(words, w.at);
            let admitted_bucket = admitted.div_euclid(w.len_ms);
            let slot = if admitted_bucket == bucket {
                2
            } else if admitted_bucket + 1 == bucket {
                1
            } else {
                continue;
            };
            for (j, &(kind, _)) in w.caps.iter().enumerate() {
                let d = match kind {
                    WindowCap::Requests => continue,
                    WindowCap::Tokens => d_tokens,
                    WindowCap::Cost => d_cost,
                };
                let v = &mut words[w.at + slot + 2 * j];
                *v = apply_delta(*v, d);
            }
        }
        for b in &self.plan.budgets {
            if admitted >= get_i(words, b.at) && admitted < get_i(words, b.at + 1) {
                words[b.at + 2] = apply_delta(words[b.at + 2], d_cost);
            }
        }
    }

    /// Is there nothing worth keeping at `now`: every window aged out (two buckets), every
    /// budget's spend zero or in a past period, no live lease?
    pub(super) fn is_empty(&mut self, now: i64) -> bool {
        let words = &*self.words;
        let windows_empty = self
            .plan
            .windows
            .iter()
            .all(|w| now.div_euclid(w.len_ms) > get_i(words, w.at) + 1);
        let budgets_empty = self
            .plan
            .budgets
            .iter()
            .all(|b| words[b.at + 2] == 0 || now >= get_i(words, b.at + 1));
        windows_empty && budgets_empty && self.count_leases(now).0 == 0
    }
}

fn amount(kind: WindowCap, add: &Counts) -> u64 {
    match kind {
        WindowCap::Requests => add.requests,
        WindowCap::Tokens => add.tokens,
        WindowCap::Cost => add.cost,
    }
}

/// Move a window (`bucket, (prev, cur)*`) to the bucket containing `now`. A clock that went
/// backwards keeps the newest bucket rather than resurrecting old counts.
fn roll(w: &mut [u64], len_ms: i64, now: i64) {
    let bucket = now.div_euclid(len_ms);
    let current = get_i(w, 0);
    if bucket == current {
        return;
    }
    if bucket == current + 1 {
        for pair in w[1..].chunks_exact_mut(2) {
            pair[0] = pair[1];
            pair[1] = 0;
        }
    } else if bucket > current + 1 {
        w[1..].fill(0);
    } else {
        return;
    }
    set_i(w, 0, bucket);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roll_shifts_one_bucket_clears_after_two_and_ignores_the_past() {
        let mut w = [5u64, 1, 2, 3, 4];
        roll(&mut w, 1000, 5_500);
        assert_eq!(w, [5, 1, 2, 3, 4]);
        roll(&mut w, 1000, 6_000);
        assert_eq!(w, [6, 2, 0, 4, 0]);
        roll(&mut w, 1000, 4_000);
        assert_eq!(
            w,
            [6, 2, 0, 4, 0],
            "a clock going backwards changes nothing"
        );
        roll(&mut w, 1000, 8_000);
        assert_eq!(w, [8, 0, 0, 0, 0]);
    }
}
