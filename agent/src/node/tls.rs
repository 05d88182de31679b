//! The node API's TLS, as the kubelet serves its port 10250: a serving certificate (given with
//! `--tls-cert-file`/`--tls-private-key-file`, or self-signed and kept in the data dir, as a
//! kubelet without them makes `pki/kubelet.crt`), and client certificates required and checked
//! against `--client-ca-file`, the CA that signs only the API server's agent client
//! certificate. The certificate's SHA-256 digest is published on the Node so the API server
//! knows it is talking to this agent.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

/// Errors of preparing the node API's TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("generating the serving certificate")]
    Generate(#[source] rcgen::Error),
    #[error("the TLS configuration")]
    Config(#[source] rustls::Error),
    #[error("the client CA {path}")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// Where the node API's certificate comes from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `--tls-cert-file` and `--tls-private-key-file`; `None`: self-signed in `data_dir/pki`.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    /// `--client-ca-file`.
    pub client_ca: PathBuf,
}

/// The node API's server configuration and the digest of its certificate.
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub config: Arc<ServerConfig>,
    /// Hex SHA-256 of the serving certificate (DER), for the Node's annotation.
    pub cert_sha256: String,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })
}

fn pem_err(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The self-signed certificate in `dir` (`agent-api.crt`, `agent-api.key`), made for `names`
/// on first use and kept, so its digest stays the same across restarts.
fn self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = (dir.join("agent-api.crt"), dir.join("agent-api.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let pair = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(TlsError::Generate)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!(
            "{}@keelson-agent",
            names.first().map_or("node", String::as_str)
        ),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    let signed = params.self_signed(&pair).map_err(TlsError::Generate)?;
    write_private(&key, &pair.serialize_pem())?;
    write_private(&cert, &signed.pem())?;
    Ok((cert, key))
}

/// Writes a file readable by its owner only, whole or not at all.
fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let io = |source| TlsError::Io {
        what: "writing",
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Loads (or makes) the node API's certificate and the client check. `names` are the
/// self-signed certificate's subject alternative names (node name, addresses). Blocking.
pub fn load(files: &TlsFiles, data_dir: &Path, names: &[String]) -> Result<NodeTls, TlsError> {
    let (cert_path, key_path) = match &files.cert_and_key {
        Some(pair) => pair.clone(),
        None => self_signed(&data_dir.join("pki"), names)?,
    };
    let cert_pem = read(&cert_path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(pem_err(&cert_path))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(pem_err(&key_path))?;
    let leaf = certs.first().ok_or_else(|| TlsError::Pem {
        path: cert_path.clone(),
        message: "no certificate in the file".into(),
    })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let cert_sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();

    let mut roots = RootCertStore::empty();
    let ca_pem = read(&files.client_ca)?;
    for ca in CertificateDer::pem_slice_iter(&ca_pem) {
        roots
            .add(ca.map_err(pem_err(&files.client_ca))?)
            .map_err(TlsError::Config)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| TlsError::ClientCa {
            path: files.client_ca.clone(),
            source,
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    // Upgrades (exec, attach, port-forward) are HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(NodeTls {
        config: Arc::new(config),
        cert_sha256,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A CA and a client certificate it signs, as the server's pki makes them: (CA PEM,
    /// certificate DER, key DER).
    fn client_ca() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).expect("cert");
        (
            ca_cert.pem(),
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
    }

    /// Trusts any server certificate: the test checks the client side of the handshake.
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `GET /healthz` over TLS, with or without a client certificate: the answer, or the
    /// error that ended the exchange.
    async fn healthz(
        addr: std::net::SocketAddr,
        client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    ) -> Result<String, std::io::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
        let cfg = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(vec![cert], key)
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                tcp,
            )
            .await?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn only_a_certificate_of_the_client_ca_is_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_pem, cert, key) = client_ca();
        let ca_path = dir.path().join("client-ca.crt");
        std::fs::write(&ca_path, ca_pem).expect("ca");
        let files = TlsFiles {
            cert_and_key: None,
            client_ca: ca_path,
        };
        let names = ["n1".to_owned(), "127.0.0.1".to_owned()];
        let tls = load(&files, dir.path(), &names).expect("tls");
        // Made once and kept: the digest the Node publishes stays the same.
        let again = load(&files, dir.path(), &names).expect("tls");
        assert_eq!(tls.cert_sha256, again.cert_sha256);
        assert_eq!(tls.cert_sha256.len(), 64);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        tokio::spawn(super::super::api::serve_node(
            addr,
            dir.path().to_owned(),
            Some(tls.config),
        ));
        let ok = loop {
            match healthz(addr, Some((cert.clone(), key.clone_key()))).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => break other.expect("served to the client certificate"),
            }
        };
        assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok"), "{ok}");
        let refused = healthz(addr, None).await;
        assert!(refused.is_err(), "{refused:?}");
        // A certificate of another CA is refused too.
        let (_, other_cert, other_key) = client_ca();
        let stranger = healthz(addr, Some((other_cert, other_key))).await;
        assert!(stranger.is_err(), "{stranger:?}");
    }
}
