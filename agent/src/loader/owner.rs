//! The thread that owns the datapath's maps. Every map operation — bulk writes of the Service
//! and policy programmers, read-backs, walks and purges of conntrack — is a job sent to it
//! over a channel, so that the async runtime never blocks on the kernel and jobs run in the
//! order they were sent (as the SQLite store's writer owns its connection).

use std::{
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    sync::mpsc,
    thread,
};

use super::maps::Maps;

type Job = Box<dyn FnOnce(&mut Maps) + Send>;

/// A handle on the owner thread; the thread ends when the last handle is dropped.
#[derive(Debug)]
pub struct MapOwner {
    jobs: mpsc::Sender<Job>,
}

impl MapOwner {
    /// Moves `maps` onto a thread of their own.
    pub fn spawn(maps: Maps) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("datapath-maps".into())
            .spawn(move || {
                let mut maps = maps;
                for job in rx {
                    job(&mut maps);
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the owner thread and waits for its result without blocking the runtime.
    /// A panic of `f` is resumed here, in the caller; the owner thread goes on.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Maps) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(f, move |r| {
            let _ = tx.send(r);
        });
        unwrap(rx.await.ok())
    }

    /// Runs `f` on the owner thread and blocks the calling thread until it is done: for
    /// threads that are not the runtime's (the CNI server's blocking work, tools, tests).
    pub fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Maps) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(f, move |r| {
            let _ = tx.send(r);
        });
        unwrap(rx.recv().ok())
    }

    fn send<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Maps) -> T + Send + 'static,
        reply: impl FnOnce(thread::Result<T>) + Send + 'static,
    ) {
        let job: Job = Box::new(move |maps| reply(catch_unwind(AssertUnwindSafe(|| f(maps)))));
        // The thread only ends when every sender is gone, and `self` is one.
        if self.jobs.send(job).is_err() {
            unreachable!("the map owner thread outlives its handles");
        }
    }
}

fn unwrap<T>(result: Option<thread::Result<T>>) -> T {
    match result {
        Some(Ok(value)) => value,
        Some(Err(panic)) => resume_unwind(panic),
        None => unreachable!("the map owner thread answers every job"),
    }
}
