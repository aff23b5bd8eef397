#!/usr/bin/env python3
# Renders conversations with the real Jinja2 engine, set up the way Hugging Face's
# apply_chat_template sets it up (sandboxed, trim_blocks, lstrip_blocks, raise_exception), and
# writes one JSON fixture per template. test_chat_template.cc checks that Qilin's C++ renderer
# gives byte-identical text, or an error where Jinja raised.
#
# Usage: python tests/golden/gen_chat_template_fixtures.py \
#            models/SmolLM2-135M-Instruct.Q4_1.gguf tests/golden/chat_template
# Needs the gguf and jinja2 packages.
import json
import os
import sys

from gguf import GGUFReader
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A template without a default system message, as many ChatML fine-tunes ship it.
CHATML_PLAIN = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Meta-Llama-3-8B-Instruct's template (real newlines inside its string literals).
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# Llama-2-chat's template; its literals use backslash escapes, so this is a raw string.
LLAMA2 = (
    r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    r"{% set system_message = messages[0]['content'] %}{% else %}"
    r"{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    r"{% for message in loop_messages %}"
    r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    r"{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    r"{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
    r"{% else %}{% set content = message['content'] %}{% endif %}"
    r"{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    r"{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    r"{% endif %}{% endfor %}"
)


def m(role, content):
    return {"role": role, "content": content}


SYS = m("system", "You are terse.")
CONVERSATIONS = [
    [],
    [m("user", "Hello!")],
    [SYS, m("user", "What is 2+2?")],
    [m("user", "Hi"), m("assistant", "Hello! How can I help?"), m("user", "Tell me a joke.")],
    [SYS, m("user", "Hi"), m("assistant", "Hey."), m("user", "Bye")],
    [m("user", "Héllo wörld — 世界 🌍\nline two\n\nline four")],
    [m("system", "  padded system \n"), m("user", "\n\t spaced out \u3000\u00a0"),
     m("assistant", " answer with spaces "), m("user", "ok")],
    [m("user", "")],
    [m("system", ""), m("user", "empty system")],
    [m("user", "quotes ' \" and braces {{ }} {% %} and \\n backslash")],
    [m("user", "one"), m("user", "two in a row")],
    [m("assistant", "I start."), m("user", "fine")],
]


def render(env, source, messages, add_generation_prompt, bos, eos):
    def raise_exception(message):
        raise TemplateError(message)

    template = env.from_string(source)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           bos_token=bos, eos_token=eos, raise_exception=raise_exception)


def write_fixture(out_dir, name, source, bos, eos):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    cases = []
    for messages in CONVERSATIONS:
        for gen in (False, True):
            case = {"messages": messages, "add_generation_prompt": gen}
            try:
                case["expected"] = render(env, source, messages, gen, bos, eos)
            except Exception as e:  # Jinja raised: Qilin must return an error too
                case["error"] = f"{type(e).__name__}: {e}"
            cases.append(case)
    fixture = {"name": name, "template": source, "bos_token": bos, "eos_token": eos,
               "cases": cases}
    path = os.path.join(out_dir, name + ".json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{path}: {len(cases)} cases")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: gen_chat_template_fixtures.py MODEL.gguf OUT_DIR")
    model, out_dir = sys.argv[1], sys.argv[2]
    field = GGUFReader(model).fields["tokenizer.chat_template"]
    smollm2 = bytes(field.parts[field.data[0]]).decode("utf-8")
    os.makedirs(out_dir, exist_ok=True)
    write_fixture(out_dir, "smollm2", smollm2, "<|im_start|>", "<|im_end|>")
    write_fixture(out_dir, "chatml_plain", CHATML_PLAIN, "<s>", "</s>")
    write_fixture(out_dir, "llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>")
    write_fixture(out_dir, "llama2", LLAMA2, "<s>", "</s>")


if __name__ == "__main__":
    main()
