//! Human-friendly units in the config file: durations ("30s", "7d") and sizes ("256MiB").

use std::time::Duration;

/// Parses a duration such as `"30s"`, `"5m"`, `"7d"`, `"1h 30m"` or `"0s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write e.g. \"30s\", \"5m\" or \"7d\"".into());
    }
    // humantime's own words ("expected number at 0") mean little without the value.
    humantime::parse_duration(trimmed).map_err(|e| {
        format!("{trimmed:?} is not a duration ({e}); write e.g. \"30s\", \"5m\" or \"7d\"")
    })
}

/// Parses a byte size such as `"256MiB"`, `"1GiB"`, `"512KB"`, `"1048576"`.
/// Binary (KiB, MiB, GiB) and decimal (KB, MB, GB) units are accepted.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let hint = "write e.g. \"256MiB\", \"1GiB\" or \"512KiB\"";
    if number.is_empty() {
        return Err(format!("no number in size {trimmed:?}; {hint}"));
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}; {hint}")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad number {number:?} in size; {hint}"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("size {trimmed:?} is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512KB"), Ok(512_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }
}
