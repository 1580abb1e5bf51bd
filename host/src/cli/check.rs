//! `fnhost check`: load and link a component the way `serve` would, and say
//! what it imports and exports, which trigger it serves and in which lane;
//! or do that for every function of an app manifest.

use clap::Args;
use fnhost::cache::CompileCache;
use fnhost::config::parse::parse_size;
use fnhost::config::{Mode, default_cache_dir};
use fnhost::engine::{EngineSettings, build_engine};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Settings of `fnhost check`.
#[derive(Args)]
pub struct CheckCommand {
    /// The component to check, or an app manifest (a .toml file).
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
    /// Prints the component's inventory, or each function's; exit 0 if
    /// `serve` would accept it.
    pub fn execute(self, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
        // As for `serve`: a flag or its environment variable wins over the manifest.
        let given = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(
                    clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
                )
            )
        };
        if !fnhost::app::manifest::is_manifest(&self.component) {
            check_component(
                &self.component,
                self.max_memory,
                self.max_component_size,
                Mode::Auto,
                None,
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        let manifest = fnhost::app::manifest::load(&self.component)?;
        println!(
            "app:       {} ({} functions)",
            self.component.display(),
            manifest.functions.len()
        );
        let defaults = &manifest.host.functions;
        refuse_unsafe_dirs(&manifest)?;
        for function in &manifest.functions {
            let settings = &function.settings;
            println!();
            println!("function:  {}", function.name);
            if let Some(route) = &function.route {
                println!("route:     {route}");
            }
            if let Some(queue) = &function.queue {
                println!("queue:     {}", queue.name());
            }
            check_component(
                &function.component,
                if given("max_memory") {
                    self.max_memory
                } else {
                    settings
                        .max_memory
                        .or(defaults.max_memory)
                        .unwrap_or(self.max_memory)
                },
                if given("max_component_size") {
                    self.max_component_size
                } else {
                    manifest
                        .host
                        .max_component_size
                        .unwrap_or(self.max_component_size)
                },
                settings.mode.or(defaults.mode).unwrap_or(Mode::Auto),
                Some((function.route.is_some(), function.queue.is_some())),
            )
            .map_err(|e| anyhow::anyhow!("function {}: {e:#}", function.name))?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Checks one component as `serve` would load it with `mode`, and prints
/// its inventory. `triggers` (route, queue) says what an app's function
/// needs it to export.
fn check_component(
    component: &Path,
    max_memory: u64,
    max_component_size: u64,
    mode: Mode,
    triggers: Option<(bool, bool)>,
) -> anyhow::Result<()> {
    let file = fnhost::component::read_checked(component, max_component_size, max_memory)?;
    let marker = file.lane_marker;
    let wasip3 = file.wasip3;
    let needs = file.needs;
    if wasip3 && mode == Mode::Sync {
        anyhow::bail!(
            "{}: is a WASIp3 component, which runs only in the async lane (drop `mode = \"sync\"`)",
            component.display()
        );
    }
    let lane = file.lane(mode);
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
    if let Some((route, queue)) = triggers {
        if route && loaded.handler.is_none() {
            anyhow::bail!(
                "{}: exports no HTTP handler, which its route needs",
                component.display()
            );
        }
        if queue && loaded.queue_handler.is_none() {
            anyhow::bail!(
                "{}: has no queue handler, which its queue trigger needs",
                component.display()
            );
        }
    }
    println!("component: {}", component.display());
    println!(
        "trigger:   {}",
        fnhost::component::describe_triggers(
            loaded.handler.as_ref(),
            loaded.queue_handler.as_deref()
        )
    );
    println!(
        "lane:      {lane} ({})",
        match (wasip3, marker, mode) {
            (true, _, _) => "WASIp3 components always run in the async lane",
            (false, _, Mode::Async | Mode::Sync) => "from the manifest's `mode`",
            (false, Some(_), Mode::Auto) => "from the component's fnhost:lane marker",
            (false, None, Mode::Auto) => "no marker: the default; --mode overrides",
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
    Ok(())
}

/// The `--dir` refusals `serve` applies, for each function of `manifest`:
/// no grant over the manifest, a component, the compile cache or (with a
/// queue) the data folder, none nested in another.
fn refuse_unsafe_dirs(manifest: &fnhost::app::manifest::Manifest) -> anyhow::Result<()> {
    let defaults = &manifest.host.functions;
    let cache = manifest.host.cache_dir.clone().or_else(default_cache_dir);
    let data_dir = manifest
        .host
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(fnhost::queue::DEFAULT_DATA_DIR));
    let mut protected: Vec<(&Path, &str)> = manifest
        .functions
        .iter()
        .map(|f| (f.component.as_path(), "component file"))
        .collect();
    protected.push((manifest.path.as_path(), "manifest"));
    if let Some(cache) = &cache {
        protected.push((cache.as_path(), "compile cache"));
    }
    if manifest.functions.iter().any(|f| f.queue.is_some()) {
        protected.push((data_dir.as_path(), "data folder"));
    }
    for function in &manifest.functions {
        let dirs = function
            .settings
            .dir
            .as_ref()
            .or(defaults.dir.as_ref())
            .cloned()
            .unwrap_or_default();
        if let Err((path, reason)) = fnhost::config::refuse_unsafe_dirs(&dirs, &protected) {
            anyhow::bail!(
                "{}: function {}: dir {}: {reason}",
                manifest.path.display(),
                function.name,
                path.display()
            );
        }
    }
    Ok(())
}
