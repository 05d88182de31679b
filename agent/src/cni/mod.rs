//! The CNI plugin (`keelson cni`, CNI spec 1.1) and the agent side that serves it.

/// Entry point of `keelson cni`: reads CNI_* variables and stdin, prints the result or a CNI
/// error object, and returns the process exit code.
pub fn plugin_main() -> i32 {
    1
}
