//! Waiting for a quick peer's next bytes by polling its socket instead of
//! sleeping.
//!
//! A sender that waits for each response before it sends the next object
//! (every SCU without asynchronous operations) leaves the receiver's thread
//! nothing to do between its response and the next request. Sleeping there
//! costs a wake-up per object, and on a virtual machine an idle vCPU halts:
//! waking it is an interrupt through the hypervisor, tens of microseconds,
//! often longer than a quick peer takes to send its next request. When the
//! peer's recent gaps were shorter than [`BUDGET`], the reader polls the
//! socket for up to that long first (yielding the CPU to any other runnable
//! thread as it goes), and sleeps only if nothing came.
//!
//! Inside a message a wake-up delays nobody, but it is not free either: on
//! the same host the sender pays for it. Its `write` runs our side of the
//! connection too, wake-up included, and dcmtk's `storescu` writes each
//! PDU's header and its body separately, and reads its file between the
//! command and the data set: a receiver that sleeps whenever it has caught
//! up is woken two or three times per object, one that is always a little
//! behind (dcmtk's) about once. Spinning there too cut `storescu`'s CPU per
//! CT slice by up to a fifth in alternating runs (by nothing in some), and
//! a sender that is CPU-bound sends that much faster. So the waits for the
//! rest of a message begun are spun for too, with a record of the peer's
//! gaps of their own: a slow link stops that spinning without touching the
//! spinning for requests, and the other way round.
//!
//! What it costs is bounded: at most [`BUDGET`] of CPU per wait, and only
//! while the peer's gaps stay short: one spin that comes up empty stops the
//! spinning until the gaps shrink again. At most one connection per CPU
//! beyond the first spins at a time, so parallel associations on a small
//! machine keep their CPUs.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest spin, and the gap above which a peer is not waited for spinning.
pub const BUDGET: Duration = Duration::from_micros(100);

/// Weight of a new gap that is shorter than the estimate (a gap that is
/// longer replaces it at once).
const SHRINK_WEIGHT: u32 = 4;

/// A limit on how many connections spin at once.
#[derive(Debug)]
pub struct Spinners {
    spinning: AtomicUsize,
    allowed: usize,
}

impl Spinners {
    pub const fn new(allowed: usize) -> Self {
        Spinners {
            spinning: AtomicUsize::new(0),
            allowed,
        }
    }

    /// The process's limit: one spinning connection per CPU beyond the first.
    pub fn process() -> &'static Spinners {
        static PROCESS: OnceLock<Spinners> = OnceLock::new();
        PROCESS.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            Spinners::new(cpus.saturating_sub(1))
        })
    }

    fn take(&self) -> Option<Slot<'_>> {
        self.spinning
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.allowed).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self))
    }
}

/// A spinning slot, given back when dropped.
struct Slot<'a>(&'a Spinners);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.spinning.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's record of its peer's gaps, and the spinning it decides.
#[derive(Debug)]
pub struct Spinner {
    limit: &'static Spinners,
    /// Estimated gap before the peer's next bytes come (after our response,
    /// or inside a message: the reader keeps a record for each).
    estimate: Duration,
    /// When the wait in progress began.
    waiting: Option<Instant>,
}

impl Spinner {
    /// A connection that has not been waited for yet (it may spin at once),
    /// sharing `limit` with the others.
    pub fn new(limit: &'static Spinners) -> Self {
        Spinner {
            limit,
            estimate: Duration::ZERO,
            waiting: None,
        }
    }

    /// The peer's estimated gap before its next bytes.
    pub fn estimate(&self) -> Duration {
        self.estimate
    }

    /// Begin a wait for `fd` to become readable (under its receive
    /// low-water mark): poll it for up to [`BUDGET`] if the peer has been
    /// quick. Returns whether it became readable while polled; either way
    /// the caller then reads as usual, and calls [`Spinner::arrived`] once
    /// bytes are in.
    pub fn wait(&mut self, fd: BorrowedFd<'_>) -> bool {
        let began = Instant::now();
        self.waiting = Some(began);
        if self.estimate >= BUDGET {
            return false;
        }
        let Some(_slot) = self.limit.take() else {
            return false;
        };
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: `poll` is one valid pollfd for the duration of the call,
            // and `fd` is borrowed, so open, for as long.
            let ready = unsafe { libc::poll(&mut poll, 1, 0) };
            // Readable, closed or in error: the read that follows finds out.
            if ready != 0 {
                return ready > 0;
            }
            if began.elapsed() >= BUDGET {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// Bytes came in: the wait begun last is over; learn from its length.
    pub fn arrived(&mut self) {
        if let Some(began) = self.waiting.take() {
            self.learn(began.elapsed());
        }
    }

    fn learn(&mut self, gap: Duration) {
        self.estimate = if gap >= self.estimate {
            gap
        } else {
            self.estimate - (self.estimate - gap) / SHRINK_WEIGHT
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    /// A limit of its own per test: tests run in parallel.
    fn spinner() -> Spinner {
        Spinner::new(Box::leak(Box::new(Spinners::new(1))))
    }

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn a_quick_peer_is_caught_spinning() {
        let (mut tx, rx) = pair();
        let mut spinner = spinner();
        tx.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(spinner.wait(rx.as_fd()));
        spinner.arrived();
        assert!(spinner.estimate() < BUDGET);
    }

    #[test]
    fn a_slow_peer_stops_the_spinning_until_it_is_quick_again() {
        let (mut tx, rx) = pair();
        let mut spinner = spinner();
        // Nothing comes within the budget: the spin gives up.
        let began = Instant::now();
        assert!(!spinner.wait(rx.as_fd()));
        assert!(began.elapsed() >= BUDGET);
        std::thread::sleep(Duration::from_millis(5));
        spinner.arrived();
        assert!(spinner.estimate() >= Duration::from_millis(5));
        // Now the peer is fast, but the estimate is high: no spin, at once.
        tx.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!spinner.wait(rx.as_fd()));
        // Quick gaps bring the estimate down step by step.
        let mut waits = 0;
        while spinner.estimate() >= BUDGET {
            spinner.wait(rx.as_fd());
            spinner.arrived();
            waits += 1;
            assert!(waits < 100, "the estimate never came down");
        }
        assert!(waits > 1);
        assert!(spinner.wait(rx.as_fd()));
    }

    #[test]
    fn no_more_spin_at_once_than_the_limit_allows() {
        let (mut tx, rx) = pair();
        tx.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let limit: &'static Spinners = Box::leak(Box::new(Spinners::new(1)));
        let held = limit.take();
        assert!(held.is_some());
        assert!(!Spinner::new(limit).wait(rx.as_fd()));
        drop(held);
        assert!(Spinner::new(limit).wait(rx.as_fd()));
        let none: &'static Spinners = Box::leak(Box::new(Spinners::new(0)));
        assert!(!Spinner::new(none).wait(rx.as_fd()));
    }

    #[test]
    fn learning_takes_a_longer_gap_at_once_and_a_shorter_one_slowly() {
        let mut spinner = spinner();
        assert_eq!(spinner.estimate(), Duration::ZERO);
        spinner.learn(Duration::from_micros(400));
        assert_eq!(spinner.estimate(), Duration::from_micros(400));
        spinner.learn(Duration::from_micros(0));
        assert_eq!(spinner.estimate(), Duration::from_micros(300));
        spinner.learn(Duration::from_micros(500));
        assert_eq!(spinner.estimate(), Duration::from_micros(500));
    }
}
