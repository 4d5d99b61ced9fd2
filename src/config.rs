//! tally.yaml: the one configuration file, with every setting also settable from a
//! `TALLY_*` environment variable (`TALLY_LOG__FSYNC=always` sets `log.fsync`; `__`
//! separates levels). Owns loading and layering (defaults < file < env < flags); must not
//! hold behaviour: each crate owns its own section's types.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_events::log::{KafkaConfig, LogConfig};

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TallyConfig {
    /// Where the event log and tables live (embedded mode).
    pub(crate) data_dir: PathBuf,
    /// Name of this instance in events (`gateway_instance`). Default: host name.
    pub(crate) instance: Option<String>,
    /// The local event log.
    pub(crate) log: LogConfig,
    /// The Kafka event log of split mode (`tally enforcer`, `tally ledger`, `tally serve`):
    /// brokers, topic and outage spool. Absent (the default): the local event log.
    pub(crate) kafka: Option<KafkaConfig>,
    /// The proxy: listener, upstreams, gateway keys, routes.
    pub(crate) proxy: tally_enforcer::ProxyConfig,
    /// The provider simulator (`tally simulate`, `tally up --dev`).
    pub(crate) simulator: tally_simulator::SimConfig,
    /// The ledger: event log → Delta tables.
    pub(crate) ledger: tally_ledger::LedgerConfig,
    /// SQL and reports: limits and access tokens.
    pub(crate) queries: tally_queries::QueryConfig,
    /// The admin listener: SQL/report HTTP API, health.
    pub(crate) admin: AdminConfig,
    /// The Postgres wire protocol listener.
    pub(crate) postgres: PostgresConfig,
    /// The threads of `tally up` that do background work (ledger, queries, admin
    /// servers) beside the proxy.
    pub(crate) background: BackgroundConfig,
    /// Reconciliation against provider reports (`tally reconcile`): which provider keys
    /// are the gateway's, model aliases, tolerances.
    pub(crate) reconcile: tally_reconcile::config::ReconcileConfig,
}

/// The admin/SQL HTTP listener.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AdminConfig {
    /// Address of the admin listener (`/v1/sql`, `/v1/why`, `/v1/usage`, `/healthz`).
    pub(crate) listen: std::net::SocketAddr,
    /// Serve HTTPS with this certificate and key (`tally up`, `tally enforcer`, `tally
    /// serve`); plain HTTP without.
    pub(crate) tls: Option<tally_enforcer::tls::TlsConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8081)),
            tls: None,
        }
    }
}

/// Background work in `tally up`: the ledger (decoding, Parquet encoding, commits,
/// compaction), SQL queries and the admin and Postgres servers run on a runtime of their
/// own, whose threads the operating system schedules after the proxy's, so a burst of
/// background work does not queue requests behind it.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BackgroundConfig {
    /// Worker threads of the background runtime. Default: one per core.
    pub(crate) threads: Option<usize>,
    /// Nice value of the background threads (0–19; higher runs later when the cores are
    /// busy, and still uses every idle cycle). 0 schedules them like the proxy's threads.
    pub(crate) nice: u8,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self {
            threads: None,
            nice: 10,
        }
    }
}

/// The Postgres wire protocol listener (psql, Grafana, Metabase).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PostgresConfig {
    /// Serve the Postgres wire protocol.
    pub(crate) enabled: bool,
    /// Its address.
    pub(crate) listen: std::net::SocketAddr,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 5433)),
        }
    }
}

impl Default for TallyConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./tally-data"),
            instance: None,
            log: LogConfig::default(),
            kafka: None,
            proxy: tally_enforcer::ProxyConfig::default(),
            simulator: tally_simulator::SimConfig::default(),
            ledger: tally_ledger::LedgerConfig::default(),
            queries: tally_queries::QueryConfig::default(),
            admin: AdminConfig::default(),
            postgres: PostgresConfig::default(),
            background: BackgroundConfig::default(),
            reconcile: tally_reconcile::config::ReconcileConfig::default(),
        }
    }
}

impl TallyConfig {
    /// Load from an optional YAML file (default `./tally.yaml` if it exists), then
    /// overlay `TALLY_*` environment variables.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self> {
        Self::load_from(path, std::env::vars())
    }

    pub(crate) fn load_from(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut value = serde_json::to_value(TallyConfig::default())?;
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("tally.yaml")).filter(|p| p.exists()),
        };
        if let Some(file) = file {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("config.read: cannot read {}", file.display()))?;
            let from_file: Value = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("config.parse: {} is not valid YAML", file.display()))?;
            if !from_file.is_null() {
                merge(&mut value, from_file);
            }
        }
        let known: Vec<String> = value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("TALLY_") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if !path.first().is_some_and(|p| known.contains(p)) {
                continue;
            }
            set_path(&mut value, &path, scalar(&raw))
                .with_context(|| format!("config.env: cannot apply {name}"))?;
        }
        serde_json::from_value(value).map_err(|e| {
            anyhow::anyhow!(
                "config.invalid: {e}. See docs/configuration.md for the settings and their types"
            )
        })
    }

    /// The directory of the local event log.
    pub(crate) fn log_dir(&self) -> PathBuf {
        self.log
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("log"))
    }

    /// The tables root (path or URI) of the ledger.
    pub(crate) fn tables_root(&self) -> String {
        self.ledger.tables_root(&self.data_dir)
    }

    /// The instance name written into events.
    pub(crate) fn instance_name(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "tally-0".to_owned())
        })
    }
}

/// Parse an environment value as a YAML scalar so numbers and booleans keep their type.
fn scalar(raw: &str) -> Value {
    serde_yaml_ng::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// Overlay `over` onto `base`: mappings merge key by key, anything else replaces.
pub(crate) fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn set_path(value: &mut Value, path: &[String], new: Value) -> Result<()> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut cur = value;
    for p in parents {
        if cur.is_null() {
            *cur = Value::Object(Default::default());
        }
        let Some(obj) = cur.as_object_mut() else {
            bail!("`{p}` is not a section")
        };
        cur = obj.entry(p.clone()).or_insert(Value::Null);
    }
    if cur.is_null() {
        *cur = Value::Object(Default::default());
    }
    match cur.as_object_mut() {
        Some(obj) => {
            obj.insert(last.clone(), new);
            Ok(())
        }
        None => bail!("`{last}`'s parent is not a section"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_events::log::FsyncPolicy;

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else { return };
        let file = dir.path().join("tally.yaml");
        std::fs::write(
            &file,
            "data_dir: /srv/tally\nlog:\n  fsync_interval_ms: 20\n",
        )
        .ok();
        let env = vec![
            ("TALLY_LOG__FSYNC".to_owned(), "interval".to_owned()),
            ("TALLY_LOG__SEGMENT_BYTES".to_owned(), "1048576".to_owned()),
            (
                "TALLY_ADMIN_TOKEN".to_owned(),
                "ignored: not a config section".to_owned(),
            ),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let cfg = TallyConfig::load_from(Some(&file), env.into_iter()).map_err(|e| e.to_string());
        let Ok(cfg) = cfg else { panic!("{cfg:?}") };
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/tally"));
        assert_eq!(cfg.log.fsync, FsyncPolicy::Interval);
        assert_eq!(cfg.log.fsync_interval_ms, 20);
        assert_eq!(cfg.log.segment_bytes, 1_048_576);
        assert_eq!(cfg.log_dir(), PathBuf::from("/srv/tally/log"));
    }

    #[test]
    fn typos_are_rejected_with_a_pointer_to_the_docs() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else { return };
        let file = dir.path().join("tally.yaml");
        std::fs::write(&file, "log:\n  fsynk: always\n").ok();
        let err = TallyConfig::load_from(Some(&file), std::iter::empty())
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("fsynk") && e.contains("config.invalid")),
            "{err:?}"
        );
    }
}
