"""Where answers come from: an Engine in this process (`LocalBackend`) or any OpenAI-compatible URL
(`remote.RemoteBackend`). `chat` and `ask` see only the `Backend` protocol and its typed events.

Every backend's `chat()` returns a generator. Closing it (what Ctrl-C in the REPL does) stops the
answer: the local engine aborts the request, the remote connection is closed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from . import chat_format, settings, tokens
from .answer import Answer
from .events import Backend, BackendEvent, Message, Notice, Options
from .request import Request

TINY_NOTICE = "model tiny: random weights, its output is noise (it exercises every code path, nothing more)"


class LocalBackend:
    """An Engine in this process, loaded on first use and driven by one `EngineLoop` thread, so prefill
    progress arrives as events and Ctrl-C on the main thread is seen at once. The server shares one
    LocalBackend among all its requests (`submit`); the REPL and `ask` use `chat`."""

    def __init__(self, model: str = "tiny", *, context: int = 32768, chunk_size: int = 512,
                 device: str = "auto", prefix_cache: bool = True, max_batch: int = 1,
                 max_queue: int | None = None, dtype: str = "bfloat16") -> None:
        self.model, self.context, self.chunk_size, self.device = model, context, chunk_size, device
        self.dtype = dtype  # "bfloat16" or "float32": torch is imported at load, not when the CLI parses
        self.prefix_cache, self.max_batch, self.max_queue = prefix_cache, max_batch, max_queue
        self.engine: Any = None
        self.loop: Any = None
        self.memory_plan: str | None = None
        self._tokenizer: Any = None
        self._told = False
        self.warnings: list[str] = []  # said once after loading (a prefix cache that cannot be written, say)

    @property
    def is_tiny(self) -> bool:
        return self.model == "tiny"

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer or tokens.load_tokenizer()

    def check(self, materialize: bool = True) -> None:
        """Refuse now what load() would refuse after seconds or minutes: a name that is no model, a context
        beyond the model's own. `materialize=False` leaves the built-in unwritten (then only the name counts)."""
        from . import hub
        from .runtime import devices
        from .runtime.args import ModelArgs

        devices.resolve(self.device)  # --device cuda without a GPU is refused before anything loads
        m = hub.resolve(self.model, materialize=materialize)
        if m.kind == "builtin" and not materialize:  # not written yet: its config is known all the same
            from .runtime.tiny import builtin_args

            builtin_args().check_context(self.context)
        elif m.path is not None:  # a folder without config.json fails here
            ModelArgs.from_file(m.path).check_context(self.context)

    def load(self) -> None:
        if self.engine is not None:
            return
        import torch

        from . import hub
        from .runtime import Engine
        from .runtime.loop import EngineLoop

        path = hub.resolve(self.model).path
        kwargs: dict[str, Any] = dict(device=self.device, max_context=self.context, max_batch=self.max_batch,
                                      chunk_size=self.chunk_size, dtype=getattr(torch, self.dtype))
        if self.prefix_cache:
            folder = settings.home() / "cache" / "prefix"
            why = settings.unwritable(folder, folder=True)
            if why is None:
                kwargs["prefix_cache_dir"] = folder
            else:  # optional: answers still come, repeated prefixes are reused from memory only
                self.warnings.append(settings.read_only("the prefix cache on disk", why))
        self.engine = Engine.from_pretrained(path, **kwargs)
        self.memory_plan = self.engine.memory_plan
        self._tokenizer = self.engine.tokenizer or tokens.load_tokenizer()
        self.loop = EngineLoop(self.engine, self.max_queue)

    def load_notices(self) -> Iterator[BackendEvent]:
        """Say what takes time before loading, and after it whether the twins run instead of the kernels."""
        from .runtime import kernels

        if not self.is_tiny:
            yield Notice(f"loading {self.model} …")  # a real checkpoint takes a while: say what is happening
        self.load()  # a kernel build says so itself (kernels.install), in every command
        yield from (Notice(w, warn=True) for w in self.warnings)
        if self.engine.device.type == "cpu" and kernels.enabled() and self.engine.kernels.startswith(
                kernels.REFERENCE):
            yield Notice(f"running on {self.engine.kernels}: decoding is slower")

    # ---- requests ----------------------------------------------------------------------------------------
    def prompt_ids(self, req: Request) -> list[int]:
        """The request's prompt as token ids (chat format, raw text or FIM, or as given)."""
        if req.prompt_ids is not None:
            return list(req.prompt_ids)
        if req.text is not None:
            return tokens.encode_completion(req.text, req.suffix, self.tokenizer)
        messages = list(req.messages)
        if req.prefix:  # the answer continues the last assistant message: no EOS after it
            messages[-1] = {**messages[-1], "wo_eos": True}
        prompt = chat_format.encode_messages(messages, "thinking" if req.thinking else "chat",
                                             reasoning_effort=req.effort, tools=req.tools or None)
        return chat_format.encode_prompt_ids(prompt, self.tokenizer)

    def params(self, req: Request) -> Any:
        from .constraints import processors
        from .runtime import SamplingParams

        mode = req.parse_mode
        return SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                              seed=req.seed, stop=list(req.stop), logprobs=req.logprobs,
                              stop_token_ids=chat_format.stop_token_ids(mode),
                              logits_processors=processors(req, self.tokenizer))

    def submit(self, req: Request, aloop: Any = None, ids: list[int] | None = None) -> Answer:
        """Start a request on the engine loop (`ids`: its prompt_ids() when already computed); raises at
        once what the engine would refuse (ValueError, ContextLimitError, MemoryPlanError) and QueueFull
        when the queue is at its limit. `aloop`: deliver to that asyncio loop's consumer."""
        self.load()
        ids = self.prompt_ids(req) if ids is None else ids
        chat = req.prompt_ids is None and req.text is None
        # Prefix-cache units (DeepSeek's rule: at request boundaries). A chat grows: the next turn's prompt
        # repeats this one up to its last token (`<think>` here becomes `</think>answer` there); agents
        # resend the same system prompt and tools with new questions.
        points = [req.cache_prefix] if req.cache_prefix else []
        if chat:
            points += [len(ids) - 1, self._system_tokens(req)]
        points += interval_points(len(ids))
        salt = hashlib.sha256(req.user.encode()).hexdigest()[:16] if req.user else ""
        handle = self.loop.submit(ids, self.params(req), cache_prefix=[p for p in points if p > 0], cache_salt=salt,
                                  keep_output=chat, aloop=aloop)
        return Answer(handle, req.parse_mode, self.tokenizer, logprobs=req.logprobs is not None,
                      raw=req.text is not None)

    def _system_tokens(self, req: Request) -> int:
        """Tokens of the prompt's leading system part (system messages and tools), 0 if there is none."""
        n = next((i for i, m in enumerate(req.messages) if m.get("role") != "system"), len(req.messages))
        if n == 0 and not req.tools:
            return 0
        head = chat_format.encode_messages(req.messages[:n], "thinking" if req.thinking else "chat",
                                           reasoning_effort=req.effort, tools=req.tools or None)
        return len(chat_format.encode_prompt_ids(head, self.tokenizer))

    def cancel(self, answer: Answer) -> None:
        if self.loop is not None:
            self.loop.cancel(answer.handle)

    def chat(self, messages: Sequence[Message], *, thinking: bool = True, effort: str | None = None,
             options: Options | None = None, prompt_ids: list[int] | None = None,
             cache_prefix: int | None = None) -> Iterator[BackendEvent]:
        if self.is_tiny and not self._told:  # once per session: enough to know, not enough to nag
            self._told = True
            yield Notice(TINY_NOTICE)
        if self.engine is None:
            yield from self.load_notices()
        opts = options or Options()
        req = Request(messages=list(messages), thinking=thinking, effort=effort,
                      cache_prefix=cache_prefix if cache_prefix and cache_prefix > 0 else None,
                      max_tokens=opts.max_tokens, temperature=1.0 if opts.temperature is None else opts.temperature,
                      top_p=1.0 if opts.top_p is None else opts.top_p, seed=opts.seed)
        # `prompt_ids` (what `ask` ingested) encode these same messages: submitted as a chat, so the
        # snapshots a conversation's next turn starts from are kept for them too
        answer = self.submit(req, ids=None if prompt_ids is None else list(prompt_ids))
        try:
            for item in answer.handle:
                yield from answer.feed(item)
            yield from answer.finish()
        finally:
            self.cancel(answer)  # closed early (Ctrl-C): the loop aborts it before its next step

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()
        self.engine = self.loop = None


def interval_points(n: int, step: int = 4096, far: int = 32768) -> list[int]:
    """DeepSeek's third kind of cache unit: fixed intervals inside long prompts, so the same long document
    with a new question after it still hits most of the document. Every 4K tokens up to 32K, then every 32K
    (a snapshot holds the whole state so far: a 1M-token prompt keeps 38 of them, not 255)."""
    return [p for p in range(step, n, step) if p <= far or p % far == 0]


def make_backend(model: str | None, url: str | None = None, api_key: str | None = None, *,
                 context: int = 32768, device: str = "auto", dtype: str = "bfloat16") -> Backend:
    """The backend the CLI flags describe: --url wins; otherwise the local model (default: see default_model)."""
    if url:
        from .remote import RemoteBackend

        return RemoteBackend(url, model, api_key)
    return LocalBackend(model or default_model(), context=context, device=device, dtype=dtype)


def default_model() -> str:
    """V4_MODEL, else the first pulled or placed model, else the built-in tiny."""
    if os.environ.get("V4_MODEL"):
        return os.environ["V4_MODEL"]
    from . import hub

    try:
        models = [m.name for m in hub.list_models() if m.kind != "builtin"]
    except Exception:  # a damaged cache must not stop `v4 chat` with tiny
        models = []
    return models[0] if models else "tiny"

