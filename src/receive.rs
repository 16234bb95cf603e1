//! Receiving one object: fragments are spooled as they arrive (bounded
//! memory whatever the object size), then the head of the data set is parsed
//! for its UIDs, checked, and the object is handed to the storage backend.

use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use dicom_core::Tag;
use tokio::task::JoinHandle;

use crate::tags::Extraction;

use crate::dimse::status;
use crate::header::{self, Header};
use crate::storage::{is_valid_uid, ObjectKey, SpoolFile, Spooled, Storage, Stored};

/// Bytes gathered in memory before they are written out in one go. Objects
/// smaller than this never touch a spool file.
pub const SPILL_THRESHOLD: usize = 1024 * 1024;

type WriteResult = (Option<SpoolFile>, Vec<u8>, io::Result<()>);

/// An object being received.
pub struct Incoming {
    place: SpoolPlace,
    buf: Vec<u8>,
    spare: Vec<u8>,
    file: Option<SpoolFile>,
    pending: Option<JoinHandle<WriteResult>>,
    len: u64,
    /// Where the data set starts (after a file meta prefix, if any).
    dataset_offset: usize,
    error: Option<io::Error>,
}

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

fn write_chunk(place: SpoolPlace, file: Option<SpoolFile>, buf: Vec<u8>) -> WriteResult {
    let mut file = match file {
        Some(f) => f,
        None => match place.create() {
            Ok(f) => f,
            Err(e) => return (None, buf, Err(e)),
        },
    };
    let result = file.file.write_all(&buf);
    if result.is_ok() {
        file.len += buf.len() as u64;
    }
    (Some(file), buf, result)
}

impl Incoming {
    /// Start an object; `prefix` (the Part-10 preamble and meta group when
    /// storing with file meta) is written before the data set.
    pub fn new(place: SpoolPlace, prefix: Vec<u8>) -> Self {
        let dataset_offset = prefix.len();
        let mut buf = prefix;
        buf.reserve(16 * 1024);
        Incoming {
            place,
            buf,
            spare: Vec::new(),
            file: None,
            pending: None,
            len: dataset_offset as u64,
            dataset_offset,
            error: None,
        }
    }

    /// Total bytes received so far (prefix included).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append a fragment. A write failure is remembered (and the rest of the
    /// object discarded) so that the association can still read the object
    /// to its end and answer with a failure status.
    pub async fn push(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        if self.error.is_some() {
            return;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= SPILL_THRESHOLD {
            self.flush().await;
        }
    }

    async fn wait_pending(&mut self) {
        if let Some(handle) = self.pending.take() {
            match handle.await {
                Ok((file, mut buf, result)) => {
                    self.file = file;
                    buf.clear();
                    self.spare = buf;
                    if let Err(e) = result {
                        self.error = Some(e);
                    }
                }
                Err(e) => self.error = Some(io::Error::other(e.to_string())),
            }
        }
    }

    /// Start writing the buffer in the background (one write in flight at a
    /// time, so reception and disk writes overlap).
    async fn flush(&mut self) {
        self.wait_pending().await;
        if self.error.is_some() {
            self.buf.clear();
            return;
        }
        let buf = std::mem::replace(&mut self.buf, std::mem::take(&mut self.spare));
        let file = self.file.take();
        let place = self.place.clone();
        self.pending = Some(tokio::task::spawn_blocking(move || {
            write_chunk(place, file, buf)
        }));
    }

    /// All fragments arrived: the complete object, or the write error.
    pub async fn finish(mut self) -> io::Result<(Spooled, usize)> {
        self.wait_pending().await;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let offset = self.dataset_offset;
        match self.file.take() {
            None => Ok((Spooled::Memory(std::mem::take(&mut self.buf)), offset)),
            Some(file) => {
                let buf = std::mem::take(&mut self.buf);
                let place = self.place.clone();
                let (file, _, result) =
                    tokio::task::spawn_blocking(move || write_chunk(place, Some(file), buf))
                        .await
                        .map_err(|e| io::Error::other(e.to_string()))?;
                result?;
                let file = file.ok_or_else(|| io::Error::other("spool file lost"))?;
                Ok((Spooled::File(file), offset))
            }
        }
    }
}

/// Why a store failed, with the status to answer.
#[derive(Debug, Clone)]
pub struct StoreFailure {
    pub status: u16,
    pub message: String,
}

impl StoreFailure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        StoreFailure {
            status,
            message: message.into(),
        }
    }
}

/// What a successful store produced.
#[derive(Debug)]
pub struct StoreOutcome {
    pub stored: Stored,
    pub header: Header,
    pub key: ObjectKey,
}

/// Parse the head of the data set (in memory, or from the spool file off the
/// async threads).
async fn parse_header(
    object: Spooled,
    offset: usize,
    ts: &str,
    extraction: Arc<Extraction>,
) -> Result<(Spooled, Header), StoreFailure> {
    let cannot_parse = |e: header::HeaderError| {
        StoreFailure::new(
            status::CANNOT_UNDERSTAND,
            format!("cannot read data set: {e}"),
        )
    };
    match object {
        Spooled::Memory(bytes) => {
            let dataset = bytes.get(offset..).unwrap_or_default();
            let header =
                header::read_header(dataset, ts, extraction.plan()).map_err(cannot_parse)?;
            Ok((Spooled::Memory(bytes), header))
        }
        Spooled::File(spool) => {
            let ts = ts.to_string();
            tokio::task::spawn_blocking(move || {
                let read = || -> io::Result<std::fs::File> {
                    let mut f = spool.file.try_clone()?;
                    f.seek(SeekFrom::Start(offset as u64))?;
                    Ok(f)
                };
                let f = read().map_err(|e| {
                    StoreFailure::new(status::OUT_OF_RESOURCES, format!("cannot read spool: {e}"))
                })?;
                let header = header::read_header(BufReader::new(f), &ts, extraction.plan())
                    .map_err(cannot_parse)?;
                Ok((Spooled::File(spool), header))
            })
            .await
            .map_err(|e| StoreFailure::new(status::OUT_OF_RESOURCES, e.to_string()))?
        }
    }
}

fn required_uid<'a>(header: &'a Header, tag: Tag, name: &str) -> Result<&'a str, StoreFailure> {
    let uid = header.get(tag).ok_or_else(|| {
        StoreFailure::new(
            status::CANNOT_UNDERSTAND,
            match &header.error {
                Some(e) => format!("{name} not found in data set ({e})"),
                None => format!("{name} not found in data set"),
            },
        )
    })?;
    if !is_valid_uid(uid) {
        return Err(StoreFailure::new(
            status::CANNOT_UNDERSTAND,
            format!("{name} {uid:?} is not a valid UID"),
        ));
    }
    Ok(uid)
}

/// Check a completely received object and store it.
pub async fn complete(
    object: Spooled,
    dataset_offset: usize,
    transfer_syntax: &str,
    expected_sop_instance_uid: &str,
    extraction: Arc<Extraction>,
    storage: &dyn Storage,
) -> Result<StoreOutcome, StoreFailure> {
    let (object, header) =
        parse_header(object, dataset_offset, transfer_syntax, extraction).await?;
    let sop = required_uid(&header, header::SOP_INSTANCE_UID, "SOP Instance UID")?;
    if sop != expected_sop_instance_uid {
        return Err(StoreFailure::new(
            status::DATASET_MISMATCH,
            format!(
                "SOP Instance UID {sop:?} in data set differs from {expected_sop_instance_uid:?} in the command"
            ),
        ));
    }
    let key = ObjectKey {
        study_instance_uid: required_uid(
            &header,
            header::STUDY_INSTANCE_UID,
            "Study Instance UID",
        )?
        .to_string(),
        series_instance_uid: required_uid(
            &header,
            header::SERIES_INSTANCE_UID,
            "Series Instance UID",
        )?
        .to_string(),
        sop_instance_uid: sop.to_string(),
    };
    let stored = storage
        .commit(object, key.clone())
        .await
        .map_err(|e| StoreFailure::new(status::OUT_OF_RESOURCES, e.to_string()))?;
    Ok(StoreOutcome {
        stored,
        header,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_objects_stay_in_memory_large_ones_spill() {
        let dir = tempfile::tempdir().unwrap();
        let place = |anonymous| SpoolPlace {
            dir: dir.path().to_path_buf(),
            anonymous,
        };
        let mut small = Incoming::new(place(false), b"PRE".to_vec());
        small.push(b"abc").await;
        let (spooled, off) = small.finish().await.unwrap();
        assert_eq!(off, 3);
        assert!(matches!(spooled, Spooled::Memory(ref b) if b == b"PREabc"));

        let mut big = Incoming::new(place(false), Vec::new());
        let chunk = vec![7u8; 16 * 1024];
        for _ in 0..100 {
            big.push(&chunk).await;
        }
        assert_eq!(big.len(), 1_638_400);
        let (spooled, _) = big.finish().await.unwrap();
        match spooled {
            Spooled::File(f) => {
                let data = std::fs::read(f.path().unwrap()).unwrap();
                assert_eq!(data.len(), 1_638_400);
                assert_eq!(f.len, 1_638_400);
            }
            Spooled::Memory(_) => panic!("should have spilled"),
        }
        // dropped spool files are removed
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_object_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = Incoming::new(
            SpoolPlace {
                dir: dir.path().to_path_buf(),
                anonymous: false,
            },
            Vec::new(),
        );
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..20 {
            big.push(&chunk).await;
        }
        drop(big);
        for _ in 0..100 {
            if std::fs::read_dir(dir.path()).unwrap().count() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("spool file left behind");
    }
}
