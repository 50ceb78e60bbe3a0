"""The values of ``PARLEY_COMPILE``: how a worker's frame loop runs its fixed-shape steps.

Plain constants with no dependencies, so the engine imports them on machines that have only
torch and transformers (``make bench-gpu``). ``worker.engine.step_graphs`` says what each does.
"""

from __future__ import annotations

from typing import Literal

CompileMode = Literal["off", "inductor", "graphs", "inductor+graphs"]
COMPILE_MODES: tuple[CompileMode, ...] = ("off", "inductor", "graphs", "inductor+graphs")
COMPILE_AUTO = ("auto", "on", "1", "true", "yes")  # graphs on CUDA, eager on CPU
COMPILE_OFF = ("off", "0", "false", "no")
