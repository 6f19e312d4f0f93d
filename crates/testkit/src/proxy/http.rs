//! Just enough HTTP/1.1 for a forwarding proxy: message heads read and written back unchanged, and bodies
//! framed by `Content-Length`, `Transfer-Encoding: chunked` or the end of the connection.

use std::io::{self, BufRead, Read, Write};

/// Longest message head accepted (start line and headers).
const MAX_HEAD: usize = 64 << 10;

/// A request or response head: the start line and the headers in order, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) start_line: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    /// Reads one head. `Ok(None)` when the stream ends before its first byte (a keep-alive connection
    /// closed between requests); malformed or oversized heads are `InvalidData` errors.
    pub(crate) fn read(r: &mut impl BufRead) -> io::Result<Option<Head>> {
        let mut total = 0;
        let mut start_line = None;
        let mut headers = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = (&mut *r).take((MAX_HEAD - total + 1) as u64).read_until(b'\n', &mut line)?;
            total += n;
            if n == 0 {
                return match start_line {
                    None => Ok(None),
                    Some(_) => Err(invalid("connection closed inside a message head")),
                };
            }
            if total > MAX_HEAD {
                return Err(invalid(format!("message head longer than {MAX_HEAD} bytes")));
            }
            let line = std::str::from_utf8(&line).map_err(|_| invalid("message head is not UTF-8"))?;
            let line = line.trim_end_matches(['\r', '\n']);
            match &start_line {
                // Leading empty lines before a request are ignored (RFC 9112, 2.2).
                None if line.is_empty() => continue,
                None => start_line = Some(line.to_owned()),
                Some(_) if line.is_empty() => break,
                Some(_) => {
                    let (name, value) =
                        line.split_once(':').ok_or_else(|| invalid(format!("header without a colon: {line:?}")))?;
                    if name.is_empty() || name.contains([' ', '\t']) {
                        return Err(invalid(format!("bad header name: {line:?}")));
                    }
                    headers.push((name.to_owned(), value.trim().to_owned()));
                }
            }
        }
        Ok(start_line.map(|start_line| Head { start_line, headers }))
    }

    /// The first header with this name (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (`Connection`, `Transfer-Encoding`) holds `token`.
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Drops every header with this name.
    pub(crate) fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// The head as sent on the wire, ending with the empty line.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start_line);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// The response status code (second word of a status line).
    pub(crate) fn status(&self) -> io::Result<u16> {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line: {:?}", self.start_line)))
    }

    fn content_length(&self) -> io::Result<Option<u64>> {
        match self.header("Content-Length") {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| invalid(format!("bad Content-Length: {v:?}"))),
        }
    }
}

/// The parts of a request line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestLine {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) version: String,
}

impl RequestLine {
    pub(crate) fn parse(line: &str) -> io::Result<Self> {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some(m), Some(t), Some(v), None) if !m.is_empty() && t.starts_with('/') && v.starts_with("HTTP/1.") => {
                Ok(RequestLine { method: m.to_owned(), target: t.to_owned(), version: v.to_owned() })
            }
            _ => Err(invalid(format!("bad request line: {line:?} (only origin-form HTTP/1.x requests are proxied)"))),
        }
    }
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilEof,
}

impl Framing {
    /// A request's body framing (RFC 9112, 6.3): chunked, else `Content-Length`, else none.
    pub(crate) fn of_request(head: &Head) -> io::Result<Framing> {
        if head.has_token("Transfer-Encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        Ok(match head.content_length()? {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }

    /// A response's body framing: none for `HEAD`, 1xx, 204 and 304; else chunked, `Content-Length`, or
    /// until the connection closes.
    pub(crate) fn of_response(method: &str, status: u16, head: &Head) -> io::Result<Framing> {
        if method.eq_ignore_ascii_case("HEAD") || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(Framing::Empty);
        }
        if head.has_token("Transfer-Encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        Ok(match head.content_length()? {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilEof,
        })
    }
}

/// Reads a body's payload (chunk framing removed, trailers dropped) from the stream it arrives on; reads
/// 0 at its end.
pub(crate) struct BodyReader<'a, R> {
    inner: &'a mut R,
    state: State,
}

#[derive(Debug)]
enum State {
    /// This many bytes left (of a `Content-Length` body or of the current chunk).
    Left {
        left: u64,
        chunked: bool,
    },
    /// A chunked body between chunks: the next line is a chunk size.
    ChunkHead,
    UntilEof,
    Done,
}

impl<'a, R: BufRead> BodyReader<'a, R> {
    pub(crate) fn new(framing: Framing, inner: &'a mut R) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(left) => State::Left { left, chunked: false },
            Framing::Chunked => State::ChunkHead,
            Framing::UntilEof => State::UntilEof,
        };
        BodyReader { inner, state }
    }

    /// Reads and discards the rest of the body.
    pub(crate) fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        (&mut *self.inner).take(4096).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunked body ends inside a chunk header"));
        }
        String::from_utf8(line).map_err(|_| invalid("chunk header is not UTF-8"))
    }
}

impl<R: BufRead> Read for BodyReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::UntilEof => return self.inner.read(buf),
                State::ChunkHead => {
                    let line = self.line()?;
                    let size = line.trim_end().split(';').next().unwrap_or_default().trim();
                    let size =
                        u64::from_str_radix(size, 16).map_err(|_| invalid(format!("bad chunk size: {line:?}")))?;
                    if size == 0 {
                        // Trailer section: header lines up to an empty line.
                        while !self.line()?.trim_end().is_empty() {}
                        self.state = State::Done;
                    } else {
                        self.state = State::Left { left: size, chunked: true };
                    }
                }
                State::Left { left, chunked } => {
                    if buf.is_empty() {
                        return Ok(0);
                    }
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("body ends {left} bytes early"),
                        ));
                    }
                    let left = left - n as u64;
                    self.state = match (left, chunked) {
                        (0, false) => State::Done,
                        (0, true) => {
                            let mut crlf = [0u8; 2];
                            self.inner.read_exact(&mut crlf)?;
                            if &crlf != b"\r\n" {
                                return Err(invalid("chunk data not followed by CRLF"));
                            }
                            State::ChunkHead
                        }
                        (left, chunked) => State::Left { left, chunked },
                    };
                    return Ok(n);
                }
            }
        }
    }
}

/// Writes `data` as one chunk of a chunked body (nothing for empty data: an empty chunk ends the body).
pub(crate) fn chunk(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The last chunk and an empty trailer section.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Copies a body from `src` to `dst` in the same framing (chunks re-cut, trailers dropped).
pub(crate) fn relay_body(framing: Framing, src: &mut impl BufRead, dst: &mut impl Write) -> io::Result<u64> {
    let mut body = BodyReader::new(framing, src);
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        match framing {
            Framing::Chunked => dst.write_all(&chunk(&buf[..n]))?,
            _ => dst.write_all(&buf[..n])?,
        }
    }
    if framing == Framing::Chunked {
        dst.write_all(LAST_CHUNK)?;
    }
    dst.flush()?;
    Ok(total)
}

/// Whether `target` is a blob download path: `/v2/<name>/blobs/sha256:<hex>` (query ignored).
pub(crate) fn is_blob_path(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    path.strip_prefix("/v2/")
        .and_then(|rest| rest.rsplit_once("/blobs/"))
        .is_some_and(|(name, digest)| !name.is_empty() && digest.starts_with("sha256:") && !digest.contains('/'))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_heads_and_keeps_the_rest() {
        let mut r = Cursor::new(b"\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\nRange:  bytes=0-1 \r\n\r\nrest".to_vec());
        let head = Head::read(&mut r).expect("valid").expect("a head");
        assert_eq!(head.start_line, "GET /v2/ HTTP/1.1");
        assert_eq!(head.header("range"), Some("bytes=0-1"));
        assert_eq!(head.to_bytes(), b"GET /v2/ HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n");
        let mut rest = String::new();
        r.read_to_string(&mut rest).expect("read");
        assert_eq!(rest, "rest");
        assert_eq!(Head::read(&mut Cursor::new(Vec::new())).expect("eof"), None);
    }

    #[test]
    fn rejects_bad_heads() {
        for raw in [
            &b"GET / HTTP/1.1\r\nno colon\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"GET / HTTP/1.1\r\nA b: c\r\n\r\n",
        ] {
            assert!(Head::read(&mut Cursor::new(raw.to_vec())).is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(Head::read(&mut Cursor::new(huge.into_bytes())).is_err());
        assert!(RequestLine::parse("GET http://x/ HTTP/1.1").is_err());
        assert!(RequestLine::parse("GET / HTTP/2").is_err());
        assert!(RequestLine::parse("GET /v2/ HTTP/1.1").is_ok());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let head = |h: &[(&str, &str)]| Head {
            start_line: "HTTP/1.1 200 OK".into(),
            headers: h.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let len = head(&[("Content-Length", "10")]);
        assert_eq!(Framing::of_response("GET", 200, &len).expect("ok"), Framing::Length(10));
        assert_eq!(Framing::of_response("HEAD", 200, &len).expect("ok"), Framing::Empty);
        assert_eq!(Framing::of_response("GET", 304, &len).expect("ok"), Framing::Empty);
        let chunked = head(&[("Content-Length", "10"), ("transfer-encoding", "gzip, Chunked")]);
        assert_eq!(Framing::of_response("GET", 200, &chunked).expect("ok"), Framing::Chunked);
        assert_eq!(Framing::of_response("GET", 200, &head(&[])).expect("ok"), Framing::UntilEof);
        assert_eq!(Framing::of_request(&head(&[])).expect("ok"), Framing::Empty);
        assert!(Framing::of_request(&head(&[("Content-Length", "-1")])).is_err());
    }

    #[test]
    fn decodes_and_reencodes_chunked_bodies() {
        let raw = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut src = Cursor::new(raw.to_vec());
        let mut payload = Vec::new();
        BodyReader::new(Framing::Chunked, &mut src).read_to_end(&mut payload).expect("valid");
        assert_eq!(payload, b"hello, world");
        let mut rest = Vec::new();
        src.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, b"NEXT", "reading stops at the end of the body");

        let mut out = Vec::new();
        relay_body(Framing::Chunked, &mut Cursor::new(raw.to_vec()), &mut out).expect("relay");
        let mut again = Vec::new();
        BodyReader::new(Framing::Chunked, &mut Cursor::new(out)).read_to_end(&mut again).expect("valid");
        assert_eq!(again, b"hello, world");
    }

    #[test]
    fn short_and_bad_bodies_are_errors() {
        let mut p = Vec::new();
        let short = BodyReader::new(Framing::Length(10), &mut Cursor::new(b"12345".to_vec())).read_to_end(&mut p);
        assert_eq!(short.expect_err("short").kind(), io::ErrorKind::UnexpectedEof);
        for raw in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"5\r\nhel"] {
            let r = BodyReader::new(Framing::Chunked, &mut Cursor::new(raw.to_vec())).read_to_end(&mut Vec::new());
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
        let mut exact = Cursor::new(b"12345NEXT".to_vec());
        let mut body = Vec::new();
        BodyReader::new(Framing::Length(5), &mut exact).read_to_end(&mut body).expect("valid");
        assert_eq!(body, b"12345");
    }

    #[test]
    fn recognizes_blob_paths() {
        assert!(is_blob_path("/v2/repo/blobs/sha256:abcd"));
        assert!(is_blob_path("/v2/org/repo/blobs/sha256:abcd?x=1"));
        assert!(!is_blob_path("/v2/repo/blobs/uploads/uuid"));
        assert!(!is_blob_path("/v2/repo/manifests/sha256:abcd"));
        assert!(!is_blob_path("/v2//blobs/sha256:abcd"));
    }
}
