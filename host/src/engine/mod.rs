//! The one wasmtime [`Engine`] of a host, and the epoch ticker that drives
//! its deadlines.
//!
//! Every default set here is commented with its reason: this is the only place
//! fnhost configures wasmtime.

mod pool;

pub use pool::{
    MAX_CORE_INSTANCES, MAX_MEMORIES, MAX_TABLE_ELEMENTS, MAX_TABLES, POOL_COMPONENT_INSTANCES,
    check_needs,
};

use crate::component::ComponentNeeds;
use crate::config::Lane;
use std::thread;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

/// How often the epoch ticker advances the engine's epoch: the resolution of
/// the sync lane's deadlines (a sync guest past `--timeout` traps within one
/// tick).
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Which instance allocator the engine ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocatorKind {
    /// Pre-reserved slots: fast instantiation, bounded concurrency.
    Pooling,
    /// `mmap` per instance: slower, works where address space is scarce.
    OnDemand,
}

impl std::fmt::Display for AllocatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pooling => "pooling",
            Self::OnDemand => "on-demand",
        })
    }
}

/// Engine settings that come from the host configuration.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Linear memory per instance in bytes; also the pool's slot size.
    pub max_memory: u64,
    /// Instances the pooling allocator holds at once (tried first; falls
    /// back to on-demand allocation if it cannot reserve), or `None` for
    /// on-demand allocation.
    pub pool_slots: Option<u32>,
    /// What one instance of the component to run needs; the pool's slots
    /// are sized to fit it.
    pub needs: ComponentNeeds,
    /// The lane the engine's code will run in: the async lane meters fuel
    /// (its yield points), the sync lane checks epochs (its deadlines).
    pub lane: Lane,
    /// Meter fuel in the sync lane too, for a `--max-fuel` CPU budget.
    pub sync_fuel: bool,
    /// Component-model concurrency, which WASIp3 components need. Off for
    /// WASIp2 components: with it on, every WASIp2 call goes through the
    /// concurrent runtime and costs more (docs/architecture.md).
    pub concurrency: bool,
}

/// Builds the engine, probing for the pooling allocator first.
///
/// The pooling allocator reserves address space for every slot up front
/// (about 42 bits with these sizes); machines with a small `vm.max_map_count`
/// or an address-space `ulimit` refuse it. Then the engine falls back to
/// on-demand allocation and says so, instead of failing to start (Spin #2343).
pub fn build_engine(settings: &EngineSettings) -> anyhow::Result<(Engine, AllocatorKind)> {
    if let Some(slots) = settings.pool_slots {
        let mut config = base_config(settings);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool::pooling_config(
            settings.max_memory,
            &settings.needs,
            slots,
            settings.lane,
        )));
        match Engine::new(&config) {
            Ok(engine) => return Ok((engine, AllocatorKind::Pooling)),
            Err(error) => tracing::warn!(
                "pooling allocator unavailable ({error}); falling back to on-demand allocation"
            ),
        }
    }
    let engine = Engine::new(&base_config(settings))
        .map_err(|e| anyhow::anyhow!("cannot configure the wasmtime engine: {e}"))?;
    Ok((engine, AllocatorKind::OnDemand))
}

fn base_config(settings: &EngineSettings) -> Config {
    let mut config = Config::new();
    #[cfg(feature = "wasip3")]
    {
        config.concurrency_support(settings.concurrency);
        if settings.concurrency {
            config.wasm_component_model_async(true);
            // WASIp3 calls run in wasmtime-wasi-http's tasks, where a fuel
            // yield is not a real one (the task runs again at once); an
            // epoch tick is, through a custom yield (exec/async_lane.rs,
            // `yield_on_epochs`). Fuel stays: it is the lane's metering.
            config.epoch_interruption(true);
        }
    }
    match settings.lane {
        // Async lane: fuel gives deterministic yield points (every
        // `--yield-fuel` units) and the optional CPU budget; the deadline is
        // a timer on the event loop, which the yields let run.
        Lane::Async => {
            config.consume_fuel(true);
        }
        // Sync lane: a blocking call cannot be cancelled from outside, so the
        // deadline must live in the guest: an epoch check at loop heads and
        // function entries (about half the cost of fuel, wasmtime PR #3699)
        // traps it once the ticker passes the deadline.
        Lane::Sync => {
            config.epoch_interruption(true);
            config.consume_fuel(settings.sync_fuel);
        }
    }
    config.wasm_component_model(true);
    // Guest stack: 1 MiB, wasmtime's default is 512 KiB. Recursive parsers
    // in guests (serde_json on deep input) need the room; the async stack
    // below must exceed it.
    config.max_wasm_stack(1 << 20);
    config.async_stack_size(2 << 20);
    config
}

/// Starts the engine's epoch ticker: one thread per engine, never one per
/// request (a per-request ticker costs 100-1000x, wasmtime #11814). The thread
/// holds only a weak reference and exits once the engine is dropped.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    thread::Builder::new()
        .name("fnhost-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}
