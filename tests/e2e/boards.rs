//! Board profiles (targets/<board>/node.yaml): each one loads through the real config loader, and the node
//! it starts advertises the capacity and settings the file states. Packaging installs these files as
//! /etc/cod/node.yaml, so a typo here is a board that does not boot its node.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::Cod;

fn boards() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets");
    let mut boards: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("targets/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("node.yaml").is_file())
        .collect();
    boards.sort();
    boards
}

/// "512MiB" / "3GiB" in bytes (the units the board files use).
fn bytes(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).expect("unit"));
    let n: u64 = n.parse().expect("number");
    match unit {
        "MiB" => n << 20,
        "GiB" => n << 30,
        other => panic!("unit {other} not used by the board files"),
    }
}

#[test]
fn every_board_profile_starts_a_node_with_its_defaults() {
    let boards = boards();
    let names: Vec<String> = boards
        .iter()
        .map(|b| b.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for expected in ["rpi4", "rpi5", "jetson-orin", "x86-gateway"] {
        assert!(
            names.iter().any(|n| n == expected),
            "targets/{expected} is missing: {names:?}"
        );
    }
    for (board, name) in boards.iter().zip(&names) {
        let file = board.join("node.yaml");
        let stated: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&file).expect("read")).expect("yaml");
        assert!(
            board.join("cargo.toml").is_file(),
            "targets/{name} has node defaults but no cargo.toml"
        );
        // The harness's --data-dir and ports override the file's /var/lib/cod, as flags override a file.
        let node = Cod::start(name, &["--config", file.to_str().expect("utf-8 path")]);
        let (status, config) = node.get("/api/v1/agent/config");
        assert_eq!(status, 200, "{config}");
        let config = &config["config"];
        for (section, key) in [
            ("Compute", "Memory"),
            ("Compute", "CPU"),
            ("Compute", "WasmSlots"),
            ("Compute", "MaxOutput"),
            ("Store", "MapSize"),
        ] {
            assert_eq!(
                config[section][key], stated[section][key],
                "{name}: {section}.{key} from {file:?} did not reach the node"
            );
        }
        assert_eq!(
            config["Compute"]["Docker"]["ImageCacheSize"],
            stated["Compute"]["Docker"]["ImageCacheSize"],
            "{name}: Compute.Docker.ImageCacheSize"
        );
        let (_, info) = node.get("/api/v1/agent/node");
        let max = &info["ComputeNodeInfo"]["MaxCapacity"];
        let memory = bytes(
            stated["Compute"]["Memory"]
                .as_str()
                .expect("Memory is a string"),
        );
        assert_eq!(max["Memory"].as_u64(), Some(memory), "{name}: {info}");
        let cpu: f64 = stated["Compute"]["CPU"]
            .as_str()
            .expect("CPU")
            .parse()
            .expect("cores");
        assert_eq!(max["CPU"].as_f64(), Some(cpu), "{name}: {info}");
    }
}
