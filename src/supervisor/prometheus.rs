//! The Prometheus text exposition format (version 0.0.4), written one way for every family
//! the supervisor exposes (`render.rs` and the autoscaler's status): a family's `# HELP` and
//! `# TYPE` lines, then its samples, label values escaped.

use std::fmt::{Display, Write};

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets with the process).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative `_bucket`s, `_sum` and `_count`.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The `/metrics` body being written.
#[derive(Debug, Default)]
pub struct MetricsText {
    out: String,
    /// Name of the family being written.
    family: &'static str,
}

impl MetricsText {
    /// An empty body.
    pub fn new() -> MetricsText {
        MetricsText::default()
    }

    /// Starts a family: its HELP and TYPE lines; samples that follow belong to it.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
        self.family = name;
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        self.sample_of("", labels, value)
    }

    /// One sample of the current family's series `<family><suffix>` (`_bucket`, `_sum`...).
    fn sample_of(
        &mut self,
        suffix: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(self.family);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (name, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{name}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// One histogram of the current family: a cumulative `_bucket` per upper bound (then
    /// `+Inf`), `_sum` and `_count`. `counts` are per bucket (not cumulative), the last one
    /// (if present) past the last bound.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) -> &mut Self {
        let mut cumulative = 0u64;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += counts.get(i).copied().unwrap_or(0);
            let le = bound.to_string();
            self.sample_of("_bucket", &with_label(labels, ("le", &le)), cumulative);
        }
        let count: u64 = counts.iter().sum();
        self.sample_of("_bucket", &with_label(labels, ("le", "+Inf")), count);
        self.sample_of("_sum", labels, sum);
        self.sample_of("_count", labels, count)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// `labels` plus one more at the end.
fn with_label<'a>(
    labels: &[(&'a str, &'a str)],
    extra: (&'a str, &'a str),
) -> Vec<(&'a str, &'a str)> {
    let mut all = labels.to_vec();
    all.push(extra);
    all
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut m = MetricsText::new();
        m.family("x_total", Kind::Counter, "Things.")
            .sample(&[("backend", "a\"b\\c\nd"), ("class", "2xx")], 3)
            .sample(&[], 1.5);
        m.family("up", Kind::Gauge, "Up.").sample(&[], 1);
        assert_eq!(
            m.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{backend=\"a\\\"b\\\\c\\nd\",class=\"2xx\"} 3\nx_total 1.5\n\
             # HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }

    #[test]
    fn histogram_is_cumulative_with_inf_sum_and_count() {
        let mut m = MetricsText::new();
        m.family("d_seconds", Kind::Histogram, "Time.").histogram(
            &[("backend", "w")],
            &[0.001, 0.5],
            &[2, 3, 4],
            1.25,
        );
        assert_eq!(
            m.finish(),
            "# HELP d_seconds Time.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{backend=\"w\",le=\"0.001\"} 2\n\
             d_seconds_bucket{backend=\"w\",le=\"0.5\"} 5\n\
             d_seconds_bucket{backend=\"w\",le=\"+Inf\"} 9\n\
             d_seconds_sum{backend=\"w\"} 1.25\n\
             d_seconds_count{backend=\"w\"} 9\n"
        );
    }
}
