//! Membership: SWIM with suspicion and incarnations, from foca, over UDP on `cluster.bind`.
//!
//! foca is sans-I/O: this task feeds it the datagrams that pass the envelope check and the
//! timers it asked for, and carries out what it hands back (datagrams to send, each sealed in
//! an envelope; members up and down, which start and stop links). A node joins through any of
//! its seeds: each is entered as a placeholder member that is down, which foca announces to
//! periodically until the real node answers and replaces it (a seed that starts later, as in a
//! full-cluster restart, is found that way). Membership decides who gets a link and whose
//! state is dropped; it never decides who may write.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, PostcardCodec, State, Timer};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::envelope::Kind;
use super::{now_ms, wire, Inner};

/// A member as foca knows it: a node name at an address, in one process generation. A
/// restarted node (a later generation) replaces its earlier self at the same address.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(super) struct Identity {
    name: String,
    addr: SocketAddr,
    generation: u64,
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    /// Declared down by the others while alive (a partition that healed): come back as the
    /// next generation at once.
    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, &self.name) > (adversary.generation, &adversary.name)
    }
}

type Swim = Foca<Identity, PostcardCodec, rand_foca::rngs::StdRng, foca::NoCustomBroadcast>;

/// foca's settings from `[cluster]`: probes and suspicion as configured; gossip, and
/// announcements to members believed down (seeds included), often enough to converge in well
/// under a second on a LAN.
fn swim_config(config: &crate::config::ClusterConfig) -> foca::Config {
    let mut swim = foca::Config::new_lan(NonZeroU32::new(32).expect("non-zero"));
    swim.probe_period = config.probe_interval;
    swim.probe_rtt = config.probe_timeout;
    swim.suspect_to_down_after = config.suspect_timeout;
    swim.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(100),
        num_members: NonZeroUsize::new(3).expect("non-zero"),
    });
    swim.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::new(1).expect("non-zero"),
    });
    swim.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(1),
        num_members: NonZeroUsize::new(2).expect("non-zero"),
    });
    swim
}

enum Input {
    Timer(Timer<Identity>),
}

/// Runs membership until shutdown, then leaves the cluster (the others learn of it at once
/// rather than after a suspicion timeout).
pub(super) async fn run(inner: Arc<Inner>, socket: UdpSocket) {
    let me = Identity {
        name: inner.name.to_string(),
        addr: inner.advertise,
        generation: inner.generation,
    };
    let rng: rand_foca::rngs::StdRng = rand_foca::make_rng();
    let mut swim: Swim = Foca::new(me, swim_config(&inner.config), rng, PostcardCodec);
    let mut runtime = AccumulatingRuntime::new();
    let (timers, mut fired) = mpsc::unbounded_channel();

    let seeds = resolve_seeds(&inner).await;
    let placeholders = seeds.iter().map(|addr| {
        Member::down(Identity {
            name: String::new(),
            addr: *addr,
            generation: 0,
        })
    });
    if let Err(e) = swim.apply_many(placeholders, false, &mut runtime) {
        tracing::warn!(error = %e, "cluster: cannot register the seeds");
    }
    announce(&mut swim, &seeds, &mut runtime);
    drain(&inner, &socket, &mut swim, &mut runtime, &timers).await;

    let mut view = tokio::time::interval(Duration::from_millis(250));
    let mut buf = vec![0u8; 65536];
    let mut last_announce = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                if let Some(payload) = open(&inner, &buf[..len], from) {
                    if let Err(e) = swim.handle_data(payload, &mut runtime) {
                        tracing::debug!(%from, error = %e, "cluster: membership datagram refused");
                    }
                }
            }
            Some(Input::Timer(timer)) = fired.recv() => {
                if let Err(e) = swim.handle_timer(timer, &mut runtime) {
                    tracing::debug!(error = %e, "cluster: membership timer");
                }
            }
            _ = view.tick() => {
                publish_view(&inner, &swim);
                // Alone (the seeds not up yet, or every other member gone): foca's periodic
                // tasks stop, so the seeds are announced to from here until one answers.
                if swim.num_members() == 0 && last_announce.elapsed() >= REANNOUNCE {
                    last_announce = std::time::Instant::now();
                    announce(&mut swim, &seeds, &mut runtime);
                } else {
                    continue;
                }
            }
        }
        drain(&inner, &socket, &mut swim, &mut runtime, &timers).await;
    }
    if let Err(e) = swim.leave_cluster(&mut runtime) {
        tracing::debug!(error = %e, "cluster: leave");
    }
    drain(&inner, &socket, &mut swim, &mut runtime, &timers).await;
    tracing::info!("cluster: left");
}

/// How often a node without live members announces itself to its seeds.
const REANNOUNCE: Duration = Duration::from_secs(1);

/// Announces this node to its seeds and, when it has been alone, to every member it knew
/// (down now): after a full outage the nodes find each other again whichever comes back first.
fn announce(swim: &mut Swim, seeds: &[SocketAddr], runtime: &mut AccumulatingRuntime<Identity>) {
    let known: Vec<Identity> = swim
        .iter_membership_state()
        .filter(|m| !m.id().name.is_empty() && !seeds.contains(&m.id().addr))
        .map(|m| m.id().clone())
        .collect();
    for member in known {
        if let Err(e) = swim.announce(member, &mut *runtime) {
            tracing::debug!(error = %e, "cluster: cannot announce to a known member");
        }
    }
    for addr in seeds {
        let seed = Identity {
            name: String::new(),
            addr: *addr,
            generation: 0,
        };
        if let Err(e) = swim.announce(seed, &mut *runtime) {
            tracing::debug!(error = %e, "cluster: cannot announce to a seed");
        }
    }
}

/// Checks a datagram's envelope; returns foca's payload when it may be acted upon.
fn open<'a>(inner: &Inner, datagram: &'a [u8], from: SocketAddr) -> Option<&'a [u8]> {
    let reject = |reason: super::envelope::Rejected| {
        metrics::counter!("herald_cluster_rejected_envelopes_total", "reason" => reason.label()).increment(1);
        tracing::debug!(%from, %reason, "cluster: membership datagram rejected");
        None
    };
    let opened = match inner.sealer.open(datagram) {
        Ok(opened) => opened,
        Err(reason) => return reject(reason),
    };
    if opened.kind != Kind::Membership {
        return reject(super::envelope::Rejected::Malformed);
    }
    let nonce = super::envelope::nonce_of(datagram);
    if let Err(reason) = inner
        .guard
        .lock()
        .check(opened.sender, opened.sent_at_ms, nonce, now_ms())
    {
        return reject(reason);
    }
    Some(opened.payload)
}

/// Carries out what foca handed back: datagrams, timers, membership changes.
async fn drain(
    inner: &Arc<Inner>,
    socket: &UdpSocket,
    swim: &mut Swim,
    runtime: &mut AccumulatingRuntime<Identity>,
    timers: &mpsc::UnboundedSender<Input>,
) {
    while let Some((to, data)) = runtime.to_send() {
        let envelope = inner
            .sealer
            .seal(Kind::Membership, &inner.name, now_ms(), rand::random(), &data);
        if let Err(e) = socket.send_to(&envelope, to.addr).await {
            tracing::debug!(to = %to.addr, error = %e, "cluster: membership send failed");
        }
    }
    while let Some((after, timer)) = runtime.to_schedule() {
        let timers = timers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = timers.send(Input::Timer(timer));
        });
    }
    let mut changed = false;
    while let Some(notification) = runtime.to_notify() {
        changed = true;
        match notification {
            OwnedNotification::MemberUp(id) => up(inner, &id),
            OwnedNotification::MemberDown(id) => inner.member_down(&id.name, id.generation),
            OwnedNotification::Rename(old, new) => {
                inner.member_down(&old.name, old.generation);
                let active = swim
                    .iter_membership_state()
                    .any(|m| m.id() == &new && matches!(m.state(), State::Alive | State::Suspect));
                if active {
                    up(inner, &new);
                }
            }
            OwnedNotification::Idle => tracing::info!("cluster: no other member is alive"),
            OwnedNotification::Active => tracing::info!("cluster: joined"),
            OwnedNotification::Defunct => tracing::warn!("cluster: this node was declared down"),
            OwnedNotification::Rejoin(id) => {
                inner.changes.notify_one();
                tracing::info!(
                    generation = id.generation,
                    "cluster: declared down while alive, rejoined as a new generation"
                )
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
    if changed {
        publish_view(inner, swim);
    }
}

fn up(inner: &Arc<Inner>, id: &Identity) {
    if !id.name.is_empty() {
        inner.member_up(Arc::from(id.name.as_str()), id.addr, id.generation);
    }
}

/// Copies foca's view of the members for `herald cluster status` and the metrics.
fn publish_view(inner: &Inner, swim: &Swim) {
    let mut counts = [0usize; 3];
    let mut members: Vec<wire::Member> = swim
        .iter_membership_state()
        .filter(|m| !m.id().name.is_empty())
        .map(|m| {
            let state = match m.state() {
                State::Alive => 0,
                State::Suspect => 1,
                State::Down => 2,
            };
            counts[state] += 1;
            wire::Member {
                name: m.id().name.clone(),
                address: m.id().addr.to_string(),
                state: ["alive", "suspect", "down"][state].to_owned(),
                incarnation: u64::from(m.incarnation()),
                generation: m.id().generation,
                link_up: false,
                link_queued: 0,
            }
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for (state, count) in ["alive", "suspect", "down"].iter().zip(counts) {
        metrics::gauge!("herald_cluster_members", "state" => *state).set(count as f64);
    }
    *inner.members.lock() = members;
}

/// The seeds' addresses, this node's own left out. A seed that does not resolve now is
/// logged and skipped.
async fn resolve_seeds(inner: &Inner) -> Vec<SocketAddr> {
    let mut seeds = Vec::new();
    for seed in &inner.config.seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => {
                for addr in addrs {
                    if addr != inner.advertise && addr != inner.config.bind && !seeds.contains(&addr) {
                        seeds.push(addr);
                    }
                }
            }
            Err(e) => tracing::warn!(%seed, error = %e, "cluster: cannot resolve a seed"),
        }
    }
    seeds
}
