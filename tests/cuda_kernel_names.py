"""The names of the CUDA kernels a piece of code launches, for GPU tests that must show which
path ran (torch's profiler: CUPTI kernel records, which see the engine's launches too, in CUDA
graphs or not). Needs torch with CUDA."""

from __future__ import annotations

import json
import tempfile


def launched_kernels(run_it) -> set[str]:
    """The kernel names (without parameter lists) that `run_it()` launches."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_it()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        with open(f.name) as trace:
            events = json.load(trace)["traceEvents"]
    return {e["name"].split("(")[0].strip() for e in events if e.get("cat") == "kernel"}
