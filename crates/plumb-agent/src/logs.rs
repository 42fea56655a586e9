//! The agent's log: to stderr, and to any API client that asked to follow
//! it (the `Logs` call). A tracing layer copies each record into a
//! broadcast channel; a client too slow to keep up is told how many lines
//! it missed instead of slowing the agent down.

use crate::proto::LogLine;
use std::fmt::Write as _;
use std::time::SystemTime;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where log lines are published for API clients.
#[derive(Clone)]
pub struct LogHub(broadcast::Sender<LogLine>);

impl Default for LogHub {
    fn default() -> Self {
        LogHub(broadcast::channel(1024).0)
    }
}

/// The process's hub (one tracing subscriber per process).
pub fn hub() -> LogHub {
    static HUB: std::sync::OnceLock<LogHub> = std::sync::OnceLock::new();
    HUB.get_or_init(LogHub::default).clone()
}

impl LogHub {
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.0.subscribe()
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

struct HubLayer(LogHub);

impl<S: tracing::Subscriber> Layer<S> for HubLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        // Nobody listening: skip the formatting.
        if self.0 .0.receiver_count() == 0 {
            return;
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        let meta = event.metadata();
        let _ = self.0 .0.send(LogLine {
            timestamp: humantime_now(),
            level: meta.level().to_string(),
            target: meta.target().to_string(),
            message: m.0,
        });
    }
}

fn humantime_now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// Install the global subscriber: `level` (error, warn, info, debug, trace
/// or a tracing filter directive) to stderr and to the hub.
pub fn init(level: &str) -> LogHub {
    let hub = hub();
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(HubLayer(hub.clone()))
        .try_init();
    hub
}
