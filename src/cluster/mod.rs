//! The cluster floor under the broker (issue 10; design in `../shared/CLUSTER.md` and
//! `docs/ARCHITECTURE.md`): membership, links, interest routing and replication. Nothing here
//! runs when the config has no `[cluster]` section: single-node Herald pays nothing for it.
//!
//! Built so far:
//! - [`envelope`]: the authenticated, versioned envelope around every inter-node message.

pub mod envelope;
