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
use std::os::fd::{AsRawFd, OwnedFd};
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
    /// Publish it under this key (backends with a blocking publisher), then
    /// send `answer` (the encoded success response) to the peer if the
    /// writer has the connection.
    Publish { key: ObjectKey, answer: Vec<u8> },
    /// Hand the complete spooled object back.
    Return,
}

/// The result of finishing an object.
#[derive(Debug)]
pub enum Finished {
    /// Published; the first `answered` bytes of the success response went
    /// out (the association sends the rest).
    Published {
        stored: Stored,
        answered: usize,
    },
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
    /// Start a writer thread. With `peer` (a duplicate of a plain TCP
    /// connection's descriptor) the writer sends the success response of an
    /// object it publishes itself, right after publishing it: the sender
    /// does not wait for the association's task to wake up and do it.
    pub fn start(
        place: SpoolPlace,
        storage: Arc<dyn Storage>,
        peer: Option<OwnedFd>,
    ) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let spare = Arc::new(Mutex::new(Vec::new()));
        let thread = WriterThread {
            place,
            storage,
            spare: spare.clone(),
            current: None,
            peer,
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
    /// The association's connection (its own descriptor), when plain TCP.
    peer: Option<OwnedFd>,
}

/// Send what the socket takes now of `bytes` without blocking (the socket
/// is non-blocking); returns how many bytes went out. Errors are left to the
/// association, which sends the rest and meets them itself.
fn send_now(peer: &OwnedFd, bytes: &[u8]) -> usize {
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
        match usize::try_from(n) {
            Ok(n) if n > 0 => sent += n,
            _ => {
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
        }
    }
    sent
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
            Then::Publish { key, answer } => match self.storage.blocking_publisher() {
                Some(publisher) => {
                    let stored = publisher.publish(object, &key)?;
                    let answered = match &self.peer {
                        Some(peer) => send_now(peer, &answer),
                        None => 0,
                    };
                    Ok(Finished::Published { stored, answered })
                }
                None => Ok(Finished::Spooled(object)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FilesystemStorage;
    use std::io::Read;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_then_answers_the_peer_itself() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FilesystemStorage::new(dir.path()).unwrap();
        let place = SpoolPlace {
            dir: storage.spool_dir().to_path_buf(),
            anonymous: storage.anonymous_spool(),
        };
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let writer = Writer::start(place, Arc::new(storage), Some(OwnedFd::from(ours))).unwrap();
        let key = ObjectKey {
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.3".into(),
            sop_instance_uid: "1.2.3.4".into(),
        };
        let mut first = writer.buffer();
        first.extend_from_slice(&[7u8; 200_000]);
        writer.piece(1, first).await.unwrap();
        let then = Then::Publish {
            key,
            answer: b"ANSWER".to_vec(),
        };
        let finished = writer.finish(1, b"tail".to_vec(), then).await.unwrap();
        let Finished::Published { stored, answered } = finished else {
            panic!("not published");
        };
        assert_eq!(answered, 6);
        let mut got = [0u8; 6];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ANSWER");
        let data = std::fs::read(&stored.location).unwrap();
        assert_eq!(data.len(), 200_004);
        assert!(data.ends_with(b"tail"));

        // a peer that is gone: nothing sent, no signal, the store stands
        drop(theirs);
        let then = Then::Publish {
            key: ObjectKey {
                study_instance_uid: "1.2".into(),
                series_instance_uid: "1.2.3".into(),
                sop_instance_uid: "1.2.3.5".into(),
            },
            answer: b"ANSWER".to_vec(),
        };
        let finished = writer.finish(2, b"small".to_vec(), then).await.unwrap();
        assert!(matches!(finished, Finished::Published { answered: 0, .. }));
    }
}
