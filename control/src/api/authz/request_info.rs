//! What a request asks to do, in the attributes authorization decides on, as kube-apiserver's
//! `RequestInfoFactory` (staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go)
//! reads them from the method and path: a resource request
//! (`/api/v1/namespaces/{ns}/{resource}/{name}/{subresource}`, `/apis/{group}/{version}/...`)
//! with its verb (get, list, watch, create, update, patch, delete, deletecollection), or a
//! non-resource request (everything else, discovery included) with the method as verb.

/// The attributes of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub resource_request: bool,
    pub verb: String,
    pub api_group: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// The URL path (what non-resource rules match).
    pub path: String,
}

/// The request's attributes from its method, path and query.
pub fn parse(method: &http::Method, path: &str, query: Option<&str>) -> RequestInfo {
    let non_resource = || RequestInfo {
        verb: method.as_str().to_ascii_lowercase(),
        path: path.to_owned(),
        ..RequestInfo::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return non_resource(),
    };
    // Discovery (`/api/v1`, `/apis/{group}/{version}`) is not a resource request.
    if rest.is_empty() {
        return non_resource();
    }
    let mut info = RequestInfo {
        resource_request: true,
        api_group: api_group.to_owned(),
        path: path.to_owned(),
        ..RequestInfo::default()
    };
    // The deprecated `/watch/` prefix.
    let mut rest = rest;
    let mut watch_prefix = false;
    if rest.first() == Some(&"watch") {
        watch_prefix = true;
        rest = &rest[1..];
    }
    if rest.first() == Some(&"namespaces") && rest.len() >= 2 {
        info.namespace = rest[1].to_owned();
        if rest.len() == 2 {
            // `/namespaces/{name}`: the Namespace itself.
            info.resource = "namespaces".into();
            info.name = rest[1].to_owned();
        } else if rest.len() >= 3 && matches!(rest.get(2), Some(&"status" | &"finalize")) {
            info.resource = "namespaces".into();
            info.name = rest[1].to_owned();
            info.subresource = rest[2].to_owned();
        } else {
            rest = &rest[2..];
            fill(&mut info, rest);
        }
    } else {
        fill(&mut info, rest);
    }
    let watch = watch_prefix
        || query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
        });
    info.verb = match *method {
        http::Method::POST => "create",
        http::Method::GET | http::Method::HEAD if watch => "watch",
        http::Method::GET | http::Method::HEAD if info.name.is_empty() => "list",
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if info.name.is_empty() => "deletecollection",
        http::Method::DELETE => "delete",
        _ => "",
    }
    .to_owned();
    if info.verb.is_empty() {
        info.verb = method.as_str().to_ascii_lowercase();
    }
    info
}

fn fill(info: &mut RequestInfo, rest: &[&str]) {
    if info.resource.is_empty() {
        info.resource = rest.first().copied().unwrap_or_default().to_owned();
    }
    info.name = rest.get(1).copied().unwrap_or_default().to_owned();
    info.subresource = rest.get(2).copied().unwrap_or_default().to_owned();
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    fn p(
        m: Method,
        path: &str,
        q: Option<&str>,
    ) -> (bool, String, String, String, String, String, String) {
        let i = parse(&m, path, q);
        (
            i.resource_request,
            i.verb,
            i.api_group,
            i.namespace,
            i.resource,
            i.subresource,
            i.name,
        )
    }

    #[test]
    fn resource_paths_and_verbs_read_as_kube_apiserver_reads_them() {
        let s = |x: &str| x.to_owned();
        assert_eq!(
            p(Method::GET, "/api/v1/namespaces/default/pods", None),
            (
                true,
                s("list"),
                s(""),
                s("default"),
                s("pods"),
                s(""),
                s("")
            )
        );
        assert_eq!(
            p(
                Method::GET,
                "/api/v1/namespaces/default/pods",
                Some("watch=true&rv=1")
            ),
            (
                true,
                s("watch"),
                s(""),
                s("default"),
                s("pods"),
                s(""),
                s("")
            )
        );
        assert_eq!(
            p(
                Method::POST,
                "/api/v1/namespaces/default/pods/web/exec",
                Some("command=sh")
            ),
            (
                true,
                s("create"),
                s(""),
                s("default"),
                s("pods"),
                s("exec"),
                s("web")
            )
        );
        assert_eq!(
            p(
                Method::DELETE,
                "/apis/apps/v1/namespaces/team/deployments",
                None
            ),
            (
                true,
                s("deletecollection"),
                s("apps"),
                s("team"),
                s("deployments"),
                s(""),
                s("")
            )
        );
        assert_eq!(
            p(Method::PATCH, "/api/v1/nodes/n1/status", None),
            (
                true,
                s("patch"),
                s(""),
                s(""),
                s("nodes"),
                s("status"),
                s("n1")
            )
        );
        assert_eq!(
            p(Method::GET, "/api/v1/namespaces/team", None),
            (
                true,
                s("get"),
                s(""),
                s("team"),
                s("namespaces"),
                s(""),
                s("team")
            )
        );
        assert_eq!(
            p(Method::PUT, "/api/v1/namespaces/team/finalize", None),
            (
                true,
                s("update"),
                s(""),
                s("team"),
                s("namespaces"),
                s("finalize"),
                s("team")
            )
        );
        assert_eq!(
            p(Method::GET, "/api/v1/watch/namespaces/default/pods", None).1,
            "watch"
        );
    }

    #[test]
    fn discovery_and_other_paths_are_non_resource() {
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/version",
            "/metrics",
            "/openapi/v3",
        ] {
            let i = parse(&Method::GET, path, None);
            assert!(!i.resource_request, "{path}");
            assert_eq!((i.verb.as_str(), i.path.as_str()), ("get", path));
        }
    }
}
