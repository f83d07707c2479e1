//! The result cache: a job that opts in (`Meta: {"cod.result-cache": "true"}`) and asks for exactly what a
//! finished execution on this node already computed gets that execution's result without running, and
//! without fetching its inputs.
//!
//! "Exactly what" is the [`ResultKey`]: a SHA-256 over the engine (type and params), the task's env, every
//! input's content id and target, the result paths, the network mode, and the Cod version (a new executor
//! may behave differently, so an upgrade starts afresh). Not in it: ids, names, labels, resources, timeouts
//! and the publisher: they do not change what a deterministic task computes, and the reused result is
//! published through the new job's own publisher. The `BACALHAU_*` variables the node sets per execution
//! are not in it either; a task that prints its job id will show the id of the run that produced the result.
//!
//! Only successful executions are kept: exit code 0, output not truncated, published without error. A
//! non-zero exit is a Completed execution for Bacalhau, but it is also how programs report transient trouble
//! (a timeout inside the program, a full disk), and replaying a failure forever is worse than running again.
//!
//! Entries are copies of the result folder (`stdout`, `stderr`, `exitCode`, one folder per ResultPath) and
//! the RunOutput, under `<data dir>/cache/results`, LRU-evicted under their own budget.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{CacheError, Commit, DiskCache, copy_tree, sha256_hex};
use crate::model::{EngineSpec, ExecutionId, Job, JobId, RunCommandResult, Task};
use crate::storage::ContentId;
use crate::store::Store;

/// The `Job.Meta` key that opts a job in; the value `"true"` (any case) turns it on.
pub const META_KEY: &str = "cod.result-cache";

/// Whether `job` asked for its result to be reused (and kept for reuse).
pub(crate) fn opted_in(job: &Job) -> bool {
    job.meta
        .get(META_KEY)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// What a result-cache entry holds besides the result folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ResultMeta {
    /// The execution that produced the result.
    pub execution_id: ExecutionId,
    /// Its job.
    pub job_id: JobId,
    /// Its RunOutput (exit code, stdout/stderr heads).
    pub output: RunCommandResult,
}

/// The identity of a task's computation; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResultKey(String);

impl ResultKey {
    /// Computes the key of `task` run by `engine` with inputs `(target, content id)` in order. `Err` says why
    /// the task cannot be cached, for the job's history.
    pub fn new(
        task: &Task,
        engine: &EngineSpec,
        inputs: &[(String, ContentId)],
    ) -> Result<Self, String> {
        Self::with_version(task, engine, inputs, env!("CARGO_PKG_VERSION"))
    }

    fn with_version(
        task: &Task,
        engine: &EngineSpec,
        inputs: &[(String, ContentId)],
        version: &str,
    ) -> Result<Self, String> {
        if let EngineSpec::Docker(p) = engine
            && !p.image.contains("@sha256:")
        {
            return Err(format!(
                "the image {:?} is referenced by tag, which can move; pin it by digest (image@sha256:…)",
                p.image
            ));
        }
        // Param names are case-insensitive on the wire, so they are lowercased; nested values are kept as
        // given. Objects are rebuilt with sorted keys so the JSON is canonical whatever map serde_json uses.
        let params: Map<String, Value> = task
            .engine
            .params
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), canonical(v)))
            .collect();
        let material = json!({
            "v": 1,
            "cod": version,
            "engine": {
                "type": task.engine.kind.trim().to_ascii_lowercase(),
                "params": canonical(&Value::Object(params)),
            },
            "env": canonical(&json!(task.env)),
            "inputs": inputs
                .iter()
                .map(|(target, id)| json!({"target": target, "content": id.as_str()}))
                .collect::<Vec<_>>(),
            "results": task
                .result_paths
                .iter()
                .map(|r| json!({"name": r.name, "path": r.path}))
                .collect::<Vec<_>>(),
            "network": canonical(&serde_json::to_value(&task.network).unwrap_or(Value::Null)),
        });
        Ok(Self(sha256_hex(&material.to_string())))
    }

    /// The key as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `value` with every object's keys in sorted order.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The result cache; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ResultCache {
    cache: DiskCache<ResultMeta>,
}

// === impl ResultCache ===

impl ResultCache {
    /// Opens the cache in `root` (see [`DiskCache::open`]).
    pub async fn open(root: &Path, store: &Store, budget: u64) -> Result<Self, CacheError> {
        Ok(Self {
            cache: DiskCache::open("result", root, store, "compute.result_cache", budget).await?,
        })
    }

    /// Copies the kept result for `key` into `result_dir` (merging with the empty folders already there) and
    /// returns where it came from; `None` on a miss.
    pub async fn reuse(
        &self,
        key: &ResultKey,
        result_dir: &Path,
    ) -> Result<Option<ResultMeta>, CacheError> {
        let guard = self.cache.lock(key.as_str()).await;
        let Some(hit) = self.cache.lookup(&guard).await? else {
            return Ok(None);
        };
        // The guard (and the lease) keep the entry while it is copied.
        let (from, to) = (hit.dir.clone(), result_dir.to_owned());
        tokio::task::spawn_blocking(move || copy_tree(&from, &to))
            .await
            .map_err(|_| CacheError::Task {
                cache: "result",
                task: "copy",
            })?
            .map_err(|source| CacheError::Io {
                cache: "result",
                op: "copy the kept result to",
                path: result_dir.to_owned(),
                source,
            })?;
        Ok(Some(hit.entry.meta))
    }

    /// Keeps a copy of `result_dir` under `key`, unless an entry is already there (two identical jobs that
    /// ran at once: the first one kept is as good as the second).
    pub async fn keep(
        &self,
        key: &ResultKey,
        result_dir: &Path,
        meta: ResultMeta,
    ) -> Result<(), CacheError> {
        let guard = self.cache.lock(key.as_str()).await;
        if self.cache.lookup(&guard).await?.is_some() {
            return Ok(());
        }
        let staging = self.cache.staging().await?;
        let (from, to) = (result_dir.to_owned(), staging.path().to_owned());
        let copied = tokio::task::spawn_blocking(move || copy_tree(&from, &to))
            .await
            .map_err(|_| CacheError::Task {
                cache: "result",
                task: "copy",
            })?;
        if let Err(source) = copied {
            staging.discard().await;
            return Err(CacheError::Io {
                cache: "result",
                op: "copy the result from",
                path: result_dir.to_owned(),
                source,
            });
        }
        match self.cache.commit(&guard, staging, meta).await? {
            Commit::Cached(_) => {}
            Commit::TooLarge(staging) => {
                tracing::debug!(key = %key.as_str(), "result larger than the result cache; not kept");
                staging.discard().await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{ResultPath, SourceKind, SpecConfig};

    fn task() -> Task {
        let mut params = Map::new();
        params.insert("EntryModule".into(), json!("/main.wasm"));
        params.insert("Parameters".into(), json!(["a", "b"]));
        Task {
            name: "main".into(),
            engine: SpecConfig {
                kind: "wasm".into(),
                params,
            },
            env: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            result_paths: vec![ResultPath {
                name: "outputs".into(),
                path: "/outputs".into(),
            }],
            ..Task::default()
        }
    }

    fn inputs(content: &str) -> Vec<(String, ContentId)> {
        vec![(
            "/main.wasm".to_owned(),
            ContentId::new(SourceKind::Inline, content),
        )]
    }

    fn key(task: &Task, inputs: &[(String, ContentId)]) -> String {
        let engine = EngineSpec::parse(&task.engine, "Engine").expect("engine");
        ResultKey::with_version(task, &engine, inputs, "1.0.0")
            .expect("cacheable")
            .0
    }

    #[test]
    fn the_key_is_stable() {
        let base = key(&task(), &inputs("sha256:aa"));
        // Golden: a change here means every node's cache misses once after an upgrade. Bump "v" on purpose.
        assert_eq!(
            base,
            "04fe151b7a783e73744c254db3c8b2e2e2640b33826ce99e15397227e43e9361"
        );
        // Param names in another case or order, and everything outside the computation, do not matter.
        let mut t = task();
        let params = std::mem::take(&mut t.engine.params);
        for (k, v) in params.into_iter().rev() {
            t.engine.params.insert(k.to_ascii_uppercase(), v);
        }
        t.engine.kind = " WASM ".into();
        t.name = "other".into();
        t.resources.memory = "1GB".into();
        t.publisher = SpecConfig {
            kind: "noop".into(),
            params: Map::new(),
        };
        assert_eq!(key(&t, &inputs("sha256:aa")), base);
    }

    #[test]
    fn the_key_changes_with_what_is_computed() {
        let base = key(&task(), &inputs("sha256:aa"));
        let mut env = task();
        env.env.insert("A".into(), "2".into());
        let mut more_env = task();
        more_env.env.insert("B".into(), "1".into());
        let mut params = task();
        params
            .engine
            .params
            .insert("Parameters".into(), json!(["a"]));
        let mut results = task();
        results.result_paths[0].path = "/out".into();
        for (what, t, i) in [
            ("env value", env, inputs("sha256:aa")),
            ("env name", more_env, inputs("sha256:aa")),
            ("params", params, inputs("sha256:aa")),
            ("result paths", results, inputs("sha256:aa")),
            ("input content", task(), inputs("sha256:bb")),
            (
                "input target",
                task(),
                vec![(
                    "/other.wasm".to_owned(),
                    ContentId::new(SourceKind::Inline, "sha256:aa"),
                )],
            ),
            ("no inputs", task(), vec![]),
        ] {
            assert_ne!(key(&t, &i), base, "{what}");
        }
        let engine = EngineSpec::parse(&task().engine, "Engine").expect("engine");
        let other_version =
            ResultKey::with_version(&task(), &engine, &inputs("sha256:aa"), "2.0.0")
                .expect("cacheable");
        assert_ne!(other_version.0, base, "cod version");
    }

    #[test]
    fn docker_images_must_be_pinned_by_digest() {
        let mut t = task();
        t.engine = SpecConfig {
            kind: "docker".into(),
            params: Map::from_iter([("Image".to_owned(), json!("ubuntu:24.04"))]),
        };
        let engine = EngineSpec::parse(&t.engine, "Engine").expect("engine");
        let why = ResultKey::new(&t, &engine, &[]).expect_err("a tag moves");
        assert!(why.contains("pin it by digest"), "{why}");
        t.engine.params.insert(
            "Image".into(),
            json!(format!("ubuntu@sha256:{}", "a".repeat(64))),
        );
        let engine = EngineSpec::parse(&t.engine, "Engine").expect("engine");
        assert!(ResultKey::new(&t, &engine, &[]).is_ok());
    }

    #[test]
    fn jobs_opt_in_with_the_meta_key() {
        let mut job = Job::default();
        assert!(!opted_in(&job));
        job.meta.insert(META_KEY.into(), "TRUE".into());
        assert!(opted_in(&job));
        job.meta.insert(META_KEY.into(), "no".into());
        assert!(!opted_in(&job));
    }

    #[tokio::test]
    async fn a_kept_result_is_reused_by_copy() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("state"), &Default::default()).expect("store");
        let cache = ResultCache::open(&dir.path().join("results"), &store, 1 << 20)
            .await
            .expect("open");
        let k = ResultKey("k".repeat(64));
        let run = dir.path().join("run1");
        std::fs::create_dir_all(run.join("outputs")).expect("mkdir");
        std::fs::write(run.join("stdout"), "out").expect("write");
        std::fs::write(run.join("outputs/o.txt"), "o").expect("write");
        assert_eq!(cache.reuse(&k, &run).await.expect("reuse"), None);
        let meta = ResultMeta {
            execution_id: ExecutionId::from("e-1".to_owned()),
            job_id: JobId::from("j-1".to_owned()),
            output: RunCommandResult {
                stdout: "out".into(),
                ..RunCommandResult::default()
            },
        };
        cache.keep(&k, &run, meta.clone()).await.expect("keep");
        let again = dir.path().join("run2");
        std::fs::create_dir_all(again.join("outputs")).expect("mkdir");
        assert_eq!(cache.reuse(&k, &again).await.expect("reuse"), Some(meta));
        assert_eq!(
            std::fs::read_to_string(again.join("stdout")).expect("stdout"),
            "out"
        );
        assert_eq!(
            std::fs::read_to_string(again.join("outputs/o.txt")).expect("o"),
            "o"
        );
    }
}
