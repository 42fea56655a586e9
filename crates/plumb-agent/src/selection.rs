//! The pods a remote run is about (`kubectl plumb -l app=x` resolves the
//! label selector to pods, and sends each node its own): events and
//! profile samples of other pods are left on the agent. plumb-core's
//! filter takes one pod; a label selection is a set of them, so it is
//! checked here, after the core filter.

use crate::proto::PodRef;
use plumb_core::event::{Event, Workload};
use std::collections::BTreeSet;

/// A set of (namespace, name) pods; an event is kept when any workload it
/// names (its process, or either side of a network flow) is one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSelection(BTreeSet<(String, String)>);

impl PodSelection {
    /// None when the request selects no pods (everything is kept).
    pub fn from_request(pods: &[PodRef]) -> Option<PodSelection> {
        (!pods.is_empty()).then(|| {
            PodSelection(
                pods.iter()
                    .map(|p| (p.namespace.clone(), p.name.clone()))
                    .collect(),
            )
        })
    }

    pub fn keeps_workload(&self, w: &Workload) -> bool {
        match (&w.namespace, &w.pod) {
            (Some(ns), Some(pod)) => self.0.contains(&(ns.clone(), pod.clone())),
            _ => false,
        }
    }

    /// The process's pod or either side of the flow is selected.
    pub fn keeps_event(&self, ev: &Event) -> bool {
        std::iter::once(&*ev.header.workload)
            .chain(ev.body.workloads())
            .any(|w| self.keeps_workload(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ns: &str, pod: &str) -> Workload {
        Workload {
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            ..Workload::default()
        }
    }

    #[test]
    fn only_the_listed_pods_are_kept() {
        assert_eq!(PodSelection::from_request(&[]), None);
        let s = PodSelection::from_request(&[
            PodRef {
                namespace: "shop".into(),
                name: "web-1".into(),
            },
            PodRef {
                namespace: "front".into(),
                name: "api-0".into(),
            },
        ])
        .unwrap();
        assert!(s.keeps_workload(&w("shop", "web-1")));
        assert!(s.keeps_workload(&w("front", "api-0")));
        // Same name, other namespace; and a host process.
        assert!(!s.keeps_workload(&w("front", "web-1")));
        assert!(!s.keeps_workload(&Workload::default()));
    }

    /// A drop between a host process and a selected pod: kept for the
    /// destination side alone.
    #[test]
    fn a_network_event_is_kept_when_either_side_is_selected() {
        use plumb_core::event::Header;
        use plumb_core::gadgets::net::{Flow, RawFlow};
        use plumb_core::gadgets::{drop::Drop, Body};
        use std::sync::Arc;
        let raw = RawFlow {
            saddr: [0; 4],
            daddr: [0; 4],
            sport: 0,
            dport: 0,
            family: 0,
            proto: 0,
            has_ports: 0,
            netns: 0,
            ifindex: 0,
            sk_cgroup: 0,
            ifname: [0; 16],
        };
        let mut flow = Flow::decode(&raw).unwrap();
        flow.sides[1].workload = Some(Arc::new(w("shop", "web-1")));
        let ev = |flow: Flow| Event {
            body: Body::Drop(Drop {
                reason: "NETFILTER_DROP".into(),
                location: "nf_hook_slow".into(),
                flow,
                stack: None,
            }),
            header: Header {
                timestamp: std::time::SystemTime::now(),
                node: Arc::from("n1"),
                pid: None,
                tid: None,
                uid: None,
                comm: None,
                cgroup_id: 0,
                cgroup: None,
                workload: Arc::default(),
            },
        };
        let s = PodSelection::from_request(&[PodRef {
            namespace: "shop".into(),
            name: "web-1".into(),
        }])
        .unwrap();
        assert!(s.keeps_event(&ev(flow.clone())));
        flow.sides[1].workload = Some(Arc::new(w("shop", "web-2")));
        assert!(!s.keeps_event(&ev(flow)));
    }
}
