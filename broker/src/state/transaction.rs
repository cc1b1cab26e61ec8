//! BEGIN, COMMIT and ABORT. The SENDs, ACKs and NACKs of a transaction are buffered
//! until COMMIT applies them all, in order, or ABORT drops them. A SEND that would be
//! refused is refused when it arrives and again, before anything is applied, at COMMIT:
//! a transaction applies all or nothing.

use super::destination::required;
use super::{Handled, Refusal, SessionId, State};
use stomp::{Command, Frame};

impl State {
    /// Buffers a frame in transaction `tx`, within the transaction limits.
    pub(super) fn buffer(&mut self, id: SessionId, tx: String, frame: Frame) -> Handled {
        // A SEND that would fail is refused now, so that COMMIT is all or nothing.
        if frame.command == Command::Send {
            self.check_send(id, &frame)?;
        }
        let (max_frames, max_bytes) = (self.config.max_tx_frames, self.config.max_tx_bytes);
        let session = self.session(id)?;
        // Bytes count over every open transaction of the connection.
        let bytes: usize = session
            .transactions
            .values()
            .flatten()
            .map(|f| f.body.len())
            .sum::<usize>()
            + frame.body.len();
        let Some(buffered) = session.transactions.get_mut(&tx) else {
            return Err(Refusal::new(
                format!("unknown transaction {tx:?}"),
                "BEGIN the transaction before using it.",
            ));
        };
        if buffered.len() >= max_frames || bytes > max_bytes {
            return Err(Refusal::limit(
                format!("transaction {tx:?} is too large"),
                format!("A transaction holds at most {max_frames} frames, and a connection's open transactions {max_bytes} body bytes together."),
            ));
        }
        buffered.push(frame);
        Ok(())
    }

    pub(super) fn begin(&mut self, id: SessionId, frame: &Frame) -> Handled {
        let tx = required(frame, "transaction")?.to_owned();
        let max = self.config.max_transactions;
        let session = self.session(id)?;
        if session.transactions.len() >= max {
            return Err(Refusal::limit(
                "too many open transactions",
                format!(
                    "A connection may have at most {max} transactions open; COMMIT or ABORT one."
                ),
            ));
        }
        if session.transactions.contains_key(&tx) {
            return Err(Refusal::new(
                format!("transaction {tx:?} already begun"),
                "Transaction names must be unique within a session.",
            ));
        }
        session.transactions.insert(tx, Vec::new());
        Ok(())
    }

    /// COMMIT applies the buffered frames in order; ABORT drops them.
    pub(super) fn end_transaction(&mut self, id: SessionId, frame: &Frame) -> Handled {
        let tx = required(frame, "transaction")?.to_owned();
        let frames = self.session(id)?.transactions.remove(&tx).ok_or_else(|| {
            Refusal::new(format!("unknown transaction {tx:?}"), "BEGIN it first.")
        })?;
        if frame.command == Command::Abort {
            return Ok(());
        }
        // Check every SEND again before applying any: all or nothing.
        for f in frames.iter().filter(|f| f.command == Command::Send) {
            self.check_send(id, f)?;
        }
        for mut f in frames {
            f.headers.retain(|(n, _)| n != "transaction");
            self.handle(id, f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use crate::BrokerConfig;
    use stomp::{Command, Frame};

    fn tx(command: Command, name: &str) -> Frame {
        Frame::new(command).with_header("transaction", name)
    }

    fn send_in(name: &str, destination: &str, body: &str) -> Frame {
        tx(Command::Send, name)
            .with_header("destination", destination)
            .with_body(body.as_bytes().to_vec())
    }

    #[test]
    fn commit_applies_the_buffered_frames_in_order() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "auto", 0).unwrap();
        h.state.handle(bob, tx(Command::Begin, "t")).unwrap();
        for body in ["1", "2"] {
            h.state.handle(bob, send_in("t", "/queue/q", body)).unwrap();
        }
        assert!(h.bodies(ann).is_empty(), "nothing before COMMIT");
        h.state.handle(bob, tx(Command::Commit, "t")).unwrap();
        let got = h.messages(ann);
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].body[..], b"1");
        assert!(got.iter().all(|m| m.header("transaction").is_none()));
    }

    #[test]
    fn abort_drops_the_buffered_frames() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "auto", 0).unwrap();
        h.state.handle(bob, tx(Command::Begin, "t")).unwrap();
        h.state.handle(bob, send_in("t", "/queue/q", "1")).unwrap();
        h.state.handle(bob, tx(Command::Abort, "t")).unwrap();
        assert!(h.bodies(ann).is_empty());
        let gone = h.state.handle(bob, tx(Command::Commit, "t")).unwrap_err();
        assert_eq!(gone.message, "unknown transaction \"t\"");
    }

    #[test]
    fn acks_in_a_transaction_wait_for_the_commit() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "client-individual", 1)
            .unwrap();
        h.send(bob, "/queue/q", "1").unwrap();
        h.send(bob, "/queue/q", "2").unwrap();
        let got = h.messages(ann);
        h.state.handle(ann, tx(Command::Begin, "t")).unwrap();
        let ack = tx(Command::Ack, "t").with_header("id", got[0].header("ack").unwrap());
        h.state.handle(ann, ack).unwrap();
        assert!(h.bodies(ann).is_empty(), "still held by the prefetch");
        h.state.handle(ann, tx(Command::Commit, "t")).unwrap();
        assert_eq!(h.bodies(ann), ["2"]);
    }

    #[test]
    fn a_commit_whose_send_became_invalid_applies_nothing() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "auto", 0).unwrap();
        h.state.handle(bob, tx(Command::Begin, "t")).unwrap();
        h.state.handle(bob, send_in("t", "/queue/q", "1")).unwrap();
        h.state.handle(bob, send_in("t", "/queue/q", "2")).unwrap();
        // The broker stops accepting between the SENDs and the COMMIT.
        h.state.stop_accepting();
        let refusal = h.state.handle(bob, tx(Command::Commit, "t")).unwrap_err();
        assert_eq!(refusal.message, "server shutting down");
        assert!(h.bodies(ann).is_empty());
    }

    #[test]
    fn transactions_are_bounded() {
        let mut h = Harness::with_config(BrokerConfig {
            max_transactions: 1,
            max_tx_frames: 2,
            max_tx_bytes: 10,
            ..BrokerConfig::default()
        });
        let bob = h.connect("bob");
        h.state.handle(bob, tx(Command::Begin, "t")).unwrap();
        let again = h.state.handle(bob, tx(Command::Begin, "t")).unwrap_err();
        assert_eq!(again.message, "too many open transactions");
        let unknown = h
            .state
            .handle(bob, send_in("u", "/queue/q", "1"))
            .unwrap_err();
        assert_eq!(unknown.message, "unknown transaction \"u\"");
        let big = h
            .state
            .handle(bob, send_in("t", "/queue/q", "12345678901"))
            .unwrap_err();
        assert_eq!(big.message, "transaction \"t\" is too large");
        h.state.handle(bob, send_in("t", "/queue/q", "1")).unwrap();
        h.state.handle(bob, send_in("t", "/queue/q", "2")).unwrap();
        let third = h
            .state
            .handle(bob, send_in("t", "/queue/q", "3"))
            .unwrap_err();
        assert_eq!(third.message, "transaction \"t\" is too large");
    }

    #[test]
    fn a_transaction_name_is_begun_once() {
        let mut h = Harness::new();
        let bob = h.connect("bob");
        h.state.handle(bob, tx(Command::Begin, "t")).unwrap();
        let twice = h.state.handle(bob, tx(Command::Begin, "t")).unwrap_err();
        assert_eq!(twice.message, "transaction \"t\" already begun");
    }
}
