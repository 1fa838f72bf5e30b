//! The gzip of a layer as this tool pushes it: fast where the bytes
//! compress, stored where they do not. The daemon's push gzips every layer
//! at Go's default level, single-threaded: 5–7 s per 200 MiB of
//! incompressible data (media, wheels, other archives) on this machine,
//! for no gain. Here each 128 KiB chunk is looked at first: a chunk whose
//! bytes are near-uniform (Shannon entropy over 7.9 bits a byte) goes out
//! in stored deflate blocks at memory speed; the rest is deflated at level
//! 1 (zlib-rs's quick deflate). It is plain gzip (one member, one deflate stream), so every puller
//! reads it (Docker 20.10 cannot pull zstd layers). The output is a pure
//! function of the input: the same layer always has the same digest.

use std::io::{self, Read};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Changes whenever the output for some input would: part of the name of
/// the file where pushes remember the digests of layers' gzips.
pub const ENCODING: u32 = 1;

/// How much input one decision covers.
const CHUNK: usize = 128 * 1024;

/// Above this, a chunk is taken for incompressible (8 is uniform noise).
const STORE_ABOVE_BITS_PER_BYTE: f64 = 7.9;

/// gzip's fixed header: no name, no time (so the digest depends on the
/// bytes alone), "unknown" OS as Go's writer sets it.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Reads `inner` and yields its gzip.
pub struct FastGzip<R> {
    inner: R,
    deflate: Compress,
    /// Whether the deflater was given bytes since its last full flush.
    deflated_since_flush: bool,
    crc: Crc,
    input: Vec<u8>,
    output: Vec<u8>,
    /// How much of `output` was read out.
    given: usize,
    state: State,
    /// Bytes of input, and how many of them went out stored.
    pub read: u64,
    pub stored: u64,
}

#[derive(PartialEq)]
enum State {
    Header,
    Body,
    Finishing,
    Done,
}

impl<R: Read> FastGzip<R> {
    pub fn new(inner: R) -> FastGzip<R> {
        FastGzip {
            inner,
            deflate: Compress::new(Compression::fast(), false),
            deflated_since_flush: false,
            crc: Crc::new(),
            input: vec![0; CHUNK],
            output: Vec::with_capacity(CHUNK + CHUNK / 8),
            given: 0,
            state: State::Header,
            read: 0,
            stored: 0,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Fills `output` with what comes next; false at the end.
    fn produce(&mut self) -> io::Result<bool> {
        self.output.clear();
        self.given = 0;
        match self.state {
            State::Header => {
                self.output.extend_from_slice(&HEADER);
                self.state = State::Body;
            }
            State::Body => {
                let n = read_full(&mut self.inner, &mut self.input)?;
                if n == 0 {
                    self.state = State::Finishing;
                    return self.produce();
                }
                let chunk = &self.input[..n];
                self.crc.update(chunk);
                self.read += n as u64;
                if entropy_bits_per_byte(&sample(chunk)) > STORE_ABOVE_BITS_PER_BYTE {
                    self.stored += n as u64;
                    self.store(n)?;
                } else {
                    let chunk = std::mem::take(&mut self.input);
                    self.run(&chunk[..n], FlushCompress::None)?;
                    self.input = chunk;
                    self.deflated_since_flush = true;
                }
            }
            State::Finishing => {
                self.run(&[], FlushCompress::Finish)?;
                self.output.extend_from_slice(&self.crc.sum().to_le_bytes());
                self.output
                    .extend_from_slice(&(self.crc.amount()).to_le_bytes());
                self.state = State::Done;
            }
            State::Done => return Ok(false),
        }
        Ok(true)
    }

    /// Puts the first `n` bytes of `input` out in stored blocks. The
    /// deflater is flushed first with a full flush: its output then ends on
    /// a byte boundary, where a stored block may begin, and it forgets what
    /// it saw, so nothing it deflates later refers back across the bytes
    /// it never saw.
    fn store(&mut self, n: usize) -> io::Result<()> {
        if self.deflated_since_flush {
            self.run(&[], FlushCompress::Full)?;
            self.deflated_since_flush = false;
        }
        for block in self.input[..n].chunks(u16::MAX as usize) {
            let len = block.len() as u16;
            // BFINAL 0, BTYPE 00 (stored), padded to the byte; LEN, NLEN.
            self.output.push(0);
            self.output.extend_from_slice(&len.to_le_bytes());
            self.output.extend_from_slice(&(!len).to_le_bytes());
            self.output.extend_from_slice(block);
        }
        Ok(())
    }

    /// Deflates all of `input` into `output` (growing it as needed); with
    /// a flush, until the flush is complete.
    fn run(&mut self, mut input: &[u8], flush: FlushCompress) -> io::Result<()> {
        loop {
            if self.output.capacity() - self.output.len() < 1024 {
                self.output.reserve(CHUNK);
            }
            let before = self.deflate.total_in();
            let status = self
                .deflate
                .compress_vec(input, &mut self.output, flush)
                .map_err(|e| io::Error::other(format!("compress {flush:?}: {e}")))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            let room_left = self.output.capacity() > self.output.len();
            match (status, flush) {
                (Status::StreamEnd, _) => return Ok(()),
                (_, FlushCompress::None) if input.is_empty() => return Ok(()),
                (_, FlushCompress::Full) if room_left => return Ok(()),
                _ => {}
            }
        }
    }
}

impl<R: Read> Read for FastGzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.given == self.output.len() {
            if !self.produce()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.output.len() - self.given);
        buf[..n].copy_from_slice(&self.output[self.given..self.given + n]);
        self.given += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; how much was read.
pub(super) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// How many bytes of a chunk its decision looks at, and in how many
/// stretches spread over it: enough to tell noise (an 8 KiB sample of it
/// measures 7.97 bits a byte) from anything that compresses, at a cost that
/// stays small even in a debug build, where `cargo xtask` runs.
const SAMPLE: usize = 8 * 1024;
const STRETCHES: usize = 4;

/// The bytes of `chunk` its decision looks at. Pure.
fn sample(chunk: &[u8]) -> Vec<u8> {
    if chunk.len() <= SAMPLE {
        return chunk.to_vec();
    }
    let stretch = SAMPLE / STRETCHES;
    let step = (chunk.len() - stretch) / (STRETCHES - 1);
    (0..STRETCHES)
        .flat_map(|i| &chunk[i * step..i * step + stretch])
        .copied()
        .collect()
}

/// Shannon entropy of the bytes' distribution, in bits a byte (0 to 8).
/// Pure.
pub fn entropy_bits_per_byte(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let total = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;

    fn noise(bytes: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn text(bytes: usize) -> Vec<u8> {
        let line = b"def upgrade():\n    op.add_column('households', sa.Column('name'))\n";
        line.iter().copied().cycle().take(bytes).collect()
    }

    fn gzip(input: &[u8]) -> (Vec<u8>, u64) {
        let mut encoder = FastGzip::new(input);
        let mut out = Vec::new();
        encoder.read_to_end(&mut out).unwrap();
        assert_eq!(encoder.read, input.len() as u64);
        (out, encoder.stored)
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        MultiGzDecoder::new(gz).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn noise_goes_out_stored_and_text_compressed_and_both_read_back() {
        let random = noise(3 * CHUNK + 17, 7);
        let (gz, stored) = gzip(&random);
        // The last 17 bytes are too few to look random: deflated.
        assert_eq!(stored, 3 * CHUNK as u64);
        assert!(gz.len() < random.len() + random.len() / 100, "{}", gz.len());
        assert_eq!(gunzip(&gz), random);

        let source = text(5 * CHUNK);
        let (gz, stored) = gzip(&source);
        assert_eq!(stored, 0);
        assert!(gz.len() < source.len() / 20, "{}", gz.len());
        assert_eq!(gunzip(&gz), source);
    }

    #[test]
    fn a_layer_that_mixes_both_switches_level_and_reads_back_whole() {
        let mut mixed = text(CHUNK + 5);
        mixed.extend(noise(2 * CHUNK, 3));
        mixed.extend(text(CHUNK));
        mixed.extend(noise(CHUNK / 2, 4));
        let (gz, stored) = gzip(&mixed);
        assert!(stored > 0 && stored < mixed.len() as u64, "{stored}");
        assert_eq!(gunzip(&gz), mixed);
    }

    #[test]
    fn the_same_bytes_always_give_the_same_gzip_and_nothing_gives_a_valid_one() {
        let source = [text(CHUNK), noise(CHUNK, 9)].concat();
        assert_eq!(gzip(&source).0, gzip(&source).0);
        let (empty, _) = gzip(&[]);
        assert_eq!(gunzip(&empty), Vec::<u8>::new());
        // The gzip header carries no time or name.
        assert_eq!(&empty[..10], &HEADER);
    }

    #[test]
    fn entropy_tells_noise_from_text() {
        assert!(entropy_bits_per_byte(&noise(CHUNK, 1)) > STORE_ABOVE_BITS_PER_BYTE);
        assert!(entropy_bits_per_byte(&text(CHUNK)) < 5.0);
        assert_eq!(entropy_bits_per_byte(&[0; 100]), 0.0);
        assert_eq!(entropy_bits_per_byte(&[]), 0.0);
    }
}
