//! The `regex` crate's API, implemented by `regex-lite`, for the crates in cod's tree that use `regex`:
//! oci-spec (the image reference grammar, `execCPUAffinity`), libcontainer (Intel RDT schemata, which cod
//! never sets) and protobuf-codegen (a build script). oci-client and oci-spec ask for regex's default
//! features, whose Unicode tables and lazy DFA cost ~0.5 MiB of the x86_64 edge binary's 8 MiB budget, and a
//! dependency's default features cannot be turned off from here.
//!
//! What changes for those patterns: `\w`, `\d`, `\s` and case folding are ASCII-only (as in Go's regexp,
//! which the OCI distribution grammar is written for: Docker rejects a non-ASCII tag too), and matching runs
//! in a backtracker/PikeVM instead of a DFA (every pattern above runs against one short string). A pattern
//! that needs Unicode classes fails to compile with an error instead of matching differently. A dependency
//! that calls an API regex-lite lacks (`regex::bytes`, `RegexSet`) fails the build, not a run.
#![forbid(unsafe_code)]

pub use regex_lite::*;
