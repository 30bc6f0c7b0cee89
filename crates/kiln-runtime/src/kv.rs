//! The native side of KV namespace bindings: `env.NS.get/put/delete/list` calls run on the
//! async runtime against the node's store, and their results come back to the isolate as
//! events.
//!
//! The prelude's `KVNamespace` converts values and types; this module validates nothing
//! itself, since `kiln_kv` applies the store's limits and error texts.

use std::rc::Rc;

use bytes::Bytes;
use futures::future::BoxFuture;
use kiln_kv::{Entry, KvError, ListOptions, ListPage, Namespace, PutOptions};
use rquickjs::{Ctx, Function, Object, TypedArray};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::host::{copy_bytes, SharedState};
use crate::isolate::Event;

/// KV operations one request may make, as on the hosted platform.
pub(crate) const MAX_CALLS_PER_REQUEST: u32 = 1000;

/// Returns the operation's name as error messages show it.
fn op_name(op: &str) -> &'static str {
    match op {
        "get" => "GET",
        "put" => "PUT",
        "delete" => "DELETE",
        _ => "LIST",
    }
}

/// A settled KV call, before conversion for the isolate.
pub(crate) enum KvReply {
    /// `get`: the entry, or `None` for a missing or expired key.
    Entry(Option<Entry>),
    /// Bulk `get`: one entry per key, in the order asked.
    Entries(Vec<Option<Entry>>),
    List(ListPage),
    /// `put` and `delete`.
    Done,
}

/// Arguments of a call, as the prelude sends them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallArgs {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    cache_ttl: Option<f64>,
    #[serde(default)]
    expiration: Option<f64>,
    #[serde(default)]
    expiration_ttl: Option<f64>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    limit: Option<f64>,
    #[serde(default)]
    cursor: Option<String>,
}

fn start_call(
    namespace: Namespace,
    op: &str,
    args: CallArgs,
    value: Option<Vec<u8>>,
) -> BoxFuture<'static, Result<KvReply, KvError>> {
    match op {
        "get" => Box::pin(async move {
            match args.keys {
                Some(keys) => Ok(KvReply::Entries(
                    namespace.get_many(&keys, args.cache_ttl).await?,
                )),
                None => {
                    let key = args.key.unwrap_or_default();
                    Ok(KvReply::Entry(namespace.get(&key, args.cache_ttl).await?))
                }
            }
        }),
        "put" => Box::pin(async move {
            let options = PutOptions {
                expiration: args.expiration,
                expiration_ttl: args.expiration_ttl,
                metadata: args.metadata,
            };
            let value = Bytes::from(value.unwrap_or_default());
            namespace
                .put(&args.key.unwrap_or_default(), value, options)
                .await?;
            Ok(KvReply::Done)
        }),
        "delete" => Box::pin(async move {
            namespace.delete(&args.key.unwrap_or_default()).await?;
            Ok(KvReply::Done)
        }),
        _ => Box::pin(async move {
            // "list", the only other operation the prelude sends.
            let options = ListOptions {
                prefix: args.prefix,
                limit: args.limit,
                cursor: args.cursor,
            };
            Ok(KvReply::List(namespace.list(options).await?))
        }),
    }
}

/// Installs `native.kvCall(call, binding, op, argsJson, value)`. The result arrives later as
/// [`Event::KvDone`].
pub(crate) fn install<'js>(
    ctx: &Ctx<'js>,
    native: &Object<'js>,
    state: &SharedState,
) -> rquickjs::Result<()> {
    let call_state = Rc::clone(state);
    native.set(
        "kvCall",
        Function::new(
            ctx.clone(),
            move |call: f64,
                  binding: String,
                  op: String,
                  args: String,
                  value: Option<TypedArray<'_, u8>>| {
                let mut state = call_state.borrow_mut();
                let call = call as u64;
                let owner = state.current;
                state.call_owner.insert(call, owner);
                let events = state.events.clone();
                let generation = state.generation;
                let value = value.as_ref().map(copy_bytes);
                let calls = match owner {
                    Some(number) if state.request_ids.contains_key(&number) => {
                        let calls = state.kv_calls.entry(number).or_default();
                        *calls += 1;
                        *calls
                    }
                    _ => 0,
                };
                let result = match (state.kv.get(&binding), serde_json::from_str(&args)) {
                    _ if calls > MAX_CALLS_PER_REQUEST => Err(KvError::Rejected {
                        op: op_name(&op),
                        status: 429,
                        message: format!(
                            "Too many API requests by single worker invocation: one request may \
                             make at most {MAX_CALLS_PER_REQUEST} KV operations"
                        ),
                    }),
                    (Some(namespace), Ok(args)) => {
                        Ok(start_call(namespace.clone(), &op, args, value))
                    }
                    (None, _) => Err(KvError::Unavailable {
                        op: op_name(&op),
                        message: format!("the worker has no KV namespace bound as {binding}"),
                    }),
                    (Some(_), Err(error)) => {
                        Err(KvError::Type(format!("invalid KV call arguments: {error}")))
                    }
                };
                match result {
                    Ok(future) => {
                        state.spawn_call(call, false, future, |generation, call, result| {
                            Event::KvDone {
                                generation,
                                call,
                                result,
                            }
                        });
                    }
                    Err(error) => {
                        let _ = events.send(Event::KvDone {
                            generation,
                            call,
                            result: Err(error),
                        });
                    }
                }
            },
        )?,
    )
}

fn entry_json(entry: &Entry) -> Value {
    json!({
        "metadata": entry.metadata,
        "expiration": entry.expiration,
    })
}

/// Hands a settled call to the prelude's `kvDone(call, ok, payload, bytes)`. On success `payload`
/// is JSON (`null` for a missing key) and `bytes` the value of a single `get`. On failure
/// `payload` is `{name, message, status}`.
pub(crate) fn settle<'js>(
    ctx: &Ctx<'js>,
    host: &Object<'js>,
    call: u64,
    result: Result<KvReply, KvError>,
) -> rquickjs::Result<()> {
    let done: Function = host.get("kvDone")?;
    let (ok, payload, bytes) = match result {
        Ok(KvReply::Entry(Some(entry))) => (true, entry_json(&entry), Some(entry.value)),
        Ok(KvReply::Entry(None)) | Ok(KvReply::Done) => (true, Value::Null, None),
        Ok(KvReply::Entries(entries)) => {
            let values: Vec<Value> = entries
                .iter()
                .map(|entry| match entry {
                    Some(entry) => json!({
                        "text": String::from_utf8_lossy(&entry.value),
                        "metadata": entry.metadata,
                    }),
                    None => Value::Null,
                })
                .collect();
            (true, Value::Array(values), None)
        }
        Ok(KvReply::List(page)) => (true, page.to_json(), None),
        Err(error) => {
            let name = match error {
                KvError::Type(_) => "TypeError",
                _ => "Error",
            };
            let payload =
                json!({"name": name, "message": error.to_string(), "status": error.status()});
            (false, payload, None)
        }
    };
    let bytes = match bytes {
        Some(bytes) => Some(TypedArray::<u8>::new(ctx.clone(), bytes.to_vec())?),
        None => None,
    };
    done.call((call as f64, ok, payload.to_string(), bytes))
}
