//! Batch-size buckets of the CUDA graphs captured for decode steps: a step of
//! n sequences replays the graph of the smallest bucket >= n, its extra rows
//! padded (padding rows have context length 0 and write no cache slot).
//!
//! The largest bucket is `max_batch` itself, never a multiple of 8 above it:
//! the workspace's per-row regions (last hidden states, logits, sampled ids)
//! hold --max-num-seqs rows, and no step has more sequences than that, so a
//! larger bucket would only write past those rows (capacity.rs tests this).

/// 1, 2, 4, 8, then the multiples of 8 below `max_batch`, then `max_batch`.
/// Empty when `max_batch` is 0.
pub fn buckets(max_batch: usize) -> Vec<usize> {
    let mut b: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|&x| x < max_batch).collect();
    b.extend((16..max_batch).step_by(8));
    if max_batch > 0 {
        b.push(max_batch);
    }
    b
}

/// The bucket a batch of `n` sequences runs in, or None when it is larger
/// than every bucket (the step then runs eagerly).
pub fn bucket_for(n: usize, buckets: &[usize]) -> Option<usize> {
    buckets.iter().copied().find(|&b| b >= n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_lists() {
        assert_eq!(buckets(0), Vec::<usize>::new());
        assert_eq!(buckets(1), vec![1]);
        assert_eq!(buckets(3), vec![1, 2, 3]);
        assert_eq!(buckets(8), vec![1, 2, 4, 8]);
        assert_eq!(buckets(20), vec![1, 2, 4, 8, 16, 20]);
        assert_eq!(buckets(24), vec![1, 2, 4, 8, 16, 24]);
        assert_eq!(buckets(9), vec![1, 2, 4, 8, 9]);
        let b = buckets(256);
        assert_eq!(b.len(), 4 + 31);
        assert_eq!(*b.last().unwrap(), 256);
    }

    #[test]
    fn every_batch_up_to_the_max_has_a_bucket_that_fits() {
        for max in [1, 5, 8, 9, 64, 100, 256] {
            let b = buckets(max);
            assert!(b.windows(2).all(|w| w[0] < w[1]), "sorted");
            assert_eq!(b.last(), Some(&max), "the top bucket is the maximum batch");
            for n in 1..=max {
                let k = bucket_for(n, &b).unwrap_or_else(|| panic!("no bucket for {n} (max {max})"));
                assert!(k >= n && k < n.max(4) * 2 + 8, "bucket {k} wastes too much for {n}");
            }
            assert_eq!(bucket_for(b.last().unwrap() + 1, &b), None);
        }
    }
}
