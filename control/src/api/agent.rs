//! The API server's connection to a node's agent API (logs, exec, attach, port-forward), as
//! kube-apiserver dials the kubelet: TLS, presenting the server's agent client certificate
//! (`--kubelet-client-certificate`), and trusting the agent's serving certificate by the
//! SHA-256 digest its Node publishes (`keelson.io/agent-api-cert-sha256`) — agents make their
//! own certificate, as a kubelet without `--tls-cert-file` does, and a pin checks it where
//! kube-apiserver without `--kubelet-certificate-authority` checks nothing.

use std::{net::IpAddr, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// The Node annotation where an agent publishes the SHA-256 digest (hex) of its node API's
/// serving certificate.
pub const AGENT_CERT_ANNOTATION: &str = "keelson.io/agent-api-cert-sha256";

/// Errors of reaching an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentDialError {
    #[error("the agent client certificate: {0}")]
    Credentials(String),
    #[error("node {node} does not publish its agent API certificate ({AGENT_CERT_ANNOTATION})")]
    NoPin { node: String },
    #[error("bad agent certificate digest {0:?}")]
    BadPin(String),
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}")]
    Handshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
}

impl AgentDialError {
    /// The error with its causes, as one line.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cur = e.source();
        }
        text
    }
}

/// A byte stream to an agent, plain or TLS.
pub trait AgentIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AgentIo for T {}

/// Where a node's agent API is and how its certificate is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAddr {
    pub node: String,
    /// `host:port`.
    pub addr: String,
    /// The digest of the agent's serving certificate, when the Node publishes one.
    pub cert_sha256: Option<String>,
}

/// The server's side of the connection: its client certificate.
#[derive(Debug)]
pub struct AgentClient {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl AgentClient {
    /// The client of the certificate and key in PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, AgentDialError> {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AgentDialError::Credentials(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| AgentDialError::Credentials(e.to_string()))?;
        Ok(Self {
            certs,
            key,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    fn config(&self, pin: Vec<u8>) -> Result<ClientConfig, AgentDialError> {
        let verifier = Pinned {
            sha256: pin,
            provider: Arc::clone(&self.provider),
        };
        let mut cfg = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(AgentDialError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(AgentDialError::Tls)?;
        // WebSocket upgrades are HTTP/1.1.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// Connects to `agent`: over TLS when the server has a client certificate (always, outside
/// tests), else plain TCP.
pub async fn dial(
    agent: &AgentAddr,
    client: Option<&AgentClient>,
) -> Result<Box<dyn AgentIo>, AgentDialError> {
    let tcp = TcpStream::connect(&agent.addr)
        .await
        .map_err(|source| AgentDialError::Connect {
            addr: agent.addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let Some(client) = client else {
        return Ok(Box::new(tcp));
    };
    let pin = agent
        .cert_sha256
        .as_deref()
        .ok_or_else(|| AgentDialError::NoPin {
            node: agent.node.clone(),
        })?;
    let pin = hex(pin).ok_or_else(|| AgentDialError::BadPin(pin.to_owned()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client.config(pin)?));
    // The pin identifies the agent; the name only fills SNI (not sent for an address).
    let host = agent
        .addr
        .rsplit_once(':')
        .map_or(agent.addr.as_str(), |(h, _)| h)
        .trim_matches(['[', ']']);
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into())),
    };
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|source| AgentDialError::Handshake {
            addr: agent.addr.clone(),
            source,
        })?;
    Ok(Box::new(tls))
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Trusts exactly the certificate of one digest; the handshake's signatures are still checked
/// against it, so only the holder of its key passes.
#[derive(Debug)]
struct Pinned {
    sha256: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if digest.as_ref() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
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
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_64_hex_digits() {
        assert_eq!(hex(&"ab".repeat(32)), Some(vec![0xab; 32]));
        assert_eq!(hex("ab"), None);
        assert_eq!(hex(&"zz".repeat(32)), None);
    }
}
