//! Finding, compiling and linking the modules of one run, the way Bacalhau resolves them.
//!
//! `wasi_snapshot_preview1` is built in. Any other import module name is a path in the mount
//! table (`lib.wasm` is the module at `/lib.wasm`): it is compiled, linked the same way, and
//! instantiated before the module that imports it, once per run however many modules import it.
//! `ImportModules` are loaded first, in order, then the entry module. A module that exports
//! `_initialize` is a WASI reactor: it is called right after instantiation, under the run's
//! deadline, unless it is itself the entry point.

use std::collections::{HashMap, HashSet};

use wasmi::errors::ErrorKind;
use wasmi::{Engine, Instance, Linker, Module, Store};

use super::compiled::CompiledModules;
use super::fs::{ModuleReadError, MountTable};
use super::worker::{CallEnd, Host, Slicer};

/// Bounds the modules one run may load (imports included), so a chain of imports stays cheap.
const MAX_MODULES: usize = 32;

/// Import module names that are host modules, never paths. `wasi_unstable` is not provided, but
/// is listed so that its imports fail as unknown imports rather than as a missing `/wasi_unstable`.
const BUILT_IN: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

/// Which role a module plays, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// `EntryModule`.
    Entry,
    /// Listed in `ImportModules`.
    Listed,
    /// Named by another module's import.
    Imported,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Entry => "entry module",
            Role::Listed => "import module",
            Role::Imported => "imported module",
        }
    }
}

/// Why loading stopped.
#[derive(Debug)]
pub(super) enum LoadError {
    /// The spec names something the run does not have (no input there, host I/O failed).
    Setup(String),
    /// The module cannot run: not WebAssembly, invalid, an import nobody provides, ...
    Invalid(String),
    /// Guest code ran while loading (a start function or `_initialize`) and ended the run.
    Ended(CallEnd),
}

/// Loads the modules of one run into its store and linker.
pub(super) struct Loader<'a> {
    /// The worker's engine.
    pub(super) engine: &'a Engine,
    /// Modules compiled for earlier runs, by their bytes.
    compiled: &'a CompiledModules,
    /// Where module paths are looked up.
    pub(super) mounts: &'a MountTable,
    /// The run's linker: WASI plus every module instantiated so far, under the names importers use.
    pub(super) linker: Linker<Host>,
    /// Runs start and `_initialize` functions under the run's deadline.
    pub(super) slicer: &'a Slicer<'a>,
    /// Instances by normalized guest path, so a module imported twice is instantiated once.
    instances: HashMap<String, Instance>,
    /// Paths being loaded, innermost last, to report import cycles.
    loading: Vec<String>,
    /// Import module names already defined in the linker.
    linked: HashSet<String>,
}

// === impl Loader ===

impl<'a> Loader<'a> {
    /// A loader whose `linker` already has WASI.
    pub(super) fn new(
        engine: &'a Engine,
        compiled: &'a CompiledModules,
        mounts: &'a MountTable,
        linker: Linker<Host>,
        slicer: &'a Slicer<'a>,
    ) -> Self {
        Loader {
            engine,
            compiled,
            mounts,
            linker,
            slicer,
            instances: HashMap::new(),
            loading: Vec::new(),
            linked: HashSet::new(),
        }
    }

    /// Loads the module at guest path `path` and everything it imports; returns its instance.
    /// `entrypoint` is the function about to be called, which `_initialize` must not precede.
    pub(super) fn load(
        &mut self,
        store: &mut Store<Host>,
        path: &str,
        role: Role,
        entrypoint: Option<&str>,
    ) -> Result<Instance, LoadError> {
        let key = path.trim_start_matches('/').to_owned();
        if let Some(instance) = self.instances.get(&key) {
            return Ok(*instance);
        }
        let what = role.as_str();
        // Messages name the module as the guest sees it, however the spec or import wrote it.
        let path = &format!("/{key}");
        if self.loading.contains(&key) {
            return Err(LoadError::Invalid(format!(
                "{what} {path} imports itself (cycle: /{} -> {path})",
                self.loading.join(" -> /")
            )));
        }
        if self.instances.len() + self.loading.len() >= MAX_MODULES {
            return Err(LoadError::Invalid(format!(
                "{what} {path} is one module too many: a run loads at most {MAX_MODULES}"
            )));
        }
        let bytes = self
            .mounts
            .read_module(path)
            .map_err(|e| read_error(role, e))?;
        let module = self
            .compiled
            .get_or_compile(&bytes, |b| compile(self.engine, b, what, path))?;
        drop(bytes);

        // Dependencies first, each linked under the exact name this module imports it by.
        let mut deps: Vec<String> = Vec::new();
        for import in module.imports() {
            let name = import.module();
            if !BUILT_IN.contains(&name) && !deps.iter().any(|d| d == name) {
                deps.push(name.to_owned());
            }
        }
        self.loading.push(key.clone());
        for dep in deps {
            if self.linked.contains(&dep) {
                continue;
            }
            let instance = self
                .load(store, &dep, Role::Imported, None)
                .map_err(|e| match e {
                    LoadError::Invalid(m) => {
                        LoadError::Invalid(format!("{what} {path} imports {dep:?}: {m}"))
                    }
                    other => other,
                })?;
            self.linker
                .instance(&mut *store, &dep, instance)
                .map_err(|e| {
                    LoadError::Invalid(format!("{what} {path}: cannot link {dep}: {e}"))
                })?;
            self.linked.insert(dep);
        }
        self.loading.pop();

        store
            .set_fuel(self.slicer.start_fuel())
            .map_err(|e| LoadError::Setup(format!("cannot set fuel: {e}")))?;
        let instance = match self.linker.instantiate_and_start(&mut *store, &module) {
            Ok(instance) => instance,
            Err(e) if store.data().memory.denied() => {
                return Err(LoadError::Ended(CallEnd::Trap(e)));
            }
            Err(e) => match e.kind() {
                ErrorKind::TrapCode(_)
                | ErrorKind::I32ExitStatus(_)
                | ErrorKind::Host(_)
                | ErrorKind::Message(_) => {
                    return Err(LoadError::Ended(self.slicer.classify(e)));
                }
                _ => return Err(LoadError::Invalid(format!("{what} {path}: {e}"))),
            },
        };
        if entrypoint != Some("_initialize")
            && let Some(init) = instance.get_func(&*store, "_initialize")
        {
            match self.slicer.call(store, init) {
                CallEnd::Returned => {}
                end => return Err(LoadError::Ended(end)),
            }
        }
        self.instances.insert(key, instance);
        Ok(instance)
    }
}

fn compile(engine: &Engine, bytes: &[u8], what: &str, path: &str) -> Result<Module, LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::Invalid(format!(
            "{what} {path} is not a WebAssembly module (it does not start with \"\\0asm\")"
        )));
    }
    Module::new(engine, bytes).map_err(|e| {
        LoadError::Invalid(format!(
            "{what} {path} is not a valid WebAssembly module: {e}"
        ))
    })
}

fn read_error(role: Role, e: ModuleReadError) -> LoadError {
    let message = match &e {
        ModuleReadError::Io { source, .. } => format!("{e}: {source}"),
        _ => e.to_string(),
    };
    match (&e, role) {
        // The importer adds who imports it.
        (_, Role::Imported) => LoadError::Invalid(message),
        (ModuleReadError::NotMounted { .. }, _) => {
            LoadError::Setup(format!("{}: {message}", role.as_str()))
        }
        (ModuleReadError::Io { source, .. }, _)
            if source.kind() != std::io::ErrorKind::NotFound =>
        {
            LoadError::Setup(format!("{}: {message}", role.as_str()))
        }
        _ => LoadError::Invalid(format!("{}: {message}", role.as_str())),
    }
}
