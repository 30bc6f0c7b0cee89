//! Sizes in bytes written as an integer or as text with a unit (`"2GiB"`, `"500 MB"`).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A size in bytes. In `kiln.toml` it is an integer (bytes) or a string of a number and a unit:
/// B, kB/KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"2GiB"`, `"1.5 GB"`, `"512MiB"` or a bare number of bytes. A fraction of a byte
    /// is rounded down.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let invalid = || {
            format!(
                "invalid size {text:?}: write a number of bytes or a number with a unit such as \
                 \"2GiB\" or \"500MB\" (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )
        };
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(invalid()),
        };
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(invalid());
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    /// Writes the size in the largest binary unit in which it is at least 1, with one decimal
    /// (`1.5 GiB`), and sizes under 1 KiB as an exact byte count.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(formatter, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(formatter, "{value:.1} {}", UNITS[unit])
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a number of bytes or a size such as \"2GiB\"")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
                u64::try_from(value)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {value}: it is negative")))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
                ByteSize::parse(value).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale_by_their_base() {
        let cases = [
            ("2GiB", 2 << 30),
            ("2 GiB", 2 << 30),
            ("500MB", 500_000_000),
            ("1.5KiB", 1536),
            ("64", 64),
            ("7B", 7),
            ("1TB", 1_000_000_000_000),
        ];
        for (text, bytes) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn unknown_unit_is_rejected() {
        for text in ["2 gigs", "GiB", "", "-5MB", "1e3"] {
            let error = ByteSize::parse(text).unwrap_err();
            assert!(error.contains("invalid size"), "{text}: {error}");
        }
    }

    #[test]
    fn display_uses_binary_units() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize(3 << 30).to_string(), "3.0 GiB");
    }
}
