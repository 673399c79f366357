"""Writing nets in Python (pycaffe's ``caffe.NetSpec``, ``caffe.layers``, ``caffe.params``).

``L.Convolution(bottom, kernel_size=3, num_output=64)`` makes a layer: keyword arguments go
into the layer's own ``<type>_param`` message when that message has the field (else into the
LayerParameter itself; ``*_param=dict(...)`` names a message explicitly); lists fill repeated
fields, dicts fill messages. ``ntop=`` sets the number of tops (0 returns the layer itself),
``in_place=True`` makes the tops the bottoms. Blobs and layers are named after the NetSpec
attribute they are assigned to, others get ``<Type><k>`` names. ``P.Pooling.MAX`` is
``caffe_pb2.PoolingParameter.MAX``.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from .proto import caffe_pb2

# Layer types whose parameters live in a message not named after them.
_SHARED_PARAMS = {"Deconvolution": "convolution_param", "ImageSegData": "image_data_param"}


def param_name_dict() -> dict[str, str]:
    """Layer type name -> its ``<name>_param`` field (from the schema's ``*Parameter`` messages)."""
    out = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        kind = field.message_type.name if field.message_type is not None else ""
        if field.name.endswith("_param") and kind.endswith("Parameter"):
            out[kind[:-len("Parameter")]] = field.name
    for kind, field in _SHARED_PARAMS.items():
        out.setdefault(kind, field)
    return out


_PARAM_FIELDS = param_name_dict()


def assign_proto(proto, name: str, value) -> None:
    """Set field ``name`` of ``proto`` from Python values: lists -> repeated fields (dicts in
    them -> added messages), dicts -> sub-messages, a single value into a repeated field -> one item."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, (list, tuple)):
        value = [value]
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict):
            for item in value:
                message = field.add()
                for k, v in item.items():
                    assign_proto(message, k, v)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            assign_proto(field, k, v)
    else:
        setattr(proto, name, value)


class Top:
    """One output blob of a layer function (``fn``, output index ``n``)."""

    def __init__(self, fn: "Function", n: int):
        self.fn, self.n = fn, n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer this blob depends on."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, input Tops and parameters."""

    def __init__(self, type_name: str, inputs, params: dict):
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(inp)})")
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    @staticmethod
    def _auto(kind: str, autonames: Counter) -> str:
        autonames[kind] += 1
        return f"{kind}{autonames[kind]}"

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            names[top] = self._auto(top.fn.type_name, autonames)
        return names[top]

    def _name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            names[self] = (self._top_name(self.tops[0], names, autonames) if self.ntop
                           else self._auto(self.type_name, autonames))
        return names[self]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name, bottom=bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(t, names, autonames) for t in self.tops)
        layer.name = self._name(names, autonames)
        own = _PARAM_FIELDS.get(self.type_name)
        for key, value in self.params.items():
            if key.endswith("param") or own is None or not hasattr(getattr(layer, own), key):
                assign_proto(layer, key, value)
            else:
                assign_proto(getattr(layer, own), key, value)
        layers[self] = layer


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter holding every layer needed to compute ``tops``."""
    layers, autonames = OrderedDict(), Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named Tops; ``to_proto()`` names blobs and layers after their attributes."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value) -> None:
        self.tops[key] = value

    def __getitem__(self, key: str):
        return self.tops[key]

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every assigned Top and what it depends on."""
        names = {top: name for name, top in self.tops.items()}
        layers, autonames = OrderedDict(), Counter()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``L.<Type>(*bottoms, **params)``: a Top, a tuple of Tops (ntop > 1) or the layer (ntop=0)."""

    def __getattr__(self, name: str):
        def make(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        return make


class Parameters:
    """``P.<Type>.<NAME>``: an enum value of ``caffe_pb2.<Type>Parameter``."""

    def __getattr__(self, name: str):
        message = getattr(caffe_pb2, name + "Parameter")

        class Param:
            def __getattr__(self, value_name: str):
                return getattr(message, value_name)
        return Param()


layers = Layers()
params = Parameters()
