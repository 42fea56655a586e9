//! Who owns a network namespace, said as precisely as is known and no
//! more: the pod's namespace/name when a metadata source (a container
//! runtime, the agent's pod watcher) names it; else the pod UID and
//! container id that the cgroup path of a process inside it shows; else
//! that process. Nothing is guessed from names or addresses.

use plumb_core::enrich::netns::NetnsInfo;
use plumb_core::enrich::MetadataSource;
use plumb_core::event::Workload;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// How the report names it: "pod NS/NAME", "pod uid U, container C",
    /// "process COMM (pid P)".
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A process inside the namespace (the one whose cgroup was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

/// Say who `w` (with `pid`/`comm` of the process it was read from) is.
pub fn describe(w: &Workload, pid: Option<u32>, comm: Option<String>) -> Option<Owner> {
    let text = match (&w.namespace, &w.pod, &w.pod_uid, &w.container_id) {
        (Some(ns), Some(p), _, _) => format!("pod {ns}/{p}"),
        (_, _, Some(u), Some(c)) => format!("pod uid {u}, container {}", short(c)),
        (_, _, Some(u), None) => format!("pod uid {u}"),
        (_, _, None, Some(c)) => format!("container {}", short(c)),
        _ => match (pid, &comm) {
            (Some(pid), Some(c)) => format!("process {c} (pid {pid})"),
            (Some(pid), None) => format!("process {pid}"),
            _ => return None,
        },
    };
    Some(Owner {
        text,
        namespace: w.namespace.clone(),
        pod: w.pod.clone(),
        pod_uid: w.pod_uid.clone(),
        container_id: w.container_id.clone(),
        container: w.container.clone(),
        pid,
        comm,
    })
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The owner of a namespace found by the resolver, with names filled in
/// from `sources`.
pub fn of_netns(info: &NetnsInfo, sources: &[Arc<dyn MetadataSource>]) -> Option<Owner> {
    let mut w = (*info.workload).clone();
    if !w.is_empty() {
        for s in sources {
            s.fill(&mut w);
        }
    }
    let comm = info.pid.and_then(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .ok()
            .map(|c| c.trim().to_string())
    });
    describe(&w, info.pid, comm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7c3ad5e8c1f4d1b8b5e9f0e3c2a1b4d6e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3";
    const UID: &str = "0b9a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d";

    #[test]
    fn names_as_precisely_as_known() {
        let mut w = Workload {
            pod_uid: Some(UID.into()),
            container_id: Some(ID.into()),
            ..Workload::default()
        };
        assert_eq!(
            describe(&w, Some(9), Some("sleep".into())).unwrap().text,
            format!("pod uid {UID}, container 7c3ad5e8c1f4")
        );
        w.namespace = Some("shop".into());
        w.pod = Some("cart-0".into());
        let o = describe(&w, Some(9), None).unwrap();
        assert_eq!(o.text, "pod shop/cart-0");
        assert_eq!(o.pod_uid.as_deref(), Some(UID));
        assert_eq!(
            describe(&Workload::default(), Some(9), Some("sleep".into()))
                .unwrap()
                .text,
            "process sleep (pid 9)"
        );
        assert_eq!(describe(&Workload::default(), None, None), None);
    }
}
