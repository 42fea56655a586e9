//! Putting a process's or pod's context into a bpftrace script.
//!
//! bpftrace has no way to be handed named values: its positional
//! parameters (`$1`, `$2`, ...) belong to the user (`-- ARGS...`), and a
//! probe's attach point (`uprobe:/proc/123/root/bin/app:main`) cannot hold
//! a variable at all. So the context variables are replaced in the text
//! before bpftrace sees it, as kubectl-trace does with `$container_pid`:
//!
//! - `$container_pid` becomes the process id (`4242`);
//! - `$container_cgroup` becomes the id of that process's cgroup (a
//!   number, what bpftrace's `cgroup` builtin returns and what
//!   `cgroupid("/sys/fs/cgroup/...")` would give);
//! - `$container_root` becomes `/proc/4242/root`, the container's root
//!   filesystem as the host sees it.
//!
//! A variable is replaced only as a whole word (`$container_pid2` is left
//! alone), in code and inside string literals, never inside comments, so
//! positions in bpftrace's error messages stay on the user's lines.

use crate::context::Context;
use crate::error::{Error, Result};

/// The longest script accepted: bpftrace is given it as one argument
/// (`-e`), and the kernel takes at most 128 KiB per argument.
pub const MAX_SCRIPT: usize = 64 << 10;

/// The context variables, as the script names them (without the `$`).
pub const VARIABLES: [&str; 3] = ["container_pid", "container_cgroup", "container_root"];

fn value(var: &str, ctx: &Context) -> String {
    match var {
        "container_pid" => ctx.pid.to_string(),
        "container_cgroup" => ctx.cgroup_id.to_string(),
        _ => ctx.root.display().to_string(),
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The context variable spelled at `at` (just after a `$`), if any.
fn variable_at(s: &[u8], at: usize) -> Option<&'static str> {
    VARIABLES.into_iter().find(|v| {
        s[at..].starts_with(v.as_bytes()) && !s.get(at + v.len()).copied().is_some_and(is_word)
    })
}

/// The script with the context's values in place of its variables. A
/// script that uses a variable without a context is refused, naming it.
pub fn substitute(script: &str, ctx: Option<&Context>) -> Result<String> {
    if script.len() > MAX_SCRIPT {
        return Err(Error::TooLong(script.len()));
    }
    if script.trim().is_empty() {
        return Err(Error::Empty);
    }
    #[derive(PartialEq)]
    enum In {
        Code,
        Str,
        LineComment,
        BlockComment,
    }
    let s = script.as_bytes();
    let mut out = String::with_capacity(script.len());
    let mut state = In::Code;
    // Start of the text not yet copied to `out`.
    let mut copied = 0;
    let mut i = 0;
    while i < s.len() {
        let (b, next) = (s[i], s.get(i + 1).copied());
        match state {
            In::Code if b == b'/' && next == Some(b'/') => state = In::LineComment,
            In::Code if b == b'/' && next == Some(b'*') => {
                state = In::BlockComment;
                i += 1;
            }
            In::Code if b == b'"' => state = In::Str,
            In::Str if b == b'\\' => i += 1,
            In::Str if b == b'"' => state = In::Code,
            In::LineComment if b == b'\n' => state = In::Code,
            In::BlockComment if b == b'*' && next == Some(b'/') => {
                state = In::Code;
                i += 1;
            }
            In::Code | In::Str if b == b'$' => {
                if let Some(var) = variable_at(s, i + 1) {
                    let ctx = ctx.ok_or(Error::NoContext(var))?;
                    out.push_str(&script[copied..i]);
                    out.push_str(&value(var, ctx));
                    i += 1 + var.len();
                    copied = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&script[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ctx() -> Context {
        Context {
            pid: 4242,
            root: PathBuf::from("/proc/4242/root"),
            cgroup_id: 9876,
            cgroup: "/kubepods/podx".into(),
            pod: None,
        }
    }

    #[test]
    fn variables_are_replaced_as_whole_words_in_code_and_strings() {
        let s = r#"tracepoint:syscalls:sys_enter_openat /pid == $container_pid && cgroup == $container_cgroup/ { printf("%s %d\n", "$container_root/x", $container_pid2); }
uprobe:$container_root/bin/app:main { @[$1] = count(); }"#;
        assert_eq!(
            substitute(s, Some(&ctx())).unwrap(),
            r#"tracepoint:syscalls:sys_enter_openat /pid == 4242 && cgroup == 9876/ { printf("%s %d\n", "/proc/4242/root/x", $container_pid2); }
uprobe:/proc/4242/root/bin/app:main { @[$1] = count(); }"#
        );
    }

    #[test]
    fn comments_and_escaped_quotes_are_left_alone() {
        let s = "// uses $container_pid\n/* $container_root */ BEGIN { printf(\"\\\"$container_pid\\\"\\n\"); }";
        assert_eq!(
            substitute(s, Some(&ctx())).unwrap(),
            "// uses $container_pid\n/* $container_root */ BEGIN { printf(\"\\\"4242\\\"\\n\"); }"
        );
        // In a comment it needs no context either.
        assert_eq!(
            substitute("// $container_pid\nBEGIN { exit(); }", None).unwrap(),
            "// $container_pid\nBEGIN { exit(); }"
        );
    }

    #[test]
    fn a_variable_without_a_context_is_named() {
        let e = substitute("BEGIN { print($container_cgroup); }", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the script uses $container_cgroup, which only a context gives: add --pod (with -n) or --pid"
        );
        // Scripts without variables pass unchanged, with or without one.
        let plain = "BEGIN { printf(\"$1 is %d\\n\", $1); }";
        assert_eq!(substitute(plain, None).unwrap(), plain);
    }

    #[test]
    fn empty_and_oversized_scripts_are_refused() {
        assert!(matches!(substitute(" \n", None), Err(Error::Empty)));
        let big = "x".repeat(MAX_SCRIPT + 1);
        assert!(matches!(substitute(&big, None), Err(Error::TooLong(n)) if n == MAX_SCRIPT + 1));
    }
}
