//! Collectives priced on the topology a group actually spans.
//!
//! A group is `size` ranks spaced `stride` apart in the global rank order
//! (tensor parallel innermost, so a tp group is consecutive GPUs and a dp
//! group strides over whole model replicas). From the stride the group's
//! footprint follows: how many members share a node (they talk over the
//! scale-up link) and how many nodes it spans (they talk over the NICs, at
//! full bandwidth inside a pod and divided by the oversubscription above
//! it). Every collective is an alpha-beta model: latency per step plus bytes
//! over the effective bandwidth (link figure x the device's calibrated
//! efficiency). All-reduce, reduce-scatter and all-gather use a ring inside
//! one level and a hierarchical ring across two (reduce-scatter in the node,
//! ring across nodes on each GPU's own NIC, all-gather in the node), which
//! is what NCCL does on rail-optimized clusters at these sizes. Latency
//! follows NCCL's algorithms: rings take one step per rank, all-reduce
//! across nodes uses trees (logarithmic).

use gantry_lang::program::Cluster;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Collective {
    AllReduce,
    ReduceScatter,
    AllGather,
    AllToAll,
    SendRecv,
}

impl Collective {
    pub fn name(self) -> &'static str {
        match self {
            Collective::AllReduce => "all-reduce",
            Collective::ReduceScatter => "reduce-scatter",
            Collective::AllGather => "all-gather",
            Collective::AllToAll => "all-to-all",
            Collective::SendRecv => "send/recv",
        }
    }
}

/// The outermost level of the topology a group crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    Device,
    ScaleUp,
    Rack,
    Pod,
    Aggregation,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Device => "none",
            Level::ScaleUp => "scale-up (in node)",
            Level::Rack => "rack",
            Level::Pod => "pod",
            Level::Aggregation => "aggregation (oversubscribed)",
        }
    }
}

/// Effective bandwidths and latencies of one system.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Topology {
    pub per_node: u64,
    pub nodes: u64,
    /// Scale-up bytes/s per GPU per direction, after efficiency.
    pub up_bw: f64,
    pub up_lat: f64,
    /// Fixed seconds per collective (the link's `launch`: the library's
    /// base latency), paid once by every collective of two or more ranks.
    pub launch: f64,
    /// Scale-out bytes/s per GPU per direction, after efficiency.
    pub out_bw: f64,
    pub out_lat: f64,
    pub rack_nodes: u64,
    pub pod_nodes: u64,
    pub oversubscription: f64,
}

impl Topology {
    /// `e_up`, `e_out`: achievable fractions of link and NIC bandwidth.
    pub fn new(c: &Cluster, e_up: f64, e_out: f64) -> Topology {
        let n = &c.node;
        let link = n
            .links
            .iter()
            .map(|l| (l.bandwidth, l.latency, l.launch))
            .fold((0.0, 0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        let per_node = n.devices_per_node.max(1);
        // The fabric's `bandwidth` is per switch port: a NIC faster than
        // its port runs at the port's rate (docs/COST-MODEL.md, §5).
        let port = c
            .fabric
            .as_ref()
            .map_or(n.nic_bandwidth, |f| n.nic_bandwidth.min(f.bandwidth));
        let nic_per_gpu = port * n.nics as f64 / per_node as f64;
        let (lat, rack, pod, over) = match &c.fabric {
            Some(f) => (f.latency, f.rack_nodes, f.pod_nodes, f.oversubscription),
            None => (0.0, 1, c.nodes, 1.0),
        };
        Topology {
            per_node,
            nodes: c.nodes,
            up_bw: link.0 * e_up,
            up_lat: link.1,
            launch: link.2,
            out_bw: nic_per_gpu * e_out,
            out_lat: lat,
            rack_nodes: rack.max(1),
            pod_nodes: pod.max(1),
            oversubscription: over.max(1.0),
        }
    }

    /// Members per node and nodes spanned by a group.
    pub fn footprint(&self, size: u64, stride: u64) -> (u64, u64, u64) {
        let size = size.max(1);
        let stride = stride.max(1);
        let g_in = if stride >= self.per_node {
            1
        } else {
            (self.per_node / stride).min(size).max(1)
        };
        let g_out = size.div_ceil(g_in);
        let span_nodes = if g_out <= 1 {
            1
        } else {
            g_out * (stride / self.per_node).max(1)
        };
        (g_in, g_out, span_nodes)
    }

    pub fn level(&self, size: u64, stride: u64) -> Level {
        if size <= 1 {
            return Level::Device;
        }
        let (_, g_out, span) = self.footprint(size, stride);
        if g_out <= 1 {
            Level::ScaleUp
        } else if span <= self.rack_nodes {
            Level::Rack
        } else if span <= self.pod_nodes {
            Level::Pod
        } else {
            Level::Aggregation
        }
    }

    fn out_bw_at(&self, level: Level) -> f64 {
        if level == Level::Aggregation {
            self.out_bw / self.oversubscription
        } else {
            self.out_bw
        }
    }

    /// Seconds for one collective of `bytes` (the full buffer per rank).
    pub fn time(&self, c: Collective, size: u64, stride: u64, bytes: f64) -> f64 {
        if size <= 1 || bytes <= 0.0 {
            return 0.0;
        }
        let level = self.level(size, stride);
        let (g_in, g_out, _) = self.footprint(size, stride);
        let (gi, go, g) = (g_in as f64, g_out as f64, size as f64);
        let out_bw = self.out_bw_at(level);
        let ring = |n: f64, s: f64, bw: f64| {
            if n <= 1.0 {
                0.0
            } else {
                (n - 1.0) / n * s / bw
            }
        };
        // Latency: NCCL's rings pass through every rank, so a ring
        // collective takes (n - 1) steps, each as slow as the slowest hop
        // (the fabric when the group leaves the node). All-reduce switches
        // to trees across nodes: 2 log2(n) steps.
        let hop = if go > 1.0 {
            self.out_lat.max(self.up_lat)
        } else {
            self.up_lat
        };
        let ring_lat = (g - 1.0) * hop;
        let tree_lat = 2.0 * g.log2().ceil() * hop;
        let launch = self.launch;
        launch
            + match c {
                Collective::AllReduce => {
                    2.0 * (ring(gi, bytes, self.up_bw) + ring(go, bytes / gi, out_bw))
                        + if go > 1.0 { tree_lat } else { 2.0 * ring_lat }
                }
                Collective::ReduceScatter | Collective::AllGather => {
                    ring(gi, bytes, self.up_bw) + ring(go, bytes / gi, out_bw) + ring_lat
                }
                Collective::AllToAll => {
                    // A level the group does not use costs nothing, even where
                    // the node lacks it (0 / 0 would be NaN).
                    let inside = if gi > 1.0 {
                        bytes * (gi - 1.0) / g / self.up_bw
                    } else {
                        0.0
                    };
                    let outside = if g > gi {
                        bytes * (g - gi) / g / out_bw
                    } else {
                        0.0
                    };
                    inside
                        + outside
                        + (g - 1.0).min(64.0) * if go > 1.0 { self.out_lat } else { self.up_lat }
                }
                Collective::SendRecv => {
                    // Every member sends to its neighbour at once (a
                    // pipeline's pair, a context-parallel ring of `size`):
                    // a group that leaves the node waits for its hops over
                    // the NICs, however many of its hops stay inside.
                    if go > 1.0 {
                        bytes / out_bw + self.out_lat
                    } else {
                        bytes / self.up_bw + self.up_lat
                    }
                }
            }
    }

    /// The stride of a pipeline's slowest stage boundary: `stages` stages
    /// `stride` ranks apart that span more than one node have a boundary
    /// between nodes (with 4-rank stages on 8-GPU nodes, stages 0 and 1
    /// share a node, 1 and 2 do not), and the schedule waits for it.
    pub fn pipeline_hop(&self, stages: u64, stride: u64) -> u64 {
        if stages > 1 && stages.saturating_mul(stride) > self.per_node {
            stride.max(self.per_node)
        } else {
            stride
        }
    }

    pub fn algorithm(&self, c: Collective, size: u64, stride: u64) -> &'static str {
        let (g_in, g_out, _) = self.footprint(size, stride);
        match c {
            Collective::AllToAll => "pairwise",
            Collective::SendRecv => "point-to-point",
            _ if g_in > 1 && g_out > 1 => "hierarchical ring",
            _ => "ring",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology {
            per_node: 8,
            nodes: 64,
            up_bw: 300e9,
            up_lat: 0.0,
            launch: 0.0,
            out_bw: 25e9,
            out_lat: 0.0,
            rack_nodes: 2,
            pod_nodes: 16,
            oversubscription: 4.0,
        }
    }

    #[test]
    fn ring_all_reduce_closed_form() {
        // In one node: 2 (n-1)/n S / B.
        let t = topo().time(Collective::AllReduce, 8, 1, 1e9);
        assert!((t - 2.0 * 7.0 / 8.0 * 1e9 / 300e9).abs() < 1e-15);
        // Reduce-scatter and all-gather are half an all-reduce each.
        let rs = topo().time(Collective::ReduceScatter, 8, 1, 1e9);
        assert!((2.0 * rs - t).abs() < 1e-15);
    }

    #[test]
    fn across_nodes_on_rails() {
        // dp group strided by a whole node: one GPU per node, NIC bandwidth.
        let t = topo().time(Collective::AllReduce, 4, 8, 1e9);
        assert!((t - 2.0 * 3.0 / 4.0 * 1e9 / 25e9).abs() < 1e-12);
        assert_eq!(topo().level(4, 8), Level::Pod);
        assert_eq!(topo().level(2, 8), Level::Rack);
    }

    #[test]
    fn hierarchical_two_levels() {
        // 32 ranks, 8 per node over 4 nodes: RS+AG in node, ring across.
        let s = 1e9;
        let want = 2.0 * (7.0 / 8.0 * s / 300e9 + 3.0 / 4.0 * (s / 8.0) / 25e9);
        let t = topo().time(Collective::AllReduce, 32, 1, s);
        assert!((t - want).abs() < 1e-12);
        assert_eq!(
            topo().algorithm(Collective::AllReduce, 32, 1),
            "hierarchical ring"
        );
    }

    #[test]
    fn oversubscription_above_the_pod() {
        let inside = topo().time(Collective::AllReduce, 16, 8, 1e9);
        let beyond = topo().time(Collective::AllReduce, 32, 8, 1e9);
        assert_eq!(topo().level(32, 8), Level::Aggregation);
        // Same ring factor almost, but a quarter of the bandwidth.
        assert!(beyond > 3.5 * inside);
    }

    #[test]
    fn all_to_all_without_a_link_it_does_not_use_is_finite() {
        // One rank per node: no scale-up traffic, so no link is needed
        // (the all-to-all used to be 0 / 0 = NaN on a node without one).
        let t = Topology {
            per_node: 1,
            up_bw: 0.0,
            ..topo()
        };
        let x = t.time(Collective::AllToAll, 8, 1, 8e9);
        assert!(x.is_finite() && x > 0.0, "{x}");
        // In one node, without NICs: no scale-out traffic.
        let t = Topology {
            out_bw: 0.0,
            ..topo()
        };
        let x = t.time(Collective::AllToAll, 8, 1, 8e9);
        assert!(x.is_finite() && x > 0.0, "{x}");
    }

    #[test]
    fn launch_and_ring_steps_follow_the_nccl_model() {
        // NCCL's tuning model for a ring all-reduce inside one node: base
        // latency + 2 (n - 1) steps, plus bytes over bandwidth. A 1-byte
        // all-reduce over 8 GPUs with 0.6 us steps and 6.6 us launch costs
        // 6.6 + 14 x 0.6 = 15.0 us (+ 1.75 B / 300 GB/s).
        let t = Topology {
            up_lat: 0.6e-6,
            launch: 6.6e-6,
            ..topo()
        };
        let ar = t.time(Collective::AllReduce, 8, 1, 1.0);
        let want = 6.6e-6 + 14.0 * 0.6e-6 + 2.0 * 7.0 / 8.0 / 300e9;
        assert!((ar - want).abs() < 1e-15, "{ar} vs {want}");
        // Reduce-scatter: launch once, n - 1 steps.
        let rs = t.time(Collective::ReduceScatter, 8, 1, 1.0);
        assert!((rs - (6.6e-6 + 7.0 * 0.6e-6 + 7.0 / 8.0 / 300e9)).abs() < 1e-15);
        // Launch is paid once per collective, never for a lone rank.
        assert_eq!(t.time(Collective::AllReduce, 1, 1, 1e9), 0.0);
        let big = t.time(Collective::AllReduce, 8, 1, 1e9);
        let no_launch = Topology { launch: 0.0, ..t }.time(Collective::AllReduce, 8, 1, 1e9);
        assert!((big - no_launch - 6.6e-6).abs() < 1e-12);
    }

    #[test]
    fn send_recv_leaves_the_node_when_its_group_does() {
        let t = topo();
        let (nvlink, nic) = (1e9 / 300e9, 1e9 / 25e9);
        // A pipeline pair 4 ranks apart shares a node of 8.
        assert!((t.time(Collective::SendRecv, 2, 4, 1e9) - nvlink).abs() < 1e-15);
        // A ring of 4 ranks 4 apart (cp = 4 over tp = 4) spans two nodes:
        // its steps wait for the hops between them.
        assert!((t.time(Collective::SendRecv, 4, 4, 1e9) - nic).abs() < 1e-15);
        // A pair 6 apart on 8-GPU nodes is split by a node boundary.
        assert!((t.time(Collective::SendRecv, 2, 6, 1e9) - nic).abs() < 1e-15);
        // A ring of 4 ranks 2 apart stays inside the node.
        assert!((t.time(Collective::SendRecv, 4, 2, 1e9) - nvlink).abs() < 1e-15);
        // A pipeline of two 4-rank stages fits a node; of four, its middle
        // boundary is between nodes, and the schedule waits for it.
        assert_eq!(t.pipeline_hop(2, 4), 4);
        let hop = t.pipeline_hop(4, 4);
        assert!((t.time(Collective::SendRecv, 2, hop, 1e9) - nic).abs() < 1e-15);
        // Stages of whole nodes are unchanged.
        assert_eq!(t.pipeline_hop(8, 16), 16);
    }

    #[test]
    fn all_to_all_closed_form() {
        let t = topo().time(Collective::AllToAll, 8, 1, 8e9);
        assert!((t - 8e9 * 7.0 / 8.0 / 300e9).abs() < 1e-12);
    }
}
