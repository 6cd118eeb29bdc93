//! The Fossil SCM delta format (fossil-scm.org `www/delta_format.wiki`), written from the spec
//! and checked against deltas made by Fossil itself (`tests/fixtures/fossil/`); the decoder the
//! Centrifugo JavaScript SDK ships applies our deltas (`tests/sdk/js/fossil_check.mjs` runs it
//! over a directory of cases).
//!
//! A delta is `SIZE "\n"`, then segments, each a literal `LEN ":" BYTES` or a copy from the
//! origin `LEN "@" OFFSET ","`, then `CHECKSUM ";"`. Numbers are base 64, most significant digit
//! first, over Fossil's own alphabet (not RFC 4648's): `0-9 A-Z _ a-z ~`. The checksum sums the
//! target as big-endian 32-bit words, the last one zero-padded. The wiki says "modulo 2^32-1",
//! but Fossil's `delta.c`, the JavaScript and the Python decoders all wrap at 2^32, and so do we.
//!
//! [`encode`] follows `www/delta_encoder_algorithm.wiki`: the origin is indexed by the rolling
//! hash of each aligned 16-byte block, a 16-byte window slides over the target, and each block
//! whose hash matches the window is extended forwards and backwards; the longest match is
//! emitted as a copy when that is shorter than sending its bytes. Deltas come out about the size
//! of Fossil's, not byte for byte the same (the index buckets differ), and any decoder reads them.
//!
//! JSON clients receive a delta inside a JSON string, which carries only valid UTF-8: a copy
//! that ends inside a multi-byte character leaves the character's other bytes in a literal on
//! their own, the server's JSON encoder turns them into U+FFFD and the client fails to apply
//! the delta (centrifugal/centrifuge pull request 630). [`encode_utf8`] moves every segment
//! boundary to a character boundary, so the delta is valid UTF-8 whenever the target is.

/// Bytes per block of the origin's index and per window over the target (the wiki's NHASH).
const NHASH: usize = 16;

/// Blocks examined per window position at most, Fossil's own limit (encoder wiki, §2.1).
const CANDIDATES_PER_WINDOW: usize = 250;

/// Bytes compared over a whole encode while each window may examine up to
/// [`CANDIDATES_PER_WINDOW`] blocks; past it, each window examines one. Without it, repetitive
/// data (one long hash chain) costs up to 250 match extensions per target byte; with it, an
/// encode stays linear in the target's length whatever the data.
const COMPARISONS_PER_TARGET_BYTE: usize = 64;
const COMPARISONS_MIN: usize = 64 * 1024;

/// The format has 32-bit numbers only: sizes, offsets and lengths must fit in a `u32`.
const MAX_LEN: usize = u32::MAX as usize;

/// The 64 digits of the format's numbers, by value.
const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// Why [`apply`] refused a delta. Apart from [`DeltaError::Checksum`], each means the delta is
/// not a well-formed one for this origin; `Checksum` means it is well formed but was most likely
/// made against a different origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("malformed delta at byte {at}: expected {expected}")]
    Syntax { at: usize, expected: &'static str },
    #[error("delta ends before its checksum")]
    Truncated,
    #[error("delta copies {len} bytes at offset {offset} from an origin of {origin_len} bytes")]
    CopyOutOfRange {
        offset: usize,
        len: usize,
        origin_len: usize,
    },
    #[error("delta produces more than the {declared} bytes its header declares")]
    TooLong { declared: usize },
    #[error("delta produces {produced} bytes, its header declares {declared}")]
    SizeMismatch { declared: usize, produced: usize },
    #[error("checksum mismatch: the delta says {expected:#x}, the result sums to {actual:#x}")]
    Checksum { expected: u32, actual: u32 },
}

/// A delta that turns `origin` into `target`, byte-exact; for binary transports.
///
/// # Panics
/// If `origin` or `target` is 4 GiB or longer: the format cannot express such sizes.
pub fn encode(origin: &[u8], target: &[u8]) -> Vec<u8> {
    encode_with(origin, target, Boundaries::Bytes)
}

/// Like [`encode`], but every segment starts and ends on a UTF-8 character boundary of the
/// target, so the delta is valid UTF-8 whenever `target` is: for deltas sent in a JSON string.
/// The origin must also reach the client byte for byte, which holds when it was valid UTF-8.
///
/// # Panics
/// If `origin` or `target` is 4 GiB or longer: the format cannot express such sizes.
pub fn encode_utf8(origin: &[u8], target: &[u8]) -> Vec<u8> {
    encode_with(origin, target, Boundaries::Utf8)
}

/// Where segments may start and end in the target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Boundaries {
    Bytes,
    Utf8,
}

fn encode_with(origin: &[u8], target: &[u8], boundaries: Boundaries) -> Vec<u8> {
    assert!(
        origin.len() <= MAX_LEN && target.len() <= MAX_LEN,
        "fossil deltas cannot express inputs of 4 GiB or more"
    );
    let mut delta = Vec::with_capacity(64);
    put_int(&mut delta, target.len());
    delta.push(b'\n');

    let index = BlockIndex::new(origin);
    let mut budget = COMPARISONS_PER_TARGET_BYTE
        .saturating_mul(target.len())
        .saturating_add(COMPARISONS_MIN);
    // Invariant: target[..base] is encoded; the window starts at `slide`, base <= slide.
    let mut base = 0;
    'segments: while !index.is_empty() && base + NHASH <= target.len() {
        let mut slide = base;
        let mut hash = RollingHash::new(&target[slide..slide + NHASH]);
        loop {
            let search = Search {
                origin,
                target,
                base,
                slide,
                boundaries,
            };
            let limit = if budget > 0 { CANDIDATES_PER_WINDOW } else { 1 };
            let (found, compared) = search.best_match(index.candidates(hash.value()).take(limit));
            budget = budget.saturating_sub(compared);
            if let Some(copy) = found {
                if copy.target_start > base {
                    put_literal(&mut delta, &target[base..copy.target_start]);
                }
                put_int(&mut delta, copy.len);
                delta.push(b'@');
                put_int(&mut delta, copy.origin_start);
                delta.push(b',');
                base = copy.target_start + copy.len;
                continue 'segments;
            }
            if slide + NHASH >= target.len() {
                break 'segments;
            }
            hash.roll(target[slide], target[slide + NHASH]);
            slide += 1;
        }
    }
    if base < target.len() {
        put_literal(&mut delta, &target[base..]);
    }
    put_int(&mut delta, checksum(target) as usize);
    delta.push(b';');
    delta
}

/// A range of the target equal to a range of the origin.
#[derive(Debug, Clone, Copy)]
struct Match {
    target_start: usize,
    origin_start: usize,
    len: usize,
}

/// The state of one window position: the candidates it is matched against come from the index.
struct Search<'a> {
    origin: &'a [u8],
    target: &'a [u8],
    base: usize,
    slide: usize,
    boundaries: Boundaries,
}

impl Search<'_> {
    /// The longest match worth a copy among the candidate blocks, and the bytes compared.
    fn best_match(&self, blocks: impl Iterator<Item = usize>) -> (Option<Match>, usize) {
        let mut best: Option<Match> = None;
        let mut compared = 0;
        for block in blocks {
            let (found, cost) = self.extend(block * NHASH);
            compared += cost;
            if found.len > best.map_or(0, |b| b.len) && self.worth_a_copy(found) {
                best = Some(found);
                if found.len == self.target.len() - self.base {
                    break; // the rest of the target: no candidate can do better
                }
            }
        }
        (best, compared)
    }

    /// The match through `origin[src]` and `target[slide]`, extended forwards to the end of
    /// either input and backwards no further than `base` (bytes before it are already encoded),
    /// and the bytes compared to find it.
    fn extend(&self, src: usize) -> (Match, usize) {
        let (origin, target, slide) = (self.origin, self.target, self.slide);
        let forward = common_prefix(&origin[src..], &target[slide..]);
        let reach = src.min(slide - self.base);
        let backward = common_suffix(&origin[src - reach..src], &target[slide - reach..slide]);
        let found = Match {
            target_start: slide - backward,
            origin_start: src - backward,
            len: backward + forward,
        };
        let cost = found.len + 2;
        match self.boundaries {
            Boundaries::Bytes => (found, cost),
            Boundaries::Utf8 => (shrink_to_chars(found, target), cost),
        }
    }

    /// Whether copying `found` takes fewer delta bytes than sending it in a literal: the copy
    /// command, plus the header of the literal it splits off before it.
    fn worth_a_copy(&self, found: Match) -> bool {
        let gap = found.target_start - self.base;
        let gap_header = if gap > 0 { digit_count(gap) + 1 } else { 0 };
        let copy = digit_count(found.len) + digit_count(found.origin_start) + 2;
        found.len > copy + gap_header
    }
}

/// `found` without the continuation bytes at its start and the partial character at its end,
/// so that it starts and ends on character boundaries of a valid UTF-8 `target`.
fn shrink_to_chars(found: Match, target: &[u8]) -> Match {
    let is_continuation = |byte: u8| byte & 0xC0 == 0x80;
    let mut start = found.target_start;
    let mut end = start + found.len;
    while start < end && is_continuation(target[start]) {
        start += 1;
    }
    while end > start && end < target.len() && is_continuation(target[end]) {
        end -= 1;
    }
    Match {
        target_start: start,
        origin_start: found.origin_start + (start - found.target_start),
        len: end - start,
    }
}

/// How many bytes `a` and `b` share at their start; compares 8 bytes at a time, after one
/// byte, since most candidates differ at once (measured: a quarter off unrelated inputs).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    if a.first() != b.first() {
        return 0;
    }
    let (a_words, _) = a.as_chunks::<8>();
    let (b_words, _) = b.as_chunks::<8>();
    let done = 8 * a_words.iter().zip(b_words).take_while(|(x, y)| x == y).count();
    done + a[done..].iter().zip(&b[done..]).take_while(|(x, y)| x == y).count()
}

/// How many bytes `a` and `b` share at their end, as [`common_prefix`] does at the start.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    if a.last() != b.last() {
        return 0;
    }
    let (_, a_words) = a.as_rchunks::<8>();
    let (_, b_words) = b.as_rchunks::<8>();
    let done = 8 * a_words
        .iter()
        .rev()
        .zip(b_words.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a_rest, b_rest) = (&a[..a.len() - done], &b[..b.len() - done]);
    done + a_rest
        .iter()
        .rev()
        .zip(b_rest.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// The hash of a 16-byte window (encoder wiki, §4): `a` sums the bytes, `b` weighs each by its
/// distance from the window's end (16 for the first), both modulo 2^16; the value is `b:a`.
struct RollingHash {
    a: u16,
    b: u16,
}

impl RollingHash {
    fn new(window: &[u8]) -> Self {
        let (mut a, mut b) = (0u16, 0u16);
        for &byte in window {
            a = a.wrapping_add(u16::from(byte));
            b = b.wrapping_add(a);
        }
        Self { a, b }
    }

    /// Moves the window one byte on: `out` leaves it, `into` enters it.
    fn roll(&mut self, out: u8, into: u8) {
        self.a = self.a.wrapping_sub(u16::from(out)).wrapping_add(u16::from(into));
        self.b = self
            .b
            .wrapping_sub((NHASH as u16).wrapping_mul(u16::from(out)))
            .wrapping_add(self.a);
    }

    fn value(&self) -> u32 {
        (u32::from(self.b) << 16) | u32::from(self.a)
    }
}

/// The origin's aligned 16-byte blocks by hash: a bucket per hash (a power of two of them,
/// at least as many as blocks) holds the first block with that bucket, which links to the next
/// one. First-to-last, because an earlier block leaves more origin to extend a match into, and
/// that matters when a long chain (repetitive data) is cut short. Memory is linear in the
/// origin: three `u32`s per block at most.
struct BlockIndex {
    heads: Vec<u32>,
    next: Vec<u32>,
    bits: u32,
}

const NO_BLOCK: u32 = u32::MAX;

impl BlockIndex {
    fn new(origin: &[u8]) -> Self {
        let blocks = origin.len() / NHASH;
        let bits = blocks.next_power_of_two().trailing_zeros();
        let mut index = Self {
            heads: vec![NO_BLOCK; 1 << bits],
            next: vec![NO_BLOCK; blocks],
            bits,
        };
        for (block, chunk) in origin.chunks_exact(NHASH).enumerate().rev() {
            let bucket = index.bucket(RollingHash::new(chunk).value());
            // block < 2^28: origin.len() <= u32::MAX
            index.next[block] = index.heads[bucket];
            index.heads[bucket] = block as u32;
        }
        index
    }

    fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// The bucket of a hash: the low half of the hash is a plain byte sum, so a remainder would
    /// crowd the buckets; a multiplicative hash spreads every input bit into the top bits.
    fn bucket(&self, hash: u32) -> usize {
        (u64::from(hash.wrapping_mul(0x9E37_79B1)) >> (32 - self.bits)) as usize
    }

    /// The blocks whose hash shares the bucket of `hash`, in the origin's order.
    fn candidates(&self, hash: u32) -> impl Iterator<Item = usize> + '_ {
        let mut block = self.heads.get(self.bucket(hash)).copied().unwrap_or(NO_BLOCK);
        std::iter::from_fn(move || {
            let current = block;
            if current == NO_BLOCK {
                return None;
            }
            block = self.next[current as usize];
            Some(current as usize)
        })
    }
}

fn put_int(out: &mut Vec<u8>, value: usize) {
    debug_assert!(value <= MAX_LEN);
    let mut digits = [0u8; 6];
    let mut first = digits.len();
    let mut rest = value;
    loop {
        first -= 1;
        digits[first] = DIGITS[rest % 64];
        rest /= 64;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[first..]);
}

fn digit_count(value: usize) -> usize {
    let mut count = 1;
    let mut rest = value / 64;
    while rest > 0 {
        count += 1;
        rest /= 64;
    }
    count
}

fn put_literal(out: &mut Vec<u8>, bytes: &[u8]) {
    put_int(out, bytes.len());
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// The format's checksum: the sum of `data` as big-endian `u32` words, the last one padded
/// with zero bytes, wrapping at 2^32.
fn checksum(data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(4);
    let mut sum = 0u32;
    for word in &mut words {
        sum = sum.wrapping_add(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut last = [0u8; 4];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    sum.wrapping_add(u32::from_be_bytes(last))
}

/// The target that `delta` makes from `origin`, after checking every bound, the size the
/// header declares and the checksum. Never panics, whatever the bytes. Stricter than the SDK
/// decoders: a number must have a digit and fit in 32 bits, a copy must end with `,`, and
/// nothing may follow the checksum. A zero-length copy copies nothing, as in every decoder
/// (the format page's "zero means to the end of the origin" is implemented by none).
///
/// The output is bounded by the size the header declares, which the delta's author chooses:
/// a caller applying deltas from an untrusted peer should bound that size first.
pub fn apply(origin: &[u8], delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut reader = Reader { delta, pos: 0 };
    let declared = reader.int()?;
    reader.expect(b'\n', "a newline after the target size")?;
    // Not more than the inputs: the header is the delta author's claim.
    let mut out = Vec::with_capacity(declared.min(origin.len().saturating_add(delta.len())));
    loop {
        let len = reader.int()?;
        let op_at = reader.pos;
        match reader.byte().ok_or(DeltaError::Truncated)? {
            b'@' => {
                let offset = reader.int()?;
                reader.expect(b',', "',' after a copy")?;
                let out_of_range = DeltaError::CopyOutOfRange {
                    offset,
                    len,
                    origin_len: origin.len(),
                };
                let end = offset.checked_add(len).ok_or(out_of_range.clone())?;
                let bytes = origin.get(offset..end).ok_or(out_of_range)?;
                push_within(&mut out, bytes, declared)?;
            }
            b':' => {
                let bytes = reader.take(len)?;
                push_within(&mut out, bytes, declared)?;
            }
            b';' => {
                if reader.pos != delta.len() {
                    return Err(DeltaError::Syntax {
                        at: reader.pos,
                        expected: "the end after the checksum",
                    });
                }
                if out.len() != declared {
                    return Err(DeltaError::SizeMismatch {
                        declared,
                        produced: out.len(),
                    });
                }
                // `len` fits in 32 bits: `Reader::int` rejects longer numbers
                let (expected, actual) = (len as u32, checksum(&out));
                if expected != actual {
                    return Err(DeltaError::Checksum { expected, actual });
                }
                return Ok(out);
            }
            _ => {
                return Err(DeltaError::Syntax {
                    at: op_at,
                    expected: "'@', ':' or ';' after a number",
                })
            }
        }
    }
}

fn push_within(out: &mut Vec<u8>, bytes: &[u8], declared: usize) -> Result<(), DeltaError> {
    if bytes.len() > declared - out.len() {
        return Err(DeltaError::TooLong { declared });
    }
    out.extend_from_slice(bytes);
    Ok(())
}

/// A cursor over a delta.
struct Reader<'a> {
    delta: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.delta.get(self.pos)?;
        self.pos += 1;
        Some(byte)
    }

    fn expect(&mut self, wanted: u8, expected: &'static str) -> Result<(), DeltaError> {
        let at = self.pos;
        match self.byte() {
            Some(byte) if byte == wanted => Ok(()),
            Some(_) => Err(DeltaError::Syntax { at, expected }),
            None => Err(DeltaError::Truncated),
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DeltaError> {
        let bytes = self
            .delta
            .get(self.pos..)
            .and_then(|rest| rest.get(..len))
            .ok_or(DeltaError::Truncated)?;
        self.pos += len;
        Ok(bytes)
    }

    /// A base-64 number of one digit or more that fits in 32 bits.
    fn int(&mut self) -> Result<usize, DeltaError> {
        let start = self.pos;
        let mut value: u64 = 0;
        while let Some(digit) = self.delta.get(self.pos).and_then(|&byte| digit_value(byte)) {
            value = value * 64 + u64::from(digit);
            if value > MAX_LEN as u64 {
                return Err(DeltaError::Syntax {
                    at: start,
                    expected: "a number below 2^32",
                });
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(if start == self.delta.len() {
                DeltaError::Truncated
            } else {
                DeltaError::Syntax {
                    at: start,
                    expected: "a number",
                }
            });
        }
        Ok(value as usize)
    }
}

fn digit_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'Z' => Some(byte - b'A' + 10),
        b'_' => Some(36),
        b'a'..=b'z' => Some(byte - b'a' + 37),
        b'~' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
