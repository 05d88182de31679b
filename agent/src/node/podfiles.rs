//! The files the kubelet writes for every Pod and mounts into each of its containers:
//! `/etc/hosts` (the Pod's own names and `hostAliases`) and `/etc/resolv.conf` (from
//! `dnsPolicy` and `dnsConfig`), as pkg/kubelet/kubelet_pods.go (`managedHostsFileContent`)
//! and pkg/kubelet/network/dns/dns.go (`GetPodDNS`) build them.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

/// The cluster's DNS, as the kubelet's `--cluster-dns` and `--cluster-domain` give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// The `kube-dns` Service's ClusterIP; `None` when the cluster has no DNS (then
    /// `ClusterFirst` falls back to `Default`, as the kubelet does).
    pub server: Option<Ipv4Addr>,
    pub domain: String,
}

impl Default for ClusterDns {
    fn default() -> Self {
        Self {
            server: None,
            domain: "cluster.local".into(),
        }
    }
}

/// A resolv.conf reduced to what the kubelet reads of the node's: nameservers, search
/// domains, options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// glibc reads at most three nameservers and (since 2.26) 32 search domains; the kubelet
/// trims to the same limits (validation.MaxDNSNameservers, MaxDNSSearchPaths).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

impl ResolvConf {
    /// Parses the node's resolv.conf (`nameserver`, `search`/`domain`, `options`; comments with
    /// `#` or `;`).
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => out.nameservers.extend(words.next().map(str::to_owned)),
                Some("search" | "domain") => {
                    out.searches = words.map(str::to_owned).collect();
                }
                Some("options") => out.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        out
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            s.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }
}

/// Merges options as the kubelet does (`mergeDNSOptions`): a later option replaces an earlier
/// one of the same name (`ndots:2` replaces `ndots:5`).
fn merge_options(base: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    for opt in more {
        let name = opt.split(':').next().unwrap_or_default().to_owned();
        base.retain(|o| o.split(':').next() != Some(name.as_str()));
        base.push(opt);
    }
}

/// The Pod's resolv.conf: `dnsPolicy` ClusterFirst (the default; the cluster's DNS, the
/// search path `<ns>.svc.<domain> svc.<domain> <domain>` then the node's, `ndots:5`),
/// ClusterFirstWithHostNet, Default (the node's file) or None (only `dnsConfig`);
/// `dnsConfig` adds nameservers, searches and options to any policy.
pub fn resolv_conf(pod: &Pod, cluster: &ClusterDns, node: &ResolvConf) -> ResolvConf {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    // A hostNetwork Pod with ClusterFirst gets the node's DNS: only ClusterFirstWithHostNet
    // sends it to the cluster's (kubelet `getPodDNSType`).
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut out = match (policy, cluster_first, cluster.server) {
        ("None", _, _) => ResolvConf::default(),
        (_, true, Some(server)) => {
            let d = &cluster.domain;
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            searches.extend(node.searches.iter().cloned());
            ResolvConf {
                nameservers: vec![server.to_string()],
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        _ => node.clone(),
    };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        out.nameservers
            .extend(cfg.nameservers.iter().flatten().cloned());
        out.searches.extend(cfg.searches.iter().flatten().cloned());
        merge_options(
            &mut out.options,
            cfg.options.iter().flatten().filter_map(|o| {
                let name = o.name.clone()?;
                Some(match &o.value {
                    Some(v) => format!("{name}:{v}"),
                    None => name,
                })
            }),
        );
    }
    let mut seen = std::collections::HashSet::new();
    out.searches.retain(|s| seen.insert(s.clone()));
    out.nameservers.truncate(MAX_NAMESERVERS);
    out.searches.truncate(MAX_SEARCHES);
    out
}

/// The Pod's hostname: `spec.hostname`, else its name, cut to 63 characters (a DNS label)
/// without a trailing `-` or `.` (kubelet `GeneratePodHostNameAndDomain`, `truncatePodHostnameIfNeeded`).
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    if name.len() <= 63 {
        return name;
    }
    name[..63].trim_end_matches(['-', '.']).to_owned()
}

/// The Pod's `/etc/hosts`: localhost entries, the Pod IP with its hostname (and its FQDN when
/// `subdomain` is set), then the `hostAliases` (kubelet `managedHostsFileContent`).
pub fn hosts(pod: &Pod, pod_ip: Option<Ipv4Addr>, domain: &str) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let host = hostname(pod);
    if let Some(ip) = pod_ip {
        let sub = pod
            .spec
            .as_ref()
            .and_then(|s| s.subdomain.as_deref())
            .filter(|s| !s.is_empty());
        match sub {
            Some(sub) => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                s.push_str(&format!("{ip}\t{host}.{sub}.{ns}.svc.{domain}\t{host}\n"));
            }
            None => s.push_str(&format!("{ip}\t{host}\n")),
        }
    }
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default();
    if !aliases.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.unwrap_or_default();
            if !names.is_empty() {
                s.push_str(&format!("{}\t{}\n", a.ip, names.join("\t")));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": spec,
        }))
        .expect("pod")
    }

    fn cluster() -> ClusterDns {
        ClusterDns {
            server: Some(Ipv4Addr::new(10, 96, 0, 10)),
            domain: "cluster.local".into(),
        }
    }

    fn node() -> ResolvConf {
        ResolvConf::parse(
            "# node\nnameserver 192.0.2.53\nnameserver 192.0.2.54 ; x\nsearch corp.example\noptions edns0\n",
        )
    }

    #[test]
    fn node_file_is_parsed() {
        let n = node();
        assert_eq!(n.nameservers, ["192.0.2.53", "192.0.2.54"]);
        assert_eq!(n.searches, ["corp.example"]);
        assert_eq!(n.options, ["edns0"]);
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_path() {
        let r = resolv_conf(&pod(json!({"containers": []})), &cluster(), &node());
        assert_eq!(
            r.render(),
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             nameserver 10.96.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn host_network_and_default_get_the_node_file() {
        let hn = pod(json!({"containers": [], "hostNetwork": true}));
        assert_eq!(resolv_conf(&hn, &cluster(), &node()), node());
        let with = pod(
            json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert_eq!(
            resolv_conf(&with, &cluster(), &node()).nameservers,
            ["10.96.0.10"]
        );
        let def = pod(json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(resolv_conf(&def, &cluster(), &node()), node());
        // No cluster DNS: ClusterFirst falls back to the node's file.
        let plain = pod(json!({"containers": []}));
        assert_eq!(resolv_conf(&plain, &ClusterDns::default(), &node()), node());
    }

    #[test]
    fn none_takes_only_dns_config_and_options_merge_by_name() {
        let p = pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.2.3.4"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            resolv_conf(&p, &cluster(), &node()).render(),
            "search a.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        let cf = pod(json!({"containers": [], "dnsConfig": {
            "options": [{"name": "ndots", "value": "1"}]}}));
        assert_eq!(resolv_conf(&cf, &cluster(), &node()).options, ["ndots:1"]);
    }

    #[test]
    fn hosts_name_the_pod_its_fqdn_and_aliases() {
        let p = pod(
            json!({"containers": [], "hostname": "db", "subdomain": "dbs",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}),
        );
        let text = hosts(&p, Some(Ipv4Addr::new(10, 244, 1, 7)), "cluster.local");
        assert!(text.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(
            text.contains("10.244.1.7\tdb.dbs.shop.svc.cluster.local\tdb\n"),
            "{text}"
        );
        assert!(
            text.ends_with("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"),
            "{text}"
        );
        let plain = hosts(
            &pod(json!({"containers": []})),
            Some(Ipv4Addr::new(10, 244, 1, 8)),
            "cluster.local",
        );
        assert!(plain.ends_with("10.244.1.8\tweb-0\n"), "{plain}");
    }

    #[test]
    fn long_names_are_cut_to_a_label() {
        let long = format!("{}-{}", "a".repeat(62), "b");
        let p: Pod =
            serde_json::from_value(json!({"metadata": {"name": long}, "spec": {"containers": []}}))
                .expect("pod");
        assert_eq!(hostname(&p), "a".repeat(62));
    }
}
