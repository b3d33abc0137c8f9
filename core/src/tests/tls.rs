//! TLS to the data stores, as a managed PostgreSQL or Redis asks for it: a
//! PostgreSQL and a Redis of this test's own, on free ports, that speak only
//! TLS with a certificate from a CA the test makes (openssl CLI), reached
//! through `StorageArgs` exactly as a binary starts. The shared servers on
//! 5432/6379 are not touched. Without the tools (openssl, initdb/postgres,
//! redis-server) the tests skip, and with `CI=true` they fail.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use caas_runtime::config::Problems;

use crate::config::{Backends, StorageArgs};
use crate::testing::{eventually, missing};

const PG_PASSWORD: &str = "pg-s3cret-in-url";
const REDIS_PASSWORD: &str = "redis-s3cret-in-url";

/// Runs `command`, or says what it printed when it failed.
fn run(command: &mut Command) -> Result<(), String> {
    let out = command.stdin(Stdio::null()).output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{command:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(crate::id::new_id(prefix));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, a server certificate it signed for `localhost` only (no IP: so
/// verify-full to 127.0.0.1 is a name mismatch), and an unrelated CA.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = caas test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

fn make_pki(dir: &Path) -> Result<Pki, String> {
    let config = dir.join("openssl.cnf");
    std::fs::write(&config, OPENSSL_CONFIG).map_err(|e| e.to_string())?;
    let file = |name: &str| dir.join(name);
    let new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for (name, subject) in [("ca", "/CN=caas test CA"), ("other-ca", "/CN=caas unrelated CA")] {
        run(Command::new("openssl")
            .args(["req", "-x509", "-config"])
            .arg(&config)
            .args(["-extensions", "ca", "-days", "2", "-subj", subject])
            .args(new_key)
            .arg("-keyout")
            .arg(file(&format!("{name}.key")))
            .arg("-out")
            .arg(file(&format!("{name}.pem"))))?;
    }
    run(Command::new("openssl")
        .args(["req", "-new", "-config"])
        .arg(&config)
        .args(["-subj", "/CN=localhost"])
        .args(new_key)
        .arg("-keyout")
        .arg(file("server.key"))
        .arg("-out")
        .arg(file("server.csr")))?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-set_serial", "2", "-extensions", "server", "-extfile"])
        .arg(&config)
        .arg("-in")
        .arg(file("server.csr"))
        .arg("-CA")
        .arg(file("ca.pem"))
        .arg("-CAkey")
        .arg(file("ca.key"))
        .arg("-out")
        .arg(file("server.pem")))?;
    Ok(Pki { ca: file("ca.pem"), other_ca: file("other-ca.pem"), cert: file("server.pem"), key: file("server.key") })
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// PostgreSQL's binaries: `CAAS_TEST_PG_BIN`, else the newest under
/// /usr/lib/postgresql, else PATH.
fn postgres_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("CAAS_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).find(|dir| dir.join("initdb").exists())
    })
}

/// A PostgreSQL that accepts TCP only over TLS (`hostssl`, password) and is
/// stopped on drop. PostgreSQL refuses to run as root, so under root its
/// commands run as the `postgres` user.
struct TlsPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    dir: TempDir,
}

impl TlsPostgres {
    fn command(&self, program: &str) -> Command {
        postgres_command(&self.bin, program)
    }

    fn start(pki: &Pki) -> Result<Self, String> {
        let bin = postgres_bin_dir().ok_or("initdb not found (CAAS_TEST_PG_BIN, /usr/lib/postgresql/*/bin, PATH)")?;
        let dir = TempDir::new("caas-tls-pg");
        let (cert, key, data) = (dir.0.join("server.pem"), dir.0.join("server.key"), dir.0.join("data"));
        std::fs::copy(&pki.cert, &cert).map_err(|e| e.to_string())?;
        std::fs::copy(&pki.key, &key).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        let password = dir.0.join("password");
        std::fs::write(&password, PG_PASSWORD).map_err(|e| e.to_string())?;
        if running_as_root() {
            run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir.0))?;
        }
        let port = free_port();
        let postgres = Self { bin, data, port, dir };
        run(postgres
            .command("initdb")
            .arg("-D")
            .arg(&postgres.data)
            .args(["-U", "caas", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .arg(format!("--pwfile={}", password.display())))?;
        // TCP only with TLS: a plaintext connection has no pg_hba.conf entry.
        std::fs::write(
            postgres.data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .map_err(|e| e.to_string())?;
        let options = format!(
            "-p {port} -k {socket} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={cert} \
             -c ssl_key_file={key} -c fsync=off",
            socket = postgres.dir.0.display(),
            cert = cert.display(),
            key = key.display(),
        );
        run(postgres
            .command("pg_ctl")
            .arg("-D")
            .arg(&postgres.data)
            .arg("-l")
            .arg(postgres.dir.0.join("log"))
            .args(["-w", "-t", "30", "-o", &options, "start"]))
        .map_err(|e| {
            let log = std::fs::read_to_string(postgres.dir.0.join("log")).unwrap_or_default();
            format!("{e}\n{log}")
        })?;
        Ok(postgres)
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://caas:{PG_PASSWORD}@{host}:{}/postgres?{query}", self.port)
    }
}

fn postgres_command(bin: &Path, program: &str) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = run(self.command("pg_ctl").arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]));
    }
}

/// A Redis with only a TLS port and a password, killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    async fn start(pki: &Pki, dir: &Path) -> Result<Self, String> {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no", "--requirepass", REDIS_PASSWORD])
            .arg("--tls-cert-file")
            .arg(&pki.cert)
            .arg("--tls-key-file")
            .arg(&pki.key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca)
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let exited = child.try_wait().map_err(|e| e.to_string())?.is_some();
            if !exited && tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            if exited || std::time::Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                return Err(format!("redis-server --tls-port did not start (built without TLS?): {out:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, port })
    }

    fn url(&self, host: &str) -> String {
        format!("rediss://:{REDIS_PASSWORD}@{host}:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn storage(database_url: &str, redis_url: Option<&str>, redis_ca_file: Option<&Path>) -> StorageArgs {
    let args = StorageArgs {
        database_url: database_url.into(),
        database_max_connections: 2,
        redis_url: redis_url.map(String::from),
        redis_ca_file: redis_ca_file.map(PathBuf::from),
        change_feed_interval: std::time::Duration::from_secs(1),
    };
    let mut problems = Problems::default();
    args.check(&mut problems);
    assert_eq!(problems.finish(), Ok(()), "a usable configuration");
    args
}

async fn connect(args: &StorageArgs) -> Result<Backends, String> {
    args.connect("tls-test", true).await.map_err(|e| e.to_string())
}

fn assert_no_secret(error: &str) {
    for secret in [PG_PASSWORD, REDIS_PASSWORD] {
        assert!(!error.contains(secret), "a password in an error: {error}");
    }
}

#[tokio::test]
async fn postgres_over_tls_checks_what_sslmode_asks() {
    let dir = TempDir::new("caas-tls-pki");
    let pki = match make_pki(&dir.0) {
        Ok(pki) => pki,
        Err(e) => return missing("openssl (to make the test CA)", "PATH", &e),
    };
    let postgres = match TlsPostgres::start(&pki) {
        Ok(postgres) => postgres,
        Err(e) => return missing("a PostgreSQL of the test's own with ssl=on", "initdb/pg_ctl", &e),
    };
    let (ca, other_ca) = (pki.ca.display(), pki.other_ca.display());

    // verify-full with the right CA: migrated, and a round trip.
    let args = storage(&postgres.url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}")), None, None);
    let backends = connect(&args).await.unwrap_or_else(|e| panic!("verify-full with the CA: {e}"));
    let (client_id, ..) = super::store::register(&backends.store, "tls@example.com").await;
    let stored = backends.store.client(&client_id).await.unwrap().map(|c| c.id);
    assert_eq!(stored.as_deref(), Some(client_id.as_str()));
    backends.store.close().await;

    // verify-ca with the CA, and require (which checks nothing).
    for (host, query) in
        [("localhost", format!("sslmode=verify-ca&sslrootcert={ca}")), ("127.0.0.1", "sslmode=require".into())]
    {
        let backends = connect(&storage(&postgres.url(host, &query), None, None)).await;
        let backends = backends.unwrap_or_else(|e| panic!("{query}: {e}"));
        backends.store.ping().await.unwrap();
        backends.store.close().await;
    }

    // Refused: an unrelated CA, a name the certificate does not carry, and
    // plaintext (the server accepts TCP only over TLS, which also proves the
    // cases above were encrypted).
    let refusals = [
        (postgres.url("localhost", &format!("sslmode=verify-full&sslrootcert={other_ca}")), "UnknownIssuer"),
        (postgres.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")), "not valid for name"),
        // libpq's verify-ca skips the name; sqlx 0.8.6 with this rustls checks
        // it too (launchbadge/sqlx#3793): stricter, and documented so. When
        // sqlx is upgraded this fails, to update the documentation.
        (postgres.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")), "not valid for name"),
        (postgres.url("127.0.0.1", "sslmode=disable"), "no encryption"),
    ];
    for (url, expected) in refusals {
        let error = connect(&storage(&url, None, None)).await.err().unwrap_or_else(|| panic!("{url} connected"));
        assert!(error.contains("cannot open database") && error.contains(expected), "{url}: {error}");
        assert_no_secret(&error);
    }
}

#[tokio::test]
async fn redis_over_tls_trusts_redis_ca_file() {
    let dir = TempDir::new("caas-tls-redis");
    let pki = match make_pki(&dir.0) {
        Ok(pki) => pki,
        Err(e) => return missing("openssl (to make the test CA)", "PATH", &e),
    };
    let redis = match TlsRedis::start(&pki, &dir.0).await {
        Ok(redis) => redis,
        Err(e) => return missing("redis-server with TLS", "PATH", &e),
    };

    // Two processes' backends on rediss:// with the CA: the cache works and
    // the bus carries an event from one to the other.
    let args = storage("sqlite::memory:", Some(&redis.url("localhost")), Some(&pki.ca));
    let (a, b) = (connect(&args).await.unwrap(), connect(&args).await.unwrap());
    super::cache_bus::cache_conformance(a.cache.clone()).await;
    let connected = eventually(Duration::from_secs(5), || async { a.bus.is_connected() && b.bus.is_connected() });
    assert!(connected.await, "the buses subscribe over TLS");
    super::cache_bus::bus_conformance(a.bus.clone(), b.bus.clone()).await;

    // An unrelated CA, no CA (the system's roots do not hold the test CA),
    // or a name the certificate does not carry: every command fails, and
    // the bus never subscribes.
    let refusals = [
        (redis.url("localhost"), Some(pki.other_ca.as_path()), "UnknownIssuer"),
        (redis.url("localhost"), None, "UnknownIssuer"),
        (redis.url("127.0.0.1"), Some(pki.ca.as_path()), "not valid for name"),
    ];
    for (url, ca, expected) in refusals {
        let backends = connect(&storage("sqlite::memory:", Some(&url), ca)).await.unwrap();
        let error = backends.cache.ping().await.err().map(|e| format!("{e:?}")).unwrap_or_default();
        assert!(error.contains(expected), "{url} {ca:?}: {error:?}");
        assert_no_secret(&error);
        let cache: Arc<dyn crate::cache::Cache> = backends.cache.clone();
        assert!(cache.get("x").await.is_err());
        assert!(!eventually(Duration::from_millis(500), || async { backends.bus.is_connected() }).await);
    }
}
