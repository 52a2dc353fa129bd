//! Per-key limits, as hosted APIs sell them: requests per minute, requests
//! per day and tokens per minute, each a GCRA bucket from `governor` whose
//! burst is the whole limit.
//!
//! Tokens are charged at admission as prompt + max completion; when the
//! request ends, the unused part is credited back. Governor cannot refund a
//! bucket, so credits are kept beside it for one window (60 s) and spent
//! before the bucket is charged again.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::error::ApiError;
use crate::config::KeySpec;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// Where one limit stands after a decision, for the x-ratelimit-* headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub limit: u32,
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// The headers to attach to the response of a keyed request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateHeaders {
    pub requests: Option<WindowState>,
    pub tokens: Option<WindowState>,
}

impl RateHeaders {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (kind, state) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(s) = state else { continue };
            let mut put = |name: &str, value: String| {
                if let (Ok(n), Ok(v)) = (axum::http::HeaderName::try_from(name), HeaderValue::try_from(value)) {
                    headers.insert(n, v);
                }
            };
            put(&format!("x-ratelimit-limit-{kind}"), s.limit.to_string());
            put(&format!("x-ratelimit-remaining-{kind}"), s.remaining.to_string());
            put(&format!("x-ratelimit-reset-{kind}"), format_duration(s.reset));
        }
    }
}

/// Go-style durations as OpenAI sends them: "250ms", "4.5s", "1m30s", "2h0m0s".
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let s = format!("{:.3}", secs);
        return format!("{}s", s.trim_end_matches('0').trim_end_matches('.'));
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

type Gcra = DefaultDirectRateLimiter<StateInformationMiddleware>;

/// One limit: `limit` cells per `period`, all of them available as a burst.
struct Window {
    gcra: Gcra,
    limit: NonZeroU32,
    period: Duration,
    clock: DefaultClock,
}

/// A refused take: how long to wait, and whether waiting can ever help.
struct Refused {
    retry_after: Duration,
    state: WindowState,
    never: bool,
}

impl Window {
    fn new(limit: NonZeroU32, period: Duration) -> Self {
        let per_cell = period / limit.get();
        let quota = Quota::with_period(per_cell.max(Duration::from_nanos(1))).expect("non-zero period").allow_burst(limit);
        let clock = DefaultClock::default();
        let gcra = RateLimiter::direct_with_clock(quota, clock.clone()).with_middleware::<StateInformationMiddleware>();
        Window { gcra, limit, period, clock }
    }

    fn state(&self, remaining: u32) -> WindowState {
        let missing = self.limit.get().saturating_sub(remaining);
        WindowState { limit: self.limit.get(), remaining, reset: self.period / self.limit.get() * missing }
    }

    fn take(&self, n: u32) -> Result<WindowState, Refused> {
        let Some(n) = NonZeroU32::new(n) else { return Ok(self.state(self.limit.get())) };
        match self.gcra.check_n(n) {
            Ok(Ok(snap)) => Ok(self.state(snap.remaining_burst_capacity())),
            Ok(Err(not_until)) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                Err(Refused { retry_after, state: self.state(0), never: false })
            }
            Err(_) => Err(Refused { retry_after: self.period, state: self.state(0), never: true }),
        }
    }
}

/// Tokens per minute with credits for what admitted requests did not use.
/// Every take goes through the mutex, so the last GCRA snapshot plus the
/// time since gives the bucket's level without consuming a cell.
struct TokenWindow {
    window: Window,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// (when credited, tokens), oldest first; each expires after a minute.
    credits: VecDeque<(Instant, u32)>,
    /// Bucket level at the last successful take.
    last: Option<(Instant, u32)>,
}

impl TokenWindow {
    fn new(window: Window) -> Self {
        TokenWindow { window, ledger: Mutex::new(Ledger::default()) }
    }

    fn level_now(&self, ledger: &Ledger, now: Instant) -> u32 {
        let limit = self.window.limit.get();
        let Some((t, rem)) = ledger.last else { return limit };
        let per_cell = self.window.period / limit;
        let refilled = (now.duration_since(t).as_nanos() / per_cell.as_nanos().max(1)) as u64;
        (rem as u64 + refilled).min(limit as u64) as u32
    }

    fn take(&self, n: u32) -> Result<WindowState, Refused> {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while ledger.credits.front().is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE) {
            ledger.credits.pop_front();
        }
        let saved = ledger.credits.clone();
        let mut need = n;
        while need > 0 {
            let Some(front) = ledger.credits.front_mut() else { break };
            let used = front.1.min(need);
            front.1 -= used;
            need -= used;
            if front.1 == 0 {
                ledger.credits.pop_front();
            }
        }
        let banked: u32 = ledger.credits.iter().map(|c| c.1).sum();
        let taken = if need == 0 { Ok(self.window.state(self.level_now(&ledger, now))) } else { self.window.take(need) };
        match taken {
            Ok(mut s) => {
                ledger.last = Some((now, s.remaining));
                s.remaining = s.remaining.saturating_add(banked).min(s.limit);
                Ok(s)
            }
            Err(r) => {
                ledger.credits = saved;
                Err(r)
            }
        }
    }

    fn credit(&self, n: u32) {
        if n > 0 {
            let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger.credits.push_back((Instant::now(), n));
        }
    }
}

/// The limits of one key.
pub struct KeyLimits {
    name: String,
    rpm: Option<Window>,
    rpd: Option<Window>,
    tpm: Option<TokenWindow>,
}

impl KeyLimits {
    /// None when the key has no limit at all.
    pub fn from_spec(spec: &KeySpec, name: &str) -> Option<KeyLimits> {
        let w = |l: Option<u32>, p| l.and_then(NonZeroU32::new).map(|l| Window::new(l, p));
        let limits = KeyLimits {
            name: name.to_string(),
            rpm: w(spec.rpm, MINUTE),
            rpd: w(spec.rpd, DAY),
            tpm: w(spec.tpm, MINUTE).map(TokenWindow::new),
        };
        (limits.rpm.is_some() || limits.rpd.is_some() || limits.tpm.is_some()).then_some(limits)
    }

    /// Counts one request against rpm and rpd. The headers report the
    /// per-minute window when there is one, else the daily one.
    pub fn admit_request(&self, headers: &mut RateHeaders) -> Result<(), ApiError> {
        for (window, label) in [(&self.rpd, "requests per day (RPD)"), (&self.rpm, "requests per minute (RPM)")] {
            let Some(w) = window else { continue };
            match w.take(1) {
                Ok(s) => headers.requests = Some(s),
                Err(r) => {
                    headers.requests = Some(r.state);
                    return Err(self.refusal(label, w.limit.get(), 1, &r, "requests"));
                }
            }
        }
        Ok(())
    }

    /// Charges `n` tokens (prompt + max completion).
    pub fn admit_tokens(&self, n: usize, headers: &mut RateHeaders) -> Result<(), ApiError> {
        let Some(t) = &self.tpm else { return Ok(()) };
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match t.take(n) {
            Ok(s) => {
                headers.tokens = Some(s);
                Ok(())
            }
            Err(r) => {
                headers.tokens = Some(r.state);
                Err(self.refusal("tokens per minute (TPM)", t.window.limit.get(), n, &r, "tokens"))
            }
        }
    }

    /// Returns what an admitted request did not use.
    pub fn settle_tokens(&self, charged: usize, used: usize) {
        if let Some(t) = &self.tpm {
            t.credit(u32::try_from(charged.saturating_sub(used)).unwrap_or(u32::MAX));
        }
    }

    fn refusal(&self, label: &str, limit: u32, requested: u32, r: &Refused, kind: &'static str) -> ApiError {
        let message = if r.never {
            format!("Request too large for {label} on key '{}': Limit {limit}, Requested {requested}.", self.name)
        } else {
            format!(
                "Rate limit reached for {label} on key '{}': Limit {limit}, Requested {requested}. Please try again in {}.",
                self.name,
                format_duration(r.retry_after)
            )
        };
        let retry_after_secs = r.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        ApiError::RateLimited { message, kind, retry_after_secs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rpm: Option<u32>, rpd: Option<u32>, tpm: Option<u32>) -> KeySpec {
        KeySpec { key: "k".into(), name: Some("t".into()), rpm, rpd, tpm }
    }

    #[test]
    fn durations_format_like_openai() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(4500)), "4.5s");
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h0m0s");
    }

    #[test]
    fn requests_per_minute_burst_then_refuse() {
        let l = KeyLimits::from_spec(&spec(Some(3), None, None), "t").unwrap();
        let mut h = RateHeaders::default();
        for left in [2, 1, 0] {
            l.admit_request(&mut h).unwrap();
            assert_eq!(h.requests.unwrap().remaining, left);
        }
        let e = l.admit_request(&mut h).unwrap_err();
        assert!(matches!(e, ApiError::RateLimited { kind: "requests", retry_after_secs: 20, .. }), "{e:?}");
        let s = h.requests.unwrap();
        assert_eq!((s.limit, s.remaining, s.reset), (3, 0, MINUTE));
        let mut map = HeaderMap::new();
        h.apply(&mut map);
        assert_eq!(map["x-ratelimit-limit-requests"], "3");
        assert_eq!(map["x-ratelimit-remaining-requests"], "0");
        assert_eq!(map["x-ratelimit-reset-requests"], "1m0s");
    }

    #[test]
    fn daily_limit_applies_too() {
        let l = KeyLimits::from_spec(&spec(Some(100), Some(1), None), "t").unwrap();
        let mut h = RateHeaders::default();
        l.admit_request(&mut h).unwrap();
        let e = l.admit_request(&mut h).unwrap_err();
        assert!(e.to_string().contains("RPD"), "{e}");
    }

    #[test]
    fn tokens_are_credited_back() {
        let l = KeyLimits::from_spec(&spec(None, None, Some(100)), "t").unwrap();
        let mut h = RateHeaders::default();
        l.admit_tokens(80, &mut h).unwrap();
        assert_eq!(h.tokens.unwrap().remaining, 20);
        assert!(l.admit_tokens(50, &mut h).is_err());
        l.settle_tokens(80, 30);
        l.admit_tokens(50, &mut h).unwrap();
        assert_eq!(h.tokens.unwrap().remaining, 20);
        let e = l.admit_tokens(101, &mut h).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn unlimited_key_has_no_limiter() {
        assert!(KeyLimits::from_spec(&spec(None, None, None), "t").is_none());
    }
}
