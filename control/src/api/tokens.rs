//! ServiceAccount tokens as kube-apiserver issues and checks them (pkg/serviceaccount/jwt.go
//! and claims.go; bound tokens of KEP-1205): the issuer's ES256 signing key, the claims of a
//! token bound to its ServiceAccount (and a Pod, Secret or Node), their signing and
//! verification, and the issuer's OIDC discovery document and JWKS (KEP-1393), with which
//! others can check a token without asking the API server.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::PublicKeyData as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The issuer kube-apiserver is configured with by kubeadm and k3s
/// (`--service-account-issuer`); also the default audience (`--api-audiences`).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The shortest lifetime a TokenRequest may ask for (`validation.ValidateTokenRequest`).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// What a TokenRequest without `expirationSeconds` gets (an hour, as kube-apiserver's
/// `TokenRequestSpec` default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The longest lifetime a TokenRequest may ask for (`1 << 32` seconds, as kube-apiserver).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Errors of issuing and checking tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the ServiceAccount signing key")]
    Key(#[source] rcgen::Error),
    #[error("the ServiceAccount signing key is not an ECDSA P-256 key")]
    NotP256,
    #[error("signing the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("the token is invalid")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

/// A name and UID, as the `kubernetes.io` claim holds the objects a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The private `kubernetes.io` claim (pkg/serviceaccount/claims.go `kubernetes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

/// A token's claims: the registered ones of RFC 7519 §4.1 and `kubernetes.io`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

/// `system:serviceaccount:<namespace>:<name>`, the user a ServiceAccount's token names.
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The groups of a ServiceAccount's user: every ServiceAccount's and its namespace's.
pub fn groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{namespace}"),
    ]
}

/// What a token is issued for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub namespace: String,
    pub serviceaccount: Ref,
    /// Empty: the issuer's own audiences.
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub pod: Option<Ref>,
    pub secret: Option<Ref>,
    pub node: Option<Ref>,
}

/// The issuer: its name, audiences and ES256 key pair.
pub struct Issuer {
    issuer: String,
    audiences: Vec<String>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The key's ID: base64url of the SHA-256 of its SubjectPublicKeyInfo, as kube-apiserver's
    /// `keyIDFromPublicKey`.
    kid: String,
    /// The public key's affine coordinates, base64url (RFC 7518 §6.2.1).
    x: String,
    y: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// An issuer with a new key (tests, and servers without a data dir).
    pub fn generate(issuer: &str) -> Result<Self, TokenError> {
        let key = rcgen::KeyPair::generate().map_err(TokenError::Key)?;
        Self::from_key(issuer, &key)
    }

    /// An issuer signing with the PKCS#8 PEM key `pem`.
    pub fn from_pem(issuer: &str, pem: &str) -> Result<Self, TokenError> {
        let key = rcgen::KeyPair::from_pem(pem).map_err(TokenError::Key)?;
        Self::from_key(issuer, &key)
    }

    fn from_key(issuer: &str, key: &rcgen::KeyPair) -> Result<Self, TokenError> {
        if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(TokenError::NotP256);
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        // Uncompressed point: 0x04 || X || Y (SEC 1 §2.3.3).
        let raw = key.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err(TokenError::NotP256);
        }
        let (x, y) = (b64.encode(&raw[1..33]), b64.encode(&raw[33..]));
        let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
        let encoding = EncodingKey::from_ec_der(&key.serialize_der());
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(TokenError::Invalid)?;
        Ok(Self {
            issuer: issuer.to_owned(),
            audiences: vec![issuer.to_owned()],
            encoding,
            decoding,
            kid: b64.encode(digest.as_ref()),
            x,
            y,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences the API server accepts, and a token without requested ones gets.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The claims of a token for `grant` issued at `now` (seconds since the epoch).
    pub fn claims(&self, grant: &Grant, now: i64) -> Claims {
        let aud = if grant.audiences.is_empty() {
            self.audiences.clone()
        } else {
            grant.audiences.clone()
        };
        Claims {
            iss: self.issuer.clone(),
            sub: username(&grant.namespace, &grant.serviceaccount.name),
            aud,
            exp: now + grant.expiration_seconds,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaim {
                namespace: grant.namespace.clone(),
                serviceaccount: grant.serviceaccount.clone(),
                pod: grant.pod.clone(),
                secret: grant.secret.clone(),
                node: grant.node.clone(),
            },
        }
    }

    /// A signed token (compact JWS) of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(TokenError::Sign)
    }

    /// The claims of `token` if this issuer signed it, for one of its audiences, and it is
    /// within its lifetime (a minute of leeway either side, as kube-apiserver's validator).
    /// Whether the objects it names still exist is the caller's to check.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = 60;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(TokenError::Invalid)
    }

    /// The OIDC discovery document (`/.well-known/openid-configuration`), whose JWKS is at
    /// `<issuer>/openid/v1/jwks` as kube-apiserver publishes it.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// The public keys that verify this issuer's tokens (RFC 7517 JWK Set).
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": "ES256",
            "x": self.x,
            "y": self.y,
        }]})
    }
}

/// Whether `token` has a JWT's shape (three base64url parts), so that it is worth checking as
/// one before it is refused.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            namespace: "ns".into(),
            serviceaccount: Ref {
                name: "sa".into(),
                uid: "u-sa".into(),
            },
            audiences: Vec::new(),
            expiration_seconds: 3600,
            pod: Some(Ref {
                name: "p".into(),
                uid: "u-p".into(),
            }),
            secret: None,
            node: None,
        }
    }

    fn now() -> i64 {
        jiff::Timestamp::now().as_second()
    }

    #[test]
    fn a_token_verifies_with_its_claims() {
        let issuer = Issuer::generate(DEFAULT_ISSUER).expect("test value");
        let claims = issuer.claims(&grant(), now());
        let token = issuer.sign(&claims).expect("test value");
        assert!(looks_like_jwt(&token));
        let back = issuer.verify(&token).expect("test value");
        assert_eq!(back, claims);
        assert_eq!(back.sub, "system:serviceaccount:ns:sa");
        assert_eq!(back.aud, vec![DEFAULT_ISSUER.to_owned()]);
        // The claim names are kube-apiserver's.
        let payload = token.split('.').nth(1).expect("test value");
        let payload: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("test value"),
        )
        .expect("test value");
        assert_eq!(payload["kubernetes.io"]["pod"]["name"], "p");
        assert_eq!(payload["kubernetes.io"]["serviceaccount"]["uid"], "u-sa");
        assert!(payload["kubernetes.io"].get("node").is_none());
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_refused() {
        let issuer = Issuer::generate(DEFAULT_ISSUER).expect("test value");
        // Expired beyond the leeway.
        let old = issuer.claims(&grant(), now() - 7200);
        assert!(
            issuer
                .verify(&issuer.sign(&old).expect("test value"))
                .is_err()
        );
        // Another key.
        let other = Issuer::generate(DEFAULT_ISSUER).expect("test value");
        let token = other
            .sign(&other.claims(&grant(), now()))
            .expect("test value");
        assert!(issuer.verify(&token).is_err());
        // A payload changed after signing.
        let token = issuer
            .sign(&issuer.claims(&grant(), now()))
            .expect("test value");
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = issuer.claims(&grant(), now());
        claims.sub = "system:serviceaccount:kube-system:admin".into();
        let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).expect("test value"));
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert!(issuer.verify(&forged).is_err());
        // Another audience.
        let mut g = grant();
        g.audiences = vec!["vault".into()];
        let token = issuer.sign(&issuer.claims(&g, now())).expect("test value");
        assert!(issuer.verify(&token).is_err());
        // Not a JWT at all.
        assert!(issuer.verify("abc").is_err());
        assert!(!looks_like_jwt("0123abcd"));
    }

    #[test]
    fn a_reloaded_key_verifies_what_it_signed_and_publishes_one_jwk() {
        let key = rcgen::KeyPair::generate().expect("test value");
        let a = Issuer::from_pem(DEFAULT_ISSUER, &key.serialize_pem()).expect("test value");
        let b = Issuer::from_pem(DEFAULT_ISSUER, &key.serialize_pem()).expect("test value");
        let token = a.sign(&a.claims(&grant(), now())).expect("test value");
        assert!(b.verify(&token).is_ok());
        let jwks = b.jwks();
        assert_eq!(jwks["keys"][0]["kid"], json!(a.kid));
        assert_eq!(jwks["keys"][0]["crv"], "P-256");
        assert_eq!(
            b.discovery()["jwks_uri"],
            format!("{DEFAULT_ISSUER}/openid/v1/jwks")
        );
        let header = jsonwebtoken::decode_header(&token).expect("test value");
        assert_eq!(header.kid.as_deref(), Some(a.kid.as_str()));
    }
}
