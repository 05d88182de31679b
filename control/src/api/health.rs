//! `/healthz`, `/livez` and `/readyz` with their individual checks, answered as kube-apiserver's
//! `staging/src/k8s.io/apiserver/pkg/server/healthz/healthz.go` answers them: `ok` when every
//! check passes, `?verbose` lists `[+]name ok` lines and ends `<endpoint> check passed`,
//! `?exclude=name` leaves a check out, `/<endpoint>/<name>` runs one check, and a failure is a
//! 500 listing `[-]name failed: reason withheld`.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::future::BoxFuture;

/// How long the store may take to answer the storage check (kube-apiserver's etcd check uses
/// the request timeout; a store that does not answer within seconds is not healthy).
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// One named check; `Err` carries the reason (logged, never shown: kube-apiserver withholds
/// reasons from the list since they may leak internals).
pub type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A named check.
#[derive(Clone)]
pub struct Check {
    pub name: String,
    pub run: CheckFn,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check").field("name", &self.name).finish()
    }
}

impl Check {
    pub fn new(
        name: impl Into<String>,
        run: impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            run: Arc::new(run),
        }
    }

    /// `ping`: the server answers at all.
    pub fn ping() -> Self {
        Self::new("ping", || Box::pin(async { Ok(()) }))
    }

    /// A check that passes once `flag` is set (a post-start hook that has finished, or an
    /// informer that has synced).
    pub fn flag(name: impl Into<String>, flag: Arc<AtomicBool>, reason: &'static str) -> Self {
        Self::new(name, move || {
            let done = flag.load(Ordering::Acquire);
            Box::pin(async move { if done { Ok(()) } else { Err(reason.into()) } })
        })
    }

    /// A check that passes while `flag` is not set (readyz's `shutdown`).
    pub fn unless(name: impl Into<String>, flag: Arc<AtomicBool>, reason: &'static str) -> Self {
        Self::new(name, move || {
            let set = flag.load(Ordering::Acquire);
            Box::pin(async move { if set { Err(reason.into()) } else { Ok(()) } })
        })
    }

    /// `etcd`: the store answers a read within [`STORE_TIMEOUT`]. The name is kube-apiserver's
    /// (tools and dashboards ask for `/readyz/etcd`); the check reads whichever store the
    /// server runs on, SQLite or etcd.
    pub fn store<S: crate::store::Store>(store: Arc<S>) -> Self {
        Self::new("etcd", move || {
            let store = Arc::clone(&store);
            Box::pin(async move {
                match tokio::time::timeout(STORE_TIMEOUT, store.current_revision()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {}s", STORE_TIMEOUT.as_secs())),
                }
            })
        })
    }
}

/// The state the checks read, set by the server as it starts and stops.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Set once the system namespaces exist (`poststarthook/start-system-namespaces-controller`).
    pub system_namespaces: Arc<AtomicBool>,
    /// Set once the `kubernetes` Service and EndpointSlice exist
    /// (`poststarthook/bootstrap-controller`).
    pub bootstrap_controller: Arc<AtomicBool>,
    /// The revision the storage object counter listed at, once it has (`informer-sync`).
    pub informers_synced: Arc<AtomicU64>,
    /// Set when the server starts shutting down (readyz's `shutdown`).
    pub shutting_down: Arc<AtomicBool>,
}

/// The checks of the three endpoints.
#[derive(Debug, Clone, Default)]
pub struct HealthChecks {
    pub healthz: Vec<Check>,
    pub livez: Vec<Check>,
    pub readyz: Vec<Check>,
}

impl HealthChecks {
    /// The server's checks: kube-apiserver's set, where keelson has the same part.
    pub fn for_server<S: crate::store::Store>(store: Arc<S>, life: &Lifecycle) -> Self {
        let synced = Arc::clone(&life.informers_synced);
        let informer_sync = Check::new("informer-sync", move || {
            let rev = synced.load(Ordering::Acquire);
            Box::pin(async move {
                if rev > 0 {
                    Ok(())
                } else {
                    Err("informers not started yet".into())
                }
            })
        });
        let namespaces_hook = Check::flag(
            "poststarthook/start-system-namespaces-controller",
            Arc::clone(&life.system_namespaces),
            "not finished",
        );
        let bootstrap_hook = Check::flag(
            "poststarthook/bootstrap-controller",
            Arc::clone(&life.bootstrap_controller),
            "not finished",
        );
        let base = || {
            vec![
                Check::ping(),
                Check::store(Arc::clone(&store)),
                namespaces_hook.clone(),
                bootstrap_hook.clone(),
            ]
        };
        // Readiness also waits for the storage object counter's first list: a server that
        // has not read its store yet is alive but not ready.
        let mut readyz = base();
        readyz.insert(2, informer_sync);
        readyz.push(Check::unless(
            "shutdown",
            Arc::clone(&life.shutting_down),
            "process is shutting down",
        ));
        Self {
            healthz: base(),
            livez: base(),
            readyz,
        }
    }

    /// The checks of `endpoint` (`healthz`, `livez` or `readyz`).
    pub fn of(&self, endpoint: &str) -> &[Check] {
        match endpoint {
            "livez" => &self.livez,
            "readyz" => &self.readyz,
            _ => &self.healthz,
        }
    }
}

/// The query of a health request: `verbose` and any number of `exclude=name`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HealthQuery {
    pub verbose: bool,
    pub exclude: Vec<String>,
}

impl HealthQuery {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> = format!("/?{}", query.unwrap_or_default())
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| axum::extract::Query::try_from_uri(&uri).ok())
            .map(|axum::extract::Query(p)| p)
            .unwrap_or_default();
        let mut q = Self::default();
        for (k, v) in pairs {
            match k.as_str() {
                // healthz.go tests `_, found := r.URL.Query()["verbose"]`: `?verbose` counts.
                "verbose" => q.verbose = true,
                "exclude" => q.exclude.push(v),
                _ => {}
            }
        }
        q
    }
}

/// The answer of an endpoint: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthAnswer {
    pub status: StatusCode,
    pub body: String,
}

impl IntoResponse for HealthAnswer {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        resp
    }
}

/// Runs the checks of `endpoint` as healthz.go's `handleRootHealth` does.
pub async fn run_all(endpoint: &str, checks: &[Check], query: &HealthQuery) -> HealthAnswer {
    let mut excluded: HashMap<&str, bool> = query
        .exclude
        .iter()
        .map(|n| (n.trim(), false))
        .filter(|(n, _)| !n.is_empty())
        .collect();
    let mut lines = String::new();
    let mut failed = false;
    for check in checks {
        if let Some(seen) = excluded.get_mut(check.name.as_str()) {
            *seen = true;
            let _ = writeln!(lines, "[+]{} excluded: ok", check.name);
            continue;
        }
        match (check.run)().await {
            Ok(()) => {
                let _ = writeln!(lines, "[+]{} ok", check.name);
            }
            Err(reason) => {
                failed = true;
                tracing::info!(endpoint, check = %check.name, %reason, "health check failed");
                let _ = writeln!(lines, "[-]{} failed: reason withheld", check.name);
            }
        }
    }
    let mut unknown: Vec<&str> = excluded
        .iter()
        .filter(|(_, seen)| !**seen)
        .map(|(n, _)| *n)
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        let quoted: Vec<String> = unknown.iter().map(|n| format!("{n:?}")).collect();
        lines.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            quoted.join(",")
        ));
    }
    if failed {
        // http.Error appends a newline.
        return HealthAnswer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: format!("{lines}{endpoint} check failed\n"),
        };
    }
    let body = if query.verbose {
        format!("{lines}{endpoint} check passed\n")
    } else {
        "ok".into()
    };
    HealthAnswer {
        status: StatusCode::OK,
        body,
    }
}

/// Runs the one check `name` of `endpoint` (healthz.go `adaptCheckToHandler`).
pub async fn run_one(checks: &[Check], name: &str) -> Option<HealthAnswer> {
    let check = checks.iter().find(|c| c.name == name)?;
    Some(match (check.run)().await {
        Ok(()) => HealthAnswer {
            status: StatusCode::OK,
            body: "ok".into(),
        },
        Err(reason) => HealthAnswer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: format!("internal server error: {reason}\n"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(name: &str) -> Check {
        Check::new(name, || Box::pin(async { Err("broken".into()) }))
    }

    fn checks() -> Vec<Check> {
        vec![
            Check::ping(),
            Check::ping_named("etcd"),
            failing("shutdown"),
        ]
    }

    impl Check {
        fn ping_named(name: &str) -> Self {
            Self::new(name, || Box::pin(async { Ok(()) }))
        }
    }

    #[tokio::test]
    async fn api_health_passes_with_ok_and_verbose_lists_checks() {
        let all = vec![Check::ping(), Check::ping_named("etcd")];
        let a = run_all("readyz", &all, &HealthQuery::default()).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok"));
        let a = run_all("readyz", &all, &HealthQuery::parse(Some("verbose"))).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "[+]ping ok\n[+]etcd ok\nreadyz check passed\n");
    }

    #[tokio::test]
    async fn api_health_failure_is_500_with_reason_withheld() {
        let a = run_all("livez", &checks(), &HealthQuery::default()).await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            a.body,
            "[+]ping ok\n[+]etcd ok\n[-]shutdown failed: reason withheld\nlivez check failed\n"
        );
        let one = run_one(&checks(), "shutdown").await.expect("known check");
        assert_eq!(one.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(one.body, "internal server error: broken\n");
        let one = run_one(&checks(), "etcd").await.expect("known check");
        assert_eq!((one.status, one.body.as_str()), (StatusCode::OK, "ok"));
        assert!(run_one(&checks(), "nope").await.is_none());
    }

    #[tokio::test]
    async fn api_health_exclude_skips_a_check_and_warns_on_unknown_names() {
        let q = HealthQuery::parse(Some("verbose&exclude=shutdown&exclude=bogus"));
        assert_eq!(q.exclude, ["shutdown", "bogus"]);
        let a = run_all("readyz", &checks(), &q).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.body,
            "[+]ping ok\n[+]etcd ok\n[+]shutdown excluded: ok\nwarn: some health checks cannot be excluded: no matches for \"bogus\"\nreadyz check passed\n"
        );
        let a = run_all(
            "readyz",
            &checks(),
            &HealthQuery::parse(Some("exclude=shutdown")),
        )
        .await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok"));
    }

    #[tokio::test]
    async fn api_health_server_checks_follow_the_lifecycle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(crate::store::SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let life = Lifecycle::default();
        let checks = HealthChecks::for_server(store, &life);
        let names: Vec<&str> = checks.readyz.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ping",
                "etcd",
                "informer-sync",
                "poststarthook/start-system-namespaces-controller",
                "poststarthook/bootstrap-controller",
                "shutdown"
            ]
        );
        let a = run_all(
            "readyz",
            checks.of("readyz"),
            &HealthQuery::parse(Some("verbose")),
        )
        .await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            a.body
                .contains("[-]informer-sync failed: reason withheld\n"),
            "{}",
            a.body
        );
        life.system_namespaces.store(true, Ordering::Release);
        life.informers_synced.store(7, Ordering::Release);
        let a = run_all("readyz", checks.of("readyz"), &HealthQuery::default()).await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.body);
        life.bootstrap_controller.store(true, Ordering::Release);
        let a = run_all("readyz", checks.of("readyz"), &HealthQuery::default()).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok"));
        life.shutting_down.store(true, Ordering::Release);
        let a = run_all("readyz", checks.of("readyz"), &HealthQuery::default()).await;
        assert!(a.body.contains("[-]shutdown failed"), "{}", a.body);
        // livez does not fail on shutdown: the process is still alive.
        let a = run_all("livez", checks.of("livez"), &HealthQuery::default()).await;
        assert_eq!(a.status, StatusCode::OK);
    }
}
