//! Pipeline schedules: which microbatch and model chunk each stage runs
//! forward or backward, in order (1F1B and Megatron-LM's interleaved
//! 1F1B), and which layers each virtual stage holds.
//!
//! Pure functions of the degrees, with no device state, so the schedule
//! can be tested (and read) on its own; [`super::simulate`] walks it on
//! every device.

/// `layers` split into `pp` counts differing by at most one (later stages
/// take the remainder): the compiler's one layer split,
/// [`gantry_compiler::point::stage_layers`], unweighted.
pub fn even_split(layers: usize, pp: usize) -> Vec<usize> {
    let even = gantry_compiler::point::StageTimes::default();
    gantry_compiler::point::stage_layers(layers as u64, pp as u64, even)
        .into_iter()
        .map(|n| n as usize)
        .collect()
}

/// A step of a pipeline stage's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Forward(usize),
    Backward(usize),
}

/// The 1F1B schedule of `stage` of `pp` over `m` microbatches: warm-up
/// forwards, then alternating forward and backward, then the remaining
/// backwards.
pub fn one_f_one_b(pp: usize, stage: usize, m: usize) -> Vec<Action> {
    let warm = (pp - stage - 1).min(m);
    let mut v = Vec::with_capacity(2 * m);
    let (mut f, mut b) = (0, 0);
    while f < warm {
        v.push(Action::Forward(f));
        f += 1;
    }
    while f < m {
        v.push(Action::Forward(f));
        f += 1;
        v.push(Action::Backward(b));
        b += 1;
    }
    while b < m {
        v.push(Action::Backward(b));
        b += 1;
    }
    v
}

/// The steps of `stage` of `pp` over `m` microbatches with `vp` model
/// chunks per stage, each with its chunk. `vp = 1` is [`one_f_one_b`];
/// otherwise Megatron-LM's interleaved 1F1B: `(pp - stage - 1) * 2 +
/// (vp - 1) * pp` warm-up forwards (all of them when that reaches
/// `m * vp`), then one forward and one backward alternately, then the
/// remaining backwards. Forward `k` runs chunk `(k mod pp·vp) / pp` of
/// microbatch `(k / pp·vp) * pp + k mod pp`; backward `k` the same
/// microbatch with the chunks in reverse. Needs `m` to be a multiple of
/// `pp` (checked by [`validate`](super::validate)).
pub fn schedule(pp: usize, vp: usize, stage: usize, m: usize) -> Vec<(Action, usize)> {
    if vp <= 1 {
        return one_f_one_b(pp, stage, m)
            .into_iter()
            .map(|a| (a, 0))
            .collect();
    }
    let total = m * vp;
    let group = pp * vp;
    let at = |k: usize, forward: bool| {
        let chunk = (k % group) / pp;
        let mb = (k / group) * pp + k % pp;
        (mb, if forward { chunk } else { vp - 1 - chunk })
    };
    let warm = ((pp - stage - 1) * 2 + (vp - 1) * pp).min(total);
    let mut v = Vec::with_capacity(2 * total);
    for k in 0..warm {
        let (mb, c) = at(k, true);
        v.push((Action::Forward(mb), c));
    }
    for k in 0..total - warm {
        let (mb, c) = at(k + warm, true);
        v.push((Action::Forward(mb), c));
        let (mb, c) = at(k, false);
        v.push((Action::Backward(mb), c));
    }
    for k in total - warm..total {
        let (mb, c) = at(k, false);
        v.push((Action::Backward(mb), c));
    }
    v
}

/// The layers of every virtual stage `k = chunk * pp + stage`, in model
/// order: stage `s`'s layers are cut into `vp` chunks differing by at most
/// one ([`even_split`]), and virtual stages take consecutive layers.
pub fn chunk_layers(stage_layers: &[usize], vp: usize) -> Vec<std::ops::Range<usize>> {
    let pp = stage_layers.len();
    let vp = vp.max(1);
    let splits: Vec<Vec<usize>> = stage_layers.iter().map(|n| even_split(*n, vp)).collect();
    let mut out = Vec::with_capacity(pp * vp);
    let mut at = 0;
    for k in 0..pp * vp {
        let n = splits[k % pp][k / pp];
        out.push(at..at + n);
        at += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_f_one_b_orders_warmup_steady_cooldown() {
        use Action::*;
        assert_eq!(
            one_f_one_b(1, 0, 2),
            vec![Forward(0), Backward(0), Forward(1), Backward(1)]
        );
        assert_eq!(
            one_f_one_b(3, 0, 3),
            vec![
                Forward(0),
                Forward(1),
                Forward(2),
                Backward(0),
                Backward(1),
                Backward(2)
            ]
        );
        assert_eq!(
            one_f_one_b(3, 1, 3),
            vec![
                Forward(0),
                Forward(1),
                Backward(0),
                Forward(2),
                Backward(1),
                Backward(2)
            ]
        );
        assert_eq!(even_split(5, 2), vec![2, 3]);
    }
}
