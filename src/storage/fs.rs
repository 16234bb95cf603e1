//! Filesystem backend: `{out_dir}/{study}/{series}/{sop}.dcm`, published by
//! renaming a fully written spool file from `{out_dir}/.incoming/`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{BoxFuture, ObjectKey, SpoolFile, Spooled, Storage, StorageError, Stored};

/// Name of the spool directory inside `out_dir`.
pub const SPOOL_DIR_NAME: &str = ".incoming";

#[derive(Debug, Clone)]
pub struct FilesystemStorage {
    root: PathBuf,
    spool: PathBuf,
}

impl FilesystemStorage {
    /// Create the output and spool directories (blocking).
    pub fn new(out_dir: &Path) -> Result<Self, StorageError> {
        let root = if out_dir.is_absolute() {
            out_dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| StorageError::io("cannot resolve the current directory", e))?
                .join(out_dir)
        };
        let spool = root.join(SPOOL_DIR_NAME);
        std::fs::create_dir_all(&spool).map_err(|e| {
            StorageError::io(format!("out_dir {} cannot be created", spool.display()), e)
        })?;
        Ok(FilesystemStorage { root, spool })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn publish(&self, object: Spooled, key: &ObjectKey) -> Result<Stored, StorageError> {
        let size = object.len();
        let mut spool = match object {
            Spooled::File(f) => f,
            Spooled::Memory(bytes) => {
                let mut f = SpoolFile::create(&self.spool)
                    .map_err(|e| StorageError::io("cannot create spool file", e))?;
                f.file
                    .write_all(&bytes)
                    .map_err(|e| StorageError::io("cannot write spool file", e))?;
                f.len = bytes.len() as u64;
                f
            }
        };
        let target = self.root.join(key.relative_path());
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StorageError::io(format!("cannot create {}", parent.display()), e))?;
        }
        let from = spool
            .path()
            .ok_or_else(|| StorageError::Task("spool file already published".into()))?
            .to_path_buf();
        std::fs::rename(&from, &target)
            .map_err(|e| StorageError::io(format!("cannot rename into {}", target.display()), e))?;
        spool.disarm();
        Ok(Stored {
            location: target.to_string_lossy().into_owned(),
            size,
        })
    }
}

impl Storage for FilesystemStorage {
    fn spool_dir(&self) -> &Path {
        &self.spool
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
