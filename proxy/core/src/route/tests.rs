use super::*;

fn spec(name: &str, pattern: &str, methods: &[&str], strip: bool) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        pattern: pattern.into(),
        methods: MethodSet::parse(methods.iter().copied()).unwrap(),
        group: 0,
        upstream: "u".into(),
        strip_prefix: strip,
        timeout: None,
        middlewares: Vec::new(),
        max_body_bytes: None,
        websocket: true,
    }
}

fn found<'a>(m: RouteMatch<'a>) -> &'a Route {
    match m {
        RouteMatch::Found(r) => r,
        other => panic!("expected a route, got {other:?}"),
    }
}

#[test]
fn longest_pattern_beats_a_catch_all_whatever_the_file_order() {
    let table = RouteTable::compile(vec![spec("all", "^/", &[], false), spec("users", "^/users", &[], false)]).unwrap();
    assert_eq!(&*found(table.find("GET", "/users/1", false)).name, "users");
    assert_eq!(&*found(table.find("GET", "/other", false)).name, "all");
}

#[test]
fn unmatched_path_is_not_found() {
    let table = RouteTable::compile(vec![spec("users", "^/users", &[], false)]).unwrap();
    assert!(matches!(table.find("GET", "/orders", false), RouteMatch::NotFound));
}

#[test]
fn wrong_method_is_405_with_the_union_of_allowed_methods() {
    let table = RouteTable::compile(vec![
        spec("read", "^/users", &["GET"], false),
        spec("write", "^/users/", &["POST", "PUT"], false),
    ])
    .unwrap();
    match table.find("DELETE", "/users/1", false) {
        RouteMatch::MethodNotAllowed(allow) => assert_eq!(allow, "GET, POST, PUT"),
        other => panic!("expected 405, got {other:?}"),
    }
    // A shorter route that accepts the method still serves it.
    assert_eq!(&*found(table.find("GET", "/users/1", false)).name, "read");
    // A preflight ignores method filters.
    assert_eq!(&*found(table.find("OPTIONS", "/users/1", true)).name, "write");
}

#[test]
fn strip_prefix_removes_the_match_and_keeps_the_query() {
    let table = RouteTable::compile(vec![spec("api", "^/api", &[], true)]).unwrap();
    let r = found(table.find("GET", "/api/users", false));
    assert_eq!(r.upstream_path("/api/users", None), "/users");
    assert_eq!(r.upstream_path("/api", None), "/");
    assert_eq!(r.upstream_path("/api", Some("a=1&b=2")), "/?a=1&b=2");
    assert_eq!(r.upstream_path("/api/x", Some("q")), "/x?q");
}

#[test]
fn without_strip_prefix_the_path_is_unchanged() {
    let table = RouteTable::compile(vec![spec("api", "^/api", &[], false)]).unwrap();
    let r = found(table.find("GET", "/api/users", false));
    assert_eq!(r.upstream_path("/api/users", Some("x=1")), "/api/users?x=1");
}

#[test]
fn bad_regex_names_the_route() {
    let err = RouteTable::compile(vec![spec("broken", "^/(", &[], false), spec("also", "[", &[], false)]).unwrap_err();
    let names: Vec<&str> = err.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["broken", "also"]);
}
