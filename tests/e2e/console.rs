//! The tenant console and caas-client.js in a real browser (Debian's
//! `chromium`, driven through `chromedriver` over the W3C WebDriver
//! protocol), against a stack behind real Envoy: what a browser enforces
//! (CORS, Origin, the WebSocket subprotocol, CSP) is enforced here.
//!
//! The WebDriver client is the few calls below over the workspace's reqwest,
//! rather than a crate that would bring a second HTTP stack.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// The browser and its driver, or `None` (outside CI) when not installed.
fn chromium() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().map(|n| Path::new("/usr/bin").join(n)).find(|p| p.exists()).or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.exists())
        })
    };
    match (find(&["chromium", "chromium-browser", "google-chrome"]), find(&["chromedriver"])) {
        (Some(browser), Some(driver)) => Some((browser, driver)),
        _ => {
            let message = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver; \
                           scripts/test.sh does it)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {message}");
            eprintln!("SKIPPED: {message}");
            None
        }
    }
}

/// One chromedriver process; each `Browser` is a session of its own (its
/// own browser process and profile: no shared storage).
struct Driver {
    process: Child,
    url: String,
    browser: PathBuf,
    http: reqwest::Client,
}

impl Driver {
    async fn start(browser: PathBuf, driver: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let process = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver did not start");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let ready = within(Duration::from_secs(20), || {
            let request = http.get(format!("{url}/status"));
            async move {
                match request.send().await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(ready.is_some(), "chromedriver never became ready");
        Self { process, url, browser, http }
    }

    /// A headless browser `width` CSS pixels wide.
    async fn session(&self, width: u32, profile: &Path) -> Browser {
        let args = [
            "--headless=new".to_string(),
            // As root (CI containers) Chromium refuses to start sandboxed.
            "--no-sandbox".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-gpu".to_string(),
            "--no-first-run".to_string(),
            format!("--window-size={width},900"),
            format!("--user-data-dir={}", profile.display()),
        ];
        // A phone's viewport is emulated (a headless window has a minimum width).
        let mut options = json!({"binary": self.browser.display().to_string(), "args": args});
        if width < 600 {
            options["mobileEmulation"] = json!({"deviceMetrics": {"width": width, "height": 844, "pixelRatio": 2.0}});
        }
        let capabilities =
            json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}});
        let response = self.http.post(format!("{}/session", self.url)).json(&capabilities).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        let id = body["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {body}"));
        Browser { url: format!("{}/session/{id}", self.url), http: self.http.clone() }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Our own child, by its handle: ends chromedriver (its browsers
        // were closed by `Browser::quit`).
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

struct Browser {
    url: String,
    http: reqwest::Client,
}

impl Browser {
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == reqwest::Method::POST {
            request = request.json(&json!({}));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "WebDriver {method} {path}: {status} {body}");
        body["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn element(&self, css: &str) -> String {
        let found =
            self.command(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/click"), None).await;
    }

    /// Replaces a field's value by typing, as a user would.
    async fn fill(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/clear"), None).await;
        if !text.is_empty() {
            self.command(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({ "text": text }))).await;
        }
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    /// The value a promise-returning expression resolves to.
    async fn resolve(&self, expression: &str) -> Value {
        let script = format!("const done = arguments[arguments.length - 1]; Promise.resolve({expression}).then(done)");
        self.command(reqwest::Method::POST, "/execute/async", Some(json!({"script": script, "args": []}))).await
    }

    async fn text(&self, id: &str) -> String {
        let value = self
            .script("const e = document.getElementById(arguments[0]); return e ? e.textContent : null", json!([id]))
            .await;
        value.as_str().unwrap_or_default().to_string()
    }

    async fn value(&self, id: &str) -> String {
        self.script("return document.getElementById(arguments[0]).value", json!([id])).await.as_str().unwrap().into()
    }

    /// Polls the element's text until `check` holds; the text, and how long it took.
    async fn wait_text(&self, id: &str, within: Duration, check: impl Fn(&str) -> bool) -> (String, Duration) {
        let started = Instant::now();
        loop {
            let text = self.text(id).await;
            if check(&text) {
                return (text, started.elapsed());
            }
            assert!(started.elapsed() < within, "#{id} never matched; it says {text:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the page `name` is shown and loaded.
    async fn wait_page(&self, name: &str) {
        let started = Instant::now();
        loop {
            let ready = self.script("return document.body.dataset.ready || ''", json!([])).await;
            let visible =
                self.script("return !document.getElementById('page-' + arguments[0]).hidden", json!([name])).await;
            if ready == name && visible == true {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "page {name} never showed (ready: {ready})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn open_page(&self, name: &str) {
        self.click(&format!("nav a[href='#{name}']")).await;
        self.wait_page(name).await;
    }

    /// Presses a key (WebDriver's key codes: Tab is \u{E004}).
    async fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key},
        ]}]});
        self.command(reqwest::Method::POST, "/actions", Some(actions)).await;
    }

    async fn screenshot(&self, dir: &Path, name: &str) {
        use base64::Engine as _;
        let png = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    /// Every URL this page loaded or called.
    async fn requested(&self) -> Vec<String> {
        let all = self.script("return performance.getEntriesByType('resource').map(e => e.name)", json!([])).await;
        all.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }

    async fn quit(self) {
        self.http.delete(&self.url).send().await.unwrap();
    }
}

/// Signs in through the console's form.
async fn sign_in(browser: &Browser, email: &str) {
    browser.fill("#signin-email", email).await;
    browser.fill("#signin-password", PASSWORD).await;
    browser.click("#signin-submit").await;
    browser.wait_page("profile").await;
}

async fn rows(browser: &Browser, tbody: &str) -> usize {
    let n = browser.script("return document.getElementById(arguments[0]).rows.length", json!([tbody])).await;
    n.as_u64().unwrap() as usize
}

async fn wait_rows(browser: &Browser, tbody: &str, count: usize) {
    let started = Instant::now();
    while rows(browser, tbody).await != count {
        assert!(started.elapsed() < Duration::from_secs(10), "{tbody} never had {count} rows");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn console_in_a_real_browser_through_the_gateway() {
    let Some((browser_binary, driver_binary)) = chromium() else { return };
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let shots = node.dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let origin = format!("http://{}", node.gateway);
    let console = node.url("/console/");
    let driver = Driver::start(browser_binary, &driver_binary).await;
    // A phone's width for the first browser.
    let a = driver.session(390, &node.dir.join("profile-a")).await;
    let b = driver.session(1024, &node.dir.join("profile-b")).await;

    // Register, then sign in.
    a.goto(&node.url("/console")).await; // the bare path redirects
    a.wait_page("signin").await;
    a.screenshot(&shots, "signin").await;
    // Every field has a label, and the keyboard reaches the form with a visible focus ring.
    let unlabelled = a
        .script(
            "return [...document.querySelectorAll('input, textarea')].filter(e => e.labels.length === 0).map(e => e.id)",
            json!([]),
        )
        .await;
    assert_eq!(unlabelled, json!([]), "fields without a label");
    let mut focused = Value::Null;
    for _ in 0..6 {
        a.press("\u{E004}").await;
        focused = a.script("return document.activeElement.id", json!([])).await;
        if focused == "signin-email" {
            break;
        }
    }
    assert_eq!(focused, "signin-email", "Tab does not reach the sign-in form");
    let outline = a.script("return getComputedStyle(document.activeElement).outlineStyle", json!([])).await;
    assert_ne!(outline, "none", "no visible focus");
    let email = format!("{}@example.com", caas_core::id::new_id("console").to_lowercase());
    a.fill("#register-name", "Console Co").await;
    a.fill("#register-email", &email).await;
    a.fill("#register-password", PASSWORD).await;
    a.click("#register-submit").await;
    let (first_key, _) = a.wait_text("new-key-value", Duration::from_secs(10), |t| t.starts_with("caas_")).await;
    a.screenshot(&shots, "new-key").await;
    a.click("#new-key-done").await;
    assert_eq!(a.text("new-key-value").await, "", "the key is forgotten once stored");
    sign_in(&a, &email).await;
    assert_eq!(a.text("profile-email").await, email);
    a.screenshot(&shots, "profile").await;
    // Usable at phone width: nothing wider than the screen.
    let viewport = a.script("return window.innerWidth", json!([])).await;
    assert_eq!(viewport, 390, "not a phone's width");
    let overflow =
        a.script("return document.documentElement.scrollWidth - document.documentElement.clientWidth", json!([])).await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page scrolls sideways at 390 px: {overflow}");

    // The test's own dashboard session, to see what was stored.
    let http = client();
    let login =
        send(http.post(node.url("/v1/client/login")).json(&json!({"email": email, "password": PASSWORD}))).await;
    let dashboard = login.body["access_token"].as_str().unwrap().to_string();

    // API keys: rotate (the old one stays as secondary), then revoke it.
    a.open_page("keys").await;
    wait_rows(&a, "keys-body", 1).await;
    a.fill("#rotate-grace", "600").await;
    a.click("#rotate-submit").await;
    let (second_key, _) =
        a.wait_text("new-key-value", Duration::from_secs(10), |t| t.starts_with("caas_") && t != first_key).await;
    a.click("#new-key-done").await;
    wait_rows(&a, "keys-body", 2).await;
    a.screenshot(&shots, "keys").await;
    a.click("#keys-body tr:nth-child(2) button").await;
    let (question, _) = a.wait_text("revoke-question", Duration::from_secs(5), |t| t.contains("Revoke key")).await;
    assert!(question.contains("secondary"), "{question}");
    a.click("#revoke-yes").await;
    wait_rows(&a, "keys-body", 1).await;
    let keys = send(http.get(node.url("/v1/client/api-keys")).bearer_auth(&dashboard)).await;
    assert_eq!(keys.body["api_keys"].as_array().unwrap().len(), 1, "{keys:?}");
    assert!(second_key.starts_with(keys.body["api_keys"][0]["prefix"].as_str().unwrap()));

    // Whitelists: an invalid CIDR names its entry and saves nothing.
    a.open_page("whitelists").await;
    a.fill("#ip-list", "127.0.0.1/32\n10.0.0.0/33").await;
    a.click("#ip-save").await;
    let (error, _) = a.wait_text("ip-errors", Duration::from_secs(5), |t| !t.is_empty()).await;
    assert!(error.contains("Entry 2") && error.contains("10.0.0.0/33") && error.contains("invalid_cidr"), "{error}");
    assert!(error.contains("Nothing was saved"), "{error}");
    a.screenshot(&shots, "whitelist-error").await;
    let stored = send(http.get(node.url("/v1/client/ip-whitelist")).bearer_auth(&dashboard)).await;
    assert_eq!(stored.body["cidrs"], json!([]), "nothing saved: {stored:?}");
    a.fill("#ip-list", "127.0.0.1/32\n10.0.0.0/8").await;
    a.click("#ip-save").await;
    a.wait_text("status", Duration::from_secs(5), |t| t.contains("IP whitelist saved")).await;
    a.fill("#origin-list", &origin).await;
    a.click("#origin-save").await;
    a.wait_text("status", Duration::from_secs(5), |t| t.contains("Origin whitelist saved")).await;
    let stored = send(http.get(node.url("/v1/client/origin-whitelist")).bearer_auth(&dashboard)).await;
    assert_eq!(stored.body["origins"], json!([origin]));

    // Quotas.
    a.open_page("quotas").await;
    a.fill("#q-per_user-rate", "40").await;
    a.click("#quotas-save").await;
    a.wait_text("status", Duration::from_secs(5), |t| t.contains("Quotas saved")).await;
    a.screenshot(&shots, "quotas").await;

    // Activity lists each change, newest first.
    a.open_page("activity").await;
    let (activity, _) =
        a.wait_text("activity-body", Duration::from_secs(5), |t| t.contains("rate_limits.updated")).await;
    let order = [
        "rate_limits.updated",
        "origin_whitelist.updated",
        "ip_whitelist.updated",
        "api_key.revoked",
        "api_key.rotated",
        "client.login",
        "client.registered",
    ];
    let positions: Vec<usize> =
        order.iter().map(|a| activity.find(a).unwrap_or_else(|| panic!("{a}: {activity}"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "newest first: {activity}");
    assert_eq!(activity.matches("ip_whitelist.updated").count(), 1, "the refused list was not recorded");
    a.screenshot(&shots, "activity").await;
    // Pages of 20: more changes push the first ones to the next page.
    for i in 0..15 {
        let cidrs = json!({ "cidrs": ["127.0.0.1/32", format!("10.{i}.0.0/16")] });
        let r = send(http.put(node.url("/v1/client/ip-whitelist")).bearer_auth(&dashboard).json(&cidrs)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    a.open_page("profile").await;
    a.open_page("activity").await;
    wait_rows(&a, "activity-body", 20).await;
    a.wait_text("activity-body", Duration::from_secs(5), |t| !t.contains("client.registered")).await;
    a.click("#activity-older").await;
    a.wait_text("activity-body", Duration::from_secs(5), |t| t.contains("client.registered")).await;
    let oldest = a.script("const rows = document.getElementById('activity-body').rows; return rows[rows.length - 1].cells[1].textContent", json!([])).await;
    assert_eq!(oldest, "client.registered", "the oldest entry comes last");
    let disabled = a.script("return document.getElementById('activity-older').disabled", json!([])).await;
    assert_eq!(disabled, true, "the last page offers no older one");

    // Try it: two test users of the tenant, one browser each.
    a.open_page("try").await;
    // Test sessions whose first token lives 40 s: the client refreshes it
    // 20 s in, during the test.
    a.fill("#try-name", "alice").await;
    a.fill("#try-ttl", "40").await;
    a.click("#try-start").await;
    a.wait_text("try-socket", Duration::from_secs(10), |t| t == "open").await;
    b.goto(&console).await;
    b.wait_page("signin").await;
    sign_in(&b, &email).await;
    b.open_page("try").await;
    b.fill("#try-name", "bob").await;
    b.fill("#try-ttl", "40").await;
    b.click("#try-start").await;
    b.wait_text("try-socket", Duration::from_secs(10), |t| t == "open").await;
    a.fill("#try-peer", "bob").await;
    a.click("#try-create").await;
    a.wait_text("status", Duration::from_secs(10), |t| t.starts_with("In conversation")).await;
    let conversation = a.value("try-conversation").await;
    assert!(!conversation.is_empty());
    b.fill("#try-conversation", &conversation).await;
    b.click("#try-join").await;
    b.wait_text("status", Duration::from_secs(10), |t| t.starts_with("In conversation")).await;

    a.fill("#try-message", "hello from alice").await;
    a.click("#try-send").await;
    let (_, took) =
        b.wait_text("try-messages", Duration::from_secs(5), |t| t.contains("test:alice: hello from alice")).await;
    assert!(took < Duration::from_secs(1), "delivered in {took:?}");
    a.screenshot(&shots, "try-it").await;

    // The token is refreshed (20 s into its 40) without a new socket.
    a.wait_text("try-refreshes", Duration::from_secs(30), |t| t != "0").await;
    b.wait_text("try-refreshes", Duration::from_secs(30), |t| t != "0").await;
    assert_eq!(a.text("try-connections").await, "1", "the refresh dropped the socket");
    assert_eq!(b.text("try-connections").await, "1", "the refresh dropped the socket");
    b.fill("#try-message", "after the refresh").await;
    b.click("#try-send").await;
    let (_, took) =
        a.wait_text("try-messages", Duration::from_secs(5), |t| t.contains("test:bob: after the refresh")).await;
    assert!(took < Duration::from_secs(1), "delivered in {took:?}");

    // Nothing left for a host other than the gateway.
    for browser in [&a, &b] {
        for url in browser.requested().await {
            assert!(url.starts_with(&format!("{origin}/")), "a request left for {url}");
        }
    }

    // The page's Origin removed: the API's refusal shows, and a new socket is refused.
    a.open_page("whitelists").await;
    a.fill("#origin-list", "https://elsewhere.example").await;
    a.click("#origin-save").await;
    a.wait_text("status", Duration::from_secs(5), |t| t.contains("Origin whitelist saved")).await;
    a.open_page("try").await;
    a.fill("#try-message", "refused").await;
    a.click("#try-send").await;
    let (error, _) = a.wait_text("try-error", Duration::from_secs(10), |t| !t.is_empty()).await;
    assert!(error.starts_with("origin_not_allowed"), "{error}");
    a.screenshot(&shots, "origin-refused").await;
    b.fill("#try-name", "carol").await;
    b.fill("#try-ttl", "").await;
    b.click("#try-start").await;
    let (error, _) = b.wait_text("try-error", Duration::from_secs(10), |t| t.contains("socket_refused")).await;
    assert!(b.text("try-connections").await == "0", "{error}");

    // Sign out: the socket closes within a second, and the console is back at sign-in.
    let clicked = a.script("return Date.now()", json!([])).await.as_i64().unwrap();
    a.click("#sign-out").await;
    a.wait_page("signin").await;
    // Closed at the gateway: Envoy logs an upgrade when its connection ends.
    let socket_ends = || {
        node.access_log()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["path"] == "/v1/ws" && entry["status"] == 101)
            .map(|entry| {
                let started = entry["time"].as_str().unwrap().parse::<chrono_free::Millis>().unwrap().0;
                started + entry["duration_ms"].as_i64().unwrap()
            })
            .max()
            .unwrap_or(0)
    };
    let logged = within(Duration::from_secs(10), || {
        let ended = socket_ends();
        async move { ended >= clicked }
    })
    .await;
    assert!(logged.is_some(), "the socket's close never reached the access log");
    let ended = socket_ends();
    assert!(ended - clicked < 1000, "the socket closed {} ms after the click", ended - clicked);
    assert_eq!(a.text("try-socket").await, "not connected");
    assert!(a.text("status").await.starts_with("Signed out"));
    // That dashboard session is over at the gateway too.
    b.click("#sign-out-all").await;
    b.wait_page("signin").await;
    let r = send(http.get(node.url("/v1/client/profile")).bearer_auth(&dashboard)).await;
    assert_eq!((r.status, r.code()), (401, "session_revoked"), "{r:?}");

    a.quit().await;
    b.quit().await;
    drop(driver);
    // The browsers' profiles are of no use afterwards; the screenshots stay.
    for profile in ["profile-a", "profile-b"] {
        let _ = std::fs::remove_dir_all(node.dir.join(profile));
    }
    eprintln!("console screenshots: {}", shots.display());
    cluster.shutdown().await;
}

/// A tenant's app on another origin (127.0.0.2): one page that imports
/// caas-client.js from the gateway and takes its session from the fragment.
async fn serve_app(gateway: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><title>app</title><p id="out">loading</p>
<script type="module">
import {{ CaasClient }} from "{gateway}/console/caas-client.js";
const session = JSON.parse(atob(location.hash.slice(1)));
window.errors = [];
window.client = new CaasClient({{ session, baseUrl: "{gateway}" }});
window.client.addEventListener("error", (e) => window.errors.push(e.detail.code));
document.getElementById("out").textContent = "ready";
</script>"#
    );
    let app =
        axum::Router::new().route("/app.html", axum::routing::get(move || async move { axum::response::Html(page) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

#[tokio::test]
async fn an_app_on_another_origin_imports_the_client_and_cors_guards_it() {
    use base64::Engine as _;
    let Some((browser_binary, driver_binary)) = chromium() else { return };
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let gateway = format!("http://{}", node.gateway);
    let app = serve_app(&gateway).await;
    let tenant = onboard(node, "app").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[&app]).await;
    let session = send(
        client()
            .post(node.url("/v1/client/test-sessions"))
            .bearer_auth(&tenant.dashboard)
            .json(&json!({"name": "app"})),
    )
    .await;
    assert_eq!(session.status, 201, "{session:?}");
    let fragment = base64::engine::general_purpose::STANDARD.encode(session.body.to_string());

    let driver = Driver::start(browser_binary, &driver_binary).await;
    let page = driver.session(1024, &node.dir.join("profile-app")).await;
    page.goto(&format!("{app}/app.html#{fragment}")).await;
    page.wait_text("out", Duration::from_secs(10), |t| t == "ready").await;

    // Allowed: a cross-origin call (preflighted) and a socket.
    let created = page.resolve("client.createConversation(['test:peer']).then(c => 'ok', e => e.code)").await;
    assert_eq!(created, "ok");
    page.script("client.connect()", json!([])).await;
    let open =
        within(Duration::from_secs(10), || async { page.script("return client.state", json!([])).await == "open" })
            .await;
    assert!(open.is_some(), "the socket never opened");

    // The app's Origin removed: the browser's CORS check hides the refusal
    // from the page (it sees a failed fetch), the gateway logs why, and a
    // new socket is refused.
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &["https://elsewhere.example"]).await;
    let refused =
        page.resolve("client.createConversation(['test:peer']).then(c => 'ok', e => e.code + ': ' + e.message)").await;
    let refused = refused.as_str().unwrap().to_string();
    assert!(refused.starts_with("network_error") && refused.contains("CORS"), "{refused}");
    let logged = within(Duration::from_secs(10), || {
        let log = node.access_log();
        async move {
            log.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).any(|entry| {
                entry["method"] == "POST"
                    && entry["path"] == "/v1/conversations"
                    && entry["status"] == 403
                    && entry["details"] == "ext_authz_denied"
            })
        }
    })
    .await;
    assert!(logged.is_some(), "the gateway did not refuse it: {}", node.access_log());
    page.script("client.close(); client.connect()", json!([])).await;
    let socket_refused = within(Duration::from_secs(10), || async {
        page.script("return window.errors.includes('socket_refused')", json!([])).await == true
    })
    .await;
    assert!(socket_refused.is_some(), "errors: {}", page.script("return window.errors", json!([])).await);
    page.script("client.close()", json!([])).await;
    page.quit().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(node.dir.join("profile-app"));
    cluster.shutdown().await;
}

/// Envoy's `%START_TIME%` (RFC 3339, UTC, milliseconds) as Unix milliseconds,
/// without a date crate.
mod chrono_free {
    pub struct Millis(pub i64);

    impl std::str::FromStr for Millis {
        type Err = String;
        fn from_str(text: &str) -> Result<Self, String> {
            // 2026-12-01T03:12:20.960Z
            let bad = || format!("not a UTC timestamp: {text}");
            let (date, time) = text.strip_suffix('Z').and_then(|t| t.split_once('T')).ok_or_else(bad)?;
            let mut ymd = date.split('-').map(|p| p.parse::<i64>());
            let (y, m, d) = match (ymd.next(), ymd.next(), ymd.next()) {
                (Some(Ok(y)), Some(Ok(m)), Some(Ok(d))) => (y, m, d),
                _ => return Err(bad()),
            };
            let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
            let mut parts = hms.split(':').map(|p| p.parse::<i64>());
            let (h, min, s) = match (parts.next(), parts.next(), parts.next()) {
                (Some(Ok(h)), Some(Ok(min)), Some(Ok(s))) => (h, min, s),
                _ => return Err(bad()),
            };
            let millis: i64 = format!("{fraction:0<3}")[..3].parse().map_err(|_| bad())?;
            // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
            let y = if m <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            let days = era * 146_097 + doe - 719_468;
            Ok(Millis(((days * 24 + h) * 60 + min) * 60_000 + s * 1000 + millis))
        }
    }

    #[test]
    fn envoy_times_parse() {
        assert_eq!("1970-01-01T00:00:00.000Z".parse::<Millis>().unwrap().0, 0);
        assert_eq!("2026-12-01T03:12:20.960Z".parse::<Millis>().unwrap().0, 1_796_094_740_960);
    }
}
