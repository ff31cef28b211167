"""One progress reporter: structured events for the Python API, lines on stderr for the CLI."""

import io

from bie_compiler import compile_model
from bie_compiler.progress import Event, Reporter, print_progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_compile_reports_every_layer_as_a_structured_event(model_dir, tmp_path):
    events: list[Event] = []
    compile_model(model_dir["mlp"], tmp_path / "art", "bie-bitplane", progress=events.append, timing=True)
    stages = [e.stage for e in events]
    assert stages[0] == "import" and stages[-1] == "write" and "build" in stages and "timing" in stages
    layers = [e for e in events if e.stage == "encode"]
    assert [(e.index, e.total) for e in layers] == [(1, 3), (2, 3), (3, 3)]
    assert layers[0].seconds_left is None and all(e.seconds_left >= 0 for e in layers[1:])
    assert all(b.elapsed >= a.elapsed for a, b in zip(events, events[1:]))
    assert "EncodeWeights" in next(e.message for e in events if e.stage == "timing")


def test_time_left_is_the_mean_step_times_the_steps_to_go():
    events = []
    report = Reporter(events.append)
    report("encode", "a", 1, 5)
    first = events[0].elapsed
    report("encode", "b", 3, 5)
    assert events[1].seconds_left == (events[1].elapsed - first) / 2 * 3


def test_lines_on_a_pipe_and_overwritten_on_a_terminal():
    layer = Event("encode", "encoding w", 2.0, 1, 2)
    last = Event("encode", "encoding v", 3.0, 2, 2, seconds_left=1.0)
    step = Event("build", "building", 4.0)
    pipe, terminal = io.StringIO(), Terminal()
    for event in (layer, last, step):
        print_progress(event, pipe)
        print_progress(event, terminal)
    assert pipe.getvalue().splitlines() == ["[bie-compiler] [1/2] encoding w (2.0 s)",
                                            "[bie-compiler] [2/2] encoding v (3.0 s, ~1 s left)",
                                            "[bie-compiler] building (4.0 s)"]
    assert terminal.getvalue() == ("\r\x1b[K[bie-compiler] [1/2] encoding w (2.0 s)"
                                   "\r\x1b[K[bie-compiler] [2/2] encoding v (3.0 s, ~1 s left)\n"
                                   "\r\x1b[K[bie-compiler] building (4.0 s)\n")
