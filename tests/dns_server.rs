//! `keelson dns` against a real `keelson server` on loopback: objects created with the real
//! kubectl, questions asked over UDP and TCP with hickory's message types, names outside the
//! cluster forwarded to a dnsmasq upstream.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

mod support;

/// Kills the child (and waits for it) when the test ends, failed or not.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A UDP and TCP port free on loopback at the time of asking.
fn free_dns_port() -> u16 {
    loop {
        let p = free_port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log");
    let err = out.try_clone().expect("log");
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
    )
}

/// One question, one answer (UDP, or TCP with its two-byte length, RFC 1035 §4.2.2).
fn ask(server: SocketAddr, name: &str, qtype: RecordType, tcp: bool) -> Message {
    let mut q = Message::query();
    q.metadata.id = rand_id();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    let bytes = q.to_vec().expect("encode");
    let reply = if tcp {
        let mut s = TcpStream::connect(server).expect("tcp connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let len = u16::try_from(bytes.len()).expect("len").to_be_bytes();
        s.write_all(&len).expect("write");
        s.write_all(&bytes).expect("write");
        let mut len = [0u8; 2];
        s.read_exact(&mut len).expect("read len");
        let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).expect("read");
        buf
    } else {
        let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.send_to(&bytes, server).expect("send");
        let mut buf = vec![0; 4096];
        let (n, _) = s.recv_from(&mut buf).expect("recv");
        buf.truncate(n);
        buf
    };
    let m = Message::from_vec(&reply).expect("decode");
    assert_eq!(m.metadata.id, q.metadata.id, "reply to another question");
    m
}

fn rand_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    (t % 65_521) as u16
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
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

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text))
}

struct Env {
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    dns: SocketAddr,
    health: SocketAddr,
    _server: Proc,
    _upstream: Proc,
    _dns: Proc,
}

impl Env {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new(support::kubectl())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("kubectl stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            support::output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml));
    }
}

fn start() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = free_port();
    let server = spawn(
        Command::new(support::keelson())
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("server"))
            .args(["--listen", &format!("127.0.0.1:{api}")]),
        &dir.path().join("server.log"),
    );
    let kubeconfig = dir.path().join("server/admin.kubeconfig");
    support::wait_for(
        "the API server's kubeconfig",
        Duration::from_secs(30),
        || kubeconfig.exists().then_some(()),
    );
    // The upstream: dnsmasq serving one name of its own, nothing else.
    let up_port = free_dns_port();
    let upstream = spawn(
        Command::new("dnsmasq").args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={up_port}"),
            "--host-record=outside.example,192.0.2.7",
            "--pid-file=",
            "--user=root",
        ]),
        &dir.path().join("dnsmasq.log"),
    );
    let dns_port = free_dns_port();
    let health_port = free_port();
    let dns: SocketAddr = ([127, 0, 0, 1], dns_port).into();
    let health: SocketAddr = ([127, 0, 0, 1], health_port).into();
    let dns_proc = spawn(
        Command::new(support::keelson())
            .arg("dns")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--listen", &dns.to_string()])
            .args(["--health-listen", &health.to_string()])
            .args(["--upstream", &format!("127.0.0.1:{up_port}")]),
        &dir.path().join("dns.log"),
    );
    let log = dir.path().join("dns.log");
    support::wait_for("keelson dns /ready", Duration::from_secs(30), || {
        let (code, _) = http_get(health, "/ready")?;
        (code == 200).then_some(())
    });
    let _ = log;
    Env {
        _dir: dir,
        kubeconfig,
        dns,
        health,
        _server: server,
        _upstream: upstream,
        _dns: dns_proc,
    }
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: default
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
  - addresses: ["10.244.1.5"]
    hostname: db-0
    conditions: {ready: true}
  - addresses: ["10.244.2.6"]
    hostname: db-1
    conditions: {ready: true}
  - addresses: ["10.244.2.9"]
    hostname: db-2
    conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: outside.example
"#;

#[test]
fn dns_answers_from_a_real_api_server() {
    let env = start();
    env.apply(OBJECTS);
    let hello_ip: IpAddr = env
        .kubectl(
            &["get", "svc", "hello", "-o", "jsonpath={.spec.clusterIP}"],
            None,
        )
        .trim()
        .parse()
        .expect("clusterIP");
    let dns = env.dns;
    // The objects reach the snapshot through the watches.
    support::wait_for("the db endpoints in DNS", Duration::from_secs(10), || {
        let m = ask(dns, "db.default.svc.cluster.local.", RecordType::A, false);
        (addrs(&m).len() == 2).then_some(())
    });

    for tcp in [false, true] {
        let m = ask(dns, "hello.default.svc.cluster.local.", RecordType::A, tcp);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(addrs(&m), vec![hello_ip], "tcp={tcp}");
        assert_eq!(m.answers[0].ttl, 5);
    }

    // SRV of the named port, with the target's address in the additional section.
    let m = ask(
        dns,
        "_http._tcp.hello.default.svc.cluster.local.",
        RecordType::SRV,
        false,
    );
    let RData::SRV(srv) = &m.answers[0].data else {
        panic!("no SRV: {m:?}");
    };
    assert_eq!(srv.port, 80);
    assert_eq!(srv.target.to_ascii(), "hello.default.svc.cluster.local.");
    assert!(
        m.additionals
            .iter()
            .any(|r| matches!(&r.data, RData::A(a) if IpAddr::V4(a.0) == hello_ip))
    );

    // Headless: the ready endpoints, each by its hostname too.
    let m = ask(dns, "db.default.svc.cluster.local.", RecordType::A, false);
    let want: Vec<IpAddr> = vec![
        "10.244.1.5".parse().expect("ip"),
        "10.244.2.6".parse().expect("ip"),
    ];
    assert_eq!(addrs(&m), want);
    let m = ask(
        dns,
        "db-1.db.default.svc.cluster.local.",
        RecordType::A,
        false,
    );
    assert_eq!(addrs(&m), vec!["10.244.2.6".parse::<IpAddr>().expect("ip")]);
    let m = ask(
        dns,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
        false,
    );
    let mut targets: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.target.to_ascii()),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "db-0.db.default.svc.cluster.local.",
            "db-1.db.default.svc.cluster.local."
        ]
    );

    // NXDOMAIN and NODATA, both with the zone's SOA in the authority section.
    let m = ask(dns, "nope.default.svc.cluster.local.", RecordType::A, false);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    assert!(
        matches!(m.authorities.first().map(|r| &r.data), Some(RData::SOA(_))),
        "{m:?}"
    );
    let m = ask(
        dns,
        "hello.default.svc.cluster.local.",
        RecordType::AAAA,
        false,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(
        matches!(m.authorities.first().map(|r| &r.data), Some(RData::SOA(_))),
        "{m:?}"
    );

    // PTR of the ClusterIP and of a headless endpoint.
    let ptr = |ip: IpAddr| {
        let m = ask(dns, &Name::from(ip).to_ascii(), RecordType::PTR, false);
        match m.answers.first().map(|r| &r.data) {
            Some(RData::PTR(p)) => p.0.to_ascii(),
            other => panic!("no PTR for {ip}: {other:?}"),
        }
    };
    assert_eq!(ptr(hello_ip), "hello.default.svc.cluster.local.");
    assert_eq!(ptr(want[0]), "db-0.db.default.svc.cluster.local.");

    // Outside the cluster: forwarded; an ExternalName's target chased upstream.
    let m = ask(dns, "outside.example.", RecordType::A, false);
    assert_eq!(addrs(&m), vec!["192.0.2.7".parse::<IpAddr>().expect("ip")]);
    let m = ask(dns, "ext.default.svc.cluster.local.", RecordType::A, false);
    assert!(
        matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "outside.example."),
        "{m:?}"
    );
    assert_eq!(addrs(&m), vec!["192.0.2.7".parse::<IpAddr>().expect("ip")]);

    // A new Service is answered within 1 s of its creation.
    env.kubectl(
        &["create", "service", "clusterip", "late", "--tcp=80:80"],
        None,
    );
    let created = Instant::now();
    let late_ip: IpAddr = env
        .kubectl(
            &["get", "svc", "late", "-o", "jsonpath={.spec.clusterIP}"],
            None,
        )
        .trim()
        .parse()
        .expect("clusterIP");
    loop {
        let m = ask(dns, "late.default.svc.cluster.local.", RecordType::A, false);
        if addrs(&m) == vec![late_ip] {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(1),
            "late not answered 1 s after its creation: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let answered = created.elapsed();
    eprintln!("a new Service was answered {answered:?} after its creation");
    // And a deleted one stops being answered as fast.
    env.kubectl(&["delete", "svc", "late"], None);
    let deleted = Instant::now();
    loop {
        let m = ask(dns, "late.default.svc.cluster.local.", RecordType::A, false);
        if m.metadata.response_code == ResponseCode::NXDomain {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(1),
            "late still answered: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Health and metrics.
    let (code, body) = http_get(env.health, "/health").expect("health");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(env.health, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("keelson_dns_responses_total{rcode=\"NXDOMAIN\"}"),
        "{body}"
    );
    assert!(
        body.contains("keelson_dns_forward_requests_total"),
        "{body}"
    );
    assert!(
        body.contains("keelson_dns_request_duration_seconds_bucket"),
        "{body}"
    );
}
