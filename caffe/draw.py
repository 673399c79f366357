"""Nets as Graphviz graphs (pycaffe's ``caffe.draw``): layers are boxes, blobs octagons,
edges run bottom -> layer -> top. The dot text needs nothing; pictures (png, svg, pdf, ...)
are rendered by Graphviz's ``dot`` program when it is installed."""
from __future__ import annotations

import os
import shutil
import subprocess

from . import CaffeError

_TEXT_FORMATS = ("dot", "gv", "raw")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _in_phase(layer, phase) -> bool:
    """Whether a layer's include/exclude rules keep it in ``phase`` (None: every layer)."""
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise ValueError(f"layer {layer.name} has both include and exclude specified")
    keep = not len(layer.include) or any(r.phase == phase for r in layer.include)
    return keep and not any(r.phase == phase for r in layer.exclude)


def _label(layer, display_lrm: bool) -> str:
    lines = [layer.name, f"({layer.type})"]
    p = layer.convolution_param if layer.type in ("Convolution", "Deconvolution") else None
    if p is not None:
        lines.append(f"kernel {list(p.kernel_size)} stride {list(p.stride) or [1]} pad {list(p.pad) or [0]}"
                     + (f" dilation {list(p.dilation)}" if len(p.dilation) else ""))
    elif layer.type == "Pooling":
        q = layer.pooling_param
        lines.append(f"{q.PoolMethod.Name(q.pool)} kernel {q.kernel_size} stride {q.stride} pad {q.pad}")
    if display_lrm:
        lines.extend(f"lr mult {s.lr_mult:g} decay mult {s.decay_mult:g}" for s in layer.param)
    return "\\n".join(s.replace("\\", "\\\\").replace('"', '\\"') for s in lines)


def net_to_dot(caffe_net, rankdir: str = "LR", phase=None, display_lrm: bool = False) -> str:
    """The dot text of a NetParameter (its ``layer`` list; V1 ``layers`` are upgraded on parse)."""
    out = [f"digraph {_quote(caffe_net.name or 'net')} {{", f"  rankdir={rankdir};"]
    for i, layer in enumerate(caffe_net.layer):
        if not _in_phase(layer, phase):
            continue
        node = _quote(f"layer{i}:{layer.name}")
        out.append(f'  {node} [shape=record, style=filled, fillcolor="#6495ED", label="{_label(layer, display_lrm)}"];')
        for b in layer.bottom:
            out.append(f"  {_quote('blob:' + b)} -> {node};")
        for t in layer.top:
            out.append(f'  {_quote("blob:" + t)} [shape=octagon, style=filled, fillcolor="#E0E0E0", label={_quote(t)}];')
            out.append(f"  {node} -> {_quote('blob:' + t)};")
    out.append("}")
    return "\n".join(out) + "\n"


def draw_net(caffe_net, rankdir: str = "LR", ext: str = "png", phase=None, display_lrm: bool = False) -> bytes:
    """The net drawn in format ``ext``: dot text for dot/gv/raw, else rendered by Graphviz."""
    text = net_to_dot(caffe_net, rankdir, phase, display_lrm).encode()
    if ext in _TEXT_FORMATS:
        return text
    dot = shutil.which("dot")
    if dot is None:
        raise CaffeError(f"drawing a .{ext} needs Graphviz's 'dot' program; write a .dot file instead")
    done = subprocess.run([dot, f"-T{ext}"], input=text, capture_output=True)
    if done.returncode:
        raise CaffeError(f"dot -T{ext} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def draw_net_to_file(caffe_net, filename: str, rankdir: str = "LR", phase=None, display_lrm: bool = False) -> None:
    """Write the drawing to ``filename``; its extension picks the format (atomically)."""
    from .util.files import write_bytes_atomic
    ext = os.path.splitext(filename)[1][1:] or "dot"
    write_bytes_atomic(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
