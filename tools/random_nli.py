"""Random-weight DeBERTa NLI checkpoints on disk, for parity tests, the cross-check and the
benchmark (the real checkpoints cannot be downloaded here).

Builds the PyTorch model with transformers, gives it weights large enough that the three
classes really compete (the default init makes near-uniform logits, which would let a wrong
port pass), trains a small byte-level BPE tokenizer on the given sentences, wraps it as a
PreTrainedTokenizerFast with DeBERTa's pair template ([CLS] a [SEP] b [SEP], type ids 0/1),
and saves both with save_pretrained. Uses torch: comparison code only, never se_jax.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
MNLI_LABELS = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
# cross-encoder/nli-deberta-v3-* order: the loader must read it, never assume it.
CROSS_ENCODER_LABELS = {0: "contradiction", 1: "entailment", 2: "neutral"}

# Tiny variants exercising every architectural switch (relative span clamping: T > max_rel).
TINY = {
    "v1": dict(model_type="deberta", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, relative_attention=True, max_relative_positions=12,
               pos_att_type="c2p|p2c", position_biased_input=False, type_vocab_size=0,
               id2label=MNLI_LABELS),
    "v2": dict(model_type="deberta-v2", hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=37,
               embedding_size=24, relative_attention=True, max_relative_positions=12,
               pos_att_type="p2c|c2p", share_att_key=False, position_biased_input=True,
               type_vocab_size=2, conv_kernel_size=3, conv_act="gelu", id2label=MNLI_LABELS),
    "v3": dict(model_type="deberta-v2", hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=37, relative_attention=True,
               max_relative_positions=64, position_buckets=8, share_att_key=True,
               norm_rel_ebd="layer_norm", pos_att_type="p2c|c2p", position_biased_input=False,
               type_vocab_size=0, id2label=CROSS_ENCODER_LABELS),
}
# deberta-v3-base shapes (12 layers, hidden 768) for the benchmark.
BASE_V3 = dict(model_type="deberta-v2", hidden_size=768, num_hidden_layers=12,
               num_attention_heads=12, intermediate_size=3072, relative_attention=True,
               max_relative_positions=-1, position_buckets=256, share_att_key=True,
               norm_rel_ebd="layer_norm", pos_att_type="p2c|c2p", position_biased_input=False,
               type_vocab_size=0, id2label=MNLI_LABELS)


def train_tokenizer(sentences: Iterable[str], vocab_size: int):
    """A byte-level BPE PreTrainedTokenizerFast with DeBERTa's special tokens and pair template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(sentences), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        unk_token="[UNK]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def build_torch_model(spec: dict, vocab_size: int, seed: int = 0):
    """The transformers PyTorch classifier for `spec`, with O(1)-scale random weights."""
    import torch
    from transformers import (DebertaConfig, DebertaForSequenceClassification, DebertaV2Config,
                              DebertaV2ForSequenceClassification)

    spec = dict(spec)
    model_type = spec.pop("model_type")
    config_cls, model_cls = ((DebertaConfig, DebertaForSequenceClassification)
                             if model_type == "deberta"
                             else (DebertaV2Config, DebertaV2ForSequenceClassification))
    id2label = spec.pop("id2label")
    config = config_cls(vocab_size=vocab_size, pad_token_id=0, num_labels=len(id2label),
                        id2label=id2label, label2id={v: k for k, v in id2label.items()},
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **spec)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.ndim > 1:  # ~unit-variance activations: scale 1/sqrt(fan_in)
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def calibrate_classifier(model, tokenizer, sentences: list[str]) -> None:
    """Centre and scale the classifier on pairs of `sentences`, so the argmax depends on the
    input (a random encoder's pooled outputs share a large common part, which otherwise
    makes one class win everywhere)."""
    import torch
    a = [x for x in sentences for _ in sentences]
    b = [y for _ in sentences for y in sentences]
    enc = tokenizer(a, b, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.deberta(**enc).last_hidden_state
        logits = model.classifier(model.pooler(hidden)) - model.classifier.bias
        mean, std = logits.mean(0), logits.std(0).clamp_min(1e-6)
        model.classifier.weight.div_(std[:, None])
        model.classifier.bias.copy_(-mean / std)


def save_random_nli(out_dir: str | Path, spec: dict, sentences: Iterable[str],
                    vocab_size: int = 400, seed: int = 0) -> Path:
    """Save a random DeBERTa NLI model + tokenizer as a Hugging Face directory."""
    out_dir = Path(out_dir)
    sentences = list(sentences)
    tokenizer = train_tokenizer(sentences, vocab_size)
    model = build_torch_model(spec, len(tokenizer), seed)
    calibrate_classifier(model, tokenizer, sentences)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


DEFAULT_SENTENCES = [
    "What is the capital of France? Paris is the capital of France.",
    "Who wrote Hamlet? William Shakespeare wrote the play Hamlet in about 1600.",
    "When did the Second World War end? It ended in 1945 after six years.",
    "How many legs does a spider have? A spider has eight legs.",
    "Which planet is known as the red planet? Mars, the fourth planet from the sun.",
    "Who painted the Mona Lisa? Leonardo da Vinci painted it in Florence.",
    "I don't know the answer.",
]
# Question-conditioned answers, as the deberta backend builds them ("{question} {answer}").
HAMLET_Q = "Who wrote the play Hamlet, and in which year was it first performed?"
HAMLET_ANSWERS = ["Shakespeare", "William Shakespeare wrote it around 1600 in London",
                  "I don't know the answer.", "Marlowe", "Ben Jonson, in 1603"]
DEFAULT_SENTENCES += [f"{HAMLET_Q} {a}" for a in HAMLET_ANSWERS]
