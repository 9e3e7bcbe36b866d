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

impl ByteSize {
    /// The size in the unit [`Display`](fmt::Display) picks for `scale`, so that sizes shown
    /// side by side share one unit (`0.5 GiB asked, 22.04 GiB free`).
    pub fn in_unit_of(self, scale: ByteSize) -> String {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut unit = 0;
        while unit + 1 < UNITS.len() && scale.0 >> (10 * (unit + 1)) > 0 {
            unit += 1;
        }
        if unit == 0 {
            return format!("{} B", self.0);
        }
        let value = self.0 as f64 / (1u64 << (10 * unit)) as f64;
        let text = format!("{value:.2}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text} {}", UNITS[unit])
    }
}

impl fmt::Display for ByteSize {
    /// For people: the largest binary unit the size reaches, with at most two decimals
    /// (`512 MiB`, `1.5 GiB`, `22.04 GiB`, `1000 B`). The one size formatter of zos.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.in_unit_of(*self))
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
        assert_eq!(ByteSize(1536 * ByteSize::MIB).to_string(), "1.5 GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000 B");
        assert_eq!(ByteSize(1024).to_string(), "1 KiB");
        assert_eq!(ByteSize(23_111_220 * 1024).to_string(), "22.04 GiB");
        assert_eq!(ByteSize(u64::MAX).to_string(), "16384 PiB");
        assert_eq!(ByteSize(512 << 20).in_unit_of(ByteSize(2 << 30)), "0.5 GiB");
        assert_eq!(ByteSize(0).in_unit_of(ByteSize(2 << 30)), "0 GiB");
        assert_eq!(serde_json::to_string(&ByteSize(2048)).unwrap(), "2048");
        let err = ByteSize::parse("12X").unwrap_err();
        assert!(err.starts_with("\"12X\": ") && err.ends_with("use a size like 512M or 2G"));
    }
}
