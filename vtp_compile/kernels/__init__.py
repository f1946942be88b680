"""Token-selection ops: PyTorch references, torch.library registration, Triton kernels."""
from . import ops  # noqa: F401  (registers torch.ops.vtp.*)
