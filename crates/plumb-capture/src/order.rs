//! Packets put back in time order: a heap of items by (timestamp, arrival
//! number), the arrival number keeping packets of one timestamp in the
//! order they came. plumb capture merges its sockets with it, and kubectl
//! plumb capture its nodes.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

struct Timed<T> {
    ts: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Timed<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.ts, self.seq) == (o.ts, o.seq)
    }
}
impl<T> Eq for Timed<T> {}
impl<T> PartialOrd for Timed<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Timed<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.ts, self.seq).cmp(&(o.ts, o.seq))
    }
}

/// Items waiting to be let go oldest first.
pub struct TimeOrder<T> {
    heap: BinaryHeap<Reverse<Timed<T>>>,
    seq: u64,
}

impl<T> Default for TimeOrder<T> {
    fn default() -> Self {
        TimeOrder {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> TimeOrder<T> {
    pub fn push(&mut self, ts: u64, item: T) {
        self.seq += 1;
        self.heap.push(Reverse(Timed {
            ts,
            seq: self.seq,
            item,
        }));
    }

    /// The oldest item, if its timestamp is at most `until`.
    pub fn pop_until(&mut self, until: u64) -> Option<(u64, T)> {
        if self.heap.peek().is_some_and(|Reverse(t)| t.ts <= until) {
            self.heap.pop().map(|Reverse(t)| (t.ts, t.item))
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_oldest_first_and_ties_in_arrival_order() {
        let mut o = TimeOrder::default();
        o.push(30, "c");
        o.push(10, "a1");
        o.push(20, "b");
        o.push(10, "a2");
        assert_eq!(o.pop_until(15), Some((10, "a1")));
        assert_eq!(o.pop_until(15), Some((10, "a2")));
        assert_eq!(o.pop_until(15), None);
        assert_eq!(o.pop_until(u64::MAX), Some((20, "b")));
        assert_eq!(o.pop_until(u64::MAX), Some((30, "c")));
        assert!(o.is_empty());
    }
}
