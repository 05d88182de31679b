//! The server's credentials in its data dir: a CA and a serving certificate (rcgen; the names
//! of [`serving_names`]), the admin bearer token, `admin.kubeconfig` pointing clients at all
//! of it, and the client certificate the server presents to node agents (kube-apiserver's
//! `--kubelet-client-certificate`) with the CA agents check it against, and the key that signs
//! ServiceAccount tokens. Generated on first start, reused afterwards.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Errors while preparing credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Cert(#[source] rcgen::Error),
}

/// Paths and contents of the credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
    /// The client certificate and key the server presents to agents' node APIs (logs, exec,
    /// attach, port-forward), signed by the CA in [`AGENT_CLIENT_CA_FILE`].
    pub agent_client_cert_pem: String,
    pub agent_client_key_pem: String,
    /// The ServiceAccount token issuer's key (PKCS#8 P-256; kubeadm's `sa.key`).
    pub service_account_key_pem: String,
    pub kubeconfig_path: PathBuf,
}

/// The CA that signs only the server's agent client certificate; agents are given this file
/// (`keelson agent --client-ca-file`), so the one client their node API accepts is the API
/// server. A CA of its own, like kubeadm's front-proxy CA: no other certificate the cluster
/// CA issues (nodes', users') can pass.
pub const AGENT_CLIENT_CA_FILE: &str = "agent-client-ca.crt";

/// A token kept in `path`: read if there is one, else 32 random bytes in hex, written first.
fn ensure_token(path: &Path) -> Result<String, PkiError> {
    if let Some(t) = read(path)?
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        return Ok(t);
    }
    let bytes: [u8; 32] = rand::random();
    let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &t)?;
    Ok(t)
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
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

/// The CA's certificate parameters. The CA is reloaded from its key with these, so a serving
/// certificate re-issued later chains to the same `ca.crt` every client already trusts.
fn ca_params() -> Result<CertificateParams, PkiError> {
    ca_params_named("keelson-ca")
}

/// A CA's certificate parameters with `common_name`.
fn ca_params_named(common_name: &str) -> Result<CertificateParams, PkiError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(PkiError::Cert)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    Ok(ca_params)
}

/// A new CA: (certificate PEM, key PEM).
fn generate_ca() -> Result<(String, String), PkiError> {
    let ca_key = KeyPair::generate().map_err(PkiError::Cert)?;
    let ca_cert = ca_params()?.self_signed(&ca_key).map_err(PkiError::Cert)?;
    Ok((ca_cert.pem(), ca_key.serialize_pem()))
}

/// The common name of the agent client CA.
const AGENT_CLIENT_CA_NAME: &str = "keelson-agent-client-ca";

/// A new agent client CA and the server's client certificate it signs: (CA PEM, certificate
/// PEM, key PEM). The CA's key is not kept: it never signs anything else. The certificate
/// names the server as kube-apiserver's kubelet client is named by kubeadm
/// (`kube-apiserver-kubelet-client`, group `system:masters`).
/// A leaf certificate's parameters: `sans`, subject `common_name` (and `organization`), for
/// `usage`, valid 2024–2125 (as the CA).
fn leaf_params(
    sans: Vec<String>,
    common_name: &str,
    organization: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(sans).map_err(PkiError::Cert)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    Ok(params)
}

fn generate_agent_client() -> Result<(String, String, String), PkiError> {
    let ca_key = KeyPair::generate().map_err(PkiError::Cert)?;
    let ca_params = ca_params_named(AGENT_CLIENT_CA_NAME)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(PkiError::Cert)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().map_err(PkiError::Cert)?;
    let params = leaf_params(
        Vec::new(),
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let cert = params.signed_by(&key, &issuer).map_err(PkiError::Cert)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// The names the serving certificate holds: kube-apiserver's (`kubernetes`,
/// `kubernetes.default`, `kubernetes.default.svc`, `kubernetes.default.svc.cluster.local`,
/// the `kubernetes` Service's ClusterIP), loopback, the listen address and `extra` (the
/// advertised address), without repeats, in a stable order.
pub fn serving_names(listen: SocketAddr, extra: &[IpAddr]) -> Vec<String> {
    let mut sans = vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ];
    for ip in std::iter::once(listen.ip()).chain(extra.iter().copied()) {
        let ip_s = ip.to_string();
        if !ip.is_unspecified() && !sans.contains(&ip_s) {
            sans.push(ip_s);
        }
    }
    sans
}

/// A serving certificate for `sans` signed by the CA of `ca_key_pem`: (certificate, key).
fn generate_serving(ca_key_pem: &str, sans: &[String]) -> Result<(String, String), PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(PkiError::Cert)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate().map_err(PkiError::Cert)?;
    let params = leaf_params(
        sans.to_vec(),
        "kube-apiserver",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let cert = params.signed_by(&key, &issuer).map_err(PkiError::Cert)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A client certificate for `user` in `group` (CN and O, as kube-apiserver's x509
/// authenticator reads them; rcgen writes one value per attribute type, so one group),
/// signed by the cluster CA kept in `data_dir`: (certificate PEM, key PEM). Valid for a year.
pub fn issue_client(
    data_dir: &Path,
    user: &str,
    group: Option<&str>,
) -> Result<(String, String), PkiError> {
    let ca_key_path = data_dir.join("ca.key");
    let ca_key_pem = read(&ca_key_path)?.ok_or_else(|| PkiError::Io {
        path: ca_key_path.clone(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(PkiError::Cert)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate().map_err(PkiError::Cert)?;
    let mut params = leaf_params(Vec::new(), user, group, ExtendedKeyUsagePurpose::ClientAuth)?;
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(300)).into();
    params.not_after = (now + std::time::Duration::from_secs(365 * 24 * 3600)).into();
    let cert = params.signed_by(&key, &issuer).map_err(PkiError::Cert)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Loads the credentials from `data_dir`, creating whatever is missing, and (re)writes
/// `admin.kubeconfig` for `listen`. The serving certificate is re-issued by the same CA when
/// the names it must hold ([`serving_names`]) changed since it was made; a data dir from
/// before the CA key was kept gets a new CA.
pub fn ensure(
    data_dir: &Path,
    listen: SocketAddr,
    extra_names: &[IpAddr],
) -> Result<Credentials, PkiError> {
    std::fs::create_dir_all(data_dir).map_err(|source| PkiError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = |name: &str| data_dir.join(name);
    let (ca_path, ca_key_path, cert_path, key_path, sans_path, token_path) = (
        path("ca.crt"),
        path("ca.key"),
        path("apiserver.crt"),
        path("apiserver.key"),
        path("apiserver.names"),
        path("admin.token"),
    );
    let sans = serving_names(listen, extra_names);
    let sans_text = sans.join("\n") + "\n";
    let (ca_pem, ca_key_pem) = match (read(&ca_path)?, read(&ca_key_path)?) {
        (Some(ca), Some(key)) => (ca, key),
        _ => {
            let (ca, key) = generate_ca()?;
            // The key first: a crash between the two writes leaves no CA without its key.
            write_private(&ca_key_path, &key)?;
            write_private(&ca_path, &ca)?;
            // Whatever the old CA signed is now worthless.
            let _ = std::fs::remove_file(&sans_path);
            (ca, key)
        }
    };
    let (cert_pem, key_pem) = match (
        read(&cert_path)?,
        read(&key_path)?,
        read(&sans_path)?.filter(|s| *s == sans_text),
    ) {
        (Some(cert), Some(key), Some(_)) => (cert, key),
        _ => {
            let (cert, key) = generate_serving(&ca_key_pem, &sans)?;
            write_private(&key_path, &key)?;
            write_private(&cert_path, &cert)?;
            write_private(&sans_path, &sans_text)?;
            (cert, key)
        }
    };
    let token = ensure_token(&token_path)?;
    let (client_ca_path, client_cert_path, client_key_path) = (
        path(AGENT_CLIENT_CA_FILE),
        path("apiserver-agent-client.crt"),
        path("apiserver-agent-client.key"),
    );
    let (agent_client_cert_pem, agent_client_key_pem) = match (
        read(&client_ca_path)?,
        read(&client_cert_path)?,
        read(&client_key_path)?,
    ) {
        (Some(_), Some(cert), Some(key)) => (cert, key),
        _ => {
            let (ca, cert, key) = generate_agent_client()?;
            write_private(&client_key_path, &key)?;
            write_private(&client_cert_path, &cert)?;
            // Last: the CA file present means the pair it signed is too.
            write_private(&client_ca_path, &ca)?;
            (cert, key)
        }
    };
    let sa_key_path = path("service-account.key");
    let service_account_key_pem = match read(&sa_key_path)? {
        Some(key) => key,
        None => {
            let key = KeyPair::generate().map_err(PkiError::Cert)?.serialize_pem();
            write_private(&sa_key_path, &key)?;
            key
        }
    };
    // The bearer token agents were given before the client certificate replaced it.
    let _ = std::fs::remove_file(path("agent-stream.token"));
    let kubeconfig_path = data_dir.join("admin.kubeconfig");
    write_private(&kubeconfig_path, &kubeconfig(&ca_pem, listen, &token))?;
    Ok(Credentials {
        ca_pem,
        cert_pem,
        key_pem,
        token,
        agent_client_cert_pem,
        agent_client_key_pem,
        service_account_key_pem,
        kubeconfig_path,
    })
}

/// The admin kubeconfig (JSON, which kubectl and kube-rs read as YAML).
pub fn kubeconfig(ca_pem: &str, listen: SocketAddr, token: &str) -> String {
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        listen.ip().to_string()
    };
    let server = match listen {
        SocketAddr::V6(_) if !listen.ip().is_unspecified() => {
            format!("https://[{host}]:{}", listen.port())
        }
        _ => format!("https://{host}:{}", listen.port()),
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "keelson", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "keelson-admin", "user": {"token": token}}],
        "contexts": [{"name": "keelson", "context": {"cluster": "keelson", "user": "keelson-admin"}}],
        "current-context": "keelson",
        "preferences": {},
    })
    .to_string()
}

/// A kubeconfig for `user` in `group` with a client certificate of the CA in `data_dir`, for
/// the server at `server` (a URL): what `kubeadm kubeconfig user` writes, and what each
/// node's agent gets (`system:node:<name>` in `system:nodes`).
pub fn client_kubeconfig(
    data_dir: &Path,
    user: &str,
    group: Option<&str>,
    server: &str,
) -> Result<String, PkiError> {
    let ca_path = data_dir.join("ca.crt");
    let ca_pem = read(&ca_path)?.ok_or_else(|| PkiError::Io {
        path: ca_path,
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let (cert, key) = issue_client(data_dir, user, group)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "keelson", "cluster": {"server": server, "certificate-authority-data": b64(&ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(&cert), "client-key-data": b64(&key)}}],
        "contexts": [{"name": "keelson", "context": {"cluster": "keelson", "user": user}}],
        "current-context": "keelson",
        "preferences": {},
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_pki_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen: SocketAddr = "127.0.0.1:6443".parse().expect("addr");
        let first = ensure(dir.path(), listen, &[]).expect("generates");
        let second = ensure(dir.path(), listen, &[]).expect("reuses");
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(first.cert_pem, second.cert_pem);
        // A new name to serve re-issues the serving certificate from the same CA.
        let extra: IpAddr = "10.96.0.1".parse().expect("ip");
        let third = ensure(dir.path(), listen, &[extra]).expect("re-issues");
        assert_eq!(first.ca_pem, third.ca_pem);
        assert_ne!(first.cert_pem, third.cert_pem);
        assert!(serving_names(listen, &[extra]).contains(&"10.96.0.1".to_string()));
        assert_eq!(first.token, second.token);
        assert_eq!(first.agent_client_cert_pem, third.agent_client_cert_pem);
        assert!(dir.path().join(AGENT_CLIENT_CA_FILE).exists());
        let kc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&first.kubeconfig_path).expect("kubeconfig"),
        )
        .expect("json");
        assert_eq!(
            kc["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(kc["users"][0]["user"]["token"], first.token.as_str());
    }
}
