//! Keeping secrets out of logs and the status API: credentials in URLs, query-string values,
//! and the values of credential-bearing headers are replaced by [`REDACTED`] before anything is
//! printed.
//!
//! Everything here errs towards hiding too much: a log line that hides a harmless query value
//! costs a little debugging, one that shows a token costs a credential rotation. The functions
//! work on plain strings and never fail, so callers have no error path on which the raw value
//! could slip out. They do not decide what gets logged; they only make a value safe to log.

use http::HeaderMap;

/// What a hidden value is replaced with.
pub const REDACTED: &str = "***";

/// Header names whose value is always a credential.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    crate::sign::SIGNATURE_HEADER,
];

/// Fragments that mark a header name as credential-bearing wherever they appear in it, which
/// catches the many vendor spellings (`x-auth-token`, `x-hub-signature-256`, `x-client-secret`,
/// `ocp-apim-subscription-key`). `auth` and `credential` go beyond the usual list for the same
/// reason. The price is hiding a few harmless headers (`sec-websocket-key`), which is the right
/// way round.
const SENSITIVE_FRAGMENTS: &[&str] = &[
    "token",
    "secret",
    "password",
    "signature",
    "key",
    "auth",
    "credential",
];

/// Redacts a URL for display: userinfo (`user:password@`) becomes `***@`, every query parameter
/// value becomes `***` (keys are kept, so the shape stays readable), and the fragment is dropped.
///
/// Works on strings that are not valid URLs too, on a best-effort basis that never panics and
/// never returns the whole secret:
/// - userinfo ends at the last `@` before the first `?` or `#`, not at the first `/`, so a
///   password with an unencoded `/` or `@` is still hidden whole. The cost is that a path
///   containing `@` (`/users/@me`) is hidden up to that `@` as well;
/// - a query parameter without `=` is hidden whole, since it may be a bare token;
/// - the fragment is dropped rather than redacted, because some OAuth flows put tokens there.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = split_scheme(url);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);

    let head_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = match rest[..head_end].rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };

    let rest = rest
        .split_once('#')
        .map_or(rest, |(before, _fragment)| before);
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        for (index, parameter) in query.split('&').enumerate() {
            if index > 0 {
                out.push('&');
            }
            match parameter.split_once('=') {
                Some((key, _value)) => {
                    out.push_str(key);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                None if parameter.is_empty() => {}
                None => out.push_str(REDACTED),
            }
        }
    }
    out
}

/// Splits off `scheme://` when the string starts with a syntactically valid scheme (RFC 3986
/// §3.1); otherwise the whole string is the rest, so `user:pw@host` without a scheme is still
/// treated as having userinfo.
fn split_scheme(url: &str) -> (&str, &str) {
    let Some(colon_slashes) = url.find("://") else {
        return ("", url);
    };
    let scheme = &url[..colon_slashes];
    let mut chars = scheme.chars();
    let valid = chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if valid {
        url.split_at(colon_slashes + "://".len())
    } else {
        ("", url)
    }
}

/// Whether a header's value must never be logged. Case-insensitive.
///
/// Sensitive are: `authorization`, `proxy-authorization`, `cookie`, `set-cookie`, `x-api-key`,
/// `api-key`, `trellis-signature`; any name containing `token`, `secret`, `password`,
/// `signature`, `key`, `auth` or `credential`; and every name in `configured` (the subscription's
/// own secret headers).
pub fn is_sensitive_header(name: &str, configured: &[String]) -> bool {
    let name = name.trim().to_ascii_lowercase();
    SENSITIVE_HEADERS.contains(&name.as_str())
        || SENSITIVE_FRAGMENTS
            .iter()
            .any(|fragment| name.contains(fragment))
        || configured
            .iter()
            .any(|configured| configured.trim().eq_ignore_ascii_case(&name))
}

/// A log-safe view of a header map: names with their values, sensitive values replaced by
/// [`REDACTED`]. A value marked sensitive with `HeaderValue::set_sensitive` is hidden too.
/// Values that are not UTF-8 are shown lossily rather than dropped, since they are not secret.
pub fn redacted_headers(headers: &HeaderMap, configured: &[String]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let shown = if value.is_sensitive() || is_sensitive_header(name.as_str(), configured) {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), shown)
        })
        .collect()
}

#[cfg(test)]
mod tests;
