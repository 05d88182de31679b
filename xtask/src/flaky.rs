//! Runs of the test suite and what failed in them: `cargo test`'s output is passed through as
//! it comes and read line by line for the test binary being run, each test that failed and the
//! first lines of its panic, so that `cargo xtask test --repeat N` can say which tests failed in
//! which of N runs.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    process::Command,
};

use anyhow::{Context as _, Result};

/// How many lines of a failure's output the report keeps.
const DETAIL_LINES: usize = 4;

/// What one run of the suite printed that matters to the report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SuiteRun {
    /// Failed tests: (test binary, test name) → the first lines of what it printed.
    pub failed: BTreeMap<(String, String), Vec<String>>,
    /// Test binaries that failed without naming a test (a crash, a signal, a build error).
    pub broken: Vec<String>,
    /// Tests that passed, summed over the binaries' `test result:` lines.
    pub passed: u64,
}

/// Runs `cmd` (a `cargo test`), passing its output through, and reads what failed.
pub fn run_suite(cmd: &mut Command) -> Result<SuiteRun> {
    eprintln!("+ {cmd:?}");
    // One pipe for both streams keeps cargo's "Running <binary>" lines (stderr) in order with
    // the test binaries' results (stdout).
    let (reader, writer) = std::io::pipe().context("pipe")?;
    let mut child = cmd
        .stdout(writer.try_clone().context("pipe")?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    // The parent's copies of the write end go with `cmd`'s, so the reader sees the end.
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut parser = Parser::default();
    let mut out = std::io::stdout();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading cargo test's output")?;
        let _ = writeln!(out, "{line}");
        parser.line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    let mut run = parser.finish();
    if !status.success() && run.failed.is_empty() && run.broken.is_empty() {
        run.broken.push(format!("cargo test ({status})"));
    }
    Ok(run)
}

/// Reads `cargo test` output one line at a time.
#[derive(Debug, Default)]
struct Parser {
    run: SuiteRun,
    /// The test binary whose output is being read.
    binary: String,
    /// The failed test whose captured output is being read, and how many lines are kept.
    detail: Option<(String, String)>,
}

impl Parser {
    fn line(&mut self, line: &str) {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            self.binary = binary_name(rest);
            self.detail = None;
            return;
        }
        if let Some(krate) = trimmed.strip_prefix("Doc-tests ") {
            self.binary = format!("doc-tests {krate}");
            self.detail = None;
            return;
        }
        if let Some(name) = trimmed
            .strip_prefix("test ")
            .and_then(|r| r.strip_suffix(" ... FAILED"))
        {
            self.run
                .failed
                .entry((self.binary.clone(), name.to_string()))
                .or_default();
            return;
        }
        if let Some(name) = trimmed
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            let key = (self.binary.clone(), name.to_string());
            self.detail = self.run.failed.contains_key(&key).then_some(key);
            return;
        }
        if let Some(rest) = trimmed.strip_prefix("test result: ") {
            self.detail = None;
            self.run.passed += count_before(rest, " passed");
            return;
        }
        if trimmed == "failures:" {
            self.detail = None;
            return;
        }
        if let Some(what) = trimmed.strip_prefix("error: test failed, to rerun pass ") {
            // A binary that exits non-zero after naming its failed tests is already counted;
            // one that crashed (a signal, an abort) names none.
            let named = self.run.failed.keys().any(|(b, _)| *b == self.binary);
            if !named {
                self.run
                    .broken
                    .push(format!("{} ({})", self.binary, what.trim_matches('`')));
            }
            return;
        }
        if let Some(key) = &self.detail
            && !trimmed.is_empty()
            && let Some(lines) = self.run.failed.get_mut(key)
            && lines.len() < DETAIL_LINES
        {
            lines.push(trimmed.to_string());
        }
    }

    fn finish(self) -> SuiteRun {
        self.run
    }
}

/// `unittests src/lib.rs (target/debug/deps/keelson_control-0123abcd)` → `keelson_control`;
/// `tests/cli.rs (target/debug/deps/cli-0123abcd)` → `cli`.
fn binary_name(running: &str) -> String {
    let path = running
        .rsplit_once(" (")
        .map(|(_, p)| p.trim_end_matches(')'))
        .unwrap_or(running);
    let file = path.rsplit('/').next().unwrap_or(path);
    match file.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
        _ => file.to_string(),
    }
}

/// `ok. 12 passed; 0 failed; ...` → 12 for `" passed"`.
fn count_before(text: &str, word: &str) -> u64 {
    text.split(';')
        .find_map(|part| {
            let part = part
                .trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ");
            part.strip_suffix(word.trim_start())
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Every failure over several runs of the suite.
#[derive(Debug, Default)]
pub struct Failures {
    /// (binary, test) → the runs it failed in, and the detail of its first failure.
    tests: BTreeMap<(String, String), (Vec<u32>, Vec<String>)>,
    /// A binary that failed without naming a test → the runs it did so in.
    broken: BTreeMap<String, Vec<u32>>,
    /// Tests passed in each run.
    passed: Vec<(u32, u64)>,
}

impl Failures {
    pub fn record(&mut self, run_no: u32, run: &SuiteRun) {
        for (key, detail) in &run.failed {
            let entry = self
                .tests
                .entry(key.clone())
                .or_insert_with(|| (Vec::new(), detail.clone()));
            entry.0.push(run_no);
        }
        for b in &run.broken {
            self.broken.entry(b.clone()).or_default().push(run_no);
        }
        self.passed.push((run_no, run.passed));
    }

    pub fn is_empty(&self) -> bool {
        self.tests.is_empty() && self.broken.is_empty()
    }

    /// The summary: each failed test with the runs it failed in, or that none failed.
    pub fn report(&self, runs: u32) -> String {
        let passed: Vec<String> = self.passed.iter().map(|(_, n)| n.to_string()).collect();
        let mut out = format!(
            "xtask test: {runs} run(s); tests passed per run: {}\n",
            passed.join(", ")
        );
        if self.is_empty() {
            out.push_str(&format!("no test failed in {runs} run(s)"));
            return out;
        }
        for ((binary, test), (in_runs, detail)) in &self.tests {
            out.push_str(&format!(
                "FAILED {binary} {test}: in {} of {runs} run(s) (run {})\n",
                in_runs.len(),
                list(in_runs)
            ));
            for l in detail {
                out.push_str(&format!("    {l}\n"));
            }
        }
        for (binary, in_runs) in &self.broken {
            out.push_str(&format!(
                "FAILED {binary} without naming a test: in {} of {runs} run(s) (run {})\n",
                in_runs.len(),
                list(in_runs)
            ));
        }
        out.trim_end().to_string()
    }
}

fn list(runs: &[u32]) -> String {
    runs.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
   Compiling keelson v0.1.0
    Finished `test` profile [unoptimized + debuginfo] target(s) in 0.20s
     Running unittests src/lib.rs (target/debug/deps/keelson_control-3f2a9c0d1e4b5a67)

running 3 tests
test store::tests::get ... ok
test controllers::loop_tests::reconcile ... FAILED
test api::tests::list ... ok

failures:

---- controllers::loop_tests::reconcile stdout ----

thread 'controllers::loop_tests::reconcile' panicked at control/src/controllers/loop_tests.rs:69:10:
node status: 409 the object has been modified
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    controllers::loop_tests::reconcile

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.52s

error: test failed, to rerun pass `-p keelson-control --lib`
     Running tests/e2e_cluster.rs (target/debug/deps/e2e_cluster-0a1b2c3d4e5f6789)

running 1 test
error: test failed, to rerun pass `--test e2e_cluster`

Caused by:
  process didn't exit successfully (signal: 9, SIGKILL: kill)
     Running tests/cli.rs (target/debug/deps/cli-00112233aabbccdd)

running 5 tests
test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
";

    fn parse(text: &str) -> SuiteRun {
        let mut p = Parser::default();
        for l in text.lines() {
            p.line(l);
        }
        p.finish()
    }

    #[test]
    fn reads_failed_tests_crashed_binaries_and_counts() {
        let run = parse(OUTPUT);
        let key = (
            "keelson_control".to_string(),
            "controllers::loop_tests::reconcile".to_string(),
        );
        assert_eq!(run.failed.keys().collect::<Vec<_>>(), vec![&key]);
        assert_eq!(
            run.failed[&key][..2],
            [
                "thread 'controllers::loop_tests::reconcile' panicked at control/src/controllers/loop_tests.rs:69:10:",
                "node status: 409 the object has been modified",
            ]
        );
        assert_eq!(run.broken, ["e2e_cluster (--test e2e_cluster)"]);
        assert_eq!(run.passed, 7);
    }

    #[test]
    fn report_names_each_failure_with_its_runs() {
        let mut f = Failures::default();
        f.record(1, &parse(OUTPUT));
        f.record(2, &parse("test result: ok. 9 passed; 0 failed;\n"));
        f.record(3, &parse(OUTPUT));
        assert!(!f.is_empty());
        let report = f.report(3);
        assert!(
            report.contains(
                "FAILED keelson_control controllers::loop_tests::reconcile: in 2 of 3 run(s) (run 1, 3)"
            ),
            "{report}"
        );
        assert!(
            report.contains(
                "FAILED e2e_cluster (--test e2e_cluster) without naming a test: in 2 of 3 run(s)"
            ),
            "{report}"
        );
        assert!(report.contains("tests passed per run: 7, 9, 7"), "{report}");
    }

    #[test]
    fn a_clean_series_says_so() {
        let mut f = Failures::default();
        f.record(1, &parse("test result: ok. 4 passed; 0 failed;\n"));
        assert!(f.is_empty());
        assert!(f.report(1).ends_with("no test failed in 1 run(s)"));
    }

    #[test]
    fn binary_names_drop_the_hash() {
        assert_eq!(
            binary_name("unittests src/main.rs (target/debug/deps/xtask-0123456789abcdef)"),
            "xtask"
        );
        assert_eq!(
            binary_name("tests/e2e_nodeport.rs (target/debug/deps/e2e_nodeport-fedcba9876543210)"),
            "e2e_nodeport"
        );
    }
}
