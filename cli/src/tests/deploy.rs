//! docker-compose.yml, deploy/k8s, deploy/istio and deploy/envoy-gateway,
//! parsed and cross-checked against the binaries' own configuration parsers
//! (no Docker engine or cluster runs here, so this is how they stay true).

use std::collections::HashMap;

use clap::CommandFactory as _;
use serde_norway::Value;

const COMPOSE: &str = include_str!("../../../docker-compose.yml");
const K8S: &str = include_str!("../../../deploy/k8s/caas.yaml");
const K8S_DATA_STORES: &str = include_str!("../../../deploy/k8s/data-stores.yaml");
const ISTIO_PROVIDER: &str = include_str!("../../../deploy/istio/ext-authz-provider.yaml");
const ISTIO_POLICY: &str = include_str!("../../../deploy/istio/authorization-policy.yaml");
const ISTIO_ROUTES: &str = include_str!("../../../deploy/istio/virtual-service.yaml");
const ISTIO_FAST_PATH: &str = include_str!("../../../deploy/istio/fast-path.yaml");
const ENVOY_GATEWAY: &str = include_str!("../../../deploy/envoy-gateway/security-policy.yaml");
const ENVOY_GATEWAY_FAST_PATH: &str = include_str!("../../../deploy/envoy-gateway/fast-path.yaml");

/// What an operator's .env would hold (see .env.example).
fn dot_env() -> HashMap<&'static str, String> {
    HashMap::from([
        ("JWT_SECRET", "j".repeat(48)),
        ("SERVICE_SECRET", "s".repeat(48)),
        // As .env.example says to make it (`openssl rand -hex 32`).
        ("POSTGRES_PASSWORD", "9f".repeat(32)),
        ("REDIS_PASSWORD", "7e".repeat(32)),
    ])
}

/// Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`.
fn interpolate(text: &str, env: &HashMap<&'static str, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        let expr = &rest[start + 2..end];
        let (name, fallback) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default.to_string())),
            None => (expr.split(":?").next().unwrap(), None),
        };
        let value = env.get(name).cloned().or(fallback);
        out.push_str(&value.unwrap_or_else(|| panic!("{name} is required by the file but not in .env.example")));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The variables each binary cannot start without (checked beside its parser).
fn required(binary: &str) -> &'static [&'static str] {
    match binary {
        "auth-api" | "ext-authz" => &["DATABASE_URL", "REDIS_URL", "JWT_SECRET", "SERVICE_SECRET"],
        "chat" => &["DATABASE_URL", "REDIS_URL", "SERVICE_SECRET"],
        "socket" => &["DATABASE_URL", "REDIS_URL", "SERVICE_SECRET", "AUTH_SERVICE_URL"],
        other => panic!("unknown binary {other}"),
    }
}

/// Feeds the environment to the binary's own clap parser and `check`: every
/// variable must be one it reads, and the result must be a valid config.
fn check_binary(binary: &str, env: &[(String, String)], place: &str) {
    let command = match binary {
        "auth-api" => caas_auth_api::Config::command(),
        "ext-authz" => caas_ext_authz::Config::command(),
        "chat" => caas_chat::Config::command(),
        "socket" => caas_socket::Config::command(),
        other => panic!("{place}: unknown binary {other}"),
    };
    let mut argv = vec![binary.to_string()];
    for (name, value) in env {
        if name == "RUST_LOG" {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| panic!("{place}: {binary} reads no variable {name}"));
        argv.push(format!("--{}={value}", arg.get_long().unwrap()));
    }
    for name in required(binary) {
        assert!(env.iter().any(|(n, _)| n == name), "{place}: {binary} needs {name}");
    }
    let checked = match binary {
        "auth-api" => caas_auth_api::Config::try_parse_from(&argv).map_err(|e| e.to_string()).and_then(|c| c.check()),
        "ext-authz" => caas_ext_authz::Config::try_parse_from(&argv).map_err(|e| e.to_string()).and_then(|c| c.check()),
        "chat" => caas_chat::Config::try_parse_from(&argv).map_err(|e| e.to_string()).and_then(|c| c.check()),
        _ => caas_socket::Config::try_parse_from(&argv).map_err(|e| e.to_string()).and_then(|c| c.check()),
    };
    if let Err(problem) = checked {
        panic!("{place}: {binary} would refuse to start: {problem}");
    }
}

use clap::Parser as _;

/// A YAML scalar as the environment would see it (`0`, not `Number(0)`).
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn compose() -> Value {
    let mut value: Value = serde_norway::from_str(&interpolate(COMPOSE, &dot_env())).unwrap();
    value.apply_merge().unwrap();
    // Merges inside services (`environment: {<<: *service-env, ...}`).
    if let Some(services) = value.get_mut("services").and_then(Value::as_mapping_mut) {
        for (_, service) in services.iter_mut() {
            service.apply_merge().unwrap();
            if let Some(env) = service.get_mut("environment") {
                env.apply_merge().unwrap();
            }
        }
    }
    value
}

#[test]
fn compose_services_start_with_their_environment() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let names: Vec<&str> = services.keys().filter_map(Value::as_str).collect();
    for expected in ["postgres", "redis", "auth-api", "ext-authz", "chat", "socket", "envoy-config", "envoy"] {
        assert!(names.contains(&expected), "{expected} missing from docker-compose.yml");
    }
    for binary in ["auth-api", "ext-authz", "chat", "socket"] {
        let service = &services[binary];
        assert_eq!(service["command"][0].as_str(), Some(binary));
        assert!(service["healthcheck"]["test"].is_sequence(), "{binary} has no health check");
        let env: Vec<(String, String)> = service["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), scalar(v)))
            .collect();
        check_binary(binary, &env, "docker-compose.yml");
        // Services reach each other by name, and the data stores are the compose ones.
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert!(get("DATABASE_URL").is_some_and(|u| u.contains("@postgres:5432/")));
        assert_eq!(get("REDIS_URL"), Some(format!("redis://:{}@redis:6379", "7e".repeat(32)).as_str()));
    }
    assert_eq!(services["socket"]["environment"]["AUTH_SERVICE_URL"].as_str(), Some("http://auth-api:3007"));
    assert_eq!(services["envoy"]["ports"][0].as_str(), Some("8080:8080"));
    // Everything else published is for this host only.
    for (name, service) in services.iter().filter(|(name, _)| *name != "envoy") {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            assert!(port.as_str().unwrap().starts_with("127.0.0.1:"), "{name:?} publishes {port:?} beyond this host");
        }
    }
    assert!(include_str!("../../../.env.example").contains("openssl rand -hex 32"));
    for dependency in ["postgres", "redis"] {
        assert!(services["postgres"]["healthcheck"].is_mapping() && services[dependency]["healthcheck"].is_mapping());
    }
    // Secrets are never in the file itself.
    assert!(
        services["redis"]["command"].as_sequence().unwrap().iter().any(|a| a.as_str() == Some("--requirepass")),
        "Redis runs without a password"
    );
    for secret in ["JWT_SECRET:", "SERVICE_SECRET:", "POSTGRES_PASSWORD:", "REDIS_PASSWORD:", "REDISCLI_AUTH:"] {
        for line in COMPOSE.lines().filter(|l| l.trim_start().starts_with(secret)) {
            assert!(line.contains("${"), "a literal secret in docker-compose.yml: {line}");
        }
    }
}

/// `--name=value` arguments of a command list.
fn flags(command: &Value) -> HashMap<String, String> {
    command
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--")?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn host_port(value: &str) -> (String, u16) {
    let (host, port) = value.rsplit_once(':').unwrap();
    (host.to_string(), port.parse().unwrap())
}

/// Renders envoy/envoy.yaml as a deployment's `caas envoy-config` step would
/// and asks Envoy itself whether it is valid.
fn envoy_validates(args: &HashMap<String, String>, place: &str) {
    let addresses = crate::envoy::Addresses {
        listen_address: args["listen-address"].clone(),
        listen_port: args["listen-port"].parse().unwrap(),
        admin_port: args["admin-port"].parse().unwrap(),
        stats_port: args.get("stats-port").map_or(9902, |p| p.parse().unwrap()),
        auth_api: host_port(&args["auth-api"]),
        ext_authz: host_port(&args["ext-authz"]),
        chat: host_port(&args["chat"]),
        socket: host_port(&args["socket"]),
        trusted_proxy_hops: 0,
        access_log_path: "/dev/stdout".into(),
        caller_token: Some(caas_core::secret::Secret::new("t".repeat(40))),
        fast_path: None,
    };
    let rendered = crate::envoy::render(crate::envoy::TEMPLATE, &addresses).unwrap();
    envoy_accepts(&rendered, place);
}

/// Asks Envoy itself whether `config` (a bootstrap) is valid. Without Envoy
/// (not in CI) there is nothing to ask.
fn envoy_accepts(config: &str, place: &str) {
    let Ok(envoy) = crate::envoy::find_binary() else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but Envoy is missing");
        return;
    };
    let path = std::env::temp_dir().join(format!("{}.yaml", caas_core::id::new_id("envoy-validate")));
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(output.status.success(), "{place}: Envoy rejects the config: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn compose_renders_a_valid_gateway_config() {
    let compose = compose();
    let args = flags(&compose["services"]["envoy-config"]["command"]);
    assert_eq!(args["output"], "/config/envoy.yaml");
    let services = compose["services"].as_mapping().unwrap();
    for (key, service) in [("auth-api", "auth-api"), ("ext-authz", "ext-authz"), ("chat", "chat"), ("socket", "socket")]
    {
        assert!(
            services.contains_key(service) && args[key].starts_with(&format!("{service}:")),
            "{key} -> {}",
            args[key]
        );
    }
    envoy_validates(&args, "docker-compose.yml");
}

/// Every document of a multi-document YAML file.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text).map(|doc| serde::Deserialize::deserialize(doc).unwrap()).collect()
}

fn k8s_documents() -> Vec<Value> {
    documents(K8S)
}

/// The one document of `kind` in a file's documents.
fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

fn service_port(docs: &[Value], name: &str, port: u16) -> bool {
    docs.iter().any(|d| {
        d["kind"] == "Service"
            && d["metadata"]["name"] == name
            && d["spec"]["ports"].as_sequence().unwrap().iter().any(|p| p["port"].as_u64() == Some(u64::from(port)))
    })
}

#[test]
fn kubernetes_deployments_start_with_their_environment() {
    let docs = k8s_documents();
    let mut seen = Vec::new();
    for doc in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let container = &doc["spec"]["template"]["spec"]["containers"][0];
        let binary = container["command"][0].as_str().unwrap();
        if binary == "envoy" {
            let init = &doc["spec"]["template"]["spec"]["initContainers"][0];
            let args = flags(&init["command"]);
            for (key, port) in [("auth-api", 3007), ("ext-authz", 9191), ("chat", 3008), ("socket", 3009)] {
                let (host, p) = host_port(&args[key]);
                assert_eq!(p, port);
                assert!(service_port(&docs, host.split('.').next().unwrap(), port), "no Service for {host}:{port}");
            }
            envoy_validates(&args, "deploy/k8s/caas.yaml");
            continue;
        }
        seen.push(binary.to_string());
        let env: Vec<(String, String)> = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| {
                let name = e["name"].as_str().unwrap().to_string();
                let value = match e.get("value") {
                    Some(v) => v.as_str().unwrap().to_string(),
                    // From the caas-secrets Secret: stand-ins of the right shape.
                    None => match name.as_str() {
                        "DATABASE_URL" => "postgres://caas:pw@postgres:5432/caas".into(),
                        "REDIS_URL" => "redis://redis:6379".into(),
                        "JWT_SECRET" => "j".repeat(48),
                        _ => "s".repeat(48),
                    },
                };
                (name, value)
            })
            .collect();
        check_binary(binary, &env, "deploy/k8s/caas.yaml");
        // Probes point at a port the container declares, and a Service exposes it.
        let ports = container["ports"].as_sequence().unwrap();
        let probe_port = container["readinessProbe"]["httpGet"]["port"].as_str().unwrap();
        assert!(ports.iter().any(|p| p["name"] == probe_port), "{binary}: probe port {probe_port} not declared");
        // Liveness, not /health: a shared dependency down must not unready or
        // restart every replica (ext-authz keeps deciding from its cache).
        for probe in ["readinessProbe", "livenessProbe"] {
            let path = &container[probe]["httpGet"]["path"];
            assert!(path.is_null() || path == "/livez", "{binary}: {probe} on {path:?}");
        }
        let port = ports[0]["containerPort"].as_u64().unwrap() as u16;
        assert!(service_port(&docs, binary, port), "{binary}: no Service on {port}");
    }
    seen.sort();
    assert_eq!(seen, ["auth-api", "chat", "ext-authz", "socket"]);
    // The troubleshooting guide collects every pod's logs by this label.
    for doc in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let labels = &doc["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/part-of"], "caas", "{:?}", doc["metadata"]["name"]);
    }
    let service =
        |name: &str| docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == name).unwrap().to_owned();
    // The client's address survives the load balancer (IP whitelists,
    // per-address limits), and Envoy sees every ext-authz pod.
    assert_eq!(service("gateway")["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(service("ext-authz-pods")["spec"]["clusterIP"], "None");
    assert!(service("ext-authz")["spec"]["clusterIP"].is_null(), "clusterIP cannot change on an existing Service");
}

#[test]
fn mesh_examples_point_at_ext_authz_and_fail_closed() {
    let docs = k8s_documents();
    assert!(service_port(&docs, "ext-authz", 9191));
    // ext-authz decides by path behind meshes, which cannot set a per-route policy.
    let ext_authz = docs.iter().find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "ext-authz").unwrap();
    let env = ext_authz["spec"]["template"]["spec"]["containers"][0]["env"].as_sequence().unwrap();
    assert!(env.iter().any(|e| e["name"] == "POLICY_TABLE" && e["value"] == "builtin"));

    let provider: Value = serde_norway::from_str(ISTIO_PROVIDER).unwrap();
    let provider = &provider["spec"]["meshConfig"]["extensionProviders"][0];
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(
        (grpc["service"].as_str(), grpc["port"].as_u64()),
        (Some("ext-authz.caas.svc.cluster.local"), Some(9191))
    );
    assert_eq!(grpc["failOpen"].as_bool(), Some(false));
    // Istio normalizes paths before the policy is chosen (its default, BASE,
    // unless the example sets more); NONE would send every spelling on.
    let provider_doc: Value = serde_norway::from_str(ISTIO_PROVIDER).unwrap();
    let normalization = &provider_doc["spec"]["meshConfig"]["pathNormalization"]["normalization"];
    assert!(normalization.is_null() || normalization != "NONE", "{normalization:?}");
    let policies = documents(ISTIO_POLICY);
    let custom = policies.iter().find(|p| p["spec"]["action"] == "CUSTOM").unwrap();
    assert_eq!(custom["spec"]["provider"]["name"], provider["name"]);
    assert!(policies.iter().any(|p| p["spec"]["action"] == "DENY"
        && p.to_owned()["spec"]["rules"][0]["to"][0]["operation"]["paths"][0] == "/api/*"));

    let gateway = documents(ENVOY_GATEWAY);
    let policy = of_kind(&gateway, "SecurityPolicy");
    let route = of_kind(&gateway, "HTTPRoute");
    let backend = &policy["spec"]["extAuth"]["grpc"]["backendRefs"][0];
    assert_eq!((backend["name"].as_str(), backend["port"].as_u64()), (Some("ext-authz"), Some(9191)));
    assert_eq!(policy["spec"]["extAuth"]["failOpen"].as_bool(), Some(false));
    let paths = of_kind(&gateway, "ClientTrafficPolicy");
    assert_eq!(paths["spec"]["path"]["escapedSlashesAction"], "RejectRequest");
    assert_eq!(paths["spec"]["targetRefs"][0]["name"], route["spec"]["parentRefs"][0]["name"]);
    // Every path the route sends on has a policy in ext-authz's table.
    let table = caas_ext_authz::policy::PolicyTable::builtin();
    for rule in route["spec"]["rules"].as_sequence().unwrap() {
        for m in rule["matches"].as_sequence().unwrap() {
            let path = m["path"]["value"].as_str().unwrap();
            assert!(table.lookup(path).is_some(), "{path} has no policy in the table");
        }
    }
}

/// envoy/envoy.yaml rendered with the fast path on, YAML merges applied.
fn envoy_fast_path_config() -> Value {
    let mut addresses = super::addresses();
    addresses.fast_path = Some(crate::envoy::FastPath {
        wasm: std::path::PathBuf::from("/edge.wasm"),
        ext_authz_ops: ("127.0.0.1".into(), 9192),
    });
    let rendered = crate::envoy::render(crate::envoy::TEMPLATE, &addresses).unwrap();
    let mut config: Value = serde_norway::from_str(&rendered).unwrap();
    config.apply_merge().unwrap();
    config
}

/// envoy/envoy.yaml's HTTP filter `name`, rendered with the fast path on.
fn envoy_http_filter(name: &str) -> Value {
    let config = envoy_fast_path_config();
    let filters =
        config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            .as_sequence()
            .unwrap()
            .clone();
    filters.into_iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("envoy.yaml has no {name}"))
}

/// envoy/envoy.yaml's cluster `name`, rendered with the fast path on.
fn envoy_cluster(name: &str) -> Value {
    let config = envoy_fast_path_config();
    let clusters = config["static_resources"]["clusters"].as_sequence().unwrap().clone();
    clusters.into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("envoy.yaml has no cluster {name}"))
}

/// Requires `filter` to be envoy.yaml's ext_authz, as its fast path wraps
/// it: the same name, the same matcher on the same filter state, the same
/// skip, ext_authz as the composite filter's action otherwise, and the same
/// settings; gives the wrapped ExtAuthz config, whose cluster and token are
/// the deployment's.
fn wrapped_as_in_envoy_yaml(filter: &Value) -> &Value {
    let envoy = envoy_http_filter("envoy.filters.http.ext_authz");
    assert_eq!(filter["name"], envoy["name"]);
    let (filter, envoy) = (&filter["typed_config"], &envoy["typed_config"]);
    assert_eq!(filter["@type"], envoy["@type"]);
    assert_eq!(filter["extension_config"], envoy["extension_config"]);
    assert_eq!(filter["xds_matcher"]["matcher_list"], envoy["xds_matcher"]["matcher_list"]);
    let (check, envoy_check) =
        (&filter["xds_matcher"]["on_no_match"]["action"], &envoy["xds_matcher"]["on_no_match"]["action"]);
    assert_eq!(check["name"], envoy_check["name"]);
    assert_eq!(check["typed_config"]["@type"], envoy_check["typed_config"]["@type"]);
    assert_eq!(check["typed_config"]["typed_config"]["name"], "envoy.filters.http.ext_authz");
    let (ours, envoy) = (
        &check["typed_config"]["typed_config"]["typed_config"],
        &envoy_check["typed_config"]["typed_config"]["typed_config"],
    );
    for field in ["@type", "transport_api_version", "failure_mode_allow", "status_on_error", "allowed_headers"] {
        assert_eq!(ours[field], envoy[field], "{field}");
    }
    assert_eq!(ours["failure_mode_allow"].as_bool(), Some(false));
    assert_eq!(ours["grpc_service"]["timeout"], envoy["grpc_service"]["timeout"]);
    assert_eq!(ours["grpc_service"]["initial_metadata"][0]["key"], "x-caas-authz-token");
    ours
}

#[test]
fn the_istio_fast_path_skips_ext_authz_exactly_as_envoy_yaml_does() {
    let docs = documents(ISTIO_FAST_PATH);
    let plugin = of_kind(&docs, "WasmPlugin");
    // Before ext_authz; a module that does not load leaves everything to it.
    assert_eq!(plugin["spec"]["phase"], "AUTHN");
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_OPEN");
    assert_eq!(plugin["spec"]["type"], "HTTP");
    // The filter's configuration (edge-wasm/src/filter.rs `Config`): the feed
    // on ext-authz's ops port, which the gateways may reach (NetworkPolicy).
    let config = plugin["spec"]["pluginConfig"].as_mapping().unwrap();
    let keys: Vec<&str> = config.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys, ["cluster", "token"]);
    assert_eq!(config["cluster"], "outbound|9192||ext-authz.caas.svc.cluster.local");
    let k8s = k8s_documents();
    assert!(service_port(&k8s, "ext-authz", 9192));
    let from_gateways = k8s.iter().find(|d| d["metadata"]["name"] == "ext-authz-from-gateways").unwrap();
    let gateway_rule = &from_gateways["spec"]["ingress"][0];
    assert_eq!(gateway_rule["from"][1]["namespaceSelector"]["matchLabels"]["caas.dev/gateway"], "true");
    assert!(gateway_rule["ports"].as_sequence().unwrap().iter().any(|p| p["port"].as_u64() == Some(9192)));

    let patch = &of_kind(&docs, "EnvoyFilter")["spec"]["configPatches"][0];
    assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
    assert_eq!(patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"], "envoy.filters.http.router");
    let ours = wrapped_as_in_envoy_yaml(&patch["patch"]["value"]);
    assert_eq!(ours["grpc_service"]["envoy_grpc"]["cluster_name"], "outbound|9191||ext-authz.caas.svc.cluster.local");
    // The wasm filter comes before ext_authz in envoy.yaml too.
    assert_eq!(envoy_http_filter("caas.edge")["typed_config"]["config"]["root_id"], "caas_edge");
}

/// Applies an EnvoyPatchPolicy's listener patch to `doc` as Envoy Gateway
/// does, for the one form the example uses: `add` where a JSONPath
/// `..KEY[?(@.name=='NAME')]` finds array elements (inserting before each).
/// Any other form fails the test: extend this first.
fn apply_patch(doc: &mut Value, operation: &Value) {
    assert_eq!(operation["op"], "add", "only `add` is applied here");
    assert!(operation["path"].is_null(), "a JSONPath with a path is not applied here");
    let json_path = operation["jsonPath"].as_str().expect("only a JSONPath is applied here");
    let (key, name) = json_path
        .strip_prefix("..")
        .and_then(|p| p.strip_suffix("')]"))
        .and_then(|p| p.split_once("[?(@.name=='"))
        .unwrap_or_else(|| panic!("a JSONPath this test does not apply: {json_path}"));
    fn insert_before(node: &mut Value, key: &str, name: &str, value: &Value) -> usize {
        let mut found = 0;
        match node {
            Value::Mapping(map) => {
                for (k, child) in map.iter_mut() {
                    if k == key
                        && let Value::Sequence(items) = child
                        && let Some(at) = items.iter().position(|item| item["name"] == name)
                    {
                        items.insert(at, value.clone());
                        found += 1;
                    } else {
                        found += insert_before(child, key, name, value);
                    }
                }
            }
            Value::Sequence(items) => {
                for item in items {
                    found += insert_before(item, key, name, value);
                }
            }
            _ => {}
        }
        found
    }
    // Envoy Gateway refuses a JSONPath that finds nothing.
    assert!(insert_before(doc, key, name, &operation["value"]) > 0, "{json_path} finds nothing");
}

#[test]
fn the_envoy_gateway_fast_path_patches_in_ext_authz_exactly_as_envoy_yaml_has_it() {
    let docs = documents(ENVOY_GATEWAY_FAST_PATH);
    let extension = of_kind(&docs, "EnvoyExtensionPolicy");
    let patches = of_kind(&docs, "EnvoyPatchPolicy");
    let routes = documents(ENVOY_GATEWAY);
    let route = of_kind(&routes, "HTTPRoute");

    // The filter: on the routes of the CAAS HTTPRoute, registered under
    // envoy.yaml's root id; a module that does not load leaves everything to
    // ext_authz.
    assert_eq!(extension["spec"]["targetRefs"][0]["kind"], "HTTPRoute");
    assert_eq!(extension["spec"]["targetRefs"][0]["name"], route["metadata"]["name"]);
    assert_eq!(extension["metadata"]["namespace"], route["metadata"]["namespace"]);
    let wasm = &extension["spec"]["wasm"][0];
    assert_eq!(wasm["rootID"], envoy_http_filter("caas.edge")["typed_config"]["config"]["root_id"]);
    assert_eq!(wasm["failOpen"].as_bool(), Some(true));
    assert_eq!(wasm["code"]["type"], "Image");
    // The filter's configuration (edge-wasm/src/filter.rs `Config`).
    let config = wasm["config"].as_mapping().unwrap();
    let keys: Vec<&str> = config.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys, ["cluster", "token"]);

    // The patches go to the Gateway the HTTPRoute attaches to, and to its
    // listener by the name Envoy Gateway gives it.
    let gateway = &route["spec"]["parentRefs"][0];
    assert_eq!(patches["spec"]["type"], "JSONPatch");
    assert_eq!(patches["spec"]["targetRef"]["kind"], "Gateway");
    assert_eq!(patches["spec"]["targetRef"]["name"], gateway["name"]);
    assert_eq!(patches["metadata"]["namespace"], gateway["namespace"]);
    let listener_name =
        format!("{}/{}/http", gateway["namespace"].as_str().unwrap(), gateway["name"].as_str().unwrap());

    // A listener as Envoy Gateway generates it for the route (its
    // translator's output: the HCM in the default filter chain, its own Wasm
    // filter off by default and on for the route, then the router), with
    // the route table inline where Envoy Gateway serves it over RDS.
    let hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    let eg_wasm = "envoy.filters.http.wasm/envoyextensionpolicy/caas/caas-edge/0";
    let mut listener: Value = serde_norway::from_str(&format!(
        r#"
name: {listener_name}
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 10080 }} }}
default_filter_chain:
  filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": {hcm}
      stat_prefix: http-10080
      use_remote_address: true
      route_config:
        name: {listener_name}
        virtual_hosts:
        - name: caas
          domains: ["*"]
          routes:
          - match: {{ prefix: /v1/ }}
            route: {{ cluster: caas-ext-authz-ops }}
      http_filters:
      - {{ name: {eg_wasm}, disabled: true }}
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))
    .unwrap();
    let mut clusters = Vec::new();
    for patch in patches["spec"]["jsonPatches"].as_sequence().unwrap() {
        let operation = &patch["operation"];
        match patch["type"].as_str().unwrap() {
            "type.googleapis.com/envoy.config.cluster.v3.Cluster" => {
                // A new resource: `add` with an empty path.
                assert_eq!((operation["op"].as_str(), operation["path"].as_str()), (Some("add"), Some("")));
                assert_eq!(operation["value"]["name"], patch["name"]);
                clusters.push(operation["value"].clone());
            }
            "type.googleapis.com/envoy.config.listener.v3.Listener" => {
                assert_eq!(patch["name"].as_str(), Some(listener_name.as_str()));
                apply_patch(&mut listener, operation);
            }
            other => panic!("a patch of {other}"),
        }
    }
    let cluster = |name: &str| -> &Value {
        clusters.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no cluster {name} is added"))
    };
    let endpoint = |c: &Value| {
        let address = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
        (address["address"].as_str().unwrap().to_string(), address["port_value"].as_u64().unwrap())
    };

    // Envoy Gateway's Wasm filter, then ext_authz, then the router.
    let filters = listener["default_filter_chain"]["filters"][0]["typed_config"]["http_filters"].clone();
    let names: Vec<&str> = filters.as_sequence().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, [eg_wasm, "envoy.filters.http.ext_authz", "envoy.filters.http.router"]);
    let ours = wrapped_as_in_envoy_yaml(&filters[1]);
    assert_eq!(ours["grpc_service"]["initial_metadata"][0]["value"], config["token"]);

    // Its Check goes to ext-authz's gRPC port as envoy.yaml's does; the feed
    // to its ops port, which gateways may reach.
    let check = cluster(ours["grpc_service"]["envoy_grpc"]["cluster_name"].as_str().unwrap());
    let envoy_check = envoy_cluster("ext_authz");
    assert_eq!(check["typed_extension_protocol_options"], envoy_check["typed_extension_protocol_options"]);
    assert_eq!(check["connect_timeout"], envoy_check["connect_timeout"]);
    assert_eq!(endpoint(check), ("ext-authz.caas.svc.cluster.local".to_string(), 9191));
    let feed = cluster(config["cluster"].as_str().unwrap());
    assert_eq!(feed["connect_timeout"], envoy_cluster("ext_authz_ops")["connect_timeout"]);
    assert_eq!(endpoint(feed), ("ext-authz.caas.svc.cluster.local".to_string(), 9192));
    let k8s = k8s_documents();
    assert!(service_port(&k8s, "ext-authz", 9191) && service_port(&k8s, "ext-authz", 9192));

    // And Envoy itself takes the patched listener and the added clusters
    // (Envoy Gateway's own Wasm filter, which fetches its module from Envoy
    // Gateway, left out).
    let http_filters = &mut listener["default_filter_chain"]["filters"][0]["typed_config"]["http_filters"];
    http_filters.as_sequence_mut().unwrap().remove(0);
    let mut bootstrap = serde_norway::Mapping::new();
    let mut resources = serde_norway::Mapping::new();
    resources.insert("listeners".into(), Value::Sequence(vec![listener]));
    resources.insert("clusters".into(), Value::Sequence(clusters));
    bootstrap.insert("static_resources".into(), Value::Mapping(resources));
    envoy_accepts(&serde_norway::to_string(&bootstrap).unwrap(), "deploy/envoy-gateway/fast-path.yaml");
}

const DOCKERFILE: &str = include_str!("../../../Dockerfile");

/// The `NAME=value` pairs of the Dockerfile's ENV instructions.
fn dockerfile_env() -> HashMap<String, String> {
    let joined = DOCKERFILE.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(str::split_whitespace)
        .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

#[test]
fn the_image_holds_every_binary_the_deployments_run_and_listens_where_they_probe() {
    // The loop that strips each built binary into the image's /out.
    let copied: Vec<&str> = DOCKERFILE
        .lines()
        .find_map(|l| l.trim().strip_prefix("&& for bin in "))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let mut run = Vec::new();
    let compose = compose();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        if service["image"] != "caas:latest" {
            continue;
        }
        let name = name.as_str().unwrap();
        run.push((format!("docker-compose.yml {name}"), service["command"][0].as_str().unwrap().to_string()));
        if let Some(test) = service["healthcheck"]["test"].as_sequence() {
            let probe: Vec<&str> = test.iter().filter_map(Value::as_str).collect();
            assert_eq!(probe[..3], ["CMD", "caas", "healthcheck"], "{name}: health check {probe:?}");
            run.push((format!("docker-compose.yml {name} healthcheck"), "caas".into()));
            // The probed port is one the image tells this binary to listen on,
            // on every interface (the binaries' defaults are loopback).
            let port = probe[3].rsplit(':').next().unwrap().split('/').next().unwrap();
            let prefix = format!("{}_", name.to_uppercase().replace('-', "_"));
            let env = dockerfile_env();
            assert!(
                env.iter().any(|(k, v)| k.starts_with(&prefix) && *v == format!("0.0.0.0:{port}")),
                "{name}: probes port {port}, but the Dockerfile sets no {prefix}*ADDR=0.0.0.0:{port}"
            );
        }
    }
    for doc in k8s_documents().iter().filter(|d| d["kind"] == "Deployment") {
        let pod = &doc["spec"]["template"]["spec"];
        let containers = pod["containers"].as_sequence().into_iter().chain(pod["initContainers"].as_sequence());
        for container in containers.flatten().filter(|c| c["image"] == "caas:latest") {
            let place = format!("deploy/k8s/caas.yaml {}", container["name"].as_str().unwrap_or("?"));
            run.push((place, container["command"][0].as_str().unwrap().to_string()));
        }
    }
    assert!(run.len() >= 10, "found only {run:?}");
    for (place, binary) in run {
        assert!(copied.contains(&binary.as_str()), "{place} runs {binary}, which the Dockerfile does not install");
    }
}

/// Where a request path goes: the upstream (service name) and the path it
/// arrives with; `None` when nothing routes it there.
type Routed = Option<(String, String)>;

/// envoy/envoy.yaml's routes, rendered.
fn envoy_routes() -> Vec<Value> {
    let rendered = crate::envoy::render(crate::envoy::TEMPLATE, &super::addresses()).unwrap();
    let mut config: Value = serde_norway::from_str(&rendered).unwrap();
    config.apply_merge().unwrap();
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        ["virtual_hosts"][0]["routes"]
        .as_sequence()
        .unwrap()
        .clone()
}

/// Envoy's answer for `path` (first match).
fn envoy_route(routes: &[Value], path: &str) -> Routed {
    let route = routes.iter().find(|r| match (r["match"]["path"].as_str(), r["match"]["prefix"].as_str()) {
        (Some(exact), _) => exact == path,
        (_, Some(prefix)) => path.starts_with(prefix),
        _ => false,
    })?;
    let cluster = route["route"]["cluster"].as_str()?.replace('_', "-");
    let rewritten = match (route["route"]["prefix_rewrite"].as_str(), route["match"]["prefix"].as_str()) {
        (Some(rewrite), Some(prefix)) => format!("{rewrite}{}", &path[prefix.len()..]),
        (Some(rewrite), None) => rewrite.to_string(),
        (None, _) => path.to_string(),
    };
    Some((cluster, rewritten))
}

/// Istio's answer for `path`, from the VirtualService; `k8s` holds the Services.
fn istio_route(service: &Value, k8s: &[Value], path: &str) -> Routed {
    for route in service["spec"]["http"].as_sequence().unwrap() {
        for m in route["match"].as_sequence().unwrap() {
            let matched = match (m["uri"]["exact"].as_str(), m["uri"]["prefix"].as_str()) {
                (Some(exact), _) if exact == path => Some(exact.len()),
                (_, Some(prefix)) if path.starts_with(prefix) => Some(prefix.len()),
                _ => None,
            };
            let Some(len) = matched else { continue };
            let destination = &route["route"][0]["destination"];
            let host = destination["host"].as_str().unwrap();
            assert!(host.ends_with(".caas.svc.cluster.local"), "{host}");
            let name = host.split('.').next().unwrap().to_string();
            let port = destination["port"]["number"].as_u64().unwrap() as u16;
            assert!(service_port(k8s, &name, port), "no Service {name}:{port}");
            // Istio's rewrite replaces what matched (the prefix, or the whole path).
            let rewritten = match route["rewrite"]["uri"].as_str() {
                Some(rewrite) => format!("{rewrite}{}", &path[len..]),
                None => path.to_string(),
            };
            return Some((name, rewritten));
        }
    }
    None
}

/// Envoy Gateway's answer for `path`, from its HTTPRoute (Gateway API
/// precedence: an exact match, else the longest prefix).
fn envoy_gateway_route(route: &Value, k8s: &[Value], path: &str) -> Routed {
    let mut best: Option<(bool, usize, &Value)> = None;
    for rule in route["spec"]["rules"].as_sequence().unwrap() {
        for m in rule["matches"].as_sequence().unwrap() {
            let value = m["path"]["value"].as_str().unwrap();
            let exact = m["path"]["type"] == "Exact";
            let hit = if exact { path == value } else { path.starts_with(value) };
            if hit && best.is_none_or(|(e, len, _)| (exact, value.len()) > (e, len)) {
                best = Some((exact, value.len(), rule));
            }
        }
    }
    let (_, len, rule) = best?;
    let backend = &rule["backendRefs"][0];
    let name = backend["name"].as_str().unwrap().to_string();
    assert!(service_port(k8s, &name, backend["port"].as_u64().unwrap() as u16), "{name}");
    let rewrite = &rule["filters"][0]["urlRewrite"]["path"];
    let rewritten = match (rewrite["replacePrefixMatch"].as_str(), rewrite["replaceFullPath"].as_str()) {
        (Some(prefix), _) => format!("{prefix}{}", &path[len..]),
        (_, Some(full)) => full.to_string(),
        _ => path.to_string(),
    };
    Some((name, rewritten))
}

#[test]
fn mesh_routes_send_every_public_path_where_the_gateway_does() {
    let table = caas_ext_authz::policy::PolicyTable::builtin();
    let (routes, k8s) = (envoy_routes(), k8s_documents());
    let (istio, envoy_gateway) = (documents(ISTIO_ROUTES), documents(ENVOY_GATEWAY));
    let (virtual_service, http_route) = (of_kind(&istio, "VirtualService"), of_kind(&envoy_gateway, "HTTPRoute"));
    for path in [
        "/v1/client/register",
        "/v1/client/login",
        "/v1/client/profile",
        "/v1/client/api-keys/rotate",
        "/v1/sdk/session",
        "/v1/sdk/users/u-1/revoke",
        "/v1/sdk/users",
        "/v1/client/logout-all",
        "/v1/sdk/refresh",
        "/v1/sdk/logout",
        "/v1/ws",
        "/v1/conversations",
        "/v1/conversations/c_1/messages",
        "/v1/messages",
        "/v1/sdk/session/x",
        "/console/",
        "/console/caas-client.js",
        "/v1/nope",
        "/api/v1/auth/internal/validate",
    ] {
        let envoy = envoy_route(&routes, path);
        assert_eq!(istio_route(virtual_service, &k8s, path), envoy, "Istio: {path}");
        assert_eq!(envoy_gateway_route(http_route, &k8s, path), envoy, "Envoy Gateway: {path}");
        // Whatever is routed has a policy in ext-authz's table.
        if envoy.is_some() {
            assert!(table.lookup(path).is_some(), "{path} is routed but has no policy");
        }
    }
    assert_eq!(envoy_route(&routes, "/v1/ws"), Some(("socket".into(), "/v1/ws".into())), "the comparison itself works");
}

/// Nothing in the namespace is reachable unless a policy says so: ext-authz's
/// gRPC port (which signs context for whatever address a caller claims) and
/// the services only from the gateways; every Deployment is covered.
#[test]
fn network_policies_deny_by_default_and_guard_ext_authz() {
    let docs = k8s_documents();
    let policies: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "NetworkPolicy").collect();
    let deny = policies.iter().find(|p| p["metadata"]["name"] == "default-deny-ingress").expect("no default deny");
    assert!(deny["spec"]["podSelector"].as_mapping().is_some_and(|m| m.is_empty()));
    assert!(deny["spec"]["ingress"].is_null(), "the default deny lets something in");
    let selects = |policy: &Value, app: &str| {
        let selector = &policy["spec"]["podSelector"];
        selector["matchLabels"]["app"].as_str() == Some(app)
            || selector["matchExpressions"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|e| e["values"].as_sequence().is_some_and(|v| v.iter().any(|x| x.as_str() == Some(app))))
    };
    for deployment in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let app = deployment["spec"]["selector"]["matchLabels"]["app"].as_str().unwrap();
        assert!(policies.iter().any(|p| selects(p, app)), "no policy lets traffic into {app}");
    }
    let ext_authz = policies.iter().find(|p| selects(p, "ext-authz")).unwrap();
    for rule in ext_authz["spec"]["ingress"].as_sequence().unwrap() {
        let ports: Vec<u64> =
            rule["ports"].as_sequence().unwrap().iter().map(|p| p["port"].as_u64().unwrap()).collect();
        let sources = rule["from"].as_sequence().expect("an ext-authz rule open to everyone");
        if ports.contains(&9191) {
            for source in sources {
                let from_gateway = source["podSelector"]["matchLabels"]["app"].as_str() == Some("gateway")
                    || source["namespaceSelector"]["matchLabels"]["caas.dev/gateway"].as_str() == Some("true");
                assert!(from_gateway, "ext-authz's gRPC port is open to {source:?}");
            }
        }
    }
}

/// PostgreSQL and Redis let in CAAS pods only (deploy/k8s/data-stores.yaml),
/// every CAAS pod carries the label those policies match, and every
/// Deployment takes the data stores' URLs (with their passwords) from the
/// Secret, never from the manifest.
#[test]
fn only_caas_pods_reach_the_data_stores_and_with_their_passwords() {
    let policies = documents(K8S_DATA_STORES);
    for (app, port) in [("postgres", 5432), ("redis", 6379)] {
        let policy = policies
            .iter()
            .find(|p| p["kind"] == "NetworkPolicy" && p["spec"]["podSelector"]["matchLabels"]["app"] == app)
            .unwrap_or_else(|| panic!("no policy guards {app}"));
        let rules = policy["spec"]["ingress"].as_sequence().unwrap();
        for rule in rules {
            let ports: Vec<u64> =
                rule["ports"].as_sequence().unwrap().iter().map(|p| p["port"].as_u64().unwrap()).collect();
            assert!(ports.contains(&port), "{app}: {ports:?}");
            for source in rule["from"].as_sequence().expect("a data store open to everyone") {
                assert_eq!(
                    source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
                    Some("caas")
                );
                assert_eq!(source["podSelector"]["matchLabels"]["app.kubernetes.io/part-of"].as_str(), Some("caas"));
            }
        }
    }
    for deployment in k8s_documents().iter().filter(|d| d["kind"] == "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let template = &deployment["spec"]["template"];
        assert_eq!(template["metadata"]["labels"]["app.kubernetes.io/part-of"].as_str(), Some("caas"), "{name}");
        let containers = template["spec"]["containers"].as_sequence().unwrap();
        for env in containers.iter().flat_map(|c| c["env"].as_sequence().into_iter().flatten()) {
            if matches!(env["name"].as_str(), Some("DATABASE_URL" | "REDIS_URL")) {
                assert_eq!(env["valueFrom"]["secretKeyRef"]["name"].as_str(), Some("caas-secrets"), "{name}: {env:?}");
            }
        }
    }
}

/// Every pod's containers, init containers included, with the pod's spec.
fn pods(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| (d["metadata"]["name"].as_str().unwrap().to_string(), &d["spec"]["template"]["spec"]))
        .collect()
}

#[test]
fn every_pod_meets_the_restricted_pod_security_profile() {
    let docs = k8s_documents();
    let namespace = of_kind(&docs, "Namespace");
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    let pods = pods(&docs);
    assert!(pods.len() >= 5, "found {} Deployments", pods.len());
    for (name, pod) in pods {
        let pod_security = &pod["securityContext"];
        assert_eq!(pod_security["runAsNonRoot"], true, "{name}: runAsNonRoot");
        assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault", "{name}: seccompProfile");
        assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null(), "{name}: host namespaces");
        let init = pod["initContainers"].as_sequence().cloned().unwrap_or_default();
        let main = pod["containers"].as_sequence().unwrap();
        for (container, is_init) in main.iter().map(|c| (c, false)).chain(init.iter().map(|c| (c, true))) {
            let place = format!("{name}/{}", container["name"].as_str().unwrap());
            let security = &container["securityContext"];
            assert_eq!(security["allowPrivilegeEscalation"], false, "{place}: allowPrivilegeEscalation");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{place}: readOnlyRootFilesystem");
            let dropped: Vec<&str> = security["capabilities"]["drop"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(dropped, ["ALL"], "{place}: capabilities.drop");
            assert!(security["capabilities"]["add"].is_null(), "{place}: adds capabilities");
            assert!(security["privileged"].is_null() || security["privileged"] == false, "{place}: privileged");
            // Not root, whichever level says it: a command that bypasses an
            // image's entrypoint (Envoy's drops root there) must not run as root.
            let user = security["runAsUser"].as_u64().or(pod_security["runAsUser"].as_u64());
            assert!(user.is_some_and(|u| u != 0), "{place}: runs as uid {user:?}");
            assert_eq!(container["imagePullPolicy"], "IfNotPresent", "{place}: imagePullPolicy");
            let image = container["image"].as_str().unwrap();
            assert!(image == "caas:latest" || !image.ends_with("latest"), "{place}: floating image tag {image}");
            if !is_init {
                assert!(container["livenessProbe"].is_mapping(), "{place}: no liveness probe");
                assert!(container["readinessProbe"].is_mapping(), "{place}: no readiness probe");
            }
        }
    }
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v kubernetes-validate"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but kubernetes-validate is not installed");
        eprintln!("SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate)");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(root.join("deploy/k8s/caas.yaml"))
        .arg(root.join("deploy/k8s/data-stores.yaml"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && !text.contains("ERROR"), "kubernetes-validate:\n{text}");
}

#[test]
fn images_are_built_once_from_pinned_bases_with_a_dependency_layer() {
    // Every FROM names an exact version (x.y…), never a floating tag.
    for line in DOCKERFILE.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).unwrap();
        if image == "scratch" {
            continue;
        }
        let tag = image.split_once(':').map(|(_, t)| t).unwrap_or_else(|| panic!("{image}: no tag"));
        let version = tag.split('-').next().unwrap();
        assert!(
            version.split('.').count() >= 2 && version.split('.').all(|p| p.chars().all(|c| c.is_ascii_digit())),
            "Dockerfile: {image} is not pinned to an exact version"
        );
    }
    // Dependencies are built before the sources are copied in.
    let first_build = DOCKERFILE.find("cargo build").unwrap();
    let sources = DOCKERFILE.find("COPY . .").unwrap();
    assert!(first_build < sources, "the Dockerfile copies the sources before building the dependencies");
    assert!(DOCKERFILE.contains("--strip-all"), "the image's binaries are not stripped");
    // Compose builds the image in one service and runs it in the others.
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let builders: Vec<&str> =
        services.iter().filter(|(_, s)| !s["build"].is_null()).map(|(n, _)| n.as_str().unwrap()).collect();
    assert_eq!(builders, ["envoy-config"], "services that build an image");
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let image = service["image"].as_str().unwrap();
        if image == "caas:latest" && service["build"].is_null() {
            assert_eq!(service["pull_policy"], "never", "{name}: would try to pull caas:latest");
        }
        assert!(!image.ends_with(":latest") || image == "caas:latest", "{name}: floating image tag {image}");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert!(image == "caas:latest" || tag.contains('.'), "{name}: {image} is not pinned to an exact version");
    }
}
