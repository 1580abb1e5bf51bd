//! What one store holds: the guest's WASI view of the world (empty unless
//! granted), the HTTP context with the outbound policy, and the memory limiter.
//!
//! A store can outlive one invocation (the sync lane keeps a warm instance,
//! and `--instance-reuse` lets it serve several calls), so the invocation id
//! its output and logs carry is a shared cell set at the start of each call.

use super::guest_output::{GuestOutput, HostStream, OutputBudget};
use super::outbound::OutboundPolicy;
use crate::config::{GuestGrants, InvocationLimits, Origin};
use crate::invocation::InvocationId;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Most table elements an instance may grow to; Rust guests use a few hundred.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The id of the invocation a store is running, shared with its output
/// streams and outbound policy.
#[derive(Clone, Default)]
pub struct CurrentInvocation(Arc<AtomicU64>);

impl CurrentInvocation {
    /// The id of the invocation now running.
    pub fn get(&self) -> InvocationId {
        InvocationId::from_u64(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, id: InvocationId) {
        self.0.store(id.to_u64(), Ordering::Relaxed);
    }
}

/// The `T` of every `Store<T>` fnhost creates.
pub struct StoreState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    invocation: CurrentInvocation,
    output: Arc<OutputBudget>,
    /// Enforces `--max-memory` and remembers whether the guest hit it.
    pub limiter: MemoryLimiter,
}

impl StoreState {
    /// A store state granting exactly `grants`.
    pub fn new(
        grants: &GuestGrants,
        allowed_outbound: Arc<[Origin]>,
        limits: &InvocationLimits,
    ) -> wasmtime::Result<Self> {
        let invocation = CurrentInvocation::default();
        let output = OutputBudget::new(limits.max_output);
        let stream = |target| GuestOutput::new(invocation.clone(), target, output.clone());
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stream(HostStream::Stdout))
            .stderr(stream(HostStream::Stderr))
            .envs(&grants.env)
            // Sockets and name lookups stay off: outbound HTTP goes through
            // wasi:http and its allow-list, nothing else leaves the sandbox.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for dir in &grants.dirs {
            wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadWrite)?;
        }
        LIVE_STORES.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: OutboundPolicy::new(invocation.clone(), allowed_outbound, limits.timeout),
            invocation,
            output,
            limiter: MemoryLimiter::new(limits.max_memory),
        })
    }

    /// Marks the start of invocation `id` on this store.
    pub fn begin(&mut self, id: InvocationId) {
        self.invocation.set(id);
        self.limiter.exceeded = false;
        self.outbound.begin();
        self.output.reset();
    }

    /// Marks the start of invocation `id` on a store that may be running
    /// other calls (a WASIp3 instance): the output budget starts again
    /// only when `alone`, so concurrent calls share one, and the outbound
    /// count is not used.
    pub fn begin_shared(&mut self, id: InvocationId, alone: bool) {
        self.invocation.set(id);
        self.limiter.exceeded = false;
        if alone {
            self.output.reset();
        }
    }

    /// Outbound HTTP requests the guest sent (or tried to) in this call.
    pub fn outbound_requests(&self) -> u32 {
        self.outbound.sent()
    }
}

impl Drop for StoreState {
    fn drop(&mut self) {
        LIVE_STORES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stores (one per instance) alive in this process.
static LIVE_STORES: AtomicU64 = AtomicU64::new(0);

/// Instances alive in this process: warm ones waiting for a call and those
/// running one.
pub fn live_instances() -> u64 {
    LIVE_STORES.load(Ordering::Relaxed)
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Refuses memory growth past the limit and records that it did, so a
/// guest that then aborts is reported as `memory`, not as a plain trap.
/// The limit covers all linear memories of the store together (a component
/// can hold several core instances, each with its own memory).
pub struct MemoryLimiter {
    max_memory: u64,
    used: u64,
    exceeded: bool,
}

impl MemoryLimiter {
    fn new(max_memory: u64) -> Self {
        Self {
            max_memory,
            used: 0,
            exceeded: false,
        }
    }

    /// Whether the guest asked for more memory than it may have.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// The store's linear memories together, in bytes.
    pub fn used(&self) -> u64 {
        self.used
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self
            .used
            .saturating_sub(current as u64)
            .saturating_add(desired as u64);
        if after > self.max_memory {
            self.exceeded = true;
            return Ok(false);
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
