//! `caas`: see the library for what each command does.

use std::process::ExitCode;

use caas::command::{Cli, Command, EnvoyConfigArgs};
use caas::stack::{AccessLog, Stack, UpConfig};
use clap::Parser as _;

fn host_port(value: &str) -> Result<(String, u16), String> {
    let (host, port) = value.rsplit_once(':').ok_or_else(|| format!("'{value}' is not host:port"))?;
    Ok((host.to_string(), port.parse().map_err(|_| format!("'{value}' has no valid port"))?))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    caas_runtime::logging::init_logging();
    let result = match cli.command {
        Command::Up(config) => up(*config).await,
        Command::Migrate(storage) => migrate(storage).await,
        Command::EnvoyConfig(args) => envoy_config(args),
        Command::Healthcheck { url } => healthcheck(&url).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("caas: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn up(mut config: UpConfig) -> anyhow::Result<()> {
    if config.fill_dev_secrets()? {
        tracing::warn!(path = %config.data_dir.join("dev-secrets.json").display(), "using generated development secrets; set JWT_SECRET and SERVICE_SECRET in production");
    }
    config.check().map_err(anyhow::Error::msg)?;
    config.policy.warn_if_relaxed();
    config.ext_authz.warn_if_shadow();
    let mut stack = Stack::start(&config, AccessLog::Stdout).await?;
    print_welcome(&stack, &config);
    let failure = tokio::select! {
        _ = caas_runtime::signal::shutdown_signal() => None,
        message = stack.failed() => Some(message),
    };
    eprintln!("caas: stopping…");
    stack.shutdown().await;
    match failure {
        Some(message) => anyhow::bail!(message),
        None => Ok(()),
    }
}

fn print_welcome(stack: &Stack, config: &UpConfig) {
    let gateway = stack.gateway().map_or("(no Envoy)".to_string(), |g| format!("http://{g}"));
    let admin = stack.envoy.as_ref().map_or("(no Envoy)".to_string(), |e| format!("http://{}", e.admin));
    let stats =
        stack.envoy.as_ref().map_or("(no Envoy)".to_string(), |e| format!("http://{}/stats/prometheus", e.stats));
    let store = caas_runtime::config::redact_url(&config.storage.database_url);
    let bus = if config.storage.redis_url.is_some() { "Redis" } else { "in-process" };
    eprintln!(
        "\nCAAS is up.\n\
         \x20 gateway    {gateway}   (Envoy admin {admin}, metrics {stats})\n\
         \x20 console    {gateway}/console/   (register, keys, whitelists, quotas, activity, try it)\n\
         \x20 auth-api   http://{auth}   ext-authz grpc {authz}, metrics http://{ops}/metrics\n\
         \x20 chat       http://{chat}   socket http://{socket} (WebSocket through the gateway: /v1/ws)\n\
         \x20 storage    {store}   cache and bus: {bus}\n\n\
         Try it (through the gateway):\n\
         \x20 G={gateway}\n\
         \x20 curl -s -XPOST $G/v1/client/register -H 'content-type: application/json' \\\n\
         \x20      -d '{{\"name\":\"Acme\",\"email\":\"you@example.com\",\"password\":\"a long password\"}}'\n\
         \x20     # → client_id and api_key.key (shown once)\n\
         \x20 TOKEN=$(curl -s -XPOST $G/v1/client/login -H 'content-type: application/json' \\\n\
         \x20      -d '{{\"email\":\"you@example.com\",\"password\":\"a long password\"}}' | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')\n\
         \x20 curl -s -XPUT $G/v1/client/ip-whitelist -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"cidrs\":[\"127.0.0.1\"]}}'\n\
         \x20 curl -s -XPOST $G/v1/sdk/session -H \"x-api-key: <api_key.key>\" -H 'content-type: application/json' -d '{{\"user_id\":\"user-1\"}}'\n\
         \x20     # → an end user's access_token and refresh_token\n\n\
         Ctrl-C stops everything.\n",
        auth = stack.auth_api,
        authz = stack.ext_authz,
        ops = stack.ext_authz_ops,
        chat = stack.chat,
        socket = stack.socket,
    );
}

async fn migrate(storage: caas_core::config::StorageArgs) -> anyhow::Result<()> {
    let mut problems = caas_runtime::config::Problems::default();
    storage.check(&mut problems);
    problems.finish().map_err(anyhow::Error::msg)?;
    let store = caas_core::store::Store::connect(&storage.database_url, 1).await?;
    store.migrate().await?;
    eprintln!("caas: migrations applied to {}", caas_runtime::config::redact_url(&storage.database_url));
    Ok(())
}

fn envoy_config(args: EnvoyConfigArgs) -> anyhow::Result<()> {
    let addresses = caas::envoy::Addresses {
        listen_address: args.listen_address,
        listen_port: args.listen_port,
        admin_port: args.admin_port,
        stats_port: args.stats_port,
        auth_api: host_port(&args.auth_api).map_err(anyhow::Error::msg)?,
        ext_authz: host_port(&args.ext_authz).map_err(anyhow::Error::msg)?,
        chat: host_port(&args.chat).map_err(anyhow::Error::msg)?,
        socket: host_port(&args.socket).map_err(anyhow::Error::msg)?,
        trusted_proxy_hops: args.trusted_proxy_hops,
        access_log_path: args.access_log_path,
        caller_token: args.caller_token.filter(|t| !t.expose().is_empty()),
        fast_path: match args.edge_wasm {
            Some(wasm) => Some(caas::envoy::FastPath {
                wasm,
                ext_authz_ops: host_port(&args.ext_authz_ops).map_err(anyhow::Error::msg)?,
            }),
            None => None,
        },
    };
    let rendered = caas::envoy::render(caas::envoy::TEMPLATE, &addresses)?;
    match args.output {
        Some(path) => {
            std::fs::write(&path, rendered).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?
        }
        None => print!("{rendered}"),
    }
    Ok(())
}

async fn healthcheck(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("only http:// URLs"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let addr = tokio::net::lookup_host(authority)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{authority} does not resolve"))?;
    match caas::envoy::http_status(addr, &path).await {
        Some(200) => Ok(()),
        other => anyhow::bail!("{url} answered {other:?}"),
    }
}
