//! Kiln's worker runtime: module workers (`export default { fetch(request, env, ctx) }`) in
//! QuickJS isolates, with the Web APIs that AI workers use and the `env.AI` binding.
//!
//! Each [`Worker`] is one isolate on its own thread. The thread drives the isolate's event
//! loop itself, so JavaScript never runs on the async runtime, and it enforces the worker's
//! [`Limits`]: CPU time per request, heap size and stack depth. A request that breaks one fails
//! with [`WorkerError::LimitExceeded`] and the isolate is rebuilt.
//!
//! The runtime reaches node services only through the traits in [`binding`].

pub mod binding;
mod bytecode;
mod heap;
mod host;
mod isolate;
mod kv;
pub mod modules;
mod worker;

pub use binding::{AiBinding, AiError, AiOutput};
pub use worker::{
    Limit, Limits, ResponseBody, Services, StartError, Worker, WorkerError, WorkerRequest,
    WorkerResponse, WorkerSpec,
};
