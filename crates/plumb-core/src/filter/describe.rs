//! `-v`'s account of a filter, per gadget: which parts the kernel checks
//! before a record is written and which only user space can check. The
//! network gadgets check other things in the kernel than the task gadgets
//! (their events have no task), so one gadget-agnostic sentence would be
//! wrong for one of the two kinds.

use super::Filter;
use crate::gadgets::{self, GadgetDesc};

impl Filter {
    /// Two lines: what the kernel checks, and what user space checks on
    /// top (user space always applies the whole filter again).
    pub fn describe_for(&self, desc: &GadgetDesc) -> Vec<String> {
        let kernel = if gadgets::has_task(desc) {
            self.describe_kernel()
        } else {
            gadgets::net::kernel::describe(self)
        };
        let mut user = Vec::new();
        if let Some(p) = &self.pod {
            user.push(format!("pod {p}"));
        }
        if let Some(n) = &self.namespace {
            user.push(format!("namespace {n}"));
        }
        if let Some(c) = &self.container {
            user.push(format!("container {c}"));
        }
        let flows_in_user_space_only = gadgets::has_task(desc) && gadgets::has_endpoints(desc);
        if flows_in_user_space_only {
            if !self.netns.is_empty() {
                user.push("netns".into());
            }
            if !self.ports.is_empty() {
                user.push("port".into());
            }
            if !self.addrs.is_empty() {
                user.push("addr".into());
            }
        }
        let user = if user.is_empty() {
            "nothing more (the whole filter is checked again)".to_string()
        } else {
            format!("{} (and the whole filter again)", user.join(", "))
        };
        vec![
            format!("in-kernel filter ({}): {kernel}", desc.name),
            format!("user-space filter ({}): {user}", desc.name),
        ]
    }
}

#[cfg(test)]
mod tests {
    use crate::filter::{Filter, FilterArgs};
    use crate::gadgets;

    #[test]
    fn network_gadgets_say_what_their_kernel_part_checks() {
        let f = Filter::parse(
            &FilterArgs {
                pod: Some("web".into()),
                port: vec!["80".into()],
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let drop = gadgets::find("drop").unwrap();
        let lines = f.describe_for(drop);
        assert!(lines[0].starts_with("in-kernel filter (drop): the packet's or socket's network namespace holds a process of the selected workloads"), "{lines:?}");
        assert!(lines[0].contains("either TCP/UDP port is 80"), "{lines:?}");
        assert!(!lines[0].contains("cgroups /"), "{lines:?}");
        assert_eq!(
            lines[1],
            "user-space filter (drop): pod web (and the whole filter again)"
        );
        let tcp = gadgets::find("tcp").unwrap();
        let lines = f.describe_for(tcp);
        assert_eq!(
            lines[1],
            "user-space filter (tcp): pod web, port (and the whole filter again)"
        );
    }
}
