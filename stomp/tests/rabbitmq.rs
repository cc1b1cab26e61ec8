//! Our client against RabbitMQ's STOMP (61613) and Web-STOMP (15674) plugins.
//!
//! These need RabbitMQ with `rabbitmq_stomp` and `rabbitmq_web_stomp` enabled, as the
//! README's test command sets up. Set `GSL_RABBITMQ_STOMP` / `GSL_RABBITMQ_WS` to point
//! elsewhere.

use std::time::Duration;
use stomp::Error;
use stomp::{AckMode, Client, Command, ConnectOptions, Frame, SubscribeOptions};

const WAIT: Duration = Duration::from_secs(5);

fn urls() -> [String; 2] {
    [
        std::env::var("GSL_RABBITMQ_STOMP").unwrap_or_else(|_| "tcp://127.0.0.1:61613".into()),
        std::env::var("GSL_RABBITMQ_WS").unwrap_or_else(|_| "ws://127.0.0.1:15674/ws".into()),
    ]
}

async fn connect(url: &str) -> Client {
    Client::connect(url, ConnectOptions::login("guest", "guest"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ STOMP is not reachable at {url}: {e}\n\
                 Enable its plugins: rabbitmq-plugins enable rabbitmq_stomp rabbitmq_web_stomp"
            )
        })
}

/// A queue name no earlier run used; RabbitMQ deletes it when its consumer leaves.
fn queue(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("/queue/gsl-test-{tag}-{nanos}")
}

/// RabbitMQ declares a `/queue/` at first use; SEND and SUBSCRIBE must agree on its
/// properties, so both say "auto-delete, not durable".
const TEMP: [(&str, &str); 2] = [("auto-delete", "true"), ("durable", "false")];

fn temp_headers() -> Vec<(String, String)> {
    TEMP.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

async fn send(client: &Client, destination: &str, body: &str) {
    let mut frame = Frame::new(Command::Send)
        .with_header("destination", destination)
        .with_body(body.to_owned());
    frame.headers.extend(temp_headers());
    client.request(frame).await.unwrap();
}

#[tokio::test]
async fn send_subscribe_and_receive_in_order() {
    for url in urls() {
        let client = connect(&url).await;
        assert_eq!(client.version(), "1.2");
        assert!(
            client.server().unwrap_or_default().starts_with("RabbitMQ"),
            "{:?}",
            client.server()
        );
        let q = queue("order");
        let options = SubscribeOptions {
            headers: temp_headers(),
            ..SubscribeOptions::default()
        };
        let mut sub = client.subscribe(&q, options).await.unwrap();
        for i in 0..50 {
            send(&client, &q, &format!("{i}")).await;
        }
        for i in 0..50 {
            let m = sub.recv_timeout(WAIT).await.unwrap();
            assert_eq!(m.body(), i.to_string().as_bytes(), "over {url}");
        }
        client.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn nack_redelivers_and_ack_settles() {
    for url in urls() {
        let client = connect(&url).await;
        let q = queue("nack");
        let options = SubscribeOptions {
            ack: AckMode::ClientIndividual,
            prefetch: Some(1),
            headers: temp_headers(),
        };
        let mut sub = client.subscribe(&q, options).await.unwrap();
        send(&client, &q, "once").await;
        send(&client, &q, "twice").await;
        let first = sub.recv_timeout(WAIT).await.unwrap();
        assert_eq!(first.body(), b"once");
        // prefetch 1: the second waits until the first is settled.
        assert!(sub.recv_timeout(Duration::from_millis(300)).await.is_err());
        client.nack(&first).unwrap();
        let again = sub.recv_timeout(WAIT).await.unwrap();
        assert_eq!(again.body(), b"once", "over {url}");
        assert!(again.redelivered());
        client.ack_confirmed(&again).await.unwrap();
        let second = sub.recv_timeout(WAIT).await.unwrap();
        assert_eq!(second.body(), b"twice");
        client.ack_confirmed(&second).await.unwrap();
        client.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn topic_fans_out_to_every_subscriber() {
    for url in urls() {
        let a = connect(&url).await;
        let b = connect(&url).await;
        let topic = format!("/topic/gsl-test-{}", queue("t").rsplit('-').next().unwrap());
        let mut sa = a
            .subscribe(&topic, SubscribeOptions::default())
            .await
            .unwrap();
        let mut sb = b
            .subscribe(&topic, SubscribeOptions::default())
            .await
            .unwrap();
        for i in 0..10 {
            a.send(&topic, format!("{i}")).await.unwrap();
        }
        for i in 0..10 {
            assert_eq!(
                sa.recv_timeout(WAIT).await.unwrap().body(),
                i.to_string().as_bytes()
            );
            assert_eq!(
                sb.recv_timeout(WAIT).await.unwrap().body(),
                i.to_string().as_bytes()
            );
        }
    }
}

#[tokio::test]
async fn errors_and_refusals_are_reported() {
    for url in urls() {
        let refused = Client::connect(&url, ConnectOptions::login("guest", "wrong")).await;
        assert!(
            matches!(refused, Err(Error::Server { .. }) | Err(Error::Closed(_))),
            "{refused:?}"
        );
        let client = connect(&url).await;
        let err = client.send("/bogus/destination", "x").await.unwrap_err();
        assert!(matches!(err, Error::Server { .. }), "over {url}: {err:?}");
        assert!(client.closed().is_some());
    }
}

#[tokio::test]
async fn heartbeats_keep_an_idle_connection_open() {
    for url in urls() {
        let options = ConnectOptions {
            heartbeat: stomp::HeartBeat::every(Duration::from_secs(1)),
            ..ConnectOptions::login("guest", "guest")
        };
        let client = Client::connect(&url, options).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(client.closed(), None, "over {url}");
        client.disconnect().await.unwrap();
    }
}
