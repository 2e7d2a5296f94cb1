"""TextTokenizer: a `tokenizers.Tokenizer` with what the engine asks of a tokenizer, without transformers.

It encodes, decodes and applies the chat template exactly as transformers' fast tokenizer would with the
same backend and special tokens (clean_up_tokenization_spaces off, as transformers builds GGUF tokenizers).
Code that wants more of a Hugging Face tokenizer (`LLM.get_tokenizer()` in user scripts) still gets it:
any other attribute is read from a `transformers.PreTrainedTokenizerFast` built on first such use, with
the same backend and settings. Nothing the engine, server or CLI does reaches that.
"""

from __future__ import annotations

import threading

from medvllm.loader import chat_render

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")  # transformers' order
# apply_chat_template options only transformers' own tokenizer implements (passed on to it when set)
_HF_ONLY = {
    "sanitize_control_tokens": False,
    "padding": False,
    "truncation": False,
    "max_length": None,
    "return_tensors": None,
    "return_assistant_tokens_mask": False,
    "tokenizer_kwargs": None,
}


class TextTokenizer:
    is_fast = True

    def __init__(
        self,
        backend,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        chat_template: str | dict | None = None,
    ):
        """`backend`: the complete `tokenizers.Tokenizer` (its post-processor adds BOS/EOS as the flags say)."""
        self.backend_tokenizer = backend
        self._special = dict(zip(SPECIAL_NAMES, (bos_token, eos_token, unk_token, pad_token)))
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self._chat_template = chat_template
        self._hf = None
        self._hf_lock = threading.Lock()

    # --- special tokens -----------------------------------------------------------------------------------
    bos_token = property(lambda self: self._special["bos_token"], lambda self, v: self._set("bos_token", v))
    eos_token = property(lambda self: self._special["eos_token"], lambda self, v: self._set("eos_token", v))
    unk_token = property(lambda self: self._special["unk_token"], lambda self, v: self._set("unk_token", v))
    pad_token = property(lambda self: self._special["pad_token"], lambda self, v: self._set("pad_token", v))
    bos_token_id = property(lambda self: self.convert_tokens_to_ids(self.bos_token))
    eos_token_id = property(lambda self: self.convert_tokens_to_ids(self.eos_token))
    unk_token_id = property(lambda self: self.convert_tokens_to_ids(self.unk_token))
    pad_token_id = property(lambda self: self.convert_tokens_to_ids(self.pad_token))

    def _set(self, name: str, value: str | None) -> None:
        self._special[name] = value
        if self._hf is not None:
            setattr(self._hf, name, value)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: token for name, token in self._special.items() if token is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys(self.special_tokens_map.values()))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def chat_template(self):
        return self._chat_template

    @chat_template.setter
    def chat_template(self, value) -> None:
        self._chat_template = value
        if self._hf is not None:
            self._hf.chat_template = value

    # --- vocabulary -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens):
        if tokens is None:
            return None
        if isinstance(tokens, str):
            index = self.backend_tokenizer.token_to_id(tokens)
            unk = self.unk_token
            if index is None and unk is not None and unk != tokens:  # an unknown token reads as unk
                index = self.backend_tokenizer.token_to_id(unk)
            return index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else ()
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    # --- text <-> ids ---------------------------------------------------------------------------------------
    def encode(self, text, add_special_tokens: bool = True, **kwargs) -> list[int]:
        if kwargs or not isinstance(text, str):  # pairs, truncation, tensors...: transformers' own
            return self.hf_tokenizer().encode(text, add_special_tokens=add_special_tokens, **kwargs)
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs):
        if kwargs.get("clean_up_tokenization_spaces"):
            return self.hf_tokenizer().decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
        if hasattr(token_ids, "tolist"):  # numpy arrays, tensors
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        if token_ids and isinstance(token_ids[0], (list, tuple)):
            return self.backend_tokenizer.decode_batch([list(s) for s in token_ids], skip_special_tokens)
        return self.backend_tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kwargs) for s in sequences]

    def apply_chat_template(
        self,
        conversation,
        tools=None,
        documents=None,
        chat_template=None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        return_dict: bool = False,
        **kwargs,
    ):
        """The conversation through the chat template: its ids (the text encoded without adding special
        tokens, the template writes them), or with tokenize=False the text; a list of them for a batch."""
        if any(kwargs.get(name, default) != default for name, default in _HF_ONLY.items()):
            return self.hf_tokenizer().apply_chat_template(
                conversation, tools, documents, chat_template, add_generation_prompt, continue_final_message,
                tokenize, return_dict=return_dict, **kwargs,
            )  # fmt: skip
        kwargs = {k: v for k, v in kwargs.items() if k not in _HF_ONLY}
        template = chat_render.pick_template(self.chat_template, chat_template, tools)
        if isinstance(conversation, (list, tuple)) and not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        batched = isinstance(conversation, (list, tuple)) and (
            isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")
        )
        conversations = [chat_render.normalize_messages(c) for c in (conversation if batched else [conversation])]
        if continue_final_message and add_generation_prompt:
            raise ValueError(
                "continue_final_message and add_generation_prompt are not compatible. Use continue_final_message "
                "when you want the model to continue the final message, and add_generation_prompt when you want "
                "to add a header that will prompt it to start a new assistant message instead."
            )
        texts = chat_render.render(
            template, conversations, tools, documents, add_generation_prompt, continue_final_message,
            **{**self.special_tokens_map, **kwargs},
        )  # fmt: skip
        if not tokenize:
            return texts if batched else texts[0]
        ids = [self.encode(text, add_special_tokens=False) for text in texts]
        if return_dict:
            masks = [[1] * len(i) for i in ids]
            return (
                {"input_ids": ids, "attention_mask": masks}
                if batched
                else {"input_ids": ids[0], "attention_mask": masks[0]}
            )
        return ids if batched else ids[0]

    # --- everything else: transformers' tokenizer on the same backend -----------------------------------
    def hf_tokenizer(self):
        """A `transformers.PreTrainedTokenizerFast` with this backend and these settings (built once)."""
        with self._hf_lock:
            if self._hf is None:
                import transformers

                self._hf = transformers.PreTrainedTokenizerFast(
                    tokenizer_object=self.backend_tokenizer,
                    **self._special,
                    add_bos_token=self.add_bos_token,
                    add_eos_token=self.add_eos_token,
                    chat_template=self.chat_template,
                )
            return self._hf

    def __getattr__(self, name: str):
        if name.startswith("_"):  # private names (and pickling's probes) never build transformers' tokenizer
            raise AttributeError(name)
        return getattr(self.hf_tokenizer(), name)

    def __call__(self, *args, **kwargs):
        return self.hf_tokenizer()(*args, **kwargs)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_hf"], state["_hf_lock"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._hf_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"TextTokenizer(vocab={len(self)}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
            f"add_bos={self.add_bos_token}, add_eos={self.add_eos_token}, chat_template={self.chat_template is not None})"
        )
