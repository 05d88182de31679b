//! ServiceAccount tokens through the real kubectl: `kubectl create token` (for its own
//! lifetime, bound to a Pod, too short refused), the token as a bearer credential (whoami, RBAC
//! on its user, refused once its Pod is gone, a forged one refused), the issuer's discovery
//! document and JWKS, `kube-root-ca.crt` in every Namespace, and ServiceAccount admission
//! (the projected token volume in every container, a missing ServiceAccount refused, the
//! opt-out honoured).

use std::{path::Path, time::Duration};

use serde_json::Value;

use super::{KUBECTL, kubectl, start_server};

/// `kubectl <args>` with `kubeconfig` off the async runtime: (success, stdout, stderr).
async fn run(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let (kc, args, stdin) = (
        kubeconfig.to_path_buf(),
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        stdin.map(str::to_owned),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl(&kc, &args, stdin.as_deref())
    })
    .await
    .expect("join")
}

/// The whoami of `token`: its username, or the error kubectl printed.
async fn whoami(kc: &Path, token: &str) -> Result<Value, String> {
    let (ok, out, err) = run(
        kc,
        &["--token", token, "auth", "whoami", "-o", "json"],
        None,
    )
    .await;
    if ok {
        Ok(serde_json::from_str::<Value>(&out).expect("review json")["status"]["userInfo"].clone())
    } else {
        Err(err)
    }
}

const HOLDER: &str = r#"{"apiVersion": "v1", "kind": "Pod",
  "metadata": {"name": "holder", "namespace": "default"},
  "spec": {"serviceAccountName": "reader",
    "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x",
      "volumeMounts": [{"name": "own", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
    "volumes": [{"name": "own", "emptyDir": {}}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_through_kubectl() {
    if !std::path::Path::new(KUBECTL).exists() {
        println!("skipping: kubectl not found at {KUBECTL}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start_server(dir.path()).await;

    let (ok, _, err) = run(&admin, &["create", "serviceaccount", "reader"], None).await;
    assert!(ok, "{err}");
    let (ok, token, err) = run(&admin, &["create", "token", "reader"], None).await;
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let user = whoami(&admin, &token).await.expect("whoami with the token");
    assert_eq!(user["username"], "system:serviceaccount:default:reader");
    assert_eq!(
        user["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );

    // The token's user gets what RBAC gives it, nothing more.
    let (ok, _, err) = run(&admin, &["--token", &token, "get", "configmaps"], None).await;
    assert!(!ok, "listed ConfigMaps without a Role");
    assert!(
        err.contains(
            "User \"system:serviceaccount:default:reader\" cannot list resource \"configmaps\""
        ),
        "{err}"
    );
    for args in [
        vec![
            "create",
            "role",
            "cm-reader",
            "--verb=get,list",
            "--resource=configmaps",
        ],
        vec![
            "create",
            "rolebinding",
            "cm-reader",
            "--role=cm-reader",
            "--serviceaccount=default:reader",
        ],
    ] {
        let (ok, _, err) = run(&admin, &args, None).await;
        assert!(ok, "{args:?}: {err}");
    }
    // The root CA the publisher puts in every Namespace, readable now.
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).expect("ca.crt");
    let mut published = String::new();
    for _ in 0..100 {
        let (ok, out, _) = run(
            &admin,
            &[
                "--token",
                &token,
                "get",
                "configmap",
                "kube-root-ca.crt",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ],
            None,
        )
        .await;
        if ok && !out.is_empty() {
            published = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published.trim(), ca.trim());
    let (ok, _, err) = run(&admin, &["--token", &token, "get", "secrets"], None).await;
    assert!(
        !ok && err.contains("cannot list resource \"secrets\""),
        "{err}"
    );

    // A forged token (its signature's last characters changed) is no one.
    let mut forged = token.clone();
    let last = forged.pop().expect("char");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let err = whoami(&admin, &forged).await.expect_err("forged token");
    assert!(err.contains("Unauthorized"), "{err}");
    // Too short a lifetime.
    let (ok, _, err) = run(
        &admin,
        &["create", "token", "reader", "--duration=5m"],
        None,
    )
    .await;
    assert!(
        !ok && err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );

    // Admission: the Pod runs as its ServiceAccount with the token volume in every container
    // that does not mount its own.
    let (ok, _, err) = run(&admin, &["apply", "-f", "-"], Some(HOLDER)).await;
    assert!(ok, "{err}");
    let (ok, out, err) = run(&admin, &["get", "pod", "holder", "-o", "json"], None).await;
    assert!(ok, "{err}");
    let pod: Value = serde_json::from_str(&out).expect("pod json");
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
    let api_access = volumes
        .iter()
        .find(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kube-api-access-"))
        })
        .expect("a kube-api-access volume");
    let sources = &api_access["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let containers = &pod["spec"]["containers"];
    assert_eq!(containers[0]["volumeMounts"][0]["name"], api_access["name"]);
    assert_eq!(
        containers[1]["volumeMounts"].as_array().map(Vec::len),
        Some(1)
    );

    // A token bound to the Pod works while the Pod exists.
    let (ok, bound, err) = run(
        &admin,
        &[
            "create",
            "token",
            "reader",
            "--bound-object-kind=Pod",
            "--bound-object-name=holder",
        ],
        None,
    )
    .await;
    assert!(ok, "{err}");
    let bound = bound.trim().to_owned();
    assert!(whoami(&admin, &bound).await.is_ok());
    let (ok, _, err) = run(
        &admin,
        &["delete", "pod", "holder", "--grace-period=0", "--force"],
        None,
    )
    .await;
    assert!(ok, "{err}");
    let err = whoami(&admin, &bound).await.expect_err("the Pod is gone");
    assert!(err.contains("Unauthorized"), "{err}");
    // The unbound token lives on.
    assert!(whoami(&admin, &token).await.is_ok());
    // Bound to a Pod that does not exist.
    let (ok, _, err) = run(
        &admin,
        &[
            "create",
            "token",
            "reader",
            "--bound-object-kind=Pod",
            "--bound-object-name=nowhere",
        ],
        None,
    )
    .await;
    assert!(!ok && err.contains("pods \"nowhere\" not found"), "{err}");

    // A ServiceAccount that does not exist refuses the Pod; the opt-out mounts nothing.
    let missing = HOLDER
        .replace("\"holder\"", "\"stray\"")
        .replace("\"reader\"", "\"missing\"");
    let (ok, _, err) = run(&admin, &["apply", "-f", "-"], Some(&missing)).await;
    assert!(
        !ok && err.contains("error looking up service account default/missing"),
        "{err}"
    );
    let opted_out = HOLDER.replace("\"holder\"", "\"plain\"").replace(
        "\"serviceAccountName\": \"reader\",",
        "\"serviceAccountName\": \"reader\", \"automountServiceAccountToken\": false,",
    );
    let (ok, _, err) = run(&admin, &["apply", "-f", "-"], Some(&opted_out)).await;
    assert!(ok, "{err}");
    let (ok, out, _) = run(
        &admin,
        &[
            "get",
            "pod",
            "plain",
            "-o",
            "jsonpath={.spec.volumes[*].name}",
        ],
        None,
    )
    .await;
    assert!(ok && out.trim() == "own", "{out}");

    // The issuer's discovery, for the token's user too.
    let (ok, out, err) = run(
        &admin,
        &[
            "--token",
            &token,
            "get",
            "--raw",
            "/.well-known/openid-configuration",
        ],
        None,
    )
    .await;
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("discovery json");
    assert_eq!(doc["issuer"], crate::api::tokens::DEFAULT_ISSUER);
    let (ok, out, err) = run(&admin, &["get", "--raw", "/openid/v1/jwks"], None).await;
    assert!(ok, "{err}");
    let jwks: Value = serde_json::from_str(&out).expect("jwks json");
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(jwks["keys"][0]["kid"], header.kid.expect("kid").as_str());

    server.abort();
}
