//! Reading the top-level attributes the receiver needs (UIDs for the storage
//! path, extracted tags for events) from the head of a received data set.
//!
//! The data set is walked element by element with dicom-encoding's header
//! decoders; values are read only for wanted tags (and only up to
//! [`MAX_VALUE_LEN`] bytes), everything else is skipped, nested sequences
//! included. A data set in memory is walked in place ([`read_header`]); a
//! file or a deflated data set goes through one fixed buffer
//! ([`read_header_from`]). Reading stops at the
//! first top-level element past the largest wanted tag and never goes into
//! Pixel Data, so memory stays bounded whatever the object size or content.
//!
//! Values are formatted as strings: text decoded per Specific Character Set
//! (see [`crate::charset`]), multiple values joined with `\`, padding
//! trimmed; numbers in decimal; binary values in hexadecimal.

use std::io::{self, BufRead, BufReader, Read};

use dicom_core::header::{HasLength, Header as _, SequenceItemHeader};
use dicom_core::{Tag, VR};
use dicom_encoding::decode::implicit_le::ImplicitVRLittleEndianDecoder;
use dicom_encoding::decode::DecodeFrom;
use dicom_encoding::transfer_syntax::{Codec, Endianness, TransferSyntax, TransferSyntaxIndex};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::charset::{decode_default, Charset, Decoded};

pub const SPECIFIC_CHARACTER_SET: Tag = Tag(0x0008, 0x0005);
pub const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
pub const SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x0018);
pub const STUDY_INSTANCE_UID: Tag = Tag(0x0020, 0x000D);
pub const SERIES_INSTANCE_UID: Tag = Tag(0x0020, 0x000E);
pub const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
/// Float Pixel Data, the first of the bulk pixel elements: reading always
/// stops here.
pub const PIXEL_DATA_START: Tag = Tag(0x7FE0, 0x0008);
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);

/// Longest value read for extraction; longer values are skipped (and logged).
pub const MAX_VALUE_LEN: u32 = 64 * 1024;
/// Deepest sequence nesting walked through before giving up.
pub const MAX_DEPTH: usize = 64;
/// At most this many warnings are kept per data set.
const MAX_WARNINGS: usize = 8;

/// The attributes every object needs for its path and events.
pub const IDENTIFYING_TAGS: [Tag; 5] = [
    SPECIFIC_CHARACTER_SET,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    SERIES_INSTANCE_UID,
];

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("transfer syntax {0} is not known")]
    UnknownTransferSyntax(String),
    #[error("cannot parse data set: {0}")]
    Parse(String),
}

/// A private attribute addressed through its Private Creator: element
/// `xx{element}` of `group`, where block `xx` is the one reserved by
/// `creator` (PS3.5 §7.8.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateRequest {
    pub group: u16,
    pub creator: String,
    pub element: u8,
}

/// What to read from a data set.
#[derive(Debug, Clone)]
pub struct HeaderPlan {
    fixed: Vec<Tag>,
    private: Vec<PrivateRequest>,
    stop: Tag,
}

impl HeaderPlan {
    /// Read `fixed` tags (the identifying tags are always added) and the
    /// private attributes of `private`.
    pub fn new(fixed: impl IntoIterator<Item = Tag>, private: Vec<PrivateRequest>) -> Self {
        let mut fixed: Vec<Tag> = fixed.into_iter().chain(IDENTIFYING_TAGS).collect();
        fixed.sort_unstable();
        fixed.dedup();
        let stop = fixed
            .iter()
            .copied()
            .chain(private.iter().map(|p| Tag(p.group, 0xFFFF)))
            .max()
            .unwrap_or(SERIES_INSTANCE_UID)
            .min(PIXEL_DATA_START);
        HeaderPlan {
            fixed,
            private,
            stop,
        }
    }

    /// Only the identifying tags.
    pub fn identifying() -> Self {
        Self::new([], Vec::new())
    }

    pub fn private_requests(&self) -> &[PrivateRequest] {
        &self.private
    }

    fn is_creator_of_interest(&self, tag: Tag) -> bool {
        tag.group() % 2 == 1
            && (0x0010..=0x00FF).contains(&tag.element())
            && self.private.iter().any(|p| p.group == tag.group())
    }
}

/// Top-level values read from a data set, as strings.
#[derive(Debug, Default, Clone)]
pub struct Header {
    /// (tag, value) in the order read: a handful of entries, searched
    /// linearly (cheaper than a map at this size).
    values: Vec<(Tag, String)>,
    /// For each private request of the plan (same index), the tag its
    /// private creator resolved to, if the creator was found.
    pub private_tags: Vec<Option<Tag>>,
    /// A parse error met after some values were read (the data set may be
    /// truncated or malformed past that point).
    pub error: Option<String>,
    /// Values that could not be decoded exactly (charset problems), values
    /// too long to extract: worth a log line, not a failure.
    pub warnings: Vec<String>,
    /// Reading stopped at an element past everything wanted (not at the end
    /// of the input or at an error): reading more input would add nothing.
    pub complete: bool,
    /// Where the value of the top-level Pixel Data element ends, counted
    /// from the data set's start, when reading stopped at its header and
    /// its length is defined (not for deflated data sets).
    pub pixel_data_end: Option<u64>,
}

impl Header {
    pub fn get(&self, tag: Tag) -> Option<&str> {
        self.values
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.as_str())
    }

    /// Set the value of `tag` (a data set that repeats a tag: the last wins).
    pub fn set(&mut self, tag: Tag, value: String) {
        match self.values.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, v)) => *v = value,
            None => self.values.push((tag, value)),
        }
    }

    /// Move the value of `tag` out.
    pub fn take(&mut self, tag: Tag) -> Option<String> {
        let at = self.values.iter().position(|(t, _)| *t == tag)?;
        Some(self.values.swap_remove(at).1)
    }

    fn warn(&mut self, message: impl FnOnce() -> String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(message());
        }
    }
}

fn tag_str(tag: Tag) -> String {
    format!("({:04X},{:04X})", tag.group(), tag.element())
}

/// Skip `n` bytes of the source without copying them.
fn skip<R: BufRead + ?Sized>(src: &mut R, n: u32) -> Result<(), String> {
    let n = n as usize;
    let mut left = n;
    while left > 0 {
        let available = match src.fill_buf() {
            Ok(buf) => buf.len(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read data set: {e}")),
        };
        if available == 0 {
            return Err(format!(
                "data set ends inside a value ({} of {n} bytes)",
                n - left
            ));
        }
        let step = available.min(left);
        src.consume(step);
        left -= step;
    }
    Ok(())
}

/// Hand the next `n` bytes to `f`: in place when the source already holds
/// them (always, for a data set in memory), else through a copy.
fn with_value<S: BufRead + ?Sized, T>(
    src: &mut S,
    n: u32,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T, String> {
    let len = n as usize;
    let buf = src
        .fill_buf()
        .map_err(|e| format!("cannot read data set: {e}"))?;
    if let Some(value) = buf.get(..len) {
        let out = f(value);
        src.consume(len);
        return Ok(out);
    }
    let raw = read_value(src, n)?;
    Ok(f(&raw))
}

fn read_value<R: Read + ?Sized>(src: &mut R, n: u32) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(n as usize);
    src.take(u64::from(n))
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read data set: {e}"))?;
    if buf.len() < n as usize {
        return Err(format!(
            "data set ends inside a value ({} of {n} bytes)",
            buf.len()
        ));
    }
    Ok(buf)
}

type Dec<'a, S> = &'a dyn DecodeFrom<S>;

/// Skip the items of a sequence of undefined length, up to and including its
/// delimiter.
fn skip_sequence<S: BufRead>(
    src: &mut S,
    dec: Dec<'_, S>,
    implicit: Dec<'_, S>,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("sequences nested deeper than {MAX_DEPTH} levels"));
    }
    loop {
        let item = dec
            .decode_item_header(src)
            .map_err(|e| format!("bad sequence item: {e}"))?;
        match item {
            SequenceItemHeader::Item { len } => match len.get() {
                Some(n) => skip(src, n)?,
                None => skip_item(src, dec, implicit, depth)?,
            },
            SequenceItemHeader::SequenceDelimiter => return Ok(()),
            SequenceItemHeader::ItemDelimiter => {
                return Err("item delimiter outside an item".into());
            }
        }
    }
}

/// Skip the elements of an item of undefined length, up to and including
/// its delimiter.
fn skip_item<S: BufRead>(
    src: &mut S,
    dec: Dec<'_, S>,
    implicit: Dec<'_, S>,
    depth: usize,
) -> Result<(), String> {
    loop {
        let (h, _) = dec
            .decode_header(src)
            .map_err(|e| format!("bad element in sequence item: {e}"))?;
        if h.tag() == ITEM_DELIMITER {
            return Ok(());
        }
        if h.tag() == SEQUENCE_DELIMITER {
            return Err("sequence delimiter inside an item".into());
        }
        match h.length().get() {
            Some(n) => skip(src, n)?,
            // An undefined length is a sequence; UN of undefined length
            // holds an implicit VR little endian sequence (PS3.5 §6.2.2).
            None if h.vr() == VR::UN => skip_sequence(src, implicit, implicit, depth + 1)?,
            None => skip_sequence(src, dec, implicit, depth + 1)?,
        }
    }
}

/// A reader that counts what was read through it.
struct Counted<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Where the top-level Pixel Data value of a data set ends (counted from
/// the data set's start), if `head` holds the element's header and the
/// length is defined. A sender that announced it owes at least that much.
pub fn pixel_data_end(head: &[u8], ts_uid: &str) -> Option<u64> {
    static PLAN: std::sync::OnceLock<HeaderPlan> = std::sync::OnceLock::new();
    let plan = PLAN.get_or_init(|| HeaderPlan::new([PIXEL_DATA], Vec::new()));
    read_header(head, ts_uid, plan).ok()?.pixel_data_end
}

fn transfer_syntax(ts_uid: &str) -> Result<&'static TransferSyntax, HeaderError> {
    TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| HeaderError::UnknownTransferSyntax(ts_uid.to_string()))
}

/// Read the values of the plan's tags from a data set encoded in `ts_uid`,
/// held in memory (walked in place, unless it is deflated).
pub fn read_header(bytes: &[u8], ts_uid: &str, plan: &HeaderPlan) -> Result<Header, HeaderError> {
    let ts = transfer_syntax(ts_uid)?;
    if !matches!(ts.codec(), Codec::None | Codec::EncapsulatedPixelData(..)) {
        return read_header_from(bytes, ts_uid, plan);
    }
    let decoder = ts
        .decoder_for::<&[u8]>()
        .ok_or_else(|| HeaderError::UnknownTransferSyntax(ts_uid.to_string()))?;
    let total = bytes.len() as u64;
    let mut src = bytes;
    Ok(scan(
        &mut src,
        &|rest: &&[u8]| total - rest.len() as u64,
        decoder.as_ref(),
        ts_uid,
        ts,
        plan,
    ))
}

/// Read the values of the plan's tags from a data set encoded in `ts_uid`,
/// read from `source` (through a buffer of its own).
pub fn read_header_from<R: Read>(
    source: R,
    ts_uid: &str,
    plan: &HeaderPlan,
) -> Result<Header, HeaderError> {
    let ts = transfer_syntax(ts_uid)?;
    let consumed = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let counted = Counted {
        inner: source,
        count: consumed.clone(),
    };
    let source: Box<dyn Read> = match ts.codec() {
        Codec::Dataset(Some(adapter)) => adapter.adapt_reader(Box::new(counted)),
        Codec::Dataset(None) => return Err(HeaderError::UnknownTransferSyntax(ts_uid.to_string())),
        _ => Box::new(counted),
    };
    let mut src = BufReader::with_capacity(16 * 1024, source);
    let decoder = ts
        .decoder_for::<BufReader<Box<dyn Read>>>()
        .ok_or_else(|| HeaderError::UnknownTransferSyntax(ts_uid.to_string()))?;
    Ok(scan(
        &mut src,
        &|src: &BufReader<Box<dyn Read>>| consumed.get().saturating_sub(src.buffer().len() as u64),
        decoder.as_ref(),
        ts_uid,
        ts,
        plan,
    ))
}

/// The walk itself; `position` tells how far into the data set the source
/// is (for where Pixel Data ends).
fn scan<S: BufRead>(
    src: &mut S,
    position: &dyn Fn(&S) -> u64,
    decoder: Dec<'_, S>,
    ts_uid: &str,
    ts: &TransferSyntax,
    plan: &HeaderPlan,
) -> Header {
    let deflated = matches!(ts.codec(), Codec::Dataset(Some(_)));
    let implicit = ImplicitVRLittleEndianDecoder::default();
    let big_endian = ts.endianness() == Endianness::Big;
    // Implicit VR Little Endian is the only implicit VR transfer syntax.
    let explicit_vr = ts_uid.trim_end_matches('\0') != "1.2.840.10008.1.2";

    let mut header = Header {
        private_tags: vec![None; plan.private.len()],
        ..Header::default()
    };
    let mut charset = Charset::default();
    let mut resolved: Vec<Tag> = Vec::new();
    loop {
        match src.fill_buf() {
            Ok([]) => break,
            Ok(_) => {}
            Err(e) => {
                header.error = Some(e.to_string());
                break;
            }
        }
        let h = match decoder.decode_header(src) {
            Ok((h, _)) => h,
            Err(e) => {
                header.error = Some(e.to_string());
                break;
            }
        };
        let tag = h.tag();
        if tag > plan.stop || tag >= PIXEL_DATA_START {
            if tag == PIXEL_DATA && !deflated {
                let at = position(src);
                header.pixel_data_end = h.length().get().map(|n| at + u64::from(n));
            }
            header.complete = true;
            break;
        }
        let step = match h.length().get() {
            None if h.vr() == VR::UN && explicit_vr => skip_sequence(src, &implicit, &implicit, 1),
            None => skip_sequence(src, decoder, &implicit, 1),
            Some(n) => {
                let wanted = plan.fixed.binary_search(&tag).is_ok() || resolved.contains(&tag);
                let creator = plan.is_creator_of_interest(tag);
                if h.vr() == VR::SQ || !(wanted || creator) {
                    skip(src, n)
                } else if n > MAX_VALUE_LEN {
                    header.warn(|| {
                        format!(
                            "value of {} is {n} bytes long, over the {MAX_VALUE_LEN}-byte \
                             extraction limit: not extracted",
                            tag_str(tag)
                        )
                    });
                    skip(src, n)
                } else {
                    with_value(src, n, |raw| {
                        if creator {
                            let name = charset.decode(raw).text;
                            let name = name.trim_matches([' ', '\0']);
                            for (i, p) in plan.private.iter().enumerate() {
                                if p.group == tag.group() && p.creator == name {
                                    // (gggg,00xx) reserves (gggg,xx00-xxFF)
                                    let t = Tag(
                                        tag.group(),
                                        (tag.element() << 8) | u16::from(p.element),
                                    );
                                    if let Some(slot) = header.private_tags.get_mut(i) {
                                        if slot.is_none() {
                                            *slot = Some(t);
                                            resolved.push(t);
                                        }
                                    }
                                }
                            }
                        }
                        if wanted {
                            let value = format_value(h.vr(), raw, big_endian, &charset);
                            if tag == SPECIFIC_CHARACTER_SET {
                                let (cs, warning) =
                                    Charset::from_specific_character_set(&value.text);
                                charset = cs;
                                if let Some(w) = warning {
                                    header.warn(|| w);
                                }
                            } else if value.lossy {
                                header.warn(|| {
                                    format!(
                                        "value of {} could not be decoded exactly with {}; \
                                         undecodable bytes were replaced",
                                        tag_str(tag),
                                        charset.describe()
                                    )
                                });
                            }
                            header.set(tag, value.text);
                        }
                    })
                }
            }
        };
        if let Err(e) = step {
            header.error = Some(e);
            break;
        }
        if tag >= plan.stop {
            header.complete = true;
            break;
        }
    }
    header
}

/// Split on `\`, trim each value, join again (a single value is trimmed in
/// place: no allocation).
fn multi(mut text: String, trim_leading: bool) -> String {
    if !text.contains('\\') {
        let end = text.trim_end_matches([' ', '\0']).len();
        text.truncate(end);
        if trim_leading {
            let start = text.len() - text.trim_start_matches(' ').len();
            text.drain(..start);
        }
        return text;
    }
    text.split('\\')
        .map(|v| {
            let v = v.trim_end_matches([' ', '\0']);
            if trim_leading {
                v.trim_start_matches(' ')
            } else {
                v
            }
        })
        .collect::<Vec<_>>()
        .join("\\")
}

fn numbers<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> String) -> String {
    raw.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect::<Vec<_>>()
        .join("\\")
}

fn hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text that a person would read: no control characters but whitespace.
fn is_text(d: &Decoded) -> bool {
    !d.lossy
        && d.text
            .trim_end_matches(['\0', ' '])
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\t' | '\r' | '\n' | '\u{0C}'))
}

/// A value as the string events carry.
pub fn format_value(vr: VR, raw: &[u8], big_endian: bool, charset: &Charset) -> Decoded {
    macro_rules! num {
        ($t:ty, $n:literal) => {
            numbers::<$n>(raw, |b| {
                if big_endian {
                    <$t>::from_be_bytes(b).to_string()
                } else {
                    <$t>::from_le_bytes(b).to_string()
                }
            })
        };
    }
    macro_rules! float {
        ($t:ty, $n:literal) => {
            numbers::<$n>(raw, |b| {
                let v = if big_endian {
                    <$t>::from_be_bytes(b)
                } else {
                    <$t>::from_le_bytes(b)
                };
                format!("{v:?}")
            })
        };
    }
    let plain = |text: String| Decoded { text, lossy: false };
    match vr {
        VR::AE | VR::AS | VR::CS | VR::DA | VR::DS | VR::DT | VR::IS | VR::TM => {
            let d = decode_default(raw);
            Decoded {
                text: multi(d.text, true),
                lossy: d.lossy,
            }
        }
        VR::UI => {
            let d = decode_default(raw);
            Decoded {
                text: multi(d.text, false),
                lossy: d.lossy,
            }
        }
        VR::UR => {
            let d = decode_default(raw);
            Decoded {
                text: d.text.trim_end_matches([' ', '\0']).to_string(),
                lossy: d.lossy,
            }
        }
        VR::SH | VR::LO | VR::UC => {
            let d = charset.decode(raw);
            Decoded {
                text: multi(d.text, vr != VR::UC),
                lossy: d.lossy,
            }
        }
        VR::PN => {
            // Empty trailing component groups are insignificant (PS3.5 §6.2.1).
            let d = charset.decode(raw);
            let text = multi(d.text, false)
                .split('\\')
                .map(|v| v.trim_end_matches('='))
                .collect::<Vec<_>>()
                .join("\\");
            Decoded {
                text,
                lossy: d.lossy,
            }
        }
        VR::LT | VR::ST | VR::UT => {
            let d = charset.decode(raw);
            Decoded {
                text: d.text.trim_end_matches([' ', '\0']).to_string(),
                lossy: d.lossy,
            }
        }
        VR::US => plain(num!(u16, 2)),
        VR::SS => plain(num!(i16, 2)),
        VR::UL => plain(num!(u32, 4)),
        VR::SL => plain(num!(i32, 4)),
        VR::UV => plain(num!(u64, 8)),
        VR::SV => plain(num!(i64, 8)),
        VR::FL => plain(float!(f32, 4)),
        VR::FD => plain(float!(f64, 8)),
        VR::AT => plain(numbers::<4>(raw, |b| {
            let (g, e) = if big_endian {
                (
                    u16::from_be_bytes([b[0], b[1]]),
                    u16::from_be_bytes([b[2], b[3]]),
                )
            } else {
                (
                    u16::from_le_bytes([b[0], b[1]]),
                    u16::from_le_bytes([b[2], b[3]]),
                )
            };
            format!("({g:04X},{e:04X})")
        })),
        VR::UN | VR::OB => {
            // Private attributes read in implicit VR are UN; most are text.
            let d = charset.decode(raw);
            if !raw.is_empty() && is_text(&d) {
                plain(multi(d.text, false))
            } else {
                plain(hex(raw))
            }
        }
        VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::SQ => plain(hex(raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Explicit VR little endian element.
    /// `read_header` (in place) and `read_header_from` (through a reader)
    /// must agree on every input; the tests go through both.
    fn read_both(bytes: &[u8], ts: &str, plan: &HeaderPlan) -> Result<Header, HeaderError> {
        let in_place = read_header(bytes, ts, plan);
        let streamed = read_header_from(bytes, ts, plan);
        assert_eq!(format!("{in_place:?}"), format!("{streamed:?}"), "{ts}");
        in_place
    }

    fn ele(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&group.to_le_bytes());
        v.extend_from_slice(&elem.to_le_bytes());
        v.extend_from_slice(vr);
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"UC") {
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        v.extend_from_slice(value);
        v
    }

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

    fn base() -> Vec<u8> {
        let mut ds = Vec::new();
        ds.extend(ele(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0"));
        ds.extend(ele(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
        ds
    }

    #[test]
    fn reads_uids_and_stops_early() {
        let mut ds = base();
        ds.extend(ele(0x0010, 0x0010, b"PN", b"DOE^JOHN"));
        ds.extend(ele(0x0020, 0x000D, b"UI", b"1.2.3\0"));
        ds.extend(ele(0x0020, 0x000E, b"UI", b"1.2.3.5\0"));
        // garbage after the last wanted tag is never read
        ds.extend_from_slice(&[0x28, 0x00, 0x10, 0x00, b'X', b'X', 0xff, 0xff]);
        let h = read_both(&ds[..], EXPLICIT_LE, &HeaderPlan::identifying()).unwrap();
        assert_eq!(h.get(SOP_INSTANCE_UID), Some("1.2.3.4"));
        assert_eq!(h.get(STUDY_INSTANCE_UID), Some("1.2.3"));
        assert_eq!(h.get(SERIES_INSTANCE_UID), Some("1.2.3.5"));
        assert_eq!(h.get(Tag(0x0010, 0x0010)), None);
        assert!(h.error.is_none());
        assert!(h.complete);
        // a head that ends before the last wanted tag is not complete,
        // whether it ends between elements or inside one
        let end_of_study = ds.len() - 8 - ele(0x0020, 0x000E, b"UI", b"1.2.3.5\0").len();
        for cut in [end_of_study, end_of_study + 3] {
            let h = read_both(&ds[..cut], EXPLICIT_LE, &HeaderPlan::identifying()).unwrap();
            assert!(!h.complete, "cut at {cut}");
        }
    }

    /// A wanted value longer than the reader's buffer is read whole on both
    /// paths (in place, and copied out of the 16 KiB buffer).
    #[test]
    fn values_longer_than_the_read_buffer() {
        let text: Vec<u8> = (0..40_000).map(|i| b'a' + (i % 26) as u8).collect();
        let mut ds = base();
        ds.extend(ele(0x0010, 0x4000, b"UT", &text));
        ds.extend(ele(0x0020, 0x000D, b"UI", b"1.2.3\0"));
        let plan = HeaderPlan::new([Tag(0x0010, 0x4000)], Vec::new());
        let h = read_both(&ds[..], EXPLICIT_LE, &plan).unwrap();
        assert_eq!(h.get(Tag(0x0010, 0x4000)).map(str::len), Some(40_000));
        assert_eq!(h.get(STUDY_INSTANCE_UID), Some("1.2.3"));
        // cut inside the long value: both paths stop at the same error
        let cut = read_both(&ds[..20_000], EXPLICIT_LE, &plan).unwrap();
        assert!(cut.error.is_some());
    }

    #[test]
    fn values_are_decoded_trimmed_and_joined() {
        let mut ds = Vec::new();
        ds.extend(ele(0x0008, 0x0005, b"CS", b"ISO_IR 100"));
        ds.extend(base());
        ds.extend(ele(0x0008, 0x0060, b"CS", b"CT"));
        ds.extend(ele(0x0010, 0x0010, b"PN", b"Buc^J\xe9r\xf4me "));
        ds.extend(ele(0x0010, 0x1000, b"LO", b"A1\\ B2 "));
        ds.extend(ele(0x0018, 0x0050, b"DS", b" 5.0"));
        ds.extend(ele(0x0028, 0x0010, b"US", &512u16.to_le_bytes()));
        let mut fl = Vec::new();
        fl.extend(0.5f32.to_le_bytes());
        fl.extend((-2.0f32).to_le_bytes());
        ds.extend(ele(0x0018, 0x9089, b"FD", &[]));
        ds.extend(ele(0x0028, 0x0030, b"FL", &fl));
        ds.extend(ele(0x0028, 0x0100, b"US", &16u16.to_le_bytes()));
        let plan = HeaderPlan::new(
            [
                Tag(0x0008, 0x0060),
                Tag(0x0010, 0x0010),
                Tag(0x0010, 0x1000),
                Tag(0x0018, 0x0050),
                Tag(0x0018, 0x9089),
                Tag(0x0028, 0x0010),
                Tag(0x0028, 0x0030),
            ],
            Vec::new(),
        );
        let h = read_both(&ds[..], EXPLICIT_LE, &plan).unwrap();
        assert_eq!(h.get(Tag(0x0008, 0x0060)), Some("CT"));
        assert_eq!(h.get(Tag(0x0010, 0x0010)), Some("Buc^Jérôme"));
        assert_eq!(h.get(Tag(0x0010, 0x1000)), Some("A1\\B2"));
        assert_eq!(h.get(Tag(0x0018, 0x0050)), Some("5.0"));
        assert_eq!(h.get(Tag(0x0018, 0x9089)), Some(""));
        assert_eq!(h.get(Tag(0x0028, 0x0010)), Some("512"));
        assert_eq!(h.get(Tag(0x0028, 0x0030)), Some("0.5\\-2.0"));
        assert!(h.warnings.is_empty(), "{:?}", h.warnings);
    }

    #[test]
    fn single_values_are_trimmed_as_multiple_ones() {
        for (text, leading) in [
            (" 1.5 \0", true),
            (" 1.5 \0", false),
            ("1.2.3\0", false),
            ("  ", true),
            ("", true),
            (" a \\ b ", true),
        ] {
            let joined = text
                .split('\\')
                .map(|v| v.trim_end_matches([' ', '\0']))
                .map(|v| {
                    if leading {
                        v.trim_start_matches(' ')
                    } else {
                        v
                    }
                })
                .collect::<Vec<_>>()
                .join("\\");
            assert_eq!(multi(text.to_string(), leading), joined, "{text:?}");
        }
    }

    #[test]
    fn sequences_and_big_values_are_skipped() {
        let mut ds = base();
        // undefined-length sequence with an undefined-length item holding a
        // nested sequence, then a 200 kB private OB nobody asked for
        let mut sq = Vec::new();
        sq.extend_from_slice(&[
            0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        sq.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]);
        sq.extend(ele(0x0008, 0x1150, b"UI", b"1.2\0"));
        sq.extend_from_slice(&[
            0x08, 0x00, 0x99, 0x11, b'S', b'Q', 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        sq.extend_from_slice(&[0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
        sq.extend_from_slice(&[0xfe, 0xff, 0x0d, 0xe0, 0, 0, 0, 0]);
        sq.extend_from_slice(&[0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
        ds.extend(sq);
        ds.extend(ele(0x0009, 0x0010, b"LO", b"ACME 1.0"));
        ds.extend(ele(0x0009, 0x1001, b"LO", b"private text"));
        ds.extend(ele(0x0009, 0x1002, b"OB", &vec![0u8; 200_000]));
        ds.extend(ele(0x0010, 0x0010, b"PN", b"X"));
        ds.extend(ele(0x0020, 0x000D, b"UI", b"1.2.3\0"));
        ds.extend(ele(0x0020, 0x000E, b"UI", b"1.2.3.5\0"));
        let plan = HeaderPlan::new(
            [Tag(0x0009, 0x1002), Tag(0x0010, 0x0010)],
            vec![PrivateRequest {
                group: 0x0009,
                creator: "ACME 1.0".into(),
                element: 0x01,
            }],
        );
        let h = read_both(&ds[..], EXPLICIT_LE, &plan).unwrap();
        assert!(h.error.is_none(), "{:?}", h.error);
        assert_eq!(h.get(Tag(0x0010, 0x0010)), Some("X"));
        assert_eq!(h.get(SERIES_INSTANCE_UID), Some("1.2.3.5"));
        assert_eq!(h.private_tags, vec![Some(Tag(0x0009, 0x1001))]);
        assert_eq!(h.get(Tag(0x0009, 0x1001)), Some("private text"));
        // over the limit: skipped with a warning
        assert_eq!(h.get(Tag(0x0009, 0x1002)), None);
        assert!(h.warnings.iter().any(|w| w.contains("(0009,1002)")));
    }

    #[test]
    fn never_reads_pixel_data() {
        let mut ds = base();
        ds.extend(ele(0x0020, 0x000D, b"UI", b"1.2.3\0"));
        ds.extend(ele(0x0020, 0x000E, b"UI", b"1.2.3.5\0"));
        // pixel data claiming 4 GB, then nothing: must not be touched
        ds.extend_from_slice(&[
            0xe0, 0x7f, 0x10, 0x00, b'O', b'W', 0, 0, 0xfe, 0xff, 0xff, 0xff,
        ]);
        let plan = HeaderPlan::new([Tag(0x7FE0, 0x0010), Tag(0x0028, 0x0010)], Vec::new());
        let h = read_both(&ds[..], EXPLICIT_LE, &plan).unwrap();
        assert!(h.error.is_none(), "{:?}", h.error);
        assert_eq!(h.get(SERIES_INSTANCE_UID), Some("1.2.3.5"));
    }

    #[test]
    fn implicit_and_big_endian() {
        // implicit VR LE: private tag becomes UN and is read as text
        let mut ds = Vec::new();
        for (g, e, v) in [
            (0x0008u16, 0x0018u16, &b"1.2.3.4\0"[..]),
            (0x0009, 0x1001, b"hello "),
            (0x0028, 0x0010, &[0x00, 0x02]),
        ] {
            ds.extend_from_slice(&g.to_le_bytes());
            ds.extend_from_slice(&e.to_le_bytes());
            ds.extend_from_slice(&(v.len() as u32).to_le_bytes());
            ds.extend_from_slice(v);
        }
        let plan = HeaderPlan::new([Tag(0x0009, 0x1001), Tag(0x0028, 0x0010)], Vec::new());
        let h = read_both(&ds[..], "1.2.840.10008.1.2", &plan).unwrap();
        assert_eq!(h.get(SOP_INSTANCE_UID), Some("1.2.3.4"));
        assert_eq!(h.get(Tag(0x0009, 0x1001)), Some("hello"));
        assert_eq!(h.get(Tag(0x0028, 0x0010)), Some("512"));

        let mut be = Vec::new();
        be.extend_from_slice(&[0x00, 0x28, 0x00, 0x10, b'U', b'S', 0x00, 0x02, 0x02, 0x00]);
        let plan = HeaderPlan::new([Tag(0x0028, 0x0010)], Vec::new());
        let h = read_both(&be[..], "1.2.840.10008.1.2.2", &plan).unwrap();
        assert_eq!(h.get(Tag(0x0028, 0x0010)), Some("512"));
    }

    #[test]
    fn binary_values_are_hex() {
        let cs = Charset::default();
        assert_eq!(
            format_value(VR::OB, &[0, 1, 0xab], false, &cs).text,
            "0001ab"
        );
        assert_eq!(format_value(VR::UN, b"ABC\0", false, &cs).text, "ABC");
        assert_eq!(
            format_value(VR::AT, &[0x10, 0x00, 0x20, 0x00], false, &cs).text,
            "(0010,0020)"
        );
        assert_eq!(format_value(VR::SS, &[0xff, 0xff], false, &cs).text, "-1");
    }

    #[test]
    fn length_claiming_4_gib_is_not_allocated() {
        // Regression: found by the header fuzz target. A wanted element whose
        // length field claims ~4 GiB made the old dicom-parser based reader
        // reserve and zero that much memory before failing on EOF.
        let mut ds = Vec::new();
        ds.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, 0x08, 0x00, 0x00, 0x00]);
        ds.extend_from_slice(b"1.2.3.4\0");
        ds.extend_from_slice(&[0x20, 0x00, 0x0d, 0x00, 0x04, 0xff, 0xff, 0xff]);
        ds.extend_from_slice(&[0xff; 48]);
        let plan = HeaderPlan::new([], Vec::new());
        let started = std::time::Instant::now();
        let h = read_both(&ds[..], "1.2.840.10008.1.2", &plan);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        if let Ok(h) = h {
            assert_eq!(h.get(SOP_INSTANCE_UID), Some("1.2.3.4"));
            assert_eq!(h.get(STUDY_INSTANCE_UID), None);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let plan = HeaderPlan::new(
            [Tag(0x0010, 0x0010)],
            vec![PrivateRequest {
                group: 0x0009,
                creator: "X".into(),
                element: 1,
            }],
        );
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = read_both(&junk[..], "1.2.840.10008.1.2", &plan);
            let _ = read_both(&junk[..], EXPLICIT_LE, &plan);
            let _ = read_both(&junk[..], "1.2.840.10008.1.2.2", &plan);
            let _ = read_both(&junk[..], "1.2.840.10008.1.2.1.99", &plan);
        }
        // deeply nested undefined-length sequences end in an error
        let mut deep = Vec::new();
        for _ in 0..200 {
            deep.extend_from_slice(&[
                0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xff, 0xff, 0xff, 0xff,
            ]);
            deep.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]);
        }
        let h = read_both(&deep[..], EXPLICIT_LE, &plan).unwrap();
        assert!(h.error.is_some());
        assert!(read_both(&[][..], "1.2.3", &plan).is_err());
    }

    /// The end of a defined-length Pixel Data value is found past
    /// sequences of undefined length; an undefined length, a head that ends
    /// before the element, or a deflated data set give nothing.
    #[test]
    fn pixel_data_end_is_where_its_value_ends() {
        let mut ds = base();
        ds.extend_from_slice(&[
            0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        ds.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]);
        ds.extend(ele(0x0008, 0x1150, b"UI", b"1.2\0"));
        ds.extend_from_slice(&[0xfe, 0xff, 0x0d, 0xe0, 0, 0, 0, 0]);
        ds.extend_from_slice(&[0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
        ds.extend(ele(0x0028, 0x0010, b"US", &512u16.to_le_bytes()));
        let before = ds.len();
        // only the element header and a few bytes of the value are in
        let mut head = ds.clone();
        head.extend_from_slice(&[0xe0, 0x7f, 0x10, 0x00, b'O', b'W', 0, 0]);
        head.extend_from_slice(&524_288u32.to_le_bytes());
        head.extend_from_slice(&[0u8; 100]);
        let end = pixel_data_end(&head, EXPLICIT_LE);
        assert_eq!(end, Some(before as u64 + 12 + 524_288));
        let plan = HeaderPlan::new([PIXEL_DATA], Vec::new());
        assert_eq!(
            read_both(&head, EXPLICIT_LE, &plan).unwrap().pixel_data_end,
            end
        );
        assert_eq!(pixel_data_end(&head[..before + 6], EXPLICIT_LE), None);
        assert_eq!(pixel_data_end(&head, "1.2.840.10008.1.2.1.99"), None);
        // encapsulated: undefined length
        let mut encapsulated = ds.clone();
        encapsulated.extend_from_slice(&[0xe0, 0x7f, 0x10, 0x00, b'O', b'B', 0, 0]);
        encapsulated.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            pixel_data_end(&encapsulated, "1.2.840.10008.1.2.4.50"),
            None
        );
        // implicit VR little endian
        let mut implicit = Vec::new();
        implicit.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, 8, 0, 0, 0]);
        implicit.extend_from_slice(b"1.2.3.4\0");
        implicit.extend_from_slice(&[0xe0, 0x7f, 0x10, 0x00, 0x00, 0x10, 0, 0]);
        assert_eq!(
            pixel_data_end(&implicit, "1.2.840.10008.1.2"),
            Some(16 + 8 + 4096)
        );
    }
}
