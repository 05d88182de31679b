//! Builds the eBPF programs in `ebpf/` (nightly, bpfel-unknown-none, bpf-linker) so the agent
//! can embed the object. `cargo xtask setup` installs the toolchain pieces this needs.

use std::{env, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let tools = env::var_os("KEELSON_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/keelson/tools"))
        })
        .context("neither KEELSON_TOOLS nor HOME is set")?;
    println!("cargo:rerun-if-env-changed=KEELSON_TOOLS");
    println!("cargo:rerun-if-changed=../common/src");
    let linker = tools.join("bin");
    if !linker.join("bpf-linker").exists() {
        anyhow::bail!(
            "bpf-linker is not installed under {}: run `cargo xtask setup` first",
            linker.display()
        );
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(std::iter::once(linker).chain(env::split_paths(&path)))?;
    // SAFETY: build scripts are single-threaded; the variable is read by the cargo child
    // process aya-build spawns below.
    unsafe { env::set_var("PATH", path) };
    let ebpf = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../ebpf");
    let root_dir = ebpf.to_str().context("non-UTF-8 path")?;
    // aya-build runs `cargo build --package keelson-ebpf` in the current directory; ebpf/ is a
    // workspace of its own (excluded from the host workspace), so run it from there.
    env::set_current_dir(&ebpf).context("cannot enter ebpf/")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "keelson-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
