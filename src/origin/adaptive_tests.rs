//! Unit tests of the adaptive limit's rules (`adaptive`), one or more per rule.

use super::*;

fn ms(n: u64) -> Sample {
    Sample::Answered(Duration::from_millis(n))
}

/// `n` exchanges of `latency_ms` with `in_flight` under way, one per millisecond from `t`.
fn feed(l: &mut Limit, n: usize, latency_ms: u64, in_flight: usize, t: &mut u64) {
    for _ in 0..n {
        *t += 1;
        l.observe(ms(latency_ms), in_flight, *t);
    }
}

#[test]
fn starts_at_the_ceiling_and_never_leaves_its_bounds() {
    let mut l = Limit::new(32);
    assert_eq!(l.get(), 32);
    for _ in 0..500 {
        l.observe(Sample::Overloaded, 32, 1);
    }
    assert_eq!(l.get(), 1, "never below 1");
    let mut t = 1;
    feed(&mut l, 500, 10, 64, &mut t);
    assert_eq!(l.get(), 32, "never above the ceiling");
    assert_eq!(Limit::new(0).get(), 1, "a ceiling of 0 still allows one");
}

#[test]
fn overload_answers_shrink_the_limit_multiplicatively() {
    let mut l = Limit::new(32);
    l.observe(Sample::Overloaded, 32, 1);
    assert_eq!(l.get(), 28, "32 × 0.9");
    for _ in 0..10 {
        l.observe(Sample::Overloaded, 32, 1);
    }
    assert_eq!(l.get(), 10, "32 × 0.9^11 ≈ 10");
}

#[test]
fn latency_far_above_its_minimum_makes_the_limit_fall() {
    let mut l = Limit::new(32);
    let mut t = 0;
    feed(&mut l, 50, 10, 32, &mut t);
    assert_eq!(l.get(), 32);
    feed(&mut l, 60, 500, 32, &mut t);
    assert_eq!(l.get(), 2, "fifty times slower: the floor of rule 2");
    assert!(l.stressed());
}

#[test]
fn an_origin_that_takes_four_at_once_settles_near_six() {
    // Little's law: 4 workers at 200 ms answer L requests in flight in 50 ms × L.
    let mut l = Limit::new(32);
    let mut t = 0;
    feed(&mut l, 20, 200, 4, &mut t);
    for _ in 0..400 {
        let in_flight = l.get();
        let latency = 200.max(50 * in_flight as u64);
        t += 1;
        l.observe(ms(latency), in_flight, t);
    }
    assert!((5..=7).contains(&l.get()), "settled at {}", l.get());
}

#[test]
fn one_slow_answer_among_fast_ones_is_not_a_trend() {
    let mut l = Limit::new(32);
    let mut t = 0;
    feed(&mut l, 50, 10, 32, &mut t);
    feed(&mut l, 1, 30, 32, &mut t);
    assert_eq!(l.get(), 32);
    assert!(!l.stressed());
}

#[test]
fn a_mix_of_fast_and_slow_pages_is_not_queueing() {
    let mut l = Limit::new(32);
    let mut t = 0;
    for i in 0..400 {
        t += 1;
        l.observe(ms(if i % 2 == 0 { 5 } else { 100 }), 32, t);
    }
    assert_eq!(l.get(), 32);
    assert!(!l.stressed());
    let base = l.baseline().unwrap();
    assert!(base > Duration::from_millis(40), "baseline {base:?}");
}

#[test]
fn jitter_of_a_very_fast_origin_is_not_queueing() {
    let mut l = Limit::new(32);
    let mut t = 0;
    feed(&mut l, 50, 1, 32, &mut t);
    feed(&mut l, 50, 4, 32, &mut t);
    assert_eq!(l.get(), 32, "4 ms is within the slack of a 1 ms origin");
    assert!(!l.stressed());
}

#[test]
fn the_limit_grows_back_when_latency_returns_and_the_limit_is_used() {
    let mut l = Limit::new(32);
    for _ in 0..40 {
        l.observe(Sample::Overloaded, 32, 1);
    }
    assert_eq!(l.get(), 1);
    let mut t = 1;
    feed(&mut l, 60, 10, 32, &mut t);
    assert_eq!(l.get(), 32, "back at the ceiling within 60 fast exchanges");
}

#[test]
fn a_light_load_does_not_raise_the_limit() {
    let mut l = Limit::new(32);
    for _ in 0..20 {
        l.observe(Sample::Overloaded, 32, 1);
    }
    let before = l.get();
    let mut t = 1;
    feed(&mut l, 100, 10, 1, &mut t);
    assert_eq!(
        l.get(),
        before,
        "one request at a time says nothing about capacity"
    );
}

#[test]
fn the_baseline_follows_an_origin_that_really_got_slower() {
    let mut l = Limit::new(32);
    let mut t = 0;
    feed(&mut l, 50, 10, 32, &mut t);
    assert_eq!(l.baseline(), Some(Duration::from_millis(10)));
    // Slow for two whole windows (4 workers at 200 ms: an answer every 50 ms): the old
    // minimum is forgotten, or re-measured (rule 7).
    let window = BASELINE_WINDOW.as_millis() as u64;
    for _ in 0..3 {
        t += window;
        for _ in 0..30 {
            t += 50;
            l.observe(ms(200), 4, t);
        }
    }
    let base = l.baseline().unwrap();
    assert!(base > Duration::from_millis(150), "baseline now {base:?}");
    assert!(!l.stressed());
}

#[test]
fn stress_needs_latency_far_above_the_baseline() {
    let mut l = Limit::new(32);
    assert!(!l.stressed(), "no data, no stress");
    let mut t = 0;
    feed(&mut l, 50, 10, 4, &mut t);
    feed(&mut l, 3, 30, 4, &mut t);
    assert!(!l.stressed(), "a little slower is not stress");
    feed(&mut l, 10, 200, 4, &mut t);
    assert!(l.stressed());
    feed(&mut l, 60, 10, 4, &mut t);
    assert!(!l.stressed(), "stress ends with the latency");
}

#[test]
fn only_big_changes_are_reported() {
    let mut l = Limit::new(32);
    assert_eq!(
        l.observe(Sample::Overloaded, 32, 1),
        None,
        "32 → 28 is small"
    );
    assert_eq!(l.observe(Sample::Overloaded, 32, 1), None, "32 → 25 too");
    assert_eq!(
        l.observe(Sample::Overloaded, 32, 1),
        Some(Change { from: 32, to: 23 })
    );
    for _ in 0..60 {
        l.observe(Sample::Overloaded, 32, 1);
    }
    let mut t = 1;
    let mut changes = Vec::new();
    for _ in 0..60 {
        t += 1;
        changes.extend(l.observe(ms(10), 32, t));
    }
    assert_eq!(changes.last().map(|c| c.to), Some(32), "{changes:?}");
    assert!(
        changes.len() < 15,
        "a few lines, not one per step: {changes:?}"
    );
}

/// A closed loop against an origin with 4 workers at 200 ms (Little's law: `in_flight`
/// requests take `max(200, 50 × in_flight)` ms), the limit always in full use, for
/// `seconds` of simulated time from `t`. Returns the highest limit outside holds.
fn saturated(l: &mut Limit, seconds: u64, t: &mut u64) -> usize {
    let end = *t + seconds * 1000;
    let mut highest = 0;
    while *t < end {
        let in_flight = l.get();
        let latency = 200.max(50 * in_flight as u64);
        *t += latency / in_flight as u64;
        l.observe(ms(latency), in_flight, *t);
        if !l.probing() {
            highest = highest.max(l.get());
        }
    }
    highest
}

#[test]
fn queueing_is_latency_over_tolerance_and_slack() {
    assert!(!queueing(0.200, 0.250), "within a quarter");
    assert!(!queueing(0.001, 0.005), "within the slack");
    assert!(queueing(0.200, 0.300));
}

#[test]
fn the_gradient_target_follows_the_latency_ratio_within_bounds() {
    assert_eq!(
        gradient_target(10.0, 0.2, 0.2),
        11.0,
        "no queueing: + headroom"
    );
    assert_eq!(gradient_target(10.0, 0.2, 0.5), 6.0, "gradient ½");
    assert_eq!(gradient_target(10.0, 0.2, 5.0), 6.0, "never below ½");
    assert!(growth(16.0) > growth(4.0));
}

#[test]
fn a_probe_is_due_after_lasting_pressure_and_a_rest() {
    assert!(!probe_due(None, 0, 10_000), "no pressure");
    assert!(!probe_due(Some(9_000), 0, 10_000), "pressure for 1 s only");
    assert!(probe_due(Some(8_000), 0, 10_000), "2 s, never probed");
    assert!(!probe_due(Some(8_000), 5_000, 10_000), "probed 5 s ago");
    assert!(probe_due(Some(8_000), 5_000, 40_000), "30 s since the last");
}

#[test]
fn after_a_probe_the_limit_is_what_littles_law_gives() {
    // 13 in flight took 650 ms where one takes 200: about 4 at once, so 6.
    assert_eq!(after_probe(13.0, 0.2, 0.65), 6.0);
    assert_eq!(
        after_probe(13.0, 0.2, 0.2),
        13.0,
        "no queueing: where it was"
    );
    assert!(after_probe(3.0, 0.2, 100.0) < 1.1, "never below 1");
    assert_eq!(after_probe(0.5, 0.2, 100.0), 1.0, "never below 1");
    assert_eq!(after_probe(3.0, 0.2, 0.0), 3.0);
}

#[test]
fn a_baseline_learnt_while_queueing_is_re_measured_and_the_limit_falls_to_six() {
    // The crowd is there from the first request: 32 in flight, every answer 1.6 s, which
    // the baseline takes for the origin's speed.
    let mut l = Limit::new(32);
    let mut t = 1;
    saturated(&mut l, 1, &mut t);
    assert!(l.baseline().unwrap() > Duration::from_millis(1000));
    assert_eq!(l.get(), 32, "nothing looks like queueing yet");
    let highest = saturated(&mut l, 60, &mut t);
    assert!((5..=7).contains(&l.get()), "settled at {}", l.get());
    let base = l.baseline().unwrap();
    assert!(base < Duration::from_millis(250), "re-measured {base:?}");
    // After the first re-measurement it stays there (capacity + 2 at most).
    let later = saturated(&mut l, 60, &mut t);
    assert!(later <= 6 + 1, "highest {later} (before: {highest})");
}

#[test]
fn a_probe_holds_the_limit_at_one_and_counts_only_requests_started_during_it() {
    let mut l = Limit::new(32);
    let mut t = 1;
    feed(&mut l, 20, 10, 32, &mut t);
    // Full use for 2 s: the hold begins.
    let mut reported = Vec::new();
    for _ in 0..2_100 {
        t += 1;
        reported.extend(l.observe(ms(10), 32, t));
        if l.probing() {
            break;
        }
    }
    assert!(l.probing());
    assert_eq!(l.get(), 1);
    assert!(reported.is_empty(), "the hold is not logged: {reported:?}");
    // Answers of requests sent before the hold do not count.
    for _ in 0..10 {
        l.observe(ms(500), 32, t + 1);
    }
    assert!(l.probing());
    for _ in 0..PROBE_SAMPLES {
        t += 10;
        l.observe(ms(10), 1, t);
    }
    assert!(!l.probing());
    assert_eq!(l.get(), 32, "a fast origin gets its limit back");
}

#[test]
fn a_probe_without_answers_is_given_up() {
    let mut l = Limit::new(32);
    let mut t = 1;
    for _ in 0..2_100 {
        t += 1;
        l.observe(ms(10), 32, t);
        if l.probing() {
            break;
        }
    }
    assert!(l.probing());
    l.observe(Sample::Overloaded, 1, t + PROBE_GIVE_UP.as_millis() as u64);
    assert!(!l.probing());
    assert_eq!(l.get(), 28, "where it was, less the overload");
    let gave_up = t + PROBE_GIVE_UP.as_millis() as u64;
    let rest = PROBE_EVERY.as_millis() as u64;
    assert!(
        !probe_due(Some(1), l.probed_ms, gave_up + 3 * rest),
        "waits longer"
    );
    assert!(probe_due(Some(1), l.probed_ms, gave_up + 4 * rest));
}

#[test]
fn stress_is_the_queueing_the_gradient_holds_an_overloaded_origin_at() {
    // Settled at about 6 against 4 workers: latency about 1.5 times the baseline.
    let mut l = Limit::new(32);
    let mut t = 1;
    saturated(&mut l, 10, &mut t);
    assert!(!l.probing());
    assert!(l.stressed(), "{:?} against {:?}", l.latency(), l.baseline());
}

#[test]
fn a_limit_not_in_full_use_does_not_grow_even_within_tolerance() {
    // Limit 10, 5 in flight at 250 ms against 4 workers at 200: within tolerance, but
    // the limit is not what holds the requests back.
    let mut l = Limit::new(32);
    let mut t = 1;
    feed(&mut l, 20, 200, 4, &mut t);
    for _ in 0..15 {
        l.observe(Sample::Overloaded, 4, t);
    }
    assert_eq!(l.get(), 6);
    for _ in 0..100 {
        t += 50;
        l.observe(ms(250), 5, t);
    }
    assert_eq!(l.get(), 6, "5 of 6 in flight: no growth");
    for _ in 0..5 {
        t += 50;
        l.observe(ms(250), 6, t);
    }
    assert!(l.get() > 6, "all 6 in flight and within tolerance: growth");
}

/// An event simulation of a closed loop against an origin of `workers` workers taking
/// `service_ms` each, first come first served: Kagami keeps as many requests in flight as the
/// limit allows (its slots: a lower limit waits for answers), and every answer reaches the
/// limit when it comes back, so growth sees its effect only a round trip later (unlike
/// `saturated`). Runs `seconds` from `t`; returns the most requests in flight from `settle_s`
/// on, outside holds.
fn round_trips(
    l: &mut Limit,
    workers: usize,
    service_ms: u64,
    seconds: u64,
    settle_s: u64,
    t: &mut u64,
) -> usize {
    let (start, end) = (*t, *t + seconds * 1000);
    let mut free = vec![*t; workers];
    // (answered at, sent at) of the requests under way.
    let mut under_way: Vec<(u64, u64)> = Vec::new();
    let mut highest = 0;
    while *t < end {
        while under_way.len() < l.get() {
            let worker = (0..workers).min_by_key(|&w| free[w]).unwrap_or(0);
            let done = free[worker].max(*t) + service_ms;
            free[worker] = done;
            under_way.push((done, *t));
        }
        if *t >= start + settle_s * 1000 && !l.probing() {
            highest = highest.max(under_way.len());
        }
        let next = (0..under_way.len())
            .min_by_key(|&i| under_way[i].0)
            .unwrap_or(0);
        let in_flight = under_way.len();
        let (done, sent) = under_way.swap_remove(next);
        *t = done;
        l.observe(ms(done - sent), in_flight, *t);
    }
    highest
}

#[test]
fn growth_waits_for_its_round_trip_and_never_passes_capacity_plus_two() {
    // 4 workers at 200 ms, the baseline learnt unloaded, then a crowd far above capacity.
    let mut l = Limit::new(32);
    let mut t = 1;
    feed(&mut l, 20, 200, 4, &mut t);
    let highest = round_trips(&mut l, 4, 200, 60, 2, &mut t);
    assert!(
        highest <= 6,
        "highest in flight {highest}, limit {}",
        l.get()
    );
    assert!((5..=6).contains(&l.get()), "settled at {}", l.get());
}

#[test]
fn rises_are_paced_only_while_the_origin_queued_lately() {
    // A 10 ms origin queues (500 ms answers), then answers fast again.
    let mut paced = Limit::new(32);
    let mut t = 1;
    feed(&mut paced, 50, 10, 32, &mut t);
    feed(&mut paced, 60, 500, 32, &mut t);
    feed(&mut paced, 60, 10, 32, &mut t);
    let low = paced.get();
    assert!(low < 8, "{low}");
    let mut rested = paced.clone();
    let mut t2 = t + BASELINE_WINDOW.as_millis() as u64;
    // Not in full use: no growth, and no lasting pressure to re-measure the minimum (rule 7).
    rested.observe(ms(10), 1, t2);
    assert_eq!(rested.get(), low);
    // Each whole step waits for two rounds of answers sent after it, and a round trip.
    feed(&mut paced, 200, 10, 32, &mut t);
    assert!(paced.get() < 16, "paced: {}", paced.get());
    // No queueing for a whole baseline window: growth at full speed again.
    feed(&mut rested, 200, 10, 32, &mut t2);
    assert_eq!(rested.get(), 32);
}

#[test]
fn a_rise_needs_the_answers_own_latency_within_tolerance() {
    // Within tolerance on average (a mix), in full use, not queueing lately: only the fast
    // answers make the limit grow.
    let mut l = Limit::new(32);
    let mut t = 1;
    for _ in 0..15 {
        l.observe(Sample::Overloaded, 32, t);
    }
    let start = l.get();
    feed(&mut l, 20, 10, 32, &mut t);
    let fast = l.get();
    assert!(fast > start && fast < 32, "{start} -> {fast}");
    let mut slow = l.clone();
    let before = slow.get();
    // 18 ms against a 10 ms baseline is queueing for an answer (over 1.25 × 10 ms + 5 ms),
    // while three of them leave the average within tolerance: only their own latency holds
    // the growth back.
    for _ in 0..3 {
        t += 1;
        slow.observe(ms(18), 32, t);
    }
    assert_eq!(slow.get(), before, "slow answers do not grow it");
}

#[test]
fn a_round_below_full_use_does_not_let_a_paced_limit_rise() {
    // Settled against 4 workers at 200 ms (queueing lately), then fast answers with the limit
    // not in full use: they say nothing about what the limit does, and do not count.
    let mut l = Limit::new(32);
    let mut t = 1;
    feed(&mut l, 20, 200, 4, &mut t);
    round_trips(&mut l, 4, 200, 20, 0, &mut t);
    let settled = l.get();
    let counted = l.round.answers;
    for _ in 0..40 {
        t += 50;
        l.observe(ms(200), settled - 1, t);
    }
    assert_eq!(
        l.round.answers, counted,
        "answers below full use are not counted"
    );
    // In full use the origin queues (250 and 400 ms: 325 on average). The 250 ms answers
    // are within tolerance on their own, but the round is not.
    for i in 0..4 * settled {
        t += 50;
        l.observe(ms(if i % 2 == 0 { 400 } else { 250 }), settled, t);
    }
    // A fall is the gradient's business (answers over `OUTLIER` times the baseline while it
    // settled count less, so it may settle a step higher first); a rise would be the bug.
    let after = l.get();
    assert!(
        after <= settled,
        "no rise on a round spent below the limit: {settled} -> {after}"
    );
}

/// One client asking, over and over, for a page its origin takes 3 s to build (a search, a
/// cache-busting query string) is one answer in twenty among visitors' 20 ms pages. Its
/// latency says nothing about queueing, yet averaged in whole it read as queueing and held the
/// limit at 2 for everyone (and its own requests in those 2 slots) for as long as it liked.
#[test]
fn one_clients_slow_page_does_not_pull_everyones_limit_down() {
    let mut l = Limit::new(32);
    let mut t = 0;
    feed(&mut l, 200, 20, 8, &mut t);
    for i in 0..4000 {
        t += 1;
        let latency = if i % 20 == 0 { 3000 } else { 20 };
        l.observe(ms(latency), 8, t);
    }
    assert_eq!(l.get(), 32, "latency {:?}", l.latency());
    // It may still read as stress (rule 5): expired pages are then served from their copies
    // at once, which takes no visitor's origin slot.
    // A real queue still shows: every answer slower, the limit falls to the gradient's floor.
    feed(&mut l, 100, 500, 32, &mut t);
    assert_eq!(l.get(), 2);
}

/// The same client's slow page during a re-measurement (rule 7): at one request at a time it
/// may get every other answer of the hold. Counted whole, three 3 s answers of five made the
/// minimum 1.8 s, and for the next minute no queue of the origin's could show.
#[test]
fn one_clients_slow_page_cannot_make_a_re_measured_minimum_of_it() {
    let mut l = Limit::new(32);
    let mut t = 1;
    feed(&mut l, 20, 20, 32, &mut t);
    for _ in 0..2_100 {
        t += 1;
        l.observe(ms(20), 32, t);
        if l.probing() {
            break;
        }
    }
    assert!(l.probing());
    for i in 0..PROBE_SAMPLES {
        let latency = if i % 2 == 0 { 3000 } else { 20 };
        t += latency;
        l.observe(ms(latency), 1, t);
    }
    assert!(!l.probing());
    let base = l.baseline().unwrap();
    assert!(base < Duration::from_millis(100), "baseline {base:?}");
    // So a real queue still shows.
    feed(&mut l, 100, 500, 32, &mut t);
    assert!(l.get() <= 4, "limit {}", l.get());
}

/// Into a hold (rule 7) at `latency_ms`, the limit in full use; the time it began.
fn held(l: &mut Limit, latency_ms: u64, t: &mut u64) -> u64 {
    feed(l, 20, latency_ms, 32, t);
    for _ in 0..2_100 {
        *t += 1;
        l.observe(ms(latency_ms), 32, *t);
        if l.probing() {
            return *t;
        }
    }
    panic!("no hold after 2 s of full use");
}

/// One client's slow page in the only slot of a hold held every other miss behind it until
/// `PROBE_GIVE_UP` (10 s, every 30-120 s). A request that waited the hold's patience (three
/// times the latency before it) without any answer ends it, and the limit resumes.
#[test]
fn a_hold_with_no_answer_for_its_patience_is_given_up_by_a_waiting_request() {
    let mut l = Limit::new(32);
    let mut t = 1;
    let began = held(&mut l, 20, &mut t);
    assert_eq!(l.get(), 1);
    assert_eq!(l.hold_overdue_in(began), Some(Duration::from_millis(60)));
    assert!(!l.end_overdue_hold(began + 59), "within its patience");
    assert!(l.probing());
    // An answer resets the wait.
    l.observe(ms(20), 1, began + 50);
    assert_eq!(
        l.hold_overdue_in(began + 50),
        Some(Duration::from_millis(60))
    );
    assert!(!l.end_overdue_hold(began + 100));
    assert!(l.end_overdue_hold(began + 110));
    assert!(!l.probing());
    assert_eq!(l.get(), 32, "the limit resumes where it was");
    assert_eq!(l.hold_overdue_in(began + 110), None);
    let rest = PROBE_EVERY.as_millis() as u64;
    assert!(
        !probe_due(Some(1), l.probed_ms, began + 110 + 3 * rest),
        "waits longer"
    );
}

/// The same lever seen from the answer: a request of the hold that itself took longer than
/// the patience ends the hold when it comes back, and is not counted as a minimum.
#[test]
fn an_answer_of_the_hold_slower_than_its_patience_ends_it() {
    let mut l = Limit::new(32);
    let mut t = 1;
    let began = held(&mut l, 20, &mut t);
    l.observe(ms(3000), 1, began + 3000);
    assert!(!l.probing());
    assert_eq!(l.get(), 32);
    assert_eq!(
        l.baseline(),
        Some(Duration::from_millis(20)),
        "not re-measured"
    );
    // A millisecond origin's hold is not given up on its jitter: the patience has a floor.
    let mut fast = Limit::new(32);
    let mut t = 1;
    let began = held(&mut fast, 1, &mut t);
    assert_eq!(fast.hold_overdue_in(began), Some(HOLD_PATIENCE_FLOOR));
    fast.observe(ms(30), 1, began + 30);
    assert!(fast.probing());
}
