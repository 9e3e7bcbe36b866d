//! Images in a registry, pulled with `oci-client` (anonymously, or with a user's credentials
//! as HTTP Basic auth; with whatever token dance the registry asks for). The client is async; the import is not, so a current-thread tokio
//! runtime lives here and every call is driven with `block_on`. Layers are streamed: the
//! HTTP body is turned into a blocking [`Read`] chunk by chunk, never held whole.

use super::digest::{read_limited, Digest, Mismatch, Verify};
use super::spec::{self, Descriptor, LayerDesc, ManifestSource, Resolved, SMALL_BLOB_LIMIT};
use super::{Cancelled, Credentials, Platform};
use crate::error::{Error, Result};
use futures_util::{Stream, StreamExt};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use std::future::Future;
use std::io::{self, Read};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ACCEPT: &[&str] = &[
    oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
];

/// A registry image being imported.
pub(crate) struct Registry {
    rt: tokio::runtime::Runtime,
    client: oci_client::Client,
    reference: Reference,
    /// The image as the user wrote it (with `docker://`), for messages.
    pub image: String,
    /// `http` or `https`, for messages.
    scheme: &'static str,
    /// What every request authenticates with (the client keeps it per registry).
    auth: RegistryAuth,
    cancel: Option<Arc<AtomicBool>>,
}

/// Whether a registry host (with optional port) is this machine, where plain HTTP is the norm
/// and a man in the middle is not a concern.
fn is_loopback(registry: &str) -> bool {
    let host = if registry.parse::<IpAddr>().is_ok() {
        registry
    } else if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Registry {
    /// Parses `reference` (without the `docker://`) and prepares a client that pulls with
    /// `credentials` (anonymously without). Plain HTTP is used for loopback registries, and
    /// for any registry when `insecure`.
    pub(crate) fn new(
        image: &str,
        reference: &str,
        insecure: bool,
        credentials: Option<&Credentials>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Registry> {
        let reference: Reference = reference.parse().map_err(|e| {
            Error::Invalid(format!(
                "{image}: not a valid image reference ({e}); expected \
                 docker://HOST[:PORT]/NAME:TAG or docker://HOST/NAME@sha256:DIGEST"
            ))
        })?;
        // reqwest is built without a default TLS backend (so that only ring, already used by
        // the rest of the crate, is compiled in); install it once for the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = reference.resolve_registry().to_owned();
        let plain = insecure || is_loopback(&registry);
        let config = oci_client::client::ClientConfig {
            protocol: if plain {
                oci_client::client::ClientProtocol::HttpsExcept(vec![registry])
            } else {
                oci_client::client::ClientProtocol::Https
            },
            // We choose platforms ourselves, to be able to say what an index offers.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config)
            .map_err(|e| Error::Invalid(format!("{image}: cannot set up an HTTP client: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start an async runtime: {e}")))?;
        Ok(Registry {
            rt,
            client,
            reference,
            image: image.to_owned(),
            scheme: if plain { "http" } else { "https" },
            auth: credentials.map_or(RegistryAuth::Anonymous, |c| {
                RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }),
            cancel,
        })
    }

    /// Runs a future to completion, giving up early (with [`Cancelled`]) when the cancel flag
    /// is raised, so an interrupt is honoured even while a server keeps us waiting.
    fn block<F: Future>(&self, fut: F) -> std::result::Result<F::Output, Cancelled> {
        let cancel = self.cancel.clone();
        self.rt.block_on(async move {
            let watch = async move {
                match cancel {
                    Some(flag) => {
                        while !flag.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                out = fut => Ok(out),
                _ = watch => Err(Cancelled),
            }
        })
    }

    /// The user whose credentials are sent, if any.
    fn user(&self) -> Option<String> {
        match &self.auth {
            RegistryAuth::Basic(user, _) => Some(user.clone()),
            _ => None,
        }
    }

    /// Whether the registry refused access: 401 (no or wrong credentials), a failed token
    /// exchange, or an OCI `UNAUTHORIZED`/`DENIED` error (a 403, or a registry naming it).
    fn is_refusal(e: &OciDistributionError) -> bool {
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => true,
            OciDistributionError::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|err| matches!(err.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
            _ => false,
        }
    }

    /// A clear message for a failed registry call; `what` is what we were fetching.
    fn error(&self, what: &str, e: OciDistributionError) -> Error {
        if Registry::is_refusal(&e) {
            return Error::Unauthorized {
                image: self.image.clone(),
                what: what.to_owned(),
                user: self.user(),
                detail: e.to_string(),
            };
        }
        let image = &self.image;
        let host = self.reference.resolve_registry();
        let repo = self.reference.repository();
        let msg = match &e {
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|err| format!("{:?}: {}", err.code, err.message))
                    .collect();
                let not_found = envelope.errors.iter().any(|err| {
                    matches!(
                        err.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                });
                if not_found {
                    format!(
                        "{image}: not found in the registry ({}). Check the repository name and \
                         tag; `skopeo list-tags docker://{host}/{repo}` lists the tags",
                        codes.join("; ")
                    )
                } else {
                    format!(
                        "{image}: the registry refused the {what}: {}",
                        codes.join("; ")
                    )
                }
            }
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => format!(
                "{image}: not found in the registry (HTTP 404 for the {what}). Check the \
                 repository name and tag, and that {host} is a registry"
            ),
            OciDistributionError::ServerError { code, message, .. } => format!(
                "{image}: the registry answered HTTP {code} for the {what}: {:?}. Is {host} an \
                 OCI registry?",
                spec::snippet(message.as_bytes())
            ),
            OciDistributionError::DigestError(d) => format!(
                "{image}: the {what} does not match its digest ({d}); the registry or a proxy \
                 sent corrupt data, try again"
            ),
            OciDistributionError::RequestError(re) => {
                let mut chain = re.to_string();
                let mut source = std::error::Error::source(re);
                while let Some(s) = source {
                    chain.push_str(": ");
                    chain.push_str(&s.to_string());
                    source = s.source();
                }
                let hint = if self.scheme == "https" {
                    " If the registry only speaks plain HTTP, add --insecure."
                } else {
                    ""
                };
                format!(
                    "{image}: cannot fetch the {what} from {}://{host}: {chain}. Check the \
                     address and that the registry is running.{hint}",
                    self.scheme
                )
            }
            _ => format!("{image}: registry error while fetching the {what}: {e}"),
        };
        Error::Invalid(msg)
    }

    /// Fetches the manifest (or index) the reference names, and resolves it for `platform`.
    pub(crate) fn resolve(&mut self, platform: &Platform, explicit: bool) -> Result<Resolved> {
        let (bytes, _) = self.fetch_manifest(&self.reference.clone(), "manifest")?;
        // The digest is ours, computed over the bytes received, not one the server claims.
        let digest = match self.reference.digest() {
            Some(d) => {
                let digest =
                    Digest::parse(d).map_err(|e| Error::Invalid(format!("{}: {e}", self.image)))?;
                self.check_manifest(&bytes, &digest)?;
                digest
            }
            None => Digest::sha256_of(&bytes),
        };
        let image = self.image.clone();
        spec::resolve(self, &image, bytes, digest, platform, explicit)
    }

    fn fetch_manifest(&self, reference: &Reference, what: &str) -> Result<(Vec<u8>, String)> {
        let fut = self.client.pull_manifest_raw(reference, &self.auth, ACCEPT);
        let (bytes, digest) = self
            .block(fut)
            .map_err(|_| Error::Invalid(Cancelled.to_string()))?
            .map_err(|e| self.error(what, e))?;
        if bytes.len() as u64 > SMALL_BLOB_LIMIT {
            return Err(Error::Invalid(format!(
                "{}: the {what} is {} bytes, far more than any manifest; refusing it",
                self.image,
                bytes.len()
            )));
        }
        Ok((bytes.to_vec(), digest))
    }

    /// Checks a manifest pulled by digest. oci-client checks too, but the import promises its
    /// own check of everything it reads.
    fn check_manifest(&self, bytes: &[u8], digest: &Digest) -> Result<()> {
        let mut reader = Verify::new(bytes, Some(digest.clone()), None, false);
        io::copy(&mut reader, &mut io::sink()).map_err(|e| {
            Error::Invalid(format!(
                "{}: manifest {digest}: {e}; the registry sent corrupt data",
                self.image
            ))
        })?;
        Ok(())
    }

    /// Opens a blob as a stream; the caller verifies it.
    fn open_blob(&self, digest: &Digest, what: &str) -> Result<Box<dyn Read + '_>> {
        let digest_str = digest.to_string();
        let fut = self
            .client
            .pull_blob_stream(&self.reference, digest_str.as_str());
        let sized = self
            .block(fut)
            .map_err(|_| Error::Invalid(Cancelled.to_string()))?
            .map_err(|e| self.error(what, e))?;
        Ok(Box::new(StreamRead {
            registry: self,
            stream: Box::pin(sized),
            chunk: None,
            pos: 0,
        }))
    }

    /// Opens a layer blob as a stream (verified by the caller while applying).
    pub(crate) fn open_layer(&self, layer: &LayerDesc) -> Result<Box<dyn Read + '_>> {
        let digest = layer
            .digest
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("{}: a layer has no digest", self.image)))?;
        self.open_blob(digest, &format!("layer {}", digest.short()))
    }
}

impl ManifestSource for Registry {
    fn manifest(&mut self, _descriptor: &Descriptor, digest: &Digest) -> Result<Vec<u8>> {
        let reference = self.reference.clone_with_digest(digest.to_string());
        let (bytes, _) = self.fetch_manifest(&reference, &format!("manifest {digest}"))?;
        self.check_manifest(&bytes, digest)?;
        Ok(bytes)
    }

    fn small_blob(&mut self, descriptor: &Descriptor, digest: &Digest) -> Result<Vec<u8>> {
        let reader = Verify::new(
            self.open_blob(digest, "image config")?,
            Some(digest.clone()),
            Some(descriptor.size()),
            false,
        );
        read_limited(reader, SMALL_BLOB_LIMIT)
            .map_err(|e| Error::Invalid(format!("{}: image config {digest}: {e}", self.image)))
    }
}

/// A blocking reader over an HTTP body stream.
struct StreamRead<'a, S, B> {
    registry: &'a Registry,
    stream: Pin<Box<S>>,
    chunk: Option<B>,
    pos: usize,
}

impl<S, B> Read for StreamRead<'_, S, B>
where
    S: Stream<Item = io::Result<B>>,
    B: AsRef<[u8]>,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(chunk) = &self.chunk {
                let rest = &chunk.as_ref()[self.pos..];
                if !rest.is_empty() {
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            let next = self
                .registry
                .block(self.stream.next())
                .map_err(io::Error::other)?;
            match next {
                None => return Ok(0),
                Some(Ok(chunk)) => {
                    self.chunk = Some(chunk);
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(digest_error(e)),
            }
        }
    }
}

/// oci-client checks the digest at the end of the stream too; its verdict is turned into our
/// [`Mismatch`] so the message is the same whichever check fires first.
fn digest_error(e: io::Error) -> io::Error {
    let found = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
        .and_then(|d| match d {
            oci_client::errors::DigestError::VerificationError { expected, actual } => {
                Some((expected.clone(), actual.clone()))
            }
            _ => None,
        });
    match found {
        Some((expected, actual)) => io::Error::new(
            io::ErrorKind::InvalidData,
            Mismatch {
                expected,
                found: format!("it hashes to {actual}"),
                uncompressed: false,
            },
        ),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_user_never_the_password() {
        let credentials = Credentials {
            username: "ci".into(),
            password: "hunter2-secret".into(),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
        let image = "docker://127.0.0.1:5000/team/app:1";
        let refusal = || OciDistributionError::UnauthorizedError {
            url: "http://127.0.0.1:5000/v2/team/app/manifests/1".into(),
        };
        let with = Registry::new(image, &image[9..], false, Some(&credentials), None).unwrap();
        let err = with.error("manifest", refusal());
        assert!(
            matches!(&err, Error::Unauthorized { user: Some(u), .. } if u == "ci"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("refused the credentials of user \"ci\""),
            "{text}"
        );
        assert!(!text.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
        let without = Registry::new(image, &image[9..], false, None, None).unwrap();
        let text = without.error("manifest", refusal()).to_string();
        assert!(text.contains("the registry wants credentials"), "{text}");
        // A 404 is not a refusal.
        let missing = OciDistributionError::ServerError {
            code: 404,
            url: String::new(),
            message: String::new(),
        };
        assert!(!matches!(
            without.error("manifest", missing),
            Error::Unauthorized { .. }
        ));
    }

    #[test]
    fn loopback_registries() {
        for host in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "index.docker.io",
            "10.0.0.1:5000",
            "ghcr.io",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
