//! The limits against hostile or broken input, end to end through `Node` (on the in-memory
//! network of [`common`]).

mod common;

use common::{addr, counter, name, Cluster};
use rainstorm_core::hydfs::{ClientOp, FileName, HydfsConfig, HydfsError, HydfsMsg, Stamp};
use rainstorm_core::limits::LimitsConfig;
use rainstorm_core::membership::{MembershipMsg, ProbeSeq};
use rainstorm_core::replay::FrameSeq;
use rainstorm_core::wire::{Body, Codec, Envelope};
use rainstorm_core::{Channel, MemberId, Millis};

/// Appends a line to `f` through node `at` until an append is refused: how many were taken
/// (never more than `most`), and the refusal.
fn append_until_refused(c: &mut Cluster, at: usize, f: &FileName, most: usize) -> (usize, HydfsError) {
    let mut accepted = 0;
    loop {
        match c.run(at, ClientOp::Append { name: f.clone(), data: b"line\n".to_vec() }) {
            Ok(()) => accepted += 1,
            Err(e) => return (accepted, e),
        }
        assert!(accepted <= most, "the limit held");
    }
}

#[test]
fn flooding_one_file_with_appends_meets_a_typed_error_until_it_is_merged() {
    let hydfs = HydfsConfig { max_pending_appends: 20, ..HydfsConfig::default() };
    let mut c = Cluster::new(4, hydfs, LimitsConfig::default());
    let f = name("flood.log");
    c.run(1, ClientOp::Create { name: f.clone(), data: Vec::new() }).expect("created");
    let (accepted, refused) = append_until_refused(&mut c, 2, &f, 20);
    assert_eq!(accepted, 20);
    assert_eq!(refused, HydfsError::TooManyPending { name: f.clone(), limit: 20 });
    assert_eq!(refused.to_string(), "too many pending appends on `flood.log` (the limit is 20); run merge");
    let total: u64 = (0..4).map(|i| counter(&c.stats(i), "hydfs.pending_appends_refused")).sum();
    assert_eq!(total, 1);
    c.run(3, ClientOp::Merge { name: f.clone() }).expect("merged");
    c.run(2, ClientOp::Append { name: f, data: b"line\n".to_vec() }).expect("accepted after the merge");
}

#[test]
fn a_file_whose_description_would_pass_its_limit_refuses_appends_for_good() {
    let hydfs = HydfsConfig { max_file_meta_bytes: 1000, ..HydfsConfig::default() };
    let mut c = Cluster::new(4, hydfs, LimitsConfig::default());
    let f = name("long.log");
    c.run(1, ClientOp::Create { name: f.clone(), data: Vec::new() }).expect("created");
    let (accepted, refused) = append_until_refused(&mut c, 2, &f, 100);
    assert!(accepted >= 10, "appends were taken until the description was full: {accepted}");
    assert_eq!(refused, HydfsError::FileFull { name: f.clone(), limit: 1000 });
    assert_eq!(
        refused.to_string(),
        "`long.log` is full: the description of its writes would pass 1000 bytes \
         ([hydfs] max_file_meta_mb), the most a file may take; append to a new file"
    );
    let total: u64 = (0..4).map(|i| counter(&c.stats(i), "hydfs.full_file_appends_refused")).sum();
    assert_eq!(total, 1);
    c.run(3, ClientOp::Merge { name: f.clone() }).expect("merged");
    let again = c.run(2, ClientOp::Append { name: f, data: b"line\n".to_vec() });
    assert!(matches!(again, Err(HydfsError::FileFull { .. })), "a merge makes no room: {again:?}");
}

#[test]
fn a_long_name_is_refused_with_the_limit_and_counted() {
    let hydfs = HydfsConfig { max_name_bytes: 16, ..HydfsConfig::default() };
    let mut c = Cluster::new(3, hydfs, LimitsConfig::default());
    let long = name("a-name-of-twenty-bytes");
    let e = c.run(1, ClientOp::Create { name: long, data: b"x".to_vec() }).unwrap_err();
    assert_eq!(e, HydfsError::NameTooLong { len: 22, limit: 16 });
    assert_eq!(e.to_string(), "file name is 22 bytes long; the limit is 16 bytes (max_name_bytes)");
    assert_eq!(counter(&c.stats(1), "hydfs.names_refused"), 1);
    c.run(1, ClientOp::Create { name: name("short"), data: b"x".to_vec() }).expect("within the limit");
}

/// A frame from `from` to node 0: a HyDFS `Stat` request, or a membership `Ack`.
fn frame(from: MemberId, body: Body) -> Vec<u8> {
    let envelope = Envelope { from, to: addr(0), lane: body.lane(), seq: FrameSeq(1), body };
    Codec::plain().encode(&envelope, 64 << 20).expect("encodes")
}

#[test]
fn requests_over_a_peers_rate_are_dropped_and_counted_but_membership_never_is() {
    let limits =
        LimitsConfig { peer_requests_per_sec: 100, peer_request_burst: 10, ..LimitsConfig::default() };
    let mut c = Cluster::new(4, HydfsConfig::default(), limits);
    let (peer, other) = (c.nodes[2].id(), c.nodes[3].id());
    let before = c.stats(0);
    let stat = |req| Body::Hydfs(HydfsMsg::Stat { req, name: name("f") });
    let now = c.now;
    for req in 0..50 {
        c.nodes[0].handle_frame(now, Channel::Stream, &frame(peer, stat(req)));
    }
    let ack = Body::Membership(MembershipMsg::Ack { seq: ProbeSeq(1), updates: vec![] });
    for _ in 0..500 {
        c.nodes[0].handle_frame(now, Channel::Datagram, &frame(peer, ack.clone()));
    }
    let after = c.stats(0);
    let limited =
        counter(&after, "frames_rejected.rate_limited") - counter(&before, "frames_rejected.rate_limited");
    assert_eq!(limited, 40, "the burst of 10 passed, the other 40 requests were dropped");
    let received = counter(&after, "frames_received") - counter(&before, "frames_received");
    assert_eq!(received, 10 + 500, "every membership datagram was taken");
    // A tenth of a second later the peer has 10 more requests; another peer has its own bucket.
    let later = now + Millis(100);
    let answered = (100..120).filter(|req| {
        c.nodes[0].handle_frame(later, Channel::Stream, &frame(peer, stat(*req)));
        counter(&c.stats(0), "frames_rejected.rate_limited") == limited
    });
    assert_eq!(answered.count(), 10);
    c.nodes[0].handle_frame(later, Channel::Stream, &frame(other, stat(1)));
    assert_eq!(counter(&c.stats(0), "frames_rejected.rate_limited"), limited + 10);
    // The cluster itself was never limited: its own requests come well under the rate.
    assert_eq!(counter(&c.stats(1), "frames_rejected.rate_limited"), 0);
}

#[test]
fn file_and_job_traffic_from_a_non_member_is_dropped_and_counted() {
    let mut c = Cluster::new(3, HydfsConfig::default(), LimitsConfig::default());
    let stat = |req| Body::Hydfs(HydfsMsg::Stat { req, name: name("f") });
    let member = c.nodes[1].id();
    // An outsider, and a member's previous incarnation (same address, earlier join).
    let outsider = MemberId::new(addr(9), member.join_time);
    let previous = MemberId::new(member.addr, member.join_time.wrapping_sub(1));
    let now = c.now;
    let before = c.stats(0);
    for from in [outsider, previous] {
        c.nodes[0].handle_frame(now, Channel::Stream, &frame(from, stat(1)));
    }
    let held = c.stats(0);
    let refused = |s: &str| counter(&held, s) - counter(&before, s);
    assert_eq!(refused("frames_rejected.not_a_member"), 1, "the previous incarnation's at once");
    assert_eq!(refused("frames_received"), 0, "neither reached a layer");
    // The outsider might be a member that joined a moment ago: its read request is held for the
    // news of its join, and dropped once it has not been listed within the hold. Anything but a
    // read from it is refused at once.
    let merge = Body::Hydfs(HydfsMsg::Merge { req: 3, name: name("f") });
    c.nodes[0].handle_frame(now, Channel::Stream, &frame(outsider, merge));
    assert_eq!(
        counter(&c.stats(0), "frames_rejected.not_a_member") - counter(&held, "frames_rejected.not_a_member"),
        1
    );
    let later = now + rainstorm_core::node::STRANGER_HOLD;
    assert!(c.nodes[0].poll_timeout().is_some_and(|t| t <= later), "the hold ends on a timer");
    c.nodes[0].handle_timeout(later);
    let after = c.stats(0);
    let refused = |s: &str| counter(&after, s) - counter(&before, s);
    assert_eq!(refused("frames_rejected.not_a_member"), 3);
    assert_eq!(refused("frames_received") + refused("frames_held"), 0, "none reached a layer");
    // Membership itself is how one becomes a member: its messages are taken from anyone.
    let ack = Body::Membership(MembershipMsg::Ack { seq: ProbeSeq(1), updates: vec![] });
    c.nodes[0].handle_frame(later, Channel::Datagram, &frame(outsider, ack));
    c.nodes[0].handle_frame(later, Channel::Stream, &frame(member, stat(2)));
    assert_eq!(counter(&c.stats(0), "frames_received") - counter(&after, "frames_received"), 2);
}

#[test]
fn an_oversized_stream_frame_is_dropped_and_counted() {
    let limits = LimitsConfig { stream_frame_bytes: 10 << 20, ..LimitsConfig::default() };
    let mut c = Cluster::new(2, HydfsConfig::default(), limits);
    let of = Stamp { ts: 1, client: c.nodes[1].id(), seq: 1 };
    let big = Body::Hydfs(HydfsMsg::RemoteAppend { req: 1, name: name("f"), data: vec![7; 11 << 20], of });
    let (now, member) = (c.now, c.nodes[1].id());
    c.nodes[0].handle_frame(now, Channel::Stream, &frame(member, big));
    assert_eq!(counter(&c.stats(0), "frames_rejected.oversized"), 1);
    // What a driver skipped without reading it whole is counted the same way.
    c.nodes[0].record_rejected("oversized", 1);
    assert_eq!(counter(&c.stats(0), "frames_rejected.oversized"), 2);
    // A frame within the limit is taken.
    let small = Body::Hydfs(HydfsMsg::Stat { req: 2, name: name("f") });
    let before = counter(&c.stats(0), "frames_received");
    c.nodes[0].handle_frame(now, Channel::Stream, &frame(member, small));
    assert_eq!(counter(&c.stats(0), "frames_received"), before + 1);
}

#[test]
fn reads_held_for_a_sender_not_listed_yet_stay_bounded() {
    let mut c = Cluster::new(3, HydfsConfig::default(), LimitsConfig::default());
    let outsider = MemberId::new(addr(9), c.nodes[1].id().join_time);
    let stat = |req| Body::Hydfs(HydfsMsg::Stat { req, name: name("f") });
    let (now, extra) = (c.now, 10);
    let before = c.stats(0);
    for req in 0..(rainstorm_core::node::HELD_FRAMES + extra) as u64 {
        c.nodes[0].handle_frame(now, Channel::Stream, &frame(outsider, stat(req)));
    }
    assert_eq!(c.nodes[0].held_frames(), rainstorm_core::node::HELD_FRAMES, "the newest are held");
    let after = c.stats(0);
    let refused =
        counter(&after, "frames_rejected.not_a_member") - counter(&before, "frames_rejected.not_a_member");
    assert_eq!(refused, extra as u64, "the oldest made room, counted as refused");
}
