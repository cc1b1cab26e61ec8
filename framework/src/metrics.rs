//! The server's Prometheus metrics, process-wide, in a registry of the framework's own
//! (`GET /metrics` serves it). Counters and histograms are updated where things happen;
//! gauges (connections, rooms, players, queue depth) are read when scraped.

use crate::broker::Stats;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::sync::LazyLock;

/// The registry `GET /metrics` serves.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

/// Inputs room workers applied (ticks and lobby controls not counted).
pub static INPUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new("gsl_inputs_total", "Player inputs applied by room workers").unwrap())
});

/// Messages room workers published.
pub static OUTPUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new("gsl_outputs_total", "Messages room workers published").unwrap())
});

/// Checkpoints room workers saved to the store.
pub static CHECKPOINTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new("gsl_checkpoints_total", "Checkpoints room workers saved").unwrap())
});

/// Flushes of the broker's journal to the disk (`--fsync`): each covers every message
/// written while the one before was under way.
pub static JOURNAL_FLUSHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "gsl_journal_flushes_total",
            "Flushes of the broker's journal to the disk",
        )
        .unwrap(),
    )
});

/// Room inputs the embedded broker had applied where it delivered them, or handed to
/// the room's worker task instead (`way`: `inline` or `task`).
pub static INLINE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gsl_delivered_inputs_total",
                "Room inputs the embedded broker applied where it delivered them (inline) or handed to the worker's task (task)",
            ),
            &["way"],
        )
        .unwrap(),
    )
});

/// Players quick play seated (`POST /matchmake`).
pub static QUICK_PLAYS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "gsl_quick_plays_total",
            "Players quick play seated (POST /matchmake)",
        )
        .unwrap(),
    )
});

/// How long applying one inbox message took.
pub static HANDLER_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    let buckets = vec![
        0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
    ];
    register(
        Histogram::with_opts(
            HistogramOpts::new("gsl_handler_seconds", "Time to apply one inbox message")
                .buckets(buckets),
        )
        .unwrap(),
    )
});

/// Frames or connections the broker refused, by reason.
pub static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gsl_refused_total",
                "Frames and connections refused with an ERROR, by reason",
            ),
            &["reason"],
        )
        .unwrap(),
    )
});

/// Inputs and requests turned away by a limit, by which.
pub static LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gsl_limited_total",
                "Inputs and requests turned away by a limit, by limit",
            ),
            &["limit"],
        )
        .unwrap(),
    )
});

/// Open broker connections (embedded broker).
pub static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::new("gsl_connections", "Open connections to the embedded broker").unwrap())
});

/// Rooms with a worker in this process.
pub static ROOMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::new("gsl_rooms", "Rooms with a worker in this process").unwrap())
});

/// Players in live rooms.
pub static PLAYERS: LazyLock<IntGauge> =
    LazyLock::new(|| register(IntGauge::new("gsl_players", "Players in live rooms").unwrap()));

/// Messages waiting in the embedded broker's queues.
pub static QUEUED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "gsl_queued_messages",
            "Messages waiting in the embedded broker's queues",
        )
        .unwrap(),
    )
});

/// Brings the broker's counters here: the broker counts on its own (it knows nothing
/// of metrics), and what it counted is read when `GET /metrics` is scraped.
pub fn record_broker(stats: &Stats) {
    let refused = [
        ("limit", stats.refused_limit),
        ("access", stats.refused_access),
        ("malformed", stats.refused_malformed),
        ("other", stats.refused_other),
    ];
    for (reason, total) in refused {
        catch_up(&REFUSED.with_label_values(&[reason]), total);
    }
    catch_up(
        &LIMITED.with_label_values(&["input_rate"]),
        stats.dropped_sends,
    );
    catch_up(&LIMITED.with_label_values(&["flood"]), stats.floods);
    catch_up(&JOURNAL_FLUSHES, stats.journal_flushes);
    catch_up(&INLINE.with_label_values(&["inline"]), stats.inline_taken);
    catch_up(&INLINE.with_label_values(&["task"]), stats.inline_declined);
}

/// Brings a counter up to `total`, a count kept elsewhere since the process started.
fn catch_up(counter: &IntCounter, total: u64) {
    let have = counter.get();
    if total > have {
        counter.inc_by(total - have);
    }
}

/// Every metric in Prometheus's text format.
pub fn render() -> String {
    // Touch the lazies, so that every metric shows from the first scrape.
    let _ = (&*INPUTS, &*OUTPUTS, &*HANDLER_SECONDS, &*REFUSED, &*LIMITED);
    let _ = (&*CONNECTIONS, &*ROOMS, &*PLAYERS, &*QUEUED, &*CHECKPOINTS);
    let _ = (&*JOURNAL_FLUSHES, &*INLINE);
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut out)
        .expect("the text format encodes");
    String::from_utf8(out).expect("the text format is UTF-8")
}
