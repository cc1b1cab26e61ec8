//! The STOMP 1.2 frame codec: pure functions over bytes, no I/O.
//!
//! [`parse`] asks "is a whole frame (or a heart-beat) at the front of this buffer?" and
//! answers [`Parsed::Incomplete`] when it needs more bytes; only input that can never
//! become a valid frame is an error. [`Frame::encode`] writes a frame back out.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// A STOMP command, client or server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Client: open a session.
    Connect,
    /// Client: the STOMP 1.2 synonym of CONNECT.
    Stomp,
    /// Server: the session is open.
    Connected,
    /// Client: publish to a destination.
    Send,
    /// Client: start receiving from a destination.
    Subscribe,
    /// Client: stop receiving.
    Unsubscribe,
    /// Client: acknowledge a message.
    Ack,
    /// Client: reject a message (it is redelivered).
    Nack,
    /// Client: start a transaction.
    Begin,
    /// Client: commit a transaction.
    Commit,
    /// Client: abort a transaction.
    Abort,
    /// Client: close the session.
    Disconnect,
    /// Server: a message for a subscription.
    Message,
    /// Server: a frame that asked for a receipt was processed.
    Receipt,
    /// Server: something went wrong; the connection closes after it.
    Error,
}

impl Command {
    /// Every command, in the order of the specification.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Connected,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command's name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    fn from_bytes(name: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str().as_bytes() == name)
    }

    /// CONNECT, STOMP and CONNECTED frames carry their headers unescaped (spec, "Value Encoding").
    fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame: a command, ordered headers and a body.
///
/// Headers keep their wire order, repeats included; [`Frame::header`] returns the first
/// value of a repeated header, as STOMP 1.2 requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// Headers in wire order.
    pub headers: Vec<(String, String)>,
    /// The body, possibly binary.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The first value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Replaces every value of header `name` with one.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_owned(), value.into()));
    }

    /// An ERROR frame whose `message` header is `message` and whose body explains more.
    pub fn error(message: impl Into<String>, detail: impl Into<String>) -> Frame {
        let detail: String = detail.into();
        Frame::new(Command::Error)
            .with_header("message", one_line(&message.into()))
            .with_header("content-type", "text/plain")
            .with_body(detail)
    }

    /// Writes the frame in wire form.
    ///
    /// A non-empty body gets a `content-length` header when the frame has none, so bodies
    /// that contain NUL bytes survive; a `content-length` already present is rewritten to the
    /// body's real length.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len_hint());
        encode_parts(
            dst,
            self.command,
            self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &self.body,
        );
    }

    /// The frame in wire form, as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }

    fn encoded_len_hint(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum();
        self.command.as_str().len() + headers + self.body.len() + 32
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// A frame from its parts, as [`Frame::encode`] writes it, without making a [`Frame`]
/// (the journal writes one record per message this way, without copying its headers).
pub fn encode_parts<'a>(
    dst: &mut BytesMut,
    command: Command,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    body: &[u8],
) {
    let escape = command.escapes_headers();
    let mut length = itoa::Buffer::new();
    let length = length.format(body.len());
    dst.put_slice(command.as_str().as_bytes());
    dst.put_u8(b'\n');
    let mut wrote_length = false;
    for (name, value) in headers {
        if name == "content-length" {
            if wrote_length {
                continue;
            }
            wrote_length = true;
            put_header(dst, name, length, escape);
        } else {
            put_header(dst, name, value, escape);
        }
    }
    if !wrote_length && !body.is_empty() {
        put_header(dst, "content-length", length, escape);
    }
    dst.put_u8(b'\n');
    dst.put_slice(body);
    dst.put_u8(0);
}

fn put_header(dst: &mut impl BufMut, name: &str, value: &str, escape: bool) {
    if escape {
        put_escaped(dst, name);
        dst.put_u8(b':');
        put_escaped(dst, value);
    } else {
        // Unescaped frames cannot carry these bytes at all; dropping them beats corrupting the frame.
        put_without(dst, name, b"\r\n:");
        dst.put_u8(b':');
        put_without(dst, value, b"\r\n");
    }
    dst.put_u8(b'\n');
}

/// Writes `s` without the bytes in `dropped`, copying the runs between them whole (no
/// string is made: every MESSAGE's `content-length` is written this way).
fn put_without(dst: &mut impl BufMut, s: &str, dropped: &[u8]) {
    for run in s.as_bytes().split(|b| dropped.contains(b)) {
        dst.put_slice(run);
    }
}

fn put_escaped(dst: &mut impl BufMut, s: &str) {
    escaped_runs(s, |run| dst.put_slice(run.as_bytes()));
}

/// Hands `put` the pieces of `s` with STOMP's escapes: runs of ordinary text, whole,
/// and an escape for each of the four special bytes. Every piece is text: the special
/// bytes are ASCII, so `s` is cut only between characters.
fn escaped_runs(s: &str, mut put: impl FnMut(&str)) {
    let bytes = s.as_bytes();
    // Most values have none of the four special bytes: one look at all of them (a loop
    // without an early exit, which the compiler makes a vector loop), then one piece.
    let special = |b: u8| b == b'\\' || b == b'\n' || b == b'\r' || b == b':';
    if !bytes.iter().fold(false, |found, &b| found | special(b)) {
        put(s);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b':' => "\\c",
            _ => continue,
        };
        put(&s[start..i]);
        put(escaped);
        start = i + 1;
    }
    put(&s[start..]);
}

/// A frame in wire form: text when it was known to be UTF-8 where it was written, so
/// that a WebSocket sends it as a text message without reading it through again, and
/// bytes otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// A frame that is UTF-8 text.
    Text(String),
    /// A frame that may not be UTF-8 (its body is not, or it was not looked at).
    Bytes(Bytes),
}

impl Wire {
    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Wire::Text(text) => text.as_bytes(),
            Wire::Bytes(bytes) => bytes,
        }
    }

    /// The frame as a WebSocket library's text (`T`, its `Utf8Bytes`): [`Wire::Text`] as
    /// it is, bytes once they are found to be UTF-8; the bytes back when they are not, to
    /// go as a binary message.
    pub fn into_text<T: From<String> + TryFrom<Bytes>>(self) -> Result<T, Bytes> {
        match self {
            Wire::Text(text) => Ok(T::from(text)),
            Wire::Bytes(bytes) => T::try_from(bytes.clone()).map_err(|_| bytes),
        }
    }
}

/// Encodes the part of a MESSAGE frame that is the same for every subscriber: `headers`
/// (escaped), `content-length` for a non-empty body, the blank line, the body and the
/// NUL. A subscriber's frame is its own header lines (see [`encode_message_head`])
/// followed by these bytes.
///
/// It is [`Wire::Text`] when `body` is UTF-8 (the headers are text): looked at once here,
/// not once for each subscriber's frame.
pub fn encode_message_tail<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
) -> Wire {
    let mut dst = Vec::with_capacity(body.len() + 256);
    for (name, value) in headers {
        if name != "content-length" {
            put_header(&mut dst, name, value, true);
        }
    }
    if !body.is_empty() {
        let mut length = itoa::Buffer::new();
        put_header(&mut dst, "content-length", length.format(body.len()), false);
    }
    dst.push(b'\n');
    dst.extend_from_slice(body);
    dst.push(0);
    match String::from_utf8(dst) {
        Ok(text) => Wire::Text(text),
        Err(not_text) => Wire::Bytes(Bytes::from(not_text.into_bytes())),
    }
}

/// A whole MESSAGE frame: the `MESSAGE` line, `headers` (their values escaped), then
/// `tail` from [`encode_message_tail`], as text when the tail is. The names are the
/// broker's own (`subscription`, `ack`, `redelivered`): written as they are, since none
/// needs escaping.
pub fn encode_message_head(headers: &[(&str, &str)], tail: &Wire) -> Wire {
    let capacity = 8
        + headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum::<usize>()
        + tail.as_bytes().len();
    match tail {
        Wire::Text(tail) => {
            let mut dst = String::with_capacity(capacity);
            put_message_head(headers, |piece| dst.push_str(piece));
            dst.push_str(tail);
            Wire::Text(dst)
        }
        Wire::Bytes(tail) => {
            let mut dst = BytesMut::with_capacity(capacity);
            put_message_head(headers, |piece| dst.put_slice(piece.as_bytes()));
            dst.put_slice(tail);
            Wire::Bytes(dst.freeze())
        }
    }
}

/// The RECEIPT frame for `receipt_id`, in wire form: byte for byte what [`Frame::encode`]
/// writes for it, without making a frame (a broker sends one for every receipted SEND).
pub fn encode_receipt(receipt_id: &str) -> Wire {
    let mut dst = String::with_capacity(receipt_id.len() + 24);
    dst.push_str("RECEIPT\nreceipt-id:");
    escaped_runs(receipt_id, |piece| dst.push_str(piece));
    dst.push_str("\n\n\0");
    Wire::Text(dst)
}

/// Hands `put` a MESSAGE frame's first lines: the command, then `headers`.
fn put_message_head(headers: &[(&str, &str)], mut put: impl FnMut(&str)) {
    put("MESSAGE\n");
    for (name, value) in headers {
        debug_assert!(!name.bytes().any(|b| b"\\\n\r:".contains(&b)), "{name:?}");
        put(name);
        put(":");
        escaped_runs(value, &mut put);
        put("\n");
    }
}

/// Bounds that keep a hostile peer from making the parser buffer without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes one frame may take on the wire, headers and body together.
    pub max_frame_bytes: usize,
    /// The most header lines one frame may have.
    pub max_headers: usize,
    /// The most bytes one header line (or the command line) may have.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    /// 1 MiB frames, 64 headers, 8 KiB header lines: generous for game messages, small
    /// enough that a thousand misbehaving connections cannot exhaust memory.
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 1024 * 1024,
            max_headers: 64,
            max_header_bytes: 8 * 1024,
        }
    }
}

/// What [`parse`] found at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole frame that took `len` bytes.
    Frame(Frame, usize),
    /// One or more heart-beat EOLs that took `len` bytes.
    Heartbeat(usize),
    /// Not enough bytes yet.
    Incomplete,
}

/// Why bytes can never become a valid frame. The text is what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The command line is not a STOMP command.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A header line has no colon.
    #[error("header line without a colon: {0:?}")]
    HeaderWithoutColon(String),
    /// A header line holds a carriage return other than the one before its line feed.
    #[error("a header line holds a carriage return: STOMP allows one only before the line feed (escape it as \\r)")]
    CarriageReturn,
    /// An escape sequence STOMP 1.2 does not define.
    #[error("invalid escape sequence \\{0} in a header")]
    BadEscape(char),
    /// Header text that is not UTF-8.
    #[error("header is not valid UTF-8")]
    NotUtf8,
    /// `content-length` that is not a number.
    #[error("content-length {0:?} is not a number")]
    BadContentLength(String),
    /// The body did not end with NUL where `content-length` said it would.
    #[error("body is longer than its content-length (no NUL after {0} bytes)")]
    MissingNul(usize),
    /// The frame is larger than the limit.
    #[error("frame exceeds the {0}-byte limit")]
    TooLarge(usize),
    /// Too many header lines.
    #[error("frame has more than {0} headers")]
    TooManyHeaders(usize),
    /// A header line is too long.
    #[error("header line exceeds the {0}-byte limit")]
    HeaderTooLong(usize),
}

/// Parses the frame or heart-beat at the front of `buf`.
///
/// Returns [`Parsed::Incomplete`] when `buf` is a prefix of something valid; a caller
/// appends more bytes and asks again. Never panics, whatever the bytes.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, FrameError> {
    let eols = leading_eols(buf);
    if eols > 0 {
        return Ok(Parsed::Heartbeat(eols));
    }
    if buf.is_empty() || buf == b"\r" {
        return Ok(Parsed::Incomplete);
    }

    let mut lines = Lines {
        buf,
        pos: 0,
        limits,
    };
    let Some(command_line) = lines.next_line()? else {
        return Ok(Parsed::Incomplete);
    };
    let command = Command::from_bytes(command_line).ok_or_else(|| {
        FrameError::UnknownCommand(String::from_utf8_lossy(command_line).into_owned())
    })?;
    let escape = command.escapes_headers();

    let mut headers = Vec::new();
    loop {
        let Some(line) = lines.next_line()? else {
            return Ok(Parsed::Incomplete);
        };
        if line.is_empty() {
            break;
        }
        if headers.len() == limits.max_headers {
            return Err(FrameError::TooManyHeaders(limits.max_headers));
        }
        // Unescaped (CONNECT) it would come back from an encoder changed; escaped, it was
        // never allowed.
        if line.contains(&b'\r') {
            return Err(FrameError::CarriageReturn);
        }
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
            FrameError::HeaderWithoutColon(String::from_utf8_lossy(line).into_owned())
        })?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        headers.push(if escape {
            (unescape(name)?, unescape(value)?)
        } else {
            (utf8(name)?, utf8(value)?)
        });
    }

    let body_start = lines.pos;
    let content_length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| FrameError::BadContentLength(v.clone()))
        })
        .transpose()?;

    let body_end = match content_length {
        Some(len) => {
            let end = body_start.saturating_add(len);
            if end >= limits.max_frame_bytes {
                return Err(FrameError::TooLarge(limits.max_frame_bytes));
            }
            match buf.get(end) {
                None => return Ok(Parsed::Incomplete),
                Some(0) => end,
                Some(_) => return Err(FrameError::MissingNul(len)),
            }
        }
        None => match buf[body_start..].iter().position(|&b| b == 0) {
            Some(i) => body_start + i,
            None if buf.len() >= limits.max_frame_bytes => {
                return Err(FrameError::TooLarge(limits.max_frame_bytes))
            }
            None => return Ok(Parsed::Incomplete),
        },
    };
    if body_end >= limits.max_frame_bytes {
        return Err(FrameError::TooLarge(limits.max_frame_bytes));
    }

    let frame = Frame {
        command,
        headers,
        body: Bytes::copy_from_slice(&buf[body_start..body_end]),
    };
    Ok(Parsed::Frame(frame, body_end + 1))
}

/// How many bytes of heart-beat EOLs (`\n` or `\r\n`) start `buf`.
fn leading_eols(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match buf.get(i..) {
            Some([b'\n', ..]) => i += 1,
            Some([b'\r', b'\n', ..]) => i += 2,
            _ => return i,
        }
    }
}

struct Lines<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: &'a Limits,
}

impl<'a> Lines<'a> {
    /// The next line without its EOL, or `None` if no whole line is buffered yet.
    fn next_line(&mut self) -> Result<Option<&'a [u8]>, FrameError> {
        let rest = &self.buf[self.pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > self.limits.max_header_bytes {
                return Err(FrameError::HeaderTooLong(self.limits.max_header_bytes));
            }
            if self.buf.len() >= self.limits.max_frame_bytes {
                return Err(FrameError::TooLarge(self.limits.max_frame_bytes));
            }
            return Ok(None);
        };
        if nl > self.limits.max_header_bytes {
            return Err(FrameError::HeaderTooLong(self.limits.max_header_bytes));
        }
        self.pos += nl + 1;
        if self.pos >= self.limits.max_frame_bytes {
            return Err(FrameError::TooLarge(self.limits.max_frame_bytes));
        }
        let line = &rest[..nl];
        Ok(Some(line.strip_suffix(b"\r").unwrap_or(line)))
    }
}

fn utf8(bytes: &[u8]) -> Result<String, FrameError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::NotUtf8)
}

fn unescape(bytes: &[u8]) -> Result<String, FrameError> {
    if !bytes.contains(&b'\\') {
        return utf8(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut iter = bytes.iter();
    while let Some(&b) = iter.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match iter.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'c') => out.push(b':'),
            Some(&other) => return Err(FrameError::BadEscape(other as char)),
            None => return Err(FrameError::BadEscape(' ')),
        }
    }
    String::from_utf8(out).map_err(|_| FrameError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(input: &[u8]) -> Frame {
        match parse(input, &Limits::default()).unwrap() {
            Parsed::Frame(f, len) => {
                assert_eq!(len, input.len(), "frame should take the whole input");
                f
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn a_message_encoded_once_reads_back_as_the_frame_it_stands_for() {
        let headers = [
            ("message-id", "m-7"),
            ("destination", "/topic/room.r:1"),
            ("user-id", "ann\\bob\nc\rd"),
            ("content-length", "999"),
        ];
        // A text body makes a text frame; one that is not UTF-8, bytes.
        for (body, text) in [
            (Bytes::from_static(b"{\"a\":1}\0tail"), true),
            (Bytes::from_static(b"{\"a\":\"\xff\"}\0tail"), false),
        ] {
            let tail = encode_message_tail(headers, &body);
            let wire = encode_message_head(&[("subscription", "s:1"), ("ack", "42")], &tail);
            assert_eq!(matches!(tail, Wire::Text(_)), text, "{tail:?}");
            assert_eq!(matches!(wire, Wire::Text(_)), text, "{wire:?}");
            // What a WebSocket sends: text, or the same bytes back to go as binary.
            match wire
                .clone()
                .into_text::<tokio_tungstenite::tungstenite::Utf8Bytes>()
            {
                Ok(sent) => assert!(text && sent.as_bytes() == wire.as_bytes()),
                Err(bytes) => assert!(!text && bytes == wire.as_bytes()),
            }
            let f = parse_one(wire.as_bytes());
            assert_eq!(f.command, Command::Message);
            assert_eq!(f.header("subscription"), Some("s:1"));
            assert_eq!(f.header("ack"), Some("42"));
            assert_eq!(f.header("message-id"), Some("m-7"));
            assert_eq!(f.header("destination"), Some("/topic/room.r:1"));
            assert_eq!(f.header("user-id"), Some("ann\\bob\nc\rd"));
            assert_eq!(
                f.header("content-length"),
                Some(body.len().to_string().as_str()),
                "the body's real length"
            );
            assert_eq!(f.body, body);
            // Byte for byte what encoding the frame itself gives.
            let mut whole = Frame::new(Command::Message)
                .with_header("subscription", "s:1")
                .with_header("ack", "42");
            whole.headers.extend(
                headers[..3]
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string())),
            );
            whole.body = body;
            assert_eq!(whole.to_bytes(), wire.as_bytes());
        }
        // Bytes a WebSocket sends as text once they are found to be UTF-8.
        let connected = Wire::Bytes(Bytes::from_static(b"CONNECTED\n\n\0"));
        let sent = connected.into_text::<tokio_tungstenite::tungstenite::Utf8Bytes>();
        assert_eq!(sent.unwrap().as_str(), "CONNECTED\n\n\0");
    }

    #[test]
    fn a_receipt_encoded_without_a_frame_is_the_frame_encoded() {
        for id in ["77", "", "a:b\\c\nd\re", "ünï"] {
            let wire = encode_receipt(id);
            let frame = Frame::new(Command::Receipt).with_header("receipt-id", id);
            assert_eq!(wire.as_bytes(), frame.to_bytes(), "{id:?}");
            assert_eq!(parse_one(wire.as_bytes()).header("receipt-id"), Some(id));
        }
    }

    #[test]
    fn parses_a_simple_frame() {
        let f = parse_one(b"SEND\ndestination:/queue/a\n\nhello\0");
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header("destination"), Some("/queue/a"));
        assert_eq!(&f.body[..], b"hello");
    }

    #[test]
    fn accepts_crlf_line_ends() {
        let f = parse_one(b"SEND\r\ndestination:/queue/a\r\n\r\nhi\0");
        assert_eq!(f.header("destination"), Some("/queue/a"));
        assert_eq!(&f.body[..], b"hi");
    }

    #[test]
    fn content_length_frames_binary_bodies_with_nul() {
        let f = parse_one(b"SEND\ncontent-length:5\n\na\0b\0c\0");
        assert_eq!(&f.body[..], b"a\0b\0c");
    }

    #[test]
    fn content_length_without_trailing_nul_is_an_error() {
        let err = parse(b"SEND\ncontent-length:1\n\nab\0", &Limits::default()).unwrap_err();
        assert_eq!(err, FrameError::MissingNul(1));
    }

    #[test]
    fn bad_content_length_is_an_error() {
        let err = parse(b"SEND\ncontent-length:-4\n\n\0", &Limits::default()).unwrap_err();
        assert!(matches!(err, FrameError::BadContentLength(_)));
    }

    #[test]
    fn a_carriage_return_inside_a_header_line_is_an_error() {
        for input in [
            &b"CONNECT\ncontent-le\rngth:37\n\n\0"[..],
            b"SEND\na:b\rc\n\n\0",
        ] {
            assert_eq!(
                parse(input, &Limits::default()).unwrap_err(),
                FrameError::CarriageReturn
            );
        }
        // The one before the line feed is a CRLF line end.
        let f = parse_one(b"SEND\r\na:b\r\n\r\n\0");
        assert_eq!(f.header("a"), Some("b"));
    }

    #[test]
    fn unescapes_headers_except_on_connect() {
        let f = parse_one(b"SEND\na\\cb:x\\\\y\\nz\\r\n\n\0");
        assert_eq!(f.headers[0], ("a:b".into(), "x\\y\nz\r".into()));
        let c = parse_one(b"CONNECT\nlogin:a\\cb\n\n\0");
        assert_eq!(c.header("login"), Some("a\\cb"));
    }

    #[test]
    fn undefined_escape_is_an_error() {
        let err = parse(b"SEND\na:\\t\n\n\0", &Limits::default()).unwrap_err();
        assert_eq!(err, FrameError::BadEscape('t'));
    }

    #[test]
    fn repeated_header_keeps_first_value() {
        let f = parse_one(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0");
        assert_eq!(f.header("foo"), Some("World"));
        assert_eq!(f.headers.len(), 2);
    }

    #[test]
    fn heartbeats_are_reported_not_errors() {
        let limits = Limits::default();
        assert_eq!(
            parse(b"\n\r\n\nSEND", &limits).unwrap(),
            Parsed::Heartbeat(4)
        );
        assert_eq!(parse(b"\r", &limits).unwrap(), Parsed::Incomplete);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let input = b"SEND\r\ndestination:/queue/a\r\ncontent-length:3\r\n\r\na\0b\0";
        for cut in 1..input.len() {
            let got = parse(&input[..cut], &Limits::default()).unwrap();
            assert_eq!(got, Parsed::Incomplete, "prefix of {cut} bytes");
        }
        parse_one(input);
    }

    #[test]
    fn unknown_command_is_an_error() {
        let err = parse(b"FROB\n\n\0", &Limits::default()).unwrap_err();
        assert_eq!(err, FrameError::UnknownCommand("FROB".into()));
    }

    #[test]
    fn header_without_colon_is_an_error() {
        let err = parse(b"SEND\nnocolon\n\n\0", &Limits::default()).unwrap_err();
        assert!(matches!(err, FrameError::HeaderWithoutColon(_)));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_frame_bytes: 64,
            max_headers: 2,
            max_header_bytes: 16,
        };
        let many = b"SEND\na:1\nb:2\nc:3\n\n\0";
        assert_eq!(parse(many, &limits), Err(FrameError::TooManyHeaders(2)));
        let long = b"SEND\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:1\n\n\0";
        assert_eq!(parse(long, &limits), Err(FrameError::HeaderTooLong(16)));
        // A line that never ends is refused before it is complete.
        assert_eq!(
            parse(&[b'S'; 40], &limits),
            Err(FrameError::HeaderTooLong(16))
        );
        let big_body = [b"SEND\n\n".as_slice(), &[b'x'; 80]].concat();
        assert_eq!(parse(&big_body, &limits), Err(FrameError::TooLarge(64)));
        let big_length = b"SEND\ncontent-length:999999\n\n";
        let roomy_headers = Limits {
            max_header_bytes: 64,
            ..limits
        };
        assert_eq!(
            parse(big_length, &roomy_headers),
            Err(FrameError::TooLarge(64))
        );
    }

    #[test]
    fn encode_escapes_and_adds_content_length() {
        let f = Frame::new(Command::Message)
            .with_header("k:ey", "a\nb\\")
            .with_body(&b"x\0y"[..]);
        let wire = f.to_bytes();
        assert_eq!(
            &wire[..],
            b"MESSAGE\nk\\cey:a\\nb\\\\\ncontent-length:3\n\nx\0y\0"
        );
        let back = parse_one(&wire);
        assert_eq!(back.header("k:ey"), Some("a\nb\\"));
        assert_eq!(&back.body[..], b"x\0y");
    }

    #[test]
    fn a_connect_frame_drops_what_it_cannot_escape() {
        // CONNECT and CONNECTED carry no escapes: line breaks (and a colon in a name)
        // are left out rather than break the frame.
        let f = Frame::new(Command::Connect)
            .with_header("lo:g\rin", "a\r\nb:c\n")
            .with_header("host", "h");
        assert_eq!(&f.to_bytes()[..], b"CONNECT\nlogin:ab:c\nhost:h\n\n\0");
    }

    #[test]
    fn encode_rewrites_a_wrong_content_length() {
        let f = Frame::new(Command::Send)
            .with_header("content-length", "99")
            .with_body("abc");
        assert_eq!(&f.to_bytes()[..], b"SEND\ncontent-length:3\n\nabc\0");
    }

    #[test]
    fn error_frames_keep_message_on_one_line() {
        let f = Frame::error("bad\nthing", "detail");
        assert_eq!(f.header("message"), Some("bad thing"));
    }
}
