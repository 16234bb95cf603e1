//! P-DATA-TF bodies and command sets.
#![no_main]

use dicom_storescp::{dimse, pdu};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut command = Vec::new();
    for pdv in pdu::pdvs(data) {
        match pdv {
            Ok(p) if p.is_command => command.extend_from_slice(p.data),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = dimse::parse_command(&command);
    let _ = dimse::parse_command(data);
    let _ = dimse::command_us(data, 0x0100);
});
