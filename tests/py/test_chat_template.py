"""Chat templates: tokenizer_config.json's chat_template decides how {"messages"} SFT data
and conversational preference pairs are rendered and which tokens carry the loss. The
independent reference is the template itself rendered with Jinja2 (python3-jinja2, as
transformers' apply_chat_template does: trim_blocks, lstrip_blocks) and tokenized by the
Python byte-level BPE of tok_ref.py; the assistant spans come from rendering growing
prefixes of the conversation, not from fdpo."""
import json
import os
import subprocess
import unicodedata

import pytest

from tok_ref import B2U, QWEN2_PAT, LLAMA3_PAT, GPT2_PAT, CORPUS, RefBPE, build_vocab, train_merges, write_tokenizer

try:
    import jinja2
    import jinja2.sandbox
except ImportError:  # pragma: no cover
    jinja2 = None

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
FDPO = os.environ.get("FDPO_BIN", os.path.join(ROOT, "build/fdpo"))
HARNESS = os.environ.get("FDPO_HARNESS", os.path.join(ROOT, "build/fdpo-harness"))

# The published templates (SmolLM2-Instruct; Qwen2.5-Instruct without its tools branch;
# Meta-Llama-3-Instruct; Llama-3.1/3.2-Instruct without tools; Zephyr / TinyLlama-Chat).
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN25 = r"""{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA31 = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

# Qwen2-Instruct: SmolLM2's template with its own default system text
QWEN2 = SMOLLM2.replace("You are a helpful AI assistant named SmolLM, trained by Hugging Face", "You are a helpful assistant.")
# Qwen2.5-Instruct as published, with its tools branch (rendered only when tools are passed)
# Llama-3.1-Instruct as published (Llama-3.3-Instruct has the same): its tool branches render
# only with tools, tool/ipython roles or tool_calls, none of which fdpo passes or accepts.
LLAMA31_PUBLISHED = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

QWEN25_TOOLS = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
# Qwen3's published template without its tools branch: an empty <think> block in the last
# assistant turn; not ChatML as the built-in renders it (it was taken for chatml)
QWEN3 = r"""{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

# OpenHermes-2.5: ChatML after a bos (it lost the bos: rendered as the built-in chatml)
HERMES = ("{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Phi-3: Zephyr's role markers, its own end of turn "<|end|>" (it was taken for zephyr: eos for <|end|>)
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
        "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif "
        "message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

CHATML_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True)]
LLAMA3_ADDED = [("<|begin_of_text|>", True), ("<|end_of_text|>", True), ("<|start_header_id|>", True),
                ("<|end_header_id|>", True), ("<|eot_id|>", True)]
ZEPHYR_ADDED = [("<unk>", True), ("<s>", True), ("</s>", True)]

# name: (template, regex, added tokens, config tokens, end-of-turn marker, fdpo built-in)
CASES = {
    "smollm2": (SMOLLM2, GPT2_PAT, CHATML_ADDED, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, "<|im_end|>", "chatml"),
    "qwen25": (QWEN25, QWEN2_PAT, CHATML_ADDED, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, "<|im_end|>", "chatml"),
    "qwen25-tools": (QWEN25_TOOLS, QWEN2_PAT, CHATML_ADDED, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                     "<|im_end|>", "chatml"),
    "qwen2": (QWEN2, QWEN2_PAT, CHATML_ADDED, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, "<|im_end|>", "chatml"),
    "qwen25-base-eos": (QWEN25, QWEN2_PAT, CHATML_ADDED, {"eos_token": "<|endoftext|>"}, "<|im_end|>", "chatml"),
    "llama3": (LLAMA3, LLAMA3_PAT, LLAMA3_ADDED, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, "<|eot_id|>", "llama3"),
    "llama31": (LLAMA31, LLAMA3_PAT, LLAMA3_ADDED, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, "<|eot_id|>", "llama3"),
    "llama31-published": (LLAMA31_PUBLISHED, LLAMA3_PAT, LLAMA3_ADDED, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                          "<|eot_id|>", "llama3"),
    "zephyr": (ZEPHYR, LLAMA3_PAT, ZEPHYR_ADDED, {"bos_token": "<s>", "eos_token": "</s>"}, "</s>", "zephyr"),
    "hermes": (HERMES, GPT2_PAT, CHATML_ADDED + [("<s>", True)], {"bos_token": "<s>", "eos_token": "<|im_end|>"},
               "<|im_end|>", "chatml"),
}

CONVS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another one, please"},
     {"role": "assistant", "content": "Blue, or green!"}],
    [{"role": "user", "content": "  spaced question \n"}, {"role": "assistant", "content": "\n answer with spaces  "}],
    [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"}, {"role": "user", "content": "last word"}],
]


def need_jinja():
    if jinja2 is None:
        pytest.fail("python3-jinja2 missing: run scripts/deps.sh")


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def render(template, messages, cfg, add_generation_prompt):
    """As transformers' apply_chat_template: a sandboxed environment with trim_blocks and
    lstrip_blocks, raise_exception defined, and only the special tokens the config sets
    (an unset bos_token is undefined, and Jinja refuses undefined + text)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tokens = {k: v for k, v in cfg.items() if k in ("bos_token", "eos_token") and v}
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **tokens)


def make_tok(d, case, with_template=True, normalizer=None):
    template, pattern, added, cfg, _, _ = CASES[case]
    merges = train_merges(CORPUS + ["What is it? Name a colour. Another one, please. Blue, or green! Red."], pattern, 80)
    vocab = build_vocab(merges, added)
    config = dict(cfg)
    if with_template:
        config["chat_template"] = template
    kind = "gpt2" if pattern == GPT2_PAT else "split"
    write_tokenizer(str(d), kind, pattern, vocab, merges, added, config, normalizer)
    return RefBPE(vocab, merges, pattern, added, nfc=normalizer is not None), vocab


def token_len(vocab_inv, added, tid):
    s = vocab_inv[tid]
    if s in added:
        return len(s.encode("utf-8"))
    return len(s)  # one byte per byte-alphabet symbol


U2B = {u: b for b, u in B2U.items()}


def expected_sft(case, ref, vocab, conv, template=None, eot=None):
    """Tokens and loss weights of one conversation, from Jinja renders of its prefixes."""
    t0, _, added, cfg, eot0, _ = CASES[case]
    template, eot = template or t0, eot or eot0
    full = render(template, conv, cfg, False)
    spans = []
    for i, m in enumerate(conv):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:  # OpenAI's weight 0: context, not trained
            continue
        start = len(render(template, conv[:i], cfg, True).encode("utf-8"))
        done = render(template, conv[:i + 1], cfg, False)
        end = done.rfind(eot) + len(eot)
        spans.append((start, len(done[:end].encode("utf-8"))))
    last = full.rfind(eot) + len(eot)  # the text after the last end-of-turn is not data
    text = full[:last] if full[last:].strip("\n") == "" else full
    ids = ref.encode(text, True)
    inv = {v: k for k, v in vocab.items()}
    added_set = {a for a, _ in added}
    w, off = [], 0
    for t in ids:
        n = token_len(inv, added_set, t)
        w.append(1.0 if any(off < e and off + n > s for s, e in spans) else 0.0)
        off += n
    eos = vocab[cfg["eos_token"]]
    if ids[-1] != eos:
        ids.append(eos)
        w.append(1.0 if conv[-1]["role"] == "assistant" and conv[-1].get("weight", 1) != 0 else 0.0)
    w[0] = 0.0
    return ids, w, text


def harness(*args):
    r = subprocess.run([HARNESS, *args], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return json.loads(r.stdout)


def write_jsonl(p, rows):
    with open(p, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(p)


@pytest.mark.parametrize("case", list(CASES))
def test_sft_messages_match_the_jinja_render(case, tmp_path):
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", case)
    info = harness("tok-info", str(tmp_path / "tok"))
    assert info["chat"] == CASES[case][5]
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    assert len(got) == len(CONVS)
    for conv, seq in zip(CONVS, got):
        ids, w, text = expected_sft(case, ref, vocab, conv)
        assert seq["tokens"] == ids, text
        assert seq["weights"] == w, text
        if conv[-1]["role"] == "assistant":
            assert sum(w) > 0


# Jinja's trim is Python's str.strip(): every str.isspace() character, Unicode White_Space
# and U+001C..U+001F, at both ends; U+200B, U+FEFF and U+180E are not whitespace and stay.
UNICODE_SPACE_CONVS = [
    [{"role": "system", "content": "\u3000Be brief.\u2003"}, {"role": "user", "content": "hi\u00a0"},
     {"role": "assistant", "content": "\x1c\u2028Red.\u0085\x1f"}],
    [{"role": "user", "content": "\u200bkeep\ufeff\u180e"},
     {"role": "assistant", "content": "\u202f\u205f\u1680\x1d\x1e It is 4.\u2009\u200a\u2029\u3000"}],
    [{"role": "user", "content": "\u00a0\u2000\u2001\u2002\u2004\u2005\u2006\u2007\u2008 \u00e9t\u00e9 \u2028\u2029"},
     {"role": "assistant", "content": "\t\n\x0b\x0c\r \u3000"}],
]


@pytest.mark.parametrize("case", ["llama3", "llama31", "llama31-published"])
def test_llama3_trim_strips_unicode_whitespace(case, tmp_path):
    """`| trim` stripped only ASCII whitespace: U+00A0, U+3000, U+2028, U+001C... stayed in the
    content (and the tokens) where Jinja's str.strip() removes them."""
    need_jinja()
    template, _, _, cfg, _, _ = CASES[case]
    ref, vocab = make_tok(tmp_path / "tok", case)
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in UNICODE_SPACE_CONVS])
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    assert len(got) == len(UNICODE_SPACE_CONVS)
    for conv, seq in zip(UNICODE_SPACE_CONVS, got):
        ids, w, text = expected_sft(case, ref, vocab, conv)
        assert seq["tokens"] == ids, repr(text)
        assert seq["weights"] == w, repr(text)
    prompts = [c[:-1] for c in UNICODE_SPACE_CONVS]
    got = harness("data-chat-prompts", str(tmp_path / "tok"), "auto",
                  write_jsonl(tmp_path / "p.jsonl", [{"messages": c} for c in prompts]))
    for conv, ids in zip(prompts, got["ids"]):
        text = render(template, conv, cfg, True)
        assert ids == ref.encode(text, True), repr(text)
    # the reference keeps what is not str.isspace() and strips what is
    text = render(template, UNICODE_SPACE_CONVS[1], cfg, False)
    assert "\n\n\u200bkeep\ufeff\u180e<|eot_id|>" in text and "\n\nIt is 4.<|eot_id|>" in text, repr(text)


WEIGHTED = [
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red.", "weight": 0},
     {"role": "user", "content": "Another one, please"}, {"role": "assistant", "content": "Blue, or green!", "weight": 1}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."},
     {"role": "user", "content": "Another one, please"}, {"role": "assistant", "content": "Red.", "weight": 0}],
]


@pytest.mark.parametrize("case", list(CASES))
def test_sft_message_weight_zero_is_context(case, tmp_path):
    """OpenAI's fine-tuning format: an assistant message with "weight": 0 is context, kept in
    the text and out of the loss (its content and end-of-turn marker; the closing eos too when
    it is the last message); "weight": 1 is trained as a message without the key. It was
    ignored (every assistant message trained). Reference: the Jinja render with those spans
    left out."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", case)
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in WEIGHTED])
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    for conv, seq in zip(WEIGHTED, got):
        ids, w, text = expected_sft(case, ref, vocab, conv)
        assert seq["tokens"] == ids, text
        assert seq["weights"] == w, text
        unweighted, _, _ = expected_sft(case, ref, vocab, [{k: v for k, v in m.items() if k != "weight"} for m in conv])
        assert unweighted == ids   # the same text: only the loss changes
    assert got[0]["weights"] != expected_sft(case, ref, vocab, [{k: v for k, v in m.items() if k != "weight"}
                                                                  for m in WEIGHTED[0]])[1]


@pytest.mark.parametrize("case", ["smollm2", "llama31", "zephyr"])
def test_sft_reads_a_prompt_kept_as_its_messages_json_text_as_the_conversation(case, tmp_path):
    """generate's samples keep a conversational prompt as its messages' JSON text
    ({"prompt": "[...]", "completion": text}); dpo, kto, rm and score read that string as the
    conversation, sft trained the JSON text itself. It is now the conversation prompt + the
    completion as the assistant's reply, loss on the reply. Reference: the Jinja render of the
    message-list form (the last assistant message trained, the prompt's ones context)."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", case)
    rows = [{"prompt": json.dumps(CONVS[0][:1], separators=(",", ":")), "completion": CONVS[0][1]["content"]},
            {"prompt": json.dumps(CONVS[1][:4]), "completion": CONVS[1][4]["content"]},
            {"prompt": "[not messages]", "completion": " plain"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    for conv, seq in zip((CONVS[0], CONVS[1]), got):
        conv = [dict(m, weight=0) if m["role"] == "assistant" else m for m in conv[:-1]] + conv[-1:]
        ids, w, text = expected_sft(case, ref, vocab, conv)
        assert seq["tokens"] == ids and seq["weights"] == w, text
    eos = vocab[CASES[case][3]["eos_token"]]   # a string that is not a message list stays text
    assert got[2]["tokens"] == ref.encode("[not messages]", False) + ref.encode(" plain", False) + [eos]


@pytest.mark.parametrize("case", ["smollm2", "llama31", "zephyr"])
def test_sft_conversational_prompt_completion(case, tmp_path):
    """TRL's conversational prompt-completion ({"prompt": [...], "completion": [...]}) was
    refused ("field 'prompt' must be a string"). It is the conversation prompt + completion,
    loss on the completion's assistant messages only: the prompt's (few-shot) assistant
    messages are context. Reference: the Jinja render, those spans left out."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", case)
    rows = [{"prompt": CONVS[0][:1], "completion": CONVS[0][1:]},
            {"prompt": CONVS[1][:4], "completion": CONVS[1][4:]}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    for row, seq in zip(rows, got):
        conv = [dict(m, weight=0) if m["role"] == "assistant" else m for m in row["prompt"]] + row["completion"]
        ids, w, text = expected_sft(case, ref, vocab, conv)
        assert seq["tokens"] == ids and seq["weights"] == w, text
    for row, msg in (({"prompt": CONVS[0][:1], "completion": "It is 4."},
                      "d.jsonl:1: field 'completion' must be a list of messages like 'prompt'"),
                     ({"prompt": CONVS[0][:1], "completion": [{"role": "user", "content": "x"}]},
                      "d.jsonl:1: completion[0] must be an assistant message"),
                     ({"prompt": [{"role": "system", "content": "s"}], "completion": CONVS[0][1:]},
                      "d.jsonl:1: prompt[0] is a system message"),
                     ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": "zz"},
                                  {"role": "user", "content": "q2"}], "completion": CONVS[0][1:]},
                      "d.jsonl:1: field 'prompt[1].weight': the prompt's messages are context"),
                     ({"prompt": CONVS[0][:1], "completion": [{"role": "assistant", "content": "a", "weight": 2}]},
                      "d.jsonl:1: field 'completion[0].weight' must be 0 or 1")):
        data = write_jsonl(tmp_path / "d.jsonl", [row])
        r = subprocess.run([HARNESS, "data-chat-sft", str(tmp_path / "tok"), "auto", data], capture_output=True, text=True)
        assert r.returncode == 1 and msg in r.stderr, r.stderr


@pytest.mark.parametrize("msgs,err", [
    ([{"role": "user", "content": "a", "weight": 0}, {"role": "assistant", "content": "b"}],
     "field 'messages[0].weight' on a user message: only assistant messages take a weight"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0.5}],
     "field 'messages[1].weight' must be 0 or 1"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": "0"}],
     "field 'messages[1].weight' must be 0 or 1"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}],
     "every assistant message has weight 0 (nothing to learn)"),
])
def test_sft_message_weight_errors(msgs, err, tmp_path):
    make_tok(tmp_path / "tok", "smollm2")
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONVS[0]}, {"messages": msgs}])
    r = subprocess.run([HARNESS, "data-chat-sft", str(tmp_path / "tok"), "auto", data], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and f"{data}:2: {err}" in r.stderr, r.stderr


@pytest.mark.parametrize("case", ["smollm2", "qwen25", "llama31", "zephyr"])
def test_pref_pairs_match_the_jinja_render(case, tmp_path):
    """Prompt = the render with add_generation_prompt; each completion = the rest of the full
    render up to the assistant's end-of-turn marker, then eos unless that marker is eos.
    Explicit prompts and prompts implied by a common prefix of messages give the same ids."""
    need_jinja()
    template, _, _, cfg, eot, _ = CASES[case]
    ref, vocab = make_tok(tmp_path / "tok", case)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    chosen, rejected = [{"role": "assistant", "content": "Red."}], [{"role": "assistant", "content": "Blue, or green!"}]
    rows = [{"prompt": prompt, "chosen": chosen, "rejected": rejected},
            {"chosen": prompt + chosen, "rejected": prompt + rejected},
            {"prompt": prompt[1:], "chosen": chosen, "rejected": rejected}]
    got = harness("data-chat-pref", str(tmp_path / "tok"), "auto", write_jsonl(tmp_path / "p.jsonl", rows))["pairs"]
    eos = vocab[cfg["eos_token"]]
    for row, pair in zip(rows, got):
        p = row.get("prompt", prompt)
        ptext = render(template, p, cfg, True)
        assert pair["prompt"] == ref.encode(ptext, True), ptext
        for side, msgs in (("chosen", chosen), ("rejected", rejected)):
            full = render(template, p + msgs, cfg, False)
            assert full.startswith(ptext)
            comp = full[len(ptext):]
            comp = comp[:comp.rfind(eot) + len(eot)]
            want = ref.encode(comp, True)
            if want[-1] != eos:
                want.append(eos)
            assert pair[side] == want, comp


@pytest.mark.parametrize("case", ["smollm2", "qwen25", "hermes", "llama3", "llama31", "llama31-published", "zephyr"])
def test_pref_pair_without_a_prompt_is_the_conversations_render(case, tmp_path):
    """chosen and rejected that are each a lone assistant turn: the implied prompt is empty, and
    prompt + completion is the Jinja render of the conversation itself, split where the
    assistant's content starts: for ChatML with a default system turn (smollm2, qwen25) the
    prompt holds that system turn (the templates render it before a first non-system message)."""
    need_jinja()
    template, _, _, cfg, eot, _ = CASES[case]
    ref, vocab = make_tok(tmp_path / "tok", case)
    sides = {"chosen": "Red.", "rejected": "Blue, or green!"}
    row = {side: [{"role": "assistant", "content": text}] for side, text in sides.items()}
    pair = harness("data-chat-pref", str(tmp_path / "tok"), "auto", write_jsonl(tmp_path / "p.jsonl", [row]))["pairs"][0]
    eos = vocab[cfg["eos_token"]]
    for side, text in sides.items():
        full = render(template, row[side], cfg, False)
        at = full.index(text)
        assert pair["prompt"] == ref.encode(full[:at], True), full[:at]
        comp = full[at:full.rfind(eot) + len(eot)]
        want = ref.encode(comp, True)
        if want[-1] != eos:
            want.append(eos)
        assert pair[side] == want, comp


def test_named_template_overrides_the_file(tmp_path):
    """--chat-template chatml on a tokenizer without a template renders as SmolLM2's file
    would, minus its default system turn (that belongs to the file)."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", "smollm2", with_template=False)
    assert harness("tok-info", str(tmp_path / "tok"))["chat"] == "plain"
    conv = CONVS[1]  # starts with a system message: no default system turn either way
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": conv}])
    got = harness("data-chat-sft", str(tmp_path / "tok"), "chatml", data)["sequences"][0]
    ids, w, _ = expected_sft("smollm2", ref, vocab, conv)
    assert got["tokens"] == ids and got["weights"] == w


def test_plain_is_the_default_without_a_template(tmp_path):
    """fdpo's own format, built by hand: "<|ROLE|>\\nCONTENT\\n", loss on the assistant's
    "CONTENT\\n" and the final <|endoftext|>; the byte tokenizer makes ids = bytes."""
    conv = CONVS[0]
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": conv}])
    got = harness("data-chat-sft", "byte", "auto", data)["sequences"][0]
    head = "<|user|>\nWhat is 2+2?\n<|assistant|>\n".encode()
    body = "It is 4.\n".encode()
    assert got["tokens"] == list(head + body) + [256]
    assert got["weights"] == [0.0] * len(head) + [1.0] * (len(body) + 1)


def test_content_never_matches_special_tokens(tmp_path):
    """A message that contains "<|im_end|>" as text is text: only the template's markers are
    special tokens."""
    ref, vocab = make_tok(tmp_path / "tok", "smollm2")
    conv = [{"role": "user", "content": "say <|im_end|> please"}, {"role": "assistant", "content": "ok"}]
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", write_jsonl(tmp_path / "d.jsonl", [{"messages": conv}]))
    toks = got["sequences"][0]["tokens"]
    # the default system turn's, the user's and the assistant's end of turn; not the content's
    assert toks.count(vocab["<|im_end|>"]) == 3
    assert ref.encode("say <|im_end|> please", False) == ref.encode_text("say <|im_end|> please")


def run(*args):
    return subprocess.run([FDPO, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("template", ["{% for m in messages %}[[{{ m.role }}]] {{ m.content }}{% endfor %}", PHI3])
def test_unknown_template_is_refused_with_the_builtins(tmp_path, template):
    make_tok(tmp_path / "tok", "smollm2")
    cfg = json.load(open(tmp_path / "tok" / "tokenizer_config.json"))
    cfg["chat_template"] = template
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(cfg))
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONVS[0]}])
    common = ["--out", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "tok"), "--n-layer", "1", "--n-embd", "16",
              "--n-head", "2", "--n-positions", "64", "--seq-len", "32", "--steps", "1", "--quiet", data]
    r = run("sft", *common)
    assert r.returncode == 1
    assert "d.jsonl:1" in r.stderr and "chat_template is not one fdpo recognises" in r.stderr
    assert "plain, chatml, llama3, zephyr" in r.stderr
    r = run("sft", "--chat-template", "vicuna", *common)
    assert r.returncode == 1 and "--chat-template: 'vicuna' is not a built-in template (plain, chatml, llama3, zephyr" in r.stderr
    r = run("sft", "--chat-template", "chatml", *common)  # an explicit built-in replaces the unknown one
    assert r.returncode == 0, r.stderr


def test_sft_and_dpo_run_on_a_chatml_tokenizer(tmp_path):
    """End to end: sft on messages, then dpo on conversational pairs, with a Qwen2-style
    tokenizer directory; the checkpoint carries tokenizer.json and tokenizer_config.json."""
    make_tok(tmp_path / "tok", "qwen25")
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS[:2]] * 4)
    r = run("sft", "--out", str(tmp_path / "sft"), "--tokenizer", str(tmp_path / "tok"), "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--n-positions", "128", "--seq-len", "96", "--steps", "2", "--batch-size", "2",
            "--eval-every", "0", "--quiet", data)
    assert r.returncode == 0, r.stderr
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        assert os.path.isfile(tmp_path / "sft" / f)
    assert harness("tok-info", str(tmp_path / "sft"))["chat"] == "chatml"
    info = json.loads(run("info", "--json", str(tmp_path / "sft")).stdout)
    tj = json.load(open(tmp_path / "tok" / "tokenizer.json"))
    im_end = next(a["id"] for a in tj["added_tokens"] if a["content"] == "<|im_end|>")
    assert info["chat_template"] == "chatml" and info["eos_token_id"] == im_end
    p = [{"role": "user", "content": "Name a colour."}]
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p, "chosen": [{"role": "assistant", "content": "Red."}],
                                                "rejected": [{"role": "assistant", "content": "Blue!"}]}] * 4)
    r = run("dpo", "--model", str(tmp_path / "sft"), "--data", pairs, "--out", str(tmp_path / "dpo"), "--steps", "1",
            "--batch-size", "2", "--eval-fraction", "0", "--quiet")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", ["smollm2", "llama31", "zephyr"])
def test_conversational_prompts_get_the_generation_prompt(case, tmp_path):
    """Prompt files for generate/eval/online/rl: {"messages": [...]} or {"prompt": [...]}
    lines are rendered with add_generation_prompt; plain string prompts stay text."""
    need_jinja()
    template, _, _, cfg, _, _ = CASES[case]
    ref, vocab = make_tok(tmp_path / "tok", case)
    convs = [[{"role": "user", "content": "Name a colour."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]]
    rows = [{"messages": convs[0]}, {"prompt": convs[1]}, {"prompt": "plain <|im_end|> text"}]
    got = harness("data-chat-prompts", str(tmp_path / "tok"), "auto", write_jsonl(tmp_path / "p.jsonl", rows))
    for conv, ids in zip(convs, got["ids"]):
        assert ids == ref.encode(render(template, conv, cfg, True), True)
    assert got["ids"][2] == ref.encode("plain <|im_end|> text", False)
    assert json.loads(got["prompts"][0]) == convs[0]


def continued(full, final):
    """transformers' continue_final_message (apply_chat_template): the render cut after the
    final message's content where the render holds it verbatim from the stripped text's last
    occurrence, else after that stripped text."""
    loc = full.rindex(final.strip())
    if full[loc:loc + len(final.lstrip())] == final:
        return full[:loc + len(final.lstrip())]
    return full[:loc + len(final.strip())]


@pytest.mark.parametrize("case", ["smollm2", "llama3", "zephyr"])
def test_a_prompt_ending_with_the_assistant_is_continued(case, tmp_path):
    """A prompt whose last message is the assistant's is continued, as TRL's
    maybe_apply_chat_template does (continue_final_message): it ended that turn and opened a
    new one. A sample's text then goes on with that message, and a pair carrying the prompt
    as JSON text with text completions (how online and pairs write samples) renders the
    completion the same way: prompt + completion is the render of the conversation whose last
    message is the prompt's content (cut) followed by the completion. With message-list
    completions each message is a turn of its own, as TRL renders them (prompt + chosen is the
    conversation's render; the prompt gets the generation prompt)."""
    need_jinja()
    template, _, _, cfg, eot, _ = CASES[case]
    ref, vocab = make_tok(tmp_path / "tok", case)
    conv = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red, or "}]
    prompt_text = continued(render(template, conv, cfg, False), conv[-1]["content"])
    spaced = conv[:1] + [{"role": "assistant", "content": " Red, or "}]   # the stripped branch of the rule
    got = harness("data-chat-prompts", str(tmp_path / "tok"), "auto",
                  write_jsonl(tmp_path / "p.jsonl", [{"prompt": conv}, {"prompt": spaced}]))
    assert got["ids"][0] == ref.encode(prompt_text, True), prompt_text
    spaced_text = continued(render(template, spaced, cfg, False), spaced[-1]["content"])
    assert got["ids"][1] == ref.encode(spaced_text, True), spaced_text
    eos = vocab[cfg["eos_token"]]
    sides = {"chosen": " blue. ", "rejected": "green!"}
    rows = [{"prompt": json.dumps(conv, separators=(",", ":")), **sides},
            {"prompt": conv, **{k: [{"role": "assistant", "content": v}] for k, v in sides.items()}},
            {"prompt": json.dumps(conv, separators=(",", ":")), "chosen": "  ", "rejected": " x"}]   # blanks alone
    pairs = harness("data-chat-pref", str(tmp_path / "tok"), "auto", write_jsonl(tmp_path / "d.jsonl", rows))["pairs"]
    assert pairs[0]["prompt"] == got["ids"][0]
    kept = prompt_text[prompt_text.rindex(conv[-1]["content"].strip()):]   # the open content as the prompt holds it
    for row, side, text in [(0, "chosen", " blue. "), (0, "rejected", "green!"), (2, "chosen", "  "), (2, "rejected", " x")]:
        merged = conv[:-1] + [{"role": "assistant", "content": kept + text}]
        full = render(template, merged, cfg, False)
        assert full.startswith(prompt_text)
        want = ref.encode(full[len(prompt_text):full.rfind(eot) + len(eot)], True)
        assert pairs[row][side] == want + ([eos] if want[-1] != eos else []), (side, full)
    # the message-list form: TRL's render of prompt + chosen, the prompt with the generation prompt
    gen = render(template, conv, cfg, True)
    assert pairs[1]["prompt"] == ref.encode(gen, True)
    for side, text in sides.items():
        full = render(template, conv + [{"role": "assistant", "content": text}], cfg, False)
        assert full.startswith(gen)
        want = ref.encode(full[len(gen):full.rfind(eot) + len(eot)], True)
        assert pairs[1][side] == want + ([eos] if want[-1] != eos else []), (side, full)


def test_bad_conversational_prompt(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "bot", "content": "x"}]}])
    r = subprocess.run([HARNESS, "data-chat-prompts", "byte", "auto", p], capture_output=True, text=True)
    assert r.returncode == 1 and "p.jsonl:1: messages[0].role is 'bot'" in r.stderr
    # a system message ends no prompt (TRL: "Invalid role in the last message"); tool calls
    # were dropped from the text; a plain-text prompt line that is a message list is checked
    # like a JSONL one, and one with text after the list is text
    for rows, msg in (([{"prompt": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}],
                       "p.jsonl:1: prompt[1] is a system message: a prompt ends with a user message (answered after "
                       "the generation prompt) or an assistant one (continued)"),
                      ([{"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}]}],
                       "p.jsonl:1: messages[1].tool_calls: tool calls are not rendered by fdpo's chat templates")):
        r = subprocess.run([HARNESS, "data-chat-prompts", "byte", "auto", write_jsonl(tmp_path / "p.jsonl", rows)],
                           capture_output=True, text=True)
        assert r.returncode == 1 and msg in r.stderr, r.stderr
    (tmp_path / "t.txt").write_text('[{"role":"tool","content":"hi"}]\n[{"role":"user","content":"hi"}] and more\n')
    r = subprocess.run([HARNESS, "data-chat-prompts", "byte", "auto", tmp_path / "t.txt"], capture_output=True, text=True)
    assert r.returncode == 1 and f"{tmp_path / 't.txt'}:1: prompt[0].role is 'tool'; expected system, user or assistant" \
        in r.stderr, r.stderr
    (tmp_path / "t.txt").write_text('[{"role":"user","content":"hi"}] and more\n')
    got = harness("data-chat-prompts", "byte", "auto", tmp_path / "t.txt")
    assert got["ids"][0] == list('[{"role":"user","content":"hi"}] and more'.encode())


def test_generate_renders_chat_prompts_and_skips_specials(tmp_path):
    """fdpo generate on a ChatML checkpoint: the written completion text holds no special
    token, while the ids keep them."""
    make_tok(tmp_path / "tok", "smollm2")
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS[:2]] * 2)
    r = run("sft", "--out", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "tok"), "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--n-positions", "128", "--seq-len", "96", "--steps", "1", "--batch-size", "2",
            "--eval-every", "0", "--quiet", data)
    assert r.returncode == 0, r.stderr
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "Name a colour."}]}])
    r = run("generate", "--model", str(tmp_path / "m"), "--data", prompts, "--n", "8", "--max-new-tokens", "40",
            "--seed", "3")
    assert r.returncode == 0, r.stderr
    info = harness("tok-info", str(tmp_path / "m"))
    specials = set(info["special"]) - {info["eos"]}
    tok_json = json.load(open(tmp_path / "m" / "tokenizer.json"))
    names = [a["content"] for a in tok_json["added_tokens"] if a["special"]]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 8
    with_special = [s for s in rows if specials & set(s["tokens"])]
    assert with_special, "the seed should sample a special token somewhere; pick another seed"
    for s in rows:
        assert not any(n in s["completion"] for n in names), s
    r = run("generate", "--model", str(tmp_path / "m"), "--data", prompts, "--chat-template", "alpaca")
    assert r.returncode == 1 and "plain, chatml, llama3, zephyr" in r.stderr


def test_pairs_from_sampled_chat_prompts_are_conversational(tmp_path):
    """Samples of a conversational prompt carry it as the JSON text of its messages (the
    prompt files' convention), and online/pairs write {"prompt": that text, "chosen": text,
    "rejected": text}: the pair renders exactly as the message-list form."""
    make_tok(tmp_path / "tok", "qwen25")
    prompt = [{"role": "user", "content": "Name a colour."}]
    rows = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "Red."}],
             "rejected": [{"role": "assistant", "content": "Blue!"}]},
            {"prompt": json.dumps(prompt, separators=(",", ":")), "chosen": "Red.", "rejected": "Blue!"},
            {"prompt": "[not messages]", "chosen": "Red.", "rejected": "Blue!"}]
    got = harness("data-chat-pref", str(tmp_path / "tok"), "auto", write_jsonl(tmp_path / "p.jsonl", rows))["pairs"]
    assert got[0] == got[1]
    assert got[2]["prompt"] != got[0]["prompt"]  # a string that is not a message list stays text


@pytest.mark.parametrize("case,name", [("hermes", "chatml"), ("smollm2", "chatml")])
def test_naming_the_files_own_family_keeps_the_files_template(case, name, tmp_path):
    """--chat-template NAME of the file's own family renders with the file's parameters (its
    leading bos, its default system turn); the checkpoint then kept the built-in's source,
    without them, so later commands (auto) rendered otherwise than training did"""
    need_jinja()
    make_tok(tmp_path / "tok", case)
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    r = run("sft", "--out", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "tok"), "--chat-template", name,
            "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "256", "--seq-len", "200",
            "--steps", "1", "--batch-size", "2", "--eval-every", "0", "--quiet", data)
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "m" / "tokenizer_config.json"))["chat_template"] == CASES[case][0]
    trained = harness("data-chat-sft", str(tmp_path / "tok"), name, data)["sequences"]
    assert trained == harness("data-chat-sft", str(tmp_path / "m"), "auto", data)["sequences"]


@pytest.mark.parametrize("name,eot", [("plain", "\n"), ("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"), ("zephyr", "<|im_end|>")])
def test_a_named_template_travels_with_the_checkpoint(name, eot, tmp_path):
    """sft --chat-template NAME writes a Jinja chat_template into the checkpoint's
    tokenizer_config.json; Jinja2's render of it is what fdpo trained on, and later
    commands (auto) recognise it."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", "smollm2", with_template=False)
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    r = run("sft", "--out", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "tok"), "--chat-template", name,
            "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "256", "--seq-len", "200",
            "--steps", "1", "--batch-size", "2", "--eval-every", "0", "--quiet", data)
    assert r.returncode == 0, r.stderr
    cfg = json.load(open(tmp_path / "m" / "tokenizer_config.json"))
    assert harness("tok-info", str(tmp_path / "m"))["chat"] == name
    trained = harness("data-chat-sft", str(tmp_path / "tok"), name, data)["sequences"]
    again = harness("data-chat-sft", str(tmp_path / "m"), "auto", data)["sequences"]
    assert trained == again
    for conv, seq in zip(CONVS, trained):
        ids, w, text = expected_sft("smollm2", ref, vocab, conv, template=cfg["chat_template"], eot=eot)
        assert seq["tokens"] == ids and seq["weights"] == w, text


def test_byte_tokenizer_keeps_a_named_template(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS[:2]])
    r = run("sft", "--out", str(tmp_path / "m"), "--chat-template", "chatml", "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--n-positions", "256", "--seq-len", "200", "--steps", "1", "--batch-size", "2",
            "--eval-every", "0", "--quiet", data)
    assert r.returncode == 0, r.stderr
    assert "<|im_start|>" in json.load(open(tmp_path / "m" / "fdpo_tokenizer.json"))["chat_template"]
    assert harness("tok-info", str(tmp_path / "m"))["chat"] == "chatml"


def test_nfc_tokenizer_keeps_loss_masks_on_the_roles(tmp_path):
    """A Qwen2.5-style tokenizer with the NFC normalizer and messages written decomposed
    (e + U+0301, Hangul jamo): the tokens and loss weights are those of the conversation
    with NFC-normalised contents (the Jinja render, encoded by the reference BPE), so the
    trained tokens stay exactly on the assistant's turns although NFC shortened the text
    before them; without NFC the ids differ."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", "qwen25", normalizer={"type": "NFC"})
    conv = [{"role": "user", "content": "Cafe\u0301 or the\u0301? " * 3 + "\u1100\u1161"},
            {"role": "assistant", "content": "The\u0301, s\u2019il vous plai\u0302t."},
            {"role": "user", "content": "Merci, c\u0327a va"}, {"role": "assistant", "content": "Tre\u0300s bien!"}]
    nfc = [{"role": m["role"], "content": unicodedata.normalize("NFC", m["content"])} for m in conv]
    assert nfc != conv
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", write_jsonl(tmp_path / "d.jsonl", [{"messages": conv}]))
    ids, w, text = expected_sft("qwen25", ref, vocab, nfc)
    seq = got["sequences"][0]
    assert seq["tokens"] == ids, text
    assert seq["weights"] == w, text
    assert sum(w) > 0
    raw, _ = make_tok(tmp_path / "raw", "qwen25")
    assert raw.encode(render(CASES["qwen25"][0], conv, CASES["qwen25"][3], False), True) != ids


def test_nfc_tokenizer_pair_identical_once_normalised_is_a_bad_pair(tmp_path):
    """chosen and rejected that differ only in Unicode normal form (precomposed vs e + U+0301)
    are one text after the NFC normalizer (unicodedata.normalize, as Hugging Face's does):
    identical ids trained as a pair. The identical-pair rule compares the ids, so --bad-pairs
    error refuses it and skip counts it in skipped.identical, for string, implicit-prompt and
    conversational pairs alike."""
    ref, _ = make_tok(tmp_path / "tok", "qwen25", normalizer={"type": "NFC"})
    a, b = " caf\u00e9", " cafe\u0301"
    assert a != b and unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)
    assert ref.encode(a) == ref.encode(b)
    good = {"prompt": "Say it:", "chosen": " good", "rejected": " bad"}
    bad_rows = [{"prompt": "Say it:", "chosen": a, "rejected": b},
                {"chosen": "Say it:" + a, "rejected": "Say it:" + b},
                {"prompt": [{"role": "user", "content": "Say it:"}],
                 "chosen": [{"role": "assistant", "content": a}], "rejected": [{"role": "assistant", "content": b}]}]
    for row in bad_rows:
        d = write_jsonl(tmp_path / "d.jsonl", [good, row])
        r = subprocess.run([HARNESS, "dpo-data", "--data", d, "--tokenizer", tmp_path / "tok"], capture_output=True, timeout=60)
        assert r.returncode == 1 and f"{d}:2: chosen and rejected are identical once tokenized".encode() in r.stderr, r.stderr
        out = harness("dpo-data", "--data", d, "--tokenizer", str(tmp_path / "tok"), "--bad-pairs", "skip")
        assert [p["line"] for p in out["pairs"]] == [1]
        assert out["summary"]["skipped"]["identical"] == 1


# ---- chat_template as a list; chat_template.jinja ----

SFT_TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "256", "--seq-len", "200",
            "--steps", "1", "--batch-size", "2", "--eval-every", "0", "--threads", "1", "--quiet"]


def set_config(tok, **kv):
    p = tok / "tokenizer_config.json"
    cfg = json.load(open(p))
    cfg.update(kv)
    p.write_text(json.dumps(cfg))


def test_a_template_list_without_default_is_refused_when_rendering(tmp_path):
    """transformers makes a list [{"name", "template"}] a dict {name: template} and renders the
    one named "default"; with none, apply_chat_template raises "This model has multiple chat
    templates with no default specified!". fdpo rendered plain silently. The tokenizer still
    loads (tokenize), and a built-in named with --chat-template renders."""
    make_tok(tmp_path / "tok", "smollm2", with_template=False)
    set_config(tmp_path / "tok", chat_template=[{"name": "tool_use", "template": SMOLLM2},
                                                {"name": "rag", "template": "{{ documents }}"}])
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONVS[0]}])
    r = subprocess.run([HARNESS, "data-chat-sft", str(tmp_path / "tok"), "auto", data], capture_output=True, text=True)
    assert r.returncode != 0
    assert ("tokenizer_config.json: chat_template lists 2 templates ('tool_use', 'rag') and none named 'default'"
            in r.stderr and "--chat-template NAME" in r.stderr), r.stderr
    r = run("sft", "--out", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "tok"), *SFT_TINY, data)
    assert r.returncode == 1 and "none named 'default'" in r.stderr, r.stderr
    assert harness("data-chat-sft", str(tmp_path / "tok"), "chatml", data)["sequences"]
    r = subprocess.run([FDPO, "tokenize", "--tokenizer", str(tmp_path / "tok")], input="hi", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_template_list_renders_its_last_default(tmp_path):
    """{name: template} of the list: a name given twice is the later entry (fdpo took the first)."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", "smollm2", with_template=False)
    lst = [{"name": "default", "template": PHI3}, {"name": "tool_use", "template": LLAMA3},
           {"name": "default", "template": SMOLLM2}]
    assert {t["name"]: t["template"] for t in lst}["default"] == SMOLLM2  # transformers' conversion
    set_config(tmp_path / "tok", chat_template=lst)
    assert harness("tok-info", str(tmp_path / "tok"))["chat"] == "chatml"
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    for conv, seq in zip(CONVS, got):
        ids, w, text = expected_sft("smollm2", ref, vocab, conv)
        assert seq["tokens"] == ids and seq["weights"] == w, text


@pytest.mark.parametrize("case", ["smollm2", "llama3", "zephyr"])
@pytest.mark.parametrize("inline", [None, PHI3], ids=["no-inline", "inline-phi3"])
def test_chat_template_jinja_is_read_in_place_of_the_config(case, inline, tmp_path):
    """transformers (4.47 on) saves the template as chat_template.jinja beside
    tokenizer_config.json, and from_pretrained reads that file in place of the config's
    chat_template. fdpo ignored it: plain without an inline template, else the inline one
    (here an unrecognised one, refused)."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", case, with_template=False)
    if inline:
        set_config(tmp_path / "tok", chat_template=inline)
    (tmp_path / "tok" / "chat_template.jinja").write_text(CASES[case][0], encoding="utf-8")
    assert harness("tok-info", str(tmp_path / "tok"))["chat"] == CASES[case][5]
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    for conv, seq in zip(CONVS, got):
        ids, w, text = expected_sft(case, ref, vocab, conv)
        assert seq["tokens"] == ids and seq["weights"] == w, text


def test_a_bad_chat_template_jinja_is_named(tmp_path):
    make_tok(tmp_path / "tok", "smollm2")  # a recognised inline template: the file's is the one read
    (tmp_path / "tok" / "chat_template.jinja").write_text(PHI3, encoding="utf-8")
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONVS[0]}])
    r = subprocess.run([HARNESS, "data-chat-sft", str(tmp_path / "tok"), "auto", data], capture_output=True, text=True)
    assert r.returncode != 0 and "chat_template.jinja is not one fdpo recognises" in r.stderr, r.stderr
    # transformers reads it with open(..., encoding="utf-8"): ill-formed UTF-8 fails there
    raw = SMOLLM2.encode().replace(b"system", b"syst\xe9m", 1)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    (tmp_path / "tok" / "chat_template.jinja").write_bytes(raw)
    r = subprocess.run([HARNESS, "tok-info", str(tmp_path / "tok")], capture_output=True, text=True)
    off = raw.index(b"\xe9")
    assert r.returncode != 0 and f"chat_template.jinja:1: invalid UTF-8 (byte 0xE9 at byte offset {off})" in r.stderr, r.stderr


@pytest.mark.parametrize("name,eot", [(None, "<|im_end|>"), ("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
def test_a_checkpoint_keeps_chat_template_jinja(name, eot, tmp_path):
    """A run's checkpoint of a tokenizer with chat_template.jinja writes the file back: as read
    (auto, or --chat-template of the file's own family), or with the named built-in's source
    (another family: in tokenizer_config.json it would lose to the file); the config is kept
    as read. Later commands (auto) render what was trained: the Jinja2 render of the saved file."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", "smollm2", with_template=False)
    (tmp_path / "tok" / "chat_template.jinja").write_text(SMOLLM2, encoding="utf-8")
    cfg = (tmp_path / "tok" / "tokenizer_config.json").read_bytes()
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    r = run("sft", "--out", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "tok"),
            *(["--chat-template", name] if name else []), *SFT_TINY, data)
    assert r.returncode == 0, r.stderr
    m = tmp_path / "m"
    assert (m / "tokenizer_config.json").read_bytes() == cfg
    saved = (m / "chat_template.jinja").read_text(encoding="utf-8")
    assert (saved == SMOLLM2) == (name != "llama3")
    assert harness("tok-info", str(m))["chat"] == (name or "chatml")
    trained = harness("data-chat-sft", str(tmp_path / "tok"), name or "auto", data)["sequences"]
    assert trained == harness("data-chat-sft", str(m), "auto", data)["sequences"]
    for conv, seq in zip(CONVS, trained):
        ids, w, text = expected_sft("smollm2", ref, vocab, conv, template=saved, eot=eot)
        assert seq["tokens"] == ids and seq["weights"] == w, text


def test_a_save_carries_no_old_chat_template_jinja(tmp_path):
    """chat_template.jinja is a tokenizer file: a save that writes its tokenizer carries none of
    OUT's old one (left there, it would be read in place of the new tokenizer's template)."""
    make_tok(tmp_path / "tok", "smollm2")  # its template inline
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS[:2]])
    m = tmp_path / "m"
    r = run("sft", "--out", str(m), "--tokenizer", str(tmp_path / "tok"), *SFT_TINY, data)
    assert r.returncode == 0, r.stderr
    (m / "chat_template.jinja").write_text(LLAMA3, encoding="utf-8")  # an older save's
    r = run("sft", "--out", str(m), "--overwrite", "--tokenizer", str(tmp_path / "tok"), *SFT_TINY, data)
    assert r.returncode == 0, r.stderr
    assert not (m / "chat_template.jinja").exists()
    assert harness("tok-info", str(m))["chat"] == "chatml"


def test_a_save_carries_no_old_special_tokens_map(tmp_path):
    """special_tokens_map.json is a tokenizer file too (read over a config without
    added_tokens_decoder, as transformers' legacy loading does): an older save's left in OUT
    would set the new checkpoint's eos."""
    ref, vocab = make_tok(tmp_path / "tok", "smollm2")   # its config has no added_tokens_decoder
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS[:2]])
    m = tmp_path / "m"
    r = run("sft", "--out", str(m), "--tokenizer", str(tmp_path / "tok"), *SFT_TINY, data)
    assert r.returncode == 0, r.stderr
    (m / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))  # an older save's
    assert harness("tok-info", str(m))["eos"] == vocab["<|endoftext|>"]
    r = run("sft", "--out", str(m), "--overwrite", "--tokenizer", str(tmp_path / "tok"), *SFT_TINY, data)
    assert r.returncode == 0, r.stderr
    assert not (m / "special_tokens_map.json").exists()
    assert harness("tok-info", str(m))["eos"] == vocab["<|im_end|>"]


# ---- recognition: a file's template is a built-in only when it is a known published source ----

# The counterexamples of the defect hunt: templates with ChatML's, Llama-3's or Zephyr's markers
# that render otherwise than the built-in (all were taken for it and rendered as it).
SMOLLM2_TRIM = SMOLLM2.replace("message['content']", "message['content'] | trim")
CHATML_RAISE = ("{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
                "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_NO_SEPARATOR = SMOLLM2.replace("'<|im_end|>' + '\n'", "'<|im_end|>'")
LLAMA3_UNTRIMMED = LLAMA3.replace("message['content'] | trim", "message['content']")
ZEPHYR_TRIM = ZEPHYR.replace("message['content'] + eos_token", "message['content'] | trim + eos_token")
CONV_SPACED = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  What is 2+2? \n"},
               {"role": "assistant", "content": "It is 4."}]
REFUSED = {"smollm2-trim": ("smollm2", SMOLLM2_TRIM), "qwen3": ("qwen25", QWEN3), "chatml-raise": ("smollm2", CHATML_RAISE),
           "chatml-no-separator": ("smollm2", CHATML_NO_SEPARATOR), "llama3-untrimmed": ("llama3", LLAMA3_UNTRIMMED),
           "zephyr-trim": ("zephyr", ZEPHYR_TRIM)}


@pytest.mark.parametrize("name", list(REFUSED))
@pytest.mark.parametrize("where", ["config", "jinja"])
def test_a_template_unlike_the_builtin_is_refused(name, where, tmp_path):
    """Each renders otherwise than its family's built-in in Jinja2 (trimmed content, a <think>
    block, a refusal, no newline between turns, untrimmed or trimmed content); fdpo took each
    for the built-in by its markers and trained on the built-in's text. It is refused, naming
    the file and --chat-template NAME, which renders with the built-in (the escape hatch)."""
    need_jinja()
    case, template = REFUSED[name]
    ref, vocab = make_tok(tmp_path / "tok", case, with_template=False)
    cfg = CASES[case][3]
    builtin = CASES[case][5]
    try:
        differs = render(template, CONV_SPACED, cfg, False) != render(CASES[case][0], CONV_SPACED, cfg, False)
    except jinja2.exceptions.TemplateError:
        differs = True
    assert differs
    if where == "config":
        set_config(tmp_path / "tok", chat_template=template)
    else:
        (tmp_path / "tok" / "chat_template.jinja").write_text(template.replace("\n", "\r\n"), encoding="utf-8")
    origin = "tokenizer_config.json: chat_template" if where == "config" else "chat_template.jinja"
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONV_SPACED}])
    r = subprocess.run([HARNESS, "data-chat-sft", str(tmp_path / "tok"), "auto", data], capture_output=True, text=True)
    assert r.returncode != 0 and f"{origin} is not one fdpo recognises" in r.stderr, r.stderr
    assert "--chat-template NAME" in r.stderr and "plain, chatml, llama3, zephyr" in r.stderr, r.stderr
    p = write_jsonl(tmp_path / "p.jsonl", [{"messages": CONV_SPACED[:2]}])
    r = subprocess.run([HARNESS, "data-chat-prompts", str(tmp_path / "tok"), "auto", p], capture_output=True, text=True)
    assert r.returncode != 0 and f"{origin} is not one fdpo recognises" in r.stderr, r.stderr
    r = run("sft", "--out", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "tok"), *SFT_TINY, data)
    assert r.returncode == 1 and f"{origin} is not one fdpo recognises" in r.stderr, r.stderr
    assert not (tmp_path / "o" / "model.safetensors").exists()
    # --chat-template NAME: the built-in, saved with the checkpoint, and what Jinja2 renders of it
    r = run("sft", "--out", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "tok"), "--chat-template", builtin,
            *SFT_TINY, data)
    assert r.returncode == 0, r.stderr
    m = tmp_path / "m"
    saved = ((m / "chat_template.jinja").read_text(encoding="utf-8") if where == "jinja"
             else json.load(open(m / "tokenizer_config.json"))["chat_template"])
    assert saved != template and harness("tok-info", str(m))["chat"] == builtin
    trained = harness("data-chat-sft", str(tmp_path / "tok"), builtin, data)["sequences"]
    assert trained == harness("data-chat-sft", str(m), "auto", data)["sequences"]
    ids, w, text = expected_sft(case, ref, vocab, CONV_SPACED, template=saved)
    assert trained[0]["tokens"] == ids and trained[0]["weights"] == w, text


def quoted(template, quote):
    """template with every Jinja string literal rewritten in quote, its value escaped as Python
    writes it (\\u for non-ASCII, \\x / \\r / \\t for controls; the other quote as it is): the
    same template to Jinja."""
    import re

    def lit(m):
        value = jinja2.Environment().from_string("{{ " + m.group(0) + " }}").render()
        body = "".join(c if 32 <= ord(c) < 127 and c not in "\\" + quote else
                       {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\", "'": "\\'", '"': '\\"'}.get(c)
                       or ("\\x%02x" % ord(c) if ord(c) < 256 else "\\u%04x" % ord(c) if ord(c) < 0x10000 else "\\U%08x" % ord(c))
                       for c in value)
        return quote + body + quote
    out, pos = [], 0
    for tag in re.finditer(r"\{\{.*?\}\}|\{%.*?%\}", template, re.S):
        out.append(template[pos:tag.start()])
        out.append(re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", lit, tag.group(0)))
        pos = tag.end()
    return "".join(out) + template[pos:]


SYSTEM_TEXTS = ["You're a helpful assistant.", "You are Sm\u00f6lLM, \"quoted\", back\\slash,\ttab; caf\u00e9 \U0001f916",
                "line one\r\nline {two} {{ three }} %}", "Answer.<|im_end|>\n<|im_start|>user\nHi"]


@pytest.mark.parametrize("system", range(len(SYSTEM_TEXTS)))
@pytest.mark.parametrize("quote", ["'", '"'])
@pytest.mark.parametrize("case", ["smollm2", "qwen25", "qwen25-tools"])
def test_the_default_system_turn_is_read_as_jinja_reads_it(case, quote, system, tmp_path):
    """A ChatML template's default system text is a Jinja string literal: Python's escapes
    (\\u00f6, \\x09, \\r, \\', \\"), either quote, braces inside. fdpo read it up to any quote
    or brace (an apostrophe in a double-quoted literal dropped the turn) and turned every other
    escape into its letter (\\u00f6 -> u00f6); the tokens are now those of Jinja2's render (the
    text is the template's: a special token written in it is one, as in transformers)."""
    need_jinja()
    template = CASES[case][0]
    default = {"smollm2": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
               "qwen25": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
               "qwen25-tools": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}[case]
    template = quoted(template.replace(default, SYSTEM_TEXTS[system].replace("\\", "\\\\").replace("'", "\\'")
                                       .replace("\r", "\\r").replace("\t", "\\t")), quote)
    ref, vocab = make_tok(tmp_path / "tok", case, with_template=False)
    set_config(tmp_path / "tok", chat_template=template)
    cfg = CASES[case][3]
    assert SYSTEM_TEXTS[system] in render(template, CONVS[0], cfg, False)
    assert harness("tok-info", str(tmp_path / "tok"))["chat"] == "chatml"
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    for conv, seq in zip(CONVS, got):
        ids, w, text = expected_sft(case, ref, vocab, conv, template=template)
        assert seq["tokens"] == ids and seq["weights"] == w, repr(text)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"messages": CONVS[0][:1]}])
    got = harness("data-chat-prompts", str(tmp_path / "tok"), "auto", prompts)["ids"][0]
    assert got == ref.encode(render(template, CONVS[0][:1], cfg, True), True)


@pytest.mark.parametrize("case", ["smollm2", "qwen25", "qwen25-tools", "llama31", "llama31-published", "zephyr"])
def test_a_crlf_template_file_is_the_template(case, tmp_path):
    """chat_template.jinja written with CRLF line ends (a Windows checkout) is the same template
    to transformers (universal newlines) and to Jinja's lexer; fdpo dropped SmolLM2's default
    system turn (it looked for LF after "<|im_start|>system")."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", case, with_template=False)
    (tmp_path / "tok" / "chat_template.jinja").write_bytes(CASES[case][0].replace("\n", "\r\n").encode())
    assert harness("tok-info", str(tmp_path / "tok"))["chat"] == CASES[case][5]
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    got = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    for conv, seq in zip(CONVS, got):
        ids, w, text = expected_sft(case, ref, vocab, conv)
        assert seq["tokens"] == ids and seq["weights"] == w, repr(text)


def test_a_default_system_literal_fdpo_cannot_decode_is_refused(tmp_path):
    """\\N{...} is a Jinja (Python) escape fdpo does not decode: the template is refused, not
    rendered without its default system turn or with the escape's letters."""
    need_jinja()
    template = SMOLLM2.replace("You are a helpful AI assistant named SmolLM", "You are Sm\\N{LATIN SMALL LETTER O WITH DIAERESIS}lLM")
    assert "Sm\u00f6lLM" in render(template, CONVS[0], CASES["smollm2"][3], False)
    make_tok(tmp_path / "tok", "smollm2", with_template=False)
    set_config(tmp_path / "tok", chat_template=template)
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONVS[0]}])
    r = subprocess.run([HARNESS, "data-chat-sft", str(tmp_path / "tok"), "auto", data], capture_output=True, text=True)
    assert r.returncode != 0 and "chat_template is not one fdpo recognises" in r.stderr, r.stderr


@pytest.mark.parametrize("name,config,eot", [
    ("llama3", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, "<|eot_id|>"),   # Qwen2.5's: no bos
    ("llama3", {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}, "<|eot_id|>"),
    ("zephyr", {"pad_token": "<|endoftext|>"}, "<|endoftext|>"),                             # no eos: fdpo's <|endoftext|>
    ("zephyr", {"eos_token": "<|im_end|>"}, "<|im_end|>"),
])
def test_a_named_template_renders_in_jinja_without_bos_or_eos(name, config, eot, tmp_path):
    """The saved built-in source wrote bos_token / eos_token, which transformers leaves
    undefined when the config sets none ('bos_token' is undefined); fdpo rendered no bos, or
    its default eos <|endoftext|>. The saved template now renders in Jinja2 (given only the
    tokens the config sets, as apply_chat_template does) exactly what fdpo trained on."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", "qwen25", with_template=False)
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    r = run("sft", "--out", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "tok"), "--chat-template", name,
            *SFT_TINY, data)
    assert r.returncode == 0, r.stderr
    saved_cfg = json.load(open(tmp_path / "m" / "tokenizer_config.json"))
    assert harness("tok-info", str(tmp_path / "m"))["chat"] == name
    trained = harness("data-chat-sft", str(tmp_path / "tok"), name, data)["sequences"]
    assert trained == harness("data-chat-sft", str(tmp_path / "m"), "auto", data)["sequences"]
    eos = config.get("eos_token") or "<|endoftext|>"
    for conv, seq in zip(CONVS, trained):
        text = render(saved_cfg["chat_template"], conv, saved_cfg, False)   # raises on an undefined token
        last = text.rfind(eot) + len(eot)
        text = text[:last] if text[last:].strip("\n") == "" else text
        ids = ref.encode(text, True)
        if ids[-1] != vocab[eos]:
            ids.append(vocab[eos])
        assert seq["tokens"] == ids, repr(text)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"messages": CONVS[0][:1]}])
    got = harness("data-chat-prompts", str(tmp_path / "m"), "auto", prompts)["ids"][0]
    assert got == ref.encode(render(saved_cfg["chat_template"], CONVS[0][:1], saved_cfg, True), True)


SPLIT_OPERATORS = {"smollm2-not-equal": ("smollm2", "messages[0]['role'] != 'system'", "messages[0]['role'] ! = 'system'"),
                   "qwen25-equal": ("qwen25", '(message.role == "user")', '(message.role = = "user")'),
                   "llama3-equal": ("llama3", "loop.index0 == 0", "loop.index0 = = 0")}


@pytest.mark.parametrize("name", list(SPLIT_OPERATORS))
def test_an_operator_split_by_whitespace_is_not_the_published_template(name, tmp_path):
    """`! =` and `= =` are not Jinja's `!=` and `==` (its lexer has two-character operators):
    Jinja2 refuses the template (unexpected char '!' / expected token ')', got '='), so
    transformers cannot render it. fdpo's canonical form joined operator characters across
    whitespace and rendered it as the published template; it is refused as unrecognised."""
    need_jinja()
    case, good, bad = SPLIT_OPERATORS[name]
    template = CASES[case][0]
    assert good in template
    template = template.replace(good, bad)
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    with pytest.raises(jinja2.exceptions.TemplateSyntaxError):
        env.from_string(template)
    make_tok(tmp_path / "tok", case, with_template=False)
    set_config(tmp_path / "tok", chat_template=template)
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONVS[0]}])
    r = subprocess.run([HARNESS, "data-chat-sft", str(tmp_path / "tok"), "auto", data], capture_output=True, text=True)
    assert r.returncode != 0 and "chat_template is not one fdpo recognises" in r.stderr, r.stderr
    # the same template with the operator whole and extra spaces Jinja ignores is still recognised
    set_config(tmp_path / "tok", chat_template=CASES[case][0].replace(good, good.replace("==", " ==  ").replace("!=", "  != ")))
    assert harness("tok-info", str(tmp_path / "tok"))["chat"] == CASES[case][5]


@pytest.mark.parametrize("case", ["llama3", "llama31", "llama31-published"])
def test_a_llama3_template_without_a_bos_token_renders_as_jinja(case, tmp_path):
    """The file's own Llama-3 template on a config with no bos_token: transformers passes no
    bos_token, so Llama-3.1's {{- bos_token }} renders nothing and Meta-Llama-3's
    bos_token + content raises ('bos_token' is undefined). fdpo prepended <|begin_of_text|>
    (its fallback for a named built-in) to every prompt and sequence."""
    need_jinja()
    ref, vocab = make_tok(tmp_path / "tok", case)
    cfg = {"eos_token": "<|eot_id|>", "chat_template": CASES[case][0]}
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(cfg))
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CONVS])
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"messages": CONVS[0][:1]}])
    try:
        render(cfg["chat_template"], CONVS[0], cfg, False)
    except jinja2.exceptions.UndefinedError as e:
        assert "'bos_token' is undefined" in str(e)
        for cmd, path in (("data-chat-sft", data), ("data-chat-prompts", prompts)):
            r = subprocess.run([HARNESS, cmd, str(tmp_path / "tok"), "auto", path], capture_output=True, text=True)
            assert r.returncode != 0 and "'bos_token' is undefined" in r.stderr and "tokenizer_config.json" in r.stderr, r.stderr
        return
    got = harness("data-chat-prompts", str(tmp_path / "tok"), "auto", prompts)["ids"][0]
    want = ref.encode(render(cfg["chat_template"], CONVS[0][:1], cfg, True), True)
    assert want[0] != vocab["<|begin_of_text|>"] and got == want
    seqs = harness("data-chat-sft", str(tmp_path / "tok"), "auto", data)["sequences"]
    for conv, seq in zip(CONVS, seqs):
        text = render(cfg["chat_template"], conv, cfg, False)
        last = text.rfind("<|eot_id|>") + len("<|eot_id|>")
        text = text[:last] if text[last:].strip("\n") == "" else text
        ids = ref.encode(text, True)
        if ids[-1] != vocab["<|eot_id|>"]:
            ids.append(vocab["<|eot_id|>"])
        assert seq["tokens"] == ids, repr(text)
