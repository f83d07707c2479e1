//! Compiled modules, kept for the next run of the same bytes.
//!
//! The engine translates every function of a module when it loads it (eager compilation, see
//! [`super::WasmExecutor::new`]), which for a real program (Rust std, ~100 KB) costs far more than a short
//! run itself, and edge fleets run the same module again and again over new data. A module is immutable
//! once compiled and may be instantiated into any number of stores of its engine, so a run whose module
//! bytes equal an earlier run's reuses that compilation.
//!
//! Entries are found by a hash of the bytes and confirmed by comparing the bytes themselves, so a hash
//! collision (even a crafted one) only costs a compile, never runs another job's code. The cache is
//! bounded by the bytes it holds (compiled code is a small multiple of them) and evicts the least
//! recently used entry.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use wasmi::Module;

/// Source bytes the cache may hold in all.
const MAX_BYTES: usize = 4 << 20;
/// A module larger than this is compiled for its run only: it would crowd out every other entry.
const MAX_MODULE_BYTES: usize = 1 << 20;
/// Entries at most, however small.
const MAX_ENTRIES: usize = 32;

/// Modules compiled for earlier runs, shared by the executor's worker threads.
#[derive(Default)]
pub(super) struct CompiledModules {
    /// Least recently used first.
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    hash: u64,
    bytes: Box<[u8]>,
    module: Module,
}

impl Entry {
    /// Whether this is the compilation of `bytes` (whose hash is `hash`).
    fn is_of(&self, hash: u64, bytes: &[u8]) -> bool {
        self.hash == hash && *self.bytes == *bytes
    }
}

impl std::fmt::Debug for CompiledModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.lock();
        f.debug_struct("CompiledModules")
            .field("entries", &entries.len())
            .field(
                "bytes",
                &entries.iter().map(|e| e.bytes.len()).sum::<usize>(),
            )
            .finish()
    }
}

// === impl CompiledModules ===

impl CompiledModules {
    /// The module compiled from `bytes`: a cached one, or `compile(bytes)`'s, which is kept when it succeeds
    /// (a failure is not: the next run reports it again).
    pub(super) fn get_or_compile<E>(
        &self,
        bytes: &[u8],
        compile: impl FnOnce(&[u8]) -> Result<Module, E>,
    ) -> Result<Module, E> {
        let hash = hash_of(bytes);
        {
            let mut entries = self.lock();
            if let Some(at) = entries.iter().position(|e| e.is_of(hash, bytes)) {
                let entry = entries.remove(at);
                let module = entry.module.clone();
                entries.push(entry);
                return Ok(module);
            }
        }
        // Compiled outside the lock: another worker's run of another module does not wait for it. Two
        // workers compiling the same new module at once both compile it; the second insert finds the first.
        let module = compile(bytes)?;
        if bytes.len() <= MAX_MODULE_BYTES {
            let mut entries = self.lock();
            if !entries.iter().any(|e| e.is_of(hash, bytes)) {
                entries.push(Entry {
                    hash,
                    bytes: bytes.into(),
                    module: module.clone(),
                });
                let mut held: usize = entries.iter().map(|e| e.bytes.len()).sum();
                while entries.len() > MAX_ENTRIES || held > MAX_BYTES {
                    held -= entries.remove(0).bytes.len();
                }
            }
        }
        Ok(module)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock leaves a consistent list (each step is one Vec operation).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fixed-key hash (std's SipHash): only an index, the bytes decide.
fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use wasmi::Engine;

    fn module_exporting(name: &str) -> Vec<u8> {
        wat::parse_str(format!(r#"(module (func (export "{name}")))"#)).expect("wat")
    }

    /// Compiles with `engine`, counting compiles in `count`.
    fn compiler<'a>(
        engine: &'a Engine,
        count: &'a Cell<u32>,
    ) -> impl FnOnce(&[u8]) -> Result<Module, wasmi::Error> + 'a {
        move |b| {
            count.set(count.get() + 1);
            Module::new(engine, b)
        }
    }

    #[test]
    fn the_same_bytes_compile_once_and_other_bytes_get_their_own_module() {
        let engine = Engine::default();
        let cache = CompiledModules::default();
        let count = Cell::new(0);
        let a = module_exporting("a");
        let b = module_exporting("b");

        let first = cache
            .get_or_compile(&a, compiler(&engine, &count))
            .expect("a");
        let again = cache
            .get_or_compile(&a, compiler(&engine, &count))
            .expect("a");
        assert_eq!(
            count.get(),
            1,
            "the second run of the same bytes must not compile"
        );
        assert!(first.get_export("a").is_some() && again.get_export("a").is_some());

        let other = cache
            .get_or_compile(&b, compiler(&engine, &count))
            .expect("b");
        assert_eq!(count.get(), 2);
        assert!(other.get_export("b").is_some() && other.get_export("a").is_none());
    }

    #[test]
    fn a_failed_compile_is_not_kept() {
        let engine = Engine::default();
        let cache = CompiledModules::default();
        let count = Cell::new(0);
        let bad = b"\0asm\x01\0\0\0\xff".to_vec();
        for _ in 0..2 {
            assert!(
                cache
                    .get_or_compile(&bad, compiler(&engine, &count))
                    .is_err()
            );
        }
        assert_eq!(count.get(), 2, "an invalid module is reported by every run");
    }

    #[test]
    fn the_least_recently_used_module_goes_first_when_full() {
        let engine = Engine::default();
        let cache = CompiledModules::default();
        let count = Cell::new(0);
        let modules: Vec<Vec<u8>> = (0..=MAX_ENTRIES)
            .map(|i| module_exporting(&format!("f{i}")))
            .collect();
        for m in &modules[..MAX_ENTRIES] {
            cache
                .get_or_compile(m, compiler(&engine, &count))
                .expect("fill");
        }
        // Module 0 is used again, so module 1 is now the oldest and the next new module evicts it.
        cache
            .get_or_compile(&modules[0], compiler(&engine, &count))
            .expect("hit");
        cache
            .get_or_compile(&modules[MAX_ENTRIES], compiler(&engine, &count))
            .expect("one more");
        assert_eq!(count.get(), MAX_ENTRIES as u32 + 1);
        cache
            .get_or_compile(&modules[0], compiler(&engine, &count))
            .expect("kept");
        assert_eq!(
            count.get(),
            MAX_ENTRIES as u32 + 1,
            "the recently used module stays"
        );
        cache
            .get_or_compile(&modules[1], compiler(&engine, &count))
            .expect("evicted");
        assert_eq!(
            count.get(),
            MAX_ENTRIES as u32 + 2,
            "the least recently used one was evicted"
        );
    }

    #[test]
    fn a_module_over_the_size_bound_is_compiled_every_time() {
        let engine = Engine::default();
        let cache = CompiledModules::default();
        let count = Cell::new(0);
        // A data segment makes the module big without making it slow to compile.
        let big = wat::parse_str(format!(
            r#"(module (memory 17) (data (i32.const 0) "{}"))"#,
            "x".repeat(MAX_MODULE_BYTES)
        ))
        .expect("wat");
        for _ in 0..2 {
            cache
                .get_or_compile(&big, compiler(&engine, &count))
                .expect("big");
        }
        assert_eq!(count.get(), 2);
    }
}
