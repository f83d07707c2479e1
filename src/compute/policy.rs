//! The compute policy: what an operator lets this node run. Checked when bidding and again just before a run
//! (the configuration may have changed in between, e.g. a restart with a stricter one); both times a refusal
//! is a reason the user sees in the job's history and final error.
//!
//! What it covers: disabled engines, input types and publishers (Bacalhau's `Engines.Disabled`,
//! `InputSources.Disabled`, `Publishers.Disabled`); an image allow-list (`Compute.Policy.ImageAllowList`);
//! a per-job resource maximum (`Compute.Policy.MaxJob`); networked jobs (`Compute.RejectNetworkedJobs` /
//! `JobAdmissionControl.RejectNetworkedJobs`); `env:` references (`Compute.Env.AllowList`, see
//! [`super::secrets`]). Local paths have their own allow-list in the `local` source, checked by its
//! `validate`.
//!
//! Image patterns are globs (see [`super::glob`]) over the normalised reference, written the way image names
//! are: `alpine` means `docker.io/library/alpine`, `team/app` means `docker.io/team/app`, and a first
//! component with a `.` or `:` (or `localhost`) is a registry. A pattern without a tag or digest matches the
//! repository with any tag or digest (`docker.io/library/alpine` admits `alpine:3.20` and
//! `alpine@sha256:…`); one with a tag matches `registry/repo:tag`, one with a digest `registry/repo@digest`.
//! `*` or `**` alone admits every image.

use std::collections::BTreeSet;

use crate::model::{
    EngineKind, EngineSpec, InputSpec, NetworkType, PublisherKind, PublisherSpec, Resources, Task,
};

use super::glob;
use super::secrets;

/// The operator's limits for this node. The default admits everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Engines this node refuses although it has them.
    pub disabled_engines: BTreeSet<EngineKind>,
    /// Input types refused.
    pub disabled_sources: BTreeSet<crate::model::SourceKind>,
    /// Publishers refused.
    pub disabled_publishers: BTreeSet<PublisherKind>,
    /// Images admitted for `docker` jobs; empty admits every image.
    pub image_allow_list: Vec<ImagePattern>,
    /// The most one job may ask for, per dimension; `None` leaves it to the node's capacity.
    pub max_job: MaxJob,
    /// Refuse jobs that ask for any network.
    pub reject_networked_jobs: bool,
    /// Host variables `env:NAME` references may name (globs); empty refuses every reference.
    pub env_allow_list: Vec<String>,
}

/// Per-job maximum, per dimension (`Compute.Policy.MaxJob`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaxJob {
    /// Cores.
    pub cpu: Option<f64>,
    /// Bytes of memory.
    pub memory: Option<u64>,
    /// Bytes of disk.
    pub disk: Option<u64>,
    /// GPUs.
    pub gpu: Option<u64>,
}

impl MaxJob {
    /// The largest job this node takes: its capacity lowered to the maximum where one is set (what NodeInfo
    /// advertises as `MaxJobRequirements`, so that the orchestrator does not even ask).
    pub fn applied_to(&self, capacity: Resources) -> Resources {
        Resources {
            cpu: self.cpu.map_or(capacity.cpu, |m| m.min(capacity.cpu)),
            memory: self
                .memory
                .map_or(capacity.memory, |m| m.min(capacity.memory)),
            disk: self.disk.map_or(capacity.disk, |m| m.min(capacity.disk)),
            gpu: self.gpu.map_or(capacity.gpu, |m| m.min(capacity.gpu)),
        }
    }

    fn check(&self, need: &Resources) -> Result<(), String> {
        let over = |what: &str, asked: String, max: String, key: &str| {
            Err(format!(
                "the job asks for {what} {asked}, more than this node's per-job maximum of {max} \
                 (Compute.Policy.MaxJob.{key}); ask for less or use another node"
            ))
        };
        if let Some(max) = self.cpu
            && need.cpu > max + 1e-9
        {
            return over("cpu", need.cpu.to_string(), max.to_string(), "CPU");
        }
        if let Some(max) = self.memory
            && need.memory > max
        {
            return over(
                "memory",
                format!("{} bytes", need.memory),
                format!("{max} bytes"),
                "Memory",
            );
        }
        if let Some(max) = self.disk
            && need.disk > max
        {
            return over(
                "disk",
                format!("{} bytes", need.disk),
                format!("{max} bytes"),
                "Disk",
            );
        }
        if let Some(max) = self.gpu
            && need.gpu > max
        {
            return over("gpu", need.gpu.to_string(), max.to_string(), "GPU");
        }
        Ok(())
    }
}

/// One `Compute.Policy.ImageAllowList` entry, normalised (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePattern {
    /// The glob over `registry/repository[:tag|@digest]`.
    glob: String,
    /// Whether it names a tag or digest (else it is matched against `registry/repository` only).
    pins_version: bool,
}

impl ImagePattern {
    /// Normalises an entry; `Err` says what is wrong with it.
    pub fn parse(entry: &str) -> Result<ImagePattern, String> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("an empty image pattern admits nothing; remove it".into());
        }
        if entry == "*" || entry == "**" {
            return Ok(ImagePattern {
                glob: "**".into(),
                pins_version: false,
            });
        }
        if entry.starts_with('/') || entry.ends_with('/') || entry.contains("//") {
            return Err("an image pattern has no empty path components".into());
        }
        let glob = match entry.split_once('/') {
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
                entry.to_owned()
            }
            Some(_) => format!("docker.io/{entry}"),
            None => format!("docker.io/library/{entry}"),
        };
        let last = glob.rsplit('/').next().unwrap_or_default();
        let pins_version = last.contains([':', '@']);
        Ok(ImagePattern { glob, pins_version })
    }

    /// Whether the reference (`registry`, `repository`, optional tag and digest) is admitted.
    fn admits(
        &self,
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> bool {
        let repo = format!("{registry}/{repository}");
        if !self.pins_version {
            return glob::matches(&self.glob, &repo);
        }
        tag.is_some_and(|t| glob::matches(&self.glob, &format!("{repo}:{t}")))
            || digest.is_some_and(|d| glob::matches(&self.glob, &format!("{repo}@{d}")))
    }
}

impl std::fmt::Display for ImagePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.glob)
    }
}

// === impl Policy ===

impl Policy {
    /// Why this node refuses `task`, if it does. `need` is what the execution holds; `lookup` reads the node's
    /// own environment (a parameter so tests need not touch the process environment).
    pub(crate) fn check(
        &self,
        task: &Task,
        engine: &EngineSpec,
        need: &Resources,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        if let Some(kind) = engine.kind()
            && self.disabled_engines.contains(&kind)
        {
            return Err(format!(
                "engine {:?} is disabled on this node (Engines.Disabled); use another engine or node",
                kind.as_str()
            ));
        }
        if let EngineSpec::Docker(params) = engine {
            self.check_image(&params.image)?;
        }
        if self.reject_networked_jobs
            && !matches!(task.network.kind, NetworkType::None | NetworkType::Default)
        {
            return Err(format!(
                "this node does not run networked jobs (the job asks for network {}); use --network none",
                task.network.kind.as_str()
            ));
        }
        self.max_job.check(need)?;
        for (i, input) in task.input_sources.iter().enumerate() {
            if let Ok(spec) = InputSpec::parse(&input.source, &format!("InputSources[{i}]"))
                && let Some(kind) = spec.kind()
                && self.disabled_sources.contains(&kind)
            {
                return Err(format!(
                    "input {}: input type {:?} is disabled on this node (InputSources.Disabled)",
                    input.target,
                    kind.as_str()
                ));
            }
        }
        if let Some(p) = PublisherSpec::parse(&task.publisher)
            && let Some(kind) = p.kind()
            && self.disabled_publishers.contains(&kind)
        {
            return Err(format!(
                "publisher {:?} is disabled on this node (Publishers.Disabled); choose another publisher",
                kind.as_str()
            ));
        }
        secrets::check_env(&task.env, &self.env_allow_list, lookup)
    }

    /// Whether `image` is on the allow-list (always, when the list is empty).
    fn check_image(&self, image: &str) -> Result<(), String> {
        if self.image_allow_list.is_empty() {
            return Ok(());
        }
        let admitted = image_parts(image).is_some_and(|(registry, repository, tag, digest)| {
            self.image_allow_list
                .iter()
                .any(|p| p.admits(&registry, &repository, tag.as_deref(), digest.as_deref()))
        });
        if admitted {
            return Ok(());
        }
        let allowed: Vec<String> = self
            .image_allow_list
            .iter()
            .map(|p| p.to_string())
            .collect();
        Err(format!(
            "image {image:?} is not on this node's image allow-list (Compute.Policy.ImageAllowList: {})",
            allowed.join(", ")
        ))
    }
}

/// The normalised parts of an image reference, or `None` when it does not parse (refused: the engine would
/// refuse it too).
#[cfg(feature = "executor-oci")]
fn image_parts(image: &str) -> Option<(String, String, Option<String>, Option<String>)> {
    let r: crate::oci::reference::ImageRef = image.parse().ok()?;
    Some((
        r.registry().to_owned(),
        r.repository().to_owned(),
        r.tag().map(str::to_owned),
        r.digest().map(|d| d.to_string()),
    ))
}

/// Without the OCI code there is no `docker` engine to run the image, and nothing to normalise it with.
#[cfg(not(feature = "executor-oci"))]
fn image_parts(_image: &str) -> Option<(String, String, Option<String>, Option<String>)> {
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{InputSource, NetworkConfig, SpecConfig};

    fn task(engine: &str, image: &str) -> (Task, EngineSpec) {
        let mut params = serde_json::Map::new();
        params.insert("Image".into(), image.into());
        let task = Task {
            engine: SpecConfig {
                kind: engine.into(),
                params,
            },
            ..Default::default()
        };
        let spec = EngineSpec::parse(&task.engine, "Engine").expect("parses");
        (task, spec)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[cfg(feature = "executor-oci")]
    fn policy_with_images(entries: &[&str]) -> Policy {
        Policy {
            image_allow_list: entries
                .iter()
                .map(|e| ImagePattern::parse(e).expect("valid"))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_policy_admits_everything() {
        let (t, e) = task("docker", "alpine:3.20");
        Policy::default()
            .check(&t, &e, &Resources::default(), &no_env)
            .expect("admitted");
    }

    #[test]
    fn image_patterns_are_normalised_like_image_names() {
        let p = |s: &str| ImagePattern::parse(s).expect("valid").glob;
        assert_eq!(p("alpine"), "docker.io/library/alpine");
        assert_eq!(p("alpine:3.*"), "docker.io/library/alpine:3.*");
        assert_eq!(p("team/*"), "docker.io/team/*");
        assert_eq!(p("registry:5000/x/y"), "registry:5000/x/y");
        assert_eq!(p("ghcr.io/org/**"), "ghcr.io/org/**");
        assert_eq!(p("localhost/app"), "localhost/app");
        assert_eq!(p("*"), "**");
        assert!(ImagePattern::parse(" ").is_err());
        assert!(ImagePattern::parse("a//b").is_err());
    }

    #[cfg(feature = "executor-oci")]
    #[test]
    fn a_repository_pattern_admits_any_tag_or_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let p = policy_with_images(&["alpine", "registry:5000/team/*"]);
        for ok in [
            "alpine",
            "alpine:3.20",
            "docker.io/library/alpine:3.20",
            &format!("alpine@{digest}"),
            "registry:5000/team/app:v1",
            &format!("registry:5000/team/app@{digest}"),
        ] {
            p.check_image(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for refused in [
            "busybox",
            "evil/alpine",
            "registry:5000/team/a/b",
            "registry:5001/team/app",
        ] {
            let err = p.check_image(refused).expect_err(refused);
            assert!(err.contains("Compute.Policy.ImageAllowList"), "{err}");
        }
    }

    #[cfg(feature = "executor-oci")]
    #[test]
    fn a_tag_or_digest_pattern_pins_the_version() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let p = policy_with_images(&["alpine:3.*", &format!("registry:5000/x@{digest}")]);
        p.check_image("alpine:3.20").expect("tag matches");
        assert!(p.check_image("alpine:edge").is_err());
        assert!(p.check_image("alpine").is_err(), "latest is not 3.*");
        p.check_image(&format!("registry:5000/x@{digest}"))
            .expect("digest matches");
        assert!(p.check_image("registry:5000/x:latest").is_err());
    }

    #[test]
    fn disabled_engines_inputs_and_publishers_are_refused_with_their_key() {
        let (mut t, e) = task("docker", "alpine");
        let mut p = Policy::default();
        p.disabled_engines.insert(EngineKind::Docker);
        let err = p
            .check(&t, &e, &Resources::default(), &no_env)
            .expect_err("off");
        assert!(
            err.contains("Engines.Disabled") && err.contains("docker"),
            "{err}"
        );

        let mut p = Policy::default();
        p.disabled_sources
            .insert(crate::model::SourceKind::UrlDownload);
        let mut params = serde_json::Map::new();
        params.insert("URL".into(), "http://127.0.0.1/x".into());
        t.input_sources.push(InputSource {
            source: SpecConfig {
                kind: "urlDownload".into(),
                params,
            },
            target: "/in".into(),
            ..Default::default()
        });
        let err = p
            .check(&t, &e, &Resources::default(), &no_env)
            .expect_err("off");
        assert!(
            err.contains("InputSources.Disabled") && err.contains("/in"),
            "{err}"
        );

        let mut p = Policy::default();
        p.disabled_publishers.insert(PublisherKind::Noop);
        t.input_sources.clear();
        t.publisher = SpecConfig {
            kind: "noop".into(),
            params: serde_json::Map::new(),
        };
        let err = p
            .check(&t, &e, &Resources::default(), &no_env)
            .expect_err("off");
        assert!(err.contains("Publishers.Disabled"), "{err}");
    }

    #[test]
    fn jobs_over_the_per_job_maximum_are_refused() {
        let (t, e) = task("wasm", "");
        let p = Policy {
            max_job: MaxJob {
                cpu: Some(1.0),
                memory: Some(64 << 20),
                disk: None,
                gpu: Some(0),
            },
            ..Default::default()
        };
        let need = |cpu: f64, memory: u64, gpu: u64| Resources {
            cpu,
            memory,
            disk: 0,
            gpu,
        };
        p.check(&t, &e, &need(1.0, 64 << 20, 0), &no_env)
            .expect("at the maximum");
        let err = p.check(&t, &e, &need(2.0, 1, 0), &no_env).expect_err("cpu");
        assert!(err.contains("MaxJob.CPU"), "{err}");
        let err = p
            .check(&t, &e, &need(0.5, 65 << 20, 0), &no_env)
            .expect_err("memory");
        assert!(
            err.contains("MaxJob.Memory") && err.contains("67108864"),
            "{err}"
        );
        let err = p.check(&t, &e, &need(0.5, 1, 1), &no_env).expect_err("gpu");
        assert!(err.contains("MaxJob.GPU"), "{err}");
        let advertised = p.max_job.applied_to(need(4.0, 1 << 30, 0));
        assert_eq!(advertised, need(1.0, 64 << 20, 0));
    }

    #[test]
    fn networked_jobs_and_unlisted_env_references_are_refused() {
        let (mut t, e) = task("wasm", "");
        t.network = NetworkConfig {
            kind: NetworkType::Host,
            ..Default::default()
        };
        let p = Policy {
            reject_networked_jobs: true,
            ..Default::default()
        };
        let err = p
            .check(&t, &e, &Resources::default(), &no_env)
            .expect_err("net");
        assert!(err.contains("networked"), "{err}");

        let (mut t, e) = task("wasm", "");
        t.env = BTreeMap::from([("T".to_owned(), "env:NODE_SECRET".to_owned())]);
        let err = Policy::default()
            .check(&t, &e, &Resources::default(), &no_env)
            .expect_err("not listed");
        assert!(
            err.contains("env var NODE_SECRET is not in this node's Compute.Env.AllowList"),
            "{err}"
        );
        let p = Policy {
            env_allow_list: vec!["NODE_*".into()],
            ..Default::default()
        };
        p.check(&t, &e, &Resources::default(), &|_| Some("v".into()))
            .expect("listed and set");
    }
}
