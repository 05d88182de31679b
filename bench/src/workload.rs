//! The Services every mode of the benchmark programs: N ClusterIP Services of one TCP port
//! with three endpoints each, addresses chosen so the bench's own namespaces can serve them.

use std::net::Ipv4Addr;

/// The namespace of every benchmark Service.
pub const NAMESPACE: &str = "bench";
/// The Service port's name (kube-proxy puts it in chain names and comments).
pub const PORT_NAME: &str = "http";
/// The ClusterIP port.
pub const SERVICE_PORT: u16 = 80;
/// The endpoints' (targetPort) port; different from the Service port so every mode has to
/// rewrite the port as well as the address.
pub const ENDPOINT_PORT: u16 = 8080;
/// Endpoints per Service.
pub const ENDPOINTS_PER_SERVICE: usize = 3;
/// The cluster's Service CIDR.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The cluster's Pod CIDR (kube-proxy's `--cluster-cidr`, its "local traffic" detector).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Endpoint addresses come from this half of the Pod CIDR; the server namespace answers on
/// all of it.
pub const ENDPOINT_RANGE: &str = "10.244.0.0/17";
/// The largest benchmark size the address plan supports.
pub const MAX_SERVICES: usize = 10_000;

/// One ClusterIP Service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchService {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub endpoints: Vec<Ipv4Addr>,
}

impl BenchService {
    /// kube-proxy's ServicePortName string: `namespace/name:port`.
    pub fn port_name(&self) -> String {
        format!("{NAMESPACE}/{}:{PORT_NAME}", self.name)
    }
}

/// `n` Services: ClusterIPs 10.96.0.10 upwards, endpoints 10.244.1.0 upwards (distinct
/// addresses for every Service, as distinct Pods would have).
pub fn services(n: usize) -> Vec<BenchService> {
    assert!(n <= MAX_SERVICES, "at most {MAX_SERVICES} Services");
    let vip_base = u32::from(Ipv4Addr::new(10, 96, 0, 10));
    let ep_base = u32::from(Ipv4Addr::new(10, 244, 1, 0));
    (0..n)
        .map(|i| {
            let i32 = u32::try_from(i).unwrap_or(u32::MAX);
            let per = u32::try_from(ENDPOINTS_PER_SERVICE).unwrap_or(3);
            BenchService {
                name: format!("svc-{i:05}"),
                cluster_ip: Ipv4Addr::from(vip_base + i32),
                endpoints: (0..per)
                    .map(|j| Ipv4Addr::from(ep_base + i32 * per + j))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_inside_their_ranges() {
        let all = services(MAX_SERVICES);
        let last = all.last().expect("services");
        assert_eq!(last.cluster_ip, Ipv4Addr::new(10, 96, 39, 25));
        // 10.244.1.0 + 29_999 = 10.244.118.47, still inside 10.244.0.0/17.
        assert_eq!(last.endpoints[2], Ipv4Addr::new(10, 244, 118, 47));
        let mut eps: Vec<Ipv4Addr> = all.iter().flat_map(|s| s.endpoints.clone()).collect();
        eps.sort();
        eps.dedup();
        assert_eq!(eps.len(), MAX_SERVICES * ENDPOINTS_PER_SERVICE);
        assert_eq!(all[0].port_name(), "bench/svc-00000:http");
    }
}
