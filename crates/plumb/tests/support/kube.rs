//! What tests of agents in the stand-in API server's cluster share: the
//! environment that tells an agent it runs in a pod, and waiting until an
//! agent's pod watcher has its list.

use plumb_kube_standin::ApiServer;
use std::path::Path;
use std::time::{Duration, Instant};

/// What an agent in a pod of the stand-in's cluster is given: the API
/// through a kubeconfig (kube-rs reads it first), and the variable that
/// says "in a pod".
pub fn in_cluster(kubeconfig: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_string()),
        ("KUBERNETES_SERVICE_PORT", "443".to_string()),
    ]
}

/// Wait until the stand-in has seen a watch of `node`'s pods: the
/// agent's watcher has its list.
pub fn wait_watching(api: &ApiServer, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = format!("spec.nodeName={node}");
    while Instant::now() < deadline {
        if api
            .seen()
            .iter()
            .any(|t| t.contains("watch=true") && t.contains(&want))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no watch of {node}'s pods: {:?}", api.seen());
}
