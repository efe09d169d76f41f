//! Rate limits on kept spans: a token bucket, and per-tenant buckets in a
//! bounded LRU map.
//!
//! Guarantees: time comes from the caller (monotonic ns), so behaviour is
//! deterministic under test; a bucket never holds more than its burst; the
//! tenant map never holds more than `max_tenants` entries and counts evictions.

use std::num::NonZeroUsize;

use lru::LruCache;

/// A token bucket: `rate` tokens per second, at most `burst` banked.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_ns: f64,
    burst: f64,
    tokens: f64,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: f64, burst: u32, now_ns: u64) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate_per_ns: per_second.max(0.0) / 1e9, burst, tokens: burst, last_ns: now_ns }
    }

    /// Changes rate and burst, keeping the tokens banked (capped to the new burst).
    pub fn reconfigure(&mut self, per_second: f64, burst: u32) {
        self.rate_per_ns = per_second.max(0.0) / 1e9;
        self.burst = f64::from(burst.max(1));
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + elapsed as f64 * self.rate_per_ns).min(self.burst);
    }

    /// Takes `n` tokens if all are available (all or nothing).
    pub fn try_take(&mut self, n: u32, now_ns: u64) -> bool {
        self.refill(now_ns);
        let n = f64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Tokens currently available (after refilling to `now_ns`).
    pub fn available(&mut self, now_ns: u64) -> f64 {
        self.refill(now_ns);
        self.tokens
    }
}

/// One token bucket per tenant, at most `max_tenants` of them (LRU).
#[derive(Debug)]
pub struct TenantBudgets {
    per_second: f64,
    burst: u32,
    buckets: LruCache<String, TokenBucket>,
    /// Tenants evicted to make room for new ones.
    pub evictions: u64,
}

impl TenantBudgets {
    pub fn new(per_second: f64, burst: u32, max_tenants: usize) -> Self {
        let cap = NonZeroUsize::new(max_tenants).unwrap_or(NonZeroUsize::MIN);
        Self { per_second, burst, buckets: LruCache::new(cap), evictions: 0 }
    }

    /// Changes limits for all tenants (existing buckets keep their tokens).
    pub fn reconfigure(&mut self, per_second: f64, burst: u32, max_tenants: usize) {
        self.per_second = per_second;
        self.burst = burst;
        for (_, b) in self.buckets.iter_mut() {
            b.reconfigure(per_second, burst);
        }
        let cap = NonZeroUsize::new(max_tenants).unwrap_or(NonZeroUsize::MIN);
        let before = self.buckets.len();
        self.buckets.resize(cap);
        self.evictions += before.saturating_sub(self.buckets.len()) as u64;
    }

    /// Takes `n` tokens from `tenant`'s bucket (a new tenant starts full).
    pub fn try_take(&mut self, tenant: &str, n: u32, now_ns: u64) -> bool {
        if let Some(b) = self.buckets.get_mut(tenant) {
            return b.try_take(n, now_ns);
        }
        let mut b = TokenBucket::new(self.per_second, self.burst, now_ns);
        let ok = b.try_take(n, now_ns);
        if self.buckets.push(tenant.to_owned(), b).is_some() {
            self.evictions += 1;
        }
        ok
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn bucket_allows_burst_then_sustained_rate() {
        let mut b = TokenBucket::new(10.0, 5, 0);
        let burst = (0..20).filter(|_| b.try_take(1, 0)).count();
        assert_eq!(burst, 5);
        // One second later 10 more tokens, capped at burst 5.
        let after = (0..20).filter(|_| b.try_take(1, SEC)).count();
        assert_eq!(after, 5);
        // 100 ms later: exactly one token.
        assert!(b.try_take(1, SEC + SEC / 10));
        assert!(!b.try_take(1, SEC + SEC / 10));
    }

    #[test]
    fn bucket_over_a_long_run_keeps_the_rate() {
        let mut b = TokenBucket::new(100.0, 10, 0);
        // 10,000 requests over 10 s (1 per ms): ~1000 + burst allowed.
        let kept = (0..10_000u64).filter(|i| b.try_take(1, i * SEC / 1000)).count();
        assert!((1000..=1011).contains(&kept), "kept {kept}");
    }

    #[test]
    fn bucket_takes_all_or_nothing_and_ignores_time_going_backwards() {
        let mut b = TokenBucket::new(1.0, 3, 10 * SEC);
        assert!(!b.try_take(4, 10 * SEC));
        assert!(b.try_take(3, 10 * SEC));
        assert!(!b.try_take(1, 5 * SEC));
        assert!(b.try_take(1, 11 * SEC));
    }

    #[test]
    fn reconfigure_caps_tokens_to_new_burst() {
        let mut b = TokenBucket::new(1.0, 100, 0);
        b.reconfigure(1.0, 2);
        assert_eq!(b.available(0), 2.0);
    }

    #[test]
    fn tenants_have_separate_budgets_and_map_is_bounded() {
        let mut t = TenantBudgets::new(1.0, 2, 3);
        assert!(t.try_take("a", 2, 0));
        assert!(!t.try_take("a", 1, 0));
        assert!(t.try_take("b", 1, 0));
        for name in ["c", "d", "e"] {
            assert!(t.try_take(name, 1, 0));
        }
        assert_eq!(t.tracked(), 3);
        assert_eq!(t.evictions, 2);
        // "a" was evicted: it comes back with a full bucket.
        assert!(t.try_take("a", 2, 0));
    }
}
