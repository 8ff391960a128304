//! `filesystem`: a directory of files on a local disk or in an object store (`file://`,
//! `s3://`, `gs://`, `az://`), read as a bounded source ([`source`]) or written as a sink of
//! part files ([`sink`], with [`writer`], [`commit`] and [`names`]). Every access goes
//! through `object_store`; nothing here blocks the runtime.
//!
//! Options of both sides, parsed here: `type` (`source` | `sink`, required), `path` (a local
//! directory, or a URL prefix; required), `format` (`json` lines | `parquet`, required),
//! `storage.<key>` (object-store settings such as `storage.aws_region`, over those read from
//! the usual `AWS_*`, `GOOGLE_*` and `AZURE_*` environment, `AWS_ENDPOINT` and
//! `AWS_ALLOW_HTTP` included). Arroyo options this connector does not implement are refused
//! by name.
//!
//! Files appear exactly once: the sink writes each file under a staged name and commits it
//! when the checkpoint that holds its rows completed ([`commit`]); the source records, per
//! file, how far it read.

mod commit;
mod compression;
mod names;
mod partition;
mod sink;
mod source;
mod writer;

pub use partition::PARTITIONED_BY;
pub use sink::{FileSystemSinkConfig, FileSystemSinkFactory};
pub use source::{FileSystemSourceConfig, FileSystemSourceFactory};

use std::time::Duration;

use super::{ConnectorError, Options, parse_data_size, parse_duration};
use crate::storage::{Location, StorageError};

const CONNECTOR: &str = "filesystem";

/// Arroyo options this connector knows but does not implement: planning refuses them by name
/// rather than as unknown. The value given is accepted when it asks for nothing.
const UNSUPPORTED: &[(&str, Option<&str>)] = &[
    ("shuffle_by_partition.enabled", Some("false")),
    ("partitioning.shuffle_by_partition.enabled", Some("false")),
    ("rolling_policy.watermark_expiration", Some("false")),
    ("multipart.minimum_multipart_size", None),
];

/// The file format, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON object per line.
    Json,
    Parquet,
}

impl FileFormat {
    pub(super) fn suffix(self) -> &'static str {
        match self {
            FileFormat::Json => "json",
            FileFormat::Parquet => "parquet",
        }
    }
}

pub(super) fn invalid(option: &str, value: &str, reason: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidOption {
        option: option.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// A location's error as the error of the option that gave it.
fn location_error(path: &str, e: StorageError) -> ConnectorError {
    match e {
        StorageError::BadOption { key, value, reason } => {
            invalid(&format!("storage.{key}"), &value, reason)
        }
        StorageError::BadLocation { reason, .. } => invalid("path", path, reason),
        other => invalid("path", path, crate::task::error_chain(&other)),
    }
}

/// Takes the options common to both sides: `path`, `storage.*`, `format`.
pub(super) fn take_location_and_format(
    options: &mut Options,
) -> Result<(Location, FileFormat), ConnectorError> {
    let path = options.require(CONNECTOR, "path")?;
    let keys: Vec<String> = options
        .unused()
        .filter(|k| k.starts_with("storage."))
        .map(str::to_string)
        .collect();
    let storage = keys
        .iter()
        .map(|k| {
            let value = options.take(k).unwrap_or_default();
            (k["storage.".len()..].to_string(), value)
        })
        .collect();
    let location = Location::for_table(&path, storage).map_err(|e| location_error(&path, e))?;
    let format = match options.require(CONNECTOR, "format")?.as_str() {
        "json" => FileFormat::Json,
        "parquet" => FileFormat::Parquet,
        other => {
            return Err(invalid(
                "format",
                other,
                "the filesystem connector reads and writes 'json' or 'parquet'",
            ));
        }
    };
    for (key, harmless) in UNSUPPORTED {
        if let Some(value) = options.take(key)
            && Some(value.trim()) != *harmless
        {
            return Err(invalid(key, &value, "not supported by arroyod"));
        }
    }
    Ok((location, format))
}

/// Takes an option that Arroyo spells two ways (the current name first); giving both is an
/// error.
pub(super) fn take_either<T>(
    options: &mut Options,
    current: &str,
    legacy: &str,
    take: impl Fn(&mut Options, &str) -> Result<Option<T>, ConnectorError>,
) -> Result<Option<T>, ConnectorError> {
    let a = take(options, current)?;
    let b = take(options, legacy)?;
    match (a, b) {
        (Some(_), Some(_)) => Err(ConnectorError::Usage(format!(
            "give either '{current}' or '{legacy}', not both"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

pub(super) fn take_data_size(
    options: &mut Options,
    key: &str,
) -> Result<Option<u64>, ConnectorError> {
    options
        .take(key)
        .map(|v| parse_data_size(&v).map_err(|e| invalid(key, &v, e.to_string())))
        .transpose()
}

pub(super) fn take_positive(
    options: &mut Options,
    key: &str,
) -> Result<Option<u64>, ConnectorError> {
    match options.take_parsed::<u64>(key)? {
        Some(0) => Err(invalid(key, "0", "must be above 0")),
        n => Ok(n),
    }
}

pub(super) fn take_duration(
    options: &mut Options,
    key: &str,
) -> Result<Option<Duration>, ConnectorError> {
    let d = options
        .take(key)
        .map(|v| {
            parse_duration(&v)
                .map_err(|e| invalid(key, &v, e.to_string()))
                .and_then(|d| {
                    if d.is_zero() {
                        Err(invalid(key, &v, "must be above 0"))
                    } else {
                        Ok(d)
                    }
                })
        })
        .transpose()?;
    Ok(d)
}

pub(super) fn take_seconds(
    options: &mut Options,
    key: &str,
) -> Result<Option<Duration>, ConnectorError> {
    Ok(take_positive(options, key)?.map(Duration::from_secs))
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::testing::options;
    use super::*;
    use crate::connector::{ConnectorTable, TableKind};

    fn table(entries: &[(&str, &str)]) -> Result<ConnectorTable, ConnectorError> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        ConnectorTable::new("t", CONNECTOR, Some(schema), &mut options(entries))
    }

    fn error_option(e: ConnectorError) -> String {
        match e {
            ConnectorError::InvalidOption { option, .. }
            | ConnectorError::MissingOption { option, .. }
            | ConnectorError::UnknownOption { option, .. } => option,
            other => panic!("not an option error: {other}"),
        }
    }

    #[test]
    fn type_decides_source_or_sink() {
        let source = table(&[("type", "source"), ("path", "/tmp/x"), ("format", "json")]).unwrap();
        assert_eq!(source.kind, TableKind::Source);
        assert!(matches!(
            source.config,
            crate::connector::ConnectorConfig::FileSystemSource(_)
        ));
        let sink = table(&[("type", "sink"), ("path", "/tmp/x"), ("format", "parquet")]).unwrap();
        assert_eq!(sink.kind, TableKind::Sink);
        let e = table(&[("path", "/tmp/x"), ("format", "json")]).unwrap_err();
        assert_eq!(error_option(e), "type");
        let e = table(&[("type", "both"), ("path", "/tmp/x"), ("format", "json")]).unwrap_err();
        assert_eq!(error_option(e), "type");
    }

    #[test]
    fn option_errors_name_the_option() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("type", "sink"), ("format", "json")], "path"),
            (&[("type", "sink"), ("path", "/x")], "format"),
            (
                &[("type", "sink"), ("path", "/x"), ("format", "csv")],
                "format",
            ),
            (
                &[("type", "sink"), ("path", "ftp://h/x"), ("format", "json")],
                "path",
            ),
            (
                &[("type", "sink"), ("path", "s3:///x"), ("format", "json")],
                "path",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("rolling_policy.file_size", "lots"),
                ],
                "rolling_policy.file_size",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("rollover_seconds", "0"),
                ],
                "rollover_seconds",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("rolling_policy.interval", "soon"),
                ],
                "rolling_policy.interval",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("multipart.target_part_size", "1MB"),
                ],
                "multipart.target_part_size",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("filename.strategy", "random"),
                ],
                "filename.strategy",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "parquet"),
                    ("parquet.compression", "bz2"),
                ],
                "parquet.compression",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("partitioning.time_pattern", "%Q"),
                ],
                "partitioning.time_pattern",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("storage.aws_region", "eu"),
                ],
                "storage.aws_region",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "s3://b/x"),
                    ("format", "json"),
                    ("storage.no_such_key", "1"),
                ],
                "storage.no_such_key",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("flavour", "sweet"),
                ],
                "flavour",
            ),
            (
                &[
                    ("type", "source"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("source.regex_pattern", "("),
                ],
                "source.regex_pattern",
            ),
            (
                &[
                    ("type", "source"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("source.compression", "bz2"),
                ],
                "source.compression",
            ),
            (
                &[
                    ("type", "source"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("bad_data", "ignore"),
                ],
                "bad_data",
            ),
            (
                &[
                    ("type", "source"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("rollover_seconds", "5"),
                ],
                "rollover_seconds",
            ),
        ];
        for (entries, option) in cases {
            let e = table(entries).expect_err(option);
            assert_eq!(&error_option(e), option, "{entries:?}");
        }
        let e = table(&[
            ("type", "sink"),
            ("path", "/x"),
            ("format", "json"),
            ("rollover_seconds", "5"),
            ("rolling_policy.interval", "5s"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("either"), "{e}");
    }
}
