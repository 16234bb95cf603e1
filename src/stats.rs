//! Counters a user can read while the server runs (`StoreScp.stats()`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one server; every field only goes up except
/// `associations_open` and `studies_pending`.
#[derive(Debug, Default)]
pub struct Stats {
    pub associations_open: AtomicU64,
    pub associations_total: AtomicU64,
    pub associations_rejected: AtomicU64,
    pub objects_stored: AtomicU64,
    pub objects_failed: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub studies_pending: AtomicU64,
    pub studies_completed: AtomicU64,
}

/// Add one to a counter; returns the new value.
pub fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

impl Stats {
    /// Name and value of every counter, in a stable order.
    pub fn snapshot(&self) -> [(&'static str, u64); 8] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("associations_open", get(&self.associations_open)),
            ("associations_total", get(&self.associations_total)),
            ("associations_rejected", get(&self.associations_rejected)),
            ("objects_stored", get(&self.objects_stored)),
            ("objects_failed", get(&self.objects_failed)),
            ("bytes_stored", get(&self.bytes_stored)),
            ("studies_pending", get(&self.studies_pending)),
            ("studies_completed", get(&self.studies_completed)),
        ]
    }
}

/// Counts an open association for as long as it lives.
pub struct OpenAssociation<'a>(&'a Stats);

impl<'a> OpenAssociation<'a> {
    pub fn new(stats: &'a Stats) -> Self {
        bump(&stats.associations_total);
        bump(&stats.associations_open);
        OpenAssociation(stats)
    }
}

impl Drop for OpenAssociation<'_> {
    fn drop(&mut self) {
        self.0.associations_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_associations_are_counted_while_alive() {
        let stats = Stats::default();
        {
            let _a = OpenAssociation::new(&stats);
            let _b = OpenAssociation::new(&stats);
            assert_eq!(stats.snapshot()[0], ("associations_open", 2));
        }
        assert_eq!(stats.snapshot()[0], ("associations_open", 0));
        assert_eq!(stats.snapshot()[1], ("associations_total", 2));
    }
}
