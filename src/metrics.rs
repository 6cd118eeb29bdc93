//! Prometheus metrics through the `metrics` facade; `/metrics` renders them.
//!
//! Names: `herald_connections`, `herald_subscriptions` (gauges); `herald_publications_in_total`,
//! `herald_publications_out_total` (deliveries), `herald_bytes_in_total`, `herald_bytes_out_total`,
//! `herald_disconnects_total{code}`, `herald_slow_disconnects_total`, `herald_stream_gaps_total`,
//! `herald_command_errors_total{code}`, `herald_api_requests_total{method}` (counters);
//! `herald_command_duration_seconds{command}`, `herald_api_request_duration_seconds{method}`,
//! `herald_store_flush_duration_seconds` (histograms).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Installs the process-wide recorder once and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (several servers in one test process);
            // then this handle renders nothing, which only matters to that process.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
