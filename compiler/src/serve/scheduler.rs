//! One replica's iteration-level scheduler, as vLLM's and SGLang's work.
//!
//! Each iteration first gives every running sequence whose prompt is in
//! the cache one decode token (growing its KV blocks; when none are free,
//! the most recently admitted sequence is preempted and will recompute),
//! then fills the rest of the token budget with prefill: chunks of
//! partially prefilled sequences first, then new sequences from the
//! waiting queue in arrival order while `max_seqs` and the KV cache allow
//! (admission reserves blocks for the whole prompt and the first token).
//! A replica has a role: both phases (colocated), prefill only (it hands a
//! sequence over when its prompt is done) or decode only. The replica is
//! plain data and two functions, `start` and `finish`; the event loop in
//! `sim.rs` owns time.

use std::collections::VecDeque;

use super::kv::Blocks;
use super::timing::{IterModel, chunk_pairs};

/// What a replica runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Both,
    Prefill,
    Decode,
}

/// A request inside a replica.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seq {
    pub req: u32,
    /// Tokens whose keys and values are in the cache.
    pub kv: u32,
    /// Tokens the prefill must bring into the cache (the prompt, or what
    /// a preempted sequence had when it lost its blocks).
    pub target: u32,
    pub generated: u32,
    pub goal: u32,
    pub prompt: u32,
    pub blocks: u32,
    /// Tokens scheduled in the running iteration (a chunk, or 1 to decode).
    pub sched: u32,
    pub decoding: bool,
}

impl Seq {
    pub fn new(req: u32, prompt: u32, goal: u32) -> Seq {
        Seq {
            req,
            kv: 0,
            target: prompt,
            generated: 0,
            goal,
            prompt,
            blocks: 0,
            sched: 0,
            decoding: false,
        }
    }
    #[inline]
    fn prefilled(&self) -> bool {
        self.kv >= self.target
    }
}

/// Scheduler limits of one replica.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub token_budget: u64,
    pub max_seqs: u64,
    pub chunked_prefill: bool,
    /// Share of a fresh prompt served from the prefix cache.
    pub prefix_hit: f64,
}

#[derive(Clone, Debug)]
pub struct Replica {
    pub role: Role,
    pub model: IterModel,
    pub limits: Limits,
    pub blocks: Blocks,
    pub waiting: VecDeque<Seq>,
    pub running: Vec<Seq>,
    /// End of the running iteration; `None` when idle.
    pub busy_until: Option<f64>,
    pub busy_time: f64,
    pub iterations: u64,
    pub batched_tokens: u64,
    pub preemptions: u64,
}

/// What an iteration finished: (request, event) pairs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Done {
    /// The first token (the prompt's prefill ended).
    First(u32),
    /// The last token.
    Complete(u32),
    /// The prompt is done on a prefill replica: hand over this sequence.
    Handoff(Seq),
}

impl Replica {
    pub fn new(role: Role, model: IterModel, limits: Limits, block: u64) -> Replica {
        Replica {
            role,
            model,
            limits,
            blocks: Blocks::new(model.kv_capacity_tokens, block),
            waiting: VecDeque::new(),
            running: Vec::new(),
            busy_until: None,
            busy_time: 0.0,
            iterations: 0,
            batched_tokens: 0,
            preemptions: 0,
        }
    }

    /// Requests this replica holds (queued or running).
    pub fn load(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    /// Whether a sequence of `tokens` in all could ever fit this cache.
    pub fn can_ever_hold(&self, tokens: u64) -> bool {
        self.blocks.for_tokens(tokens) <= self.blocks.total
    }

    /// Frees the blocks of the sequence at `v` and puts it back at the
    /// head of the queue to recompute.
    fn preempt(&mut self, v: usize) {
        let mut s = self.running.remove(v);
        self.blocks.give(s.blocks as u64);
        s.blocks = 0;
        // A decoding sequence recomputes what it had; a partial prefill
        // restarts its target.
        if s.prefilled() {
            s.target = s.kv;
        }
        s.kv = 0;
        s.sched = 0;
        s.decoding = false;
        self.waiting.push_front(s);
        self.preemptions += 1;
    }

    /// Admits waiting sequences and schedules their first chunks within
    /// `budget`; returns the prefill tokens and query-key pairs added.
    fn admit(&mut self, budget: &mut u64) -> (u64, f64) {
        let (mut p, mut pairs) = (0u64, 0.0);
        while (self.running.len() as u64) < self.limits.max_seqs
            && (*budget > 0 || self.role == Role::Decode)
        {
            let Some(mut s) = self.waiting.front().copied() else {
                break;
            };
            if s.kv == 0 && s.generated == 0 && s.target == s.prompt {
                // A fresh prompt: its cached prefix needs no compute.
                let hit = (self.limits.prefix_hit * s.prompt as f64).floor() as u32;
                s.kv = hit.min(s.prompt.saturating_sub(1));
            }
            let need = self.blocks.for_tokens(s.target as u64 + 1);
            if !self.blocks.take(need) {
                break;
            }
            self.waiting.pop_front();
            s.blocks = need as u32;
            if self.role != Role::Decode {
                let left = (s.target - s.kv) as u64;
                let c = if self.limits.chunked_prefill {
                    left.min(*budget)
                } else if left <= *budget || p == 0 {
                    left
                } else {
                    0
                };
                s.sched = c as u32;
                *budget = budget.saturating_sub(c);
                p += c;
                pairs += chunk_pairs(s.kv as f64, c as f64);
            }
            self.running.push(s);
            if s.sched == 0 && self.role != Role::Decode {
                break;
            }
        }
        (p, pairs)
    }

    /// Forms the next iteration; returns its duration, or `None` when
    /// there is nothing to run.
    pub fn start(&mut self) -> Option<f64> {
        let mut budget = self.limits.token_budget;
        let (mut d, mut kv, mut p, mut pairs) = (0u64, 0.0, 0u64, 0.0);
        if self.role == Role::Decode {
            self.admit(&mut budget);
            budget = self.limits.token_budget;
        }
        // Decode tokens first, growing blocks (preempting when full).
        let mut i = 0;
        while i < self.running.len() {
            let s = self.running[i];
            if self.role != Role::Prefill && s.prefilled() && s.generated >= 1 {
                let need = self.blocks.for_tokens(s.kv as u64 + 1);
                let grow = need.saturating_sub(s.blocks as u64);
                // The most recently admitted sequence yields its blocks,
                // this one last.
                let fits = loop {
                    if self.blocks.take(grow) {
                        break true;
                    }
                    let last = self.running.len() - 1;
                    self.preempt(last);
                    if last == i {
                        break false;
                    }
                };
                if !fits {
                    break;
                }
                let s = &mut self.running[i];
                s.blocks += grow as u32;
                s.sched = 1;
                s.decoding = true;
                d += 1;
                kv += s.kv as f64;
                budget = budget.saturating_sub(1);
            } else if !s.prefilled() && s.blocks > 0 {
                let left = (s.target - s.kv) as u64;
                let c = if self.limits.chunked_prefill {
                    left.min(budget)
                } else if left <= budget || p == 0 {
                    left
                } else {
                    0
                };
                let s = &mut self.running[i];
                s.sched = c as u32;
                s.decoding = false;
                budget = budget.saturating_sub(c);
                p += c;
                pairs += chunk_pairs(s.kv as f64, c as f64);
            }
            i += 1;
        }
        if self.role != Role::Decode {
            let (ap, apairs) = self.admit(&mut budget);
            p += ap;
            pairs += apairs;
        }
        if p + d == 0 {
            return None;
        }
        let t = self.model.time(p as f64, d as f64, kv, pairs);
        self.iterations += 1;
        self.batched_tokens += p + d;
        self.busy_time += t;
        Some(t)
    }

    /// Ends the running iteration: advances every scheduled sequence and
    /// reports first tokens, completions and handoffs into `out`.
    pub fn finish(&mut self, out: &mut Vec<Done>) {
        let role = self.role;
        let mut freed = 0u64;
        self.running.retain_mut(|s| {
            if s.sched == 0 {
                return true;
            }
            let was_decoding = s.decoding;
            s.kv += s.sched;
            s.sched = 0;
            s.decoding = false;
            if was_decoding {
                s.generated += 1;
            } else if s.prefilled() && s.generated == 0 {
                s.generated = 1;
                out.push(Done::First(s.req));
            }
            if s.generated >= s.goal && s.generated >= 1 {
                out.push(Done::Complete(s.req));
                freed += s.blocks as u64;
                return false;
            }
            if role == Role::Prefill && s.prefilled() {
                freed += s.blocks as u64;
                let mut h = *s;
                h.blocks = 0;
                out.push(Done::Handoff(h));
                return false;
            }
            true
        });
        self.blocks.give(freed);
    }
}
