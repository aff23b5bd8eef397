#!/usr/bin/env python3
"""Golden token ids from llama.cpp (through llama-cpp-python) for a real SentencePiece vocabulary:
Gemma 3's (262,144 tokens, tokenizer.ggml.model = "llama", no space prefix, byte fallback, and
USER_DEFINED pieces for whitespace runs and HTML tags that llama.cpp matches before SPM).

Writes tests/golden/tokenizer/gemma3.json in the format of gen_tokenizer_fixtures.py (whose
string set, random strings, invalid UTF-8 inputs, tokenize and dump helpers it reuses), with
strings of its own for Gemma's special and user-defined pieces, plus "model_file" and
"model_sha256": the model is not in git (scripts/fetch_model.sh gemma3 fetches it), so a test of
this fixture must skip its model-dependent part when that file is absent, and can tell a
different file by its hash. Per case: "special" = tokenize(add_special=False, parse_special=True),
"plain" = (False, False), "add_special" = (True, True), where add_special adds BOS as the file's
tokenizer.ggml.add_bos_token says (true for Gemma 3).
Run with a Python that has numpy, gguf and llama-cpp-python:
  /work/venv-ref/bin/python tests/golden/gen_tokenizer_spm_fixtures.py [path/to/gemma-3-...gguf]
"""

import hashlib
import os
import sys

import gguf
import llama_cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_tokenizer_fixtures as base  # noqa: E402

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
DEFAULT_MODEL = os.path.join(base.ROOT, "models", MODEL_FILE)

# Besides base.STRINGS: Gemma's control and user-defined pieces, whitespace runs around the
# lengths its user-defined whitespace pieces have (up to 31 newlines, 31 spaces, 31 tabs), and
# text in more scripts.
GEMMA_STRINGS = [
    "<start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nWrite a haiku.<end_of_turn>\n<start_of_turn>model\nSure",
    "<bos>",
    "<eos>",
    "<pad><unk><mask>",
    "text<eos>more",
    "<start_of_turn> <end_of_turn>",
    "<start_of_turn",
    "[multimodal]",
    "<start_of_image><end_of_image>",
    "<unused0><unused99>",
    "<table><tr><td>1</td><td>2</td></tr></table>",
    "<h1>Title</h1><p>para</p><strong>bold</strong> <em>em</em>",
    "<s>strike</s> <b>b</b><i>i</i><code>x = 1</code>",
    "<div class=\"x\"><span>a</span></div>",
    "<bbox>1 2 3 4</bbox>",
    "a\n\nb\n\n\nc" + "\n" * 31 + "d" + "\n" * 40 + "e",
    "a  b   c" + " " * 31 + "d" + " " * 45 + "e",
    "\t\tx" + "\t" * 31 + "y" + "\t" * 33,
    " \n \t \n\t \t\n",
    "   \n\n   \n\n",
    "Hello\tworld\t\tand\t\t\ttabs",
    "  leading two, trailing two  ",
    "ASCII only: The rain in Spain stays mainly in the plain.",
    "Numbers: 0 1 10 100 1000 10000 100000 1000000 3.5e-7 0x1F -42",
    "Tiếng Việt có dấu: Xin chào thế giới",
    "Português: ação, coração, pão; Español: año, niño, ¿qué?; Français: œuvre, Noël",
    "Čeština, Slovenčina, Polski: zażółć gęślą jaźń",
    "Українська: Їжак з'їв ґудзик; Беларуская: ўсё",
    "العربية: اللغة العربية جميلة ١٢٣",
    "فارسی: سلام دنیا",
    "Türkçe: İstanbul ığdır ŞĞÜÖÇ",
    "中文：我爱自然语言处理。繁體中文：語言模型",
    "日本語：東京は日本の首都です。ｶﾀｶﾅ",
    "한국어: 안녕하세요, 세계!",
    "ქართული ენა",
    "Հայերեն",
    "አማርኛ",
    "বাংলা ভাষা",
    "தமிழ் மொழி",
    "Emoji ZWJ: 🧑‍💻 🏳️‍🌈 👩🏾‍🚀 and flags 🇺🇸🇫🇷 and keycap 1️⃣",
    "😀" * 12,
    "```python\nimport os\nprint(os.getcwd())\n```",
    "fn main() {\n\tlet v: Vec<u8> = vec![1, 2, 3];\n\tprintln!(\"{:?}\", v);\n}\n",
    "SELECT * FROM t WHERE a >= 1 AND b <> 'x';",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"k\": \"v\"}}",
    "▁already▁has▁the▁meta▁space",
    "\u2581",
    "x\u2581y \u2581 z",
]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def metadata(path):
    reader = gguf.GGUFReader(path)

    def get(key):
        field = reader.fields.get(key)
        return base.field_value(field) if field is not None else None

    return {
        "architecture": get("general.architecture"),
        "tokenizer_model": get("tokenizer.ggml.model"),
        "tokenizer_pre": get("tokenizer.ggml.pre"),
        "add_space_prefix": get("tokenizer.ggml.add_space_prefix"),
        "add_bos_token": get("tokenizer.ggml.add_bos_token"),
        "add_eos_token": get("tokenizer.ggml.add_eos_token"),
        "token_type": get("tokenizer.ggml.token_type"),
    }


def extra_piece_ids(token_type, n_vocab):
    """Every USER_DEFINED id and the vocabulary's last 64: base.fixture_for samples the first 300
    and 700 random ids, which would leave the tag pieces and the tail mostly untested."""
    user = [i for i, t in enumerate(token_type) if t == gguf.TokenType.USER_DEFINED]
    return sorted(set(user + list(range(max(0, n_vocab - 64), n_vocab))))


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    if not os.path.exists(model):
        sys.exit("model not found: %s (run scripts/fetch_model.sh gemma3)" % model)
    os.makedirs(base.OUT_DIR, exist_ok=True)

    cases = [s.encode("utf-8") for s in base.STRINGS + GEMMA_STRINGS]
    cases += [s.encode("utf-8") for s in base.random_strings(30)]
    cases += base.INVALID_UTF8

    meta = metadata(model)
    assert meta["tokenizer_model"] == "llama", meta["tokenizer_model"]
    fx = base.fixture_for("gemma3", model, cases)
    # add_special must have added BOS exactly when the metadata asks for it.
    assert fx["add_bos"] == bool(meta["add_bos_token"]), (fx["add_bos"], meta["add_bos_token"])
    for case in fx["cases"]:
        assert (case["add_special"][:1] == [fx["bos"]]) == fx["add_bos"], case

    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    have = {p["id"] for p in fx["pieces"]}
    for t in extra_piece_ids(meta["token_type"], fx["n_vocab"]):
        if t not in have:
            fx["pieces"].append({"id": t, "piece_hex": base.piece(vocab, t, False).hex(),
                                 "special_piece_hex": base.piece(vocab, t, True).hex()})
    fx["pieces"].sort(key=lambda p: p["id"])

    out = {
        "generator": "tests/golden/gen_tokenizer_spm_fixtures.py",
        "llama_cpp_python_version": llama_cpp.__version__,
        "model_file": MODEL_FILE,
        "model_sha256": sha256_of(model),
        "tokenizer_model": meta["tokenizer_model"],
        "tokenizer_pre": meta["tokenizer_pre"],
        "add_space_prefix": meta["add_space_prefix"],
    }
    for key, value in fx.items():
        if key not in out:
            out[key] = value
    path = os.path.join(base.OUT_DIR, "gemma3.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(base.dump_fixture(out))
    print("wrote %s: %d cases, %d pieces, %d eog" % (path, len(out["cases"]), len(out["pieces"]),
                                                     len(out["eog"])))


if __name__ == "__main__":
    main()
