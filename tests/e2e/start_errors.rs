//! Start errors: one line naming the file and the reason, exit code 2.

use crate::support::{run_fnhost, temp_file};

fn assert_start_error(path: &str, reason: &str) {
    let (code, _stdout, stderr) = run_fnhost(&["serve", "--listen", "127.0.0.1:0", path]);
    assert_eq!(code, 2, "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {stderr:?}");
    assert!(lines[0].contains(path), "names the file: {stderr:?}");
    assert!(lines[0].contains(reason), "says {reason:?}: {stderr:?}");
}

#[test]
fn a_missing_file_is_named() {
    let path = format!("{}/no-such-dir/app.wasm", env!("CARGO_TARGET_TMPDIR"));
    assert_start_error(&path, "no such file");
}

#[test]
fn random_bytes_are_not_webassembly() {
    let path = temp_file(
        "random.wasm",
        b"\x7fELF this is certainly not wasm \x00\x01\x02",
    );
    assert_start_error(path.to_str().unwrap(), "not a WebAssembly file");
}

#[test]
fn a_core_module_is_not_a_component() {
    // The smallest valid core module: magic and version 1.
    let path = temp_file("core.wasm", b"\0asm\x01\0\0\0");
    assert_start_error(
        path.to_str().unwrap(),
        "core WebAssembly module, not a component",
    );
}

#[test]
fn a_component_without_the_http_handler_is_refused() {
    // The smallest valid component (magic, version 0xd, layer 1): exports nothing.
    let path = temp_file("empty-component.wasm", b"\0asm\x0d\0\x01\0");
    assert_start_error(
        path.to_str().unwrap(),
        "does not export `wasi:http/incoming-handler@0.2.x`",
    );
}

#[test]
fn a_bad_flag_value_exits_2() {
    let (code, _stdout, stderr) = run_fnhost(&["serve", "--timeout", "soon", "app.wasm"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");
}
