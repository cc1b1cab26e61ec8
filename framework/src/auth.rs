//! Who may use the broker, and where: players with their join ticket's token reach only
//! their room; workers log in with the worker secret; `guest` may connect from loopback
//! to anything outside the rooms.

use crate::broker::{default_can_send, default_can_subscribe, Authorizer, Principal};
use crate::names::{Names, GUEST, WORKER_USER};
use crate::token::Signer;
use std::net::SocketAddr;

/// The broker's gatekeeper for a game server.
pub struct GameAuthorizer {
    signer: Signer,
    names: Names,
    worker_secret: String,
    allow_guest: bool,
}

impl std::fmt::Debug for GameAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GameAuthorizer")
            .field("allow_guest", &self.allow_guest)
            .finish_non_exhaustive()
    }
}

impl GameAuthorizer {
    /// Checks tokens with `signer`, workers against `worker_secret`, and lets `guest` in
    /// from loopback if `allow_guest`.
    pub fn new(signer: Signer, names: Names, worker_secret: String, allow_guest: bool) -> Self {
        GameAuthorizer {
            signer,
            names,
            worker_secret,
            allow_guest,
        }
    }

    /// What a player holding a valid token for `room` may do.
    pub fn player_grants(&self, room: &str, player: &str) -> Principal {
        Principal {
            name: player.to_owned(),
            send: Some(vec![self.names.inbox(room, player)]),
            subscribe: Some(vec![
                self.names.topic(room),
                self.names.private(room, player),
            ]),
        }
    }

    fn guest_outside_rooms(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        if principal.name == GUEST && self.names.in_rooms(destination) {
            return Err(
                "guest may not use room destinations; join a room through the lobby".into(),
            );
        }
        Ok(())
    }
}

impl Authorizer for GameAuthorizer {
    fn connect(
        &self,
        login: Option<&str>,
        passcode: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<Principal, String> {
        match login {
            Some(WORKER_USER) if passcode == Some(self.worker_secret.as_str()) => {
                return Ok(Principal::anyone(WORKER_USER));
            }
            Some(WORKER_USER) => return Err("wrong worker secret".into()),
            Some(GUEST) if passcode == Some(GUEST) => {
                if !self.allow_guest {
                    return Err("the guest login is switched off on this server".into());
                }
                if !peer.is_some_and(|p| p.ip().is_loopback()) {
                    return Err("guest may connect from loopback only".into());
                }
                return Ok(Principal::anyone(GUEST));
            }
            _ => {}
        }
        let token = passcode
            .filter(|p| !p.is_empty())
            .ok_or("send the token of your join ticket (POST /rooms/{id}/join) as the passcode")?;
        let claims = self.signer.verify(token)?;
        if let Some(login) = login.filter(|l| !l.is_empty()) {
            if login != claims.player {
                return Err(format!(
                    "login {login:?} does not match the ticket's player {:?}",
                    claims.player
                ));
            }
        }
        Ok(self.player_grants(&claims.room, &claims.player))
    }

    fn can_send(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        self.guest_outside_rooms(principal, destination)?;
        default_can_send(principal, destination)
    }

    fn can_subscribe(&self, principal: &Principal, destination: &str) -> Result<(), String> {
        self.guest_outside_rooms(principal, destination)?;
        default_can_subscribe(principal, destination)
    }
}
