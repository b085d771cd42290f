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
//! sequence over when its prompt is done) or decode only.
//!
//! With a batching window (recommendation inference) a replica runs
//! whole requests: an idle replica waits until its batch is full or its
//! oldest request has waited the window (`wake_at`, an event of the
//! simulator's loop), then admits in arrival order what the budget
//! takes; the prefill path does the rest, as each request's one output
//! is its first token.
//!
//! Decoding sequences all advance by one token per iteration, so their
//! state is kept relative to the replica's decode-step counter: a
//! sequence's context is its context when it started decoding plus the
//! steps since, the KV tokens read are one running sum, and the steps at
//! which a sequence completes or crosses into a new block sit in two
//! heaps. An iteration then costs its events (admissions, chunks, block
//! crossings, completions), not its batch size; this is what makes a
//! million requests a second possible. Stale heap entries (a sequence
//! preempted or done) are skipped by a per-slot generation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::kv::{Blocks, PrefixCache};
use super::timing::{IterModel, chunk_pairs};

/// What a replica runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Both,
    Prefill,
    Decode,
}

/// A request inside a replica. While it decodes, `kv` and `generated`
/// are their values at decode step `step0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seq {
    pub req: u32,
    /// Its prompt's key in a prefix cache: its conversation, or its
    /// request index.
    pub key: u32,
    /// The shared document its prompt opens with: (document, tokens).
    pub doc: Option<(u32, u32)>,
    /// Tokens whose keys and values are in the cache.
    pub kv: u32,
    /// Tokens the prefill must bring into the cache (the prompt, or what
    /// a preempted sequence had when it lost its blocks).
    pub target: u32,
    pub generated: u32,
    pub goal: u32,
    pub prompt: u32,
    pub blocks: u32,
    /// Prefill tokens scheduled in the running iteration.
    pub sched: u32,
    pub decoding: bool,
    pub step0: u64,
    /// When the scheduler first sees it (its arrival, or its transfer's
    /// end); with async scheduling an iteration formed before this time
    /// cannot admit it.
    pub ready: f64,
}

impl Seq {
    pub fn new(req: u32, prompt: u32, goal: u32) -> Seq {
        Seq {
            req,
            key: req,
            doc: None,
            kv: 0,
            target: prompt,
            generated: 0,
            goal,
            prompt,
            blocks: 0,
            sched: 0,
            decoding: false,
            step0: 0,
            ready: f64::NEG_INFINITY,
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
    /// Iteration `k + 1` is formed when iteration `k` starts (vLLM's
    /// async scheduling), so a request arriving while `k` runs waits for
    /// `k + 2`; running sequences are unaffected.
    pub async_scheduling: bool,
    /// Share of a fresh prompt served from the prefix cache.
    pub prefix_hit: f64,
    /// A batching window (recommendation inference): an idle replica
    /// holds its queue until `token_budget` items or `max_seqs` requests
    /// wait, or the oldest has waited this many seconds; a request then
    /// runs whole in one iteration and holds no cache after it (a block
    /// per item while it runs). `None`: continuous batching.
    pub window: Option<f64>,
}

/// A heap entry: (decode step, slot, slot generation).
type Due = Reverse<(u64, u32, u32)>;

#[derive(Clone, Debug)]
pub struct Replica {
    pub role: Role,
    pub model: IterModel,
    pub limits: Limits,
    pub blocks: Blocks,
    pub waiting: VecDeque<Seq>,
    /// End of the running iteration; `None` when idle.
    pub busy_until: Option<f64>,
    /// Seconds of the running (last formed) iteration that run on the
    /// engine's host process ([`IterModel::host`]), its first part.
    pub host: f64,
    /// With a batching window, when an idle replica holding requests
    /// starts its batch unless it fills first; `None` otherwise.
    pub wake_at: Option<f64>,
    /// Prompt tokens (items) of the waiting queue.
    queued: u64,
    pub busy_time: f64,
    pub iterations: u64,
    pub batched_tokens: u64,
    pub preemptions: u64,
    slots: Vec<Seq>,
    gens: Vec<u32>,
    free: Vec<u32>,
    /// Live sequences (admitted, not done).
    live: u64,
    /// Admission order (slot, generation); dead entries skipped lazily.
    order: Vec<(u32, u32)>,
    /// Slots still prefilling, in admission order.
    prefilling: Vec<u32>,
    step: u64,
    /// `step` modulo the block size (the grow bucket of this step), kept
    /// as `step` advances: no division per iteration.
    step_mod: u64,
    decoding: u64,
    /// Sum over decoding sequences of `kv - step0`: their context now is
    /// this plus `decoding x step`.
    kv_base: i64,
    done_at: BinaryHeap<Due>,
    /// Block crossings by step modulo the block size: a decoding
    /// sequence crosses into a new block every `block` steps after its
    /// first crossing (kept with the entry), so each step visits one
    /// bucket (slot, generation, first crossing).
    grow_at: Vec<Vec<(u32, u32, u64)>>,
    decoded: bool,
    /// Start and end of the last iteration (async scheduling's cutoff).
    last_start: f64,
    last_end: f64,
    /// The prompts its freed blocks hold, by request index (a server
    /// re-run on the same requests, `after`); `None`: no cache by prompt.
    pub cache: Option<PrefixCache>,
}

/// What an iteration finished.
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
            busy_until: None,
            host: 0.0,
            wake_at: None,
            queued: 0,
            busy_time: 0.0,
            iterations: 0,
            batched_tokens: 0,
            preemptions: 0,
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            live: 0,
            order: Vec::new(),
            prefilling: Vec::new(),
            step: 0,
            step_mod: 0,
            decoding: 0,
            kv_base: 0,
            done_at: BinaryHeap::new(),
            grow_at: Vec::new(),
            decoded: false,
            last_start: f64::NEG_INFINITY,
            last_end: f64::NEG_INFINITY,
            cache: None,
        }
    }

    /// The prefix-cache levels of `s`'s prompt, (key, whole blocks): its
    /// document's whole blocks (shared by every conversation opening
    /// with it), then its other whole blocks under its own key; `n` of
    /// the two are used.
    fn levels(&self, s: &Seq) -> ([(u64, u64); 2], usize) {
        let block = self.blocks.block;
        let whole = s.prompt as u64 / block;
        match s.doc {
            Some((d, tokens)) => {
                let doc = (tokens.min(s.prompt) as u64 / block).min(whole);
                (
                    [((1 << 32) | d as u64, doc), (s.key as u64, whole - doc)],
                    2,
                )
            }
            None => ([(s.key as u64, whole), (0, 0)], 1),
        }
    }

    /// Request `s` left this replica (done, handed over or preempted):
    /// its own blocks are free again, and with a prefix cache its
    /// prompt's whole blocks once no running sequence of its key holds
    /// them (they stay cached until admissions need them).
    fn leave(&mut self, s: &Seq) {
        let mut freed = s.blocks as u64;
        if self.cache.is_none() {
            self.blocks.give(freed);
            return;
        }
        let (levels, n) = self.levels(s);
        if let Some(c) = self.cache.as_mut() {
            // Its own key first: a document is used at least as recently
            // as the conversations that open with it.
            for &(key, whole) in levels[..n].iter().rev() {
                freed += c.release(key, whole);
            }
            self.blocks.give(freed);
            c.fit(self.blocks.free);
        }
    }

    /// Queues `s` behind the waiting requests.
    pub fn enqueue(&mut self, s: Seq) {
        self.queued += s.target as u64;
        self.waiting.push_back(s);
    }

    /// Requests this replica holds (queued or running).
    pub fn load(&self) -> usize {
        self.waiting.len() + self.live as usize
    }

    /// Whether it holds any request (an iteration may be formed).
    pub fn has_work(&self) -> bool {
        self.live > 0 || !self.waiting.is_empty()
    }

    fn alloc(&mut self, s: Seq) -> u32 {
        self.live += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = s;
                i
            }
            None => {
                self.slots.push(s);
                self.gens.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.order.push((slot, self.gens[slot as usize]));
        if self.order.len() > 64 && self.order.len() as u64 > 4 * self.live {
            let gens = &self.gens;
            self.order.retain(|(i, g)| gens[*i as usize] == *g);
        }
        slot
    }

    fn release(&mut self, slot: u32) {
        self.live -= 1;
        self.gens[slot as usize] = self.gens[slot as usize].wrapping_add(1);
        self.free.push(slot);
    }

    #[inline]
    fn alive(&self, slot: u32, g: u32) -> bool {
        self.gens[slot as usize] == g
    }

    /// The sequence in `slot` with `kv` and `generated` brought to now.
    fn current(&self, slot: u32) -> Seq {
        let mut s = self.slots[slot as usize];
        if s.decoding {
            let k = (self.step - s.step0) as u32;
            s.kv += k;
            s.generated += k;
            s.step0 = self.step;
        }
        s
    }

    fn start_decoding(&mut self, slot: u32) {
        let (step, g) = (self.step, self.gens[slot as usize]);
        let block = self.blocks.block;
        let s = &mut self.slots[slot as usize];
        s.decoding = true;
        s.step0 = step;
        s.sched = 0;
        self.decoding += 1;
        self.kv_base += s.kv as i64 - step as i64;
        let done = step + (s.goal.saturating_sub(s.generated)) as u64;
        let grow = step + (s.blocks as u64 * block).saturating_sub(s.kv as u64);
        self.done_at.push(Reverse((done, slot, g)));
        if self.grow_at.is_empty() {
            self.grow_at = vec![Vec::new(); block as usize];
        }
        self.grow_at[(grow % block) as usize].push((slot, g, grow));
    }

    /// Takes `slot` out of the decoding set, its state brought to now.
    fn stop_decoding(&mut self, slot: u32) -> Seq {
        let s = self.current(slot);
        let old = self.slots[slot as usize];
        self.decoding -= 1;
        self.kv_base -= old.kv as i64 - old.step0 as i64;
        let mut s2 = s;
        s2.decoding = false;
        self.slots[slot as usize] = s2;
        s2
    }

    /// The most recently admitted live sequence.
    fn last_admitted(&mut self) -> Option<u32> {
        while let Some(&(i, g)) = self.order.last() {
            if self.alive(i, g) {
                return Some(i);
            }
            self.order.pop();
        }
        None
    }

    /// Frees the blocks of `slot` and puts it back at the head of the
    /// queue to recompute what it had.
    fn preempt(&mut self, slot: u32) {
        let mut s = if self.slots[slot as usize].decoding {
            self.stop_decoding(slot)
        } else {
            self.prefilling.retain(|x| *x != slot);
            self.slots[slot as usize]
        };
        self.leave(&s);
        s.blocks = 0;
        // A decoding sequence recomputes what it had; a partial prefill
        // restarts its target.
        if s.prefilled() {
            s.target = s.kv;
        }
        s.kv = 0;
        s.sched = 0;
        self.release(slot);
        self.queued += s.target as u64;
        self.waiting.push_front(s);
        self.preemptions += 1;
    }

    /// The chunk a prefilling sequence with `left` tokens gets.
    fn chunk(&self, left: u64, budget: u64, p: u64) -> u64 {
        if self.limits.chunked_prefill {
            left.min(budget)
        } else if left <= budget || p == 0 {
            left
        } else {
            0
        }
    }

    /// Admits waiting sequences and schedules their first chunks within
    /// `budget`; returns the prefill tokens and query-key pairs added.
    fn admit(&mut self, budget: &mut u64, mut p: u64, cutoff: f64) -> (u64, f64, u64) {
        let mut pairs = 0.0;
        // Sequences given a prefill chunk (sched > 0).
        let mut chunked = 0;
        while self.live < self.limits.max_seqs && (*budget > 0 || self.role == Role::Decode) {
            let Some(mut s) = self.waiting.front().copied() else {
                break;
            };
            if s.ready > cutoff {
                break;
            }
            let fresh = s.kv == 0 && s.generated == 0 && s.target == s.prompt;
            if fresh {
                // A fresh prompt: its cached prefix needs no compute. The
                // cast truncates and saturates: for a non-negative product
                // that is its floor, and a negative one (floor at most -1)
                // gives 0 either way, so no libm `floor` call is needed.
                // A prompt this replica served before finds its whole
                // blocks, if they were not evicted.
                let mut hit = (self.limits.prefix_hit * s.prompt as f64) as u32;
                if let Some(c) = &self.cache {
                    // Each level's whole blocks computed so far, up to its
                    // own, a level only after the one before it whole.
                    let (levels, n) = self.levels(&s);
                    let mut found = 0;
                    for &(key, whole) in &levels[..n] {
                        let f = c.peek(key).min(whole);
                        found += f;
                        if f < whole {
                            break;
                        }
                    }
                    hit = hit.max((found * self.blocks.block) as u32);
                }
                s.kv = hit.min(s.prompt.saturating_sub(1));
            }
            // Blocks for the prompt and the first token (a window's
            // request runs whole: its items only). With a prefix cache
            // the prompt's whole blocks are its key's, shared with the
            // key's running sequences: only those beyond theirs are taken.
            let first = u64::from(self.limits.window.is_none());
            let need = self.blocks.for_tokens(s.target as u64 + first);
            let (levels, n) = match self.cache {
                Some(_) => self.levels(&s),
                None => ([(0, 0); 2], 0),
            };
            let whole = (s.prompt as u64 / self.blocks.block).min(need);
            let take = match &self.cache {
                Some(c) => {
                    need - whole
                        + levels[..n]
                            .iter()
                            .map(|&(key, w)| c.extra(key, w))
                            .sum::<u64>()
                }
                None => need,
            };
            if !self.blocks.take(take) {
                break;
            }
            let own = if let Some(c) = self.cache.as_mut() {
                for &(key, w) in levels[..n].iter().rev() {
                    c.admit(key, w);
                }
                if fresh {
                    c.count(s.prompt, s.kv);
                }
                c.fit(self.blocks.free);
                need - whole
            } else {
                need
            };
            self.waiting.pop_front();
            self.queued = self.queued.saturating_sub(s.target as u64);
            s.blocks = own as u32;
            if self.role == Role::Decode && s.prefilled() {
                let slot = self.alloc(s);
                self.start_decoding(slot);
                continue;
            }
            let c = if self.role == Role::Decode {
                0
            } else {
                self.chunk((s.target - s.kv) as u64, *budget, p)
            };
            s.sched = c as u32;
            chunked += u64::from(s.sched > 0);
            *budget = budget.saturating_sub(c);
            p += c;
            pairs += chunk_pairs(s.kv as f64, c as f64);
            let slot = self.alloc(s);
            self.prefilling.push(slot);
            if c == 0 && self.role != Role::Decode {
                break;
            }
        }
        (p, pairs, chunked)
    }

    /// Gives every decoding sequence whose next token crosses into a new
    /// block that block, preempting the most recently admitted sequence
    /// (itself last) while none is free.
    fn grow(&mut self) {
        if self.grow_at.is_empty() {
            return;
        }
        debug_assert_eq!(self.step_mod, self.step % self.blocks.block);
        let b = self.step_mod as usize;
        let mut bucket = std::mem::take(&mut self.grow_at[b]);
        let mut i = 0;
        while i < bucket.len() {
            let (slot, g, first) = bucket[i];
            // A sequence stops decoding only to be released (done or
            // preempted), which bumps its slot's generation: an entry that
            // is alive is decoding.
            if !self.alive(slot, g) {
                bucket.swap_remove(i);
                continue;
            }
            debug_assert!(self.slots[slot as usize].decoding);
            i += 1;
            if first > self.step {
                continue;
            }
            loop {
                if self.blocks.take(1) {
                    self.slots[slot as usize].blocks += 1;
                    break;
                }
                let Some(v) = self.last_admitted() else {
                    break;
                };
                self.preempt(v);
                if v == slot {
                    break;
                }
            }
        }
        // Sequences preempted above are dropped on the next visit.
        let added = std::mem::take(&mut self.grow_at[b]);
        bucket.extend(added);
        self.grow_at[b] = bucket;
    }

    /// Forms the iteration starting at `now`; returns its duration, or
    /// `None` when there is nothing to run. With async scheduling, an
    /// iteration that follows another without a gap was formed when that
    /// one started: it admits only what was ready by then.
    pub fn start(&mut self, now: f64) -> Option<f64> {
        if let Some(w) = self.limits.window
            && self.live == 0
        {
            // A batching window: start when the batch is full or the
            // oldest request's wait is up, else sleep until then.
            let Some(oldest) = self.waiting.front() else {
                self.wake_at = None;
                return None;
            };
            let due = oldest.ready + w;
            let full = self.queued >= self.limits.token_budget
                || self.waiting.len() as u64 >= self.limits.max_seqs;
            if !full && now < due {
                self.wake_at = Some(due);
                return None;
            }
            self.wake_at = None;
        }
        let cutoff = if self.limits.async_scheduling && self.last_end >= now {
            self.last_start
        } else {
            now
        };
        let mut budget = self.limits.token_budget;
        if self.role == Role::Decode && !self.waiting.is_empty() {
            self.admit(&mut budget, 0, cutoff);
            budget = self.limits.token_budget;
        }
        self.grow();
        let d = self.decoding;
        let kv = (self.kv_base + (d * self.step) as i64) as f64;
        budget = budget.saturating_sub(d);
        // Sequences in the iteration: the decoding ones and every one with
        // a prefill chunk scheduled (each costs the engine host work),
        // counted as the chunks are set.
        let (mut p, mut pairs, mut chunked) = (0u64, 0.0, 0u64);
        for i in 0..self.prefilling.len() {
            let slot = self.prefilling[i];
            let s = self.slots[slot as usize];
            let c = self.chunk((s.target - s.kv) as u64, budget, p);
            self.slots[slot as usize].sched = c as u32;
            chunked += u64::from(c as u32 > 0);
            budget = budget.saturating_sub(c);
            p += c;
            pairs += chunk_pairs(s.kv as f64, c as f64);
        }
        // With nothing waiting, `admit` would add nothing (pairs + 0.0 is
        // pairs: the sum starts at +0 and its terms are never negative).
        if self.role != Role::Decode && !self.waiting.is_empty() {
            let (ap, apairs, achunked) = self.admit(&mut budget, p, cutoff);
            p = ap;
            pairs += apairs;
            chunked += achunked;
        }
        if p + d == 0 {
            if cutoff < now && !self.waiting.is_empty() {
                // Nothing was formed ahead: the scheduler forms this
                // iteration now (nothing ran above, as nothing was due).
                self.last_end = f64::NEG_INFINITY;
                return self.start(now);
            }
            return None;
        }
        self.decoded = d > 0;
        let seqs = (d + chunked) as f64;
        let t = self.model.time(p as f64, d as f64, kv, pairs, seqs);
        self.host = self.model.host(seqs);
        self.iterations += 1;
        self.last_start = now;
        self.last_end = now + t;
        self.batched_tokens += p + d;
        self.busy_time += t;
        Some(t)
    }

    /// Ends the running iteration: advances every scheduled sequence and
    /// reports first tokens, completions and handoffs into `out`.
    pub fn finish(&mut self, out: &mut Vec<Done>) {
        if std::mem::take(&mut self.decoded) {
            self.step += 1;
            self.step_mod += 1;
            if self.step_mod == self.blocks.block {
                self.step_mod = 0;
            }
            while let Some(&Reverse((at, slot, g))) = self.done_at.peek() {
                if at > self.step {
                    break;
                }
                self.done_at.pop();
                if !self.alive(slot, g) || !self.slots[slot as usize].decoding {
                    continue;
                }
                let s = self.stop_decoding(slot);
                out.push(Done::Complete(s.req));
                self.leave(&s);
                self.release(slot);
            }
        }
        let mut i = 0;
        while i < self.prefilling.len() {
            let slot = self.prefilling[i];
            let s = &mut self.slots[slot as usize];
            s.kv += s.sched;
            s.sched = 0;
            if !s.prefilled() {
                i += 1;
                continue;
            }
            self.prefilling.remove(i);
            if s.generated == 0 {
                s.generated = 1;
                out.push(Done::First(s.req));
            }
            let s = *s;
            if self.cache.is_some() {
                let (levels, n) = self.levels(&s);
                if let Some(c) = self.cache.as_mut() {
                    for &(key, w) in levels[..n].iter().rev() {
                        c.computed(key, w);
                    }
                }
            }
            if s.generated >= s.goal {
                out.push(Done::Complete(s.req));
                self.leave(&s);
                self.release(slot);
            } else if self.role == Role::Prefill {
                self.leave(&s);
                let mut h = s;
                h.blocks = 0;
                out.push(Done::Handoff(h));
                self.release(slot);
            } else {
                self.start_decoding(slot);
            }
        }
    }
}
