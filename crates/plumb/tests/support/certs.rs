//! Certificates for the TLS tests, made with the `openssl` CLI in a
//! directory of the test's: P-256 keys, valid for a day, each `NAME.crt`
//! with its `NAME.key`.

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (in .ci/apt-packages)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `name`.crt/.key: self-signed when `ca` is None, else signed by it.
fn cert(dir: &Path, name: &str, ca: Option<&str>, exts: &[&str]) {
    let (crt, key, subj) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("/CN={name}"),
    );
    let mut args: Vec<String> = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(ca) = ca {
        args.extend([
            "-CA".into(),
            format!("{ca}.crt"),
            "-CAkey".into(),
            format!("{ca}.key"),
        ]);
    }
    args.extend([
        "-subj".into(),
        subj,
        "-keyout".into(),
        key,
        "-out".into(),
        crt,
    ]);
    for e in exts {
        args.extend(["-addext".into(), e.to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(dir, &refs);
}

/// A self-signed CA `name`.crt/.key.
pub fn make_ca(dir: &Path, name: &str) {
    cert(
        dir,
        name,
        None,
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf certificate `name`.crt/.key signed by the CA `ca`, for the
/// subject alternative name `san` (`IP:...`, `DNS:...`) and the extended
/// key usage `usage` (`serverAuth`, `clientAuth`).
pub fn make_leaf(dir: &Path, name: &str, ca: &str, san: &str, usage: &str) {
    let (san, usage) = (
        format!("subjectAltName={san}"),
        format!("extendedKeyUsage={usage}"),
    );
    cert(
        dir,
        name,
        Some(ca),
        &["basicConstraints=critical,CA:FALSE", &san, &usage],
    );
}
