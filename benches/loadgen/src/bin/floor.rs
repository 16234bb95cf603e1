//! What storing objects received over loopback costs at the least on this
//! machine, whatever the receiver: no DICOM, no association, no parsing
//! beyond the P-DATA-TF framing.
//!
//!     floor [--mb 1024] [--object-kb KB] [--fragment 16372] [--repeat 5] [--dir /dev/shm]
//!
//! A sender thread writes `--mb` MiB as P-DATA-TF PDUs of one `--fragment`
//! byte PDV each, one `write` per PDU from a reused buffer (as dcmtk's
//! `storescu` does): one object, or objects of `--object-kb` KiB, after each
//! of which it waits for a one-byte answer (as a C-STORE SCU waits for the
//! response). A receiver thread stores each object in a new file in `--dir`
//! (`open`, writes, `close`; then the answer) in one of two ways, alternating:
//!
//! - `copy`: read up to 256 KiB at a time, copy each fragment into a 1 MiB
//!   piece, `write` full pieces (what a receiver that gathers pieces does);
//! - `direct`: read up to 4 MiB at a time and `writev` the fragments where
//!   they lie (no copy in user space at all).
//!
//! Per run it prints objects per second, and the wall time and each
//! thread's CPU seconds (user and system, from `/proc/thread-self/stat`) per
//! GiB. The receiver's system time is the kernel's share: taking the data
//! out of the socket, creating the files and putting the data into their
//! pages, which every receiver pays.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Instant;

const HEADER: usize = 12;

struct Options {
    bytes: u64,
    object: u64,
    fragment: usize,
    repeat: usize,
    dir: PathBuf,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        bytes: 1024 << 20,
        object: 0,
        fragment: 16372,
        repeat: 5,
        dir: PathBuf::from("/dev/shm"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--mb" => o.bytes = v()?.parse::<u64>().map_err(|e| e.to_string())? << 20,
            "--object-kb" => o.object = v()?.parse::<u64>().map_err(|e| e.to_string())? << 10,
            "--fragment" => o.fragment = v()?.parse().map_err(|e| format!("{e}"))?,
            "--repeat" => o.repeat = v()?.parse().map_err(|e| format!("{e}"))?,
            "--dir" => o.dir = PathBuf::from(v()?),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.fragment < 2 || o.fragment > (1 << 20) || o.bytes == 0 {
        return Err("--fragment must be 2..=1048576 and --mb positive".into());
    }
    if o.object == 0 || o.object > o.bytes {
        o.object = o.bytes;
    }
    Ok(o)
}

/// This thread's (user, system) CPU seconds.
fn thread_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
            / tick
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    (get(11), get(12))
}

fn send(mut s: TcpStream, total: u64, object: u64, fragment: usize) -> io::Result<(f64, f64)> {
    s.set_nodelay(true)?;
    let start = thread_cpu();
    let mut buf = vec![7u8; HEADER + fragment];
    let mut answer = [0u8; 1];
    let mut objects_left = total / object;
    while objects_left > 0 {
        objects_left -= 1;
        let mut left = object;
        while left > 0 {
            let n = left.min(fragment as u64) as usize;
            left -= n as u64;
            buf[0] = 0x04;
            buf[2..6].copy_from_slice(&((n + 6) as u32).to_be_bytes());
            buf[6..10].copy_from_slice(&((n + 2) as u32).to_be_bytes());
            buf[10] = 1;
            buf[11] = if left == 0 { 2 } else { 0 };
            s.write_all(&buf[..HEADER + n])?;
        }
        s.read_exact(&mut answer)?;
    }
    let end = thread_cpu();
    Ok((end.0 - start.0, end.1 - start.1))
}

/// Length of the PDV at the start of `b` and whether it is an object's
/// last, if its header is there.
fn pdv(b: &[u8]) -> Option<(usize, bool)> {
    let h = b.get(..HEADER)?;
    let len = (u32::from_be_bytes([h[6], h[7], h[8], h[9]]) as usize).checked_sub(2)?;
    Some((len, h[11] & 2 != 0))
}

/// The receiving side: files stored, in `dir`.
struct Sink {
    dir: PathBuf,
    stored: u64,
    file: Option<File>,
    piece: Vec<u8>,
    direct: bool,
}

impl Sink {
    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let path = self.dir.join(format!("{}.bin", self.stored));
            self.file = Some(File::create_new(path)?);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("no file"))
    }

    /// Store `ranges` of `buf`, the fragments received since the last call.
    fn store(&mut self, buf: &[u8], ranges: &[std::ops::Range<usize>]) -> io::Result<()> {
        if ranges.is_empty() {
            return Ok(());
        }
        if self.direct {
            let slices: Vec<IoSlice> = ranges
                .iter()
                .map(|r| IoSlice::new(&buf[r.clone()]))
                .collect();
            let want: usize = ranges.iter().map(|r| r.len()).sum();
            if self.file()?.write_vectored(&slices)? != want {
                return Err(io::Error::other("short writev"));
            }
            return Ok(());
        }
        for r in ranges {
            let mut data = &buf[r.clone()];
            while !data.is_empty() {
                let take = data.len().min((1 << 20) - self.piece.len());
                self.piece.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.piece.len() == 1 << 20 {
                    let piece = std::mem::take(&mut self.piece);
                    self.file()?.write_all(&piece)?;
                    self.piece = piece;
                    self.piece.clear();
                }
            }
        }
        Ok(())
    }

    /// The object is complete: write what is left of it, close its file.
    fn finish(&mut self) -> io::Result<()> {
        let piece = std::mem::take(&mut self.piece);
        self.file()?.write_all(&piece)?;
        self.piece = piece;
        self.piece.clear();
        self.file = None;
        self.stored += 1;
        Ok(())
    }
}

fn receive(mut s: TcpStream, sink: &mut Sink, total: u64) -> io::Result<(f64, f64)> {
    let start = thread_cpu();
    let cap = if sink.direct { 4 << 20 } else { 256 << 10 };
    let mut buf = vec![0u8; cap + (1 << 20) + HEADER];
    let (mut begin, mut end, mut got) = (0usize, 0usize, 0u64);
    let mut ranges = Vec::new();
    while got < total {
        // Every whole PDU in the buffer; an object's last one is answered.
        while let Some((n, last)) = buf.get(begin..end).and_then(pdv) {
            if end - begin < HEADER + n {
                break;
            }
            ranges.push(begin + HEADER..begin + HEADER + n);
            begin += HEADER + n;
            got += n as u64;
            if last {
                sink.store(&buf, &ranges)?;
                ranges.clear();
                sink.finish()?;
                s.write_all(&[0])?;
            }
        }
        sink.store(&buf, &ranges)?;
        ranges.clear();
        if got >= total {
            break;
        }
        buf.copy_within(begin..end, 0);
        end -= begin;
        begin = 0;
        let limit = (end + cap).min(buf.len());
        let n = s.read(&mut buf[end..limit])?;
        if n == 0 {
            return Err(io::Error::other("sender closed early"));
        }
        end += n;
    }
    let end = thread_cpu();
    Ok((end.0 - start.0, end.1 - start.1))
}

fn run(o: &Options, direct: bool) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dir = o.dir.join(format!("floor-{}", std::process::id()));
    std::fs::create_dir(&dir)?;
    let mut sink = Sink {
        dir: dir.clone(),
        stored: 0,
        file: None,
        piece: Vec::with_capacity(1 << 20),
        direct,
    };
    let (object, fragment) = (o.object, o.fragment);
    let total = o.bytes / object * object;
    let t0 = Instant::now();
    let sender =
        std::thread::spawn(move || send(TcpStream::connect(addr)?, total, object, fragment));
    let (conn, _) = listener.accept()?;
    conn.set_nodelay(true)?;
    let recv = receive(conn, &mut sink, total);
    let wall = t0.elapsed().as_secs_f64();
    let sent = sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))?;
    std::fs::remove_dir_all(&dir)?;
    let (ru, rs) = recv?;
    let (su, ss) = sent?;
    let gib = total as f64 / f64::from(1u32 << 30);
    println!(
        "{:6}  {:8.1} objects/s  wall {:.3} s/GiB  receiver user {:.3} system {:.3} s/GiB  \
sender user {:.3} system {:.3} s/GiB",
        if direct { "direct" } else { "copy" },
        sink.stored as f64 / wall,
        wall / gib,
        ru / gib,
        rs / gib,
        su / gib,
        ss / gib
    );
    Ok(())
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::exit(2);
        }
    };
    for _ in 0..o.repeat {
        for direct in [false, true] {
            if let Err(e) = run(&o, direct) {
                eprintln!("floor: {e}");
                std::process::exit(1);
            }
        }
    }
}
