//! The deploy gate: recorded matches run again under this build, each reported the same
//! or with the first output that differs (`game-server replay --check`). A build whose
//! handlers would have played yesterday's matches otherwise says so before it goes live,
//! unless the kind it changed is named as changed on purpose (`--intended KIND`).

use crate::msg::RoomInfo;
use crate::policy::Policies;
use crate::store::{MatchQuery, MatchViewer, Store};
use crate::worker::{Difference, Kinds, Verdict};
use crate::Result;
use std::time::Instant;

/// Which matches the gate runs again.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// The latest this many ended matches.
    pub matches: u32,
    /// Only matches of rooms created at or after this time (seconds since the epoch).
    pub since: Option<i64>,
    /// Rooms still on too, not only ended ones.
    pub live: bool,
    /// Kinds whose rules were changed on purpose: their differences are reported, and
    /// do not fail the gate.
    pub intended: Vec<String>,
}

/// One match, run again.
#[derive(Debug, Clone)]
pub struct MatchCheck {
    /// The match (its room's id).
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// The code version it was recorded under, if the room was pinned to one.
    pub code_version: Option<String>,
    /// How it ran.
    pub verdict: Verdict,
    /// Whether a difference is one its kind declares intended.
    pub intended: bool,
}

/// What the gate found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Each match, the latest first.
    pub matches: Vec<MatchCheck>,
    /// Entries run again in all.
    pub entries: u64,
    /// How long running them again took (reading the store not counted).
    pub rerun_time: std::time::Duration,
}

impl Report {
    /// Whether the build passes: no match differs but where intended, none unusable.
    pub fn passed(&self) -> bool {
        self.matches.iter().all(|m| match &m.verdict {
            Verdict::Same { .. } => true,
            Verdict::Differs(_) => m.intended,
            Verdict::Unusable(_) => false,
        })
    }

    /// The report as a person reads it: a line a match, the difference's details under
    /// it, and a summary line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for m in &self.matches {
            let version = m
                .code_version
                .as_deref()
                .map(|v| format!(", recorded under {v}"))
                .unwrap_or_default();
            match &m.verdict {
                Verdict::Same { entries } => out.push_str(&format!(
                    "identical  {} ({}{version}): {entries} entries\n",
                    m.id, m.kind
                )),
                Verdict::Differs(d) => {
                    let label = if m.intended { "changed  " } else { "DIFFERS  " };
                    out.push_str(&format!("{label}  {} ({}{version})\n", m.id, m.kind));
                    out.push_str(&describe(d));
                }
                Verdict::Unusable(why) => out.push_str(&format!(
                    "UNUSABLE   {} ({}{version}): {why}\n",
                    m.id, m.kind
                )),
            }
        }
        let differ = self
            .matches
            .iter()
            .filter(|m| matches!(m.verdict, Verdict::Differs(_)))
            .count();
        let rate = self.entries as f64 / self.rerun_time.as_secs_f64().max(1e-9);
        out.push_str(&format!(
            "{} matches, {} entries run again in {:.0} ms ({:.0} entries/s): {}\n",
            self.matches.len(),
            self.entries,
            self.rerun_time.as_secs_f64() * 1000.0,
            rate,
            if self.passed() {
                if differ > 0 {
                    format!("pass ({differ} differ as intended)")
                } else {
                    "pass".to_owned()
                }
            } else {
                "FAIL".to_owned()
            }
        ));
        out
    }
}

/// A difference's details, indented under its match's line.
fn describe(d: &Difference) -> String {
    let show = |o: &Option<crate::worker::RecordedOutput>| match o {
        None => "(nothing)".to_owned(),
        Some(o) => {
            let to =
                o.to.as_deref()
                    .map_or("room".to_owned(), |p| format!("to {p}"));
            format!("{to}: {}", o.m)
        }
    };
    format!(
        "    first at room seq {} (entry {}), {} sent at {}: {}\n    expected {}\n    got      {}\n",
        d.seq,
        d.entry,
        d.input.u,
        d.input.at,
        d.input.b,
        show(&d.expected),
        show(&d.got)
    )
}

/// Runs the matches `options` picks again under `kinds` and reports.
pub async fn check(
    store: &Store,
    kinds: &Kinds,
    policies: &Policies,
    options: &CheckOptions,
) -> Result<Report> {
    let query = MatchQuery {
        limit: options.matches,
        since: options.since,
        ended_only: !options.live,
        kind: None,
    };
    let operator = MatchViewer {
        operator: true,
        player: None,
    };
    let mut report = Report::default();
    for summary in store.matches(&query, &operator).await? {
        let Some((summary, segments)) = store.match_record(&summary.id, &operator).await? else {
            continue; // forgotten meanwhile
        };
        let kind = if summary.kind.is_empty() {
            policies.default_kind().to_owned()
        } else {
            summary.kind.clone()
        };
        let grace = policies.of(&kind).grace;
        let started = Instant::now();
        let verdict = kinds.rerun(
            &kind,
            RoomInfo::new(&summary.id, &summary.name),
            grace,
            &segments,
        );
        report.rerun_time += started.elapsed();
        report.entries += match &verdict {
            Verdict::Same { entries } => *entries,
            Verdict::Differs(d) => d.entry,
            Verdict::Unusable(_) => 0,
        };
        report.matches.push(MatchCheck {
            intended: options.intended.contains(&kind),
            id: summary.id,
            kind,
            code_version: summary.code_version,
            verdict,
        });
    }
    Ok(report)
}
