//! The live dashboard and what feeds it, black-box: the real `goloadbalancer run` (process
//! runtime, free ports, own temp dir). `GET /` is served with its headers; `/status` carries
//! the event ring, the time series and per-worker recent figures; headless Chromium renders the
//! page and the DOM it dumps shows every worker id and the autoscaler's state, with logged
//! text escaped; `status --watch` redraws until stopped and exits 1 when nothing answers.
//! The browser test prints `SKIPPED` and passes where Chromium is missing.

mod common;
#[path = "supervisor_support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Stack, StackSpec};

/// Autoscaler on, bounded at 3..5 with a target no test load reaches: it shows a state but
/// the worker count stays at 3 (scale-in stops at `min`).
fn spec() -> StackSpec {
    let mut s = StackSpec::seed("process");
    s.extra = "autoscale:\n  enabled: true\n  min: 3\n  max: 5\n  target-inflight: 50\n".into();
    s
}

/// Event names in /status, oldest first.
fn event_names(status: &serde_json::Value) -> Vec<String> {
    status["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["event"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn page_is_served_and_status_carries_events_history_and_recent_figures() {
    let mut stack = Stack::start_ready("dash-status", spec());
    let admin = stack.admin();

    let page = common::get(admin, "/").expect("GET /");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(page.text().contains("fetch('/status'"));
    let head = common::raw_request(admin, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n").expect("HEAD");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let post = common::raw_request(
        admin,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("POST");
    assert_eq!(post.status, 405);
    let status = common::get(admin, "/status").expect("GET /status");
    assert_eq!(status.header("cache-control"), Some("no-store"));

    // Start-up events, in order, numbered from 1.
    let s = stack.status();
    let names = event_names(&s);
    let pos = |n: &str| names.iter().position(|e| e == n);
    for n in ["listening", "worker_healthy", "ready"] {
        assert!(pos(n).is_some(), "no {n} in {names:?}");
    }
    assert!(pos("listening") < pos("ready"));
    assert_eq!(s["events"][0]["seq"], 1);
    assert!(s["events"][0]["time_ms"].as_u64().unwrap_or(0) > 1_600_000_000_000);

    // Traffic while waiting for the per-worker window (the last ~10 s) and the series.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, lb) = (stop.clone(), stack.lb(0));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                support::hello(lb).expect("hello");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let s = stack.wait_status(
        "recent figures on every worker and 3 history points",
        Duration::from_secs(30),
        |s| {
            s["history"]["time_ms"].as_array().map_or(0, |a| a.len()) >= 3
                && s["workers"].as_array().is_some_and(|ws| {
                    ws.iter().all(|w| {
                        w["requests_per_s"].as_f64().unwrap_or(0.0) > 0.0
                            && w["latency_p50_ms"].as_f64().is_some()
                            && w["latency_p99_ms"].as_f64().is_some()
                            && w["share_5xx"].as_f64() == Some(0.0)
                    })
                })
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().expect("traffic thread");
    let h = &s["history"];
    let len = h["time_ms"].as_array().map_or(0, |a| a.len());
    for k in ["desired", "active", "in_flight", "requests_per_s", "p90_ms"] {
        assert_eq!(h[k].as_array().map_or(0, |a| a.len()), len, "history.{k}");
    }
    assert_eq!(
        h["desired"].as_array().and_then(|a| a.last()),
        Some(&3.into())
    );

    // A killed worker is a warning event naming it.
    let victim = s["workers"][0]["pid"].as_i64().expect("worker pid");
    let id = s["workers"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let _ = Command::new("kill")
        .arg("-9")
        .arg(victim.to_string())
        .status();
    let s = stack.wait_status("a worker_died event", Duration::from_secs(20), |s| {
        event_names(s).iter().any(|n| n == "worker_died")
    });
    let died = s["events"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["event"] == "worker_died"))
        .expect("worker_died");
    assert_eq!(died["level"], "warning");
    assert!(
        died["fields"].as_str().unwrap_or("").contains(&id),
        "{died}"
    );
}

/// The Chromium binary: `$CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> Option<String> {
    if let Ok(c) = std::env::var("CHROMIUM") {
        return Some(c);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_string)
}

/// Runs headless Chromium on `url` and returns the DOM it dumps after the page's own polling
/// ran for a few (virtual) seconds. Killed after 120 s.
fn dump_dom(browser: &str, url: &str, profile: &std::path::Path) -> String {
    let out = profile.join("dom.html");
    let file = std::fs::File::create(&out).expect("dom file");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::from(file))
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > end => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within 120 s");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("chromium: {e}"),
        }
    }
    std::fs::read_to_string(&out).unwrap_or_default()
}

/// The text of the element with `id` in a dumped DOM (up to its first `<`).
fn text_of<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = at + dom[at..].find('>')? + 1;
    let len = dom[start..].find('<')?;
    Some(&dom[start..start + len])
}

#[test]
fn headless_chromium_shows_every_worker_and_the_autoscaler_with_text_escaped() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED headless_chromium_shows_every_worker: no chromium on PATH");
        return;
    };
    let mut stack = Stack::new("dash-browser", spec());
    // Logged text the page shows (the `listening` event names the config file): markup in it
    // must come out as text.
    let hostile = stack.dir.join("cfg<b id=injected>x<i>.yaml");
    std::fs::copy(&stack.config, &hostile).expect("copy config");
    stack.config = hostile;
    stack.start();
    stack.wait_ready();
    let s = stack.status();
    let profile = stack.dir.join("chromium-profile");
    std::fs::create_dir_all(&profile).expect("profile dir");
    let dom = dump_dom(&browser, &format!("http://{}/", stack.admin()), &profile);
    assert!(dom.contains("<table"), "no page rendered:\n{dom}");

    let ids: Vec<&str> = s["workers"]
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert!(
            dom.contains(&format!(">{id}</td>")),
            "worker {id} not shown:\n{dom}"
        );
    }
    for c in s["children"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?");
        assert!(
            dom.contains(&format!(">{name}</td>")),
            "child {name} not shown"
        );
    }
    assert_eq!(text_of(&dom, "state"), Some("running"), "state badge");
    assert_eq!(text_of(&dom, "as-enabled"), Some("on"));
    assert_eq!(text_of(&dom, "as-desired"), Some("3"));
    let region = s["autoscale"]["region"].as_str().expect("region");
    let shown = text_of(&dom, "as-region").unwrap_or("");
    assert!(
        shown.starts_with(region),
        "region {region:?}, page shows {shown:?}"
    );
    assert!(dom.contains(">worker_healthy<"), "events not shown");
    assert!(dom.contains("<path"), "no chart drawn");

    assert!(
        !dom.contains("<b id=\"injected\""),
        "logged markup became an element"
    );
    assert!(
        dom.contains("&lt;b id=injected&gt;"),
        "logged markup not shown as text"
    );

    // The screenshot script on the same instance, phone-sized.
    let png = stack.dir.join("phone.png");
    let o = Command::new(shot_script())
        .args([
            "--admin",
            &stack.admin().to_string(),
            "--size",
            "390x1600",
            "--out",
        ])
        .arg(&png)
        .env("CHROMIUM", &browser)
        .output()
        .expect("run dashboard-shot.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&png).expect("png written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

fn shot_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dashboard-shot.sh")
}

#[test]
fn shot_script_documents_itself_and_rejects_bad_usage() {
    let help = Command::new(shot_script())
        .arg("--help")
        .output()
        .expect("--help");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.starts_with("usage: scripts/dashboard-shot.sh"),
        "{text}"
    );
    for needle in ["--admin", "--size", "--out", "apt-get install chromium"] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
    for bad in [&["--bogus"][..], &["--size", "big"][..]] {
        let o = Command::new(shot_script())
            .args(bad)
            .output()
            .expect("bad usage");
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn status_watch_redraws_every_second_and_exits_1_once_nothing_answers() {
    let stack = Stack::start_ready("dash-watch", spec());
    let out = stack.dir.join("watch.out");
    let file = std::fs::File::create(&out).expect("watch output");
    let mut watch = common::Proc::start_cmd(
        "status --watch",
        Command::new(common::bin())
            .args(["status", "--watch", "--admin"])
            .arg(stack.admin().to_string())
            .stdout(Stdio::from(file)),
    );
    support::wait_until("three tables", Duration::from_secs(30), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.matches("LB CHILD").count() >= 3)
    });
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(!text.contains('\u{1b}'), "escape codes on a pipe");
    assert!(text.contains("Ctrl-C to stop"));
    assert!(watch.alive(), "watch ended while the instance answers");

    // The instance stops: the watch says so, then gives up with 1.
    stack.signal(15);
    let code = watch.wait_exit(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(1),
        "{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(text.contains("NOT ANSWERING"), "{text}");

    // Nothing there at all: 1 at once, like plain `status`.
    let port = common::free_port();
    let st = Command::new(common::bin())
        .args(["status", "--watch", "--admin", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("status --watch");
    assert_eq!(st.code(), Some(1));
}
