//! `herald cluster status`: asks a running node (the one the config describes) for its view of
//! the cluster over its inter-node listener, authenticated with `cluster.secret` like any
//! inter-node message, and prints it.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::wire::{self, request, response};
use crate::config::ClusterConfig;

/// The address to reach the node at: its advertised address, else its bind address (loopback
/// when it binds every interface).
fn address(config: &ClusterConfig) -> SocketAddr {
    let addr = config.advertise.unwrap_or(config.bind);
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// Asks the node for its status.
pub async fn query(config: &ClusterConfig) -> Result<wire::Status, String> {
    let address = address(config);
    let secret = config.secret.as_deref().unwrap_or_default();
    match super::link::ask_as_admin(
        address,
        secret,
        config.replay_window,
        request::Body::Status(wire::StatusQuery {}),
    )
    .await
    {
        Ok(response::Body::Status(status)) => Ok(status),
        Ok(other) => Err(format!("unexpected answer from {address}: {other:?}")),
        Err(e) => Err(format!(
            "no answer from the node at {address} (is it running with this config's [cluster] section and secret?): {e}"
        )),
    }
}

/// The status as text, for people.
pub fn render(status: &wire::Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} at {} (generation {}), role: {}",
        status.node, status.address, status.generation, status.role
    );
    let leader = if status.leader.is_empty() {
        "none known"
    } else {
        status.leader.as_str()
    };
    let _ = writeln!(
        out,
        "replicated log: leader {leader}, term {}, voters [{}], last log {}, committed {}, applied {}",
        status.term,
        status.voters.join(", "),
        status.last_log_index,
        status.committed,
        status.applied
    );
    if !status.replication_lag.is_empty() {
        let mut lag: Vec<String> = status
            .replication_lag
            .iter()
            .map(|(name, behind)| format!("{name} {behind} behind"))
            .collect();
        lag.sort();
        let _ = writeln!(out, "replication: {}", lag.join(", "));
    }
    let _ = writeln!(
        out,
        "interest: {} local channels, {} entries from peers",
        status.local_interest, status.remote_interest
    );
    let _ = writeln!(out, "members ({}):", status.members.len());
    let _ = writeln!(
        out,
        "  {:<20} {:<22} {:<8} {:>11} {:<5} {:>12}",
        "NAME", "ADDRESS", "STATE", "INCARNATION", "LINK", "LINK QUEUED"
    );
    for member in &status.members {
        let link = if member.name == status.node {
            "self"
        } else if member.link_up {
            "up"
        } else {
            "down"
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<22} {:<8} {:>11} {:<5} {:>12}",
            member.name, member.address, member.state, member.incarnation, link, member.link_queued
        );
    }
    out
}

/// The status as JSON, for scripts and tests.
pub fn to_json(status: &wire::Status) -> serde_json::Value {
    let members: Vec<serde_json::Value> = status
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "address": m.address,
                "state": m.state,
                "incarnation": m.incarnation,
                "generation": m.generation,
                "link_up": m.link_up,
                "link_queued": m.link_queued,
            })
        })
        .collect();
    serde_json::json!({
        "node": status.node,
        "generation": status.generation,
        "address": status.address,
        "role": status.role,
        "local_interest": status.local_interest,
        "remote_interest": status.remote_interest,
        "leader": status.leader,
        "term": status.term,
        "last_log_index": status.last_log_index,
        "committed": status.committed,
        "applied": status.applied,
        "voters": status.voters,
        "raft_id": status.raft_id,
        "replication_lag": status.replication_lag,
        "members": members,
    })
}
