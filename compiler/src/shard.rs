//! One `gantry study` run as a list of jobs, so it can be split over
//! processes (`gantry study --shard i/n`) and put back together
//! (`gantry merge`) into exactly the single run's result (issue 13,
//! deliverable 9; docs/SCHEMAS.md, `gantry.shard/1`).
//!
//! Shaped so that the single run and the merged one share every line
//! after the searches: [`jobs`] lists the run's expensive units in a
//! fixed order (a weighted study's (system, workload) cells, a fleet
//! study's (demand, system) pools, each with the cell's sensitivity when
//! asked, which reuses the cell's own search as its base), [`run`]
//! evaluates any subset of them, and [`assemble`] turns the complete
//! list of results into the studies' answers by arithmetic only. A
//! single run is [`run`] over every job; a shard is [`run`] over the jobs
//! `k` with `k % n == i` (round robin, so each shard gets a share of
//! every study and workload); a merge reads the shards' results back
//! ([`Partial`], serde) and calls the same [`assemble`]. The results are
//! the library's own types (`Estimate`, `Pool`, `Sensitivity`) with
//! serde derives; `serde_json`'s `float_roundtrip` makes every figure
//! read back the same bits, and [`Partial::of`] checks that round trip
//! before a shard writes anything, so the merged output is the same bytes.
//!
//! A shard file is untrusted input: [`parse`] and [`collect`] turn a
//! malformed, mismatched, missing or duplicated shard into a [`Bad`]
//! (`C033`), never a panic. The [`fingerprint`] of the studies (every
//! figure the searches read) ties shards to the source they ran on.

use std::fmt::Write as _;
use std::hash::Hasher as _;

use gantry_lang::program::Study;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cost::Estimate;
use crate::fleet::{self, Pool};
use crate::sensitivity::{self, Sensitivity};
use crate::study::Row;

/// The version tag of a shard's partial JSON.
pub const SCHEMA: &str = "gantry.shard/1";

/// The most shards one run may be split into (`--shard I/N` and a shard
/// file's `shards`): 2^20, far beyond any job array, and small enough
/// that a merge's bookkeeping of N shards stays cheap. A shard file is
/// untrusted input, so a larger count is refused (`C033`), not allocated.
pub const MAX_SHARDS: usize = 1 << 20;

/// The largest shard file `gantry merge` reads (1 GiB): a shard of a
/// study's largest sweep is a few hundred MB; a file passed by mistake (a
/// checkpoint, `/dev/zero`) was read whole until memory ran out.
pub const MAX_SHARD_BYTES: u64 = 1 << 30;

/// How many missing shards a `C033` message names before it counts the
/// rest.
const MISSING_NAMED: usize = 10;

/// One unit of work of a run. Indices are into the run's study list and
/// that study's `systems`, `workloads` and `demand`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// A weighted study's cell, and its sensitivity if asked.
    Weighted {
        study: usize,
        system: usize,
        workload: usize,
        sensitivity: bool,
    },
    /// A fleet study's pool of one demand on one system, and the
    /// sensitivity of workload `sensitivity` on that system (the
    /// demand's workload, for its first demand only).
    Fleet {
        study: usize,
        demand: usize,
        system: usize,
        sensitivity: Option<usize>,
    },
    /// The sensitivity of a fleet study's workload that no demand names.
    Sensitivity {
        study: usize,
        system: usize,
        workload: usize,
    },
}

impl Job {
    /// The searches the job runs (what the progress bar counts).
    pub fn searches(&self) -> u64 {
        let p = sensitivity::PERTURBED_SEARCHES;
        match *self {
            Job::Weighted { sensitivity, .. } => 1 + if sensitivity { p } else { 0 },
            Job::Fleet { sensitivity, .. } => 1 + sensitivity.map_or(0, |_| p),
            Job::Sensitivity { .. } => 1 + p,
        }
    }
}

/// Every job of a run over `studies` (in their order), `sensitivity`
/// as `--sensitivity`. A fleet study without a site has none (it has no
/// answer either).
pub fn jobs(studies: &[&Study], sensitivity: bool) -> Vec<Job> {
    let mut v = Vec::new();
    for (i, st) in studies.iter().enumerate() {
        let (systems, workloads) = (st.systems.len(), st.workloads.len());
        if st.demand.is_empty() {
            for system in 0..systems {
                for workload in 0..workloads {
                    v.push(Job::Weighted {
                        study: i,
                        system,
                        workload,
                        sensitivity,
                    });
                }
            }
            continue;
        }
        if st.site.is_none() {
            continue;
        }
        let index = |name: &str| st.workloads.iter().position(|(w, _)| w.name == name);
        // Each workload's sensitivity rides on its first demand's pools.
        let first = |w: usize| st.demand.iter().position(|d| index(&d.workload) == Some(w));
        for (demand, d) in st.demand.iter().enumerate() {
            let carried = index(&d.workload).filter(|&w| sensitivity && first(w) == Some(demand));
            for system in 0..systems {
                v.push(Job::Fleet {
                    study: i,
                    demand,
                    system,
                    sensitivity: carried,
                });
            }
        }
        if sensitivity {
            for system in 0..systems {
                for workload in (0..workloads).filter(|&w| first(w).is_none()) {
                    v.push(Job::Sensitivity {
                        study: i,
                        system,
                        workload,
                    });
                }
            }
        }
    }
    v
}

/// What one job produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    /// The cell (none for [`Job::Sensitivity`]).
    pub cell: Option<Cell>,
    /// The cell's sensitivity, when the job carried one.
    pub sensitivity: Option<Result<Sensitivity, String>>,
}

/// A cell's result: a weighted cell's best plan, or a fleet pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    Weighted(Box<Result<Estimate, String>>),
    Fleet(Box<Result<Pool, String>>),
}

/// Runs one job; `tick` is called once per search.
pub fn run_job(studies: &[&Study], job: Job, tick: &(dyn Fn() + Sync)) -> Done {
    match job {
        Job::Weighted {
            study,
            system,
            workload,
            sensitivity,
        } => {
            let (st, sys) = (studies[study], &studies[study].systems[system]);
            let w = &st.workloads[workload].0;
            let best = crate::study::search_cell(st, sys, w);
            tick();
            let sens = sensitivity
                .then(|| sensitivity::around(st, sys, w, sensitivity::base_of(&best), tick));
            Done {
                cell: Some(Cell::Weighted(Box::new(best))),
                sensitivity: sens,
            }
        }
        Job::Fleet {
            study,
            demand,
            system,
            sensitivity,
        } => {
            let (st, sys) = (studies[study], &studies[study].systems[system]);
            let d = &st.demand[demand];
            let Some(site) = &st.site else {
                return Done {
                    cell: Some(Cell::Fleet(Box::new(Err("the study has no site".into())))),
                    sensitivity: None,
                };
            };
            match sensitivity {
                Some(wi) => {
                    let w = &st.workloads[wi].0;
                    let first = fleet::search(st, sys, w);
                    let base = first
                        .as_ref()
                        .map(|(_, e)| e.metric("throughput").unwrap_or(0.0))
                        .map_err(Clone::clone);
                    let pool = fleet::size_from(st, site, d, w, sys, Some(first));
                    tick();
                    Done {
                        cell: Some(Cell::Fleet(Box::new(pool))),
                        sensitivity: Some(sensitivity::around(st, sys, w, base, tick)),
                    }
                }
                None => {
                    let pool = fleet::pool(st, site, d, sys);
                    tick();
                    Done {
                        cell: Some(Cell::Fleet(Box::new(pool))),
                        sensitivity: None,
                    }
                }
            }
        }
        Job::Sensitivity {
            study,
            system,
            workload,
        } => {
            let st = studies[study];
            Done {
                cell: None,
                sensitivity: Some(sensitivity::of(
                    st,
                    &st.systems[system],
                    &st.workloads[workload].0,
                    tick,
                )),
            }
        }
    }
}

/// Runs the jobs `k` for which `mine(k)` holds, on the rayon pool,
/// collected in job order (so the result does not depend on the thread
/// count): `(k, result)`.
pub fn run(
    studies: &[&Study],
    jobs: &[Job],
    mine: &(dyn Fn(usize) -> bool + Sync),
    tick: &(dyn Fn() + Sync),
) -> Vec<(usize, Done)> {
    jobs.par_iter()
        .enumerate()
        .filter(|(k, _)| mine(*k))
        .map(|(k, &j)| (k, run_job(studies, j, tick)))
        .collect()
}

/// What one study produced.
pub enum Studied {
    Weighted(Vec<Row>),
    Fleet(Box<fleet::Answer>),
}

/// One study's result: its answer (or the demand no fleet meets, `C025`)
/// and, with `--sensitivity`, its sensitivity table.
pub struct Answered<'a> {
    pub study: &'a Study,
    pub outcome: Result<Studied, fleet::Unmet>,
    pub sensitivity: Option<sensitivity::Table>,
}

/// The studies' answers from every job's result (`done[k]` is job `k`'s),
/// by arithmetic only. `Err` names the first job whose result is of the
/// wrong kind (a shard of another run).
pub fn assemble<'a>(
    studies: &[&'a Study],
    sensitivity: bool,
    jobs: &[Job],
    done: Vec<Done>,
) -> Result<Vec<Answered<'a>>, String> {
    type Slot<T> = Vec<Vec<Option<T>>>;
    fn grid<T>(a: usize, b: usize) -> Slot<T> {
        (0..a).map(|_| (0..b).map(|_| None).collect()).collect()
    }
    let mut cells: Vec<Slot<Result<Estimate, String>>> = Vec::new();
    let mut pools: Vec<Slot<Result<Pool, String>>> = Vec::new();
    let mut sens: Vec<Slot<Result<Sensitivity, String>>> = Vec::new();
    for st in studies {
        let (s, w) = (st.systems.len(), st.workloads.len());
        cells.push(if st.demand.is_empty() {
            grid(s, w)
        } else {
            Vec::new()
        });
        pools.push(grid(st.demand.len(), s));
        sens.push(grid(s, w));
    }
    let wrong = |k: usize| format!("job {k}'s result is not of the kind that job computes");
    if done.len() != jobs.len() {
        return Err(format!(
            "{} results for a run of {} jobs",
            done.len(),
            jobs.len()
        ));
    }
    for (k, (job, d)) in jobs.iter().zip(done).enumerate() {
        let (study, system, workload) = match *job {
            Job::Weighted {
                study,
                system,
                workload,
                sensitivity,
            } => {
                let Some(Cell::Weighted(e)) = d.cell else {
                    return Err(wrong(k));
                };
                if d.sensitivity.is_some() != sensitivity {
                    return Err(wrong(k));
                }
                cells[study][system][workload] = Some(*e);
                (study, system, Some(workload))
            }
            Job::Fleet {
                study,
                demand,
                system,
                sensitivity,
            } => {
                let Some(Cell::Fleet(p)) = d.cell else {
                    return Err(wrong(k));
                };
                if d.sensitivity.is_some() != sensitivity.is_some() {
                    return Err(wrong(k));
                }
                let unit = studies[study].demand[demand].kind.unit();
                if p.as_ref().as_ref().is_ok_and(|p| p.unit != unit) {
                    return Err(wrong(k));
                }
                pools[study][demand][system] = Some(*p);
                (study, system, sensitivity)
            }
            Job::Sensitivity {
                study,
                system,
                workload,
            } => {
                if d.cell.is_some() || d.sensitivity.is_none() {
                    return Err(wrong(k));
                }
                (study, system, Some(workload))
            }
        };
        if let (Some(w), Some(s)) = (workload, d.sensitivity) {
            sens[study][system][w] = Some(s);
        }
    }
    let missing = || "a job's result is missing".to_string();
    let full = |g: Slot<Result<Sensitivity, String>>| -> Option<sensitivity::Table> {
        g.into_iter()
            .map(|r| r.into_iter().collect::<Option<Vec<_>>>())
            .collect()
    };
    let mut out = Vec::new();
    for (i, st) in studies.iter().enumerate() {
        let outcome = if st.demand.is_empty() {
            let searched = std::mem::take(&mut cells[i])
                .into_iter()
                .map(|r| r.into_iter().collect::<Option<Vec<_>>>())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(missing)?;
            Ok(Studied::Weighted(crate::study::rows(st, searched)))
        } else {
            let Some(site) = &st.site else {
                continue;
            };
            let table = std::mem::take(&mut pools[i])
                .into_iter()
                .map(|r| r.into_iter().collect::<Option<Vec<_>>>())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(missing)?;
            fleet::assemble(&st.demand, site, table).map(|a| Studied::Fleet(Box::new(a)))
        };
        let table = if sensitivity {
            Some(full(std::mem::take(&mut sens[i])).ok_or_else(missing)?)
        } else {
            None
        };
        out.push(Answered {
            study: st,
            outcome,
            sensitivity: table,
        });
    }
    Ok(out)
}

/// A hash of everything the run's searches read: each study as checked
/// (systems, workloads, search space, demand, site; `Debug` prints every
/// field, floats exactly) and the `--sensitivity` flag. FNV-1a, 64 bits,
/// in hex: stable across processes and machines.
pub fn fingerprint(studies: &[&Study], sensitivity: bool) -> String {
    struct Fnv(fnv::FnvHasher);
    impl std::fmt::Write for Fnv {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.write(s.as_bytes());
            Ok(())
        }
    }
    let mut h = Fnv(fnv::FnvHasher::default());
    for st in studies {
        let _ = writeln!(h, "{st:?}");
    }
    let _ = write!(h, "sensitivity={sensitivity}");
    format!("{:016x}", h.0.finish())
}

/// A shard's partial result (`gantry.shard/1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    pub schema: String,
    /// The `.gantry` file the shard ran, as given on its command line,
    /// and its `--lib` folders: what `gantry merge` checks again.
    pub source: String,
    pub lib: Vec<String>,
    /// `--study`, if one was named.
    pub study: Option<String>,
    pub sensitivity: bool,
    /// [`fingerprint`] of the studies the shard ran.
    pub fingerprint: String,
    /// This shard (from 0) and how many there are.
    pub shard: usize,
    pub shards: usize,
    /// Jobs in the whole run.
    pub jobs: usize,
    /// This shard's jobs, in order.
    pub results: Vec<Slot>,
}

/// One job's result in a [`Partial`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub job: usize,
    pub done: Done,
}

/// The run a shard belongs to: what every shard of it agrees on.
#[derive(Clone, Debug, PartialEq)]
pub struct RunId {
    pub source: String,
    pub lib: Vec<String>,
    pub study: Option<String>,
    pub sensitivity: bool,
    pub fingerprint: String,
}

impl Partial {
    /// The partial JSON of shard `shard` of `shards`, or why it cannot
    /// be written exactly (a figure that would not read back the same).
    pub fn of(
        run: &RunId,
        shard: usize,
        shards: usize,
        jobs: usize,
        results: Vec<(usize, Done)>,
    ) -> Result<String, String> {
        let p = Partial {
            schema: SCHEMA.into(),
            source: run.source.clone(),
            lib: run.lib.clone(),
            study: run.study.clone(),
            sensitivity: run.sensitivity,
            fingerprint: run.fingerprint.clone(),
            shard,
            shards,
            jobs,
            results: results
                .into_iter()
                .map(|(job, done)| Slot { job, done })
                .collect(),
        };
        let text = serde_json::to_string(&p).map_err(|e| e.to_string())?;
        // JSON has no infinity or NaN (serde_json writes `null`): a
        // result that does not read back equal would merge differently.
        match serde_json::from_str::<Partial>(&text) {
            Ok(back) if back == p => Ok(text + "\n"),
            Ok(back) => {
                let k = p
                    .results
                    .iter()
                    .zip(&back.results)
                    .find(|(a, b)| a != b)
                    .map_or(0, |(a, _)| a.job);
                Err(format!(
                    "job {k}'s result does not read back the same from JSON (a figure that is not finite)"
                ))
            }
            Err(e) => Err(format!(
                "the shard's JSON does not read back (a figure that is not finite?): {e}"
            )),
        }
    }

    pub fn run(&self) -> RunId {
        RunId {
            source: self.source.clone(),
            lib: self.lib.clone(),
            study: self.study.clone(),
            sensitivity: self.sensitivity,
            fingerprint: self.fingerprint.clone(),
        }
    }
}

/// Why shards do not merge (`C033`): the file, and where in it when a
/// parser can say.
#[derive(Clone, Debug, PartialEq)]
pub struct Bad {
    pub file: String,
    pub message: String,
    pub help: String,
}

fn bad(file: &str, message: String, help: &str) -> Bad {
    Bad {
        file: file.into(),
        message,
        help: help.into(),
    }
}

/// Reads one shard file's text.
pub fn parse(file: &str, text: &str) -> Result<Partial, Bad> {
    // The schema first, so another document is named as such.
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        bad(
            &format!("{file}:{}:{}", e.line(), e.column()),
            format!("not a shard's JSON: {e}"),
            "pass the files `gantry study --shard` wrote, whole",
        )
    })?;
    match v.get("schema").and_then(|s| s.as_str()) {
        Some(SCHEMA) => {}
        other => {
            return Err(bad(
                file,
                format!(
                    "the document's schema is {}, not `{SCHEMA}`",
                    other.map_or("missing".into(), |s| format!("`{s}`"))
                ),
                "pass the files `gantry study --shard` wrote (not a merged `gantry.study/1` document)",
            ));
        }
    }
    let p: Partial = serde_json::from_value(v).map_err(|e| {
        bad(
            file,
            format!("a malformed `{SCHEMA}` document: {e}"),
            "pass the files `gantry study --shard` wrote, unedited, by the same Gantry version",
        )
    })?;
    if p.shards == 0 || p.shard >= p.shards {
        return Err(bad(
            file,
            format!("shard {} of {} is not a shard", p.shard, p.shards),
            "shards are numbered from 0 to n-1",
        ));
    }
    if p.shards > MAX_SHARDS {
        return Err(bad(
            file,
            format!(
                "a run of {} shards: at most {MAX_SHARDS} are allowed",
                p.shards
            ),
            "pass the files `gantry study --shard` wrote, unedited, by the same Gantry version",
        ));
    }
    Ok(p)
}

/// Checks that `parts` (file name, partial) are every shard of one run,
/// each once: the same run, the same shard count, no shard twice and
/// none missing.
pub fn check_set(parts: &[(String, Partial)]) -> Result<(), Bad> {
    let Some((first_file, first)) = parts.first() else {
        return Err(bad(
            "",
            "no shard files given".into(),
            "pass every file the shards wrote",
        ));
    };
    let run = first.run();
    // Keyed by shard number: the count comes from the (untrusted) file,
    // so nothing is sized by it.
    let mut seen: std::collections::BTreeMap<usize, &str> = std::collections::BTreeMap::new();
    for (file, p) in parts {
        let other = p.run();
        let field = if other.source != run.source {
            Some("source file")
        } else if other.lib != run.lib {
            Some("`--lib` folders")
        } else if other.study != run.study {
            Some("`--study`")
        } else if other.sensitivity != run.sensitivity {
            Some("`--sensitivity`")
        } else if other.fingerprint != run.fingerprint {
            Some("studies (their fingerprint)")
        } else if p.shards != first.shards {
            Some("shard count")
        } else if p.jobs != first.jobs {
            Some("job count")
        } else {
            None
        };
        if let Some(field) = field {
            return Err(bad(
                file,
                format!("a shard of another run than `{first_file}`: its {field} differs"),
                "merge the shards of one `gantry study --shard i/n` run, all with the same file and flags",
            ));
        }
        if let Some(prev) = seen.get(&p.shard) {
            return Err(bad(
                file,
                format!(
                    "shard {}/{} is given twice (also `{prev}`)",
                    p.shard, p.shards
                ),
                "pass each shard's file once",
            ));
        }
        seen.insert(p.shard, file);
    }
    // Every shard seen is distinct and below the count, so this many are
    // missing; the first few are named.
    let count = first.shards.saturating_sub(seen.len());
    if count > 0 {
        let mut named: Vec<String> = (0..first.shards)
            .filter(|i| !seen.contains_key(i))
            .take(MISSING_NAMED)
            .map(|i| i.to_string())
            .collect();
        if count > named.len() {
            named.push(format!("and {} more", count - named.len()));
        }
        return Err(bad(
            first_file,
            format!(
                "shard{} {} of {} missing",
                if count == 1 { "" } else { "s" },
                named.join(", "),
                first.shards
            ),
            "rerun the missing shards (`--shard i/n`) and pass every file",
        ));
    }
    Ok(())
}

/// Every job's result from a checked set of shards (`check_set`), in
/// job order: each shard must hold exactly its own jobs (`k % n == i`).
pub fn collect(parts: Vec<(String, Partial)>) -> Result<Vec<Done>, Bad> {
    let jobs = parts.first().map_or(0, |p| p.1.jobs);
    let mut done: Vec<Option<Done>> = (0..jobs).map(|_| None).collect();
    for (file, p) in parts {
        let mut expected = (p.shard..jobs).step_by(p.shards);
        for slot in p.results {
            if expected.next() != Some(slot.job) {
                return Err(bad(
                    &file,
                    format!(
                        "job {} is not the next job of shard {}/{} (out of order, repeated or another shard's)",
                        slot.job, p.shard, p.shards
                    ),
                    "pass the files `gantry study --shard` wrote, unedited",
                ));
            }
            done[slot.job] = Some(slot.done);
        }
        if let Some(k) = expected.next() {
            return Err(bad(
                &file,
                format!("shard {}/{} lacks the result of job {k}", p.shard, p.shards),
                "rerun that shard: its file is incomplete",
            ));
        }
    }
    // Every job is some shard's, and each shard had all of its own.
    Ok(done.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests;
