//! NetworkPolicy through the API (discovery, CRUD, list/watch, defaulting, validation, Table
//! output, the real kubectl) and the `kubernetes.io/metadata.name` label of Namespaces that its
//! namespaceSelectors match on.

use axum::{body::Body, http::StatusCode};
use serde_json::{Value, json};

use super::{Harness, KUBECTL, harness, item_names, kubectl, next_event, start_server};
use crate::store::Store as _;

const NETPOLS: &str = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn netpol(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name}, "spec": spec})
}

async fn put(h: &Harness, path: &str, body: &Value) -> super::Resp {
    h.call("PUT", path, "application/json", body.to_string())
        .await
}

async fn merge_patch(h: &Harness, path: &str, patch: Value) -> super::Resp {
    h.call(
        "PATCH",
        path,
        "application/merge-patch+json",
        patch.to_string(),
    )
    .await
}

#[tokio::test]
async fn api_netpol_discovery_crud_list_and_watch() {
    let h = harness().await;
    let apis = h.get("/apis").await;
    let group = apis.body["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["name"] == "networking.k8s.io")
        .cloned()
        .expect("networking.k8s.io served");
    assert_eq!(
        group["preferredVersion"]["groupVersion"],
        "networking.k8s.io/v1"
    );
    let res = h.get("/apis/networking.k8s.io/v1").await;
    assert_eq!(res.status, StatusCode::OK);
    let resources = res.body["resources"].as_array().expect("resources");
    assert_eq!(resources.len(), 1, "no subresources: {resources:?}");
    let np = &resources[0];
    assert_eq!(np["name"], "networkpolicies");
    assert_eq!(np["singularName"], "networkpolicy");
    assert_eq!(np["kind"], "NetworkPolicy");
    assert_eq!(np["namespaced"], true);
    assert_eq!(np["shortNames"], json!(["netpol"]));
    assert_eq!(
        np["verbs"],
        json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ])
    );
    let agg = h
        .with_accept(
            "/apis",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        )
        .await;
    let entry = agg.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|g| g["metadata"]["name"] == "networking.k8s.io")
        .cloned()
        .expect("aggregated entry");
    assert_eq!(entry["versions"][0]["resources"][0]["scope"], "Namespaced");

    let list = h.get(NETPOLS).await;
    assert_eq!(list.body["kind"], "NetworkPolicyList");
    assert_eq!(list.body["apiVersion"], "networking.k8s.io/v1");
    let rv = list.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut rx = h
        .watch(&format!("{NETPOLS}?watch=true&resourceVersion={rv}"))
        .await;

    let spec = json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                     "ports": [{"port": 5432}]}]});
    let created = h.post(NETPOLS, netpol("db", spec)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["metadata"]["generation"], 1);
    assert_eq!(created.body["metadata"]["namespace"], "default");
    let ev = next_event(&mut rx).await;
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "db");
    assert_eq!(ev["object"]["spec"]["policyTypes"], json!(["Ingress"]));

    let got = h.get(&format!("{NETPOLS}/db")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["kind"], "NetworkPolicy");
    assert_eq!(
        got.body["spec"]["ingress"][0]["ports"][0],
        json!({"port": 5432, "protocol": "TCP"})
    );
    let all = h.get("/apis/networking.k8s.io/v1/networkpolicies").await;
    assert_eq!(item_names(&all.body), ["db"]);

    let mut changed = got.body.clone();
    changed["spec"]["ingress"][0]["ports"][0]["port"] = json!(5433);
    let r = put(&h, &format!("{NETPOLS}/db"), &changed).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["generation"], 2);
    let ev = next_event(&mut rx).await;
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["spec"]["ingress"][0]["ports"][0]["port"], 5433);

    // A metadata-only change keeps the generation.
    let r = merge_patch(
        &h,
        &format!("{NETPOLS}/db"),
        json!({"metadata": {"labels": {"team": "data"}}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["generation"], 2);
    next_event(&mut rx).await;

    let r = h
        .call(
            "DELETE",
            &format!("{NETPOLS}/db"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let ev = next_event(&mut rx).await;
    assert_eq!(ev["type"], "DELETED");
    assert_eq!(ev["object"]["metadata"]["name"], "db");
    assert_eq!(
        h.get(&format!("{NETPOLS}/db")).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(item_names(&h.get(NETPOLS).await.body).is_empty());
}

#[tokio::test]
async fn api_netpol_defaults_policy_types_and_protocols() {
    let h = harness().await;
    let cases = [
        (json!({}), json!(["Ingress"])),
        (json!({"ingress": [{}]}), json!(["Ingress"])),
        (
            json!({"egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
            json!(["Ingress", "Egress"]),
        ),
        (json!({"egress": []}), json!(["Ingress"])),
        (
            json!({"policyTypes": ["Egress"], "egress": [{}]}),
            json!(["Egress"]),
        ),
        (json!({"policyTypes": []}), json!(["Ingress"])),
    ];
    for (i, (spec, types)) in cases.into_iter().enumerate() {
        let r = h
            .post(NETPOLS, netpol(&format!("d{i}"), spec.clone()))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{spec}: {}", r.body);
        assert_eq!(r.body["spec"]["policyTypes"], types, "{spec}");
        assert_eq!(r.body["spec"]["podSelector"], json!({}), "{spec}");
    }
    let r = h
        .post(
            NETPOLS,
            netpol(
                "ports",
                json!({"ingress": [{"ports": [{"port": 80}, {"port": "http", "protocol": "SCTP"}, {}]}],
                       "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 443, "endPort": 445}]}]}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let stored = h.get(&format!("{NETPOLS}/ports")).await.body;
    let protocols = |dir: &str| -> Vec<Value> {
        stored["spec"][dir][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| p["protocol"].clone())
            .collect()
    };
    assert_eq!(
        protocols("ingress"),
        [json!("TCP"), json!("SCTP"), json!("TCP")]
    );
    assert_eq!(protocols("egress"), [json!("UDP"), json!("TCP")]);
    assert_eq!(stored["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    // Defaults also apply to updates: a PUT that drops policyTypes and a protocol gets them back.
    let mut upd = stored.clone();
    upd["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("policyTypes");
    upd["spec"]["egress"][0]["ports"][1]
        .as_object_mut()
        .expect("port")
        .remove("protocol");
    let r = put(&h, &format!("{NETPOLS}/ports"), &upd).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(r.body["spec"]["egress"][0]["ports"][1]["protocol"], "TCP");
}

/// The label problems apimachinery reports for an invalid name part and value.
const KEY_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// (spec, field, message) of every refusal: each spec has exactly one problem.
fn invalid_cases() -> Vec<(Value, &'static str, String)> {
    let from = |peer: Value| json!({"ingress": [{"from": [peer]}]});
    let ports = |port: Value| json!({"ingress": [{"ports": [port]}]});
    let ip_block = |block: Value| from(json!({"ipBlock": block}));
    let cidr_msg = |v: &str| {
        format!(
            "Invalid value: \"{v}\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
        )
    };
    let range = "must be between 1 and 65535, inclusive";
    vec![
        (ip_block(json!({"cidr": "10.0.0.0/33"})), "spec.ingress[0].from[0].ipBlock.cidr", cidr_msg("10.0.0.0/33")),
        (ip_block(json!({"cidr": "not-a-cidr"})), "spec.ingress[0].from[0].ipBlock.cidr", cidr_msg("not-a-cidr")),
        (ip_block(json!({"cidr": "10.0.0.1/8"})), "spec.ingress[0].from[0].ipBlock.cidr",
            "Invalid value: \"10.0.0.1/8\": must not have bits set beyond the prefix length".into()),
        (ip_block(json!({"cidr": "010.0.0.0/8"})), "spec.ingress[0].from[0].ipBlock.cidr",
            "Invalid value: \"010.0.0.0/8\": must not have leading 0s in IP or prefix length".into()),
        (ip_block(json!({})), "spec.ingress[0].from[0].ipBlock.cidr", "Required value".into()),
        (ip_block(json!({"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]})), "spec.ingress[0].from[0].ipBlock.except[0]",
            "Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`".into()),
        (ip_block(json!({"cidr": "10.0.0.0/16", "except": ["10.0.0.0/24", "10.0.0.0/16"]})), "spec.ingress[0].from[0].ipBlock.except[1]",
            "Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`".into()),
        (ip_block(json!({"cidr": "10.0.0.0/8", "except": ["2001:db8::/64"]})), "spec.ingress[0].from[0].ipBlock.except[0]",
            "Invalid value: \"2001:db8::/64\": must be a strict subset of `cidr`".into()),
        (json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/40"]}}]}]}),
            "spec.egress[0].to[0].ipBlock.except[0]", cidr_msg("10.0.0.0/40")),
        (ports(json!({"port": 0})), "spec.ingress[0].ports[0].port", format!("Invalid value: 0: {range}")),
        (json!({"egress": [{"ports": [{"port": 70000}]}]}), "spec.egress[0].ports[0].port", format!("Invalid value: 70000: {range}")),
        (ports(json!({"endPort": 90})), "spec.ingress[0].ports[0].endPort",
            "Invalid value: 90: may not be specified when `port` is not specified".into()),
        (ports(json!({"port": 90, "endPort": 80})), "spec.ingress[0].ports[0].endPort",
            "Invalid value: 80: must be greater than or equal to `port`".into()),
        (ports(json!({"port": 80, "endPort": 70000})), "spec.ingress[0].ports[0].endPort", format!("Invalid value: 70000: {range}")),
        (ports(json!({"port": "http", "endPort": 90})), "spec.ingress[0].ports[0].endPort",
            "Invalid value: 90: may not be specified when `port` is non-numeric".into()),
        (ports(json!({"port": 80, "protocol": "ICMP"})), "spec.ingress[0].ports[0].protocol",
            "Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"".into()),
        (ports(json!({"port": "Web_Port"})), "spec.ingress[0].ports[0].port",
            "Invalid value: \"Web_Port\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into()),
        (ports(json!({"port": "8080"})), "spec.ingress[0].ports[0].port",
            "Invalid value: \"8080\": must contain at least one letter (a-z)".into()),
        (ports(json!({"port": "very-long-port-name"})), "spec.ingress[0].ports[0].port",
            "Invalid value: \"very-long-port-name\": must be no more than 15 characters".into()),
        (ports(json!({"port": "web--port"})), "spec.ingress[0].ports[0].port",
            "Invalid value: \"web--port\": must not contain consecutive hyphens".into()),
        (from(json!({})), "spec.ingress[0].from[0]", "Required value: must specify a peer".into()),
        (from(json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}})), "spec.ingress[0].from[0]",
            "Forbidden: may not specify both ipBlock and another peer".into()),
        (json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}), "spec.egress[0].to[0]",
            "Forbidden: may not specify both ipBlock and another peer".into()),
        (json!({"podSelector": {"matchLabels": {"bad key": "x"}}}), "spec.podSelector.matchLabels",
            format!("Invalid value: \"bad key\": {KEY_MSG}")),
        (json!({"podSelector": {"matchLabels": {"app": "-web"}}}), "spec.podSelector.matchLabels",
            format!("Invalid value: \"-web\": {VALUE_MSG}")),
        (json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}}),
            "spec.podSelector.matchExpressions[0].values",
            "Required value: must be specified when `operator` is 'In' or 'NotIn'".into()),
        (json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn"}]}}),
            "spec.podSelector.matchExpressions[0].values",
            "Required value: must be specified when `operator` is 'In' or 'NotIn'".into()),
        (from(json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["web"]}]}})),
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
            "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'".into()),
        (from(json!({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Equals", "values": ["a"]}]}})),
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator",
            "Invalid value: \"Equals\": not a valid selector operator".into()),
        (from(json!({"namespaceSelector": {"matchExpressions": [{"key": "team!", "operator": "Exists"}]}})),
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].key",
            format!("Invalid value: \"team!\": {KEY_MSG}")),
        (from(json!({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b c"]}]}})),
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values[1]",
            format!("Invalid value: \"b c\": {VALUE_MSG}")),
        (json!({"podSelector": {"matchExpressions": [{"key": "a/b/c", "operator": "Exists"}]}}),
            "spec.podSelector.matchExpressions[0].key",
            "Invalid value: \"a/b/c\": a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".into()),
        (json!({"policyTypes": ["Ingress", "Sideways"]}), "spec.policyTypes[1]",
            "Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\"".into()),
        (json!({"policyTypes": ["Ingress", "Egress", "Ingress"]}), "spec.policyTypes",
            "Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"Ingress\"}: may not specify more than two policyTypes".into()),
    ]
}

#[tokio::test]
async fn api_netpol_validation_refuses_and_stores_nothing() {
    let h = harness().await;
    for (i, (spec, field, message)) in invalid_cases().into_iter().enumerate() {
        let name = format!("bad-{i}");
        let r = h.post(NETPOLS, netpol(&name, spec.clone())).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{spec}: {}",
            r.body
        );
        assert_eq!(r.body["kind"], "Status");
        assert_eq!(r.body["reason"], "Invalid");
        assert_eq!(r.body["code"], 422);
        assert_eq!(
            r.body["message"],
            format!("NetworkPolicy.networking.k8s.io \"{name}\" is invalid: {field}: {message}"),
            "{spec}"
        );
        let details = &r.body["details"];
        assert_eq!(
            (
                details["kind"].as_str(),
                details["group"].as_str(),
                details["name"].as_str()
            ),
            (
                Some("NetworkPolicy"),
                Some("networking.k8s.io"),
                Some(name.as_str())
            )
        );
        let causes = details["causes"].as_array().expect("causes");
        assert_eq!(causes.len(), 1, "{spec}: {causes:?}");
        assert_eq!(causes[0]["field"], field, "{spec}");
        assert_eq!(causes[0]["message"], message.as_str(), "{spec}");
        assert_eq!(
            h.get(&format!("{NETPOLS}/{name}")).await.status,
            StatusCode::NOT_FOUND,
            "{spec}: stored"
        );
    }
    assert!(item_names(&h.get(NETPOLS).await.body).is_empty());

    // Several problems: one cause each, listed in the message as kube-apiserver lists them.
    let spec = json!({"ingress": [{"ports": [{"port": 0, "protocol": "ICMP"}], "from": [{}]}]});
    let r = h.post(NETPOLS, netpol("many", spec)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = r.body["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.ingress[0].ports[0].protocol",
            "spec.ingress[0].ports[0].port",
            "spec.ingress[0].from[0]"
        ]
    );
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("NetworkPolicy.networking.k8s.io \"many\" is invalid: [spec.ingress[0].ports[0].protocol: Unsupported value")),
        "{}",
        r.body
    );

    // Updates are validated too, and leave the stored object as it was.
    let ok = h
        .post(
            NETPOLS,
            netpol("ok", json!({"ingress": [{"ports": [{"port": 80}]}]})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let mut bad = ok.body.clone();
    bad["spec"]["ingress"][0]["ports"][0]["port"] = json!(0);
    let r = put(&h, &format!("{NETPOLS}/ok"), &bad).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = merge_patch(
        &h,
        &format!("{NETPOLS}/ok"),
        json!({"spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(
        r.body["details"]["causes"][0]["field"],
        "spec.ingress[0].from[0].ipBlock.cidr"
    );
    let stored = h.get(&format!("{NETPOLS}/ok")).await.body;
    assert_eq!(stored["spec"], ok.body["spec"]);
    assert_eq!(
        stored["metadata"]["resourceVersion"],
        ok.body["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn api_netpol_update_tolerates_values_stored_under_older_rules() {
    let h = harness().await;
    // Stored before strict CIDR validation (kube-apiserver accepted host bits until 1.36).
    let legacy = netpol(
        "legacy",
        json!({"podSelector": {}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8", "except": ["10.1.0.1/16"]}}]}]}),
    );
    let mut legacy = legacy;
    legacy["metadata"]["namespace"] = json!("default");
    legacy["metadata"]["uid"] = json!("00000000-0000-4000-8000-000000000001");
    h.store
        .create(
            "/registry/networking.k8s.io/networkpolicies/default/legacy",
            serde_json::to_vec(&legacy).expect("json"),
        )
        .await
        .expect("stored");
    let path = format!("{NETPOLS}/legacy");
    let r = merge_patch(&h, &path, json!({"metadata": {"labels": {"a": "b"}}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A new value must follow today's rules.
    let r = merge_patch(
        &h,
        &path,
        json!({"spec": {"egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.1/24"}}]}]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(
        r.body["details"]["causes"][0]["field"],
        "spec.egress[0].to[0].ipBlock.cidr"
    );
}

#[tokio::test]
async fn api_netpol_table_shows_the_pod_selector() {
    let h = harness().await;
    let web = json!({"podSelector": {"matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]}});
    assert_eq!(
        h.post(NETPOLS, netpol("web", web)).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        h.post(NETPOLS, netpol("all", json!({}))).await.status,
        StatusCode::CREATED
    );
    let deny = json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"},
        {"key": "env", "operator": "NotIn", "values": ["prod"]}]}});
    assert_eq!(
        h.post(NETPOLS, netpol("deny", deny)).await.status,
        StatusCode::CREATED
    );
    let t = h.with_accept(NETPOLS, TABLE).await;
    assert_eq!(t.body["kind"], "Table", "{}", t.body);
    let cols: Vec<&str> = t.body["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(cols, ["Name", "Pod-Selector", "Age"]);
    let rows: Vec<(Value, Value)> = t.body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["cells"][0].clone(), r["cells"][1].clone()))
        .collect();
    assert_eq!(
        rows,
        [
            (json!("all"), json!("<none>")),
            (json!("deny"), json!("!app,env notin (prod)")),
            (json!("web"), json!("app=web,tier in (a,b)")),
        ]
    );
    assert!(
        t.body["rows"][0]["cells"][2]
            .as_str()
            .is_some_and(|a| a.ends_with('s'))
    );
    assert_eq!(t.body["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    let one = h.with_accept(&format!("{NETPOLS}/web"), TABLE).await;
    assert_eq!(one.body["rows"][0]["cells"][1], "app=web,tier in (a,b)");
}

fn label_of(ns: &Value) -> &Value {
    &ns["metadata"]["labels"][NAME_LABEL]
}

#[tokio::test]
async fn api_namespace_name_label_is_always_set() {
    let h = harness().await;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let r = h.get(&format!("/api/v1/namespaces/{ns}")).await;
        assert_eq!(label_of(&r.body), ns, "{}", r.body);
    }
    let r = h
        .post(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "team-a", "labels": {"team": "a", NAME_LABEL: "spoofed"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(label_of(&r.body), "team-a");
    assert_eq!(r.body["metadata"]["labels"]["team"], "a");
    let path = "/api/v1/namespaces/team-a";

    // An update that removes the label, or all labels, gets it back.
    let mut ns = h.get(path).await.body;
    ns["metadata"]["labels"] = json!({"team": "a"});
    let r = put(&h, path, &ns).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(label_of(&r.body), "team-a");
    let mut ns = h.get(path).await.body;
    ns["metadata"]
        .as_object_mut()
        .expect("meta")
        .remove("labels");
    let r = put(&h, path, &ns).await;
    assert_eq!(label_of(&r.body), "team-a", "{}", r.body);
    assert_eq!(label_of(&h.get(path).await.body), "team-a");

    // Patches that remove or change it do not stick either.
    let r = merge_patch(
        &h,
        path,
        json!({"metadata": {"labels": {NAME_LABEL: null}}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(label_of(&r.body), "team-a");
    let r = merge_patch(
        &h,
        path,
        json!({"metadata": {"labels": {NAME_LABEL: "other"}}}),
    )
    .await;
    assert_eq!(label_of(&r.body), "team-a", "{}", r.body);
    let r = h
        .call(
            "PATCH",
            path,
            "application/json-patch+json",
            r#"[{"op": "remove", "path": "/metadata/labels"}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(label_of(&r.body), "team-a");
    assert_eq!(label_of(&h.get(path).await.body), "team-a");

    // A generated name is known only after defaulting begins: the label still carries it.
    let r = h
        .post(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"generateName": "gen-"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let generated = r.body["metadata"]["name"].as_str().expect("name");
    assert!(generated.starts_with("gen-") && generated.len() > 4);
    assert_eq!(label_of(&r.body), generated);

    // namespaceSelectors find namespaces by it.
    let r = h
        .get(&format!(
            "/api/v1/namespaces?labelSelector={NAME_LABEL}%3Dteam-a"
        ))
        .await;
    assert_eq!(item_names(&r.body), ["team-a"]);
}

#[tokio::test]
async fn api_namespace_name_label_added_to_stored_namespaces_at_start() {
    let h = harness().await;
    let legacy = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "legacy", "uid": "00000000-0000-4000-8000-000000000002", "labels": {"a": "b"}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
    h.store
        .create(
            "/registry/core/namespaces/legacy",
            serde_json::to_vec(&legacy).expect("json"),
        )
        .await
        .expect("stored");
    let kv = h
        .store
        .get("/registry/core/namespaces/default")
        .await
        .expect("get")
        .expect("default exists");
    let mut default: Value = serde_json::from_slice(&kv.value).expect("json");
    default["metadata"]
        .as_object_mut()
        .expect("meta")
        .remove("labels");
    h.store
        .update(
            &kv.key,
            serde_json::to_vec(&default).expect("json"),
            kv.mod_revision,
        )
        .await
        .expect("updated");
    assert!(label_of(&h.get("/api/v1/namespaces/legacy").await.body).is_null());

    crate::server::ensure_system_namespaces(&h.state)
        .await
        .expect("start-up pass");
    let legacy = h.get("/api/v1/namespaces/legacy").await.body;
    assert_eq!(label_of(&legacy), "legacy");
    assert_eq!(legacy["metadata"]["labels"]["a"], "b");
    assert_eq!(
        label_of(&h.get("/api/v1/namespaces/default").await.body),
        "default"
    );
    // A second pass finds nothing to do.
    let again = crate::api::namespaces::label_stored_namespaces(&h.state)
        .await
        .expect("second pass");
    assert!(again.is_empty(), "{again:?}");
}

const NETPOL_MANIFEST: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api-allow
spec:
  podSelector:
    matchLabels: {app: api}
    matchExpressions:
    - {key: tier, operator: In, values: [backend, cache]}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: frontend}
      podSelector:
        matchLabels: {app: web}
    - ipBlock:
        cidr: 172.17.0.0/16
        except: [172.17.1.0/24]
    ports:
    - {protocol: TCP, port: 8080}
    - {port: metrics}
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/24}
    ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 32000, endPort: 32768}
"#;

const BAD_NETPOL_MANIFEST: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: bad-cidr
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/33}
"#;

const UNKNOWN_FIELD_MANIFEST: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: typo
spec:
  podSelector: {}
  ingres: []
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_netpol_with_real_kubectl() {
    if !std::path::Path::new(KUBECTL).exists() {
        println!("skipping: kubectl not found at {KUBECTL}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, kc) = start_server(dir.path()).await;
    let run = move |args: Vec<&'static str>, stdin: Option<&'static str>| {
        let kc = kc.clone();
        tokio::task::spawn_blocking(move || kubectl(&kc, &args, stdin))
    };

    let (ok, out, err) = run(vec!["apply", "-f", "-"], Some(NETPOL_MANIFEST))
        .await
        .expect("join");
    assert!(
        ok && out.contains("networkpolicy.networking.k8s.io/api-allow created"),
        "{out}{err}"
    );
    // A second apply patches against the live (defaulted) object, through strict field
    // validation.
    let (ok, out, err) = run(vec!["apply", "-f", "-"], Some(NETPOL_MANIFEST))
        .await
        .expect("join");
    assert!(
        ok && out.contains("networkpolicy.networking.k8s.io/api-allow"),
        "{out}{err}"
    );

    let (ok, out, _) = run(vec!["get", "netpol"], None).await.expect("join");
    assert!(ok, "get failed");
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "POD-SELECTOR", "AGE"], "{out}");
    let row = lines.next().unwrap_or_default();
    assert!(
        row.starts_with("api-allow") && row.contains("app=api,tier in (backend,cache)"),
        "{out}"
    );
    let (ok, out, _) = run(
        vec![
            "get",
            "networkpolicy",
            "api-allow",
            "-o",
            "jsonpath={.spec.ingress[0].ports[1].protocol} {.spec.egress[0].ports[1].endPort}",
        ],
        None,
    )
    .await
    .expect("join");
    assert!(ok && out == "TCP 32768", "{out}");

    let (ok, out, err) = run(vec!["explain", "networkpolicy.spec.ingress"], None)
        .await
        .expect("join");
    assert!(ok, "explain failed: {err}");
    assert!(
        out.contains("networking.k8s.io")
            && out.contains("NetworkPolicy")
            && out.contains("from")
            && out.contains("ports"),
        "{out}"
    );

    let (ok, _, err) = run(vec!["apply", "-f", "-"], Some(BAD_NETPOL_MANIFEST))
        .await
        .expect("join");
    assert!(!ok, "an invalid policy was accepted");
    assert!(
        err.contains("spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value"),
        "{err}"
    );
    let (ok, _, err) = run(vec!["apply", "-f", "-"], Some(UNKNOWN_FIELD_MANIFEST))
        .await
        .expect("join");
    assert!(
        !ok && err.contains("unknown field \"spec.ingres\""),
        "{err}"
    );

    let (ok, out, _) = run(vec!["get", "ns", "default", "--show-labels"], None)
        .await
        .expect("join");
    assert!(
        ok && out.contains("kubernetes.io/metadata.name=default"),
        "{out}"
    );

    let (ok, out, _) = run(vec!["delete", "netpol", "api-allow"], None)
        .await
        .expect("join");
    assert!(ok && out.contains("deleted"), "{out}");
    server.abort();
}
