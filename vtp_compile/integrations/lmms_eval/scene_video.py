"""The clip tasks' videos: each held-out clip written as a lossless video file on first use.

lmms-eval's video tasks hand the model a video *path* (``doc_to_visual`` returns ``[path]``) and
the model samples frames from it (:func:`.inputs.read_frames`: lmms-eval's ``read_video``,
PyAV). The scene clips' tasks do the same: :func:`clip_video` draws the clip from its task and
seed with the project's generator and writes it once to a cache folder as an ``.mp4`` in
H.264's lossless RGB profile (``libx264rgb``, ``qp 0``: the decoded frames are the
generator's pixels, those ``vtp eval`` uses; a test checks it). About 100 KB per 4-frame clip;
nothing is shipped but the JSONL records. (MP4, not Matroska: lmms-eval 0.7.3's ``read_video``
decodes every frame of ``.mkv``/``.webm`` files whatever ``num_frm`` says.)

The cache folder is ``$VTP_SCENE_CLIP_CACHE`` or ``<tempdir>/vtp_scene_clips``, with a
subfolder per version of the generator's source, so a changed generator never reads stale
videos.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

FPS = 1   # one frame per second: the clip's frames are its moments, nothing in between


def _generator_version() -> str:
    from ...scenes import clip_tasks, clips, generator
    h = hashlib.sha256()
    for mod in (generator, clips, clip_tasks):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    root = os.environ.get("VTP_SCENE_CLIP_CACHE") or os.path.join(tempfile.gettempdir(),
                                                                  "vtp_scene_clips")
    return Path(root) / _generator_version()


def write_video(frames, path: str | Path, fps: int = FPS) -> Path:
    """Write RGB frames (PIL images or ``[H, W, 3]`` uint8 arrays) losslessly (H.264 RGB,
    ``qp 0``)."""
    import av
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [np.asarray(f, dtype=np.uint8) for f in frames]
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264rgb", rate=fps)
        stream.height, stream.width = arrays[0].shape[:2]
        stream.pix_fmt = "rgb24"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for a in arrays:
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)      # atomic: parallel ranks never read a half-written file
    return path


def clip_video(task: str, seed: int, n_frames: int) -> Path:
    """The video file of example seed ``seed`` of clip task ``task`` (written on first use)."""
    from ...scenes.clip_tasks import CLIP_TASKS, check_clip_task, clip_seed
    path = cache_dir() / f"{task}-{int(seed)}-{int(n_frames)}.mp4"
    if not path.is_file():
        ex = CLIP_TASKS[check_clip_task(task)](clip_seed(task, seed), n_frames)
        if ex is None:
            raise ValueError(f"clip task {task!r} has no example at seed {seed}")
        write_video(ex.frames, path)
    return path
