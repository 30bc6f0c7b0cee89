//! Dynamic batching: one dedicated thread per loaded encoder model, fed by a bounded queue.
//!
//! Requests submit their items (texts, images, tensors) to the queue. The worker thread takes
//! the oldest request, then keeps collecting for at most `max_wait` or until the batch holds
//! `max_batch_size` items or `max_batch_tokens` tokens, and runs the whole batch in one forward
//! pass. A request larger than one batch is split across several passes. When the queue is
//! full, `submit` fails at once with an out-of-capacity error (HTTP 429).

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::{ErrorKind, InferenceError};

/// Limits of one model's batches and queue.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Maximum items (texts or images) in one forward pass.
    pub max_batch_size: usize,
    /// Maximum tokens in one forward pass, counted before padding.
    pub max_batch_tokens: usize,
    /// How long the worker waits for more requests after the first one of a batch.
    pub max_wait: Duration,
    /// Requests that may wait for the worker; more get HTTP 429.
    pub queue_capacity: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 16_384,
            max_wait: Duration::ZERO,
            queue_capacity: 256,
        }
    }
}

/// The model side of a batch worker: runs a list of items in one forward pass.
pub trait BatchRunner: Send + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;

    /// Tokens an item adds to a batch; 1 for items without tokens, such as images.
    fn tokens(&self, item: &Self::Item) -> usize;

    /// Runs `items` in one forward pass and returns one output per item, in order.
    fn run(&mut self, items: Vec<Self::Item>) -> Result<Vec<Self::Output>, InferenceError>;
}

struct Job<R: BatchRunner> {
    items: Vec<R::Item>,
    queued: Instant,
    reply: oneshot::Sender<Result<Vec<R::Output>, InferenceError>>,
}

/// The request side of a batch worker. Dropping every clone stops the worker thread.
pub struct BatchHandle<R: BatchRunner> {
    queue: SyncSender<Job<R>>,
    model: Arc<str>,
}

impl<R: BatchRunner> Clone for BatchHandle<R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            model: Arc::clone(&self.model),
        }
    }
}

impl<R: BatchRunner> BatchHandle<R> {
    /// Starts the worker thread of `model`, which owns `runner`.
    pub fn spawn(model: &str, runner: R, options: BatchOptions) -> Result<Self, InferenceError> {
        let (queue, jobs) = mpsc::sync_channel(options.queue_capacity.max(1));
        let worker = Worker {
            runner,
            options,
            model: model.to_string(),
        };
        std::thread::Builder::new()
            .name(format!("kiln-batch-{model}"))
            .spawn(move || worker.serve(jobs))
            .map_err(|error| {
                InferenceError::internal(format!("failed to start the model thread: {error}"))
            })?;
        Ok(Self {
            queue,
            model: model.into(),
        })
    }

    /// Queues `items` as one request and waits for their outputs.
    pub async fn submit(&self, items: Vec<R::Item>) -> Result<Vec<R::Output>, InferenceError> {
        let (reply, outputs) = oneshot::channel();
        let job = Job {
            items,
            queued: Instant::now(),
            reply,
        };
        let model = self.model.to_string();
        match self.queue.try_send(job) {
            Ok(()) => metrics::gauge!("kiln_inference_queue_depth", "model" => model).increment(1),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("kiln_inference_rejected_total", "model" => model).increment(1);
                return Err(InferenceError::new(
                    ErrorKind::OutOfCapacity,
                    format!(
                        "Capacity temporarily exceeded, please try again: the queue of model {} \
                         is full (batching.queue_capacity in kiln.toml)",
                        self.model
                    ),
                ));
            }
            Err(TrySendError::Disconnected(_)) => return Err(worker_stopped(&self.model)),
        }
        outputs.await.map_err(|_| worker_stopped(&self.model))?
    }
}

fn worker_stopped(model: &str) -> InferenceError {
    InferenceError::new(
        ErrorKind::ModelUnavailable,
        format!("the thread of model {model} stopped; see the node's log"),
    )
}

struct Worker<R: BatchRunner> {
    runner: R,
    options: BatchOptions,
    model: String,
}

/// A request in a batch: how many of the batch's items are its own, and where to reply.
struct Pending<R: BatchRunner> {
    count: usize,
    reply: oneshot::Sender<Result<Vec<R::Output>, InferenceError>>,
}

impl<R: BatchRunner> Worker<R> {
    fn serve(mut self, jobs: mpsc::Receiver<Job<R>>) {
        tracing::info!(model = %self.model, "model thread started");
        let mut carried: Option<Job<R>> = None;
        loop {
            let first = match carried.take() {
                Some(job) => job,
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let mut batch = vec![first];
            let mut size = batch[0].items.len();
            let mut tokens = self.job_tokens(&batch[0]);
            let deadline = Instant::now() + self.options.max_wait;
            while size < self.options.max_batch_size && tokens < self.options.max_batch_tokens {
                let timeout = deadline.saturating_duration_since(Instant::now());
                let job = match jobs.recv_timeout(timeout) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                };
                let job_tokens = self.job_tokens(&job);
                if size + job.items.len() > self.options.max_batch_size
                    || tokens + job_tokens > self.options.max_batch_tokens
                {
                    carried = Some(job);
                    break;
                }
                size += job.items.len();
                tokens += job_tokens;
                batch.push(job);
            }
            self.run_batch(batch);
        }
        tracing::info!(model = %self.model, "model thread stopped");
    }

    fn job_tokens(&self, job: &Job<R>) -> usize {
        job.items.iter().map(|item| self.runner.tokens(item)).sum()
    }

    /// Runs the jobs' items in passes of at most `max_batch_size` items and `max_batch_tokens`
    /// tokens (a single item over the token limit gets a pass of its own), then replies.
    fn run_batch(&mut self, batch: Vec<Job<R>>) {
        let mut pending = VecDeque::new();
        let mut items = VecDeque::new();
        let model = self.model.clone();
        let depth = metrics::gauge!("kiln_inference_queue_depth", "model" => model.clone());
        let wait =
            metrics::histogram!("kiln_inference_queue_wait_seconds", "model" => model.clone());
        for job in batch {
            depth.decrement(1);
            wait.record(job.queued.elapsed().as_secs_f64());
            if job.reply.is_closed() {
                continue;
            }
            pending.push_back(Pending::<R> {
                count: job.items.len(),
                reply: job.reply,
            });
            items.extend(job.items);
        }

        let mut outputs: Result<Vec<R::Output>, InferenceError> = Ok(Vec::new());
        while !items.is_empty() {
            let mut pass = Vec::new();
            let mut tokens = 0;
            while let Some(item) = items.front() {
                let item_tokens = self.runner.tokens(item);
                let full = pass.len() >= self.options.max_batch_size
                    || (!pass.is_empty() && tokens + item_tokens > self.options.max_batch_tokens);
                if full {
                    break;
                }
                tokens += item_tokens;
                pass.extend(items.pop_front());
            }
            let pass_size = pass.len();
            let labels = [("model", model.clone())];
            metrics::counter!("kiln_batch_forward_passes_total", &labels).increment(1);
            metrics::counter!("kiln_batch_items_total", &labels).increment(pass_size as u64);
            metrics::histogram!("kiln_batch_size", &labels).record(pass_size as f64);
            metrics::counter!("kiln_input_tokens_total", &labels).increment(tokens as u64);
            let started = Instant::now();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.runner.run(pass)))
                    .unwrap_or_else(|_| Err(InferenceError::internal("the forward pass panicked")));
            tracing::debug!(
                model = %self.model,
                items = pass_size,
                tokens,
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "forward pass"
            );
            match (result, &mut outputs) {
                (Ok(pass_outputs), Ok(all)) if pass_outputs.len() == pass_size => {
                    all.extend(pass_outputs)
                }
                (Ok(pass_outputs), Ok(_)) => {
                    outputs = Err(InferenceError::internal(format!(
                        "the forward pass returned {} outputs for {pass_size} items",
                        pass_outputs.len()
                    )));
                }
                (Err(error), Ok(_)) => {
                    tracing::error!(model = %self.model, error = %error, "forward pass failed");
                    outputs = Err(error);
                }
                (_, Err(_)) => {}
            }
        }

        match outputs {
            Ok(all) => {
                let mut all = all.into_iter();
                for request in pending {
                    let own: Vec<R::Output> = all.by_ref().take(request.count).collect();
                    let _ = request.reply.send(Ok(own));
                }
            }
            Err(error) => {
                for request in pending {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles numbers and records the size of each pass.
    struct Doubler {
        passes: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl BatchRunner for Doubler {
        type Item = u32;
        type Output = u32;

        fn tokens(&self, item: &u32) -> usize {
            *item as usize
        }

        fn run(&mut self, items: Vec<u32>) -> Result<Vec<u32>, InferenceError> {
            self.passes.lock().unwrap().push(items.len());
            Ok(items.into_iter().map(|item| item * 2).collect())
        }
    }

    fn options(max_batch_size: usize, max_batch_tokens: usize) -> BatchOptions {
        BatchOptions {
            max_batch_size,
            max_batch_tokens,
            max_wait: Duration::from_millis(50),
            queue_capacity: 64,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_passes() {
        let passes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let runner = Doubler {
            passes: Arc::clone(&passes),
        };
        let handle = BatchHandle::spawn("doubler", runner, options(8, 1000)).unwrap();
        let requests: Vec<_> = (1..=16u32)
            .map(|n| {
                let handle = handle.clone();
                tokio::spawn(async move { (n, handle.submit(vec![n]).await) })
            })
            .collect();
        for request in requests {
            let (n, outputs) = request.await.expect("request task");
            assert_eq!(outputs.unwrap(), vec![n * 2]);
        }
        let passes = passes.lock().unwrap();
        assert_eq!(passes.iter().sum::<usize>(), 16);
        assert!(passes.iter().all(|&size| size <= 8), "{passes:?}");
        assert!(passes.len() < 16, "{passes:?}");
    }

    /// Blocks each pass until the test sends a release, and reports when a pass starts.
    struct Gate {
        started: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    }

    impl BatchRunner for Gate {
        type Item = u32;
        type Output = u32;

        fn tokens(&self, _item: &u32) -> usize {
            1
        }

        fn run(&mut self, items: Vec<u32>) -> Result<Vec<u32>, InferenceError> {
            let _ = self.started.send(());
            let _ = self.release.recv();
            Ok(items)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_is_out_of_capacity() {
        let (started_sender, started) = std::sync::mpsc::channel();
        let (release, release_receiver) = std::sync::mpsc::channel();
        let runner = Gate {
            started: started_sender,
            release: release_receiver,
        };
        let options = BatchOptions {
            max_batch_size: 1,
            max_batch_tokens: 10,
            max_wait: Duration::ZERO,
            queue_capacity: 1,
        };
        let handle = BatchHandle::spawn("gate", runner, options).unwrap();

        let running = tokio::spawn({
            let handle = handle.clone();
            async move { handle.submit(vec![1]).await }
        });
        started.recv().expect("first pass starts");

        // The worker is blocked in the first pass, so of two more requests one fills the
        // queue and the other is rejected, and only the rejected one can finish now.
        let mut second = tokio::spawn({
            let handle = handle.clone();
            async move { handle.submit(vec![2]).await }
        });
        let mut third = tokio::spawn({
            let handle = handle.clone();
            async move { handle.submit(vec![3]).await }
        });
        let (rejected, queued) = tokio::select! {
            result = &mut second => (result.unwrap(), third),
            result = &mut third => (result.unwrap(), second),
        };
        let error = rejected.expect_err("one request is rejected");
        assert_eq!(error.kind, ErrorKind::OutOfCapacity);
        assert_eq!(error.status(), 429);

        release.send(()).unwrap();
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap().unwrap(), vec![1]);
        assert_eq!(queued.await.unwrap().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn large_request_is_split_by_tokens() {
        let passes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let runner = Doubler {
            passes: Arc::clone(&passes),
        };
        let handle = BatchHandle::spawn("doubler", runner, options(100, 10)).unwrap();
        let outputs = handle.submit(vec![4, 4, 4, 20, 1]).await.unwrap();
        assert_eq!(outputs, vec![8, 8, 8, 40, 2]);
        assert_eq!(*passes.lock().unwrap(), vec![2, 1, 1, 1]);
    }
}
