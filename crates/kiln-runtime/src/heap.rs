//! The allocator under each isolate's QuickJS heap. It counts the bytes it holds, so the memory
//! check after every turn can skip QuickJS's own count while the heap is far below its limit.
//!
//! QuickJS's count (`JS_ComputeMemoryUsage`) walks every object, shape and atom of the heap: it
//! took 13% of the CPU time of `kiln dev` serving a hello-world worker under wrk (perf, see the
//! Workers section of docs/benchmarks.md). The allocator's count is an upper bound of QuickJS's
//! `malloc_size`. QuickJS carves small blocks out of 4 KiB arenas that it takes from this
//! allocator, and it counts a large block at the size this allocator reports for it. So it
//! never counts more than the allocator contains, except for 8 bytes of bookkeeping per
//! zero-size allocation, which [`HeapCounter::may_exceed`] covers with a margin.

use std::cell::Cell;
use std::rc::Rc;

use rquickjs::allocator::Allocator;

/// Bytes added to the allocator's count before it is compared with a threshold, for the
/// bookkeeping that QuickJS counts without allocating it.
const MARGIN_BYTES: usize = 1024 * 1024;

/// Bytes that one isolate's allocator holds, shared between the allocator and the isolate.
#[derive(Clone, Default)]
pub(crate) struct HeapCounter {
    bytes: Rc<Cell<usize>>,
}

impl HeapCounter {
    /// Bytes held now, as the system allocator reports their usable sizes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.get()
    }

    /// Returns false when QuickJS's count of the heap is certainly below `threshold` bytes,
    /// and true when only QuickJS's own count can tell.
    pub(crate) fn may_exceed(&self, threshold: usize) -> bool {
        self.bytes().saturating_add(MARGIN_BYTES) >= threshold
    }

    fn add(&self, bytes: usize) {
        self.bytes.set(self.bytes.get().saturating_add(bytes));
    }

    fn subtract(&self, bytes: usize) {
        self.bytes.set(self.bytes.get().saturating_sub(bytes));
    }
}

/// The system allocator (`malloc`), counting its allocated bytes in a [`HeapCounter`].
pub(crate) struct CountingAllocator {
    counter: HeapCounter,
}

impl CountingAllocator {
    pub(crate) fn new(counter: HeapCounter) -> Self {
        Self { counter }
    }
}

/// Usable size of a block from `malloc`, 0 for null.
fn usable_size(ptr: *mut u8) -> usize {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: every non-null pointer passed here comes from malloc, calloc or realloc below and
    // has not been freed.
    unsafe { libc::malloc_usable_size(ptr.cast()) }
}

// SAFETY: every block comes from the C allocator, whose blocks are aligned for any type (16
// bytes on x86-64 and aarch64 glibc), which covers the `usize` alignment the trait requires.
// `usable_size` reports the C allocator's own usable size of the block.
unsafe impl Allocator for CountingAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        // SAFETY: malloc accepts any size and returns null on failure.
        let ptr = unsafe { libc::malloc(size) }.cast::<u8>();
        self.counter.add(usable_size(ptr));
        ptr
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        // SAFETY: calloc checks `count * size` for overflow and returns null on failure.
        let ptr = unsafe { libc::calloc(count, size) }.cast::<u8>();
        self.counter.add(usable_size(ptr));
        ptr
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        self.counter.subtract(usable_size(ptr));
        // SAFETY: the caller passes a block from this allocator that it no longer uses.
        unsafe { libc::free(ptr.cast()) };
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        let old = usable_size(ptr);
        // SAFETY: the caller passes null or a block from this allocator.
        let moved = unsafe { libc::realloc(ptr.cast(), new_size) }.cast::<u8>();
        if moved.is_null() && new_size != 0 {
            // The old block is still allocated, unchanged.
            return moved;
        }
        // realloc to 0 bytes frees the block and may return null.
        self.counter.subtract(old);
        self.counter.add(usable_size(moved));
        moved
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        usable_size(ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rquickjs::{Context, Runtime};

    /// Asserts the bound that the memory check relies on.
    fn assert_bound(runtime: &Runtime, counter: &HeapCounter, step: &str) {
        let counted = runtime.memory_usage().malloc_size as usize;
        assert!(
            counter.bytes() + MARGIN_BYTES >= counted,
            "after {step}: the allocator holds {} bytes, QuickJS counts {counted}",
            counter.bytes()
        );
        assert!(
            counter.may_exceed(counted),
            "after {step}: may_exceed({counted}) is false"
        );
    }

    #[test]
    fn counter_bounds_quickjs_heap_count() {
        let counter = HeapCounter::default();
        let runtime = Runtime::new_with_alloc(CountingAllocator::new(counter.clone()))
            .expect("create a runtime");
        let context = Context::full(&runtime).expect("create a context");
        assert!(counter.bytes() > 0, "creating a context allocates");
        assert_bound(&runtime, &counter, "creating the context");

        let steps = [
            (
                "small objects",
                "globalThis.a = []; for (let i = 0; i < 50000; i++) a.push({ i });",
            ),
            (
                "a large string",
                "globalThis.s = 'x'.repeat(8 * 1024 * 1024);",
            ),
            (
                "a large buffer",
                "globalThis.b = new Uint8Array(16 * 1024 * 1024);",
            ),
            (
                "growing arrays",
                "globalThis.g = []; for (let i = 0; i < 300000; i++) g.push(i * 0.5);",
            ),
        ];
        for (step, source) in steps {
            context.with(|ctx| {
                ctx.eval::<(), _>(source)
                    .unwrap_or_else(|err| panic!("{step} failed: {err}"))
            });
            assert_bound(&runtime, &counter, step);
        }

        let before = counter.bytes();
        context.with(|ctx| {
            ctx.eval::<(), _>("a = null; s = null; b = null; g = null;")
                .expect("drop the references")
        });
        runtime.run_gc();
        assert_bound(&runtime, &counter, "freeing everything");
        assert!(
            counter.bytes() + 24 * 1024 * 1024 < before,
            "freeing at least 24 MiB of strings and buffers lowers the count: {before} before, {} \
             after",
            counter.bytes()
        );
    }

    #[test]
    fn counter_returns_to_zero_on_drop() {
        let counter = HeapCounter::default();
        {
            let runtime = Runtime::new_with_alloc(CountingAllocator::new(counter.clone()))
                .expect("create a runtime");
            let context = Context::full(&runtime).expect("create a context");
            context.with(|ctx| {
                ctx.eval::<(), _>("globalThis.b = new Uint8Array(1024 * 1024);")
                    .expect("allocate a buffer")
            });
            assert!(counter.bytes() >= 1024 * 1024);
        }
        assert_eq!(counter.bytes(), 0, "a dropped runtime frees every block");
    }
}
