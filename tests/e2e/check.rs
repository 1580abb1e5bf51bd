//! `fnhost check`.

use crate::support::{example, run_fnhost, temp_file};

#[test]
fn check_lists_imports_exports_and_the_trigger() {
    let wasm = example("hello");
    let (code, stdout, stderr) = run_fnhost(&["check", wasm.to_str().unwrap()]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        stdout.contains("trigger:   http (WASIp2, wasi:http/incoming-handler@0.2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wasi:http/types@0.2"),
        "imports listed: {stdout}"
    );
    assert!(
        stdout.contains("exports:\n  wasi:http/incoming-handler@0.2"),
        "{stdout}"
    );
}

#[test]
fn check_refuses_a_core_module_with_exit_2() {
    let path = temp_file("check-core.wasm", b"\0asm\x01\0\0\0");
    let (code, _stdout, stderr) = run_fnhost(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("core WebAssembly module"), "{stderr}");
}
