#!/usr/bin/env python3
"""Golden token ids from llama.cpp (through llama-cpp-python) for tests/unit/test_tokenizer.cc.

Writes tests/golden/tokenizer/<name>.json for five vocabularies:
  smollm     the real SmolLM2 vocab (byte-level BPE, pre-tokenizer "smollm")
  llama-bpe  the same vocab and merges with tokenizer.ggml.pre = "llama-bpe" (Llama-3 regex)
  gpt-2      the same vocab with tokenizer.ggml.pre = "gpt-2"
  default    the same vocab with tokenizer.ggml.pre = "default"
  spm        a small synthetic SentencePiece-style vocab (tokenizer.ggml.model = "llama"),
             written to tests/golden/tokenizer/spm_vocab.gguf and committed (a few KB).
The BPE variants are vocab-only GGUF copies in a temp dir (no tensors); only the synthetic SPM
file is committed. Run with a Python that has numpy, gguf and llama-cpp-python:
  /tmp/refvenv/bin/python tests/golden/gen_tokenizer_fixtures.py [path/to/SmolLM2-...gguf]
"""

import ctypes
import json
import os
import random
import re
import sys
import tempfile

import gguf
import llama_cpp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(HERE, "tokenizer")
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# Hand-picked strings: each is tokenized with parse_special on and off.
STRINGS = [
    "",
    " ",
    "  ",
    "a",
    "Hello world",
    " Hello world",
    "  Hello  world  ",
    "Hello, World! How are you?",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you've heard they'll say we'd go, it's isn't",
    "DON'T SHOUT: IT'S I'M WE'RE THEY'VE YOU'LL HE'D",
    "'s 't 're 've 'm 'll 'd",
    " 'll 'S 'T",
    "\n",
    "\n\n",
    "\n\n\n\n",
    "\r\n",
    "line one\r\nline two\r\n\r\nline four",
    "a\nb\n\nc\n\n\nd",
    "\t",
    "\tindented\n\t\tmore",
    "    four spaces",
    "word    \n   next",
    "trailing spaces   ",
    " " * 40,
    "x" + " " * 17 + "y",
    "\n \n \n",
    "1",
    "12",
    "123",
    "1234567890",
    "3.14159265358979 and 2,718,281,828",
    " 42 apples, 007 bonds, 1e10 and -5",
    "Call 555-0123 or +1 (800) 555-1234 before 2024-12-31T23:59:59Z.",
    "café résumé naïve façade jalapeño",
    "Ångström Øresund Ærø Łódź Škoda",
    "Straße Größe Übermaß",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "שלום עולם",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "你好，世界！今天天气很好。",
    "日本語のテキストとカタカナ",
    "한국어 텍스트입니다",
    "ภาษาไทย",
    "Emoji: 😀😃😄 👍🏽 ❤️ 👨‍👩‍👧‍👦 🇯🇵",
    "🤖🤖🤖",
    "mixed: English, 中文, русский, العربية, 123",
    "def foo(x):\n    return x * 2  # double\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if (a != b && c >= d || !e) { return -1; }",
    "<html><body class=\"main\">Hi &amp; bye</body></html>",
    "https://example.com/path?query=1&b=two#frag",
    "user@example.org, @handle #hashtag $100 50% ^_^ ~tilde~ `code`",
    "((()))[[[]]]{{{}}}<<<>>>",
    "...!!!???,,,;;;:::---___===+++***",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|><|im_start|>",
    "<|im_start |> not special <|im_end",
    "<reponame>qilin<file_sep>src/main.cc",
    "<|user|>question<|end|>",
    "<s>hello</s>",
    "unicode spaces:\u00a0nbsp\u2003em\u3000ideo\u2028ls",
    "zero\u200bwidth\u200djoiner",
    "combining: e\u0301 a\u0308 n\u0303",
    "fullwidth: ＡＢＣ１２３",
    "math: ∑ ∫ √ ∞ ≤ ≥ ≠ ± × ÷",
    "Roman numerals Ⅻ and superscripts ² ³ and fractions ½",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "The year 1999 was followed by 2000, then 2001.",
    "A\u00adsoft\u00adhyphen",
    "end with newline\n",
    " leading space",
    "   leading spaces",
]

# Bytes that are not valid UTF-8: llama.cpp replaces them with U+FFFD before BPE (the SPM path
# keeps them as byte tokens).
INVALID_UTF8 = [
    b"\xff",
    b"abc\x80def",
    b"\xc3(",
    b"\xe2\x82",
    b"ok \xf0\x9f\x98",
]


def random_strings(n, seed=1234):
    """Seeded random strings mixing scripts, digits, whitespace and punctuation."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n\r  ",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "éèêëàâäôöûüçñßøåæœ",
        "абвгдежзийклмнопрстуфхцчшщъыьэюя",
        "你好世界中文字符测试的一是不了",
        "😀😂🤔👍🔥🎉🚀💡",
        "αβγδεζηθικλμνξοπρστυφχψω",
        "\u00a0\u2003\u3000\u200b\u0301",
    ]
    out = []
    for _ in range(n):
        length = rng.randint(1, 60)
        s = []
        for _ in range(length):
            pool = rng.choice(pools)
            s.append(rng.choice(pool))
        out.append("".join(s))
    return out


# --- vocab-only GGUF writers ---------------------------------------------------------------------

def field_value(field):
    """Python value of a GGUFReader field (scalars, strings and arrays)."""
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        etype = field.types[1]
        if etype == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]][0].item()


def write_vocab_copy(model_path, out_path, pre):
    """Vocab-only copy of `model_path` (metadata only, no tensors) with tokenizer.ggml.pre = pre."""
    reader = gguf.GGUFReader(model_path)
    arch = field_value(reader.fields["general.architecture"])
    writer = gguf.GGUFWriter(out_path, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if not (name.startswith("tokenizer.") or name.startswith(arch + ".")):
            continue
        value = field_value(field)
        if name == "tokenizer.ggml.pre":
            value = pre
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_array(name, value)
        else:
            writer.add_key_value(name, value, vtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


SPM_CORPUS = """
The quick brown fox jumps over the lazy dog. Hello world, hello there! It is a truth universally
acknowledged, that a single man in possession of a good fortune, must be in want of a wife.
Tokenizers split text into pieces; the pieces are looked up in a vocabulary and mapped to ids.
I'm sure you've heard they'll say we'd go. Numbers like 12, 345 and 2024 appear in text.
def foo(x): return x * 2 for (int i = 0; i < n; ++i) { sum += a[i]; }
café résumé naïve Привет мир 你好世界
"""


def train_spm_pieces(corpus, n_merges):
    """A tiny BPE trainer over `corpus` in SentencePiece form (spaces -> U+2581, prefix space).

    Returns (chars, merged_pieces) in the order they were learned. Merges pick the most frequent
    adjacent pair (ties by first occurrence), so every merged piece's two halves are pieces too,
    which is what SentencePiece-style merging by score needs.
    """
    words = []
    for w in corpus.split():
        words.append(["\u2581"] + list(w))
    chars = []
    for w in words:
        for c in w:
            if c not in chars:
                chars.append(c)
    merged = []
    for _ in range(n_merges):
        counts = {}
        order = []
        for w in words:
            for a, b in zip(w, w[1:]):
                if (a, b) not in counts:
                    counts[(a, b)] = 0
                    order.append((a, b))
                counts[(a, b)] += 1
        if not counts:
            break
        best = max(order, key=lambda p: counts[p])
        new = best[0] + best[1]
        merged.append(new)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == best[0] and w[i + 1] == best[1]:
                    w[i:i + 2] = [new]
                i += 1
    return chars, merged


def write_spm_vocab(out_path):
    """Synthetic SentencePiece-style ("llama") vocab with byte fallback, deterministic."""
    tokens, scores, types = [], [], []

    def add(text, score, ttype):
        assert text not in tokens, text
        tokens.append(text)
        scores.append(score)
        types.append(ttype)

    add("<unk>", 0.0, gguf.TokenType.UNKNOWN)
    add("<s>", 0.0, gguf.TokenType.CONTROL)
    add("</s>", 0.0, gguf.TokenType.CONTROL)
    for b in range(256):
        add("<0x%02X>" % b, 0.0, gguf.TokenType.BYTE)
    add("<|user|>", 0.0, gguf.TokenType.USER_DEFINED)
    add("<|end|>", 0.0, gguf.TokenType.CONTROL)
    # Train on the corpus plus the test strings so that many merges fire on the fixtures, minus
    # any <...> markup: a learned piece spelled like "<|im_end|>" would be picked up by
    # llama.cpp's name-based EOT detection in hash-map order, which no other program can mirror.
    corpus = re.sub(r"<[^>]*>", " ", SPM_CORPUS + " ".join(STRINGS))
    chars, merged = train_spm_pieces(corpus, 250)
    # Merged pieces score by merge order (earlier = higher); single characters score lowest.
    for i, piece in enumerate(merged):
        if piece not in tokens:
            add(piece, -float(i), gguf.TokenType.NORMAL)
    for i, c in enumerate(chars):
        if c not in tokens:
            add(c, -1000.0 - i, gguf.TokenType.NORMAL)

    writer = gguf.GGUFWriter(out_path, "llama")
    writer.add_name("qilin-spm-test-vocab")
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(16)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types([int(t) for t in types])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- llama.cpp queries -----------------------------------------------------------------------------

def tokenize(vocab, data, add_special, parse_special):
    n = len(data) * 2 + 16
    buf = (llama_cpp.llama_token * n)()
    got = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n, add_special, parse_special)
    if got < 0:
        raise RuntimeError("tokenize failed for %r" % data)
    return list(buf[:got])


def piece(vocab, token, special):
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, special)
    assert n >= 0
    return buf.raw[:n]


def fixture_for(name, path, cases):
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    entries = []
    for data in cases:
        entry = {"text_hex": data.hex()}
        try:
            entry["text"] = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        entry["special"] = tokenize(vocab, data, False, True)
        entry["plain"] = tokenize(vocab, data, False, False)
        entry["add_special"] = tokenize(vocab, data, True, True)
        entries.append(entry)

    # Pieces for every special token and a sample of the rest (keeps the file small).
    rng = random.Random(7)
    sample = sorted(set(list(range(0, min(n_vocab, 300))) + rng.sample(range(n_vocab), min(n_vocab, 700))))
    pieces = []
    for t in sample:
        pieces.append({"id": t, "piece_hex": piece(vocab, t, False).hex(),
                       "special_piece_hex": piece(vocab, t, True).hex()})

    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    return {
        "generator": "tests/golden/gen_tokenizer_fixtures.py",
        "llama_cpp_python_version": llama_cpp.__version__,
        "vocab": name,
        "n_vocab": n_vocab,
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog": eog,
        "cases": entries,
        "pieces": pieces,
    }


def dump_fixture(fx):
    """JSON with one case / piece per line: diffable, but not one id per line."""
    lines = ["{"]
    for key, value in fx.items():
        if key in ("cases", "pieces"):
            rows = [json.dumps(v, ensure_ascii=False) for v in value]
            lines.append(" %s: [\n  %s\n ]," % (json.dumps(key), ",\n  ".join(rows)))
        else:
            lines.append(" %s: %s," % (json.dumps(key), json.dumps(value, ensure_ascii=False)))
    lines[-1] = lines[-1].rstrip(",")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    if not os.path.exists(model):
        sys.exit("model not found: %s (run scripts/fetch_model.sh)" % model)
    os.makedirs(OUT_DIR, exist_ok=True)

    cases = [s.encode("utf-8") for s in STRINGS]
    cases += [s.encode("utf-8") for s in random_strings(30)]
    cases += INVALID_UTF8

    spm_path = os.path.join(OUT_DIR, "spm_vocab.gguf")
    write_spm_vocab(spm_path)

    with tempfile.TemporaryDirectory() as tmp:
        vocabs = [("smollm", model)]
        for pre in ["llama-bpe", "gpt-2", "default"]:
            path = os.path.join(tmp, pre + ".gguf")
            write_vocab_copy(model, path, pre)
            vocabs.append((pre, path))
        vocabs.append(("spm", spm_path))
        for name, path in vocabs:
            fx = fixture_for(name, path, cases)
            out = os.path.join(OUT_DIR, name + ".json")
            with open(out, "w", encoding="utf-8") as f:
                f.write(dump_fixture(fx))
            print("wrote %s: %d cases, %d eog" % (out, len(fx["cases"]), len(fx["eog"])))


if __name__ == "__main__":
    main()
