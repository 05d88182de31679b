//! The CNI plugin (`keelson cni`, CNI spec 1.1) and the agent side that serves it.
//!
//! The plugin stays thin: it validates its input and forwards the request over a Unix socket
//! to the agent ([`server`]), which owns the veths, the address allocation and the datapath.

pub mod plugin;
pub mod protocol;
pub mod server;

/// Entry point of `keelson cni`: reads CNI_* variables and stdin, prints the result or a CNI
/// error object, and returns the process exit code.
pub fn plugin_main() -> i32 {
    use std::io::{Read as _, Write as _};
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => plugin::run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => plugin::Outcome::error(&protocol::CniError::new(
            protocol::code::IO_FAILURE,
            "reading the network configuration from stdin",
            e.to_string(),
        )),
    };
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() && writeln!(out, "{}", outcome.stdout).is_err() {
        return 1;
    }
    outcome.exit_code
}

#[cfg(test)]
mod tests;
