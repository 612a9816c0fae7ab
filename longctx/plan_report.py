"""`longctx plan`: a method's plan with equal and balanced blocks, side by side, with estimates.

Host side only: no workers, no weights (the model shape comes from a config file or from
flags). `plan_report` builds the JSON-ready report, `format_plan_report` the text table.
"""

from types import SimpleNamespace

from longctx.costmodel import ModelShape, imbalance
from longctx.registry import method_class

BALANCE_CHOICES = ("equal", "auto")


def shape_config(shape):
    """A minimal Hugging Face-like config object for a `ModelShape` (what `Planner.check` reads)."""
    return SimpleNamespace(
        num_hidden_layers=shape.layers, hidden_size=shape.hidden, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, intermediate_size=shape.intermediate,
        model_type="shape",
    )


def plan_one(config, model_config, doc_len, query_len):
    """(planner, estimated Plan) of `config` (a RunConfig) for `model_config`."""
    planner = method_class(config.method).planner_for(config)
    planner.check(model_config, config.nproc)
    planner.use_model(model_config)
    return planner, planner.plan(doc_len, query_len, config.nproc)


def plan_report(config, model_config, doc_len, query_len, balances=BALANCE_CHOICES):
    """JSON-ready report: one plan summary per balance in `balances`, their critical paths
    (slowest host's estimate), mean host estimates and imbalance (critical / mean)."""
    report = {"method": config.method, "doc_len": doc_len, "query_len": query_len, "world": config.nproc,
              "plans": {}, "critical_ms": {}, "mean_ms": {}, "imbalance": {}}
    for balance in balances:
        _, plan = plan_one(config.replace(balance=balance), model_config, doc_len, query_len)
        report["plans"][balance] = plan.summary()
        report["critical_ms"][balance] = plan.critical_ms
        report["mean_ms"][balance] = round(plan.mean_ms, 4)
        report["imbalance"][balance] = round(imbalance(plan.estimates()), 4)
        report["estimate"] = plan.details["estimate"]
    if set(BALANCE_CHOICES) <= set(balances) and report["critical_ms"]["auto"]:
        report["speedup"] = round(report["critical_ms"]["equal"] / report["critical_ms"]["auto"], 4)
    return report


def format_ranges(spans):
    """Spans as slices: contiguous 'start:stop', strided 'start:stop:step', comma-separated."""
    return ",".join(f"{start}:{stop}" if step == 1 else f"{start}:{stop}:{step}" for start, stop, step in spans)


def _columns(host):
    return [format_ranges(host["spans"]), str(host["tokens"]), str(host.get("anchor_len", 0)),
            str(host.get("passing_len", 0)), f"{host['est_ms']:.1f}"]


def _how(balance):
    """Words for a plan's `details["balance"]`."""
    return {"equal": "equal blocks", "auto": "balanced blocks"}.get(balance, balance)


def format_plan_report(report):
    """The report as text: header, per-host table (one column group per plan), critical paths."""
    estimate = report["estimate"]
    shape = estimate["shape"]
    balances = list(report["plans"])
    first = report["plans"][balances[0]]
    lines = [
        f"{report['method']}: {report['doc_len']} document tokens + {report['query_len']} question tokens "
        f"on {report['world']} hosts",
        f"model shape: {shape['layers']} layers, hidden {shape['hidden']}, {shape['heads']} heads / "
        f"{shape['kv_heads']} KV heads x {shape['head_dim']}, MLP {shape['intermediate']}, "
        f"{shape['dtype_bytes']} bytes per value",
        f"costs: {estimate['device']} ({estimate['costs']})"
        + (f"; host speeds {','.join(f'{s:g}' for s in estimate['host_speeds'])}" if estimate["host_speeds"] else ""),
    ]
    if "anchor_len" in first:
        lines.append(f"anchor l_a {first['anchor_len']}, passing l_p {first['passing_len']} per host")
    heads = ["range", "tokens", "anchor", "passing", "est ms"]
    rows = [[_columns(report["plans"][balance]["hosts"][rank]) for balance in balances]
            for rank in range(report["world"])]
    widths = [[max(len(heads[i]), *(len(row[g][i]) for row in rows)) for i in range(len(heads))]
              for g in range(len(balances))]

    def group(cells, g):
        return "  ".join(cell.rjust(widths[g][i]) if i else cell.ljust(widths[g][i]) for i, cell in enumerate(cells))

    titles = [f"--balance {balance}: {_how(report['plans'][balance].get('balance', balance))}" for balance in balances]
    lines.append("      " + " | ".join(title.ljust(len(group(heads, g))) for g, title in enumerate(titles)))
    lines.append("rank  " + " | ".join(group(heads, g) for g in range(len(balances))))
    for rank, row in enumerate(rows):
        lines.append(f"{rank:>4}  " + " | ".join(group(cells, g) for g, cells in enumerate(row)))
    for balance in balances:
        lines.append(f"{balance:>5}: critical path {report['critical_ms'][balance]:.1f} ms, mean host "
                     f"{report['mean_ms'][balance]:.1f} ms, imbalance {report['imbalance'][balance]:.3f} "
                     f"(+{(report['imbalance'][balance] - 1) * 100:.1f}% over the mean)")
    if "speedup" in report:
        lines.append(f"balanced critical path: {report['speedup']:.3f}x shorter than the equal split's")
    return "\n".join(lines)


def shape_from_args(args, dtype_bytes):
    """ModelShape from `--model DIR` (config only) or the shape flags; returns (shape, model_config)."""
    if args.model:
        from longctx.models import check_model_dir

        from longctx.models.hub import resolve_model

        model_config = check_model_dir(resolve_model(args.model, args.revision), args.family, args.rope_scaling)
        return ModelShape.from_config(model_config, dtype_bytes).validate(), model_config
    shape = ModelShape(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                       head_dim=args.head_dim, intermediate=args.intermediate, dtype_bytes=dtype_bytes).validate()
    return shape, shape_config(shape)
