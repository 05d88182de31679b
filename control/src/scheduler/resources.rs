//! Resource arithmetic for scheduling: Kubernetes quantities ("250m", "1.5", "128Mi", "1e3")
//! parsed to integers, a Pod's effective requests and a Node's allocatable.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// CPU in millicores, memory in bytes, and a Pod count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu_milli: i64,
    /// Bytes.
    pub memory: i64,
    /// Pods.
    pub pods: i64,
}

impl Resources {
    /// Component-wise sum.
    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli + o.cpu_milli,
            memory: self.memory + o.memory,
            pods: self.pods + o.pods,
        }
    }

    /// Component-wise difference (to take back what [`Resources::plus`] added).
    pub fn minus(self, o: Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli - o.cpu_milli,
            memory: self.memory - o.memory,
            pods: self.pods - o.pods,
        }
    }
}

/// Parses a quantity into thousandths of its unit (so "250m" CPU is 250 and "1Ki" is 1_024_000),
/// rounding up like Kubernetes' `MilliValue`. None for malformed quantities.
pub fn parse_milli(q: &str) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let v = (num * mult * 1000.0).ceil();
    (v.is_finite() && v.abs() < 9.2e18).then_some(v as i64)
}

/// CPU quantity in millicores.
pub fn cpu_milli(q: &Quantity) -> Option<i64> {
    parse_milli(&q.0)
}

/// Memory (or any plain) quantity in units, rounded up.
pub fn units(q: &Quantity) -> Option<i64> {
    parse_milli(&q.0).map(|m| (m + 999).div_euclid(1000))
}

/// Requests the scheduler assumes for a container that sets none, when scoring only
/// (Kubernetes' `DefaultMilliCPURequest` and `DefaultMemoryRequest`).
pub const DEFAULT_CPU_MILLI: i64 = 100;
/// See [`DEFAULT_CPU_MILLI`].
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

fn container_requests(c: &Container, non_zero: bool) -> Resources {
    let r = c.resources.as_ref();
    // A limit without a request is the request (API defaulting does this in Kubernetes).
    let get = |name: &str| {
        r.and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(name))
            .or_else(|| r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(name)))
    };
    let cpu = get("cpu").and_then(cpu_milli);
    let mem = get("memory").and_then(units);
    Resources {
        cpu_milli: cpu.unwrap_or(if non_zero { DEFAULT_CPU_MILLI } else { 0 }),
        memory: mem.unwrap_or(if non_zero { DEFAULT_MEMORY } else { 0 }),
        pods: 0,
    }
}

/// What a Pod asks for: the sum of its containers, or the largest init container when that is
/// more, plus the Pod overhead; and one Pod. With `non_zero`, unset requests count as the
/// scoring defaults.
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            pods: 1,
            ..Default::default()
        };
    };
    let sum = spec.containers.iter().fold(Resources::default(), |a, c| {
        a.plus(container_requests(c, non_zero))
    });
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_requests(c, false));
    let (mut cpu, mut mem) = (sum.cpu_milli, sum.memory);
    for i in init {
        cpu = cpu.max(i.cpu_milli);
        mem = mem.max(i.memory);
    }
    let overhead = spec.overhead.as_ref();
    cpu += overhead
        .and_then(|o| o.get("cpu"))
        .and_then(cpu_milli)
        .unwrap_or(0);
    mem += overhead
        .and_then(|o| o.get("memory"))
        .and_then(units)
        .unwrap_or(0);
    Resources {
        cpu_milli: cpu,
        memory: mem,
        pods: 1,
    }
}

/// Pods a Node takes when it reports no capacity (the kubelet's default maxPods).
pub const DEFAULT_MAX_PODS: i64 = 110;

/// A Node's allocatable resources (capacity when it reports no allocatable). A resource the
/// Node does not report is None: unknown, so not a limit.
pub fn allocatable(node: &Node) -> (Option<i64>, Option<i64>, i64) {
    let st = node.status.as_ref();
    let alloc: Option<&BTreeMap<String, Quantity>> = st.and_then(|s| s.allocatable.as_ref());
    let cap: Option<&BTreeMap<String, Quantity>> = st.and_then(|s| s.capacity.as_ref());
    let pick = |name: &str| {
        alloc
            .and_then(|m| m.get(name))
            .or_else(|| cap.and_then(|m| m.get(name)))
    };
    (
        pick("cpu").and_then(cpu_milli),
        pick("memory").and_then(units),
        pick("pods").and_then(units).unwrap_or(DEFAULT_MAX_PODS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_milli("250m"), Some(250));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("2k"), Some(2_000_000));
        assert_eq!(units(&Quantity("128Mi".into())), Some(128 * 1024 * 1024));
        assert_eq!(units(&Quantity("1G".into())), Some(1_000_000_000));
        assert_eq!(units(&Quantity("1e3".into())), Some(1000));
        assert_eq!(units(&Quantity("0.5".into())), Some(1), "rounded up");
        assert_eq!(parse_milli("12Q"), None);
        assert_eq!(parse_milli(""), None);
    }

    fn container(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Container {
        let m = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: m(req),
                limits: m(lim),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_requests_sum_containers_and_respect_init_and_limits() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![
                    container(&[("cpu", "100m"), ("memory", "64Mi")], &[]),
                    container(&[], &[("cpu", "200m")]),
                ],
                init_containers: Some(vec![container(&[("cpu", "500m")], &[])]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = pod_requests(&pod, false);
        assert_eq!(
            r,
            Resources {
                cpu_milli: 500,
                memory: 64 * 1024 * 1024,
                pods: 1
            }
        );
        let empty = Pod {
            spec: Some(PodSpec {
                containers: vec![container(&[], &[])],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            pod_requests(&empty, false),
            Resources {
                cpu_milli: 0,
                memory: 0,
                pods: 1
            }
        );
        assert_eq!(
            pod_requests(&empty, true),
            Resources {
                cpu_milli: DEFAULT_CPU_MILLI,
                memory: DEFAULT_MEMORY,
                pods: 1
            }
        );
    }
}
