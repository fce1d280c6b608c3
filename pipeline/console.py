"""What the console shows: our log lines and progress bars, not TensorFlow's C++ start-up chatter.

TensorFlow writes its C++ start-up lines (`I0000 ... port.cc] oneDNN custom operations
are on`, `cudart_stub.cc] Could not find cuda drivers`, `E0000 ... failed call to
cuInit` on a machine without a GPU) straight to file descriptor 2, before absl's logging
is set up, so TF_CPP_MIN_LOG_LEVEL cannot stop them. The command line sends descriptor 2
through a filter that drops those lines and passes every other one on, while Python's
own stderr (logging, progress bars, `error:`) keeps the real terminal. Where an NVIDIA
driver is loaded, a failing cuInit is why the GPU goes unused, so those lines pass there.
"""
from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

NVIDIA_DRIVER = Path("/proc/driver/nvidia")  # present while the NVIDIA kernel module is loaded
# What a terminal or a log reader would not show as written: C0 and C1 controls (newlines,
# ANSI escapes), and the Unicode line separators and direction overrides.
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text) -> str:
    """`text` as one line that shows what it holds: every control character as its Python
    escape (a newline as `\\n`, ESC as `\\x1b`), so a file name cannot forge a log line or
    drive the terminal."""
    return UNPRINTABLE.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), str(text))


def chatter(nvidia_driver: bool) -> re.Pattern:
    """absl info/warning lines and the absl banner; without a driver, also the no-GPU errors.
    Other E/F lines pass."""
    no_gpu = rb"|E\d{4} .*(?:cuInit|cuda_platform|cuda_executor|cuda_diagnostics|Could not find cuda drivers)"
    return re.compile(
        rb"^(?:[IW]\d{4} \d\d:\d\d:\d\d"
        rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
        + (b"" if nvidia_driver else no_gpu) + rb")"
    )


def filter_native_logs() -> None:
    """From now on, lines written to descriptor 2 by native code pass through `chatter`."""
    dropped = chatter(NVIDIA_DRIVER.exists())
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
                if not dropped.match(line):
                    os.write(terminal, line)

    threading.Thread(target=forward, name="native-log-filter", daemon=True).start()
