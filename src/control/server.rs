//! The daemon's side of the control socket: the socket and its lock, peer credentials, routing.

use std::{
    convert::Infallible,
    io::Write,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::{
    body::{Body, Frame, Incoming},
    header, Method, Request, Response, StatusCode,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{ApiError, Command, ErrorBody, Event, ProtectRequest, Reply, RetryRequest, Version};
use crate::store::Status;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the socket folder {}: {source}", path.display())]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("the socket folder {} belongs to uid {owner}, not to you (uid {me})", path.display())]
    NotOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("another veild (pid {pid}) already listens on {}", socket.display())]
    Running { socket: PathBuf, pid: String },
    #[error("socket lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {}: {source}", path.display())]
    Bind { path: PathBuf, source: std::io::Error },
    #[error(
        "{} exists and is not a socket; veild does not remove it (set paths.socket to another path)",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error(
        "the socket folder {} (mode {mode:o}) can be written by others, who could replace the socket; \
         make it yours alone (chmod go-w) or set paths.socket elsewhere",
        path.display()
    )]
    OpenFolder { path: PathBuf, mode: u32 },
}

/// The listening socket, its folder (0700) and lock file; the socket file is removed on drop.
pub struct Listener {
    socket: PathBuf,
    listener: tokio::net::UnixListener,
    _lock: std::fs::File,
}

/// The text of a lock file: the pid of the process holding it ("?" when unreadable).
pub fn lock_holder(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or("?".into())
}

/// Takes an exclusive `flock` on `path` and writes this process's pid into it; `Err(None)` when
/// another process holds it.
pub fn lock_pid_file(path: &Path) -> Result<std::fs::File, Option<std::io::Error>> {
    let mut file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(Some)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.kind() == std::io::ErrorKind::WouldBlock { None } else { Some(e) });
    }
    file.set_len(0).map_err(Some)?;
    writeln!(file, "{}", std::process::id()).map_err(Some)?;
    Ok(file)
}

/// Whether `socket` can be a control socket as its place stands now: its folder, where there is
/// one, not writable by others (they could replace the socket with their own, unless the sticky bit
/// keeps them to their own files, as in /tmp), and nothing but a socket at the path (anything else
/// is never removed). `veil doctor` asks the same.
pub fn check_place(socket: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if let Some(dir) = socket.parent() {
        if let Ok(meta) = std::fs::metadata(dir) {
            if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
                return Err(ControlError::OpenFolder { path: dir.into(), mode: meta.mode() & 0o7777 });
            }
        }
    }
    match std::fs::symlink_metadata(socket) {
        Ok(found) if !found.file_type().is_socket() => Err(ControlError::NotASocket { path: socket.into() }),
        _ => Ok(()),
    }
}

impl Listener {
    /// Creates the socket's folder when missing (0700; an existing one, which must be ours, keeps its
    /// mode), takes `<socket>.lock`, replaces a stale socket (nobody answers on it; anything else at
    /// that path is left alone and refused) and listens (0600). Must be called on the async runtime.
    pub fn bind(socket: &Path) -> Result<Listener, ControlError> {
        let dir = socket.parent().unwrap_or(Path::new("."));
        let folder = |source| ControlError::Folder { path: dir.into(), source };
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(folder)?;
        }
        let meta = std::fs::metadata(dir).map_err(folder)?;
        let me = unsafe { libc::geteuid() };
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != me {
            return Err(ControlError::NotOwner { path: dir.into(), owner: meta.uid(), me });
        }
        check_place(socket)?;

        let mut lock_path = socket.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = match lock_pid_file(&lock_path) {
            Ok(f) => f,
            Err(None) => {
                return Err(ControlError::Running { socket: socket.into(), pid: lock_holder(&lock_path) })
            }
            Err(Some(source)) => return Err(ControlError::Lock { path: lock_path, source }),
        };
        if std::fs::symlink_metadata(socket).is_ok() {
            // Again: something else may have been put there since.
            check_place(socket)?;
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(ControlError::Running { socket: socket.into(), pid: "unknown".into() });
            }
            tracing::info!("removing the stale socket {} left by a veild that stopped", socket.display());
            let _ = std::fs::remove_file(socket);
        }
        let bind = |source| ControlError::Bind { path: socket.into(), source };
        let listener = tokio::net::UnixListener::bind(socket).map_err(bind)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
        Ok(Listener { socket: socket.into(), listener, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// What the server needs from the daemon.
#[derive(Clone)]
pub struct Handle {
    /// Hands a command to the core; false when the core is gone.
    pub core: Arc<dyn Fn(Command, oneshot::Sender<Reply>) -> bool + Send + Sync>,
    /// Asks the service to read the configuration again and apply it.
    pub reload: mpsc::UnboundedSender<oneshot::Sender<Reply>>,
    pub events: broadcast::Sender<Event>,
}

/// Whether a peer with this uid may use the socket: the daemon's own user, and root.
pub fn allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

/// Serves connections until the future is dropped.
pub async fn serve(listener: Listener, handle: Handle) {
    let own = unsafe { libc::geteuid() };
    tracing::info!("control socket: {}", listener.path().display());
    loop {
        let stream = match listener.listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket: cannot accept a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if allowed(cred.uid(), own) => {}
            Ok(cred) => {
                tracing::warn!(
                    "control socket: refused a connection from uid {} (pid {}): only uid {own} and root may \
                     steer this veild",
                    cred.uid(),
                    cred.pid().map_or("?".into(), |p| p.to_string())
                );
                tokio::spawn(refuse(stream));
                continue;
            }
            Err(e) => {
                tracing::warn!("control socket: refused a connection whose credentials are unknown: {e}");
                continue;
            }
        }
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(respond(&handle, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!("control connection ended: {e}");
            }
        });
    }
}

/// Answers a refused peer with a 403 and hangs up.
async fn refuse(mut stream: tokio::net::UnixStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Read the request head first (bounded, at most 2 s): a client still sending its request when the
    // answer comes and the socket closes gets EPIPE and never reads the 403.
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let body = r#"{"error":"refused: this veild belongs to another user","status":403}"#;
    let text = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

type Out = Response<BoxBody<Bytes, Infallible>>;

async fn respond(handle: &Handle, req: Request<Incoming>) -> Out {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    match route(handle, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("control: {method} {path}: {} {}", e.status, e.message);
            error(&e)
        }
    }
}

fn json_response(status: u16, body: &impl serde::Serialize) -> Out {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

fn error(e: &ApiError) -> Out {
    json_response(e.status, &ErrorBody { error: e.message.clone(), status: e.status })
}

const ROUTES: [(&str, &str); 10] = [
    ("GET", "/v1/version"),
    ("GET", "/v1/status"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/events"),
    ("POST", "/v1/pause"),
    ("POST", "/v1/resume"),
    ("POST", "/v1/reload"),
    ("POST", "/v1/protect"),
    ("POST", "/v1/retry"),
    ("HEAD", ""),
];

async fn route(handle: &Handle, req: Request<Incoming>) -> Result<Out, ApiError> {
    if req.headers().contains_key(header::ORIGIN) || req.headers().contains_key(header::REFERER) {
        return Err(ApiError::new(
            403,
            "requests carrying an Origin or Referer header are refused: browsers may not drive veild",
        ));
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let body = read_body(&parts.headers, body).await?;
    match (&parts.method, path) {
        (&Method::GET, "/v1/version") => {
            Ok(json_response(200, &Version { version: env!("CARGO_PKG_VERSION").into(), api: super::API }))
        }
        (&Method::GET, "/v1/status") => ask(handle, Command::Status).await,
        (&Method::GET, "/v1/jobs") => {
            let (status, after, limit) = jobs_query(query)?;
            ask(handle, Command::Jobs { status, after, limit }).await
        }
        (&Method::GET, "/v1/events") => Ok(events(handle)),
        (&Method::POST, "/v1/pause") => ask(handle, Command::Pause).await,
        (&Method::POST, "/v1/resume") => ask(handle, Command::Resume).await,
        (&Method::POST, "/v1/reload") => {
            let (tx, rx) = oneshot::channel();
            handle.reload.send(tx).map_err(|_| stopping())?;
            answer(rx.await.map_err(|_| stopping())?)
        }
        (&Method::POST, "/v1/protect") => {
            let request: ProtectRequest = parse_json(&body)?;
            if request.paths.is_empty() {
                return Err(ApiError::new(400, "\"paths\" is empty: name at least one file or folder"));
            }
            ask(handle, Command::Protect(request)).await
        }
        (&Method::POST, "/v1/retry") => {
            let request: RetryRequest = parse_json(&body)?;
            if request.id.is_some() == request.all {
                return Err(ApiError::new(
                    400,
                    "give either \"id\" (one job) or \"all\": true (every failed job)",
                ));
            }
            ask(handle, Command::Retry(request)).await
        }
        (method, path) => {
            if ROUTES.iter().any(|(_, p)| *p == path) {
                let allowed: Vec<&str> = ROUTES.iter().filter(|(_, p)| *p == path).map(|(m, _)| *m).collect();
                Err(ApiError::new(
                    405,
                    format!("{method} is not allowed on {path} (use {})", allowed.join(", ")),
                ))
            } else {
                Err(ApiError::new(404, format!("no such endpoint: {path} (the API lives under /v1/)")))
            }
        }
    }
}

fn stopping() -> ApiError {
    ApiError::new(503, "veild is stopping")
}

async fn ask(handle: &Handle, command: Command) -> Result<Out, ApiError> {
    let (tx, rx) = oneshot::channel();
    if !(handle.core)(command, tx) {
        return Err(stopping());
    }
    answer(rx.await.map_err(|_| stopping())?)
}

fn answer(reply: Reply) -> Result<Out, ApiError> {
    reply.map(|value| json_response(200, &value))
}

/// The body, refused (413) past [`super::MAX_BODY`].
async fn read_body(headers: &hyper::HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
    let too_big = || ApiError::new(413, format!("the request body is larger than {} bytes", super::MAX_BODY));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > super::MAX_BODY as u64) {
        return Err(too_big());
    }
    match Limited::new(body, super::MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(e) => Err(ApiError::new(400, format!("cannot read the request body: {e}"))),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, format!("malformed JSON in the request body: {e}")))
}

/// `status=&limit=&after=` of `GET /v1/jobs`.
pub fn jobs_query(query: &str) -> Result<(Option<Status>, i64, usize), ApiError> {
    let (mut status, mut after, mut limit) = (None, 0, 100);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| ApiError::new(400, format!("{key}={value}: {what}"));
        match key {
            "status" if value.is_empty() => {}
            "status" => {
                status = Some(
                    Status::from_name(value)
                        .ok_or_else(|| bad("not one of pending, running, done, failed, skipped"))?,
                )
            }
            "after" => after = value.parse().map_err(|_| bad("not a job number"))?,
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=super::MAX_PAGE).contains(n))
                    .ok_or_else(|| bad(&format!("not a number from 1 to {}", super::MAX_PAGE)))?
            }
            _ => return Err(bad("unknown parameter (status, limit, after)")),
        }
    }
    Ok((status, after, limit))
}

/// `GET /v1/events`: JSON lines, a `subscribed` line first, until the client goes.
fn events(handle: &Handle) -> Out {
    let mut rx = handle.events.subscribe();
    let (tx, lines) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let line = |e: &Event| {
            let mut v = serde_json::to_vec(e).unwrap_or_default();
            v.push(b'\n');
            Bytes::from(v)
        };
        if tx.send(line(&Event::new("subscribed", None))).await.is_err() {
            return;
        }
        loop {
            let event = match rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Event { error: Some(format!("{n} event(s) lost")), ..Event::new("lagged", None) }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(line(&event)).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(BoxBody::new(Lines(lines)));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-ndjson"));
    r
}

/// A streamed body fed by a channel of lines.
struct Lines(mpsc::Receiver<Bytes>);

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|line| line.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_own_user_and_root_get_in() {
        assert!(allowed(1000, 1000));
        assert!(allowed(0, 1000));
        assert!(!allowed(65534, 1000));
        assert!(allowed(0, 0));
        assert!(!allowed(1000, 0));
    }

    #[test]
    fn jobs_query_is_parsed_and_checked() {
        assert_eq!(jobs_query("").unwrap(), (None, 0, 100));
        assert_eq!(jobs_query("status=failed&limit=5&after=7").unwrap(), (Some(Status::Failed), 7, 5));
        assert_eq!(jobs_query("status=").unwrap(), (None, 0, 100));
        for bad in ["status=lost", "limit=0", "limit=x", "limit=100000", "after=x", "color=red"] {
            let e = jobs_query(bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.contains(bad.split('=').next().unwrap()), "{bad}: {}", e.message);
        }
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let socket = d.path().join("run/veil/veil.sock");
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        std::fs::set_permissions(socket.parent().unwrap(), std::fs::Permissions::from_mode(0o750)).unwrap();
        // A socket file nobody listens on, as a killed daemon leaves it.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let first = Listener::bind(&socket).unwrap();
        assert_eq!(mode(&socket), 0o600);
        // A folder that was there keeps its mode; one made for the socket is the user's alone.
        assert_eq!(mode(socket.parent().unwrap()), 0o750);
        let fresh = d.path().join("new/veil/veil.sock");
        drop(Listener::bind(&fresh).unwrap());
        assert_eq!(mode(fresh.parent().unwrap()), 0o700);
        // The same uid connecting is let in by the credentials check.
        let client = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let (server, _) = first.listener.accept().await.unwrap();
        let own = unsafe { libc::geteuid() };
        assert!(allowed(server.peer_cred().unwrap().uid(), own));
        assert_eq!(client.peer_cred().unwrap().uid(), own);
        match Listener::bind(&socket) {
            Err(ControlError::Running { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("{:?}", other.map(|l| l.path().to_path_buf())),
        }
        drop(first);
        assert!(!socket.exists());
        Listener::bind(&socket).unwrap();
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_removed() {
        let d = tempfile::tempdir().unwrap();
        let notes = d.path().join("notes.txt");
        std::fs::write(&notes, "precious").unwrap();
        let e = Listener::bind(&notes).err().unwrap();
        assert!(matches!(e, ControlError::NotASocket { .. }), "{e}");
        assert!(e.to_string().contains("notes.txt exists and is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "precious");
        assert!(!d.path().join("notes.txt.lock").exists(), "a lock file left beside it");
        // A folder others may write to (without the sticky bit) is refused; /tmp's kind is not.
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Listener::bind(&open.join("veil.sock")).err().unwrap();
        assert!(matches!(e, ControlError::OpenFolder { .. }), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        drop(Listener::bind(&open.join("veil.sock")).unwrap());
    }
}
