"""A frozen synthesis network for the interactive editor: one W+ shape, constant noise, CPU.

At 64 px and one latent at a time, the FaceWorld StyleGAN2's synthesis is mostly overhead, not
arithmetic: about 1,270 ATen calls, 34 module calls and 130 shape checks per image for about 0.2 GFLOP
of convolutions. Many of the calls depend on the weights only (equalized-lr weight scaling,
demodulation sums, FIR kernels, noise scaling). :class:`FrozenSynthesis` traces
``G.synthesis(ws, noise_mode="const")`` once for the shape of ``ws`` with TorchScript and freezes the
trace, which folds every weight-only computation into constants and drops the Python layer.

Measured on the 2-core development machine (one thread, 200 interleaved passes, batch 1, while another
job ran): eager 9.0 ms (minimum) / 11.8 ms (median), traced 6.2 / 8.0 ms, traced and frozen 4.7 / 5.9 ms,
with the same output bit for bit; idle, 2 threads, medians: eager 16.6 ms, frozen 8.8 ms. Frozen, the
fused modulated convolution and the default memory layout were slower (11.5 and 10.8 ms), and
``torch.jit.optimize_for_inference`` too (8.2 ms, output changed by 1e-5). Tracing and freezing take
0.7 s, once per editor. TorchScript is deprecated in PyTorch 2.11 in favour of ``torch.compile``, which
needs a C++ toolchain and compiles on first use (not tried here); whenever tracing fails, or
``torch.jit`` is gone, everything here falls back to the eager reference.

One latent at 64 px is too little work for two threads: the frozen graph runs on one intra-op thread
(``threads=1``, set around the call and restored after). ``python -m stylerig_lite.bench --threads 2 edit
--json`` times both in the same run, interleaved (``generator_ms`` and ``frozen_all_threads_ms``): on the 2-core
machine, medians of three runs, 6.9 ms on one thread against 8.7 ms on two. The image is the
one-thread eager image; on two threads the eager convolutions round differently (by up to 1e-6).

Reference path: ``G.synthesis(ws, noise_mode="const")`` itself; ``tests/test_stylegan2.py`` checks
that both give the same image. The frozen graph holds a copy of the weights: if the network's
parameters or buffers change in place (training, ``load_state_dict``), the next call re-traces (the
tensors are listed once, when traced: walking the modules on every frame cost 0.3 ms); a different shape of
``ws``, gradients to compute, a network in training mode or a non-CPU tensor simply take the eager path.
Chapter 6 (``notebooks/06_interactive_editing.ipynb``) uses it for every FaceWorld editor frame.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Optional, Tuple

import torch

from ..checks import assert_finite

__all__ = ["FrozenSynthesis"]


class _ConstNoise(torch.nn.Module):
    def __init__(self, synthesis: torch.nn.Module):
        super().__init__()
        self.synthesis = synthesis

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.synthesis(ws, noise_mode="const")


def _versions(tensors: Tuple[torch.Tensor, ...]) -> Tuple[int, ...]:
    """In-place change counters of ``tensors`` (cheap: no data is read)."""
    return tuple(t._version for t in tensors)


@contextlib.contextmanager
def _at_most_threads(threads: Optional[int]) -> Iterator[None]:
    """Run the block on at most ``threads`` intra-op threads (None: as set), then restore the count."""
    before = torch.get_num_threads()
    if threads is None or before <= threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FrozenSynthesis:
    """``G.synthesis(ws, noise_mode="const")``, traced and frozen for one shape of ``ws`` on the CPU.

    ``FrozenSynthesis(G.synthesis)(ws)`` with ``ws`` W+ ``[B, num_ws, w_dim]``: the first call traces
    for that shape (0.7 s for the FaceWorld generator); later calls of the same shape run the frozen
    graph, others the eager network. ``ws`` is checked for NaN and infinity first, as the eager network
    does (the trace has no such check). ``fast`` says whether the last call took the frozen graph.
    ``threads``: intra-op threads of the frozen graph (at most; None keeps PyTorch's setting).
    """

    def __init__(self, synthesis: torch.nn.Module, *, threads: Optional[int] = 1):
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be None or >= 1, got {threads}")
        self.threads = None if threads is None else int(threads)
        self.synthesis = synthesis
        self._graph: Optional[Any] = None
        self._shape: Optional[Tuple[int, ...]] = None
        self._versions: Tuple[int, ...] = ()
        self._tensors: Tuple[torch.Tensor, ...] = ()  # the parameters and buffers traced (listed once: 0.3 ms)
        self._failed = False
        self.fast = False

    def _eligible(self, ws: torch.Tensor) -> bool:
        """Whether ``ws`` may take the frozen graph (traced, or about to be, for its shape)."""
        if self._failed or self.synthesis.training or ws.device.type != "cpu" or ws.dtype != torch.float32:
            return False
        if self._graph is not None and tuple(ws.shape) != self._shape:
            return False  # one shape is traced: the editor's
        return not (torch.is_grad_enabled() and (ws.requires_grad or any(
            p.requires_grad for p in self.synthesis.parameters())))

    def _freeze(self, ws: torch.Tensor) -> None:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice and tracer warnings
                traced = torch.jit.trace(_ConstNoise(self.synthesis).eval(), ws, check_trace=False)
                self._graph = torch.jit.freeze(traced)
            self._tensors = (*self.synthesis.parameters(), *self.synthesis.buffers())
            self._shape, self._versions = tuple(ws.shape), _versions(self._tensors)
        except Exception:  # no TorchScript (a future PyTorch) or an untraceable network: stay eager
            self._graph, self._failed = None, True

    def __call__(self, ws: torch.Tensor) -> torch.Tensor:
        self.fast = False
        if not self._eligible(ws):
            return self.synthesis(ws, noise_mode="const")
        if self._graph is None or _versions(self._tensors) != self._versions:
            image = self.synthesis(ws, noise_mode="const")  # checks ws (shape, NaN) before it is traced
            self._freeze(ws)
            return image
        assert_finite(ws, "ws (W+ latents)")
        with torch.no_grad(), _at_most_threads(self.threads):
            image = self._graph(ws)
        self.fast = True
        return image
