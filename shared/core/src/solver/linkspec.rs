//! What-if link overrides: `FROM-TO=BANDWIDTH,LATENCY`, e.g. `device-edge=20mbit,15ms` or
//! `raspi4-vm2Core=1.6mbit,66.7ms`. Endpoints are machine or tier names; the override is
//! directed (add `TO-FROM=...` for the way back).

use alloc::string::{String, ToString};

use super::problem::Link;

/// Why a link override or one of its figures was not understood; each says what it got and
/// what it takes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkSpecError {
    /// Not `FROM-TO=BANDWIDTH,LATENCY`.
    #[error("'{0}': expected FROM-TO=BANDWIDTH,LATENCY, e.g. device-edge=20mbit,15ms")]
    Form(String),
    /// The ends are not two known machine or tier names.
    #[error("'{0}': both ends must be known machine or tier names")]
    UnknownEnds(String),
    /// A name that is neither a machine nor a tier of the problem.
    #[error("'{0}' is neither a machine nor a tier")]
    UnknownName(String),
    /// A figure does not start with a non-negative number.
    #[error("'{0}' does not start with a number")]
    NotANumber(String),
    /// A bandwidth in another unit.
    #[error("'{0}': bandwidth units are bit, kbit, mbit or gbit (per second)")]
    BandwidthUnit(String),
    /// A bandwidth of zero.
    #[error("'{0}': bandwidth must be above zero")]
    ZeroBandwidth(String),
    /// A latency in another unit.
    #[error("'{0}': latency units are ns, us, ms or s")]
    LatencyUnit(String),
    /// A latency no network link has.
    #[error("'{0}': a latency above one hour is not a network link")]
    LatencyTooLong(String),
}

/// A parsed override, endpoints still as names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    /// Sending side.
    pub from: String,
    /// Receiving side.
    pub to: String,
    /// The figures.
    pub link: Link,
}

/// Parses `FROM-TO=BANDWIDTH,LATENCY`. `is_name` says which strings are machine or tier names,
/// so that names containing `-` split correctly.
pub fn parse_link_spec(text: &str, is_name: impl Fn(&str) -> bool) -> Result<LinkSpec, LinkSpecError> {
    let usage = || LinkSpecError::Form(text.to_string());
    let (ends, figures) = text.split_once('=').ok_or_else(usage)?;
    let (from, to) = ends
        .match_indices('-')
        .map(|(i, _)| (&ends[..i], &ends[i + 1..]))
        .find(|(a, b)| is_name(a) && is_name(b))
        .ok_or_else(|| LinkSpecError::UnknownEnds(ends.to_string()))?;
    let (bandwidth, latency) = figures.split_once(',').ok_or_else(usage)?;
    let link = Link { latency_ns: parse_latency(latency.trim())?, bits_per_sec: parse_bandwidth(bandwidth.trim())? };
    Ok(LinkSpec { from: from.to_string(), to: to.to_string(), link })
}

fn split_unit(text: &str) -> (&str, &str) {
    let at = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    (&text[..at], text[at..].trim())
}

fn positive(number: &str, text: &str) -> Result<f64, LinkSpecError> {
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(LinkSpecError::NotANumber(text.to_string())),
    }
}

/// `20mbit`, `1.6mbit`, `100kbit`, `1gbit`, `9600bit` (per second) -> bits per second (> 0).
pub fn parse_bandwidth(text: &str) -> Result<u64, LinkSpecError> {
    let (number, unit) = split_unit(text);
    let scale = match unit.to_ascii_lowercase().trim_end_matches("/s").trim_end_matches("ps") {
        "bit" | "b" => 1.0,
        "kbit" | "k" | "kb" => 1e3,
        "mbit" | "m" | "mb" => 1e6,
        "gbit" | "g" | "gb" => 1e9,
        _ => return Err(LinkSpecError::BandwidthUnit(text.to_string())),
    };
    let bits = (positive(number, text)? * scale + 0.5) as u64;
    if bits == 0 { Err(LinkSpecError::ZeroBandwidth(text.to_string())) } else { Ok(bits) }
}

/// `15ms`, `250us`, `0.1s` -> nanoseconds.
pub fn parse_latency(text: &str) -> Result<u64, LinkSpecError> {
    let (number, unit) = split_unit(text);
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return Err(LinkSpecError::LatencyUnit(text.to_string())),
    };
    let ns = positive(number, text)? * scale + 0.5;
    if ns > super::MAX_LATENCY_NS as f64 {
        return Err(LinkSpecError::LatencyTooLong(text.to_string()));
    }
    Ok(ns as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_dashes_and_units() {
        let names = ["device", "edge", "my-pi", "6700k(GPU)"];
        let spec = parse_link_spec("my-pi-6700k(GPU)=1.6mbit,66.7ms", |n| names.contains(&n)).unwrap();
        assert_eq!((spec.from.as_str(), spec.to.as_str()), ("my-pi", "6700k(GPU)"));
        assert_eq!(spec.link, Link { latency_ns: 66_700_000, bits_per_sec: 1_600_000 });
        assert_eq!(parse_bandwidth("100kbit"), Ok(100_000));
        assert_eq!(parse_latency("250us"), Ok(250_000));
        assert!(parse_link_spec("device-nowhere=1mbit,1ms", |n| names.contains(&n)).is_err());
        assert!(parse_link_spec("device-edge=0mbit,1ms", |n| names.contains(&n)).is_err());
        assert!(parse_link_spec("device-edge=1mbit", |n| names.contains(&n)).is_err());
        assert!(parse_bandwidth("fast").is_err());
    }
}
