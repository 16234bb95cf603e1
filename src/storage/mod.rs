//! Storage backends behind one trait.
//!
//! Objects are spooled while they arrive (in memory while small, then in a
//! temporary file) and handed to a backend as a whole once complete. A backend
//! makes the object visible atomically at its final location, or fails and
//! leaves nothing behind.

pub mod fs;
pub mod s3;

use std::fmt::Write as _;
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("storage task failed: {0}")]
    Task(String),
    /// A remote store refused or failed the operation. The message is ours
    /// (never a raw response body), so it carries no secrets.
    #[error("{context}: {message}")]
    Remote { context: String, message: String },
}

impl StorageError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Resolve `out_dir` (relative to the current directory) and create it with
/// its spool directory `{out_dir}/{spool_name}` (blocking). Returns both.
pub fn create_out_dir(
    out_dir: &Path,
    spool_name: &str,
) -> Result<(PathBuf, PathBuf), StorageError> {
    let root = if out_dir.is_absolute() {
        out_dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| StorageError::io("cannot resolve the current directory", e))?
            .join(out_dir)
    };
    let spool = root.join(spool_name);
    std::fs::create_dir_all(&spool).map_err(|e| {
        StorageError::io(format!("out_dir {} cannot be created", spool.display()), e)
    })?;
    Ok((root, spool))
}

/// Where an object goes: validated UIDs only (see [`is_valid_uid`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
}

impl ObjectKey {
    /// `{study}/{series}/{sop}.dcm`
    pub fn relative_path(&self) -> String {
        [
            self.study_instance_uid.as_str(),
            "/",
            self.series_instance_uid.as_str(),
            "/",
            self.sop_instance_uid.as_str(),
            ".dcm",
        ]
        .concat()
    }
}

/// A UID that may name a path component: digits and dots, 1 to 64
/// characters, no empty component.
pub fn is_valid_uid(uid: &str) -> bool {
    if uid.is_empty() || uid.len() > 64 {
        return false;
    }
    // One pass: digits and dots, no empty component (no leading, trailing
    // or doubled dot).
    let mut after_dot = true;
    for b in uid.bytes() {
        match b {
            b'0'..=b'9' => after_dot = false,
            b'.' if !after_dot => after_dot = true,
            _ => return false,
        }
    }
    !after_dot
}

/// A temporary file that is removed unless it was handed on.
#[derive(Debug)]
pub struct SpoolFile {
    path: Option<PathBuf>,
    pub file: File,
    /// Bytes written to `file`.
    pub len: u64,
    /// Bytes reserved for `file` ahead of writing (see `prepare.rs`).
    pub reserved: u64,
}

static SPOOL_COUNTER: AtomicU64 = AtomicU64::new(0);

impl SpoolFile {
    /// Create a new, uniquely named spool file in `dir` (blocking).
    pub fn create(dir: &Path) -> io::Result<SpoolFile> {
        loop {
            let n = SPOOL_COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = dir.join(format!("{}-{n}-{nanos:08x}.part", std::process::id()));
            match std::fs::OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(SpoolFile {
                        path: Some(path),
                        file,
                        len: 0,
                        reserved: 0,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Create a spool file with no name (Linux `O_TMPFILE`) in `dir`: it is
    /// never visible, vanishes by itself if the process dies, and is given
    /// its final name with one `linkat`. Falls back to a named file where the
    /// filesystem does not support it.
    pub fn create_anonymous(dir: &Path) -> io::Result<SpoolFile> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .read(true)
                .mode(0o666)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
            {
                Ok(file) => {
                    return Ok(SpoolFile {
                        path: None,
                        file,
                        len: 0,
                        reserved: 0,
                    })
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Self::create(dir)
    }

    /// Whether the file has a name (else it is an anonymous `O_TMPFILE`).
    pub fn is_named(&self) -> bool {
        self.path.is_some()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reserve `size` bytes for the file without changing its length
    /// (`fallocate` with `FALLOC_FL_KEEP_SIZE`), so that writing them later
    /// finds the space allocated.
    pub fn reserve(&mut self, size: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let len = libc::off_t::try_from(size)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: the descriptor is open for as long as `self.file` is.
            let rc = unsafe {
                libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len)
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            self.reserved = size;
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = size;
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
    }

    /// Give back what was reserved past the bytes written.
    pub fn trim(&mut self) {
        if self.reserved > self.len {
            // Truncating to the length it has frees the blocks past it; if
            // that fails the file still reads the same, only larger on disk.
            let _ = self.file.set_len(self.len);
        }
        self.reserved = 0;
    }

    /// Give up ownership of the path: the caller has moved the file.
    pub fn disarm(&mut self) -> Option<PathBuf> {
        self.path.take()
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A complete object as received: file meta prefix (if any) and data set.
#[derive(Debug)]
pub enum Spooled {
    Memory(Vec<u8>),
    File(SpoolFile),
}

impl Spooled {
    pub fn len(&self) -> u64 {
        match self {
            Spooled::Memory(v) => v.len() as u64,
            Spooled::File(f) => f.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The location of a stored object, as reported in events.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The file path (filesystem) or object key (S3).
    pub location: String,
    /// The same as a URI: `file:///...` or `s3://bucket/key`.
    pub uri: String,
    pub size: u64,
}

/// `file://` URI of an absolute path, percent-encoding every byte outside
/// RFC 3986's unreserved set and `/`.
pub fn file_uri(path: &Path) -> String {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().replace('\\', "/").into_bytes();
    let mut out = String::with_capacity(8 + bytes.len());
    out.push_str("file://");
    if !bytes.starts_with(b"/") {
        out.push('/');
    }
    let plain = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~');
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        // the longest run of bytes that need no escaping, in one piece
        let (run, tail) = rest.split_at(rest.iter().position(|b| !plain(b)).unwrap_or(rest.len()));
        out.push_str(std::str::from_utf8(run).unwrap_or_default());
        rest = match tail.split_first() {
            Some((b, after)) => {
                let _ = write!(out, "%{b:02X}");
                after
            }
            None => tail,
        };
    }
    out
}

/// Publishing a complete object with blocking calls (see
/// [`Storage::blocking_publisher`]); the same contract as [`Storage::commit`].
pub trait BlockingPublish: Send + Sync {
    fn publish(&self, object: Spooled, key: &ObjectKey) -> Result<Stored, StorageError>;
}

/// A place where complete objects are stored.
pub trait Storage: Send + Sync + 'static {
    /// Directory for spool files of objects still arriving.
    fn spool_dir(&self) -> &Path;

    /// Whether spool files may be anonymous (`O_TMPFILE`): only for backends
    /// that publish through the file handle rather than the path.
    fn anonymous_spool(&self) -> bool {
        false
    }

    /// Objects up to this size are kept in memory until complete; larger
    /// ones are written to a spool file while they arrive.
    fn memory_limit(&self) -> usize {
        crate::receive::SPILL_THRESHOLD
    }

    /// Backends that publish with plain blocking file operations offer them
    /// here, to be run on the association's writer thread right after the
    /// object's last bytes are written (one hand-off for both).
    fn blocking_publisher(&self) -> Option<&dyn BlockingPublish> {
        None
    }

    /// Store a complete object under `key`, atomically: on success it is at
    /// its final location in full, on failure nothing of it is.
    fn commit(
        &self,
        object: Spooled,
        key: ObjectKey,
    ) -> BoxFuture<'_, Result<Stored, StorageError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_validation() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(is_valid_uid("0"));
        for bad in [
            "", ".", "..", "1..2", ".1", "1.", "1/2", "1.2\0", "a.b", "../etc", "1 2",
        ] {
            assert!(!is_valid_uid(bad), "{bad:?}");
        }
        assert!(!is_valid_uid(&"1".repeat(65)));
        assert!(is_valid_uid(&"1".repeat(64)));
    }

    #[test]
    fn anonymous_spool_leaves_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = SpoolFile::create_anonymous(dir.path()).unwrap();
        use std::io::Write;
        spool.file.write_all(b"x").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn file_uris_are_percent_encoded() {
        assert_eq!(
            file_uri(Path::new("/data/1.2/3.dcm")),
            "file:///data/1.2/3.dcm"
        );
        assert_eq!(
            file_uri(Path::new("/my dir/%é")),
            "file:///my%20dir/%25%C3%A9"
        );
        assert_eq!(file_uri(Path::new("é x")), "file:///%C3%A9%20x");
    }

    #[test]
    fn spool_file_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SpoolFile::create(dir.path()).unwrap();
        let path = spool.path().unwrap().to_path_buf();
        assert!(path.exists());
        drop(spool);
        assert!(!path.exists());
    }
}
