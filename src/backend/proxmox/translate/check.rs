//! Validators every section shares: "is this field set", and the textual
//! checks on values that reach a pct argument or a `<vmid>.conf` line.

use serde_json::{Map, Value};

use super::{field, TranslateError};

/// The entries of a JSON array; none when it is absent or not an array.
pub(super) fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The strings of a JSON array, other entries passed over.
pub(super) fn strings(v: Option<&Value>) -> Vec<String> {
    list(v)
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// A JSON value that is "not set": absent, null, empty string/list/object,
/// or (for numbers whose zero means "default") zero.
pub(super) fn unset(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.values().all(|v| unset(Some(v))),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::Bool(b)) => !b,
    }
}

pub(super) fn refuse_if_set(
    m: &Map<String, Value>,
    prefix: &str,
    key: &str,
    reason: &str,
) -> Result<(), TranslateError> {
    if unset(m.get(key)) {
        Ok(())
    } else {
        Err(field(format!("{prefix}{key}"), reason))
    }
}

/// No control characters (newline, NUL, ...) anywhere a value could reach a
/// command line or a config line.
pub(super) fn check_text(f: &str, s: &str) -> Result<(), TranslateError> {
    if s.chars().any(char::is_control) {
        return Err(field(
            f,
            format!("{s:?}: control characters are not allowed"),
        ));
    }
    Ok(())
}

/// An absolute, normalized container path: no '.', '..' or empty
/// components, no control characters.
pub(super) fn check_container_path(f: &str, p: &str) -> Result<(), TranslateError> {
    check_text(f, p)?;
    if !p.starts_with('/') || p.len() > 4096 {
        return Err(field(f, format!("{p:?} is not an absolute path")));
    }
    if p != "/"
        && p[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(field(
            f,
            format!("{p:?} must be a normalized path without '.', '..' or '//'"),
        ));
    }
    Ok(())
}

/// Proxmox parses `mpN`/`devN` as `key=value` pairs separated by commas, and
/// takes anything with ':' as a storage volume: such paths would be misread.
pub(super) fn check_property_value(f: &str, p: &str) -> Result<(), TranslateError> {
    check_text(f, p)?;
    if let Some(c) = p
        .chars()
        .find(|c| matches!(c, ',' | '=' | ':' | ';') || c.is_whitespace())
    {
        return Err(field(
            f,
            format!("{p:?}: {c:?} cannot appear in a Proxmox mount point or device path"),
        ));
    }
    Ok(())
}

/// Proxmox's hostname format: DNS labels of letters, digits and '-'.
pub(super) fn is_dns_name(s: &str) -> bool {
    s.len() <= 255
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

pub(super) fn is_ipv4_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ip, len)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok()
            && len.len() <= 2
            && len.parse::<u8>().is_ok_and(|l| l <= 32)
    })
}
