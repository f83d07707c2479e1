//! Rendering for the terminal: aligned tables, key/value blocks, JSON and YAML, short ids and human times.
//!
//! Everything renders to a `String` first (so tests compare text) and reaches stdout through [`emit`], which
//! returns write errors instead of panicking like `print!`: a closed pipe (`cod job list | head -1`) becomes
//! an `io::ErrorKind::BrokenPipe` that `main` treats as success.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

/// `--output`: how data is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned columns for people (the default).
    #[default]
    Table,
    /// Pretty-printed JSON with Bacalhau's key names.
    Json,
    /// YAML with Bacalhau's key names.
    Yaml,
}

impl FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" => Ok(Self::Table),
            "json" => Ok(Self::Json),
            "yaml" | "yml" => Ok(Self::Yaml),
            other => Err(format!(
                "unknown output format {other:?} (use table, json or yaml)"
            )),
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Table => "table",
            Self::Json => "json",
            Self::Yaml => "yaml",
        })
    }
}

/// Writes `text` to stdout and flushes, returning (not panicking on) write errors.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

/// Writes `text` and a newline to stdout.
pub fn emit_line(text: &str) -> anyhow::Result<()> {
    emit(&format!("{text}\n"))
}

/// Writes a diagnostic line to stderr. Write errors are ignored: there is nowhere left to report them, and
/// unlike `eprintln!` this cannot panic.
pub fn diag(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Writes `text` to stderr as is (a job's stderr log lines), returning write errors.
pub fn emit_stderr(text: &str) -> anyhow::Result<()> {
    let mut err = std::io::stderr().lock();
    err.write_all(text.as_bytes())
        .context("writing to stderr")?;
    err.flush().context("writing to stderr")
}

/// Renders `value` as JSON or YAML; `None` for [`OutputFormat::Table`], which each command renders itself.
pub fn render_structured(
    value: &impl Serialize,
    format: OutputFormat,
) -> anyhow::Result<Option<String>> {
    match format {
        OutputFormat::Table => Ok(None),
        OutputFormat::Json => {
            let mut text =
                serde_json::to_string_pretty(value).context("encoding the output as JSON")?;
            text.push('\n');
            Ok(Some(text))
        }
        OutputFormat::Yaml => Ok(Some(to_yaml(value)?)),
    }
}

/// Renders `value` as YAML.
pub fn to_yaml(value: &impl Serialize) -> anyhow::Result<String> {
    serde_yaml_ng::to_string(value).context("encoding the output as YAML")
}

/// A table with a header row; columns are padded to their widest cell and separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (written in upper case, as Bacalhau's tables are).
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank and extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, no trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let cell = |row: &[String], i: usize| -> String {
            // Newlines would break the columns; messages are kept on one line.
            row.get(i)
                .map(|c| c.replace(['\n', '\r'], " "))
                .unwrap_or_default()
        };
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, width) in widths.iter_mut().enumerate() {
                *width = (*width).max(cell(row, i).chars().count());
            }
        }
        let mut out = String::new();
        let all = std::iter::once(&self.headers).chain(self.rows.iter());
        for row in all {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let text = cell(row, i);
                line.push_str(&text);
                if i + 1 < columns {
                    let pad = width.saturating_sub(text.chars().count());
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Renders `Key: value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let pad = width - key.chars().count();
        out.push_str(&format!("{key}{:pad$} = {value}\n", "", pad = pad));
    }
    out
}

/// The short form of an id for tables: the prefix and first UUID block (`j-1a2b3c4d`). Ids that are not
/// UUID-shaped (a libp2p peer id) are cut to 12 characters, which is still unique in practice and accepted by
/// the API's prefix matching.
pub fn short_id(id: &str) -> String {
    let (prefix, rest) = match id.split_once('-') {
        Some((p, r)) if p.len() == 1 && p.chars().all(|c| c.is_ascii_alphabetic()) => {
            (&id[..p.len() + 1], r)
        }
        _ => ("", id),
    };
    let looks_like_uuid =
        rest.len() == 36 && rest.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if looks_like_uuid {
        return format!("{prefix}{}", &rest[..8]);
    }
    id.chars().take(12).collect()
}

/// A Unix-nanoseconds timestamp as `SystemTime`.
fn from_nanos(ns: i64) -> Option<SystemTime> {
    let ns = u64::try_from(ns).ok().filter(|n| *n > 0)?;
    UNIX_EPOCH.checked_add(Duration::from_nanos(ns))
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, Bacalhau's `time.DateTime` layout (it prints local time; the CLI has no time
/// zone database, so it says UTC).
pub fn date_time(ns: i64) -> String {
    match from_nanos(ns) {
        None => "-".to_owned(),
        Some(t) => {
            let text = humantime::format_rfc3339_seconds(t).to_string();
            text.trim_end_matches('Z').replacen('T', " ", 1)
        }
    }
}

/// A compact creation time for list tables: the time of day when it is today (UTC), else the date.
pub fn created(ns: i64, now: SystemTime) -> String {
    let full = date_time(ns);
    let today = date_time(
        now.duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_nanos()).ok())
            .unwrap_or_default(),
    );
    match (full.split_once(' '), today.split_once(' ')) {
        (Some((day, time)), Some((this_day, _))) if day == this_day => time.to_owned(),
        (Some((day, _)), _) => day.to_owned(),
        _ => full,
    }
}

/// How long ago `ns` was, coarsely: `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn elapsed(ns: i64, now: SystemTime) -> String {
    let Some(then) = from_nanos(ns) else {
        return "-".to_owned();
    };
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Bytes in binary units for node tables (`1.5 GiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_upper_cases_headers() {
        let mut t = Table::new(&["created", "id", "type", "state"]);
        t.row(vec![
            "10:00:00".into(),
            "j-1a2b3c4d".into(),
            "batch".into(),
            "Completed".into(),
        ]);
        t.row(vec![
            "2024-01-02".into(),
            "j-99".into(),
            "ops".into(),
            "Failed\nbadly".into(),
        ]);
        let expected = "\
CREATED     ID          TYPE   STATE
10:00:00    j-1a2b3c4d  batch  Completed
2024-01-02  j-99        ops    Failed badly
";
        assert_eq!(t.render(), expected);
    }

    #[test]
    fn table_with_missing_cells_has_no_trailing_spaces() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["x".into()]);
        assert_eq!(t.render(), "A  B\nx\n");
    }

    #[test]
    fn key_values_align() {
        let text = key_values(&[("ID", "j-1".into()), ("Namespace", "default".into())]);
        assert_eq!(text, "ID        = j-1\nNamespace = default\n");
    }

    #[test]
    fn short_ids_keep_the_prefix_and_first_block() {
        assert_eq!(
            short_id("j-1a2b3c4d-0000-4000-8000-000000000000"),
            "j-1a2b3c4d"
        );
        assert_eq!(
            short_id("e-1a2b3c4d-0000-4000-8000-000000000000"),
            "e-1a2b3c4d"
        );
        assert_eq!(short_id("1a2b3c4d-0000-4000-8000-000000000000"), "1a2b3c4d");
        assert_eq!(short_id("12D3KooWAbCdEfGhIjKlMnOp"), "12D3KooWAbCd");
        assert_eq!(short_id("j-short"), "j-short");
    }

    #[test]
    fn times_render_in_utc() {
        let ns = 1_700_000_000_000_000_000; // 2023-11-14 22:13:20 UTC
        assert_eq!(date_time(ns), "2023-11-14 22:13:20");
        let same_day = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        assert_eq!(created(ns, same_day), "22:13:20");
        let next_day = UNIX_EPOCH + Duration::from_secs(1_700_100_000);
        assert_eq!(created(ns, next_day), "2023-11-14");
        assert_eq!(elapsed(ns, same_day), "1m ago");
        assert_eq!(date_time(0), "-");
    }

    #[test]
    fn output_format_parses_case_insensitively() {
        assert_eq!("JSON".parse::<OutputFormat>(), Ok(OutputFormat::Json));
        assert!("xml".parse::<OutputFormat>().is_err());
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536 * 1024 * 1024), "1.5 GiB");
    }
}
