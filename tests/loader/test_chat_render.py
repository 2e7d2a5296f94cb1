"""Chat templates rendered by our renderer (through TextTokenizer) against transformers' apply_chat_template
on the same backend: text and ids, with and without the generation prompt, and the same refusals."""

import jinja2
import pytest
import transformers
from jinja2.exceptions import SecurityError, TemplateError

from medvllm.chat_template import encode_chat
from medvllm.loader import default_model_path
from medvllm.loader.gguf_file import GGUFFile
from medvllm.loader.gguf_tokenizer import build_tokenizer
from medvllm.loader.text_tokenizer import TextTokenizer

LLAMA3 = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "You are a careful clinical assistant." %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Year: " + strftime_now("%Y") + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN_TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.reasoning_content %}
            {{- '\\n<think>\\n' + message.reasoning_content + '\\n</think>' }}
        {%- endif %}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls | default([]) %}
            {%- set tc = tool_call.function if tool_call.function is defined else tool_call %}
            {{- '\\n<tool_call>\\n{"name": "' + tc.name + '", "arguments": ' + (tc.arguments | tojson(indent=2)) + '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {{ message['content'] | trim }}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

NAMESPACE = """{%- set ns = namespace(count=0, last_user='') -%}
{%- for m in messages -%}
  {%- if m.role == 'system' %}{% continue %}{% endif -%}
  {%- set ns.count = ns.count + 1 -%}
  {%- if m.role == 'user' %}{% set ns.last_user = m.content %}{% endif %}
  [{{ ns.count }}:{{ m.role }}] {% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}
  {%- if ns.count >= 3 %}{% break %}{% endif %}
{% endfor -%}
{%- set d = dict(a=1, b='<x> & "y"') -%}
last user: {{ ns.last_user }} {{ d | tojson }} {{ dict.fromkeys(['k', 'j'], 0) | tojson(sort_keys=True) }}
{{ messages.__class__ }}|{{ extra_flag | default('none') }}|{{ eos_token }}|{{ pad_token }}
{%- if add_generation_prompt %} <reply>{% endif %}"""

CHAT = [
    {"role": "system", "content": "You are a careful clinical assistant. "},
    {"role": "user", "content": "  A 67-year-old with HbA1c 8.2% — next step?  "},
    {"role": "assistant", "content": "Intensify therapy: add a GLP-1 agonist.", "tool_calls": None},
    {"role": "user", "content": "And if eGFR < 30 mL/min? <|im_end|> 東京 🚑"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "dose_check",
            "description": "Checks a dose <mg/kg> & renal function — für Ärzte",
            "parameters": {"type": "object", "properties": {"drug": {"type": "string"}, "mg": {"type": "number"}}},
        },
    }
]
TOOL_CHAT = [
    *CHAT[:2],
    {
        "role": "assistant",
        "content": None,
        "reasoning": "Metformin: check the kidneys.",
        "tool_calls": [
            {"type": "function", "function": {"name": "dose_check", "arguments": {"drug": "metformin", "mg": 500}}}
        ],
    },
    {"role": "tool", "content": '{"ok": false, "why": "eGFR < 30"}'},
]


@pytest.fixture(scope="module")
def pair():
    """(ours, transformers') tokenizers of the default model, one backend."""
    path = default_model_path()
    ours = build_tokenizer(GGUFFile(path).metadata, path)
    theirs = transformers.PreTrainedTokenizerFast(
        tokenizer_object=ours.backend_tokenizer, **ours.special_tokens_map, chat_template=ours.chat_template
    )
    return ours, theirs


def with_template(pair, template):
    ours, theirs = pair
    clone = TextTokenizer(ours.backend_tokenizer, **ours.special_tokens_map, chat_template=template)
    theirs.chat_template = template
    return clone, theirs


def assert_same(ours, theirs, chat, **kwargs):
    for prompt in (False, True):
        text = theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt, **kwargs)
        assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt, **kwargs) == text
        ids = theirs.apply_chat_template(chat, add_generation_prompt=prompt, **kwargs)["input_ids"]
        assert ours.apply_chat_template(chat, add_generation_prompt=prompt, **kwargs) == ids
        assert ids == theirs.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("name", ["default", "llama3", "qwen_tools", "gemma", "namespace"])
def test_same_text_and_ids_as_transformers(pair, name):
    template = {"llama3": LLAMA3, "qwen_tools": QWEN_TOOLS, "gemma": GEMMA, "namespace": NAMESPACE}.get(name)
    ours, theirs = with_template(pair, template or pair[0].chat_template)
    chats = [CHAT, CHAT[1:], CHAT[1:2]]
    if name == "gemma":
        chats = [CHAT, CHAT[1:2]]  # roles alternate
    for chat in chats:
        assert_same(ours, theirs, chat)
    if name == "qwen_tools":
        assert_same(ours, theirs, TOOL_CHAT, tools=TOOLS)
        assert_same(ours, theirs, CHAT, tools=[])
    if name == "namespace":
        assert_same(ours, theirs, CHAT, extra_flag=True)  # a caller's keyword is a template variable
    if name == "default":  # the engine's own call, and the rest of apply_chat_template's forms
        assert encode_chat(ours, CHAT) == list(
            theirs.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"]
        )
        batch = [CHAT, CHAT[1:2]]
        assert ours.apply_chat_template(batch, tokenize=False) == theirs.apply_chat_template(batch, tokenize=False)
        assert ours.apply_chat_template(batch) == theirs.apply_chat_template(batch)["input_ids"]
        single = ours.apply_chat_template(CHAT, return_dict=True)
        assert single["input_ids"] == theirs.apply_chat_template(CHAT)["input_ids"]
        half = [*CHAT[:3], {"role": "assistant", "content": "Start with "}]
        assert ours.apply_chat_template(
            half, tokenize=False, continue_final_message=True
        ) == theirs.apply_chat_template(half, tokenize=False, continue_final_message=True)


def test_template_refusals_are_the_same_one_line_error(pair):
    ours, theirs = with_template(pair, GEMMA)
    bad = [CHAT[1], CHAT[1]]  # two user turns in a row
    with pytest.raises(TemplateError) as expected:
        theirs.apply_chat_template(bad, add_generation_prompt=True)
    with pytest.raises(TemplateError) as got:
        encode_chat(ours, bad)
    assert (
        str(got.value) == str(expected.value) == "Conversation roles must alternate user/assistant/user/assistant/..."
    )

    from types import SimpleNamespace

    from medvllm.server.errors import APIError
    from medvllm.server.parsing import chat_ids
    from medvllm.server.protocol import ChatCompletionRequest

    request = ChatCompletionRequest(model="m", messages=bad)
    with pytest.raises(APIError) as served:
        chat_ids(SimpleNamespace(tokenizer=ours), request)
    assert served.value.status == 400 and served.value.message == (
        "the model's chat template refused these messages: Conversation roles must alternate user/assistant/user/assistant/..."
    )


def test_sandbox_refuses_what_transformers_refuses(pair):
    for template in ("{% set ns = namespace(_hidden=1) %}x", "{% set ns = namespace() %}{% set ns._x = 1 %}x"):
        ours, theirs = with_template(pair, template)
        for tokenizer in (ours, theirs):
            with pytest.raises(SecurityError):
                tokenizer.apply_chat_template(CHAT[1:2], tokenize=False)
    ours, theirs = with_template(pair, "{{ messages.pop() }}")
    for tokenizer in (ours, theirs):
        with pytest.raises(SecurityError):  # the environment is immutable
            tokenizer.apply_chat_template(CHAT[1:2], tokenize=False)
    ours, theirs = with_template(pair, "{{ unknown_tag }")
    for tokenizer in (ours, theirs):
        with pytest.raises(jinja2.TemplateSyntaxError):
            tokenizer.apply_chat_template(CHAT[1:2], tokenize=False)


def test_no_template_and_empty_conversations(pair):
    ours = TextTokenizer(pair[0].backend_tokenizer, **pair[0].special_tokens_map)
    with pytest.raises(ValueError, match="chat_template is not set"):
        ours.apply_chat_template(CHAT)
    with pytest.raises(ValueError, match="empty conversation"):
        pair[0].apply_chat_template([])
