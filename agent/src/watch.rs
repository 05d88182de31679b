//! What the agent's watch loops (Services, policy) share: taking one item of a kube-rs watch.

use kube::runtime::watcher;

/// A watch stream ended: the loop that owned it stops, and the agent with it.
#[derive(Debug, thiserror::Error)]
#[error("a watch of {0} ended")]
pub struct WatchEnded(pub &'static str);

/// Takes one item of a watch; returns whether the objects changed. A watch error is logged
/// and retried by the watcher's backoff.
pub fn take<K>(
    event: Option<Result<watcher::Event<K>, watcher::Error>>,
    what: &'static str,
    apply: impl FnOnce(watcher::Event<K>) -> bool,
) -> Result<bool, WatchEnded> {
    match event {
        None => Err(WatchEnded(what)),
        Some(Ok(event)) => Ok(apply(event)),
        Some(Err(e)) => {
            tracing::warn!(watch = what, error = %e, "watch error; retrying");
            Ok(false)
        }
    }
}
