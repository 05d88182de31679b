//! SPDY/3.1 framing, as far as `kubectl port-forward` uses it (draft-mbelshe-httpbis-spdy-00
//! and the SPDY/3.1 draft; k8s.io/apimachinery pkg/util/httpstream/spdy speaks it through
//! moby/spdystream): control frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY,
//! HEADERS and WINDOW_UPDATE, DATA frames, and name/value header blocks compressed with zlib
//! and SPDY's preset dictionary, one compression context per direction for the whole session.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Errors of decoding SPDY frames and header blocks.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("frame of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("decompressing a header block")]
    Inflate(#[source] flate2::DecompressError),
    #[error("compressing a header block")]
    Deflate(#[source] flate2::CompressError),
    #[error("malformed header block")]
    HeaderBlock,
}

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM's FLAG_UNIDIRECTIONAL.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// PING and SETTINGS carry no stream; GOAWAY's status.
pub const GOAWAY_OK: u32 = 0;
/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

/// Frames are refused above this size (the 24-bit length allows 16 MiB; spdystream writes
/// data in much smaller pieces).
pub const MAX_FRAME: usize = 1 << 24;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// A name/value header block, names in lower case as SPDY requires; a name may repeat.
pub type Headers = Vec<(String, String)>;

/// One frame, header blocks already decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame of a type this implementation does not know (ignored, as the spec says).
    Unknown {
        kind: u16,
    },
}

/// The value of the first header named `name`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// SPDY/3's zlib dictionary (draft-mbelshe-httpbis-spdy-00 section 2.6.10.1): these names and
/// values, each after its 32-bit big-endian length, then the remaining text as is.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The dictionary bytes (1423 of them).
pub fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1423);
    for w in DICTIONARY_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    d
}

/// The uncompressed form of a header block: a 32-bit count, then per pair the 32-bit length
/// and bytes of the name and of the value.
pub fn encode_block(headers: &Headers) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Parses an uncompressed header block; a value holding NULs is several values of one name.
pub fn decode_block(b: &[u8]) -> Result<Headers, SpdyError> {
    let mut r = Reader(b);
    let n = r.u32().ok_or(SpdyError::HeaderBlock)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let k = r.bytes_with_len().ok_or(SpdyError::HeaderBlock)?;
        let v = r.bytes_with_len().ok_or(SpdyError::HeaderBlock)?;
        let k = String::from_utf8_lossy(k).to_ascii_lowercase();
        for v in v.split(|c| *c == 0) {
            out.push((k.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (self.0.len() >= n).then(|| {
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            a
        })
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes_with_len(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
}

/// The sending side's header compression context.
#[derive(Debug)]
pub struct Deflater(Compress);

impl Default for Deflater {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        // A fresh stream with a zlib header: the dictionary is set before any data, and its
        // Adler-32 goes into the header (RFC 1950 FDICT).
        let _ = c.set_dictionary(&dictionary());
        Self(c)
    }
}

impl Deflater {
    /// Compresses one header block, ending with a sync flush so the peer can decode it alone.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let input = encode_block(headers);
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut consumed = 0;
        loop {
            out.reserve(256);
            let before = self.0.total_in();
            self.0
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(SpdyError::Deflate)?;
            consumed += usize::try_from(self.0.total_in() - before).unwrap_or(0);
            // Done when all input is in and the flush left spare room in the output.
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving side's header decompression context.
#[derive(Debug)]
pub struct Inflater(Decompress);

impl Default for Inflater {
    fn default() -> Self {
        Self(Decompress::new(true))
    }
}

impl Inflater {
    /// Decompresses one header block.
    pub fn decompress(&mut self, input: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut consumed = 0;
        loop {
            out.reserve(1024);
            let (before, out_before) = (self.0.total_in(), out.len());
            let res = self
                .0
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += usize::try_from(self.0.total_in() - before).unwrap_or(0);
            let progressed = self.0.total_in() != before || out.len() != out_before;
            match res {
                Ok(Status::StreamEnd) => break,
                Ok(_) if consumed == input.len() && out.len() < out.capacity() => break,
                Ok(_) if !progressed => return Err(SpdyError::HeaderBlock),
                Ok(_) => {}
                // The first block asks for the preset dictionary (RFC 1950 FDICT).
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(&dictionary())
                        .map_err(SpdyError::Inflate)?;
                }
                Err(e) => return Err(SpdyError::Inflate(e)),
            }
            if out.len() > MAX_FRAME {
                return Err(SpdyError::TooLarge(out.len()));
            }
        }
        decode_block(&out)
    }
}

/// Splits one frame off the front of `buf`: `Ok(None)` until a whole frame is there.
pub fn decode(buf: &[u8], inflater: &mut Inflater) -> Result<Option<(Frame, usize)>, SpdyError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
    if len > MAX_FRAME {
        return Err(SpdyError::TooLarge(len));
    }
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let flags = buf[4];
    let body = &buf[8..8 + len];
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let frame = if buf[0] & 0x80 == 0 {
        Frame::Data {
            stream_id: word(buf) & 0x7fff_ffff,
            flags,
            data: body.to_vec(),
        }
    } else {
        let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([buf[2], buf[3]]);
        let need = |n: usize, what| {
            if body.len() < n {
                Err(SpdyError::Malformed(what))
            } else {
                Ok(())
            }
        };
        match kind {
            SYN_STREAM => {
                need(10, "SYN_STREAM")?;
                Frame::SynStream {
                    stream_id: word(body) & 0x7fff_ffff,
                    associated_to: word(&body[4..]) & 0x7fff_ffff,
                    priority: body[8] >> 5,
                    flags,
                    headers: inflater.decompress(&body[10..])?,
                }
            }
            SYN_REPLY | HEADERS => {
                need(4, "SYN_REPLY")?;
                let stream_id = word(body) & 0x7fff_ffff;
                let headers = inflater.decompress(&body[4..])?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                need(8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: word(body) & 0x7fff_ffff,
                    status: word(&body[4..]),
                }
            }
            SETTINGS => {
                need(4, "SETTINGS")?;
                let n = word(body) as usize;
                if body.len() < 4 + n.saturating_mul(8) {
                    return Err(SpdyError::Malformed("SETTINGS"));
                }
                let entries = (0..n)
                    .map(|i| {
                        let e = &body[4 + i * 8..];
                        let id = u32::from(e[1]) << 16 | u32::from(e[2]) << 8 | u32::from(e[3]);
                        (e[0], id, word(&e[4..]))
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                need(4, "PING")?;
                Frame::Ping { id: word(body) }
            }
            GOAWAY => {
                need(4, "GOAWAY")?;
                Frame::GoAway {
                    last_good_stream_id: word(body) & 0x7fff_ffff,
                    status: if body.len() >= 8 { word(&body[4..]) } else { 0 },
                }
            }
            WINDOW_UPDATE => {
                need(8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: word(body) & 0x7fff_ffff,
                    delta: word(&body[4..]) & 0x7fff_ffff,
                }
            }
            kind => Frame::Unknown { kind },
        }
    };
    Ok(Some((frame, 8 + len)))
}

fn control(kind: u16, flags: u8, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(body);
}

/// Appends the wire form of `frame` to `out`.
pub fn encode(frame: &Frame, deflater: &mut Deflater, out: &mut Vec<u8>) -> Result<(), SpdyError> {
    let mut body = Vec::new();
    match frame {
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            flags,
            headers,
        } => {
            body.extend_from_slice(&stream_id.to_be_bytes());
            body.extend_from_slice(&associated_to.to_be_bytes());
            body.push(priority << 5);
            body.push(0);
            body.extend(deflater.compress(headers)?);
            control(SYN_STREAM, *flags, &body, out);
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        }
        | Frame::Headers {
            stream_id,
            flags,
            headers,
        } => {
            body.extend_from_slice(&stream_id.to_be_bytes());
            body.extend(deflater.compress(headers)?);
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                SYN_REPLY
            } else {
                HEADERS
            };
            control(kind, *flags, &body, out);
        }
        Frame::RstStream { stream_id, status } => {
            body.extend_from_slice(&stream_id.to_be_bytes());
            body.extend_from_slice(&status.to_be_bytes());
            control(RST_STREAM, 0, &body, out);
        }
        Frame::Settings { flags, entries } => {
            body.extend_from_slice(&(entries.len() as u32).to_be_bytes());
            for (f, id, v) in entries {
                body.push(*f);
                body.extend_from_slice(&id.to_be_bytes()[1..]);
                body.extend_from_slice(&v.to_be_bytes());
            }
            control(SETTINGS, *flags, &body, out);
        }
        Frame::Ping { id } => control(PING, 0, &id.to_be_bytes(), out),
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            body.extend_from_slice(&last_good_stream_id.to_be_bytes());
            body.extend_from_slice(&status.to_be_bytes());
            control(GOAWAY, 0, &body, out);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            body.extend_from_slice(&stream_id.to_be_bytes());
            body.extend_from_slice(&delta.to_be_bytes());
            control(WINDOW_UPDATE, 0, &body, out);
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            out.push(*flags);
            out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(data);
        }
        Frame::Unknown { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_dictionary_is_the_specs() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
        // The Adler-32 a zlib stream with this preset dictionary carries in its header.
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&d).expect("dictionary");
        let mut out = Vec::with_capacity(64);
        c.compress_vec(b"x", &mut out, FlushCompress::Sync)
            .expect("compress");
        assert_eq!(out[1] & 0x20, 0x20, "FDICT set");
        assert_eq!(&out[2..6], &adler32(&d).to_be_bytes());
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        b << 16 | a
    }

    #[test]
    fn frames_round_trip_through_one_compression_context_per_direction() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: h(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "0"),
                ]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: h(&[]),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 65536), (1, 4, 100)],
            },
            Frame::Ping { id: 1 },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 4096,
            },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: GOAWAY_OK,
            },
        ];
        let mut deflater = Deflater::default();
        let mut wire = Vec::new();
        for f in &frames {
            encode(f, &mut deflater, &mut wire).expect("encode");
        }
        let mut inflater = Inflater::default();
        let mut got = Vec::new();
        let mut at = 0;
        // Byte by byte first: a partial frame is never decoded.
        assert!(decode(&wire[..7], &mut inflater).expect("short").is_none());
        while let Some((f, n)) = decode(&wire[at..], &mut inflater).expect("decode") {
            got.push(f);
            at += n;
        }
        assert_eq!(at, wire.len());
        assert_eq!(got, frames);
    }

    #[test]
    fn header_blocks_with_repeated_values() {
        let block = {
            let mut b = Vec::new();
            b.extend_from_slice(&1u32.to_be_bytes());
            b.extend_from_slice(&4u32.to_be_bytes());
            b.extend_from_slice(b"Port");
            b.extend_from_slice(&9u32.to_be_bytes());
            b.extend_from_slice(b"8080\x009090");
            b
        };
        assert_eq!(
            decode_block(&block).expect("block"),
            h(&[("port", "8080"), ("port", "9090")])
        );
        assert!(decode_block(&block[..10]).is_err());
    }

    /// The first frame kubectl 1.37 sent after a plain SPDY/3.1 upgrade of
    /// `kubectl port-forward pod/x 18721:80`, when a connection came to the local port:
    /// the error stream's SYN_STREAM, its header block compressed by Go's zlib with the
    /// dictionary (DICTID e3c6a7c2).
    #[rustfmt::skip]
    const KUBECTL_SYN_STREAM: &[u8] = &[
        0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3d, 0x00, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2,
        0x02, 0x25, 0x3a, 0x06, 0x06, 0x06, 0xce, 0x22, 0x48, 0xfc, 0x64, 0x82,
        0xd2, 0x2d, 0xa3, 0x01, 0x38, 0xe5, 0x95, 0x14, 0xa5, 0x26, 0xe6, 0x42,
        0x0b, 0x17, 0xd6, 0x54, 0x50, 0xd0, 0x43, 0x0a, 0xea, 0x22, 0x50, 0xa2,
        0x66, 0xb2, 0x30, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
    ];

    #[test]
    fn decodes_a_syn_stream_captured_from_kubectl() {
        let mut inflater = Inflater::default();
        let (frame, used) = decode(KUBECTL_SYN_STREAM, &mut inflater)
            .expect("decode")
            .expect("a whole frame");
        assert_eq!(used, KUBECTL_SYN_STREAM.len());
        let Frame::SynStream {
            stream_id,
            associated_to,
            headers,
            ..
        } = frame
        else {
            panic!("not a SYN_STREAM: {frame:?}");
        };
        assert_eq!((stream_id, associated_to), (1, 0));
        assert_eq!(header(&headers, "streamtype"), Some("error"));
        assert_eq!(header(&headers, "port"), Some("80"));
        assert_eq!(header(&headers, "requestid"), Some("0"));
    }
}
