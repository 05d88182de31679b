//! Container log files in the CRI format the kubelet reads (CRI `ContainerConfig.log_path`,
//! KEP-2305 / kubernetes `pkg/kubelet/kuberuntime/logs`): one line per write of the container,
//! `<RFC 3339 nano time> <stdout|stderr> <F|P> <message>`, `P` for a part of a line longer
//! than [`MAX_LINE`] that the next entry continues. `keelson logger` ([`run_logger`]) writes
//! them from the container's stdout and stderr pipes, as containerd's shim does, and outlives
//! the agent; the node API reads them back for `kubectl logs` (`--timestamps`, `--since`,
//! `--limit-bytes`) and attach. A line that is not in the format (a log written by an agent
//! before it) is read as a whole stdout line.

use std::{
    fs::OpenOptions,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// The longest message one entry holds; longer lines are split into `P` entries (containerd's
/// `max_container_log_line_size` default).
pub const MAX_LINE: usize = 16 * 1024;

/// The descriptor `keelson logger` reads the container's stderr from (stdin is its stdout).
pub const STDERR_FD: i32 = 3;

/// Which of the container's outputs an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One entry of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The time as written (RFC 3339 with nanoseconds); `None` for a line not in the format.
    pub time: Option<&'a str>,
    pub stream: Stream,
    /// Whether the message ends its line (`F`) or the next entry continues it (`P`).
    pub full: bool,
    pub message: &'a [u8],
}

impl Entry<'_> {
    /// The entry's time, parsed.
    pub fn timestamp(&self) -> Option<jiff::Timestamp> {
        self.time.and_then(|t| t.parse().ok())
    }
}

/// Appends one entry in the file format, with its newline.
pub fn encode(
    time: jiff::Timestamp,
    stream: Stream,
    full: bool,
    message: &[u8],
    out: &mut Vec<u8>,
) {
    // Fixed nine fraction digits: entries sort and compare as text, as the kubelet's do.
    let _ = write!(
        out,
        "{} {} {} ",
        time.strftime("%Y-%m-%dT%H:%M:%S.%9fZ"),
        stream.as_str(),
        if full { 'F' } else { 'P' }
    );
    out.extend_from_slice(message);
    out.push(b'\n');
}

/// Reads one line of a log file (without its newline).
pub fn decode(line: &[u8]) -> Entry<'_> {
    let raw = Entry {
        time: None,
        stream: Stream::Stdout,
        full: true,
        message: line,
    };
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return raw;
    };
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return raw,
    };
    let full = match tag {
        b"F" => true,
        b"P" => false,
        _ => return raw,
    };
    let Ok(time) = std::str::from_utf8(time) else {
        return raw;
    };
    if time.parse::<jiff::Timestamp>().is_err() {
        return raw;
    }
    Entry {
        time: Some(time),
        stream,
        full,
        message: parts.next().unwrap_or_default(),
    }
}

/// What a reader of a log wants (the kubelet's `PodLogOptions`).
#[derive(Debug, Clone, Default)]
pub struct Render {
    /// Prefix each line with its time (`--timestamps`).
    pub timestamps: bool,
    /// Only entries at or after this time (`--since`, `--since-time`).
    pub since: Option<jiff::Timestamp>,
    /// Only this stream (attach separates them); `None`: both.
    pub stream: Option<Stream>,
    /// The last shown entry was a `P` part: the next one continues its line and gets no time
    /// of its own (the kubelet's log writer prefixes only a line's first part).
    pub mid_line: bool,
}

impl Render {
    /// Appends what `line` shows, or nothing when it is filtered out.
    pub fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let e = decode(line);
        if self.stream.is_some_and(|s| s != e.stream) {
            return;
        }
        if let Some(since) = self.since
            && e.timestamp().is_some_and(|t| t < since)
        {
            return;
        }
        if self.timestamps
            && !self.mid_line
            && let Some(t) = e.time
        {
            out.extend_from_slice(t.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(e.message);
        if e.full {
            out.push(b'\n');
        }
        self.mid_line = !e.full;
    }

    /// Renders every complete line of `data`; returns how many bytes were consumed (an
    /// incomplete last line is left for the next call).
    pub fn lines(&mut self, data: &[u8], out: &mut Vec<u8>) -> usize {
        let mut used = 0;
        while let Some(nl) = data[used..].iter().position(|b| *b == b'\n') {
            self.line(&data[used..used + nl], out);
            used += nl + 1;
        }
        used
    }
}

/// How long the start of a line waits for its end before it is written as a `P` part, so a
/// prompt or a `printf` without newline shows in `kubectl logs` (containerd's logger waits for
/// the newline however long it takes).
const PARTIAL_FLUSH_MS: i32 = 100;

/// Splits what a pipe delivered into entries: complete lines as `F`, a line that grew past
/// [`MAX_LINE`] as `P` parts; the rest of an unfinished line stays in `pending`.
fn drain(pending: &mut Vec<u8>, stream: Stream, now: jiff::Timestamp, out: &mut Vec<u8>) {
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(nl) if nl <= MAX_LINE => {
                encode(now, stream, true, &rest[..nl], out);
                start += nl + 1;
            }
            _ if rest.len() > MAX_LINE => {
                encode(now, stream, false, &rest[..MAX_LINE], out);
                start += MAX_LINE;
            }
            _ => break,
        }
    }
    pending.drain(..start);
}

/// Errors of `keelson logger`.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("opening {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[source] std::io::Error),
}

/// `keelson logger <file>`: copies the container's stdout (this process' stdin) and stderr
/// (descriptor [`STDERR_FD`]) into `file` as entries, until both are closed (the container
/// and everything that inherited its outputs ended). Blocking; each entry batch is one
/// `write(2)` on an `O_APPEND` file.
pub fn run_logger(file: &Path) -> Result<(), LoggerError> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|source| LoggerError::Open {
            path: file.display().to_string(),
            source,
        })?;
    // SAFETY: descriptors 0 and STDERR_FD were set up by the agent that started this process
    // (stdin and a dup2'd pipe) and nothing else in this process owns them.
    let mut inputs: [(std::fs::File, Stream); 2] = unsafe {
        [
            (OwnedFd::from_raw_fd(0).into(), Stream::Stdout),
            (OwnedFd::from_raw_fd(STDERR_FD).into(), Stream::Stderr),
        ]
    };
    let mut open = [true, true];
    let mut pending = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    while open.iter().any(|o| *o) {
        let mut fds: Vec<libc::pollfd> = inputs
            .iter()
            .zip(open)
            .map(|((fd, _), o)| libc::pollfd {
                fd: if o { fd.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = if pending.iter().any(|p| !p.is_empty()) {
            PARTIAL_FLUSH_MS
        } else {
            -1
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(LoggerError::Io(e));
        }
        let now = jiff::Timestamp::now();
        if n == 0 {
            // Idle with a line unfinished: what there is becomes a part.
            for (i, (_, stream)) in inputs.iter().enumerate() {
                if !pending[i].is_empty() {
                    encode(now, *stream, false, &pending[i], &mut out);
                    pending[i].clear();
                }
            }
        }
        for (i, p) in fds.iter().enumerate() {
            if p.fd < 0 || p.revents == 0 {
                continue;
            }
            let (f, stream) = &mut inputs[i];
            match f.read(&mut buf) {
                Ok(0) | Err(_) => {
                    open[i] = false;
                    // What an ended output left unfinished is its last line.
                    if !pending[i].is_empty() {
                        pending[i].push(b'\n');
                    }
                }
                Ok(n) => pending[i].extend_from_slice(&buf[..n]),
            }
            drain(&mut pending[i], *stream, now, &mut out);
        }
        if !out.is_empty() {
            log.write_all(&out).map_err(LoggerError::Io)?;
            out.clear();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_foreign_lines_are_stdout() {
        let t: jiff::Timestamp = "2026-12-04T10:00:01.5Z".parse().expect("time");
        let mut out = Vec::new();
        encode(t, Stream::Stderr, true, b"oops: a b", &mut out);
        assert_eq!(out, b"2026-12-04T10:00:01.500000000Z stderr F oops: a b\n");
        let e = decode(&out[..out.len() - 1]);
        assert_eq!(e.stream, Stream::Stderr);
        assert_eq!(e.message, b"oops: a b");
        assert_eq!(e.timestamp(), Some(t));
        let raw = decode(b"hello world from before");
        assert_eq!(
            (raw.time, raw.stream, raw.message),
            (None, Stream::Stdout, &b"hello world from before"[..])
        );
        // An empty line keeps its (empty) message.
        assert_eq!(decode(b"2026-12-04T10:00:01.5Z stdout F ").message, b"");
    }

    #[test]
    fn long_lines_are_split_and_joined_again() {
        let now = jiff::Timestamp::now();
        let mut pending = vec![b'x'; MAX_LINE + 10];
        pending.extend_from_slice(b"\nnext");
        let mut out = Vec::new();
        drain(&mut pending, Stream::Stdout, now, &mut out);
        assert_eq!(pending, b"next");
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.lines()
                .next()
                .is_some_and(|l| l.contains(" stdout P "))
        );
        let mut shown = Vec::new();
        let used = Render::default().lines(&out, &mut shown);
        assert_eq!(used, out.len());
        let mut want = vec![b'x'; MAX_LINE + 10];
        want.push(b'\n');
        assert_eq!(shown, want);
    }

    #[test]
    fn rendering_filters_by_time_and_stream_and_prefixes_times() {
        let (t1, t2): (jiff::Timestamp, jiff::Timestamp) = (
            "2026-12-04T10:00:00Z".parse().expect("t1"),
            "2026-12-04T10:00:05Z".parse().expect("t2"),
        );
        let mut log = Vec::new();
        encode(t1, Stream::Stdout, true, b"one", &mut log);
        encode(t2, Stream::Stderr, true, b"two", &mut log);
        log.extend_from_slice(b"2026-12-04T10:00:06Z stdout F thr");
        let mut out = Vec::new();
        let used = Render {
            timestamps: true,
            since: Some("2026-12-04T10:00:01Z".parse().expect("since")),
            ..Render::default()
        }
        .lines(&log, &mut out);
        assert_eq!(out, b"2026-12-04T10:00:05.000000000Z two\n");
        assert!(used < log.len(), "the unfinished line waits");
        let mut out = Vec::new();
        Render {
            stream: Some(Stream::Stdout),
            ..Render::default()
        }
        .lines(&log, &mut out);
        assert_eq!(out, b"one\n");
        // A line written in parts shows its time once.
        let mut log = Vec::new();
        encode(t1, Stream::Stdout, false, b"prompt> ", &mut log);
        encode(t2, Stream::Stdout, true, b"answer", &mut log);
        let mut out = Vec::new();
        Render {
            timestamps: true,
            ..Render::default()
        }
        .lines(&log, &mut out);
        assert_eq!(out, b"2026-12-04T10:00:00.000000000Z prompt> answer\n");
    }
}
