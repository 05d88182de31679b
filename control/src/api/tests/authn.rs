//! Who the server says a client is, through the real kubectl: `kubectl auth whoami` with the
//! admin token and with a client certificate of the cluster CA (CN user, O groups), a
//! certificate of another CA refused, and every new Namespace's `default` ServiceAccount.

use std::time::Duration;

use base64::Engine as _;

use super::{KUBECTL, kubectl, start_server};
use crate::api::pki;

/// A kubeconfig next to `admin` for the client certificate `cert`/`key` (PEM).
fn cert_kubeconfig(
    admin: &std::path::Path,
    name: &str,
    cert: &str,
    key: &str,
) -> std::path::PathBuf {
    let mut kc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(admin).expect("admin kubeconfig"))
            .expect("json");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    kc["users"][0]["user"] = serde_json::json!({
        "client-certificate-data": b64(cert),
        "client-key-data": b64(key),
    });
    let path = admin.with_file_name(format!("{name}.kubeconfig"));
    std::fs::write(&path, kc.to_string()).expect("write kubeconfig");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_token_and_certificate_users() {
    if !std::path::Path::new(KUBECTL).exists() {
        println!("skipping: kubectl not found at {KUBECTL}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start_server(dir.path()).await;
    let whoami = |kc: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || kubectl(&kc, &["auth", "whoami", "-o", "json"], None))
    };

    let (ok, out, err) = whoami(admin.clone()).await.expect("join");
    assert!(ok, "{err}");
    let review: serde_json::Value = serde_json::from_str(&out).expect("review json");
    assert_eq!(review["kind"], "SelfSubjectReview");
    assert_eq!(review["status"]["userInfo"]["username"], "keelson-admin");

    let (cert, key) = pki::issue_client(dir.path(), "jane", Some("dev")).expect("issue");
    let jane = cert_kubeconfig(&admin, "jane", &cert, &key);
    let (ok, out, err) = whoami(jane.clone()).await.expect("join");
    let jane_kc = jane.clone();
    assert!(ok, "{err}");
    let review: serde_json::Value = serde_json::from_str(&out).expect("review json");
    assert_eq!(review["status"]["userInfo"]["username"], "jane");
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        serde_json::json!(["dev", "system:authenticated"])
    );
    // The table kubectl prints by default.
    let (ok, out, _) =
        tokio::task::spawn_blocking(move || kubectl(&jane, &["auth", "whoami"], None))
            .await
            .expect("join");
    assert!(
        ok && out.contains("Username") && out.contains("jane"),
        "{out}"
    );

    // A certificate of another CA is no one.
    let other = tempfile::tempdir().expect("tempdir");
    pki::ensure(other.path(), "127.0.0.1:1".parse().expect("addr"), &[]).expect("other CA");
    let (cert, key) =
        pki::issue_client(other.path(), "mallory", Some("system:masters")).expect("issue");
    let mallory = cert_kubeconfig(&admin, "mallory", &cert, &key);
    let (ok, out, err) = whoami(mallory).await.expect("join");
    assert!(!ok && !out.contains("mallory"), "{out}{err}");

    // Every Namespace gets its `default` ServiceAccount, made again when deleted.
    let run = |args: Vec<&'static str>| {
        let kc = admin.clone();
        tokio::task::spawn_blocking(move || kubectl(&kc, &args, None))
    };
    let (ok, _, err) = run(vec!["create", "namespace", "sa-team"])
        .await
        .expect("join");
    assert!(ok, "{err}");
    let has_default = |ns: &'static str| {
        let kc = admin.clone();
        async move {
            for _ in 0..100 {
                let (ok, out, _) = tokio::task::spawn_blocking({
                    let kc = kc.clone();
                    move || kubectl(&kc, &["get", "sa", "default", "-n", ns, "-o", "name"], None)
                })
                .await
                .expect("join");
                if ok && out.trim() == "serviceaccount/default" {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(
        has_default("sa-team").await,
        "no default ServiceAccount in sa-team"
    );
    assert!(has_default("kube-system").await, "none in kube-system");
    let (ok, _, err) = run(vec!["delete", "sa", "default", "-n", "sa-team"])
        .await
        .expect("join");
    assert!(ok, "{err}");
    assert!(has_default("sa-team").await, "not made again");

    // RBAC objects through kubectl's typed (protobuf) requests and its tables.
    for args in [
        vec![
            "create",
            "role",
            "cm-reader",
            "--verb=get,list",
            "--resource=configmaps",
            "-n",
            "sa-team",
        ],
        vec![
            "create",
            "rolebinding",
            "jane-cm",
            "--role=cm-reader",
            "--user=jane",
            "-n",
            "sa-team",
        ],
        vec![
            "create",
            "clusterrole",
            "node-reader",
            "--verb=get",
            "--resource=nodes",
        ],
        vec![
            "create",
            "clusterrolebinding",
            "jane-nodes",
            "--clusterrole=node-reader",
            "--user=jane",
        ],
    ] {
        let (ok, _, err) = run(args).await.expect("join");
        assert!(ok, "{err}");
    }
    let (ok, out, err) = run(vec!["get", "rolebinding", "-n", "sa-team", "-o", "wide"])
        .await
        .expect("join");
    assert!(
        ok && out.contains("Role/cm-reader") && out.contains("jane"),
        "{out}{err}"
    );
    let (ok, out, _) = run(vec![
        "get",
        "role",
        "cm-reader",
        "-n",
        "sa-team",
        "-o",
        "jsonpath={.rules[0].verbs}",
    ])
    .await
    .expect("join");
    assert!(ok && out.contains("get") && out.contains("list"), "{out}");
    // roleRef never changes.
    let (ok, _, err) = run(vec![
        "patch",
        "rolebinding",
        "jane-cm",
        "-n",
        "sa-team",
        "--type=merge",
        "-p",
        r#"{"roleRef":{"name":"other"}}"#,
    ])
    .await
    .expect("join");
    assert!(!ok && err.contains("cannot change roleRef"), "{err}");

    // RBAC decides for everyone outside system:masters.
    let as_jane = |args: Vec<&'static str>| {
        let kc = jane_kc.clone();
        tokio::task::spawn_blocking(move || kubectl(&kc, &args, None))
    };
    let (ok, out, _) = as_jane(vec!["get", "configmaps", "-n", "sa-team", "-o", "name"])
        .await
        .expect("join");
    assert!(ok, "allowed by RoleBinding jane-cm: {out}");
    let (ok, _, err) = as_jane(vec!["get", "secrets", "-n", "sa-team"])
        .await
        .expect("join");
    assert!(!ok, "secrets are not bound");
    assert!(
        err.contains(r#"secrets is forbidden: User "jane" cannot list resource "secrets" in API group "" in the namespace "sa-team""#),
        "{err}"
    );
    let (ok, _, err) = as_jane(vec!["delete", "configmap", "x", "-n", "sa-team"])
        .await
        .expect("join");
    assert!(!ok && err.contains("forbidden"), "{err}");
    let (ok, out, _) = as_jane(vec!["auth", "can-i", "list", "configmaps", "-n", "sa-team"])
        .await
        .expect("join");
    assert!(ok && out.trim() == "yes", "{out}");
    let (ok, out, _) = as_jane(vec![
        "auth",
        "can-i",
        "delete",
        "configmaps",
        "-n",
        "sa-team",
    ])
    .await
    .expect("join");
    assert!(!ok && out.trim() == "no", "{out}");
    let (ok, out, _) = as_jane(vec!["auth", "can-i", "get", "nodes"])
        .await
        .expect("join");
    assert!(
        ok && out.trim() == "yes",
        "ClusterRoleBinding jane-nodes: {out}"
    );
    let (ok, out, err) = as_jane(vec!["auth", "can-i", "--list", "-n", "sa-team"])
        .await
        .expect("join");
    assert!(
        ok && out.contains("configmaps") && out.contains("selfsubjectreviews"),
        "{out}{err}"
    );
    let (ok, out, _) = run(vec!["auth", "can-i", "delete", "nodes"])
        .await
        .expect("join");
    assert!(
        ok && out.trim() == "yes",
        "the admin may do anything: {out}"
    );
    let (ok, out, _) = run(vec![
        "get",
        "clusterrolebinding",
        "cluster-admin",
        "-o",
        "wide",
    ])
    .await
    .expect("join");
    assert!(ok && out.contains("system:masters"), "{out}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_writes_cannot_grant_more_than_the_writer_holds() {
    if !std::path::Path::new(KUBECTL).exists() {
        println!("skipping: kubectl not found at {KUBECTL}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start_server(dir.path()).await;
    let kc = |kc: &std::path::Path, args: &[&str]| {
        let (kc, args) = (
            kc.to_path_buf(),
            args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        );
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl(&kc, &args, None)
        })
    };
    for args in [
        vec!["create", "namespace", "team"],
        vec![
            "create",
            "rolebinding",
            "jane-admin",
            "-n",
            "team",
            "--clusterrole=admin",
            "--user=jane",
        ],
    ] {
        let (ok, _, err) = kc(&admin, &args).await.expect("join");
        assert!(ok, "{args:?}: {err}");
    }
    let (cert, key) = pki::issue_client(dir.path(), "jane", Some("dev")).expect("issue");
    let jane = cert_kubeconfig(&admin, "jane", &cert, &key);
    // What jane holds in her namespace she may hand on, as a binding or as a Role.
    for args in [
        vec![
            "create",
            "rolebinding",
            "bob-admin",
            "-n",
            "team",
            "--clusterrole=admin",
            "--user=bob",
        ],
        vec![
            "create",
            "role",
            "secret-reader",
            "-n",
            "team",
            "--verb=get",
            "--resource=secrets",
        ],
    ] {
        let (ok, _, err) = kc(&jane, &args).await.expect("join");
        assert!(ok, "{args:?}: {err}");
    }
    // More than she holds: refused, with what she lacks, and nothing stored.
    let (ok, _, err) = kc(
        &jane,
        &[
            "create",
            "rolebinding",
            "bob-root",
            "-n",
            "team",
            "--clusterrole=cluster-admin",
            "--user=bob",
        ],
    )
    .await
    .expect("join");
    assert!(!ok, "bound cluster-admin");
    assert!(
        err.contains("rolebindings.rbac.authorization.k8s.io \"bob-root\" is forbidden: user \"jane\" (groups=[\"dev\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:"),
        "{err}"
    );
    let (ok, _, err) = kc(
        &jane,
        &[
            "create",
            "role",
            "node-reader",
            "-n",
            "team",
            "--verb=get",
            "--resource=nodes",
        ],
    )
    .await
    .expect("join");
    assert!(
        !ok && err.contains("{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}"),
        "{err}"
    );
    for (kind, name) in [("rolebinding", "bob-root"), ("role", "node-reader")] {
        let (ok, _, err) = kc(&admin, &["get", kind, name, "-n", "team"])
            .await
            .expect("join");
        assert!(
            !ok && err.contains("NotFound"),
            "{kind} {name} was stored: {err}"
        );
    }
    // The `bind` verb on a role lets her bind it without holding it.
    for args in [
        vec![
            "create",
            "clusterrole",
            "binder",
            "--verb=bind",
            "--resource=clusterroles",
            "--resource-name=cluster-admin",
        ],
        vec![
            "create",
            "rolebinding",
            "jane-binder",
            "-n",
            "team",
            "--clusterrole=binder",
            "--user=jane",
        ],
    ] {
        let (ok, _, err) = kc(&admin, &args).await.expect("join");
        assert!(ok, "{args:?}: {err}");
    }
    let mut bound = false;
    for _ in 0..50 {
        let (ok, _, _) = kc(
            &jane,
            &[
                "create",
                "rolebinding",
                "bob-root",
                "-n",
                "team",
                "--clusterrole=cluster-admin",
                "--user=bob",
            ],
        )
        .await
        .expect("join");
        if ok {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bound, "the bind verb did not let jane bind cluster-admin");
    server.abort();
}
