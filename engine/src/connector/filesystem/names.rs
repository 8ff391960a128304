//! Names of the sink's part files (`filename.strategy`) and of its staging directories.
//!
//! UUIDs come from the `uuid` crate (versions 4 and 7; a version 7 UUID is time-ordered, so
//! names sort by creation), ULIDs from the `ulid` crate.

/// How part files are named (`filename.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameStrategy {
    /// `<file index:05>-<subtask:03>`: the same names on every run.
    Serial,
    Uuid,
    UuidV7,
    Ulid,
}

/// The name of a part file: `[<prefix>-]<base>.<suffix>`, the base made by `strategy` (for
/// serial names, from the file index and the subtask).
pub fn file_name(
    strategy: NameStrategy,
    prefix: Option<&str>,
    suffix: &str,
    index: u64,
    subtask: usize,
) -> String {
    let base = match strategy {
        NameStrategy::Serial => format!("{index:05}-{subtask:03}"),
        NameStrategy::Uuid => uuid::Uuid::new_v4().to_string(),
        NameStrategy::UuidV7 => uuid_v7(),
        NameStrategy::Ulid => ulid::Ulid::generate().to_string(),
    };
    match prefix {
        Some(p) => format!("{p}-{base}.{suffix}"),
        None => format!("{base}.{suffix}"),
    }
}

/// A version 7 UUID: time-ordered (monotonic within this process), random below that.
pub fn uuid_v7() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_unique_and_well_formed() {
        let a = uuid_v7();
        let b = uuid_v7();
        assert!(a < b, "version 7 names sort by creation: {a} then {b}");
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        let v4 = file_name(NameStrategy::Uuid, None, "json", 0, 0);
        assert_eq!(
            uuid::Uuid::parse_str(v4.trim_end_matches(".json"))
                .unwrap()
                .get_version_num(),
            4
        );
        let u = file_name(NameStrategy::Ulid, Some("events"), "parquet", 0, 0);
        assert!(u.starts_with("events-") && u.ends_with(".parquet"), "{u}");
        assert_eq!(u.len(), "events-".len() + 26 + ".parquet".len());
        assert_eq!(
            file_name(NameStrategy::Serial, None, "json", 7, 2),
            "00007-002.json"
        );
    }
}
