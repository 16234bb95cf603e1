//! Benchmark load generator for DICOM C-STORE receivers.
//!
//! Reads DICOM Part-10 files; a probe association learns the acceptor's
//! maximum PDU length; every object is pre-encoded as one buffer of P-DATA-TF
//! PDUs (the C-STORE-RQ command, then the data set in fragments that respect
//! that maximum). Then the clock starts: N associations, one thread each,
//! replay those buffers: one `write_all` per object, then a wait for its
//! C-STORE-RSP. Blocking sockets with TCP_NODELAY, no parsing or copying while
//! the clock runs. An object whose data set is larger than `--stream-above`
//! (64 MiB) is the exception: only its command is pre-encoded, and its data
//! set is read from the file into one reused buffer, between the PDU
//! headers, about 1 MiB per `write`.
//!
//! Output on stdout: `ready` once everything is encoded (with `--wait-go`,
//! the clock starts only when a line arrives on stdin), `go` when the clock
//! starts, then one JSON object with the figures. Exit status 0 only if every
//! object was answered with 0x0000.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
const IMPLEMENTATION_CLASS_UID: &str = "1.2.826.0.1.3680043.10.1363.1";
const IMPLEMENTATION_VERSION: &str = "SCPBENCH_LOADGEN";
/// Fragment size when the acceptor announces "no maximum" (0).
const UNLIMITED_FRAGMENT: usize = 4 << 20;
/// Largest PDU we accept from the peer (responses are small).
const MAX_INCOMING_PDU: usize = 1 << 20;

#[derive(Debug)]
enum Error {
    Io(String, io::Error),
    Usage(String),
    Dicom(String),
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Usage(m) => write!(f, "usage: {m}"),
            Error::Dicom(m) => write!(f, "bad DICOM file: {m}"),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io(what, e)
}

struct Options {
    host: String,
    port: u16,
    associations: usize,
    called_ae: String,
    calling_ae: String,
    timeout: Duration,
    wait_go: bool,
    stream_above: u64,
    files: Vec<PathBuf>,
}

const USAGE: &str = "loadgen --port PORT [--host HOST] [--associations N] \
[--called-ae AE] [--calling-ae AE] [--timeout SECONDS] [--wait-go] \
[--stream-above BYTES] (--list FILE | --dir DIR | FILE...)";

/// Data sets larger than this are not pre-encoded but read from their file
/// while the clock runs, about 1 MiB per `write` from one reused buffer: a
/// sender that copies a 1 GB object out of memory it has just filled is
/// slower, and makes every receiver slower, than one that copies it from a
/// buffer still in the CPU's cache (see benches/README.md).
const DEFAULT_STREAM_ABOVE: u64 = 64 << 20;

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        host: "127.0.0.1".into(),
        port: 0,
        associations: 1,
        called_ae: "STORE-SCP".into(),
        calling_ae: "LOADGEN".into(),
        timeout: Duration::from_secs(120),
        wait_go: false,
        stream_above: DEFAULT_STREAM_ABOVE,
        files: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--host" => opts.host = value("--host")?,
            "--port" => {
                opts.port = value("--port")?
                    .parse()
                    .map_err(|_| Error::Usage("--port must be a port number".into()))?
            }
            "--associations" => {
                opts.associations = value("--associations")?
                    .parse()
                    .map_err(|_| Error::Usage("--associations must be a number".into()))?
            }
            "--called-ae" => opts.called_ae = value("--called-ae")?,
            "--calling-ae" => opts.calling_ae = value("--calling-ae")?,
            "--timeout" => {
                let secs: f64 = value("--timeout")?
                    .parse()
                    .map_err(|_| Error::Usage("--timeout must be a number".into()))?;
                if !(secs > 0.0 && secs < 1e6) {
                    return Err(Error::Usage("--timeout must be positive".into()));
                }
                opts.timeout = Duration::from_secs_f64(secs);
            }
            "--list" => {
                let list = value("--list")?;
                let text = std::fs::read_to_string(&list).map_err(io_err(list))?;
                opts.files.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(PathBuf::from),
                );
            }
            "--dir" => {
                let dir = PathBuf::from(value("--dir")?);
                collect_files(&dir, &mut opts.files)?;
            }
            "--wait-go" => opts.wait_go = true,
            "--stream-above" => {
                opts.stream_above = value("--stream-above")?
                    .parse()
                    .map_err(|_| Error::Usage("--stream-above must be a byte count".into()))?
            }
            "-h" | "--help" => return Err(Error::Usage(USAGE.into())),
            s if s.starts_with('-') => return Err(Error::Usage(format!("unknown flag {s}"))),
            _ => opts.files.push(PathBuf::from(arg)),
        }
    }
    if opts.port == 0 {
        return Err(Error::Usage(format!("--port is required\n{USAGE}")));
    }
    if opts.files.is_empty() {
        return Err(Error::Usage(format!("no files to send\n{USAGE}")));
    }
    if opts.associations == 0 {
        return Err(Error::Usage("--associations must be at least 1".into()));
    }
    for ae in [&opts.called_ae, &opts.calling_ae] {
        if ae.is_empty() || ae.len() > 16 || !ae.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(Error::Usage(format!("bad AE title {ae:?}")));
        }
    }
    Ok(opts)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir.display().to_string()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()
        .map_err(io_err(dir.display().to_string()))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- Part-10 files

/// What the loadgen needs from a Part-10 file: its identity and where the data set starts.
struct DicomFile {
    path: PathBuf,
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
    dataset_offset: u64,
    dataset_len: u64,
}

fn trim_uid(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

/// Reads the preamble, `DICM` and the File Meta group (Explicit VR Little Endian).
fn read_meta(path: &Path) -> Result<DicomFile> {
    let ctx = || path.display().to_string();
    let mut file = File::open(path).map_err(io_err(ctx()))?;
    let file_len = file.metadata().map_err(io_err(ctx()))?.len();
    let mut head = Vec::with_capacity(65536);
    (&mut file)
        .take(65536)
        .read_to_end(&mut head)
        .map_err(io_err(ctx()))?;
    if head.len() < 132 || &head[128..132] != b"DICM" {
        return Err(Error::Dicom(format!("{}: no DICM prefix", ctx())));
    }
    let (mut sop_class, mut sop_instance, mut transfer_syntax) = (None, None, None);
    let mut pos = 132usize;
    loop {
        let Some(h) = head.get(pos..pos + 8) else {
            return Err(Error::Dicom(format!("{}: file meta truncated", ctx())));
        };
        let group = u16::from_le_bytes([h[0], h[1]]);
        if group != 0x0002 {
            break;
        }
        let element = u16::from_le_bytes([h[2], h[3]]);
        let vr = [h[4], h[5]];
        let (len, header) = match &vr {
            b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN" | b"UC" | b"UR" | b"OD" | b"OL"
            | b"OV" => {
                let Some(l) = head.get(pos + 8..pos + 12) else {
                    return Err(Error::Dicom(format!("{}: file meta truncated", ctx())));
                };
                (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
            }
            _ => (u16::from_le_bytes([h[6], h[7]]) as usize, 8),
        };
        let start = pos + header;
        let Some(value) = head.get(start..start + len) else {
            return Err(Error::Dicom(format!(
                "{}: file meta element (0002,{element:04X}) runs past 64 KiB",
                ctx()
            )));
        };
        match element {
            0x0002 => sop_class = Some(trim_uid(value)),
            0x0003 => sop_instance = Some(trim_uid(value)),
            0x0010 => transfer_syntax = Some(trim_uid(value)),
            _ => {}
        }
        pos = start + len;
    }
    let missing = |what: &str| Error::Dicom(format!("{}: no {what} in file meta", ctx()));
    let dataset_offset = pos as u64;
    Ok(DicomFile {
        path: path.to_path_buf(),
        sop_class: sop_class.ok_or_else(|| missing("Media Storage SOP Class UID"))?,
        sop_instance: sop_instance.ok_or_else(|| missing("Media Storage SOP Instance UID"))?,
        transfer_syntax: transfer_syntax.ok_or_else(|| missing("Transfer Syntax UID"))?,
        dataset_offset,
        dataset_len: file_len - dataset_offset,
    })
}

// ---------------------------------------------------------------- PDU encoding

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// An item or sub-item of an A-ASSOCIATE PDU: type, reserved, 16-bit length, value.
fn put_item(out: &mut Vec<u8>, item_type: u8, value: &[u8]) -> Result<()> {
    let len = u16::try_from(value.len())
        .map_err(|_| Error::Protocol(format!("item 0x{item_type:02X} too long")))?;
    out.push(item_type);
    out.push(0);
    put_u16(out, len);
    out.extend_from_slice(value);
    Ok(())
}

fn ae_field(ae: &str) -> [u8; 16] {
    let mut field = [b' '; 16];
    field[..ae.len()].copy_from_slice(ae.as_bytes());
    field
}

/// A presentation context we propose: (id, abstract syntax, transfer syntax).
struct Proposed {
    id: u8,
    abstract_syntax: String,
    transfer_syntax: String,
}

fn encode_associate_rq(opts: &Options, contexts: &[Proposed]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    put_u16(&mut body, 1); // protocol version
    put_u16(&mut body, 0);
    body.extend_from_slice(&ae_field(&opts.called_ae));
    body.extend_from_slice(&ae_field(&opts.calling_ae));
    body.extend_from_slice(&[0; 32]);
    put_item(&mut body, 0x10, APPLICATION_CONTEXT.as_bytes())?;
    for cx in contexts {
        let mut item = vec![cx.id, 0, 0, 0];
        put_item(&mut item, 0x30, cx.abstract_syntax.as_bytes())?;
        put_item(&mut item, 0x40, cx.transfer_syntax.as_bytes())?;
        put_item(&mut body, 0x20, &item)?;
    }
    let mut user = Vec::new();
    put_item(&mut user, 0x51, &(MAX_INCOMING_PDU as u32).to_be_bytes())?;
    put_item(&mut user, 0x52, IMPLEMENTATION_CLASS_UID.as_bytes())?;
    put_item(&mut user, 0x55, IMPLEMENTATION_VERSION.as_bytes())?;
    put_item(&mut body, 0x50, &user)?;
    Ok(pdu(0x01, &body))
}

fn pdu(pdu_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(pdu_type);
    out.push(0);
    put_u32(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    out
}

/// An implicit VR little endian element of a command set.
fn put_command_element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

fn uid_value(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

fn encode_c_store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    let mut elements = Vec::with_capacity(256);
    put_command_element(&mut elements, 0x0002, &uid_value(sop_class));
    put_command_element(&mut elements, 0x0100, &0x0001u16.to_le_bytes()); // C-STORE-RQ
    put_command_element(&mut elements, 0x0110, &message_id.to_le_bytes());
    put_command_element(&mut elements, 0x0700, &0u16.to_le_bytes()); // medium priority
    put_command_element(&mut elements, 0x0800, &0u16.to_le_bytes()); // data set present
    put_command_element(&mut elements, 0x1000, &uid_value(sop_instance));
    let mut command = Vec::with_capacity(elements.len() + 12);
    put_command_element(&mut command, 0x0000, &(elements.len() as u32).to_le_bytes());
    command.extend_from_slice(&elements);
    command
}

/// Appends `len` bytes from `src` as P-DATA-TF PDUs of one PDV each; the
/// last of them ends the message if `ends`.
fn put_pdvs(
    out: &mut Vec<u8>,
    context_id: u8,
    command: bool,
    src: &mut impl Read,
    len: u64,
    max_fragment: usize,
    ends: bool,
) -> io::Result<()> {
    let mut left = len;
    loop {
        let fragment = left.min(max_fragment as u64) as usize;
        left -= fragment as u64;
        let control = u8::from(command) | if left == 0 && ends { 2 } else { 0 };
        out.push(0x04);
        out.push(0);
        put_u32(out, (fragment + 6) as u32);
        put_u32(out, (fragment + 2) as u32);
        out.push(context_id);
        out.push(control);
        let start = out.len();
        out.resize(start + fragment, 0);
        src.read_exact(&mut out[start..])?;
        if left == 0 {
            return Ok(());
        }
    }
}

/// An object ready to go.
enum Payload {
    /// Command and data set PDUs back to back.
    Whole(Vec<u8>),
    /// The command's PDUs; the data set is read from its file as it is sent.
    Streamed {
        command: Vec<u8>,
        path: PathBuf,
        offset: u64,
        len: u64,
        context_id: u8,
    },
}

/// The command's P-DATA-TF PDUs.
fn encode_command(
    file: &DicomFile,
    message_id: u16,
    context_id: u8,
    max_fragment: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    let command = encode_c_store_rq(message_id, &file.sop_class, &file.sop_instance);
    put_pdvs(
        out,
        context_id,
        true,
        &mut command.as_slice(),
        command.len() as u64,
        max_fragment,
        true,
    )
    .map_err(io_err(file.path.display().to_string()))
}

fn encode_object(
    file: &DicomFile,
    message_id: u16,
    context_id: u8,
    max_fragment: usize,
    stream_above: u64,
) -> Result<Payload> {
    if file.dataset_len > stream_above {
        let mut command = Vec::new();
        encode_command(file, message_id, context_id, max_fragment, &mut command)?;
        return Ok(Payload::Streamed {
            command,
            path: file.path.clone(),
            offset: file.dataset_offset,
            len: file.dataset_len,
            context_id,
        });
    }
    let pdus = 2 + (file.dataset_len as usize) / max_fragment;
    let mut out = Vec::with_capacity(256 + file.dataset_len as usize + 12 * (pdus + 1));
    encode_command(file, message_id, context_id, max_fragment, &mut out)?;
    let ctx = || file.path.display().to_string();
    let mut f = File::open(&file.path).map_err(io_err(ctx()))?;
    f.seek(SeekFrom::Start(file.dataset_offset))
        .map_err(io_err(ctx()))?;
    put_pdvs(
        &mut out,
        context_id,
        false,
        &mut f,
        file.dataset_len,
        max_fragment,
        true,
    )
    .map_err(io_err(ctx()))?;
    Ok(Payload::Whole(out))
}

/// About this much of a streamed data set goes in one `write`.
const STREAM_BATCH: usize = 1 << 20;

/// Send the data set of `len` bytes that `file` holds from its position on,
/// as P-DATA-TF PDUs of one fragment each, about [`STREAM_BATCH`] per
/// `write` from one reused buffer.
fn stream_dataset(
    stream: &mut TcpStream,
    file: &mut File,
    len: u64,
    context_id: u8,
    max_fragment: usize,
) -> io::Result<()> {
    let batch = ((STREAM_BATCH / max_fragment).max(1) * max_fragment) as u64;
    let mut buf =
        Vec::with_capacity(STREAM_BATCH + max_fragment + 12 * (batch as usize / max_fragment + 1));
    let mut left = len;
    while left > 0 {
        let n = left.min(batch);
        left -= n;
        buf.clear();
        put_pdvs(
            &mut buf,
            context_id,
            false,
            file,
            n,
            max_fragment,
            left == 0,
        )?;
        stream.write_all(&buf)?;
    }
    Ok(())
}

fn send_object(stream: &mut TcpStream, payload: &Payload, max_fragment: usize) -> io::Result<()> {
    match payload {
        Payload::Whole(buf) => stream.write_all(buf),
        Payload::Streamed {
            command,
            path,
            offset,
            len,
            context_id,
        } => {
            stream.write_all(command)?;
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(*offset))?;
            stream_dataset(stream, &mut file, *len, *context_id, max_fragment)
        }
    }
}

// ---------------------------------------------------------------- PDU reading

struct Pdu {
    pdu_type: u8,
    body: Vec<u8>,
}

fn read_pdu(r: &mut impl Read) -> Result<Pdu> {
    let mut header = [0u8; 6];
    r.read_exact(&mut header)
        .map_err(io_err("reading a PDU header"))?;
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if len > MAX_INCOMING_PDU {
        return Err(Error::Protocol(format!(
            "peer sent a PDU of {len} bytes (type 0x{:02X})",
            header[0]
        )));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(io_err("reading a PDU"))?;
    Ok(Pdu {
        pdu_type: header[0],
        body,
    })
}

fn describe_unexpected(pdu: &Pdu) -> Error {
    match pdu.pdu_type {
        0x03 if pdu.body.len() >= 4 => Error::Protocol(format!(
            "association rejected (result {}, source {}, reason {})",
            pdu.body[1], pdu.body[2], pdu.body[3]
        )),
        0x07 if pdu.body.len() >= 4 => Error::Protocol(format!(
            "association aborted by peer (source {}, reason {})",
            pdu.body[2], pdu.body[3]
        )),
        t => Error::Protocol(format!("unexpected PDU type 0x{t:02X}")),
    }
}

/// Accepted contexts (id → transfer syntax) and the acceptor's maximum PDU length.
struct Accepted {
    contexts: Vec<(u8, String)>,
    max_pdu: u32,
}

fn items(mut data: &[u8]) -> Result<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(Error::Protocol("truncated item".into()));
        }
        let len = u16::from_be_bytes([data[2], data[3]]) as usize;
        let value = data
            .get(4..4 + len)
            .ok_or_else(|| Error::Protocol("item longer than its PDU".into()))?;
        out.push((data[0], value));
        data = &data[4 + len..];
    }
    Ok(out)
}

fn parse_associate_ac(body: &[u8]) -> Result<Accepted> {
    let variable = body
        .get(68..)
        .ok_or_else(|| Error::Protocol("A-ASSOCIATE-AC too short".into()))?;
    let mut accepted = Accepted {
        contexts: Vec::new(),
        max_pdu: 0,
    };
    for (item_type, value) in items(variable)? {
        match item_type {
            0x21 => {
                if value.len() < 4 {
                    return Err(Error::Protocol(
                        "presentation context item too short".into(),
                    ));
                }
                if value[2] != 0 {
                    continue; // refused
                }
                for (sub_type, sub) in items(&value[4..])? {
                    if sub_type == 0x40 {
                        accepted.contexts.push((value[0], trim_uid(sub)));
                    }
                }
            }
            0x50 => {
                for (sub_type, sub) in items(value)? {
                    if sub_type == 0x51 && sub.len() == 4 {
                        accepted.max_pdu = u32::from_be_bytes([sub[0], sub[1], sub[2], sub[3]]);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(accepted)
}

/// Reads PDUs until a complete command set arrives; returns its (0000,0900) Status.
fn read_response_status(r: &mut impl Read) -> Result<u16> {
    let mut command = Vec::new();
    loop {
        let pdu = read_pdu(r)?;
        if pdu.pdu_type != 0x04 {
            return Err(describe_unexpected(&pdu));
        }
        let mut rest = pdu.body.as_slice();
        let mut complete = false;
        while !rest.is_empty() {
            if rest.len() < 6 {
                return Err(Error::Protocol("truncated PDV".into()));
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len < 2 || rest.len() < 4 + len {
                return Err(Error::Protocol("PDV longer than its PDU".into()));
            }
            let control = rest[5];
            if control & 1 == 0 {
                return Err(Error::Protocol("peer sent a data set to a C-STORE".into()));
            }
            command.extend_from_slice(&rest[6..4 + len]);
            complete |= control & 2 != 0;
            rest = &rest[4 + len..];
        }
        if complete {
            break;
        }
    }
    let mut pos = 0usize;
    let (mut field, mut status) = (None, None);
    while let Some(h) = command.get(pos..pos + 8) {
        let element = u16::from_le_bytes([h[2], h[3]]);
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let value = command
            .get(pos + 8..pos + 8 + len)
            .ok_or_else(|| Error::Protocol("truncated command element".into()))?;
        if value.len() == 2 {
            let v = u16::from_le_bytes([value[0], value[1]]);
            match element {
                0x0100 => field = Some(v),
                0x0900 => status = Some(v),
                _ => {}
            }
        }
        pos += 8 + len;
    }
    if field != Some(0x8001) {
        return Err(Error::Protocol(format!(
            "expected a C-STORE-RSP, got command field {field:04X?}"
        )));
    }
    status.ok_or_else(|| Error::Protocol("C-STORE-RSP without a status".into()))
}

// ---------------------------------------------------------------- associations

struct Association {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

fn connect(opts: &Options, rq: &[u8]) -> Result<(Association, Accepted)> {
    let addr = (opts.host.as_str(), opts.port)
        .to_socket_addrs()
        .map_err(io_err(format!("resolving {}", opts.host)))?
        .next()
        .ok_or_else(|| Error::Usage(format!("no address for {}", opts.host)))?;
    let mut stream = TcpStream::connect_timeout(&addr, opts.timeout)
        .map_err(io_err(format!("connecting to {addr}")))?;
    stream.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
    stream
        .set_read_timeout(Some(opts.timeout))
        .map_err(io_err("read timeout"))?;
    stream
        .set_write_timeout(Some(opts.timeout))
        .map_err(io_err("write timeout"))?;
    stream
        .write_all(rq)
        .map_err(io_err("sending A-ASSOCIATE-RQ"))?;
    let mut reader = BufReader::with_capacity(
        65536,
        stream.try_clone().map_err(io_err("cloning the socket"))?,
    );
    let pdu = read_pdu(&mut reader)?;
    if pdu.pdu_type != 0x02 {
        return Err(describe_unexpected(&pdu));
    }
    let accepted = parse_associate_ac(&pdu.body)?;
    Ok((Association { stream, reader }, accepted))
}

#[derive(Default)]
struct Outcome {
    sent: usize,
    bytes: u64,
    failures: usize,
    first_failure: Option<u16>,
    error: Option<String>,
}

fn check_accepted(contexts: &[Proposed], accepted: &Accepted) -> Result<()> {
    for cx in contexts {
        match accepted.contexts.iter().find(|(id, _)| *id == cx.id) {
            Some((_, ts)) if *ts == cx.transfer_syntax => {}
            _ => {
                return Err(Error::Protocol(format!(
                    "acceptor refused {} with {}",
                    cx.abstract_syntax, cx.transfer_syntax
                )))
            }
        }
    }
    Ok(())
}

/// Largest PDV fragment for an acceptor's maximum PDU length (0: no limit).
fn fragment_size(max_pdu: u32) -> Result<usize> {
    if max_pdu == 0 {
        Ok(UNLIMITED_FRAGMENT)
    } else if max_pdu < 8 + 6 {
        Err(Error::Protocol(format!(
            "acceptor max PDU {max_pdu} too small"
        )))
    } else {
        // A P-DATA-TF of one PDV: 4-byte item length + 2-byte header + fragment.
        Ok(((max_pdu as usize - 6) & !1).min(UNLIMITED_FRAGMENT))
    }
}

fn release(assoc: &mut Association) -> Result<()> {
    assoc
        .stream
        .write_all(&pdu(0x05, &[0; 4]))
        .map_err(io_err("sending A-RELEASE-RQ"))?;
    let rp = read_pdu(&mut assoc.reader)?;
    if rp.pdu_type != 0x06 {
        return Err(describe_unexpected(&rp));
    }
    let _ = assoc.stream.shutdown(Shutdown::Both);
    Ok(())
}

fn replay(
    opts: &Options,
    rq: &[u8],
    contexts: &[Proposed],
    max_fragment: usize,
    objects: Vec<(Payload, u64)>,
    start: &Barrier,
) -> Outcome {
    let mut outcome = Outcome::default();
    start.wait();
    let result = (|| -> Result<()> {
        let (mut assoc, accepted) = connect(opts, rq)?;
        check_accepted(contexts, &accepted)?;
        if fragment_size(accepted.max_pdu)? < max_fragment {
            return Err(Error::Protocol(format!(
                "acceptor lowered its max PDU to {}",
                accepted.max_pdu
            )));
        }
        for (payload, dataset_len) in &objects {
            send_object(&mut assoc.stream, payload, max_fragment)
                .map_err(io_err("sending a C-STORE-RQ"))?;
            let status = read_response_status(&mut assoc.reader)?;
            outcome.sent += 1;
            outcome.bytes += dataset_len;
            if status != 0x0000 {
                outcome.failures += 1;
                outcome.first_failure.get_or_insert(status);
            }
        }
        release(&mut assoc)
    })();
    if let Err(e) = result {
        outcome.error = Some(e.to_string());
    }
    outcome
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn run(opts: Options) -> Result<bool> {
    let t_begin = Instant::now();
    let files: Vec<DicomFile> = opts
        .files
        .iter()
        .map(|p| read_meta(p))
        .collect::<Result<_>>()?;

    // One presentation context per (SOP class, transfer syntax) pair, in file order.
    let mut contexts: Vec<Proposed> = Vec::new();
    let mut context_of = Vec::with_capacity(files.len());
    for f in &files {
        let found = contexts
            .iter()
            .find(|c| c.abstract_syntax == f.sop_class && c.transfer_syntax == f.transfer_syntax);
        let id = match found {
            Some(c) => c.id,
            None => {
                if contexts.len() == 128 {
                    return Err(Error::Usage(
                        "more than 128 (SOP class, transfer syntax) pairs".into(),
                    ));
                }
                let id = (contexts.len() * 2 + 1) as u8;
                contexts.push(Proposed {
                    id,
                    abstract_syntax: f.sop_class.clone(),
                    transfer_syntax: f.transfer_syntax.clone(),
                });
                id
            }
        };
        context_of.push(id);
    }
    let rq = encode_associate_rq(&opts, &contexts)?;

    // A probe association learns the acceptor's maximum PDU length, which
    // fixes the fragment sizes; then every object is encoded before the clock
    // starts. The timed associations connect on their own: a receiver that
    // serves one association at a time simply queues them.
    let (mut probe, accepted) = connect(&opts, &rq)?;
    check_accepted(&contexts, &accepted)?;
    release(&mut probe)?;
    let max_pdu = accepted.max_pdu;
    let t_connected = Instant::now();
    let max_fragment = fragment_size(max_pdu)?;

    // Contiguous shares, as with one sender process per association.
    let per = files.len().div_ceil(opts.associations);
    let mut shares: Vec<Vec<(Payload, u64)>> = Vec::new();
    for (chunk_index, chunk) in files.chunks(per).enumerate() {
        let mut share = Vec::with_capacity(chunk.len());
        for (i, f) in chunk.iter().enumerate() {
            let index = chunk_index * per + i;
            let message_id = (i % 65535 + 1) as u16;
            share.push((
                encode_object(
                    f,
                    message_id,
                    context_of[index],
                    max_fragment,
                    opts.stream_above,
                )?,
                f.dataset_len,
            ));
        }
        shares.push(share);
    }
    let n_assoc = shares.len();
    let t_encoded = Instant::now();

    let mut stdout = io::stdout();
    let _ = writeln!(stdout, "ready");
    let _ = stdout.flush();
    if opts.wait_go {
        let mut line = String::new();
        let n = io::stdin()
            .read_line(&mut line)
            .map_err(io_err("waiting for go on stdin"))?;
        if n == 0 {
            return Err(Error::Usage("stdin closed before go: nothing sent".into()));
        }
    }
    let barrier = Arc::new(Barrier::new(n_assoc + 1));
    let opts = Arc::new(opts);
    let contexts = Arc::new(contexts);
    let rq = Arc::new(rq);
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let (b, opts, contexts, rq) = (
                Arc::clone(&barrier),
                Arc::clone(&opts),
                Arc::clone(&contexts),
                Arc::clone(&rq),
            );
            thread::spawn(move || replay(&opts, &rq, &contexts, max_fragment, share, &b))
        })
        .collect();
    let _ = writeln!(stdout, "go");
    let _ = stdout.flush();
    let t_go = Instant::now();
    barrier.wait();
    let mut total = Outcome::default();
    let mut errors = Vec::new();
    for h in handles {
        let o = h.join().unwrap_or_else(|_| Outcome {
            error: Some("sender thread panicked".into()),
            ..Outcome::default()
        });
        total.sent += o.sent;
        total.bytes += o.bytes;
        total.failures += o.failures;
        if total.first_failure.is_none() {
            total.first_failure = o.first_failure;
        }
        errors.extend(o.error);
    }
    let elapsed = t_go.elapsed().as_secs_f64();
    let ok = errors.is_empty() && total.failures == 0 && total.sent == files.len();
    let first_failure = match total.first_failure {
        Some(s) => format!("\"0x{s:04X}\""),
        None => "null".into(),
    };
    let errors_json: Vec<String> = errors.iter().map(|e| json_string(e)).collect();
    println!(
        "{{\"ok\": {ok}, \"files\": {}, \"sent\": {}, \"bytes\": {}, \"associations\": {}, \
\"max_pdu\": {}, \"elapsed_s\": {elapsed:.6}, \"files_per_s\": {:.3}, \"mb_per_s\": {:.3}, \
\"probe_s\": {:.6}, \"encode_s\": {:.6}, \"failures\": {}, \"first_failure\": {first_failure}, \
\"errors\": [{}]}}",
        files.len(),
        total.sent,
        total.bytes,
        n_assoc,
        max_pdu,
        total.sent as f64 / elapsed,
        total.bytes as f64 / elapsed / 1e6,
        (t_connected - t_begin).as_secs_f64(),
        (t_encoded - t_connected).as_secs_f64(),
        total.failures,
        errors_json.join(", "),
    );
    Ok(ok)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(1)
        }
    }
}
