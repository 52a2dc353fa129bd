//! API keys: `Authorization: Bearer KEY` or `x-api-key: KEY`, compared in
//! constant time against every configured key (BLAKE3 digests, so key
//! lengths leak nothing either). When any key is configured, every route but
//! /health needs one; the decision uses the matched route, and a request
//! that matched no route is denied like any other (deny by default).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::error::ApiError;
use super::ratelimit::KeyLimits;
use super::AppState;
use crate::config::KeySpec;

/// Routes reachable without a key.
const PUBLIC_ROUTES: &[&str] = &["/health", "/live"];

/// Who made the request: inserted into every request's extensions.
#[derive(Clone)]
pub struct Caller {
    /// The key's name ("anonymous" without auth); never the key itself.
    pub name: Arc<str>,
    pub limits: Option<Arc<KeyLimits>>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller { name: Arc::from("anonymous"), limits: None }
    }
}

struct StoredKey {
    digest: [u8; 32],
    caller: Caller,
}

/// Every configured key, hashed.
pub struct KeyStore {
    keys: Vec<StoredKey>,
}

impl KeyStore {
    pub fn new(specs: &[KeySpec]) -> Self {
        let keys = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let name: Arc<str> = Arc::from(s.name.clone().unwrap_or_else(|| format!("key-{}", i + 1)));
                let limits = KeyLimits::from_spec(s, &name).map(Arc::new);
                StoredKey { digest: *blake3::hash(s.key.as_bytes()).as_bytes(), caller: Caller { name, limits } }
            })
            .collect();
        KeyStore { keys }
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Looks `presented` up touching every stored key the same way,
    /// whatever matches.
    pub fn verify(&self, presented: &str) -> Option<Caller> {
        let digest = blake3::hash(presented.as_bytes());
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u32;
        for (i, k) in self.keys.iter().enumerate() {
            let eq = k.digest.ct_eq(digest.as_bytes());
            index.conditional_assign(&(i as u32), eq);
            found |= eq;
        }
        bool::from(found).then(|| self.keys[index as usize].caller.clone())
    }
}

/// The key a request presents, if any.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let scheme_len = "bearer ".len();
        if v.len() > scheme_len && v[..scheme_len].eq_ignore_ascii_case("bearer ") {
            return Some(v[scheme_len..].trim());
        }
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Who owns what this request creates and may see (files, batches,
/// stored responses): a digest of the key, so ownership survives restarts
/// and renamed keys; "anonymous" without keys. The auth layer has already
/// checked the key.
pub fn owner_of(app: &AppState, headers: &HeaderMap) -> String {
    match presented_key(headers) {
        Some(key) if app.keys.is_enabled() => format!("key:{}", &blake3::hash(key.as_bytes()).to_hex()[..32]),
        _ => "anonymous".into(),
    }
}

/// Middleware: authenticates and inserts the `Caller`.
pub async fn require_key(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let store = &state.keys;
    let public = req.extensions().get::<MatchedPath>().is_some_and(|p| PUBLIC_ROUTES.contains(&p.as_str()));
    if !store.is_enabled() || public {
        req.extensions_mut().insert(Caller::anonymous());
        return next.run(req).await;
    }
    let caller = match presented_key(req.headers()) {
        None => {
            return ApiError::InvalidApiKey(
                "You didn't provide an API key. Provide it as 'Authorization: Bearer YOUR_KEY' or 'x-api-key: YOUR_KEY'."
                    .into(),
            )
            .into_response()
        }
        Some(k) => store.verify(k),
    };
    let Some(caller) = caller else {
        return ApiError::InvalidApiKey("Incorrect API key provided.".into()).into_response();
    };
    if let Some(rec) = req.extensions().get::<super::reqlog::RequestRecord>() {
        rec.set_key_name(&caller.name);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str, name: &str) -> KeySpec {
        KeySpec { key: key.into(), name: Some(name.into()), rpm: None, rpd: None, tpm: None }
    }

    #[test]
    fn verify_finds_the_right_key() {
        let store = KeyStore::new(&[spec("sk-one", "one"), spec("sk-two", "two")]);
        assert_eq!(&*store.verify("sk-two").unwrap().name, "two");
        assert_eq!(&*store.verify("sk-one").unwrap().name, "one");
        assert!(store.verify("sk-three").is_none());
        assert!(store.verify("").is_none());
        assert!(store.verify("sk-on").is_none());
    }

    #[test]
    fn both_header_forms() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer  sk-x ".parse().unwrap());
        assert_eq!(presented_key(&h), Some("sk-x"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer sk-y".parse().unwrap());
        assert_eq!(presented_key(&h), Some("sk-y"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "sk-z".parse().unwrap());
        assert_eq!(presented_key(&h), Some("sk-z"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), None);
    }
}
