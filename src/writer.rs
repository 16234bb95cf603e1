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
//! The thread starts with the association's first object and ends when the
//! association drops its handle; whatever was not finished then (an object
//! cut off by an abort) is dropped with its spool file.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
#[derive(Debug)]
pub enum Then {
    /// Publish it under this key (backends with a blocking publisher).
    Publish(ObjectKey),
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
/// the same thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Writer {
    /// Start a writer thread.
    pub fn start(place: SpoolPlace, storage: Arc<dyn Storage>) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let spare = Arc::new(Mutex::new(Vec::new()));
        let thread = WriterThread {
            place,
            storage,
            spare: spare.clone(),
            current: None,
        };
        std::thread::Builder::new()
            .name("dicom-storescp-writer".into())
            .spawn(move || thread.run(rx))?;
        Ok(Writer { tx, spare })
    }

    /// An empty buffer, reused when one is free.
    pub fn buffer(&self) -> Vec<u8> {
        self.spare
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_default()
    }

    /// Queue a piece of object `seq`; waits only while the queue is full.
    pub async fn piece(&self, seq: u64, buf: Vec<u8>) -> Result<(), WriteError> {
        self.tx
            .send(Job::Piece { seq, buf })
            .await
            .map_err(|_| WriteError::Gone)
    }

    /// Drop object `seq` (refused after some of it was written).
    pub async fn discard(&self, seq: u64) {
        // A writer that is gone has dropped everything already.
        let _ = self.tx.send(Job::Discard { seq }).await;
    }

    /// Write object `seq`'s last bytes, then publish or return it.
    pub async fn finish(
        &self,
        seq: u64,
        tail: Vec<u8>,
        then: Then,
    ) -> Result<Finished, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job::Finish {
                seq,
                tail,
                then,
                reply,
            })
            .await
            .map_err(|_| WriteError::Gone)?;
        answer.await.map_err(|_| WriteError::Gone)?
    }
}

/// The object being written, or why it cannot be.
struct Current {
    seq: u64,
    file: Result<SpoolFile, io::Error>,
}

struct WriterThread {
    place: SpoolPlace,
    storage: Arc<dyn Storage>,
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    current: Option<Current>,
}

impl WriterThread {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
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

    fn finish(&mut self, seq: u64, tail: Vec<u8>, then: Then) -> Result<Finished, WriteError> {
        let object = match self.current.take() {
            Some(Current { seq: s, file }) if s == seq => {
                let mut file = file?;
                file.file.write_all(&tail)?;
                file.len += tail.len() as u64;
                self.recycle(tail);
                Spooled::File(file)
            }
            _ => Spooled::Memory(tail),
        };
        match then {
            Then::Return => Ok(Finished::Spooled(object)),
            Then::Publish(key) => match self.storage.blocking_publisher() {
                Some(publisher) => Ok(Finished::Published(publisher.publish(object, &key)?)),
                None => Ok(Finished::Spooled(object)),
            },
        }
    }
}
