"""`python -m bie_compiler.models [--out DIR]`: write every test model as DIR/<name>.onnx
(DIR defaults to this package's folder) and print each path with its size."""

import argparse
from pathlib import Path

from . import write_all


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bie_compiler.models", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output folder")
    for path in write_all(parser.parse_args().out):
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
