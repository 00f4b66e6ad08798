//! Open-loop scheduling free of coordinated omission.
//!
//! A closed-loop client sends the next request only after a reply, so when the server
//! stalls the client stops sending and the stall shows up as ONE slow operation instead
//! of all the operations that a real user population would have issued meanwhile
//! ("coordinated omission"). In open loop, operation `i` of a client has an intended
//! send time fixed in advance (`first_send_ns + i * interval`); its latency is measured
//! from that intended time, even when the request actually left later because the
//! window of in-flight requests was full or the thread was descheduled.
//!
//! [`OpenLoopWindow`] holds that logic with time passed in as nanoseconds, so the
//! accounting is tested with a fake clock; the client thread feeds it real time.

use std::collections::VecDeque;

/// One client's open-loop schedule and its in-flight requests.
#[derive(Debug)]
pub struct OpenLoopWindow {
    first_send_ns: u64,
    /// Time between intended sends of this client, in nanoseconds (fractional, so that
    /// high rates do not drift by rounding).
    interval_ns: f64,
    /// Index of the next operation to send.
    next_index: u64,
    /// Intended send times of requests sent and not yet answered, oldest first (replies
    /// come back in request order on one connection).
    /// Invariant: `in_flight.len() <= max_in_flight`.
    in_flight: VecDeque<u64>,
    max_in_flight: usize,
}

impl OpenLoopWindow {
    /// `rate_per_client` operations per second starting at `first_send_ns`, at most
    /// `max_in_flight` unanswered.
    pub fn new(first_send_ns: u64, rate_per_client: f64, max_in_flight: usize) -> Self {
        assert!(rate_per_client > 0.0 && rate_per_client.is_finite());
        assert!(max_in_flight > 0);
        OpenLoopWindow {
            first_send_ns,
            interval_ns: 1e9 / rate_per_client,
            next_index: 0,
            in_flight: VecDeque::with_capacity(max_in_flight),
            max_in_flight,
        }
    }

    /// Intended send time of operation `index`.
    pub fn intended_ns(&self, index: u64) -> u64 {
        self.first_send_ns + (index as f64 * self.interval_ns) as u64
    }

    /// Intended time of the next operation not yet sent.
    pub fn next_intended_ns(&self) -> u64 {
        self.intended_ns(self.next_index)
    }

    /// If the next operation is due at `now_ns` and the window has room, marks it sent
    /// and returns its intended time.
    pub fn take_due(&mut self, now_ns: u64) -> Option<u64> {
        let intended = self.next_intended_ns();
        if intended > now_ns || self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        self.in_flight.push_back(intended);
        self.next_index += 1;
        Some(intended)
    }

    /// A reply to the oldest in-flight request arrived at `now_ns`: returns its intended
    /// send time (latency = `now_ns - intended`), or `None` for a reply nobody asked for.
    pub fn complete_oldest(&mut self) -> Option<u64> {
        self.in_flight.pop_front()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests lost with a broken connection: forgets them and returns how many.
    pub fn abandon_in_flight(&mut self) -> usize {
        let lost = self.in_flight.len();
        self.in_flight.clear();
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake server that answers each request 10 µs after it is sent, except that it
    /// answers nothing between 0 and 100 ms (a stall, e.g. an fsync hiccup).
    fn simulate(window_size: usize) -> Vec<u64> {
        const MS: u64 = 1_000_000;
        let stall_end_ns = 100 * MS;
        let service_ns = 10_000;
        let mut window = OpenLoopWindow::new(0, 1000.0, window_size); // one op per ms
        let mut latencies = Vec::new();
        let mut pending_replies: VecDeque<u64> = VecDeque::new(); // reply times
        let mut now = 0u64;
        let mut last_reply_ns = 0u64;
        while now < 200 * MS {
            while let Some(&reply_at) = pending_replies.front() {
                if reply_at > now {
                    break;
                }
                pending_replies.pop_front();
                let intended = window.complete_oldest().expect("reply matches a request");
                latencies.push(reply_at - intended);
            }
            while window.take_due(now).is_some() {
                let reply_at = now.max(stall_end_ns).max(last_reply_ns) + service_ns;
                last_reply_ns = reply_at;
                pending_replies.push_back(reply_at);
            }
            // Advance the fake clock to the next event.
            let next_send = window.next_intended_ns();
            let next_reply = pending_replies.front().copied().unwrap_or(u64::MAX);
            now = next_send.min(next_reply).max(now + 1);
        }
        latencies
    }

    #[test]
    fn stall_is_charged_to_every_operation_intended_during_it() {
        // Window of 1: a closed-loop-like client that can only send after a reply.
        let latencies = simulate(1);
        // About 200 operations were intended in 200 ms; each got a latency.
        assert!(latencies.len() >= 195, "{} ops", latencies.len());
        // Operations intended at 0, 1, .., 49 ms all waited until after the 100 ms
        // stall: at least 50 latencies of 50 ms or more. A coordinated-omission-prone
        // measurement (from the actual send time) would show ONE slow operation.
        let slow = latencies.iter().filter(|&&l| l >= 50_000_000).count();
        assert!(
            slow >= 50,
            "only {slow} slow ops: stall not charged from intended time"
        );
        // After the backlog drains, latencies return to the service time.
        assert_eq!(*latencies.last().unwrap(), 10_000);
    }

    #[test]
    fn wide_window_sends_on_schedule_despite_the_stall() {
        // With room for 1000 in flight, requests leave on time during the stall; their
        // latency still counts the wait for the stall to end.
        let latencies = simulate(1000);
        let slow = latencies.iter().filter(|&&l| l >= 50_000_000).count();
        assert!(slow >= 50, "{slow}");
        assert!(latencies.len() >= 195);
    }

    #[test]
    fn intended_times_follow_the_rate_without_drift() {
        let window = OpenLoopWindow::new(5, 3.0, 1); // 333_333_333.3 ns apart
        assert_eq!(window.intended_ns(0), 5);
        assert_eq!(window.intended_ns(3), 1_000_000_005);
        assert_eq!(window.intended_ns(3_000), 1_000_000_000_005);
    }

    #[test]
    fn nothing_is_sent_before_its_time_nor_past_the_window() {
        let mut window = OpenLoopWindow::new(1_000, 1_000_000.0, 2); // 1 µs apart
        assert_eq!(window.take_due(999), None);
        assert_eq!(window.take_due(10_000), Some(1_000));
        assert_eq!(window.take_due(10_000), Some(2_000));
        assert_eq!(window.take_due(10_000), None, "window of 2 is full");
        assert_eq!(window.complete_oldest(), Some(1_000));
        assert_eq!(window.take_due(10_000), Some(3_000));
        assert_eq!(window.abandon_in_flight(), 2);
        assert_eq!(window.complete_oldest(), None);
    }
}
