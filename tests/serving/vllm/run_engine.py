"""Run one vLLM engine in a fresh process (vLLM's own engine-core and worker processes) and
print its outputs as one JSON line: ``python run_engine.py '<json job>'``.

job: ``{"model": dir, "engine": {LLM kwargs}, "max_tokens": n, "requests": [{"prompt": str,
"images": [index into vtp_compile.scenes.make_dataset("attribute", 4)], "vtp": {...} | null}]}``.
"""
import json
import sys


def main(job):
    from vllm import LLM, SamplingParams
    from vtp_compile.scenes import make_dataset

    exs = make_dataset("attribute", n=4)
    args = dict(enforce_eager=True, dtype="float32", max_model_len=1024,
                limit_mm_per_prompt={"image": 3}, max_num_seqs=8, seed=0,
                kv_cache_memory_bytes=64 << 20)
    args.update(job.get("engine", {}))
    llm = LLM(job["model"], **args)
    sp = SamplingParams(temperature=0.0, max_tokens=job.get("max_tokens", 6))

    def req(r):
        ims = [exs[i].image for i in r["images"]]
        q = {"prompt": r["prompt"], "multi_modal_data": {"image": ims[0] if len(ims) == 1 else ims}}
        if r.get("vtp") is not None:
            q["mm_processor_kwargs"] = {"vtp": r["vtp"]}
        return q
    outs = llm.generate([req(r) for r in job["requests"]], sp)
    print("RESULT " + json.dumps([[list(o.prompt_token_ids), list(o.outputs[0].token_ids)] for o in outs]),
          flush=True)


if __name__ == "__main__":     # vLLM spawns its workers: the guard is required
    main(json.loads(sys.argv[1]))
