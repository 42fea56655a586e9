//! The client's end of `Bpftrace`: one script on many agents at once,
//! their lines merged as they come, each with its node. A node that
//! refuses (no `--allow-bpftrace`), rejects the script or fails is
//! reported as such while the others go on.

use super::{connect_noting, remote_error, within, ClientAuth, Deadlines, Target};
use crate::error::{AgentError, Result};
use crate::proto::{bpftrace_message::Kind, BpftraceRequest, PodRef};
use std::time::Duration;
use tokio::sync::mpsc;

/// One item of the merged streams; `target` indexes the agent list.
#[derive(Debug, Clone, PartialEq)]
pub enum BtItem {
    /// bpftrace runs on this node.
    Started {
        target: usize,
        node: String,
        pid: u32,
        container_pid: u32,
        container_cgroup: String,
    },
    /// A line bpftrace printed (on stderr when `stderr`).
    Line {
        target: usize,
        node: String,
        text: String,
        stderr: bool,
    },
    /// bpftrace ended on this node.
    Done {
        target: usize,
        node: String,
        /// -1: a signal ended it.
        exit_code: i32,
        signal: i32,
        ended: String,
        killed: bool,
        dropped: u64,
    },
    /// This node refused, failed or went away.
    Failed { target: usize, error: String },
}

/// How long after its deadline a node may take to print its maps and end
/// the stream (the agent's SIGKILL grace, and some).
const AFTER_DEADLINE: Duration = Duration::from_secs(15);

/// Run `req` on every target; `pod_of` gives the pod context for a target
/// (kubectl sends each node the pod it hosts). Dropping the receiver
/// cancels the calls, which stops bpftrace on every node.
pub fn fan_out(
    targets: &[Target],
    auth: &ClientAuth,
    req: BpftraceRequest,
    pod_of: impl Fn(&Target) -> Option<PodRef>,
    d: Deadlines,
) -> mpsc::Receiver<BtItem> {
    let (tx, rx) = mpsc::channel(1024);
    for (i, t) in targets.iter().enumerate() {
        let (tx, auth, t) = (tx.clone(), auth.clone(), t.clone());
        let mut req = req.clone();
        if let Some(p) = pod_of(&t) {
            req.pod = Some(p);
        }
        tokio::spawn(async move {
            if let Err(e) = one(i, &t, &auth, req, d, &tx).await {
                let _ = tx
                    .send(BtItem::Failed {
                        target: i,
                        error: crate::error::chain(&e),
                    })
                    .await;
            }
        });
    }
    rx
}

async fn one(
    i: usize,
    t: &Target,
    auth: &ClientAuth,
    req: BpftraceRequest,
    d: Deadlines,
    tx: &mpsc::Sender<BtItem>,
) -> Result<()> {
    let (mut client, ended) = connect_noting(t, auth, d).await?;
    let remote = |status| remote_error(&t.who, status, d, &ended);
    let end = (req.duration_ms > 0).then(|| {
        tokio::time::Instant::now()
            + Duration::from_millis(req.duration_ms)
            + AFTER_DEADLINE
            + d.call
    });
    // The agent answers once bpftrace is started (or refused).
    let mut stream = within(&t.who, "starting bpftrace", d.call, async {
        Ok(client.bpftrace(req).await.map_err(remote)?.into_inner())
    })
    .await?;
    let mut node = t.node_or_via().to_string();
    loop {
        let next = stream.message();
        let msg = match end {
            Some(end) => {
                let left = end.saturating_duration_since(tokio::time::Instant::now());
                within(&t.who, "finishing the bpftrace run", left, async {
                    next.await.map_err(remote)
                })
                .await?
            }
            None => next.await.map_err(remote)?,
        };
        let Some(msg) = msg else {
            return Err(AgentError::Internal(format!(
                "{}: ended the stream before bpftrace ended",
                t.who
            )));
        };
        let item = match msg.kind {
            Some(Kind::Started(s)) => {
                node = s.node.clone();
                BtItem::Started {
                    target: i,
                    node: s.node,
                    pid: s.pid,
                    container_pid: s.container_pid,
                    container_cgroup: s.container_cgroup,
                }
            }
            Some(Kind::Line(l)) => BtItem::Line {
                target: i,
                node: node.clone(),
                text: l.text,
                stderr: l.stderr,
            },
            Some(Kind::Done(done)) => {
                let _ = tx
                    .send(BtItem::Done {
                        target: i,
                        node,
                        exit_code: done.exit_code,
                        signal: done.signal,
                        ended: done.ended,
                        killed: done.killed,
                        dropped: done.dropped,
                    })
                    .await;
                return Ok(());
            }
            None => continue,
        };
        if tx.send(item).await.is_err() {
            // The reader is gone: dropping the stream cancels the call.
            return Ok(());
        }
    }
}
