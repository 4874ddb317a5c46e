//! End to end: the real `veild` in a temporary home, steered over its real control socket by the real
//! `veil` binary and by raw HTTP (and `curl`, as another user).

use std::{
    io::{Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

mod common;
use common::{output_within, Daemon, Home, CLI_LIMIT, REFUSED_LIMIT};

impl Home {
    fn socket(&self) -> PathBuf {
        self.path().join("run/veil/veil.sock")
    }

    /// `bin` with this home's `veil.toml` and debug logs.
    fn configured(&self, bin: &str) -> Command {
        let mut c = self.command(bin);
        c.args(["--config", self.config_path().to_str().unwrap()]).env("VEIL_LOG", "veil=debug,info");
        c
    }

    fn spawn(&self) -> Daemon {
        Daemon::spawn(&mut self.configured(env!("CARGO_BIN_EXE_veild")))
    }

    fn start(&self) -> Daemon {
        let d = self.spawn();
        d.wait_log("ready", Duration::from_secs(60));
        d
    }

    fn veil(&self, args: &[&str]) -> Output {
        output_within(self.configured(env!("CARGO_BIN_EXE_veil")).args(args), CLI_LIMIT)
    }

    /// `veil ARGS --json`, which must succeed: its JSON.
    fn veil_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let o = self.veil(&all);
        assert!(o.status.success(), "veil {args:?}: {}{}", text(&o.stdout), text(&o.stderr));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("veil {args:?}: {e}: {}", text(&o.stdout)))
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One raw HTTP/1.1 exchange: the status and the JSON body.
fn http(socket: &Path, request: &[u8]) -> (u16, Value) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // A refused large body may be cut off: the answer still comes.
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = text(&raw);
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{raw:?}"));
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw:?}")))
}

fn get(socket: &Path, path: &str) -> (u16, Value) {
    http(socket, format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
}

fn post(socket: &Path, path: &str, body: &str) -> (u16, Value) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    http(socket, req.as_bytes())
}

fn photo(seed: u32, path: &Path) {
    let img = image::RgbImage::from_fn(24, 24, |x, y| {
        let v = seed.wrapping_mul(2_654_435_761).wrapping_add(x * 7 + y * 13);
        image::Rgb([(v >> 3) as u8, (v >> 11) as u8, (v >> 19) as u8])
    });
    // Written aside and renamed in, so the watcher sees it whole.
    let tmp = path.with_file_name(format!(".tmp-{seed}.png"));
    img.save(&tmp).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// The event stream, read on a thread with the real client, once its first line (`subscribed`) came.
fn follow(socket: &Path) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    let client = veil::control::client::Client::new(socket);
    std::thread::spawn(move || {
        if let Ok(events) = client.events() {
            for e in events.map_while(Result::ok) {
                if tx.send(serde_json::to_value(e).unwrap()).is_err() {
                    break;
                }
            }
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap()["event"], "subscribed");
    rx
}

/// Events until one says `event` for a path ending in `name`; returns the events of that path.
fn until(rx: &mpsc::Receiver<Value>, name: &str, event: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
            panic!("no {event} event for {name}; saw {seen:?}");
        });
        if e["path"].as_str().is_some_and(|p| p.ends_with(name)) {
            seen.push(e["event"].as_str().unwrap().to_string());
            if e["event"] == event {
                return;
            }
        }
    }
}

#[test]
fn every_endpoint_over_the_real_socket() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let sock = home.socket();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sock), 0o600);
    assert_eq!(mode(sock.parent().unwrap()), 0o700);

    let (code, v) = get(&sock, "/v1/version");
    assert_eq!((code, v["api"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let status = home.veil_json(&["status"]);
    assert_eq!(status["state"], "idle", "{status}");
    assert_eq!(status["folders"][0]["watch"], "events", "{status}");
    // What the engine runs: the detector and the ensemble, not the holdouts that only judge `veil eval`.
    let models = status["models"].as_array().unwrap();
    assert!(models.iter().any(|m| m == "mtcnn") && models.iter().any(|m| m == "stargan"), "{status}");
    assert!(!models.iter().any(|m| m == "stargan_adv" || m == "cyclegan"), "{status}");
    let human = home.veil(&["status"]);
    assert!(
        text(&human.stdout).contains("idle") && text(&human.stdout).contains("In"),
        "{}",
        text(&human.stdout)
    );

    let events = follow(&sock);

    // Paused: the photo is recorded but waits.
    assert_eq!(home.veil_json(&["pause"])["state"], "paused");
    photo(1, &home.path().join("In/a.png"));
    let mut seen = Vec::new();
    until(&events, "In/a.png", "queued", &mut seen);
    std::thread::sleep(Duration::from_millis(1500));
    let (_, pending) = get(&sock, "/v1/jobs?status=pending");
    assert_eq!(pending["jobs"].as_array().unwrap().len(), 1, "{pending}");
    assert_eq!(home.veil_json(&["status"])["state"], "paused");
    assert_eq!(home.veil_json(&["resume"])["state"], "working");
    until(&events, "In/a.png", "done", &mut seen);
    assert_eq!(seen, ["queued", "running", "done"]);
    assert!(home.path().join("Out/a.png").is_file());

    // Protect now, outside the watched folders: to the first folder's output.
    std::fs::create_dir_all(home.path().join("elsewhere")).unwrap();
    let outside = home.path().join("elsewhere/b.png");
    photo(2, &outside);
    let added = home.veil_json(&["add", outside.to_str().unwrap()]);
    assert_eq!(added["photos"][0]["outcome"], "queued", "{added}");
    let mut seen = Vec::new();
    until(&events, "elsewhere/b.png", "done", &mut seen);
    assert_eq!(seen, ["queued", "running", "done"]);
    assert!(home.path().join("Out/b.png").is_file());
    // Asked for again with another output folder: where its copy is is told, and no folder is made.
    let elsewhere = home.path().join("Elsewhere");
    let again = home.veil_json(&["add", "--out", elsewhere.to_str().unwrap(), outside.to_str().unwrap()]);
    assert_eq!(again["photos"][0]["outcome"], "done", "{again}");
    let message = again["photos"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.ends_with(&format!("its copy is {}", home.path().join("Out/b.png").display())),
        "{again}"
    );
    assert!(!elsewhere.exists());
    // Raw, with an output folder and a missing file.
    for i in 3..6 {
        photo(i, &home.path().join(format!("elsewhere/p{i}.png")));
    }
    let body = json!({
        "paths": [home.path().join("elsewhere/p3.png"), home.path().join("elsewhere/p4.png"),
                  home.path().join("elsewhere/p5.png"), home.path().join("elsewhere/missing.png")],
        "output": home.path().join("Other"),
    });
    let (code, v) = post(&sock, "/v1/protect", &body.to_string());
    assert_eq!(code, 200, "{v}");
    let outcomes: Vec<&str> =
        v["photos"].as_array().unwrap().iter().map(|p| p["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["queued", "queued", "queued", "error"], "{v}");
    until(&events, "p5.png", "done", &mut Vec::new());
    let missing = home.veil(&["add", home.path().join("elsewhere/missing.png").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing.stdout));

    // A broken photo fails at once; retried all, then by its number.
    std::fs::write(home.path().join("In/broken.jpg"), b"not a photo at all").unwrap();
    until(&events, "broken.jpg", "failed", &mut Vec::new());
    assert_eq!(home.veil_json(&["retry", "--all"])["retried"], 1);
    until(&events, "broken.jpg", "failed", &mut Vec::new());
    let (_, failed) = get(&sock, "/v1/jobs?status=failed");
    let id = failed["jobs"][0]["id"].as_i64().unwrap();
    assert_eq!(home.veil_json(&["retry", &id.to_string()])["retried"], 1);
    until(&events, "broken.jpg", "failed", &mut Vec::new());
    let nope = home.veil(&["retry", "9999"]);
    assert_eq!(nope.status.code(), Some(1));
    assert!(text(&nope.stderr).contains("no job 9999"), "{}", text(&nope.stderr));

    // Paging: 6 jobs, 3 at a time.
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = home.veil_json(&["jobs", "--limit", "3", "--after", &after.to_string()]);
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 3);
        ids.extend(jobs.iter().map(|j| j["id"].as_i64().unwrap()));
        match page["next"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(ids, (1..=6).collect::<Vec<_>>());
    let (_, done) = get(&sock, "/v1/jobs?status=done&limit=2");
    assert_eq!(done["jobs"].as_array().unwrap().len(), 2);
    assert!(done["jobs"].as_array().unwrap().iter().all(|j| j["status"] == "done"));
    let table = text(&home.veil(&["jobs"]).stdout);
    assert!(table.contains("broken.jpg") && table.contains("failed"), "{table}");
    assert_eq!(home.veil_json(&["status"])["counts"], json!({"done": 5, "failed": 1}));

    // Reload: a second folder appears; an invalid configuration is refused and the old one kept.
    home.configure("settle_seconds = 0.3", &[("In", "Out"), ("In2", "Out2")]);
    home.veil_json(&["reload"]);
    assert_eq!(home.veil_json(&["status"])["folders"].as_array().unwrap().len(), 2);
    std::fs::write(home.config_path(), "[watch]\nsettle_seconds = \"soon\"\n").unwrap();
    let bad = home.veil(&["reload"]);
    assert_eq!(bad.status.code(), Some(1));
    home.configure("settle_seconds = 0.3", &[("In", "Out"), ("In2", "Out2")]);
    let (code, v) = post(&sock, "/v1/reload", "");
    assert_eq!(code, 200, "{v}");

    // Refusals, each a JSON error, and the daemon keeps serving.
    let refusals: Vec<(Vec<u8>, u16)> = vec![
        (b"GET /v1/status HTTP/1.1\r\nhost: x\r\norigin: http://evil.example\r\nconnection: close\r\n\r\n".to_vec(), 403),
        (b"POST /v1/pause HTTP/1.1\r\nhost: x\r\nreferer: http://evil.example/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(), 403),
        (b"POST /v1/protect HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\nconnection: close\r\n\r\n{\"paths\":".to_vec(), 400),
        (b"GET /v1/nothing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), 404),
        (b"GET /v1/pause HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), 405),
        (b"GET /v1/jobs?limit=0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), 400),
    ];
    for (req, want) in refusals {
        let (code, v) = http(&sock, &req);
        assert_eq!(code, want, "{v}");
        assert_eq!(v["status"], want, "{v}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
    }
    let big = format!("{{\"paths\": [\"{}\"]}}", "x".repeat(1 << 20));
    let (code, v) = post(&sock, "/v1/protect", &big);
    assert_eq!(code, 413, "{v}");
    // Chunked, so the size is only known while reading.
    let mut chunked =
        b"POST /v1/retry HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..20 {
        chunked.extend(format!("{:x}\r\n{}\r\n", 60_000, " ".repeat(60_000)).as_bytes());
    }
    chunked.extend(b"0\r\n\r\n");
    assert_eq!(http(&sock, &chunked).0, 413);
    assert_eq!(get(&sock, "/v1/version").0, 200);

    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!sock.exists(), "the socket is removed on a clean stop");
}

#[test]
fn a_second_veild_is_refused_and_a_stale_socket_does_not_block() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let mut first = home.start();
    let second = output_within(&mut home.configured(env!("CARGO_BIN_EXE_veild")), REFUSED_LIMIT);
    assert_eq!(second.status.code(), Some(1));
    let message = text(&second.stderr);
    let pid = first.child.id();
    assert!(message.contains(&format!("another veild already runs for this user (pid {pid},")), "{message}");
    assert!(message.contains(home.socket().to_str().unwrap()), "{message}");
    assert_eq!(home.veil_json(&["status"])["pid"], pid, "the first one still answers");

    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(home.socket().exists(), "kill -9 leaves the socket behind");
    let not_running = home.veil(&["status"]);
    assert_eq!(not_running.status.code(), Some(3));
    assert!(
        text(&not_running.stderr).contains("systemctl --user start veil"),
        "{}",
        text(&not_running.stderr)
    );

    let again = home.start();
    assert!(again.log().contains("stale socket"), "{}", again.log());
    assert_eq!(home.veil_json(&["status"])["pid"], again.child.id());
    let (status, log) = again.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running as another uid needs root (setpriv --reuid=nobody); not root here");
        return;
    }
    for tool in ["setpriv", "curl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("skipped: {tool} is not installed");
            return;
        }
    }
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let sock = home.socket();
    let as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "curl", "-sS", "--unix-socket"])
            .arg(&sock)
            .arg("http://veil/v1/status")
            .output()
            .unwrap()
    };
    // The home is reachable, the socket folder (0700) is not: refused by the file system.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(home.path().join("run"), std::fs::Permissions::from_mode(0o711)).unwrap();
    let o = as_nobody();
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).to_lowercase().contains("permission denied") || o.status.code() == Some(7),
        "{}",
        text(&o.stderr)
    );
    // Folder and socket opened up by hand: the peer credentials check refuses and logs it.
    std::fs::set_permissions(sock.parent().unwrap(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = as_nobody();
    let body: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
    assert_eq!(body["status"], 403, "{body}");
    d.wait_log("refused a connection from uid 65534", Duration::from_secs(5));
    // Root (this test) is still let in.
    assert_eq!(get(&sock, "/v1/version").0, 200);
    d.stop();
}

#[test]
fn status_tells_of_a_photo_waiting_for_its_output_folder_and_retry_all_sends_it_now() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let events = follow(&home.socket());
    let out = home.path().join("Out");
    std::fs::remove_dir(&out).unwrap();
    photo(1, &home.path().join("In/a.png"));
    let mut seen = Vec::new();
    until(&events, "In/a.png", "waiting", &mut seen);
    assert_eq!(seen, ["queued", "running", "waiting"]);

    let status = home.veil_json(&["status"]);
    assert_eq!(
        (status["state"].as_str(), status["waiting"].as_u64()),
        (Some("waiting"), Some(1)),
        "{status}"
    );
    let last =
        status["last_errors"].as_array().unwrap().last().unwrap()["message"].as_str().unwrap().to_string();
    assert!(last.contains("does not exist") && last.contains("In/a.png"), "{last}");
    let human = text(&home.veil(&["status"]).stdout);
    assert!(human.contains("queue: 1 photo(s), 1 waiting to be tried again"), "{human}");

    // Back, and sent again by hand: its attempts start over, so the one that writes it is the first.
    std::fs::create_dir(&out).unwrap();
    assert_eq!(home.veil_json(&["retry", "--all"])["retried"], 1);
    until(&events, "In/a.png", "done", &mut seen);
    assert!(out.join("a.png").is_file());
    let (_, jobs) = get(&home.socket(), "/v1/jobs?status=done");
    assert_eq!(jobs["jobs"][0]["attempts"], 1, "{jobs}");
    let status = home.veil_json(&["status"]);
    assert_eq!((status["state"].as_str(), status["waiting"].as_u64()), (Some("idle"), Some(0)), "{status}");
    // Over: no longer among the last errors.
    assert_eq!(status["last_errors"], json!([]), "{status}");
    d.stop();
}

/// A laptop's adapter and battery as the kernel lists them, in the home's `power_supply` (which
/// the test daemons read instead of `/sys/class/power_supply`).
fn laptop(home: &Home, plugged_in: bool) {
    let root = home.path().join("power_supply");
    let (online, status) = if plugged_in { ("1", "Charging") } else { ("0", "Discharging") };
    for (name, files) in
        [("AC", [("type", "Mains"), ("online", online)]), ("BAT0", [("type", "Battery"), ("status", status)])]
    {
        std::fs::create_dir_all(root.join(name)).unwrap();
        for (file, value) in files {
            std::fs::write(root.join(name).join(file), format!("{value}\n")).unwrap();
        }
    }
}

#[test]
fn on_battery_new_photos_wait_for_the_charger_and_veil_add_protects_one_now() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3\npoll_seconds = 1", &[("In", "Out")]);
    laptop(&home, false);
    let d = home.start();
    let events = follow(&home.socket());
    let (a, b) = (home.path().join("In/a.png"), home.path().join("In/b.png"));
    photo(1, &a);
    photo(2, &b);
    let start = Instant::now();
    let status = loop {
        let status = home.veil_json(&["status"]);
        if status["counts"]["pending"] == 2 {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["state"], "on battery", "{status}");
    let human = text(&home.veil(&["status"]).stdout);
    assert!(
        human.contains(": on battery, up ")
            && human.contains(
                "power: on battery: new photos wait for the charger (power.on_battery = \"pause\"; \
                 `veil add PHOTO` protects one now)\n"
            ),
        "{human}"
    );
    // Asked for by hand, one is protected now; the other still waits.
    let added = home.veil_json(&["add", b.to_str().unwrap()]);
    assert_eq!(
        (added["photos"][0]["outcome"].as_str(), added["photos"][0]["message"].as_str()),
        (Some("queued"), Some("protected now, although the computer runs on battery")),
        "{added}"
    );
    let mut seen = Vec::new();
    until(&events, "In/b.png", "done", &mut seen);
    let out = home.path().join("Out");
    assert!(out.join("b.png").is_file());
    std::thread::sleep(Duration::from_secs(3));
    assert!(!out.join("a.png").exists(), "a.png was protected on battery:\n{}", d.log());
    assert_eq!(home.veil_json(&["status"])["state"], "on battery");
    // `veil resume` does not override it, and says so.
    let resumed = home.veil(&["resume"]);
    let said = text(&resumed.stdout) + &text(&resumed.stderr);
    assert!(
        said.contains("not paused; the computer runs on battery: new photos wait for the charger"),
        "{said}"
    );

    // Plugged in: it goes on within a poll.
    laptop(&home, true);
    until(&events, "In/a.png", "done", &mut seen);
    assert!(out.join("a.png").is_file());
    let status = home.veil_json(&["status"]);
    assert_eq!(status["state"], "idle", "{status}");
    assert!(status["power"].as_str().unwrap().starts_with("on mains power"), "{status}");
    let (_, log) = d.stop();
    assert!(log.contains("on battery: new photos wait for the charger"), "{log}");
    assert!(log.contains("photos are protected again (on mains power)"), "{log}");
}

#[test]
fn a_photo_renamed_while_it_waits_is_protected_under_its_new_name() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let events = follow(&home.socket());
    let mut seen = Vec::new();
    home.veil_json(&["pause"]);
    let input = home.path().join("In");
    // Queued while paused, then renamed (and one copied, then its first name deleted): the new
    // names have the content of a photo still on its way, and are skipped as its twins until it goes.
    photo(1, &input.join("IMG_0001.png"));
    until(&events, "In/IMG_0001.png", "queued", &mut seen);
    std::fs::rename(input.join("IMG_0001.png"), input.join("holiday.png")).unwrap();
    d.wait_log("holiday.png: same content as", Duration::from_secs(30));
    photo(2, &input.join("IMG_0002.png"));
    until(&events, "In/IMG_0002.png", "queued", &mut seen);
    std::fs::copy(input.join("IMG_0002.png"), input.join("IMG_0002 copy.png")).unwrap();
    d.wait_log("IMG_0002 copy.png: same content as", Duration::from_secs(30));
    std::fs::remove_file(input.join("IMG_0002.png")).unwrap();
    home.veil_json(&["resume"]);
    until(&events, "In/holiday.png", "done", &mut seen);
    until(&events, "In/IMG_0002 copy.png", "done", &mut seen);
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let out = home.path().join("Out");
    assert!(out.join("holiday.png").is_file() && out.join("IMG_0002 copy.png").is_file(), "{log}");
    assert!(!out.join("IMG_0001.png").exists() && !out.join("IMG_0002.png").exists(), "{log}");
    assert!(log.contains("holiday.png: the file with the same content it was waiting for went"), "{log}");
}

#[test]
fn a_failed_photo_leaves_the_last_errors_once_fixed_or_deleted() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let events = follow(&home.socket());
    let input = home.path().join("In");
    let (fixed, deleted) = (input.join("fixed.png"), input.join("deleted.png"));
    // One at a time: `until` passes over other photos' events.
    let mut seen = Vec::new();
    std::fs::write(&fixed, b"not a photo yet").unwrap();
    until(&events, "In/fixed.png", "failed", &mut seen);
    std::fs::write(&deleted, b"not a photo at all").unwrap();
    until(&events, "In/deleted.png", "failed", &mut seen);
    let messages = |status: &Value| -> Vec<String> {
        let errors = status["last_errors"].as_array().cloned().unwrap_or_default();
        errors.iter().map(|e| e["message"].as_str().unwrap_or_default().to_string()).collect()
    };
    let status = home.veil_json(&["status"]);
    let told = messages(&status);
    assert!(told.len() == 2 && told.iter().all(|m| m.contains("unsupported format")), "{status}");
    assert_eq!(status["counts"]["failed"], 2, "{status}");

    // Rewritten as a photo: protected, and its failure is no longer shown.
    photo(3, &fixed);
    until(&events, "In/fixed.png", "done", &mut seen);
    let told = messages(&home.veil_json(&["status"]));
    assert!(told.len() == 1 && told[0].contains("deleted.png"), "{told:?}");

    // Deleted: its row and its message go.
    std::fs::remove_file(&deleted).unwrap();
    until(&events, "In/deleted.png", "removed", &mut seen);
    let status = home.veil_json(&["status"]);
    assert_eq!((&status["last_errors"], &status["counts"]["failed"]), (&json!([]), &Value::Null), "{status}");
    let (_, jobs) = get(&home.socket(), "/v1/jobs");
    let paths: Vec<&str> =
        jobs["jobs"].as_array().unwrap().iter().filter_map(|j| j["path"].as_str()).collect();
    assert!(paths.len() == 1 && paths[0].ends_with("In/fixed.png"), "{jobs}");
    d.stop();
}

#[test]
fn files_that_are_no_photo_are_skipped_and_a_camera_raw_file_fails_by_name() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let events = follow(&home.socket());
    let input = home.path().join("In");
    let mut seen = Vec::new();
    // An editor's sidecar and a phone's video beside the photos: left alone, not failures.
    std::fs::write(input.join("DSC_0001.xmp"), "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"/>\n").unwrap();
    until(&events, "In/DSC_0001.xmp", "skipped", &mut seen);
    std::fs::write(input.join("clip.mp4"), b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41").unwrap();
    until(&events, "In/clip.mp4", "skipped", &mut seen);
    // A RAW file: a TIFF structure whose image is the sensor's colour filter array (Photometric
    // 32803). Read as a TIFF it would have been "protected"; it is refused by name.
    let mut nef = b"II*\0\x08\0\0\0\x01\0".to_vec();
    nef.extend_from_slice(&[0x06, 0x01, 3, 0, 1, 0, 0, 0, 0x23, 0x80, 0, 0, 0, 0, 0, 0]);
    std::fs::write(input.join("DSC_0001.NEF"), &nef).unwrap();
    until(&events, "In/DSC_0001.NEF", "failed", &mut seen);

    let status = home.veil_json(&["status"]);
    let told: Vec<&str> =
        status["last_errors"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(told.len() == 1 && told[0].contains("DSC_0001.NEF: a camera RAW file (NEF)"), "{status}");
    assert_eq!(
        (&status["counts"]["skipped"], &status["counts"]["failed"]),
        (&json!(2), &json!(1)),
        "{status}"
    );
    let (_, jobs) = get(&home.socket(), "/v1/jobs?status=skipped");
    let errors: Vec<&str> =
        jobs["jobs"].as_array().unwrap().iter().filter_map(|j| j["error"].as_str()).collect();
    assert!(
        errors.iter().any(
            |e| e.ends_with("clip.mp4: a video (MP4/QuickTime), not a photo (Veil protects photos only)")
        ),
        "{jobs}"
    );
    assert!(errors.iter().any(|e| e.contains("DSC_0001.xmp: a text file, not a photo")), "{jobs}");
    assert_eq!(std::fs::read_dir(home.path().join("Out")).unwrap().count(), 0);
    d.stop();
}

#[test]
fn veil_watch_into_a_pipe_prints_lines_and_a_refused_reload_leaves_the_errors_once_one_applies() {
    use std::io::BufRead;
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    // Not a terminal: plain lines on stdout, as they come.
    let mut watch = home
        .configured(env!("CARGO_BIN_EXE_veil"))
        .arg("watch")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.starts_with("following veild's progress"), "{first}");
    photo(1, &home.path().join("In/a.png"));
    let done = format!(
        "done {} -> {} (no face: copied unchanged)",
        home.path().join("In/a.png").display(),
        home.path().join("Out/a.png").display()
    );
    let mut got = Vec::new();
    while !got.contains(&done) {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => got.push(line),
            Err(_) => panic!("no '{done}' in {got:?}\n{}", d.log()),
        }
    }

    let told = |home: &Home| -> Vec<String> {
        let status = home.veil_json(&["status"]);
        let errors = status["last_errors"].as_array().cloned().unwrap_or_default();
        errors.iter().map(|e| e["message"].as_str().unwrap_or_default().to_string()).collect()
    };
    home.configure("settle_seconds = 0.3", &[("In", "Out"), ("Out/x", "Elsewhere")]);
    let o = home.veil(&["reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(told(&home).iter().any(|m| m.contains("not applied")), "{:?}", told(&home));
    // A file that does not load (a typo while editing it) still lets `veil` reach veild: told on
    // stderr, and `veil reload` has veild say what is wrong.
    home.configure("settle_secs = 0.3", &[("In", "Out")]);
    let o = home.veil(&["status"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("warning: config file") && text(&o.stderr).contains("settle_secs"));
    let o = home.veil(&["reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("keeping the old one") || text(&o.stderr).contains("invalid"),
        "{}",
        text(&o.stderr)
    );
    home.configure("settle_seconds = 0.3", &[("In", "Out"), ("In2", "Out2")]);
    let o = home.veil(&["reload"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!told(&home).iter().any(|m| m.contains("not applied")), "{:?}", told(&home));
    d.stop();
    // veild stopped: `veil watch` says so and ends with status 3 (not running).
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = watch.kill();
            panic!("veil watch went on after veild stopped");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("veild stopped"), "{stderr}");
}

#[test]
fn status_shows_a_watched_folder_gone_and_forgets_it_once_it_is_back() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3\npoll_seconds = 1", &[("In", "Out")]);
    let d = home.start();
    let input = home.path().join("In");
    std::fs::remove_dir(&input).unwrap();
    let status_until = |watch: &str| {
        let start = Instant::now();
        loop {
            let status = home.veil_json(&["status"]);
            if status["folders"][0]["watch"] == watch {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "never {watch}: {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let status = status_until("gone");
    let error = status["folders"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("the folder is gone"), "{status}");
    let last = status["last_errors"][0]["message"].as_str().unwrap_or_default();
    assert!(last.contains("is gone (deleted, moved away or its drive unmounted)"), "{status}");
    std::fs::create_dir(&input).unwrap();
    let status = status_until("events");
    assert_eq!(
        (&status["folders"][0]["error"], &status["last_errors"]),
        (&Value::Null, &json!([])),
        "{status}"
    );
    d.stop();
}

#[test]
fn veil_add_walks_a_folder_leaving_out_hidden_entries_other_files_and_outputs() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let events = follow(&home.socket());
    let album = home.path().join("Album");
    for name in ["a.png", "sub/b.png", ".hidden/c.png", "copies/d.png"] {
        let p = album.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        photo(1 + name.len() as u32, &p);
    }
    std::fs::write(album.join("notes.txt"), "not a photo").unwrap();
    std::fs::write(album.join("sub/DSC_0001.NEF"), b"II*\0").unwrap();
    std::fs::create_dir_all(home.path().join("Empty")).unwrap();
    let copies = album.join("copies");
    let added = home.veil_json(&["add", "--out", copies.to_str().unwrap(), album.to_str().unwrap()]);
    let (queued, left_out): (Vec<&serde_json::Value>, Vec<_>) =
        added["photos"].as_array().unwrap().iter().partition(|p| p["outcome"] == "queued");
    let paths: Vec<&str> = queued.iter().map(|p| p["path"].as_str().unwrap()).collect();
    let want = [album.join("a.png"), album.join("sub/b.png")];
    assert_eq!(paths, want.iter().map(|p| p.to_str().unwrap()).collect::<Vec<_>>(), "{added}");
    // The camera RAW file is counted for the folder, not queued.
    assert_eq!(left_out.len(), 1, "{added}");
    assert_eq!(
        (&left_out[0]["path"], &left_out[0]["outcome"]),
        (&album.to_str().unwrap().into(), &"left out".into())
    );
    assert!(
        left_out[0]["message"].as_str().unwrap().starts_with("1 camera RAW file (Veil protects"),
        "{added}"
    );
    // Both, in whichever order they end (`until` passes over other photos' events).
    let mut done = std::collections::BTreeSet::new();
    while done.len() < 2 {
        let e = events.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("done: {done:?}"));
        if e["event"] == "done" {
            done.insert(e["path"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(done.into_iter().collect::<Vec<_>>(), paths, "{added}");
    // Copies of photos outside the watched folders go to --out, side by side.
    assert!(copies.join("a.png").is_file() && copies.join("b.png").is_file());

    // An empty folder, an output folder, a copy in one, a hidden file: each is named with what is
    // wrong; the call fails.
    photo(7, &home.path().join("Out/copy.png"));
    photo(8, &home.path().join("In/.hidden.png"));
    for (path, message) in [
        ("Empty", "a folder with no photos in it"),
        ("Out", "an output folder"),
        ("Out/copy.png", "in an output folder: Veil does not protect its own copies again"),
        ("In/.hidden.png", "a hidden file"),
    ] {
        let o = home.veil(&["add", home.path().join(path).to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        assert!(text(&o.stdout).contains(&format!("{path}: error: {message}")), "{}", text(&o.stdout));
    }
    // A path JSON cannot carry is refused by the CLI, naming it.
    use std::os::unix::ffi::OsStrExt;
    let latin = home.path().join("In").join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    photo(9, &latin);
    let o = output_within(home.configured(env!("CARGO_BIN_EXE_veil")).arg("add").arg(&latin), CLI_LIMIT);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("caf\u{fffd}.png: the daemon's control socket takes UTF-8 paths only"),
        "{}",
        text(&o.stderr)
    );
    d.stop();
}
