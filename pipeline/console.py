"""What the console shows: our log lines and progress bars, not TensorFlow's C++ start-up chatter.

TensorFlow writes its C++ start-up lines (`I0000 ... port.cc] oneDNN custom operations
are on`, `cudart_stub.cc] Could not find cuda drivers`, `E0000 ... failed call to
cuInit` on a machine without a GPU) straight to file descriptor 2, before absl's logging
is set up, so TF_CPP_MIN_LOG_LEVEL cannot stop them. The command line sends descriptor 2
through a filter that drops those lines and passes every other one on, while Python's
own stderr (logging, progress bars, `error:`) keeps the real terminal.
"""
from __future__ import annotations

import os
import re
import sys
import threading

# absl info/warning lines, the absl banner, and the no-GPU errors; other E/F lines pass.
CHATTER = re.compile(
    rb"^(?:[IW]\d{4} \d\d:\d\d:\d\d"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|E\d{4} .*(?:cuInit|cuda_platform|cuda_executor|cuda_diagnostics|Could not find cuda drivers))"
)


def interactive() -> bool:
    """A person is watching: stderr is a terminal (progress bars); otherwise one line per event."""
    return sys.stderr.isatty()


def filter_native_logs() -> None:
    """From now on, lines written to descriptor 2 by native code pass through `CHATTER`."""
    sys.stderr.flush()
    terminal = os.dup(2)
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=sys.stderr.encoding,
                           errors=sys.stderr.errors)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def forward() -> None:
        with os.fdopen(read, "rb", buffering=0) as lines:
            for line in iter(lines.readline, b""):
                if not CHATTER.match(line):
                    os.write(terminal, line)

    threading.Thread(target=forward, name="native-log-filter", daemon=True).start()
