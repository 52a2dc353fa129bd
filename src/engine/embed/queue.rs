//! The embedding engine's waiting line and the rule that forms a step from
//! it: inputs in arrival order, interactive ones before batch ones, as many
//! as fit the step's token budget (`max_num_batched_tokens`) and sequence
//! cap (`max_num_seqs`) — the same two limits the generation scheduler
//! applies. An input is never split: every input fits one step by
//! construction (`max_model_len <= max_num_batched_tokens`).

use std::collections::VecDeque;

use crate::engine::Priority;

/// One input of one request, waiting to be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The request's key in the engine.
    pub request: u64,
    /// Position of this input in its request.
    pub index: usize,
    pub tokens: Vec<u32>,
}

/// Inputs waiting, one line per priority.
#[derive(Debug, Default)]
pub struct Queue {
    interactive: VecDeque<Item>,
    batch: VecDeque<Item>,
}

impl Queue {
    pub fn push(&mut self, item: Item, priority: Priority) {
        match priority {
            Priority::Interactive => self.interactive.push_back(item),
            Priority::Batch => self.batch.push_back(item),
        }
    }

    pub fn len(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every input of requests `keep` refuses (their clients left).
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.interactive.retain(|i| keep(i.request));
        self.batch.retain(|i| keep(i.request));
    }

    /// The next step: the oldest inputs (interactive first) while their
    /// tokens fit `budget` and their count `max_seqs`. The first input is
    /// always taken, so a step is never empty while inputs wait.
    pub fn next_step(&mut self, budget: usize, max_seqs: usize) -> Vec<Item> {
        let mut step: Vec<Item> = Vec::new();
        let mut tokens = 0;
        for line in [&mut self.interactive, &mut self.batch] {
            while let Some(front) = line.front() {
                let fits = step.is_empty() || (tokens + front.tokens.len() <= budget && step.len() < max_seqs);
                if !fits {
                    return step;
                }
                tokens += front.tokens.len();
                step.extend(line.pop_front());
            }
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(request: u64, index: usize, len: usize) -> Item {
        Item { request, index, tokens: vec![7; len] }
    }

    fn ids(step: &[Item]) -> Vec<(u64, usize)> {
        step.iter().map(|i| (i.request, i.index)).collect()
    }

    #[test]
    fn steps_fill_the_budget_across_requests_in_order() {
        let mut q = Queue::default();
        for (r, lens) in [(0u64, vec![30, 30]), (1, vec![50]), (2, vec![20, 10])] {
            for (i, len) in lens.into_iter().enumerate() {
                q.push(item(r, i, len), Priority::Interactive);
            }
        }
        assert_eq!(ids(&q.next_step(100, 8)), vec![(0, 0), (0, 1)]); // 60 + 50 > 100
        assert_eq!(ids(&q.next_step(100, 8)), vec![(1, 0), (2, 0), (2, 1)]);
        assert!(q.is_empty());
    }

    #[test]
    fn seq_cap_priority_and_retain() {
        let mut q = Queue::default();
        q.push(item(9, 0, 5), Priority::Batch);
        for i in 0..3 {
            q.push(item(1, i, 5), Priority::Interactive);
        }
        q.push(item(2, 0, 5), Priority::Interactive);
        q.retain(|r| r != 2);
        assert_eq!(ids(&q.next_step(1000, 2)), vec![(1, 0), (1, 1)]);
        assert_eq!(ids(&q.next_step(1000, 2)), vec![(1, 2), (9, 0)]);
        // An input larger than the budget still runs, alone.
        q.push(item(3, 0, 50), Priority::Interactive);
        q.push(item(3, 1, 1), Priority::Interactive);
        assert_eq!(ids(&q.next_step(10, 8)), vec![(3, 0)]);
    }
}
