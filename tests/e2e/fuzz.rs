//! A fuzz sweep: generated inputs, valid components and broken ones,
//! through `fnhost check`, and through `fnhost serve` with a request when
//! `check` accepts them. Every run must end with exit 0 or a one-line
//! error and exit 2, within a bound: no crash, no panic, no hang.
//!
//! `FNHOST_FUZZ_CASES` sets the number of inputs (200 by default, the CI
//! smoke; docs/security.md has the long run) and `FNHOST_FUZZ_SEED` the
//! first seed, so a failure is replayed with its seed and one case.

use crate::support::{Server, client, example, fnhost_bin, temp_dir};
use arbitrary::Unstructured;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEFAULT_CASES: u64 = 200;
/// Longer than any legitimate check of these small inputs (a compile of
/// `hello` in the debug build takes well under a second).
const HANG: Duration = Duration::from_secs(60);

/// A small deterministic generator (SplitMix64), so a case is its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Up to `max` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
}

/// The kinds of input, one chosen per seed.
fn generate(seed: u64, hello: &[u8]) -> (&'static str, Vec<u8>) {
    let mut rng = Rng(seed);
    match rng.below(5) {
        0 => ("a wasm-smith core module", smith_module(&mut rng)),
        1 => ("a component holding a wasm-smith module", {
            let module = smith_module(&mut rng);
            let mut component = wasm_encoder::Component::new();
            component.section(&wasm_encoder::RawSection {
                id: wasm_encoder::ComponentSectionId::CoreModule as u8,
                data: &module,
            });
            component.finish()
        }),
        2 => (
            "hello with custom sections",
            with_custom_sections(&mut rng, hello),
        ),
        _ => ("hello, mutated", mutated(&mut rng, hello)),
    }
}

fn smith_module(rng: &mut Rng) -> Vec<u8> {
    let entropy = rng.some_bytes(8192 + 1024);
    let mut input = Unstructured::new(&entropy);
    wasm_smith::Module::new(wasm_smith::Config::default(), &mut input)
        .map(|module| module.to_bytes())
        .unwrap_or_else(|_| b"\0asm\x01\0\0\0".to_vec())
}

/// `hello` with custom sections appended, some named as fnhost's lane
/// marker, with random payloads.
fn with_custom_sections(rng: &mut Rng, hello: &[u8]) -> Vec<u8> {
    let mut bytes = hello.to_vec();
    for _ in 0..1 + rng.below(4) {
        let name = match rng.below(3) {
            0 => "fnhost:lane".to_string(),
            1 => "component-type:fuzz".to_string(),
            _ => String::from_utf8_lossy(&rng.some_bytes(12)).into_owned(),
        };
        let data = match rng.below(3) {
            0 => b"sync".to_vec(),
            1 => b"async".to_vec(),
            _ => rng.some_bytes(300),
        };
        let section = wasm_encoder::CustomSection {
            name: name.as_str().into(),
            data: data.as_slice().into(),
        };
        use wasm_encoder::Encode;
        bytes.push(0);
        let mut body = Vec::new();
        section.encode(&mut body);
        // `encode` writes the section's size and contents after its id.
        bytes.extend_from_slice(&body);
    }
    bytes
}

/// `hello` with a few random edits: flipped bits, overwritten bytes,
/// inserted junk, a duplicated range or a truncation.
fn mutated(rng: &mut Rng, hello: &[u8]) -> Vec<u8> {
    let mut bytes = hello.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(bytes.len());
        match rng.below(5) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.next() as u8,
            2 => {
                let junk = rng.some_bytes(16);
                bytes.splice(at..at, junk);
            }
            3 => {
                let end = (at + 1 + rng.below(64)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len());
                bytes.splice(to..to, copy);
            }
            _ => bytes.truncate(at.max(8)),
        }
    }
    bytes
}

/// What went wrong with one input, if anything.
fn run_case(file: &Path, cache: &Path) -> Result<&'static str, String> {
    let started = Instant::now();
    let mut child = Command::new(fnhost_bin())
        .arg("check")
        .arg(file)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning fnhost check");
    // Read while it runs, so a chatty child cannot fill the pipe and look hung.
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            return Err(format!("check hung for {HANG:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = reader.join().unwrap();
    match status.code() {
        Some(0) => {}
        Some(2) if stderr.lines().count() == 1 => return Ok("refused by check"),
        Some(2) => return Err(format!("a refusal of more than one line: {stderr:?}")),
        other => return Err(format!("check ended with {other:?}: {stderr:?}")),
    }
    // `check` accepts it: `serve` must serve it, or refuse it in one line.
    let args = vec![
        "--cache-dir".to_string(),
        cache.join("fnhost").display().to_string(),
    ];
    match Server::try_start(file, &args, HANG) {
        Ok(server) => {
            let response = client()
                .get(server.url("/"))
                .send()
                .map_err(|e| format!("serve accepted it but the request failed: {e}"))?;
            let status = response.status().as_u16();
            if !(200..600).contains(&status) {
                return Err(format!("an odd status {status}"));
            }
            Ok("served")
        }
        Err((Some(2), log))
            if log
                .iter()
                .filter(|l| l.starts_with("fnhost: error:"))
                .count()
                == 1 =>
        {
            Ok("refused by serve")
        }
        Err((code, log)) => Err(format!("serve ended with {code:?}: {log:?}")),
    }
}

#[test]
fn generated_components_never_crash_or_hang_the_host() {
    let cases: u64 = std::env::var("FNHOST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let first: u64 = std::env::var("FNHOST_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let hello = std::fs::read(example("hello")).unwrap();
    let dir = temp_dir("fuzz");
    let next = Arc::new(AtomicU64::new(first));
    let outcomes = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|worker| {
            let (hello, dir, next) = (hello.clone(), dir.clone(), next.clone());
            let (outcomes, failures) = (outcomes.clone(), failures.clone());
            std::thread::spawn(move || {
                let cache = dir.join(format!("cache-{worker}"));
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + cases {
                        return;
                    }
                    let (kind, bytes) = generate(seed, &hello);
                    let file = dir.join(format!("case-{worker}.wasm"));
                    std::fs::write(&file, &bytes).unwrap();
                    match run_case(&file, &cache) {
                        Ok(outcome) => {
                            *outcomes
                                .lock()
                                .unwrap()
                                .entry(format!("{kind}: {outcome}"))
                                .or_default() += 1;
                        }
                        Err(failure) => {
                            let kept = dir.join(format!("failed-{seed}.wasm"));
                            let _ = std::fs::copy(&file, &kept);
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("seed {seed} ({kind}): {failure}"));
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    eprintln!(
        "fuzz: {cases} cases from seed {first} in {:.0?}: {:#?}",
        started.elapsed(),
        outcomes.lock().unwrap()
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
}
