//! docs/METRICS.md against what the services actually serve: a stack on
//! PostgreSQL and Redis gets some traffic (sign-ups, sessions, a refusal),
//! then every service's `/metrics` is scraped and each metric it serves must
//! be listed under that service, with its type.

use std::collections::BTreeMap;

use crate::harness::{client, cluster, onboard, sdk_session, send, set_whitelists};

const METRICS: &str = include_str!("../../docs/METRICS.md");

/// `# TYPE` lines of a scrape: name as exposed → type.
fn served(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            let exposed = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            (exposed, kind.to_string())
        })
        .collect()
}

/// The table of `## {service} …` in docs/METRICS.md.
fn section(service: &str) -> &'static str {
    let start = METRICS.find(&format!("\n## {service} ")).unwrap_or_else(|| panic!("no section for {service}"));
    let rest = &METRICS[start + 1..];
    &rest[..rest[3..].find("\n## ").map_or(rest.len(), |end| end + 3)]
}

#[tokio::test]
async fn every_metric_a_service_serves_is_in_the_reference_with_its_type() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "metrics").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    sdk_session(node, &tenant, "metrics-user").await;
    // A refusal, so the labelled refusal counters have a series.
    let r = send(client().get(node.url("/v1/conversations")).bearer_auth("not-a-token")).await;
    assert_eq!(r.status, 401, "{r:?}");
    let stack = &node.stack;
    let services = [
        ("ext-authz", stack.ext_authz_ops),
        ("auth-api", stack.auth_api),
        ("chat", stack.chat),
        ("socket", stack.socket),
    ];
    for (service, addr) in services {
        let text = client().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
        let metrics = served(&text);
        assert!(!metrics.is_empty(), "{service} serves no metrics");
        let table = section(service);
        for (name, kind) in metrics {
            assert!(
                table.contains(&format!("| `{name}` | {kind} |")),
                "{service} serves {name} ({kind}), which docs/METRICS.md does not list under {service} with that type"
            );
        }
    }
    cluster.shutdown().await;
}
