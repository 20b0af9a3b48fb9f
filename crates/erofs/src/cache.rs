//! [`CacheBudget`]: one byte budget for the caches of every image that shares it, and
//! [`ImageCache`], one image's view of it.
//!
//! Everything an image caches (raw windows of the file, parsed inodes, compression
//! headers, decoded extents) is an entry of one shared budget, keyed by (image, what), and
//! weighed in bytes. The budget is split into shards by key hash (so readers of different
//! images rarely wait on each other); each shard is a two-generation approximate LRU:
//! entries go into `young`; when `young` reaches half the shard's share, `old` is dropped
//! and `young` becomes `old`; a hit in `old` moves the entry back to `young`. So a shard
//! never holds more than its share, and the budget never more than its size, plus what
//! readers still hold of entries already dropped (an `Arc` keeps a value alive while it
//! is in use; dropping only ends the cache's reference). An entry heavier than half a
//! shard's share is not cached.
//!
//! Releases: an image's entries leave the budget when its [`ImageCache`] is dropped (the
//! image closed), and [`CacheBudget::age`], called periodically, drops what nobody touched
//! since the call before the last one (idle images thus give their memory back).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::inode::InodeInfo;
use super::zmap::ZInfo;

/// Bookkeeping bytes counted per entry besides its value (map slot, `Arc` header).
const ENTRY_OVERHEAD: usize = 96;
/// Shard size the shard count aims at; at most `MAX_SHARDS` shards.
const SHARD_TARGET: usize = 8 << 20;
const MAX_SHARDS: usize = 8;

/// What one image caches, by its own key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// A raw window of the file, by its start.
    Window(u64),
    /// A parsed inode, by nid.
    Inode(u64),
    /// A compressed inode's map header, by nid.
    ZInfo(u64),
    /// A decoded extent, by (nid, logical start).
    Extent(u64, u64),
}

/// A cached value of any kind.
#[derive(Clone)]
pub(crate) enum Value {
    Bytes(Arc<Vec<u8>>),
    Inode(Arc<InodeInfo>),
    ZInfo(Arc<ZInfo>),
}

/// A type the cache holds: how it is wrapped and what it weighs.
pub(crate) trait Cached: Sized {
    fn wrap(v: Arc<Self>) -> Value;
    fn unwrap(v: &Value) -> Option<Arc<Self>>;
    /// Bytes this value occupies (without the entry's own bookkeeping).
    fn weight(&self) -> usize;
}

impl Cached for Vec<u8> {
    fn wrap(v: Arc<Self>) -> Value {
        Value::Bytes(v)
    }
    fn unwrap(v: &Value) -> Option<Arc<Self>> {
        match v {
            Value::Bytes(b) => Some(Arc::clone(b)),
            _ => None,
        }
    }
    fn weight(&self) -> usize {
        self.capacity()
    }
}

impl Cached for InodeInfo {
    fn wrap(v: Arc<Self>) -> Value {
        Value::Inode(v)
    }
    fn unwrap(v: &Value) -> Option<Arc<Self>> {
        match v {
            Value::Inode(i) => Some(Arc::clone(i)),
            _ => None,
        }
    }
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

impl Cached for ZInfo {
    fn wrap(v: Arc<Self>) -> Value {
        Value::ZInfo(v)
    }
    fn unwrap(v: &Value) -> Option<Arc<Self>> {
        match v {
            Value::ZInfo(z) => Some(Arc::clone(z)),
            _ => None,
        }
    }
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

type Gen = HashMap<(u64, Key), (Value, usize)>;

#[derive(Default)]
struct Shard {
    young: Gen,
    old: Gen,
    young_weight: usize,
    old_weight: usize,
}

impl Shard {
    fn weight(&self) -> usize {
        self.young_weight + self.old_weight
    }

    /// Makes `young` the old generation, dropping the old one; returns the bytes dropped.
    fn rotate(&mut self) -> usize {
        let dropped = self.old_weight;
        self.old = std::mem::take(&mut self.young);
        self.old_weight = std::mem::take(&mut self.young_weight);
        dropped
    }

    /// Inserts into `young`, rotating first if it would exceed `gen_cap`.
    fn insert(&mut self, gen_cap: usize, key: (u64, Key), value: Value, weight: usize) {
        if let Some((_, w)) = self.old.remove(&key) {
            self.old_weight -= w;
        }
        if let Some((_, w)) = self.young.remove(&key) {
            self.young_weight -= w;
        }
        if self.young_weight + weight > gen_cap {
            self.rotate();
        }
        self.young.insert(key, (value, weight));
        self.young_weight += weight;
    }
}

/// A byte budget shared by the caches of several images (a daemon has one for all of
/// them). `Send + Sync`; share it with `Arc`.
pub struct CacheBudget {
    bytes: usize,
    /// Half a shard's share: the most one generation of a shard holds.
    gen_cap: usize,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    next_image: AtomicU64,
    /// Bytes let go by closed images and [`CacheBudget::age`], not yet taken.
    released: AtomicUsize,
    /// Images closed, not yet taken ([`CacheBudget::take_closed`]).
    closed: AtomicUsize,
}

impl std::fmt::Debug for CacheBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBudget")
            .field("bytes", &self.bytes)
            .field("used", &self.used())
            .finish_non_exhaustive()
    }
}

impl CacheBudget {
    /// The budget a daemon uses unless told otherwise (and each image opened with
    /// [`Image::open`](crate::Image::open) has for itself).
    pub const DEFAULT: usize = 64 << 20;

    /// A budget of `bytes` (0 caches nothing).
    pub fn new(bytes: usize) -> CacheBudget {
        let n = (bytes / SHARD_TARGET).clamp(1, MAX_SHARDS);
        let n = 1usize << n.ilog2();
        CacheBudget {
            bytes,
            gen_cap: bytes / n / 2,
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            next_image: AtomicU64::new(0),
            released: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
        }
    }

    /// The budget's size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes the caches hold now (never more than [`bytes`](Self::bytes)).
    pub fn used(&self) -> usize {
        self.shards.iter().map(|s| s.lock().weight()).sum()
    }

    /// Drops every entry nobody used since the call before this one: called every
    /// `T / 2`, it lets go of what was idle for `T` (at least `T / 2`). Returns the bytes
    /// dropped.
    pub fn age(&self) -> usize {
        let dropped = self.shards.iter().map(|s| s.lock().rotate()).sum();
        self.released.fetch_add(dropped, Ordering::Relaxed);
        dropped
    }

    /// Bytes let go (by images closed and by [`age`](Self::age)) since the last call: a
    /// caller may give the heap's free memory back to the system when it is worth it.
    pub fn take_released(&self) -> usize {
        self.released.swap(0, Ordering::Relaxed)
    }

    /// Images closed since the last call. An image that closes frees more than its cache
    /// entries (its reader, its inode tables), and after [`age`](Self::age) dropped its
    /// idle entries its cache may free nothing at all: a caller trims the heap then too.
    pub fn take_closed(&self) -> usize {
        self.closed.swap(0, Ordering::Relaxed)
    }

    fn shard(&self, key: &(u64, Key)) -> Option<&Mutex<Shard>> {
        let h = self.hasher.hash_one(key) as usize;
        self.shards.get(h % self.shards.len())
    }

    fn get(&self, key: &(u64, Key)) -> Option<Value> {
        let mut s = self.shard(key)?.lock();
        if let Some((v, _)) = s.young.get(key) {
            return Some(v.clone());
        }
        let (v, w) = s.old.remove(key)?;
        s.old_weight -= w;
        s.insert(self.gen_cap, *key, v.clone(), w);
        Some(v)
    }

    fn insert(&self, key: (u64, Key), value: Value, weight: usize) {
        let weight = weight.saturating_add(ENTRY_OVERHEAD);
        if weight > self.gen_cap {
            return;
        }
        if let Some(s) = self.shard(&key) {
            s.lock().insert(self.gen_cap, key, value, weight);
        }
    }

    /// Drops every entry of image `image`.
    fn purge(&self, image: u64) {
        let mut dropped = 0;
        for s in self.shards.iter() {
            let mut s = s.lock();
            let gone = drop_image(&mut s.young, image);
            s.young_weight -= gone;
            dropped += gone;
            let gone = drop_image(&mut s.old, image);
            s.old_weight -= gone;
            dropped += gone;
        }
        self.released.fetch_add(dropped, Ordering::Relaxed);
    }
}

/// Removes `image`'s entries from `g`; returns their weight.
fn drop_image(g: &mut Gen, image: u64) -> usize {
    let mut gone = 0;
    g.retain(|k, (_, w)| {
        let keep = k.0 != image;
        if !keep {
            gone += *w;
        }
        keep
    });
    gone
}

/// One image's part of a [`CacheBudget`]; its entries leave the budget when it is dropped.
pub(crate) struct ImageCache {
    budget: Arc<CacheBudget>,
    id: u64,
}

impl ImageCache {
    pub(crate) fn new(budget: Arc<CacheBudget>) -> ImageCache {
        let id = budget.next_image.fetch_add(1, Ordering::Relaxed);
        ImageCache { budget, id }
    }

    pub(crate) fn get<T: Cached>(&self, key: Key) -> Option<Arc<T>> {
        T::unwrap(&self.budget.get(&(self.id, key))?)
    }

    pub(crate) fn insert<T: Cached>(&self, key: Key, value: Arc<T>) {
        let w = value.weight();
        self.budget.insert((self.id, key), T::wrap(value), w);
    }
}

impl Drop for ImageCache {
    fn drop(&mut self) {
        self.budget.purge(self.id);
        self.budget.closed.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, fill: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![fill; n])
    }

    #[test]
    fn stays_within_its_budget_and_keeps_the_hot_entry() {
        let b = Arc::new(CacheBudget::new(1 << 20));
        let c = ImageCache::new(Arc::clone(&b));
        c.insert(Key::Window(0), bytes(4096, 0xaa));
        for i in 1..2000u64 {
            c.insert(Key::Window(i * 4096), bytes(4096, i as u8));
            assert!(b.used() <= b.bytes(), "{} > {}", b.used(), b.bytes());
            let hot = c.get::<Vec<u8>>(Key::Window(0));
            assert!(
                hot.is_some_and(|v| v.iter().all(|&x| x == 0xaa)),
                "hot key stays"
            );
        }
        assert!(b.used() > b.bytes() / 4, "the budget is used: {}", b.used());
        assert!(
            c.get::<Vec<u8>>(Key::Window(4096)).is_none(),
            "cold key evicted"
        );
    }

    #[test]
    fn images_share_one_budget() {
        let b = Arc::new(CacheBudget::new(1 << 20));
        let images: Vec<_> = (0..16).map(|_| ImageCache::new(Arc::clone(&b))).collect();
        for (n, c) in images.iter().enumerate() {
            for i in 0..100u64 {
                c.insert(Key::Extent(1, i), bytes(8192, n as u8));
            }
        }
        assert!(b.used() <= b.bytes());
        // Same key, different images: never mixed up.
        for (n, c) in images.iter().enumerate() {
            if let Some(v) = c.get::<Vec<u8>>(Key::Extent(1, 99)) {
                assert!(v.iter().all(|&x| x == n as u8));
            }
        }
    }

    #[test]
    fn a_closed_image_leaves_the_budget() {
        let b = Arc::new(CacheBudget::new(1 << 20));
        let keep = ImageCache::new(Arc::clone(&b));
        let gone = ImageCache::new(Arc::clone(&b));
        keep.insert(Key::Window(0), bytes(1000, 1));
        for i in 0..10 {
            gone.insert(Key::Window(i), bytes(1000, 2));
        }
        let before = b.used();
        b.take_released();
        drop(gone);
        assert_eq!(b.used(), before - 10 * (1000 + ENTRY_OVERHEAD));
        assert_eq!(b.take_released(), 10 * (1000 + ENTRY_OVERHEAD));
        assert!(keep.get::<Vec<u8>>(Key::Window(0)).is_some());
    }

    #[test]
    fn a_closed_image_is_counted_even_with_nothing_cached() {
        let b = Arc::new(CacheBudget::new(1 << 20));
        let c = ImageCache::new(Arc::clone(&b));
        c.insert(Key::Window(0), bytes(1000, 1));
        b.age();
        b.age();
        b.take_released();
        assert_eq!(b.used(), 0);
        assert_eq!(b.take_closed(), 0);
        drop(c);
        assert_eq!(b.take_released(), 0);
        assert_eq!(b.take_closed(), 1);
        assert_eq!(b.take_closed(), 0);
    }

    #[test]
    fn aging_drops_what_was_idle_for_two_periods() {
        let b = Arc::new(CacheBudget::new(1 << 20));
        let c = ImageCache::new(Arc::clone(&b));
        c.insert(Key::Window(0), bytes(1000, 1));
        c.insert(Key::Window(1), bytes(1000, 1));
        b.age();
        assert!(
            c.get::<Vec<u8>>(Key::Window(0)).is_some(),
            "used since: kept"
        );
        b.age();
        assert!(
            c.get::<Vec<u8>>(Key::Window(1)).is_none(),
            "idle two periods: gone"
        );
        assert!(c.get::<Vec<u8>>(Key::Window(0)).is_some());
        b.age();
        b.age();
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn zero_budget_caches_nothing_and_heavy_entries_are_not_cached() {
        let b = Arc::new(CacheBudget::new(0));
        let c = ImageCache::new(Arc::clone(&b));
        c.insert(Key::Window(0), bytes(10, 1));
        assert!(c.get::<Vec<u8>>(Key::Window(0)).is_none());
        let b = Arc::new(CacheBudget::new(1 << 20));
        let c = ImageCache::new(Arc::clone(&b));
        c.insert(Key::Extent(0, 0), bytes(600 << 10, 1));
        assert!(c.get::<Vec<u8>>(Key::Extent(0, 0)).is_none());
        assert_eq!(b.used(), 0);
    }
}
