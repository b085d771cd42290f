//! `gantry explain CODE`: the long text of every diagnostic code the tool
//! can emit (front end `L0xx`, compiler `C0xx`, runtime `R0xx`).
//!
//! The one-line meaning of a code lives next to the code itself
//! ([`gantry_lang::diagnostic::Code::description`],
//! [`gantry_runtime::RCode::description`]); the longer text (what triggers
//! it, a typical cause and what to do) lives here. `tests/cli.rs`
//! (`explain_knows_every_code_in_the_sources`) greps the source tree for
//! every code and fails when one has no long text here.

/// One code as `gantry explain` shows it.
pub struct Explained {
    pub code: &'static str,
    /// One line (the same as in the diagnostic tables of the docs).
    pub summary: &'static str,
    /// What triggers it, a typical cause and the fix; empty if none is
    /// written (a test forbids that).
    pub long: &'static str,
}

/// Every code the tool knows, front end first, then compiler, then runtime.
pub fn all() -> Vec<Explained> {
    let lang = gantry_lang::diagnostic::Code::ALL
        .iter()
        .map(|c| (c.as_str(), c.description()));
    let runtime = gantry_runtime::RCode::ALL
        .iter()
        .map(|c| (c.as_str(), c.description()));
    lang.chain(runtime)
        .map(|(code, summary)| Explained {
            code,
            summary,
            long: long_text(code).unwrap_or(""),
        })
        .collect()
}

/// The code named `want` (case-insensitive).
pub fn find(want: &str) -> Option<Explained> {
    all()
        .into_iter()
        .find(|e| e.code.eq_ignore_ascii_case(want.trim()))
}

/// The long text of a code, `None` if it has none.
pub fn long_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "L001" => {
            "The lexer met a character that starts no token: a non-ASCII character outside a \
string or comment, a stray `#` (comments are `//` and `/* */`), or a `$` that is not \
followed directly by an amount (`$2.50/h` is a price; `$ 2.50/h` and `$` alone are not).\n\
Fix: delete the character, or write the comment or price in Gantry's syntax."
        }
        "L002" => {
            "A string (`\"...\"`) is not closed on its line, or a block comment `/*` has no \
closing `*/` (block comments do not nest: the first `*/` ends them). Everything after the \
opening is dropped, so later declarations are not seen.\n\
Fix: close the string or the comment."
        }
        "L003" => {
            "A number literal cannot be read as a finite double, for example `1e999`. The value \
is read as invalid and reported once; its uses stay quiet.\n\
Fix: write a number in range, with a larger unit if needed (`1 PB` rather than `1e18 B`)."
        }
        "L004" => {
            "A word after a number is not a unit Gantry knows. Common cases: `TFLOPS` (write \
`TFLOP/s`), `Gbps` (write `Gb/s`), `KB` (write `kB` or `KiB`). The help line suggests the \
closest unit. The unit table is in docs/LANGUAGE.md, section 3.\n\
Fix: use the unit as the table spells it."
        }
        "L005" => {
            "A file given on the command line or imported is not valid UTF-8 text (a binary file, \
or text in another encoding).\n\
Fix: point at the .gantry source, or convert it to UTF-8."
        }
        "L006" => {
            "A file is larger than the 64 MiB limit on one source file (checked while reading, so \
devices and pipes are bounded too).\n\
Fix: split the file and import the parts."
        }
        "L010" => {
            "The parser met a token it did not expect here, for example `:` where `=` belongs \
(`compute: {...}`), a missing operator or an extra bracket. Recovery keeps what it can, so \
one mistake gives one diagnostic and the rest of the file is still checked.\n\
Fix: follow the label to the token and compare with the grammar in docs/LANGUAGE.md."
        }
        "L011" => {
            "The file ended inside a declaration: usually an unclosed `{`, `(` or `[`.\n\
Fix: close the bracket the label points at."
        }
        "L013" => {
            "Brackets are nested more than 64 deep, or an expression more than 128 deep (the \
rest of the file is dropped), or evaluating a value goes more than 512 levels deep through \
a chain of constants or calls (`let a2 = a1 + 1`, `let a3 = a2 + 1`, ... thousands long: \
each constant is evaluated inside the one that uses it). The limits keep the parser and \
checker within a bounded stack on any input.\n\
Fix: flatten the expression with `let` bindings; shorten a chain of constants by writing \
an intermediate value as a number."
        }
        "L014" => {
            "A file has more than 50 syntax errors; the rest are not shown, since later errors \
are usually consequences of the first ones (or the file is not Gantry source).\n\
Fix: correct the errors shown and check again."
        }
        "L020" => {
            "An import (or a file on the command line) cannot be found or read. Imports resolve \
relative to the importing file, then against each folder above it (so `stdlib/...` works \
from anywhere in a project with a `stdlib/`), then against `--lib` folders, then against \
the bundled standard library.\n\
Fix: check the path and its permissions, or pass the folder with `--lib`."
        }
        "L021" => {
            "Files import each other in a cycle (`a` imports `b`, which imports `a`). The message \
lists the cycle.\n\
Fix: move the shared declarations into a third file that both import."
        }
        "L030" => {
            "A name is used that no declaration, parameter, `let`, model input or built-in \
defines (also an unknown function called outside a model). The help line suggests the \
closest defined name.\n\
Fix: correct the spelling, or import the file that declares it."
        }
        "L031" => {
            "A name is defined twice: two top-level declarations with one name, a declaration \
named like a built-in op or function, or two model outputs with one name.\n\
Fix: rename one of them."
        }
        "L032" => {
            "A declaration is used where another kind belongs: `node N x 4` where `N` is a \
device, a model where a workload is expected, a plan used as a value.\n\
Fix: refer to a declaration of the kind the field needs."
        }
        "L033" => {
            "A named argument is not a parameter of the callee (or any named argument is given \
to `min`, `max` or `len`).\n\
Fix: use one of the parameters the help line lists."
        }
        "L034" => {
            "A call leaves out a parameter that has no default.\n\
Fix: pass the argument, or give the parameter a default in its declaration."
        }
        "L035" => {
            "A call passes more positional arguments than the callee has parameters.\n\
Fix: remove the extra arguments, or name them."
        }
        "L036" => {
            "One argument is given twice, for example positionally and by name.\n\
Fix: keep one of them."
        }
        "L037" => {
            "A definition depends on itself: `let a = b` with `let b = a`, or an instance used \
while it is being built.\n\
Fix: break the cycle by giving one of the values directly."
        }
        "L040" => {
            "An operation combines quantities of different dimensions: `80 GB + 3 GB/s` adds a \
size to a bandwidth, or the two sides of a `subject to` constraint differ in unit. The \
labels name each side's unit in base units.\n\
Fix: convert one side (multiply or divide by a time, a count, ...) so both agree."
        }
        "L041" => {
            "A field got a value of the wrong dimension: `power 700 GB`, a memory bandwidth in \
FLOP/s, a count written with a unit, an `efficiency` factor with a unit it does not take.\n\
Fix: write the value in a unit of the dimension the field expects (the message names it)."
        }
        "L042" => {
            "A constant expression divides by zero.\n\
Fix: correct the divisor."
        }
        "L043" => {
            "A value of the wrong kind: a string where a number belongs, a record where a list \
belongs, an item written in the wrong form, a positional argument after a named one.\n\
Fix: write the value in the form the field takes (docs/LANGUAGE.md lists each)."
        }
        "L044" => {
            "A range is empty or reversed, such as `4..2`; ranges include both ends.\n\
Fix: write the smaller bound first."
        }
        "L045" => {
            "A whole number is expected (a count, a layer count, a plan knob) but the value has \
a fraction, such as `2.5`.\n\
Fix: give a whole number."
        }
        "L046" => {
            "A value is outside the range the field allows: a count below 1, a negative \
quantity, `zero` above 3, `top_k` above the number of experts, an efficiency factor out of \
its range (a fraction of peak below 0.001 or above 1; docs/LANGUAGE.md, section 5.2), a knob value above 2^24, or a hardware or fleet \
figure outside its physical range: zero, or far below or above any real part, site or demand \
(`compute` under 1 MFLOP/s, a bandwidth under 1 kB/s, a demand's `within` under 1 s; \
docs/LANGUAGE.md, section 5.2 \"Hardware figures\"), or an `expect` figure of zero (it is \
compared by relative error, which divides by it).\n\
Fix: give a value inside the range the message and its help state."
        }
        "L047" => {
            "A study's sweep is too large: the product of its swept arguments' points is above \
10000 systems, or one linear range (`lo..hi step s`) has more than 10000 points (in a sweep \
or a plan knob). It is reported while checking, before any system is built or planned, so \
an oversized sweep costs nothing (docs/LANGUAGE.md, section 5.9). The label lists the \
points per swept argument.\n\
Fix: narrow the ranges, take larger steps, or list chosen points as a set."
        }
        "L050" => {
            "The shapes of an op's operands do not agree, for example a `linear` whose input \
width is not the layer's input width, or `interact` over vectors of unequal width. The \
labels show both shapes with their symbols.\n\
Fix: make the dimensions agree (reshape, or change the layer's width)."
        }
        "L051" => {
            "A built-in op is called with the wrong arguments, or outside a model, or with an \
empty `dims`, `tables` or `xs`. docs/LANGUAGE.md lists every op with its shape rule.\n\
Fix: call the op as the reference shows."
        }
        "L052" => {
            "A call inside a model names no built-in op and no declared model. The help line \
suggests the closest op.\n\
Fix: correct the name, or declare the model it refers to."
        }
        "L053" => {
            "An op got an operand of the wrong rank (number of dimensions), e.g. a matrix op on \
a vector.\n\
Fix: reshape the operand to the rank the op takes."
        }
        "L054" => {
            "An operand has the wrong element type, for example embedding ids that are not \
integers.\n\
Fix: declare the input with the element type the op needs."
        }
        "L055" => {
            "A dimension does not divide evenly where the op needs it to: `heads` by `kv_heads` \
in grouped-query attention, features by heads.\n\
Fix: choose sizes that divide."
        }
        "L056" => {
            "A `reshape` would change the number of elements.\n\
Fix: make the product of the new dimensions equal the old one."
        }
        "L057" => {
            "The body of a `repeat` changes the shape of a value it carries from one iteration \
to the next, so the iterations cannot chain.\n\
Fix: make the body return the carried value in the shape it received."
        }
        "L058" => {
            "A model declares no `output`, so there is nothing to compute or price.\n\
Fix: add an `output` line."
        }
        "L059" => {
            "A model input has a symbolic dimension (such as `batch` or `seq`) that the workload \
does not bind.\n\
Fix: bind the symbol in the workload's phase (e.g. `train { seq = 2048 }`)."
        }
        "L060" => {
            "A declaration has an item, record field, `host` name or `efficiency` factor its \
kind does not know. The help line suggests the closest known name (`matmull` -> `matmul`).\n\
Fix: correct the name, or remove the field."
        }
        "L061" => {
            "A declaration leaves out a required item (a device's `compute` or `memory`, a \
table's size, ...).\n\
Fix: add the item the message names."
        }
        "L062" => {
            "An item, record field, knob or objective is given twice (an error), or a set \
repeats an element (a warning).\n\
Fix: keep one of them."
        }
        "L063" => {
            "A value that must be one of a fixed set of choices is not one of them: an element \
type, optimizer, activation or `recompute` value. The help line lists the choices.\n\
Fix: use one of the listed choices."
        }
        "L070" => {
            "A workload declares no phase or several: it needs exactly one of `train`, \
`prefill` and `decode`.\n\
Fix: keep one phase per workload; declare several workloads for a mix."
        }
        "L071" => {
            "A workload setting is unknown, or a required one is missing (for example `decode` \
without `context` or `prompt`).\n\
Fix: use the settings docs/LANGUAGE.md lists for the phase."
        }
        "L072" => {
            "A plan or study searches, fixes or pins a knob the planner does not know. The help \
line suggests the closest knob (`tp`, `pp`, `dp`, `cp`, `ep`, `zero`, `recompute`, \
`microbatch`, `virtual_stages`, `sequence_parallel`, `batch`, `shard`).\n\
Fix: correct the knob's name."
        }
        "L073" => {
            "A plan knob is contradictory: `fix` with a range or several values, or a pin \
outside the domain the plan searches.\n\
Fix: fix one value inside the searched domain, or widen the search."
        }
        "L074" => {
            "An objective or constraint names a metric Gantry does not compute. The help line \
suggests the closest metric.\n\
Fix: use one of the metrics in docs/LANGUAGE.md."
        }
        "L075" => {
            "Warning: the weights of a study's workload mix do not sum to 1, so the mix is not \
a distribution and scores are scaled.\n\
Fix: make the weights sum to 1."
        }
        "L076" => {
            "A setting of a `serve` workload is outside its range: an arrival `rate` or \
`cv` not above 0, a length distribution with `lo > hi`, a lognormal `mean` below 1 token or \
a `spread` above 3, an SLO target not above 0, an `attainment` outside (0, 1], a \
`prefix_hit` outside [0, 1), a `memory_utilization` outside (0, 1], a token budget, sequence limit or length above 2^24, more than \
10 million `requests`, or `prompt = trace` / `generate = trace` without trace arrivals. \
The label points at the value.\n\
Fix: give a value in the stated range (docs/LANGUAGE.md §5.7, `serve`)."
        }
        "L080" => {
            "Warning: a model computes a tensor that nothing uses (not an output, not an input \
to another op). It is still priced.\n\
Fix: use it, make it an output, or remove it."
        }
        "L093" => {
            "An `efficiency` record borrows a phase's factors from another device \
(`efficiency { train = H100_96GB }`), but that device declares no factors for the phase: \
neither a `train = { ... }` (or `infer = { ... }`) record nor device-wide factors. \
Borrowing nothing would leave this device at ideal efficiency while reports call it \
calibrated.\n\
Fix: borrow from a device that has a fitted record for the phase (`gantry calibrate --fit` \
writes them), or write the factors here (docs/LANGUAGE.md §5.2, \"Borrowed factors\")."
        }
        "L094" => {
            "An `engine NAME { ... }` declaration has a term the serving iteration model does \
not read (the help names the closest one), or a value outside its range: \
`iteration_overhead`, `seq_overhead`, `request_overhead` and `frontend_time` are times from 0 to 1 s, `kv_efficiency` a \
fraction in (0, 1] (the engine's decode attention relative to the device's `infer` \
factors), `fit_rows` a whole number and `loo_median` / `loo_max` fractions from 0 to 100 \
(what `gantry calibrate --fit` records). A unit that is not the term's is `L041`. The \
label points at the key or the value.\n\
Fix: spell the term as listed, or give a value in its range (docs/LANGUAGE.md §5.10)."
        }
        "L095" => {
            "A `serve` workload's `engine = NAME` does not name an engine declaration: no \
declaration has that name (the help names the closest declared engine), or the name is a \
declaration of another kind (a device, a workload). The label points at the name.\n\
Fix: name an engine declared with `engine NAME { ... }` and import its file \
(stdlib/engines/vllm.gantry), or leave `engine` out for an ideal engine (docs/LANGUAGE.md \
§5.10)."
        }
        "L096" => {
            "A `serve` workload names a request file with `trace(\"file.csv\")` that cannot be \
read (not found relative to the file that names it, not UTF-8, more than 64 MiB) or has a \
malformed row. As `arrivals` each row is `arrival_s,prompt_tokens,generate_tokens`, times \
finite, non-negative and not decreasing; as `prompt` or `generate` (a recorded run's \
lengths, replayed in request order) each row is `prompt_tokens,generate_tokens`, or an \
arrivals trace's three fields with the time ignored. Token counts are whole numbers from 1 \
to 16777216; a first line that is not numbers is a header; `#` lines are comments. The \
message names the line; the label points at the file name.\n\
Fix: give the path relative to the `.gantry` file, or correct the row (docs/LANGUAGE.md \
§5.7)."
        }
        "L097" => {
            "A `serve` workload's `after = NAME` does not name an LLM serving workload: no \
workload has that name, or NAME is a training, prefill or decode workload, or a serving \
workload with a batching window (which keeps no prompts). Or the chain of earlier runs \
(NAME's own `after`, and so on) is longer than 16. `after` says this server ran NAME \
before this workload, on the same requests (request i of each is the same prompt, as \
when a benchmark re-runs one dataset with one seed): the simulator replays NAME's \
requests first on this workload's deployment, unmeasured, and each replica keeps the \
prompts it served in its free KV blocks. A chain that names itself is L037. The label \
points at the name.\n\
Fix: name the `serve` workload that ran before this one on the same server, or leave \
`after` out for a cold server (docs/LANGUAGE.md §5.7)."
        }
        "L098" => {
            "A device declares a memory tier other than `hbm` (`memory sram = 40 MiB @ 10 TB/s`, \
`memory hbm3e = ...`). The cost model reads one device memory, the tier named `hbm` (the \
value form `memory 80 GB @ 3.35 TB/s` is named `hbm`), and the node's `host memory`; any \
other tier is kept in the program but priced nowhere: no capacity, bandwidth or cost is \
read from it. A warning. A device with no `hbm` at all is L061, a second `hbm` L062. The \
label points at the tier's name.\n\
Fix: remove the tier, or name it `hbm` if it is the device memory (docs/LANGUAGE.md §5.2)."
        }
        "L099" => {
            "A device borrows its training factors (`efficiency { train = H100_96GB }`) from a \
device that declares `sfu`, its special-function units' rate, but declares none \
itself. The lender's `attention` factor was fitted with each training pass's softmax \
priced on those units, one exponential per score (docs/COST-MODEL.md §2, \"Fused \
attention\"); the borrower gets the factor and, without `sfu`, a softmax that costs \
nothing, so its fused attention is priced faster than the factor means. A warning. The \
label points at the borrowing.\n\
Fix: declare the device's rate, `sfu 3.87 TFLOP/s` (SMs x 16 results per clock x the \
clock of its bf16 peak) (docs/LANGUAGE.md §5.2)."
        }
        "L081" => {
            "A plan searches or pins `token_budget` or `chunked_prefill`, the serving \
scheduler's knobs, but its workload is not a `serve` workload (or the knob is in a study, \
whose cells price one step, not a request stream). Only the serving planner simulates a \
scheduler. The label points at the knob.\n\
Fix: remove the knob, or plan a `serve` workload (docs/LANGUAGE.md §5.7)."
        }
        "L082" => {
            "A fleet study demands `requests_per_s` of a `serve` workload whose arrivals are \
`closed(...)` (a closed loop of clients, whose rate is whatever the deployment serves) or \
`trace(...)` (replayed from a file the study does not read). A serve pool is sized by the \
serving planner at the demanded rate from drawn arrivals. The label points at the demand.\n\
Fix: give the workload `poisson(...)` or `gamma(...)` arrivals, or size it with `gantry plan` \
(docs/LANGUAGE.md, \"Fleet studies\")."
        }
        "L087" => {
            "A `tolerance` of a plan or study is not a fraction in (0, 1] (`tolerance = 10` \
where `0.1` was meant, a negative or zero value, a value with a unit), or `tolerance = x` is \
written twice. The label points at the value.\n\
Fix: write the relative error `gantry test` allows, e.g. `tolerance = 0.1` for 10% on every \
expected figure, or `tolerance step_time = 0.05` for one (docs/LANGUAGE.md, `expect`)."
        }
        "L088" => {
            "`tolerance METRIC = x` names a figure the plan or study has no `expect` of, so the \
tolerance would apply to nothing (often a misspelt metric). The label points at the name.\n\
Fix: correct the name, add `expect METRIC = value`, or remove the tolerance."
        }
        "L091" => {
            "Warning: a study without `demand` (a weighted workload mix) states an `expect`. Its \
answer is a ranking of systems, not one fleet, so it has no single figure to compare, and the \
`expect` is not read; `cost`, `power` and `devices` are figures of the pooled fleet a \
`demand { ... }` study sizes.\n\
Fix: remove the `expect` (`gantry test` compares a weighted study's whole report with its \
snapshot), or give the study a `demand` and a `site`."
        }
        "L085" => {
            "A `serve` record mixes the two kinds of serving. With `batching = batch_window(...)` \
(recommendation inference: whole requests scored in batched forward passes) the LLM settings \
`prompt`, `generate`, `token_budget`, `max_seqs`, `chunked_prefill`, `async_scheduling`, \
`kv_block`, `prefix_hit`, `memory_utilization` and `disaggregate` have no meaning; without a window, `items` has none. \
The label points at the setting.\n\
Fix: remove the setting, or declare (or remove) the batching window (docs/LANGUAGE.md §5.7, \
\"Batching window\")."
        }
        "L086" => {
            "An SLO target of the other kind of serving: a batching-window workload answers each \
request whole, so its one target is `latency_p99` (`ttft_p99`, `tpot_p99` and `e2e_p99` are \
token-streaming targets); a token-streaming workload has no `latency_p99`. The label points at \
the target.\n\
Fix: write `slo = { latency_p99 = 10 ms }` with a window, or `ttft_p99`/`tpot_p99` without one."
        }
        "L089" => {
            "A plan's `target` names a framework Gantry does not export to. The label points at \
the string.\n\
Fix: use one of \"megatron\", \"torchtitan\", \"torchrec\" or \"trace\" (docs/LANGUAGE.md §5.8), or \
remove the line to search every point."
        }
        "L090" => {
            "A study declares `target`. A study compares systems and fleets; the framework a run \
is launched with belongs to a plan, whose search it restricts.\n\
Fix: move `target \"...\"` into a plan of the workload."
        }
        "C001" => {
            "The design point's degrees multiply to more devices than the system has: dp x tp x \
pp x cp is larger than the cluster's device count. The message names the product and the \
knobs given on the command line.\n\
Fix: lower a degree, or plan on a larger system."
        }
        "C002" => {
            "Tensor parallelism does not divide the attention heads (or key/value heads), or \
sequence parallelism gets a microbatch whose rows do not divide by tp.\n\
Fix: choose a tp that divides the heads (and the rows), or turn sequence parallelism off."
        }
        "C003" => {
            "The global batch is not a multiple of dp x microbatch, so the replicas cannot take \
whole microbatches.\n\
Fix: choose dp and microbatch whose product divides the batch."
        }
        "C004" => {
            "The pipeline stages do not fit the model: more stages (pp, or pp x \
virtual_stages) than layers, or an interleaved schedule whose microbatches per replica are \
not a multiple of pp.\n\
Fix: lower pp or virtual_stages, or change the microbatch count."
        }
        "C005" => {
            "Expert parallelism does not divide the experts of a mixture-of-experts model, so \
the experts cannot be spread evenly over the expert-parallel ranks.\n\
Fix: choose an ep among the divisors of the expert count."
        }
        "C006" => {
            "A `--fix` or `--pin` argument is malformed or out of range: not `knob=value` pairs \
separated by commas, an unknown knob, a value that is not a whole number, zero or \
negative, or one so large that the product of the degrees overflows. Also a `--sweep-rate` \
list that is not 1 to 64 rates from 0.000001 to 1e9, or one given for a `serve` workload with \
closed-loop or burst arrivals, which offer no rate to sweep. Exit code 2 (usage), \
whichever command finds it.\n\
Fix: write pins like `dp=4,tp=8,pp=2,recompute=full,microbatch=1`."
        }
        "C007" => {
            "`--plan` or `--study` names a plan or study the file does not declare, or the file \
declares none. The help line lists the plans the file has. Without `--plan` the first plan \
declared in the file is used (README, \"Which plan runs\").\n\
Fix: use one of the listed names."
        }
        "C008" => {
            "The workload cannot be lowered to the graph the cost model prices, usually because \
a shape symbol of the model is not bound by the workload.\n\
Fix: bind every shape symbol in the workload."
        }
        "C009" => {
            "A device lacks a figure the plan needs: a compute rate for the workload's element \
type, or a memory.\n\
Fix: add the figure to the device (stdlib/hardware), or choose another dtype."
        }
        "C010" => {
            "No design point of the plan's space is feasible: every point needs more memory \
than the devices hold, or misses a `subject to` constraint. With `--fix` it means the \
pinned point is infeasible; the point is still reported, marked INFEASIBLE, and the exit \
code is 1.\n\
Fix: widen the search, relax a constraint, or plan on more or larger devices."
        }
        "C011" => {
            "The search space is too large: over 1,000,000 design points, or one knob over \
65,536 values. The limit bounds the planner's time and memory on any input.\n\
Fix: narrow the plan's `search` ranges, or pin knobs with --pin."
        }
        "C012" => {
            "A pin names a knob the plan cannot use: `batch` on a training plan (the workload \
fixes the global batch), `ep` > 1 on a dense model, `nodes`, or a `shard` that does not divide \
dp x cp or is pinned with zero = 0.\n\
Fix: remove the pin (or choose a divisor of dp x cp with ZeRO on)."
        }
        "C013" => {
            "Warning: a command-line pin (`--fix` or `--pin`) overrides a different value in \
the plan's `fix` block. The command line wins; the warning names both values.\n\
Fix: drop the knob from the command line to use the plan's value, or change the plan."
        }
        "C014" => {
            "The design point sends traffic over a link its node does not declare: \
tensor, context or expert parallelism (or a pipeline inside the node) needs the node's \
scale-up `link`, and traffic between nodes needs its `nic`. Without the link the time \
of that traffic would be infinite; the point is refused and named by its node.\n\
Fix: declare the link (or `nic`) on the node, or pin the degree that needs it to 1."
        }
        "C015" => {
            "A `subject to` constraint or the objective names a metric this plan's workload \
does not have: `ttft` or `tpot` outside serving, a cost metric without a price. It used \
to be treated as met; it is an error so that no constraint is silently ignored.\n\
Fix: constrain a metric of the phase (`gantry explain` lists them in docs/LANGUAGE.md), \
or add the missing figure (a `price`)."
        }
        "C016" => {
            "A result is not a meaningful number: a step time or throughput that is zero, \
negative, infinite or NaN, or a negative or non-finite memory, power or cost. The message \
names the quantity, the point and the hardware figures involved; the result is never \
printed or ranked. A model that does no work at all (no arithmetic and no data moved, \
e.g. `output y = x`) has a step time of 0 s on a device without a `step_overhead`, and the \
message says so.\n\
Fix: correct the hardware figure the message names (a bandwidth, rate or efficiency); for a \
model without work, give it an op that computes or the device a `step_overhead`."
        }
        "C017" => {
            "`gantry calibrate --fit DIR` or `gantry validate --cross DIR` was given a path \
that is not a folder, or a folder whose `.gantry` files state no reference figure. A \
reference row is a plan's `expect metric = value` line; the fit groups the rows by device \
and phase, so without rows there is nothing to fit.\n\
Fix: pass the folder of reference files (`examples/reference`), or add `expect` lines to \
the plans of the folder."
        }
        "C018" => {
            "`gantry calibrate --fit DIR --write` could not put a fitted record into the file \
that declares the device: the file cannot be read or written, it no longer declares the \
device, the device has no `efficiency { ... }` record, or the record is not written as a \
record. Nothing is written to that file; other files are still written.\n\
Fix: declare the device's factors as `efficiency { ... }` in its file (the fit only fits \
factors the record declares), make the file writable, and run the command again."
        }
        "C034" => {
            "`gantry calibrate --fit DIR` could not fit or write a serving engine's terms: \
a serving reference plan that declares the engine searches its deployment (an engine is \
fitted on plans that pin tp, dp and batch, as the published runs did), or, with `--write`, \
the file that declares the engine cannot be read or written, or no longer declares it. \
Nothing is written to that file; other files are still written.\n\
Fix: pin the plan's deployment with `fix`, make the engine's file writable, and run the \
command again."
        }
        "C019" => {
            "No serving configuration the plan searches (tensor parallelism, replicas, \
running-sequence limit, colocated or disaggregated pools) meets the workload's SLOs at the \
required attainment, or every configuration is unstable (requests arrive faster than it \
can serve them, so the queue grows without bound). The message names the closest \
configuration and by how much each SLO fails there (its P99 against the target).\n\
Fix: relax the SLOs or the rate, give the plan more devices (a larger system, `dp = auto`), \
allow larger tensor parallelism, or lower `max_seqs` / `token_budget` to favour latency."
        }
        "C020" => {
            "Retired. The command line used to read a `serve` workload's request trace \
(`arrivals = trace(\"file.csv\")`) and reported an unreadable or malformed one as C020; \
the checker now reads every `trace(\"file.csv\")` file as it reads imports, so the rows \
are part of the checked program that `plan`, `validate` and `calibrate` all evaluate, and \
a bad file is L096 with a source span.\n\
Fix: see `gantry explain L096`."
        }
        "C021" => {
            "`gantry plan --export TARGET` was asked for an artifact the chosen plan cannot be \
written as: a Megatron-LM export of a model that is not transformer-shaped (a DLRM, a \
block without exactly one attention, an activation Megatron has no flag for), of a serving \
(prefill or decode) plan, or of a point Megatron cannot express (an optimizer it lacks, \
ZeRO-2/3 with HSDP replicas); a torchtitan job config of a model that is none of \
torchtitan's registered llama3 flavors (debugmodel, 8B, 70B, 405B), or of a point torchtitan \
cannot run (ZeRO-1, ZeRO-0 with model parallelism, tensor parallelism without sequence \
parallelism, an optimizer other than Adam/AdamW, fp16); a TorchRec plan of a model without embedding-bag tables, or \
with a table that fits nowhere (`unplaced`); a Chrome trace of a step shorter than its 1 ns \
resolution (no slice would remain). The message names the reason; nothing is \
written and the exit code is 1, so no empty or wrong artifact reaches a launcher.\n\
Fix: export the plan to the framework that runs it (`megatron`/`torchtitan`/`trace` for transformers, \
`torchrec` for embedding tables), or pin the knob the message names to a value the \
framework supports."
        }
        "C024" => {
            "The plan declares `target \"FRAMEWORK\"`, and that framework runs none of the plan's \
feasible design points (or not the point pinned with `--fix`/`fix`). Whether a framework runs \
a point is decided by its export (the reasons of `C021`): a DLRM or a serving plan for \
Megatron-LM or torchtitan, a model that is no torchtitan llama3 flavor, ZeRO-1 or tensor \
parallelism without sequence parallelism for torchtitan, ZeRO-2/3 with HSDP replicas for \
Megatron-LM, a model without embedding tables for TorchRec. The message names the reason for \
the first feasible point refused and that point.\n\
Fix: widen the search to points the framework runs (the help names the knob), choose the \
framework that runs the model, or drop `target` to see the best point of any framework."
        }
        "C025" => {
            "A study's `demand` cannot be met: either no system of the sweep meets one \
workload's demand (the message names the workload and the first system's reason: the most a \
training job delivers after failures and its shortfall, a node over the site's rack power, a \
workload that delivers no tokens), or every fleet that meets all demands provisions more power \
than the site's `power_cap` (the message names the cap, the least power a fleet meeting the \
demand provisions, and the shortfall in MW).\n\
Fix: add larger or faster systems to the sweep, relax the demand or its deadline, raise the \
site's `power_cap` or `rack_power`, or widen the plan's search."
        }
        "C030" => {
            "A batching-window serving workload (recommendation inference) runs each replica on \
one device, and the model's weights, embedding tables and the device's reserve do not fit that \
device's memory at a batch of one item. The message gives both sizes.\n\
Fix: use devices with more memory, or a smaller model or tables."
        }
        "C031" => {
            "A batching-window serving plan (or `--fix`) names a knob such a deployment has not: \
a replica is one device (`tp` and `pp` other than 1), and the batching window replaces the \
token scheduler (`token_budget`, `chunked_prefill`). The plan searches `dp` (replicas) and \
`batch` (the largest batch, in items), and the window from the workload's `max_wait`.\n\
Fix: remove the knob (docs/LANGUAGE.md §5.7, \"Batching window\")."
        }
        "C032" => {
            "`gantry study --shard SPEC` cannot run: SPEC is not `I/N` with whole numbers and \
I below N (shards are numbered from 0) and N at most 2^20 (1048576), or it is `env` and neither a Slurm job array's \
SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT (SLURM_ARRAY_TASK_MIN is subtracted) nor a \
Kubernetes Indexed Job's JOB_COMPLETION_INDEX with GANTRY_SHARDS is set. Also reported when a \
shard's results would not read back from JSON as the same numbers (a figure that is not \
finite), since its merge would then differ from the single run. Exit code 2 for the \
arguments, 1 for the results.\n\
Fix: pass `--shard 0/4` .. `--shard 3/4` (or `env` under a launcher, \
examples/launch), and set GANTRY_SHARDS to the Job's `completions`."
        }
        "C033" => {
            "`gantry merge` was given files that are not every shard of one run exactly once: \
a file that cannot be read or is not JSON (the message gives its line and column), another \
document (a merged `gantry.study/1`), a `gantry.shard/1` document with unknown or missing \
fields, a shard count above 2^20, a shard of another run (another source file, `--lib`, `--study`, `--sensitivity`, \
shard count or studies), a shard given twice or missing, a shard holding results that are \
not its own, or a source file whose studies changed since the shards ran (their fingerprint \
differs). Nothing is written and the exit code is 1.\n\
Fix: pass every file of one `gantry study --shard I/N` run, unedited; rerun the shards the \
message names; merge with the file the shards ran (`--source` when it moved)."
        }
        "R001" => {
            "`gantry run` found that the sharded execution differs from the reference \
interpreter by more than the tolerance (`--tolerance`, default 1e-4 relative). The message \
names the first diverging op, device and microbatch. This is a runtime bug or a plan the \
runtime executes wrongly: please report it with the command line. Values that overflow f32 \
to the same infinity on both sides are no difference (the run warns that the reference's \
output is not finite); where the reference's output is not finite the help says so instead, \
since the model overflows f32 at this scale.\n\
Fix: none on the user's side; `--tolerance` only if the difference is rounding."
        }
        "R002" => {
            "The plan does not fit the program being run: degrees, stages or batch that the \
model at its simulated scale cannot take, a file with no plan and no workload, or a \
`--plan-json` whose contents (the `gantry.plan/2` JSON) do not match the file.\n\
Fix: pass pins that fit the simulated model, or the JSON of a plan of this file."
        }
        "R003" => {
            "The runtime does not execute this op, knob or graph shape (the cost model may \
still price it).\n\
Fix: run another design point, or price the plan with `gantry plan` only."
        }
        "R004" => {
            "A `--scale` override (or the plan's `simulate` line) cannot be applied: an unknown \
key, a value that is not a whole number, or one the model does not take.\n\
Fix: use keys the model has as parameters (e.g. `layers=2,d_model=64`)."
        }
        "R005" => {
            "A JIT kernel failed to compile or got mismatched buffers. This is a runtime bug.\n\
Fix: please report it with the command line."
        }
        "R006" => {
            "A simulated device failed or a collective broke down (a device thread panicked, or \
the devices disagreed on a message). The run is stopped.\n\
Fix: please report it with the command line."
        }
        "R007" => {
            "The simulated run would need more memory than `--max-memory` allows (default \
4 GB). The estimate (`exec::footprint`) is an upper bound of what the run allocates, \
from the same shapes, layouts and pipeline schedule the devices use: every device's \
weights (its stage's ops, sharded or replicated over tp, tables by their placement), \
with gradients the parameter gradients and one activation tape per microbatch in flight, \
its current values and their conversions, its inputs; the reference interpreter's \
values (with gradients its tape and gradients); the largest of the three phases \
(reference forward, devices, reference backward), plus a fixed amount per device and \
per process. It is refused before anything is allocated. A tensor whose element count \
overflows (more than 2^61 elements, e.g. `--scale seq=4294967296,batch=4294967296`) is \
refused the same way, before any size is computed from it, and so is a run that would \
execute more than 10^6 op instances (every iteration of every `repeat`, nested repeats \
multiplied, once per microbatch), which memory does not bound, or more than 10^10 \
multiply-adds in a forward pass (products and attention pairs, every `repeat` iteration: \
about a minute; a fused attention at `seq=1000000` keeps no scores, so memory does not \
bound it either). A `--max-memory` above the \
machine's memory is capped at it (with a note): past it an allocation failure would abort \
the process.\n\
Fix: scale the model down with `--scale`, or raise `--max-memory`."
        }
        _ => return None,
    })
}
