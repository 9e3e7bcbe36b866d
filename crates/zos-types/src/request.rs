//! Signed HTTP requests: how a user proves who is asking when reading from a node.

use crate::keys::{KeyError, Keypair, PublicKey, SignatureBytes};
use sha2::{Digest, Sha256};

/// Prefix of the hashed request message; keeps request and deployment signatures apart.
pub const REQUEST_DOMAIN: &[u8] = b"zos-request-v1\n";

/// Proof that the holder of `key` sent a request to `node` at `timestamp`, carried in the
/// `Authorization` header as `zos key=<hex>,node=<hex>,ts=<secs>,nonce=<n>,sig=<hex>`.
///
/// The random nonce makes two identical requests in the same second differ (Ed25519 is
/// deterministic), so a node can accept each signature only once; the node's key in the
/// signed message keeps a request seen by one node from being replayed to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    /// Who signed.
    pub key: PublicKey,
    /// The node the request is for (its public key, as `GET /v1/node/id` tells).
    pub node: PublicKey,
    /// When, in unix seconds; bounds how long a captured header can be replayed.
    pub timestamp: u64,
    /// Random, so no two requests share a signature.
    pub nonce: u64,
    /// Ed25519 signature of [`RequestAuth::message`].
    pub signature: SignatureBytes,
}

/// Why a request's `Authorization` header is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RequestAuthError {
    /// The header is not `zos key=<hex>,node=<hex>,ts=<secs>,nonce=<n>,sig=<hex>`.
    #[error(
        "bad Authorization header: {0}; expected `zos key=<hex>,node=<hex>,ts=<secs>,nonce=<n>,sig=<hex>`"
    )]
    Header(String),
    /// A key or signature in the header does not parse.
    #[error("bad Authorization header: {0}")]
    Key(#[from] KeyError),
    /// The timestamp is too far from the node's clock.
    #[error("request timestamp {timestamp} is {skew}s away from the node's clock (limit {max}s)")]
    Skew {
        /// The request's timestamp.
        timestamp: u64,
        /// How far it is from now.
        skew: u64,
        /// The allowed distance.
        max: u64,
    },
    /// The request was signed for another node.
    #[error("the request is signed for node {signed_for}, but this is node {this}")]
    WrongNode {
        /// The node named in the request.
        signed_for: PublicKey,
        /// The node that received it.
        this: PublicKey,
    },
    /// The signature does not match this request.
    #[error("request signature by {0} does not verify")]
    BadSignature(PublicKey),
}

impl RequestAuth {
    /// The 32 bytes signed: SHA-256 of [`REQUEST_DOMAIN`], then the node's key in lowercase
    /// hex, method (upper-cased), path and query, decimal timestamp, decimal nonce and the
    /// lowercase hex SHA-256 of the body, separated by `\n`.
    pub fn message(
        node: &PublicKey,
        method: &str,
        path_and_query: &str,
        timestamp: u64,
        nonce: u64,
        body: &[u8],
    ) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(REQUEST_DOMAIN);
        hash.update(node.to_string());
        hash.update(b"\n");
        hash.update(method.to_ascii_uppercase());
        hash.update(b"\n");
        hash.update(path_and_query);
        hash.update(b"\n");
        hash.update(timestamp.to_string());
        hash.update(b"\n");
        hash.update(nonce.to_string());
        hash.update(b"\n");
        hash.update(hex::encode(Sha256::digest(body)));
        hash.finalize().into()
    }

    /// Signs a request to `node`, with a fresh random nonce.
    pub fn sign(
        key: &Keypair,
        node: &PublicKey,
        method: &str,
        path_and_query: &str,
        timestamp: u64,
        body: &[u8],
    ) -> Self {
        use rand_core::RngCore;
        let nonce = rand_core::OsRng.next_u64();
        Self::sign_with_nonce(key, node, method, path_and_query, timestamp, nonce, body)
    }

    /// Signs a request with the given nonce (for known-answer tests).
    pub fn sign_with_nonce(
        key: &Keypair,
        node: &PublicKey,
        method: &str,
        path_and_query: &str,
        timestamp: u64,
        nonce: u64,
        body: &[u8],
    ) -> Self {
        let message = Self::message(node, method, path_and_query, timestamp, nonce, body);
        RequestAuth {
            key: key.public(),
            node: *node,
            timestamp,
            nonce,
            signature: key.sign(&message),
        }
    }

    /// Checks the request is for `this_node`, the timestamp is within `max_skew_secs` of
    /// `now`, and the signature matches.
    pub fn verify(
        &self,
        this_node: &PublicKey,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now: u64,
        max_skew_secs: u64,
    ) -> Result<(), RequestAuthError> {
        if self.node != *this_node {
            return Err(RequestAuthError::WrongNode {
                signed_for: self.node,
                this: *this_node,
            });
        }
        let skew = now.abs_diff(self.timestamp);
        if skew > max_skew_secs {
            return Err(RequestAuthError::Skew {
                timestamp: self.timestamp,
                skew,
                max: max_skew_secs,
            });
        }
        let message = Self::message(
            &self.node,
            method,
            path_and_query,
            self.timestamp,
            self.nonce,
            body,
        );
        self.key
            .verify(&message, &self.signature)
            .map_err(|_| RequestAuthError::BadSignature(self.key))
    }

    /// The `Authorization` header value.
    pub fn to_header(&self) -> String {
        format!(
            "zos key={},node={},ts={},nonce={},sig={}",
            self.key, self.node, self.timestamp, self.nonce, self.signature
        )
    }

    /// Parses an `Authorization` header value made by [`RequestAuth::to_header`].
    pub fn from_header(value: &str) -> Result<Self, RequestAuthError> {
        let bad = |msg: String| RequestAuthError::Header(msg);
        let (scheme, params) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("no parameters".into()))?;
        // HTTP auth schemes are case-insensitive.
        if !scheme.eq_ignore_ascii_case("zos") {
            return Err(bad(format!("scheme is {scheme:?}, not \"zos\"")));
        }
        let (mut key, mut node, mut ts, mut nonce, mut sig) = (None, None, None, None, None);
        for part in params.split(',') {
            let (name, val) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not name=value")))?;
            let slot = match name {
                "key" => &mut key,
                "node" => &mut node,
                "ts" => &mut ts,
                "nonce" => &mut nonce,
                "sig" => &mut sig,
                _ => return Err(bad(format!("unknown parameter {name:?}"))),
            };
            if slot.replace(val).is_some() {
                return Err(bad(format!("{name} given twice")));
            }
        }
        let missing = |name: &str| bad(format!("{name} is missing"));
        let ts = ts.ok_or_else(|| missing("ts"))?;
        let nonce = nonce.ok_or_else(|| missing("nonce"))?;
        Ok(RequestAuth {
            key: key.ok_or_else(|| missing("key"))?.parse()?,
            node: node.ok_or_else(|| missing("node"))?.parse()?,
            timestamp: ts
                .parse()
                .map_err(|_| bad(format!("ts {ts:?} is not unix seconds")))?,
            nonce: nonce
                .parse()
                .map_err(|_| bad(format!("nonce {nonce:?} is not a number")))?,
            signature: sig.ok_or_else(|| missing("sig"))?.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Checked with Python's `cryptography` Ed25519 from the same seed over
    // sha256(b"zos-request-v1\n" + NODE.hex + b"\nGET\n/deployments/kat?x=1\n1700000000\n7\n"
    //        + sha256(b"").hex), NODE being the key of seed [3; 32].
    const KAT_HEADER: &str = "zos key=8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c,node=ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1,ts=1700000000,nonce=7,sig=1f0b2103288e9df321f1ca2937300f0c899326b6ad240ad3c7ba4f644ded0608d64e8989d302861c463bbbef178bf02d081f8005a234ac7cfa8d58800c00ff01";

    #[test]
    fn known_answer_and_round_trip() {
        let key = Keypair::from_seed(&[1; 32]);
        let auth = RequestAuth::sign_with_nonce(
            &key,
            &node(),
            "GET",
            "/deployments/kat?x=1",
            1_700_000_000,
            7,
            b"",
        );
        assert_eq!(auth.to_header(), KAT_HEADER);
        let parsed = RequestAuth::from_header(KAT_HEADER).unwrap();
        assert_eq!(parsed, auth);
        parsed
            .verify(
                &node(),
                "get",
                "/deployments/kat?x=1",
                b"",
                1_700_000_030,
                60,
            )
            .unwrap();
    }

    fn node() -> PublicKey {
        Keypair::from_seed(&[3; 32]).public()
    }

    #[test]
    fn rejects_wrong_request_skew_and_bad_headers() {
        let auth = RequestAuth::from_header(KAT_HEADER).unwrap();
        let verify = |path, body: &[u8], now| auth.verify(&node(), "GET", path, body, now, 60);
        // Sent to another node: named, whatever else is right.
        let other = Keypair::from_seed(&[4; 32]).public();
        assert!(matches!(
            auth.verify(&other, "GET", "/deployments/kat?x=1", b"", 1_700_000_000, 60),
            Err(RequestAuthError::WrongNode { signed_for, this }) if signed_for == node() && this == other
        ));
        // Claiming another node in the header breaks the signature.
        let moved =
            RequestAuth::from_header(&KAT_HEADER.replace(&node().to_string(), &other.to_string()))
                .unwrap();
        assert!(matches!(
            moved.verify(
                &other,
                "GET",
                "/deployments/kat?x=1",
                b"",
                1_700_000_000,
                60
            ),
            Err(RequestAuthError::BadSignature(_))
        ));
        assert!(matches!(
            verify("/deployments/other", b"", 1_700_000_000),
            Err(RequestAuthError::BadSignature(_))
        ));
        assert!(matches!(
            verify("/deployments/kat?x=1", b"x", 1_700_000_000),
            Err(RequestAuthError::BadSignature(_))
        ));
        assert!(matches!(
            verify("/deployments/kat?x=1", b"", 1_700_000_061),
            Err(RequestAuthError::Skew { skew: 61, .. })
        ));
        let err = |h: &str| RequestAuth::from_header(h).unwrap_err().to_string();
        assert!(err("Bearer abc").contains("scheme is \"Bearer\""));
        assert!(err("zos key=00,node=00,ts=1,nonce=1,sig=00").contains("invalid public key"));
        assert!(
            err(&KAT_HEADER.replace(&format!(",node={}", node()), "")).contains("node is missing")
        );
        assert!(err(&KAT_HEADER.replace(",ts=1700000000", "")).contains("ts is missing"));
        assert!(err(&KAT_HEADER.replace("ts=1700000000", "ts=soon"))
            .contains("ts \"soon\" is not unix seconds"));
        assert!(err(&format!("{KAT_HEADER},ts=1")).contains("ts given twice"));
    }
}
