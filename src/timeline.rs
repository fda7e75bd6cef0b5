//! What the node did over the last seconds, as spans on lanes: the live version of the seed's
//! `TIMELINE` drawings, shown by the dashboard.
//!
//! Recording sits on the hot path (every client command, every fan-out), so it is bounded and
//! cheap:
//! - each lane admits at most [`PER_BUCKET`] spans per 10 ms bucket; a span that is not admitted
//!   costs one clock read and one relaxed atomic load, and allocates nothing. Under load the
//!   timeline is a sample, which is all a picture needs;
//! - admitted spans go into a fixed ring of [`CAPACITY`] slots (the oldest is overwritten), each
//!   slot behind its own mutex that is only ever held for a copy, so writers on different cores
//!   never wait on each other;
//! - labels are `&'static str` plus a short detail (a channel name) copied inline, truncated.
//!
//! A span is recorded by a guard: `let _span = node.timeline().span(Lane::Command, "publish", ch);`
//! measures until the end of the scope, whichever way it is left.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::hooks::events::{Event, EventSink};

/// Slots in the ring: at the admission cap on every lane (800 spans/s), about 20 s of activity.
pub const CAPACITY: usize = 16 * 1024;
/// Spans admitted per lane in each 10 ms bucket: at most 200 per second per lane.
pub const PER_BUCKET: u64 = 2;
const BUCKET_MICROS: u64 = 10_000;
/// Bytes of detail kept per span.
const DETAIL_LEN: usize = 24;

/// A kind of work, drawn as one lane of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Lane {
    /// A client command, from decoding to its reply being queued (awaits included).
    Command = 0,
    /// Queuing one encoded publication or join/leave to every local subscriber of a channel.
    FanOut = 1,
    /// A publication's append to history (with its durability wait) and fan-out.
    History = 2,
    /// Work no client waits for: session cleanup, dashboard snapshots.
    Background = 3,
}

impl Lane {
    /// Every lane, in display order.
    pub const ALL: [Lane; 4] = [Lane::Command, Lane::FanOut, Lane::History, Lane::Background];

    /// The lane's display name.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Command => "client commands",
            Lane::FanOut => "publication fan-out",
            Lane::History => "history writes",
            Lane::Background => "background tasks",
        }
    }
}

/// One recorded piece of work.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    /// Position in the record order (spans are numbered as they end).
    pub seq: u64,
    pub lane: u8,
    pub name: &'static str,
    /// A channel name or similar, possibly truncated.
    pub detail: String,
    /// Start, in microseconds since the timeline was created.
    pub start: u64,
    /// Duration in microseconds.
    pub duration: u64,
    /// A count the work reports (subscribers reached by a fan-out), 0 if none.
    pub count: u64,
}

/// A bounded ring of recent spans; see the module documentation.
pub struct Timeline {
    origin: Instant,
    next: AtomicU64,
    budgets: [Budget; 4],
    slots: Box<[Mutex<Slot>]>,
}

/// A lane's admission counter: `bucket << 8 | admitted`, alone on its cache line.
#[repr(align(64))]
#[derive(Default)]
struct Budget(AtomicU64);

#[derive(Clone, Copy)]
struct Slot {
    /// `seq + 1` of the span held, 0 when empty.
    tag: u64,
    lane: u8,
    name: &'static str,
    detail: Detail,
    start: u64,
    duration: u64,
    count: u64,
}

const EMPTY_SLOT: Slot = Slot {
    tag: 0,
    lane: 0,
    name: "",
    detail: Detail::EMPTY,
    start: 0,
    duration: 0,
    count: 0,
};

/// A detail string stored inline (no allocation on the recording path).
#[derive(Clone, Copy)]
struct Detail {
    len: u8,
    bytes: [u8; DETAIL_LEN],
}

impl Detail {
    const EMPTY: Detail = Detail {
        len: 0,
        bytes: [0; DETAIL_LEN],
    };

    fn new(text: &str) -> Detail {
        let mut end = text.len().min(DETAIL_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut detail = Detail::EMPTY;
        detail.bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        detail.len = end as u8;
        detail
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            origin: Instant::now(),
            next: AtomicU64::new(0),
            budgets: Default::default(),
            slots: (0..CAPACITY).map(|_| Mutex::new(EMPTY_SLOT)).collect(),
        }
    }
}

impl Timeline {
    /// Microseconds since the timeline was created: the clock spans are placed on.
    pub fn now_micros(&self) -> u64 {
        self.micros(Instant::now())
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros() as u64
    }

    /// Starts a span on `lane`, recorded when the guard is dropped, if the lane's budget admits
    /// it (otherwise the guard is inert).
    pub fn span(self: &Arc<Self>, lane: Lane, name: &'static str, detail: &str) -> SpanGuard {
        let start = Instant::now();
        if !self.admit(lane, self.micros(start)) {
            return SpanGuard { active: None };
        }
        SpanGuard {
            active: Some(Active {
                timeline: self.clone(),
                lane,
                name,
                detail: Detail::new(detail),
                start,
                count: 0,
            }),
        }
    }

    /// Takes one unit of `lane`'s budget for the bucket holding `at_micros`.
    fn admit(&self, lane: Lane, at_micros: u64) -> bool {
        let budget = &self.budgets[lane as usize].0;
        let bucket = at_micros / BUCKET_MICROS;
        let current = budget.load(Ordering::Relaxed);
        let next = if current >> 8 == bucket {
            if current & 0xff >= PER_BUCKET {
                return false;
            }
            current + 1
        } else {
            bucket << 8 | 1
        };
        // Losing the race means someone else took this unit: skipping is as good as retrying.
        budget
            .compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn record(&self, active: &Active) {
        let end = Instant::now();
        let seq = self.next.fetch_add(1, Ordering::AcqRel);
        let mut slot = lock(&self.slots[(seq % CAPACITY as u64) as usize]);
        *slot = Slot {
            tag: seq + 1,
            lane: active.lane as u8,
            name: active.name,
            detail: active.detail,
            start: self.micros(active.start),
            duration: end.saturating_duration_since(active.start).as_micros() as u64,
            count: active.count,
        };
    }

    /// The spans recorded after sequence number `after` (those still in the ring), oldest first,
    /// and the sequence number to pass next time. A span whose slot is being written right now
    /// may be missed.
    pub fn since(&self, after: u64) -> (Vec<Span>, u64) {
        let next = self.next.load(Ordering::Acquire);
        let from = after.max(next.saturating_sub(CAPACITY as u64));
        let mut spans = Vec::with_capacity((next - from.min(next)) as usize);
        for seq in from..next {
            let slot = *lock(&self.slots[(seq % CAPACITY as u64) as usize]);
            if slot.tag == seq + 1 {
                spans.push(Span {
                    seq,
                    lane: slot.lane,
                    name: slot.name,
                    detail: slot.detail.as_str().to_string(),
                    start: slot.start,
                    duration: slot.duration,
                    count: slot.count,
                });
            }
        }
        (spans, next)
    }
}

/// Records a span when dropped (if it was admitted).
#[must_use = "the span ends when the guard is dropped"]
pub struct SpanGuard {
    active: Option<Active>,
}

struct Active {
    timeline: Arc<Timeline>,
    lane: Lane,
    name: &'static str,
    detail: Detail,
    start: Instant,
    count: u64,
}

impl SpanGuard {
    /// Attaches a count to the span (such as the subscribers a fan-out reached).
    pub fn set_count(&mut self, count: u64) {
        if let Some(active) = &mut self.active {
            active.count = count;
        }
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        if let Some(active) = &self.active {
            active.timeline.record(active);
        }
    }
}

/// Slot updates are single copies, so a poisoned lock still guards a whole value.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lifecycle events drawn on the timeline, so the dashboard shows connects, disconnects and
/// subscriptions beside the work they cause. Publications are left out: their append and fan-out
/// are drawn already, as spans of their own.
pub struct TimelineEvents(pub Arc<Timeline>);

impl EventSink for TimelineEvents {
    fn emit(&self, event: &Event<'_>) {
        let detail = match *event {
            Event::Published { .. } => return,
            Event::Connected { client, .. } | Event::Disconnected { client, .. } => client,
            Event::Subscribed { channel, .. }
            | Event::Unsubscribed { channel, .. }
            | Event::ChannelOccupied { channel }
            | Event::ChannelVacated { channel } => channel,
        };
        drop(self.0.span(Lane::Background, event.name(), detail));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_recorded_and_read_back_in_order() {
        let timeline = Arc::new(Timeline::default());
        {
            let mut span = timeline.span(Lane::FanOut, "fan-out", "chat");
            span.set_count(3);
        }
        drop(timeline.span(
            Lane::Command,
            "publish",
            "a-very-long-channel-name-beyond-limit",
        ));
        let (spans, next) = timeline.since(0);
        assert_eq!(next, 2);
        assert_eq!(spans.len(), 2);
        assert_eq!(
            (spans[0].lane, spans[0].name, spans[0].count),
            (1, "fan-out", 3)
        );
        assert_eq!(spans[0].detail, "chat");
        assert_eq!(spans[1].detail, "a-very-long-channel-name");
        assert!(spans[1].start >= spans[0].start);
        assert!(timeline.since(next).0.is_empty());
    }

    #[test]
    fn each_lane_admits_a_bounded_number_per_bucket() {
        let timeline = Arc::new(Timeline::default());
        let at = 5 * BUCKET_MICROS + 1;
        let admitted = (0..10)
            .filter(|_| timeline.admit(Lane::Command, at))
            .count();
        assert_eq!(admitted as u64, PER_BUCKET);
        assert!(
            timeline.admit(Lane::Background, at),
            "lanes have their own budget"
        );
        assert!(
            timeline.admit(Lane::Command, at + BUCKET_MICROS),
            "a new bucket"
        );
    }

    #[test]
    fn the_ring_keeps_the_most_recent_spans() {
        let timeline = Timeline::default();
        let active = Active {
            timeline: Arc::new(Timeline::default()),
            lane: Lane::History,
            name: "append",
            detail: Detail::new("é".repeat(20).as_str()),
            start: Instant::now(),
            count: 0,
        };
        for _ in 0..CAPACITY + 10 {
            timeline.record(&active);
        }
        let (spans, next) = timeline.since(3);
        assert_eq!(next, CAPACITY as u64 + 10);
        assert_eq!(spans.len(), CAPACITY);
        assert_eq!(spans[0].seq, 10);
        // Truncation keeps whole characters.
        assert_eq!(spans[0].detail, "é".repeat(12));
    }

    #[test]
    fn lifecycle_events_are_drawn_publications_are_not() {
        let timeline = Arc::new(Timeline::default());
        let sink = TimelineEvents(timeline.clone());
        sink.emit(&Event::Connected {
            client: "c1",
            user: "u",
        });
        let data: crate::protocol::Payload = serde_json::value::RawValue::from_string("1".into())
            .unwrap()
            .into();
        sink.emit(&Event::Published {
            channel: "news",
            offset: 1,
            client: None,
            user: None,
            data: &data,
            binary: false,
        });
        sink.emit(&Event::ChannelOccupied { channel: "news" });
        let (spans, _) = timeline.since(0);
        let drawn: Vec<(&str, &str)> = spans.iter().map(|s| (s.name, s.detail.as_str())).collect();
        assert_eq!(drawn, [("connected", "c1"), ("channel_occupied", "news")]);
    }
}
