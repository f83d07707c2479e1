//! `GET /metrics` on an orchestrator and a compute node (separate processes): the text format parsed
//! strictly, the numbers moving when a job runs and surviving a restart, the API's auth gate, and the
//! connection state and heartbeat age in `cod node list`.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use crate::cluster::{compute, orchestrator};
use crate::fixtures::HELLO;
use crate::harness::{Cod, DEADLINE, http, state, wait_until, wasm_job};

/// One sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: family types and samples.
#[derive(Debug)]
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`; panics unless exactly one matches.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }
}

/// Parses the text format 0.0.4 strictly: `# HELP` then `# TYPE` once per family, every sample belongs to
/// the family declared last (families are contiguous), label values are quoted and escaped, values are
/// floats, and histograms have ascending `le` buckets ending in `+Inf` equal to `_count`, plus `_sum`.
fn parse(text: &str) -> Scrape {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut current: Option<(String, String)> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a name and text");
            assert!(!help.is_empty(), "{line}");
            assert!(valid_name(name), "bad family name {name:?}");
            let type_line = lines.next().expect("TYPE follows HELP");
            let declared = type_line
                .strip_prefix(&format!("# TYPE {name} "))
                .unwrap_or_else(|| panic!("TYPE of {name} must follow its HELP: {type_line}"));
            assert!(
                ["counter", "gauge", "histogram"].contains(&declared),
                "{type_line}"
            );
            if declared == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
            assert!(
                types.insert(name.to_owned(), declared.to_owned()).is_none(),
                "family {name} declared twice"
            );
            current = Some((name.to_owned(), declared.to_owned()));
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        assert!(!line.is_empty(), "empty line in the exposition");
        let sample = parse_sample(line);
        let (family, kind) = current.as_ref().expect("a sample before any family");
        let belongs = if kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| sample.name == format!("{family}{s}"))
        } else {
            &sample.name == family
        };
        assert!(belongs, "sample {line:?} is not in family {family}");
        samples.push(sample);
    }
    let scrape = Scrape { types, samples };
    check_histograms(&scrape);
    scrape
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => panic!("sample without a value: {line:?}"),
    };
    assert!(valid_name(name), "bad sample name in {line:?}");
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    if let Some(body) = rest.strip_prefix('{') {
        let (keys, values, consumed) = parse_labels(body, line);
        for (k, v) in keys.into_iter().zip(values) {
            assert!(labels.insert(k, v).is_none(), "label repeated in {line:?}");
        }
        rest = &body[consumed..];
    }
    let value = rest.strip_prefix(' ').expect("one space before the value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("value {v:?} is not a float in {line:?}")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// Parses `k="v",k2="v2"}`; returns names, values and the bytes consumed including `}`.
fn parse_labels(text: &str, line: &str) -> (Vec<String>, Vec<String>, usize) {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut pos = 0;
    loop {
        if text[pos..].starts_with('}') {
            return (keys, values, pos + 1);
        }
        let eq = text[pos..].find("=\"").expect("label=\"value\"") + pos;
        let key = &text[pos..eq];
        assert!(valid_name(key), "bad label name {key:?} in {line:?}");
        let mut value = String::new();
        let mut iter = text[eq + 2..].char_indices();
        let mut close = None;
        while let Some((i, c)) = iter.next() {
            match c {
                '\\' => match iter.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                '"' => {
                    close = Some(eq + 2 + i + 1);
                    break;
                }
                '\n' => panic!("raw newline in a label value in {line:?}"),
                c => value.push(c),
            }
        }
        pos = close.expect("closing quote");
        keys.push(key.to_owned());
        values.push(value);
        match text[pos..].chars().next() {
            Some(',') => pos += 1,
            Some('}') => {}
            other => panic!("unexpected {other:?} after a label in {line:?}"),
        }
    }
}

fn check_histograms(scrape: &Scrape) {
    for (family, kind) in &scrape.types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in scrape
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = s.labels.get("le").expect("bucket has le");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a float")
            };
            let mut rest = s.labels.clone();
            rest.remove("le");
            series
                .entry(format!("{rest:?}"))
                .or_default()
                .push((bound, s.value));
        }
        assert!(!series.is_empty(), "histogram {family} has no buckets");
        for (labels, buckets) in series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family}{labels}: buckets not ascending and cumulative: {buckets:?}"
            );
            let (last_bound, last_count) = *buckets.last().expect("buckets");
            assert!(last_bound.is_infinite(), "{family}{labels} lacks +Inf");
            let count = scrape
                .samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && format!("{:?}", s.labels) == labels
                })
                .unwrap_or_else(|| panic!("{family}{labels} lacks _count"));
            assert_eq!(count.value, last_count, "{family}{labels}: +Inf != _count");
            assert!(
                scrape
                    .samples
                    .iter()
                    .any(|s| s.name == format!("{family}_sum")
                        && format!("{:?}", s.labels) == labels),
                "{family}{labels} lacks _sum"
            );
        }
    }
}

/// Scrapes `cod`'s `/metrics` (with an `Authorization` value when given); returns status and body.
fn scrape_raw(cod: &Cod, auth: Option<&str>) -> (u16, String, String) {
    let mut request = http().get(format!("{}/metrics", cod.api));
    if let Some(a) = auth {
        request = request.header("authorization", a);
    }
    let response = request.send().expect("GET /metrics");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().expect("body"))
}

fn scrape(cod: &Cod) -> Scrape {
    let (status, content_type, body) = scrape_raw(cod, None);
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse(&body)
}

#[test]
fn metrics_count_a_job_on_both_roles_and_survive_a_restart() {
    let mut orch = orchestrator("metrics-orch", &[]);
    let node = compute("metrics-compute", &orch, &[]);
    // The latency is recorded just after the answer is sent, so wait for it too.
    let before = wait_until("the compute node connected", DEADLINE, || {
        let s = scrape(&orch);
        let connected = s.value(
            "cod_nodes",
            &[("connection", "CONNECTED"), ("membership", "APPROVED")],
        );
        let handshakes = s.value(
            "cod_orchestrator_request_duration_seconds_count",
            &[("kind", "handshake")],
        );
        // The compute node opens its link once connected; deliveries then ride it both ways.
        let linked = s.value("cod_transport_links", &[]) == 1.0
            && scrape(&node).value("cod_transport_links", &[]) == 1.0;
        (connected == 1.0 && handshakes >= 1.0 && linked).then_some(s)
    });
    assert_eq!(before.value("cod_jobs", &[("state", "Completed")]), 0.0);
    assert_eq!(before.value("cod_jobs_submitted_total", &[]), 0.0);
    let on_link = |s: &Scrape| s.value("cod_transport_requests_sent_total", &[("path", "link")]);
    assert_eq!(on_link(&before), 0.0, "nothing to deliver yet");
    assert_eq!(
        before.value("cod_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert!(before.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(before.value("process_open_fds", &[]) > 0.0);

    let id = orch.submit(wasm_job(HELLO, json!({})));
    let body = orch.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");

    // Latencies are recorded once the answer is back, which can be just after the job shows Completed.
    let after = wait_until("request and delivery latencies recorded", DEADLINE, || {
        let s = scrape(&orch);
        let delivers = s.value(
            "cod_orchestrator_request_duration_seconds_count",
            &[("kind", "deliver")],
        );
        let round_trips = s.value(
            "cod_outbox_delivery_duration_seconds_count",
            &[("role", "orchestrator")],
        );
        (delivers >= 1.0 && round_trips >= 1.0).then_some(s)
    });
    assert_eq!(after.value("cod_jobs", &[("state", "Completed")]), 1.0);
    assert_eq!(after.value("cod_jobs", &[("state", "Running")]), 0.0);
    assert_eq!(after.value("cod_jobs", &[("state", "Pending")]), 0.0);
    assert_eq!(
        after.value("cod_executions", &[("state", "Completed")]),
        1.0
    );
    assert_eq!(
        after.value("cod_executions", &[("state", "AskForBid")]),
        0.0
    );
    assert_eq!(after.value("cod_jobs_submitted_total", &[]), 1.0);
    assert!(
        after.value("cod_orchestrator_bids_total", &[("outcome", "accepted")]) >= 1.0,
        "bids accepted"
    );
    assert_eq!(after.value("cod_evaluations_pending", &[]), 0.0);
    assert!(on_link(&after) >= 1.0, "the AskForBid went on the link");
    // Only orchestrator families on an orchestrator-only node.
    assert!(!after.types.contains_key("cod_compute_executions_running"));

    let c = wait_until(
        "the compute node's heartbeats and deliveries measured",
        DEADLINE,
        || {
            let s = scrape(&node);
            let beats = s.value("cod_compute_heartbeat_duration_seconds_count", &[]);
            let round_trips = s.value(
                "cod_outbox_delivery_duration_seconds_count",
                &[("role", "compute")],
            );
            (beats >= 1.0 && round_trips >= 1.0).then_some(s)
        },
    );
    assert_eq!(
        c.value(
            "cod_compute_executions_finished_total",
            &[("outcome", "completed")]
        ),
        1.0
    );
    assert_eq!(
        c.value(
            "cod_compute_executions_finished_total",
            &[("outcome", "failed")]
        ),
        0.0
    );
    assert_eq!(c.value("cod_compute_executions_running", &[]), 0.0);
    assert_eq!(
        c.value("cod_compute_bids_total", &[("outcome", "accepted")]),
        1.0
    );
    assert_eq!(c.value("cod_compute_orchestrators_connected", &[]), 1.0);
    assert!(on_link(&c) >= 1.0, "the result went on the link");
    assert!(!c.types.contains_key("cod_jobs"));

    // `cod node list`: connection state and how long ago the last heartbeat came.
    let table = orch.cli_ok(&["node", "list"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("STATUS") && header.contains("LAST HEARTBEAT"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.contains(&node.node_id[..12]))
        .unwrap_or_else(|| panic!("node row missing: {table}"));
    assert!(row.contains("CONNECTED"), "{table}");
    assert!(row.contains(" ago") || row.contains("just now"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&orch.cli_ok(&["node", "list", "--output", "json"])).expect("json");
    let beat = json[0]["ConnectionState"]["LastHeartbeat"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        beat.contains('T') && beat.ends_with('Z'),
        "RFC 3339 in json: {json:#}"
    );

    // State counts are stored with the state: a restarted orchestrator reports the same numbers, while
    // event counters start again from zero.
    orch.kill9();
    orch.restart();
    let restarted = scrape(&orch);
    assert_eq!(restarted.value("cod_jobs", &[("state", "Completed")]), 1.0);
    assert_eq!(
        restarted.value("cod_executions", &[("state", "Completed")]),
        1.0
    );
    assert_eq!(restarted.value("cod_jobs_submitted_total", &[]), 0.0);
}

#[test]
fn metrics_need_a_credential_when_the_api_has_users_and_can_be_turned_off() {
    const READER_KEY: &str = "metrics-reader-key-0123456789";
    const SUBMIT_KEY: &str = "metrics-submit-key-0123456789";
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let config = conf_dir.path().join("auth.json");
    let users = json!({"API": {"Auth": {"Users": [
        {"Alias": "prometheus", "APIKey": READER_KEY, "Capabilities": [{"Actions": ["read"]}]},
        {"Alias": "ci", "APIKey": SUBMIT_KEY, "Capabilities": [{"Actions": ["write:job"]}]},
    ]}}});
    std::fs::write(&config, users.to_string()).expect("config");
    let orch = orchestrator(
        "metrics-auth",
        &["--config", config.to_str().expect("path")],
    );
    let (status, _, _) = scrape_raw(&orch, None);
    assert_eq!(status, 401);
    let (status, _, _) = scrape_raw(&orch, Some(&format!("Bearer {SUBMIT_KEY}")));
    assert_eq!(status, 403, "a key without read:agent");
    let (status, content_type, body) = scrape_raw(&orch, Some(&format!("Bearer {READER_KEY}")));
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let _ = parse(&body);

    let off = conf_dir.path().join("off.json");
    std::fs::write(&off, json!({"Metrics": {"Enabled": false}}).to_string()).expect("config");
    let quiet = orchestrator("metrics-off", &["--config", off.to_str().expect("path")]);
    let (status, _, body) = scrape_raw(&quiet, None);
    assert_eq!(status, 404);
    assert!(body.contains("Metrics.Enabled"), "{body}");
}

#[test]
fn the_strict_parser_rejects_what_prometheus_would() {
    let ok = "# HELP a_total A\n# TYPE a_total counter\na_total{x=\"q\\\"\\n\",y=\"2\"} 3\n";
    let s = parse(ok);
    assert_eq!(s.value("a_total", &[("x", "q\"\n"), ("y", "2")]), 3.0);
    for bad in [
        "a_total 1\n",                                           // no family
        "# HELP a_total A\n# TYPE a_total counter\nb_total 1\n", // wrong family
        "# HELP a A\n# TYPE a gauge\na x\n",                     // not a float
        "# HELP a A\n# TYPE a counter\na 1\n",                   // counter without _total
    ] {
        let caught = std::panic::catch_unwind(|| parse(bad));
        assert!(caught.is_err(), "accepted {bad:?}");
    }
}

#[test]
fn a_hybrid_node_reports_both_roles_in_one_valid_page() {
    let node = Cod::start("metrics-hybrid", &[]);
    let body = node.wait_terminal(&node.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    // Strict parsing also proves that no family is declared twice although both roles (and both
    // outboxes) report.
    let s = scrape(&node);
    assert_eq!(s.value("cod_jobs", &[("state", "Completed")]), 1.0);
    assert_eq!(
        s.value(
            "cod_compute_executions_finished_total",
            &[("outcome", "completed")]
        ),
        1.0
    );
    for role in ["orchestrator", "compute"] {
        s.value("cod_outbox_messages", &[("role", role)]);
        s.value(
            "cod_outbox_delivery_duration_seconds_count",
            &[("role", role)],
        );
    }
}
