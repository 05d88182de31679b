//! Unit tests of the DNS records: every record type of the specification and the negative
//! answers, straight from objects to answers (no I/O).

use std::net::IpAddr;

use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::json;

use super::records::{Answer, Snapshot, TTL, Zone, answer};

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("service")
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).expect("slice")
}

fn pod(ns: &str, name: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .expect("pod")
}

fn fixture() -> Snapshot {
    let services = [
        svc(json!({
            "metadata": {"namespace": "default", "name": "hello"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                               {"port": 81}]}
        })),
        svc(json!({
            "metadata": {"namespace": "default", "name": "db"},
            "spec": {"clusterIP": "None",
                     "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}
        })),
        svc(json!({
            "metadata": {"namespace": "default", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        })),
        svc(json!({
            "metadata": {"namespace": "other", "name": "dns"},
            "spec": {"clusterIP": "10.96.0.10",
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
        })),
    ];
    let slices = [
        slice(json!({
            "metadata": {"namespace": "default", "name": "db-abc",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 15432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.7"], "conditions": {}},
                {"addresses": ["10.244.2.9"], "conditions": {"ready": false}}
            ]
        })),
        slice(json!({
            "metadata": {"namespace": "default", "name": "hello-x",
                         "labels": {"kubernetes.io/service-name": "hello"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.30"], "conditions": {"ready": true}}]
        })),
    ];
    let pods = [
        pod("default", "p", "10.244.1.5"),
        pod("other", "q", "10.244.3.3"),
    ];
    Snapshot::build(&services, &slices, &pods, 42)
}

fn zone() -> Zone {
    Zone::new("cluster.local").expect("zone")
}

fn ask(snap: &Snapshot, name: &str, qtype: RecordType) -> Answer {
    answer(snap, &zone(), &Name::from_ascii(name).expect("name"), qtype)
}

fn records(a: &Answer) -> (&[Record], &[Record]) {
    match a {
        Answer::Found {
            answers,
            additionals,
        } => (answers, additionals),
        other => panic!("expected records, got {other:?}"),
    }
}

fn ips(rs: &[Record]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = rs
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn cluster_ip_service_a_and_aaaa() {
    let snap = fixture();
    let a = ask(&snap, "hello.default.svc.cluster.local.", RecordType::A);
    let (ans, _) = records(&a);
    assert_eq!(ips(ans), vec![ip("10.96.0.20")]);
    assert!(ans.iter().all(|r| r.ttl == TTL));
    assert_eq!(ans[0].name.to_ascii(), "hello.default.svc.cluster.local.");
    let aaaa = ask(&snap, "hello.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(ips(records(&aaaa).0), vec![ip("fd00:96::20")]);
}

#[test]
fn names_are_case_insensitive_and_keep_the_askers_case() {
    let snap = fixture();
    let a = ask(&snap, "Hello.DEFAULT.svc.Cluster.Local.", RecordType::A);
    let (ans, _) = records(&a);
    assert_eq!(ips(ans), vec![ip("10.96.0.20")]);
    assert_eq!(ans[0].name.to_ascii(), "Hello.DEFAULT.svc.Cluster.Local.");
}

#[test]
fn aaaa_of_an_ipv4_only_service_is_nodata() {
    let snap = fixture();
    assert_eq!(
        ask(&snap, "dns.other.svc.cluster.local.", RecordType::AAAA),
        Answer::NoData
    );
    assert_eq!(
        ask(&snap, "dns.other.svc.cluster.local.", RecordType::TXT),
        Answer::NoData
    );
}

#[test]
fn headless_service_gives_ready_endpoints_only() {
    let snap = fixture();
    let a = ask(&snap, "db.default.svc.cluster.local.", RecordType::A);
    // 10.244.2.9 is not ready; a missing `ready` counts as ready.
    assert_eq!(ips(records(&a).0), vec![ip("10.244.1.5"), ip("10.244.2.7")]);
}

#[test]
fn headless_publish_not_ready_addresses_includes_not_ready() {
    let services = [svc(json!({
        "metadata": {"namespace": "default", "name": "db"},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}
    }))];
    let slices = [slice(json!({
        "metadata": {"namespace": "default", "name": "db-1",
                     "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.2.9"], "conditions": {"ready": false}}]
    }))];
    let snap = Snapshot::build(&services, &slices, &[], 1);
    let a = ask(&snap, "db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(ips(records(&a).0), vec![ip("10.244.2.9")]);
}

#[test]
fn headless_endpoint_hostname_and_dashed_address() {
    let snap = fixture();
    let a = ask(&snap, "db-0.db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(ips(records(&a).0), vec![ip("10.244.1.5")]);
    let a = ask(
        &snap,
        "10-244-2-7.db.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(ips(records(&a).0), vec![ip("10.244.2.7")]);
    assert_eq!(
        ask(&snap, "db-9.db.default.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );
    // Endpoint names exist only under headless Services.
    assert_eq!(
        ask(
            &snap,
            "10-244-1-30.hello.default.svc.cluster.local.",
            RecordType::A
        ),
        Answer::NxDomain
    );
}

#[test]
fn srv_of_a_named_port_of_a_cluster_ip_service() {
    let snap = fixture();
    let a = ask(
        &snap,
        "_http._tcp.hello.default.svc.cluster.local.",
        RecordType::SRV,
    );
    let (ans, add) = records(&a);
    assert_eq!(ans.len(), 1);
    let RData::SRV(srv) = &ans[0].data else {
        panic!("not SRV: {:?}", ans[0]);
    };
    assert_eq!((srv.priority, srv.weight, srv.port), (0, 100, 80));
    assert_eq!(srv.target.to_ascii(), "hello.default.svc.cluster.local.");
    assert_eq!(ips(add), vec![ip("10.96.0.20"), ip("fd00:96::20")]);
    // A port of another protocol, or an unnamed one, has no SRV name.
    assert_eq!(
        ask(
            &snap,
            "_http._udp.hello.default.svc.cluster.local.",
            RecordType::SRV
        ),
        Answer::NxDomain
    );
    // The SRV name exists: other types are NODATA.
    assert_eq!(
        ask(
            &snap,
            "_http._tcp.hello.default.svc.cluster.local.",
            RecordType::A
        ),
        Answer::NoData
    );
    assert_eq!(
        ask(
            &snap,
            "_tcp.hello.default.svc.cluster.local.",
            RecordType::SRV
        ),
        Answer::NoData
    );
    let udp = ask(
        &snap,
        "_dns._udp.dns.other.svc.cluster.local.",
        RecordType::SRV,
    );
    let RData::SRV(srv) = &records(&udp).0[0].data else {
        panic!("not SRV");
    };
    assert_eq!(srv.port, 53);
}

#[test]
fn srv_of_a_headless_service_names_each_endpoint() {
    let snap = fixture();
    let a = ask(
        &snap,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    );
    let (ans, add) = records(&a);
    let mut targets: Vec<(String, u16)> = ans
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.target.to_ascii(), s.port),
            other => panic!("not SRV: {other:?}"),
        })
        .collect();
    targets.sort();
    // The endpoint's port (the slice's), not the Service's.
    assert_eq!(
        targets,
        vec![
            ("10-244-2-7.db.default.svc.cluster.local.".to_owned(), 15432),
            ("db-0.db.default.svc.cluster.local.".to_owned(), 15432),
        ]
    );
    assert_eq!(ips(add), vec![ip("10.244.1.5"), ip("10.244.2.7")]);
}

#[test]
fn external_name_is_a_cname() {
    let snap = fixture();
    for qtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        let a = ask(&snap, "ext.default.svc.cluster.local.", qtype);
        let (ans, _) = records(&a);
        assert_eq!(ans.len(), 1);
        let RData::CNAME(c) = &ans[0].data else {
            panic!("not CNAME: {:?}", ans[0]);
        };
        assert_eq!(c.0.to_ascii(), "example.com.");
    }
}

#[test]
fn pod_records_only_for_pods_that_exist_in_the_namespace() {
    let snap = fixture();
    let a = ask(
        &snap,
        "10-244-1-5.default.pod.cluster.local.",
        RecordType::A,
    );
    assert_eq!(ips(records(&a).0), vec![ip("10.244.1.5")]);
    // The address is a Pod's, but in another namespace.
    assert_eq!(
        ask(
            &snap,
            "10-244-3-3.default.pod.cluster.local.",
            RecordType::A
        ),
        Answer::NxDomain
    );
    assert_eq!(
        ask(
            &snap,
            "10-244-9-9.default.pod.cluster.local.",
            RecordType::A
        ),
        Answer::NxDomain
    );
    assert_eq!(
        ask(
            &snap,
            "10-244-1-5.default.pod.cluster.local.",
            RecordType::AAAA
        ),
        Answer::NoData
    );
}

#[test]
fn ptr_of_cluster_ips_and_endpoints() {
    let snap = fixture();
    let ptr = |name: &str| {
        let a = ask(&snap, name, RecordType::PTR);
        match &records(&a).0[0].data {
            RData::PTR(p) => p.0.to_ascii(),
            other => panic!("not PTR: {other:?}"),
        }
    };
    assert_eq!(
        ptr("20.0.96.10.in-addr.arpa."),
        "hello.default.svc.cluster.local."
    );
    assert_eq!(
        ptr("5.1.244.10.in-addr.arpa."),
        "db-0.db.default.svc.cluster.local."
    );
    assert_eq!(
        ptr("7.2.244.10.in-addr.arpa."),
        "10-244-2-7.db.default.svc.cluster.local."
    );
    assert_eq!(
        ptr("30.1.244.10.in-addr.arpa."),
        "10-244-1-30.hello.default.svc.cluster.local."
    );
    let v6 = Name::from(ip("fd00:96::20"));
    let a = answer(&snap, &zone(), &v6, RecordType::PTR);
    let RData::PTR(p) = &records(&a).0[0].data else {
        panic!("not PTR");
    };
    assert_eq!(p.0.to_ascii(), "hello.default.svc.cluster.local.");
}

#[test]
fn reverse_names_of_other_addresses_are_forwarded() {
    let snap = fixture();
    assert_eq!(
        ask(&snap, "8.8.8.8.in-addr.arpa.", RecordType::PTR),
        Answer::Forward
    );
    // A reverse zone rather than an address.
    assert_eq!(
        ask(&snap, "96.10.in-addr.arpa.", RecordType::PTR),
        Answer::Forward
    );
}

#[test]
fn names_outside_the_zone_are_forwarded() {
    let snap = fixture();
    assert_eq!(ask(&snap, "example.com.", RecordType::A), Answer::Forward);
    assert_eq!(
        ask(&snap, "cluster.local.example.com.", RecordType::A),
        Answer::Forward
    );
    // A name that only ends like the zone.
    assert_eq!(
        ask(&snap, "mycluster.local.", RecordType::A),
        Answer::Forward
    );
}

#[test]
fn nxdomain_versus_nodata() {
    let snap = fixture();
    // Unknown Service, unknown namespace, unknown shape.
    for name in [
        "nope.default.svc.cluster.local.",
        "hello.nope.svc.cluster.local.",
        "nope.svc.cluster.local.",
        "a.b.c.d.e.f.svc.cluster.local.",
        "hello.default.cluster.local.",
    ] {
        assert_eq!(ask(&snap, name, RecordType::A), Answer::NxDomain, "{name}");
    }
    // Names that exist without an A record.
    for name in [
        "cluster.local.",
        "svc.cluster.local.",
        "pod.cluster.local.",
        "default.svc.cluster.local.",
    ] {
        assert_eq!(ask(&snap, name, RecordType::A), Answer::NoData, "{name}");
    }
}

#[test]
fn soa_of_the_zone_and_dns_version() {
    let snap = fixture();
    let a = ask(&snap, "cluster.local.", RecordType::SOA);
    let (ans, _) = records(&a);
    let RData::SOA(soa) = &ans[0].data else {
        panic!("not SOA");
    };
    assert_eq!(soa.serial, 42);
    assert_eq!(soa.minimum, TTL);
    assert_eq!(soa.mname.to_ascii(), "ns.dns.cluster.local.");
    assert_eq!(zone().soa(42), ans[0]);
    let v = ask(&snap, "dns-version.cluster.local.", RecordType::TXT);
    let RData::TXT(txt) = &records(&v).0[0].data else {
        panic!("not TXT");
    };
    assert_eq!(txt.to_string(), "1.1.0");
}

#[test]
fn another_cluster_domain() {
    let snap = fixture();
    let z = Zone::new("corp.example.").expect("zone");
    let a = answer(
        &snap,
        &z,
        &Name::from_ascii("hello.default.svc.corp.example.").expect("name"),
        RecordType::A,
    );
    assert_eq!(ips(records(&a).0), vec![ip("10.96.0.20")]);
    assert_eq!(
        answer(
            &snap,
            &z,
            &Name::from_ascii("hello.default.svc.cluster.local.").expect("name"),
            RecordType::A
        ),
        Answer::Forward
    );
}

#[test]
fn services_without_an_allocated_ip_or_slices_of_unknown_services() {
    let services = [svc(json!({
        "metadata": {"namespace": "default", "name": "pending"},
        "spec": {"ports": [{"port": 80}]}
    }))];
    let slices = [slice(json!({
        "metadata": {"namespace": "default", "name": "gone-1",
                     "labels": {"kubernetes.io/service-name": "gone"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.2.9"]}]
    }))];
    let snap = Snapshot::build(&services, &slices, &[], 1);
    assert_eq!(snap.service_count(), 0);
    assert_eq!(
        ask(&snap, "pending.default.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&snap, "9.2.244.10.in-addr.arpa.", RecordType::PTR),
        Answer::Forward
    );
}
