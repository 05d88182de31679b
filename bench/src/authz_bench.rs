//! `cargo xtask bench authz`: what RBAC costs a write. One `keelson server` (release build,
//! TLS, a fresh data directory, a static token file) takes ConfigMap creates at 64 clients in
//! alternating rounds from two users: the admin, in `system:masters`, whom authorization lets
//! through without reading any policy (what RBAC off costs), and a user whose only right is a
//! RoleBinding to `edit` in its namespace, among as many other Roles and RoleBindings in other
//! namespaces (RBAC evaluated on every request, as for any workload's client). Rounds
//! alternate so drift of the machine hits both alike; the figure is the median round. Goal
//! (issue 12): RBAC on ≥ 0.9× RBAC off.

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use crate::{
    api_bench_load::{self as load, Outcome},
    api_bench_procs::{Scratch, Server},
    api_bench_report::ratio,
};

/// The goal: creates/s with RBAC evaluated over creates/s without.
pub const GOAL: f64 = 0.9;
const CLIENTS: usize = 64;
const TOKEN: &str = "bench-rbac-user-token-0123456789abcdef";
const USER: &str = "bench-user";
const NAMESPACE: &str = "authz-bench";

/// How big the run is.
#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: usize,
    pub creates: usize,
    /// Other namespaces, each with a Role and a RoleBinding for someone else.
    pub other_bindings: usize,
}

/// One round's two rates.
#[derive(Debug, Clone, Copy)]
struct Round {
    admin: f64,
    user: f64,
}

/// A kubeconfig beside the admin's that authenticates with `token` instead.
fn token_kubeconfig(admin: &Path, token: &str) -> Result<std::path::PathBuf> {
    let mut kc: Value = serde_json::from_str(&std::fs::read_to_string(admin)?)?;
    kc["users"][0]["user"] = json!({"token": token});
    let path = admin.with_file_name("bench-user.kubeconfig");
    std::fs::write(&path, kc.to_string())?;
    Ok(path)
}

async fn clients_of(kubeconfig: &Path, n: usize) -> Result<Vec<kube::Client>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(
            keelson_localcluster::client(kubeconfig)
                .await
                .context("API client")?,
        );
    }
    Ok(v)
}

/// The policy: `edit` for the user in its namespace, and `others` unrelated Role and
/// RoleBinding pairs.
async fn policy(admin: &kube::Client, others: usize) -> Result<()> {
    load::namespace(admin, NAMESPACE).await?;
    let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "bench-edit", "namespace": NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]});
    load::create(
        admin,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings"),
        rb.to_string().into_bytes(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    for i in 0..others {
        let ns = format!("team-{i}");
        load::namespace(admin, &ns).await?;
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "app", "namespace": ns},
            "rules": [{"apiGroups": ["", "apps"], "resources": ["configmaps", "deployments"],
                "verbs": ["get", "list", "watch", "create", "update"]}]});
        let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "app", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "app"},
            "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns},
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": format!("team-{i}")}]});
        for (plural, body) in [("roles", role), ("rolebindings", rb)] {
            load::create(
                admin,
                &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}"),
                body.to_string().into_bytes(),
            )
            .await
            .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}

fn checked(what: &str, o: &Outcome) -> Result<f64> {
    ensure!(
        o.batch.errors == 0,
        "{what}: {} of {} creates failed (first: {})",
        o.batch.errors,
        o.batch.attempted,
        o.batch.first_error.as_deref().unwrap_or("?")
    );
    Ok(o.batch.rate())
}

/// The median of `v` (sorted copy; NaN when empty).
fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the bench and prints the table and the `BENCH_JSON` line.
pub fn run(bin: &Path, opts: &Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let scratch = Scratch::new()?;
    let tokens = scratch.path().join("tokens.csv");
    std::fs::write(&tokens, format!("{TOKEN},{USER},bench-uid-1\n"))?;
    let rounds = rt.block_on(async {
        let extra = ["--token-auth-file".to_owned(), tokens.display().to_string()];
        let (server, admin) = Server::start_with(bin, scratch.path(), &extra).await?;
        policy(&admin, opts.other_bindings).await?;
        let user_kc = token_kubeconfig(&server.kubeconfig(), TOKEN)?;
        // Warm both paths (connections, the policy cache) outside the timed rounds.
        let warm = load::create_configmaps(
            clients_of(&user_kc, CLIENTS).await?,
            NAMESPACE,
            "warm-u",
            256,
            false,
        )
        .await;
        checked("warm-up as the RBAC user", &warm)?;
        let warm = load::create_configmaps(
            load::clients(&server, CLIENTS).await?,
            NAMESPACE,
            "warm-a",
            256,
            false,
        )
        .await;
        checked("warm-up as the admin", &warm)?;
        let mut rounds = Vec::new();
        for r in 0..opts.rounds {
            let admin_conns = load::clients(&server, CLIENTS).await?;
            let o = load::create_configmaps(
                admin_conns,
                NAMESPACE,
                &format!("a{r}"),
                opts.creates,
                false,
            )
            .await;
            let a = checked("admin creates", &o)?;
            let user_conns = clients_of(&user_kc, CLIENTS).await?;
            let o = load::create_configmaps(
                user_conns,
                NAMESPACE,
                &format!("u{r}"),
                opts.creates,
                false,
            )
            .await;
            let u = checked("RBAC user creates", &o)?;
            println!("round {r}: admin {a:.0}/s, RBAC user {u:.0}/s");
            rounds.push(Round { admin: a, user: u });
        }
        // The user may write in its namespace only.
        let denied =
            load::create_configmaps(clients_of(&user_kc, 1).await?, "team-0", "x", 1, false).await;
        ensure!(
            denied.batch.errors == 1
                && denied
                    .batch
                    .first_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("403")),
            "the RBAC user could write outside its namespace: {:?}",
            denied.batch.first_error
        );
        drop(server);
        anyhow::Ok(rounds)
    })?;
    drop(rt);
    drop(scratch);
    let admin = median(&rounds.iter().map(|r| r.admin).collect::<Vec<_>>());
    let user = median(&rounds.iter().map(|r| r.user).collect::<Vec<_>>());
    let r = ratio(user, admin);
    let met = if r >= GOAL { "yes" } else { "no" };
    println!(
        "\n| figure ({} rounds of {} creates at {CLIENTS} clients, {} other RoleBindings) | RBAC evaluated | authorization skipped (system:masters) | ratio | goal | met |",
        rounds.len(),
        opts.creates,
        opts.other_bindings
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| ConfigMap creates/s, median round | {user:.0} | {admin:.0} | {r:.2} | >= {GOAL}x | {met} |"
    );
    let json = json!({
        "bench": "authz",
        "clients": CLIENTS,
        "creates": opts.creates,
        "other_bindings": opts.other_bindings,
        "rounds": rounds.iter().map(|r| json!({"admin": r.admin, "user": r.user})).collect::<Vec<_>>(),
        "admin_median": admin,
        "user_median": user,
        "ratio": r,
        "goal": GOAL,
        "met": r >= GOAL,
    });
    println!("\nBENCH_JSON {json}");
    Ok(())
}
