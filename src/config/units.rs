//! Sizes and durations as the config writes them. These stay hand-written rather than
//! `bytesize`/`humantime`: `bytesize` reads `MB` as 10^6 bytes and `humantime` refuses a
//! bare number of seconds and accepts days, so either crate would change what existing
//! configs mean. The units, exactly:
//!
//! - sizes: a whole number of bytes, optionally followed by a binary unit, case and a
//!   space between ignored: `K`/`KB`/`KiB` = 2^10, `M`/`MB`/`MiB` = 2^20, `G`/`GB`/`GiB`
//!   = 2^30, `T`/`TB`/`TiB` = 2^40. `MB` means MiB here, never 10^6.
//! - durations: a number (decimals allowed) followed by `ms`, `s`, `m` or `h`, or a bare
//!   number of seconds. No days: write `24h`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A byte count written as `512M`, `16GiB`, `500G` or a bare number of bytes; every
/// unit is binary (`1M` = `1MB` = `1MiB` = 1,048,576 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A duration written as `500ms`, `1.5s`, `5m`, `1h` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a size like 512M or 16GiB"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit (use K, M, G or T; all binary: 1M = 1MB = 1MiB)"
                ))
            }
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl Seconds {
    pub fn parse(s: &str) -> Result<Seconds, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 500ms, 2s or 5m"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("{s:?}: unknown unit (use ms, s, m or h)")),
        };
        Duration::try_from_secs_f64(secs)
            .map(Seconds)
            .map_err(|e| format!("{s:?}: {e}"))
    }
}

/// Both sizes and durations accept a number or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Float(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Num(n) => Ok(ByteSize(n)),
            NumOrText::Float(f) => Err(serde::de::Error::custom(format!(
                "{f} is not a whole number of bytes"
            ))),
            NumOrText::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Num(n) => Ok(Seconds(Duration::from_secs(n))),
            NumOrText::Float(f) => Seconds::parse(&f.to_string()).map_err(serde::de::Error::custom),
            NumOrText::Text(t) => Seconds::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}
