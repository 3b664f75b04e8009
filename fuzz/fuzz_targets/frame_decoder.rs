//! `FrameCodec` as tokio's `Decoder`, fed the input in random chunks.
//!
//! Input: byte 0 sets the receive limit (`1 + 8 * b0`: 1 to 2041 bytes, small so that
//! over-limit headers are common), bytes 1..5 seed the chunk sizes (0 to 16 bytes,
//! xorshift), the rest is the byte stream. Properties: no panic; the frames decoded
//! chunk by chunk, the error that stops them and the end-of-stream outcome are exactly
//! those of decoding the whole stream at once; every frame is within the limit and
//! non-empty; and the frames, framed again, are the bytes they were read from.
#![no_main]

use bytes::{Bytes, BytesMut};
use lib_chan_protocol::{FrameCodec, FrameError};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

/// What decoding a stream gave: the frames, then how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Bytes>,
    end: String,
}

fn end_of(e: FrameError) -> String {
    match e {
        FrameError::TooLarge { len, max } => format!("too_large {len} {max}"),
        FrameError::Empty => "empty".into(),
        FrameError::TruncatedAtEof { buffered } => format!("truncated {buffered}"),
        other => panic!("unexpected decode error {other:?}"),
    }
}

/// Feeds `chunks` to a fresh codec, decoding all that is ready after each, as
/// `FramedRead` does; after the last chunk, `decode_eof` as at the end of the stream.
/// Also returns the bytes left in the buffer.
fn run<'a>(max: usize, chunks: impl Iterator<Item = &'a [u8]>) -> (Outcome, usize) {
    let mut codec = FrameCodec::new(max, usize::MAX);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    return (
                        Outcome {
                            frames,
                            end: end_of(e),
                        },
                        buf.len(),
                    )
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => {
                return (
                    Outcome {
                        frames,
                        end: "eof".into(),
                    },
                    buf.len(),
                )
            }
            Err(e) => {
                return (
                    Outcome {
                        frames,
                        end: end_of(e),
                    },
                    buf.len(),
                )
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let max = 1 + 8 * usize::from(data[0]);
    let mut seed = u32::from_le_bytes([data[1], data[2], data[3], data[4]]) | 1;
    let stream = &data[5..];

    let (whole, left) = run(max, std::iter::once(stream));

    let mut chunks = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed % 17) as usize;
        let end = (at + n).min(stream.len());
        chunks.push(&stream[at..end]);
        at = end;
    }
    let (chunked, _) = run(max, chunks.into_iter());
    assert_eq!(chunked, whole, "chunked decoding differs from one-shot");

    // Every frame is within the limit, and framing them again gives back the bytes
    // they were read from.
    let mut codec = FrameCodec::new(max, max);
    let mut again = BytesMut::new();
    for f in &whole.frames {
        assert!(
            !f.is_empty() && f.len() <= max,
            "frame of {} bytes",
            f.len()
        );
        codec.encode(f.clone(), &mut again).expect("re-encodes");
    }
    assert_eq!(&again[..], &stream[..again.len()]);
    if whole.end == "eof" || whole.end.starts_with("truncated") {
        assert_eq!(again.len() + left, stream.len());
    }
});
