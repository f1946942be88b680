"""Install torchvision into a CPU environment, with the shim only where it is needed.

``python requirements/install_torchvision_shim.py`` (run by the environment's own python; the
Makefile's ``vllm-env`` and ``lmms-eval-env`` do): ``pip install --no-deps torchvision==0.28.0`` (the version PyPI
pairs with torch 2.13.0), then, only if ``import torchvision`` fails with "operator
torchvision::nms does not exist" (a CUDA build of torchvision beside a CPU torch), copies
``torchvision_cpu_shim.py`` into site-packages with a ``.pth`` line that installs it. Any other
failure is an error; a working torchvision gets nothing.
"""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

VERSION = "0.28.0"
SHIM = Path(__file__).with_name("torchvision_cpu_shim.py")
PTH = "vtp_torchvision_cpu_shim.pth"


def _import_error() -> str:
    p = subprocess.run([sys.executable, "-c", "import torchvision.transforms.v2"],
                       capture_output=True, text=True)
    return "" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["?"])[-1]


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    for name in (PTH, SHIM.name):          # a fresh check, without an old shim
        (site / name).unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    f"torchvision=={VERSION}"], check=True)
    err = _import_error()
    if not err:
        print("torchvision imports: no shim needed")
        return 0
    if "torchvision::nms does not exist" not in err:
        print(f"torchvision does not import, and not for the reason the shim fixes: {err}")
        return 1
    shutil.copy(SHIM, site / SHIM.name)
    (site / PTH).write_text("import torchvision_cpu_shim; torchvision_cpu_shim.install()\n")
    err = _import_error()
    if err:
        print(f"torchvision still does not import with the shim: {err}")
        return 1
    print(f"torchvision {VERSION} imports with the shim ({site / PTH})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
