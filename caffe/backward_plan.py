"""Which bottoms get a gradient: Caffe's Net::Init bookkeeping (net.cpp) for the engine's Net.

The Net passes a bottom to its layer detached where Caffe would compute no diff for it, so
what autograd leaves in ``.grad`` is what Caffe leaves in ``diff``; learnable blobs whose every
user has lr_mult 0 get no gradient unless ``force_backward``.
"""
from __future__ import annotations


def plan_backward(net) -> None:
    """Caffe's Net::Init bookkeeping of which bottoms get a gradient, as bottom_need_backward
    (per layer, per bottom) and layer_need_backward. A bottom needs one if its blob does
    (made by a layer with a bottom needing one or a learnable blob with lr_mult != 0),
    unless ``propagate_down`` says otherwise; then, from the last layer back, a layer that
    feeds no loss, or all of whose tops' readers skip back-propagation, needs none;
    ``force_backward`` turns every bottom on (not a loss layer's labels). A blob read by
    several layers goes through Caffe's implicit Split, which needs the blob's own need.
    Sets ``layer_need_backward``, ``bottom_need_backward``, ``param_need_backward`` and
    ``bottom_receives_diff`` on ``net``: the one implementation that the engine and
    pycaffe's Net both run by."""
    blob_need: dict[int, bool] = {}
    need, bottom_need = [], []
    for layer, (_, bottoms, tops) in zip(net.layers, net._values):
        flags = list(layer.param.propagate_down)
        layer_need = any(blob_need.get(v, False) for v in bottoms)
        layer_need |= any(_lr_mult(layer, k) != 0 for k in range(len(layer.blobs)))
        bottom_need.append([bool(flags[j]) if flags else blob_need.get(v, False) for j, v in enumerate(bottoms)])
        need.append(layer_need)
        for v in tops:
            blob_need[v] = layer_need
    feeding: set[int] = set()   # layers that contribute to the loss
    under_loss: set[int] = set()
    skip: set[int] = set()
    split_need: dict[int, bool] = {}   # value id -> its implicit Split's bottom need
    readers = net._readers
    for i in range(len(net.layers) - 1, -1, -1):
        layer, (_, bottoms, tops) = net.layers[i], net._values[i]
        for v in tops:      # every reader of v is done: settle v as Caffe's Split would
            edges = [(r, j) for r in readers.get(v, []) for j, b in enumerate(net._values[r][1]) if b == v]
            loss_edge = v in net._explicit_loss
            feeds_loss = any(r in feeding for r, _ in edges)
            edge_skip = [not bottom_need[r][j] for r, j in edges]
            if len(edges) + loss_edge >= 2:
                contributes = loss_edge or feeds_loss
                all_skip = not loss_edge and all(edge_skip)
                split_need[v] = blob_need.get(v, False) and contributes and not all_skip
                if contributes:
                    under_loss.add(v)
                if not split_need[v]:
                    skip.add(v)
            elif edges:
                if feeds_loss:
                    under_loss.add(v)
                if edge_skip[0]:
                    skip.add(v)
        contributes = any(layer.top_loss) or any(v in under_loss for v in tops)
        if need[i] and all(v in skip for v in tops):
            need[i] = False
            bottom_need[i] = [False] * len(bottoms)
        if not contributes:
            need[i] = False
            bottom_need[i] = [False] * len(bottoms)
        else:
            feeding.add(i)
    if net.force_backward:
        for i, layer in enumerate(net.layers):
            need[i] = True
            bottom_need[i] = [n or layer.allow_force_backward(j) for j, n in enumerate(bottom_need[i])]
        split_need = {v: True for v in split_need}
    net.layer_need_backward = need
    net.bottom_need_backward = bottom_need
    net.backward_refusals = {i: msg for i, layer in enumerate(net.layers)
                             if need[i] and (msg := _refusal(layer, bottom_need[i]))}
    # Layer::param_propagate_down: a learnable blob gets a diff when its own ParamSpec has
    # lr_mult != 0, or under force_backward (only in a layer that runs backward at all).
    net.param_need_backward = [[net.force_backward or _lr_mult(layer, k) != 0 for k in range(len(layer.blobs))]
                               for layer in net.layers]
    # What reaches the bottom's blob: its own flag and the Split in front of it (if any)
    # both say so. The engine detaches the other bottoms; pycaffe writes diffs only here.
    net.bottom_receives_diff = [[bottom_need[i][j] and split_need.get(v, True) for j, v in enumerate(bottoms)]
                                for i, (_, bottoms, _) in enumerate(net._values)]
    learned = _learned_blobs(net)
    for layer, i in net._owned:   # Caffe computes no diff for lr_mult 0 unless force_backward
        layer.blobs[i].requires_grad_(net.force_backward or id(layer.blobs[i]) in learned)


def _refusal(layer, bottom_need: list) -> str | None:
    """Why Caffe's Backward of ``layer`` would abort with these bottoms needing a diff, or None."""
    refused = layer.no_gradient_to
    for j, needed in enumerate(bottom_need):
        why = refused.get("*") or refused.get(j) or (refused.get(-1) if j == len(bottom_need) - 1 else None)
        if needed and why:
            return str(layer.error(f"cannot backpropagate to bottom {j} ({why}); BVLC Caffe aborts in Backward "
                                   "here (use propagate_down: false, or no force_backward)"))
    return None


def _lr_mult(layer, k: int) -> float:
    """The lr_mult of ``layer``'s learnable blob ``k`` (1 without a ParamSpec)."""
    specs = layer.param.param
    return float(specs[k].lr_mult) if k < len(specs) else 1.0


def _learned_blobs(net) -> set[int]:
    """The ids of the learnable blobs that some layer sharing them learns (lr_mult != 0), in
    one pass over the layers."""
    return {id(b) for layer in net.layers for k, b in enumerate(layer.blobs) if _lr_mult(layer, k) != 0}
