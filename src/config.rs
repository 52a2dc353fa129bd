//! Engine and server configuration.
//!
//! `ServerConfig` holds every `kiln serve` flag of the HTTP layer (engine
//! flags live with the engine). It is checked once by `ServerConfig::keys`
//! / `ServerConfig::check` before the server starts.

use std::path::{Path, PathBuf};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// HTTP server flags of `kiln serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Address to bind; 127.0.0.1 keeps the server local, 0.0.0.0 exposes it.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port to listen on (0: any free port, logged at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Model name clients must send in `model` (default: the model file's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// An accepted API key (repeatable). With any key set, every route but /health needs one.
    #[arg(long = "api-key", env = "KILN_API_KEY", hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// TOML or JSON file of keys with names and per-key limits (rpm, rpd, tpm).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Largest `n` (completions per prompt) a request may ask for.
    #[arg(long, default_value_t = 8)]
    pub max_n: usize,
    /// Most stop strings per request.
    #[arg(long, default_value_t = 4)]
    pub max_stop: usize,
    /// Largest request body; bigger bodies get 413 before they are read.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Requests allowed to wait for their first token; beyond it, 503.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting: usize,
    /// Most prompts in one /v1/completions request.
    #[arg(long, default_value_t = 32)]
    pub max_prompts: usize,
    /// Most `top_logprobs` (chat) / `logprobs` (completions) alternatives.
    #[arg(long, default_value_t = 20)]
    pub max_logprobs: usize,
    /// Seconds in-flight requests may drain after SIGTERM/SIGINT before they are aborted.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Seconds without a heartbeat from an engine thread (it beats after
    /// every step, and twice a second when idle) before /health says 503.
    #[arg(long, default_value_t = 5)]
    pub engine_heartbeat_timeout: u64,
    /// Allowed CORS origin (repeatable; "*" allows any). CORS is off when none is given.
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
    /// Log lines as text or as JSON objects.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds between SSE keep-alive comments on an idle stream.
    #[arg(long, default_value_t = 15)]
    pub sse_keepalive: u64,
    /// Batch API (/v1/files, /v1/batches): directory of its SQLite database
    /// and files. An empty path turns the batch API off (it answers 503).
    #[arg(long, env = "KILN_DATA_DIR", default_value_os_t = default_data_dir(),
          value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from))]
    pub data_dir: PathBuf,
    /// Largest file POST /v1/files accepts, in bytes; bigger uploads get 413.
    #[arg(long, default_value_t = 200 * 1024 * 1024)]
    pub max_file_bytes: u64,
    /// Batch-API sequences in flight at most; batch work runs below
    /// interactive requests and only fills the capacity they leave.
    #[arg(long, default_value_t = std::num::NonZeroUsize::new(32).unwrap())]
    pub max_batch_inflight: std::num::NonZeroUsize,
    /// Shared store for replicas: postgres://USER[:PASSWORD]@HOST[:PORT]/DB.
    /// Batch API files (bytes included), batches and stored responses then
    /// live in that PostgreSQL database, and replicas pointed at it share
    /// batch work line by line. Unset or empty: SQLite under --data-dir
    /// (with a store set, --data-dir only holds uploads in transit).
    #[arg(long, env = "KILN_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Seconds a replica's claim on batch lines lasts unless renewed (it
    /// renews every third of it while working): after a replica dies, its
    /// lines go to the others this long after its last renewal.
    #[arg(long, env = "KILN_STORE_LEASE", default_value_t = 30)]
    pub store_lease: u64,
    /// How tool calls are written and read back, by vLLM's parser name:
    /// hermes, llama3_json or mistral. Default: the format the chat template
    /// shows (hermes, with kiln's generic tool prompt, when it shows none).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::api::tools::PARSER_NAMES))]
    pub tool_call_parser: Option<String>,
    /// Compiled grammars (response_format schemas, tool grammars) kept for reuse.
    #[arg(long, default_value_t = crate::structured::DEFAULT_CACHE_SIZE)]
    pub grammar_cache_size: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            served_model_name: None,
            api_keys: Vec::new(),
            api_key_file: None,
            max_n: 8,
            max_stop: 4,
            max_body_bytes: 4 * 1024 * 1024,
            max_waiting: 1024,
            max_prompts: 32,
            max_logprobs: 20,
            shutdown_timeout: 30,
            engine_heartbeat_timeout: 5,
            cors_origins: Vec::new(),
            log_format: LogFormat::Text,
            sse_keepalive: 15,
            data_dir: PathBuf::new(),
            max_file_bytes: 200 * 1024 * 1024,
            max_batch_inflight: std::num::NonZeroUsize::new(32).unwrap(),
            store: None,
            store_lease: 30,
            tool_call_parser: None,
            grammar_cache_size: crate::structured::DEFAULT_CACHE_SIZE,
        }
    }
}

/// One API key with its name (used in logs, never the key) and limits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub key: String,
    pub name: Option<String>,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Requests per day.
    pub rpd: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum KeyFile {
    Table { keys: Vec<KeySpec> },
    List(Vec<KeySpec>),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {msg}")]
    KeyFile { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

impl ServerConfig {
    /// The shared store's URL (`--store`); None when unset or empty (an
    /// empty KILN_STORE, e.g. from an empty Secret, means SQLite).
    pub fn store_url(&self) -> Option<&str> {
        self.store.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }

    /// Checks numeric limits once, before the server starts.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.max_n == 0 {
            return bad("--max-n must be at least 1");
        }
        if self.max_prompts == 0 {
            return bad("--max-prompts must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            return bad("--max-body-bytes must be at least 1024");
        }
        if self.sse_keepalive == 0 {
            return bad("--sse-keepalive must be at least 1 second");
        }
        if self.store_lease == 0 {
            return bad("--store-lease must be at least 1 second");
        }
        if let Some(url) = self.store_url() {
            crate::pgstore::parse_url(url).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Every configured key: `--api-key` ones (named key-1, key-2, ...,
    /// unlimited) then the key file's. Empty or duplicate keys are refused.
    pub fn keys(&self) -> Result<Vec<KeySpec>, ConfigError> {
        let mut keys: Vec<KeySpec> = self
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeySpec { key: k.clone(), name: Some(format!("key-{}", i + 1)), rpm: None, rpd: None, tpm: None })
            .collect();
        if let Some(path) = &self.api_key_file {
            keys.extend(read_key_file(path)?);
        }
        for (i, k) in keys.iter().enumerate() {
            if k.key.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("API key #{} is empty", i + 1)));
            }
            if keys[..i].iter().any(|o| o.key == k.key) {
                return Err(ConfigError::Invalid(format!("API key #{} is configured twice", i + 1)));
            }
            if [k.rpm, k.rpd, k.tpm].contains(&Some(0)) {
                return Err(ConfigError::Invalid(format!("API key #{}: limits must be at least 1", i + 1)));
            }
        }
        Ok(keys)
    }
}

/// Reads `{"keys": [...]}` / `[...]` (JSON) or `[[keys]]` tables (TOML),
/// chosen by the file extension (`.json`, else TOML).
pub fn read_key_file(path: &Path) -> Result<Vec<KeySpec>, ConfigError> {
    let err = |msg: String| ConfigError::KeyFile { path: path.to_path_buf(), msg };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let file: KeyFile = if is_json {
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
    } else {
        toml::from_str(&text).map_err(|e| err(e.to_string()))?
    };
    let mut keys = match file {
        KeyFile::Table { keys } => keys,
        KeyFile::List(keys) => keys,
    };
    for (i, k) in keys.iter_mut().enumerate() {
        k.name.get_or_insert_with(|| format!("file-key-{}", i + 1));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(ext: &str, text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn toml_and_json_key_files() {
        let t = write(".toml", "[[keys]]\nkey = \"sk-a\"\nname = \"alice\"\nrpm = 60\ntpm = 1000\n\n[[keys]]\nkey = \"sk-b\"\n");
        let keys = read_key_file(t.path()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name.as_deref(), Some("alice"));
        assert_eq!((keys[0].rpm, keys[0].rpd, keys[0].tpm), (Some(60), None, Some(1000)));
        assert_eq!(keys[1].name.as_deref(), Some("file-key-2"));

        let j = write(".json", r#"{"keys": [{"key": "sk-c", "rpd": 5}]}"#);
        assert_eq!(read_key_file(j.path()).unwrap()[0].rpd, Some(5));
        let l = write(".json", r#"[{"key": "sk-d"}]"#);
        assert_eq!(read_key_file(l.path()).unwrap()[0].key, "sk-d");
    }

    #[test]
    fn bad_key_files_are_refused() {
        let typo = write(".toml", "[[keys]]\nkey = \"sk-a\"\nrmp = 3\n");
        assert!(read_key_file(typo.path()).is_err());
        let dup = ServerConfig { api_keys: vec!["x".into(), "x".into()], ..Default::default() };
        assert!(dup.keys().is_err());
        let empty = ServerConfig { api_keys: vec![" ".into()], ..Default::default() };
        assert!(empty.keys().is_err());
    }
}

/// Where the Batch and Responses APIs keep their databases and files by default:
/// `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`, else `./kiln-data`.
pub fn default_data_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/share"));
    xdg.or(home).map_or_else(|| PathBuf::from("kiln-data"), |d| d.join("kiln"))
}
