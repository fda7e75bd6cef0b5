//! Results: latency histograms, the end-of-run table for people and the JSON for machines.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 5 minutes, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 300_000_000, 3).expect("valid histogram bounds")
}

/// Records `micros`, clamping to the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    let _ = histogram.record(micros.clamp(1, 300_000_000));
}

/// A histogram as (value, count) pairs, for carrying between worker processes.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct HistogramData(pub Vec<(u64, u64)>);

impl HistogramData {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        HistogramData(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these counts into `h`.
    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            let _ = h.record_n(value.clamp(1, 300_000_000), count);
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            samples: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }

    /// `p50 1.2 ms · p90 … · max …`.
    pub fn describe(&self) -> String {
        if self.samples == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {} · p90 {} · p99 {} · p99.9 {} · max {}  ({} samples)",
            micros(self.p50_us),
            micros(self.p90_us),
            micros(self.p99_us),
            micros(self.p999_us),
            micros(self.max_us),
            self.samples
        )
    }
}

/// `850 µs`, `12.3 ms`, `2.50 s`.
pub fn micros(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1,234,567/s` from a count and seconds.
pub fn rate(count: u64, seconds: f64) -> String {
    if seconds <= 0.0 {
        return "-".into();
    }
    format!("{}/s", thousands((count as f64 / seconds).round() as u64))
}

/// A two-column table: one titled block of labelled rows.
pub struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, label: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.rows.push((label.into(), value.into()));
        self
    }

    pub fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!(
            "\n{}\n{}\n",
            self.title,
            "─".repeat(self.title.chars().count())
        );
        for (label, value) in &self.rows {
            let pad = width - label.chars().count();
            out.push_str(&format!("  {label}{}  {value}\n", " ".repeat(pad)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_and_carries_histograms() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(12_300), "12.30 ms");
        let mut h = new_histogram();
        for v in 1..=1000 {
            record(&mut h, v);
        }
        let data = HistogramData::from_histogram(&h);
        let mut back = new_histogram();
        data.add_to(&mut back);
        assert_eq!(back.len(), 1000);
        let l = Latency::of(&back);
        assert!((495..=505).contains(&l.p50_us), "{l:?}");
        assert_eq!(l.max_us, 1000);
    }
}
