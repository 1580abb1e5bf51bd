//! The on-disk compile cache.
//!
//! Compiling a component with Cranelift takes from tens of milliseconds to
//! seconds (7 s for a 20 MB CPython component in a release build); loading
//! the compiled artifact takes about a millisecond for a Rust guest and
//! ~10 ms for CPython's 36 MB artifact, which is mapped rather than read. Artifacts
//! are keyed by the SHA-256 of the component's bytes and by wasmtime's
//! compatibility hash of the engine settings (wasmtime version, target, every
//! codegen-relevant option), so a changed component or a changed host never
//! loads a stale artifact. The folder is opened once as a cap-std [`Dir`]:
//! every file name is a hex key, nothing can lead outside it.
//!
//! Whoever can write the cache folder can make the host run arbitrary native
//! code (artifacts are machine code), so it must be private to the user that
//! runs fnhost; the default `~/.cache/fnhost` is.

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A folder of compiled components.
pub struct CompileCache {
    dir: Dir,
    path: PathBuf,
}

impl CompileCache {
    /// Opens (creating if needed, private to this user) the cache folder at
    /// `path`. Refuses a folder that another user owns or that others may
    /// write: its artifacts would be run as native code.
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        let metadata = std::fs::metadata(path)?;
        let own_uid = std::fs::metadata("/proc/self")?.uid();
        if metadata.uid() != own_uid || metadata.mode() & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "not owned by this user, or writable by others",
            ));
        }
        let dir = Dir::open_ambient_dir(path, ambient_authority())?;
        Ok(Self {
            dir,
            path: path.to_path_buf(),
        })
    }

    /// The folder this cache lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The artifact file name for `wasm` compiled by `engine`.
    pub fn key(engine: &Engine, wasm: &[u8]) -> String {
        let mut settings = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut settings);
        let digest = Sha256::digest(wasm);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}-{:016x}.cwasm", settings.finish())
    }

    /// Loads a cached artifact, or `None` when there is none or it does not
    /// fit this engine (then the caller compiles and stores a new one).
    pub fn load(&self, engine: &Engine, key: &str) -> Option<Component> {
        let file = self.dir.open(key).ok()?.into_std();
        // wasmtime maps an artifact file as the code memory itself, where
        // reading it copies it twice and faults in twice its size: for a
        // 36 MB CPython artifact that was 50 ms of a 90 ms start. Its API
        // takes a path, so it gets the descriptor opened through the
        // capability above (`/proc/self/fd/N`, the same inode), not a path
        // into the folder; without /proc the artifact is read instead.
        let through_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        // SAFETY: the artifact was written by `store` below into a folder the
        // host user owns (see the module docs), and wasmtime checks its
        // header against this engine before using it; artifacts are
        // replaced by rename, never modified in place, so the mapped file
        // does not change under the component.
        let mapped = through_fd
            .exists()
            .then(|| unsafe { Component::deserialize_file(engine, &through_fd) });
        drop(file);
        // A folder on a `noexec` mount cannot be mapped executable: read it.
        let loaded = match mapped {
            Some(Ok(component)) => Ok(component),
            _ => {
                let bytes = self.dir.read(key).ok()?;
                unsafe { Component::deserialize(engine, &bytes) }
            }
        };
        match loaded {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(
                    "ignoring unusable compile cache entry {}: {error}",
                    self.path.join(key).display()
                );
                None
            }
        }
    }

    /// Stores `component` under `key`, atomically: a reader sees the whole
    /// artifact or none.
    pub fn store(&self, key: &str, component: &Component) -> anyhow::Result<()> {
        let bytes = component
            .serialize()
            .map_err(|e| anyhow::anyhow!("cannot serialize the compiled component: {e}"))?;
        let temporary = format!("{key}.{}.tmp", std::process::id());
        self.dir.write(&temporary, &bytes)?;
        self.dir.rename(&temporary, &self.dir, key)?;
        Ok(())
    }
}
