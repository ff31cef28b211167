"""`python -m bie_compiler.models [--out DIR] [NAME ...]`: write the named models (default: the
small bundled ones) as DIR/<name>.onnx (DIR defaults to this package's folder) and print each path
with its size. `encoder` and `mobilenet` are the real-model-shaped ones the speed benchmarks use."""

import argparse
from pathlib import Path

from . import MODELS, SPEED_MODELS, write_all


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bie_compiler.models", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output folder")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"models to write (default: {', '.join(MODELS)}; also {', '.join(SPEED_MODELS)})")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in MODELS and n not in SPEED_MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join([*MODELS, *SPEED_MODELS])}")
    for path in write_all(args.out, args.names):
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
