"""The entry point lmms-eval loads (group ``lmms_eval.models``, see pyproject.toml).

lmms-eval 0.7.x's ``ModelRegistryV2.load_entrypoint_manifests`` accepts a ``ModelManifest``, an
iterable of them, or a callable returning either; a callable keeps this module free of lmms_eval
imports until lmms-eval itself calls it.
"""
from __future__ import annotations

MODEL_ID = "vtp"
CLASS_PATH = "vtp_compile.integrations.lmms_eval.model.VTP"


def manifest():
    """The ``ModelManifest`` registering ``--model vtp`` (a simple, doc_to_text model)."""
    from lmms_eval.models.registry_v2 import ModelManifest
    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH,
                         aliases=("vtp_compile",))
