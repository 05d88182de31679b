//! Dump tests: a real datapath's pinned maps rendered as text and JSON.

use std::net::Ipv4Addr;

use super::{DumpError, dump};
use crate::{
    loader::testutil::TestDatapath,
    services::model::{BackendAddr, Frontend, MapOp, Proto},
};

#[test]
fn dump_renders_services_backends_and_endpoints() {
    let t = TestDatapath::load("dump", None);
    let f = Frontend {
        address: Ipv4Addr::new(10, 96, 0, 10).into(),
        port: 80,
        proto: Proto::Tcp,
    };
    let empty = Frontend {
        address: Ipv4Addr::new(10, 96, 0, 11).into(),
        port: 53,
        proto: Proto::Udp,
    };
    let b1 = BackendAddr {
        address: Ipv4Addr::new(10, 244, 1, 3).into(),
        port: 8080,
        proto: Proto::Tcp,
    };
    let b2 = BackendAddr {
        address: Ipv4Addr::new(10, 244, 2, 4).into(),
        port: 8080,
        proto: Proto::Tcp,
    };
    t.dp.apply(&[
        MapOp::PutBackend { id: 3, backend: b1 },
        MapOp::PutBackend { id: 4, backend: b2 },
        MapOp::PutRevNat {
            index: 1,
            frontend: f,
        },
        MapOp::PutRevNat {
            index: 2,
            frontend: empty,
        },
        MapOp::PutSlot {
            frontend: f,
            slot: 1,
            backend_id: 3,
        },
        MapOp::PutSlot {
            frontend: f,
            slot: 2,
            backend_id: 4,
        },
        MapOp::PutMaster {
            frontend: f,
            count: 2,
            rev_nat_index: 1,
            affinity_timeout: None,
            flags: 0,
        },
        MapOp::PutMaster {
            frontend: empty,
            count: 0,
            rev_nat_index: 2,
            affinity_timeout: None,
            flags: 0,
        },
    ])
    .expect("apply");
    t.dp.with_maps(|m| {
        m.put_endpoint(
            Ipv4Addr::new(10, 244, 1, 3),
            keelson_common::EndpointInfo {
                ifindex: 7,
                flags: 0,
                identity: 0,
                pod_mac: [0x02, 0, 0, 0, 0, 1],
                host_mac: [0x02, 0, 0, 0, 0, 2],
            },
        )
    })
    .expect("endpoint");

    let pins = &t.pins.0;
    assert_eq!(
        dump(pins, "services", false).expect("services"),
        "10.96.0.10:80/TCP -> 10.244.1.3:8080, 10.244.2.4:8080\n\
         10.96.0.11:53/UDP -> <no backends: connections refused>\n"
    );
    assert_eq!(
        dump(pins, "backends", false).expect("backends"),
        "id 3: 10.244.1.3:8080/TCP\nid 4: 10.244.2.4:8080/TCP\n"
    );
    assert_eq!(
        dump(pins, "endpoints", false).expect("endpoints"),
        "10.244.1.3 ifindex 7 mac 02:00:00:00:00:01 host-mac 02:00:00:00:00:02 identity 0\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&dump(pins, "services", true).expect("json")).expect("valid JSON");
    assert_eq!(json[0]["frontend"], "10.96.0.10:80/TCP");
    assert_eq!(json[0]["backends"][1]["address"], "10.244.2.4");
    assert_eq!(json[0]["backends"][1]["id"], 4);
    assert_eq!(json[1]["backends"].as_array().map(Vec::len), Some(0));
    let metrics = dump(pins, "metrics", false).expect("metrics");
    assert!(
        metrics.contains("drop invalid_source: 0 packets 0 bytes"),
        "{metrics}"
    );

    assert!(matches!(
        dump(pins, "conntrack", false),
        Err(DumpError::UnknownMap(_))
    ));
    let missing = pins.join("nope");
    assert!(matches!(
        dump(&missing, "services", false),
        Err(DumpError::NotPinned(_))
    ));
}
