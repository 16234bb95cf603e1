//! The header reader (UIDs and tags before pixel data) on arbitrary data
//! sets in every transfer syntax family.
#![no_main]

use dicom_core::Tag;
use dicom_storescp::header::{read_header, IDENTIFYING_TAGS};
use libfuzzer_sys::fuzz_target;

const SYNTAXES: [&str; 5] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let ts = SYNTAXES[usize::from(selector) % SYNTAXES.len()];
    let mut wanted = IDENTIFYING_TAGS.to_vec();
    wanted.push(Tag(0x0010, 0x0010));
    wanted.push(Tag(0x0009, 0x1001));
    let _ = read_header(rest, ts, &wanted);
});
