"""Small Hugging Face-layout test checkpoints that fit the ``tiny`` hardware config, shared by the
driver tests of every device backend (``isa``, ``verilator``)."""

import dataclasses

from firmware.checkpoint_writer import save_checkpoint
from firmware.tokenizer import train_bpe_tokenizer
from golden.model_config import MODEL_SHAPES
from golden.weights import random_model

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n    y = 0\n" * 20

#: relu2 + GQA (2B-4T style) and silu + MHA (1bitLLM style).
SHAPES = {
    "relu2-gqa": dict(base="bitnet-2b4t", num_attention_heads=4, num_key_value_heads=1),
    "silu-mha": dict(base="bitnet-large", num_attention_heads=4, num_key_value_heads=4),
}


def make_checkpoint(path, shape, *, layers=2, seed=4):
    """Write a random packed checkpoint of ``SHAPES[shape]`` with ``layers`` layers and a BPE tokenizer
    (vocab 300, hidden 32, intermediate 64, head_dim 8, 64 positions) to ``path``; return ``path``."""
    tok = train_bpe_tokenizer([TEXT], 300)
    spec = dict(SHAPES[shape])
    cfg = dataclasses.replace(
        MODEL_SHAPES[spec.pop("base")], vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=layers, head_dim=8, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=0, eos_token_ids=(1,), **spec)
    save_checkpoint(random_model(cfg, seed=seed), path, weight_format="packed", tokenizer=tok)
    return path
