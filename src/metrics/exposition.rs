//! Prometheus text exposition format 0.0.4: `# HELP` and `# TYPE` once per family, then its samples.
//!
//! Invariant kept by [`Encoder`]: every sample belongs to the family declared last, so a family's samples
//! are contiguous (the format requires it). Label values are escaped (`\\`, `\"`, `\n`) and help text
//! (`\\`, `\n`), so a node name or a peer id can never break a line.

use std::fmt::Write;

use super::{Histogram, LATENCY_BUCKETS};

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, `_sum` and `_count`.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Builds one scrape's text.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a family; its samples follow.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }

    /// A whole-number sample (counts).
    pub fn count(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        #[allow(clippy::cast_precision_loss)] // counts stay far below 2^53
        self.sample(name, labels, value as f64);
    }

    /// A declared family with one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.family(name, help, kind);
        self.sample(name, &[], value);
    }

    /// The `_bucket`, `_sum` and `_count` samples of `h` (declare the family first).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (cumulative, sum) = h.snapshot();
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let bounds: Vec<String> = LATENCY_BUCKETS.iter().map(|b| format_value(*b)).collect();
        for (i, n) in cumulative.iter().enumerate() {
            let le = bounds.get(i).map_or("+Inf", String::as_str);
            with_le.push(("le", le));
            self.count(&bucket, &with_le, *n);
            with_le.pop();
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        let total = cumulative.last().copied().unwrap_or(0);
        self.count(&format!("{name}_count"), labels, total);
    }

    /// The finished page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Go's strconv formatting as Prometheus clients use it: integers without a fraction, `+Inf`, `NaN`.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn writes_help_type_and_escaped_labels() {
        let mut e = Encoder::new();
        e.family("cod_x_total", "Things\nseen in C:\\", Kind::Counter);
        e.sample(
            "cod_x_total",
            &[("name", "a \"quoted\"\nback\\slash"), ("k", "v")],
            3.0,
        );
        e.single("cod_y", "A gauge", Kind::Gauge, 0.5);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP cod_x_total Things\\nseen in C:\\\\\n\
             # TYPE cod_x_total counter\n\
             cod_x_total{name=\"a \\\"quoted\\\"\\nback\\\\slash\",k=\"v\"} 3\n\
             # HELP cod_y A gauge\n\
             # TYPE cod_y gauge\n\
             cod_y 0.5\n"
        );
    }

    #[test]
    fn histograms_have_cumulative_buckets_inf_sum_and_count() {
        let h = Histogram::new();
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(30));
        let mut e = Encoder::new();
        e.family("cod_lat_seconds", "Latency", Kind::Histogram);
        e.histogram("cod_lat_seconds", &[("kind", "deliver")], &h);
        let text = e.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"cod_lat_seconds_bucket{kind=\"deliver\",le=\"0.001\"} 0"));
        assert!(lines.contains(&"cod_lat_seconds_bucket{kind=\"deliver\",le=\"0.0025\"} 2"));
        assert!(lines.contains(&"cod_lat_seconds_bucket{kind=\"deliver\",le=\"10\"} 2"));
        assert!(lines.contains(&"cod_lat_seconds_bucket{kind=\"deliver\",le=\"+Inf\"} 3"));
        assert!(lines.contains(&"cod_lat_seconds_count{kind=\"deliver\"} 3"));
        assert!(lines.contains(&"cod_lat_seconds_sum{kind=\"deliver\"} 30.004"));
        let buckets = lines.iter().filter(|l| l.contains("_bucket{")).count();
        assert_eq!(buckets, LATENCY_BUCKETS.len() + 1);
        // Buckets come in ascending order of their bound, ending in +Inf.
        let last_bucket = lines.iter().rev().find(|l| l.contains("_bucket{"));
        assert!(last_bucket.is_some_and(|l| l.contains("+Inf")));
    }

    #[test]
    fn special_values_use_prometheus_spelling() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(42.0), "42");
    }
}
