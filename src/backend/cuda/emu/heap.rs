//! Memory of the emulated device: every allocation is host memory with
//! GUARD bytes of a fixed pattern before and after it, and named regions
//! inside an allocation (the workspace's activations, the step inputs) can
//! be declared so that the gap after each is guarded too. `check` finds any
//! guard byte that changed — what compute-sanitizer's memcheck reports for
//! an out-of-bounds write on a GPU — and names the region it follows.
//!
//! ```text
//! allocation:  [GUARD][ data: bytes ][GUARD]        device address = start of data
//! regions:     [ r0 ][gap][ r1 ][gap] ... [ rN ][gap]   gaps are guarded too
//! ```

use crate::backend::cuda::error::CudaError;
use std::alloc::Layout;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Guard bytes before and after every allocation; also the alignment of
/// every allocation (what cudaMalloc guarantees).
pub const GUARD: usize = 256;
/// The value every guard byte holds.
pub const PATTERN: u8 = 0xA5;

struct Block {
    /// Host address of the leading guard.
    base: usize,
    bytes: usize,
}

impl Block {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.bytes + 2 * GUARD, GUARD).expect("allocation size fits a Layout")
    }
}

/// Named regions of one allocation and the guarded gap after each.
struct Watched {
    what: &'static str,
    /// (region name, gap start, gap end) as device addresses.
    gaps: Vec<(&'static str, u64, u64)>,
}

#[derive(Default)]
struct Inner {
    /// Keyed by device address (start of data).
    blocks: BTreeMap<u64, Block>,
    /// Keyed by the allocation's device address.
    watched: BTreeMap<u64, Watched>,
    in_use: usize,
}

/// The emulated device's memory: allocations, their guards, watched regions.
pub struct Heap {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// Fills `len` bytes at host address `at` with the guard pattern.
///
/// # Safety
/// `at .. at + len` must be writable memory of one live allocation.
unsafe fn fill(at: u64, len: usize) {
    std::ptr::write_bytes(at as *mut u8, PATTERN, len);
}

/// Offset of the first byte in `at .. at + len` that is not the pattern.
///
/// # Safety
/// `at .. at + len` must be readable memory of one live allocation.
unsafe fn first_changed(at: u64, len: usize) -> Option<usize> {
    let s = std::slice::from_raw_parts(at as *const u8, len);
    if s.iter().all(|&b| b == PATTERN) {
        return None;
    }
    s.iter().position(|&b| b != PATTERN)
}

impl Heap {
    /// A heap that refuses allocations beyond `capacity` bytes in use.
    pub fn new(capacity: usize) -> Heap {
        Heap { capacity, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the maps half-updated: recover them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (free, total) bytes.
    pub fn mem_info(&self) -> (usize, usize) {
        let used = self.lock().in_use;
        (self.capacity.saturating_sub(used), self.capacity)
    }

    /// A zeroed allocation of `bytes` with guards on both sides; returns its
    /// device (= host) address.
    pub fn alloc(&self, bytes: usize) -> Result<u64, CudaError> {
        let mut g = self.lock();
        if g.in_use + bytes > self.capacity {
            return Err(CudaError::Emulated(format!(
                "out of memory allocating {bytes} bytes ({} of {} in use)",
                g.in_use, self.capacity
            )));
        }
        let block = Block { base: 0, bytes };
        // SAFETY: the layout has a non-zero size (2 * GUARD at least).
        let base = unsafe { std::alloc::alloc_zeroed(block.layout()) } as usize;
        if base == 0 {
            return Err(CudaError::Emulated(format!("host allocation of {bytes} bytes failed")));
        }
        let data = (base + GUARD) as u64;
        // SAFETY: both guards lie inside the allocation just made.
        unsafe {
            fill(base as u64, GUARD);
            fill(data + bytes as u64, GUARD);
        }
        g.blocks.insert(data, Block { base, bytes });
        g.in_use += bytes;
        Ok(data)
    }

    /// Frees the allocation at `ptr`; a changed guard is logged (a drop
    /// cannot fail).
    pub fn free(&self, ptr: u64) {
        let mut g = self.lock();
        if let Err(e) = check_block(ptr, g.blocks.get(&ptr), "freeing it") {
            tracing::error!("emulated device: {e}");
        }
        g.watched.remove(&ptr);
        if let Some(b) = g.blocks.remove(&ptr) {
            g.in_use -= b.bytes;
            // SAFETY: allocated in `alloc` with this layout, freed once.
            unsafe { std::alloc::dealloc(b.base as *mut u8, b.layout()) };
        }
    }

    /// Fails unless `ptr .. ptr + len` lies inside one live allocation (the
    /// check every copy and memset makes).
    pub fn check_range(&self, ptr: u64, len: usize, op: &str) -> Result<(), CudaError> {
        let g = self.lock();
        let inside = g.blocks.range(..=ptr).next_back().is_some_and(|(&start, b)| ptr + len as u64 <= start + b.bytes as u64);
        if inside || len == 0 {
            return Ok(());
        }
        Err(CudaError::Emulated(format!("{op} of {len} bytes at {ptr:#x} lies outside every allocation")))
    }

    /// Declares the regions (name, offset, bytes) of the allocation at
    /// `base` and fills the gap after each with the pattern, up to the next
    /// region (the last: up to GUARD bytes, within the allocation).
    pub fn watch(&self, base: u64, what: &'static str, regions: &[(&'static str, usize, usize)]) -> Result<(), CudaError> {
        let mut g = self.lock();
        let size = g.blocks.get(&base).map(|b| b.bytes).ok_or_else(|| {
            CudaError::Emulated(format!("guard regions declared for {what} at {base:#x}, which is not an allocation"))
        })?;
        let mut sorted = regions.to_vec();
        sorted.sort_by_key(|r| r.1);
        let mut gaps = Vec::with_capacity(sorted.len());
        for (i, &(name, off, bytes)) in sorted.iter().enumerate() {
            let start = off + bytes;
            let end = sorted.get(i + 1).map_or((start + GUARD).min(size), |next| next.1);
            if start > size || end < start {
                return Err(CudaError::Emulated(format!("{what}: region '{name}' overlaps the next or ends past the allocation")));
            }
            if end > start {
                // SAFETY: start .. end lies inside the allocation (checked above).
                unsafe { fill(base + start as u64, end - start) };
                gaps.push((name, base + start as u64, base + end as u64));
            }
        }
        g.watched.insert(base, Watched { what, gaps });
        Ok(())
    }

    /// Checks every guard: the ones around each allocation and the gaps
    /// after every watched region. `op` names what just ran (for the error).
    /// A changed guard is restored after it is reported.
    pub fn check(&self, op: &str) -> Result<(), CudaError> {
        let g = self.lock();
        for (&ptr, b) in &g.blocks {
            if let Err(e) = check_block(ptr, Some(b), op) {
                // SAFETY: the guards of a live block.
                unsafe {
                    fill(b.base as u64, GUARD);
                    fill(ptr + b.bytes as u64, GUARD);
                }
                return Err(e);
            }
        }
        for w in g.watched.values() {
            for &(name, start, end) in &w.gaps {
                // SAFETY: gaps lie inside a live allocation (removed on free).
                if let Some(at) = unsafe { first_changed(start, (end - start) as usize) } {
                    unsafe { fill(start, (end - start) as usize) };
                    return Err(CudaError::GuardOverwritten {
                        op: op.to_string(),
                        region: format!("past region '{name}' of {}", w.what),
                        offset: at,
                    });
                }
            }
        }
        Ok(())
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for b in g.blocks.values() {
            // SAFETY: allocated in `alloc` with this layout; DeviceMem holds
            // an Arc of the heap, so no allocation outlives it.
            unsafe { std::alloc::dealloc(b.base as *mut u8, b.layout()) };
        }
    }
}

fn check_block(ptr: u64, b: Option<&Block>, op: &str) -> Result<(), CudaError> {
    let Some(b) = b else { return Ok(()) };
    let what = |side: &str| format!("{side} an allocation of {} bytes at {ptr:#x}", b.bytes);
    // SAFETY: both guards lie inside the live block.
    if let Some(at) = unsafe { first_changed(b.base as u64, GUARD) } {
        return Err(CudaError::GuardOverwritten { op: op.into(), region: what("before"), offset: at });
    }
    if let Some(at) = unsafe { first_changed(ptr + b.bytes as u64, GUARD) } {
        return Err(CudaError::GuardOverwritten { op: op.into(), region: what("past"), offset: at });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poke(at: u64, v: u8) {
        // SAFETY: tests poke inside an allocation or its guards.
        unsafe { *(at as *mut u8) = v };
    }

    #[test]
    fn guards_catch_writes_on_either_side_and_are_restored() {
        let h = Heap::new(1 << 20);
        let p = h.alloc(100).unwrap();
        assert_eq!(p % GUARD as u64, 0);
        poke(p + 99, 1); // inside: fine
        h.check("k").unwrap();
        poke(p + 100, 1);
        let e = h.check("kernel k").unwrap_err().to_string();
        assert!(e.contains("kernel k") && e.contains("past an allocation of 100 bytes"), "{e}");
        h.check("k").unwrap(); // restored
        poke(p - 1, 0);
        assert!(h.check("k").unwrap_err().to_string().contains("before an allocation"));
        h.free(p);
        assert_eq!(h.mem_info(), (1 << 20, 1 << 20));
    }

    #[test]
    fn watched_regions_name_the_overrun() {
        let h = Heap::new(1 << 20);
        let p = h.alloc(2048).unwrap();
        h.watch(p, "the workspace", &[("a", 0, 100), ("b", 512, 10)]).unwrap();
        poke(p + 99, 7);
        poke(p + 512, 7);
        h.check("k").unwrap();
        poke(p + 300, 7);
        let e = h.check("kernel x").unwrap_err().to_string();
        assert!(e.contains("region 'a' of the workspace") && e.contains("kernel x"), "{e}");
        poke(p + 522, 7);
        assert!(h.check("k").unwrap_err().to_string().contains("region 'b'"));
        h.free(p);
    }

    #[test]
    fn copies_must_stay_inside_one_allocation_and_memory_is_bounded() {
        let h = Heap::new(1000);
        let p = h.alloc(600).unwrap();
        h.check_range(p, 600, "upload").unwrap();
        assert!(h.check_range(p + 1, 600, "upload").is_err());
        assert!(h.check_range(p - 8, 8, "upload").is_err());
        assert!(h.alloc(500).unwrap_err().to_string().contains("out of memory"));
        h.free(p);
    }
}
