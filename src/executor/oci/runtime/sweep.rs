//! The start-up sweep, in the helper: whatever a crash left under the state root and the cgroup root goes.
//!
//! A container whose helper died (node crash, OOM kill, power loss) keeps its state dir and its cgroups,
//! and if it died during create, libcontainer's clones of it wait forever (some before joining any cgroup:
//! those are found by their command line, which names the request under the state root). Run before the node
//! starts any container with this state root: the sweep deletes everything it finds there, and leaves the
//! cgroup root made (on v2).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use super::cgroup::Layout;
use super::helper::{self, DeleteRequest};

/// Deletes every container under `state_root` and every cgroup under `/<cgroup_root>`; returns how many
/// containers (distinct ids) it found.
pub(super) fn sweep(state_root: &Path, cgroup_root: &str) -> Result<usize, String> {
    let mut ids = BTreeSet::new();
    match fs::read_dir(state_root) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| format!("reading {}: {e}", state_root.display()))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                // A container's state dir, or the request of a run whose helper may not have got as far.
                if let Some(id) = name.strip_suffix(".request.json") {
                    ids.insert(id.to_owned());
                } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    ids.insert(name.to_owned());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", state_root.display())),
    }
    let layout = Layout::detect().map_err(|e| format!("finding the cgroup hierarchies: {e}"))?;
    let root = format!("/{cgroup_root}");
    ids.extend(
        layout
            .children(&root)
            .map_err(|e| format!("listing cgroups under {root}: {e}"))?,
    );
    for id in &ids {
        tracing::info!(id = %id, "removing a leftover container");
        helper::delete(&DeleteRequest {
            id: id.clone(),
            state_root: state_root.to_owned(),
            cgroups_path: format!("{root}/{id}"),
        });
    }
    // Whatever survived the deletes is reported, not ignored: it needs an operator.
    let left = layout
        .children(&root)
        .map_err(|e| format!("listing cgroups under {root}: {e}"))?;
    if !left.is_empty() {
        return Err(format!(
            "cgroups under {root} could not be removed: {}",
            left.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    // The parent of every container, made now rather than by the first containers' creates, which race
    // for it (`Layout::create_parent`).
    layout
        .create_parent(&root)
        .map_err(|e| format!("creating the cgroup {root}: {e}"))?;
    Ok(ids.len())
}
