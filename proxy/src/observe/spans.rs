//! One span per sampled request, exported over OTLP/HTTP (SPEC §14) from a thread of its own.
//!
//! The request path only hands a finished span to a bounded queue (`try_send`: it never waits, and a full
//! queue drops the span and counts it). The exporter thread batches what it finds (up to [`BATCH`] spans, or
//! what came in [`LINGER`]) and posts each batch with opentelemetry-otlp's exporter. The SDK's own batch
//! processor is not used: it drops spans on a full queue without a count the proxy can export.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use locci_core::clock::Clock;
use locci_core::config::SecretUrl;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};

use super::SpanCounts;

/// Spans waiting for the exporter at most; more are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Spans per export request at most.
pub const BATCH: usize = 512;
/// How long a span may wait for others to share its export request.
pub const LINGER: Duration = Duration::from_millis(500);
/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A finished request as its span tells it.
#[derive(Debug)]
pub struct FinishedSpan {
    /// The trace it belongs to.
    pub trace_id: u128,
    /// The proxy's span.
    pub span_id: u64,
    /// The caller's span, when the trace came with the request.
    pub parent: Option<u64>,
    /// When the request started and ended (wall time).
    pub start: SystemTime,
    /// When the request ended.
    pub end: SystemTime,
    /// The request's method.
    pub method: String,
    /// The request's path (without its query, which may carry credentials).
    pub path: String,
    /// The route it matched.
    pub route: Option<Arc<str>>,
    /// The status the client got (0: none).
    pub status: u16,
    /// The upstream group and the server of the last attempt.
    pub upstream: Option<String>,
    /// The server of the last attempt.
    pub server: Option<String>,
    /// The request ID the client and upstream see.
    pub request_id: String,
    /// The client as the proxy judged it.
    pub client_ip: IpAddr,
}

/// The exporter's queue; dropping it lets the thread send what it holds and end.
pub struct SpanExport {
    queue: SyncSender<FinishedSpan>,
    /// The endpoint and service name it was started for, to tell whether a reload changed them.
    key: (String, String),
    /// Closed by the thread when it ends, for a shutdown that waits for the last batch.
    done: Mutex<Option<Receiver<()>>>,
}

impl SpanExport {
    /// Starts the exporter thread for `endpoint` (a base URL: spans go to `/v1/traces`).
    pub fn start(
        endpoint: &SecretUrl,
        service_name: &str,
        counts: SpanCounts,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<SpanExport> {
        let (queue, spans) = sync_channel(QUEUE);
        let url = format!("{}/v1/traces", endpoint.expose().trim_end_matches('/'));
        let service = service_name.to_owned();
        let shown = endpoint.to_string();
        let (ended, done) = channel();
        std::thread::Builder::new()
            .name("locci-spans".into())
            .spawn(move || export_loop(&url, &shown, service, spans, &counts, &*clock, ended))?;
        Ok(SpanExport { queue, key: Self::key_of(endpoint, service_name), done: Mutex::new(Some(done)) })
    }

    /// Closes the queue and waits up to `wait` for the thread to send what it holds.
    pub fn finish(export: Arc<SpanExport>, wait: Duration) {
        let done = export.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The queue closes when the last holder lets go; a request offering a span holds it for a moment.
        drop(export);
        if let Some(done) = done
            && done.recv_timeout(wait) == Err(RecvTimeoutError::Timeout)
        {
            tracing::warn!("span export did not finish before the shutdown; the spans it held are lost");
        }
    }

    /// What a running exporter is keyed by: a reload that keeps it keeps the exporter.
    pub fn key_of(endpoint: &SecretUrl, service_name: &str) -> (String, String) {
        (endpoint.expose().to_owned(), service_name.to_owned())
    }

    /// This exporter's key.
    pub fn key(&self) -> &(String, String) {
        &self.key
    }

    /// Hands a span to the exporter; false when the queue was full and it was dropped.
    pub fn offer(&self, span: FinishedSpan) -> bool {
        match self.queue.try_send(span) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The exporter thread: batches, exports, counts; ends when the queue's sender is gone and it is empty.
fn export_loop(
    url: &str,
    shown: &str,
    service: String,
    spans: Receiver<FinishedSpan>,
    counts: &SpanCounts,
    clock: &dyn Clock,
    _ended: Sender<()>,
) {
    // Built here, off every async runtime: the blocking HTTP client must not be made or dropped inside one.
    let built = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build();
    let mut exporter = match built {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(endpoint = %shown, error = %e, "cannot start the span exporter; spans are dropped");
            for _ in spans {
                counts.add("dropped", 1);
            }
            return;
        }
    };
    exporter.set_resource(&Resource::builder_empty().with_service_name(service).build());
    let scope = InstrumentationScope::builder("locci").with_version(env!("CARGO_PKG_VERSION")).build();
    let mut last_error: Option<Instant> = None;
    while let Ok(first) = spans.recv() {
        let mut batch = vec![span_data(first, &scope)];
        let deadline = clock.now() + LINGER;
        let mut closed = false;
        while batch.len() < BATCH {
            match spans.recv_timeout(deadline.saturating_duration_since(clock.now())) {
                Ok(span) => batch.push(span_data(span, &scope)),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let n = batch.len() as u64;
        match futures_executor::block_on(exporter.export(batch)) {
            Ok(()) => counts.add("exported", n),
            Err(e) => {
                counts.add("failed", n);
                // One line per 10 s at most: a collector that is down must not flood the log.
                let now = clock.now();
                if last_error.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(10)) {
                    last_error = Some(now);
                    tracing::warn!(endpoint = %shown, error = %e, spans = n, "span export failed");
                }
            }
        }
        if closed {
            break;
        }
    }
    let _ = exporter.shutdown();
}

/// The SDK's form of a finished request.
fn span_data(span: FinishedSpan, scope: &InstrumentationScope) -> SpanData {
    let mut attributes = vec![
        KeyValue::new("http.request.method", span.method.clone()),
        KeyValue::new("url.path", span.path),
        KeyValue::new("client.address", span.client_ip.to_string()),
        KeyValue::new("locci.request_id", span.request_id),
    ];
    if span.status != 0 {
        attributes.push(KeyValue::new("http.response.status_code", i64::from(span.status)));
    }
    if let Some(route) = &span.route {
        attributes.push(KeyValue::new("http.route", route.to_string()));
    }
    if let Some(upstream) = span.upstream {
        attributes.push(KeyValue::new("locci.upstream", upstream));
    }
    if let Some(server) = span.server {
        attributes.push(KeyValue::new("server.address", server));
    }
    // OpenTelemetry's HTTP conventions: a server span is an error on 5xx (4xx is the client's), or when no
    // answer was written at all.
    let status = match span.status {
        0 => Status::Error { description: Cow::Borrowed("no response") },
        s if s >= 500 => Status::Error { description: Cow::Owned(s.to_string()) },
        _ => Status::Unset,
    };
    let name = match &span.route {
        Some(route) => format!("{} {route}", span.method),
        None => span.method,
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(span.trace_id),
            SpanId::from(span.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: span.parent.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: span.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(name),
        start_time: span.start,
        end_time: span.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}
