//! The order waiting jobs start in: higher priority first; within a priority, longest estimated
//! first (so the long ones do not start last and stretch the run); then first come, first
//! served.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

/// What the queue orders by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rank {
    pub priority: i8,
    /// Unknown durations rank as zero: a job never seen before is usually given a higher
    /// priority by its runner instead.
    pub estimated: Option<Duration>,
    /// Arrival order, to break ties.
    pub seq: u64,
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| self.estimated.unwrap_or_default().cmp(&other.estimated.unwrap_or_default()))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug)]
struct Entry<T> {
    rank: Rank,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.rank == other.rank
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank.cmp(&other.rank)
    }
}

/// A priority queue of waiting items.
#[derive(Debug)]
pub struct Queue<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), seq: 0 }
    }
}

impl<T> Queue<T> {
    pub fn push(&mut self, priority: i8, estimated: Option<Duration>, item: T) {
        let rank = Rank { priority, estimated, seq: self.seq };
        self.seq += 1;
        self.heap.push(Entry { rank, item });
    }

    pub fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|e| e.item)
    }

    /// The item `pop` would return.
    pub fn peek(&self) -> Option<&T> {
        self.heap.peek().map(|e| &e.item)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Removes and returns the items `matches` picks.
    pub fn remove_where(&mut self, mut matches: impl FnMut(&T) -> bool) -> Vec<T> {
        let (taken, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.heap).into_iter().partition(|e| matches(&e.item));
        self.heap = kept.into();
        taken.into_iter().map(|e| e.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_longest_then_first_come() {
        let mut q = Queue::default();
        let s = Duration::from_secs;
        q.push(0, Some(s(1)), "short");
        q.push(0, Some(s(9)), "long");
        q.push(1, None, "urgent");
        q.push(0, None, "unknown-a");
        q.push(0, None, "unknown-b");
        q.push(-1, Some(s(100)), "background");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["urgent", "long", "short", "unknown-a", "unknown-b", "background"]);
    }

    #[test]
    fn removal_keeps_the_rest_in_order() {
        let mut q = Queue::default();
        for i in 0..6 {
            q.push(0, None, i);
        }
        let mut removed = q.remove_where(|i| i % 2 == 0);
        removed.sort_unstable();
        assert_eq!(removed, [0, 2, 4]);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, [1, 3, 5]);
    }
}
