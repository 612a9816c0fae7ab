"""The planning half of a method: its plan for a document and the estimated time of every host.

Pure and host side (no torch, no process group): the driver validates requests with it, every
worker plans with it, `longctx plan` prints it. Each method's package subclasses `Planner`
next to the attention it models (`Method.Planner` names it), overriding `host_work` (what one
host computes and receives per layer, counted from the same helpers the attention runs) and,
for a layout of its own, `build` and `balanced_sizes`.
"""

from longctx.costmodel import CostModel, ModelShape, local_work
from longctx.costs import dtype_bytes, resolve_device_type
from longctx.errors import LongCtxError
from longctx.layouts import get_layout
from longctx.plan import HostPlan, Plan, Span, balanced_block_sizes


class Planner:
    """Plans one method's runs: `check`, `use_model`, then `plan(doc_len, query_len, world)`.

    `config` is the RunConfig (device, dtype, layout, balance, host speeds, cost file) and
    `options` the method's own options (`Method.Options`). `layouts` lists the layouts
    (`longctx.layouts`) the method runs, its default first; `default_balance` is the block
    sizing used when `config.balance` is None ("auto" unless a method says otherwise).
    """

    layouts = ("contiguous",)
    default_balance = "auto"

    def __init__(self, name, config, options=None):
        self.name = name
        self.config = config
        self.options = options
        self.shape = None
        self._cost_model = None

    @property
    def balance(self):
        """This run's block sizing: `config.balance`, else the method's `default_balance`."""
        return self.config.balance or self.default_balance

    @property
    def layout(self):
        """The `Layout` of this run: `config.layout`, else the method's default."""
        return get_layout(self.config.layout or self.layouts[0])

    def check(self, model_config, world):
        """Raise LongCtxError if the method cannot run `model_config` on `world` workers
        (default: only the layout is checked)."""
        name = self.config.layout or self.layouts[0]
        if name not in self.layouts:
            plural = "s" if len(self.layouts) > 1 else ""
            raise LongCtxError(f"method {self.name!r} supports the {' and '.join(self.layouts)} layout{plural} "
                               f"(got --layout {name})")

    def use_model(self, model_config):
        """Plan for this model's shape (layers, widths, heads; the run's dtype). Without it the
        cost model assumes `ModelShape()` (Llama-3.1-8B)."""
        device = resolve_device_type(self.config.device)
        self.shape = ModelShape.from_config(model_config, dtype_bytes(self.config.dtype, device))
        self._cost_model = None
        return self

    def cost_model(self):
        """The `CostModel` plans are estimated and balanced with (built once per planner)."""
        if self._cost_model is None:
            self._cost_model = CostModel.for_config(self.config, self.shape)
        return self._cost_model

    def plan(self, doc_len, query_len, world):
        """The estimated plan for a document of `doc_len` tokens on `world` hosts.

        With `balance` "auto" on a resizable layout the blocks are also sized for equal
        estimated times; the balanced plan is run if it is not slower by the estimate than the
        equal split. `details["balance"]` says which (`describe`).
        """
        equal = self.estimate(self.build(doc_len, query_len, world))
        balanced = None
        if self.balance == "auto" and world > 1 and self.layout.resizable:
            balanced = self.estimate(self.build(doc_len, query_len, world,
                                                self.balanced_sizes(doc_len, query_len, world)))
        plan = balanced if balanced is not None and balanced.critical_ms <= equal.critical_ms else equal
        self.describe(plan, equal, balanced)
        return plan

    def build(self, doc_len, query_len, world, sizes=None):
        """The validated, not yet estimated plan: the layout's hosts (contiguous blocks of
        `sizes` when given)."""
        if doc_len < 1:
            raise LongCtxError("the document is empty")
        layout = self.layout
        hosts = [HostPlan(rank, spans) for rank, spans in enumerate(layout.hosts(doc_len, world, sizes))]
        return Plan(self.name, doc_len, query_len, world, hosts, layout=layout.name).validate()

    def balanced_sizes(self, doc_len, query_len, world):
        """Contiguous block sizes giving every host the same estimated time (`config.host_speeds`,
        block boundaries on the kernel tile), each host estimated by `host_work` on `trial`."""
        model = self.cost_model()

        def host_ms(rank, start, size):
            return model.host_ms(self.host_work(*self.trial(doc_len, query_len, world, rank, start, size)))

        return balanced_block_sizes(doc_len, world, host_ms, tile=model.coeffs.tile, speeds=model.speeds)

    def trial(self, doc_len, query_len, world, rank, start, size):
        """(plan, host) standing for host `rank` owning [start, start + size) while blocks are
        sized: stand-in hosts hold the tokens before and after it."""
        host = HostPlan(rank, (Span(start, start + size),))
        before, after = HostPlan(-1, (Span(0, start),)), HostPlan(-1, (Span(start + size, doc_len),))
        hosts = [other for other in (before, host, after) if other is host or other.num_tokens]
        return Plan(self.name, doc_len, query_len, world, hosts), host

    def describe(self, plan, equal, balanced):
        """Record in `plan.details["balance"]` how its tokens were balanced."""
        layout = self.layout
        if not layout.resizable:
            label, note = f"{layout.name} layout", None
            if len(set(self.config.host_speeds or ())) > 1:
                note = (f"host speeds size contiguous blocks only; the {layout.name} layout is not "
                        f"resized for them (use --layout contiguous)")
        else:
            resized = plan is balanced and plan.block_sizes() != equal.block_sizes()
            label, note = ("auto" if resized else "equal"), None
        plan.details = {"balance": label, **({"note": note} if note else {}), **plan.details}

    def host_work(self, plan, host):
        """`HostWork` of `host` in one layer. Default: causal attention over its own tokens, no communication."""
        return local_work(host.spans, self.cost_model().shape)

    def estimate(self, plan):
        """Fill every host's `est_ms` (and `plan.details["estimate"]`) from the cost model; returns the plan."""
        return self.cost_model().annotate(plan, [self.host_work(plan, host) for host in plan.hosts])
