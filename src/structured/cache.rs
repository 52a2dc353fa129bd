//! A bounded least-recently-used map (compiled grammars by schema hash).
//! Small by design: a linear scan picks the victim, which is cheap next to
//! compiling a grammar.

use std::collections::HashMap;

pub struct LruCache<V> {
    cap: usize,
    tick: u64,
    map: HashMap<[u8; 32], (V, u64)>,
}

impl<V: Clone> LruCache<V> {
    /// A cache of at most `cap` entries (0: nothing is kept).
    pub fn new(cap: usize) -> LruCache<V> {
        LruCache { cap, tick: 0, map: HashMap::new() }
    }

    pub fn get(&mut self, key: &[u8; 32]) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|(v, t)| {
            *t = tick;
            v.clone()
        })
    }

    /// Inserts, evicting the least recently used entry when full.
    pub fn insert(&mut self, key: [u8; 32], value: V) {
        if self.cap == 0 {
            return;
        }
        self.tick += 1;
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            if let Some(old) = self.map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                self.map.remove(&old);
            }
        }
        self.map.insert(key, (value, self.tick));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = LruCache::new(2);
        c.insert([1; 32], 1);
        c.insert([2; 32], 2);
        assert_eq!(c.get(&[1; 32]), Some(1));
        c.insert([3; 32], 3);
        assert_eq!(c.get(&[2; 32]), None);
        assert_eq!((c.get(&[1; 32]), c.get(&[3; 32]), c.len()), (Some(1), Some(3), 2));
        let mut none = LruCache::new(0);
        none.insert([1; 32], 1);
        assert!(none.is_empty());
    }
}
