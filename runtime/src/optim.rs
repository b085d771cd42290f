//! One optimizer step, elementwise, from zero state: the first step of a
//! run with the workload's optimizer.
//!
//! The step exists to execute ZeRO: with `zero >= 1` each of the `R`
//! devices that share a parameter block keeps optimizer state for one
//! contiguous part of it (`layout::block(len, R, i)`), updates that part
//! and all-gathers the updated parts ([`crate::exec`]). Because the update
//! is elementwise, the sharded step must give the replicated step's
//! parameters bit for bit; the runtime checks exactly that. (Comparing
//! with the reference's gradients instead would be ill-conditioned: Adam's
//! first step is `lr * g / (|g| + eps)`, nearly `lr * sign(g)`, so rounding
//! noise on a gradient that is exactly zero flips whole updates.)
//!
//! Hyperparameters are the frameworks' usual defaults (PyTorch's, with
//! momentum 0.9 for SGD and Megatron-LM's weight decay 0.1 for AdamW);
//! they change no shape and no cost.

use gantry_lang::program::Optimizer;

/// Learning rate and the optimizer's constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
}

/// The defaults for `opt`.
pub fn defaults(opt: Optimizer) -> Hyper {
    let adam = Hyper {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum: 0.0,
    };
    match opt {
        Optimizer::Adam => adam,
        Optimizer::AdamW => Hyper {
            weight_decay: 0.1,
            ..adam
        },
        Optimizer::Sgd => Hyper {
            lr: 1e-2,
            momentum: 0.9,
            ..adam
        },
        Optimizer::Adagrad => Hyper {
            lr: 1e-2,
            eps: 1e-10,
            ..adam
        },
    }
}

/// Optimizer-state floats per parameter (moments, momentum buffer or
/// squared-gradient sum).
pub fn state_per_param(opt: Optimizer) -> usize {
    match opt {
        Optimizer::Adam | Optimizer::AdamW => 2,
        Optimizer::Sgd | Optimizer::Adagrad => 1,
    }
}

/// The first step (`t = 1`) on `w` with gradient `g`, from zero state;
/// returns the state after it (`state_per_param` vectors of `w.len()`).
pub fn first_step(opt: Optimizer, h: &Hyper, w: &mut [f32], g: &[f32]) -> Vec<Vec<f32>> {
    match opt {
        Optimizer::Adam | Optimizer::AdamW => {
            let (mut m, mut v) = (vec![0.0f32; w.len()], vec![0.0f32; w.len()]);
            let (c1, c2) = (1.0 - h.beta1, 1.0 - h.beta2);
            for i in 0..w.len() {
                if opt == Optimizer::AdamW {
                    w[i] -= h.lr * h.weight_decay * w[i];
                }
                m[i] = h.beta1 * m[i] + c1 * g[i];
                v[i] = h.beta2 * v[i] + c2 * g[i] * g[i];
                let (mh, vh) = (m[i] / c1, v[i] / c2);
                w[i] -= h.lr * mh / (vh.sqrt() + h.eps);
            }
            vec![m, v]
        }
        Optimizer::Sgd => {
            // PyTorch: the momentum buffer starts as the first gradient.
            let buf = g.to_vec();
            for (x, b) in w.iter_mut().zip(&buf) {
                *x -= h.lr * b;
            }
            vec![buf]
        }
        Optimizer::Adagrad => {
            let sum: Vec<f32> = g.iter().map(|x| x * x).collect();
            for i in 0..w.len() {
                w[i] -= h.lr * g[i] / (sum[i].sqrt() + h.eps);
            }
            vec![sum]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_steps_follow_the_update_rules() {
        let g = [0.5f32, -2.0, 0.0];
        let mut w = [1.0f32, 1.0, 1.0];
        let s = first_step(Optimizer::Adam, &defaults(Optimizer::Adam), &mut w, &g);
        // Adam's first step moves every parameter by about lr * sign(g).
        assert!((w[0] - (1.0 - 1e-3)).abs() < 1e-6, "{w:?}");
        assert!((w[1] - (1.0 + 1e-3)).abs() < 1e-6, "{w:?}");
        assert_eq!(w[2], 1.0);
        assert_eq!(s.len(), 2);
        let mut w = [1.0f32, 1.0, 1.0];
        first_step(Optimizer::Sgd, &defaults(Optimizer::Sgd), &mut w, &g);
        assert_eq!(w, [1.0 - 0.005, 1.0 + 0.02, 1.0]);
        let mut w = [1.0f32; 3];
        first_step(Optimizer::AdamW, &defaults(Optimizer::AdamW), &mut w, &g);
        // Decoupled decay of 1e-4 then the Adam step.
        assert!((w[2] - (1.0 - 1e-4)).abs() < 1e-7, "{w:?}");
    }
}
