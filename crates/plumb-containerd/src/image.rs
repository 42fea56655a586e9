//! The images pods run, made here from Debian's static busybox and imported
//! with `ctr`: an OCI image layout (one layer holding /bin/busybox and the
//! applets the tests call, a config, a manifest) in a tar, its index naming
//! the manifest under the fully qualified names CRI normalises to, so the
//! CRI plugin finds them locally and never asks a registry.

use crate::config::{BUSYBOX_IMAGE, PAUSE_IMAGE};
use crate::{run, Error, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

const BUSYBOX: &str = "/bin/busybox";
/// Applets linked in /bin: what the tests' containers run.
const APPLETS: &[&str] = &["sh", "sleep", "cat", "echo", "nc", "true", "mkfifo", "ls"];

fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let d = digest(bytes);
    std::fs::write(blobs.join(&d), bytes).map_err(|e| Error(format!("blob {d}: {e}")))?;
    Ok((format!("sha256:{d}"), bytes.len()))
}

/// Build the layout under `work` and import it into containerd's `k8s.io`
/// namespace (the one the CRI plugin uses) over `sock`.
pub fn import(work: &Path, sock: &Path) -> Result<()> {
    if !Path::new(BUSYBOX).exists() {
        return Err(Error(format!(
            "{BUSYBOX} is missing (Debian's busybox-static)"
        )));
    }
    let layer_dir = work.join("layer");
    let bin = layer_dir.join("bin");
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    for d in [&bin, &blobs, &layer_dir.join("tmp"), &layer_dir.join("etc")] {
        std::fs::create_dir_all(d).map_err(|e| Error(format!("{}: {e}", d.display())))?;
    }
    std::fs::copy(BUSYBOX, bin.join("busybox")).map_err(|e| Error(format!("{BUSYBOX}: {e}")))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a))
            .map_err(|e| Error(format!("link {a}: {e}")))?;
    }
    let layer_tar = work.join("layer.tar");
    run(&[
        "tar",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--sort=name",
        "-C",
        &layer_dir.to_string_lossy(),
        "-cf",
        &layer_tar.to_string_lossy(),
        ".",
    ])?;
    let layer = std::fs::read(&layer_tar).map_err(|e| Error(format!("layer: {e}")))?;
    let (layer_digest, layer_size) = write_blob(&blobs, &layer)?;
    // The sandbox's process, when this image is the pause image: it sleeps
    // until the sandbox is stopped.
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/bin/sleep", "2147483647"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let (config_digest, config_size) = write_blob(&blobs, config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = write_blob(&blobs, manifest.to_string().as_bytes())?;
    let named = |name: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": name },
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [named(PAUSE_IMAGE), named(BUSYBOX_IMAGE)],
    });
    let write = |name: &str, text: String| {
        std::fs::write(layout.join(name), text).map_err(|e| Error(format!("{name}: {e}")))
    };
    write(
        "oci-layout",
        r#"{"imageLayoutVersion":"1.0.0"}"#.to_string(),
    )?;
    write("index.json", index.to_string())?;
    let image_tar = work.join("images.tar");
    run(&[
        "tar",
        "-C",
        &layout.to_string_lossy(),
        "-cf",
        &image_tar.to_string_lossy(),
        ".",
    ])?;
    run(&[
        "ctr",
        "--address",
        &sock.to_string_lossy(),
        "--namespace",
        "k8s.io",
        "images",
        "import",
        &image_tar.to_string_lossy(),
    ])
}
