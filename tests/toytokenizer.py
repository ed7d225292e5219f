"""Small byte-level BPE tokenizers trained on the spot, shaped like SmolLM's (no tokenizer can be downloaded here)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def train(texts: Iterable[str], vocab_size: int = 400, special=("<|endoftext|>", "<|im_start|>")) -> Tokenizer:
    """A byte-level BPE: digits split one by one, no normalizer, no prefix space, like SmolLM2's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def save(tok: Tokenizer, folder: Path, extra_ids: int = 0) -> Path:
    """Write ``folder/tokenizer.json``, first adding ``extra_ids`` ordinary added tokens (to pass 65,535 ids)."""
    if extra_ids:
        tok.add_tokens([f"<extra_{i}>" for i in range(extra_ids)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"
