"""`python -m bie_compiler.models [--out DIR] [NAME ...]`: write the named models (default: the
small bundled ones) as DIR/<name>.onnx (DIR defaults to this package's folder) and print each path
with its size. `encoder` and `mobilenet` are the real-model-shaped ones the speed benchmarks use;
`embedder`, `dynamo_style` and `int8_source` hold what real exports have and the others lack (token ids,
embedding tables, a 1-D conv; weights named `val_N`, shapes computed at run time; int8 weights
dequantized in the graph); `digits` and `digits_cnn` are real classifiers trained in seconds (need scikit-learn)."""

import argparse
from pathlib import Path

from . import EXPORT_MODELS, MODELS, SPEED_MODELS, write_all


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bie_compiler.models", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output folder")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"models to write (default: {', '.join(MODELS)}; also "
                             f"{', '.join([*SPEED_MODELS, *EXPORT_MODELS])})")
    args = parser.parse_args()
    known = [*MODELS, *SPEED_MODELS, *EXPORT_MODELS]
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    for path in write_all(args.out, args.names):
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
