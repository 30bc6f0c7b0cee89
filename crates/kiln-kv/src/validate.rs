//! Argument checks with the limits and message texts of Workers KV.

use crate::error::{op, KvError};
use crate::types::PutOptions;

/// Maximum key length in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Maximum value size in bytes (25 MiB).
pub const MAX_VALUE_BYTES: usize = 25 * 1024 * 1024;
/// Maximum size of the serialised metadata JSON in bytes.
pub const MAX_METADATA_BYTES: usize = 1024;
/// Minimum `expirationTtl`, and the minimum distance of `expiration` from now, in seconds.
pub const MIN_EXPIRATION_TTL: i64 = 60;
/// Minimum `cacheTtl` in seconds. Workers KV lowered it from 60 to 30 in late 2025.
pub const MIN_CACHE_TTL: i64 = 30;
/// Default and maximum number of keys on a list page.
pub const MAX_LIST_LIMIT: i64 = 1000;
/// Maximum number of keys in one bulk get.
pub const MAX_BULK_GET_KEYS: usize = 100;
/// Maximum namespace id length in UTF-8 bytes.
pub const MAX_NAMESPACE_ID_BYTES: usize = 512;
/// Prefix of the namespace ids that the node keeps for itself, such as its inference cache.
/// Workers and the admin API cannot reach them.
pub const RESERVED_NAMESPACE_PREFIX: &str = "__kiln";

/// Returns whether `id` names one of the node's own namespaces.
pub fn is_reserved_namespace(id: &str) -> bool {
    id.starts_with(RESERVED_NAMESPACE_PREFIX)
}

/// Checks a key name: 1 to 512 UTF-8 bytes, and neither `.` nor `..`.
pub(crate) fn check_key(op: &'static str, key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::rejected(op, 400, "Key names must not be empty"));
    }
    if key == "." || key == ".." {
        let message = format!("Illegal key name \"{key}\". Please use a different name.");
        return Err(KvError::rejected(op, 400, message));
    }
    if key.len() > MAX_KEY_BYTES {
        let message = format!(
            "UTF-8 encoded length of {} exceeds key length limit of {MAX_KEY_BYTES}.",
            key.len()
        );
        return Err(KvError::rejected(op, 414, message));
    }
    Ok(())
}

/// Checks a namespace id: 1 to 512 UTF-8 bytes.
pub(crate) fn check_namespace_id(id: &str) -> Result<(), KvError> {
    if id.is_empty() {
        return Err(KvError::Type(
            "KV namespace id must not be empty".to_string(),
        ));
    }
    if id.len() > MAX_NAMESPACE_ID_BYTES {
        return Err(KvError::Type(format!(
            "KV namespace id is {} bytes long; the maximum is {MAX_NAMESPACE_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// Converts a JS number to a 32-bit signed integer the way the Workers binding declares its
/// numeric options. Fractions, NaN, infinities and values outside the range are a `TypeError`.
pub(crate) fn to_int32(name: &str, value: f64) -> Result<i32, KvError> {
    let in_range = value >= f64::from(i32::MIN) && value <= f64::from(i32::MAX);
    if value.is_finite() && value.fract() == 0.0 && in_range {
        // The checks above make the cast exact.
        return Ok(value as i32);
    }
    Err(KvError::Type(format!(
        "{name} must be an integer from {} to {} (a 32-bit signed integer); got {}",
        i32::MIN,
        i32::MAX,
        js_number(value)
    )))
}

/// Formats a number the way JS prints it for the values that matter in messages.
fn js_number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e21 {
        format!("{value:.0}")
    } else {
        value.to_string()
    }
}

/// Validates the expiration options of a put and returns the absolute expiration time.
///
/// All type conversions run before any range check, so a `TypeError` wins over a rejection as
/// it does in the Workers binding, where arguments convert before the request is sent.
pub(crate) fn resolve_expiration(now: i64, options: &PutOptions) -> Result<Option<i64>, KvError> {
    let ttl = options
        .expiration_ttl
        .map(|value| to_int32("expirationTtl", value))
        .transpose()?;
    let expiration = options
        .expiration
        .map(|value| to_int32("expiration", value))
        .transpose()?;

    if let Some(ttl) = ttl {
        let ttl = i64::from(ttl);
        if ttl <= 0 {
            let message =
                format!("Invalid expiration_ttl of {ttl}. Please specify integer greater than 0.");
            return Err(KvError::rejected(op::PUT, 400, message));
        }
        if ttl < MIN_EXPIRATION_TTL {
            let message = format!(
                "Invalid expiration_ttl of {ttl}. Expiration TTL must be at least \
                 {MIN_EXPIRATION_TTL}."
            );
            return Err(KvError::rejected(op::PUT, 400, message));
        }
    }

    if let Some(expiration) = expiration {
        let expiration = i64::from(expiration);
        if expiration <= now {
            let message = format!(
                "Invalid expiration of {expiration}. Please specify integer greater than the \
                 current number of seconds since the UNIX epoch."
            );
            return Err(KvError::rejected(op::PUT, 400, message));
        }
        if expiration < now + MIN_EXPIRATION_TTL {
            let message = format!(
                "Invalid expiration of {expiration}. Expiration times must be at least \
                 {MIN_EXPIRATION_TTL} seconds in the future."
            );
            return Err(KvError::rejected(op::PUT, 400, message));
        }
    }

    // NOTE: which option wins when both are set is not documented by Workers KV; the relative
    // one is used here.
    Ok(match (ttl, expiration) {
        (Some(ttl), _) => Some(now + i64::from(ttl)),
        (None, Some(expiration)) => Some(i64::from(expiration)),
        (None, None) => None,
    })
}

/// Validates metadata and returns it, with `null` treated as none, and its serialised size.
pub(crate) fn check_metadata(
    metadata: Option<serde_json::Value>,
) -> Result<Option<serde_json::Value>, KvError> {
    let Some(metadata) = metadata.filter(|value| !value.is_null()) else {
        return Ok(None);
    };
    let serialised = serde_json::to_vec(&metadata)
        .map_err(|error| KvError::Type(format!("KV metadata is not serialisable: {error}")))?;
    if serialised.len() > MAX_METADATA_BYTES {
        let message = format!(
            "Metadata length of {} exceeds limit of {MAX_METADATA_BYTES}.",
            serialised.len()
        );
        return Err(KvError::rejected(op::PUT, 413, message));
    }
    Ok(Some(metadata))
}

/// Checks a value's size. Workers KV documents the 25 MiB limit but not the error text, so this
/// message follows the style of the metadata one.
pub(crate) fn check_value_size(len: usize) -> Result<(), KvError> {
    if len > MAX_VALUE_BYTES {
        let message = format!("Value length of {len} exceeds limit of {MAX_VALUE_BYTES}.");
        return Err(KvError::rejected(op::PUT, 413, message));
    }
    Ok(())
}

/// Validates a read's `cacheTtl`. Kiln reads are never cached, so the value is otherwise unused.
pub(crate) fn check_cache_ttl(op: &'static str, cache_ttl: Option<f64>) -> Result<(), KvError> {
    let Some(value) = cache_ttl else {
        return Ok(());
    };
    let cache_ttl = i64::from(to_int32("cacheTtl", value)?);
    if cache_ttl < MIN_CACHE_TTL {
        let message = format!(
            "Invalid cache_ttl of {cache_ttl}. Cache TTL must be at least {MIN_CACHE_TTL}."
        );
        return Err(KvError::rejected(op, 400, message));
    }
    Ok(())
}

/// Validates a list `limit` and returns it, defaulting to 1000.
pub(crate) fn resolve_list_limit(limit: Option<f64>) -> Result<usize, KvError> {
    let Some(value) = limit else {
        return Ok(MAX_LIST_LIMIT as usize);
    };
    let limit = i64::from(to_int32("limit", value)?);
    if limit <= 0 {
        let message = format!(
            "Invalid key_count_limit of {limit}. Please specify an integer greater than 0."
        );
        return Err(KvError::rejected(op::LIST, 400, message));
    }
    if limit > MAX_LIST_LIMIT {
        // The text reads "less than 1000" although 1000 itself is accepted, because this is
        // the text documented for Workers KV's local simulator.
        let message = format!(
            "Invalid key_count_limit of {limit}. Please specify an integer less than \
             {MAX_LIST_LIMIT}."
        );
        return Err(KvError::rejected(op::LIST, 400, message));
    }
    Ok(limit as usize)
}

/// Checks the number of keys in a bulk get. Workers KV documents the limit of 100 but not the
/// error text.
pub(crate) fn check_bulk_get_count(count: usize) -> Result<(), KvError> {
    if count > MAX_BULK_GET_KEYS {
        let message =
            format!("Requested {count} keys; a bulk get accepts at most {MAX_BULK_GET_KEYS} keys.");
        return Err(KvError::rejected(op::GET_BULK, 400, message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(error: KvError) -> String {
        error.to_string()
    }

    #[test]
    fn key_rules() {
        assert!(check_key(op::GET, "a").is_ok());
        assert!(check_key(op::GET, &"é".repeat(256)).is_ok());
        assert_eq!(
            message(check_key(op::GET, "").unwrap_err()),
            "KV GET failed: 400 Key names must not be empty"
        );
        assert_eq!(
            message(check_key(op::PUT, "..").unwrap_err()),
            "KV PUT failed: 400 Illegal key name \"..\". Please use a different name."
        );
        let long = check_key(op::PUT, &"é".repeat(257)).unwrap_err();
        assert_eq!(long.status(), 414);
        assert_eq!(
            message(long),
            "KV PUT failed: 414 UTF-8 encoded length of 514 exceeds key length limit of 512."
        );
    }

    #[test]
    fn int32_conversion() {
        assert_eq!(to_int32("limit", 7.0), Ok(7));
        assert_eq!(to_int32("limit", -2147483648.0), Ok(i32::MIN));
        for bad in [2147483648.0, -2147483649.0, 1.5, f64::NAN, f64::INFINITY] {
            let error = to_int32("expirationTtl", bad).unwrap_err();
            assert!(matches!(error, KvError::Type(_)), "{bad}: {error:?}");
            assert!(
                error.to_string().contains("-2147483648 to 2147483647"),
                "{error}"
            );
        }
        assert_eq!(
            message(to_int32("expiration", 1e10).unwrap_err()),
            "expiration must be an integer from -2147483648 to 2147483647 (a 32-bit signed \
             integer); got 10000000000"
        );
    }

    #[test]
    fn expiration_rules() {
        let now = 1_000_000;
        let ttl = |value: f64| PutOptions {
            expiration_ttl: Some(value),
            ..PutOptions::default()
        };
        let at = |value: f64| PutOptions {
            expiration: Some(value),
            ..PutOptions::default()
        };
        assert_eq!(resolve_expiration(now, &ttl(60.0)), Ok(Some(now + 60)));
        assert_eq!(
            resolve_expiration(now, &at(1_000_060.0)),
            Ok(Some(now + 60))
        );
        assert_eq!(
            message(resolve_expiration(now, &ttl(59.0)).unwrap_err()),
            "KV PUT failed: 400 Invalid expiration_ttl of 59. Expiration TTL must be at least 60."
        );
        assert_eq!(
            message(resolve_expiration(now, &ttl(0.0)).unwrap_err()),
            "KV PUT failed: 400 Invalid expiration_ttl of 0. Please specify integer greater than 0."
        );
        assert!(
            message(resolve_expiration(now, &at(1_000_059.0)).unwrap_err())
                .contains("Expiration times must be at least 60 seconds in the future.")
        );
        assert!(
            message(resolve_expiration(now, &at(1_000_000.0)).unwrap_err())
                .contains("Please specify integer greater than the current number of seconds")
        );
        assert!(message(resolve_expiration(now, &at(-5.0)).unwrap_err())
            .contains("Invalid expiration of -5."));
    }

    #[test]
    fn list_limit_rules() {
        assert_eq!(resolve_list_limit(None), Ok(1000));
        assert_eq!(resolve_list_limit(Some(1.0)), Ok(1));
        assert_eq!(resolve_list_limit(Some(1000.0)), Ok(1000));
        assert!(message(resolve_list_limit(Some(0.0)).unwrap_err())
            .ends_with("Invalid key_count_limit of 0. Please specify an integer greater than 0."));
        assert!(
            message(resolve_list_limit(Some(1001.0)).unwrap_err()).ends_with(
                "Invalid key_count_limit of 1001. Please specify an integer less than 1000."
            )
        );
    }

    #[test]
    fn metadata_and_value_limits() {
        let fits = serde_json::Value::String("x".repeat(1022));
        assert!(check_metadata(Some(fits)).is_ok());
        let too_big = serde_json::Value::String("x".repeat(1023));
        let error = check_metadata(Some(too_big)).unwrap_err();
        assert_eq!(error.status(), 413);
        assert_eq!(
            message(error),
            "KV PUT failed: 413 Metadata length of 1025 exceeds limit of 1024."
        );
        assert_eq!(check_metadata(Some(serde_json::Value::Null)), Ok(None));
        assert!(check_value_size(MAX_VALUE_BYTES).is_ok());
        assert_eq!(
            check_value_size(MAX_VALUE_BYTES + 1).unwrap_err().status(),
            413
        );
    }

    #[test]
    fn cache_ttl_rules() {
        assert!(check_cache_ttl(op::GET, None).is_ok());
        assert!(check_cache_ttl(op::GET, Some(30.0)).is_ok());
        assert_eq!(
            message(check_cache_ttl(op::GET, Some(29.0)).unwrap_err()),
            "KV GET failed: 400 Invalid cache_ttl of 29. Cache TTL must be at least 30."
        );
        assert!(matches!(
            check_cache_ttl(op::GET, Some(30.5)),
            Err(KvError::Type(_))
        ));
    }
}
