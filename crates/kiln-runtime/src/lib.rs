//! Kiln's worker runtime: module workers (`export default { fetch(request, env, ctx) }`) in
//! QuickJS isolates, with the Web APIs that AI workers use and the `env.AI` binding.
//!
//! Each [`Worker`] is a small pool of isolates, each on its own thread. The thread drives its
//! isolate's event loop itself, so JavaScript never runs on the async runtime, and it enforces
//! the worker's [`Limits`]: CPU time, wall time and subrequests per request, heap size and stack
//! depth. A request that breaks one fails with [`WorkerError::LimitExceeded`], and after a CPU,
//! memory or stack breach the isolate is rebuilt.
//!
//! The runtime reaches node services only through the traits in [`binding`].

pub mod binding;
pub mod bundle;
mod bytecode;
pub mod commonjs;
mod fetch;
mod heap;
mod host;
mod isolate;
mod kv;
pub mod modules;
pub mod outbound;
mod worker;

pub use binding::{AiBinding, AiError, AiOutput};
pub use outbound::{HostPattern, OutboundPolicy};
pub use worker::{
    Limit, Limits, ResponseBody, Secrets, Services, StartError, Worker, WorkerError, WorkerRequest,
    WorkerResponse, WorkerSpec,
};
