"""Ring schedules: the order in which a worker receives every other worker's K/V block.

Each schedule is a generator yielding (source_rank, block) for all `world` blocks, the local
one first. The transfer of the next block is posted before the current one is yielded, so
the caller's compute on the current block overlaps the communication (double buffering).
`block_shape(rank)` gives the shape of rank's block so receives can be posted in advance.
"""


def single_ring(comm, block, block_shape):
    """Rotate blocks around one ring: send to rank+1, receive from rank-1, world-1 times."""
    world, rank = comm.world, comm.rank
    current, source = block, rank
    for step in range(world):
        pending = None
        if step < world - 1:
            next_source = (rank - step - 1) % world
            pending = comm.exchange(current, block_shape(next_source), (rank + 1) % world, (rank - 1) % world)
        yield source, current
        if pending is not None:
            current, source = pending.wait(), next_source


def double_ring(comm, block, block_shape, inner_size):
    """BurstAttention's two-level ring: inner rings of `inner_size` ranks inside an outer ring.

    Rank r is (node, local) = divmod(r, inner_size). Each outer step hands every rank the
    block of the same local rank one node back (posted at the start of the step, so it hides
    behind inner_size inner steps); the inner ring then rotates those blocks within the node.
    """
    world, rank = comm.world, comm.rank
    if inner_size < 1 or world % inner_size:
        raise ValueError(f"intra size {inner_size} must divide the worker count {world}")
    nodes = world // inner_size
    node, local = divmod(rank, inner_size)

    def rank_of(node_index, local_index):
        return (node_index % nodes) * inner_size + local_index % inner_size

    outer_block, outer_source = block, rank
    for outer in range(nodes):
        outer_pending = None
        if outer < nodes - 1:
            next_outer = rank_of(node - outer - 1, local)
            outer_pending = comm.exchange(outer_block, block_shape(next_outer),
                                          rank_of(node + 1, local), rank_of(node - 1, local))
        current, source = outer_block, outer_source
        for inner in range(inner_size):
            pending = None
            if inner < inner_size - 1:
                next_source = rank_of(node - outer, local - inner - 1)
                pending = comm.exchange(current, block_shape(next_source),
                                        rank_of(node, local + 1), rank_of(node, local - 1))
            yield source, current
            if pending is not None:
                current, source = pending.wait(), next_source
        if outer_pending is not None:
            outer_block, outer_source = outer_pending.wait(), next_outer
