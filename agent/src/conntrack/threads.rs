//! [`ThreadTable`]: a value per thread key (a thread, or a Go program's
//! goroutine: `thread_key`), kept per process.
//!
//! Guarantees: at most `max` entries in all; a key that is not there when
//! the table is full makes it start over (the caller counts what that
//! dropped). A process's entries go in one step when it exits, so neither
//! churning processes nor a reused pid see what an exited process left.

use foldhash::{HashMap, HashMapExt};

pub struct ThreadTable<V> {
    by_process: HashMap<u32, HashMap<u32, V>>,
    len: usize,
    max: usize,
}

impl<V> ThreadTable<V> {
    pub fn new(max: usize) -> Self {
        Self { by_process: HashMap::new(), len: 0, max }
    }

    /// Entries in all processes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets thread `tid` of process `pid` to `value`. Returns the value it
    /// replaced, and how many entries were dropped to make room (all of
    /// them, when the table was full and the key new; else 0).
    pub fn insert(&mut self, pid: u32, tid: u32, value: V) -> (Option<V>, usize) {
        let known = self.by_process.get(&pid).is_some_and(|m| m.contains_key(&tid));
        let mut dropped = 0;
        if self.len >= self.max && !known {
            dropped = self.len;
            self.by_process.clear();
            self.len = 0;
        }
        let previous = self.by_process.entry(pid).or_default().insert(tid, value);
        self.len += usize::from(previous.is_none());
        (previous, dropped)
    }

    /// Forgets process `pid`'s entries (it exited).
    pub fn forget_process(&mut self, pid: u32) {
        if let Some(m) = self.by_process.remove(&pid) {
            self.len -= m.len();
        }
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let mut kept = 0;
        self.by_process.retain(|_, threads| {
            threads.retain(|_, v| keep(v));
            kept += threads.len();
            !threads.is_empty()
        });
        self.len = kept;
    }

    /// Processes with at least one entry.
    #[cfg(test)]
    pub fn processes(&self) -> usize {
        self.by_process.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_forgotten_per_process_and_swept() {
        let mut t = ThreadTable::new(3);
        assert_eq!(t.insert(1, 10, 'a'), (None, 0));
        assert_eq!(t.insert(1, 10, 'b'), (Some('a'), 0));
        assert_eq!(t.insert(1, 11, 'c'), (None, 0));
        assert_eq!(t.insert(2, 10, 'd'), (None, 0));
        assert_eq!(t.len(), 3);
        // Full: a known key still replaces, a new one starts over.
        assert_eq!(t.insert(2, 10, 'e'), (Some('d'), 0));
        assert_eq!(t.insert(3, 10, 'f'), (None, 3));
        assert_eq!((t.len(), t.processes()), (1, 1));
        t.insert(4, 1, 'g');
        t.insert(4, 2, 'h');
        t.forget_process(4);
        assert_eq!((t.len(), t.processes()), (1, 1));
        t.insert(5, 1, 'i');
        t.retain(|v| *v != 'f');
        assert_eq!((t.len(), t.processes()), (1, 1));
        t.retain(|_| false);
        assert!(t.is_empty());
        assert_eq!(t.processes(), 0);
    }
}
