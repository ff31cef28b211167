"""Input shapes chosen by the user: ``--input-shape NAME:1x3x224x224`` fixes one input's whole shape,
``--dim NAME=VALUE`` fixes a symbolic dimension in every input where it appears, ``--batch B`` is
``--dim`` for the batch dimension. Dimensions nobody fixes stay as the model declares them."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import OptionError

UNNAMED = "?"  # an ONNX dimension with neither a size nor a name (frontend.value_info): free per axis


@dataclass(frozen=True)
class ShapeRequest:
    """What the user asked for; ``resolve`` checks it against the inputs of a model or artefact."""

    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.input_shapes or self.dims)

    def to_json(self) -> dict:
        return {"input_shapes": {k: list(v) for k, v in self.input_shapes.items()}, "dims": dict(self.dims)}


def _size(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise OptionError(f"{option}: {text!r} is not an integer size") from None
    if value < 1:
        raise OptionError(f"{option}: sizes must be positive, got {value}")
    return value


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:1x3x224x224`` -> (name, sizes); ``NAME:`` is a 0-d input. The name may contain ':'."""
    name, sep, sizes = text.rpartition(":")
    option = f"--input-shape {text}"
    if not sep or not name:
        raise OptionError(f"{option}: expected NAME:SIZExSIZE..., e.g. image:1x3x224x224")
    return name, tuple(_size(s, option) for s in sizes.split("x")) if sizes else ()


def parse_dim(text: str) -> tuple[str, int]:
    """``NAME=VALUE`` -> (name, value)."""
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise OptionError(f"--dim {text}: expected NAME=SIZE, e.g. batch=8")
    return name, _size(value, f"--dim {text}")


def request_from_options(input_shapes: list[str] = (), dims: list[str] = ()) -> ShapeRequest:
    """A request from repeated ``--input-shape``/``--dim`` texts; the same name given twice must agree."""
    request = ShapeRequest()
    for option, texts, parse, table in (("--input-shape", input_shapes, parse_input_shape, request.input_shapes),
                                        ("--dim", dims, parse_dim, request.dims)):
        for text in texts:
            name, value = parse(text)
            if table.get(name, value) != value:
                raise OptionError(f"{option} {name!r} given twice, as {table[name]} and {value}")
            table[name] = value
    return request


def symbolic_dims(specs: list[dict]) -> list[str]:
    """The named symbolic dimensions of the inputs, in order of first appearance."""
    names = []
    for spec in specs:
        names += [d for d in spec["shape"] if isinstance(d, str) and d != UNNAMED and d not in names]
    return names


def batch_dim(specs: list[dict]) -> str:
    """The dimension ``--batch`` sets: the symbolic one named like "batch", else the first input's first dim."""
    named = [d for d in symbolic_dims(specs) if "batch" in d.lower()]
    if len(named) == 1:
        return named[0]
    first = specs[0]["shape"][0] if specs and specs[0]["shape"] else None
    if not named and isinstance(first, str) and first != UNNAMED:
        return first
    raise OptionError(f"--batch: cannot tell which dimension is the batch (symbolic dimensions: "
                      f"{', '.join(symbolic_dims(specs)) or 'none'}); use --dim NAME=SIZE or --input-shape")


def with_batch(request: ShapeRequest, specs: list[dict], batch: int | None) -> ShapeRequest:
    """``request`` plus ``--batch``'s ``--dim``; a ``--dim`` naming the same dimension must agree."""
    if batch is None:
        return request
    name, value = batch_dim(specs), _size(str(batch), "--batch")
    if request.dims.get(name, value) != value:
        raise OptionError(f"--batch {value} sets dimension {name!r}, which --dim sets to {request.dims[name]}")
    return ShapeRequest(request.input_shapes, {**request.dims, name: value})


def resolve(specs: list[dict], request: ShapeRequest) -> list[dict]:
    """``specs`` (``[{"name", "shape", "dtype"}]``) with the requested sizes in place of symbolic dims.

    OptionError names the input or dimension at fault: an unknown input or dimension name, a shape of the
    wrong rank, a size that contradicts a fixed dimension, or one dimension given two different sizes.
    """
    by_name = {spec["name"]: spec for spec in specs}
    for name in request.input_shapes:
        if name not in by_name:
            raise OptionError(f"--input-shape {name}: no input named {name!r} (inputs: {', '.join(by_name) or 'none'})")
    known = symbolic_dims(specs)
    for name in request.dims:
        if name not in known:
            raise OptionError(f"--dim {name}: no input has a dimension named {name!r} "
                              f"(symbolic dimensions: {', '.join(known) or 'none'})")
    sizes = dict(request.dims)
    source = {name: f"--dim {name}={value}" for name, value in request.dims.items()}
    for name, shape in request.input_shapes.items():
        declared = by_name[name]["shape"]
        option = f"--input-shape {name}:{'x'.join(map(str, shape))}"
        if len(shape) != len(declared):
            raise OptionError(f"{option}: input {name!r} has {len(declared)} dimensions {declared}, got {len(shape)}")
        for axis, (want, given) in enumerate(zip(declared, shape)):
            if isinstance(want, int) and want != given:
                raise OptionError(f"{option}: dimension {axis} of input {name!r} is fixed to {want}, got {given}")
            if isinstance(want, str) and want != UNNAMED:
                if sizes.get(want, given) != given:
                    raise OptionError(f"{option}: dimension {want!r} is {sizes[want]} from {source[want]}, "
                                      f"this makes it {given}")
                sizes[want], source[want] = given, option
    resolved = []
    for spec in specs:
        given = request.input_shapes.get(spec["name"])
        shape = list(given) if given is not None else [sizes.get(d, d) if isinstance(d, str) else d for d in spec["shape"]]
        resolved.append({**spec, "shape": shape})
    return resolved


def concrete(specs: list[dict], default: int = 1) -> list[dict]:
    """``specs`` with every dimension still symbolic set to ``default``: the shapes of generated inputs."""
    return [{**spec, "shape": [d if isinstance(d, int) else default for d in spec["shape"]]} for spec in specs]
