//! The CCU benchmark. Players join rooms through the real lobby, connect to the real
//! broker over WebSocket, and each sends moves at a steady rate; every input's latency is
//! the time until its own answer arrives. The same workload runs, in the same run,
//! against the all-in-one server, cluster mode on RabbitMQ, and a plain WebSocket floor
//! with the same room logic and no framework. See `docs/benchmarks.md`.
//!
//! ```sh
//! cargo run --release -p bench -- run --ccu 300,500,1000 --sweep
//! cargo run --release -p bench -- idle --rooms 1000
//! cargo run --release -p bench -- matchmake --rates 250,500,1000 --open-rooms 100,1000,10000
//! ```

/// The servers this binary runs (`bench game-server`, `bench floor`) on game-server's
/// allocator (see its `jemalloc` feature).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod floor;
mod gate;
mod load;
mod matchmake;
mod procfs;
mod relay;
mod report;
mod target;

use clap::{Parser, Subcommand};
use load::Workload;
use report::Row;
use std::path::PathBuf;
use std::time::Duration;
use target::{Mode, Target};

/// The CCU benchmark of game-server-less, side by side with a plain WebSocket floor.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs the workload at each CCU against each mode, prints a markdown table side by
    /// side, and writes an SVG plot of p99 against CCU.
    Run(RunArgs),
    /// Measures what empty rooms cost: server CPU and store writes of rooms nobody is in,
    /// beside the same server with no rooms.
    Idle(IdleArgs),
    /// Quick plays a second: players ask `POST /matchmake` at steady rates while rooms
    /// stand open; prints time to the ticket, to the first room message, and the
    /// server's CPU per seat, side by side for each number of open rooms.
    Matchmake(MatchArgs),
    /// What match records cost and how fast the deploy gate runs them again: a match
    /// of the MMO played into a room worker in process with recording off and on, then
    /// run again by the gate's code, on one core.
    Gate(gate::GateArgs),
    /// Serves the floor (used by `run`).
    #[command(hide = true)]
    Floor {
        /// Where to listen.
        #[arg(long)]
        listen: String,
        /// Bytes of WebSocket read buffer a connection zeroes before each read
        /// (tokio-tungstenite's default when not given: 128 KiB).
        #[arg(long)]
        read_buffer: Option<usize>,
    },
    /// Serves the relay, the broker alone (used by `run`).
    #[command(hide = true)]
    Relay {
        /// Where to listen.
        #[arg(long)]
        listen: String,
    },
    /// Runs the game server (used by `run`): the same as `game-server ARGS`.
    #[command(hide = true, name = "game-server")]
    GameServer {
        /// The game server's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Modes to measure; rabbitmq needs `scripts/rabbitmq-node start --lobby
    /// http://127.0.0.1:18080` and PostgreSQL, rabbitmq-cluster `scripts/rabbitmq-node
    /// cluster start 3 --lobby http://127.0.0.1:18080` (it is not in the default list).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["floor", "embedded", "rabbitmq"])]
    modes: Vec<Mode>,
    /// CCU (players connected at once) to measure, in increasing order.
    #[arg(long, value_delimiter = ',', default_values = ["100", "300", "500", "1000", "1500", "2000"])]
    ccu: Vec<usize>,
    /// Players per room.
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Inputs each player sends a second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of sending before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// A mode stops at the first CCU it does not hold (p99 over --max-p99-ms, or
    /// anything lost or doubled); the summary gives the largest CCU each held.
    #[arg(long)]
    sweep: bool,
    /// The p99 a CCU must keep to count as held.
    #[arg(long, default_value_t = 50.0)]
    max_p99_ms: f64,
    /// Where to write the SVG plot of p99 against CCU.
    #[arg(long, default_value = "target/bench-p99.svg")]
    plot: PathBuf,
    /// Exit with status 1 if any input was lost, doubled or out of order, or a mode could
    /// not run (times are not checked).
    #[arg(long)]
    check: bool,
    /// STOMP players agree heart-beats every this many ms both ways, as real clients do
    /// (stomp.js: 10,000; the terminal client: 2,000), and send one when they have sent
    /// nothing else for that long. Without it, none (the floor has none either way).
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u64>,
}

#[derive(clap::Args, Debug)]
struct IdleArgs {
    /// Empty rooms to measure.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
}

#[derive(clap::Args, Debug)]
struct MatchArgs {
    /// Modes to measure (embedded, rabbitmq).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["embedded", "rabbitmq"])]
    modes: Vec<Mode>,
    /// Quick plays a second to ask for, each in turn.
    #[arg(long, value_delimiter = ',', default_values = ["250", "500", "1000"])]
    rates: Vec<f64>,
    /// Rooms open (empty, of four seats) before the quick plays, each in turn.
    #[arg(long, value_delimiter = ',', default_values = ["100", "1000", "10000"])]
    open_rooms: Vec<usize>,
    /// Seconds of quick plays at each rate.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// More arguments for the game server, e.g. `--server-arg=--store
    /// --server-arg=postgres://postgres@127.0.0.1/DB` (embedded mode; the database
    /// must be empty).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let code = runtime.block_on(async {
        match cli.command {
            Cmd::Run(args) => run(args).await,
            Cmd::Idle(args) => idle(args).await,
            Cmd::Matchmake(args) => matchmake(args).await,
            Cmd::Gate(args) => gate::run(args),
            Cmd::Floor {
                listen,
                read_buffer,
            } => {
                let serve = |listener| floor::serve(listener, read_buffer);
                listen_and_serve("floor", &listen, serve).await
            }
            Cmd::Relay { listen } => listen_and_serve("relay", &listen, relay::serve).await,
            Cmd::GameServer { args } => game_server(args).await,
        }
    });
    std::process::exit(code);
}

/// Serves `what` (the floor or the relay) on `listen` until the process ends; the exit
/// code.
async fn listen_and_serve<F>(
    what: &str,
    listen: &str,
    serve: impl FnOnce(tokio::net::TcpListener) -> F,
) -> i32
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{what}: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    match serve(listener).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{what}: {e}");
            1
        }
    }
}

async fn game_server(args: Vec<String>) -> i32 {
    use clap::Parser as _;
    let args =
        game_server_less::Args::parse_from(std::iter::once("game-server".into()).chain(args));
    game_server_less::server::init_logging(&args.log);
    let server =
        game_server_less::Server::new(args.config(), game_server::lobby(), game_server::msg());
    let result = match server.start().await {
        Ok(running) => {
            running
                .serve(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("game-server: {e}");
            1
        }
    }
}

async fn run(args: RunArgs) -> i32 {
    let mut modes = args.modes.clone();
    modes.sort();
    modes.dedup();
    println!(
        "Rooms of {} players, each sending {} moves/s; {} s warm-up, {} s measured; a fresh server per run.\n",
        args.room_size, args.rate, args.warmup, args.secs
    );
    println!("{}", report::HEADER);
    let mut rows: Vec<Row> = Vec::new();
    let mut going = modes.clone();
    for &ccu in &args.ccu {
        for &mode in &modes {
            if !going.contains(&mode) {
                continue;
            }
            let w = Workload {
                players: ccu,
                room_size: args.room_size.max(1),
                rate: args.rate,
                warmup: Duration::from_secs_f64(args.warmup),
                secs: Duration::from_secs_f64(args.secs),
                drain: Duration::from_secs(5),
                heartbeat: args
                    .heartbeat_ms
                    .filter(|&ms| ms > 0)
                    .map(Duration::from_millis),
            };
            let row = measure(mode, &w).await;
            println!("{}", report::line(&row, args.max_p99_ms));
            let unavailable = row.outcome.is_err();
            let failed = !row.held(args.max_p99_ms);
            rows.push(row);
            if unavailable || (args.sweep && failed) {
                going.retain(|&m| m != mode);
            }
        }
    }
    for placement in rows.iter().filter_map(|r| r.placement.as_deref()) {
        println!("\n{placement}");
    }
    println!("\n{}", report::summary(&rows, &modes, args.max_p99_ms));
    if let Some(dir) = args.plot.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match report::plot(&rows, &modes, &args.plot) {
        Ok(()) => println!("Plot: {}", args.plot.display()),
        Err(e) => eprintln!("bench: could not write the plot: {e}"),
    }
    let broken = rows.iter().any(|r| match &r.outcome {
        Ok(o) => !o.clean(),
        Err(_) => true,
    });
    if args.check && broken {
        eprintln!("bench: inputs were lost, doubled or reordered, or a mode could not run");
        return 1;
    }
    0
}

/// One fresh server of `mode`, the workload against it, and the server stopped.
async fn measure(mode: Mode, w: &Workload) -> Row {
    let mut row = Row {
        mode,
        ccu: w.players,
        outcome: Err(String::new()),
        peak_rss: 0,
        placement: None,
    };
    let target = match Target::start(mode).await {
        Ok(t) => t,
        Err(e) => {
            row.outcome = Err(format!("not run: {e}"));
            return row;
        }
    };
    let seats = match (&target.lobby, &target.floor_ws, &target.relay_ws) {
        (Some(lobby), _, _) => load::seats_via_lobby(lobby, w).await,
        (None, Some(ws), _) => Ok(load::seats_on_floor(ws, w)),
        (None, None, Some(ws)) => Ok(load::seats_on_relay(ws, w)),
        _ => Err("the target has no lobby, floor or relay".into()),
    };
    let links_before = target.placement().await.map(|p| p.link_bytes);
    let (outcome, midway) = match seats {
        Ok(seats) => {
            // Where things are, halfway through the measured window (the players are
            // gone after it).
            let midway = async {
                tokio::time::sleep(w.warmup + w.secs / 2).await;
                target.placement().await
            };
            let (outcome, midway) = tokio::join!(load::run(seats, w, &target.pids), midway);
            (Ok(outcome), midway)
        }
        Err(e) => (Err(format!("joining failed: {e}")), None),
    };
    row.outcome = outcome;
    if let (Some(before), Some(midway), Some(after), Ok(o)) =
        (links_before, midway, target.placement().await, &row.outcome)
    {
        let per_input = (after.link_bytes.saturating_sub(before)) as f64 / o.sent.max(1) as f64;
        row.placement = Some(format!(
            "{} at {} CCU: inbox leaders per node {:?}; players' connections per node {:?}; {:.0} bytes between nodes per input (the whole run, warm-up and drain included)",
            mode.name(),
            w.players,
            midway.leaders,
            midway.players,
            per_input
        ));
    }
    row.peak_rss = target.peak_rss();
    if let Ok(o) = &row.outcome {
        if !o.clean() {
            eprintln!(
                "{} at {} CCU, server logs:\n{}",
                mode.name(),
                w.players,
                target.logs()
            );
        }
    }
    target.stop().await;
    row
}

async fn matchmake(args: MatchArgs) -> i32 {
    use matchmake::Measured;
    println!(
        "Quick plays (POST /matchmake) into rooms of 4, open loop, {} s at each rate; each player connects, asks for the world (look) and goes (grace 0: its seat frees). A fresh server per number of open rooms.\n",
        args.secs
    );
    println!("| mode | open rooms | asked /s | seated /s | ticket p50 ms | ticket p99 ms | first message p99 ms | server CPU µs/seat | failed |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut extra = vec![
        "--policy",
        "default.max_players=4,default.grace_secs=0",
        "--seat-ttl-secs",
        "3600",
    ];
    extra.extend(args.server_args.iter().map(String::as_str));
    let mut code = 0;
    for &mode in &args.modes {
        for &open in &args.open_rooms {
            let target = match Target::start_with(mode, &extra).await {
                Ok(t) => t,
                Err(e) => {
                    println!("| {} | {open} | not run: {e} ||||||||", mode.name());
                    code = 1;
                    continue;
                }
            };
            let lobby = target.lobby.clone().unwrap_or_default();
            if let Err(e) = matchmake::open_rooms(&lobby, open).await {
                println!("| {} | {open} | not run: {e} ||||||||", mode.name());
                code = 1;
                target.stop().await;
                continue;
            }
            for &rate in &args.rates {
                let plan = matchmake::Plan {
                    rate,
                    secs: Duration::from_secs_f64(args.secs),
                    open_rooms: open,
                };
                let m = matchmake::run(&lobby, &plan, &target.pids).await;
                let secs = m.elapsed.as_secs_f64().max(1e-9);
                let per_seat = m.cpu.as_secs_f64() * 1e6 / (m.seated.max(1) as f64);
                println!(
                    "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {}{} |",
                    mode.name(),
                    plan.open_rooms,
                    m.asked as f64 / args.secs,
                    m.seated as f64 / secs,
                    Measured::ms(&m.ticket_us, 0.5),
                    Measured::ms(&m.ticket_us, 0.99),
                    Measured::ms(&m.first_us, 0.99),
                    per_seat,
                    m.failed,
                    m.first_error.map(|e| format!(" ({e})")).unwrap_or_default(),
                );
                if m.failed > 0 {
                    code = 1;
                }
            }
            target.stop().await;
        }
    }
    code
}

async fn idle(args: IdleArgs) -> i32 {
    let secs = Duration::from_secs_f64(args.secs);
    let target = match Target::start(Mode::Embedded).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench: {e}");
            return 1;
        }
    };
    let lobby = target.lobby.clone().unwrap_or_default();
    println!(
        "The all-in-one server, measured {} s at a time.\n",
        args.secs
    );
    println!("| what | rooms with a worker | server CPU % of one core | disk bytes written | checkpoints saved |\n|---|---:|---:|---:|---:|");
    let sample = |what: String| {
        let (target, lobby) = (&target, &lobby);
        async move {
            let (cpu, disk, checkpoints) = idle_sample(target, lobby, secs).await;
            let rooms = load::metric(lobby, "gsl_rooms").await;
            println!("| {what} | {rooms} | {cpu:.2} | {disk} | {checkpoints} |");
        }
    };
    sample("no rooms (reference)".into()).await;
    let code = match load::occupied_rooms(&lobby, args.rooms).await {
        Ok(seats) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            sample(format!(
                "{} rooms with one player each, who sends nothing",
                args.rooms
            ))
            .await;
            match load::leave_rooms(&lobby, &seats).await {
                Ok(()) => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    sample(format!(
                        "the same {} rooms after the players left",
                        args.rooms
                    ))
                    .await;
                    0
                }
                Err(e) => {
                    eprintln!("bench: {e}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("bench: {e}");
            1
        }
    };
    target.stop().await;
    code
}

/// The server's CPU (% of one core), disk writes and checkpoints over `secs`.
async fn idle_sample(target: &Target, lobby: &str, secs: Duration) -> (f64, u64, u64) {
    let checkpoints = || load::metric(lobby, "gsl_checkpoints_total");
    let (cpu0, disk0, cp0) = (
        procfs::cpu_of(&target.pids),
        target.disk_writes(),
        checkpoints().await,
    );
    tokio::time::sleep(secs).await;
    let cpu = procfs::cpu_of(&target.pids).saturating_sub(cpu0);
    (
        cpu.as_secs_f64() * 100.0 / secs.as_secs_f64(),
        target.disk_writes().saturating_sub(disk0),
        checkpoints().await.saturating_sub(cp0),
    )
}
