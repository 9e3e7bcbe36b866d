//! Byte sizes that users write as `512M` and the wire carries as plain integers.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A number of bytes. Reads an integer or a string such as `512M`, `2G` or `1.5G` (binary
/// units: `M` is MiB); always writes an integer, so the signed encoding has one spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// One mebibyte.
    pub const MIB: u64 = 1 << 20;
    /// One gibibyte.
    pub const GIB: u64 = 1 << 30;

    /// Parses `512M`, `2G`, `1.5G` or a plain number of bytes.
    pub fn parse(s: &str) -> Result<Self, String> {
        parse_size::Config::new()
            .with_binary()
            .parse_size(s)
            .map(ByteSize)
            .map_err(|e| format!("{s:?}: {e}; use a size like 512M or 2G"))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly, so nothing is rounded away.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{} {unit}", self.0 >> shift);
            }
        }
        write!(f, "{} B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes or a string like 512M or 2G")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v}: a size cannot be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let size = |s: &str| serde_json::from_str::<ByteSize>(s).unwrap().0;
        assert_eq!(size(r#""512M""#), 512 * ByteSize::MIB);
        assert_eq!(size(r#""2G""#), 2 * ByteSize::GIB);
        assert_eq!(size(r#""1.5G""#), 1536 * ByteSize::MIB);
        assert_eq!(size("4096"), 4096);
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert_eq!(ByteSize(512 * ByteSize::MIB).to_string(), "512 MiB");
        assert_eq!(ByteSize(1536 * ByteSize::MIB).to_string(), "1536 MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000 B");
        assert_eq!(serde_json::to_string(&ByteSize(2048)).unwrap(), "2048");
        let err = ByteSize::parse("12X").unwrap_err();
        assert!(err.starts_with("\"12X\": ") && err.ends_with("use a size like 512M or 2G"));
    }
}
