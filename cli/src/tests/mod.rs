//! Tests of the CLI: the Envoy template, the command line, and the deployment files.

use crate::envoy::{Addresses, TEMPLATE, render};

pub(super) fn addresses() -> Addresses {
    Addresses {
        listen_address: "0.0.0.0".into(),
        listen_port: 8080,
        admin_port: 9901,
        stats_port: 9902,
        auth_api: ("auth-api".into(), 3007),
        ext_authz: ("ext-authz".into(), 9191),
        chat: ("chat".into(), 3008),
        socket: ("socket".into(), 3009),
        trusted_proxy_hops: 1,
        access_log_path: "/dev/stdout".into(),
        caller_token: None,
        fast_path: None,
    }
}

#[test]
fn template_renders_every_placeholder() {
    let rendered = render(TEMPLATE, &addresses()).unwrap();
    let config_lines = rendered.lines().filter(|l| !l.trim_start().starts_with('#'));
    for line in config_lines {
        assert!(!line.contains("${"), "unfilled placeholder: {line}");
    }
    assert!(rendered.contains("xff_num_trusted_hops: 1"));
    assert!(rendered.contains("address: ext-authz, port_value: 9191"));
    assert!(rendered.contains("failure_mode_allow: false"));
}

#[test]
fn unknown_placeholders_are_errors() {
    assert!(render("a: ${NOPE}\n", &addresses()).is_err());
    assert!(render("a: ${LISTEN_PORT\n", &addresses()).is_err());
}

#[test]
fn every_public_route_declares_a_policy() {
    // Each route is followed (within its block) by a policy or an explicit
    // disable; a route added without one would be denied at runtime. (The
    // stats listener, which follows, has no authorization filter at all.)
    let public = TEMPLATE.split("\n  - name: stats\n").next().unwrap();
    assert!(public.len() < TEMPLATE.len(), "the stats listener follows the public one");
    let blocks: Vec<&str> = public.split("- match:").skip(1).collect();
    assert!(blocks.len() >= 10);
    for block in blocks {
        let declares = block.contains("policy:")
            || block.contains("*public")
            || block.contains("*refresh")
            || block.contains("*api_key")
            || block.contains("*end_user")
            || block.contains("*no_authz")
            || block.contains("&no_authz");
        assert!(declares, "route without authorization policy: {}", block.lines().next().unwrap_or_default());
    }
}

#[test]
fn command_line_is_consistent() {
    use clap::CommandFactory as _;
    #[derive(clap::Parser)]
    struct Up {
        #[command(flatten)]
        config: crate::stack::UpConfig,
    }
    Up::command().debug_assert();
    caas_auth_api::Config::command().debug_assert();
    caas_ext_authz::Config::command().debug_assert();
}

#[test]
fn chunked_bodies_are_decoded() {
    let response = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{}\n\r\n2\r\nab\r\n0\r\n\r\n";
    assert_eq!(crate::envoy::body_of(response), "{}\nab");
    assert_eq!(crate::envoy::body_of("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), "ok");
}
mod deploy;
mod reference;

#[cfg(unix)]
#[test]
fn a_dev_secrets_file_others_can_read_is_refused() {
    use clap::Parser as _;
    use std::os::unix::fs::PermissionsExt as _;
    #[derive(clap::Parser)]
    struct Up {
        #[command(flatten)]
        config: crate::stack::UpConfig,
    }
    let dir = std::env::temp_dir().join(caas_core::id::new_id("caas-secrets"));
    let data = dir.display().to_string();
    let parse = || Up::try_parse_from(["caas", "--data-dir", data.as_str()]).unwrap().config;
    // First run: generated, private.
    assert!(parse().fill_dev_secrets().unwrap());
    let path = dir.join("dev-secrets.json");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(parse().fill_dev_secrets().is_ok(), "a private file is used again");
    // Opened to the group: refused, with the way out in the message.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let error = parse().fill_dev_secrets().unwrap_err().to_string();
    assert!(error.contains("refusing") && error.contains("chmod 600"), "{error}");
    assert!(!error.contains(&std::fs::read_to_string(&path).unwrap()), "the secrets are not in the error");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fast_path_blocks_render_only_when_on() {
    let off = render(TEMPLATE, &addresses()).unwrap();
    assert!(!off.contains("caas.edge") && !off.contains("ext_authz_ops"));
    // ext_authz is skipped only for the fast path's own mark.
    assert!(off.contains("key: wasm.caas_edge") && off.contains("value_match: { exact: allow }"));
    let mut with = addresses();
    with.fast_path = Some(crate::envoy::FastPath {
        wasm: "/opt/caas/caas_edge_wasm.wasm".into(),
        ext_authz_ops: ("ext-authz".into(), 9192),
    });
    let on = render(TEMPLATE, &with).unwrap();
    assert!(on.contains(r#"filename: "/opt/caas/caas_edge_wasm.wasm""#));
    assert!(on.contains("address: ext-authz, port_value: 9192"));
    // The module sits after the header stripping and before ext_authz.
    let (strip, edge, authz) =
        (on.find("header_mutation").unwrap(), on.find("name: caas.edge").unwrap(), on.find("ExtAuthz\n").unwrap());
    assert!(strip < edge && edge < authz);
    with.fast_path = Some(crate::envoy::FastPath { wasm: "/tmp/a\"b.wasm".into(), ext_authz_ops: ("x".into(), 1) });
    assert!(render(TEMPLATE, &with).is_err());
}
