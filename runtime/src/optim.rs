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
        Optimizer::Sgd => Hyper { lr: 1e-2, ..adam },
        Optimizer::SgdMomentum => Hyper {
            lr: 1e-2,
            momentum: 0.9,
            ..adam
        },
        Optimizer::Adagrad => Hyper {
            lr: 1e-2,
            eps: 1e-10,
            ..adam
        },
        // NVIDIA Apex FusedLAMB's defaults.
        Optimizer::Lamb => Hyper {
            eps: 1e-6,
            weight_decay: 0.01,
            ..adam
        },
        // Hugging Face's Adafactor with a fixed learning rate
        // (`relative_step = False`, `scale_parameter = False`): `eps` is
        // its eps1 (added to squared gradients), update clipping at 1.
        Optimizer::Adafactor => Hyper {
            eps: 1e-30,
            beta1: 0.0,
            ..adam
        },
    }
}

/// Whether the update of each element depends on that element alone, so
/// that ZeRO may shard a tensor's state and update at any cut. LAMB's
/// trust ratio (a norm of the whole tensor) and Adafactor's factored
/// moment (row and column sums) are not: the runtime steps them whole.
pub fn elementwise(opt: Optimizer) -> bool {
    !matches!(opt, Optimizer::Lamb | Optimizer::Adafactor)
}

/// The first step (`t = 1`) on `w` with gradient `g`, from zero state;
/// `shape` is the tensor's (rows, columns), read by Adafactor alone (a
/// tensor with one row or one column keeps a full second moment).
/// Returns the state after it: Adam, AdamW and LAMB two vectors of
/// `w.len()`, SGD with momentum and Adagrad one, plain SGD none, Adafactor
/// its row and column statistics (or one full vector).
pub fn first_step(
    opt: Optimizer,
    h: &Hyper,
    w: &mut [f32],
    g: &[f32],
    shape: (usize, usize),
) -> Vec<Vec<f32>> {
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
            for (x, d) in w.iter_mut().zip(g) {
                *x -= h.lr * d;
            }
            Vec::new()
        }
        Optimizer::SgdMomentum => {
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
        Optimizer::Lamb => {
            // Adam's update with decoupled decay, scaled by the trust
            // ratio ||w|| / ||update|| of the whole tensor.
            let (c1, c2) = (1.0 - h.beta1, 1.0 - h.beta2);
            let m: Vec<f32> = g.iter().map(|x| c1 * x).collect();
            let v: Vec<f32> = g.iter().map(|x| c2 * x * x).collect();
            let u: Vec<f32> = (0..w.len())
                .map(|i| (m[i] / c1) / ((v[i] / c2).sqrt() + h.eps) + h.weight_decay * w[i])
                .collect();
            let norm = |x: &[f32]| x.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
            let (wn, un) = (norm(w), norm(&u));
            let ratio = if wn > 0.0 && un > 0.0 {
                (wn / un) as f32
            } else {
                1.0
            };
            for (x, d) in w.iter_mut().zip(&u) {
                *x -= h.lr * ratio * d;
            }
            vec![m, v]
        }
        Optimizer::Adafactor => {
            let (rows, cols) = shape;
            let sq: Vec<f32> = g.iter().map(|x| x * x + h.eps).collect();
            // At t = 1 the decay is 0: the statistics are this step's.
            let (state, v): (Vec<Vec<f32>>, Vec<f32>) =
                if rows > 1 && cols > 1 && rows * cols == w.len() {
                    let r: Vec<f32> = (0..rows)
                        .map(|i| sq[i * cols..(i + 1) * cols].iter().sum::<f32>() / cols as f32)
                        .collect();
                    let c: Vec<f32> = (0..cols)
                        .map(|j| (0..rows).map(|i| sq[i * cols + j]).sum::<f32>() / rows as f32)
                        .collect();
                    let mean = r.iter().sum::<f32>() / rows as f32;
                    let v = (0..w.len())
                        .map(|k| r[k / cols] * c[k % cols] / mean)
                        .collect();
                    (vec![r, c], v)
                } else {
                    (vec![sq.clone()], sq)
                };
            let u: Vec<f32> = g.iter().zip(&v).map(|(x, s)| x / s.sqrt()).collect();
            let rms = (u.iter().map(|a| a * a).sum::<f32>() / u.len().max(1) as f32).sqrt();
            let clip = rms.max(1.0);
            for (x, d) in w.iter_mut().zip(&u) {
                *x -= h.lr * d / clip;
            }
            state
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
        let s = first_step(
            Optimizer::Adam,
            &defaults(Optimizer::Adam),
            &mut w,
            &g,
            (1, 3),
        );
        // Adam's first step moves every parameter by about lr * sign(g).
        assert!((w[0] - (1.0 - 1e-3)).abs() < 1e-6, "{w:?}");
        assert!((w[1] - (1.0 + 1e-3)).abs() < 1e-6, "{w:?}");
        assert_eq!(w[2], 1.0);
        assert_eq!(s.len(), 2);
        let mut w = [1.0f32, 1.0, 1.0];
        assert!(
            first_step(
                Optimizer::Sgd,
                &defaults(Optimizer::Sgd),
                &mut w,
                &g,
                (1, 3)
            )
            .is_empty()
        );
        assert_eq!(w, [1.0 - 0.005, 1.0 + 0.02, 1.0]);
        let mut w = [1.0f32, 1.0, 1.0];
        let s = first_step(
            Optimizer::SgdMomentum,
            &defaults(Optimizer::SgdMomentum),
            &mut w,
            &g,
            (1, 3),
        );
        assert_eq!(w, [1.0 - 0.005, 1.0 + 0.02, 1.0]);
        assert_eq!(s, vec![g.to_vec()]);
        let mut w = [1.0f32; 3];
        first_step(
            Optimizer::AdamW,
            &defaults(Optimizer::AdamW),
            &mut w,
            &g,
            (1, 3),
        );
        // Decoupled decay of 1e-4 then the Adam step.
        assert!((w[2] - (1.0 - 1e-4)).abs() < 1e-7, "{w:?}");
    }

    #[test]
    fn lamb_scales_adams_update_by_the_trust_ratio() {
        // Adam's first update is about sign(g) (+ decay 0.01 w); LAMB
        // rescales it so that its norm is lr x ||w||.
        let g = [0.5f32, -2.0, 0.25, 1.0];
        let mut w = [3.0f32, 0.0, 4.0, 0.0];
        let s = first_step(
            Optimizer::Lamb,
            &defaults(Optimizer::Lamb),
            &mut w,
            &g,
            (2, 2),
        );
        assert_eq!(s.len(), 2);
        let moved: f64 = [3.0f32, 0.0, 4.0, 0.0]
            .iter()
            .zip(&w)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        // ||w|| = 5, lr = 1e-3.
        assert!((moved - 5e-3).abs() < 1e-6, "{moved} {w:?}");
    }

    #[test]
    fn adafactor_keeps_row_and_column_statistics_of_a_matrix() {
        let g = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut w = [0.0f32; 6];
        let h = defaults(Optimizer::Adafactor);
        let s = first_step(Optimizer::Adafactor, &h, &mut w, &g, (2, 3));
        // rows + cols values, not rows x cols.
        assert_eq!(s.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 3]);
        assert!((s[0][0] - 14.0 / 3.0).abs() < 1e-5, "{s:?}");
        assert!((s[1][2] - 22.5).abs() < 1e-5, "{s:?}");
        // A vector keeps a full second moment.
        let mut v = [0.0f32; 3];
        let s = first_step(Optimizer::Adafactor, &h, &mut v, &g[..3], (1, 3));
        assert_eq!(s.iter().map(Vec::len).collect::<Vec<_>>(), vec![3]);
        // Its first update is g / |g|, clipped to RMS 1: lr x sign(g).
        assert!(v.iter().all(|x| (x + 1e-3).abs() < 1e-6), "{v:?}");
    }
}
