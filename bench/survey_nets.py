"""Survey a folder of public Caffe net definitions: which of them this engine builds.

    .venv/bin/python bench/survey_nets.py /tmp/survey --out /tmp/survey.json [--size 500 | --size 360x480]

Every ``*.prototxt`` under the folder is read (files that are solvers are counted and
skipped); for the TRAIN and TEST phases the script lists the layer types the engine lacks
(``deeplab.netinfo.missing_types``) and, where none is missing, builds the net on PyTorch's
``meta`` device with ``deeplab.netinfo.net_info`` (no weights allocated, nothing run) and
records the parameter count and the output blobs' shapes. It prints a markdown table and
writes the JSON record to ``--out``.

Nothing outside the prototxt is read or run, so what needs a file or user code is replaced
before the build, and the JSON says what was replaced:

- ``${NAME}`` placeholders get dummies (``NUM_LABELS`` 21, other numbers 1, strings "x");
- data layers that read files (Data, ImageData, WindowData, and Python layers without
  bottoms, i.e. user data layers such as FCN's voc_layers) become Input layers: the image
  top N x 3 x H x W (H x W: the layer's crop_size or new size, else ``--size``), a label top
  N (classification sources) or N x 1 x H x W (Python / segmentation data); MNIST and
  CIFAR sources get their known 1x28x28 and 3x32x32;
- ImageSegData without a crop or new size gets ``--size`` as its new size;
- HDF5Data is not built (its row shapes are only in the HDF5 files); other Python layers
  (with bottoms) are user code and are not run: they count as missing ``Python(module.layer)``.

A file that does not parse (fork-only fields such as SegNet's ``upsample_param``) is scanned
for its layers' ``type`` values instead, so its missing types are still counted.

``--netinfo`` then runs the ``deeplab-netinfo`` command (a child process, as a user would) on
every net phase that built above or that needs only its data (HDF5Data), passing ``--input
TOP=SHAPE`` for each top of each data layer that reads data (the shapes of the stand-ins
above; HDF5 rows of BVLC's hdf5_classification example: 4 features and a scalar label) and
``--set NAME=VALUE`` for the placeholders that change the net (the ones that only name files
netinfo fills itself). It records each run's exit status, its error line and whether its
parameter count equals the survey's, prints the failures and the counts, and writes the
records beside ``--out`` (``NAME.netinfo.json``):

    .venv/bin/python bench/survey_nets.py /tmp/survey --size 360x480 --out /tmp/survey.json --netinfo
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import traceback
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from caffe import CaffeError  # noqa: E402
from caffe.prototxt import fill_placeholders, placeholders, split_comment  # noqa: E402

FILE_DATA = {"Data", "ImageData", "WindowData", "DenseImageData"}
# dataset name in the source -> C, H, W (first match; the siamese example stores MNIST pairs)
KNOWN_SOURCES = {"siamese": (2, 28, 28), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}
IMAGE_TOPS = {"data", "color", "hha", "image", "img"}
# HDF5 sources whose row shapes are known (BVLC's examples/brewing-logreg.ipynb writes 4 features
# per row and a scalar label); other HDF5 tops get the image / label stand-in shapes.
KNOWN_HDF5_ROWS = {"hdf5_classification": {"data": (4,), "label": ()}}
_SOLVER_KEYS = re.compile(r"^\s*(base_lr|lr_policy|max_iter|train_net|test_iter|snapshot_prefix)\s*:", re.M)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}]|[A-Za-z_][\w.]*\s*:?|[^\s{}]+')


def is_solver(text: str) -> bool:
    """Whether the text sets a solver field (base_lr, max_iter, ...) at the top level."""
    depth = 0
    for line in text.splitlines():
        code = split_comment(line)[0]
        if depth == 0 and _SOLVER_KEYS.match(code):
            return True
        depth += code.count("{") - code.count("}")
    return False


def dummy_mapping(text: str) -> dict[str, str]:
    """Values for the file's ``${NAME}`` placeholders: 21 classes, 1 for other numbers, "x" in strings."""
    mapping = {}
    for name, fields in placeholders(text).items():
        if name == "NUM_LABELS":
            mapping[name] = "21"
        else:
            mapping[name] = "1" if "" in fields else "x"
    return mapping


def scan_types(text: str) -> list[tuple[str, str]]:
    """(name, type) of each top-level ``layer``/``layers`` block, read from the text alone
    (for files the schema refuses); V1 enum types come back upper case, e.g. ``UPSAMPLE``."""
    code = "".join(split_comment(line)[0] + "\n" for line in text.splitlines())
    found, depth, key, block, name, kind, pending = [], 0, None, False, "", "", None
    for tok in _TOKEN.findall(code):
        tok = tok.strip()
        if tok == "{":
            if depth == 0 and pending in ("layer", "layers"):
                block, name, kind = True, "", ""
            depth += 1
            pending = None
        elif tok == "}":
            depth -= 1
            if depth == 0 and block:
                found.append((name, kind))
                block = False
        elif tok.endswith(":"):
            key = tok[:-1].strip()
            pending = key
        elif depth == 1 and block and key in ("name", "type"):
            value = tok.strip("\"'")
            if key == "name":
                name = value
            else:
                kind = value
            key = None
        else:
            pending = tok
            key = None
    return found


def _v1_type_name(kind: str) -> str:
    """An upper-case V1 enum name -> the V2 type string where the upgrade knows it."""
    from caffe.proto import caffe_pb2 as pb
    from caffe.prototxt import V1_TYPE_NAMES
    try:
        return V1_TYPE_NAMES.get(pb.V1LayerParameter.LayerType.Value(kind), kind)
    except ValueError:
        return kind


def feed_inputs(param, size: tuple[int, int]) -> list[str]:
    """Replace the file-reading data layers of ``param`` (in place) by Input layers, as the
    module doc says; returns one line per replacement."""
    from caffe.proto import caffe_pb2 as pb
    notes = []
    for lp in param.layer:
        if lp.type == "ImageSegData":
            tp, ip = lp.transform_param, lp.image_data_param
            if not tp.crop_size and not (ip.new_height and ip.new_width):
                ip.new_height, ip.new_width = size
                notes.append(f"{lp.name}: ImageSegData new size {size[0]}x{size[1]}")
            continue
        user_data = lp.type == "Python" and not len(lp.bottom)
        if lp.type not in FILE_DATA and not user_data:
            continue
        shapes, what = _data_shapes(lp, size, user_data)
        keep = pb.LayerParameter()
        keep.CopyFrom(lp)
        lp.Clear()
        lp.name, lp.type = keep.name, "Input"
        lp.top.extend(keep.top)
        for rule in keep.include:
            lp.include.add().CopyFrom(rule)
        for rule in keep.exclude:
            lp.exclude.add().CopyFrom(rule)
        if keep.HasField("phase"):
            lp.phase = keep.phase
        for s in shapes:
            lp.input_param.shape.add().dim.extend(s)
        notes.append(f"{keep.name}: {what} -> Input " + ", ".join(
            f"{t} {'x'.join(map(str, s))}" for t, s in zip(keep.top, shapes)))
    return notes


def _data_shapes(lp, size: tuple[int, int], user_data: bool):
    """Top shapes an Input stand-in for data layer ``lp`` gets, and a word on where from."""
    tp = lp.transform_param
    n = 1
    h, w = size
    c = 3
    if user_data:
        what = f"Python {lp.python_param.module}.{lp.python_param.layer}"
        shapes = [(n, 3 if t.lower() in IMAGE_TOPS or i == 0 else 1, h, w) for i, t in enumerate(lp.top)]
        return shapes, what
    if lp.type == "DenseImageData":  # SegNet's: image and a full-size label (divided by label_divide_factor)
        p = lp.dense_image_data_param
        n = int(p.batch_size) or 1
        if p.crop_height and p.crop_width:
            h, w = int(p.crop_height), int(p.crop_width)
        elif p.new_height and p.new_width:
            h, w = int(p.new_height), int(p.new_width)
        f = int(p.label_divide_factor) or 1
        return [(n, 3, h, w), (n, 1, h // f, w // f)][:len(lp.top)], f"DenseImageData ({p.source or 'no source'})"
    sub = {"Data": lp.data_param, "ImageData": lp.image_data_param, "WindowData": lp.window_data_param}[lp.type]
    n = int(getattr(sub, "batch_size", 0)) or 1
    source = getattr(sub, "source", "")
    known = next((v for k, v in KNOWN_SOURCES.items() if k in source.lower()), None)
    crop = int(tp.crop_size) or int(getattr(sub, "crop_size", 0))
    if crop:
        h = w = crop
    elif lp.type == "ImageData" and lp.image_data_param.new_height and lp.image_data_param.new_width:
        h, w = int(lp.image_data_param.new_height), int(lp.image_data_param.new_width)
    elif known:
        c, h, w = known
    if known and not crop:
        c = known[0]
    what = f"{lp.type} ({source or 'no source'})"
    shapes = [(n, c, h, w)] + [(n,)] * (len(lp.top) - 1)
    return shapes, what


def survey_file(path: str, size: tuple[int, int]) -> dict:
    """The survey record of one prototxt (see the module doc)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    rec = {"path": path, "kind": "net"}
    if is_solver(text):
        rec["kind"] = "solver"
        return rec
    mapping = dummy_mapping(text)
    rec["placeholders"] = sorted(mapping)
    param, text, dropped, error = parse_dropping(text, mapping, path)
    if param is None:
        return _unparsed(rec, text, error, dropped)
    rec["dropped_fields"] = sorted(set(dropped))
    if not len(param.layer):
        rec["kind"] = "empty"
        return rec
    rec["name"] = param.name
    rec["syntax"] = "V1" if re.search(r"^\s*layers\s*\{", text, re.M) else "V2"
    rec["layers"] = len(param.layer)
    rec["inputs_fed"] = feed_inputs(param, size)
    rec["phases"] = {ph: survey_phase(param, ph) for ph in ("TRAIN", "TEST")}
    return rec


def parse_dropping(text: str, mapping: dict, path: str):
    """(NetParameter or None, text, dropped field names, last error): the file parsed with its
    placeholders filled, dropping the fields the schema refuses (at most 20)."""
    from caffe.prototxt import parse_net
    dropped = []
    while True:
        try:
            return parse_net(fill_placeholders(text, mapping, path), None), text, dropped, None
        except CaffeError as e:
            shorter = drop_unknown_field(text, str(e))
            if shorter is None or len(dropped) >= 20:
                return None, text, dropped, e
            text, field = shorter
            dropped.append(field)


def _unparsed(rec: dict, text: str, error, dropped: list) -> dict:
    """Record of a file the schema refuses: the error and the missing types its text names."""
    from caffe.layer import REGISTRY
    rec["kind"] = "unparsed"
    rec["parse_error"] = str(error).replace("<string>", os.path.basename(rec["path"]))
    rec["dropped_fields"] = sorted(set(dropped))
    missing: dict[str, list[str]] = {}
    unknown_enum = set()
    types = scan_types(text)
    for n, t in types:
        if t.isupper():
            name = _v1_type_name(t)
            if name == t:   # not in our V1 enum: a fork's value
                unknown_enum.add(t)
                camel = "".join(w.capitalize() for w in t.split("_"))
                name = camel if camel in REGISTRY else t
            t = name
        if t not in REGISTRY:
            missing.setdefault(t, []).append(n)
    rec["v1_enum_unknown"] = sorted(unknown_enum)
    rec["missing"] = missing
    rec["layers"] = len(types)
    return rec


_NO_FIELD = re.compile(r':(\d+):(\d+): Message type "[\w.]+" has no field named "(\w+)"')


def drop_unknown_field(text: str, error: str):
    """``text`` without every occurrence of the field the schema refused (a message field
    with its whole block), and the field's name; None when the error is not an unknown field."""
    m = _NO_FIELD.search(error)
    if not m:
        return None
    field = m.group(3)
    out, pos = [], 0
    for line_start, line in _line_starts(text):
        code = split_comment(line)[0]
        for f in re.finditer(r"(?<![\w.])%s\s*:?\s*" % re.escape(field), code):
            a = line_start + f.start()
            if a < pos:
                continue
            b = line_start + f.end()
            if text[b:b + 1] == "{":
                depth = 0
                while b < len(text):
                    depth += {"{": 1, "}": -1}.get(text[b], 0)
                    b += 1
                    if depth == 0:
                        break
            else:
                v = re.match(r'"(?:[^"\\]|\\.)*"|\S+', text[b:])
                b += v.end() if v else 0
            out.append(text[pos:a])
            pos = b
    if not out:
        return None
    out.append(text[pos:])
    return "".join(out), field


def _line_starts(text: str):
    start = 0
    for line in text.splitlines(keepends=True):
        yield start, line
        start += len(line)


def survey_phase(param, phase: str) -> dict:
    """Missing types, and (if none) build result, parameter count and outputs for one phase."""
    from caffe.net import filter_layers, _phase_id
    from deeplab.netinfo import missing_types, net_info
    stages = list(param.state.stage) if param.HasField("state") else []
    kept = filter_layers(param, _phase_id(phase), 0, stages)
    out: dict = {"layers": len(kept)}
    if not any(not len(lp.bottom) for lp in kept):
        out.update(missing={}, builds=None, na="no data or Input layer in this phase")
        return out
    missing = missing_types(kept)
    for lp in kept:
        if lp.type == "Python" and len(lp.bottom):
            key = f"Python({lp.python_param.module}.{lp.python_param.layer})"
            missing.setdefault(key, []).append(lp.name)
        if lp.type == "HDF5Data":
            missing.setdefault("HDF5Data(shapes in files)", []).append(lp.name)
    out["missing"] = missing
    if missing:
        out["builds"] = None
        return out
    try:
        info = net_info(param, phase)
    except CaffeError as e:
        out.update(builds=False, error=str(e))
        return out
    except Exception as e:   # an engine bug, not a user error: keep the traceback's last line
        out.update(builds=False, error=f"ENGINE {type(e).__name__}: {e}",
                   where=traceback.format_exc().strip().splitlines()[-3].strip())
        return out
    # BatchNorm mean/variance/factor values (a blob shared by several layers counts for each)
    stats = sum(layer.params for layer in info.layers if layer.type == "BatchNorm")
    out.update(builds=True, params=info.total_params, batchnorm_statistics=stats,
               inputs={n: list(info.blob(n).shape) for n in info.inputs},
               outputs={n: list(info.blob(n).shape) for n in info.outputs})
    return out


def _phase_cell(ph: dict | None) -> str:
    if ph is None:
        return ""
    if ph.get("builds") is True:
        return f"yes {ph['params'] / 1e6:.2f}M"
    if ph.get("na"):
        return "n/a"
    if ph.get("builds") is False:
        return "NO: " + ph["error"][:90].replace("|", "/")
    return "missing"


def markdown(records: list[dict], root: str) -> str:
    """The per-file table (one row per net file) and the totals."""
    lines = ["| file | layers | missing types | TRAIN | TEST | TEST outputs |", "|---|---|---|---|---|---|"]
    for r in records:
        if r["kind"] == "solver":
            continue
        rel = os.path.relpath(r["path"], root)
        if r["kind"] != "net":
            miss = ", ".join(sorted(r.get("missing", {}))) or "-"
            if r.get("v1_enum_unknown"):
                miss += " (V1 enum values not in the schema: " + ", ".join(r["v1_enum_unknown"]) + ")"
            lines.append(f"| {rel} | {r.get('layers', 0)} | {miss} | does not parse: "
                         f"{r.get('parse_error', r['kind'])[-80:].replace('|', '/')} | | |")
            continue
        ph = r["phases"]
        miss = sorted(set(ph["TRAIN"]["missing"]) | set(ph["TEST"]["missing"]))
        if r.get("dropped_fields"):
            miss.append("(dropped: " + ", ".join(r["dropped_fields"]) + ")")
        outs = ph["TEST"].get("outputs") or {}
        out_text = "; ".join(f"{k} {'x'.join(map(str, v)) or 'scalar'}" for k, v in list(outs.items())[:3])
        lines.append(f"| {rel} | {r['layers']} | {', '.join(miss) or '-'} | {_phase_cell(ph['TRAIN'])} "
                     f"| {_phase_cell(ph['TEST'])} | {out_text} |")
    s = summary(records)
    lines += ["", f"{s['files']} prototxt files: {s['solvers']} solvers, {s['nets']} nets "
              f"({s['unparsed']} do not parse); {s['builds_any']} nets build in at least one phase, "
              f"{s['builds_all']} in every phase they have; {s['missing_any']} need a type the engine lacks; "
              f"{s['errors']} fail to build otherwise.", "", "| missing type | nets |", "|---|---|"]
    lines += [f"| {t} | {k} |" for t, k in s["missing_types"]]
    return "\n".join(lines)


def summary(records: list[dict]) -> dict:
    """Counts over all records: files, nets, builds, and nets blocked per missing type."""
    nets = [r for r in records if r["kind"] in ("net", "unparsed")]
    blocked = Counter()
    builds_any = builds_all = missing_any = errors = 0
    for r in nets:
        if r["kind"] == "unparsed":
            types = set(r.get("missing", {}))
        else:
            phases = r["phases"].values()
            types = set().union(*(p["missing"] for p in phases))
            built = [p.get("builds") for p in phases if p["layers"] and not p.get("na")]
            builds_any += any(b is True for b in built)
            builds_all += bool(built) and all(b is True for b in built)
            errors += any(b is False for b in built)
        missing_any += bool(types)
        blocked.update(types)
    return {"files": len(records), "solvers": sum(r["kind"] == "solver" for r in records),
            "nets": len(nets), "unparsed": sum(r["kind"] == "unparsed" for r in records),
            "builds_any": builds_any, "builds_all": builds_all, "missing_any": missing_any,
            "errors": errors, "missing_types": blocked.most_common()}


def in_netinfo_scope(phase_rec: dict) -> bool:
    """Whether a phase built in the survey or lacks only its data (HDF5Data row shapes)."""
    if phase_rec.get("builds") is True:
        return True
    missing = set(phase_rec.get("missing") or {})
    return phase_rec.get("builds") is None and bool(missing) and missing <= {"HDF5Data(shapes in files)"}


def netinfo_inputs(param, phase: str, size: tuple[int, int]) -> list[str]:
    """``TOP=D0,D1,...`` for every top of the data layers of ``phase`` that read data (the
    survey's stand-in shapes; layers that read nothing to know their shapes get none)."""
    from caffe.net import filter_layers, _phase_id
    from caffe.proto import caffe_pb2 as pb
    from deeplab.netinfo import READS_NOTHING
    copy = pb.NetParameter()
    copy.CopyFrom(param)
    stages = list(copy.state.stage) if copy.HasField("state") else []
    kept = [lp for lp in filter_layers(copy, _phase_id(phase), 0, stages) if not len(lp.bottom) and len(lp.top)]
    args = []
    for lp in kept:
        if lp.type in READS_NOTHING:
            continue
        if lp.type == "HDF5Data":
            p = lp.hdf5_data_param
            n = int(p.batch_size) or 1
            rows = next((v for k, v in KNOWN_HDF5_ROWS.items() if k in p.source), None)
            shapes = [(n,) + rows[t] if rows and t in rows else (n, 3 if i == 0 else 1) + size
                      for i, t in enumerate(lp.top)]
        elif lp.type in FILE_DATA or lp.type == "Python":
            shapes = _data_shapes(lp, size, lp.type == "Python")[0]
        else:
            continue
        args += [f"{t}={','.join(map(str, s))}" for t, s in zip(lp.top, shapes)]
    return args


def netinfo_survey(records: list[dict], size: tuple[int, int], command: str) -> list[dict]:
    """Run ``command`` (deeplab-netinfo) on each in-scope net phase of ``records``; one record each."""
    from deeplab.cli import file_placeholders
    runs = []
    for r in records:
        if r["kind"] != "net":
            continue
        phases = [ph for ph in ("TRAIN", "TEST") if in_netinfo_scope(r["phases"][ph])]
        if not phases:
            continue
        with open(r["path"], encoding="utf-8", errors="replace") as f:
            text = f.read()
        files_only = file_placeholders(r["path"], {})
        sets = {k: v for k, v in dummy_mapping(text).items() if k not in files_only}
        param = parse_dropping(text, dummy_mapping(text), r["path"])[0]
        for ph in phases:
            argv = [r["path"], "--phase", ph, "--json"]
            for top_shape in netinfo_inputs(param, ph, size):
                argv += ["--input", top_shape]
            for k, v in sets.items():
                argv += ["--set", f"{k}={v}"]
            done = subprocess.run([command, *argv], capture_output=True, text=True, timeout=600)
            run = {"path": r["path"], "phase": ph, "argv": argv[1:], "rc": done.returncode}
            err = [line for line in done.stderr.splitlines() if not line.startswith("note:")]
            if done.returncode == 0:
                params = json.loads(done.stdout)["total_params"]
                run["params"] = params
                run["survey_params"] = r["phases"][ph].get("params")
            else:
                run["error"] = err[-1] if err else f"exit {done.returncode}, no message"
                run["traceback"] = any(line.startswith("Traceback") for line in err)
            runs.append(run)
    return runs


def netinfo_report(runs: list[dict], root: str) -> str:
    """Failures, parameter-count disagreements and the counts of a netinfo_survey."""
    nets = sorted({r["path"] for r in runs})
    ok = {p for p in nets if all(r["rc"] == 0 for r in runs if r["path"] == p)}
    lines = []
    for r in runs:
        rel = os.path.relpath(r["path"], root)
        if r["rc"] != 0:
            lines.append(f"FAIL {rel} {r['phase']}: {r['error']}{' (TRACEBACK)' if r['traceback'] else ''}")
        elif r["survey_params"] is not None and r["params"] != r["survey_params"]:
            lines.append(f"DIFF {rel} {r['phase']}: netinfo {r['params']:,} parameters, survey {r['survey_params']:,}")
    lines.append(f"deeplab-netinfo: {len(nets)} nets ({len(runs)} net phases) in scope; {len(ok)} nets build in "
                 f"every phase ({sum(r['rc'] == 0 for r in runs)} phases); {len(nets) - len(ok)} fail in some phase.")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    """``500`` -> (500, 500); ``360x480`` -> (360, 480)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected H or HxW in pixels, got {text!r}")
    return int(parts[0]), int(parts[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="folder searched for *.prototxt files")
    ap.add_argument("--out", required=True, help="JSON file written with one record per file")
    ap.add_argument("--size", type=_size, default=(500, 500),
                    help="H x W (or one number for both) of data layers whose size is not in the file (default 500)")
    ap.add_argument("--netinfo", action="store_true",
                    help="then run deeplab-netinfo on every net phase that builds or lacks only data (module doc)")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(args.folder) for f in fs if f.endswith(".prototxt"))
    if not paths:
        print(f"error: no *.prototxt under {args.folder}", file=sys.stderr)
        return 2
    records = [survey_file(p, args.size) for p in paths]
    print(markdown(records, args.folder))
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"folder": os.path.abspath(args.folder), "size": args.size, "summary": summary(records),
                   "files": records}, f, indent=1)
    os.replace(tmp, args.out)
    if args.netinfo:
        command = os.path.join(os.path.dirname(sys.executable), "deeplab-netinfo")
        runs = netinfo_survey(records, args.size, command)
        print(netinfo_report(runs, args.folder))
        out = os.path.splitext(args.out)[0] + ".netinfo.json"
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"folder": os.path.abspath(args.folder), "size": args.size, "runs": runs}, f, indent=1)
        os.replace(out + ".tmp", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
