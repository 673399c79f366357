"""README's layout table, generated from the tree: one row per package folder of ``caffe``,
``deeplab`` and ``densecrf`` with the first sentence of its docstring and its modules.

    python tools/layout.py            # print the table
    python tools/layout.py --readme   # rewrite it in README.md, between the layout markers
"""
from __future__ import annotations

import ast
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("caffe", "deeplab", "densecrf")


def first_sentence(path: pathlib.Path) -> str:
    """The first sentence of a module's docstring, on one line (Markdown pipes escaped)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    para = " ".join(doc.split("\n\n")[0].split())
    m = re.match(r"(.+?\.)(\s|$)", para)
    return (m.group(1) if m else para).replace("``", "`").replace("|", "\\|")


def rows(root: pathlib.Path = REPO) -> list[str]:
    """Markdown rows: `folder/` | first sentence | its modules."""
    out = []
    for pkg in PACKAGES:
        for init in sorted((root / pkg).rglob("__init__.py")):
            folder = init.parent
            modules = sorted(p.stem for p in folder.glob("*.py") if p.name != "__init__.py")
            subs = sorted(f"{d.name}/" for d in folder.iterdir() if (d / "__init__.py").is_file())
            listed = ", ".join(f"`{m}`" for m in modules + subs) or "—"
            out.append(f"| `{folder.relative_to(root)}/` | {first_sentence(init)} | {listed} |")
    return out


def table(root: pathlib.Path = REPO) -> str:
    """The whole generated table."""
    return "\n".join(["| folder | holds | modules and folders |", "|---|---|---|"] + rows(root))


MARKERS = re.compile(r"(<!-- layout: python tools/layout.py -->\n)(.*?)(\n<!-- /layout -->)", re.S)


def readme_block(text: str) -> str | None:
    """The table README.md holds between the layout markers (None without them)."""
    m = MARKERS.search(text)
    return m.group(2) if m else None


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        readme = REPO / "README.md"
        readme.write_text(MARKERS.sub(lambda m: m.group(1) + table() + m.group(3), readme.read_text()))
    else:
        print(table())
