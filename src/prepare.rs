//! Spool files made ready ahead of time, off the association's thread.
//!
//! On tmpfs most of the kernel's work for an object written to a new file
//! is giving the file its pages (allocating, charging and indexing one page
//! per 4 KiB), not copying the bytes into them: for a 0.5 MB CT slice about
//! 100 of the 140 µs its writes take. When an association has just stored an
//! object that went to a spool file, a thread of the server's creates its
//! next spool file and reserves as many bytes as that object had
//! (`fallocate` with `FALLOC_FL_KEEP_SIZE`: the pages exist, the file is
//! still empty), while the association answers and receives the next one.
//! The association takes the file when its next object needs one, or
//! creates its own if it is not ready yet (it never waits); bytes reserved
//! past the end of the object are given back before it is published.
//!
//! Only for a peer that sends its next object as soon as it has our
//! response (see [`Prepared::new`]): with one that takes its time, the
//! association has the time to make its own file, and the second core is
//! better left to the peer.
//!
//! Only for anonymous spool files on tmpfs: elsewhere `fallocate` reserves
//! disk blocks, not pages, and makes writes dearer. Each association holds
//! at most one prepared file of at most [`MAX_PREPARED`] bytes; the thread
//! ends when the server and its associations are gone.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};

use crate::stats::Stats;
use crate::storage::SpoolFile;
use crate::writer::SpoolPlace;

/// Objects up to this size have their successors prepared.
pub const MAX_PREPARED: u64 = 4 * 1024 * 1024;

/// Requests waiting for the thread; past this, requests are dropped (the
/// associations create their own files, as without preparation).
const QUEUE: usize = 64;

/// One association's prepared spool file, when there is one.
#[derive(Debug, Default)]
pub struct Slot(Mutex<Option<SpoolFile>>);

impl Slot {
    /// The prepared file, if it is ready.
    pub fn take(&self) -> Option<SpoolFile> {
        self.0.lock().ok().and_then(|mut f| f.take())
    }

    /// Keep `file` unless one is there already.
    fn fill(&self, file: SpoolFile) {
        if let Ok(mut f) = self.0.lock() {
            if f.is_none() {
                *f = Some(file);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.lock().map(|f| f.is_none()).unwrap_or(false)
    }
}

/// A writer's side: its slot, and the size its next object will likely
/// have (that of its last one, as in a series).
#[derive(Debug)]
pub struct Prepared {
    preparer: Preparer,
    slot: Arc<Slot>,
    last_size: u64,
    /// Whether the peer sends its next object as soon as it has our
    /// response (see [`Prepared::new`]).
    quick_peer: Arc<AtomicBool>,
}

impl Prepared {
    /// Files are asked for only while `quick_peer` holds: a peer that
    /// sends its next object at once keeps the association's thread busy,
    /// and the file made on another core is time won; a peer with gaps of
    /// its own (`storescu` reading its next file) leaves the thread time to
    /// make its own file, and preparing would only add the `fallocate` and a
    /// wake-up across cores to the CPU per object.
    pub fn new(preparer: Preparer, quick_peer: Arc<AtomicBool>) -> Prepared {
        Prepared {
            preparer,
            slot: Arc::new(Slot::default()),
            last_size: 0,
            quick_peer,
        }
    }

    fn ask(&self, size: u64) {
        if self.quick_peer.load(Ordering::Relaxed) {
            self.preparer.ask(&self.slot, size);
        }
    }

    /// A spool file for the object that begins, if one is ready; the one
    /// for the object after it is asked for at once, so that it has the
    /// time of a whole object to be made.
    pub fn take(&self) -> Option<SpoolFile> {
        let file = self.slot.take();
        self.ask(self.last_size);
        file
    }

    /// An object of `size` bytes was spooled.
    pub fn finished(&mut self, size: u64) {
        self.last_size = size;
        // the first one, or one that came when nothing was ready
        self.ask(size);
    }
}

struct Request {
    slot: Weak<Slot>,
    size: u64,
}

/// The server's handle to its preparing thread.
#[derive(Debug, Clone)]
pub struct Preparer {
    tx: SyncSender<Request>,
    /// Open associations, read to leave the cores to them when they are
    /// as many as the cores.
    stats: Arc<Stats>,
    cores: u64,
}

impl Preparer {
    /// A preparer for spool files in `place`, when they are anonymous files
    /// on tmpfs; `None` anywhere else (or if its thread cannot start).
    pub fn for_place(place: &SpoolPlace, stats: Arc<Stats>) -> Option<Preparer> {
        if !place.anonymous || !on_tmpfs(&place.dir) {
            return None;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Preparer::start(place.clone(), stats, cores as u64).ok()
    }

    /// Start the thread (whatever the filesystem); it prepares files while
    /// fewer than `cores` associations are open.
    pub fn start(place: SpoolPlace, stats: Arc<Stats>, cores: u64) -> io::Result<Preparer> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("storescp-spool".into())
            .spawn(move || prepare(&place, rx))?;
        Ok(Preparer { tx, stats, cores })
    }

    /// Have a spool file reserving `size` bytes put into `slot`, unless it
    /// holds one. Never waits.
    pub fn ask(&self, slot: &Arc<Slot>, size: u64) {
        if size == 0 || size > MAX_PREPARED || !slot.is_empty() {
            return;
        }
        // With every core busy receiving, this thread would only take
        // time from them.
        if self.stats.associations_open.load(Ordering::Relaxed) >= self.cores {
            return;
        }
        let request = Request {
            slot: Arc::downgrade(slot),
            size,
        };
        match self.tx.try_send(request) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The thread: one request at a time, until every handle is dropped.
fn prepare(place: &SpoolPlace, rx: Receiver<Request>) {
    while let Ok(Request { slot, size }) = rx.recv() {
        // the association may have ended, or been served already
        if !slot.upgrade().is_some_and(|s| s.is_empty()) {
            continue;
        }
        let Ok(mut file) = place.create() else {
            continue;
        };
        // Without the reservation the file is still a good spool file.
        let _ = file.reserve(size);
        if let Some(slot) = slot.upgrade() {
            slot.fill(file);
        }
    }
}

/// Whether `dir` is on tmpfs (or ramfs' successor shmem).
fn on_tmpfs(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        // SAFETY: `path` is NUL-terminated and outlives the call; `st` is
        // writable memory of the right type, read only on success.
        let rc = unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return false;
        }
        // SAFETY: statfs succeeded, so it filled `st`.
        let st = unsafe { st.assume_init() };
        st.f_type == libc::TMPFS_MAGIC
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    fn place(dir: &Path) -> SpoolPlace {
        SpoolPlace {
            dir: dir.to_path_buf(),
            anonymous: true,
        }
    }

    fn wait_for(slot: &Slot) -> SpoolFile {
        let start = Instant::now();
        loop {
            if let Some(f) = slot.take() {
                return f;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never prepared");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A preparer for a fresh folder, with one core, and an empty slot.
    fn preparer_and_slot() -> (tempfile::TempDir, Preparer, Arc<Slot>) {
        let dir = tempfile::tempdir().unwrap();
        let preparer = Preparer::start(place(dir.path()), Arc::default(), 1).unwrap();
        (dir, preparer, Arc::new(Slot::default()))
    }

    /// A prepared file is empty, reserves what was asked, and once written
    /// and trimmed holds exactly what was written.
    #[test]
    fn prepares_reserves_and_trims() {
        let (_dir, preparer, slot) = preparer_and_slot();
        preparer.ask(&slot, 300_000);
        let mut file = wait_for(&slot);
        assert_eq!(file.len, 0);
        let meta = file.file.metadata().unwrap();
        assert_eq!(meta.len(), 0);
        // tmpfs and ext4 both count the reservation (other filesystems
        // may refuse it, which leaves a plain spool file)
        let reserved = file.reserved;
        if reserved > 0 {
            assert!(meta.blocks() * 512 >= 300_000);
        }
        file.file.write_all(&[7u8; 100_000]).unwrap();
        file.len = 100_000;
        file.trim();
        let meta = file.file.metadata().unwrap();
        assert_eq!(meta.len(), 100_000);
        assert!(meta.blocks() * 512 < 200_000, "{} blocks", meta.blocks());
    }

    /// Nothing is prepared for a slot that holds a file, that is gone, or
    /// for sizes out of range.
    #[test]
    fn prepares_only_when_wanted() {
        let (_dir, preparer, slot) = preparer_and_slot();
        preparer.ask(&slot, 0);
        preparer.ask(&slot, MAX_PREPARED + 1);
        // a request behind them shows they were skipped
        let gone = Arc::new(Slot::default());
        preparer.ask(&gone, 1000);
        drop(gone);
        preparer.ask(&slot, 5000);
        let file = wait_for(&slot);
        assert!(file.reserved == 0 || file.reserved == 5000);
        std::thread::sleep(Duration::from_millis(50));
        assert!(slot.take().is_none(), "one request, one file");
    }

    /// With as many associations open as cores, nothing is prepared.
    #[test]
    fn leaves_busy_cores_alone() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let preparer = Preparer::start(place(dir.path()), stats.clone(), 2).unwrap();
        let slot = Arc::new(Slot::default());
        let _a = crate::stats::OpenAssociation::new(&stats);
        {
            let _b = crate::stats::OpenAssociation::new(&stats);
            preparer.ask(&slot, 5000);
            std::thread::sleep(Duration::from_millis(50));
            assert!(slot.take().is_none(), "prepared with every core busy");
        }
        preparer.ask(&slot, 5000);
        wait_for(&slot);
    }

    #[test]
    fn tmpfs_is_recognised() {
        if Path::new("/dev/shm").is_dir() {
            assert!(on_tmpfs(Path::new("/dev/shm")));
        }
        assert!(!on_tmpfs(Path::new("/proc")));
        assert!(!on_tmpfs(Path::new("/no/such/dir")));
    }
}
