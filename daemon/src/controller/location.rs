//! Where a pipeline's checkpoints are. A location is stored relative to the daemon's state root
//! (normally the pipeline's id) and resolved against the root given at start, never against the
//! working directory, so that a data dir or state dir can be moved, or restored elsewhere.
//! Pipelines stored before relative locations hold a full URL or path; [`from_stored`] turns
//! what it can back into a relative location.

use crate::engine::StorageUrl;

/// True for a full location: a URL or an absolute path.
fn is_full(location: &str) -> bool {
    location.contains("://") || location.starts_with('/')
}

/// The full location of `location` under `root`.
pub fn resolve(root: &StorageUrl, location: &str) -> String {
    if is_full(location) {
        location.to_string()
    } else {
        root.join(location)
    }
}

/// The location to remove with pipeline `id` whose state is at `location`: its own directory
/// `id` (which also holds what restarts without state made, `id/gN`) when the location is in
/// it, else the location itself.
pub fn owned_by<'a>(id: &'a str, location: &'a str) -> &'a str {
    if location == id || location.starts_with(&format!("{id}/")) {
        id
    } else {
        location
    }
}

/// The location a pipeline `id` stored as `stored`, as it should now be stored; with a message
/// when it changes (the caller persists it).
pub fn from_stored(root: &StorageUrl, id: &str, stored: &str) -> (String, Option<String>) {
    if stored.is_empty() {
        // A pipeline from before checkpoints: from now on it takes them.
        return (
            id.to_string(),
            Some("checkpoints go to the daemon's state root".into()),
        );
    }
    if stored == id {
        return (stored.to_string(), None);
    }
    if stored == root.join(id) {
        return (
            id.to_string(),
            Some("its state location is now stored relative to the state root".into()),
        );
    }
    if !is_full(stored) && stored.ends_with(&format!("/{id}")) {
        // Relative to the working directory of an older binary: the state root's own.
        return (
            id.to_string(),
            Some(format!(
                "its state location '{stored}' was relative to a working directory; it is now the state root's '{id}'"
            )),
        );
    }
    (stored.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_relative_to_the_root_given_at_start() {
        let root = StorageUrl::parse("/data/state").unwrap();
        assert_eq!(resolve(&root, "abc"), "/data/state/abc");
        assert_eq!(resolve(&root, "s3://b/x/abc"), "s3://b/x/abc");
        assert_eq!(resolve(&root, "/old/abc"), "/old/abc");
        assert_eq!(from_stored(&root, "abc", "abc"), ("abc".into(), None));
        for old in ["", "/data/state/abc", "st/state/abc"] {
            let (now, message) = from_stored(&root, "abc", old);
            assert_eq!(now, "abc", "{old}");
            assert!(message.is_some(), "{old}");
        }
        // A location elsewhere stays where it is.
        assert_eq!(
            from_stored(&root, "abc", "s3://b/x/abc"),
            ("s3://b/x/abc".into(), None)
        );
    }
}
