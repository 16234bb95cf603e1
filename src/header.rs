//! Reading the few top-level attributes the receiver needs (UIDs for the
//! storage path, tags for events) from the head of a received data set.
//!
//! The data set is read as a token stream and reading stops at the first
//! top-level element past the largest wanted tag, so pixel data and anything
//! after the wanted attributes is never read, let alone held in memory.

use std::collections::BTreeMap;
use std::io::Read;

use dicom_core::Tag;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_parser::dataset::{DataSetReader, DataToken};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const SPECIFIC_CHARACTER_SET: Tag = Tag(0x0008, 0x0005);
pub const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
pub const SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x0018);
pub const STUDY_INSTANCE_UID: Tag = Tag(0x0020, 0x000D);
pub const SERIES_INSTANCE_UID: Tag = Tag(0x0020, 0x000E);
pub const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

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

/// Top-level values read from a data set, as trimmed strings.
#[derive(Debug, Default, Clone)]
pub struct Header {
    pub values: BTreeMap<Tag, String>,
    /// A parse error met after some values were read (the data set may be
    /// truncated or malformed past that point).
    pub error: Option<String>,
}

impl Header {
    pub fn get(&self, tag: Tag) -> Option<&str> {
        self.values.get(&tag).map(String::as_str)
    }
}

fn trim_value(s: &str) -> String {
    s.trim_end_matches(['\0', ' ']).to_string()
}

/// Read the top-level values of `wanted` tags from a data set encoded in
/// `ts_uid`, stopping after the largest of them.
pub fn read_header<R: Read>(
    source: R,
    ts_uid: &str,
    wanted: &[Tag],
) -> Result<Header, HeaderError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| HeaderError::UnknownTransferSyntax(ts_uid.to_string()))?;
    let stop = wanted
        .iter()
        .copied()
        .max()
        .unwrap_or(PIXEL_DATA)
        .min(PIXEL_DATA);
    let source: Box<dyn Read> = match ts.codec() {
        Codec::Dataset(Some(adapter)) => adapter.adapt_reader(Box::new(source)),
        Codec::Dataset(None) => return Err(HeaderError::UnknownTransferSyntax(ts_uid.to_string())),
        _ => Box::new(source),
    };
    let reader =
        DataSetReader::new_with_ts(source, ts).map_err(|e| HeaderError::Parse(e.to_string()))?;

    let mut header = Header::default();
    let mut depth: usize = 0;
    let mut current: Option<Tag> = None;
    for token in reader {
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                header.error = Some(e.to_string());
                break;
            }
        };
        match token {
            DataToken::ElementHeader(h) => {
                if depth == 0 {
                    if h.tag > stop {
                        break;
                    }
                    current = wanted.contains(&h.tag).then_some(h.tag);
                }
            }
            DataToken::PrimitiveValue(v) => {
                if depth == 0 {
                    if let Some(tag) = current.take() {
                        let text = v.to_str();
                        header.values.insert(tag, trim_value(&text));
                        if tag >= stop {
                            break;
                        }
                    }
                }
            }
            DataToken::SequenceStart { tag, .. } => {
                if depth == 0 && tag > stop {
                    break;
                }
                depth += 1;
            }
            DataToken::PixelSequenceStart => {
                if depth == 0 {
                    break;
                }
                depth += 1;
            }
            DataToken::SequenceEnd => depth = depth.saturating_sub(1),
            DataToken::ItemStart { .. }
            | DataToken::ItemEnd
            | DataToken::ItemValue(_)
            | DataToken::OffsetTable(_) => {}
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Explicit VR little endian element.
    fn ele(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&group.to_le_bytes());
        v.extend_from_slice(&elem.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn reads_uids_and_stops_early() {
        let mut ds = Vec::new();
        ds.extend(ele(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0"));
        ds.extend(ele(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
        ds.extend(ele(0x0010, 0x0010, b"PN", b"DOE^JOHN"));
        ds.extend(ele(0x0020, 0x000D, b"UI", b"1.2.3\0"));
        ds.extend(ele(0x0020, 0x000E, b"UI", b"1.2.3.5\0"));
        // garbage after the last wanted tag is never read
        ds.extend_from_slice(&[0x28, 0x00, 0x10, 0x00, b'X', b'X', 0xff, 0xff]);
        let h = read_header(&ds[..], "1.2.840.10008.1.2.1", &IDENTIFYING_TAGS).unwrap();
        assert_eq!(h.get(SOP_INSTANCE_UID), Some("1.2.3.4"));
        assert_eq!(h.get(STUDY_INSTANCE_UID), Some("1.2.3"));
        assert_eq!(h.get(SERIES_INSTANCE_UID), Some("1.2.3.5"));
        assert_eq!(h.get(Tag(0x0010, 0x0010)), None);
        assert!(h.error.is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = read_header(&junk[..], "1.2.840.10008.1.2", &IDENTIFYING_TAGS);
            let _ = read_header(&junk[..], "1.2.840.10008.1.2.1.99", &IDENTIFYING_TAGS);
        }
        assert!(read_header(&[][..], "1.2.3", &IDENTIFYING_TAGS).is_err());
    }
}
