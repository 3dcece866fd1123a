//! Latency statistics: a small fixed-size log-linear histogram of microsecond values.
//!
//! Values below 128 µs are counted exactly; above, every power of two is split into 64 equal
//! buckets, so a reported percentile is at most ~1.6 % above the true value (percentiles report
//! the upper bound of their bucket, capped by the exact maximum). Values above ~134 s are
//! clamped. One histogram is 1,408 `u32` counters (5.6 KB), cheap enough to keep one per
//! connection and merge them afterwards; recording is a few instructions, no allocation.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 7;
/// Values below this are counted exactly.
const EXACT: u64 = 1 << SUB_BITS; // 128
/// Buckets per power of two above `EXACT`.
const HALF: u64 = EXACT / 2; // 64
/// Largest value kept as is (larger ones are clamped): 2^27 - 1 µs ≈ 134 s.
pub const MAX_VALUE: u64 = (1 << 27) - 1;
const BUCKETS: usize = index_of(MAX_VALUE) + 1;

const fn index_of(v: u64) -> usize {
    if v < EXACT {
        v as usize
    } else {
        let msb = 63 - v.leading_zeros() as u64;
        let shift = msb - (SUB_BITS as u64 - 1);
        (shift * HALF + (v >> shift)) as usize
    }
}

/// The highest value that falls into bucket `idx`.
const fn bucket_high(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < EXACT {
        idx
    } else {
        let shift = idx / HALF - 1;
        let sub = idx - shift * HALF;
        ((sub + 1) << shift) - 1
    }
}

/// A latency histogram in microseconds.
#[derive(Clone)]
pub struct LatHist {
    counts: Box<[u32]>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for LatHist {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LatHist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatHist")
            .field("count", &self.count)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

impl LatHist {
    /// An empty histogram.
    pub fn new() -> Self {
        LatHist {
            counts: vec![0u32; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value (µs).
    #[inline]
    pub fn record(&mut self, v: u64) {
        let v = v.min(MAX_VALUE);
        let c = &mut self.counts[index_of(v)];
        *c = c.saturating_add(1);
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LatHist) {
        if other.count == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest value recorded (0 if empty).
    #[cfg(test)]
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at percentile `p` (0..=100): the smallest bucket bound such that at least
    /// `p` % of the values are at or below it, capped by the exact maximum. 0 if empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return bucket_high(i).min(self.max).max(self.min);
            }
        }
        self.max
    }

    /// Mean (µs), 0 if empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// A summary in milliseconds.
    pub fn summary(&self) -> Summary {
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: self.count,
            min_ms: if self.count == 0 { 0.0 } else { ms(self.min) },
            p50_ms: ms(self.percentile(50.0)),
            p90_ms: ms(self.percentile(90.0)),
            p99_ms: ms(self.percentile(99.0)),
            p999_ms: ms(self.percentile(99.9)),
            max_ms: ms(self.max),
            mean_ms: round3(self.mean() / 1000.0),
        }
    }
}

/// A histogram's non-empty buckets, for JSON: the results of separate runs can be merged
/// exactly (`sio-loadgen connect-merge`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistDump {
    pub count: u64,
    pub sum_us: u64,
    pub min_us: u64,
    pub max_us: u64,
    /// `[bucket index, count]` of the non-empty buckets.
    pub buckets: Vec<(u32, u32)>,
}

impl LatHist {
    pub fn dump(&self) -> HistDump {
        HistDump {
            count: self.count,
            sum_us: self.sum,
            min_us: if self.count == 0 { 0 } else { self.min },
            max_us: self.max,
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
        }
    }

    /// The histogram of a [`HistDump`]; fails on a bucket index out of range.
    pub fn from_dump(d: &HistDump) -> anyhow::Result<LatHist> {
        let mut h = LatHist::new();
        for &(i, c) in &d.buckets {
            let slot = h
                .counts
                .get_mut(i as usize)
                .ok_or_else(|| anyhow::anyhow!("histogram bucket {i} out of range"))?;
            *slot = slot.saturating_add(c);
        }
        h.count = d.count;
        h.sum = d.sum_us;
        h.min = if d.count == 0 { u64::MAX } else { d.min_us };
        h.max = d.max_us;
        Ok(h)
    }
}

/// Latency summary, milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Rounds to 3 decimals (for JSON output that stays readable).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_monotonic_and_bounds_round_trip() {
        let mut last = 0usize;
        for v in 0..2_000_000u64 {
            let i = index_of(v);
            assert!(i >= last, "index decreased at {v}");
            assert!(i <= last + 1, "index skipped at {v}");
            assert!(
                bucket_high(i) >= v,
                "bucket {i} high {} < {v}",
                bucket_high(i)
            );
            if i > 0 {
                assert!(bucket_high(i - 1) < v, "value {v} fits an earlier bucket");
            }
            last = i;
        }
        assert_eq!(index_of(MAX_VALUE), BUCKETS - 1);
        assert_eq!(bucket_high(BUCKETS - 1), MAX_VALUE);
    }

    #[test]
    fn relative_error_is_small() {
        for v in [128u64, 1000, 12_345, 99_999, 1_000_000, 50_000_000] {
            let hi = bucket_high(index_of(v));
            let err = (hi - v) as f64 / v as f64;
            assert!(err <= 1.0 / 64.0 + 1e-9, "{v}: {hi} ({err})");
        }
    }

    #[test]
    fn exact_small_values() {
        let mut h = LatHist::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.percentile(100.0), 100);
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.max(), 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = LatHist::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (p, want) in [(50.0, 50_000u64), (90.0, 90_000), (99.0, 99_000)] {
            let got = h.percentile(p);
            assert!(got >= want, "p{p}: {got} < {want}");
            assert!(
                (got - want) as f64 / want as f64 <= 0.02,
                "p{p}: {got} vs {want}"
            );
        }
        assert_eq!(h.percentile(100.0), 100_000);
    }

    #[test]
    fn max_caps_percentiles_and_outliers_show() {
        let mut h = LatHist::new();
        for _ in 0..990 {
            h.record(1_000);
        }
        for _ in 0..10 {
            h.record(400_000);
        }
        assert!(h.percentile(50.0) >= 1_000 && h.percentile(50.0) <= 1_016);
        assert!(h.percentile(99.0) <= 1_016, "{}", h.percentile(99.0));
        assert_eq!(h.percentile(99.9), 400_000);
        assert_eq!(h.max(), 400_000);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = LatHist::new();
        let mut b = LatHist::new();
        for v in 0..500 {
            a.record(v);
            b.record(v + 500);
        }
        let mut m = LatHist::new();
        m.merge(&a);
        m.merge(&b);
        m.merge(&LatHist::new());
        assert_eq!(m.count(), 1000);
        assert_eq!(m.max(), 999);
        assert_eq!(m.summary().min_ms, 0.0);
        let p50 = m.percentile(50.0);
        assert!((499..=504).contains(&p50), "{p50}");
    }

    #[test]
    fn empty_and_clamped() {
        let h = LatHist::new();
        assert_eq!(h.percentile(99.0), 0);
        assert_eq!(h.summary(), Summary::default());
        let mut h = LatHist::new();
        h.record(u64::MAX);
        assert_eq!(h.max(), MAX_VALUE);
        assert_eq!(h.percentile(50.0), MAX_VALUE);
    }

    #[test]
    fn summary_is_in_ms() {
        let mut h = LatHist::new();
        h.record(2_000);
        let s = h.summary();
        assert_eq!(s.count, 1);
        assert!((s.p50_ms - 2.0).abs() < 0.05);
        assert_eq!(s.max_ms, 2.0);
        assert_eq!(round3(1.23456), 1.235);
    }

    #[test]
    fn dump_round_trip_and_merge() {
        let mut a = LatHist::new();
        let mut b = LatHist::new();
        let mut all = LatHist::new();
        for v in [3u64, 150, 900, 12_000, 77] {
            a.record(v);
            all.record(v);
        }
        for v in [5u64, 2_500_000, 640] {
            b.record(v);
            all.record(v);
        }
        let d = a.dump();
        assert_eq!(d.count, 5);
        assert_eq!(d.buckets.len(), 5);
        let back = LatHist::from_dump(&d).unwrap();
        assert_eq!(back.summary(), a.summary());
        let json = serde_json::to_string(&b.dump()).unwrap();
        let b2: HistDump = serde_json::from_str(&json).unwrap();
        let mut m = LatHist::from_dump(&d).unwrap();
        m.merge(&LatHist::from_dump(&b2).unwrap());
        assert_eq!(m.summary(), all.summary());
        let empty = LatHist::from_dump(&LatHist::new().dump()).unwrap();
        assert_eq!(empty.summary(), LatHist::new().summary());
        let bad = HistDump {
            buckets: vec![(u32::MAX, 1)],
            ..LatHist::new().dump()
        };
        assert!(LatHist::from_dump(&bad).is_err());
    }
}
