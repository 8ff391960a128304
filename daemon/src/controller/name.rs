//! Pipeline ids and names. An id is 12 lowercase hex digits; a name is
//! `[A-Za-z0-9_.-]{1,64}` and never shaped like an id, so that no name can shadow another
//! pipeline's id, and nothing a terminal would interpret reaches `list`.

/// The longest name.
pub const MAX_NAME: usize = 64;

/// A name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a pipeline name cannot be empty")]
    Empty,
    #[error("pipeline name '{0}...' is longer than {MAX_NAME} characters")]
    TooLong(String),
    /// Shown escaped: the name may hold control characters.
    #[error("pipeline name {0:?} may only hold letters, digits, '_', '.' and '-'")]
    BadCharacter(String),
    #[error("pipeline name '{0}' looks like a pipeline id (12 hex digits); choose another")]
    IdShaped(String),
}

/// True for 12 lowercase hex digits.
pub fn is_id_shaped(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Checks a name given by a user.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if !name.chars().all(allowed) {
        return Err(NameError::BadCharacter(name.to_string()));
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong(name[..MAX_NAME].to_string()));
    }
    if is_id_shaped(name) {
        return Err(NameError::IdShaped(name.to_string()));
    }
    Ok(())
}

/// A valid name made from `text` (a file stem): other characters become `_`, it is cut at
/// [`MAX_NAME`], an id-shaped one gets a `query-` prefix, and an empty one is `query`.
pub fn sanitize(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .take(MAX_NAME)
        .collect();
    if name.is_empty() {
        name = "query".to_string();
    }
    if is_id_shaped(&name) {
        name = format!("query-{name}");
    }
    name
}

/// A new pipeline id: 12 hex digits from the time and a per-process counter.
pub fn new_id(counter: u64) -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let h = std::collections::hash_map::RandomState::new().hash_one((nanos, counter));
    format!("{:012x}", h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_stems_made_valid() {
        for good in [
            "wordcount",
            "a",
            "q5_hot.items-2",
            &"x".repeat(64),
            "abc123",
        ] {
            assert_eq!(validate(good), Ok(()), "{good}");
        }
        assert_eq!(validate(""), Err(NameError::Empty));
        assert!(matches!(validate("a b"), Err(NameError::BadCharacter(_))));
        assert!(matches!(
            validate("x\u{1b}[31mred\n"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            validate(&"x".repeat(65)),
            Err(NameError::TooLong(_))
        ));
        let id = new_id(7);
        assert!(is_id_shaped(&id), "{id}");
        assert!(matches!(validate(&id), Err(NameError::IdShaped(_))));
        assert_eq!(sanitize("my query (v2)"), "my_query__v2_");
        assert_eq!(sanitize(""), "query");
        assert_eq!(sanitize("deadbeef0123"), "query-deadbeef0123");
        assert_eq!(sanitize(&"é".repeat(70)), "_".repeat(64));
        for stem in ["my query (v2)", "", "deadbeef0123", "ünïcödé"] {
            assert_eq!(validate(&sanitize(stem)), Ok(()), "{stem}");
        }
    }
}
