//! A policy's layout in Redis, and the admission script generated for it.
//!
//! Lua in Redis pays for every value it decodes or encodes and for every table it builds,
//! far more than for arithmetic on locals. So the admission script is generated per
//! *shape* of policy (which caps each rate window has, and the budgets' periods; not the
//! caps' values or window lengths, which are arguments): every value lives in a local,
//! the checks are straight-line code, and the state is decoded and encoded by one
//! `struct.unpack` / `struct.pack` each, with formats fixed in the script text. There are
//! at most a few distinct shapes per deployment (one per kind of plan), each one script.
//!
//! ## State layout (one string of little-endian doubles, integers below 2^53)
//!
//! ```text
//! cold: first, shape, ttl_until, 0-3 zeros of padding, len * nw,
//!       per window: bucket, prev count of each counted dimension,
//!       per budget: period start
//! hot:  per window: current count of each counted dimension, per budget: spent
//! records, 32 bytes each, from byte `first`:
//!   live lease:      -2 - lease id, expiry, admitted at, (unused)
//!   settlement note: -2 - lease id, -1 - settle time, token delta, cost delta
//!   settled lease (written in place by the previous version of settlement):
//!                    settle time, -1 - admitted at, token delta, cost delta
//!   (an expired lease keeps a positive expiry at or before now; admissions drop it)
//! ```
//!
//! A window counts requests, tokens and cost only if it caps them (a cap added later
//! counts from the change on). The padding makes the fixed part a multiple of 32 bytes,
//! so a record boundary is any offset that is a multiple of 32 bytes from the end, and a
//! negative lease id can never match a fixed value (all >= -1): a heartbeat finds its
//! lease with `string.find`, without decoding anything.
//!
//! ## Settlement notes
//!
//! Settlement is one `APPEND` of a note (no script, no read). Only `APPEND` adds notes,
//! and an admission that finds any rewrites the state without them (`SET`; a refusal
//! writes nothing and leaves them to the next admission), so the notes are always the
//! tail of the records: an admission finds them by reading records backwards from the
//! end, which costs one decode when there are none. A note settles
//! its lease if the lease was still live when it was settled (expiry > settle time); the
//! admission then folds the note's deltas into the counters as of the lease's admission
//! time, exactly as if they had been applied at settlement (they land in the same
//! buckets and periods, and nothing else moves buckets in between), and drops the lease.
//! The first note of a lease wins; a later one (a duplicate settlement), one for an
//! unknown lease, and one settled after its lease expired (the reservation stays counted)
//! are dropped with the rest. A note's second value is negative and a live lease's
//! positive, which tells them apart; an in-place settled record starts with a positive
//! settle time. Those are still folded, for states and instances of the previous version
//! during an upgrade (a lease that version admitted has no admission time: a note for it
//! releases the lease but may leave its estimate counted, as a late settlement does).
//!
//! `APPEND` to a missing key (the state expired or was deleted) creates a string of notes
//! only; the admission treats it as no state. The state outlives every live lease by at
//! least one lease TTL (an admission keeps it for at least twice the lease TTL, and a
//! heartbeat pushes it out to twice the lease TTL from then), so only a settlement that
//! came a lease TTL or more after its lease expired, which changes nothing anyway, can
//! find no state. The limiter then deletes the notes-only string again
//! (`drop_orphan.lua`); if that fails, the 32-byte note lives without a TTL until the
//! key's next admission overwrites it.
//!
//! An admission that changes only the hot values, reuses the first record slot and finds
//! no notes writes just those bytes (`SETRANGE`); any other admission rewrites the
//! state (`SET`).

use std::fmt::Write as _;

use relay_core::{BudgetPeriod, KeyPolicy};

const MIGRATE: &str = include_str!("migrate.lua");

/// Most rate windows and budgets a policy may have on the Redis limiter (the shape id has
/// 53 bits, and a generated script at most 200 Lua locals); `KeyPolicy::validate` refuses
/// more windows, and budgets are one per period (four at most).
pub(super) const MAX_WINDOWS: usize = KeyPolicy::MAX_RATE_WINDOWS;
/// See [`MAX_WINDOWS`].
pub(super) const MAX_BUDGETS: usize = 8;

/// Dimensions a window can cap: bit, name suffix, what one admission adds.
const DIMS: [(u8, char, &str); 3] = [(1, 'r', "1"), (2, 't', "tok"), (4, 'c', "cost")];

/// The layout-relevant facts of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    /// Per rate window: 1 requests, 2 tokens, 4 cost (the caps it has).
    pub(super) masks: Vec<u8>,
    /// Per budget: 1 daily, 2 weekly, 3 monthly, 4 total.
    pub(super) codes: Vec<u8>,
}

fn period_code(p: BudgetPeriod) -> u8 {
    match p {
        BudgetPeriod::Daily => 1,
        BudgetPeriod::Weekly => 2,
        BudgetPeriod::Monthly => 3,
        BudgetPeriod::Total => 4,
    }
}

impl Shape {
    /// The shape of `policy`, or `None` beyond [`MAX_WINDOWS`] / [`MAX_BUDGETS`].
    pub(super) fn of(policy: &KeyPolicy) -> Option<Shape> {
        if policy.rate_windows.len() > MAX_WINDOWS || policy.budgets.len() > MAX_BUDGETS {
            return None;
        }
        let masks = policy
            .rate_windows
            .iter()
            .map(|w| {
                u8::from(w.max_requests.is_some())
                    | u8::from(w.max_tokens.is_some()) << 1
                    | u8::from(w.max_cost.is_some()) << 2
            })
            .collect();
        let codes = policy
            .budgets
            .iter()
            .map(|b| period_code(b.period))
            .collect();
        Some(Shape { masks, codes })
    }

    /// A number naming the shape exactly (decoded by the migration code in Lua).
    pub(super) fn id(&self) -> u64 {
        let mut s: u64 = 1;
        for &c in &self.codes {
            s = s * 5 + u64::from(c);
        }
        for &m in &self.masks {
            s = s * 8 + u64::from(m);
        }
        (s * 16 + self.masks.len() as u64) * 16 + self.codes.len() as u64
    }

    fn dims(mask: u8) -> impl Iterator<Item = (char, &'static str)> {
        DIMS.iter()
            .filter(move |(bit, _, _)| mask & bit != 0)
            .map(|&(_, d, x)| (d, x))
    }

    /// Names of the cold and hot state values, in layout order.
    fn layout(&self) -> (Vec<String>, Vec<String>) {
        let mut cold: Vec<String> = vec!["first".into(), "shape".into(), "untl".into()];
        let mut rest = Vec::new();
        for i in 1..=self.masks.len() {
            rest.push(format!("sl{i}"));
        }
        let mut hot = Vec::new();
        for (i, &m) in self.masks.iter().enumerate() {
            let i = i + 1;
            rest.push(format!("b{i}"));
            for (d, _) in Self::dims(m) {
                rest.push(format!("p{i}{d}"));
                hot.push(format!("c{i}{d}"));
            }
        }
        for j in 1..=self.codes.len() {
            rest.push(format!("s{j}"));
        }
        for j in 1..=self.codes.len() {
            hot.push(format!("x{j}"));
        }
        let pad = (4 - (cold.len() + rest.len() + hot.len()) % 4) % 4;
        cold.extend((0..pad).map(|k| format!("z{k}")));
        cold.extend(rest);
        (cold, hot)
    }

    /// Argument names, in the order [`super::RedisLimiter`] encodes them.
    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["now", "lexp", "id", "conc", "tok", "cost", "expire"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        for (i, &m) in self.masks.iter().enumerate() {
            let i = i + 1;
            a.push(format!("L{i}"));
            for (d, _) in Self::dims(m) {
                a.push(format!("K{i}{d}"));
            }
        }
        for j in 1..=self.codes.len() {
            a.push(format!("S{j}"));
            a.push(format!("X{j}"));
        }
        a
    }

    /// The admission script for this shape.
    ///
    /// `ARGV[1]`: little-endian doubles `now, lease expiry, -2 - lease id, concurrency
    /// (0 = none), tokens, cost, key expiry (ms, 0 = never)`, then per window its length
    /// and the caps it has (requests, tokens, cost; -1 = none), then per budget the
    /// current period's start and the cap. Returns 1 when admitted, else
    /// `{0, kind, index, cap_kind, retry_ms}`: kind 1 concurrency (index = limit), 2 window
    /// (cap_kind 1 requests, 2 tokens, 3 cost), 3 budget.
    pub(super) fn admit_script(&self) -> String {
        let (cold, hot) = self.layout();
        let fix = cold.len() + hot.len();
        let first = fix * 8 + 1;
        let fmt = |n: usize| format!("'<{}'", "d".repeat(n));
        let state = cold
            .iter()
            .chain(&hot)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let args = self.args();
        let nw = self.masks.len();
        let list = |v: &[u8]| v.iter().map(u8::to_string).collect::<Vec<_>>().join(", ");
        let lens = (1..=nw).map(|i| format!("L{i}")).collect::<Vec<_>>();
        let mut o = String::new();
        // `write!` to a String cannot fail.
        let _ = writeln!(
            o,
            "-- Admission, generated for windows counting {:?} and budget periods {:?}.",
            self.masks, self.codes
        );
        let _ = writeln!(
            o,
            "local sunpack, spack, floor = struct.unpack, struct.pack, math.floor"
        );
        let _ = writeln!(
            o,
            "local {} = sunpack({}, ARGV[1])",
            args.join(", "),
            fmt(args.len())
        );
        let _ = writeln!(o, "local raw = redis.call('GET', KEYS[1])");
        let _ = writeln!(o, "local {state}, pos");
        let lens_differ: String = (1..=nw).map(|i| format!(" or sl{i} ~= L{i}")).collect();
        let _ = writeln!(
            o,
            "local fresh = true\n\
             if raw and #raw >= {bytes} then\n  \
               {state}, pos = sunpack({f}, raw)\n  \
               fresh = shape ~= {id} or first ~= {first} or (#raw - {bytes}) % 32 ~= 0{lens_differ}\n\
             end\n\
             local cold_dirty = fresh\n\
             if fresh then\n  \
               local masks, codes, lens, new_shape = {{ {masks} }}, {{ {codes} }}, {{ {lens} }}, {id}",
            bytes = fix * 8,
            f = fmt(fix),
            id = self.id(),
            masks = list(&self.masks),
            codes = list(&self.codes),
            lens = lens.join(", "),
        );
        o.push_str(MIGRATE);
        let _ = writeln!(o, "  {state}, pos = sunpack({}, raw)\nend", fmt(fix));
        // Settlement notes are the tail of the records: collect them from the end (no table
        // when there are none), the first note of a lease winning.
        let _ = writeln!(
            o,
            "local n, live, reuse = #raw, 0, false\n\
             local notes, tail = nil, n + 1\n\
             while tail > {first} do\n  \
               local a, e = sunpack('<dd', raw, tail - 32)\n  \
               if a >= 0 or e >= 0 then break end\n  \
               tail = tail - 32\n  \
               if not notes then notes = {{}} end\n  \
               notes[a] = tail\n\
             end"
        );
        // Fold settled leases into the counters; count live leases.
        let _ = writeln!(
            o,
            "while pos < tail do\n  \
               local a, e, v, w = sunpack('<dddd', raw, pos)\n  \
               local adm, dt, dc\n  \
               if e < 0 then\n    \
                 -- Settled in place by the previous version: settle time, -1 - admitted at.\n    \
                 if a >= 0 then adm, dt, dc = -1 - e, v, w end\n  \
               elseif notes then\n    \
                 local at = notes[a]\n    \
                 if at and at > 0 then\n      \
                   local st\n      \
                   st, dt, dc = sunpack('<ddd', raw, at + 8)\n      \
                   -- Only a note settled while its lease was live counts, and only once.\n      \
                   if e > -1 - st then adm, notes[a] = v, -pos end\n    \
                 end\n  \
               end\n  \
               if e > now and not adm then\n    \
                 live = live + 1\n  \
               else\n    \
                 -- The new lease can take the first record's slot if it is the only one freed.\n    \
                 reuse = pos == {first}\n    \
                 if adm then"
        );
        for (i, &m) in self.masks.iter().enumerate() {
            let i = i + 1;
            let ds: Vec<(char, &str)> = Self::dims(m)
                .filter(|(d, _)| *d != 'r')
                .map(|(d, _)| (d, if d == 't' { "dt" } else { "dc" }))
                .collect();
            if ds.is_empty() {
                continue;
            }
            let adjust = |p: char| {
                ds.iter()
                    .map(|(d, x)| {
                        format!(
                            "        {p}{i}{d} = {p}{i}{d} + {x}\n        \
                             if {p}{i}{d} < 0 then {p}{i}{d} = 0 end\n"
                        )
                    })
                    .collect::<String>()
            };
            let _ = write!(
                o,
                "      local ab = (adm - adm % L{i}) / L{i}\n      \
                 if b{i} == ab then\n{cur}      \
                 elseif b{i} == ab + 1 then\n{prev}        \
                 cold_dirty = true\n      \
                 end\n",
                cur = adjust('c'),
                prev = adjust('p'),
            );
        }
        for j in 1..=self.codes.len() {
            let _ = write!(
                o,
                "      if adm >= s{j} then\n        \
                 x{j} = x{j} + dc\n        \
                 if x{j} < 0 then x{j} = 0 end\n      \
                 end\n"
            );
        }
        let _ = writeln!(
            o,
            "    end\n  end\n  pos = pos + 32\nend\n\
             if conc > 0 and live >= conc then return {{ 0, 1, conc, 0, 1000 }} end"
        );
        // Windows: roll to the current bucket, then check every cap.
        for (i, &m) in self.masks.iter().enumerate() {
            let i = i + 1;
            let dims: Vec<(char, &str)> = Self::dims(m).collect();
            let ps: Vec<String> = dims.iter().map(|(d, _)| format!("p{i}{d}")).collect();
            let cs: Vec<String> = dims.iter().map(|(d, _)| format!("c{i}{d}")).collect();
            let (roll_next, roll_far) = if cs.is_empty() {
                (format!("b{i} = bucket"), format!("b{i} = bucket"))
            } else {
                let lhs = [ps.clone(), cs.clone(), vec![format!("b{i}")]]
                    .concat()
                    .join(", ");
                let zeros = vec!["0".to_string(); cs.len()];
                let next = [cs.clone(), zeros.clone(), vec!["bucket".into()]]
                    .concat()
                    .join(", ");
                let far = [zeros.clone(), zeros, vec!["bucket".into()]]
                    .concat()
                    .join(", ");
                (format!("{lhs} = {next}"), format!("{lhs} = {far}"))
            };
            let _ = writeln!(
                o,
                "do\n  \
                   local bucket = (now - now % L{i}) / L{i}\n  \
                   if bucket == b{i} + 1 then\n    \
                     {roll_next}\n    \
                     cold_dirty = true\n  \
                   elseif bucket > b{i} + 1 then\n    \
                     {roll_far}\n    \
                     cold_dirty = true\n  \
                   end\n  \
                   local elapsed = now - b{i} * L{i}\n  \
                   local remaining = L{i} - elapsed\n  \
                   if remaining < 0 then remaining = 0 end"
            );
            for (d, x) in dims {
                let kind = match d {
                    'r' => 1,
                    't' => 2,
                    _ => 3,
                };
                // ceil(prev * remaining / len) + cur + x > cap, without the ceil: the
                // right-hand side is an integer.
                let _ = writeln!(
                    o,
                    "  if K{i}{d} >= 0 and p{i}{d} * remaining / L{i} > K{i}{d} - c{i}{d} - {x} then\n    \
                       local len, cap, x, prev, cur, t = L{i}, K{i}{d}, {x}, p{i}{d}, c{i}{d}, 0\n    \
                       if x > cap then\n      \
                         t = len\n    \
                       elseif cur + x <= cap then\n      \
                         if prev > 0 then t = len - floor((cap - cur - x) * len / prev) end\n      \
                         t = t - elapsed\n    \
                       else\n      \
                         if cur > 0 then t = len - floor((cap - x) * len / cur) end\n      \
                         t = (len - elapsed) + t\n    \
                       end\n    \
                       if t < 1 then t = 1 end\n    \
                       return {{ 0, 2, {i}, {kind}, t }}\n  \
                     end"
                );
            }
            let _ = writeln!(o, "end");
        }
        // Budgets: a newer period resets the spend; a lagging instance's older one never does.
        for j in 1..=self.codes.len() {
            let _ = writeln!(
                o,
                "if S{j} > s{j} then s{j}, x{j}, cold_dirty = S{j}, 0, true end\n\
                 if x{j} + cost > X{j} then return {{ 0, 3, {j}, 0, 0 }} end"
            );
        }
        // Admit: count it everywhere and take a lease.
        for (i, &m) in self.masks.iter().enumerate() {
            for (d, x) in Self::dims(m) {
                let _ = writeln!(o, "c{n}{d} = c{n}{d} + {x}", n = i + 1);
            }
        }
        for j in 1..=self.codes.len() {
            let _ = writeln!(o, "x{j} = x{j} + cost");
        }
        let hot_list = if hot.is_empty() {
            String::new()
        } else {
            format!("{}, ", hot.join(", "))
        };
        // The key's TTL is set only when what is left (known from ttl_until, without a
        // PTTL) would not cover what the state must outlive, and then to twice that.
        let _ = write!(
            o,
            "local keep = expire > 0 and untl >= 0 and untl - now >= expire\n\
             if keep and reuse and not cold_dirty and not notes then\n  \
               -- Only the hot values and the first record's id, expiry and admission time\n  \
               -- change: write just those (the record's last value is unused).\n  \
               redis.call('SETRANGE', KEYS[1], '{hot_at}', spack({hot_fmt}, {hot_list}id, lexp, now))\n  \
               return 1\n\
             end\n\
             if not keep then\n  \
               if expire > 0 then untl = now + 2 * expire else untl = -1 end\n\
             end\n\
             -- Keep the live leases: notes, and the leases they settled, go.\n\
             local body, p = spack({full_fmt}, {state}, id, lexp, now, 0), {first}\n\
             while p < tail do\n  \
               local a, e = sunpack('<dd', raw, p)\n  \
               if e > now and not (notes and notes[a] == -p) then\n    \
                 body = body .. raw:sub(p, p + 31)\n  \
               end\n  \
               p = p + 32\n\
             end\n\
             if keep then\n  \
               redis.call('SET', KEYS[1], body, 'KEEPTTL')\n\
             elseif expire > 0 then\n  \
               redis.call('SET', KEYS[1], body, 'PX', 2 * expire)\n\
             else\n  \
               redis.call('SET', KEYS[1], body)\n\
             end\n\
             return 1\n",
            hot_at = cold.len() * 8,
            hot_fmt = fmt(hot.len() + 3),
            full_fmt = fmt(fix + 4),
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_ids_are_distinct_and_fit_in_a_double() {
        let a = Shape {
            masks: vec![3, 4],
            codes: vec![1, 3],
        };
        let b = Shape {
            masks: vec![4, 3],
            codes: vec![1, 3],
        };
        let c = Shape {
            masks: vec![3, 4],
            codes: vec![1],
        };
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        let big = Shape {
            masks: vec![7; MAX_WINDOWS],
            codes: vec![4; MAX_BUDGETS],
        };
        assert!(big.id() < 1 << 53);
    }

    #[test]
    fn the_fixed_part_is_a_multiple_of_32_bytes() {
        for masks in [vec![], vec![1], vec![3, 4], vec![7, 7, 7]] {
            for codes in [vec![], vec![4], vec![1, 3]] {
                let (cold, hot) = Shape {
                    masks: masks.clone(),
                    codes,
                }
                .layout();
                assert_eq!((cold.len() + hot.len()) % 4, 0);
            }
        }
    }
}
