//! Sessions coming and going: the connection limits a new session must fit, and what a
//! session leaves behind when it goes (its unacked messages go back in line).

use super::{Kill, Outbound, Refusal, Session, SessionId, State};
use crate::Principal;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc;

impl State {
    /// Adds a connected session, if it fits the broker's connection limits.
    pub(crate) fn add_session(
        &mut self,
        principal: Principal,
        peer: Option<std::net::SocketAddr>,
        outbox: mpsc::Sender<Outbound>,
        kill: Arc<Kill>,
        wire: bool,
    ) -> Result<SessionId, Refusal> {
        let ip = peer.map(|p| p.ip());
        self.admit(&principal, ip)?;
        let id = self.next_session;
        self.next_session += 1;
        self.authorizer.connected(id, &principal);
        self.sessions.insert(
            id,
            Session {
                bucket: principal.rate.clone().map(super::Bucket::new),
                peer: ip,
                outbox,
                kill,
                principal,
                subscriptions: Default::default(),
                unacked: BTreeMap::new(),
                next_tag: 1,
                transactions: Default::default(),
                wire,
            },
        );
        Ok(id)
    }

    /// Whether one more session of `principal` from `ip` fits: in all, from one
    /// address (loopback aside), and with one ticket.
    fn admit(&self, principal: &Principal, ip: Option<std::net::IpAddr>) -> Result<(), Refusal> {
        let c = &self.config;
        if self.sessions.len() >= c.max_connections {
            return Err(Refusal::limit(
                "too many connections",
                format!(
                    "The broker has {} connections, its most; try again soon.",
                    c.max_connections
                ),
            ));
        }
        let from_ip = self
            .sessions
            .values()
            .filter(|s| ip.is_some() && s.peer == ip)
            .count();
        if ip.is_some_and(|ip| !ip.is_loopback()) && from_ip >= c.max_connections_per_address {
            return Err(Refusal::limit(
                "too many connections from this address",
                format!(
                    "One address may have {} connections open.",
                    c.max_connections_per_address
                ),
            ));
        }
        if principal.tag.is_some() {
            let same = self
                .sessions
                .values()
                .filter(|s| s.principal.name == principal.name && s.principal.tag == principal.tag)
                .count();
            if same >= c.max_connections_per_login {
                return Err(Refusal::limit(
                    "too many connections with this ticket",
                    format!(
                        "One ticket may open {} connections at once; close one first.",
                        c.max_connections_per_login
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Forgets a session: its unacked messages go back to their queues, in their original
    /// order and marked redelivered, and its topic subscriptions' queues are deleted.
    pub(crate) fn remove_session(&mut self, id: SessionId) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        self.authorizer.disconnected(id, &session.principal);
        let mut touched = HashSet::new();
        for (_, unacked) in session.unacked {
            touched.insert(unacked.queue.clone());
            self.requeue(&unacked.queue, unacked.item);
        }
        for (sub_id, sub) in session.subscriptions {
            self.detach(id, &sub_id, &sub.queue);
            touched.insert(sub.queue);
        }
        for queue in touched {
            self.deliver_ready(&queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use crate::{BrokerConfig, Principal};
    use std::sync::{Arc, Mutex};

    /// Lets everyone in and writes down who came and went.
    #[derive(Default)]
    struct Register(Mutex<Vec<String>>);

    impl crate::Authorizer for Register {
        fn connect(
            &self,
            login: Option<&str>,
            _: Option<&str>,
            _: Option<std::net::SocketAddr>,
        ) -> Result<Principal, String> {
            Ok(Principal::anyone(login.unwrap_or_default()))
        }

        fn connected(&self, session: u64, principal: &Principal) {
            self.0
                .lock()
                .unwrap()
                .push(format!("+{}{session}", principal.name));
        }

        fn disconnected(&self, session: u64, principal: &Principal) {
            self.0
                .lock()
                .unwrap()
                .push(format!("-{}{session}", principal.name));
        }
    }

    #[test]
    fn the_authorizer_hears_of_each_connection_that_came_and_went() {
        let register = Arc::new(Register::default());
        let config = BrokerConfig {
            max_connections: 2,
            ..BrokerConfig::default()
        };
        let mut h = Harness::with_authorizer(config, register.clone());
        let ann = h.connect("ann");
        let bob = h.connect("bob");
        assert!(h.try_connect(Principal::anyone("cy"), false, 8).is_err());
        h.state.remove_session(ann);
        h.state.remove_session(ann);
        let told = register.0.lock().unwrap().clone();
        assert_eq!(
            told,
            [
                format!("+ann{ann}"),
                format!("+bob{bob}"),
                format!("-ann{ann}")
            ],
            "a refused one is not told, a gone one once"
        );
    }

    #[test]
    fn the_broker_holds_at_most_its_connections() {
        let mut h = Harness::with_config(BrokerConfig {
            max_connections: 2,
            ..BrokerConfig::default()
        });
        let ann = h.connect("ann");
        h.connect("bob");
        let refusal = h
            .try_connect(Principal::anyone("cy"), false, 8)
            .unwrap_err();
        assert_eq!(refusal.message, "too many connections");
        h.state.remove_session(ann);
        h.try_connect(Principal::anyone("cy"), false, 8).unwrap();
    }

    #[test]
    fn one_ticket_opens_so_many_connections() {
        let mut h = Harness::with_config(BrokerConfig {
            max_connections_per_login: 1,
            ..BrokerConfig::default()
        });
        let mut ann = Principal::anyone("ann");
        ann.tag = Some("room-1".into());
        h.try_connect(ann.clone(), false, 8).unwrap();
        let refusal = h.try_connect(ann.clone(), false, 8).unwrap_err();
        assert_eq!(refusal.message, "too many connections with this ticket");
        // The same player in another room, or untagged, is another ticket.
        ann.tag = Some("room-2".into());
        h.try_connect(ann, false, 8).unwrap();
        h.connect("ann");
    }

    #[test]
    fn a_session_that_goes_gives_back_its_unacked_messages_in_order() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/queue/q", "s", "client", 0).unwrap();
        h.send_all(bob, "/queue/q", &["1", "2", "3"]);
        assert_eq!(h.bodies(ann), ["1", "2", "3"]);
        h.state.remove_session(ann);
        assert_eq!(h.state.queue_depth("/queue/q"), Some(3));
        h.subscribe(bob, "/queue/q", "s", "client", 0).unwrap();
        let again = h.messages(bob);
        let bodies: Vec<_> = again.iter().map(|m| m.body.to_vec()).collect();
        assert_eq!(bodies, [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
        assert!(again
            .iter()
            .all(|m| m.header("redelivered") == Some("true")));
    }

    #[test]
    fn a_session_that_goes_takes_its_topic_subscriptions_with_it() {
        let mut h = Harness::new();
        let (ann, bob) = (h.connect("ann"), h.connect("bob"));
        h.subscribe(ann, "/topic/t", "s", "auto", 0).unwrap();
        h.state.remove_session(ann);
        assert_eq!(h.state.queues.len(), 0);
        assert!(h.state.topics.is_empty());
        h.send(bob, "/topic/t", "nobody hears").unwrap();
        assert_eq!(h.state.queues.len(), 0);
    }
}
