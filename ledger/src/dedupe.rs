//! The set of recently materialized event ids used to drop duplicates (an event appended
//! twice, e.g. by a retrying or replaying producer). Owns the horizon and pruning; must
//! not decide when an id becomes known — the materializer inserts ids only after the
//! commit that wrote them succeeded, so a failed write never hides an event.
//!
//! Horizon: an id is remembered while the time it carries (UUIDv7 milliseconds; for
//! other UUID versions, the event's `occurred_at`) is within `dedupe_horizon_hours` of
//! now (ids are dropped by whole hours, so up to an hour longer). A duplicate of an event
//! older than that is not detected. Memory: 16 bytes per id plus the hash tables' slack,
//! about 20 to 40 bytes per event in the horizon.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use tally_events::{EventId, Timestamp};

/// Key of an event id: (its time in Unix milliseconds, its 128 bits).
pub(crate) type DedupeKey = (i64, u128);

/// Hasher of [`DedupeKey`]s: event ids are random in their low bits already (UUIDv7 and
/// v4), so a multiply-and-rotate mix is enough and far cheaper than SipHash.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    fn mix(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(26) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }

    fn write_i64(&mut self, v: i64) {
        self.mix(v as u64);
    }

    fn write_u128(&mut self, v: u128) {
        self.mix(v as u64);
        self.mix((v >> 64) as u64);
    }
}

/// A set of event ids (the 128 bits of [`DedupeKey`]s) with the cheap hasher.
pub(crate) type KeySet = HashSet<u128, BuildHasherDefault<KeyHasher>>;

/// The key of an event: the id's own UUIDv7 time, or `occurred_at` for other versions.
pub(crate) fn dedupe_key(id: &EventId, occurred_at: Timestamp) -> DedupeKey {
    let uuid = id.as_uuid();
    let bits = uuid.as_u128();
    let millis = if uuid.get_version_num() == 7 {
        i64::try_from(bits >> 80).unwrap_or(i64::MAX)
    } else {
        occurred_at.as_millis()
    };
    (millis, bits)
}

/// Keys are kept in hash sets per hour of their time, so lookups are O(1) and pruning
/// drops whole hours.
const BUCKET_MS: i64 = 3_600_000;

/// Recently committed event ids, bucketed by the hour of their time so the old ones are
/// cheap to drop.
#[derive(Debug, Default, Clone)]
pub(crate) struct DedupeSet {
    horizon_ms: i64,
    buckets: BTreeMap<i64, KeySet>,
    len: usize,
    /// The latest time of any id filed: an id of a later time is not in the set, which
    /// is the usual case for fresh events (ids are stamped when events are made, and the
    /// log holds them in about that order), answered without touching the tables.
    newest_ms: i64,
}

impl DedupeSet {
    pub(crate) fn new(horizon: std::time::Duration) -> Self {
        Self {
            horizon_ms: i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX),
            buckets: BTreeMap::new(),
            len: 0,
            newest_ms: i64::MIN,
        }
    }

    /// Milliseconds before which ids are forgotten.
    pub(crate) fn cutoff_ms(&self, now: Timestamp) -> i64 {
        now.as_millis().saturating_sub(self.horizon_ms)
    }

    pub(crate) fn contains(&self, key: &DedupeKey) -> bool {
        key.0 <= self.newest_ms
            && self
                .buckets
                .get(&key.0.div_euclid(BUCKET_MS))
                .is_some_and(|b| b.contains(&key.1))
    }

    /// Remember ids (call only once their commit succeeded).
    pub(crate) fn extend(&mut self, keys: impl IntoIterator<Item = DedupeKey>) {
        // Keys come mostly in time order: one bucket lookup per run of an hour's keys.
        let mut keys = keys.into_iter().peekable();
        while let Some(first) = keys.next() {
            self.newest_ms = self.newest_ms.max(first.0);
            let hour = first.0.div_euclid(BUCKET_MS);
            let bucket = self.buckets.entry(hour).or_default();
            let before = bucket.len();
            bucket.insert(first.1);
            while let Some(key) = keys.next_if(|k| k.0.div_euclid(BUCKET_MS) == hour) {
                self.newest_ms = self.newest_ms.max(key.0);
                bucket.insert(key.1);
            }
            self.len += bucket.len() - before;
        }
    }

    /// Forget ids older than the horizon (whole hours: the hour the cutoff falls in is kept).
    pub(crate) fn prune(&mut self, now: Timestamp) {
        let cutoff = self.cutoff_ms(now);
        let keep = self.buckets.split_off(&cutoff.div_euclid(BUCKET_MS));
        let dropped: usize = self.buckets.values().map(HashSet::len).sum();
        self.buckets = keep;
        self.len -= dropped;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// The ids of the batch being filled, to drop an event that comes twice within it. Ids
/// arrive mostly in ascending order (stamped when events are made, appended in about
/// that order), so they are kept as an ascending run that grows at its end, without
/// hashing; an id below the run's last is looked up in the run and filed in a hash set.
#[derive(Debug, Default)]
pub(crate) struct BatchIds {
    run: Vec<DedupeKey>,
    others: KeySet,
}

impl BatchIds {
    /// Add `key`; false if the batch holds it already.
    pub(crate) fn insert(&mut self, key: DedupeKey) -> bool {
        if self.run.last().is_none_or(|last| key > *last) {
            self.run.push(key);
            return true;
        }
        self.run.binary_search(&key).is_err() && self.others.insert(key.1)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.run.len() + self.others.len()
    }

    /// Empty, keeping room for as many ids as it held (batches are about the same size).
    pub(crate) fn clear(&mut self) {
        let others = self.others.len();
        self.run.clear();
        self.others.clear();
        self.others.shrink_to(others);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;

    #[test]
    fn v7_ids_are_keyed_by_their_own_time_and_pruned_by_it() {
        let now = Timestamp::now();
        let id = EventId::new();
        let key = dedupe_key(&id, Timestamp::from_micros(0));
        assert!((key.0 - now.as_millis()).abs() < 5_000, "{key:?}");

        let mut set = DedupeSet::new(Duration::from_secs(3600));
        let old = (now.as_millis() - 2 * 3_600_000, 1);
        set.extend([key, old]);
        assert!(set.contains(&key) && set.contains(&old));
        set.prune(now);
        assert!(set.contains(&key));
        assert!(!set.contains(&old));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn extend_files_keys_of_interleaved_hours_and_counts_each_once() {
        let mut set = DedupeSet::new(Duration::from_secs(1_000 * 3600));
        let hour = |h: i64, n: u128| (h * BUCKET_MS + 7, n);
        // Runs of one hour, an hour coming back after another, and a repeated key.
        let keys = [
            hour(1, 1),
            hour(1, 2),
            hour(2, 3),
            hour(1, 4),
            hour(1, 4),
            hour(3, 5),
            hour(2, 6),
        ];
        set.extend(keys);
        assert_eq!(set.len(), 6);
        assert!(keys.iter().all(|k| set.contains(k)));
        assert!(
            !set.contains(&hour(2, 1)),
            "a key is looked up in its own hour"
        );
        set.extend([hour(3, 5), hour(3, 8)]);
        assert_eq!(set.len(), 7);
    }

    #[test]
    fn fresh_ids_past_the_newest_are_not_contained_and_older_ones_are_looked_up() {
        let mut set = DedupeSet::new(Duration::from_secs(1_000 * 3600));
        assert!(!set.contains(&(0, 1)));
        set.extend([(10, 1), (5, 2), (20, 3)]);
        assert!(set.contains(&(5, 2)) && set.contains(&(20, 3)) && set.contains(&(10, 1)));
        assert!(!set.contains(&(21, 3)), "later than anything filed");
        assert!(!set.contains(&(7, 9)));
        set.extend([(30, 4)]);
        assert!(set.contains(&(30, 4)) && set.contains(&(5, 2)));
    }

    #[test]
    fn batch_ids_find_repeats_in_and_out_of_order() {
        let mut ids = BatchIds::default();
        for k in [(1, 1), (2, 5), (2, 6), (4, 0)] {
            assert!(ids.insert(k), "{k:?} is new");
        }
        // Repeats of the run's last, of an id inside it, and of an out-of-order id.
        assert!(!ids.insert((4, 0)));
        assert!(!ids.insert((2, 5)));
        assert!(ids.insert((2, 4)), "new, below the run's last");
        assert!(!ids.insert((2, 4)));
        assert!(ids.insert((9, 9)));
        assert!(!ids.insert((2, 4)) && !ids.insert((1, 1)));
        assert_eq!(ids.len(), 6);
        ids.clear();
        assert_eq!(ids.len(), 0);
        assert!(ids.insert((2, 4)) && ids.insert((1, 1)));
        assert!(!ids.insert((2, 4)));
    }

    #[test]
    fn other_versions_use_occurred_at() {
        let id = EventId::from(Uuid::from_u128(0x1234_5678_9abc_4def_8000_0000_0000_0001));
        let at = Timestamp::from_micros(1_764_064_800_123_456);
        assert_eq!(dedupe_key(&id, at).0, at.as_millis());
    }
}
