//! A progress bar for long scans, drawn only when a person is watching.
//!
//! It is shown only when both stdout and stderr are terminals: when output is piped or
//! redirected (scripts, tests, `| less`), nothing but the command's output is written.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tally_wal::inspect::{ScanVisitor, SegmentBytes, VisitedBatch};

/// Redraw at most every this many bytes scanned (keeps the bar off the hot path).
const UPDATE_EVERY_BYTES: u64 = 8 << 20;

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Bytes of all segments before segment `i`.
    segment_starts: Vec<u64>,
}

impl Progress {
    pub fn new(label: &str, total_bytes: u64, inputs: &[SegmentBytes<'_>]) -> Progress {
        let mut segment_starts = Vec::with_capacity(inputs.len());
        let mut start = 0u64;
        for input in inputs {
            segment_starts.push(start);
            start += input.bytes.len() as u64;
        }
        let attended = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = (attended && total_bytes >= 4 * UPDATE_EVERY_BYTES).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar
        });
        Progress {
            bar,
            segment_starts,
        }
    }

    /// A visitor that forwards to `inner` and advances the bar. Segment positions in
    /// the scan are in recovery order, which is sorted name order like `inputs`.
    pub fn wrap<'a>(&'a self, inner: &'a mut dyn ScanVisitor) -> Tracked<'a> {
        Tracked {
            inner,
            progress: self,
            last_drawn: 0,
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

pub struct Tracked<'a> {
    inner: &'a mut dyn ScanVisitor,
    progress: &'a Progress,
    last_drawn: u64,
}

impl ScanVisitor for Tracked<'_> {
    fn batch(&mut self, batch: &VisitedBatch<'_>) {
        self.inner.batch(batch);
        if let Some(bar) = &self.progress.bar {
            let start = self
                .progress
                .segment_starts
                .get(batch.segment_position)
                .copied()
                .unwrap_or(0);
            let done = start + batch.offset + batch.body.len() as u64;
            if done >= self.last_drawn + UPDATE_EVERY_BYTES {
                bar.set_position(done);
                self.last_drawn = done;
            }
        }
    }
}
