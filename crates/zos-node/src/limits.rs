//! Per-owner limits: any freshly made key is an owner, so whatever one owner may do to a node
//! an anonymous client may too. These bound what one key can store and ask, so that everyone
//! else is still served.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use zos_types::{ByteSize, PublicKey};

/// The operator's per-owner limits (`[limits]` in the node config).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OwnerLimits {
    /// Live deployments one owner may have on the node.
    pub deployments_per_owner: usize,
    /// Workloads in one deployment.
    pub workloads_per_deployment: usize,
    /// One deployment as stored (metadata, description, env and all), in bytes.
    pub deployment_bytes: ByteSize,
    /// All of one owner's stored deployments together, in bytes.
    pub owner_bytes: ByteSize,
    /// Signed requests per second one owner may make, on average (a token bucket).
    pub requests_per_second: f64,
    /// Requests one owner may make at once before the rate applies (the bucket's size).
    pub request_burst: u32,
}

impl Default for OwnerLimits {
    fn default() -> Self {
        OwnerLimits {
            deployments_per_owner: 100,
            workloads_per_deployment: 200,
            deployment_bytes: ByteSize(1 << 20),
            owner_bytes: ByteSize(16 << 20),
            requests_per_second: 20.0,
            request_burst: 100,
        }
    }
}

impl OwnerLimits {
    /// Refuses settings that would let nothing through or overflow the bucket.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(self.requests_per_second > 0.0 && self.requests_per_second.is_finite()) {
            anyhow::bail!(
                "limits.requests_per_second = {}: give a positive rate, e.g. 20.0",
                self.requests_per_second
            );
        }
        if self.request_burst == 0 {
            anyhow::bail!("limits.request_burst = 0: give at least 1, e.g. 100");
        }
        Ok(())
    }
}

/// Token buckets, one per owner: each request takes a token; tokens come back at the rate.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<PublicKey, (f64, Instant)>>,
}

impl RateLimiter {
    /// Buckets of `burst` tokens refilled at `rate` per second.
    pub fn new(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate,
            burst: f64::from(burst),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token of `owner`'s, or says how many seconds until one is back.
    pub fn take(&self, owner: &PublicKey) -> Result<(), f64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Full buckets carry nothing an absent entry would not: dropping them keeps the map
        // as small as the set of owners active lately, however many keys were ever seen.
        if buckets.len() > 4096 {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(*owner).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::Keypair;

    #[test]
    fn a_bucket_empties_per_owner() {
        let limiter = RateLimiter::new(0.001, 3);
        let (a, b) = (Keypair::generate().public(), Keypair::generate().public());
        for _ in 0..3 {
            limiter.take(&a).unwrap();
        }
        let wait = limiter.take(&a).unwrap_err();
        assert!(wait > 0.0, "{wait}");
        // Another owner's bucket is untouched.
        limiter.take(&b).unwrap();
    }
}
