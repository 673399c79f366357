"""``python -m caffe.layer``: the registered layer types as README's list (Markdown), with the V1
enum name where the old syntax has one. README.md holds this output; tests check they agree."""
from __future__ import annotations


def type_list() -> str:
    """Every registered layer type, sorted, ``Type`` or ``Type (V1_NAME)``, as one Markdown paragraph."""
    from ..prototxt import V1_TYPE_NAMES, _V1
    from . import REGISTRY
    v1 = {name: _V1.LayerType.Name(num) for num, name in V1_TYPE_NAMES.items() if name}
    items = [f"`{t}` ({v1[t]})" if t in v1 else f"`{t}`" for t in sorted(REGISTRY, key=str.lower)]
    return f"{len(items)} layer types: " + ", ".join(items) + "."


if __name__ == "__main__":
    print(type_list())
