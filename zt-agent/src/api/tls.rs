//! The API's TLS: TLS 1.3 only, the ring provider, a client certificate
//! required and verified against the configured CA (webpki: chain,
//! validity period, client-auth key usage).
//!
//! Each connection gets its own [`rustls::ServerConfig`] around the shared
//! verifier and key, so that what a refused client presented (its SPIFFE
//! ID) is known for the audit record ([`Presented`]).
use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use rustls::{
    DistinguishedName, Error as TlsError, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::{CertifiedKey, SingleCertAndKey},
};

use super::ApiError;

/// What the client's certificate says it is: its SPIFFE ID, or why it has none.
pub type Presented = Arc<Mutex<Option<Result<String, String>>>>;

/// The server's certificate and key, and the client verifier, loaded once.
pub struct Tls {
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ClientCertVerifier>,
    certified: Arc<CertifiedKey>,
}

impl Tls {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls, ApiError> {
        let bad = |what: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |e: &dyn std::fmt::Display| ApiError::Tls { what, path: path.clone(), reason: e.to_string() }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let ca_bad = bad("client CA bundle", ca);
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| ca_bad(&e))? {
            roots.add(c.map_err(|e| ca_bad(&e))?).map_err(|e| ca_bad(&e))?;
        }
        if roots.is_empty() {
            return Err(ca_bad(&"holds no certificate"));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().map_err(|e| ca_bad(&e))?;
        let cert_bad = bad("server certificate", cert);
        let chain =
            CertificateDer::pem_file_iter(cert).map_err(|e| cert_bad(&e))?.collect::<Result<Vec<_>, _>>().map_err(|e| cert_bad(&e))?;
        if chain.is_empty() {
            return Err(cert_bad(&"holds no certificate"));
        }
        let key_bad = bad("server key", key);
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| key_bad(&e))?;
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| key_bad(&e))?;
        Ok(Tls { provider, verifier, certified: Arc::new(certified) })
    }

    /// A config for one connection, and where it notes what the client presented.
    pub fn config(&self) -> (Arc<ServerConfig>, Presented) {
        let presented = Presented::default();
        let verifier = Arc::new(Noting { inner: self.verifier.clone(), presented: presented.clone() });
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.certified.clone())));
        (Arc::new(config), presented)
    }
}

/// The client's SPIFFE ID from its end-entity certificate.
pub fn presented_id(cert: &CertificateDer<'_>) -> Result<String, String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("the client certificate cannot be parsed: {e}"))?;
    super::authz::spiffe_id(ee.valid_uri_names())
}

/// Why a handshake failed, for the client's audit record.
pub fn refusal(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) else {
        return format!("TLS handshake failed: {e}");
    };
    match tls {
        TlsError::InvalidCertificate(C::UnknownIssuer) => "client certificate refused: not issued by the API's client CA".into(),
        TlsError::InvalidCertificate(c @ (C::Expired | C::ExpiredContext { .. })) => format!("client certificate refused: expired ({c})"),
        TlsError::InvalidCertificate(c) => format!("client certificate refused: {c}"),
        TlsError::NoCertificatesPresented => "no client certificate (this API requires mutual TLS)".into(),
        TlsError::PeerIncompatible(p) => format!("the client cannot speak TLS 1.3, the only version served ({p:?})"),
        other => format!("TLS handshake failed: {other}"),
    }
}

/// The configured verifier, noting the client's SPIFFE ID first.
#[derive(Debug)]
struct Noting {
    inner: Arc<dyn ClientCertVerifier>,
    presented: Presented,
}

impl ClientCertVerifier for Noting {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        *self.presented.lock().expect("poisoned") = Some(presented_id(end_entity));
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
