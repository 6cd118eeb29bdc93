//! This node's emulated sessions (HTTP-streaming, SSE) by session id: where a client's later
//! commands (`POST /emulation`) are handed over, whichever node received the request (a peer
//! forwards it over the cluster link to the node named in it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::transport::Incoming;

#[derive(Default)]
pub struct EmulatedSessions {
    inbound: Mutex<HashMap<Arc<str>, mpsc::Sender<Incoming>>>,
}

/// What became of commands handed to [`EmulatedSessions::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// Queued for the session, or dropped because no such session is open (it just ended; the
    /// client learns that from its stream), as the reference server does.
    Done,
    /// The session's queue stayed full for the whole wait.
    Busy,
}

impl EmulatedSessions {
    pub(crate) fn insert(self: &Arc<Self>, id: Arc<str>, inbound: mpsc::Sender<Incoming>) -> Registered {
        self.inbound.lock().insert(id.clone(), inbound);
        Registered {
            sessions: self.clone(),
            id,
        }
    }

    /// Hands a batch of commands to a session, waiting at most `wait` for room in its queue.
    pub async fn deliver(&self, session: &str, data: Bytes, binary: bool, wait: Duration) -> Handover {
        let Some(inbound) = self.inbound.lock().get(session).cloned() else {
            return Handover::Done;
        };
        match tokio::time::timeout(wait, inbound.send(Incoming::Message { data, binary })).await {
            Err(_) => Handover::Busy,
            // Ended meanwhile: as if unknown.
            Ok(_) => Handover::Done,
        }
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.inbound.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A session's entry in [`EmulatedSessions`], removed when the session ends.
pub(crate) struct Registered {
    sessions: Arc<EmulatedSessions>,
    id: Arc<str>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.inbound.lock().remove(&self.id);
    }
}
