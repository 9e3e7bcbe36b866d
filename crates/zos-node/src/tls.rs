//! The node's TLS identity: a self-signed certificate for the node's own ed25519 key, made at
//! each start. No CA vouches for it; clients trust it because its key is the node id they
//! sign their requests for (pinned, or asked once over the same TLS connection), so a
//! man in the middle would need the node's private key.

use anyhow::{Context, Result};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;
use zos_types::Keypair;

/// A TLS 1.3 acceptor presenting a certificate whose key is `key`, the node's identity.
pub fn acceptor(key: &Keypair) -> Result<TlsAcceptor> {
    let pem = key
        .to_pkcs8_pem()
        .context("encoding the node's key for its TLS certificate")?;
    let key_pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_ED25519)
        .context("reading the node's key as an ed25519 TLS key")?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .context("making the node's certificate")?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("zos node {}", key.public()),
    );
    let cert = params
        .self_signed(&key_pair)
        .context("signing the node's certificate")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der())),
        )
        .context("the node's TLS certificate and key")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
