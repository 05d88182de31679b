//! The `api` benchmark's figures and output: the statistics (rates, nearest-rank
//! percentiles, ratios), the goals of issue 10, one Markdown table with every figure, its
//! goal and its ratio to etcd, and one `BENCH_JSON {...}` line that keeps every sample.

use std::time::Duration;

use serde_json::json;

/// Creates/s at 64 clients (with 0 errors).
pub const GOAL_CREATES_64: f64 = 5000.0;
/// Services/s over ConfigMaps/s, both at 64 clients.
pub const GOAL_SERVICE_RATIO: f64 = 0.5;
/// Idle RSS after the large create-and-delete over the idle RSS before it.
pub const GOAL_RSS_RATIO: f64 = 1.5;

/// One timed batch of writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Concurrent clients, each with its own connection.
    pub clients: usize,
    /// Writes attempted.
    pub attempted: usize,
    /// Writes that failed.
    pub errors: usize,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// The first error, as the server or the client worded it.
    pub first_error: Option<String>,
}

impl Batch {
    /// Writes that succeeded per second.
    pub fn rate(&self) -> f64 {
        rate(self.attempted - self.errors, self.elapsed)
    }
}

/// `n` per second over `d`; NaN for an empty window.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
pub fn rate(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        f64::NAN
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// `a / b`; NaN when either is not a positive finite number.
pub fn ratio(a: f64, b: f64) -> f64 {
    if a.is_finite() && b.is_finite() && b > 0.0 && a >= 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `samples`; None when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort();
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank between 1 and the sample count"
    )]
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// The kill -9 check: writes acknowledged before the server was killed, and how many of them
/// the restarted server does not have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durability {
    pub clients: usize,
    pub acknowledged: usize,
    /// Requests that failed once the server was gone (expected: they were never acknowledged).
    pub failed_at_kill: usize,
    pub missing: usize,
    /// The first few missing names.
    pub missing_names: Vec<String>,
}

/// Repeated full lists of one collection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lists {
    pub objects: usize,
    /// Bytes of one list answer.
    pub bytes: usize,
    pub samples: Vec<Duration>,
}

/// Watch fan-out: every watcher sees every event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fanout {
    pub watchers: usize,
    /// Events each watcher had to receive.
    pub events: usize,
    /// From the first write to the last watcher's last event.
    pub elapsed: Duration,
    /// How long the writes alone took.
    pub writes: Duration,
}

impl Fanout {
    /// Events delivered per second, summed over the watchers.
    pub fn delivered_rate(&self) -> f64 {
        rate(self.watchers * self.events, self.elapsed)
    }
}

/// The server's resident set around a large create-and-delete (KiB).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    pub objects: usize,
    pub idle_before_kib: u64,
    pub loaded_kib: u64,
    pub idle_after_kib: u64,
    /// The idle samples after the delete, one a second, the last one reported.
    pub after_samples_kib: Vec<u64>,
    pub create: Batch,
    pub delete: Batch,
}

impl Memory {
    #[expect(clippy::cast_precision_loss, reason = "KiB counts")]
    pub fn after_over_before(&self) -> f64 {
        ratio(self.idle_after_kib as f64, self.idle_before_kib as f64)
    }
}

/// Everything one run measured. A part left out (or failed) is None.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub quick: bool,
    /// keelson's creates at each client count.
    pub keelson: Vec<Batch>,
    /// etcd's creates (the same workload, straight to the store) at each client count.
    pub etcd: Vec<Batch>,
    pub durability: Option<Durability>,
    pub generate_name: Option<Batch>,
    pub configmaps: Option<Batch>,
    pub services: Option<Batch>,
    pub lists: Option<Lists>,
    pub fanout: Option<Fanout>,
    pub memory: Option<Memory>,
    /// Parts that failed, with why.
    pub failures: Vec<String>,
}

fn num(v: f64, d: usize) -> String {
    if v.is_finite() {
        format!("{v:.d$}")
    } else {
        "-".into()
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

#[expect(clippy::cast_precision_loss, reason = "KiB counts")]
fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// "yes", "NO", or "-" when the figure is missing.
fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    }
}

impl Figures {
    fn etcd_at(&self, clients: usize) -> Option<&Batch> {
        self.etcd.iter().find(|b| b.clients == clients)
    }

    fn keelson_at(&self, clients: usize) -> Option<&Batch> {
        self.keelson.iter().find(|b| b.clients == clients)
    }

    /// Services/s over ConfigMaps/s.
    pub fn service_ratio(&self) -> f64 {
        match (&self.services, &self.configmaps) {
            (Some(s), Some(c)) => ratio(s.rate(), c.rate()),
            _ => f64::NAN,
        }
    }

    /// Whether each goal is met (None: not measured).
    pub fn goals(&self) -> Vec<(&'static str, String, Option<bool>)> {
        let at64 = self.keelson_at(64);
        let svc = self.service_ratio();
        let mem = self.memory.as_ref().map(Memory::after_over_before);
        vec![
            (
                "creates/s at 64 clients, 0 errors",
                format!("≥ {GOAL_CREATES_64:.0}"),
                at64.map(|b| b.errors == 0 && b.rate() >= GOAL_CREATES_64),
            ),
            (
                "acknowledged writes lost to kill -9",
                "0".into(),
                self.durability.as_ref().map(|d| d.missing == 0),
            ),
            (
                "generateName creates at 64 clients: errors",
                "0".into(),
                self.generate_name.as_ref().map(|b| b.errors == 0),
            ),
            (
                "Services/s ÷ ConfigMaps/s at 64 clients",
                format!("≥ {GOAL_SERVICE_RATIO}"),
                svc.is_finite().then_some(svc >= GOAL_SERVICE_RATIO),
            ),
            (
                "idle RSS after delete ÷ idle RSS before",
                format!("≤ {GOAL_RSS_RATIO}"),
                mem.filter(|r| r.is_finite()).map(|r| r <= GOAL_RSS_RATIO),
            ),
        ]
    }

    /// The Markdown table (figures, ratios to etcd, goals).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |cells: &[String]| {
            out.push_str("| ");
            out.push_str(&cells.join(" | "));
            out.push_str(" |\n");
        };
        row(&[
            "figure".into(),
            "keelson".into(),
            "etcd 3.4".into(),
            "keelson ÷ etcd".into(),
            "goal".into(),
            "met".into(),
        ]);
        row(&vec!["---".into(); 6]);
        let goals = self.goals();
        let goal = |i: usize| (goals[i].1.clone(), verdict(goals[i].2).to_owned());
        let mut clients: Vec<usize> = self
            .keelson
            .iter()
            .chain(&self.etcd)
            .map(|b| b.clients)
            .collect();
        clients.sort_unstable();
        clients.dedup();
        for c in clients {
            let k = self.keelson_at(c);
            let e = self.etcd_at(c);
            let cell = |b: Option<&Batch>| {
                b.map_or_else(
                    || "-".into(),
                    |b| {
                        format!(
                            "{} ({} of {} failed)",
                            num(b.rate(), 0),
                            b.errors,
                            b.attempted
                        )
                    },
                )
            };
            let (g, met) = if c == 64 {
                goal(0)
            } else {
                ("".into(), "".into())
            };
            row(&[
                format!(
                    "ConfigMap creates/s, {c} client{}",
                    if c == 1 { "" } else { "s" }
                ),
                cell(k),
                cell(e),
                num(
                    ratio(
                        k.map_or(f64::NAN, Batch::rate),
                        e.map_or(f64::NAN, Batch::rate),
                    ),
                    2,
                ),
                g,
                met,
            ]);
        }
        if let Some(d) = &self.durability {
            let (g, met) = goal(1);
            row(&[
                format!(
                    "kill -9 during creates at {} clients: acknowledged writes missing after restart",
                    d.clients
                ),
                format!(
                    "{} of {} (+{} unacknowledged)",
                    d.missing, d.acknowledged, d.failed_at_kill
                ),
                "".into(),
                "".into(),
                g,
                met,
            ]);
        }
        if let Some(b) = &self.generate_name {
            let (g, met) = goal(2);
            row(&[
                format!(
                    "{} generateName creates at {} clients: errors (creates/s)",
                    b.attempted, b.clients
                ),
                format!("{} ({})", b.errors, num(b.rate(), 0)),
                "".into(),
                "".into(),
                g,
                met,
            ]);
        }
        for (what, b) in [
            ("ConfigMaps", &self.configmaps),
            ("Services", &self.services),
        ] {
            if let Some(b) = b {
                row(&[
                    format!("{} {what} at {} clients: creates/s", b.attempted, b.clients),
                    format!("{} ({} failed)", num(b.rate(), 0), b.errors),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                ]);
            }
        }
        if self.services.is_some() && self.configmaps.is_some() {
            let (g, met) = goal(3);
            row(&[
                "Services/s ÷ ConfigMaps/s".into(),
                num(self.service_ratio(), 2),
                "".into(),
                "".into(),
                g,
                met,
            ]);
        }
        if let Some(l) = &self.lists {
            row(&[
                format!(
                    "full list of {} ConfigMaps ({} KiB), p50 / p99 ms over {}",
                    l.objects,
                    l.bytes / 1024,
                    l.samples.len()
                ),
                format!(
                    "{} / {}",
                    ms(percentile(&l.samples, 50.0)),
                    ms(percentile(&l.samples, 99.0))
                ),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        if let Some(f) = &self.fanout {
            row(&[
                format!(
                    "watch fan-out: {} events to {} watchers, events/s delivered (writes took {:.2} s)",
                    f.events,
                    f.watchers,
                    f.writes.as_secs_f64()
                ),
                num(f.delivered_rate(), 0),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        if let Some(m) = &self.memory {
            let (g, met) = goal(4);
            row(&[
                "server RSS idle before the load, MiB".into(),
                mib(m.idle_before_kib),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
            row(&[
                format!(
                    "server RSS with {} ConfigMaps, MiB (created at {}/s, {} clients)",
                    m.objects,
                    num(m.create.rate(), 0),
                    m.create.clients
                ),
                mib(m.loaded_kib),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
            row(&[
                format!(
                    "server RSS idle after deleting them, MiB (deleted at {}/s)",
                    num(m.delete.rate(), 0)
                ),
                mib(m.idle_after_kib),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
            row(&[
                "RSS after ÷ RSS before".into(),
                num(m.after_over_before(), 2),
                "".into(),
                "".into(),
                g,
                met,
            ]);
        }
        out
    }

    /// The `BENCH_JSON` object.
    pub fn json(&self) -> serde_json::Value {
        let batch = |b: &Batch| {
            json!({
                "clients": b.clients,
                "attempted": b.attempted,
                "errors": b.errors,
                "seconds": b.elapsed.as_secs_f64(),
                "per_second": finite(b.rate()),
                "first_error": b.first_error,
            })
        };
        let secs = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
        json!({
            "bench": "api",
            "quick": self.quick,
            "creates": {
                "keelson": self.keelson.iter().map(batch).collect::<Vec<_>>(),
                "etcd": self.etcd.iter().map(batch).collect::<Vec<_>>(),
                "keelson_over_etcd": self.keelson.iter().map(|k| json!({
                    "clients": k.clients,
                    "ratio": finite(ratio(
                        k.rate(),
                        self.etcd_at(k.clients).map_or(f64::NAN, Batch::rate),
                    )),
                })).collect::<Vec<_>>(),
            },
            "durability": self.durability.as_ref().map(|d| json!({
                "clients": d.clients,
                "acknowledged": d.acknowledged,
                "failed_at_kill": d.failed_at_kill,
                "missing": d.missing,
                "missing_names": d.missing_names,
            })),
            "generate_name": self.generate_name.as_ref().map(batch),
            "configmaps": self.configmaps.as_ref().map(batch),
            "services": self.services.as_ref().map(batch),
            "services_over_configmaps": finite(self.service_ratio()),
            "list": self.lists.as_ref().map(|l| json!({
                "objects": l.objects,
                "bytes": l.bytes,
                "p50_seconds": percentile(&l.samples, 50.0).map(|d| d.as_secs_f64()),
                "p99_seconds": percentile(&l.samples, 99.0).map(|d| d.as_secs_f64()),
                "samples_seconds": secs(&l.samples),
            })),
            "watch_fanout": self.fanout.as_ref().map(|f| json!({
                "watchers": f.watchers,
                "events": f.events,
                "seconds": f.elapsed.as_secs_f64(),
                "write_seconds": f.writes.as_secs_f64(),
                "delivered_per_second": finite(f.delivered_rate()),
            })),
            "memory": self.memory.as_ref().map(|m| json!({
                "objects": m.objects,
                "idle_before_kib": m.idle_before_kib,
                "loaded_kib": m.loaded_kib,
                "idle_after_kib": m.idle_after_kib,
                "after_samples_kib": m.after_samples_kib,
                "after_over_before": finite(m.after_over_before()),
                "create": batch(&m.create),
                "delete": batch(&m.delete),
            })),
            "goals": self.goals().iter().map(|(what, goal, met)| json!({
                "figure": what, "goal": goal, "met": met,
            })).collect::<Vec<_>>(),
            "failures": self.failures,
        })
    }
}

/// JSON has no NaN: a missing figure is null.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(clients: usize, attempted: usize, errors: usize, secs: u64) -> Batch {
        Batch {
            clients,
            attempted,
            errors,
            elapsed: Duration::from_secs(secs),
            first_error: None,
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let s = ms(&[5, 1, 4, 2, 3]);
        assert_eq!(percentile(&s, 50.0), Some(Duration::from_millis(3)));
        assert_eq!(percentile(&s, 99.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&s, 20.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&s, 21.0), Some(Duration::from_millis(2)));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(
            percentile(&ms(&hundred), 99.0),
            Some(Duration::from_millis(99))
        );
        assert_eq!(
            percentile(&ms(&hundred), 100.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(percentile(&ms(&[7]), 1.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn rates_count_only_successes_and_ratios_refuse_missing_figures() {
        assert!((batch(8, 1000, 100, 3).rate() - 300.0).abs() < 1e-9);
        assert!(batch(8, 0, 0, 0).rate().is_nan());
        assert!((ratio(3.0, 4.0) - 0.75).abs() < 1e-12);
        assert!(ratio(1.0, 0.0).is_nan());
        assert!(ratio(f64::NAN, 1.0).is_nan());
        let f = Fanout {
            watchers: 100,
            events: 500,
            elapsed: Duration::from_secs(2),
            writes: Duration::from_secs(1),
        };
        assert!((f.delivered_rate() - 25_000.0).abs() < 1e-9);
    }

    fn full() -> Figures {
        Figures {
            quick: false,
            keelson: vec![
                batch(1, 100, 0, 1),
                batch(8, 800, 0, 1),
                batch(64, 12_000, 0, 2),
            ],
            etcd: vec![
                batch(1, 400, 0, 1),
                batch(8, 1600, 0, 1),
                batch(64, 8000, 0, 1),
            ],
            durability: Some(Durability {
                clients: 64,
                acknowledged: 900,
                failed_at_kill: 64,
                missing: 0,
                missing_names: vec![],
            }),
            generate_name: Some(batch(64, 80_000, 3, 10)),
            configmaps: Some(batch(64, 10_000, 0, 2)),
            services: Some(batch(64, 10_000, 0, 5)),
            lists: Some(Lists {
                objects: 10_000,
                bytes: 4 << 20,
                samples: (1..=10).map(Duration::from_millis).collect(),
            }),
            fanout: Some(Fanout {
                watchers: 100,
                events: 1000,
                elapsed: Duration::from_secs(4),
                writes: Duration::from_secs(1),
            }),
            memory: Some(Memory {
                objects: 100_000,
                idle_before_kib: 40 << 10,
                loaded_kib: 300 << 10,
                idle_after_kib: 50 << 10,
                after_samples_kib: vec![60 << 10, 50 << 10],
                create: batch(64, 100_000, 0, 20),
                delete: batch(64, 100_000, 0, 25),
            }),
            failures: vec![],
        }
    }

    #[test]
    fn goals_follow_the_figures() {
        let f = full();
        let met: Vec<Option<bool>> = f.goals().iter().map(|g| g.2).collect();
        // 6,000/s at 64; nothing lost; 3 generateName errors; 2,000/s vs 5,000/s; 1.25×.
        assert_eq!(
            met,
            [Some(true), Some(true), Some(false), Some(false), Some(true)]
        );
        assert!((f.service_ratio() - 0.4).abs() < 1e-12);
        let mut errs = full();
        errs.keelson[2].errors = 1;
        assert_eq!(errs.goals()[0].2, Some(false));
        let none = Figures::default();
        assert!(none.goals().iter().all(|g| g.2.is_none()));
    }

    #[test]
    fn table_has_every_figure_with_its_ratio_and_json_keeps_the_samples() {
        let f = full();
        let t = f.table();
        // keelson 12,000/2 s = 6,000/s vs etcd 8,000/s.
        assert!(t.contains("| ConfigMap creates/s, 64 clients | 6000 (0 of 12000 failed) | 8000 (0 of 8000 failed) | 0.75 | ≥ 5000 | yes |"), "{t}");
        assert!(t.contains("| ConfigMap creates/s, 1 client | 100 (0 of 100 failed) | 400 (0 of 400 failed) | 0.25 |"), "{t}");
        assert!(
            t.contains("| Services/s ÷ ConfigMaps/s | 0.40 |  |  | ≥ 0.5 | NO |"),
            "{t}"
        );
        assert!(t.contains("p50 / p99 ms over 10 | 5.0 / 10.0 |"), "{t}");
        assert!(t.contains("| RSS after ÷ RSS before | 1.25 |"), "{t}");
        assert!(t.contains("| 0 of 900 (+64 unacknowledged) |"), "{t}");
        assert_eq!(
            t.lines().filter(|l| l.starts_with('|')).count(),
            t.lines().count()
        );
        let j = f.json();
        assert_eq!(j["creates"]["keelson_over_etcd"][2]["ratio"], 0.75);
        assert_eq!(
            j["list"]["samples_seconds"].as_array().map(Vec::len),
            Some(10)
        );
        assert_eq!(j["memory"]["after_over_before"], 1.25);
        assert_eq!(j["goals"][2]["met"], false);
        // A missing figure is null, never NaN (which JSON cannot carry).
        let empty = Figures::default().json();
        assert!(empty["services_over_configmaps"].is_null());
        assert!(serde_json::to_string(&empty).is_ok());
    }
}
