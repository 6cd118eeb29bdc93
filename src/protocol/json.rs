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
