//! Shimmie's S3 settings, as rows of its `config` table: what `origin: shimmie` builds
//! its bucket from (`crate::origin::shimmie`). Names as in Shimmie's ext/s3
//! (`S3Config`): `s3_endpoint`, `s3_region` (Shimmie 2.12 and later), `s3_image_bucket`,
//! `s3_access_key_id`, `s3_access_key_secret`.
//!
//! The secret (and the key id with it) never reaches a log line or `/status`: `Debug`
//! shows whether they are set, nothing more.

use std::fmt;

use super::{shown, MAX_TEMPLATE_BYTES};

/// The rows read, by primary key, every sync round while `origin: shimmie` is on.
pub const S3_KEYS: [&str; 5] = [
    "s3_endpoint",
    "s3_region",
    "s3_image_bucket",
    "s3_access_key_id",
    "s3_access_key_secret",
];

/// The query for [`S3_KEYS`], the same on every engine.
pub const S3_SETTINGS_SQL: &str = "SELECT name, value FROM config WHERE name IN \
     ('s3_endpoint', 's3_region', 's3_image_bucket', 's3_access_key_id', 's3_access_key_secret')";

/// A value that must not be shown: compared, used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Shimmie's S3 settings; `None`: the row is absent or NULL (Shimmie then uses its
/// default, where it has one).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Rows {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub access_key_id: Option<Secret>,
    pub secret: Option<Secret>,
    /// A row that could not be read as text: its key and why (the origin in force
    /// stays while it is so).
    pub unreadable: Option<String>,
}

impl fmt::Debug for S3Rows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Rows")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id_set", &self.access_key_id.is_some())
            .field("secret_set", &self.secret.is_some())
            .field("unreadable", &self.unreadable)
            .finish()
    }
}

impl S3Rows {
    /// Builds them from `(name, value)` rows of `config`. Never fails: a value that is
    /// not UTF-8 or absurdly long is recorded in [`S3Rows::unreadable`] (without the
    /// value, which may be the secret).
    pub(crate) fn from_rows<'r>(
        rows: impl IntoIterator<Item = (Option<&'r [u8]>, Result<Option<&'r [u8]>, sqlx::Error>)>,
    ) -> S3Rows {
        let mut out = S3Rows::default();
        for (name, value) in rows {
            let Some(key) = name.and_then(|n| S3_KEYS.iter().find(|k| k.as_bytes() == n)) else {
                continue;
            };
            let text = match value {
                Ok(None) => continue,
                Ok(Some(bytes)) if bytes.len() > MAX_TEMPLATE_BYTES => {
                    out.unreadable = Some(format!(
                        "{key}: value is {} bytes, over the {MAX_TEMPLATE_BYTES}-byte limit",
                        bytes.len()
                    ));
                    continue;
                }
                Ok(Some(bytes)) => match std::str::from_utf8(bytes) {
                    Ok(t) => t.to_owned(),
                    Err(_) => {
                        // The key id and secret are not shown even garbled.
                        out.unreadable = Some(if key.contains("access_key") {
                            format!("{key}: value is not valid UTF-8")
                        } else {
                            format!("{key}: value is not valid UTF-8: {:?}", shown(bytes, 80))
                        });
                        continue;
                    }
                },
                Err(e) => {
                    out.unreadable = Some(format!("{key}: value cannot be read: {e}"));
                    continue;
                }
            };
            match *key {
                "s3_endpoint" => out.endpoint = Some(text),
                "s3_region" => out.region = Some(text),
                "s3_image_bucket" => out.bucket = Some(text),
                "s3_access_key_id" => out.access_key_id = Some(Secret(text)),
                _ => out.secret = Some(Secret(text)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_by_name_and_secrets_never_shown() {
        let rows = S3Rows::from_rows([
            (
                Some(&b"s3_endpoint"[..]),
                Ok(Some(&b"http://s3.local:9000"[..])),
            ),
            (Some(&b"s3_image_bucket"[..]), Ok(Some(&b"shimmie"[..]))),
            (Some(&b"s3_region"[..]), Ok(None)),
            (
                Some(&b"s3_access_key_id"[..]),
                Ok(Some(&b"AKIDEXAMPLE"[..])),
            ),
            (
                Some(&b"s3_access_key_secret"[..]),
                Ok(Some(&b"wJalrXUtn"[..])),
            ),
            (Some(&b"image_ilink"[..]), Ok(Some(&b"x"[..]))),
        ]);
        assert_eq!(rows.endpoint.as_deref(), Some("http://s3.local:9000"));
        assert_eq!(rows.bucket.as_deref(), Some("shimmie"));
        assert_eq!(rows.region, None);
        assert_eq!(rows.secret.as_ref().map(Secret::expose), Some("wJalrXUtn"));
        let shown = format!("{rows:?}");
        assert!(
            !shown.contains("wJalr") && !shown.contains("AKID"),
            "{shown}"
        );
        assert!(shown.contains("secret_set: true"), "{shown}");
    }

    #[test]
    fn an_unreadable_secret_is_named_not_shown() {
        let rows = S3Rows::from_rows([(
            Some(&b"s3_access_key_secret"[..]),
            Ok(Some(&[b's', 0xff, b'x'][..])),
        )]);
        let why = rows.unreadable.unwrap_or_default();
        assert_eq!(why, "s3_access_key_secret: value is not valid UTF-8");
        let rows = S3Rows::from_rows([(Some(&b"s3_endpoint"[..]), Ok(Some(&[0xff][..])))]);
        let why = rows.unreadable.unwrap_or_default();
        assert!(
            why.starts_with("s3_endpoint: value is not valid UTF-8: "),
            "{why}"
        );
    }
}
