//! Delivery accounting: one [`Tally`] per subscriber (owned by its task, no locks), merged into
//! [`Totals`] at the end of a run.
//!
//! A subscriber expects the sequence numbers `0..expected` of its channel, in order. Every
//! delivery is classified as new, a duplicate (seen before) or unexpected (outside the range);
//! a new one whose number is below the highest seen so far is also counted as reordered.
//! Whatever was expected but never seen is lost.

use std::time::Instant;

#[derive(Debug)]
pub struct Tally {
    expected: u64,
    /// One bit per expected sequence number.
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    unexpected: u64,
    highest: Option<u64>,
    last_at: Option<Instant>,
}

impl Tally {
    pub fn new(expected: u64) -> Self {
        Self {
            expected,
            seen: vec![0; expected.div_ceil(64) as usize],
            unique: 0,
            duplicates: 0,
            reordered: 0,
            unexpected: 0,
            highest: None,
            last_at: None,
        }
    }

    /// Counts one delivery. Returns true when it completes the expected set.
    pub fn record(&mut self, seq: u64, at: Instant) -> bool {
        self.last_at = Some(at);
        if seq >= self.expected {
            self.unexpected += 1;
            return false;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if self.highest.is_some_and(|h| seq < h) {
            self.reordered += 1;
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        self.unique == self.expected
    }

    pub fn is_complete(&self) -> bool {
        self.unique == self.expected
    }
}

/// The sum over all subscribers of a run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Totals {
    /// Reported once, by the run.
    #[serde(skip)]
    pub subscribers: usize,
    pub complete_subscribers: usize,
    /// Deliveries the run should have produced.
    pub expected: u64,
    /// Every publication frame received, duplicates included.
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unexpected: u64,
    #[serde(skip)]
    pub last_delivery: Option<Instant>,
}

impl Totals {
    pub fn add(&mut self, tally: &Tally) {
        self.subscribers += 1;
        self.complete_subscribers += usize::from(tally.is_complete());
        self.expected += tally.expected;
        self.received += tally.unique + tally.duplicates + tally.unexpected;
        self.lost += tally.expected - tally.unique;
        self.duplicates += tally.duplicates;
        self.reordered += tally.reordered;
        self.unexpected += tally.unexpected;
        self.last_delivery = self.last_delivery.max(tally.last_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals_of(expected: u64, seqs: &[u64]) -> Totals {
        let mut tally = Tally::new(expected);
        for &seq in seqs {
            tally.record(seq, Instant::now());
        }
        let mut totals = Totals::default();
        totals.add(&tally);
        totals
    }

    #[test]
    fn in_order_delivery_completes() {
        let mut tally = Tally::new(3);
        assert!(!tally.record(0, Instant::now()));
        assert!(!tally.record(1, Instant::now()));
        assert!(tally.record(2, Instant::now()));
        let t = totals_of(3, &[0, 1, 2]);
        assert_eq!(
            (t.lost, t.duplicates, t.reordered, t.complete_subscribers),
            (0, 0, 0, 1)
        );
    }

    #[test]
    fn losses_duplicates_reordering_and_strays() {
        let t = totals_of(130, &[0, 2, 1, 2, 129, 500]);
        assert_eq!(t.expected, 130);
        assert_eq!(t.received, 6);
        assert_eq!(t.lost, 126);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.reordered, 1, "1 arrived after 2");
        assert_eq!(t.unexpected, 1);
        assert_eq!(t.complete_subscribers, 0);
    }

    #[test]
    fn a_gap_alone_is_a_loss_not_a_reorder() {
        let t = totals_of(4, &[0, 2, 3]);
        assert_eq!((t.lost, t.reordered), (1, 0));
    }

    #[test]
    fn nothing_expected_is_complete_at_once() {
        assert!(Tally::new(0).is_complete());
    }
}
