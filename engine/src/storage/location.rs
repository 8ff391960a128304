//! Where bytes live: a local directory or an object-store prefix (`file://`, `s3://`, `gs://`,
//! `az://`), and the `object_store` client that reaches it. Parsing reads the environment but
//! does no I/O.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use super::error::StorageError;

/// Which kind of object store a location is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Local,
    S3,
    Gcs,
    Azure,
}

/// Where a table's files or a pipeline's state are: a store and a directory (prefix) in it.
#[derive(Debug, Clone)]
pub struct Location {
    scheme: Scheme,
    /// `scheme://bucket` for an object store; empty for a local path.
    base: String,
    /// The directory inside the store.
    prefix: Path,
    /// Store settings (`storage.<key>` options without the `storage.`), checked against the
    /// store's keys.
    storage: Vec<(String, String)>,
    /// A pipeline table's location (not the daemon's state): a worker's confinement applies
    /// to it ([`super::access`]).
    table: bool,
}

/// `path` made absolute (against the working directory) and free of `.` and `..`.
fn absolute_local(path: &str) -> PathBuf {
    super::access::lexical_absolute(std::path::Path::new(path))
}

/// Store settings that make a store read a file or ask a credential service of the host: a
/// foreign user's table may not use them (see [`super::access`]).
fn host_setting(scheme: Scheme, key: &str) -> bool {
    match scheme {
        Scheme::Local => false,
        Scheme::S3 => matches!(
            key.parse::<AmazonS3ConfigKey>(),
            Ok(AmazonS3ConfigKey::MetadataEndpoint
                | AmazonS3ConfigKey::ContainerCredentialsRelativeUri
                | AmazonS3ConfigKey::ContainerCredentialsFullUri
                | AmazonS3ConfigKey::ContainerAuthorizationTokenFile
                | AmazonS3ConfigKey::WebIdentityTokenFile)
        ),
        Scheme::Gcs => matches!(
            key.parse::<GoogleConfigKey>(),
            Ok(GoogleConfigKey::ServiceAccount | GoogleConfigKey::ApplicationCredentials)
        ),
        Scheme::Azure => matches!(
            key.parse::<AzureConfigKey>(),
            Ok(AzureConfigKey::MsiEndpoint
                | AzureConfigKey::FederatedTokenFile
                | AzureConfigKey::UseAzureCli)
        ),
    }
}

/// True when the store settings carry credentials of their own.
fn has_credentials(scheme: Scheme, storage: &[(String, String)]) -> bool {
    storage.iter().any(|(key, _)| match scheme {
        Scheme::Local => false,
        Scheme::S3 => matches!(key.parse(), Ok(AmazonS3ConfigKey::AccessKeyId)),
        Scheme::Gcs => matches!(key.parse(), Ok(GoogleConfigKey::ServiceAccountKey)),
        Scheme::Azure => matches!(
            key.parse(),
            Ok(AzureConfigKey::AccessKey
                | AzureConfigKey::SasKey
                | AzureConfigKey::Token
                | AzureConfigKey::ClientSecret)
        ),
    })
}

impl Location {
    /// Parses `path` (a local path, `file://`, `s3://`, `s3a://`, `gs://`, `az://`, `azure://`,
    /// `adl://`, `abfs://`, `abfss://`) and checks the store settings against its store.
    pub fn parse(path: &str, storage: Vec<(String, String)>) -> Result<Location, StorageError> {
        let bad = |reason: String| StorageError::BadLocation {
            location: path.to_string(),
            reason,
        };
        let (scheme, base, key) = match path.split_once("://") {
            None => (Scheme::Local, String::new(), None),
            Some((s, rest)) => {
                let scheme = match s.to_ascii_lowercase().as_str() {
                    "file" => Scheme::Local,
                    "s3" | "s3a" => Scheme::S3,
                    "gs" => Scheme::Gcs,
                    "az" | "azure" | "adl" | "abfs" | "abfss" => Scheme::Azure,
                    other => {
                        return Err(bad(format!(
                            "unsupported scheme '{other}': use a local path or a file://, s3://, gs:// or az:// URL"
                        )));
                    }
                };
                if scheme == Scheme::Local {
                    if !rest.starts_with('/') {
                        return Err(bad("a file:// URL needs an absolute path".into()));
                    }
                    (scheme, String::new(), Some(rest.to_string()))
                } else {
                    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                    if bucket.is_empty() {
                        return Err(bad("the URL names no bucket or container".into()));
                    }
                    (scheme, format!("{s}://{bucket}"), Some(key.to_string()))
                }
            }
        };
        let prefix = match (scheme, key) {
            (Scheme::Local, key) => {
                let local = absolute_local(key.as_deref().unwrap_or(path));
                Path::from_absolute_path(&local).map_err(|e| bad(e.to_string()))?
            }
            (_, key) => Path::parse(key.unwrap_or_default().trim_matches('/'))
                .map_err(|e| bad(e.to_string()))?,
        };
        for (key, value) in &storage {
            // Why object_store does not know the key, if it does not.
            let unknown = match scheme {
                Scheme::Local => Some("a local path takes no storage options".to_string()),
                Scheme::S3 => key
                    .parse::<AmazonS3ConfigKey>()
                    .err()
                    .map(|e| e.to_string()),
                Scheme::Gcs => key.parse::<GoogleConfigKey>().err().map(|e| e.to_string()),
                Scheme::Azure => key.parse::<AzureConfigKey>().err().map(|e| e.to_string()),
            };
            if let Some(reason) = unknown {
                return Err(StorageError::BadOption {
                    key: key.clone(),
                    value: value.clone(),
                    reason,
                });
            }
        }
        let location = Location {
            scheme,
            base,
            prefix,
            storage,
            table: false,
        };
        // Building a store reads the environment but does no I/O: its errors (no region, no
        // account) are the location's.
        location
            .store()
            .map_err(|e| bad(crate::task::error_chain(&e)))?;
        Ok(location)
    }

    /// [`Location::parse`] of a table's `path`: the worker's confinement applies to it when it
    /// is opened ([`Location::open_store`]).
    pub fn for_table(path: &str, storage: Vec<(String, String)>) -> Result<Location, StorageError> {
        let mut location = Location::parse(path, storage)?;
        location.table = true;
        Ok(location)
    }

    /// The store, for a table about to read or write: a local directory must be one the
    /// worker's confinement allows, now ([`super::access::check`]).
    pub fn open_store(&self) -> Result<Arc<dyn ObjectStore>, StorageError> {
        if let Some(dir) = self.local_dir().filter(|_| self.table) {
            super::access::check(&dir)?;
        }
        self.store()
    }

    /// Checks that a foreign user's table may open `object` (a local file, symlinks
    /// followed) now; nothing for an object store.
    pub fn check_object(&self, object: &Path) -> Result<(), StorageError> {
        if self.table
            && let Some(path) = self.local_path(object)
        {
            super::access::check(&path)?;
        }
        Ok(())
    }

    /// The directory of a local location (None for an object store).
    pub fn local_dir(&self) -> Option<PathBuf> {
        self.is_local()
            .then(|| PathBuf::from(format!("/{}", self.prefix)))
    }

    /// True when the store is built without the host's credentials: a foreign user's table.
    fn confined(&self) -> bool {
        self.table && super::access::foreign()
    }

    /// Builds the store: from the environment, then the store settings. A foreign user's
    /// table gets nothing from the host: no environment, no credential services, no
    /// credential files; without credentials in its settings its requests go unsigned.
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>, StorageError> {
        let failed = |source: object_store::Error| StorageError::Setup {
            base: self.base.clone(),
            source: Box::new(source),
        };
        let confined = self.confined();
        if confined
            && let Some((key, value)) = self
                .storage
                .iter()
                .find(|(k, _)| host_setting(self.scheme, k))
        {
            return Err(StorageError::BadOption {
                key: format!("storage.{key}"),
                value: value.clone(),
                reason: "it reads a file or a credential service of the daemon's host, which a pipeline of another user may not".into(),
            });
        }
        let unsigned = confined && !has_credentials(self.scheme, &self.storage);
        // The three cloud builders share their methods but no trait: one body for all.
        macro_rules! cloud {
            ($builder:ty) => {{
                let b = if confined {
                    <$builder>::new()
                } else {
                    <$builder>::from_env()
                };
                let mut b = b.with_url(&self.base);
                for (k, v) in &self.storage {
                    b = b.with_config(k.parse().map_err(failed)?, v);
                }
                // Last, so that no setting of the table's turns the host's credentials on.
                if unsigned {
                    b = b.with_skip_signature(true);
                }
                Arc::new(b.build().map_err(failed)?)
            }};
        }
        Ok(match self.scheme {
            Scheme::Local => Arc::new(LocalFileSystem::new()),
            Scheme::S3 => cloud!(AmazonS3Builder),
            Scheme::Gcs => cloud!(GoogleCloudStorageBuilder),
            Scheme::Azure => cloud!(MicrosoftAzureBuilder),
        })
    }

    /// Which kind of store it is in.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// True for a path on the local filesystem (`/{prefix}` is then the directory).
    pub fn is_local(&self) -> bool {
        matches!(self.scheme, Scheme::Local)
    }

    /// The directory (prefix) inside the store.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The local file of `object`, for a local location (None for an object store).
    pub fn local_path(&self, object: &Path) -> Option<PathBuf> {
        if !self.is_local() {
            return None;
        }
        LocalFileSystem::new().path_to_filesystem(object).ok()
    }

    /// How an object of this store is named in messages: a local path, or a URL.
    pub fn display(&self, object: &Path) -> String {
        match self.scheme {
            Scheme::Local => format!("/{object}"),
            _ => format!("{}/{object}", self.base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls_resolve_to_stores() {
        let local = Location::parse("/var/data/in/", vec![]).unwrap();
        assert_eq!(local.scheme, Scheme::Local);
        assert_eq!(local.prefix.as_ref(), "var/data/in");
        assert_eq!(
            local.display(&local.prefix.clone().join("a.json")),
            "/var/data/in/a.json"
        );
        let url = Location::parse("file:///var/data/../in", vec![]).unwrap();
        assert_eq!((url.scheme, url.prefix.as_ref()), (Scheme::Local, "var/in"));
        let relative = Location::parse("out/files", vec![]).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            relative.display(&relative.prefix),
            cwd.join("out/files").to_str().unwrap()
        );

        let s3 = Location::parse(
            "s3://bucket/some/prefix/",
            vec![
                ("aws_region".into(), "eu-west-1".into()),
                ("aws_endpoint".into(), "http://127.0.0.1:9000".into()),
                ("aws_allow_http".into(), "true".into()),
            ],
        )
        .unwrap();
        assert_eq!((s3.scheme, s3.base.as_str()), (Scheme::S3, "s3://bucket"));
        assert_eq!(s3.prefix.as_ref(), "some/prefix");
        assert_eq!(
            s3.display(&s3.prefix.clone().join("x.parquet")),
            "s3://bucket/some/prefix/x.parquet"
        );
        assert!(s3.store().unwrap().to_string().contains("bucket"));
        let root = Location::parse("s3a://bucket", vec![]).unwrap();
        assert_eq!((root.scheme, root.prefix.as_ref()), (Scheme::S3, ""));

        let gs = Location::parse("gs://bucket/p", vec![]).unwrap();
        assert_eq!((gs.scheme, gs.prefix.as_ref()), (Scheme::Gcs, "p"));
        let az = Location::parse(
            "az://container/p/q",
            vec![("azure_storage_account_name".into(), "acct".into())],
        )
        .unwrap();
        assert_eq!((az.scheme, az.prefix.as_ref()), (Scheme::Azure, "p/q"));
        let err = Location::parse("http://host/x", vec![]).unwrap_err();
        assert!(
            err.to_string().contains("unsupported scheme 'http'"),
            "{err}"
        );
        let err = Location::parse("/x", vec![("aws_region".into(), "eu".into())]).unwrap_err();
        assert!(matches!(err, StorageError::BadOption { .. }), "{err}");
        let err = Location::parse("s3://b/p", vec![("aws_regio".into(), "eu".into())]).unwrap_err();
        assert!(
            matches!(&err, StorageError::BadOption { key, .. } if key == "aws_regio"),
            "{err}"
        );
    }
}
