"""The paper config (configs/paper_llama3_8b.py) on one GPU or one 8-GPU node.

    python launch/experiment.py --config=configs/paper_llama3_8b_gpu.py \\
        --config.workdir=/data/runs/llama3_nq \\
        --config.model.path=/data/models/Meta-Llama-3-8B-Instruct \\
        --config.entropy.nli_path=/data/models/deberta-v2-xlarge-mnli

Check it first: the same command with `--dry_run --target=h100x1` (or h100x8).

One GPU: one model copy (bfloat16, 16 GB for 8B) per device, no weight sharding, so
decoding never all-gathers weights; the sampler batch is 32 prompts x 11 rows (352 rows,
~22 GiB of KV cache at 512 tokens) and greedy evaluation 256 prompts, to fill an 80 GB H100.
Eight GPUs: the same file shards batches 8 ways (data=8; training batch 48 = 6 per GPU);
raise the batches to keep each GPU as busy: `--config.sampling.batch_size=256
--config.evaluation.batch_size=2048`. A 70B judge (evaluation.judge_model) runs in a stage of its own
over every GPU of every host, the generator released meanwhile (judge_stage.py): 16.4 GiB
of judge weights per GPU on 8 GPUs with this file as it is; it does not fit one GPU.
"""
from __future__ import annotations

from configs import paper_llama3_8b


def get_config():
    config = paper_llama3_8b.get_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    config.sampling.batch_size = 32
    config.evaluation.batch_size = 256
    return config
