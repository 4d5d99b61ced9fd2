//! Where the tables live: parsing the tables root (local path or URI), creating local
//! directories, storage options, and making `s3://` (any S3-compatible store) known to
//! deltalake. Owns the mapping from a [`Table`] to its location; must not read or write
//! table contents.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Once};

use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableBuilder};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use tally_events::arrow::Table;
use url::Url;

use crate::error::LedgerError;

/// The root of the three tables and how to reach it.
#[derive(Clone)]
pub(crate) struct TablesRoot {
    /// Always ends with `/`.
    base: Url,
    options: HashMap<String, String>,
    /// Test hook: wraps the object store of every table (fault injection).
    #[cfg(test)]
    pub(crate) wrap_store: Option<Arc<dyn Fn(ObjectStoreRef) -> ObjectStoreRef + Send + Sync>>,
}

impl std::fmt::Debug for TablesRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Options may hold credentials: only their names are shown.
        f.debug_struct("TablesRoot")
            .field("base", &self.base.as_str())
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TablesRoot {
    /// Parse `uri` (a local path, `file://`, `s3://` or `s3a://` URI, or `memory://`).
    /// With `create`, a local root and its table directories are created.
    pub(crate) fn open(
        uri: &str,
        options: impl IntoIterator<Item = (String, String)>,
        create: bool,
    ) -> Result<Self, LedgerError> {
        let bad = |detail: String| LedgerError::TablesUri {
            uri: uri.to_owned(),
            detail,
        };
        let options: HashMap<String, String> = options.into_iter().collect();
        let base = match Url::parse(uri) {
            Ok(url) if url.scheme().len() > 1 => url,
            // A plain path (or a Windows drive letter, parsed as a one-letter scheme).
            _ => local_url(Path::new(uri), create).map_err(bad)?,
        };
        let mut base = match base.scheme() {
            "file" => {
                let path = base
                    .to_file_path()
                    .map_err(|()| bad("not a local file path".into()))?;
                local_url(&path, create).map_err(bad)?
            }
            "s3" | "s3a" => {
                if base.host_str().is_none_or(str::is_empty) {
                    return Err(bad("the bucket is missing (s3://bucket/prefix)".into()));
                }
                register_s3();
                base
            }
            "memory" => base,
            other => {
                return Err(bad(format!(
                    "the scheme `{other}` is not supported (use a path, file://, s3:// or s3a://)"
                )));
            }
        };
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if create && base.scheme() == "file" {
            for table in Table::ALL {
                let dir = base
                    .join(&format!("{}/", table.name()))
                    .ok()
                    .and_then(|u| u.to_file_path().ok())
                    .ok_or_else(|| bad("cannot form the table directory".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("creating directory {}: {e}", dir.display())))?;
            }
        }
        Ok(Self {
            base,
            options,
            #[cfg(test)]
            wrap_store: None,
        })
    }

    /// The root as a URI.
    pub(crate) fn uri(&self) -> &Url {
        &self.base
    }

    /// Location of a table (ends with `/`).
    pub(crate) fn table_url(&self, table: Table) -> Result<Url, LedgerError> {
        self.base
            .join(&format!("{}/", table.name()))
            .map_err(|e| LedgerError::TablesUri {
                uri: self.base.to_string(),
                detail: e.to_string(),
            })
    }

    /// A builder for the table, with the storage options (and the test hook) applied.
    pub(crate) fn builder(&self, table: Table) -> Result<DeltaTableBuilder, LedgerError> {
        let url = self.table_url(table)?;
        let builder = DeltaTableBuilder::from_url(url.clone())
            .map_err(|e| LedgerError::storage(table.name(), "opening the table location", e))?
            .with_storage_options(self.options.clone());
        #[cfg(test)]
        if let Some(wrap) = &self.wrap_store {
            let scheme = Url::parse(&format!("{}://", url.scheme()))
                .map_err(|e| LedgerError::storage(table.name(), "test store", e))?;
            let config = StorageConfig::parse_options(self.options.clone())
                .map_err(|e| LedgerError::storage(table.name(), "test store", e))?;
            let factory = object_store_factories()
                .get(&scheme)
                .map(|f| Arc::clone(f.value()))
                .ok_or_else(|| LedgerError::storage(table.name(), "test store", "no factory"))?;
            let (root, _) = factory
                .parse_url_opts(&url, &config)
                .map_err(|e| LedgerError::storage(table.name(), "test store", e))?;
            return Ok(builder.with_storage_backend(wrap(root), url));
        }
        Ok(builder)
    }
}

fn local_url(path: &Path, create: bool) -> Result<Url, String> {
    if create {
        std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    }
    let abs = match path.canonicalize() {
        Ok(abs) => abs,
        Err(_) if !create => {
            std::path::absolute(path).map_err(|e| format!("resolving {}: {e}", path.display()))?
        }
        Err(e) => return Err(format!("resolving {}: {e}", path.display())),
    };
    Url::from_directory_path(&abs).map_err(|()| format!("{} is not absolute", abs.display()))
}

/// Make `s3://` and `s3a://` known to deltalake, once per process, unless something else
/// (deltalake's own `s3` feature) registered them already.
fn register_s3() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            let Ok(url) = Url::parse(scheme) else {
                continue;
            };
            object_store_factories()
                .entry(url.clone())
                .or_insert_with(|| Arc::new(S3StoreFactory));
            logstore_factories()
                .entry(url)
                .or_insert_with(|| Arc::new(S3LogStoreFactory));
        }
    });
}

/// Builds an S3 client (object_store's) from the URL, the storage options and `AWS_*`
/// environment variables. Commits rely on conditional puts (`If-None-Match`), which AWS
/// S3, MinIO, R2 and moto support.
struct S3StoreFactory;

impl ObjectStoreFactory for S3StoreFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, object_store::path::Path)> {
        let mut builder = AmazonS3Builder::from_env().with_url(url.to_string());
        for (key, value) in config.raw() {
            if let Ok(key) = AmazonS3ConfigKey::from_str(&key.to_ascii_lowercase()) {
                builder = builder.with_config(key, value.clone());
            }
        }
        let store = builder.build()?;
        let path = object_store::path::Path::from_url_path(url.path())?;
        Ok((Arc::new(store), path))
    }
}

/// The default (conditional-put) log store, for `s3://`.
struct S3LogStoreFactory;

impl LogStoreFactory for S3LogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_are_created_and_normalised() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else { return };
        let root = dir.path().join("a/tables");
        let r = TablesRoot::open(&root.to_string_lossy(), [], true);
        let Ok(r) = r else {
            panic!("{:?}", r.err());
        };
        assert!(r.uri().as_str().starts_with("file:///"));
        assert!(r.uri().as_str().ends_with("/a/tables/"));
        assert!(root.join("usage").is_dir() && root.join("corrections").is_dir());
        let u = r.table_url(Table::Decisions).map(|u| u.to_string());
        assert!(u.is_ok_and(|u| u.ends_with("/a/tables/decisions/")));
    }

    #[test]
    fn refuses_unknown_schemes_and_bucketless_s3() {
        let e = TablesRoot::open("ftp://host/x", [], true).err();
        assert_eq!(e.map(|e| e.code()), Some("ledger.tables_uri"));
        let e = TablesRoot::open("s3:///prefix", [], true).err();
        assert_eq!(e.map(|e| e.code()), Some("ledger.tables_uri"));
        let s3 = TablesRoot::open("s3://bucket/some/prefix", [], true);
        assert!(s3.is_ok_and(|r| r.uri().as_str() == "s3://bucket/some/prefix/"));
    }
}
