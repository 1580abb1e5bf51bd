//! `fnhost check`: load and link a component the way `serve` would, and say
//! what it imports and exports and which trigger it serves.

use clap::Args;
use fnhost::cache::CompileCache;
use fnhost::config::{GuestGrants, InvocationLimits, default_cache_dir};
use fnhost::engine::{EngineSettings, build_engine};
use fnhost::exec::Executor;
use std::path::PathBuf;
use std::process::ExitCode;

/// Settings of `fnhost check`.
#[derive(Args)]
pub struct CheckCommand {
    /// The component to check.
    component: PathBuf,
}

impl CheckCommand {
    /// Prints the component's inventory; exit 0 if `serve` would accept it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let limits = InvocationLimits::default();
        let (engine, _) = build_engine(&EngineSettings {
            max_memory: limits.max_memory,
            // Checking needs no slots; skip reserving them.
            pooling: false,
        })?;
        let cache = default_cache_dir().and_then(|dir| CompileCache::open(&dir).ok());
        let loaded = fnhost::component::load(&engine, &self.component, cache.as_ref())?;
        Executor::new(&engine, &loaded, limits, GuestGrants::default())?;
        println!("component: {}", self.component.display());
        println!("trigger:   {}", loaded.handler.describe());
        println!("imports:");
        for name in &loaded.imports {
            println!("  {name}");
        }
        println!("exports:");
        for name in &loaded.exports {
            println!("  {name}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
