//! What one instance of a component takes from the instance allocator,
//! read from the binary before anything is compiled.
//!
//! wasmtime's pooling allocator refuses, at compile time, a component with
//! more core instances, memories or tables per instance than it was
//! configured for, or a memory or table whose initial size exceeds a slot.
//! Sizing the pool from constants chosen for Rust guests refused every
//! componentize-py component (14 core instances). So the host reads these
//! numbers from the component first and sizes the pool to fit, within the
//! caps in [`crate::engine`].
//!
//! The counts follow wasmtime's own (its pooling allocator's
//! `validate_component`): every core module instantiation in the flattened
//! component counts once (a nested component instantiated twice counts
//! twice), with the memories and tables its module defines (not imports).
//! wasmtime also instantiates small adapter modules of its own between
//! composed components, which no binary lists; the engine leaves headroom
//! for them.

use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentInstance, ComponentOuterAliasKind,
    ComponentTypeRef, Encoding, Instance, Payload,
};

/// What one instance of a component needs from the instance allocator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ComponentNeeds {
    /// Core module instances, counted as wasmtime counts them.
    pub core_instances: u32,
    /// Linear memories those instances define.
    pub memories: u32,
    /// Tables those instances define.
    pub tables: u32,
    /// The largest initial size of one of those memories, in bytes.
    pub largest_initial_memory: u64,
    /// The largest initial size of one of those tables, in elements.
    pub largest_initial_table: u64,
    /// The most memories one of its core modules defines.
    pub memories_per_module: u32,
    /// The most tables one of its core modules defines.
    pub tables_per_module: u32,
}

impl ComponentNeeds {
    /// Adds the needs of one more instantiation of `other`.
    fn add(&mut self, other: &ComponentNeeds) {
        self.core_instances = self.core_instances.saturating_add(other.core_instances);
        self.memories = self.memories.saturating_add(other.memories);
        self.tables = self.tables.saturating_add(other.tables);
        self.largest_initial_memory = self
            .largest_initial_memory
            .max(other.largest_initial_memory);
        self.largest_initial_table = self.largest_initial_table.max(other.largest_initial_table);
        self.memories_per_module = self.memories_per_module.max(other.memories_per_module);
        self.tables_per_module = self.tables_per_module.max(other.tables_per_module);
    }
}

/// A core module's own memories and tables: what instantiating it costs.
#[derive(Clone, Copy, Debug, Default)]
struct ModuleCost {
    memories: u32,
    tables: u32,
    largest_memory: u64,
    largest_table: u64,
}

impl ModuleCost {
    fn as_needs(&self) -> ComponentNeeds {
        ComponentNeeds {
            core_instances: 1,
            memories: self.memories,
            tables: self.tables,
            largest_initial_memory: self.largest_memory,
            largest_initial_table: self.largest_table,
            memories_per_module: self.memories,
            tables_per_module: self.tables,
        }
    }
}

/// One component being read: its module and component index spaces (an
/// entry is `None` where the binary does not say what it is, such as an
/// imported module) and what its instantiations add up to so far.
#[derive(Default)]
struct ComponentScope {
    modules: Vec<Option<ModuleCost>>,
    components: Vec<Option<ComponentNeeds>>,
    needs: ComponentNeeds,
}

enum Scope {
    Module(ModuleCost),
    Component(ComponentScope),
}

/// Reads the payloads of a component, in order, and adds up its needs.
#[derive(Default)]
pub(super) struct NeedsCounter {
    scopes: Vec<Scope>,
    top: Option<ComponentNeeds>,
}

impl NeedsCounter {
    /// Takes in the next payload of `wasmparser::Parser::parse_all`.
    pub(super) fn observe(&mut self, payload: &Payload<'_>) {
        match payload {
            Payload::Version { encoding, .. } => self.scopes.push(match encoding {
                Encoding::Module => Scope::Module(ModuleCost::default()),
                Encoding::Component => Scope::Component(ComponentScope::default()),
            }),
            Payload::End(_) => self.end_scope(),
            Payload::MemorySection(reader) => {
                if let Some(Scope::Module(cost)) = self.scopes.last_mut() {
                    for memory in reader.clone().into_iter().flatten() {
                        cost.memories += 1;
                        let page_bits = memory.page_size_log2.unwrap_or(16);
                        let bytes = memory.initial.checked_shl(page_bits).unwrap_or(u64::MAX);
                        cost.largest_memory = cost.largest_memory.max(bytes);
                    }
                }
            }
            Payload::TableSection(reader) => {
                if let Some(Scope::Module(cost)) = self.scopes.last_mut() {
                    for table in reader.clone().into_iter().flatten() {
                        cost.tables += 1;
                        cost.largest_table = cost.largest_table.max(table.ty.initial);
                    }
                }
            }
            Payload::InstanceSection(reader) => {
                let Some(Scope::Component(scope)) = self.scopes.last_mut() else {
                    return;
                };
                for instance in reader.clone().into_iter().flatten() {
                    if let Instance::Instantiate { module_index, .. } = instance {
                        let cost = scope.modules.get(module_index as usize).copied().flatten();
                        let needs = cost.map_or(
                            ComponentNeeds {
                                core_instances: 1,
                                ..ComponentNeeds::default()
                            },
                            |cost| cost.as_needs(),
                        );
                        scope.needs.add(&needs);
                    }
                }
            }
            Payload::ComponentInstanceSection(reader) => {
                let Some(Scope::Component(scope)) = self.scopes.last_mut() else {
                    return;
                };
                for instance in reader.clone().into_iter().flatten() {
                    if let ComponentInstance::Instantiate {
                        component_index, ..
                    } = instance
                        && let Some(Some(needs)) = scope.components.get(component_index as usize)
                    {
                        let needs = *needs;
                        scope.needs.add(&needs);
                    }
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader.clone().into_iter().flatten() {
                    self.alias(alias);
                }
            }
            Payload::ComponentImportSection(reader) => {
                let Some(Scope::Component(scope)) = self.scopes.last_mut() else {
                    return;
                };
                for import in reader.clone().into_iter().flatten() {
                    match import.ty {
                        ComponentTypeRef::Module(_) => scope.modules.push(None),
                        ComponentTypeRef::Component(_) => scope.components.push(None),
                        _ => {}
                    }
                }
            }
            Payload::ComponentExportSection(reader) => {
                let Some(Scope::Component(scope)) = self.scopes.last_mut() else {
                    return;
                };
                // An export is a new index for what it exports.
                for export in reader.clone().into_iter().flatten() {
                    let index = export.index as usize;
                    match export.kind {
                        ComponentExternalKind::Module => {
                            let cost = scope.modules.get(index).copied().flatten();
                            scope.modules.push(cost);
                        }
                        ComponentExternalKind::Component => {
                            let needs = scope.components.get(index).copied().flatten();
                            scope.components.push(needs);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// The needs of the outermost component, once its end was read.
    pub(super) fn finish(self) -> Option<ComponentNeeds> {
        self.top
    }

    fn end_scope(&mut self) {
        let Some(ended) = self.scopes.pop() else {
            return;
        };
        match (ended, self.scopes.last_mut()) {
            (Scope::Module(cost), Some(Scope::Component(parent))) => {
                parent.modules.push(Some(cost))
            }
            (Scope::Component(child), Some(Scope::Component(parent))) => {
                parent.components.push(Some(child.needs));
            }
            (Scope::Component(top), None) => self.top = Some(top.needs),
            _ => {}
        }
    }

    /// An alias adds a module or component to the current index space:
    /// one from an enclosing component (known), or an instance's export
    /// (unknown).
    fn alias(&mut self, alias: ComponentAlias<'_>) {
        let (module, component) = match alias {
            ComponentAlias::Outer { kind, count, index } => {
                let outer = self
                    .scopes
                    .len()
                    .checked_sub(1 + count as usize)
                    .and_then(|at| match &self.scopes[at] {
                        Scope::Component(scope) => Some(scope),
                        Scope::Module(_) => None,
                    });
                let index = index as usize;
                match kind {
                    ComponentOuterAliasKind::CoreModule => (
                        Some(outer.and_then(|s| s.modules.get(index).copied().flatten())),
                        None,
                    ),
                    ComponentOuterAliasKind::Component => (
                        None,
                        Some(outer.and_then(|s| s.components.get(index).copied().flatten())),
                    ),
                    _ => (None, None),
                }
            }
            ComponentAlias::InstanceExport { kind, .. } => match kind {
                ComponentExternalKind::Module => (Some(None), None),
                ComponentExternalKind::Component => (None, Some(None)),
                _ => (None, None),
            },
            ComponentAlias::CoreInstanceExport { .. } => (None, None),
        };
        if let Some(Scope::Component(scope)) = self.scopes.last_mut() {
            scope.modules.extend(module);
            scope.components.extend(component);
        }
    }
}
