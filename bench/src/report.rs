//! The benchmark's output: a Markdown table with every figure (rates and latencies as medians
//! over the rounds, the rates' spread, keelson's ratios of the medians and ratios paired within
//! a round to kube-proxy's modes and to the direct mode, the limit) and the goals, keelson's socket hook run time per connect from the kernel's BPF
//! statistics, and one `BENCH_JSON {...}` line for scripts, which keeps every window.

use std::process::Command;

use keelson_common::names;
use serde_json::json;

use crate::{
    api_latency::ApiFigures,
    keelson_mode::HookRun,
    run::{Mode, Options, Point, median, paired_ratios},
};

fn tool_version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn get(points: &[Point], mode: Mode, size: usize) -> Option<&Point> {
    points.iter().find(|p| p.mode == mode && p.size == size)
}

/// `a / b` with two decimals; "-" when either was not measured (NaN), "n/a" without a rate.
fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() {
        "-".into()
    } else if b > 0.0 && a.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

/// `v` with `decimals` decimals, halves rounded away from zero as in the JSON line (a median
/// of two windows often ends in .5); "-" for a figure not measured (NaN).
fn num(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "-".to_string()
    } else {
        let scale = 10f64.powi(i32::try_from(decimals).unwrap_or(0));
        format!("{:.decimals$}", (v * scale).round() / scale)
    }
}

/// The lowest and the median of `values`; NaNs for none.
fn min_median(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::NAN, f64::min);
    (lo, median(values.iter().copied()))
}

/// The share of the per-connection CPU budget that the hook's extra ns at the larger size
/// take: `(ns_large - ns_small) / (1e9 ns x cpus / rate)`, where `rate` (connections/s)
/// is keelson's median at the larger size, whose client and server load every CPU.
fn budget_share(ns_large: f64, ns_small: f64, rate: f64, cpus: usize) -> f64 {
    (ns_large - ns_small) / cpu_ns_per_connection(rate, cpus)
}

/// The CPU time per connection: `1e9 ns x cpus / rate`; NaN without a rate.
fn cpu_ns_per_connection(rate: f64, cpus: usize) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "a CPU count")]
    let cpus = cpus as f64;
    if rate > 0.0 {
        1e9 * cpus / rate
    } else {
        f64::NAN
    }
}

/// The table's columns after the metric, in order: the figure of each mode, then keelson's
/// ratio to each other mode.
const FIGURE_MODES: [Mode; 4] = [Mode::Keelson, Mode::Iptables, Mode::Nftables, Mode::Direct];
const RATIO_MODES: [Mode; 3] = [Mode::Iptables, Mode::Nftables, Mode::Direct];

/// The table's header and alignment lines.
fn header() -> [String; 2] {
    let mut head = "| metric |".to_string();
    let mut align = "|---|".to_string();
    for m in FIGURE_MODES {
        head.push_str(&format!(" {} |", m.name()));
        align.push_str("---:|");
    }
    for m in RATIO_MODES {
        head.push_str(&format!(" keelson/{} |", m.name()));
        align.push_str("---:|");
    }
    head.push_str(" goal | met? |");
    align.push_str("---|---|");
    [head, align]
}

/// One row: metric, a figure per mode, keelson's ratios, goal, met.
#[derive(Debug, Default)]
struct Row {
    metric: String,
    cells: [String; 4],
    ratios: [String; 3],
    goal: String,
    met: String,
}

impl Row {
    /// A row of one figure per mode of [`FIGURE_MODES`] (NaN for a mode not measured), the
    /// ratios computed from them.
    fn figures(metric: String, [k, i, n, d]: [f64; 4], decimals: usize) -> Self {
        Self {
            metric,
            cells: [k, i, n, d].map(|v| num(v, decimals)),
            ratios: [ratio(k, i), ratio(k, n), ratio(k, d)],
            ..Self::default()
        }
    }

    /// A row with keelson's figure only (text).
    fn keelson(metric: String, cell: String) -> Self {
        let mut row = Self {
            metric,
            ..Self::default()
        };
        row.cells[0] = cell;
        row
    }

    fn goal(mut self, goal: &str, ok: bool) -> Self {
        self.goal = goal.into();
        self.met = yes_no(ok);
        self
    }

    fn line(&self) -> String {
        let mut l = format!("| {} |", self.metric);
        for c in self.cells.iter().chain(&self.ratios) {
            l.push_str(&format!(" {c} |"));
        }
        l.push_str(&format!(" {} | {} |", self.goal, self.met));
        l
    }
}

/// keelson's paired ratio to the direct mode (median over the rounds) must be at least this
/// at the smallest and the largest size: the Service translation costs at most 2 % of the
/// rate of connections that need none.
const DIRECT_GOAL: f64 = 0.98;

/// Prints the table and the JSON line.
pub fn print(opts: &Options, points: &[Point], api: &Result<ApiFigures, String>) {
    let mut rows = Vec::new();
    let max = opts.sizes.iter().copied().max().unwrap_or(0);
    let min = opts.sizes.iter().copied().min().unwrap_or(0);
    let mut goals = serde_json::Map::new();
    let mut paired_json = Vec::new();
    let mut ratios_json = Vec::new();
    let mut hook_json = serde_json::Value::Null;
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    for &size in &opts.sizes {
        // A mode left out (`--modes`) shows as "-"; goals comparing with it are not judged.
        let k = get(points, Mode::Keelson, size);
        let i = get(points, Mode::Iptables, size);
        let n = get(points, Mode::Nftables, size);
        let d = get(points, Mode::Direct, size);
        if k.is_none() && i.is_none() && n.is_none() && d.is_none() {
            continue;
        }
        let both = k.is_some() && i.is_some() && n.is_some();
        let figure = |f: fn(&Point) -> f64| {
            [
                k.map_or(f64::NAN, f),
                i.map_or(f64::NAN, f),
                n.map_or(f64::NAN, f),
                d.map_or(f64::NAN, f),
            ]
        };
        let rates = figure(Point::rate);
        let mut row = Row::figures(
            format!(
                "new connections/s, {size} Services (median of {} rounds)",
                opts.rounds
            ),
            rates,
            0,
        );
        if size == max && both {
            let ok = rates[0] >= 3.0 * rates[1] && rates[0] >= rates[2];
            goals.insert("rate_vs_iptables_3x_and_vs_nftables".into(), json!(ok));
            row = row.goal("keelson >= 3x iptables and >= nftables", ok);
        }
        rows.push(row);
        ratios_json.push(json!({
            "services": size,
            "keelson_over_iptables": json_f64(rates[0] / rates[1], 3),
            "keelson_over_nftables": json_f64(rates[0] / rates[2], 3),
            "keelson_over_direct": json_f64(rates[0] / rates[3], 3),
        }));
        let range = |p: Option<&Point>| {
            p.map_or_else(
                || "-".to_string(),
                |p| {
                    let (lo, hi) = p.rate_range();
                    format!("{lo:.0}–{hi:.0}")
                },
            )
        };
        rows.push(Row {
            metric: format!("new connections/s, {size} Services, min–max of the rounds"),
            cells: [range(k), range(i), range(n), range(d)],
            ..Row::default()
        });
        // Ratios of windows of one round, which ran seconds apart.
        let paired = [i, n, d].map(|o| {
            k.zip(o)
                .map(|(k, o)| paired_ratios(k, o))
                .unwrap_or_default()
        });
        let [pi, pn, pd] = paired.each_ref().map(|r| min_median(r));
        let paired = paired.map(|r| r.into_iter().map(|v| json_f64(v, 3)).collect::<Vec<_>>());
        let cell = |(lo, med): (f64, f64)| {
            if med.is_nan() {
                "-".to_string()
            } else {
                format!("{lo:.2} / {med:.2}")
            }
        };
        let mut row = Row {
            metric: format!(
                "new connections/s, {size} Services: keelson / other of the same round, min / median"
            ),
            ratios: [cell(pi), cell(pn), cell(pd)],
            ..Row::default()
        };
        if size == max && both {
            let ok = pi.1 >= 3.0 && pn.1 >= 1.0;
            goals.insert(
                "rate_vs_iptables_3x_and_vs_nftables_paired_median".into(),
                json!(ok),
            );
            row = row.goal("median paired ratios >= 3 and >= 1", ok);
        }
        rows.push(row);
        paired_json.push(json!({
            "services": size,
            "keelson_over_iptables": paired[0],
            "keelson_over_iptables_min": json_f64(pi.0, 3),
            "keelson_over_iptables_median": json_f64(pi.1, 3),
            "keelson_over_nftables": paired[1],
            "keelson_over_nftables_min": json_f64(pn.0, 3),
            "keelson_over_nftables_median": json_f64(pn.1, 3),
            "keelson_over_direct": paired[2],
            "keelson_over_direct_min": json_f64(pd.0, 3),
            "keelson_over_direct_median": json_f64(pd.1, 3),
        }));
        if (size == min || size == max) && k.is_some() && d.is_some() {
            let ok = pd.1 >= DIRECT_GOAL;
            goals.insert(
                format!("rate_vs_direct_paired_median_ge_{DIRECT_GOAL}_at_{size}"),
                json!(ok),
            );
            let mut row = Row {
                metric: format!(
                    "new connections/s, {size} Services: keelson / direct (no Service translation) of the same round, median"
                ),
                ..Row::default()
            }
            .goal(&format!("keelson >= {DIRECT_GOAL}x direct"), ok);
            row.ratios[2] = num(pd.1, 3);
            rows.push(row);
        }
        rows.push(Row::figures(
            format!("connect p50 (us, median of the rounds), {size} Services"),
            figure(Point::p50_us),
            0,
        ));
        rows.push(Row::figures(
            format!("connect p99 (us, median of the rounds), {size} Services"),
            figure(Point::p99_us),
            0,
        ));
        if let Some(k) = k {
            rows.push(Row::keelson(
                format!(
                    "keelson connect4 hook, ns per connect (median of the rounds), {size} Services"
                ),
                num(k.connect4_ns(), 0),
            ));
            for name in k.hooks_ran() {
                if name != names::PROG_CONNECT4 {
                    rows.push(Row::keelson(
                        format!(
                            "keelson {name} hook, ns per run (median of the rounds), {size} Services"
                        ),
                        num(k.hook_ns_per_run(name), 0),
                    ));
                }
            }
        }
        if size == max
            && max != min
            && let Some(k) = k
            && let Some(kmin) = get(points, Mode::Keelson, min)
        {
            let (large, small) = (k.connect4_ns(), kmin.connect4_ns());
            let share = budget_share(large, small, k.rate(), cpus);
            let cell = if share.is_finite() {
                format!(
                    "{} vs {} ({:+.2}%)",
                    num(large, 0),
                    num(small, 0),
                    share * 100.0
                )
            } else {
                "-".to_string()
            };
            rows.push(Row::keelson(
                format!(
                    "keelson connect4 hook at {max} vs {min} Services (ns; difference as a share of the CPU time per connection, 1e9 ns x {cpus} CPUs / keelson's median rate at {max})"
                ),
                cell,
            ));
            hook_json = json!({
                "services": [max, min],
                "connect4_ns_per_run": [json_f64(large, 1), json_f64(small, 1)],
                "cpu_ns_per_connection": json_f64(cpu_ns_per_connection(k.rate(), cpus), 0),
                "difference_share_of_cpu_per_connection": json_f64(share, 5),
            });
        }
        let mut row = Row::figures(
            format!("programming {size} Services from nothing (ms)"),
            figure(|p| p.program.map_or(f64::NAN, |t| t.as_secs_f64() * 1e3)),
            1,
        );
        if size == max
            && let Some(program) = k.and_then(|k| k.program)
        {
            let ok = program.as_secs_f64() <= 2.0;
            goals.insert("full_programming_le_2s".into(), json!(ok));
            row = row.goal("keelson <= 2000 ms", ok);
        }
        rows.push(row);
    }
    for &size in &opts.sizes {
        if let Some(k) = get(points, Mode::Keelson, size)
            && let (Some(p50), Some(max)) = (
                k.change_passes.get(k.change_passes.len() / 2),
                k.change_passes.last(),
            )
        {
            rows.push(Row::keelson(
                format!(
                    "keelson agent pass for one EndpointSlice change at {size} Services (ms, p50 / max of {})",
                    k.change_passes.len()
                ),
                format!(
                    "{:.2} / {:.2}",
                    p50.as_secs_f64() * 1e3,
                    max.as_secs_f64() * 1e3
                ),
            ));
        }
    }
    if max != min {
        // Medians of rounds run minutes apart (different sizes never share a round).
        let rel = |mode| match (get(points, mode, max), get(points, mode, min)) {
            (Some(large), Some(small)) if small.rate() > 0.0 => Some(large.rate() / small.rate()),
            (Some(_), Some(_)) => Some(0.0),
            _ => None,
        };
        if let Some(rel) = rel(Mode::Keelson) {
            let ok = rel >= 0.95;
            goals.insert("keelson_rate_at_max_within_5pct_of_min".into(), json!(ok));
            rows.push(
                Row::keelson(
                    format!("keelson rate, {max} vs {min} Services (ratio of the medians)"),
                    format!("{rel:.3}"),
                )
                .goal(">= 0.95 (within 5%)", ok),
            );
        }
        // What the kernel alone loses between the sizes (the same spread of destination
        // addresses, no Service translation): the part of keelson's drop that is not its own.
        if let Some(rel) = rel(Mode::Direct) {
            let mut row = Row {
                metric: format!(
                    "direct rate, {max} vs {min} Services (ratio of the medians; no Service translation)"
                ),
                ..Row::default()
            };
            row.cells[3] = format!("{rel:.3}");
            rows.push(row);
        }
    }
    let mut api_json = serde_json::Map::new();
    match api {
        Ok(a) => {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            let pct = |p: f64| -> f64 {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss,
                    reason = "an index into 100 samples"
                )]
                let i = ((a.changes.len() as f64 * p).ceil() as usize)
                    .clamp(1, a.changes.len().max(1))
                    - 1;
                a.changes.get(i).copied().map_or(0.0, ms)
            };
            let (p50, p99) = (pct(0.50), pct(0.99));
            #[expect(clippy::cast_precision_loss, reason = "KiB to MiB")]
            let (rss, rss_after) = (
                a.rss_kib_programmed as f64 / 1024.0,
                a.rss_kib_after_changes as f64 / 1024.0,
            );
            rows.push(Row::keelson(
                format!(
                    "{max} Services and EndpointSlices created through the API, {} in flight (ms)",
                    crate::api_latency::CREATE_CONCURRENCY
                ),
                format!("{:.0}", ms(a.api_writes)),
            ));
            let mut row = Row::keelson(
                format!("{max} Services created through the API -> all in the node's maps (ms)"),
                format!("{:.0}", ms(a.create_to_datapath)),
            );
            row.goal = "(API write time included)".into();
            rows.push(row);
            rows.push(Row::keelson(
                "EndpointSlice change in the API -> datapath, p50 (ms)".into(),
                format!("{p50:.1}"),
            ));
            let ok = p99 <= 50.0;
            goals.insert("change_p99_le_50ms".into(), json!(ok));
            rows.push(
                Row::keelson(
                    format!(
                        "EndpointSlice change in the API -> datapath, p99 (ms, {} changes)",
                        a.changes.len()
                    ),
                    format!("{p99:.1}"),
                )
                .goal("<= 50 ms", ok),
            );
            let ok = rss.max(rss_after) <= 64.0;
            goals.insert("agent_rss_le_64mib".into(), json!(ok));
            rows.push(
                Row::keelson(
                    format!("agent RSS at {max} Services (MiB; after the changes)"),
                    format!("{rss:.1} ({rss_after:.1})"),
                )
                .goal("<= 64 MiB", ok),
            );
            api_json.insert("api_writes_ms".into(), json!(ms(a.api_writes).round()));
            api_json.insert(
                "create_to_datapath_ms".into(),
                json!(ms(a.create_to_datapath).round()),
            );
            api_json.insert("change_p50_ms".into(), json!((p50 * 10.0).round() / 10.0));
            api_json.insert("change_p99_ms".into(), json!((p99 * 10.0).round() / 10.0));
            api_json.insert("changes".into(), json!(a.changes.len()));
            api_json.insert(
                "change_ms".into(),
                json!(
                    a.changes
                        .iter()
                        .map(|d| (ms(*d) * 10.0).round() / 10.0)
                        .collect::<Vec<_>>()
                ),
            );
            api_json.insert("agent_rss_kib".into(), json!(a.rss_kib_programmed));
            api_json.insert(
                "agent_rss_kib_after_changes".into(),
                json!(a.rss_kib_after_changes),
            );
        }
        Err(e) => {
            let mut row = Row::keelson(
                "EndpointSlice change in the API -> datapath (p50/p99)".into(),
                format!("not measured: {e}"),
            );
            row.goal = "<= 50 ms p99".into();
            rows.push(row);
            let mut row = Row::keelson(
                format!("agent RSS at {max} Services"),
                "not measured".into(),
            );
            row.goal = "<= 64 MiB".into();
            rows.push(row);
            api_json.insert("error".into(), json!(e));
        }
    }
    println!();
    for line in header() {
        println!("{line}");
    }
    for r in &rows {
        println!("{}", r.line());
    }
    for p in points {
        if p.errors() > 0 {
            println!(
                "note: {} at {} Services had {} failed connections in its {} windows",
                p.mode.name(),
                p.size,
                p.errors(),
                p.windows.len()
            );
        }
    }
    let env = json!({
        "kernel": tool_version("uname", "-r"),
        "iptables": tool_version("iptables", "--version"),
        "nft": tool_version("nft", "--version"),
        "cpus": cpus,
    });
    println!(
        "environment: kernel {}, {}, {}, {} CPUs, {} client threads, {} rounds{}",
        env["kernel"].as_str().unwrap_or(""),
        env["iptables"].as_str().unwrap_or(""),
        env["nft"].as_str().unwrap_or(""),
        env["cpus"],
        opts.threads,
        opts.rounds,
        if opts.quick { ", QUICK windows" } else { "" }
    );
    let pts: Vec<_> = points
        .iter()
        .map(|p| {
            let (lo, hi) = p.rate_range();
            let windows: Vec<_> = p
                .windows
                .iter()
                .map(|w| {
                    json!({
                        "round": w.round,
                        "slot": w.slot,
                        "conn_per_s": w.rate.round(),
                        "connect_p50_us": w.p50_us,
                        "connect_p99_us": w.p99_us,
                        "connections": w.connections,
                        "errors": w.errors,
                        "hooks": w.hooks.iter().map(|h| json!({
                            "name": h.name,
                            "runs": h.runs,
                            "run_time_ns": h.run_time_ns,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "mode": p.mode.name(),
                "services": p.size,
                "conn_per_s": json_f64(p.rate(), 0),
                "conn_per_s_min": json_f64(lo, 0),
                "conn_per_s_max": json_f64(hi, 0),
                "connect_p50_us": json_f64(p.p50_us(), 0),
                "connect_p99_us": json_f64(p.p99_us(), 0),
                "program_ms": p.program.map(|t| (t.as_secs_f64() * 1e4).round() / 10.0),
                "connections": p.windows.iter().map(|w| w.connections).sum::<u64>(),
                "errors": p.errors(),
                "windows": windows,
                "change_pass_us": p.change_passes.iter().map(|d| d.as_micros()).collect::<Vec<_>>(),
                // keelson's connect4 hook per window (null where it did not run) and the median.
                "hook_ns_per_run": p.windows.iter().map(|w| json_f64(w.hook(names::PROG_CONNECT4).map_or(f64::NAN, HookRun::ns_per_run), 1)).collect::<Vec<_>>(),
                "hook_ns_per_run_median": json_f64(p.connect4_ns(), 1),
                "hook_runs": p.windows.iter().map(|w| w.hook(names::PROG_CONNECT4).map_or(0, |h| h.runs)).collect::<Vec<_>>(),
            })
        })
        .collect();
    println!(
        "BENCH_JSON {}",
        json!({
            "bench": "services",
            "quick": opts.quick,
            "threads": opts.threads,
            "rounds": opts.rounds,
            "environment": env,
            "points": pts,
            "paired": paired_json,
            "ratios_of_medians": ratios_json,
            "connect4_hook_max_vs_min": hook_json,
            "goals": goals,
            "api": api_json,
        })
    );
}

/// `v` rounded to `decimals` decimals for the JSON line; null when not measured (NaN).
fn json_f64(v: f64, decimals: i32) -> serde_json::Value {
    if v.is_finite() {
        let scale = 10f64.powi(decimals);
        json!((v * scale).round() / scale)
    } else {
        serde_json::Value::Null
    }
}

fn yes_no(ok: bool) -> String {
    if ok { "yes".into() } else { "NO".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_figures_round_like_the_json_line() {
        assert_eq!(num(46.5, 0), "47");
        assert_eq!(json_f64(46.5, 0), json!(47.0));
        assert_eq!(num(0.125, 2), "0.13");
        assert_eq!(num(f64::NAN, 1), "-");
        assert_eq!(json_f64(f64::NAN, 0), serde_json::Value::Null);
        assert_eq!(min_median(&[2.0, 0.5, 1.5, 3.0]), (0.5, 1.75));
        assert_eq!(ratio(3.0, 0.0), "n/a");
        assert_eq!(ratio(3.0, f64::NAN), "-");
    }

    #[test]
    fn rows_have_a_cell_for_every_column() {
        let [head, align] = header();
        assert_eq!(
            head,
            "| metric | keelson | iptables | nftables | direct | keelson/iptables | keelson/nftables | keelson/direct | goal | met? |"
        );
        let columns = head.matches('|').count();
        assert_eq!(align.matches('|').count(), columns);
        // nftables not measured: its figure and its ratio are "-".
        let row = Row::figures("x".into(), [2.0, 1.0, f64::NAN, 2.5], 0);
        assert_eq!(row.line(), "| x | 2 | 1 | - | 3 | 2.00 | - | 0.80 |  |  |");
        let row = Row::keelson("y".into(), "7".into()).goal("<= 8", true);
        assert_eq!(row.line().matches('|').count(), columns);
        assert!(row.line().ends_with(" <= 8 | yes |"));
    }

    #[test]
    fn hook_difference_is_a_share_of_the_cpu_time_per_connection() {
        // 20,000 connections/s on 2 CPUs: 100,000 ns of CPU per connection; 50 ns more per
        // connect is 0.05% of it.
        let share = budget_share(250.0, 200.0, 20_000.0, 2);
        assert!((share - 0.0005).abs() < 1e-12);
        assert!(budget_share(190.0, 200.0, 20_000.0, 2) < 0.0);
        // No rate or no hook figure: not a number, shown as "-".
        assert!(budget_share(250.0, 200.0, 0.0, 2).is_nan());
        assert_eq!(cpu_ns_per_connection(20_000.0, 2), 100_000.0);
        assert!(budget_share(f64::NAN, 200.0, 20_000.0, 2).is_nan());
    }
}
