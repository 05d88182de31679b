//! The Pod runtime against real processes, namespaces and cgroups.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    DEFAULT_GRACE, PodRuntimeConfig,
    containers::{PodContext, PodShared, run_containers, supervise},
    launch::Launch,
    probes::liveness_loop,
    worker::grace_of,
};
use crate::{
    netns,
    node::{
        probe::{self, ProbeTarget},
        process::{self, ContainerRecord, PodRecord, ProcessSpec},
        status::{ContainerState, ContainerView, RestartPolicy},
    },
};

#[test]
fn grace_period_prefers_the_deletion_value() {
    let mut pod: Pod = serde_json::from_value(
        json!({"metadata":{"name":"p"},"spec":{"containers":[],"terminationGracePeriodSeconds":5}}),
    )
    .expect("pod");
    assert_eq!(grace_of(&pod), Duration::from_secs(5));
    pod.metadata.deletion_grace_period_seconds = Some(1);
    assert_eq!(grace_of(&pod), Duration::from_secs(1));
    pod.spec = None;
    pod.metadata.deletion_grace_period_seconds = None;
    assert_eq!(grace_of(&pod), DEFAULT_GRACE);
}

#[test]
fn cni_config_names_the_agent_socket() {
    let cfg = PodRuntimeConfig {
        node_name: "n1".into(),
        node_ip: Ipv4Addr::new(10, 250, 0, 11),
        data_dir: "/var/lib/keelson".into(),
        cgroup_root: "/sys/fs/cgroup/unified/keelson/c/n1".into(),
        cni_bin: "/usr/bin/keelson".into(),
        logger_bin: None,
        cni_socket: "/var/lib/keelson/cni.sock".into(),
        node_netns: None,
        cluster_dns: Default::default(),
    };
    let conf = crate::cni::protocol::NetConf::parse(cfg.cni_config().to_string().as_bytes())
        .expect("valid netconf");
    assert_eq!(
        conf.agent_socket,
        PathBuf::from("/var/lib/keelson/cni.sock")
    );
    assert_eq!(
        cfg.pod_cgroup("u"),
        PathBuf::from("/sys/fs/cgroup/unified/keelson/c/n1/pods/u")
    );
}

/// A Pod sandbox of the test's own (namespace, cgroup, directory), removed on drop.
struct TestPod {
    netns: String,
    cgroup: PathBuf,
    _dir: tempfile::TempDir,
    shared: Arc<PodShared>,
}

impl Drop for TestPod {
    fn drop(&mut self) {
        let _ = process::remove_cgroup(&self.cgroup);
        let _ = netns::delete_named(&self.netns);
    }
}

fn test_pod(tag: &str, policy: RestartPolicy, containers: &[&str]) -> TestPod {
    let unique = format!("sup-{tag}-{}", std::process::id());
    let netns_name = format!("kls-t-{unique}");
    let ns = netns::create_named(&netns_name).expect("netns");
    let cgroup = PathBuf::from(format!("/sys/fs/cgroup/unified/keelson-test-{unique}"));
    std::fs::create_dir_all(&cgroup).expect("cgroup");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = PodRuntimeConfig {
        node_name: "n1".into(),
        node_ip: Ipv4Addr::new(10, 250, 0, 11),
        node_netns: None,
        data_dir: dir.path().to_owned(),
        cgroup_root: cgroup.clone(),
        cni_bin: "/nonexistent".into(),
        logger_bin: None,
        cni_socket: dir.path().join("cni.sock"),
        cluster_dns: Default::default(),
    };
    let view = |name: &str| ContainerView {
        name: name.to_owned(),
        image: "busybox".into(),
        state: ContainerState::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        },
        last_terminated: None,
        restart_count: 0,
        probe_ready: true,
    };
    let shared = Arc::new(PodShared {
        cfg: Arc::new(cfg),
        uid: unique.clone(),
        netns: ns,
        cgroup: cgroup.clone(),
        pod_dir: dir.path().join("pod"),
        pod_ip: Ipv4Addr::new(10, 244, 1, 2),
        policy,
        views: Mutex::new(containers.iter().map(|c| view(c)).collect()),
        init_views: Mutex::new(vec![]),
        record: Mutex::new(PodRecord {
            uid: unique,
            ..Default::default()
        }),
        changed: Notify::new(),
        hooks: Mutex::default(),
        tokens: Default::default(),
        stop: CancellationToken::new(),
    });
    TestPod {
        netns: netns_name,
        cgroup,
        _dir: dir,
        shared,
    }
}

fn shell(name: &str, script: &str) -> Container {
    serde_json::from_value(json!({ "name": name, "command": ["sh", "-c", script] }))
        .expect("container")
}

fn env() -> Vec<(String, String)> {
    vec![("PATH".into(), "/usr/bin:/bin".into())]
}

#[tokio::test]
async fn supervisor_reports_exit_and_honours_never() {
    let t = test_pod("never", RestartPolicy::Never, &["c"]);
    let run = supervise(
        Arc::clone(&t.shared),
        0,
        Launch::plain(&shell("c", "echo ran; exit 3"), env()),
    );
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("supervisor ends under Never");
    let view = t.shared.views.lock().expect("lock")[0].clone();
    assert!(
        matches!(&view.state, ContainerState::Terminated(x) if x.exit_code == 3),
        "{view:?}"
    );
    let rec = t.shared.record.lock().expect("lock").clone();
    assert_eq!(rec.containers["c"].exit_code, Some(3));
    let log = std::fs::read_to_string(t.shared.pod_dir.join("c.log")).expect("log");
    assert_eq!(log, "ran\n");
}

#[tokio::test]
async fn supervisor_readopts_a_live_container_instead_of_starting_another() {
    let t = test_pod("adopt", RestartPolicy::Always, &["c"]);
    // What a previous agent left: a running container and its record.
    let spec = ProcessSpec {
        logger: None,
        argv: vec!["sleep".into(), "30".into()],
        env: env(),
        cwd: "/".into(),
        log: t.shared.pod_dir.join("c.log"),
        netns: t.shared.netns.clone(),
        cgroup: t.shared.cgroup.clone(),
        extra_cgroups: Vec::new(),
        rootfs: None,
        enter_ns_of: None,
    };
    let mut child = process::spawn(&spec).expect("spawn");
    let pid = child.id().expect("pid") as i32;
    let ticks = process::start_ticks(pid).expect("ticks");
    t.shared.record.lock().expect("lock").containers.insert(
        "c".into(),
        ContainerRecord {
            pid,
            start_ticks: ticks,
            started_at: jiff::Timestamp::now(),
            restart_count: 2,
            exit_code: None,
            finished_at: None,
        },
    );
    let task = tokio::spawn(supervise(
        Arc::clone(&t.shared),
        0,
        Launch::plain(&shell("c", "echo duplicate; sleep 30"), env()),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = t.shared.views.lock().expect("lock")[0].clone();
    assert!(
        matches!(view.state, ContainerState::Running { .. }),
        "{view:?}"
    );
    assert_eq!(view.restart_count, 2);
    assert_eq!(
        process::cgroup_pids(&t.shared.cgroup),
        vec![pid],
        "a second copy was started"
    );
    assert_eq!(
        t.shared.record.lock().expect("lock").containers["c"].pid,
        pid
    );
    t.shared.stop.cancel();
    process::signal(pid, Signal::SIGKILL);
    let _ = child.wait().await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("supervisor stops")
        .expect("join");
    let log = std::fs::read_to_string(t.shared.pod_dir.join("c.log")).unwrap_or_default();
    assert!(!log.contains("duplicate"), "{log}");
}

#[tokio::test]
async fn supervisor_does_not_rerun_a_completed_container_after_agent_restart() {
    let t = test_pod("done", RestartPolicy::OnFailure, &["c"]);
    t.shared.record.lock().expect("lock").containers.insert(
        "c".into(),
        ContainerRecord {
            pid: i32::MAX,
            start_ticks: 1,
            started_at: jiff::Timestamp::now(),
            restart_count: 0,
            exit_code: Some(0),
            finished_at: Some(jiff::Timestamp::now()),
        },
    );
    let run = supervise(
        Arc::clone(&t.shared),
        0,
        Launch::plain(&shell("c", "echo again"), env()),
    );
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("returns at once");
    let view = t.shared.views.lock().expect("lock")[0].clone();
    assert!(
        matches!(&view.state, ContainerState::Terminated(x) if x.exit_code == 0),
        "{view:?}"
    );
    assert!(
        !t.shared.pod_dir.join("c.log").exists(),
        "the container ran again"
    );
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_containers() {
    let t = test_pod("init", RestartPolicy::Never, &["main"]);
    *t.shared.init_views.lock().expect("lock") = vec![
        ContainerView {
            name: "first".into(),
            image: String::new(),
            state: ContainerState::Waiting {
                reason: "PodInitializing".into(),
                message: String::new()
            },
            last_terminated: None,
            restart_count: 0,
            probe_ready: true,
        };
        2
    ];
    let marker = t.shared.pod_dir.join("marker");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "p", "namespace": "default", "uid": "u" },
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                { "name": "first", "command": ["sh", "-c", format!("echo one > {}", marker.display())] },
                { "name": "second", "command": ["sh", "-c", format!("echo two >> {}", marker.display())] },
            ],
            "containers": [
                { "name": "main", "command": ["sh", "-c", format!("cat {}", marker.display())] },
            ],
        },
    }))
    .expect("pod");
    std::fs::create_dir_all(&t.shared.pod_dir).expect("pod dir");
    tokio::time::timeout(
        Duration::from_secs(10),
        run_containers(Arc::clone(&t.shared), pod, PodContext::default()),
    )
    .await
    .expect("all containers end under Never");
    let log = std::fs::read_to_string(t.shared.pod_dir.join("main.log")).expect("main log");
    assert_eq!(log, "one\ntwo\n");
    let inits = t.shared.init_views.lock().expect("lock").clone();
    assert!(
        inits
            .iter()
            .all(|v| matches!(&v.state, ContainerState::Terminated(x) if x.exit_code == 0)),
        "{inits:?}"
    );
}

#[tokio::test]
async fn failing_liveness_probe_kills_the_container() {
    let t = test_pod("live", RestartPolicy::Always, &["c"]);
    let sup = tokio::spawn(supervise(
        Arc::clone(&t.shared),
        0,
        Launch::plain(&shell("c", "exec sleep 30"), env()),
    ));
    let plan = probe::ProbePlan {
        action: probe::ProbeAction::Exec {
            argv: vec!["false".into()],
        },
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        success_threshold: 1,
        failure_threshold: 2,
    };
    let target = ProbeTarget {
        pod_ip: t.shared.pod_ip,
        netns: t.shared.netns.clone(),
        cgroup: t.shared.cgroup.clone(),
        cwd: "/".into(),
        env: env(),
        container_pid: None,
    };
    let live = tokio::spawn(liveness_loop(
        Arc::clone(&t.shared),
        0,
        "c".into(),
        plan,
        target,
    ));
    let mut killed = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        killed = t.shared.views.lock().expect("lock")[0]
            .last_terminated
            .clone();
        if killed.is_some() {
            break;
        }
    }
    let killed = killed.expect("the container was killed by its liveness probe");
    assert_eq!(killed.exit_code, 128 + 9);
    assert_eq!(t.shared.views.lock().expect("lock")[0].restart_count, 1);
    t.shared.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), sup).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), live).await;
}
