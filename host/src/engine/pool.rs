//! Sizing the pooling allocator from the component it will run, within
//! host-wide caps.
//!
//! wasmtime checks every component against the pool's per-component limits
//! when it compiles it, and a slot's size (memory bytes, table elements)
//! against each initial size. Those limits are only checks, so fnhost sets
//! them to its caps; what costs something is the totals (each memory and
//! table slot reserves address space) and the slot sizes, and those follow
//! the component: a pool sized for Rust guests refused every
//! componentize-py component (14 core instances), while a pool sized for
//! the largest imaginable guest would reserve address space nobody uses.

use crate::component::ComponentNeeds;
use crate::config::Lane;
use crate::config::parse::format_size;
use wasmtime::{Enabled, PoolingAllocationConfig};

/// Core module instances one component instance may contain: componentize-py
/// components have 14, componentize-js ones 4 or so, Rust ones 1-4.
pub const MAX_CORE_INSTANCES: u32 = 100;
/// Linear memories one component instance may define.
pub const MAX_MEMORIES: u32 = 16;
/// Tables one component instance may define.
pub const MAX_TABLES: u32 = 64;
/// Initial elements of one table (CPython's is about 9,000; wasmtime's
/// default slot holds 20,000).
pub const MAX_TABLE_ELEMENTS: u64 = 10_000_000;

/// Component instances the pool holds at once (wasmtime's default is 1000
/// *core* instances, which capped `wasmtime serve` at about 333 requests in
/// flight for a Rust component of three).
pub const POOL_COMPONENT_INSTANCES: u32 = 1000;
/// Core instances reserved per component instance at least, and the room
/// left above a component's own count for the adapter modules wasmtime
/// instantiates between composed components (no binary lists them).
const MIN_CORE_INSTANCES: u32 = 8;
const ADAPTER_HEADROOM: u32 = 8;
/// Memory and table slots per component instance at least: most
/// components define one of each, a few two.
const MIN_MEMORIES: u32 = 2;
const MIN_TABLES: u32 = 2;
/// wasmtime's default table slot, kept as the floor.
const MIN_TABLE_ELEMENTS: u64 = 20_000;
/// Bytes of each memory slot kept resident (zeroed in place with `memset`
/// rather than returned with `madvise`) when an instance is released. Most
/// handlers touch less than this, so a fresh instance per request reuses
/// warm pages instead of faulting them in again.
const MEMORY_KEEP_RESIDENT: usize = 4 << 20;
/// Same idea for tables and async stacks.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Why a component does not fit the host's caps: one line for the user.
pub fn check_needs(needs: &ComponentNeeds, max_memory: u64) -> Result<(), String> {
    if needs.largest_initial_memory > max_memory {
        return Err(format!(
            "needs a linear memory of {} at start, more than --max-memory {} (raise --max-memory or FNHOST_MAX_MEMORY)",
            format_size(needs.largest_initial_memory),
            format_size(max_memory)
        ));
    }
    let caps = [
        (
            "core module instances",
            u64::from(needs.core_instances),
            u64::from(MAX_CORE_INSTANCES),
        ),
        (
            "linear memories",
            u64::from(needs.memories),
            u64::from(MAX_MEMORIES),
        ),
        ("tables", u64::from(needs.tables), u64::from(MAX_TABLES)),
        (
            "table elements",
            needs.largest_initial_table,
            MAX_TABLE_ELEMENTS,
        ),
    ];
    for (what, has, cap) in caps {
        if has > cap {
            return Err(format!(
                "an instance needs {has} {what}; fnhost allows at most {cap} per instance (a fixed cap, see docs/architecture.md)"
            ));
        }
    }
    Ok(())
}

/// Async stacks of a sync-lane engine's pool: its guests never run on a
/// fiber; a few stay for any host path that would.
const SYNC_LANE_STACKS: u32 = 16;

/// The pool for `slots` instances of a component with `needs`, each
/// memory at most `max_memory` bytes.
pub fn pooling_config(
    max_memory: u64,
    needs: &ComponentNeeds,
    slots: u32,
    lane: Lane,
) -> PoolingAllocationConfig {
    let core_instances = (needs.core_instances + ADAPTER_HEADROOM).max(MIN_CORE_INSTANCES);
    let memories = needs.memories.max(MIN_MEMORIES);
    let tables = needs.tables.max(MIN_TABLES);
    let table_elements = needs.largest_initial_table.max(MIN_TABLE_ELEMENTS);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(core_instances))
        .total_memories(slots.saturating_mul(memories))
        .total_tables(slots.saturating_mul(tables))
        .total_stacks(match lane {
            Lane::Async => slots,
            // The sync lane calls guests on its own threads' stacks: a
            // fiber stack per slot would only cost start-up time (one
            // guard-page `mprotect` each: 1000 of the worker's 1,079
            // start-up syscalls).
            Lane::Sync => SYNC_LANE_STACKS.min(slots),
        })
        // Per-component limits are checks only: the caps, checked above
        // with a clearer message.
        .max_core_instances_per_component(MAX_CORE_INSTANCES + ADAPTER_HEADROOM)
        .max_memories_per_component(MAX_MEMORIES)
        .max_tables_per_component(MAX_TABLES)
        .max_memories_per_module(needs.memories_per_module.max(1))
        .max_tables_per_module(needs.tables_per_module.max(1))
        .table_elements(usize::try_from(table_elements).unwrap_or(usize::MAX))
        // The per-instance bookkeeping (vmctx) limit grows with the count.
        .max_component_instance_size((core_instances as usize) << 20)
        .max_memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .async_stack_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python_like() -> ComponentNeeds {
        ComponentNeeds {
            core_instances: 14,
            memories: 2,
            tables: 3,
            largest_initial_memory: 40 << 20,
            largest_initial_table: 9_000,
            memories_per_module: 1,
            tables_per_module: 1,
        }
    }

    #[test]
    fn a_python_sized_component_fits() {
        assert_eq!(check_needs(&python_like(), 128 << 20), Ok(()));
    }

    #[test]
    fn an_initial_memory_over_max_memory_names_the_flag() {
        let error = check_needs(&python_like(), 32 << 20).unwrap_err();
        assert!(error.contains("40MiB"), "{error}");
        assert!(error.contains("--max-memory 32MiB"), "{error}");
    }

    #[test]
    fn each_cap_is_enforced() {
        let mut needs = python_like();
        needs.core_instances = MAX_CORE_INSTANCES + 1;
        assert!(
            check_needs(&needs, 128 << 20)
                .unwrap_err()
                .contains("core module instances")
        );
        let mut needs = python_like();
        needs.largest_initial_table = MAX_TABLE_ELEMENTS + 1;
        assert!(
            check_needs(&needs, 128 << 20)
                .unwrap_err()
                .contains("table elements")
        );
    }
}
