"""Prompts and processor inputs from lmms-eval's requests (context text + visuals).

A visual is a ``PIL.Image`` (what image tasks' ``doc_to_visual`` returns) or a path: a video file
(``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``: frames sampled uniformly with lmms-eval's own
``read_video``) or an image file. The prompt is the processor's chat template (one user turn:
the images, the videos, then the context) when the processor has one, else
``"{image} {question}"`` with the processor's image token per image -- for one image exactly
what ``vtp eval`` builds (:func:`vtp_compile.bench.evaluate.build_prompt`).

Video goes to the model as its processor expects: ``videos=`` for a processor with a video
processor (Qwen2-VL, LLaVA-OneVision, ...), with ``do_sample_frames=False`` (the frames are
the ``max_frames`` already sampled) and each clip's ``video_metadata`` (the sampled frames'
rate, from the file: Qwen2.5-VL's temporal positions read it); for one without (LLaVA, the scene model) the
sampled frames go in as images, each after a ``frame N`` label -- for a clip exactly what
``vtp eval`` builds (:func:`vtp_compile.bench.evaluate.build_clip_prompt`), and each frame one
run of visual tokens between text tokens (vtp's frame boundaries).
"""
from __future__ import annotations

import os

from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
DEFAULT_TEMPLATE = "{image} {question}"


def is_video_path(v) -> bool:
    return isinstance(v, (str, os.PathLike)) and os.fspath(v).lower().endswith(VIDEO_EXTENSIONS)


def split_visuals(visuals, max_frames: int) -> tuple[list, list]:
    """``(images, videos)`` of one request; videos as ``[T, H, W, 3]`` uint8 arrays."""
    images, videos = [], []
    for v in visuals or []:
        if v is None:
            continue
        if isinstance(v, Image.Image):
            images.append(v)
        elif isinstance(v, (str, os.PathLike)):
            path = os.fspath(v)
            if is_video_path(path):
                videos.append(read_frames(path, max_frames))
            else:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
        else:
            raise ValueError(f"vtp: unsupported visual {type(v).__name__} (images and video "
                             "files are supported; audio is not)")
    return images, videos


def read_frames(path: str, max_frames: int):
    """``max_frames`` frames sampled uniformly from a video file (lmms-eval's ``read_video``,
    PyAV by default), as a ``[T, H, W, 3]`` uint8 array."""
    import numpy as np
    from lmms_eval.models.model_utils.load_video import read_video
    frames = np.asarray(read_video(path, num_frm=max_frames))
    if len(frames) > max_frames:   # lmms-eval 0.7.3 decodes every frame of .mkv / .webm files
        frames = frames[np.linspace(0, len(frames) - 1, max_frames, dtype=int)]  # as read_video
    return frames


def video_metadata(path: str, n_frames: int):
    """transformers' ``VideoMetadata`` of ``n_frames`` frames sampled uniformly from the video
    file: a clip of its own (frames ``0..n-1``) at the sampled rate ``n / duration`` (what
    qwen-vl-utils and ``VideoMetadata.sampled_fps`` compute); None when the file gives no
    frame rate or length."""
    import av
    from transformers.video_utils import VideoMetadata
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        total = int(stream.frames or 0)
        if total <= 0 and container.duration and rate:
            total = round(container.duration / av.time_base * rate)
    if rate <= 0 or total <= 0:
        return None
    duration = total / rate
    return VideoMetadata(total_num_frames=n_frames, fps=n_frames / duration, duration=duration,
                         frames_indices=list(range(n_frames)), video_backend="pyav")


def takes_video(processor) -> bool:
    """Whether ``processor`` handles ``videos=`` itself (it has a video processor); without
    one, a video's frames are given as images with frame labels."""
    return getattr(processor, "video_processor", None) is not None


def _placeholders(processor, n_images: int, n_videos: int, frames=None) -> str:
    image = getattr(processor, "image_token", None) or "<image>"
    video = getattr(processor, "video_token", None) or "<video>"
    if frames is not None:   # videos as labelled frames
        from ...scenes.clip_tasks import frame_prompt
        return " ".join([image] * n_images + [frame_prompt(n, image) for n in frames])
    return " ".join([image] * n_images + [video] * n_videos)


def build_prompt(processor, context: str, n_images: int, n_videos: int = 0,
                 template: str | None = None, system_prompt: str | None = None,
                 frames: list[int] | None = None) -> str:
    """The prompt text of one request (see the module docstring). ``frames``: the frame count
    of each video when the videos are given as images (``frame N`` label before each)."""
    if frames is not None and len(frames) != n_videos:
        raise ValueError(f"frames lists {len(frames)} video(s), n_videos is {n_videos}")
    context = context.replace("<image>", "").strip() if n_images or n_videos else context
    if template is None and getattr(processor, "chat_template", None):
        if frames is not None:
            videos = [item for n in frames for t in range(n)
                      for item in ({"type": "text", "text": f"frame {t + 1}"}, {"type": "image"})]
        else:
            videos = [{"type": "video"}] * n_videos
        content = [{"type": "image"}] * n_images + videos + [{"type": "text", "text": context}]
        messages = [{"role": "user", "content": content}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return (template or DEFAULT_TEMPLATE).format(
        image=_placeholders(processor, n_images, n_videos, frames), question=context)


def build_inputs(processor, contexts: list[str], visuals: list, *, max_frames: int = 32,
                 template: str | None = None, system_prompt: str | None = None):
    """Left-padded processor inputs for a batch (``visuals[i]``: request i's visual list)."""
    texts, images, videos, metadata = [], [], [], []
    as_frames = not takes_video(processor)
    for context, vis in zip(contexts, visuals):
        imgs, vids = split_visuals(vis, max_frames)
        frames = [len(v) for v in vids] if as_frames and vids else None
        texts.append(build_prompt(processor, context, len(imgs), len(vids), template,
                                  system_prompt, frames))
        images += imgs
        if frames is not None:
            images += [Image.fromarray(f) for v in vids for f in v]
        else:
            videos += vids
            paths = [os.fspath(v) for v in vis or [] if is_video_path(v)]
            metadata += [video_metadata(p, len(v)) for p, v in zip(paths, vids)]
    kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
    if images:
        kwargs["images"] = images
    if videos:
        kwargs.update(videos=videos, do_sample_frames=False)
        if len(metadata) == len(videos) and all(m is not None for m in metadata):
            kwargs["video_metadata"] = metadata
    return processor(**kwargs)
