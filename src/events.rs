//! Events produced by the core and handed, in order, to whoever drains the
//! channel (the Python dispatcher thread). Each server has its own channel.
//!
//! The channel is bounded ([`CAPACITY`] events): when the consumer (Python
//! listeners, an `async for` over `scp.events()`) falls behind, the tasks
//! that report stored files, errors, rejections and completed studies wait
//! for room (backpressure reaches the sender, whose next C-STORE is read
//! later), instead of the queue growing without limit. Log records are never
//! waited for: when the queue is full they are dropped and counted, and the
//! count is reported as a warning once there is room again.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

use crate::tags::{Extracted, Extraction};

/// How many events may wait for the consumer before producers wait.
pub const CAPACITY: usize = 4096;

/// Concerns of log records: the Python logger is `dicom_storescp.{target}`.
pub mod target {
    pub const SERVER: &str = "server";
    pub const ASSOCIATION: &str = "association";
    pub const STORAGE: &str = "storage";
    pub const TAGS: &str = "tags";
    pub const STUDY: &str = "study";
    pub const S3: &str = "s3";
}

/// Severity of a log record forwarded to Python's `logging`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 10,
    Info = 20,
    Warning = 30,
    Error = 40,
}

impl Level {
    /// The level of a Python `logging` level number (rounded up to ours).
    pub fn from_python(level: i64) -> Level {
        match level {
            i64::MIN..=10 => Level::Debug,
            11..=20 => Level::Info,
            21..=30 => Level::Warning,
            _ => Level::Error,
        }
    }

    fn from_u8(v: u8) -> Level {
        Level::from_python(i64::from(v))
    }
}

/// Extracted tags, already grouped as the event shows them: group name →
/// (attribute name → value). An empty group name means "no grouping".
pub type GroupedTags = Vec<(String, Vec<(String, String)>)>;

/// The values extracted from one stored object, with the extraction that
/// names and groups them: the values are shared with the object's study
/// record, and a binding builds `OnFileStored.tags` straight from them
/// ([`Extraction::file_groups`], [`Extraction::file_slot`]).
#[derive(Debug, Clone)]
pub struct FileTags {
    pub extraction: Arc<Extraction>,
    pub values: Arc<Extracted>,
}

#[derive(Debug, Clone)]
pub struct FileStored {
    /// File path (filesystem) or object key (S3).
    pub file: Arc<str>,
    /// `file://...` or `s3://bucket/key`.
    pub uri: Arc<str>,
    pub sop_instance_uid: Arc<str>,
    pub sop_class_uid: Arc<str>,
    pub transfer_syntax_uid: Arc<str>,
    pub study_instance_uid: Arc<str>,
    pub series_instance_uid: Arc<str>,
    pub calling_ae_title: Arc<str>,
    pub peer: Arc<str>,
    pub size: u64,
    pub tags: FileTags,
}

#[derive(Debug, Clone, Default)]
pub struct ErrorInfo {
    pub message: String,
    pub sop_instance_uid: Option<String>,
    pub calling_ae_title: Option<String>,
    pub peer: Option<String>,
    /// The DIMSE status sent back, when a response was sent.
    pub status: Option<u16>,
}

/// An association refused at negotiation (or over the association limit).
#[derive(Debug, Clone, Default)]
pub struct Rejected {
    pub peer: String,
    pub calling_ae_title: Option<String>,
    pub called_ae_title: Option<String>,
    pub reason: String,
    /// "permanent" or "transient"
    pub result: &'static str,
}

#[derive(Debug, Clone)]
pub enum Event {
    ServerStarted {
        port: u16,
        ae_title: String,
        host: String,
    },
    FileStored(Box<FileStored>),
    AssociationRejected(Box<Rejected>),
    StudyCompleted(Box<crate::study::StudyCompleted>),
    Error(Box<ErrorInfo>),
    Log {
        level: Level,
        /// The concern (one of [`target`]): Python logger `dicom_storescp.{target}`.
        target: &'static str,
        message: String,
    },
    /// The server has stopped: nothing follows.
    Closed,
}

/// The sending side of a server's event channel, with the concern its log
/// records are filed under.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Event>,
    target: &'static str,
    shared: Arc<Shared>,
}

struct Shared {
    min_level: AtomicU8,
    /// Log records dropped because the queue was full, not yet reported.
    dropped_logs: AtomicU64,
}

impl Events {
    pub fn channel(verbose: bool) -> (Events, EventReceiver) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let min_level = if verbose { Level::Info } else { Level::Warning };
        let shared = Arc::new(Shared {
            min_level: AtomicU8::new(min_level as u8),
            dropped_logs: AtomicU64::new(0),
        });
        (
            Events {
                tx,
                target: target::SERVER,
                shared,
            },
            EventReceiver { rx, waiter: None },
        )
    }

    /// The same channel, with log records filed under `target`.
    pub fn with_target(&self, target: &'static str) -> Events {
        Events {
            target,
            ..self.clone()
        }
    }

    /// The least severe level forwarded (records below it are never built).
    pub fn set_min_level(&self, level: Level) {
        self.shared.min_level.store(level as u8, Ordering::Relaxed);
    }

    /// Queue an event, waiting while the queue is full.
    pub async fn emit(&self, event: Event) {
        // The receiver only goes away when the Python object is dropped;
        // nobody is listening then, so the event has no audience.
        let _ = self.tx.send(event).await;
    }

    /// Queue an event from outside the runtime (start, stop), waiting while
    /// the queue is full. Inside a runtime it never blocks: a full queue
    /// drops the event (not reached: those callers are async).
    pub fn emit_blocking(&self, event: Event) {
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = self.tx.try_send(event);
        } else {
            let _ = self.tx.blocking_send(event);
        }
    }

    /// Queue an event if there is room; false if it was dropped.
    pub fn try_emit(&self, event: Event) -> bool {
        !matches!(self.tx.try_send(event), Err(TrySendError::Full(_)))
    }

    pub fn enabled(&self, level: Level) -> bool {
        level >= Level::from_u8(self.shared.min_level.load(Ordering::Relaxed))
    }

    /// A log record under this handle's target.
    pub fn log(&self, level: Level, message: impl FnOnce() -> String) {
        self.log_to(self.target, level, message);
    }

    /// A log record under another target. Never waits: dropped (and counted)
    /// when the queue is full.
    pub fn log_to(&self, target: &'static str, level: Level, message: impl FnOnce() -> String) {
        if !self.enabled(level) {
            return;
        }
        let dropped = self.shared.dropped_logs.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let report = Event::Log {
                level: Level::Warning,
                target: target::SERVER,
                message: format!(
                    "{dropped} log record(s) dropped: the event queue was full \
                     (listeners or the async consumer are slower than reception)"
                ),
            };
            if !self.try_emit(report) {
                self.shared
                    .dropped_logs
                    .fetch_add(dropped + 1, Ordering::Relaxed);
                return;
            }
        }
        let record = Event::Log {
            level,
            target,
            message: message(),
        };
        if !self.try_emit(record) {
            self.shared.dropped_logs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Log records dropped so far and not yet reported.
    pub fn dropped_logs(&self) -> u64 {
        self.shared.dropped_logs.load(Ordering::Relaxed)
    }

    /// A failed store: a warning (target `storage`) and an `OnError` event.
    pub async fn error(&self, info: ErrorInfo) {
        let event = self.error_event(info);
        self.emit(event).await;
    }

    /// Log a failed store (target `storage`) and make its `OnError` event.
    pub fn error_event(&self, info: ErrorInfo) -> Event {
        self.log_to(target::STORAGE, Level::Warning, || {
            format!(
                "store failed{}{}: {}",
                info.sop_instance_uid
                    .as_deref()
                    .map(|u| format!(" for {u}"))
                    .unwrap_or_default(),
                info.peer
                    .as_deref()
                    .map(|p| format!(" from {p}"))
                    .unwrap_or_default(),
                info.message
            )
        });
        Event::Error(Box::new(info))
    }
}

/// The receiving side: drained by the Python dispatcher thread.
pub struct EventReceiver {
    rx: mpsc::Receiver<Event>,
    /// A runtime without threads, only to wait with a timeout (built on
    /// first use, on the consumer's thread).
    waiter: Option<tokio::runtime::Runtime>,
}

impl EventReceiver {
    /// Every event queued now, without waiting.
    pub fn try_iter(&mut self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(move || self.rx.try_recv().ok())
    }

    /// Wait up to `timeout` for an event, then take every event already
    /// queued (at most `max`). Empty: the timeout passed. `[Closed]`: every
    /// sender is gone. Must be called outside any runtime (inside one it
    /// does not wait).
    pub fn recv_batch(&mut self, timeout: Duration, max: usize) -> Vec<Event> {
        let first = match self.rx.try_recv() {
            Ok(e) => Some(e),
            Err(TryRecvError::Disconnected) => return vec![Event::Closed],
            Err(TryRecvError::Empty) => {
                if tokio::runtime::Handle::try_current().is_ok() || timeout.is_zero() {
                    return Vec::new();
                }
                if self.waiter.is_none() {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                    {
                        Ok(rt) => self.waiter = Some(rt),
                        Err(_) => return Vec::new(),
                    }
                }
                let Some(rt) = self.waiter.as_ref() else {
                    return Vec::new();
                };
                let rx = &mut self.rx;
                match rt.block_on(async { tokio::time::timeout(timeout, rx.recv()).await }) {
                    Ok(Some(e)) => Some(e),
                    Ok(None) => return vec![Event::Closed],
                    Err(_) => None,
                }
            }
        };
        let Some(first) = first else {
            return Vec::new();
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_dropped_and_counted_when_full_and_reported_later() {
        let (events, mut rx) = Events::channel(true);
        let events = events.with_target(target::STUDY);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for _ in 0..CAPACITY {
            rt.block_on(events.emit(Event::Closed));
        }
        events.log(Level::Info, || "one".into());
        events.log(Level::Warning, || "two".into());
        assert_eq!(events.dropped_logs(), 2);
        assert_eq!(
            rx.recv_batch(Duration::from_millis(10), CAPACITY).len(),
            CAPACITY
        );
        events.log(Level::Info, || "three".into());
        let got = rx.recv_batch(Duration::from_millis(10), 10);
        let logs: Vec<_> = got
            .iter()
            .map(|e| match e {
                Event::Log {
                    target, message, ..
                } => (*target, message.as_str()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0].0, target::SERVER);
        assert!(logs[0].1.starts_with("2 log record(s) dropped"), "{logs:?}");
        assert_eq!(logs[1], (target::STUDY, "three"));
        assert_eq!(events.dropped_logs(), 0);
    }

    #[test]
    fn a_full_queue_makes_emit_wait_until_the_consumer_takes_events() {
        let (events, mut rx) = Events::channel(false);
        let producer = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                for _ in 0..CAPACITY + 10 {
                    events.emit(Event::Closed).await;
                }
            });
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !producer.is_finished(),
            "emit must wait while the queue is full"
        );
        let mut total = 0;
        while total < CAPACITY + 10 {
            total += rx.recv_batch(Duration::from_secs(5), 100).len();
        }
        producer.join().unwrap();
        // every sender gone: the stream ends with Closed
        let last = rx.recv_batch(Duration::from_secs(1), 10);
        assert!(matches!(last.as_slice(), [Event::Closed]));
    }

    #[test]
    fn min_level_filters_before_building() {
        let (events, mut rx) = Events::channel(false);
        events.log(Level::Info, || unreachable!("not built below the minimum"));
        events.set_min_level(Level::Debug);
        events.log(Level::Debug, || "d".into());
        assert_eq!(rx.try_iter().count(), 1);
    }
}
