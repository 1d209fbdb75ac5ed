from transformers import AutoTokenizer

from treepo_lab.models.tokenizer import ALPHABET, build_char_tokenizer


def test_alphabet_has_task_characters():
    for c in "0123456789+-=?:. \n\\{}QAStep":
        assert c in ALPHABET


def test_round_trip_every_character():
    tok = build_char_tokenizer()
    ids = tok(ALPHABET)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == len(ALPHABET) + 1  # one token per character
    assert tok.decode(ids, skip_special_tokens=True) == ALPHABET
    assert tok.decode(ids[1:]) == ALPHABET
    for c in ALPHABET:
        assert tok.decode(tok(c, add_special_tokens=False)["input_ids"]) == c


def test_round_trip_keeps_spaces_and_newlines():
    tok = build_char_tokenizer()
    text = "Q: 1 + 2 =?\n\nA:  x ,  . \n\\boxed{3}\t "
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_auto_tokenizer_loads_it(tmp_path):
    tok = build_char_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "A: We compute 17+5-9 step by step.\nStep 1: 17+5=22."
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert len(loaded) == len(tok)
