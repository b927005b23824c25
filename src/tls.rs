//! TLS termination: certificates chosen by SNI during the handshake from a set that a
//! reload swaps whole, so new handshakes see new certificates while connections already
//! open keep theirs.

use std::any::Any;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::ssl::NameType;

use crate::config::ops::CertKey;
use crate::metrics;

/// The certificates in force; the first one is the default for clients without SNI
/// or with a name no certificate carries.
pub struct CertStore {
    certs: ArcSwap<Vec<CertKey>>,
}

impl CertStore {
    pub fn new(certs: Arc<Vec<CertKey>>) -> Arc<CertStore> {
        Arc::new(CertStore {
            certs: ArcSwap::new(certs),
        })
    }

    /// New handshakes use these from now on.
    pub fn replace(&self, certs: Arc<Vec<CertKey>>) {
        self.certs.store(certs);
    }

    /// The certificate for a server name: exact name first, then a `*.` wildcard one
    /// label up, then the default.
    pub fn pick(&self, sni: Option<&str>) -> Option<CertKey> {
        let certs = self.certs.load();
        pick(&certs, sni).cloned()
    }
}

fn pick<'a>(certs: &'a [CertKey], sni: Option<&str>) -> Option<&'a CertKey> {
    if let Some(name) = sni.map(str::to_ascii_lowercase) {
        if let Some(c) = certs.iter().find(|c| c.names.contains(&name)) {
            return Some(c);
        }
        if let Some((_, parent)) = name.split_once('.') {
            let wildcard = format!("*.{parent}");
            if let Some(c) = certs.iter().find(|c| c.names.contains(&wildcard)) {
                return Some(c);
            }
        }
    }
    certs.first()
}

/// Pingora's handshake hook, backed by a [`CertStore`].
struct SniCallbacks {
    store: Arc<CertStore>,
}

#[async_trait]
impl TlsAccept for SniCallbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        metrics::TLS_HANDSHAKES
            .with_label_values(&["started"])
            .inc();
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_owned);
        let Some(cert) = self.store.pick(sni.as_deref()) else {
            // No certificate at all cannot pass validation; the handshake fails.
            return;
        };
        let mut result = Ok(());
        if let Some((leaf, chain)) = cert.chain.split_first() {
            result = ext::ssl_use_certificate(ssl, leaf);
            for c in chain {
                result = result.and_then(|_| ext::ssl_add_chain_cert(ssl, c));
            }
        }
        if let Err(e) = result.and_then(|_| ext::ssl_use_private_key(ssl, &cert.key)) {
            metrics::TLS_HANDSHAKES
                .with_label_values(&["cert_error"])
                .inc();
            tracing::error!(
                "TLS: cannot use {} for {:?}: {e}",
                cert.source.display(),
                sni
            );
        }
    }

    async fn handshake_complete_callback(
        &self,
        _ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        metrics::TLS_HANDSHAKES
            .with_label_values(&["completed"])
            .inc();
        None
    }
}

/// Listener settings for one TLS address: SNI callbacks, and h2 by ALPN when wanted.
pub fn listener_settings(store: Arc<CertStore>, h2: bool) -> pingora::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(SniCallbacks { store }))?;
    if h2 {
        settings.enable_h2();
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::tls::pkey::PKey;
    use pingora::tls::x509::X509;

    fn cert(names: &[&str]) -> CertKey {
        // The picker only looks at names; any valid key/cert objects will do.
        let key = PKey::generate_ed25519().expect("key");
        let mut b = X509::builder().expect("builder");
        b.set_pubkey(&key).expect("pubkey");
        b.sign(&key, pingora::tls::hash::MessageDigest::null())
            .expect("sign");
        CertKey {
            chain: vec![b.build()],
            key,
            names: names.iter().map(|s| s.to_string()).collect(),
            source: names.first().unwrap_or(&"none").into(),
        }
    }

    #[test]
    fn exact_name_wins_then_wildcard_then_default() {
        let certs = vec![
            cert(&["default.example"]),
            cert(&["a.example"]),
            cert(&["*.img.example"]),
        ];
        let name = |sni| pick(&certs, sni).map(|c| c.names[0].clone());
        assert_eq!(name(Some("a.example")).as_deref(), Some("a.example"));
        assert_eq!(name(Some("A.EXAMPLE")).as_deref(), Some("a.example"));
        assert_eq!(
            name(Some("m1.img.example")).as_deref(),
            Some("*.img.example")
        );
        assert_eq!(
            name(Some("x.m1.img.example")).as_deref(),
            Some("default.example")
        );
        assert_eq!(name(Some("other.test")).as_deref(), Some("default.example"));
        assert_eq!(name(None).as_deref(), Some("default.example"));
    }

    #[test]
    fn an_empty_store_picks_nothing() {
        assert!(pick(&[], Some("a.example")).is_none());
    }
}
