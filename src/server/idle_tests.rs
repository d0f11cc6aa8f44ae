//! Unit tests of the watchdog's rules and the connection's activity (`idle`).

use super::*;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;

#[test]
fn idle_only_without_requests_and_without_events() {
    assert!(is_idle(5, 5, 0));
    assert!(!is_idle(5, 6, 0), "a request or body progress in between");
    assert!(!is_idle(5, 5, 1), "a request under way");
}

fn look(events: u64, requests: u64, reading_head: bool) -> Look {
    Look {
        events,
        active: 0,
        requests,
        reading_head,
        waiting_head: !reading_head,
    }
}

#[test]
fn a_head_read_over_two_looks_a_timeout_apart_is_too_slow() {
    let (t0, second) = (Instant::now(), Duration::from_secs(1));
    let mut looks = Looks::new(t0, look(3, 1, false));
    // The head's first bytes came after this look: not judged yet.
    assert_eq!(
        looks.judge(t0 + second, look(3, 1, true), second, 60 * second),
        None
    );
    assert_eq!(
        looks.judge(t0 + 2 * second, look(3, 1, true), second, 60 * second),
        Some(Verdict::HeadTooSlow)
    );
}

#[test]
fn heads_that_complete_between_looks_are_not_one_slow_head() {
    let (t0, second) = (Instant::now(), Duration::from_secs(1));
    let mut looks = Looks::new(t0, look(3, 1, true));
    // A request started in between (and the next head is being read): a new head.
    assert_eq!(
        looks.judge(t0 + second, look(5, 2, true), second, 60 * second),
        None
    );
    assert_eq!(
        looks.judge(t0 + 2 * second, look(7, 3, true), second, 60 * second),
        None
    );
}

#[test]
fn the_keep_alive_wait_is_judged_by_the_idle_timeout_only() {
    let (t0, second) = (Instant::now(), Duration::from_secs(1));
    let mut looks = Looks::new(t0, look(3, 1, false));
    for n in 1..4 {
        assert_eq!(
            looks.judge(t0 + n * second, look(3, 1, false), second, 4 * second),
            None
        );
    }
    assert_eq!(
        looks.judge(t0 + 4 * second, look(3, 1, false), second, 4 * second),
        Some(Verdict::Idle)
    );
}

#[test]
fn activity_between_looks_restarts_the_idle_spell() {
    let (t0, second) = (Instant::now(), Duration::from_secs(1));
    let mut looks = Looks::new(t0, look(3, 1, false));
    assert_eq!(
        looks.judge(t0 + second, look(3, 1, false), second, 2 * second),
        None
    );
    assert_eq!(
        looks.judge(t0 + 2 * second, look(4, 1, false), second, 2 * second),
        None
    );
    assert_eq!(
        looks.judge(t0 + 3 * second, look(4, 1, false), second, 2 * second),
        None
    );
    assert_eq!(
        looks.judge(t0 + 4 * second, look(4, 1, false), second, 2 * second),
        Some(Verdict::Idle)
    );
}

#[test]
fn an_idle_connection_is_asked_to_shrink_once_per_idle_spell() {
    let (t0, second) = (Instant::now(), Duration::from_secs(1));
    let mut looks = Looks::new(t0, look(3, 1, false));
    // Activity since the look before: not idle for a period yet.
    let busy = look(4, 1, false);
    assert_eq!(looks.judge(t0 + second, busy, second, 60 * second), None);
    assert!(!looks.shrink_due(t0 + second, busy, second));
    let quiet = look(4, 1, false);
    assert_eq!(
        looks.judge(t0 + 2 * second, quiet, second, 60 * second),
        None
    );
    assert!(looks.shrink_due(t0 + 2 * second, quiet, second));
    assert_eq!(
        looks.judge(t0 + 3 * second, quiet, second, 60 * second),
        None
    );
    assert!(
        !looks.shrink_due(t0 + 3 * second, quiet, second),
        "asked once per spell"
    );
    // A request, then a new idle spell: asked again.
    let asked = look(6, 2, false);
    assert_eq!(
        looks.judge(t0 + 4 * second, asked, second, 60 * second),
        None
    );
    assert!(!looks.shrink_due(t0 + 4 * second, asked, second));
    assert_eq!(
        looks.judge(t0 + 5 * second, asked, second, 60 * second),
        None
    );
    assert!(looks.shrink_due(t0 + 5 * second, asked, second));
}

#[test]
fn a_head_being_read_or_http2_is_never_asked_to_shrink() {
    let (t0, second) = (Instant::now(), Duration::from_secs(1));
    for quiet in [
        look(3, 1, true),
        Look {
            waiting_head: false,
            ..look(3, 1, false)
        },
    ] {
        let mut looks = Looks::new(t0, quiet);
        for n in 1..4 {
            let now = t0 + n * second;
            assert_eq!(looks.judge(now, quiet, 60 * second, 60 * second), None);
            assert!(!looks.shrink_due(now, quiet, second), "{quiet:?}");
        }
    }
}

#[tokio::test]
async fn a_shrink_applies_only_while_nothing_is_under_way() {
    let activity = Activity::new();
    let waker = futures_util::task::noop_waker();
    activity.watch_for_shrink(&waker);
    assert!(!activity.shrink_asked());
    activity.request_started();
    activity.ask_shrink();
    assert!(!activity.shrink_asked(), "a request is being answered");
    assert!(!activity.shrink_asked(), "an ask is used up");
    drop(activity.track(crate::proxy::body::Body::full(Bytes::from_static(b"x"))));
    activity.ask_shrink();
    assert!(activity.shrink_asked());
    activity.ask_shrink();
    activity.watch_for_shrink(&waker);
    assert!(
        !activity.shrink_asked(),
        "asked before this connection started"
    );
    activity.ask_shrink();
    activity.bytes_arrived();
    assert!(!activity.shrink_asked(), "a next head has begun");
}

#[tokio::test]
async fn reads_start_a_head_only_while_waiting_for_a_request() {
    let activity = Activity::new();
    activity.bytes_arrived();
    assert_eq!(activity.head(), Head::Reading);
    activity.request_started();
    let guard = activity.still_running();
    assert_eq!(activity.look().active, 1);
    activity.bytes_arrived();
    assert_eq!(activity.head(), Head::Busy, "a request body is not a head");
    drop(guard);
    assert_eq!(activity.look().active, 0);
    assert_eq!(activity.look().requests, 1);
    let body = activity.track(crate::proxy::body::Body::full(Bytes::from_static(b"x")));
    assert_eq!(
        activity.head(),
        Head::Busy,
        "the answer is still being sent"
    );
    drop(body);
    assert_eq!(activity.head(), Head::Waiting);
    assert!(!activity.look().reading_head);
    activity.bytes_arrived();
    assert!(activity.look().reading_head);
    activity.set_multiplexed();
    assert!(!activity.look().reading_head, "HTTP/2 has no heads to time");
}

#[tokio::test]
async fn a_body_is_handed_out_in_pieces_each_counted() {
    let activity = Activity::new();
    let data = Bytes::from(vec![7u8; PROGRESS_CHUNK * 2 + 10]);
    let mut body = activity.track(crate::proxy::body::Body::full(data.clone()));
    assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame.unwrap().into_data() else {
            panic!("a data frame");
        };
        sizes.push(chunk.len());
        got.extend_from_slice(chunk.chunk());
    }
    assert_eq!(sizes, vec![PROGRESS_CHUNK, PROGRESS_CHUNK, 10]);
    assert_eq!(got, data);
    assert!(body.is_end_stream());
    assert_eq!(activity.events.load(Ordering::Relaxed), 3);
}
