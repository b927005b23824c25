//! The operations part of the config: the admin listener and TLS. Files named here
//! (token, certificates) are read and checked at load time, so a reload with a missing
//! or broken file is refused before anything is swapped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pingora::tls::pkey::{PKey, Private};
use pingora::tls::x509::X509;
use serde::Deserialize;

type Invalid = (&'static str, String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// `None` (YAML `~`) turns the admin listener off.
    pub listen: Option<String>,
    pub token_file: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: Some("127.0.0.1:9090".into()),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: Vec<String>,
    pub certs: Vec<RawCertPair>,
    #[serde(default = "yes")]
    pub h2: bool,
    /// Plain-HTTP requests get 308 to https, except the health checks.
    #[serde(default)]
    pub redirect_http: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What requests read of the admin section: the token a reload may change. The admin
/// listener itself is fixed at start ([`super::Fixed::admin_listen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// The bearer token for `POST /purge`; purge is off without one.
    pub token: Option<String>,
}

/// One certificate chain and its key, loaded and checked to belong together.
#[derive(Clone)]
pub struct CertKey {
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// DNS names and the subject CN, lowercase, for SNI matching (`*.x` wildcards kept).
    pub names: Vec<String>,
    pub source: PathBuf,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("names", &self.names)
            .field("source", &self.source)
            .finish()
    }
}

/// What requests read of the TLS section, in the settings snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The TLS listeners in force (fixed at start, see [`TlsListeners`]): the https
    /// redirect names the first one's port.
    pub listen: Vec<String>,
    /// Plain-HTTP requests get 308 to https (reloadable).
    pub redirect_http: bool,
}

/// The TLS listeners, fixed at start: Pingora builds them (and their ALPN) once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListeners {
    pub listen: Vec<String>,
    pub h2: bool,
}

/// The TLS section validated, before it is split into what is fixed and what is not.
pub(super) struct TlsParts {
    pub listeners: TlsListeners,
    /// The certificates, loaded and checked; the first is the default.
    pub certs: Arc<Vec<CertKey>>,
    pub redirect_http: bool,
}

/// The admin section validated: the listener (fixed at start) and the token.
pub(super) fn admin(raw: &RawAdmin) -> Result<(Option<SocketAddr>, Admin), Invalid> {
    let listen = raw
        .listen
        .as_deref()
        .map(|l| {
            l.parse::<SocketAddr>()
                .map_err(|e| ("shimmer.admin.listen", format!("{l:?}: {e}")))
        })
        .transpose()?;
    let token = raw
        .token_file
        .as_ref()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ("shimmer.admin.token_file", format!("{}: {e}", p.display())))?;
            let token = text.trim().to_owned();
            // A short token is guessable; refuse it rather than run an open purge API.
            if token.len() < 16 || token.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err((
                    "shimmer.admin.token_file",
                    format!(
                        "{}: the token must be one word of at least 16 characters",
                        p.display()
                    ),
                ));
            }
            Ok(token)
        })
        .transpose()?;
    Ok((listen, Admin { token }))
}

pub(super) fn tls(raw: &RawTls) -> Result<TlsParts, Invalid> {
    if raw.listen.is_empty() {
        return Err(("shimmer.tls.listen", "needs at least one address".into()));
    }
    for l in &raw.listen {
        l.parse::<SocketAddr>()
            .map_err(|e| ("shimmer.tls.listen", format!("{l:?}: {e}")))?;
    }
    if raw.certs.is_empty() {
        return Err((
            "shimmer.tls.certs",
            "needs at least one cert/key pair".into(),
        ));
    }
    let certs = raw
        .certs
        .iter()
        .map(load_pair)
        .collect::<Result<Vec<_>, String>>()
        .map_err(|m| ("shimmer.tls.certs", m))?;
    Ok(TlsParts {
        listeners: TlsListeners {
            listen: raw.listen.clone(),
            h2: raw.h2,
        },
        certs: Arc::new(certs),
        redirect_http: raw.redirect_http,
    })
}

fn load_pair(pair: &RawCertPair) -> Result<CertKey, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let chain = X509::stack_from_pem(&read(&pair.cert)?)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", pair.cert.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{}: no certificate in the file", pair.cert.display()))?;
    let key = PKey::private_key_from_pem(&read(&pair.key)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", pair.key.display()))?;
    let public = leaf
        .public_key()
        .map_err(|e| format!("{}: {e}", pair.cert.display()))?;
    if !public.public_eq(&key) {
        return Err(format!(
            "{} does not belong to {}",
            pair.key.display(),
            pair.cert.display()
        ));
    }
    let mut names: Vec<String> = leaf
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    for cn in leaf
        .subject_name()
        .entries_by_nid(pingora::tls::nid::Nid::COMMONNAME)
    {
        if let Ok(s) = std::str::from_utf8(cn.data().as_slice()) {
            names.push(s.to_ascii_lowercase());
        }
    }
    Ok(CertKey {
        chain,
        key,
        names,
        source: pair.cert.clone(),
    })
}
