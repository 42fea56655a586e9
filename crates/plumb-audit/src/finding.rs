//! What an audit reports: findings, each with a severity, a one-line title,
//! the evidence and what to do about it.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        })
    }
}

/// One thing the audit found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Which check: netfilter, conntrack, bpf-maps, datapath, interfaces.
    pub check: &'static str,
    pub title: String,
    pub evidence: Vec<String>,
    pub advice: String,
    /// The network namespace it is about, and who owns it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Structured facts for machines (counts, names, ids).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Finding {
    pub fn new(severity: Severity, check: &'static str, title: impl Into<String>) -> Self {
        Finding {
            severity,
            check,
            title: title.into(),
            evidence: Vec::new(),
            advice: String::new(),
            netns: None,
            data: serde_json::Value::Null,
        }
    }

    pub fn evidence(mut self, e: impl Into<String>) -> Self {
        self.evidence.push(e.into());
        self
    }

    pub fn advice(mut self, a: impl Into<String>) -> Self {
        self.advice = a.into();
        self
    }

    pub fn data(mut self, d: serde_json::Value) -> Self {
        self.data = d;
        self
    }
}

/// Something the audit could not look at, and why (a missing tool, a
/// module that is not loaded): reported, never silently taken as "none".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Skip {
    pub what: String,
    pub why: String,
}

impl Skip {
    pub fn new(what: impl Into<String>, why: impl Into<String>) -> Self {
        Skip {
            what: what.into(),
            why: why.into(),
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}, {}", self.what, self.why)
    }
}
