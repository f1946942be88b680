"""Train the project's small LLaVA scene model on procedurally generated scenes (CPU).

    python examples/train_scene_model.py --steps 4000 --time-limit-min 27 --threads 1 \
        --out vtp_compile/assets/scene_llava

All flags are those of ``python -m vtp_compile.scenes.train`` (see ``--help``). Then evaluate:

    vtp eval --model vtp_compile/assets/scene_llava --n 200 --eager
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a plain checkout

from vtp_compile.scenes.train import main  # noqa: E402

if __name__ == "__main__":
    main()
