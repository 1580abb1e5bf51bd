//! Parsers for the values users type: sizes, durations, origins, `K=V` pairs
//! and `HOST::GUEST` directory grants. Each error names the value and says
//! what was expected, in the user's own words.

use super::{DirGrant, Origin};
use std::path::PathBuf;
use std::time::Duration;

/// `bytes` in the largest binary unit that divides it, as [`parse_size`]
/// reads it back: `64MiB`, `1536KiB`, `1000B`.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// Parses a byte size such as `128MiB`, `100MB`, `64KiB` or `4096`.
///
/// Binary suffixes (`KiB`, `MiB`, `GiB`) are powers of 1024, decimal ones
/// (`KB`, `MB`, `GB`) powers of 1000; a bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text, "a size (try 128MiB, 100MB or 4096)")?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a duration such as `30s`, `500ms`, `2m` or `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text, "a duration (try 30s, 500ms or 2m)")?;
    match unit.trim() {
        "" | "s" => Ok(Duration::from_secs(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "m" => Ok(Duration::from_secs(number.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(number.saturating_mul(3600))),
        other => Err(format!(
            "`{text}` has an unknown unit `{other}` (use ms, s, m or h)"
        )),
    }
}

/// Splits `12MiB` into `12` and `MiB`; `expected` completes the message
/// "`text` is not ..." when there is no leading number.
fn split_number<'a>(text: &'a str, expected: &str) -> Result<(u64, &'a str), String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number = digits
        .parse()
        .map_err(|_| format!("`{text}` is not {expected}"))?;
    Ok((number, unit))
}

/// Parses an outbound origin such as `https://api.example.com` or
/// `http://127.0.0.1:9000`. A path, query or credentials are refused: the
/// allow-list is about where a request goes, not what it asks for.
pub fn parse_origin(text: &str) -> Result<Origin, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL (try https://api.example.com)"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => "http",
        Some("https") => "https",
        Some(other) => return Err(format!("`{text}`: scheme `{other}` is not http or https")),
        None => return Err(format!("`{text}` needs a scheme (http:// or https://)")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{text}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{text}`: credentials are not allowed in an origin"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{text}`: give only scheme, host and port (no path or query)"
        ));
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    Ok(Origin {
        scheme: scheme.to_string(),
        host: authority.host().to_ascii_lowercase(),
        port: authority.port_u16().unwrap_or(default_port),
    })
}

/// Parses an environment grant `KEY=VALUE` (the value may be empty).
pub fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("`{text}` has an empty variable name"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Parses a directory grant `HOST::GUEST` (or just `HOST`, seen by the guest at the same path).
pub fn parse_dir_grant(text: &str) -> Result<DirGrant, String> {
    let (host, guest) = match text.split_once("::") {
        Some((host, guest)) => (host, guest),
        None => (text, text),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("`{text}` is not HOST_DIR::GUEST_DIR"));
    }
    Ok(DirGrant {
        host: PathBuf::from(host),
        guest: guest.to_string(),
    })
}

/// Parses `on` or `off`.
pub fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{text}` is neither on nor off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("1gib").unwrap(), 1 << 30);
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("12XB").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn durations_accept_common_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn origins_fill_in_default_ports_and_refuse_paths() {
        let origin = parse_origin("https://API.example.com").unwrap();
        assert_eq!(
            (origin.scheme.as_str(), origin.host.as_str(), origin.port),
            ("https", "api.example.com", 443)
        );
        assert_eq!(parse_origin("http://127.0.0.1:9000/").unwrap().port, 9000);
        assert!(parse_origin("ftp://x").unwrap_err().contains("scheme"));
        assert!(
            parse_origin("http://x/a/b")
                .unwrap_err()
                .contains("no path")
        );
        assert!(parse_origin("example.com").is_err());
    }

    #[test]
    fn env_and_dir_grants_parse() {
        assert_eq!(
            parse_env_pair("A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert!(parse_env_pair("novalue").is_err());
        let grant = parse_dir_grant("/srv/data::/data").unwrap();
        assert_eq!(grant.host, PathBuf::from("/srv/data"));
        assert_eq!(grant.guest, "/data");
        assert_eq!(parse_dir_grant("/tmp").unwrap().guest, "/tmp");
    }
}
