//! A CPU profile on the wire: the agent sends its [`Profile`] as
//! structured stacks (each distinct frame once, stacks by frame index), so
//! the client can render every format the local `plumb profile cpu` has,
//! merge nodes, and keep the kernel/user flag and the completeness counts.

use crate::proto;
use plumb_core::event::Workload;
use plumb_profile::{Completeness, Frame, Profile, Stack};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// The counts of a profile's completeness are the same fields in the
/// profile and on the wire: copied by one list, so the two directions
/// cannot drift apart.
macro_rules! copy_completeness {
    ($c:expr => $to:path) => {{
        let c = $c;
        $to {
            samples: c.samples,
            lost: c.lost,
            missed: c.missed,
            idle: c.idle,
            filtered_in_kernel: c.filtered_in_kernel,
            filtered_in_user_space: c.filtered_in_user_space,
            kernel_stacks_lost: c.kernel_stacks_lost,
            user_stacks_lost: c.user_stacks_lost,
            process_notes_lost: c.process_notes_lost,
            frames_unsymbolized: c.frames_unsymbolized,
            frames_total: c.frames_total,
            stacks_truncated: c.stacks_truncated,
            processes_captured: c.processes_captured,
            processes_not_captured: c.processes_not_captured,
            addresses_unsymbolized: c.addresses_unsymbolized,
        }
    }};
}

/// The agent's side: the profile as a `ProfileResponse`.
pub fn to_response(p: &Profile) -> proto::ProfileResponse {
    let mut frames: Vec<proto::Frame> = Vec::new();
    let mut index: HashMap<&Frame, u32> = HashMap::new();
    let stacks = p
        .stacks
        .iter()
        .map(|s| {
            let ids = s
                .frames
                .iter()
                .map(|f| {
                    *index.entry(f).or_insert_with(|| {
                        frames.push(proto::Frame {
                            name: f.name.to_string(),
                            module: f.module.as_deref().unwrap_or_default().to_string(),
                            kernel: f.kernel,
                            symbolized: f.symbolized,
                        });
                        frames.len() as u32 - 1
                    })
                })
                .collect();
            proto::Stack {
                comm: s.comm.clone(),
                pid: s.pid,
                tid: s.tid,
                cgroup_id: s.cgroup_id,
                workload: Some(workload_to_wire(&s.workload)),
                frames: ids,
                count: s.count,
            }
        })
        .collect();
    let c = &p.completeness;
    proto::ProfileResponse {
        node: p.node.clone(),
        samples: c.samples,
        lost: c.lost + c.missed,
        frequency_hz: p.frequency_hz,
        started_unix_ns: p
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        duration_ns: p.duration_ns,
        symbolize_ns: p.symbolize_ns,
        cpus: p.cpus,
        completeness: Some(copy_completeness!(c => proto::Completeness)),
        frames,
        stacks,
        prog_ids: p.prog_ids.clone(),
        symbolize_cpu_ns: p.symbolize_cpu_ns,
        max_stack_depth: p.max_stack_depth,
    }
}

fn workload_to_wire(w: &Workload) -> proto::Workload {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    proto::Workload {
        container_id: s(&w.container_id),
        container_runtime: w.container_runtime.unwrap_or_default().to_string(),
        container: s(&w.container),
        pod_uid: s(&w.pod_uid),
        pod: s(&w.pod),
        namespace: s(&w.namespace),
        owner: s(&w.owner),
        pod_labels: w
            .pod_labels
            .as_deref()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    }
}

/// What a response from an agent can get wrong.
#[derive(Debug, thiserror::Error)]
#[error("the profile refers to frame {index}, but holds {frames} frames")]
pub struct BadFrame {
    pub index: u32,
    pub frames: usize,
}

/// The client's side: the response as a [`Profile`] that plumb-profile's
/// renderers take. A stack that names a frame the response does not hold
/// is an error: the agent sent something this client cannot trust.
pub fn from_response(r: &proto::ProfileResponse) -> Result<Profile, BadFrame> {
    let frames: Vec<Frame> = r
        .frames
        .iter()
        .map(|f| Frame {
            name: Arc::from(f.name.as_str()),
            module: (!f.module.is_empty()).then(|| Arc::from(f.module.as_str())),
            kernel: f.kernel,
            symbolized: f.symbolized,
        })
        .collect();
    let mut stacks = Vec::with_capacity(r.stacks.len());
    for s in &r.stacks {
        let fs = s
            .frames
            .iter()
            .map(|&i| {
                frames.get(i as usize).cloned().ok_or(BadFrame {
                    index: i,
                    frames: frames.len(),
                })
            })
            .collect::<Result<Vec<Frame>, BadFrame>>()?;
        stacks.push(Stack {
            comm: s.comm.clone(),
            pid: s.pid,
            tid: s.tid,
            cgroup_id: s.cgroup_id,
            workload: Arc::new(
                s.workload
                    .as_ref()
                    .map(workload_from_wire)
                    .unwrap_or_default(),
            ),
            frames: fs,
            count: s.count,
        });
    }
    let c = r.completeness.unwrap_or_default();
    Ok(Profile {
        node: r.node.clone(),
        frequency_hz: r.frequency_hz,
        started: UNIX_EPOCH + Duration::from_nanos(r.started_unix_ns),
        duration_ns: r.duration_ns,
        symbolize_ns: r.symbolize_ns,
        symbolize_cpu_ns: r.symbolize_cpu_ns,
        cpus: r.cpus,
        max_stack_depth: r.max_stack_depth,
        completeness: copy_completeness!(c => Completeness),
        stacks,
        prog_ids: r.prog_ids.clone(),
    })
}

/// The runtimes plumb-core names (its cgroup parser's `&'static str`s);
/// another name from a newer agent is shown as unknown rather than leaked.
const RUNTIMES: &[&str] = &["containerd", "cri-o", "docker", "podman", "cri"];

fn workload_from_wire(w: &proto::Workload) -> Workload {
    let s = |v: &str| (!v.is_empty()).then(|| v.to_string());
    Workload {
        container_id: s(&w.container_id),
        container_runtime: RUNTIMES
            .iter()
            .find(|r| **r == w.container_runtime)
            .copied(),
        container: s(&w.container),
        pod_uid: s(&w.pod_uid),
        pod: s(&w.pod),
        namespace: s(&w.namespace),
        owner: s(&w.owner),
        pod_labels: (!w.pod_labels.is_empty()).then(|| {
            Arc::new(
                w.pod_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn frame(name: &str, kernel: bool) -> Frame {
        Frame {
            name: Arc::from(name),
            module: Some(Arc::from(if kernel { "kernel" } else { "/usr/bin/app" })),
            kernel,
            symbolized: !name.contains("+0x"),
        }
    }

    fn sample() -> Profile {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let pod = Arc::new(Workload {
            container_id: Some("ab".repeat(32)),
            container_runtime: Some("containerd"),
            pod_uid: Some("1f0e6a52-6c1b-4f7e-9a43-2f1d0c7e5a01".into()),
            pod: Some("web-1".into()),
            namespace: Some("shop".into()),
            owner: Some("ReplicaSet/web".into()),
            pod_labels: Some(Arc::new(labels)),
            ..Workload::default()
        });
        Profile {
            node: "n1".into(),
            frequency_hz: 99,
            started: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration_ns: 2_000_000_000,
            symbolize_ns: 5,
            symbolize_cpu_ns: 4,
            cpus: 2,
            max_stack_depth: 127,
            completeness: Completeness {
                samples: 30,
                lost: 1,
                missed: 2,
                frames_unsymbolized: 1,
                frames_total: 7,
                ..Completeness::default()
            },
            stacks: vec![
                Stack {
                    comm: "app".into(),
                    pid: 10,
                    tid: 12,
                    cgroup_id: 7,
                    workload: pod,
                    frames: vec![
                        frame("main", false),
                        frame("app+0x10", false),
                        frame("do_syscall_64", true),
                    ],
                    count: 20,
                },
                Stack {
                    comm: "sh".into(),
                    pid: 11,
                    tid: 11,
                    cgroup_id: 1,
                    workload: Arc::default(),
                    frames: vec![frame("main", false), frame("do_syscall_64", true)],
                    count: 10,
                },
            ],
            prog_ids: vec![4, 5],
        }
    }

    #[test]
    fn a_profile_survives_the_wire() {
        let p = sample();
        let r = to_response(&p);
        // Frames are sent once each.
        assert_eq!(r.frames.len(), 3);
        assert_eq!(r.stacks[1].frames, vec![0, 2]);
        assert_eq!((r.samples, r.lost), (30, 3));
        let back = from_response(&r).unwrap();
        assert_eq!(back.folded(), p.folded());
        assert_eq!(back.completeness, p.completeness);
        assert_eq!(back.started, p.started);
        assert_eq!(
            (
                back.node.as_str(),
                back.cpus,
                back.duration_ns,
                back.prog_ids.clone()
            ),
            ("n1", 2, 2_000_000_000, vec![4, 5])
        );
        for (a, b) in back.stacks.iter().zip(&p.stacks) {
            assert_eq!(a.frames, b.frames);
            assert_eq!(*a.workload, *b.workload);
            assert_eq!((a.pid, a.cgroup_id, a.count), (b.pid, b.cgroup_id, b.count));
        }
    }

    #[test]
    fn a_stack_naming_a_missing_frame_is_refused() {
        let mut r = to_response(&sample());
        r.stacks[0].frames.push(9);
        let e = from_response(&r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the profile refers to frame 9, but holds 3 frames"
        );
    }
}
