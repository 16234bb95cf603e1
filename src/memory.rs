//! Handing freed heap back to the system once the server is quiet.
//!
//! A burst of associations allocates from many threads (tokio workers and up
//! to 64 blocking-pool threads, each on a glibc arena), and delivering a large
//! `OnStudyCompleted` builds and drops one allocation per instance. Once that
//! memory is freed glibc keeps it: its automatic trim only returns the free
//! space at the top of a heap, never the free pages between chunks still in
//! use, so the resident size stays near the peak of the busiest moment (the
//! soak, `benches/soak.py`, measured +45 MiB with a live heap of 3 MiB).
//! `malloc_trim(0)` walks every arena and returns those pages.
//!
//! A server calls it when its counters (associations, objects, studies) have
//! stood still for a whole period, and once more a few seconds later, when
//! the blocking-pool threads of the burst have exited (their caches go back
//! to the arenas then) and the listeners had time to drop a large event. A
//! busy server never trims; an idle one trims twice per quiet spell and then
//! costs one timer tick per period. Elsewhere than glibc it does nothing.
//!
//! Trimming cannot return pages that still hold a live chunk, and every
//! arena keeps some: glibc gives each new thread its own arena up to eight
//! per core, and the threads of a 50-association burst (which also build
//! events and study records) spread their allocations over all of them.
//! The soak measured +16 to +20 MiB after trimming with the default, +6 to
//! +10 with 4 arenas. So the first server started caps the arenas at
//! [`ARENAS`] (`mallopt(M_ARENA_MAX)`), unless `MALLOC_ARENA_MAX` is set in
//! the environment, which glibc reads itself and which then wins.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::stats::Stats;

/// How long the counters must stay still before the heap is trimmed.
pub const QUIET_PERIOD: Duration = Duration::from_secs(1);

/// Idle blocking-pool threads exit after this (the runtime's keep-alive).
pub const THREAD_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The second trim of a quiet spell: once the burst's threads have exited.
pub const LATE_TRIM: Duration = Duration::from_secs(7);

/// Whether this build can hand free heap back (glibc).
pub const AVAILABLE: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Malloc arenas allowed when the environment does not say.
pub const ARENAS: i32 = 4;

/// Cap glibc's malloc arenas at [`ARENAS`] (see the module documentation),
/// once per process, unless `MALLOC_ARENA_MAX` is set. Elsewhere than glibc
/// it does nothing.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                // SAFETY: mallopt only sets an allocator parameter; arenas
                // that exist already stay in use.
                unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) };
            }
        });
    }
}

/// Return free heap pages of every malloc arena to the system (glibc's
/// `malloc_trim(0)`). Returns whether memory was released. Blocking (a few
/// milliseconds for a heap of a few hundred MiB).
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and only works on the
        // allocator's own state, under each arena's lock.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// What the trimmer looks at: any change means the server was busy.
pub type Activity = [u64; 6];

pub fn activity(stats: &Stats) -> Activity {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    [
        get(&stats.associations_open),
        get(&stats.associations_total),
        get(&stats.objects_stored),
        get(&stats.objects_failed),
        get(&stats.studies_pending),
        get(&stats.studies_completed),
    ]
}

/// The decision, apart from the clock: fed the activity once per period, it
/// says when to trim.
#[derive(Debug)]
pub struct QuietSpell {
    last_seen: Activity,
    /// Periods the activity has stood still.
    quiet: u32,
    /// The second trim, this many quiet periods into a spell.
    late: u32,
}

impl QuietSpell {
    /// A spell that starts as `now`, already trimmed (a server that has
    /// received nothing has nothing to give back); the second trim comes
    /// after `late` quiet periods.
    pub fn new(now: Activity, late: u32) -> Self {
        QuietSpell {
            last_seen: now,
            quiet: u32::MAX,
            late,
        }
    }

    /// `now` is the activity read one period after the previous call; true
    /// when the heap should be trimmed now.
    pub fn tick(&mut self, now: Activity) -> bool {
        if now == self.last_seen {
            self.quiet = self.quiet.saturating_add(1);
        } else {
            self.last_seen = now;
            self.quiet = 0;
        }
        self.quiet == 1 || self.quiet == self.late
    }
}

/// Trim the heap when the server is quiet for `period`, and again after
/// `late` of quiet (see the module documentation), until `shutdown`.
pub async fn trim_when_quiet(
    stats: Arc<Stats>,
    period: Duration,
    late: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if !AVAILABLE || period.is_zero() {
        return;
    }
    let late = u32::try_from(late.as_millis() / period.as_millis().max(1))
        .unwrap_or(u32::MAX)
        .max(2);
    let mut spell = QuietSpell::new(activity(&stats), late);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if *shutdown.borrow() {
            return;
        }
        if spell.tick(activity(&stats)) {
            let _ = tokio::task::spawn_blocking(release_free_heap).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_twice_per_quiet_spell() {
        let a = [0, 0, 0, 0, 0, 0];
        let mut spell = QuietSpell::new(a, 4);
        for _ in 0..10 {
            assert!(!spell.tick(a), "never busy: nothing to trim");
        }
        let b = [1, 1, 10, 0, 1, 0];
        let ticks: Vec<bool> = (0..8).map(|_| spell.tick(b)).collect();
        assert_eq!(
            ticks,
            [false, true, false, false, true, false, false, false],
            "busy, then quiet: trim at once and after 4 quiet periods"
        );
        // busy for several periods in a row: no trim until it settles
        for n in 11..20 {
            assert!(!spell.tick([1, 2, n, 0, 1, 1]));
        }
        assert!(
            spell.tick([1, 2, 19, 0, 1, 1]),
            "an open idle association still trims"
        );
        // a change in any counter starts a new spell
        assert!(!spell.tick([0, 2, 19, 0, 0, 2]));
        assert!(spell.tick([0, 2, 19, 0, 0, 2]));
    }

    #[tokio::test(start_paused = true)]
    async fn trimmer_follows_the_counters_and_stops() {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(trim_when_quiet(
            stats.clone(),
            Duration::from_secs(1),
            Duration::from_secs(3),
            rx,
        ));
        crate::stats::bump(&stats.objects_stored);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = tx.send(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the trimmer ends at shutdown")
            .expect("no panic");
    }

    #[test]
    fn release_reports_whether_it_could_run() {
        // Nothing to assert about the amount; it must not crash, and it can
        // only release anything where glibc is the allocator.
        let released = release_free_heap();
        assert!(AVAILABLE || !released);
    }
}
