//! The newline-delimited JSON line codec every plugin connection speaks
//! (stdio of a local child, the debug TCP socket, the Lambda relay).
//!
//! One JSON object per `\n`-terminated line. Blank lines are skipped because
//! the Python SDK writes an empty line after each message. A line longer than
//! the cap is reported once as [`LineTooLong`] and the rest of it is discarded,
//! so one oversize message never ends the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The default longest line: 5 MiB, as the reference daemon's
/// `PLUGIN_RUNTIME_MAX_BUFFER_SIZE`.
pub const DEFAULT_MAX_LINE: usize = 5 * 1024 * 1024;

/// A line exceeded the cap; it was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {max} bytes dropped")]
pub struct LineTooLong {
    /// The cap in force.
    pub max: usize,
}

/// Newline-JSON framing with a maximum line length.
///
/// Decoded items are `Ok(line)` (without the newline, trailing `\r` and
/// surrounding whitespace) or `Err(LineTooLong)`; only I/O failures end the
/// stream.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max: usize,
    /// How far the current buffer has been searched for a newline.
    scanned: usize,
    /// True while the tail of an oversize line is being thrown away.
    discarding: bool,
}

impl LineCodec {
    /// A codec that refuses lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            scanned: 0,
            discarding: false,
        }
    }

    /// The cap in force.
    pub fn max_line(&self) -> usize {
        self.max
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &line[start..end]
}

impl Decoder for LineCodec {
    type Item = Result<Bytes, LineTooLong>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        loop {
            let newline = buf[self.scanned..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| i + self.scanned);
            match newline {
                Some(pos) if self.discarding => {
                    buf.advance(pos + 1);
                    self.scanned = 0;
                    self.discarding = false;
                }
                Some(pos) => {
                    let line = buf.split_to(pos + 1);
                    self.scanned = 0;
                    if pos > self.max {
                        return Ok(Some(Err(LineTooLong { max: self.max })));
                    }
                    let (start, len) = {
                        let trimmed = trim(&line[..pos]);
                        (
                            trimmed.as_ptr() as usize - line.as_ptr() as usize,
                            trimmed.len(),
                        )
                    };
                    if len == 0 {
                        continue;
                    }
                    let line = line.freeze().slice(start..start + len);
                    return Ok(Some(Ok(line)));
                }
                None if self.discarding => {
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                None if buf.len() > self.max => {
                    // Report at once and drop what is buffered, so memory
                    // stays bounded however long the line turns out to be.
                    buf.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    return Ok(Some(Err(LineTooLong { max: self.max })));
                }
                None => {
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        // A last line without its newline still counts.
        if self.discarding || buf.is_empty() {
            buf.clear();
            self.discarding = false;
            self.scanned = 0;
            return Ok(None);
        }
        buf.put_u8(b'\n');
        self.decode(buf)
    }
}

impl Encoder<Bytes> for LineCodec {
    type Error = std::io::Error;

    /// Writes one line. The item must be one compact JSON document (serde_json
    /// never emits a raw newline in compact form).
    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), Self::Error> {
        if item.contains(&b'\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a protocol line must not contain a newline",
            ));
        }
        dst.reserve(item.len() + 1);
        dst.put_slice(&item);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    fn lines(items: Vec<Result<Bytes, LineTooLong>>) -> Vec<Result<String, LineTooLong>> {
        items
            .into_iter()
            .map(|r| r.map(|b| String::from_utf8(b.to_vec()).unwrap()))
            .collect()
    }

    async fn decode_all(
        input: Vec<u8>,
        max: usize,
        chunk: usize,
    ) -> Vec<Result<String, LineTooLong>> {
        let (mut tx, rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for part in input.chunks(chunk) {
                tx.write_all(part).await.unwrap();
            }
        });
        let items: Vec<_> = FramedRead::new(rx, LineCodec::new(max))
            .map(|r| r.expect("no io error"))
            .collect()
            .await;
        writer.await.unwrap();
        lines(items)
    }

    #[tokio::test]
    async fn splits_lines_and_skips_blank_ones() {
        let got = decode_all(b"{\"a\":1}\n\n\r\n  \n{\"b\":2}\r\n\n".to_vec(), 100, 3).await;
        assert_eq!(got, vec![Ok("{\"a\":1}".into()), Ok("{\"b\":2}".into())]);
    }

    #[tokio::test]
    async fn last_line_without_newline_is_kept() {
        let got = decode_all(b"{\"a\":1}\n{\"b\":2}".to_vec(), 100, 5).await;
        assert_eq!(got, vec![Ok("{\"a\":1}".into()), Ok("{\"b\":2}".into())]);
    }

    #[tokio::test]
    async fn oversize_line_is_reported_once_and_the_stream_goes_on() {
        let mut input = b"{\"a\":1}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1000));
        input.extend(b"\n{\"b\":2}\n");
        let got = decode_all(input, 100, 7).await;
        assert_eq!(
            got,
            vec![
                Ok("{\"a\":1}".into()),
                Err(LineTooLong { max: 100 }),
                Ok("{\"b\":2}".into())
            ]
        );
    }

    #[tokio::test]
    async fn oversize_line_arriving_whole_is_reported() {
        let mut input = std::iter::repeat_n(b'y', 300).collect::<Vec<_>>();
        input.extend(b"\nok\n");
        // One chunk: the newline is already in the buffer when decoding starts.
        let got = decode_all(input, 100, 4096).await;
        assert_eq!(got, vec![Err(LineTooLong { max: 100 }), Ok("ok".into())]);
    }

    #[tokio::test]
    async fn line_of_exactly_the_cap_passes() {
        let line = "z".repeat(100);
        let got = decode_all(format!("{line}\n").into_bytes(), 100, 9).await;
        assert_eq!(got, vec![Ok(line)]);
    }

    #[tokio::test]
    async fn oversize_tail_at_eof_is_dropped() {
        let input = std::iter::repeat_n(b'q', 500).collect::<Vec<_>>();
        let got = decode_all(input, 100, 50).await;
        assert_eq!(got, vec![Err(LineTooLong { max: 100 })]);
    }

    #[tokio::test]
    async fn encoder_writes_one_line_per_item() {
        let (tx, rx) = tokio::io::duplex(1024);
        let mut sink = FramedWrite::new(tx, LineCodec::default());
        sink.send(Bytes::from_static(b"{\"x\":1}")).await.unwrap();
        sink.send(Bytes::from_static(b"{\"y\":2}")).await.unwrap();
        drop(sink);
        let got: Vec<_> = FramedRead::new(rx, LineCodec::default())
            .map(|r| r.unwrap().unwrap())
            .collect()
            .await;
        assert_eq!(
            got,
            vec![
                Bytes::from_static(b"{\"x\":1}"),
                Bytes::from_static(b"{\"y\":2}")
            ]
        );
    }

    #[tokio::test]
    async fn encoder_refuses_embedded_newlines() {
        let mut codec = LineCodec::default();
        let mut dst = BytesMut::new();
        let err = codec
            .encode(Bytes::from_static(b"a\nb"), &mut dst)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(dst.is_empty());
    }
}
