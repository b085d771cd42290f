//! A TorchRec sharding plan in TorchRec's own structure
//! (`torchrec.distributed.types.ShardingPlan`): per module path of the
//! embedding-bag collection (`sparse_arch.embedding_bag_collection`, the
//! path of `torchrec.models.dlrm.DLRM`), per table its `ParameterSharding`:
//! `sharding_type`, `compute_kernel`, `ranks` and `sharding_spec` (one
//! `ShardMetadata` per shard: offsets, sizes and placement). Gantry's
//! own figures (bytes, the parameter's state-dict name) are under a
//! separate `gantry` key. Row-wise shards follow TorchRec's block split
//! (`ceil(rows / ranks)` rows per rank, the last ones short or empty).
//! A table cut by columns (`placement = memory_balanced`) is
//! `column_wise`, one shard per slice at its column offset.
//! Tables Gantry keeps in host memory are row-wise over every rank with
//! the UVM kernel (`fused_uvm`, `quant_uvm` in inference): the cost model
//! prices their lookups over the host link on every device.

use gantry_lang::program::{Item, OpKind, Phase, Workload};
use serde_json::{Map, Value, json};

use super::{ExportError, refuse};
use crate::placement::TablePlacement;

const TARGET: &str = "TorchRec";
/// The embedding-bag collection's path in TorchRec's DLRM.
pub const MODULE: &str = "sparse_arch.embedding_bag_collection";

/// Rows and columns of every embedding-bag table of the workload, by name.
fn table_shapes(w: &Workload) -> std::collections::BTreeMap<String, (u64, u64)> {
    fn walk(items: &[Item], out: &mut std::collections::BTreeMap<String, (u64, u64)>) {
        for i in items {
            match i {
                Item::Op(o) => {
                    if let OpKind::EmbeddingBag { tables } = &o.kind {
                        for t in tables {
                            out.insert(t.name.clone(), (t.rows, t.dim));
                        }
                    }
                }
                Item::Repeat(r) => walk(&r.body, out),
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(&w.model.graph.body, &mut out);
    out
}

/// Whether the workload's model has embedding-bag tables to shard.
pub fn has_tables(w: &Workload) -> bool {
    !table_shapes(w).is_empty()
}

/// TorchRec's row-wise split of `rows` over `n` ranks: `(offset, size)`.
pub fn row_blocks(rows: u64, n: u64) -> Vec<(u64, u64)> {
    let n = n.max(1);
    let block = rows.div_ceil(n).max(1);
    let mut at = 0;
    (0..n)
        .map(|_| {
            let size = block.min(rows - at);
            let shard = (at, size);
            at += size;
            shard
        })
        .collect()
}

/// The sharding plan of `tables` (the placement of an evaluated point) for
/// workload `w` on ranks numbered with `devices_per_node` per node.
pub fn torchrec(
    tables: &[TablePlacement],
    w: &Workload,
    devices: u64,
    devices_per_node: u64,
) -> Result<Value, ExportError> {
    if tables.is_empty() {
        return Err(refuse(
            TARGET,
            format!(
                "the model `{}` has no embedding-bag tables to shard",
                w.model.name
            ),
            "export transformer plans with `--export megatron`",
        ));
    }
    if let Some(t) = tables.iter().find(|t| t.sharding == "unplaced") {
        return Err(refuse(
            TARGET,
            format!(
                "table `{}` ({:.0} bytes) fits in no rank's memory and the node declares no host memory",
                t.table, t.bytes
            ),
            "add devices, or declare the node's `host_memory` so tables can live there",
        ));
    }
    let training = matches!(w.phase, Phase::Train { .. });
    let shapes = table_shapes(w);
    let local = |r: u64| r % devices_per_node.max(1);
    let mut params = Map::new();
    let mut extras = Map::new();
    // A table cut by columns is several entries of one name: one
    // column-wise parameter with a shard per slice.
    let mut groups: Vec<(&str, Vec<&TablePlacement>)> = Vec::new();
    for t in tables {
        match groups.iter_mut().find(|(n, _)| *n == t.table) {
            Some((_, g)) => g.push(t),
            None => groups.push((&t.table, vec![t])),
        }
    }
    for (table, mut group) in groups {
        let (rows, dim) = shapes.get(table).copied().unwrap_or((0, 0));
        let name = table_name(table);
        let t = group[0];
        let bytes: f64 = group.iter().map(|t| t.bytes).sum();
        let sliced = group.iter().any(|t| t.sharding == "column_wise");
        if sliced && group.iter().any(|t| t.sharding != "column_wise") {
            return Err(refuse(
                TARGET,
                format!("table `{table}` is cut by columns and part of it is in host memory"),
                "give the devices room for every slice (more devices, or a larger `column_slice`)",
            ));
        }
        group.sort_by_key(|t| t.columns.0);
        let (sharding, ranks, kernel) = match t.sharding {
            "column_wise" => (
                "column_wise",
                group
                    .iter()
                    .filter_map(|t| t.ranks.first().copied())
                    .collect(),
                "",
            ),
            "table_wise" => ("table_wise", t.ranks.clone(), ""),
            "host" => ("row_wise", (0..devices.max(1)).collect(), "uvm"),
            other => (other, t.ranks.clone(), ""),
        };
        let compute_kernel = match (training, kernel) {
            (true, "") => "fused",
            (true, _) => "fused_uvm",
            (false, "") => "quant",
            (false, _) => "quant_uvm",
        };
        let shards: Vec<Value> = match sharding {
            "row_wise" => row_blocks(rows, ranks.len() as u64)
                .into_iter()
                .zip(&ranks)
                .map(|((off, size), r)| shard([off, 0], [size, dim], *r, local(*r)))
                .collect(),
            "column_wise" => group
                .iter()
                .zip(&ranks)
                .map(|(t, r)| {
                    let (c0, c1) = t.columns;
                    shard([0, c0], [rows, c1 - c0], *r, local(*r))
                })
                .collect(),
            _ => ranks
                .iter()
                .map(|r| shard([0, 0], [rows, dim], *r, local(*r)))
                .collect(),
        };
        params.insert(
            name.clone(),
            json!({
                "sharding_type": sharding,
                "compute_kernel": compute_kernel,
                "ranks": ranks,
                "sharding_spec": shards,
            }),
        );
        extras.insert(
            name.clone(),
            json!({
                "name": table,
                "parameter": format!("{MODULE}.embedding_bags.{name}.weight"),
                "rows": rows,
                "dim": dim,
                "bytes": bytes,
                "memory": if t.sharding == "host" { "host" } else { "hbm" },
            }),
        );
    }
    Ok(json!({
        "schema": "gantry.torchrec/2",
        "plan": { MODULE: params },
        "gantry": { "tables": extras },
    }))
}

/// A table's name as a TorchRec `EmbeddingBagConfig` name (a module key:
/// letters, digits and `_`; Gantry's `CriteoTable#3` is `criteotable_3`).
pub fn table_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn shard(offsets: [u64; 2], sizes: [u64; 2], rank: u64, local: u64) -> Value {
    json!({
        "shard_offsets": offsets,
        "shard_sizes": sizes,
        "placement": format!("rank:{rank}/cuda:{local}"),
    })
}

#[cfg(test)]
mod tests {
    use super::row_blocks;

    /// TorchRec's block split: ceil(rows / n) per rank, the rest short.
    #[test]
    fn row_blocks_follow_torchrec() {
        assert_eq!(row_blocks(10, 4), vec![(0, 3), (3, 3), (6, 3), (9, 1)]);
        assert_eq!(row_blocks(4, 8)[4..], [(4, 0), (4, 0), (4, 0), (4, 0)]);
        assert_eq!(row_blocks(4, 8)[..4], [(0, 1), (1, 1), (2, 1), (3, 1)]);
    }
}
