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
}

/// `path` made absolute (against the working directory) and free of `.` and `..`.
fn absolute_local(path: &str) -> PathBuf {
    use std::path::Component;
    let given = std::path::Path::new(path);
    let joined = if given.is_absolute() {
        given.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(given)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
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
            let known = match scheme {
                Scheme::Local => Err("a local path takes no storage options".to_string()),
                Scheme::S3 => key
                    .parse::<AmazonS3ConfigKey>()
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Scheme::Gcs => key
                    .parse::<GoogleConfigKey>()
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Scheme::Azure => key
                    .parse::<AzureConfigKey>()
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            known.map_err(|reason| StorageError::BadOption {
                key: key.clone(),
                value: value.clone(),
                reason,
            })?;
        }
        let location = Location {
            scheme,
            base,
            prefix,
            storage,
        };
        // Building a store reads the environment but does no I/O: its errors (no region, no
        // account) are the location's.
        location
            .store()
            .map_err(|e| bad(crate::task::error_chain(&e)))?;
        Ok(location)
    }

    /// Builds the store: from the environment, then the store settings.
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>, StorageError> {
        let failed = |source: object_store::Error| StorageError::Setup {
            base: self.base.clone(),
            source: Box::new(source),
        };
        Ok(match self.scheme {
            Scheme::Local => Arc::new(LocalFileSystem::new()),
            Scheme::S3 => {
                let mut b = AmazonS3Builder::from_env().with_url(&self.base);
                for (k, v) in &self.storage {
                    b = b.with_config(k.parse().map_err(failed)?, v);
                }
                Arc::new(b.build().map_err(failed)?)
            }
            Scheme::Gcs => {
                let mut b = GoogleCloudStorageBuilder::from_env().with_url(&self.base);
                for (k, v) in &self.storage {
                    b = b.with_config(k.parse().map_err(failed)?, v);
                }
                Arc::new(b.build().map_err(failed)?)
            }
            Scheme::Azure => {
                let mut b = MicrosoftAzureBuilder::from_env().with_url(&self.base);
                for (k, v) in &self.storage {
                    b = b.with_config(k.parse().map_err(failed)?, v);
                }
                Arc::new(b.build().map_err(failed)?)
            }
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
    }
}
