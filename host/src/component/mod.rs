//! Loading a component file: checks, compilation (through the compile cache)
//! and the inventory of what it imports and exports.

mod resources;

pub use resources::ComponentNeeds;

use crate::cache::CompileCache;
use crate::config::Lane;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The export fnhost serves HTTP requests through (any 0.2.x version).
pub const HTTP_HANDLER_P2: &str = "wasi:http/incoming-handler@0.2";
/// The WASIp3 HTTP export (component-model async), any 0.3.x version.
pub const HTTP_HANDLER_P3: &str = "wasi:http/handler@0.3";
/// Prefix of fnhost's queue handler export (wit/queue.wit).
pub const QUEUE_HANDLER: &str = "fnhost:function/queue-handler@0.2";
/// Name of the custom section holding the lane marker (`sync` or `async`),
/// which `fnhost-sdk` embeds; see wit/README.md.
pub const LANE_SECTION: &str = "fnhost:lane";

/// Why a component file cannot be served. Each message is one line that
/// names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file does not exist.
    #[error("{path}: no such file")]
    NotFound {
        /// The file named by the user.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("{path}: cannot read: {reason}")]
    Unreadable {
        /// The file named by the user.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The bytes are not WebAssembly.
    #[error("{path}: not a WebAssembly file (no `\\0asm` header)")]
    NotWasm {
        /// The file named by the user.
        path: PathBuf,
    },
    /// A core module, where a component is needed.
    #[error(
        "{path}: is a core WebAssembly module, not a component; build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule {
        /// The file named by the user.
        path: PathBuf,
    },
    /// Wasmtime rejected the component.
    #[error("{path}: invalid component: {reason}")]
    Invalid {
        /// The file named by the user.
        path: PathBuf,
        /// Wasmtime's reason, on one line.
        reason: String,
    },
    /// The component exports no handler fnhost can serve.
    #[error(
        "{path}: does not export `wasi:http/incoming-handler@0.2.x`, `wasi:http/handler@0.3.x` or `fnhost:function/queue-handler@0.2.x` (it exports: {exports})"
    )]
    NoHandler {
        /// The file named by the user.
        path: PathBuf,
        /// What it exports instead, comma-separated.
        exports: String,
    },
    /// The lane marker holds something other than `sync` or `async`.
    #[error("{path}: the `fnhost:lane` section says {found:?}; expected \"sync\" or \"async\"")]
    BadLaneMarker {
        /// The file named by the user.
        path: PathBuf,
        /// What the section holds.
        found: String,
    },
    /// An instance would need more than the host allows (memory, core
    /// instances, tables).
    #[error("{path}: {reason}")]
    OverLimit {
        /// The file named by the user.
        path: PathBuf,
        /// What it needs, the limit, and how to raise it if one can.
        reason: String,
    },
    /// The component needs an import the host does not provide.
    #[error("{path}: cannot be linked: {reason}")]
    Link {
        /// The file named by the user.
        path: PathBuf,
        /// Wasmtime's reason, on one line.
        reason: String,
    },
}

/// The trigger interface a component serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerKind {
    /// `wasi:http/incoming-handler@0.2.x`, WASIp2.
    HttpP2 {
        /// The full export name, with its version.
        export: String,
    },
    /// `wasi:http/handler@0.3.x`, WASIp3 (component-model async).
    HttpP3 {
        /// The full export name, with its version.
        export: String,
    },
}

impl HandlerKind {
    /// A short description for `fnhost check` and logs.
    pub fn describe(&self) -> String {
        match self {
            Self::HttpP2 { export } => format!("http (WASIp2, {export})"),
            Self::HttpP3 { export } => format!("http (WASIp3, {export})"),
        }
    }
}

/// The triggers a component serves, for `fnhost check` and logs:
/// `http (WASIp2, …)`, `queue (fnhost:function/queue-handler@0.2.0)`, or
/// both joined with ` + `.
pub fn describe_triggers(http: Option<&HandlerKind>, queue: Option<&str>) -> String {
    let mut triggers = Vec::new();
    if let Some(http) = http {
        triggers.push(http.describe());
    }
    if let Some(queue) = queue {
        triggers.push(format!("queue ({queue})"));
    }
    triggers.join(" + ")
}

/// A compiled component and what it was found to contain.
pub struct LoadedComponent {
    /// The file it came from.
    pub path: PathBuf,
    /// The compiled component.
    pub component: Component,
    /// Its imports, by name.
    pub imports: Vec<String>,
    /// Its exports, by name.
    pub exports: Vec<String>,
    /// The HTTP handler, if it exports one.
    pub handler: Option<HandlerKind>,
    /// The full name of its queue handler export, if it has one.
    pub queue_handler: Option<String>,
    /// The lane the component asks for, if it carries a marker.
    pub lane_marker: Option<Lane>,
    /// What one instance takes from the instance allocator.
    pub needs: ComponentNeeds,
    /// Whether the compiled code came from the compile cache.
    pub from_cache: bool,
    /// Time spent reading, compiling or loading.
    pub load_time: Duration,
}

/// A component file that passed the cheap checks, not yet compiled.
pub struct ComponentFile {
    /// The file it came from.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The lane its marker asks for, if it has one.
    pub lane_marker: Option<Lane>,
    /// Whether it exports the WASIp3 HTTP handler (and so needs an engine
    /// with component-model concurrency).
    pub wasip3: bool,
    /// What one instance takes from the instance allocator.
    pub needs: ComponentNeeds,
}

impl ComponentFile {
    /// The lane it runs in under `mode`: WASIp3 components always run in
    /// the async lane; others as `mode` and their marker say.
    pub fn lane(&self, mode: crate::config::Mode) -> Lane {
        if self.wasip3 {
            Lane::Async
        } else {
            mode.resolve(self.lane_marker)
        }
    }
}

/// Reads `path`, at most `max_size` bytes of it, and checks that it is a
/// component; finds its lane marker.
pub fn read(path: &Path, max_size: u64) -> Result<ComponentFile, LoadError> {
    let owned = || path.to_path_buf();
    let bytes = read_at_most(path, max_size).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound { path: owned() },
        std::io::ErrorKind::FileTooLarge => LoadError::OverLimit {
            path: owned(),
            reason: format!(
                "the file is over the {} component size cap (--max-component-size raises it)",
                crate::config::parse::format_size(max_size)
            ),
        },
        _ => LoadError::Unreadable {
            path: owned(),
            reason: e.to_string(),
        },
    })?;
    match wasm_kind(&bytes) {
        WasmKind::Component => {}
        WasmKind::CoreModule => return Err(LoadError::CoreModule { path: owned() }),
        WasmKind::NotWasm => return Err(LoadError::NotWasm { path: owned() }),
    }
    let scan = scan(&bytes);
    let lane_marker = match scan.lane_marker {
        Ok(marker) => marker,
        Err(found) => {
            return Err(LoadError::BadLaneMarker {
                path: owned(),
                found,
            });
        }
    };
    Ok(ComponentFile {
        path: owned(),
        bytes,
        lane_marker,
        wasip3: scan.wasip3,
        needs: scan.needs,
    })
}

/// The whole file, unless it holds more than `max_size` bytes
/// (`ErrorKind::FileTooLarge`): the size is checked before reading and
/// again while reading, since the file can grow in between.
fn read_at_most(path: &Path, max_size: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let too_large = || std::io::Error::from(std::io::ErrorKind::FileTooLarge);
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > max_size {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max_size.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_size {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read`], then checks that an instance fits the host's caps with
/// `max_memory` bytes per memory: every check that needs no compiling, the
/// same for `fnhost check`, `fnhost serve` and each worker.
pub fn read_checked(
    path: &Path,
    max_size: u64,
    max_memory: u64,
) -> Result<ComponentFile, LoadError> {
    let file = read(path, max_size)?;
    crate::engine::check_needs(&file.needs, max_memory).map_err(|reason| LoadError::OverLimit {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(file)
}

/// Compiles `file` (or loads it from the cache) and takes its inventory.
pub fn compile(
    engine: &Engine,
    file: ComponentFile,
    cache: Option<&CompileCache>,
) -> Result<LoadedComponent, LoadError> {
    let started = Instant::now();
    let ComponentFile {
        path,
        bytes,
        lane_marker,
        needs,
        ..
    } = file;
    let key = CompileCache::key(engine, &bytes);
    let keyed = started.elapsed();
    let cached = cache.and_then(|cache| cache.load(engine, &key));
    tracing::debug!(
        "{}: cache key in {} ms, cache {} after {} ms",
        path.display(),
        keyed.as_millis(),
        if cached.is_some() { "hit" } else { "miss" },
        started.elapsed().as_millis()
    );
    let from_cache = cached.is_some();
    let component = match cached {
        Some(component) => component,
        None => {
            let component = Component::new(engine, &bytes).map_err(|e| LoadError::Invalid {
                path: path.clone(),
                reason: one_line(&e),
            })?;
            if let Some(cache) = cache
                && let Err(error) = cache.store(&key, &component)
            {
                tracing::warn!(
                    "cannot write the compile cache in {}: {error:#}",
                    cache.path().display()
                );
            }
            component
        }
    };

    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let p2 = exports
        .iter()
        .find(|name| name.starts_with(HTTP_HANDLER_P2));
    let p3 = exports
        .iter()
        .find(|name| name.starts_with(HTTP_HANDLER_P3));
    let handler = match (p3, p2) {
        (Some(export), _) => Some(HandlerKind::HttpP3 {
            export: export.clone(),
        }),
        (None, Some(export)) => Some(HandlerKind::HttpP2 {
            export: export.clone(),
        }),
        (None, None) => None,
    };
    let queue_handler = exports
        .iter()
        .find(|name| name.starts_with(QUEUE_HANDLER))
        .cloned();
    if handler.is_none() && queue_handler.is_none() {
        return Err(LoadError::NoHandler {
            path,
            exports: if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            },
        });
    }

    Ok(LoadedComponent {
        path,
        component,
        imports,
        exports,
        handler,
        queue_handler,
        lane_marker,
        needs,
        from_cache,
        load_time: started.elapsed(),
    })
}

/// What a pass over the file's sections found.
struct Scan {
    /// The lane marker; `Err` carries the contents of a marker that is
    /// neither `sync` nor `async`.
    lane_marker: Result<Option<Lane>, String>,
    /// Whether some component export is `wasi:http/handler@0.3.x`.
    wasip3: bool,
    /// What one instance needs from the instance allocator (the defaults
    /// when the file does not parse: wasmtime then says what is wrong).
    needs: ComponentNeeds,
}

/// Looks through the component and the core modules inside it for the lane
/// marker section, through its exports for the WASIp3 handler, and adds up
/// what an instance needs. Parse errors end the scan early and are left for
/// wasmtime to report.
fn scan(bytes: &[u8]) -> Scan {
    let mut found = Scan {
        lane_marker: Ok(None),
        wasip3: false,
        needs: ComponentNeeds::default(),
    };
    let mut needs = resources::NeedsCounter::default();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let Ok(payload) = &payload {
            needs.observe(payload);
        }
        match payload {
            Ok(wasmparser::Payload::CustomSection(section))
                if section.name() == LANE_SECTION && matches!(found.lane_marker, Ok(None)) =>
            {
                found.lane_marker = match section.data() {
                    b"sync" => Ok(Some(Lane::Sync)),
                    b"async" => Ok(Some(Lane::Async)),
                    other => Err(String::from_utf8_lossy(other).into_owned()),
                };
            }
            Ok(wasmparser::Payload::ComponentExportSection(exports)) => {
                found.wasip3 |= exports
                    .into_iter()
                    .flatten()
                    .any(|export| export.name.name.starts_with(HTTP_HANDLER_P3));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    found.needs = needs.finish().unwrap_or_default();
    found
}

/// What the first eight bytes of a file say it is.
#[derive(Debug, PartialEq, Eq)]
enum WasmKind {
    CoreModule,
    Component,
    NotWasm,
}

/// Reads the binary header: `\0asm`, then a version and layer field that is
/// `01 00 00 00` for core modules and `0d 00 01 00` for components. (Other
/// versions are left for wasmtime to reject with its own reason.)
fn wasm_kind(bytes: &[u8]) -> WasmKind {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => WasmKind::CoreModule,
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => WasmKind::Component,
        _ => WasmKind::NotWasm,
    }
}

/// Flattens an error chain into one line for a one-line message.
pub fn one_line(error: &impl std::fmt::Display) -> String {
    format!("{error:#}")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_tells_modules_components_and_other_files_apart() {
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0"), WasmKind::CoreModule);
        assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0rest"), WasmKind::Component);
        assert_eq!(wasm_kind(b"\x7fELF\x02\x01\x01\0"), WasmKind::NotWasm);
        assert_eq!(wasm_kind(b"\0as"), WasmKind::NotWasm);
    }

    #[test]
    fn one_line_joins_a_multi_line_message() {
        assert_eq!(
            one_line(&"first\n  second\n\nthird"),
            "first; second; third"
        );
    }
}
