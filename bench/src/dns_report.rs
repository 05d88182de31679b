//! The DNS bench's figures: dnsperf's output parsed (its summary and, with `-v`, one latency
//! per answer), medians over the rounds, the table with keelson's ratio to dnsmasq and the
//! goals, and the `BENCH_JSON` line.

use anyhow::{Context as _, Result};
use serde_json::json;

use crate::dns::Options;

/// What one dnsperf window measured.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub qps: f64,
    pub completed: u64,
    pub lost: u64,
    pub noerror: u64,
    /// Seconds, one per answer (only with `-v`), sorted.
    pub latencies: Vec<f64>,
}

impl Window {
    /// The 99th percentile latency in milliseconds (nearest rank); NaN without latencies.
    pub fn p99_ms(&self) -> f64 {
        percentile(&self.latencies, 0.99) * 1000.0
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// dnsperf 2.x's output: `Queries completed:`, `Queries lost:`, `Queries per second:`, the
/// NOERROR count of `Response codes:`, and `> RCODE name type latency` lines from `-v`.
pub fn parse_dnsperf(text: &str) -> Result<Window> {
    let mut w = Window::default();
    let mut seen_qps = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("> ") {
            if let Some(lat) = rest.split_whitespace().last().and_then(|l| l.parse().ok()) {
                w.latencies.push(lat);
            }
        } else if let Some(rest) = line.strip_prefix("Queries per second:") {
            w.qps = rest.trim().parse().context("queries per second")?;
            seen_qps = true;
        } else if let Some(rest) = line.strip_prefix("Queries completed:") {
            w.completed = first_number(rest)?;
        } else if let Some(rest) = line.strip_prefix("Queries lost:") {
            w.lost = first_number(rest)?;
        } else if let Some(rest) = line.strip_prefix("Response codes:") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            w.noerror = words
                .windows(2)
                .find(|p| p[0] == "NOERROR")
                .and_then(|p| p[1].parse().ok())
                .unwrap_or(0);
        }
    }
    anyhow::ensure!(
        seen_qps,
        "no `Queries per second` in dnsperf's output:\n{text}"
    );
    w.latencies.sort_by(f64::total_cmp);
    Ok(w)
}

fn first_number(text: &str) -> Result<u64> {
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no number in {text:?}"))
}

/// Every window of both servers: (saturating, paced) per round.
#[derive(Debug, Default)]
pub struct Measured {
    pub keelson: Vec<(Window, Window)>,
    pub dnsmasq: Vec<(Window, Window)>,
}

impl Measured {
    pub fn push(&mut self, who: &str, full: Window, paced: Window) {
        if who == "keelson" {
            self.keelson.push((full, paced));
        } else {
            self.dnsmasq.push((full, paced));
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians over the rounds of one server: rate, p99 at saturation, p99 paced, lost queries.
#[derive(Debug, Clone, Copy)]
struct Summary {
    qps: f64,
    p99_full: f64,
    p99_paced: f64,
    lost: u64,
}

fn summary(windows: &[(Window, Window)]) -> Summary {
    Summary {
        qps: median(windows.iter().map(|(f, _)| f.qps).collect()),
        p99_full: median(windows.iter().map(|(f, _)| f.p99_ms()).collect()),
        p99_paced: median(windows.iter().map(|(_, p)| p.p99_ms()).collect()),
        lost: windows.iter().map(|(f, p)| f.lost + p.lost).sum(),
    }
}

/// The DNS part of `bench pods`: the same medians as [`render`] as one report section.
pub fn section(opts: &Options, m: &Measured) -> crate::pods::Section {
    use crate::pods::{Row, Section};
    let k = summary(&m.keelson);
    let d = summary(&m.dnsmasq);
    let ratio = k.qps / d.qps;
    let met = |ok: bool| if ok { "yes" } else { "NO" }.to_owned();
    let rows = vec![
        Row {
            metric: format!(
                "DNS queries/s ({} Services, -q {})",
                opts.services, opts.outstanding
            ),
            keelson: format!("{:.0}", k.qps),
            baseline: format!("{:.0}", d.qps),
            ratio: format!("{ratio:.2}"),
            goal: "keelson >= 1x dnsmasq".into(),
            met: met(ratio >= 1.0),
        },
        Row {
            metric: format!("DNS p99 (ms, paced at {} q/s)", opts.paced_qps),
            keelson: format!("{:.3}", k.p99_paced),
            baseline: format!("{:.3}", d.p99_paced),
            ratio: format!("{:.2}", k.p99_paced / d.p99_paced),
            goal: "keelson <= 2 ms".into(),
            met: met(k.p99_paced <= 2.0),
        },
        Row {
            metric: "DNS p99 (ms, saturating)".into(),
            keelson: format!("{:.3}", k.p99_full),
            baseline: format!("{:.3}", d.p99_full),
            ratio: format!("{:.2}", k.p99_full / d.p99_full),
            ..Row::default()
        },
        Row {
            metric: "DNS queries lost".into(),
            keelson: k.lost.to_string(),
            baseline: d.lost.to_string(),
            ..Row::default()
        },
    ];
    Section {
        key: "dns",
        title: format!(
            "DNS, `keelson dns` vs dnsmasq, dnsperf on loopback, {} rounds of {} s (medians)",
            opts.rounds, opts.seconds
        ),
        baseline: "dnsmasq",
        rows,
        json: json!({
            "services": opts.services,
            "keelson_qps": k.qps.round(),
            "dnsmasq_qps": d.qps.round(),
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "keelson_p99_paced_ms": k.p99_paced,
            "dnsmasq_p99_paced_ms": d.p99_paced,
            "keelson_p99_ms": k.p99_full,
            "dnsmasq_p99_ms": d.p99_full,
            "keelson_lost": k.lost,
            "dnsmasq_lost": d.lost,
        }),
    }
}

/// The table and the `BENCH_JSON` line.
pub fn render(opts: &Options, m: &Measured, rss_kib: Option<(u64, u64)>) -> String {
    let k = summary(&m.keelson);
    let d = summary(&m.dnsmasq);
    let ratio = k.qps / d.qps;
    let mut out = String::new();
    out.push_str(&format!(
        "\nDNS: {} Service A records, dnsperf on loopback, {} rounds of {} s per server \
         (medians); saturating: -q {} -c {}; paced: -Q {}\n\n",
        opts.services, opts.rounds, opts.seconds, opts.outstanding, opts.clients, opts.paced_qps
    ));
    out.push_str("| server | queries/s | p99 saturating (ms) | p99 paced (ms) | lost |\n");
    out.push_str("| --- | ---: | ---: | ---: | ---: |\n");
    for (name, s) in [("keelson dns", k), ("dnsmasq", d)] {
        out.push_str(&format!(
            "| {name} | {:.0} | {:.3} | {:.3} | {} |\n",
            s.qps, s.p99_full, s.p99_paced, s.lost
        ));
    }
    let rate_ok = ratio >= 1.0;
    let p99_ok = k.p99_paced <= 2.0;
    out.push_str(&format!(
        "\nkeelson / dnsmasq queries/s: {ratio:.2}x (goal >= 1x: {}); keelson p99 paced {:.3} ms \
         (goal <= 2 ms: {})\n",
        if rate_ok { "met" } else { "missed" },
        k.p99_paced,
        if p99_ok { "met" } else { "missed" },
    ));
    if let Some((kr, dr)) = rss_kib {
        out.push_str(&format!(
            "RSS after the run: keelson dns {} KiB, dnsmasq {} KiB\n",
            kr, dr
        ));
    }
    let j = json!({
        "bench": "dns",
        "services": opts.services,
        "rounds": opts.rounds,
        "seconds": opts.seconds,
        "keelson_qps": k.qps.round(),
        "dnsmasq_qps": d.qps.round(),
        "ratio": (ratio * 1000.0).round() / 1000.0,
        "keelson_p99_ms": k.p99_full,
        "dnsmasq_p99_ms": d.p99_full,
        "keelson_p99_paced_ms": k.p99_paced,
        "dnsmasq_p99_paced_ms": d.p99_paced,
        "paced_qps": opts.paced_qps,
        "keelson_lost": k.lost,
        "dnsmasq_lost": d.lost,
        "rate_goal_met": rate_ok,
        "p99_goal_met": p99_ok,
    });
    out.push_str(&format!("BENCH_JSON {j}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "DNS Performance Testing Tool
[Status] Sending queries (to 127.0.0.1:25353)
> NOERROR a.b.svc.cluster.local A 0.000116
> NOERROR a.b.svc.cluster.local A 0.000051
> NXDOMAIN c.b.svc.cluster.local A 0.002000
Statistics:

  Queries sent:         3
  Queries completed:    3 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 2 (66.67%), NXDOMAIN 1 (33.33%)
  Run time (s):         3.000332
  Queries per second:   116361.455999
";

    #[test]
    fn parses_dnsperf_summary_and_latencies() {
        let w = parse_dnsperf(OUTPUT).expect("parse");
        assert_eq!(w.completed, 3);
        assert_eq!(w.lost, 0);
        assert_eq!(w.noerror, 2);
        assert!((w.qps - 116_361.455_999).abs() < 1e-6);
        assert_eq!(w.latencies, vec![0.000051, 0.000116, 0.002]);
        assert!((w.p99_ms() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn output_without_a_rate_is_an_error() {
        assert!(parse_dnsperf("[Status] nothing\n").is_err());
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.99).is_nan());
    }
}
