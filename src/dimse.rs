//! DIMSE command sets (PS3.7): decoding requests and encoding responses.
//!
//! Command sets are always Implicit VR Little Endian and small, so they are
//! handled with a tiny dedicated codec instead of a general data set parser.

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
pub const C_CANCEL_RQ: u16 = 0x0FFF;

/// Command Data Set Type value meaning "no data set follows".
pub const NO_DATASET: u16 = 0x0101;

/// Largest command set accepted (real ones are a few hundred bytes).
pub const MAX_COMMAND_LEN: usize = 64 * 1024;

/// DIMSE status codes used by this SCP.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Refused: out of resources.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATASET_MISMATCH: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command set is truncated")]
    Truncated,
    #[error("command set lacks {0}")]
    Missing(&'static str),
    #[error("command set is larger than {MAX_COMMAND_LEN} bytes")]
    TooLarge,
}

/// The fields of a request command set this SCP acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Command {
    pub command_field: u16,
    pub message_id: u16,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub has_dataset: bool,
}

fn uid_value(value: &[u8]) -> String {
    let trim = |s: &str| s.trim_end_matches(['\0', ' ']).trim_start().to_string();
    match std::str::from_utf8(value) {
        Ok(text) => trim(text),
        Err(_) => trim(&String::from_utf8_lossy(value)),
    }
}

fn us_value(value: &[u8]) -> Option<u16> {
    value.first_chunk::<2>().map(|b| u16::from_le_bytes(*b))
}

/// Decode an Implicit VR Little Endian command set.
pub fn parse_command(bytes: &[u8]) -> Result<Command, CommandError> {
    if bytes.len() > MAX_COMMAND_LEN {
        return Err(CommandError::TooLarge);
    }
    let mut cmd = Command::default();
    let mut field = None;
    let mut message_id = None;
    let mut dataset_type = None;
    let mut rest = bytes;
    while !rest.is_empty() {
        let (head, tail) = rest
            .split_first_chunk::<8>()
            .ok_or(CommandError::Truncated)?;
        let group = u16::from_le_bytes([head[0], head[1]]);
        let element = u16::from_le_bytes([head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if len > tail.len() {
            return Err(CommandError::Truncated);
        }
        let (value, after) = tail.split_at(len);
        rest = after;
        if group != 0x0000 {
            continue;
        }
        match element {
            0x0002 => cmd.affected_sop_class_uid = Some(uid_value(value)),
            0x0100 => field = us_value(value),
            0x0110 => message_id = us_value(value),
            0x0800 => dataset_type = us_value(value),
            0x1000 => cmd.affected_sop_instance_uid = Some(uid_value(value)),
            _ => {}
        }
    }
    cmd.command_field = field.ok_or(CommandError::Missing("Command Field (0000,0100)"))?;
    // C-CANCEL carries MessageIDBeingRespondedTo instead of MessageID.
    cmd.message_id = match message_id {
        Some(id) => id,
        None if cmd.command_field == C_CANCEL_RQ => 0,
        None => return Err(CommandError::Missing("Message ID (0000,0110)")),
    };
    cmd.has_dataset = dataset_type
        .ok_or(CommandError::Missing("Command Data Set Type (0000,0800)"))?
        != NO_DATASET;
    Ok(cmd)
}

/// Builder for an Implicit VR Little Endian command set with its group length.
struct CommandWriter {
    body: Vec<u8>,
}

impl CommandWriter {
    fn new() -> Self {
        CommandWriter {
            body: Vec::with_capacity(192),
        }
    }

    fn element(&mut self, element: u16, value: &[u8], pad: u8) -> &mut Self {
        let padded = value.len() + value.len() % 2;
        self.body.extend_from_slice(&0u16.to_le_bytes());
        self.body.extend_from_slice(&element.to_le_bytes());
        self.body.extend_from_slice(&(padded as u32).to_le_bytes());
        self.body.extend_from_slice(value);
        if value.len() % 2 == 1 {
            self.body.push(pad);
        }
        self
    }

    fn uid(&mut self, element: u16, uid: &str) -> &mut Self {
        self.element(element, uid.as_bytes(), 0)
    }

    fn us(&mut self, element: u16, v: u16) -> &mut Self {
        self.element(element, &v.to_le_bytes(), 0)
    }

    fn text(&mut self, element: u16, s: &str) -> &mut Self {
        self.element(element, s.as_bytes(), b' ')
    }

    fn finish(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 12);
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// Encode a C-STORE-RSP (or any response that echoes the affected SOP).
pub fn store_response(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    status: u16,
    error_comment: Option<&str>,
) -> Vec<u8> {
    let mut w = CommandWriter::new();
    w.uid(0x0002, sop_class_uid)
        .us(0x0100, C_STORE_RSP)
        .us(0x0120, message_id)
        .us(0x0800, NO_DATASET)
        .us(0x0900, status);
    if let Some(comment) = error_comment {
        // Error Comment is LO: at most 64 characters.
        let clipped: String = comment.chars().filter(|c| c.is_ascii()).take(64).collect();
        w.text(0x0902, &clipped);
    }
    w.uid(0x1000, sop_instance_uid);
    w.finish()
}

/// Encode a C-ECHO-RSP answering the given request.
pub fn echo_response(message_id: u16, sop_class_uid: &str) -> Vec<u8> {
    let mut w = CommandWriter::new();
    w.uid(0x0002, sop_class_uid)
        .us(0x0100, C_ECHO_RSP)
        .us(0x0120, message_id)
        .us(0x0800, NO_DATASET)
        .us(0x0900, status::SUCCESS);
    w.finish()
}

/// Encode a C-ECHO-RQ (used by tests, fuzzing seeds and benchmarks).
pub fn echo_request(message_id: u16) -> Vec<u8> {
    let mut w = CommandWriter::new();
    w.uid(0x0002, "1.2.840.10008.1.1")
        .us(0x0100, C_ECHO_RQ)
        .us(0x0110, message_id)
        .us(0x0800, NO_DATASET);
    w.finish()
}

/// Encode a C-STORE-RQ announcing a data set.
pub fn store_request(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Vec<u8> {
    let mut w = CommandWriter::new();
    w.uid(0x0002, sop_class_uid)
        .us(0x0100, C_STORE_RQ)
        .us(0x0110, message_id)
        .us(0x0700, 0)
        .us(0x0800, 0x0000)
        .uid(0x1000, sop_instance_uid);
    w.finish()
}

/// Read a US element of a command set (responses included).
pub fn command_us(bytes: &[u8], element: u16) -> Option<u16> {
    let mut rest = bytes;
    while let Some((head, tail)) = rest.split_first_chunk::<8>() {
        let group = u16::from_le_bytes([head[0], head[1]]);
        let elem = u16::from_le_bytes([head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let value = tail.get(..len)?;
        if group == 0 && elem == element {
            return us_value(value);
        }
        rest = tail.get(len..)?;
    }
    None
}

/// Encode a failure response for a request this SCP does not perform.
pub fn unsupported_response(command_field: u16, message_id: u16, sop_class_uid: &str) -> Vec<u8> {
    let mut w = CommandWriter::new();
    if !sop_class_uid.is_empty() {
        w.uid(0x0002, sop_class_uid);
    }
    w.us(0x0100, command_field | 0x8000)
        .us(0x0120, message_id)
        .us(0x0800, NO_DATASET)
        .us(0x0900, status::UNRECOGNIZED_OPERATION);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_rq(message_id: u16) -> Vec<u8> {
        store_request(message_id, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5")
    }

    #[test]
    fn parses_store_request() {
        let cmd = parse_command(&store_rq(77)).unwrap();
        assert_eq!(cmd.command_field, C_STORE_RQ);
        assert_eq!(cmd.message_id, 77);
        assert!(cmd.has_dataset);
        assert_eq!(
            cmd.affected_sop_class_uid.as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.2")
        );
        assert_eq!(cmd.affected_sop_instance_uid.as_deref(), Some("1.2.3.4.5"));
    }

    #[test]
    fn response_round_trips() {
        let rsp = store_response(9, "1.2.3", "4.5.6", status::OUT_OF_RESOURCES, Some("disk"));
        let cmd = parse_command(&rsp);
        // responses carry MessageIDBeingRespondedTo, not MessageID
        assert_eq!(cmd, Err(CommandError::Missing("Message ID (0000,0110)")));
        // group length is right
        let gl = u32::from_le_bytes(rsp[8..12].try_into().unwrap()) as usize;
        assert_eq!(gl, rsp.len() - 12);
        let echo = echo_response(4242, "1.2.840.10008.1.1");
        assert!(echo.windows(2).any(|w| w == 4242u16.to_le_bytes()));
    }

    #[test]
    fn truncated_and_garbage_commands_fail_cleanly() {
        let rq = store_rq(1);
        for cut in 0..rq.len() {
            let _ = parse_command(&rq[..cut]);
        }
        assert!(parse_command(&[0xff; 7]).is_err());
        assert!(parse_command(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
