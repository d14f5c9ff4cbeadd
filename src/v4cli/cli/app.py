"""The `v4` command: the Typer app, the options the verbs share, and how errors reach the user. The verbs
live beside it, one module per group; torch, the runtime and rich are imported inside them so `v4 --help`
answers at once.

Exit codes: 0 done, 1 a problem with the input or the environment (a UserError: one message that says
what to do) or a bug (its traceback), 2 a usage error (Typer's), 130 interrupted. V4_DEBUG=1 shows the
traceback of user errors too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import __version__
from ..errors import UserError

if TYPE_CHECKING:
    from ..console import Console
    from ..events import Backend

app = typer.Typer(
    name="v4",
    help="Run DeepSeek-V4 on your own machine: pull a model, chat with it, ask it about files and repositories.\n\n"
    "Examples:\n\n"
    "  v4 pull flash\n\n"
    "  v4 chat --model flash\n\n"
    '  v4 ask --file src/ "where is the config parsed?"\n\n'
    '  cat build.log | v4 ask "why does this fail?"',
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def opt(*decls: str, help: str, **kw: Any) -> Any:
    return typer.Option(*decls, help=help, **kw)


ModelOpt = Annotated[str | None, opt("--model", "-m", metavar="MODEL", help="Model: tiny, flash, pro, a Hub repo "
                                      "id or a folder (default: V4_MODEL, else the first pulled, else tiny).")]
ThinkOpt = Annotated[bool, opt("--think/--no-think", help="Reason before answering (DeepSeek's default).")]
EffortOpt = Annotated[str | None, opt("--effort", metavar="high|max", help="Reasoning effort: high or max.")]
UrlOpt = Annotated[str | None, opt("--url", metavar="URL", help="Talk to an OpenAI-compatible server (v4 serve, "
                                    "DeepSeek's API, SGLang, vLLM) instead of running the model here.")]
KeyOpt = Annotated[str | None, opt("--api-key", metavar="KEY", envvar="V4_API_KEY", show_envvar=True,
                                    help="API key for --url.")]
ContextOpt = Annotated[int, opt("--context", min=256, metavar="TOKENS", help="Context length in tokens.")]
TempOpt = Annotated[float | None, opt("--temperature", "-t", min=0.0, metavar="T", help="Sampling temperature.")]
ShowThinkOpt = Annotated[bool, opt("--show-thinking", help="Keep the reasoning on screen.")]
JsonOpt = Annotated[bool, opt("--json", help="Machine-readable output.")]
ContinueOpt = Annotated[bool, opt("--continue", "-c", help="Continue the last conversation (`v4 logs` lists "
                                   "them); its model unless --model says otherwise.")]
CidOpt = Annotated[str | None, opt("--cid", metavar="ID", help="Continue this conversation (an id from `v4 logs`, "
                                    "or its first characters).")]
NoLogOpt = Annotated[bool, opt("--no-log", help="Do not log this exchange in V4_HOME/logs.db (also V4_NO_LOG=1).")]
DTYPES = ("bfloat16", "float32")


def _dtype(value: str) -> str:
    name = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32"}.get(value.lower(), value.lower())
    if name not in DTYPES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(DTYPES)} (or bf16, fp32)")
    return name


DtypeOpt = Annotated[str, opt("--dtype", metavar="bfloat16|float32", envvar="V4_DTYPE", show_envvar=True,
                              callback=_dtype, help="Activations and decode state: bfloat16 (the reference's, "
                              "the default) or float32 (twice the state's bytes, no faster on the CPU). FP8/FP4 "
                              "weights stay as stored either way.")]
DeviceOpt = Annotated[str, opt("--device", metavar="auto|cpu|cuda", envvar="V4_DEVICE", show_envvar=True,
                               help="Where the model runs: auto (a CUDA GPU when torch sees one, else the CPU), "
                               "cpu, cuda or cuda:N.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"v4 {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, opt("--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")] = False) -> None:
    """Run DeepSeek-V4 on your own machine."""


def console(show_thinking: bool = False) -> Console:
    from ..console import Console

    return Console(show_thinking=show_thinking)


@contextlib.contextmanager
def handled(console: Console, interrupted: str = "interrupted") -> Iterator[None]:
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except KeyboardInterrupt:
        console.error(interrupted)
        raise typer.Exit(130) from None
    except UserError as e:  # the message is the whole story; anything else is a bug and keeps its traceback
        if os.environ.get("V4_DEBUG"):
            raise
        console.error(str(e) or type(e).__name__)
        raise typer.Exit(1) from None


def check_effort(value: str | None) -> str | None:
    if value not in (None, "high", "max"):
        raise typer.BadParameter(f"{value!r} is not high or max", param_hint="--effort")
    return value


def backend_for(model: str | None, url: str | None, api_key: str | None, context: int,
                device: str = "auto", dtype: str = "bfloat16") -> Backend:
    """The backend the flags describe; a local model is checked now (its name, --context against its limit,
    the device)."""
    from ..backend import LocalBackend, make_backend

    backend = make_backend(model, url, api_key, context=context, device=device, dtype=dtype)
    if isinstance(backend, LocalBackend):
        backend.check()
    return backend
