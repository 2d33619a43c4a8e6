/* The chat templates fdpo recognises (src/data/chat_known.h): published templates that
 * render exactly as a built-in does, checked by rendering each with Jinja2
 * (tests/py/test_chat_template.py, CASES and KNOWN_TEXTS), and fdpo's own saved sources.
 * A template that is not one of these is refused, never rendered by guess: adding one here
 * needs its Jinja2 render tested against the built-in. */
#include "data/chat_known.h"

const fdpo_chat_known FDPO_CHAT_KNOWN[] = {
    /* SmolLM2-Instruct (and Qwen2-Instruct: the same template, another default system text) */
    {FDPO_CHAT_CHATML, 0, {HOLE_SYSTEM},
     "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
     "" HOLE "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n"
     "' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
     "' }}{% endif %}"},
    /* Qwen2.5-Instruct without its tools branch */
    {FDPO_CHAT_CHATML, 0, {HOLE_SYSTEM},
     "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
     "{%- else %}\n    {{- '<|im_start|>system\\n" HOLE "<|im_end|>\\n' }}\n"
     "{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n"
     "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
     "    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
     "    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"},
    /* Qwen2.5-Instruct (tools branch: only rendered with tools, which fdpo never passes) */
    {FDPO_CHAT_CHATML, 0, {HOLE_ANY, HOLE_SYSTEM},
     "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
     "        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- '" HOLE "' }}\n"
     "    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
     "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n"
     "    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
     "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
     "    {%- else %}\n        {{- '<|im_start|>system\\n" HOLE "<|im_end|>\\n' }}\n"
     "    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
     "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
     "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
     "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
     "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n"
     "        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n"
     "            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n"
     "            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
     "            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n"
     "            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n"
     "        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n"
     "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
     "            {{- '<|im_start|>user' }}\n        {%- endif %}\n"
     "        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n"
     "        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
     "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n"
     "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
     "{%- endif %}\n"},
    /* OpenHermes-2.5: ChatML after bos_token */
    {FDPO_CHAT_CHATML, KNOWN_START_BOS, {HOLE_NONE},
     "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n"
     "' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
     "' }}{% endif %}"},
    /* Meta-Llama-3-Instruct */
    {FDPO_CHAT_LLAMA3, 0, {HOLE_NONE},
     "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n"
     "\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n"
     "\n' }}{% endif %}"},
    /* Llama-3.1/3.2-Instruct without tools */
    {FDPO_CHAT_LLAMA3, 0, {HOLE_DATE, HOLE_KNOWLEDGE_DATE},
     "{{- bos_token }}\n{%- if not date_string is defined %}\n    {%- set date_string = \"" HOLE "\" %}\n"
     "{%- endif %}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
     "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n"
     "{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
     "{{- \"Cutting Knowledge Date: " HOLE "\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
     "{{- system_message }}\n{{- \"<|eot_id|>\" }}\n{%- for message in messages %}\n"
     "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
     "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
     "{%- endif %}\n"},
    /* Zephyr-7B-beta / TinyLlama-Chat */
    {FDPO_CHAT_ZEPHYR, 0, {HOLE_NONE},
     "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
     "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
     "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
     "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
     "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n"
     "{% endif %}\n{% endfor %}"},
    /* fdpo's own saved sources (fdpo_chat_source): today's, with the bos and eos fdpo renders
     * for the tokenizer written as literals, and those of earlier fdpo (bos_token, eos_token) */
    {FDPO_CHAT_PLAIN, KNOWN_SAVED, {HOLE_NONE},
     "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"},
    {FDPO_CHAT_CHATML, KNOWN_SAVED, {HOLE_NONE},
     "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
     "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"},
    {FDPO_CHAT_LLAMA3, KNOWN_SAVED, {HOLE_BOS},
     "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
     "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = '" HOLE "' + content %}{% endif %}"
     "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"},
    {FDPO_CHAT_LLAMA3, KNOWN_SAVED | KNOWN_NO_BOS, {HOLE_NONE},
     "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
     "message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"},
    {FDPO_CHAT_LLAMA3, 0, {HOLE_NONE},
     "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
     "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
     "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"},
    {FDPO_CHAT_ZEPHYR, KNOWN_SAVED, {HOLE_EOS},
     "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '" HOLE "' + '\n' }}{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"},
    {FDPO_CHAT_ZEPHYR, 0, {HOLE_NONE},
     "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{# <|user|> <|assistant|> #}"},
};
const size_t FDPO_CHAT_N_KNOWN = sizeof FDPO_CHAT_KNOWN / sizeof FDPO_CHAT_KNOWN[0];
