//! Each association's blocking file work on a thread of its own.
//!
//! Writing spool files and publishing them are blocking system calls, kept
//! off the async runtime. Rather than a trip through the shared blocking pool
//! for every piece of every object (a wake-up and a hand-back each), an
//! association sends its pieces, in order, to its own writer thread: pieces
//! are fire-and-forget (the channel's capacity bounds what is in flight), and
//! only the end of an object is a round trip, which also publishes it when
//! the backend publishes with plain file operations.
//!
//! Over plain TCP, with such a backend, the end of an object is not even a
//! round trip: the writer publishes it, sends the response on its own
//! descriptor of the connection and reports the outcome (event, study
//! record) itself; the association goes back to reading the socket at once
//! and only waits for the writer before it writes to the connection itself.
//! Each object then wakes the association's task once (its next request)
//! and the writer once, instead of the task twice.
//!
//! The thread starts with the association's first object and ends when the
//! association drops its handle; whatever was not finished then (an object
//! cut off by an abort) is dropped with its spool file.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

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
    /// Publish it, answer the peer and report, all without the association
    /// (see [`Writer::completes`]).
    Complete(Box<dyn Completion>),
    /// Hand the complete spooled object back.
    Return,
}

/// An object the writer finishes on its own: the response to send for
/// either outcome, and the report once it went out.
pub trait Completion: Send {
    fn key(&self) -> &ObjectKey;
    /// The encoded response PDU for this outcome (`None`: nothing can be
    /// sent, the connection is closed).
    fn response(&self, outcome: &Result<Stored, WriteError>) -> Option<Vec<u8>>;
    /// Counters, log lines, events: called after the response was sent.
    fn conclude(self: Box<Self>, outcome: Result<Stored, WriteError>);
}

/// The result of finishing an object.
#[derive(Debug)]
pub enum Finished {
    Published(Stored),
    Spooled(Spooled),
    /// Handled by its [`Completion`].
    Completed,
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
    completes: bool,
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
    /// Start a writer. With `peer` (a duplicate of a plain TCP connection's
    /// descriptor, the peer given `send_timeout` to take each response) and
    /// a backend that publishes with plain file operations, the writer can
    /// complete objects by itself ([`Then::Complete`]).
    pub fn start(
        place: SpoolPlace,
        storage: Arc<dyn Storage>,
        peer: Option<OwnedFd>,
        send_timeout: Option<Duration>,
        placement: Placement,
    ) -> io::Result<Writer> {
        let spare = Arc::new(Mutex::new(Vec::new()));
        // Inline, the association answers and reports itself (it can wait
        // for room in the event queue; a blocking wait inside its runtime
        // could not).
        let completes = peer.is_some()
            && storage.blocking_publisher().is_some()
            && placement == Placement::OwnThread;
        let work = FileWork {
            place,
            storage,
            spare: spare.clone(),
            current: None,
            peer,
            send_timeout,
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
            completes,
        })
    }

    /// Whether [`Then::Complete`] is available: the writer holds the
    /// connection and the backend publishes without the runtime.
    pub fn completes(&self) -> bool {
        self.completes
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
        let done = self.hand_over(seq, tail, then).await?;
        done.await.map_err(|_| WriteError::Gone)?
    }

    /// Hand over the end of object `seq` without waiting for it; the
    /// returned receiver resolves once the writer is done with it (and with
    /// every job before it).
    pub async fn hand_over(&self, seq: u64, tail: Vec<u8>, then: Then) -> Result<Done, WriteError> {
        let (reply, done) = oneshot::channel();
        self.run(Job::Finish {
            seq,
            tail,
            then,
            reply,
        })
        .await?;
        Ok(done)
    }
}

/// Resolves when a finish job is done.
pub type Done = oneshot::Receiver<Result<Finished, WriteError>>;

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
    /// The association's connection (its own descriptor), when plain TCP.
    peer: Option<OwnedFd>,
    /// How long the peer may take to accept a response.
    send_timeout: Option<Duration>,
}

/// Send all of `bytes` on the (non-blocking) socket, waiting up to
/// `timeout` each time it is full. False if the peer did not take it all.
fn send_all(peer: &OwnedFd, bytes: &[u8], timeout: Option<Duration>) -> bool {
    let wait_ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let mut sent = 0;
    while let Some(rest) = bytes.get(sent..).filter(|r| !r.is_empty()) {
        // SAFETY: the descriptor is owned and open for the call; the buffer
        // is valid for `rest.len()` bytes; MSG_NOSIGNAL keeps a closed
        // connection from raising SIGPIPE.
        let n = unsafe {
            libc::send(
                peer.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            sent += n;
            continue;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                let mut poll = libc::pollfd {
                    fd: peer.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                let ready = unsafe { libc::poll(&mut poll, 1, wait_ms) };
                if ready <= 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
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

    fn write_piece(&mut self, seq: u64, buf: &[u8]) {
        // A piece of a new object: whatever was left of an older one was
        // abandoned (its spool file goes with it).
        let current = match &mut self.current {
            Some(c) if c.seq == seq => c,
            _ => self.current.insert(Current {
                seq,
                file: self.place.create(),
            }),
        };
        if let Ok(file) = &mut current.file {
            match file.file.write_all(buf) {
                Ok(()) => file.len += buf.len() as u64,
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
            Then::Complete(completion) => {
                let outcome = object.and_then(|o| self.publish(o, completion.key()));
                let answered = match (completion.response(&outcome), &self.peer) {
                    (Some(bytes), Some(peer)) => send_all(peer, &bytes, self.send_timeout),
                    _ => false,
                };
                if !answered {
                    // The peer is gone or stuck: end the association (its
                    // task sees the connection fail), the outcome stands.
                    if let Some(peer) = &self.peer {
                        // SAFETY: shutting down an owned, open socket.
                        unsafe { libc::shutdown(peer.as_raw_fd(), libc::SHUT_RDWR) };
                    }
                }
                completion.conclude(outcome);
                Ok(Finished::Completed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FilesystemStorage;
    use std::io::Read;
    use std::sync::mpsc as std_mpsc;

    /// Answers `OK`/`NO` and reports the outcome on a channel.
    struct Probe {
        key: ObjectKey,
        told: std_mpsc::Sender<Result<Stored, String>>,
    }

    impl Completion for Probe {
        fn key(&self) -> &ObjectKey {
            &self.key
        }
        fn response(&self, outcome: &Result<Stored, WriteError>) -> Option<Vec<u8>> {
            Some(if outcome.is_ok() { b"OK" } else { b"NO" }.to_vec())
        }
        fn conclude(self: Box<Self>, outcome: Result<Stored, WriteError>) {
            let _ = self.told.send(outcome.map_err(|e| e.to_string()));
        }
    }

    fn key(sop: &str) -> ObjectKey {
        ObjectKey {
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.3".into(),
            sop_instance_uid: sop.into(),
        }
    }

    /// Hand object `seq` over with `tail` and a probe for `sop`.
    async fn complete(
        writer: &Writer,
        seq: u64,
        tail: &[u8],
        sop: &str,
        told: &std_mpsc::Sender<Result<Stored, String>>,
    ) -> Done {
        let probe = Probe {
            key: key(sop),
            told: told.clone(),
        };
        writer
            .hand_over(seq, tail.to_vec(), Then::Complete(Box::new(probe)))
            .await
            .unwrap()
    }

    /// A writer storing under `dir`, with a (non-blocking) socket to answer
    /// on; the other end for the test.
    fn writer_with_peer(
        dir: &std::path::Path,
        placement: Placement,
    ) -> (Writer, std::os::unix::net::UnixStream) {
        let storage = FilesystemStorage::new(dir).unwrap();
        let place = SpoolPlace {
            dir: storage.spool_dir().to_path_buf(),
            anonymous: storage.anonymous_spool(),
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let writer = Writer::start(
            place,
            Arc::new(storage),
            Some(OwnedFd::from(ours)),
            Some(Duration::from_secs(5)),
            placement,
        )
        .unwrap();
        (writer, theirs)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completes_objects_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut theirs) = writer_with_peer(dir.path(), Placement::OwnThread);
        assert!(writer.completes());
        let (told, reports) = std_mpsc::channel();

        // written in pieces, then published, answered and reported
        let mut first = writer.buffer();
        first.extend_from_slice(&[7u8; 200_000]);
        writer.piece(1, first).await.unwrap();
        let done = complete(&writer, 1, b"tail", "1.2.3.4", &told).await;
        assert!(matches!(done.await, Ok(Ok(Finished::Completed))));
        let mut got = [0u8; 2];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"OK");
        let stored = reports.recv().unwrap().unwrap();
        let data = std::fs::read(&stored.location).unwrap();
        assert_eq!(data.len(), 200_004);
        assert!(data.ends_with(b"tail"));

        // an object that cannot be published (the output folder became a
        // file): the failure is answered and reported
        let mut piece = writer.buffer();
        piece.extend_from_slice(&[1u8; 1000]);
        writer.piece(2, piece).await.unwrap();
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path(), b"not a folder").unwrap();
        let done = complete(&writer, 2, b"x", "1.2.3.5", &told).await;
        assert!(done.await.is_ok());
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"NO");
        assert!(reports.recv().unwrap().is_err());

        // a peer that is gone: reported all the same, no signal
        drop(theirs);
        let done = complete(&writer, 3, b"small", "1.2.3.6", &told).await;
        assert!(done.await.is_ok());
        assert!(reports.recv().is_ok());
        std::fs::remove_file(dir.path()).unwrap();
    }

    /// Inline, jobs run on the caller's thread before the call returns, and
    /// the writer does not answer the peer itself (the association does).
    #[tokio::test(flavor = "current_thread")]
    async fn inline_writer_works_on_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _theirs) = writer_with_peer(dir.path(), Placement::Inline);
        assert!(!writer.completes());

        let mut piece = writer.buffer();
        piece.extend_from_slice(&[5u8; 70_000]);
        writer.piece(1, piece).await.unwrap();
        // the piece is written already: its buffer is back for reuse
        assert!(writer.buffer().capacity() >= 70_000);
        let done = writer
            .hand_over(
                1,
                b"end".to_vec(),
                Then::Publish {
                    key: key("1.2.3.9"),
                },
            )
            .await
            .unwrap();
        let Ok(Ok(Finished::Published(stored))) = done.await else {
            panic!("not published");
        };
        let data = std::fs::read(&stored.location).unwrap();
        assert_eq!(data.len(), 70_003);
        assert!(data.ends_with(b"end"));

        // a discarded object leaves nothing behind
        writer.piece(2, vec![1u8; 10]).await.unwrap();
        writer.discard(2).await;
        let finished = writer.finish(2, b"x".to_vec(), Then::Return).await.unwrap();
        let Finished::Spooled(Spooled::Memory(only_tail)) = finished else {
            panic!("the discarded object's spool file was kept");
        };
        assert_eq!(only_tail, b"x");
    }
}
