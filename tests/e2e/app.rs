//! Function apps: a manifest of several functions served by one host, each
//! with its own route, lane and settings, and manifests that are refused
//! with one line naming the file, the line and the key.

use crate::support::{Server, client, example, invocation_id, run_fnhost, temp_dir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes `text` as `fnhost.toml` in a fresh folder named `name`.
fn manifest(name: &str, text: &str) -> PathBuf {
    let dir = temp_dir(name);
    let path = dir.join("fnhost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[test]
fn a_manifest_of_three_functions_serves_each_as_its_settings_say() {
    let data_dir = temp_dir("app-data");
    let path = manifest(
        "app-three",
        &format!(
            r#"manifest_version = 1

[host]
workers = 2

[[function]]
name = "hello"
component = {hello}
route = "/hello/..."

[[function]]
name = "slow"
component = {sleep}
route = "/slow"
timeout = "1s"
max_concurrent = 2

[[function]]
name = "jobs"
component = {queue}
queue = "jobs"
"#,
            hello = quoted(&example("hello")),
            sleep = quoted(&example("sleep")),
            queue = quoted(&example("queue_worker")),
        ),
    );
    let data = data_dir.display().to_string();
    let server = Server::start(&path, &["--admin", "127.0.0.1:0", "--data-dir", &data]);
    let http = client();

    // Each route reaches its own function; a path no route takes is 404.
    for path in ["/hello", "/hello/world"] {
        let response = http.get(server.url(path)).send().unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().unwrap(), "hello from fnhost\n");
    }
    let response = http.get(server.url("/slow?ms=10")).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "slept 10 ms\n");
    for path in ["/", "/slow/x", "/hellox"] {
        let response = http.get(server.url(path)).send().unwrap();
        assert_eq!(response.status(), 404, "{path}");
        invocation_id(&response);
        assert_eq!(response.headers()["fnhost-error"], "no-route");
    }

    // `slow` has its own timeout (1 s; the host default is 30 s).
    let response = http.get(server.url("/slow?ms=3000")).send().unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["fnhost-error"], "timeout");

    // ... and its own cap of 2 at once: with two calls waiting, a third is
    // refused at once, and `hello` is not affected.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let url = server.url("/slow?ms=800");
            std::thread::spawn(move || client().get(url).send().unwrap().status().as_u16())
        })
        .collect();
    crate::support::wait_until(Duration::from_secs(5), "two slow calls running", || {
        functions(&server)["slow"]["running"] == 2
    });
    let refused = http.get(server.url("/slow?ms=10")).send().unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["fnhost-error"], "capacity");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(http.get(server.url("/hello")).send().unwrap().status(), 200);
    for call in waiting {
        assert_eq!(call.join().unwrap(), 200);
    }

    // The queue feeds `jobs`.
    let (code, _, stderr) = run_fnhost(&[
        "queue",
        "send",
        "--data-dir",
        &data,
        "jobs",
        "sleep:0:job-1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    server.wait_for_log("sleep:0:job-1", Duration::from_secs(20));
    // ... and its calls are profiled like HTTP calls (workers report once a second).
    crate::support::wait_until(Duration::from_secs(10), "the queue call profiled", || {
        functions(&server)["jobs"]["profile"]["calls"] == 1
    });

    // GET /functions lists them with their lanes, settings and counts.
    let listed = functions(&server);
    assert_eq!(listed["hello"]["lane"], "sync");
    assert_eq!(listed["slow"]["lane"], "async");
    assert_eq!(listed["slow"]["route"], "/slow");
    assert_eq!(listed["slow"]["settings"]["timeout_ms"], 1000);
    assert_eq!(listed["hello"]["settings"]["timeout_ms"], 30_000);
    assert_eq!(listed["jobs"]["queue"], "jobs");
    assert!(listed["hello"]["completed"].as_u64().unwrap() >= 3);
    assert_eq!(listed["hello"]["failures"], 0);
    assert!(listed["slow"]["failures"].as_u64().unwrap() >= 1);
    assert_eq!(listed["hello"]["version"].as_str().unwrap().len(), 12);

    // Metrics carry the function's name.
    let metrics = server.admin_text("/metrics");
    for needle in [
        r#"function="hello",lane="sync",outcome="ok""#,
        r#"function="slow",lane="async",outcome="timeout""#,
        r#"function="jobs""#,
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
    // Two workers, each loaded every function.
    let workers = workers(&server);
    assert_eq!(workers.len(), 2);
}

/// `GET /workers`: one row per worker slot.
fn workers(server: &Server) -> Vec<Value> {
    admin_json(server, "/workers")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The JSON an admin endpoint `path` answers.
fn admin_json(server: &Server, path: &str) -> Value {
    client()
        .get(server.admin_url(path))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// `GET /functions` as a map from name to row.
fn functions(server: &Server) -> serde_json::Map<String, Value> {
    let rows = admin_json(server, "/functions")
        .as_array()
        .cloned()
        .unwrap_or_default();
    rows.into_iter()
        .map(|row| (row["name"].as_str().unwrap().to_string(), row))
        .collect()
}

#[test]
fn a_bad_manifest_is_refused_naming_the_file_line_and_key() {
    let hello = quoted(&example("hello"));
    let cases = [
        ("unknown-key", format!("manifest_version = 1\n\n[[function]]\nname = \"a\"\ncomponent = {hello}\nroute = \"/a\"\ntimout = \"2s\"\n"), 7, "timout"),
        ("missing-component", "manifest_version = 1\n\n[[function]]\nname = \"a\"\ncomponent = \"nope.wasm\"\nroute = \"/a\"\n".to_string(), 5, "component"),
        ("overlap", format!("manifest_version = 1\n\n[[function]]\nname = \"a\"\ncomponent = {hello}\nroute = \"/api/...\"\n\n[[function]]\nname = \"b\"\ncomponent = {hello}\nroute = \"/api/orders\"\n"), 11, "route"),
        ("bad-size", format!("manifest_version = 1\n\n[[function]]\nname = \"a\"\ncomponent = {hello}\nroute = \"/a\"\nmax_memory = \"12QB\"\n"), 7, "max_memory"),
        ("bad-duration", format!("manifest_version = 1\n\n[host]\ntimeout = \"5x\"\n\n[[function]]\nname = \"a\"\ncomponent = {hello}\nroute = \"/a\"\n"), 4, "timeout"),
    ];
    for (name, text, line, key) in cases {
        let path = manifest(&format!("app-bad-{name}"), &text);
        let file = path.display().to_string();
        for command in ["check", "serve"] {
            let (code, _, stderr) = run_fnhost(&[command, &file]);
            assert_eq!(code, 2, "{name}: {command}: {stderr}");
            let last = stderr.trim_end().lines().last().unwrap_or_default();
            assert!(
                last.contains(&format!("fnhost.toml:{line}")) && last.contains(key),
                "{name}: {command}: expected line {line} and key {key} in: {stderr}"
            );
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "{name}: {command}: {stderr}"
            );
        }
    }
}

#[test]
fn serve_without_an_argument_reads_fnhost_toml_here() {
    let path = manifest(
        "app-default",
        &format!(
            "manifest_version = 1\n\n[[function]]\nname = \"hello\"\ncomponent = {}\nroute = \"/...\"\n",
            quoted(&example("hello"))
        ),
    );
    let dir = path.parent().unwrap();
    let server = Server::start_in(dir, &["--in-process"]);
    let response = client().get(server.url("/anything")).send().unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn one_functions_failures_stay_its_own_and_a_lost_worker_names_them() {
    let path = manifest(
        "app-isolation",
        &format!(
            "manifest_version = 1\n\n[[function]]\nname = \"hello\"\ncomponent = {}\nroute = \"/hello\"\n\n[[function]]\nname = \"trap\"\ncomponent = {}\nroute = \"/trap/...\"\n\n[[function]]\nname = \"slow\"\ncomponent = {}\nroute = \"/slow\"\n",
            quoted(&example("hello")),
            quoted(&example("trap")),
            quoted(&example("sleep")),
        ),
    );
    let server = Server::start(&path, &["--admin", "127.0.0.1:0"]);
    let http = client();
    // Traps in one function, while the others keep answering.
    for _ in 0..5 {
        let trapped = http.get(server.url("/trap/boom")).send().unwrap();
        assert_eq!(trapped.status(), 500);
        assert_eq!(trapped.headers()["fnhost-error"], "trap");
        assert_eq!(http.get(server.url("/hello")).send().unwrap().status(), 200);
    }
    server.wait_for_log(
        "invocation failed: trap: function trap: ",
        Duration::from_secs(5),
    );
    let listed = functions(&server);
    assert_eq!(listed["trap"]["failures"], 5);
    assert_eq!(listed["hello"]["failures"], 0);

    // A worker killed with a call of `slow` in flight fails that call with
    // 502, and the log names the function.
    let call = {
        let url = server.url("/slow?ms=10000");
        std::thread::spawn(move || client().get(url).send().unwrap())
    };
    crate::support::wait_until(Duration::from_secs(5), "the slow call in flight", || {
        let workers = workers(&server);
        workers[0]["in_flight"] == 1
    });
    let workers = workers(&server);
    let pid = workers[0]["pid"].as_u64().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    let lost = call.join().unwrap();
    assert_eq!(lost.status(), 502);
    server.wait_for_log("lost calls of function slow ×1", Duration::from_secs(5));
    // The replacement serves every function again.
    crate::support::wait_until(Duration::from_secs(30), "hello served again", || {
        client()
            .get(server.url("/hello"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
}

#[test]
fn a_grant_over_the_manifest_is_refused() {
    // A guest that could rewrite the manifest could grant itself more.
    let path = manifest("app-grant", "");
    let dir = path.parent().unwrap();
    std::fs::write(
        &path,
        format!(
            "manifest_version = 1\n\n[[function]]\nname = \"hello\"\ncomponent = {}\nroute = \"/...\"\ndir = [\"{}::/app\"]\n",
            quoted(&example("hello")),
            dir.display()
        ),
    )
    .unwrap();
    for command in ["serve", "check"] {
        let (code, _, stderr) = run_fnhost(&[command, &path.display().to_string()]);
        assert_eq!(code, 2, "{command}: {stderr}");
        assert!(stderr.contains("manifest"), "{command}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{command}: {stderr}");
    }
}
