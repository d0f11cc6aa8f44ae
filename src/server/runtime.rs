//! The tokio runtime Kagami serves on, built in one place so that the binary and the
//! benchmarks measure the same scheduler settings.

/// How often (in scheduler ticks) a worker takes a task from the runtime's global queue even
/// while its own queue has work. A worker's own queue holds 256 tasks; with more connections
/// ready at once (a surge: hundreds of keep-alive clients on one core) the rest wait in the
/// global queue, which tokio's default (a self-tuned interval, about 61 ticks) visits rarely:
/// those clients saw the slowest answers. Measured with `cargo bench --bench scenario` at 512
/// connections on one worker (alternating 4 s runs, Kagami hits): p99 63-68 ms with the
/// default, 34-48 ms with 7, 14-15 ms with 2 (nginx: 11-17 ms); at 64 connections the queue
/// never overflows and req/s stayed within the runs' noise. An empty global queue costs one
/// atomic load to look at.
pub const GLOBAL_QUEUE_INTERVAL: u32 = 2;

/// A multi-thread runtime builder with Kagami's settings (`worker_threads`: tokio's default,
/// one per core, when `None`). The caller names threads and enables drivers as it needs.
pub fn builder(worker_threads: Option<usize>) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder.global_queue_interval(GLOBAL_QUEUE_INTERVAL);
    builder
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_runtime_builds_and_runs_with_kagamis_settings() {
        let runtime = super::builder(Some(1))
            .enable_all()
            .build()
            .expect("a runtime");
        assert_eq!(
            runtime.block_on(async { tokio::spawn(async { 7 }).await.ok() }),
            Some(7)
        );
    }
}
