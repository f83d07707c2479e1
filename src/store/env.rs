//! Opening the LMDB environment: the only `unsafe` in the store.

use std::path::Path;

use heed::{Env, EnvOpenOptions, WithoutTls};

use super::StoreError;

/// Opens (creating if needed) the environment in `dir`.
#[allow(unsafe_code)]
pub(super) fn open(
    dir: &Path,
    map_size: usize,
    max_tables: u32,
) -> Result<Env<WithoutTls>, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
        path: dir.to_owned(),
        source: source.into(),
    })?;
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(map_size).max_dbs(max_tables);
    // SAFETY: LMDB requires that one process opens an environment at most once (a second `mdb_env_open` of
    // the same path in one process corrupts its lock table) and that the file is not modified outside LMDB.
    // JUSTIFICATION: the node opens its data dir exactly once, in `Store::open` called from `node::build`, and
    // the data dir is owned by this node (a second `cod serve` on the same dir fails on the API port or the
    // identity lock long before it could write); tests use a fresh temp dir each.
    let env = unsafe { options.open(dir) }.map_err(|source| StoreError::Open {
        path: dir.to_owned(),
        source,
    })?;
    Ok(env)
}
