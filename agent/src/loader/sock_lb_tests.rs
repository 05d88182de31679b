//! The socket-level load balancer for real: the kernel has no BPF_PROG_TEST_RUN for cgroup
//! sock_addr programs, so these tests load the datapath on a cgroup of their own, program a
//! ClusterIP through the planner, start backends on loopback inside a network namespace of
//! their own, and run a client process placed in that namespace and cgroup.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Stdio},
    thread,
};

use super::{
    sys,
    testutil::{ChildGuard, Netns, TestDatapath, metric, unique},
};
use crate::services::{
    model::{BackendAddr, DesiredState, Frontend, Proto},
    plan,
    testutil::only_services,
};

/// A network namespace and a datapath on a cgroup, both of the test's own, named after `name`.
/// (Bound in this order, the datapath goes first when the test ends.)
fn setup(name: &str) -> (Netns, TestDatapath) {
    let ns = Netns::new(&unique(name));
    let t = TestDatapath::load(name, None);
    (ns, t)
}

/// Programs `desired` into the datapath the way the services loop does.
fn program(t: &TestDatapath, desired: &DesiredState) {
    let current = t.dp.read_lb().expect("read maps");
    let ops = plan::diff(&current, desired);
    t.dp.apply(&ops).expect("apply");
}

/// TCP backends on 127.0.0.1 inside `ns`: each answers every connection with its own name.
fn tcp_backends(ns: &Netns, n: usize) -> Vec<u16> {
    tcp_backends_on(ns, n, "127.0.0.1:0")
}

/// TCP backends on `bind` inside `ns`.
fn tcp_backends_on(ns: &Netns, n: usize, bind: &str) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let listener = sys::in_netns(Some(&ns.path()), || TcpListener::bind(bind))
                .expect("enter netns")
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            thread::spawn(move || {
                for mut conn in listener.incoming().flatten() {
                    let _ = conn.write_all(format!("backend-{i}\n").as_bytes());
                }
            });
            port
        })
        .collect()
}

/// A UDP echo backend on 127.0.0.1 inside `ns`: answers each datagram with its name.
fn udp_backend(ns: &Netns, name: &'static str) -> u16 {
    udp_backend_on(ns, name, "127.0.0.1:0")
}

/// A UDP echo backend on `bind` inside `ns`.
fn udp_backend_on(ns: &Netns, name: &'static str, bind: &str) -> u16 {
    let sock = sys::in_netns(Some(&ns.path()), || UdpSocket::bind(bind))
        .expect("enter netns")
        .expect("bind");
    let port = sock.local_addr().expect("addr").port();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), peer);
        }
    });
    port
}

/// Runs `script` with python3 in the test's network namespace and cgroup; returns stdout.
fn client(t: &TestDatapath, ns: &Netns, script: &str) -> String {
    let netns = fs::File::open(ns.path()).expect("open netns");
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(t.cgroup.0.join("cgroup.procs"))
        .expect("open cgroup.procs");
    let (netns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_raw_fd());
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only makes raw system calls (setns, write)
    // on descriptors opened before the fork; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself into the cgroup.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = ChildGuard(cmd.spawn().expect("spawn client"));
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.0.stdout.take() {
        s.read_to_string(&mut out).expect("read stdout");
    }
    if let Some(mut s) = child.0.stderr.take() {
        s.read_to_string(&mut err).expect("read stderr");
    }
    let status = child.0.wait().expect("wait client");
    assert!(status.success(), "client failed: {status}\n{out}\n{err}");
    out
}

/// A client script of AF_INET6 sockets to the IPv6 address `vip`: 40 TCP connections to
/// port 80, each checked to show `vip` as its peer, then one datagram to port 53. Prints the
/// backends the connections reached, then the datagram's answer and its source.
fn ipv6_client(vip: &str) -> String {
    format!(
        r#"
import socket
seen = set()
for _ in range(40):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(("{vip}", 80))
    seen.add(s.makefile().readline().strip())
    assert s.getpeername()[:2] == ("{vip}", 80), s.getpeername()
    s.close()
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"ping", ("{vip}", 53))
data, addr = u.recvfrom(512)
print(" ".join(sorted(seen)))
print(data.decode(), addr[0], addr[1])
"#
    )
}

fn frontend(vip: Ipv4Addr, port: u16, proto: Proto) -> Frontend {
    Frontend {
        address: vip.into(),
        port,
        proto,
    }
}

fn loopback(port: u16, proto: Proto) -> BackendAddr {
    BackendAddr {
        address: Ipv4Addr::LOCALHOST.into(),
        port,
        proto,
    }
}

/// TCP backends on 127.0.0.1 at `ports`.
fn loopback_tcp(ports: &[u16]) -> Vec<BackendAddr> {
    ports.iter().map(|&p| loopback(p, Proto::Tcp)).collect()
}

#[test]
fn tcp_connect_to_cluster_ip_reaches_every_backend() {
    let (ns, t) = setup("socktcp");
    let ports = tcp_backends(&ns, 3);
    let vip = Ipv4Addr::new(10, 96, 7, 1);
    let desired = only_services([(frontend(vip, 80, Proto::Tcp), loopback_tcp(&ports))]);
    program(&t, &desired);

    let out = client(
        &t,
        &ns,
        &format!(
            r#"
import socket
for _ in range(60):
    s = socket.create_connection(("{vip}", 80), timeout=5)
    peer = s.getpeername()
    print(s.makefile().readline().strip(), peer[0], peer[1])
    s.close()
"#
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 60, "{out}");
    let reached: BTreeSet<&str> = lines.iter().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        reached,
        BTreeSet::from(["backend-0", "backend-1", "backend-2"]),
        "{out}"
    );
    // getpeername4 shows the ClusterIP the application connected to.
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {vip} 80"))),
        "{out}"
    );
    assert_eq!(
        metric(&t, keelson_common::Counter::SockConnectXlated as u32),
        60
    );
}

#[test]
fn service_without_backends_refuses_connect_and_others_pass_untouched() {
    let (ns, t) = setup("sockrej");
    let ports = tcp_backends(&ns, 1);
    let vip = Ipv4Addr::new(10, 96, 7, 2);
    let desired = only_services([(frontend(vip, 80, Proto::Tcp), vec![])]);
    program(&t, &desired);
    let out = client(
        &t,
        &ns,
        &format!(
            r#"
import socket, errno
try:
    socket.create_connection(("{vip}", 80), timeout=5)
    print("connected")
except OSError as e:
    print("refused", errno.errorcode.get(e.errno))
# A destination that is no Service is not touched.
s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
print(s.makefile().readline().strip())
"#,
            port = ports[0]
        ),
    );
    assert_eq!(out, "refused EPERM\nbackend-0\n");
    assert_eq!(metric(&t, keelson_common::DropReason::NoBackend as u32), 1);
}

#[test]
fn udp_replies_come_from_the_cluster_ip() {
    let (ns, t) = setup("sockudp");
    let a = udp_backend(&ns, "udp-a");
    let b = udp_backend(&ns, "udp-b");
    let vip = Ipv4Addr::new(10, 96, 7, 3);
    let desired = only_services([(
        frontend(vip, 53, Proto::Udp),
        vec![loopback(a, Proto::Udp), loopback(b, Proto::Udp)],
    )]);
    program(&t, &desired);
    let out = client(
        &t,
        &ns,
        &format!(
            r#"
import socket
seen = set()
for _ in range(40):
    # Unconnected: sendmsg4 translates, recvmsg4 translates the reply's source back.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"ping", ("{vip}", 53))
    data, addr = s.recvfrom(512)
    seen.add(data.decode())
    assert addr == ("{vip}", 53), addr
    s.close()
# Connected: connect4 translates, getpeername4 and recvmsg4 show the ClusterIP.
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect(("{vip}", 53))
c.send(b"ping")
data, addr = c.recvfrom(512)
print("connected", data.decode() in ("udp-a", "udp-b"), addr[0], addr[1], c.getpeername()[0])
print(" ".join(sorted(seen)))
"#
        ),
    );
    assert_eq!(out, format!("connected True {vip} 53 {vip}\nudp-a udp-b\n"));
}

#[test]
fn dual_stack_sockets_reach_cluster_ips_through_ipv4_mapped_addresses() {
    let (ns, t) = setup("sock6");
    let ports = tcp_backends(&ns, 2);
    let udp = udp_backend(&ns, "udp-6");
    let vip = Ipv4Addr::new(10, 96, 7, 4);
    let desired = only_services([
        (frontend(vip, 80, Proto::Tcp), loopback_tcp(&ports)),
        (
            frontend(vip, 53, Proto::Udp),
            vec![loopback(udp, Proto::Udp)],
        ),
    ]);
    program(&t, &desired);
    let out = client(&t, &ns, &ipv6_client(&format!("::ffff:{vip}")));
    assert_eq!(out, format!("backend-0 backend-1\nudp-6 ::ffff:{vip} 53\n"));
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    let (ns, t) = setup("sockaff");
    let ports = tcp_backends(&ns, 4);
    let vip = Ipv4Addr::new(10, 96, 7, 5);
    let f = frontend(vip, 80, Proto::Tcp);
    let desired = DesiredState {
        affinity: BTreeMap::from([(f, 60)]),
        ..only_services([(f, loopback_tcp(&ports))])
    };
    program(&t, &desired);
    let script = format!(
        r#"
import socket
for _ in range(30):
    s = socket.create_connection(("{vip}", 80), timeout=5)
    print(s.makefile().readline().strip())
    s.close()
"#
    );
    let out = client(&t, &ns, &script);
    let reached: BTreeSet<&str> = out.lines().collect();
    assert_eq!(out.lines().count(), 30, "{out}");
    assert_eq!(reached.len(), 1, "one client, one backend: {out}");
    assert_eq!(
        crate::bpf::dump(&t.pins.0, "services", false)
            .expect("dump")
            .lines()
            .next()
            .map(|l| l.ends_with("(affinity 60s)")),
        Some(true)
    );
}

#[test]
fn ipv6_cluster_ips_are_balanced_and_reverse_translated() {
    let (ns, t) = setup("sockv6");
    let ports = tcp_backends_on(&ns, 2, "[::1]:0");
    let udp = udp_backend_on(&ns, "udp-v6", "[::1]:0");
    let vip: std::net::IpAddr = "fd00:96::7".parse().expect("vip");
    let lo6 = std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
    let backend = |port, proto| BackendAddr {
        address: lo6,
        port,
        proto,
    };
    let tcp_f = Frontend {
        address: vip,
        port: 80,
        proto: Proto::Tcp,
    };
    let udp_f = Frontend {
        address: vip,
        port: 53,
        proto: Proto::Udp,
    };
    let desired = only_services([
        (
            tcp_f,
            ports.iter().map(|&p| backend(p, Proto::Tcp)).collect(),
        ),
        (udp_f, vec![backend(udp, Proto::Udp)]),
    ]);
    program(&t, &desired);
    let out = client(&t, &ns, &ipv6_client(&vip.to_string()));
    assert_eq!(out, format!("backend-0 backend-1\nudp-v6 {vip} 53\n"));
    let dump = crate::bpf::dump(&t.pins.0, "services", false).expect("dump");
    assert!(
        dump.contains(&format!(
            "[fd00:96::7]:80/TCP -> [::1]:{}, [::1]:{}",
            ports[0], ports[1]
        )),
        "{dump}"
    );
}

#[test]
fn closed_sockets_take_their_reverse_entries_with_them() {
    let (ns, t) = setup("sockrel");
    let ports = tcp_backends(&ns, 2);
    let udp = udp_backend(&ns, "udp-a");
    let vip = Ipv4Addr::new(10, 96, 7, 9);
    let desired = only_services([
        (frontend(vip, 80, Proto::Tcp), loopback_tcp(&ports)),
        (
            frontend(vip, 53, Proto::Udp),
            vec![loopback(udp, Proto::Udp)],
        ),
    ]);
    program(&t, &desired);

    // TCP and connected UDP sockets, AF_INET and AF_INET6 with IPv4-mapped addresses, each
    // showing the ClusterIP as its peer while open (that is the reverse entry at work), then
    // one unconnected UDP socket, which has no destination when it is closed.
    let out = client(
        &t,
        &ns,
        &format!(
            r#"
import socket
for fam, host in ((socket.AF_INET, "{vip}"), (socket.AF_INET6, "::ffff:{vip}")):
    for _ in range(10):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((host, 80))
        print("tcp", s.getpeername()[0], s.makefile().readline().strip())
        s.close()
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.connect((host, 53))
    u.send(b"x")
    print("udp", u.getpeername()[0], u.recv(64).decode())
    u.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"x", ("{vip}", 53))
data, peer = u.recvfrom(64)
print("unconnected", peer[0], data.decode())
u.close()
"#
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 23, "{out}");
    assert!(
        lines.iter().all(|l| l
            .split(' ')
            .nth(1)
            .is_some_and(|peer| peer.ends_with(&vip.to_string()))),
        "{out}"
    );
    assert!(lines.iter().any(|l| l.ends_with("udp-a")), "{out}");
    // 22 sockets were translated and closed; only the unconnected one's entry is left.
    let left: Vec<_> = t.dp.with_maps(|m| {
        m.sock_revnat
            .iter()
            .filter_map(Result::ok)
            .map(|(k, _)| k)
            .collect()
    });
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(u16::from_be(left[0].port), udp, "{left:?}");
}
