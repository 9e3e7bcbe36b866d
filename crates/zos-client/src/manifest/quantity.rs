//! Kubernetes quantities (`500m`, `1.5`, `128Mi`, `1G`, `1e3`) as numbers: CPUs rounded up
//! to whole vCPUs, byte sizes rounded up to whole bytes.

/// The value of quantity `q`, or why it is not one.
pub fn value(q: &str) -> Result<f64, String> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let q = q.trim();
    let bad = || format!("{q:?} is not a Kubernetes quantity (like 500m, 2, 128Mi or 1G)");
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    let plain = !number.is_empty()
        && number
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-' | b'e' | b'E'));
    if !plain {
        return Err(bad());
    }
    let n: f64 = number.parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    Ok(n * scale)
}

/// Whole vCPUs for a CPU quantity, rounded up (at least 1, at most 255).
pub fn cpus(q: &str) -> Result<u8, String> {
    let n = value(q)?.ceil().max(1.0);
    if n > f64::from(u8::MAX) {
        return Err(format!("{q}: a zmachine has at most {} vCPUs", u8::MAX));
    }
    Ok(n as u8)
}

/// Whole bytes for a size quantity, rounded up.
pub fn bytes(q: &str) -> Result<u64, String> {
    let n = value(q)?.ceil();
    if n >= u64::MAX as f64 {
        return Err(format!("{q}: too large"));
    }
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_round_up() {
        assert_eq!(cpus("250m").unwrap(), 1);
        assert_eq!(cpus("1500m").unwrap(), 2);
        assert_eq!(cpus("2").unwrap(), 2);
        assert_eq!(cpus("0.1").unwrap(), 1);
        assert!(cpus("1000").is_err());
        assert_eq!(bytes("128Mi").unwrap(), 128 << 20);
        assert_eq!(bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(bytes("1e3").unwrap(), 1000);
        assert_eq!(bytes("100").unwrap(), 100);
        for bad in ["", "Mi", "12Qi", "-1", "1 Gi", "abc"] {
            assert!(bytes(bad).is_err(), "{bad:?}");
        }
    }
}
