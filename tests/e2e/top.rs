//! `fnhost top` against a running host: an I/O-bound, a CPU-bound and a
//! mixed function of one app, each classified from what its calls cost.

use crate::support::{Server, client, example, run_fnhost, temp_dir, top_class, top_table_when};

#[test]
fn top_classifies_io_bound_cpu_bound_and_mixed_functions() {
    let dir = temp_dir("top");
    let manifest = dir.join("fnhost.toml");
    let component = |name: &str| format!("{:?}", example(name).display().to_string());
    std::fs::write(
        &manifest,
        format!(
            "manifest_version = 1\n\n[[function]]\nname = \"waits\"\ncomponent = {}\nroute = \"/waits\"\n\n\
             [[function]]\nname = \"computes\"\ncomponent = {}\nroute = \"/computes\"\n\n\
             [[function]]\nname = \"both\"\ncomponent = {}\nroute = \"/both\"\n",
            component("sleep"),
            component("cpu"),
            component("mixed"),
        ),
    )
    .unwrap();
    let server = Server::start(&manifest, &["--admin", "127.0.0.1:0"]);
    let admin = server.admin_url("");
    let admin = admin.trim_start_matches("http://").to_string();

    // Before any call there is nothing to classify.
    let (code, before, stderr) = run_fnhost(&["top", "--admin", &admin, "--once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(before.contains("no calls yet"), "{before}");

    // 40 ms waiting; about 20 ms of work; 10 ms of work then 10 ms waiting.
    let http = client();
    for _ in 0..8 {
        for path in [
            "/waits?ms=40",
            "/computes?n=8000000",
            "/both?n=4000000&ms=10",
        ] {
            let response = http.get(server.url(path)).send().unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    }
    let table = top_table_when(&admin, 8, 3);
    let class = |name: &str| top_class(&table, name);
    assert_eq!(class("waits"), "io-bound", "{table}");
    assert_eq!(class("computes"), "cpu-bound", "{table}");
    assert_eq!(class("both"), "mixed", "{table}");
    // The seed's advice: CPU-bound, one thread in more workers; I/O-bound,
    // more threads in one worker.
    let advice = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(advice("computes").contains("--threads 1 "), "{table}");
    assert!(advice("waits").contains("--workers 1"), "{table}");
    // The same measurements on /metrics, by function.
    let metrics = server.admin_text("/metrics");
    let cpu_seconds = |function: &str| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with("fnhost_function_cpu_seconds_total")
                    && line.contains(&format!("function=\"{function}\""))
            })
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no CPU seconds for {function} in\n{metrics}"))
    };
    // Eight calls of about 20 ms of work each, against eight timers (whose
    // CPU, in a debug build, is mostly instantiating a fresh instance:
    // about 2 ms a call, so 10 ms of work each was only 4× as much).
    assert!(cpu_seconds("computes") > 0.04, "{metrics}");
    assert!(
        cpu_seconds("computes") > 4.0 * cpu_seconds("waits"),
        "{metrics}"
    );
    eprintln!("{table}");
}
