//! In-memory collectives between simulated devices.
//!
//! Every ordered pair of devices has a FIFO channel; a device owns the
//! sending ends of its outgoing channels and the receiving ends of its
//! incoming ones ([`Endpoint`]). Collectives are built from point-to-point
//! messages with deterministic reduction order, so every member of a group
//! ends with bit-identical data (a replicated tensor really is replicated):
//! all-reduce is a reduce-scatter (member `i` sums block `i` over the
//! group in group order) followed by an all-gather, the data volume of a
//! ring all-reduce. Because all devices of a group issue their collectives
//! in the same program order, FIFO channels match messages without tags;
//! each message still carries its kind, and a mismatch is an R006 error
//! instead of silent corruption. The one exception is the pipeline: an
//! interleaved schedule sends activations and gradients between the same
//! two stages in an order neither side controls, so those two kinds are
//! tags (a message of the other kind waits in a per-sender queue). A device that fails drops its endpoint;
//! its peers then see a disconnected channel (or a timeout) and fail too,
//! so a broken run ends instead of hanging.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use crate::error::{RCode, RuntimeError};
use crate::layout::block;

/// What a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ReduceScatter,
    AllGather,
    AllToAll,
    /// Pipeline activations (forward).
    SendRecv,
    /// Pipeline gradients (backward).
    GradSendRecv,
}

struct Msg {
    kind: Kind,
    data: Vec<f32>,
}

/// One device's ends of the channels.
pub struct Endpoint {
    pub rank: usize,
    to: Vec<Sender<Msg>>,
    from: Vec<Receiver<Msg>>,
    /// Messages from each device that arrived before a receive of their
    /// kind (an interleaved pipeline sends activations and gradients
    /// between the same two stages); each kind stays in order.
    pending: Vec<RefCell<VecDeque<Msg>>>,
    timeout: Duration,
    /// What the messages sent now are for (`""`: instrumentation, not
    /// counted), and the floats sent under each label.
    label: Cell<&'static str>,
    traffic: RefCell<BTreeMap<&'static str, usize>>,
}

/// Channels between `n` devices; element `r` is device `r`'s endpoint.
pub fn mesh(n: usize, timeout: Duration) -> Vec<Endpoint> {
    let mut senders: Vec<Vec<Option<Sender<Msg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<Option<Receiver<Msg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for (src, row) in senders.iter_mut().enumerate() {
        for (dst, slot) in row.iter_mut().enumerate() {
            let (s, r) = channel();
            *slot = Some(s);
            receivers[dst][src] = Some(r);
        }
    }
    senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(rank, (to, from))| Endpoint {
            rank,
            to: to.into_iter().flatten().collect(),
            from: from.into_iter().flatten().collect(),
            pending: (0..n).map(|_| RefCell::new(VecDeque::new())).collect(),
            timeout,
            label: Cell::new("tensor"),
            traffic: RefCell::new(BTreeMap::new()),
        })
        .collect()
}

fn broken(message: String) -> RuntimeError {
    RuntimeError::new(RCode::R006, message)
}

impl Endpoint {
    /// Counts the messages sent from now on under `label` (`""`: not at
    /// all); returns the previous label.
    pub fn label(&self, label: &'static str) -> &'static str {
        self.label.replace(label)
    }

    /// Floats sent so far, per label.
    pub fn traffic(&self) -> BTreeMap<&'static str, usize> {
        self.traffic.borrow().clone()
    }

    /// Forgets the traffic counted so far.
    pub fn reset_traffic(&self) {
        self.traffic.borrow_mut().clear();
    }

    pub fn send(&self, dst: usize, kind: Kind, data: Vec<f32>) -> Result<(), RuntimeError> {
        let label = self.label.get();
        if !label.is_empty() {
            // A pipeline message's first float is its layout, not payload.
            let header = usize::from(matches!(kind, Kind::SendRecv | Kind::GradSendRecv));
            *self.traffic.borrow_mut().entry(label).or_default() +=
                data.len() - header.min(data.len());
        }
        self.to
            .get(dst)
            .ok_or_else(|| {
                broken(format!(
                    "device {} sends to missing device {dst}",
                    self.rank
                ))
            })?
            .send(Msg { kind, data })
            .map_err(|_| {
                broken(format!(
                    "device {dst} stopped before device {} could send to it",
                    self.rank
                ))
            })
    }

    pub fn recv(&self, src: usize, kind: Kind) -> Result<Vec<f32>, RuntimeError> {
        let ch = self.from.get(src).ok_or_else(|| {
            broken(format!(
                "device {} receives from missing device {src}",
                self.rank
            ))
        })?;
        let pipeline = |k: Kind| matches!(k, Kind::SendRecv | Kind::GradSendRecv);
        if let Some(q) = self.pending.get(src) {
            let mut q = q.borrow_mut();
            if let Some(i) = q.iter().position(|m| m.kind == kind) {
                return Ok(q.remove(i).map(|m| m.data).unwrap_or_default());
            }
        }
        loop {
            let m = ch.recv_timeout(self.timeout).map_err(|e| match e {
                RecvTimeoutError::Timeout => broken(format!(
                    "device {} waited {:?} for a {kind:?} message from device {src}",
                    self.rank, self.timeout
                )),
                RecvTimeoutError::Disconnected => broken(format!(
                    "device {src} stopped before sending to device {}",
                    self.rank
                )),
            })?;
            if m.kind == kind {
                return Ok(m.data);
            }
            // Only the two pipeline kinds may overtake each other.
            if !(pipeline(kind) && pipeline(m.kind)) {
                return Err(broken(format!(
                    "device {} expected a {kind:?} message from device {src}, got {:?}",
                    self.rank, m.kind
                )));
            }
            if let Some(q) = self.pending.get(src) {
                q.borrow_mut().push_back(m);
            }
        }
    }

    fn position(&self, group: &[usize]) -> Result<usize, RuntimeError> {
        group
            .iter()
            .position(|r| *r == self.rank)
            .ok_or_else(|| broken(format!("device {} is not in group {group:?}", self.rank)))
    }

    /// Sums `data` over `group` (every member passes the same length) and
    /// returns this member's block `block(len, group.len(), position)`.
    pub fn reduce_scatter(&self, group: &[usize], data: &[f32]) -> Result<Vec<f32>, RuntimeError> {
        let me = self.position(group)?;
        let g = group.len();
        for (i, r) in group.iter().enumerate() {
            if i != me {
                self.send(
                    *r,
                    Kind::ReduceScatter,
                    data[block(data.len(), g, i)].to_vec(),
                )?;
            }
        }
        let mine = block(data.len(), g, me);
        let mut acc: Option<Vec<f32>> = None;
        for (i, r) in group.iter().enumerate() {
            let part = if i == me {
                data[mine.clone()].to_vec()
            } else {
                self.recv(*r, Kind::ReduceScatter)?
            };
            if part.len() != mine.len() {
                return Err(broken(format!(
                    "reduce-scatter block from device {r} has {} floats, expected {}",
                    part.len(),
                    mine.len()
                )));
            }
            acc = Some(match acc {
                None => part,
                Some(mut a) => {
                    a.iter_mut().zip(&part).for_each(|(x, y)| *x += y);
                    a
                }
            });
        }
        Ok(acc.unwrap_or_default())
    }

    /// Concatenates every member's `part` in group order.
    pub fn all_gather(&self, group: &[usize], part: &[f32]) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let me = self.position(group)?;
        for (i, r) in group.iter().enumerate() {
            if i != me {
                self.send(*r, Kind::AllGather, part.to_vec())?;
            }
        }
        group
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if i == me {
                    Ok(part.to_vec())
                } else {
                    self.recv(*r, Kind::AllGather)
                }
            })
            .collect()
    }

    /// Sums `data` over `group` in place: reduce-scatter, then all-gather.
    pub fn all_reduce(&self, group: &[usize], data: &mut [f32]) -> Result<(), RuntimeError> {
        if group.len() <= 1 {
            return Ok(());
        }
        let mine = self.reduce_scatter(group, data)?;
        let parts = self.all_gather(group, &mine)?;
        let mut off = 0;
        for p in parts {
            let end = off + p.len();
            if end > data.len() {
                return Err(broken("all-reduce blocks overrun the buffer".into()));
            }
            data[off..end].copy_from_slice(&p);
            off = end;
        }
        Ok(())
    }

    /// Sends `parts[i]` to member `i` and returns what each member sent here.
    pub fn all_to_all(
        &self,
        group: &[usize],
        mut parts: Vec<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let me = self.position(group)?;
        if parts.len() != group.len() {
            return Err(broken(format!(
                "all-to-all over {} devices with {} parts",
                group.len(),
                parts.len()
            )));
        }
        let own = std::mem::take(&mut parts[me]);
        for (i, (r, p)) in group.iter().zip(parts).enumerate() {
            if i != me {
                self.send(*r, Kind::AllToAll, p)?;
            }
        }
        let mut own = Some(own);
        group
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if i == me {
                    Ok(own.take().unwrap_or_default())
                } else {
                    self.recv(*r, Kind::AllToAll)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectives_agree_across_threads() {
        let n = 4;
        let eps = mesh(n, Duration::from_secs(10));
        let results: Vec<(Vec<f32>, Vec<Vec<f32>>)> = std::thread::scope(|s| {
            let hs: Vec<_> = eps
                .into_iter()
                .map(|ep| {
                    s.spawn(move || {
                        let group: Vec<usize> = (0..n).collect();
                        let mut data: Vec<f32> =
                            (0..7).map(|i| (i * 10 + ep.rank) as f32).collect();
                        ep.all_reduce(&group, &mut data).expect("all-reduce");
                        let parts = (0..n).map(|d| vec![(ep.rank * 10 + d) as f32]).collect();
                        let got = ep.all_to_all(&group, parts).expect("all-to-all");
                        (data, got)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        for (r, (sum, got)) in results.iter().enumerate() {
            let want: Vec<f32> = (0..7).map(|i| (4 * i * 10 + 6) as f32).collect();
            assert_eq!(sum, &want);
            let want: Vec<Vec<f32>> = (0..n).map(|src| vec![(src * 10 + r) as f32]).collect();
            assert_eq!(got, &want);
        }
    }
}
