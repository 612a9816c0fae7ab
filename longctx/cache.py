"""Per-worker key/value store: the K/V of the tokens this worker keeps, per layer."""


class KVCache:
    """Growable per-layer K/V buffers of shape [B, Hkv, S, D] (post-RoPE).

    `store` sets a layer's contents after prefill; `append` adds tokens at the end (query pass
    and decoding), doubling capacity as needed so decoding does not copy the cache per token.
    """

    def __init__(self):
        self._keys, self._values, self._lengths = {}, {}, {}

    def store(self, layer, keys, values):
        """Replace layer `layer`'s contents with `keys`/`values` [B, Hkv, S, D]."""
        self._keys[layer], self._values[layer] = keys.contiguous(), values.contiguous()
        self._lengths[layer] = keys.shape[2]

    def append(self, layer, keys, values):
        """Append `keys`/`values` [B, Hkv, n, D] after the layer's current tokens."""
        if layer not in self._keys:
            self.store(layer, keys, values)
            return
        length, extra = self._lengths[layer], keys.shape[2]
        if length + extra > self._keys[layer].shape[2]:
            capacity = max(2 * self._keys[layer].shape[2], length + extra, 16)
            self._keys[layer] = _grow(self._keys[layer], length, capacity)
            self._values[layer] = _grow(self._values[layer], length, capacity)
        self._keys[layer][:, :, length : length + extra] = keys
        self._values[layer][:, :, length : length + extra] = values
        self._lengths[layer] = length + extra

    def truncate(self, length):
        """Keep every layer's first `length` tokens (the rest is rolled back); ValueError when a
        layer holds fewer."""
        for layer, current in self._lengths.items():
            if current < length:
                raise ValueError(f"layer {layer} holds {current} tokens, fewer than {length}")
            self._lengths[layer] = length

    def nbytes(self):
        """Bytes of the tokens held (not counting spare capacity)."""
        return sum((self._keys[layer][:, :, :length].numel() + self._values[layer][:, :, :length].numel())
                   * self._keys[layer].element_size() for layer, length in self._lengths.items())

    def get(self, layer):
        """(keys, values) views of the layer's tokens; None, None when nothing is stored."""
        if layer not in self._keys:
            return None, None
        length = self._lengths[layer]
        return self._keys[layer][:, :, :length], self._values[layer][:, :, :length]


def _grow(buffer, length, capacity):
    grown = buffer.new_empty(buffer.shape[:2] + (capacity,) + buffer.shape[3:])
    grown[:, :, :length] = buffer[:, :, :length]
    return grown
