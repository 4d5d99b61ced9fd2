//! The counter store: one counter per (rule, key), in a sharded map, each behind its own
//! mutex. Owns counter identity (`rule:key` strings), creation, retirement on reload and
//! sweeping of idle counters; must not decide requests or build events. Lock order is
//! always shard → counter, and several counters are locked in ascending `id` order, so
//! no two threads can deadlock.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono_tz::Tz;
use parking_lot::Mutex;
use tally_events::Timestamp;

use crate::policy::file::{Action, Algorithm, Rule, Unit};
use crate::policy::period::Period;
use crate::policy::rate_limit::{SlidingWindow, TokenBucket};
use crate::policy::usage_cap::CapMeter;

const SHARDS: usize = 64;

/// What a counter measures and how; a counter survives a reload only if its rule keeps
/// the same name and shape (the limit may change).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Shape {
    Window { unit: Unit, window_us: i64 },
    Bucket { unit: Unit, window_us: i64 },
    Cap { unit: Unit, period: Period, tz: Tz },
}

impl Shape {
    pub(crate) fn of(rule: &Rule) -> Option<Shape> {
        match &rule.action {
            Action::RateLimit(r) => Some(match r.algorithm {
                Algorithm::SlidingWindow => Shape::Window {
                    unit: r.unit,
                    window_us: r.window_us,
                },
                Algorithm::TokenBucket => Shape::Bucket {
                    unit: r.unit,
                    window_us: r.window_us,
                },
            }),
            Action::UsageCap(c) => Some(Shape::Cap {
                unit: c.unit,
                period: c.period,
                tz: c.tz,
            }),
            Action::Deny | Action::Allow => None,
        }
    }

    pub(crate) fn unit(self) -> Unit {
        match self {
            Shape::Window { unit, .. } | Shape::Bucket { unit, .. } | Shape::Cap { unit, .. } => {
                unit
            }
        }
    }
}

/// The state of one counter.
#[derive(Debug)]
pub(crate) enum Meter {
    Window(SlidingWindow),
    Bucket(TokenBucket),
    Cap(CapMeter),
}

impl Meter {
    fn new(shape: Shape, limit: i64, now: Timestamp) -> Self {
        match shape {
            Shape::Window { window_us, .. } => Meter::Window(SlidingWindow::new(window_us, now)),
            Shape::Bucket { window_us, .. } => {
                Meter::Bucket(TokenBucket::new(limit, window_us, now))
            }
            Shape::Cap { period, tz, .. } => Meter::Cap(CapMeter::new(period, tz, now)),
        }
    }
}

/// A counter's mutable part.
#[derive(Debug)]
pub(crate) struct CounterState {
    /// Set when the counter left the store (reload or sweep): whoever locked it from a
    /// stale handle must look it up again.
    pub(crate) retired: bool,
    pub(crate) meter: Meter,
}

/// One counter: a rule applied to one key.
#[derive(Debug)]
pub(crate) struct Counter {
    /// Unique and increasing: the lock order.
    pub(crate) id: u64,
    pub(crate) rule: Arc<str>,
    /// `rule:tenant=acme`, `rule:key_id=k1`, `rule:key=acme/gpt-4o`.
    pub(crate) key: String,
    pub(crate) shape: Shape,
    pub(crate) state: Mutex<CounterState>,
}

/// Where a request falls for one rule: the counter key and a phrase for reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CounterKey {
    /// Full key, `rule:label=value`.
    pub(crate) key: String,
    /// For sentences: `tenant acme`, `key_id k1`, `key acme/gpt-4o`.
    pub(crate) subject: String,
}

impl CounterKey {
    /// `label` is `tenant` for the default key, the expression for a simple path
    /// (`key_id`, `labels.team`), else `key`.
    pub(crate) fn new(rule: &str, label: &str, value: &str) -> Self {
        Self {
            key: format!("{rule}:{label}={value}"),
            subject: format!("{label} {value}"),
        }
    }
}

/// All counters.
#[derive(Debug)]
pub(crate) struct CounterStore {
    shards: Vec<Mutex<HashMap<String, Arc<Counter>>>>,
    next_id: AtomicU64,
}

impl CounterStore {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Arc<Counter>>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0);
        &self.shards[i]
    }

    /// The counter for `key`, created (with state as of `now`) if missing or if the
    /// existing one has another shape.
    pub(crate) fn get_or_create(
        &self,
        rule: &Arc<str>,
        key: &str,
        shape: Shape,
        limit: i64,
        now: Timestamp,
    ) -> Arc<Counter> {
        let mut shard = self.shard(key).lock();
        if let Some(c) = shard.get(key) {
            if c.shape == shape {
                return c.clone();
            }
            c.state.lock().retired = true;
        }
        let c = Arc::new(Counter {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            rule: rule.clone(),
            key: key.to_owned(),
            shape,
            state: Mutex::new(CounterState {
                retired: false,
                meter: Meter::new(shape, limit, now),
            }),
        });
        shard.insert(key.to_owned(), c.clone());
        c
    }

    /// Drop (and retire) every counter for which `keep` is false.
    pub(crate) fn retain(
        &self,
        mut keep: impl FnMut(&Counter, &mut CounterState) -> bool,
    ) -> usize {
        let mut dropped = 0;
        for shard in &self.shards {
            shard.lock().retain(|_, c| {
                let mut st = c.state.lock();
                let k = keep(c, &mut st);
                if !k {
                    st.retired = true;
                    dropped += 1;
                }
                k
            });
        }
        dropped
    }

    /// Every counter, in id order.
    pub(crate) fn all(&self) -> Vec<Arc<Counter>> {
        let mut v: Vec<Arc<Counter>> = self
            .shards
            .iter()
            .flat_map(|s| s.lock().values().cloned().collect::<Vec<_>>())
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_counter_until_the_shape_changes() {
        let store = CounterStore::new();
        let rule: Arc<str> = Arc::from("r");
        let now = Timestamp::from_micros(0);
        let w = Shape::Window {
            unit: Unit::Requests,
            window_us: 60_000_000,
        };
        let a = store.get_or_create(&rule, "r:tenant=a", w, 10, now);
        let b = store.get_or_create(&rule, "r:tenant=a", w, 10, now);
        assert!(Arc::ptr_eq(&a, &b));
        let other = Shape::Window {
            unit: Unit::Tokens,
            window_us: 60_000_000,
        };
        let c = store.get_or_create(&rule, "r:tenant=a", other, 10, now);
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(a.state.lock().retired);
        assert!(c.id > a.id);
        assert_eq!(store.retain(|_, _| false), 1);
        assert!(c.state.lock().retired);
        assert!(store.all().is_empty());
    }
}
