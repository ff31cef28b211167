"""TVM's native warnings kept off the user's terminal.

TVM's C++ code logs to file descriptor 2 (e.g. "Fast mode segfaults when there are out-of-bounds
indices" for every Gather it legalizes, "BlockBuilder destroyed with remaining blocks" after a failed
import): noise for a user, who gets our one-line errors instead. While capturing, descriptor 2 goes to
a temporary file and Python's ``sys.stderr`` (progress, warnings, errors) keeps writing to the terminal.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile


@contextlib.contextmanager
def native_stderr_captured(enabled: bool = True):
    """Within: what native code writes to descriptor 2 is discarded (``enabled``), Python's stderr is not."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=python_stderr.encoding,
                          errors=python_stderr.errors)
        try:
            yield
        finally:
            gc.collect()  # objects of a failed TVM call log when they are freed: free them while captured
            sys.stderr.close()
            sys.stderr = python_stderr
            os.dup2(terminal, 2)
            os.close(terminal)
