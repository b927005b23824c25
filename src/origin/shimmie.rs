//! `origin: shimmie`: the bucket Shimmie's "S3 CDN" extension (ext/s3) writes to,
//! read from Shimmie's own `config` table and followed live by the sync, so there is
//! no second copy of the bucket settings to keep in step.
//!
//! The rows mean what Shimmie's own S3 client (Shimmie 2.12 and later) makes of them:
//! - `s3_endpoint`: absent or NULL is Shimmie's default, `s3.amazonaws.com`; without a
//!   scheme, `https://` is meant. An empty value is refused: Shimmie cannot use it
//!   either ("Invalid endpoint URL"). Requests are path-style, `<endpoint>/<bucket>/<key>`,
//!   as Shimmie's client sends them;
//! - `s3_region`: absent is Shimmie's default, `auto` (what Cloudflare R2 wants); it
//!   only matters for signing;
//! - `s3_image_bucket`: required;
//! - `s3_access_key_id` and `s3_access_key_secret`: both set, requests are signed with
//!   them; neither, anonymous (ext/s3 uploads public-read). One without the other is
//!   refused.
//!
//! The YAML may override what Shimmie's table cannot say: `region`, `path_style` and
//! `anonymous` (never sign, e.g. when the keys Shimmie writes with should stay off the
//! mirrors). A set of rows that does not build is refused with the row's name; the
//! bucket in force stays.

use super::s3::{S3Origin, S3Part, S3Spec};
use crate::config::OriginServer;
use crate::shimmie::S3Rows;

/// Shimmie's default for an absent `s3_endpoint` (ext/s3's `S3Config::ENDPOINT`).
pub const DEFAULT_ENDPOINT: &str = "s3.amazonaws.com";
/// Shimmie's default for an absent `s3_region` (ext/s3's `S3Config::REGION`).
pub const DEFAULT_REGION: &str = "auto";

/// The YAML's part of `origin: shimmie`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimmieOrigin {
    /// Signs with this region instead of `s3_region`.
    pub region: Option<String>,
    /// `<endpoint>/<bucket>/<key>` (Shimmie's own way, the default) or
    /// `<bucket>.<endpoint host>/<key>`.
    pub path_style: bool,
    /// Never sign, whatever keys the table holds.
    pub anonymous: bool,
}

impl Default for ShimmieOrigin {
    fn default() -> Self {
        ShimmieOrigin {
            region: None,
            path_style: true,
            anonymous: false,
        }
    }
}

/// The endpoint URL Shimmie's client would use for `s3_endpoint`.
fn endpoint_url(row: Option<&str>) -> Result<String, String> {
    let Some(value) = row else {
        return Ok(format!("https://{DEFAULT_ENDPOINT}"));
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(
            "s3_endpoint is empty (Shimmie cannot use that either); delete the row \
             for Shimmie's default, s3.amazonaws.com"
                .into(),
        );
    }
    match value.split_once("://") {
        None => Ok(format!("https://{value}")),
        Some(("http" | "https", _)) => Ok(value.to_owned()),
        Some((scheme, _)) => Err(format!(
            "s3_endpoint {value:?}: unknown scheme {scheme:?} (give a host, or http:// or https:// and a host)"
        )),
    }
}

/// Builds the bucket from Shimmie's rows and the YAML's overrides. `parse_origin`
/// resolves the endpoint as `origin.servers` are resolved (blocking DNS: call it off
/// the async workers). The error names the row and never shows a credential.
pub fn build(
    rows: &S3Rows,
    opts: &ShimmieOrigin,
    parse_origin: impl Fn(&str) -> Result<OriginServer, String>,
) -> Result<S3Origin, String> {
    if let Some(why) = &rows.unreadable {
        return Err(why.clone());
    }
    let endpoint = endpoint_url(rows.endpoint.as_deref())?;
    let bucket = match rows.bucket.as_deref().map(str::trim) {
        None | Some("") => return Err("s3_image_bucket is not set".into()),
        Some(b) => b,
    };
    let region = opts
        .region
        .as_deref()
        .or(rows.region.as_deref())
        .unwrap_or(DEFAULT_REGION);
    let nonempty = |s: &Option<crate::shimmie::Secret>| {
        s.as_ref()
            .map(|s| s.expose().trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let credentials = match (nonempty(&rows.access_key_id), nonempty(&rows.secret)) {
        _ if opts.anonymous => None,
        (Some(id), Some(secret)) => Some((id, secret)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(
                "s3_access_key_id is set but s3_access_key_secret is not: set both \
                 (or neither, for a public-read bucket; or `anonymous: true` in the YAML)"
                    .into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "s3_access_key_secret is set but s3_access_key_id is not: set both \
                 (or neither, for a public-read bucket; or `anonymous: true` in the YAML)"
                    .into(),
            )
        }
    };
    let spec = S3Spec {
        endpoint: &endpoint,
        bucket,
        region,
        path_style: opts.path_style,
        credentials,
    };
    S3Origin::build(spec, parse_origin).map_err(|(part, why)| {
        let row = match part {
            S3Part::Endpoint => "s3_endpoint",
            S3Part::Bucket => "s3_image_bucket",
            S3Part::Region if opts.region.is_some() => "shimmer.origin.region",
            S3Part::Region => "s3_region",
        };
        format!("{row}: {why}")
    })
}

/// One line about the bucket in force, for logs and `/status`: no credentials.
pub fn describe(s3: &S3Origin) -> String {
    format!(
        "bucket {:?} at {} (region {}, {}, {})",
        s3.bucket,
        s3.endpoint,
        s3.region,
        if s3.path_style {
            "path-style"
        } else {
            "virtual-hosted"
        },
        if s3.signed() { "signed" } else { "anonymous" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shimmie::Secret;
    use std::net::SocketAddr;

    fn resolve(url: &str) -> Result<OriginServer, String> {
        let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| "port")?),
            None => (rest, if scheme == "https" { 443 } else { 80 }),
        };
        if host.ends_with(".invalid") {
            return Err(format!("{url:?}: cannot resolve"));
        }
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().map_err(|_| "addr")?;
        Ok(OriginServer {
            addr,
            tls: scheme == "https",
            host: host.to_owned(),
        })
    }

    fn rows(endpoint: Option<&str>, bucket: Option<&str>) -> S3Rows {
        S3Rows {
            endpoint: endpoint.map(Into::into),
            bucket: bucket.map(Into::into),
            ..S3Rows::default()
        }
    }

    fn opts() -> ShimmieOrigin {
        ShimmieOrigin::default()
    }

    #[test]
    fn rows_mean_what_shimmie_makes_of_them() {
        let aws = build(&rows(None, Some("imgs")), &opts(), resolve).unwrap();
        assert_eq!(aws.endpoint, "https://s3.amazonaws.com");
        assert_eq!((aws.region.as_str(), aws.path_style), ("auto", true));
        assert_eq!(aws.request_path("/ab/cd/h"), "/imgs/ab/cd/h");
        assert!(!aws.signed());
        let bare = build(&rows(Some("s3.local:9000"), Some("imgs")), &opts(), resolve).unwrap();
        assert_eq!(bare.endpoint, "https://s3.local:9000");
        assert!(bare.server.tls);
        let plain = build(
            &rows(Some("http://127.0.0.1:9000/"), Some("imgs")),
            &opts(),
            resolve,
        )
        .unwrap();
        assert_eq!(plain.host_header, "127.0.0.1:9000");
        assert!(!plain.server.tls);
        let mut with_region = rows(Some("http://s3.local:9000"), Some("imgs"));
        with_region.region = Some("eu-central-1".into());
        assert_eq!(
            build(&with_region, &opts(), resolve).unwrap().region,
            "eu-central-1"
        );
        let o = ShimmieOrigin {
            region: Some("us-east-1".into()),
            path_style: false,
            anonymous: false,
        };
        let v = build(&with_region, &o, resolve).unwrap();
        assert_eq!(v.region, "us-east-1");
        assert_eq!(v.host_header, "imgs.s3.local:9000");
    }

    #[test]
    fn credentials_sign_unless_anonymous_and_never_show() {
        let mut r = rows(Some("http://s3.local:9000"), Some("imgs"));
        r.access_key_id = Some(Secret::new("AKIDEXAMPLE".into()));
        r.secret = Some(Secret::new("wJalrXUtnFEMI".into()));
        let signed = build(&r, &opts(), resolve).unwrap();
        assert!(signed.signed());
        let text = format!("{signed:?} {}", describe(&signed));
        assert!(!text.contains("wJalr") && !text.contains("AKID"), "{text}");
        assert!(describe(&signed).ends_with("signed)"));
        let anon = ShimmieOrigin {
            anonymous: true,
            ..opts()
        };
        assert!(!build(&r, &anon, resolve).unwrap().signed());
        r.secret = Some(Secret::new("  ".into()));
        let e = build(&r, &opts(), resolve).unwrap_err();
        assert!(e.starts_with("s3_access_key_id is set but"), "{e}");
        assert!(!e.contains("AKID"));
        assert!(build(&r, &anon, resolve).is_ok());
    }

    #[test]
    fn bad_rows_are_refused_naming_the_row() {
        let cases = [
            (rows(Some(""), Some("imgs")), "s3_endpoint is empty"),
            (rows(Some("  "), Some("imgs")), "s3_endpoint is empty"),
            (
                rows(Some("ftp://s3.local"), Some("imgs")),
                "unknown scheme \"ftp\"",
            ),
            (
                rows(Some("http://s3.local:9000/prefix"), Some("imgs")),
                "s3_endpoint: ",
            ),
            (
                rows(Some("nowhere.invalid"), Some("imgs")),
                "s3_endpoint: \"https://nowhere.invalid\": cannot resolve",
            ),
            (rows(Some("s3.local"), None), "s3_image_bucket is not set"),
            (
                rows(Some("s3.local"), Some("")),
                "s3_image_bucket is not set",
            ),
            (
                rows(Some("s3.local"), Some("Bad_Bucket")),
                "s3_image_bucket: \"Bad_Bucket\" is not an S3 bucket name",
            ),
        ];
        for (r, want) in cases {
            let e = build(&r, &opts(), resolve).unwrap_err();
            assert!(e.contains(want), "{r:?}: {e}");
        }
        let mut r = rows(Some("s3.local"), Some("imgs"));
        r.region = Some("eu central".into());
        assert!(build(&r, &opts(), resolve)
            .unwrap_err()
            .starts_with("s3_region: "));
        r.unreadable = Some("s3_endpoint: value is not valid UTF-8".into());
        assert_eq!(
            build(&r, &opts(), resolve).unwrap_err(),
            "s3_endpoint: value is not valid UTF-8"
        );
    }
}
