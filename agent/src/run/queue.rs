//! The span queue between the capture thread and the async side.
//!
//! Spans cross in batches (one per drain cycle), so the async side is woken
//! once per batch rather than once per span.
//!
//! Guarantees: at most `cap` spans are queued at any time; spans beyond that
//! are not queued and [`SpanSender::send`] returns how many it dropped (the
//! caller counts them). Order is preserved.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::pipeline::MAX_EXCHANGES_PER_CYCLE;
use crate::span::model::Span;

/// Sending end (the capture thread).
pub struct SpanSender {
    tx: mpsc::Sender<Vec<Span>>,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

/// Receiving end (the async side).
pub struct SpanReceiver {
    rx: mpsc::Receiver<Vec<Span>>,
    queued: Arc<AtomicUsize>,
}

/// A queue holding at most `cap` spans (at least 1).
pub fn span_queue(cap: usize) -> (SpanSender, SpanReceiver) {
    let cap = cap.max(1);
    // Every batch holds at least one span, so `cap` batches always fit.
    let (tx, rx) = mpsc::channel(cap);
    let queued = Arc::new(AtomicUsize::new(0));
    (SpanSender { tx, queued: queued.clone(), cap }, SpanReceiver { rx, queued })
}

impl SpanSender {
    /// Queues the spans of `batch` that fit (oldest first) and empties it;
    /// returns how many did not fit (or found the receiver gone).
    pub fn send(&self, batch: &mut Vec<Span>) -> u64 {
        if batch.is_empty() {
            return 0;
        }
        let free = self.cap.saturating_sub(self.queued.load(Ordering::Acquire));
        let dropped = batch.len().saturating_sub(free);
        batch.truncate(free);
        if batch.is_empty() {
            return dropped as u64;
        }
        let n = batch.len();
        self.queued.fetch_add(n, Ordering::AcqRel);
        // The next batch starts at this one's size (at most a drain cycle's
        // worth): growing a vector of spans from empty every cycle copied
        // each span several times.
        let next = Vec::with_capacity(n.min(MAX_EXCHANGES_PER_CYCLE));
        match self.tx.try_send(std::mem::replace(batch, next)) {
            Ok(()) => dropped as u64,
            Err(_) => {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                (dropped + n) as u64
            }
        }
    }
}

impl SpanReceiver {
    /// The next batch; `None` once the sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Vec<Span>> {
        let batch = self.rx.recv().await?;
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        Some(batch)
    }

    /// Spans queued now.
    #[cfg(test)]
    pub fn depth(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::{Attributes, ProcessResource};

    fn spans(n: usize) -> Vec<Span> {
        let r = Arc::new(ProcessResource::default());
        (0..n).map(|i| Span::for_test(&i.to_string(), Attributes::new(), Attributes::new(), r.clone())).collect()
    }

    #[tokio::test]
    async fn holds_at_most_cap_spans_and_counts_the_rest() {
        let (tx, mut rx) = span_queue(5);
        let mut b = spans(3);
        assert_eq!(tx.send(&mut b), 0);
        assert!(b.is_empty());
        let mut b = spans(4);
        assert_eq!(tx.send(&mut b), 2, "only 2 of 4 fit beside the 3 queued");
        assert_eq!(rx.depth(), 5);
        let mut b = spans(1);
        assert_eq!(tx.send(&mut b), 1, "full queue");
        let first = rx.recv().await.expect("batch");
        assert_eq!(first.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["0", "1", "2"]);
        assert_eq!(rx.depth(), 2);
        let mut b = spans(3);
        assert_eq!(tx.send(&mut b), 0, "room again after the receiver took a batch");
        assert_eq!(rx.recv().await.expect("batch").len(), 2);
        assert_eq!(rx.recv().await.expect("batch").len(), 3);
        drop(tx);
        assert!(rx.recv().await.is_none());
    }

    #[test]
    fn a_gone_receiver_drops_and_counts() {
        let (tx, rx) = span_queue(8);
        drop(rx);
        let mut b = spans(2);
        assert_eq!(tx.send(&mut b), 2);
    }
}
