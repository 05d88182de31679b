//! Loader tests against the real kernel: pinning, reuse across loads, idempotent attach.

use std::{net::Ipv4Addr, process::Command};

use keelson_common::names;

use super::{CGROUP_PROGRAMS, Datapath, DatapathConfig, testutil::TestDatapath};
use crate::services::model::{BackendAddr, Frontend, MapOp, Proto};

fn attached_programs(cgroup: &std::path::Path) -> usize {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().filter(|l| l.contains("sock_")).count()
}

#[test]
fn object_declares_every_common_map_and_program() {
    let obj = aya_obj_names();
    for name in names::ALL {
        assert!(
            obj.0.iter().any(|m| m == name),
            "map {name} missing from the object"
        );
    }
    for name in CGROUP_PROGRAMS.iter().chain([&names::PROG_FROM_CONTAINER]) {
        assert!(
            obj.1.iter().any(|p| p == name),
            "program {name} missing from the object"
        );
    }
}

/// Names of the maps and links a load pins.
fn aya_obj_names() -> (Vec<String>, Vec<String>) {
    let t = super::testutil::TestDatapath::load("names", None);
    let maps = names::ALL
        .iter()
        .filter(|n| t.pins.0.join(n).exists())
        .map(|n| n.to_string())
        .collect();
    let links = CGROUP_PROGRAMS
        .iter()
        .filter(|n| t.pins.0.join("links").join(format!("{n}_link")).exists())
        .map(|n| n.to_string())
        .chain(std::iter::once(names::PROG_FROM_CONTAINER.to_string()))
        .collect();
    (maps, links)
}

#[test]
fn reload_reuses_pinned_maps_and_links() {
    let t = TestDatapath::load("reload", None);
    assert_eq!(attached_programs(&t.cgroup.0), CGROUP_PROGRAMS.len());
    let frontend = Frontend {
        address: Ipv4Addr::new(10, 96, 0, 10).into(),
        port: 53,
        proto: Proto::Udp,
    };
    let backend = BackendAddr {
        address: Ipv4Addr::new(10, 244, 1, 3).into(),
        port: 5353,
        proto: Proto::Udp,
    };
    t.dp.apply(&[
        MapOp::PutBackend { id: 7, backend },
        MapOp::PutRevNat { index: 1, frontend },
        MapOp::PutSlot {
            frontend,
            slot: 1,
            backend_id: 7,
        },
        MapOp::PutMaster {
            frontend,
            count: 1,
            rev_nat_index: 1,
            affinity_timeout: None,
            flags: 0,
        },
    ])
    .expect("apply");
    let before = t.dp.read_lb().expect("read");

    // A second agent on the same pins and cgroup: same maps, programs swapped in place.
    let again = Datapath::load(DatapathConfig {
        pin_dir: t.pins.0.clone(),
        cgroup_root: t.cgroup.0.clone(),
        node_netns: None,
    })
    .expect("reload");
    assert_eq!(again.read_lb().expect("read"), before);
    assert_eq!(
        again.read_lb().expect("read").backends_of(&frontend),
        vec![Some(backend)]
    );
    assert_eq!(
        attached_programs(&t.cgroup.0),
        CGROUP_PROGRAMS.len(),
        "reload must not attach twice"
    );
    drop(again);
    // Dropping both loaders leaves the pinned links attached.
    assert_eq!(attached_programs(&t.cgroup.0), CGROUP_PROGRAMS.len());
}

#[test]
fn a_full_map_is_an_error_not_a_silent_drop() {
    let t = TestDatapath::load("full", None);
    let backend = |i: u32| BackendAddr {
        address: Ipv4Addr::from(0x0af4_0000 + i).into(),
        port: 80,
        proto: Proto::Tcp,
    };
    let fill: Vec<MapOp> = (1..=keelson_common::limits::MAX_BACKENDS)
        .map(|id| MapOp::PutBackend {
            id,
            backend: backend(id),
        })
        .collect();
    t.dp.apply(&fill).expect("fill the backends map");
    let overflow = MapOp::PutBackend {
        id: u32::MAX,
        backend: backend(0),
    };
    assert!(t.dp.map_full_counts().is_empty());
    match t.dp.apply(&[overflow]) {
        Err(super::MapsError::Full { map, .. }) => assert_eq!(map, names::BACKENDS),
        other => panic!("expected a full-map error, got {other:?}"),
    }
    // ... and a metric.
    assert_eq!(t.dp.map_full_counts().get(names::BACKENDS), Some(&1));
    let text = crate::metrics::render(&t.dp).expect("metrics");
    assert!(
        text.contains("keelson_map_full_total{map=\"kls_backends\"} 1"),
        "{text}"
    );
    // Replacing an existing entry still works when the map is full.
    t.dp.apply(&[MapOp::PutBackend {
        id: 1,
        backend: backend(7),
    }])
    .expect("update in place");
}

#[test]
fn pinned_links_of_another_cgroup_are_replaced_not_reused() {
    use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};

    let t = TestDatapath::load("relink", None);
    let link_pin = t
        .pins
        .0
        .join("links")
        .join(format!("{}_link", names::PROG_CONNECT4));
    let cgroup_id = |path: &std::path::Path| std::fs::metadata(path).expect("cgroup").ino();
    let link_cgroup = || {
        let link = super::sys::obj_get(&link_pin).expect("pinned link");
        super::sys::link_cgroup_id(link.as_fd()).expect("link info")
    };
    assert_eq!(link_cgroup(), cgroup_id(&t.cgroup.0));

    // Same pins, another cgroup (what a re-created node cgroup is to the kernel).
    let other = super::testutil::Cgroup::new(&super::testutil::unique("relink-other"));
    let again = Datapath::load(DatapathConfig {
        pin_dir: t.pins.0.clone(),
        cgroup_root: other.0.clone(),
        node_netns: None,
    })
    .expect("load on the other cgroup");
    assert_eq!(link_cgroup(), cgroup_id(&other.0));
    assert_eq!(attached_programs(&other.0), CGROUP_PROGRAMS.len());
    // Released from a workqueue once its pin is gone (bpf_link_put).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while attached_programs(&t.cgroup.0) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old attachment is released"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(again);
}
