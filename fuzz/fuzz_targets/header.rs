//! The header reader (UIDs and extracted tags before pixel data) on
//! arbitrary data sets in every transfer syntax family, private creator
//! resolution and character set decoding included.
#![no_main]

use dicom_core::Tag;
use dicom_storescp::header::{read_header, read_header_from, HeaderPlan, PrivateRequest};
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
    let plan = HeaderPlan::new(
        [Tag(0x0010, 0x0010), Tag(0x0009, 0x1001), Tag(0x0028, 0x0010)],
        vec![PrivateRequest {
            group: 0x0009,
            creator: "ACME 1.0".into(),
            element: 0x02,
        }],
    );
    // walked in place and through a reader: the same result
    let in_place = read_header(rest, ts, &plan);
    let streamed = read_header_from(rest, ts, &plan);
    assert_eq!(format!("{in_place:?}"), format!("{streamed:?}"));
});
