//! The files containerd and CNI read: containerd's own configuration (its
//! root, state and socket in the fixture's directories; the CRI plugin with
//! runc under the cgroupfs driver and the sandbox image imported here, so no
//! registry is ever resolved), and one CNI network: a bridge with
//! host-local addresses on a lab-only subnet, no gateway, no masquerade.

use std::path::Path;

/// Where one fixture keeps its files.
pub struct Paths<'a> {
    /// Content and snapshots (on disk: overlayfs needs a real upper).
    pub root: &'a Path,
    /// Runtime state and the sockets.
    pub state: &'a Path,
    /// The CNI network's configuration directory.
    pub cni_conf: &'a Path,
}

/// The image the pod sandboxes run (imported by `image`, never pulled).
pub const PAUSE_IMAGE: &str = "docker.io/plumb/pause:test";
/// The image containers run: a static busybox.
pub const BUSYBOX_IMAGE: &str = "docker.io/plumb/busybox:test";

/// containerd's config.toml (schema version 2, containerd 1.6 and 1.7).
///
/// `restrict_oom_score_adj` and `disable_apparmor` are what runc needs to
/// start a sandbox in this machine's own sandbox; the debug and metrics
/// listeners are off, and the CRI streaming server listens on loopback.
pub fn containerd_toml(p: &Paths) -> String {
    let sock = p.state.join("containerd.sock");
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni}"
  max_conf_num = 1

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
"#,
        root = p.root.display(),
        state = p.state.display(),
        sock = sock.display(),
        cni = p.cni_conf.display(),
    )
}

/// A CNI network list: the bridge plugin (no gateway address on the
/// bridge, no masquerade) with host-local IPAM keeping its leases in
/// `ipam_dir`. Pods reach each other over the bridge and nothing else.
pub fn cni_conflist(network: &str, bridge: &str, subnet: &str, ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": false,
            "isDefaultGateway": false,
            "ipMasq": false,
            "hairpinMode": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "dataDir": ipam_dir,
            },
        }],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cri_plugin_is_told_what_this_machine_needs() {
        let (root, state, cni) = (Path::new("/r"), Path::new("/s"), Path::new("/c"));
        let t = containerd_toml(&Paths {
            root,
            state,
            cni_conf: cni,
        });
        for want in [
            "address = \"/s/containerd.sock\"",
            "restrict_oom_score_adj = true",
            "disable_apparmor = true",
            "sandbox_image = \"docker.io/plumb/pause:test\"",
            "conf_dir = \"/c\"",
            "SystemdCgroup = false",
        ] {
            assert!(t.contains(want), "{want} in\n{t}");
        }
    }

    #[test]
    fn the_network_has_no_gateway_and_no_masquerade() {
        let v: serde_json::Value =
            serde_json::from_str(&cni_conflist("n", "br", "10.32.4.0/24", Path::new("/i")))
                .unwrap();
        let b = &v["plugins"][0];
        assert_eq!(b["type"], "bridge");
        assert_eq!(b["bridge"], "br");
        assert_eq!(b["isGateway"], false);
        assert_eq!(b["ipMasq"], false);
        assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "10.32.4.0/24");
        assert_eq!(b["ipam"]["dataDir"], "/i");
    }
}
