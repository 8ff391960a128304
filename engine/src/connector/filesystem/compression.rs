//! Compressed JSON-lines input of the filesystem source (`source.compression` /
//! `compression_format`: `none`, `gzip`, `zstd`, as Arroyo names them).
//!
//! A compressed file is read as a stream of compressed chunks; each chunk is pushed through a
//! push-style decoder (`flate2`'s and `zstd`'s `write` decoders: no thread, no whole-file
//! buffer) and what it decodes flows on to the line reader. Positions (checkpointed offsets)
//! are in the decompressed text: a resumed file is decompressed from its start and the bytes
//! before the offset are skipped, as a compressed stream cannot be entered in the middle.
//! Both are pure Rust or already built for Parquet: `zstd` links the same `zstd-sys` that
//! Parquet's codec uses.

use std::io::{self, Write};

use bytes::Bytes;
use futures::{Stream, StreamExt, stream};

use super::invalid;
use crate::connector::ConnectorError;

/// How the files of a source are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    /// gzip, one member or several concatenated.
    Gzip,
    /// zstd, one frame or several.
    Zstd,
}

impl Compression {
    /// The value of option `key`.
    pub fn parse(key: &str, value: &str) -> Result<Compression, ConnectorError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(invalid(key, value, "expected 'none', 'gzip' or 'zstd'")),
        }
    }
}

/// A push decoder: compressed bytes in, decompressed bytes out.
enum Decoder {
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    fn new(compression: Compression) -> io::Result<Option<Decoder>> {
        Ok(match compression {
            Compression::None => None,
            Compression::Gzip => Some(Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(
                Vec::new(),
            )))),
            Compression::Zstd => Some(Decoder::Zstd(
                zstd::stream::write::Decoder::new(Vec::new())?,
            )),
        })
    }

    /// Decodes `chunk`; returns what it completed.
    fn push(&mut self, chunk: &[u8]) -> io::Result<Bytes> {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(chunk)?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
            Decoder::Zstd(d) => {
                d.write_all(chunk)?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
        }
    }

    /// At the end of the input: the rest, or an error for a truncated stream.
    fn finish(&mut self) -> io::Result<Bytes> {
        match self {
            Decoder::Gzip(d) => {
                d.try_finish()?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
            Decoder::Zstd(d) => {
                d.flush()?;
                Ok(Bytes::from(std::mem::take(d.get_mut())))
            }
        }
    }
}

/// `input` (a file's bytes) decompressed; unchanged for [`Compression::None`].
pub fn decompressed<S>(
    input: S,
    compression: Compression,
) -> io::Result<stream::BoxStream<'static, io::Result<Bytes>>>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let Some(decoder) = Decoder::new(compression)? else {
        return Ok(input.boxed());
    };
    let chunks = input.map(Some).chain(stream::once(async { None }));
    let decoded = chunks.scan(Some(decoder), |state, chunk| {
        let out = match (state.as_mut(), chunk) {
            (None, _) => None,
            (Some(d), Some(Ok(bytes))) => Some(d.push(&bytes)),
            (Some(_), Some(Err(e))) => {
                *state = None;
                Some(Err(e))
            }
            (Some(d), None) => {
                let rest = d.finish();
                *state = None;
                Some(rest)
            }
        };
        futures::future::ready(out)
    });
    Ok(decoded
        .filter(|r| futures::future::ready(!matches!(r, Ok(b) if b.is_empty())))
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(compression: Compression, compressed: Vec<u8>, chunk: usize) -> Vec<u8> {
        let chunks: Vec<io::Result<Bytes>> = compressed
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut out = Vec::new();
        let mut s = decompressed(stream::iter(chunks), compression).unwrap();
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b.unwrap());
        }
        out
    }

    fn text() -> Vec<u8> {
        (0..5000)
            .map(|i| format!("{{\"n\": {i}}}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[tokio::test]
    async fn gzip_and_zstd_decode_in_any_chunking_and_concatenated() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text()).unwrap();
        let one = gz.finish().unwrap();
        // Two members: `cat a.gz b.gz`.
        let two = [one.clone(), one.clone()].concat();
        let zst = zstd::stream::encode_all(&text()[..], 3).unwrap();
        for chunk in [1, 7, 4096, 1 << 20] {
            assert_eq!(
                roundtrip(Compression::Gzip, one.clone(), chunk).await,
                text()
            );
            assert_eq!(
                roundtrip(Compression::Gzip, two.clone(), chunk).await,
                [text(), text()].concat()
            );
            assert_eq!(
                roundtrip(Compression::Zstd, zst.clone(), chunk).await,
                text()
            );
        }
    }

    #[tokio::test]
    async fn a_truncated_gzip_file_is_an_error() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text()).unwrap();
        let mut bytes = gz.finish().unwrap();
        bytes.truncate(bytes.len() / 2);
        let chunks = vec![Ok(Bytes::from(bytes))];
        let results: Vec<io::Result<Bytes>> = decompressed(stream::iter(chunks), Compression::Gzip)
            .unwrap()
            .collect()
            .await;
        assert!(results.iter().any(|r| r.is_err()));
    }

    #[test]
    fn option_values() {
        assert_eq!(Compression::parse("k", "GZIP").unwrap(), Compression::Gzip);
        assert!(
            Compression::parse("k", "bz2")
                .unwrap_err()
                .to_string()
                .contains("'zstd'")
        );
    }
}
