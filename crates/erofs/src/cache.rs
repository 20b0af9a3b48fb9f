//! A small bounded approximate-LRU map ("two generations").
//!
//! Entries live in `young` or `old`. Inserting into a full `young` generation
//! drops `old` and demotes `young` to `old`; a hit in `old` promotes the entry.
//! Memory is bounded by about `2 * budget` weight units plus one entry, with
//! O(1) operations and no unsafe code or panicking paths.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

struct Gens<K, V> {
    young: HashMap<K, (Arc<V>, usize)>,
    old: HashMap<K, (Arc<V>, usize)>,
    young_weight: usize,
}

/// Thread-safe bounded cache of `Arc<V>` values with caller-given weights.
pub(crate) struct Cache<K, V> {
    budget: usize,
    inner: Mutex<Gens<K, V>>,
}

impl<K: Hash + Eq + Copy, V> Cache<K, V> {
    /// A cache keeping roughly `budget` (and at most `2 * budget`) weight.
    pub(crate) fn new(budget: usize) -> Self {
        Cache {
            budget: budget.max(1),
            inner: Mutex::new(Gens {
                young: HashMap::new(),
                old: HashMap::new(),
                young_weight: 0,
            }),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<Arc<V>> {
        let mut g = self.inner.lock();
        if let Some((v, _)) = g.young.get(key) {
            return Some(Arc::clone(v));
        }
        let (v, w) = g.old.remove(key)?;
        let out = Arc::clone(&v);
        Self::insert_locked(&mut g, self.budget, *key, v, w);
        Some(out)
    }

    pub(crate) fn insert(&self, key: K, value: Arc<V>, weight: usize) {
        let mut g = self.inner.lock();
        Self::insert_locked(&mut g, self.budget, key, value, weight);
    }

    fn insert_locked(g: &mut Gens<K, V>, budget: usize, key: K, value: Arc<V>, weight: usize) {
        if g.young_weight.saturating_add(weight) > budget && !g.young.is_empty() {
            g.old = std::mem::take(&mut g.young);
            g.young_weight = 0;
        }
        g.old.remove(&key);
        if let Some((_, w)) = g.young.insert(key, (value, weight)) {
            g.young_weight = g.young_weight.saturating_sub(w);
        }
        g.young_weight = g.young_weight.saturating_add(weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_promotes() {
        let c: Cache<u32, u32> = Cache::new(4);
        for i in 0..100 {
            c.insert(i, Arc::new(i), 1);
            assert!(c.get(&0).is_some(), "hot key stays");
        }
        let g = c.inner.lock();
        assert!(g.young.len() + g.old.len() <= 9);
    }
}
