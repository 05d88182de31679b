//! End to end, with the real kubectl on `keelson up --nodes 2`: what a Pod's containers are
//! made from. ConfigMap and Secret volumes and env, an update reaching a running Pod, the
//! Pod's own /etc/hosts, hostname and root, emptyDir, readOnly and subPath mounts, a Pod
//! waiting for a missing ConfigMap or Secret and starting once it exists, bad mounts refused
//! by the API, and a container over its memory limit OOMKilled and restarted.

mod support;

use std::time::Duration;

use support::{LocalCluster, output_text, wait_for};

const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data: {greeting: hello, mode: fast}
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret}
stringData: {password: s3cr3t}
---
apiVersion: v1
kind: Pod
metadata: {name: vols}
spec:
  hostAliases: [{ip: 10.1.2.3, hostnames: [db.example]}]
  containers:
  - name: app
    image: keelson.io/process
    command: [sh, -c]
    args:
    - |
      echo "env greeting=$GREETING password=$PASSWORD mode=$mode"
      echo "hostname=$(hostname)"
      grep -q "vols" /etc/hosts && echo "hosts names the pod"
      grep -q "db.example" /etc/hosts && echo "hosts has the alias"
      echo "secret fs=$(stat -f -c %T /etc/secret)"
      touch /etc/config/new 2>/dev/null && echo "config writable" || echo "config read-only"
      echo "only mode=$(cat /etc/only-mode)"
      echo scratch > /scratch/file && echo "scratch=$(cat /scratch/file)"
      echo private > /etc/keelson-e2e-pods-marker
      while true; do echo "file greeting=$(cat /etc/config/greeting) password=$(cat /etc/secret/password)"; sleep 1; done
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: app-config, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: app-secret, key: password}}}
    envFrom: [{configMapRef: {name: app-config}}]
    volumeMounts:
    - {name: config, mountPath: /etc/config, readOnly: true}
    - {name: secret, mountPath: /etc/secret}
    - {name: config, mountPath: /etc/only-mode, subPath: mode}
    - {name: scratch, mountPath: /scratch}
  volumes:
  - {name: config, configMap: {name: app-config}}
  - {name: secret, secret: {secretName: app-secret}}
  - {name: scratch, emptyDir: {}}
"#;

fn logs(c: &LocalCluster, pod: &str) -> String {
    String::from_utf8_lossy(&c.kubectl(&["logs", pod]).stdout).into_owned()
}

fn jsonpath(c: &LocalCluster, pod: &str, path: &str) -> String {
    c.kubectl_ok(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
}

#[test]
fn pods_get_their_volumes_env_files_and_limits() {
    let name = format!("pods{}", std::process::id());
    let c = LocalCluster::up(&name, 2);

    // Volumes, env, the Pod's own files and root.
    c.apply_ok("app.yaml", APP);
    let first = wait_for("the vols Pod's output", Duration::from_secs(60), || {
        let l = logs(&c, "vols");
        l.contains("file greeting=").then_some(l)
    });
    let ip = jsonpath(&c, "vols", "{.status.podIP}");
    for want in [
        "env greeting=hello password=s3cr3t mode=fast",
        "hostname=vols",
        "hosts names the pod",
        "hosts has the alias",
        "secret fs=tmpfs",
        "config read-only",
        "only mode=fast",
        "scratch=scratch",
        "file greeting=hello password=s3cr3t",
    ] {
        assert!(first.contains(want), "missing {want:?} in:\n{first}");
    }
    assert!(
        !std::path::Path::new("/etc/keelson-e2e-pods-marker").exists(),
        "a container's write reached the host's /etc"
    );
    // /etc/hosts as the kubelet writes it: the Pod IP with its name.
    let hosts_line = format!("{ip}\tvols");
    let files = std::fs::read_dir(c.data_dir.path().join("nodes"))
        .expect("nodes dir")
        .flatten()
        .filter_map(|n| std::fs::read_dir(n.path().join("pods")).ok())
        .flatten()
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p.path().join("etc-hosts")).ok())
        .collect::<Vec<_>>();
    assert!(
        files.iter().any(|f| f.contains(&hosts_line)),
        "no etc-hosts with {hosts_line:?}: {files:?}"
    );

    // Logs: --tail, -f follows, --previous of a container that never restarted is refused.
    let tail = c.kubectl_ok(&["logs", "vols", "--tail=1"]);
    assert!(
        tail.lines().count() == 1 && tail.starts_with("file greeting="),
        "{tail:?}"
    );
    let out = c.kubectl(&["logs", "vols", "--previous"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("previous terminated container \"app\" in pod \"vols\" not found"),
        "{}",
        output_text(&out)
    );
    {
        use std::io::{BufRead as _, BufReader};
        let mut follow = std::process::Command::new(support::kubectl())
            .args(["logs", "-f", "vols", "--tail=1"])
            .env("KUBECONFIG", &c.kubeconfig)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl logs -f");
        let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
        // One line of the tail, then two more that appear while following.
        for _ in 0..3 {
            let line = lines.next().expect("a followed line").expect("utf-8");
            assert!(line.starts_with("file greeting="), "{line}");
        }
        let _ = follow.kill();
        let _ = follow.wait();
    }

    // An update of the ConfigMap reaches the running Pod's file within 60 s.
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "app-config",
        "--type=merge",
        "-p",
        r#"{"data":{"greeting":"updated"}}"#,
    ]);
    wait_for(
        "the updated ConfigMap in the Pod",
        Duration::from_secs(60),
        || {
            logs(&c, "vols")
                .contains("file greeting=updated")
                .then_some(())
        },
    );

    // A missing ConfigMap volume keeps the Pod waiting with the reason; it starts once the
    // ConfigMap exists. A missing Secret in env: CreateContainerConfigError.
    c.apply_ok(
        "waiting.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: waits-for-volume}
spec:
  containers:
  - {name: c, image: x, command: [sh, -c, "cat /cfg/k; sleep 3600"], volumeMounts: [{name: v, mountPath: /cfg}]}
  volumes: [{name: v, configMap: {name: late-config}}]
---
apiVersion: v1
kind: Pod
metadata: {name: waits-for-secret}
spec:
  containers:
  - name: c
    image: x
    command: [sleep, "3600"]
    env: [{name: X, valueFrom: {secretKeyRef: {name: late-secret, key: k}}}]
"#,
    );
    let waiting = wait_for(
        "the volume Pod's waiting reason",
        Duration::from_secs(60),
        || {
            let msg = jsonpath(
                &c,
                "waits-for-volume",
                "{.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}",
            );
            msg.contains("not found").then_some(msg)
        },
    );
    assert_eq!(
        waiting,
        "ContainerCreating: MountVolume.SetUp failed for volume \"v\" : configmap \"late-config\" not found"
    );
    let secret_wait = wait_for(
        "the env Pod's waiting reason",
        Duration::from_secs(60),
        || {
            let msg = jsonpath(
                &c,
                "waits-for-secret",
                "{.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}",
            );
            msg.contains("CreateContainerConfigError").then_some(msg)
        },
    );
    assert_eq!(
        secret_wait,
        "CreateContainerConfigError: secret \"late-secret\" not found"
    );
    c.kubectl_ok(&[
        "create",
        "configmap",
        "late-config",
        "--from-literal=k=arrived",
    ]);
    wait_for("the volume Pod to start", Duration::from_secs(60), || {
        logs(&c, "waits-for-volume")
            .contains("arrived")
            .then_some(())
    });
    // Nothing else was harmed: the first Pod still runs.
    assert_eq!(jsonpath(&c, "vols", "{.status.phase}"), "Running");

    // Bad mounts are refused by the API with the field at fault.
    let out = c.apply(
        "bad.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: bad-subpath}
spec:
  containers:
  - {name: c, image: x, command: [sleep, "1"], volumeMounts: [{name: v, mountPath: /x, subPath: ../../etc}]}
  volumes: [{name: v, emptyDir: {}}]
"#,
    );
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("spec.containers[0].volumeMounts[0].subPath: Invalid value: \"../../etc\": must not contain '..'"),
        "{text}"
    );

    // Over its memory limit: OOMKilled, and restarted under restartPolicy Always.
    c.apply_ok(
        "oom.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  containers:
  - name: c
    image: x
    command: [python3, -c, "import time; print('hog starting', flush=True); b = b'x' * (256 << 20); time.sleep(60)"]
    resources: {limits: {memory: 64Mi}}
"#,
    );
    let (reason, code) = wait_for("the hog to be OOMKilled", Duration::from_secs(90), || {
        let got = jsonpath(
            &c,
            "hog",
            "{.status.containerStatuses[0].lastState.terminated.reason} {.status.containerStatuses[0].lastState.terminated.exitCode} {.status.containerStatuses[0].restartCount}",
        );
        let parts: Vec<&str> = got.split_whitespace().collect();
        (parts.len() == 3 && parts[2] != "0").then(|| (parts[0].to_owned(), parts[1].to_owned()))
    });
    assert_eq!((reason.as_str(), code.as_str()), ("OOMKilled", "137"));
    // Once it runs again, the run that was killed keeps its log for --previous.
    wait_for("the hog's previous log", Duration::from_secs(60), || {
        let out = c.kubectl(&["logs", "hog", "--previous"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("hog starting")
            .then_some(())
    });
}
