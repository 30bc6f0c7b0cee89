//! Model id rules and the mapping from ids to folder names.

use crate::StoreError;

/// Maximum length of a model id in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Checks that `id` can name a model: 1 to 128 bytes of ASCII letters, digits
/// and `@ / . _ -`, with no empty, `.` or `..` segment between slashes, so no
/// leading or trailing `/` either.
pub fn validate_id(id: &str) -> Result<(), StoreError> {
    let invalid = |rule: &str| StoreError::InvalidId {
        id: id.to_string(),
        rule: rule.to_string(),
    };

    if id.is_empty() {
        return Err(invalid("the id is empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(&format!(
            "the id is {} bytes long, the maximum is {MAX_ID_LEN}",
            id.len()
        )));
    }
    if let Some(bad) = id.chars().find(|c| !is_id_char(*c)) {
        return Err(invalid(&format!(
            "character {bad:?} is not allowed; use only ASCII letters, digits and @ / . _ -"
        )));
    }
    if id.starts_with('/') || id.ends_with('/') {
        return Err(invalid("the id must not start or end with /"));
    }
    for segment in id.split('/') {
        match segment {
            "" => return Err(invalid("the id must not contain //")),
            "." | ".." => {
                return Err(invalid(&format!(
                    "the id must not contain a {segment:?} segment between slashes"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '@' | '/' | '.' | '_' | '-')
}

/// Encodes an id as one folder name: `%` becomes `%25`, `/` becomes `%2F`, and
/// a leading `.` becomes `%2E`, so model folders never start with a dot. The
/// store keeps its own working folders (`.partial`, `.import-*`) under dot names.
pub(crate) fn encode_dir_name(id: &str) -> String {
    let mut name = String::with_capacity(id.len() + 8);
    for (index, c) in id.chars().enumerate() {
        match c {
            '%' => name.push_str("%25"),
            '/' => name.push_str("%2F"),
            '.' if index == 0 => name.push_str("%2E"),
            _ => name.push(c),
        }
    }
    name
}

/// Reverses [`encode_dir_name`]. Returns `None` for a name it could not have made.
pub(crate) fn decode_dir_name(name: &str) -> Option<String> {
    let mut id = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(position) = rest.find('%') {
        id.push_str(&rest[..position]);
        let code = rest.get(position + 1..position + 3)?;
        let byte = u8::from_str_radix(code, 16).ok()?;
        if !matches!(byte, b'%' | b'/' | b'.') {
            return None;
        }
        id.push(char::from(byte));
        rest = &rest[position + 3..];
    }
    id.push_str(rest);
    Some(id)
}

/// Checks a manifest file path: relative, `/`-separated, with no empty, `.` or
/// `..` segment and no backslash, so that it cannot point outside the model's folder.
pub(crate) fn validate_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the file path is empty".to_string());
    }
    if path.contains('\\') || path.contains('\0') {
        return Err(format!("file path {path:?} contains a backslash or NUL"));
    }
    if path.starts_with('/') {
        return Err(format!("file path {path:?} is absolute"));
    }
    if path
        .split('/')
        .any(|segment| matches!(segment, "" | "." | ".."))
    {
        return Err(format!("file path {path:?} has an empty, . or .. segment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_accepted() {
        let ids = [
            "@cf/meta/llama-2-7b-chat-int8",
            "@custom/home-value",
            "smollm2-135m-instruct",
            "a",
            "model.v1_2",
            ".hidden",
        ];
        for id in ids {
            assert!(validate_id(id).is_ok(), "{id} should be valid");
        }
        assert!(validate_id(&"a".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn invalid_ids_name_the_rule() {
        let cases = [
            ("", "empty"),
            ("/lead", "start or end"),
            ("trail/", "start or end"),
            ("a//b", "//"),
            ("a/../b", "\"..\""),
            ("..", "\"..\""),
            ("./a", "\".\""),
            ("has space", "' '"),
            ("per%cent", "'%'"),
            ("naïve", "'ï'"),
            ("back\\slash", "'\\\\'"),
        ];
        for (id, rule) in cases {
            let message = validate_id(id).unwrap_err().to_string();
            assert!(message.contains(rule), "{id:?}: {message}");
            assert!(message.contains(&format!("{id:?}")), "{id:?}: {message}");
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        let message = validate_id(&long).unwrap_err().to_string();
        assert!(message.contains("129 bytes"), "{message}");
    }

    #[test]
    fn dir_names_round_trip() {
        let ids = [
            "@cf/meta/llama-2-7b-chat-int8",
            "@custom/home-value",
            "plain",
            ".dot/start",
            "a.b/.c",
            "100%/x",
        ];
        for id in ids {
            let name = encode_dir_name(id);
            assert!(!name.contains('/'), "{name}");
            assert!(!name.starts_with('.'), "{name}");
            assert_eq!(decode_dir_name(&name).as_deref(), Some(id));
        }
        assert_eq!(encode_dir_name("@cf/meta/m"), "@cf%2Fmeta%2Fm");
    }

    #[test]
    fn decode_rejects_foreign_names() {
        assert_eq!(decode_dir_name("bad%zz"), None);
        assert_eq!(decode_dir_name("short%2"), None);
        assert_eq!(decode_dir_name("other%41"), None);
    }

    #[test]
    fn relative_paths_checked() {
        for path in ["model.gguf", "1_Pooling/config.json", "onnx/model.onnx"] {
            assert!(validate_relative_path(path).is_ok(), "{path}");
        }
        for path in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(validate_relative_path(path).is_err(), "{path}");
        }
    }
}
