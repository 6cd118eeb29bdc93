//! Tests of the Fossil delta format: round trips, a property test over random edits, malformed
//! and damaged deltas, and the deltas Fossil itself made (`tests/fixtures/fossil/`).

use super::*;
use std::path::Path;

/// SplitMix64: deterministic, so a failing case replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn fill<T: Copy>(&mut self, len: usize, items: &[T]) -> Vec<T> {
        (0..len).map(|_| self.pick(items)).collect()
    }

    fn fill_below<T: Copy>(&mut self, len_bound: usize, items: &[T]) -> Vec<T> {
        let len = self.below(len_bound);
        self.fill(len, items)
    }
}

/// `data` after a few random edits: inserts, deletes, overwrites, duplicated and moved runs.
fn edited<T: Copy>(rng: &mut Rng, data: &[T], items: &[T]) -> Vec<T> {
    let mut out = data.to_vec();
    for _ in 0..rng.below(8) {
        let at = rng.below(out.len() + 1);
        let len = 1 + rng.below(40);
        let end = (at + len).min(out.len());
        match rng.below(5) {
            0 => {
                let fresh = rng.fill(len, items);
                out.splice(at..at, fresh);
            }
            1 => {
                out.drain(at..end);
            }
            2 => {
                let fresh = rng.fill(end - at, items);
                out.splice(at..end, fresh);
            }
            3 => {
                let copy = out[at..end].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, copy);
            }
            _ => {
                let moved: Vec<T> = out.drain(at..end).collect();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, moved);
            }
        }
    }
    out
}

/// The size of a delta made of one literal: no delta needs to be larger.
fn literal_only_len(target: &[u8]) -> usize {
    2 * (digit_count(target.len()) + 1) + target.len() + digit_count(checksum(target) as usize) + 1
}

/// Encodes both ways, checks each delta applies back to `target`, returns the byte-exact one.
fn round_trip(origin: &[u8], target: &[u8]) -> Vec<u8> {
    let delta = encode(origin, target);
    assert_eq!(
        apply(origin, &delta).as_deref(),
        Ok(target),
        "delta {:?}",
        String::from_utf8_lossy(&delta)
    );
    assert!(
        delta.len() <= literal_only_len(target),
        "{} > {}",
        delta.len(),
        literal_only_len(target)
    );
    let text_delta = encode_utf8(origin, target);
    assert_eq!(apply(origin, &text_delta).as_deref(), Ok(target));
    assert!(text_delta.len() <= literal_only_len(target));
    if std::str::from_utf8(target).is_ok() {
        assert!(std::str::from_utf8(&text_delta).is_ok(), "{text_delta:?}");
    }
    delta
}

fn int_text(value: usize) -> String {
    let mut out = Vec::new();
    put_int(&mut out, value);
    String::from_utf8(out).unwrap()
}

#[test]
fn numbers_read_and_write_as_in_the_format_page() {
    // delta_format.wiki §4.1 (2zMM3E is its -1101438770 as 32 bits), and the largest number
    for (value, text) in [
        (0, "0"),
        (6246, "1Xb"),
        (3_193_528_526, "2zMM3E"),
        (u32::MAX as usize, "3~~~~~"),
    ] {
        assert_eq!(int_text(value), text);
        assert_eq!(digit_count(value), text.len());
        assert_eq!(
            Reader {
                delta: text.as_bytes(),
                pos: 0
            }
            .int(),
            Ok(value)
        );
    }
    // 2^32 needs a seventh bit in the first digit
    assert!(matches!(
        Reader {
            delta: b"400000",
            pos: 0
        }
        .int(),
        Err(DeltaError::Syntax { at: 0, .. })
    ));
}

#[test]
fn checksum_sums_big_endian_words_and_pads_the_last() {
    assert_eq!(checksum(b""), 0);
    assert_eq!(checksum(&[1]), 0x0100_0000);
    assert_eq!(checksum(&[0, 0, 0, 1, 0, 0, 0, 2, 3]), 0x0300_0003);
    assert_eq!(checksum(&[0xFF; 8]), 0xFFFF_FFFE);
}

#[test]
fn empty_inputs() {
    assert_eq!(round_trip(b"", b""), b"0\n0;");
    assert_eq!(round_trip(b"some origin, longer than a window", b""), b"0\n0;");
    round_trip(b"", b"a target with no origin to copy from");
}

#[test]
fn an_origin_shorter_than_a_window_gives_one_literal() {
    let delta = round_trip(b"abc", b"abcdef");
    assert!(delta.starts_with(b"6\n6:abcdef"));
}

#[test]
fn identical_inputs_give_one_copy() {
    let text: Vec<u8> = (0..5000)
        .map(|i| b"lorem ipsum dolor sit amet "[i % 27] ^ (i / 27) as u8)
        .collect();
    let delta = round_trip(&text, &text);
    assert!(delta.starts_with(format!("{0}\n{0}@0,", int_text(text.len())).as_bytes()));
    assert!(delta.len() < 20);
}

#[test]
fn one_changed_field_costs_a_few_bytes() {
    let origin = br#"{"user":"alice","status":"online","score":1200,"rank":"gold","bio":"an unchanged long field"}"#;
    let target = br#"{"user":"alice","status":"online","score":1350,"rank":"gold","bio":"an unchanged long field"}"#;
    let delta = round_trip(origin, target);
    assert!(delta.len() < 30, "{}", String::from_utf8_lossy(&delta));
}

#[test]
fn binary_inputs() {
    let mut rng = Rng(7);
    let all: Vec<u8> = (0..=255).collect();
    let origin = rng.fill(20_000, &all);
    for _ in 0..20 {
        let target = edited(&mut rng, &origin, &all);
        let delta = round_trip(&origin, &target);
        assert!(delta.len() < 2_000, "{}", delta.len());
    }
}

#[test]
fn random_edits_round_trip() {
    let alphabets: [&[u8]; 4] = [
        b"ab",
        b"abcdefghij klmnop\n",
        b"{\"key\":[1,2,3],\"v\":null}",
        &[0, 1, 0x7F, 0x80, 0xC3, 0xFF],
    ];
    let mut rng = Rng(42);
    for case in 0..400 {
        let alphabet = alphabets[case % alphabets.len()];
        let origin = rng.fill_below(3_000, alphabet);
        let target = if case % 10 == 0 {
            rng.fill_below(3_000, alphabet)
        } else {
            edited(&mut rng, &origin, alphabet)
        };
        round_trip(&origin, &target);
    }
}

#[test]
fn utf8_text_gives_a_utf8_delta() {
    // centrifugal/centrifuge pull request 630: é is C3 A9 and è is C3 A8, so a byte-exact
    // delta copies C3 and sends A8 alone, which a JSON string cannot carry
    let body = "x".repeat(100);
    let origin = format!(r#"{{"text":"{body}é"}}"#);
    let target = format!(r#"{{"text":"{body}è"}}"#);
    assert!(std::str::from_utf8(&encode(origin.as_bytes(), target.as_bytes())).is_err());
    round_trip(origin.as_bytes(), target.as_bytes());

    let chars: Vec<char> = "aé жx中🟢🔴 \"{}".chars().collect();
    let mut rng = Rng(3);
    for _ in 0..300 {
        let origin = rng.fill_below(1_000, &chars);
        let target = edited(&mut rng, &origin, &chars);
        let (origin, target): (String, String) = (origin.into_iter().collect(), target.into_iter().collect());
        round_trip(origin.as_bytes(), target.as_bytes());
    }
}

#[test]
fn large_inputs() {
    let mut rng = Rng(11);
    let all: Vec<u8> = (0..=255).collect();
    let origin = rng.fill(1 << 20, &all);
    let mut target = origin.clone();
    for _ in 0..100 {
        let at = rng.below(target.len());
        target[at] ^= 0x55;
    }
    let delta = round_trip(&origin, &target);
    assert!(delta.len() < 100 * 20, "{}", delta.len());
    assert!(round_trip(&origin, &origin).len() < 20);

    // Smaller from here on: unoptimized test builds are slow on these.
    let (origin, unrelated) = (&origin[..1 << 18], rng.fill(1 << 18, &all));
    let delta = encode(origin, &unrelated);
    assert_eq!(delta.len(), literal_only_len(&unrelated));
    assert_eq!(apply(origin, &delta), Ok(unrelated));

    // One hash chain through the whole origin: the comparison budget keeps this linear.
    let repetitive = b"ab".repeat(1 << 17);
    let mut target = repetitive.clone();
    for at in (0..target.len()).step_by(1000) {
        target[at] = b'c';
    }
    let delta = encode(&repetitive, &target);
    assert_eq!(apply(&repetitive, &delta), Ok(target));
    assert!(delta.len() < 5_000, "{}", delta.len());
}

#[test]
fn deltas_our_encoder_never_makes_still_apply() {
    // zero-length copies, copies out of order and overlapping, literals side by side
    let origin = b"abcdefgh";
    let target = b"efghabcdxyzcdefz";
    let delta = format!(
        "G\n0@0,4@4,4@0,2:xy1:z0:4@2,0@8,1:z{};",
        int_text(checksum(target) as usize)
    );
    assert_eq!(apply(origin, delta.as_bytes()), Ok(target.to_vec()));
}

#[test]
fn malformed_deltas_are_errors() {
    let origin = b"0123456789abcdefghij";
    let sum = checksum(b"abcde");
    let valid = format!("5\n5:abcde{};", int_text(sum as usize));
    assert_eq!(apply(origin, valid.as_bytes()), Ok(b"abcde".to_vec()));
    let syntax = |at, expected| DeltaError::Syntax { at, expected };
    let (number, operator) = ("a number", "'@', ':' or ';' after a number");
    let out_of_range = |offset, len| DeltaError::CopyOutOfRange {
        offset,
        len,
        origin_len: origin.len(),
    };
    let cases = [
        ("", DeltaError::Truncated),
        ("5", DeltaError::Truncated),
        ("\n", syntax(0, number)),
        ("5!", syntax(1, "a newline after the target size")),
        ("400000\n0;", syntax(0, "a number below 2^32")),
        ("5\n", DeltaError::Truncated),
        ("5\n5", DeltaError::Truncated),
        ("5\n5@0", DeltaError::Truncated),
        ("5\n5@0;", syntax(5, "',' after a copy")),
        ("5\n5!", syntax(3, operator)),
        ("5\n:abcde", syntax(2, number)),
        ("5\n9:abc", DeltaError::Truncated),
        ("5\n5@K,", out_of_range(20, 5)),
        ("5\n3~~~~~@3~~~~~,", out_of_range(MAX_LEN, MAX_LEN)),
        ("5\n6@0,", DeltaError::TooLong { declared: 5 }),
        ("5\n3:abc3:def", DeltaError::TooLong { declared: 5 }),
        (
            "5\n4:abcd0;",
            DeltaError::SizeMismatch {
                declared: 5,
                produced: 4,
            },
        ),
        (
            "5\n5:abcde0;",
            DeltaError::Checksum {
                expected: 0,
                actual: sum,
            },
        ),
        (&format!("{valid}x"), syntax(valid.len(), "the end after the checksum")),
    ];
    for (delta, expected) in cases {
        assert_eq!(apply(origin, delta.as_bytes()), Err(expected), "{delta:?}");
    }
}

#[test]
fn damaged_deltas_never_panic() {
    let mut rng = Rng(5);
    let text = b"The quick brown fox jumps over the lazy dog, again and again and again.".repeat(4);
    let edits: &[u8] = b"xyz\n@:,;0~";
    let mut pairs = vec![(text.clone(), edited(&mut rng, &text, edits))];
    pairs.push((b"short".to_vec(), b"shorter".to_vec()));
    let replacements = [0, b'0', b'1', b'~', b'@', b':', b',', b';', b'\n', b'!', 0x80, 0xFF];
    for (origin, target) in pairs {
        let delta = encode(&origin, &target);
        for at in 0..delta.len() {
            assert!(apply(&origin, &delta[..at]).is_err());
            let mut damaged = delta.clone();
            for byte in replacements.iter().copied().chain([delta[at] ^ 1]) {
                damaged[at] = byte;
                let _ = apply(&origin, &damaged);
            }
        }
    }
    let vocabulary: &[u8] = b"0129AZaz_~@:,;\n\xff";
    for _ in 0..5_000 {
        let garbage = rng.fill_below(40, vocabulary);
        let _ = apply(&text, &garbage);
    }
}

/// Deltas made by `fossil test-delta-create` (see `tests/fixtures/fossil/README.md`).
#[test]
fn fossil_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fossil");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    dirs.retain(|path| path.is_dir());
    dirs.sort();
    assert!(dirs.len() >= 5, "{dirs:?}");
    for dir in dirs {
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let (origin, target, fossils) = (read("origin"), read("target"), read("delta"));
        assert_eq!(
            apply(&origin, &fossils),
            Ok(target.clone()),
            "Fossil's delta in {dir:?}"
        );
        let ours = round_trip(&origin, &target);
        println!(
            "{}: origin {} B, target {} B, Fossil's delta {} B, ours {} B (utf8-aligned {} B)",
            dir.file_name().unwrap().to_string_lossy(),
            origin.len(),
            target.len(),
            fossils.len(),
            ours.len(),
            encode_utf8(&origin, &target).len()
        );
        assert!(
            2 * ours.len() <= 3 * fossils.len() + 32,
            "{dir:?}: ours {}, Fossil's {}",
            ours.len(),
            fossils.len()
        );
    }
}
