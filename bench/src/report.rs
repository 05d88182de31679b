//! The benchmark's output: a Markdown table with every figure, the ratios and the goals, and
//! one `BENCH_JSON {...}` line for scripts.

use std::{process::Command, time::Duration};

use serde_json::json;

use crate::{
    api_latency::ApiFigures,
    run::{Mode, Options, Point},
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

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

/// One row: metric, the three figures, both ratios, goal, met.
struct Row {
    metric: String,
    k: f64,
    i: f64,
    n: f64,
    decimals: usize,
    goal: String,
    met: String,
}

/// Prints the table and the JSON line.
pub fn print(opts: &Options, points: &[Point], api: &Result<ApiFigures, String>) {
    let mut rows = Vec::new();
    let max = opts.sizes.iter().copied().max().unwrap_or(0);
    let min = opts.sizes.iter().copied().min().unwrap_or(0);
    let mut goals = serde_json::Map::new();
    let mut passes = Vec::new();
    for &size in &opts.sizes {
        let Some(k) = get(points, Mode::Keelson, size) else {
            continue;
        };
        // A mode left out (`--modes`) shows as "-"; goals comparing with it are not judged.
        let missing = Point {
            mode: Mode::Iptables,
            size,
            program: Duration::ZERO,
            rate: f64::NAN,
            p50_us: 0,
            p99_us: 0,
            connections: 0,
            errors: 0,
            change_passes: Vec::new(),
        };
        let both = get(points, Mode::Iptables, size).is_some()
            && get(points, Mode::Nftables, size).is_some();
        let i = get(points, Mode::Iptables, size).unwrap_or(&missing);
        let n = get(points, Mode::Nftables, size).unwrap_or(&missing);
        let (goal, met) = if size == max && both {
            let ok = k.rate >= 3.0 * i.rate && k.rate >= n.rate;
            goals.insert("rate_vs_iptables_3x_and_vs_nftables".into(), json!(ok));
            (
                "keelson >= 3x iptables and >= nftables".to_string(),
                yes_no(ok),
            )
        } else {
            (String::new(), String::new())
        };
        rows.push(Row {
            metric: format!("new connections/s, {size} Services"),
            k: k.rate,
            i: i.rate,
            n: n.rate,
            decimals: 0,
            goal,
            met,
        });
        #[expect(clippy::cast_precision_loss, reason = "microseconds")]
        for (label, f) in [
            (
                "connect p50 (us)",
                (|p: &Point| p.p50_us as f64) as fn(&Point) -> f64,
            ),
            ("connect p99 (us)", |p: &Point| p.p99_us as f64),
        ] {
            let f = |p: &Point| if p.rate.is_nan() { f64::NAN } else { f(p) };
            rows.push(Row {
                metric: format!("{label}, {size} Services"),
                k: f(k),
                i: f(i),
                n: f(n),
                decimals: 0,
                goal: String::new(),
                met: String::new(),
            });
        }
        let ms = |p: &Point| {
            if p.rate.is_nan() {
                f64::NAN
            } else {
                p.program.as_secs_f64() * 1e3
            }
        };
        let (goal, met) = if size == max {
            let ok = k.program.as_secs_f64() <= 2.0;
            goals.insert("full_programming_le_2s".into(), json!(ok));
            ("keelson <= 2000 ms".to_string(), yes_no(ok))
        } else {
            (String::new(), String::new())
        };
        rows.push(Row {
            metric: format!("programming {size} Services from nothing (ms)"),
            k: ms(k),
            i: ms(i),
            n: ms(n),
            decimals: 1,
            goal,
            met,
        });
        if let (Some(p50), Some(max)) = (
            k.change_passes.get(k.change_passes.len() / 2),
            k.change_passes.last(),
        ) {
            passes.push(format!(
                "| keelson agent pass for one EndpointSlice change at {size} Services (ms, p50 / max of {}) | {:.2} / {:.2} | | | | | | |",
                k.change_passes.len(),
                p50.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            ));
        }
    }
    println!();
    println!(
        "| metric | keelson | iptables | nftables | keelson/iptables | keelson/nftables | goal | met? |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    for r in &rows {
        let d = r.decimals;
        let cell = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.d$}")
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.metric,
            cell(r.k),
            cell(r.i),
            cell(r.n),
            ratio(r.k, r.i),
            ratio(r.k, r.n),
            r.goal,
            r.met
        );
    }
    for line in &passes {
        println!("{line}");
    }
    if let (Some(kmax), Some(kmin)) = (
        get(points, Mode::Keelson, max),
        get(points, Mode::Keelson, min),
    ) && max != min
    {
        let rel = if kmin.rate > 0.0 {
            kmax.rate / kmin.rate
        } else {
            0.0
        };
        let ok = rel >= 0.95;
        goals.insert("keelson_rate_at_max_within_5pct_of_min".into(), json!(ok));
        println!(
            "| keelson rate, {max} vs {min} Services | {:.3} | | | | | >= 0.95 (within 5%) | {} |",
            rel,
            yes_no(ok)
        );
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
            println!(
                "| {max} Services and EndpointSlices created through the API, {} in flight (ms) | {:.0} | | | | | | |",
                crate::api_latency::CREATE_CONCURRENCY,
                ms(a.api_writes)
            );
            println!(
                "| {max} Services created through the API -> all in the node's maps (ms) | {:.0} | | | | | (API write time included) | |",
                ms(a.create_to_datapath)
            );
            println!(
                "| EndpointSlice change in the API -> datapath, p50 (ms) | {p50:.1} | | | | | | |"
            );
            let ok = p99 <= 50.0;
            goals.insert("change_p99_le_50ms".into(), json!(ok));
            println!(
                "| EndpointSlice change in the API -> datapath, p99 (ms, {} changes) | {p99:.1} | | | | | <= 50 ms | {} |",
                a.changes.len(),
                yes_no(ok)
            );
            let ok = rss.max(rss_after) <= 64.0;
            goals.insert("agent_rss_le_64mib".into(), json!(ok));
            println!(
                "| agent RSS at {max} Services (MiB; after the changes) | {rss:.1} ({rss_after:.1}) | | | | | <= 64 MiB | {} |",
                yes_no(ok)
            );
            api_json.insert("api_writes_ms".into(), json!(ms(a.api_writes).round()));
            api_json.insert(
                "create_to_datapath_ms".into(),
                json!(ms(a.create_to_datapath).round()),
            );
            api_json.insert("change_p50_ms".into(), json!((p50 * 10.0).round() / 10.0));
            api_json.insert("change_p99_ms".into(), json!((p99 * 10.0).round() / 10.0));
            api_json.insert("changes".into(), json!(a.changes.len()));
            api_json.insert("agent_rss_kib".into(), json!(a.rss_kib_programmed));
            api_json.insert(
                "agent_rss_kib_after_changes".into(),
                json!(a.rss_kib_after_changes),
            );
        }
        Err(e) => {
            println!(
                "| EndpointSlice change in the API -> datapath (p50/p99) | not measured: {e} | | | | | <= 50 ms p99 | |"
            );
            println!("| agent RSS at {max} Services | not measured | | | | | <= 64 MiB | |");
            api_json.insert("error".into(), json!(e));
        }
    }
    for (mode, p) in points.iter().map(|p| (p.mode, p)) {
        if p.errors > 0 {
            println!(
                "note: {} at {} Services had {} failed connections in the window",
                mode.name(),
                p.size,
                p.errors
            );
        }
    }
    let env = json!({
        "kernel": tool_version("uname", "-r"),
        "iptables": tool_version("iptables", "--version"),
        "nft": tool_version("nft", "--version"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    println!(
        "environment: kernel {}, {}, {}, {} CPUs, {} client threads{}",
        env["kernel"].as_str().unwrap_or(""),
        env["iptables"].as_str().unwrap_or(""),
        env["nft"].as_str().unwrap_or(""),
        env["cpus"],
        opts.threads,
        if opts.quick { ", QUICK windows" } else { "" }
    );
    let pts: Vec<_> = points
        .iter()
        .map(|p| {
            json!({
                "mode": p.mode.name(),
                "services": p.size,
                "conn_per_s": p.rate.round(),
                "connect_p50_us": p.p50_us,
                "connect_p99_us": p.p99_us,
                "program_ms": (p.program.as_secs_f64() * 1e4).round() / 10.0,
                "connections": p.connections,
                "errors": p.errors,
                "change_pass_us": p.change_passes.iter().map(|d| d.as_micros()).collect::<Vec<_>>(),
            })
        })
        .collect();
    println!(
        "BENCH_JSON {}",
        json!({
            "bench": "services",
            "quick": opts.quick,
            "threads": opts.threads,
            "environment": env,
            "points": pts,
            "goals": goals,
            "api": api_json,
        })
    );
}

fn yes_no(ok: bool) -> String {
    if ok { "yes".into() } else { "NO".into() }
}
