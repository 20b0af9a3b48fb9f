//! zstd layers (`application/vnd.oci.image.layer.v1.tar+zstd`, which skopeo and buildah
//! write; zstd:chunked reads as plain zstd): every frame of the blob, one after another,
//! skippable frames (zstd:chunked's table of contents) skipped. The pure-Rust `ruzstd`
//! decodes one frame at a time (its `StreamingDecoder` stops after the first), so this
//! drives its `FrameDecoder` over the frames, a block at a time: memory stays at one
//! window, whatever the layer's size.

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// The concatenated content of every frame of a zstd stream.
pub struct Frames<R: BufRead> {
    src: R,
    dec: FrameDecoder,
    /// A frame is being decoded (its header read).
    in_frame: bool,
}

impl<R: BufRead> Frames<R> {
    pub fn new(src: R) -> Frames<R> {
        Frames {
            src,
            dec: FrameDecoder::new(),
            in_frame: false,
        }
    }

    /// Hands back the source (read to the end of the last frame once `read` gave 0).
    pub fn into_inner(self) -> R {
        self.src
    }

    /// Starts the next frame, skipping skippable ones; false at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.src.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.dec.reset(&mut self.src) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    // Its header (magic and length) is read: skip its content.
                    let n = io::copy(&mut (&mut self.src).take(length.into()), &mut io::sink())?;
                    if n != u64::from(length) {
                        return Err(bad("a skippable frame is cut short"));
                    }
                }
                Err(e) => return Err(bad(&e.to_string())),
            }
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {what}"))
}

impl<R: BufRead> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            while self.dec.can_collect() == 0 && !self.dec.is_finished() {
                self.dec
                    .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| bad(&e.to_string()))?;
            }
            let n = self.dec.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            // This frame is done (finished, nothing left to collect): on to the next.
            self.in_frame = false;
        }
    }
}
