//! The embedded broker over real sockets, driven by our client and by raw bytes.

use futures_util::StreamExt;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use stomp::Error;
use stomp::HeartBeat;
use stomp::{AckMode, Client, ConnectOptions, Message, SubscribeOptions};
use stomp_broker::LocalBroker;
use stomp_broker::{Broker, BrokerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(5);

async fn start(config: BrokerConfig) -> LocalBroker {
    LocalBroker::start(config).await.unwrap()
}

async fn connect(url: &str) -> Client {
    Client::connect(url, ConnectOptions::default())
        .await
        .unwrap()
}

fn body(m: &Message) -> String {
    String::from_utf8(m.body().to_vec()).unwrap()
}

async fn recv(sub: &mut stomp::Subscription) -> Message {
    sub.recv_timeout(WAIT).await.unwrap()
}

/// Asserts that nothing arrives for a short while.
async fn nothing_more(sub: &mut stomp::Subscription) {
    let got = sub.recv_timeout(Duration::from_millis(200)).await;
    assert!(
        got.is_err(),
        "unexpected message {:?}",
        got.map(|m| body(&m))
    );
}

#[tokio::test]
async fn queue_is_fifo_over_tcp_and_websocket() {
    let server = start(BrokerConfig::default()).await;
    for url in server.urls() {
        let client = connect(url).await;
        let queue = format!("/queue/fifo-{}", &url[..2]);
        let mut sub = client
            .subscribe(&queue, SubscribeOptions::default())
            .await
            .unwrap();
        for i in 0..200 {
            client.send_nowait(&queue, format!("{i}")).unwrap();
        }
        for i in 0..200 {
            assert_eq!(body(&recv(&mut sub).await), i.to_string(), "over {url}");
        }
        client.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn a_message_many_times_the_websocket_read_buffer_arrives_whole() {
    // The broker reads a WebSocket 1 KiB at a time: a frame of 300 KB takes hundreds of
    // reads, and frames around the buffer's size end mid-header or mid-body.
    let server = start(BrokerConfig::default()).await;
    let sender = connect(&server.ws_url).await;
    let receivers = [
        connect(&server.ws_url).await,
        connect(&server.tcp_url).await,
    ];
    let mut subs = Vec::new();
    for r in &receivers {
        let sub = r.subscribe("/topic/big", SubscribeOptions::default());
        subs.push(sub.await.unwrap());
    }
    let sizes = [1_000, 1_023, 1_024, 1_025, 4_096, 300_000];
    for size in sizes {
        let text: String = (0..size)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        sender
            .request(
                stomp::Frame::new(stomp::Command::Send)
                    .with_header("destination", "/topic/big")
                    .with_header("x-size", size.to_string())
                    .with_body(text.clone().into_bytes()),
            )
            .await
            .unwrap();
        for sub in &mut subs {
            let m = recv(sub).await;
            assert_eq!(m.header("x-size"), Some(size.to_string().as_str()));
            assert!(body(&m) == text, "{size} bytes arrived changed");
        }
    }
}

#[tokio::test]
async fn binary_bodies_with_nul_and_escaped_headers_survive() {
    let server = start(BrokerConfig::default()).await;
    for url in server.urls() {
        let client = connect(url).await;
        let mut sub = client
            .subscribe("/queue/bin", SubscribeOptions::default())
            .await
            .unwrap();
        let payload: Vec<u8> = (0..=255u8).chain([0, 0, b'\n']).collect();
        let frame = stomp::Frame::new(stomp::Command::Send)
            .with_header("destination", "/queue/bin")
            .with_header("x-odd", "a:b\\c\nd")
            .with_body(payload.clone());
        client.request(frame).await.unwrap();
        let m = recv(&mut sub).await;
        assert_eq!(m.body(), &payload[..]);
        assert_eq!(m.header("x-odd"), Some("a:b\\c\nd"));
    }
}

#[tokio::test]
async fn competing_consumers_share_a_queue_without_duplicates() {
    let server = start(BrokerConfig::default()).await;
    let a = connect(&server.tcp_url).await;
    let b = connect(&server.ws_url).await;
    let mut sa = a
        .subscribe("/queue/work", SubscribeOptions::default())
        .await
        .unwrap();
    let mut sb = b
        .subscribe("/queue/work", SubscribeOptions::default())
        .await
        .unwrap();
    let producer = connect(&server.tcp_url).await;
    for i in 0..100 {
        producer.send("/queue/work", format!("{i}")).await.unwrap();
    }
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    while got_a.len() + got_b.len() < 100 {
        tokio::select! {
            m = sa.recv() => got_a.push(body(&m.unwrap()).parse::<u32>().unwrap()),
            m = sb.recv() => got_b.push(body(&m.unwrap()).parse::<u32>().unwrap()),
            _ = tokio::time::sleep(WAIT) => panic!("messages missing: {} + {}", got_a.len(), got_b.len()),
        }
    }
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both consumers get work"
    );
    assert!(
        got_a.windows(2).all(|w| w[0] < w[1]),
        "each consumer sees queue order"
    );
    assert!(got_b.windows(2).all(|w| w[0] < w[1]));
    let all: HashSet<u32> = got_a.iter().chain(&got_b).copied().collect();
    assert_eq!(all.len(), 100, "no message lost or duplicated");
    nothing_more(&mut sa).await;
    nothing_more(&mut sb).await;
}

#[tokio::test]
async fn unacked_messages_are_redelivered_in_order_when_a_consumer_leaves() {
    let server = start(BrokerConfig::default()).await;
    let producer = connect(&server.tcp_url).await;
    for i in 1..=5 {
        producer
            .send("/queue/redeliver", format!("{i}"))
            .await
            .unwrap();
    }
    let first = connect(&server.ws_url).await;
    let mut sub = first
        .subscribe(
            "/queue/redeliver",
            SubscribeOptions::ack(AckMode::ClientIndividual),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(recv(&mut sub).await);
    }
    first.ack_confirmed(&got[1]).await.unwrap(); // "2" is done; 1, 3, 4, 5 are not
    first.disconnect().await.unwrap();
    producer.send("/queue/redeliver", "6").await.unwrap();

    let second = connect(&server.tcp_url).await;
    let mut sub = second
        .subscribe("/queue/redeliver", SubscribeOptions::default())
        .await
        .unwrap();
    for expected in ["1", "3", "4", "5"] {
        let m = recv(&mut sub).await;
        assert_eq!(body(&m), expected);
        assert!(m.redelivered(), "{expected} is marked redelivered");
    }
    let m = recv(&mut sub).await;
    assert_eq!(body(&m), "6");
    assert!(!m.redelivered());
    nothing_more(&mut sub).await;
}

#[tokio::test]
async fn nack_redelivers_and_client_ack_is_cumulative() {
    let server = start(BrokerConfig::default()).await;
    let c = connect(&server.tcp_url).await;
    let mut sub = c
        .subscribe("/queue/nack", SubscribeOptions::ack(AckMode::Client))
        .await
        .unwrap();
    for i in 1..=3 {
        c.send("/queue/nack", format!("{i}")).await.unwrap();
    }
    let ms: Vec<Message> = vec![
        recv(&mut sub).await,
        recv(&mut sub).await,
        recv(&mut sub).await,
    ];
    // Cumulative: acking "2" acks "1" and "2".
    c.ack_confirmed(&ms[1]).await.unwrap();
    c.nack(&ms[2]).unwrap();
    let again = recv(&mut sub).await;
    assert_eq!(body(&again), "3");
    assert!(again.redelivered());
    c.ack_confirmed(&again).await.unwrap();
    c.disconnect().await.unwrap();
    // Nothing left: 1 and 2 were acked cumulatively, 3 individually.
    let d = connect(&server.tcp_url).await;
    let mut sub = d
        .subscribe("/queue/nack", SubscribeOptions::default())
        .await
        .unwrap();
    nothing_more(&mut sub).await;
    assert_eq!(server.broker.queue_depth("/queue/nack"), Some(0));
}

#[tokio::test]
async fn prefetch_count_limits_unacked_messages_in_flight() {
    let server = start(BrokerConfig::default()).await;
    let c = connect(&server.ws_url).await;
    let options = SubscribeOptions {
        ack: AckMode::ClientIndividual,
        prefetch: Some(2),
        ..SubscribeOptions::default()
    };
    let mut sub = c.subscribe("/queue/prefetch", options).await.unwrap();
    for i in 1..=4 {
        c.send("/queue/prefetch", format!("{i}")).await.unwrap();
    }
    let one = recv(&mut sub).await;
    let _two = recv(&mut sub).await;
    nothing_more(&mut sub).await;
    assert_eq!(server.broker.queue_depth("/queue/prefetch"), Some(2));
    c.ack(&one).unwrap();
    assert_eq!(body(&recv(&mut sub).await), "3");
    nothing_more(&mut sub).await;
}

#[tokio::test]
async fn topics_fan_out_to_every_subscriber_in_publish_order() {
    let server = start(BrokerConfig::default()).await;
    let a = connect(&server.tcp_url).await;
    let b = connect(&server.ws_url).await;
    let mut sa = a
        .subscribe("/topic/room", SubscribeOptions::default())
        .await
        .unwrap();
    let mut sb = b
        .subscribe("/topic/room", SubscribeOptions::default())
        .await
        .unwrap();
    let p = connect(&server.tcp_url).await;
    for i in 0..50 {
        p.send_nowait("/topic/room", format!("{i}")).unwrap();
    }
    for i in 0..50 {
        assert_eq!(body(&recv(&mut sa).await), i.to_string());
        assert_eq!(body(&recv(&mut sb).await), i.to_string());
    }
    // A topic keeps nothing for subscribers that come later.
    let late = connect(&server.ws_url).await;
    let mut sl = late
        .subscribe("/topic/room", SubscribeOptions::default())
        .await
        .unwrap();
    nothing_more(&mut sl).await;
    drop(sa);
    p.send("/topic/room", "after").await.unwrap();
    assert_eq!(body(&recv(&mut sb).await), "after");
    assert_eq!(body(&recv(&mut sl).await), "after");
}

#[tokio::test]
async fn bad_destinations_get_an_error_that_says_why() {
    let server = start(BrokerConfig::default()).await;
    for url in server.urls() {
        let c = connect(url).await;
        let err = c.send("/bogus/x", "hi").await.unwrap_err();
        match err {
            Error::Server { message, detail } => {
                assert!(
                    message.contains("invalid destination \"/bogus/x\""),
                    "{message}"
                );
                assert!(detail.contains("/queue/NAME"), "{detail}");
            }
            other => panic!("expected an ERROR frame, got {other:?}"),
        }
        assert!(c.closed().is_some(), "ERROR closes the connection");
    }
    // The broker still serves everyone else.
    let c = connect(&server.tcp_url).await;
    c.send("/queue/fine", "ok").await.unwrap();
}

/// Writes raw bytes and returns everything the broker sends back until it closes.
async fn raw_exchange(addr: SocketAddr, input: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(input).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("the broker closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_frames_get_error_then_close() {
    let server = start(BrokerConfig::default()).await;
    let connect = "CONNECT\naccept-version:1.2\nhost:/\n\n\0";
    let cases: [(String, &str); 7] = [
        (
            "SEND\ndestination:/queue/a\n\n\0".into(),
            "expected CONNECT, got SEND",
        ),
        ("GARBAGE\n\n\0".into(), "unknown command \"GARBAGE\""),
        (
            "CONNECT\naccept-version:9.9\n\n\0".into(),
            "unsupported protocol versions",
        ),
        (
            format!("{connect}SEND\n\nno destination\0"),
            "SEND frame without a destination header",
        ),
        (
            format!("{connect}SEND\ndestination:/queue/a\nbad\\qescape:1\n\n\0"),
            "invalid escape sequence",
        ),
        (
            format!("{connect}SUBSCRIBE\nid:1\ndestination:/queue/a\nack:sometimes\n\n\0"),
            "invalid ack mode",
        ),
        (
            format!("{connect}SEND\ndestination:/queue/a\ncontent-length:2\n\nabc\0"),
            "longer than its content-length",
        ),
    ];
    for (input, expected) in cases {
        let out = raw_exchange(server.tcp_addr, input.as_bytes()).await;
        let error = out
            .find("ERROR\n")
            .unwrap_or_else(|| panic!("no ERROR for {input:?}: {out:?}"));
        assert!(out[error..].contains(expected), "for {input:?}: {out:?}");
    }
    // A receipt request on the bad frame is answered in the ERROR frame.
    let out = raw_exchange(
        server.tcp_addr,
        format!("{connect}SEND\ndestination:/nowhere\nreceipt:77\n\n\0").as_bytes(),
    )
    .await;
    assert!(out.contains("receipt-id:77"), "{out:?}");
}

#[tokio::test]
async fn oversized_frames_are_refused_before_they_are_buffered() {
    let mut config = BrokerConfig::default();
    config.limits.max_frame_bytes = 64 * 1024;
    let server = start(config).await;
    let mut stream = TcpStream::connect(server.tcp_addr).await.unwrap();
    stream
        .write_all(b"CONNECT\naccept-version:1.2\n\n\0SEND\ndestination:/queue/big\n\n")
        .await
        .unwrap();
    // Keep writing a body with no end: the broker must stop us, not buffer forever.
    let chunk = vec![b'x'; 16 * 1024];
    let mut refused = false;
    for _ in 0..64 {
        if stream.write_all(&chunk).await.is_err() {
            refused = true;
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("frame exceeds the 65536-byte limit"),
        "refused={refused} {out:?}"
    );
    assert_eq!(server.broker.queue_depth("/queue/big"), None);
}

#[tokio::test]
async fn receipts_answer_every_frame_that_asks() {
    let server = start(BrokerConfig::default()).await;
    let out = raw_exchange(
        server.tcp_addr,
        b"STOMP\naccept-version:1.1,1.2\nhost:/\n\n\0\
          SUBSCRIBE\nid:0\ndestination:/queue/r\nreceipt:a\n\n\0\
          SEND\ndestination:/queue/r\nreceipt:b\n\nhi\0\
          DISCONNECT\nreceipt:c\n\n\0",
    )
    .await;
    assert!(out.starts_with("CONNECTED\nversion:1.2\n"), "{out:?}");
    let a = out.find("receipt-id:a").expect("receipt a");
    let msg = out.find("MESSAGE\n").expect("message");
    let b = out.find("receipt-id:b").expect("receipt b");
    let c = out.find("receipt-id:c").expect("receipt c");
    assert!(a < msg && msg < c && b < c, "{out:?}");
}

#[tokio::test]
async fn transactions_deliver_at_commit_and_discard_at_abort() {
    let server = start(BrokerConfig::default()).await;
    let out = raw_exchange(
        server.tcp_addr,
        b"CONNECT\naccept-version:1.2\n\n\0\
          SUBSCRIBE\nid:0\ndestination:/queue/tx\n\n\0\
          BEGIN\ntransaction:t1\n\n\0\
          SEND\ndestination:/queue/tx\ntransaction:t1\n\nkept\0\
          BEGIN\ntransaction:t2\n\n\0\
          SEND\ndestination:/queue/tx\ntransaction:t2\n\ndropped\0\
          ABORT\ntransaction:t2\n\n\0\
          SEND\ndestination:/queue/tx\nreceipt:before-commit\n\nplain\0\
          COMMIT\ntransaction:t1\nreceipt:done\n\n\0\
          DISCONNECT\nreceipt:bye\n\n\0",
    )
    .await;
    assert!(!out.contains("dropped"), "{out:?}");
    let plain = out.find("\n\nplain").expect("plain delivered");
    let before = out.find("receipt-id:before-commit").expect("receipt");
    let kept = out.find("\n\nkept").expect("kept delivered at commit");
    assert!(
        plain < kept && before < kept,
        "the transaction's SEND waits for COMMIT: {out:?}"
    );
}

#[tokio::test]
async fn broker_closes_a_connection_whose_heartbeats_stop() {
    let server = start(BrokerConfig {
        heartbeat: HeartBeat::every(Duration::from_millis(100)),
        ..BrokerConfig::default()
    })
    .await;
    let mut stream = TcpStream::connect(server.tcp_addr).await.unwrap();
    stream
        .write_all(b"CONNECT\naccept-version:1.2\nheart-beat:100,100\n\n\0")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("closed for silence")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("heart-beat:100,100"), "{out:?}");
    assert!(out.contains("heart-beat timeout"), "{out:?}");
    // The broker heart-beat us while it waited: EOLs after CONNECTED's NUL.
    assert!(out.contains("\0\n"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_client_with_heartbeats_stays_connected_while_idle() {
    let server = start(BrokerConfig {
        heartbeat: HeartBeat::every(Duration::from_millis(100)),
        ..BrokerConfig::default()
    })
    .await;
    let options = ConnectOptions {
        heartbeat: HeartBeat::every(Duration::from_millis(100)),
        ..ConnectOptions::default()
    };
    for url in server.urls() {
        let c = Client::connect(url, options.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(c.closed(), None, "over {url}");
        c.send("/queue/hb", "still here").await.unwrap();
    }
}

#[tokio::test]
async fn client_detects_a_server_that_stops_heartbeating() {
    // A fake server: says CONNECTED with 100 ms heart-beats, then never speaks again.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        s.write_all(b"CONNECTED\nversion:1.2\nheart-beat:100,100\n\n\0")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let options = ConnectOptions {
        heartbeat: HeartBeat::every(Duration::from_millis(100)),
        ..ConnectOptions::default()
    };
    let c = Client::connect(&format!("tcp://{addr}"), options)
        .await
        .unwrap();
    let subscribing = c.subscribe("/queue/x", SubscribeOptions::default());
    let result = tokio::time::timeout(WAIT, subscribing)
        .await
        .expect("gave up in time");
    assert!(
        matches!(result, Err(Error::Closed(_))),
        "{:?}",
        result.map(|s| s.id().to_owned())
    );
    let why = c.closed().expect("closed");
    assert!(why.contains("no heart-beat"), "{why}");
}

#[tokio::test]
async fn graceful_shutdown_keeps_undelivered_messages_for_the_next_start() {
    let dir = std::env::temp_dir().join(format!("gsl-spool-{}", std::process::id()));
    let config = BrokerConfig {
        spool: Some(dir.join("spool.stomp")),
        ..BrokerConfig::default()
    };
    let server = start(config.clone()).await;
    let listener = connect(&server.ws_url).await;
    let mut gone = listener
        .subscribe("/queue/keep", SubscribeOptions::ack(AckMode::Client))
        .await
        .unwrap();
    let c = connect(&server.tcp_url).await;
    for i in 1..=3 {
        c.send("/queue/keep", format!("{i}")).await.unwrap();
    }
    let first = recv(&mut gone).await; // delivered, never acked: must survive too
    assert_eq!(body(&first), "1");
    server
        .broker
        .shutdown(Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        c.send("/queue/keep", "late").await.is_err(),
        "no SEND accepted after shutdown"
    );
    assert!(listener.closed().is_some());

    let restarted = start(config).await;
    let c = connect(&restarted.tcp_url).await;
    let mut sub = c
        .subscribe("/queue/keep", SubscribeOptions::default())
        .await
        .unwrap();
    for expected in ["1", "2", "3"] {
        assert_eq!(body(&recv(&mut sub).await), expected);
    }
    nothing_more(&mut sub).await;
    assert!(
        !dir.join("spool.stomp").exists(),
        "the spool is consumed once"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn subscription_streams_work_with_stream_combinators() {
    let server = start(BrokerConfig::default()).await;
    let c = connect(&server.tcp_url).await;
    let sub = c
        .subscribe("/queue/stream", SubscribeOptions::default())
        .await
        .unwrap();
    for i in 0..3 {
        c.send("/queue/stream", format!("{i}")).await.unwrap();
    }
    let bodies: Vec<String> = sub.take(3).map(|m| body(&m)).collect().await;
    assert_eq!(bodies, ["0", "1", "2"]);
}

/// Lets `alice`/`secret` send only to `/queue/in` and subscribe only to `/topic/out`;
/// `watcher` may do anything.
struct Grants;

impl stomp_broker::Authorizer for Grants {
    fn connect(
        &self,
        login: Option<&str>,
        passcode: Option<&str>,
        _peer: Option<SocketAddr>,
    ) -> Result<stomp_broker::Principal, String> {
        match (login, passcode) {
            (Some("alice"), Some("secret")) => Ok(stomp_broker::Principal {
                name: "alice".into(),
                send: Some(vec!["/queue/in".into()]),
                subscribe: Some(vec!["/topic/out".into()]),
                tag: None,
                rate: None,
            }),
            (Some("watcher"), _) => Ok(stomp_broker::Principal::anyone("watcher")),
            _ => Err("bad login or passcode".into()),
        }
    }
}

#[tokio::test]
async fn the_authorizer_decides_who_connects_and_where_they_go() {
    let broker = Broker::with_authorizer(BrokerConfig::default(), std::sync::Arc::new(Grants));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", tcp.local_addr().unwrap());
    tokio::spawn(broker.clone().serve_tcp(tcp));

    let refused = Client::connect(&url, ConnectOptions::login("alice", "wrong")).await;
    match refused {
        Err(Error::Server { message, detail }) => {
            assert_eq!(message, "access refused");
            assert_eq!(detail, "bad login or passcode");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let watcher = Client::connect(&url, ConnectOptions::login("watcher", ""))
        .await
        .unwrap();
    let mut inbox = watcher
        .subscribe("/queue/in", SubscribeOptions::default())
        .await
        .unwrap();
    let alice = Client::connect(&url, ConnectOptions::login("alice", "secret"))
        .await
        .unwrap();
    // The sender cannot forge who it is: the broker stamps user-id itself.
    let forged = stomp::Frame::new(stomp::Command::Send)
        .with_header("destination", "/queue/in")
        .with_header("user-id", "watcher")
        .with_body("hello");
    alice.request(forged).await.unwrap();
    let m = recv(&mut inbox).await;
    assert_eq!(m.header("user-id"), Some("alice"));
    assert_eq!(
        m.frame
            .headers
            .iter()
            .filter(|(n, _)| n == "user-id")
            .count(),
        1
    );

    let err = alice
        .subscribe("/queue/in", SubscribeOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("alice may not subscribe to /queue/in"),
        "{err}"
    );
    let alice = Client::connect(&url, ConnectOptions::login("alice", "secret"))
        .await
        .unwrap();
    let err = alice.send("/queue/other", "x").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("may not send to /queue/other; it may send to /queue/in"),
        "{err}"
    );
    // The refusals disturbed no one else.
    watcher.send("/queue/in", "still fine").await.unwrap();
    assert_eq!(body(&recv(&mut inbox).await), "still fine");
}

#[tokio::test]
async fn stomp_1_1_clients_ack_by_message_id() {
    let server = start(BrokerConfig::default()).await;
    let mut stream = TcpStream::connect(server.tcp_addr).await.unwrap();
    stream
        .write_all(
            b"CONNECT\naccept-version:1.0,1.1\n\n\0\
              SUBSCRIBE\nid:s\ndestination:/queue/v11\nack:client-individual\n\n\0\
              SEND\ndestination:/queue/v11\nreceipt:sent\n\nhello\0",
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("MESSAGE") && seen.contains("receipt-id:sent") && seen.ends_with('\0')) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("version:1.1"), "{seen:?}");
    let message_id = seen
        .lines()
        .find_map(|l| l.strip_prefix("message-id:"))
        .unwrap()
        .to_owned();
    let ack = format!("ACK\nsubscription:s\nmessage-id:{message_id}\nreceipt:acked\n\n\0DISCONNECT\nreceipt:bye\n\n\0");
    stream.write_all(ack.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("receipt-id:bye"));
    // Acked, so nothing is redelivered once the consumer has gone.
    assert_eq!(server.broker.queue_depth("/queue/v11"), Some(0));
}

#[tokio::test]
async fn transactions_are_bounded() {
    let config = BrokerConfig {
        max_transactions: 2,
        max_tx_frames: 3,
        ..BrokerConfig::default()
    };
    let server = start(config).await;
    let connect = "CONNECT\naccept-version:1.2\n\n\0";
    let out = raw_exchange(
        server.tcp_addr,
        format!("{connect}BEGIN\ntransaction:a\n\n\0BEGIN\ntransaction:b\n\n\0BEGIN\ntransaction:c\n\n\0").as_bytes(),
    )
    .await;
    assert!(out.contains("too many open transactions"), "{out:?}");
    let send = "SEND\ndestination:/queue/tx-cap\ntransaction:a\n\nx\0";
    let out = raw_exchange(
        server.tcp_addr,
        format!("{connect}BEGIN\ntransaction:a\n\n\0{send}{send}{send}{send}").as_bytes(),
    )
    .await;
    assert!(out.contains("transaction \"a\" is too large"), "{out:?}");
    assert_eq!(
        server.broker.queue_depth("/queue/tx-cap"),
        None,
        "nothing was published"
    );
}

#[tokio::test]
async fn managed_queues_exist_only_when_the_server_makes_them() {
    let server = start(BrokerConfig {
        managed_prefixes: vec!["/queue/room.".into()],
        ..BrokerConfig::default()
    })
    .await;
    let c = connect(&server.tcp_url).await;
    let err = c.send("/queue/room.nope", "x").await.unwrap_err();
    assert!(
        err.to_string().contains("no queue /queue/room.nope"),
        "{err}"
    );
    assert!(!server.broker.has_queue("/queue/room.nope"));
    server.broker.create_queue("/queue/room.yes");
    let c = connect(&server.tcp_url).await;
    let mut sub = c
        .subscribe("/queue/room.yes", SubscribeOptions::default())
        .await
        .unwrap();
    c.send("/queue/room.yes", "in").await.unwrap();
    assert_eq!(body(&recv(&mut sub).await), "in");
    assert!(server.broker.delete_queue("/queue/room.yes"));
    assert!(
        server
            .broker
            .publish("/queue/room.yes", Vec::new(), "late")
            .is_err(),
        "a deleted room inbox stays deleted"
    );
}

#[tokio::test]
async fn a_kicked_connection_is_told_and_its_messages_redelivered() {
    let server = start(BrokerConfig::default()).await;
    let worker = Client::connect(&server.ws_url, ConnectOptions::login("w", ""))
        .await
        .unwrap();
    let mut sub = worker
        .subscribe("/queue/kick", SubscribeOptions::ack(AckMode::Client))
        .await
        .unwrap();
    let p = connect(&server.tcp_url).await;
    p.send("/queue/kick", "one").await.unwrap();
    assert_eq!(body(&recv(&mut sub).await), "one");
    assert_eq!(server.broker.kick("w"), 1);
    assert!(
        sub.recv_timeout(WAIT).await.is_err(),
        "the subscription ends"
    );
    assert!(
        worker
            .closed()
            .unwrap()
            .contains("disconnected by the server"),
        "{:?}",
        worker.closed()
    );
    let again = connect(&server.ws_url).await;
    let mut sub = again
        .subscribe("/queue/kick", SubscribeOptions::default())
        .await
        .unwrap();
    let m = recv(&mut sub).await;
    assert!(m.redelivered() && body(&m) == "one");
}

#[tokio::test]
async fn a_session_holds_a_bounded_number_of_unacked_messages() {
    let server = start(BrokerConfig {
        max_unacked: 3,
        ..BrokerConfig::default()
    })
    .await;
    let c = connect(&server.tcp_url).await;
    // prefetch 0 would mean "no limit"; the broker's own cap still holds.
    let mut sub = c
        .subscribe(
            "/queue/cap",
            SubscribeOptions::ack(AckMode::ClientIndividual),
        )
        .await
        .unwrap();
    for i in 0..5 {
        c.send("/queue/cap", format!("{i}")).await.unwrap();
    }
    let first = recv(&mut sub).await;
    recv(&mut sub).await;
    recv(&mut sub).await;
    nothing_more(&mut sub).await;
    c.ack(&first).unwrap();
    assert_eq!(body(&recv(&mut sub).await), "3");
}

#[tokio::test]
async fn a_frame_trickled_in_byte_by_byte_still_arrives() {
    let server = start(BrokerConfig::default()).await;
    let c = connect(&server.tcp_url).await;
    let mut sub = c
        .subscribe("/queue/trickle", SubscribeOptions::default())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(server.tcp_addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let frames = b"CONNECT\naccept-version:1.2\n\n\0SEND\ndestination:/queue/trickle\n\nslowly\0";
    for byte in frames {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(body(&recv(&mut sub).await), "slowly");
}

#[tokio::test]
async fn a_single_consumer_queue_feeds_one_consumer_and_hands_over_its_unacked_messages() {
    let server = start(BrokerConfig::default()).await;
    let queue = "/queue/single";
    server.broker.create_single_consumer_queue(queue);
    let first = connect(&server.tcp_url).await;
    let second = connect(&server.ws_url).await;
    let client_ack = || SubscribeOptions {
        ack: AckMode::Client,
        ..SubscribeOptions::default()
    };
    let mut active = first.subscribe(queue, client_ack()).await.unwrap();
    let mut standby = second.subscribe(queue, client_ack()).await.unwrap();
    for i in 0..10 {
        first.send_nowait(queue, format!("{i}")).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(recv(&mut active).await);
    }
    assert_eq!(
        got.iter().map(body).collect::<Vec<_>>(),
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    nothing_more(&mut standby).await;
    // The active consumer acks the first four, then dies: the standby takes over with
    // the other six, redelivered, in order, then what comes next.
    first.ack(&got[3]).unwrap();
    first.flush().await.unwrap();
    drop(active);
    drop(first);
    for i in 4..10 {
        let m = recv(&mut standby).await;
        assert_eq!(body(&m), i.to_string());
        assert_eq!(m.header("redelivered"), Some("true"));
    }
    second.send_nowait(queue, "10").unwrap();
    assert_eq!(body(&recv(&mut standby).await), "10");
}

#[tokio::test]
async fn queued_bytes_and_transaction_bytes_are_bounded() {
    let server = start(BrokerConfig {
        max_queue_bytes: 10_000,
        max_total_queue_bytes: 15_000,
        max_tx_bytes: 5_000,
        ..BrokerConfig::default()
    })
    .await;
    let client = connect(&server.tcp_url).await;
    for _ in 0..9 {
        client.send("/queue/one", "x".repeat(1_000)).await.unwrap();
    }
    let err = client
        .send("/queue/one", "x".repeat(2_000))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("holds 10000 bytes"), "{err}");
    // Another queue may still fill, up to what all queues hold together.
    let client = connect(&server.tcp_url).await;
    client.send("/queue/two", "x".repeat(5_000)).await.unwrap();
    let err = client
        .send("/queue/two", "x".repeat(2_000))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("All queues together hold 15000"),
        "{err}"
    );
    // Reading them frees the room.
    let client = connect(&server.tcp_url).await;
    let mut one = client
        .subscribe("/queue/one", SubscribeOptions::default())
        .await
        .unwrap();
    for _ in 0..9 {
        recv(&mut one).await;
    }
    client.send("/queue/two", "x".repeat(2_000)).await.unwrap();

    // Transactions: bytes count over all of a connection's open transactions.
    let raw = |frames: &str| {
        let addr = server.tcp_addr;
        let frames = frames.to_owned();
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0")
                .await
                .unwrap();
            s.write_all(frames.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).to_string()
        }
    };
    let body = "y".repeat(3_000);
    let out = raw(&format!(
        "BEGIN\ntransaction:a\n\n\0BEGIN\ntransaction:b\n\n\0SEND\ndestination:/queue/t\ntransaction:a\n\n{body}\0SEND\ndestination:/queue/t\ntransaction:b\n\n{body}\0"
    ))
    .await;
    assert!(out.contains("transaction \"b\" is too large"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_slow_readers_does_not_stall_a_bystander() {
    let server = start(BrokerConfig {
        outbox_capacity: 512,
        heartbeat: HeartBeat::NONE,
        ..BrokerConfig::default()
    })
    .await;
    // 20 readers that subscribe to a busy topic and never read their socket: 10 over
    // TCP, 10 over WebSocket.
    let mut slow = Vec::new();
    let mut slow_ws = Vec::new();
    for i in 0..10 {
        let subscribe = format!("CONNECT\naccept-version:1.2\nhost:/\n\n\0SUBSCRIBE\nid:{i}\ndestination:/topic/busy\n\n\0");
        let mut s = TcpStream::connect(server.tcp_addr).await.unwrap();
        s.write_all(subscribe.as_bytes()).await.unwrap();
        slow.push(s);
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                server.ws_url.as_str(),
            )
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "v12.stomp".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        futures_util::SinkExt::send(
            &mut ws,
            tokio_tungstenite::tungstenite::Message::text(subscribe),
        )
        .await
        .unwrap();
        slow_ws.push(ws);
    }
    let producer = connect(&server.tcp_url).await;
    let bystander = connect(&server.tcp_url).await;
    let mut pings = bystander
        .subscribe("/queue/ping", SubscribeOptions::default())
        .await
        .unwrap();
    let body = "x".repeat(2_000);
    let flood = tokio::spawn(async move {
        for _ in 0..40_000 {
            if producer.send_nowait("/topic/busy", body.clone()).is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        producer.flush().await.unwrap();
    });
    let mut rtts = Vec::new();
    while !flood.is_finished() {
        let sent = std::time::Instant::now();
        bystander.send("/queue/ping", "ping").await.unwrap();
        recv(&mut pings).await;
        rtts.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    flood.await.unwrap();
    let dropped = server.broker.session_count();
    rtts.sort();
    let pct = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize];
    println!(
        "bystander round trips while 20 slow readers were dropped: {} pings, p50 {:?}, p99 {:?}, max {:?}; sessions left {dropped}",
        rtts.len(),
        pct(0.5),
        pct(0.99),
        rtts.last().unwrap()
    );
    assert!(
        dropped <= 2,
        "the slow readers were dropped: {dropped} sessions left"
    );
    assert!(
        *rtts.last().unwrap() < Duration::from_millis(200),
        "a bystander stalled while slow readers were dropped"
    );
    drop(slow);
    drop(slow_ws);
}

#[tokio::test]
async fn with_fsync_many_senders_share_flushes_and_lose_nothing() {
    many_senders_share_flushes_and_lose_nothing(BrokerConfig::default().journal_fsync_gap).await;
}

/// With no gap the flusher starts each flush at once: what was written meanwhile still
/// shares the next one, and nothing is lost either way.
#[tokio::test]
async fn with_fsync_and_no_gap_many_senders_still_share_flushes_and_lose_nothing() {
    many_senders_share_flushes_and_lose_nothing(Duration::ZERO).await;
}

async fn many_senders_share_flushes_and_lose_nothing(gap: Duration) {
    let dir = std::env::temp_dir().join(format!(
        "gsl-groupcommit-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let config = BrokerConfig {
        journal: Some(dir.join("broker.journal")),
        journal_fsync: true,
        journal_fsync_gap: gap,
        ..BrokerConfig::default()
    };
    let broker = Broker::open(config, std::sync::Arc::new(stomp_broker::AllowAll)).unwrap();
    let b = LocalBroker::start_with(broker).await.unwrap();
    let consumer = connect(&b.tcp_url).await;
    let mut sub = consumer
        .subscribe("/queue/kept", SubscribeOptions::default())
        .await
        .unwrap();
    // Ten senders, each with 50 receipted messages in flight at once.
    let flushes = b.broker.stats().journal_flushes;
    let mut senders = Vec::new();
    for s in 0..10 {
        let client = connect(&b.tcp_url).await;
        senders.push(tokio::spawn(async move {
            let sends = (0..50).map(|i| {
                let client = client.clone();
                async move { client.send("/queue/kept", format!("{s}-{i}")).await }
            });
            for r in futures_util::future::join_all(sends).await {
                r.unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let flushed = b.broker.stats().journal_flushes - flushes;
    let mut seen = HashSet::new();
    for _ in 0..500 {
        assert!(
            seen.insert(body(&recv(&mut sub).await)),
            "a message came twice"
        );
    }
    nothing_more(&mut sub).await;
    // A DISCONNECT right behind receipted SENDs: their receipts still come first.
    let client = connect(&b.tcp_url).await;
    let sends: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            async move { client.send("/queue/kept", format!("last-{i}")).await }
        })
        .collect();
    let (sent, closed) =
        futures_util::future::join(futures_util::future::join_all(sends), client.disconnect())
            .await;
    closed.unwrap();
    for r in sent {
        r.expect("a receipted SEND before DISCONNECT gets its receipt");
    }
    for _ in 0..20 {
        assert!(body(&recv(&mut sub).await).starts_with("last-"));
    }
    println!(
        "500 receipted messages with --fsync (gap {gap:?}) took {flushed} flushes to the disk"
    );
    assert!(flushed >= 1, "nothing was flushed");
    assert!(
        flushed < 250,
        "{flushed} flushes: the messages did not share them"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Takes each message where it is delivered and publishes `ECHO BODY` to `/topic/echo`.
struct Echo;

impl stomp_broker::InlineConsumer for Echo {
    fn take(&self, message: stomp_broker::Offered<'_>) -> Option<Vec<stomp_broker::Publish>> {
        let body = String::from_utf8_lossy(message.body);
        Some(vec![stomp_broker::Publish {
            destination: "/topic/echo".into(),
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!("ECHO {body}").into(),
        }])
    }
}

#[tokio::test]
async fn an_inline_consumer_answers_over_the_sockets_and_its_unacked_messages_outlive_it() {
    let local = start(BrokerConfig::default()).await;
    let inline = async |broker: &Broker| {
        let client = Client::handshake(broker.connect_in_memory(), ConnectOptions::default())
            .await
            .unwrap();
        let options = SubscribeOptions {
            ack: AckMode::Client,
            prefetch: None,
            headers: vec![(
                "inline".into(),
                broker.offer_inline(std::sync::Arc::new(Echo)),
            )],
        };
        let sub = client.subscribe("/queue/in", options).await.unwrap();
        (client, sub)
    };
    let (worker, _sub) = inline(&local.broker).await;
    let player = connect(&local.ws_url).await;
    let mut echoes = player
        .subscribe("/topic/echo", SubscribeOptions::default())
        .await
        .unwrap();
    for body in ["a", "b"] {
        player
            .send("/queue/in", body.as_bytes().to_vec())
            .await
            .unwrap();
    }
    for want in ["ECHO a", "ECHO b"] {
        let m = recv(&mut echoes).await;
        assert_eq!(body(&m), want);
        assert_eq!(m.header("content-type"), Some("text/plain"));
    }
    let stats = local.broker.queue_stats("/queue/in").unwrap();
    assert_eq!((stats.ready, stats.unacked), (0, 2));
    // Its connection gone, what it took and never acked is taken again, by the next.
    worker.disconnect().await.unwrap();
    let (_next, _next_sub) = inline(&local.broker).await;
    for want in ["ECHO a", "ECHO b"] {
        assert_eq!(body(&recv(&mut echoes).await), want);
    }
    nothing_more(&mut echoes).await;
}
