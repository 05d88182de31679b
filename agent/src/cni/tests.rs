//! End-to-end CNI tests (root): the plugin's real code path talks to a real agent-side server
//! over its Unix socket, which builds real veths in namespaces of the test's own.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use super::{
    plugin,
    protocol::{CniError, CniResult, code},
    server::{CniServer, EndpointSink, host_ifname},
};
use crate::{
    links::{NetOps as _, Netlink},
    loader::{Datapath, DatapathConfig, Endpoint, LoaderError},
    netns,
};

/// Namespaces, cgroups and pin directories of one test, removed even when the test fails.
struct Cleanup {
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.netns {
            let _ = netns::delete_named(n);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[derive(Default)]
struct RecordingSink {
    added: Mutex<Vec<Endpoint>>,
    removed: Mutex<Vec<Ipv4Addr>>,
}

impl EndpointSink for RecordingSink {
    fn add_endpoint(&self, ep: &Endpoint) -> Result<(), LoaderError> {
        self.added.lock().expect("lock").push(ep.clone());
        Ok(())
    }
    fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), LoaderError> {
        self.removed.lock().expect("lock").push(ip);
        Ok(())
    }
}

fn sh(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ping_from(ns: &Path, ip: &str) -> bool {
    let net = format!("--net={}", ns.display());
    sh(
        "nsenter",
        &[&net, "busybox", "ping", "-c", "1", "-W", "2", ip],
    )
}

struct Env {
    vars: Vec<(&'static str, String)>,
}

impl Env {
    fn attach(command: &str, id: &str, ns: Option<&Path>) -> Self {
        let mut vars = vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", id.to_owned()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", "/usr/lib/cni".to_owned()),
        ];
        if let Some(ns) = ns {
            vars.push(("CNI_NETNS", ns.display().to_string()));
        }
        Self { vars }
    }
    fn get(&self) -> impl Fn(&str) -> Option<String> + '_ {
        |k| {
            self.vars
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
        }
    }
}

/// Brings up a node namespace (with a "node IP" on loopback) and a Pod namespace, serves CNI
/// with `sink`, and runs ADD, CHECK, repeated ADD, DEL, repeated DEL through the plugin.
async fn add_check_del(
    tag: &str,
    sink: Arc<dyn EndpointSink>,
    node_ns_name: &str,
    cleanup: &mut Cleanup,
) -> Vec<CniResult> {
    let pod_ns_name = format!("kls-t-cni-{tag}-{}-p", std::process::id());
    let node_ns = netns::create_named(node_ns_name).expect("node netns");
    let pod_ns = netns::create_named(&pod_ns_name).expect("pod netns");
    cleanup.netns.push(pod_ns_name.clone());
    let node_arg = format!("--net={}", node_ns.display());
    assert!(sh(
        "nsenter",
        &[
            &node_arg,
            "ip",
            "addr",
            "add",
            "10.250.77.1/32",
            "dev",
            "lo"
        ]
    ));

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("cni.sock");
    let server = Arc::new(
        CniServer::new(
            Some(node_ns.clone()),
            "10.244.77.0/24".parse().expect("cidr"),
            &dir.path().join("ipam.json"),
            Arc::new(Netlink::for_namespace(Some(node_ns.clone()))),
            sink,
        )
        .expect("server"),
    );
    let serving = tokio::spawn({
        let socket = socket.clone();
        async move { server.serve(&socket).await }
    });
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"keelson","type":"keelson","agentSocket":"{}"}}"#,
        socket.display()
    );
    let call = |env: Env| {
        let conf = conf.clone();
        tokio::task::spawn_blocking(move || plugin::run(env.get(), conf.as_bytes()))
    };
    let id = format!("c-{tag}-{}", std::process::id());
    let host = host_ifname(&id, "eth0");

    let out = call(Env::attach("ADD", &id, Some(&pod_ns)))
        .await
        .expect("join");
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let result: CniResult = serde_json::from_str(&out.stdout).expect("result");
    assert_eq!(result.cni_version, "1.1.0");
    assert_eq!(result.pod_ip(), Some(Ipv4Addr::new(10, 244, 77, 2)));
    assert_eq!(result.interfaces[0].name, host);
    assert_eq!(
        result.interfaces[1].sandbox.as_deref(),
        Some(pod_ns.to_str().expect("utf8"))
    );
    assert_eq!(result.ips[0].interface, 1);
    assert_eq!(result.routes[0].gw.as_deref(), Some("169.254.1.1"));

    let net = Netlink::default();
    let host_link = net
        .link(Some(&node_ns), &host)
        .expect("ip")
        .expect("host veth exists");
    assert_eq!(
        crate::links::format_mac(host_link.mac),
        result.interfaces[0].mac
    );
    assert!(net.link(Some(&pod_ns), "eth0").expect("ip").is_some());
    let pod_arg = format!("--net={}", pod_ns.display());
    let addrs = Command::new("nsenter")
        .args([&pod_arg, "ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .expect("ip addr");
    assert!(String::from_utf8_lossy(&addrs.stdout).contains("10.244.77.2/32"));
    // Pod -> node and node -> Pod, through the gateway neighbour and the /32 route.
    assert!(
        ping_from(&pod_ns, "10.250.77.1"),
        "pod cannot reach the node"
    );
    assert!(
        ping_from(&node_ns, "10.244.77.2"),
        "node cannot reach the pod"
    );

    let out = call(Env::attach("CHECK", &id, Some(&pod_ns)))
        .await
        .expect("join");
    assert_eq!(out.exit_code, 0, "{}", out.stdout);

    // A repeated ADD keeps the address.
    let out = call(Env::attach("ADD", &id, Some(&pod_ns)))
        .await
        .expect("join");
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let again: CniResult = serde_json::from_str(&out.stdout).expect("result");
    assert_eq!(again.pod_ip(), result.pod_ip());
    assert!(ping_from(&pod_ns, "10.250.77.1"));

    let out = call(Env::attach("DEL", &id, Some(&pod_ns)))
        .await
        .expect("join");
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    assert!(
        net.link(Some(&node_ns), &host).expect("ip").is_none(),
        "host veth survived DEL"
    );
    assert!(
        net.link(Some(&pod_ns), "eth0").expect("ip").is_none(),
        "pod eth0 survived DEL"
    );
    let out = call(Env::attach("DEL", &id, None)).await.expect("join");
    assert_eq!(out.exit_code, 0, "DEL must be idempotent: {}", out.stdout);

    // CHECK of a deleted attachment: unknown container.
    let out = call(Env::attach("CHECK", &id, Some(&pod_ns)))
        .await
        .expect("join");
    assert_ne!(out.exit_code, 0);
    let err: CniError = serde_json::from_str(&out.stdout).expect("error object");
    assert_eq!(err.code, code::UNKNOWN_CONTAINER);

    // ADD into a namespace that does not exist: invalid environment, nothing allocated.
    let out = call(Env::attach(
        "ADD",
        &id,
        Some(Path::new("/run/netns/kls-t-absent")),
    ))
    .await
    .expect("join");
    let err: CniError = serde_json::from_str(&out.stdout).expect("error object");
    assert_eq!(err.code, code::INVALID_ENV);
    // STATUS: ready, no output.
    let status = Env {
        vars: vec![("CNI_COMMAND", "STATUS".to_owned())],
    };
    let out = call(status).await.expect("join");
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, ""));

    // GC: attachments not listed as valid are removed, listed ones kept.
    let keep = format!("{id}-keep");
    let drop_ = format!("{id}-drop");
    let out = call(Env::attach("ADD", &keep, Some(&pod_ns)))
        .await
        .expect("join");
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let pod2_name = format!("kls-t-cni-{tag}-{}-q", std::process::id());
    let pod2 = netns::create_named(&pod2_name).expect("second pod netns");
    cleanup.netns.push(pod2_name);
    let out = call(Env::attach("ADD", &drop_, Some(&pod2)))
        .await
        .expect("join");
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let gc_conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"keelson","type":"keelson","agentSocket":"{}","cni.dev/valid-attachments":[{{"containerID":"{keep}","ifname":"eth0"}}]}}"#,
        socket.display()
    );
    let gc = Env {
        vars: vec![("CNI_COMMAND", "GC".to_owned())],
    };
    let out = tokio::task::spawn_blocking(move || plugin::run(gc.get(), gc_conf.as_bytes()))
        .await
        .expect("join");
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    assert!(
        net.link(Some(&node_ns), &host_ifname(&keep, "eth0"))
            .expect("ip")
            .is_some(),
        "GC removed a valid attachment"
    );
    assert!(
        net.link(Some(&node_ns), &host_ifname(&drop_, "eth0"))
            .expect("ip")
            .is_none(),
        "GC kept a stale attachment"
    );
    let out = call(Env::attach("DEL", &keep, Some(&pod_ns)))
        .await
        .expect("join");
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    serving.abort();
    vec![result, again]
}

#[tokio::test]
async fn add_check_del_with_a_recording_datapath() {
    let mut cleanup = Cleanup {
        netns: vec![],
        dirs: vec![],
    };
    let node_ns_name = format!("kls-t-cni-rec-{}-n", std::process::id());
    cleanup.netns.push(node_ns_name.clone());
    let sink = Arc::new(RecordingSink::default());
    let results = add_check_del("rec", sink.clone(), &node_ns_name, &mut cleanup).await;
    let added = sink.added.lock().expect("lock").clone();
    assert_eq!(added.len(), 4, "one endpoint per ADD");
    assert_eq!(added[0].ip, Ipv4Addr::new(10, 244, 77, 2));
    assert_eq!(added[0].host_ifname, results[0].interfaces[0].name);
    assert_eq!(
        crate::links::format_mac(added[0].pod_mac),
        results[0].interfaces[1].mac
    );
    // DEL of the first attachment, GC of the stale one, DEL of the kept one.
    assert_eq!(
        *sink.removed.lock().expect("lock"),
        vec![
            Ipv4Addr::new(10, 244, 77, 2),
            Ipv4Addr::new(10, 244, 77, 4),
            Ipv4Addr::new(10, 244, 77, 3)
        ]
    );
}

#[tokio::test]
async fn add_check_del_with_the_ebpf_datapath() {
    let unique = format!("cni-{}", std::process::id());
    let mut cleanup = Cleanup {
        netns: vec![],
        dirs: vec![],
    };
    let node_ns_name = format!("kls-t-cni-bpf-{}-n", std::process::id());
    let node_ns = netns::create_named(&node_ns_name).expect("node netns");
    cleanup.netns.push(node_ns_name.clone());
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/keelson-test-{unique}"));
    let cgroup = PathBuf::from(format!("/sys/fs/cgroup/unified/keelson-test-{unique}"));
    std::fs::create_dir_all(&cgroup).expect("cgroup");
    cleanup.dirs.push(pin_dir.clone());
    cleanup.dirs.push(cgroup.clone());
    let dp = Datapath::load(DatapathConfig {
        pin_dir,
        cgroup_root: cgroup,
        node_netns: Some(node_ns),
    })
    .expect("datapath loads");
    add_check_del("bpf", Arc::new(dp), &node_ns_name, &mut cleanup).await;
}
