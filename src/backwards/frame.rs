//! Decoders for the bodies Dify's inner API streams back: length-prefixed
//! frames (the current format) and, for older Dify versions, JSON lines.
//!
//! Frame layout (reference: `pkg/utils/parser/chunking.go`, Dify
//! `libs/helper.py::length_prefixed_response`), all little endian:
//! magic byte `0x0f`, one reserved byte, `u16` header length (always 10),
//! then the 10-byte header (`u32` data length + 6 reserved bytes), then the
//! data: one JSON object `{"data":…,"error":…}`.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// First byte of every frame.
pub const FRAME_MAGIC: u8 = 0x0f;
/// The only header length the format defines.
pub const FRAME_HEADER_LEN: u16 = 10;
/// Bytes before the data: 4 fixed bytes plus the header.
const PREFIX_LEN: usize = 4 + FRAME_HEADER_LEN as usize;
/// Largest frame or line accepted by default (the reference's
/// `RESPONSE_MAX_BUFFER_SIZE`, 30 MiB).
pub const DEFAULT_MAX_FRAME: usize = 30 * 1024 * 1024;

/// Why a streamed body could not be cut into messages.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The body is not in the length-prefixed format, or lost sync.
    #[error("magic number mismatch: {0}")]
    BadMagic(u8),
    /// The header length field is not 10.
    #[error("header length mismatch: {0}")]
    BadHeaderLength(u16),
    /// A frame or line is larger than the configured maximum.
    #[error("data length is too long: {0}")]
    TooLong(usize),
    /// The body ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    /// Reading the body failed.
    #[error("failed to read response body: {0}")]
    Io(#[from] std::io::Error),
}

/// Wraps `data` in one length-prefixed frame, as Dify writes it.
pub fn encode_frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + data.len());
    out.push(FRAME_MAGIC);
    out.push(0);
    out.extend_from_slice(&FRAME_HEADER_LEN.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(data);
    out
}

/// Cuts a byte stream into the data of length-prefixed frames.
#[derive(Debug, Clone)]
pub struct LengthPrefixedDecoder {
    max_frame: usize,
}

impl LengthPrefixedDecoder {
    /// A decoder refusing frames larger than `max_frame` bytes of data.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }
}

impl Default for LengthPrefixedDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for LengthPrefixedDecoder {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.is_empty() {
            return Ok(None);
        }
        // Check the magic byte as soon as it arrives, so a body in another
        // format fails at once instead of waiting for 14 bytes.
        if src[0] != FRAME_MAGIC {
            return Err(FrameError::BadMagic(src[0]));
        }
        if src.len() < 4 {
            return Ok(None);
        }
        let header_len = u16::from_le_bytes([src[2], src[3]]);
        if header_len != FRAME_HEADER_LEN {
            return Err(FrameError::BadHeaderLength(header_len));
        }
        if src.len() < PREFIX_LEN {
            src.reserve(PREFIX_LEN - src.len());
            return Ok(None);
        }
        let data_len = u32::from_le_bytes([src[4], src[5], src[6], src[7]]) as usize;
        if data_len > self.max_frame {
            return Err(FrameError::TooLong(data_len));
        }
        let total = PREFIX_LEN + data_len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        Ok(Some(src.split_to(data_len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

/// Cuts a byte stream into lines (without `\n` / `\r\n`), refusing lines
/// longer than the maximum. Used for inner API replies that are not framed.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max_line: usize,
    /// How far the buffer was already searched for a newline.
    searched: usize,
}

impl LineDecoder {
    /// A decoder refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            searched: 0,
        }
    }
}

impl Decoder for LineDecoder {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match src[self.searched..].iter().position(|b| *b == b'\n') {
            Some(offset) => {
                let end = self.searched + offset;
                self.searched = 0;
                let mut line = src.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.len() > self.max_line {
                    return Err(FrameError::TooLong(line.len()));
                }
                Ok(Some(line.freeze()))
            }
            None => {
                self.searched = src.len();
                if src.len() > self.max_line {
                    return Err(FrameError::TooLong(src.len()));
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if let Some(line) = self.decode(src)? {
            return Ok(Some(line));
        }
        self.searched = 0;
        if src.is_empty() {
            return Ok(None);
        }
        Ok(Some(src.split().freeze()))
    }
}

/// Decoder for an inner API stream reply: picks the length-prefixed format
/// when the first byte is the magic byte, else reads JSON lines.
///
/// The reference daemon always expects frames; Dify versions before the
/// length-prefixed format sent `{"data","error"}` objects one per line
/// (optionally as `data:` lines). Accepting both costs one byte of look-ahead.
#[derive(Debug, Clone)]
pub enum InnerStreamDecoder {
    /// Nothing read yet.
    Undecided(usize),
    /// The body is length-prefixed frames.
    Frames(LengthPrefixedDecoder),
    /// The body is lines.
    Lines(LineDecoder),
}

impl InnerStreamDecoder {
    /// A decoder accepting messages up to `max` bytes.
    pub fn new(max: usize) -> Self {
        Self::Undecided(max)
    }

    /// Chooses the format from the first byte. Lines start as JSON text
    /// does (`{`, `data:`, `event:`, blank); any other byte is a frame with
    /// a wrong magic number, refused as the reference refuses it.
    fn settle(&mut self, src: &BytesMut) -> Result<(), FrameError> {
        if let Self::Undecided(max) = *self {
            if let Some(first) = src.first() {
                *self = match *first {
                    FRAME_MAGIC => Self::Frames(LengthPrefixedDecoder::new(max)),
                    b'{' | b'd' | b'e' | b'\n' | b'\r' | b' ' | b'\t' => {
                        Self::Lines(LineDecoder::new(max))
                    }
                    other => return Err(FrameError::BadMagic(other)),
                };
            }
        }
        Ok(())
    }
}

impl Decoder for InnerStreamDecoder {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        self.settle(src)?;
        match self {
            Self::Undecided(_) => Ok(None),
            Self::Frames(d) => d.decode(src),
            Self::Lines(d) => d.decode(src),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        self.settle(src)?;
        match self {
            Self::Undecided(_) => Ok(None),
            Self::Frames(d) => d.decode_eof(src),
            Self::Lines(d) => d.decode_eof(src),
        }
    }
}

/// The JSON payload of one line of a line-based reply, or `None` for lines
/// that carry none (blank lines, `event:` lines). A leading `data:` is
/// stripped, as the reference's line reader does.
pub fn line_payload(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_prefix(b"data:").unwrap_or(line);
    if line.starts_with(b"event:") {
        return None;
    }
    let line = line.trim_ascii();
    if line.is_empty() {
        None
    } else {
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    fn decode_all<D: Decoder<Item = Bytes, Error = FrameError>>(
        mut decoder: D,
        chunks: &[&[u8]],
    ) -> Result<Vec<Bytes>, FrameError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(item) = decoder.decode(&mut buf)? {
                out.push(item);
            }
        }
        while let Some(item) = decoder.decode_eof(&mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    #[test]
    fn encoded_frame_has_the_reference_layout() {
        let frame = encode_frame(b"{}");
        assert_eq!(
            frame,
            [0x0f, 0, 10, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'{', b'}']
        );
    }

    #[test]
    fn frames_split_at_every_byte_decode_whole() {
        let mut body = encode_frame(br#"{"data":1,"error":""}"#);
        body.extend(encode_frame(br#"{"data":2,"error":""}"#));
        body.extend(encode_frame(b""));
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        let frames = decode_all(LengthPrefixedDecoder::default(), &pieces).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0][..], br#"{"data":1,"error":""}"#);
        assert_eq!(&frames[1][..], br#"{"data":2,"error":""}"#);
        assert!(frames[2].is_empty());
    }

    #[test]
    fn bad_magic_byte_is_an_error() {
        let mut body = encode_frame(b"x");
        body[0] = 0x0e;
        let err = decode_all(LengthPrefixedDecoder::default(), &[&body]).unwrap_err();
        assert!(matches!(err, FrameError::BadMagic(0x0e)), "{err}");
    }

    #[test]
    fn bad_magic_after_a_good_frame_is_an_error() {
        let mut body = encode_frame(b"ok");
        body.extend_from_slice(b"{\"data\":1}\n");
        let mut decoder = LengthPrefixedDecoder::default();
        let mut buf = BytesMut::from(&body[..]);
        assert_eq!(&decoder.decode(&mut buf).unwrap().unwrap()[..], b"ok");
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::BadMagic(b'{'))
        ));
    }

    #[test]
    fn wrong_header_length_is_an_error() {
        let mut body = encode_frame(b"x");
        body[2] = 9;
        let err = decode_all(LengthPrefixedDecoder::default(), &[&body]).unwrap_err();
        assert!(matches!(err, FrameError::BadHeaderLength(9)), "{err}");
    }

    #[test]
    fn oversized_frame_is_refused_before_its_data_arrives() {
        let body = encode_frame(&[b'a'; 100]);
        let mut decoder = LengthPrefixedDecoder::new(99);
        let mut buf = BytesMut::from(&body[..PREFIX_LEN]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLong(100))
        ));
    }

    #[test]
    fn body_ending_inside_a_frame_is_truncated() {
        let body = encode_frame(b"hello");
        let err =
            decode_all(LengthPrefixedDecoder::default(), &[&body[..body.len() - 1]]).unwrap_err();
        assert!(matches!(err, FrameError::Truncated(_)), "{err}");
    }

    #[test]
    fn lines_are_split_and_the_last_unterminated_line_kept() {
        let lines = decode_all(LineDecoder::new(64), &[b"a\r\nb", b"c\n\nlast"]).unwrap();
        let lines: Vec<&[u8]> = lines.iter().map(|l| &l[..]).collect();
        assert_eq!(lines, vec![&b"a"[..], b"bc", b"", b"last"]);
    }

    #[test]
    fn overlong_line_is_refused() {
        let err = decode_all(LineDecoder::new(4), &[b"12345"]).unwrap_err();
        assert!(matches!(err, FrameError::TooLong(5)), "{err}");
    }

    #[test]
    fn line_payload_strips_data_prefix_and_skips_events() {
        assert_eq!(line_payload(b"data: {\"a\":1} "), Some(&b"{\"a\":1}"[..]));
        assert_eq!(line_payload(b"{\"a\":1}"), Some(&b"{\"a\":1}"[..]));
        assert_eq!(line_payload(b"event: ping"), None);
        assert_eq!(line_payload(b"   "), None);
    }

    #[test]
    fn inner_decoder_picks_the_format_from_the_first_byte() {
        let framed = encode_frame(b"one");
        assert_eq!(
            decode_all(InnerStreamDecoder::new(64), &[&framed[..1], &framed[1..]]).unwrap(),
            vec![Bytes::from_static(b"one")]
        );
        assert_eq!(
            decode_all(InnerStreamDecoder::new(64), &[b"{}\ndata: {}\n"]).unwrap(),
            vec![Bytes::from_static(b"{}"), Bytes::from_static(b"data: {}")]
        );
    }

    #[test]
    fn inner_decoder_refuses_a_body_that_is_neither_format() {
        let mut body = encode_frame(b"{}");
        body[0] = 0x0e;
        let err = decode_all(InnerStreamDecoder::new(64), &[&body]).unwrap_err();
        assert!(matches!(err, FrameError::BadMagic(0x0e)), "{err}");
    }

    #[tokio::test]
    async fn frames_decode_from_a_duplex_pipe_written_in_pieces() {
        let (mut writer, reader) = tokio::io::duplex(8);
        let mut body = Vec::new();
        for i in 0..5 {
            body.extend(encode_frame(format!("{{\"data\":{i}}}").as_bytes()));
        }
        let feeder = tokio::spawn(async move {
            for piece in body.chunks(3) {
                writer.write_all(piece).await.unwrap();
            }
        });
        let frames: Vec<Bytes> = FramedRead::new(reader, LengthPrefixedDecoder::default())
            .map(|f| f.unwrap())
            .collect()
            .await;
        feeder.await.unwrap();
        assert_eq!(frames.len(), 5);
        assert_eq!(&frames[4][..], b"{\"data\":4}");
    }
}
