//! The client's end of `Capture`: the same capture on many agents at
//! once, each node's messages forwarded as they come for the caller to
//! merge. A node that refuses (no capture permission for this client),
//! rejects the expression or fails is reported as such while the others
//! go on.

use super::{connect_noting, remote_error, within, ClientAuth, Deadlines, Target};
use crate::error::{AgentError, Result};
use crate::proto::{
    capture_message::Kind, CaptureDone, CapturePackets, CaptureRequest, CaptureStarted, PodRef,
};
use std::time::Duration;
use tokio::sync::mpsc;

/// One item of the merged streams; `target` indexes the agent list.
#[derive(Debug, Clone, PartialEq)]
pub enum CapItem {
    Started {
        target: usize,
        started: CaptureStarted,
    },
    Packets {
        target: usize,
        packets: CapturePackets,
    },
    Done {
        target: usize,
        done: CaptureDone,
    },
    /// This node refused, failed or went away.
    Failed {
        target: usize,
        error: String,
    },
}

/// How long after its duration a node may take to send its last packets
/// and its counts.
const AFTER_DEADLINE: Duration = Duration::from_secs(15);

/// Run `req` on every target, each with its own pods (`pods_of`), with
/// the capture token (`x-plumb-capture-token`) when given. Dropping the
/// receiver cancels the calls, which stops every node's capture.
pub fn fan_out(
    targets: &[Target],
    auth: &ClientAuth,
    capture_token: Option<String>,
    req: CaptureRequest,
    pods_of: impl Fn(&Target) -> Vec<PodRef>,
    d: Deadlines,
) -> mpsc::Receiver<CapItem> {
    let (tx, rx) = mpsc::channel(256);
    for (i, t) in targets.iter().enumerate() {
        let (tx, auth, t, token) = (tx.clone(), auth.clone(), t.clone(), capture_token.clone());
        let mut req = req.clone();
        req.pods = pods_of(&t);
        tokio::spawn(async move {
            if let Err(e) = one(i, &t, &auth, token, req, d, &tx).await {
                let _ = tx
                    .send(CapItem::Failed {
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
    token: Option<String>,
    req: CaptureRequest,
    d: Deadlines,
    tx: &mpsc::Sender<CapItem>,
) -> Result<()> {
    let (mut client, ended) = connect_noting(t, auth, d).await?;
    let remote = |status| remote_error(&t.who, status, d, &ended);
    let mut call = tonic::Request::new(req);
    if let Some(tok) = token {
        let v = tok
            .parse()
            .map_err(|_| AgentError::Internal("the capture token is not valid metadata".into()))?;
        call.metadata_mut().insert(crate::capture::TOKEN_HEADER, v);
    }
    let mut stream = within(&t.who, "starting the capture", d.call, async {
        Ok(client.capture(call).await.map_err(remote)?.into_inner())
    })
    .await?;
    let mut end: Option<tokio::time::Instant> = None;
    loop {
        let next = stream.message();
        let msg = match end {
            Some(end) => {
                let left = end.saturating_duration_since(tokio::time::Instant::now());
                within(&t.who, "finishing the capture", left, async {
                    next.await.map_err(remote)
                })
                .await?
            }
            None => next.await.map_err(remote)?,
        };
        let Some(msg) = msg else {
            return Err(AgentError::Internal(format!(
                "{}: ended the stream before the capture ended",
                t.who
            )));
        };
        let item = match msg.kind {
            Some(Kind::Started(s)) => {
                if s.duration_ms > 0 {
                    end = Some(
                        tokio::time::Instant::now()
                            + Duration::from_millis(s.duration_ms)
                            + AFTER_DEADLINE
                            + d.call,
                    );
                }
                CapItem::Started {
                    target: i,
                    started: s,
                }
            }
            Some(Kind::Packets(p)) => CapItem::Packets {
                target: i,
                packets: p,
            },
            Some(Kind::Done(done)) => {
                let _ = tx.send(CapItem::Done { target: i, done }).await;
                return Ok(());
            }
            None => continue,
        };
        if tx.send(item).await.is_err() {
            return Ok(());
        }
    }
}
