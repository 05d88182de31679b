use std::{
    cell::RefCell,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use super::*;
use crate::{
    loader::testutil::{Cgroup, ChildGuard, Netns, unique},
    netns::in_netns,
};

fn backend(ip: &str, port: u16, proto: Proto) -> BackendAddr {
    BackendAddr {
        address: ip.parse().expect("ip"),
        port,
        proto,
    }
}

fn fake_cgroup(procs: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (sub, content) in procs {
        let d = dir.path().join(sub);
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("cgroup.procs"), content).expect("write procs");
    }
    dir
}

#[test]
fn namespaces_walks_the_subtree_dedupes_and_skips_exited_processes() {
    let child = ChildGuard(Command::new("sleep").arg("30").spawn().expect("sleep"));
    let me = std::process::id();
    // pid_max is at most 2^22, so this pid never exists.
    let dead = 4_194_305;
    let cg = fake_cgroup(&[
        ("", format!("{me}\n{dead}\n")),
        ("pods/a", format!("{}\n", child.0.id())),
        ("pods/b", String::new()),
    ]);
    // The child shares our namespace: one entry.
    let found = namespaces(cg.path(), None).expect("namespaces");
    assert_eq!(found.len(), 1, "{found:?}");
    let want_inode = fs::metadata("/proc/self/ns/net").expect("stat").ino();
    assert_eq!(fs::metadata(&found[0]).expect("stat").ino(), want_inode);

    // The node namespace comes first and absorbs the processes sharing it.
    let node = Path::new("/proc/self/ns/net");
    assert_eq!(
        namespaces(cg.path(), Some(node)).expect("namespaces"),
        vec![node.to_owned()]
    );
    // A node namespace path that does not exist is skipped.
    let found =
        namespaces(cg.path(), Some(Path::new("/run/netns/kls-t-td-missing"))).expect("namespaces");
    assert_eq!(found.len(), 1);

    // A missing root is an error: no Pod would be reached.
    let missing = cg.path().join("no-such-cgroup");
    assert!(matches!(
        namespaces(&missing, None),
        Err(TeardownError::Cgroup { .. })
    ));
}

/// Records calls; fails those for one protocol.
#[derive(Default)]
struct Recorder {
    calls: RefCell<Vec<(PathBuf, Proto, Vec<SocketAddr>)>>,
    fail: Option<Proto>,
}

impl SocketDestroyer for Recorder {
    fn destroy(&self, netns: &Path, proto: Proto, targets: &[SocketAddr]) -> io::Result<usize> {
        self.calls
            .borrow_mut()
            .push((netns.to_owned(), proto, targets.to_vec()));
        if self.fail == Some(proto) {
            return Err(io::Error::other("refused"));
        }
        Ok(targets.len())
    }
}

#[test]
fn destroy_groups_by_protocol_dedupes_and_skips_sctp() {
    let cg = fake_cgroup(&[("", format!("{}\n", std::process::id()))]);
    let node = Path::new("/proc/self/ns/net");
    let r = Recorder::default();
    let backends = [
        backend("10.244.1.5", 8080, Proto::Tcp),
        backend("10.244.1.5", 8080, Proto::Tcp),
        backend("10.244.1.5", 53, Proto::Udp),
        backend("fd00::5", 53, Proto::Udp),
        backend("10.244.1.6", 9000, Proto::Sctp),
    ];
    let n = destroy_with(&r, cg.path(), Some(node), &backends).expect("destroy");
    let calls = r.calls.into_inner();
    assert_eq!(
        calls,
        vec![
            (
                node.to_owned(),
                Proto::Tcp,
                vec!["10.244.1.5:8080".parse().expect("addr")]
            ),
            (
                node.to_owned(),
                Proto::Udp,
                vec![
                    "10.244.1.5:53".parse().expect("addr"),
                    "[fd00::5]:53".parse().expect("addr"),
                ]
            ),
        ]
    );
    assert_eq!(n, 3);
}

#[test]
fn destroy_with_nothing_to_tear_reads_nothing() {
    let r = Recorder::default();
    let sctp_only = [backend("10.244.1.6", 9000, Proto::Sctp)];
    // Not even the (missing) cgroup is read.
    let n = destroy_with(&r, Path::new("/nonexistent"), None, &sctp_only).expect("destroy");
    assert_eq!(n, 0);
    assert!(r.calls.into_inner().is_empty());
}

#[test]
fn a_failure_is_reported_after_trying_everything() {
    let cg = fake_cgroup(&[("", format!("{}\n", std::process::id()))]);
    let r = Recorder {
        fail: Some(Proto::Tcp),
        ..Default::default()
    };
    let backends = [
        backend("10.244.1.5", 8080, Proto::Tcp),
        backend("10.244.1.5", 53, Proto::Udp),
    ];
    let err = destroy_with(
        &r,
        cg.path(),
        Some(Path::new("/proc/self/ns/net")),
        &backends,
    )
    .expect_err("tcp fails");
    assert!(matches!(
        err,
        TeardownError::Destroy {
            proto: Proto::Tcp,
            ..
        }
    ));
    assert_eq!(r.calls.borrow().len(), 2, "UDP still tried");
}

/// Sockets created inside a namespace stay there whichever thread uses them afterwards.
struct Conns {
    victim: TcpStream,
    _victim_peer: TcpStream,
    survivor: TcpStream,
    survivor_peer: TcpStream,
    udp_victim: UdpSocket,
    _udp_server: UdpSocket,
    victim_port: u16,
    udp_port: u16,
    _listeners: (TcpListener, TcpListener),
}

fn connect_in(netns: &Path) -> Conns {
    in_netns(Some(netns), || -> io::Result<Conns> {
        let la = TcpListener::bind("127.0.0.1:0")?;
        let lb = TcpListener::bind("127.0.0.1:0")?;
        let victim = TcpStream::connect(la.local_addr()?)?;
        let (victim_peer, _) = la.accept()?;
        let survivor = TcpStream::connect(lb.local_addr()?)?;
        let (survivor_peer, _) = lb.accept()?;
        let udp_server = UdpSocket::bind("127.0.0.1:0")?;
        let udp_victim = UdpSocket::bind("127.0.0.1:0")?;
        udp_victim.connect(udp_server.local_addr()?)?;
        Ok(Conns {
            victim_port: la.local_addr()?.port(),
            udp_port: udp_server.local_addr()?.port(),
            victim,
            _victim_peer: victim_peer,
            survivor,
            survivor_peer,
            udp_victim,
            _udp_server: udp_server,
            _listeners: (la, lb),
        })
    })
    .expect("enter netns")
    .expect("connect inside netns")
}

fn wait_for_netns(pid: u32, netns: &Path) {
    let want = fs::metadata(netns).expect("stat netns").ino();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino())
        .ok()
        != Some(want)
    {
        assert!(Instant::now() < deadline, "helper never entered {netns:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn destroys_sockets_to_a_removed_backend_in_pod_namespaces() {
    let ns = Netns::new(&unique("td"));
    let cg = Cgroup::new(&unique("td"));
    // A process of the "Pod": it sits in the namespace and in the node's cgroup subtree.
    let helper = ChildGuard(
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["sleep", "600"])
            .spawn()
            .expect("spawn helper"),
    );
    fs::write(cg.0.join("cgroup.procs"), helper.0.id().to_string()).expect("join cgroup");
    wait_for_netns(helper.0.id(), &ns.path());

    let mut c = connect_in(&ns.path());
    // Block in read() before the teardown, as an idle client would.
    let victim = c.victim.try_clone().expect("clone");
    victim
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reader = std::thread::spawn(move || {
        let mut victim = victim;
        let start = Instant::now();
        let r = victim.read(&mut [0u8; 16]);
        (r, start.elapsed())
    });
    let udp = c.udp_victim.try_clone().expect("clone");
    udp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let udp_reader = std::thread::spawn(move || udp.recv(&mut [0u8; 16]));
    std::thread::sleep(Duration::from_millis(100));

    let gone = [
        backend("127.0.0.1", c.victim_port, Proto::Tcp),
        backend("127.0.0.1", c.udp_port, Proto::Udp),
    ];
    let started = Instant::now();
    let n = destroy_connections(&cg.0, None, &gone).expect("destroy");
    eprintln!("teardown: {n} sockets destroyed in {:?}", started.elapsed());
    assert_eq!(n, 2, "the TCP client and the connected UDP socket");

    let (r, waited) = reader.join().expect("reader");
    let e = r.expect_err("read must fail on a destroyed socket");
    assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
    assert!(
        waited < Duration::from_secs(5),
        "read returned after {waited:?}"
    );
    let e = udp_reader
        .join()
        .expect("udp reader")
        .expect_err("recv must fail on a destroyed socket");
    assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");

    // The connection to another port is untouched.
    c.survivor_peer.write_all(b"x").expect("peer write");
    let mut buf = [0u8; 1];
    c.survivor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.survivor
        .read_exact(&mut buf)
        .expect("survivor still works");
    assert_eq!(&buf, b"x");
}

#[test]
fn destroys_sockets_in_the_node_namespace() {
    let ns = Netns::new(&unique("tdn"));
    // No process anywhere: the node namespace is reached through its path alone.
    let empty = Cgroup::new(&unique("tdn"));
    let c = connect_in(&ns.path());
    let gone = [backend("127.0.0.1", c.victim_port, Proto::Tcp)];
    let n = destroy_connections(&empty.0, Some(&ns.path()), &gone).expect("destroy");
    assert_eq!(n, 1);
    let mut victim = c.victim;
    victim
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let e = victim.read(&mut [0u8; 1]).expect_err("destroyed");
    assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
    // Nothing left to destroy the second time.
    assert_eq!(
        destroy_connections(&empty.0, Some(&ns.path()), &gone).expect("destroy"),
        0
    );
}

#[test]
fn destroys_ipv6_and_v4_mapped_connections() {
    let ns = Netns::new(&unique("td6"));
    let empty = Cgroup::new(&unique("td6"));
    let (v6, mapped, keep) = in_netns(Some(&ns.path()), || -> io::Result<_> {
        let l6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0))?;
        let v6 = TcpStream::connect(l6.local_addr()?)?;
        let (p6, _) = l6.accept()?;
        // A dual-stack listener's accepted socket sees its IPv4 peer as ::ffff:127.0.0.1.
        let l4 = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))?;
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, l4.local_addr()?.port()))?;
        let (mapped, _) = l4.accept()?;
        Ok((v6, mapped, (l6, p6, l4, client)))
    })
    .expect("enter netns")
    .expect("connect inside netns");
    let gone = [
        backend("::1", keep.0.local_addr().expect("addr").port(), Proto::Tcp),
        // The accepted socket's remote end: the IPv4 client's port, named as plain IPv4.
        backend(
            "127.0.0.1",
            keep.3.local_addr().expect("addr").port(),
            Proto::Tcp,
        ),
    ];
    let n = destroy_connections(&empty.0, Some(&ns.path()), &gone).expect("destroy");
    assert_eq!(n, 2);
    for mut s in [v6, mapped] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let e = s.read(&mut [0u8; 1]).expect_err("destroyed");
        assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
    }
}
