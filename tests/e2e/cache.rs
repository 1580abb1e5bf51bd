//! The compile cache: the second start loads compiled code instead of compiling.

use crate::support::{Server, example, temp_dir};
use std::time::Duration;

fn start_and_read_load_line(args: &[String]) -> String {
    let server = Server::start_with(&example("hello"), args);
    server.wait_for_log("loaded ", Duration::from_secs(5))
}

#[test]
fn a_second_start_hits_the_cache_and_no_cache_bypasses_it() {
    let cache = temp_dir("e2e-cache-test");
    let with_cache = vec!["--cache-dir".to_string(), cache.display().to_string()];

    let first = start_and_read_load_line(&with_cache);
    assert!(first.contains("compiled"), "{first}");
    let entries = || std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries(), 1, "one artifact written");

    let second = start_and_read_load_line(&with_cache);
    assert!(second.contains("compile cache hit"), "{second}");

    let mut bypass = with_cache.clone();
    bypass.push("--no-cache".to_string());
    let third = start_and_read_load_line(&bypass);
    assert!(
        third.contains("compiled") && !third.contains("cache hit"),
        "{third}"
    );
    assert_eq!(entries(), 1);
}
