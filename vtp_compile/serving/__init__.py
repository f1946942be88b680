"""Serving engines: vtp's encoder-site methods inside an inference server.

:mod:`vtp_compile.serving.vllm` is a vLLM plugin (entry point group ``vllm.general_plugins``).
Importing this package imports no serving engine.
"""
