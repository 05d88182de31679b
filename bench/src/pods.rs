//! `cargo xtask bench pods`: what a node costs per Pod. The report is a list of sections, each
//! a table with its goals and its part of the one `BENCH_JSON` line: CNI ADD/DEL latency of
//! `keelson cni` against the reference `bridge` + `host-local` plugins
//! ([`pods_cni`](crate::pods_cni)), and the time from `kubectl apply` of a Deployment to all
//! its Pods Ready ([`pods_ready`](crate::pods_ready)), and DNS queries/s and p99 of `keelson dns`
//! against dnsmasq ([`dns`](crate::dns)). Another measurement of the Pods' view
//! of the node is one more [`Section`] pushed in [`run`].

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, ensure};
use serde_json::{Map, Value, json};

use crate::{
    pods_cni::{self, CniFigures, quantile},
    pods_ready::{self, ReadyFigures},
};

/// Goal of issue 11: keelson's CNI ADD p99 at most this share of the bridge plugin's.
pub const GOAL_ADD_P99_RATIO: f64 = 0.5;
/// Goal of issue 11: 100 Pods of a Deployment Ready within this long after `kubectl apply`.
pub const GOAL_READY: Duration = Duration::from_secs(2);

/// What `bench pods` is asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub cni_pods: usize,
    pub replicas: usize,
    pub nodes: u8,
    pub skip_cni: bool,
    pub skip_ready: bool,
    /// The DNS part (`None`: left out).
    pub dns: Option<crate::dns::Options>,
}

/// One table row: the metric, keelson's figure, the baseline's, their ratio, the goal and
/// whether it is met.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub metric: String,
    pub keelson: String,
    pub baseline: String,
    pub ratio: String,
    pub goal: String,
    pub met: String,
}

/// One part of the report.
#[derive(Debug, Clone)]
pub struct Section {
    /// The key of this part in `BENCH_JSON`.
    pub key: &'static str,
    pub title: String,
    pub baseline: &'static str,
    pub rows: Vec<Row>,
    pub json: Value,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn yes_no(ok: bool) -> String {
    if ok { "yes" } else { "NO" }.to_owned()
}

/// The CNI section from the raw latencies.
pub fn cni_section(f: &CniFigures) -> Section {
    let mut rows = Vec::new();
    let mut json = Map::new();
    json.insert("pods".into(), json!(f.pods));
    for (cmd, k, b) in [
        ("ADD", &f.keelson.add, &f.bridge.add),
        ("DEL", &f.keelson.del, &f.bridge.del),
    ] {
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let (kq, bq) = (ms(quantile(k, q)), ms(quantile(b, q)));
            let ratio = if bq > 0.0 { kq / bq } else { f64::NAN };
            let goal = cmd == "ADD" && name == "p99";
            rows.push(Row {
                metric: format!("CNI {cmd} {name} (ms, {} Pods)", f.pods),
                keelson: format!("{kq:.2}"),
                baseline: format!("{bq:.2}"),
                ratio: format!("{ratio:.2}"),
                goal: if goal {
                    format!("keelson <= {GOAL_ADD_P99_RATIO}x bridge")
                } else {
                    String::new()
                },
                met: if goal {
                    yes_no(ratio <= GOAL_ADD_P99_RATIO)
                } else {
                    String::new()
                },
            });
            let key = format!("{}_{name}", cmd.to_lowercase());
            json.insert(
                format!("keelson_{key}_ms"),
                json!((kq * 1000.0).round() / 1000.0),
            );
            json.insert(
                format!("bridge_{key}_ms"),
                json!((bq * 1000.0).round() / 1000.0),
            );
            json.insert(
                format!("{key}_ratio"),
                json!((ratio * 1000.0).round() / 1000.0),
            );
        }
    }
    Section {
        key: "cni",
        title: format!(
            "CNI ADD/DEL latency, `keelson cni` vs `bridge` + `host-local`, {} Pods",
            f.pods
        ),
        baseline: "bridge",
        rows,
        json: Value::Object(json),
    }
}

/// The Deployment section.
pub fn ready_section(f: &ReadyFigures) -> Section {
    let stage = |metric: &str, d: Duration| Row {
        metric: format!("{metric} (ms after kubectl apply, {} replicas)", f.replicas),
        keelson: format!("{:.0}", ms(d)),
        ..Row::default()
    };
    let mut rows = vec![
        stage("all Pods created", f.created),
        stage("all Pods scheduled", f.scheduled),
        stage("all Pods with an IP", f.addressed),
    ];
    let mut ready = stage("all Pods Ready", f.ready);
    let goal = f.replicas == 100;
    if goal {
        ready.goal = format!("<= {} ms", GOAL_READY.as_millis());
        ready.met = yes_no(f.ready <= GOAL_READY);
    }
    rows.push(ready);
    Section {
        key: "deployment",
        title: format!(
            "Deployment of {} replicas on a {}-node `keelson up` cluster",
            f.replicas, f.nodes
        ),
        baseline: "",
        rows,
        json: json!({
            "replicas": f.replicas,
            "nodes": f.nodes,
            "created_ms": ms(f.created).round(),
            "scheduled_ms": ms(f.scheduled).round(),
            "addressed_ms": ms(f.addressed).round(),
            "ready_ms": ms(f.ready).round(),
        }),
    }
}

/// The Markdown tables of all sections and the `BENCH_JSON` line.
pub fn render(sections: &[Section]) -> String {
    let mut out = String::new();
    let mut all = Map::new();
    for s in sections {
        out.push_str(&format!("### {}\n\n", s.title));
        let base = if s.baseline.is_empty() {
            "-"
        } else {
            s.baseline
        };
        out.push_str(&format!(
            "| metric | keelson | {base} | keelson/{base} | goal | met? |\n|---|---:|---:|---:|---|---|\n"
        ));
        for r in &s.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.metric, r.keelson, r.baseline, r.ratio, r.goal, r.met
            ));
        }
        out.push('\n');
        all.insert(s.key.into(), s.json.clone());
    }
    out.push_str(&format!(
        "BENCH_JSON {}\n",
        json!({"bench": "pods", "sections": all})
    ));
    out
}

/// Runs every section asked for and prints the report.
pub fn run(opts: &Options, keelson_bin: PathBuf) -> Result<()> {
    ensure!(
        !(opts.skip_cni && opts.skip_ready && opts.dns.is_none()),
        "nothing to measure: both parts are skipped"
    );
    let mut sections = Vec::new();
    if !opts.skip_cni {
        let f = pods_cni::measure(opts.cni_pods, &keelson_bin)?;
        sections.push(cni_section(&f));
    }
    if !opts.skip_ready {
        let f = pods_ready::measure(opts.replicas, opts.nodes, &keelson_bin)?;
        sections.push(ready_section(&f));
    }
    if let Some(dns) = &opts.dns {
        let (measured, _) = crate::dns::measure(dns)?;
        sections.push(crate::dns_report::section(dns, &measured));
    }
    print!("{}", render(&sections));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods_cni::Calls;

    #[test]
    fn ratios_goals_and_json_come_from_the_samples() {
        let ms = |v: u64| Duration::from_millis(v);
        let f = CniFigures {
            pods: 100,
            keelson: Calls {
                add: (1..=100).map(ms).collect(),
                del: vec![ms(1); 100],
            },
            bridge: Calls {
                add: (1..=100).map(|v| ms(v * 4)).collect(),
                del: vec![ms(2); 100],
            },
        };
        let s = cni_section(&f);
        let p99 = s
            .rows
            .iter()
            .find(|r| r.metric.starts_with("CNI ADD p99"))
            .expect("row");
        assert_eq!(p99.keelson, "99.00");
        assert_eq!(p99.baseline, "396.00");
        assert_eq!(p99.ratio, "0.25");
        assert_eq!(p99.met, "yes");
        assert_eq!(s.json["del_p50_ratio"], json!(0.5));
        let r = ready_section(&ReadyFigures {
            replicas: 100,
            nodes: 2,
            created: ms(300),
            scheduled: ms(400),
            addressed: ms(1500),
            ready: ms(2500),
        });
        assert_eq!(r.rows.last().expect("ready").met, "NO");
        let text = render(&[s, r]);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("BENCH_JSON "))
            .expect("json line");
        let v: Value = serde_json::from_str(line).expect("json");
        assert_eq!(v["sections"]["deployment"]["ready_ms"], json!(2500.0));
        assert_eq!(v["sections"]["cni"]["add_p99_ratio"], json!(0.25));
    }
}
