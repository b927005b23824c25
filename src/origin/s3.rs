//! `shimmer.origin.s3`: a bucket as the origin, e.g. the one Shimmie's "S3 CDN"
//! extension (ext/s3) fills with `<ab>/<cd>/<hash>` objects.
//!
//! The bucket is fetched through the same Pingora upstream as an HTTP origin
//! (keep-alive, timeouts, failover, the cache fill), so S3 support is only: where to
//! connect, what path and Host to send, and an AWS Signature V4 over the request when
//! credentials are configured. Signing is done by `aws-sigv4`, the signer of the
//! official AWS SDK for Rust, which signs request parts without an HTTP client of its
//! own. Credentials come from files only and are read when the config is rendered, so
//! `shimmer -t` checks them and SIGHUP re-reads them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use pingora_http::RequestHeader;
use serde::Deserialize;

use super::path::PathTemplate;
use crate::config::OriginServer;

/// Where Shimmie's ext/s3 puts a post's file in its bucket.
pub const SHIMMIE_S3_LAYOUT: &str = "/$ab/$cd/$hash";

/// `shimmer.origin.s3` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    /// `http(s)://host[:port]`; none: AWS's `https://s3.<region>.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// `/<bucket>/<key>` on the endpoint's host (MinIO, Ceph, moto and most self-hosted
    /// stores) instead of `<bucket>.<endpoint host>/<key>` (AWS's default).
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// A validated S3 origin.
#[derive(Clone)]
pub struct S3Origin {
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    /// The endpoint as configured (`http(s)://host[:port]`), for status and logs.
    pub endpoint: String,
    /// Where to connect (the endpoint, or the bucket's virtual host).
    pub server: OriginServer,
    /// The Host header sent and signed: `host[:port]`, the port only when not the
    /// scheme's default.
    pub host_header: String,
    /// `None`: anonymous requests (a public-read bucket).
    credentials: Option<Credentials>,
}

impl fmt::Debug for S3Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret, not even redacted by a dependency's Debug.
        f.debug_struct("S3Origin")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("endpoint", &self.endpoint)
            .field("server", &self.server)
            .field("host_header", &self.host_header)
            .field("signed", &self.credentials.is_some())
            .finish()
    }
}

type Invalid = (&'static str, String);

/// Which part of an [`S3Spec`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Part {
    Endpoint,
    Bucket,
    Region,
}

/// What an S3 origin is built from, wherever it was read: the YAML
/// ([`S3Origin::from_raw`]) or Shimmie's `config` table (`super::shimmie`).
pub struct S3Spec<'a> {
    /// `http(s)://host[:port]`.
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub region: &'a str,
    pub path_style: bool,
    /// Access key id and secret; `None`: anonymous.
    pub credentials: Option<(String, String)>,
}

/// An S3 bucket name: 3-63 of a-z, 0-9, '-', '.' (what path- and virtual-hosted-style
/// requests both accept).
pub fn valid_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl S3Origin {
    /// Validates the section and reads the credential files. `parse_origin` resolves
    /// `http(s)://host:port` the way `origin.servers` are resolved.
    pub fn from_raw(
        raw: &RawS3,
        parse_origin: impl Fn(&str) -> Result<OriginServer, String>,
    ) -> Result<S3Origin, Invalid> {
        let credentials = match (&raw.access_key_id_file, &raw.secret_access_key_file) {
            (None, None) => None,
            (Some(id), Some(secret)) => {
                let id = read_secret("shimmer.origin.s3.access_key_id_file", id)?;
                let secret = read_secret("shimmer.origin.s3.secret_access_key_file", secret)?;
                Some((id, secret))
            }
            (Some(_), None) => {
                return Err((
                    "shimmer.origin.s3.secret_access_key_file",
                    "is required with access_key_id_file".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "shimmer.origin.s3.access_key_id_file",
                    "is required with secret_access_key_file".into(),
                ))
            }
        };
        let region = raw.region.trim();
        let endpoint = raw
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let spec = S3Spec {
            endpoint: &endpoint,
            bucket: &raw.bucket,
            region,
            path_style: raw.path_style,
            credentials,
        };
        S3Origin::build(spec, parse_origin).map_err(|(part, m)| {
            let key = match part {
                S3Part::Endpoint => "shimmer.origin.s3.endpoint",
                S3Part::Bucket => "shimmer.origin.s3.bucket",
                S3Part::Region => "shimmer.origin.s3.region",
            };
            (key, m)
        })
    }

    /// Checks the parts, resolves where to connect and keeps the credentials. The error
    /// names the part that is wrong.
    pub fn build(
        spec: S3Spec<'_>,
        parse_origin: impl Fn(&str) -> Result<OriginServer, String>,
    ) -> Result<S3Origin, (S3Part, String)> {
        let bucket = spec.bucket.trim();
        if !valid_bucket(bucket) {
            return Err((
                S3Part::Bucket,
                format!("{bucket:?} is not an S3 bucket name (3-63 of a-z, 0-9, '-', '.')"),
            ));
        }
        let region = spec.region.trim();
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err((S3Part::Region, format!("{region:?} is not a region")));
        }
        let endpoint = spec.endpoint.trim().trim_end_matches('/');
        let (scheme, authority) = endpoint.split_once("://").ok_or((
            S3Part::Endpoint,
            format!("{endpoint:?}: give http://host[:port] or https://host[:port]"),
        ))?;
        let url = if spec.path_style {
            endpoint.to_owned()
        } else {
            format!("{scheme}://{bucket}.{authority}")
        };
        let server = parse_origin(&url).map_err(|m| (S3Part::Endpoint, m))?;
        let default_port = if server.tls { 443 } else { 80 };
        let host_header = if server.addr.port() == default_port {
            server.host.clone()
        } else if server.host.contains(':') {
            format!("[{}]:{}", server.host, server.addr.port())
        } else {
            format!("{}:{}", server.host, server.addr.port())
        };
        let credentials = spec
            .credentials
            .map(|(id, secret)| Credentials::new(id, secret, None, None, "shimmer"));
        Ok(S3Origin {
            bucket: bucket.to_owned(),
            region: region.to_owned(),
            path_style: spec.path_style,
            endpoint: endpoint.to_owned(),
            server,
            host_header,
            credentials,
        })
    }

    /// Shimmie's ext/s3 layout.
    pub fn default_template() -> PathTemplate {
        // A constant known to parse; a failure here would be a bug caught by the tests.
        PathTemplate::parse(SHIMMIE_S3_LAYOUT).unwrap_or_else(|e| panic!("built-in template: {e}"))
    }

    /// Whether requests are signed.
    pub fn signed(&self) -> bool {
        self.credentials.is_some()
    }

    /// The request path for an object key path (`/<key>`).
    pub fn request_path(&self, key_path: &str) -> String {
        if self.path_style {
            format!("/{}{key_path}", self.bucket)
        } else {
            key_path.to_owned()
        }
    }

    /// Signs the request as it will be sent (method, path, query and Host): adds
    /// `x-amz-date`, `x-amz-content-sha256` and `Authorization`. Anonymous: nothing.
    pub fn sign(&self, req: &mut RequestHeader) -> Result<(), String> {
        let Some(creds) = &self.credentials else {
            return Ok(());
        };
        let identity = Identity::from(creds.clone());
        let mut settings = SigningSettings::default();
        // S3 wants the payload hash header, the path encoded once and not normalized.
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into();
        let uri = req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let method = req.method.as_str().to_owned();
        // Only Host is signed besides S3's own headers: the visitor's Range and
        // conditionals stay free to pass as they are.
        let headers = [("host", self.host_header.as_str())];
        let signable = SignableRequest::new(
            &method,
            uri,
            headers.into_iter(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| format!("signing: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("signing: {e}"))?
            .into_parts();
        for (name, value) in instructions.headers() {
            req.insert_header(name.to_owned(), value)
                .map_err(|e| format!("signed header {name}: {e}"))?;
        }
        Ok(())
    }
}

/// A credential file's content, trimmed; an empty file is refused.
fn read_secret(key: &'static str, path: &Path) -> Result<String, Invalid> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| (key, format!("cannot read {}: {e}", path.display())))?;
    let value = text.trim();
    if value.is_empty() || value.bytes().any(|b| b.is_ascii_control()) {
        return Err((key, format!("{} is empty or not one line", path.display())));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn resolve(url: &str) -> Result<OriginServer, String> {
        let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
        let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "443"));
        let port: u16 = port.parse().map_err(|_| "port")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().map_err(|_| "addr")?;
        Ok(OriginServer {
            addr,
            tls: scheme == "https",
            host: host.to_owned(),
        })
    }

    fn raw(endpoint: &str, path_style: bool) -> RawS3 {
        RawS3 {
            endpoint: Some(endpoint.into()),
            bucket: "shimmie-images".into(),
            region: "us-east-1".into(),
            path_style,
            access_key_id_file: None,
            secret_access_key_file: None,
        }
    }

    #[test]
    fn path_and_virtual_hosted_style() {
        let p = S3Origin::from_raw(&raw("http://s3.local:9000", true), resolve).unwrap();
        assert_eq!(p.host_header, "s3.local:9000");
        assert_eq!(p.request_path("/e2/8e/h"), "/shimmie-images/e2/8e/h");
        assert!(!p.signed());
        let v = S3Origin::from_raw(&raw("https://s3.example.com", false), resolve).unwrap();
        assert_eq!(v.host_header, "shimmie-images.s3.example.com");
        assert_eq!(v.request_path("/e2/8e/h"), "/e2/8e/h");
    }

    #[test]
    fn bad_sections_are_refused() {
        let mut r = raw("http://s3.local:9000", true);
        r.bucket = "Bad_Bucket".into();
        assert_eq!(
            S3Origin::from_raw(&r, resolve).unwrap_err().0,
            "shimmer.origin.s3.bucket"
        );
        let mut r = raw("http://s3.local:9000", true);
        r.access_key_id_file = Some("/nonexistent/shimmer-key".into());
        assert_eq!(
            S3Origin::from_raw(&r, resolve).unwrap_err().0,
            "shimmer.origin.s3.secret_access_key_file"
        );
        r.secret_access_key_file = Some("/nonexistent/shimmer-secret".into());
        let e = S3Origin::from_raw(&r, resolve).unwrap_err();
        assert!(e.1.contains("cannot read"), "{e:?}");
        let r = raw("s3.local:9000", true);
        assert_eq!(
            S3Origin::from_raw(&r, resolve).unwrap_err().0,
            "shimmer.origin.s3.endpoint"
        );
    }

    #[test]
    fn signing_adds_sigv4_headers_and_hides_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id"), "AKIDEXAMPLE\n").unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n",
        )
        .unwrap();
        let mut r = raw("http://s3.local:9000", true);
        r.access_key_id_file = Some(dir.path().join("id"));
        r.secret_access_key_file = Some(dir.path().join("secret"));
        let s3 = S3Origin::from_raw(&r, resolve).unwrap();
        assert!(!format!("{s3:?}").contains("wJalr"));
        let mut req = RequestHeader::build("GET", b"/shimmie-images/e2/8e/h", None).unwrap();
        s3.sign(&mut req).unwrap();
        let auth = req.headers.get("authorization").unwrap().to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/us-east-1/s3/aws4_request"), "{auth}");
        assert!(
            auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date"),
            "{auth}"
        );
        assert_eq!(
            req.headers.get("x-amz-content-sha256").unwrap(),
            "UNSIGNED-PAYLOAD"
        );
        assert!(req.headers.get("x-amz-date").is_some());
    }
}
