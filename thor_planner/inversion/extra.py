"""Inversion backends beyond the four plain torch ones, and which backends suit which device.

* ``newton-schulz-tf32`` / ``newton-schulz-bf16``: the fixed-count Newton–Schulz iteration of
  :func:`thor_planner.inversion.newton_schulz_inverse` with its products in TF32 (the
  ``torch.backends.cuda.matmul.allow_tf32`` flag is switched on only inside the call) or in bf16
  (inputs rounded to bf16, products accumulated in float32: the reduced-precision-reduction flag is
  switched off inside the call). The last :data:`REFINE_STEPS` steps run in plain float32, which
  squares the residual each step, so a converged low-precision iterate is refined to float32
  accuracy. Low-precision products stall when ``κ(A)·ε`` approaches 1 (ε ≈ 5e-4 for TF32, 4e-3
  for bf16); the accuracy check before timing then excludes the backend at that size. No host
  synchronisation anywhere.
* ``cupy``: cupy's batched inverse (cuBLAS ``getrfBatched``/``getriBatched``) on the very memory of
  the torch tensor (zero-copy both ways through DLPack), issued on torch's current CUDA stream via
  ``cupy.cuda.ExternalStream`` (the stream of the stack's own device, looked up with that device
  explicitly), with cupy's linalg error checks set to ``ignore`` (no host sync). It takes CUDA
  tensors only and refuses a CPU tensor with a ``ValueError`` that says so; the success mask only
  flags non-finite results (``getrfBatched`` pivots, so no positive-definiteness test), and the
  probe residual of :func:`~thor_planner.inversion.backends.invert_stack` checks the rest.
  Registered only when cupy imports and CUDA is available (``pip install thor-plan[cupy]``).

The module is imported at the end of :mod:`thor_planner.inversion`, so these backends are in
``BACKENDS`` for the profiler and the THOR runtime alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from thor_planner.inversion.backends import BACKENDS, DEFAULT_BACKEND, NEWTON_SCHULZ_ITERATIONS, _finite, register_backend

REFINE_STEPS = 2
CUDA_ONLY = frozenset({"newton-schulz-tf32", "newton-schulz-bf16", "cupy"})

Matmul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _newton_schulz(stack: torch.Tensor, low: Callable[[], contextlib.AbstractContextManager], matmul: Matmul,
                   iterations: int = NEWTON_SCHULZ_ITERATIONS, refine: int = REFINE_STEPS
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``iterations − refine`` steps of ``X ← X(2I − AX)`` with ``matmul`` inside ``low()``, then
    ``refine`` steps in float32 (TF32 off). Starts from ``X₀ = I/‖A‖_F`` like the plain backend."""
    eye = torch.eye(stack.shape[-1], dtype=stack.dtype, device=stack.device)
    norm = torch.linalg.matrix_norm(stack).clamp_min(torch.finfo(stack.dtype).tiny)
    x = eye / norm[:, None, None]
    with low():
        for _ in range(iterations - refine):
            x = matmul(x, 2 * eye - matmul(stack, x))
    with _matmul_flag("allow_tf32", False):
        for _ in range(refine):
            x = x @ (2 * eye - stack @ x)
    return x, _finite(x)


@contextlib.contextmanager
def _matmul_flag(name: str, value: bool) -> Iterator[None]:
    """Set one ``torch.backends.cuda.matmul`` flag inside the block only, restoring the caller's."""
    flags = torch.backends.cuda.matmul
    before = getattr(flags, name)
    setattr(flags, name, value)
    try:
        yield
    finally:
        setattr(flags, name, before)


def _bf16_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.to(torch.bfloat16), b.to(torch.bfloat16)).to(a.dtype)


def newton_schulz_tf32_inverse(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton–Schulz with TF32 products, the last :data:`REFINE_STEPS` steps in float32."""
    return _newton_schulz(stack, lambda: _matmul_flag("allow_tf32", True), torch.matmul)


def newton_schulz_bf16_inverse(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton–Schulz with bf16 products (float32 accumulation), the last steps in float32."""
    return _newton_schulz(stack, lambda: _matmul_flag("allow_bf16_reduced_precision_reduction", False), _bf16_matmul)


def cupy_available() -> bool:
    """True when torch sees a CUDA device and cupy imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken cupy install (wrong CUDA libs) is "not available"
        return False
    return True


def cupy_inverse(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cupy's batched inverse on ``stack``'s memory, on torch's current CUDA stream of the stack's
    own device (no copies, no host synchronisation). CUDA tensors only: a CPU tensor is refused
    with a ``ValueError`` naming the device (torch's stream lookup would otherwise fail obscurely)."""
    if stack.device.type != "cuda":
        raise ValueError(f"The cupy backend inverts CUDA tensors only, got a tensor on {stack.device}: "
                         "move the factors to a CUDA device or choose a torch backend")
    import cupy
    import cupyx

    stack = stack.contiguous()
    stream = torch.cuda.current_stream(stack.device)  # the stack's device, not the current one
    errstate = getattr(cupyx, "errstate", None)
    quiet = errstate(linalg="ignore") if errstate is not None else contextlib.nullcontext()
    with cupy.cuda.Device(stack.device.index), cupy.cuda.ExternalStream(stream.cuda_stream), quiet:
        inv = cupy.linalg.inv(cupy.from_dlpack(stack))
        out = torch.from_dlpack(inv)
    return out, _finite(out)


def device_backends(device_type: str) -> list[str]:
    """The registered backends worth trying on ``device_type`` (``cpu`` or ``cuda``), default first.

    CUDA-only backends (TF32/bf16 products, cupy) are left out on CPU, where TF32 is a no-op and
    bf16 products are slower and less accurate than float32.
    """
    names = [n for n in BACKENDS if device_type == "cuda" or n not in CUDA_ONLY]
    return sorted(names, key=lambda n: (n != DEFAULT_BACKEND, list(BACKENDS).index(n)))


register_backend("newton-schulz-tf32", newton_schulz_tf32_inverse)
register_backend("newton-schulz-bf16", newton_schulz_bf16_inverse)
if cupy_available():
    register_backend("cupy", cupy_inverse)
