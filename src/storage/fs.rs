//! Filesystem backend: `{out_dir}/{study}/{series}/{sop}.dcm`, published by
//! renaming a fully written spool file from `{out_dir}/.incoming/`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    file_uri, BlockingPublish, BoxFuture, ObjectKey, SpoolFile, Spooled, Storage, StorageError,
    Stored,
};

/// Name of the spool directory inside `out_dir`.
pub const SPOOL_DIR_NAME: &str = ".incoming";

/// Series directories known to exist, so most objects need no mkdir. A
/// directory removed behind our back is recreated on the failed link. Kept
/// by their path's bytes: hashing a `Path` walks its components, and every
/// path here is built the same way.
#[derive(Debug, Default)]
struct DirCache(Mutex<HashSet<OsString>>);

const DIR_CACHE_LIMIT: usize = 4096;

impl DirCache {
    fn ensure(&self, dir: &Path) -> io::Result<()> {
        if let Ok(known) = self.0.lock() {
            if known.contains(dir.as_os_str()) {
                return Ok(());
            }
        }
        std::fs::create_dir_all(dir)?;
        if let Ok(mut known) = self.0.lock() {
            if known.len() >= DIR_CACHE_LIMIT {
                known.clear();
            }
            known.insert(dir.as_os_str().to_os_string());
        }
        Ok(())
    }

    fn forget(&self, dir: &Path) {
        if let Ok(mut known) = self.0.lock() {
            known.remove(dir.as_os_str());
        }
    }
}

#[derive(Debug, Clone)]
pub struct FilesystemStorage {
    root: PathBuf,
    spool: PathBuf,
    anonymous: bool,
    dirs: Arc<DirCache>,
}

static LINK_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether `linkat(fd, "", ..., AT_EMPTY_PATH)` was refused once: kernels
/// before 6.10 allow it only with CAP_DAC_READ_SEARCH. The file is then
/// linked through its `/proc/self/fd` path instead (a longer lookup).
#[cfg(target_os = "linux")]
static NO_EMPTY_PATH_LINK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Give an anonymous (`O_TMPFILE`) file the name `target`, replacing any
/// existing file atomically.
#[cfg(target_os = "linux")]
fn link_anonymous(file: &std::fs::File, target: &Path) -> io::Result<()> {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;

    let linkat = |from_dir: libc::c_int, from: &CStr, to: &CStr, flags| -> io::Result<()> {
        // SAFETY: both paths are valid NUL-terminated C strings that live
        // across the call, and the descriptor is open; linkat retains none.
        let rc =
            unsafe { libc::linkat(from_dir, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let through_proc = |to: &CStr| -> io::Result<()> {
        let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|_| io::Error::other("bad fd path"))?;
        linkat(libc::AT_FDCWD, &from, to, libc::AT_SYMLINK_FOLLOW)
    };
    let link = |to: &Path| -> io::Result<()> {
        let to = CString::new(to.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        if NO_EMPTY_PATH_LINK.load(Ordering::Relaxed) {
            return through_proc(&to);
        }
        match linkat(file.as_raw_fd(), c"", &to, libc::AT_EMPTY_PATH) {
            // Refused (ENOENT without the capability on older kernels, but
            // also a missing directory): the /proc path tells which.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) => {
                through_proc(&to)?;
                NO_EMPTY_PATH_LINK.store(true, Ordering::Relaxed);
                Ok(())
            }
            other => other,
        }
    };
    match link(target) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Re-sent object: link under a unique name beside it, then
            // rename over the old one (atomic replace).
            let n = LINK_COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut tmp = target.as_os_str().to_owned();
            tmp.push(format!(".{}-{n}.part", std::process::id()));
            let tmp = PathBuf::from(tmp);
            link(&tmp)?;
            std::fs::rename(&tmp, target).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        }
        other => other,
    }
}

#[cfg(not(target_os = "linux"))]
fn link_anonymous(_file: &std::fs::File, _target: &Path) -> io::Result<()> {
    Err(io::Error::other("anonymous spool files need Linux"))
}

impl FilesystemStorage {
    /// Create the output and spool directories (blocking).
    pub fn new(out_dir: &Path) -> Result<Self, StorageError> {
        let (root, spool) = super::create_out_dir(out_dir, SPOOL_DIR_NAME)?;
        // Anonymous spool files need O_TMPFILE support and /proc to link them.
        let anonymous = cfg!(target_os = "linux")
            && Path::new("/proc/self/fd").is_dir()
            && SpoolFile::create_anonymous(&spool)
                .map(|f| !f.is_named())
                .unwrap_or(false);
        Ok(FilesystemStorage {
            root,
            spool,
            anonymous,
            dirs: Arc::new(DirCache::default()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Put the spooled object at `target` (its directory exists).
    fn place(&self, spool: &mut SpoolFile, target: &Path) -> io::Result<()> {
        match spool.path() {
            Some(from) => std::fs::rename(from, target).map(|_| {
                spool.disarm();
            }),
            None => link_anonymous(&spool.file, target),
        }
    }

    fn publish(&self, object: Spooled, key: &ObjectKey) -> Result<Stored, StorageError> {
        let size = object.len();
        let mut spool = match object {
            Spooled::File(f) => f,
            Spooled::Memory(bytes) => {
                let mut f = crate::writer::SpoolPlace::of(self)
                    .create()
                    .map_err(|e| StorageError::io("cannot create spool file", e))?;
                f.file
                    .write_all(&bytes)
                    .map_err(|e| StorageError::io("cannot write spool file", e))?;
                f.len = bytes.len() as u64;
                f
            }
        };
        let target = self.root.join(key.relative_path());
        let parent = target
            .parent()
            .ok_or_else(|| StorageError::Task("target has no directory".into()))?;
        self.dirs
            .ensure(parent)
            .map_err(|e| StorageError::io(format!("cannot create {}", parent.display()), e))?;
        let placed = match self.place(&mut spool, &target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The directory vanished since it was cached: make it again.
                self.dirs.forget(parent);
                self.dirs
                    .ensure(parent)
                    .and_then(|_| self.place(&mut spool, &target))
            }
            other => other,
        };
        placed.map_err(|e| StorageError::io(format!("cannot store {}", target.display()), e))?;
        let uri = file_uri(&target);
        let location = target
            .into_os_string()
            .into_string()
            .unwrap_or_else(|raw| raw.to_string_lossy().into_owned());
        Ok(Stored {
            location,
            uri,
            size,
        })
    }
}

impl BlockingPublish for FilesystemStorage {
    fn publish(&self, object: Spooled, key: &ObjectKey) -> Result<Stored, StorageError> {
        FilesystemStorage::publish(self, object, key)
    }
}

impl Storage for FilesystemStorage {
    fn spool_dir(&self) -> &Path {
        &self.spool
    }

    fn anonymous_spool(&self) -> bool {
        self.anonymous
    }

    fn memory_limit(&self) -> usize {
        crate::receive::STREAM_CHUNK
    }

    fn blocking_publisher(&self) -> Option<&dyn BlockingPublish> {
        Some(self)
    }

    fn commit(
        &self,
        object: Spooled,
        key: ObjectKey,
    ) -> BoxFuture<'_, Result<Stored, StorageError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.publish(object, &key))
                .await
                .map_err(|e| StorageError::Task(e.to_string()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey {
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.3".into(),
            sop_instance_uid: "1.2.3.4".into(),
        }
    }

    #[test]
    fn publishes_memory_and_file_objects() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FilesystemStorage::new(dir.path()).unwrap();
        let stored = fs
            .publish(Spooled::Memory(b"hello".to_vec()), &key())
            .unwrap();
        assert_eq!(std::fs::read(&stored.location).unwrap(), b"hello");
        let mut spool = SpoolFile::create(fs.spool_dir()).unwrap();
        spool.file.write_all(b"world").unwrap();
        spool.len = 5;
        let stored = fs.publish(Spooled::File(spool), &key()).unwrap();
        assert_eq!(std::fs::read(&stored.location).unwrap(), b"world");
        assert_eq!(std::fs::read_dir(fs.spool_dir()).unwrap().count(), 0);
    }

    #[test]
    fn anonymous_publish_replaces_and_survives_removed_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FilesystemStorage::new(dir.path()).unwrap();
        assert!(fs.anonymous, "O_TMPFILE expected on this filesystem");
        let first = fs
            .publish(Spooled::Memory(b"one".to_vec()), &key())
            .unwrap();
        let second = fs
            .publish(Spooled::Memory(b"two!".to_vec()), &key())
            .unwrap();
        assert_eq!(first.location, second.location);
        assert_eq!(std::fs::read(&second.location).unwrap(), b"two!");
        // the series directory disappears behind the cache's back
        std::fs::remove_dir_all(dir.path().join("1.2")).unwrap();
        let third = fs.publish(Spooled::Memory(b"3".to_vec()), &key()).unwrap();
        assert_eq!(std::fs::read(&third.location).unwrap(), b"3");
        let series = dir.path().join("1.2/1.2.3");
        assert_eq!(std::fs::read_dir(series).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(fs.spool_dir()).unwrap().count(), 0);
        // where the kernel links by descriptor, the missing directory did
        // not make the storage fall back to /proc paths for good
        if links_by_descriptor(fs.spool_dir()) {
            assert!(!NO_EMPTY_PATH_LINK.load(Ordering::Relaxed));
        }
    }

    fn links_by_descriptor(dir: &Path) -> bool {
        use std::os::unix::io::AsRawFd;
        let spool = SpoolFile::create_anonymous(dir).unwrap();
        let to = std::ffi::CString::new(format!("{}/probe", dir.display())).unwrap();
        // SAFETY: valid descriptor and C strings for the call.
        let rc = unsafe {
            libc::linkat(
                spool.file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        let _ = std::fs::remove_file(dir.join("probe"));
        rc == 0
    }

    #[test]
    fn failure_leaves_no_spool_file() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FilesystemStorage::new(dir.path()).unwrap();
        // a file where the study directory should be
        std::fs::write(dir.path().join("1.2"), b"x").unwrap();
        assert!(fs
            .publish(Spooled::Memory(b"data".to_vec()), &key())
            .is_err());
        assert_eq!(std::fs::read_dir(fs.spool_dir()).unwrap().count(), 0);
    }
}
