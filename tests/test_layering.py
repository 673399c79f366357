"""One direction of dependency (issue 21): ``deeplab`` -> ``caffe`` -> ``densecrf``, no cycle between
or inside packages, commands on top; checked on the source (tools/import_graph.py) and by what a
fresh interpreter loads."""
import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import import_graph  # noqa: E402


def test_import_graph_has_no_cycle_and_runs_one_way():
    graph = import_graph.edges(REPO)
    assert import_graph.cycles(graph) == []
    assert import_graph.wrong_way(graph) == []
    assert "caffe.layer.crf" in {a for a, t in graph.items() if "densecrf.torch_backend" in t}  # the one caffe -> densecrf
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "import_graph.py")], capture_output=True, text=True)
    assert proc.returncode == 0 and "0 problem(s)" in proc.stdout, proc.stdout


def test_the_checker_sees_a_cycle_and_an_upward_import():
    graph = {"caffe.a": {"caffe.b"}, "caffe.b": {"caffe.a"}, "densecrf.x": {"caffe.a"},
             "deeplab.crf.batch": {"deeplab.commands.densecrf"}, "deeplab.commands.densecrf": set()}
    assert import_graph.cycles(graph) == [["caffe.a", "caffe.b"]]
    assert import_graph.wrong_way(graph) == ["deeplab.crf.batch -> deeplab.commands.densecrf",
                                             "densecrf.x -> caffe.a"]


def loaded_after(code: str) -> set[str]:
    """Top-level project packages in sys.modules after running ``code`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] "
                           "for m in sys.modules} & {'caffe', 'deeplab', 'densecrf'})))"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_densecrf_loads_neither_caffe_nor_deeplab():
    assert loaded_after("import densecrf, densecrf.params, densecrf.backends, densecrf.lattice, "
                        "densecrf.torch_backend") == {"densecrf"}


def test_caffe_never_loads_deeplab():
    code = ("import importlib, pkgutil, caffe\n"
            "for m in pkgutil.walk_packages(caffe.__path__, 'caffe.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)")
    assert "deeplab" not in loaded_after(code)


def test_readme_layout_is_the_generated_one():
    import layout
    block = layout.readme_block((REPO / "README.md").read_text())
    assert block == layout.table(), "README's layout is stale: python tools/layout.py --readme"
