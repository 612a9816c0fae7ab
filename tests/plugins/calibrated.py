"""A plug-in method with a cost coefficient of its own: `longctx plan --calibrate --method
plugins.calibrated:CountingRing` measures it beside the core's, the cost file keeps it, and the
method's planner adds the work it prices to every host's estimate (`method_ms`)."""

from dataclasses import replace

from burst.ring import RingAttention, RingPlanner

COEFFICIENT = "copy_ns_per_row"


class CountingPlanner(RingPlanner):
    """The ring's plan, each host also copying its rows once per layer."""

    def host_work(self, plan, host):
        """The ring's work plus the copy, priced by the calibrated coefficient (default 1 ns per row)."""
        rate = self.cost_model().coeffs.coefficient(COEFFICIENT, 1.0)
        return replace(super().host_work(plan, host), method_ns=host.num_tokens * rate)


class CountingRing(RingAttention):
    """Ring attention whose planner prices a row copy of its own."""

    Planner = CountingPlanner

    @classmethod
    def calibrate_costs(cls, bench):
        """`copy_ns_per_row`: nanoseconds to copy one row of the model's width."""
        rows = max(bench.sizes)
        block = bench.rand(rows, bench.shape.hidden)
        bench.say("row copy")
        return {COEFFICIENT: round(bench.time(block.clone) * 1e9 / rows, 4)}
