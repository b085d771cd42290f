//! Drawing the request stream: arrival times and token counts.
//!
//! The generator is xoshiro256** seeded through splitmix64, written here
//! (a dozen lines) so that a seed means the same requests on every
//! platform and version, with no dependency whose stream could change.
//! Requests are drawn once, before the simulation, into plain arrays: the
//! planner replays the same stream on every configuration it compares, so
//! differences between configurations are never sampling noise.

use gantry_lang::program::{Arrivals, Conversations, Lengths, Serve};
use gantry_lang::trace::TraceRow;

/// xoshiro256** (Blackman and Vigna), seeded by splitmix64.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in (0, 1]: never 0, so logarithms stay finite.
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Gamma with shape `k` and scale 1 (Marsaglia and Tsang 2000; shapes
    /// below 1 through `G(k + 1) U^(1/k)`).
    pub fn gamma(&mut self, k: f64) -> f64 {
        // Outside the shapes a checked `cv` gives (1e-4 to 1e4), no draw:
        // a vanishing shape is 0, an unbounded one its mean (never a loop
        // whose test is NaN).
        if k.is_nan() || k <= 1e-12 {
            return 0.0;
        }
        if k > 1e12 {
            return k;
        }
        if k < 1.0 {
            let u = self.unit();
            return self.gamma(k + 1.0) * u.powf(1.0 / k);
        }
        let d = k - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.unit();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
}

/// One request: when it arrives, its prompt and how many tokens it
/// generates, and its prompt's keys in a prefix cache: its conversation
/// in a multi-turn dataset, whose turns' prompts extend one another (else
/// its own index, as request `i` of every run is the same prompt), and
/// the shared document its prompt opens with, if any.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    pub arrival: f64,
    pub prompt: u32,
    pub generate: u32,
    pub key: u32,
    /// The opening document: (document, its tokens); `None`: none.
    pub doc: Option<(u32, u32)>,
}

/// The largest token count a request may have (the language's bound).
const MAX_TOKENS: f64 = gantry_lang::trace::MAX_TOKENS as f64;

/// Request `i`'s length: drawn from `rng`, or row `i` of a replayed file
/// (from its first row again past its last), which draws nothing.
fn draw_length(l: &Lengths, i: usize, rng: &mut Rng) -> u32 {
    let x = match l {
        Lengths::Fixed(n) => *n as f64,
        Lengths::Uniform { lo, hi } => {
            let span = hi.saturating_sub(*lo) + 1;
            (*lo + rng.next_u64() % span) as f64
        }
        Lengths::LogNormal { mean, spread } => {
            // E[exp(mu + s Z)] = exp(mu + s^2 / 2) = mean.
            let mu = mean.ln() - spread * spread / 2.0;
            (mu + spread * rng.normal()).exp().round()
        }
        Lengths::Trace => 1.0,
        Lengths::Replay { rows, .. } => rows.get(i % rows.len().max(1)).map_or(1.0, |&n| n as f64),
    };
    x.clamp(1.0, MAX_TOKENS) as u32
}

/// `n` requests of `s` at `rate` requests per second (the workload's own
/// rate when `None`), from the trace's rows when its arrivals are a
/// trace (read by the checker).
/// A closed loop's requests all arrive at 0 here: the simulator writes
/// their times as clients are released ([`super::sim::simulate_closed`]);
/// a burst's all arrive at 0 and stay there.
/// Deterministic for the workload's seed.
pub fn requests(s: &Serve, rate: Option<f64>) -> Vec<Request> {
    let mut rng = Rng::new(s.seed);
    let mut out = Vec::with_capacity(s.requests.min(1 << 24) as usize);
    if let Arrivals::Trace { rows, .. } = &s.arrivals {
        let trace: &[TraceRow] = rows;
        // Replayed in order; a rate scales time (rate / the trace's own).
        let own = trace_rate(trace);
        let k = match (rate, own) {
            (Some(r), Some(o)) if r > 0.0 => o / r,
            _ => 1.0,
        };
        let t0 = trace.first().map_or(0.0, |r| r.arrival);
        for (i, r) in trace.iter().take(s.requests as usize).enumerate() {
            out.push(Request {
                key: i as u32,
                doc: None,
                arrival: (r.arrival - t0) * k,
                prompt: if matches!(s.input, Lengths::Trace) {
                    r.prompt
                } else {
                    draw_length(&s.input, i, &mut rng)
                },
                generate: if matches!(s.output, Lengths::Trace) {
                    r.generate
                } else {
                    draw_length(&s.output, i, &mut rng)
                },
            });
        }
        return out;
    }
    let (rate, cv) = match s.arrivals {
        Arrivals::Poisson { rate: r } => (rate.unwrap_or(r), 1.0),
        Arrivals::Gamma { rate: r, cv } => (rate.unwrap_or(r), cv),
        Arrivals::Trace { .. } | Arrivals::Closed { .. } | Arrivals::Burst => (1.0, 1.0),
    };
    let closed = s.arrivals.clients(s.requests).is_some();
    let rate = if rate > 0.0 && rate.is_finite() {
        rate
    } else {
        1.0
    };
    // Gamma gaps of mean 1/rate and coefficient of variation cv: shape
    // 1/cv^2, scale cv^2/rate (cv = 1 is the exponential).
    let shape = 1.0 / (cv * cv);
    let mut t = 0.0;
    let mut turns = s
        .conversations
        .as_ref()
        .map(|c| Dataset::new(c, &s.input, &s.output, &mut rng));
    for i in 0..s.requests {
        if i > 0 && !closed {
            let gap = if cv == 1.0 {
                -rng.unit().ln() / rate
            } else if shape.is_nan() || shape > 1e12 {
                // Regular beyond any draw (the checker keeps cv >= 0.01).
                1.0 / rate
            } else {
                rng.gamma(shape) / (shape * rate)
            };
            t += gap;
        }
        let (prompt, generate, key, doc) = match turns.as_mut() {
            Some(d) => d.next(&mut rng),
            None => (
                draw_length(&s.input, i as usize, &mut rng),
                draw_length(&s.output, i as usize, &mut rng),
                i as u32,
                None,
            ),
        };
        out.push(Request {
            arrival: t,
            prompt,
            generate,
            key,
            doc,
        });
    }
    out
}

/// A multi-turn dataset: each conversation's opening document, its
/// turns' messages and answers (drawn from the workload's `document`,
/// `prompt` and `generate` lengths), and its entries `(c, k)` in a seeded
/// shuffle, as a benchmark client samples a dataset file: without
/// replacement, then again from a fresh shuffle once all were sent.
/// A document: (id, tokens).
type Doc = Option<(u32, u32)>;

struct Dataset {
    /// Per conversation: its document, and per turn the prompt
    /// (document, earlier messages and answers, its message) and the
    /// answer.
    convs: Vec<(Doc, Vec<(u32, u32)>)>,
    order: Vec<(u32, u32)>,
    next: usize,
}

impl Dataset {
    fn new(c: &Conversations, message: &Lengths, answer: &Lengths, rng: &mut Rng) -> Dataset {
        let docs: Vec<u32> = match &c.documents {
            Some((m, l)) => (0..*m as usize).map(|i| draw_length(l, i, rng)).collect(),
            None => Vec::new(),
        };
        let convs = (0..c.count)
            .map(|i| {
                let doc = (!docs.is_empty()).then(|| {
                    let d = (rng.next_u64() % docs.len() as u64) as u32;
                    (d, docs[d as usize])
                });
                let mut history = doc.map_or(0u64, |d| d.1 as u64);
                let turns = (0..c.turns)
                    .map(|k| {
                        let entry = (i * c.turns + k) as usize;
                        let m = draw_length(message, entry, rng) as u64;
                        let a = draw_length(answer, entry, rng);
                        let prompt = (history + m).min(MAX_TOKENS as u64) as u32;
                        history += m + a as u64;
                        (prompt, a)
                    })
                    .collect();
                (doc, turns)
            })
            .collect();
        let order = (0..c.count as u32)
            .flat_map(|i| (0..c.turns as u32).map(move |k| (i, k)))
            .collect();
        let mut d = Dataset {
            convs,
            order,
            next: 0,
        };
        d.shuffle(rng);
        d
    }

    /// Fisher-Yates.
    fn shuffle(&mut self, rng: &mut Rng) {
        for i in (1..self.order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
        self.next = 0;
    }

    /// The next entry: its prompt, answer, conversation and document.
    fn next(&mut self, rng: &mut Rng) -> (u32, u32, u32, Doc) {
        if self.next == self.order.len() {
            self.shuffle(rng);
        }
        let (c, k) = self.order[self.next];
        self.next += 1;
        let (doc, turns) = &self.convs[c as usize];
        let (prompt, answer) = turns[k as usize];
        (prompt, answer, c, *doc)
    }
}

/// The mean arrival rate of a trace (requests per second), if it spans time.
pub fn trace_rate(rows: &[TraceRow]) -> Option<f64> {
    let (a, b) = (rows.first()?, rows.last()?);
    let span = b.arrival - a.arrival;
    (rows.len() > 1 && span > 0.0).then(|| (rows.len() - 1) as f64 / span)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes a checked `cv` cannot give return at once (an unbounded
    /// one once looped forever on a NaN test): no draw at the mean's
    /// side, and the checked extremes (cv 0.01 and 100) still draw.
    #[test]
    fn gamma_returns_for_any_shape() {
        let mut r = Rng::new(5);
        assert_eq!(r.gamma(f64::INFINITY), f64::INFINITY);
        assert_eq!(r.gamma(1e300), 1e300);
        assert_eq!(r.gamma(f64::NAN), 0.0);
        assert_eq!(r.gamma(0.0), 0.0);
        let n = 20_000;
        let big: f64 = (0..n).map(|_| r.gamma(1e4)).sum::<f64>() / n as f64;
        assert!((big / 1e4 - 1.0).abs() < 0.01, "{big}");
        assert!((0..100).all(|_| r.gamma(1e-4).is_finite()));
    }

    #[test]
    fn same_seed_same_stream_and_moments() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let n = 200_000;
        let mut r = Rng::new(3);
        let g: f64 = (0..n).map(|_| r.gamma(0.25)).sum::<f64>() / n as f64;
        assert!((g - 0.25).abs() < 0.01, "gamma mean {g}");
        let e: f64 = (0..n).map(|_| -r.unit().ln()).sum::<f64>() / n as f64;
        assert!((e - 1.0).abs() < 0.01, "exponential mean {e}");
        let l = Lengths::LogNormal {
            mean: 500.0,
            spread: 0.5,
        };
        let m: f64 = (0..n)
            .map(|_| draw_length(&l, 0, &mut r) as f64)
            .sum::<f64>()
            / n as f64;
        assert!((m / 500.0 - 1.0).abs() < 0.01, "lognormal mean {m}");
    }
}
