//! The `keelson` binary's behaviour at its edges: bad input gets a clear error and a non-zero
//! exit, as a CNI runtime, an operator or a script expects.

mod support;

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use support::{keelson, output_text};

fn cni(command: &str, stdin: &str) -> std::process::Output {
    let mut child = Command::new(keelson())
        .arg("cni")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "cli-test-0123456789")
        .env("CNI_NETNS", "/run/netns/kls-t-cli-does-not-exist")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning keelson cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    child.wait_with_output().expect("keelson cni")
}

#[test]
fn cni_with_broken_stdin_prints_an_error_object() {
    let out = cni("ADD", "{\"cniVersion\": \"1.1.0\", \"name\": ");
    assert!(!out.status.success(), "{}", output_text(&out));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not a CNI error object ({e}):\n{}",
            output_text(&out)
        )
    });
    // CNI spec, section "Error": code 6 is "failed to decode content".
    assert_eq!(err["code"], 6, "{err}");
    assert!(err["msg"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    assert!(err["cniVersion"].is_string(), "{err}");
}

#[test]
fn cni_version_lists_supported_versions() {
    let out = cni("VERSION", "{\"cniVersion\": \"1.1.0\"}");
    assert!(out.status.success(), "{}", output_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("VERSION result");
    let versions = v["supportedVersions"]
        .as_array()
        .expect("supportedVersions");
    assert!(versions.iter().any(|x| x == "1.1.0"), "{v}");
}

#[test]
fn agent_without_privileges_says_which() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(keelson())
        .args([
            "agent",
            "--node-name",
            "cli-unpriv",
            "--node-ip",
            "10.250.9.9",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(["--pin-dir", "/sys/fs/bpf/keelson-test-cli-unpriv"])
        .output()
        .expect("running setpriv");
    assert!(!out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CAP_"),
        "the error should name the missing capability:\n{stderr}"
    );
}

#[test]
fn bpf_dump_of_a_missing_node_is_a_clear_error() {
    let out = Command::new(keelson())
        .args([
            "bpf",
            "dump",
            "services",
            "--pin-dir",
            "/sys/fs/bpf/keelson-test-cli-no-such-node",
        ])
        .output()
        .expect("keelson bpf dump");
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cli-no-such-node"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn up_refuses_a_bad_cluster_name() {
    let out = Command::new(keelson())
        .args(["up", "--name", "Bad_Name"])
        .output()
        .expect("keelson up");
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Bad_Name"),
        "{}",
        output_text(&out)
    );
}
