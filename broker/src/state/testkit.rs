//! A broker state with sessions whose outboxes the tests read: frames in, frames out,
//! no sockets.

use super::{Handled, Outbound, SessionId, State};
use crate::{AllowAll, Authorizer, BrokerConfig, Principal};
use std::collections::HashMap;
use std::sync::Arc;
use stomp::{parse, Command, Frame, Limits, Parsed};
use tokio::sync::mpsc;

pub(super) struct Harness {
    pub state: State,
    outboxes: HashMap<SessionId, mpsc::Receiver<Outbound>>,
}

impl Harness {
    pub(super) fn new() -> Harness {
        Harness::with_config(BrokerConfig::default())
    }

    pub(super) fn with_config(config: BrokerConfig) -> Harness {
        Harness::with_authorizer(config, Arc::new(AllowAll))
    }

    pub(super) fn with_authorizer(
        config: BrokerConfig,
        authorizer: Arc<dyn Authorizer>,
    ) -> Harness {
        Harness {
            state: State::new(config, authorizer),
            outboxes: HashMap::new(),
        }
    }

    /// A session that may do anything, taking frames as values.
    pub(super) fn connect(&mut self, name: &str) -> SessionId {
        self.connect_as(Principal::anyone(name), false)
    }

    /// A session of `principal`; `wire` for one that takes MESSAGEs encoded (a socket).
    pub(super) fn connect_as(&mut self, principal: Principal, wire: bool) -> SessionId {
        self.try_connect(principal, wire, 64)
            .expect("the session fits")
    }

    /// A session with an outbox of `capacity` frames, or the refusal.
    pub(super) fn try_connect(
        &mut self,
        principal: Principal,
        wire: bool,
        capacity: usize,
    ) -> Result<SessionId, super::Refusal> {
        let (tx, rx) = mpsc::channel(capacity);
        let id = self
            .state
            .add_session(principal, None, tx, Arc::default(), wire)?;
        self.outboxes.insert(id, rx);
        Ok(id)
    }

    pub(super) fn send(&mut self, id: SessionId, destination: &str, body: &str) -> Handled {
        let frame = Frame::new(Command::Send)
            .with_header("destination", destination)
            .with_body(body.as_bytes().to_vec());
        self.state.handle(id, frame)
    }

    /// SENDs each body to `destination`, in order; each must be accepted.
    pub(super) fn send_all(&mut self, id: SessionId, destination: &str, bodies: &[&str]) {
        for body in bodies {
            self.send(id, destination, body)
                .expect("the SEND is accepted");
        }
    }

    /// SUBSCRIBE with id `sub`, `ack` mode and `prefetch` (0: none).
    pub(super) fn subscribe(
        &mut self,
        id: SessionId,
        destination: &str,
        sub: &str,
        ack: &str,
        prefetch: usize,
    ) -> Handled {
        let frame = Frame::new(Command::Subscribe)
            .with_header("destination", destination)
            .with_header("id", sub)
            .with_header("ack", ack)
            .with_header("prefetch-count", prefetch.to_string());
        self.state.handle(id, frame)
    }

    pub(super) fn ack(&mut self, id: SessionId, message: &Frame) -> Handled {
        self.ack_frame(id, Command::Ack, message)
    }

    pub(super) fn nack(&mut self, id: SessionId, message: &Frame) -> Handled {
        self.ack_frame(id, Command::Nack, message)
    }

    fn ack_frame(&mut self, id: SessionId, command: Command, message: &Frame) -> Handled {
        let ack = message.header("ack").expect("a MESSAGE to acknowledge");
        self.state
            .handle(id, Frame::new(command).with_header("id", ack))
    }

    /// Everything in a session's outbox, frames parsed back from wire form.
    pub(super) fn frames(&mut self, id: SessionId) -> Vec<Frame> {
        let rx = self
            .outboxes
            .get_mut(&id)
            .expect("a session of the harness");
        let mut frames = Vec::new();
        while let Ok(out) = rx.try_recv() {
            match out {
                Outbound::Frame(f) => frames.push(f),
                Outbound::Encoded(wire) => match parse(wire.as_bytes(), &Limits::default()) {
                    Ok(Parsed::Frame(f, len)) if len == wire.as_bytes().len() => frames.push(f),
                    other => panic!("not one whole frame: {other:?}"),
                },
                Outbound::Close => frames.push(Frame::new(Command::Disconnect)),
            }
        }
        frames
    }

    /// The MESSAGE frames in a session's outbox.
    pub(super) fn messages(&mut self, id: SessionId) -> Vec<Frame> {
        let frames = self.frames(id);
        assert!(
            frames.iter().all(|f| f.command == Command::Message),
            "only MESSAGEs expected: {frames:?}"
        );
        frames
    }

    /// The bodies of the MESSAGE frames in a session's outbox.
    pub(super) fn bodies(&mut self, id: SessionId) -> Vec<String> {
        self.messages(id)
            .iter()
            .map(|f| String::from_utf8_lossy(&f.body).into_owned())
            .collect()
    }
}
