//! How a manifest's settings meet the flags: for each setting, a flag or
//! environment variable wins, then the function's own value, then the
//! manifest's `[host]` table, then the default.

use super::serve::ServeCommand;
use fnhost::app::{FunctionSettings, HostSettings};

/// Sets `field` from `value` unless the user gave the flag `id`.
macro_rules! unless_given {
    ($explicit:expr, $target:expr, $id:literal, $value:expr) => {
        if !$explicit($id) {
            if let Some(value) = $value.clone() {
                $target = value;
            }
        }
    };
}

/// Applies the `[host]` table's host-wide settings to `command`.
pub fn apply_host(
    command: &mut ServeCommand,
    host: &HostSettings,
    explicit: &dyn Fn(&str) -> bool,
) {
    unless_given!(explicit, command.listen, "listen", host.listen);
    unless_given!(explicit, command.admin, "admin", host.admin.map(Some));
    unless_given!(explicit, command.workers, "workers", host.workers);
    unless_given!(
        explicit,
        command.scale_cooldown,
        "scale_cooldown",
        host.scale_cooldown
    );
    unless_given!(explicit, command.data_dir, "data_dir", host.data_dir);
    unless_given!(
        explicit,
        command.cache_dir,
        "cache_dir",
        host.cache_dir.clone().map(Some)
    );
    unless_given!(explicit, command.grace, "grace", host.grace);
    unless_given!(explicit, command.max_body, "max_body", host.max_body);
    unless_given!(
        explicit,
        command.header_timeout,
        "header_timeout",
        host.header_timeout
    );
    unless_given!(
        explicit,
        command.write_timeout,
        "write_timeout",
        host.write_timeout
    );
    unless_given!(
        explicit,
        command.max_component_size,
        "max_component_size",
        host.max_component_size
    );
    unless_given!(
        explicit,
        command.worker_memory,
        "worker_memory",
        host.worker_memory.map(Some)
    );
}

/// Applies one layer of function settings (a function's own, or the
/// `[host]` defaults) to `command`.
pub fn apply_function(
    command: &mut ServeCommand,
    settings: &FunctionSettings,
    explicit: &dyn Fn(&str) -> bool,
) {
    let s = settings;
    unless_given!(explicit, command.mode, "mode", s.mode);
    unless_given!(explicit, command.timeout, "timeout", s.timeout);
    unless_given!(explicit, command.max_memory, "max_memory", s.max_memory);
    unless_given!(explicit, command.max_fuel, "max_fuel", s.max_fuel.map(Some));
    unless_given!(explicit, command.yield_fuel, "yield_fuel", s.yield_fuel);
    unless_given!(explicit, command.threads, "threads", s.threads.map(Some));
    unless_given!(
        explicit,
        command.queue_depth,
        "queue_depth",
        s.queue_depth.map(|depth| Some(depth as u64))
    );
    unless_given!(
        explicit,
        command.queue_timeout,
        "queue_timeout",
        s.queue_timeout.map(Some)
    );
    unless_given!(
        explicit,
        command.instance_reuse,
        "instance_reuse",
        s.instance_reuse.map(Some)
    );
    unless_given!(
        explicit,
        command.max_concurrent_reuse,
        "max_concurrent_reuse",
        s.max_concurrent_reuse
    );
    unless_given!(
        explicit,
        command.load_shedding,
        "load_shedding",
        s.load_shedding
    );
    unless_given!(
        explicit,
        command.max_guest_output,
        "max_guest_output",
        s.max_guest_output
    );
    // Variables merge by name (a function's own win over `[host]`'s);
    // directory and origin lists replace the layer below as a whole.
    if !explicit("env")
        && let Some(env) = &s.env
    {
        for (name, value) in env {
            command.env.retain(|(existing, _)| existing != name);
            command.env.push((name.clone(), value.clone()));
        }
    }
    unless_given!(explicit, command.dir, "dir", s.dir);
    unless_given!(
        explicit,
        command.allow_outbound,
        "allow_outbound",
        s.allow_outbound
    );
}
