//! End to end: `plumb remote ... logs` follows the agent's own log. Two
//! followers at once each receive the lines the test makes the agent log
//! (a refused wrong token at WARN, a remote run at INFO whose event count
//! matches what the client received), and both streams end cleanly when
//! the agent gets SIGTERM. Root tests fail without root.

mod support;

use plumb_core::testing::{marker, require_root};
use std::time::{Duration, Instant};
use support::http::{sample, scrape};
use support::*;

/// Log lines (JSON) from a follower until one satisfies `pred`; every line
/// seen is kept in `seen`.
fn wait_log(
    follower: &Proc,
    seen: &mut Vec<serde_json::Value>,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let l = follower.out.recv_timeout(left).ok()?;
        let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON log line");
        seen.push(v.clone());
        if pred(&v) {
            return Some(v);
        }
    }
}

#[test]
fn two_followers_get_the_agents_log_until_it_stops() {
    require_root();
    let token = token();
    let wrong = TempFile::new("wrong", "not-the-token\n");
    let agent = start_agent(
        "node-logs",
        "127.0.0.1:0",
        Some(token.path()),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let api = agent.api.clone();
    let remote = |token: &TempFile, args: &[&str]| remote(&[&agent], Some(token.path()), args);

    // Two followers; each says when the agent has subscribed it.
    let mut followers: Vec<Proc> = (0..2)
        .map(|_| Proc::spawn(remote(&token, &["logs", "-o", "json"])))
        .collect();
    for f in &followers {
        let mut seen = Vec::new();
        let l = wait_line(&f.err, Duration::from_secs(20), &mut seen, |l| {
            l.contains("following its log")
        })
        .unwrap_or_else(|| panic!("follower did not start: {seen:?}"));
        assert_eq!(
            l,
            format!("plumb: node node-logs ({api}): following its log")
        );
    }

    // A wrong token: refused, and logged at WARN.
    let out = remote(&wrong, &["gadgets"])
        .output()
        .expect("run plumb remote");
    assert_eq!(out.status.code(), Some(1));
    let text = scrape(agent.metrics());
    assert_eq!(
        sample(
            &text,
            "plumb_api_auth_failures_total",
            &[("reason", "invalid")]
        ),
        Some(1.0),
        "{text}"
    );

    // A remote run with a marker exec: logged at INFO when it starts and
    // when it ends, with the number of events the client received.
    let mark = marker("logs-exec");
    let mut run = Proc::spawn(remote(
        &token,
        &["trace", "exec", "-o", "json", "--duration", "3s"],
    ));
    let mut run_err = Vec::new();
    wait_line(&run.err, Duration::from_secs(30), &mut run_err, |l| {
        l.contains("exec attached")
    })
    .unwrap_or_else(|| panic!("remote exec did not attach: {run_err:?}"));
    exec_true(&mark);
    assert_eq!(run.wait(Duration::from_secs(30)), Some(0), "{run_err:?}");
    let events = drain(&run.out);
    assert!(
        events.iter().any(|l| l.contains(&mark)),
        "the marker exec is among the events: {events:?}"
    );
    let summary = drain(&run.err);
    assert!(
        summary
            .iter()
            .any(|l| l == &format!("plumb: {} events, 0 lost, from 1 of 1 agents", events.len())),
        "{summary:?}"
    );

    for f in &followers {
        let mut seen = Vec::new();
        let refused = wait_log(f, &mut seen, |v| {
            v["message"] == "refused a call with a wrong token"
        })
        .unwrap_or_else(|| panic!("the refusal was not streamed: {seen:?}"));
        assert_eq!(refused["level"], "WARN", "{refused}");
        assert_eq!(refused["node"], "node-logs", "{refused}");
        assert_eq!(refused["target"], "plumb_agent::auth", "{refused}");
        let started = wait_log(f, &mut seen, |v| {
            v["message"] == "remote run started gadget=exec"
        })
        .unwrap_or_else(|| panic!("the run's start was not streamed: {seen:?}"));
        assert_eq!(started["level"], "INFO", "{started}");
        let want = format!(
            "remote run ended gadget=exec seen={} lost=0 dropped=0 filtered=0 reason=Duration",
            events.len()
        );
        let ended = wait_log(f, &mut seen, |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("remote run ended"))
        })
        .unwrap_or_else(|| panic!("the run's end was not streamed: {seen:?}"));
        assert_eq!(ended["message"], want.as_str(), "{ended}");
        assert_eq!(ended["level"], "INFO", "{ended}");
        // Each line once: exactly one refusal was made.
        let refusals = seen
            .iter()
            .filter(|v| v["message"] == "refused a call with a wrong token")
            .count();
        assert_eq!(refusals, 1, "{seen:?}");
    }

    // SIGTERM: the agent ends both streams and exits (its programs gone);
    // the followers exit 0.
    agent.stop();
    for f in &mut followers {
        assert_eq!(f.wait(Duration::from_secs(20)), Some(0));
        let err = drain(&f.err);
        assert!(
            err.contains(&format!(
                "plumb: node node-logs ({api}): the agent ended its log stream"
            )),
            "{err:?}"
        );
        assert!(
            err.iter().any(|l| l.starts_with("plumb: ")
                && l.ends_with("log lines from 1 of 1 agents, 1 ended")),
            "{err:?}"
        );
    }
}
