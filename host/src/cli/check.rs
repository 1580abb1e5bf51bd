//! `fnhost check`: load and link a component the way `serve` would, and say
//! what it imports and exports, which trigger it serves and in which lane.

use clap::Args;
use fnhost::cache::CompileCache;
use fnhost::config::parse::parse_size;
use fnhost::config::{Mode, default_cache_dir};
use fnhost::engine::{EngineSettings, build_engine};
use std::path::PathBuf;
use std::process::ExitCode;

/// Settings of `fnhost check`.
#[derive(Args)]
pub struct CheckCommand {
    /// The component to check.
    component: PathBuf,

    /// Linear memory per instance, as `fnhost serve --max-memory`: a
    /// component that needs more at start is refused by both.
    #[arg(long, env = "FNHOST_MAX_MEMORY", default_value = "128MiB", value_parser = parse_size, value_name = "SIZE")]
    max_memory: u64,

    /// Largest component file, as `fnhost serve --max-component-size`.
    #[arg(long, env = "FNHOST_MAX_COMPONENT_SIZE", default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    max_component_size: u64,
}

impl CheckCommand {
    /// Prints the component's inventory; exit 0 if `serve` would accept it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let max_memory = self.max_memory;
        let file =
            fnhost::component::read_checked(&self.component, self.max_component_size, max_memory)?;
        let marker = file.lane_marker;
        let wasip3 = file.wasip3;
        let needs = file.needs;
        let lane = if wasip3 {
            fnhost::config::Lane::Async
        } else {
            Mode::Auto.resolve(marker)
        };
        let (engine, _) = build_engine(&EngineSettings {
            max_memory,
            // The pool `serve` sizes for this component, with one slot:
            // wasmtime checks the component against it as it compiles, so
            // `check` refuses what `serve` would.
            pool_slots: Some(1),
            needs: file.needs,
            lane,
            sync_fuel: false,
            concurrency: wasip3,
        })?;
        let cache = default_cache_dir().and_then(|dir| CompileCache::open(&dir).ok());
        let loaded = fnhost::component::compile(&engine, file, cache.as_ref())?;
        fnhost::exec::link(&engine, &loaded, lane)?;
        println!("component: {}", self.component.display());
        println!(
            "trigger:   {}",
            fnhost::component::describe_triggers(
                loaded.handler.as_ref(),
                loaded.queue_handler.as_deref()
            )
        );
        println!(
            "lane:      {lane} ({})",
            match (wasip3, marker) {
                (true, _) => "WASIp3 components always run in the async lane",
                (false, Some(_)) => "from the component's fnhost:lane marker",
                (false, None) => "no marker: the default; --mode overrides",
            }
        );
        println!(
            "instance:  {} core instances, {} memories ({} KiB at start, the largest), {} tables ({} elements, the largest)",
            needs.core_instances,
            needs.memories,
            needs.largest_initial_memory >> 10,
            needs.tables,
            needs.largest_initial_table
        );
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
