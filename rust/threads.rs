//! The crate's own rayon pool: sized by an environment variable and safe across fork.
//!
//! Size: `DENSE_PLANTAIN_NUM_THREADS`, else `RAYON_NUM_THREADS`, else every available core;
//! read when the pool is first used in a process. Results never depend on it (every parallel
//! loop combines its parts with exact integer sums and maxima, in a fixed order).
//!
//! Fork: a forked child inherits the parent's memory but none of its threads, so a pool built
//! before `fork()` would wait forever on workers that do not exist (the trap tokenizers warns
//! about). The pool remembers the process id that built it; a child sees a different id, leaves
//! the parent's pool untouched (leaked, never joined) and builds its own. Lock-free, so a lock
//! held by a parent thread at fork time cannot deadlock the child.

use rayon::{ThreadPool, ThreadPoolBuilder};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Environment variables read, in order, for the pool size.
pub const THREAD_ENV_VARS: [&str; 2] = ["DENSE_PLANTAIN_NUM_THREADS", "RAYON_NUM_THREADS"];

struct ProcessPool {
    pid: u32,
    pool: ThreadPool,
}

static POOL: AtomicPtr<ProcessPool> = AtomicPtr::new(ptr::null_mut());

/// The thread count the environment asks for, if any (a positive integer).
pub fn requested_threads() -> Option<usize> {
    THREAD_ENV_VARS.iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
    })
}

/// This process's pool, built on first use.
pub fn pool() -> &'static ThreadPool {
    let pid = std::process::id();
    loop {
        let current = POOL.load(Ordering::Acquire);
        // SAFETY: entries are leaked boxes, never freed once published.
        if let Some(entry) = unsafe { current.as_ref() } {
            if entry.pid == pid {
                return &entry.pool;
            }
        }
        let threads =
            requested_threads().unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("dense-plantain-{i}"))
            .build()
            .expect("cannot start the statistics thread pool");
        let fresh = Box::into_raw(Box::new(ProcessPool { pid, pool }));
        match POOL.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // The entry replaced (if any) belongs to a parent process: leak it.
            Ok(_) => return unsafe { &(*fresh).pool },
            // Another thread of this process published first: drop ours and use theirs.
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

/// Runs `f` inside this process's pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// The number of worker threads of this process's pool.
pub fn current_threads() -> usize {
    pool().current_num_threads()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_is_reused_within_a_process() {
        let a = super::pool() as *const _;
        let b = super::pool() as *const _;
        assert_eq!(a, b);
        assert!(super::current_threads() >= 1);
    }
}
