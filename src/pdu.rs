//! PDU framing: reading whole PDUs off the wire with hard size limits, and
//! splitting P-DATA-TF bodies into presentation data values without copying.
//!
//! Association PDUs (A-ASSOCIATE-RQ and friends) are decoded and encoded by
//! `dicom-ul`; this module only frames them. P-DATA-TF, the hot path, is
//! parsed here so that each fragment is a borrowed slice of one reused buffer.

use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd};
use std::task::Poll;

use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, Pdu};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spin::{Spinner, Spinners};

/// PDU type codes (PS3.8 §9.3).
pub const A_ASSOCIATE_RQ: u8 = 0x01;
pub const P_DATA_TF: u8 = 0x04;
pub const A_RELEASE_RQ: u8 = 0x05;
pub const A_RELEASE_RP: u8 = 0x06;
pub const A_ABORT: u8 = 0x07;

/// Length of the fixed PDU header (type, reserved, 32-bit length).
pub const HEADER_LEN: usize = 6;

/// Largest association-negotiation PDU accepted (A-ASSOCIATE-RQ with many
/// presentation contexts stays far below this).
pub const MAX_ASSOCIATE_PDU: u32 = 1 << 20;

/// In non-strict mode peers may exceed the advertised maximum PDU length (some
/// do); this is the hard ceiling that still bounds memory per association.
pub const NON_STRICT_PDU_CEILING: u32 = 16 << 20;

/// Grow the receive buffer by at most this much per read, so a length field
/// that lies about the size never allocates more than what actually arrives.
const READ_CHUNK: usize = 256 * 1024;

/// Initial size of the receive buffer: one read usually brings several
/// PDUs of the common sizes (16 KiB), so the kernel is asked less often.
pub const READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("connection closed by peer")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("PDU of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge { length: u32, limit: u32 },
    #[error("malformed PDU: {0}")]
    Malformed(&'static str),
}

/// A PDU read off the wire: its type and the whole encoded PDU (header
/// included) in a buffer owned by the reader.
pub struct RawPdu<'a> {
    pub pdu_type: u8,
    /// Header and body.
    pub bytes: &'a [u8],
    /// The reader's buffer up to the last byte received: `bytes` lies at
    /// `at` in it, and so do the PDUs handed out before this one since the
    /// reader last received (see [`PduReader::window`]).
    pub window: &'a [u8],
    pub at: usize,
}

impl RawPdu<'_> {
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }
}

/// Bytes of a P-DATA-TF that say what its first value is: the PDU header,
/// the item length, the context ID and the control byte.
const P_DATA_HEAD: usize = HEADER_LEN + 6;

/// Smallest PDU a peer may send at any point (A-ABORT, A-RELEASE-RQ).
const MIN_PDU: usize = 10;

/// Highest receive low-water mark set (the kernel grows the receive buffer
/// to hold it).
const MAX_LOW_WATER: usize = 256 * 1024;

/// Most of a data set's announced bytes waited for at once: the reader wakes
/// after each such stretch to write it while the sender sends the next, so
/// that little is left to write once the last fragment is in (the sender
/// waits for the response then).
const MAX_ANNOUNCED_WAIT: usize = 64 * 1024;

/// Past this many announced bytes (a large object far from its end) the
/// reader waits for up to [`MAX_LOW_WATER`] at once: fewer wake-ups, and the
/// end is still far.
const FAR_FROM_THE_END: usize = 1024 * 1024;

/// Size of the receive buffer while a large object streams in (more than
/// [`FAR_FROM_THE_END`] announced): one read takes whatever has arrived, up
/// to this much, and its fragments are written from here in one `writev`.
const STREAM_BUFFER: usize = 1024 * 1024;

/// Announced bytes not waited for together with the rest: about one PDU at
/// the default maximum length, so that the data set's end (which the sender
/// waits behind) comes on its own and finds the rest written.
const KEEP_BACK: usize = 16 * 1024;

/// How long the reader waits for bytes that the data set announced (see
/// [`PduReader::expect_at_least`]) before it settles for what the protocol
/// guarantees.
const ANNOUNCED_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads PDUs one at a time. The reader does its own buffering: each read
/// asks the socket for as much as fits, and a PDU that arrived whole is
/// handed out in place, without another copy.
pub struct PduReader {
    /// Initialised storage; `buf[start..end]` holds received, unread bytes.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Length of the PDU handed out last, dropped at the next read.
    handed_out: usize,
    /// Bytes the peer must still send after the PDU handed out last (a
    /// fragment that is not the last one announces another P-DATA-TF).
    follows: usize,
    /// Bytes the peer announced it will send after the PDU handed out last
    /// (the rest of a data set whose length is known), for the next read.
    announced: usize,
    low_water: Option<LowWater>,
    /// Polls the socket before sleeping on it, while the peer is quick
    /// (only with `low_water`, whose descriptor it polls): for a request.
    spinner: Option<Spinner>,
    /// Likewise for the rest of a message begun (the rest of a PDU, the
    /// next PDU of a message), with its own record of the peer's gaps.
    within: Option<Spinner>,
    /// The peer has begun a message: what the next read waits for is the
    /// rest of it.
    mid_message: bool,
}

/// The connection's receive low-water mark (`SO_RCVLOWAT`), kept at the
/// number of bytes the peer is bound to send before it waits for us. The
/// kernel then wakes the reader once per PDU instead of once per segment
/// (senders such as dcmtk write a PDU's header and its body separately).
struct LowWater {
    fd: std::os::fd::OwnedFd,
    set: usize,
}

impl LowWater {
    fn wake_at(&mut self, bytes: usize) {
        use std::os::fd::AsRawFd;
        let bytes = bytes.clamp(1, MAX_LOW_WATER);
        if bytes == self.set {
            return;
        }
        let value = libc::c_int::try_from(bytes).unwrap_or(1);
        // SAFETY: the descriptor is open for the lifetime of `self.fd`, and
        // the option value is a c_int that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // On failure the mark stays where it was; 0 makes the next call retry.
        self.set = if rc == 0 { bytes } else { 0 };
    }
}

impl Default for PduReader {
    fn default() -> Self {
        PduReader {
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            handed_out: 0,
            follows: 0,
            announced: 0,
            low_water: None,
            spinner: None,
            within: None,
            mid_message: false,
        }
    }
}

impl PduReader {
    /// A reader that keeps the receive low-water mark of the TCP connection
    /// behind `fd` (a descriptor of the stream it reads) at what the peer
    /// is bound to send next.
    pub fn with_low_water(fd: std::os::fd::OwnedFd) -> Self {
        PduReader {
            low_water: Some(LowWater { fd, set: 1 }),
            ..PduReader::default()
        }
    }

    /// Poll the socket for a short while before sleeping on it when its
    /// peer has been quick (see [`crate::spin`]); for a reader with a
    /// low-water mark, on a thread that serves nothing else.
    pub fn spinning(mut self, limit: &'static Spinners) -> Self {
        if self.low_water.is_some() {
            self.spinner = Some(Spinner::new(limit));
            self.within = Some(Spinner::new(limit));
        }
        self
    }

    /// Whether the peer has begun a message whose rest the next read waits
    /// for (rather than for a request of the peer's choosing).
    pub fn mid_message(&mut self, begun: bool) {
        self.mid_message = begun;
    }

    /// The peer announced (in data already read) that at least `bytes` more
    /// follow the PDU handed out last: the next read may sleep until they
    /// are in, or for [`ANNOUNCED_GRACE`] at most, in case the announcement
    /// was wrong. Applies to the next read only.
    pub fn expect_at_least(&mut self, bytes: u64) {
        self.announced = usize::try_from(bytes).unwrap_or(usize::MAX);
    }

    /// Whether the peer has lately sent its requests within the spinning
    /// budget of our responses (see [`crate::spin`]); true until a gap was
    /// measured, false for a reader that does not spin.
    pub fn peer_quick(&self) -> bool {
        self.spinner
            .as_ref()
            .is_some_and(|s| s.estimate() < crate::spin::BUDGET)
    }

    /// Whether the next [`PduReader::read`] returns a PDU already received,
    /// without waiting for the socket.
    pub fn has_pdu(&self) -> bool {
        let start = self.start + self.handed_out;
        let Some(&[_, _, l0, l1, l2, l3]) = self
            .buf
            .get(start..self.end)
            .and_then(|b| b.first_chunk::<HEADER_LEN>())
        else {
            return false;
        };
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        self.end - start >= HEADER_LEN.saturating_add(length)
    }

    /// Receive more bytes towards a PDU of `want` bytes, waking once `sure`
    /// bytes (what the peer is bound to send) are in, or `hoped` (what it
    /// announced) within the grace period. A grace period that runs out
    /// clears `hoped`.
    async fn fill_towards<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        want: usize,
        sure: usize,
        hoped: &mut usize,
    ) -> Result<(), PduError> {
        if *hoped > sure && self.low_water.is_some() {
            self.wake_at(*hoped);
            match tokio::time::timeout(ANNOUNCED_GRACE, self.fill(stream, want)).await {
                Ok(filled) => return filled,
                Err(_) => *hoped = 0,
            }
        }
        self.wake_at(sure);
        self.fill(stream, want).await
    }

    /// Let the kernel wake the reader only once `needed` unread bytes are in.
    fn wake_at(&mut self, needed: usize) {
        let available = self.available();
        if let Some(lw) = self.low_water.as_mut() {
            lw.wake_at(needed.saturating_sub(available));
        }
    }

    /// Bytes that must follow the PDU of `total` bytes at the start of the
    /// buffer: after a P-DATA-TF whose only value is a fragment other than
    /// the last, the peer sends another PDU (the next fragment, or at least
    /// an A-ABORT).
    fn following(&self, pdu_type: u8, total: usize) -> usize {
        if pdu_type != P_DATA_TF {
            return 0;
        }
        let Some(&[_, _, _, _, _, _, i0, i1, i2, i3, _, control]) = self
            .buf
            .get(self.start..self.end)
            .and_then(|b| b.first_chunk::<P_DATA_HEAD>())
        else {
            return 0;
        };
        let item = u32::from_be_bytes([i0, i1, i2, i3]) as usize;
        let single = item.checked_add(P_DATA_HEAD - 2) == Some(total);
        if single && control & 0x02 == 0 {
            MIN_PDU
        } else {
            0
        }
    }

    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Receive more bytes, making room for a PDU of `want` bytes (growing
    /// the buffer by at most [`READ_CHUNK`] per call beyond what it holds).
    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        want: usize,
    ) -> Result<(), PduError> {
        if self.start + want > self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = want.min(self.buf.len() + READ_CHUNK);
            self.buf.resize(grown.max(self.end + 1), 0);
        }
        // Waiting for a request (not for the rest of something begun)?
        let request = !self.mid_message && self.available() == 0;
        let target = self
            .buf
            .get_mut(self.end..)
            .ok_or(PduError::Malformed("buffer"))?;
        let spinner = if request {
            self.spinner.as_mut()
        } else {
            self.within.as_mut()
        };
        let n = match (spinner, self.low_water.as_ref()) {
            (Some(spinner), Some(lw)) => {
                read_spinning(stream, target, spinner, lw.fd.as_fd()).await?
            }
            _ => stream.read(target).await?,
        };
        if n == 0 {
            return Err(PduError::Closed);
        }
        self.end += n;
        Ok(())
    }

    /// Read the next PDU whose body must not exceed `limit` bytes.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        limit: u32,
    ) -> Result<RawPdu<'_>, PduError> {
        self.start += std::mem::take(&mut self.handed_out);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let follows = std::mem::take(&mut self.follows);
        let announced = std::mem::take(&mut self.announced);
        if announced > FAR_FROM_THE_END && self.buf.len() < STREAM_BUFFER {
            self.buf = buffer_holding(STREAM_BUFFER, self.buf.get(..self.end).unwrap_or_default());
        }
        let mut hoped = match announced.checked_sub(KEEP_BACK) {
            Some(before_the_end) if before_the_end > 0 => {
                let stretch = if announced > FAR_FROM_THE_END {
                    MAX_LOW_WATER
                } else {
                    MAX_ANNOUNCED_WAIT
                };
                before_the_end.min(stretch)
            }
            _ => announced,
        };
        while self.available() < HEADER_LEN {
            let sure = follows.max(HEADER_LEN);
            self.fill_towards(stream, HEADER_LEN, sure, &mut hoped)
                .await?;
        }
        let header = self
            .buf
            .get(self.start..self.start + HEADER_LEN)
            .and_then(|h| h.first_chunk::<HEADER_LEN>())
            .ok_or(PduError::Malformed("buffer"))?;
        let [pdu_type, _, l0, l1, l2, l3] = *header;
        let length = u32::from_be_bytes([l0, l1, l2, l3]);
        if length > limit {
            return Err(PduError::TooLarge { length, limit });
        }
        let total = HEADER_LEN + length as usize;
        while self.available() < total {
            let sure = total + self.following(pdu_type, total);
            self.fill_towards(stream, total, sure, &mut hoped).await?;
        }
        self.follows = self.following(pdu_type, total);
        let bytes = self
            .buf
            .get(self.start..self.start + total)
            .ok_or(PduError::Malformed("buffer"))?;
        self.handed_out = total;
        let window = self
            .buf
            .get(..self.end)
            .ok_or(PduError::Malformed("buffer"))?;
        Ok(RawPdu {
            pdu_type,
            bytes,
            window,
            at: self.start,
        })
    }

    /// The buffer up to the last byte received, as [`RawPdu::window`] gave
    /// it: its bytes stay where they are until the reader next receives,
    /// which it does only in a [`PduReader::read`] that follows a false
    /// [`PduReader::has_pdu`].
    pub fn window(&self) -> &[u8] {
        self.buf.get(..self.end).unwrap_or_default()
    }

    /// Release memory held after a large PDU, keeping a modest buffer
    /// (this moves the bytes of [`PduReader::window`]).
    pub fn shrink(&mut self, keep: usize) {
        if self.announced > FAR_FROM_THE_END {
            return; // a large object is streaming in: the buffer is wanted again
        }
        let keep = keep.max(READ_BUFFER);
        if self.buf.len() > keep.saturating_mul(2) && self.available() <= keep {
            let consumed = self.start + self.handed_out;
            let rest = self.buf.get(consumed..self.end).unwrap_or_default();
            let fresh = buffer_holding(keep, rest);
            self.end = rest.len();
            self.start = 0;
            self.handed_out = 0;
            self.buf = fresh;
        }
    }
}

/// A new buffer of `size` bytes that begins with `bytes` (which fit): a
/// fresh zeroed allocation, whose pages the kernel zeroes as they are
/// touched, rather than a resize that zero-fills them here.
fn buffer_holding(size: usize, bytes: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; size];
    if let Some(dst) = buf.get_mut(..bytes.len()) {
        dst.copy_from_slice(bytes);
    }
    buf
}

/// Read into `target`; if nothing is there yet, spin (or not, as `spinner`
/// decides) before sleeping.
async fn read_spinning<R: AsyncRead + Unpin>(
    stream: &mut R,
    target: &mut [u8],
    spinner: &mut Spinner,
    fd: BorrowedFd<'_>,
) -> std::io::Result<usize> {
    let mut read = std::pin::pin!(stream.read(target));
    let first = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(done) => Poll::Ready(Some(done)),
        Poll::Pending => Poll::Ready(None),
    });
    if let Some(done) = first.await {
        return done;
    }
    spinner.wait(fd);
    let done = read.await;
    spinner.arrived();
    done
}

/// One presentation data value of a P-DATA-TF PDU.
#[derive(Debug, Clone, Copy)]
pub struct Pdv<'a> {
    pub context_id: u8,
    pub is_command: bool,
    pub is_last: bool,
    pub data: &'a [u8],
    /// Where `data` starts in the P-DATA-TF body.
    pub offset: usize,
}

/// Iterate over the PDV items of a P-DATA-TF body.
pub fn pdvs(body: &[u8]) -> impl Iterator<Item = Result<Pdv<'_>, PduError>> + '_ {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let item = (|| {
            let (len_bytes, tail) = rest
                .split_first_chunk::<4>()
                .ok_or(PduError::Malformed("truncated PDV item length"))?;
            let len = u32::from_be_bytes(*len_bytes) as usize;
            if len < 2 || len > tail.len() {
                return Err(PduError::Malformed("PDV item length out of range"));
            }
            let (item, after) = tail.split_at(len);
            let (&[context_id, control], data) = item
                .split_first_chunk::<2>()
                .ok_or(PduError::Malformed("truncated PDV header"))?;
            let offset = body.len() - after.len() - data.len();
            rest = after;
            Ok(Pdv {
                context_id,
                is_command: control & 0x01 != 0,
                is_last: control & 0x02 != 0,
                data,
                offset,
            })
        })();
        if item.is_err() {
            rest = &[];
        }
        Some(item)
    })
}

/// Encode a PDU with dicom-ul's writer.
pub fn encode(pdu: &Pdu) -> Result<Vec<u8>, PduError> {
    let mut out = Vec::with_capacity(256);
    dicom_ul::pdu::write_pdu(&mut out, pdu)
        .map_err(|_| PduError::Malformed("cannot encode PDU"))?;
    Ok(out)
}

/// Encode a P-DATA-TF PDU carrying one complete command or data set
/// fragment (PS3.8 §9.3.5: the PDU header, then one PDV item: its length,
/// the presentation context, the message control header, the value).
pub fn encode_pdata(context_id: u8, is_command: bool, data: Vec<u8>) -> Result<Vec<u8>, PduError> {
    let too_long = || PduError::Malformed("P-DATA value too long");
    let item_len = u32::try_from(data.len())
        .ok()
        .and_then(|n| n.checked_add(2))
        .ok_or_else(too_long)?;
    let pdu_len = item_len.checked_add(4).ok_or_else(too_long)?;
    // message control header: bit 0 command, bit 1 last fragment
    let control = u8::from(is_command) | 0x02;
    let mut out = Vec::with_capacity(P_DATA_HEAD + data.len());
    out.extend_from_slice(&[P_DATA_TF, 0]);
    out.extend_from_slice(&pdu_len.to_be_bytes());
    out.extend_from_slice(&item_len.to_be_bytes());
    out.extend_from_slice(&[context_id, control]);
    out.extend_from_slice(&data);
    Ok(out)
}

pub fn abort_pdu(reason: AbortRQServiceProviderReason) -> Pdu {
    Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(reason),
    }
}

pub fn reject_pdu(rj: AssociationRJ) -> Pdu {
    Pdu::AssociationRJ(rj)
}

/// How long to wait for the peer to close the connection after we rejected,
/// aborted or released (the upper layer's ARTIM timer, PS3.8 §9.1.5).
pub const ARTIM: std::time::Duration = std::time::Duration::from_secs(2);

/// Close the way the DICOM state machine wants: after our last PDU, wait (up
/// to [`ARTIM`]) for the peer to close first, discarding anything it still
/// sends, so that our last PDU is never lost to a reset.
pub async fn close_after_last_pdu<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(ARTIM, stream.flush()).await;
    let mut sink = [0u8; 2048];
    let _ = tokio::time::timeout(ARTIM, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    shut_down_quietly(stream).await;
}

/// Best effort: send a PDU, ignoring errors (used on the way out). A peer
/// that does not read gets [`ARTIM`] to take it.
pub async fn send_quietly<W: AsyncWrite + Unpin>(stream: &mut W, pdu: &Pdu) {
    if let Ok(bytes) = encode(pdu) {
        let _ = tokio::time::timeout(ARTIM, async {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
        })
        .await;
    }
}

/// Best effort: shut the connection down (a TLS close_notify included,
/// which a peer that does not read gets [`ARTIM`] to take).
pub async fn shut_down_quietly<W: AsyncWrite + Unpin>(stream: &mut W) {
    let _ = tokio::time::timeout(ARTIM, stream.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// P-DATA-TF encoded by hand, byte for byte as dicom-ul encodes it.
    #[test]
    fn pdata_encoding_matches_dicom_ul() {
        use dicom_ul::pdu::{PDataValue, PDataValueType};
        for (context_id, is_command, len) in [(1, true, 0), (3, true, 150), (255, false, 16_000)] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let reference = encode(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: context_id,
                    value_type: if is_command {
                        PDataValueType::Command
                    } else {
                        PDataValueType::Data
                    },
                    is_last: true,
                    data: data.clone(),
                }],
            })
            .unwrap();
            assert_eq!(
                encode_pdata(context_id, is_command, data).unwrap(),
                reference
            );
        }
    }

    fn pdata(items: &[(u8, u8, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (pc, ctl, data) in items {
            body.extend_from_slice(&((data.len() + 2) as u32).to_be_bytes());
            body.push(*pc);
            body.push(*ctl);
            body.extend_from_slice(data);
        }
        body
    }

    #[test]
    fn splits_pdvs() {
        let body = pdata(&[(1, 0x03, b"cmd"), (3, 0x00, b"data!")]);
        let items: Vec<_> = pdvs(&body).collect::<Result<_, _>>().unwrap();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_command && items[0].is_last);
        assert_eq!(items[0].data, b"cmd");
        assert_eq!(items[1].context_id, 3);
        assert!(!items[1].is_command && !items[1].is_last);
        assert_eq!(items[1].data, b"data!");
        for item in &items {
            assert_eq!(&body[item.offset..item.offset + item.data.len()], item.data);
        }
        assert_eq!((items[0].offset, items[1].offset), (6, 15));
    }

    #[test]
    fn rejects_bad_pdv_lengths() {
        let mut body = pdata(&[(1, 0, b"abc")]);
        body[3] = 200; // claims more than present
        assert!(pdvs(&body).any(|r| r.is_err()));
        assert!(pdvs(&[0, 0, 0, 1, 1]).any(|r| r.is_err()));
        assert!(pdvs(&[0, 0]).any(|r| r.is_err()));
    }

    #[tokio::test]
    async fn refuses_oversized_pdu_without_allocating() {
        let mut wire: &[u8] = &[0x04, 0, 0xFF, 0xFF, 0xFF, 0xF0, 1, 2, 3];
        let mut reader = PduReader::default();
        let err = reader.read(&mut wire, 1 << 20).await.err().unwrap();
        assert!(matches!(err, PduError::TooLarge { .. }));
        assert!(reader.buf.capacity() <= READ_BUFFER);
    }

    #[tokio::test]
    async fn truncated_pdu_is_closed() {
        let mut wire: &[u8] = &[0x04, 0, 0, 0, 0, 10, 1, 2];
        let mut reader = PduReader::default();
        let err = reader.read(&mut wire, 1 << 20).await.err().unwrap();
        assert!(matches!(err, PduError::Closed));
    }

    /// A stream that hands out at most `step` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(buf.remaining())
                .min(self.data.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn pdu_bytes(pdu_type: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![pdu_type, 0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn pdus_split_and_packed_any_way_come_out_whole() {
        let bodies: Vec<Vec<u8>> = [3usize, 70_000, 0, 16_384, 400_000, 10, 65_530]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        let wire: Vec<u8> = bodies
            .iter()
            .flat_map(|b| pdu_bytes(P_DATA_TF, b))
            .collect();
        for step in [1, 5, 6, 7, 4096, 65_536, 1 << 20] {
            let mut stream = Trickle {
                data: wire.clone(),
                pos: 0,
                step,
            };
            let mut reader = PduReader::default();
            for body in &bodies {
                let pdu = reader.read(&mut stream, 1 << 20).await.unwrap();
                assert_eq!(pdu.pdu_type, P_DATA_TF);
                assert_eq!(pdu.body(), &body[..], "step {step}");
                reader.shrink(16_384);
            }
            assert!(matches!(
                reader.read(&mut stream, 1 << 20).await,
                Err(PduError::Closed)
            ));
            assert!(reader.buf.len() <= 2 * READ_BUFFER);
        }
    }

    #[tokio::test]
    async fn reads_whole_pdu() {
        let mut wire: &[u8] = &[0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0x07];
        let mut reader = PduReader::default();
        let pdu = reader.read(&mut wire, 100).await.unwrap();
        assert_eq!(pdu.pdu_type, A_RELEASE_RQ);
        assert_eq!(pdu.body(), &[0, 0, 0, 0]);
    }

    /// While a large object streams in, one read takes up to a MiB of its
    /// fragments (written from the buffer in one go) and the buffer is
    /// kept; near the object's end it is released again.
    #[tokio::test]
    async fn a_large_object_is_read_a_mib_at_a_time() {
        let wire = fragment(16 * 1024, false).repeat(40);
        let mut stream: &[u8] = &wire;
        let mut reader = PduReader::default();
        reader.read(&mut stream, 1 << 20).await.unwrap();
        assert!(reader.window().len() <= READ_BUFFER, "no announcement yet");
        // as the association does: announce what is owed, then shrink
        reader.expect_at_least(64 << 20);
        reader.read(&mut stream, 1 << 20).await.unwrap();
        reader.expect_at_least(64 << 20);
        reader.shrink(16 * 1024);
        assert_eq!(reader.buf.len(), STREAM_BUFFER);
        while reader.has_pdu() {
            reader.read(&mut stream, 1 << 20).await.unwrap();
            reader.expect_at_least(64 << 20);
        }
        reader.shrink(16 * 1024);
        reader.read(&mut stream, 1 << 20).await.unwrap();
        // the second receive took everything the wire held, in one read
        assert!(
            reader.window().len() > 512 * 1024,
            "{}",
            reader.window().len()
        );
        while reader.has_pdu() {
            reader.read(&mut stream, 1 << 20).await.unwrap();
        }
        reader.expect_at_least(100 * 1024);
        reader.shrink(16 * 1024);
        assert!(reader.buf.len() <= 2 * READ_BUFFER);
    }

    /// A P-DATA-TF with one value of `len` bytes; `last` sets the
    /// last-fragment bit.
    fn fragment(len: usize, last: bool) -> Vec<u8> {
        let mut item = ((len + 2) as u32).to_be_bytes().to_vec();
        item.extend_from_slice(&[1, if last { 0x02 } else { 0x00 }]);
        item.resize(item.len() + len, 0xAB);
        pdu_bytes(P_DATA_TF, &item)
    }

    fn low_water(fd: &std::os::fd::OwnedFd) -> usize {
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid descriptor, value and length for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value as usize
    }

    /// A loopback TCP connection: the peer's end (blocking, no delay) and
    /// ours (non-blocking, for tokio).
    fn connection() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        peer.set_nodelay(true).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (peer, ours)
    }

    /// A loopback connection read through a low-water reader: the peer's
    /// end, a descriptor of ours to read the mark through, our stream and
    /// the reader. Inside a tokio runtime.
    fn watched() -> (
        std::net::TcpStream,
        std::os::fd::OwnedFd,
        tokio::net::TcpStream,
        PduReader,
    ) {
        use std::os::fd::AsFd;
        let (peer, ours) = connection();
        let probe = ours.as_fd().try_clone_to_owned().unwrap();
        let stream = tokio::net::TcpStream::from_std(ours).unwrap();
        let reader = PduReader::with_low_water(stream.as_fd().try_clone_to_owned().unwrap());
        (peer, probe, stream, reader)
    }

    /// Over a real connection: while a PDU is incomplete the low-water mark
    /// asks for its rest (and, after a fragment that is not the last, the
    /// smallest PDU that must follow), never more, so that a peer that
    /// stops after a last fragment, or aborts after any, is still heard.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn low_water_mark_waits_for_what_the_peer_owes() {
        use std::io::Write;
        let (mut peer, probe, mut stream, mut reader) = watched();

        let first = fragment(16_372, false);
        let second = fragment(100, true);
        let release = pdu_bytes(A_RELEASE_RQ, &[0, 0, 0, 0]);
        let abort = pdu_bytes(A_ABORT, &[0, 0, 0, 0]);
        let wire = [
            first.clone(),
            second.clone(),
            release,
            fragment(50, false),
            abort,
        ]
        .concat();

        let sender = std::thread::spawn(move || {
            let pause = || std::thread::sleep(std::time::Duration::from_millis(50));
            let mut marks = Vec::new();
            // header and value header first, as dcmtk writes them
            let (head, rest) = wire.split_at(P_DATA_HEAD);
            let (body, rest) = rest.split_at(first.len() - P_DATA_HEAD);
            for part in [head, body] {
                peer.write_all(part).unwrap();
                pause();
                marks.push(low_water(&probe));
            }
            peer.write_all(rest).unwrap();
            pause();
            (peer, marks)
        });
        let pdu = reader.read(&mut stream, 1 << 20).await.unwrap();
        assert_eq!(pdu.bytes.len(), 16_384);
        let pdu = reader.read(&mut stream, 1 << 20).await.unwrap();
        assert_eq!(pdu.bytes.len(), second.len());
        // a last fragment owes nothing: the 10-byte release is read
        let pdu = reader.read(&mut stream, 1 << 20).await.unwrap();
        assert_eq!(pdu.pdu_type, A_RELEASE_RQ);
        let pdu = reader.read(&mut stream, 1 << 20).await.unwrap();
        assert_eq!(pdu.pdu_type, P_DATA_TF);
        // a fragment that is not the last owes at least an A-ABORT
        let pdu = reader.read(&mut stream, 1 << 20).await.unwrap();
        assert_eq!(pdu.pdu_type, A_ABORT);
        let (_peer, marks) = sender.join().unwrap();
        // with the first fragment's header in, the mark asks for the rest of
        // it and the 10 bytes of a next PDU, which the peer owes: the whole
        // fragment alone does not wake the reader
        let mark = 16_384 - P_DATA_HEAD + MIN_PDU;
        assert_eq!(marks, [mark, mark]);
    }

    /// A data set that announced more than its sender sends (a wrong
    /// Pixel Data length) costs at most the grace period, never a hang.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_announcement_costs_only_the_grace_period() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let (mut peer, ours) = connection();
        let mut stream = tokio::net::TcpStream::from_std(ours).unwrap();
        let mut reader = PduReader::with_low_water(stream.as_fd().try_clone_to_owned().unwrap());

        let first = fragment(1000, false);
        let last = fragment(200, true);
        peer.write_all(&first).unwrap();
        peer.write_all(&last[..P_DATA_HEAD]).unwrap();
        let pdu = reader.read(&mut stream, 1 << 20).await.unwrap();
        assert_eq!(pdu.bytes.len(), first.len());
        // the data set claims a megabyte more; the sender sends 200 bytes
        reader.expect_at_least(1 << 20);
        let rest = last[P_DATA_HEAD..].to_vec();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            peer.write_all(&rest).unwrap();
            peer
        });
        let started = std::time::Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut stream, 1 << 20));
        let pdu = read.await.expect("the reader hung").unwrap();
        assert_eq!(pdu.bytes.len(), last.len());
        // it waited for the announced bytes (the 200 came after 5 ms), then
        // settled for what the protocol guarantees
        assert!(started.elapsed() >= ANNOUNCED_GRACE / 2);
        assert!(started.elapsed() < ANNOUNCED_GRACE + Duration::from_millis(500));
        // the announcement held for one read only: the next waits as usual
        assert_eq!(reader.announced, 0);
        let _peer = sender.join().unwrap();
    }

    /// Whether a PDU is ready without the socket: none before any read, one
    /// when a whole PDU follows the one handed out, none for half of one.
    #[tokio::test]
    async fn knows_whether_a_pdu_is_already_in() {
        let first = fragment(100, false);
        let second = fragment(200, true);
        let wire = [first.clone(), second.clone(), second[..9].to_vec()].concat();
        let mut stream = std::io::Cursor::new(wire);
        let mut reader = PduReader::default();
        assert!(!reader.has_pdu());
        reader.read(&mut stream, 1 << 20).await.unwrap();
        assert!(reader.has_pdu());
        reader.read(&mut stream, 1 << 20).await.unwrap();
        assert!(!reader.has_pdu());
    }

    /// Over a real connection, with a peer that sends each request when it
    /// has the response to the one before: requests come out whole whether
    /// the reader spins or sleeps; a peer that answers at once is waited
    /// for spinning, and one that dawdles stops the spinning; and the waits
    /// for the rest of a message begun are learnt from apart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quick_peer_is_spun_for_and_a_slow_one_slept_for() {
        use std::io::{Read, Write};
        use tokio::io::AsyncWriteExt;
        let (mut peer, _probe, mut stream, reader) = watched();
        let limit: &'static Spinners = Box::leak(Box::new(Spinners::new(1)));
        let mut reader = reader.spinning(limit);
        let requests: Vec<Vec<u8>> = (0..40).map(|i| fragment(100 + i, true)).collect();
        let sent = requests.clone();
        let sender = std::thread::spawn(move || {
            let mut ack = [0u8; 1];
            for (i, request) in sent.iter().enumerate() {
                if i >= 20 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                // A message in two writes: the reader waits for its rest.
                let (head, tail) = request.split_at(20);
                peer.write_all(head).unwrap();
                std::thread::sleep(Duration::from_micros(500));
                peer.write_all(tail).unwrap();
                peer.read_exact(&mut ack).unwrap();
            }
        });
        let estimate = |reader: &PduReader| reader.spinner.as_ref().unwrap().estimate();
        let mut quickest = Duration::MAX;
        for (i, request) in requests.iter().enumerate() {
            reader.mid_message(false);
            let pdu = reader.read(&mut stream, 1 << 20).await.unwrap();
            assert_eq!(pdu.bytes, &request[..]);
            stream.write_all(&[1]).await.unwrap();
            if i < 20 {
                quickest = quickest.min(estimate(&reader));
            }
        }
        // The waits of 0.5 ms for each request's rest were not learnt from
        // for requests, but they stopped the spinning inside messages.
        assert!(quickest < crate::spin::BUDGET, "{quickest:?}");
        assert!(estimate(&reader) >= Duration::from_millis(1));
        let within = reader.within.as_ref().unwrap().estimate();
        assert!(within >= Duration::from_micros(400), "{within:?}");
        sender.join().unwrap();
    }

    /// A data set that announced its length wakes the reader before its end,
    /// with about one PDU still to come, so that the end finds the rest
    /// handled; and the stretch waited for at once is bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn announced_bytes_are_waited_for_short_of_the_end() {
        use std::io::Write;
        let (mut peer, probe, mut stream, mut reader) = watched();
        let first = fragment(1000, false);
        peer.write_all(&first).unwrap();
        reader.read(&mut stream, 1 << 20).await.unwrap();

        let cases: [(u64, usize); 4] = [
            // far from the end of a large object: at most MAX_LOW_WATER
            (4 << 20, MAX_LOW_WATER),
            // less far: at most MAX_ANNOUNCED_WAIT at once
            (1 << 20, MAX_ANNOUNCED_WAIT),
            // near it: all but the last KEEP_BACK bytes
            (40_000, 40_000 - KEEP_BACK),
            // the end alone: all of it
            (KEEP_BACK as u64, KEEP_BACK),
        ];
        for (announced, expected) in cases {
            reader.expect_at_least(announced);
            let sender = std::thread::spawn({
                let probe = probe.try_clone().unwrap();
                let mut peer = peer.try_clone().unwrap();
                move || {
                    // well within the grace period
                    std::thread::sleep(Duration::from_millis(5));
                    let mark = low_water(&probe);
                    peer.write_all(&fragment(expected + 100, false)).unwrap();
                    mark
                }
            });
            let pdu = reader.read(&mut stream, 1 << 20).await.unwrap();
            assert_eq!(pdu.bytes.len(), expected + 100 + P_DATA_HEAD);
            assert_eq!(sender.join().unwrap(), expected);
        }
    }
}
