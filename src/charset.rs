//! Decoding text values per Specific Character Set (0008,0005), PS3.5 §6.1.
//!
//! dicom-rs decodes only the first value of a multi-valued Specific Character
//! Set (so ISO 2022 code extensions fall back to Latin-1), and splits values
//! on the `\` byte before decoding (which cuts JIS X 0208 characters). The
//! receiver therefore reads text values as raw bytes and decodes them here:
//!
//! - single character sets without code extensions: ISO_IR 6 (default),
//!   100, 101, 109, 110, 126, 127, 138, 144, 148, 166, 203, 13, ISO_IR 192
//!   (UTF-8), GB18030 and GBK;
//! - ISO 2022 code extensions (`ISO 2022 IR ...` terms): G0 sets ASCII
//!   (IR 6), JIS X 0201 romaji (IR 13), JIS X 0208 (IR 87), JIS X 0212
//!   (IR 159); G1 sets: the ISO 8859 right halves (IR 100 ... IR 203), JIS X
//!   0201 katakana (IR 13), KS X 1001 (IR 149), GB 2312 (IR 58). Escape
//!   sequences are followed wherever they appear.
//!
//! Whatever cannot be decoded is never fatal: an unknown term falls back to
//! ISO 8859-1, invalid bytes become U+FFFD, and the result says so (`lossy`)
//! so that the caller can log it.

use encoding::all;
use encoding::{DecoderTrap, EncodingRef};

/// A text value decoded to UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    /// Some bytes could not be decoded in the declared character set (they
    /// were replaced, or decoded as ISO 8859-1).
    pub lossy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G0 {
    Ascii,
    JisRoman,
    Jis0208,
    Jis0212,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G1 {
    None,
    Single(EncodingWrapper),
    Katakana,
    Ksc5601,
    Gb2312,
}

/// Comparable wrapper (encoding references have no `PartialEq`).
#[derive(Clone, Copy)]
struct EncodingWrapper(EncodingRef);

impl PartialEq for EncodingWrapper {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl Eq for EncodingWrapper {}

impl std::fmt::Debug for EncodingWrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// The default repertoire: ASCII (other bytes: ISO 8859-1, lossy).
    Default,
    /// One encoding for the whole value, no code extensions.
    Whole(EncodingWrapper),
    /// ISO 2022 code extensions, with the initial designations.
    Iso2022 { g0: G0, g1: G1 },
}

/// How text values of one data set are decoded.
#[derive(Debug, Clone)]
pub struct Charset {
    mode: Mode,
}

impl Default for Charset {
    fn default() -> Self {
        Charset {
            mode: Mode::Default,
        }
    }
}

/// A defined term of (0008,0005), normalised: upper case, `_` as space,
/// single spaces (`ISO_IR 100` -> `ISO IR 100`).
fn normalise(term: &str) -> String {
    term.trim()
        .to_ascii_uppercase()
        .replace('_', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn single_byte(number: &str) -> Option<EncodingRef> {
    Some(match number {
        "100" => all::ISO_8859_1,
        "101" => all::ISO_8859_2,
        "109" => all::ISO_8859_3,
        "110" => all::ISO_8859_4,
        "144" => all::ISO_8859_5,
        "127" => all::ISO_8859_6,
        "126" => all::ISO_8859_7,
        "138" => all::ISO_8859_8,
        // ISO 8859-9; windows-1254 only differs in the C1 range 0x80-0x9F.
        "148" => all::WINDOWS_1254,
        // TIS 620-2533; windows-874 only adds characters in 0x80-0x9F.
        "166" => all::WINDOWS_874,
        "203" => all::ISO_8859_15,
        _ => return None,
    })
}

/// A term without code extensions.
fn whole_term(term: &str) -> Option<Mode> {
    if term.is_empty() || term == "ISO IR 6" {
        return Some(Mode::Default);
    }
    if let Some(number) = term.strip_prefix("ISO IR ") {
        if number == "192" {
            return Some(Mode::Whole(EncodingWrapper(all::UTF_8)));
        }
        if number == "13" {
            // JIS X 0201: romaji in G0, half-width katakana in G1.
            return Some(Mode::Whole(EncodingWrapper(all::WINDOWS_31J)));
        }
        return single_byte(number).map(|e| Mode::Whole(EncodingWrapper(e)));
    }
    match term {
        "GB18030" => Some(Mode::Whole(EncodingWrapper(all::GB18030))),
        "GBK" => Some(Mode::Whole(EncodingWrapper(all::GBK))),
        _ => None,
    }
}

/// The designations an `ISO 2022 IR n` term makes (G0 and/or G1).
fn iso2022_term(term: &str) -> Option<(Option<G0>, Option<G1>)> {
    let number = term.strip_prefix("ISO 2022 IR ")?;
    Some(match number {
        "6" => (Some(G0::Ascii), None),
        "13" => (Some(G0::JisRoman), Some(G1::Katakana)),
        "87" => (Some(G0::Jis0208), None),
        "159" => (Some(G0::Jis0212), None),
        "149" => (None, Some(G1::Ksc5601)),
        "58" => (None, Some(G1::Gb2312)),
        n => (None, Some(G1::Single(EncodingWrapper(single_byte(n)?)))),
    })
}

impl Charset {
    /// The character set a (0008,0005) value declares (values separated by
    /// `\`, as read from the data set), and a warning when it cannot be
    /// honoured exactly.
    pub fn from_specific_character_set(value: &str) -> (Charset, Option<String>) {
        let terms: Vec<String> = value.split('\\').map(normalise).collect();
        let fallback = |why: String| {
            (
                Charset {
                    mode: Mode::Whole(EncodingWrapper(all::ISO_8859_1)),
                },
                Some(why),
            )
        };
        let extensions = terms.iter().any(|t| t.starts_with("ISO 2022"));
        if !extensions {
            let first = terms.first().map(String::as_str).unwrap_or("");
            let warning = (terms.len() > 1).then(|| {
                format!(
                    "Specific Character Set {value:?} lists several character sets without \
                     ISO 2022 code extensions; only {first:?} is used"
                )
            });
            return match whole_term(first) {
                Some(mode) => (Charset { mode }, warning),
                None => fallback(format!(
                    "Specific Character Set {value:?} is not supported; text is decoded as \
                     ISO 8859-1 and may be wrong"
                )),
            };
        }
        // With code extensions, value 1 (or the default repertoire if it is
        // empty) is the initial designation; the other values only declare
        // which escape sequences may appear, and every known one is honoured.
        let mut unknown = Vec::new();
        for t in &terms[1..] {
            if !t.is_empty() && iso2022_term(t).is_none() {
                unknown.push(t.clone());
            }
        }
        let (mut g0, mut g1) = (G0::Ascii, G1::None);
        let first = terms.first().map(String::as_str).unwrap_or("");
        if !first.is_empty() {
            match iso2022_term(first) {
                Some((a, b)) => {
                    g0 = a.unwrap_or(g0);
                    g1 = b.unwrap_or(g1);
                }
                None => match whole_term(first) {
                    // e.g. "ISO_IR 100\ISO 2022 IR 87": treat the first term as
                    // its ISO 2022 equivalent.
                    Some(Mode::Whole(EncodingWrapper(e))) if e.name() != "utf-8" => {
                        if let Some(n) = first.strip_prefix("ISO IR ") {
                            if let Some((_, Some(b))) = iso2022_term(&format!("ISO 2022 IR {n}")) {
                                g1 = b;
                            }
                        }
                    }
                    Some(Mode::Default) => {}
                    _ => unknown.push(first.to_string()),
                },
            }
        }
        let warning = (!unknown.is_empty()).then(|| {
            format!(
                "Specific Character Set {value:?}: {} not supported; text in those \
                 character sets is replaced by U+FFFD",
                unknown.join(", ")
            )
        });
        (
            Charset {
                mode: Mode::Iso2022 { g0, g1 },
            },
            warning,
        )
    }

    /// A short description for log lines.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::Default => "the default repertoire (ASCII)".into(),
            Mode::Whole(e) => e.0.name().into(),
            Mode::Iso2022 { .. } => "ISO 2022 code extensions".into(),
        }
    }

    /// Decode a value in this character set.
    pub fn decode(&self, bytes: &[u8]) -> Decoded {
        match self.mode {
            Mode::Default => decode_default(bytes),
            Mode::Whole(e) => decode_whole(e.0, bytes),
            Mode::Iso2022 { g0, g1 } => decode_iso2022(bytes, g0, g1),
        }
    }
}

/// The default repertoire (value representations whose text is always
/// ASCII: AE, AS, CS, DA, DS, DT, IS, TM, UI, UR). Bytes outside it are
/// decoded as ISO 8859-1 and reported.
pub fn decode_default(bytes: &[u8]) -> Decoded {
    if bytes.is_ascii() {
        // ASCII is UTF-8: checked as such (quick for ASCII), copied once.
        if let Ok(text) = std::str::from_utf8(bytes) {
            return Decoded {
                text: text.to_owned(),
                lossy: false,
            };
        }
    }
    Decoded {
        text: bytes.iter().map(|&b| b as char).collect(),
        lossy: true,
    }
}

fn decode_whole(encoding: EncodingRef, bytes: &[u8]) -> Decoded {
    match encoding.decode(bytes, DecoderTrap::Strict) {
        Ok(text) => Decoded { text, lossy: false },
        Err(_) => Decoded {
            text: encoding
                .decode(bytes, DecoderTrap::Replace)
                .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned()),
            lossy: true,
        },
    }
}

/// Recognise an escape sequence at the start of `bytes` (which starts with
/// ESC): its length and the designation it makes.
fn escape(bytes: &[u8]) -> Option<(usize, Option<G0>, Option<G1>)> {
    let seq = |n: usize| bytes.get(1..n);
    if let Some(s) = seq(3) {
        match s {
            b"(B" => return Some((3, Some(G0::Ascii), None)),
            b"(J" => return Some((3, Some(G0::JisRoman), None)),
            b"$B" | b"$@" => return Some((3, Some(G0::Jis0208), None)),
            b")I" => return Some((3, None, Some(G1::Katakana))),
            _ => {}
        }
        if s.first() == Some(&b'-') {
            let number = match s.get(1) {
                Some(b'A') => "100",
                Some(b'B') => "101",
                Some(b'C') => "109",
                Some(b'D') => "110",
                Some(b'F') => "126",
                Some(b'G') => "127",
                Some(b'H') => "138",
                Some(b'L') => "144",
                Some(b'M') => "148",
                Some(b'T') => "166",
                Some(b'b') => "203",
                _ => return None,
            };
            return single_byte(number).map(|e| (3, None, Some(G1::Single(EncodingWrapper(e)))));
        }
    }
    match seq(4)? {
        b"$(D" => Some((4, Some(G0::Jis0212), None)),
        b"$)C" => Some((4, None, Some(G1::Ksc5601))),
        b"$)A" => Some((4, None, Some(G1::Gb2312))),
        _ => None,
    }
}

fn push_decoded(out: &mut String, lossy: &mut bool, encoding: EncodingRef, bytes: &[u8]) {
    let d = decode_whole(encoding, bytes);
    *lossy |= d.lossy;
    out.push_str(&d.text);
}

fn decode_iso2022(bytes: &[u8], initial_g0: G0, initial_g1: G1) -> Decoded {
    let (mut g0, mut g1) = (initial_g0, initial_g1);
    let mut out = String::with_capacity(bytes.len());
    let mut lossy = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == 0x1B {
            let rest = bytes.get(i..).unwrap_or_default();
            match escape(rest) {
                Some((len, a, c)) => {
                    g0 = a.unwrap_or(g0);
                    g1 = c.unwrap_or(g1);
                    i += len;
                }
                None => {
                    lossy = true;
                    out.push('\u{FFFD}');
                    i += 1;
                }
            }
            continue;
        }
        let next = bytes.get(i + 1).copied();
        if b < 0x80 {
            match g0 {
                G0::Ascii => out.push(b as char),
                G0::JisRoman => out.push(match b {
                    0x5C => '\u{A5}',
                    0x7E => '\u{203E}',
                    _ => b as char,
                }),
                G0::Jis0208 | G0::Jis0212 => match next {
                    Some(t) if (0x21..0x7F).contains(&b) && (0x21..0x7F).contains(&t) => {
                        let euc: &[u8] = if g0 == G0::Jis0208 {
                            &[b | 0x80, t | 0x80]
                        } else {
                            &[0x8F, b | 0x80, t | 0x80]
                        };
                        push_decoded(&mut out, &mut lossy, all::EUC_JP, euc);
                        i += 2;
                        continue;
                    }
                    _ if b < 0x21 || b == 0x7F => out.push(b as char),
                    _ => {
                        lossy = true;
                        out.push('\u{FFFD}');
                    }
                },
            }
            i += 1;
            continue;
        }
        match g1 {
            G1::Single(e) => push_decoded(&mut out, &mut lossy, e.0, &[b]),
            G1::Katakana if (0xA1..=0xDF).contains(&b) => {
                out.push(char::from_u32(0xFF61 + u32::from(b - 0xA1)).unwrap_or('\u{FFFD}'))
            }
            G1::Ksc5601 | G1::Gb2312 => match next {
                Some(t) if b >= 0xA1 && t >= 0xA1 => {
                    let e: EncodingRef = if g1 == G1::Ksc5601 {
                        all::WINDOWS_949
                    } else {
                        all::GBK
                    };
                    push_decoded(&mut out, &mut lossy, e, &[b, t]);
                    i += 2;
                    continue;
                }
                _ => {
                    lossy = true;
                    out.push('\u{FFFD}');
                }
            },
            G1::None | G1::Katakana => {
                // A byte of no designated set: ISO 8859-1 is the best guess.
                lossy = true;
                out.push(b as char);
            }
        }
        i += 1;
    }
    Decoded { text: out, lossy }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(v: &str) -> Charset {
        Charset::from_specific_character_set(v).0
    }

    #[test]
    fn single_byte_sets() {
        assert_eq!(
            cs("ISO_IR 100").decode(b"Buc^J\xe9r\xf4me").text,
            "Buc^Jérôme"
        );
        assert_eq!(
            cs("ISO_IR 144")
                .decode(b"\xbb\xee\xda\x63\x65\xdc\xd1\x79\x70\xd3")
                .text,
            "Люкceмбypг"
        );
        assert_eq!(cs("ISO_IR 126").decode(b"\xc4\xe9\xef").text, "Διο");
        assert_eq!(
            cs("ISO_IR 192").decode("王^小東".as_bytes()).text,
            "王^小東"
        );
        assert_eq!(cs("ISO_IR 148").decode(b"\xdd").text, "İ");
    }

    #[test]
    fn invalid_bytes_are_replaced_and_reported() {
        let d = cs("ISO_IR 192").decode(b"ab\xff");
        assert!(d.lossy);
        assert_eq!(d.text, "ab\u{FFFD}");
        let d = decode_default(b"J\xe9r");
        assert!(d.lossy);
        assert_eq!(d.text, "Jér");
        assert!(!decode_default(b"ABC").lossy);
    }

    #[test]
    fn unknown_terms_fall_back_with_a_warning() {
        let (c, w) = Charset::from_specific_character_set("ISO_IR 999");
        assert!(w.unwrap().contains("not supported"));
        assert_eq!(c.decode(b"\xe9").text, "é");
        let (_, w) = Charset::from_specific_character_set("ISO_IR 100");
        assert!(w.is_none());
        let (_, w) = Charset::from_specific_character_set("\\ISO 2022 IR 87");
        assert!(w.is_none());
        let (_, w) = Charset::from_specific_character_set("\\ISO 2022 IR 999");
        assert!(w.is_some());
    }

    #[test]
    fn japanese_iso2022() {
        // Yamada^Tarou=山田^太郎=やまだ^たろう (PS3.5 H.3.1)
        let bytes =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        let d = cs("\\ISO 2022 IR 87").decode(bytes);
        assert_eq!(d.text, "Yamada^Tarou=山田^太郎=やまだ^たろう");
        assert!(!d.lossy);
        // half-width katakana in G1 with IR 13 as the initial set
        let d = cs("ISO 2022 IR 13\\ISO 2022 IR 87").decode(b"\xd4\xcf\xc0\xde");
        assert_eq!(d.text, "ﾔﾏﾀﾞ");
        // a backslash byte inside a two-byte character is not a delimiter
        let d = cs("\\ISO 2022 IR 87").decode(b"\x1b$B\x30\x5c\x1b(B");
        assert!(!d.text.contains('\\'), "{}", d.text);
    }

    #[test]
    fn korean_iso2022() {
        // Hong^Gildong=洪^吉洞=홍^길동 (PS3.5 I.2)
        let bytes = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        let d = cs("\\ISO 2022 IR 149").decode(bytes);
        assert_eq!(d.text, "Hong^Gildong=洪^吉洞=홍^길동");
        assert!(!d.lossy);
    }

    #[test]
    fn garbage_never_panics() {
        let sets = [
            "",
            "ISO_IR 192",
            "\\ISO 2022 IR 87",
            "\\ISO 2022 IR 149",
            "ISO 2022 IR 13\\ISO 2022 IR 87\\ISO 2022 IR 159",
            "GB18030",
        ];
        for s in sets {
            let c = cs(s);
            for len in 0..40usize {
                let junk: Vec<u8> = (0..len).map(|i| (i * 97 % 256) as u8).collect();
                let _ = c.decode(&junk);
                let mut esc = junk.clone();
                esc.insert(0, 0x1b);
                let _ = c.decode(&esc);
                let _ = c.decode(&[0x1b, b'$']);
            }
        }
    }
}
