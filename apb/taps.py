"""Pre-RoPE projections of every attention layer, captured with forward hooks.

The attention function only sees post-RoPE q/k; Locret-style retaining heads read the
outputs of `q_proj`, `k_proj` and `v_proj` instead. `ProjectionTaps` hooks those modules of
every attention layer (no modeling code involved) and keeps the latest outputs per layer.
"""

PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def attention_modules(model):
    """{layer_idx: module} for every module of `model` with q_proj, k_proj, v_proj and layer_idx."""
    found = {}
    for module in model.modules():
        if all(hasattr(module, name) for name in PROJECTIONS) and hasattr(module, "layer_idx"):
            found[module.layer_idx] = module
    return found


class ProjectionTaps:
    """Context manager: while active, `taps[layer]` is the (q, k, v) tuple of pre-RoPE projections.

    Each entry is [B, S, heads * head_dim] as the projection returned it (model dtype), from
    the most recent forward. `pop(layer)` hands one layer's entry over and forgets it, so at
    most one layer is held when the consumer pops as it goes. Who uses it: the APB method's
    retaining-heads compressor (prefill) and `apb.train_heads`.
    """

    def __init__(self, model):
        self.model = model
        self.taps = {}
        self._handles = []

    def __enter__(self):
        modules = attention_modules(self.model)
        if not modules:
            raise RuntimeError("no attention module with q_proj/k_proj/v_proj found to hook")
        for layer, module in modules.items():
            for slot, name in enumerate(PROJECTIONS):
                self._handles.append(getattr(module, name).register_forward_hook(self._hook(layer, slot)))
        return self

    def _hook(self, layer, slot):
        def hook(_module, _inputs, output):
            self.taps.setdefault(layer, [None, None, None])[slot] = output

        return hook

    def pop(self, layer):
        """(q, k, v) pre-RoPE projections of `layer` from the current forward; removes them."""
        q, k, v = self.taps.pop(layer)
        return q, k, v

    def __exit__(self, *exc_info):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.taps.clear()
