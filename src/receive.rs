//! Receiving one object: fragments are gathered in memory and, past a
//! backend-chosen size, passed in pieces to the association's writer while
//! they arrive (bounded memory whatever the object size). Once the
//! object is complete its header is read for the UIDs, checked, and the
//! object is published.
//!
//! An object being written while it arrives, through a writer that writes on
//! the association's own thread, is not copied: its fragments are left in the
//! PDU reader's buffer and written from there, several in one `writev`,
//! before the reader receives again (see [`Incoming::push_in_place`]).

use std::io::{self, IoSlice, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;

use dicom_core::Tag;

use crate::dimse::status;
use crate::header::{self, Header};
use crate::storage::{is_valid_uid, ObjectKey, Spooled, Storage, Stored};
use crate::tags::Extraction;
use crate::writer::{Finished, Then, WriteError, Writer};

/// Size of the pieces a big object is written in (once past
/// [`LARGE_OBJECT`]), and the most an object may stay in memory.
pub const SPILL_THRESHOLD: usize = 1024 * 1024;

/// Size of the pieces a mid-sized object is written in while it arrives, so
/// that when its last fragment comes little is left to write (the sender
/// waits for that) and each piece is written while still in the cache.
pub const STREAM_CHUNK: usize = 128 * 1024;

/// Least [`Incoming::flush`] writes.
const FLUSH_MIN: usize = 16 * 1024;

/// Past this size an object is written in [`SPILL_THRESHOLD`] pieces.
const LARGE_OBJECT: u64 = 4 * 1024 * 1024;

/// The first bytes of a data set kept in memory when the object is written
/// while it arrives, so that its header can usually be read without reading
/// the file back.
const HEAD_LEN: usize = 64 * 1024;

/// Fragments shorter than this are copied rather than left in place (a
/// `writev` entry each would cost more than the copy).
const MIN_IN_PLACE: usize = 4 * 1024;

/// An object being received.
pub struct Incoming {
    writer: Writer,
    /// The object's number on this association (the writer's key for it).
    seq: u64,
    /// Received bytes not yet passed to the writer.
    buf: Vec<u8>,
    /// Received bytes not yet passed to the writer that follow `buf`, left
    /// where they lie in the PDU reader's buffer (its window).
    in_place: Vec<Range<usize>>,
    in_place_len: usize,
    /// Objects up to this size stay in memory until complete.
    memory_limit: usize,
    len: u64,
    /// Where the data set starts (after a file meta prefix, if any).
    dataset_offset: usize,
    /// The data set's first bytes, once pieces went to the writer.
    head: Option<Vec<u8>>,
    error: Option<WriteError>,
    extent: Extent,
}

/// How far an object's data set is known to go.
enum Extent {
    /// Not looked at yet: look for the Pixel Data element's length in the
    /// data set (encoded in this transfer syntax) once this many bytes are in.
    Unread {
        transfer_syntax: String,
        at: usize,
    },
    /// At least to this many bytes of the object (prefix included).
    AtLeast(u64),
    Unknown,
}

/// When to look for the Pixel Data length: after the first bytes of a data
/// set (its header is usually shorter), and once more after [`HEAD_LEN`].
const EXTENT_FIRST_LOOK: usize = 8 * 1024;

impl Incoming {
    /// Start object `seq`; `prefix` (the Part-10 preamble and meta group
    /// when storing with file meta) comes before the data set.
    pub fn new(writer: Writer, seq: u64, memory_limit: usize, prefix: Vec<u8>) -> Self {
        let dataset_offset = prefix.len();
        let mut buf = writer.buffer();
        buf.extend_from_slice(&prefix);
        Incoming {
            writer,
            seq,
            buf,
            in_place: Vec::new(),
            in_place_len: 0,
            memory_limit,
            len: dataset_offset as u64,
            dataset_offset,
            head: None,
            error: None,
            extent: Extent::Unknown,
        }
    }

    /// Find out from the data set (encoded in `transfer_syntax`) how long it
    /// is at least, for [`Incoming::owed`].
    pub fn measure(mut self, transfer_syntax: &str) -> Self {
        self.extent = Extent::Unread {
            transfer_syntax: transfer_syntax.to_string(),
            at: EXTENT_FIRST_LOOK,
        };
        self
    }

    /// Bytes of the data set the sender has announced and not sent yet (the
    /// end of its Pixel Data value, when its length is defined); 0 when
    /// unknown. A sender may break its word: this is a hint for waiting,
    /// never a reason to stop reading. Looked for in the data set only when
    /// asked (the object is not complete yet).
    pub fn owed(&mut self) -> u64 {
        self.look_for_extent();
        match self.extent {
            Extent::AtLeast(end) => end.saturating_sub(self.len),
            _ => 0,
        }
    }

    fn look_for_extent(&mut self) {
        let Extent::Unread {
            transfer_syntax,
            at,
        } = &self.extent
        else {
            return;
        };
        let dataset = match &self.head {
            Some(head) => head.as_slice(),
            None => self.buf.get(self.dataset_offset..).unwrap_or_default(),
        };
        if dataset.len() < *at {
            return;
        }
        self.extent = match crate::header::pixel_data_end(dataset, transfer_syntax) {
            Some(end) => Extent::AtLeast(end.saturating_add(self.dataset_offset as u64)),
            None if *at < HEAD_LEN => Extent::Unread {
                transfer_syntax: transfer_syntax.clone(),
                at: HEAD_LEN,
            },
            None => Extent::Unknown,
        };
    }

    /// Total bytes received so far (prefix included).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many buffered bytes make a piece.
    fn piece_size(&self) -> usize {
        if self.head.is_none() {
            self.memory_limit
        } else if self.len <= LARGE_OBJECT {
            STREAM_CHUNK.max(self.memory_limit.min(SPILL_THRESHOLD))
        } else {
            SPILL_THRESHOLD
        }
    }

    /// Append the fragment at `range` of `window`, the PDU reader's buffer
    /// (see [`PduReader::window`](crate::pdu::PduReader::window)). While
    /// the object is being written as it arrives, through an inline writer,
    /// the fragment stays where it is: the caller must then call
    /// [`Incoming::flush`] or [`Incoming::settle`] with the same window
    /// before the reader receives again.
    pub async fn push_in_place(&mut self, window: &[u8], range: Range<usize>) {
        let Some(data) = window.get(range.clone()) else {
            self.fail(io::Error::other("fragment outside the receive buffer"));
            return;
        };
        let in_place = self.head.is_some()
            && self.error.is_none()
            && data.len() >= MIN_IN_PLACE
            && self.writer.is_inline();
        if !in_place {
            self.copy_in_place(window);
            self.push(data).await;
            return;
        }
        self.len += data.len() as u64;
        self.in_place_len += data.len();
        self.in_place.push(range);
        if self.buf.len() + self.in_place_len > self.piece_size() {
            self.write_pending(window).await;
        }
    }

    /// Write what is buffered of an object already being written while it
    /// arrives, when there is enough of it: called while the connection has
    /// nothing more to read, so that the object's end finds little to write
    /// (and, for a large object, so that its fragments are written from the
    /// reader's buffer, which then holds up to a MiB of them, not copied).
    /// Fragments left in `window` are written or copied: the reader may
    /// receive after this.
    pub async fn flush(&mut self, window: &[u8]) {
        if self.head.is_none()
            || self.error.is_some()
            || self.buf.len() + self.in_place_len < FLUSH_MIN
        {
            self.copy_in_place(window);
            return;
        }
        self.write_pending(window).await;
    }

    /// The object is complete: write the fragments left in `window` with
    /// what is buffered if that is worth a write, else copy them (they are
    /// then the tail that the writer writes before it publishes).
    pub async fn settle(&mut self, window: &[u8]) {
        if self.in_place.is_empty() {
            return;
        }
        if self.buf.len() + self.in_place_len < FLUSH_MIN {
            self.copy_in_place(window);
        } else {
            self.write_pending(window).await;
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.error = Some(WriteError::Spool(e));
        self.buf.clear();
        self.in_place.clear();
        self.in_place_len = 0;
    }

    /// Copy the fragments left in `window` into the buffer, after what it
    /// holds.
    fn copy_in_place(&mut self, window: &[u8]) {
        if self.in_place.is_empty() {
            return;
        }
        for range in std::mem::take(&mut self.in_place) {
            match window.get(range) {
                Some(data) => self.buf.extend_from_slice(data),
                None => {
                    return self.fail(io::Error::other("fragment outside the receive buffer"));
                }
            }
        }
        self.in_place_len = 0;
    }

    /// Pass the buffer and the fragments left in `window` to the writer, as
    /// one piece.
    async fn write_pending(&mut self, window: &[u8]) {
        if self.in_place.is_empty() {
            return self.write_buffered().await;
        }
        let mut slices = Vec::with_capacity(self.in_place.len() + 1);
        if !self.buf.is_empty() {
            slices.push(IoSlice::new(&self.buf));
        }
        for range in &self.in_place {
            match window.get(range.clone()) {
                Some(data) => slices.push(IoSlice::new(data)),
                None => {
                    return self.fail(io::Error::other("fragment outside the receive buffer"));
                }
            }
        }
        let written = self.writer.piece_vectored(self.seq, &mut slices).await;
        self.buf.clear();
        self.in_place.clear();
        self.in_place_len = 0;
        if let Err(e) = written {
            self.error = Some(e);
        }
    }

    async fn write_buffered(&mut self) {
        let piece = std::mem::replace(&mut self.buf, self.writer.buffer());
        if let Err(e) = self.writer.piece(self.seq, piece).await {
            self.error = Some(e);
            self.buf.clear();
        }
    }

    /// Whether an object still in memory is sure to outgrow it, and its
    /// header is in: its Pixel Data value, whose length it announced, ends
    /// past the memory limit. Such an object is written as it arrives from
    /// then on (its fragments left in place, see
    /// [`Incoming::push_in_place`]) instead of being copied up to the limit
    /// first; everything before its Pixel Data is in memory, so the header
    /// is still read from there.
    fn bound_to_spill(&mut self) -> bool {
        if self.head.is_some() || !self.writer.is_inline() {
            return false;
        }
        self.look_for_extent();
        matches!(self.extent, Extent::AtLeast(end) if end > self.memory_limit as u64)
    }

    /// Append a fragment. A failure is remembered (and the rest of the
    /// object discarded) so that the association can still read the object
    /// to its end and answer with a failure status.
    pub async fn push(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        if self.error.is_some() {
            return;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() > self.piece_size() || self.bound_to_spill() {
            if self.head.is_none() {
                let start = self.dataset_offset.min(self.buf.len());
                let end = start.saturating_add(HEAD_LEN).min(self.buf.len());
                self.head = Some(self.buf.get(start..end).unwrap_or_default().to_vec());
            }
            self.write_buffered().await;
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

    pub fn resources(e: impl std::fmt::Display) -> Self {
        StoreFailure::new(status::OUT_OF_RESOURCES, e.to_string())
    }
}

/// What a successful store produced.
#[derive(Debug)]
pub struct StoreOutcome {
    pub stored: Stored,
    pub header: Header,
    pub key: ObjectKey,
}

fn cannot_parse(e: header::HeaderError) -> StoreFailure {
    StoreFailure::new(
        status::CANNOT_UNDERSTAND,
        format!("cannot read data set: {e}"),
    )
}

/// Read the header of a spooled object from its file, off the async threads.
async fn header_from_file(
    object: Spooled,
    offset: usize,
    ts: &str,
    extraction: Arc<Extraction>,
) -> Result<(Spooled, Header), StoreFailure> {
    let ts = ts.to_string();
    tokio::task::spawn_blocking(move || {
        let header = match &object {
            Spooled::Memory(bytes) => header::read_header(
                bytes.get(offset..).unwrap_or_default(),
                &ts,
                extraction.plan(),
            ),
            Spooled::File(spool) => {
                let open = || -> io::Result<std::fs::File> {
                    let mut f = spool.file.try_clone()?;
                    f.seek(SeekFrom::Start(offset as u64))?;
                    Ok(f)
                };
                let f = open().map_err(|e| {
                    StoreFailure::new(status::OUT_OF_RESOURCES, format!("cannot read spool: {e}"))
                })?;
                header::read_header_from(f, &ts, extraction.plan())
            }
        }
        .map_err(cannot_parse)?;
        Ok((object, header))
    })
    .await
    .map_err(StoreFailure::resources)?
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

/// The storage key of a data set whose header was read, checked against the
/// command's SOP Instance UID.
fn object_key(header: &Header, expected_sop_instance_uid: &str) -> Result<ObjectKey, StoreFailure> {
    let sop = required_uid(header, header::SOP_INSTANCE_UID, "SOP Instance UID")?;
    if sop != expected_sop_instance_uid {
        return Err(StoreFailure::new(
            status::DATASET_MISMATCH,
            format!(
                "SOP Instance UID {sop:?} in data set differs from {expected_sop_instance_uid:?} in the command"
            ),
        ));
    }
    Ok(ObjectKey {
        study_instance_uid: required_uid(header, header::STUDY_INSTANCE_UID, "Study Instance UID")?
            .to_string(),
        series_instance_uid: required_uid(
            header,
            header::SERIES_INSTANCE_UID,
            "Series Instance UID",
        )?
        .to_string(),
        sop_instance_uid: sop.to_string(),
    })
}

/// Where the object is once its header is known.
enum Progress {
    /// Its last bytes are still with us: the writer finishes and publishes.
    Open(Vec<u8>),
    /// Complete and spooled (its header had to be read from the file).
    Spooled(Spooled),
}

/// A completely received object whose header was read and checked.
pub struct Checked {
    pub header: Header,
    pub key: ObjectKey,
    writer: Writer,
    seq: u64,
    progress: Progress,
}

/// Read a completely received object's header and check it against the
/// command: the storage key, or why the object is refused (what was
/// written of it is dropped then).
pub async fn check(
    incoming: Incoming,
    transfer_syntax: &str,
    expected_sop_instance_uid: &str,
    extraction: Arc<Extraction>,
) -> Result<Checked, StoreFailure> {
    let Incoming {
        writer,
        seq,
        buf,
        dataset_offset: offset,
        head,
        error,
        in_place,
        ..
    } = incoming;
    if let Some(e) = error {
        return Err(StoreFailure::resources(e));
    }
    if !in_place.is_empty() {
        // Never happens: the association settles the object first.
        writer.discard(seq).await;
        return Err(StoreFailure::resources(
            "fragments of the object were left unwritten",
        ));
    }
    // The header is read from memory: the whole object, or the head of one
    // that was written while it arrived (when the head holds all of it).
    let in_memory = match &head {
        None => Some(
            header::read_header(
                buf.get(offset..).unwrap_or_default(),
                transfer_syntax,
                extraction.plan(),
            )
            .map_err(cannot_parse),
        ),
        Some(head) => {
            match header::read_header(head.as_slice(), transfer_syntax, extraction.plan()) {
                Ok(h) if h.complete => Some(Ok(h)),
                _ => None,
            }
        }
    };
    let (header, progress) = match in_memory {
        Some(Ok(header)) => (header, Progress::Open(buf)),
        Some(Err(failure)) => {
            writer.discard(seq).await;
            return Err(failure);
        }
        None => {
            let object = match writer.finish(seq, buf, Then::Return).await {
                Ok(Finished::Spooled(object)) => object,
                Ok(_) => return Err(StoreFailure::resources("object published unchecked")),
                Err(e) => return Err(StoreFailure::resources(e)),
            };
            let (object, header) =
                header_from_file(object, offset, transfer_syntax, extraction).await?;
            (header, Progress::Spooled(object))
        }
    };
    match object_key(&header, expected_sop_instance_uid) {
        Ok(key) => Ok(Checked {
            header,
            key,
            writer,
            seq,
            progress,
        }),
        Err(failure) => {
            if matches!(progress, Progress::Open(_)) {
                writer.discard(seq).await;
            }
            Err(failure)
        }
    }
}

impl Checked {
    /// Store the object (waits until it is published).
    pub async fn store(self, storage: &dyn Storage) -> Result<StoreOutcome, StoreFailure> {
        let Checked {
            header,
            key,
            writer,
            seq,
            progress,
        } = self;
        let object = match progress {
            Progress::Open(tail) => {
                let then = Then::Publish { key: key.clone() };
                match writer
                    .finish(seq, tail, then)
                    .await
                    .map_err(StoreFailure::resources)?
                {
                    Finished::Published(stored) => {
                        return Ok(StoreOutcome {
                            stored,
                            header,
                            key,
                        })
                    }
                    Finished::Spooled(object) => object,
                }
            }
            Progress::Spooled(object) => object,
        };
        let stored = storage
            .commit(object, key.clone())
            .await
            .map_err(StoreFailure::resources)?;
        Ok(StoreOutcome {
            stored,
            header,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FilesystemStorage;
    use crate::writer::{Placement, SpoolPlace};

    fn writer(dir: &std::path::Path) -> (Writer, std::path::PathBuf) {
        placed_writer(dir, Placement::OwnThread)
    }

    fn placed_writer(dir: &std::path::Path, placement: Placement) -> (Writer, std::path::PathBuf) {
        let storage = FilesystemStorage::new(dir).unwrap();
        let spool = storage.spool_dir().to_path_buf();
        let place = SpoolPlace {
            dir: spool.clone(),
            anonymous: false,
        };
        (
            Writer::start(place, Arc::new(storage), placement, None).unwrap(),
            spool,
        )
    }

    /// P-DATA-TF-like windows: each fragment of `data` (16 KiB, or what is
    /// left) preceded by 12 bytes of framing, several fragments per window
    /// as a PDU reader's buffer would hold them. Yields (window, ranges).
    fn windows(data: &[u8], per_window: usize) -> Vec<(Vec<u8>, Vec<Range<usize>>)> {
        let mut out = Vec::new();
        for group in data.chunks(16 * 1024 * per_window) {
            let mut window = Vec::new();
            let mut ranges = Vec::new();
            for fragment in group.chunks(16 * 1024) {
                window.extend_from_slice(&[0xAA; 12]);
                ranges.push(window.len()..window.len() + fragment.len());
                window.extend_from_slice(fragment);
            }
            out.push((window, ranges));
        }
        out
    }

    fn stored(spooled: Spooled) -> Vec<u8> {
        match spooled {
            Spooled::File(f) => {
                let bytes = std::fs::read(f.path().unwrap()).unwrap();
                assert_eq!(f.len, bytes.len() as u64);
                bytes
            }
            Spooled::Memory(b) => b,
        }
    }

    /// Fragments of an object being written as it arrives are written from
    /// where they lie (the reader's buffer), with what was copied before
    /// them, in order; small ones and those for a writer thread are copied.
    #[tokio::test(flavor = "current_thread")]
    async fn fragments_left_in_place_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 249) as u8).collect();
        for placement in [Placement::Inline, Placement::OwnThread] {
            let (w, _) = placed_writer(dir.path(), placement);
            let mut incoming = Incoming::new(w, 1, STREAM_CHUNK, b"PRE".to_vec());
            let mut held_somewhere = false;
            for (i, (window, ranges)) in windows(&data, 3).into_iter().enumerate() {
                for range in ranges {
                    incoming.push_in_place(&window, range).await;
                    held_somewhere |= !incoming.in_place.is_empty();
                }
                if i % 2 == 0 {
                    // the connection ran dry: nothing may stay in place
                    incoming.flush(&window).await;
                    assert!(incoming.in_place.is_empty());
                } else {
                    incoming.settle(&window).await;
                    assert!(incoming.in_place.is_empty());
                }
            }
            assert_eq!(held_somewhere, placement == Placement::Inline);
            assert_eq!(incoming.len(), 700_003);
            let bytes = stored(finish(incoming).await);
            assert_eq!(&bytes[..3], b"PRE");
            assert!(bytes[3..] == data[..]);
        }

        // a short fragment after fragments in place is copied after them
        let (w, _) = placed_writer(dir.path(), Placement::Inline);
        let mut incoming = Incoming::new(w, 2, STREAM_CHUNK, Vec::new());
        let first = &data[..STREAM_CHUNK + 1];
        incoming.push(first).await;
        assert!(incoming.head.is_some());
        let mut window = vec![0u8; 12];
        window.extend_from_slice(&data[STREAM_CHUNK + 1..STREAM_CHUNK + 20_001]);
        window.extend_from_slice(&data[STREAM_CHUNK + 20_001..STREAM_CHUNK + 20_101]);
        incoming.push_in_place(&window, 12..20_012).await;
        assert_eq!(incoming.in_place.len(), 1);
        incoming.push_in_place(&window, 20_012..20_112).await;
        assert!(incoming.in_place.is_empty());
        assert_eq!(incoming.buf.len(), 20_100);
        incoming.settle(&window).await;
        assert!(stored(finish(incoming).await) == data[..STREAM_CHUNK + 20_101]);
    }

    /// Fragments still in place when the object is checked are a bug of the
    /// caller: the object fails rather than lose them.
    #[tokio::test(flavor = "current_thread")]
    async fn an_object_checked_with_fragments_in_place_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = placed_writer(dir.path(), Placement::Inline);
        let mut incoming = Incoming::new(w, 1, STREAM_CHUNK, Vec::new());
        incoming.push(&vec![1u8; STREAM_CHUNK + 1]).await;
        let window = vec![2u8; 20_000];
        incoming.push_in_place(&window, 0..20_000).await;
        let extraction = Arc::new(Extraction::default());
        let failure = check(incoming, "1.2.840.10008.1.2.1", "1.2.3", extraction)
            .await
            .err()
            .unwrap();
        assert_eq!(failure.status, status::OUT_OF_RESOURCES);
        // and a range outside the window fails the object too
        let (w, _) = placed_writer(dir.path(), Placement::Inline);
        let mut incoming = Incoming::new(w, 2, STREAM_CHUNK, Vec::new());
        incoming.push_in_place(&window, 19_000..21_000).await;
        assert!(incoming.error.is_some());
    }

    /// An object whose Pixel Data ends past the memory limit is written as
    /// it arrives as soon as its header is in (through an inline writer),
    /// and its header is still read from memory.
    #[tokio::test(flavor = "current_thread")]
    async fn an_object_announcing_a_large_pixel_data_spills_early() {
        let dir = tempfile::tempdir().unwrap();
        let mut object = Vec::new();
        // SOP Instance, Study Instance and Series Instance UIDs, then
        // (7FE0,0010) OW of 400,000 bytes
        for (element, uid) in [
            ((0x08, 0x18), b"1.2.3.4\0"),
            ((0x20, 0x0d), b"1.2.3.5\0"),
            ((0x20, 0x0e), b"1.2.3.6\0"),
        ] {
            object.extend_from_slice(&[element.0, 0x00, element.1, 0x00, b'U', b'I', 8, 0]);
            object.extend_from_slice(uid);
        }
        object.extend_from_slice(&[0xe0, 0x7f, 0x10, 0x00, b'O', b'W', 0, 0]);
        object.extend_from_slice(&400_000u32.to_le_bytes());
        object.extend((0..400_000u32).map(|i| (i % 241) as u8));
        for placement in [Placement::Inline, Placement::OwnThread] {
            let (w, _) = placed_writer(dir.path(), placement);
            let mut incoming =
                Incoming::new(w, 1, STREAM_CHUNK, Vec::new()).measure("1.2.840.10008.1.2.1");
            let (window, ranges) = windows(&object, 1).swap_remove(0);
            let mut ranges = ranges.into_iter();
            incoming
                .push_in_place(&window, ranges.next().unwrap())
                .await;
            // 16 KiB in: past the first look at the extent
            assert_eq!(incoming.head.is_some(), placement == Placement::Inline);
            for (window, ranges) in windows(&object[16 * 1024..], 2) {
                for range in ranges {
                    incoming.push_in_place(&window, range).await;
                }
                incoming.flush(&window).await;
            }
            let extraction = Arc::new(Extraction::default());
            let checked = check(incoming, "1.2.840.10008.1.2.1", "1.2.3.4", extraction)
                .await
                .unwrap();
            assert_eq!(checked.key.study_instance_uid, "1.2.3.5");
            // the header was read from memory either way
            let Progress::Open(tail) = checked.progress else {
                panic!("header read from the file")
            };
            let spooled = match checked.writer.finish(1, tail, Then::Return).await {
                Ok(Finished::Spooled(s)) => s,
                _ => panic!("not spooled"),
            };
            assert!(stored(spooled) == object);
        }
    }

    async fn finish(incoming: Incoming) -> Spooled {
        let Incoming {
            writer, seq, buf, ..
        } = incoming;
        match writer.finish(seq, buf, Then::Return).await.unwrap() {
            Finished::Spooled(s) => s,
            _ => panic!("not asked to publish"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_objects_stay_in_memory_large_ones_are_written_as_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let (w, spool) = writer(dir.path());
        let mut small = Incoming::new(w.clone(), 1, SPILL_THRESHOLD, b"PRE".to_vec());
        small.push(b"abc").await;
        assert!(small.head.is_none());
        assert!(matches!(finish(small).await, Spooled::Memory(ref b) if b == b"PREabc"));

        let data: Vec<u8> = (0..1_638_400u32).map(|i| (i % 251) as u8).collect();
        for (seq, memory_limit) in [(2, STREAM_CHUNK), (3, SPILL_THRESHOLD)] {
            let mut big = Incoming::new(w.clone(), seq, memory_limit, b"P".to_vec());
            for chunk in data.chunks(16 * 1024) {
                big.push(chunk).await;
                assert!(big.buf.len() <= memory_limit.max(STREAM_CHUNK) + 16 * 1024);
            }
            assert_eq!(big.len(), 1_638_401);
            assert_eq!(big.head.as_deref(), Some(&data[..HEAD_LEN]));
            match finish(big).await {
                Spooled::File(f) => {
                    assert_eq!(f.len, 1_638_401);
                    let stored = std::fs::read(f.path().unwrap()).unwrap();
                    assert_eq!(&stored[..1], b"P");
                    assert!(stored[1..] == data[..]);
                }
                Spooled::Memory(_) => panic!("should have been written"),
            }
        }
        // dropped spool files are removed
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    }

    /// Between fragments (the connection has nothing more yet) an object
    /// being written as it arrives writes what it holds, if worth a write;
    /// one kept in memory stays there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_writes_what_came_of_an_object_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = writer(dir.path());
        let mut small = Incoming::new(w.clone(), 1, SPILL_THRESHOLD, Vec::new());
        small.push(&[1u8; 100_000]).await;
        small.flush(&[]).await;
        assert_eq!(small.buf.len(), 100_000);
        drop(small);

        let data: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
        let mut big = Incoming::new(w.clone(), 2, STREAM_CHUNK, Vec::new());
        big.push(&data[..STREAM_CHUNK + 1]).await;
        assert!(big.buf.is_empty());
        big.push(&data[STREAM_CHUNK + 1..STREAM_CHUNK + 1000]).await;
        big.flush(&[]).await;
        // too little to be worth a write
        assert_eq!(big.buf.len(), 999);
        big.push(&data[STREAM_CHUNK + 1000..STREAM_CHUNK + 40_000])
            .await;
        big.flush(&[]).await;
        assert!(big.buf.is_empty());
        big.push(&data[STREAM_CHUNK + 40_000..]).await;
        match finish(big).await {
            Spooled::File(f) => assert!(std::fs::read(f.path().unwrap()).unwrap() == data),
            Spooled::Memory(_) => panic!("should have been written"),
        }

        // past LARGE_OBJECT too (the reader then holds up to a MiB of it)
        let mut large = Incoming::new(w.clone(), 3, STREAM_CHUNK, Vec::new());
        for _ in 0..(LARGE_OBJECT as usize / data.len() + 1) {
            large.push(&data).await;
        }
        assert!(large.buf.len() >= FLUSH_MIN);
        large.flush(&[]).await;
        assert!(large.buf.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_and_discarded_objects_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (w, spool) = writer(dir.path());
        let chunk = vec![1u8; 64 * 1024];
        let empty = || std::fs::read_dir(&spool).unwrap().count() == 0;
        // refused after pieces were written
        let mut big = Incoming::new(w.clone(), 1, STREAM_CHUNK, Vec::new());
        for _ in 0..20 {
            big.push(&chunk).await;
        }
        w.discard(1).await;
        // superseded by the next object without a word (cannot happen on one
        // association, but the writer must not mix them)
        let mut other = Incoming::new(w.clone(), 2, STREAM_CHUNK, Vec::new());
        for _ in 0..20 {
            other.push(&chunk).await;
        }
        let mut last = Incoming::new(w.clone(), 3, STREAM_CHUNK, Vec::new());
        for _ in 0..20 {
            last.push(&chunk).await;
        }
        // the association ends mid-object: the writer thread drops it
        drop((big, other, last, w));
        for _ in 0..100 {
            if empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("spool file left behind");
    }

    /// The bytes a data set still owes by its Pixel Data length, counted
    /// down as they arrive; none for a data set that says nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn owed_bytes_follow_the_pixel_data_length() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = writer(dir.path());
        let mut head = Vec::new();
        // (0008,0018) UI "1.2.3.4", then (7FE0,0010) OW of 100,000 bytes
        head.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, b'U', b'I', 8, 0]);
        head.extend_from_slice(b"1.2.3.4\0");
        head.extend_from_slice(&[0xe0, 0x7f, 0x10, 0x00, b'O', b'W', 0, 0]);
        head.extend_from_slice(&100_000u32.to_le_bytes());
        let value_at = head.len() as u64;
        head.resize(10_000, 7);
        let mut incoming = Incoming::new(w.clone(), 1, SPILL_THRESHOLD, b"PREFIX".to_vec())
            .measure("1.2.840.10008.1.2.1");
        incoming.push(&head[..100]).await;
        // too early to look
        assert_eq!(incoming.owed(), 0);
        incoming.push(&head[100..]).await;
        let owed = value_at + 100_000 - head.len() as u64;
        assert_eq!(incoming.owed(), owed);
        incoming.push(&[0u8; 50_000]).await;
        assert_eq!(incoming.owed(), owed - 50_000);

        let mut silent = Incoming::new(w, 2, SPILL_THRESHOLD, Vec::new());
        silent.push(&head).await;
        assert_eq!(silent.owed(), 0);
    }
}
