//! A small blocking HTTP/1.1 client over the control socket, for the `veil` CLI, and the tables it
//! prints.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{de::DeserializeOwned, Serialize};

use super::{ErrorBody, Event, JobsPage, StatusReport};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "veild is not running (nothing listens on {}): start it with `systemctl --user start veil`, or run \
         `veild` in a terminal",
        socket.display()
    )]
    NotRunning { socket: PathBuf },
    #[error("cannot talk to veild on {}: {source}", socket.display())]
    Io { socket: PathBuf, source: std::io::Error },
    #[error("veild sent an answer that is not HTTP/JSON: {0}")]
    Protocol(String),
    /// veild answered with an error.
    #[error("{message}")]
    Api { status: u16, message: String },
}

/// Talks to the `veild` listening on `socket`.
pub struct Client {
    pub socket: PathBuf,
}

/// An answer: status and a reader over the (de-chunked) body.
struct Answer {
    status: u16,
    body: Box<dyn BufRead>,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client { socket: socket.to_path_buf() }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> ClientError + '_ {
        |source| ClientError::Io { socket: self.socket.clone(), source }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<Answer, ClientError> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning { socket: self.socket.clone() }
            }
            _ => ClientError::Io { socket: self.socket.clone(), source },
        })?;
        stream.set_read_timeout(timeout).map_err(self.io())?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: veil\r\nconnection: close\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(self.io())?;
        stream.write_all(body).map_err(self.io())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(self.io())?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| ClientError::Protocol(format!("status line {:?}", line.trim_end())))?;
        let (mut chunked, mut length) = (false, None);
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(self.io())?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if name == "content-length" {
                    length = value.parse::<u64>().ok();
                }
            }
        }
        let body: Box<dyn BufRead> = match (chunked, length) {
            (true, _) => Box::new(BufReader::new(Chunked { inner: reader, left: 0, done: false })),
            (false, Some(n)) => Box::new(BufReader::new(reader.take(n))),
            (false, None) => Box::new(reader),
        };
        Ok(Answer { status, body })
    }

    /// Sends a request and reads the JSON answer; an error answer becomes [`ClientError::Api`].
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Protocol(format!("cannot write the request: {e}")))?;
        let mut answer = self.send(method, path, body.as_deref(), Some(TIMEOUT))?;
        let mut bytes = Vec::new();
        answer.body.read_to_end(&mut bytes).map_err(self.io())?;
        if !(200..300).contains(&answer.status) {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status: answer.status, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("{path}: {e}")))
    }

    /// `GET /v1/events`: the events as they come (the first is `subscribed`).
    pub fn events(&self) -> Result<impl Iterator<Item = Result<Event, ClientError>> + '_, ClientError> {
        let answer = self.send("GET", "/v1/events", None, None)?;
        if answer.status != 200 {
            return Err(ClientError::Api {
                status: answer.status,
                message: "cannot follow the events".into(),
            });
        }
        Ok(answer.body.lines().map(move |line| {
            let line = line.map_err(self.io())?;
            serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("event {line:?}: {e}")))
        }))
    }
}

/// `Transfer-Encoding: chunked`, decoded.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Ok(0);
            }
            let size = line.trim_end().split(';').next().unwrap_or("");
            self.left = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(bad("the answer ended inside a chunk"));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

/// `veil status` as a human reads it.
pub fn status_table(s: &StatusReport) -> String {
    let mut out = format!(
        "veild {} (pid {}): {}, up {}\ndevice: {}\nmodels: {}\nqueue: {} photo(s){}{}\n",
        s.version,
        s.pid,
        s.state,
        duration(s.uptime_seconds),
        s.device,
        if s.models.is_empty() { "none loaded".into() } else { s.models.join(", ") },
        s.queue,
        match s.eta_seconds {
            None => String::new(),
            Some(eta) => format!(", about {} left", estimate(eta)),
        },
        match s.waiting {
            0 => String::new(),
            n => format!(", {n} waiting to be tried again (see the last errors)"),
        }
    );
    let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out += &format!("jobs: {}\n", if counts.is_empty() { "none yet".into() } else { counts.join(", ") });
    if let Some(power) = &s.power {
        out += &format!("power: {power}\n");
    }
    if let Some(notify) = &s.notify {
        out += &format!("notify: {notify}\n");
    }
    if s.folders.is_empty() {
        out += "folders: none configured\n";
    }
    for f in &s.folders {
        out += &format!("folder {} -> {} ({})\n", f.path, f.output, f.watch);
        if let Some(e) = &f.error {
            out += &format!("  watch error: {e}\n");
        }
    }
    if !s.last_errors.is_empty() {
        out += "last errors:\n";
        for e in &s.last_errors {
            out += &format!("  {}\n", e.message);
        }
    }
    out
}

/// One event as `veil watch` prints it: `done /in/a.jpg -> /out/a.jpg (2 faces)`,
/// `failed /in/b.jpg: corrupt JPEG (…)` (an error without the path it starts with).
pub fn event_line(event: &Event) -> String {
    if event.event == "subscribed" {
        return "following veild's progress (Ctrl-C to stop)".into();
    }
    let path = event.path.as_deref().unwrap_or_default();
    let faces = match event.faces {
        None => String::new(),
        Some(0) => " (no face: copied unchanged)".into(),
        Some(1) => " (1 face)".into(),
        Some(n) => format!(" ({n} faces)"),
    };
    let detail = match (&event.output, &event.error) {
        (Some(o), _) => format!(" -> {o}{faces}"),
        (None, Some(e)) => format!(": {}", super::without_path(e, path)),
        (None, None) => String::new(),
    };
    let subject = if path.is_empty() { "veild" } else { path };
    format!("{} {subject}{detail}", event.event)
}

/// `veil jobs` as a human reads it.
///
/// The photo column is as wide as the page's longest path, and an error that starts with its photo's
/// path (as every error names its file) is shown without it, beside that path.
pub fn jobs_table(page: &JobsPage) -> String {
    let width = page.jobs.iter().map(|j| j.path.chars().count()).max().unwrap_or(0).max(5);
    let mut out = format!("{:>6}  {:<8}  {:>5}  {:<width$}  detail\n", "id", "status", "faces", "photo");
    for j in &page.jobs {
        let faces = j.faces.map_or("-".into(), |f| f.to_string());
        let detail = match (&j.error, &j.output) {
            (Some(e), _) => super::without_path(e, &j.path).to_string(),
            (None, Some(o)) if j.output_deleted => format!("-> {o} (deleted since)"),
            (None, Some(o)) => format!("-> {o}"),
            (None, None) => String::new(),
        };
        out += &format!("{:>6}  {:<8}  {faces:>5}  {:<width$}  {detail}\n", j.id, j.status, j.path);
    }
    if let Some(next) = page.next {
        out += &format!("(more: --after {next})\n");
    }
    out
}

fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// An estimate as a person says it: to 5 s under a minute, to the minute under an hour.
fn estimate(s: u64) -> String {
    match s {
        0..60 => format!("{} s", s.div_ceil(5).max(1) * 5),
        60..3600 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600 + 30) / 60),
    }
}

/// How long [`Client`] calls may wait on a busy daemon.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// `path` (absolute) with its `..` taken out, where that leads to the same file (a `..` after a
/// symbolic link to a folder leads elsewhere: then `path` as it is), so the daemon knows one file
/// by one name.
pub fn without_dot_dot(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    if !path.components().any(|c| c == Component::ParentDir) {
        return path.to_path_buf();
    }
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    let id = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
    };
    match (id(&clean), id(path)) {
        (Some(a), Some(b)) if a == b => clean,
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked { inner: &raw[..], left: 0, done: false }.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello, world");
        let mut cut = Chunked { inner: &b"5\r\nhel"[..], left: 0, done: false };
        assert!(cut.read_to_string(&mut String::new()).is_err());
    }

    #[test]
    fn a_missing_socket_says_how_to_start_veild() {
        let d = tempfile::tempdir().unwrap();
        let c = Client::new(&d.path().join("veil.sock"));
        let e = c.call::<serde_json::Value>("GET", "/v1/status", None::<&()>).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e:?}");
        assert!(e.to_string().contains("systemctl --user start veil"), "{e}");
    }

    #[test]
    fn a_job_table_says_when_a_copy_was_deleted() {
        let job = |id: i64, deleted: bool| crate::control::JobInfo {
            id,
            path: format!("/in/{id}.jpg"),
            status: "done".into(),
            attempts: 1,
            error: None,
            output: Some(format!("/out/{id}.jpg")),
            output_deleted: deleted,
            faces: Some(1),
            seconds: Some(1.0),
            updated: 0,
        };
        let table = jobs_table(&JobsPage { jobs: vec![job(1, false), job(2, true)], next: None });
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].ends_with("-> /out/1.jpg"), "{table}");
        assert!(lines[2].ends_with("-> /out/2.jpg (deleted since)"), "{table}");
    }

    #[test]
    fn an_event_line_says_the_faces_and_names_its_photo_once() {
        let e = |event: &str| Event::new(event, Some(std::path::Path::new("/in/a.jpg")));
        let done = |faces| Event { output: Some("/out/a.jpg".into()), faces, ..e("done") };
        assert_eq!(event_line(&done(Some(2))), "done /in/a.jpg -> /out/a.jpg (2 faces)");
        assert_eq!(event_line(&done(Some(0))), "done /in/a.jpg -> /out/a.jpg (no face: copied unchanged)");
        assert_eq!(event_line(&done(None)), "done /in/a.jpg -> /out/a.jpg", "a rename takes its copy along");
        let failed = Event { error: Some("/in/a.jpg: corrupt JPEG".into()), ..e("failed") };
        assert_eq!(event_line(&failed), "failed /in/a.jpg: corrupt JPEG");
        assert_eq!(event_line(&Event::new("paused", None)), "paused veild");
    }

    #[test]
    fn a_job_table_keeps_its_columns_under_long_paths_and_names_each_path_once() {
        let long = format!("/home/ann/Pictures/Veil/To-Share/{}/IMG_0001.jpg", "Holidays".repeat(4));
        let failed = crate::control::JobInfo {
            id: 12,
            path: long.clone(),
            status: "failed".into(),
            attempts: 1,
            error: Some(format!("{long}: corrupt JPEG (truncated)")),
            output: None,
            output_deleted: false,
            faces: None,
            seconds: None,
            updated: 0,
        };
        let short = crate::control::JobInfo {
            id: 3,
            path: "/in/é.jpg".into(),
            error: Some("/elsewhere: x".into()),
            ..failed.clone()
        };
        let table = jobs_table(&JobsPage { jobs: vec![short, failed], next: None });
        let lines: Vec<&str> = table.lines().collect();
        // Every line's detail starts in the same column (counted in characters: é is one).
        let column =
            |l: &str| l.chars().count() - l.rsplit("  ").next().unwrap().trim_start().chars().count();
        assert!(lines.iter().all(|l| column(l) == column(lines[0])), "{table}");
        assert!(lines[2].ends_with(&format!("{long}  corrupt JPEG (truncated)")), "{table}");
        // An error about another path is shown whole.
        assert!(lines[1].ends_with("  /elsewhere: x"), "{table}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(
            (estimate(0), estimate(12), estimate(89), estimate(7325)),
            ("5 s".into(), "15 s".into(), "1 min".into(), "2 h 2 min".into())
        );
        assert_eq!(duration(5), "5 s");
        assert_eq!(duration(125), "2 min 5 s");
        assert_eq!(duration(7325), "2 h 2 min");
    }

    #[test]
    fn a_dot_dot_is_taken_out_only_where_it_leads_to_the_same_file() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("x/y")).unwrap();
        std::fs::write(root.join("a/p.jpg"), b"x").unwrap();
        std::fs::write(root.join("x/p.jpg"), b"y").unwrap();
        assert_eq!(without_dot_dot(&root.join("a/b/../p.jpg")), root.join("a/p.jpg"));
        assert_eq!(without_dot_dot(&root.join("a/p.jpg")), root.join("a/p.jpg"));
        // Through a link to a folder, `..` is the link target's parent: left as it is.
        std::os::unix::fs::symlink(root.join("x/y"), root.join("a/link")).unwrap();
        let through = root.join("a/link/../p.jpg");
        assert_eq!(without_dot_dot(&through), through);
        // A file that is not there is left as it is too.
        let missing = root.join("a/b/../none.jpg");
        assert_eq!(without_dot_dot(&missing), missing);
    }
}
