//! The Batch API: OpenAI's `/v1/files` and `/v1/batches`, durable across
//! crashes, run below interactive traffic; and `kiln batch`, the same JSONL
//! run offline.

pub mod input;
pub mod sink;
pub mod store;
pub mod wire;

use std::path::PathBuf;

/// Where the batch API keeps its database and files by default:
/// `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`, else `./kiln-data`.
pub fn default_data_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/share"));
    xdg.or(home).map_or_else(|| PathBuf::from("kiln-data"), |d| d.join("kiln"))
}
