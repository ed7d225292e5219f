"""Tokenizing: tokenizers trained here, loaded from files, folders and a fake Hub, then encoded for real."""

import hashlib
import json
import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer as FastTokenizer

import toytokenizer
from fakehub import FakeHub, fake_hub_env
from smollm_corpus import hub as hub_module
from smollm_corpus import tokenizer as tokenizer_module
from smollm_corpus.errors import SourceError, UsageError
from smollm_corpus.tokenizer import DEFAULT_TOKENIZER, load_tokenizer

MODEL_SHA = "0123456789abcdef0123456789abcdef01234567"
TEXTS = [
    "The mitochondria is the powerhouse of the cell. Cells divide by mitosis; 46 chromosomes in 23 pairs.",
    "def add(a, b):\n    return a + b  # adds two numbers\n\nprint(add(2, 40))\n",
    "Ünïcödé téxt: naïve café, Straße, Ελληνικά, русский текст, 日本語のテキスト, 中文文本, 한국어, עברית, العربية.",
    "Emoji 👩‍👩‍👧‍👦 🇫🇷 🤖🎉, symbols ∑∫√∞ ≠ ≤ ≥, math x² + y² = z², fractions ½ ¾.",
    "Whitespace\tand\ttabs,\r\nWindows lines,\n\n\nblank lines, trailing spaces   \n   leading spaces.",
]
#: documents that spell special tokens out: they are text, never the tokens themselves
TRICKY = [
    "<|endoftext|>",
    "Models end documents with <|endoftext|> and chats with <|im_start|>assistant.",
    "<|endoftext|><|endoftext|> <|endoftext|>\n<|endoftext|>",
    "almost <|endoftext| and <|endoftext|>> and < |endoftext|>",
]
VARIED = [
    *TEXTS,
    "",
    " ",
    "a",
    "\n",
    "combining: e\u0301 a\u0308 \u0915\u094d\u0937 zero\u200bwidth\u200djoiner \ufeffBOM",
    "control \x00\x01\x7f chars, private use \ue000, astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 𠀀",
    "numbers 3.14159 1,000,000 ٣٤٥ ⅷ ² 0x1F",
    "  many     spaces   and\u00a0no-break\u3000ideographic space  ",
    "x" * 5000 + " " + "word " * 2000,
]


def train(vocab_size: int = 400, special=("<|endoftext|>", "<|im_start|>")) -> FastTokenizer:
    """A byte-level BPE shaped like SmolLM's, trained on this file's texts."""
    return toytokenizer.train(TEXTS * 3, vocab_size, special)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder holding a tokenizer.json, as a Hub model repository or save_pretrained leaves it."""
    path = tmp_path_factory.mktemp("tokenizer")
    train().save(str(path / "tokenizer.json"))
    return path


@pytest.fixture
def tokenizer(folder):
    return load_tokenizer(str(folder / "tokenizer.json"))


def serve(folder, repo_id):
    return FakeHub(folder, repo_id=repo_id, repo_type="model", sha=MODEL_SHA)


def ordinary(tok, ids):
    return [t for t in ids if t != tok.eot_id]


# -- loading -------------------------------------------------------------------------------------


def test_a_tokenizer_json_and_its_folder_load_the_same_tokenizer(folder):
    data = (folder / "tokenizer.json").read_bytes()
    from_file = load_tokenizer(str(folder / "tokenizer.json"))
    from_folder = load_tokenizer(str(folder))
    assert from_file.sha256 == from_folder.sha256 == hashlib.sha256(data).hexdigest()
    assert from_folder.name == str(folder) and from_folder.commit is None
    fast = FastTokenizer.from_str(data.decode())
    assert from_file.eot_id == fast.token_to_id("<|endoftext|>") == 0
    assert from_file.vocab_size == fast.get_vocab_size() == 400
    assert from_file.dtype == np.uint16


def test_a_hub_model_is_downloaded_through_the_cache_and_its_commit_recorded(folder, tmp_path, monkeypatch):
    with serve(folder, "acme/tiny-lm") as hub:
        blocked = fake_hub_env(monkeypatch, hub, tmp_path)
        tok = load_tokenizer("acme/tiny-lm")
        assert (tok.name, tok.commit) == ("acme/tiny-lm", MODEL_SHA)
        assert tok.sha256 == hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
        assert hub.downloaded_files() == ["tokenizer.json"]

        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        hub.clear_requests()
        assert load_tokenizer("acme/tiny-lm") == tok
        assert hub.requests == [] and not blocked


def test_gpt2_and_the_default_name_their_hub_models(folder, tmp_path, monkeypatch):
    with serve(folder, "openai-community/gpt2") as hub:
        fake_hub_env(monkeypatch, hub, tmp_path)
        assert load_tokenizer("gpt2").name == "openai-community/gpt2"
    with serve(folder, DEFAULT_TOKENIZER) as hub:
        fake_hub_env(monkeypatch, hub, tmp_path)
        assert load_tokenizer().name == DEFAULT_TOKENIZER == "HuggingFaceTB/SmolLM2-135M"


def test_transient_hub_errors_are_retried(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_module, "RETRY_BASE_SECONDS", 0.01)
    with serve(folder, "acme/tiny-lm") as hub:
        fake_hub_env(monkeypatch, hub, tmp_path)
        hub.fail_next(2, 503, match="tokenizer.json")
        assert load_tokenizer("acme/tiny-lm").commit == MODEL_SHA


@pytest.mark.parametrize(
    "spec, message",
    [
        ("acme/no-such-model", "tokenizer 'acme/no-such-model' is not a local file or folder, and the Hub has no "
                               "model acme/no-such-model (or it is private: set HF_TOKEN); pass --tokenizer gpt2"),
        ("acme/no-tokenizer", "the Hub model acme/no-tokenizer has no tokenizer.json (only fast tokenizers can be used)"),
    ],
)
def test_a_tokenizer_the_hub_does_not_have_is_a_source_error(tmp_path, monkeypatch, spec, message):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "config.json").write_text("{}")
    with serve(tmp_path / "repo", "acme/no-tokenizer") as hub:
        blocked = fake_hub_env(monkeypatch, hub, tmp_path)
        with pytest.raises(SourceError) as info:
            load_tokenizer(spec)
    assert message in str(info.value) and info.value.exit_code == 1 and not blocked


def test_offline_without_a_cached_copy_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SourceError, match="the tokenizer of acme/tiny-lm is not in the local cache and the Hub cannot "
                                          "be reached .* unset HF_HUB_OFFLINE"):
        load_tokenizer("acme/tiny-lm")


def test_bad_tokenizer_options_are_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"model": {"type": "Nope"}}))
    use = "pass --tokenizer gpt2, a Hub model id, a tokenizer.json or a folder holding one"
    cases = {
        str(tmp_path / "missing.json"): f"tokenizer file {tmp_path / 'missing.json'} does not exist; {use}",
        "./missing": f"tokenizer file ./missing does not exist; {use}",
        str(tmp_path / "empty"): f"tokenizer folder {tmp_path / 'empty'} holds no tokenizer.json; {use}",
        "a/b/c": f"tokenizer 'a/b/c' is not a file, a folder or a Hub model id; {use}",
        str(tmp_path / "garbage.json"): f"{tmp_path / 'garbage.json'} is not a readable tokenizer.json (",
        str(tmp_path / "other.json"): f"{tmp_path / 'other.json'} is not a readable tokenizer.json (",
    }
    for spec, message in cases.items():
        with pytest.raises(UsageError) as info:
            load_tokenizer(spec)
        assert message in str(info.value) and info.value.exit_code == 2


def test_the_end_of_text_token_must_be_a_special_token_of_the_tokenizer(folder, tmp_path):
    path = str(folder / "tokenizer.json")
    tok = load_tokenizer(path, eot="<|im_start|>")
    assert tok.eot_id == FastTokenizer.from_file(path).token_to_id("<|im_start|>") == 1
    with pytest.raises(UsageError, match=r"the end-of-text token '</s>' is not in the vocabulary of .*; pass --eot "
                                         r"naming one of its special tokens: <\|endoftext\|>, <\|im_start\|>"):
        load_tokenizer(path, eot="</s>")
    with pytest.raises(UsageError, match="the end-of-text token 'e' of .* is an ordinary token that text can produce"):
        load_tokenizer(path, eot="e")
    train(special=("<s>", "</s>")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(UsageError, match=r"'<\|endoftext\|>' is not in the vocabulary .*special tokens: <s>, </s>"):
        load_tokenizer(str(tmp_path))
    assert load_tokenizer(str(tmp_path), eot="</s>").eot_id == 1


# -- encoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("eot", ["before", "after"])
def test_each_document_gets_one_end_of_text_token_before_or_after_it(tokenizer, eot):
    fast = FastTokenizer.from_str(tokenizer.json_text)
    tokens, counts = tokenizer.encode_documents(VARIED, eot)
    assert tokens.dtype == np.uint16 and counts.dtype == np.int64
    assert counts.sum() == len(tokens) and (tokens == tokenizer.eot_id).sum() == len(VARIED)
    for doc, piece in zip(VARIED, np.split(tokens, np.cumsum(counts)[:-1])):
        assert piece[0 if eot == "before" else -1] == tokenizer.eot_id
        body = piece[1:] if eot == "before" else piece[:-1]
        assert body.tolist() == fast.encode(doc, add_special_tokens=False).ids


@pytest.mark.parametrize("eot", ["before", "after"])
def test_a_chunk_encoded_a_slice_at_a_time_gives_the_same_tokens(tokenizer, monkeypatch, eot):
    whole = tokenizer.encode_documents(VARIED * 3, eot)
    monkeypatch.setattr(tokenizer_module, "SLICE_CHARS", 100)
    sliced = tokenizer.encode_documents(VARIED * 3, eot)
    assert np.array_equal(whole[0], sliced[0]) and np.array_equal(whole[1], sliced[1])


def test_no_documents_give_no_tokens(tokenizer):
    tokens, counts = tokenizer.encode_documents([], "before")
    assert (tokens.dtype, len(tokens), counts.dtype, len(counts)) == (np.uint16, 0, np.int64, 0)


def test_special_tokens_spelled_out_in_a_document_are_text(tokenizer):
    for eot in ("before", "after"):
        tokens, counts = tokenizer.encode_documents(TRICKY, eot)
        assert (tokens == tokenizer.eot_id).sum() == len(TRICKY)
        assert 1 not in tokens  # <|im_start|>, another special token
    for doc in TRICKY:
        tokens, _ = tokenizer.encode_documents([doc], "before")
        assert tokenizer.decode(tokens[1:]) == doc


def test_a_non_special_end_of_text_token_spelled_out_is_still_text(tmp_path):
    tok = train()
    tok.add_tokens([AddedToken("<eos>", special=False, normalized=False)])
    tok.save(str(tmp_path / "tokenizer.json"))
    assert "<eos>" in FastTokenizer.from_file(str(tmp_path / "tokenizer.json")).encode("a <eos> b").tokens
    loaded = load_tokenizer(str(tmp_path), eot="<eos>")
    tokens, _ = loaded.encode_documents(["a <eos> b", "<eos>"], "after")
    assert (tokens == loaded.eot_id).sum() == 2 and tokens[-1] == loaded.eot_id == 400


def test_decoding_a_document_gives_back_its_text(tokenizer):
    tokens, counts = tokenizer.encode_documents(VARIED + TRICKY, "after")
    for doc, piece in zip(VARIED + TRICKY, np.split(tokens, np.cumsum(counts)[:-1])):
        assert tokenizer.decode(piece[:-1]) == doc


def test_no_bos_or_post_processor_tokens_are_added(tmp_path):
    from tokenizers import processors

    tok = train()
    tok.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    tok.enable_truncation(4)
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(str(tmp_path))
    tokens, counts = loaded.encode_documents([TEXTS[0]], "before")
    assert 1 not in tokens and counts[0] > 5


def test_ids_past_65535_are_written_as_uint32(tmp_path):
    tok = train()
    tok.add_tokens([f"<extra_{i}>" for i in range(65_200)])
    tok.add_special_tokens(["<|end|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(str(tmp_path), eot="<|end|>")
    assert (loaded.vocab_size, loaded.eot_id, loaded.dtype) == (65_601, 65_600, np.uint32)
    tokens, _ = loaded.encode_documents(["hello <extra_65199>"], "after")
    assert tokens.dtype == np.uint32 and tokens[-2:].tolist() == [65_599, 65_600]
    assert load_tokenizer(str(tmp_path)).dtype == np.uint32  # the vocabulary decides, not the eot


# -- workers -------------------------------------------------------------------------------------


def _encode_in_worker(tok, texts):
    return tok.encode_documents(texts, "before")


def test_a_pickled_tokenizer_encodes_the_same_in_a_spawned_process(tokenizer):
    data = pickle.dumps(tokenizer)
    assert len(data) < len(tokenizer.json_text) + 2000  # the JSON text, not a built tokenizer
    assert pickle.loads(data) == tokenizer
    expected = tokenizer.encode_documents(VARIED, "before")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        tokens, counts = pool.submit(_encode_in_worker, tokenizer, VARIED).result()
    assert np.array_equal(tokens, expected[0]) and np.array_equal(counts, expected[1])


def test_threads_of_one_process_can_encode_at_once(tokenizer):
    docs = VARIED * 20
    expected = tokenizer.encode_documents(docs, "after")[0]
    results, start = [], threading.Barrier(4)

    def encode():
        start.wait()
        results.extend(tokenizer.encode_documents(docs, "after")[0] for _ in range(5))

    threads = [threading.Thread(target=encode) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and all(np.array_equal(r, expected) for r in results)
