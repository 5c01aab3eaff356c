//! JSON answers to malformed HTTP/1 request heads.
//!
//! hyper's HTTP/1 parser answers a head it cannot parse (too large: 431, target too long: 414,
//! a bad request line or header, `Content-Length: -1`: 400) with a bare status and no body,
//! written from inside hyper where no service sees it. Two ways around that were weighed:
//!
//! - Rewriting hyper's output: a wrapper would have to recognise hyper's bodiless answer in the
//!   byte stream it writes. Those bytes can also be the tail of an ordinary answer (an event's
//!   data read back can contain anything), and telling them apart needs the framing of every
//!   answer, including the bodiless answers to HEAD. Fragile.
//! - Checking each head before hyper sees it (this module): the gate follows the request framing
//!   (head, then a `Content-Length` or chunked body, then the next head) and holds back the
//!   bytes of a head until it is complete and valid, by the same rules and with the same parser
//!   (`httparse`) as hyper, and with tighter size limits than hyper's. hyper therefore never
//!   sees a head it would refuse: instead the gate ends the input there (hyper finishes the
//!   answers to the requests before it, with half-close on) and writes a JSON error before the
//!   connection is shut down. If the gate ever cannot follow the framing (an upgrade, a chunked
//!   body hyper will refuse anyway, HTTP/2, a connection that will close after its request), it
//!   steps aside and hyper alone decides, so the worst case is today's bare status.

/// Bytes of a request head (request line and headers) at most; beyond that, 431.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes of a request target at most; beyond that, 414.
pub(crate) const MAX_TARGET_BYTES: usize = 16 * 1024;
/// Header fields at most (hyper's own default); beyond that, 431.
const MAX_HEADERS: usize = 100;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a head was refused; the JSON answer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    HeadTooLarge,
    TargetTooLong,
    Malformed(&'static str),
}

impl Refusal {
    /// The whole HTTP/1.1 answer: status line, headers and `{"error","message"}` body.
    pub(crate) fn response(self) -> Vec<u8> {
        let (status, reason, code, message) = match self {
            Refusal::HeadTooLarge => (
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                format!(
                    "the request head is larger than {MAX_HEAD_BYTES} bytes or has more than \
                     {MAX_HEADERS} header fields"
                ),
            ),
            Refusal::TargetTooLong => (
                414,
                "URI Too Long",
                "uri_too_long",
                format!("the request target is longer than {MAX_TARGET_BYTES} bytes"),
            ),
            Refusal::Malformed(what) => (
                400,
                "Bad Request",
                "malformed_request",
                format!("the request is not valid HTTP/1.1: {what}"),
            ),
        };
        let body = serde_json::json!({"error": code, "message": message}).to_string();
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first hex digit of a chunk size.
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head { first: bool },
    /// `remaining` bytes of a `Content-Length` body.
    Body { remaining: u64, then_close: bool },
    Chunked {
        at: Chunk,
        size: u64,
        extension_bytes: u64,
        then_close: bool,
    },
    /// The gate no longer follows the framing; hyper alone decides.
    Aside,
    /// A head was refused; nothing more goes to hyper.
    Refused(Refusal),
}

/// What [`HeadGate::scan`] found in a slice of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Bytes from the start of the slice that hyper may have.
    pub(crate) pass: usize,
    /// The bytes after `pass` are an incomplete head, to hold until more arrive.
    pub(crate) hold: bool,
}

/// Follows the request framing of one HTTP/1 connection. See the module comment.
#[derive(Debug)]
pub(crate) struct HeadGate {
    state: State,
}

impl Default for HeadGate {
    fn default() -> Self {
        HeadGate {
            state: State::Head { first: true },
        }
    }
}

impl HeadGate {
    /// The refusal, once a head was refused.
    pub(crate) fn refused(&self) -> Option<Refusal> {
        match self.state {
            State::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }

    /// Whether the gate stepped aside (every byte passes from now on).
    pub(crate) fn is_aside(&self) -> bool {
        self.state == State::Aside
    }

    /// [`HeadGate::scan`] for held bytes of an incomplete head with more after them, from
    /// `new_from` on. A head can only end at a newline: without one among the new bytes only
    /// the size limits are checked, so a head trickling in a byte at a time is not parsed again
    /// at every byte.
    pub(crate) fn scan_more(&mut self, bytes: &[u8], new_from: usize) -> Scan {
        let new = bytes.get(new_from..).unwrap_or_default();
        if matches!(self.state, State::Head { .. }) && !new.contains(&b'\n') {
            if bytes.len() > MAX_HEAD_BYTES {
                self.state = State::Refused(Refusal::HeadTooLarge);
                return Scan {
                    pass: 0,
                    hold: false,
                };
            }
            if request_line_too_long(bytes) {
                self.state = State::Refused(Refusal::TargetTooLong);
                return Scan {
                    pass: 0,
                    hold: false,
                };
            }
            return Scan {
                pass: 0,
                hold: true,
            };
        }
        self.scan(bytes)
    }

    /// Scans `bytes`, which start where the last scan's `pass` ended. After a `hold`, the next
    /// call gets the held bytes again with more after them (see [`HeadGate::scan_more`]).
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> Scan {
        let mut at = 0;
        loop {
            match self.state {
                State::Aside => {
                    return Scan {
                        pass: bytes.len(),
                        hold: false,
                    };
                }
                State::Refused(_) => {
                    return Scan {
                        pass: at,
                        hold: false,
                    };
                }
                _ if at == bytes.len() => {
                    return Scan {
                        pass: at,
                        hold: false,
                    };
                }
                State::Head { first } => match self.head(&bytes[at..], first) {
                    HeadStep::Complete(len) => at += len,
                    HeadStep::Partial => {
                        return Scan {
                            pass: at,
                            hold: true,
                        };
                    }
                    HeadStep::Stop => {}
                },
                State::Body {
                    remaining,
                    then_close,
                } => {
                    let available = (bytes.len() - at) as u64;
                    if remaining > available {
                        self.state = State::Body {
                            remaining: remaining - available,
                            then_close,
                        };
                        return Scan {
                            pass: bytes.len(),
                            hold: false,
                        };
                    }
                    // `remaining` fits in the slice, so in a usize.
                    at += usize::try_from(remaining).unwrap_or(bytes.len() - at);
                    self.state = after_body(then_close);
                }
                State::Chunked { .. } => {
                    at += self.chunked(&bytes[at..]);
                }
            }
        }
    }

    fn head(&mut self, bytes: &[u8], first: bool) -> HeadStep {
        if first && bytes.len() >= H2_PREFACE.len().min(3) {
            let n = bytes.len().min(H2_PREFACE.len());
            if bytes[..n] == H2_PREFACE[..n] {
                if n == H2_PREFACE.len() {
                    self.state = State::Aside;
                    return HeadStep::Stop;
                }
                return HeadStep::Partial;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = httparse::ParserConfig::default().parse_request(&mut request, bytes);
        match parsed {
            Ok(httparse::Status::Partial) => {
                if bytes.len() > MAX_HEAD_BYTES {
                    return self.refuse(Refusal::HeadTooLarge);
                }
                if request_line_too_long(bytes) {
                    return self.refuse(Refusal::TargetTooLong);
                }
                HeadStep::Partial
            }
            Ok(httparse::Status::Complete(len)) => {
                // The same limits as while the head was arriving, so that how it arrived
                // never decides whether it passes.
                if len > MAX_HEAD_BYTES {
                    return self.refuse(Refusal::HeadTooLarge);
                }
                if request_line_too_long(bytes) {
                    return self.refuse(Refusal::TargetTooLong);
                }
                match framing(&request) {
                    Ok(state) => {
                        self.state = state;
                        HeadStep::Complete(len)
                    }
                    Err(refusal) => self.refuse(refusal),
                }
            }
            Err(httparse::Error::TooManyHeaders) => self.refuse(Refusal::HeadTooLarge),
            Err(httparse::Error::Version) => self.refuse(Refusal::Malformed(
                "the request line must end in HTTP/1.0 or HTTP/1.1",
            )),
            Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
                self.refuse(Refusal::Malformed("a header field is malformed"))
            }
            Err(_) => self.refuse(Refusal::Malformed("the request line is malformed")),
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> HeadStep {
        self.state = State::Refused(refusal);
        HeadStep::Stop
    }

    /// Follows a chunked body as hyper's decoder does; returns the bytes it went through. On a
    /// framing error hyper fails the body itself, so the gate steps aside.
    fn chunked(&mut self, bytes: &[u8]) -> usize {
        let State::Chunked {
            mut at,
            mut size,
            mut extension_bytes,
            then_close,
        } = self.state
        else {
            return 0;
        };
        let mut i = 0;
        while i < bytes.len() {
            if at == Chunk::Data {
                let available = (bytes.len() - i) as u64;
                if size > available {
                    size -= available;
                    i = bytes.len();
                    break;
                }
                i += usize::try_from(size).unwrap_or(bytes.len() - i);
                size = 0;
                at = Chunk::DataCr;
                continue;
            }
            let byte = bytes[i];
            i += 1;
            let next = match (at, byte) {
                (Chunk::Start | Chunk::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = match byte {
                        b'0'..=b'9' => byte - b'0',
                        b'a'..=b'f' => byte - b'a' + 10,
                        _ => byte - b'A' + 10,
                    };
                    match size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(digit)))
                    {
                        Some(grown) => {
                            size = grown;
                            Some(Chunk::Size)
                        }
                        None => None,
                    }
                }
                (Chunk::Size | Chunk::SizeLws, b'\t' | b' ') => Some(Chunk::SizeLws),
                (Chunk::Size | Chunk::SizeLws, b';') => Some(Chunk::Extension),
                (Chunk::Size | Chunk::SizeLws | Chunk::Extension, b'\r') => Some(Chunk::SizeLf),
                (Chunk::Extension, b'\n') => None,
                (Chunk::Extension, _) => {
                    extension_bytes += 1;
                    // hyper's limit on the bytes of chunk extensions.
                    (extension_bytes < 16 * 1024).then_some(Chunk::Extension)
                }
                (Chunk::SizeLf, b'\n') if size == 0 => Some(Chunk::EndCr),
                (Chunk::SizeLf, b'\n') => Some(Chunk::Data),
                (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
                (Chunk::DataLf, b'\n') => {
                    size = 0;
                    extension_bytes = 0;
                    Some(Chunk::Start)
                }
                (Chunk::EndCr, b'\r') | (Chunk::TrailerLf, b'\n') => Some(match at {
                    Chunk::EndCr => Chunk::EndLf,
                    _ => Chunk::EndCr,
                }),
                (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
                (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
                (Chunk::EndLf, b'\n') => {
                    self.state = after_body(then_close);
                    return i;
                }
                _ => None,
            };
            match next {
                Some(next) => at = next,
                None => {
                    self.state = State::Aside;
                    return bytes.len();
                }
            }
        }
        self.state = State::Chunked {
            at,
            size,
            extension_bytes,
            then_close,
        };
        i
    }
}

enum HeadStep {
    /// A valid head of this many bytes; the state is its body's.
    Complete(usize),
    /// More bytes are needed.
    Partial,
    /// The state changed to refused or aside.
    Stop,
}

/// A request line this long holds a target too long, whatever follows it.
fn request_line_too_long(head: &[u8]) -> bool {
    let line = head
        .iter()
        .skip_while(|byte| matches!(byte, b'\r' | b'\n'))
        .take_while(|byte| **byte != b'\n')
        .count();
    line > MAX_TARGET_BYTES + 64
}

fn after_body(then_close: bool) -> State {
    // hyper reads no further head on a connection that closes after this request; neither do we.
    if then_close {
        State::Aside
    } else {
        State::Head { first: false }
    }
}

/// The body framing of a complete head, by hyper's rules (RFC 9112 section 6.3 for requests).
fn framing(request: &httparse::Request<'_, '_>) -> Result<State, Refusal> {
    let path = request.path.unwrap_or_default();
    if path.len() > MAX_TARGET_BYTES {
        return Err(Refusal::TargetTooLong);
    }
    if http::Uri::try_from(path).is_err() {
        return Err(Refusal::Malformed("the request target is not a valid URI"));
    }
    let http11 = request.version == Some(1);
    let mut keep_alive = http11;
    let mut saw_close = false;
    let mut upgrade = request.method == Some("CONNECT");
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut content_length: Option<u64> = None;
    let mut has_content_length = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err(Refusal::Malformed(
                    "Transfer-Encoding is not allowed in HTTP/1.0",
                ));
            }
            transfer_encoding = true;
            content_length = None;
            chunked = is_chunked(header.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            has_content_length = true;
            if transfer_encoding {
                continue;
            }
            let Some(length) = digits(header.value) else {
                return Err(Refusal::Malformed(
                    "Content-Length must be a whole number of bytes",
                ));
            };
            match content_length {
                Some(previous) if previous != length => {
                    return Err(Refusal::Malformed("Content-Length headers disagree"));
                }
                _ => content_length = Some(length),
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if saw_close || has_token(header.value, "close") {
                saw_close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has_token(header.value, "keep-alive");
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = http11;
        }
    }
    if transfer_encoding && !chunked {
        return Err(Refusal::Malformed("Transfer-Encoding must end in chunked"));
    }
    if transfer_encoding && has_content_length {
        keep_alive = false;
    }
    if upgrade {
        // What follows an upgrade is not HTTP/1; hyper decides what to do with it.
        return Ok(State::Aside);
    }
    let then_close = !keep_alive;
    if chunked {
        return Ok(State::Chunked {
            at: Chunk::Start,
            size: 0,
            extension_bytes: 0,
            then_close,
        });
    }
    match content_length {
        // hyper refuses the two largest values as its own markers.
        Some(length) if length >= u64::MAX - 1 => {
            Err(Refusal::Malformed("Content-Length is too large"))
        }
        Some(length) => Ok(State::Body {
            remaining: length,
            then_close,
        }),
        None => Ok(after_body(then_close)),
    }
}

/// A header value as `http::HeaderValue::to_str` reads it: visible ASCII, spaces and tabs.
fn text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|byte| *byte == b'\t' || (0x20..0x7f).contains(byte))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

fn is_chunked(value: &[u8]) -> bool {
    text(value)
        .and_then(|text| text.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

fn has_token(value: &[u8], token: &str) -> bool {
    text(value).is_some_and(|text| {
        text.split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

/// Decimal digits only, as hyper reads `Content-Length` (no sign, no spaces, no empty value).
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, byte| match byte {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(byte - b'0')),
        _ => None,
    })
}

/// Runs the gate over `data` fed in one piece and in pieces cut at `cuts`, panicking if what
/// passes, whether a head is refused, or whether the gate steps aside depends on the cuts, or
/// if more passes than came. (Which refusal may depend on them: a head both malformed and too
/// long is refused for whichever shows first.) For the `head_gate` fuzz target.
pub fn fuzz_head_gate(data: &[u8], cuts: &[u8]) {
    let whole = feed(data, &[]);
    let pieces = feed(data, cuts);
    assert_eq!(
        whole.0, pieces.0,
        "what passes depends on how the input was cut"
    );
    assert_eq!(
        whole.1.is_some(),
        pieces.1.is_some(),
        "whether a head is refused depends on how the input was cut"
    );
    assert_eq!(whole.2, pieces.2, "stepping aside depends on the cuts");
    assert!(whole.0 <= data.len());
}

/// Feeds `data` as a connection would, cut where `cuts` say; returns the bytes passed and the
/// refusal.
fn feed(data: &[u8], cuts: &[u8]) -> (usize, Option<Refusal>, bool) {
    let mut gate = HeadGate::default();
    let mut held: Vec<u8> = Vec::new();
    let mut passed = 0;
    let mut rest = data;
    let mut cuts = cuts.iter();
    while !rest.is_empty() && gate.refused().is_none() {
        let take = cuts
            .next()
            .map_or(rest.len(), |cut| usize::from(*cut).clamp(1, rest.len()));
        let (piece, after) = rest.split_at(take);
        rest = after;
        let new_from = held.len();
        held.extend_from_slice(piece);
        let scan = if new_from == 0 {
            gate.scan(&held)
        } else {
            gate.scan_more(&held, new_from)
        };
        passed += scan.pass;
        held.drain(..scan.pass);
        if !scan.hold {
            held.clear();
        }
    }
    // A held head is parsed again at its next newline; at the end of the input, parse it now,
    // as that newline would.
    if !held.is_empty() && gate.refused().is_none() {
        passed += gate.scan(&held).pass;
    }
    (passed, gate.refused(), gate.is_aside())
}

#[cfg(test)]
mod tests;
