//! Events produced by the core and handed, in order, to whoever drains the
//! channel (the Python dispatcher thread). Each server has its own channel.

use std::sync::mpsc;

/// Severity of a log record forwarded to Python's `logging`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 10,
    Info = 20,
    Warning = 30,
    Error = 40,
}

/// Extracted tags, already grouped as the event shows them: group name →
/// (attribute name → value). An empty group name means "no grouping".
pub type GroupedTags = Vec<(String, Vec<(String, String)>)>;

#[derive(Debug, Clone)]
pub struct FileStored {
    /// File path (filesystem) or object key (S3).
    pub file: String,
    /// `file://...` or `s3://bucket/key`.
    pub uri: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub calling_ae_title: String,
    pub peer: String,
    pub size: u64,
    pub tags: GroupedTags,
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
        message: String,
    },
    /// The server has stopped: nothing follows.
    Closed,
}

/// The sending side of a server's event channel.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Event>,
    min_level: Level,
}

impl Events {
    pub fn channel(verbose: bool) -> (Events, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel();
        let min_level = if verbose { Level::Info } else { Level::Warning };
        (Events { tx, min_level }, rx)
    }

    pub fn emit(&self, event: Event) {
        // The receiver only goes away when the Python object is dropped;
        // nobody is listening then, so the event has no audience.
        let _ = self.tx.send(event);
    }

    pub fn enabled(&self, level: Level) -> bool {
        level >= self.min_level
    }

    pub fn log(&self, level: Level, message: impl FnOnce() -> String) {
        if self.enabled(level) {
            self.emit(Event::Log {
                level,
                message: message(),
            });
        }
    }

    pub fn error(&self, info: ErrorInfo) {
        self.log(Level::Warning, || {
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
        self.emit(Event::Error(Box::new(info)));
    }
}
