//! Every token the framework issues, and how each is checked:
//!
//! - **Join tokens**, signed and expiring, which the lobby issues and the broker checks.
//! - **Player keys** `k1.NAME.SECRET`: the first join with a name answers one, and every
//!   later join with the name must present it. Only their hash is stored.
//! - **Owner tokens** `o1.ROOM.SIGNATURE`: answered to whoever created a room; they end
//!   it and kick its players. Derived from the server's secret, so never stored.
//!
//! A join token reads `v2.ROOM.PLAYER.JOIN.EXPIRES.SIGNATURE`, where JOIN names the one join
//! it was issued for and SIGNATURE is the hex HMAC-SHA256 of everything before it under
//! the server's secret. Room, player and join ids never contain dots. A signature only
//! says the lobby issued the token; whether its join is still current (the player has
//! not left or joined again) is the room service's to say.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The room the player joined.
    pub room: String,
    /// The player id.
    pub player: String,
    /// The join it was issued for.
    pub join: String,
    /// Seconds since the Unix epoch after which the token is refused.
    pub expires: u64,
}

/// Signs and checks tokens with one secret. Cheap to clone.
#[derive(Clone)]
pub struct Signer {
    secret: std::sync::Arc<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Signer {
    /// A signer with a given secret.
    pub fn new(secret: impl Into<Vec<u8>>) -> Signer {
        Signer {
            secret: std::sync::Arc::new(secret.into()),
        }
    }

    /// A signer with a random secret: tokens die with the process.
    pub fn random() -> Signer {
        Signer::new(random_bytes(32))
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        mac
    }

    /// A token for `player`'s join `join` of `room`, valid for `ttl`.
    pub fn issue(&self, room: &str, player: &str, join: &str, ttl: Duration) -> String {
        self.issue_expiring(room, player, join, ttl).0
    }

    /// A token for `player`'s join `join` of `room`, valid for `ttl`, and when it
    /// expires (seconds since the Unix epoch).
    pub fn issue_expiring(
        &self,
        room: &str,
        player: &str,
        join: &str,
        ttl: Duration,
    ) -> (String, u64) {
        let expires = now() + ttl.as_secs();
        let payload = format!("v2.{room}.{player}.{join}.{expires}");
        let signature = hex(&self.mac(&payload).finalize().into_bytes());
        (format!("{payload}.{signature}"), expires)
    }

    /// A secret for `purpose` derived from this signer's secret (its HMAC), so that
    /// every process given the same secret derives the same one.
    pub fn derive(&self, purpose: &str) -> String {
        hex(&self
            .mac(&format!("derive:{purpose}"))
            .finalize()
            .into_bytes())
    }

    /// The claims of a token, if it is genuine and not expired; otherwise why not.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let (payload, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| "malformed token".to_owned())?;
        let signature = unhex(signature).ok_or_else(|| "malformed token signature".to_owned())?;
        self.mac(payload)
            .verify_slice(&signature)
            .map_err(|_| "forged or corrupted token".to_owned())?;
        let mut parts = payload.split('.');
        let (Some("v2"), Some(room), Some(player), Some(join), Some(expires), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("malformed token".into());
        };
        let expires: u64 = expires
            .parse()
            .map_err(|_| "malformed token expiry".to_owned())?;
        if expires < now() {
            return Err("expired token; join the room again for a new one".into());
        }
        Ok(Claims {
            room: room.to_owned(),
            player: player.to_owned(),
            join: join.to_owned(),
            expires,
        })
    }
}

pub use crate::proto::random_bytes;

/// A new player key for `name`: `k1.NAME.SECRET`.
pub fn player_key(name: &str) -> String {
    crate::proto::new_player_key(name)
}

/// The name a player key is for, if `key` has the form of one.
pub fn key_name(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("k1.")?;
    let (name, secret) = rest.split_once('.')?;
    (crate::proto::valid_name(name) && !secret.is_empty()).then_some(name)
}

/// The hash under which a secret (a player key) is kept, and by which two secrets are
/// compared without a timing leak.
pub fn key_hash(key: &str) -> String {
    hex(&<Sha256 as sha2::Digest>::digest(key.as_bytes()))
}

/// Whether two secrets are the same, compared by their hashes.
pub fn same_secret(a: &str, b: &str) -> bool {
    key_hash(a) == key_hash(b)
}

impl Signer {
    /// The token that lets whoever created `room` end it and kick its players:
    /// `o1.ROOM.SIGNATURE`.
    pub fn owner_token(&self, room: &str) -> String {
        format!("o1.{room}.{}", self.derive(&format!("owner:{room}")))
    }
}

/// A short random id of lowercase hex, safe in destinations and tokens.
pub fn random_id(bytes: usize) -> String {
    hex(&random_bytes(bytes))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_with_its_signer_only() {
        let signer = Signer::random();
        let token = signer.issue("r1", "p1", "j1", Duration::from_secs(60));
        let claims = signer.verify(&token).unwrap();
        assert_eq!(
            (
                claims.room.as_str(),
                claims.player.as_str(),
                claims.join.as_str()
            ),
            ("r1", "p1", "j1")
        );
        assert_eq!(
            Signer::random().verify(&token).unwrap_err(),
            "forged or corrupted token"
        );
    }

    #[test]
    fn tampered_expired_and_garbage_tokens_are_refused() {
        let signer = Signer::new(b"k".to_vec());
        let token = signer.issue("r1", "p1", "j1", Duration::from_secs(60));
        let tampered = token.replacen("p1", "p2", 1);
        assert!(signer.verify(&tampered).is_err());
        let rejoined = token.replacen("j1", "j2", 1);
        assert!(signer.verify(&rejoined).is_err());
        let expired = {
            let payload = "v2.r1.p1.j1.1";
            format!(
                "{payload}.{}",
                hex(&signer.mac(payload).finalize().into_bytes())
            )
        };
        assert!(signer.verify(&expired).unwrap_err().starts_with("expired"));
        for junk in [
            "",
            ".",
            "v2",
            "v2.r.p.j.9.zz",
            "v2.r.p.9.abc",
            "\u{0}.\u{1}",
        ] {
            assert!(signer.verify(junk).is_err(), "{junk:?}");
        }
    }
}
