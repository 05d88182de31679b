//! The `policy` benchmark's output: one Markdown table (every figure of every path with its
//! spread over the rounds, ratios to keelson without policy and to the bare veth — of the
//! medians and paired within a round —, keelson's tc programs' time per packet, the cluster
//! part's change times and RSS, and the goals) and one `BENCH_JSON {...}` line that keeps
//! every window and every change time.

use std::time::Duration;

use serde_json::json;

use crate::{
    keelson_mode::HookRun,
    policy::{Mode, Options, Point, Window},
    policy_cluster::{Changes, ClusterFigures},
    run::median,
};

/// The policy count the throughput and connection-rate goals are set at.
pub const GOAL_COUNT: usize = 1000;
pub const GOAL_THROUGHPUT: f64 = 0.97;
pub const GOAL_CONN_RATE: f64 = 0.95;
/// Label change → enforcement, p99 (ms).
pub const GOAL_CHANGE_P99_MS: f64 = 100.0;
pub const GOAL_RSS_MIB: f64 = 64.0;

fn yes_no(ok: bool) -> String {
    if ok { "yes" } else { "NO" }.into()
}

/// `v` with `d` decimals; "-" for NaN.
fn num(v: f64, d: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.d$}")
    }
}

/// `a`'s figure over `b`'s, round by round (rounds both ran in, `b` non-zero).
pub fn paired(a: &Point, b: &Point, f: fn(&Window) -> f64) -> Vec<f64> {
    a.windows
        .iter()
        .filter_map(|wa| {
            let wb = b.windows.iter().find(|wb| wb.round == wa.round)?;
            (f(wb) > 0.0).then(|| f(wa) / f(wb))
        })
        .collect()
}

fn med(p: &Point, f: fn(&Window) -> f64) -> f64 {
    median(p.windows.iter().map(f))
}

fn range(p: &Point, f: fn(&Window) -> f64) -> (f64, f64) {
    p.windows
        .iter()
        .map(f)
        .fold((f64::NAN, f64::NAN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// A program that ran fewer times than this in a window is left out of it: a stray packet
/// (ARP, a late FIN) says nothing of the program's time per packet.
const MIN_RUNS: u64 = 1000;

/// The median of a program's ns per run over the windows it ran in (and its median run
/// count).
fn prog_ns(p: &Point, pick: fn(&Window) -> &[HookRun], name: &str) -> (f64, f64) {
    let runs: Vec<&HookRun> = p
        .windows
        .iter()
        .filter_map(|w| {
            pick(w)
                .iter()
                .find(|h| h.name == name && h.runs >= MIN_RUNS)
        })
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "run counts")]
    let count = median(runs.iter().map(|h| h.runs as f64));
    (median(runs.iter().map(|h| h.ns_per_run())), count)
}

/// The tc programs' run time per connection of the connection windows (the statistics cover
/// the client's whole run, `run_s` seconds at about the window's rate), median of the rounds.
fn tc_ns_per_connection(p: &Point, run_s: f64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds")]
    let per = |w: &Window| {
        let ns: u64 = w.tc_conn.iter().map(|h| h.run_time_ns).sum();
        ns as f64 / (w.conn_rate * run_s)
    };
    median(p.windows.iter().filter(|w| w.conn_rate > 0.0).map(per))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (nearest rank) of sorted durations, ms; NaN for none.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short vector"
    )]
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    ms(sorted[i])
}

struct Row {
    metric: String,
    figure: String,
    vs_zero: String,
    vs_veth: String,
    goal: String,
    met: String,
}

fn row(metric: String, figure: String) -> Row {
    Row {
        metric,
        figure,
        vs_zero: String::new(),
        vs_veth: String::new(),
        goal: String::new(),
        met: String::new(),
    }
}

/// "ratio of the medians / paired median (paired min)".
fn ratio_cell(a: &Point, b: &Point, f: fn(&Window) -> f64) -> (String, f64) {
    let pr = paired(a, b, f);
    let lo = pr.iter().copied().fold(f64::NAN, f64::min);
    let pm = median(pr.iter().copied());
    let mb = med(b, f);
    let of_medians = if mb > 0.0 { med(a, f) / mb } else { f64::NAN };
    (
        format!(
            "{} / {} (min {})",
            num(of_medians, 3),
            num(pm, 3),
            num(lo, 3)
        ),
        pm,
    )
}

/// One rate figure of every path and its goal at [`GOAL_COUNT`] policies.
struct Rate {
    what: String,
    /// Factor to the unit shown.
    scale: f64,
    decimals: usize,
    of: fn(&Window) -> f64,
    /// The least paired median of keelson at [`GOAL_COUNT`] over keelson at 0.
    goal: f64,
    goal_key: &'static str,
}

/// The rows of one rate figure for every path.
fn rate_rows(
    rows: &mut Vec<Row>,
    points: &[Point],
    rounds: usize,
    rate: &Rate,
    goals: &mut serde_json::Map<String, serde_json::Value>,
) {
    let (f, unit_scale, decimals, goal) = (rate.of, rate.scale, rate.decimals, rate.goal);
    let zero = points.iter().find(|p| p.mode == Mode::Keelson(0));
    let veth = points.iter().find(|p| p.mode == Mode::Veth);
    for p in points {
        let (lo, hi) = range(p, f);
        let mut r = row(
            format!(
                "{}, {} (median of {rounds} rounds; min–max)",
                rate.what,
                p.mode.label()
            ),
            format!(
                "{} ({}–{})",
                num(med(p, f) * unit_scale, decimals),
                num(lo * unit_scale, decimals),
                num(hi * unit_scale, decimals)
            ),
        );
        if let Some(z) = zero
            && matches!(p.mode, Mode::Keelson(n) if n > 0)
        {
            let (cell, paired_median) = ratio_cell(p, z, f);
            r.vs_zero = cell;
            if p.mode == Mode::Keelson(GOAL_COUNT) {
                let ok = paired_median >= goal;
                r.goal = format!("≥ {goal:.2}× 0 policies (paired median)");
                r.met = yes_no(ok);
                goals.insert(
                    rate.goal_key.into(),
                    json!({ "value": paired_median, "goal": goal, "met": ok }),
                );
            }
        }
        if let Some(v) = veth
            && p.mode != Mode::Veth
        {
            r.vs_veth = ratio_cell(p, v, f).0;
        }
        rows.push(r);
    }
}

fn change_rows(
    rows: &mut Vec<Row>,
    c: &Changes,
    at: &str,
    goals: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
) {
    let n = c.times.len();
    let p99 = quantile_ms(&c.times, 0.99);
    rows.push(row(
        format!(
            "label change in the API → enforced in the node's maps, {at}: p50 (ms, {n} changes)"
        ),
        num(quantile_ms(&c.times, 0.50), 1),
    ));
    let mut r = row(
        format!("label change in the API → enforced in the node's maps, {at}: p99 / max (ms)"),
        format!(
            "{} / {}",
            num(p99, 1),
            num(c.times.last().map_or(f64::NAN, |d| ms(*d)), 1)
        ),
    );
    let ok = p99 <= GOAL_CHANGE_P99_MS;
    r.goal = format!("p99 ≤ {GOAL_CHANGE_P99_MS:.0} ms");
    r.met = yes_no(ok);
    goals.insert(
        key.into(),
        json!({ "value": p99, "goal": GOAL_CHANGE_P99_MS, "met": ok }),
    );
    rows.push(r);
    rows.push(row(
        format!("… then a connection from the client Pod did what the label asks, {at}"),
        format!("{} of {n}", c.confirmed),
    ));
}

#[expect(clippy::cast_precision_loss, reason = "KiB to MiB")]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn window_json(w: &Window) -> serde_json::Value {
    let hooks = |h: &[HookRun]| {
        h.iter()
            .map(|h| json!({ "name": h.name, "runs": h.runs, "run_time_ns": h.run_time_ns }))
            .collect::<Vec<_>>()
    };
    json!({
        "round": w.round,
        "slot": w.slot,
        "stream_bytes_per_s": w.stream_bps,
        "conn_rate": w.conn_rate,
        "p50_us": w.p50_us,
        "p99_us": w.p99_us,
        "connections": w.connections,
        "errors": w.errors,
        "tc_stream": hooks(&w.tc_stream),
        "tc_conn": hooks(&w.tc_conn),
        "sock_conn": hooks(&w.sock_conn),
    })
}

fn changes_json(c: &Changes) -> serde_json::Value {
    json!({
        "change_ms": c.times.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "confirmed": c.confirmed,
        "unconfirmed": c.unconfirmed,
    })
}

/// Prints the table and the JSON line.
pub fn print(opts: &Options, points: &[Point], cluster: &Result<ClusterFigures, String>) {
    let mut rows = Vec::new();
    let mut goals = serde_json::Map::new();
    let throughput = Rate {
        what: "TCP throughput, one stream (Gbit/s)".into(),
        scale: 8e-9,
        decimals: 2,
        of: |w| w.stream_bps,
        goal: GOAL_THROUGHPUT,
        goal_key: "throughput_1000_vs_0",
    };
    let conn_rate = Rate {
        what: format!("new TCP connections/s, {} threads", opts.threads),
        scale: 1.0,
        decimals: 0,
        of: |w| w.conn_rate,
        goal: GOAL_CONN_RATE,
        goal_key: "conn_rate_1000_vs_0",
    };
    for rate in [throughput, conn_rate] {
        rate_rows(&mut rows, points, opts.rounds, &rate, &mut goals);
    }
    for p in points {
        #[expect(clippy::cast_precision_loss, reason = "microseconds")]
        let (p50, p99) = (med(p, |w| w.p50_us as f64), med(p, |w| w.p99_us as f64));
        let errors: u64 = p.windows.iter().map(|w| w.errors).sum();
        let mut figure = format!("{} / {}", num(p50, 0), num(p99, 0));
        if errors > 0 {
            figure.push_str(&format!(" ({errors} failed connections)"));
        }
        rows.push(row(
            format!(
                "connect p50 / p99 (µs, medians of the rounds), {}",
                p.mode.label()
            ),
            figure,
        ));
    }
    for p in points.iter().filter(|p| matches!(p.mode, Mode::Keelson(_))) {
        let cell = |pick: fn(&Window) -> &[HookRun]| {
            crate::policy_stats::TC_PROGRAMS
                .iter()
                .filter_map(|name| {
                    let (ns, runs) = prog_ns(p, pick, name);
                    (!ns.is_nan()).then(|| format!("{name} {ns:.0} ({runs:.0} runs)"))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push(row(
            format!(
                "keelson tc programs, ns per packet in the connection windows (median), {}",
                p.mode.label()
            ),
            cell(|w| &w.tc_conn),
        ));
        rows.push(row(
            format!(
                "keelson tc programs, ns per packet in the stream windows (median), {}",
                p.mode.label()
            ),
            cell(|w| &w.tc_stream),
        ));
        let (warmup, duration) = opts.window_ms();
        #[expect(clippy::cast_precision_loss, reason = "milliseconds")]
        let run_s = (warmup + duration) as f64 / 1e3;
        let zero = points.iter().find(|z| z.mode == Mode::Keelson(0));
        let per_conn = tc_ns_per_connection(p, run_s);
        let mut figure = num(per_conn, 0);
        if let Some(z) = zero
            && z.mode != p.mode
        {
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            #[expect(clippy::cast_precision_loss, reason = "a CPU count")]
            let cpu_ns = 1e9 * cpus as f64 / med(p, |w| w.conn_rate);
            let extra = per_conn - tc_ns_per_connection(z, run_s);
            figure.push_str(&format!(
                " ({:+.0} vs 0 policies: {:+.2}% of the {:.0} ns of CPU a connection takes)",
                extra,
                100.0 * extra / cpu_ns,
                cpu_ns
            ));
        }
        rows.push(row(
            format!(
                "keelson tc programs per new connection (ns, median of the rounds), {}",
                p.mode.label()
            ),
            figure,
        ));
        if let Some(t) = p.program {
            rows.push(row(
                format!(
                    "{} policies compiled and written from nothing (ms; policy map entries)",
                    match p.mode {
                        Mode::Keelson(n) => n,
                        _ => 0,
                    }
                ),
                format!("{:.1} ({})", ms(t), p.entries),
            ));
        }
    }
    match cluster {
        Ok(c) => {
            change_rows(
                &mut rows,
                &c.small,
                "1 policy, 2 Pods",
                &mut goals,
                "change_p99_small",
            );
            rows.push(row(
                format!(
                    "{} more NetworkPolicies and {} Pods on a Node without agent, created through the API, 32 in flight (s)",
                    opts.cluster.policies.saturating_sub(1),
                    opts.cluster.pods
                ),
                format!("{:.1}", c.load_writes.as_secs_f64()),
            ));
            rows.push(row(
                "… → all in the node's maps (s; policy / ipcache entries)".into(),
                format!(
                    "{:.1} ({} / {})",
                    c.load.as_secs_f64(),
                    c.policy_entries,
                    c.ipcache_entries
                ),
            ));
            let at = format!(
                "{} policies, {} Pods",
                opts.cluster.policies,
                opts.cluster.pods + 2
            );
            change_rows(&mut rows, &c.large, &at, &mut goals, "change_p99_large");
            rows.push(row(
                "agent RSS, 1 policy and 2 Pods (MiB)".into(),
                format!("{:.1}", mib(c.rss_kib_small)),
            ));
            let ok = mib(c.rss_kib_large).max(mib(c.rss_kib_after)) <= GOAL_RSS_MIB;
            let mut r = row(
                format!("agent RSS, {at} (MiB; after the changes; peak VmHWM of the run)"),
                format!(
                    "{:.1} ({:.1}; {:.1})",
                    mib(c.rss_kib_large),
                    mib(c.rss_kib_after),
                    mib(c.hwm_kib)
                ),
            );
            r.goal = format!("≤ {GOAL_RSS_MIB:.0} MiB");
            r.met = yes_no(ok);
            goals.insert(
                "rss_large".into(),
                json!({ "value": mib(c.rss_kib_large).max(mib(c.rss_kib_after)), "goal": GOAL_RSS_MIB, "met": ok }),
            );
            rows.push(r);
        }
        Err(e) => rows.push(row("cluster part".into(), format!("not measured: {e}"))),
    }

    println!();
    println!(
        "| metric | figure | vs keelson, 0 policies: of the medians / paired median (min) | vs bare veth: of the medians / paired median (min) | goal | met? |"
    );
    println!("|---|---:|---:|---:|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.metric, r.figure, r.vs_zero, r.vs_veth, r.goal, r.met
        );
    }
    for (what, c) in cluster
        .iter()
        .flat_map(|c| [("1 policy", &c.small), ("large", &c.large)])
    {
        for u in &c.unconfirmed {
            println!("\nunconfirmed ({what}): {u}");
        }
    }
    let (warmup, duration) = opts.window_ms();
    let json = json!({
        "bench": "policy",
        "rounds": opts.rounds,
        "quick": opts.quick,
        "threads": opts.threads,
        "warmup_ms": warmup,
        "window_ms": duration,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "paths": points.iter().map(|p| json!({
            "mode": p.mode.tag(),
            "program_ms": p.program.map(ms),
            "policy_entries": p.entries,
            "windows": p.windows.iter().map(window_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "cluster": match cluster {
            Ok(c) => json!({
                "policies": opts.cluster.policies,
                "remote_pods": opts.cluster.pods,
                "small": changes_json(&c.small),
                "large": changes_json(&c.large),
                "load_writes_ms": ms(c.load_writes),
                "load_ms": ms(c.load),
                "policy_entries": c.policy_entries,
                "ipcache_entries": c.ipcache_entries,
                "rss_kib_small": c.rss_kib_small,
                "rss_kib_large": c.rss_kib_large,
                "rss_kib_after": c.rss_kib_after,
                "hwm_kib": c.hwm_kib,
            }),
            Err(e) => json!({ "error": e }),
        },
        "goals": goals,
    });
    println!("\nBENCH_JSON {json}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(mode: Mode, rates: &[f64]) -> Point {
        Point {
            mode,
            program: None,
            entries: 0,
            windows: rates
                .iter()
                .enumerate()
                .map(|(round, &r)| Window {
                    round,
                    stream_bps: r,
                    conn_rate: r / 2.0,
                    ..Window::default()
                })
                .collect(),
        }
    }

    #[test]
    fn ratios_pair_rounds_and_judge_the_paired_median() {
        // The machine slows down in round 1; the paired ratio stays 0.98.
        let zero = point(Mode::Keelson(0), &[100.0, 50.0, 100.0]);
        let big = point(Mode::Keelson(1000), &[98.0, 49.0, 98.0]);
        let pr = paired(&big, &zero, |w| w.stream_bps);
        assert!(pr.iter().all(|r| (r - 0.98).abs() < 1e-9), "{pr:?}");
        let (cell, pm) = ratio_cell(&big, &zero, |w| w.conn_rate);
        assert!((pm - 0.98).abs() < 1e-9);
        assert_eq!(cell, "0.980 / 0.980 (min 0.980)");
        let mut rows = Vec::new();
        let mut goals = serde_json::Map::new();
        let rate = Rate {
            what: "x".into(),
            scale: 1.0,
            decimals: 0,
            of: |w| w.stream_bps,
            goal: 0.97,
            goal_key: "g",
        };
        rate_rows(&mut rows, &[zero, big], 3, &rate, &mut goals);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].met, "yes");
        assert_eq!(goals["g"]["met"], true);
        assert_eq!(rows[0].vs_zero, "");
    }

    #[test]
    fn change_quantiles_are_nearest_rank() {
        let t: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&t, 0.5), 50.0);
        assert_eq!(quantile_ms(&t, 0.99), 99.0);
        assert!(quantile_ms(&[], 0.5).is_nan());
    }
}
