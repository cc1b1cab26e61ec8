//! Round trip SEND -> broker -> MESSAGE, with the same client, against the embedded
//! broker and RabbitMQ in the same run, printed side by side.
//!
//! Run: `cargo bench -p game-server-less --bench roundtrip`
//! (`GSL_BENCH_N=20000` for more samples; RabbitMQ URLs as in `stomp/tests/rabbitmq.rs`.)

use game_server_less::broker::BrokerConfig;
use game_server_less::broker::LocalBroker;
use game_server_less::stomp::{Client, ConnectOptions, SubscribeOptions};
use std::time::{Duration, Instant};

struct Figures {
    p50: Duration,
    p99: Duration,
    max: Duration,
    per_second: f64,
}

async fn measure(url: &str, options: ConnectOptions, samples: usize) -> Result<Figures, String> {
    let client = Client::connect(url, options)
        .await
        .map_err(|e| e.to_string())?;
    let topic = format!("/topic/bench-{}", std::process::id());
    let mut sub = client
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let payload = r#"{"type":"move","seq":1,"dx":1,"dy":0}"#;
    let wait = Duration::from_secs(5);

    // Latency: one message in flight at a time.
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + samples / 10 {
        let start = Instant::now();
        client
            .send_nowait(&topic, payload)
            .map_err(|e| e.to_string())?;
        sub.recv_timeout(wait).await.map_err(|e| e.to_string())?;
        if i >= samples / 10 {
            times.push(start.elapsed()); // the first tenth warms up
        }
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];

    // Throughput: a window of 100 messages in flight.
    let window = 100;
    let start = Instant::now();
    for _ in 0..window {
        client
            .send_nowait(&topic, payload)
            .map_err(|e| e.to_string())?;
    }
    for i in 0..samples {
        sub.recv_timeout(wait).await.map_err(|e| e.to_string())?;
        if i + window < samples {
            client
                .send_nowait(&topic, payload)
                .map_err(|e| e.to_string())?;
        }
    }
    let per_second = samples as f64 / start.elapsed().as_secs_f64();
    let _ = client.disconnect().await;
    Ok(Figures {
        p50: pct(0.50),
        p99: pct(0.99),
        max: *times.last().unwrap(),
        per_second,
    })
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main]
async fn main() {
    let samples: usize = std::env::var("GSL_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000);
    let embedded = LocalBroker::start(BrokerConfig::default())
        .await
        .expect("loopback ports");
    let (embedded_ws, embedded_tcp) = (embedded.ws_url.clone(), embedded.tcp_url.clone());
    let rabbit_ws =
        std::env::var("GSL_RABBITMQ_WS").unwrap_or_else(|_| "ws://127.0.0.1:15674/ws".into());
    let rabbit_tcp =
        std::env::var("GSL_RABBITMQ_STOMP").unwrap_or_else(|_| "tcp://127.0.0.1:61613".into());
    let guest = ConnectOptions::login("guest", "guest");

    println!("Round trip SEND -> broker -> MESSAGE, one client, {samples} samples each");
    println!("(embedded broker in this process; RabbitMQ on this machine)\n");
    let pairs = [
        ("WebSocket", embedded_ws, rabbit_ws),
        ("TCP", embedded_tcp, rabbit_tcp),
    ];
    for (transport, ours, theirs) in pairs {
        let a = measure(&ours, ConnectOptions::default(), samples).await;
        let b = measure(&theirs, guest.clone(), samples).await;
        println!(
            "{transport:<10} {:>14} {:>16} {:>16}",
            "embedded", "RabbitMQ", "embedded speed-up"
        );
        let row = |name: &str,
                   f: &dyn Fn(&Figures) -> String,
                   ratio: &dyn Fn(&Figures, &Figures) -> f64| {
            let cell =
                |r: &Result<Figures, String>| r.as_ref().map(f).unwrap_or_else(|_| "n/a".into());
            let r = match (&a, &b) {
                (Ok(x), Ok(y)) => format!("{:.2}x", ratio(x, y)),
                _ => "n/a".into(),
            };
            println!("  {name:<8} {:>14} {:>16} {:>16}", cell(&a), cell(&b), r);
        };
        let lat = |pick: fn(&Figures) -> Duration| {
            move |x: &Figures, y: &Figures| pick(y).as_secs_f64() / pick(x).as_secs_f64()
        };
        row("p50", &|f| us(f.p50), &lat(|f| f.p50));
        row("p99", &|f| us(f.p99), &lat(|f| f.p99));
        row("max", &|f| us(f.max), &lat(|f| f.max));
        row("msg/s", &|f| format!("{:.0}", f.per_second), &|x, y| {
            x.per_second / y.per_second
        });
        for (side, r) in [("embedded", &a), ("RabbitMQ", &b)] {
            if let Err(e) = r {
                println!("  {side} unavailable: {e}");
            }
        }
        println!();
    }
    println!("Ratios above 1.00x mean the embedded broker is faster.");
}
