//! Test support: build the example guests once, start the real `fnhost`
//! binary on an ephemeral loopback port, read its log, stop it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a host may take to start (a cold compile in a debug build).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Path of the `fnhost` binary under test.
pub fn fnhost_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fnhost")
}

/// Builds the example guests (once per test run) and returns the path of
/// `name`.wasm.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let out = BUILT.get_or_init(|| {
        let examples = repo_root().join("examples");
        let target_dir = examples_target_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(examples.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running cargo to build the examples");
        assert!(status.success(), "building the example guests failed");
        target_dir.join("wasm32-wasip2").join("release")
    });
    let path = out.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Builds the Python example `examples/python/<name>` into a component
/// (once per test run, and not again while its inputs are unchanged) and
/// returns its path. Apps go through the SDK's builder
/// (`python3 -m fnhost.build`); `raw-*` examples, written without the SDK,
/// through plain `componentize-py`, as their READMEs say.
pub fn python_component(name: &str) -> PathBuf {
    let root = repo_root();
    let source = root.join("examples").join("python").join(name);
    let sdk = root.join("guest-sdk").join("python");
    let out_name = format!("py-{name}");
    toolchain_component(&out_name, &[&source, &sdk.join("fnhost")], |out| {
        if name.starts_with("raw-") {
            Command::new("componentize-py")
                .args(["-d", "wit", "-w", "app", "componentize", "app", "-o"])
                .arg(out)
                .current_dir(&source)
                .status()
        } else {
            Command::new("python3")
                .args(["-m", "fnhost.build"])
                .arg(source.join("app.py"))
                .arg("-o")
                .arg(out)
                .env("PYTHONPATH", &sdk)
                .status()
        }
        .expect("running componentize-py (pip install componentize-py==0.25.1)")
    })
}

/// Builds the JavaScript example `examples/js/<name>` with componentize-js
/// (through `examples/js/build.py`), like [`python_component`].
pub fn js_component(name: &str) -> PathBuf {
    let examples = repo_root().join("examples").join("js");
    let wit = repo_root()
        .join("guest-sdk")
        .join("python")
        .join("fnhost")
        .join("wit")
        .join("p2");
    let (app, builder) = (examples.join(name), examples.join("build.py"));
    toolchain_component(&format!("js-{name}"), &[&app, &builder, &wit], |out| {
        Command::new("python3")
            .arg(&builder)
            .arg(name)
            .arg("-o")
            .arg(out)
            .status()
            .expect("running python3 examples/js/build.py")
    })
}

/// A component built by another language's toolchain: `build` writes it to
/// the path it is given, unless a build of the same `inputs` is there.
fn toolchain_component(
    name: &str,
    inputs: &[&Path],
    build: impl FnOnce(&Path) -> std::process::ExitStatus,
) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let out_dir = toolchain_components_dir();
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{name}.wasm"));
    let stamp = out_dir.join(format!("{name}.inputs"));
    let digest = inputs_digest(inputs);
    let fresh = out.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == digest);
    if !fresh {
        let _ = std::fs::remove_file(&stamp);
        assert!(build(&out).success(), "building the example {name} failed");
        std::fs::write(&stamp, &digest).unwrap();
    }
    built.push((name.to_string(), out.clone()));
    out
}

/// Where components built by componentize-py and componentize-js are kept
/// between runs: `FNHOST_GUEST_BUILD_DIR` when set (CI keeps it outside the
/// clone), else the test temp folder.
fn toolchain_components_dir() -> PathBuf {
    std::env::var_os("FNHOST_GUEST_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-components"))
}

/// A digest of every file under `roots` (names and contents), so a
/// component is rebuilt when its app, the SDK or its WIT changes.
fn inputs_digest(roots: &[&Path]) -> String {
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = roots.iter().map(|r| r.to_path_buf()).collect();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                let entry = entry.unwrap().path();
                if entry.file_name().is_some_and(|n| n != "__pycache__") {
                    pending.push(entry);
                }
            }
        } else {
            files.push(path);
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    let root = repo_root();
    for file in files {
        // Relative names, so a clone elsewhere reuses the build.
        let name = file.strip_prefix(&root).unwrap_or(&file);
        hasher.update(name.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&file).unwrap());
    }
    format!("{:x}", hasher.finalize())
}

/// Where the example guests are built: `FNHOST_EXAMPLES_TARGET_DIR` when
/// set (CI keeps it outside the clone, so a later run reuses it), else
/// `examples/target`. It cannot be the host's target folder: `cargo test`
/// holds that folder's lock while the tests run.
fn examples_target_dir() -> PathBuf {
    std::env::var_os("FNHOST_EXAMPLES_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("examples").join("target"))
}

/// A compile cache shared by the tests that do not test the cache itself:
/// `$XDG_CACHE_HOME/fnhost` for the `XDG_CACHE_HOME` that [`run_fnhost`]
/// sets, so `fnhost check` and `fnhost serve` share compiled code (a
/// Python component takes a while to compile in a debug host).
pub fn shared_cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fnhost")
}

/// A running `fnhost serve`.
pub struct Server {
    child: Child,
    /// The address it serves on.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Serves `wasm` with extra `args`, using the shared compile cache.
    pub fn start(wasm: &Path, args: &[&str]) -> Server {
        let cache = shared_cache_dir();
        let mut full: Vec<String> = vec!["--cache-dir".into(), cache.display().to_string()];
        full.extend(args.iter().map(|a| a.to_string()));
        Self::start_with(wasm, &full)
    }

    /// Serves `wasm` with exactly `args` (plus `--listen 127.0.0.1:0`).
    pub fn start_with(wasm: &Path, args: &[String]) -> Server {
        let (mut child, log, addr_rx) = spawn_serve(wasm, args);
        let addr = match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "fnhost did not report a listening address; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Server { child, addr, log }
    }

    /// Runs `fnhost serve` with `args` (and the shared compile cache) and no
    /// path, in folder `dir`: it reads `dir/fnhost.toml`.
    pub fn start_in(dir: &Path, args: &[&str]) -> Server {
        let mut full: Vec<String> = vec![
            "--cache-dir".into(),
            shared_cache_dir().display().to_string(),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        let (mut child, log, addr_rx) = spawn_serve_in(dir, &full);
        let addr = addr_rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("fnhost did not start: {:?}", log.lock().unwrap());
        });
        Server { child, addr, log }
    }

    /// Serves `wasm` with `args` (and the shared compile cache) while
    /// nobody reads the host's stdout: a log reader that has stalled.
    pub fn start_with_stdout_unread(wasm: &Path, args: &[&str]) -> Server {
        let mut full: Vec<String> = vec![
            "--cache-dir".into(),
            shared_cache_dir().display().to_string(),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        let (mut child, log, addr_rx) = spawn_serve_reading(wasm, &full, false);
        let addr = addr_rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("fnhost did not start: {:?}", log.lock().unwrap());
        });
        Server { child, addr, log }
    }

    /// Serves `wasm` with exactly `args`, or reports why it did not start
    /// within `within`: its exit code (`None`: it was still running, and
    /// was killed) and its log.
    pub fn try_start(
        wasm: &Path,
        args: &[String],
        within: Duration,
    ) -> Result<Server, (Option<i32>, Vec<String>)> {
        let (mut child, log, addr_rx) = spawn_serve(wasm, args);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(addr) = addr_rx.recv_timeout(Duration::from_millis(20)) {
                return Ok(Server { child, addr, log });
            }
            if let Some(status) = child.try_wait().expect("waiting for fnhost") {
                // Let the readers take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Err((status.code(), log.lock().unwrap().clone()));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err((None, log.lock().unwrap().clone()));
            }
        }
    }

    /// Starts `fnhost serve` for a test that expects it to exit without
    /// ever serving (its address is unspecified).
    pub fn start_expecting_exit(wasm: &Path, args: &[&str]) -> Server {
        let mut full: Vec<String> = vec![
            "--cache-dir".into(),
            shared_cache_dir().display().to_string(),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        let (child, log, _addr_rx) = spawn_serve(wasm, &full);
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Server { child, addr, log }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://ADMIN` + `path`, for a host started with `--admin`.
    pub fn admin_url(&self, path: &str) -> String {
        let line = self.wait_for_log("admin endpoint at http://", Duration::from_secs(5));
        let addr = line
            .split("admin endpoint at http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the admin line names an address");
        format!("http://{addr}{path}")
    }

    /// The body of `GET` `path` on the admin endpoint, for a host started
    /// with `--admin`.
    pub fn admin_text(&self, path: &str) -> String {
        client()
            .get(self.admin_url(path))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// The host process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the host printed so far (stderr and stdout, by line).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The log lines so far that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|line| line.contains(needle))
            .collect()
    }

    /// Waits until some log line contains `needle`, or panics after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line contains {needle:?}; log:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `libc`'s SIGTERM number) to the host process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Waits for the host to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for fnhost") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fnhost did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Log = Arc<Mutex<Vec<String>>>;

/// Spawns `fnhost serve --listen 127.0.0.1:0 ARGS WASM`, collecting its output.
fn spawn_serve(wasm: &Path, args: &[String]) -> (Child, Log, mpsc::Receiver<SocketAddr>) {
    spawn_serve_reading(wasm, args, true)
}

/// Starts `fnhost serve` with `args` and no path, in folder `dir`.
fn spawn_serve_in(dir: &Path, args: &[String]) -> (Child, Log, mpsc::Receiver<SocketAddr>) {
    let mut command = serve_command(args);
    command.current_dir(dir);
    spawn_collecting(command, true)
}

/// `fnhost serve` on an ephemeral port with `args`, its output piped.
fn serve_command(args: &[String]) -> Command {
    let mut command = Command::new(fnhost_bin());
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "fnhost=info")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts `fnhost serve`; its stdout is collected into the log only when
/// `read_stdout` (unread, it stays a pipe that nobody drains).
fn spawn_serve_reading(
    wasm: &Path,
    args: &[String],
    read_stdout: bool,
) -> (Child, Log, mpsc::Receiver<SocketAddr>) {
    let mut command = serve_command(args);
    command.arg(wasm);
    spawn_collecting(command, read_stdout)
}

/// Spawns `command`, collecting its stderr (and stdout when `read_stdout`)
/// into the log and reporting the address it serves on.
fn spawn_collecting(
    mut command: Command,
    read_stdout: bool,
) -> (Child, Log, mpsc::Receiver<SocketAddr>) {
    let mut child = command.spawn().expect("spawning fnhost");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = mpsc::channel();
    collect_lines(child.stderr.take().unwrap(), log.clone(), Some(addr_tx));
    if read_stdout {
        collect_lines(child.stdout.take().unwrap(), log.clone(), None);
    }
    (child, log, addr_rx)
}

fn collect_lines(
    stream: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    addr_tx: Option<mpsc::Sender<SocketAddr>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let reported = line
                .split("on http://")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|addr| addr.parse::<SocketAddr>().ok());
            if let (Some(tx), Some(addr)) = (&addr_tx, reported) {
                let _ = tx.send(addr);
            }
            log.lock().unwrap().push(line);
        }
    });
}

/// Runs `fnhost ARGS` to completion; returns (exit code, stdout, stderr).
pub fn run_fnhost(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(fnhost_bin())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("running fnhost");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A blocking HTTP client with a timeout, no proxies, no redirects.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building the HTTP client")
}

/// Asserts `response` has a well-formed `fnhost-invocation-id` and returns it.
pub fn invocation_id(response: &reqwest::blocking::Response) -> String {
    let id = response
        .headers()
        .get("fnhost-invocation-id")
        .expect("every response carries fnhost-invocation-id")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 16, "invocation id {id:?}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    id
}

/// Writes `bytes` to a fresh file under the test temp folder.
pub fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-files");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A fresh, empty folder under the test temp folder.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `q`-quantile of `sorted` latencies (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    assert!(!sorted.is_empty(), "no latencies");
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Sends light requests one after another until `done` returns true or
/// `limit` has passed; returns their latencies, sorted.
pub fn light_requests(url: &str, limit: Duration, done: impl Fn() -> bool) -> Vec<Duration> {
    let http = client();
    let mut latencies = Vec::new();
    let window = Instant::now();
    while window.elapsed() < limit && !done() {
        let sent = Instant::now();
        let response = http.get(url).send().unwrap();
        assert_eq!(response.status(), 200);
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    latencies
}

/// Reads a request head from a test upstream's connection (5 s at most);
/// false if the connection ended first.
pub fn read_request_head(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream that answers every request after `delay`, one thread per connection.
pub fn slow_upstream(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            std::thread::spawn(move || {
                if !read_request_head(&mut stream) {
                    return;
                }
                std::thread::sleep(delay);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}

/// Waits until `ready` returns true, or panics after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// `fnhost top --once` against `admin`, once `rows` of its functions show
/// `calls` calls each (the workers report once a second).
pub fn top_table_when(admin: &str, calls: u64, rows: usize) -> String {
    let mut table = String::new();
    let calls = calls.to_string();
    wait_until(Duration::from_secs(10), "all calls profiled", || {
        let (code, out, _) = run_fnhost(&["top", "--admin", admin, "--once"]);
        table = out;
        code == 0
            && table
                .lines()
                .filter(|l| l.split_whitespace().nth(2) == Some(calls.as_str()))
                .count()
                == rows
    });
    table
}

/// The class `fnhost top`'s `table` gives the function `name`.
pub fn top_class(table: &str, name: &str) -> String {
    table
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no row for {name} in\n{table}"))
        .to_string()
}
