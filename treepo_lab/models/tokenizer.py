"""The character tokenizer of the embedded model: one token per character, exact round trip.

Built with the `tokenizers` library and wrapped as a transformers fast tokenizer, so it is saved with
`save_pretrained` and loaded by `AutoTokenizer` like any Hugging Face tokenizer. The model that goes
with it is a Llama: AutoTokenizer on a Qwen2 config swaps in a tokenizer that drops spaces and newlines.
"""
from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
# Printable ASCII, space, tab and newline: the task alphabet and then some (file tasks in ASCII).
ALPHABET = "".join(c for c in string.printable if c not in "\r\x0b\x0c")


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *ALPHABET])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # Every character is its own pre-token ([\s\S] matches newlines too, unlike ".").
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse joins tokens with nothing between them (the default decoder would insert spaces).
    tok.decoder = decoders.Fuse()
    # Prompts start with BOS, as with Llama tokenizers, so callers can encode prompts the usual way.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False,  # keep " ." and " ," as written
    )
