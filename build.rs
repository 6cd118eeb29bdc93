//! Compiles `proto/*.proto` with protox (pure Rust, no system `protoc`) and prost.
//!
//! The client protocol's messages double as the JSON wire types, so every message derives serde
//! and each field gets the attributes the Centrifugo JSON format needs: zero values omitted,
//! `bytes` embedded as raw JSON. The descriptor set tells us each field's shape, so the attributes
//! are derived here rather than listed by hand.

use prost_types::field_descriptor_proto::{Label, Type};

/// Fields that JSON clients expect even when zero or empty (reference: client-expectations.md).
const ALWAYS_PRESENT: &[&str] = &[
    ".herald.client.PresenceStatsResult.num_clients",
    ".herald.client.PresenceStatsResult.num_users",
    ".herald.client.PresenceResult.presence",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/client.proto", "proto/store.proto", "proto/cluster.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;

    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    for file in &fds.file {
        let package = file.package();
        if package != "herald.client" {
            continue;
        }
        for message in &file.message_type {
            let type_path = format!(".{package}.{}", message.name());
            config.type_attribute(
                &type_path,
                "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
            );
            for field in &message.field {
                let path = format!("{type_path}.{}", field.name());
                if let Some(attr) = serde_field_attribute(field, &path) {
                    config.field_attribute(&path, attr);
                }
            }
        }
    }
    config.compile_fds(fds)?;
    Ok(())
}

fn serde_field_attribute(field: &prost_types::FieldDescriptorProto, path: &str) -> Option<&'static str> {
    let keep = ALWAYS_PRESENT.contains(&path);
    let is_map = field.r#type() == Type::Message && field.type_name().ends_with("Entry");
    if field.label() == Label::Repeated {
        return match (is_map, keep) {
            (_, true) => None,
            (true, false) => Some("#[serde(skip_serializing_if = \"::std::collections::HashMap::is_empty\")]"),
            (false, false) => Some("#[serde(skip_serializing_if = \"::std::vec::Vec::is_empty\")]"),
        };
    }
    match field.r#type() {
        Type::Bytes => {
            Some("#[serde(with = \"crate::protocol::json::raw\", skip_serializing_if = \"::bytes::Bytes::is_empty\")]")
        }
        Type::Message => Some("#[serde(skip_serializing_if = \"::std::option::Option::is_none\")]"),
        _ if keep => None,
        _ => Some("#[serde(skip_serializing_if = \"crate::protocol::json::is_default\")]"),
    }
}
