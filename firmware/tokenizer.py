"""Tokenizers for the host side: load a checkpoint's ``tokenizer.json`` or train a small one offline.

Everything here runs without network access. Real checkpoints ship a Hugging Face ``tokenizer.json``
that the ``tokenizers`` library reads directly. Test models get a byte-level BPE tokenizer trained on
:func:`stdlib_corpus`, text that exists on every machine with Python installed.

Encoding never adds special tokens implicitly (:func:`encode` prepends BOS only when asked), so the
token stream the accelerator sees is explicit, whatever post-processor a ``tokenizer.json`` declares.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path, PurePosixPath

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["TokenizerError", "load_tokenizer", "train_bpe_tokenizer", "stdlib_corpus", "encode", "decode",
           "bos_token_id", "TOKENIZER_FILE", "BOS_CANDIDATES"]

TOKENIZER_FILE = "tokenizer.json"
#: Beginning-of-sequence spellings tried by :func:`bos_token_id` (LLaMA-2 / trained BPE, LLaMA-3, Gemma).
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>")
# Directories of the standard library that hold tests or third-party code, not library source.
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"})


class TokenizerError(ValueError):
    """A tokenizer file is missing, unsupported or unreadable."""


def load_tokenizer(model_dir):
    """Load ``tokenizer.json`` from a checkpoint directory.

    Parameters
    ----------
    model_dir : str or os.PathLike
        The checkpoint directory (or the ``tokenizer.json`` file itself).

    Returns
    -------
    tokenizers.Tokenizer

    Raises
    ------
    TokenizerError
        The file is missing (with a hint when only a sentencepiece ``tokenizer.model`` exists) or is not a
        valid ``tokenizers`` JSON file.
    """
    path = Path(model_dir)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        directory = path.parent
        if (directory / "tokenizer.model").is_file():
            raise TokenizerError(
                f"{path}: missing; {directory / 'tokenizer.model'} is a sentencepiece model, which is not "
                "supported: convert it to tokenizer.json first (e.g. save a transformers fast tokenizer)")
        raise TokenizerError(f"{path}: missing (a checkpoint needs tokenizer.json to encode text)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust bindings raise a bare Exception for every parse failure
        raise TokenizerError(f"{path}: not a valid tokenizer.json: {' '.join(str(exc).split())}") from None


def train_bpe_tokenizer(texts, vocab_size, special_tokens=("<s>", "</s>", "<unk>")):
    """Train a byte-level BPE tokenizer offline.

    Byte-level means every string is encodable and decodes back unchanged, with no unknown tokens.
    Training is deterministic: the same texts and settings give the same ``to_str()``.

    Parameters
    ----------
    texts : iterable of str
        Training text.
    vocab_size : int
        Target vocabulary size including the special tokens and the 256 byte symbols.
    special_tokens : sequence of str
        Added first, so they get ids ``0 .. len - 1`` (``<s>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 by default).

    Returns
    -------
    tokenizers.Tokenizer
    """
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is below the {minimum} byte and special tokens")
    tok = Tokenizer(models.BPE())
    # No prefix space: an added space would not survive decoding, breaking the lossless round trip.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def _stdlib_sources(root):
    """Relative POSIX paths of the library's ``.py`` files, sorted, test and vendor directories pruned."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
        rel = PurePosixPath(Path(dirpath).relative_to(root).as_posix())  # "." at the top collapses away
        found += [str(rel / f) for f in filenames if f.endswith(".py")]
    return sorted(found)


def stdlib_corpus(max_bytes):
    """Deterministic text from the Python standard library's own source files.

    Files are read in sorted path order from ``sysconfig.get_paths()["stdlib"]`` (``.py`` only; test,
    ``__pycache__`` and ``site-packages`` directories skipped; files that are not UTF-8 skipped) and
    concatenated, each ending in a newline, until ``max_bytes`` UTF-8 bytes. The same Python
    installation always gives the same text.

    Parameters
    ----------
    max_bytes : int
        Upper bound on the UTF-8 size of the result; the last file is cut at a character boundary.

    Returns
    -------
    str
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    pieces, size = [], 0
    for rel in _stdlib_sources(root):
        if size >= max_bytes:
            break
        try:
            data = (root / rel).read_bytes()
            data.decode("utf-8")  # validate once; slicing below may cut a character, handled there
        except (OSError, UnicodeDecodeError):
            continue
        if not data.endswith(b"\n"):
            data += b"\n"
        pieces.append(data[:max_bytes - size])
        size += len(pieces[-1])
    if not pieces and max_bytes > 0:
        raise FileNotFoundError(f"{root}: no readable .py files in the standard library directory")
    # errors="ignore" only drops a multi-byte character split by the max_bytes cut.
    return b"".join(pieces).decode("utf-8", errors="ignore")


def bos_token_id(tok):
    """The id of the first of :data:`BOS_CANDIDATES` in the vocabulary, or None."""
    for token in BOS_CANDIDATES:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return token_id
    return None


def encode(tok, text, add_bos=False, bos_id=None):
    """Token ids of ``text``, without implicit special tokens; BOS prepended when ``add_bos``.

    Parameters
    ----------
    tok : tokenizers.Tokenizer
    text : str
    add_bos : bool
    bos_id : int, optional
        Defaults to :func:`bos_token_id`.

    Returns
    -------
    list of int
    """
    ids = tok.encode(text, add_special_tokens=False).ids
    if not add_bos:
        return ids
    if bos_id is None:
        bos_id = bos_token_id(tok)
        if bos_id is None:
            raise TokenizerError(f"no beginning-of-sequence token ({', '.join(BOS_CANDIDATES)}) in the vocabulary; "
                                 "pass bos_id")
    return [bos_id] + ids


def decode(tok, ids, skip_special_tokens=False):
    """Text of ``ids``. Special tokens are kept by default so that ``decode(encode(t)) == t`` for any text."""
    return tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
