"""`make demo`: build the built-in tiny model (no download) and answer a question about this project.

The tiny model has DeepSeek-V4's architecture and real tokenizer but random weights, so its answer
is noise; the point is that every stage runs: chat encoding, chunked prefill, decoding, streaming.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from v4cli import chat_format, settings


def main() -> None:
    from v4cli.runtime import Engine, SamplingParams
    from v4cli.runtime.tiny import ensure_builtin

    folder = ensure_builtin(settings.models_dir() / "tiny")
    readme = Path(__file__).resolve().parents[2] / "README.md"
    context = readme.read_text(encoding="utf-8") if readme.exists() else "v4 runs DeepSeek-V4 locally."
    messages = [{"role": "user", "content": f"<file path=README.md>\n{context}\n</file>\n\nWhat is this project?"}]
    prompt = chat_format.encode_messages(messages, thinking_mode="chat")
    ids = chat_format.encode_prompt_ids(prompt)
    engine = Engine.from_pretrained(folder, max_context=8192, chunk_size=256)
    print(f"model: tiny ({folder}) - random weights, its output is noise", file=sys.stderr)
    t0 = time.perf_counter()
    first = None
    params = SamplingParams(max_tokens=32, temperature=0.0, stop_token_ids=chat_format.stop_token_ids("chat"))
    for ev in engine.stream(ids, params, progress=lambda d, t: print(f"\rprefill {d}/{t}", end="", file=sys.stderr)):
        if first is None:
            first = time.perf_counter()
            print(file=sys.stderr)
        print(ev.text, end="", flush=True)
        n = ev
    done = time.perf_counter()
    print()
    print(f"{len(ids)} prompt tokens in {first - t0:.1f}s, answer finished ({n.finish_reason}) "
          f"after {done - first:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
