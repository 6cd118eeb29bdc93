//! The one way a push reaches subscribers ([`Broker::fan_out`]) and the visible step from the
//! store to it.
//!
//! The store's writer thread does not deliver. Its commit hook ([`commit_queue`]) only queues
//! each batch's [`CommitGroup`]; the broker's fan-out thread ([`Broker::spawn_fan_out`]) takes
//! the groups in order, delivers every publication, then drops the group, which answers its
//! publishers. Fan-out width therefore no longer adds to group-commit latency, and a publish
//! reply still comes after its publication was handed to the local subscribers (as before).
//!
//! Order per channel is commit order, with no gaps:
//! - the writer is the only appender; it assigns offsets in the order it stages appends and hands
//!   each batch's appends, in that order, to the hook, one batch after the other;
//! - the hook pushes onto one unbounded FIFO queue: it never blocks the writer and never drops
//!   a group (the queue only refuses once the fan-out thread is gone, at shutdown);
//! - one thread pops the groups in queue order and fans out their publications one at a time;
//!   [`Hub::broadcast`](crate::hub::Hub::broadcast) hands each to every subscriber of the
//!   channel under the channel's shard lock before the next begins, and a subscriber checks
//!   offset contiguity itself (a gap becomes 2500/3010, never a silent skip).
//!
//! A subscription registered in the hub before its `position` is read receives every
//! publication committed after that read: those commits are staged after the read, so their
//! groups are queued, and delivered, after the registration.
//!
//! The queue needs no bound of its own: a group holds its publishers until it is delivered, and
//! each connection and API request has one publish call in flight at a time, so the queue never
//! holds more than the appends of the calls in flight.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Broker;
use crate::hub::{Prepared, PushKind};
use crate::store::{CommitGroup, CommitHook};

/// The receiving end of the store's commit hook, for [`Broker::spawn_fan_out`].
pub struct CommitQueue(mpsc::UnboundedReceiver<CommitGroup>);

/// The commit hook to open the store with, and the queue it feeds.
pub fn commit_queue() -> (CommitHook, CommitQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    let hook: CommitHook = Box::new(move |group| {
        // Refused only when the fan-out thread is gone (shutdown): dropping the group still
        // answers its publishers, whose appends are durable.
        let _ = tx.send(group);
    });
    (hook, CommitQueue(rx))
}

/// Groups taken from the queue per turn: fewer wake-ups when commits pile up.
const GROUPS_PER_TURN: usize = 64;

impl Broker {
    /// Hands a push to everyone interested in the channel: this node's subscribers today, the
    /// interested peers too once there is a cluster. Callers hand one channel's pushes in that
    /// channel's order: commit order for streams (only the fan-out thread calls it for them),
    /// the publisher's order for channels without history. Never blocks.
    pub fn fan_out(&self, channel: &str, push: &Arc<Prepared>) {
        let Some(cluster) = self.cluster.get() else {
            self.hub.broadcast(channel, push);
            return;
        };
        self.deliver_once(channel, push);
        cluster.route(channel, push.push(), push.epoch());
    }

    /// Hands a push to this node's subscribers unless they already had this publication: in a
    /// cluster, a new leader delivers again what it applied while following (its predecessor
    /// may have died before delivering it), so a position of a stream can arrive twice.
    pub(super) fn deliver_once(&self, channel: &str, push: &Arc<Prepared>) {
        let position = match &push.kind {
            PushKind::Publication { epoch, offset } if !epoch.is_empty() && *offset > 0 => Some((epoch, *offset)),
            _ => None,
        };
        let Some((epoch, offset)) = position else {
            self.hub.broadcast(channel, push);
            return;
        };
        let seen = self.delivered.lock().get(channel).cloned();
        if let Some((last_epoch, last)) = seen {
            if *last_epoch == **epoch && offset <= last {
                return;
            }
        }
        // Only channels with local subscribers are remembered (forgotten with their last one).
        if self.hub.broadcast(channel, push) > 0 {
            self.delivered
                .lock()
                .insert(Arc::from(channel), (epoch.clone(), offset));
        }
    }

    /// Starts [`Broker::run_fan_out`] on a thread of its own. Called inside the runtime the
    /// sessions and links run on (the thread enters it to hand them pushes).
    pub fn spawn_fan_out(self: &Arc<Self>, queue: CommitQueue) -> std::io::Result<std::thread::JoinHandle<()>> {
        let broker = self.clone();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new().name("herald-fanout".into()).spawn(move || {
            let _entered = runtime.enter();
            broker.run_fan_out(queue);
        })
    }

    /// Delivers the store's commits, group by group in commit order, until the store's writer
    /// stops (its hook, and with it the queue's sender, is dropped). Runs on its own thread: as
    /// a task it waited, after each commit, behind the session tasks the last delivery had
    /// woken (a thousand of them for a channel with a thousand subscribers), and with it the
    /// publisher's reply, so one publish at a time to a wide channel ran at half the rate.
    fn run_fan_out(&self, mut queue: CommitQueue) {
        let mut groups = Vec::with_capacity(GROUPS_PER_TURN);
        while queue.0.blocking_recv_many(&mut groups, GROUPS_PER_TURN) > 0 {
            for mut group in groups.drain(..) {
                for commit in std::mem::take(&mut group.commits) {
                    let push = Prepared::publication(&commit.channel, commit.epoch, commit.publication);
                    self.fan_out(&commit.channel, &push);
                }
                // Answers the group's publishers, after their publications went out.
                drop(group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::*;
    use crate::broker::{NodeId, PublishRequest};
    use crate::config::{Config, Durability};
    use crate::hub::{Deliver, Hub, PushKind};
    use crate::protocol::proto::ClientInfo;
    use crate::store::Store;

    /// A subscription that records the offsets it is handed, in order.
    struct Recorder {
        client: Arc<str>,
        offsets: Arc<Mutex<Vec<u64>>>,
    }

    impl Deliver for Recorder {
        fn client(&self) -> &Arc<str> {
            &self.client
        }

        fn deliver(&self, push: &Arc<Prepared>) -> bool {
            if let PushKind::Publication { offset, .. } = push.kind {
                self.offsets.lock().push(offset);
            }
            true
        }
    }

    /// A broker over a real store in `dir` with its fan-out thread running, and a recorder
    /// subscribed to `channel`.
    fn broker(dir: &std::path::Path, channel: &str) -> (Arc<Broker>, Arc<Mutex<Vec<u64>>>) {
        let config = Config::from_toml(
            "[channels.namespaces.hist]\nhistory_size = 1000\nhistory_ttl = \"10m\"\n\
             [channels.namespaces.plain]\n",
        )
        .unwrap();
        let (hook, queue) = commit_queue();
        let store = Store::open(dir, Durability::Os, Duration::from_millis(20), hook).unwrap();
        let broker = Arc::new(Broker::new(
            Arc::new(config),
            NodeId::random(),
            Arc::new(Hub::default()),
            store,
        ));
        broker.spawn_fan_out(queue).unwrap();
        let offsets = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder {
            client: Arc::from("recorder"),
            offsets: offsets.clone(),
        };
        let options = broker.options(channel).unwrap().clone();
        broker.join(channel, &options, recorder, ClientInfo::default());
        (broker, offsets)
    }

    fn request(channel: &str) -> PublishRequest {
        PublishRequest {
            channel: channel.to_owned(),
            data: bytes::Bytes::from_static(b"{}"),
            ..Default::default()
        }
    }

    /// Concurrent publishers, one at a time or in runs: the subscriber sees offsets 1, 2, 3, …
    /// in order, and every publisher's reply comes after its publication was delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_order_reaches_subscribers_and_replies_follow_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, offsets) = broker(dir.path(), "hist:room");
        const TASKS: u64 = 8;
        const EACH: u64 = 40;
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (broker, offsets) = (broker.clone(), offsets.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let results = if (task + i) % 3 == 0 {
                        broker
                            .publish_all(vec![request("hist:room"), request("hist:room")])
                            .await
                    } else {
                        vec![broker.publish(request("hist:room")).await]
                    };
                    for result in results {
                        let offset = result.unwrap().offset;
                        assert!(
                            offsets.lock().contains(&offset),
                            "the reply for offset {offset} came before its delivery"
                        );
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let seen = offsets.lock().clone();
        let total = seen.len() as u64;
        assert!(total > TASKS * EACH);
        assert_eq!(
            seen,
            (1..=total).collect::<Vec<_>>(),
            "offsets out of order or with gaps"
        );
    }

    /// Without history a publication is delivered by the publishing call itself.
    #[tokio::test]
    async fn publications_without_history_are_delivered_before_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, offsets) = broker(dir.path(), "plain:room");
        for _ in 0..3 {
            broker.publish(request("plain:room")).await.unwrap();
        }
        assert_eq!(*offsets.lock(), vec![0, 0, 0]);
    }
}
