//! Loading a component file: checks, compilation (through the compile cache)
//! and the inventory of what it imports and exports.

use crate::cache::CompileCache;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The export fnhost serves HTTP requests through (any 0.2.x version).
pub const HTTP_HANDLER_P2: &str = "wasi:http/incoming-handler@0.2";
/// The WASIp3 HTTP export (component-model async); not served yet.
pub const HTTP_HANDLER_P3: &str = "wasi:http/handler@0.3";

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
    #[error("{path}: does not export `wasi:http/incoming-handler@0.2.x` (it exports: {exports})")]
    NoHandler {
        /// The file named by the user.
        path: PathBuf,
        /// What it exports instead, comma-separated.
        exports: String,
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
}

impl HandlerKind {
    /// A short description for `fnhost check` and logs.
    pub fn describe(&self) -> String {
        match self {
            Self::HttpP2 { export } => format!("http (WASIp2, {export})"),
        }
    }
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
    /// The handler fnhost serves.
    pub handler: HandlerKind,
    /// Whether the compiled code came from the compile cache.
    pub from_cache: bool,
    /// Time spent reading, compiling or loading.
    pub load_time: Duration,
}

/// Reads, checks and compiles the component at `path`.
pub fn load(
    engine: &Engine,
    path: &Path,
    cache: Option<&CompileCache>,
) -> Result<LoadedComponent, LoadError> {
    let started = Instant::now();
    let owned = || path.to_path_buf();
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound { path: owned() },
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

    let key = CompileCache::key(engine, &bytes);
    let cached = cache.and_then(|cache| cache.load(engine, &key));
    let from_cache = cached.is_some();
    let component = match cached {
        Some(component) => component,
        None => {
            let component = Component::new(engine, &bytes).map_err(|e| LoadError::Invalid {
                path: owned(),
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
    let handler = exports
        .iter()
        .find(|name| name.starts_with(HTTP_HANDLER_P2))
        .map(|export| HandlerKind::HttpP2 {
            export: export.clone(),
        })
        .ok_or_else(|| LoadError::NoHandler {
            path: owned(),
            exports: if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            },
        })?;

    Ok(LoadedComponent {
        path: owned(),
        component,
        imports,
        exports,
        handler,
        from_cache,
        load_time: started.elapsed(),
    })
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
