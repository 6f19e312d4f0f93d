//! One client connection: read a request, pick its fault, forward it on a fresh upstream connection (or
//! answer it locally), and send the response back paced by the shared link, as many times as the client
//! keeps the connection alive.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use super::fault::FaultKind;
use super::http::{chunk, is_blob_path, relay_body, BodyReader, Framing, Head, RequestLine, LAST_CHUNK};
use super::{lock, ProxyError, RequestRecord, Shared, Slot};

/// What to do with the client connection after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    KeepAlive,
    /// Close cleanly (FIN).
    Close,
    /// Reset (RST).
    Reset,
}

/// Serves one client connection until it closes, errs, or the proxy stops.
pub(super) fn serve(client: TcpStream, shared: &Shared) {
    let peer = client.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let _ = client.set_nodelay(true);
    let _guard = shared.track(&client);
    shared.update(|s| s.connections += 1);
    let mut writer = match client.try_clone() {
        Ok(w) => w,
        Err(error) => {
            tracing::warn!(%error, "cannot clone a client socket");
            return;
        }
    };
    let mut reader = BufReader::new(client);
    loop {
        match serve_one(shared, &peer, &mut reader, &mut writer) {
            Ok(After::KeepAlive) => continue,
            Ok(After::Close) => {
                let _ = writer.flush();
                let _ = writer.shutdown(Shutdown::Write);
            }
            Ok(After::Reset) => {
                // SO_LINGER 0: closing sends RST instead of FIN.
                let _ = socket2::SockRef::from(&writer).set_linger(Some(Duration::ZERO));
            }
            Err(error) => tracing::debug!(%error, "proxy connection ended"),
        }
        return;
    }
}

/// Handles one request on the connection.
fn serve_one(
    shared: &Shared,
    peer: &str,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<After, ProxyError> {
    let client_err = |source| ProxyError::Client { peer: peer.to_owned(), source };
    let head = match Head::read(reader) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(After::Close),
        Err(e) => return bad_request(shared, writer, e).map_err(client_err),
    };
    let (line, request_framing) =
        match RequestLine::parse(&head.start_line).and_then(|l| Ok((l, Framing::of_request(&head)?))) {
            Ok(parsed) => parsed,
            Err(e) => return bad_request(shared, writer, e).map_err(client_err),
        };
    let range = head.header("Range").map(str::to_owned);
    let is_blob = line.method == "GET" && is_blob_path(&line.target);
    let fault = lock(&shared.faults).pick(&line.target, is_blob);
    let keep_alive = if line.version == "HTTP/1.0" {
        head.has_token("Connection", "keep-alive")
    } else {
        !head.has_token("Connection", "close")
    };
    let record = RequestRecord {
        method: line.method.clone(),
        path: line.target.clone(),
        range: range.clone(),
        status: 0,
        body_bytes: 0,
        fault: fault.as_ref().map(FaultKind::name),
    };
    let slot = shared.begin(&record, |s| {
        s.requests += 1;
        s.blob_requests += u64::from(is_blob);
        s.range_requests += u64::from(range.is_some());
        s.faults_injected += u64::from(fault.is_some());
    });
    let mut ex = Exchange { shared, writer, is_blob, record, slot };
    std::thread::sleep(shared.rtt / 2);

    if fault == Some(FaultKind::Blackhole) {
        let _ = BodyReader::new(request_framing, reader).drain();
        shared.finish(&ex.record);
        // Never answer: wait for the client to give up (or the proxy to stop).
        let _ = io::copy(reader, &mut io::sink());
        return Ok(After::Close);
    }
    if fault == Some(FaultKind::EndlessBody) {
        let _ = BodyReader::new(request_framing, reader).drain();
        let outcome = endless(&mut ex).map_err(client_err);
        shared.finish(&ex.record);
        return outcome;
    }
    let request = Request { line, head, framing: request_framing, fault, keep_alive };
    let outcome = match request.fault.as_ref().and_then(|kind| local_response(shared, kind, &request.line.target)) {
        Some(local) => match BodyReader::new(request.framing, reader).drain() {
            Ok(_) => ex.respond(local.status, &local.headers, &local.body, keep_alive).map_err(client_err),
            Err(e) => Err(client_err(e)),
        },
        None => forward(&mut ex, request, reader, peer),
    };
    shared.finish(&ex.record);
    outcome
}

/// A parsed request and what the proxy decided about it.
struct Request {
    line: RequestLine,
    head: Head,
    framing: Framing,
    fault: Option<FaultKind>,
    keep_alive: bool,
}

/// The request in flight: where the response goes, and what is recorded about it.
struct Exchange<'a> {
    shared: &'a Shared,
    writer: &'a mut TcpStream,
    is_blob: bool,
    record: RequestRecord,
    slot: Slot,
}

impl Exchange<'_> {
    /// Sends bytes to the client, paced by the link, in pieces of the chunk size.
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        for piece in data.chunks(self.shared.chunk_size) {
            self.shared.link.pace(piece.len());
            self.shared.update(|s| s.bytes += piece.len() as u64);
            self.writer.write_all(piece)?;
        }
        Ok(())
    }

    /// Sends body payload (as one chunk when the body is chunked) and counts it.
    fn send_body(&mut self, payload: &[u8], chunked: bool) -> io::Result<()> {
        let n = payload.len() as u64;
        self.record.body_bytes += n;
        let is_blob = self.is_blob;
        self.shared.account(self.slot, &self.record, |s| s.blob_bytes += if is_blob { n } else { 0 });
        if chunked {
            self.send(&chunk(payload))
        } else {
            self.send(payload)
        }
    }

    /// Records the status sent to the client.
    fn set_status(&mut self, status: u16) {
        self.record.status = status;
        self.shared.account(self.slot, &self.record, |_| {});
    }

    /// Sends a whole response made by the proxy itself, after the second half of the rtt.
    fn respond(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
        keep_alive: bool,
    ) -> io::Result<After> {
        std::thread::sleep(self.shared.rtt / 2);
        let mut head = Head { start_line: format!("HTTP/1.1 {status} {}", reason(status)), headers: headers.to_vec() };
        head.headers.push(("Content-Length".into(), body.len().to_string()));
        if !keep_alive {
            head.headers.push(("Connection".into(), "close".into()));
        }
        self.set_status(status);
        self.send(&head.to_bytes())?;
        if !body.is_empty() {
            self.send_body(body, false)?;
        }
        Ok(if keep_alive { After::KeepAlive } else { After::Close })
    }
}

/// Sends a `200 OK` whose chunked body never ends (see [`FaultKind::EndlessBody`]).
fn endless(ex: &mut Exchange<'_>) -> io::Result<After> {
    const MAX_BYTES: u64 = 64 << 30;
    const MAX_TIME: Duration = Duration::from_secs(600);
    std::thread::sleep(ex.shared.rtt / 2);
    let head = Head {
        start_line: "HTTP/1.1 200 OK".into(),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Transfer-Encoding".into(), "chunked".into()),
        ],
    };
    ex.set_status(200);
    ex.send(&head.to_bytes())?;
    let blanks = vec![b' '; 64 << 10];
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    while sent < MAX_BYTES && started.elapsed() < MAX_TIME && !ex.shared.stopping() {
        ex.send_body(&blanks, true)?;
        sent += blanks.len() as u64;
    }
    Ok(After::Close)
}

/// Forwards the request upstream and relays the response, applying its fault.
fn forward(
    ex: &mut Exchange<'_>,
    request: Request,
    reader: &mut BufReader<TcpStream>,
    peer: &str,
) -> Result<After, ProxyError> {
    let Request { line, mut head, framing: request_framing, fault, keep_alive } = request;
    let fault = fault.as_ref();
    let shared = ex.shared;
    let client_err = |source| ProxyError::Client { peer: peer.to_owned(), source };
    let upstream_err = |source| ProxyError::Upstream { addr: shared.upstream.clone(), source };
    if fault == Some(&FaultKind::IgnoreRange) {
        head.remove("Range");
    }
    let upstream = match connect(shared) {
        Ok(s) => s,
        Err(e) => {
            let _ = BodyReader::new(request_framing, reader).drain();
            return bad_gateway(ex, &upstream_err(e), keep_alive).map_err(client_err);
        }
    };
    let _guard = shared.track(&upstream);
    let mut up_reader = BufReader::new(upstream.try_clone().map_err(upstream_err)?);

    // The request: head as received (less Range for IgnoreRange), body in its own framing. When this
    // fails the client's body may be half read, so its connection cannot be reused.
    let sent = (|| {
        let mut up_writer = BufWriter::with_capacity(64 << 10, &upstream);
        up_writer.write_all(&head.to_bytes())?;
        relay_body(request_framing, reader, &mut up_writer)?;
        up_writer.flush()
    })();
    if let Err(error) = &sent {
        tracing::debug!(%error, "forwarding the request body failed");
    }

    // The response head; interim 1xx heads are passed on as they come.
    let response = loop {
        let head = match Head::read(&mut up_reader).and_then(|h| h.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())) {
            Ok(h) => h,
            Err(e) => return bad_gateway(ex, &upstream_err(e), false).map_err(client_err),
        };
        let status = match head.status() {
            Ok(s) => s,
            Err(e) => return bad_gateway(ex, &upstream_err(e), false).map_err(client_err),
        };
        if (100..200).contains(&status) && status != 101 {
            ex.send(&head.to_bytes()).map_err(client_err)?;
            continue;
        }
        break (head, status);
    };
    let (response, status) = response;
    let framing = match Framing::of_response(&line.method, status, &response) {
        Ok(f) => f,
        Err(e) => return bad_gateway(ex, &upstream_err(e), false).map_err(client_err),
    };

    std::thread::sleep(shared.rtt / 2);
    if let Some(FaultKind::DelayFirstByte(delay)) = fault {
        std::thread::sleep(*delay);
    }
    ex.set_status(status);
    ex.send(&response.to_bytes()).map_err(client_err)?;

    let limit = match fault {
        Some(
            FaultKind::ResetMidBody { after_bytes }
            | FaultKind::TruncateBody { after_bytes }
            | FaultKind::StallAfter { after_bytes },
        ) => Some(*after_bytes),
        _ => None,
    };
    let trickle = match fault {
        Some(FaultKind::Trickle { bytes, every }) => Some(((*bytes).max(1), *every)),
        _ => None,
    };
    let flip = match fault {
        Some(FaultKind::FlipBit { offset }) => Some(*offset),
        _ => None,
    };
    let mut body = BodyReader::new(framing, &mut up_reader);
    let mut buf = vec![0u8; shared.chunk_size];
    let mut done = 0u64;
    loop {
        let mut want = match limit {
            Some(limit) => buf.len().min(usize::try_from(limit - done).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        if let Some((bytes, every)) = trickle {
            want = want.min(bytes);
            std::thread::sleep(every);
            if shared.stopping() {
                return Ok(After::Close);
            }
        }
        if want == 0 {
            break;
        }
        let n = match body.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                // The head is out: the client can only learn of the failure by the connection closing.
                tracing::debug!(error = %upstream_err(e), "upstream body failed; closing the client connection");
                return Ok(After::Close);
            }
        };
        if let Some(at) = flip.and_then(|off| off.checked_sub(done)).filter(|at| *at < n as u64) {
            buf[at as usize] ^= 1;
        }
        ex.send_body(&buf[..n], framing == Framing::Chunked).map_err(client_err)?;
        done += n as u64;
    }
    match fault {
        Some(FaultKind::ResetMidBody { .. }) => return Ok(After::Reset),
        Some(FaultKind::TruncateBody { .. }) => return Ok(After::Close),
        Some(FaultKind::StallAfter { .. }) => {
            // Hold the connection open, silent, until the client hangs up (or the proxy stops).
            let _ = io::copy(reader, &mut io::sink());
            return Ok(After::Close);
        }
        _ => {}
    }
    if framing == Framing::Chunked {
        ex.send(LAST_CHUNK).map_err(client_err)?;
    }
    let reusable =
        keep_alive && sent.is_ok() && framing != Framing::UntilEof && !response.has_token("Connection", "close");
    Ok(if reusable { After::KeepAlive } else { After::Close })
}

fn connect(shared: &Shared) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(&shared.upstream)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(shared.upstream_timeout))?;
    stream.set_write_timeout(Some(shared.upstream_timeout))?;
    Ok(stream)
}

/// A response the proxy makes itself.
struct LocalResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The response to a fault the proxy answers itself (`None` for faults applied to a
/// forwarded request).
fn local_response(shared: &Shared, kind: &FaultKind, target: &str) -> Option<LocalResponse> {
    let json = |code: &str, status: u16| {
        let message = format!("injected by clip-proxy: {status} {}", reason(status));
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string().into_bytes();
        (vec![("Content-Type".to_owned(), "application/json".to_owned())], body)
    };
    match kind {
        FaultKind::TooManyRequests { retry_after_secs } => {
            let (mut headers, body) = json("TOOMANYREQUESTS", 429);
            headers.push(("Retry-After".into(), retry_after_secs.to_string()));
            Some(LocalResponse { status: 429, headers, body })
        }
        FaultKind::Unauthorized => {
            let (mut headers, body) = json("UNAUTHORIZED", 401);
            if let Some(challenge) = bearer_challenge(&shared.upstream) {
                headers.push(("WWW-Authenticate".into(), challenge));
            }
            Some(LocalResponse { status: 401, headers, body })
        }
        FaultKind::BearerChallenge => {
            let (mut headers, body) = json("UNAUTHORIZED", 401);
            let challenge = format!("Bearer realm=\"http://{}/token\",service=\"clip-proxy\"", shared.addr);
            headers.push(("WWW-Authenticate".into(), challenge));
            Some(LocalResponse { status: 401, headers, body })
        }
        FaultKind::Redirect { to } => Some(LocalResponse {
            status: 307,
            headers: vec![("Location".into(), format!("http://{to}{target}"))],
            body: Vec::new(),
        }),
        FaultKind::Status(status) => {
            let (headers, body) = json("UNKNOWN", *status);
            Some(LocalResponse { status: *status, headers, body })
        }
        FaultKind::ResetMidBody { .. }
        | FaultKind::TruncateBody { .. }
        | FaultKind::DelayFirstByte(_)
        | FaultKind::FlipBit { .. }
        | FaultKind::IgnoreRange
        | FaultKind::Blackhole
        | FaultKind::EndlessBody
        | FaultKind::Trickle { .. }
        | FaultKind::StallAfter { .. } => None,
    }
}

/// The upstream's `WWW-Authenticate` challenge for `GET /v2/`, when it is a Bearer one.
fn bearer_challenge(upstream: &str) -> Option<String> {
    let response = crate::registry::http_get(upstream, "/v2/", &[]).ok()?;
    let challenge = response.header("WWW-Authenticate")?;
    challenge.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer ")).then(|| challenge.to_owned())
}

/// Answers 400 to a request the proxy cannot parse, and closes the connection.
fn bad_request(shared: &Shared, writer: &mut TcpStream, error: io::Error) -> io::Result<After> {
    tracing::debug!(%error, "malformed request");
    let body = format!("clip-proxy: malformed request: {error}\n");
    let head = format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    writer.write_all(head.as_bytes())?;
    writer.write_all(body.as_bytes())?;
    shared.update(|s| s.bytes += (head.len() + body.len()) as u64);
    Ok(After::Close)
}

/// Answers 502 when the upstream cannot be reached or answers garbage.
fn bad_gateway(ex: &mut Exchange<'_>, error: &ProxyError, keep_alive: bool) -> io::Result<After> {
    tracing::debug!(%error, "upstream failed");
    let body = format!("clip-proxy: {error}\n").into_bytes();
    ex.respond(502, &[("Content-Type".into(), "text/plain".into())], &body, keep_alive)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}
