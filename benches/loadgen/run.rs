//! One run of a scenario, whatever it is: every scenario is a [`Workload`] — channels, subscribers
//! per channel, messages published round-robin over the channels, paced by a delivery window or
//! a fixed rate — and [`run`] drives it through the same phases:
//!
//! 1. connect and subscribe every subscriber (a bounded number of handshakes at a time);
//! 2. for `idle`: hold the connections and read the server's RSS;
//! 3. publish, paced; then wait for the acknowledgements;
//! 4. wait until every subscriber has everything, deliveries stall for `settle`, or the deadline;
//! 5. stop the subscribers and add up their tallies.
//!
//! Every wait is bounded by the run's deadline: a run always ends and always reports.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::payload;
use crate::procfs::{self, CpuSample};
use crate::progress::{Ending, Outcome, Progress, Receiver};
use crate::publisher::{Acks, Outgoing, Publisher};
use crate::report::{Endings, Latency, Memory, Report};
use crate::tally::{Tally, Totals};
use crate::target::Target;
use crate::ws::source_address;

/// What a scenario asks for.
#[derive(Debug, Clone)]
pub struct Workload {
    pub scenario: &'static str,
    /// Channel names are `<prefix><index>`.
    pub channel_prefix: &'static str,
    pub channels: usize,
    pub subscribers_per_channel: usize,
    /// Published round-robin: message `k` goes to channel `k % channels` with sequence number
    /// `k / channels`.
    pub messages: u64,
    pub size: usize,
    /// Messages per second; `None`: as fast as the window allows.
    pub rate: Option<f64>,
    /// Most messages published but not yet delivered to all their subscribers; `None`: open loop.
    pub window: Option<u64>,
    pub latency: bool,
    /// `idle`: how long to hold the connections before publishing; server RSS is read after
    /// `settle` of it.
    pub hold: Option<Duration>,
}

impl Workload {
    pub fn subscribers(&self) -> usize {
        self.channels * self.subscribers_per_channel
    }

    fn expected_on(&self, channel: usize) -> u64 {
        let channel = channel as u64;
        if channel >= self.messages {
            0
        } else {
            (self.messages - 1 - channel) / self.channels as u64 + 1
        }
    }
}

/// How to run, whatever the scenario.
#[derive(Debug, Clone)]
pub struct Options {
    pub timeout: Duration,
    /// How long deliveries may stall before the run gives up waiting for the rest.
    pub settle: Duration,
    pub server_pid: Option<u32>,
    pub batch: usize,
    pub inflight: usize,
    pub connect_concurrency: usize,
    pub connections_per_source_address: usize,
}

pub async fn run(target: Arc<Target>, workload: &Workload, options: &Options) -> Report {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let progress = Progress::new(workload.latency);
    let stop = CancellationToken::new();
    let channels: Vec<String> = (0..workload.channels)
        .map(|c| target.channel(&format!("{}{c}", workload.channel_prefix)))
        .collect();
    let mut report = Report::new(workload);
    if workload.hold.is_some() && options.server_pid.is_some() {
        warm_up(&target, workload, options, deadline).await;
    }
    let rss_before = options.server_pid.and_then(procfs::rss_bytes);
    let connect_cpu_start = CpuSample::take(options.server_pid);

    let subscribers = spawn_subscribers(&target, workload, options, &channels, &progress, &stop, deadline);
    let total = workload.subscribers();
    loop {
        let (connected, failed) = progress.connections();
        if connected + failed >= total || Instant::now() >= deadline {
            report.connected = connected;
            report.connect_failures = total - connected;
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    report.connect_secs = started.elapsed().as_secs_f64();
    report.connects_per_sec = report.connected as f64 / report.connect_secs;
    report.connect_cpu = CpuSample::take(options.server_pid).usage_since(&connect_cpu_start);

    if let Some(hold) = workload.hold {
        let settle = options.settle.min(hold);
        sleep(settle).await;
        let rss_after = options.server_pid.and_then(procfs::rss_bytes);
        sleep(hold - settle).await;
        report.memory = Some(Memory::new(rss_before, rss_after, report.connected));
    }

    let publishing = publish_on_own_thread(
        target.clone(),
        channels,
        workload.clone(),
        options.clone(),
        progress.clone(),
        report.connected,
        deadline,
    );
    let published = match timeout_at(deadline + Duration::from_secs(5), publishing).await {
        Ok(Ok(published)) => published,
        _ => Published::failed("the publishing thread did not finish".into()),
    };
    let (cpu_start, first_publish) = (published.cpu_start, published.started);
    report.published = published.paced.sent;
    report.publish_secs = published.publish_secs;
    report.publish_lag_max_ms = published.paced.lag_max.as_secs_f64() * 1e3;
    report.stalled |= published.paced.stalled;
    report.acks = published.acks;
    if let Some(e) = published.error.or(published.paced.error) {
        report.error.get_or_insert(e);
    }
    // Even after a publishing error, what was sent may still arrive: wait for it (bounded).
    let (stalled, timed_out) = wait_for_deliveries(&progress, report.connected, options.settle, deadline).await;
    report.stalled |= stalled;
    report.timed_out = timed_out;
    let cpu = CpuSample::take(options.server_pid).usage_since(&cpu_start);
    report.client_cpu = cpu.client;
    report.server_cpu = cpu.server;
    report.others_cpu = cpu.others;

    stop.cancel();
    let mut totals = Totals::default();
    let mut endings = Endings::default();
    for handle in subscribers {
        // A subscriber sees `stop` at its next await; the deadline guards against a stuck one.
        let outcome = timeout_at(Instant::now().max(deadline) + Duration::from_secs(5), handle).await;
        match outcome {
            Ok(Ok(outcome)) => {
                totals.add(&outcome.tally);
                endings.add(&outcome.ending);
            }
            _ => endings.add(&Ending::Failed("subscriber task did not finish".into())),
        }
    }
    report.frames = progress.frames();
    report.finish(
        totals,
        endings,
        first_publish,
        progress.latency.as_ref().map(|h| Latency::of(&h.lock())),
    );
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report
}

/// Connections the idle scenario opens, subscribes and closes before it reads the server's
/// memory: the first connections make the server touch code and data it has not used yet
/// (pages of its executable among them), a cost paid once and not per connection.
const WARM_UP_CONNECTIONS: usize = 16;

async fn warm_up(target: &Arc<Target>, workload: &Workload, options: &Options, deadline: Instant) {
    let warm = Workload {
        channel_prefix: "warmup",
        channels: WARM_UP_CONNECTIONS,
        subscribers_per_channel: 1,
        messages: 0,
        hold: None,
        ..workload.clone()
    };
    let channels: Vec<String> = (0..warm.channels)
        .map(|c| target.channel(&format!("{}{c}", warm.channel_prefix)))
        .collect();
    let progress = Progress::new(false);
    let stop = CancellationToken::new();
    let until = deadline.min(Instant::now() + Duration::from_secs(10));
    let handles = spawn_subscribers(target, &warm, options, &channels, &progress, &stop, until);
    loop {
        let (connected, failed) = progress.connections();
        if connected + failed >= WARM_UP_CONNECTIONS || Instant::now() >= until {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for handle in handles {
        let _ = handle.await;
    }
    // Let the server end those sessions before its memory is read.
    sleep(Duration::from_millis(500)).await;
}

fn spawn_subscribers(
    target: &Arc<Target>,
    workload: &Workload,
    options: &Options,
    channels: &[String],
    progress: &Arc<Progress>,
    stop: &CancellationToken,
    deadline: Instant,
) -> Vec<JoinHandle<Outcome>> {
    let handshakes = Arc::new(Semaphore::new(options.connect_concurrency.max(1)));
    (0..workload.subscribers())
        .map(|index| {
            let channel_index = index % workload.channels;
            let channel = channels[channel_index].clone();
            let receiver = Receiver::new(Tally::new(workload.expected_on(channel_index)), progress.clone());
            let source = source_address(index, options.connections_per_source_address);
            let (target, progress, stop, handshakes) =
                (target.clone(), progress.clone(), stop.clone(), handshakes.clone());
            tokio::spawn(async move {
                let permit = handshakes.acquire_owned().await;
                let subscribed = timeout_at(deadline, target.subscribe(&channel, source)).await;
                drop(permit);
                match subscribed {
                    Ok(Ok(subscriber)) => {
                        progress.subscriber_ready();
                        subscriber.run(receiver, stop).await
                    }
                    failure => {
                        progress.subscriber_failed();
                        let reason = match failure {
                            Ok(Err(e)) => format!("{e:#}"),
                            _ => "deadline while connecting".into(),
                        };
                        Outcome {
                            tally: receiver.tally,
                            ending: Ending::Failed(reason),
                        }
                    }
                }
            })
        })
        .collect()
}

/// What the publishing thread did.
struct Published {
    cpu_start: CpuSample,
    started: std::time::Instant,
    publish_secs: f64,
    paced: Paced,
    acks: Acks,
    error: Option<String>,
}

impl Published {
    fn failed(error: String) -> Self {
        Self {
            cpu_start: CpuSample::take(None),
            started: std::time::Instant::now(),
            publish_secs: 0.0,
            paced: Paced::default(),
            acks: Acks::default(),
            error: Some(error),
        }
    }
}

/// Opens the publisher and publishes on a thread with a runtime of its own. Sharing the
/// subscribers' runtime, a publish waits its turn behind thousands of subscriber tasks (measured:
/// up to 60 ms behind a fixed-rate schedule at 1,000 subscribers); as a thread of its own, the
/// kernel runs it as soon as its timer fires.
fn publish_on_own_thread(
    target: Arc<Target>,
    channels: Vec<String>,
    workload: Workload,
    options: Options,
    progress: Arc<Progress>,
    connected: usize,
    deadline: Instant,
) -> oneshot::Receiver<Published> {
    let (done, published) = oneshot::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = done.send(Published::failed(format!("publisher runtime: {e}")));
                return;
            }
        };
        let published = runtime.block_on(async {
            let mut publisher = match timeout_at(deadline, target.publisher(channels, options.inflight)).await {
                Ok(Ok(publisher)) => publisher,
                Ok(Err(e)) => return Published::failed(format!("opening the publisher: {e:#}")),
                Err(_) => return Published::failed("opening the publisher: deadline".into()),
            };
            let cpu_start = CpuSample::take(options.server_pid);
            let started = std::time::Instant::now();
            let paced = publish(&mut publisher, &workload, &options, &progress, connected, deadline).await;
            let publish_secs = started.elapsed().as_secs_f64();
            let acks = publisher.finish(deadline).await;
            Published {
                cpu_start,
                started,
                publish_secs,
                paced,
                acks,
                error: None,
            }
        });
        let _ = done.send(published);
    });
    published
}

#[derive(Debug, Default)]
struct Paced {
    sent: u64,
    lag_max: Duration,
    stalled: bool,
    error: Option<String>,
}

/// Publishes the workload's messages in batches, each batch waiting for the rate schedule and for
/// the delivery window.
async fn publish(
    publisher: &mut Publisher,
    workload: &Workload,
    options: &Options,
    progress: &Progress,
    connected: usize,
    deadline: Instant,
) -> Paced {
    // Deliveries one message produces, on average, given who actually subscribed.
    let fanout = connected as f64 / workload.channels as f64;
    let start = Instant::now();
    let mut paced = Paced::default();
    let mut batch = Vec::with_capacity(options.batch);
    let mut next = 0u64;
    while next < workload.messages {
        let mut count = options.batch as u64;
        if let Some(rate) = workload.rate {
            let due = start + Duration::from_secs_f64(next as f64 / rate);
            sleep_until(due).await;
            let now = Instant::now();
            paced.lag_max = paced.lag_max.max(now - due);
            // Everything that is due by now goes out together.
            let due_by_now = ((now - start).as_secs_f64() * rate) as u64 + 1;
            count = count.min(due_by_now.saturating_sub(next).max(1));
        }
        if let Some(window) = workload.window {
            let limit = ((next as f64 - window as f64) * fanout).max(0.0) as u64;
            let mut last = (progress.delivered(), Instant::now());
            while progress.delivered() < limit {
                if Instant::now() >= deadline {
                    paced.error = Some("deadline reached while publishing".into());
                    return paced;
                }
                if last.1.elapsed() >= options.settle {
                    paced.stalled = true;
                    paced.error = Some(format!("deliveries stalled for {:?} while publishing", options.settle));
                    return paced;
                }
                progress
                    .wait_for_deliveries(|delivered| delivered >= limit, Duration::from_millis(5))
                    .await;
                let delivered = progress.delivered();
                if delivered != last.0 {
                    last = (delivered, Instant::now());
                }
            }
        }
        count = count.min(workload.messages - next);
        batch.clear();
        for k in next..next + count {
            let seq = k / workload.channels as u64;
            batch.push(Outgoing {
                channel: (k % workload.channels as u64) as usize,
                payload: payload::encode(seq, progress.now_ns(), workload.size),
            });
        }
        match timeout_at(deadline, publisher.send(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                paced.error = Some(format!("{e:#}"));
                return paced;
            }
            Err(_) => {
                paced.error = Some("deadline reached while publishing".into());
                return paced;
            }
        }
        next += count;
        paced.sent = next;
    }
    paced
}

/// Waits until every connected subscriber is complete. Returns (stalled, timed out).
async fn wait_for_deliveries(
    progress: &Progress,
    connected: usize,
    settle: Duration,
    deadline: Instant,
) -> (bool, bool) {
    let mut last = (progress.delivered(), Instant::now());
    loop {
        if progress.complete_subscribers() >= connected {
            return (false, false);
        }
        let now = Instant::now();
        if now >= deadline {
            return (false, true);
        }
        let delivered = progress.delivered();
        if delivered != last.0 {
            last = (delivered, now);
        } else if now - last.1 >= settle {
            return (true, false);
        }
        sleep(Duration::from_millis(2)).await;
    }
}

impl Report {
    fn finish(
        &mut self,
        totals: Totals,
        endings: Endings,
        first_publish: std::time::Instant,
        latency: Option<Latency>,
    ) {
        let unique = totals.expected - totals.lost;
        if let Some(last) = totals.last_delivery {
            let secs = last.saturating_duration_since(first_publish).as_secs_f64();
            self.delivery_secs = secs;
            if secs > 0.0 {
                self.deliveries_per_sec = unique as f64 / secs;
                self.messages_per_sec = self.published as f64 / secs;
            }
        }
        self.deliveries = unique;
        if self.frames > 0 {
            self.deliveries_per_frame = totals.received as f64 / self.frames as f64;
        }
        self.totals = totals;
        self.endings = endings;
        self.latency_us = latency;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(channels: usize, messages: u64) -> Workload {
        Workload {
            scenario: "test",
            channel_prefix: "c",
            channels,
            subscribers_per_channel: 1,
            messages,
            size: 64,
            rate: None,
            window: None,
            latency: false,
            hold: None,
        }
    }

    #[test]
    fn round_robin_expectations_add_up() {
        for (channels, messages) in [(1, 10), (3, 10), (10, 3), (7, 0), (4, 8)] {
            let w = workload(channels, messages);
            let total: u64 = (0..channels).map(|c| w.expected_on(c)).sum();
            assert_eq!(total, messages, "{channels} channels, {messages} messages");
        }
        assert_eq!(workload(3, 10).expected_on(0), 4);
        assert_eq!(workload(3, 10).expected_on(2), 3);
    }
}
