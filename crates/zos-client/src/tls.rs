//! TLS to a node, trusting no CA: a node's certificate is self-signed for its ed25519 key,
//! and that key is the node id every request is signed for. So the certificate is accepted
//! when its key is the node id (pinned with `--node-id`, or asked once: the answer to
//! `GET /v1/node/id` must then be the key of the certificate it came over), and the
//! handshake proves the node holds that key. A man in the middle cannot present the node's
//! key without its private half.

use std::sync::{Arc, OnceLock};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use zos_types::PublicKey;

/// The DER of an Ed25519 SubjectPublicKeyInfo before its 32 key bytes (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The ed25519 key a certificate is for, or why it has none.
pub(crate) fn certificate_key(cert: &CertificateDer<'_>) -> Result<PublicKey, String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("its certificate does not parse ({e:?})"))?;
    let spki = parsed.subject_public_key_info();
    let spki: &[u8] = spki.as_ref();
    match spki.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
        Some(key) if key.len() == 32 => {
            let mut bytes = [0u8; 32];
            bytes.copy_from_slice(key);
            Ok(PublicKey(bytes))
        }
        _ => Err("its certificate's key is not an ed25519 key, so it is not a zos node's".into()),
    }
}

/// Accepts a certificate whose key is the node id, once the node id is known; before that
/// (the first `GET /v1/node/id`), any ed25519 key, which the caller then compares with the
/// id the node states.
#[derive(Debug)]
struct NodeKeyVerifier {
    node_id: Arc<OnceLock<PublicKey>>,
    provider: Arc<CryptoProvider>,
}

/// Why a node's certificate was refused, shown to the user as is.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl ServerCertVerifier for NodeKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refuse = |why: String| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(Refused(why)),
            )))
        };
        let key = certificate_key(end_entity).map_err(refuse)?;
        match self.node_id.get() {
            Some(id) if *id != key => Err(refuse(format!(
                "it presents the key {key}, not the node id {id} that requests are signed \
                 for (pinned with --node-id or asked earlier): a man in the middle, or \
                 another node at that address; refusing it"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered, so this is never asked.
        Err(rustls::Error::General(
            "TLS 1.2 is not used with zos nodes".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// What a failed handshake says, with a refusal's own words rather than rustls' wrapping.
pub(crate) fn handshake_error(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            format!("the node's certificate is refused: {}", other.0)
        }
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    }
}

/// A TLS 1.3 connector that accepts only a node whose key is `node_id` (once set).
pub(crate) fn connector(
    node_id: Arc<OnceLock<PublicKey>>,
) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = NodeKeyVerifier {
        node_id,
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("setting up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
