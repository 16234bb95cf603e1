//! Each association's blocking file work: spool writes and publishing.
//!
//! An association over plain TCP to the filesystem has a thread of its own
//! (see `server.rs`); its writer works inline, on that thread, when called.
//! Any other association (TLS, S3) runs as a task on the server's runtime,
//! where blocking calls must not run: its writer is a thread of the
//! association's own, to which the task sends the pieces of an object in
//! order, without waiting for them (the channel's capacity bounds what is in
//! flight); only the end of an object is a round trip, which also publishes
//! it when the backend publishes with plain file operations. That thread
//! starts with the association's first object and ends when the association
//! drops its handle; whatever was not finished then (an object cut off by an
//! abort) is dropped with its spool file.

use std::io::{self, IoSlice, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::prepare::{Prepared, Preparer};
use crate::storage::{ObjectKey, SpoolFile, Spooled, Storage, StorageError, Stored};

/// Pieces queued to a writer beyond the one it is writing; the sender waits
/// when the writer is this far behind (backpressure, bounded memory).
const QUEUE: usize = 2;

/// Spare buffers kept for reuse per association.
const SPARE_BUFFERS: usize = 2;

/// Where and how spool files are created.
#[derive(Debug, Clone)]
pub struct SpoolPlace {
    pub dir: PathBuf,
    pub anonymous: bool,
}

impl SpoolPlace {
    /// Where `storage` wants its spool files.
    pub fn of(storage: &dyn Storage) -> SpoolPlace {
        SpoolPlace {
            dir: storage.spool_dir().to_path_buf(),
            anonymous: storage.anonymous_spool(),
        }
    }

    fn create_once(&self) -> io::Result<SpoolFile> {
        if self.anonymous {
            SpoolFile::create_anonymous(&self.dir)
        } else {
            SpoolFile::create(&self.dir)
        }
    }

    /// Create a spool file (blocking); a spool directory removed behind the
    /// server's back (out_dir deleted, volume remounted) is made again.
    pub fn create(&self) -> io::Result<SpoolFile> {
        match self.create_once() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir)?;
                self.create_once()
            }
            other => other,
        }
    }
}

/// What the writer does once an object's last bytes are written.
pub enum Then {
    /// Publish it under this key (backends with a blocking publisher).
    Publish { key: ObjectKey },
    /// Hand the complete spooled object back.
    Return,
}

/// The result of finishing an object.
#[derive(Debug)]
pub enum Finished {
    Published(Stored),
    Spooled(Spooled),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot spool object: {0}")]
    Spool(#[from] io::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("writer thread is gone")]
    Gone,
}

enum Job {
    /// Append to object `seq`'s spool file (created with its first piece).
    Piece { seq: u64, buf: Vec<u8> },
    /// Object `seq` is complete with `tail` as its last bytes (or all of
    /// them, if nothing was written before).
    Finish {
        seq: u64,
        tail: Vec<u8>,
        then: Then,
        reply: oneshot::Sender<Result<Finished, WriteError>>,
    },
    /// Object `seq` was refused: drop what was written of it.
    Discard { seq: u64 },
}

/// The association's side of its writer. Cloning gives another handle to
/// the same writer.
#[derive(Clone)]
pub struct Writer {
    route: Route,
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Whether spool files are prepared ahead (see [`Writer::quick_peer`]).
    quick_peer: Arc<AtomicBool>,
}

/// Where a writer's jobs run.
#[derive(Clone)]
enum Route {
    /// On a thread of the writer's own, in order.
    Thread(mpsc::Sender<Job>),
    /// On the caller's thread, at once: for an association that has a
    /// thread to itself (see `server.rs`), where blocking delays nobody else.
    Inline(Arc<Mutex<FileWork>>),
}

/// Where a writer runs its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    OwnThread,
    Inline,
}

impl Writer {
    /// Start a writer (a thread, for [`Placement::OwnThread`]), taking its
    /// spool files from `preparer` when it has them ready.
    pub fn start(
        place: SpoolPlace,
        storage: Arc<dyn Storage>,
        placement: Placement,
        preparer: Option<Preparer>,
    ) -> io::Result<Writer> {
        let spare = Arc::new(Mutex::new(Vec::new()));
        let quick_peer = Arc::new(AtomicBool::new(true));
        let work = FileWork {
            place,
            storage,
            spare: spare.clone(),
            current: None,
            prepared: preparer.map(|p| Prepared::new(p, quick_peer.clone())),
        };
        let route = match placement {
            Placement::Inline => Route::Inline(Arc::new(Mutex::new(work))),
            Placement::OwnThread => {
                let (tx, rx) = mpsc::channel(QUEUE);
                std::thread::Builder::new()
                    .name("storescp-writer".into())
                    .spawn(move || work.run(rx))?;
                Route::Thread(tx)
            }
        };
        Ok(Writer {
            route,
            spare,
            quick_peer,
        })
    }

    /// An empty buffer, reused when one is free.
    pub fn buffer(&self) -> Vec<u8> {
        self.spare
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_default()
    }

    /// Run `job`: queue it to the writer's thread (waiting only while the
    /// queue is full), or do it now.
    async fn run(&self, job: Job) -> Result<(), WriteError> {
        match &self.route {
            Route::Thread(tx) => tx.send(job).await.map_err(|_| WriteError::Gone),
            Route::Inline(work) => {
                work.lock().map_err(|_| WriteError::Gone)?.handle(job);
                Ok(())
            }
        }
    }

    /// Write a piece of object `seq`.
    pub async fn piece(&self, seq: u64, buf: Vec<u8>) -> Result<(), WriteError> {
        self.run(Job::Piece { seq, buf }).await
    }

    /// Say whether the peer sends its next object as soon as it has our
    /// response: only then are spool files prepared ahead, where they are.
    pub fn quick_peer(&self, quick: bool) {
        self.quick_peer.store(quick, Ordering::Relaxed);
    }

    /// Whether pieces are written on the caller's thread, at once.
    pub fn is_inline(&self) -> bool {
        matches!(self.route, Route::Inline(_))
    }

    /// Write a piece of object `seq` given as slices, in order: from where
    /// they lie on an inline writer (one `writev`, no copy), copied into one
    /// buffer for a writer thread.
    pub async fn piece_vectored(
        &self,
        seq: u64,
        slices: &mut [IoSlice<'_>],
    ) -> Result<(), WriteError> {
        match &self.route {
            Route::Inline(work) => {
                work.lock()
                    .map_err(|_| WriteError::Gone)?
                    .write_piece_vectored(seq, slices);
                Ok(())
            }
            Route::Thread(_) => {
                let mut buf = self.buffer();
                for slice in slices.iter() {
                    buf.extend_from_slice(slice);
                }
                self.piece(seq, buf).await
            }
        }
    }

    /// Drop object `seq` (refused after some of it was written).
    pub async fn discard(&self, seq: u64) {
        // A writer that is gone has dropped everything already.
        let _ = self.run(Job::Discard { seq }).await;
    }

    /// Write object `seq`'s last bytes, then publish or return it.
    pub async fn finish(
        &self,
        seq: u64,
        tail: Vec<u8>,
        then: Then,
    ) -> Result<Finished, WriteError> {
        let (reply, done) = oneshot::channel();
        self.run(Job::Finish {
            seq,
            tail,
            then,
            reply,
        })
        .await?;
        done.await.map_err(|_| WriteError::Gone)?
    }
}

/// The object being written, or why it cannot be.
struct Current {
    seq: u64,
    file: Result<SpoolFile, io::Error>,
}

/// A writer's state: the object being written and how to finish it.
struct FileWork {
    place: SpoolPlace,
    storage: Arc<dyn Storage>,
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    current: Option<Current>,
    /// Where this writer's next spool file is prepared, if it is.
    prepared: Option<Prepared>,
}

impl FileWork {
    /// The writer thread: jobs in order until the association lets go.
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
            self.handle(job);
        }
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Piece { seq, buf } => {
                self.write_piece(seq, &buf);
                self.recycle(buf);
            }
            Job::Finish {
                seq,
                tail,
                then,
                reply,
            } => {
                let result = self.finish(seq, tail, then);
                // The association may be gone (aborted): nobody to tell.
                let _ = reply.send(result);
            }
            Job::Discard { seq } => {
                if self.current.as_ref().is_some_and(|c| c.seq == seq) {
                    self.current = None;
                }
            }
        }
    }

    fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        }
    }

    /// The spool file of object `seq`, created with its first piece.
    fn current(&mut self, seq: u64) -> &mut Current {
        // A piece of a new object: whatever was left of an older one was
        // abandoned (its spool file goes with it).
        if self.current.as_ref().is_some_and(|c| c.seq != seq) {
            self.current = None;
        }
        let (place, prepared) = (&self.place, &self.prepared);
        self.current.get_or_insert_with(|| Current {
            seq,
            file: prepared
                .as_ref()
                .and_then(|p| p.take())
                .map_or_else(|| place.create(), Ok),
        })
    }

    fn write_piece(&mut self, seq: u64, buf: &[u8]) {
        let current = self.current(seq);
        if let Ok(file) = &mut current.file {
            match file.file.write_all(buf) {
                Ok(()) => file.len += buf.len() as u64,
                Err(e) => current.file = Err(e),
            }
        }
    }

    fn write_piece_vectored(&mut self, seq: u64, slices: &mut [IoSlice<'_>]) {
        let current = self.current(seq);
        if let Ok(file) = &mut current.file {
            let len: usize = slices.iter().map(|s| s.len()).sum();
            match write_all_vectored(&mut file.file, slices) {
                Ok(()) => file.len += len as u64,
                Err(e) => current.file = Err(e),
            }
        }
    }

    /// The complete object `seq`, with `tail` as its last bytes.
    fn take_object(&mut self, seq: u64, tail: Vec<u8>) -> Result<Spooled, WriteError> {
        Ok(match self.current.take() {
            Some(Current { seq: s, file }) if s == seq => {
                let mut file = file?;
                file.file.write_all(&tail)?;
                file.len += tail.len() as u64;
                self.recycle(tail);
                file.trim();
                if let Some(p) = &mut self.prepared {
                    p.finished(file.len);
                }
                Spooled::File(file)
            }
            _ => Spooled::Memory(tail),
        })
    }

    fn publish(&self, object: Spooled, key: &ObjectKey) -> Result<Stored, WriteError> {
        match self.storage.blocking_publisher() {
            Some(publisher) => Ok(publisher.publish(object, key)?),
            None => Err(WriteError::Storage(StorageError::Task(
                "the backend cannot publish from the writer".into(),
            ))),
        }
    }

    fn finish(&mut self, seq: u64, tail: Vec<u8>, then: Then) -> Result<Finished, WriteError> {
        let object = self.take_object(seq, tail);
        match then {
            Then::Return => Ok(Finished::Spooled(object?)),
            Then::Publish { key } if self.storage.blocking_publisher().is_some() => {
                Ok(Finished::Published(self.publish(object?, &key)?))
            }
            Then::Publish { .. } => Ok(Finished::Spooled(object?)),
        }
    }
}

/// Write all of `slices`, in order, in as few `writev` calls as the
/// kernel takes.
fn write_all_vectored(file: &mut std::fs::File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FilesystemStorage;

    fn key(sop: &str) -> ObjectKey {
        ObjectKey {
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.3".into(),
            sop_instance_uid: sop.into(),
        }
    }

    fn writer(dir: &std::path::Path, placement: Placement) -> Writer {
        let storage = FilesystemStorage::new(dir).unwrap();
        let place = SpoolPlace::of(&storage);
        Writer::start(place, Arc::new(storage), placement, None).unwrap()
    }

    /// Either way: pieces, then the tail, published; a discarded object
    /// leaves nothing behind; a failure to publish is an error.
    async fn writes_publishes_and_fails(placement: Placement) {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path(), placement);
        let mut piece = writer.buffer();
        piece.extend_from_slice(&[5u8; 200_000]);
        writer.piece(1, piece).await.unwrap();
        let then = Then::Publish {
            key: key("1.2.3.4"),
        };
        let Finished::Published(stored) = writer.finish(1, b"end".to_vec(), then).await.unwrap()
        else {
            panic!("not published");
        };
        let data = std::fs::read(&stored.location).unwrap();
        assert_eq!(data.len(), 200_003);
        assert!(data.ends_with(b"end"));

        writer.piece(2, vec![1u8; 10]).await.unwrap();
        writer.discard(2).await;
        let finished = writer.finish(2, b"x".to_vec(), Then::Return).await.unwrap();
        let Finished::Spooled(Spooled::Memory(only_tail)) = finished else {
            panic!("the discarded object's spool file was kept");
        };
        assert_eq!(only_tail, b"x");

        // the output folder became a file: publishing fails
        writer.piece(3, vec![1u8; 1000]).await.unwrap();
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path(), b"not a folder").unwrap();
        let then = Then::Publish {
            key: key("1.2.3.5"),
        };
        assert!(writer.finish(3, b"y".to_vec(), then).await.is_err());
        std::fs::remove_file(dir.path()).unwrap();
    }

    /// With a preparer (tmpfs): after a first object, the next one is
    /// written into a prepared file reserving the first one's size, and is
    /// published holding exactly its own bytes; with a slow peer nothing is
    /// prepared.
    #[tokio::test(flavor = "current_thread")]
    async fn prepared_spool_files_hold_exactly_the_object() {
        use std::os::unix::fs::MetadataExt;
        if !std::path::Path::new("/dev/shm").is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let storage = FilesystemStorage::new(dir.path()).unwrap();
        let place = SpoolPlace::of(&storage);
        let preparer =
            crate::prepare::Preparer::for_place(&place, Arc::default()).expect("tmpfs spool");
        let writer =
            Writer::start(place, Arc::new(storage), Placement::Inline, Some(preparer)).unwrap();
        let publish = |sop: &str| Then::Publish { key: key(sop) };
        let mut stored = Vec::new();
        for (seq, size) in [(1u64, 600_000usize), (2, 250_000), (3, 250_000)] {
            // give the preparer the time of an object
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let body = vec![seq as u8; size];
            writer.piece(seq, body[..size - 10].to_vec()).await.unwrap();
            let sop = format!("1.2.3.{seq}");
            let Finished::Published(s) = writer
                .finish(seq, body[size - 10..].to_vec(), publish(&sop))
                .await
                .unwrap()
            else {
                panic!("not published");
            };
            stored.push((s.location, body));
        }
        for (location, body) in &stored {
            let meta = std::fs::metadata(location).unwrap();
            assert_eq!(meta.len(), body.len() as u64);
            // no reservation left past the end (object 2 had 600,000 reserved)
            assert!(meta.blocks() * 512 < body.len() as u64 + 64 * 1024);
            assert!(std::fs::read(location).unwrap() == *body);
        }

        // a slow peer: nothing is asked for
        writer.quick_peer(false);
        let FileWork { prepared, .. } = &*match &writer.route {
            Route::Inline(work) => work.lock().unwrap(),
            Route::Thread(_) => unreachable!(),
        };
        let prepared = prepared.as_ref().unwrap();
        // Drain what was asked for before (on a loaded machine a file still
        // being made then lands a little later), then nothing more comes.
        for _ in 0..2 {
            let _ = prepared.take();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(prepared.take().is_none(), "prepared for a slow peer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writer_thread_writes_and_publishes() {
        writes_publishes_and_fails(Placement::OwnThread).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn inline_writer_writes_and_publishes() {
        writes_publishes_and_fails(Placement::Inline).await;
    }

    /// Inline, a job is done before the call returns.
    #[tokio::test(flavor = "current_thread")]
    async fn inline_writer_works_on_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path(), Placement::Inline);
        let mut piece = writer.buffer();
        piece.extend_from_slice(&[5u8; 70_000]);
        writer.piece(1, piece).await.unwrap();
        // the piece is written already: its buffer is back for reuse
        assert!(writer.buffer().capacity() >= 70_000);
    }
}
