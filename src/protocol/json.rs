//! Serde helpers used by the generated protocol types (see `build.rs`).
//!
//! Centrifugo's JSON format omits zero values and embeds `bytes` fields (publication data, client
//! info) as raw JSON rather than base64.

/// `skip_serializing_if` helper: true for the type's zero value.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// `bytes` fields carried as embedded JSON.
pub mod raw {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    /// Writes the bytes as raw JSON.
    ///
    /// JSON clients split frames on `\n`, so raw newlines (only possible as insignificant
    /// whitespace in valid JSON) are removed. Bytes that are not JSON (a Protobuf client's binary
    /// payload seen by a JSON subscriber) are sent as a JSON string, so the frame stays parseable.
    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(raw) if !bytes.iter().any(|b| *b == b'\n' || *b == b'\r') => raw.serialize(serializer),
            Ok(raw) => {
                let flat: String = raw.get().chars().filter(|c| *c != '\n' && *c != '\r').collect();
                match RawValue::from_string(flat) {
                    Ok(raw) => raw.serialize(serializer),
                    Err(e) => Err(serde::ser::Error::custom(e)),
                }
            }
            Err(_) => String::from_utf8_lossy(bytes).serialize(serializer),
        }
    }

    /// Reads any JSON value and keeps its text.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Bytes::from(raw.get().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::proto::{Publication, Reply, UnsubscribeResult};
    use bytes::Bytes;

    #[test]
    fn data_is_embedded_raw_and_zero_values_are_omitted() {
        let publication = Publication {
            data: Bytes::from_static(b"{\"a\": [1,\n2]}"),
            offset: 7,
            ..Default::default()
        };
        let text = serde_json::to_string(&publication).unwrap();
        assert_eq!(text, r#"{"data":{"a": [1,2]},"offset":7}"#);
    }

    #[test]
    fn empty_results_are_present() {
        let reply = Reply {
            id: 3,
            unsubscribe: Some(UnsubscribeResult {}),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&reply).unwrap(), r#"{"id":3,"unsubscribe":{}}"#);
    }

    #[test]
    fn binary_data_becomes_a_string() {
        let publication = Publication {
            data: Bytes::from_static(b"\x00\x01 not json"),
            ..Default::default()
        };
        let text = serde_json::to_string(&publication).unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{text}");
    }

    #[test]
    fn raw_data_round_trips() {
        let publication: Publication = serde_json::from_str(r#"{"data":{"x":"y\nz"},"offset":2,"unknown":1}"#).unwrap();
        assert_eq!(&publication.data[..], br#"{"x":"y\nz"}"#);
        assert_eq!(publication.offset, 2);
    }
}

/// Why a JSON text is not I-JSON (RFC 7493).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotInteroperable {
    /// A number beyond IEEE 754 double precision (`1e400`): most parsers fail or read infinity.
    NumberOutOfRange,
    /// A `\uD800`–`\uDFFF` escape that is not half of a surrogate pair: no Unicode string holds
    /// it, and strict parsers (Rust, Swift, Go's decoders of some versions) reject the message.
    LoneSurrogate,
}

impl std::fmt::Display for NotInteroperable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotInteroperable::NumberOutOfRange => "a number is out of the range of a double (I-JSON, RFC 7493)",
            NotInteroperable::LoneSurrogate => "a string escapes a lone UTF-16 surrogate (I-JSON, RFC 7493)",
        })
    }
}

/// Checks that already valid JSON is also I-JSON (RFC 7493) where subscribers' parsers differ:
/// every number fits a double and every `\u` escape is a whole character. Publication data is
/// passed to subscribers as it came, so Herald refuses, at publish, what some of their parsers
/// would refuse at delivery. One pass, no allocation.
pub fn check_interoperable(json: &[u8]) -> Result<(), NotInteroperable> {
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => i = check_string(json, i + 1)?,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < json.len() && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                // The text is valid JSON, so the token is a valid number (and ASCII).
                let token = std::str::from_utf8(&json[start..i]).unwrap_or("0");
                if token.parse::<f64>().is_ok_and(f64::is_infinite) {
                    return Err(NotInteroperable::NumberOutOfRange);
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Scans a string from just after its opening quote; returns the index after its closing quote.
fn check_string(json: &[u8], mut i: usize) -> Result<usize, NotInteroperable> {
    let hex = |at: usize| -> Option<u16> {
        let digits = json.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    while i < json.len() {
        match json[i] {
            b'"' => return Ok(i + 1),
            b'\\' if json.get(i + 1) == Some(&b'u') => {
                let unit = hex(i + 2).unwrap_or(0);
                i += 6;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = (json.get(i..i + 2) == Some(b"\\u")).then(|| hex(i + 2)).flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(NotInteroperable::LoneSurrogate);
                        }
                        i += 6;
                    }
                    0xDC00..=0xDFFF => return Err(NotInteroperable::LoneSurrogate),
                    _ => {}
                }
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

#[cfg(test)]
mod interoperability_tests {
    use super::*;

    #[test]
    fn interoperable_json() {
        for ok in [
            &br#"{"a":[1,-2.5e10,1.7976931348623157e308,0.0000001,1e-400]}"#[..],
            br#""caf\u00e9 \ud83d\ude00 \\ud800 \"\u0041""#,
            br#"{"\ud83d\ude00":"x","k":"\\\\u"}"#,
            b"\"plain \xc3\xa9\"",
            b"[]",
        ] {
            assert_eq!(check_interoperable(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
        for (bad, why) in [
            (&b"1e400"[..], NotInteroperable::NumberOutOfRange),
            (b"-1e400", NotInteroperable::NumberOutOfRange),
            (br#"{"a":[1,2e999]}"#, NotInteroperable::NumberOutOfRange),
            (br#""\ud800""#, NotInteroperable::LoneSurrogate),
            (br#""\udc00x""#, NotInteroperable::LoneSurrogate),
            (br#""\ud800\u0041""#, NotInteroperable::LoneSurrogate),
            (br#"{"k\uDBFF":1}"#, NotInteroperable::LoneSurrogate),
            (br#""\ud83d"#, NotInteroperable::LoneSurrogate),
        ] {
            assert_eq!(check_interoperable(bad), Err(why), "{}", String::from_utf8_lossy(bad));
        }
    }
}
